//! Reads what a burn network needs from an ONNX model: just enough protobuf to walk
//! `ModelProto.graph` — the float initializers (weights; `raw_data` or `float_data`), int64 ones
//! (shapes, axes), the values of `Constant` nodes (some exporters keep every weight there), each
//! node's op type, inputs, outputs and attributes (to take weights in graph order where their names
//! say nothing) — and `metadata_props` (PP-OCR keeps its recogniser's dictionary there). Nothing is
//! executed: the networks are written in burn. The reader is `gpubackend_formats::onnx` (fuzzed:
//! fuzz/); this module loads files with it.

pub use gpubackend_formats::onnx::*;

/// Reads the ONNX file at `path` and builds a network from it with `build`; any failure is a
/// `LoadError` naming the file.
pub fn load_with<T>(
    path: &std::path::Path,
    build: impl FnOnce(&OnnxModel) -> Result<T, super::GraphError>,
) -> Result<T, super::LoadError> {
    super::check_weights(path)?;
    let bad = |message: String| super::LoadError::Weights { path: path.to_path_buf(), message };
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let model = read(&bytes).map_err(bad)?;
    build(&model).map_err(|source| super::LoadError::Graph { path: path.to_path_buf(), source })
}
