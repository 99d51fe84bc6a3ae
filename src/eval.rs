//! Quality evaluation against labelled real photos (`gpubackend eval …`). A tool, not the data
//! path: anyhow errors and printed reports.
//!
//! `eval faces` runs the face detector (the cascade at its stage thresholds, as served) on the
//! photos of a labels file (tools/eval/faces.json: each photo's true face boxes and the faces no
//! setting finds), then scores every [`FaceFilter`] of a grid: precision and recall, and the
//! configured filter beside facenet-pytorch's (no filter).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use serde::Deserialize;

use crate::infer::Family;
use crate::models::DeviceSpec;
use crate::pipelines::decode::{DecodedImage, ImageLimits, decode};
use crate::pipelines::face_detect::FaceConfig;
use crate::pipelines::face_detect::{DetectParams, Face, FaceFilter, detect_tiled, iou};
use crate::pipelines::text::resize_bilinear;

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Face detection precision and recall on labelled photos, over a grid of final-score and
    /// minimum-size settings.
    Faces(FacesArgs),
}

#[derive(Debug, Args)]
pub struct FacesArgs {
    /// Labels (JSON): `{"iou": .., "images": [{"path", "faces": [[x1,y1,x2,y2]..], "missed"}]}`.
    #[arg(long, default_value = "tools/eval/faces.json")]
    pub labels: PathBuf,
    /// Config whose face model is evaluated (default: the embedded one).
    #[arg(short = 'c', long)]
    pub config: Option<PathBuf>,
    /// Print every detection (box, side, score, matched label) for labelling.
    #[arg(long)]
    pub dump: bool,
}

/// The labels file.
#[derive(Debug, Deserialize)]
pub struct Labels {
    /// Overlap from which a detection is the labelled face.
    pub iou: f32,
    pub images: Vec<LabelledImage>,
}

#[derive(Debug, Deserialize)]
pub struct LabelledImage {
    /// Photo path, relative to the labels file's directory's parent's parent (the repository root).
    pub path: PathBuf,
    /// Where it comes from.
    #[serde(default)]
    pub source: String,
    /// The true faces the detector finds at its stage thresholds.
    pub faces: Vec<[f32; 4]>,
    /// True faces it finds at no setting (counted against recall).
    #[serde(default)]
    pub missed: usize,
    /// The photo shrunk to 1/n and tiled n × n in a frame of its size (labels and misses
    /// likewise): the crowd case, each face at 1/n of its relative size. 1 = as is.
    #[serde(default = "one")]
    pub grid: u32,
}

fn one() -> u32 {
    1
}

impl LabelledImage {
    /// The photo and its labels as evaluated (tiled when `grid` > 1).
    fn prepared(&self, img: DecodedImage) -> (DecodedImage, Vec<[f32; 4]>, usize) {
        let n = self.grid.max(1);
        if n == 1 {
            return (img, self.faces.clone(), self.missed);
        }
        let (tw, th) = ((img.width / n) as usize, (img.height / n) as usize);
        let small = resize_bilinear(&img, tw, th);
        let (w, h) = (tw * n as usize, th * n as usize);
        let mut rgb = vec![0u8; w * h * 3];
        let mut faces = Vec::new();
        let (sx, sy) = (tw as f32 / img.width as f32, th as f32 / img.height as f32);
        for gy in 0..n as usize {
            for gx in 0..n as usize {
                for y in 0..th {
                    let dst = ((gy * th + y) * w + gx * tw) * 3;
                    rgb[dst..dst + tw * 3].copy_from_slice(&small.rgb[y * tw * 3..(y + 1) * tw * 3]);
                }
                let (ox, oy) = ((gx * tw) as f32, (gy * th) as f32);
                faces.extend(
                    self.faces.iter().map(|b| [b[0] * sx + ox, b[1] * sy + oy, b[2] * sx + ox, b[3] * sy + oy]),
                );
            }
        }
        let frame = DecodedImage { width: w as u32, height: h as u32, rgb };
        (frame, faces, self.missed * (n * n) as usize)
    }
}

/// One photo's detections (all of them: stage thresholds only), its size and labels as evaluated.
#[derive(Debug, Clone)]
pub struct Detections {
    pub width: u32,
    pub height: u32,
    pub faces: Vec<Face>,
    pub truth: Vec<[f32; 4]>,
    pub missed: usize,
    /// The photo tiled (`grid` > 1): the crowd case, scored apart.
    pub crowd: bool,
}

/// True positives, false positives and false negatives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub tp: usize,
    pub fp: usize,
    pub fn_: usize,
}

impl Counts {
    pub fn precision(&self) -> f64 {
        if self.tp + self.fp == 0 { 1.0 } else { self.tp as f64 / (self.tp + self.fp) as f64 }
    }
    pub fn recall(&self) -> f64 {
        if self.tp + self.fn_ == 0 { 1.0 } else { self.tp as f64 / (self.tp + self.fn_) as f64 }
    }
    fn add(&mut self, o: Counts) {
        self.tp += o.tp;
        self.fp += o.fp;
        self.fn_ += o.fn_;
    }
}

/// Which label each detection is (most probable first, each label matched once), or `None`.
pub fn matches(faces: &[Face], truth: &[[f32; 4]], min_iou: f32) -> Vec<Option<usize>> {
    let mut order: Vec<usize> = (0..faces.len()).collect();
    order.sort_by(|&a, &b| faces[b].score.total_cmp(&faces[a].score));
    let mut taken = vec![false; truth.len()];
    let mut out = vec![None; faces.len()];
    for i in order {
        let best = (0..truth.len())
            .filter(|&t| !taken[t])
            .map(|t| (t, iou(faces[i].bbox, truth[t])))
            .filter(|&(_, o)| o >= min_iou)
            .max_by(|a, b| a.1.total_cmp(&b.1));
        if let Some((t, _)) = best {
            taken[t] = true;
            out[i] = Some(t);
        }
    }
    out
}

/// One photo scored under `filter`.
pub fn score(d: &Detections, filter: &FaceFilter, min_iou: f32) -> Counts {
    let kept: Vec<Face> = d.faces.iter().filter(|f| filter.keeps(f, d.width, d.height)).copied().collect();
    let tp = matches(&kept, &d.truth, min_iou).iter().filter(|m| m.is_some()).count();
    Counts { tp, fp: kept.len() - tp, fn_: d.truth.len() + d.missed - tp }
}

/// Photos scored under `filter`.
pub fn score_all<'a>(dets: impl IntoIterator<Item = &'a Detections>, filter: &FaceFilter, min_iou: f32) -> Counts {
    let mut c = Counts::default();
    for d in dets {
        c.add(score(d, filter, min_iou));
    }
    c
}

/// The filter that lets everything the cascade found through (facenet-pytorch's behaviour).
pub const NO_FILTER: FaceFilter = FaceFilter { min_score: 0.0, min_side: 0.0, min_side_fraction: 0.0 };

pub fn load_labels(path: &Path) -> anyhow::Result<Labels> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))
}

/// The face model's detector on every labelled photo (CPU), paths relative to `root`.
pub fn detect_all(labels: &Labels, fc: &FaceConfig, weights: &Path, root: &Path) -> anyhow::Result<Vec<Detections>> {
    let nets = crate::models::mtcnn::Mtcnn::load(&root.join(weights), DeviceSpec::Cpu.device()?)?;
    let params = DetectParams { min_face: fc.min_face, thresholds: fc.thresholds, factor: fc.factor };
    let limits = ImageLimits { max_width: 8192, max_height: 8192, ..ImageLimits::default() };
    let mut out = Vec::new();
    for l in &labels.images {
        let path = root.join(&l.path);
        let bytes =
            std::fs::read(&path).with_context(|| format!("read {} (scripts/fetch-weights.sh)", path.display()))?;
        let img = decode(&bytes, &limits).with_context(|| format!("decode {}", path.display()))?;
        let (img, truth, missed) = l.prepared(img);
        let faces = detect_tiled(&img, &params, fc.canvas, &nets).map_err(|e| anyhow::anyhow!(e))?;
        out.push(Detections { width: img.width, height: img.height, faces, truth, missed, crowd: l.grid > 1 });
    }
    Ok(out)
}

pub fn run(cmd: Cmd) -> anyhow::Result<()> {
    let Cmd::Faces(a) = cmd;
    let config = crate::infer::load_config(a.config.as_deref())?;
    let face = crate::infer::face::Faces.architecture();
    let (name, model) =
        config.models.iter().find(|(_, m)| m.architecture == face).context("the config has no face model")?;
    let fc = &crate::infer::face::face_config(model)
        .map_err(|e| anyhow::anyhow!("models.{name}.{}: {}", e.field, e.message))?;
    let labels = load_labels(&a.labels)?;
    let root = a.labels.parent().and_then(Path::parent).and_then(Path::parent).unwrap_or(Path::new("."));
    let dets = detect_all(&labels, fc, &model.weights, root)?;
    if a.dump {
        for (d, l) in dets.iter().zip(&labels.images) {
            println!("{} ({} × {}, grid {})", l.path.display(), d.width, d.height, l.grid);
            let m = matches(&d.faces, &d.truth, labels.iou);
            for (f, m) in d.faces.iter().zip(m) {
                let side = (f.bbox[2] - f.bbox[0]).min(f.bbox[3] - f.bbox[1]);
                let b = f.bbox.map(|v| v.round() as i64);
                println!(
                    "  {b:?} side {side:6.1} score {:.4} {}",
                    f.score,
                    m.map_or("-".into(), |t| format!("label {t}"))
                );
            }
        }
    }
    let (crowds, photos): (Vec<&Detections>, Vec<_>) = dets.iter().partition(|d| d.crowd);
    let faces = |ds: &[&Detections]| ds.iter().map(|d| d.truth.len() + d.missed).sum::<usize>();
    println!(
        "{} photos ({} faces) as they are, {} as crowds ({} faces); model `{name}` (stage thresholds {:?}, pyramid min_face {})",
        photos.len(),
        faces(&photos),
        crowds.len(),
        faces(&crowds),
        fc.thresholds,
        fc.min_face
    );
    println!(
        "{:>9} {:>8} {:>9} | {:>4} {:>4} {:>4} {:>9} {:>7} | crowds {:>4} {:>4} {:>4} {:>9} {:>7}",
        "min_score",
        "min_side",
        "fraction",
        "TP",
        "FP",
        "FN",
        "precision",
        "recall",
        "TP",
        "FP",
        "FN",
        "precision",
        "recall"
    );
    let row = |f: &FaceFilter, note: &str| {
        let c = score_all(photos.iter().copied(), f, labels.iou);
        let k = score_all(crowds.iter().copied(), f, labels.iou);
        println!(
            "{:>9.3} {:>8.0} {:>9.3} | {:>4} {:>4} {:>4} {:>9.3} {:>7.3} |        {:>4} {:>4} {:>4} {:>9.3} {:>7.3} {note}",
            f.min_score,
            f.min_side,
            f.min_side_fraction,
            c.tp,
            c.fp,
            c.fn_,
            c.precision(),
            c.recall(),
            k.tp,
            k.fp,
            k.fn_,
            k.precision(),
            k.recall()
        );
    };
    for min_score in [0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995] {
        for min_side in [0.0, 20.0, 30.0, 40.0] {
            for min_side_fraction in [0.0, 0.02, 0.04, 0.06, 0.08] {
                row(&FaceFilter { min_score, min_side, min_side_fraction }, "");
            }
        }
    }
    row(&NO_FILTER, "old defaults (the cascade alone)");
    row(&fc.filter(), "configured");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn face(bbox: [f32; 4], score: f32) -> Face {
        Face { bbox, score, landmarks: [[0.0; 2]; 5] }
    }

    #[test]
    fn each_label_matches_once_most_probable_first() {
        let truth = [[0.0, 0.0, 100.0, 100.0]];
        // Two boxes over one face: the more probable is the match, the other a false positive.
        let faces = [face([5.0, 5.0, 105.0, 105.0], 0.8), face([0.0, 0.0, 100.0, 100.0], 0.99)];
        assert_eq!(matches(&faces, &truth, 0.4), vec![None, Some(0)]);
        // Too little overlap: no match.
        assert_eq!(matches(&[face([80.0, 80.0, 180.0, 180.0], 0.9)], &truth, 0.4), vec![None]);
    }

    #[test]
    fn counts_score_filters_with_misses() {
        let d = Detections {
            truth: vec![[0.0, 0.0, 100.0, 100.0], [200.0, 0.0, 240.0, 40.0]],
            missed: 1,
            crowd: false,
            width: 400,
            height: 400,
            faces: vec![
                face([0.0, 0.0, 100.0, 100.0], 0.99),
                face([200.0, 0.0, 240.0, 40.0], 0.96),
                face([300.0, 300.0, 320.0, 320.0], 0.9),
            ],
        };
        assert_eq!(score(&d, &NO_FILTER, 0.4), Counts { tp: 2, fp: 1, fn_: 1 });
        let strict = FaceFilter { min_score: 0.95, ..NO_FILTER };
        assert_eq!(score(&d, &strict, 0.4), Counts { tp: 2, fp: 0, fn_: 1 });
        let large = FaceFilter { min_side_fraction: 0.2, ..NO_FILTER };
        let c = score(&d, &large, 0.4);
        assert_eq!(c, Counts { tp: 1, fp: 0, fn_: 2 });
        assert_eq!((c.precision(), c.recall()), (1.0, 1.0 / 3.0));
    }

    #[test]
    fn grid_tiles_the_photo_and_its_labels() {
        let l = LabelledImage {
            path: "x.jpg".into(),
            source: String::new(),
            faces: vec![[10.0, 20.0, 30.0, 40.0]],
            missed: 1,
            grid: 2,
        };
        let img = DecodedImage { width: 41, height: 40, rgb: vec![200; 41 * 40 * 3] };
        let (frame, faces, missed) = l.prepared(img);
        assert_eq!((frame.width, frame.height, missed), (40, 40, 4));
        assert_eq!(faces.len(), 4);
        assert_eq!(faces[0], [10.0 * 20.0 / 41.0, 10.0, 30.0 * 20.0 / 41.0, 20.0]);
        assert_eq!(faces[3], [10.0 * 20.0 / 41.0 + 20.0, 30.0, 30.0 * 20.0 / 41.0 + 20.0, 40.0]);
        assert!(frame.rgb.iter().all(|&v| v == 200));
    }
}
