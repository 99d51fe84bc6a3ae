//! Classifier logits → Vision API labels: softmax over the 1000 ImageNet classes, probabilities of
//! classes that share a human label summed (e.g. tabby + tiger cat + Egyptian cat → `Cat`), then the
//! threshold and top-k. The class → label table is `models/<model>/labels.json`, generated from the
//! WordNet hierarchy by `tools/reference/gen_labels.py`.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::models::declared::Scores;

#[derive(Debug, Clone, Deserialize)]
struct ClassEntry {
    index: usize,
    eng: String,
    rus: String,
    eng_categories: Vec<String>,
    rus_categories: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct LabelFile {
    classes: Vec<ClassEntry>,
}

/// A human label (several classes may map to it).
#[derive(Debug, Clone, PartialEq)]
struct HumanLabel {
    eng: String,
    rus: String,
    eng_categories: Vec<String>,
    rus_categories: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct LabelMap {
    labels: Vec<HumanLabel>,
    /// class index → index into `labels`.
    class_to_label: Vec<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    #[error("cannot read label table {path}: {message}")]
    Read { path: String, message: String },
    #[error("label table {path}: {message}")]
    Invalid { path: String, message: String },
}

/// One label in an `object_labels` answer.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ObjectLabel {
    pub eng: String,
    pub rus: String,
    pub eng_categories: Vec<String>,
    pub rus_categories: Vec<String>,
    pub prob: f32,
    /// `[x1, y1, x2, y2]`; a classifier answers for the whole image.
    pub coord: [u32; 4],
}

/// A classifier's outputs as probabilities: a softmax of logits, probabilities as they are.
pub fn probabilities(scores: &[f32], kind: Scores) -> Vec<f64> {
    match kind {
        Scores::Logits => {
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let exp: Vec<f64> = scores.iter().map(|&l| f64::from(l - max).exp()).collect();
            let total: f64 = exp.iter().sum();
            exp.into_iter().map(|e| e / total).collect()
        }
        Scores::Probabilities => scores.iter().map(|&p| f64::from(p)).collect(),
    }
}

impl LabelMap {
    pub fn load(path: &Path, num_classes: usize) -> Result<Self, LabelError> {
        let p = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|e| LabelError::Read { path: p.clone(), message: e.to_string() })?;
        let classes = if path.extension().is_some_and(|e| e == "json") {
            let file: LabelFile = serde_json::from_str(&text)
                .map_err(|e| LabelError::Invalid { path: p.clone(), message: e.to_string() })?;
            file.classes
        } else {
            Self::lines(&text)
        };
        Self::from_classes(classes, num_classes).map_err(|message| LabelError::Invalid { path: p, message })
    }

    /// A labels file of one label per line, class 0 first (Triton's and most exports' form): the
    /// label answers as both `eng` and `rus`, without categories. Blank lines at the end are not
    /// classes.
    fn lines(text: &str) -> Vec<ClassEntry> {
        let lines: Vec<&str> = text.trim_end().lines().map(str::trim).collect();
        lines
            .into_iter()
            .enumerate()
            .map(|(index, l)| ClassEntry {
                index,
                eng: l.to_string(),
                rus: l.to_string(),
                eng_categories: vec![],
                rus_categories: vec![],
            })
            .collect()
    }

    fn from_classes(classes: Vec<ClassEntry>, num_classes: usize) -> Result<Self, String> {
        if classes.len() != num_classes {
            return Err(format!("{} classes, the model has {num_classes}", classes.len()));
        }
        let mut labels: Vec<HumanLabel> = Vec::new();
        let mut by_name: HashMap<String, usize> = HashMap::new();
        let mut class_to_label = vec![0; num_classes];
        for (i, c) in classes.into_iter().enumerate() {
            if c.index != i {
                return Err(format!("class {i} has index {}", c.index));
            }
            let label = HumanLabel {
                eng: c.eng,
                rus: c.rus,
                eng_categories: c.eng_categories,
                rus_categories: c.rus_categories,
            };
            let idx = *by_name.entry(label.eng.clone()).or_insert_with(|| {
                labels.push(label.clone());
                labels.len() - 1
            });
            if labels[idx] != label {
                return Err(format!("label `{}` has two different translations or category lists", label.eng));
            }
            class_to_label[i] = idx;
        }
        Ok(Self { labels, class_to_label })
    }

    /// Class `class`'s label (its English name).
    pub fn name(&self, class: usize) -> Option<&str> {
        Some(self.labels[*self.class_to_label.get(class)?].eng.as_str())
    }

    pub fn num_classes(&self) -> usize {
        self.class_to_label.len()
    }

    /// Class `class`'s label with a probability (rounded to 4 decimals) and a box.
    pub fn label(&self, class: usize, prob: f32, coord: [u32; 4]) -> Option<ObjectLabel> {
        let l = &self.labels[*self.class_to_label.get(class)?];
        Some(ObjectLabel {
            eng: l.eng.clone(),
            rus: l.rus.clone(),
            eng_categories: l.eng_categories.clone(),
            rus_categories: l.rus_categories.clone(),
            prob: (prob * 10_000.0).round() / 10_000.0,
            coord,
        })
    }

    /// Labels with summed probability ≥ `threshold`, best first, at most `top_k`.
    pub fn labels(&self, logits: &[f32], threshold: f32, top_k: usize, width: u32, height: u32) -> Vec<ObjectLabel> {
        self.labels_of(logits, Scores::Logits, threshold, top_k, width, height)
    }

    /// [`Self::labels`] of logits (a softmax is taken) or of probabilities (taken as they are).
    pub fn labels_of(
        &self,
        scores: &[f32],
        kind: Scores,
        threshold: f32,
        top_k: usize,
        width: u32,
        height: u32,
    ) -> Vec<ObjectLabel> {
        let probs = probabilities(scores, kind);
        let mut sums = vec![0f64; self.labels.len()];
        for (class, p) in probs.iter().enumerate() {
            if let Some(&label) = self.class_to_label.get(class) {
                sums[label] += p;
            }
        }
        let mut order: Vec<usize> = (0..sums.len()).filter(|&i| sums[i] as f32 >= threshold).collect();
        order.sort_by(|&a, &b| sums[b].total_cmp(&sums[a]));
        order
            .into_iter()
            .take(top_k)
            .map(|i| {
                let l = &self.labels[i];
                ObjectLabel {
                    eng: l.eng.clone(),
                    rus: l.rus.clone(),
                    eng_categories: l.eng_categories.clone(),
                    rus_categories: l.rus_categories.clone(),
                    prob: ((sums[i] * 10_000.0).round() / 10_000.0) as f32,
                    coord: [0, 0, width, height],
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: usize, eng: &str) -> ClassEntry {
        ClassEntry { index, eng: eng.into(), rus: format!("{eng}-ru"), eng_categories: vec![], rus_categories: vec![] }
    }

    #[test]
    fn sums_classes_that_share_a_label() {
        let map = LabelMap::from_classes(vec![entry(0, "Cat"), entry(1, "Dog"), entry(2, "Cat"), entry(3, "Car")], 4)
            .unwrap();
        let logits = [2.0f32, 1.0, 2.0, -5.0];
        let labels = map.labels(&logits, 0.0, 10, 640, 480);
        assert_eq!(labels.iter().map(|l| l.eng.as_str()).collect::<Vec<_>>(), ["Cat", "Dog", "Car"]);
        let e = [2f64.exp(), 1f64.exp(), 2f64.exp(), (-5f64).exp()];
        let want = ((e[0] + e[2]) / e.iter().sum::<f64>()) as f32;
        assert!((labels[0].prob - want).abs() < 1e-4);
        assert_eq!(labels[0].coord, [0, 0, 640, 480]);
        assert_eq!(labels[0].rus, "Cat-ru");
    }

    #[test]
    fn threshold_and_top_k_apply_to_summed_labels() {
        let map = LabelMap::from_classes(vec![entry(0, "A"), entry(1, "B"), entry(2, "C")], 3).unwrap();
        let logits = [3.0f32, 2.0, 0.0];
        assert_eq!(map.labels(&logits, 0.2, 10, 1, 1).len(), 2);
        assert_eq!(map.labels(&logits, 0.0, 1, 1, 1).len(), 1);
    }

    #[test]
    fn probabilities_are_taken_as_they_are_and_label_lines_are_classes() {
        let map = LabelMap::from_classes(LabelMap::lines("0\n180\n\n"), 2).unwrap();
        let labels = map.labels_of(&[0.25, 0.75], Scores::Probabilities, 0.0, 5, 10, 20);
        assert_eq!(
            labels.iter().map(|l| (l.eng.as_str(), l.rus.as_str(), l.prob)).collect::<Vec<_>>(),
            [("180", "180", 0.75), ("0", "0", 0.25)]
        );
        assert!(LabelMap::from_classes(LabelMap::lines("a\nb\nc"), 2).is_err());
    }

    #[test]
    fn rejects_inconsistent_tables() {
        assert!(LabelMap::from_classes(vec![entry(0, "A")], 2).is_err());
        let mut b = entry(1, "A");
        b.rus = "other".into();
        assert!(LabelMap::from_classes(vec![entry(0, "A"), b], 2).is_err());
    }

    #[test]
    fn shipped_imagenet_table_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/mobilenet_v2/labels.json");
        let map = LabelMap::load(&path, 1000).unwrap();
        assert_eq!(map.num_classes(), 1000);
        // 285 = Egyptian cat, 281 = tabby: both are `Cat`.
        assert_eq!(map.labels[map.class_to_label[285]].eng, "Cat");
        assert_eq!(map.class_to_label[285], map.class_to_label[281]);
        assert_eq!(map.labels[map.class_to_label[285]].eng_categories, ["Animals", "Cats"]);
    }
}
