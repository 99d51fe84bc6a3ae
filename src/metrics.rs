//! Every metric the server exports, declared and described here and nowhere else, plus the
//! Prometheus recorder and the worker busy-time meter (the lecture's "GPU utilisation").

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const REQUESTS: &str = "gpubackend_requests_total";
pub const IMAGES: &str = "gpubackend_images_total";
pub const STAGE_DURATION: &str = "gpubackend_stage_duration_seconds";
pub const BATCH_SIZE: &str = "gpubackend_batch_size";
pub const BATCHES: &str = "gpubackend_batches_total";
pub const QUEUE_SIZE: &str = "gpubackend_queue_size";
pub const QUEUE_CAPACITY: &str = "gpubackend_queue_capacity";
pub const QUEUE_TARGET: &str = "gpubackend_queue_target";
pub const REQUEST_DURATION: &str = "gpubackend_request_duration_seconds";
// The Open Inference Protocol (`/v2`, gRPC): its requests by protocol; their items go through the
// same batchers as the Vision API's (`gpubackend_batch_size{model}` counts both).
pub const OIP_REQUESTS: &str = "gpubackend_oip_requests_total";
pub const OIP_REQUEST_DURATION: &str = "gpubackend_oip_request_duration_seconds";
// Computed at scrape time by `render` (float counters and per-worker state):
pub const WORKER_BUSY_RATIO: &str = "gpubackend_worker_busy_ratio";
pub const WORKER_BUSY_SECONDS: &str = "gpubackend_worker_busy_seconds_total";
pub const WORKER_RESTARTS: &str = "gpubackend_worker_restarts_total";
pub const WORKERS_LIVE: &str = "gpubackend_workers_live";
pub const REFUSALS: &str = "gpubackend_refusals_total";
pub const DROPPED: &str = "gpubackend_dropped_items_total";
pub const INFLIGHT_IMAGES: &str = "gpubackend_inflight_images";
pub const INFLIGHT_BYTES: &str = "gpubackend_inflight_work_bytes";
// The gate in front of each Vision endpoint (`[admission]`).
pub const GATE_ACTIVE: &str = "gpubackend_gate_active_requests";
pub const GATE_WAITING: &str = "gpubackend_gate_waiting_requests";
// Parts of an answer left out because their model had no live worker (partial answers).
pub const PARTIAL: &str = "gpubackend_partial_answers_total";
pub const PROCESS_CPU: &str = "gpubackend_process_cpu_seconds_total";
pub const INFERENCE_CPU: &str = "gpubackend_inference_cpu_seconds_total";
pub const RESIDENT: &str = "gpubackend_process_resident_bytes";
// The broker (distributed mode: `--role api` / `--role worker`).
pub const BROKER_UP: &str = "gpubackend_broker_up";
pub const BROKER_ROUND_TRIP: &str = "gpubackend_broker_round_trip_seconds";
pub const BROKER_PAYLOAD_BYTES: &str = "gpubackend_broker_payload_bytes_total";
pub const BROKER_JOBS: &str = "gpubackend_broker_jobs_total";
pub const BROKER_REDELIVERIES: &str = "gpubackend_broker_redeliveries_total";
pub const BROKER_DEAD_LETTERS: &str = "gpubackend_broker_dead_letters_total";
pub const BROKER_DUPLICATES: &str = "gpubackend_broker_duplicate_answers_total";
pub const BROKER_ERRORS: &str = "gpubackend_broker_errors_total";
pub const BROKER_STREAM_LENGTH: &str = "gpubackend_broker_stream_length";
pub const BROKER_STREAM_PENDING: &str = "gpubackend_broker_stream_pending";
pub const BROKER_STREAM_LAG: &str = "gpubackend_broker_stream_lag";
pub const BROKER_LIVE_WORKERS: &str = "gpubackend_broker_live_workers";

/// Thread names (Linux `comm`) of the threads that run forward passes: the workers' own threads
/// and the CPU backend's rayon pool. Everything else in the process is serving overhead.
pub const INFERENCE_THREAD_PREFIXES: [&str; 2] = ["gb-infer", "gb-rayon"];

/// Window over which `gpubackend_worker_busy_ratio` is computed.
pub const BUSY_WINDOW: Duration = Duration::from_secs(10);

const LATENCY_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

fn describe() {
    describe_counter!(
        REQUESTS,
        "HTTP requests by endpoint, mode and outcome (ok, bad_request, forbidden, overloaded, error)"
    );
    describe_counter!(
        IMAGES,
        "Images answered, by endpoint and per-file status (0 ok, 1 permanent error, 2 temporary error)"
    );
    describe_histogram!(
        STAGE_DURATION,
        Unit::Seconds,
        "Time per stage (decode, preprocess, queue_wait, inference, total) by model"
    );
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "Whole HTTP request, from the handler's start to the answer, by endpoint"
    );
    describe_counter!(
        OIP_REQUESTS,
        "Open Inference Protocol inference requests by protocol (http, grpc), model and outcome (ok, bad_request, not_found, overloaded, forbidden, rate_limited, error)"
    );
    describe_histogram!(
        OIP_REQUEST_DURATION,
        Unit::Seconds,
        "Open Inference Protocol inference request, from its body read to its answer, by protocol and model"
    );
    describe_histogram!(BATCH_SIZE, "Items per batch sent to a worker, by model");
    describe_counter!(BATCHES, "Batches sent, by model and reason (full, deadline, isolated)");
    describe_gauge!(QUEUE_SIZE, "Items waiting in a model's batcher queue (the autoscaling metric)");
    describe_gauge!(
        QUEUE_CAPACITY,
        "Bound of a model's queue (models.<name>.queue_capacity); beyond it requests get 503"
    );
    describe_gauge!(QUEUE_TARGET, "Autoscaling target: queued items per replica (models.<name>.queue_target)");
    describe_counter!(WORKER_RESTARTS, "Worker restarts after a failed forward pass or load, by device and model");
    describe_counter!(
        REFUSALS,
        "Requests or images refused before inference, by reason (gate_timeout, gate_full, queue_full, admission, memory, not_ready, no_worker, queue_timeout, rate_limit)"
    );
    describe_counter!(DROPPED, "Queued items dropped before inference because the client went away, by model");
    describe_gauge!(INFLIGHT_IMAGES, "Images admitted and not yet answered");
    describe_gauge!(
        INFLIGHT_BYTES,
        Unit::Bytes,
        "Estimated bytes of the work admitted and not yet answered (limit: limits.max_inflight_bytes)"
    );
    describe_gauge!(
        GATE_ACTIVE,
        "Requests of an endpoint read and worked on now (at most admission.max_active_requests), by endpoint"
    );
    describe_gauge!(
        GATE_WAITING,
        "Requests of an endpoint waiting for a slot, bodies unread (at most admission.max_waiting_requests), by endpoint"
    );
    describe_counter!(
        PARTIAL,
        "Images answered without a part whose model had no live worker or failed (e.g. object without the detector's boxes), by endpoint, mode and model"
    );
    describe_gauge!(BROKER_UP, "1 while this process reaches the Redis broker (api and worker roles)");
    describe_histogram!(
        BROKER_ROUND_TRIP,
        Unit::Seconds,
        "API: from a job put on its stage's stream to its answer read back, by stage"
    );
    describe_counter!(
        BROKER_PAYLOAD_BYTES,
        Unit::Bytes,
        "API: bytes put on the broker per job's data field (a model input as f16 or u8, or an uploaded file), by stage"
    );
    describe_counter!(
        BROKER_JOBS,
        "Worker: jobs taken from the broker, by stage and outcome (done, failed, skipped_deadline, skipped_cancelled, unreadable)"
    );
    describe_counter!(
        BROKER_REDELIVERIES,
        "Worker: jobs taken back from a worker that stopped answering (XAUTOCLAIM) and put on their stream again, by stage"
    );
    describe_counter!(
        BROKER_DEAD_LETTERS,
        "Worker: jobs moved to the dead-letter stream (failed alone, or delivered max_deliveries times), by stage"
    );
    describe_counter!(
        BROKER_DUPLICATES,
        "API: answers dropped because their job was already answered (redelivery, expiry)"
    );
    describe_counter!(BROKER_ERRORS, "Redis commands that failed or timed out, by operation");
    describe_gauge!(
        BROKER_STREAM_LENGTH,
        "Jobs on a stage's stream: waiting plus being worked on (sampled by the API; the KEDA streamLength metric)"
    );
    describe_gauge!(BROKER_STREAM_PENDING, "Jobs delivered to a worker and not yet acknowledged, by stage");
    describe_gauge!(BROKER_STREAM_LAG, "Jobs on a stage's stream not yet delivered to any worker, by stage");
    describe_gauge!(
        BROKER_LIVE_WORKERS,
        "Workers with a live model on a stage, from their heartbeats (sampled by the API)"
    );
}

/// Installs the Prometheus recorder once per process and returns its handle.
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(STAGE_DURATION.into()), LATENCY_BUCKETS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(REQUEST_DURATION.into()), LATENCY_BUCKETS))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), BATCH_BUCKETS))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(OIP_REQUEST_DURATION.into()), LATENCY_BUCKETS))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(BROKER_ROUND_TRIP.into()), LATENCY_BUCKETS))
                .expect("static bucket lists are non-empty. This is a bug.")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder can only be present in tests that installed their own.
            if metrics::set_global_recorder(recorder).is_ok() {
                describe();
            }
            handle
        })
        .clone()
}

/// utime + stime of a /proc `stat` line, in seconds.
fn stat_cpu_seconds(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// CPU seconds (user + system) of this process, from /proc/self/stat.
pub fn process_cpu_seconds() -> Option<f64> {
    stat_cpu_seconds(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// The process's resident memory (`VmRSS` of /proc/self/status).
pub fn process_resident_bytes() -> Option<u64> {
    resident_bytes(&std::fs::read_to_string("/proc/self/status").ok()?)
}

fn resident_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// CPU seconds of the threads named with `INFERENCE_THREAD_PREFIXES`.
pub fn inference_cpu_seconds() -> Option<f64> {
    let mut total = 0.0;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if INFERENCE_THREAD_PREFIXES.iter().any(|p| comm.starts_with(p)) {
            total += std::fs::read_to_string(task.path().join("stat"))
                .ok()
                .and_then(|s| stat_cpu_seconds(&s))
                .unwrap_or(0.0);
        }
    }
    Some(total)
}

/// Names the calling thread (Linux), so its CPU time can be attributed.
pub fn name_current_thread(name: &str) {
    let _ = std::fs::write("/proc/thread-self/comm", name);
}

/// Sizes (`pipeline.cpu_threads`) and names the CPU backend's rayon pool threads `gb-rayon-N`.
/// Must run before the first forward pass; later calls (another server in the same test process)
/// change nothing.
pub fn name_rayon_pool(threads: usize) {
    // 0: rayon's default, one per core.
    let _ =
        rayon::ThreadPoolBuilder::new().num_threads(threads).thread_name(|i| format!("gb-rayon-{i}")).build_global();
}

/// Forward-pass intervals of one worker over the last `BUSY_WINDOW`.
#[derive(Debug)]
pub struct BusyMeter {
    created: Instant,
    intervals: VecDeque<(Instant, Instant)>,
    running_since: Option<Instant>,
}

pub type SharedBusyMeter = Arc<Mutex<BusyMeter>>;

impl BusyMeter {
    pub fn new(now: Instant) -> Self {
        Self { created: now, intervals: VecDeque::new(), running_since: None }
    }

    pub fn begin(&mut self, now: Instant) {
        self.running_since = Some(now);
    }

    pub fn end(&mut self, now: Instant) {
        if let Some(start) = self.running_since.take() {
            self.intervals.push_back((start, now));
        }
        while self.intervals.front().is_some_and(|&(_, e)| e + BUSY_WINDOW < now) {
            self.intervals.pop_front();
        }
    }

    pub fn is_running(&self) -> bool {
        self.running_since.is_some()
    }

    /// When the current busy interval began, if the worker is busy.
    pub fn running_since(&self) -> Option<Instant> {
        self.running_since
    }

    /// Busy share of the window ending at `now` (or of the meter's lifetime, if shorter).
    pub fn ratio(&self, now: Instant) -> f64 {
        let from = now.checked_sub(BUSY_WINDOW).map_or(self.created, |t| t.max(self.created));
        let span = now.saturating_duration_since(from).as_secs_f64();
        if span <= 0.0 {
            return 0.0;
        }
        let running = self.running_since.map(|s| (s, now));
        let busy: f64 = self
            .intervals
            .iter()
            .copied()
            .chain(running)
            .map(|(s, e)| e.min(now).saturating_duration_since(s.max(from)).as_secs_f64())
            // A fold from +0.0: `sum()` of no floats is -0.0, which would print as "-0".
            .fold(0.0, |a, b| a + b);
        (busy / span).min(1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_ratio_over_the_window() {
        let t0 = Instant::now();
        let mut m = BusyMeter::new(t0);
        let s = Duration::from_secs;
        m.begin(t0);
        m.end(t0 + s(1));
        assert!((m.ratio(t0 + s(2)) - 0.5).abs() < 1e-9);
        m.begin(t0 + s(2));
        // An unfinished forward pass counts up to now.
        assert!((m.ratio(t0 + s(4)) - 0.75).abs() < 1e-9);
        m.end(t0 + s(4));
        // After the window has moved past, only the recent part counts: [10, 20] holds nothing.
        assert_eq!(m.ratio(t0 + s(20)), 0.0);
        assert!(m.ratio(t0 + s(20)).is_sign_positive(), "an idle worker reads 0, not -0");
        assert!((m.ratio(t0 + s(12)) - 0.2).abs() < 1e-9);
    }

    #[test]
    fn cpu_time_and_resident_memory_are_readable() {
        assert!(process_cpu_seconds().is_some());
        assert!(process_resident_bytes().is_some_and(|b| b > 1 << 20));
        assert_eq!(resident_bytes("Name:\tx\nVmRSS:\t  2048 kB\nThreads: 3\n"), Some(2 << 20));
    }
}

/// Exports every counter and gauge at zero from the start, so dashboards and alerts see the series
/// before the first event (a restart or a refusal may never happen).
pub fn register_zero(workers: &[(String, String)]) {
    for reason in ["queue_full", "admission", "memory", "not_ready", "queue_timeout", "rate_limit"] {
        metrics::counter!(REFUSALS, "reason" => reason).increment(0);
    }
    metrics::gauge!(INFLIGHT_IMAGES).increment(0.0);
    metrics::gauge!(INFLIGHT_BYTES).increment(0.0);
    for (model, device) in workers {
        metrics::counter!(WORKER_RESTARTS, "model" => model.clone(), "device" => device.clone()).increment(0);
        metrics::counter!(DROPPED, "model" => model.clone()).increment(0);
        metrics::gauge!(QUEUE_SIZE, "model" => model.clone()).increment(0.0);
    }
}

/// A served model's queue bound and autoscaling target, constant for the process.
pub fn register_model(model: &str, queue_capacity: usize, queue_target: usize) {
    metrics::gauge!(QUEUE_CAPACITY, "model" => model.to_string()).set(queue_capacity as f64);
    metrics::gauge!(QUEUE_TARGET, "model" => model.to_string()).set(queue_target as f64);
}

pub fn counter_restart(model: &str, device: &str) {
    metrics::counter!(WORKER_RESTARTS, "model" => model.to_string(), "device" => device.to_string()).increment(1);
}

/// A worker's state at scrape time.
#[derive(Debug, Clone)]
pub struct WorkerSample {
    pub model: String,
    pub device: String,
    pub alive: bool,
    pub busy_seconds_total: f64,
    pub busy_ratio: f64,
}

/// The Prometheus text: the recorder's metrics, then the values computed at scrape time (per
/// device and model: live workers, busy ratio and busy seconds; the process CPU time).
pub fn render(handle: &PrometheusHandle, workers: &[WorkerSample]) -> String {
    use std::collections::BTreeMap;
    use std::fmt::Write;
    handle.run_upkeep();
    let mut out = handle.render();
    #[derive(Default)]
    struct Group {
        workers: usize,
        live: usize,
        busy_seconds: f64,
        ratio_sum: f64,
    }
    let mut groups: BTreeMap<(&str, &str), Group> = BTreeMap::new();
    for w in workers {
        let g = groups.entry((&w.device, &w.model)).or_default();
        g.workers += 1;
        g.live += usize::from(w.alive);
        g.busy_seconds += w.busy_seconds_total;
        g.ratio_sum += w.busy_ratio;
    }
    let mut section = |name: &str, kind: &str, help: &str, value: fn(&Group) -> f64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for ((device, model), g) in &groups {
            let _ = writeln!(out, "{name}{{device=\"{device}\",model=\"{model}\"}} {}", value(g));
        }
    };
    section(WORKERS_LIVE, "gauge", "Workers able to take batches, by device and model", |g| g.live as f64);
    section(
        WORKER_BUSY_RATIO,
        "gauge",
        "Share of the last 10 s the workers spent in forward passes (mean over instances), by device and model",
        |g| g.ratio_sum / g.workers as f64,
    );
    section(WORKER_BUSY_SECONDS, "counter", "Seconds the workers spent in forward passes, by device and model", |g| {
        g.busy_seconds
    });
    if let Some(cpu) = process_cpu_seconds() {
        let _ = writeln!(
            out,
            "# HELP {PROCESS_CPU} CPU time (user + system) used by the server process\n# TYPE {PROCESS_CPU} counter\n{PROCESS_CPU} {cpu}"
        );
    }
    if let Some(rss) = process_resident_bytes() {
        let _ = writeln!(
            out,
            "# HELP {RESIDENT} Resident memory of the server process (VmRSS)\n# TYPE {RESIDENT} gauge\n{RESIDENT} {rss}"
        );
    }
    if let Some(cpu) = inference_cpu_seconds() {
        let _ = writeln!(
            out,
            "# HELP {INFERENCE_CPU} CPU time of the inference threads (workers and the CPU backend's pool); the rest of the process CPU is serving overhead\n# TYPE {INFERENCE_CPU} counter\n{INFERENCE_CPU} {cpu}"
        );
    }
    out
}
