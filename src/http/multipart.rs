//! Reads a `multipart/form-data` upload into `Upload` (the `meta` field and the image parts),
//! enforcing the byte limits while streaming, before anything large is buffered.

use actix_multipart::Multipart;
use actix_web::HttpRequest;
use actix_web::web::{Bytes, BytesMut, Payload};
use futures_util::TryStreamExt;

use crate::config::Limits;
use crate::error::ApiError;

/// An upload as received: not yet validated against `meta`.
#[derive(Debug, Default)]
pub struct Upload {
    pub meta: Option<Bytes>,
    /// Image parts by form field name, in arrival order.
    pub files: Vec<(String, Bytes)>,
}

impl Upload {
    pub fn file(&self, name: &str) -> Option<&Bytes> {
        self.files.iter().find(|(n, _)| n == name).map(|(_, b)| b)
    }

    /// The images `meta` names, in its order, with the documented request errors: none, too
    /// many, an unnamed or duplicate name, a name with no part, an empty part.
    pub fn images(&self, names: &[&str], limits: &Limits) -> Result<Vec<(String, Bytes)>, ApiError> {
        if names.is_empty() {
            return Err(ApiError::BadRequest("images is required non-empty".into()));
        }
        if names.len() > limits.max_images {
            return Err(ApiError::BadRequest(format!("too many images: at most {} per request", limits.max_images)));
        }
        let mut out = Vec::with_capacity(names.len());
        for (i, &name) in names.iter().enumerate() {
            if name.is_empty() {
                return Err(ApiError::BadRequest("image name is required non-empty".into()));
            }
            if names[..i].contains(&name) {
                return Err(ApiError::BadRequest(format!("duplicate image name: {name}")));
            }
            let bytes = self.file(name).ok_or_else(|| {
                ApiError::BadRequest(format!("could not get image by name {name}: http: no such file"))
            })?;
            if bytes.is_empty() {
                return Err(ApiError::BadRequest("empty image".into()));
            }
            out.push((name.to_string(), bytes.clone()));
        }
        Ok(out)
    }
}

pub async fn read_upload(req: &HttpRequest, payload: Payload, limits: &Limits) -> Result<Upload, ApiError> {
    let too_large =
        || ApiError::BadRequest(format!("request is too large: the limit is {} bytes", limits.max_request_bytes));
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    // Form framing adds a little; anything far beyond the limit is refused before reading.
    if declared.is_some_and(|n| n > limits.max_request_bytes + 64 * 1024) {
        return Err(too_large());
    }
    let bad =
        |e: actix_multipart::MultipartError| ApiError::BadRequest(format!("invalid multipart/form-data request: {e}"));
    let mut form = Multipart::new(req.headers(), payload);
    let mut upload = Upload::default();
    let mut total = 0usize;
    while let Some(mut field) = form.try_next().await.map_err(bad)? {
        let name = field.name().unwrap_or_default().to_string();
        let is_meta = name == "meta";
        if !is_meta && upload.files.len() >= limits.max_images {
            return Err(ApiError::BadRequest(format!("too many images: at most {} per request", limits.max_images)));
        }
        let limit = if is_meta { limits.max_meta_bytes } else { limits.max_image_bytes };
        let mut buf = BytesMut::new();
        while let Some(chunk) = field.try_next().await.map_err(bad)? {
            total += chunk.len();
            if total > limits.max_request_bytes {
                return Err(too_large());
            }
            if buf.len() + chunk.len() > limit {
                return Err(ApiError::BadRequest(if is_meta {
                    format!("meta is too large: the limit is {limit} bytes")
                } else {
                    format!("image {name} is too large: the limit is {limit} bytes")
                }));
            }
            buf.extend_from_slice(&chunk);
        }
        if is_meta {
            upload.meta = Some(buf.freeze());
        } else {
            upload.files.push((name, buf.freeze()));
        }
    }
    Ok(upload)
}
