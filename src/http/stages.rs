//! What the multi-network endpoints (persons, text) share: each image decoded and read, a stage's
//! inputs through its batcher, CPU work on the preprocessing pool, the two ways a stage fails, and
//! the request's counters.

use std::future::Future;
use std::sync::Arc;

use actix_web::HttpRequest;
use actix_web::web::Bytes;
use futures_util::future::join_all;
use tokio::sync::oneshot;

use super::disconnect::client_gone;
use super::{AppState, ServedModel};
use crate::actors::{Decode, InferError, Job, Prediction};
use crate::error::ApiError;
use crate::metrics;
use crate::pipelines::decode::DecodedImage;
use crate::pipelines::preprocess::ModelInput;

/// One entry of a request's `meta.images`.
#[derive(Debug, serde::Deserialize)]
pub(super) struct ImageMeta {
    #[serde(default)]
    pub(super) name: String,
}

/// A stage failed for one image (per-file status) or for the whole request (queue full).
#[derive(Clone)]
pub(super) enum StageError {
    Image(InferError),
    /// An image's per-file status and error as a worker wrote them (`--role api`).
    File(u8, String),
    Request(ApiError),
}

impl StageError {
    /// The image's per-file (status, error), or the request's error.
    pub(super) fn per_file(self) -> Result<(u8, String), ApiError> {
        match self {
            Self::Image(e) => Ok((e.file_status(), e.to_string())),
            Self::File(status, error) => Ok((status, error)),
            Self::Request(e) => Err(e),
        }
    }
}

/// Sends every input through `stage`'s batcher and waits for all of them.
pub(super) async fn infer(stage: &ServedModel, inputs: Vec<ModelInput>) -> Result<Vec<Prediction>, StageError> {
    infer_marked(stage, inputs, false).await
}

/// [`infer`], with the fault-injection mark (`fault_injection.panic_marker`) on every input.
pub(super) async fn infer_marked(
    stage: &ServedModel,
    inputs: Vec<ModelInput>,
    poisoned: bool,
) -> Result<Vec<Prediction>, StageError> {
    let mut out = Vec::with_capacity(inputs.len());
    for rx in enqueue_all(stage, inputs, poisoned).await? {
        out.push(answered(stage, rx.await)?);
    }
    Ok(out)
}

/// Every input on `stage`'s batcher at once; the predictions as they come, each with its input's
/// index (a caller can use each output and drop it before the last one is ready).
pub(super) async fn infer_unordered(
    stage: &ServedModel,
    inputs: Vec<ModelInput>,
    poisoned: bool,
) -> Result<impl futures_util::Stream<Item = (usize, Result<Prediction, StageError>)> + '_, StageError> {
    let pending = enqueue_all(stage, inputs, poisoned).await?;
    Ok(pending
        .into_iter()
        .enumerate()
        .map(|(i, rx)| async move { (i, answered(stage, rx.await)) })
        .collect::<futures_util::stream::FuturesUnordered<_>>())
}

type Reply = oneshot::Receiver<Result<Prediction, InferError>>;

async fn enqueue_all(stage: &ServedModel, inputs: Vec<ModelInput>, poisoned: bool) -> Result<Vec<Reply>, StageError> {
    let mut pending = Vec::with_capacity(inputs.len());
    for input in inputs {
        let (tx, rx) = oneshot::channel();
        stage
            .enqueue(Job { input: Arc::new(input), poisoned, reply: tx })
            .await
            .map_err(|refused| StageError::Request(ApiError::Overloaded(refused.to_string())))?;
        pending.push(rx);
    }
    Ok(pending)
}

/// One input's answer, its queue wait and inference timed per stage.
fn answered(
    stage: &ServedModel,
    reply: Result<Result<Prediction, InferError>, oneshot::error::RecvError>,
) -> Result<Prediction, StageError> {
    let p = reply
        .map_err(|_| StageError::Image(InferError::Unavailable { model: stage.name.clone(), waited_ms: 0 }))?
        .map_err(StageError::Image)?;
    for (name, d) in [("queue_wait", p.queue_wait), ("inference", p.inference)] {
        ::metrics::histogram!(metrics::STAGE_DURATION, "stage" => name, "model" => stage.name.clone())
            .record(d.as_secs_f64());
    }
    Ok(p)
}

/// Runs `read` on every image of a request at once (with its index in `images`), each decoded on
/// the decoder pool first (timed as stage `decode` of `model`). Each image's outcome is its own:
/// its result, or (per-file status, error) when it does not decode or a stage fails for it; a
/// request-wide failure (queue full) or the client hanging up ends the whole request.
pub(super) async fn each_image<T, F, Fut>(
    state: &AppState,
    req: &HttpRequest,
    model: &str,
    images: &[(String, Bytes)],
    read: F,
) -> Result<Vec<Result<T, (u8, String)>>, ApiError>
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
            Err(e) => Ok(Err((1, e.to_string()))),
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

/// `--role api`: one image on its model's stream, the model's whole pipeline run by a worker: the
/// worker's serialized result, or the image's per-file failure; refused at once when the stream
/// is full or the broker down (the request's error).
pub(super) async fn remote_image(
    broker: &crate::broker::api::Broker,
    model: &str,
    bytes: &Bytes,
    poisoned: bool,
) -> Result<Vec<u8>, StageError> {
    let (tx, rx) = oneshot::channel();
    broker
        .enqueue_image(model, bytes.to_vec(), poisoned, tx)
        .map_err(|refused| StageError::Request(ApiError::Overloaded(refused.to_string())))?;
    match rx.await {
        Ok(Ok(body)) => Ok(body),
        Ok(Err((status, error))) => Err(StageError::File(status, error)),
        Err(_) => Err(StageError::File(2, format!("model {model} unavailable, retry later"))),
    }
}

/// [`remote_image`] for every image of a request, waiting for all of them (or the client's
/// hang-up): no decoding here, the worker decodes with the same limits.
pub(super) async fn remote_images(
    broker: &crate::broker::api::Broker,
    model: &str,
    req: &HttpRequest,
    images: &[(String, Bytes)],
) -> Result<Vec<Result<Vec<u8>, (u8, String)>>, ApiError> {
    // Every image goes on the stream before any answer is awaited (they are worked on together).
    let (tx, rx): (Vec<_>, Vec<_>) = images.iter().map(|_| oneshot::channel()).unzip();
    for ((_, bytes), tx) in images.iter().zip(tx) {
        broker.enqueue_image(model, bytes.to_vec(), false, tx).map_err(|r| ApiError::Overloaded(r.to_string()))?;
    }
    let answers = join_all(rx.into_iter().map(|rx| async move {
        match rx.await {
            Ok(answer) => answer,
            Err(_) => Err((2, format!("model {model} unavailable, retry later"))),
        }
    }));
    tokio::select! {
        answers = answers => Ok(answers),
        () = client_gone(req) => Err(ApiError::ClientGone("client closed the connection".into())),
    }
}

/// `--role worker`: one image job of a model whose whole pipeline runs here: decode (the
/// configured limits), `read`, and its result serialized by `encode`; a failure is the image's
/// per-file status and error, written as the single process would answer them.
pub(super) async fn image_job<T, Fut>(
    state: &AppState,
    model: &str,
    bytes: Vec<u8>,
    read: impl FnOnce(Arc<DecodedImage>) -> Fut,
    encode: impl FnOnce(&T) -> Vec<u8>,
) -> crate::broker::codec::Outcome
where
    Fut: Future<Output = Result<T, StageError>>,
{
    use crate::broker::codec::Outcome;
    let start = std::time::Instant::now();
    let decoded = state.decoder.send(Decode { bytes: bytes.into(), limits: state.limits.clone() }).await;
    ::metrics::histogram!(metrics::STAGE_DURATION, "stage" => "decode", "model" => model.to_string())
        .record(start.elapsed().as_secs_f64());
    let image = match decoded {
        Ok(Ok(image)) => image,
        Ok(Err(e)) => return Outcome::Failed { status: 1, message: e.to_string() },
        Err(e) => return Outcome::Failed { status: 2, message: format!("decoder unavailable: {e}") },
    };
    match read(Arc::new(image)).await {
        Ok(v) => Outcome::Read { body: encode(&v), took_us: start.elapsed().as_micros() as u64 },
        Err(e) => match e.per_file() {
            Ok((status, message)) => Outcome::Failed { status, message },
            Err(request) => Outcome::Failed { status: 2, message: request.to_string() },
        },
    }
}

/// CPU work on the preprocessing pool.
pub(super) async fn prepare<M>(state: &AppState, msg: M) -> Result<M::Result, StageError>
where
    M: actix::Message + Send + 'static,
    M::Result: Send,
    crate::actors::Preprocessor: actix::Handler<M>,
{
    state
        .preprocessor
        .send(msg)
        .await
        .map_err(|e| StageError::Request(ApiError::Internal(format!("preprocessor unavailable: {e}"))))
}

/// Counts and times a finished request of `endpoint`, and counts its images by per-file status.
pub(super) fn record_request<T>(
    endpoint: &'static str,
    started: std::time::Instant,
    result: &Result<T, ApiError>,
    statuses: impl Iterator<Item = u8>,
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

/// Inputs of a fixed-size network.
pub(super) fn fixed(inputs: Vec<Vec<f32>>) -> Vec<ModelInput> {
    inputs.into_iter().map(ModelInput::fixed).collect()
}
