//! The distributed mode on real processes: `gpubackend --role api` and `--role worker` (the built
//! binary) over a real `redis-server` on loopback — e2e objects + persons through api + 2 workers,
//! text, plates, the COCO detector and super-resolution (whole images to the worker) answering as one process,
//! SIGKILL of a worker under load (every request answered, none lost), a Redis restart (fast
//! refusals, then recovery by itself), a poison image (status 1 + dead letter), and two API
//! replicas sharing persons through PostgreSQL.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common;
use crate::persons::{call, persons};

use common::postgres::PgCluster;
use common::redis::RedisServer;
use common::{ChildGuard, DETECT, data, repo, tempdir};
use gpubackend::client::{Conn, metric_value};
use serde_json::json;

const MARKER: &str = "GPUBACKEND_PANIC";

/// The embedded default config with the broker on `redis` under `prefix`, short broker timings
/// (a dead worker's jobs come back after 2 s), its own person store, and `extra` TOML appended.
pub(crate) fn write_config(redis: &RedisServer, prefix: &str, extra: &str) -> PathBuf {
    let dir = tempdir(&format!("broker-{prefix}"));
    let text = std::fs::read_to_string(repo().join("config/default.toml")).unwrap();
    let text = text.replace("dir = \"data\"", &format!("dir = \"{}\"", dir.join("store").display()));
    assert!(text.contains(&dir.display().to_string()), "config/default.toml no longer has `dir = \"data\"`");
    let text = format!(
        "{text}\n[broker]\nurl = \"{}\"\nprefix = \"{prefix}\"\nvisibility_timeout_ms = 2000\n\
         health_interval_ms = 200\nblock_ms = 200\ncommand_timeout_ms = 500\n{extra}\n",
        redis.url()
    );
    let path = dir.join("gpubackend.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The shipped `config/default.toml` as it is, but for the broker's address and key prefix (the
/// test's own Redis) and the person store's directory: every timeout is the shipped one.
pub(crate) fn write_default_config(redis: &RedisServer, prefix: &str) -> PathBuf {
    let dir = tempdir(&format!("broker-defaults-{prefix}"));
    let text = std::fs::read_to_string(repo().join("config/default.toml")).unwrap();
    let text = text.replace("dir = \"data\"", &format!("dir = \"{}\"", dir.join("store").display()));
    assert!(!text.contains("[broker]"), "config/default.toml has a [broker] section now: merge instead");
    let text = format!("{text}\n[broker]\nurl = \"{}\"\nprefix = \"{prefix}\"\n", redis.url());
    let path = dir.join("gpubackend.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// One server process of a role.
pub(crate) struct Node {
    child: ChildGuard,
    pub(crate) addr: SocketAddr,
    log: PathBuf,
}

impl Node {
    pub(crate) fn start(role: &str, config: &Path, models: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = config.with_file_name(format!("{role}-{port}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_gpubackend"))
            .current_dir(repo())
            .args(["-c", config.to_str().unwrap(), "--role", role, "--port", &port.to_string(), "--models", models])
            // Several api nodes at once: gRPC on a free port each.
            .args(["--grpc-port", "0"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self { child: ChildGuard(child), addr: format!("127.0.0.1:{port}").parse().unwrap(), log }
    }

    fn conn(&self) -> Conn {
        Conn::new(self.addr)
    }

    pub(crate) fn wait_ready(&mut self) {
        let start = Instant::now();
        while !self.conn().get("/health/ready").map(|r| r.status == 200).unwrap_or(false) {
            assert!(self.child.0.try_wait().unwrap().is_none(), "server exited: {}", self.log_text());
            assert!(start.elapsed() < Duration::from_secs(600), "not ready: {}", self.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn metrics(&self) -> String {
        self.conn().get("/metrics").unwrap().text()
    }

    /// An api replica: until its broker sampling sees at least `workers` live workers on each of `stages`.
    pub(crate) fn wait_workers(&self, stages: &[&str], workers: u64) {
        let start = Instant::now();
        loop {
            let v = self.conn().get("/health/ready").unwrap().json();
            if stages.iter().all(|s| v["stages"][s]["live_workers"].as_u64().unwrap_or(0) >= workers) {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(600), "no live workers for {stages:?}: {v}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// objects/detect `object` on `images` copies of a photo; (HTTP status, per-file statuses, first labels).
fn detect(c: &mut Conn, image: &[u8], images: usize) -> (u16, Vec<u64>, Vec<String>) {
    let names: Vec<String> = (0..images).map(|i| format!("f{i}")).collect();
    let meta = json!({"mode": ["object"], "images": names.iter().map(|n| json!({"name": n})).collect::<Vec<_>>()});
    let meta = meta.to_string();
    let mut parts: Vec<(&str, Option<&str>, &[u8])> =
        names.iter().map(|n| (n.as_str(), Some("p.jpg"), image)).collect();
    parts.push(("meta", None, meta.as_bytes()));
    let r = c.post_multipart(DETECT, &parts).unwrap();
    let v = r.json();
    let files = v["body"]["object_labels"].as_array().cloned().unwrap_or_default();
    let statuses = files.iter().map(|f| f["status"].as_u64().unwrap()).collect();
    let labels = files.iter().map(|f| f["labels"][0]["eng"].as_str().unwrap_or("").to_string()).collect();
    (r.status, statuses, labels)
}

fn sum_over(nodes: &[&Node], name: &str, labels: &[(&str, &str)]) -> f64 {
    nodes.iter().map(|n| metric_value(&n.metrics(), name, labels)).sum()
}

#[test]
fn objects_and_persons_through_an_api_and_two_workers() {
    let redis = RedisServer::start();
    let cfg = write_config(&redis, "e2e", "");
    let mut workers =
        [Node::start("worker", &cfg, "mobilenet_v2,face"), Node::start("worker", &cfg, "mobilenet_v2,face")];
    let mut api = Node::start("api", &cfg, "mobilenet_v2,face");
    for n in workers.iter_mut().chain([&mut api]) {
        n.wait_ready();
    }
    // A worker serves no Vision API.
    let r = workers[0].conn().post_multipart(DETECT, &[("meta", None, b"{}")]).unwrap();
    assert_eq!(r.status, 404, "{}", r.text());

    let mut c = api.conn();
    let (status, files, labels) = detect(&mut c, &data("chelsea.jpg"), 4);
    assert_eq!((status, files), (200, vec![0; 4]), "{}", api.log_text());
    assert!(labels.iter().all(|l| l == "Cat"), "{labels:?}");

    let (s, v) =
        call(&mut c, "set", json!({"space":"1","images":[{"name":"f","person_id":7}]}), &[("f", "obama2.jpg")]);
    assert_eq!((s, &v["body"]["objects"][0]["status"]), (200, &json!(0)), "{v}");
    let (s, v) = call(&mut c, "recognize", json!({"space":"1","images":[{"name":"f"}]}), &[("f", "obama.jpg")]);
    assert_eq!(s, 200, "{v}");
    assert_eq!(persons(&v, 0)[0]["tag"], "person7", "{v}");

    // Every job went through the broker: f16 inputs (2 bytes per value) and one answer each.
    let m = api.metrics();
    let bytes = metric_value(&m, "gpubackend_broker_payload_bytes_total", &[("stage", "mobilenet_v2")]);
    assert_eq!(bytes, (4 * 3 * 224 * 224 * 2) as f64);
    // The face model's images travel whole (the cascade runs on the worker): the two photos' bytes.
    let photos = (data("obama2.jpg").len() + data("obama.jpg").len()) as f64;
    assert_eq!(metric_value(&m, "gpubackend_broker_payload_bytes_total", &[("stage", "face")]), photos);
    assert_eq!(metric_value(&m, "gpubackend_broker_up", &[]), 1.0);
    let refs: Vec<&Node> = workers.iter().collect();
    let done = sum_over(&refs, "gpubackend_broker_jobs_total", &[("stage", "mobilenet_v2"), ("outcome", "done")]);
    assert_eq!(done, 4.0);
    assert_eq!(sum_over(&refs, "gpubackend_broker_jobs_total", &[("stage", "face"), ("outcome", "done")]), 2.0);
    // On the workers the cascade's networks batch as in one process.
    for stage in ["face_pnet", "face_rnet", "face_onet", "face_embed"] {
        assert!(sum_over(&refs, "gpubackend_batches_total", &[("model", stage)]) > 0.0, "{stage}");
    }
    // The api sees both workers of each stream (their heartbeats); the face model has one stream.
    let ready = api.conn().get("/health/ready").unwrap().json();
    assert_eq!(ready["stages"]["mobilenet_v2"]["live_workers"], 2, "{ready}");
    assert_eq!(ready["stages"]["face"]["live_workers"], 2, "{ready}");
    assert!(ready["stages"]["face_pnet"].is_null(), "{ready}");
    // Acknowledged jobs are deleted: nothing left on the streams.
    assert_eq!(redis.int(&["XLEN", "e2e:jobs:mobilenet_v2"]), 0);
}

/// A multipart call of `path` (`?oauth…` added) with `meta` and `files` (name, tests/data file or
/// raw bytes): (HTTP status, body).
fn vision(c: &mut Conn, path: &str, meta: serde_json::Value, files: &[(&str, Vec<u8>)]) -> (u16, serde_json::Value) {
    let meta = meta.to_string();
    let mut parts: Vec<(&str, Option<&str>, &[u8])> =
        files.iter().map(|(n, b)| (*n, Some("image.png"), b.as_slice())).collect();
    parts.push(("meta", None, meta.as_bytes()));
    let r = c.post_multipart(&format!("/api/v1/{path}?oauth_provider=mcs&oauth_token=test"), &parts).unwrap();
    (r.status, r.json())
}

/// Equal JSON, except numbers: probabilities within 1e-3, pixel coordinates within 1.
fn close(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value::{Array, Number, Object};
    match (a, b) {
        (Number(x), Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            (x - y).abs() <= if x.abs().max(y.abs()) <= 1.0 { 1e-3 } else { 1.0 }
        }
        (Array(x), Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| close(x, y)),
        (Object(x), Object(y)) => x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| close(v, w))),
        _ => a == b,
    }
}

#[test]
fn whole_image_models_go_to_a_worker_and_answer_as_one_process() {
    let redis = RedisServer::start();
    let cfg = write_config(&redis, "whole", "");
    let models = "mobilenet_v2,text,plates,centernet,realesrgan,adult";
    let mut worker = Node::start("worker", &cfg, models);
    let mut api = Node::start("api", &cfg, models);
    let mut single = Node::start("all", &cfg, models);
    for n in [&mut worker, &mut api, &mut single] {
        n.wait_ready();
    }
    let page = data("rendered_lines.png");
    let car = data("car_5au5341.png");
    let person = data("person.jpg");
    let broken = b"not an image".to_vec();
    type Files<'a> = Vec<(&'a str, Vec<u8>)>;
    let calls: Vec<(&str, serde_json::Value, Files)> = vec![
        (
            "text/recognize",
            json!({"mode": "detailed", "images": [{"name": "page"}, {"name": "broken"}]}),
            vec![("page", page.clone()), ("broken", broken.clone())],
        ),
        ("scene_text/recognize", json!({"images": [{"name": "car"}]}), vec![("car", car.clone())]),
        (
            "objects/detect",
            json!({"mode": ["object", "car_number"], "images": [{"name": "car"}, {"name": "broken"}]}),
            vec![("car", car.clone()), ("broken", broken.clone())],
        ),
        (
            "objects/detect",
            json!({"mode": ["multiobject", "pedestrian", "object"], "images": [{"name": "person"}, {"name": "broken"}]}),
            vec![("person", person.clone()), ("broken", broken.clone())],
        ),
        (
            "adult/detect",
            json!({"images": [{"name": "person"}, {"name": "broken"}]}),
            vec![("person", person.clone()), ("broken", broken)],
        ),
    ];
    for (path, meta, files) in &calls {
        let (s1, one) = vision(&mut single.conn(), path, meta.clone(), files);
        let (s2, dist) = vision(&mut api.conn(), path, meta.clone(), files);
        assert_eq!((s1, s2), (200, 200), "{path}: {one} / {dist}\n{}", api.log_text());
        // The same pipeline on the worker: the same answer, per-file errors included (texts and
        // errors equal; numbers within what another batch composition can move them).
        assert!(close(&dist["body"], &one["body"]), "{path}: {dist} vs {one}");
    }
    let (_, v) = vision(&mut api.conn(), "objects/detect", calls[2].1.clone(), &calls[2].2);
    assert_eq!(v["body"]["car_number_labels"][0]["labels"][0]["eng"], "5AU5341", "{v}");
    assert_eq!(v["body"]["car_number_labels"][1]["status"], 1, "{v}");
    let (_, v) = vision(&mut api.conn(), "objects/detect", calls[3].1.clone(), &calls[3].2);
    let people = &v["body"]["pedestrian_labels"][0];
    assert!(people["count_by_density"].as_u64().unwrap() >= 1, "{v}");
    assert_eq!(people["labels"][0]["eng"], "Pedestrian", "{v}");
    assert_eq!(v["body"]["multiobject_labels"][1]["status"], 1, "{v}");
    // adult/detect (the family endpoint): the worker's `safe`, the broken file's status 1.
    let (_, v) = vision(&mut api.conn(), "adult/detect", calls[4].1.clone(), &calls[4].2);
    let objects = &v["body"]["objects"];
    assert!(objects[0]["safe"].as_f64().unwrap() > 0.9 && objects[0]["status"] == 0, "{v}");
    assert_eq!((&objects[1]["status"], &objects[1]["safe"]), (&json!(1), &json!(0.0)), "{v}");

    // Super-resolution: the file goes with its factor and network (two bytes); the JPEG comes back.
    let mut eye = Vec::new();
    image::load_from_memory(&data("chelsea.png"))
        .unwrap()
        .crop_imm(150, 80, 40, 30)
        .write_to(&mut std::io::Cursor::new(&mut eye), image::ImageFormat::Png)
        .unwrap();
    let meta = json!({"mode": ["resolution"], "rfactor": 2, "ftype": "art", "images": [{"name": "eye"}]});
    let (status, v) = vision(&mut api.conn(), "photo/improve", meta, &[("eye", eye.clone())]);
    assert_eq!((status, &v["body"]["resolution"][0]["status"]), (200, &json!(0)), "{v}");
    use base64::Engine;
    let jpeg = base64::engine::general_purpose::STANDARD
        .decode(v["body"]["resolution"][0]["resolved"].as_str().unwrap())
        .unwrap();
    assert_eq!(image::load_from_memory(&jpeg).unwrap().to_rgb8().dimensions(), (80, 60));

    // The files travel, not the networks' inputs: per call the page + the broken file on `text`,
    // the car on `text` (scene_text), and the car + the broken file on `plates` (twice); on
    // `centernet` the car (`object` adds the detector's boxes; twice) and the person once per
    // call for its three modes (twice).
    let m = api.metrics();
    let bytes = |stage: &str| metric_value(&m, "gpubackend_broker_payload_bytes_total", &[("stage", stage)]);
    assert_eq!(bytes("text"), (page.len() + b"not an image".len() + car.len()) as f64);
    // objects/detect decodes on the api (for `object`); a file that does not decode goes nowhere.
    assert_eq!(bytes("plates"), (2 * car.len()) as f64);
    assert_eq!(bytes("centernet"), (2 * car.len() + 2 * person.len()) as f64);
    assert_eq!(bytes("realesrgan"), (2 + eye.len()) as f64);
    // adult/detect: the files themselves (twice: the comparison, then the check above).
    assert_eq!(bytes("adult"), (2 * (person.len() + b"not an image".len())) as f64);
    assert!(metric_value(&worker.metrics(), "gpubackend_batches_total", &[("model", "adult")]) > 0.0);
    for stage in ["text_det", "text_rec", "plates_det", "plates_rec"] {
        assert_eq!(bytes(stage), 0.0, "{stage}");
        assert!(metric_value(&worker.metrics(), "gpubackend_batches_total", &[("model", stage)]) > 0.0, "{stage}");
    }
    // The detector's one network is named as its model: the files above are all its stream got.
    assert!(metric_value(&worker.metrics(), "gpubackend_batches_total", &[("model", "centernet")]) > 0.0);
    assert!(metric_value(&worker.metrics(), "gpubackend_batches_total", &[("model", "realesrgan_art")]) > 0.0);
    let ready = api.conn().get("/health/ready").unwrap().json();
    for model in ["text", "plates", "centernet", "realesrgan", "adult"] {
        assert_eq!(ready["stages"][model]["live_workers"], json!(1), "{model}: {ready}");
    }
    assert!(ready["stages"]["text_det"].is_null(), "{ready}");
    for stream in
        ["whole:jobs:text", "whole:jobs:plates", "whole:jobs:centernet", "whole:jobs:realesrgan", "whole:jobs:adult"]
    {
        assert_eq!(redis.int(&["XLEN", stream]), 0, "{stream}");
    }
}

/// Stops worker `a` of two with `signal` while 8 clients keep the api busy; every request must be
/// answered `Cat`. Returns the surviving worker's redeliveries.
fn stop_a_worker_under_load(prefix: &str, signal: &str) -> f64 {
    let redis = RedisServer::start();
    // Consumers of workers gone are deleted after 4 s (the default is 10 min).
    let cfg = write_config(&redis, prefix, "forget_consumers_after_ms = 4000");
    let mut a = Node::start("worker", &cfg, "mobilenet_v2");
    let mut b = Node::start("worker", &cfg, "mobilenet_v2");
    let mut api = Node::start("api", &cfg, "mobilenet_v2");
    for n in [&mut a, &mut b, &mut api] {
        n.wait_ready();
    }
    let image = Arc::new(data("chelsea.jpg"));
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let addr = api.addr;
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (image, stop, answered) = (image.clone(), stop.clone(), answered.clone());
            std::thread::spawn(move || {
                let mut c = Conn::new(addr);
                let mut bad = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let (status, files, labels) = detect(&mut c, &image, 1);
                    if status != 200 || files != [0] || labels != ["Cat"] {
                        bad.push(format!("{status} {files:?} {labels:?}"));
                    }
                    answered.fetch_add(1, Ordering::Relaxed);
                }
                bad
            })
        })
        .collect();
    let wait_for = |n: usize| {
        let start = Instant::now();
        while answered.load(Ordering::Relaxed) < n {
            assert!(start.elapsed() < Duration::from_secs(600), "requests stopped being answered");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for(40);
    // SIGKILL mid-batch leaves its jobs pending until the survivor takes them back; SIGTERM
    // drains: no more jobs taken, the ones taken answered, then exit 0.
    let pid = a.child.0.id().to_string();
    // Stop it while it holds jobs: its consumer (`<host>-<pid>-<start>`) has pending entries.
    let stream = format!("{prefix}:jobs:mobilenet_v2");
    let start = Instant::now();
    while !redis.cli(&["XPENDING", &stream, "workers"]).unwrap().contains(&format!("-{pid}-")) {
        assert!(start.elapsed() < Duration::from_secs(60), "worker a never held a job");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(Command::new("kill").args([signal, &pid]).status().unwrap().success());
    let status = a.child.0.wait().unwrap();
    let consumers = || redis.cli(&["XINFO", "CONSUMERS", &stream, "workers"]).unwrap();
    let (a_consumer, b_consumer) = (format!("-{pid}-"), format!("-{}-", b.child.0.id()));
    if signal == "-TERM" {
        assert!(status.success(), "{status}: {}", a.log_text());
        // A drained worker leaves the group as it exits.
        assert!(!consumers().contains(&a_consumer), "{}", consumers());
    }
    let stopped_at = answered.load(Ordering::Relaxed);
    wait_for(stopped_at + 80);
    stop.store(true, Ordering::Relaxed);
    let bad: Vec<String> = clients.into_iter().flat_map(|c| c.join().unwrap()).collect();
    assert!(bad.is_empty(), "requests not answered with Cat: {bad:?}\n{}", api.log_text());
    // Nothing lost on the stream either.
    let start = Instant::now();
    while redis.int(&["XLEN", &format!("{prefix}:jobs:mobilenet_v2")]) != 0 {
        assert!(start.elapsed() < Duration::from_secs(60), "jobs left on the stream");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A killed worker's consumer is deleted by the survivor once it has been idle long enough
    // (its jobs were taken back, so it holds none); the survivor's stays.
    let start = Instant::now();
    while consumers().contains(&a_consumer) {
        assert!(start.elapsed() < Duration::from_secs(60), "the dead worker's consumer stays: {}", consumers());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(consumers().contains(&b_consumer), "{}", consumers());
    metric_value(&b.metrics(), "gpubackend_broker_redeliveries_total", &[("stage", "mobilenet_v2")])
}

#[test]
fn a_worker_killed_under_load_loses_no_request() {
    let redelivered = stop_a_worker_under_load("kill", "-KILL");
    assert!(redelivered >= 1.0, "the killed worker's jobs were not taken back");
}

/// The scenario users run, with the shipped `config/default.toml` (no shortened timeouts): an api
/// and two workers of the classifier, 240 two-image requests from 32 clients, one worker
/// SIGKILLed 3 s in (sooner on a machine fast enough to be a quarter through by then). Every
/// request is answered and every image labelled: the dead worker's jobs come back on the stream
/// within the visibility timeout, well before their deadline (`max_queue_wait_ms`).
#[test]
fn with_the_shipped_defaults_a_killed_workers_jobs_are_answered_in_time() {
    const REQUESTS: usize = 240;
    let redis = RedisServer::start();
    let cfg = write_default_config(&redis, "defaults");
    let mut a = Node::start("worker", &cfg, "mobilenet_v2");
    let mut b = Node::start("worker", &cfg, "mobilenet_v2");
    let mut api = Node::start("api", &cfg, "mobilenet_v2");
    for n in [&mut a, &mut b, &mut api] {
        n.wait_ready();
    }
    api.wait_workers(&["mobilenet_v2"], 2);
    let image = Arc::new(data("chelsea.jpg"));
    let next = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let addr = api.addr;
    let started = Instant::now();
    // Each request: (sent, answered) since `started`, and what was wrong with its answer.
    let clients: Vec<_> = (0..32)
        .map(|_| {
            let (image, next, answered) = (image.clone(), next.clone(), answered.clone());
            std::thread::spawn(move || {
                let mut c = Conn::new(addr);
                let mut done = Vec::new();
                while next.fetch_add(1, Ordering::Relaxed) < REQUESTS {
                    let sent = started.elapsed();
                    let (status, files, labels) = detect(&mut c, &image, 2);
                    let bad = (status != 200 || files != [0, 0] || labels != ["Cat", "Cat"])
                        .then(|| format!("{status} {files:?} {labels:?}"));
                    done.push((sent, started.elapsed(), bad));
                    answered.fetch_add(1, Ordering::Relaxed);
                }
                done
            })
        })
        .collect();
    while started.elapsed() < Duration::from_secs(3) && answered.load(Ordering::Relaxed) < REQUESTS / 4 {
        std::thread::sleep(Duration::from_millis(5));
    }
    // Killed while it holds jobs (its consumer `<host>-<pid>-<start>` has pending entries).
    let pid = a.child.0.id().to_string();
    let wait = Instant::now();
    while !redis.cli(&["XPENDING", "defaults:jobs:mobilenet_v2", "workers"]).unwrap().contains(&format!("-{pid}-")) {
        assert!(wait.elapsed() < Duration::from_secs(60), "worker a never held a job");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(Command::new("kill").args(["-KILL", &pid]).status().unwrap().success());
    let killed = started.elapsed();
    a.child.0.wait().unwrap();
    let done: Vec<_> = clients.into_iter().flat_map(|c| c.join().unwrap()).collect();
    assert_eq!(done.len(), REQUESTS);
    let bad: Vec<&String> = done.iter().filter_map(|(_, _, bad)| bad.as_ref()).collect();
    assert!(bad.is_empty(), "requests not answered with two Cats: {bad:?}\n{}", api.log_text());
    let redelivered = metric_value(&b.metrics(), "gpubackend_broker_redeliveries_total", &[("stage", "mobilenet_v2")]);
    assert!(redelivered >= 1.0, "the killed worker's jobs were not taken back");
    // The requests in flight at the kill: the last of them answered (README, Faults and overload).
    let last = done.iter().filter(|(sent, end, _)| *sent <= killed && *end > killed).map(|(_, end, _)| *end).max();
    let last = last.map_or(0, |end| (end - killed).as_millis());
    eprintln!(
        "shipped defaults: worker SIGKILLed at {} ms, {redelivered} jobs redelivered, the requests in flight then \
         answered within {last} ms of the kill; all {REQUESTS} requests answered in {} ms",
        killed.as_millis(),
        started.elapsed().as_millis()
    );
}

/// A model without a live worker is left out of the answers that need it only in part: `object`
/// answers the classifier's labels without the detector's boxes, `car_number` beside `object`
/// answers per image that it is unavailable, at once instead of at the deadline; a request for
/// nothing else is refused (503). Shipped timeouts; the detector's worker dies under way.
#[test]
fn a_model_without_a_live_worker_is_left_out_of_answers_that_need_it_only_in_part() {
    let redis = RedisServer::start();
    let cfg = write_default_config(&redis, "partial");
    let mut classifier = Node::start("worker", &cfg, "mobilenet_v2");
    let mut detector = Node::start("worker", &cfg, "centernet");
    // The api serves the plates model too, but no worker does.
    let mut api = Node::start("api", &cfg, "mobilenet_v2,centernet,plates");
    for n in [&mut classifier, &mut detector, &mut api] {
        n.wait_ready();
    }
    api.wait_workers(&["mobilenet_v2", "centernet"], 1);
    let mut c = api.conn();
    let img = data("chelsea.jpg");
    let call = |c: &mut Conn, modes: &str| {
        let meta = format!(r#"{{"mode":{modes},"images":[{{"name":"a"}}]}}"#);
        let r = c.post_multipart(DETECT, &[("a", None, &img), ("meta", None, meta.as_bytes())]).unwrap();
        (r.status, r.json())
    };
    // Both models served: the boxes follow the classifier's labels, nothing missing.
    let (status, v) = call(&mut c, r#"["object"]"#);
    assert_eq!(status, 200, "{v}");
    let full = v["body"]["object_labels"][0].clone();
    assert_eq!(full["status"], 0, "{v}");
    assert!(full["missing"].is_null(), "{v}");
    let full_labels = full["labels"].as_array().unwrap().len();

    // The detector's only worker dies; once the api has seen no live worker on its stream for
    // the visibility timeout (5 s by default), `object` answers without the boxes.
    assert!(Command::new("kill").args(["-KILL", &detector.child.0.id().to_string()]).status().unwrap().success());
    detector.child.0.wait().unwrap();
    let start = Instant::now();
    let partial = loop {
        let (status, v) = call(&mut c, r#"["object","car_number"]"#);
        assert_eq!(status, 200, "{v}");
        let object = v["body"]["object_labels"][0].clone();
        assert_eq!(object["status"], 0, "{v}");
        assert_eq!(object["labels"][0]["eng"], "Cat", "{v}");
        if !object["missing"].is_null() {
            break v;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "the boxes were never left out: {v}");
    };
    let left_out_after = start.elapsed();
    common::schema::OpenApi::load().assert_valid("objects_detect_response", &partial);
    let object = &partial["body"]["object_labels"][0];
    assert_eq!(object["missing"][0]["part"], "boxes", "{partial}");
    assert_eq!(object["missing"][0]["model"], "centernet", "{partial}");
    assert_eq!(object["missing"][0]["status"], 2, "{partial}");
    assert!(object["labels"].as_array().unwrap().len() < full_labels, "{partial}");
    // No worker ever served the plates: car_number answers status 2 for the image, with why.
    let plate = &partial["body"]["car_number_labels"][0];
    assert_eq!(plate["status"], 2, "{partial}");
    assert!(plate["error"].as_str().unwrap().contains("no live worker"), "{partial}");
    // Answered without a detector job: nothing more went on its stream for this request.
    let before = metric_value(&api.metrics(), "gpubackend_broker_payload_bytes_total", &[("stage", "centernet")]);
    let asked = Instant::now();
    let (status, v) = call(&mut c, r#"["object"]"#);
    eprintln!(
        "shipped defaults, detector worker killed: `object` answered without its boxes in {} ms; the boxes first \
         left out {} ms after the kill",
        asked.elapsed().as_millis(),
        left_out_after.as_millis()
    );
    assert_eq!((status, &v["body"]["object_labels"][0]["missing"][0]["model"]), (200, &json!("centernet")), "{v}");
    let after = metric_value(&api.metrics(), "gpubackend_broker_payload_bytes_total", &[("stage", "centernet")]);
    assert_eq!(before, after);
    // The detector alone: refused at once (503), as is a request for the plates alone.
    for modes in [r#"["multiobject"]"#, r#"["car_number"]"#] {
        let (status, v) = call(&mut c, modes);
        assert_eq!(status, 503, "{v}");
        assert!(v["body"].as_str().unwrap().contains("no live worker"), "{v}");
    }
    // Readiness: up, naming the stages without workers.
    let ready = api.conn().get("/health/ready").unwrap();
    assert_eq!(ready.status, 200);
    let ready = ready.json();
    assert_eq!(ready["no_live_workers"], json!(["centernet", "plates"]), "{ready}");
}

#[test]
fn a_worker_stopped_with_sigterm_answers_its_jobs_before_it_exits() {
    let redelivered = stop_a_worker_under_load("term", "-TERM");
    assert_eq!(redelivered, 0.0, "the stopped worker left jobs to be taken back");
}

#[test]
fn a_redis_restart_refuses_fast_then_recovers_by_itself() {
    // The shipped timeouts.
    let mut redis = RedisServer::start();
    let cfg = write_default_config(&redis, "restart");
    let mut worker = Node::start("worker", &cfg, "mobilenet_v2");
    let mut api = Node::start("api", &cfg, "mobilenet_v2");
    worker.wait_ready();
    api.wait_ready();
    api.wait_workers(&["mobilenet_v2"], 1);
    let image = data("chelsea.jpg");
    let mut c = api.conn();
    assert_eq!(detect(&mut c, &image, 1).1, [0]);

    redis.stop_server();
    let stopped = Instant::now();
    // Readiness turns false once the health check misses the broker.
    while api.conn().get("/health/ready").unwrap().status != 503 {
        assert!(stopped.elapsed() < Duration::from_secs(60), "api still ready without its broker");
        std::thread::sleep(Duration::from_millis(20));
    }
    let unready_after = stopped.elapsed();
    // Refused at once: 503 over HTTP, the envelope's 500, and the reason.
    let refusing = Instant::now();
    let r = c
        .post_multipart(
            DETECT,
            &[("f", Some("p.jpg"), &image), ("meta", None, br#"{"mode":["object"],"images":[{"name":"f"}]}"#)],
        )
        .unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    let v = r.json();
    assert_eq!(v["status"], 500);
    assert!(v["body"].as_str().unwrap().contains("broker unavailable"), "{v}");
    let refused_in = refusing.elapsed();
    assert!(metric_value(&api.metrics(), "gpubackend_refusals_total", &[("reason", "not_ready")]) >= 1.0);

    // Back (empty: no persistence): both roles reconnect, the worker recreates its group.
    redis.start_server();
    let restarted = Instant::now();
    api.wait_ready();
    loop {
        let (status, files, labels) = detect(&mut c, &image, 1);
        if status == 200 && files == [0] {
            assert_eq!(labels, ["Cat"]);
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(60),
            "no recovery: {status} {files:?}\n{}",
            worker.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "shipped defaults, Redis restart: api unready {} ms after Redis stopped, a request refused in {} ms, \
         labelled again {} ms after Redis started",
        unready_after.as_millis(),
        refused_in.as_millis(),
        restarted.elapsed().as_millis()
    );
    worker.wait_ready();
}

#[test]
fn a_poison_image_is_dead_lettered_and_answered_with_status_1() {
    let redis = RedisServer::start();
    let cfg = write_config(&redis, "poison", &format!("[fault_injection]\npanic_marker = \"{MARKER}\"\n"));
    let mut worker = Node::start("worker", &cfg, "mobilenet_v2");
    let mut api = Node::start("api", &cfg, "mobilenet_v2");
    worker.wait_ready();
    api.wait_ready();
    let img = data("chelsea.jpg");
    let poisoned = [img.as_slice(), MARKER.as_bytes()].concat();
    let meta = br#"{"mode":["object"],"images":[{"name":"a"},{"name":"p"},{"name":"b"}]}"#;
    let r = api
        .conn()
        .post_multipart(DETECT, &[("a", None, &img), ("p", None, &poisoned), ("b", None, &img), ("meta", None, meta)])
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let f = v["body"]["object_labels"].as_array().unwrap();
    assert_eq!((&f[0]["status"], &f[2]["status"]), (&json!(0), &json!(0)), "{v}");
    assert_eq!(f[1]["status"], 1, "{v}");
    assert!(f[1]["error"].as_str().unwrap().contains("injected fault"), "{v}");

    assert_eq!(redis.int(&["XLEN", "poison:dead:mobilenet_v2"]), 1);
    let dead = redis.cli(&["XRANGE", "poison:dead:mobilenet_v2", "-", "+"]).unwrap();
    assert!(dead.contains("injected fault"), "{dead}");
    assert_eq!(
        metric_value(&worker.metrics(), "gpubackend_broker_dead_letters_total", &[("stage", "mobilenet_v2")]),
        1.0
    );
    // The worker restarted and serves again.
    worker.wait_ready();
    assert_eq!(detect(&mut api.conn(), &img, 1).1, [0]);
}

#[test]
fn two_api_replicas_share_persons_through_postgres() {
    let redis = RedisServer::start();
    let pg = PgCluster::start();
    let extra = format!("[store]\nbackend = \"postgres\"\npostgres_url = \"{}\"\n", pg.url());
    let cfg = write_config(&redis, "pg", "");
    // The store table is already in the file: switch its backend instead of adding a second one.
    let text = std::fs::read_to_string(&cfg).unwrap();
    let store_at = text.find("[store]").unwrap();
    let next = text[store_at + 7..].find("\n[").map_or(text.len(), |i| store_at + 7 + i);
    std::fs::write(&cfg, format!("{}{extra}{}", &text[..store_at], &text[next..])).unwrap();

    let mut worker = Node::start("worker", &cfg, "face");
    let mut a = Node::start("api", &cfg, "face");
    let mut b = Node::start("api", &cfg, "face");
    for n in [&mut worker, &mut a, &mut b] {
        n.wait_ready();
    }
    let (mut ca, mut cb) = (a.conn(), b.conn());
    let (s, v) =
        call(&mut ca, "set", json!({"space":"4","images":[{"name":"f","person_id":11}]}), &[("f", "obama2.jpg")]);
    assert_eq!((s, &v["body"]["objects"][0]["status"]), (200, &json!(0)), "{v}\n{}", a.log_text());
    let (_, v) = call(
        &mut cb,
        "recognize",
        json!({"space":"4","update_embedding":false,"images":[{"name":"f"}]}),
        &[("f", "obama.jpg")],
    );
    assert_eq!(persons(&v, 0)[0]["tag"], "person11", "{v}");
}
