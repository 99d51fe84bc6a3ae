//! SFace in burn vs the original ONNX model in onnxruntime (tests/fixtures/sface, produced by
//! tools/reference/sface.py) on real faces: the MTCNN reference's faces of obama.jpg, obama2.jpg,
//! obama3.jpg and biden.jpg aligned to the ArcFace template. Tolerance 1e-4 per value; and the
//! identity check of the issue: the three Obama photos are one person, Biden another, at OpenCV's
//! SFace threshold 0.363.

mod common;

use std::path::Path;

use common::read_f32s;
use gpubackend::models::DeviceSpec;
use gpubackend::models::sface::{EMBEDDING_LEN, Embedder, INPUT_LEN, cosine};

const WEIGHTS: &str = "models/sface/face_recognition_sface_2021dec.onnx";
const THRESHOLD: f32 = 0.363;

#[test]
fn embeddings_match_onnxruntime_and_tell_people_apart() {
    let embedder = Embedder::load(Path::new(WEIGHTS), DeviceSpec::Cpu.device().unwrap()).unwrap();
    let inputs = read_f32s("tests/fixtures/sface/sface.input.f32");
    let reference = read_f32s("tests/fixtures/sface/sface.embedding.f32");
    let faces: Vec<&[f32]> = inputs.chunks(INPUT_LEN).collect();
    assert_eq!(faces.len(), 4);
    let ours = embedder.forward(&faces).unwrap();
    for (i, (e, r)) in ours.iter().zip(reference.chunks(EMBEDDING_LEN)).enumerate() {
        let d = e.iter().zip(r).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        println!("face {i}: max |burn - onnxruntime| = {d:e}");
        assert!(d <= 1e-4, "face {i} differs by {d}");
    }
    // One at a time gives the same embedding as in the batch.
    let single = embedder.forward(&faces[3..4]).unwrap();
    assert!(single[0].iter().zip(&ours[3]).all(|(a, b)| (a - b).abs() <= 1e-4));
    let (obama, biden) = (&ours[..3], &ours[3]);
    for i in 0..3 {
        for j in i + 1..3 {
            let c = cosine(&obama[i], &obama[j]);
            assert!(c > THRESHOLD, "obama {i} vs {j}: {c}");
        }
        let c = cosine(&obama[i], biden);
        assert!(c < THRESHOLD, "obama {i} vs biden: {c}");
    }
}

#[test]
fn a_wrong_file_is_refused_with_its_path() {
    let err = Embedder::load(Path::new("models/mtcnn/pnet.pt"), DeviceSpec::Cpu.device().unwrap()).unwrap_err();
    assert!(err.to_string().contains("models/mtcnn/pnet.pt"), "{err}");
}
