//! InferenceWorker: owns one model on one device and runs one batch at a time on its own thread.
//!
//! Supervised: a forward error or panic (caught with `catch_unwind`, since a panic escaping a
//! handler would close the mailbox for good) stops the actor; the `Supervisor` restarts it, and
//! `restarting` waits a doubling back-off before the weights and device are loaded again.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix::{Actor, ActorContext, Context, Handler, Message, Supervised};

use crate::config::SupervisorConfig;
use crate::metrics::{self, BusyMeter};
use crate::models::{DeviceSpec, Model, ModelSpec};
use crate::pipelines::preprocess::ModelInput;

/// What the rest of the server can see of a worker: readiness and busy time.
#[derive(Debug)]
pub struct WorkerHealth {
    pub model: String,
    pub device: String,
    pub alive: AtomicBool,
    pub meter: std::sync::Mutex<BusyMeter>,
    /// Total forward time in nanoseconds (exported as seconds).
    pub busy_nanos: AtomicU64,
    /// Supervisor restarts of this worker.
    pub restarts: AtomicU64,
}

impl WorkerHealth {
    pub fn new(model: &str, device: &DeviceSpec) -> Self {
        Self {
            model: model.to_string(),
            device: device.to_string(),
            alive: AtomicBool::new(false),
            meter: std::sync::Mutex::new(BusyMeter::new(Instant::now())),
            busy_nanos: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
        }
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
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

    /// `loading` (starting or restarting), `busy` (in a forward pass) or `idle`.
    pub fn state(&self) -> &'static str {
        if !self.is_alive() {
            "loading"
        } else if self.meter.lock().expect("meter lock. This is a bug.").is_running() {
            "busy"
        } else {
            "idle"
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
    pub elapsed: Duration,
}

pub struct InferenceWorker {
    spec: ModelSpec,
    device: DeviceSpec,
    health: Arc<WorkerHealth>,
    supervisor: SupervisorConfig,
    /// Honour `RunBatch::poisoned` (only when `fault_injection.panic_marker` is configured).
    fault_injection: bool,
    model: Option<Model>,
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
        Self { spec, device, health, supervisor, fault_injection, model: None, backoff }
    }

    fn fail(&mut self, ctx: &mut Context<Self>, reason: String) -> WorkerFault {
        tracing::error!(model = %self.health.model, device = %self.health.device, %reason, "worker failed; restarting");
        self.health.alive.store(false, Ordering::Release);
        self.model = None;
        ctx.stop();
        WorkerFault { model: self.health.model.clone(), device: self.health.device.clone(), reason }
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => format!("panic: {s}"),
        Err(p) => p.downcast_ref::<&str>().map_or_else(|| "panic".to_string(), |s| format!("panic: {s}")),
    }
}

impl Actor for InferenceWorker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // This arbiter thread runs forward passes only: name it so its CPU counts as inference.
        metrics::name_current_thread("gb-infer");
        let t = Instant::now();
        // Load, then one warm-up pass (kernel compilation on GPU backends), before taking batches.
        let load = || {
            let model = Model::load(&self.spec, &self.device).map_err(|e| e.to_string())?;
            let zeros = vec![0f32; model.input_len()];
            model.forward(&[&zeros]).map_err(|e| format!("warm-up pass failed: {e}"))?;
            Ok::<_, String>(model)
        };
        match catch_unwind(AssertUnwindSafe(load)) {
            Ok(Ok(model)) => {
                self.model = Some(model);
                self.health.alive.store(true, Ordering::Release);
                tracing::info!(model = %self.health.model, device = %self.health.device, ms = t.elapsed().as_millis() as u64, "worker ready");
            }
            Ok(Err(e)) => {
                self.fail(ctx, format!("cannot load model: {e}"));
            }
            Err(p) => {
                self.fail(ctx, format!("cannot load model: {}", panic_message(p)));
            }
        }
    }
}

impl Supervised for InferenceWorker {
    fn restarting(&mut self, _: &mut Context<Self>) {
        metrics::counter_restart(&self.health.model, &self.health.device);
        self.health.restarts.fetch_add(1, Ordering::Relaxed);
        // This arbiter thread belongs to this worker alone: waiting here blocks nobody else.
        std::thread::sleep(self.backoff);
        self.backoff = (self.backoff * 2).min(Duration::from_millis(self.supervisor.max_backoff_ms));
    }
}

impl Handler<RunBatch> for InferenceWorker {
    type Result = Result<BatchOutput, WorkerFault>;

    fn handle(&mut self, msg: RunBatch, ctx: &mut Context<Self>) -> Self::Result {
        let Some(model) = &self.model else {
            return Err(self.fail(ctx, "model not loaded".into()));
        };
        let inputs: Vec<&[f32]> = msg.inputs.iter().map(|i| i.data.as_slice()).collect();
        let crash = msg.poisoned && self.fault_injection;
        let start = Instant::now();
        self.health.meter.lock().expect("meter lock. This is a bug.").begin(start);
        let result = catch_unwind(AssertUnwindSafe(|| {
            if crash {
                panic!("injected fault: poisoned input");
            }
            model.forward(&inputs)
        }));
        let end = Instant::now();
        self.health.meter.lock().expect("meter lock. This is a bug.").end(end);
        let elapsed = end - start;
        self.health.busy_nanos.fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
        match result {
            Ok(Ok(outputs)) => {
                self.backoff = Duration::from_millis(self.supervisor.initial_backoff_ms);
                Ok(BatchOutput { outputs, elapsed })
            }
            Ok(Err(e)) => Err(self.fail(ctx, e.to_string())),
            Err(p) => Err(self.fail(ctx, panic_message(p))),
        }
    }
}
