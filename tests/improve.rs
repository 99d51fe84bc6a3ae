//! photo/improve mode `resolution` end to end on the real server (a `realesrgan` model on the CPU
//! with small tiles, so several tiles per image): ×4 and ×2 `art` on a real crop, answered as the
//! documented `resolution` object with a JPEG that looks like the network's own output for the
//! whole image; `photo` (x4plus) on a small image; the documented 400s; per-file errors for a
//! broken file and an image past `superres.max_input_pixels`; the schema of every answer.

use crate::common;

use std::path::Path;

use base64::Engine;
use burn::prelude::{Tensor, TensorData};
use common::schema::OpenApi;
use common::{TestServer, config, data};
use gpubackend::client::Conn;
use gpubackend::config::{Config, ModelConfig, Placement};
use gpubackend::models::{DeviceSpec, ncnn};
use serde_json::{Value, json};

const IMPROVE: &str = "/api/v1/photo/improve?oauth_provider=mcs&oauth_token=test";

fn server_config(max_input_pixels: u64) -> Config {
    let mut c = config();
    let model: ModelConfig = toml::from_str(&format!(
        "architecture = \"realesrgan\"\nweights = \"models/realesrgan\"\nmax_batch = 4\nmax_delay_ms = 5\n\
         queue_capacity = 256\n[superres]\ntile = 48\npad = 8\nmax_input_pixels = {max_input_pixels}\n"
    ))
    .unwrap();
    c.models.insert("realesrgan".into(), model);
    c.placement = vec![Placement {
        device: gpubackend::models::DeviceSpec::Cpu,
        models: vec!["realesrgan".into()],
        instances: 1,
        depth: None,
    }];
    c
}

fn improve(c: &mut Conn, meta: Value, files: &[(&str, Vec<u8>)]) -> (u16, Value) {
    let meta = meta.to_string();
    let mut parts: Vec<(&str, Option<&str>, &[u8])> =
        files.iter().map(|(n, b)| (*n, Some("image.png"), b.as_slice())).collect();
    parts.push(("meta", None, meta.as_bytes()));
    let r = c.post_multipart(IMPROVE, &parts).unwrap();
    let v = r.json();
    let api = OpenApi::load();
    api.assert_valid(if r.status == 200 { "photo_improve_response" } else { "error_response" }, &v);
    (r.status, v)
}

/// A `w` × `h` crop of chelsea.png at (x, y) as PNG bytes, and its pixels.
fn crop(x: u32, y: u32, w: u32, h: u32) -> (Vec<u8>, image::RgbImage) {
    let img = image::load_from_memory(&data("chelsea.png")).unwrap().to_rgb8();
    let part = image::imageops::crop_imm(&img, x, y, w, h).to_image();
    let mut png = Vec::new();
    part.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
    (png, part)
}

/// The network's output for the whole image, as 8-bit RGB.
fn whole(param: &str, img: &image::RgbImage) -> image::RgbImage {
    let device = DeviceSpec::Cpu.device().unwrap();
    let net = ncnn::load_graph(Path::new(param), &device).unwrap();
    let (w, h) = (img.width() as usize, img.height() as usize);
    let planar: Vec<f32> = (0..3).flat_map(|c| img.pixels().map(move |p| p[c] as f32 / 255.0)).collect();
    let y = net.forward(Tensor::<4>::from_data(TensorData::new(planar, [1, 3, h, w]), &device));
    let y: Vec<f32> = y.into_data().iter::<f32>().collect();
    let plane = 16 * w * h;
    let rgb = (0..plane)
        .flat_map(|p| (0..3).map(move |c| c * plane + p))
        .map(|i| (y[i] * 255.0 + 0.5).floor().clamp(0.0, 255.0) as u8)
        .collect();
    image::RgbImage::from_raw(4 * w as u32, 4 * h as u32, rgb).unwrap()
}

fn psnr(a: &image::RgbImage, b: &image::RgbImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    let mse = a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum::<f64>()
        / a.as_raw().len() as f64;
    10.0 * (255.0f64 * 255.0 / mse).log10()
}

fn resolved(v: &Value, i: usize) -> image::RgbImage {
    let r = &v["body"]["resolution"][i];
    assert_eq!(r["status"], 0, "{r}");
    let jpeg = base64::engine::general_purpose::STANDARD.decode(r["resolved"].as_str().unwrap()).unwrap();
    assert_eq!(&jpeg[..2], &[0xFF, 0xD8], "a JPEG");
    image::load_from_memory(&jpeg).unwrap().to_rgb8()
}

#[test]
fn resolution_answers_the_networks_image_as_jpeg_at_4x_and_2x() {
    let s = TestServer::start(server_config(100_000));
    let mut c = s.conn();
    // 100 × 70: 4 × 3 tiles of 48² (cores of 32).
    let (png, img) = crop(150, 80, 100, 70);
    let (status, v) = improve(
        &mut c,
        json!({"mode": ["resolution"], "rfactor": 4, "ftype": "art", "images": [{"name": "cat"}, {"name": "broken"}]}),
        &[("cat", png.clone()), ("broken", b"not an image".to_vec())],
    );
    assert_eq!(status, 200, "{v}");
    let x4 = resolved(&v, 0);
    assert_eq!(x4.dimensions(), (400, 280));
    let reference = whole("models/realesrgan/REALESRGAN_ANIMAVIDEOV3_UP4X.param", &img);
    let db = psnr(&x4, &reference);
    println!("art ×4 through the server (tiles of 48², JPEG q92) against the network on the whole image: {db:.1} dB");
    assert!(db > 35.0, "{db}");
    let broken = &v["body"]["resolution"][1];
    assert_eq!((broken["status"].as_u64(), broken["resolved"].as_str()), (Some(1), Some("")), "{broken}");

    // ×2: the ×4 image halved (Lanczos3); the docs' `rtype` spelling.
    let (status, v) = improve(
        &mut c,
        json!({"mode": ["resolution"], "rfactor": 2, "rtype": "art", "images": [{"name": "cat"}]}),
        &[("cat", png.clone())],
    );
    assert_eq!(status, 200, "{v}");
    let x2 = resolved(&v, 0);
    assert_eq!(x2.dimensions(), (200, 140));
    let halved = image::imageops::resize(&reference, 200, 140, image::imageops::FilterType::Lanczos3);
    let db = psnr(&x2, &halved);
    println!("art ×2 against the whole image's ×4 halved: {db:.1} dB");
    assert!(db > 35.0, "{db}");

    // photo (x4plus) on a small image: one mirrored tile.
    let (small, small_img) = crop(170, 100, 24, 20);
    let (status, v) = improve(
        &mut c,
        json!({"mode": ["resolution"], "rfactor": 4, "ftype": "photo", "images": [{"name": "eye"}]}),
        &[("eye", small)],
    );
    assert_eq!(status, 200, "{v}");
    let photo = resolved(&v, 0);
    assert_eq!(photo.dimensions(), (96, 80));
    // Bright and dark where the input is (not a blank or shifted image).
    let mean = |img: &image::RgbImage| img.pixels().map(|p| p[1] as f64).sum::<f64>() / img.pixels().len() as f64;
    let upscaled = image::imageops::resize(&small_img, 96, 80, image::imageops::FilterType::Triangle);
    assert!((mean(&photo) - mean(&upscaled)).abs() < 12.0, "{} vs {}", mean(&photo), mean(&upscaled));
    assert!(psnr(&photo, &upscaled) > 20.0, "{}", psnr(&photo, &upscaled));

    let m = s.metrics();
    for stage in ["realesrgan_art", "realesrgan_photo"] {
        assert!(m.lines().any(|l| l.starts_with("gpubackend_batches_total") && l.contains(stage)), "{stage}");
    }
}

#[test]
fn bad_requests_get_the_documented_errors() {
    let s = TestServer::start(server_config(64 * 64));
    let mut c = s.conn();
    let (png, _) = crop(150, 80, 40, 30);
    let file = [("cat", png)];
    let images = json!([{"name": "cat"}]);
    for (meta, error) in [
        (
            json!({"mode": ["resolution"], "rfactor": 1010, "ftype": "photo", "images": images}),
            "rfactor must be 2 or 4",
        ),
        (json!({"mode": ["resolution"], "rfactor": 2, "images": images}), "ftype must be"),
        (json!({"mode": ["improve"], "images": images}), "mode improve is not served"),
        (json!({"mode": [], "rfactor": 2, "ftype": "art", "images": images}), "mode is required"),
    ] {
        let (status, v) = improve(&mut c, meta, &file);
        assert_eq!(status, 400, "{v}");
        assert!(v["body"].as_str().unwrap().contains(error), "{v}");
    }
    // Past superres.max_input_pixels (64² here): that file's per-file error.
    let (big, _) = crop(0, 0, 80, 60);
    let (status, v) = improve(
        &mut c,
        json!({"mode": ["resolution"], "rfactor": 4, "ftype": "art", "images": [{"name": "big"}, {"name": "cat"}]}),
        &[("big", big), file[0].clone()],
    );
    assert_eq!(status, 200, "{v}");
    let big = &v["body"]["resolution"][0];
    assert_eq!(big["status"], 1, "{big}");
    assert!(big["error"].as_str().unwrap().contains("superres.max_input_pixels"), "{big}");
    assert_eq!(resolved(&v, 1).dimensions(), (160, 120));
}

/// The shipped default (`config/default.toml`'s realesrgan: 128² windows, 12 px of context, images
/// up to 512²), only its placement narrowed to the super-resolution model: README's curl (the eye,
/// art ×4) answers a 4× JPEG, and an image one row past 512² is that file's per-file error.
#[test]
fn the_shipped_default_enlarges_the_readme_image_and_takes_images_up_to_512_squared() {
    let mut c = config();
    c.placement.iter_mut().for_each(|p| p.models.retain(|m| m == "realesrgan"));
    c.placement.retain(|p| !p.models.is_empty());
    let sr = c.models["realesrgan"].settings["superres"].clone();
    assert_eq!((sr["tile"].as_integer(), sr["pad"].as_integer()), (Some(128), Some(12)), "{sr}");
    assert_eq!(sr["max_input_pixels"].as_integer(), Some(512 * 512), "{sr}");
    let s = TestServer::start(c);
    let mut conn = s.conn();
    let eye = data("eye.png");
    let (w, h) = image::load_from_memory(&eye).unwrap().to_rgb8().dimensions();
    let mut big = Vec::new();
    image::RgbImage::new(512, 513).write_to(&mut std::io::Cursor::new(&mut big), image::ImageFormat::Png).unwrap();
    let (status, v) = improve(
        &mut conn,
        json!({"mode": ["resolution"], "rfactor": 4, "ftype": "art", "images": [{"name": "eye"}, {"name": "big"}]}),
        &[("eye", eye), ("big", big)],
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(resolved(&v, 0).dimensions(), (4 * w, 4 * h));
    let big = &v["body"]["resolution"][1];
    assert_eq!(big["status"], 1, "{big}");
    assert!(big["error"].as_str().unwrap().contains("at most 262144 (superres.max_input_pixels)"), "{big}");
}
