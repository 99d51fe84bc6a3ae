//! A throwaway Redis for a test: Debian's `redis-server` (`.ci/run` installs it) on a free loopback
//! port, no persistence (a restart loses every stream, the harshest case for the broker), killed on
//! drop. `cli` speaks RESP over a plain socket for the tests' own look at the streams.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut server = Self { port, child: None };
        server.start_server();
        server
    }

    /// Starts the server (again) on its port, waiting until it answers PING.
    pub fn start_server(&mut self) {
        assert!(self.child.is_none(), "redis-server already running");
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string(), "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server not found (apt-get install redis-server)");
        self.child = Some(child);
        let start = Instant::now();
        while self.cli(&["PING"]).ok().as_deref() != Some("PONG") {
            assert!(start.elapsed() < Duration::from_secs(30), "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (SIGKILL: its data is gone).
    pub fn stop_server(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// One command; the answer as text (integers and simple strings as is, a bulk string as its
    /// text, an array as its elements joined by newlines).
    pub fn cli(&self, args: &[&str]) -> std::io::Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut cmd = format!("*{}\r\n", args.len());
        for a in args {
            cmd.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(cmd.as_bytes())?;
        let mut r = BufReader::new(s);
        read_value(&mut r)
    }

    pub fn int(&self, args: &[&str]) -> i64 {
        self.cli(args).unwrap().parse().unwrap_or_else(|_| panic!("{args:?}: not an integer"))
    }
}

fn read_value(r: &mut BufReader<TcpStream>) -> std::io::Result<String> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let line = line.trim_end();
    let (kind, rest) = line.split_at(1);
    match kind {
        "+" | ":" => Ok(rest.to_string()),
        "-" => Err(std::io::Error::other(rest.to_string())),
        "$" => {
            let n: i64 = rest.parse().map_err(std::io::Error::other)?;
            if n < 0 {
                return Ok(String::new());
            }
            let mut buf = vec![0; n as usize + 2];
            r.read_exact(&mut buf)?;
            buf.truncate(n as usize);
            Ok(String::from_utf8_lossy(&buf).into_owned())
        }
        "*" => {
            let n: i64 = rest.parse().map_err(std::io::Error::other)?;
            let items: std::io::Result<Vec<String>> = (0..n.max(0)).map(|_| read_value(r)).collect();
            Ok(items?.join("\n"))
        }
        other => Err(std::io::Error::other(format!("unexpected RESP type {other}"))),
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop_server();
    }
}
