//! The CPU engine's fused convolutions. On the CPU device (burn flex) a convolution, its bias
//! (BatchNorm folded in, see `models::fold`), its activation and a residual add run as one kernel
//! (crates/kernels) instead of burn flex's convolution followed by separate single-threaded passes for
//! the bias, the activation and the add. The networks stay burn modules: the weights are the
//! modules' own, read to the host once at load time, and the kernels take and return flex tensors.
//! On other devices nothing changes (burn's fusion does this job on GPUs).

pub use gpubackend_kernels::hwc::{HwcConv, Layer, Trunk};
pub use gpubackend_kernels::{Act, Geom, HostConv, Level};

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

/// `conv` (with `act` after it) as a host kernel; `None` when the kernels do not cover its shape
/// (then burn runs it).
pub fn host_conv(conv: &Conv2d, act: Act) -> Option<HostConv> {
    let [cout, cin_per_group, kh, kw] = conv.weight.dims();
    if kh != kw || conv.stride[0] != conv.stride[1] || conv.dilation != [1, 1] {
        return None;
    }
    let pad = match conv.padding {
        PaddingConfig2d::Valid => 0,
        PaddingConfig2d::Explicit(t, l, b, r) if t == l && l == b && b == r => t,
        _ => return None,
    };
    let geom =
        Geom { cin: cin_per_group * conv.groups, cout, groups: conv.groups, kernel: kh, stride: conv.stride[0], pad };
    // burn flex's direct path for a few input and output channels (3→10) beats im2col + gemm, and
    // its 1×1 path the gemm blocks for a handful of output channels (measured on P-Net's layers).
    if geom.groups == 1 && ((kh > 1 && geom.cin <= 4 && geom.cout <= 16) || geom.cout < 8) {
        return None;
    }
    let (weight, bias) = conv_params(conv);
    HostConv::new(geom, weight, bias, act)
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

/// Runs `conv` on `x` (N×C×H×W on the CPU device), adding `residual` after the activation.
pub fn forward(conv: &HostConv, x: Tensor<4>, residual: Option<Tensor<4>>) -> Tensor<4> {
    let [n, _, h, w] = x.dims();
    let (oh, ow) = conv.geom.out(h, w);
    let x = flex(x);
    let residual = residual.map(flex);
    let out = conv.forward(values(&x), n, h, w, residual.as_ref().map(values));
    let out = FlexTensor::from_data(TensorData::new(out, [n, conv.geom.cout, oh, ow]));
    Tensor::from_primitive::<Flex>(out)
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
