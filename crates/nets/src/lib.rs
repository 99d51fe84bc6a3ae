//! gpubackend's networks and the engine beneath them: burn model definitions, the graph runner
//! (ONNX, ncnn, TF.js), the CPU engine, devices and weight loading. No actix, no HTTP, no server
//! configuration: a model is built on a `Device` (which picks the backend at run time) and maps a
//! batch of inputs to outputs. A crate of its own (re-exported as `gpubackend::models`), so
//! nothing here can import the server's stages or configuration: what a network's callers need
//! (input sizes, output names, the cascade's contract) is declared here.

pub mod centernet;
pub mod cpu;
pub mod declared;
mod device;
pub mod fold;
pub mod mobilenet_v2;
pub mod mtcnn;
pub mod ncnn;
pub mod onnx_graph;
pub mod onnx_weights;
pub mod plates;
pub mod ppocr;
pub mod probe;
pub mod profile;
pub mod sface;
pub mod tfjs;
pub mod tfjs_layers;

pub use device::{DeviceError, DeviceSpec};

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("weights file {path} not found; fetch the weights with `scripts/fetch-weights.sh` (or `make weights`)")]
    MissingWeights { path: PathBuf },
    #[error("cannot load weights {path}: {message}")]
    Weights { path: PathBuf, message: String },
    /// The file was read, but the network could not be built from it.
    #[error("cannot load weights {path}: {source}")]
    Graph { path: PathBuf, source: GraphError },
    #[error(transparent)]
    Device(#[from] DeviceError),
}

/// Why a network could not be built from a file that was read: the graph runner's (ONNX, ncnn,
/// TF.js graphs) and the hand-written networks' loaders.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GraphError {
    /// An op the graph runner does not run, and the node (its output or its name) that uses it.
    #[error("op `{op}` (node `{node}`) is not supported by the graph runner")]
    UnsupportedOp { op: String, node: String },
    /// A node the runner cannot run as given (an attribute, an axis, an input that is not a
    /// constant), a weight missing or of another shape, or a graph without an input or output.
    #[error("{0}")]
    Node(String),
}

impl From<String> for GraphError {
    fn from(message: String) -> Self {
        Self::Node(message)
    }
}

impl From<&str> for GraphError {
    fn from(message: &str) -> Self {
        Self::Node(message.to_string())
    }
}

/// Errors of one forward pass. `Clone`: a failed batch fans the same error out to every item.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ForwardError {
    #[error("input has {got} values, the model expects {expected} per item")]
    BadInput { got: usize, expected: usize },
    #[error("device error: {0}")]
    Device(String),
}

/// The one contract every network has with the server: a batch of N items on its device (N × 3 ×
/// H × W, the batch axis first) → one output vector per item. Written once per network (beside
/// it), so the worker, the batcher and the broker need not know which network they drive.
pub trait Network: Send + Sync {
    /// The device its weights live on (the batch is uploaded there).
    fn device(&self) -> &burn::prelude::Device;
    /// Queues the forward pass of `x` without waiting for the device (GPU backends run it
    /// asynchronously; the CPU backend computes it here); the returned closure waits and reads the
    /// outputs back, one row per item.
    fn launch(&self, x: burn::prelude::Tensor<4>) -> Result<Readback, ForwardError>;
}

/// Reads a launched batch's outputs back: one vector per item.
pub type Readback = Box<dyn FnOnce() -> Result<Vec<Vec<f32>>, ForwardError>>;

/// How a network is built on a device from its weights file.
type Loader = dyn Fn(&Path, &burn::prelude::Device) -> Result<Box<dyn Network>, LoadError> + Send + Sync;

/// What one worker loads, as a value: the network's kind (for logs), its weights, the input size
/// it takes, and how it is built. Each network's module makes its own (`mobilenet_v2::spec`,
/// `mtcnn::pnet_spec`, `declared::spec` …); nothing here matches on which network it is.
#[derive(Clone)]
pub struct ModelSpec {
    pub kind: &'static str,
    pub weights: PathBuf,
    /// Height and width of the input (each item is 3 × h × w); for the networks that take any
    /// size (items carry theirs), the size of the warm-up pass.
    pub input: [usize; 2],
    /// Whether the height / the width of an item may be any (items carry their own size, e.g.
    /// the text detector's pages): what a tensor client may send (`oip`).
    pub any_size: [bool; 2],
    load: std::sync::Arc<Loader>,
}

impl ModelSpec {
    pub fn new(
        kind: &'static str,
        weights: PathBuf,
        input: [usize; 2],
        load: impl Fn(&Path, &burn::prelude::Device) -> Result<Box<dyn Network>, LoadError> + Send + Sync + 'static,
    ) -> Self {
        Self { kind, weights, input, any_size: [false; 2], load: std::sync::Arc::new(load) }
    }

    /// A network whose items may have any height (`h`) / any width (`w`).
    pub fn any_size(mut self, h: bool, w: bool) -> Self {
        self.any_size = [h, w];
        self
    }

    pub fn input_size(&self) -> [usize; 2] {
        self.input
    }

    pub fn weights(&self) -> &Path {
        &self.weights
    }
}

impl PartialEq for ModelSpec {
    fn eq(&self, other: &Self) -> bool {
        (self.kind, &self.weights, self.input) == (other.kind, &other.weights, other.input)
    }
}

impl std::fmt::Debug for ModelSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelSpec")
            .field("kind", &self.kind)
            .field("weights", &self.weights)
            .field("input", &self.input)
            .finish_non_exhaustive()
    }
}

/// Side of P-Net's output map for a `canvas`² input (conv 3, pool 2 ceil, conv 3, conv 3).
pub fn pnet_map_side(canvas: usize) -> usize {
    canvas.saturating_sub(2).div_ceil(2).saturating_sub(4)
}

/// A loaded model on its device. The worker owns one and runs batches on it.
pub struct Model {
    net: Box<dyn Network>,
    kind: &'static str,
    input: [usize; 2],
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").field("kind", &self.kind).field("input", &self.input).finish_non_exhaustive()
    }
}

/// A batch staged on the CPU: planar RGB `side`² inputs as one contiguous (N, 3, side, side)
/// buffer, ready to upload. Built by the worker's actor thread while the device runs the previous batch.
pub struct StagedBatch {
    data: burn::prelude::TensorData,
    n: usize,
}

impl StagedBatch {
    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    fn tensor(self, device: &burn::prelude::Device) -> burn::prelude::Tensor<4> {
        burn::prelude::Tensor::from_data(self.data, device)
    }
}

/// Stages a batch of `side`² inputs; every input's length is checked.
pub fn stage(inputs: &[&[f32]], side: usize) -> Result<StagedBatch, ForwardError> {
    stage_sized(inputs, [side, side])
}

/// Stages a batch of 3 × h × w inputs; every input's length is checked.
pub fn stage_sized(inputs: &[&[f32]], [h, w]: [usize; 2]) -> Result<StagedBatch, ForwardError> {
    let len = 3 * h * w;
    let mut flat = Vec::with_capacity(inputs.len() * len);
    for input in inputs {
        if input.len() != len {
            return Err(ForwardError::BadInput { got: input.len(), expected: len });
        }
        flat.extend_from_slice(input);
    }
    Ok(StagedBatch { data: burn::prelude::TensorData::new(flat, [inputs.len(), 3, h, w]), n: inputs.len() })
}

/// A batch of planar RGB `side`² inputs as one (N, 3, side, side) tensor; every input is checked.
pub(crate) fn batch_tensor(
    inputs: &[&[f32]],
    side: usize,
    device: &burn::prelude::Device,
) -> Result<burn::prelude::Tensor<4>, ForwardError> {
    Ok(stage(inputs, side)?.tensor(device))
}

/// A batch launched on its device (uploaded, kernels queued and flushed to the device); `read`
/// waits for the device and returns one output vector per item.
#[must_use = "a launched batch is only finished when read"]
pub struct Pending(Readback);

impl Pending {
    pub fn read(self) -> Result<Vec<Vec<f32>>, ForwardError> {
        (self.0)()
    }
}

/// A model output as one row per batch item.
pub(crate) fn rows<const D: usize>(t: burn::prelude::Tensor<D>, n: usize) -> Result<Vec<Vec<f32>>, ForwardError> {
    let v = t
        .try_into_data()
        .map_err(|e| ForwardError::Device(format!("{e:?}")))?
        .try_into_vec::<f32>()
        .map_err(|e| ForwardError::Device(format!("{e:?}")))?;
    let per = v.len() / n.max(1);
    Ok(v.chunks(per.max(1)).map(<[f32]>::to_vec).collect())
}

/// Per item: the heads' rows side by side (`reg` then `landmarks` then `prob`).
pub(crate) fn concat(parts: Vec<Vec<Vec<f32>>>) -> Vec<Vec<f32>> {
    let n = parts.first().map_or(0, Vec::len);
    (0..n).map(|i| parts.iter().flat_map(|p| p[i].iter().copied()).collect()).collect()
}

impl Model {
    pub fn load(spec: &ModelSpec, device: &DeviceSpec) -> Result<Self, LoadError> {
        check_weights(spec.weights())?;
        let d = device.open()?;
        Ok(Self { net: (spec.load)(spec.weights(), &d)?, kind: spec.kind, input: spec.input })
    }

    /// Height and width of the input (each item is 3 × h × w).
    pub fn input_size(&self) -> [usize; 2] {
        self.input
    }

    /// Values per input item (C×H×W).
    pub fn input_len(&self) -> usize {
        let [h, w] = self.input;
        3 * h * w
    }

    /// Uploads a staged batch and queues its forward pass on the device without waiting for it
    /// (GPU backends run it asynchronously; the CPU backend computes it here).
    pub fn launch(&self, batch: StagedBatch) -> Result<Pending, ForwardError> {
        let device = self.net.device().clone();
        let read = self.net.launch(batch.tensor(&device))?;
        // Fusion buffers operations until a read; hand them to the device now so it works while
        // the worker stages the next batch.
        device.flush().map_err(|e| ForwardError::Device(format!("{e:?}")))?;
        Ok(Pending(read))
    }

    /// Runs one batch: `inputs` are item-major; returns one output vector per item (what each
    /// network gives per item is written beside its `Network` impl).
    pub fn forward(&self, inputs: &[&[f32]]) -> Result<Vec<Vec<f32>>, ForwardError> {
        self.launch(stage_sized(inputs, self.input_size())?)?.read()
    }
}

pub fn check_weights(path: &Path) -> Result<(), LoadError> {
    if path.is_file() { Ok(()) } else { Err(LoadError::MissingWeights { path: path.to_path_buf() }) }
}
