//! Overload with the shipped defaults (`[admission]`): requests beyond an endpoint's active slots
//! wait before their body is read and are refused after the wait with 503 + `Retry-After` in the
//! envelope, while every request let in is answered.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::common;

use common::{DETECT, TestServer, config, data};
use gpubackend::client::{BOUNDARY, Conn, multipart_body};
use gpubackend::config::AdmissionConfig;

/// A request whose body is sent in two halves: it holds its endpoint's slot while the server
/// waits for the second.
struct HalfSent {
    stream: TcpStream,
    rest: Vec<u8>,
}

impl HalfSent {
    fn start(addr: std::net::SocketAddr, body: &[u8]) -> Self {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(600))).unwrap();
        let head = format!(
            "POST {DETECT} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n\
             Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n",
            body.len()
        );
        let half = body.len() / 2;
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(&body[..half]).unwrap();
        Self { stream, rest: body[half..].to_vec() }
    }

    /// Sends the rest; the HTTP status and body.
    fn finish(mut self) -> (u16, serde_json::Value) {
        self.stream.write_all(&self.rest).unwrap();
        let mut r = BufReader::new(self.stream);
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let status: u16 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        let mut len = 0;
        loop {
            let mut h = String::new();
            r.read_line(&mut h).unwrap();
            if h.trim_end().is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body).unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }
}

#[test]
fn beyond_its_slots_a_request_waits_unread_then_is_refused_and_every_request_let_in_is_answered() {
    // The shipped defaults (only threads and the store differ: `common::config`), serving the
    // classifier alone (`--models mobilenet_v2`: `object` without the detector's boxes).
    let mut cfg = config();
    cfg.override_placement(None, Some(vec!["mobilenet_v2".into()])).unwrap();
    assert_eq!(cfg.admission, AdmissionConfig::default());
    let AdmissionConfig { max_active_requests, max_wait_ms, .. } = cfg.admission;
    let server = TestServer::start(cfg);
    let meta = br#"{"mode":["object"],"images":[{"name":"f"}]}"#;
    let img = data("chelsea.jpg");
    let body = multipart_body(&[("f", Some("cat.jpg"), &img), ("meta", None, meta)]);
    // Every slot of objects/detect held by a request whose body is half sent.
    let held: Vec<HalfSent> = (0..max_active_requests).map(|_| HalfSent::start(server.addr, &body)).collect();
    // They reach the gate first (their heads were sent before the next connection was opened);
    // a moment for the server to read them.
    std::thread::sleep(Duration::from_millis(300));
    // One more request waits for a slot, then is refused.
    let mut c = server.conn();
    let start = Instant::now();
    let r = c.post_multipart(DETECT, &[("f", Some("cat.jpg"), &img), ("meta", None, meta)]).unwrap();
    let waited = start.elapsed();
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("Retry-After"), Some("1"));
    // It waited for a slot (the refusal is not immediate: a retrying client is slowed down).
    assert!(waited >= Duration::from_millis(max_wait_ms * 9 / 10), "refused after {waited:?}");
    let v = r.json();
    assert_eq!(v["status"], 500);
    common::schema::OpenApi::load().assert_valid("error_response", &v);
    assert!(v["body"].as_str().unwrap().contains("server overloaded: no room for objects/detect"), "{v}");
    // Its body was read and dropped: the same connection serves the next request once there is room.
    // Every request that was let in is answered.
    for h in held {
        let (status, v) = h.finish();
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["body"]["object_labels"][0]["status"], 0, "{v}");
        assert_eq!(v["body"]["object_labels"][0]["labels"][0]["eng"], "Cat", "{v}");
    }
    let r = c.post_multipart(DETECT, &[("f", Some("cat.jpg"), &img), ("meta", None, meta)]).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let refusals = gpubackend::client::metric_value(
        &Conn::new(server.admin.unwrap_or(server.addr)).get("/metrics").unwrap().text(),
        "gpubackend_refusals_total",
        &[("reason", "gate_timeout")],
    );
    assert!(refusals >= 1.0);
}
