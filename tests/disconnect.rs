//! A client that hangs up while its image waits in the batcher: the image is dropped before
//! inference. Its own test binary, so the process-wide metrics are this server's alone.

use crate::common;

use common::{DETECT, TestServer, config, data};
use gpubackend::client::metric_value;

#[test]
fn items_of_a_client_that_went_away_are_dropped_before_inference() {
    use std::io::Write;
    let mut cfg = config();
    let m = cfg.models.get_mut("mobilenet_v2").unwrap();
    m.max_batch = 8;
    m.max_delay_ms = 3_000;
    let server = TestServer::start(cfg);
    let before = server.metrics();
    let img = data("chelsea.jpg");
    let body = gpubackend::client::multipart_body(&[
        ("f", Some("c.jpg"), &img),
        ("meta", None, br#"{"mode":["object"],"images":[{"name":"f"}]}"#),
    ]);
    {
        let mut s = std::net::TcpStream::connect(server.addr).unwrap();
        let head = format!(
            "POST {DETECT} HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={}\r\nContent-Length: {}\r\n\r\n",
            gpubackend::client::BOUNDARY,
            body.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(&body).unwrap();
        // Wait until the image is queued, then hang up before its batch deadline.
        let mut c = server.conn();
        let start = std::time::Instant::now();
        while metric_value(&c.get("/metrics").unwrap().text(), "gpubackend_queue_size", &[]) < 1.0 {
            assert!(start.elapsed().as_secs() < 600, "image never queued");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    // At the deadline the batcher finds the item abandoned and drops it: no batch runs.
    let start = std::time::Instant::now();
    let after = loop {
        let m = server.metrics();
        if metric_value(&m, "gpubackend_dropped_items_total", &[]) >= 1.0 {
            break m;
        }
        assert!(start.elapsed().as_secs() < 600, "abandoned item was not dropped");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let batches = |m: &str| metric_value(m, "gpubackend_batches_total", &[]);
    assert_eq!(batches(&after), batches(&before));
    assert!(metric_value(&after, "gpubackend_requests_total", &[("outcome", "client_gone")]) >= 1.0);
}
