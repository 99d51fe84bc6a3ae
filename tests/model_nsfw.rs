//! adult/detect's network: nsfwjs 4.3.0's MobileNetV2 classifier (a TF.js layers model, read by
//! `models::tfjs_layers`, run on the CPU engine) with the shipped config's I/O contract, against
//! the same model loaded by nsfwjs's own loader and run by TensorFlow.js in Node
//! (tests/fixtures/nsfw/tfjs.json, written by tools/reference/tfjs/nsfw_reference.mjs):
//! - the network alone on a fixed input: the five probabilities within 1e-4;
//! - preprocessing (÷255, bilinear with aligned corners to 224²) and the network on every PNG photo
//!   of tests/data and the evaluation set (identical pixels on both sides): within 1e-4;
//! - on the JPEG photos (the decoders differ by a level here and there: jpeg-js and the image
//!   crate): each probability within 0.05 (measured: 0.016, Drawing ↔ Neutral on collage.jpg),
//!   `safe` (Drawing + Neutral) within 0.03 (measured: 0.017 on obama3.jpg, a large photo whose
//!   224² input samples single pixels) and the same answer to `safe ≥ 0.5`.

use std::path::Path;

use burn::prelude::{Tensor, TensorData};
use gpubackend::models::DeviceSpec;
use gpubackend::models::declared::{DeclaredNet, IoContract};
use gpubackend::pipelines::decode::{ImageLimits, decode};
use gpubackend::pipelines::preprocess::declared_input;
use serde_json::Value;

const SIDE: usize = 224;

fn io() -> IoContract {
    let config = gpubackend::infer::load_config(None).unwrap();
    config.models["adult"].settings["io"].clone().try_into().unwrap()
}

fn reference() -> Value {
    serde_json::from_slice(&std::fs::read("tests/fixtures/nsfw/tfjs.json").unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Where an image of the fixture lies: tests/data, or the evaluation set fetched with the weights.
fn image_path(name: &str) -> std::path::PathBuf {
    let data = Path::new("tests/data").join(name);
    if data.exists() { data } else { Path::new("models/nsfw-eval").join(name) }
}

#[test]
fn the_network_and_its_preprocessing_answer_as_nsfwjs_in_tensorflow_js() {
    let device = DeviceSpec::Cpu.device().unwrap();
    let io = io();
    let net = DeclaredNet::load(Path::new("models/nsfw/model.json"), &io, &device).unwrap();
    let reference = reference();

    // The network alone: pixel ((i · 7919) mod 256) / 255 at NHWC index i.
    let mut x = vec![0f32; 3 * SIDE * SIDE];
    for y in 0..SIDE {
        for xx in 0..SIDE {
            for c in 0..3 {
                let i = (y * SIDE + xx) * 3 + c;
                x[(c * SIDE + y) * SIDE + xx] = ((i * 7919) % 256) as f32 / 255.0;
            }
        }
    }
    let got: Vec<f32> =
        net.forward(Tensor::from_data(TensorData::new(x, [1, 3, SIDE, SIDE]), &device)).into_data().iter().collect();
    let want = floats(&reference["synthetic"]);
    let d = max_diff(&got, &want);
    assert!(d < 1e-4, "fixed input: {got:?} vs TF.js {want:?} ({d})");

    let (mut png_worst, mut jpeg_worst, mut jpeg_safe) = (0f32, 0f32, 0f32);
    for (name, entry) in reference["images"].as_object().unwrap() {
        let img = decode(&std::fs::read(image_path(name)).unwrap(), &ImageLimits::default()).unwrap();
        assert_eq!(
            (img.width as u64, img.height as u64),
            (entry["width"].as_u64().unwrap(), entry["height"].as_u64().unwrap())
        );
        let input = declared_input(&img, &io);
        let t = Tensor::from_data(TensorData::new(input.data, [1, 3, SIDE, SIDE]), &device);
        let got: Vec<f32> = net.forward(t).into_data().iter().collect();
        let want = floats(&entry["probabilities"]);
        let d = max_diff(&got, &want);
        let safe = |p: &[f32]| p[0] + p[2];
        if name.ends_with(".png") {
            assert!(d < 1e-4, "{name}: {got:?} vs TF.js {want:?} ({d})");
            png_worst = png_worst.max(d);
        } else {
            let (a, b) = (safe(&got), safe(&want));
            assert!(
                d < 0.05 && (a - b).abs() < 0.03 && (a >= 0.5) == (b >= 0.5),
                "{name}: {got:?} vs TF.js {want:?} ({d})"
            );
            jpeg_worst = jpeg_worst.max(d);
            jpeg_safe = jpeg_safe.max((a - b).abs());
        }
    }
    eprintln!(
        "nsfw vs TF.js: fixed input {d:.1e}, PNG photos {png_worst:.1e}, JPEG photos {jpeg_worst:.1e} (safe {jpeg_safe:.1e})"
    );
}
