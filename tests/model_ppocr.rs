//! PP-OCRv6 text detection (RapidOCR 3.10's det small model) run by the ONNX graph runner in burn
//! against the original model in onnxruntime (tests/fixtures/ppocr, produced by
//! tools/reference/ppocr.py) on a real plate photo (tests/data/plate_ad799kb.png). Tolerance 1e-4
//! per probability.

mod common;

use std::path::Path;

use burn::prelude::{Tensor, TensorData};
use common::read_f32s;
use gpubackend::models::DeviceSpec;
use gpubackend::models::onnx_graph::OnnxGraph;

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

#[test]
fn an_unsupported_op_is_named_at_load_time() {
    // The recogniser's graph has MatMul, Reshape, Softmax …: not (yet) runnable, and said so.
    let device = DeviceSpec::Cpu.device().unwrap();
    let err = OnnxGraph::load(Path::new("models/ppocr/PP-OCRv6_rec_small.onnx"), &device).unwrap_err();
    assert!(err.to_string().contains("is not supported by the graph runner"), "{err}");
}
