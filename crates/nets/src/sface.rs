//! SFace (OpenCV Zoo, 2021dec): 128-d face embeddings, in burn, with the weights read from the
//! original ONNX file's initializers. The network is a MobileNet-style stack exported from MXNet:
//! input (x − 127.5) × 0.0078125 on RGB 0–255 112×112, a 3×3 conv, 13 depthwise-separable blocks
//! (each conv → BatchNorm ε 1e-3 → PReLU), BatchNorm ε 2e-5, flatten (C·H·W), dense 50176 → 128,
//! BatchNorm ε 2e-5. Dropout is inference-time identity.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use burn::module::{Module, Param, RunningState};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PRelu, PReluConfig, PaddingConfig2d};
use burn::prelude::{Device, Tensor, TensorData};

use super::GraphError;
use super::cpu::{self, HostConv};
use super::onnx_weights::{OnnxTensor, initializers};
use super::{ForwardError, LoadError};

pub const INPUT_SIZE: usize = 112;
pub const INPUT_LEN: usize = 3 * INPUT_SIZE * INPUT_SIZE;
pub const EMBEDDING_LEN: usize = 128;
/// (output channels, depthwise stride) of blocks conv_2 … conv_14.
const BLOCKS: [(usize, usize); 13] = [
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
];

/// The ONNX initializers, consumed by name as the network is built.
struct Weights<'a> {
    map: HashMap<String, OnnxTensor>,
    device: &'a Device,
}

impl Weights<'_> {
    fn take<const D: usize>(&mut self, name: &str, dims: [usize; D]) -> Result<Tensor<D>, GraphError> {
        let t = self.map.remove(name).ok_or_else(|| format!("missing tensor `{name}`"))?;
        if t.data.len() != dims.iter().product::<usize>() {
            return Err(GraphError::Node(format!("tensor `{name}` has shape {:?}, expected {dims:?}", t.dims)));
        }
        Ok(Tensor::from_data(TensorData::new(t.data, dims), self.device))
    }

    fn batch_norm(&mut self, prefix: &str, c: usize, epsilon: f64) -> Result<BatchNorm, GraphError> {
        let mut bn = BatchNormConfig::new(c).with_epsilon(epsilon).init(self.device);
        bn.gamma = Param::from_tensor(self.take(&format!("{prefix}_gamma"), [c])?);
        bn.beta = Param::from_tensor(self.take(&format!("{prefix}_beta"), [c])?);
        bn.running_mean = RunningState::new(self.take(&format!("{prefix}_moving_mean"), [c])?);
        bn.running_var = RunningState::new(self.take(&format!("{prefix}_moving_var"), [c])?);
        Ok(bn)
    }

    /// `<prefix>_conv2d` (no bias) → `<prefix>_batchnorm` → `<prefix>_relu` (PReLU), the norm folded
    /// into the convolution.
    fn unit(
        &mut self,
        prefix: &str,
        c: [usize; 2],
        kernel: usize,
        stride: usize,
        groups: usize,
    ) -> Result<Unit, GraphError> {
        let p = kernel / 2;
        let mut conv = Conv2dConfig::new(c, [kernel, kernel])
            .with_stride([stride, stride])
            .with_groups(groups)
            .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
            .with_bias(false)
            .init(self.device);
        conv.weight =
            Param::from_tensor(self.take(&format!("{prefix}_conv2d_weight"), [c[1], c[0] / groups, kernel, kernel])?);
        let bn = self.batch_norm(&format!("{prefix}_batchnorm"), c[1], 1e-3)?;
        let mut prelu = PReluConfig::new().with_num_parameters(c[1]).init(self.device);
        prelu.alpha = Param::from_tensor(self.take(&format!("{prefix}_relu_gamma"), [c[1]])?);
        super::fold::fold_batch_norm(&mut conv, &bn);
        let host =
            if cpu::is_cpu(self.device) { cpu::host_conv(&conv, cpu::prelu_act(&prelu)).map(Arc::new) } else { None };
        Ok(Unit { conv, prelu, host })
    }
}

#[derive(Module, Debug)]
struct Unit {
    /// The convolution with its BatchNorm folded in (see `models::fold`).
    conv: Conv2d,
    prelu: PRelu,
    /// On the CPU device: conv + bias + PReLU as one fused kernel (`models::cpu`).
    #[module(skip)]
    host: Option<Arc<HostConv>>,
}

impl Unit {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        if let Some(h) = &self.host {
            return cpu::forward(h, x, None);
        }
        self.prelu.forward(self.conv.forward(x))
    }
}

#[derive(Module, Debug)]
struct Block {
    depthwise: Unit,
    pointwise: Unit,
}

#[derive(Module, Debug)]
pub struct SFaceNet {
    stem: Unit,
    blocks: Vec<Block>,
    bn1: BatchNorm,
    pre_fc1: Linear,
    fc1: BatchNorm,
}

impl SFaceNet {
    fn from_weights(mut w: Weights<'_>) -> Result<Self, GraphError> {
        let stem = w.unit("conv_1", [3, 32], 3, 1, 1)?;
        let mut blocks = Vec::new();
        let mut c = 32;
        for (i, &(out, stride)) in BLOCKS.iter().enumerate() {
            let n = i + 2;
            blocks.push(Block {
                depthwise: w.unit(&format!("conv_{n}_dw"), [c, c], 3, stride, c)?,
                pointwise: w.unit(&format!("conv_{n}"), [c, out], 1, 1, 1)?,
            });
            c = out;
        }
        let bn1 = w.batch_norm("bn1", 1024, 2e-5)?;
        let flat = 1024 * 7 * 7;
        let mut pre_fc1 = LinearConfig::new(flat, EMBEDDING_LEN).init(w.device);
        // ONNX Gemm with transB: weight is (out, in); burn's Linear holds (in, out).
        pre_fc1.weight = Param::from_tensor(w.take::<2>("pre_fc1_weight", [EMBEDDING_LEN, flat])?.transpose());
        pre_fc1.bias = Some(Param::from_tensor(w.take("pre_fc1_bias", [EMBEDDING_LEN])?));
        let fc1 = w.batch_norm("fc1", EMBEDDING_LEN, 2e-5)?;
        // What is left is the input normalisation constants, which `forward` applies.
        let mut left: Vec<&String> = w.map.keys().filter(|k| !k.starts_with("scalar_op")).collect();
        left.sort();
        if let Some(extra) = left.first() {
            return Err(GraphError::Node(format!("unexpected tensor `{extra}`")));
        }
        Ok(Self { stem, blocks, bn1, pre_fc1, fc1 })
    }

    /// `x`: (N, 3, 112, 112) RGB 0–255 → (N, 128) embeddings (not normalised).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let mut x = self.stem.forward((x - 127.5) * 0.0078125);
        for b in &self.blocks {
            x = b.pointwise.forward(b.depthwise.forward(x));
        }
        let x = self.bn1.forward(x);
        let [n, c, h, w] = x.dims();
        let x = self.pre_fc1.forward(x.reshape([n, c * h * w]));
        self.fc1.forward(x.reshape([n, EMBEDDING_LEN, 1])).reshape([n, EMBEDDING_LEN])
    }
}

/// SFace with its weights on one device.
#[derive(Debug)]
pub struct Embedder {
    net: SFaceNet,
    device: Device,
}

impl Embedder {
    pub fn load(weights: &Path, device: Device) -> Result<Self, LoadError> {
        super::check_weights(weights)?;
        let err = |message: String| LoadError::Weights { path: weights.to_path_buf(), message };
        let bytes = std::fs::read(weights).map_err(|e| err(e.to_string()))?;
        let map = initializers(&bytes).map_err(err)?;
        let net = SFaceNet::from_weights(Weights { map, device: &device })
            .map_err(|source| LoadError::Graph { path: weights.to_path_buf(), source })?;
        Ok(Self { net, device })
    }

    /// Aligned 112×112 faces, planar RGB 0–255 → one 128-d embedding each.
    pub fn forward(&self, inputs: &[&[f32]]) -> Result<Vec<Vec<f32>>, ForwardError> {
        let x = super::batch_tensor(inputs, INPUT_SIZE, &self.device)?;
        super::rows(self.embed(x), inputs.len())
    }

    /// N×3×112×112 aligned faces (0–255) → N×128 embeddings, queued on the device.
    pub fn embed(&self, x: Tensor<4>) -> Tensor<2> {
        self.net.forward(x)
    }

    pub fn device(&self) -> &Device {
        &self.device
    }
}

/// Cosine similarity of two embeddings.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    if na == 0.0 || nb == 0.0 { 0.0 } else { dot / (na * nb) }
}

/// Per item: the 128-d embedding.
impl super::Network for Embedder {
    fn device(&self) -> &Device {
        Embedder::device(self)
    }

    fn launch(&self, x: Tensor<4>) -> Result<super::Readback, ForwardError> {
        let n = x.dims()[0];
        let out = self.embed(x);
        Ok(Box::new(move || super::rows(out, n)))
    }
}

/// The embedder as a worker loads it (`weights`: the ONNX file).
pub fn spec(weights: std::path::PathBuf) -> super::ModelSpec {
    super::ModelSpec::new("sface", weights, [INPUT_SIZE, INPUT_SIZE], |w, d| {
        Ok(Box::new(Embedder::load(w, d.clone())?))
    })
}
