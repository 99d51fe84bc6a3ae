//! Reads a `multipart/form-data` upload into `Upload` with the configured limits
//! (`gpubackend_formats::multipart`, fuzzed: fuzz/); its refusals are 400s in the envelope.
//! Before a byte of it is read, the endpoint's gate (`http::gate`) must let the request in.

use std::time::Duration;

use actix_web::web::{Data, Payload};
use actix_web::{HttpMessage, HttpRequest};
use futures_util::StreamExt;

pub use gpubackend_formats::multipart::{Upload, UploadError};

use super::AppState;
use crate::config::Limits;
use crate::error::ApiError;
use crate::metrics;

impl From<UploadError> for ApiError {
    fn from(e: UploadError) -> Self {
        ApiError::BadRequest(e.to_string())
    }
}

/// Longest a refused request's body is read (and dropped) before its answer.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The request's upload, read once its endpoint's gate has a slot for it (held in the request's
/// extensions until the answer is sent); refused (503) when the gate does not let it in.
pub async fn read_upload(req: &HttpRequest, mut payload: Payload, limits: &Limits) -> Result<Upload, ApiError> {
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    // Form framing adds a little; anything far beyond the limit is refused before reading.
    let most = limits.max_request_bytes + 64 * 1024;
    if declared.is_some_and(|n| n > most) {
        return Err(UploadError::RequestTooLarge(limits.max_request_bytes).into());
    }
    let gate = req.app_data::<Data<AppState>>().and_then(|s| s.gates.get(req.path()).cloned());
    if let Some(gate) = gate {
        match gate.enter().await {
            Ok(slot) => {
                req.extensions_mut().insert(slot);
            }
            Err(refusal) => {
                ::metrics::counter!(metrics::REFUSALS, "reason" => refusal.reason()).increment(1);
                // The body is read and dropped (bounded), so the connection stays usable and the
                // answer is not lost to a reset; parsing it would cost more than refusing.
                drain(&mut payload, most).await;
                return Err(ApiError::Overloaded(refusal.message(gate.endpoint())));
            }
        }
    }
    let timeout = Duration::from_millis(limits.upload_timeout_ms);
    match tokio::time::timeout(timeout, gpubackend_formats::multipart::read(req.headers(), payload, &limits.upload()))
        .await
    {
        Ok(upload) => Ok(upload?),
        Err(_) => Err(ApiError::BadRequest(format!(
            "request body not received within {} ms (limits.upload_timeout_ms)",
            limits.upload_timeout_ms
        ))),
    }
}

/// Reads and drops a request body, up to `limit` bytes and [`DRAIN_TIMEOUT`].
async fn drain(payload: &mut Payload, limit: usize) {
    let read = async {
        let mut seen = 0;
        while let Some(Ok(chunk)) = payload.next().await {
            seen += chunk.len();
            if seen > limit {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, read).await;
}
