//! The `wgpu` device (in CI: Mesa's lavapipe software Vulkan) against the onnxruntime fixtures with
//! the CPU tolerance (1e-4): `gpubackend verify`'s checks of MobileNetV2 (two real images batched)
//! and MTCNN's three networks. Needs a Vulkan driver: `.ci/run` installs `mesa-vulkan-drivers`.
//!
//! SFace is left to `gpubackend verify --device wgpu` (it passes on lavapipe too, README): with
//! burn's fusion and autotune, compiling and tuning its kernels on a software rasteriser takes
//! about five minutes, while on a GPU it is seconds.
//!
//! Autotune runs at cubecl's `minimal` level here: it chooses among kernels that all compute the
//! same result, so the check is the same, and tuning on lavapipe was a third of this test's time
//! (6 min 22 s → 4 min 4 s on a 2-core AMD EPYC, 2026-12-02).

mod common;

use gpubackend::models::DeviceSpec;

#[test]
fn mobilenet_and_mtcnn_match_the_reference_on_wgpu() {
    // SAFETY: the only test of this binary, before any thread (cubecl reads it once, at first use).
    unsafe { std::env::set_var("CUBECL_AUTOTUNE_LEVEL", "minimal") };
    let networks = ["mobilenet_v2".to_string(), "mtcnn".to_string()];
    let report = gpubackend::verify::run(&DeviceSpec::Wgpu(None), &common::repo(), 2, &networks).unwrap();
    print!("{report}");
    assert!(report.adapter.contains("llvmpipe"), "{}", report.adapter);
    assert_eq!(report.checks.len(), 9, "MobileNetV2 logits + top-1, P-Net ×2, R-Net ×2, O-Net ×3");
    assert!(report.ok, "{report}");
}
