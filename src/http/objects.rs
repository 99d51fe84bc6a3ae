//! `POST /api/v1/objects/detect`, read top to bottom: auth → upload → meta → per requested mode
//! (concurrently): classifier modes per image decode → preprocess → batcher → labels; `car_number`
//! through the plates model (`http::plates`) → one `<mode>_labels` list per mode in the Vision
//! envelope.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::web::{Data, Payload, Query};
use actix_web::{HttpRequest, HttpResponse};
use futures_util::future::join_all;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::auth::AuthQuery;
use super::disconnect::client_gone;
use super::multipart::read_upload;
use super::plates::read_plates;
use super::{AppState, ServedModel};
use crate::actors::{Decode, Enqueue, Job, Prediction, Preprocess};
use crate::config::CAR_NUMBER_MODE;
use crate::error::{ApiError, Envelope};
use crate::metrics;
use crate::pipelines::classify::ObjectLabel;
use crate::pipelines::preprocess::ClassifierSpec;

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

/// One image's answer (`object_detect_result_property`).
#[derive(Debug, Serialize)]
struct FileResult {
    status: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    name: String,
    labels: Vec<ObjectLabel>,
}

/// The answer body: `<mode>_labels` for each requested mode.
#[derive(Debug, Serialize, Default)]
struct ObjectsBody {
    /// Classifier modes (`object_labels`, …).
    #[serde(flatten)]
    classified: std::collections::BTreeMap<String, Vec<FileResult>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    car_number_labels: Option<Vec<super::plates::PlateResult>>,
}

pub async fn detect(
    state: Data<AppState>,
    query: Query<AuthQuery>,
    req: HttpRequest,
    payload: Payload,
) -> HttpResponse {
    let started = Instant::now();
    let mut mode_label = String::new();
    let result = handle(&state, &query, &req, payload, &mut mode_label).await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.error_type(),
    };
    ::metrics::counter!(metrics::REQUESTS, "endpoint" => ENDPOINT, "mode" => mode_label.clone(), "outcome" => outcome)
        .increment(1);
    let elapsed = started.elapsed().as_secs_f64();
    ::metrics::histogram!(metrics::STAGE_DURATION, "stage" => "total", "model" => mode_model(&state, &mode_label))
        .record(elapsed);
    ::metrics::histogram!(metrics::REQUEST_DURATION, "endpoint" => ENDPOINT).record(elapsed);
    match result {
        Ok(body) => HttpResponse::Ok().json(Envelope::ok(body)),
        Err(e) => actix_web::ResponseError::error_response(&e),
    }
}

fn mode_model(state: &AppState, mode: &str) -> String {
    match (mode, &state.plates) {
        (CAR_NUMBER_MODE, Some(p)) => p.name.clone(),
        _ => state.modes.get(mode).map(|m| m.name.clone()).unwrap_or_default(),
    }
}

/// Modes answered here, sorted.
fn served_modes(state: &AppState) -> Vec<&str> {
    let mut served: Vec<&str> = state.modes.keys().map(String::as_str).collect();
    if state.plates.is_some() {
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
    mode_label: &mut String,
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
    *mode_label = requested.join("+");
    let names: Vec<&str> = meta.images.iter().map(|i| i.name.as_str()).collect();
    let images = upload.images(&names, &state.limits)?;
    let classifiers: Vec<(&str, Arc<ServedModel>)> =
        requested.iter().filter_map(|m| state.modes.get(*m).map(|s| (*m, s.clone()))).collect();
    let plates = if requested.contains(&CAR_NUMBER_MODE) { state.plates.clone() } else { None };

    let mut stages: Vec<&ServedModel> = classifiers.iter().map(|(_, s)| s.as_ref()).collect();
    if let Some(p) = &plates {
        stages.extend(p.stages());
    }
    let _admitted = admit(state, &stages, images.len())?;
    let work = async {
        let classified = join_all(classifiers.iter().map(|(_, model)| run_images(state, model, &images)));
        let read = async {
            match &plates {
                Some(svc) => Some(read_plates(state, svc, req, &images).await),
                None => None,
            }
        };
        tokio::join!(classified, read)
    };
    let (classified, read) = tokio::select! {
        done = work => done,
        () = client_gone(req) => return Err(ApiError::ClientGone("client closed the connection".into())),
    };
    let count = |status: u8| {
        ::metrics::counter!(metrics::IMAGES, "endpoint" => ENDPOINT, "status" => status.to_string()).increment(1);
    };
    let mut body = ObjectsBody::default();
    for ((mode, _), answers) in classifiers.iter().zip(classified) {
        let answers = answers?;
        answers.iter().for_each(|r| count(r.status));
        body.classified.insert(format!("{mode}_labels"), answers);
    }
    if let Some(read) = read {
        let answers = read?;
        answers.iter().for_each(|r| count(r.status));
        body.car_number_labels = Some(answers);
    }
    Ok(body)
}

/// A request's images, admitted: the in-flight permits and gauge, released however it ends.
pub(super) struct Admitted {
    _permit: tokio::sync::OwnedSemaphorePermit,
    _inflight: InflightImages,
}

/// Admits `n` images for `stages`, or refuses at once (503): a stage without a live worker, or
/// more than `limits.max_inflight_images` images in flight.
pub(super) fn admit(state: &AppState, stages: &[&ServedModel], n: usize) -> Result<Admitted, ApiError> {
    if let Some(stage) = stages.iter().find(|s| !s.has_live_worker()) {
        ::metrics::counter!(metrics::REFUSALS, "reason" => "not_ready").increment(1);
        return Err(ApiError::Overloaded(format!(
            "model {} is not ready: no live worker (loading or restarting), retry later",
            stage.name
        )));
    }
    let permit = state.admission.clone().try_acquire_many_owned(n as u32).map_err(|_| {
        ::metrics::counter!(metrics::REFUSALS, "reason" => "admission").increment(1);
        ApiError::Overloaded(format!(
            "server overloaded: more than {} images in flight, retry later",
            state.limits.max_inflight_images
        ))
    })?;
    Ok(Admitted { _permit: permit, _inflight: InflightImages::new(n) })
}

/// `gpubackend_inflight_images` held up while a request's images are in the pipeline, however the
/// handler ends.
struct InflightImages(f64);

impl InflightImages {
    fn new(n: usize) -> Self {
        ::metrics::gauge!(metrics::INFLIGHT_IMAGES).increment(n as f64);
        Self(n as f64)
    }
}

impl Drop for InflightImages {
    fn drop(&mut self) {
        ::metrics::gauge!(metrics::INFLIGHT_IMAGES).decrement(self.0);
    }
}

/// Stage timings of one image, recorded once when it is answered.
#[derive(Default)]
struct Timings {
    decode: Duration,
    preprocess: Duration,
}

async fn run_images(
    state: &AppState,
    model: &Arc<ServedModel>,
    images: &[(String, actix_web::web::Bytes)],
) -> Result<Vec<FileResult>, ApiError> {
    // 1. decode + preprocess every image concurrently on the CPU pools.
    let prepared = join_all(images.iter().map(|(_, bytes)| async {
        let mut t = Timings::default();
        let start = Instant::now();
        let decoded = state
            .decoder
            .send(Decode { bytes: bytes.clone(), limits: state.limits.clone() })
            .await
            .map_err(|e| ApiError::Internal(format!("decoder unavailable: {e}")))?;
        t.decode = start.elapsed();
        let image = match decoded {
            Ok(img) => Arc::new(img),
            Err(e) => return Ok(Err(e.to_string())),
        };
        let start = Instant::now();
        let input = state
            .preprocessor
            .send(Preprocess { image: image.clone(), spec: ClassifierSpec::IMAGENET })
            .await
            .map_err(|e| ApiError::Internal(format!("preprocessor unavailable: {e}")))?;
        t.preprocess = start.elapsed();
        Ok::<_, ApiError>(Ok((image, input, t)))
    }))
    .await;

    // 2. enqueue all of them; a full queue refuses the whole request at once (dropping the
    //    receivers makes the batcher discard this request's already-queued items).
    let mut pending = Vec::with_capacity(images.len());
    for ((_, bytes), prepared) in images.iter().zip(prepared) {
        match prepared? {
            Err(decode_error) => pending.push(Err(decode_error)),
            Ok((image, input, t)) => {
                let (tx, rx) = oneshot::channel();
                let poisoned = state.panic_marker.as_ref().is_some_and(|m| contains(bytes, m.as_bytes()));
                let job = Job { input: Arc::new(input), poisoned, reply: tx };
                model
                    .batcher
                    .send(Enqueue(job))
                    .await
                    .map_err(|e| ApiError::Internal(format!("batcher unavailable: {e}")))?
                    .map_err(|refused| ApiError::Overloaded(refused.to_string()))?;
                pending.push(Ok((image, rx, t)));
            }
        }
    }

    // 3. await the answers.
    let mut out = Vec::with_capacity(images.len());
    for ((name, _), p) in images.iter().zip(pending) {
        let result = match p {
            Err(e) => FileResult { status: 1, error: Some(e), name: name.clone(), labels: vec![] },
            Ok((image, rx, t)) => match rx.await {
                Ok(Ok(prediction)) => {
                    record_timings(&model.name, &t, &prediction);
                    let labels = model
                        .labels
                        .as_ref()
                        .expect("classifiers have labels (config). This is a bug.")
                        .labels(&prediction.output, model.threshold, model.top_k, image.width, image.height);
                    FileResult { status: 0, error: None, name: name.clone(), labels }
                }
                Ok(Err(e)) => FileResult {
                    status: e.file_status(),
                    error: Some(e.to_string()),
                    name: name.clone(),
                    labels: vec![],
                },
                Err(_) => FileResult {
                    status: 2,
                    error: Some("inference was cancelled (server shutting down), retry".into()),
                    name: name.clone(),
                    labels: vec![],
                },
            },
        };
        out.push(result);
    }
    Ok(out)
}

fn record_timings(model: &str, t: &Timings, p: &Prediction) {
    for (stage, d) in
        [("decode", t.decode), ("preprocess", t.preprocess), ("queue_wait", p.queue_wait), ("inference", p.inference)]
    {
        ::metrics::histogram!(metrics::STAGE_DURATION, "stage" => stage, "model" => model.to_string())
            .record(d.as_secs_f64());
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}
