//! objects/detect mode `car_number` end to end on the real server (embedded default: the plates
//! model on the CPU): a real car photo (tests/data/car_5au5341.png, the Czech plate 5AU 5341), a
//! photo without a plate, a broken file, and `["object", "car_number"]` answering both lists.

use crate::common;

use common::schema::OpenApi;
use common::{DETECT, TestServer, config, data};
use gpubackend::client::Conn;
use serde_json::{Value, json};

fn detect(c: &mut Conn, modes: &[&str], files: &[(&str, Vec<u8>)]) -> (u16, Value) {
    let meta =
        json!({"mode": modes, "images": files.iter().map(|(n, _)| json!({"name": n})).collect::<Vec<_>>()}).to_string();
    let mut parts: Vec<(&str, Option<&str>, &[u8])> =
        files.iter().map(|(n, b)| (*n, Some("image.png"), b.as_slice())).collect();
    parts.push(("meta", None, meta.as_bytes()));
    let r = c.post_multipart(DETECT, &parts).unwrap();
    let v = r.json();
    let api = OpenApi::load();
    if r.status == 200 {
        api.assert_valid("objects_detect_response", &v);
    } else {
        api.assert_valid("error_response", &v);
    }
    (r.status, v)
}

/// The value of the sample of `metric` with all of `labels` in a Prometheus text exposition (0
/// when absent).
fn sample(metrics: &str, metric: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(metric) && labels.iter().all(|label| l.contains(label)))
        .find_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse().ok()))
        .unwrap_or(0.0)
}

fn iou(a: &[u64], b: [u64; 4]) -> f64 {
    let (a, b) = (a.iter().map(|v| *v as f64).collect::<Vec<_>>(), b.map(|v| v as f64));
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    w * h / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h)
}

#[test]
fn car_number_reads_the_plate_of_a_car_photo() {
    let s = TestServer::start(config());
    let mut c = s.conn();

    let (status, v) = detect(
        &mut c,
        &["car_number"],
        &[("car", data("car_5au5341.png")), ("cat", data("chelsea.jpg")), ("broken", b"not an image".to_vec())],
    );
    assert_eq!(status, 200, "{v}");
    println!("{v:#}");
    let files = v["body"]["car_number_labels"].as_array().unwrap();
    assert!(v["body"].get("object_labels").is_none(), "only the requested mode: {v}");
    assert_eq!(files.len(), 3);

    let car = &files[0];
    assert_eq!((car["name"].as_str(), car["status"].as_u64()), (Some("car"), Some(0)));
    let labels = car["labels"].as_array().unwrap();
    assert_eq!(labels.len(), 1, "{car}");
    let plate = &labels[0];
    assert_eq!(plate["eng"], "5AU5341");
    assert_eq!(plate["rus"], "", "not a Russian format");
    // The plate's box in the photo (measured by hand: the white plate area).
    let coord: Vec<u64> = plate["coord"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert!(iou(&coord, [314, 188, 389, 210]) >= 0.7, "{coord:?}");
    let prob = plate["prob"].as_f64().unwrap();
    assert!(prob > 0.5, "{prob}");
    let types: Vec<(&str, f64)> = plate["types_prob"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["type"].as_str().unwrap(), t["prob"].as_f64().unwrap()))
        .collect();
    assert_eq!(types.iter().map(|t| t.0).collect::<Vec<_>>(), ["rus", "cis", "eu"]);
    assert_eq!((types[0].1, types[1].1), (0.0, 0.0), "{types:?}");
    assert!(types[2].1 > 0.9, "one-row European format read with confidence: {types:?}");

    // No plate: status 0 and no labels, as the docs show.
    assert_eq!(files[1]["status"], 0);
    assert_eq!(files[1]["labels"], json!([]));
    // A broken file: per-file permanent error.
    assert_eq!(files[2]["status"], 1);
    assert!(files[2]["error"].is_string());

    // Both modes in one request answer both lists, per image (each image decoded once: a broken
    // file fails in both lists, in its place).
    let broken = b"\x89PNG\r\n\x1a\nnot really".to_vec();
    let (status, v) =
        detect(&mut c, &["object", "car_number"], &[("car", data("car_5au5341.png")), ("broken", broken)]);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["body"]["object_labels"][0]["status"], 0);
    assert!(!v["body"]["object_labels"][0]["labels"].as_array().unwrap().is_empty());
    assert_eq!(v["body"]["car_number_labels"][0]["labels"][0]["eng"], "5AU5341");
    for list in ["object_labels", "car_number_labels"] {
        assert_eq!(v["body"][list][1]["name"], "broken", "{v}");
        assert_eq!(v["body"][list][1]["status"], 1, "{v}");
    }
    let decodes = sample(
        &s.metrics(),
        "gpubackend_stage_duration_seconds_count{",
        &["stage=\"decode\"", "model=\"mobilenet_v2+plates\""],
    );
    assert_eq!(decodes, 2.0, "one decode per image for both modes");

    // The plates model's stages are in /metrics.
    let m = s.metrics();
    for stage in ["plates_det", "plates_rec"] {
        assert!(m.contains(&format!("model=\"{stage}\"")), "{stage} not in metrics");
    }
}

#[test]
fn car_number_is_refused_where_no_plates_model_is_placed() {
    let mut cfg = config();
    for p in &mut cfg.placement {
        p.models.retain(|m| m != "plates");
    }
    let s = TestServer::start(cfg);
    let mut c = s.conn();
    let (status, v) = detect(&mut c, &["car_number"], &[("car", data("car_5au5341.png"))]);
    assert_eq!(status, 400);
    assert!(v["body"].as_str().unwrap().contains("mode car_number is not served"), "{v}");
}
