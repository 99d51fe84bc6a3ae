//! InferenceWorker: owns one model on one device. The actor (on its own arbiter thread) stages each
//! batch on the CPU — one contiguous input buffer — and hands it to the worker's device thread,
//! which uploads it, launches the forward pass and reads the outputs back.
//!
//! With `depth` > 1 (GPUs) the device thread launches the next staged batch before it reads the
//! current one back, so the device never waits for the CPU between batches: staging, upload and
//! kernel launch of batch N+1 overlap the device running batch N. With depth 1 (CPU) batches run
//! one after another.
//!
//! Supervised: a failed load, forward error or panic (caught with `catch_unwind`) ends the device
//! thread, fails every batch it held and stops the actor; the `Supervisor` restarts it, and
//! `restarting` waits a doubling back-off before the device and weights are loaded again. Why the
//! worker is down stays in `WorkerHealth::last_error` for /admin and /health/ready.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use actix::{Actor, ActorContext, AsyncContext, Context, Handler, Message, ResponseFuture, Supervised};
use tokio::sync::oneshot;

use crate::config::SupervisorConfig;
use crate::metrics::{self, BusyMeter};
use crate::models::{DeviceSpec, ForwardError, Model, ModelSpec, Pending, StagedBatch};
use crate::pipelines::preprocess::ModelInput;

/// What the rest of the server can see of a worker: readiness, why it is not ready, busy time.
#[derive(Debug)]
pub struct WorkerHealth {
    pub model: String,
    pub device: String,
    /// Batches the worker holds at once (the batcher sends no more): 1 runs them one after
    /// another; 2 launches the next while the device runs the current one.
    pub depth: usize,
    pub alive: AtomicBool,
    pub meter: std::sync::Mutex<BusyMeter>,
    /// Total time the device had work, in nanoseconds (exported as seconds).
    pub busy_nanos: AtomicU64,
    /// Supervisor restarts of this worker.
    pub restarts: AtomicU64,
    /// A batch succeeded since the last (re)start: the next restart waits the initial back-off.
    served: AtomicBool,
    /// Why the worker is not live (the device cannot be opened, the weights cannot be loaded, the
    /// last pass failed); None once it is live.
    pub last_error: std::sync::Mutex<Option<String>>,
    /// The adapter the model runs on (name, API, driver), once loaded.
    pub adapter: std::sync::Mutex<Option<String>>,
    /// Values per item of the network's output at its warm-up size (0 until it has loaded): what
    /// tensor clients are told the output holds (`oip`).
    pub output_len: std::sync::atomic::AtomicUsize,
}

impl WorkerHealth {
    pub fn new(model: &str, device: &DeviceSpec, depth: usize) -> Self {
        Self {
            model: model.to_string(),
            device: device.to_string(),
            depth: depth.max(1),
            alive: AtomicBool::new(false),
            meter: std::sync::Mutex::new(BusyMeter::new(Instant::now())),
            busy_nanos: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            served: AtomicBool::new(false),
            last_error: std::sync::Mutex::new(None),
            adapter: std::sync::Mutex::new(None),
            output_len: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn adapter(&self) -> Option<String> {
        self.adapter.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn sample(&self, now: Instant) -> metrics::WorkerSample {
        metrics::WorkerSample {
            model: self.model.clone(),
            device: self.device.clone(),
            alive: self.is_alive(),
            busy_seconds_total: self.busy_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            busy_ratio: self.meter.lock().expect("meter lock. This is a bug.").ratio(now),
        }
    }

    /// `loading` (starting or restarting), `busy` (the device has work) or `idle`.
    pub fn state(&self) -> &'static str {
        if !self.is_alive() {
            "loading"
        } else if self.meter.lock().expect("meter lock. This is a bug.").is_running() {
            "busy"
        } else {
            "idle"
        }
    }

    fn set_live(&self, adapter: String) {
        *self.adapter.lock().unwrap_or_else(|e| e.into_inner()) = Some(adapter);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.alive.store(true, Ordering::Release);
    }

    fn set_down(&self, reason: &str) {
        self.alive.store(false, Ordering::Release);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.to_string());
    }

    /// The device got work (`begin`) or ran out of it (`end`).
    fn busy(&self, running: bool) {
        let now = Instant::now();
        let mut meter = self.meter.lock().expect("meter lock. This is a bug.");
        if running {
            meter.begin(now);
        } else if let Some(since) = meter.running_since() {
            meter.end(now);
            self.busy_nanos.fetch_add(now.saturating_duration_since(since).as_nanos() as u64, Ordering::Relaxed);
        }
    }
}

/// A worker's forward pass failed; the worker is restarting. `Clone`: fans out to a whole batch.
#[derive(Debug, Clone, thiserror::Error)]
#[error("worker {device}/{model} failed: {reason}")]
pub struct WorkerFault {
    pub model: String,
    pub device: String,
    pub reason: String,
}

#[derive(Message)]
#[rtype(result = "Result<BatchOutput, WorkerFault>")]
pub struct RunBatch {
    pub inputs: Vec<Arc<ModelInput>>,
    /// Fault injection: the batch holds an input marked to crash the worker.
    pub poisoned: bool,
}

#[derive(Debug)]
pub struct BatchOutput {
    pub outputs: Vec<Vec<f32>>,
    /// From launch to outputs read back (includes waiting behind the previous batch on the device).
    pub elapsed: Duration,
}

/// The device thread of start `generation` stopped on a failure (sent to the actor so it restarts).
#[derive(Message)]
#[rtype(result = "()")]
struct DeviceFailed {
    generation: u64,
    reason: DeviceFault,
}

/// Where the device thread answers one batch.
type Reply = oneshot::Sender<Result<BatchOutput, DeviceFault>>;

/// Why the device thread could not start, or stopped: typed until it reaches the actor, which
/// reports it (readiness, `/admin`, the log, the batches it failed) by its message.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DeviceFault {
    /// The device cannot be opened (the probe says what is missing).
    #[error(transparent)]
    Device(#[from] crate::models::DeviceError),
    #[error("cannot load model: {0}")]
    Load(String),
    #[error("warm-up pass failed: {0}")]
    WarmUp(ForwardError),
    /// A forward pass or a read-back failed.
    #[error(transparent)]
    Forward(#[from] ForwardError),
    /// A forward pass panicked (caught; the worker restarts).
    #[error("{0}")]
    Panic(String),
}

/// A staged batch on its way to the device thread.
struct Staged<B> {
    batch: B,
    /// Fault injection: panic when launching this batch.
    crash: bool,
    reply: Reply,
}

/// What the device thread drives: `Model` in the server, a recording fake in tests.
trait Engine {
    type Batch;
    type Pending;
    fn launch(&self, batch: Self::Batch) -> Result<Self::Pending, ForwardError>;
    fn read(&self, pending: Self::Pending) -> Result<Vec<Vec<f32>>, ForwardError>;
}

impl Engine for Model {
    type Batch = StagedBatch;
    type Pending = Pending;

    fn launch(&self, batch: StagedBatch) -> Result<Pending, ForwardError> {
        Model::launch(self, batch)
    }

    fn read(&self, pending: Pending) -> Result<Vec<Vec<f32>>, ForwardError> {
        pending.read()
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => format!("panic: {s}"),
        Err(p) => p.downcast_ref::<&str>().map_or_else(|| "panic".to_string(), |s| format!("panic: {s}")),
    }
}

fn caught<T>(f: impl FnOnce() -> Result<T, ForwardError>) -> Result<T, DeviceFault> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(DeviceFault::Forward(e)),
        Err(p) => Err(DeviceFault::Panic(panic_message(p))),
    }
}

/// The device thread's loop: runs staged batches until the channel closes (Ok) or a pass fails
/// (Err with the reason, after failing every batch it held). Keeps up to `depth` batches launched:
/// it takes the next batch, if one is already staged, before reading the oldest back.
fn drive<E: Engine>(
    engine: &E,
    jobs: &Receiver<Staged<E::Batch>>,
    depth: usize,
    health: &WorkerHealth,
) -> Result<(), DeviceFault> {
    // Launched batches, oldest first: the device's handle, where to answer, when it was launched.
    let mut launched: VecDeque<(E::Pending, Reply, Instant)> = VecDeque::new();
    // The worker is down before any batch hears of the failure, so the batcher sends the retry to
    // a live worker (after the restart), not back into this ending thread.
    let fail_all = |launched: &mut VecDeque<(E::Pending, Reply, Instant)>, failed: Reply, reason: &DeviceFault| {
        health.set_down(&reason.to_string());
        health.busy(false);
        let _ = failed.send(Err(reason.clone()));
        for (_, reply, _) in launched.drain(..) {
            let _ = reply.send(Err(reason.clone()));
        }
    };
    loop {
        let next = if launched.is_empty() {
            jobs.recv().ok()
        } else if launched.len() < depth {
            jobs.try_recv().ok()
        } else {
            None
        };
        if let Some(job) = next {
            if launched.is_empty() {
                health.busy(true);
            }
            let start = Instant::now();
            match caught(|| {
                if job.crash {
                    panic!("injected fault: poisoned input");
                }
                engine.launch(job.batch)
            }) {
                Ok(pending) => {
                    launched.push_back((pending, job.reply, start));
                    continue;
                }
                Err(reason) => {
                    fail_all(&mut launched, job.reply, &reason);
                    return Err(reason);
                }
            }
        }
        let Some((pending, reply, start)) = launched.pop_front() else {
            return Ok(()); // the actor stopped and nothing is in flight
        };
        match caught(|| engine.read(pending)) {
            Ok(outputs) => {
                if launched.is_empty() {
                    health.busy(false);
                }
                health.served.store(true, Ordering::Relaxed);
                let _ = reply.send(Ok(BatchOutput { outputs, elapsed: start.elapsed() }));
            }
            Err(reason) => {
                fail_all(&mut launched, reply, &reason);
                return Err(reason);
            }
        }
    }
}

pub struct InferenceWorker {
    spec: ModelSpec,
    device: DeviceSpec,
    health: Arc<WorkerHealth>,
    supervisor: SupervisorConfig,
    /// Honour `RunBatch::poisoned` (only when `fault_injection.panic_marker` is configured).
    fault_injection: bool,
    /// Staged batches to the device thread; None until it has loaded the model.
    jobs: Option<SyncSender<Staged<StagedBatch>>>,
    /// Starts so far: a failure report from an earlier start's device thread is stale.
    generation: u64,
    backoff: Duration,
}

impl InferenceWorker {
    pub fn new(
        spec: ModelSpec,
        device: DeviceSpec,
        health: Arc<WorkerHealth>,
        supervisor: SupervisorConfig,
        fault_injection: bool,
    ) -> Self {
        let backoff = Duration::from_millis(supervisor.initial_backoff_ms);
        Self { spec, device, health, supervisor, fault_injection, jobs: None, generation: 0, backoff }
    }

    fn fail(&mut self, ctx: &mut Context<Self>, reason: String) -> WorkerFault {
        tracing::error!(model = %self.health.model, device = %self.health.device, %reason, "worker failed; restarting");
        self.health.set_down(&reason);
        self.jobs = None; // the device thread ends once its channel closes
        ctx.stop();
        self.fault(reason)
    }

    fn fault(&self, reason: String) -> WorkerFault {
        WorkerFault { model: self.health.model.clone(), device: self.health.device.clone(), reason }
    }
}

impl Actor for InferenceWorker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let t = Instant::now();
        self.generation += 1;
        let generation = self.generation;
        let (jobs_tx, jobs) = sync_channel::<Staged<StagedBatch>>(self.health.depth);
        let (ready_tx, ready) = sync_channel::<Result<String, DeviceFault>>(1);
        let (spec, device, health, addr) = (self.spec.clone(), self.device.clone(), self.health.clone(), ctx.address());
        let thread = std::thread::Builder::new().name("gb-infer".into()).spawn(move || {
            // This thread runs forward passes only: its CPU counts as inference.
            metrics::name_current_thread("gb-infer");
            // Open the device (its probe says what is missing), load, then one warm-up pass (kernel
            // compilation on GPU backends), before taking batches.
            let loaded = catch_unwind(AssertUnwindSafe(|| -> Result<(Model, String), DeviceFault> {
                let adapter = device.probe()?;
                let model = Model::load(&spec, &device).map_err(|e| DeviceFault::Load(e.to_string()))?;
                let zeros = vec![0f32; model.input_len()];
                let out = model.forward(&[&zeros]).map_err(DeviceFault::WarmUp)?;
                health.output_len.store(out.first().map_or(0, Vec::len), Ordering::Relaxed);
                Ok((model, adapter.to_string()))
            }))
            .unwrap_or_else(|p| Err(DeviceFault::Load(panic_message(p))));
            let model = match loaded {
                Ok((model, adapter)) => {
                    let _ = ready_tx.send(Ok(adapter));
                    model
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            if let Err(reason) = drive(&model, &jobs, health.depth, &health) {
                addr.do_send(DeviceFailed { generation, reason });
            }
        });
        if let Err(e) = thread {
            self.fail(ctx, format!("cannot start the device thread: {e}"));
            return;
        }
        // This arbiter thread belongs to this worker alone: waiting here blocks nobody else.
        match ready.recv() {
            Ok(Ok(adapter)) => {
                tracing::info!(model = %self.health.model, device = %self.health.device, %adapter, ms = t.elapsed().as_millis() as u64, "worker ready");
                self.jobs = Some(jobs_tx);
                self.health.set_live(adapter);
            }
            Ok(Err(e)) => {
                self.fail(ctx, e.to_string());
            }
            Err(_) => {
                self.fail(ctx, "cannot load model: the device thread ended".into());
            }
        }
    }
}

impl Supervised for InferenceWorker {
    fn restarting(&mut self, _: &mut Context<Self>) {
        metrics::counter_restart(&self.health.model, &self.health.device);
        self.health.restarts.fetch_add(1, Ordering::Relaxed);
        if self.health.served.swap(false, Ordering::Relaxed) {
            self.backoff = Duration::from_millis(self.supervisor.initial_backoff_ms);
        }
        // This arbiter thread belongs to this worker alone: waiting here blocks nobody else.
        std::thread::sleep(self.backoff);
        self.backoff = (self.backoff * 2).min(Duration::from_millis(self.supervisor.max_backoff_ms));
    }
}

impl Handler<DeviceFailed> for InferenceWorker {
    type Result = ();

    fn handle(&mut self, msg: DeviceFailed, ctx: &mut Context<Self>) {
        if msg.generation == self.generation && self.jobs.is_some() {
            self.fail(ctx, msg.reason.to_string());
        }
    }
}

impl Handler<RunBatch> for InferenceWorker {
    /// A plain future, not an actor future: the answer reaches the batcher even when the actor
    /// stops (restarts) first, so the batch's failure keeps its reason.
    type Result = ResponseFuture<Result<BatchOutput, WorkerFault>>;

    fn handle(&mut self, msg: RunBatch, ctx: &mut Context<Self>) -> Self::Result {
        let failed = |fault: WorkerFault| -> Self::Result { Box::pin(std::future::ready(Err(fault))) };
        let Some(jobs) = self.jobs.clone() else {
            return failed(self.fail(ctx, "model not loaded".into()));
        };
        // Staging (one contiguous buffer) happens here, while the device runs the previous batch.
        // The batcher batches items of one size only; a fixed-size model's items have no size.
        let inputs: Vec<&[f32]> = msg.inputs.iter().map(|i| i.data.as_slice()).collect();
        let size = msg.inputs.first().and_then(|i| i.size).unwrap_or(self.spec.input_size());
        let batch = match crate::models::stage_sized(&inputs, size) {
            Ok(b) => b,
            Err(e) => return failed(self.fail(ctx, e.to_string())),
        };
        let (reply, answer) = oneshot::channel();
        let job = Staged { batch, crash: msg.poisoned && self.fault_injection, reply };
        match jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return failed(self.fail(ctx, "more batches sent than the worker's depth. This is a bug.".into()));
            }
            Err(TrySendError::Disconnected(_)) => return failed(self.fail(ctx, "the device thread stopped".into())),
        }
        let fault = self.fault(String::new());
        Box::pin(async move {
            match answer.await {
                Ok(Ok(out)) => Ok(out),
                // The device thread also tells the actor (DeviceFailed), which restarts the worker.
                Ok(Err(reason)) => Err(WorkerFault { reason: reason.to_string(), ..fault }),
                Err(_) => Err(WorkerFault { reason: "the device thread stopped".into(), ..fault }),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    /// Logs launches and reads; a batch is its id, and a negative id fails when read.
    struct Recorder(RefCell<Vec<String>>);

    impl Engine for Recorder {
        type Batch = i32;
        type Pending = i32;

        fn launch(&self, id: i32) -> Result<i32, ForwardError> {
            self.0.borrow_mut().push(format!("launch {id}"));
            Ok(id)
        }

        fn read(&self, id: i32) -> Result<Vec<Vec<f32>>, ForwardError> {
            self.0.borrow_mut().push(format!("read {id}"));
            if id < 0 { Err(ForwardError::Device("lost".into())) } else { Ok(vec![vec![id as f32]]) }
        }
    }

    /// Runs `drive` over batches `ids`; each batch's answer, None if it never got one (its reply
    /// was dropped with the channel: the actor answers it "the device thread stopped").
    type Answer = Option<Result<BatchOutput, DeviceFault>>;

    fn run(ids: &[i32], depth: usize) -> (Vec<String>, Vec<Answer>, Result<(), DeviceFault>) {
        let (tx, rx) = sync_channel(ids.len());
        let mut answers = Vec::new();
        for &id in ids {
            let (reply, answer) = oneshot::channel();
            tx.send(Staged { batch: id, crash: false, reply }).unwrap();
            answers.push(answer);
        }
        drop(tx);
        let engine = Recorder(RefCell::new(Vec::new()));
        let health = WorkerHealth::new("m", &DeviceSpec::Cpu, depth);
        let result = drive(&engine, &rx, depth, &health);
        drop(rx);
        let answers = answers.into_iter().map(|mut a| a.try_recv().ok()).collect();
        assert!(!health.meter.lock().unwrap().is_running(), "the device is idle at the end");
        (engine.0.into_inner(), answers, result)
    }

    #[test]
    fn depth_one_runs_batches_one_after_another() {
        let (log, answers, result) = run(&[1, 2, 3], 1);
        assert_eq!(log, ["launch 1", "read 1", "launch 2", "read 2", "launch 3", "read 3"]);
        assert!(result.is_ok());
        let firsts: Vec<f32> = answers.iter().map(|a| a.as_ref().unwrap().as_ref().unwrap().outputs[0][0]).collect();
        assert_eq!(firsts, [1.0, 2.0, 3.0]);
    }

    #[test]
    fn depth_two_launches_the_next_batch_before_reading_the_current_one() {
        let (log, answers, _) = run(&[1, 2, 3], 2);
        assert_eq!(log, ["launch 1", "launch 2", "read 1", "launch 3", "read 2", "read 3"]);
        assert!(answers.iter().all(|a| a.as_ref().is_some_and(Result::is_ok)));
    }

    #[test]
    fn a_failed_read_fails_every_batch_in_flight_and_stops() {
        let (log, answers, result) = run(&[1, -2, 3, 4], 2);
        // 1 read fine; -2 failed on read while 3 was already launched: both fail, 4 is never taken.
        assert_eq!(log, ["launch 1", "launch -2", "read 1", "launch 3", "read -2"]);
        assert_eq!(result.unwrap_err().to_string(), "device error: lost");
        let failed = |a: &Answer| a.as_ref().is_some_and(|r| r.as_ref().is_err_and(|e| e.to_string().contains("lost")));
        assert!(answers[0].as_ref().is_some_and(Result::is_ok));
        assert!(failed(&answers[1]) && failed(&answers[2]), "both batches in flight fail");
        assert!(answers[3].is_none(), "the batch never taken is left to the actor");
    }
}
