//! The Open Inference Protocol (KServe v2 / Triton's HTTP and gRPC API) driven by Triton's own
//! Python clients (PyPI tritonclient 2.73.0, `tools/triton/oip_check.py`, installed by
//! scripts/setup.sh): the real binary on the shipped defaults with a user's model repository, and
//! a server with tokens and a rate limit. Plus what curl users send by hand (raw binary bodies,
//! JSON errors), and that protocol requests and Vision ones batch together.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

use gpubackend::client::{Conn, metric_value};

use crate::common::{repo, spawn_server_args, tempdir};

fn python() -> PathBuf {
    let p = repo().join("tools/triton/.venv/bin/python");
    assert!(p.exists(), "{} missing: run scripts/setup.sh (it installs tools/triton/requirements.txt)", p.display());
    p
}

/// Runs one check of oip_check.py against `http` / `grpc`; its output is printed.
fn check(what: &str, http: SocketAddr, grpc: SocketAddr, extra: &[&str]) {
    let out = Command::new(python())
        .arg(repo().join("tools/triton/oip_check.py"))
        .args([what, "--http", &http.to_string(), "--grpc", &grpc.to_string(), "--root", repo().to_str().unwrap()])
        .args(extra)
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{stdout}");
    assert!(out.status.success(), "oip_check.py {what} failed:\n{stdout}\n{stderr}");
}

/// What a user places in a model repository: PP-OCR's orientation classifier (ONNX), named as
/// its graph names its tensors, with its labels.
fn user_repository() -> PathBuf {
    let dir = tempdir("repository");
    let model = dir.join("orientation");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::copy(repo().join("models/ppocr/ch_ppocr_mobile_v2.0_cls_mobile.onnx"), model.join("model.onnx")).unwrap();
    std::fs::write(model.join("labels.txt"), "upright\nturned\n").unwrap();
    std::fs::write(
        model.join("config.toml"),
        r#"labels = "labels.txt"
max_batch = 8
[io]
task = "classify"
input = [48, 192]
output = "probabilities"
classes = 2
[tensors]
input = "x"
output = "softmax"
"#,
    )
    .unwrap();
    dir
}

#[test]
fn tritonclient_http_and_grpc_work_against_the_shipped_defaults_and_a_users_repository_model() {
    let repository = user_repository();
    let grpc_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (_server, addr) = spawn_server_args(
        &repo().join("config/default.toml"),
        &["--grpc-port", &grpc_port.to_string(), "--model-repository", repository.to_str().unwrap()],
    );
    let grpc: SocketAddr = format!("127.0.0.1:{grpc_port}").parse().unwrap();
    check("served", addr, grpc, &[]);
    check("repository", addr, grpc, &[]);

    let metrics = Conn::new(addr).get("/metrics").unwrap().text();
    let ok = |protocol| {
        metric_value(&metrics, "gpubackend_oip_requests_total", &[("protocol", protocol), ("outcome", "ok")])
    };
    assert!(ok("http") >= 40.0 && ok("grpc") >= 40.0, "http {} grpc {}", ok("http"), ok("grpc"));
    // The concurrent protocol requests went through the model's batcher together.
    let labels = [("model", "mobilenet_v2")];
    let (sum, count) = (
        metric_value(&metrics, "gpubackend_batch_size_sum", &labels),
        metric_value(&metrics, "gpubackend_batch_size_count", &labels),
    );
    assert!(count > 0.0 && sum / count > 1.0, "mobilenet_v2 batches {count}, items {sum}");

    // curl's way: the raw image as the body (`Inference-Header-Content-Length: 0`), outputs binary.
    let jpeg = std::fs::read(repo().join("tests/data/chelsea.jpg")).unwrap();
    let r = raw_post(addr, "/v2/models/mobilenet_v2_image/infer", &jpeg);
    assert_eq!(r.status, 200, "{}", r.text());
    let header = r.header("inference-header-content-length").unwrap().parse::<usize>().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&r.body[..header]).unwrap();
    assert_eq!(json["outputs"][0]["shape"], serde_json::json!([1, 1000]), "{json}");
    let logits: Vec<f32> =
        r.body[header..].chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    let best = (0..logits.len()).max_by(|&a, &b| logits[a].total_cmp(&logits[b])).unwrap();
    assert!((281..=285).contains(&best), "chelsea is a cat, not class {best}");
    // A broken JSON body: 400 with the protocol's error object.
    let r = Conn::new(addr).request("POST", "/v2/models/mobilenet_v2/infer", Some("application/json"), b"{").unwrap();
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("inference request JSON"), "{}", r.text());
}

/// POST with `Inference-Header-Content-Length: 0` (a raw binary body).
fn raw_post(addr: SocketAddr, path: &str, body: &[u8]) -> gpubackend::client::Response {
    let mut c = Conn::new(addr).with_header("Inference-Header-Content-Length", "0");
    c.request("POST", path, Some("application/octet-stream"), body).unwrap()
}

#[test]
fn tokens_and_rate_limits_hold_on_both_protocols() {
    // A process of its own (its refusal counters are not the other tests'): the shipped defaults
    // with a token and a rate limit, as a user sets them.
    let dir = tempdir("oip-auth");
    let shipped = std::fs::read_to_string(repo().join("config/default.toml")).unwrap();
    let with_token = shipped.replacen("tokens = []", "tokens = [\"oip-secret\"]", 1);
    assert_ne!(with_token, shipped, "config/default.toml has `tokens = []`");
    let config = dir.join("auth.toml");
    std::fs::write(&config, format!("{with_token}\n[rate_limit]\nrequests_per_s = 0.2\nburst = 4\n")).unwrap();
    let grpc_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (_server, addr) =
        spawn_server_args(&config, &["--grpc-port", &grpc_port.to_string(), "--models", "mobilenet_v2"]);
    let grpc: SocketAddr = format!("127.0.0.1:{grpc_port}").parse().unwrap();
    check("auth", addr, grpc, &["--token", "oip-secret"]);
}

#[test]
fn an_unsupported_op_in_a_repository_model_stops_the_start_naming_the_op_and_node() {
    // A user's graph with an op the runner lacks: a copy of the orientation classifier whose
    // first node's op is renamed (same length, so the protobuf stays valid).
    let dir = user_repository();
    let onnx = dir.join("orientation/model.onnx");
    let mut bytes = std::fs::read(&onnx).unwrap();
    // A node's op_type: NodeProto field 4, a string of 4 bytes, "Conv".
    let at = bytes.windows(6).position(|w| w == b"\x22\x04Conv").expect("the graph has a Conv node") + 2;
    bytes[at..at + 4].copy_from_slice(b"Cnvx");
    std::fs::write(&onnx, bytes).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gpubackend"))
        .args(["-c", "config/default.toml", "--port", "0", "--grpc-port", "0", "--models", "orientation"])
        .args(["--model-repository", dir.to_str().unwrap()])
        .current_dir(repo())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // It must stop by itself; a server that started anyway is killed (and the test fails).
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() && start.elapsed() < std::time::Duration::from_secs(120) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started with an unsupported op: {err}");
    assert!(err.contains("op `Cnvx`") && err.contains("node `"), "{err}");
}
