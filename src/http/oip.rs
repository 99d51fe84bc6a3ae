//! The Open Inference Protocol over HTTP (`/v2`, KServe v2 REST as Triton serves it): health,
//! server and model metadata, Triton's model configuration, the repository index and inference
//! with JSON tensors and the `binary_tensor_data` extension (`Inference-Header-Content-Length`),
//! translated to `oip::Request` and back. Errors are `{"error": "…"}` with the protocol's status.

use actix_web::web::{self, Data, Payload, Query};
use actix_web::{HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AppState, AuthQuery};
use crate::oip::tensor::{self, DataType, InputData, InputTensor};
use crate::oip::{Code, OipError, OipModel, Protocol, Request, RequestedOutput};

/// The header that splits a body into its JSON and the binary tensor data after it.
pub const HEADER_LENGTH: &str = "Inference-Header-Content-Length";

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v2", web::get().to(server_metadata))
        .route("/v2/health/live", web::get().to(|| async { HttpResponse::Ok().json(json!({"live": true})) }))
        .route("/v2/health/ready", web::get().to(server_ready))
        .route("/v2/repository/index", web::get().to(index))
        .route("/v2/repository/index", web::post().to(index))
        .route("/v2/models/{model}", web::get().to(model_metadata))
        .route("/v2/models/{model}/versions/{version}", web::get().to(model_metadata))
        .route("/v2/models/{model}/ready", web::get().to(model_ready))
        .route("/v2/models/{model}/versions/{version}/ready", web::get().to(model_ready))
        .route("/v2/models/{model}/config", web::get().to(model_config))
        .route("/v2/models/{model}/versions/{version}/config", web::get().to(model_config))
        .route("/v2/models/{model}/infer", web::post().to(infer))
        .route("/v2/models/{model}/versions/{version}/infer", web::post().to(infer));
}

/// `{"error": …}` with the status the protocol gives the error.
pub fn error_response(e: &OipError) -> HttpResponse {
    use actix_web::http::StatusCode;
    let (status, retry) = match e.code {
        Code::Invalid => (StatusCode::BAD_REQUEST, None),
        Code::NotFound => (StatusCode::NOT_FOUND, None),
        Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, Some(1)),
        Code::Unauthenticated => (StatusCode::UNAUTHORIZED, None),
        Code::RateLimited(s) => (StatusCode::TOO_MANY_REQUESTS, Some(s)),
        Code::Internal => (StatusCode::INTERNAL_SERVER_ERROR, None),
    };
    let mut resp = HttpResponse::build(status);
    if let Some(s) = retry {
        resp.insert_header(("Retry-After", s.to_string()));
    }
    if e.code == Code::Unauthenticated {
        resp.insert_header(("WWW-Authenticate", "Bearer"));
    }
    resp.json(json!({"error": e.message}))
}

/// The token (`Authorization: Bearer`, or the Vision query's) and its rate limit.
fn authorize(state: &AppState, req: &HttpRequest, query: &AuthQuery) -> Result<(), OipError> {
    let header = req.headers().get(actix_web::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    state.auth.check_bearer(header, query).map_err(OipError::from)
}

/// `{model}` and, where the path has it, `{version}`.
#[derive(Deserialize)]
struct ModelPath {
    model: String,
    #[serde(default)]
    version: Option<String>,
}

type Path = web::Path<ModelPath>;

/// The model and version a path names, once the request is authorized.
fn model<'s>(
    state: &'s AppState,
    req: &HttpRequest,
    q: &AuthQuery,
    path: &Path,
) -> Result<&'s std::sync::Arc<OipModel>, OipError> {
    authorize(state, req, q)?;
    state.oip.model(&path.model, path.version.as_deref().unwrap_or_default())
}

fn answer(r: Result<Value, OipError>) -> HttpResponse {
    match r {
        Ok(v) => HttpResponse::Ok().json(v),
        Err(e) => error_response(&e),
    }
}

async fn server_metadata(state: Data<AppState>, req: HttpRequest, q: Query<AuthQuery>) -> HttpResponse {
    answer(authorize(&state, &req, &q).map(|_| state.oip.metadata()))
}

async fn server_ready(state: Data<AppState>) -> HttpResponse {
    let ready = state.oip.ready();
    let body = json!({"ready": ready});
    if ready { HttpResponse::Ok().json(body) } else { HttpResponse::ServiceUnavailable().json(body) }
}

async fn model_metadata(state: Data<AppState>, req: HttpRequest, q: Query<AuthQuery>, path: Path) -> HttpResponse {
    answer(model(&state, &req, &q, &path).map(|m| m.metadata()))
}

async fn model_config(state: Data<AppState>, req: HttpRequest, q: Query<AuthQuery>, path: Path) -> HttpResponse {
    answer(model(&state, &req, &q, &path).map(|m| m.config()))
}

async fn model_ready(state: Data<AppState>, req: HttpRequest, q: Query<AuthQuery>, path: Path) -> HttpResponse {
    match model(&state, &req, &q, &path) {
        Ok(m) if m.ready() => HttpResponse::Ok().json(json!({"name": m.name, "ready": true})),
        Ok(m) => HttpResponse::ServiceUnavailable().json(json!({"name": m.name, "ready": false})),
        Err(e) => error_response(&e),
    }
}

/// `GET` or `POST /v2/repository/index` (`{"ready": true}`: only the ready ones).
async fn index(state: Data<AppState>, req: HttpRequest, q: Query<AuthQuery>, body: web::Bytes) -> HttpResponse {
    let ready_only = serde_json::from_slice::<Value>(&body).ok().and_then(|v| v["ready"].as_bool()).unwrap_or(false);
    answer(authorize(&state, &req, &q).map(|_| json!(state.oip.index(ready_only))))
}

#[derive(Deserialize)]
struct InferBody {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Option<serde_json::Map<String, Value>>,
    inputs: Vec<InputBody>,
    #[serde(default)]
    outputs: Option<Vec<OutputBody>>,
}

#[derive(Deserialize)]
struct InputBody {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    data: Option<Value>,
}

#[derive(Deserialize)]
struct OutputBody {
    name: String,
    #[serde(default)]
    parameters: Option<serde_json::Map<String, Value>>,
}

async fn infer(
    state: Data<AppState>,
    req: HttpRequest,
    q: Query<AuthQuery>,
    path: Path,
    payload: Payload,
) -> HttpResponse {
    // The gate in front of inference (shared with gRPC): beyond its active requests, a request
    // waits before its body is read and is refused after `admission.max_wait_ms`.
    let _slot = match state.oip_gate.enter().await {
        Ok(slot) => slot,
        Err(refusal) => {
            ::metrics::counter!(crate::metrics::REFUSALS, "reason" => refusal.reason()).increment(1);
            return error_response(&OipError::unavailable(refusal.message(state.oip_gate.endpoint())));
        }
    };
    let result = async {
        let model = model(&state, &req, &q, &path)?.clone();
        let body = read_body(&req, payload, &state.limits).await?;
        let header_len = req.headers().get(HEADER_LENGTH).map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or_else(|| OipError::invalid(format!("{HEADER_LENGTH}: not a byte count")))
        });
        let header_len = header_len.transpose()?;
        let body_len = body.len();
        // Parsing (JSON of up to `limits.max_request_bytes`, the tensors copied out) off the
        // executor, on actix's blocking pool.
        let parse_model = model.clone();
        let parsed = web::block(move || match header_len {
            Some(0) => raw_request(&parse_model, &body),
            Some(n) => match body.get(..n) {
                Some(json) => parse_request(json, &body[n..]),
                None => Err(OipError::invalid(format!("{HEADER_LENGTH} is {n}, the body has {} bytes", body.len()))),
            },
            None => parse_request(&body, &[]),
        })
        .await
        .unwrap_or_else(|e| Err(OipError { code: Code::Internal, message: format!("request parser: {e}") }));
        let mut request = parsed.inspect_err(|e| state.oip.count_refused(Protocol::Http, &model.name, e))?;
        request.model = model.name.clone();
        request.version = path.version.clone().unwrap_or_default();
        state.oip.infer(request, Protocol::Http, body_len).await
    }
    .await;
    match result {
        Ok(response) => write_response(response),
        Err(e) => error_response(&e),
    }
}

/// The body, at most `limits.max_request_bytes`, within `limits.upload_timeout_ms`.
async fn read_body(
    req: &HttpRequest,
    mut payload: Payload,
    limits: &crate::config::Limits,
) -> Result<Vec<u8>, OipError> {
    let most = limits.max_request_bytes;
    let too_large = || OipError::invalid(format!("request body over {most} bytes (limits.max_request_bytes)"));
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > most) {
        return Err(too_large());
    }
    let read = async {
        let mut body = Vec::with_capacity(declared.unwrap_or(0));
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| OipError::invalid(format!("request body: {e}")))?;
            if body.len() + chunk.len() > most {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    };
    tokio::time::timeout(std::time::Duration::from_millis(limits.upload_timeout_ms), read).await.unwrap_or_else(|_| {
        Err(OipError::invalid(format!(
            "request body not received within {} ms (limits.upload_timeout_ms)",
            limits.upload_timeout_ms
        )))
    })
}

fn bool_param(p: &Option<serde_json::Map<String, Value>>, key: &str) -> Option<bool> {
    p.as_ref().and_then(|p| p.get(key)).and_then(Value::as_bool)
}

/// A JSON request, its binary tensor data (`binary_data_size` per input, in order) after it.
fn parse_request(json: &[u8], mut binary: &[u8]) -> Result<Request, OipError> {
    let body: InferBody =
        serde_json::from_slice(json).map_err(|e| OipError::invalid(format!("inference request JSON: {e}")))?;
    let mut inputs = Vec::with_capacity(body.inputs.len());
    for i in body.inputs {
        let datatype = tensor::datatype(&i.name, &i.datatype)?;
        let count = tensor::elements(&i.name, &i.shape)?;
        let binary_size = i.parameters.as_ref().and_then(|p| p.get("binary_data_size"));
        let data = match (binary_size, &i.data) {
            (Some(size), _) => {
                let size = size.as_u64().map(|s| s as usize).filter(|s| *s <= binary.len()).ok_or_else(|| {
                    OipError::invalid(format!(
                        "input `{}`: binary_data_size {size} beyond the {} bytes of binary data left",
                        i.name,
                        binary.len()
                    ))
                })?;
                let (mine, rest) = binary.split_at(size);
                binary = rest;
                tensor::from_raw(&i.name, datatype, mine, count)?
            }
            (None, Some(data)) => tensor::from_json(&i.name, datatype, data, count)?,
            (None, None) => {
                return Err(OipError::invalid(format!("input `{}`: neither `data` nor binary_data_size", i.name)));
            }
        };
        inputs.push(InputTensor { name: i.name, datatype, shape: i.shape, data });
    }
    if !binary.is_empty() {
        return Err(OipError::invalid(format!("{} bytes of binary data no input claims", binary.len())));
    }
    let outputs = body
        .outputs
        .unwrap_or_default()
        .into_iter()
        .map(|o| {
            let class_count = o.parameters.as_ref().and_then(|p| p.get("classification")).map(|v| {
                v.as_u64().filter(|k| *k > 0).map(|k| k as usize).ok_or_else(|| {
                    OipError::invalid(format!("output `{}`: classification must be a positive count", o.name))
                })
            });
            Ok(RequestedOutput {
                binary: bool_param(&o.parameters, "binary_data"),
                class_count: class_count.transpose()?.unwrap_or(0),
                name: o.name,
            })
        })
        .collect::<Result<_, OipError>>()?;
    Ok(Request {
        id: body.id.unwrap_or_default(),
        inputs,
        outputs,
        binary_output: bool_param(&body.parameters, "binary_data_output").unwrap_or(false),
        ..Request::default()
    })
}

/// `Inference-Header-Content-Length: 0`: the body is the one input's data (an image model: one
/// encoded image, with or without its 4-byte length; a tensor model: whole items); outputs binary.
fn raw_request(model: &OipModel, body: &[u8]) -> Result<Request, OipError> {
    let input = &model.input;
    let (shape, data) = match input.datatype {
        DataType::Bytes => {
            let image = match tensor::split_bytes(body) {
                Some(items) if items.len() == 1 => items.into_iter().next().unwrap_or_default(),
                _ => body.to_vec(),
            };
            let shape = if model.max_batch > 0 { vec![1, 1] } else { vec![1] };
            (shape, InputData::Bytes(vec![image]))
        }
        _ => {
            if input.dims.iter().any(|d| *d < 0) {
                return Err(OipError::invalid(format!(
                    "a raw binary request ({HEADER_LENGTH}: 0) needs an input of fixed shape; `{}` is {:?}",
                    input.name, input.dims
                )));
            }
            let per: usize = input.dims.iter().product::<i64>() as usize * 4;
            if body.is_empty() || !body.len().is_multiple_of(per) {
                return Err(OipError::invalid(format!(
                    "raw binary request: {} bytes, not a whole number of `{}` items ({per} bytes each)",
                    body.len(),
                    input.name
                )));
            }
            let n = body.len() / per;
            let shape: Vec<i64> = std::iter::once(n as i64).chain(input.dims.iter().copied()).collect();
            let count = tensor::elements(&input.name, &shape)?;
            (shape, tensor::from_raw(&input.name, input.datatype, body, count)?)
        }
    };
    Ok(Request {
        inputs: vec![InputTensor { name: input.name.clone(), datatype: input.datatype, shape, data }],
        binary_output: true,
        ..Request::default()
    })
}

/// The answer: JSON, with the outputs asked for in binary after it.
fn write_response(r: crate::oip::Response) -> HttpResponse {
    let mut binary = Vec::new();
    let outputs: Vec<Value> = r
        .outputs
        .iter()
        .map(|(t, as_binary)| {
            let mut o = json!({"name": t.name, "datatype": t.data.datatype().name(), "shape": t.shape});
            if *as_binary {
                let raw = t.data.raw();
                o["parameters"] = json!({"binary_data_size": raw.len()});
                binary.extend_from_slice(&raw);
            } else {
                o["data"] = t.data.json();
            }
            o
        })
        .collect();
    let mut body = json!({"model_name": r.model_name, "model_version": r.model_version, "outputs": outputs});
    if !r.id.is_empty() {
        body["id"] = r.id.into();
    }
    let mut json = serde_json::to_vec(&body).expect("a response serializes. This is a bug.");
    if binary.is_empty() {
        return HttpResponse::Ok().content_type("application/json").body(json);
    }
    let header_len = json.len();
    json.extend_from_slice(&binary);
    HttpResponse::Ok()
        .content_type("application/octet-stream")
        .insert_header((HEADER_LENGTH, header_len.to_string()))
        .body(json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_request_with_binary_inputs_after_it_is_split_by_binary_data_size() {
        let raw: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        let json =
            br#"{"id":"7","inputs":[{"name":"a","shape":[1,2],"datatype":"FP32","parameters":{"binary_data_size":8}},
            {"name":"b","shape":[2],"datatype":"FP32","data":[5,6]},
            {"name":"c","shape":[1,2],"datatype":"FP32","parameters":{"binary_data_size":8}}],
            "outputs":[{"name":"o","parameters":{"classification":3,"binary_data":true}}]}"#;
        let r = parse_request(json, &raw).unwrap();
        assert_eq!(r.id, "7");
        assert_eq!(r.inputs[0].data, InputData::Fp32(vec![1.0, 2.0]));
        assert_eq!(r.inputs[1].data, InputData::Fp32(vec![5.0, 6.0]));
        assert_eq!(r.inputs[2].data, InputData::Fp32(vec![3.0, 4.0]));
        assert_eq!(r.outputs, vec![RequestedOutput { name: "o".into(), binary: Some(true), class_count: 3 }]);
        // Binary data nobody claims, or claims beyond it, is refused.
        assert!(parse_request(json, &[raw.clone(), vec![0; 4]].concat()).unwrap_err().message.contains("4 bytes"));
        assert!(parse_request(json, &raw[..12]).unwrap_err().message.contains("binary_data_size"));
        let e = parse_request(br#"{"inputs":[{"name":"a","shape":[2],"datatype":"FP32"}]}"#, &[]).unwrap_err();
        assert!(e.message.contains("input `a`"), "{}", e.message);
        assert_eq!(parse_request(b"{", &[]).unwrap_err().code, Code::Invalid);
    }
}
