//! One-network models of objects/detect: a classifier (preprocess → its batcher → labels) and the
//! COCO detector (its input → its batcher → peaks, threshold and per-class NMS). Run for the
//! objects/detect handler and for `--role worker`'s detector jobs.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::family::{checked, settings};
use super::plates::CAR_NUMBER_MODE;
use super::stages::{StageError, image_job, infer_marked, prepare, remote_image};
use super::{Builder, Family, Head, Inference, Invalid, Route, ServedModel, Stage, StartError};
use crate::actors::{DetectorBoxes, DetectorInput, Preprocess};
use crate::config::ModelConfig;
use crate::error::FileStatus;
use crate::metrics;
use crate::models::centernet::{self, CENTERNET_INPUT};
use crate::models::declared::{self, IoContract};
use crate::models::mobilenet_v2;
use crate::pipelines::classify::{LabelMap, ObjectLabel};
use crate::pipelines::decode::DecodedImage;
use crate::pipelines::detect::{Detection, DetectorParams};
use crate::pipelines::preprocess::ClassifierPrep;

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

/// The modes a COCO detector serves.
pub const DETECTOR_MODES: [&str; 2] = ["multiobject", "pedestrian"];

/// `architecture = "mobilenet_v2"`: the ImageNet classifier (torchvision's weights) for the
/// objects/detect modes it names.
pub struct MobileNetV2;

/// `architecture = "onnx"`: a network declared in the TOML, not in code: an ONNX graph
/// (`weights`) with its I/O contract (`[models.<name>.io]`), run by the graph runner.
/// `task = "classify"`: a classifier for the objects/detect modes it names.
pub struct Declared;

/// `architecture = "centernet"`: the COCO detector (CenterNet, a TF.js graph model) for
/// objects/detect `multiobject` and `pedestrian`, and the boxes of `object`.
pub struct CenterNet;

/// A classifier's modes and labels.
fn check_classifier(mc: &ModelConfig, labels: &str) -> Result<(), Invalid> {
    if mc.modes.is_empty() {
        return Err(Invalid::new("modes", "must name at least one Vision API mode"));
    }
    if mc.labels.is_none() {
        return Err(Invalid::new("labels", labels));
    }
    Ok(())
}

/// A classifier's one network answers its modes.
fn attach_classifier(b: &mut Builder, name: &str, mc: &ModelConfig, head: Head) -> Result<(), StartError> {
    for stage in b.place(name, mc, head)? {
        b.serve_modes(mc, &stage);
    }
    Ok(())
}

/// The label table of `mc`, checked to have `classes` entries.
fn labels(mc: &ModelConfig, classes: usize) -> Result<Option<LabelMap>, StartError> {
    Ok(mc.labels.as_deref().map(|path| LabelMap::load(path, classes)).transpose()?)
}

/// A family without settings of its own.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NoSettings {}

impl Family for MobileNetV2 {
    fn architecture(&self) -> &'static str {
        "mobilenet_v2"
    }

    fn fed_whole(&self) -> bool {
        false
    }

    fn check(&self, mc: &ModelConfig) -> Result<(), Invalid> {
        settings::<NoSettings>(mc)?;
        check_classifier(mc, "a classifier needs its label table")
    }

    fn stages(&self, name: &str, mc: &ModelConfig) -> Vec<Stage> {
        vec![Stage::new(name, mobilenet_v2::spec(mc.weights.clone()), mc.max_batch)]
    }

    fn attach(&self, b: &mut Builder, name: &str, mc: &ModelConfig) -> Result<(), StartError> {
        let head = Head { labels: labels(mc, mobilenet_v2::NUM_CLASSES)?, ..Head::default() };
        attach_classifier(b, name, mc, head)
    }
}

/// A declared network's settings: its I/O contract.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DeclaredSettings {
    io: Option<IoContract>,
    tensors: Option<TensorNames>,
}

/// `[models.<name>.tensors]`: the names its input and output go by on the Open Inference
/// Protocol (default `input`, `output`), e.g. the ONNX graph's own.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorNames {
    #[serde(default = "default_input_name")]
    pub input: String,
    #[serde(default = "default_output_name")]
    pub output: String,
}

fn default_input_name() -> String {
    "input".into()
}
fn default_output_name() -> String {
    "output".into()
}

impl Default for TensorNames {
    fn default() -> Self {
        Self { input: default_input_name(), output: default_output_name() }
    }
}

/// A declared network's tensor names (`[models.<name>.tensors]`); the defaults for other models.
pub fn tensor_names(mc: &ModelConfig) -> TensorNames {
    if mc.architecture != Declared.architecture() {
        return TensorNames::default();
    }
    checked(settings::<DeclaredSettings>(mc)).tensors.unwrap_or_default()
}

impl Declared {
    fn io(mc: &ModelConfig) -> Result<IoContract, Invalid> {
        settings::<DeclaredSettings>(mc)?
            .io
            .ok_or_else(|| Invalid::new("io", "a declared network needs [models.<name>.io] (its I/O contract)"))
    }
}

impl Family for Declared {
    fn architecture(&self) -> &'static str {
        "onnx"
    }

    fn fed_whole(&self) -> bool {
        false
    }

    fn check(&self, mc: &ModelConfig) -> Result<(), Invalid> {
        Self::io(mc)?.check().map_err(Invalid::within("io"))?;
        if let Some(t) = settings::<DeclaredSettings>(mc)?.tensors
            && (t.input.is_empty() || t.output.is_empty() || t.input == t.output)
        {
            return Err(Invalid::new("tensors", "`input` and `output` must be two different, non-empty names"));
        }
        // No modes: served on the Open Inference Protocol only (a tensor model, /v2 and gRPC).
        if mc.modes.is_empty() {
            return Ok(());
        }
        if mc.modes.iter().any(|x| DETECTOR_MODES.contains(&x.as_str()) || x == CAR_NUMBER_MODE) {
            return Err(Invalid::new(
                "modes",
                "a declared classifier serves objects/detect classifier modes (e.g. \"object\"), not the detector's or car_number",
            ));
        }
        check_classifier(mc, "a classifier needs its labels (a JSON table or one label per line)")
    }

    fn stages(&self, name: &str, mc: &ModelConfig) -> Vec<Stage> {
        vec![Stage::new(name, declared::spec(mc.weights.clone(), checked(Self::io(mc))), mc.max_batch)]
    }

    fn attach(&self, b: &mut Builder, name: &str, mc: &ModelConfig) -> Result<(), StartError> {
        let io = checked(Self::io(mc));
        if b.role.runs_models() {
            // The graph is read once here, on the CPU: an op the runner lacks (named with its
            // node) or an output of another size than declared stops the start-up, rather than
            // leaving the model's workers failing to load.
            crate::models::check_weights(&mc.weights)?;
            declared::DeclaredNet::load(
                &mc.weights,
                &io,
                &crate::models::DeviceSpec::Cpu.open().map_err(crate::models::LoadError::from)?,
            )?;
        }
        let head = Head {
            labels: labels(mc, io.classes)?,
            prep: ClassifierPrep::Declared(io),
            scores: io.output,
            ..Head::default()
        };
        attach_classifier(b, name, mc, head)
    }
}

/// The detector's settings: NMS overlap and peaks (its score threshold is the model's
/// `threshold`, its most objects per image `top_k`).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DetectorSettings {
    detector: Option<DetectorParams>,
}

impl Family for CenterNet {
    fn architecture(&self) -> &'static str {
        "centernet"
    }

    fn check(&self, mc: &ModelConfig) -> Result<(), Invalid> {
        let s = settings::<DetectorSettings>(mc)?;
        if mc.modes.is_empty() || mc.modes.iter().any(|x| !DETECTOR_MODES.contains(&x.as_str())) {
            return Err(Invalid::new("modes", "a COCO detector serves \"multiobject\" and/or \"pedestrian\""));
        }
        if mc.labels.is_none() {
            return Err(Invalid::new("labels", "a detector needs its label table"));
        }
        s.detector.unwrap_or_default().check().map_err(Invalid::within("detector"))
    }

    fn stages(&self, name: &str, mc: &ModelConfig) -> Vec<Stage> {
        vec![Stage::new(name, centernet::spec(mc.weights.clone()), mc.max_batch)]
    }

    /// The detector answers its modes (and the boxes `object` adds); on `--role worker` its
    /// images come whole.
    fn attach(&self, b: &mut Builder, name: &str, mc: &ModelConfig) -> Result<(), StartError> {
        let params = checked(settings::<DetectorSettings>(mc)).detector;
        let head = Head {
            labels: labels(mc, centernet::CENTERNET_CLASSES)?,
            detector: Some(params.unwrap_or_default()),
            ..Head::default()
        };
        let stages = b.place(name, mc, head)?;
        for stage in &stages {
            b.serve_modes(mc, stage);
        }
        b.feed_whole(name, mc, &stages, |state, model, image, poisoned| {
            Box::pin(detector_job(state, model, image, poisoned))
        });
        Ok(())
    }
}
