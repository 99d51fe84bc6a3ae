//! Starts the real server on 127.0.0.1:0 in its own actix System thread.
#![allow(dead_code)]

pub mod postgres;
pub mod redis;
pub mod schema;

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use gpubackend::client::Conn;
use gpubackend::config::Config;

pub struct TestServer {
    pub addr: SocketAddr,
    /// `server.admin_port`'s listener, where the config sets one (probes and /metrics go there).
    pub admin: Option<SocketAddr>,
    /// The Open Inference Protocol's gRPC listener, where the config has one.
    pub grpc: Option<SocketAddr>,
    handle: actix_web::dev::ServerHandle,
}

impl TestServer {
    pub fn start(config: Config) -> Self {
        let server = Self::start_unready(config);
        server.wait_ready(Duration::from_secs(600));
        server
    }

    /// Starts the server without waiting for its workers.
    pub fn start_unready(mut config: Config) -> Self {
        // Servers of several tests at once: gRPC on a free port each (see `grpc`).
        config.server.grpc_port = config.server.grpc_port.map(|_| 0);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").unwrap();
                let running = gpubackend::http::start(config, Some(listener)).expect("server starts");
                tx.send((running.addr, running.admin_addr, running.server.handle(), running.grpc_addr())).unwrap();
                // The gRPC listener stops when `running` is dropped, after the HTTP server.
                let running = running;
                let server = running.server;
                server.await.unwrap();
                drop(running.grpc);
            })
        });
        let (addr, admin, handle, grpc) = rx.recv().expect("server thread started");
        Self { addr, admin, handle, grpc }
    }

    pub fn conn(&self) -> Conn {
        Conn::new(self.addr)
    }

    /// Polls /health/ready; the bound is generous so slow machines do not fail (not a timing test).
    pub fn wait_ready(&self, bound: Duration) {
        let start = Instant::now();
        let mut c = Conn::new(self.admin.unwrap_or(self.addr));
        loop {
            if c.get("/health/ready").map(|r| r.status == 200).unwrap_or(false) {
                return;
            }
            assert!(start.elapsed() < bound, "server not ready within {bound:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn metrics(&self) -> String {
        Conn::new(self.admin.unwrap_or(self.addr)).get("/metrics").unwrap().text()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let h = self.handle.clone();
        actix_web::rt::System::new().block_on(async move { h.stop(false).await });
    }
}

/// The embedded default config, with test-friendly threads and a person store of its own.
pub fn config() -> Config {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let mut c = gpubackend::infer::load_config(None).unwrap();
    c.server.http_workers = 1;
    c.pipeline.decoders = 1;
    c.store.dir = tempdir(&format!("store-{}", N.fetch_add(1, Ordering::Relaxed)));
    c
}

/// Sets a family's own setting, `[models.<model>.<section>] <key> = value` (the section made if
/// the config has none).
pub fn set_setting(c: &mut Config, model: &str, section: &str, key: &str, value: impl Into<toml::Value>) {
    let m = c.models.get_mut(model).unwrap_or_else(|| panic!("no model {model}"));
    let table = m.settings.entry(section).or_insert_with(|| toml::Value::Table(toml::Table::new()));
    table.as_table_mut().unwrap_or_else(|| panic!("{model}.{section} is not a table")).insert(key.into(), value.into());
}

/// A raw little-endian f32 file (the reference fixtures), path relative to the crate root.
pub fn read_f32s(path: &str) -> Vec<f32> {
    let bytes = std::fs::read(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

pub fn data(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// The crate root.
pub fn repo() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh, empty directory under the system temp dir, named for this test process and call (the
/// tests of every area share one process).
pub fn tempdir(tag: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    let n = CALLS.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("gpubackend-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Re-runs this test binary as the ignored test `writer` (with `env` set), reads its `ack N`
/// lines until it has acknowledged `acks` writes, and returns it still running (to be killed)
/// with the last acknowledged N: the parent half of the store's kill -9 tests.
pub fn writer_after_acks(writer: &str, env: (&str, &str), acks: i64) -> (std::process::Child, i64) {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", writer, "--nocapture", "--test-threads=1"])
        .env(env.0, env.1)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acked = 0i64;
    while acked < acks {
        let line = lines.next().expect("writer ended early").unwrap();
        if let Some(n) = line.strip_prefix("ack ") {
            acked = n.parse().unwrap();
        }
    }
    (child, acked)
}

/// A spawned process (server, Prometheus) killed when the test ends, pass or fail.
pub struct ChildGuard(pub std::process::Child);

/// The server binary cargo built for the tests, started from the crate root on the config file
/// `config` at a free port (stdout discarded, stderr piped), once `/health/ready` answers 200.
pub fn spawn_server(config: &std::path::Path) -> (ChildGuard, SocketAddr) {
    spawn_server_args(config, &[])
}

/// [`spawn_server`] with more command-line arguments (e.g. `--models a,b`).
pub fn spawn_server_args(config: &std::path::Path, args: &[&str]) -> (ChildGuard, SocketAddr) {
    use std::process::{Command, Stdio};
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    // gRPC on a free port unless the test picks one (servers of several tests run at once).
    let grpc: &[&str] = if args.contains(&"--grpc-port") { &[] } else { &["--grpc-port", "0"] };
    let child = Command::new(env!("CARGO_BIN_EXE_gpubackend"))
        .args(["-c", config.to_str().unwrap(), "--port", &port.to_string()])
        .args(grpc)
        .args(args)
        .current_dir(repo())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(child);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let start = Instant::now();
    while !Conn::new(addr).get("/health/ready").map(|r| r.status == 200).unwrap_or(false) {
        assert!(start.elapsed() < Duration::from_secs(600), "server not ready");
        assert!(child.0.try_wait().unwrap().is_none(), "server exited");
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, addr)
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub const DETECT: &str = "/api/v1/objects/detect?oauth_provider=mcs&oauth_token=test";
