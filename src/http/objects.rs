//! `POST /api/v1/objects/detect`, read top to bottom: auth → upload → meta → per image (all at
//! once): decode once → every requested mode on it concurrently (classifier modes: preprocess →
//! batcher → labels; `car_number`: the plates model, `http::plates`) → one `<mode>_labels` list per
//! mode in the Vision envelope, each image's status per mode.
//!
//! Partial answers: a mode whose model has no live worker (restarting, or no `--role worker`
//! serves it) is answered per image with status 2 and the reason, without waiting, while the
//! other modes answer as usual; `object` without its detector (unavailable, or failing for the
//! image) answers the classifier's labels and names the boxes in `missing`. Only a request none of
//! whose modes can be answered is refused (503).

use std::sync::Arc;
use std::time::Instant;

use actix_web::web::{Bytes, Data, Payload, Query};
use actix_web::{HttpRequest, HttpResponse};
use futures_util::FutureExt;
use futures_util::future::{LocalBoxFuture, Shared, join_all};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::auth::AuthQuery;
use super::multipart::read_upload;
use super::stages::each_image;
use crate::error::FileStatus;
use crate::error::{ApiError, Envelope};
use crate::infer::ServedModel;
use crate::infer::objects::{classify, detector_boxes};
use crate::infer::plates::CAR_NUMBER_MODE;
use crate::infer::plates::{PlateLabel, PlateService, read as read_plates};
use crate::infer::stages::StageError;
use crate::metrics;
use crate::pipelines::classify::ObjectLabel;
use crate::pipelines::decode::DecodedImage;
use crate::pipelines::detect::{Detection, PERSON};

const ENDPOINT: &str = "objects/detect";
/// Every mode of the documented `objects/detect` API.
const KNOWN_MODES: &[&str] = &["object", "object2", "scene", "car_number", "multiobject", "pedestrian", "selfie"];

#[derive(Debug, Deserialize)]
struct ImageMeta {
    name: String,
}

#[derive(Debug, Deserialize)]
struct ObjectsMeta {
    #[serde(default)]
    mode: Vec<String>,
    #[serde(default)]
    images: Vec<ImageMeta>,
}

/// `car_number_detect_result_property`.
#[derive(Debug, Serialize)]
pub struct PlateResult {
    pub status: FileStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    name: String,
    labels: Vec<PlateLabel>,
}

impl PlateResult {
    /// One image's answer: its plates, or its per-file (status, error).
    pub fn new(name: &str, read: Result<Vec<PlateLabel>, (FileStatus, String)>) -> Self {
        match read {
            Ok(labels) => Self { status: FileStatus::Ok, error: None, name: name.to_string(), labels },
            Err((status, error)) => Self { status, error: Some(error), name: name.to_string(), labels: vec![] },
        }
    }
}

/// One image's answer (`object_detect_result_property`).
#[derive(Debug, Serialize)]
struct FileResult {
    status: FileStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    name: String,
    labels: Vec<ObjectLabel>,
    /// `pedestrian`: the people found (here: the person boxes kept, not a density-map estimate;
    /// README).
    #[serde(skip_serializing_if = "Option::is_none")]
    count_by_density: Option<usize>,
    /// Parts of this answer left out (an addition to the mode whose model was unavailable or
    /// failed for the image): `object` without the detector's boxes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    missing: Vec<Missing>,
}

/// A part left out of an image's answer, and why.
#[derive(Debug, Clone, Serialize)]
struct Missing {
    /// What is missing: `boxes` (the COCO detector's objects that `object` adds).
    part: &'static str,
    model: String,
    /// The part's own status: 1 permanent (this image), 2 temporary (retry later).
    status: FileStatus,
    error: String,
}

/// The answer body: `<mode>_labels` for each requested mode.
#[derive(Debug, Serialize, Default)]
struct ObjectsBody {
    /// Classifier modes (`object_labels`, …).
    #[serde(flatten)]
    classified: std::collections::BTreeMap<String, Vec<FileResult>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    car_number_labels: Option<Vec<PlateResult>>,
}

pub async fn detect(
    state: Data<AppState>,
    query: Query<AuthQuery>,
    req: HttpRequest,
    payload: Payload,
) -> HttpResponse {
    let started = Instant::now();
    let mut label = RequestLabel::default();
    let result = handle(&state, &query, &req, payload, &mut label).await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.error_type(),
    };
    ::metrics::counter!(metrics::REQUESTS, "endpoint" => ENDPOINT, "mode" => label.modes, "outcome" => outcome)
        .increment(1);
    let elapsed = started.elapsed().as_secs_f64();
    ::metrics::histogram!(metrics::STAGE_DURATION, "stage" => "total", "model" => label.models).record(elapsed);
    ::metrics::histogram!(metrics::REQUEST_DURATION, "endpoint" => ENDPOINT).record(elapsed);
    match result {
        Ok(body) => HttpResponse::Ok().json(Envelope::ok(body)),
        Err(e) => actix_web::ResponseError::error_response(&e),
    }
}

/// A request's metric labels: its modes and the models that answer them, each joined by `+`.
#[derive(Default)]
struct RequestLabel {
    modes: String,
    models: String,
}

/// What answers one requested mode.
enum Mode<'a> {
    /// The classifier, and the boxes `object` adds where a detector is placed.
    Classifier(&'a ServedModel, Boxes<'a>),
    /// The COCO detector: every class (`multiobject`), or people only (`pedestrian`).
    Detector(&'a ServedModel, bool),
    Plates(&'a PlateService),
}

/// The COCO detector's boxes that `object` adds to the classifier's labels.
enum Boxes<'a> {
    /// No detector placed: the classifier's labels alone.
    None,
    /// From this detector.
    Detector(&'a ServedModel),
    /// Its detector has no live worker: left out of the answer, and why.
    LeftOut(Missing),
}

impl<'a> Mode<'a> {
    fn name(&self) -> &str {
        match self {
            Self::Classifier(m, _) | Self::Detector(m, _) => &m.name,
            Self::Plates(p) => &p.name,
        }
    }

    /// The detector whose boxes the mode reads.
    fn detector(&self) -> Option<&'a ServedModel> {
        match self {
            Self::Classifier(_, Boxes::Detector(d)) | Self::Detector(d, _) => Some(*d),
            Self::Classifier(..) => None,
            Self::Plates(_) => None,
        }
    }
}

/// One image's detections by one detector, run once and read by every mode that needs them
/// (`object`, `multiobject`, `pedestrian` in one request: one detector job).
type SharedBoxes<'a> = Shared<LocalBoxFuture<'a, Result<Arc<Vec<Detection>>, StageError>>>;

/// One image's answer to one mode.
enum ModeAnswer {
    /// The labels, and the parts left out.
    Labels(Vec<ObjectLabel>, Vec<Missing>),
    Plates(Vec<PlateLabel>),
}

impl Mode<'_> {
    /// The stages the mode cannot be answered without.
    fn core(&self) -> Vec<&ServedModel> {
        match self {
            Self::Classifier(c, _) | Self::Detector(c, _) => vec![*c],
            Self::Plates(p) => p.stages().to_vec(),
        }
    }

    /// Why the mode cannot be answered now (a core stage without a live worker), if so.
    fn unavailable(&self) -> Option<String> {
        self.core().into_iter().find(|s| !s.has_live_worker()).map(ServedModel::not_live_reason)
    }
}

/// Modes answered here, sorted.
fn served_modes(state: &AppState) -> Vec<&str> {
    let mut served: Vec<&str> = state.infer.modes.keys().map(String::as_str).collect();
    if state.infer.services.contains::<PlateService>() {
        served.push(CAR_NUMBER_MODE);
    }
    served.sort();
    served
}

async fn handle(
    state: &AppState,
    query: &AuthQuery,
    req: &HttpRequest,
    payload: Payload,
    label: &mut RequestLabel,
) -> Result<ObjectsBody, ApiError> {
    state.auth.check(query)?;
    let upload = read_upload(req, payload, &state.limits).await?;
    let meta = upload.meta.as_ref().ok_or_else(|| ApiError::BadRequest("meta is required".into()))?;
    let meta: ObjectsMeta =
        serde_json::from_slice(meta).map_err(|e| ApiError::BadRequest(format!("invalid meta: {e}")))?;
    if meta.mode.is_empty() {
        return Err(ApiError::BadRequest("mode is required non-empty".into()));
    }
    let mut requested: Vec<&str> = Vec::new();
    for mode in &meta.mode {
        if !KNOWN_MODES.contains(&mode.as_str()) {
            return Err(ApiError::BadRequest(format!("unknown mode: {mode}")));
        }
        if !served_modes(state).contains(&mode.as_str()) {
            return Err(ApiError::BadRequest(format!(
                "mode {mode} is not served by this server (served: {})",
                served_modes(state).join(", ")
            )));
        }
        if !requested.contains(&mode.as_str()) {
            requested.push(mode);
        }
    }
    let plates = state.infer.service::<PlateService>();
    let modes: Vec<Mode> = requested
        .iter()
        .map(|m| match (*m, &plates) {
            (CAR_NUMBER_MODE, Some(plates)) => Mode::Plates(plates),
            _ => {
                let model = state.infer.modes[*m].as_ref();
                match model.detector {
                    Some(_) => Mode::Detector(model, *m == "pedestrian"),
                    // `object` adds the boxes of the detector that serves `multiobject`.
                    None => {
                        let detector =
                            state.infer.modes.get("multiobject").map(|d| d.as_ref()).filter(|d| d.detector.is_some());
                        let boxes = match detector {
                            None => Boxes::None,
                            Some(d) if d.has_live_worker() => Boxes::Detector(d),
                            Some(d) => Boxes::LeftOut(Missing {
                                part: "boxes",
                                model: d.name.clone(),
                                status: FileStatus::Temporary,
                                error: format!("{}, retry later", d.not_live_reason()),
                            }),
                        };
                        Mode::Classifier(model, boxes)
                    }
                }
            }
        })
        .collect();
    label.modes = requested.join("+");
    label.models = modes.iter().map(Mode::name).collect::<Vec<_>>().join("+");
    let names: Vec<&str> = meta.images.iter().map(|i| i.name.as_str()).collect();
    let images = upload.images(&names, &state.limits.upload())?;

    // Modes whose model has no live worker are answered as such for every image; the request is
    // refused only when no mode is left.
    let unavailable: Vec<Option<String>> = modes.iter().map(Mode::unavailable).collect();
    if let [Some(why), ..] = unavailable.as_slice()
        && unavailable.iter().all(Option::is_some)
    {
        ::metrics::counter!(metrics::REFUSALS, "reason" => "not_ready").increment(1);
        return Err(ApiError::Overloaded(format!("{why}, retry later")));
    }
    // Admitted on the models the answered modes cannot do without (the detector's boxes of
    // `object` are not among them).
    let stages: Vec<&ServedModel> =
        modes.iter().zip(&unavailable).filter(|(_, why)| why.is_none()).flat_map(|(m, _)| m.core()).collect();
    let _admitted = admit(state, &stages, &images, WORK_BYTES_PER_PIXEL)?;
    let poisoned: Vec<bool> = images
        .iter()
        .map(|(_, bytes)| state.panic_marker.as_ref().is_some_and(|m| contains(bytes, m.as_bytes())))
        .collect();
    // Each image decoded once, every mode read from it; a mode failing for an image is that
    // mode's per-file status, a request-wide failure (queue full, hang-up) ends the request.
    let read = each_image(&state.infer, req, &label.models, &images, |i, image| {
        let (modes, unavailable, poisoned, bytes) = (&modes, &unavailable, poisoned[i], &images[i].1);
        async move {
            let mut boxes: Vec<(&str, SharedBoxes)> = Vec::new();
            let answered = || modes.iter().zip(unavailable).filter(|(_, why)| why.is_none()).map(|(m, _)| m);
            for d in answered().filter_map(Mode::detector) {
                if !boxes.iter().any(|(name, _)| *name == d.name) {
                    let run = detector_boxes(&state.infer, d, image.clone(), bytes, poisoned).boxed_local().shared();
                    boxes.push((d.name.as_str(), run));
                }
            }
            let boxes = &boxes;
            let answers = join_all(modes.iter().zip(unavailable).map(|(m, why)| {
                let image = image.clone();
                async move {
                    match why {
                        Some(why) => Err(StageError::File(FileStatus::Temporary, format!("{why}, retry later"))),
                        None => read_mode(state, m, image, bytes, poisoned, boxes).await,
                    }
                }
            }))
            .await;
            answers
                .into_iter()
                .map(|a| match a {
                    Ok(answer) => Ok(Ok(answer)),
                    Err(e) => e.per_file().map(Err).map_err(StageError::Request),
                })
                .collect::<Result<Vec<_>, StageError>>()
        }
    })
    .await?;

    // Per image per mode → per mode per image; an image that did not decode fails every mode.
    let mut per_mode: Vec<Vec<Result<ModeAnswer, (FileStatus, String)>>> =
        modes.iter().map(|_| Vec::with_capacity(images.len())).collect();
    for image in read {
        match image {
            Ok(answers) => per_mode.iter_mut().zip(answers).for_each(|(list, a)| list.push(a)),
            Err(e) => per_mode.iter_mut().for_each(|list| list.push(Err(e.clone()))),
        }
    }
    let count = |status: FileStatus| {
        ::metrics::counter!(metrics::IMAGES, "endpoint" => ENDPOINT, "status" => status.to_string()).increment(1);
    };
    let mut body = ObjectsBody::default();
    for (mode, answers) in requested.iter().zip(per_mode) {
        let named = images.iter().map(|(name, _)| name.as_str()).zip(answers);
        if *mode == CAR_NUMBER_MODE {
            let list: Vec<PlateResult> =
                named.map(|(name, a)| PlateResult::new(name, a.map(ModeAnswer::into_plates))).collect();
            list.iter().for_each(|r| count(r.status));
            body.car_number_labels = Some(list);
        } else {
            let pedestrian = *mode == "pedestrian";
            let list: Vec<FileResult> = named
                .map(|(name, a)| {
                    let mut r = FileResult::new(name, a.map(ModeAnswer::into_labels));
                    for m in &r.missing {
                        ::metrics::counter!(metrics::PARTIAL, "endpoint" => ENDPOINT, "mode" => mode.to_string(), "model" => m.model.clone())
                            .increment(1);
                    }
                    if pedestrian {
                        // Required by the schema; 0 for a file that failed.
                        r.count_by_density = Some(r.labels.len());
                    }
                    r
                })
                .collect();
            list.iter().for_each(|r| count(r.status));
            body.classified.insert(format!("{mode}_labels"), list);
        }
    }
    Ok(body)
}

/// One mode on one decoded image.
async fn read_mode(
    state: &AppState,
    mode: &Mode<'_>,
    image: Arc<DecodedImage>,
    bytes: &Bytes,
    poisoned: bool,
    boxes: &[(&str, SharedBoxes<'_>)],
) -> Result<ModeAnswer, StageError> {
    let boxes_of = |d: &ServedModel| {
        boxes.iter().find(|(name, _)| *name == d.name).expect("every mode's detector runs. This is a bug.").1.clone()
    };
    match mode {
        Mode::Classifier(model, Boxes::None) => {
            classify(&state.infer, model, image, poisoned).await.map(|labels| ModeAnswer::Labels(labels, vec![]))
        }
        Mode::Classifier(model, Boxes::LeftOut(missing)) => classify(&state.infer, model, image, poisoned)
            .await
            .map(|labels| ModeAnswer::Labels(labels, vec![missing.clone()])),
        Mode::Classifier(model, Boxes::Detector(detector)) => {
            let (labels, boxes) =
                futures_util::future::join(classify(&state.infer, model, image, poisoned), boxes_of(detector)).await;
            let labels = labels?;
            // The boxes are an addition: without them (the detector's worker died, its queue is
            // full, it failed on the image) the classifier's labels answer, the boxes named missing.
            match boxes {
                Ok(boxes) => Ok(ModeAnswer::Labels(
                    merge_object_labels(detector_labels(detector, &boxes, false), labels),
                    vec![],
                )),
                Err(e) => {
                    let (status, error) = match e {
                        StageError::Request(e) => (FileStatus::Temporary, e.to_string()),
                        other => other.per_file().unwrap_or_else(|e| (FileStatus::Temporary, e.to_string())),
                    };
                    let missing = Missing { part: "boxes", model: detector.name.clone(), status, error };
                    Ok(ModeAnswer::Labels(labels, vec![missing]))
                }
            }
        }
        Mode::Detector(model, people) => {
            boxes_of(model).await.map(|boxes| ModeAnswer::Labels(detector_labels(model, &boxes, *people), vec![]))
        }
        Mode::Plates(svc) => read_plates(&state.infer, svc, image, bytes).await.map(ModeAnswer::Plates),
    }
}

/// A detector's labels for one mode: every class (`multiobject`, `object`) or persons only,
/// labelled `Pedestrian` as the docs' `pedestrian` answer is (`people`); at most `top_k`, best
/// first, with their boxes.
fn detector_labels(model: &ServedModel, boxes: &[Detection], people: bool) -> Vec<ObjectLabel> {
    let labels = model.labels.as_ref().expect("a detector has labels (config). This is a bug.");
    boxes
        .iter()
        .filter(|d| !people || d.class == PERSON)
        .filter_map(|d| {
            let coord = d.bbox.map(|v| v.round() as u32);
            let mut l = labels.label(d.class, d.score, coord)?;
            if people {
                (l.eng, l.eng_categories, l.rus_categories) = ("Pedestrian".into(), vec![], vec![]);
            }
            Some(l)
        })
        .take(model.top_k)
        .collect()
}

/// `object` with a detector placed: the classifier's whole-image labels as without one (best
/// first, `coord` the whole image), then the detector's objects with their boxes (best first).
fn merge_object_labels(boxes: Vec<ObjectLabel>, whole: Vec<ObjectLabel>) -> Vec<ObjectLabel> {
    let mut out = whole;
    out.extend(boxes);
    out
}

impl ModeAnswer {
    fn into_labels(self) -> (Vec<ObjectLabel>, Vec<Missing>) {
        match self {
            Self::Labels(labels, missing) => (labels, missing),
            Self::Plates(_) => unreachable!("a classifier mode answered plates. This is a bug."),
        }
    }

    fn into_plates(self) -> Vec<PlateLabel> {
        match self {
            Self::Plates(plates) => plates,
            Self::Labels(..) => unreachable!("car_number answered labels. This is a bug."),
        }
    }
}

impl FileResult {
    fn new(name: &str, read: Result<(Vec<ObjectLabel>, Vec<Missing>), (FileStatus, String)>) -> Self {
        let name = name.to_string();
        match read {
            Ok((labels, missing)) => {
                Self { status: FileStatus::Ok, error: None, name, labels, count_by_density: None, missing }
            }
            Err((status, error)) => {
                Self { status, error: Some(error), name, labels: vec![], count_by_density: None, missing: vec![] }
            }
        }
    }
}

/// A request's images, admitted: the in-flight permits and gauges, released however it ends.
pub(super) struct Admitted {
    _permit: tokio::sync::OwnedSemaphorePermit,
    _bytes: tokio::sync::OwnedSemaphorePermit,
    _inflight: InflightGauges,
}

/// Bytes of work per pixel of an image: its RGB8 raster (3) and one f32 copy of it as model input
/// (12), rounded up; a super-resolved image adds its ×4 RGB8 raster (48).
pub(super) const WORK_BYTES_PER_PIXEL: u64 = 16;
pub(super) const SUPERRES_WORK_BYTES_PER_PIXEL: u64 = WORK_BYTES_PER_PIXEL + 48;

/// KiB permits of a byte budget.
pub(super) fn budget_permits(bytes: u64) -> usize {
    (bytes.div_ceil(1024) as usize).min(tokio::sync::Semaphore::MAX_PERMITS)
}

/// The work `images` will hold in memory: each upload plus `per_pixel` bytes per pixel of the
/// size its header declares (read without decoding; an unreadable header counts its bytes only:
/// it fails at decode).
pub(super) fn work_bytes(images: &[(String, actix_web::web::Bytes)], per_pixel: u64) -> u64 {
    images
        .iter()
        .map(|(_, b)| {
            let pixels = image::ImageReader::new(std::io::Cursor::new(b.as_ref()))
                .with_guessed_format()
                .ok()
                .and_then(|r| r.into_dimensions().ok())
                .map_or(0, |(w, h)| u64::from(w) * u64::from(h));
            b.len() as u64 + pixels * per_pixel
        })
        .sum()
}

/// Admits `images` for `stages`, or refuses at once (503): a stage without a live worker, more
/// than `limits.max_inflight_images` images or `limits.max_inflight_bytes` bytes of work
/// ([`work_bytes`] at `per_pixel`) in flight. A request over the whole byte budget alone is a 400.
pub(super) fn admit(
    state: &AppState,
    stages: &[&ServedModel],
    images: &[(String, actix_web::web::Bytes)],
    per_pixel: u64,
) -> Result<Admitted, ApiError> {
    if let Some(stage) = stages.iter().find(|s| !s.has_live_worker()) {
        ::metrics::counter!(metrics::REFUSALS, "reason" => "not_ready").increment(1);
        return Err(ApiError::Overloaded(format!("{}, retry later", stage.not_live_reason())));
    }
    let n = images.len();
    let permit = state.admission.clone().try_acquire_many_owned(n as u32).map_err(|_| {
        ::metrics::counter!(metrics::REFUSALS, "reason" => "admission").increment(1);
        ApiError::Overloaded(format!(
            "server overloaded: more than {} images in flight, retry later",
            state.limits.max_inflight_images
        ))
    })?;
    let bytes = work_bytes(images, per_pixel);
    let budget = state.limits.max_inflight_bytes;
    if bytes > budget {
        return Err(ApiError::BadRequest(format!(
            "request is too large: its images need about {bytes} bytes in memory, the limit is {budget}"
        )));
    }
    let kib = budget_permits(bytes) as u32;
    let bytes_permit = state.work_budget.clone().try_acquire_many_owned(kib).map_err(|_| {
        ::metrics::counter!(metrics::REFUSALS, "reason" => "memory").increment(1);
        ApiError::Overloaded(format!("server overloaded: more than {budget} bytes of work in flight, retry later"))
    })?;
    Ok(Admitted { _permit: permit, _bytes: bytes_permit, _inflight: InflightGauges::new(n, bytes) })
}

/// `gpubackend_inflight_images` and `_work_bytes` held up while a request's images are in the pipeline, however the
/// handler ends.
struct InflightGauges(f64, f64);

impl InflightGauges {
    fn new(n: usize, bytes: u64) -> Self {
        ::metrics::gauge!(metrics::INFLIGHT_IMAGES).increment(n as f64);
        ::metrics::gauge!(metrics::INFLIGHT_BYTES).increment(bytes as f64);
        Self(n as f64, bytes as f64)
    }
}

impl Drop for InflightGauges {
    fn drop(&mut self) {
        ::metrics::gauge!(metrics::INFLIGHT_IMAGES).decrement(self.0);
        ::metrics::gauge!(metrics::INFLIGHT_BYTES).decrement(self.1);
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}
