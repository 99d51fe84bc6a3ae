//! Runs a convolutional ONNX graph as burn ops, node by node in graph order: each node becomes
//! the burn op it names, its weights (initializers or `Constant` values, read by
//! `models::onnx_weights`) uploaded to the device once at load time. For networks whose exported
//! graph is the clearest statement of the architecture (PaddleOCR's, where BatchNorm is folded and
//! parameters carry no layer names); the op set is what those graphs use, on N×C×H×W tensors, and a
//! graph with any other op is refused at load time with the op's name.
//!
//! On the CPU device every convolution runs on the CPU engine's kernels (crates/kernels, through
//! `models::cpu`) with the activation after it and a residual `Add` fused into the same pass
//! ([`fuse_for_cpu`]); on GPUs the nodes stay burn ops (burn's fusion joins them there).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use burn::prelude::{Device, Tensor, TensorData};
use burn::tensor::activation::{leaky_relu, prelu, relu, sigmoid};
use burn::tensor::module::{avg_pool2d, conv_transpose2d, conv2d, interpolate, max_pool2d};
use burn::tensor::ops::{
    AvgPoolOptions, ConvOptions, ConvTransposeOptions, InterpolateMode, InterpolateOptions, MaxPoolOptions,
};

use super::GraphError;
use super::LoadError;
use super::cpu::{self, Act, Geom, HostConv, Pad};
use super::onnx_weights::{OnnxAttr, OnnxModel, OnnxNode, load_with};

/// One node, ready to run: its op with attributes resolved, its inputs by name.
#[derive(Debug)]
pub(super) enum Op {
    Conv {
        weight: Tensor<4>,
        bias: Option<Tensor<1>>,
        options: ConvOptions<2>,
    },
    ConvTranspose {
        weight: Tensor<4>,
        bias: Option<Tensor<1>>,
        options: ConvTransposeOptions<2>,
    },
    /// A TensorFlow convolution (`groups` = channels for a depthwise one): `same` pads as
    /// TensorFlow's SAME does (`max((⌈in/s⌉ − 1)·s + k − in, 0)`, the odd pixel after), from the
    /// input's size when it runs; otherwise no padding (VALID).
    TfConv {
        weight: Tensor<4>,
        bias: Option<Tensor<1>>,
        stride: usize,
        groups: usize,
        same: bool,
    },
    /// A convolution on the CPU engine with its activation and, when `residual`, the `Add` after
    /// it in the same pass: inputs `[x]` or `[x, residual]` (made by [`fuse_for_cpu`]).
    Host {
        conv: Arc<HostConv>,
        residual: bool,
        /// A transposed convolution whose kernel is its stride (no padding, dilation or groups):
        /// `conv` is its 1×1 form with `kh·kw` outputs per channel, each spread to its pixel's
        /// kh × kw cell ([`cpu::spread_cells`]).
        cells: Option<[usize; 2]>,
    },
    /// TensorFlow's bilinear resize with `align_corners` and `half_pixel_centers` false: output
    /// pixel `o` samples the input at `o · in / out`, its right/bottom neighbour clamped.
    ResizeTf([usize; 2]),
    Add,
    Sub,
    Mul,
    Div,
    Relu,
    /// `x` where positive, else `slope · x`.
    LeakyRelu(f64),
    /// LeakyRelu with a slope per channel.
    PRelu(Tensor<1>),
    /// PyTorch's PixelShuffle (ncnn mode 0): C·r² × H × W → C × rH × rW, channel `c·r² + i·r + j`
    /// to pixel (i, j) of each r × r cell.
    PixelShuffle(usize),
    Sigmoid,
    HardSigmoid {
        alpha: f32,
        beta: f32,
    },
    /// x · min(max(α·x + β, 0), 1): ONNX's HardSwish (α = 1/6, β = ½), or the four nodes an
    /// exporter writes for it (`fuse_hard_swish`).
    HardSwish {
        alpha: f32,
        beta: f32,
    },
    Erf,
    /// x · ½ · (1 + erf(x / √2)): the five nodes an exporter writes for GELU (`fuse_gelu`).
    Gelu,
    /// `min(max(x, lo), hi)`.
    Clip(f32, f32),
    /// Per-channel `x · scale + shift` (an inference-mode BatchNormalization), both 1×C×1×1.
    Affine {
        scale: Tensor<4>,
        shift: Tensor<4>,
    },
    /// GlobalAveragePool, or ReduceMean over H and W keeping them.
    MeanHw,
    /// Nearest, integer scales on H and W.
    Upsample([usize; 2]),
    Concat,
    MaxPool(MaxPoolOptions<2>),
    /// Average pooling without padding (so `count_include_pad` does not matter).
    AvgPool(AvgPoolOptions<2>),
    Identity,
    /// N×C×H×W → N×(C·H·W)×1×1: a 2-D value (N × features) as the runner holds it, 4-D with
    /// unit spatial axes (a classifier's head: `Flatten`, `Reshape` to 2-D, `Squeeze`).
    Flatten,
    /// N×C×H×W → N×(H·W·C)×1×1 in H, W, C order (Keras's `Flatten` of an NHWC value).
    FlattenHwc,
    /// Softmax over C (axis 1 of a 4-D value, or the features of a flat one).
    SoftmaxC,
}

impl Op {
    /// The op's kind, for profiles.
    fn kind(&self) -> &'static str {
        match self {
            Op::Conv { .. } => "conv (burn)",
            Op::ConvTranspose { .. } => "conv transpose (burn)",
            Op::TfConv { .. } => "tf conv (burn)",
            Op::Host { cells: Some(_), .. } => "conv transpose (engine)",
            Op::Host { conv, .. } => {
                let g = &conv.geom;
                if g.groups == g.cin && g.groups > 1 {
                    "conv depthwise (engine)"
                } else if g.kernel == [1, 1] {
                    "conv 1×1 (engine)"
                } else {
                    "conv k×k (engine)"
                }
            }
            Op::ResizeTf(_) => "resize",
            Op::Add => "add",
            Op::Sub => "sub",
            Op::Mul => "mul",
            Op::Div => "div",
            Op::Relu | Op::LeakyRelu(_) | Op::PRelu(_) | Op::Clip(..) => "relu family",
            Op::PixelShuffle(_) => "pixel shuffle",
            Op::Sigmoid | Op::HardSigmoid { .. } => "sigmoid family",
            Op::HardSwish { .. } => "hard swish",
            Op::Erf => "erf",
            Op::Gelu => "gelu",
            Op::Affine { .. } => "affine",
            Op::MeanHw => "mean over H, W",
            Op::Upsample(_) => "upsample",
            Op::Concat => "concat",
            Op::MaxPool(_) | Op::AvgPool(_) => "pool",
            Op::Identity | Op::Flatten | Op::FlattenHwc => "identity",
            Op::SoftmaxC => "softmax",
        }
    }
}

#[derive(Debug)]
pub(super) struct Step {
    pub(super) op: Op,
    pub(super) inputs: Vec<String>,
    pub(super) output: String,
}

/// A loaded graph (an ONNX one, or a TF.js graph model's, `models::tfjs`): one input; its
/// outputs side by side along C.
#[derive(Debug)]
pub struct OnnxGraph {
    steps: Vec<Step>,
    /// Tensor operands of element-wise nodes (biases, scalars), as N×C×H×W with size-1 axes.
    constants: HashMap<String, Tensor<4>>,
    input: String,
    outputs: Vec<String>,
    /// Per step, the values it uses for the last time (freed after it: a deep graph's
    /// intermediates are not all held at once).
    last_uses: Vec<Vec<String>>,
}

fn pads_2d(node: &OnnxNode, kernel: [usize; 2], stride: [usize; 2]) -> Result<[(usize, usize); 2], GraphError> {
    if let Some(OnnxAttr::Bytes(mode)) = node.attr("auto_pad") {
        match mode.as_slice() {
            b"SAME_UPPER" | b"SAME_LOWER" => {
                // Output = ceil(input / stride); only stride 1 is needed (PP-OCR's stem): k − 1 in all.
                if stride != [1, 1] {
                    return Err(GraphError::Node(format!("{}: auto_pad SAME with stride {stride:?}", node.op_type)));
                }
                let split = |k: usize| {
                    let (small, large) = ((k - 1) / 2, (k - 1) - (k - 1) / 2);
                    if mode.as_slice() == b"SAME_UPPER" { (small, large) } else { (large, small) }
                };
                return Ok([split(kernel[0]), split(kernel[1])]);
            }
            b"NOTSET" | b"VALID" => {}
            other => {
                return Err(GraphError::Node(format!("{}: auto_pad {}", node.op_type, String::from_utf8_lossy(other))));
            }
        }
    }
    match node.attr_ints("pads") {
        None => Ok([(0, 0), (0, 0)]),
        // ONNX: [top, left, bottom, right].
        Some(&[t, l, b, r]) if t >= 0 && l >= 0 && b >= 0 && r >= 0 => {
            Ok([(t as usize, b as usize), (l as usize, r as usize)])
        }
        Some(p) => Err(GraphError::Node(format!("{}: pads {p:?}", node.op_type))),
    }
}

fn pair(node: &OnnxNode, name: &str, default: usize) -> Result<[usize; 2], GraphError> {
    match node.attr_ints(name) {
        None => Ok([default, default]),
        Some(&[a, b]) if a > 0 && b > 0 => Ok([a as usize, b as usize]),
        Some(v) => Err(GraphError::Node(format!("{}: {name} {v:?}", node.op_type))),
    }
}

fn tensor4(model: &OnnxModel, name: &str, device: &Device) -> Option<Tensor<4>> {
    let t = model.float(name)?;
    let mut dims = [1usize; 4];
    if t.dims.len() > 4 {
        return None;
    }
    dims[4 - t.dims.len()..].copy_from_slice(&t.dims);
    Some(Tensor::from_data(TensorData::new(t.data.clone(), dims), device))
}

/// One value of a shape being computed by the graph: the batch size, a known number, or unknown.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Dim {
    Batch,
    Known(i64),
    Unknown,
}

/// A constant int tensor, or a shape computed so far.
fn dims_of(model: &OnnxModel, shapes: &HashMap<String, Vec<Dim>>, name: &str) -> Option<Vec<Dim>> {
    shapes
        .get(name)
        .cloned()
        .or_else(|| model.ints.get(model.resolve(name)).map(|v| v.iter().map(|&d| Dim::Known(d)).collect()))
}

/// A node of the graph's shape arithmetic, evaluated: `Shape` of a value (N × C × H × W, or N × F
/// for a flat one), and `Cast`, `Slice` (axis 0, step 1), `Gather`, `Unsqueeze`, `Concat` of
/// shapes and int constants. `None`: the node computes tensor values, not a shape.
fn shape_arithmetic(
    model: &OnnxModel,
    node: &OnnxNode,
    shapes: &HashMap<String, Vec<Dim>>,
    flat: &std::collections::HashSet<String>,
) -> Result<Option<Vec<Dim>>, GraphError> {
    let ints = |i: usize| node.inputs.get(i).filter(|n| !n.is_empty()).and_then(|n| dims_of(model, shapes, n));
    let is_shape = |i: usize| node.inputs.get(i).is_some_and(|n| shapes.contains_key(n));
    let known = |d: Option<Vec<Dim>>| -> Option<Vec<i64>> {
        d?.into_iter().map(|d| if let Dim::Known(v) = d { Some(v) } else { None }).collect()
    };
    Ok(Some(match node.op_type.as_str() {
        "Shape" => {
            let x = node.inputs.first().ok_or("Shape: no input")?;
            if flat.contains(x) {
                vec![Dim::Batch, Dim::Unknown]
            } else {
                vec![Dim::Batch, Dim::Unknown, Dim::Unknown, Dim::Unknown]
            }
        }
        "Cast" | "Unsqueeze" | "Squeeze"
            if is_shape(0) || (model.ints.contains_key(model.resolve(&node.inputs[0]))) =>
        {
            ints(0).ok_or(format!("{}: no shape", node.op_type))?
        }
        "Slice" if is_shape(0) => {
            let data = ints(0).unwrap_or_default();
            let attr = |name: &str| node.attr_ints(name).map(<[i64]>::to_vec);
            let starts = known(ints(1)).or_else(|| attr("starts")).ok_or("Slice: starts are not constant")?;
            let ends = known(ints(2)).or_else(|| attr("ends")).ok_or("Slice: ends are not constant")?;
            let axes = known(ints(3)).or_else(|| attr("axes")).unwrap_or(vec![0]);
            let steps = known(ints(4)).unwrap_or(vec![1]);
            let (&[s], &[e], &[0], &[1]) = (starts.as_slice(), ends.as_slice(), axes.as_slice(), steps.as_slice())
            else {
                return Err(GraphError::Node(format!(
                    "Slice of a shape: starts {starts:?} ends {ends:?} axes {axes:?} steps {steps:?}"
                )));
            };
            let len = data.len() as i64;
            let clamp = |v: i64| (if v < 0 { v + len } else { v }).clamp(0, len) as usize;
            data[clamp(s)..clamp(e).max(clamp(s))].to_vec()
        }
        "Gather" if is_shape(0) => {
            let data = ints(0).unwrap_or_default();
            let idx = known(ints(1)).ok_or("Gather of a shape: indices are not constant")?;
            let len = data.len() as i64;
            idx.iter()
                .map(|&i| {
                    data.get((if i < 0 { i + len } else { i }) as usize)
                        .copied()
                        .ok_or(format!("Gather of a shape: index {i}"))
                })
                .collect::<Result<_, _>>()?
        }
        "Concat" if node.inputs.iter().any(|n| shapes.contains_key(n)) => {
            let mut out = Vec::new();
            for i in 0..node.inputs.len() {
                out.extend(ints(i).ok_or("Concat of a shape with a value")?);
            }
            out
        }
        _ => return Ok(None),
    }))
}

/// A constant operand of a 2-D value (N × F, held as N×F×1×1): `[F]` or `[1, F]` → 1×F×1×1.
fn features(model: &OnnxModel, name: &str, device: &Device) -> Option<Tensor<4>> {
    let t = model.float(name)?;
    match t.dims.as_slice() {
        [] | [1] | [1, 1] => Some(Tensor::from_data(TensorData::new(t.data.clone(), [1, 1, 1, 1]), device)),
        [f] | [1, f] => Some(Tensor::from_data(TensorData::new(t.data.clone(), [1, *f, 1, 1]), device)),
        _ => None,
    }
}

fn tensor1(model: &OnnxModel, name: &str, device: &Device) -> Option<Tensor<1>> {
    let t = model.float(name)?;
    Some(Tensor::from_data(TensorData::new(t.data.clone(), [t.data.len()]), device))
}

/// A `Conv` node's weight, bias and options (strides, pads, dilations, groups).
pub(super) fn conv(
    model: &OnnxModel,
    node: &OnnxNode,
    device: &Device,
) -> Result<(Tensor<4>, Option<Tensor<1>>, ConvOptions<2>), GraphError> {
    let name = node.inputs.get(1).ok_or("Conv: missing weight")?;
    let weight = tensor4(model, name, device).ok_or(format!("Conv: input `{name}` is not a weight"))?;
    let bias = node.inputs.get(2).filter(|n| !n.is_empty()).and_then(|n| tensor1(model, n, device));
    let [_, _, kh, kw] = weight.dims();
    let stride = pair(node, "strides", 1)?;
    let options = ConvOptions::new_with_padding(
        stride,
        pads_2d(node, [kh, kw], stride)?,
        pair(node, "dilations", 1)?,
        node.attr_int("group").unwrap_or(1) as usize,
    );
    Ok((weight, bias, options))
}

impl OnnxGraph {
    pub fn load(path: &Path, device: &Device) -> Result<Self, LoadError> {
        load_with(path, |model| Self::from_model(model, model.nodes.len(), device))
    }

    /// The graph's first `nodes` nodes (a convolutional trunk whose output the caller takes on
    /// with its own layers); the output is the last of them.
    pub fn from_model(model: &OnnxModel, nodes: usize, device: &Device) -> Result<Self, GraphError> {
        // Values computed by the graph (`Constant` nodes' outputs are weights).
        let produced: std::collections::HashSet<&str> = model
            .nodes
            .iter()
            .filter(|n| n.op_type != "Constant")
            .flat_map(|n| n.outputs.iter().map(String::as_str))
            .collect();
        let mut steps = Vec::new();
        let mut constants = HashMap::new();
        let mut input = None;
        // Values that are 2-D (N × features) in the graph, held as N×F×1×1: their constant
        // operands broadcast along F (axis 1 here), not along the last axis.
        let mut flat: std::collections::HashSet<String> = std::collections::HashSet::new();
        // Shape arithmetic (`Shape` → `Slice` / `Gather` → `Concat` → a `Reshape`'s target),
        // evaluated here: no step runs it.
        let mut shapes: HashMap<String, Vec<Dim>> = HashMap::new();
        for node in &model.nodes[..nodes.min(model.nodes.len())] {
            let weight = |i: usize| -> Result<Tensor<4>, GraphError> {
                let name = node.inputs.get(i).ok_or(format!("{}: missing input {i}", node.op_type))?;
                tensor4(model, name, device)
                    .ok_or(GraphError::Node(format!("{}: input `{name}` is not a weight", node.op_type)))
            };
            let bias = |i: usize| node.inputs.get(i).filter(|n| !n.is_empty()).and_then(|n| tensor1(model, n, device));
            if let Some(dims) = shape_arithmetic(model, node, &shapes, &flat)? {
                if let Some(out) = node.outputs.first() {
                    shapes.insert(out.clone(), dims);
                }
                continue;
            }
            let from_flat = node.inputs.iter().any(|i| flat.contains(i));
            let mut makes_flat = from_flat;
            let op = match node.op_type.as_str() {
                "Conv" => {
                    let (weight, bias, options) = conv(model, node, device)?;
                    Op::Conv { weight, bias, options }
                }
                "ConvTranspose" => {
                    let w = weight(1)?;
                    let padding = match pads_2d(node, [1, 1], [1, 1])? {
                        [(t, b), (l, r)] if t == b && l == r => [t, l],
                        p => return Err(GraphError::Node(format!("ConvTranspose: asymmetric pads {p:?}"))),
                    };
                    let options = ConvTransposeOptions::new(
                        pair(node, "strides", 1)?,
                        padding,
                        pair(node, "output_padding", 0)?,
                        pair(node, "dilations", 1)?,
                        node.attr_int("group").unwrap_or(1) as usize,
                    );
                    Op::ConvTranspose { weight: w, bias: bias(2), options }
                }
                "Add" | "Mul" | "Div" => {
                    for name in &node.inputs {
                        if !produced.contains(model.resolve(name)) && model.float(name).is_some() {
                            let t = if from_flat {
                                features(model, name, device).ok_or(format!(
                                    "{}: operand `{name}` of a 2-D value is not a vector of its features",
                                    node.op_type
                                ))?
                            } else {
                                tensor4(model, name, device)
                                    .ok_or(format!("{}: operand `{name}` has more than 4 axes", node.op_type))?
                            };
                            constants.insert(name.clone(), t);
                        }
                    }
                    match node.op_type.as_str() {
                        "Add" => Op::Add,
                        "Mul" => Op::Mul,
                        _ => Op::Div,
                    }
                }
                "Relu" => Op::Relu,
                "Sigmoid" => Op::Sigmoid,
                "HardSigmoid" => Op::HardSigmoid {
                    alpha: node.attr_float("alpha").unwrap_or(0.2),
                    beta: node.attr_float("beta").unwrap_or(0.5),
                },
                "HardSwish" => Op::HardSwish { alpha: 1.0 / 6.0, beta: 0.5 },
                "Erf" => Op::Erf,
                "Clip" => {
                    let bound = |i: usize, attr: &str, default: f32| -> Result<f32, GraphError> {
                        match node.inputs.get(i).filter(|n| !n.is_empty()) {
                            Some(name) => match model.float(name) {
                                Some(t) if t.data.len() == 1 => Ok(t.data[0]),
                                _ => Err(GraphError::Node(format!("Clip: bound `{name}` is not a constant scalar"))),
                            },
                            None => Ok(node.attr_float(attr).unwrap_or(default)),
                        }
                    };
                    Op::Clip(bound(1, "min", f32::MIN)?, bound(2, "max", f32::MAX)?)
                }
                "BatchNormalization" => {
                    let param = |i: usize| -> Result<Vec<f32>, GraphError> {
                        let name = node.inputs.get(i).ok_or(format!("BatchNormalization: missing input {i}"))?;
                        model
                            .float(name)
                            .map(|t| t.data.clone())
                            .ok_or(GraphError::Node(format!("BatchNormalization: `{name}` is not a weight")))
                    };
                    let (gamma, beta, mean, var) = (param(1)?, param(2)?, param(3)?, param(4)?);
                    let eps = node.attr_float("epsilon").unwrap_or(1e-5);
                    let c = gamma.len();
                    if [beta.len(), mean.len(), var.len()] != [c, c, c] {
                        return Err("BatchNormalization: parameter lengths differ".into());
                    }
                    let scale: Vec<f32> = (0..c).map(|i| gamma[i] / (var[i] + eps).sqrt()).collect();
                    let shift: Vec<f32> = (0..c).map(|i| beta[i] - mean[i] * scale[i]).collect();
                    let t = |v: Vec<f32>| Tensor::from_data(TensorData::new(v, [1, c, 1, 1]), device);
                    Op::Affine { scale: t(scale), shift: t(shift) }
                }
                // A weight reshaped by the graph (Paddle's exports reshape biases to 1×C×1×1): a
                // constant of that shape, computed here.
                "Reshape" if node.inputs.first().is_some_and(|i| model.float(i).is_some()) => {
                    let t = model.float(&node.inputs[0]).expect("checked above");
                    let shape = node.inputs.get(1).and_then(|n| model.ints.get(model.resolve(n)));
                    let dims: Vec<usize> = match shape {
                        Some(s) if s.len() <= 4 && s.iter().all(|d| *d > 0) => s.iter().map(|d| *d as usize).collect(),
                        other => return Err(GraphError::Node(format!("Reshape of a weight to {other:?}"))),
                    };
                    if dims.iter().product::<usize>() != t.data.len() {
                        return Err(GraphError::Node(format!(
                            "Reshape of a weight to {dims:?}: {} values",
                            t.data.len()
                        )));
                    }
                    let mut d4 = [1usize; 4];
                    d4[4 - dims.len()..].copy_from_slice(&dims);
                    let out = node.outputs.first().cloned().ok_or("Reshape: no output")?;
                    constants.insert(out, Tensor::from_data(TensorData::new(t.data.clone(), d4), device));
                    continue;
                }
                "GlobalAveragePool" => Op::MeanHw,
                "ReduceMean" => match (node.attr_ints("axes"), node.attr_int("keepdims").unwrap_or(1)) {
                    (Some(&[2, 3]), 1) => Op::MeanHw,
                    (axes, keep) => return Err(GraphError::Node(format!("ReduceMean over {axes:?} keepdims {keep}"))),
                },
                "Resize" => {
                    let mode = match node.attr("mode") {
                        Some(OnnxAttr::Bytes(m)) => m.clone(),
                        _ => b"nearest".to_vec(),
                    };
                    let scales = node.inputs.get(2).and_then(|n| model.float(n)).map(|t| t.data.clone());
                    match (mode.as_slice(), scales.as_deref()) {
                        (b"nearest", Some(&[1.0, 1.0, sh, sw])) if sh.fract() == 0.0 && sw.fract() == 0.0 => {
                            Op::Upsample([sh as usize, sw as usize])
                        }
                        _ => {
                            return Err(GraphError::Node(format!(
                                "Resize: mode {} scales {scales:?}",
                                String::from_utf8_lossy(&mode)
                            )));
                        }
                    }
                }
                "Concat" => match node.attr_int("axis") {
                    Some(1) => Op::Concat,
                    axis => return Err(GraphError::Node(format!("Concat on axis {axis:?}"))),
                },
                "MaxPool" => {
                    let kernel = pair(node, "kernel_shape", 1)?;
                    let stride = pair(node, "strides", 1)?;
                    let options = MaxPoolOptions::new(kernel)
                        .with_stride(stride)
                        .with_padding_pairs(pads_2d(node, kernel, stride)?)
                        .with_ceil_mode(node.attr_int("ceil_mode") == Some(1));
                    Op::MaxPool(options)
                }
                "AveragePool" => {
                    let kernel = pair(node, "kernel_shape", 1)?;
                    if pads_2d(node, kernel, [1, 1])? != [(0, 0), (0, 0)] || node.attr_int("ceil_mode") == Some(1) {
                        return Err("AveragePool with padding or ceil_mode".into());
                    }
                    let mut options = AvgPoolOptions::new(kernel);
                    options.stride = pair(node, "strides", 1)?;
                    Op::AvgPool(options)
                }
                // Their values are read with the weights (`onnx_weights`).
                "Constant" => continue,
                // Renamed weights are read through `OnnxModel::resolve`; only renamed values run.
                "Identity" if node.inputs.first().is_some_and(|i| model.float(i).is_some()) => continue,
                "Identity" => Op::Identity,
                // A classifier's head: features (N×C×H×W → N×F), dense layers, softmax.
                "Flatten" => match node.attr_int("axis").unwrap_or(1) {
                    1 => {
                        makes_flat = true;
                        Op::Flatten
                    }
                    axis => {
                        return Err(GraphError::Node(format!(
                            "Flatten on axis {axis} is not supported by the graph runner"
                        )));
                    }
                },
                "Squeeze" => {
                    let axes = node
                        .attr_ints("axes")
                        .map(<[i64]>::to_vec)
                        .or_else(|| node.inputs.get(1).and_then(|n| model.ints.get(model.resolve(n))).cloned());
                    match axes.as_deref() {
                        Some(&[2, 3]) | Some(&[-2, -1]) => {
                            makes_flat = true;
                            Op::Flatten
                        }
                        other => {
                            return Err(GraphError::Node(format!(
                                "Squeeze of axes {other:?} is not supported by the graph runner"
                            )));
                        }
                    }
                }
                "Reshape" => {
                    let shape = node.inputs.get(1).and_then(|n| dims_of(model, &shapes, n));
                    match shape.as_deref() {
                        // To N × features (the batch axis kept whatever the export wrote for it).
                        Some(&[Dim::Batch | Dim::Known(-1..=1), Dim::Known(f)]) if f == -1 || f > 0 => {
                            makes_flat = true;
                            Op::Flatten
                        }
                        other => {
                            return Err(GraphError::Node(format!(
                                "Reshape of a value to {other:?} is not supported by the graph runner (only to N × \
                                 features)"
                            )));
                        }
                    }
                }
                "MatMul" | "Gemm" if from_flat => {
                    let name = node.inputs.get(1).ok_or(format!("{}: missing input 1", node.op_type))?;
                    let b = model.float(name).ok_or(format!("{}: input `{name}` is not a weight", node.op_type))?;
                    let &[rows, cols] = b.dims.as_slice() else {
                        return Err(GraphError::Node(format!(
                            "{}: weight `{name}` has shape {:?}, not 2-D",
                            node.op_type, b.dims
                        )));
                    };
                    let gemm = node.op_type == "Gemm";
                    if gemm && node.attr_int("transA").unwrap_or(0) != 0 {
                        return Err("Gemm with transA".into());
                    }
                    let trans_b = gemm && node.attr_int("transB").unwrap_or(0) != 0;
                    let alpha = if gemm { node.attr_float("alpha").unwrap_or(1.0) } else { 1.0 };
                    // As a 1×1 convolution: weight K × C × 1 × 1 (B is C × K, or K × C transposed).
                    let (c, k) = if trans_b { (cols, rows) } else { (rows, cols) };
                    let mut w = vec![0f32; k * c];
                    for (i, &v) in b.data.iter().enumerate() {
                        let (r, s) = (i / cols, i % cols);
                        let (ci, ki) = if trans_b { (s, r) } else { (r, s) };
                        w[ki * c + ci] = alpha * v;
                    }
                    let bias = if gemm {
                        let beta = node.attr_float("beta").unwrap_or(1.0);
                        match node.inputs.get(2).filter(|n| !n.is_empty()) {
                            None => None,
                            Some(n) => match model.float(n) {
                                Some(t) if t.data.len() == k => Some(Tensor::<1>::from_data(
                                    TensorData::new(t.data.iter().map(|v| beta * v).collect::<Vec<_>>(), [k]),
                                    device,
                                )),
                                _ => return Err(GraphError::Node(format!("Gemm: bias `{n}` is not a vector of {k}"))),
                            },
                        }
                    } else {
                        None
                    };
                    makes_flat = true;
                    Op::Conv {
                        weight: Tensor::from_data(TensorData::new(w, [k, c, 1, 1]), device),
                        bias,
                        options: ConvOptions::new([1, 1], [0, 0], [1, 1], 1),
                    }
                }
                "Softmax" => {
                    // Opset 13 defaults to the last axis, earlier ones to 1: on a flat value both
                    // are its features.
                    let axis = node.attr_int("axis");
                    match (from_flat, axis) {
                        (true, None | Some(1) | Some(-1)) | (false, Some(1)) => Op::SoftmaxC,
                        (_, axis) => {
                            return Err(GraphError::Node(format!(
                                "Softmax on axis {axis:?} of a 4-D value is not supported by the graph runner"
                            )));
                        }
                    }
                }
                other => {
                    let node = node.outputs.first().cloned().unwrap_or_default();
                    return Err(GraphError::UnsupportedOp { op: other.to_string(), node });
                }
            };
            let inputs: Vec<String> = node.inputs.iter().filter(|n| !n.is_empty()).cloned().collect();
            // The graph input: the first name that no node produces and that is not a weight.
            if input.is_none()
                && let Some(first) = inputs.first()
                && !produced.contains(first.as_str())
                && model.float(first).is_none()
            {
                input = Some(first.clone());
            }
            let output = node.outputs.first().cloned().ok_or(format!("{}: no output", node.op_type))?;
            if makes_flat {
                flat.insert(output.clone());
            }
            steps.push(Step { op, inputs, output });
        }
        let output = steps.last().map(|s| s.output.clone()).ok_or("empty graph")?;
        Self::from_parts(steps, constants, input.ok_or("no graph input")?, vec![output])
    }

    pub(super) fn from_parts(
        steps: Vec<Step>,
        constants: HashMap<String, Tensor<4>>,
        input: String,
        outputs: Vec<String>,
    ) -> Result<Self, GraphError> {
        let steps = skip_identities(steps, &outputs);
        let steps = fuse_gelu(steps, &constants, &outputs);
        let steps = fuse_hard_swish(steps, &constants, &outputs);
        let steps = fuse_for_cpu(steps, &constants, &outputs);
        for o in &outputs {
            if !steps.iter().any(|s| &s.output == o) {
                return Err(GraphError::Node(format!("no step computes output `{o}`")));
            }
        }
        let mut last: HashMap<&str, usize> = HashMap::new();
        for (i, step) in steps.iter().enumerate() {
            for name in &step.inputs {
                last.insert(name.as_str(), i);
            }
        }
        let mut last_uses = vec![Vec::new(); steps.len()];
        for (name, i) in last {
            if !outputs.iter().any(|o| o == name) && !constants.contains_key(name) {
                last_uses[i].push(name.to_string());
            }
        }
        Ok(Self { steps, constants, input, outputs, last_uses })
    }

    /// Runs the graph on `x` (N×C×H×W, on the device the graph was loaded on).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.run(x, None)
    }

    /// `forward`, with each step's wall time and arithmetic pushed to `ops` (`bench networks
    /// --profile`; meaningful on the CPU device, which runs each op as it is called).
    pub fn forward_profiled(&self, x: Tensor<4>, ops: &mut Vec<super::profile::OpTime>) -> Tensor<4> {
        self.run(x, Some(ops))
    }

    fn run(&self, x: Tensor<4>, mut profile: Option<&mut Vec<super::profile::OpTime>>) -> Tensor<4> {
        // On the CPU the element-wise ops and max pooling run multi-threaded (`cpu::unary`, …);
        // elsewhere they are burn's (fused on GPUs).
        let host = cpu::is_cpu(&x.device());
        let un = |x: Tensor<4>, f: cpu::Unary, burn: fn(Tensor<4>) -> Tensor<4>| {
            if host { cpu::unary(x, f) } else { burn(x) }
        };
        let bin = |a: Tensor<4>, b: Tensor<4>, f: cpu::Binary, burn: fn(Tensor<4>, Tensor<4>) -> Tensor<4>| {
            if host { cpu::binary(a, b, f, burn) } else { burn(a, b) }
        };
        let mut values: HashMap<&str, Tensor<4>> = HashMap::new();
        values.insert(self.input.as_str(), x);
        for (step, done) in self.steps.iter().zip(&self.last_uses) {
            // A value used for the last time is moved into the op (which may then reuse its
            // buffer), others are shared.
            let mut args: Vec<Option<Tensor<4>>> = step
                .inputs
                .iter()
                .map(|name| {
                    let once = step.inputs.iter().filter(|n| *n == name).count() == 1;
                    if once && done.contains(name) {
                        values.remove(name.as_str())
                    } else {
                        values.get(name.as_str()).cloned()
                    }
                    .or_else(|| self.constants.get(name).cloned())
                })
                .collect();
            let in_dims = args.first().and_then(|a| a.as_ref()).map(|t| t.dims());
            let mut get = |i: usize| -> Tensor<4> {
                args[i].take().unwrap_or_else(|| {
                    panic!("graph value `{}` used before it is computed. This is a bug.", step.inputs[i])
                })
            };
            let start = std::time::Instant::now();
            let y = match &step.op {
                Op::Conv { weight, bias, options } => conv2d(get(0), weight.clone(), bias.clone(), options.clone()),
                Op::ConvTranspose { weight, bias, options } => {
                    conv_transpose2d(get(0), weight.clone(), bias.clone(), options.clone())
                }
                Op::TfConv { weight, bias, stride, groups, same } => {
                    let x = get(0);
                    let [_, _, h, w] = x.dims();
                    let [_, _, kh, kw] = weight.dims();
                    let pad = |size: usize, k: usize| -> (usize, usize) {
                        if !*same {
                            return (0, 0);
                        }
                        let total = ((size.div_ceil(*stride) - 1) * stride + k).saturating_sub(size);
                        (total / 2, total - total / 2)
                    };
                    let ((top, bottom), (left, right)) = (pad(h, kh), pad(w, kw));
                    let (x, padding) = if top == bottom && left == right {
                        (x, [top, left])
                    } else {
                        (x.pad((left, right, top, bottom), burn::tensor::ops::PadMode::Constant(0.0)), [0, 0])
                    };
                    let options = ConvOptions::new([*stride, *stride], padding, [1, 1], *groups);
                    conv2d(x, weight.clone(), bias.clone(), options)
                }
                Op::Host { conv, cells: Some(cell), .. } => cpu::spread_cells(cpu::forward(conv, get(0), None), *cell),
                Op::Host { conv, residual, cells: None } => {
                    let x = get(0);
                    let [n, _, h, w] = x.dims();
                    let (oh, ow) = conv.geom.out(h, w);
                    match residual.then(|| get(1)) {
                        Some(r) if r.dims() == [n, conv.geom.cout, oh, ow] => cpu::forward(conv, x, Some(r)),
                        // A broadcast operand: added by burn after the fused pass.
                        Some(r) => cpu::forward(conv, x, None) + r,
                        None => cpu::forward(conv, x, None),
                    }
                }
                Op::ResizeTf([oh, ow]) => resize_tf(get(0), [*oh, *ow]),
                Op::Add => bin(get(0), get(1), cpu::Binary::Add, |a, b| a + b),
                Op::Sub => bin(get(0), get(1), cpu::Binary::Sub, |a, b| a - b),
                Op::Mul => bin(get(0), get(1), cpu::Binary::Mul, |a, b| a * b),
                Op::Div => bin(get(0), get(1), cpu::Binary::Div, |a, b| a / b),
                Op::Relu => un(get(0), cpu::Unary::Relu, relu),
                Op::LeakyRelu(slope) if host => cpu::unary(get(0), cpu::Unary::LeakyRelu(*slope as f32)),
                Op::LeakyRelu(slope) => leaky_relu(get(0), *slope),
                Op::PRelu(slope) => prelu(get(0), slope.clone()),
                Op::PixelShuffle(r) => {
                    let x = get(0);
                    let [n, c, h, w] = x.dims();
                    let r = *r;
                    x.reshape([n, c / (r * r), r, r, h, w]).permute([0, 1, 4, 2, 5, 3]).reshape([
                        n,
                        c / (r * r),
                        h * r,
                        w * r,
                    ])
                }
                Op::Sigmoid => un(get(0), cpu::Unary::Sigmoid, sigmoid),
                Op::HardSigmoid { alpha, beta } if host => cpu::unary(get(0), cpu::Unary::HardSigmoid(*alpha, *beta)),
                Op::HardSigmoid { alpha, beta } => (get(0) * *alpha + *beta).clamp(0.0, 1.0),
                Op::HardSwish { alpha, beta } if host => cpu::unary(get(0), cpu::Unary::HardSwish(*alpha, *beta)),
                Op::HardSwish { alpha, beta } => {
                    let x = get(0);
                    x.clone() * (x * *alpha + *beta).clamp(0.0, 1.0)
                }
                Op::Erf => un(get(0), cpu::Unary::Erf, |x| x.erf()),
                Op::Gelu => un(get(0), cpu::Unary::Gelu, burn::tensor::activation::gelu),
                Op::Clip(lo, hi) if host => cpu::unary(get(0), cpu::Unary::Clip(*lo, *hi)),
                Op::Clip(lo, hi) => get(0).clamp(*lo, *hi),
                Op::Affine { scale, shift } => get(0) * scale.clone() + shift.clone(),
                Op::MeanHw => get(0).mean_dim(2).mean_dim(3),
                Op::Upsample(scale) => {
                    let x = get(0);
                    let [_, _, h, w] = x.dims();
                    // ONNX nearest, asymmetric, floor: source pixel = floor(dst / scale).
                    let options = InterpolateOptions::new(InterpolateMode::Nearest)
                        .with_align_corners(false)
                        .with_output_size([h * scale[0], w * scale[1]]);
                    interpolate(x, options)
                }
                Op::Concat => {
                    let parts: Vec<Tensor<4>> = (0..step.inputs.len()).map(&mut get).collect();
                    if host { cpu::concat_channels(parts) } else { Tensor::cat(parts, 1) }
                }
                Op::MaxPool(o) => {
                    let x = get(0);
                    let fast = (host && o.dilation == [1, 1])
                        .then(|| cpu::max_pool(&x, o.kernel_size, o.stride, o.padding, o.ceil_mode))
                        .flatten();
                    fast.unwrap_or_else(|| max_pool2d(x, o.clone()))
                }
                Op::AvgPool(options) => avg_pool2d(get(0), options.clone()),
                Op::Identity => get(0),
                Op::Flatten => {
                    let x = get(0);
                    let [n, c, h, w] = x.dims();
                    x.reshape([n, c * h * w, 1, 1])
                }
                Op::FlattenHwc => {
                    let x = get(0);
                    let [n, c, h, w] = x.dims();
                    if h * w == 1 {
                        x.reshape([n, c, 1, 1])
                    } else {
                        x.permute([0, 2, 3, 1]).reshape([n, h * w * c, 1, 1])
                    }
                }
                Op::SoftmaxC => burn::tensor::activation::softmax(get(0), 1),
            };
            if let Some(ops) = profile.as_deref_mut() {
                let flops = match &step.op {
                    Op::Host { conv, .. } => {
                        let [n, _, h, w] = in_dims.unwrap_or_default();
                        2.0 * (n * conv.geom.macs(h, w)) as f64
                    }
                    _ => 0.0,
                };
                ops.push(super::profile::OpTime {
                    kind: step.op.kind(),
                    seconds: start.elapsed().as_secs_f64(),
                    flops,
                });
            }
            for name in done {
                values.remove(name.as_str());
            }
            values.insert(step.output.as_str(), y);
        }
        let mut outputs: Vec<Tensor<4>> =
            self.outputs.iter().map(|o| values.remove(o.as_str()).expect("a graph output. This is a bug.")).collect();
        if outputs.len() == 1 { outputs.remove(0) } else { Tensor::cat(outputs, 1) }
    }
}

/// A convolution step's kernel shape (channels from its weight), when it is one.
fn conv_geom(op: &Op) -> Option<(&Tensor<4>, Option<&Tensor<1>>, Geom)> {
    match op {
        Op::Conv { weight, bias, options } => Some((weight, bias.as_ref(), cpu::geom_of(weight, options))),
        Op::TfConv { weight, bias, stride, groups, same } => {
            let pad = if *same { Pad::TfSame } else { Pad::Explicit([0; 4]) };
            let [cout, cin_per_group, kh, kw] = weight.dims();
            let geom = Geom {
                cin: cin_per_group * groups,
                cout,
                groups: *groups,
                kernel: [kh, kw],
                stride: [*stride; 2],
                dilation: [1, 1],
                pad,
            };
            Some((weight, bias.as_ref(), geom))
        }
        _ => None,
    }
}

/// A transposed convolution whose kernel equals its stride, without padding, output padding,
/// dilation or groups (PP-OCR det's upsampling): its weight (`cin × cout × kh × kw`), bias, shape
/// (`cin`, `cout`; the kernel fields unused) and kernel.
#[allow(clippy::type_complexity)]
fn cell_transpose(op: &Op) -> Option<(&Tensor<4>, Option<&Tensor<1>>, Geom, [usize; 2])> {
    let Op::ConvTranspose { weight, bias, options } = op else { return None };
    let [cin, cout, kh, kw] = weight.dims();
    let plain = options.stride == [kh, kw]
        && options.padding == [0, 0]
        && options.padding_out == [0, 0]
        && options.dilation == [1, 1]
        && options.groups == 1;
    plain.then(|| (weight, bias.as_ref(), Geom::square(cin, cout, 1, 1, 1, 0), [kh, kw]))
}

/// The activation a step applies, as the CPU engine's (for `cout` channels); `None` for any other op.
fn step_act(op: &Op, cout: usize) -> Option<Act> {
    Some(match op {
        Op::Relu => Act::Relu,
        Op::LeakyRelu(slope) => Act::LeakyRelu(*slope as f32),
        Op::Clip(lo, hi) => Act::Clip(*lo, *hi),
        Op::Sigmoid => Act::Sigmoid,
        Op::HardSigmoid { alpha, beta } => Act::HardSigmoid(*alpha, *beta),
        Op::HardSwish { alpha, beta } => Act::HardSwish(*alpha, *beta),
        Op::Gelu => Act::Gelu,
        Op::PRelu(slope) => {
            let a: Vec<f32> = slope.clone().into_data().iter::<f32>().collect();
            match a.len() {
                1 => Act::PRelu(vec![a[0]; cout]),
                n if n == cout => Act::PRelu(a),
                _ => return None,
            }
        }
        _ => return None,
    })
}

/// GELU as exported node by node — `Div(x, √2)` → `Erf` → `Add(·, 1)` → `Mul(x, ·)` → `Mul(·, ½)`,
/// each intermediate used once — becomes one `Gelu` step where the last `Mul` was.
fn fuse_gelu(steps: Vec<Step>, constants: &HashMap<String, Tensor<4>>, outputs: &[String]) -> Vec<Step> {
    let (uses, consumer, producer) = links(&steps, outputs);
    // The single consumer of `value`, when it has exactly one and is not a graph output.
    let next = |value: &str| (uses.get(value) == Some(&1)).then(|| consumer.get(value).copied()).flatten();
    let near = |v: Option<f32>, want: f32| v.is_some_and(|v| (v - want).abs() <= 1e-6 * want.max(1.0));
    let mut drop = vec![false; steps.len()];
    let mut gelu: HashMap<usize, Step> = HashMap::new();
    for (e, erf) in steps.iter().enumerate() {
        if !matches!(erf.op, Op::Erf) {
            continue;
        }
        let found = (|| {
            let d = *producer.get(erf.inputs[0].as_str())?;
            let div = &steps[d];
            let x = div.inputs.first()?;
            if !matches!(div.op, Op::Div)
                || next(&div.output) != Some(e)
                || !near(scalar_operand(div, x, constants), std::f32::consts::SQRT_2)
            {
                return None;
            }
            let a = next(&erf.output)?;
            let add = &steps[a];
            if !matches!(add.op, Op::Add) || !near(scalar_operand(add, &erf.output, constants), 1.0) {
                return None;
            }
            let m = next(&add.output)?;
            let mul = &steps[m];
            if !multiplies(mul, &add.output, x) {
                return None;
            }
            let h = next(&mul.output)?;
            let half = &steps[h];
            if !matches!(half.op, Op::Mul) || !near(scalar_operand(half, &mul.output, constants), 0.5) {
                return None;
            }
            Some(([d, e, a, m], h, x.clone(), half.output.clone()))
        })();
        if let Some((gone, at, x, output)) = found {
            gone.iter().for_each(|&i| drop[i] = true);
            gelu.insert(at, Step { op: Op::Gelu, inputs: vec![x], output });
        }
    }
    replace_steps(steps, gelu, &drop)
}

/// Whether `step` is `value · x` (either order).
fn multiplies(step: &Step, value: &str, x: &str) -> bool {
    matches!(step.op, Op::Mul)
        && step.inputs.len() == 2
        && step.inputs.iter().find(|n| n.as_str() != value).is_some_and(|other| other == x)
}

/// The other operand of a two-operand step on `value`, when it is a constant scalar.
fn scalar_operand(step: &Step, value: &str, constants: &HashMap<String, Tensor<4>>) -> Option<f32> {
    let [a, b] = &step.inputs[..] else { return None };
    let other = if a == value { b } else { a };
    let t = constants.get(other.as_str())?;
    (other != value && t.dims() == [1, 1, 1, 1]).then(|| t.clone().into_data().iter::<f32>().next()).flatten()
}

/// The other operand of a two-operand step on `value`, when it is a constant with one value per
/// channel of a `c`-channel value (`1×c×1×1`) or one value for all (`1×1×1×1`): `c` values.
fn channel_operand(step: &Step, value: &str, constants: &HashMap<String, Tensor<4>>, c: usize) -> Option<Vec<f32>> {
    let [a, b] = &step.inputs[..] else { return None };
    let other = if a == value { b } else { a };
    if other == value {
        return None;
    }
    per_channel(constants.get(other.as_str())?, c)
}

/// A `1×c×1×1` or `1×1×1×1` constant as `c` values.
fn per_channel(t: &Tensor<4>, c: usize) -> Option<Vec<f32>> {
    let v: Vec<f32> = match t.dims() {
        [1, 1, 1, 1] => vec![t.clone().into_data().iter::<f32>().next()?; c],
        [1, k, 1, 1] if k == c => t.clone().into_data().iter::<f32>().collect(),
        _ => return None,
    };
    Some(v)
}

/// Hard swish as exported node by node — `Add(x, β/α)` → `Clip(0, 1/α)` → `Mul(x, ·)` →
/// `Div(·, 1/α)` (or `Mul(·, α)`), each intermediate used once — becomes one `HardSwish` step
/// where the last node was.
fn fuse_hard_swish(steps: Vec<Step>, constants: &HashMap<String, Tensor<4>>, outputs: &[String]) -> Vec<Step> {
    let (uses, consumer, producer) = links(&steps, outputs);
    let next = |value: &str| (uses.get(value) == Some(&1)).then(|| consumer.get(value).copied()).flatten();
    let mut drop = vec![false; steps.len()];
    let mut fused: HashMap<usize, Step> = HashMap::new();
    for (c, clip) in steps.iter().enumerate() {
        let Op::Clip(lo, hi) = clip.op else { continue };
        if lo != 0.0 || !(hi > 0.0 && hi.is_finite()) {
            continue;
        }
        let found = (|| {
            let a = *producer.get(clip.inputs[0].as_str())?;
            let add = &steps[a];
            let x = add.inputs.iter().find(|n| !constants.contains_key(n.as_str()))?;
            let shift = scalar_operand(add, x, constants)?;
            if !matches!(add.op, Op::Add) || next(&add.output) != Some(c) {
                return None;
            }
            let m = next(&clip.output)?;
            let mul = &steps[m];
            if !multiplies(mul, &clip.output, x) {
                return None;
            }
            let d = next(&mul.output)?;
            let last = &steps[d];
            let by = scalar_operand(last, &mul.output, constants)?;
            let divides = matches!(last.op, Op::Div) && last.inputs[0] == mul.output;
            let near = |a: f32, b: f32| (a - b).abs() <= 1e-6 * b.abs().max(1.0);
            if !(divides && near(by, hi) || matches!(last.op, Op::Mul) && near(by * hi, 1.0)) {
                return None;
            }
            Some(([a, c, m], d, x.clone(), last.output.clone(), shift))
        })();
        if let Some((gone, at, x, output, shift)) = found {
            gone.iter().for_each(|&i| drop[i] = true);
            let op = Op::HardSwish { alpha: 1.0 / hi, beta: shift / hi };
            fused.insert(at, Step { op, inputs: vec![x], output });
        }
    }
    replace_steps(steps, fused, &drop)
}

/// Per value: how many steps (and graph outputs) use it, its last consumer, and its producer.
#[allow(clippy::type_complexity)]
fn links<'a>(
    steps: &'a [Step],
    outputs: &'a [String],
) -> (HashMap<&'a str, usize>, HashMap<&'a str, usize>, HashMap<&'a str, usize>) {
    let mut uses: HashMap<&str, usize> = HashMap::new();
    let mut consumer: HashMap<&str, usize> = HashMap::new();
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (j, step) in steps.iter().enumerate() {
        for name in &step.inputs {
            *uses.entry(name).or_default() += 1;
            consumer.insert(name, j);
        }
        producer.insert(&step.output, j);
    }
    for o in outputs {
        *uses.entry(o).or_default() += 1;
    }
    (uses, consumer, producer)
}

/// `steps` with step `i` replaced by `fused[i]` where there is one, else dropped where `drop[i]`.
fn replace_steps(steps: Vec<Step>, mut fused: HashMap<usize, Step>, drop: &[bool]) -> Vec<Step> {
    steps
        .into_iter()
        .enumerate()
        .filter_map(|(i, step)| match fused.remove(&i) {
            Some(f) => Some(f),
            None if drop[i] => None,
            None => Some(step),
        })
        .collect()
}

/// `Identity` steps (renames, casts) removed: their users read the value they copy. One whose
/// value is a graph output stays.
fn skip_identities(steps: Vec<Step>, outputs: &[String]) -> Vec<Step> {
    let mut alias: HashMap<String, String> = HashMap::new();
    let mut kept = Vec::with_capacity(steps.len());
    for mut step in steps {
        for name in &mut step.inputs {
            if let Some(source) = alias.get(name) {
                *name = source.clone();
            }
        }
        if matches!(step.op, Op::Identity) && step.inputs.len() == 1 && !outputs.contains(&step.output) {
            alias.insert(step.output, step.inputs.remove(0));
            continue;
        }
        kept.push(step);
    }
    kept
}

/// On the CPU device: each convolution becomes one CPU-engine step with a constant scale and the
/// activation that follow it and a residual `Add` after that (when the convolution's and the activation's values
/// have no other use), placed where the last fused node was (the residual is computed by then).
/// Steps on other devices are left as they are.
fn fuse_for_cpu(steps: Vec<Step>, constants: &HashMap<String, Tensor<4>>, outputs: &[String]) -> Vec<Step> {
    let (uses, consumer, _) = links(&steps, outputs);
    // Per fused convolution: where it goes (its last absorbed step) and the step.
    let mut fused: HashMap<usize, Step> = HashMap::new();
    let mut taken = vec![false; steps.len()];
    for (i, step) in steps.iter().enumerate() {
        // A transposed convolution that only spreads pixels to cells: `cells`, its true output
        // channels in `geom.cout`.
        let (weight, bias, geom, cells) = match (conv_geom(&step.op), cell_transpose(&step.op)) {
            (Some((w, b, g)), _) => (w, b, g, None),
            (None, Some((w, b, g, cell))) => (w, b, g, Some(cell)),
            _ => continue,
        };
        if taken[i] || !cpu::is_cpu(&weight.device()) {
            continue;
        }
        let (mut out, mut act, mut last, mut residual) = (step.output.as_str(), Act::Identity, i, None);
        // y = scale · conv + shift per output channel, from the constant operands before the activation.
        let mut affine = cpu::Affine::identity(geom.cout);
        let mut absorbed = Vec::new();
        while uses.get(out) == Some(&1) && residual.is_none() {
            // (A graph output has no consumer: its one use is being an output.)
            let Some(&j) = consumer.get(out) else { break };
            if taken[j] {
                break;
            }
            let next = &steps[j];
            let constant = channel_operand(next, out, constants, geom.cout);
            let first = next.inputs.first().is_some_and(|n| n == out);
            match (&next.op, constant, act == Act::Identity) {
                (Op::Add, Some(c), true) => affine.add(&c),
                (Op::Sub, Some(c), true) if first => affine.add(&c.iter().map(|v| -v).collect::<Vec<_>>()),
                (Op::Mul, Some(c), true) => affine.mul(&c),
                (Op::Div, Some(c), true) if first => affine.mul(&c.iter().map(|v| 1.0 / v).collect::<Vec<_>>()),
                (Op::Affine { scale, shift }, None, true) => {
                    let (Some(s), Some(t)) = (per_channel(scale, geom.cout), per_channel(shift, geom.cout)) else {
                        break;
                    };
                    affine.mul(&s);
                    affine.add(&t);
                }
                // (A residual is added on the convolution's output grid: not a cell transpose's.)
                (Op::Add, _, _) if cells.is_some() => break,
                (Op::Add, _, _) => {
                    let other = next.inputs.iter().find(|n| n.as_str() != out);
                    match other {
                        Some(o) if next.inputs.len() == 2 && !constants.contains_key(o) => residual = Some(o.clone()),
                        _ => break,
                    }
                }
                (op, _, identity) => match step_act(op, geom.cout) {
                    Some(a) if identity => act = a,
                    _ => break,
                },
            }
            absorbed.push(j);
            (out, last) = (next.output.as_str(), j);
        }
        let conv = match cells {
            None => cpu::graph_conv(weight, bias, geom, act, &affine),
            Some(cell) => cpu::cell_transpose_conv(weight, bias, (geom.cin, geom.cout), cell, act, &affine),
        };
        let Some(conv) = conv else { continue };
        let mut inputs = vec![step.inputs[0].clone()];
        inputs.extend(residual.clone());
        let op = Op::Host { conv: Arc::new(conv), residual: residual.is_some(), cells };
        for &j in &absorbed {
            taken[j] = true;
        }
        taken[i] = true;
        fused.insert(last, Step { op, inputs, output: out.to_string() });
    }
    replace_steps(steps, fused, &taken)
}

/// A graph on its device, as a worker drives it. Per item: its outputs, flattened, side by side.
pub struct GraphNet {
    pub graph: OnnxGraph,
    pub device: Device,
}

impl super::Network for GraphNet {
    fn device(&self) -> &Device {
        &self.device
    }

    fn launch(&self, x: Tensor<4>) -> Result<super::Readback, super::ForwardError> {
        let n = x.dims()[0];
        let out = self.graph.forward(x);
        Ok(Box::new(move || super::rows(out, n)))
    }
}

/// TensorFlow's legacy bilinear taps (`align_corners` and `half_pixel_centers` false, as
/// TensorFlow.js's `resizeBilinear` by default) from `size` to `out` samples: per output sample
/// the lower and upper input index and the weight of the upper one. Output `o` samples the input
/// at `o · size / out`.
pub fn tf_bilinear_taps(size: usize, out: usize) -> (Vec<usize>, Vec<usize>, Vec<f32>) {
    let ratio = size as f64 / out as f64;
    let mut lo = Vec::with_capacity(out);
    let mut hi = Vec::with_capacity(out);
    let mut frac = Vec::with_capacity(out);
    for o in 0..out {
        let src = o as f64 * ratio;
        let l = (src.floor() as usize).min(size - 1);
        lo.push(l);
        hi.push((src.ceil() as usize).min(size - 1));
        frac.push((src - l as f64) as f32);
    }
    (lo, hi, frac)
}

/// TensorFlow's legacy bilinear resize (`align_corners` and `half_pixel_centers` false) of
/// N×C×H×W to `[oh, ow]`, one axis after the other.
fn resize_tf(x: Tensor<4>, [oh, ow]: [usize; 2]) -> Tensor<4> {
    let [_, _, h, w] = x.dims();
    let device = x.device();
    let axis = |x: Tensor<4>, dim: usize, size: usize, out: usize| -> Tensor<4> {
        if size == out {
            return x;
        }
        let (lo, hi, frac) = tf_bilinear_taps(size, out);
        let idx = |v: Vec<usize>| {
            Tensor::<1, burn::prelude::Int>::from_data(
                TensorData::new(v.into_iter().map(|i| i as i64).collect::<Vec<_>>(), [out]),
                &device,
            )
        };
        let a = x.clone().select(dim, idx(lo));
        let b = x.select(dim, idx(hi));
        let mut shape = [1, 1, 1, 1];
        shape[dim] = out;
        let f = Tensor::<4>::from_data(TensorData::new(frac, shape), &device);
        a.clone() + (b - a) * f
    };
    let x = axis(x, 2, h, oh);
    axis(x, 3, w, ow)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(n: usize, seed: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|i| (((i * 7919 + seed * 104729) % 1009) as f32 / 504.5 - 1.0) * scale).collect()
    }

    /// The largest absolute difference between two tensors' values.
    fn max_diff(want: Tensor<4>, got: Tensor<4>) -> f32 {
        want.into_data()
            .iter::<f32>()
            .zip(got.into_data().iter::<f32>())
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max)
    }

    fn step(op: Op, inputs: &[&str], output: &str) -> Step {
        Step { op, inputs: inputs.iter().map(|s| s.to_string()).collect(), output: output.into() }
    }

    #[test]
    fn a_conv_its_scale_activation_and_residual_run_as_one_cpu_step_with_the_same_values() {
        let device = Device::flex();
        let t4 = |v: Vec<f32>, d: [usize; 4]| Tensor::<4>::from_data(TensorData::new(v, d), &device);
        let (w, w2) = (t4(ramp(8 * 6 * 9, 1, 0.3), [8, 6, 3, 3]), t4(ramp(8 * 6, 2, 0.3), [8, 6, 1, 1]));
        let b = Tensor::<1>::from_data(TensorData::new(ramp(8, 3, 0.5), [8]), &device);
        let same = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
        let one = ConvOptions::new([1, 1], [0, 0], [1, 1], 1);
        // The residual is computed after the convolution, before the Add: the fused step goes where
        // the Add was.
        let steps = vec![
            step(Op::Conv { weight: w.clone(), bias: Some(b.clone()), options: same.clone() }, &["x", "w", "b"], "c"),
            step(Op::Conv { weight: w2.clone(), bias: None, options: one.clone() }, &["x", "w2"], "r"),
            step(Op::Mul, &["c", "half"], "m"),
            step(Op::LeakyRelu(0.1), &["m"], "a"),
            step(Op::Add, &["a", "r"], "y"),
        ];
        let constants = HashMap::from([("half".to_string(), t4(vec![0.5], [1, 1, 1, 1]))]);
        let graph = OnnxGraph::from_parts(steps, constants, "x".into(), vec!["y".into()]).unwrap();
        let ops: Vec<String> = graph
            .steps
            .iter()
            .map(|s| match &s.op {
                Op::Host { residual, .. } => format!("host(residual {residual}) → {}", s.output),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(ops, ["host(residual false) → r", "host(residual true) → y"]);
        let x = t4(ramp(2 * 6 * 9 * 11, 4, 2.0), [2, 6, 9, 11]);
        let want = leaky_relu(conv2d(x.clone(), w, Some(b), same) * 0.5, 0.1) + conv2d(x.clone(), w2, None, one);
        let got = graph.forward(x);
        let worst = max_diff(want, got);
        assert!(worst < 1e-5, "worst {worst}");
    }

    #[test]
    fn a_conv_whose_value_is_used_twice_keeps_its_activation_separate() {
        let device = Device::flex();
        let w = Tensor::<4>::from_data(TensorData::new(ramp(8 * 8, 1, 0.3), [8, 8, 1, 1]), &device);
        let options = ConvOptions::new([1, 1], [0, 0], [1, 1], 1);
        let steps = vec![
            step(Op::Conv { weight: w, bias: None, options }, &["x", "w"], "c"),
            step(Op::Relu, &["c"], "a"),
            step(Op::Add, &["a", "c"], "y"),
        ];
        let graph = OnnxGraph::from_parts(steps, HashMap::new(), "x".into(), vec!["y".into()]).unwrap();
        assert!(matches!(graph.steps[0].op, Op::Host { residual: false, .. }));
        assert!(matches!(graph.steps[1].op, Op::Relu) && matches!(graph.steps[2].op, Op::Add));
    }

    #[test]
    fn constant_operands_batch_norm_and_an_exported_hard_swish_fold_into_one_cpu_conv() {
        let device = Device::flex();
        let t4 = |v: Vec<f32>, d: [usize; 4]| Tensor::<4>::from_data(TensorData::new(v, d), &device);
        let w = t4(ramp(8 * 6 * 9, 1, 0.3), [8, 6, 3, 3]);
        let options = ConvOptions::new([2, 2], [1, 1], [1, 1], 1);
        let (bias, scale, shift) =
            (t4(ramp(8, 2, 0.5), [1, 8, 1, 1]), t4(ramp(8, 3, 1.5), [1, 8, 1, 1]), t4(ramp(8, 5, 0.7), [1, 8, 1, 1]));
        // Paddle's export: the conv without bias, a cast, the bias as a constant Add, a constant
        // divide, a BatchNorm, then hard swish as Add 3 → Clip(0, 6) → Mul x → Div 6; then the
        // result beside the input's pooled copy, max-pooled with ceil mode.
        let steps = vec![
            step(Op::Conv { weight: w.clone(), bias: None, options: options.clone() }, &["x", "w"], "c"),
            step(Op::Identity, &["c"], "cast"),
            step(Op::Add, &["cast", "bias"], "b"),
            step(Op::Div, &["b", "two"], "d"),
            step(Op::Affine { scale: scale.clone(), shift: shift.clone() }, &["d"], "bn"),
            step(Op::Add, &["bn", "three"], "p"),
            step(Op::Clip(0.0, 6.0), &["p", "lo", "hi"], "r6"),
            step(Op::Mul, &["bn", "r6"], "m"),
            step(Op::Div, &["m", "six"], "hs"),
            step(Op::Concat, &["hs", "hs"], "cat"),
            step(Op::MaxPool(MaxPoolOptions::new([2, 2]).with_stride([2, 2]).with_ceil_mode(true)), &["cat"], "y"),
        ];
        let scalar = |v: f32| t4(vec![v], [1, 1, 1, 1]);
        let constants = HashMap::from([
            ("bias".to_string(), bias.clone()),
            ("two".to_string(), scalar(2.0)),
            ("three".to_string(), scalar(3.0)),
            ("six".to_string(), scalar(6.0)),
        ]);
        let graph = OnnxGraph::from_parts(steps, constants, "x".into(), vec!["y".into()]).unwrap();
        let ops: Vec<String> = graph
            .steps
            .iter()
            .map(|s| match &s.op {
                Op::Host { conv, .. } => format!("host {:?} → {}", conv.act(), s.output),
                other => other.kind().to_string(),
            })
            .collect();
        assert_eq!(ops, [format!("host {:?} → hs", Act::HardSwish(1.0 / 6.0, 0.5)), "concat".into(), "pool".into()]);
        // 9 × 11 → 5 × 6 → pooled with ceil mode to 3 × 3.
        let x = t4(ramp(2 * 6 * 9 * 11, 4, 2.0), [2, 6, 9, 11]);
        let v = (conv2d(x.clone(), w, None, options) + bias) / 2.0 * scale + shift;
        let v = v.clone() * (v + 3.0).clamp(0.0, 6.0) / 6.0;
        let pool = MaxPoolOptions::new([2, 2]).with_stride([2, 2]).with_ceil_mode(true);
        let want = max_pool2d(Tensor::cat(vec![v.clone(), v], 1), pool);
        let got = graph.forward(x);
        assert_eq!(got.dims(), [2, 16, 3, 3]);
        assert_eq!(want.dims(), got.dims());
        let worst = max_diff(want, got);
        assert!(worst < 1e-5, "worst {worst}");
    }

    #[test]
    fn a_transposed_convolution_with_its_kernel_as_stride_runs_as_one_cpu_step_with_the_same_values() {
        let device = Device::flex();
        let t4 = |v: Vec<f32>, d: [usize; 4]| Tensor::<4>::from_data(TensorData::new(v, d), &device);
        // 6 → 5 channels, 2×2 cells, a bias, then a constant per-channel add and a PReLU.
        let w = t4(ramp(6 * 5 * 4, 1, 0.3), [6, 5, 2, 2]);
        let b = Tensor::<1>::from_data(TensorData::new(ramp(5, 2, 0.5), [5]), &device);
        let shift = t4(ramp(5, 3, 0.4), [1, 5, 1, 1]);
        let slope = Tensor::<1>::from_data(TensorData::new(ramp(5, 5, 0.3), [5]), &device);
        let options = ConvTransposeOptions::new([2, 2], [0, 0], [0, 0], [1, 1], 1);
        let steps = vec![
            step(Op::ConvTranspose { weight: w.clone(), bias: Some(b.clone()), options: options.clone() }, &["x"], "t"),
            step(Op::Add, &["t", "shift"], "s"),
            step(Op::PRelu(slope.clone()), &["s"], "y"),
        ];
        let constants = HashMap::from([("shift".to_string(), shift.clone())]);
        let graph = OnnxGraph::from_parts(steps, constants, "x".into(), vec!["y".into()]).unwrap();
        assert_eq!(graph.steps.len(), 1);
        assert_eq!(graph.steps[0].op.kind(), "conv transpose (engine)");
        let x = t4(ramp(2 * 6 * 5 * 7, 4, 2.0), [2, 6, 5, 7]);
        let want = prelu(conv_transpose2d(x.clone(), w, Some(b), options) + shift, slope);
        let got = graph.forward(x);
        assert_eq!(got.dims(), [2, 5, 10, 14]);
        let worst = max_diff(want, got);
        assert!(worst < 1e-5, "worst {worst}");
    }

    #[test]
    fn tf_bilinear_taps_sample_at_o_times_in_over_out() {
        // 4 → 8: sources 0, 0.5, 1, …, 3.5; the last one's upper tap is clamped.
        let (lo, hi, frac) = tf_bilinear_taps(4, 8);
        assert_eq!(lo, [0, 0, 1, 1, 2, 2, 3, 3]);
        assert_eq!(hi, [0, 1, 1, 2, 2, 3, 3, 3]);
        assert_eq!(frac, [0.0, 0.5, 0.0, 0.5, 0.0, 0.5, 0.0, 0.5]);
        // 3 → 2: sources 0 and 1.5.
        assert_eq!(tf_bilinear_taps(3, 2), (vec![0, 1], vec![0, 2], vec![0.0, 0.5]));
    }
}
