//! Fused convolution kernels for gpubackend's CPU device: convolution + bias + activation
//! (+ residual add) in one pass over the output, on NCHW f32 slices. Pure functions; the server's
//! `models::cpu` bridges them to burn flex tensors. A crate of its own so that these loops are built
//! optimised even in the project's dev builds.
//!
//! Three shapes cover the networks we serve:
//! - pointwise (1×1, stride 1, no padding, groups 1): one `gemm` per (image, block of output
//!   channels, block of 256 pixels), the epilogue applied to the block while it is in cache;
//! - depthwise 3×3 (padding 1, stride 1 or 2): per (image, channel) plane, row by row, each kernel
//!   tap a contiguous multiply-add over the row (stride 2 reads the input row split into its even
//!   and odd columns, so every tap is still contiguous);
//! - dense (groups 1, any kernel, stride, padding): im2col of a block of 256 output pixels, then
//!   `gemm`, then the epilogue.
//!
//! Blocks run on rayon's pool (burn flex's pool). The multiply-add loops are compiled three times
//! (baseline x86-64, AVX2+FMA, AVX-512F) and the best one the CPU has is picked at run time, so one
//! binary runs on any x86-64 and uses AVX-512 where it exists; `gemm` dispatches the same way.

use std::mem::MaybeUninit;
use std::sync::OnceLock;

use rayon::prelude::*;

/// The activation after the bias.
#[derive(Debug, Clone, PartialEq)]
pub enum Act {
    Identity,
    /// min(max(x, 0), 6).
    Relu6,
    /// x if x ≥ 0, else αc·x, one α per output channel.
    PRelu(Vec<f32>),
}

/// One output channel's activation.
#[derive(Debug, Clone, Copy)]
enum RowAct {
    Identity,
    Relu6,
    PRelu(f32),
}

impl Act {
    fn row(&self, c: usize) -> RowAct {
        match self {
            Act::Identity => RowAct::Identity,
            Act::Relu6 => RowAct::Relu6,
            Act::PRelu(a) => RowAct::PRelu(a[c]),
        }
    }
}

/// A convolution's shape: square kernel, same stride and padding on both axes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geom {
    pub cin: usize,
    pub cout: usize,
    pub groups: usize,
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
}

impl Geom {
    /// Output height and width for an `h`×`w` input.
    pub fn out(&self, h: usize, w: usize) -> (usize, usize) {
        ((h + 2 * self.pad - self.kernel) / self.stride + 1, (w + 2 * self.pad - self.kernel) / self.stride + 1)
    }

    fn kind(&self) -> Option<Kind> {
        if self.groups == 1 && self.kernel == 1 && self.stride == 1 && self.pad == 0 {
            Some(Kind::Pointwise)
        } else if self.groups == self.cin
            && self.cin == self.cout
            && self.kernel == 3
            && self.pad == 1
            && (self.stride == 1 || self.stride == 2)
        {
            Some(Kind::Depthwise3x3)
        } else if self.groups == 1 {
            Some(Kind::Dense)
        } else {
            None
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Pointwise,
    Depthwise3x3,
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

pub mod hwc;

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
        RowAct::Relu6 => row.iter_mut().for_each(|v| *v = (*v + bias).clamp(0.0, 6.0)),
        RowAct::PRelu(a) => row.iter_mut().for_each(|v| {
            let x = *v + bias;
            *v = if x >= 0.0 { x } else { a * x };
        }),
    }
    if let Some(r) = res {
        row.iter_mut().zip(r).for_each(|(v, &r)| *v += r);
    }
}

fn epilogue(level: Level, row: &mut [f32], bias: f32, act: RowAct, res: Option<&[f32]>) {
    at_level!(level, epilogue_impl(row: &mut [f32], bias: f32, act: RowAct, res: Option<&[f32]>))
}

/// One depthwise 3×3 plane's input and parameters (padding 1, stride 1 or 2).
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

/// Output pixels per task for the gemm-based kernels.
const PIXEL_BLOCK: usize = 256;

/// A convolution with its weights on the host, ready to run fused on NCHW batches.
#[derive(Debug, Clone)]
pub struct HostConv {
    pub geom: Geom,
    kind: Kind,
    /// `cout × cin/groups × k × k`, row-major (PyTorch's layout).
    weight: Vec<f32>,
    bias: Vec<f32>,
    act: Act,
}

impl HostConv {
    /// `None` for shapes these kernels do not cover (grouped but not depthwise 3×3): burn runs those.
    pub fn new(geom: Geom, weight: Vec<f32>, bias: Option<Vec<f32>>, act: Act) -> Option<Self> {
        let kind = geom.kind()?;
        assert_eq!(weight.len(), geom.cout * geom.cin / geom.groups * geom.kernel * geom.kernel, "weight size");
        if let Act::PRelu(a) = &act {
            assert_eq!(a.len(), geom.cout, "one PReLU slope per channel");
        }
        let bias = bias.unwrap_or_else(|| vec![0.0; geom.cout]);
        Some(Self { geom, kind, weight, bias, act })
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
        let len = n * g.cout * oh * ow;
        let mut out = Vec::with_capacity(len);
        let spare = &mut out.spare_capacity_mut()[..len];
        match self.kind {
            Kind::Pointwise => self.pointwise(level, x, n, h * w, residual, spare),
            Kind::Depthwise3x3 => self.depthwise(level, x, h, w, residual, spare),
            Kind::Dense => self.dense(level, x, n, h, w, residual, spare),
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
        let c = self.geom.cin;
        let (oh, ow) = self.geom.out(h, w);
        let (plane_in, plane_out) = (h * w, oh * ow);
        let stride = self.geom.stride;
        out.par_chunks_mut(plane_out).enumerate().with_min_len((4096 / plane_out).max(1)).for_each_init(
            || vec![0f32; w + 1],
            |split, (bc, o)| {
                let ch = bc % c;
                let plane = Plane {
                    x: &x[bc * plane_in..(bc + 1) * plane_in],
                    h,
                    w,
                    k: &self.weight[ch * 9..(ch + 1) * 9],
                    stride,
                    ow,
                    bias: self.bias[ch],
                    act: self.act.row(ch),
                    res: res.map(|r| &r[bc * plane_out..(bc + 1) * plane_out]),
                };
                depthwise_plane(level, &plane, o, split);
            },
        );
    }

    /// Blocks of output channels so that there are at least two tasks per thread where the
    /// pixel blocks alone do not make that many (small late layers, batch 1).
    fn channel_blocks(&self, tasks: usize) -> usize {
        let threads = rayon::current_num_threads();
        let mut blocks = 1;
        while tasks * blocks < 2 * threads && self.geom.cout / (blocks * 2) >= 16 {
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
        let cb = self.channel_blocks(n * pixel_blocks);
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
        let (m, kk) = (g.cout, g.kernel);
        let klen = g.cin * kk * kk;
        let ohw = oh * ow;
        let pixel_blocks = ohw.div_ceil(PIXEL_BLOCK);
        let dst = Out(out.as_mut_ptr().cast::<f32>());
        (0..n * pixel_blocks).into_par_iter().for_each_init(
            || vec![0f32; klen * PIXEL_BLOCK],
            |cols, t| {
                let (b, pb) = (t / pixel_blocks, t % pixel_blocks);
                let (p0, p1) = (pb * PIXEL_BLOCK, ((pb + 1) * PIXEL_BLOCK).min(ohw));
                let np = p1 - p0;
                // im2col: row (ci, ky, kx), column = output pixel; zeros where the tap is padding.
                let xb = &x[b * g.cin * h * w..(b + 1) * g.cin * h * w];
                for ci in 0..g.cin {
                    for ky in 0..kk {
                        for kx in 0..kk {
                            let r = (ci * kk + ky) * kk + kx;
                            let col = &mut cols[r * np..(r + 1) * np];
                            for (i, v) in col.iter_mut().enumerate() {
                                let p = p0 + i;
                                let (oy, ox) = (p / ow, p % ow);
                                let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                                let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                                *v = if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                    xb[(ci * h + iy as usize) * w + ix as usize]
                                } else {
                                    0.0
                                };
                            }
                        }
                    }
                }
                // SAFETY: pixels p0..p1 of image b (every channel) are this task's alone.
                unsafe {
                    let d = dst.ptr().add(b * m * ohw + p0);
                    sgemm((m, np, klen), (d, ohw), (self.weight.as_ptr(), klen), (cols.as_ptr(), np));
                    for r in 0..m {
                        let row = std::slice::from_raw_parts_mut(d.add(r * ohw), np);
                        let at = b * m * ohw + r * ohw;
                        epilogue(level, row, self.bias[r], self.act.row(r), res.map(|s| &s[at + p0..at + p1]));
                    }
                }
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook convolution, f64 accumulation.
    fn reference(c: &HostConv, x: &[f32], n: usize, h: usize, w: usize, res: Option<&[f32]>) -> Vec<f32> {
        let g = c.geom;
        let (oh, ow) = g.out(h, w);
        let (cpg, opg) = (g.cin / g.groups, g.cout / g.groups);
        let mut out = vec![0f32; n * g.cout * oh * ow];
        for b in 0..n {
            for o in 0..g.cout {
                let grp = o / opg;
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut s = f64::from(c.bias[o]);
                        for ci in 0..cpg {
                            for ky in 0..g.kernel {
                                for kx in 0..g.kernel {
                                    let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                                    let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                                    if iy < 0 || ix < 0 || iy as usize >= h || ix as usize >= w {
                                        continue;
                                    }
                                    let xi = ((b * g.cin + grp * cpg + ci) * h + iy as usize) * w + ix as usize;
                                    let wi = ((o * cpg + ci) * g.kernel + ky) * g.kernel + kx;
                                    s += f64::from(x[xi]) * f64::from(c.weight[wi]);
                                }
                            }
                        }
                        let v = s as f32;
                        let v = match &c.act {
                            Act::Identity => v,
                            Act::Relu6 => v.clamp(0.0, 6.0),
                            Act::PRelu(a) => {
                                if v >= 0.0 {
                                    v
                                } else {
                                    a[o] * v
                                }
                            }
                        };
                        let i = ((b * g.cout + o) * oh + oy) * ow + ox;
                        out[i] = v + res.map_or(0.0, |r| r[i]);
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
        let wlen = geom.cout * geom.cin / geom.groups * geom.kernel * geom.kernel;
        let conv = HostConv::new(geom, ramp(wlen, 1, 0.4), Some(ramp(geom.cout, 2, 0.5)), act).expect("supported");
        let x = ramp(n * geom.cin * h * w, 3, 3.0);
        let (oh, ow) = geom.out(h, w);
        let res = with_residual.then(|| ramp(n * geom.cout * oh * ow, 4, 1.0));
        let want = reference(&conv, &x, n, h, w, res.as_deref());
        for level in [Level::Baseline, Level::Avx2, Level::Avx512] {
            if !level.available() {
                continue;
            }
            let got = conv.forward_at(level, &x, n, h, w, res.as_deref());
            let worst = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-4, "{geom:?} at {}: worst {worst}", level.name());
        }
    }

    #[test]
    fn pointwise_matches_reference() {
        let g = |cin, cout| Geom { cin, cout, groups: 1, kernel: 1, stride: 1, pad: 0 };
        // Several pixel blocks, a ragged last block, channel blocks at batch 1, a residual.
        check(g(24, 144), Act::Relu6, 2, 23, 29, false);
        check(g(144, 24), Act::Identity, 1, 17, 19, true);
        check(g(160, 960), Act::Relu6, 1, 7, 7, false);
        check(g(32, 6), Act::PRelu(ramp(6, 5, 0.3)), 3, 5, 5, false);
    }

    #[test]
    fn depthwise_matches_reference() {
        let g = |c, stride| Geom { cin: c, cout: c, groups: c, kernel: 3, stride, pad: 1 };
        for (h, w) in [(7, 7), (8, 8), (12, 9), (1, 1), (2, 3)] {
            check(g(5, 1), Act::Relu6, 2, h, w, false);
            check(g(5, 2), Act::Relu6, 2, h, w, false);
            check(g(4, 1), Act::PRelu(ramp(4, 6, 0.25)), 1, h, w, true);
        }
    }

    #[test]
    fn dense_matches_reference() {
        // MobileNetV2's stem, P-Net's first convs (no padding), an even kernel (O-Net's 2×2).
        check(Geom { cin: 3, cout: 32, groups: 1, kernel: 3, stride: 2, pad: 1 }, Act::Relu6, 2, 31, 30, false);
        check(
            Geom { cin: 3, cout: 10, groups: 1, kernel: 3, stride: 1, pad: 0 },
            Act::PRelu(ramp(10, 7, 0.25)),
            2,
            24,
            20,
            false,
        );
        check(Geom { cin: 10, cout: 16, groups: 1, kernel: 3, stride: 1, pad: 0 }, Act::Identity, 1, 40, 40, false);
        check(Geom { cin: 8, cout: 12, groups: 1, kernel: 2, stride: 1, pad: 0 }, Act::Identity, 1, 6, 6, true);
    }

    #[test]
    fn grouped_but_not_depthwise_is_left_to_burn() {
        let g = Geom { cin: 8, cout: 8, groups: 2, kernel: 3, stride: 1, pad: 1 };
        assert!(HostConv::new(g, vec![0.0; 8 * 4 * 9], None, Act::Identity).is_none());
    }
}
