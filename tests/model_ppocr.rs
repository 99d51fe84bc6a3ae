//! PP-OCRv6 text detection and recognition (RapidOCR 3.10's small models) in burn against the
//! original models in onnxruntime (tests/fixtures/ppocr, produced by tools/reference/ppocr.py) on
//! real images: a plate photo (tests/data/plate_ad799kb.png) and a line of a screenshot
//! (tests/data/why-rust.png), and the orientation classifier on that line upright and turned.
//! Tolerance 1e-4 per probability.

use crate::common;

use std::path::Path;

use burn::prelude::{Tensor, TensorData};
use common::read_f32s;
use gpubackend::models::DeviceSpec;
use gpubackend::models::onnx_graph::OnnxGraph;
use gpubackend::models::ppocr::{TextRecognizer, rec_steps};

#[test]
fn det_probability_map_matches_onnxruntime() {
    let device = DeviceSpec::Cpu.device().unwrap();
    let net = OnnxGraph::load(Path::new("models/ppocr/PP-OCRv6_det_small.onnx"), &device).unwrap();
    let input = read_f32s("tests/fixtures/ppocr/det.input.f32");
    let reference = read_f32s("tests/fixtures/ppocr/det.prob.f32");
    let x = Tensor::<4>::from_data(TensorData::new(input, [1, 3, 96, 256]), &device);
    let y = net.forward(x);
    assert_eq!(y.dims(), [1, 1, 96, 256]);
    let ours: Vec<f32> = y.into_data().iter::<f32>().collect();
    let d = ours.iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    println!("det: max |burn - onnxruntime| = {d:e}");
    assert!(d <= 1e-4, "det probability map differs by {d}");
}

/// The recogniser on one fixture crop: at each time step the probabilities of onnxruntime's five
/// most probable classes, and the mass of all the others, within 1e-4; the same best class; the
/// greedy CTC text is the crop's text.
fn rec_matches(name: &str, width: usize, text: &str) {
    let device = DeviceSpec::Cpu.device().unwrap();
    let net = TextRecognizer::load(Path::new("models/ppocr/PP-OCRv6_rec_small.onnx"), &device).unwrap();
    assert_eq!(net.charset.len(), 18_710);
    let input = read_f32s(&format!("tests/fixtures/ppocr/rec.{name}.input.f32"));
    let top = read_f32s(&format!("tests/fixtures/ppocr/rec.{name}.top.f32"));
    let rest = read_f32s(&format!("tests/fixtures/ppocr/rec.{name}.rest.f32"));
    let steps = rec_steps(width);
    assert_eq!(rest.len(), steps, "onnxruntime's steps for width {width}");
    let x = Tensor::<4>::from_data(TensorData::new(input, [1, 3, 48, width]), &device);
    let probs = net.probabilities(x.clone());
    let classes = net.charset.len();
    assert_eq!(probs.dims(), [1, steps, classes]);
    let probs: Vec<f32> = probs.into_data().iter::<f32>().collect();
    let mut worst = 0f32;
    for t in 0..steps {
        let row = &probs[t * classes..(t + 1) * classes];
        let mut named = 0f32;
        for k in 0..5 {
            let (class, p) = (top[(t * 5 + k) * 2] as usize, top[(t * 5 + k) * 2 + 1]);
            worst = worst.max((row[class] - p).abs());
            named += row[class];
        }
        let ours_rest = row.iter().sum::<f32>() - named;
        worst = worst.max((ours_rest - rest[t]).abs());
    }
    println!("rec {name}: max |burn - onnxruntime| = {worst:e} over {steps} steps");
    assert!(worst <= 1e-4, "rec {name} probabilities differ by {worst}");

    // The device-side reduction gives onnxruntime's best class at every step.
    let best: Vec<f32> = net.best(x).into_data().iter::<f32>().collect();
    let steps_out = gpubackend::models::ppocr::steps(&best).unwrap();
    for (t, s) in steps_out.iter().enumerate() {
        assert_eq!(s.class, top[t * 10] as usize, "step {t}");
        assert!((s.prob - top[t * 10 + 1]).abs() <= 1e-4, "step {t}");
    }
    let mut decoded = String::new();
    let mut prev = 0;
    for s in &steps_out {
        if s.class != prev
            && let Some(c) = net.charset.char(s.class)
        {
            decoded.push(c);
        }
        prev = s.class;
    }
    assert_eq!(decoded, text);
}

#[test]
fn rec_plate_matches_onnxruntime() {
    rec_matches("plate", 320, "AD 799 KB");
}

#[test]
fn rec_text_line_matches_onnxruntime() {
    rec_matches("line", 700, "thread-safety — enabling you to eliminate");
}

#[test]
fn an_unsupported_op_is_named_at_load_time() {
    // The recogniser's graph has MatMul, Reshape, Softmax …: not (yet) runnable, and said so.
    let device = DeviceSpec::Cpu.device().unwrap();
    let err = OnnxGraph::load(Path::new("models/ppocr/PP-OCRv6_rec_small.onnx"), &device).unwrap_err();
    assert!(err.to_string().contains("is not supported by the graph runner"), "{err}");
}

/// The orientation classifier on a real line upright and turned 180°: both probabilities within
/// 1e-4 of onnxruntime's, and the turned line found upside down.
#[test]
fn cls_probabilities_match_onnxruntime() {
    let device = DeviceSpec::Cpu.device().unwrap();
    let net = gpubackend::models::ppocr::OrientationClassifier::load(
        Path::new("models/ppocr/ch_ppocr_mobile_v2.0_cls_mobile.onnx"),
        &device,
    )
    .unwrap();
    let input = read_f32s("tests/fixtures/ppocr/cls.input.f32");
    let reference = read_f32s("tests/fixtures/ppocr/cls.prob.f32");
    let x = Tensor::<4>::from_data(TensorData::new(input, [2, 3, 48, 192]), &device);
    let y = net.forward(x);
    assert_eq!(y.dims(), [2, 2]);
    let ours: Vec<f32> = y.into_data().iter::<f32>().collect();
    let d = ours.iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    println!("cls: ours {ours:?}, onnxruntime {reference:?}, max diff {d:e}");
    assert!(d <= 1e-4, "cls probabilities differ by {d}");
    let p = gpubackend::pipelines::text::TextParams::default();
    assert!(!gpubackend::pipelines::text::upside_down(&ours[0..2], &p));
    assert!(gpubackend::pipelines::text::upside_down(&ours[2..4], &p));
}

/// The orientation classifier's whole ONNX graph on the graph runner (its head, GlobalAveragePool
/// → Flatten/Reshape → MatMul → Add → Softmax, included): the same probabilities as onnxruntime
/// within 1e-4. What a model declared only in the configuration (`architecture = "onnx"`) runs on.
#[test]
fn the_whole_cls_graph_runs_on_the_graph_runner_as_onnxruntime() {
    let device = DeviceSpec::Cpu.device().unwrap();
    let net = OnnxGraph::load(Path::new("models/ppocr/ch_ppocr_mobile_v2.0_cls_mobile.onnx"), &device).unwrap();
    let input = read_f32s("tests/fixtures/ppocr/cls.input.f32");
    let reference = read_f32s("tests/fixtures/ppocr/cls.prob.f32");
    let y = net.forward(Tensor::<4>::from_data(TensorData::new(input, [2, 3, 48, 192]), &device));
    assert_eq!(y.dims(), [2, 2, 1, 1]);
    let ours: Vec<f32> = y.into_data().iter::<f32>().collect();
    let d = ours.iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    println!("cls on the graph runner: ours {ours:?}, onnxruntime {reference:?}, max diff {d:e}");
    assert!(d <= 1e-4, "cls probabilities differ by {d}");
}
