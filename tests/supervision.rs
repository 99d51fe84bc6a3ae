//! Supervision: an injected panic in the forward pass restarts the worker; the batch is retried
//! once, then each image alone; only the poisoned image fails (status 1); readiness recovers.

use crate::common;

use common::{DETECT, TestServer, config, data};
use gpubackend::client::metric_value;

#[test]
fn poisoned_image_is_isolated_and_worker_restarts() {
    let mut cfg = config();
    cfg.fault_injection.panic_marker = Some("GPUBACKEND_PANIC".into());
    cfg.supervisor.initial_backoff_ms = 20;
    cfg.supervisor.max_backoff_ms = 200;
    let m = cfg.models.get_mut("mobilenet_v2").unwrap();
    // The three images of the request form one full batch.
    m.max_batch = 3;
    m.max_delay_ms = 600_000;
    let server = TestServer::start(cfg);
    let before = metric_value(&server.metrics(), "gpubackend_worker_restarts_total", &[("model", "mobilenet_v2")]);

    let img = data("chelsea.jpg");
    // Bytes after the JPEG end marker are ignored by the decoder but carry the marker.
    let poisoned = [img.as_slice(), b"GPUBACKEND_PANIC"].concat();
    let meta = br#"{"mode":["object"],"images":[{"name":"a"},{"name":"p"},{"name":"b"}]}"#;
    let mut c = server.conn();
    let r = c
        .post_multipart(DETECT, &[("a", None, &img), ("p", None, &poisoned), ("b", None, &img), ("meta", None, meta)])
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let f = v["body"]["object_labels"].as_array().unwrap();
    assert_eq!(f[0]["status"], 0, "{}", f[0]);
    assert_eq!(f[0]["labels"][0]["eng"], "Cat");
    assert_eq!(f[1]["status"], 1, "{}", f[1]);
    assert!(f[1]["error"].as_str().unwrap().contains("injected fault"), "{}", f[1]);
    assert!(f[1]["labels"].as_array().unwrap().is_empty());
    assert_eq!(f[2]["status"], 0, "{}", f[2]);

    // The batch crashed, its retry crashed, then the poisoned image alone crashed: three restarts.
    let m = server.metrics();
    let restarts = metric_value(&m, "gpubackend_worker_restarts_total", &[("model", "mobilenet_v2")]) - before;
    assert_eq!(restarts, 3.0, "{m}");
    assert!(metric_value(&m, "gpubackend_batches_total", &[("reason", "isolated")]) >= 3.0);

    // Readiness recovers and the worker serves again.
    server.wait_ready(std::time::Duration::from_secs(600));
    let meta = br#"{"mode":["object"],"images":[{"name":"a"},{"name":"b"},{"name":"c"}]}"#;
    let r = c
        .post_multipart(DETECT, &[("a", None, &img), ("b", None, &img), ("c", None, &img), ("meta", None, meta)])
        .unwrap();
    assert!(r.json()["body"]["object_labels"].as_array().unwrap().iter().all(|f| f["status"] == 0));
}
