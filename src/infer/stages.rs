//! What the cascades share: a stage's inputs through its batcher (or the broker), CPU work on the
//! preprocessing pool, the two ways a stage fails, and `--role worker`'s image jobs.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::{Inference, ServedModel};
use crate::actors::{Decode, InferError, Job, Prediction};
use crate::error::ApiError;
use crate::error::FileStatus;
use crate::metrics;
use crate::pipelines::decode::DecodedImage;
use crate::pipelines::preprocess::ModelInput;

/// A stage failed for one image (per-file status) or for the whole request (queue full).
#[derive(Clone)]
pub enum StageError {
    Image(InferError),
    /// An image's per-file status and error as a worker wrote them (`--role api`).
    File(FileStatus, String),
    Request(ApiError),
}

impl StageError {
    /// The image's per-file (status, error), or the request's error.
    pub fn per_file(self) -> Result<(FileStatus, String), ApiError> {
        match self {
            Self::Image(e) => Ok((e.file_status(), e.to_string())),
            Self::File(status, error) => Ok((status, error)),
            Self::Request(e) => Err(e),
        }
    }
}

/// Sends every input through `stage`'s batcher and waits for all of them.
pub async fn infer(stage: &ServedModel, inputs: Vec<ModelInput>) -> Result<Vec<Prediction>, StageError> {
    infer_marked(stage, inputs, false).await
}

/// [`infer`], with the fault-injection mark (`fault_injection.panic_marker`) on every input.
pub async fn infer_marked(
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
pub async fn infer_unordered(
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

/// `--role api`: one image on its model's stream, the model's whole pipeline run by a worker: the
/// worker's serialized result, or the image's per-file failure; refused at once when the stream
/// is full or the broker down (the request's error).
pub async fn remote_image(
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
        Err(_) => Err(StageError::File(FileStatus::Temporary, format!("model {model} unavailable, retry later"))),
    }
}

/// `--role worker`: one image job of a model whose whole pipeline runs here: decode (the
/// configured limits), `read`, and its result serialized by `encode`; a failure is the image's
/// per-file status and error, written as the single process would answer them.
pub async fn image_job<T, Fut>(
    state: &Inference,
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
        Ok(Err(e)) => return Outcome::Failed { status: FileStatus::Permanent, message: e.to_string() },
        Err(e) => {
            return Outcome::Failed { status: FileStatus::Temporary, message: format!("decoder unavailable: {e}") };
        }
    };
    match read(Arc::new(image)).await {
        Ok(v) => Outcome::Read { body: encode(&v), took_us: start.elapsed().as_micros() as u64 },
        Err(e) => match e.per_file() {
            Ok((status, message)) => Outcome::Failed { status, message },
            Err(request) => Outcome::Failed { status: FileStatus::Temporary, message: request.to_string() },
        },
    }
}

/// CPU work on the preprocessing pool.
pub async fn prepare<M>(state: &Inference, msg: M) -> Result<M::Result, StageError>
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

/// Inputs of a fixed-size network.
pub fn fixed(inputs: Vec<Vec<f32>>) -> Vec<ModelInput> {
    inputs.into_iter().map(ModelInput::fixed).collect()
}
