//! The one place where errors become Vision API envelopes and HTTP statuses.
//!
//! HTTP status decision (the Vision docs leave it open): the HTTP status equals the envelope's
//! `status` (400 bad request, 403 auth, 404 unknown path, 500 internal), except overload: the
//! envelope says 500 (the documented error set) and HTTP says 503 with `Retry-After: 1`, so load
//! balancers and clients can retry; a token over its rate limit gets 429 in both, with
//! `Retry-After`. Per-image failures are not request errors: they answer 200 with
//! that image's `status` 1 (permanent) or 2 (temporary) and its `error`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

/// One file's outcome in a Vision answer. Inside the server a file's failure carries this; the
/// Vision codes (0, 1, 2) are written only at the edge: the answer's `status`, the broker's
/// wire, the `status` label of `gpubackend_images_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileStatus {
    /// Answered (0).
    Ok,
    /// This file cannot be answered: it does not decode, is too large, a network failed on it (1).
    Permanent,
    /// Try again later: no live worker, the deadline passed, the broker is down (2).
    Temporary,
}

impl FileStatus {
    /// The Vision API's per-file `status`.
    pub fn code(self) -> u8 {
        match self {
            Self::Ok => 0,
            Self::Permanent => 1,
            Self::Temporary => 2,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Self::Ok),
            1 => Some(Self::Permanent),
            2 => Some(Self::Temporary),
            _ => None,
        }
    }
}

impl std::fmt::Display for FileStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.code())
    }
}

impl Serialize for FileStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(self.code())
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Overloaded(String),
    /// The token's request rate is over its limit (`rate_limit`): HTTP and envelope 429, with
    /// `Retry-After` the seconds until a request would pass.
    #[error("{message}")]
    RateLimited { message: String, retry_after_s: u64 },
    #[error("{0}")]
    Internal(String),
    /// The client went away; nobody reads this answer (nginx's 499).
    #[error("{0}")]
    ClientGone(String),
}

impl ApiError {
    /// Short, fixed label for metrics (`outcome`).
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::Overloaded(_) => "overloaded",
            Self::RateLimited { .. } => "rate_limited",
            Self::Internal(_) => "error",
            Self::ClientGone(_) => "client_gone",
        }
    }

    pub fn envelope_status(&self) -> u16 {
        match self {
            Self::BadRequest(_) => 400,
            Self::Forbidden(_) => 403,
            Self::NotFound(_) => 404,
            Self::RateLimited { .. } => 429,
            Self::Overloaded(_) | Self::Internal(_) => 500,
            Self::ClientGone(_) => 499,
        }
    }
}

/// `{"status":…,"body":…,"htmlencoded":false,"last_modified":0}`.
#[derive(Debug, Serialize)]
pub struct Envelope<T: Serialize> {
    pub status: u16,
    pub body: T,
    pub htmlencoded: bool,
    pub last_modified: u64,
}

impl<T: Serialize> Envelope<T> {
    pub fn ok(body: T) -> Self {
        Self { status: 200, body, htmlencoded: false, last_modified: 0 }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            other => StatusCode::from_u16(other.envelope_status()).expect("valid status. This is a bug."),
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut resp = HttpResponse::build(self.status_code());
        match self {
            Self::Overloaded(_) => {
                resp.insert_header(("Retry-After", "1"));
            }
            Self::RateLimited { retry_after_s, .. } => {
                resp.insert_header(("Retry-After", retry_after_s.to_string()));
            }
            _ => {}
        }
        resp.json(Envelope {
            status: self.envelope_status(),
            body: self.to_string(),
            htmlencoded: false,
            last_modified: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_statuses_are_the_vision_codes_at_the_edge() {
        for (status, code) in [(FileStatus::Ok, 0), (FileStatus::Permanent, 1), (FileStatus::Temporary, 2)] {
            assert_eq!(status.code(), code);
            assert_eq!(FileStatus::from_code(code), Some(status));
            assert_eq!(serde_json::to_string(&status).unwrap(), code.to_string());
            assert_eq!(status.to_string(), code.to_string());
        }
        assert_eq!(FileStatus::from_code(3), None);
    }

    #[test]
    fn statuses_follow_the_documented_decision() {
        assert_eq!(ApiError::BadRequest("x".into()).status_code(), StatusCode::BAD_REQUEST);
        assert_eq!(ApiError::Forbidden("x".into()).status_code(), StatusCode::FORBIDDEN);
        assert_eq!(ApiError::Overloaded("x".into()).status_code(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(ApiError::Overloaded("x".into()).envelope_status(), 500);
        assert_eq!(ApiError::Internal("x".into()).status_code(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
