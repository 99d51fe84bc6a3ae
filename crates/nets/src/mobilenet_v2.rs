//! torchvision MobileNetV2 (IMAGENET1K_V1) in burn, loaded from torchvision's PyTorch state dict.
//!
//! Layout follows torchvision: stem conv 3×3/2 → 17 inverted residual blocks → 1×1 conv to 1280 →
//! global average pool → linear 1280→1000. BatchNorm ε = 1e-5, ReLU6 activations.

use std::path::Path;
use std::sync::Arc;

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::{Device, Tensor};
use burn::store::{ModuleSnapshot, PytorchStore};
use burn::tensor::activation::relu6;
use burn::tensor::module::adaptive_avg_pool2d;

use super::cpu::{self, HostConv};
use super::profile::{OpTime, conv_flops, timed};
use super::{ForwardError, LoadError};

pub const INPUT_SIZE: usize = 224;
pub const INPUT_LEN: usize = 3 * INPUT_SIZE * INPUT_SIZE;
pub const NUM_CLASSES: usize = 1000;
/// (expand ratio t, output channels c, repeats n, first stride s) — torchvision's table.
const SETTINGS: [(usize, usize, usize, usize); 7] =
    [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)];

#[derive(Module, Debug)]
struct ConvBnAct {
    conv: Conv2d,
    /// Present while loading; folded into `conv` (which then has a bias) before serving.
    bn: Option<BatchNorm>,
    /// ReLU6 after the norm; false for the linear bottleneck projection.
    relu6: bool,
    /// On the CPU device, after folding: the fused kernel (conv + bias + ReLU6 + residual).
    #[module(skip)]
    host: Option<Arc<HostConv>>,
}

impl ConvBnAct {
    fn new(channels: [usize; 2], kernel: usize, stride: usize, groups: usize, relu6: bool, device: &Device) -> Self {
        let p = (kernel - 1) / 2;
        Self {
            conv: Conv2dConfig::new(channels, [kernel, kernel])
                .with_stride([stride, stride])
                .with_groups(groups)
                .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
                .with_bias(false)
                .init(device),
            bn: Some(BatchNormConfig::new(channels[1]).with_epsilon(1e-5).init(device)),
            relu6,
            host: None,
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_add(x, None)
    }

    /// `forward`, then `residual` added.
    fn forward_add(&self, x: Tensor<4>, residual: Option<Tensor<4>>) -> Tensor<4> {
        if let Some(host) = &self.host {
            return cpu::forward(host, x, residual);
        }
        let x = self.conv.forward(x);
        let x = match &self.bn {
            Some(bn) => bn.forward(x),
            None => x,
        };
        let x = if self.relu6 { relu6(x) } else { x };
        match residual {
            Some(r) => x + r,
            None => x,
        }
    }

    /// `forward`, each op timed into `ops` under `kind` (the conv's), "batch_norm" and "relu6".
    fn forward_profiled(
        &self,
        x: Tensor<4>,
        residual: Option<Tensor<4>>,
        kind: &'static str,
        ops: &mut Vec<OpTime>,
    ) -> Tensor<4> {
        if let Some(host) = &self.host {
            let label = match (kind, residual.is_some()) {
                ("conv 3x3 stem", _) => "stem 3x3 fused",
                ("conv 3x3 depthwise", _) => "depthwise 3x3 fused",
                (_, false) => "pointwise 1x1 fused",
                (_, true) => "pointwise 1x1 fused + residual",
            };
            return timed(ops, label, |y: &Tensor<4>| conv_flops(&self.conv, y), || cpu::forward(host, x, residual));
        }
        let x = timed(ops, kind, |y: &Tensor<4>| conv_flops(&self.conv, y), || self.conv.forward(x));
        let x = match &self.bn {
            Some(bn) => timed(ops, "batch_norm", |_| 0.0, || bn.forward(x)),
            None => x,
        };
        let x = if self.relu6 { timed(ops, "relu6", |_| 0.0, || relu6(x)) } else { x };
        match residual {
            Some(r) => timed(ops, "residual add", |_| 0.0, || x + r),
            None => x,
        }
    }

    /// Folds the BatchNorm into the convolution; on the CPU device also builds the fused kernel.
    fn fold(&mut self, cpu: bool) {
        if let Some(bn) = self.bn.take() {
            super::fold::fold_batch_norm(&mut self.conv, &bn);
        }
        if cpu {
            let act = if self.relu6 { cpu::Act::Relu6 } else { cpu::Act::Identity };
            self.host = cpu::host_conv(&self.conv, act).map(Arc::new);
        }
    }
}

#[derive(Module, Debug)]
struct InvertedResidual {
    /// 1×1 expansion; absent when the expand ratio is 1 (the first block).
    expand: Option<ConvBnAct>,
    depthwise: ConvBnAct,
    project: ConvBnAct,
    /// stride 1 and equal channels: add the input back.
    residual: bool,
}

impl InvertedResidual {
    fn new(inp: usize, out: usize, stride: usize, t: usize, device: &Device) -> Self {
        let hidden = inp * t;
        Self {
            expand: (t != 1).then(|| ConvBnAct::new([inp, hidden], 1, 1, 1, true, device)),
            depthwise: ConvBnAct::new([hidden, hidden], 3, stride, hidden, true, device),
            project: ConvBnAct::new([hidden, out], 1, 1, 1, false, device),
            residual: stride == 1 && inp == out,
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let h = match &self.expand {
            Some(e) => e.forward(x.clone()),
            None => x.clone(),
        };
        let h = self.depthwise.forward(h);
        self.project.forward_add(h, self.residual.then_some(x))
    }

    fn forward_profiled(&self, x: Tensor<4>, ops: &mut Vec<OpTime>) -> Tensor<4> {
        let h = match &self.expand {
            Some(e) => e.forward_profiled(x.clone(), None, "conv 1x1 (pointwise)", ops),
            None => x.clone(),
        };
        let h = self.depthwise.forward_profiled(h, None, "conv 3x3 depthwise", ops);
        self.project.forward_profiled(h, self.residual.then_some(x), "conv 1x1 (pointwise)", ops)
    }

    fn fold(&mut self, cpu: bool) {
        if let Some(e) = &mut self.expand {
            e.fold(cpu);
        }
        self.depthwise.fold(cpu);
        self.project.fold(cpu);
    }
}

#[derive(Module, Debug)]
pub struct MobileNetV2 {
    stem: ConvBnAct,
    blocks: Vec<InvertedResidual>,
    head: ConvBnAct,
    classifier: Linear,
}

impl MobileNetV2 {
    pub fn new(device: &Device) -> Self {
        let mut blocks = Vec::new();
        let mut inp = 32;
        for (t, c, n, s) in SETTINGS {
            for i in 0..n {
                blocks.push(InvertedResidual::new(inp, c, if i == 0 { s } else { 1 }, t, device));
                inp = c;
            }
        }
        Self {
            stem: ConvBnAct::new([3, 32], 3, 2, 1, true, device),
            blocks,
            head: ConvBnAct::new([320, 1280], 1, 1, 1, true, device),
            classifier: LinearConfig::new(1280, NUM_CLASSES).init(device),
        }
    }

    /// Folds every BatchNorm into its convolution (see `models::fold`): the form the network is
    /// served in. `cpu`: also build the fused CPU kernels (`models::cpu`) the forward pass then uses.
    pub fn fold_batch_norms(&mut self, cpu: bool) {
        self.stem.fold(cpu);
        for b in &mut self.blocks {
            b.fold(cpu);
        }
        self.head.fold(cpu);
    }

    /// `x`: N×3×224×224 normalised RGB → N×1000 logits.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let mut x = self.stem.forward(x);
        for block in &self.blocks {
            x = block.forward(x);
        }
        let x = adaptive_avg_pool2d(self.head.forward(x), [1, 1]).flatten::<2>(1, 3);
        self.classifier.forward(x)
    }

    /// `forward` with every op timed into `ops` (`bench layers`). Only meaningful on a backend that
    /// runs ops eagerly (the CPU backend): on a GPU the times are of queueing, not of the work.
    pub fn forward_profiled(&self, x: Tensor<4>, ops: &mut Vec<OpTime>) -> Tensor<2> {
        let mut x = self.stem.forward_profiled(x, None, "conv 3x3 stem", ops);
        for block in &self.blocks {
            x = block.forward_profiled(x, ops);
        }
        let x = self.head.forward_profiled(x, None, "conv 1x1 (pointwise)", ops);
        let x = timed(ops, "avg pool", |_| 0.0, || adaptive_avg_pool2d(x, [1, 1]).flatten::<2>(1, 3));
        timed(
            ops,
            "linear",
            |y: &Tensor<2>| 2.0 * (y.dims()[0] * y.dims()[1] * 1280) as f64,
            || self.classifier.forward(x),
        )
    }
}

/// torchvision key → our module path. torchvision numbers `features.0` (stem), `features.1..=17`
/// (blocks) and `features.18` (head); inside a block `conv.N` shifts when there is no expansion.
fn key_remaps() -> Vec<(String, String)> {
    let mut v = vec![
        (r"^features\.0\.0\.".to_string(), "stem.conv.".to_string()),
        (r"^features\.0\.1\.".into(), "stem.bn.".into()),
        (r"^features\.18\.0\.".into(), "head.conv.".into()),
        (r"^features\.18\.1\.".into(), "head.bn.".into()),
        (r"^classifier\.1\.".into(), "classifier.".into()),
    ];
    let mut idx = 1;
    for (t, _, n, _) in SETTINGS {
        for _ in 0..n {
            let b = idx - 1;
            let parts: &[(&str, &str)] = if t == 1 {
                &[("0.0", "depthwise.conv"), ("0.1", "depthwise.bn"), ("1", "project.conv"), ("2", "project.bn")]
            } else {
                &[
                    ("0.0", "expand.conv"),
                    ("0.1", "expand.bn"),
                    ("1.0", "depthwise.conv"),
                    ("1.1", "depthwise.bn"),
                    ("2", "project.conv"),
                    ("3", "project.bn"),
                ]
            };
            for (from, to) in parts {
                v.push((
                    format!(r"^features\.{idx}\.conv\.{}\.", from.replace('.', r"\.")),
                    format!("blocks.{b}.{to}."),
                ));
            }
            idx += 1;
        }
    }
    v
}

/// MobileNetV2 with its weights on one device.
#[derive(Debug)]
pub struct Classifier {
    model: MobileNetV2,
    device: Device,
}

impl Classifier {
    /// Loads the weights and folds every BatchNorm into its convolution; on the CPU device the
    /// convolutions then run as fused kernels (`models::cpu`).
    pub fn load(weights: &Path, device: Device) -> Result<Self, LoadError> {
        let cpu = cpu::is_cpu(&device);
        Self::load_variant(weights, device, true, cpu)
    }

    /// For comparisons (`bench layers`): `fold` the BatchNorms or not, and with `fused` (CPU only)
    /// the fused kernels or burn flex's own ops.
    pub fn load_variant(weights: &Path, device: Device, fold: bool, fused: bool) -> Result<Self, LoadError> {
        let mut c = Self::load_unfolded(weights, device)?;
        if fold {
            c.model.fold_batch_norms(fused && cpu::is_cpu(&c.device));
        }
        Ok(c)
    }

    /// The network exactly as torchvision defines it (conv → BatchNorm → ReLU6), for comparison.
    pub fn load_unfolded(weights: &Path, device: Device) -> Result<Self, LoadError> {
        let mut model = MobileNetV2::new(&device);
        let mut store = PytorchStore::from_file(weights).map_indices_contiguous(false).allow_partial(false);
        for (from, to) in key_remaps() {
            store = store.with_key_remapping(&from, &to);
        }
        let result = model
            .load_from(&mut store)
            .map_err(|e| LoadError::Weights { path: weights.to_path_buf(), message: e.to_string() })?;
        // Only BatchNorm's `num_batches_tracked` counters may be left over.
        if let Some(extra) = result.unused.iter().find(|k| !k.ends_with("num_batches_tracked")) {
            return Err(LoadError::Weights {
                path: weights.to_path_buf(),
                message: format!("unexpected tensor `{extra}`"),
            });
        }
        Ok(Self { model, device })
    }

    pub fn forward(&self, inputs: &[&[f32]]) -> Result<Vec<Vec<f32>>, ForwardError> {
        let x = super::batch_tensor(inputs, INPUT_SIZE, &self.device)?;
        super::rows(self.logits(x), inputs.len())
    }

    /// N×3×224×224 normalised RGB → N×1000 logits, queued on the device.
    pub fn logits(&self, x: Tensor<4>) -> Tensor<2> {
        self.model.forward(x)
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn network(&self) -> &MobileNetV2 {
        &self.model
    }
}

/// Per item: the 1000 ImageNet logits.
impl super::Network for Classifier {
    fn device(&self) -> &Device {
        Classifier::device(self)
    }

    fn launch(&self, x: Tensor<4>) -> Result<super::Readback, ForwardError> {
        let n = x.dims()[0];
        let out = self.logits(x);
        Ok(Box::new(move || super::rows(out, n)))
    }
}

/// The classifier as a worker loads it (`weights`: torchvision's state dict).
pub fn spec(weights: std::path::PathBuf) -> super::ModelSpec {
    super::ModelSpec::new("mobilenet_v2", weights, [INPUT_SIZE, INPUT_SIZE], |w, d| {
        Ok(Box::new(Classifier::load(w, d.clone())?))
    })
}
