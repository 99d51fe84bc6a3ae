//! `POST /api/v1/text/recognize` and `POST /api/v1/scene_text/recognize`, read top to bottom:
//! auth → upload → meta → per image: decode → working image and detector input (preprocessing
//! pool) → text detector (its batcher batches images of all requests by size bucket) → DB boxes
//! and line crops (preprocessing pool) → recogniser (batched by width bucket) → CTC → lines and
//! words → Vision envelope. `docs/recognize` and `docs/detect` answer "not served".

use std::sync::Arc;
use std::time::Instant;

use actix_web::web::{Data, Payload, Query};
use actix_web::{HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::auth::AuthQuery;
use super::multipart::read_upload;
use super::objects::admit;
use super::stages::{ImageMeta, each_image, record_request, remote_json};
use crate::error::FileStatus;
use crate::error::{ApiError, Envelope};
use crate::infer::text::{Line, TextService, read_image};
use crate::metrics;
use crate::pipelines::text::{Quad, language};

#[derive(Debug, Deserialize)]
struct TextMeta {
    #[serde(default)]
    mode: Option<String>,
    /// scene_text's expected language: accepted and checked; the recogniser is one multilingual
    /// model, so it does not change the reading.
    #[serde(default)]
    lang: Option<String>,
    #[serde(default)]
    images: Vec<ImageMeta>,
}

fn round4(x: f32) -> f32 {
    (x * 1e4).round() / 1e4
}

/// `[x1, y1, x2, y2]`: the quad's enclosing rectangle.
fn rect(q: &Quad) -> [f32; 4] {
    let xs = q.map(|p| p[0]);
    let ys = q.map(|p| p[1]);
    let min = |v: [f32; 4]| v.into_iter().fold(f32::MAX, f32::min).round();
    let max = |v: [f32; 4]| v.into_iter().fold(f32::MIN, f32::max).round();
    [min(xs), min(ys), max(xs), max(ys)]
}

#[derive(Debug, Serialize)]
struct TextWord {
    coord: [f32; 4],
    prob: f32,
    text: String,
    lang_prob: f32,
    lang: &'static str,
}

#[derive(Debug, Serialize)]
struct TextLine {
    words: Vec<TextWord>,
    line_prob: f32,
    line_coord: [f32; 4],
}

/// `text_recognize_result_property`: `text` (plain) or `results` (detailed), absent when the
/// image has no text.
#[derive(Debug, Serialize)]
struct TextResult {
    status: FileStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    results: Option<Vec<TextLine>>,
}

#[derive(Debug, Serialize)]
struct SceneWord {
    coord: [[i64; 2]; 4],
    prob: f32,
    text: String,
}

/// `scene_text_recognize_result_property`.
#[derive(Debug, Serialize)]
struct SceneResult {
    status: FileStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    name: String,
    words: Vec<SceneWord>,
}

#[derive(Debug, Serialize)]
struct Objects<T> {
    objects: Vec<T>,
}

/// Runs `handle`, counts and times the request, and answers with the envelope.
async fn respond<T: Serialize>(
    endpoint: &'static str,
    handle: impl std::future::Future<Output = Result<Vec<(FileStatus, T)>, ApiError>>,
) -> HttpResponse {
    let started = Instant::now();
    let result = handle.await;
    let statuses: Vec<FileStatus> = result.as_ref().map(|o| o.iter().map(|r| r.0).collect()).unwrap_or_default();
    record_request(endpoint, started, &result, statuses.into_iter());
    match result {
        Ok(objects) => {
            HttpResponse::Ok().json(Envelope::ok(Objects { objects: objects.into_iter().map(|o| o.1).collect() }))
        }
        Err(e) => actix_web::ResponseError::error_response(&e),
    }
}

pub async fn recognize(
    state: Data<AppState>,
    query: Query<AuthQuery>,
    req: HttpRequest,
    payload: Payload,
) -> HttpResponse {
    respond("text/recognize", async {
        let (svc, meta, images) = begin(&state, &query, &req, payload).await?;
        let detailed = match meta.mode.as_deref() {
            None | Some("") => false,
            Some("detailed") => true,
            Some(other) => return Err(ApiError::BadRequest(format!("unknown mode: {other} (only \"detailed\")"))),
        };
        let read = read_all(&state, &svc, &req, &images).await?;
        Ok(images
            .iter()
            .zip(read)
            .map(|((name, _), r)| match r {
                Err((status, error)) => {
                    (status, TextResult { status, error: Some(error), name: name.clone(), text: None, results: None })
                }
                Ok(lines) if lines.is_empty() => (
                    FileStatus::Ok,
                    TextResult { status: FileStatus::Ok, error: None, name: name.clone(), text: None, results: None },
                ),
                Ok(lines) if detailed => {
                    let results = lines.iter().map(text_line).collect();
                    (
                        FileStatus::Ok,
                        TextResult {
                            status: FileStatus::Ok,
                            error: None,
                            name: name.clone(),
                            text: None,
                            results: Some(results),
                        },
                    )
                }
                Ok(lines) => {
                    let text = lines.iter().map(|l| l.text.as_str()).collect::<Vec<_>>().join("\n");
                    (
                        FileStatus::Ok,
                        TextResult {
                            status: FileStatus::Ok,
                            error: None,
                            name: name.clone(),
                            text: Some(text),
                            results: None,
                        },
                    )
                }
            })
            .collect())
    })
    .await
}

fn text_line(line: &Line) -> TextLine {
    TextLine {
        words: line
            .words
            .iter()
            .map(|(text, prob, quad)| {
                let (lang, lang_prob) = language(text);
                TextWord {
                    coord: rect(quad),
                    prob: round4(*prob),
                    text: text.clone(),
                    lang_prob: round4(lang_prob),
                    lang,
                }
            })
            .collect(),
        line_prob: round4(line.prob),
        line_coord: rect(&line.quad),
    }
}

pub async fn scene_text(
    state: Data<AppState>,
    query: Query<AuthQuery>,
    req: HttpRequest,
    payload: Payload,
) -> HttpResponse {
    respond("scene_text/recognize", async {
        let (svc, meta, images) = begin(&state, &query, &req, payload).await?;
        if let Some(lang) = meta.lang.as_deref().filter(|l| !["rus", "eng", ""].contains(l)) {
            return Err(ApiError::BadRequest(format!("unknown lang: {lang} (rus or eng)")));
        }
        let read = read_all(&state, &svc, &req, &images).await?;
        Ok(images
            .iter()
            .zip(read)
            .map(|((name, _), r)| match r {
                Err((status, error)) => {
                    (status, SceneResult { status, error: Some(error), name: name.clone(), words: vec![] })
                }
                Ok(lines) => {
                    let words = lines
                        .iter()
                        .flat_map(|l| l.words.iter())
                        .map(|(text, prob, quad)| SceneWord {
                            coord: quad.map(|p| [p[0].round() as i64, p[1].round() as i64]),
                            prob: round4(*prob),
                            text: text.clone(),
                        })
                        .collect();
                    (FileStatus::Ok, SceneResult { status: FileStatus::Ok, error: None, name: name.clone(), words })
                }
            })
            .collect())
    })
    .await
}

/// `docs/recognize` and `docs/detect`: no registry here has document-type or field models.
pub async fn docs_not_served(state: Data<AppState>, query: Query<AuthQuery>, req: HttpRequest) -> HttpResponse {
    let endpoint = req.path().trim_start_matches("/api/v1/").to_string();
    let result = state.auth.check(&query).and_then(|()| {
        Err::<(), _>(ApiError::BadRequest(format!(
            "{endpoint} is not served by this server: it needs document-type and field models, and no real \
             weights for them are available (README, \"Not done here\"); text/recognize reads the text of a document"
        )))
    });
    ::metrics::counter!(metrics::REQUESTS, "endpoint" => "docs", "mode" => "", "outcome" => "bad_request").increment(1);
    match result {
        Ok(()) => HttpResponse::Ok().finish(),
        Err(e) => actix_web::ResponseError::error_response(&e),
    }
}

type Images = Vec<(String, actix_web::web::Bytes)>;

/// Auth, the text model, the upload, meta and the images it names.
async fn begin(
    state: &AppState,
    query: &AuthQuery,
    req: &HttpRequest,
    payload: Payload,
) -> Result<(Arc<TextService>, TextMeta, Images), ApiError> {
    state.auth.check(query)?;
    let svc = state.infer.service::<crate::infer::text::TextService>().ok_or_else(|| {
        ApiError::BadRequest("the text methods are not served by this server (no text model placed)".into())
    })?;
    let upload = read_upload(req, payload, &state.limits).await?;
    let meta = upload.meta.as_deref().ok_or_else(|| ApiError::BadRequest("meta is required".into()))?;
    let meta: TextMeta =
        serde_json::from_slice(meta).map_err(|e| ApiError::BadRequest(format!("invalid meta: {e}")))?;
    let names: Vec<&str> = meta.images.iter().map(|i| i.name.as_str()).collect();
    let images = upload.images(&names, &state.limits.upload())?;
    Ok((svc, meta, images))
}

/// Every image's lines, or its per-file (status, error). Admission, readiness and client hang-up
/// are handled here for the request.
async fn read_all(
    state: &AppState,
    svc: &TextService,
    req: &HttpRequest,
    images: &Images,
) -> Result<Vec<Result<Vec<Line>, (FileStatus, String)>>, ApiError> {
    let _admitted = admit(
        state,
        &[svc.det.as_ref(), svc.cls.as_ref(), svc.rec.as_ref()],
        images,
        super::objects::WORK_BYTES_PER_PIXEL,
    )?;
    match &svc.remote {
        None => each_image(&state.infer, req, &svc.name, images, |_, img| read_image(&state.infer, svc, img)).await,
        Some(broker) => remote_json(broker, &svc.name, req, images).await,
    }
}
