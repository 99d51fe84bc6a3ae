//! Batcher: one per model. Drives `pipelines::batching::BatchQueue` with actix timers and sends
//! each due batch to a worker with room for it (fewer batches in flight than its `depth`: one on
//! the CPU, so the next batch forms while one runs; two on GPUs, so the next is staged and
//! launched while the device runs the current one).

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, ActorFutureExt, AsyncContext, Context, Handler, Message, Recipient, SpawnHandle, WrapFuture};
use tokio::sync::oneshot;

use super::worker::{RunBatch, WorkerHealth};
use crate::error::FileStatus;
use crate::metrics;
use crate::pipelines::batching::{BatchPolicy, BatchQueue, ISOLATE_AFTER_FAILURES, Queued, SendReason};
use crate::pipelines::preprocess::ModelInput;

/// One image waiting for inference.
pub struct Job {
    pub input: Arc<ModelInput>,
    /// Fault injection marker (see `config::FaultInjection`).
    pub poisoned: bool,
    pub reply: oneshot::Sender<Result<Prediction, InferError>>,
}

/// A model output with the timings of its way through the batcher.
#[derive(Debug)]
pub struct Prediction {
    pub output: Vec<f32>,
    pub queue_wait: Duration,
    pub inference: Duration,
    pub batch_size: usize,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum InferError {
    /// Failed even alone, after the worker restarted: a permanent error for this image.
    #[error("inference failed on this image: {0}")]
    Failed(String),
    /// No live worker took the image in time: a temporary error, retry later.
    #[error("model {model} unavailable: no live worker within {waited_ms} ms, retry later")]
    Unavailable { model: String, waited_ms: u64 },
    /// Another temporary failure (the broker went down with the image on it): retry later.
    #[error("{0}")]
    Temporary(String),
}

impl InferError {
    /// The Vision per-file status: 1 permanent, 2 temporary.
    pub fn file_status(&self) -> FileStatus {
        match self {
            Self::Failed(_) => FileStatus::Permanent,
            Self::Unavailable { .. } | Self::Temporary(_) => FileStatus::Temporary,
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum Refused {
    #[error("server overloaded: the queue of model {model} is full ({capacity} images), retry later")]
    QueueFull { model: String, capacity: usize },
    #[error("broker unavailable ({0}), retry later")]
    BrokerDown(String),
    /// The stage's batcher is gone (only while the server stops).
    #[error("model {0} unavailable: the server is stopping, retry later")]
    Stopping(String),
}

#[derive(Message)]
#[rtype(result = "Result<(), Refused>")]
pub struct Enqueue(pub Job);

/// Current tokio time as `std::time::Instant`: follows paused time in tests.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// How often the batcher looks again while none of its workers is alive (restarting).
const REVIVAL_POLL: Duration = Duration::from_millis(20);

struct WorkerSlot {
    addr: Recipient<RunBatch>,
    health: Arc<WorkerHealth>,
    /// Batches sent and not answered yet.
    in_flight: usize,
}

impl WorkerSlot {
    fn ready(&self) -> bool {
        self.in_flight < self.health.depth && self.health.is_alive()
    }
}

pub struct Batcher {
    model: String,
    queue: BatchQueue<Job>,
    workers: Vec<WorkerSlot>,
    timer: Option<SpawnHandle>,
}

impl Batcher {
    /// `workers`: the model's InferenceWorkers (any actor answering `RunBatch`) with their health.
    pub fn new(model: &str, policy: BatchPolicy, workers: Vec<(Recipient<RunBatch>, Arc<WorkerHealth>)>) -> Self {
        Self {
            model: model.to_string(),
            queue: BatchQueue::new(policy),
            workers: workers.into_iter().map(|(addr, health)| WorkerSlot { addr, health, in_flight: 0 }).collect(),
            timer: None,
        }
    }

    /// Sends every due batch to a ready worker (alive, with room), the least loaded first, then
    /// sets the next wake-up.
    fn dispatch(&mut self, ctx: &mut Context<Self>) {
        let dropped = self.queue.retain(|job| !job.reply.is_closed());
        if dropped > 0 {
            ::metrics::counter!(metrics::DROPPED, "model" => self.model.clone()).increment(dropped as u64);
        }
        let expired = self.queue.expire(now());
        if !expired.is_empty() {
            ::metrics::counter!(metrics::REFUSALS, "reason" => "queue_timeout").increment(expired.len() as u64);
            let waited_ms = self.queue.policy().max_queue_wait.as_millis() as u64;
            for q in expired {
                let _ = q.item.reply.send(Err(InferError::Unavailable { model: self.model.clone(), waited_ms }));
            }
        }
        while let Some(w) =
            (0..self.workers.len()).filter(|&i| self.workers[i].ready()).min_by_key(|&i| self.workers[i].in_flight)
        {
            let Some((batch, reason)) = self.queue.next_batch(now()) else { break };
            self.send(w, batch, reason, ctx);
        }
        ::metrics::gauge!(metrics::QUEUE_SIZE, "model" => self.model.clone()).set(self.queue.len() as f64);
        if let Some(h) = self.timer.take() {
            ctx.cancel_future(h);
        }
        // Wake for the batch deadline if a worker could take it, to look again if none is alive
        // (a busy live worker wakes us when it answers), and for the oldest item's expiry.
        let wake = if self.workers.iter().any(WorkerSlot::ready) {
            self.queue.deadline()
        } else if !self.queue.is_empty() && !self.workers.iter().any(|w| w.health.is_alive()) {
            Some(now() + REVIVAL_POLL)
        } else {
            None
        };
        if let Some(wake) = [wake, self.queue.next_expiry()].into_iter().flatten().min() {
            let delay = wake.saturating_duration_since(now());
            self.timer = Some(ctx.run_later(delay, |act, ctx| {
                act.timer = None;
                act.dispatch(ctx);
            }));
        }
    }

    fn send(&mut self, w: usize, batch: Vec<Queued<Job>>, reason: SendReason, ctx: &mut Context<Self>) {
        self.workers[w].in_flight += 1;
        let size = batch.len();
        ::metrics::histogram!(metrics::BATCH_SIZE, "model" => self.model.clone()).record(size as f64);
        ::metrics::counter!(metrics::BATCHES, "model" => self.model.clone(), "reason" => reason.as_str()).increment(1);
        let sent_at = now();
        let msg = RunBatch {
            inputs: batch.iter().map(|q| q.item.input.clone()).collect(),
            poisoned: batch.iter().any(|q| q.item.poisoned),
        };
        let fut = self.workers[w].addr.send(msg);
        ctx.spawn(fut.into_actor(self).map(move |result, act, ctx| {
            act.workers[w].in_flight -= 1;
            let fault = match result {
                Ok(Ok(out)) if out.outputs.len() == size => {
                    for (q, output) in batch.into_iter().zip(out.outputs) {
                        let queue_wait = sent_at.saturating_duration_since(q.enqueued_at);
                        let p = Prediction { output, queue_wait, inference: out.elapsed, batch_size: size };
                        let _ = q.item.reply.send(Ok(p));
                    }
                    act.dispatch(ctx);
                    return;
                }
                Ok(Ok(out)) => format!("worker returned {} outputs for {size} inputs", out.outputs.len()),
                Ok(Err(fault)) => fault.to_string(),
                Err(mailbox) => format!("worker unreachable: {mailbox}"),
            };
            // Retry once with the batch, then alone; an item failing alone is answered with the error.
            let (give_up, retry): (Vec<_>, Vec<_>) =
                batch.into_iter().partition(|q| q.failures >= ISOLATE_AFTER_FAILURES);
            for q in give_up {
                let _ = q.item.reply.send(Err(InferError::Failed(fault.clone())));
            }
            act.queue.requeue_failed(retry);
            act.dispatch(ctx);
        }));
    }
}

impl Actor for Batcher {
    type Context = Context<Self>;
}

impl Handler<Enqueue> for Batcher {
    type Result = Result<(), Refused>;

    fn handle(&mut self, msg: Enqueue, ctx: &mut Context<Self>) -> Self::Result {
        let key = msg.0.input.size.map_or(0, |[h, w]| ((h as u64) << 32 | w as u64) + 1);
        if self.queue.push_keyed(msg.0, key, now()).is_err() {
            ::metrics::counter!(metrics::REFUSALS, "reason" => "queue_full").increment(1);
            return Err(Refused::QueueFull { model: self.model.clone(), capacity: self.queue.policy().capacity });
        }
        self.dispatch(ctx);
        Ok(())
    }
}

/// How many items wait in the queue now (for the placement view).
#[derive(Message)]
#[rtype(result = "usize")]
pub struct QueueLen;

impl Handler<QueueLen> for Batcher {
    type Result = usize;

    fn handle(&mut self, _: QueueLen, _: &mut Context<Self>) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    //! The batching rules driven by the real actor, in paused tokio time.
    use std::sync::{Arc, Mutex};

    use actix::{Actor, Context, Handler, ResponseFuture};
    use tokio::time::{Instant as TokioInstant, advance};

    use super::*;
    use crate::actors::worker::{BatchOutput, WorkerFault};
    use crate::models::DeviceSpec;

    /// Records when each batch arrives and how big it is; each forward "takes" `forward` of
    /// (paused) time.
    struct RecordingWorker {
        log: Arc<Mutex<Vec<(Duration, usize)>>>,
        t0: TokioInstant,
        forward: Duration,
    }

    impl Actor for RecordingWorker {
        type Context = Context<Self>;
    }

    impl Handler<RunBatch> for RecordingWorker {
        type Result = ResponseFuture<Result<BatchOutput, WorkerFault>>;

        fn handle(&mut self, msg: RunBatch, _: &mut Context<Self>) -> Self::Result {
            self.log.lock().unwrap().push((self.t0.elapsed(), msg.inputs.len()));
            let (n, forward) = (msg.inputs.len(), self.forward);
            Box::pin(async move {
                tokio::time::sleep(forward).await;
                Ok(BatchOutput { outputs: vec![vec![0.0]; n], elapsed: forward })
            })
        }
    }

    fn job() -> (Job, oneshot::Receiver<Result<Prediction, InferError>>) {
        let (tx, rx) = oneshot::channel();
        (Job { input: Arc::new(ModelInput::fixed(vec![0.0])), poisoned: false, reply: tx }, rx)
    }

    fn paused_system() -> actix::SystemRunner {
        actix::System::with_tokio_rt(|| {
            tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap()
        })
    }

    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn policy(max_batch: usize, capacity: usize) -> BatchPolicy {
        BatchPolicy { max_batch, max_delay: MS(50), capacity, max_queue_wait: MS(1_000) }
    }

    fn health(alive: bool) -> Arc<WorkerHealth> {
        let h = Arc::new(WorkerHealth::new("m", &DeviceSpec::Cpu, 1));
        h.alive.store(alive, std::sync::atomic::Ordering::Release);
        h
    }

    #[test]
    fn deadline_full_and_idle_worker_rules() {
        paused_system().block_on(async {
            let log = Arc::new(Mutex::new(Vec::new()));
            let t0 = TokioInstant::now();
            let worker = RecordingWorker { log: log.clone(), t0, forward: MS(100) }.start();
            let batcher = Batcher::new("m", policy(4, 16), vec![(worker.recipient(), health(true))]).start();

            // One item: sent when it has waited max_delay, not before.
            let (j, rx) = job();
            batcher.send(Enqueue(j)).await.unwrap().unwrap();
            advance(MS(49)).await;
            assert!(log.lock().unwrap().is_empty(), "sent before the deadline");
            let p = rx.await.unwrap().unwrap();
            assert_eq!(log.lock().unwrap()[0], (MS(50), 1));
            assert_eq!((p.queue_wait, p.batch_size), (MS(50), 1));

            // Worker idle again at t=150. Four items fill a batch: sent at once. Four more are full
            // too but wait for the worker (busy until t=250), then go without waiting for a deadline.
            let mut rxs = Vec::new();
            for _ in 0..8 {
                let (j, rx) = job();
                batcher.send(Enqueue(j)).await.unwrap().unwrap();
                rxs.push(rx);
            }
            for rx in rxs {
                rx.await.unwrap().unwrap();
            }
            let log = log.lock().unwrap().clone();
            assert_eq!(log[1..], [(MS(150), 4), (MS(250), 4)]);
        });
    }

    #[test]
    fn a_worker_of_depth_two_gets_the_next_batch_while_one_runs() {
        paused_system().block_on(async {
            let log = Arc::new(Mutex::new(Vec::new()));
            let t0 = TokioInstant::now();
            let worker = RecordingWorker { log: log.clone(), t0, forward: MS(100) }.start();
            let h = Arc::new(WorkerHealth::new("m", &DeviceSpec::Cpu, 2));
            h.alive.store(true, std::sync::atomic::Ordering::Release);
            let batcher = Batcher::new("m", policy(4, 16), vec![(worker.recipient(), h)]).start();
            let mut rxs = Vec::new();
            for _ in 0..12 {
                let (j, rx) = job();
                batcher.send(Enqueue(j)).await.unwrap().unwrap();
                rxs.push(rx);
            }
            for rx in rxs {
                rx.await.unwrap().unwrap();
            }
            // Two full batches at once; the third when the first answers.
            assert_eq!(log.lock().unwrap().as_slice(), [(MS(0), 4), (MS(0), 4), (MS(100), 4)]);
        });
    }

    #[test]
    fn abandoned_items_are_dropped_before_inference() {
        paused_system().block_on(async {
            let log = Arc::new(Mutex::new(Vec::new()));
            let worker = RecordingWorker { log: log.clone(), t0: TokioInstant::now(), forward: MS(1) }.start();
            let batcher = Batcher::new("m", policy(4, 16), vec![(worker.recipient(), health(true))]).start();
            let (gone, gone_rx) = job();
            let (kept, kept_rx) = job();
            batcher.send(Enqueue(gone)).await.unwrap().unwrap();
            batcher.send(Enqueue(kept)).await.unwrap().unwrap();
            drop(gone_rx); // the client went away
            kept_rx.await.unwrap().unwrap();
            assert_eq!(log.lock().unwrap().as_slice(), [(MS(50), 1)]);
        });
    }

    #[test]
    fn full_queue_refuses() {
        paused_system().block_on(async {
            let worker = RecordingWorker { log: Default::default(), t0: TokioInstant::now(), forward: MS(1) }.start();
            let batcher = Batcher::new("m", policy(8, 2), vec![(worker.recipient(), health(true))]).start();
            let mut keep = Vec::new();
            for _ in 0..2 {
                let (j, rx) = job();
                keep.push(rx);
                batcher.send(Enqueue(j)).await.unwrap().unwrap();
            }
            let (j, _rx) = job();
            assert!(matches!(batcher.send(Enqueue(j)).await.unwrap(), Err(Refused::QueueFull { capacity: 2, .. })));
        });
    }

    #[test]
    fn waits_for_a_live_worker_and_gives_up_after_max_queue_wait() {
        paused_system().block_on(async {
            let log = Arc::new(Mutex::new(Vec::new()));
            let t0 = TokioInstant::now();
            let worker = RecordingWorker { log: log.clone(), t0, forward: MS(1) }.start();
            let h = health(false);
            let batcher = Batcher::new("m", policy(4, 16), vec![(worker.recipient(), h.clone())]).start();

            // No live worker: nothing is sent; after max_queue_wait the image gets a temporary error.
            let (j, rx) = job();
            batcher.send(Enqueue(j)).await.unwrap().unwrap();
            let err = rx.await.unwrap().unwrap_err();
            assert_eq!(err.file_status(), FileStatus::Temporary);
            assert_eq!(t0.elapsed(), MS(1_000));
            assert!(log.lock().unwrap().is_empty());

            // The worker comes back while an image waits: the image is sent within a poll period.
            let (j, rx) = job();
            batcher.send(Enqueue(j)).await.unwrap().unwrap();
            advance(MS(300)).await;
            h.alive.store(true, std::sync::atomic::Ordering::Release);
            rx.await.unwrap().unwrap();
            let (at, n) = log.lock().unwrap()[0];
            assert_eq!(n, 1);
            assert!(at >= MS(1_300) && at <= MS(1_300) + REVIVAL_POLL, "sent at {at:?}");
        });
    }
}
