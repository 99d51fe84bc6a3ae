//! One-network models of objects/detect: a classifier (preprocess → its batcher → labels) and the
//! COCO detector (its input → its batcher → peaks, threshold and per-class NMS). Run for the
//! objects/detect handler and for `--role worker`'s detector jobs.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::Builder;
use super::stages::{StageError, image_job, infer_marked, prepare, remote_image};
use super::{Inference, Route, ServedModel};
use crate::actors::{DetectorBoxes, DetectorInput, Preprocess};
use crate::config::ModelConfig;
use crate::error::FileStatus;
use crate::metrics;
use crate::models::centernet::CENTERNET_INPUT;
use crate::pipelines::classify::ObjectLabel;
use crate::pipelines::decode::DecodedImage;
use crate::pipelines::detect::Detection;

/// A classifier mode: ImageNet preprocessing (preprocessing pool) → the model's batcher → labels.
pub async fn classify(
    state: &Inference,
    model: &ServedModel,
    image: Arc<DecodedImage>,
    poisoned: bool,
) -> Result<Vec<ObjectLabel>, StageError> {
    let start = Instant::now();
    let input = prepare(state, Preprocess { image: image.clone(), prep: model.prep }).await?;
    ::metrics::histogram!(metrics::STAGE_DURATION, "stage" => "preprocess", "model" => model.name.clone())
        .record(start.elapsed().as_secs_f64());
    let prediction = infer_marked(model, vec![input], poisoned).await?.remove(0);
    let labels = model.labels.as_ref().expect("classifiers have labels (config). This is a bug.");
    Ok(labels.labels_of(&prediction.output, model.scores, model.threshold, model.top_k, image.width, image.height))
}

/// The COCO detector's detections of one image: run here, or (`--role api`) by a worker, which
/// gets the file itself (the network's input is 512² × 3, its output 128² × 84).
pub async fn detector_boxes(
    state: &Inference,
    model: &ServedModel,
    image: Arc<DecodedImage>,
    bytes: &Bytes,
    poisoned: bool,
) -> Result<Arc<Vec<Detection>>, StageError> {
    match &model.route {
        Route::Local(_) => detect_boxes(state, model, image, poisoned).await.map(Arc::new),
        Route::Remote(broker) => {
            let body = remote_image(broker, &model.model, bytes, poisoned).await?;
            serde_json::from_slice(&body)
                .map(Arc::new)
                .map_err(|e| StageError::File(FileStatus::Permanent, format!("unreadable answer from the worker: {e}")))
        }
    }
}

/// The COCO detector on one image: its input (preprocessing pool) → its batcher → peaks, the
/// score threshold and per-class NMS (preprocessing pool) → every class's detections, best first,
/// in the image's pixels.
async fn detect_boxes(
    state: &Inference,
    model: &ServedModel,
    image: Arc<DecodedImage>,
    poisoned: bool,
) -> Result<Vec<Detection>, StageError> {
    let start = Instant::now();
    let input = prepare(state, DetectorInput { image: image.clone(), side: CENTERNET_INPUT }).await?;
    ::metrics::histogram!(metrics::STAGE_DURATION, "stage" => "preprocess", "model" => model.name.clone())
        .record(start.elapsed().as_secs_f64());
    let prediction = infer_marked(model, vec![input], poisoned).await?.remove(0);
    let params = model.detector.expect("a detector's params (config). This is a bug.");
    let boxes = DetectorBoxes {
        output: prediction.output,
        params,
        threshold: model.threshold,
        size: [image.width, image.height],
    };
    prepare(state, boxes).await
}

/// `--role worker`: one image job of the COCO detector `model`: decode (the configured limits),
/// the detector on this worker's network, its detections as JSON (the api labels them per mode).
pub async fn detector_job(
    state: Arc<Inference>,
    model: String,
    image: Vec<u8>,
    poisoned: bool,
) -> crate::broker::codec::Outcome {
    let Some(served) = state.models.iter().find(|m| m.model == model && m.detector.is_some()).cloned() else {
        return crate::broker::codec::Outcome::Failed {
            status: FileStatus::Permanent,
            message: format!("no detector {model} on this worker. This is a bug."),
        };
    };
    let encode = |boxes: &Vec<Detection>| serde_json::to_vec(boxes).expect("detections serialize. This is a bug.");
    image_job(&state, &model, image, |img| detect_boxes(&state, &served, img, poisoned), encode).await
}

/// A classifier answers its modes.
pub fn attach_classifier(b: &mut Builder, mc: &ModelConfig, stages: &[Arc<ServedModel>]) {
    for stage in stages {
        b.serve_modes(mc, stage);
    }
}

/// The COCO detector answers its modes (and the boxes `object` adds); on `--role worker` its
/// images come whole.
pub fn attach_detector(b: &mut Builder, name: &str, mc: &ModelConfig, stages: &[Arc<ServedModel>]) {
    for stage in stages {
        b.serve_modes(mc, stage);
    }
    b.feed_whole(name, mc, stages, |state, model, image, poisoned| {
        Box::pin(detector_job(state, model, image, poisoned))
    });
}
