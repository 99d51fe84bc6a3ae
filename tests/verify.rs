//! `gpubackend verify --device D`: the binary the GPU check runs, on `cpu` here. It passes on the
//! committed fixtures and fails (exit status, `FAIL` line) when a reference value is off by 1e-3.

use crate::common;

use std::process::Command;

use common::{repo, tempdir};

fn verify(root: &std::path::Path, json: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gpubackend"))
        .args(["verify", "--device", "cpu", "--batch", "4", "--root"])
        .arg(root)
        .arg("--json")
        .arg(json)
        .output()
        .unwrap()
}

#[test]
fn verify_passes_on_the_fixtures_and_fails_on_a_wrong_reference() {
    let dir = tempdir("verify");
    let o = verify(&repo(), &dir.join("ok.json"));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("verify on cpu") && out.contains(": OK in"), "{out}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("ok.json")).unwrap()).unwrap();
    assert_eq!(report["ok"], true);
    assert_eq!(report["checks"].as_array().unwrap().len(), 26, "15 + CenterNet 6 + Real-ESRGAN 2 + nsfw 3");

    // A copy of the fixtures with one reference logit moved by 1e-3 (10× the tolerance).
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    assert!(Command::new("cp").arg("-r").arg(repo().join("tests")).arg(&root).status().unwrap().success());
    std::os::unix::fs::symlink(repo().join("models"), root.join("models")).unwrap();
    let logits = root.join("tests/fixtures/mobilenet_v2/coffee.logits.f32");
    let mut bytes = std::fs::read(&logits).unwrap();
    let v = f32::from_le_bytes(bytes[400..404].try_into().unwrap()) + 1e-3;
    bytes[400..404].copy_from_slice(&v.to_le_bytes());
    std::fs::write(&logits, bytes).unwrap();
    let o = verify(&root, &dir.join("bad.json"));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success(), "{out}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("bad.json")).unwrap()).unwrap();
    assert_eq!(report["ok"], false, "{out}");
    let failed: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| c["output"].as_str().unwrap())
        .collect();
    assert_eq!(failed, ["logits (2 images)", "logits (batch 4)"], "{out}");
    assert!(out.contains("FAIL"), "{out}");
}
