//! `--role worker`: a [`Feeder`] per model stage takes jobs from the stage's stream into the local
//! batcher (which batches them with the model's `max_batch` / `max_delay`, exactly as in one
//! process) and writes each answer back.
//!
//! - reader: XREADGROUP only while a local worker of the stage is live, and only as many jobs as
//!   the local pipeline can hold (`budget`), so jobs stay on the stream for other workers instead
//!   of queueing here. Jobs past their deadline or whose client went away are acknowledged and
//!   skipped.
//! - answer: XADD to the job's reply stream, XACK and XDEL in one MULTI, retried until the job's
//!   deadline while Redis is away. A job that fails alone (a poison input) is also dead-lettered.
//! - keeper (every `health_interval_ms`): heartbeat (the stage's `workers` hash); resets the idle
//!   time of this worker's jobs in flight (XCLAIM JUSTID), so only a worker that stopped has jobs
//!   taken back; takes back jobs idle past `visibility_timeout_ms` (XAUTOCLAIM) and redelivers or
//!   dead-letters them by their delivery count (`codec::reclaim`); now and then deletes the
//!   group's consumers of workers that are gone (no job, idle past `forget_consumers_after_ms`).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::Addr;
use redis::aio::ConnectionManager;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use tokio::sync::{Semaphore, oneshot};

use futures_util::future::BoxFuture;

use super::codec::{Fields, JobEntry, Outcome, Payload, Reclaim, ReplyEntry, fields_of, reclaim};
use super::{GROUP, Keys, connect, ensure_group, unix_ms, within, xadd};
use crate::actors::{Batcher, Enqueue, InferError, Job, WorkerHealth};
use crate::config::BrokerConfig;
use crate::error::FileStatus;
use crate::metrics;

/// Jobs examined per XAUTOCLAIM.
const CLAIM_BATCH: usize = 64;

/// Keeper ticks between two looks for consumers of workers that are gone.
const FORGET_EVERY: u64 = 20;

/// Deletes the group's consumers that hold no job and were idle longer than ARGV[2] ms (ARGV[1]:
/// the group; ARGV[3]: a consumer to keep, ARGV[4]: the only one to consider, or ""). One
/// script, so a consumer cannot take a job between the look and the delete (its pending entries
/// would go with it). Returns the names deleted.
const FORGET_SCRIPT: &str = r"
local deleted = {}
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local f = {}
  for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
  if f['pending'] == 0 and f['idle'] > tonumber(ARGV[2]) and f['name'] ~= ARGV[3]
     and (ARGV[4] == '' or f['name'] == ARGV[4]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f['name'])
    table.insert(deleted, f['name'])
  end
end
return deleted
";

/// Runs a model's whole pipeline on an uploaded image (`Payload::Image` jobs): the image bytes and
/// the fault-injection mark in, the answer out.
pub type ImageRunner = Arc<dyn Fn(Vec<u8>, bool) -> BoxFuture<'static, Outcome> + Send + Sync>;

/// What a stage's jobs go through on the worker.
#[derive(Clone)]
pub enum Runner {
    /// One network: the model input into the stage's batcher.
    Batcher(Addr<Batcher>),
    /// A whole model pipeline on the image (the face cascade, text, plates).
    Image(ImageRunner),
}

/// One model stage's link between its stream and the local batcher.
pub struct Feeder {
    config: BrokerConfig,
    keys: Keys,
    stage: String,
    stream: String,
    consumer: String,
    runner: Runner,
    /// The workers each network of the stage needs: live when every group has a live one.
    health: Vec<Vec<Arc<WorkerHealth>>>,
    /// Jobs taken at once at most (read and not answered).
    budget: usize,
    /// Entry ids read and not answered yet (their idle time is kept fresh).
    in_flight: Mutex<HashSet<String>>,
    /// This worker reaches Redis (the heartbeat's last outcome).
    pub up: Arc<AtomicBool>,
    /// Set on shutdown: take no more jobs.
    stopping: AtomicBool,
    /// The read loop has ended (after `stopping`): no job is between read and in flight.
    stopped: AtomicBool,
}

impl Feeder {
    /// `budget`: jobs the local pipeline holds at once (for a batcher: batches in flight + one forming).
    pub fn start(
        config: &BrokerConfig,
        consumer: &str,
        stage: &str,
        runner: Runner,
        health: Vec<Vec<Arc<WorkerHealth>>>,
        budget: usize,
        up: Arc<AtomicBool>,
    ) -> Arc<Self> {
        let keys = Keys::new(&config.prefix);
        let feeder = Arc::new(Self {
            config: config.clone(),
            stream: keys.jobs(stage),
            keys,
            stage: stage.to_string(),
            consumer: consumer.to_string(),
            runner,
            health,
            budget: budget.max(1),
            in_flight: Mutex::new(HashSet::new()),
            up,
            stopping: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
        });
        tracing::info!(stage, stream = %feeder.stream, consumer, budget = feeder.budget, "broker: worker feeds stage");
        // Exported from the start (at zero), so dashboards and alerts see the series before the first event.
        for name in [metrics::BROKER_REDELIVERIES, metrics::BROKER_DEAD_LETTERS] {
            ::metrics::counter!(name, "stage" => stage.to_string()).absolute(0);
        }
        tokio::spawn(feeder.clone().read());
        tokio::spawn(feeder.clone().keep());
        feeder
    }

    /// Takes no more jobs (shutdown); the jobs taken are still answered.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// Stopped reading, and every job taken is answered.
    pub fn drained(&self) -> bool {
        self.stopped.load(Ordering::Acquire) && self.in_flight().is_empty()
    }

    pub fn in_flight_count(&self) -> usize {
        self.in_flight().len()
    }

    fn live(&self) -> bool {
        self.health.iter().all(|group| group.iter().any(|w| w.is_alive()))
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.config.command_timeout_ms)
    }

    fn pause(&self) -> Duration {
        Duration::from_millis(self.config.health_interval_ms)
    }

    fn count(&self, outcome: &'static str, n: u64) {
        ::metrics::counter!(metrics::BROKER_JOBS, "stage" => self.stage.clone(), "outcome" => outcome).increment(n);
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn read(self: Arc<Self>) {
        let block = Duration::from_millis(self.config.block_ms);
        let room = Arc::new(Semaphore::new(self.budget));
        let mut conn: Option<ConnectionManager> = None;
        let mut writer: Option<ConnectionManager> = None;
        loop {
            if self.stopping.load(Ordering::Acquire) {
                self.stopped.store(true, Ordering::Release);
                return;
            }
            if !self.live() {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            // At least one job's room, then as many as are free.
            let Ok(first) = room.clone().acquire_owned().await else { return };
            let free = 1 + room.available_permits();
            drop(first);
            if conn.is_none() || writer.is_none() {
                match (connect(&self.config, block + self.timeout()).await, connect(&self.config, self.timeout()).await)
                {
                    (Ok(mut c), Ok(w)) => {
                        if let Err(e) = ensure_group(&mut c, &self.stream).await {
                            tracing::warn!(stage = %self.stage, error = %e, "broker: cannot create the consumer group");
                            tokio::time::sleep(self.pause()).await;
                            continue;
                        }
                        conn = Some(c);
                        writer = Some(w);
                    }
                    _ => {
                        tokio::time::sleep(self.pause()).await;
                        continue;
                    }
                }
            }
            let c = conn.as_mut().expect("connected above");
            let read: redis::RedisResult<Option<StreamReadReply>> = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(GROUP)
                .arg(&self.consumer)
                .arg("COUNT")
                .arg(free)
                .arg("BLOCK")
                .arg(block.as_millis() as u64)
                .arg("STREAMS")
                .arg(&self.stream)
                .arg(">")
                .query_async(c)
                .await;
            let entries: Vec<StreamId> = match read {
                Ok(Some(r)) => r.keys.into_iter().flat_map(|k| k.ids).collect(),
                Ok(None) => continue,
                Err(e) => {
                    ::metrics::counter!(metrics::BROKER_ERRORS, "op" => "xreadgroup").increment(1);
                    if e.code() == Some("NOGROUP") {
                        // Redis lost the stream (restarted without persistence): create it again.
                        let _ = ensure_group(c, &self.stream).await;
                    } else {
                        tracing::debug!(stage = %self.stage, error = %e, "broker: read failed");
                        tokio::time::sleep(self.pause()).await;
                    }
                    continue;
                }
            };
            let w = writer.clone().expect("connected above");
            self.take(entries, &room, w).await;
        }
    }

    /// Starts the jobs just read (or acknowledges those nobody waits for any more).
    async fn take(self: &Arc<Self>, entries: Vec<StreamId>, room: &Arc<Semaphore>, mut w: ConnectionManager) {
        let jobs: Vec<(String, Fields)> = entries.into_iter().map(|e| (e.id, fields_of(e.map))).collect();
        let cancelled = self.cancelled(&jobs, &mut w).await;
        let now = unix_ms();
        let mut skip = Vec::new();
        for ((eid, fields), cancelled) in jobs.into_iter().zip(cancelled) {
            let job = match JobEntry::from_fields(&fields) {
                Ok(j) => j,
                Err(e) => {
                    self.count("unreadable", 1);
                    let me = self.clone();
                    let why = format!("unreadable job on the broker: {e}");
                    let w = w.clone();
                    tokio::spawn(async move { me.unreadable(eid, fields, why, w).await });
                    continue;
                }
            };
            if job.deadline_ms <= now || cancelled {
                self.count(if cancelled { "skipped_cancelled" } else { "skipped_deadline" }, 1);
                skip.push(eid);
                continue;
            }
            let Ok(permit) = room.clone().try_acquire_owned() else {
                // Never more read than there is room for; should it happen, the job stays pending
                // and is redelivered after the visibility timeout.
                tracing::error!(stage = %self.stage, "broker: read beyond the budget. This is a bug.");
                continue;
            };
            self.in_flight().insert(eid.clone());
            let work = self.work(&job).await;
            let me = self.clone();
            let w = w.clone();
            tokio::spawn(async move {
                let outcome = work.await;
                me.answer(eid, job, outcome, w).await;
                drop(permit);
            });
        }
        if !skip.is_empty() {
            let mut pipe = redis::pipe();
            pipe.atomic();
            pipe.cmd("XACK").arg(&self.stream).arg(GROUP).arg(&skip).ignore();
            pipe.cmd("XDEL").arg(&self.stream).arg(&skip).ignore();
            if tokio::time::timeout(self.timeout(), pipe.query_async::<()>(&mut w)).await.map_or(true, |r| r.is_err()) {
                ::metrics::counter!(metrics::BROKER_ERRORS, "op" => "xack").increment(1);
            }
        }
    }

    /// Starts a job on the local pipeline; the future answers it.
    async fn work(&self, job: &JobEntry) -> BoxFuture<'static, Outcome> {
        let wrong = |what: &str| -> BoxFuture<'static, Outcome> {
            let message = format!("{what} job on stage {}: unreadable here", self.stage);
            Box::pin(std::future::ready(Outcome::Failed { status: FileStatus::Permanent, message }))
        };
        match (&self.runner, &job.payload) {
            (Runner::Image(run), Payload::Image(bytes)) => run(bytes.clone(), job.poisoned),
            (Runner::Image(_), _) => wrong("a model-input"),
            (Runner::Batcher(batcher), _) => {
                let Some(input) = job.input() else { return wrong("an image") };
                let (tx, rx) = oneshot::channel();
                let queued =
                    batcher.send(Enqueue(Job { input: Arc::new(input), poisoned: job.poisoned, reply: tx })).await;
                Box::pin(async move {
                    match queued {
                        Ok(Ok(())) => match rx.await {
                            Ok(Ok(p)) => Outcome::Done {
                                output: p.output,
                                queue_wait_us: p.queue_wait.as_micros() as u64,
                                inference_us: p.inference.as_micros() as u64,
                                batch_size: p.batch_size,
                            },
                            // The API wraps a permanent failure's reason in its own words again.
                            Ok(Err(InferError::Failed(reason))) => {
                                Outcome::Failed { status: FileStatus::Permanent, message: reason }
                            }
                            Ok(Err(e)) => Outcome::Failed { status: e.file_status(), message: e.to_string() },
                            Err(_) => Outcome::Failed {
                                status: FileStatus::Temporary,
                                message: "the worker's batcher stopped".into(),
                            },
                        },
                        Ok(Err(refused)) => {
                            Outcome::Failed { status: FileStatus::Temporary, message: refused.to_string() }
                        }
                        Err(e) => Outcome::Failed {
                            status: FileStatus::Temporary,
                            message: format!("batcher unavailable: {e}"),
                        },
                    }
                })
            }
        }
    }

    /// Which of the jobs lost their client (ZMSCORE on the `cancelled` set; none if it fails).
    async fn cancelled(&self, jobs: &[(String, Fields)], w: &mut ConnectionManager) -> Vec<bool> {
        let ids: Vec<Vec<u8>> = jobs.iter().map(|(_, f)| f.get("id").cloned().unwrap_or_default()).collect();
        if ids.is_empty() {
            return Vec::new();
        }
        let scores: redis::RedisResult<Vec<Option<f64>>> = within(
            self.timeout(),
            "ZMSCORE",
            redis::cmd("ZMSCORE").arg(self.keys.cancelled()).arg(&ids).query_async(w),
        )
        .await;
        match scores {
            Ok(s) if s.len() == ids.len() => s.iter().map(Option::is_some).collect(),
            _ => vec![false; ids.len()],
        }
    }

    /// Writes the answer, acknowledges and deletes the job (one MULTI), dead-letters a job that
    /// failed for good; retried until the job's deadline while Redis is away.
    async fn answer(&self, eid: String, job: JobEntry, outcome: Outcome, mut w: ConnectionManager) {
        let failed_for_good = matches!(outcome, Outcome::Failed { status: FileStatus::Permanent, .. });
        self.count(if matches!(outcome, Outcome::Failed { .. }) { "failed" } else { "done" }, 1);
        let reply = ReplyEntry { id: job.id.clone(), outcome };
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.add_command(xadd(&job.reply, &reply.to_fields())).ignore();
        if failed_for_good {
            pipe.add_command(self.dead_letter(&job.to_fields(), &reply_error(&reply))).ignore();
        }
        pipe.cmd("XACK").arg(&self.stream).arg(GROUP).arg(&eid).ignore();
        pipe.cmd("XDEL").arg(&self.stream).arg(&eid).ignore();
        loop {
            match tokio::time::timeout(self.timeout(), pipe.query_async::<()>(&mut w)).await {
                Ok(Ok(())) => {
                    if failed_for_good {
                        ::metrics::counter!(metrics::BROKER_DEAD_LETTERS, "stage" => self.stage.clone()).increment(1);
                    }
                    break;
                }
                _ => {
                    ::metrics::counter!(metrics::BROKER_ERRORS, "op" => "answer").increment(1);
                    if unix_ms() >= job.deadline_ms {
                        tracing::warn!(stage = %self.stage, job = %job.id, "broker: answer not written before the job's deadline");
                        break;
                    }
                    tokio::time::sleep(self.pause()).await;
                }
            }
        }
        self.in_flight().remove(&eid);
    }

    /// A job that cannot be read: answered with status 1 when its address can be read, and
    /// dead-lettered either way.
    async fn unreadable(&self, eid: String, fields: Fields, why: String, mut w: ConnectionManager) {
        let mut pipe = redis::pipe();
        pipe.atomic();
        let raw: Vec<(&str, Vec<u8>)> = fields.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        pipe.add_command(self.dead_letter(&raw, &why)).ignore();
        if let Ok((id, reply_key)) = JobEntry::address(&fields) {
            let reply =
                ReplyEntry { id, outcome: Outcome::Failed { status: FileStatus::Permanent, message: why.clone() } };
            pipe.add_command(xadd(&reply_key, &reply.to_fields())).ignore();
        }
        pipe.cmd("XACK").arg(&self.stream).arg(GROUP).arg(&eid).ignore();
        pipe.cmd("XDEL").arg(&self.stream).arg(&eid).ignore();
        match tokio::time::timeout(self.timeout(), pipe.query_async::<()>(&mut w)).await {
            Ok(Ok(())) => ::metrics::counter!(metrics::BROKER_DEAD_LETTERS, "stage" => self.stage.clone()).increment(1),
            _ => ::metrics::counter!(metrics::BROKER_ERRORS, "op" => "dead_letter").increment(1),
        }
    }

    fn dead_letter<K: redis::ToRedisArgs>(&self, fields: &[(K, Vec<u8>)], reason: &str) -> redis::Cmd {
        let mut cmd = redis::cmd("XADD");
        // Dead letters are kept for inspection, the oldest dropped beyond 10,000 per stage.
        cmd.arg(self.keys.dead(&self.stage)).arg("MAXLEN").arg("~").arg(10_000).arg("*");
        for (k, v) in fields {
            cmd.arg(k).arg(v);
        }
        cmd.arg("dead_reason").arg(reason).arg("dead_at").arg(unix_ms()).arg("dead_by").arg(&self.consumer);
        cmd
    }

    /// Heartbeat, idle-time refresh of this worker's jobs, and reclaiming of dead workers' jobs.
    async fn keep(self: Arc<Self>) {
        let mut conn: Option<ConnectionManager> = None;
        let mut tick = tokio::time::interval(self.pause());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks = 0u64;
        loop {
            tick.tick().await;
            let result: redis::RedisResult<()> = async {
                if conn.is_none() {
                    let mut c = connect(&self.config, self.timeout()).await?;
                    ensure_group(&mut c, &self.stream).await?;
                    conn = Some(c);
                }
                let c = conn.as_mut().expect("connected above");
                self.heartbeat(c).await?;
                self.refresh(c).await?;
                // A draining worker takes nothing back (nor does it recreate its consumer).
                let stopping = self.stopping.load(Ordering::Acquire);
                if self.live() && !stopping {
                    self.reclaim(c).await?;
                }
                ticks += 1;
                if ticks.is_multiple_of(FORGET_EVERY) && !stopping {
                    self.forget(c, self.config.forget_consumers_after_ms as i64, "").await?;
                }
                Ok(())
            }
            .await;
            let up = result.is_ok();
            if let Err(e) = result {
                ::metrics::counter!(metrics::BROKER_ERRORS, "op" => "keeper").increment(1);
                if let (Some("NOGROUP"), Some(c)) = (e.code(), conn.as_mut()) {
                    let _ = ensure_group(c, &self.stream).await;
                }
                if self.up.load(Ordering::Acquire) {
                    tracing::error!(stage = %self.stage, error = %e, "broker unreachable from the worker");
                }
            }
            if up && !self.up.load(Ordering::Acquire) {
                tracing::info!(stage = %self.stage, "broker up");
            }
            self.up.store(up, Ordering::Release);
            ::metrics::gauge!(metrics::BROKER_UP).set(if up { 1.0 } else { 0.0 });
        }
    }

    /// Deletes idle consumers without jobs from the stream's group (`only`: that one alone,
    /// whatever its idle time was; "": every other consumer idle past `min_idle_ms`).
    async fn forget(&self, c: &mut ConnectionManager, min_idle_ms: i64, only: &str) -> redis::RedisResult<()> {
        let keep = if only.is_empty() { self.consumer.as_str() } else { "" };
        let deleted: Vec<String> = within(
            self.timeout(),
            "XGROUP DELCONSUMER",
            redis::cmd("EVAL")
                .arg(FORGET_SCRIPT)
                .arg(1)
                .arg(&self.stream)
                .arg(GROUP)
                .arg(min_idle_ms)
                .arg(keep)
                .arg(only)
                .query_async(c),
        )
        .await?;
        if !deleted.is_empty() {
            tracing::info!(stage = %self.stage, consumers = ?deleted, "broker: consumers of workers gone deleted");
        }
        Ok(())
    }

    /// After a drain (every job taken answered): this worker's consumer leaves the group.
    pub async fn leave(&self) {
        let left = async {
            let mut c = connect(&self.config, self.timeout()).await?;
            self.forget(&mut c, -1, &self.consumer).await
        };
        if let Err(e) = left.await {
            tracing::warn!(stage = %self.stage, error = %e, "broker: consumer not deleted on drain (the live workers will)");
        }
    }

    async fn heartbeat(&self, c: &mut ConnectionManager) -> redis::RedisResult<()> {
        let key = self.keys.workers(&self.stage);
        let mut pipe = redis::pipe();
        if self.live() {
            pipe.cmd("HSET").arg(&key).arg(&self.consumer).arg(unix_ms() + 3 * self.config.health_interval_ms).ignore();
        } else {
            pipe.cmd("HDEL").arg(&key).arg(&self.consumer).ignore();
        }
        pipe.cmd("PEXPIRE").arg(&key).arg(60_000).ignore();
        within(self.timeout(), "heartbeat", pipe.query_async::<()>(c)).await
    }

    /// Resets the idle time of the jobs this worker holds, so they are not taken back.
    async fn refresh(&self, c: &mut ConnectionManager) -> redis::RedisResult<()> {
        let ids: Vec<String> = self.in_flight().iter().cloned().collect();
        if ids.is_empty() {
            return Ok(());
        }
        let mut cmd = redis::cmd("XCLAIM");
        cmd.arg(&self.stream).arg(GROUP).arg(&self.consumer).arg(0).arg(&ids).arg("JUSTID");
        within(self.timeout(), "XCLAIM", cmd.query_async::<redis::Value>(c)).await?;
        Ok(())
    }

    /// Takes back jobs whose worker stopped answering and redelivers or dead-letters them.
    async fn reclaim(&self, c: &mut ConnectionManager) -> redis::RedisResult<()> {
        let mut start = "0-0".to_string();
        // Each XAUTOCLAIM scans a bounded part of the pending list; a few rounds per tick.
        for _ in 0..16 {
            let r: StreamAutoClaimReply = within(
                self.timeout(),
                "XAUTOCLAIM",
                redis::cmd("XAUTOCLAIM")
                    .arg(&self.stream)
                    .arg(GROUP)
                    .arg(&self.consumer)
                    .arg(self.config.visibility_timeout_ms)
                    .arg(&start)
                    .arg("COUNT")
                    .arg(CLAIM_BATCH)
                    .query_async(c),
            )
            .await?;
            let mut pipe = redis::pipe();
            pipe.atomic();
            let mut redelivered = 0u64;
            let mut dead = 0u64;
            for e in &r.claimed {
                let fields = fields_of(e.map.clone());
                match JobEntry::from_fields(&fields) {
                    Err(err) => {
                        let raw: Vec<(&str, Vec<u8>)> = fields.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
                        pipe.add_command(self.dead_letter(&raw, &format!("unreadable job: {err}"))).ignore();
                        dead += 1;
                    }
                    Ok(mut job) => match reclaim(job.attempts, self.config.max_deliveries) {
                        Reclaim::Redeliver { attempts } => {
                            job.attempts = attempts;
                            pipe.add_command(xadd(&self.stream, &job.to_fields())).ignore();
                            redelivered += 1;
                        }
                        Reclaim::DeadLetter => {
                            let why = format!("delivered {} times, each time its worker stopped", job.attempts + 1);
                            pipe.add_command(self.dead_letter(&job.to_fields(), &why)).ignore();
                            let reply = ReplyEntry {
                                id: job.id.clone(),
                                outcome: Outcome::Failed { status: FileStatus::Permanent, message: why },
                            };
                            pipe.add_command(xadd(&job.reply, &reply.to_fields())).ignore();
                            dead += 1;
                        }
                    },
                }
            }
            let done: Vec<&String> = r.claimed.iter().map(|e| &e.id).chain(&r.deleted_ids).collect();
            if !done.is_empty() {
                pipe.cmd("XACK").arg(&self.stream).arg(GROUP).arg(&done).ignore();
                pipe.cmd("XDEL").arg(&self.stream).arg(&done).ignore();
                within(self.timeout(), "reclaim", pipe.query_async::<()>(c)).await?;
                if redelivered > 0 {
                    tracing::warn!(stage = %self.stage, jobs = redelivered, "broker: jobs of a stopped worker put back on the stream");
                    ::metrics::counter!(metrics::BROKER_REDELIVERIES, "stage" => self.stage.clone())
                        .increment(redelivered);
                }
                if dead > 0 {
                    tracing::error!(stage = %self.stage, jobs = dead, "broker: jobs dead-lettered");
                    ::metrics::counter!(metrics::BROKER_DEAD_LETTERS, "stage" => self.stage.clone()).increment(dead);
                }
            }
            if r.next_stream_id == "0-0" {
                break;
            }
            start = r.next_stream_id;
        }
        Ok(())
    }
}

fn reply_error(reply: &ReplyEntry) -> String {
    match &reply.outcome {
        Outcome::Failed { message, .. } => message.clone(),
        Outcome::Done { .. } | Outcome::Read { .. } => String::new(),
    }
}
