//! See `gpubackend_formats::fuzzing::onnx`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gpubackend_formats::fuzzing::onnx(data));
