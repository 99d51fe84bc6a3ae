//! The Open Inference Protocol over gRPC: Triton's `inference.GRPCInferenceService` (a
//! wire-compatible superset of KServe's) on tonic, on its own port (`server.grpc_port`) and its
//! own runtime threads, answering from the same `oip::Oip` as `/v2`. Inputs come as
//! `raw_input_contents` or typed `contents`; outputs always go back as `raw_output_contents`
//! (what tritonclient reads). Methods not implemented answer UNIMPLEMENTED.

use std::net::{SocketAddr, TcpListener};
use std::pin::Pin;
use std::sync::Arc;

use actix_web::web::Data;
use futures_util::{Stream, StreamExt};
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status};

use super::AppState;
use crate::oip::inference::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use crate::oip::inference::{self as pb, infer_parameter::ParameterChoice};
use crate::oip::tensor::{self, DataType, InputData, InputTensor};
use crate::oip::{Code, OipError, OipModel, Protocol, Request, RequestedOutput};

/// The gRPC listener, running until `stop` is sent or dropped.
pub struct GrpcServer {
    pub addr: SocketAddr,
    pub stop: tokio::sync::oneshot::Sender<()>,
}

/// Binds `host:port` and serves the service on `threads` runtime threads of its own.
pub fn start(state: Data<AppState>, host: &str, port: u16, threads: usize) -> Result<GrpcServer, super::StartError> {
    let at = format!("{host}:{port}");
    let bind_error = |source| super::StartError::Bind { addr: at.clone(), source };
    let listener = TcpListener::bind(&at).map_err(bind_error)?;
    listener.set_nonblocking(true).map_err(bind_error)?;
    let addr = listener.local_addr().map_err(bind_error)?;
    // Messages as large as the HTTP side takes (tonic's default is 4 MiB).
    let most = state.limits.max_request_bytes;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name("gb-grpc")
        .enable_all()
        .build()
        .map_err(bind_error)?;
    std::thread::Builder::new()
        .name("gb-grpc".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => return tracing::error!(error = %e, "gRPC listener unusable"),
                };
                let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
                let service = GrpcInferenceServiceServer::new(Service { state })
                    .max_decoding_message_size(most)
                    .max_encoding_message_size(usize::MAX);
                let served = tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming_shutdown(incoming, async {
                        let _ = stopped.await;
                    })
                    .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "gRPC server failed");
                }
            })
        })
        .map_err(bind_error)?;
    tracing::info!(%addr, "gRPC (Open Inference Protocol) listening");
    Ok(GrpcServer { addr, stop })
}

struct Service {
    state: Data<AppState>,
}

/// The protocol's error as a gRPC status.
fn status(e: OipError) -> Status {
    match e.code {
        Code::Invalid => Status::invalid_argument(e.message),
        Code::NotFound => Status::not_found(e.message),
        Code::Unavailable => Status::unavailable(e.message),
        Code::Unauthenticated => Status::unauthenticated(e.message),
        Code::RateLimited(_) => Status::resource_exhausted(e.message),
        Code::Internal => Status::internal(e.message),
    }
}

impl Service {
    /// The token in the metadata (`authorization: Bearer …`, or `oauth_token` + `oauth_provider`).
    fn authorize<T>(&self, req: &GrpcRequest<T>) -> Result<(), Status> {
        let get = |k: &str| req.metadata().get(k).and_then(|v| v.to_str().ok()).map(str::to_string);
        let query = super::AuthQuery { oauth_token: get("oauth_token"), oauth_provider: get("oauth_provider") };
        self.state.auth.check_bearer(get("authorization").as_deref(), &query).map_err(|e| status(OipError::from(e)))
    }

    fn model<T>(&self, req: &GrpcRequest<T>, name: &str, version: &str) -> Result<Arc<OipModel>, Status> {
        self.authorize(req)?;
        self.state.oip.model(name, version).cloned().map_err(status)
    }

    /// One ModelInfer, through the same gate as `/v2`'s infer.
    async fn infer(&self, req: pb::ModelInferRequest) -> Result<pb::ModelInferResponse, Status> {
        let _slot = match self.state.oip_gate.enter().await {
            Ok(slot) => slot,
            Err(refusal) => {
                ::metrics::counter!(crate::metrics::REFUSALS, "reason" => refusal.reason()).increment(1);
                return Err(Status::unavailable(refusal.message(self.state.oip_gate.endpoint())));
            }
        };
        let bytes = prost::Message::encoded_len(&req);
        let model = req.model_name.clone();
        let request = read_request(req).map_err(|e| {
            self.state.oip.count_refused(Protocol::Grpc, &model, &e);
            status(e)
        })?;
        let response = self.state.oip.infer(request, Protocol::Grpc, bytes).await.map_err(status)?;
        Ok(write_response(response))
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for Service {
    async fn server_live(
        &self,
        _: GrpcRequest<pb::ServerLiveRequest>,
    ) -> Result<GrpcResponse<pb::ServerLiveResponse>, Status> {
        Ok(GrpcResponse::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: GrpcRequest<pb::ServerReadyRequest>,
    ) -> Result<GrpcResponse<pb::ServerReadyResponse>, Status> {
        Ok(GrpcResponse::new(pb::ServerReadyResponse { ready: self.state.oip.ready() }))
    }

    async fn model_ready(
        &self,
        req: GrpcRequest<pb::ModelReadyRequest>,
    ) -> Result<GrpcResponse<pb::ModelReadyResponse>, Status> {
        let m = self.model(&req, &req.get_ref().name, &req.get_ref().version)?;
        Ok(GrpcResponse::new(pb::ModelReadyResponse { ready: m.ready() }))
    }

    async fn server_metadata(
        &self,
        req: GrpcRequest<pb::ServerMetadataRequest>,
    ) -> Result<GrpcResponse<pb::ServerMetadataResponse>, Status> {
        self.authorize(&req)?;
        Ok(GrpcResponse::new(pb::ServerMetadataResponse {
            name: "gpubackend".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: crate::oip::EXTENSIONS.iter().map(|e| e.to_string()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        req: GrpcRequest<pb::ModelMetadataRequest>,
    ) -> Result<GrpcResponse<pb::ModelMetadataResponse>, Status> {
        let m = self.model(&req, &req.get_ref().name, &req.get_ref().version)?;
        let batched = |t: &crate::oip::TensorSpec| pb::model_metadata_response::TensorMetadata {
            name: t.name.clone(),
            datatype: t.datatype.name().into(),
            shape: m.shape(t),
        };
        Ok(GrpcResponse::new(pb::ModelMetadataResponse {
            name: m.name.clone(),
            versions: vec![crate::oip::VERSION.into()],
            platform: m.platform.into(),
            inputs: vec![batched(&m.input)],
            outputs: m.outputs().iter().map(batched).collect(),
            properties: Default::default(),
        }))
    }

    async fn model_infer(
        &self,
        req: GrpcRequest<pb::ModelInferRequest>,
    ) -> Result<GrpcResponse<pb::ModelInferResponse>, Status> {
        self.authorize(&req)?;
        self.infer(req.into_inner()).await.map(GrpcResponse::new)
    }

    type ModelStreamInferStream = Pin<Box<dyn Stream<Item = Result<pb::ModelStreamInferResponse, Status>> + Send>>;

    /// Each request of the stream answered in order; a failed one answers `error_message` and
    /// the stream goes on (Triton's behaviour).
    async fn model_stream_infer(
        &self,
        req: GrpcRequest<tonic::Streaming<pb::ModelInferRequest>>,
    ) -> Result<GrpcResponse<Self::ModelStreamInferStream>, Status> {
        self.authorize(&req)?;
        let service = Service { state: self.state.clone() };
        let requests = req.into_inner();
        let answers = requests.then(move |r| {
            let service = Service { state: service.state.clone() };
            async move {
                let r = r?;
                Ok(match service.infer(r).await {
                    Ok(answer) => {
                        pb::ModelStreamInferResponse { error_message: String::new(), infer_response: Some(answer) }
                    }
                    Err(e) => {
                        pb::ModelStreamInferResponse { error_message: e.message().to_string(), infer_response: None }
                    }
                })
            }
        });
        Ok(GrpcResponse::new(Box::pin(answers)))
    }

    async fn model_config(
        &self,
        req: GrpcRequest<pb::ModelConfigRequest>,
    ) -> Result<GrpcResponse<pb::ModelConfigResponse>, Status> {
        let m = self.model(&req, &req.get_ref().name, &req.get_ref().version)?;
        Ok(GrpcResponse::new(pb::ModelConfigResponse { config: Some(model_config(&m)) }))
    }

    async fn repository_index(
        &self,
        req: GrpcRequest<pb::RepositoryIndexRequest>,
    ) -> Result<GrpcResponse<pb::RepositoryIndexResponse>, Status> {
        self.authorize(&req)?;
        let models = self
            .state
            .oip
            .index(req.get_ref().ready)
            .into_iter()
            .map(|e| pb::repository_index_response::ModelIndex {
                name: e.name,
                version: e.version.into(),
                state: e.state.into(),
                reason: e.reason.unwrap_or_default(),
            })
            .collect();
        Ok(GrpcResponse::new(pb::RepositoryIndexResponse { models }))
    }
}

/// Triton's ModelConfig message for a model (the JSON `/v2/models/{m}/config` gives, as protobuf).
fn model_config(m: &OipModel) -> pb::ModelConfig {
    let label_file = m.labels.as_ref().map(|(_, f)| f.clone()).unwrap_or_default();
    let format = match m.kind {
        crate::oip::Kind::Tensor { .. } => pb::model_input::Format::Nchw,
        _ => pb::model_input::Format::None,
    };
    pb::ModelConfig {
        name: m.name.clone(),
        platform: m.platform.into(),
        backend: "gpubackend".into(),
        max_batch_size: m.max_batch as i32,
        input: vec![pb::ModelInput {
            name: m.input.name.clone(),
            data_type: m.input.datatype.proto(),
            format: format as i32,
            dims: m.input.dims.clone(),
            ..Default::default()
        }],
        output: m
            .outputs()
            .iter()
            .enumerate()
            .map(|(i, t)| pb::ModelOutput {
                name: t.name.clone(),
                data_type: t.datatype.proto(),
                dims: t.dims.clone(),
                label_filename: if i == 0 { label_file.clone() } else { String::new() },
                ..Default::default()
            })
            .collect(),
        instance_group: m
            .instance_groups()
            .into_iter()
            .map(|g| pb::ModelInstanceGroup {
                kind: match g.gpu {
                    Some(_) => pb::model_instance_group::Kind::Gpu as i32,
                    None => pb::model_instance_group::Kind::Cpu as i32,
                },
                name: g.name,
                count: g.count as i32,
                gpus: g.gpu.into_iter().collect(),
            })
            .collect(),
        scheduling_choice: (m.max_batch > 0).then(|| {
            pb::model_config::SchedulingChoice::DynamicBatching(pb::ModelDynamicBatching {
                preferred_batch_size: Vec::new(),
                max_queue_delay_microseconds: m.max_delay_us,
            })
        }),
        model_transaction_policy: None,
    }
}

fn int_param(p: &std::collections::HashMap<String, pb::InferParameter>, key: &str) -> Option<i64> {
    match p.get(key)?.parameter_choice.as_ref()? {
        ParameterChoice::Int64Param(v) => Some(*v),
        ParameterChoice::Uint64Param(v) => i64::try_from(*v).ok(),
        _ => None,
    }
}

/// A ModelInferRequest as the protocol's request: raw contents (one per input, in order) or typed.
fn read_request(req: pb::ModelInferRequest) -> Result<Request, OipError> {
    let raw = req.raw_input_contents;
    if !raw.is_empty() && raw.len() != req.inputs.len() {
        return Err(OipError::invalid(format!(
            "raw_input_contents has {} entries for {} inputs",
            raw.len(),
            req.inputs.len()
        )));
    }
    let mut inputs = Vec::with_capacity(req.inputs.len());
    for (i, t) in req.inputs.into_iter().enumerate() {
        let datatype = tensor::datatype(&t.name, &t.datatype)?;
        let count = tensor::elements(&t.name, &t.shape)?;
        let data = match (raw.get(i), t.contents) {
            (Some(_), Some(_)) => {
                return Err(OipError::invalid(format!("input `{}`: both contents and raw_input_contents", t.name)));
            }
            (Some(bytes), None) => tensor::from_raw(&t.name, datatype, bytes, count)?,
            (None, Some(c)) => typed(&t.name, datatype, c, count)?,
            (None, None) => return Err(OipError::invalid(format!("input `{}`: no contents", t.name))),
        };
        inputs.push(InputTensor { name: t.name, datatype, shape: t.shape, data });
    }
    let outputs = req
        .outputs
        .into_iter()
        .map(|o| {
            let k = int_param(&o.parameters, "classification").unwrap_or(0);
            if k < 0 {
                return Err(OipError::invalid(format!("output `{}`: classification must be a positive count", o.name)));
            }
            Ok(RequestedOutput { name: o.name, binary: None, class_count: k as usize })
        })
        .collect::<Result<_, _>>()?;
    Ok(Request { model: req.model_name, version: req.model_version, id: req.id, inputs, outputs, binary_output: true })
}

/// Typed contents: FP32 and BYTES read, the others counted (the model refuses them by name).
fn typed(name: &str, datatype: DataType, c: pb::InferTensorContents, count: usize) -> Result<InputData, OipError> {
    let got = match datatype {
        DataType::Fp32 => c.fp32_contents.len(),
        DataType::Bytes => c.bytes_contents.len(),
        DataType::Bool => c.bool_contents.len(),
        DataType::Int8 | DataType::Int16 | DataType::Int32 => c.int_contents.len(),
        DataType::Int64 => c.int64_contents.len(),
        DataType::Uint8 | DataType::Uint16 | DataType::Uint32 => c.uint_contents.len(),
        DataType::Uint64 => c.uint64_contents.len(),
        DataType::Fp64 => c.fp64_contents.len(),
        DataType::Fp16 | DataType::Bf16 => {
            return Err(OipError::invalid(format!(
                "input `{name}`: {} goes only as raw_input_contents",
                datatype.name()
            )));
        }
    };
    if got != count {
        return Err(OipError::invalid(format!("input `{name}`: {got} elements in contents, its shape needs {count}")));
    }
    Ok(match datatype {
        DataType::Fp32 => InputData::Fp32(c.fp32_contents),
        DataType::Bytes => InputData::Bytes(c.bytes_contents),
        _ => InputData::Other,
    })
}

/// The answer with every output's data in `raw_output_contents` (in output order).
fn write_response(r: crate::oip::Response) -> pb::ModelInferResponse {
    let (outputs, raw) = r
        .outputs
        .into_iter()
        .map(|(t, _)| {
            let raw = t.data.raw();
            let o = pb::model_infer_response::InferOutputTensor {
                name: t.name,
                datatype: t.data.datatype().name().into(),
                shape: t.shape,
                parameters: Default::default(),
                contents: None,
            };
            (o, raw)
        })
        .unzip();
    pb::ModelInferResponse {
        model_name: r.model_name,
        model_version: r.model_version,
        id: r.id,
        parameters: Default::default(),
        outputs,
        raw_output_contents: raw,
    }
}
