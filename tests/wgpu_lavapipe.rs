//! The `wgpu` device (in CI: Mesa's lavapipe software Vulkan) against the onnxruntime fixtures with
//! the CPU tolerance (1e-4): `gpubackend verify`'s checks of MobileNetV2 (two real images batched)
//! and MTCNN's three networks. Needs a Vulkan driver: `.ci/run` installs `mesa-vulkan-drivers`.
//!
//! SFace is left to `gpubackend verify --device wgpu` (it passes on lavapipe too, README): with
//! burn's fusion and autotune, compiling and tuning its kernels on a software rasteriser takes
//! about five minutes, while on a GPU it is seconds.

mod common;

use gpubackend::models::DeviceSpec;

#[test]
fn mobilenet_and_mtcnn_match_the_reference_on_wgpu() {
    let networks = ["mobilenet_v2".to_string(), "mtcnn".to_string()];
    let report = gpubackend::verify::run(&DeviceSpec::Wgpu(None), &common::repo(), 2, &networks).unwrap();
    print!("{report}");
    assert!(report.adapter.contains("llvmpipe"), "{}", report.adapter);
    assert_eq!(report.checks.len(), 9, "MobileNetV2 logits + top-1, P-Net ×2, R-Net ×2, O-Net ×3");
    assert!(report.ok, "{report}");
}
