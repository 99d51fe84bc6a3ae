//! MTCNN (Zhang et al., 2016) — P-Net, R-Net and O-Net — in burn, loaded from facenet-pytorch's
//! state dicts (`pnet.pt`, `rnet.pt`, `onet.pt`). Field names follow facenet-pytorch, so the only key
//! remap is PReLU's `weight` → burn's `alpha`. As there: max-pools round up (`ceil_mode`), and R-Net /
//! O-Net permute (N,C,H,W) → (N,W,H,C) before flattening into their dense layers.
//! Inputs are RGB, `(x − 127.5) × 0.0078125`, NCHW.

use std::path::Path;
use std::sync::Arc;

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, PRelu, PReluConfig};
use burn::prelude::{Device, Tensor, TensorData};
use burn::store::{ModuleSnapshot, PytorchStore};
use burn::tensor::activation::softmax;

use super::LoadError;
use super::cpu::{self, Act, HwcConv, Layer, Trunk};
use super::profile::{OpTime, conv_flops, timed};

/// R-Net's and O-Net's input sides (face crops).
pub const RNET_SIZE: usize = 24;
pub const ONET_SIZE: usize = 48;

/// Flat outputs of one of the networks: `reg` (4 per window or crop), `prob` (2, face second),
/// `landmarks` (O-Net: 10 per crop), and for P-Net the map size (h, w).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NetOutput {
    pub reg: Vec<f32>,
    pub prob: Vec<f32>,
    pub landmarks: Vec<f32>,
    pub map: (usize, usize),
}

/// The three networks as the cascade needs them: each takes a batch (planar RGB, normalised).
pub trait FaceNets {
    /// One image of `h × w` → maps (4, h', w') and (2, h', w').
    fn pnet(&self, input: Vec<f32>, h: usize, w: usize) -> Result<NetOutput, super::ForwardError>;
    /// `n` crops of 24².
    fn rnet(&self, input: Vec<f32>, n: usize) -> Result<NetOutput, super::ForwardError>;
    /// `n` crops of 48², with landmarks.
    fn onet(&self, input: Vec<f32>, n: usize) -> Result<NetOutput, super::ForwardError>;
}

fn conv(c: [usize; 2], k: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new(c, [k, k]).init(device)
}

fn prelu(c: usize, device: &Device) -> PRelu {
    PReluConfig::new().with_num_parameters(c).init(device)
}

fn pool(k: usize, s: usize) -> MaxPool2d {
    MaxPool2dConfig::new([k, k]).with_strides([s, s]).with_ceil_mode(true).init()
}

/// (N,C,H,W) → (N, W·H·C), facenet-pytorch's `permute(0, 3, 2, 1)` then flatten.
fn flatten_whc(x: Tensor<4>) -> Tensor<2> {
    let [n, c, h, w] = x.dims();
    x.permute([0, 3, 2, 1]).reshape([n, w * h * c])
}

/// `conv` + `prelu` as a channels-last trunk layer (the CPU device's path for MTCNN: its few
/// channels on large planes run far faster as direct channels-last loops than as burn flex's NCHW
/// convolutions, `bench layers --model pnet`).
fn hwc(conv: &Conv2d, prelu: &PRelu) -> Option<Layer> {
    cpu::hwc_conv(conv, &cpu::prelu_act(prelu)).map(Layer::Conv)
}

/// The network's channels-last trunk on the CPU device (`None` elsewhere: burn's ops run there).
fn host_trunk(device: &Device, trunk: impl FnOnce() -> Option<Trunk>) -> Option<Arc<Trunk>> {
    if cpu::is_cpu(device) { trunk().map(Arc::new) } else { None }
}

/// (N,H,W,C) channels-last values → (N, W·H·C) rows, the order `flatten_whc` gives.
fn hwc_to_whc(v: &[f32], [n, h, w, c]: [usize; 4]) -> Tensor<2> {
    let mut out = vec![0f32; v.len()];
    for b in 0..n {
        let (src, dst) = (&v[b * h * w * c..(b + 1) * h * w * c], &mut out[b * h * w * c..(b + 1) * h * w * c]);
        for y in 0..h {
            for x in 0..w {
                dst[(x * h + y) * c..(x * h + y + 1) * c].copy_from_slice(&src[(y * w + x) * c..(y * w + x + 1) * c]);
            }
        }
    }
    Tensor::from_data(TensorData::new(out, [n, w * h * c]), &Device::flex())
}

/// Loads facenet-pytorch's weights into `model`; every tensor must be used and every field filled.
fn load<M: ModuleSnapshot>(mut model: M, weights: &Path) -> Result<M, LoadError> {
    super::check_weights(weights)?;
    let mut store = PytorchStore::from_file(weights)
        .map_indices_contiguous(false)
        .allow_partial(false)
        .with_key_remapping(r"^(prelu\d+)\.weight$", "$1.alpha");
    let result = model
        .load_from(&mut store)
        .map_err(|e| LoadError::Weights { path: weights.to_path_buf(), message: e.to_string() })?;
    if let Some(extra) = result.unused.first() {
        return Err(LoadError::Weights {
            path: weights.to_path_buf(),
            message: format!("unexpected tensor `{extra}`"),
        });
    }
    Ok(model)
}

/// Proposal network: fully convolutional, any input size ≥ 12×12; per 12×12 window (stride 2)
/// a face probability and a box regression.
#[derive(Module, Debug)]
pub struct PNet {
    conv1: Conv2d,
    prelu1: PRelu,
    pool1: MaxPool2d,
    conv2: Conv2d,
    prelu2: PRelu,
    conv3: Conv2d,
    prelu3: PRelu,
    conv4_1: Conv2d,
    conv4_2: Conv2d,
    /// The whole network as one channels-last trunk on the CPU device (both heads as one 1×1
    /// convolution: `reg`'s 4 channels, then the 2 face logits).
    #[module(skip)]
    host: Option<Arc<Trunk>>,
}

/// P-Net maps: box regression (N,4,h,w) and face probability (N,2,h,w; channel 1 = face).
#[derive(Debug)]
pub struct PNetOutput {
    pub reg: Tensor<4>,
    pub prob: Tensor<4>,
}

impl PNet {
    pub fn new(device: &Device) -> Self {
        Self {
            conv1: conv([3, 10], 3, device),
            prelu1: prelu(10, device),
            pool1: pool(2, 2),
            conv2: conv([10, 16], 3, device),
            prelu2: prelu(16, device),
            conv3: conv([16, 32], 3, device),
            prelu3: prelu(32, device),
            conv4_1: conv([32, 2], 1, device),
            conv4_2: conv([32, 4], 1, device),
            host: None,
        }
    }

    pub fn load(weights: &Path, device: &Device) -> Result<Self, LoadError> {
        let mut net = load(Self::new(device), weights)?;
        net.host = host_trunk(device, || net.trunk());
        Ok(net)
    }

    /// The same network on burn's ops only (`bench layers` compares the two).
    pub fn burn_ops(mut self) -> Self {
        self.host = None;
        self
    }

    fn trunk(&self) -> Option<Trunk> {
        let ((mut weight, reg_bias), (prob_weight, prob_bias)) =
            (cpu::conv_params(&self.conv4_2), cpu::conv_params(&self.conv4_1));
        weight.extend(prob_weight);
        let heads_bias = [reg_bias?, prob_bias?].concat();
        let heads = HwcConv::new(32, 6, 1, &weight, Some(&heads_bias), &Act::Identity);
        Some(Trunk {
            cin: 3,
            layers: vec![
                hwc(&self.conv1, &self.prelu1)?,
                Layer::MaxPool(2, 2),
                hwc(&self.conv2, &self.prelu2)?,
                hwc(&self.conv3, &self.prelu3)?,
                Layer::Conv(heads),
            ],
        })
    }

    /// The trunk's channels-last output split into the `reg` and (softmaxed) `prob` maps.
    fn heads(v: &[f32], [n, mh, mw, c]: [usize; 4]) -> PNetOutput {
        debug_assert_eq!(c, 6);
        let plane = mh * mw;
        let (mut reg, mut prob) = (vec![0f32; n * 4 * plane], vec![0f32; n * 2 * plane]);
        for b in 0..n {
            for i in 0..plane {
                let px = &v[(b * plane + i) * 6..(b * plane + i + 1) * 6];
                for ch in 0..4 {
                    reg[(b * 4 + ch) * plane + i] = px[ch];
                }
                let m = px[4].max(px[5]);
                let (e0, e1) = ((px[4] - m).exp(), (px[5] - m).exp());
                prob[b * 2 * plane + i] = e0 / (e0 + e1);
                prob[(b * 2 + 1) * plane + i] = e1 / (e0 + e1);
            }
        }
        let device = Device::flex();
        PNetOutput {
            reg: Tensor::from_data(TensorData::new(reg, [n, 4, mh, mw]), &device),
            prob: Tensor::from_data(TensorData::new(prob, [n, 2, mh, mw]), &device),
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> PNetOutput {
        if let Some(trunk) = &self.host {
            let (v, shape) = cpu::trunk_forward(trunk, x);
            return Self::heads(&v, shape);
        }
        let x = self.pool1.forward(self.prelu1.forward(self.conv1.forward(x)));
        let x = self.prelu2.forward(self.conv2.forward(x));
        let x = self.prelu3.forward(self.conv3.forward(x));
        PNetOutput { reg: self.conv4_2.forward(x.clone()), prob: softmax(self.conv4_1.forward(x), 1) }
    }

    /// `forward` with every op timed into `ops` (`bench layers --model pnet`).
    pub fn forward_profiled(&self, x: Tensor<4>, ops: &mut Vec<OpTime>) -> PNetOutput {
        if let Some(trunk) = &self.host {
            let [n, _, h, w] = x.dims();
            let flops = n as f64 * trunk.flops(h, w);
            let (v, shape) = timed(ops, "trunk: convs, pool", |_| flops, || cpu::trunk_forward(trunk, x));
            return timed(ops, "heads split + softmax", |_| 0.0, || Self::heads(&v, shape));
        }
        let conv = |ops: &mut Vec<OpTime>, kind: &'static str, c: &Conv2d, x| {
            timed(ops, kind, |y: &Tensor<4>| conv_flops(c, y), || c.forward(x))
        };
        let x = conv(ops, "conv1 3x3 3→10", &self.conv1, x);
        let x = timed(ops, "prelu", |_| 0.0, || self.prelu1.forward(x));
        let x = timed(ops, "max pool 2x2", |_| 0.0, || self.pool1.forward(x));
        let x = conv(ops, "conv2 3x3 10→16", &self.conv2, x);
        let x = timed(ops, "prelu", |_| 0.0, || self.prelu2.forward(x));
        let x = conv(ops, "conv3 3x3 16→32", &self.conv3, x);
        let x = timed(ops, "prelu", |_| 0.0, || self.prelu3.forward(x));
        let reg = conv(ops, "conv4 1x1 heads", &self.conv4_2, x.clone());
        let p = conv(ops, "conv4 1x1 heads", &self.conv4_1, x);
        let prob = timed(ops, "softmax", |_| 0.0, || softmax(p, 1));
        PNetOutput { reg, prob }
    }
}

/// Refinement network on 24×24 crops of the P-Net candidates.
#[derive(Module, Debug)]
pub struct RNet {
    conv1: Conv2d,
    prelu1: PRelu,
    pool1: MaxPool2d,
    conv2: Conv2d,
    prelu2: PRelu,
    pool2: MaxPool2d,
    conv3: Conv2d,
    prelu3: PRelu,
    dense4: Linear,
    prelu4: PRelu,
    dense5_1: Linear,
    dense5_2: Linear,
    /// conv1 … prelu3 as one channels-last trunk on the CPU device.
    #[module(skip)]
    host: Option<Arc<Trunk>>,
}

/// Per crop: box regression (N,4), face probability (N,2; column 1 = face), and for O-Net the five
/// landmarks (N,10: x1..x5 then y1..y5, relative to the box).
#[derive(Debug)]
pub struct CropOutput {
    pub reg: Tensor<2>,
    pub prob: Tensor<2>,
    pub landmarks: Option<Tensor<2>>,
}

impl RNet {
    pub fn new(device: &Device) -> Self {
        Self {
            conv1: conv([3, 28], 3, device),
            prelu1: prelu(28, device),
            pool1: pool(3, 2),
            conv2: conv([28, 48], 3, device),
            prelu2: prelu(48, device),
            pool2: pool(3, 2),
            conv3: conv([48, 64], 2, device),
            prelu3: prelu(64, device),
            dense4: LinearConfig::new(576, 128).init(device),
            prelu4: prelu(128, device),
            dense5_1: LinearConfig::new(128, 2).init(device),
            dense5_2: LinearConfig::new(128, 4).init(device),
            host: None,
        }
    }

    pub fn load(weights: &Path, device: &Device) -> Result<Self, LoadError> {
        let mut net = load(Self::new(device), weights)?;
        net.host = host_trunk(device, || net.trunk());
        Ok(net)
    }

    fn trunk(&self) -> Option<Trunk> {
        Some(Trunk {
            cin: 3,
            layers: vec![
                hwc(&self.conv1, &self.prelu1)?,
                Layer::MaxPool(3, 2),
                hwc(&self.conv2, &self.prelu2)?,
                Layer::MaxPool(3, 2),
                hwc(&self.conv3, &self.prelu3)?,
            ],
        })
    }

    /// `x`: (N,3,24,24).
    pub fn forward(&self, x: Tensor<4>) -> CropOutput {
        let x = match &self.host {
            Some(trunk) => {
                let (v, shape) = cpu::trunk_forward(trunk, x);
                hwc_to_whc(&v, shape)
            }
            None => {
                let x = self.pool1.forward(self.prelu1.forward(self.conv1.forward(x)));
                let x = self.pool2.forward(self.prelu2.forward(self.conv2.forward(x)));
                flatten_whc(self.prelu3.forward(self.conv3.forward(x)))
            }
        };
        let x = self.prelu4.forward(self.dense4.forward(x));
        CropOutput {
            reg: self.dense5_2.forward(x.clone()),
            prob: softmax(self.dense5_1.forward(x), 1),
            landmarks: None,
        }
    }
}

/// Output network on 48×48 crops: final boxes and five landmarks.
#[derive(Module, Debug)]
pub struct ONet {
    conv1: Conv2d,
    prelu1: PRelu,
    pool1: MaxPool2d,
    conv2: Conv2d,
    prelu2: PRelu,
    pool2: MaxPool2d,
    conv3: Conv2d,
    prelu3: PRelu,
    pool3: MaxPool2d,
    conv4: Conv2d,
    prelu4: PRelu,
    dense5: Linear,
    prelu5: PRelu,
    dense6_1: Linear,
    dense6_2: Linear,
    dense6_3: Linear,
    /// conv1 … prelu4 as one channels-last trunk on the CPU device.
    #[module(skip)]
    host: Option<Arc<Trunk>>,
}

impl ONet {
    pub fn new(device: &Device) -> Self {
        Self {
            conv1: conv([3, 32], 3, device),
            prelu1: prelu(32, device),
            pool1: pool(3, 2),
            conv2: conv([32, 64], 3, device),
            prelu2: prelu(64, device),
            pool2: pool(3, 2),
            conv3: conv([64, 64], 3, device),
            prelu3: prelu(64, device),
            pool3: pool(2, 2),
            conv4: conv([64, 128], 2, device),
            prelu4: prelu(128, device),
            dense5: LinearConfig::new(1152, 256).init(device),
            prelu5: prelu(256, device),
            dense6_1: LinearConfig::new(256, 2).init(device),
            dense6_2: LinearConfig::new(256, 4).init(device),
            dense6_3: LinearConfig::new(256, 10).init(device),
            host: None,
        }
    }

    pub fn load(weights: &Path, device: &Device) -> Result<Self, LoadError> {
        let mut net = load(Self::new(device), weights)?;
        net.host = host_trunk(device, || net.trunk());
        Ok(net)
    }

    fn trunk(&self) -> Option<Trunk> {
        Some(Trunk {
            cin: 3,
            layers: vec![
                hwc(&self.conv1, &self.prelu1)?,
                Layer::MaxPool(3, 2),
                hwc(&self.conv2, &self.prelu2)?,
                Layer::MaxPool(3, 2),
                hwc(&self.conv3, &self.prelu3)?,
                Layer::MaxPool(2, 2),
                hwc(&self.conv4, &self.prelu4)?,
            ],
        })
    }

    /// `x`: (N,3,48,48).
    pub fn forward(&self, x: Tensor<4>) -> CropOutput {
        let x = match &self.host {
            Some(trunk) => {
                let (v, shape) = cpu::trunk_forward(trunk, x);
                hwc_to_whc(&v, shape)
            }
            None => {
                let x = self.pool1.forward(self.prelu1.forward(self.conv1.forward(x)));
                let x = self.pool2.forward(self.prelu2.forward(self.conv2.forward(x)));
                let x = self.pool3.forward(self.prelu3.forward(self.conv3.forward(x)));
                flatten_whc(self.prelu4.forward(self.conv4.forward(x)))
            }
        };
        let x = self.prelu5.forward(self.dense5.forward(x));
        CropOutput {
            reg: self.dense6_2.forward(x.clone()),
            prob: softmax(self.dense6_1.forward(x.clone()), 1),
            landmarks: Some(self.dense6_3.forward(x)),
        }
    }
}

/// The three networks on one device: `dir` holds `pnet.pt`, `rnet.pt`, `onet.pt`.
#[derive(Debug)]
pub struct Mtcnn {
    pnet: PNet,
    rnet: RNet,
    onet: ONet,
    device: Device,
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>, super::ForwardError> {
    let device = |e: &dyn std::fmt::Debug| super::ForwardError::Device(format!("{e:?}"));
    t.try_into_data().map_err(|e| device(&e))?.try_into_vec::<f32>().map_err(|e| device(&e))
}

impl Mtcnn {
    pub fn load(dir: &Path, device: Device) -> Result<Self, LoadError> {
        Ok(Self {
            pnet: PNet::load(&dir.join("pnet.pt"), &device)?,
            rnet: RNet::load(&dir.join("rnet.pt"), &device)?,
            onet: ONet::load(&dir.join("onet.pt"), &device)?,
            device,
        })
    }

    fn tensor(&self, data: Vec<f32>, shape: [usize; 4]) -> Tensor<4> {
        Tensor::from_data(TensorData::new(data, shape), &self.device)
    }
}

impl FaceNets for Mtcnn {
    fn pnet(&self, input: Vec<f32>, h: usize, w: usize) -> Result<NetOutput, super::ForwardError> {
        let out = self.pnet.forward(self.tensor(input, [1, 3, h, w]));
        let [_, _, mh, mw] = out.prob.dims();
        Ok(NetOutput { reg: to_vec(out.reg)?, prob: to_vec(out.prob)?, landmarks: Vec::new(), map: (mh, mw) })
    }

    fn rnet(&self, input: Vec<f32>, n: usize) -> Result<NetOutput, super::ForwardError> {
        let out = self.rnet.forward(self.tensor(input, [n, 3, RNET_SIZE, RNET_SIZE]));
        Ok(NetOutput { reg: to_vec(out.reg)?, prob: to_vec(out.prob)?, ..NetOutput::default() })
    }

    fn onet(&self, input: Vec<f32>, n: usize) -> Result<NetOutput, super::ForwardError> {
        let out = self.onet.forward(self.tensor(input, [n, 3, ONET_SIZE, ONET_SIZE]));
        let landmarks =
            out.landmarks.ok_or_else(|| super::ForwardError::Device("O-Net returned no landmarks".into()))?;
        Ok(NetOutput { reg: to_vec(out.reg)?, prob: to_vec(out.prob)?, landmarks: to_vec(landmarks)?, map: (0, 0) })
    }
}

/// One MTCNN network on its device, as a worker drives it.
struct OnDevice<N> {
    net: N,
    device: Device,
}

/// Per item: P-Net's `reg` map (4 × h' × w') then its `prob` map (2 × h' × w').
impl super::Network for OnDevice<PNet> {
    fn device(&self) -> &Device {
        &self.device
    }

    fn launch(&self, x: Tensor<4>) -> Result<super::Readback, super::ForwardError> {
        let n = x.dims()[0];
        let out = self.net.forward(x);
        Ok(Box::new(move || Ok(super::concat(vec![super::rows(out.reg, n)?, super::rows(out.prob, n)?]))))
    }
}

/// Per item: R-Net's `reg` (4) then `prob` (2).
impl super::Network for OnDevice<RNet> {
    fn device(&self) -> &Device {
        &self.device
    }

    fn launch(&self, x: Tensor<4>) -> Result<super::Readback, super::ForwardError> {
        let n = x.dims()[0];
        let out = self.net.forward(x);
        Ok(Box::new(move || Ok(super::concat(vec![super::rows(out.reg, n)?, super::rows(out.prob, n)?]))))
    }
}

/// Per item: O-Net's `reg` (4), `landmarks` (10), `prob` (2).
impl super::Network for OnDevice<ONet> {
    fn device(&self) -> &Device {
        &self.device
    }

    fn launch(&self, x: Tensor<4>) -> Result<super::Readback, super::ForwardError> {
        let n = x.dims()[0];
        let out = self.net.forward(x);
        let landmarks = out.landmarks.ok_or_else(|| super::ForwardError::Device("O-Net gave no landmarks".into()))?;
        Ok(Box::new(move || {
            Ok(super::concat(vec![super::rows(out.reg, n)?, super::rows(landmarks, n)?, super::rows(out.prob, n)?]))
        }))
    }
}

/// P-Net on fixed `canvas`² tiles of the pyramid levels (`weights`: facenet-pytorch's `pnet.pt`).
pub fn pnet_spec(weights: std::path::PathBuf, canvas: usize) -> super::ModelSpec {
    super::ModelSpec::new("pnet", weights, [canvas, canvas], |w, d| {
        Ok(Box::new(OnDevice { net: PNet::load(w, d)?, device: d.clone() }))
    })
}

/// R-Net on 24² face crops (`rnet.pt`).
pub fn rnet_spec(weights: std::path::PathBuf) -> super::ModelSpec {
    super::ModelSpec::new("rnet", weights, [RNET_SIZE, RNET_SIZE], |w, d| {
        Ok(Box::new(OnDevice { net: RNet::load(w, d)?, device: d.clone() }))
    })
}

/// O-Net on 48² face crops (`onet.pt`).
pub fn onet_spec(weights: std::path::PathBuf) -> super::ModelSpec {
    super::ModelSpec::new("onet", weights, [ONET_SIZE, ONET_SIZE], |w, d| {
        Ok(Box::new(OnDevice { net: ONet::load(w, d)?, device: d.clone() }))
    })
}
