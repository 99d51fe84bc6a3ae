//! `--role api`: model inputs go on the broker, answers come back on this replica's reply stream.
//!
//! [`Broker::enqueue`] never waits on Redis: it refuses at once when the broker is down or the
//! stage already has `queue_capacity` jobs of this replica outstanding, otherwise it hands the job
//! to the writer task (XADDs pipelined). Three tasks run per replica:
//! - writer: XADD batches; a failed write answers its jobs with a temporary error.
//! - reader: XREAD BLOCK on the reply stream; each job is answered once (by id), later answers of
//!   the same job are dropped and counted; read entries are deleted.
//! - health (every `health_interval_ms`): PING; on failure the broker is down (readiness false,
//!   new work refused, outstanding jobs answered with a temporary error); samples each stage's
//!   stream length / pending / live workers; answers jobs past their deadline; tells workers which
//!   jobs lost their client (the `cancelled` sorted set).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use redis::streams::StreamReadReply;
use tokio::sync::{mpsc, oneshot};

use super::codec::{JobEntry, Outcome, ReplyEntry, fields_of};
use super::{Keys, connect, unix_ms, within};
use crate::actors::{InferError, Job, Prediction, Refused};
use crate::config::BrokerConfig;
use crate::error::FileStatus;
use crate::metrics;

/// Jobs handed to the writer and not yet written, over all stages.
const WRITER_QUEUE: usize = 8192;
/// XADDs per pipeline.
const WRITE_BATCH: usize = 256;
/// Reply entries per XREAD.
const READ_BATCH: usize = 512;

/// One model stage as this replica sees it.
#[derive(Debug)]
pub struct Stage {
    pub name: String,
    stream: String,
    capacity: usize,
    max_wait: Duration,
    /// Jobs of this replica put on the stage and not answered yet.
    outstanding: AtomicUsize,
    /// Last sampled stream length and live workers.
    pub stream_len: AtomicUsize,
    pub live_workers: AtomicUsize,
    /// When a sample last saw a live worker on the stage (unix ms; the replica's start before).
    last_served_ms: AtomicU64,
}

impl Stage {
    /// A live worker now, or one seen within `grace_ms` (a worker restarting, or the api just
    /// started and not yet sampled): jobs put on the stage will be taken. Past that the stage is
    /// unserved: its modes are left out of answers (or refused when nothing else is asked) and
    /// its outstanding jobs are answered as unavailable.
    pub fn served(&self, grace_ms: u64) -> bool {
        self.live_workers.load(Ordering::Relaxed) > 0
            || unix_ms().saturating_sub(self.last_served_ms.load(Ordering::Relaxed)) < grace_ms
    }
}

/// Who waits for a job's answer: a model input's handler (the prediction), or an image job's
/// (the model's serialized result for the image, `Outcome::Read`, or the image's per-file status
/// and error as the worker wrote it).
pub enum Waiter {
    Tensor(oneshot::Sender<Result<Prediction, InferError>>),
    Image(oneshot::Sender<Result<Vec<u8>, (FileStatus, String)>>),
}

impl Waiter {
    fn fail(self, e: InferError) {
        match self {
            Self::Tensor(tx) => drop(tx.send(Err(e))),
            Self::Image(tx) => drop(tx.send(Err((e.file_status(), e.to_string())))),
        }
    }

    /// Hands a worker's answer over; an answer of the other kind is a permanent failure.
    fn deliver(self, outcome: Outcome) {
        match (self, outcome) {
            (Self::Image(tx), Outcome::Failed { status, message }) => drop(tx.send(Err((status, message)))),
            (w, Outcome::Failed { status, message }) => w.fail(failure(status, message)),
            (Self::Tensor(tx), Outcome::Done { output, queue_wait_us, inference_us, batch_size }) => {
                let _ = tx.send(Ok(Prediction {
                    output,
                    queue_wait: Duration::from_micros(queue_wait_us),
                    inference: Duration::from_micros(inference_us),
                    batch_size,
                }));
            }
            (Self::Image(tx), Outcome::Read { body, .. }) => drop(tx.send(Ok(body))),
            (w, _) => w.fail(InferError::Failed(
                "the worker answered a different kind of job (api and worker versions differ?)".into(),
            )),
        }
    }

    fn is_closed(&self) -> bool {
        match self {
            Self::Tensor(tx) => tx.is_closed(),
            Self::Image(tx) => tx.is_closed(),
        }
    }
}

/// A worker's per-file failure: a permanent one is the image's own, anything else temporary.
fn failure(status: FileStatus, message: String) -> InferError {
    if status == FileStatus::Permanent { InferError::Failed(message) } else { InferError::Temporary(message) }
}

struct Pending {
    stage: Arc<Stage>,
    reply: Waiter,
    sent: Instant,
    deadline: Instant,
    deadline_ms: u64,
}

struct Outgoing {
    stream: String,
    stage: String,
    entry: JobEntry,
}

/// The broker as the API replica uses it.
pub struct Broker {
    config: BrokerConfig,
    keys: Keys,
    reply_key: String,
    up: AtomicBool,
    down_reason: Mutex<String>,
    seq: AtomicU64,
    pending: Mutex<HashMap<String, Pending>>,
    stages: HashMap<String, Arc<Stage>>,
    outgoing: mpsc::Sender<Outgoing>,
}

impl Broker {
    /// `stages`: (stage name, queue capacity per replica, longest wait for an answer). Spawns the
    /// writer, reader and health tasks on the current runtime.
    pub fn start(config: &BrokerConfig, stages: &[(String, usize, Duration)]) -> Arc<Self> {
        let keys = Keys::new(&config.prefix);
        let replica = super::replica_name();
        let (tx, rx) = mpsc::channel(WRITER_QUEUE);
        let broker = Arc::new(Self {
            config: config.clone(),
            reply_key: keys.reply(&replica),
            stages: stages
                .iter()
                .map(|(name, capacity, max_wait)| {
                    let stage = Stage {
                        name: name.clone(),
                        stream: keys.jobs(name),
                        capacity: *capacity,
                        max_wait: *max_wait,
                        outstanding: AtomicUsize::new(0),
                        stream_len: AtomicUsize::new(0),
                        live_workers: AtomicUsize::new(0),
                        last_served_ms: AtomicU64::new(unix_ms()),
                    };
                    (name.clone(), Arc::new(stage))
                })
                .collect(),
            keys,
            up: AtomicBool::new(false),
            down_reason: Mutex::new("not connected yet".into()),
            seq: AtomicU64::new(0),
            pending: Mutex::new(HashMap::new()),
            outgoing: tx,
        });
        tracing::info!(url = %config.url, reply = %broker.reply_key, "broker: api replica");
        ::metrics::gauge!(metrics::BROKER_UP).set(0.0);
        // Exported from the start (at zero), so dashboards and alerts see the series before the first event.
        ::metrics::counter!(metrics::BROKER_DUPLICATES).absolute(0);
        for (name, _, _) in stages {
            ::metrics::counter!(metrics::BROKER_PAYLOAD_BYTES, "stage" => name.clone()).absolute(0);
        }
        tokio::spawn(broker.clone().health());
        tokio::spawn(broker.clone().writer(rx));
        tokio::spawn(broker.clone().reader());
        broker
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    pub fn down_reason(&self) -> String {
        self.down_reason.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn stage(&self, name: &str) -> Option<&Arc<Stage>> {
        self.stages.get(name)
    }

    /// Whether the stage's jobs will be taken by a worker ([`Stage::served`], within the
    /// visibility timeout).
    pub fn served(&self, stage: &Stage) -> bool {
        stage.served(self.config.visibility_timeout_ms)
    }

    pub fn stages(&self) -> impl Iterator<Item = &Arc<Stage>> {
        self.stages.values()
    }

    /// Jobs of this replica outstanding on a stage.
    pub fn outstanding(&self, stage: &str) -> usize {
        self.stages.get(stage).map_or(0, |s| s.outstanding.load(Ordering::Relaxed))
    }

    /// Puts a model input on its stage's stream; refuses at once when the broker is down or the
    /// stage is full.
    pub fn enqueue(&self, stage: &str, job: Job) -> Result<(), Refused> {
        let (encoding, input, poisoned) = (self.config.payload, job.input, job.poisoned);
        self.submit(stage, Waiter::Tensor(job.reply), |id, reply, deadline| {
            JobEntry::new(id, reply, deadline, &input, poisoned, encoding)
        })
    }

    /// Puts an uploaded image on its model's stream: the worker runs the model's whole pipeline
    /// on it (the face cascade, text, plates) and answers with the model's serialized result.
    pub fn enqueue_image(
        &self,
        stage: &str,
        image: Vec<u8>,
        poisoned: bool,
        reply: oneshot::Sender<Result<Vec<u8>, (FileStatus, String)>>,
    ) -> Result<(), Refused> {
        self.submit(stage, Waiter::Image(reply), |id, reply_key, deadline| {
            JobEntry::image(id, reply_key, deadline, image, poisoned)
        })
    }

    fn submit(
        &self,
        stage: &str,
        reply: Waiter,
        entry: impl FnOnce(String, String, u64) -> JobEntry,
    ) -> Result<(), Refused> {
        let Some(st) = self.stages.get(stage) else {
            return Err(Refused::BrokerDown(format!("stage {stage} is not on the broker. This is a bug.")));
        };
        if !self.is_up() {
            ::metrics::counter!(metrics::REFUSALS, "reason" => "broker_down").increment(1);
            return Err(Refused::BrokerDown(self.down_reason()));
        }
        if st.outstanding.fetch_add(1, Ordering::AcqRel) >= st.capacity {
            st.outstanding.fetch_sub(1, Ordering::AcqRel);
            ::metrics::counter!(metrics::REFUSALS, "reason" => "queue_full").increment(1);
            return Err(Refused::QueueFull { model: stage.to_string(), capacity: st.capacity });
        }
        let id = format!("{}:{}", self.reply_key, self.seq.fetch_add(1, Ordering::Relaxed));
        let now = Instant::now();
        let deadline_ms = unix_ms() + st.max_wait.as_millis() as u64;
        let entry = entry(id.clone(), self.reply_key.clone(), deadline_ms);
        self.lock().insert(
            id.clone(),
            Pending { stage: st.clone(), reply, sent: now, deadline: now + st.max_wait, deadline_ms },
        );
        let out = Outgoing { stream: st.stream.clone(), stage: stage.to_string(), entry };
        if self.outgoing.try_send(out).is_err() {
            self.take(&id);
            ::metrics::counter!(metrics::REFUSALS, "reason" => "queue_full").increment(1);
            return Err(Refused::QueueFull { model: stage.to_string(), capacity: WRITER_QUEUE });
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Removes a pending job (the one place its stage's count goes down).
    fn take(&self, id: &str) -> Option<Pending> {
        let p = self.lock().remove(id)?;
        p.stage.outstanding.fetch_sub(1, Ordering::AcqRel);
        Some(p)
    }

    fn answer(&self, id: &str, outcome: Outcome) {
        match self.take(id) {
            Some(p) => {
                ::metrics::histogram!(metrics::BROKER_ROUND_TRIP, "stage" => p.stage.name.clone())
                    .record(p.sent.elapsed().as_secs_f64());
                p.reply.deliver(outcome);
            }
            None => ::metrics::counter!(metrics::BROKER_DUPLICATES).increment(1),
        }
    }

    fn set_down(&self, reason: String) {
        *self.down_reason.lock().unwrap_or_else(|e| e.into_inner()) = reason.clone();
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::error!(%reason, "broker down: refusing new work, answering outstanding jobs with status 2");
        }
        ::metrics::gauge!(metrics::BROKER_UP).set(0.0);
        // Nothing outstanding can be answered through a broker that is gone (and a restarted one
        // may have lost the streams): each job gets a temporary error now; answers that still
        // arrive later are dropped as duplicates.
        let ids: Vec<String> = self.lock().keys().cloned().collect();
        for id in ids {
            if let Some(p) = self.take(&id) {
                p.reply.fail(InferError::Temporary(format!("broker unavailable ({reason}), retry later")));
            }
        }
    }

    async fn writer(self: Arc<Self>, mut rx: mpsc::Receiver<Outgoing>) {
        let timeout = Duration::from_millis(self.config.command_timeout_ms);
        let mut conn: Option<ConnectionManager> = None;
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < WRITE_BATCH {
                match rx.try_recv() {
                    Ok(o) => batch.push(o),
                    Err(_) => break,
                }
            }
            let mut pipe = redis::pipe();
            for o in &batch {
                ::metrics::counter!(metrics::BROKER_PAYLOAD_BYTES, "stage" => o.stage.clone())
                    .increment(o.entry.payload.len() as u64);
                pipe.add_command(super::xadd(&o.stream, &o.entry.to_fields())).ignore();
            }
            let result = async {
                if conn.is_none() {
                    conn = Some(connect(&self.config, timeout).await?);
                }
                let c = conn.as_mut().expect("connected above");
                within(timeout, "XADD", pipe.query_async::<()>(c)).await
            }
            .await;
            if let Err(e) = result {
                ::metrics::counter!(metrics::BROKER_ERRORS, "op" => "xadd").increment(1);
                let why = format!("broker write failed: {e}");
                for o in batch {
                    if let Some(p) = self.take(&o.entry.id) {
                        p.reply.fail(InferError::Temporary(format!("{why}, retry later")));
                    }
                }
            }
        }
    }

    async fn reader(self: Arc<Self>) {
        let block = Duration::from_millis(self.config.block_ms);
        let timeout = Duration::from_millis(self.config.command_timeout_ms);
        let pause = Duration::from_millis(self.config.health_interval_ms);
        let mut conn: Option<ConnectionManager> = None;
        let mut last = "0-0".to_string();
        loop {
            if !self.is_up() {
                tokio::time::sleep(pause).await;
                continue;
            }
            if conn.is_none() {
                match connect(&self.config, block + timeout).await {
                    Ok(c) => conn = Some(c),
                    Err(_) => {
                        tokio::time::sleep(pause).await;
                        continue;
                    }
                }
            }
            let c = conn.as_mut().expect("connected above");
            let read: redis::RedisResult<Option<StreamReadReply>> = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(READ_BATCH)
                .arg("BLOCK")
                .arg(block.as_millis() as u64)
                .arg("STREAMS")
                .arg(&self.reply_key)
                .arg(&last)
                .query_async(c)
                .await;
            let entries = match read {
                Ok(Some(reply)) => reply.keys.into_iter().flat_map(|k| k.ids).collect::<Vec<_>>(),
                Ok(None) => continue,
                Err(e) => {
                    ::metrics::counter!(metrics::BROKER_ERRORS, "op" => "xread").increment(1);
                    tracing::debug!(error = %e, "broker: reply read failed");
                    tokio::time::sleep(pause).await;
                    continue;
                }
            };
            let mut ids = Vec::with_capacity(entries.len());
            for e in entries {
                match ReplyEntry::from_fields(&fields_of(e.map)) {
                    Ok(r) => self.answer(&r.id, r.outcome),
                    Err(err) => tracing::warn!(entry = %e.id, error = %err, "broker: unreadable answer dropped"),
                }
                last.clone_from(&e.id);
                ids.push(e.id);
            }
            // Read answers are deleted; a replica that is gone leaves a stream that expires.
            let expire_ms = (self.config.visibility_timeout_ms * 10).max(600_000);
            let mut pipe = redis::pipe();
            pipe.cmd("XDEL").arg(&self.reply_key).arg(&ids).ignore();
            pipe.cmd("PEXPIRE").arg(&self.reply_key).arg(expire_ms).ignore();
            if tokio::time::timeout(timeout, pipe.query_async::<()>(c)).await.map_or(true, |r| r.is_err()) {
                ::metrics::counter!(metrics::BROKER_ERRORS, "op" => "xdel").increment(1);
            }
        }
    }

    async fn health(self: Arc<Self>) {
        let interval = Duration::from_millis(self.config.health_interval_ms);
        let timeout = Duration::from_millis(self.config.command_timeout_ms);
        let mut conn: Option<ConnectionManager> = None;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.expire();
            let cancelled = self.cancelled();
            let result: redis::RedisResult<()> = async {
                if conn.is_none() {
                    conn = Some(connect(&self.config, timeout).await?);
                }
                let c = conn.as_mut().expect("connected above");
                let pong: String = within(timeout, "PING", redis::cmd("PING").query_async(c)).await?;
                if pong != "PONG" {
                    return Err(redis::RedisError::from((redis::ErrorKind::Io, "unexpected PING answer")));
                }
                if !self.up.swap(true, Ordering::AcqRel) {
                    tracing::info!(url = %self.config.url, "broker up");
                }
                ::metrics::gauge!(metrics::BROKER_UP).set(1.0);
                self.sample(c, &cancelled, timeout).await?;
                self.unserved();
                Ok(())
            }
            .await;
            if let Err(e) = result {
                if self.is_up() || conn.is_none() {
                    ::metrics::counter!(metrics::BROKER_ERRORS, "op" => "health").increment(1);
                }
                self.set_down(e.to_string());
            }
        }
    }

    /// Stream lengths, pending counts and live workers of every stage; cancelled jobs.
    async fn sample(
        &self,
        c: &mut ConnectionManager,
        cancelled: &[(String, u64)],
        timeout: Duration,
    ) -> redis::RedisResult<()> {
        let stages: Vec<&Arc<Stage>> = self.stages.values().collect();
        let now = unix_ms();
        let mut pipe = redis::pipe();
        // A stage's stream does not exist until its first job or worker: that answer is an error
        // (read as zeros), not a failed sample.
        pipe.ignore_errors();
        for s in &stages {
            pipe.cmd("XLEN").arg(&s.stream);
            pipe.cmd("XINFO").arg("GROUPS").arg(&s.stream);
            pipe.cmd("HGETALL").arg(self.keys.workers(&s.name));
        }
        if !cancelled.is_empty() {
            let mut zadd = redis::cmd("ZADD");
            zadd.arg(self.keys.cancelled());
            for (id, deadline) in cancelled {
                zadd.arg(*deadline).arg(id);
            }
            pipe.add_command(zadd).ignore();
        }
        pipe.cmd("ZREMRANGEBYSCORE").arg(self.keys.cancelled()).arg("-inf").arg(now).ignore();
        let values: Vec<redis::Value> = within(timeout, "sampling", pipe.query_async(c)).await?;
        for (s, v) in stages.iter().zip(values.chunks(3)) {
            let len: usize = redis::from_redis_value_ref(&v[0]).unwrap_or(0);
            let pending = group_pending(&v[1]);
            let workers: HashMap<String, u64> = redis::from_redis_value_ref(&v[2]).unwrap_or_default();
            let live = workers.values().filter(|&&expiry| expiry > now).count();
            s.stream_len.store(len, Ordering::Relaxed);
            s.live_workers.store(live, Ordering::Relaxed);
            if live > 0 {
                s.last_served_ms.store(now, Ordering::Relaxed);
            }
            let stage = s.name.clone();
            ::metrics::gauge!(metrics::BROKER_STREAM_LENGTH, "stage" => stage.clone()).set(len as f64);
            ::metrics::gauge!(metrics::BROKER_STREAM_PENDING, "stage" => stage.clone()).set(pending as f64);
            ::metrics::gauge!(metrics::BROKER_STREAM_LAG, "stage" => stage.clone())
                .set(len.saturating_sub(pending) as f64);
            ::metrics::gauge!(metrics::BROKER_LIVE_WORKERS, "stage" => stage).set(live as f64);
        }
        Ok(())
    }

    /// Answers jobs past their deadline with a temporary error.
    fn expire(&self) {
        let now = Instant::now();
        let late: Vec<String> =
            self.lock().iter().filter(|(_, p)| p.deadline <= now).map(|(id, _)| id.clone()).collect();
        for id in late {
            if let Some(p) = self.take(&id) {
                ::metrics::counter!(metrics::REFUSALS, "reason" => "queue_timeout").increment(1);
                let waited_ms = p.sent.elapsed().as_millis() as u64;
                p.reply.fail(InferError::Unavailable { model: p.stage.name.clone(), waited_ms });
            }
        }
    }

    /// Answers the outstanding jobs of stages without a live worker for the visibility timeout
    /// (the only worker died, or none ever served the stage) as unavailable, instead of letting
    /// them wait for their deadline: the request answers with what its other models found.
    fn unserved(&self) {
        let gone: Vec<&Arc<Stage>> = self.stages.values().filter(|s| !self.served(s)).collect();
        if gone.is_empty() {
            return;
        }
        let ids: Vec<String> = self
            .lock()
            .iter()
            .filter(|(_, p)| gone.iter().any(|s| Arc::ptr_eq(s, &p.stage)))
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            if let Some(p) = self.take(&id) {
                ::metrics::counter!(metrics::REFUSALS, "reason" => "no_worker").increment(1);
                let waited_ms = p.sent.elapsed().as_millis() as u64;
                p.reply.fail(InferError::Unavailable { model: p.stage.name.clone(), waited_ms });
            }
        }
    }

    /// Takes out the jobs whose client went away; workers are told to skip them.
    fn cancelled(&self) -> Vec<(String, u64)> {
        let gone: Vec<String> =
            self.lock().iter().filter(|(_, p)| p.reply.is_closed()).map(|(id, _)| id.clone()).collect();
        gone.into_iter()
            .filter_map(|id| {
                let p = self.take(&id)?;
                ::metrics::counter!(metrics::DROPPED, "model" => p.stage.name.clone()).increment(1);
                Some((id, p.deadline_ms))
            })
            .collect()
    }
}

/// The `pending` count of the `workers` group in an XINFO GROUPS answer (0 when there is none yet).
fn group_pending(v: &redis::Value) -> usize {
    let groups: Vec<HashMap<String, redis::Value>> = redis::from_redis_value_ref(v).unwrap_or_default();
    groups
        .iter()
        .find(|g| {
            g.get("name").and_then(|n| redis::from_redis_value_ref::<String>(n).ok()).as_deref() == Some(super::GROUP)
        })
        .and_then(|g| g.get("pending"))
        .and_then(|p| redis::from_redis_value_ref(p).ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The answer a waiter gets for a worker's outcome.
    fn tensor(outcome: Outcome) -> Result<Prediction, InferError> {
        let (tx, mut rx) = oneshot::channel();
        Waiter::Tensor(tx).deliver(outcome);
        rx.try_recv().expect("answered")
    }

    fn image(outcome: Outcome) -> Result<Vec<u8>, (FileStatus, String)> {
        let (tx, mut rx) = oneshot::channel();
        Waiter::Image(tx).deliver(outcome);
        rx.try_recv().expect("answered")
    }

    #[test]
    fn answers_map_to_predictions_and_per_file_statuses() {
        let done = Outcome::Done { output: vec![0.5, 0.25], queue_wait_us: 1500, inference_us: 20_000, batch_size: 3 };
        let p = tensor(done.clone()).unwrap();
        assert_eq!(
            (p.output, p.queue_wait, p.inference, p.batch_size),
            (vec![0.5, 0.25], Duration::from_micros(1500), Duration::from_millis(20), 3)
        );
        let e =
            tensor(Outcome::Failed { status: FileStatus::Permanent, message: "injected fault".into() }).unwrap_err();
        assert_eq!(
            (e.file_status(), e.to_string()),
            (FileStatus::Permanent, "inference failed on this image: injected fault".to_string())
        );
        let e = tensor(Outcome::Failed { status: FileStatus::Temporary, message: "model m unavailable".into() })
            .unwrap_err();
        assert_eq!((e.file_status(), e.to_string()), (FileStatus::Temporary, "model m unavailable".to_string()));
        // An image job's failure is the worker's own words.
        let e =
            image(Outcome::Failed { status: FileStatus::Permanent, message: "image is too large: 9000x9000".into() })
                .unwrap_err();
        assert_eq!(e, (FileStatus::Permanent, "image is too large: 9000x9000".to_string()));
        assert_eq!(image(Outcome::Read { body: b"[]".to_vec(), took_us: 5 }).unwrap(), b"[]".to_vec());
        // An answer of the wrong kind fails the image for good instead of being misread.
        assert_eq!(image(done).unwrap_err().0, FileStatus::Permanent);
        assert_eq!(
            tensor(Outcome::Read { body: vec![1], took_us: 1 }).unwrap_err().file_status(),
            FileStatus::Permanent
        );
    }

    #[test]
    fn the_workers_group_pending_count_is_read_from_xinfo_groups() {
        use redis::Value::{Array, BulkString, Int};
        let group = |name: &str, pending: i64| {
            Array(vec![
                BulkString(b"name".to_vec()),
                BulkString(name.as_bytes().to_vec()),
                BulkString(b"pending".to_vec()),
                Int(pending),
            ])
        };
        assert_eq!(group_pending(&Array(vec![group("other", 9), group(crate::broker::GROUP, 4)])), 4);
        assert_eq!(group_pending(&Array(vec![])), 0);
        assert_eq!(group_pending(&redis::Value::Nil), 0);
    }
}
