//! TensorFlow.js layers models (a Keras model as `tfjs-converter` writes it: nsfwjs's classifier,
//! a user's Keras export) read into the graph runner (`onnx_graph`). The NHWC layers become the
//! runner's N×C×H×W steps: HWIO kernels as OIHW, a `ZeroPadding2D` merged into the convolution it
//! feeds, an inference-mode `BatchNormalization` folded into the convolution before it (or a
//! per-channel affine step), a layer's `activation` as its own step (fused again on the CPU
//! device), `Dense` as a 1×1 convolution, `Flatten` in Keras's H·W·C order. A layer class or a
//! setting the runner lacks is refused at load time naming the class and the layer.

use std::collections::HashMap;

use burn::prelude::{Device, Tensor, TensorData};
use burn::tensor::ops::{AvgPoolOptions, ConvOptions, MaxPoolOptions};

use super::GraphError;
use super::onnx_graph::{OnnxGraph, Op, Step};
use super::tfjs::{TfjsModel, Weight, kernel};
pub use gpubackend_formats::tfjs::{Layer, Layers};

/// A convolution's padding as `(top, bottom), (left, right)`.
type Pads = [(usize, usize); 2];

/// What the layers built so far left to the next ones.
struct Builder<'m> {
    model: &'m TfjsModel,
    device: Device,
    steps: Vec<Step>,
    /// Layer name → the value it stands for (a `Dropout`'s input, an activation's output).
    alias: HashMap<String, String>,
    /// A `ZeroPadding2D` not yet merged: its input and pads.
    pads: HashMap<String, (String, Pads)>,
    /// Per value, how many layers take it (a convolution's output folds a following
    /// BatchNormalization only when nothing else reads it).
    uses: HashMap<String, usize>,
    /// Values that are 2-D (N × features, held as N×F×1×1).
    flat: std::collections::HashSet<String>,
}

fn unsupported(layer: &Layer, what: impl std::fmt::Display) -> GraphError {
    GraphError::Node(format!(
        "layer `{}` ({}): {what} is not supported by the graph runner",
        layer.name, layer.class_name
    ))
}

impl<'m> Builder<'m> {
    fn weight(&self, layer: &Layer, name: &str) -> Result<&'m Weight, GraphError> {
        let key = format!("{}/{name}", layer.name);
        self.model
            .weights
            .get(&key)
            .ok_or_else(|| GraphError::Node(format!("layer `{}`: no weight `{key}` in the manifest", layer.name)))
    }

    fn floats(&self, layer: &Layer, name: &str, len: usize) -> Result<Vec<f32>, GraphError> {
        let w = self.weight(layer, name)?;
        match w.floats() {
            Some(v) if v.len() == len => Ok(v.to_vec()),
            _ => Err(GraphError::Node(format!(
                "layer `{}`: weight `{name}` of shape {:?}, {len} floats expected",
                layer.name, w.shape
            ))),
        }
    }

    /// The value a layer's input `i` stands for.
    fn input(&self, layer: &Layer, i: usize) -> Result<String, GraphError> {
        let name =
            layer.inbound.get(i).ok_or_else(|| GraphError::Node(format!("layer `{}`: no input {i}", layer.name)))?;
        if self.pads.contains_key(name) {
            return Err(unsupported(layer, format!("its input from ZeroPadding2D `{name}` (only a convolution)")));
        }
        Ok(self.resolve(name))
    }

    fn resolve(&self, name: &str) -> String {
        let mut name = name.to_string();
        while let Some(to) = self.alias.get(&name) {
            name = to.clone();
        }
        name
    }

    fn push(&mut self, op: Op, inputs: Vec<String>, output: String) {
        self.steps.push(Step { op, inputs, output });
    }

    /// A layer's `activation` after the step that computed `pre`; the layer's value is `output`.
    fn activation(&mut self, layer: &Layer, pre: String, output: &str) -> Result<(), GraphError> {
        let op = match layer.str("activation").unwrap_or("linear") {
            "linear" => {
                self.alias.insert(output.to_string(), pre);
                return Ok(());
            }
            other => activation_op(layer, other)?,
        };
        if self.flat.contains(&pre) {
            self.flat.insert(output.to_string());
        }
        self.push(op, vec![pre], output.to_string());
        Ok(())
    }

    /// A `Conv2D` or `DepthwiseConv2D`.
    fn conv(&mut self, layer: &Layer, depthwise: bool) -> Result<(), GraphError> {
        channels_last(layer)?;
        let source = layer.inbound.first().ok_or_else(|| unsupported(layer, "no input"))?;
        // A ZeroPadding2D before a VALID convolution is its padding.
        let (input, extra) = match self.pads.get(source) {
            Some((input, pads)) => (input.clone(), Some(*pads)),
            None => (self.input(layer, 0)?, None),
        };
        let w = self.weight(layer, if depthwise { "depthwise_kernel" } else { "kernel" })?;
        let [kh, kw, cin, cout] = <[usize; 4]>::try_from(w.shape.as_slice())
            .map_err(|_| GraphError::Node(format!("layer `{}`: kernel of shape {:?}", layer.name, w.shape)))?;
        let stride = layer.pair("strides").unwrap_or([1, 1]);
        let dilation = layer.pair("dilation_rate").unwrap_or([1, 1]);
        let groups = if depthwise { cin } else { layer.get("groups").and_then(|g| g.as_u64()).unwrap_or(1) as usize };
        let weight = kernel(w, depthwise, &self.device)?;
        let out_channels = if depthwise { cin * cout } else { cout };
        let bias = if layer.bool("use_bias").unwrap_or(true) {
            let b = self.floats(layer, "bias", out_channels)?;
            Some(Tensor::<1>::from_data(TensorData::new(b, [out_channels]), &self.device))
        } else {
            None
        };
        let padding = match (layer.str("padding").unwrap_or("valid"), extra) {
            ("valid", pads) => pads.unwrap_or([(0, 0), (0, 0)]),
            ("same", None) if stride == [1, 1] => {
                // TensorFlow's SAME at stride 1: the odd pixel after.
                let split = |k: usize, d: usize| ((d * (k - 1)) / 2, d * (k - 1) - (d * (k - 1)) / 2);
                [split(kh, dilation[0]), split(kw, dilation[1])]
            }
            ("same", None) if dilation == [1, 1] && stride[0] == stride[1] => {
                // Depends on the input's size: padded when it runs.
                let pre = format!("{}/conv", layer.name);
                let op = Op::TfConv { weight, bias, stride: stride[0], groups, same: true };
                self.push(op, vec![input], pre.clone());
                return self.activation(layer, pre, &layer.name);
            }
            (padding, _) => {
                return Err(unsupported(
                    layer,
                    format!(
                        "padding {padding:?} with strides {stride:?}, dilation {dilation:?}, after ZeroPadding2D: {}",
                        extra.is_some()
                    ),
                ));
            }
        };
        let options = ConvOptions::new_with_padding(stride, padding, dilation, groups);
        let pre = format!("{}/conv", layer.name);
        self.push(Op::Conv { weight, bias, options }, vec![input], pre.clone());
        self.activation(layer, pre, &layer.name)
    }

    /// An inference-mode BatchNormalization: folded into the convolution that computed its input
    /// when nothing else reads that value, else a per-channel affine step.
    fn batch_norm(&mut self, layer: &Layer) -> Result<(), GraphError> {
        if !matches!(layer.get("axis").and_then(|a| a.as_i64().or(a.get(0)?.as_i64())), None | Some(-1 | 3)) {
            return Err(unsupported(layer, format!("axis {:?} (only the channels, -1)", layer.get("axis"))));
        }
        let input = self.input(layer, 0)?;
        let c = self.weight(layer, "moving_mean")?.shape.iter().product::<usize>();
        let mean = self.floats(layer, "moving_mean", c)?;
        let var = self.floats(layer, "moving_variance", c)?;
        let gamma = if layer.bool("scale").unwrap_or(true) { self.floats(layer, "gamma", c)? } else { vec![1.0; c] };
        let beta = if layer.bool("center").unwrap_or(true) { self.floats(layer, "beta", c)? } else { vec![0.0; c] };
        let eps = layer.f64("epsilon").unwrap_or(1e-3);
        // In f64, as one scale and shift per channel.
        let scale: Vec<f64> = (0..c).map(|i| f64::from(gamma[i]) / (f64::from(var[i]) + eps).sqrt()).collect();
        let shift: Vec<f64> = (0..c).map(|i| f64::from(beta[i]) - f64::from(mean[i]) * scale[i]).collect();
        let source = layer.inbound.first().map(|n| self.uses.get(n).copied().unwrap_or(0));
        let last = self.steps.last_mut().filter(|s| s.output == input && source == Some(1));
        if let Some(Step { op: Op::Conv { weight, bias, .. }, .. }) = last {
            let [o, i, kh, kw] = weight.dims();
            if o == c {
                let w: Vec<f32> = weight.clone().into_data().iter::<f32>().collect();
                let b: Vec<f32> = match bias {
                    Some(b) => b.clone().into_data().iter::<f32>().collect(),
                    None => vec![0.0; c],
                };
                let per = i * kh * kw;
                let w: Vec<f32> = w.iter().enumerate().map(|(k, &v)| (f64::from(v) * scale[k / per]) as f32).collect();
                let b: Vec<f32> = (0..c).map(|k| (f64::from(b[k]) * scale[k] + shift[k]) as f32).collect();
                *weight = Tensor::from_data(TensorData::new(w, [o, i, kh, kw]), &self.device);
                *bias = Some(Tensor::from_data(TensorData::new(b, [c]), &self.device));
                self.alias.insert(layer.name.clone(), input);
                return Ok(());
            }
        }
        let t = |v: &[f64]| {
            Tensor::<4>::from_data(
                TensorData::new(v.iter().map(|&x| x as f32).collect::<Vec<_>>(), [1, c, 1, 1]),
                &self.device,
            )
        };
        let op = Op::Affine { scale: t(&scale), shift: t(&shift) };
        if self.flat.contains(&input) {
            self.flat.insert(layer.name.clone());
        }
        self.push(op, vec![input], layer.name.clone());
        Ok(())
    }

    /// `Dense`: a 1×1 convolution over the features (or, on a 4-D value, over its channels, as
    /// Keras applies it to the last axis).
    fn dense(&mut self, layer: &Layer) -> Result<(), GraphError> {
        let input = self.input(layer, 0)?;
        let w = self.weight(layer, "kernel")?;
        let [f, units] = <[usize; 2]>::try_from(w.shape.as_slice())
            .map_err(|_| GraphError::Node(format!("layer `{}`: kernel of shape {:?}", layer.name, w.shape)))?;
        let v = w.floats().ok_or_else(|| unsupported(layer, "a kernel of ints"))?;
        let mut t = vec![0f32; f * units];
        for (i, row) in v.chunks_exact(units).enumerate() {
            for (k, &x) in row.iter().enumerate() {
                t[k * f + i] = x;
            }
        }
        let bias = if layer.bool("use_bias").unwrap_or(true) {
            let b = self.floats(layer, "bias", units)?;
            Some(Tensor::<1>::from_data(TensorData::new(b, [units]), &self.device))
        } else {
            None
        };
        let weight = Tensor::from_data(TensorData::new(t, [units, f, 1, 1]), &self.device);
        let pre = format!("{}/dense", layer.name);
        if self.flat.contains(&input) {
            self.flat.insert(pre.clone());
        }
        let options = ConvOptions::new([1, 1], [0, 0], [1, 1], 1);
        self.push(Op::Conv { weight, bias, options }, vec![input], pre.clone());
        self.activation(layer, pre, &layer.name)
    }

    fn pool(&mut self, layer: &Layer, max: bool) -> Result<(), GraphError> {
        channels_last(layer)?;
        let input = self.input(layer, 0)?;
        let size = layer.pair("pool_size").unwrap_or([2, 2]);
        let stride = layer.pair("strides").unwrap_or(size);
        if layer.str("padding").unwrap_or("valid") != "valid" {
            return Err(unsupported(layer, format!("padding {:?}", layer.str("padding"))));
        }
        let op = if max {
            Op::MaxPool(MaxPoolOptions::new(size).with_stride(stride))
        } else {
            let mut options = AvgPoolOptions::new(size);
            options.stride = stride;
            Op::AvgPool(options)
        };
        self.push(op, vec![input], layer.name.clone());
        Ok(())
    }

    fn layer(&mut self, layer: &Layer) -> Result<(), GraphError> {
        let output = layer.name.clone();
        match layer.class_name.as_str() {
            "InputLayer" => {}
            "ZeroPadding2D" => {
                channels_last(layer)?;
                let p = layer.get("padding").ok_or_else(|| unsupported(layer, "no padding"))?;
                let n = |v: &serde_json::Value| v.as_u64().map(|x| x as usize);
                let pads = match p {
                    serde_json::Value::Number(_) => n(p).map(|x| [(x, x), (x, x)]),
                    serde_json::Value::Array(a) if a.len() == 2 && a.iter().all(|v| v.is_number()) => Some([
                        (n(&a[0]).unwrap_or(0), n(&a[0]).unwrap_or(0)),
                        (n(&a[1]).unwrap_or(0), n(&a[1]).unwrap_or(0)),
                    ]),
                    serde_json::Value::Array(a) if a.len() == 2 => {
                        (|| Some([(n(a[0].get(0)?)?, n(a[0].get(1)?)?), (n(a[1].get(0)?)?, n(a[1].get(1)?)?)]))()
                    }
                    _ => None,
                };
                let pads = pads.ok_or_else(|| unsupported(layer, format!("padding {p}")))?;
                let input = self.input(layer, 0)?;
                self.pads.insert(output, (input, pads));
            }
            "Conv2D" => self.conv(layer, false)?,
            "DepthwiseConv2D" => self.conv(layer, true)?,
            "BatchNormalization" => self.batch_norm(layer)?,
            "Dense" => self.dense(layer)?,
            "ReLU" => {
                let input = self.input(layer, 0)?;
                if layer.f64("threshold").unwrap_or(0.0) != 0.0 {
                    return Err(unsupported(layer, "a threshold"));
                }
                let slope = layer.f64("negative_slope").unwrap_or(0.0);
                let op = match (layer.f64("max_value"), slope) {
                    (None, 0.0) => Op::Relu,
                    (None, s) => Op::LeakyRelu(s),
                    (Some(m), 0.0) => Op::Clip(0.0, m as f32),
                    (Some(_), _) => return Err(unsupported(layer, "max_value with a negative slope")),
                };
                self.carry_flat(&input, &output);
                self.push(op, vec![input], output);
            }
            "LeakyReLU" => {
                let input = self.input(layer, 0)?;
                let slope = layer.f64("alpha").or(layer.f64("negative_slope")).unwrap_or(0.3);
                self.carry_flat(&input, &output);
                self.push(Op::LeakyRelu(slope), vec![input], output);
            }
            "Activation" => {
                let input = self.input(layer, 0)?;
                self.activation(layer, input, &output)?;
            }
            "Softmax" => {
                let input = self.input(layer, 0)?;
                if !matches!(layer.get("axis").and_then(|a| a.as_i64()), None | Some(-1)) {
                    return Err(unsupported(layer, "an axis other than the last"));
                }
                self.carry_flat(&input, &output);
                self.push(Op::SoftmaxC, vec![input], output);
            }
            "Add" | "Multiply" | "Subtract" => {
                let op = || match layer.class_name.as_str() {
                    "Add" => Op::Add,
                    "Multiply" => Op::Mul,
                    _ => Op::Sub,
                };
                let inputs: Vec<String> =
                    (0..layer.inbound.len()).map(|i| self.input(layer, i)).collect::<Result<_, _>>()?;
                if inputs.len() < 2 || (layer.class_name == "Subtract" && inputs.len() != 2) {
                    return Err(unsupported(layer, format!("{} inputs", inputs.len())));
                }
                let flat = self.flat.contains(&inputs[0]);
                let mut acc = inputs[0].clone();
                for (k, next) in inputs.iter().enumerate().skip(1) {
                    let out = if k + 1 == inputs.len() { output.clone() } else { format!("{output}/{k}") };
                    self.push(op(), vec![acc, next.clone()], out.clone());
                    acc = out;
                }
                if flat {
                    self.flat.insert(output);
                }
            }
            "Concatenate" => {
                if !matches!(layer.get("axis").and_then(|a| a.as_i64()), None | Some(-1 | 3)) {
                    return Err(unsupported(layer, "an axis other than the channels"));
                }
                let inputs: Vec<String> =
                    (0..layer.inbound.len()).map(|i| self.input(layer, i)).collect::<Result<_, _>>()?;
                self.push(Op::Concat, inputs, output);
            }
            "AveragePooling2D" => self.pool(layer, false)?,
            "MaxPooling2D" => self.pool(layer, true)?,
            "GlobalAveragePooling2D" => {
                channels_last(layer)?;
                let input = self.input(layer, 0)?;
                if layer.bool("keepdims").unwrap_or(false) {
                    self.push(Op::MeanHw, vec![input], output);
                } else {
                    let mean = format!("{output}/mean");
                    self.push(Op::MeanHw, vec![input], mean.clone());
                    self.push(Op::Flatten, vec![mean], output.clone());
                    self.flat.insert(output);
                }
            }
            "Flatten" => {
                channels_last(layer)?;
                let input = self.input(layer, 0)?;
                self.push(Op::FlattenHwc, vec![input], output.clone());
                self.flat.insert(output);
            }
            // Inference: the identity.
            "Dropout" | "SpatialDropout2D" | "GaussianNoise" | "GaussianDropout" | "AlphaDropout" => {
                let input = self.input(layer, 0)?;
                self.alias.insert(output, input);
            }
            other => return Err(GraphError::UnsupportedOp { op: other.to_string(), node: layer.name.clone() }),
        }
        Ok(())
    }

    fn carry_flat(&mut self, input: &str, output: &str) {
        if self.flat.contains(input) {
            self.flat.insert(output.to_string());
        }
    }
}

/// A layer's `activation` as a step.
fn activation_op(layer: &Layer, name: &str) -> Result<Op, GraphError> {
    Ok(match name {
        "relu" => Op::Relu,
        "relu6" => Op::Clip(0.0, 6.0),
        "sigmoid" => Op::Sigmoid,
        // Keras 2's piecewise-linear one (Keras 3 changed it to ReLU6(x + 3) / 6).
        "hard_sigmoid" => Op::HardSigmoid { alpha: 0.2, beta: 0.5 },
        "softmax" => Op::SoftmaxC,
        other => return Err(unsupported(layer, format!("activation {other:?}"))),
    })
}

fn channels_last(layer: &Layer) -> Result<(), GraphError> {
    match layer.str("data_format") {
        None | Some("channels_last") => Ok(()),
        Some(other) => Err(unsupported(layer, format!("data_format {other:?}"))),
    }
}

impl OnnxGraph {
    /// A TF.js layers model (one input, N×H×W×C in the model; here N×C×H×W) computing its output
    /// layers (side by side along C, in the model's order).
    pub fn from_layers(model: &TfjsModel, layers: &Layers, device: &Device) -> Result<Self, GraphError> {
        let [input] = layers.inputs.as_slice() else {
            return Err(GraphError::Node(format!(
                "a layers model with {} inputs (one is supported)",
                layers.inputs.len()
            )));
        };
        let mut uses: HashMap<String, usize> = HashMap::new();
        for l in &layers.layers {
            for i in &l.inbound {
                *uses.entry(i.clone()).or_default() += 1;
            }
        }
        for o in &layers.outputs {
            *uses.entry(o.clone()).or_default() += 1;
        }
        let mut b = Builder {
            model,
            device: device.clone(),
            steps: Vec::new(),
            alias: HashMap::new(),
            pads: HashMap::new(),
            uses,
            flat: Default::default(),
        };
        for layer in &layers.layers {
            b.layer(layer)?;
        }
        let mut outputs: Vec<String> = layers.outputs.iter().map(|o| b.resolve(o)).collect();
        // An output that is another layer's value under a new name (a Dropout's) or the input
        // itself gets a step of its own.
        for (k, o) in outputs.iter_mut().enumerate() {
            if !b.steps.iter().any(|s| &s.output == o) {
                let out = format!("{}/output", layers.outputs[k]);
                b.steps.push(Step { op: Op::Identity, inputs: vec![o.clone()], output: out.clone() });
                *o = out;
            }
        }
        Self::from_parts(b.steps, HashMap::new(), input.clone(), outputs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small functional model: pad → depthwise 3×3 (VALID, stride 2: 6×7 padded → 2×3) → BatchNorm (folded) →
    /// ReLU6 → 1×1 conv + bias → Add (residual of a 1×1 projection) → Flatten (H·W·C order) →
    /// Dense + softmax, with made-up weights; the runner's output against the same layers
    /// written out by hand in f64 (NHWC, as Keras defines them).
    #[test]
    fn a_layers_model_computes_what_keras_defines() {
        let (h, w, c) = (5usize, 6usize, 2usize);
        let layers = r#"[
          {"class_name": "InputLayer", "config": {"name": "x", "batch_input_shape": [null, 5, 6, 2]}, "inbound_nodes": []},
          {"class_name": "ZeroPadding2D", "config": {"name": "pad", "padding": [[0, 1], [0, 1]]}, "inbound_nodes": [[["x", 0, 0, {}]]]},
          {"class_name": "DepthwiseConv2D", "config": {"name": "dw", "kernel_size": [3, 3], "strides": [2, 2], "padding": "valid", "use_bias": false, "activation": "linear"}, "inbound_nodes": [[["pad", 0, 0, {}]]]},
          {"class_name": "BatchNormalization", "config": {"name": "bn", "epsilon": 0.001}, "inbound_nodes": [[["dw", 0, 0, {}]]]},
          {"class_name": "ReLU", "config": {"name": "r6", "max_value": 6.0}, "inbound_nodes": [[["bn", 0, 0, {}]]]},
          {"class_name": "Conv2D", "config": {"name": "pw", "filters": 3, "kernel_size": [1, 1], "strides": [1, 1], "padding": "same", "use_bias": true, "activation": "relu"}, "inbound_nodes": [[["r6", 0, 0, {}]]]},
          {"class_name": "Conv2D", "config": {"name": "proj", "filters": 3, "kernel_size": [1, 1], "strides": [1, 1], "padding": "valid", "use_bias": false, "activation": "linear"}, "inbound_nodes": [[["r6", 0, 0, {}]]]},
          {"class_name": "Add", "config": {"name": "add"}, "inbound_nodes": [[["pw", 0, 0, {}], ["proj", 0, 0, {}]]]},
          {"class_name": "Flatten", "config": {"name": "flat"}, "inbound_nodes": [[["add", 0, 0, {}]]]},
          {"class_name": "Dropout", "config": {"name": "drop", "rate": 0.5}, "inbound_nodes": [[["flat", 0, 0, {}]]]},
          {"class_name": "Dense", "config": {"name": "fc", "units": 4, "activation": "softmax"}, "inbound_nodes": [[["drop", 0, 0, {}]]]}
        ]"#;
        let (oh, ow) = (2usize, 3usize);
        let feats = oh * ow * 3;
        let val = |seed: usize, n: usize| -> Vec<f32> {
            (0..n).map(|i| (((i * 37 + seed * 11) % 17) as f32 - 8.0) / 9.0).collect()
        };
        let dwk = val(1, 3 * 3 * c);
        let (gamma, beta, mean, var) =
            (val(2, c), val(3, c), val(4, c), val(5, c).iter().map(|v| v.abs() + 0.5).collect::<Vec<_>>());
        let (pwk, pwb, projk) = (val(6, c * 3), val(7, 3), val(8, c * 3));
        let (fck, fcb) = (val(9, feats * 4), val(10, 4));
        let weights: Vec<(&str, Vec<usize>, &Vec<f32>)> = vec![
            ("dw/depthwise_kernel", vec![3, 3, c, 1], &dwk),
            ("bn/gamma", vec![c], &gamma),
            ("bn/beta", vec![c], &beta),
            ("bn/moving_mean", vec![c], &mean),
            ("bn/moving_variance", vec![c], &var),
            ("pw/kernel", vec![1, 1, c, 3], &pwk),
            ("pw/bias", vec![3], &pwb),
            ("proj/kernel", vec![1, 1, c, 3], &projk),
            ("fc/kernel", vec![feats, 4], &fck),
            ("fc/bias", vec![4], &fcb),
        ];
        let specs: Vec<String> = weights
            .iter()
            .map(|(n, s, _)| format!(r#"{{"name": "{n}", "shape": {s:?}, "dtype": "float32"}}"#))
            .collect();
        let json = format!(
            r#"{{"modelTopology": {{"keras_version": "2.2.4", "model_config": {{"class_name": "Model", "config": {{
                "name": "m", "layers": {layers}, "input_layers": [["x", 0, 0]], "output_layers": [["fc", 0, 0]]}}}}}},
              "weightsManifest": [{{"paths": ["w.bin"], "weights": [{}]}}]}}"#,
            specs.join(",")
        );
        let bin: Vec<u8> = weights.iter().flat_map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes())).collect();
        let model = TfjsModel::parse(json.as_bytes(), |_| Ok(bin.clone())).unwrap();
        let gpubackend_formats::tfjs::Topology::Layers(l) = &model.topology else { panic!("not read as layers") };
        let device = Device::flex();
        let graph = OnnxGraph::from_layers(&model, l, &device).unwrap();

        // The input, NHWC, and the same as N×C×H×W.
        let x: Vec<f32> = (0..h * w * c).map(|i| ((i * 7) % 13) as f32 / 6.0 - 1.0).collect();
        let at = |y: usize, xx: usize, ch: usize| x[(y * w + xx) * c + ch] as f64;
        let mut nchw = vec![0f32; h * w * c];
        for y in 0..h {
            for xx in 0..w {
                for ch in 0..c {
                    nchw[(ch * h + y) * w + xx] = x[(y * w + xx) * c + ch];
                }
            }
        }
        let got: Vec<f32> = graph
            .forward(Tensor::from_data(TensorData::new(nchw, [1, c, h, w]), &device))
            .into_data()
            .iter::<f32>()
            .collect();

        // By hand: padded (bottom, right) 6×7, depthwise 3×3 stride 2 → 2×3.
        let mut r6 = vec![0f64; oh * ow * c];
        for y in 0..oh {
            for xx in 0..ow {
                for ch in 0..c {
                    let mut s = 0.0;
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let (iy, ix) = (2 * y + ky, 2 * xx + kx);
                            if iy < h && ix < w {
                                s += at(iy, ix, ch) * dwk[(ky * 3 + kx) * c + ch] as f64;
                            }
                        }
                    }
                    let bn =
                        (s - mean[ch] as f64) / (var[ch] as f64 + 0.001).sqrt() * gamma[ch] as f64 + beta[ch] as f64;
                    r6[(y * ow + xx) * c + ch] = bn.clamp(0.0, 6.0);
                }
            }
        }
        let mut add = vec![0f64; feats];
        for p in 0..oh * ow {
            for o in 0..3 {
                let (mut a, mut b) = (pwb[o] as f64, 0.0);
                for ch in 0..c {
                    a += r6[p * c + ch] * pwk[ch * 3 + o] as f64;
                    b += r6[p * c + ch] * projk[ch * 3 + o] as f64;
                }
                add[p * 3 + o] = a.max(0.0) + b;
            }
        }
        let logits: Vec<f64> =
            (0..4).map(|k| fcb[k] as f64 + (0..feats).map(|i| add[i] * fck[i * 4 + k] as f64).sum::<f64>()).collect();
        let m = logits.iter().cloned().fold(f64::MIN, f64::max);
        let z: f64 = logits.iter().map(|v| (v - m).exp()).sum();
        let want: Vec<f64> = logits.iter().map(|v| (v - m).exp() / z).collect();
        assert_eq!(got.len(), 4);
        for (g, w) in got.iter().zip(&want) {
            assert!((*g as f64 - w).abs() < 1e-5, "got {got:?}, want {want:?}");
        }
    }

    #[test]
    fn a_layer_the_runner_lacks_is_refused_naming_it() {
        let json = br#"{"modelTopology": {"class_name": "Sequential", "config": {"name": "s", "layers": [
            {"class_name": "Conv2D", "config": {"name": "c", "filters": 1, "kernel_size": [1, 1], "use_bias": false, "batch_input_shape": [null, 4, 4, 1]}},
            {"class_name": "LSTM", "config": {"name": "rnn"}}]}},
            "weightsManifest": [{"paths": ["w"], "weights": [{"name": "c/kernel", "shape": [1, 1, 1, 1], "dtype": "float32"}]}]}"#;
        let model = TfjsModel::parse(json, |_| Ok(1f32.to_le_bytes().to_vec())).unwrap();
        let gpubackend_formats::tfjs::Topology::Layers(l) = &model.topology else { panic!("not read as layers") };
        assert_eq!(l.inputs.len(), 1);
        let err = OnnxGraph::from_layers(&model, l, &Device::flex()).unwrap_err();
        assert_eq!(err, GraphError::UnsupportedOp { op: "LSTM".into(), node: "rnn".into() });
    }
}
