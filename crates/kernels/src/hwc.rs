//! Channels-last (HWC) trunks for small networks: MTCNN's P-Net, R-Net and O-Net, whose
//! convolutions have few channels (3→10, 10→16, 16→32 …) on large planes, where an im2col + gemm
//! spends its time packing and burn flex's NCHW paths run far below the machine's peak.
//!
//! A [`Trunk`] runs a chain of convolutions (stride 1, no padding, any square kernel, PReLU or no
//! activation) and max-pools (`ceil_mode`, as PyTorch) one image at a time in channels-last layout,
//! so that a convolution is a direct loop: for a block of [`PIXELS`] output pixels of one row and 16
//! output channels, the accumulators stay in registers while the kernel's rows are read as
//! contiguous runs of `k · cin` input values (in HWC the taps `kx` and the channels `ci` of one
//! kernel row are adjacent) against the packed weights `[block][ky][kx][ci][16]`. The bias starts
//! the accumulators and the activation is applied as they are stored. Images run in parallel on
//! rayon's pool; a batch smaller than the pool splits each convolution's rows instead.

use rayon::prelude::*;

use crate::{Act, Level};

/// Output channels per block: the accumulator width (two AVX2 registers, one AVX-512 register).
const LANES: usize = 16;
/// Output pixels per register block (6 × 16 accumulators: 12 of AVX2's 16 registers).
const PIXELS: usize = 6;

/// A convolution with stride 1 and no padding on channels-last images, its weights packed.
#[derive(Debug, Clone)]
pub struct HwcConv {
    pub cin: usize,
    pub cout: usize,
    pub kernel: usize,
    /// `[cout / 16 blocks][ky][kx][ci][16]`, zeros past `cout`.
    packed: Vec<f32>,
    /// Per output channel, padded to whole blocks.
    bias: Vec<f32>,
    /// PReLU slopes (padded), `None` for no activation.
    alpha: Option<Vec<f32>>,
}

impl HwcConv {
    /// `weight`: PyTorch's `cout × cin × k × k`; `act`: `Identity` or `PRelu`.
    pub fn new(cin: usize, cout: usize, kernel: usize, weight: &[f32], bias: Option<&[f32]>, act: &Act) -> Self {
        assert_eq!(weight.len(), cout * cin * kernel * kernel, "weight size");
        let blocks = cout.div_ceil(LANES);
        let klen = kernel * kernel * cin;
        let mut packed = vec![0f32; blocks * klen * LANES];
        for co in 0..cout {
            let (b, l) = (co / LANES, co % LANES);
            for ci in 0..cin {
                for ky in 0..kernel {
                    for kx in 0..kernel {
                        let j = (ky * kernel + kx) * cin + ci;
                        packed[(b * klen + j) * LANES + l] = weight[((co * cin + ci) * kernel + ky) * kernel + kx];
                    }
                }
            }
        }
        let pad = |v: &[f32]| {
            let mut p = v.to_vec();
            p.resize(blocks * LANES, 0.0);
            p
        };
        let bias = bias.map_or_else(
            || vec![0.0; blocks * LANES],
            |b| {
                assert_eq!(b.len(), cout, "bias size");
                pad(b)
            },
        );
        let alpha = match act {
            Act::Identity => None,
            Act::PRelu(a) => {
                assert_eq!(a.len(), cout, "one PReLU slope per channel");
                Some(pad(a))
            }
            other => panic!("channels-last trunks take PReLU or no activation, not {other:?}"),
        };
        Self { cin, cout, kernel, packed, bias, alpha }
    }

    pub fn out(&self, h: usize, w: usize) -> (usize, usize) {
        (h + 1 - self.kernel, w + 1 - self.kernel)
    }

    fn blocks(&self) -> usize {
        self.cout.div_ceil(LANES)
    }

    /// Output rows `rows` of `x` (`h × w × cin`) into `out` (those rows, `ow × cout` each).
    fn rows(&self, level: Level, x: &[f32], w: usize, rows: std::ops::Range<usize>, out: &mut [f32]) {
        match level {
            // SAFETY: the level is available (checked by the trunk), so the CPU has AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 | Level::Avx512 => unsafe { conv_rows_avx2(self, x, w, rows, out) },
            _ => conv_rows_portable(self, x, w, rows, out),
        }
    }

    /// Checks that a `P`-pixel block at output (`oy`, `ox`) reads and writes inside `x` and `out_row`.
    fn check_block<const P: usize>(&self, x: &[f32], w: usize, (oy, ox): (usize, usize), out_row: &[f32]) {
        let (cin, k) = (self.cin, self.kernel);
        assert!(ox + P + k - 1 <= w, "block inside the row");
        assert!(((oy + k - 1) * w + ox + P - 1) * cin + k * cin <= x.len(), "block inside the image");
        assert!((ox + P) * self.cout <= out_row.len(), "block inside the output row");
    }
}

/// The portable path (any x86-64 or other CPU; the compiler's vectorisation of it is poor, hence
/// the AVX2 path below): 16 output channels of `P` adjacent output pixels.
#[inline(always)]
fn conv_block<const P: usize>(
    c: &HwcConv,
    x: &[f32],
    w: usize,
    (oy, ox): (usize, usize),
    block: usize,
    out_row: &mut [f32],
) {
    let (cin, k) = (c.cin, c.kernel);
    let run = k * cin;
    let wblock = &c.packed[block * k * run * LANES..(block + 1) * k * run * LANES];
    let bias: &[f32; LANES] = c.bias[block * LANES..(block + 1) * LANES].try_into().expect("whole block");
    let mut acc = [*bias; P];
    for ky in 0..k {
        let start = ((oy + ky) * w + ox) * cin;
        // The `run` values of each of the P pixels' kernel row: pixel p starts `p · cin` further.
        let xs = &x[start..start + (P - 1) * cin + run];
        let ws = &wblock[ky * run * LANES..(ky + 1) * run * LANES];
        for (j, wv) in ws.chunks_exact(LANES).enumerate() {
            let wv: &[f32; LANES] = wv.try_into().expect("chunk of LANES");
            for (p, a) in acc.iter_mut().enumerate() {
                // SAFETY: p · cin + j < (P − 1) · cin + run = xs.len().
                let v = unsafe { *xs.get_unchecked(p * cin + j) };
                for l in 0..LANES {
                    a[l] += v * wv[l];
                }
            }
        }
    }
    let lanes = (c.cout - block * LANES).min(LANES);
    for (p, a) in acc.iter_mut().enumerate() {
        if let Some(alpha) = &c.alpha {
            let alpha: &[f32; LANES] = alpha[block * LANES..(block + 1) * LANES].try_into().expect("whole block");
            for l in 0..LANES {
                a[l] = if a[l] >= 0.0 { a[l] } else { a[l] * alpha[l] };
            }
        }
        let at = (ox + p) * c.cout + block * LANES;
        out_row[at..at + lanes].copy_from_slice(&a[..lanes]);
    }
}

/// Calls `block(oy, ox, block, full, out_row)` for every block of output rows `rows`: `full` for
/// [`PIXELS`] pixels, else one (the row's tail).
#[inline(always)]
fn for_each_block(
    c: &HwcConv,
    w: usize,
    rows: std::ops::Range<usize>,
    out: &mut [f32],
    mut block: impl FnMut(usize, usize, usize, bool, &mut [f32]),
) {
    let ow = w + 1 - c.kernel;
    for (oy, out_row) in rows.zip(out.chunks_exact_mut(ow * c.cout)) {
        for b in 0..c.blocks() {
            let mut ox = 0;
            while ox < ow {
                let full = ox + PIXELS <= ow;
                block(oy, ox, b, full, out_row);
                ox += if full { PIXELS } else { 1 };
            }
        }
    }
}

fn conv_rows_portable(c: &HwcConv, x: &[f32], w: usize, rows: std::ops::Range<usize>, out: &mut [f32]) {
    for_each_block(c, w, rows, out, |oy, ox, b, full, row| {
        if full { conv_block::<PIXELS>(c, x, w, (oy, ox), b, row) } else { conv_block::<1>(c, x, w, (oy, ox), b, row) }
    });
}

/// The AVX2 + FMA path (on AVX-512 CPUs too): 6 pixels × 16 channels = 12 accumulator registers,
/// two weight registers, one broadcast input value per pixel and kernel tap.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn conv_rows_avx2(c: &HwcConv, x: &[f32], w: usize, rows: std::ops::Range<usize>, out: &mut [f32]) {
    for_each_block(c, w, rows, out, |oy, ox, b, full, row| {
        if full {
            c.check_block::<PIXELS>(x, w, (oy, ox), row);
            // SAFETY: checked just above; this function (and so the closure) has AVX2 and FMA.
            unsafe { avx2::block::<PIXELS>(c, x, w, (oy, ox), b, row) }
        } else {
            c.check_block::<1>(x, w, (oy, ox), row);
            // SAFETY: as above.
            unsafe { avx2::block::<1>(c, x, w, (oy, ox), b, row) }
        }
    });
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{HwcConv, LANES};

    /// `P` pixels × 16 output channels of block `block` at output (`oy`, `ox`).
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA, and `c.check_block::<P>` holds for these arguments.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn block<const P: usize>(
        c: &HwcConv,
        x: &[f32],
        w: usize,
        (oy, ox): (usize, usize),
        block: usize,
        out_row: &mut [f32],
    ) {
        let (cin, k) = (c.cin, c.kernel);
        let run = k * cin;
        // SAFETY (every pointer below): the packed weights, bias and slopes hold whole blocks;
        // the input reads stay inside `x` and the stores inside `out_row` (the caller's check).
        unsafe {
            let wblock = c.packed.as_ptr().add(block * k * run * LANES);
            let bias = c.bias.as_ptr().add(block * LANES);
            let b = [_mm256_loadu_ps(bias), _mm256_loadu_ps(bias.add(8))];
            let mut acc = [b; P];
            for ky in 0..k {
                let xs = x.as_ptr().add(((oy + ky) * w + ox) * cin);
                let ws = wblock.add(ky * run * LANES);
                for j in 0..run {
                    let w0 = _mm256_loadu_ps(ws.add(j * LANES));
                    let w1 = _mm256_loadu_ps(ws.add(j * LANES + 8));
                    for (p, a) in acc.iter_mut().enumerate() {
                        let v = _mm256_broadcast_ss(&*xs.add(p * cin + j));
                        a[0] = _mm256_fmadd_ps(v, w0, a[0]);
                        a[1] = _mm256_fmadd_ps(v, w1, a[1]);
                    }
                }
            }
            if let Some(alpha) = &c.alpha {
                let s = alpha.as_ptr().add(block * LANES);
                let s = [_mm256_loadu_ps(s), _mm256_loadu_ps(s.add(8))];
                let zero = _mm256_setzero_ps();
                for a in acc.iter_mut() {
                    for h in 0..2 {
                        // max(x, 0) + α · min(x, 0)
                        a[h] = _mm256_fmadd_ps(s[h], _mm256_min_ps(a[h], zero), _mm256_max_ps(a[h], zero));
                    }
                }
            }
            let lanes = (c.cout - block * LANES).min(LANES);
            for (p, a) in acc.iter().enumerate() {
                let dst = out_row.as_mut_ptr().add((ox + p) * c.cout + block * LANES);
                if lanes == LANES {
                    _mm256_storeu_ps(dst, a[0]);
                    _mm256_storeu_ps(dst.add(8), a[1]);
                } else {
                    let mut tmp = [0f32; LANES];
                    _mm256_storeu_ps(tmp.as_mut_ptr(), a[0]);
                    _mm256_storeu_ps(tmp.as_mut_ptr().add(8), a[1]);
                    std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst, lanes);
                }
            }
        }
    }
}

/// Max-pool output side for `n` inputs, PyTorch's `ceil_mode` (no padding): the last window may
/// hang over the edge but must start inside it.
pub fn pool_out(n: usize, k: usize, s: usize) -> usize {
    let mut o = (n.saturating_sub(k)).div_ceil(s) + 1;
    if (o - 1) * s >= n {
        o -= 1;
    }
    o
}

/// `k × k` max-pool, stride `s`, `ceil_mode`, of `x` (`h × w × c`) into `out` (`oh × ow × c`).
fn max_pool(x: &[f32], (h, w, c): (usize, usize, usize), k: usize, s: usize, out: &mut [f32]) {
    let (oh, ow) = (pool_out(h, k, s), pool_out(w, k, s));
    for oy in 0..oh {
        let ys = oy * s..(oy * s + k).min(h);
        for ox in 0..ow {
            let xs = ox * s..(ox * s + k).min(w);
            let o = &mut out[(oy * ow + ox) * c..(oy * ow + ox + 1) * c];
            o.fill(f32::NEG_INFINITY);
            for y in ys.clone() {
                for xx in xs.clone() {
                    let v = &x[(y * w + xx) * c..(y * w + xx + 1) * c];
                    o.iter_mut().zip(v).for_each(|(m, &v)| *m = m.max(v));
                }
            }
        }
    }
}

/// One step of a trunk.
#[derive(Debug, Clone)]
pub enum Layer {
    Conv(HwcConv),
    /// Kernel and stride, `ceil_mode`.
    MaxPool(usize, usize),
}

/// A chain of convolutions and max-pools run channels-last, one image at a time.
#[derive(Debug, Clone)]
pub struct Trunk {
    pub cin: usize,
    pub layers: Vec<Layer>,
}

impl Trunk {
    /// Output height, width and channels for an `h × w` input.
    pub fn out_shape(&self, h: usize, w: usize) -> (usize, usize, usize) {
        self.layers.iter().fold((h, w, self.cin), |(h, w, c), l| match l {
            Layer::Conv(conv) => {
                assert_eq!(conv.cin, c, "channels between layers");
                let (oh, ow) = conv.out(h, w);
                (oh, ow, conv.cout)
            }
            Layer::MaxPool(k, s) => (pool_out(h, *k, *s), pool_out(w, *k, *s), c),
        })
    }

    /// 2 × multiply-adds of one `h × w` image.
    pub fn flops(&self, h: usize, w: usize) -> f64 {
        let mut shape = (h, w, self.cin);
        let mut total = 0.0;
        for l in &self.layers {
            let one = Trunk { cin: shape.2, layers: vec![l.clone()] };
            let next = one.out_shape(shape.0, shape.1);
            if let Layer::Conv(c) = l {
                total += 2.0 * (next.0 * next.1 * c.cout * c.kernel * c.kernel * c.cin) as f64;
            }
            shape = next;
        }
        total
    }

    /// `x`: `n × cin × h × w` (NCHW). Returns `n × oh × ow × c` (channels-last).
    pub fn forward(&self, x: &[f32], n: usize, h: usize, w: usize) -> Vec<f32> {
        self.forward_at(Level::detect(), x, n, h, w)
    }

    /// `forward` at a given SIMD level (tests compare the levels).
    pub fn forward_at(&self, level: Level, x: &[f32], n: usize, h: usize, w: usize) -> Vec<f32> {
        assert!(level.available(), "{} is not available on this CPU", level.name());
        assert_eq!(x.len(), n * self.cin * h * w, "input size");
        let (oh, ow, oc) = self.out_shape(h, w);
        assert!(oh > 0 && ow > 0, "input {h}×{w} is smaller than the trunk's window");
        let per_out = oh * ow * oc;
        let mut out = vec![0f32; n * per_out];
        let per_in = self.cin * h * w;
        // Enough images to keep every thread busy: one image per task. Otherwise split each
        // convolution's rows across the pool.
        let split_rows = n < rayon::current_num_threads();
        out.par_chunks_mut(per_out.max(1)).zip(x.par_chunks(per_in.max(1))).for_each_init(
            || (Vec::new(), Vec::new()),
            |(a, b), (o, xi)| self.image(level, xi, (h, w), a, b, o, split_rows),
        );
        out
    }

    /// One image through every layer, ping-ponging between `a` and `b`; the last layer writes `out`.
    #[allow(clippy::too_many_arguments)]
    fn image(
        &self,
        level: Level,
        x: &[f32],
        (h, w): (usize, usize),
        a: &mut Vec<f32>,
        b: &mut Vec<f32>,
        out: &mut [f32],
        split_rows: bool,
    ) {
        // NCHW → HWC.
        let c = self.cin;
        a.clear();
        a.resize(h * w * c, 0.0);
        for ch in 0..c {
            for (i, &v) in x[ch * h * w..(ch + 1) * h * w].iter().enumerate() {
                a[i * c + ch] = v;
            }
        }
        let mut shape = (h, w, c);
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            let (h, w, c) = shape;
            let next = match layer {
                Layer::Conv(conv) => {
                    let (oh, ow) = conv.out(h, w);
                    (oh, ow, conv.cout)
                }
                Layer::MaxPool(k, s) => (pool_out(h, *k, *s), pool_out(w, *k, *s), c),
            };
            let len = next.0 * next.1 * next.2;
            let dst: &mut [f32] = if i == last {
                &mut out[..len]
            } else {
                b.clear();
                b.resize(len, 0.0);
                b
            };
            match layer {
                Layer::Conv(conv) => {
                    let row_len = next.1 * next.2;
                    if split_rows && next.0 > 1 {
                        let chunk = next.0.div_ceil(rayon::current_num_threads() * 2).max(1);
                        dst.par_chunks_mut(row_len * chunk).enumerate().for_each(|(t, o)| {
                            let r0 = t * chunk;
                            conv.rows(level, a, w, r0..(r0 + chunk).min(next.0), o);
                        });
                    } else {
                        conv.rows(level, a, w, 0..next.0, dst);
                    }
                }
                Layer::MaxPool(k, s) => max_pool(a, (h, w, c), *k, *s, dst),
            }
            if i != last {
                std::mem::swap(a, b);
            }
            shape = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(len: usize, seed: usize, scale: f32) -> Vec<f32> {
        (0..len).map(|i| (((i * 7919 + seed * 104729) % 1009) as f32 / 504.5 - 1.0) * scale).collect()
    }

    /// NCHW textbook layers, f64 accumulation.
    fn reference_conv(
        x: &[f32],
        (c, h, w): (usize, usize, usize),
        cout: usize,
        k: usize,
        wt: &[f32],
        bias: &[f32],
        alpha: Option<&[f32]>,
    ) -> Vec<f32> {
        let (oh, ow) = (h + 1 - k, w + 1 - k);
        let mut out = vec![0f32; cout * oh * ow];
        for o in 0..cout {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut s = f64::from(bias[o]);
                    for ci in 0..c {
                        for ky in 0..k {
                            for kx in 0..k {
                                s += f64::from(x[(ci * h + oy + ky) * w + ox + kx])
                                    * f64::from(wt[((o * c + ci) * k + ky) * k + kx]);
                            }
                        }
                    }
                    let v = s as f32;
                    out[(o * oh + oy) * ow + ox] = match alpha {
                        Some(a) if v < 0.0 => a[o] * v,
                        _ => v,
                    };
                }
            }
        }
        out
    }

    fn reference_pool(x: &[f32], (c, h, w): (usize, usize, usize), k: usize, s: usize) -> Vec<f32> {
        let (oh, ow) = (pool_out(h, k, s), pool_out(w, k, s));
        let mut out = vec![f32::NEG_INFINITY; c * oh * ow];
        for ch in 0..c {
            for oy in 0..oh {
                for ox in 0..ow {
                    for y in oy * s..(oy * s + k).min(h) {
                        for xx in ox * s..(ox * s + k).min(w) {
                            let o = &mut out[(ch * oh + oy) * ow + ox];
                            *o = o.max(x[(ch * h + y) * w + xx]);
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn pool_sides_follow_pytorch_ceil_mode() {
        // torch.nn.MaxPool2d(k, s, ceil_mode=True) output sides.
        assert_eq!(pool_out(126, 2, 2), 63);
        assert_eq!(pool_out(127, 2, 2), 64);
        assert_eq!(pool_out(22, 3, 2), 11);
        assert_eq!(pool_out(9, 3, 2), 4);
        assert_eq!(pool_out(46, 3, 2), 23);
        assert_eq!(pool_out(21, 3, 2), 10);
        assert_eq!(pool_out(8, 2, 2), 4);
        assert_eq!(pool_out(3, 3, 2), 1);
    }

    /// A P-Net-like and an O-Net-like chain (odd sizes, ragged pixel blocks, channel counts
    /// below, at and above one block, 2×2 kernels) against the NCHW textbook layers.
    /// Per conv: output channels, kernel, PReLU.
    type Convs = &'static [(usize, usize, bool)];

    #[test]
    fn trunk_matches_reference_layers() {
        let chains: [(Convs, usize, (usize, usize)); 2] = [
            // A k×k/2 pool after the first conv; input 3 × h × w.
            (&[(10, 3, true), (16, 3, true), (32, 3, true), (6, 1, false)], 2, (29, 23)),
            (&[(32, 3, true), (64, 3, true), (28, 2, true)], 3, (24, 24)),
        ];
        for (convs, pool_k, (h, w)) in chains {
            let mut layers = Vec::new();
            let mut params = Vec::new();
            let mut cin = 3;
            for (i, &(cout, k, prelu)) in convs.iter().enumerate() {
                let wt = ramp(cout * cin * k * k, i + 1, 0.3);
                let bias = ramp(cout, i + 11, 0.5);
                let alpha = prelu.then(|| ramp(cout, i + 21, 0.25));
                let act = alpha.clone().map_or(Act::Identity, Act::PRelu);
                layers.push(Layer::Conv(HwcConv::new(cin, cout, k, &wt, Some(&bias), &act)));
                params.push((cin, cout, k, wt, bias, alpha));
                if i == 0 {
                    layers.push(Layer::MaxPool(pool_k, 2));
                }
                cin = cout;
            }
            let trunk = Trunk { cin: 3, layers };
            let (oh, ow, oc) = trunk.out_shape(h, w);
            // One image splits each convolution's rows across the pool; many run one per task.
            for (n, level) in [(1, Level::detect()), (3, Level::Baseline), (3, Level::Avx2), (3, Level::Avx512)] {
                if !level.available() {
                    continue;
                }
                let x = ramp(n * 3 * h * w, 5, 2.0);
                let got = trunk.forward_at(level, &x, n, h, w);
                for b in 0..n {
                    let mut cur = x[b * 3 * h * w..(b + 1) * 3 * h * w].to_vec();
                    let mut shape = (3, h, w);
                    for (i, (ci, co, k, wt, bias, alpha)) in params.iter().enumerate() {
                        assert_eq!(shape.0, *ci);
                        cur = reference_conv(&cur, shape, *co, *k, wt, bias, alpha.as_deref());
                        shape = (*co, shape.1 + 1 - k, shape.2 + 1 - k);
                        if i == 0 {
                            cur = reference_pool(&cur, shape, pool_k, 2);
                            shape = (shape.0, pool_out(shape.1, pool_k, 2), pool_out(shape.2, pool_k, 2));
                        }
                    }
                    assert_eq!(shape, (oc, oh, ow));
                    let mut worst = 0f32;
                    for ch in 0..oc {
                        for y in 0..oh {
                            for xx in 0..ow {
                                let want = cur[(ch * oh + y) * ow + xx];
                                let have = got[b * oh * ow * oc + (y * ow + xx) * oc + ch];
                                worst = worst.max((want - have).abs());
                            }
                        }
                    }
                    assert!(worst < 1e-4, "{convs:?} image {b} at {}: worst {worst}", level.name());
                }
            }
        }
    }
}
