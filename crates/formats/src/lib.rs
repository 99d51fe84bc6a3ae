//! What gpubackend reads from outside, apart from the networks: request forms, images and weight
//! files. A crate of its own (no burn, no server) so that the fuzz targets (fuzz/) build it
//! instrumented in minutes; the server re-exports it where the data path uses it.

pub mod fuzzing;
pub mod image;
pub mod multipart;
pub mod ncnn;
pub mod onnx;
pub mod tfjs;

/// Elements of a tensor of `shape`, or `None` when the file's shape overflows (fuzz/regressions/onnx/).
pub(crate) fn elements(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}
