//! Every input the fuzzer found a bug with (fuzz/regressions/<target>/) and the committed seed
//! corpus (fuzz/corpus/<target>/) replayed through the fuzz targets' bodies: none may panic,
//! abort or stall. (The PyTorch target reads with burn-store's reader, not this crate: it has no
//! finds to replay; its corpus runs in `scripts/fuzz.sh`.)

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut n = 0;
    for dir in ["regressions", "corpus"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else { continue };
        for e in entries {
            let path = e.unwrap().path();
            println!("{target}: {}", path.display());
            run(&std::fs::read(&path).unwrap());
            n += 1;
        }
    }
    assert!(n > 0, "no inputs for {target}");
}

#[test]
fn multipart() {
    replay("multipart", gpubackend_formats::fuzzing::multipart);
}

#[test]
fn decode() {
    replay("decode", gpubackend_formats::fuzzing::image);
}

#[test]
fn onnx() {
    replay("onnx", gpubackend_formats::fuzzing::onnx);
}

#[test]
fn ncnn_param() {
    replay("ncnn_param", gpubackend_formats::fuzzing::ncnn_param);
}

#[test]
fn tfjs() {
    replay("tfjs", gpubackend_formats::fuzzing::tfjs);
}
