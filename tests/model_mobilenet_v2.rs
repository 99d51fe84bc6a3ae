//! MobileNetV2 in burn vs the onnxruntime reference (tests/fixtures/mobilenet_v2, produced by
//! tools/reference/mobilenet_v2.py from the same torchvision weights), on real images.
//! Tolerances: preprocessing 1e-4 per value; logits 1e-4 per value (absolute).

use crate::common;

use common::read_f32s;

use std::path::Path;

use gpubackend::models::DeviceSpec;
use gpubackend::models::mobilenet_v2::{Classifier, INPUT_LEN, NUM_CLASSES};
use gpubackend::pipelines::decode::ImageLimits;
use gpubackend::pipelines::decode::decode;
use gpubackend::pipelines::preprocess::{ClassifierSpec, classifier_input};

const WEIGHTS: &str = "models/mobilenet_v2/mobilenet_v2-b0353104.pth";
const IMAGES: [&str; 2] = ["chelsea", "coffee"];

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap()
}

#[test]
fn preprocessing_matches_the_reference() {
    for name in IMAGES {
        let bytes = std::fs::read(format!("{}/tests/data/{name}.png", env!("CARGO_MANIFEST_DIR"))).unwrap();
        let img = decode(&bytes, &ImageLimits::default()).unwrap();
        let ours = classifier_input(&img, ClassifierSpec::IMAGENET);
        let reference = read_f32s(&format!("tests/fixtures/mobilenet_v2/{name}.input.f32"));
        let d = max_abs_diff(&ours.data, &reference);
        eprintln!("{name}: preprocessing max abs diff {d:e}");
        assert!(d <= 1e-4, "{name}: preprocessing differs by {d}");
    }
}

#[test]
fn logits_match_onnxruntime_on_cpu_batched() {
    let model = Classifier::load(Path::new(WEIGHTS), DeviceSpec::Cpu.device().unwrap()).unwrap();
    let inputs: Vec<Vec<f32>> =
        IMAGES.iter().map(|n| read_f32s(&format!("tests/fixtures/mobilenet_v2/{n}.input.f32"))).collect();
    assert!(inputs.iter().all(|i| i.len() == INPUT_LEN));
    let refs: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();
    let outputs = model.forward(&refs).unwrap();
    for (name, out) in IMAGES.iter().zip(&outputs) {
        let reference = read_f32s(&format!("tests/fixtures/mobilenet_v2/{name}.logits.f32"));
        assert_eq!(out.len(), NUM_CLASSES);
        let d = max_abs_diff(out, &reference);
        println!("{name}: max |burn - onnxruntime| = {d:e}");
        assert!(d <= 1e-4, "{name}: logits differ by {d}");
        assert_eq!(argmax(out), argmax(&reference));
    }
    // Batch composition does not change an item's answer.
    let single = model.forward(&refs[1..2]).unwrap();
    assert!(max_abs_diff(&single[0], &outputs[1]) <= 1e-4);
}

#[test]
fn missing_weights_name_the_fetch_command() {
    let err = gpubackend::models::check_weights(Path::new("models/nope.pth")).unwrap_err().to_string();
    assert!(err.contains("scripts/fetch-weights.sh"), "{err}");
}

/// What the broker's compact payloads cost (`broker.payload`): the reference inputs sent as f16
/// and as u8, run through the model, against the same inputs in f32. Softmax probabilities per
/// class within 5e-4 (f16) and 1e-2 (u8) absolute, the same top-1 class; the figures are printed.
#[test]
fn compact_broker_payloads_keep_the_answer() {
    use gpubackend::broker::codec::Payload;
    use gpubackend::config::PayloadEncoding;
    let softmax = |v: &[f32]| {
        let m = v.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = v.iter().map(|x| (x - m).exp()).collect();
        let s: f32 = e.iter().sum();
        e.into_iter().map(|x| x / s).collect::<Vec<f32>>()
    };
    let model = Classifier::load(Path::new(WEIGHTS), DeviceSpec::Cpu.device().unwrap()).unwrap();
    for name in IMAGES {
        let input = read_f32s(&format!("tests/fixtures/mobilenet_v2/{name}.input.f32"));
        let exact = softmax(&model.forward(&[&input]).unwrap()[0]);
        for (encoding, tolerance) in [(PayloadEncoding::F16, 5e-4), (PayloadEncoding::U8, 1e-2)] {
            let payload = Payload::encode(&input, encoding);
            let sent = payload.decode().unwrap();
            let probs = softmax(&model.forward(&[&sent]).unwrap()[0]);
            let d = max_abs_diff(&probs, &exact);
            println!(
                "{name} {encoding:?}: {} bytes, input max err {:.2e}, probability max |diff| {d:.2e}, top-1 {:.4} vs {:.4}",
                payload.len(),
                max_abs_diff(&sent, &input),
                probs[argmax(&probs)],
                exact[argmax(&exact)]
            );
            assert!(d <= tolerance, "{name} {encoding:?}: probabilities differ by {d}");
            assert_eq!(argmax(&probs), argmax(&exact), "{name} {encoding:?}");
        }
    }
}
