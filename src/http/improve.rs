//! `POST /api/v1/photo/improve`, mode `resolution`, read top to bottom: auth → upload → meta
//! (`rfactor` 2 or 4, `ftype` art or photo) → per image (all at once): decode → the size limit →
//! fixed-size tiles (preprocessing pool) → the chosen network's batcher (tiles of every request
//! batch together) → each tile's core into the ×4 raster as it comes (preprocessing pool) → ×2 by
//! Lanczos3 when asked, JPEG (preprocessing pool) → base64 in the Vision envelope. Mode `improve`
//! (restoration + colorization) answers "not served".

use std::time::Instant;

use actix_web::web::{Bytes, Data, Payload, Query};
use actix_web::{HttpRequest, HttpResponse};
use base64::Engine;
use serde::{Deserialize, Serialize};

use super::AppState;
use super::auth::AuthQuery;
use super::multipart::read_upload;
use super::objects::admit;
use super::stages::{ImageMeta, each_image, record_request, remote_images};
use crate::error::FileStatus;
use crate::error::{ApiError, Envelope};
use crate::infer::superres::{Resolution, resolve};

const ENDPOINT: &str = "photo/improve";

#[derive(Debug, Deserialize)]
struct ImproveMeta {
    #[serde(default)]
    mode: Vec<String>,
    #[serde(default)]
    images: Vec<ImageMeta>,
    #[serde(default)]
    rfactor: Option<serde_json::Value>,
    #[serde(default)]
    ftype: Option<String>,
    /// The docs' own examples spell `ftype` so.
    #[serde(default)]
    rtype: Option<String>,
}

/// `resolution_object`.
#[derive(Debug, Serialize)]
struct ResolutionResult {
    status: FileStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    name: String,
    /// The JPEG, base64; "" for a file that failed (the schema requires the field).
    resolved: String,
}

#[derive(Debug, Serialize)]
struct ImproveBody {
    resolution: Vec<ResolutionResult>,
}

pub async fn improve(
    state: Data<AppState>,
    query: Query<AuthQuery>,
    req: HttpRequest,
    payload: Payload,
) -> HttpResponse {
    let started = Instant::now();
    let result = handle(&state, &query, &req, payload).await;
    let statuses: Vec<FileStatus> =
        result.as_ref().map(|b| b.resolution.iter().map(|r| r.status).collect()).unwrap_or_default();
    record_request(ENDPOINT, started, &result, statuses.into_iter());
    match result {
        Ok(body) => HttpResponse::Ok().json(Envelope::ok(body)),
        Err(e) => actix_web::ResponseError::error_response(&e),
    }
}

/// The request's factor and network from its meta, or the documented 400s.
fn resolution(meta: &ImproveMeta) -> Result<Resolution, ApiError> {
    if meta.mode.is_empty() {
        return Err(ApiError::BadRequest("mode is required non-empty".into()));
    }
    for mode in &meta.mode {
        match mode.as_str() {
            "resolution" => {}
            "improve" => {
                return Err(ApiError::BadRequest(
                    "mode improve is not served by this server: restoration and colorization need models that no \
                     registry here has (README, \"Not done here\"); mode resolution is served"
                        .into(),
                ));
            }
            other => return Err(ApiError::BadRequest(format!("unknown mode: {other} (improve or resolution)"))),
        }
    }
    let factor = match &meta.rfactor {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    };
    let factor = match factor {
        Some(f @ (2 | 4)) => f as u32,
        _ => return Err(ApiError::BadRequest("rfactor must be 2 or 4".into())),
    };
    let photo = match meta.ftype.as_deref().or(meta.rtype.as_deref()) {
        Some("photo") => true,
        Some("art") => false,
        _ => return Err(ApiError::BadRequest("ftype must be \"art\" or \"photo\"".into())),
    };
    Ok(Resolution { factor, photo })
}

async fn handle(
    state: &AppState,
    query: &AuthQuery,
    req: &HttpRequest,
    payload: Payload,
) -> Result<ImproveBody, ApiError> {
    state.auth.check(query)?;
    let svc = state.infer.service::<crate::infer::superres::SuperResService>().ok_or_else(|| {
        ApiError::BadRequest("photo/improve is not served by this server (no super-resolution model placed)".into())
    })?;
    // The endpoint's own, smaller limits (the documented 48 images of 8 MB).
    let c = &svc.config;
    let limits = crate::config::Limits {
        max_images: state.limits.max_images.min(c.max_images),
        max_image_bytes: state.limits.max_image_bytes.min(c.max_image_bytes),
        ..(*state.limits).clone()
    };
    let upload = read_upload(req, payload, &limits).await?;
    let meta = upload.meta.as_deref().ok_or_else(|| ApiError::BadRequest("meta is required".into()))?;
    let meta: ImproveMeta =
        serde_json::from_slice(meta).map_err(|e| ApiError::BadRequest(format!("invalid meta: {e}")))?;
    let asked = resolution(&meta)?;
    let names: Vec<&str> = meta.images.iter().map(|i| i.name.as_str()).collect();
    let images = upload.images(&names, &limits.upload())?;
    let stage = if asked.photo { &svc.photo } else { &svc.art };
    let _admitted = admit(state, &[stage.as_ref()], &images, super::objects::SUPERRES_WORK_BYTES_PER_PIXEL)?;
    let read: Vec<Result<Vec<u8>, (FileStatus, String)>> = match &svc.remote {
        None => {
            each_image(&state.infer, req, &stage.name, &images, |_, img| resolve(&state.infer, &svc, img, asked, false))
                .await?
        }
        Some(broker) => {
            let jobs: Vec<(String, Bytes)> = images
                .iter()
                .map(|(name, bytes)| (name.clone(), Bytes::from([&asked.header()[..], bytes].concat())))
                .collect();
            remote_images(broker, &svc.name, req, &jobs).await?
        }
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    Ok(ImproveBody {
        resolution: images
            .iter()
            .zip(read)
            .map(|((name, _), r)| match r {
                Ok(jpeg) => ResolutionResult {
                    status: FileStatus::Ok,
                    error: None,
                    name: name.clone(),
                    resolved: b64.encode(jpeg),
                },
                Err((status, error)) => {
                    ResolutionResult { status, error: Some(error), name: name.clone(), resolved: String::new() }
                }
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(v: serde_json::Value) -> ImproveMeta {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn meta_gives_the_factor_and_network_or_the_documented_errors() {
        let ok = |v| resolution(&meta(v)).unwrap();
        let err = |v| resolution(&meta(v)).unwrap_err().to_string();
        assert_eq!(
            ok(serde_json::json!({"mode": ["resolution"], "rfactor": 2, "ftype": "photo"})),
            Resolution { factor: 2, photo: true }
        );
        // The docs' examples write `rtype`; a factor may come as a string.
        assert_eq!(
            ok(serde_json::json!({"mode": ["resolution"], "rfactor": "4", "rtype": "art"})),
            Resolution { factor: 4, photo: false }
        );
        assert!(
            err(serde_json::json!({"mode": ["resolution"], "rfactor": 1010, "ftype": "art"}))
                .contains("rfactor must be 2 or 4")
        );
        assert!(err(serde_json::json!({"mode": ["resolution"], "rfactor": 2})).contains("ftype must be"));
        assert!(err(serde_json::json!({"mode": [], "rfactor": 2, "ftype": "art"})).contains("mode is required"));
        assert!(err(serde_json::json!({"mode": ["improve"]})).contains("not served"));
        assert!(err(serde_json::json!({"mode": ["zoom"]})).contains("unknown mode: zoom"));
    }
}
