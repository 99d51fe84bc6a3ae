//! A device that cannot start says why: `gpubackend --check` opens each placed device once and
//! prints its adapter or what is missing; a server whose device cannot be opened shows the reason
//! in /health/ready and /admin. On this machine: Mesa's lavapipe (the adapter is printed), the Vulkan
//! loader hidden (unshare + a bind mount, as root), no ICD manifest, no discrete GPU, no libcuda
//! (`make test` builds with `--features cuda`; a build without it refuses `cuda:N` in the config).

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{TestServer, config, repo, tempdir};
use gpubackend::config::Placement;
use gpubackend::models::DeviceSpec;

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_gpubackend"))
}

/// A config placing MobileNetV2 on `device` alone, written to a temp file.
fn config_on(device: &str) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("config/default.toml")).unwrap();
    let head = &text[..text.find("[[placement]]").expect("default.toml has a placement")];
    let dir = tempdir(&format!("devices-{}", device.replace(':', "-")));
    let path = dir.join("config.toml");
    std::fs::write(&path, format!("{head}[[placement]]\ndevice = \"{device}\"\nmodels = [\"mobilenet_v2\"]\n"))
        .unwrap();
    path
}

fn check(bin: &Path, device: &str, envs: &[(&str, &str)]) -> Output {
    Command::new(bin)
        .arg("-c")
        .arg(config_on(device))
        .arg("--check")
        .envs(envs.iter().copied())
        .current_dir(repo())
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn lavapipe_is_printed_as_the_adapter() {
    let o = check(&binary(), "wgpu", &[]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("device wgpu: llvmpipe"), "{t}");
    assert!(t.contains("(Vulkan, Cpu, driver ") && t.contains("config OK"), "{t}");
}

#[test]
fn no_icd_manifest_is_named_with_where_the_loader_looked() {
    let o = check(&binary(), "wgpu", &[("VK_DRIVER_FILES", "/nonexistent/icd.json")]);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains("device wgpu: UNAVAILABLE")
            && t.contains("no Vulkan driver: no ICD manifest in VK_DRIVER_FILES=/nonexistent/icd.json"),
        "{t}"
    );
    assert!(t.contains("1 device(s) cannot be opened"), "{t}");
}

#[test]
fn a_missing_discrete_gpu_lists_what_there_is() {
    let o = check(&binary(), "wgpu:0", &[]);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains("wgpu:0 is discrete GPU #0, but the adapters are: llvmpipe"), "{t}");
}

/// The real loader made unloadable: a private mount namespace with /dev/null bound over it.
#[test]
fn a_missing_vulkan_loader_is_named() {
    let cache = String::from_utf8(Command::new("ldconfig").arg("-p").output().unwrap().stdout).unwrap();
    let loader = cache
        .lines()
        .find(|l| l.trim_start().starts_with("libvulkan.so.1 ") && l.contains("x86-64"))
        .and_then(|l| l.split("=> ").nth(1))
        .expect("libvulkan1 is installed (make setup)")
        .trim()
        .to_string();
    assert!(is_root(), "this test hides the loader with unshare + mount: run it as root (CI does)");
    let script = format!(
        "mount --bind /dev/null {loader} && exec {} -c {} --check",
        binary().display(),
        config_on("wgpu").display()
    );
    let o = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .current_dir(repo())
        .output()
        .unwrap();
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains("no Vulkan loader: libvulkan.so.1 cannot be loaded")
            && t.contains("install it (Debian/Ubuntu: libvulkan1)"),
        "{t}"
    );
}

fn is_root() -> bool {
    String::from_utf8_lossy(&Command::new("id").arg("-u").output().unwrap().stdout).trim() == "0"
}

#[test]
fn cuda_without_libcuda_says_so() {
    let o = Command::new(binary()).args(["devices", "--json"]).output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", text(&o)));
    assert!(!o.status.success(), "no GPU on this machine: `devices` exits non-zero");
    assert!(report["cuda"]["library"]["Err"].as_str().is_some_and(|e| e.contains("libcuda.so.1")), "{report}");
    let o = check(&binary(), "cuda:0", &[]);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    if cfg!(feature = "cuda") {
        assert_eq!(report["cuda_built"], true);
        assert_eq!(
            report["cuda_build_target"], 13000,
            "bindings for driver 580 / CUDA 13.0 (make sets CUDARC_CUDA_VERSION)"
        );
        assert!(t.contains("device cuda:0: UNAVAILABLE: libcuda not found") && t.contains("--gpus"), "{t}");
    } else {
        assert!(t.contains("needs a build with the `cuda` feature"), "{t}");
    }
}

#[test]
fn a_worker_whose_device_cannot_open_says_why_in_readiness_and_admin() {
    let mut c = config();
    c.models.retain(|name, _| name == "mobilenet_v2");
    c.placement = vec![Placement {
        device: DeviceSpec::Wgpu(Some(0)),
        models: vec!["mobilenet_v2".into()],
        instances: 1,
        depth: None,
    }];
    c.supervisor.initial_backoff_ms = 50;
    let server = TestServer::start_unready(c);
    let mut conn = server.conn();
    let start = Instant::now();
    let ready = loop {
        let r = conn.get("/health/ready").unwrap();
        let v = r.json();
        if v["not_ready"]["mobilenet_v2"][0].as_str().is_some_and(|s| s.contains("cannot be opened")) {
            assert_eq!(r.status, 503);
            break v;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "no failure reason in {v}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let why = ready["not_ready"]["mobilenet_v2"][0].as_str().unwrap();
    assert!(why.starts_with("wgpu:0: device wgpu:0 cannot be opened: wgpu:0 is discrete GPU #0"), "{why}");
    let admin = conn.get("/admin/placement").unwrap().json();
    let worker = &admin["devices"][0]["workers"][0];
    assert_eq!(worker["state"], "loading");
    assert!(worker["error"].as_str().unwrap().contains("but the adapters are: llvmpipe"), "{admin}");
    let page = conn.get("/admin").unwrap().text();
    assert!(page.contains("but the adapters are: llvmpipe"), "{page}");
}
