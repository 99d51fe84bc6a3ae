//! The distributed mode's broker: Redis Streams between `--role api` and `--role worker`.
//!
//! - One stream per model (`<prefix>:jobs:<stream>`): the classifier's holds its network's inputs
//!   (`gpubackend:jobs:mobilenet_v2`), the face, text and plates models' hold the uploaded files
//!   (`…:face`, `…:text`, `…:plates`: the worker runs the model's whole pipeline); one consumer
//!   group (`workers`) on each: every job is delivered to one worker.
//! - `api`: [`api::Broker`] puts each model input on its stage's stream (XADD, pipelined) and reads
//!   the answers from its own reply stream (`<prefix>:reply:<replica>`), answering each job once by
//!   its id (a second answer after a redelivery is dropped and counted).
//! - `worker`: [`worker::Feeder`] reads up to what its local batcher can hold (XREADGROUP), so the
//!   in-process batcher forms batches with the same `max_batch` / `max_delay`; each answer is
//!   written to the job's reply stream, then the job is acknowledged and deleted in the same
//!   MULTI. Jobs of a dead worker are taken back after `visibility_timeout_ms` (XAUTOCLAIM) and
//!   put on the stream again with their delivery count; at `max_deliveries` they go to the
//!   dead-letter stream (`<prefix>:dead:<stage>`) and are answered with per-file status 1.
//! - `codec`: the entries (pure).
//!
//! Acknowledged jobs are deleted, so a stream's length is its backlog plus the jobs being worked
//! on: the autoscaling metric (KEDA `redis-streams`, `streamLength`).

pub mod api;
pub mod codec;
pub mod worker;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::BrokerConfig;

/// The consumer group of every model stream.
pub const GROUP: &str = "workers";

/// Key names, all under the configured prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self { prefix: prefix.to_string() }
    }

    /// A model stage's job stream.
    pub fn jobs(&self, stage: &str) -> String {
        format!("{}:jobs:{stage}", self.prefix)
    }

    /// A model stage's dead letters.
    pub fn dead(&self, stage: &str) -> String {
        format!("{}:dead:{stage}", self.prefix)
    }

    /// An API replica's reply stream.
    pub fn reply(&self, replica: &str) -> String {
        format!("{}:reply:{replica}", self.prefix)
    }

    /// A model stage's live workers: hash consumer → expiry (unix ms), refreshed by each worker.
    pub fn workers(&self, stage: &str) -> String {
        format!("{}:workers:{stage}", self.prefix)
    }

    /// Jobs whose client went away: sorted set job id → deadline (unix ms).
    pub fn cancelled(&self) -> String {
        format!("{}:cancelled", self.prefix)
    }
}

pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A name unique to this process: host, pid and start time.
pub fn replica_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    format!("{host}-{}-{:x}", std::process::id(), unix_ms())
}

/// A reconnecting connection whose commands time out after `response_timeout` (blocking reads
/// need one longer than their block time). Fails after one attempt when Redis is down: callers
/// retry on their own schedule.
pub async fn connect(config: &BrokerConfig, response_timeout: Duration) -> redis::RedisResult<ConnectionManager> {
    let client = redis::Client::open(config.url.as_str())?;
    let timeout = Duration::from_millis(config.command_timeout_ms);
    let cm = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(response_timeout))
        .set_number_of_retries(1)
        .set_max_delay(timeout);
    within(timeout * 3, "connect", ConnectionManager::new_with_config(client, cm)).await
}

/// A Redis call bounded by `timeout`; past it, an I/O error naming `what`.
pub async fn within<T>(
    timeout: Duration,
    what: &str,
    call: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> redis::RedisResult<T> {
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or_else(|_| Err(redis::RedisError::from((redis::ErrorKind::Io, "timed out", what.to_string()))))
}

/// `XADD key * field value …`.
pub fn xadd<K: redis::ToRedisArgs>(key: &str, fields: &[(K, Vec<u8>)]) -> redis::Cmd {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(key).arg("*");
    for (k, v) in fields {
        cmd.arg(k).arg(v);
    }
    cmd
}

/// Creates the stage's stream and consumer group if missing (from the stream's start, so jobs
/// put on it before any worker existed are delivered).
pub async fn ensure_group(conn: &mut ConnectionManager, stream: &str) -> redis::RedisResult<()> {
    let r: redis::RedisResult<()> =
        redis::cmd("XGROUP").arg("CREATE").arg(stream).arg(GROUP).arg("0").arg("MKSTREAM").query_async(conn).await;
    match r {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_live_under_the_prefix() {
        let k = Keys::new("gb");
        assert_eq!(k.jobs("face_pnet"), "gb:jobs:face_pnet");
        assert_eq!(k.dead("face_pnet"), "gb:dead:face_pnet");
        assert_eq!(k.reply("api-1"), "gb:reply:api-1");
        assert_eq!(k.workers("mobilenet_v2"), "gb:workers:mobilenet_v2");
        assert_eq!(k.cancelled(), "gb:cancelled");
    }
}
