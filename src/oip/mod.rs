//! The Open Inference Protocol (KServe v2, Triton's HTTP/gRPC API), protocol-neutral: which
//! models it serves, their metadata and configuration, and one inference request run through the
//! same batchers and workers as the Vision API (so both batch together). The HTTP routes
//! (`http::oip`) and the gRPC service (`http::grpc`) only translate their wire formats to
//! [`Request`] and back.
//!
//! Models: every network stage served here under its stage name, as a tensor model (FP32
//! `[-1, 3, H, W]` → FP32 `[-1, K]`: the network's input as the Vision pipeline prepares it, its
//! output per item as the stage's workers give it); and for each classifier and the COCO detector
//! an image model `<name>_image` whose input is encoded images (BYTES), decoded and prepared here
//! with the server's limits.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
#[rustfmt::skip]
pub mod inference;
pub mod tensor;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Semaphore;

use crate::actors::{Decode, Preprocess};
use crate::config::{Config, Limits};
use crate::error::ApiError;
use crate::infer::stages::{StageError, infer, prepare};
use crate::infer::{Inference, ServedModel};
use crate::metrics;
use crate::pipelines::classify::LabelMap;
use crate::pipelines::preprocess::ModelInput;
pub use tensor::{DataType, InputData, InputTensor, OutputData, OutputTensor};

/// The one version each model has.
pub const VERSION: &str = "1";
/// The extensions served (server metadata): what the clients look for before using them.
pub const EXTENSIONS: [&str; 4] = ["binary_tensor_data", "classification", "model_configuration", "model_repository"];
/// Largest height or width of an any-size network's input item.
const MAX_SIDE: i64 = 4096;

/// Why a request failed, as the protocol has it (HTTP status, gRPC code).
#[derive(Debug, Clone, PartialEq)]
pub struct OipError {
    pub code: Code,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// 400 / INVALID_ARGUMENT.
    Invalid,
    /// 404 / NOT_FOUND.
    NotFound,
    /// 503 / UNAVAILABLE: no live worker, a full queue, the in-flight budgets.
    Unavailable,
    /// 401 / UNAUTHENTICATED: no token or a wrong one.
    Unauthenticated,
    /// 429 / RESOURCE_EXHAUSTED: the token's rate limit, retry after the seconds given.
    RateLimited(u64),
    /// 500 / INTERNAL.
    Internal,
}

impl OipError {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self { code: Code::Invalid, message: message.into() }
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self { code: Code::NotFound, message: message.into() }
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self { code: Code::Unavailable, message: message.into() }
    }

    /// A short label for metrics.
    pub fn outcome(&self) -> &'static str {
        match self.code {
            Code::Invalid => "bad_request",
            Code::NotFound => "not_found",
            Code::Unavailable => "overloaded",
            Code::Unauthenticated => "forbidden",
            Code::RateLimited(_) => "rate_limited",
            Code::Internal => "error",
        }
    }
}

impl From<ApiError> for OipError {
    fn from(e: ApiError) -> Self {
        let code = match &e {
            ApiError::BadRequest(_) => Code::Invalid,
            ApiError::Forbidden(_) => Code::Unauthenticated,
            ApiError::NotFound(_) => Code::NotFound,
            ApiError::Overloaded(_) => Code::Unavailable,
            ApiError::RateLimited { retry_after_s, .. } => Code::RateLimited(*retry_after_s),
            ApiError::Internal(_) | ApiError::ClientGone(_) => Code::Internal,
        };
        Self { code, message: e.to_string() }
    }
}

impl From<StageError> for OipError {
    fn from(e: StageError) -> Self {
        match e.per_file() {
            Ok((crate::error::FileStatus::Permanent, message)) => Self { code: Code::Internal, message },
            Ok((_, message)) => Self::unavailable(message),
            Err(request) => request.into(),
        }
    }
}

/// A tensor a model takes or gives: per item, without the batch dimension (-1: any size).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: DataType,
    pub dims: Vec<i64>,
}

/// What a model does with its input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// The network's input tensor, item by item through its batcher; `size` the fixed height
    /// and width, `any` which of them may be any.
    Tensor { size: [usize; 2], any: [bool; 2] },
    /// Encoded images → the classifier's preparation → its batcher → its output row.
    ImageClassifier,
    /// One encoded image → the COCO detector → boxes, scores, classes.
    ImageDetector,
}

/// A model served on the protocol.
pub struct OipModel {
    pub name: String,
    pub kind: Kind,
    pub stage: Arc<ServedModel>,
    /// Items per request at most (0: the model takes no batch dimension).
    pub max_batch: usize,
    pub input: TensorSpec,
    pub outputs: Vec<TensorSpec>,
    /// The label table (classification extension) and the file it came from.
    pub labels: Option<(LabelMap, String)>,
    /// Where it came from: `gpubackend` (built in), or the user's repository.
    pub platform: &'static str,
    /// Its batcher's window (`models.<name>.max_delay_ms`).
    pub max_delay_us: u64,
}

impl OipModel {
    /// The outputs as described now: a fixed-size network's output length is known once a
    /// worker has run its warm-up pass (-1 until then, and for any-size networks).
    pub fn outputs(&self) -> Vec<TensorSpec> {
        let mut outputs = self.outputs.clone();
        if let Kind::Tensor { any: [false, false], .. } = self.kind {
            let len = self.stage.workers.iter().map(|w| w.output_len.load(std::sync::atomic::Ordering::Relaxed)).max();
            if let Some(len) = len.filter(|l| *l > 0) {
                outputs[0].dims = vec![len as i64];
            }
        }
        outputs
    }

    pub fn ready(&self) -> bool {
        self.stage.has_live_worker()
    }

    /// Model metadata: shapes with the batch dimension (-1) when the model batches.
    pub fn metadata(&self) -> serde_json::Value {
        let batched = |t: &TensorSpec| {
            let shape: Vec<i64> =
                (self.max_batch > 0).then_some(-1).into_iter().chain(t.dims.iter().copied()).collect();
            serde_json::json!({"name": t.name, "datatype": t.datatype.name(), "shape": shape})
        };
        serde_json::json!({
            "name": self.name,
            "versions": [VERSION],
            "platform": self.platform,
            "inputs": [batched(&self.input)],
            "outputs": self.outputs().iter().map(batched).collect::<Vec<_>>(),
        })
    }

    /// Triton's model configuration (model_config.proto as JSON): dims without the batch
    /// dimension; scheduler keys only when set (perf_analyzer reads their presence).
    pub fn config(&self) -> serde_json::Value {
        let label_file = self.labels.as_ref().map(|(_, f)| f.clone());
        let outputs: Vec<_> = self
            .outputs()
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let mut o = serde_json::json!({"name": t.name, "data_type": t.datatype.config_name(), "dims": t.dims});
                if let (0, Some(f)) = (i, &label_file) {
                    o["label_filename"] = f.clone().into();
                }
                o
            })
            .collect();
        let format = match self.kind {
            Kind::Tensor { .. } => "FORMAT_NCHW",
            _ => "FORMAT_NONE",
        };
        let input = serde_json::json!([{
            "name": self.input.name,
            "data_type": self.input.datatype.config_name(),
            "format": format,
            "dims": self.input.dims,
        }]);
        let mut config = serde_json::json!({
            "name": self.name,
            "platform": self.platform,
            "backend": "gpubackend",
            "max_batch_size": self.max_batch,
            "input": input,
            "output": outputs,
            "instance_group": self.instance_groups().iter().map(|g| match g.gpu {
                None => serde_json::json!({"name": g.name, "kind": "KIND_CPU", "count": g.count}),
                Some(gpu) => serde_json::json!({"name": g.name, "kind": "KIND_GPU", "count": g.count, "gpus": [gpu]}),
            }).collect::<Vec<_>>(),
        });
        if self.max_batch > 0 {
            config["dynamic_batching"] = serde_json::json!({
                "max_queue_delay_microseconds": self.max_delay_us,
            });
        }
        config
    }

    /// `instance_group`: the stage's workers, by device.
    pub fn instance_groups(&self) -> Vec<InstanceGroup> {
        let mut groups: BTreeMap<String, usize> = BTreeMap::new();
        for w in &self.stage.workers {
            *groups.entry(w.device.clone()).or_default() += 1;
        }
        groups
            .into_iter()
            .map(|(device, count)| {
                // A GPU device names its index last (`wgpu:0`, `cuda:1`).
                let gpu =
                    (device != "cpu").then(|| device.rsplit(':').next().and_then(|n| n.parse().ok()).unwrap_or(0));
                InstanceGroup { name: format!("{}_{device}", self.name), count, gpu }
            })
            .collect()
    }

    /// A tensor's shape as the metadata gives it: the batch dimension (-1) first when the model
    /// batches.
    pub fn shape(&self, t: &TensorSpec) -> Vec<i64> {
        (self.max_batch > 0).then_some(-1).into_iter().chain(t.dims.iter().copied()).collect()
    }
}

/// A model's workers on one device (Triton's `instance_group`).
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceGroup {
    pub name: String,
    pub count: usize,
    /// The GPU's index; None on the CPU (KIND_CPU).
    pub gpu: Option<i32>,
}

/// A model in the repository index.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct IndexEntry {
    pub name: String,
    pub version: &'static str,
    /// `READY` or `UNAVAILABLE`.
    pub state: &'static str,
    /// Why it is unavailable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One output a request asks for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestedOutput {
    pub name: String,
    /// HTTP: this output as binary data (None: the request's default).
    pub binary: Option<bool>,
    /// The classification extension: the top `k` classes instead of the values (0: the values).
    pub class_count: usize,
}

/// One inference request, as read off either wire.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Request {
    pub model: String,
    pub version: String,
    pub id: String,
    pub inputs: Vec<InputTensor>,
    /// Empty: every output.
    pub outputs: Vec<RequestedOutput>,
    /// HTTP: outputs binary unless an output says otherwise (`binary_data_output`).
    pub binary_output: bool,
}

/// Its answer: the outputs asked for, each with whether it goes as binary data (HTTP).
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub model_name: String,
    pub model_version: String,
    pub id: String,
    pub outputs: Vec<(OutputTensor, bool)>,
}

/// The protocol's side of the server: the models and what a request is admitted against (the
/// same in-flight budgets as the Vision API).
pub struct Oip {
    pub infer: Arc<Inference>,
    pub models: BTreeMap<String, Arc<OipModel>>,
    pub admission: Arc<Semaphore>,
    pub work_budget: Arc<Semaphore>,
    pub limits: Arc<Limits>,
    /// Models read from the model repository (`repository.path`).
    pub repository: Vec<String>,
}

/// The protocol a request came by (metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Grpc,
}

impl Protocol {
    pub fn label(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Grpc => "grpc",
        }
    }
}

impl Oip {
    /// The models of every stage `infer` serves (its config names the stages' networks).
    pub fn new(config: &Config, infer: Arc<Inference>, admission: Arc<Semaphore>, work_budget: Arc<Semaphore>) -> Self {
        let mut models = BTreeMap::new();
        let repository: Vec<String> = match &config.repository.path {
            Some(dir) => {
                config.models.iter().filter(|(_, mc)| mc.weights.starts_with(dir)).map(|(m, _)| m.clone()).collect()
            }
            None => Vec::new(),
        };
        for (name, mc) in &config.models {
            let names = crate::infer::objects::tensor_names(mc);
            let from_repository = repository.contains(name);
            let max_delay_us = mc.max_delay().as_micros() as u64;
            for stage_def in crate::infer::stages(name, mc) {
                let Some(stage) = infer.models.iter().find(|s| s.name == stage_def.name).cloned() else { continue };
                let spec = &stage_def.spec;
                let [h, w] = spec.input_size();
                let dim = |v: usize, any: bool| if any { -1 } else { v as i64 };
                let labels = stage
                    .labels
                    .clone()
                    .zip(mc.labels.as_ref())
                    .map(|(l, p)| (l, p.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default()));
                let tensor = OipModel {
                    name: stage.name.clone(),
                    kind: Kind::Tensor { size: [h, w], any: spec.any_size },
                    stage: stage.clone(),
                    max_batch: stage_def.max_batch,
                    input: TensorSpec {
                        name: names.input.clone(),
                        datatype: DataType::Fp32,
                        dims: vec![3, dim(h, spec.any_size[0]), dim(w, spec.any_size[1])],
                    },
                    outputs: vec![TensorSpec { name: names.output.clone(), datatype: DataType::Fp32, dims: vec![-1] }],
                    labels: labels.clone(),
                    platform: if from_repository { "repository" } else { "gpubackend" },
                    max_delay_us,
                };
                models.insert(tensor.name.clone(), Arc::new(tensor));
                // The image models: a classifier's (labels, no detector) and the detector's.
                let image = TensorSpec { name: "image".into(), datatype: DataType::Bytes, dims: vec![1] };
                let image_model = if stage.detector.is_some() {
                    Some(OipModel {
                        name: format!("{}_image", stage.name),
                        kind: Kind::ImageDetector,
                        stage: stage.clone(),
                        max_batch: 0,
                        input: image,
                        outputs: vec![
                            TensorSpec { name: "boxes".into(), datatype: DataType::Fp32, dims: vec![-1, 4] },
                            TensorSpec { name: "scores".into(), datatype: DataType::Fp32, dims: vec![-1] },
                            TensorSpec { name: "classes".into(), datatype: DataType::Bytes, dims: vec![-1] },
                        ],
                        labels: labels.clone(),
                        platform: "gpubackend",
                        max_delay_us,
                    })
                } else if stage.labels.is_some() {
                    let classes = stage.labels.as_ref().map_or(-1, |l| l.num_classes() as i64);
                    Some(OipModel {
                        name: format!("{}_image", stage.name),
                        kind: Kind::ImageClassifier,
                        stage: stage.clone(),
                        max_batch: stage_def.max_batch,
                        input: image,
                        outputs: vec![TensorSpec {
                            name: names.output.clone(),
                            datatype: DataType::Fp32,
                            dims: vec![classes],
                        }],
                        labels,
                        platform: if from_repository { "repository" } else { "gpubackend" },
                        max_delay_us,
                    })
                } else {
                    None
                };
                if let Some(m) = image_model.filter(|m| !config.models.contains_key(&m.name)) {
                    models.insert(m.name.clone(), Arc::new(m));
                }
            }
        }
        Self { infer, models, admission, work_budget, limits: Arc::new(config.limits.clone()), repository }
    }

    /// The model and version a request names.
    pub fn model(&self, name: &str, version: &str) -> Result<&Arc<OipModel>, OipError> {
        let model = self.models.get(name).ok_or_else(|| {
            OipError::not_found(format!("unknown model `{name}` (GET /v2/repository/index lists the models served)"))
        })?;
        if !(version.is_empty() || version == VERSION) {
            return Err(OipError::not_found(format!(
                "model `{name}` has no version `{version}` (its one version is {VERSION})"
            )));
        }
        Ok(model)
    }

    /// Ready: every model has a live worker (a server without models is ready).
    pub fn ready(&self) -> bool {
        self.models.values().all(|m| m.ready())
    }

    /// Server metadata.
    pub fn metadata(&self) -> serde_json::Value {
        serde_json::json!({"name": "gpubackend", "version": env!("CARGO_PKG_VERSION"), "extensions": EXTENSIONS})
    }

    /// The repository index: every model served, its state and (not ready) why.
    pub fn index(&self, ready_only: bool) -> Vec<IndexEntry> {
        self.models
            .values()
            .filter(|m| !ready_only || m.ready())
            .map(|m| {
                let ready = m.ready();
                IndexEntry {
                    name: m.name.clone(),
                    version: VERSION,
                    state: if ready { "READY" } else { "UNAVAILABLE" },
                    reason: (!ready).then(|| m.stage.not_live_reason()),
                }
            })
            .collect()
    }

    /// Counts a request refused before it could be run (its body unreadable).
    pub fn count_refused(&self, protocol: Protocol, model: &str, e: &OipError) {
        let model = if self.models.contains_key(model) { model.to_string() } else { "unknown".into() };
        ::metrics::counter!(metrics::OIP_REQUESTS, "protocol" => protocol.label(), "model" => model, "outcome" => e.outcome())
            .increment(1);
    }

    /// Runs one request, recording its outcome and duration by protocol and model.
    pub async fn infer(&self, request: Request, protocol: Protocol, body_bytes: usize) -> Result<Response, OipError> {
        let start = Instant::now();
        let model_label =
            if self.models.contains_key(&request.model) { request.model.clone() } else { "unknown".into() };
        let result = self.run(request, body_bytes).await;
        let outcome = result.as_ref().map_or_else(OipError::outcome, |_| "ok");
        ::metrics::counter!(metrics::OIP_REQUESTS, "protocol" => protocol.label(), "model" => model_label.clone(), "outcome" => outcome)
            .increment(1);
        ::metrics::histogram!(metrics::OIP_REQUEST_DURATION, "protocol" => protocol.label(), "model" => model_label)
            .record(start.elapsed().as_secs_f64());
        result
    }

    async fn run(&self, request: Request, body_bytes: usize) -> Result<Response, OipError> {
        let model = self.model(&request.model, &request.version)?.clone();
        let Checked { data, n, size } = self.check_input(&model, request.inputs)?;
        let wanted = requested_outputs(&model, &request.outputs, request.binary_output)?;
        if !model.stage.has_live_worker() {
            ::metrics::counter!(metrics::REFUSALS, "reason" => "not_ready").increment(1);
            return Err(OipError::unavailable(model.stage.not_live_reason()));
        }
        // The body, and the inputs made of it.
        let _admitted = self.admit(n, body_bytes.saturating_mul(2))?;
        let outputs = match (model.kind, data) {
            (Kind::Tensor { any, .. }, InputData::Fp32(data)) => tensor_outputs(&model, data, n, size, any).await?,
            (Kind::ImageClassifier, InputData::Bytes(images)) => self.classify_images(&model, images).await?,
            (Kind::ImageDetector, InputData::Bytes(images)) => self.detect_image(&model, images).await?,
            _ => {
                return Err(OipError {
                    code: Code::Internal,
                    message: "input kind not checked. This is a bug.".into(),
                });
            }
        };
        let outputs = wanted
            .into_iter()
            .map(|(i, binary, class_count)| {
                let t = &outputs[i];
                let labels = model.labels.as_ref().map(|(l, _)| l);
                let t = if class_count > 0 { classification(labels, t, class_count)? } else { t.clone() };
                Ok((t, binary))
            })
            .collect::<Result<_, OipError>>()?;
        Ok(Response { model_name: model.name.clone(), model_version: VERSION.into(), id: request.id, outputs })
    }

    /// The request's one input checked against the model's: name, datatype, shape (the batch
    /// within `max_batch_size`, each fixed dimension the model's); its data and item count.
    fn check_input(&self, model: &OipModel, inputs: Vec<InputTensor>) -> Result<Checked, OipError> {
        let want = &model.input;
        let names: Vec<_> = inputs.iter().map(|i| i.name.clone()).collect();
        let [input]: [InputTensor; 1] = inputs.try_into().map_err(|_| {
            OipError::invalid(format!(
                "model `{}` takes one input, `{}`; the request has {names:?}",
                model.name, want.name
            ))
        })?;
        if input.name != want.name {
            return Err(OipError::invalid(format!(
                "unexpected input `{}` for model `{}`: its input is `{}`",
                input.name, model.name, want.name
            )));
        }
        if input.datatype != want.datatype {
            return Err(OipError::invalid(format!(
                "input `{}`: datatype {}, model `{}` takes {}",
                input.name,
                input.datatype.name(),
                model.name,
                want.datatype.name()
            )));
        }
        let expected: Vec<i64> =
            (model.max_batch > 0).then_some(-1).into_iter().chain(want.dims.iter().copied()).collect();
        let shape_error = || {
            OipError::invalid(format!(
                "input `{}`: shape {:?}, model `{}` takes {expected:?} (-1: any size; the batch at most {})",
                input.name, input.shape, model.name, model.max_batch
            ))
        };
        if input.shape.len() != expected.len() {
            return Err(shape_error());
        }
        let item = if model.max_batch > 0 { &input.shape[1..] } else { &input.shape[..] };
        for (got, want) in item.iter().zip(&want.dims) {
            let ok = if *want < 0 { (1..=MAX_SIDE).contains(got) } else { got == want };
            if !ok {
                return Err(shape_error());
            }
        }
        let n = if model.max_batch > 0 { input.shape[0] } else { 1 };
        if n < 1 {
            return Err(shape_error());
        }
        let n = n as usize;
        if model.max_batch > 0 && n > model.max_batch {
            return Err(OipError::invalid(format!(
                "input `{}`: batch of {n}, model `{}` takes at most {} (max_batch_size)",
                input.name, model.name, model.max_batch
            )));
        }
        let size = match model.kind {
            Kind::Tensor { .. } => [item[1] as usize, item[2] as usize],
            _ => [0, 0],
        };
        if let InputData::Bytes(images) = &input.data {
            if images.len() > self.limits.max_images {
                return Err(OipError::invalid(format!(
                    "input `{}`: {} images, at most {} per request (limits.max_images)",
                    input.name,
                    images.len(),
                    self.limits.max_images
                )));
            }
            if let Some((i, b)) = images.iter().enumerate().find(|(_, b)| b.len() > self.limits.max_image_bytes) {
                return Err(OipError::invalid(format!(
                    "input `{}` element {i}: {} bytes, at most {} per image (limits.max_image_bytes)",
                    input.name,
                    b.len(),
                    self.limits.max_image_bytes
                )));
            }
        }
        Ok(Checked { data: input.data, n, size })
    }

    /// The request's images and work bytes against the server's in-flight budgets.
    fn admit(&self, images: usize, bytes: usize) -> Result<[tokio::sync::OwnedSemaphorePermit; 2], OipError> {
        let permit =
            self.admission.clone().try_acquire_many_owned(images.min(u32::MAX as usize) as u32).map_err(|_| {
                ::metrics::counter!(metrics::REFUSALS, "reason" => "admission").increment(1);
                OipError::unavailable(format!(
                    "server overloaded: more than {} images in flight, retry later",
                    self.limits.max_inflight_images
                ))
            })?;
        let kib = (bytes.div_ceil(1024)).min(Semaphore::MAX_PERMITS).min(u32::MAX as usize) as u32;
        let bytes_permit = self.work_budget.clone().try_acquire_many_owned(kib).map_err(|_| {
            ::metrics::counter!(metrics::REFUSALS, "reason" => "memory").increment(1);
            OipError::unavailable(format!(
                "server overloaded: more than {} bytes of work in flight, retry later",
                self.limits.max_inflight_bytes
            ))
        })?;
        Ok([permit, bytes_permit])
    }

    /// One encoded image decoded within the server's limits.
    async fn decode(
        &self,
        i: usize,
        bytes: bytes::Bytes,
    ) -> Result<Arc<crate::pipelines::decode::DecodedImage>, OipError> {
        let start = Instant::now();
        let decoded = self.infer.decoder.send(Decode { bytes, limits: self.infer.limits.clone() }).await;
        ::metrics::histogram!(metrics::STAGE_DURATION, "stage" => "decode", "model" => "oip")
            .record(start.elapsed().as_secs_f64());
        match decoded {
            Ok(Ok(image)) => Ok(Arc::new(image)),
            Ok(Err(e)) => Err(OipError::invalid(format!("input `image` element {i}: {e}"))),
            Err(e) => Err(OipError::unavailable(format!("decoder unavailable: {e}"))),
        }
    }

    /// Images → the classifier's preparation → its batcher (all at once, so they batch).
    async fn classify_images(&self, model: &OipModel, images: Vec<Vec<u8>>) -> Result<Vec<OutputTensor>, OipError> {
        let n = images.len();
        let prepared = futures_util::future::join_all(images.into_iter().enumerate().map(|(i, b)| async move {
            let image = self.decode(i, b.into()).await?;
            let prep = model.stage.prep;
            prepare(&self.infer, Preprocess { image, prep }).await.map_err(OipError::from)
        }))
        .await;
        let inputs = prepared.into_iter().collect::<Result<Vec<ModelInput>, _>>()?;
        let rows: Vec<Vec<f32>> = infer(&model.stage, inputs).await?.into_iter().map(|p| p.output).collect();
        Ok(vec![stack(&model.outputs[0].name, rows, n, model.max_batch > 0)?])
    }

    /// One image → the COCO detector (threshold, NMS) → boxes (x1, y1, x2, y2 in the image's
    /// pixels), scores and class names, best first.
    async fn detect_image(&self, model: &OipModel, images: Vec<Vec<u8>>) -> Result<Vec<OutputTensor>, OipError> {
        let bytes: bytes::Bytes = images.into_iter().next().unwrap_or_default().into();
        let image = self.decode(0, bytes.clone()).await?;
        let mut found =
            crate::infer::objects::detector_boxes(&self.infer, &model.stage, image, &bytes, false).await?.to_vec();
        found.sort_by(|a, b| b.score.total_cmp(&a.score));
        let k = found.len() as i64;
        let name = |class: usize| {
            model.labels.as_ref().and_then(|(l, _)| l.name(class)).map_or_else(|| class.to_string(), str::to_string)
        };
        Ok(vec![
            OutputTensor {
                name: "boxes".into(),
                shape: vec![k, 4],
                data: OutputData::Fp32(found.iter().flat_map(|d| d.bbox).collect()),
            },
            OutputTensor {
                name: "scores".into(),
                shape: vec![k],
                data: OutputData::Fp32(found.iter().map(|d| d.score).collect()),
            },
            OutputTensor {
                name: "classes".into(),
                shape: vec![k],
                data: OutputData::Bytes(found.iter().map(|d| name(d.class).into_bytes()).collect()),
            },
        ])
    }
}

/// A request's input, checked.
struct Checked {
    data: InputData,
    /// Items (the batch dimension; 1 for a model without one).
    n: usize,
    /// A tensor model's item height and width.
    size: [usize; 2],
}

/// The outputs a request asks for, as (index among the model's, binary, class count).
fn requested_outputs(
    model: &OipModel,
    asked: &[RequestedOutput],
    binary_default: bool,
) -> Result<Vec<(usize, bool, usize)>, OipError> {
    if asked.is_empty() {
        return Ok((0..model.outputs.len()).map(|i| (i, binary_default, 0)).collect());
    }
    asked
        .iter()
        .map(|o| {
            let i = model.outputs.iter().position(|t| t.name == o.name).ok_or_else(|| {
                let names: Vec<_> = model.outputs.iter().map(|t| t.name.as_str()).collect();
                OipError::invalid(format!(
                    "unexpected output `{}` for model `{}` (its outputs: {})",
                    o.name,
                    model.name,
                    names.join(", ")
                ))
            })?;
            if o.class_count > 0 && model.outputs[i].datatype != DataType::Fp32 {
                return Err(OipError::invalid(format!("output `{}`: classification needs an FP32 output", o.name)));
            }
            Ok((i, o.binary.unwrap_or(binary_default), o.class_count))
        })
        .collect()
}

/// A tensor model's items through its batcher: one input per item (the network's own size, or
/// the item's for an any-size network), the rows stacked.
async fn tensor_outputs(
    model: &OipModel,
    data: Vec<f32>,
    n: usize,
    [h, w]: [usize; 2],
    any: [bool; 2],
) -> Result<Vec<OutputTensor>, OipError> {
    let per = data.len() / n.max(1);
    let sized = any.iter().any(|a| *a);
    let inputs = data
        .chunks_exact(per.max(1))
        .map(|item| if sized { ModelInput::sized(item.to_vec(), h, w) } else { ModelInput::fixed(item.to_vec()) })
        .collect();
    drop(data);
    let rows = infer(&model.stage, inputs).await?.into_iter().map(|p| p.output).collect();
    Ok(vec![stack(&model.outputs[0].name, rows, n, true)?])
}

/// Rows of one length as one tensor (`[n, len]`, or `[len]` without a batch dimension).
fn stack(name: &str, rows: Vec<Vec<f32>>, n: usize, batched: bool) -> Result<OutputTensor, OipError> {
    let len = rows.first().map_or(0, Vec::len);
    if rows.len() != n || rows.iter().any(|r| r.len() != len) {
        return Err(OipError {
            code: Code::Internal,
            message: "the network's outputs differ in length. This is a bug.".into(),
        });
    }
    let shape = if batched { vec![n as i64, len as i64] } else { vec![len as i64] };
    Ok(OutputTensor { name: name.to_string(), shape, data: OutputData::Fp32(rows.concat()) })
}

/// The classification extension: per item, the `k` largest values as `"value:index[:label]"`.
fn classification(labels: Option<&LabelMap>, t: &OutputTensor, k: usize) -> Result<OutputTensor, OipError> {
    let OutputData::Fp32(values) = &t.data else {
        return Err(OipError::invalid(format!("output `{}`: classification needs an FP32 output", t.name)));
    };
    let classes = *t.shape.last().unwrap_or(&0) as usize;
    let k = k.min(classes);
    let mut out = Vec::new();
    for row in values.chunks(classes.max(1)) {
        let mut order: Vec<usize> = (0..row.len()).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        for &i in order.iter().take(k) {
            let mut s = format!("{:.6}:{i}", row[i]);
            if let Some(label) = labels.and_then(|l| l.name(i)) {
                s.push(':');
                s.push_str(label);
            }
            out.push(s.into_bytes());
        }
    }
    let mut shape = t.shape.clone();
    if let Some(last) = shape.last_mut() {
        *last = k as i64;
    }
    Ok(OutputTensor { name: t.name.clone(), shape, data: OutputData::Bytes(out) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_gives_the_top_k_per_item_as_value_index_label() {
        let t = OutputTensor {
            name: "o".into(),
            shape: vec![2, 3],
            data: OutputData::Fp32(vec![0.1, 2.5, -1.0, 3.0, 3.0, 0.0]),
        };
        let c = classification(None, &t, 2).unwrap();
        assert_eq!(c.shape, vec![2, 2]);
        let strings: Vec<String> = match c.data {
            OutputData::Bytes(b) => b.into_iter().map(|s| String::from_utf8(s).unwrap()).collect(),
            other => panic!("{other:?}"),
        };
        // Ties keep the lower index first.
        assert_eq!(strings, ["2.500000:1", "0.100000:0", "3.000000:0", "3.000000:1"]);
        // k beyond the classes gives them all; a BYTES output cannot be classified.
        assert_eq!(classification(None, &t, 10).unwrap().shape, vec![2, 3]);
        let bytes = OutputTensor { name: "b".into(), shape: vec![1], data: OutputData::Bytes(vec![b"x".to_vec()]) };
        assert_eq!(classification(None, &bytes, 1).unwrap_err().code, Code::Invalid);
    }

    #[test]
    fn rows_stack_into_one_tensor_only_when_they_agree() {
        let t = stack("o", vec![vec![1.0, 2.0], vec![3.0, 4.0]], 2, true).unwrap();
        assert_eq!((t.shape, t.data), (vec![2, 2], OutputData::Fp32(vec![1.0, 2.0, 3.0, 4.0])));
        assert_eq!(stack("o", vec![vec![1.0, 2.0]], 1, false).unwrap().shape, vec![2]);
        assert_eq!(stack("o", vec![vec![1.0], vec![1.0, 2.0]], 2, true).unwrap_err().code, Code::Internal);
    }

    #[test]
    fn request_errors_map_to_the_protocols_codes() {
        assert_eq!(OipError::from(ApiError::Overloaded("q".into())).code, Code::Unavailable);
        assert_eq!(OipError::from(ApiError::Forbidden("t".into())).code, Code::Unauthenticated);
        let r = OipError::from(ApiError::RateLimited { message: "r".into(), retry_after_s: 3 });
        assert_eq!((r.code, r.outcome()), (Code::RateLimited(3), "rate_limited"));
        let failed = StageError::Image(crate::actors::InferError::Failed("boom".into()));
        assert_eq!(OipError::from(failed).code, Code::Internal);
        let gone = StageError::Image(crate::actors::InferError::Unavailable { model: "m".into(), waited_ms: 5 });
        assert_eq!(OipError::from(gone).code, Code::Unavailable);
    }
}
