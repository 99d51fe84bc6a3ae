//! Text detection and recognition around the PP-OCRv6 networks, as RapidOCR 3.10 runs them
//! (docs/research/pp-ocr-and-plates.md §3.1, with file:line references): the working image, the
//! detector's input, DB post-processing (threshold, 2×2 dilation, contours, minimum-area
//! rectangles, box score, unclip), reading order, perspective crops, the recogniser's input and
//! CTC decoding. Pure functions; contours and minimum-area rectangles come from `imageproc`.
//!
//! Batching: the detector's inputs can be padded to `det_bucket` multiples (bottom/right, value
//! 0.0; the map is read only over the image) so images of similar size from different requests
//! share a batch. The default (32) pads nothing: padding moves the map enough to split or merge
//! lines whose box scores sit near the threshold (tests/text.rs measures both; README). The
//! recogniser's inputs are padded the way RapidOCR pads its batches (an image's lines by aspect
//! ratio in groups of six, each group to its widest), or with `rec_group = 0` each line to its own
//! `rec_bucket` multiple of width.

use imageproc::contours::find_contours;
use imageproc::geometric_transformations::Projection;
use imageproc::geometry::convex_hull;
use imageproc::point::Point;
use serde::Deserialize;

use super::decode::DecodedImage;
use crate::models::ppocr::{CLS_HEIGHT, CLS_WIDTH, Charset, REC_HEIGHT, Step};

/// Settings of the text pipeline (`[models.<name>.text]`); defaults are RapidOCR 3.10's.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TextParams {
    /// Images larger than this (either side) are scaled down first (RapidOCR `max_side_len`).
    pub max_side: usize,
    /// Images smaller than this (either side) are scaled up first (RapidOCR `min_side_len`).
    pub min_side: usize,
    /// The detector sees the image with its shorter side scaled to at least this (`limit_side_len`,
    /// `limit_type = min`).
    pub det_limit: usize,
    /// Detector inputs are padded up to multiples of this, so similar sizes batch together;
    /// 32 (the default) = no padding: only images of equal detector size batch together.
    pub det_bucket: usize,
    /// Probability from which a map pixel is text.
    pub thresh: f32,
    /// Mean probability a box needs.
    pub box_thresh: f32,
    /// How far a box grows: area × ratio / perimeter on every side.
    pub unclip_ratio: f32,
    /// Boxes looked at per image at most.
    pub max_candidates: usize,
    /// Recogniser inputs are padded up to multiples of this width (at least 320).
    pub rec_bucket: usize,
    /// Widest recogniser input; longer lines are squeezed to it.
    pub rec_max_width: usize,
    /// RapidOCR's recogniser widths: an image's lines, sorted by aspect ratio, in groups of this
    /// many, each group padded to its widest line (RapidOCR's batch of 6); the lines of a group
    /// batch together. 0: each line padded to its own `rec_bucket` multiple instead, so that lines
    /// of all requests share widths (more cross-request batching, less agreement: README, Text).
    pub rec_group: usize,
    /// Lines read with a lower mean probability are dropped.
    pub text_score: f32,
    /// Lines per image at most (the first in reading order).
    pub max_lines: usize,
    /// Run the orientation classifier on every line and turn the lines it finds upside down
    /// (RapidOCR `use_cls`). Off by default, unlike RapidOCR: the classifier squeezes a line into
    /// 192 pixels and flips with p > 0.9 on crops one pixel off RapidOCR's (README, Text).
    pub use_cls: bool,
    /// Probability from which a line is taken as upside down (RapidOCR `cls_thresh`).
    pub cls_thresh: f32,
}

impl Default for TextParams {
    fn default() -> Self {
        Self {
            max_side: 2000,
            min_side: 30,
            det_limit: 736,
            det_bucket: 32,
            thresh: 0.3,
            box_thresh: 0.5,
            unclip_ratio: 1.6,
            max_candidates: 1000,
            rec_bucket: 64,
            rec_max_width: 1920,
            rec_group: 6,
            text_score: 0.5,
            max_lines: 500,
            use_cls: false,
            cls_thresh: 0.9,
        }
    }
}

impl TextParams {
    /// What is wrong with these settings, naming the field.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let positive = |name, v: usize| if v == 0 { Err((name, "must be positive".to_string())) } else { Ok(()) };
        positive("max_side", self.max_side)?;
        positive("min_side", self.min_side)?;
        positive("det_limit", self.det_limit)?;
        positive("max_candidates", self.max_candidates)?;
        positive("max_lines", self.max_lines)?;
        if self.det_bucket == 0 || !self.det_bucket.is_multiple_of(32) {
            return Err(("det_bucket", "must be a positive multiple of 32".into()));
        }
        if self.rec_bucket == 0 || !self.rec_bucket.is_multiple_of(8) {
            return Err(("rec_bucket", "must be a positive multiple of 8".into()));
        }
        if self.rec_max_width < REC_MIN_WIDTH {
            return Err(("rec_max_width", format!("must be at least {REC_MIN_WIDTH}")));
        }
        for (name, v) in [
            ("thresh", self.thresh),
            ("box_thresh", self.box_thresh),
            ("text_score", self.text_score),
            ("cls_thresh", self.cls_thresh),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err((name, "must be within 0..1".into()));
            }
        }
        if self.unclip_ratio.is_nan() || self.unclip_ratio <= 0.0 {
            return Err(("unclip_ratio", "must be positive".into()));
        }
        Ok(())
    }
}

/// RapidOCR's narrowest recogniser input (48 × 320).
pub const REC_MIN_WIDTH: usize = 320;
/// Lines whose tops differ less than this (pixels of the working image) are one row.
const SAME_ROW: f32 = 10.0;

/// `int(round(x / 32) * 32)` with Python's rounding (half to even), at least 32.
fn round32(x: usize) -> usize {
    (((x as f64) / 32.0).round_ties_even() as usize * 32).max(32)
}

/// `cv2.resize(INTER_LINEAR)` of an RGB image: half-pixel centres, no antialiasing, edge clamp.
pub fn resize_bilinear(src: &DecodedImage, w: usize, h: usize) -> DecodedImage {
    let (sw, sh) = (src.width as usize, src.height as usize);
    let taps = |dst: usize, src_len: usize| -> Vec<(usize, usize, f32)> {
        let scale = src_len as f32 / dst as f32;
        (0..dst)
            .map(|d| {
                let s = ((d as f32 + 0.5) * scale - 0.5).max(0.0);
                let i = (s.floor() as usize).min(src_len - 1);
                let f = if i + 1 >= src_len { 0.0 } else { s - i as f32 };
                (i, (i + 1).min(src_len - 1), f)
            })
            .collect()
    };
    let (xs, ys) = (taps(w, sw), taps(h, sh));
    let mut rgb = vec![0u8; w * h * 3];
    for (y, &(y0, y1, fy)) in ys.iter().enumerate() {
        let (r0, r1) = (&src.rgb[y0 * sw * 3..(y0 + 1) * sw * 3], &src.rgb[y1 * sw * 3..(y1 + 1) * sw * 3]);
        for (x, &(x0, x1, fx)) in xs.iter().enumerate() {
            for c in 0..3 {
                let top = f32::from(r0[x0 * 3 + c]) * (1.0 - fx) + f32::from(r0[x1 * 3 + c]) * fx;
                let bottom = f32::from(r1[x0 * 3 + c]) * (1.0 - fx) + f32::from(r1[x1 * 3 + c]) * fx;
                rgb[(y * w + x) * 3 + c] = (top * (1.0 - fy) + bottom * fy).round() as u8;
            }
        }
    }
    DecodedImage { width: w as u32, height: h as u32, rgb }
}

/// The image the detector and the crops work on, and how it maps back to the original.
#[derive(Debug, Clone)]
pub struct Working {
    pub image: DecodedImage,
    /// Original pixels per working pixel, (x, y).
    pub ratio: [f32; 2],
    /// Black rows the detector sees above (and below) the working image: very wide or very low
    /// images are padded to a height of max(w / 8, 30) · 2 (RapidOCR's vertical padding).
    pub pad_top: usize,
    /// The original's size.
    pub original: [usize; 2],
}

impl Working {
    /// Height of the detector's (padded) canvas.
    pub fn canvas_height(&self) -> usize {
        self.image.height as usize + 2 * self.pad_top
    }
}

/// RapidOCR's `resize_image_within_bounds` then `apply_vertical_padding`.
pub fn working_image(img: &DecodedImage, p: &TextParams) -> Working {
    let (w, h) = (img.width as usize, img.height as usize);
    let mut image = None;
    let (mut cw, mut ch) = (w, h);
    if cw.max(ch) > p.max_side {
        let ratio = p.max_side as f64 / cw.max(ch) as f64;
        (cw, ch) = (round32((cw as f64 * ratio) as usize), round32((ch as f64 * ratio) as usize));
        image = Some(resize_bilinear(img, cw, ch));
    }
    if cw.min(ch) < p.min_side {
        let ratio = p.min_side as f64 / cw.min(ch) as f64;
        let (nw, nh) = (round32((cw as f64 * ratio) as usize), round32((ch as f64 * ratio) as usize));
        image = Some(resize_bilinear(image.as_ref().unwrap_or(img), nw, nh));
        (cw, ch) = (nw, nh);
    }
    let pad_top = if ch <= 30 || cw as f64 / ch as f64 > 8.0 {
        let new_h = (cw / 8).max(30) * 2;
        new_h.abs_diff(ch) / 2
    } else {
        0
    };
    Working {
        image: image.unwrap_or_else(|| img.clone()),
        ratio: [w as f32 / cw as f32, h as f32 / ch as f32],
        pad_top,
        original: [w, h],
    }
}

/// The detector's input size (h, w) for a working image: the shorter side scaled up to
/// `det_limit`, each side a multiple of 32; and the bucket it is padded to.
pub fn det_sizes(work: &Working, p: &TextParams) -> ([usize; 2], [usize; 2]) {
    let (w, h) = (work.image.width as usize, work.canvas_height());
    let ratio = if w.min(h) < p.det_limit { p.det_limit as f64 / w.min(h) as f64 } else { 1.0 };
    let size = [round32((h as f64 * ratio) as usize), round32((w as f64 * ratio) as usize)];
    (size, size.map(|s| s.div_ceil(p.det_bucket) * p.det_bucket))
}

/// (x/255 − 0.5)/0.5 of a BGR channel value.
fn norm(v: u8) -> f32 {
    f32::from(v) / 127.5 - 1.0
}

/// The detector's input: the padded working image resized to `size` (bilinear), BGR, normalised,
/// CHW, at the top-left of a `bucket` canvas of zeros.
pub fn det_input(work: &Working, size: [usize; 2], bucket: [usize; 2]) -> Vec<f32> {
    let (w, ch) = (work.image.width as usize, work.canvas_height());
    let canvas = if work.pad_top == 0 {
        resize_bilinear(&work.image, size[1], size[0])
    } else {
        let mut rgb = vec![0u8; w * ch * 3];
        rgb[work.pad_top * w * 3..(work.pad_top * w + work.image.rgb.len() / 3) * 3].copy_from_slice(&work.image.rgb);
        resize_bilinear(&DecodedImage { width: w as u32, height: ch as u32, rgb }, size[1], size[0])
    };
    let [bh, bw] = bucket;
    let mut out = vec![0f32; 3 * bh * bw];
    for y in 0..size[0] {
        for x in 0..size[1] {
            let px = &canvas.rgb[(y * size[1] + x) * 3..][..3];
            for (c, &v) in [px[2], px[1], px[0]].iter().enumerate() {
                out[(c * bh + y) * bw + x] = norm(v);
            }
        }
    }
    out
}

/// Four corners: top-left, top-right, bottom-right, bottom-left, (x, y).
pub type Quad = [[f32; 2]; 4];

fn dist(a: [f32; 2], b: [f32; 2]) -> f32 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt()
}

/// RapidOCR's `get_mini_boxes` order of a rectangle's corners, and its shorter side.
fn mini_box(points: [[f32; 2]; 4]) -> (Quad, f32) {
    let mut p = points;
    p.sort_by(|a, b| a[0].total_cmp(&b[0]));
    let (i1, i4) = if p[1][1] > p[0][1] { (0, 1) } else { (1, 0) };
    let (i2, i3) = if p[3][1] > p[2][1] { (2, 3) } else { (3, 2) };
    let quad = [p[i1], p[i2], p[i3], p[i4]];
    (quad, dist(quad[0], quad[1]).min(dist(quad[1], quad[2])))
}

/// The minimum-area rectangle of pixel coordinates, corners as floats (cv2.minAreaRect +
/// boxPoints): the smallest of the rectangles aligned with an edge of the convex hull (imageproc).
/// imageproc 0.27's own `min_area_rect` was not used: on the nearly horizontal lines of a
/// rendered page it returned a rectangle 16 px high for a band 38 px high (see the test).
fn min_rect(points: &[Point<i32>]) -> [[f32; 2]; 4] {
    let hull: Vec<[f64; 2]> = convex_hull(points.to_vec()).iter().map(|p| [f64::from(p.x), f64::from(p.y)]).collect();
    let bbox = |pts: &[[f64; 2]]| {
        let (x0, x1) = pts.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p[0]), b.max(p[0])));
        let (y0, y1) = pts.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p[1]), b.max(p[1])));
        [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]
    };
    let mut best = (f64::MAX, bbox(&hull));
    for i in 0..hull.len() {
        let (a, b) = (hull[i], hull[(i + 1) % hull.len()]);
        let len = (b[0] - a[0]).hypot(b[1] - a[1]);
        if len == 0.0 {
            continue;
        }
        let (ux, uy) = ((b[0] - a[0]) / len, (b[1] - a[1]) / len);
        // Hull points in the (u along the edge, v across it) frame.
        let uv: Vec<[f64; 2]> = hull.iter().map(|p| [p[0] * ux + p[1] * uy, p[1] * ux - p[0] * uy]).collect();
        let [[u0, v0], _, [u1, v1], _] = bbox(&uv);
        let area = (u1 - u0) * (v1 - v0);
        if area < best.0 {
            let back = |u: f64, v: f64| [u * ux - v * uy, u * uy + v * ux];
            best = (area, [back(u0, v0), back(u1, v0), back(u1, v1), back(u0, v1)]);
        }
    }
    best.1.map(|p| [p[0] as f32, p[1] as f32])
}

/// Mean probability inside a quad (its pixels, edges included), over the map's `w`×`h` area.
fn box_score(prob: &[f32], stride: usize, w: usize, h: usize, quad: &Quad) -> f32 {
    let clampi = |v: f32, hi: usize| (v.max(0.0) as usize).min(hi - 1);
    let xmin = clampi(quad.iter().map(|p| p[0]).fold(f32::MAX, f32::min).floor(), w);
    let xmax = clampi(quad.iter().map(|p| p[0]).fold(f32::MIN, f32::max).ceil(), w);
    let ymin = clampi(quad.iter().map(|p| p[1]).fold(f32::MAX, f32::min).floor(), h);
    let ymax = clampi(quad.iter().map(|p| p[1]).fold(f32::MIN, f32::max).ceil(), h);
    // Integer corners as cv2.fillPoly takes them; a pixel is in when it is on the inner side of
    // every edge (or on it).
    let q = quad.map(|p| [p[0].trunc(), p[1].trunc()]);
    let area2: f32 = (0..4).map(|i| q[i][0] * q[(i + 1) % 4][1] - q[(i + 1) % 4][0] * q[i][1]).sum();
    let sign = if area2 < 0.0 { -1.0 } else { 1.0 };
    let (mut sum, mut n) = (0f64, 0usize);
    for y in ymin..=ymax {
        for x in xmin..=xmax {
            let (px, py) = (x as f32, y as f32);
            let inside = (0..4).all(|i| {
                let (a, b) = (q[i], q[(i + 1) % 4]);
                sign * ((b[0] - a[0]) * (py - a[1]) - (b[1] - a[1]) * (px - a[0])) >= -1e-3
            });
            if inside {
                sum += f64::from(prob[y * stride + x]);
                n += 1;
            }
        }
    }
    if n == 0 { 0.0 } else { (sum / n as f64) as f32 }
}

/// The rectangle grown by `d` on every side: the minimum-area rectangle of the rectangle's
/// round-joined offset (pyclipper `JT_ROUND`), which RapidOCR computes.
fn grow(quad: &Quad, d: f32) -> [[f32; 2]; 4] {
    let c = [quad.iter().map(|p| p[0]).sum::<f32>() / 4.0, quad.iter().map(|p| p[1]).sum::<f32>() / 4.0];
    let unit = |a: [f32; 2], b: [f32; 2]| {
        let l = dist(a, b).max(1e-6);
        [(b[0] - a[0]) / l, (b[1] - a[1]) / l]
    };
    let (u, v) = (unit(quad[0], quad[1]), unit(quad[0], quad[3]));
    quad.map(|p| {
        // Away from the centre along both side directions.
        let rel = [p[0] - c[0], p[1] - c[1]];
        let su = (rel[0] * u[0] + rel[1] * u[1]).signum();
        let sv = (rel[0] * v[0] + rel[1] * v[1]).signum();
        [p[0] + d * (su * u[0] + sv * v[0]), p[1] + d * (su * u[1] + sv * v[1])]
    })
}

/// One detected text box in working-image pixels (the padded canvas's rows minus `pad_top`).
#[derive(Debug, Clone, PartialEq)]
pub struct TextBox {
    pub quad: Quad,
    pub score: f32,
}

/// DB post-processing of the detector's probability map (`stride` values per row; the image
/// covers `size` = (h, w) of it) into boxes on the working image, in reading order.
pub fn boxes_from_map(prob: &[f32], stride: usize, size: [usize; 2], work: &Working, p: &TextParams) -> Vec<TextBox> {
    let [h, w] = size;
    // Threshold, then dilate with a 2×2 kernel anchored at its centre (cv2: the pixel and its
    // upper/left neighbours).
    let on = |x: usize, y: usize| prob[y * stride + x] > p.thresh;
    let mut bitmap = image::GrayImage::new(w as u32, h as u32);
    for y in 0..h {
        for x in 0..w {
            let hit =
                on(x, y) || (x > 0 && on(x - 1, y)) || (y > 0 && on(x, y - 1)) || (x > 0 && y > 0 && on(x - 1, y - 1));
            if hit {
                bitmap.put_pixel(x as u32, y as u32, image::Luma([255]));
            }
        }
    }
    let (dest_w, dest_h) = (work.image.width as f32, work.canvas_height() as f32);
    let mut boxes = Vec::new();
    for contour in find_contours::<i32>(&bitmap).into_iter().take(p.max_candidates) {
        let (quad, short) = mini_box(min_rect(&contour.points));
        if short < 3.0 {
            continue;
        }
        let score = box_score(prob, stride, w, h, &quad);
        if score < p.box_thresh {
            continue;
        }
        let area = dist(quad[0], quad[1]) * dist(quad[1], quad[2]);
        let perimeter = 2.0 * (dist(quad[0], quad[1]) + dist(quad[1], quad[2]));
        let (grown, short) = mini_box(grow(&quad, area * p.unclip_ratio / perimeter.max(1e-6)));
        if short < 5.0 {
            continue;
        }
        // To the canvas's pixels, then clockwise from the top-left, clipped; too thin boxes dropped.
        let scaled = grown.map(|q| {
            [
                (q[0] / w as f32 * dest_w).round().clamp(0.0, dest_w),
                (q[1] / h as f32 * dest_h).round().clamp(0.0, dest_h),
            ]
        });
        let quad =
            clockwise(scaled).map(|q| [q[0].clamp(0.0, dest_w - 1.0).trunc(), q[1].clamp(0.0, dest_h - 1.0).trunc()]);
        if dist(quad[0], quad[1]) as i64 <= 3 || dist(quad[0], quad[3]) as i64 <= 3 {
            continue;
        }
        let pad = work.pad_top as f32;
        boxes.push(TextBox { quad: quad.map(|q| [q[0], q[1] - pad]), score });
    }
    reading_order(&mut boxes);
    boxes.truncate(p.max_lines);
    boxes
}

/// imutils' `order_points`: the two leftmost points (top-left, bottom-left by y), the two
/// rightmost (top-right, bottom-right).
fn clockwise(points: [[f32; 2]; 4]) -> Quad {
    let mut p = points;
    p.sort_by(|a, b| a[0].total_cmp(&b[0]));
    let (mut left, mut right) = ([p[0], p[1]], [p[2], p[3]]);
    left.sort_by(|a, b| a[1].total_cmp(&b[1]));
    right.sort_by(|a, b| a[1].total_cmp(&b[1]));
    [left[0], right[0], right[1], left[1]]
}

/// Top to bottom; boxes whose tops are within `SAME_ROW` of the previous one's form a row, read
/// left to right.
pub fn reading_order(boxes: &mut [TextBox]) {
    boxes.sort_by(|a, b| a.quad[0][1].total_cmp(&b.quad[0][1]));
    let mut row = 0;
    let mut keyed: Vec<(usize, f32, usize)> = Vec::with_capacity(boxes.len());
    for i in 0..boxes.len() {
        if i > 0 && boxes[i].quad[0][1] - boxes[i - 1].quad[0][1] >= SAME_ROW {
            row += 1;
        }
        keyed.push((row, boxes[i].quad[0][0], i));
    }
    keyed.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
    let sorted: Vec<TextBox> = keyed.iter().map(|k| boxes[k.2].clone()).collect();
    boxes.clone_from_slice(&sorted);
}

/// Bicubic sample (a = −0.75, as OpenCV) with edge replication.
fn bicubic(img: &DecodedImage, x: f32, y: f32) -> [u8; 3] {
    let (w, h) = (img.width as i64, img.height as i64);
    let weights = |t: f32| {
        let a = -0.75f32;
        let k = |d: f32| {
            let d = d.abs();
            if d <= 1.0 {
                ((a + 2.0) * d - (a + 3.0)) * d * d + 1.0
            } else if d < 2.0 {
                ((a * d - 5.0 * a) * d + 8.0 * a) * d - 4.0 * a
            } else {
                0.0
            }
        };
        [k(1.0 + t), k(t), k(1.0 - t), k(2.0 - t)]
    };
    let (x0, y0) = (x.floor(), y.floor());
    let (wx, wy) = (weights(x - x0), weights(y - y0));
    let mut acc = [0f32; 3];
    for (j, wyj) in wy.iter().enumerate() {
        let yy = (y0 as i64 - 1 + j as i64).clamp(0, h - 1) as usize;
        for (i, wxi) in wx.iter().enumerate() {
            let xx = (x0 as i64 - 1 + i as i64).clamp(0, w - 1) as usize;
            let px = &img.rgb[(yy * img.width as usize + xx) * 3..][..3];
            for c in 0..3 {
                acc[c] += wyj * wxi * f32::from(px[c]);
            }
        }
    }
    acc.map(|v| v.round().clamp(0.0, 255.0) as u8)
}

/// RapidOCR's `get_rotate_crop_image`: the quad warped to an upright w×h crop (bicubic, edges
/// replicated); a crop at least 1.5 times taller than wide is turned 90° counter-clockwise.
/// None for a degenerate quad.
pub fn crop(img: &DecodedImage, quad: &Quad) -> Option<DecodedImage> {
    let w = dist(quad[0], quad[1]).max(dist(quad[2], quad[3])) as usize;
    let h = dist(quad[0], quad[3]).max(dist(quad[1], quad[2])) as usize;
    if w == 0 || h == 0 {
        return None;
    }
    let (wf, hf) = (w as f32, h as f32);
    let to_src =
        Projection::from_control_points([(0.0, 0.0), (wf, 0.0), (wf, hf), (0.0, hf)], quad.map(|p| (p[0], p[1])))?;
    let mut rgb = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            let (sx, sy) = to_src * (x as f32, y as f32);
            rgb.extend_from_slice(&bicubic(img, sx, sy));
        }
    }
    let out = DecodedImage { width: w as u32, height: h as u32, rgb };
    Some(if h as f32 / w as f32 >= 1.5 { rotate_ccw(&out) } else { out })
}

/// `np.rot90`: 90° counter-clockwise.
fn rotate_ccw(img: &DecodedImage) -> DecodedImage {
    let (w, h) = (img.width as usize, img.height as usize);
    let mut rgb = vec![0u8; w * h * 3];
    for y in 0..w {
        for x in 0..h {
            let src = (x * w + (w - 1 - y)) * 3;
            rgb[(y * h + x) * 3..][..3].copy_from_slice(&img.rgb[src..src + 3]);
        }
    }
    DecodedImage { width: h as u32, height: w as u32, rgb }
}

/// The recogniser's input width for a crop: RapidOCR's `int(48 · max(320/48, w/h))`, padded up
/// to the bucket, at most `rec_max_width`.
pub fn rec_width(crop: &DecodedImage, p: &TextParams) -> usize {
    let ratio = crop.width as f64 / crop.height as f64;
    let own = (REC_HEIGHT as f64 * (REC_MIN_WIDTH as f64 / REC_HEIGHT as f64).max(ratio)) as usize;
    (own.div_ceil(p.rec_bucket) * p.rec_bucket).min(p.rec_max_width)
}

/// The recogniser's input for a crop at `width`: resized to 48 high and ceil(48·w/h) wide (at
/// most `width`), BGR, normalised, right-padded with 0.0; and the resized width.
pub fn rec_input(crop: &DecodedImage, width: usize) -> (Vec<f32>, usize) {
    let ratio = crop.width as f64 / crop.height as f64;
    let resized = ((REC_HEIGHT as f64 * ratio).ceil() as usize).clamp(1, width);
    (bgr_padded(&resize_bilinear(crop, resized, REC_HEIGHT), width), resized)
}

/// An image as a network input `width` wide: BGR planes, normalised, right-padded with 0.0.
fn bgr_padded(small: &DecodedImage, width: usize) -> Vec<f32> {
    let (w, h) = (small.width as usize, small.height as usize);
    let mut out = vec![0f32; 3 * h * width];
    for y in 0..h {
        for x in 0..w.min(width) {
            let px = &small.rgb[(y * w + x) * 3..][..3];
            for (c, &v) in [px[2], px[1], px[0]].iter().enumerate() {
                out[(c * h + y) * width + x] = norm(v);
            }
        }
    }
    out
}

/// A line read by CTC: its text, mean probability of the kept characters, and each character
/// with its time step and probability.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub text: String,
    pub score: f32,
    pub chars: Vec<(char, usize, f32)>,
}

/// Greedy CTC: a step's best class counts when it is not the blank and differs from the
/// previous step's; the score is the mean probability of those steps (RapidOCR `CTCLabelDecode`).
pub fn ctc_decode(steps: &[Step], charset: &Charset) -> Reading {
    let mut chars = Vec::new();
    let mut prev = None;
    for (t, s) in steps.iter().enumerate() {
        if prev != Some(s.class)
            && let Some(c) = charset.char(s.class)
        {
            chars.push((c, t, s.prob));
        }
        prev = Some(s.class);
    }
    let text: String = chars.iter().map(|c| c.0).collect();
    let score = if chars.is_empty() { 0.0 } else { chars.iter().map(|c| c.2).sum::<f32>() / chars.len() as f32 };
    Reading { text, score, chars }
}

/// Language of a word by its letters: `rus` (Cyrillic), `eng` (Latin) or `unknown` (no letters),
/// with the share of its letters in that script.
pub fn language(word: &str) -> (&'static str, f32) {
    let (mut cyr, mut lat) = (0usize, 0usize);
    for c in word.chars().filter(|c| c.is_alphabetic()) {
        match c {
            '\u{0400}'..='\u{04FF}' => cyr += 1,
            'a'..='z' | 'A'..='Z' | '\u{00C0}'..='\u{024F}' => lat += 1,
            _ => {}
        }
    }
    let letters = word.chars().filter(|c| c.is_alphabetic()).count();
    match (cyr, lat) {
        (0, 0) => ("unknown", if letters == 0 { 1.0 } else { 0.0 }),
        (c, l) if c > l => ("rus", c as f32 / letters as f32),
        (_, l) => ("eng", l as f32 / letters as f32),
    }
}

/// A word of a line: its text, mean character probability, and its quad on the working image.
#[derive(Debug, Clone, PartialEq)]
pub struct Word {
    pub text: String,
    pub prob: f32,
    pub quad: Quad,
}

/// The line's words (split at spaces), each placed along the line's quad by the time steps of its
/// characters: step t covers input columns [t·W/T, (t+1)·W/T) of which the first `resized` hold
/// the crop.
pub fn words(reading: &Reading, quad: &Quad, steps: usize, width: usize, resized: usize) -> Vec<Word> {
    let per_step = width as f32 / steps.max(1) as f32;
    let at = |u: f32| {
        let u = u.clamp(0.0, 1.0);
        let top = [quad[0][0] + (quad[1][0] - quad[0][0]) * u, quad[0][1] + (quad[1][1] - quad[0][1]) * u];
        let bottom = [quad[3][0] + (quad[2][0] - quad[3][0]) * u, quad[3][1] + (quad[2][1] - quad[3][1]) * u];
        (top, bottom)
    };
    let mut out = Vec::new();
    for group in reading.chars.split(|c| c.0.is_whitespace()).filter(|g| !g.is_empty()) {
        let (first, last) = (group[0].1, group[group.len() - 1].1);
        let u0 = first as f32 * per_step / resized as f32;
        let u1 = (last + 1) as f32 * per_step / resized as f32;
        let ((tl, bl), (tr, br)) = (at(u0), at(u1));
        out.push(Word {
            text: group.iter().map(|c| c.0).collect(),
            prob: group.iter().map(|c| c.2).sum::<f32>() / group.len() as f32,
            quad: [tl, tr, br, bl],
        });
    }
    out
}

/// An image ready for the detector.
#[derive(Debug, Clone)]
pub struct Detection {
    pub work: Working,
    /// The detector's input size (h, w), and the bucket its input is padded to.
    pub size: [usize; 2],
    pub bucket: [usize; 2],
    /// 3 × bucket CHW.
    pub input: Vec<f32>,
}

/// Working image and detector input of a decoded image.
pub fn prepare_detection(img: &DecodedImage, p: &TextParams) -> Detection {
    let work = working_image(img, p);
    let (size, bucket) = det_sizes(&work, p);
    let input = det_input(&work, size, bucket);
    Detection { work, size, bucket, input }
}

/// One detected line: its box, its upright crop and, when the classifier runs, its input.
#[derive(Debug, Clone)]
pub struct LineCrop {
    pub text_box: TextBox,
    pub crop: DecodedImage,
    /// 3 × 48 × 192 CHW; empty when `use_cls` is off.
    pub cls: Vec<f32>,
}

/// The lines of a detector map (`bucket`-sized, the image over `size` of it): boxes in reading
/// order, each cropped from the working image (and made a classifier input).
pub fn line_crops(work: &Working, prob: &[f32], size: [usize; 2], bucket: [usize; 2], p: &TextParams) -> Vec<LineCrop> {
    boxes_from_map(prob, bucket[1], size, work, p)
        .into_iter()
        .filter_map(|text_box| {
            let crop = crop(&work.image, &text_box.quad)?;
            let cls = if p.use_cls { cls_input(&crop) } else { Vec::new() };
            Some(LineCrop { text_box, crop, cls })
        })
        .collect()
}

/// The classifier's input for a crop (RapidOCR `TextClassifier.resize_norm_img`): resized to 48
/// high and min(ceil(48·w/h), 192) wide (bilinear), BGR, normalised, right-padded with 0.0.
pub fn cls_input(crop: &DecodedImage) -> Vec<f32> {
    let ratio = crop.width as f64 / crop.height as f64;
    let resized = ((CLS_HEIGHT as f64 * ratio).ceil() as usize).clamp(1, CLS_WIDTH);
    bgr_padded(&resize_bilinear(crop, resized, CLS_HEIGHT), CLS_WIDTH)
}

/// Whether the classifier's (p 0°, p 180°) says a line is upside down.
pub fn upside_down(probs: &[f32], p: &TextParams) -> bool {
    matches!(probs, [up, down] if down > up && *down > p.cls_thresh)
}

/// The image turned 180°.
pub fn rotate_180(img: &DecodedImage) -> DecodedImage {
    let mut rgb = Vec::with_capacity(img.rgb.len());
    for px in img.rgb.chunks_exact(3).rev() {
        rgb.extend_from_slice(px);
    }
    DecodedImage { width: img.width, height: img.height, rgb }
}

/// One line ready for the recogniser.
#[derive(Debug, Clone)]
pub struct LineInput {
    /// The line's box; for a line read upside down its corners start at the reading's start
    /// (the box's bottom-right).
    pub text_box: TextBox,
    /// The recogniser's input width, and how much of it the crop fills.
    pub width: usize,
    pub resized: usize,
    /// 3 × 48 × width CHW.
    pub input: Vec<f32>,
}

/// Recogniser inputs of the lines, those marked `flip` turned 180° first.
pub fn line_inputs(lines: Vec<LineCrop>, flip: &[bool], p: &TextParams) -> Vec<LineInput> {
    let turned: Vec<(DecodedImage, TextBox)> = lines
        .into_iter()
        .enumerate()
        .map(|(i, line)| {
            let (crop, mut text_box) = (line.crop, line.text_box);
            if flip.get(i).copied().unwrap_or(false) {
                let [a, b, c, d] = text_box.quad;
                text_box.quad = [c, d, a, b];
                (rotate_180(&crop), text_box)
            } else {
                (crop, text_box)
            }
        })
        .collect();
    let crops: Vec<&DecodedImage> = turned.iter().map(|(c, _)| c).collect();
    let widths = rec_widths(&crops, p);
    turned
        .into_iter()
        .zip(widths)
        .map(|((crop, text_box), width)| {
            let (input, resized) = rec_input(&crop, width);
            LineInput { text_box, width, resized, input }
        })
        .collect()
}

/// The recogniser's input width of each crop: RapidOCR's (`rec_group` > 0: sorted by aspect ratio,
/// in groups, `int(48 · max(320/48, the group's widest w/h))`), or each its own (`rec_width`).
pub fn rec_widths(crops: &[&DecodedImage], p: &TextParams) -> Vec<usize> {
    if p.rec_group == 0 {
        return crops.iter().map(|c| rec_width(c, p)).collect();
    }
    let ratios: Vec<f64> = crops.iter().map(|c| c.width as f64 / c.height as f64).collect();
    let mut order: Vec<usize> = (0..crops.len()).collect();
    order.sort_by(|a, b| ratios[*a].total_cmp(&ratios[*b]));
    let mut widths = vec![0usize; crops.len()];
    for group in order.chunks(p.rec_group) {
        let widest = group.iter().map(|i| ratios[*i]).fold(REC_MIN_WIDTH as f64 / REC_HEIGHT as f64, f64::max);
        let w = ((REC_HEIGHT as f64 * widest) as usize).min(p.rec_max_width);
        group.iter().for_each(|i| widths[*i] = w);
    }
    widths
}

/// A quad on the working image → the original's pixels (clipped to it).
pub fn to_original(quad: &Quad, work: &Working) -> Quad {
    let [w, h] = work.original;
    quad.map(|p| [(p[0] * work.ratio[0]).clamp(0.0, w as f32), (p[1] * work.ratio[1]).clamp(0.0, h as f32)])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(w: usize, h: usize, f: impl Fn(usize, usize) -> u8) -> DecodedImage {
        let mut rgb = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            for x in 0..w {
                rgb.extend_from_slice(&[f(x, y); 3]);
            }
        }
        DecodedImage { width: w as u32, height: h as u32, rgb }
    }

    #[test]
    fn sizes_round_half_to_even_like_python() {
        assert_eq!(round32(2320 / 32 * 32 + 16), 2304); // 72.5 → 72
        assert_eq!(round32(48), 64); // 1.5 → 2
        assert_eq!(round32(3), 32);
        let p = TextParams::default();
        // why-rust.png: 2320×776 → 1984×672 working, detector 2176×736 (RapidOCR's shapes).
        let work = working_image(&image(2320, 776, |_, _| 0), &p);
        assert_eq!((work.image.width, work.image.height, work.pad_top), (1984, 672, 0));
        let (size, bucket) = det_sizes(&work, &p);
        assert_eq!((size, bucket), ([736, 2176], [736, 2176]));
        let (_, bucket) = det_sizes(&work, &TextParams { det_bucket: 128, ..p });
        assert_eq!(bucket, [768, 2176]);
        // A plate photo 151×54: left as is, detector 736 high.
        let work = working_image(&image(151, 54, |_, _| 0), &p);
        assert_eq!((work.image.width, work.image.height, work.pad_top), (151, 54, 0));
        assert_eq!(det_sizes(&work, &p).0, [736, 2048]);
        // A long strip is padded to (w/8)·2 high.
        let work = working_image(&image(900, 40, |_, _| 0), &p);
        assert_eq!(work.pad_top, (900 / 8 * 2 - 40) / 2);
    }

    #[test]
    fn bilinear_matches_opencv_on_a_ramp() {
        // cv2.resize(np.arange(4)*80 as one row, (8, 1)) = [0, 20, 60, 100, 140, 180, 220, 240].
        let src = image(4, 1, |x, _| (x * 80) as u8);
        let out = resize_bilinear(&src, 8, 1);
        let row: Vec<u8> = out.rgb.chunks(3).map(|p| p[0]).collect();
        assert_eq!(row, [0, 20, 60, 100, 140, 180, 220, 240]);
    }

    fn params() -> TextParams {
        TextParams::default()
    }

    #[test]
    fn a_bright_bar_becomes_one_grown_box() {
        // A 40×8 text blob at (20, 10) on a 100×40 map (working image of the same size).
        let (w, h) = (100usize, 40usize);
        let mut prob = vec![0f32; w * h];
        for y in 10..18 {
            for x in 20..60 {
                prob[y * w + x] = 0.9;
            }
        }
        let work = working_image(&image(w, h, |_, _| 0), &TextParams { min_side: 1, ..params() });
        let boxes = boxes_from_map(&prob, w, [h, w], &work, &params());
        assert_eq!(boxes.len(), 1);
        let b = &boxes[0];
        // The dilated bitmap's extra row and column (probability 0) are inside the box, as in
        // RapidOCR: 0.9 · 40·8 / (41·9).
        assert!((b.score - 0.9 * 320.0 / 369.0).abs() < 0.01, "score {}", b.score);
        // Dilation adds a column and a row; unclip d = area·1.6/perimeter ≈ 5.5 grows each side.
        let [tl, _, br, _] = b.quad;
        assert!(tl[0] >= 12.0 && tl[0] <= 16.0 && tl[1] >= 3.0 && tl[1] <= 6.0, "{:?}", b.quad);
        assert!(br[0] >= 64.0 && br[0] <= 67.0 && br[1] >= 22.0 && br[1] <= 25.0, "{:?}", b.quad);
    }

    #[test]
    fn the_minimum_rectangle_of_a_slanted_band_holds_all_of_it() {
        // A band 648 wide, 38 high, its top edge falling 2 px over its length (a rendered line).
        let mut pts = Vec::new();
        for x in 27..=675 {
            let top = 82 + (675 - x) * 2 / 648;
            for y in top..top + 38 {
                pts.push(Point::new(x, y));
            }
        }
        let r = min_rect(&pts);
        let (quad, short) = mini_box(r);
        assert!((short - 38.0).abs() < 1.5, "short side {short}: {quad:?}");
        let (u, v) = (dist(quad[0], quad[1]), dist(quad[0], quad[3]));
        assert!(u * v <= 649.0 * 40.0, "{quad:?}");
    }

    #[test]
    fn weak_or_tiny_blobs_are_dropped() {
        let (w, h) = (60usize, 30usize);
        let mut prob = vec![0f32; w * h];
        for y in 5..12 {
            for x in 5..40 {
                prob[y * w + x] = 0.4; // above thresh, below box_thresh
            }
        }
        prob[25 * w + 50] = 0.99; // one pixel
        let work = working_image(&image(w, h, |_, _| 0), &TextParams { min_side: 1, ..params() });
        assert!(boxes_from_map(&prob, w, [h, w], &work, &params()).is_empty());
    }

    #[test]
    fn reading_order_groups_rows_by_top() {
        let b =
            |x: f32, y: f32| TextBox { quad: [[x, y], [x + 10.0, y], [x + 10.0, y + 5.0], [x, y + 5.0]], score: 1.0 };
        let mut boxes = vec![b(50.0, 3.0), b(0.0, 30.0), b(0.0, 0.0), b(20.0, 8.0)];
        reading_order(&mut boxes);
        let xs: Vec<(f32, f32)> = boxes.iter().map(|b| (b.quad[0][0], b.quad[0][1])).collect();
        assert_eq!(xs, [(0.0, 0.0), (20.0, 8.0), (50.0, 3.0), (0.0, 30.0)]);
    }

    #[test]
    fn an_axis_aligned_crop_copies_pixels_and_tall_crops_turn() {
        let img = image(20, 10, |x, y| (x * 10 + y) as u8);
        let c = crop(&img, &[[2.0, 1.0], [12.0, 1.0], [12.0, 6.0], [2.0, 6.0]]).unwrap();
        assert_eq!((c.width, c.height), (10, 5));
        assert_eq!(c.rgb[0], img.rgb[(20 + 2) * 3]);
        assert_eq!(c.rgb[(4 * 10 + 9) * 3], img.rgb[(5 * 20 + 11) * 3]);
        let tall = crop(&img, &[[2.0, 0.0], [5.0, 0.0], [5.0, 9.0], [2.0, 9.0]]).unwrap();
        assert_eq!((tall.width, tall.height), (9, 3));
    }

    #[test]
    fn rec_width_follows_rapidocr_and_the_bucket() {
        let p = params();
        assert_eq!(rec_width(&image(151, 54, |_, _| 0), &p), 320);
        // why-rust line 700×48: int(48·14.58) = 700 → 704 with 64-wide buckets.
        assert_eq!(rec_width(&image(700, 48, |_, _| 0), &p), 704);
        assert_eq!(rec_width(&image(5000, 20, |_, _| 0), &p), p.rec_max_width);
        let (input, resized) = rec_input(&image(100, 24, |_, _| 255), 320);
        assert_eq!(resized, 200);
        assert_eq!(input.len(), 3 * 48 * 320);
        assert_eq!((input[199], input[200]), (1.0, 0.0));
    }

    fn charset() -> Charset {
        let mut model = crate::models::onnx_weights::OnnxModel::default();
        model.metadata.insert("character".into(), "a\nb\nc".into());
        Charset::from_metadata(&model).unwrap()
    }

    #[test]
    fn ctc_collapses_repeats_and_blanks() {
        let s = |class, prob| Step { class, prob };
        // a a _ a b <space> c c  → "aab c"
        let steps = [s(1, 0.9), s(1, 0.8), s(0, 0.99), s(1, 0.7), s(2, 0.6), s(4, 0.5), s(3, 0.4), s(3, 0.3)];
        let r = ctc_decode(&steps, &charset());
        assert_eq!(r.text, "aab c");
        assert!((r.score - (0.9 + 0.7 + 0.6 + 0.5 + 0.4) / 5.0).abs() < 1e-6);
        assert_eq!(r.chars.iter().map(|c| c.1).collect::<Vec<_>>(), [0, 3, 4, 5, 6]);
        let quad = [[0.0, 0.0], [80.0, 0.0], [80.0, 10.0], [0.0, 10.0]];
        // 8 steps over a 64-wide input whose first 64 columns are the crop: 8 columns per step.
        let w = words(&r, &quad, 8, 64, 64);
        assert_eq!(w.iter().map(|w| w.text.as_str()).collect::<Vec<_>>(), ["aab", "c"]);
        assert_eq!(w[0].quad[0], [0.0, 0.0]);
        assert_eq!(w[0].quad[1], [50.0, 0.0]);
        assert_eq!(w[1].quad[0], [60.0, 0.0]);
        assert!(ctc_decode(&[s(0, 1.0)], &charset()).text.is_empty());
    }

    #[test]
    fn language_by_letters() {
        assert_eq!(language("Когда").0, "rus");
        assert_eq!(language("Rust's").0, "eng");
        assert_eq!(language("799"), ("unknown", 1.0));
    }

    #[test]
    fn params_are_checked_by_field() {
        assert!(params().check().is_ok());
        assert_eq!(TextParams { det_bucket: 100, ..params() }.check().unwrap_err().0, "det_bucket");
        assert_eq!(TextParams { box_thresh: 2.0, ..params() }.check().unwrap_err().0, "box_thresh");
    }

    #[test]
    fn upside_down_needs_the_threshold() {
        let p = params();
        assert!(upside_down(&[0.05, 0.95], &p));
        assert!(!upside_down(&[0.15, 0.85], &p));
        assert!(!upside_down(&[0.95, 0.05], &p));
        assert!(!upside_down(&[], &p));
        assert_eq!(TextParams { cls_thresh: 1.5, ..p }.check().unwrap_err().0, "cls_thresh");
    }

    #[test]
    fn classifier_input_is_48_by_192_padded() {
        // 100×10: ceil(48·10) > 192 → the whole width; 10×10: 48 wide, then padding.
        let wide = cls_input(&image(100, 10, |_, _| 255));
        assert_eq!(wide.len(), 3 * 48 * 192);
        assert!(wide.iter().all(|v| *v == 1.0));
        let square = cls_input(&image(10, 10, |_, _| 255));
        assert_eq!(square[47], 1.0);
        assert_eq!(square[48], 0.0);
    }

    #[test]
    fn flipped_lines_are_turned_and_their_box_starts_at_the_reading() {
        let img = image(4, 2, |x, y| (y * 4 + x) as u8);
        let turned = rotate_180(&img);
        assert_eq!(turned.rgb[0], 7);
        assert_eq!(turned.rgb[7 * 3], 0);
        assert_eq!(rotate_180(&turned).rgb, img.rgb);
        let quad = [[0.0, 0.0], [40.0, 0.0], [40.0, 10.0], [0.0, 10.0]];
        let line = LineCrop { text_box: TextBox { quad, score: 0.9 }, crop: img, cls: vec![] };
        let out = line_inputs(vec![line.clone(), line], &[true, false], &params());
        assert_eq!(out[0].text_box.quad[0], [40.0, 10.0]);
        assert_eq!(out[1].text_box.quad[0], [0.0, 0.0]);
        assert_ne!(out[0].input, out[1].input);
    }

    #[test]
    fn recogniser_widths_follow_rapidocr_groups() {
        // Ratios 2, 10, 5, 20 (48 high): sorted 2, 5, 10, 20; groups of 2 → (2, 5) and (10, 20).
        let crops: Vec<DecodedImage> = [96, 480, 240, 960].iter().map(|w| image(*w, 48, |_, _| 0)).collect();
        let refs: Vec<&DecodedImage> = crops.iter().collect();
        let p = TextParams { rec_group: 2, ..params() };
        // Group (2, 5): at least 320 wide; group (10, 20): 48 · 20.
        assert_eq!(rec_widths(&refs, &p), [320, 960, 320, 960]);
        let own = TextParams { rec_group: 0, ..params() };
        assert_eq!(rec_widths(&refs, &own), [320, 512, 320, 960]);
    }
}
