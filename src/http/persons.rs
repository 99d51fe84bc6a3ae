//! `POST /api/v1/persons/{set,recognize,delete,truncate}`, read top to bottom: auth → upload →
//! meta (space, images) → per image: decode → the face cascade (P-Net tiles, R-Net and O-Net crops,
//! each network behind its own batcher, so images of all requests batch together) → alignment →
//! SFace embedding (batched too) → the person store → Vision envelope.

use std::sync::Arc;
use std::time::Instant;

use actix_web::web::{Data, Payload, Query};
use actix_web::{HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::AppState;
use super::auth::AuthQuery;
use super::multipart::read_upload;
use super::objects::admit;
use super::stages::{each_image, record_request, remote_images};
use crate::actors::store::{DeletePersons, Recognize, SetFaces, Truncate};
use crate::error::FileStatus;
use crate::error::{ApiError, Envelope};
use crate::infer::face::{FaceService, decode_faces, faces_with_embeddings};
use crate::pipelines::face_detect::Face;
use crate::store::SPACES;

const NO_SINGLE_FACE: &str = "face set required only one face per image";

#[derive(Debug, Deserialize)]
struct PersonImage {
    #[serde(default)]
    name: String,
    person_id: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct PersonsMeta {
    space: Option<Value>,
    #[serde(default)]
    images: Vec<PersonImage>,
    #[serde(default)]
    create_new: bool,
    #[serde(default = "yes")]
    update_embedding: bool,
}

fn yes() -> bool {
    true
}

/// One file's answer (`base_work_result_property`, plus `persons` for recognize).
#[derive(Debug, Serialize)]
struct FileResult {
    status: FileStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    persons: Option<Vec<PersonAnswer>>,
}

impl FileResult {
    fn ok(name: &str) -> Self {
        Self { status: FileStatus::Ok, error: None, name: name.to_string(), persons: None }
    }

    fn failed(name: &str, status: FileStatus, error: String) -> Self {
        Self { status, error: Some(error), name: name.to_string(), persons: None }
    }
}

/// `person_property`: the fields the docs tie to models we do not have (sex, age, emotion,
/// valence, arousal, awesomeness) are omitted.
#[derive(Debug, Serialize)]
struct PersonAnswer {
    tag: String,
    coord: [i64; 4],
    confidence: f32,
    similarity: f32,
}

#[derive(Debug, Serialize)]
struct ObjectsBody {
    objects: Vec<FileResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aliases_changed: Option<bool>,
}

/// The Vision API's space parameter: a string (or number) 0–9. The messages follow the
/// documented one for a missing space (Go's strconv.Atoi).
fn parse_space(space: Option<&Value>) -> Result<u32, ApiError> {
    let text = match space {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    let n: i64 = text.trim().parse().map_err(|_| {
        ApiError::BadRequest(format!("wrong space param : strconv.Atoi: parsing {text:?}: invalid syntax"))
    })?;
    u32::try_from(n)
        .ok()
        .filter(|&s| s < SPACES)
        .ok_or_else(|| ApiError::BadRequest(format!("wrong space param : space {n} is out of range 0..{}", SPACES - 1)))
}

fn parse_meta(meta: Option<&[u8]>) -> Result<PersonsMeta, ApiError> {
    let meta = meta.ok_or_else(|| ApiError::BadRequest("meta is required".into()))?;
    serde_json::from_slice(meta).map_err(|e| ApiError::BadRequest(format!("invalid meta: {e}")))
}

fn face_service(state: &AppState) -> Result<Arc<FaceService>, ApiError> {
    state.infer.service::<crate::infer::face::FaceService>().ok_or_else(|| {
        ApiError::BadRequest("the persons methods are not served by this server (no face model placed)".into())
    })
}

/// The start every persons method shares: auth, the face model, the upload, meta and space.
async fn begin(
    state: &AppState,
    query: &AuthQuery,
    req: &HttpRequest,
    payload: Payload,
) -> Result<(Arc<FaceService>, super::multipart::Upload, PersonsMeta, u32), ApiError> {
    state.auth.check(query)?;
    let face = face_service(state)?;
    let upload = read_upload(req, payload, &state.limits).await?;
    let meta = parse_meta(upload.meta.as_deref())?;
    let space = parse_space(meta.space.as_ref())?;
    Ok((face, upload, meta, space))
}

/// One request to the person store's thread.
async fn ask<M, R>(face: &FaceService, msg: M) -> Result<R, ApiError>
where
    M: actix::Message<Result = Result<R, crate::store::StoreError>> + Send + 'static,
    R: Send + 'static,
    crate::actors::StoreActor: actix::Handler<M>,
{
    face.store
        .as_ref()
        .ok_or_else(|| ApiError::Internal("no person store in this process. This is a bug.".into()))?
        .send(msg)
        .await
        .map_err(|e| ApiError::Internal(format!("person store unavailable: {e}")))?
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// Runs `handle`, counts and times the request, and answers with the envelope.
async fn respond(
    endpoint: &'static str,
    handle: impl std::future::Future<Output = Result<ObjectsBody, ApiError>>,
) -> HttpResponse {
    let started = Instant::now();
    let result = handle.await;
    let statuses: Vec<FileStatus> =
        result.as_ref().map(|b| b.objects.iter().map(|r| r.status).collect()).unwrap_or_default();
    record_request(endpoint, started, &result, statuses.into_iter());
    match result {
        Ok(body) => {
            if body.objects.is_empty() && body.aliases_changed.is_none() {
                // truncate: the documented empty body.
                return HttpResponse::Ok().json(Envelope::ok(serde_json::json!({})));
            }
            HttpResponse::Ok().json(Envelope::ok(body))
        }
        Err(e) => actix_web::ResponseError::error_response(&e),
    }
}

pub async fn set(state: Data<AppState>, query: Query<AuthQuery>, req: HttpRequest, payload: Payload) -> HttpResponse {
    respond("persons/set", handle_set(&state, &query, &req, payload)).await
}

pub async fn recognize(
    state: Data<AppState>,
    query: Query<AuthQuery>,
    req: HttpRequest,
    payload: Payload,
) -> HttpResponse {
    respond("persons/recognize", handle_recognize(&state, &query, &req, payload)).await
}

pub async fn delete(
    state: Data<AppState>,
    query: Query<AuthQuery>,
    req: HttpRequest,
    payload: Payload,
) -> HttpResponse {
    respond("persons/delete", handle_delete(&state, &query, &req, payload)).await
}

pub async fn truncate(
    state: Data<AppState>,
    query: Query<AuthQuery>,
    req: HttpRequest,
    payload: Payload,
) -> HttpResponse {
    respond("persons/truncate", handle_truncate(&state, &query, &req, payload)).await
}

/// The images `meta` names, with their bytes.
fn images_of(
    meta: &PersonsMeta,
    upload: &super::multipart::Upload,
    limits: &crate::config::Limits,
) -> Result<Vec<(String, actix_web::web::Bytes)>, ApiError> {
    let names: Vec<&str> = meta.images.iter().map(|i| i.name.as_str()).collect();
    Ok(upload.images(&names, &limits.upload())?)
}

async fn handle_set(
    state: &AppState,
    query: &AuthQuery,
    req: &HttpRequest,
    payload: Payload,
) -> Result<ObjectsBody, ApiError> {
    let (face, upload, meta, space) = begin(state, query, req, payload).await?;
    if meta.images.iter().any(|i| i.person_id.is_none()) {
        return Err(ApiError::BadRequest("no person_id has been provided".into()));
    }
    let images = images_of(&meta, &upload, &state.limits)?;
    let analysed = analyse(state, &face, req, &images).await?;
    let dominant_ratio = face.config.dominant_ratio;
    let mut objects = Vec::with_capacity(images.len());
    let mut faces = Vec::new();
    for ((name, _), (img, result)) in images.iter().zip(meta.images.iter().zip(analysed)) {
        objects.push(match result {
            Err(r) => r,
            Ok(mut found) => {
                match crate::pipelines::face_detect::dominant(
                    &found.iter().map(|f| f.0).collect::<Vec<_>>(),
                    dominant_ratio,
                ) {
                    None => FileResult::failed(name, FileStatus::Permanent, NO_SINGLE_FACE.into()),
                    Some(i) => {
                        faces.push((img.person_id.expect("checked above. This is a bug."), found.swap_remove(i).1));
                        FileResult::ok(name)
                    }
                }
            }
        });
    }
    if !faces.is_empty() {
        ask(&face, SetFaces { space, faces }).await?;
    }
    Ok(ObjectsBody { objects, aliases_changed: None })
}

async fn handle_recognize(
    state: &AppState,
    query: &AuthQuery,
    req: &HttpRequest,
    payload: Payload,
) -> Result<ObjectsBody, ApiError> {
    let (face, upload, meta, space) = begin(state, query, req, payload).await?;
    let images = images_of(&meta, &upload, &state.limits)?;
    let analysed = analyse(state, &face, req, &images).await?;
    let mut objects = Vec::with_capacity(images.len());
    let mut aliases_changed = false;
    for ((name, _), result) in images.iter().zip(analysed) {
        let found = match result {
            Err(r) => {
                objects.push(r);
                continue;
            }
            Ok(found) => found,
        };
        let recognised = ask(
            &face,
            Recognize {
                space,
                faces: found.iter().map(|(_, e)| e.clone()).collect(),
                threshold: face.config.similarity_threshold,
                create_new: meta.create_new,
                update: meta.update_embedding,
            },
        )
        .await?;
        let persons = found
            .iter()
            .zip(recognised)
            .map(|((f, _), r)| {
                aliases_changed |= r.created;
                PersonAnswer {
                    tag: r.person_id.map_or_else(|| "undefined".to_string(), |id| format!("person{id}")),
                    coord: coord(f),
                    confidence: round4(f.score),
                    similarity: round4(r.similarity.clamp(0.0, 1.0)),
                }
            })
            .collect();
        objects.push(FileResult { status: FileStatus::Ok, error: None, name: name.clone(), persons: Some(persons) });
    }
    Ok(ObjectsBody { objects, aliases_changed: Some(aliases_changed) })
}

async fn handle_delete(
    state: &AppState,
    query: &AuthQuery,
    req: &HttpRequest,
    payload: Payload,
) -> Result<ObjectsBody, ApiError> {
    let (face, _upload, meta, space) = begin(state, query, req, payload).await?;
    if meta.images.is_empty() {
        return Err(ApiError::BadRequest("images is required non-empty".into()));
    }
    let Some(ids) = meta.images.iter().map(|i| i.person_id).collect::<Option<Vec<i64>>>() else {
        return Err(ApiError::BadRequest("no person_id has been provided".into()));
    };
    let deleted = ask(&face, DeletePersons { space, ids: ids.clone() }).await?;
    let objects = meta
        .images
        .iter()
        .zip(ids.iter().zip(deleted))
        .map(|(img, (id, existed))| {
            if existed {
                FileResult::ok(&img.name)
            } else {
                FileResult::failed(&img.name, FileStatus::Permanent, format!("no person {id} in space {space}"))
            }
        })
        .collect();
    Ok(ObjectsBody { objects, aliases_changed: None })
}

async fn handle_truncate(
    state: &AppState,
    query: &AuthQuery,
    req: &HttpRequest,
    payload: Payload,
) -> Result<ObjectsBody, ApiError> {
    let (face, _, _, space) = begin(state, query, req, payload).await?;
    ask(&face, Truncate { space }).await?;
    Ok(ObjectsBody { objects: Vec::new(), aliases_changed: None })
}

fn round4(x: f32) -> f32 {
    (x * 1e4).round() / 1e4
}

/// `[x1, y1, x2, y2]` in the original image's pixels.
fn coord(f: &Face) -> [i64; 4] {
    f.bbox.map(|v| v.round() as i64)
}

/// Each image's faces (most probable first, at most `max_faces`) with their embeddings, or its
/// per-file error. Admission, readiness and client hang-up are handled here for the request.
/// With `--role api` each image goes to a worker whole (the cascade runs there).
async fn analyse(
    state: &AppState,
    face: &FaceService,
    req: &HttpRequest,
    images: &[(String, actix_web::web::Bytes)],
) -> Result<Vec<Result<Vec<(Face, Vec<f32>)>, FileResult>>, ApiError> {
    let stages = face.stages();
    let _admitted = admit(state, &stages.map(|s| s.as_ref()), images, super::objects::WORK_BYTES_PER_PIXEL)?;
    let read = match &face.remote {
        None => {
            each_image(&state.infer, req, &face.name, images, |_, img| faces_with_embeddings(&state.infer, face, img))
                .await?
        }
        Some(broker) => remote_images(broker, &face.name, req, images)
            .await?
            .into_iter()
            .map(|answer| answer.and_then(|body| decode_faces(&body).map_err(|e| (FileStatus::Permanent, e))))
            .collect(),
    };
    Ok(images
        .iter()
        .zip(read)
        .map(|((name, _), r)| r.map_err(|(status, e)| FileResult::failed(name, status, e)))
        .collect())
}
