//! The `wgpu` device (in CI: Mesa's lavapipe software Vulkan) gives the same logits as `cpu`.
//! Needs a Vulkan driver: `.ci/run` installs `mesa-vulkan-drivers`. Tolerance: 1e-3 absolute on logits.

mod common;

use common::read_f32s;

use std::path::Path;

use gpubackend::models::DeviceSpec;
use gpubackend::models::mobilenet_v2::Classifier;

#[test]
fn wgpu_matches_cpu() {
    let weights = Path::new("models/mobilenet_v2/mobilenet_v2-b0353104.pth");
    let input = read_f32s("tests/fixtures/mobilenet_v2/chelsea.input.f32");
    let cpu = Classifier::load(weights, DeviceSpec::Cpu.device().unwrap()).unwrap().forward(&[&input]).unwrap();
    let gpu = Classifier::load(weights, DeviceSpec::Wgpu(None).device().unwrap()).unwrap().forward(&[&input]).unwrap();
    let d = cpu[0].iter().zip(&gpu[0]).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    println!("max |wgpu - cpu| = {d:e}");
    assert!(d <= 1e-3, "wgpu differs from cpu by {d}");
}
