//! Winograd F(2×2, 3×3) for dense 3×3 convolutions at stride 1 (no dilation, one group): each 2×2
//! block of outputs from a 4×4 input tile in 16 multiplies per (input, output channel) instead of
//! 36 — 2.25× fewer multiply-adds, done as 16 `gemm`s of (output channels × input channels) ·
//! (input channels × tiles). Lavin & Gray's transforms:
//!
//! ```text
//!   V = Bᵀ d B      Bᵀ = [1 0 −1 0; 0 1 1 0; 0 −1 1 0; 0 1 0 −1]     (input tile d, 4×4)
//!   U = G g Gᵀ      G  = [1 0 0; ½ ½ ½; ½ −½ ½; 0 0 1]               (kernel g, 3×3)
//!   Y = Aᵀ (U ⊙ V) A,  Aᵀ = [1 1 1 0; 0 1 −1 −1]                      (outputs, 2×2)
//! ```
//!
//! The coefficients are 0, ±½ and ±1, so the transforms add at most a few roundings per value:
//! the tests bound the difference from a textbook f64 convolution.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::{Act, Geom, Level, Out, epilogue, sgemm};

/// Values of a task's transformed inputs and products (kept within L2 with the gemm's packing).
const BUDGET: usize = 128 * 1024;

/// Whether `g` runs as Winograd F(2×2, 3×3): a dense 3×3 at stride 1, enough channels on both
/// sides for the 16 products to be real matrix products.
pub(super) fn applies(g: &Geom) -> bool {
    g.kernel == [3, 3] && g.stride == [1, 1] && g.dilation == [1, 1] && g.groups == 1 && g.cin >= 16 && g.cout >= 16
}

/// The 16 transformed kernels `U[ξ]` (ξ = 4·row + column of the 4×4 tile), each `cout × cin`
/// row-major, from `cout × cin × 3 × 3` weights.
pub(super) fn transform_weights(weight: &[f32], cout: usize, cin: usize) -> Vec<f32> {
    let mut u = vec![0f32; 16 * cout * cin];
    for o in 0..cout {
        for c in 0..cin {
            let g = &weight[(o * cin + c) * 9..(o * cin + c + 1) * 9];
            // G g (4×3), then (G g) Gᵀ (4×4), in f64.
            let mut gg = [[0f64; 3]; 4];
            for j in 0..3 {
                let (a, b, d) = (f64::from(g[j]), f64::from(g[3 + j]), f64::from(g[6 + j]));
                gg[0][j] = a;
                gg[1][j] = 0.5 * (a + b + d);
                gg[2][j] = 0.5 * (a - b + d);
                gg[3][j] = d;
            }
            for (i, row) in gg.iter().enumerate() {
                let [a, b, d] = *row;
                let t = [a, 0.5 * (a + b + d), 0.5 * (a - b + d), d];
                for (j, v) in t.iter().enumerate() {
                    u[((i * 4 + j) * cout + o) * cin + c] = *v as f32;
                }
            }
        }
    }
    u
}

/// The convolution of `x` (`n × cin × h × w`) into `out` (`n × cout × oh × ow`): per task one
/// image's run of tiles along one tile row (two output rows), transformed, multiplied by the 16
/// kernels, transformed back, then bias, activation and residual on its output rows.
#[allow(clippy::too_many_arguments)]
pub(super) fn forward(
    level: Level,
    geom: &Geom,
    u: &[f32],
    bias: &[f32],
    act: &Act,
    x: &[f32],
    (n, h, w): (usize, usize, usize),
    res: Option<&[f32]>,
    out: &mut [MaybeUninit<f32>],
) {
    let (cin, cout) = (geom.cin, geom.cout);
    let (oh, ow) = geom.out(h, w);
    let [top, left, _, _] = geom.pads(h, w);
    let (tile_rows, tile_cols) = (oh.div_ceil(2), ow.div_ceil(2));
    let chunk = (BUDGET / (16 * cin.max(cout))).clamp(16, 256).min(tile_cols);
    let chunks = tile_cols.div_ceil(chunk);
    let ohw = oh * ow;
    let dst = Out(out.as_mut_ptr().cast::<f32>());
    (0..n * tile_rows * chunks).into_par_iter().for_each_init(
        || (vec![0f32; 16 * cin * chunk], vec![0f32; 16 * cout * chunk], vec![0f32; 12 * (2 * chunk + 2)]),
        |(v, m, scratch), task| {
            let (b, rest) = (task / (tile_rows * chunks), task % (tile_rows * chunks));
            let (ty, tc) = (rest / chunks, rest % chunks);
            let (t0, t1) = (tc * chunk, ((tc + 1) * chunk).min(tile_cols));
            let nt = t1 - t0;
            let xb = &x[b * cin * h * w..(b + 1) * cin * h * w];
            // V[ξ] = Bᵀ d B for every (channel, tile): `cin × nt` per ξ.
            let (iy0, ix0) = (2 * ty as isize - top as isize, 2 * t0 as isize - left as isize);
            for c in 0..cin {
                let plane = &xb[c * h * w..(c + 1) * h * w];
                let at = Patch { plane, h, w, iy0, ix0, nt };
                input_rows(level, &at, v, c * nt, cin * nt, scratch);
            }
            // M[ξ] = U[ξ] · V[ξ]: `cout × nt` per ξ.
            for xi in 0..16 {
                // SAFETY: U[ξ] is cout × cin, V[ξ] cin × nt and M[ξ] cout × nt, within their buffers.
                unsafe {
                    sgemm(
                        (cout, nt, cin),
                        (m.as_mut_ptr().add(xi * cout * nt), nt),
                        (u.as_ptr().add(xi * cout * cin), cin),
                        (v.as_ptr().add(xi * cin * nt), nt),
                    );
                }
            }
            // Y = Aᵀ M A per (channel, tile), into output rows 2·ty and 2·ty + 1, columns
            // 2·t0 .. min(2·t1, ow); then the epilogue on those row segments.
            let (y0, rows) = (2 * ty, (oh - 2 * ty).min(2));
            let (x0, x1) = (2 * t0, (2 * t1).min(ow));
            for (o, &bias) in bias.iter().enumerate() {
                // SAFETY: output rows y0..y0+rows, columns x0..x1 of every channel of image b are
                // this task's alone (tasks split images, tile rows and tile columns).
                unsafe {
                    let base = dst.ptr().add((b * cout + o) * ohw);
                    for r in 0..rows {
                        let at = (y0 + r) * ow;
                        let row = std::slice::from_raw_parts_mut(base.add(at + x0), x1 - x0);
                        output_row(level, m, (o * nt, cout * nt, nt), r, row, scratch);
                        let plane = (b * cout + o) * ohw;
                        let res = res.map(|s| &s[plane + at + x0..plane + at + x1]);
                        epilogue(level, row, bias, act.row(o), res);
                    }
                }
            }
        },
    );
}

/// One channel's run of `nt` tiles along a tile row: the input rows `iy0 .. iy0 + 4`, columns
/// `ix0 .. ix0 + 2·nt + 2` of `plane` (`h × w`; zeros outside).
struct Patch<'a> {
    plane: &'a [f32],
    h: usize,
    w: usize,
    iy0: isize,
    ix0: isize,
    nt: usize,
}

/// Bᵀ d B of a channel's run of tiles, vectorised over the tiles: the four input rows combined
/// (Bᵀ, whole rows), each split into its even and odd columns, then B along the row (each of the
/// 16 values of every tile a contiguous run). Value ξ of tile t goes to `v[at + ξ·stride + t]`.
#[inline(always)]
fn input_rows_impl<const FMA: bool>(p: &Patch<'_>, v: &mut [f32], at: usize, stride: usize, scratch: &mut [f32]) {
    let Patch { plane, h, w, iy0, ix0, nt } = *p;
    let len = 2 * nt + 2;
    let (rows, rest) = scratch.split_at_mut(4 * len);
    for (r, row) in rows.chunks_exact_mut(len).enumerate() {
        let y = iy0 + r as isize;
        if y < 0 || y >= h as isize {
            row.fill(0.0);
            continue;
        }
        let src = &plane[y as usize * w..(y as usize + 1) * w];
        // The columns inside the plane: [lo, hi) of the run.
        let lo = (-ix0).clamp(0, len as isize) as usize;
        let hi = (w as isize - ix0).clamp(lo as isize, len as isize) as usize;
        row[..lo].fill(0.0);
        row[lo..hi].copy_from_slice(&src[(ix0 + lo as isize) as usize..(ix0 + hi as isize) as usize]);
        row[hi..].fill(0.0);
    }
    let (t, rest) = rest.split_at_mut(4 * len);
    let (r0, r1, r2, r3) = (&rows[..len], &rows[len..2 * len], &rows[2 * len..3 * len], &rows[3 * len..]);
    let (ta, tb) = t.split_at_mut(2 * len);
    let (t0, t1) = ta.split_at_mut(len);
    let (t2, t3) = tb.split_at_mut(len);
    for x in 0..len {
        t0[x] = r0[x] - r2[x];
        t1[x] = r1[x] + r2[x];
        t2[x] = r2[x] - r1[x];
        t3[x] = r1[x] - r3[x];
    }
    let (e, o) = rest.split_at_mut(nt + 1);
    let o = &mut o[..nt + 1];
    for (i, ti) in t.chunks_exact(len).enumerate() {
        for k in 0..=nt {
            e[k] = ti[2 * k];
            o[k] = ti[2 * k + 1];
        }
        let base = at + 4 * i * stride;
        let (v0, v1, v2, v3) = (base, base + stride, base + 2 * stride, base + 3 * stride);
        for k in 0..nt {
            v[v0 + k] = e[k] - e[k + 1];
        }
        for k in 0..nt {
            v[v1 + k] = o[k] + e[k + 1];
        }
        for k in 0..nt {
            v[v2 + k] = e[k + 1] - o[k];
        }
        for k in 0..nt {
            v[v3 + k] = o[k] - o[k + 1];
        }
    }
}

fn input_rows(level: Level, p: &Patch<'_>, v: &mut [f32], at: usize, stride: usize, scratch: &mut [f32]) {
    at_level!(level, input_rows_impl(p: &Patch<'_>, v: &mut [f32], at: usize, stride: usize, scratch: &mut [f32]))
}

/// Output row `r` (0 or 1) of a channel's run of tiles from its products (`m[at + ξ·stride + t]`,
/// `nt` tiles), Aᵀ M A vectorised over the tiles, into `row` (the run's output columns).
#[inline(always)]
fn output_row_impl<const FMA: bool>(
    m: &[f32],
    (at, stride, nt): (usize, usize, usize),
    r: usize,
    row: &mut [f32],
    scratch: &mut [f32],
) {
    let mm = |xi: usize| &m[at + xi * stride..at + xi * stride + nt];
    // Row r of Aᵀ M: r = 0 sums M rows 0, 1, 2; r = 1 takes 1 − 2 − 3 (per column j of the tile).
    let (s, rest) = scratch.split_at_mut(4 * nt);
    for (j, sj) in s.chunks_exact_mut(nt).enumerate() {
        let (a, b, c) = if r == 0 { (mm(j), mm(4 + j), mm(8 + j)) } else { (mm(4 + j), mm(8 + j), mm(12 + j)) };
        if r == 0 {
            for k in 0..nt {
                sj[k] = a[k] + b[k] + c[k];
            }
        } else {
            for k in 0..nt {
                sj[k] = a[k] - b[k] - c[k];
            }
        }
    }
    // (Aᵀ M) A: the tile's two outputs of this row.
    let (y0, rest) = rest.split_at_mut(nt);
    let y1 = &mut rest[..nt];
    let (s0, s1, s2, s3) = (&s[..nt], &s[nt..2 * nt], &s[2 * nt..3 * nt], &s[3 * nt..]);
    for k in 0..nt {
        y0[k] = s0[k] + s1[k] + s2[k];
        y1[k] = s1[k] - s2[k] - s3[k];
    }
    for (k, pair) in row.chunks_mut(2).enumerate() {
        pair[0] = y0[k];
        if let Some(second) = pair.get_mut(1) {
            *second = y1[k];
        }
    }
}

fn output_row(level: Level, m: &[f32], run: (usize, usize, usize), r: usize, row: &mut [f32], scratch: &mut [f32]) {
    at_level!(level, output_row_impl(m: &[f32], run: (usize, usize, usize), r: usize, row: &mut [f32], scratch: &mut [f32]))
}
