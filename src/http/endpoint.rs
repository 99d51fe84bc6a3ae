//! The Vision endpoints a model family serves by itself (`Family::endpoint`: `adult/detect`), read
//! top to bottom: auth → the endpoint's gate and the upload → `meta.images` → admission (a live
//! worker, images and bytes in flight) → per image (all at once): decode → the family's answer
//! (`ImageEndpoint::answer`; `--role api`: the file whole on the model's stream, answered by a
//! worker) → `objects[]` of `{status, name, error?, …fields}` in the Vision envelope.

use std::collections::HashSet;
use std::time::Instant;

use actix_web::web::{Data, Payload, Query};
use actix_web::{HttpRequest, HttpResponse};
use serde_json::{Map, Value, json};

use super::AppState;
use super::auth::AuthQuery;
use super::multipart::read_upload;
use super::objects::{WORK_BYTES_PER_PIXEL, admit};
use super::stages::{ImageMeta, each_image, record_request, remote_json};
use crate::error::{ApiError, Envelope, FileStatus};

#[derive(Debug, serde::Deserialize)]
struct Meta {
    #[serde(default)]
    images: Vec<ImageMeta>,
}

/// `POST /api/v1/<endpoint>` of a family endpoint.
pub async fn handle(
    endpoint: &'static str,
    state: Data<AppState>,
    query: Query<AuthQuery>,
    req: HttpRequest,
    payload: Payload,
) -> HttpResponse {
    let started = Instant::now();
    let result = objects(endpoint, &state, &query, &req, payload).await;
    let statuses: Vec<FileStatus> =
        result.as_ref().map(|objects| objects.iter().map(|(status, _)| *status).collect()).unwrap_or_default();
    record_request(endpoint, started, &result, statuses.into_iter());
    match result {
        Ok(objects) => {
            let objects: Vec<Entry> = objects.into_iter().map(|(_, entry)| entry).collect();
            HttpResponse::Ok().json(Envelope::ok(Body { objects }))
        }
        Err(e) => actix_web::ResponseError::error_response(&e),
    }
}

#[derive(serde::Serialize)]
struct Body {
    objects: Vec<Entry>,
}

/// One `objects[]` entry, its fields in the documented order: `status`, `error` (a failed file),
/// `name`, then the family's.
struct Entry(Vec<(String, Value)>);

impl serde::Serialize for Entry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// Each image's per-file status and `objects[]` entry.
async fn objects(
    endpoint: &'static str,
    state: &AppState,
    query: &AuthQuery,
    req: &HttpRequest,
    payload: Payload,
) -> Result<Vec<(FileStatus, Entry)>, ApiError> {
    state.auth.check(query)?;
    let served = state.infer.endpoints.get(endpoint).cloned().ok_or_else(|| {
        ApiError::BadRequest(format!("{endpoint} is not served by this server (no model of its family is placed)"))
    })?;
    let upload = read_upload(req, payload, &state.limits).await?;
    let meta = upload.meta.as_deref().ok_or_else(|| ApiError::BadRequest("meta is required".into()))?;
    let meta: Meta = serde_json::from_slice(meta).map_err(|e| ApiError::BadRequest(format!("invalid meta: {e}")))?;
    let names: Vec<&str> = meta.images.iter().map(|i| i.name.as_str()).collect();
    let images = upload.images(&names, &state.limits.upload())?;
    let stage = served.stage().clone();
    let _admitted = admit(state, &[stage.as_ref()], &images, WORK_BYTES_PER_PIXEL)?;
    let poisoned: HashSet<usize> = images
        .iter()
        .enumerate()
        .filter(|(_, (_, bytes))| {
            state.panic_marker.as_ref().is_some_and(|m| bytes.windows(m.len()).any(|w| w == m.as_bytes()))
        })
        .map(|(i, _)| i)
        .collect();
    let read: Vec<Result<Map<String, Value>, (FileStatus, String)>> = match served.remote() {
        None => {
            each_image(&state.infer, req, &stage.name, &images, |i, img| {
                served.answer(&state.infer, img, poisoned.contains(&i))
            })
            .await?
        }
        Some(broker) => remote_json(broker, &stage.model, req, &images).await?,
    };
    Ok(images
        .iter()
        .zip(read)
        .map(|((name, _), r)| {
            let (status, error, fields) = match r {
                Ok(fields) => (FileStatus::Ok, None, fields),
                Err((status, error)) => (status, Some(error), served.failed()),
            };
            let mut entry = vec![("status".to_string(), json!(status))];
            entry.extend(error.map(|e| ("error".to_string(), json!(e))));
            entry.push(("name".to_string(), json!(name)));
            entry.extend(fields);
            (status, Entry(entry))
        })
        .collect())
}
