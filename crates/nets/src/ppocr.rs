//! PP-OCRv6 (RapidOCR 3.10's "small" models): the DB text detector and the CTC text recogniser,
//! with the weights of the published ONNX files (`scripts/fetch-weights.sh`, models/ppocr/).
//!
//! The detector is convolutional: its graph runs as burn ops through `onnx_graph`. The
//! recogniser's convolutional trunk (PPLCNetV4 up to its average pool) runs the same way; its
//! neck (LightSVTR: two pre-norm transformer blocks over the time steps) and CTC head are written
//! here, their weights taken in the order the graph first uses them (the exporter's names carry no
//! layer identity: docs/research/pp-ocr-and-plates.md §2.2), each checked against its shape.

use std::path::Path;

use burn::prelude::{Device, Int, Tensor, TensorData};
use burn::tensor::activation::{silu, softmax};
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;

use super::GraphError;
use super::onnx_graph::OnnxGraph;
use super::onnx_weights::{OnnxModel, load_with};
use super::{ForwardError, LoadError};

/// Height of the recogniser's input; its width is free (a multiple of 8 keeps every step whole).
pub const REC_HEIGHT: usize = 48;
/// Width of the trunk's output: 384 channels at 1/8 of the input width after the pool.
const TRUNK_CHANNELS: usize = 384;
const DIM: usize = 120;
const HEADS: usize = 8;
const HIDDEN: usize = 240;
const LOCAL_KERNEL: usize = 7;
const BN_EPS: f32 = 1e-5;
const LN_EPS: f32 = 1e-5;
const FINAL_LN_EPS: f32 = 1e-6;

/// Time steps the recogniser gives for an input `width` pixels wide (three halvings, ceil).
pub fn rec_steps(width: usize) -> usize {
    width.div_ceil(2).div_ceil(2) / 2
}

/// The recogniser's CTC classes: class 0 is the blank, 1..=N the dictionary of the model's
/// metadata (`character`, one code point per line), N+1 a space (as RapidOCR appends it).
#[derive(Debug, Clone)]
pub struct Charset {
    chars: Vec<char>,
}

impl Charset {
    /// The dictionary of a recogniser's ONNX file.
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        load_with(path, Self::from_metadata)
    }

    pub fn from_metadata(model: &OnnxModel) -> Result<Self, GraphError> {
        let dict = model.metadata.get("character").ok_or("no `character` entry in the model's metadata")?;
        let mut chars = vec!['\0'];
        for line in dict.split('\n') {
            let mut it = line.chars();
            match (it.next(), it.next()) {
                (Some(c), None) => chars.push(c),
                _ => return Err(GraphError::Node(format!("dictionary entry {line:?} is not one character"))),
            }
        }
        chars.push(' ');
        Ok(Self { chars })
    }

    /// Classes including the blank.
    pub fn len(&self) -> usize {
        self.chars.len()
    }

    pub fn is_empty(&self) -> bool {
        self.chars.len() <= 1
    }

    /// The character of a class; None for the blank and out-of-range classes.
    pub fn char(&self, class: usize) -> Option<char> {
        if class == 0 { None } else { self.chars.get(class).copied() }
    }
}

struct Linear {
    weight: Tensor<2>,
    bias: Tensor<1>,
}

impl Linear {
    /// `x`: rows × in.
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        x.matmul(self.weight.clone()) + self.bias.clone().unsqueeze::<2>()
    }
}

struct LayerNorm {
    gamma: Tensor<1>,
    beta: Tensor<1>,
    eps: f32,
}

impl LayerNorm {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let centred = x.clone() - x.mean_dim(1);
        let var = centred.clone().powf_scalar(2.0).mean_dim(1);
        centred / (var + self.eps).sqrt() * self.gamma.clone().unsqueeze::<2>() + self.beta.clone().unsqueeze::<2>()
    }
}

/// A 1×k convolution with its BatchNorm folded in.
struct ConvBn {
    weight: Tensor<4>,
    bias: Tensor<1>,
    options: ConvOptions<2>,
}

impl ConvBn {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        conv2d(x, self.weight.clone(), Some(self.bias.clone()), self.options.clone())
    }
}

struct Block {
    norm1: LayerNorm,
    qkv: Linear,
    proj: Linear,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl Block {
    /// `x`: (N·T) × DIM rows, item-major.
    fn forward(&self, x: Tensor<2>, n: usize, t: usize) -> Tensor<2> {
        let head = DIM / HEADS;
        let qkv = self.qkv.forward(self.norm1.forward(x.clone())); // (N·T) × 3·DIM: [q | k | v], head-major
        let part = |i: usize| {
            qkv.clone().slice([0..n * t, i * DIM..(i + 1) * DIM]).reshape([n, t, HEADS, head]).swap_dims(1, 2)
        };
        let (q, k, v) = (part(0) * (head as f32).powf(-0.5), part(1), part(2));
        let attn = softmax(q.matmul(k.swap_dims(2, 3)), 3);
        let mixed = attn.matmul(v).swap_dims(1, 2).reshape([n * t, DIM]);
        let x = x + self.proj.forward(mixed);
        let h = self.fc2.forward(silu(self.fc1.forward(self.norm2.forward(x.clone()))));
        x + h
    }
}

/// What the recogniser gives per time step: the most probable class and its probability.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    pub class: usize,
    pub prob: f32,
}

/// PP-OCRv6 rec small: N×3×48×W (BGR, (x/255 − 0.5)/0.5) → per time step the class probabilities
/// over `Charset`.
pub struct TextRecognizer {
    trunk: OnnxGraph,
    skip: ConvBn,
    reduce: ConvBn,
    local: ConvBn,
    blocks: Vec<Block>,
    norm: LayerNorm,
    head: Linear,
    pub charset: Charset,
    device: Device,
}

impl std::fmt::Debug for TextRecognizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextRecognizer").field("classes", &self.charset.len()).finish_non_exhaustive()
    }
}

/// The neck's and head's weights in first-use order, each checked against its expected shape.
struct Weights<'a> {
    model: &'a OnnxModel,
    names: std::vec::IntoIter<String>,
    device: &'a Device,
}

impl Weights<'_> {
    fn next(&mut self, dims: &[usize]) -> Result<Vec<f32>, GraphError> {
        let name = self.names.next().ok_or("the graph has fewer weights than the recogniser's neck and head")?;
        let t = self.model.float(&name).ok_or(format!("`{name}` is not a float tensor"))?;
        if t.dims != dims {
            return Err(GraphError::Node(format!("weight `{name}` has shape {:?}, expected {dims:?}", t.dims)));
        }
        Ok(t.data.clone())
    }

    fn vector(&mut self, len: usize) -> Result<Tensor<1>, GraphError> {
        let v = self.next(&[len])?;
        Ok(Tensor::from_data(TensorData::new(v, [len]), self.device))
    }

    fn linear(&mut self, d_in: usize, d_out: usize) -> Result<Linear, GraphError> {
        let w = self.next(&[d_in, d_out])?;
        Ok(Linear {
            weight: Tensor::from_data(TensorData::new(w, [d_in, d_out]), self.device),
            bias: self.vector(d_out)?,
        })
    }

    fn layer_norm(&mut self, eps: f32) -> Result<LayerNorm, GraphError> {
        Ok(LayerNorm { gamma: self.vector(DIM)?, beta: self.vector(DIM)?, eps })
    }

    /// A bias-free convolution followed by BatchNorm (scale, bias, mean, variance), folded.
    fn conv_bn(&mut self, dims: [usize; 4], options: ConvOptions<2>) -> Result<ConvBn, GraphError> {
        let mut w = self.next(&dims)?;
        let c = dims[0];
        let [scale, shift, mean, var] = [(); 4].map(|()| self.next(&[c]));
        let (scale, shift, mean, var) = (scale?, shift?, mean?, var?);
        let per = w.len() / c;
        let mut bias = vec![0f32; c];
        for o in 0..c {
            let s = scale[o] / (var[o] + BN_EPS).sqrt();
            w[o * per..(o + 1) * per].iter_mut().for_each(|v| *v *= s);
            bias[o] = shift[o] - mean[o] * s;
        }
        Ok(ConvBn {
            weight: Tensor::from_data(TensorData::new(w, dims), self.device),
            bias: Tensor::from_data(TensorData::new(bias, [c]), self.device),
            options,
        })
    }
}

impl TextRecognizer {
    pub fn load(path: &Path, device: &Device) -> Result<Self, LoadError> {
        load_with(path, |model| Self::from_model(model, device))
    }

    fn from_model(model: &OnnxModel, device: &Device) -> Result<Self, GraphError> {
        let pool = model
            .nodes
            .iter()
            .position(|n| n.op_type == "AveragePool")
            .ok_or("no AveragePool node: not a PP-OCRv6 recogniser")?;
        let trunk = OnnxGraph::from_model(model, pool + 1, device)?;
        let produced: std::collections::HashSet<&str> =
            model.nodes.iter().flat_map(|n| n.outputs.iter().map(String::as_str)).collect();
        let mut names: Vec<String> = Vec::new();
        for node in &model.nodes[pool + 1..] {
            for input in &node.inputs {
                let is_weight =
                    !produced.contains(model.resolve(input)) && model.float(input).is_some_and(|t| t.data.len() > 1);
                if is_weight && !names.iter().any(|n| n == input) {
                    names.push(input.clone());
                }
            }
        }
        let mut w = Weights { model, names: names.into_iter(), device };
        let one = ConvOptions::new([1, 1], [0, 0], [1, 1], 1);
        let skip = w.conv_bn([DIM, TRUNK_CHANNELS, 1, 1], one.clone())?;
        let reduce = w.conv_bn([DIM, TRUNK_CHANNELS, 1, 1], one)?;
        let local =
            w.conv_bn([DIM, 1, 1, LOCAL_KERNEL], ConvOptions::new([1, 1], [0, LOCAL_KERNEL / 2], [1, 1], DIM))?;
        let mut blocks = Vec::new();
        for _ in 0..2 {
            blocks.push(Block {
                norm1: w.layer_norm(LN_EPS)?,
                qkv: w.linear(DIM, 3 * DIM)?,
                proj: w.linear(DIM, DIM)?,
                norm2: w.layer_norm(LN_EPS)?,
                fc1: w.linear(DIM, HIDDEN)?,
                fc2: w.linear(HIDDEN, DIM)?,
            });
        }
        let norm = w.layer_norm(FINAL_LN_EPS)?;
        let charset = Charset::from_metadata(model)?;
        let head = w.linear(DIM, charset.len())?;
        if let Some(extra) = w.names.next() {
            return Err(GraphError::Node(format!("unexpected weight `{extra}` after the CTC head")));
        }
        Ok(Self { trunk, skip, reduce, local, blocks, norm, head, charset, device: device.clone() })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Class logits, (N·T) × classes, item-major.
    fn logits(&self, x: Tensor<4>) -> (Tensor<2>, usize, usize) {
        let pooled = self.trunk.forward(x); // N × 384 × 1 × T
        let [n, _, _, t] = pooled.dims();
        let rows = |y: Tensor<4>| y.reshape([n, DIM, t]).swap_dims(1, 2).reshape([n * t, DIM]);
        let skip = silu(self.skip.forward(pooled.clone()));
        let z = silu(self.reduce.forward(pooled));
        let z = z.clone() + silu(self.local.forward(z));
        let mut z = rows(z);
        for block in &self.blocks {
            z = block.forward(z, n, t);
        }
        let z = self.norm.forward(z) + rows(skip);
        (self.head.forward(z), n, t)
    }

    /// Class probabilities, N × T × classes (for tests against the reference).
    pub fn probabilities(&self, x: Tensor<4>) -> Tensor<3> {
        let (logits, n, t) = self.logits(x);
        softmax(logits, 1).reshape([n, t, self.charset.len()])
    }

    /// Per item and time step the most probable class and its probability, reduced on the device:
    /// N × T × 2 (class as f32, probability), item-major.
    pub fn best(&self, x: Tensor<4>) -> Tensor<3> {
        let (logits, n, t) = self.logits(x);
        let (prob, class): (Tensor<2>, Tensor<2, Int>) = softmax(logits, 1).max_dim_with_indices(1);
        Tensor::cat(vec![class.float(), prob], 1).reshape([n, t, 2])
    }
}

/// One item's `best` output → its steps.
pub fn steps(row: &[f32]) -> Result<Vec<Step>, ForwardError> {
    if !row.len().is_multiple_of(2) {
        return Err(ForwardError::Device(format!("recogniser row of odd length {}", row.len())));
    }
    Ok(row.chunks_exact(2).map(|p| Step { class: p[0] as usize, prob: p[1] }).collect())
}

/// Input size of the orientation classifier (48 × 192, crops resized to 48 high and padded).
pub const CLS_HEIGHT: usize = 48;
pub const CLS_WIDTH: usize = 192;

/// PP-OCR's text-line orientation classifier (`ch_ppocr_mobile_v2.0_cls_mobile`, RapidOCR 3.10's
/// default): N×3×48×192 (BGR, (x/255 − 0.5)/0.5) → N × 2 probabilities of 0° and 180°. Its
/// MobileNetV3 trunk (BatchNorm unfolded, hard-swish as Clip) runs through `onnx_graph` up to the
/// global pool; the linear head is written here.
pub struct OrientationClassifier {
    trunk: OnnxGraph,
    weight: Tensor<2>,
    bias: Tensor<1>,
    device: Device,
}

impl std::fmt::Debug for OrientationClassifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrientationClassifier").finish_non_exhaustive()
    }
}

impl OrientationClassifier {
    pub fn load(path: &Path, device: &Device) -> Result<Self, LoadError> {
        load_with(path, |model| Self::from_model(model, device))
    }

    fn from_model(model: &OnnxModel, device: &Device) -> Result<Self, GraphError> {
        let pool = model
            .nodes
            .iter()
            .rposition(|n| n.op_type == "GlobalAveragePool")
            .ok_or("no GlobalAveragePool node: not the orientation classifier")?;
        let trunk = OnnxGraph::from_model(model, pool + 1, device)?;
        let matmul = model.nodes[pool..].iter().find(|n| n.op_type == "MatMul").ok_or("no MatMul head")?;
        let w = matmul.inputs.get(1).and_then(|n| model.float(n)).ok_or("the head's weight is not a tensor")?;
        let add = model.nodes[pool..]
            .iter()
            .find(|n| n.op_type == "Add" && n.inputs.first() == matmul.outputs.first())
            .ok_or("no bias after the head")?;
        let b = add.inputs.get(1).and_then(|n| model.float(n)).ok_or("the head's bias is not a tensor")?;
        match (w.dims.as_slice(), b.dims.as_slice()) {
            (&[_, 2], &[2]) => {}
            (wd, bd) => return Err(GraphError::Node(format!("head shapes {wd:?} / {bd:?}, expected [C, 2] / [2]"))),
        }
        Ok(Self {
            trunk,
            weight: Tensor::from_data(TensorData::new(w.data.clone(), [w.dims[0], 2]), device),
            bias: Tensor::from_data(TensorData::new(b.data.clone(), [2]), device),
            device: device.clone(),
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// N × 2: the probabilities of upright (0°) and upside down (180°).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let pooled = self.trunk.forward(x);
        let [n, c, _, _] = pooled.dims();
        let logits = pooled.reshape([n, c]).matmul(self.weight.clone()) + self.bias.clone().unsqueeze::<2>();
        softmax(logits, 1)
    }
}

/// Warm-up side of the detectors that take any size (a multiple of 32).
pub const DET_WARMUP: usize = 32;

/// Per item: the best class and its probability per time step.
impl super::Network for TextRecognizer {
    fn device(&self) -> &Device {
        TextRecognizer::device(self)
    }

    fn launch(&self, x: Tensor<4>) -> Result<super::Readback, ForwardError> {
        let n = x.dims()[0];
        let out = self.best(x);
        Ok(Box::new(move || super::rows(out, n)))
    }
}

/// Per item: the probabilities of 0° and 180°.
impl super::Network for OrientationClassifier {
    fn device(&self) -> &Device {
        OrientationClassifier::device(self)
    }

    fn launch(&self, x: Tensor<4>) -> Result<super::Readback, ForwardError> {
        let n = x.dims()[0];
        let out = self.forward(x);
        Ok(Box::new(move || super::rows(out, n)))
    }
}

/// The text detector (any size, multiples of 32) on the graph runner; per item the probability map.
pub fn det_spec(weights: std::path::PathBuf) -> super::ModelSpec {
    super::ModelSpec::new("text_det", weights, [DET_WARMUP, DET_WARMUP], |w, d| {
        Ok(Box::new(super::onnx_graph::GraphNet { graph: OnnxGraph::load(w, d)?, device: d.clone() }))
    })
    .any_size(true, true)
}

/// The text recogniser: 48 high, any width.
pub fn rec_spec(weights: std::path::PathBuf) -> super::ModelSpec {
    super::ModelSpec::new("text_rec", weights, [REC_HEIGHT, REC_HEIGHT], |w, d| {
        Ok(Box::new(TextRecognizer::load(w, d)?))
    })
    .any_size(false, true)
}

/// The line orientation classifier: 48 × 192.
pub fn cls_spec(weights: std::path::PathBuf) -> super::ModelSpec {
    super::ModelSpec::new("text_cls", weights, [CLS_HEIGHT, CLS_WIDTH], |w, d| {
        Ok(Box::new(OrientationClassifier::load(w, d)?))
    })
}
