//! TensorFlow.js graph models (`model.json` + its `.bin` weight shards, as the `tfjs-converter`
//! writes them) read into the graph runner (`onnx_graph`): the weights by the manifest's rules
//! (float32, int32; float16 / uint8 / uint16 quantisation dequantised as TensorFlow.js does), and
//! the NHWC TensorFlow nodes turned into the runner's N×C×H×W burn ops. The op set is what the
//! COCO detector's graph uses (`centernet`); any other op before the requested outputs is refused
//! at load time with its name.

use std::collections::HashMap;
use std::path::Path;

use burn::prelude::{Device, Tensor, TensorData};

use super::GraphError;
use super::LoadError;
use super::onnx_graph::{OnnxGraph, Op, Step};
pub use gpubackend_formats::tfjs::{Node, TfjsModel, Topology, Values, Weight};

/// Reads `model.json` and the weight files its manifest names (beside it).
pub fn load_model(json: &Path) -> Result<TfjsModel, LoadError> {
    let invalid = |message: String| LoadError::Weights { path: json.to_path_buf(), message };
    if !json.exists() {
        return Err(LoadError::MissingWeights { path: json.to_path_buf() });
    }
    let text = std::fs::read(json).map_err(|e| invalid(e.to_string()))?;
    let dir = json.parent().unwrap_or(Path::new("."));
    TfjsModel::parse(&text, |file| {
        let path = dir.join(file);
        std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))
    })
    .map_err(invalid)
}

/// An HWIO convolution kernel (TensorFlow's) as OIHW; a depthwise HWC1 kernel as C×1×H×W.
pub(super) fn kernel(w: &Weight, depthwise: bool, device: &Device) -> Result<Tensor<4>, GraphError> {
    let v = w.floats().ok_or("a kernel of ints")?;
    let [kh, kw, ci, co] = <[usize; 4]>::try_from(w.shape.as_slice()).map_err(|_| format!("kernel {:?}", w.shape))?;
    let (out, inp) = if depthwise { (ci * co, 1) } else { (co, ci) };
    let mut t = vec![0f32; v.len()];
    for y in 0..kh {
        for x in 0..kw {
            for i in 0..ci {
                for o in 0..co {
                    let src = ((y * kw + x) * ci + i) * co + o;
                    let (oc, ic) = if depthwise { (i * co + o, 0) } else { (o, i) };
                    t[((oc * inp + ic) * kh + y) * kw + x] = v[src];
                }
            }
        }
    }
    Ok(Tensor::from_data(TensorData::new(t, [out, inp, kh, kw]), device))
}

/// A constant operand of an element-wise op: a scalar, or per channel (the last NHWC axis), as
/// N×C×H×W with size-1 axes.
fn operand(w: &Weight, device: &Device) -> Result<Tensor<4>, GraphError> {
    let v = w.floats().ok_or("an element-wise operand of ints")?;
    let dims = match w.shape.as_slice() {
        [] => [1, 1, 1, 1],
        [c] | [1, c] | [1, 1, c] | [1, 1, 1, c] => [1, *c, 1, 1],
        s => return Err(GraphError::Node(format!("element-wise operand of shape {s:?}"))),
    };
    Ok(Tensor::from_data(TensorData::new(v.to_vec(), dims), device))
}

impl OnnxGraph {
    /// The part of a TF.js graph model that computes `outputs` (N×H×W×C in the graph; here
    /// N×C×H×W, several outputs side by side along C in the order given).
    pub fn from_tfjs(model: &TfjsModel, outputs: &[&str], device: &Device) -> Result<Self, GraphError> {
        let by_name: HashMap<&str, &Node> = model.nodes().iter().map(|n| (n.name.as_str(), n)).collect();
        // The nodes the outputs need, in graph order.
        let mut needed = std::collections::HashSet::new();
        let mut stack: Vec<String> = outputs.iter().map(|s| s.to_string()).collect();
        while let Some(name) = stack.pop() {
            let name = name.split(':').next().unwrap_or(&name).to_string();
            if !needed.insert(name.clone()) {
                continue;
            }
            let node = by_name.get(name.as_str()).ok_or(format!("no node `{name}`"))?;
            stack.extend(node.data_inputs());
        }
        let mut steps = Vec::new();
        let mut constants = HashMap::new();
        let mut input = None;
        for node in model.nodes().iter().filter(|n| needed.contains(&n.name)) {
            let inputs = node.data_inputs();
            let weight = |i: usize| -> Result<&Weight, GraphError> {
                let name = inputs.get(i).ok_or(format!("{}: missing input {i}", node.op))?;
                model.weights.get(name).ok_or(GraphError::Node(format!("{}: input `{name}` is not a weight", node.op)))
            };
            let op = match node.op.as_str() {
                "Const" => continue,
                "Placeholder" => {
                    input = Some(node.name.clone());
                    continue;
                }
                "Conv2D" | "_FusedConv2D" | "DepthwiseConv2dNative" | "FusedDepthwiseConv2dNative" => {
                    let depthwise = node.op.contains("Depthwise");
                    let strides = node.attr_ints("strides").unwrap_or_default();
                    let dilations = node.attr_ints("dilations").unwrap_or_default();
                    if strides.len() != 4 || strides[0] != 1 || strides[3] != 1 || strides[1] != strides[2] {
                        return Err(GraphError::Node(format!("{}: strides {strides:?}", node.name)));
                    }
                    if dilations.iter().any(|d| *d != 1) {
                        return Err(GraphError::Node(format!("{}: dilations {dilations:?}", node.name)));
                    }
                    let same = match node.attr_str("padding").as_deref() {
                        Some("SAME") => true,
                        Some("VALID") => false,
                        other => return Err(GraphError::Node(format!("{}: padding {other:?}", node.name))),
                    };
                    let fused = node.attr_strs("fused_ops");
                    let (bias, relu) = match fused.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
                        [] => (None, false),
                        ["BiasAdd"] => (Some(weight(2)?), false),
                        ["BiasAdd", "Relu"] => (Some(weight(2)?), true),
                        other => return Err(GraphError::Node(format!("{}: fused ops {other:?}", node.name))),
                    };
                    let w = weight(1)?;
                    let weight = kernel(w, depthwise, device)?;
                    let bias = match bias {
                        Some(b) => {
                            let v = b.floats().ok_or("a bias of ints")?;
                            Some(Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), device))
                        }
                        None => None,
                    };
                    let groups = if depthwise { w.shape[2] } else { 1 };
                    let stride = strides[1] as usize;
                    let conv = Op::TfConv { weight, bias, stride, groups, same };
                    if relu {
                        // The fused activation as its own step on the convolution's output.
                        let inner = format!("{}/conv", node.name);
                        steps.push(Step { op: conv, inputs: vec![inputs[0].clone()], output: inner.clone() });
                        steps.push(Step { op: Op::Relu, inputs: vec![inner], output: node.name.clone() });
                        continue;
                    }
                    steps.push(Step { op: conv, inputs: vec![inputs[0].clone()], output: node.name.clone() });
                    continue;
                }
                "Add" | "AddV2" | "Mul" | "Sub" => {
                    for name in &inputs {
                        if let Some(w) = model.weights.get(name) {
                            constants.entry(name.clone()).or_insert(operand(w, device)?);
                        }
                    }
                    match node.op.as_str() {
                        "Mul" => Op::Mul,
                        "Sub" => Op::Sub,
                        _ => Op::Add,
                    }
                }
                "Relu" => Op::Relu,
                "Relu6" => Op::Clip(0.0, 6.0),
                "Sigmoid" => Op::Sigmoid,
                "Identity" => Op::Identity,
                "Mean" => match (weight(1)?.ints(), node.attr_bool("keep_dims")) {
                    (Some([1, 2]), Some(true)) => Op::MeanHw,
                    (axes, keep) => {
                        return Err(GraphError::Node(format!("{}: Mean over {axes:?} keep_dims {keep:?}", node.name)));
                    }
                },
                "ConcatV2" => {
                    let axis = weight(inputs.len() - 1)?.ints().and_then(|a| a.first().copied());
                    if !matches!(axis, Some(3 | -1)) {
                        return Err(GraphError::Node(format!("{}: concat on axis {axis:?}", node.name)));
                    }
                    steps.push(Step {
                        op: Op::Concat,
                        inputs: inputs[..inputs.len() - 1].to_vec(),
                        output: node.name.clone(),
                    });
                    continue;
                }
                "ResizeBilinear" => {
                    if node.attr_bool("align_corners") == Some(true)
                        || node.attr_bool("half_pixel_centers") == Some(true)
                    {
                        return Err(GraphError::Node(format!(
                            "{}: only align_corners and half_pixel_centers false",
                            node.name
                        )));
                    }
                    // The output size is a constant of the graph (its input size is fixed).
                    match weight(1)?.ints() {
                        Some(&[h, w]) if h > 0 && w > 0 => Op::ResizeTf([h as usize, w as usize]),
                        size => return Err(GraphError::Node(format!("{}: output size {size:?}", node.name))),
                    }
                }
                other => return Err(GraphError::UnsupportedOp { op: other.to_string(), node: node.name.clone() }),
            };
            // Element-wise ops take both operands (a weight among them is a constant above); the
            // others their first input (the rest are attributes as constants).
            let step_inputs = match op {
                Op::Add | Op::Mul | Op::Sub => inputs.clone(),
                _ => vec![inputs[0].clone()],
            };
            steps.push(Step { op, inputs: step_inputs, output: node.name.clone() });
        }
        Self::from_parts(
            steps,
            constants,
            input.ok_or("no graph input")?,
            outputs.iter().map(|s| s.to_string()).collect(),
        )
    }
}

/// Loads a TF.js model onto `device`: a graph model's `outputs` (none named: the nodes no other
/// node reads), or a layers model's output layers (`outputs` must then be empty or name them).
pub fn load_graph(json: &Path, outputs: &[&str], device: &Device) -> Result<OnnxGraph, LoadError> {
    let model = load_model(json)?;
    let graph = match &model.topology {
        Topology::Layers(layers) if outputs.is_empty() || outputs.iter().eq(layers.outputs.iter()) => {
            OnnxGraph::from_layers(&model, layers, device)
        }
        Topology::Layers(layers) => Err(GraphError::Node(format!(
            "a layers model computes its output layers {:?}, not {outputs:?}",
            layers.outputs
        ))),
        Topology::Graph(_) if !outputs.is_empty() => OnnxGraph::from_tfjs(&model, outputs, device),
        Topology::Graph(nodes) => {
            let read: std::collections::HashSet<String> = nodes
                .iter()
                .flat_map(|n| n.data_inputs())
                .map(|i| i.split(':').next().unwrap_or(&i).to_string())
                .collect();
            let ends: Vec<&str> = nodes
                .iter()
                .filter(|n| !read.contains(&n.name) && !matches!(n.op.as_str(), "Const" | "Placeholder" | "NoOp"))
                .map(|n| n.name.as_str())
                .collect();
            OnnxGraph::from_tfjs(&model, &ends, device)
        }
    };
    graph.map_err(|source| LoadError::Graph { path: json.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A manifest of four weights over two shards: float32, float16-quantised, uint8-quantised
    /// (`q · scale + min`) and int32.
    fn model(bytes_after: &[u8]) -> Result<TfjsModel, String> {
        let json = br#"{"modelTopology": {"node": [{"name": "x", "op": "Placeholder"}]},
            "weightsManifest": [{"paths": ["a.bin", "b.bin"], "weights": [
              {"name": "f", "shape": [2], "dtype": "float32"},
              {"name": "h", "shape": [2], "dtype": "float32", "quantization": {"dtype": "float16"}},
              {"name": "q", "shape": [3], "dtype": "float32", "quantization": {"dtype": "uint8", "scale": 0.5, "min": -1.0}},
              {"name": "i", "shape": [1, 2], "dtype": "int32"}]}]}"#;
        let mut a = Vec::new();
        a.extend(1.5f32.to_le_bytes());
        a.extend((-2.25f32).to_le_bytes());
        a.extend(half::f16::from_f32(0.5).to_le_bytes());
        let mut b = half::f16::from_f32(-3.0).to_le_bytes().to_vec();
        b.extend([0u8, 2, 255]);
        b.extend(7i32.to_le_bytes());
        b.extend((-1i32).to_le_bytes());
        b.extend_from_slice(bytes_after);
        TfjsModel::parse(json, |p| Ok(if p == "a.bin" { a.clone() } else { b.clone() }))
    }

    #[test]
    fn weights_are_read_and_dequantised_as_tensorflow_js_does() {
        let m = model(&[]).unwrap();
        assert_eq!(m.weights["f"].floats(), Some(&[1.5, -2.25][..]));
        assert_eq!(m.weights["h"].floats(), Some(&[0.5, -3.0][..]));
        assert_eq!(m.weights["q"].floats(), Some(&[-1.0, 0.0, 126.5][..]));
        assert_eq!((m.weights["i"].ints(), m.weights["i"].shape.as_slice()), (Some(&[7, -1][..]), &[1, 2][..]));
        assert_eq!(m.nodes()[0].op, "Placeholder");
    }

    #[test]
    fn shards_of_the_wrong_size_are_refused() {
        assert!(model(&[0]).unwrap_err().contains("the manifest uses"));
        let short = TfjsModel::parse(
            br#"{"modelTopology": {"node": []}, "weightsManifest": [{"paths": ["a"], "weights": [{"name": "w", "shape": [4], "dtype": "float32"}]}]}"#,
            |_| Ok(vec![0; 8]),
        );
        assert!(short.unwrap_err().contains("16 bytes needed"));
    }

    #[test]
    fn kernels_go_from_hwio_to_oihw() {
        let device = burn::prelude::Device::flex();
        // 1×2 kernel, 2 inputs, 3 outputs: value = 100·x + 10·i + o.
        let values: Vec<f32> =
            (0..2).flat_map(|x| (0..2).flat_map(move |i| (0..3).map(move |o| (100 * x + 10 * i + o) as f32))).collect();
        let w = Weight { shape: vec![1, 2, 2, 3], values: Values::F32(values) };
        let t: Vec<f32> = kernel(&w, false, &device).unwrap().into_data().iter::<f32>().collect();
        // [o][i][0][x]
        assert_eq!(&t[..4], &[0.0, 100.0, 10.0, 110.0]);
        assert_eq!(t[(2 * 2 + 1) * 2 + 1], 112.0);
        let d: Vec<f32> = kernel(&w, true, &device).unwrap().into_data().iter::<f32>().collect();
        // Depthwise with multiplier 3: channel i·3 + o, one input each.
        assert_eq!(&d[..2], &[0.0, 100.0]);
        assert_eq!(&d[(3 + 2) * 2..(3 + 2) * 2 + 2], &[12.0, 112.0]);
    }
}
