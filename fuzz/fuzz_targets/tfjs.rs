//! See `gpubackend_formats::fuzzing::tfjs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gpubackend_formats::fuzzing::tfjs(data));
