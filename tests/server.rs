//! The real server on 127.0.0.1:0, real weights, real images, over HTTP — as curl would use it.

use crate::common;

use common::{DETECT, TestServer, config, data};
use gpubackend::client::metric_value;
use serde_json::Value;

/// Checks a success envelope against `objects_detect_response` in the Vision OpenAPI file, plus
/// what the docs say beyond the schema (envelope fields, per-file error text, coord shape).
fn assert_objects_schema(v: &Value) {
    common::schema::OpenApi::load().assert_valid("objects_detect_response", v);
    assert_eq!(v["status"], 200);
    assert_eq!(v["htmlencoded"], false);
    assert_eq!(v["last_modified"], 0);
    let files = v["body"]["object_labels"].as_array().expect("object_labels array");
    for f in files {
        let status = f["status"].as_u64().expect("status int");
        assert!(status <= 2);
        assert!(f["name"].is_string());
        assert!(f["labels"].is_array(), "labels is required");
        if status != 0 {
            assert!(f["error"].is_string(), "failed file carries error: {f}");
        }
        for l in f["labels"].as_array().unwrap() {
            assert!(l["eng"].is_string() && l["rus"].is_string());
            let p = l["prob"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&p));
            assert!(l["eng_categories"].is_array() && l["rus_categories"].is_array());
            let coord = l["coord"].as_array().unwrap();
            assert_eq!(coord.len(), 4);
            assert!(coord.iter().all(|c| c.is_u64()));
        }
    }
}

fn assert_error(resp: &gpubackend::client::Response, http: u16, envelope: u64, body: &str) {
    assert_eq!(resp.status, http, "{}", resp.text());
    let v = resp.json();
    assert_eq!(v["status"], envelope);
    assert_eq!(v["htmlencoded"], false);
    assert_eq!(v["last_modified"], 0);
    // The documented error set is 400, 403, 500; 404 (unknown path) and 429 (rate limit) are ours.
    if envelope != 404 && envelope != 429 {
        common::schema::OpenApi::load().assert_valid("error_response", &v);
    }
    let got = v["body"].as_str().expect("error body is a string");
    assert!(got.contains(body), "body {got:?} lacks {body:?}");
}

#[test]
fn schema_checker_catches_violations() {
    use serde_json::json;
    let api = common::schema::OpenApi::load();
    let label = json!({"eng": "Cat", "rus": "Кошка", "prob": 0.5, "coord": [0, 0, 1, 1]});
    let ok = json!({"status": 200, "body": {"object_labels": [{"status": 0, "name": "f", "labels": [label]}]}});
    api.validate("objects_detect_response", &ok).unwrap();
    for bad in [
        json!({"status": 200, "body": {"object_labels": [{"name": "f", "labels": []}]}}),
        json!({"status": 200, "body": {"object_labels": [{"status": 7, "name": "f", "labels": []}]}}),
        json!({"status": 200, "body": {"object_labels": [{"status": 0, "name": "f", "labels": [{"eng": "x", "rus": "y", "prob": 1.5}]}]}}),
        json!({"status": 200, "body": {"object_labels": [{"status": 0, "name": "f", "labels": [{"eng": "x", "rus": "y", "prob": 0.1, "coord": [1, 2]}]}]}}),
        json!({"status": 201, "body": {}}),
    ] {
        assert!(api.validate("objects_detect_response", &bad).is_err(), "accepted {bad}");
    }
    assert!(api.validate("error_response", &json!({"status": 418, "body": "x"})).is_err());
}

#[test]
fn objects_detect_end_to_end() {
    let server = TestServer::start(config());
    let mut c = server.conn();
    let chelsea = data("chelsea.jpg");
    let meta = br#"{"images":[{"name":"file_0"}],"mode":["object"]}"#;
    let r = c.post_multipart(DETECT, &[("file_0", Some("chelsea.jpg"), &chelsea), ("meta", None, meta)]).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_objects_schema(&v);
    let file = &v["body"]["object_labels"][0];
    assert_eq!(file["status"], 0);
    assert_eq!(file["name"], "file_0");
    let top = &file["labels"][0];
    assert_eq!(top["eng"], "Cat");
    assert_eq!(top["rus"], "Кошка");
    assert_eq!(top["eng_categories"], serde_json::json!(["Animals", "Cats"]));
    assert!(top["prob"].as_f64().unwrap() > 0.9, "{top}");
    assert_eq!(top["coord"], serde_json::json!([0, 0, 451, 300]));

    // Several images, each answered under its own name, in meta order.
    let coffee = data("coffee.png");
    let rocket = data("rocket.jpg");
    let meta = br#"{"mode":["object"],"images":[{"name":"b"},{"name":"a"},{"name":"c"}]}"#;
    let r = c
        .post_multipart(
            DETECT,
            &[
                ("a", Some("a.jpg"), &chelsea),
                ("b", Some("b.png"), &coffee),
                ("c", Some("c.jpg"), &rocket),
                ("meta", None, meta),
            ],
        )
        .unwrap();
    let v = r.json();
    assert_objects_schema(&v);
    let files = v["body"]["object_labels"].as_array().unwrap();
    let names: Vec<&str> = files.iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["b", "a", "c"]);
    assert_eq!(files[0]["labels"][0]["eng"], "Coffee");
    assert_eq!(files[1]["labels"][0]["eng"], "Cat");
    assert!(files.iter().all(|f| f["status"] == 0));

    // Metrics moved and every documented series is exported.
    let m = server.metrics();
    assert!(metric_value(&m, "gpubackend_requests_total", &[("endpoint", "objects/detect"), ("outcome", "ok")]) >= 2.0);
    assert!(metric_value(&m, "gpubackend_images_total", &[("status", "0")]) >= 4.0);
    for name in [
        "gpubackend_stage_duration_seconds_bucket",
        "gpubackend_batch_size_bucket",
        "gpubackend_batches_total",
        "gpubackend_queue_size",
        "gpubackend_worker_busy_ratio",
        "gpubackend_worker_busy_seconds_total",
        "gpubackend_workers_live",
        "gpubackend_process_cpu_seconds_total",
        "gpubackend_inference_cpu_seconds_total",
        "gpubackend_refusals_total",
        "gpubackend_worker_restarts_total",
        "gpubackend_dropped_items_total",
    ] {
        assert!(m.contains(name), "/metrics lacks {name}");
    }
    for stage in ["decode", "preprocess", "queue_wait", "inference", "total"] {
        assert!(m.contains(&format!("stage=\"{stage}\"")), "no {stage} stage histogram");
    }
    assert_eq!(metric_value(&m, "gpubackend_workers_live", &[("device", "cpu"), ("model", "mobilenet_v2")]), 1.0);
    assert!(metric_value(&m, "gpubackend_worker_busy_seconds_total", &[]) > 0.0);
    let live = c.get("/health/live").unwrap();
    assert_eq!(live.status, 200);
}

#[test]
fn documented_request_errors() {
    let server = TestServer::start(config());
    let mut c = server.conn();
    let img = data("chelsea.jpg");
    let meta_file = br#"{"mode":["object"],"images":[{"name":"file"}]}"#;

    // One image part named `file`, with each of these metas.
    let cases: [(&[u8], &str); 9] = [
        (
            br#"{"mode":["object"],"images":[{"name":"file1"}]}"#,
            "could not get image by name file1: http: no such file",
        ),
        (b"{not json", "invalid meta"),
        (br#"{"mode":[],"images":[{"name":"file"}]}"#, "mode is required non-empty"),
        (br#"{"mode":["object"]}"#, "images is required non-empty"),
        (br#"{"mode":["object"],"images":[]}"#, "images is required non-empty"),
        (br#"{"mode":["sceneaaaa"],"images":[{"name":"file"}]}"#, "unknown mode: sceneaaaa"),
        (
            br#"{"mode":["object","scene"],"images":[{"name":"file"}]}"#,
            "mode scene is not served by this server (served: car_number, multiobject, object, pedestrian)",
        ),
        (br#"{"mode":["object"],"images":[{"name":"file"},{"name":"file"}]}"#, "duplicate image name: file"),
        (br#"{"mode":"object","images":[{"name":"file"}]}"#, "invalid meta"),
    ];
    for (meta, expected) in cases {
        let r = c.post_multipart(DETECT, &[("file", Some("x.jpg"), &img), ("meta", None, meta)]).unwrap();
        assert_error(&r, 400, 400, expected);
    }
    let r = c.post_multipart(DETECT, &[("file", Some("empty.jpg"), b""), ("meta", None, meta_file)]).unwrap();
    assert_error(&r, 400, 400, "empty image");
    let r = c.post_multipart(DETECT, &[("file", Some("x.jpg"), &img)]).unwrap();
    assert_error(&r, 400, 400, "meta is required");
    let r = c.request("POST", DETECT, Some("application/json"), b"{}").unwrap();
    assert_error(&r, 400, 400, "multipart");
    // A body that ends inside a part right after a CR LF: actix-multipart alone waits for more
    // forever (the fuzzer's find, fuzz/regressions/multipart/); answered at once.
    let cut = "--gpubackendfuzz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.jpg\"\r\n\r\nabc\r\n";
    let started = std::time::Instant::now();
    let r = c.request("POST", DETECT, Some("multipart/form-data; boundary=gpubackendfuzz"), cut.as_bytes()).unwrap();
    assert_error(&r, 400, 400, "the body ended inside a form field");
    assert!(started.elapsed() < std::time::Duration::from_secs(60), "the server waited for a body that had ended");
    let r = c.get("/api/v1/nope").unwrap();
    assert_error(&r, 404, 404, "no such method");

    // Per-file failures: the request succeeds, the bad image gets status 1 with its error.
    let tiny = {
        let mut out = std::io::Cursor::new(Vec::new());
        image::RgbImage::new(4, 4).write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    };
    // A JPEG upload cut off at 3 KB of its 38: labels on grey fill would be a confident lie.
    let cut = &data("chelsea.jpg")[..3000];
    let meta = br#"{"mode":["object"],"images":[{"name":"good"},{"name":"garbage"},{"name":"tiny"},{"name":"gif"},{"name":"cut"}]}"#;
    let r = c
        .post_multipart(
            DETECT,
            &[
                ("good", Some("g.jpg"), &img),
                ("garbage", Some("x.jpg"), b"\xFF\xD8\xFF\xE0 this is not a jpeg at all"),
                ("tiny", Some("t.png"), &tiny),
                ("gif", Some("a.gif"), b"GIF89a\x01\x00\x01\x00\x00\x00\x00"),
                ("cut", Some("c.jpg"), cut),
                ("meta", None, meta),
            ],
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_objects_schema(&v);
    let f = v["body"]["object_labels"].as_array().unwrap();
    assert_eq!(f[0]["status"], 0);
    assert_eq!(f[1]["status"], 1);
    assert!(f[1]["error"].as_str().unwrap().contains("cannot decode image"), "{}", f[1]);
    assert_eq!(f[2]["status"], 1);
    assert!(f[2]["error"].as_str().unwrap().contains("image is too small: 4x4"), "{}", f[2]);
    assert_eq!(f[3]["status"], 1);
    assert!(f[3]["error"].as_str().unwrap().contains("unsupported image format"), "{}", f[3]);
    assert_eq!((f[4]["status"].as_u64(), f[4]["labels"].as_array().map(Vec::len)), (Some(1), Some(0)), "{}", f[4]);
    assert!(f[4]["error"].as_str().unwrap().contains("cannot decode image: jpeg: "), "{}", f[4]);
    let m = server.metrics();
    assert!(metric_value(&m, "gpubackend_requests_total", &[("outcome", "bad_request")]) >= 10.0);
    assert!(metric_value(&m, "gpubackend_images_total", &[("status", "1")]) >= 4.0);
}

#[test]
fn limits_are_enforced_and_configurable() {
    let mut cfg = config();
    cfg.limits.max_images = 3;
    cfg.limits.max_image_bytes = 100_000;
    cfg.limits.max_request_bytes = 150_000;
    cfg.limits.max_width = 400;
    cfg.limits.max_height = 300;
    let server = TestServer::start(cfg);
    let mut c = server.conn();
    let chelsea = data("chelsea.jpg"); // 451x300, 39 KB
    let one = br#"{"mode":["object"],"images":[{"name":"a"}]}"#;

    let r = c.post_multipart(DETECT, &[("a", Some("a.png"), &vec![0u8; 120_000]), ("meta", None, one)]).unwrap();
    assert_error(&r, 400, 400, "image a is too large: the limit is 100000 bytes");
    let r = c
        .post_multipart(
            DETECT,
            &[
                ("a", None, &chelsea),
                ("b", None, &chelsea),
                ("c", None, &chelsea),
                ("d", None, &chelsea),
                ("meta", None, one),
            ],
        )
        .unwrap();
    assert_error(&r, 400, 400, "too many images: at most 3 per request");
    let big = vec![0u8; 90_000];
    let r = c.post_multipart(DETECT, &[("a", None, &big), ("b", None, &big), ("meta", None, one)]).unwrap();
    assert_error(&r, 400, 400, "request is too large: the limit is 150000 bytes");
    // Far beyond the limit: refused from Content-Length, before reading the body.
    let huge = vec![0u8; 300_000];
    let r = c.post_multipart(DETECT, &[("a", None, &huge), ("meta", None, one)]).unwrap();
    assert_error(&r, 400, 400, "request is too large");
    // Pixel limit: per-file error, checked from the header.
    let r = c.post_multipart(DETECT, &[("a", Some("a.jpg"), &chelsea), ("meta", None, one)]).unwrap();
    let v = r.json();
    assert_eq!(v["body"]["object_labels"][0]["status"], 1);
    assert!(v["body"]["object_labels"][0]["error"].as_str().unwrap().contains("image is too large: 451x300"));
}

#[test]
fn auth_tokens_from_config() {
    let mut cfg = config();
    cfg.auth.tokens = vec!["s3cret".into()];
    let server = TestServer::start(cfg);
    let mut c = server.conn();
    let img = data("chelsea.jpg");
    let meta = br#"{"mode":["object"],"images":[{"name":"f"}]}"#;
    let parts: &[gpubackend::client::Part<'_>] = &[("f", Some("c.jpg"), &img), ("meta", None, meta)];
    let r = c.post_multipart("/api/v1/objects/detect?oauth_provider=mcs&oauth_token=wrong", parts).unwrap();
    assert_error(&r, 403, 403, "invalid oauth_token");
    let r = c.post_multipart("/api/v1/objects/detect", parts).unwrap();
    assert_error(&r, 403, 403, "oauth_token and oauth_provider are required");
    let r = c.post_multipart("/api/v1/objects/detect?oauth_provider=mcs&oauth_token=s3cret", parts).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["body"]["object_labels"][0]["labels"][0]["eng"], "Cat");
}

#[test]
fn admin_port_serves_probes_and_metrics_and_tokens_are_rate_limited() {
    let mut cfg = config();
    cfg.auth.tokens = vec!["a".into(), "b".into()];
    cfg.server.admin_port = Some(0);
    // One request per 100 s after a burst of two: no test machine is slow enough to refill.
    cfg.rate_limit = gpubackend::config::RateLimitConfig { requests_per_s: 0.01, burst: 2.0 };
    let server = TestServer::start(cfg);
    let admin = server.admin.expect("the admin listener");
    assert_ne!(admin.port(), server.addr.port());
    let (mut api, mut ops) = (server.conn(), gpubackend::client::Conn::new(admin));
    // The admin surface on its own port only; the API on the other only.
    for path in ["/metrics", "/health/ready", "/health/live", "/admin", "/admin/placement"] {
        assert_eq!(ops.get(path).unwrap().status, 200, "{path} on the admin port");
        let r = api.get(path).unwrap();
        assert_error(&r, 404, 404, "no such method on this port");
    }
    let meta = br#"{"mode":["object"],"images":[]}"#;
    let detect = |c: &mut gpubackend::client::Conn, token: &str| {
        let path = format!("/api/v1/objects/detect?oauth_provider=mcs&oauth_token={token}");
        c.post_multipart(&path, &[("meta", None, meta)]).unwrap()
    };
    assert_error(&detect(&mut ops, "a"), 404, 404, "no such method on this port");
    // Token `a`: its burst of two (answered 400: no images), then 429 with Retry-After.
    for _ in 0..2 {
        assert_eq!(detect(&mut api, "a").status, 400);
    }
    let r = detect(&mut api, "a");
    assert_error(&r, 429, 429, "rate limit exceeded for this token");
    let retry: u64 = r.header("Retry-After").expect("Retry-After").parse().unwrap();
    assert!((1..=100).contains(&retry), "{retry}");
    // Token `b` has its own bucket; a wrong token is refused as such.
    assert_eq!(detect(&mut api, "b").status, 400);
    assert_error(&detect(&mut api, "c"), 403, 403, "invalid oauth_token");
    let m = server.metrics();
    assert_eq!(metric_value(&m, "gpubackend_refusals_total", &[("reason", "rate_limit")]), 1.0);
    assert!(metric_value(&m, "gpubackend_requests_total", &[("outcome", "rate_limited")]) >= 1.0);
}

#[test]
fn full_queue_refuses_at_once() {
    let mut cfg = config();
    let m = cfg.models.get_mut("mobilenet_v2").unwrap();
    // Nothing is dispatched (the batch never fills, the deadline is far away) and 2 items fit:
    // the third is refused, whatever the machine's speed.
    m.max_batch = 8;
    m.queue_capacity = 2;
    m.max_delay_ms = 600_000;
    let server = TestServer::start(cfg);
    let mut c = server.conn();
    let img = data("chelsea.jpg");
    let meta = br#"{"mode":["object"],"images":[{"name":"a"},{"name":"b"},{"name":"c"},{"name":"d"}]}"#;
    let r = c
        .post_multipart(
            DETECT,
            &[("a", None, &img), ("b", None, &img), ("c", None, &img), ("d", None, &img), ("meta", None, meta)],
        )
        .unwrap();
    assert_error(&r, 503, 500, "queue of model mobilenet_v2 is full");
    assert_eq!(r.header("retry-after"), Some("1"));
    let m = server.metrics();
    assert!(metric_value(&m, "gpubackend_refusals_total", &[("reason", "queue_full")]) >= 1.0);
    assert!(metric_value(&m, "gpubackend_requests_total", &[("outcome", "overloaded")]) >= 1.0);
}

/// The in-flight byte budget (`limits.max_inflight_bytes`): chelsea.jpg (451 × 300, 38 702 bytes)
/// counts 38 702 + 16 × 135 300 = 2 203 502 bytes of work. With a 3 MB budget one photo is
/// admitted (and held: its batch never dispatches), a second is refused with 503 until it is
/// answered, and a request of two photos can never fit: 400.
#[test]
fn in_flight_work_is_bounded_in_bytes() {
    let mut cfg = config();
    cfg.limits.max_image_bytes = 1 << 20;
    cfg.limits.max_request_bytes = 2 << 20;
    cfg.limits.max_inflight_bytes = 3_000_000;
    let m = cfg.models.get_mut("mobilenet_v2").unwrap();
    m.max_batch = 8;
    m.max_delay_ms = 600_000;
    let server = TestServer::start(cfg);
    let img = data("chelsea.jpg");
    let meta = br#"{"mode":["object"],"images":[{"name":"a"}]}"#;
    let mut held = server.conn();
    let held_img = img.clone();
    // The held request never gets its answer; the server's shutdown ends it.
    std::thread::spawn(move || {
        let _ = held.post_multipart(DETECT, &[("a", None, &held_img), ("meta", None, meta)]);
    });
    let started = std::time::Instant::now();
    while metric_value(&server.metrics(), "gpubackend_inflight_images", &[]) < 1.0 {
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "the first request was never admitted");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // (Metrics are process-wide: other tests' servers may add to the gauge.)
    assert!(metric_value(&server.metrics(), "gpubackend_inflight_work_bytes", &[]) >= 2_203_502.0);
    let mut c = server.conn();
    let r = c.post_multipart(DETECT, &[("a", None, &img), ("meta", None, meta)]).unwrap();
    assert_error(&r, 503, 500, "bytes of work in flight");
    assert!(metric_value(&server.metrics(), "gpubackend_refusals_total", &[("reason", "memory")]) >= 1.0);
    let two = br#"{"mode":["object"],"images":[{"name":"a"},{"name":"b"}]}"#;
    let r = c.post_multipart(DETECT, &[("a", None, &img), ("b", None, &img), ("meta", None, two)]).unwrap();
    assert_error(&r, 400, 400, "request is too large: its images need about 4407004 bytes in memory");
}
