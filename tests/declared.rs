//! A network declared only in the configuration (`architecture = "onnx"` + `[models.<m>.io]`), no
//! Rust written for it: PP-OCR's text orientation classifier (a small ONNX classifier, 0.6 MB)
//! added to the shipped `config/default.toml` as a user would, served by the real binary as the
//! objects/detect mode `scene`, through the same batcher and workers as the built-in models, and
//! answering onnxruntime's probabilities.

use gpubackend::client::{Conn, metric_value};

use crate::common::{read_f32s, repo, spawn_server_args, tempdir};

/// What a user appends to config/default.toml (labels: one per line).
const DECLARED: &str = r#"
[models.orientation]
architecture = "onnx"
weights = "models/ppocr/ch_ppocr_mobile_v2.0_cls_mobile.onnx"
labels = "LABELS"
modes = ["scene"]
max_batch = 8
threshold = 0.0
top_k = 2

[models.orientation.io]
task = "classify"
input = [48, 192]
channels = "bgr"
scale = 0.00392156862745098
mean = [0.5, 0.5, 0.5]
std = [0.5, 0.5, 0.5]
output = "probabilities"
classes = 2
"#;

/// The reference's two inputs (tests/fixtures/ppocr: a real text line, upright and turned 180°,
/// 48 × 192, BGR, `(x/255 − 0.5)/0.5`) back as the PNG images they were made from.
fn fixture_pngs() -> Vec<Vec<u8>> {
    let input = read_f32s("tests/fixtures/ppocr/cls.input.f32");
    let (h, w) = (48usize, 192usize);
    (0..2)
        .map(|i| {
            let item = &input[i * 3 * h * w..(i + 1) * 3 * h * w];
            let mut img = image::RgbImage::new(w as u32, h as u32);
            for y in 0..h {
                for x in 0..w {
                    // BGR planes → RGB pixels.
                    let px = |c: usize| ((item[c * h * w + y * w + x] * 0.5 + 0.5) * 255.0).round() as u8;
                    img.put_pixel(x as u32, y as u32, image::Rgb([px(2), px(1), px(0)]));
                }
            }
            let mut png = Vec::new();
            img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
            png
        })
        .collect()
}

#[test]
fn a_classifier_declared_only_in_the_toml_is_served_through_the_batcher_as_onnxruntime_answers() {
    let dir = tempdir("declared");
    std::fs::write(dir.join("orientation.txt"), "upright\nturned\n").unwrap();
    let shipped = std::fs::read_to_string(repo().join("config/default.toml")).unwrap();
    let config = shipped.replace("dir = \"data\"", &format!("dir = \"{}\"", dir.join("store").display()))
        + &DECLARED.replace("LABELS", &dir.join("orientation.txt").display().to_string());
    let path = dir.join("gpubackend.toml");
    std::fs::write(&path, config).unwrap();
    let (_server, addr) = spawn_server_args(&path, &["--models", "orientation"]);

    let pngs = fixture_pngs();
    let reference = read_f32s("tests/fixtures/ppocr/cls.prob.f32");
    let meta = br#"{"mode":["scene"],"images":[{"name":"upright"},{"name":"turned"}]}"#;
    let mut c = Conn::new(addr);
    let r = c
        .post_multipart(
            "/api/v1/objects/detect",
            &[("upright", Some("u.png"), &pngs[0]), ("turned", Some("t.png"), &pngs[1]), ("meta", None, meta)],
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    println!("{v}");
    let files = v["body"]["scene_labels"].as_array().unwrap();
    for (i, file) in files.iter().enumerate() {
        assert_eq!(file["status"], 0, "{file}");
        let prob = |label: &str| {
            file["labels"].as_array().unwrap().iter().find(|l| l["eng"] == label).unwrap()["prob"].as_f64().unwrap()
        };
        // Probabilities are answered to 4 decimals; the network is within 1e-4 of onnxruntime.
        for (k, label) in ["upright", "turned"].iter().enumerate() {
            let (ours, want) = (prob(label), f64::from(reference[i * 2 + k]));
            assert!((ours - want).abs() <= 1.5e-4, "{}: {label} {ours} vs onnxruntime {want}", file["name"]);
        }
    }
    assert_eq!(files[0]["labels"][0]["eng"], "upright");
    assert_eq!(files[1]["labels"][0]["eng"], "turned");

    // The model's own batcher and worker served it: both images of the request in one batch.
    let metrics = Conn::new(addr).get("/metrics").unwrap().text();
    let (sum, count) = (
        metric_value(&metrics, "gpubackend_batch_size_sum", &[("model", "orientation")]),
        metric_value(&metrics, "gpubackend_batch_size_count", &[("model", "orientation")]),
    );
    assert!(count >= 1.0 && sum / count > 1.0, "batches {count}, items {sum}");
    let ready = Conn::new(addr).get("/health/ready").unwrap().json();
    assert_eq!(ready["live_workers"]["orientation"], 1, "{ready}");

    // A wrong contract is refused at start-up, naming the field.
    let bad = std::fs::read_to_string(&path).unwrap().replace("classes = 2", "classes = 0");
    std::fs::write(dir.join("bad.toml"), bad).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gpubackend"))
        .args(["-c", dir.join("bad.toml").to_str().unwrap(), "--port", "0", "--models", "orientation"])
        .current_dir(repo())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("models.orientation.io.classes"), "{err}");
}
