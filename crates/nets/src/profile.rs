//! Per-op timing of a forward pass (`gpubackend bench layers`): each op's wall time and arithmetic,
//! summed per kind by the bench. Only meaningful on a backend that runs ops eagerly (the CPU
//! backend); on a GPU the times would be of queueing, not of the work.

use burn::nn::conv::Conv2d;
use burn::prelude::Tensor;

/// One op's wall time and arithmetic (multiply-adds × 2; 0 for memory-bound ops).
#[derive(Debug, Clone)]
pub struct OpTime {
    pub kind: &'static str,
    pub seconds: f64,
    pub flops: f64,
}

pub fn timed<T>(ops: &mut Vec<OpTime>, kind: &'static str, flops: impl Fn(&T) -> f64, f: impl FnOnce() -> T) -> T {
    let start = std::time::Instant::now();
    let y = f();
    ops.push(OpTime { kind, seconds: start.elapsed().as_secs_f64(), flops: flops(&y) });
    y
}

/// 2 × multiply-adds of `conv` producing `y`.
pub fn conv_flops(conv: &Conv2d, y: &Tensor<4>) -> f64 {
    let [_, cin_per_group, kh, kw] = conv.weight.dims();
    let [n, cout, h, w] = y.dims();
    2.0 * (n * cout * h * w * cin_per_group * kh * kw) as f64
}
