//! ncnn models (a `.param` text graph + a `.bin` of weights, Tencent ncnn's format) → the graph
//! runner ([`OnnxGraph`]). The layers Real-ESRGAN's ncnn exports use, and a few neighbours:
//! `Input`, `Split`, `Convolution` (fused activation none / ReLU / leaky), `PReLU`, `ReLU`,
//! `Sigmoid`, `Interp` (nearest, integer scales), `PixelShuffle`, `BinaryOp` (add/sub/mul/div, two
//! blobs or a scalar), `Eltwise` (sum with coefficients, product), `Concat` (channels). Any other
//! layer, parameter value or weight encoding is refused at load time with its name.
//!
//! `.param`: the magic `7767517`, `layer_count blob_count`, then per layer `Type name bottoms tops
//! <bottom names> <top names> k=v …`, arrays as `-233NN=len,v0,…` (key NN). `.bin`: per layer in
//! order, a convolution's weights (a 4-byte tag: `0x01306B47` float16, 0 float32; then the values,
//! padded to 4 bytes) and its biases (float32, no tag); PReLU's slopes (float32, no tag).

use std::collections::HashMap;
use std::path::Path;

use burn::prelude::{Device, Tensor, TensorData};
use burn::tensor::ops::ConvOptions;

use super::GraphError;
use super::LoadError;
use super::onnx_graph::{OnnxGraph, Op, Step};
pub use gpubackend_formats::ncnn::{Layer, parse_param};

const TAG_F16: u32 = 0x0130_6B47;
const TAG_F32: u32 = 0;
/// ncnn's marker of a "raw float32" blob (as 0).
const TAG_F32_RAW: u32 = 0x0002_C056;

/// Reads the `.bin` in layer order.
struct Weights<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Weights<'_> {
    fn take(&mut self, n: usize, what: &str) -> Result<&[u8], GraphError> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.bytes.len()).ok_or_else(|| {
            format!("{what}: needs {n} bytes at offset {}, the file has {}", self.at, self.bytes.len())
        })?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    /// `n` float32 values without a tag (biases, slopes).
    fn f32s(&mut self, n: usize, what: &str) -> Result<Vec<f32>, GraphError> {
        let raw = self.take(n.checked_mul(4).ok_or("size overflow")?, what)?;
        Ok(raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }

    /// `n` weights after their tag.
    fn tagged(&mut self, n: usize, what: &str) -> Result<Vec<f32>, GraphError> {
        let t = self.take(4, what)?;
        match u32::from_le_bytes([t[0], t[1], t[2], t[3]]) {
            TAG_F16 => {
                let raw = self.take(n.checked_mul(2).ok_or("size overflow")?, what)?;
                let out = raw.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect();
                // Padded to 4 bytes.
                self.take((n * 2).next_multiple_of(4) - n * 2, what)?;
                Ok(out)
            }
            TAG_F32 | TAG_F32_RAW => self.f32s(n, what),
            other => Err(GraphError::Node(format!(
                "{what}: weight encoding tag {other:#010x} is not supported (float16 or float32 only)"
            ))),
        }
    }
}

/// Builds the graph of `layers` with the weights of `bin`; every byte of `bin` must be used.
pub fn graph(layers: &[Layer], bin: &[u8], device: &Device) -> Result<OnnxGraph, GraphError> {
    let mut w = Weights { bytes: bin, at: 0 };
    let mut steps: Vec<Step> = Vec::new();
    let mut constants: HashMap<String, Tensor<4>> = HashMap::new();
    // Split's tops are its bottom (no copy).
    let mut alias: HashMap<String, String> = HashMap::new();
    let mut input = None;
    let resolve = |alias: &HashMap<String, String>, name: &str| alias.get(name).cloned().unwrap_or(name.to_string());
    let scalar = |v: f32| Tensor::<4>::from_data(TensorData::new(vec![v], [1, 1, 1, 1]), device);
    for l in layers {
        let bottoms: Vec<String> = l.bottoms.iter().map(|b| resolve(&alias, b)).collect();
        let top = || l.tops.first().cloned().ok_or_else(|| format!("{} `{}`: no top", l.kind, l.name));
        let one_in = || match bottoms.as_slice() {
            [b] => Ok(b.clone()),
            other => Err(GraphError::Node(format!("{} `{}`: {} bottoms, one expected", l.kind, l.name, other.len()))),
        };
        let what = format!("{} `{}`", l.kind, l.name);
        match l.kind.as_str() {
            "Input" => {
                if input.is_some() {
                    return Err(GraphError::Node(format!("{what}: a second input")));
                }
                input = Some(top()?);
            }
            "Split" => {
                let b = one_in()?;
                for t in &l.tops {
                    alias.insert(t.clone(), b.clone());
                }
            }
            "Convolution" => {
                let out = l.usize(0, 0)?;
                let k = l.usize(1, 0)?;
                let kh = l.usize(11, k)?;
                let dilation = l.usize(2, 1)?;
                let stride = l.usize(3, 1)?;
                let pad = l.int(4, 0)?;
                let pads = [l.int(14, pad)?, l.int(15, pad)?, l.int(16, pad)?];
                if pad < 0 || pads.iter().any(|p| *p != pad) || l.int(12, dilation as i64)? != dilation as i64 {
                    return Err(GraphError::Node(format!(
                        "{what}: only equal, explicit padding and dilation are supported"
                    )));
                }
                if l.int(13, stride as i64)? != stride as i64 || l.float(18, 0.0) != 0.0 || l.int(8, 0)? != 0 {
                    return Err(GraphError::Node(format!("{what}: unequal strides, a pad value or int8 weights")));
                }
                let size = l.usize(6, 0)?;
                if out == 0 || k == 0 || size % (out * k * kh) != 0 {
                    return Err(GraphError::Node(format!("{what}: {size} weights for {out} outputs of {kh}×{k}")));
                }
                let inp = size / (out * k * kh);
                let weight = w.tagged(size, &what)?;
                let bias = match l.int(5, 0)? {
                    0 => None,
                    _ => Some(Tensor::<1>::from_data(TensorData::new(w.f32s(out, &what)?, [out]), device)),
                };
                let weight = Tensor::<4>::from_data(TensorData::new(weight, [out, inp, kh, k]), device);
                let pad = pad as usize;
                let options = ConvOptions::new([stride, stride], [pad, pad], [dilation, dilation], 1);
                let activation = match l.int(9, 0)? {
                    0 => None,
                    1 => Some(Op::Relu),
                    2 => Some(Op::LeakyRelu(l.array(10).and_then(|a| a.first().copied()).unwrap_or(0.0))),
                    4 => Some(Op::Sigmoid),
                    other => {
                        return Err(GraphError::Node(format!("{what}: fused activation {other} is not supported")));
                    }
                };
                let op = Op::Conv { weight, bias, options };
                match activation {
                    None => steps.push(Step { op, inputs: vec![one_in()?], output: top()? }),
                    Some(act) => {
                        let conv_out = format!("{}#conv", top()?);
                        steps.push(Step { op, inputs: vec![one_in()?], output: conv_out.clone() });
                        steps.push(Step { op: act, inputs: vec![conv_out], output: top()? });
                    }
                }
            }
            "PReLU" => {
                let n = l.usize(0, 0)?;
                let slope = Tensor::<1>::from_data(TensorData::new(w.f32s(n, &what)?, [n]), device);
                steps.push(Step { op: Op::PRelu(slope), inputs: vec![one_in()?], output: top()? });
            }
            "ReLU" => {
                let op = match l.float(0, 0.0) {
                    0.0 => Op::Relu,
                    slope => Op::LeakyRelu(slope),
                };
                steps.push(Step { op, inputs: vec![one_in()?], output: top()? });
            }
            "Sigmoid" => steps.push(Step { op: Op::Sigmoid, inputs: vec![one_in()?], output: top()? }),
            "Interp" => {
                let (hs, ws) = (l.float(1, 1.0), l.float(2, 1.0));
                let integral = |s: f64| s >= 1.0 && s.fract() == 0.0;
                if l.int(0, 0)? != 1 || !integral(hs) || !integral(ws) || l.int(3, 0)? != 0 || l.int(4, 0)? != 0 {
                    return Err(GraphError::Node(format!(
                        "{what}: only nearest resizing by integer scales is supported"
                    )));
                }
                let op = Op::Upsample([hs as usize, ws as usize]);
                steps.push(Step { op, inputs: vec![one_in()?], output: top()? });
            }
            "PixelShuffle" => {
                if l.int(1, 0)? != 0 {
                    return Err(GraphError::Node(format!(
                        "{what}: only PyTorch's channel order (mode 0) is supported"
                    )));
                }
                let op = Op::PixelShuffle(l.usize(0, 1)?);
                steps.push(Step { op, inputs: vec![one_in()?], output: top()? });
            }
            "BinaryOp" => {
                let op = match l.int(0, 0)? {
                    0 => Op::Add,
                    1 => Op::Sub,
                    2 => Op::Mul,
                    3 => Op::Div,
                    other => return Err(GraphError::Node(format!("{what}: op_type {other} is not supported"))),
                };
                let inputs = match (l.int(1, 0)?, bottoms.as_slice()) {
                    (0, [a, b]) => vec![a.clone(), b.clone()],
                    (1, [a]) => {
                        let name = format!("{}#b", l.name);
                        constants.insert(name.clone(), scalar(l.float(2, 0.0) as f32));
                        vec![a.clone(), name]
                    }
                    _ => return Err(GraphError::Node(format!("{what}: {} bottoms", bottoms.len()))),
                };
                steps.push(Step { op, inputs, output: top()? });
            }
            "Eltwise" => {
                let coeffs = l.array(1).unwrap_or(&[]);
                if bottoms.len() < 2 || !(coeffs.is_empty() || coeffs.len() == bottoms.len()) {
                    return Err(GraphError::Node(format!(
                        "{what}: {} bottoms, {} coefficients",
                        bottoms.len(),
                        coeffs.len()
                    )));
                }
                // Product (without coefficients) or sum.
                let sum = match l.int(0, 1)? {
                    0 if coeffs.is_empty() => false,
                    1 => true,
                    other => return Err(GraphError::Node(format!("{what}: operation {other} is not supported"))),
                };
                // Each bottom times its coefficient (where not 1), then summed (or multiplied).
                let mut terms = Vec::new();
                for (i, b) in bottoms.iter().enumerate() {
                    match coeffs.get(i).copied().filter(|c| *c != 1.0) {
                        None => terms.push(b.clone()),
                        Some(c) => {
                            let (cname, out) = (format!("{}#c{i}", l.name), format!("{}#t{i}", l.name));
                            constants.insert(cname.clone(), scalar(c as f32));
                            steps.push(Step { op: Op::Mul, inputs: vec![b.clone(), cname], output: out.clone() });
                            terms.push(out);
                        }
                    }
                }
                let last = terms.len() - 1;
                let mut acc = terms[0].clone();
                for (i, t) in terms.iter().enumerate().skip(1) {
                    let out = if i == last { top()? } else { format!("{}#s{i}", l.name) };
                    let op = if sum { Op::Add } else { Op::Mul };
                    steps.push(Step { op, inputs: vec![acc, t.clone()], output: out.clone() });
                    acc = out;
                }
            }
            "Concat" => {
                if l.int(0, 0)? != 0 {
                    return Err(GraphError::Node(format!(
                        "{what}: only concatenation along channels (axis 0) is supported"
                    )));
                }
                steps.push(Step { op: Op::Concat, inputs: bottoms.clone(), output: top()? });
            }
            other => return Err(GraphError::UnsupportedOp { op: other.to_string(), node: l.name.clone() }),
        }
    }
    if w.at != bin.len() {
        return Err(GraphError::Node(format!(
            "{} bytes of weights left after the last layer (param and bin do not match)",
            bin.len() - w.at
        )));
    }
    let output = steps.last().map(|s| s.output.clone()).ok_or("a graph without layers")?;
    OnnxGraph::from_parts(steps, constants, input.ok_or("no Input layer")?, vec![output])
}

/// Loads the ncnn model `param` + its `.bin` beside it (same stem) onto `device`.
pub fn load_graph(param: &Path, device: &Device) -> Result<OnnxGraph, LoadError> {
    let bin = param.with_extension("bin");
    for p in [param, bin.as_path()] {
        super::check_weights(p)?;
    }
    let bad = |message: String| LoadError::Weights { path: param.to_path_buf(), message };
    let text = std::fs::read_to_string(param).map_err(|e| bad(e.to_string()))?;
    let bytes = std::fs::read(&bin).map_err(|e| bad(format!("{}: {e}", bin.display())))?;
    let layers = parse_param(&text).map_err(bad)?;
    graph(&layers, &bytes, device).map_err(|source| LoadError::Graph { path: param.to_path_buf(), source })
}

/// A super-resolution network (`weights`: its ncnn `.param`, the `.bin` beside it): `tile`²
/// windows in, ×4 out.
pub fn superres_spec(weights: std::path::PathBuf, tile: usize) -> super::ModelSpec {
    super::ModelSpec::new("superres", weights, [tile, tile], |w, d| {
        Ok(Box::new(super::onnx_graph::GraphNet { graph: load_graph(w, d)?, device: d.clone() }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16s(v: &[f32]) -> Vec<u8> {
        let mut out = TAG_F16.to_le_bytes().to_vec();
        for x in v {
            out.extend(half::f16::from_f32(*x).to_le_bytes());
        }
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
        out
    }

    fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    const PARAM: &str = "7767517\r\n6 7\r\nInput in 0 1 data\r\nSplit sp 1 2 data a b\r\n\
        Convolution c 1 1 a c 0=2 1=1 5=1 6=4 9=2 -23310=1,0.1\r\n\
        PReLU p 1 1 b p 0=2\r\nEltwise e 2 1 c p e 0=1 -23301=2,0.5,1.0\r\n\
        PixelShuffle ps 1 1 e output 0=1\r\n";

    #[test]
    fn params_parse_with_arrays_and_crlf() {
        let layers = parse_param(PARAM).unwrap();
        assert_eq!(layers.len(), 6);
        let c = &layers[2];
        assert_eq!(
            (c.kind.as_str(), c.bottoms.as_slice(), c.tops.as_slice()),
            ("Convolution", &["a".to_string()][..], &["c".to_string()][..])
        );
        assert_eq!((c.int(0, 0).unwrap(), c.int(6, 0).unwrap(), c.int(2, 1).unwrap()), (2, 4, 1));
        assert_eq!(c.array(10), Some(&[0.1][..]));
        assert_eq!(layers[4].array(1), Some(&[0.5, 1.0][..]));
        assert!(parse_param("7767518\n1 1\n").unwrap_err().to_string().contains("not an ncnn param"));
        assert!(parse_param("7767517\n2 1\nInput in 0 1 data\n").unwrap_err().to_string().contains("2 layers"));
        assert!(
            parse_param("7767517\n1 1\nInput in 0 1 data -23301=3,1,2\n").unwrap_err().to_string().contains("says 3")
        );
    }

    /// 0.5·leaky(conv(x)) + prelu(x) on a 2-channel 1×2 input, against the same by hand.
    #[test]
    fn a_small_graph_runs_as_written_and_the_bin_must_match() {
        let device = Device::flex();
        let layers = parse_param(PARAM).unwrap();
        // 1×1 conv 2 → 2 (weights [[1, −2], [0.5, 1]], biases 0.5, −1), PReLU slopes 0.25 and 3.
        let (wt, bias, slope) = ([[1.0f32, -2.0], [0.5, 1.0]], [0.5f32, -1.0], [0.25f32, 3.0]);
        let mut bin = f16s(&wt.concat());
        bin.extend(f32s(&bias));
        bin.extend(f32s(&slope));
        let g = graph(&layers, &bin, &device).unwrap();
        let x = [[1.0f32, -1.0], [2.0, -3.0]]; // [channel][pixel]
        let out = g.forward(Tensor::from_data(TensorData::new(x.concat(), [1, 2, 1, 2]), &device));
        let out: Vec<f32> = out.into_data().iter::<f32>().collect();
        let want: Vec<f32> = (0..4)
            .map(|k| {
                let (c, i) = (k / 2, k % 2);
                let conv = wt[c][0] * x[0][i] + wt[c][1] * x[1][i] + bias[c];
                let leaky = if conv < 0.0 { 0.1 * conv } else { conv };
                let prelu = if x[c][i] < 0.0 { slope[c] * x[c][i] } else { x[c][i] };
                0.5 * leaky + prelu
            })
            .collect();
        for (a, b) in out.iter().zip(&want) {
            assert!((a - b).abs() < 1e-6, "{out:?} vs {want:?}");
        }
        let mut longer = bin.clone();
        longer.extend([0, 0, 0, 0]);
        assert!(graph(&layers, &longer, &device).unwrap_err().to_string().contains("4 bytes of weights left"));
        assert!(graph(&layers, &bin[..bin.len() - 4], &device).unwrap_err().to_string().contains("needs 8 bytes"));
        let mut int8 = bin.clone();
        int8[..4].copy_from_slice(&0x000D_4B38u32.to_le_bytes());
        assert!(graph(&layers, &int8, &device).unwrap_err().to_string().contains("0x000d4b38"));
        let odd = parse_param("7767517\n2 2\nInput in 0 1 data\nDeconvolution d 1 1 data out\n").unwrap();
        assert!(graph(&odd, &[], &device).unwrap_err().to_string().contains("`Deconvolution`"));
    }
}
