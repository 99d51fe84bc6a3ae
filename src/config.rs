//! Configuration: a TOML file for topology (models, devices, batching, limits), the CLI for the
//! pod-level overrides (`--gpu N --models a,b`), validation with errors that name the field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The configuration the server runs with when no file is given (`config/default.toml`).
pub const EMBEDDED_DEFAULT: &str = include_str!("../config/default.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config {origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("invalid config: `{field}`: {message}")]
    Invalid { field: String, message: String },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field: field.into(), message: message.into() }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub pipeline: PipelineConfig,
    #[serde(default)]
    pub supervisor: SupervisorConfig,
    /// Models by name; `objects/detect` mode `object` is served by the model named in `modes`.
    pub models: BTreeMap<String, ModelConfig>,
    /// Which models each device serves (the lecture's "gpu #0: [face]" table); devices parsed as
    /// the file is read (an unknown one is refused naming `placement[i].device`).
    #[serde(deserialize_with = "placements")]
    pub placement: Vec<Placement>,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub fault_injection: FaultInjection,
    /// The Redis Streams broker between `--role api` and `--role worker` (unused by `--role all`).
    #[serde(default)]
    pub broker: BrokerConfig,
    /// Requests let into each Vision endpoint at once, and how the rest wait (overload).
    #[serde(default)]
    pub admission: AdmissionConfig,
    /// A model repository: users' own networks, one directory each, served on the Open
    /// Inference Protocol (`/v2`, gRPC) without code (README, "Triton / KServe clients").
    #[serde(default)]
    pub repository: RepositoryConfig,
}

/// `[repository]`: where users' own models are read from at start-up.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RepositoryConfig {
    /// A directory of `<name>/config.toml` + the model file (None: no repository).
    pub path: Option<PathBuf>,
}

/// What a repository model's `config.toml` adds to a `[models.<name>]` section: where its
/// workers run.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RepositoryPlacement {
    /// Devices its workers run on (default: the first `[[placement]]`'s device).
    #[serde(default)]
    devices: Option<Vec<String>>,
    #[serde(default = "default_instances")]
    instances: usize,
}

/// The model files a repository model may hold, by the name looked for when `weights` is left out.
const REPOSITORY_FILES: [&str; 3] = ["model.onnx", "model.param", "model.json"];

/// The gate in front of each Vision endpoint (README, "Faults and overload"): at most
/// `max_active_requests` requests of an endpoint are read and worked on at once; the others wait
/// before their body is read, first come first served while the wait is short and newest first
/// once it is not (so the answered keep a short latency under overload), and are refused (503,
/// `Retry-After`) after `max_wait_ms` or when `max_waiting_requests` wait.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdmissionConfig {
    /// Requests of one endpoint read and worked on at once (body, decode, models, answer).
    pub max_active_requests: usize,
    /// Requests of one endpoint waiting for a slot (their bodies unread); more are refused at once.
    pub max_waiting_requests: usize,
    /// Longest wait for a slot; then the request is refused.
    pub max_wait_ms: u64,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self { max_active_requests: 32, max_waiting_requests: 1024, max_wait_ms: 1000 }
    }
}

/// What one process does (`--role`): `all` serves the API and runs the models in one process (the
/// default); `api` serves HTTP and puts model inputs on the broker; `worker` runs the models placed
/// on its devices on inputs taken from the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Role {
    #[default]
    All,
    Api,
    Worker,
}

impl Role {
    pub fn serves_api(self) -> bool {
        self != Self::Worker
    }

    pub fn runs_models(self) -> bool {
        self != Self::Api
    }
}

/// How model inputs travel on the broker: f16 (2 bytes per value, relative error ≤ 2⁻¹¹) or u8
/// (1 byte per value, each input scaled over its own min..max range: error ≤ range / 510).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum PayloadEncoding {
    #[default]
    F16,
    U8,
}

/// The Redis Streams broker (README, "Distributed mode").
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// `redis://host:port/db`.
    pub url: String,
    /// Key prefix of every stream and key the broker uses (several deployments can share a Redis).
    pub prefix: String,
    pub payload: PayloadEncoding,
    /// A job delivered to a worker and not acknowledged for this long (its worker died) is taken
    /// back and put on its stream again (XAUTOCLAIM). Live workers refresh their jobs' idle time
    /// every `health_interval_ms`, so a slow batch is not redelivered. A stage that has had no
    /// live worker for this long has its outstanding jobs answered as unavailable by the api.
    pub visibility_timeout_ms: u64,
    /// Deliveries of a job (first + redeliveries after a worker died) before it is dead-lettered
    /// and answered with per-file status 1.
    pub max_deliveries: u32,
    /// Longest wait of one blocking stream read (XREADGROUP / XREAD BLOCK).
    pub block_ms: u64,
    /// Timeout of every other Redis command and of connecting; past it the broker is down.
    pub command_timeout_ms: u64,
    /// How often the API checks the broker (PING), samples stream lengths and expires jobs.
    pub health_interval_ms: u64,
    /// A consumer of a stream's group that has held no job and read nothing for this long (a
    /// worker that is gone: every start is a new consumer) is deleted from the group by the live
    /// workers (XGROUP DELCONSUMER, only while it holds no job). A worker that drains on SIGTERM
    /// deletes its own at once.
    pub forget_consumers_after_ms: u64,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379/".into(),
            prefix: "gpubackend".into(),
            payload: PayloadEncoding::F16,
            visibility_timeout_ms: 5_000,
            max_deliveries: 3,
            block_ms: 1_000,
            command_timeout_ms: 1_000,
            health_interval_ms: 500,
            forget_consumers_after_ms: 600_000,
        }
    }
}

/// Where the person store keeps persons: one SQLite file (`<dir>/persons.sqlite3`, relative to
/// the working directory; the default) or a PostgreSQL database shared by every replica.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub backend: StoreBackend,
    pub dir: PathBuf,
    /// libpq connection string (`host=… port=… user=… dbname=…`) or URL, for `postgres`.
    pub postgres_url: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    #[default]
    Sqlite,
    Postgres,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self { backend: StoreBackend::Sqlite, dir: PathBuf::from("data"), postgres_url: None }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    /// HTTP worker threads (actix-web workers).
    pub http_workers: usize,
    /// Backend used when the CLI names a GPU by index (`--gpu N` → `<gpu_backend>:N`).
    pub gpu_backend: String,
    /// Seconds to wait for in-flight requests on shutdown.
    pub shutdown_timeout_s: u64,
    /// A second listener (same host) for `/metrics`, `/health/*` and `/admin*`, which the API
    /// port then no longer serves (and the admin port serves nothing else): the API port can face
    /// users while probes and Prometheus use this one. 0 = any free port. None: one port for all.
    pub admin_port: Option<u16>,
    /// glibc malloc arenas at most (0: glibc's default, 8 per core); see `alloc`.
    pub malloc_arenas: usize,
    /// How often freed memory is returned to the OS while no image is in flight (0: never).
    pub trim_interval_ms: u64,
    /// The Open Inference Protocol's gRPC listener (same host; Triton's port is 8001; 0 = any
    /// free port). None: no gRPC.
    pub grpc_port: Option<u16>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8080,
            http_workers: 2,
            gpu_backend: "wgpu".into(),
            shutdown_timeout_s: 30,
            admin_port: None,
            malloc_arenas: 2,
            trim_interval_ms: 5000,
            grpc_port: Some(8001),
        }
    }
}

/// Per-token request rate limits (`[rate_limit]`): a token bucket per `oauth_token`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Sustained requests per second per token; 0 = no limit.
    pub requests_per_s: f64,
    /// Requests a token may make at once after being idle.
    pub burst: f64,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self { requests_per_s: 0.0, burst: 20.0 }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Accepted `oauth_token` values. Empty together with `tokens_file` = accept everything.
    pub tokens: Vec<String>,
    /// A file with one token per line (`#` comments allowed), read at start-up.
    pub tokens_file: Option<PathBuf>,
    /// Accepted `oauth_provider` values.
    pub providers: Vec<String>,
}

/// Request limits; the defaults are the Vision API's documented ones.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_images: usize,
    pub max_image_bytes: usize,
    pub max_request_bytes: usize,
    pub min_width: u32,
    pub min_height: u32,
    pub max_width: u32,
    pub max_height: u32,
    /// Images admitted into the pipeline at once over all requests; beyond it requests are refused.
    pub max_inflight_images: usize,
    /// Bytes of work admitted at once over all requests and endpoints (each image: its upload
    /// plus its raster and model inputs, estimated from the header's size); beyond it requests
    /// are refused (503). Bounds the memory work in flight holds, whatever its mix of sizes.
    pub max_inflight_bytes: u64,
    /// Size of the `meta` form field.
    pub max_meta_bytes: usize,
    /// Longest time a request's body may take to arrive once its endpoint let it in (it holds a
    /// slot of the endpoint's gate meanwhile); then 400.
    pub upload_timeout_ms: u64,
}

impl Limits {
    /// The byte and count limits of one upload.
    pub fn upload(&self) -> gpubackend_formats::multipart::UploadLimits {
        gpubackend_formats::multipart::UploadLimits {
            max_images: self.max_images,
            max_image_bytes: self.max_image_bytes,
            max_request_bytes: self.max_request_bytes,
            max_meta_bytes: self.max_meta_bytes,
        }
    }

    /// The pixel limits of one image.
    pub fn image(&self) -> crate::pipelines::decode::ImageLimits {
        crate::pipelines::decode::ImageLimits {
            min_width: self.min_width,
            min_height: self.min_height,
            max_width: self.max_width,
            max_height: self.max_height,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_images: 100,
            max_image_bytes: 15 * 1024 * 1024,
            max_request_bytes: 30 * 1024 * 1024,
            min_width: 5,
            min_height: 5,
            max_width: 3840,
            max_height: 2160,
            max_inflight_images: 1024,
            max_inflight_bytes: 1 << 30,
            max_meta_bytes: 64 * 1024,
            upload_timeout_ms: 30_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Decoder threads (SyncArbiter pool).
    pub decoders: usize,
    /// Preprocessor threads (SyncArbiter pool).
    pub preprocessors: usize,
    /// Threads of the CPU device's forward passes (the rayon pool burn flex and the fused kernels
    /// run on); 0 = one per core.
    pub cpu_threads: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self { decoders: 2, preprocessors: 1, cpu_threads: 0 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisorConfig {
    /// First restart delay of a failed worker; doubles up to `max_backoff_ms`.
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        Self { initial_backoff_ms: 100, max_backoff_ms: 5_000 }
    }
}

/// The keys every model's section takes (the rest are its family's: [`ModelConfig::settings`]).
pub const MODEL_KEYS: [&str; 11] = [
    "architecture",
    "weights",
    "labels",
    "modes",
    "max_batch",
    "max_delay_ms",
    "queue_capacity",
    "max_queue_wait_ms",
    "threshold",
    "top_k",
    "queue_target",
];

#[derive(Debug, Clone, Deserialize)]
pub struct ModelConfig {
    /// The model's family (`mobilenet_v2`, `face`, `text`, `plates`, `centernet`, `realesrgan`,
    /// `onnx`): the inference layer's registry (`crate::infer::FAMILIES`) knows what each needs.
    pub architecture: String,
    /// Weights file (PyTorch state dict), relative paths from the working directory; for `face`,
    /// the directory holding MTCNN's `pnet.pt`, `rnet.pt`, `onet.pt`.
    pub weights: PathBuf,
    /// Class → Vision label table (`models/<model>/labels.json`); classifiers only.
    #[serde(default)]
    pub labels: Option<PathBuf>,
    /// Vision API modes this model answers (`object`); classifiers only.
    #[serde(default)]
    pub modes: Vec<String>,
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Longest wait of the oldest queued item before a partial batch is sent.
    #[serde(default = "default_max_delay_ms")]
    pub max_delay_ms: u64,
    /// Items waiting for a worker; beyond it requests are refused.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// Longest an image may wait for a worker (e.g. while none is alive) before it is answered
    /// with a temporary error (per-file status 2).
    #[serde(default = "default_max_queue_wait_ms")]
    pub max_queue_wait_ms: u64,
    /// Labels below this probability are not returned.
    #[serde(default = "default_threshold")]
    pub threshold: f32,
    /// At most this many labels per image.
    #[serde(default = "default_top_k")]
    pub top_k: usize,
    /// Autoscaling target: queued items per replica that the HPA / KEDA keep (exported as
    /// `gpubackend_queue_target`). Default: four full batches, at most `queue_capacity`.
    #[serde(default)]
    pub queue_target: Option<usize>,
    /// The family's own settings (`[models.<name>.faces]`, `.text`, `.io`, `recognizer` …): each
    /// family reads and checks its keys (`crate::infer::check`) and refuses any other.
    #[serde(flatten)]
    pub settings: toml::Table,
}

fn default_max_batch() -> usize {
    16
}
fn default_max_delay_ms() -> u64 {
    50
}
fn default_queue_capacity() -> usize {
    512
}
fn default_max_queue_wait_ms() -> u64 {
    30_000
}
fn default_threshold() -> f32 {
    0.1
}
fn default_top_k() -> usize {
    5
}

impl ModelConfig {
    pub fn queue_target(&self) -> usize {
        self.queue_target.unwrap_or(4 * self.max_batch).min(self.queue_capacity)
    }

    pub fn max_delay(&self) -> Duration {
        Duration::from_millis(self.max_delay_ms)
    }

    pub fn max_queue_wait(&self) -> Duration {
        Duration::from_millis(self.max_queue_wait_ms)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    /// `cpu`, `wgpu`, `wgpu:N`, `cuda:N` (cuda needs the `cuda` build feature).
    pub device: crate::models::DeviceSpec,
    pub models: Vec<String>,
    /// Workers per model on this device (the lecture's rule: 1).
    pub instances: usize,
    /// Batches a worker holds at once: 2 stages, uploads and launches the next batch while the
    /// device runs the current one; 1 runs them one after another. Default: 1 on `cpu`, 2 on GPUs.
    pub depth: Option<usize>,
}

/// `[[placement]]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlacementToml {
    device: String,
    models: Vec<String>,
    #[serde(default = "default_instances")]
    instances: usize,
    #[serde(default)]
    depth: Option<usize>,
}

impl Placement {
    pub fn depth(&self) -> usize {
        self.depth.unwrap_or(if self.device == crate::models::DeviceSpec::Cpu { 1 } else { 2 })
    }
}

/// `[[placement]]`, each device parsed once, where the file is read.
fn placements<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Placement>, D::Error> {
    Vec::<PlacementToml>::deserialize(d)?
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let device = crate::models::DeviceSpec::parse(&p.device)
                .map_err(|e| serde::de::Error::custom(format!("placement[{i}].device: {e}")))?;
            Ok(Placement { device, models: p.models, instances: p.instances, depth: p.depth })
        })
        .collect()
}

fn default_instances() -> usize {
    1
}

/// Test hook: a worker panics in its forward pass on any input whose upload contains `panic_marker`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultInjection {
    pub panic_marker: Option<String>,
}

impl Config {
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { origin: origin.to_string(), message: e.to_string() })?;
        config.validate()?;
        Ok(config)
    }

    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        match path {
            None => Self::from_toml(EMBEDDED_DEFAULT, "(embedded default)"),
            Some(p) => {
                let text =
                    std::fs::read_to_string(p).map_err(|source| ConfigError::Read { path: p.to_path_buf(), source })?;
                Self::from_toml(&text, &p.display().to_string())
            }
        }
    }

    /// Reads the model repository at `dir` (`repository.path`): each `<dir>/<name>/config.toml`
    /// is a `[models.<name>]` section (architecture `onnx` unless it says; `weights` and `labels`
    /// relative to its directory; `weights` left out: the one `model.onnx` / `model.param` /
    /// `model.json` there) plus `devices` and `instances`, placed like a model of the config.
    /// A directory without a config.toml is skipped; anything else wrong names the file.
    pub fn add_repository(&mut self, dir: &Path) -> Result<Vec<String>, ConfigError> {
        let field = "repository.path";
        let entries = std::fs::read_dir(dir).map_err(|e| invalid(field, format!("{}: {e}", dir.display())))?;
        let mut dirs: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_dir()).collect();
        dirs.sort();
        let mut added = Vec::new();
        for model_dir in dirs {
            let file = model_dir.join("config.toml");
            if !file.is_file() {
                continue;
            }
            let name = model_dir.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
            let origin = file.display().to_string();
            let bad = |message: String| ConfigError::Parse { origin: origin.clone(), message };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                return Err(bad(format!("the model's directory name `{name}` must be letters, digits, `_` or `-`")));
            }
            if self.models.contains_key(&name) {
                return Err(bad(format!("model `{name}` is already configured (models.{name})")));
            }
            let text =
                std::fs::read_to_string(&file).map_err(|source| ConfigError::Read { path: file.clone(), source })?;
            let mut table: toml::Table = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
            let mut placement_keys = toml::Table::new();
            for key in ["devices", "instances"] {
                if let Some(v) = table.remove(key) {
                    placement_keys.insert(key.into(), v);
                }
            }
            let placement: RepositoryPlacement =
                placement_keys.try_into().map_err(|e: toml::de::Error| bad(e.to_string()))?;
            table.entry("architecture").or_insert_with(|| "onnx".into());
            if !table.contains_key("weights") {
                let found: Vec<_> = REPOSITORY_FILES.iter().filter(|f| model_dir.join(f).is_file()).collect();
                let [one] = found.as_slice() else {
                    return Err(bad(format!(
                        "`weights` left out: the directory must hold exactly one of {} (it holds {})",
                        REPOSITORY_FILES.join(", "),
                        found.len()
                    )));
                };
                table.insert("weights".into(), one.to_string().into());
            }
            for key in ["weights", "labels"] {
                if let Some(p) = table.get(key).and_then(|v| v.as_str()) {
                    table.insert(key.into(), model_dir.join(p).display().to_string().into());
                }
            }
            let mc: ModelConfig = table.try_into().map_err(|e: toml::de::Error| bad(e.to_string()))?;
            let devices = match placement.devices {
                Some(d) => d
                    .iter()
                    .map(|d| crate::models::DeviceSpec::parse(d).map_err(|e| bad(format!("devices: {e}"))))
                    .collect::<Result<Vec<_>, _>>()?,
                None => {
                    vec![self.placement.first().map(|p| p.device.clone()).unwrap_or(crate::models::DeviceSpec::Cpu)]
                }
            };
            for device in devices {
                match self.placement.iter_mut().find(|p| p.device == device && p.instances == placement.instances) {
                    Some(p) => p.models.push(name.clone()),
                    None => self.placement.push(Placement {
                        device,
                        models: vec![name.clone()],
                        instances: placement.instances,
                        depth: None,
                    }),
                }
            }
            self.models.insert(name.clone(), mc);
            added.push(name);
        }
        self.validate()?;
        Ok(added)
    }

    /// The pod form of placement: this process serves `models` on GPU `gpu` only.
    pub fn override_placement(&mut self, gpu: Option<u32>, models: Option<Vec<String>>) -> Result<(), ConfigError> {
        if gpu.is_none() && models.is_none() {
            return Ok(());
        }
        let device = match gpu {
            Some(n) => crate::models::DeviceSpec::parse(&format!("{}:{n}", self.server.gpu_backend))
                .map_err(|e| invalid("server.gpu_backend", e.to_string()))?,
            None => self.placement.first().map(|p| p.device.clone()).unwrap_or(crate::models::DeviceSpec::Cpu),
        };
        let models = models.unwrap_or_else(|| self.placement.iter().flat_map(|p| p.models.clone()).collect());
        self.placement = vec![Placement { device, models, instances: 1, depth: None }];
        self.validate()
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        for (field, v) in [
            ("limits.max_images", l.max_images),
            ("limits.max_image_bytes", l.max_image_bytes),
            ("limits.max_request_bytes", l.max_request_bytes),
            ("limits.max_inflight_images", l.max_inflight_images),
            ("limits.max_meta_bytes", l.max_meta_bytes),
            ("pipeline.decoders", self.pipeline.decoders),
            ("pipeline.preprocessors", self.pipeline.preprocessors),
            ("server.http_workers", self.server.http_workers),
        ] {
            if v == 0 {
                return Err(invalid(field, "must be at least 1"));
            }
        }
        if l.min_width == 0 || l.min_height == 0 {
            return Err(invalid("limits.min_width", "minimum dimensions must be at least 1"));
        }
        if l.max_width < l.min_width || l.max_height < l.min_height {
            return Err(invalid("limits.max_width", "maximum dimensions must not be below the minimum"));
        }
        if l.max_image_bytes > l.max_request_bytes {
            return Err(invalid("limits.max_image_bytes", "must not exceed limits.max_request_bytes"));
        }
        if l.max_inflight_bytes < l.max_image_bytes as u64 {
            return Err(invalid("limits.max_inflight_bytes", "must be at least limits.max_image_bytes"));
        }
        if self.supervisor.initial_backoff_ms > self.supervisor.max_backoff_ms {
            return Err(invalid("supervisor.initial_backoff_ms", "must not exceed supervisor.max_backoff_ms"));
        }
        if self.store.backend == StoreBackend::Postgres && self.store.postgres_url.as_deref().is_none_or(str::is_empty)
        {
            return Err(invalid("store.postgres_url", "is required with store.backend = \"postgres\""));
        }
        let b = &self.broker;
        if !b.url.starts_with("redis://") && !b.url.starts_with("unix://") {
            return Err(invalid("broker.url", "must be a redis:// or unix:// URL"));
        }
        if b.prefix.is_empty() || b.prefix.contains(char::is_whitespace) {
            return Err(invalid("broker.prefix", "must be non-empty, without spaces"));
        }
        for (field, v) in [
            ("broker.visibility_timeout_ms", b.visibility_timeout_ms),
            ("broker.block_ms", b.block_ms),
            ("broker.command_timeout_ms", b.command_timeout_ms),
            ("broker.health_interval_ms", b.health_interval_ms),
            ("broker.max_deliveries", u64::from(b.max_deliveries)),
        ] {
            if v == 0 {
                return Err(invalid(field, "must be at least 1"));
            }
        }
        if b.visibility_timeout_ms < 3 * b.health_interval_ms {
            return Err(invalid("broker.visibility_timeout_ms", "must be at least 3 × broker.health_interval_ms"));
        }
        // A dead worker's job is back on the stream at most visibility + one keeper tick after it
        // was last refreshed: that must leave the job at least half of its wait to be run again.
        let redelivered_by = b.visibility_timeout_ms + b.health_interval_ms;
        if let Some((name, m)) = self.models.iter().find(|(_, m)| redelivered_by > m.max_queue_wait_ms / 2) {
            return Err(invalid(
                "broker.visibility_timeout_ms",
                format!(
                    "a dead worker's jobs are back on the stream after broker.visibility_timeout_ms + \
                     broker.health_interval_ms = {redelivered_by} ms, which must be at most half of \
                     models.{name}.max_queue_wait_ms ({} ms) so they are run again before their deadline",
                    m.max_queue_wait_ms
                ),
            ));
        }
        if b.forget_consumers_after_ms < b.visibility_timeout_ms.max(b.block_ms) {
            return Err(invalid(
                "broker.forget_consumers_after_ms",
                "must be at least broker.visibility_timeout_ms and broker.block_ms",
            ));
        }
        let a = &self.admission;
        for (field, v) in [
            ("admission.max_active_requests", a.max_active_requests as u64),
            ("admission.max_wait_ms", a.max_wait_ms),
            ("limits.upload_timeout_ms", self.limits.upload_timeout_ms),
        ] {
            if v == 0 {
                return Err(invalid(field, "must be at least 1"));
            }
        }
        if self.server.admin_port.is_some_and(|p| p != 0 && p == self.server.port) {
            return Err(invalid("server.admin_port", "must differ from server.port"));
        }
        if let Some(g) = self.server.grpc_port.filter(|&g| g != 0)
            && (g == self.server.port || self.server.admin_port == Some(g))
        {
            return Err(invalid("server.grpc_port", "must differ from server.port and server.admin_port"));
        }
        let r = &self.rate_limit;
        if !(r.requests_per_s >= 0.0 && r.requests_per_s.is_finite()) {
            return Err(invalid("rate_limit.requests_per_s", "must be 0 (no limit) or more"));
        }
        if r.requests_per_s > 0.0 && !(r.burst >= 1.0 && r.burst.is_finite()) {
            return Err(invalid("rate_limit.burst", "must be at least 1"));
        }
        if !["wgpu", "cuda"].contains(&self.server.gpu_backend.as_str()) {
            return Err(invalid("server.gpu_backend", "must be `wgpu` or `cuda`"));
        }
        if self.models.is_empty() {
            return Err(invalid("models", "at least one model must be configured"));
        }
        let mut modes = BTreeMap::new();
        for (name, m) in &self.models {
            let f = |k: &str| format!("models.{name}.{k}");
            if m.max_batch == 0 {
                return Err(invalid(f("max_batch"), "must be at least 1"));
            }
            if m.max_queue_wait_ms <= m.max_delay_ms {
                return Err(invalid(f("max_queue_wait_ms"), "must exceed max_delay_ms"));
            }
            if m.queue_capacity == 0 {
                return Err(invalid(f("queue_capacity"), "must be at least 1"));
            }
            if m.queue_target.is_some_and(|t| t == 0 || t > m.queue_capacity) {
                return Err(invalid(f("queue_target"), "must be within 1..=queue_capacity"));
            }
            if m.queue_capacity < m.max_batch {
                tracing::warn!(model = %name, "queue_capacity < max_batch: batches can never fill, only the deadline sends them");
            }
            if !(0.0..=1.0).contains(&m.threshold) {
                return Err(invalid(f("threshold"), "must be within 0..=1"));
            }
            if m.top_k == 0 {
                return Err(invalid(f("top_k"), "must be at least 1"));
            }
            for mode in &m.modes {
                if let Some(other) = modes.insert(mode.clone(), name.clone()) {
                    return Err(invalid(f("modes"), format!("mode `{mode}` is already served by model `{other}`")));
                }
            }
        }
        if self.placement.is_empty() {
            return Err(invalid("placement", "at least one device must serve a model"));
        }
        for (i, p) in self.placement.iter().enumerate() {
            if p.instances == 0 {
                return Err(invalid(format!("placement[{i}].instances"), "must be at least 1"));
            }
            if !(1..=4).contains(&p.depth()) {
                return Err(invalid(format!("placement[{i}].depth"), "must be between 1 and 4"));
            }
            for m in &p.models {
                if !self.models.contains_key(m) {
                    return Err(invalid(format!("placement[{i}].models"), format!("unknown model `{m}`")));
                }
            }
        }
        for name in self.models.keys() {
            if !self.placement.iter().any(|p| p.models.contains(name)) {
                tracing::warn!(model = %name, "model is configured but placed on no device; its modes will not be served");
            }
        }
        Ok(())
    }

    /// Models that have at least one worker in this process.
    pub fn placed_models(&self) -> Vec<String> {
        let mut v: Vec<String> = self.placement.iter().flat_map(|p| p.models.clone()).collect();
        v.sort();
        v.dedup();
        v
    }

    /// All tokens from `auth.tokens` and `auth.tokens_file`.
    pub fn load_tokens(&self) -> Result<Vec<String>, ConfigError> {
        let mut tokens = self.auth.tokens.clone();
        if let Some(path) = &self.auth.tokens_file {
            let text =
                std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
            tokens
                .extend(text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from));
        }
        Ok(tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::load(None).unwrap();
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.placement[0].device, crate::models::DeviceSpec::Cpu);
    }

    #[test]
    fn every_shipped_config_parses() {
        for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/config")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Config::load(Some(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            }
        }
    }

    #[test]
    fn model_keys_are_what_every_model_section_takes() {
        let values = ["\"x\"", "\"w\"", "\"l\"", "[]", "1", "1", "1", "2", "0.1", "1", "1"];
        let text: String = MODEL_KEYS.iter().zip(values).map(|(k, v)| format!("{k} = {v}\n")).collect();
        let m: ModelConfig = toml::from_str(&format!("{text}[faces]\nmin_score = 0.5\n")).unwrap();
        assert_eq!(m.settings.keys().collect::<Vec<_>>(), ["faces"]);
        assert_eq!((m.max_queue_wait_ms, m.queue_target), (2, Some(1)));
    }

    #[test]
    fn unknown_field_is_named() {
        let text = EMBEDDED_DEFAULT.replace("[limits]", "[limits]\nmax_imagez = 3");
        let err = Config::from_toml(&text, "t").unwrap_err().to_string();
        assert!(err.contains("max_imagez"), "{err}");
    }

    #[test]
    fn a_model_repository_adds_models_placed_like_the_configs() {
        let dir = std::env::temp_dir().join(format!("gpubackend-repo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("mine")).unwrap();
        std::fs::create_dir_all(dir.join("notes")).unwrap(); // no config.toml: skipped
        std::fs::write(dir.join("mine/model.onnx"), b"").unwrap();
        std::fs::write(dir.join("mine/config.toml"), "max_batch = 3\ninstances = 2\n[io]\nclasses = 2\n").unwrap();
        let mut c = Config::from_toml(EMBEDDED_DEFAULT, "t").unwrap();
        assert_eq!(c.add_repository(&dir).unwrap(), ["mine"]);
        let m = &c.models["mine"];
        assert_eq!((m.architecture.as_str(), m.max_batch), ("onnx", 3));
        assert_eq!(m.weights, dir.join("mine/model.onnx"));
        let p = c.placement.iter().find(|p| p.models.contains(&"mine".to_string())).unwrap();
        assert_eq!((p.device.to_string().as_str(), p.instances), ("cpu", 2));
        // Read twice: the name is taken.
        let e = c.add_repository(&dir).unwrap_err().to_string();
        assert!(e.contains("mine/config.toml") && e.contains("already configured"), "{e}");
        // No model file and no `weights`: the file is named.
        std::fs::remove_file(dir.join("mine/model.onnx")).unwrap();
        let e = Config::from_toml(EMBEDDED_DEFAULT, "t").unwrap().add_repository(&dir).unwrap_err().to_string();
        assert!(e.contains("exactly one of model.onnx"), "{e}");
        let e = Config::from_toml(EMBEDDED_DEFAULT, "t").unwrap().add_repository(&dir.join("nope")).unwrap_err();
        assert!(e.to_string().contains("repository.path"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn invalid_values_name_the_field() {
        let text =
            EMBEDDED_DEFAULT.replace("modes = [\"object\"]\nmax_batch = 4", "modes = [\"object\"]\nmax_batch = 0");
        let err = Config::from_toml(&text, "t").unwrap_err().to_string();
        assert!(err.contains("models.mobilenet_v2.max_batch"), "{err}");
        let text = EMBEDDED_DEFAULT.replace("device = \"cpu\"", "device = \"tpu\"");
        let err = Config::from_toml(&text, "t").unwrap_err().to_string();
        assert!(err.contains("placement[0].device"), "{err}");
        let text = EMBEDDED_DEFAULT.replace("dir = \"data\"", "dir = \"data\"\nbackend = \"postgres\"");
        let err = Config::from_toml(&text, "t").unwrap_err().to_string();
        assert!(err.contains("store.postgres_url"), "{err}");
        let text = EMBEDDED_DEFAULT.replace("dir = \"data\"", "dir = \"data\"\nbackend = \"mysql\"");
        let err = Config::from_toml(&text, "t").unwrap_err().to_string();
        assert!(err.contains("mysql"), "{err}");
        // A family's own settings are checked by the inference layer's registry
        // (infer::tests::a_familys_settings_are_checked_naming_the_field).
        let text = format!("{EMBEDDED_DEFAULT}\n[broker]\nforget_consumers_after_ms = 1000\n");
        let err = Config::from_toml(&text, "t").unwrap_err().to_string();
        assert!(err.contains("broker.forget_consumers_after_ms"), "{err}");
        let text = EMBEDDED_DEFAULT.replace("max_active_requests = 32", "max_active_requests = 0");
        let err = Config::from_toml(&text, "t").unwrap_err().to_string();
        assert!(err.contains("admission.max_active_requests"), "{err}");
    }

    #[test]
    fn a_dead_workers_jobs_must_be_redelivered_well_before_their_deadline() {
        // The shipped defaults: back on the stream after 5.5 s, half of 30 s is 15 s.
        let c = Config::load(None).unwrap();
        assert_eq!((c.broker.visibility_timeout_ms, c.broker.health_interval_ms), (5_000, 500));
        // The old default (30 s, reclaimed exactly when the 30 s deadline passed) is refused,
        // naming both fields.
        let text = format!(
            "{EMBEDDED_DEFAULT}\n[broker]\nvisibility_timeout_ms = 30000\nforget_consumers_after_ms = 600000\n"
        );
        let err = Config::from_toml(&text, "t").unwrap_err().to_string();
        assert!(err.contains("broker.visibility_timeout_ms"), "{err}");
        assert!(err.contains("max_queue_wait_ms"), "{err}");
        // A model whose wait is too short for the broker's timings, by name.
        let text = EMBEDDED_DEFAULT.replace(
            "queue_target = 16\nmax_queue_wait_ms = 30000\nthreshold = 0.1",
            "queue_target = 16\nmax_queue_wait_ms = 10000\nthreshold = 0.1",
        );
        let err = Config::from_toml(&text, "t").unwrap_err().to_string();
        assert!(err.contains("models.mobilenet_v2.max_queue_wait_ms"), "{err}");
    }

    #[test]
    fn queue_target_defaults_to_four_batches_within_the_capacity() {
        let c = Config::load(None).unwrap();
        assert_eq!(c.models["mobilenet_v2"].queue_target(), 16);
        let mut m = c.models["mobilenet_v2"].clone();
        m.queue_target = None;
        assert_eq!(m.queue_target(), 16);
        m.queue_capacity = 10;
        assert_eq!(m.queue_target(), 10);
        let text = EMBEDDED_DEFAULT.replacen("queue_target = 16", "queue_target = 513", 1);
        let err = Config::from_toml(&text, "t").unwrap_err().to_string();
        assert!(err.contains("models.mobilenet_v2.queue_target"), "{err}");
    }

    #[test]
    fn cli_overrides_placement_like_the_lectures_pod() {
        let mut c = Config::load(None).unwrap();
        c.override_placement(Some(1), Some(vec!["mobilenet_v2".into()])).unwrap();
        assert_eq!(
            c.placement,
            vec![Placement {
                device: crate::models::DeviceSpec::Wgpu(Some(1)),
                models: vec!["mobilenet_v2".into()],
                instances: 1,
                depth: None
            }]
        );
        assert!(c.override_placement(None, Some(vec!["nope".into()])).is_err());
    }
}
