//! The COCO detector's output (CenterNet: per class a heatmap of object centres, and per cell the
//! box's distances to its four sides) → boxes. Pure; the same decode as the graph's own
//! (`tower_0/detections` in the TF.js model): a cell is a peak when it equals the 3×3 maximum
//! around it, the `top_k` highest peaks over all cells and classes, each box `[4x − l, 4y − t,
//! 4x + r, 4y + b]` in input pixels (4 = the map's stride); then per class non-maximum
//! suppression and the score threshold, in the original image's pixels.

/// COCO's `person` class.
pub const PERSON: usize = 0;

/// How detections are kept: score threshold, per-class NMS overlap, at most `max` per image, from
/// the `peaks` best peaks of the map.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectorParams {
    pub iou: f32,
    pub peaks: usize,
}

impl Default for DetectorParams {
    fn default() -> Self {
        Self { iou: 0.5, peaks: 100 }
    }
}

impl DetectorParams {
    /// The settings' own checks: `Err((field, message))`, the field relative to `detector`.
    pub fn check(&self) -> Result<(), (&'static str, &'static str)> {
        if !(self.iou > 0.0 && self.iou <= 1.0) {
            return Err(("iou", "must be within (0, 1]"));
        }
        if self.peaks == 0 {
            return Err(("peaks", "must be at least 1"));
        }
        Ok(())
    }
}

/// One detected object (also the JSON between a worker and the api, `--role`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Detection {
    /// `[x1, y1, x2, y2]`.
    pub bbox: [f32; 4],
    pub score: f32,
    /// COCO class index (0–79).
    pub class: usize,
}

/// The network's output for one image, C×H×W: `classes` heatmap channels, then 4 box channels.
pub struct CenterNetOutput<'a> {
    pub data: &'a [f32],
    pub classes: usize,
    pub side: usize,
}

impl CenterNetOutput<'_> {
    fn heat(&self, c: usize, y: usize, x: usize) -> f32 {
        self.data[(c * self.side + y) * self.side + x]
    }

    fn size(&self, k: usize, y: usize, x: usize) -> f32 {
        self.data[((self.classes + k) * self.side + y) * self.side + x]
    }

    /// The graph's decode: the `top_k` peaks (ties by cell, then class, as TensorFlow's TopK on
    /// the N×H×W×C map flattened), boxes in the `input`-pixel frame.
    pub fn peaks(&self, top_k: usize, input: usize) -> Vec<Detection> {
        let s = self.side;
        let stride = input as f32 / s as f32;
        let mut all = Vec::new();
        for y in 0..s {
            for x in 0..s {
                for c in 0..self.classes {
                    let v = self.heat(c, y, x);
                    let mut peak = true;
                    'n: for ny in y.saturating_sub(1)..=(y + 1).min(s - 1) {
                        for nx in x.saturating_sub(1)..=(x + 1).min(s - 1) {
                            if self.heat(c, ny, nx) > v {
                                peak = false;
                                break 'n;
                            }
                        }
                    }
                    // Non-peaks score 0, as the graph multiplies by the peak mask: they can only
                    // fill the list when there are fewer than `top_k` peaks.
                    if peak {
                        all.push(((y * s + x) * self.classes + c, v));
                    }
                }
            }
        }
        // Highest first, equal scores by index (TopK's order): select the `top_k` best, then
        // sort only those.
        let order = |a: &(usize, f32), b: &(usize, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if all.len() > top_k && top_k > 0 {
            all.select_nth_unstable_by(top_k - 1, order);
            all.truncate(top_k);
        }
        all.sort_by(order);
        all.truncate(top_k);
        all.into_iter()
            .map(|(index, score)| {
                let (cell, class) = (index / self.classes, index % self.classes);
                let (y, x) = (cell / s, cell % s);
                let (cx, cy) = (x as f32 * stride, y as f32 * stride);
                let d = |k| self.size(k, y, x);
                Detection { bbox: [cx - d(0), cy - d(1), cx + d(2), cy + d(3)], score, class }
            })
            .collect()
    }
}

pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let area = |r: &[f32; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let union = area(a) + area(b) - inter;
    if union > 0.0 { inter / union } else { 0.0 }
}

/// Detections at or above `threshold`, per class greedy non-maximum suppression at `iou_max`,
/// highest score first, at most `max`; boxes scaled from the `input`² frame to `width` × `height`
/// and clamped to the image.
pub fn select(
    peaks: &[Detection],
    threshold: f32,
    iou_max: f32,
    max: usize,
    input: usize,
    [width, height]: [u32; 2],
) -> Vec<Detection> {
    let mut candidates: Vec<&Detection> = peaks.iter().filter(|d| d.score >= threshold).collect();
    candidates.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Detection> = Vec::new();
    for d in candidates {
        if kept.len() == max {
            break;
        }
        if kept.iter().any(|k| k.class == d.class && iou(&k.bbox, &d.bbox) > iou_max) {
            continue;
        }
        kept.push(d.clone());
    }
    let (sx, sy) = (width as f32 / input as f32, height as f32 / input as f32);
    kept.into_iter()
        .map(|d| {
            let b = d.bbox;
            let bbox = [
                (b[0] * sx).clamp(0.0, width as f32),
                (b[1] * sy).clamp(0.0, height as f32),
                (b[2] * sx).clamp(0.0, width as f32),
                (b[3] * sy).clamp(0.0, height as f32),
            ];
            Detection { bbox, ..d }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 2-class, 4×4 map: class 1 peaks at (y 1, x 2) at 0.9 beside a 0.5 neighbour; class 0
    /// peaks at (3, 0) at 0.7; sizes 1, 2, 3, 4 everywhere.
    fn map() -> Vec<f32> {
        let s = 4;
        let mut d = vec![0.01f32; (2 + 4) * s * s];
        d[(s + 1) * s + 2] = 0.9;
        d[(s + 1) * s + 3] = 0.5;
        d[3 * s] = 0.7;
        for k in 0..4 {
            for i in 0..s * s {
                d[(2 + k) * s * s + i] = (k + 1) as f32;
            }
        }
        d
    }

    #[test]
    fn peaks_are_local_maxima_with_boxes_around_the_cell() {
        let d = map();
        let out = CenterNetOutput { data: &d, classes: 2, side: 4 };
        let p = out.peaks(3, 16);
        assert_eq!(p[0], Detection { bbox: [8.0 - 1.0, 4.0 - 2.0, 8.0 + 3.0, 4.0 + 4.0], score: 0.9, class: 1 });
        assert_eq!((p[1].class, p[1].score, p[1].bbox[0]), (0, 0.7, -1.0));
        // The 0.5 beside the 0.9 is no peak; the third is a flat 0.01 cell.
        assert!((p[2].score - 0.01).abs() < 1e-6, "{p:?}");
    }

    #[test]
    fn selection_thresholds_suppresses_per_class_and_scales_to_the_image() {
        let d = |bbox, score, class| Detection { bbox, score, class };
        let peaks = vec![
            d([0.0, 0.0, 10.0, 10.0], 0.9, 0),
            d([1.0, 1.0, 10.0, 10.0], 0.8, 0),
            d([1.0, 1.0, 10.0, 10.0], 0.7, 1),
            d([20.0, 20.0, 40.0, 40.0], 0.1, 0),
        ];
        let s = select(&peaks, 0.2, 0.5, 10, 20, [40, 10]);
        assert_eq!(s, vec![d([0.0, 0.0, 20.0, 5.0], 0.9, 0), d([2.0, 0.5, 20.0, 5.0], 0.7, 1)]);
        assert_eq!(select(&peaks, 0.2, 0.5, 1, 20, [20, 20]).len(), 1);
        assert!((iou(&[0.0, 0.0, 2.0, 2.0], &[1.0, 0.0, 3.0, 2.0]) - 1.0 / 3.0).abs() < 1e-6);
    }
}
