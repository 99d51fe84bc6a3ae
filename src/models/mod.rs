//! burn model definitions and weight loading. No actix, no HTTP: a model is built on a `Device`
//! (which picks the backend at run time) and maps a batch of inputs to outputs.

mod device;
pub mod mobilenet_v2;
pub mod mtcnn;
pub mod onnx_weights;
pub mod sface;

pub use device::{DeviceError, DeviceSpec};

use std::path::{Path, PathBuf};

use crate::config::{Architecture, ModelConfig};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("weights file {path} not found; fetch the weights with `scripts/fetch-weights.sh` (or `make weights`)")]
    MissingWeights { path: PathBuf },
    #[error("cannot load weights {path}: {message}")]
    Weights { path: PathBuf, message: String },
    #[error(transparent)]
    Device(#[from] DeviceError),
}

/// Errors of one forward pass. `Clone`: a failed batch fans the same error out to every item.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ForwardError {
    #[error("input has {got} values, the model expects {expected} per item")]
    BadInput { got: usize, expected: usize },
    #[error("device error: {0}")]
    Device(String),
}

/// A loaded model on its device. The worker owns one and runs batches on it.
#[derive(Debug)]
pub enum Model {
    MobilenetV2(mobilenet_v2::Classifier),
}

impl Model {
    pub fn load(config: &ModelConfig, device: &DeviceSpec) -> Result<Self, LoadError> {
        check_weights(&config.weights)?;
        match config.architecture {
            Architecture::MobilenetV2 => {
                Ok(Self::MobilenetV2(mobilenet_v2::Classifier::load(&config.weights, device.device()?)?))
            }
        }
    }

    /// Values per input item (C×H×W).
    pub fn input_len(&self) -> usize {
        match self {
            Self::MobilenetV2(_) => mobilenet_v2::INPUT_LEN,
        }
    }

    /// Runs one batch: `inputs` are item-major; returns one output vector per item.
    pub fn forward(&self, inputs: &[&[f32]]) -> Result<Vec<Vec<f32>>, ForwardError> {
        match self {
            Self::MobilenetV2(m) => m.forward(inputs),
        }
    }
}

pub fn check_weights(path: &Path) -> Result<(), LoadError> {
    if path.is_file() { Ok(()) } else { Err(LoadError::MissingWeights { path: path.to_path_buf() }) }
}
