//! Load-time graph rewrites for inference: an inference BatchNorm is a per-channel affine map, so
//! when it follows a convolution it can be folded into the convolution's weights and bias.
//!
//! `bn(conv(x)) = γ·(W∗x + b − μ)/√(σ²+ε) + β = (s·W)∗x + (s·(b − μ) + β)` with `s = γ/√(σ²+ε)`
//! per output channel. The network then makes one pass over each activation where it made five
//! (the convolution's output, then BatchNorm's subtract, divide, multiply and add). The new weights
//! are computed once on the host in f64 and rounded to f32, the same arithmetic PyTorch's
//! `fuse_conv_bn_eval` does in f32.

use burn::module::Param;
use burn::nn::BatchNorm;
use burn::nn::conv::Conv2d;
use burn::prelude::{Tensor, TensorData};

/// Per-channel values of a rank-1 tensor (read back to the host).
fn host(t: Tensor<1>) -> Vec<f64> {
    t.into_data().iter::<f32>().map(f64::from).collect()
}

/// The folded weights and bias for `weight` (c_out × rest, row-major), an optional conv `bias`,
/// and BatchNorm's γ, β, μ, σ², ε. Pure: unit-tested without a device.
pub fn fold_params(
    weight: &[f32],
    bias: Option<&[f32]>,
    gamma: &[f64],
    beta: &[f64],
    mean: &[f64],
    var: &[f64],
    epsilon: f64,
) -> (Vec<f32>, Vec<f32>) {
    let c = gamma.len();
    debug_assert_eq!(weight.len() % c, 0);
    let per = weight.len() / c;
    let mut w = Vec::with_capacity(weight.len());
    let mut b = Vec::with_capacity(c);
    for o in 0..c {
        let s = gamma[o] / (var[o] + epsilon).sqrt();
        w.extend(weight[o * per..(o + 1) * per].iter().map(|&v| (f64::from(v) * s) as f32));
        let b0 = bias.map_or(0.0, |b| f64::from(b[o]));
        b.push(((b0 - mean[o]) * s + beta[o]) as f32);
    }
    (w, b)
}

/// Folds `bn` (inference statistics) into `conv`, which then has a bias.
pub fn fold_batch_norm(conv: &mut Conv2d, bn: &BatchNorm) {
    let device = conv.weight.val().device();
    let dims = conv.weight.val().dims();
    let weight: Vec<f32> = conv.weight.val().into_data().iter::<f32>().collect();
    let bias: Option<Vec<f32>> = conv.bias.as_ref().map(|b| b.val().into_data().iter::<f32>().collect());
    let (w, b) = fold_params(
        &weight,
        bias.as_deref(),
        &host(bn.gamma.val()),
        &host(bn.beta.val()),
        &host(bn.running_mean.value()),
        &host(bn.running_var.value()),
        bn.epsilon,
    );
    let c = b.len();
    conv.weight = Param::from_tensor(Tensor::from_data(TensorData::new(w, dims), &device));
    conv.bias = Some(Param::from_tensor(Tensor::from_data(TensorData::new(b, [c]), &device)));
}

#[cfg(test)]
mod tests {
    use burn::module::Param;
    use burn::nn::conv::Conv2dConfig;
    use burn::nn::{BatchNormConfig, PaddingConfig2d};
    use burn::prelude::{Device, Tensor, TensorData};

    use super::*;

    #[test]
    fn params_scale_rows_and_shift_bias() {
        // Two output channels of two weights each; ε = 0 to keep the arithmetic exact.
        let (w, b) = fold_params(
            &[1.0, 2.0, 3.0, 4.0],
            Some(&[1.0, -1.0]),
            &[2.0, 1.0],
            &[0.5, 0.0],
            &[1.0, 1.0],
            &[4.0, 0.25],
            0.0,
        );
        // s = [2/2, 1/0.5] = [1, 2]
        assert_eq!(w, vec![1.0, 2.0, 6.0, 8.0]);
        // b' = (b − μ)·s + β = [(1−1)·1 + 0.5, (−1−1)·2 + 0]
        assert_eq!(b, vec![0.5, -4.0]);
    }

    fn ramp(n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|i| ((i * 7919 % 101) as f32 / 50.0 - 1.0) * scale).collect()
    }

    #[test]
    fn folded_conv_matches_conv_then_batch_norm() {
        let device = Device::flex();
        for (groups, kernel, stride) in [(1, 3, 2), (8, 3, 1), (1, 1, 1)] {
            let (cin, cout) = (8, 8);
            let mut conv = Conv2dConfig::new([cin, cout], [kernel, kernel])
                .with_stride([stride, stride])
                .with_groups(groups)
                .with_padding(PaddingConfig2d::Explicit(kernel / 2, kernel / 2, kernel / 2, kernel / 2))
                .with_bias(false)
                .init(&device);
            let wd = [cout, cin / groups, kernel, kernel];
            conv.weight =
                Param::from_tensor(Tensor::from_data(TensorData::new(ramp(wd.iter().product(), 0.5), wd), &device));
            let mut bn = BatchNormConfig::new(cout).with_epsilon(1e-5).init(&device);
            let ch = |v: Vec<f32>| Tensor::<1>::from_data(TensorData::new(v, [cout]), &device);
            bn.gamma = Param::from_tensor(ch(ramp(cout, 2.0)));
            bn.beta = Param::from_tensor(ch(ramp(cout, 0.3)));
            bn.running_mean = burn::module::RunningState::new(ch(ramp(cout, 0.1)));
            bn.running_var =
                burn::module::RunningState::new(ch(ramp(cout, 0.2).iter().map(|v| v.abs() + 0.05).collect()));
            let x = Tensor::<4>::from_data(TensorData::new(ramp(2 * cin * 9 * 9, 3.0), [2, cin, 9, 9]), &device);
            let want: Vec<f32> = bn.forward(conv.forward(x.clone())).into_data().iter::<f32>().collect();
            fold_batch_norm(&mut conv, &bn);
            let got: Vec<f32> = conv.forward(x).into_data().iter::<f32>().collect();
            let worst = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(worst < 1e-4, "groups {groups} kernel {kernel}: worst {worst}");
        }
    }
}
