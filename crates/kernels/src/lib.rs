//! Fused convolution kernels for gpubackend's CPU device: convolution + bias + activation
//! (+ residual add) in one pass over the output, on NCHW f32 slices. Pure functions; the networks'
//! `cpu` module bridges them to burn flex tensors, and the graph runner (ONNX, ncnn and TF.js
//! graphs) runs every convolution through them on the CPU. A crate of its own so that these loops
//! are built optimised even in the project's dev builds.
//!
//! Any convolution is covered (rectangular kernels, strides and dilations per axis, explicit or
//! TensorFlow-SAME padding, any groups), by five kernel shapes:
//! - pointwise (1×1, stride 1, no padding, groups 1): one `gemm` per (image, block of output
//!   channels, block of pixels), the epilogue applied to the block while it is in cache;
//! - depthwise 3×3 (padding 1, stride 1 or 2): per (image, channel) plane, row by row, each kernel
//!   tap a contiguous multiply-add over the row (stride 2 reads the input row split into its even
//!   and odd columns, so every tap is still contiguous);
//! - depthwise, any other kernel, stride, padding or dilation: per plane, row by row, each tap a
//!   multiply-add over the output pixels it reaches (contiguous at stride 1);
//! - dense 3×3 at stride 1 (one group, ≥ 16 channels each side): Winograd F(2×2, 3×3)
//!   (`winograd`), 2.25× fewer multiply-adds as 16 `gemm`s per block of tiles;
//! - dense (any other kernel, stride, padding, dilation; per group): im2col of a block of output
//!   pixels sized to stay in L2, then `gemm`, then the epilogue.
//!
//! Blocks run on rayon's pool (burn flex's pool). The multiply-add loops are compiled three times
//! (baseline x86-64, AVX2+FMA, AVX-512F) and the best one the CPU has is picked at run time, so one
//! binary runs on any x86-64 and uses AVX-512 where it exists; `gemm` dispatches the same way.

use std::mem::MaybeUninit;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rayon::prelude::*;

/// The activation after the bias.
#[derive(Debug, Clone, PartialEq)]
pub enum Act {
    Identity,
    /// max(x, 0).
    Relu,
    /// min(max(x, 0), 6).
    Relu6,
    /// min(max(x, lo), hi).
    Clip(f32, f32),
    /// x if x ≥ 0, else α·x.
    LeakyRelu(f32),
    /// x if x ≥ 0, else αc·x, one α per output channel.
    PRelu(Vec<f32>),
    /// 1 / (1 + e^−x).
    Sigmoid,
    /// min(max(α·x + β, 0), 1).
    HardSigmoid(f32, f32),
    /// x · min(max(α·x + β, 0), 1) (α = 1/6, β = ½: MobileNetV3's hard swish).
    HardSwish(f32, f32),
    /// x · ½ · (1 + erf(x / √2)), the exact GELU ([`eltwise::erf`]).
    Gelu,
}

/// One output channel's activation.
#[derive(Debug, Clone, Copy)]
enum RowAct {
    Identity,
    Clip(f32, f32),
    PRelu(f32),
    Sigmoid,
    HardSigmoid(f32, f32),
    HardSwish(f32, f32),
    Gelu,
}

impl Act {
    fn row(&self, c: usize) -> RowAct {
        match self {
            Act::Identity => RowAct::Identity,
            Act::Relu => RowAct::Clip(0.0, f32::INFINITY),
            Act::Relu6 => RowAct::Clip(0.0, 6.0),
            Act::Clip(lo, hi) => RowAct::Clip(*lo, *hi),
            Act::LeakyRelu(a) => RowAct::PRelu(*a),
            Act::PRelu(a) => RowAct::PRelu(a[c]),
            Act::Sigmoid => RowAct::Sigmoid,
            Act::HardSigmoid(a, b) => RowAct::HardSigmoid(*a, *b),
            Act::HardSwish(a, b) => RowAct::HardSwish(*a, *b),
            Act::Gelu => RowAct::Gelu,
        }
    }

    /// The activation of one value of output channel `c` (the tests' reference).
    pub fn apply(&self, c: usize, x: f32) -> f32 {
        match self.row(c) {
            RowAct::Identity => x,
            RowAct::Clip(lo, hi) => x.max(lo).min(hi),
            RowAct::PRelu(a) => {
                if x >= 0.0 {
                    x
                } else {
                    a * x
                }
            }
            RowAct::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            RowAct::HardSigmoid(a, b) => eltwise::Unary::HardSigmoid(a, b).apply(x),
            RowAct::HardSwish(a, b) => eltwise::Unary::HardSwish(a, b).apply(x),
            RowAct::Gelu => eltwise::Unary::Gelu.apply(x),
        }
    }
}

/// How a convolution pads its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pad {
    /// Top, left, bottom, right.
    Explicit([usize; 4]),
    /// TensorFlow's SAME: `max((⌈in/s⌉ − 1)·s + (k − 1)·d + 1 − in, 0)` per axis, the odd pixel
    /// after (bottom, right), from the input's size.
    TfSame,
}

/// A convolution's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geom {
    pub cin: usize,
    pub cout: usize,
    pub groups: usize,
    /// Height, width.
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub dilation: [usize; 2],
    pub pad: Pad,
}

impl Geom {
    /// A square kernel with the same stride and padding on both axes, no dilation.
    pub fn square(cin: usize, cout: usize, groups: usize, kernel: usize, stride: usize, pad: usize) -> Self {
        Self {
            cin,
            cout,
            groups,
            kernel: [kernel; 2],
            stride: [stride; 2],
            dilation: [1, 1],
            pad: Pad::Explicit([pad; 4]),
        }
    }

    /// Whether the shape is one these kernels run (channels divisible by the groups, non-zero
    /// sizes).
    pub fn is_valid(&self) -> bool {
        self.groups > 0
            && self.cin > 0
            && self.cout > 0
            && self.cin.is_multiple_of(self.groups)
            && self.cout.is_multiple_of(self.groups)
            && self.kernel.iter().chain(&self.stride).chain(&self.dilation).all(|&v| v > 0)
    }

    /// The padding of an `h`×`w` input: top, left, bottom, right.
    pub fn pads(&self, h: usize, w: usize) -> [usize; 4] {
        match self.pad {
            Pad::Explicit(p) => p,
            Pad::TfSame => {
                let total = |size: usize, axis: usize| {
                    let span = (self.kernel[axis] - 1) * self.dilation[axis] + 1;
                    ((size.div_ceil(self.stride[axis]).max(1) - 1) * self.stride[axis] + span).saturating_sub(size)
                };
                let (th, tw) = (total(h, 0), total(w, 1));
                [th / 2, tw / 2, th - th / 2, tw - tw / 2]
            }
        }
    }

    /// Output height and width for an `h`×`w` input; `None` when the kernel does not fit.
    pub fn output(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        let [t, l, b, r] = self.pads(h, w);
        let axis = |size: usize, a: usize| {
            let span = (self.kernel[a] - 1) * self.dilation[a] + 1;
            (size + [t + b, l + r][a]).checked_sub(span).map(|v| v / self.stride[a] + 1)
        };
        Some((axis(h, 0)?, axis(w, 1)?))
    }

    /// Output height and width for an `h`×`w` input the kernel fits.
    pub fn out(&self, h: usize, w: usize) -> (usize, usize) {
        self.output(h, w).unwrap_or_else(|| panic!("a {h}×{w} input is smaller than the kernel of {self:?}"))
    }

    /// Multiply-adds per image for an `h`×`w` input.
    pub fn macs(&self, h: usize, w: usize) -> usize {
        let (oh, ow) = self.out(h, w);
        oh * ow * self.cout * (self.cin / self.groups) * self.kernel[0] * self.kernel[1]
    }

    fn kind(&self) -> Kind {
        let unit = self.dilation == [1, 1];
        if self.groups == 1 && self.kernel == [1, 1] && self.stride == [1, 1] && self.pad == Pad::Explicit([0; 4]) {
            Kind::Pointwise
        } else if self.groups == self.cin && self.cin == self.cout {
            // At stride 1 the general path's register blocks beat the row-wise 3×3 kernel (as
            // fast on 160² planes, 2–3× on 20²–40² ones).
            if self.kernel == [3, 3] && unit && self.pad == Pad::Explicit([1; 4]) && self.stride == [2, 2] {
                Kind::Depthwise3x3
            } else {
                Kind::Depthwise
            }
        } else if winograd::applies(self) {
            Kind::Winograd
        } else {
            Kind::Dense
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Pointwise,
    Depthwise3x3,
    Depthwise,
    Winograd,
    Dense,
}

/// The SIMD level the multiply-add loops run at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Baseline,
    Avx2,
    Avx512,
}

impl Level {
    /// The best level this CPU has (detected once).
    pub fn detect() -> Level {
        static LEVEL: OnceLock<Level> = OnceLock::new();
        *LEVEL.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
                    return Level::Avx512;
                }
                if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                    return Level::Avx2;
                }
            }
            Level::Baseline
        })
    }

    /// Whether this CPU can run `self`.
    pub fn available(self) -> bool {
        matches!(
            (self, Level::detect()),
            (Level::Baseline, _) | (Level::Avx2, Level::Avx2 | Level::Avx512) | (Level::Avx512, Level::Avx512)
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            Level::Baseline => "x86-64 baseline (SSE2)",
            Level::Avx2 => "AVX2+FMA",
            Level::Avx512 => "AVX-512F",
        }
    }
}

/// Calls `$imp::<FMA>(args…)` compiled for `level` (which the caller has checked is available).
macro_rules! at_level {
    ($level:expr, $imp:ident ( $($arg:ident : $ty:ty),* )) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f,avx2,fma")]
            unsafe fn v4($($arg: $ty),*) { $imp::<true>($($arg),*) }
            #[target_feature(enable = "avx2,fma")]
            unsafe fn v3($($arg: $ty),*) { $imp::<true>($($arg),*) }
            match $level {
                // SAFETY: `Level::detect` (or a caller checking `available`) found these features.
                Level::Avx512 => unsafe { v4($($arg),*) },
                Level::Avx2 => unsafe { v3($($arg),*) },
                Level::Baseline => $imp::<false>($($arg),*),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = $level;
            $imp::<false>($($arg),*)
        }
    }};
}

pub mod eltwise;
pub mod hwc;
mod winograd;

/// `acc[i] += a · x[i]`.
#[inline(always)]
fn axpy<const FMA: bool>(acc: &mut [f32], a: f32, x: &[f32]) {
    for (o, &v) in acc.iter_mut().zip(x) {
        *o = if FMA { v.mul_add(a, *o) } else { *o + a * v };
    }
}

/// Bias, activation and residual on one output row (one channel's pixels).
#[inline(always)]
fn epilogue_impl<const FMA: bool>(row: &mut [f32], bias: f32, act: RowAct, res: Option<&[f32]>) {
    match act {
        RowAct::Identity => row.iter_mut().for_each(|v| *v += bias),
        RowAct::Clip(lo, hi) => row.iter_mut().for_each(|v| *v = (*v + bias).max(lo).min(hi)),
        RowAct::PRelu(a) => row.iter_mut().for_each(|v| {
            let x = *v + bias;
            *v = if x >= 0.0 { x } else { a * x };
        }),
        RowAct::Sigmoid => row.iter_mut().for_each(|v| *v = 1.0 / (1.0 + (-(*v + bias)).exp())),
        RowAct::HardSigmoid(a, b) => {
            row.iter_mut().for_each(|v| *v = eltwise::Unary::HardSigmoid(a, b).apply(*v + bias))
        }
        RowAct::HardSwish(a, b) => row.iter_mut().for_each(|v| *v = eltwise::Unary::HardSwish(a, b).apply(*v + bias)),
        RowAct::Gelu => row.iter_mut().for_each(|v| *v = eltwise::Unary::Gelu.apply(*v + bias)),
    }
    if let Some(r) = res {
        row.iter_mut().zip(r).for_each(|(v, &r)| *v += r);
    }
}

fn epilogue(level: Level, row: &mut [f32], bias: f32, act: RowAct, res: Option<&[f32]>) {
    at_level!(level, epilogue_impl(row: &mut [f32], bias: f32, act: RowAct, res: Option<&[f32]>))
}

/// One depthwise 3×3 plane's input and parameters (padding 1, stride 1 or 2; run at stride 2).
#[derive(Clone, Copy)]
struct Plane<'a> {
    /// The input plane, `h × w`.
    x: &'a [f32],
    h: usize,
    w: usize,
    /// The 3×3 taps, row-major.
    k: &'a [f32],
    stride: usize,
    ow: usize,
    bias: f32,
    act: RowAct,
    /// Added after the activation, `oh × ow`.
    res: Option<&'a [f32]>,
}

/// One depthwise plane into `out` (`oh × ow`, not yet written), bias and activation applied;
/// `split` is scratch of at least `w + 1` values.
#[inline(always)]
fn depthwise_plane_impl<const FMA: bool>(p: &Plane<'_>, out: &mut [MaybeUninit<f32>], split: &mut [f32]) {
    let Plane { x, h, w, k, stride, ow, bias, act, res } = *p;
    let oh = out.len() / ow;
    for oy in 0..oh {
        let row = &mut out[oy * ow..(oy + 1) * ow];
        row.fill(MaybeUninit::new(0.0));
        // SAFETY: every value of the row was just written.
        let acc = unsafe { &mut *(std::ptr::from_mut(row) as *mut [f32]) };
        for ky in 0..3 {
            let iy = (oy * stride + ky) as isize - 1;
            if iy < 0 || iy >= h as isize {
                continue;
            }
            let row = &x[iy as usize * w..(iy as usize + 1) * w];
            let (w0, w1, w2) = (k[ky * 3], k[ky * 3 + 1], k[ky * 3 + 2]);
            if stride == 1 {
                // out[ox] += w0·in[ox−1] + w1·in[ox] + w2·in[ox+1]
                axpy::<FMA>(&mut acc[1..], w0, &row[..w - 1]);
                axpy::<FMA>(acc, w1, row);
                axpy::<FMA>(&mut acc[..w - 1], w2, &row[1..]);
            } else {
                // in[2·ox − 1] = odd[ox − 1], in[2·ox] = even[ox], in[2·ox + 1] = odd[ox]
                let (even, odd) = split.split_at_mut(w.div_ceil(2));
                let odd = &mut odd[..w / 2];
                for (i, e) in even.iter_mut().enumerate() {
                    *e = row[2 * i];
                }
                for (i, o) in odd.iter_mut().enumerate() {
                    *o = row[2 * i + 1];
                }
                axpy::<FMA>(&mut acc[1..], w0, &odd[..ow - 1]);
                axpy::<FMA>(acc, w1, &even[..ow]);
                let n = odd.len().min(ow);
                axpy::<FMA>(&mut acc[..n], w2, &odd[..n]);
            }
        }
        epilogue_impl::<FMA>(acc, bias, act, res.map(|r| &r[oy * ow..(oy + 1) * ow]));
    }
}

fn depthwise_plane(level: Level, p: &Plane<'_>, out: &mut [MaybeUninit<f32>], split: &mut [f32]) {
    at_level!(level, depthwise_plane_impl(p: &Plane<'_>, out: &mut [MaybeUninit<f32>], split: &mut [f32]))
}

/// The output pixels `lo..hi` of an axis (`out` long) whose tap at offset `off` (kernel position ·
/// dilation − padding) reads inside an input axis `size` long, at `stride`.
fn tap_range(off: isize, size: usize, stride: usize, out: usize) -> (usize, usize) {
    let s = stride as isize;
    let lo = if off >= 0 { 0 } else { (-off + s - 1) / s };
    let last = size as isize - 1 - off;
    let hi = if last < 0 { 0 } else { last / s + 1 };
    let hi = (hi as usize).min(out);
    ((lo as usize).min(hi), hi)
}

/// One depthwise plane of any kernel, stride, padding and dilation.
#[derive(Clone, Copy)]
struct AnyPlane<'a> {
    /// The input plane, `h × w`.
    x: &'a [f32],
    h: usize,
    w: usize,
    /// The taps, `kh × kw` row-major.
    k: &'a [f32],
    geom: &'a Geom,
    /// Top, left padding.
    pads: [usize; 2],
    ow: usize,
    bias: f32,
    act: RowAct,
    res: Option<&'a [f32]>,
}

/// One depthwise plane into `out` (`oh × ow`, not yet written): per output row, each tap a
/// multiply-add over the output pixels it reaches (contiguous at stride 1).
#[inline(always)]
fn depthwise_any_impl<const FMA: bool>(p: &AnyPlane<'_>, out: &mut [MaybeUninit<f32>]) {
    let AnyPlane { x, h, w, k, geom, pads, ow, bias, act, res } = *p;
    let ([kh, kw], [sh, sw], [dh, dw]) = (geom.kernel, geom.stride, geom.dilation);
    let oh = out.len() / ow;
    for oy in 0..oh {
        let row = &mut out[oy * ow..(oy + 1) * ow];
        row.fill(MaybeUninit::new(0.0));
        // SAFETY: every value of the row was just written.
        let acc = unsafe { &mut *(std::ptr::from_mut(row) as *mut [f32]) };
        for ky in 0..kh {
            let iy = (oy * sh + ky * dh) as isize - pads[0] as isize;
            if iy < 0 || iy >= h as isize {
                continue;
            }
            let input = &x[iy as usize * w..(iy as usize + 1) * w];
            for kx in 0..kw {
                let tap = k[ky * kw + kx];
                let off = (kx * dw) as isize - pads[1] as isize;
                let (lo, hi) = tap_range(off, w, sw, ow);
                if lo >= hi {
                    continue;
                }
                let first = (lo * sw) as isize + off;
                if sw == 1 {
                    axpy::<FMA>(&mut acc[lo..hi], tap, &input[first as usize..first as usize + (hi - lo)]);
                } else {
                    for (i, o) in acc[lo..hi].iter_mut().enumerate() {
                        let v = input[first as usize + i * sw];
                        *o = if FMA { v.mul_add(tap, *o) } else { *o + tap * v };
                    }
                }
            }
        }
        epilogue_impl::<FMA>(acc, bias, act, res.map(|r| &r[oy * ow..(oy + 1) * ow]));
    }
}

/// Output pixels (of each of two rows) a register block of the stride-1 depthwise kernel holds.
const DW_BLOCK: usize = 32;

/// The sums of `rows` (1 or 2) output rows' block of [`DW_BLOCK`] pixels over every tap:
/// `at` is the block's first input value of the first row in `padded` (rows `pw` apart).
#[inline(always)]
fn depthwise_block<const FMA: bool>(
    padded: &[f32],
    (at, pw): (usize, usize),
    k: &[f32],
    ([kh, kw], [dh, dw]): ([usize; 2], [usize; 2]),
    rows: usize,
) -> [[f32; DW_BLOCK]; 2] {
    let mut acc = [[0f32; DW_BLOCK]; 2];
    let last = at + (rows - 1 + (kh - 1) * dh) * pw + (kw - 1) * dw + DW_BLOCK;
    assert!(last <= padded.len(), "the padded plane covers the block");
    #[cfg(target_arch = "x86_64")]
    if FMA {
        use std::arch::x86_64::*;
        // SAFETY: FMA is true only in the AVX2 + FMA and AVX-512 builds of the caller
        // (`at_level!`), and every load is inside `padded` (asserted above).
        unsafe {
            let base = padded.as_ptr().add(at);
            let mut a = [_mm256_setzero_ps(); 8];
            for ky in 0..kh {
                for kx in 0..kw {
                    let t = _mm256_set1_ps(k[ky * kw + kx]);
                    for r in 0..rows {
                        let p = base.add((r + ky * dh) * pw + kx * dw);
                        for v in 0..4 {
                            a[r * 4 + v] = _mm256_fmadd_ps(_mm256_loadu_ps(p.add(v * 8)), t, a[r * 4 + v]);
                        }
                    }
                }
            }
            for r in 0..2 {
                for v in 0..4 {
                    _mm256_storeu_ps(acc[r].as_mut_ptr().add(v * 8), a[r * 4 + v]);
                }
            }
        }
        return acc;
    }
    for (r, acc) in acc.iter_mut().enumerate().take(rows) {
        for ky in 0..kh {
            for kx in 0..kw {
                let tap = k[ky * kw + kx];
                let from = at + (r + ky * dh) * pw + kx * dw;
                for (o, &v) in acc.iter_mut().zip(&padded[from..from + DW_BLOCK]) {
                    *o = if FMA { v.mul_add(tap, *o) } else { *o + tap * v };
                }
            }
        }
    }
    acc
}

/// One depthwise plane at stride 1 (any kernel, padding and dilation) into `out`: the input is
/// first copied into `padded` with its zero border, so that every tap of a block of
/// [`DW_BLOCK`] outputs is one unit-stride run; two rows' blocks are summed in registers over
/// all taps.
#[inline(always)]
fn depthwise_s1_impl<const FMA: bool>(p: &AnyPlane<'_>, out: &mut [MaybeUninit<f32>], padded: &mut Vec<f32>) {
    let AnyPlane { x, h, w, k, geom, pads, ow, bias, act, res } = *p;
    let ([kh, kw], [dh, dw]) = (geom.kernel, geom.dilation);
    let oh = out.len() / ow;
    let (ph, pw) = (oh + (kh - 1) * dh, ow.next_multiple_of(DW_BLOCK) + (kw - 1) * dw);
    padded.clear();
    padded.resize(ph * pw, 0.0);
    for py in 0..ph {
        let iy = py as isize - pads[0] as isize;
        if iy < 0 || iy >= h as isize {
            continue;
        }
        let src = &x[iy as usize * w..(iy as usize + 1) * w];
        // Padded column px holds input column px − left.
        let lo = pads[1].min(pw);
        let n = w.min(pw - lo);
        padded[py * pw + lo..py * pw + lo + n].copy_from_slice(&src[..n]);
    }
    for oy in (0..oh).step_by(2) {
        let rows = (oh - oy).min(2);
        for ox0 in (0..ow).step_by(DW_BLOCK) {
            let acc = depthwise_block::<FMA>(padded, (oy * pw + ox0, pw), k, (geom.kernel, geom.dilation), rows);
            let n = DW_BLOCK.min(ow - ox0);
            for (r, acc) in acc.iter().enumerate().take(rows) {
                let at = (oy + r) * ow + ox0;
                for (o, &a) in out[at..at + n].iter_mut().zip(acc) {
                    o.write(a);
                }
            }
        }
        for r in oy..oy + rows {
            let row = &mut out[r * ow..(r + 1) * ow];
            // SAFETY: every value of the row was just written.
            let acc = unsafe { &mut *(std::ptr::from_mut(row) as *mut [f32]) };
            epilogue_impl::<FMA>(acc, bias, act, res.map(|s| &s[r * ow..(r + 1) * ow]));
        }
    }
}

fn depthwise_s1(level: Level, p: &AnyPlane<'_>, out: &mut [MaybeUninit<f32>], padded: &mut Vec<f32>) {
    at_level!(level, depthwise_s1_impl(p: &AnyPlane<'_>, out: &mut [MaybeUninit<f32>], padded: &mut Vec<f32>))
}

fn depthwise_any(level: Level, p: &AnyPlane<'_>, out: &mut [MaybeUninit<f32>]) {
    at_level!(level, depthwise_any_impl(p: &AnyPlane<'_>, out: &mut [MaybeUninit<f32>]))
}

/// A raw output pointer shared by tasks that write disjoint regions.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: every task writes its own region of the buffer (see the callers).
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// Through a method, so that closures capture the `Send` wrapper rather than its raw field.
    fn ptr(self) -> *mut f32 {
        self.0
    }
}

/// `dst = lhs · rhs` for row-major operands given as (pointer, row stride): `lhs` is `m × k`, `rhs`
/// `k × n`, `dst` `m × n`; single-threaded (the callers split the work), `dst` is written without
/// being read.
///
/// # Safety
/// Each pointer with its row stride covers its operand's extent.
unsafe fn sgemm(
    (m, n, k): (usize, usize, usize),
    (dst, dst_rs): (*mut f32, usize),
    (lhs, lhs_rs): (*const f32, usize),
    (rhs, rhs_rs): (*const f32, usize),
) {
    // SAFETY: forwarded from the caller; column strides are 1 (row-major).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            false,
            lhs,
            1,
            lhs_rs as isize,
            rhs,
            1,
            rhs_rs as isize,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Multiply-adds run by the kernels since counting began (`bench networks`' GFLOP/s).
static MACS: AtomicU64 = AtomicU64::new(0);
static COUNTING: AtomicBool = AtomicBool::new(false);

/// Starts (`true`) or stops counting the multiply-adds the kernels run; returns the count so far
/// and resets it.
pub fn count_macs(on: bool) -> u64 {
    COUNTING.store(on, Ordering::Relaxed);
    MACS.swap(0, Ordering::Relaxed)
}

/// The machine's f32 matrix-multiply rate in GFLOP/s (2 per multiply-add) on the current rayon
/// pool: the best of three `side`³ products through the same single-threaded `gemm` the kernels
/// call, one band of rows per thread (as the kernels split their work).
pub fn matmul_peak_gflops(side: usize) -> f64 {
    let a = vec![0.5f32; side * side];
    let b = vec![0.25f32; side * side];
    let mut c = vec![0f32; side * side];
    let band = side.div_ceil(rayon::current_num_threads()).max(1);
    let mut best = f64::MAX;
    for _ in 0..3 {
        let start = std::time::Instant::now();
        c.par_chunks_mut(band * side).enumerate().for_each(|(i, rows)| {
            let m = rows.len() / side;
            // SAFETY: `rows` is rows i·band.. of `c`; `a`'s same rows and all of `b` are in bounds.
            unsafe {
                sgemm(
                    (m, side, side),
                    (rows.as_mut_ptr(), side),
                    (a.as_ptr().add(i * band * side), side),
                    (b.as_ptr(), side),
                );
            }
        });
        best = best.min(start.elapsed().as_secs_f64());
    }
    std::hint::black_box(&c);
    2.0 * (side as f64).powi(3) / best / 1e9
}

/// Output pixels per task for the pointwise kernel.
const PIXEL_BLOCK: usize = 256;

/// Values of the dense kernel's im2col block (kept within L2 with the gemm's packed operands).
const COLS_BUDGET: usize = 48 * 1024;

/// A convolution with its weights on the host, ready to run fused on NCHW batches.
#[derive(Debug, Clone)]
pub struct HostConv {
    pub geom: Geom,
    kind: Kind,
    /// `cout × cin/groups × kh × kw`, row-major (PyTorch's layout).
    weight: Vec<f32>,
    bias: Vec<f32>,
    act: Act,
    /// Winograd's 16 transformed kernels (`Kind::Winograd` only).
    transformed: Vec<f32>,
}

impl HostConv {
    /// `None` for a shape that is not a convolution ([`Geom::is_valid`]).
    pub fn new(geom: Geom, weight: Vec<f32>, bias: Option<Vec<f32>>, act: Act) -> Option<Self> {
        if !geom.is_valid() {
            return None;
        }
        let kind = geom.kind();
        let per = geom.cin / geom.groups * geom.kernel[0] * geom.kernel[1];
        assert_eq!(weight.len(), geom.cout * per, "weight size");
        if let Act::PRelu(a) = &act {
            assert_eq!(a.len(), geom.cout, "one PReLU slope per channel");
        }
        let bias = bias.unwrap_or_else(|| vec![0.0; geom.cout]);
        assert_eq!(bias.len(), geom.cout, "one bias per channel");
        let transformed =
            if kind == Kind::Winograd { winograd::transform_weights(&weight, geom.cout, geom.cin) } else { Vec::new() };
        Some(Self { geom, kind, weight, bias, act, transformed })
    }

    /// The activation after the bias.
    pub fn act(&self) -> &Act {
        &self.act
    }

    /// `x`: `n × cin × h × w`; `residual`: `n × cout × oh × ow`, added after the activation.
    /// Returns `n × cout × oh × ow`.
    pub fn forward(&self, x: &[f32], n: usize, h: usize, w: usize, residual: Option<&[f32]>) -> Vec<f32> {
        self.forward_at(Level::detect(), x, n, h, w, residual)
    }

    /// `forward` at a given SIMD level (tests compare the levels).
    pub fn forward_at(
        &self,
        level: Level,
        x: &[f32],
        n: usize,
        h: usize,
        w: usize,
        residual: Option<&[f32]>,
    ) -> Vec<f32> {
        assert!(level.available(), "{} is not available on this CPU", level.name());
        let g = self.geom;
        assert_eq!(x.len(), n * g.cin * h * w, "input size");
        let (oh, ow) = g.out(h, w);
        if let Some(r) = residual {
            assert_eq!(r.len(), n * g.cout * oh * ow, "residual size");
        }
        // Not zeroed first (a single-threaded memset of every activation on the calling thread
        // was 7 % of the CPU time of a served MobileNetV2): each kernel writes every value.
        if COUNTING.load(Ordering::Relaxed) {
            MACS.fetch_add((n * g.macs(h, w)) as u64, Ordering::Relaxed);
        }
        let len = n * g.cout * oh * ow;
        let mut out = Vec::with_capacity(len);
        let spare = &mut out.spare_capacity_mut()[..len];
        if len > 0 {
            match self.kind {
                Kind::Pointwise => self.pointwise(level, x, n, h * w, residual, spare),
                Kind::Depthwise3x3 | Kind::Depthwise => self.depthwise(level, x, h, w, residual, spare),
                Kind::Dense => self.dense(level, x, n, h, w, residual, spare),
                Kind::Winograd => winograd::forward(
                    level,
                    &g,
                    &self.transformed,
                    &self.bias,
                    &self.act,
                    x,
                    (n, h, w),
                    residual,
                    spare,
                ),
            }
        }
        // SAFETY: the pointwise and dense blocks tile every (image, channel, pixel) and gemm writes
        // its whole block without reading it (`read_dst` false); depthwise writes every plane's rows.
        unsafe { out.set_len(len) };
        out
    }

    /// Every (image, channel) plane of `out` from the same plane of `x`.
    fn depthwise(
        &self,
        level: Level,
        x: &[f32],
        h: usize,
        w: usize,
        res: Option<&[f32]>,
        out: &mut [MaybeUninit<f32>],
    ) {
        let g = &self.geom;
        let c = g.cin;
        let (oh, ow) = g.out(h, w);
        let [top, left, _, _] = g.pads(h, w);
        let taps = g.kernel[0] * g.kernel[1];
        let (plane_in, plane_out) = (h * w, oh * ow);
        let fast = self.kind == Kind::Depthwise3x3;
        out.par_chunks_mut(plane_out).enumerate().with_min_len((4096 / plane_out).max(1)).for_each_init(
            || vec![0f32; if fast { w + 1 } else { 0 }],
            |scratch, (bc, o)| {
                let ch = bc % c;
                let (xs, k) = (&x[bc * plane_in..(bc + 1) * plane_in], &self.weight[ch * taps..(ch + 1) * taps]);
                let (bias, act) = (self.bias[ch], self.act.row(ch));
                let res = res.map(|r| &r[bc * plane_out..(bc + 1) * plane_out]);
                if fast {
                    let plane = Plane { x: xs, h, w, k, stride: g.stride[0], ow, bias, act, res };
                    depthwise_plane(level, &plane, o, scratch);
                } else {
                    let plane = AnyPlane { x: xs, h, w, k, geom: g, pads: [top, left], ow, bias, act, res };
                    if g.stride == [1, 1] {
                        depthwise_s1(level, &plane, o, scratch);
                    } else {
                        depthwise_any(level, &plane, o);
                    }
                }
            },
        );
    }

    /// Blocks of output channels so that there are at least two tasks per thread where the
    /// pixel blocks alone do not make that many (small late layers, batch 1).
    fn channel_blocks(&self, rows: usize, tasks: usize) -> usize {
        let threads = rayon::current_num_threads();
        let mut blocks = 1;
        while tasks * blocks < 2 * threads && rows / (blocks * 2) >= 16 {
            blocks *= 2;
        }
        blocks
    }

    fn pointwise(
        &self,
        level: Level,
        x: &[f32],
        n: usize,
        hw: usize,
        res: Option<&[f32]>,
        out: &mut [MaybeUninit<f32>],
    ) {
        let (m, k) = (self.geom.cout, self.geom.cin);
        let pb_len = PIXEL_BLOCK;
        let pixel_blocks = hw.div_ceil(pb_len);
        let cb = self.channel_blocks(m, n * pixel_blocks);
        let rows = m.div_ceil(cb);
        let dst = Out(out.as_mut_ptr().cast::<f32>());
        (0..n * pixel_blocks * cb).into_par_iter().for_each(|t| {
            let (b, rest) = (t / (pixel_blocks * cb), t % (pixel_blocks * cb));
            let (pb, rb) = (rest / cb, rest % cb);
            let (j0, j1) = (pb * pb_len, ((pb + 1) * pb_len).min(hw));
            let (r0, r1) = (rb * rows, ((rb + 1) * rows).min(m));
            if r0 >= r1 {
                return;
            }
            // SAFETY: rows r0..r1 × pixels j0..j1 of image b are this task's alone; the operand
            // pointers and strides stay inside `x`, `self.weight` and `out`.
            unsafe {
                let d = dst.ptr().add(b * m * hw + r0 * hw + j0);
                sgemm(
                    (r1 - r0, j1 - j0, k),
                    (d, hw),
                    (self.weight.as_ptr().add(r0 * k), k),
                    (x.as_ptr().add(b * k * hw + j0), hw),
                );
                for r in r0..r1 {
                    let row = std::slice::from_raw_parts_mut(d.add((r - r0) * hw), j1 - j0);
                    let at = b * m * hw + r * hw;
                    epilogue(level, row, self.bias[r], self.act.row(r), res.map(|s| &s[at + j0..at + j1]));
                }
            }
        });
    }

    /// Per (image, group, block of output pixels, block of the group's output channels): im2col
    /// of the block, one gemm, the epilogue.
    #[allow(clippy::too_many_arguments)]
    fn dense(
        &self,
        level: Level,
        x: &[f32],
        n: usize,
        h: usize,
        w: usize,
        res: Option<&[f32]>,
        out: &mut [MaybeUninit<f32>],
    ) {
        let g = self.geom;
        let (oh, ow) = g.out(h, w);
        let [top, left, _, _] = g.pads(h, w);
        let ([kh, kw], [sh, sw], [dh, dw]) = (g.kernel, g.stride, g.dilation);
        let (cpg, opg) = (g.cin / g.groups, g.cout / g.groups);
        let klen = cpg * kh * kw;
        let ohw = oh * ow;
        let block = (COLS_BUDGET / klen).clamp(32, 512).next_multiple_of(16).min(ohw.next_multiple_of(16));
        let pixel_blocks = ohw.div_ceil(block);
        let cb = self.channel_blocks(opg, n * g.groups * pixel_blocks);
        let rows = opg.div_ceil(cb);
        let dst = Out(out.as_mut_ptr().cast::<f32>());
        // A task is one (image, group, pixel block) and all its channel blocks share its im2col:
        // when channel blocks are needed, each re-gathers its block (cheap next to the gemm).
        (0..n * g.groups * pixel_blocks * cb).into_par_iter().for_each_init(
            || vec![0f32; klen * block],
            |cols, t| {
                let (b, rest) = (t / (g.groups * pixel_blocks * cb), t % (g.groups * pixel_blocks * cb));
                let (gi, rest) = (rest / (pixel_blocks * cb), rest % (pixel_blocks * cb));
                let (pb, rb) = (rest / cb, rest % cb);
                let (p0, p1) = (pb * block, ((pb + 1) * block).min(ohw));
                let (r0, r1) = (rb * rows, ((rb + 1) * rows).min(opg));
                if r0 >= r1 {
                    return;
                }
                let np = p1 - p0;
                let xg = &x[(b * g.cin + gi * cpg) * h * w..(b * g.cin + (gi + 1) * cpg) * h * w];
                im2col(xg, (h, w), (ow, p0, p1), ([kh, kw], [sh, sw], [dh, dw], [top, left]), &mut cols[..klen * np]);
                // SAFETY: channels r0..r1 of group gi × pixels p0..p1 of image b are this task's
                // alone.
                unsafe {
                    let o0 = gi * opg + r0;
                    let d = dst.ptr().add((b * g.cout + o0) * ohw + p0);
                    sgemm(
                        (r1 - r0, np, klen),
                        (d, ohw),
                        (self.weight.as_ptr().add(o0 * klen), klen),
                        (cols.as_ptr(), np),
                    );
                    for r in 0..r1 - r0 {
                        let row = std::slice::from_raw_parts_mut(d.add(r * ohw), np);
                        let at = (b * g.cout + o0 + r) * ohw;
                        let c = o0 + r;
                        epilogue(level, row, self.bias[c], self.act.row(c), res.map(|s| &s[at + p0..at + p1]));
                    }
                }
            },
        );
    }
}

/// The im2col block of output pixels `p0..p1` (of rows `ow` wide) from `x` (`c × h × w`, the
/// group's channels): row (channel, ky, kx), one column per output pixel, zeros where the tap
/// reads padding.
#[allow(clippy::type_complexity)]
fn im2col(
    x: &[f32],
    (h, w): (usize, usize),
    (ow, p0, p1): (usize, usize, usize),
    ([kh, kw], [sh, sw], [dh, dw], [top, left]): ([usize; 2], [usize; 2], [usize; 2], [usize; 2]),
    cols: &mut [f32],
) {
    let np = p1 - p0;
    let channels = x.len() / (h * w);
    for ci in 0..channels {
        let plane = &x[ci * h * w..(ci + 1) * h * w];
        for ky in 0..kh {
            for kx in 0..kw {
                let r = (ci * kh + ky) * kw + kx;
                let col = &mut cols[r * np..(r + 1) * np];
                let off = (kx * dw) as isize - left as isize;
                // One output row's run of the block at a time.
                let mut p = p0;
                while p < p1 {
                    let (oy, ox0) = (p / ow, p % ow);
                    let end = p1.min((oy + 1) * ow);
                    let seg = &mut col[p - p0..end - p0];
                    let iy = (oy * sh + ky * dh) as isize - top as isize;
                    if iy < 0 || iy >= h as isize {
                        seg.fill(0.0);
                    } else {
                        let input = &plane[iy as usize * w..(iy as usize + 1) * w];
                        // The run's pixels ox0..ox0 + len read input[ox · sw + off] where that is
                        // inside the row: zeros before and after, a copy (or a strided gather)
                        // between.
                        let (lo, hi) = tap_range(off, w, sw, ow);
                        let len = seg.len();
                        let a = lo.clamp(ox0, ox0 + len) - ox0;
                        let b = hi.clamp(ox0, ox0 + len) - ox0;
                        seg[..a].fill(0.0);
                        seg[b.max(a)..].fill(0.0);
                        if b > a {
                            let first = (((ox0 + a) * sw) as isize + off) as usize;
                            if sw == 1 {
                                seg[a..b].copy_from_slice(&input[first..first + (b - a)]);
                            } else {
                                let src = &input[first..first + (b - a - 1) * sw + 1];
                                for (v, &x) in seg[a..b].iter_mut().zip(src.iter().step_by(sw)) {
                                    *v = x;
                                }
                            }
                        }
                    }
                    p = end;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook convolution, f64 accumulation.
    fn reference(c: &HostConv, x: &[f32], n: usize, h: usize, w: usize, res: Option<&[f32]>) -> Vec<f32> {
        let g = c.geom;
        let (oh, ow) = g.out(h, w);
        let [top, left, _, _] = g.pads(h, w);
        let ([kh, kw], [sh, sw], [dh, dw]) = (g.kernel, g.stride, g.dilation);
        let (cpg, opg) = (g.cin / g.groups, g.cout / g.groups);
        let mut out = vec![0f32; n * g.cout * oh * ow];
        for b in 0..n {
            for o in 0..g.cout {
                let grp = o / opg;
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut s = f64::from(c.bias[o]);
                        for ci in 0..cpg {
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let iy = (oy * sh + ky * dh) as isize - top as isize;
                                    let ix = (ox * sw + kx * dw) as isize - left as isize;
                                    if iy < 0 || ix < 0 || iy as usize >= h || ix as usize >= w {
                                        continue;
                                    }
                                    let xi = ((b * g.cin + grp * cpg + ci) * h + iy as usize) * w + ix as usize;
                                    let wi = ((o * cpg + ci) * kh + ky) * kw + kx;
                                    s += f64::from(x[xi]) * f64::from(c.weight[wi]);
                                }
                            }
                        }
                        let i = ((b * g.cout + o) * oh + oy) * ow + ox;
                        out[i] = c.act.apply(o, s as f32) + res.map_or(0.0, |r| r[i]);
                    }
                }
            }
        }
        out
    }

    fn ramp(len: usize, seed: usize, scale: f32) -> Vec<f32> {
        (0..len).map(|i| (((i * 7919 + seed * 104729) % 1009) as f32 / 504.5 - 1.0) * scale).collect()
    }

    fn check(geom: Geom, act: Act, n: usize, h: usize, w: usize, with_residual: bool) {
        let wlen = geom.cout * geom.cin / geom.groups * geom.kernel[0] * geom.kernel[1];
        let conv = HostConv::new(geom, ramp(wlen, 1, 0.4), Some(ramp(geom.cout, 2, 0.5)), act).expect("valid");
        let x = ramp(n * geom.cin * h * w, 3, 3.0);
        let (oh, ow) = geom.out(h, w);
        let res = with_residual.then(|| ramp(n * geom.cout * oh * ow, 4, 1.0));
        let want = reference(&conv, &x, n, h, w, res.as_deref());
        let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
        let mut first: Option<Vec<f32>> = None;
        for level in [Level::Baseline, Level::Avx2, Level::Avx512] {
            if !level.available() {
                continue;
            }
            let got = conv.forward_at(level, &x, n, h, w, res.as_deref());
            let worst = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(
                worst <= 2e-6 * scale * (wlen / geom.cout).max(1) as f32,
                "{geom:?} at {}: worst {worst}",
                level.name()
            );
            // One thread gives the same values as the pool (each output is one task's sum).
            let single = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
            let alone = single.install(|| conv.forward_at(level, &x, n, h, w, res.as_deref()));
            assert_eq!(alone, got, "{geom:?} at {}: 1 thread differs from the pool", level.name());
            first.get_or_insert(got);
        }
    }

    fn sq(cin: usize, cout: usize, groups: usize, kernel: usize, stride: usize, pad: usize) -> Geom {
        Geom::square(cin, cout, groups, kernel, stride, pad)
    }

    #[test]
    fn pointwise_matches_reference() {
        // Several pixel blocks, a ragged last block, channel blocks at batch 1, a residual.
        check(sq(24, 144, 1, 1, 1, 0), Act::Relu6, 2, 23, 29, false);
        check(sq(144, 24, 1, 1, 1, 0), Act::Identity, 1, 17, 19, true);
        check(sq(160, 960, 1, 1, 1, 0), Act::Relu6, 1, 7, 7, false);
        check(sq(32, 6, 1, 1, 1, 0), Act::PRelu(ramp(6, 5, 0.3)), 3, 5, 5, false);
        check(sq(16, 8, 1, 1, 1, 0), Act::Sigmoid, 1, 9, 4, false);
        check(sq(24, 40, 1, 1, 1, 0), Act::HardSwish(1.0 / 6.0, 0.5), 2, 11, 13, true);
        check(sq(40, 24, 1, 1, 1, 0), Act::Gelu, 1, 12, 10, false);
        check(sq(12, 48, 1, 1, 1, 0), Act::HardSigmoid(0.2, 0.5), 1, 5, 7, false);
    }

    #[test]
    fn winograd_matches_reference() {
        let g = |cin, cout, pad| Geom::square(cin, cout, 1, 3, 1, pad);
        assert!(winograd::applies(&g(16, 16, 1)) && !winograd::applies(&g(8, 16, 1)));
        // Odd sizes (a ragged last tile row and column), no padding, a batch, a residual.
        check(g(16, 16, 1), Act::Relu, 2, 7, 9, false);
        check(g(16, 24, 1), Act::Gelu, 1, 8, 9, true);
        check(g(24, 16, 1), Act::HardSwish(1.0 / 6.0, 0.5), 1, 9, 6, false);
        check(g(32, 24, 0), Act::Identity, 1, 10, 11, true);
        check(g(24, 40, 1), Act::PRelu(ramp(40, 7, 0.2)), 1, 5, 6, false);
        // Several chunks of tiles along a row, TensorFlow SAME and asymmetric padding.
        check(g(16, 16, 1), Act::LeakyRelu(0.1), 1, 4, 301, false);
        let same = Geom { pad: Pad::TfSame, ..g(16, 20, 0) };
        check(same, Act::Relu6, 1, 9, 8, false);
        let skew = Geom { pad: Pad::Explicit([0, 1, 2, 0]), ..g(16, 16, 0) };
        check(skew, Act::Sigmoid, 1, 6, 7, true);
        // One output pixel, an image smaller than a tile.
        check(g(16, 16, 1), Act::Identity, 1, 1, 1, false);
        check(g(16, 16, 0), Act::Identity, 1, 3, 3, false);
    }

    /// Winograd's error bound: on Real-ESRGAN's body shape (64 → 64, 3×3), inputs and weights of
    /// the networks' magnitudes, every output within 1e-5 of the largest output magnitude of the
    /// textbook f64 convolution, and no worse than 2× the direct (im2col) kernel's own error
    /// plus 1e-6 of that magnitude.
    #[test]
    fn winograd_error_is_bounded_against_the_f64_convolution() {
        let geom = Geom::square(64, 64, 1, 3, 1, 1);
        let conv = HostConv::new(geom, ramp(64 * 64 * 9, 1, 0.1), Some(ramp(64, 2, 0.5)), Act::Identity).unwrap();
        assert_eq!(conv.kind, Kind::Winograd);
        let direct = HostConv { kind: Kind::Dense, ..conv.clone() };
        let (h, w) = (33, 47);
        let x = ramp(64 * h * w, 3, 2.0);
        let want = reference(&conv, &x, 1, h, w, None);
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = |got: &[f32]| want.iter().zip(got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        let (wino, im2col) = (worst(&conv.forward(&x, 1, h, w, None)), worst(&direct.forward(&x, 1, h, w, None)));
        assert!(wino <= 1e-5 * scale, "winograd {wino} of {scale}");
        assert!(wino <= 2.0 * im2col + 1e-6 * scale, "winograd {wino}, im2col {im2col}, of {scale}");
        eprintln!("winograd F(2,3) worst {:.2e}, im2col {:.2e} (relative to {scale})", wino / scale, im2col / scale);
    }

    #[test]
    fn depthwise_matches_reference() {
        let g = |c, stride| sq(c, c, c, 3, stride, 1);
        for (h, w) in [(7, 7), (8, 8), (12, 9), (1, 1), (2, 3)] {
            check(g(5, 1), Act::Relu6, 2, h, w, false);
            check(g(5, 2), Act::Relu6, 2, h, w, false);
            check(g(4, 1), Act::PRelu(ramp(4, 6, 0.25)), 1, h, w, true);
            check(g(6, 2), Act::HardSwish(1.0 / 6.0, 0.5), 1, h, w, false);
        }
        // Other kernels at stride 1 (the padded, register-blocked path): several blocks of a row,
        // an odd number of rows, dilation, asymmetric padding, a row narrower than a block.
        let dw = |c, k, pad: [usize; 4], dilation| Geom {
            cin: c,
            cout: c,
            groups: c,
            kernel: [k, k],
            stride: [1, 1],
            dilation: [dilation, dilation],
            pad: Pad::Explicit(pad),
        };
        check(dw(3, 7, [3; 4], 1), Act::Identity, 2, 9, 70, true);
        check(dw(2, 5, [4, 4, 4, 4], 2), Act::Gelu, 1, 11, 40, false);
        check(dw(4, 5, [0, 2, 1, 0], 1), Act::Relu, 1, 8, 33, false);
        check(dw(2, 7, [3; 4], 1), Act::Identity, 1, 3, 5, false);
    }

    #[test]
    fn dense_matches_reference() {
        // MobileNetV2's stem, P-Net's first convs (no padding), an even kernel (O-Net's 2×2).
        check(sq(3, 32, 1, 3, 2, 1), Act::Relu6, 2, 31, 30, false);
        check(sq(3, 10, 1, 3, 1, 0), Act::PRelu(ramp(10, 7, 0.25)), 2, 24, 20, false);
        check(sq(10, 16, 1, 3, 1, 0), Act::Identity, 1, 40, 40, false);
        check(sq(12, 24, 1, 2, 1, 0), Act::Gelu, 1, 21, 17, false);
        check(sq(8, 12, 1, 2, 1, 0), Act::Identity, 1, 6, 6, true);
        // A 3×3 at stride 2 with many channels (several pixel blocks; at stride 1 it would be
        // Winograd's), LeakyReLU.
        check(sq(64, 32, 1, 3, 2, 1), Act::LeakyRelu(0.2), 1, 73, 81, true);
    }

    /// A small deterministic generator for the random shapes.
    struct Lcg(u64);
    impl Lcg {
        fn below(&mut self, n: usize) -> usize {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((self.0 >> 33) as usize) % n
        }
    }

    #[test]
    fn any_shape_matches_the_textbook_convolution() {
        let mut rng = Lcg(7);
        let acts = [Act::Identity, Act::Relu, Act::Clip(-0.5, 1.5), Act::LeakyRelu(0.1), Act::Sigmoid];
        let mut kinds = std::collections::HashSet::new();
        for case in 0..120 {
            let groups = [1, 1, 2, 3, 0][rng.below(5)];
            let (cin, cout, groups) = if groups == 0 {
                let c = 1 + rng.below(9);
                (c, c, c)
            } else {
                (groups * (1 + rng.below(6)), groups * (1 + rng.below(6)), groups)
            };
            let kernel = [1 + rng.below(5), 1 + rng.below(5)];
            let stride = [1 + rng.below(3), 1 + rng.below(3)];
            let dilation = [1 + rng.below(2), 1 + rng.below(2)];
            let pad = if rng.below(4) == 0 {
                Pad::TfSame
            } else {
                Pad::Explicit([rng.below(3), rng.below(3), rng.below(3), rng.below(3)])
            };
            let geom = Geom { cin, cout, groups, kernel, stride, dilation, pad };
            let (h, w) = (1 + rng.below(19), 1 + rng.below(23));
            if geom.output(h, w).is_none() {
                continue;
            }
            kinds.insert(format!("{:?}", geom.kind()));
            let act = acts[case % acts.len()].clone();
            check(geom, act, 1 + rng.below(2), h, w, rng.below(2) == 0);
        }
        // (The pointwise and depthwise 3×3 fast paths have their own tests above.)
        assert!(kinds.contains("Dense") && kinds.contains("Depthwise"), "both general kernels drawn: {kinds:?}");
    }

    #[test]
    fn tf_same_pads_as_tensorflow() {
        // TensorFlow: out = ⌈in/s⌉, the odd pixel of padding after.
        let g = Geom { pad: Pad::TfSame, ..sq(1, 1, 1, 3, 2, 0) };
        assert_eq!(g.pads(8, 7), [0, 1, 1, 1]);
        assert_eq!(g.out(8, 7), (4, 4));
        let g = Geom { pad: Pad::TfSame, ..sq(1, 1, 1, 5, 1, 0) };
        assert_eq!(g.pads(6, 6), [2, 2, 2, 2]);
    }

    #[test]
    fn a_kernel_larger_than_the_input_has_no_output() {
        assert_eq!(sq(1, 1, 1, 5, 1, 0).output(3, 8), None);
        assert!(HostConv::new(sq(4, 6, 4, 3, 1, 1), vec![0.0; 6 * 9], None, Act::Identity).is_none(), "6 % 4 ≠ 0");
    }
}
