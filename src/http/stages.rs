//! What the Vision endpoints share at the edge: each image of a request decoded and read at once
//! (ended when the client hangs up), `--role api`'s images on their model's stream, and the
//! request's counters.

use std::future::Future;
use std::sync::Arc;

use actix_web::HttpRequest;
use actix_web::web::Bytes;
use futures_util::future::join_all;
use tokio::sync::oneshot;

use super::disconnect::client_gone;
use crate::actors::Decode;
use crate::error::ApiError;
use crate::error::FileStatus;
use crate::infer::Inference;
use crate::infer::stages::StageError;
use crate::metrics;
use crate::pipelines::decode::DecodedImage;

/// One entry of a request's `meta.images`.
#[derive(Debug, serde::Deserialize)]
pub(super) struct ImageMeta {
    #[serde(default)]
    pub(super) name: String,
}

/// Runs `read` on every image of a request at once (with its index in `images`), each decoded on
/// the decoder pool first (timed as stage `decode` of `model`). Each image's outcome is its own:
/// its result, or (per-file status, error) when it does not decode or a stage fails for it; a
/// request-wide failure (queue full) or the client hanging up ends the whole request.
pub(super) async fn each_image<T, F, Fut>(
    state: &Inference,
    req: &HttpRequest,
    model: &str,
    images: &[(String, Bytes)],
    read: F,
) -> Result<Vec<Result<T, (FileStatus, String)>>, ApiError>
where
    F: Fn(usize, Arc<DecodedImage>) -> Fut,
    Fut: Future<Output = Result<T, StageError>>,
{
    let read = &read;
    let work = join_all(images.iter().enumerate().map(|(i, (_, bytes))| async move {
        let start = std::time::Instant::now();
        let decoded = state
            .decoder
            .send(Decode { bytes: bytes.clone(), limits: state.limits.clone() })
            .await
            .map_err(|e| ApiError::Internal(format!("decoder unavailable: {e}")))?;
        ::metrics::histogram!(metrics::STAGE_DURATION, "stage" => "decode", "model" => model.to_string())
            .record(start.elapsed().as_secs_f64());
        match decoded {
            Err(e) => Ok(Err((FileStatus::Permanent, e.to_string()))),
            Ok(img) => match read(i, Arc::new(img)).await {
                Ok(v) => Ok(Ok(v)),
                Err(e) => e.per_file().map(Err),
            },
        }
    }));
    let results = tokio::select! {
        results = work => results,
        () = client_gone(req) => return Err(ApiError::ClientGone("client closed the connection".into())),
    };
    results.into_iter().collect()
}

/// [`remote_image`] for every image of a request, waiting for all of them (or the client's
/// hang-up): no decoding here, the worker decodes with the same limits.
pub(super) async fn remote_images(
    broker: &crate::broker::api::Broker,
    model: &str,
    req: &HttpRequest,
    images: &[(String, Bytes)],
) -> Result<Vec<Result<Vec<u8>, (FileStatus, String)>>, ApiError> {
    // Every image goes on the stream before any answer is awaited (they are worked on together).
    let (tx, rx): (Vec<_>, Vec<_>) = images.iter().map(|_| oneshot::channel()).unzip();
    for ((_, bytes), tx) in images.iter().zip(tx) {
        broker.enqueue_image(model, bytes.to_vec(), false, tx).map_err(|r| ApiError::Overloaded(r.to_string()))?;
    }
    let answers = join_all(rx.into_iter().map(|rx| async move {
        match rx.await {
            Ok(answer) => answer,
            Err(_) => Err((FileStatus::Temporary, format!("model {model} unavailable, retry later"))),
        }
    }));
    tokio::select! {
        answers = answers => Ok(answers),
        () = client_gone(req) => Err(ApiError::ClientGone("client closed the connection".into())),
    }
}

/// [`remote_images`], each worker's answer read as the JSON of a `T` (an answer that is not is the
/// image's per-file status 1).
pub(super) async fn remote_json<T: serde::de::DeserializeOwned>(
    broker: &crate::broker::api::Broker,
    model: &str,
    req: &HttpRequest,
    images: &[(String, Bytes)],
) -> Result<Vec<Result<T, (FileStatus, String)>>, ApiError> {
    Ok(remote_images(broker, model, req, images)
        .await?
        .into_iter()
        .map(|answer| {
            answer.and_then(|body| {
                serde_json::from_slice(&body)
                    .map_err(|e| (FileStatus::Permanent, format!("unreadable answer from the worker: {e}")))
            })
        })
        .collect())
}

/// Counts and times a finished request of `endpoint`, and counts its images by per-file status.
pub(super) fn record_request<T>(
    endpoint: &'static str,
    started: std::time::Instant,
    result: &Result<T, ApiError>,
    statuses: impl Iterator<Item = FileStatus>,
) {
    let outcome = match result {
        Ok(_) => "ok",
        Err(e) => e.error_type(),
    };
    ::metrics::counter!(metrics::REQUESTS, "endpoint" => endpoint, "mode" => "", "outcome" => outcome).increment(1);
    ::metrics::histogram!(metrics::REQUEST_DURATION, "endpoint" => endpoint).record(started.elapsed().as_secs_f64());
    for status in statuses {
        ::metrics::counter!(metrics::IMAGES, "endpoint" => endpoint, "status" => status.to_string()).increment(1);
    }
}
