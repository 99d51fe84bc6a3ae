//! What the multi-network endpoints (persons, text) share: a stage's inputs through its batcher,
//! CPU work on the preprocessing pool, and the two ways a stage fails.

use std::sync::Arc;

use tokio::sync::oneshot;

use super::{AppState, ServedModel};
use crate::actors::{Enqueue, InferError, Job, Prediction};
use crate::error::ApiError;
use crate::metrics;
use crate::pipelines::preprocess::ModelInput;

/// A stage failed for one image (per-file status) or for the whole request (queue full).
pub(super) enum StageError {
    Image(InferError),
    Request(ApiError),
}

/// Sends every input through `stage`'s batcher and waits for all of them.
pub(super) async fn infer(stage: &ServedModel, inputs: Vec<ModelInput>) -> Result<Vec<Prediction>, StageError> {
    let mut pending = Vec::with_capacity(inputs.len());
    for input in inputs {
        let (tx, rx) = oneshot::channel();
        stage
            .batcher
            .send(Enqueue(Job { input: Arc::new(input), poisoned: false, reply: tx }))
            .await
            .map_err(|e| StageError::Request(ApiError::Internal(format!("batcher unavailable: {e}"))))?
            .map_err(|refused| StageError::Request(ApiError::Overloaded(refused.to_string())))?;
        pending.push(rx);
    }
    let mut out = Vec::with_capacity(pending.len());
    for rx in pending {
        let p = rx
            .await
            .map_err(|_| StageError::Image(InferError::Unavailable { model: stage.name.clone(), waited_ms: 0 }))?
            .map_err(StageError::Image)?;
        for (name, d) in [("queue_wait", p.queue_wait), ("inference", p.inference)] {
            ::metrics::histogram!(metrics::STAGE_DURATION, "stage" => name, "model" => stage.name.clone())
                .record(d.as_secs_f64());
        }
        out.push(p);
    }
    Ok(out)
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
