//! See `gpubackend_formats::fuzzing::ncnn_param`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gpubackend_formats::fuzzing::ncnn_param(data));
