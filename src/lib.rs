//! gpubackend: a computer-vision inference server speaking the Vision API.
//!
//! One request's path: `http` (auth, multipart, limits) → `actors::Decoder` → `actors::Preprocessor`
//! → `actors::Batcher` (fixed-latency window) → `actors::InferenceWorker` (burn model on a device,
//! supervised) → `pipelines::classify` → Vision envelope.
//!
//! - `config`: TOML topology + CLI overrides, validated with errors naming the field.
//! - `error`: request errors → Vision envelope and HTTP status, in one place.
//! - `http`: routes, request parsing and answers, the admission gates and the server start-up.
//! - `infer`: the inference layer under HTTP and `--role worker`: batchers, supervised workers and
//!   placement, and the multi-network cascades (faces, text, plates, super-resolution, detector).
//! - `pipelines`: pure stage logic (decode, preprocess, batching window, labels, the MTCNN cascade,
//!   face alignment).
//! - `actors`: thin actix actors owning threads, mailboxes and supervision.
//! - `models`: burn model definitions, devices (probed: the adapter, or what is missing) and weight loading.
//! - `oip`: the Open Inference Protocol (KServe v2 / Triton) without its wire: models, metadata,
//!   one request through the same batchers; `http::oip` and `http::grpc` are its HTTP and gRPC.
//! - `broker`: the distributed mode's Redis Streams broker (`--role api` / `--role worker`).
//! - `store`: the person store (face embeddings per space), embedded SQLite.
//! - `metrics`: every exported metric, described in one place.
//! - `client`: a minimal HTTP/1.1 client for tests and the benchmark (no extra dependencies).
//! - `verify`: every network on a device against the committed onnxruntime fixtures (`gpubackend verify`).
//! - `deploy`: the per-model Kubernetes files generated from the model list (`gpubackend deploy k8s`).
//! - `bench`: the benchmarks (`gpubackend bench …`).
//! - `alloc`: glibc malloc's arenas capped and freed memory returned when idle.

pub mod actors;
pub mod alloc;
pub mod bench;
pub mod broker;
pub mod client;
pub mod config;
pub mod deploy;
pub mod error;
pub mod eval;
pub mod http;
pub mod infer;
pub mod metrics;
pub mod oip;
/// The networks and the engine beneath them (the `gpubackend-nets` crate).
pub use gpubackend_nets as models;
pub mod pipelines;
pub mod store;
pub mod verify;
