//! Reads a `multipart/form-data` upload into `Upload` with the configured limits
//! (`gpubackend_formats::multipart`, fuzzed: fuzz/); its refusals are 400s in the envelope.

use actix_web::HttpRequest;
use actix_web::web::Payload;

pub use gpubackend_formats::multipart::{Upload, UploadError};

use crate::config::Limits;
use crate::error::ApiError;

impl From<UploadError> for ApiError {
    fn from(e: UploadError) -> Self {
        ApiError::BadRequest(e.to_string())
    }
}

pub async fn read_upload(req: &HttpRequest, payload: Payload, limits: &Limits) -> Result<Upload, ApiError> {
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    // Form framing adds a little; anything far beyond the limit is refused before reading.
    if declared.is_some_and(|n| n > limits.max_request_bytes + 64 * 1024) {
        return Err(UploadError::RequestTooLarge(limits.max_request_bytes).into());
    }
    Ok(gpubackend_formats::multipart::read(req.headers(), payload, &limits.upload()).await?)
}
