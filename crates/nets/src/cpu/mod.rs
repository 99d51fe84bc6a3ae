//! The CPU engine's fused convolutions. On the CPU device (burn flex) a convolution, its bias
//! (BatchNorm folded in, see `models::fold`), its activation and a residual add run as one kernel
//! (crates/kernels) instead of burn flex's convolution followed by separate single-threaded passes for
//! the bias, the activation and the add. The networks stay burn modules: the weights are the
//! modules' own, read to the host once at load time, and the kernels take and return flex tensors.
//! On other devices nothing changes (burn's fusion does this job on GPUs).

pub use gpubackend_kernels::eltwise::{self, Binary, Unary};
pub use gpubackend_kernels::hwc::{HwcConv, Layer, Trunk};
pub use gpubackend_kernels::{Act, Geom, HostConv, Level, Pad, count_macs, matmul_peak_gflops};

use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::prelude::{Tensor, TensorData};
use burn_flex::{Flex, FlexTensor};

/// Whether `device` is the CPU device (burn flex), where the fused kernels run.
pub fn is_cpu(device: &burn::prelude::Device) -> bool {
    *device == burn::prelude::Device::flex()
}

/// A parameter's values on the host (read once, at load time).
fn host_values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().iter::<f32>().collect()
}

/// `conv`'s weight (PyTorch's `cout × cin/groups × k × k`) and bias on the host.
pub fn conv_params(conv: &Conv2d) -> (Vec<f32>, Option<Vec<f32>>) {
    (host_values(conv.weight.val()), conv.bias.as_ref().map(|b| host_values(b.val())))
}

/// `conv` (with `act` after it) as a host kernel; `None` where the padding is not explicit. (Every
/// shape runs on the kernels: since their im2col copies runs, they beat burn flex's direct path
/// on the few-channel convolutions it used to keep, measured on the plate detector's and PP-OCR
/// cls's first layers and their 4-channel heads.)
pub fn host_conv(conv: &Conv2d, act: Act) -> Option<HostConv> {
    let [cout, cin_per_group, kh, kw] = conv.weight.dims();
    let pad = match conv.padding {
        PaddingConfig2d::Valid => Pad::Explicit([0; 4]),
        PaddingConfig2d::Explicit(t, l, b, r) => Pad::Explicit([t, l, b, r]),
        _ => return None,
    };
    let geom = Geom {
        cin: cin_per_group * conv.groups,
        cout,
        groups: conv.groups,
        kernel: [kh, kw],
        stride: conv.stride,
        dilation: conv.dilation,
        pad,
    };
    let (weight, bias) = conv_params(conv);
    HostConv::new(geom, weight, bias, act)
}

/// The kernels' shape of a convolution given as burn's weight (`cout × cin/groups × kh × kw`) and
/// options.
pub fn geom_of(weight: &Tensor<4>, options: &burn::tensor::ops::ConvOptions<2>) -> Geom {
    let [cout, cin_per_group, kh, kw] = weight.dims();
    let [(t, b), (l, r)] = options.padding;
    Geom {
        cin: cin_per_group * options.groups,
        cout,
        groups: options.groups,
        kernel: [kh, kw],
        stride: options.stride,
        dilation: options.dilation,
        pad: Pad::Explicit([t, l, b, r]),
    }
}

/// A per-channel `scale · x + shift` applied to a convolution's output before its activation
/// (constant multiplies, divides, adds and inference BatchNorms after it in a graph), folded into
/// its weights and bias.
#[derive(Debug, Clone, PartialEq)]
pub struct Affine {
    pub scale: Vec<f32>,
    pub shift: Vec<f32>,
}

impl Affine {
    pub fn identity(channels: usize) -> Self {
        Self { scale: vec![1.0; channels], shift: vec![0.0; channels] }
    }

    /// Then `· m` per channel.
    pub fn mul(&mut self, m: &[f32]) {
        for ((s, t), m) in self.scale.iter_mut().zip(&mut self.shift).zip(m) {
            *s *= m;
            *t *= m;
        }
    }

    /// Then `+ a` per channel.
    pub fn add(&mut self, a: &[f32]) {
        self.shift.iter_mut().zip(a).for_each(|(t, a)| *t += a);
    }
}

/// A graph's convolution (weight `cout × cin/groups × kh × kw` and bias as burn tensors on the CPU
/// device, shape `geom`), `affine` after it, then `act`, as a host kernel; `None` for a shape
/// that is not a convolution.
pub fn graph_conv(
    weight: &Tensor<4>,
    bias: Option<&Tensor<1>>,
    geom: Geom,
    act: Act,
    affine: &Affine,
) -> Option<HostConv> {
    let mut weight = host_values(weight.clone());
    let per = weight.len() / geom.cout;
    for (row, s) in weight.chunks_exact_mut(per).zip(&affine.scale) {
        row.iter_mut().for_each(|v| *v *= s);
    }
    let bias = bias.map_or_else(|| vec![0.0; geom.cout], |b| host_values(b.clone()));
    let bias = bias.iter().zip(affine.scale.iter().zip(&affine.shift)).map(|(b, (s, t))| b * s + t).collect();
    HostConv::new(geom, weight, Some(bias), act)
}

/// A transposed convolution whose kernel (`cell`) equals its stride, without padding (weight
/// `cin × cout × kh × kw`, as ONNX writes it), `affine` and `act` after it, as the 1×1
/// convolution giving each input pixel's `kh·kw` output values per channel (channel `c·kh·kw +
/// ky·kw + kx`), for [`spread_cells`] to place.
pub fn cell_transpose_conv(
    weight: &Tensor<4>,
    bias: Option<&Tensor<1>>,
    (cin, cout): (usize, usize),
    [kh, kw]: [usize; 2],
    act: Act,
    affine: &Affine,
) -> Option<HostConv> {
    let cells = kh * kw;
    let w = host_values(weight.clone());
    let b = bias.map_or_else(|| vec![0.0; cout], |b| host_values(b.clone()));
    let mut rows = vec![0f32; cout * cells * cin];
    for ci in 0..cin {
        for o in 0..cout {
            for cell in 0..cells {
                rows[(o * cells + cell) * cin + ci] = w[(ci * cout + o) * cells + cell] * affine.scale[o];
            }
        }
    }
    let per_row = |v: &[f32]| v.iter().flat_map(|x| std::iter::repeat_n(*x, cells)).collect::<Vec<f32>>();
    let bias: Vec<f32> = (0..cout).map(|o| b[o] * affine.scale[o] + affine.shift[o]).collect();
    let act = match act {
        Act::PRelu(a) => Act::PRelu(per_row(&a)),
        other => other,
    };
    HostConv::new(Geom::square(cin, cout * cells, 1, 1, 1, 0), rows, Some(per_row(&bias)), act)
}

/// `x` (N × C·kh·kw × H × W, on the CPU device) with each pixel's `kh·kw` values of a channel
/// spread to its cell: N × C × kh·H × kw·W (ONNX's DepthToSpace in its CRD order).
pub fn spread_cells(x: Tensor<4>, [kh, kw]: [usize; 2]) -> Tensor<4> {
    let [n, c, h, w] = x.dims();
    let c = c / (kh * kw);
    let t = flex(x);
    let out = eltwise::spread_cells(values(&t), (h, w), [kh, kw]);
    from_host(out, [n, c, h * kh, w * kw])
}

/// `conv` (with `act` after it) as a channels-last trunk layer; `None` unless it has stride 1, no
/// padding, no dilation and no groups (MTCNN's convolutions all do).
pub fn hwc_conv(conv: &Conv2d, act: &Act) -> Option<HwcConv> {
    let [cout, cin, kh, kw] = conv.weight.dims();
    if kh != kw || conv.stride != [1, 1] || conv.dilation != [1, 1] || conv.groups != 1 {
        return None;
    }
    if !matches!(conv.padding, PaddingConfig2d::Valid | PaddingConfig2d::Explicit(0, 0, 0, 0)) {
        return None;
    }
    let (weight, bias) = conv_params(conv);
    Some(HwcConv::new(cin, cout, kh, &weight, bias.as_deref(), act))
}

/// Runs `trunk` on `x` (N×C×H×W on the CPU device): the output channels-last, `[n, oh, ow, c]`.
pub fn trunk_forward(trunk: &Trunk, x: Tensor<4>) -> (Vec<f32>, [usize; 4]) {
    let [n, _, h, w] = x.dims();
    let (oh, ow, c) = trunk.out_shape(h, w);
    let x = flex(x);
    (trunk.forward(values(&x), n, h, w), [n, oh, ow, c])
}

/// A PReLU's per-channel slopes as the fused kernels' activation.
pub fn prelu_act(p: &burn::nn::PRelu) -> Act {
    Act::PRelu(host_values(p.alpha.val()))
}

/// The tensor's values as a contiguous flex tensor (no copy when it already is one).
fn flex(t: Tensor<4>) -> FlexTensor {
    let t = t.try_into_primitive::<Flex>().expect("fused CPU kernels run on the CPU device only. This is a bug.");
    if t.layout().is_contiguous() && t.layout().start_offset() == 0 { t } else { t.to_contiguous() }
}

fn values(t: &FlexTensor) -> &[f32] {
    &t.storage::<f32>()[..t.layout().num_elements()]
}

/// `f` of every value of `x` (on the CPU device), multi-threaded; in `x`'s buffer when nothing
/// else holds it.
pub fn unary(x: Tensor<4>, f: Unary) -> Tensor<4> {
    let dims = x.dims();
    let mut t = flex(x);
    let n = t.layout().num_elements();
    if let Some(s) = t.try_storage_mut::<f32>() {
        eltwise::map_in_place(&mut s[..n], f);
        return Tensor::from_primitive::<Flex>(t);
    }
    from_host(eltwise::map(values(&t), f), dims)
}

/// `f(a, b)` with `b` (or `a`) the same shape as the other or one value per (image, channel)
/// plane, multi-threaded, in the full operand's buffer when nothing else holds it; any other
/// broadcast goes to `fallback` (burn's op).
pub fn binary(
    a: Tensor<4>,
    b: Tensor<4>,
    f: Binary,
    fallback: impl FnOnce(Tensor<4>, Tensor<4>) -> Tensor<4>,
) -> Tensor<4> {
    let (da, db) = (a.dims(), b.dims());
    if da == db {
        let (mut a, mut b) = (flex(a), flex(b));
        let n = a.layout().num_elements();
        if let Some(s) = a.try_storage_mut::<f32>() {
            eltwise::zip_in_place(&mut s[..n], values(&b), f, false);
            return Tensor::from_primitive::<Flex>(a);
        }
        if let Some(s) = b.try_storage_mut::<f32>() {
            eltwise::zip_in_place(&mut s[..n], values(&a), f, true);
            return Tensor::from_primitive::<Flex>(b);
        }
        return from_host(eltwise::zip(values(&a), values(&b), f), da);
    }
    // One value per plane of the other operand: [1|n, 1|c, 1, 1] against [n, c, h, w].
    let per_plane = |full: [usize; 4], small: [usize; 4]| {
        small[2] == 1
            && small[3] == 1
            && (small[0] == 1 || small[0] == full[0])
            && (small[1] == 1 || small[1] == full[1])
    };
    let (full, small, swapped) = if per_plane(da, db) {
        (a, b, false)
    } else if per_plane(db, da) {
        (b, a, true)
    } else {
        return fallback(a, b);
    };
    let ([n, c, h, w], ds) = (full.dims(), small.dims());
    let small = flex(small);
    let sv = values(&small);
    let v: Vec<f32> = (0..n * c)
        .map(|p| sv[(if ds[0] == 1 { 0 } else { p / c }) * ds[1] + if ds[1] == 1 { 0 } else { p % c }])
        .collect();
    let mut full = flex(full);
    let len = full.layout().num_elements();
    if let Some(s) = full.try_storage_mut::<f32>() {
        eltwise::per_plane_in_place(&mut s[..len], h * w, &v, f, swapped);
        return Tensor::from_primitive::<Flex>(full);
    }
    from_host(eltwise::per_plane(values(&full), h * w, &v, f, swapped), [n, c, h, w])
}

/// Max pooling of `x` (on the CPU device) with explicit padding `(top, bottom), (left, right)`,
/// no dilation, the output size rounded down or (`ceil`) up as PyTorch's does (a last window
/// must start inside the input or its leading padding); `None` for other options (burn runs those).
pub fn max_pool(
    x: &Tensor<4>,
    k: [usize; 2],
    stride: [usize; 2],
    pad: [(usize, usize); 2],
    ceil: bool,
) -> Option<Tensor<4>> {
    let [n, c, h, w] = x.dims();
    let size = |len: usize, (before, after): (usize, usize), k: usize, s: usize| -> Option<usize> {
        let span = (len + before + after).checked_sub(k)?;
        let mut out = if ceil { span.div_ceil(s) } else { span / s } + 1;
        if ceil && (out - 1) * s >= len + before {
            out -= 1;
        }
        Some(out)
    };
    let oh = size(h, pad[0], k[0], stride[0])?;
    let ow = size(w, pad[1], k[1], stride[1])?;
    // A window wholly in the padding would be −∞: not an input these options make.
    if pad[0].0 >= k[0] || pad[1].0 >= k[1] || pad[0].1 >= k[0] || pad[1].1 >= k[1] {
        return None;
    }
    let x = flex(x.clone());
    Some(from_host(eltwise::max_pool(values(&x), (h, w), k, stride, [pad[0].0, pad[1].0], (oh, ow)), [n, c, oh, ow]))
}

/// `parts` (on the CPU device, the same N, H and W) side by side along C.
pub fn concat_channels(parts: Vec<Tensor<4>>) -> Tensor<4> {
    let [n, _, h, w] = parts[0].dims();
    let channels: Vec<usize> = parts.iter().map(|p| p.dims()[1]).collect();
    let parts: Vec<FlexTensor> = parts.into_iter().map(flex).collect();
    let slices: Vec<&[f32]> = parts.iter().map(values).collect();
    let c = channels.iter().sum();
    from_host(eltwise::concat_planes(&slices, n, h * w), [n, c, h, w])
}

fn from_host(v: Vec<f32>, dims: [usize; 4]) -> Tensor<4> {
    Tensor::from_primitive::<Flex>(FlexTensor::from_data(TensorData::new(v, dims)))
}

/// Runs `conv` on `x` (N×C×H×W on the CPU device), adding `residual` after the activation.
pub fn forward(conv: &HostConv, x: Tensor<4>, residual: Option<Tensor<4>>) -> Tensor<4> {
    let [n, _, h, w] = x.dims();
    let (oh, ow) = conv.geom.out(h, w);
    let x = flex(x);
    let residual = residual.map(flex);
    from_host(conv.forward(values(&x), n, h, w, residual.as_ref().map(values)), [n, conv.geom.cout, oh, ow])
}

#[cfg(test)]
mod tests {
    use burn::module::Param;
    use burn::nn::conv::Conv2dConfig;
    use burn::prelude::Device;
    use burn::tensor::activation::relu6;

    use super::*;

    #[test]
    fn fused_conv_on_flex_tensors_matches_burn() {
        let device = Device::flex();
        let mut conv = Conv2dConfig::new([6, 6], [3, 3])
            .with_stride([2, 2])
            .with_groups(6)
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init(&device);
        let ramp = |n: usize, s: f32| (0..n).map(|i| ((i * 37 % 23) as f32 / 11.5 - 1.0) * s).collect::<Vec<f32>>();
        conv.weight = Param::from_tensor(Tensor::from_data(TensorData::new(ramp(54, 0.5), [6, 1, 3, 3]), &device));
        let x = Tensor::<4>::from_data(TensorData::new(ramp(2 * 6 * 11 * 11, 4.0), [2, 6, 11, 11]), &device);
        let want: Vec<f32> = relu6(conv.forward(x.clone())).into_data().iter::<f32>().collect();
        let host = host_conv(&conv, Act::Relu6).expect("depthwise 3×3 is covered");
        let got = forward(&host, x, None);
        assert_eq!(got.dims(), [2, 6, 6, 6]);
        let got: Vec<f32> = got.into_data().iter::<f32>().collect();
        let worst = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-5, "worst {worst}");
    }
}
