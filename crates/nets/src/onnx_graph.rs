//! Runs a convolutional ONNX graph as burn ops, node by node in graph order: each node becomes
//! the burn op it names, its weights (initializers or `Constant` values, read by
//! `models::onnx_weights`) uploaded to the device once at load time. For networks whose exported
//! graph is the clearest statement of the architecture (PaddleOCR's, where BatchNorm is folded and
//! parameters carry no layer names); the op set is what those graphs use, on N×C×H×W tensors, and a
//! graph with any other op is refused at load time with the op's name.

use std::collections::HashMap;
use std::path::Path;

use burn::prelude::{Device, Tensor, TensorData};
use burn::tensor::activation::{leaky_relu, prelu, relu, sigmoid};
use burn::tensor::module::{avg_pool2d, conv_transpose2d, conv2d, interpolate, max_pool2d};
use burn::tensor::ops::{
    AvgPoolOptions, ConvOptions, ConvTransposeOptions, InterpolateMode, InterpolateOptions, MaxPoolOptions,
};

use super::GraphError;
use super::LoadError;
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
    Erf,
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
    /// Softmax over C (axis 1 of a 4-D value, or the features of a flat one).
    SoftmaxC,
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
        let mut values: HashMap<&str, Tensor<4>> = HashMap::new();
        values.insert(self.input.as_str(), x);
        for (step, done) in self.steps.iter().zip(&self.last_uses) {
            let get = |i: usize| -> Tensor<4> {
                let name = step.inputs[i].as_str();
                values
                    .get(name)
                    .or_else(|| self.constants.get(name))
                    .cloned()
                    .unwrap_or_else(|| panic!("graph value `{name}` used before it is computed. This is a bug."))
            };
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
                Op::ResizeTf([oh, ow]) => resize_tf(get(0), [*oh, *ow]),
                Op::Add => get(0) + get(1),
                Op::Sub => get(0) - get(1),
                Op::Mul => get(0) * get(1),
                Op::Div => get(0) / get(1),
                Op::Relu => relu(get(0)),
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
                Op::Sigmoid => sigmoid(get(0)),
                Op::HardSigmoid { alpha, beta } => (get(0) * *alpha + *beta).clamp(0.0, 1.0),
                Op::Erf => get(0).erf(),
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
                Op::Concat => Tensor::cat((0..step.inputs.len()).map(get).collect(), 1),
                Op::MaxPool(options) => max_pool2d(get(0), options.clone()),
                Op::AvgPool(options) => avg_pool2d(get(0), options.clone()),
                Op::Identity => get(0),
                Op::Flatten => {
                    let x = get(0);
                    let [n, c, h, w] = x.dims();
                    x.reshape([n, c * h * w, 1, 1])
                }
                Op::SoftmaxC => burn::tensor::activation::softmax(get(0), 1),
            };
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
