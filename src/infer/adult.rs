//! `architecture = "nsfw"`: an image classifier whose classes are split into safe and not, served
//! as Vision's `adult/detect` (per image `safe` ∈ [0, 1], the confidence that it has no 18+
//! content). The shipped model is nsfwjs's MobileNetV2 (a TF.js layers model; classes Drawing,
//! Hentai, Neutral, Porn, Sexy); `safe` is the sum of the probabilities of the classes named in
//! `[models.<name>.safe] classes` (Drawing + Neutral). The network is declared by its I/O contract
//! (`[models.<name>.io]`), as any declared classifier, and runs on the graph runner.
//!
//! Distributed cut: the images go whole to the workers (`fed_whole`): the network's input at the
//! default f16 payload is 301,056 bytes per image (224² × 3 × 2), the uploaded files of the
//! evaluation set 6–792 KB, median 140 KB; the answer is one number.

use std::sync::Arc;
use std::time::Instant;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde_json::{Map, Value, json};

use super::family::{ImageEndpoint, checked, no_modes, settings};
use super::stages::{StageError, infer_marked, prepare};
use super::{Builder, Family, Head, Inference, Invalid, Route, ServedModel, Stage, StartError};
use crate::actors::Preprocess;
use crate::config::{ConfigError, ModelConfig};
use crate::metrics;
use crate::models::declared::{self, IoContract, Scores, Task};
use crate::pipelines::classify::{LabelMap, probabilities};
use crate::pipelines::decode::DecodedImage;
use crate::pipelines::preprocess::ClassifierPrep;

/// The Vision endpoint the family serves.
pub const ENDPOINT: &str = "adult/detect";

pub struct Nsfw;

/// `[models.<name>.safe]`: which classes count as safe.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Safe {
    classes: Vec<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NsfwSettings {
    io: Option<IoContract>,
    safe: Option<Safe>,
}

impl Nsfw {
    fn read(mc: &ModelConfig) -> Result<(IoContract, Safe), Invalid> {
        let s = settings::<NsfwSettings>(mc)?;
        let io = s.io.ok_or_else(|| Invalid::new("io", "the classifier's I/O contract is required"))?;
        let safe =
            s.safe.ok_or_else(|| Invalid::new("safe", "`classes`, the labels that count as safe, is required"))?;
        Ok((io, safe))
    }
}

impl Family for Nsfw {
    fn architecture(&self) -> &'static str {
        "nsfw"
    }

    fn check(&self, mc: &ModelConfig) -> Result<(), Invalid> {
        let (io, safe) = Self::read(mc)?;
        io.check().map_err(Invalid::within("io"))?;
        if io.task != Task::Classify {
            return Err(Invalid::new("io.task", "must be \"classify\""));
        }
        if safe.classes.is_empty() {
            return Err(Invalid::new("safe.classes", "must name at least one label"));
        }
        if mc.labels.is_none() {
            return Err(Invalid::new("labels", "the classifier's labels (one per class) are required"));
        }
        no_modes(mc, "serves adult/detect")
    }

    fn stages(&self, name: &str, mc: &ModelConfig) -> Vec<Stage> {
        let (io, _) = checked(Self::read(mc));
        vec![Stage::new(name, declared::spec(mc.weights.clone(), io), mc.max_batch)]
    }

    fn endpoint(&self) -> Option<&'static str> {
        Some(ENDPOINT)
    }

    fn attach(&self, b: &mut Builder, name: &str, mc: &ModelConfig) -> Result<(), StartError> {
        let (io, safe) = checked(Self::read(mc));
        let path = mc.labels.as_deref().expect("labels checked at load. This is a bug.");
        let labels = LabelMap::load(path, io.classes)?;
        let safe = safe_indices(&labels, &safe.classes).map_err(|message| {
            StartError::Config(ConfigError::Invalid { field: format!("models.{name}.safe.classes"), message })
        })?;
        let head =
            Head { labels: Some(labels), prep: ClassifierPrep::Declared(io), scores: io.output, ..Head::default() };
        let stage = b.place_one::<NsfwService>(name, mc, "nsfw", head)?.remove(0);
        let service = Arc::new(NsfwService { stage, safe });
        b.services.insert(service.clone());
        b.serve_endpoint(ENDPOINT, service, name, mc);
        Ok(())
    }
}

/// The class indices named by `names` (each must be a label of the table).
fn safe_indices(labels: &LabelMap, names: &[String]) -> Result<Vec<usize>, String> {
    let all: Vec<&str> = (0..labels.num_classes()).filter_map(|i| labels.name(i)).collect();
    names
        .iter()
        .map(|n| all.iter().position(|l| l == n).ok_or_else(|| format!("`{n}` is not one of the labels {all:?}")))
        .collect()
}

/// The probability of the safe classes in a classifier's output.
pub fn safe_score(output: &[f32], scores: Scores, safe: &[usize]) -> f32 {
    let probs = probabilities(output, scores);
    (safe.iter().filter_map(|&i| probs.get(i)).sum::<f64>() as f32).clamp(0.0, 1.0)
}

/// The placed nsfw model: its stage and which classes are safe.
pub struct NsfwService {
    pub stage: Arc<ServedModel>,
    safe: Vec<usize>,
}

impl NsfwService {
    /// One image's `safe`: its input (preprocessing pool) → the model's batcher → the safe
    /// classes' probability.
    pub async fn safe(&self, state: &Inference, image: Arc<DecodedImage>, poisoned: bool) -> Result<f32, StageError> {
        let start = Instant::now();
        let input = prepare(state, Preprocess { image, prep: self.stage.prep }).await?;
        ::metrics::histogram!(metrics::STAGE_DURATION, "stage" => "preprocess", "model" => self.stage.name.clone())
            .record(start.elapsed().as_secs_f64());
        let prediction = infer_marked(&self.stage, vec![input], poisoned).await?.remove(0);
        Ok(safe_score(&prediction.output, self.stage.scores, &self.safe))
    }
}

impl ImageEndpoint for NsfwService {
    fn stage(&self) -> &Arc<ServedModel> {
        &self.stage
    }

    fn remote(&self) -> Option<&Arc<crate::broker::api::Broker>> {
        match &self.stage.route {
            Route::Remote(broker) => Some(broker),
            Route::Local(_) => None,
        }
    }

    fn answer<'a>(
        &'a self,
        state: &'a Inference,
        image: Arc<DecodedImage>,
        poisoned: bool,
    ) -> BoxFuture<'a, Result<Map<String, Value>, StageError>> {
        async move {
            let safe = self.safe(state, image, poisoned).await?;
            let mut fields = Map::new();
            fields.insert("safe".into(), json!(f64::from(safe)));
            Ok(fields)
        }
        .boxed()
    }

    fn failed(&self) -> Map<String, Value> {
        // The schema requires `safe` on every entry: a file that was not read is not known to be
        // safe.
        let mut fields = Map::new();
        fields.insert("safe".into(), json!(0.0));
        fields
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_is_the_probability_of_the_safe_classes() {
        let p = [0.1, 0.05, 0.6, 0.2, 0.05];
        assert!((safe_score(&p, Scores::Probabilities, &[0, 2]) - 0.7).abs() < 1e-6);
        // Logits: a softmax first (equal logits: each class 1/5).
        assert!((safe_score(&[3.0; 5], Scores::Logits, &[0, 2]) - 0.4).abs() < 1e-6);
        // Rounding never leaves [0, 1].
        assert_eq!(safe_score(&[0.6, 0.0, 0.5, 0.0, 0.0], Scores::Probabilities, &[0, 2]), 1.0);
    }
}
