//! The MTCNN cascade's logic around the three networks (facenet-pytorch 2.6.0's `detect_face`, step
//! by step): image pyramid, P-Net windows → boxes, NMS, box regression, squaring, crops for the next
//! network, landmarks. Pure functions; the networks run elsewhere (models::mtcnn), so each stage's
//! crops can be batched across requests. Boxes are pixels `[x1, y1, x2, y2]` of the original image.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

use super::decode::DecodedImage;
use crate::models::ForwardError;
use crate::models::mtcnn::{FaceNets, NetOutput, ONET_SIZE, RNET_SIZE};

/// Detector settings; the defaults are facenet-pytorch's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DetectParams {
    /// Smallest face side in pixels that the pyramid looks for.
    pub min_face: f64,
    /// Face-probability thresholds of P-Net, R-Net and O-Net.
    pub thresholds: [f32; 3],
    /// Scale step between pyramid levels.
    pub factor: f64,
}

impl Default for DetectParams {
    fn default() -> Self {
        Self { min_face: 20.0, thresholds: [0.6, 0.7, 0.7], factor: 0.709 }
    }
}

/// One pyramid level: the image scaled by `scale` to `width × height`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Level {
    pub scale: f64,
    pub width: usize,
    pub height: usize,
}

/// A box with its score and the regression the network proposed for it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub bbox: [f32; 4],
    pub score: f32,
    pub reg: [f32; 4],
}

/// A detected face: box, O-Net probability, five landmarks (eyes, nose, mouth corners) as (x, y).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Face {
    pub bbox: [f32; 4],
    pub score: f32,
    pub landmarks: [[f32; 2]; 5],
}

/// Overlap measure of an NMS pass: torchvision's IoU (stages 1 and 2) or facenet-pytorch's "Min"
/// with +1 pixel areas (stage 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlap {
    Union,
    MinPlusOne,
}

/// Pyramid scales `m · factor^k` (m = 12 / min_face) while the shorter side stays ≥ 12 pixels.
pub fn pyramid(width: u32, height: u32, params: &DetectParams) -> Vec<Level> {
    let (w, h) = (f64::from(width), f64::from(height));
    let m = 12.0 / params.min_face;
    let mut min_side = w.min(h) * m;
    let mut scale = m;
    let mut levels = Vec::new();
    while min_side >= 12.0 {
        levels.push(Level { scale, width: (w * scale + 1.0) as usize, height: (h * scale + 1.0) as usize });
        scale *= params.factor;
        min_side *= params.factor;
    }
    levels
}

/// Index windows of adaptive average pooling from `n_in` to `n_out` (torch's rule).
fn area_windows(n_in: usize, n_out: usize) -> Vec<(usize, usize)> {
    (0..n_out).map(|i| ((i * n_in) / n_out, ((i + 1) * n_in).div_ceil(n_out))).collect()
}

/// The region `[x0, x1) × [y0, y1)` of `img` resized to `out_w × out_h` by area interpolation
/// (torch's `interpolate(mode="area")`), normalised `(x − 127.5) × 0.0078125`, planar RGB (3·h·w).
pub fn area_resize(img: &DecodedImage, region: [usize; 4], out_w: usize, out_h: usize) -> Vec<f32> {
    let [x0, y0, x1, y1] = region;
    let stride = img.width as usize * 3;
    let cols = area_windows(x1 - x0, out_w);
    let rows = area_windows(y1 - y0, out_h);
    // Columns first, per source row: (region rows) × out_w × 3 sums.
    let mut by_col = vec![0f32; (y1 - y0) * out_w * 3];
    for y in y0..y1 {
        let src = &img.rgb[y * stride..(y + 1) * stride];
        let dst = &mut by_col[(y - y0) * out_w * 3..(y - y0 + 1) * out_w * 3];
        for (o, &(a, b)) in cols.iter().enumerate() {
            let mut acc = [0f32; 3];
            for x in x0 + a..x0 + b {
                for c in 0..3 {
                    acc[c] += f32::from(src[x * 3 + c]);
                }
            }
            for c in 0..3 {
                dst[o * 3 + c] = acc[c] / (b - a) as f32;
            }
        }
    }
    let plane = out_w * out_h;
    let mut out = vec![0f32; 3 * plane];
    for (oy, &(a, b)) in rows.iter().enumerate() {
        for ox in 0..out_w {
            for c in 0..3 {
                let sum: f32 = (a..b).map(|r| by_col[(r * out_w + ox) * 3 + c]).sum();
                out[c * plane + oy * out_w + ox] = (sum / (b - a) as f32 - 127.5) * 0.0078125;
            }
        }
    }
    out
}

/// The input of P-Net for one level: the whole image at the level's size.
pub fn level_input(img: &DecodedImage, level: &Level) -> Vec<f32> {
    area_resize(img, [0, 0, img.width as usize, img.height as usize], level.width, level.height)
}

/// The P-Net window at level-map position `(x, y)` (stride 2, cell 12) as a box in original
/// pixels, with its regression read from map index `i` of the `reg` planes.
fn window_candidate(reg: &[f32], plane: usize, i: usize, (x, y): (usize, usize), scale: f64, score: f32) -> Candidate {
    let (xf, yf) = (x as f64, y as f64);
    Candidate {
        bbox: [
            ((2.0 * xf + 1.0) / scale).floor() as f32,
            ((2.0 * yf + 1.0) / scale).floor() as f32,
            ((2.0 * xf + 12.0) / scale).floor() as f32,
            ((2.0 * yf + 12.0) / scale).floor() as f32,
        ],
        score,
        reg: [reg[i], reg[plane + i], reg[2 * plane + i], reg[3 * plane + i]],
    }
}

/// P-Net maps of one level → windows with face probability ≥ `threshold` (stride 2, cell 12), as
/// boxes in original pixels. `reg` is (4, h, w) and `prob` (2, h, w) of one image.
pub fn pnet_candidates(reg: &[f32], prob: &[f32], map: (usize, usize), scale: f64, threshold: f32) -> Vec<Candidate> {
    let (h, w) = map;
    let plane = h * w;
    let mut out = Vec::new();
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            let p = prob[plane + i];
            if p >= threshold {
                out.push(window_candidate(reg, plane, i, (x, y), scale, p));
            }
        }
    }
    out
}

/// One fixed-size P-Net input cut from a pyramid level: tiles let P-Net batch across images and
/// levels of any size. Tiles start every `canvas − 10` pixels, so their output maps (side
/// `canvas / 2 − 5`) partition the level's map exactly; the part of a tile beyond the level is
/// zero (the normalised mid-grey) and its windows are dropped. Only windows wholly inside the level
/// count: on an odd-sized level that drops the one partial (ceil-mode) column or row the whole-level
/// pass would also have, a difference measured by the detector test.
#[derive(Debug, Clone, PartialEq)]
pub struct Tile {
    pub level: usize,
    /// The tile's first output position in the level's map (x, y).
    pub origin: (usize, usize),
    /// Planar RGB canvas × canvas, normalised.
    pub input: Vec<f32>,
}

/// Windows wholly inside a level of `side` pixels (P-Net: 12-pixel window, stride 2).
pub fn level_map_side(side: usize) -> usize {
    if side < 12 { 0 } else { (side - 12) / 2 + 1 }
}

/// The pyramid of `img` cut into `canvas`² tiles.
pub fn pyramid_tiles(img: &DecodedImage, params: &DetectParams, canvas: usize) -> (Vec<Level>, Vec<Tile>) {
    let levels = pyramid(img.width, img.height, params);
    let map = crate::models::pnet_map_side(canvas);
    let step = canvas - 10;
    let mut tiles = Vec::new();
    for (li, level) in levels.iter().enumerate() {
        let (w, h) = (level.width, level.height);
        let (mw, mh) = (level_map_side(w), level_map_side(h));
        if mw == 0 || mh == 0 {
            continue;
        }
        let plane = level_input(img, level);
        for ty in 0..mh.div_ceil(map) {
            for tx in 0..mw.div_ceil(map) {
                let (x0, y0) = (tx * step, ty * step);
                let mut input = vec![0f32; 3 * canvas * canvas];
                let (cw, ch) = (canvas.min(w - x0), canvas.min(h - y0));
                for c in 0..3 {
                    for y in 0..ch {
                        let src = c * w * h + (y0 + y) * w + x0;
                        let dst = c * canvas * canvas + y * canvas;
                        input[dst..dst + cw].copy_from_slice(&plane[src..src + cw]);
                    }
                }
                tiles.push(Tile { level: li, origin: (tx * map, ty * map), input });
            }
        }
    }
    (levels, tiles)
}

/// P-Net's output for one tile (`reg` map then `prob` maps, side `map`) → the windows over
/// `threshold` that lie wholly inside the level, as boxes in original pixels.
pub fn tile_candidates(output: &[f32], map: usize, tile: &Tile, level: &Level, threshold: f32) -> Vec<Candidate> {
    let plane = map * map;
    let (mw, mh) = (level_map_side(level.width), level_map_side(level.height));
    let (reg, prob) = output.split_at(4 * plane);
    let mut out = Vec::new();
    for y in 0..map {
        for x in 0..map {
            let (lx, ly) = (tile.origin.0 + x, tile.origin.1 + y);
            let i = y * map + x;
            let p = prob[plane + i];
            if lx >= mw || ly >= mh || p < threshold {
                continue;
            }
            out.push(window_candidate(reg, plane, i, (lx, ly), level.scale, p));
        }
    }
    out
}

/// One crop per box for the next network (`None` where a box has no pixels inside the image).
pub fn crop_each(img: &DecodedImage, boxes: &[Candidate], size: usize) -> Vec<Option<Vec<f32>>> {
    boxes.iter().map(|c| crop_region(c.bbox, img.width, img.height).map(|r| area_resize(img, r, size, size))).collect()
}

/// Greedy non-maximum suppression by descending score (ties keep input order); returns the kept
/// indices in that order.
pub fn nms(boxes: &[[f32; 4]], scores: &[f32], threshold: f32, overlap: Overlap) -> Vec<usize> {
    let add = if overlap == Overlap::MinPlusOne { 1.0 } else { 0.0 };
    let area = |b: &[f32; 4]| (b[2] - b[0] + add) * (b[3] - b[1] + add);
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut keep = Vec::new();
    let mut suppressed = vec![false; boxes.len()];
    for (k, &i) in order.iter().enumerate() {
        if suppressed[i] {
            continue;
        }
        keep.push(i);
        let a = &boxes[i];
        for &j in &order[k + 1..] {
            if suppressed[j] {
                continue;
            }
            let b = &boxes[j];
            let iw = (a[2].min(b[2]) - a[0].max(b[0]) + add).max(0.0);
            let ih = (a[3].min(b[3]) - a[1].max(b[1]) + add).max(0.0);
            let inter = iw * ih;
            let o = match overlap {
                Overlap::Union => inter / (area(a) + area(b) - inter),
                Overlap::MinPlusOne => inter / area(a).min(area(b)),
            };
            if o > threshold {
                suppressed[j] = true;
            }
        }
    }
    keep
}

/// Makes a box square around its centre (side = the longer side).
pub fn rerec(b: [f32; 4]) -> [f32; 4] {
    let (w, h) = (b[2] - b[0], b[3] - b[1]);
    let side = w.max(h);
    let x1 = b[0] + w * 0.5 - side * 0.5;
    let y1 = b[1] + h * 0.5 - side * 0.5;
    [x1, y1, x1 + side, y1 + side]
}

/// R-Net / O-Net box regression (sizes with +1, as facenet-pytorch's `bbreg`).
pub fn bbreg(b: [f32; 4], reg: [f32; 4]) -> [f32; 4] {
    let (w, h) = (b[2] - b[0] + 1.0, b[3] - b[1] + 1.0);
    [b[0] + reg[0] * w, b[1] + reg[1] * h, b[2] + reg[2] * w, b[3] + reg[3] * h]
}

/// Stage 1 after P-Net: NMS 0.5 within each level, 0.7 over all levels, P-Net's regression
/// (sizes without +1), squared.
pub fn stage1(levels: Vec<Vec<Candidate>>) -> Vec<Candidate> {
    let mut all = Vec::new();
    for level in levels {
        let boxes: Vec<[f32; 4]> = level.iter().map(|c| c.bbox).collect();
        let scores: Vec<f32> = level.iter().map(|c| c.score).collect();
        all.extend(nms(&boxes, &scores, 0.5, Overlap::Union).into_iter().map(|i| level[i]));
    }
    let boxes: Vec<[f32; 4]> = all.iter().map(|c| c.bbox).collect();
    let scores: Vec<f32> = all.iter().map(|c| c.score).collect();
    nms(&boxes, &scores, 0.7, Overlap::Union)
        .into_iter()
        .map(|i| {
            let Candidate { bbox: b, score, reg: r } = all[i];
            let (w, h) = (b[2] - b[0], b[3] - b[1]);
            let moved = [b[0] + r[0] * w, b[1] + r[1] * h, b[2] + r[2] * w, b[3] + r[3] * h];
            Candidate { bbox: rerec(moved), score, reg: [0.0; 4] }
        })
        .collect()
}

/// The pixels a box crops (facenet-pytorch's `pad`: truncate, clip to 1..=w / 1..=h, then the
/// 1-based inclusive range as `[x − 1, ex)`); `None` when nothing is left.
pub fn crop_region(b: [f32; 4], width: u32, height: u32) -> Option<[usize; 4]> {
    let x = (b[0].trunc() as i64).max(1);
    let y = (b[1].trunc() as i64).max(1);
    let ex = (b[2].trunc() as i64).min(i64::from(width));
    let ey = (b[3].trunc() as i64).min(i64::from(height));
    (ex > x - 1 && ey > y - 1).then(|| [(x - 1) as usize, (y - 1) as usize, ex as usize, ey as usize])
}

/// The next network's inputs for `boxes`: crops resized to `size`², with the indices of the boxes
/// that had pixels to crop.
pub fn crops(img: &DecodedImage, boxes: &[Candidate], size: usize) -> (Vec<f32>, Vec<usize>) {
    let mut data = Vec::with_capacity(boxes.len() * 3 * size * size);
    let mut kept = Vec::with_capacity(boxes.len());
    for (i, crop) in crop_each(img, boxes, size).into_iter().enumerate() {
        if let Some(crop) = crop {
            data.extend(crop);
            kept.push(i);
        }
    }
    (data, kept)
}

/// Stage 2 after R-Net (`reg` N×4, `prob` N×2 for the boxes cropped): keep p > t2, NMS 0.7,
/// regression, squared.
pub fn stage2(boxes: &[Candidate], reg: &[f32], prob: &[f32], threshold: f32) -> Vec<Candidate> {
    let passed: Vec<Candidate> = boxes
        .iter()
        .enumerate()
        .filter(|&(i, _)| prob[i * 2 + 1] > threshold)
        .map(|(i, c)| Candidate {
            bbox: c.bbox,
            score: prob[i * 2 + 1],
            reg: [reg[i * 4], reg[i * 4 + 1], reg[i * 4 + 2], reg[i * 4 + 3]],
        })
        .collect();
    let b: Vec<[f32; 4]> = passed.iter().map(|c| c.bbox).collect();
    let s: Vec<f32> = passed.iter().map(|c| c.score).collect();
    nms(&b, &s, 0.7, Overlap::Union)
        .into_iter()
        .map(|i| Candidate { bbox: rerec(bbreg(passed[i].bbox, passed[i].reg)), score: passed[i].score, reg: [0.0; 4] })
        .collect()
}

/// Stage 3 after O-Net (`reg` N×4, `landmarks` N×10, `prob` N×2): keep p > t3, landmarks from the
/// box before regression, regression, NMS 0.7 with the "Min" overlap.
pub fn stage3(boxes: &[Candidate], reg: &[f32], landmarks: &[f32], prob: &[f32], threshold: f32) -> Vec<Face> {
    let mut faces = Vec::new();
    for (i, c) in boxes.iter().enumerate() {
        let p = prob[i * 2 + 1];
        if p <= threshold {
            continue;
        }
        let b = c.bbox;
        let (w, h) = (b[2] - b[0] + 1.0, b[3] - b[1] + 1.0);
        let l = &landmarks[i * 10..i * 10 + 10];
        let points = std::array::from_fn(|k| [w * l[k] + b[0] - 1.0, h * l[5 + k] + b[1] - 1.0]);
        let r = [reg[i * 4], reg[i * 4 + 1], reg[i * 4 + 2], reg[i * 4 + 3]];
        faces.push(Face { bbox: bbreg(b, r), score: p, landmarks: points });
    }
    let b: Vec<[f32; 4]> = faces.iter().map(|f| f.bbox).collect();
    let s: Vec<f32> = faces.iter().map(|f| f.score).collect();
    nms(&b, &s, 0.7, Overlap::MinPlusOne).into_iter().map(|i| faces[i]).collect()
}

/// The cascade's networks and CPU steps, as [`cascade`] drives them: the one MTCNN cascade of the
/// server (each network through its batcher, the CPU steps on the preprocessing pool:
/// `infer::face`), the tools and the tests (in place: [`InPlace`]).
pub trait CascadeRunner {
    type Error;
    /// The pyramid's levels and their `canvas`² tiles.
    fn tiles(
        &self,
        image: Arc<DecodedImage>,
        params: DetectParams,
        canvas: usize,
    ) -> impl Future<Output = Result<(Vec<Level>, Vec<Tile>), Self::Error>>;
    /// One `size`² crop per box; `None` where a box has no pixels.
    fn crops(
        &self,
        image: Arc<DecodedImage>,
        boxes: Vec<Candidate>,
        size: usize,
    ) -> impl Future<Output = Result<Vec<Option<Vec<f32>>>, Self::Error>>;
    /// P-Net on tiles: per tile `reg` (4 × m × m) then `prob` (2 × m × m).
    fn pnet(&self, tiles: Vec<Vec<f32>>) -> impl Future<Output = Result<Vec<Vec<f32>>, Self::Error>>;
    /// R-Net on 24² crops: per crop `reg` (4) then `prob` (2).
    fn rnet(&self, crops: Vec<Vec<f32>>) -> impl Future<Output = Result<Vec<Vec<f32>>, Self::Error>>;
    /// O-Net on 48² crops: per crop `reg` (4), `landmarks` (10), `prob` (2).
    fn onet(&self, crops: Vec<Vec<f32>>) -> impl Future<Output = Result<Vec<Vec<f32>>, Self::Error>>;
}

/// The cascade on one image: P-Net on fixed `canvas`² tiles of every pyramid level (so tiles of
/// all images batch together), stage 1, then [`refine`]. The faces before the answer's filter.
pub async fn cascade<R: CascadeRunner>(
    image: Arc<DecodedImage>,
    params: DetectParams,
    canvas: usize,
    r: &R,
) -> Result<Vec<Face>, R::Error> {
    let (levels, tiles) = r.tiles(image.clone(), params, canvas).await?;
    let map = crate::models::pnet_map_side(canvas);
    let outputs = r.pnet(tiles.iter().map(|t| t.input.clone()).collect()).await?;
    let mut per_level = vec![Vec::new(); levels.len()];
    for (tile, out) in tiles.iter().zip(outputs) {
        per_level[tile.level].extend(tile_candidates(&out, map, tile, &levels[tile.level], params.thresholds[0]));
    }
    refine(image, params, r, stage1(per_level)).await
}

/// Stages 2 and 3 (R-Net on 24² crops, O-Net on 48² crops) on stage 1's boxes.
async fn refine<R: CascadeRunner>(
    image: Arc<DecodedImage>,
    params: DetectParams,
    r: &R,
    boxes: Vec<Candidate>,
) -> Result<Vec<Face>, R::Error> {
    let crops = r.crops(image.clone(), boxes.clone(), RNET_SIZE).await?;
    let (boxes, crops) = kept(boxes, crops);
    let (reg, prob) = split_heads(r.rnet(crops).await?, &[4, 2]);
    let boxes = stage2(&boxes, &reg[0], &prob, params.thresholds[1]);
    let crops = r.crops(image, boxes.clone(), ONET_SIZE).await?;
    let (boxes, crops) = kept(boxes, crops);
    let (heads, prob) = split_heads(r.onet(crops).await?, &[4, 10, 2]);
    Ok(stage3(&boxes, &heads[0], &heads[1], &prob, params.thresholds[2]))
}

/// Boxes that had pixels to crop, and their crops.
fn kept(boxes: Vec<Candidate>, crops: Vec<Option<Vec<f32>>>) -> (Vec<Candidate>, Vec<Vec<f32>>) {
    boxes.into_iter().zip(crops).filter_map(|(b, c)| c.map(|c| (b, c))).unzip()
}

/// Per-item outputs laid side by side (`widths` per head) → one flat array per head except the
/// last, and the last (the probabilities) apart.
pub fn split_heads(outputs: Vec<Vec<f32>>, widths: &[usize]) -> (Vec<Vec<f32>>, Vec<f32>) {
    let mut heads = vec![Vec::new(); widths.len()];
    for out in &outputs {
        let mut at = 0;
        for (h, &w) in widths.iter().enumerate() {
            heads[h].extend_from_slice(&out[at..at + w]);
            at += w;
        }
    }
    let prob = heads.pop().unwrap_or_default();
    (heads, prob)
}

/// The cascade's networks run in place, one image at a time ([`FaceNets`]: the networks of
/// `models::mtcnn::Mtcnn`), for tools and tests.
pub struct InPlace<'a, N>(pub &'a N);

/// Per item: each head's values side by side (`reg`, then `landmarks` when there are, then `prob`).
fn rows(out: NetOutput, n: usize) -> Vec<Vec<f32>> {
    let per = |v: &[f32]| v.len() / n.max(1);
    let (r, l, p) = (per(&out.reg), per(&out.landmarks), per(&out.prob));
    (0..n)
        .map(|i| {
            let mut row = out.reg[i * r..(i + 1) * r].to_vec();
            row.extend_from_slice(&out.landmarks[i * l..(i + 1) * l]);
            row.extend_from_slice(&out.prob[i * p..(i + 1) * p]);
            row
        })
        .collect()
}

impl<N: FaceNets> CascadeRunner for InPlace<'_, N> {
    type Error = ForwardError;

    async fn tiles(
        &self,
        image: Arc<DecodedImage>,
        params: DetectParams,
        canvas: usize,
    ) -> Result<(Vec<Level>, Vec<Tile>), ForwardError> {
        Ok(pyramid_tiles(&image, &params, canvas))
    }

    async fn crops(
        &self,
        image: Arc<DecodedImage>,
        boxes: Vec<Candidate>,
        size: usize,
    ) -> Result<Vec<Option<Vec<f32>>>, ForwardError> {
        Ok(crop_each(&image, &boxes, size))
    }

    async fn pnet(&self, tiles: Vec<Vec<f32>>) -> Result<Vec<Vec<f32>>, ForwardError> {
        tiles
            .into_iter()
            .map(|t| {
                let side = ((t.len() / 3) as f64).sqrt().round() as usize;
                let out = self.0.pnet(t, side, side)?;
                Ok(out.reg.into_iter().chain(out.prob).collect())
            })
            .collect()
    }

    async fn rnet(&self, crops: Vec<Vec<f32>>) -> Result<Vec<Vec<f32>>, ForwardError> {
        let n = crops.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        Ok(rows(self.0.rnet(crops.concat(), n)?, n))
    }

    async fn onet(&self, crops: Vec<Vec<f32>>) -> Result<Vec<Vec<f32>>, ForwardError> {
        let n = crops.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        Ok(rows(self.0.onet(crops.concat(), n)?, n))
    }
}

/// A future that never waits (the in-place runner's), run to its end here.
fn in_place<T>(f: impl Future<Output = T>) -> T {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => unreachable!("the in-place cascade waited. This is a bug."),
    }
}

/// [`cascade`] in place on one image (what the server runs, one image at a time): tools and tests.
pub fn detect_tiled(
    img: &DecodedImage,
    params: &DetectParams,
    canvas: usize,
    nets: &impl FaceNets,
) -> Result<Vec<Face>, ForwardError> {
    in_place(cascade(Arc::new(img.clone()), *params, canvas, &InPlace(nets)))
}

/// The paper's stage 1 on whole pyramid levels instead of tiles, then the same [`refine`]: the
/// reference the tiled cascade is checked against (`tests/model_mtcnn.rs`).
pub fn detect(img: &DecodedImage, params: &DetectParams, nets: &impl FaceNets) -> Result<Vec<Face>, ForwardError> {
    let mut levels = Vec::new();
    for level in pyramid(img.width, img.height, params) {
        let out = nets.pnet(level_input(img, &level), level.height, level.width)?;
        levels.push(pnet_candidates(&out.reg, &out.prob, out.map, level.scale, params.thresholds[0]));
    }
    in_place(refine(Arc::new(img.clone()), *params, &InPlace(nets), stage1(levels)))
}

/// Intersection over union of two boxes (no +1).
pub fn iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
}

/// Which of the cascade's faces are answered: the final (O-Net) probability and the face's size,
/// absolute and relative to the image. The cascade's stage thresholds (the paper's 0.6/0.7/0.7)
/// are tuned for recall; this is where precision is chosen (defaults measured in the README).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaceFilter {
    /// Lowest O-Net probability answered.
    pub min_score: f32,
    /// Smallest box side answered, pixels (the box's shorter side).
    pub min_side: f32,
    /// Smallest box side answered as a fraction of the image's shorter side.
    pub min_side_fraction: f32,
}

impl FaceFilter {
    /// Whether `face` of an image `width × height` is answered.
    pub fn keeps(&self, face: &Face, width: u32, height: u32) -> bool {
        let side = (face.bbox[2] - face.bbox[0]).min(face.bbox[3] - face.bbox[1]);
        face.score >= self.min_score
            && side >= self.min_side
            && side >= self.min_side_fraction * width.min(height) as f32
    }
}

/// Area of a face's box.
fn area(f: &Face) -> f32 {
    (f.bbox[2] - f.bbox[0]).max(0.0) * (f.bbox[3] - f.bbox[1]).max(0.0)
}

/// The face that clearly dominates a photo: the largest, when its box has at least `ratio` times
/// the area of every other face's (a portrait with a spurious small detection). `None` when no
/// face dominates (two similar faces: a group photo) or there is none.
pub fn dominant(faces: &[Face], ratio: f32) -> Option<usize> {
    let (best, largest) = faces.iter().enumerate().max_by(|a, b| area(a.1).total_cmp(&area(b.1)))?;
    let second = faces.iter().enumerate().filter(|&(i, _)| i != best).map(|(_, f)| area(f)).fold(0.0, f32::max);
    (area(largest) >= ratio * second).then_some(best)
}

/// The face model's settings (`[models.<name>.faces]`); defaults are facenet-pytorch's MTCNN
/// and OpenCV's SFace threshold.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FaceConfig {
    /// SFace ONNX file.
    pub embedder: PathBuf,
    /// Smallest face side (pixels) the detector looks for.
    #[serde(default = "default_min_face")]
    pub min_face: f64,
    /// Face-probability thresholds of P-Net, R-Net, O-Net.
    #[serde(default = "default_thresholds")]
    pub thresholds: [f32; 3],
    /// Pyramid scale step.
    #[serde(default = "default_factor")]
    pub factor: f64,
    /// Side of the fixed tiles P-Net runs on (batched across requests); even.
    #[serde(default = "default_canvas")]
    pub canvas: usize,
    /// Tiles per P-Net batch.
    #[serde(default = "default_pnet_max_batch")]
    pub pnet_max_batch: usize,
    /// Cosine similarity from which a face is the person.
    #[serde(default = "default_similarity")]
    pub similarity_threshold: f32,
    /// Faces embedded per image at most (the most probable first).
    #[serde(default = "default_max_faces")]
    pub max_faces: usize,
    /// Lowest final (O-Net) probability of an answered face; the stage thresholds are the
    /// paper's, tuned for recall (measured: README, "Face detection precision").
    #[serde(default = "default_min_score")]
    pub min_score: f32,
    /// Smallest answered face side as a fraction of the image's shorter side (`min_face` is the
    /// absolute floor, pixels).
    #[serde(default = "default_min_face_fraction")]
    pub min_face_fraction: f32,
    /// persons/set binds the largest face of a photo with several when its box has at least
    /// this many times the area of every other (a portrait with a spurious small detection);
    /// otherwise the photo is refused as not having one face.
    #[serde(default = "default_dominant_ratio")]
    pub dominant_ratio: f32,
}

impl FaceConfig {
    /// The settings' own checks: `Err((field, message))`, the field relative to `faces`.
    pub fn check(&self) -> Result<(), (&'static str, &'static str)> {
        if self.canvas < 24 || !self.canvas.is_multiple_of(2) {
            return Err(("canvas", "must be even and at least 24"));
        }
        if self.min_face < 12.0 {
            return Err(("min_face", "must be at least 12 (P-Net's window)"));
        }
        if !(0.1..1.0).contains(&self.factor) {
            return Err(("factor", "must be within 0.1..1"));
        }
        if self.thresholds.iter().any(|t| !(0.0..=1.0).contains(t)) {
            return Err(("thresholds", "each must be within 0..=1"));
        }
        if !(-1.0..=1.0).contains(&self.similarity_threshold) {
            return Err(("similarity_threshold", "must be within -1..=1"));
        }
        if !(0.0..=1.0).contains(&self.min_score) {
            return Err(("min_score", "must be within 0..=1"));
        }
        if !(0.0..1.0).contains(&self.min_face_fraction) {
            return Err(("min_face_fraction", "must be within 0..1"));
        }
        if self.dominant_ratio.is_nan() || self.dominant_ratio < 1.0 {
            return Err(("dominant_ratio", "must be at least 1"));
        }
        if self.pnet_max_batch == 0 || self.max_faces == 0 {
            return Err(("pnet_max_batch", "pnet_max_batch and max_faces must be at least 1"));
        }
        Ok(())
    }

    /// Which detected faces are answered.
    pub fn filter(&self) -> FaceFilter {
        FaceFilter {
            min_score: self.min_score,
            min_side: self.min_face as f32,
            min_side_fraction: self.min_face_fraction,
        }
    }
}

fn default_min_face() -> f64 {
    20.0
}
fn default_thresholds() -> [f32; 3] {
    [0.6, 0.7, 0.7]
}
fn default_factor() -> f64 {
    0.709
}
fn default_canvas() -> usize {
    128
}
fn default_pnet_max_batch() -> usize {
    8
}
fn default_similarity() -> f32 {
    0.363
}
fn default_max_faces() -> usize {
    50
}
fn default_min_score() -> f32 {
    0.95
}
fn default_min_face_fraction() -> f32 {
    0.02
}
fn default_dominant_ratio() -> f32 {
    4.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn face(bbox: [f32; 4], score: f32) -> Face {
        Face { bbox, score, landmarks: [[0.0; 2]; 5] }
    }

    #[test]
    fn filter_drops_unsure_small_and_relatively_small_faces() {
        let f = FaceFilter { min_score: 0.9, min_side: 20.0, min_side_fraction: 0.05 };
        // 400 × 1000: the relative floor is 0.05 · 400 = 20 px (the absolute one too).
        assert!(f.keeps(&face([0.0, 0.0, 30.0, 40.0], 0.95), 400, 1000));
        assert!(!f.keeps(&face([0.0, 0.0, 30.0, 40.0], 0.89), 400, 1000));
        assert!(!f.keeps(&face([0.0, 0.0, 19.0, 40.0], 0.99), 400, 1000));
        // 2000 × 2000: 30 px is under 5 % of the shorter side.
        assert!(!f.keeps(&face([0.0, 0.0, 30.0, 40.0], 0.99), 2000, 2000));
        assert!(f.keeps(&face([0.0, 0.0, 100.0, 120.0], 0.99), 2000, 2000));
    }

    #[test]
    fn dominant_face_needs_a_clear_margin() {
        let portrait = [face([0.0, 0.0, 50.0, 50.0], 0.99), face([100.0, 100.0, 300.0, 350.0], 0.999)];
        assert_eq!(dominant(&portrait, 4.0), Some(1));
        // Two faces of similar size: a pair, not a portrait.
        let pair = [face([0.0, 0.0, 100.0, 100.0], 0.99), face([200.0, 0.0, 330.0, 130.0], 0.99)];
        assert_eq!(dominant(&pair, 4.0), None);
        assert_eq!(dominant(&[face([0.0, 0.0, 10.0, 10.0], 0.9)], 4.0), Some(0));
        assert_eq!(dominant(&[], 4.0), None);
    }

    #[test]
    fn pyramid_follows_facenet_pytorch() {
        // 640×480, min face 20: m = 0.6; levels while 480·scale ≥ 12.
        let levels = pyramid(640, 480, &DetectParams::default());
        assert_eq!(levels[0], Level { scale: 0.6, width: 385, height: 289 });
        let last = levels.last().unwrap();
        assert!(480.0 * last.scale >= 12.0 && 480.0 * last.scale * 0.709 < 12.0);
        assert_eq!(levels.len(), 10);
    }

    #[test]
    fn area_resize_averages_whole_and_partial_windows() {
        // 3×1 image of grey levels 0, 127.5-ish, 255 → 2×1: windows [0,2) and [1,3).
        let img = DecodedImage { width: 3, height: 1, rgb: vec![0, 0, 0, 100, 100, 100, 200, 200, 200] };
        let out = area_resize(&img, [0, 0, 3, 1], 2, 1);
        let expect = |v: f32| (v - 127.5) * 0.0078125;
        assert_eq!(out.len(), 6);
        assert!((out[0] - expect(50.0)).abs() < 1e-6 && (out[1] - expect(150.0)).abs() < 1e-6);
        // Identity size is a plain normalisation.
        let same = area_resize(&img, [0, 0, 3, 1], 3, 1);
        assert!((same[1] - expect(100.0)).abs() < 1e-6);
    }

    #[test]
    fn nms_keeps_the_best_of_overlapping_boxes() {
        let boxes = [[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 5.0, 5.0]];
        let scores = [0.8, 0.9, 0.7, 0.95];
        // IoU(0,1) = 81/119 > 0.5; box 3 is inside box 0 (IoU 0.25) but "Min" overlap is 1.
        assert_eq!(nms(&boxes, &scores, 0.5, Overlap::Union), vec![3, 1, 2]);
        assert_eq!(nms(&boxes, &scores, 0.7, Overlap::MinPlusOne), vec![3, 1, 2]);
        assert_eq!(nms(&boxes, &scores, 0.9, Overlap::Union), vec![3, 1, 0, 2]);
    }

    #[test]
    fn boxes_square_regress_and_crop_like_the_reference() {
        assert_eq!(rerec([10.0, 20.0, 30.0, 60.0]), [0.0, 20.0, 40.0, 60.0]);
        assert_eq!(bbreg([0.0, 0.0, 9.0, 19.0], [0.1, -0.1, 0.0, 0.5]), [1.0, -2.0, 9.0, 29.0]);
        // pad(): clipped to the image, 1-based inclusive → [x−1, ex).
        assert_eq!(crop_region([-5.7, 3.9, 50.2, 200.0], 40, 100), Some([0, 2, 40, 100]));
        assert_eq!(crop_region([45.0, 10.0, 60.0, 20.0], 40, 100), None);
    }

    #[test]
    fn tiles_partition_the_level_map() {
        // 300×130 image, min face 40 → first level 0.3: 91×40 pixels, map 40×15.
        let img = DecodedImage { width: 300, height: 130, rgb: vec![128; 300 * 130 * 3] };
        let params = DetectParams { min_face: 40.0, ..DetectParams::default() };
        let (levels, tiles) = pyramid_tiles(&img, &params, 32);
        assert_eq!((levels[0].width, levels[0].height), (91, 40));
        // Map side of a 32 tile: 11; level 0 needs ceil(40/11) × ceil(15/11) = 4 × 2 tiles.
        let first: Vec<_> = tiles.iter().filter(|t| t.level == 0).map(|t| t.origin).collect();
        assert_eq!(first, vec![(0, 0), (11, 0), (22, 0), (33, 0), (0, 11), (11, 11), (22, 11), (33, 11)]);
        // The last tile row starts at pixel 22 and holds the level's rows 22..40, then zeros.
        let t = tiles.iter().find(|t| t.level == 0 && t.origin == (0, 11)).unwrap();
        assert!(t.input[17 * 32] != 0.0 && t.input[18 * 32] == 0.0);
        assert_eq!(level_map_side(11), 0);
        assert_eq!(level_map_side(13), 1);
    }

    #[test]
    fn pnet_windows_map_back_to_pixels() {
        // A 2×3 map with one window over the threshold at (x=2, y=1), scale 0.5.
        let mut prob = vec![0f32; 12];
        prob[6 + 5] = 0.9;
        let reg: Vec<f32> = (0..24).map(|i| i as f32).collect();
        let c = pnet_candidates(&reg, &prob, (2, 3), 0.5, 0.6);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].bbox, [10.0, 6.0, 32.0, 28.0]);
        assert_eq!(c[0].reg, [5.0, 11.0, 17.0, 23.0]);
    }
}
