//! The ONNX reader (`models::onnx_weights::read`) on the real models it serves or will serve,
//! against what the `onnx` Python package (1.23.2, `onnx.load` + `numpy_helper`) reads from the same
//! files: node counts per op type, float and int64 initializers (tensors and values), the values of
//! `Constant` nodes (where the PP-OCR orientation classifier keeps every weight), attributes, and the
//! recogniser's dictionary in `metadata_props` (18 708 entries).

use std::collections::HashMap;

use gpubackend::models::onnx_weights::{OnnxModel, read};

fn load(path: &str) -> OnnxModel {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e} (run `make weights`)"));
    read(&bytes).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn ops(m: &OnnxModel) -> HashMap<&str, usize> {
    let mut out = HashMap::new();
    for n in &m.nodes {
        *out.entry(n.op_type.as_str()).or_default() += 1;
    }
    out
}

fn float_values(m: &OnnxModel) -> (usize, usize) {
    (m.floats.len(), m.floats.values().map(|t| t.data.len()).sum())
}

#[test]
fn ppocr_det_graph_and_weights() {
    let m = load("models/ppocr/PP-OCRv6_det_small.onnx");
    assert_eq!(m.nodes.len(), 464);
    let ops = ops(&m);
    for (op, n) in [("Identity", 147), ("Add", 111), ("Conv", 83), ("Mul", 39), ("Relu", 20), ("HardSigmoid", 13)] {
        assert_eq!(ops[op], n, "{op}");
    }
    assert_eq!(ops["ConvTranspose"], 2);
    assert_eq!(float_values(&m), (213, 2_453_416));
    assert!(m.ints.is_empty() && m.metadata.is_empty());
    let conv = m.nodes.iter().find(|n| n.op_type == "Conv").unwrap();
    assert_eq!(conv.inputs, ["x", "conv2d_112.w_0"]);
    assert_eq!(m.float(&conv.inputs[1]).unwrap().dims, [24, 3, 3, 3]);
    assert_eq!(conv.attr_ints("strides"), Some(&[2i64, 2][..]));
    assert_eq!(conv.attr_ints("pads"), Some(&[1i64, 1, 1, 1][..]));
    assert_eq!(conv.attr_ints("kernel_shape"), Some(&[3i64, 3][..]));
}

#[test]
fn ppocr_rec_dictionary_and_int64_initializers() {
    let m = load("models/ppocr/PP-OCRv6_rec_small.onnx");
    assert_eq!(m.nodes.len(), 480);
    assert_eq!(float_values(&m), (204, 5_267_683));
    assert_eq!((m.ints.len(), m.ints.values().map(Vec::len).sum::<usize>()), (40, 51));
    let characters: Vec<&str> = m.metadata["character"].split('\n').collect();
    assert_eq!(characters.len(), 18_708);
    assert_eq!(characters[..3], ["!", "\"", "#"]);
    assert_eq!(m.metadata["character"].chars().count(), 37_415);
    assert_eq!(ops(&m)["BatchNormalization"], 3);
}

#[test]
fn ppocr_cls_weights_live_in_constant_nodes() {
    let m = load("models/ppocr/ch_ppocr_mobile_v2.0_cls_mobile.onnx");
    let ops = ops(&m);
    assert_eq!((m.nodes.len(), ops["Constant"], ops["BatchNormalization"]), (566, 308, 35));
    // No initializers at all: 285 float, 22 int64 and one int32 (the head's Reshape width, 200:
    // read as ints since the graph runner runs the head) tensors are `Constant` values.
    assert_eq!(float_values(&m), (285, 133_700));
    assert_eq!((m.ints.len(), m.ints.values().map(Vec::len).sum::<usize>()), (23, 77));
    assert_eq!(m.ints["fill_constant_1.tmp_0"], [200]);
    let conv = m.nodes.iter().find(|n| n.op_type == "Conv").unwrap();
    assert_eq!(conv.inputs[1], "conv1_weights");
    assert_eq!(m.float("conv1_weights").unwrap().dims, [8, 3, 3, 3]);
}

#[test]
fn sface_reads_as_before() {
    let m = load("models/sface/face_recognition_sface_2021dec.onnx");
    assert_eq!(m.nodes.len(), 88);
    assert_eq!(float_values(&m), (174, 9_667_074));
}
