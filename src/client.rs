//! A minimal blocking HTTP/1.1 client over one keep-alive TCP connection, with a multipart body
//! builder. Used by the integration tests and the load benchmark, so both speak to the real server
//! over loopback the way curl does.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// The errors of a connection the server had already closed.
fn stale_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    matches!(e.kind(), BrokenPipe | ConnectionReset | ConnectionAborted | UnexpectedEof)
}

pub struct Conn {
    addr: SocketAddr,
    reader: Option<BufReader<TcpStream>>,
    /// The last request got at least a byte of a response.
    responded: bool,
    /// Headers sent with every request (e.g. `Authorization`).
    headers: Vec<(String, String)>,
}

/// One part of a multipart form: (field name, file name, bytes).
pub type Part<'a> = (&'a str, Option<&'a str>, &'a [u8]);

pub const BOUNDARY: &str = "gpubackendBoundary7MA4YWxkTrZu0gW";

pub fn multipart_body(parts: &[Part<'_>]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, filename, data) in parts {
        body.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        match filename {
            Some(f) => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes(),
            ),
            None => body.extend_from_slice(format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes()),
        }
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

impl Conn {
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, reader: None, responded: false, headers: Vec::new() }
    }

    /// Sends `name: value` with every request.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    fn stream(&mut self) -> std::io::Result<&mut BufReader<TcpStream>> {
        if self.reader.is_none() {
            let s = TcpStream::connect(self.addr)?;
            s.set_read_timeout(Some(Duration::from_secs(300)))?;
            s.set_nodelay(true)?;
            self.reader = Some(BufReader::new(s));
        }
        Ok(self.reader.as_mut().expect("just set"))
    }

    pub fn get(&mut self, path: &str) -> std::io::Result<Response> {
        self.request("GET", path, None, &[])
    }

    pub fn post_multipart(&mut self, path: &str, parts: &[Part<'_>]) -> std::io::Result<Response> {
        let body = multipart_body(parts);
        self.request("POST", path, Some(&format!("multipart/form-data; boundary={BOUNDARY}")), &body)
    }

    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> std::io::Result<Response> {
        let reused = self.reader.is_some();
        let mut result = self.try_request(method, path, content_type, body);
        if result.is_err() {
            self.reader = None;
        }
        // A kept-alive connection the server closed while it sat idle (its keep-alive timeout)
        // fails on the first write or before any response byte: the request never reached the
        // server, so it is sent once more on a new connection, as HTTP/1.1 clients do.
        if reused && !self.responded && result.as_ref().is_err_and(stale_connection) {
            result = self.try_request(method, path, content_type, body);
            if result.is_err() {
                self.reader = None;
            }
        }
        result
    }

    fn try_request(
        &mut self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> std::io::Result<Response> {
        let addr = self.addr;
        self.responded = false;
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n", body.len());
        if let Some(ct) = content_type {
            head.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        for (k, v) in &self.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let r = self.stream()?;
        let s = r.get_mut();
        s.write_all(head.as_bytes())?;
        s.write_all(body)?;
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed before a response"));
        }
        self.responded = true;
        let r = self.reader.as_mut().expect("connected above");
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line: {line:?}")))?;
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            r.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let find = |name: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone());
        let mut body = Vec::new();
        if let Some(len) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
            body.resize(len, 0);
            r.read_exact(&mut body)?;
        } else if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            loop {
                let mut size = String::new();
                r.read_line(&mut size)?;
                let n = usize::from_str_radix(size.trim(), 16).map_err(std::io::Error::other)?;
                let mut chunk = vec![0; n + 2];
                r.read_exact(&mut chunk)?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        } else {
            r.read_to_end(&mut body)?;
            self.reader = None;
        }
        if find("connection").is_some_and(|v| v.eq_ignore_ascii_case("close")) {
            self.reader = None;
        }
        Ok(Response { status, headers, body })
    }
}

/// Sum of a Prometheus metric's samples whose label set contains every `labels` pair.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            (n == name && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))).then_some(value)
        })
        .filter_map(|v| v.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod stale_tests {
    use super::*;
    use std::net::TcpListener;

    /// A server that answers one request per connection, then closes it (as an idle keep-alive
    /// connection is closed by the server's timeout).
    fn one_answer_per_connection(connections: usize) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for _ in 0..connections {
                let (s, _) = l.accept().unwrap();
                let mut r = BufReader::new(s);
                let mut line = String::new();
                while r.read_line(&mut line).unwrap() > 2 {
                    line.clear();
                }
                r.get_mut().write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").unwrap();
                // Dropped: the connection is closed without `Connection: close`.
            }
        });
        addr
    }

    #[test]
    fn a_request_on_a_connection_the_server_closed_is_sent_again_on_a_new_one() {
        let mut c = Conn::new(one_answer_per_connection(2));
        assert_eq!(c.get("/a").unwrap().text(), "ok");
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(c.get("/b").unwrap().text(), "ok");
    }
}
