//! A model whose weights cannot be loaded: readiness says so and requests are refused at once,
//! never held; a model whose workers keep restarting is left out of the answers that need it only
//! in part.

use crate::common;

use common::{DETECT, TestServer, config, data};
use gpubackend::client::metric_value;

#[test]
fn unloadable_weights_never_hang_a_request() {
    // A weights file that exists but is not a PyTorch checkpoint: the worker fails to load and is
    // restarted with back-off, forever; the server says so instead of holding requests.
    let dir = std::env::temp_dir().join(format!("gpubackend-bad-weights-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.pth");
    std::fs::write(&bad, b"this is not a checkpoint").unwrap();
    let mut cfg = config();
    cfg.models.get_mut("mobilenet_v2").unwrap().weights = bad;
    cfg.supervisor.initial_backoff_ms = 10;
    cfg.supervisor.max_backoff_ms = 50;
    let server = TestServer::start_unready(cfg);
    let mut c = server.conn();
    // The worker keeps failing and restarting.
    let start = std::time::Instant::now();
    while metric_value(&server.metrics(), "gpubackend_worker_restarts_total", &[("model", "mobilenet_v2")]) < 2.0 {
        assert!(start.elapsed().as_secs() < 600, "no restarts seen");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let ready = c.get("/health/ready").unwrap();
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["live_workers"]["mobilenet_v2"], 0);
    let img = data("chelsea.jpg");
    let meta = br#"{"mode":["object"],"images":[{"name":"a"}]}"#;
    let r = c.post_multipart(DETECT, &[("a", None, &img), ("meta", None, meta)]).unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    let v = r.json();
    assert_eq!(v["status"], 500);
    assert!(v["body"].as_str().unwrap().contains("model mobilenet_v2 is not ready"), "{v}");
    assert!(metric_value(&server.metrics(), "gpubackend_refusals_total", &[("reason", "not_ready")]) >= 1.0);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_model_whose_workers_keep_restarting_is_left_out_of_answers_it_is_not_needed_for() {
    // The COCO detector cannot load (its worker restarts with back-off, as after a crash); the
    // classifier and the plates model serve. The shipped defaults otherwise.
    let dir = std::env::temp_dir().join(format!("gpubackend-bad-detector-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("centernet.json");
    std::fs::write(&bad, b"{\"this is\": \"not a TF.js graph\"}").unwrap();
    let mut cfg = config();
    cfg.models.get_mut("centernet").unwrap().weights = bad;
    // The models objects/detect uses (`--models mobilenet_v2,centernet,plates`).
    cfg.override_placement(None, Some(vec!["mobilenet_v2".into(), "centernet".into(), "plates".into()])).unwrap();
    let server = TestServer::start_unready(cfg);
    let mut admin = gpubackend::client::Conn::new(server.admin.unwrap_or(server.addr));
    let start = std::time::Instant::now();
    loop {
        let v = admin.get("/health/ready").unwrap().json();
        if ["mobilenet_v2", "plates_det", "plates_rec"].iter().all(|m| v["live_workers"][m] == 1) {
            // Readiness names the model without a worker, and what it failed on.
            assert_eq!(v["live_workers"]["centernet"], 0, "{v}");
            assert!(v["not_ready"]["centernet"][0].is_string(), "{v}");
            break;
        }
        assert!(start.elapsed().as_secs() < 600, "classifier and plates never ready: {v}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let mut c = server.conn();
    let img = data("chelsea.jpg");
    let call = |c: &mut gpubackend::client::Conn, modes: &str| {
        let meta = format!(r#"{{"mode":{modes},"images":[{{"name":"a"}}]}}"#);
        c.post_multipart(DETECT, &[("a", None, &img), ("meta", None, meta.as_bytes())]).unwrap()
    };
    // `object`: the classifier's labels, the detector's boxes named missing.
    let r = call(&mut c, r#"["object","multiobject","car_number"]"#);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    common::schema::OpenApi::load().assert_valid("objects_detect_response", &v);
    let object = &v["body"]["object_labels"][0];
    assert_eq!(
        (&object["status"], &object["labels"][0]["eng"]),
        (&serde_json::json!(0), &serde_json::json!("Cat")),
        "{v}"
    );
    assert_eq!(object["missing"][0]["part"], "boxes", "{v}");
    assert_eq!(object["missing"][0]["model"], "centernet", "{v}");
    assert_eq!(object["missing"][0]["status"], 2, "{v}");
    // Every label is the classifier's (whole-image coord), none a box.
    assert!(object["labels"].as_array().unwrap().len() <= 5, "{v}");
    // `multiobject` needs the detector alone: status 2 for the image, with the reason.
    let multi = &v["body"]["multiobject_labels"][0];
    assert_eq!(multi["status"], 2, "{v}");
    assert!(multi["error"].as_str().unwrap().contains("model centernet is not ready"), "{v}");
    // `car_number` beside them answers as usual (no plate on a cat).
    assert_eq!(v["body"]["car_number_labels"][0]["status"], 0, "{v}");
    // Nothing but the detector asked: refused at once, as before.
    let r = call(&mut c, r#"["multiobject"]"#);
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(metric_value(&server.metrics(), "gpubackend_partial_answers_total", &[("model", "centernet")]) >= 1.0);
    let _ = std::fs::remove_dir_all(dir);
}
