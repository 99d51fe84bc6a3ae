//! Element-wise ops of the graph runner on the CPU, multi-threaded on rayon's pool (burn flex runs
//! them on the calling thread): one value per element (`map`), two same-shape operands (`zip`), or
//! an operand with one value per (image, channel) plane (`per_plane`: biases, scalars, the
//! squeeze-and-excitation scales).

use rayon::prelude::*;

/// Values per task.
const CHUNK: usize = 16 * 1024;

/// An element-wise function of one value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Unary {
    /// The error function ([`erf`]).
    Erf,
    /// x · ½ · (1 + erf(x / √2)), the exact GELU.
    Gelu,
    Sigmoid,
    /// min(max(α·x + β, 0), 1).
    HardSigmoid(f32, f32),
    /// x · min(max(α·x + β, 0), 1).
    HardSwish(f32, f32),
    Relu,
    LeakyRelu(f32),
    Clip(f32, f32),
}

impl Unary {
    #[inline(always)]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Unary::Erf => erf(x),
            Unary::Gelu => x * 0.5 * (1.0 + erf(x / std::f32::consts::SQRT_2)),
            Unary::Sigmoid => sigmoid(x),
            Unary::HardSigmoid(a, b) => (a * x + b).clamp(0.0, 1.0),
            Unary::HardSwish(a, b) => x * (a * x + b).clamp(0.0, 1.0),
            Unary::Relu => x.max(0.0),
            Unary::LeakyRelu(s) => {
                if x >= 0.0 {
                    x
                } else {
                    s * x
                }
            }
            Unary::Clip(lo, hi) => x.max(lo).min(hi),
        }
    }
}

/// The error function as a rational function of x on [−4, 4] (odd degree-13 numerator, even
/// degree-8 denominator; erf is ±1 in f32 beyond), branch-free so the loops vectorise: within
/// 1e-6 of libm's `erff` everywhere (tested), 3–4× faster than it.
#[inline(always)]
#[allow(clippy::excessive_precision)] // the coefficients as fitted
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_2e-10_f32;
    for c in [2.770_681_4e-8, -2.101_024e-6, -5.692_506_4e-5, -7.349_906_3e-4, -2.954_600_1e-3, -1.609_603_3e-2] {
        p = p * x2 + c;
    }
    let mut q = -1.456_607_2e-5_f32;
    for c in [-2.133_740_6e-4, -1.682_827e-3, -7.373_329e-3, -1.426_474e-2] {
        q = q * x2 + c;
    }
    x * p / q
}

/// e^x, branch-free so the loops vectorise (libm's `expf` is a call per value): x = n·ln 2 + r
/// with |r| ≤ ½ ln 2, e^r by Cephes's degree-7 polynomial, 2^n as two powers of two made from
/// exponent bits. Within 2 ulp of libm's `expf` on [−87, 88.7] (tested); x is clamped to that
/// range (e^−87 ≈ 1.6e−38, e^88.7 ≈ 3.3e38).
#[inline(always)]
#[allow(clippy::excessive_precision)] // Cephes's coefficients as published
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.7);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    // ln 2 in two parts, so n · ln 2 is exact in the first.
    let r = x - n * 0.693_359_375 + n * 2.121_944_4e-4;
    let mut p = 1.987_569_1e-4_f32;
    for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 5.000_000_1e-1] {
        p = p * r + c;
    }
    let e = p * r * r + r + 1.0;
    // n is in −126..=128: 2^n as 2^⌊n/2⌋ · 2^⌈n/2⌉, both normal.
    let n = n as i32;
    let pow2 = |k: i32| f32::from_bits(((k + 127) as u32) << 23);
    e * pow2(n >> 1) * pow2(n - (n >> 1))
}

/// 1 / (1 + e^−x) through [`exp`].
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// An element-wise function of two values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binary {
    Add,
    Sub,
    Mul,
    Div,
}

impl Binary {
    #[inline(always)]
    pub fn apply(self, a: f32, b: f32) -> f32 {
        match self {
            Binary::Add => a + b,
            Binary::Sub => a - b,
            Binary::Mul => a * b,
            Binary::Div => a / b,
        }
    }
}

/// `x = f(x)` for every value, in place.
pub fn map_in_place(x: &mut [f32], f: Unary) {
    x.par_chunks_mut(CHUNK).for_each(|x| {
        for v in x {
            *v = f.apply(*v);
        }
    });
}

/// `f(x)` for every value.
pub fn map(x: &[f32], f: Unary) -> Vec<f32> {
    let mut out = x.to_vec();
    map_in_place(&mut out, f);
    out
}

/// `dst = f(dst, other)` value by value (same lengths), or `f(other, dst)` when `swapped`.
pub fn zip_in_place(dst: &mut [f32], other: &[f32], f: Binary, swapped: bool) {
    assert_eq!(dst.len(), other.len(), "operand sizes");
    dst.par_chunks_mut(CHUNK).zip(other.par_chunks(CHUNK)).for_each(|(d, o)| {
        for (d, &y) in d.iter_mut().zip(o) {
            *d = if swapped { f.apply(y, *d) } else { f.apply(*d, y) };
        }
    });
}

/// `f(a, b)` value by value (same lengths).
pub fn zip(a: &[f32], b: &[f32], f: Binary) -> Vec<f32> {
    let mut out = a.to_vec();
    zip_in_place(&mut out, b, f, false);
    out
}

/// `a = f(a, v[p])` for every value of plane `p` of `a` (planes of `plane` values), or
/// `f(v[p], a)` when `swapped`; in place.
pub fn per_plane_in_place(a: &mut [f32], plane: usize, v: &[f32], f: Binary, swapped: bool) {
    assert_eq!(a.len(), plane * v.len(), "one value per plane");
    let min = (CHUNK / plane.max(1)).max(1);
    a.par_chunks_mut(plane.max(1)).zip(v.par_iter()).with_min_len(min).for_each(|(a, &s)| {
        for x in a {
            *x = if swapped { f.apply(s, *x) } else { f.apply(*x, s) };
        }
    });
}

/// `f(a, v[p])` for every value of plane `p` of `a`, or `f(v[p], a)` when `swapped`.
pub fn per_plane(a: &[f32], plane: usize, v: &[f32], f: Binary, swapped: bool) -> Vec<f32> {
    let mut out = a.to_vec();
    per_plane_in_place(&mut out, plane, v, f, swapped);
    out
}

/// Max pooling of each `h × w` plane of `x` with a `k` window, `stride` and `pad` (top, left,
/// bottom, right; padding never wins), output `oh × ow` per plane.
#[allow(clippy::too_many_arguments)]
pub fn max_pool(
    x: &[f32],
    (h, w): (usize, usize),
    k: [usize; 2],
    stride: [usize; 2],
    pad: [usize; 2],
    (oh, ow): (usize, usize),
) -> Vec<f32> {
    let planes = x.len() / (h * w);
    let mut out = vec![f32::NEG_INFINITY; planes * oh * ow];
    // Per output row: the running maximum over the window's rows and columns, a whole row of
    // outputs per tap (contiguous for stride 1, so it vectorises).
    let cols: Vec<(usize, usize, usize)> = (0..k[1])
        .map(|kx| {
            let off = kx as isize - pad[1] as isize;
            let s = stride[1] as isize;
            let lo = if off >= 0 { 0 } else { ((-off + s - 1) / s) as usize };
            let last = w as isize - 1 - off;
            let hi = if last < 0 { 0 } else { ((last / s + 1) as usize).min(ow) };
            (lo.min(hi), hi, (lo as isize * s + off).max(0) as usize)
        })
        .collect();
    out.par_chunks_mut(oh * ow).zip(x.par_chunks(h * w)).for_each(|(o, x)| {
        for (oy, orow) in o.chunks_exact_mut(ow).enumerate() {
            let y0 = (oy * stride[0]) as isize - pad[0] as isize;
            let (ylo, yhi) = (y0.max(0) as usize, ((y0 + k[0] as isize).min(h as isize)).max(0) as usize);
            for row in x[ylo * w..yhi.max(ylo) * w].chunks_exact(w) {
                for &(lo, hi, first) in &cols {
                    if hi <= lo {
                        continue;
                    }
                    let dst = &mut orow[lo..hi];
                    if stride[1] == 1 {
                        dst.iter_mut().zip(&row[first..first + (hi - lo)]).for_each(|(m, &v)| *m = m.max(v));
                    } else {
                        let src = row[first..].iter().step_by(stride[1]);
                        dst.iter_mut().zip(src).for_each(|(m, &v)| *m = m.max(v));
                    }
                }
            }
        }
    });
    out
}

/// Images of `parts` (each `n` images of whole planes of `plane` values) side by side: image
/// `i` of the output is image `i` of every part in turn.
pub fn concat_planes(parts: &[&[f32]], n: usize, plane: usize) -> Vec<f32> {
    let per_image: Vec<usize> = parts.iter().map(|p| p.len() / n.max(1)).collect();
    let image: usize = per_image.iter().sum();
    let mut out = Vec::<f32>::with_capacity(n * image);
    // Tasks of whole planes, so a large part is copied by several threads.
    let step = (CHUNK / plane.max(1)).max(1) * plane.max(1);
    let mut tasks: Vec<(&mut [std::mem::MaybeUninit<f32>], &[f32])> = Vec::new();
    let mut rest = &mut out.spare_capacity_mut()[..n * image];
    for i in 0..n {
        for (part, &len) in parts.iter().zip(&per_image) {
            let (dst, tail) = rest.split_at_mut(len);
            rest = tail;
            tasks.extend(dst.chunks_mut(step).zip(part[i * len..(i + 1) * len].chunks(step)));
        }
    }
    tasks.into_par_iter().for_each(|(d, s)| {
        for (d, &s) in d.iter_mut().zip(s) {
            d.write(s);
        }
    });
    // SAFETY: the tasks wrote every one of the n · image values.
    unsafe { out.set_len(n * image) };
    out
}

/// Planes of `kh·kw` channels (`h × w` each) spread to cells: output plane `p` (`kh·h × kw·w`)
/// takes input channel `p·kh·kw + ky·kw + kx`'s pixel (y, x) at (y·kh + ky, x·kw + kx).
pub fn spread_cells(x: &[f32], (h, w): (usize, usize), [kh, kw]: [usize; 2]) -> Vec<f32> {
    let (oh, ow) = (h * kh, w * kw);
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(oh * ow).enumerate().for_each(|(plane, dst)| {
        for ky in 0..kh {
            for kx in 0..kw {
                let from = &x[(plane * kh * kw + ky * kw + kx) * h * w..][..h * w];
                for (y, row) in from.chunks_exact(w).enumerate() {
                    let line = &mut dst[(y * kh + ky) * ow..][..ow];
                    for (x, &v) in row.iter().enumerate() {
                        line[x * kw + kx] = v;
                    }
                }
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_match_their_definitions() {
        let x: Vec<f32> = (0..40_000).map(|i| (i as f32 - 20_000.0) / 3000.0).collect();
        let y: Vec<f32> = x.iter().map(|v| v * 0.5 + 1.0).collect();
        assert_eq!(map(&x, Unary::Relu), x.iter().map(|v| v.max(0.0)).collect::<Vec<_>>());
        // Hard swish as exporters write it: x · relu6(x + 3) / 6.
        let hs = map(&x, Unary::HardSwish(1.0 / 6.0, 0.5));
        for (i, v) in [(0, -6.666_667), (11_000, -3.0), (21_500, 0.5), (35_000, 5.0), (39_999, 6.666_333)] {
            let want = v * (v + 3.0f32).clamp(0.0, 6.0) / 6.0;
            assert!((hs[i] - want).abs() <= 1e-6 * want.abs().max(1.0), "hard swish({v}) = {} not {want}", hs[i]);
        }
        let erf = map(&x, Unary::Erf);
        // erf(x) against its series / bounds at a few points, and the odd symmetry.
        assert!((erf[20_000 + 3000] - 0.842_700_8).abs() < 1e-6, "erf(1) = {}", erf[23_000]);
        assert!((erf[20_000 - 3000] + 0.842_700_8).abs() < 1e-6);
        assert_eq!(zip(&x, &y, Binary::Sub), x.iter().zip(&y).map(|(a, b)| a - b).collect::<Vec<_>>());
        let planes = per_plane(&x, 10_000, &[1.0, 2.0, 3.0, 4.0], Binary::Div, true);
        assert_eq!(planes[10_001], 2.0 / x[10_001]);
        let planes = per_plane(&x, 10_000, &[1.0, 2.0, 3.0, 4.0], Binary::Mul, false);
        assert_eq!(planes[35_000], x[35_000] * 4.0);
        // Two images of 2 and 1 planes of 10 000 values, and 2 images of 1 plane: 2 × 3 planes.
        let (a, b) = (&x[..], &y[..20_000]);
        let joined = concat_planes(&[a, b], 2, 10_000);
        let want: Vec<f32> = [&a[..20_000], &b[..10_000], &a[20_000..], &b[10_000..]].concat();
        assert_eq!(joined, want);
        // One plane of 2 × 3 pixels in 2×2 cells: channel ky·2 + kx to (2y + ky, 2x + kx).
        let cells: Vec<f32> = (0..24).map(|i| i as f32).collect();
        let spread = spread_cells(&cells, (2, 3), [2, 2]);
        assert_eq!(&spread[..6], &[0.0, 6.0, 1.0, 7.0, 2.0, 8.0]);
        assert_eq!(&spread[6..12], &[12.0, 18.0, 13.0, 19.0, 14.0, 20.0]);
        assert_eq!(spread[23], 23.0);
    }

    #[test]
    fn exp_is_within_2_ulp_of_libm_and_sigmoid_within_2e_7() {
        let ulps = |a: f32, b: f32| (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs();
        let worst =
            (-870_000..=887_000).map(|i| i as f32 / 10_000.0).map(|x| ulps(exp(x), libm::expf(x))).max().unwrap_or(0);
        assert!(worst <= 2, "exp off by {worst} ulp");
        let worst = (-200_000..=200_000)
            .map(|i| i as f32 / 10_000.0)
            .map(|x| (sigmoid(x) - 1.0 / (1.0 + libm::expf(-x))).abs())
            .fold(0f32, f32::max);
        assert!(worst <= 2e-7, "sigmoid off by {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-200.0) < 1e-37 && exp(200.0) > 3e38);
    }

    #[test]
    fn erf_is_within_1e_6_of_libm() {
        let worst = (-60_000..=60_000)
            .map(|i| i as f32 / 10_000.0)
            .map(|x| (erf(x) - libm::erff(x)).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-6, "worst {worst}");
    }

    #[test]
    fn max_pool_matches_a_direct_window_maximum() {
        let (h, w) = (7, 9);
        let x: Vec<f32> = (0..2 * h * w).map(|i| ((i * 37) % 23) as f32 - 11.0).collect();
        // 3×3, stride 2, padding 1: ⌊(7 + 2 − 3) / 2⌋ + 1 = 4 rows, 5 columns; 2×2 stride 2 in
        // ceil mode (the last window hangs over the edge): 4 × 5; 2×2 stride 1 with the output
        // as large as the input (PP-HGNet's stem pads after): 7 × 9.
        for (k, s, pad, (oh, ow)) in [(3, 2, 1, (4, 5)), (2, 2, 0, (4, 5)), (2, 1, 0, (7, 9)), (3, 1, 1, (7, 9))] {
            let got = max_pool(&x, (h, w), [k, k], [s, s], [pad, pad], (oh, ow));
            for p in 0..2 {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut m = f32::NEG_INFINITY;
                        for ky in 0..k {
                            for kx in 0..k {
                                let (iy, ix) =
                                    ((oy * s + ky) as isize - pad as isize, (ox * s + kx) as isize - pad as isize);
                                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                    m = m.max(x[p * h * w + iy as usize * w + ix as usize]);
                                }
                            }
                        }
                        assert_eq!(got[(p * oh + oy) * ow + ox], m, "k {k} s {s} pad {pad} at {oy}, {ox}");
                    }
                }
            }
        }
    }
}
