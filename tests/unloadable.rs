//! A model whose weights cannot be loaded: readiness says so and requests are refused at once,
//! never held. Its own test binary, so the process-wide metrics are this server's alone.

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
