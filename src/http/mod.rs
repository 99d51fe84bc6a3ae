//! The edge: actix-web routes, shared state, and server start-up (actors, placement, listener).

mod auth;
mod disconnect;
mod endpoint;
mod gate;
pub mod grpc;
mod improve;
mod multipart;
mod objects;
pub mod oip;
mod persons;
mod placement;
mod playground;
mod ratelimit;
mod stages;
mod text;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Instant;

use actix_web::web::{self, Data};
use actix_web::{App, HttpResponse, HttpServer};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio::sync::Semaphore;

pub use auth::{Auth, AuthQuery};

use crate::broker::api::Broker;
use crate::config::{Config, Limits, Role};
use crate::error::ApiError;
use crate::infer::Inference;
use crate::metrics;

/// What the handlers share: the inference layer and the edge's own state (auth, limits, the
/// admission budgets and gates).
pub struct AppState {
    pub infer: Arc<Inference>,
    pub auth: Auth,
    pub limits: Arc<Limits>,
    /// Images admitted and not yet answered, over all requests.
    pub admission: Arc<Semaphore>,
    /// The in-flight work byte budget, in KiB permits (`limits.max_inflight_bytes`).
    pub work_budget: Arc<Semaphore>,
    pub panic_marker: Option<String>,
    pub metrics: PrometheusHandle,
    pub started: Instant,
    pub role: Role,
    /// `--role worker`: whether this worker reaches the broker (its feeders' last heartbeat).
    pub worker_broker_up: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// Each Vision endpoint's gate, by path (`[admission]`; taken in `multipart::read_upload`).
    pub gates: HashMap<&'static str, Arc<gate::Gate>>,
    /// The Open Inference Protocol's models and request runner (`/v2`, gRPC).
    pub oip: Arc<crate::oip::Oip>,
    /// The gate in front of its inference requests, HTTP and gRPC together (`endpoint="v2/infer"`).
    pub oip_gate: Arc<gate::Gate>,
}

pub use crate::infer::StartError;

/// A started server: where it listens and the future that runs it.
pub struct RunningServer {
    pub addr: SocketAddr,
    /// `server.admin_port`'s listener, where set.
    pub admin_addr: Option<SocketAddr>,
    pub server: actix_web::dev::Server,
    /// `--role worker`: the feeders, drained on shutdown before the server stops.
    pub feeders: Vec<Arc<crate::broker::worker::Feeder>>,
    /// The Open Inference Protocol's gRPC listener (`server.grpc_port`); it stops when this is
    /// dropped.
    pub grpc: Option<grpc::GrpcServer>,
}

impl RunningServer {
    /// Where gRPC listens, if it does.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc.as_ref().map(|g| g.addr)
    }

    /// `--role worker`: stops taking jobs and waits (at most `timeout`) until every job taken is
    /// answered, so a worker scaled down leaves nothing for the others to take back.
    pub async fn drain_feeders(feeders: &[Arc<crate::broker::worker::Feeder>], timeout: std::time::Duration) {
        if feeders.is_empty() {
            return;
        }
        feeders.iter().for_each(|f| f.stop());
        let start = Instant::now();
        while !feeders.iter().all(|f| f.drained()) && start.elapsed() < timeout {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let left: usize = feeders.iter().map(|f| f.in_flight_count()).sum();
        if left > 0 {
            tracing::warn!(jobs = left, "broker: drain timed out; these jobs will be taken back by other workers");
        } else {
            tracing::info!("broker: every job taken was answered");
            futures_util::future::join_all(feeders.iter().map(|f| f.leave())).await;
        }
    }
}

/// Starts actors and the HTTP server inside the current actix `System` (`--role all`).
pub fn start(config: Config, listener: Option<TcpListener>) -> Result<RunningServer, StartError> {
    start_role(config, Role::All, listener)
}

/// Starts one role inside the current actix `System`: `all` (API + models), `api` (API, model
/// inputs through the broker) or `worker` (models fed from the broker; HTTP serves only metrics,
/// health and /admin).
pub fn start_role(config: Config, role: Role, listener: Option<TcpListener>) -> Result<RunningServer, StartError> {
    let metrics_handle = metrics::install();
    metrics::name_rayon_pool(config.pipeline.cpu_threads);
    let tokens = load_tokens(&config)?;
    let started = crate::infer::start(&config, role)?;
    let state =
        Data::new(AppState::new(&config, role, tokens, metrics_handle, started.inference, started.worker_broker_up));
    spawn_trim(&config, state.clone());
    let listeners = Listeners::bind(&config, listener)?;
    let (addr, admin_addr) = (listeners.addr, listeners.admin_addr);
    let grpc = match config.server.grpc_port.filter(|_| role.serves_api()) {
        Some(port) => Some(grpc::start(state.clone(), &config.server.host, port, config.server.http_workers)?),
        None => None,
    };
    let server = serve(state, &config, role, listeners)?;
    tracing::info!(%addr, "listening");
    Ok(RunningServer { addr, admin_addr, server, feeders: started.feeders, grpc })
}

impl AppState {
    fn new(
        config: &Config,
        role: Role,
        tokens: Vec<String>,
        metrics: PrometheusHandle,
        infer: Arc<Inference>,
        worker_broker_up: Option<Arc<std::sync::atomic::AtomicBool>>,
    ) -> Self {
        let admission = Arc::new(Semaphore::new(config.limits.max_inflight_images));
        let work_budget = Arc::new(Semaphore::new(objects::budget_permits(config.limits.max_inflight_bytes)));
        let oip = Arc::new(crate::oip::Oip::new(config, infer.clone(), admission.clone(), work_budget.clone()));
        Self {
            infer,
            auth: Auth::new(tokens, config.auth.providers.clone(), config.rate_limit),
            limits: Arc::new(config.limits.clone()),
            admission,
            work_budget,
            oip,
            oip_gate: gate::Gate::new("v2/infer", config.admission),
            panic_marker: config.fault_injection.panic_marker.clone(),
            metrics,
            started: Instant::now(),
            role,
            worker_broker_up,
            // One gate per Vision endpoint: requests beyond its active slots wait before their
            // body is read, and are refused after `admission.max_wait_ms`.
            gates: GATED_ENDPOINTS
                .iter()
                .map(|(path, endpoint)| (*path, *endpoint))
                .chain(crate::infer::family_endpoints().map(|e| (family_path(e), e)))
                .map(|(path, endpoint)| (path, gate::Gate::new(endpoint, config.admission)))
                .collect(),
        }
    }
}

/// `auth.tokens` and `auth.tokens_file`; an open server is said so loudly.
fn load_tokens(config: &Config) -> Result<Vec<String>, StartError> {
    let tokens = config.load_tokens()?;
    if tokens.is_empty() {
        tracing::warn!("NO AUTH TOKENS CONFIGURED: every request is accepted. Set auth.tokens or auth.tokens_file.");
    } else {
        tracing::info!(count = tokens.len(), "auth tokens loaded");
    }
    Ok(tokens)
}

/// Freed memory back to the OS once the work stops (`server.trim_interval_ms`, `alloc`): no
/// image admitted and no forward pass since the last tick, once per quiet period.
fn spawn_trim(config: &Config, state: Data<AppState>) {
    if config.server.trim_interval_ms == 0 {
        return;
    }
    let max = config.limits.max_inflight_images;
    let every = std::time::Duration::from_millis(config.server.trim_interval_ms);
    actix_web::rt::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let (mut last_busy, mut trimmed) = (-1.0, false);
        loop {
            tick.tick().await;
            let now = Instant::now();
            let busy: f64 = state.infer.workers.iter().map(|w| w.sample(now).busy_seconds_total).sum();
            let quiet = busy == last_busy && state.admission.available_permits() == max;
            last_busy = busy;
            if !quiet {
                trimmed = false;
            } else if !trimmed {
                trimmed = tokio::task::spawn_blocking(crate::alloc::trim).await.is_ok();
            }
        }
    });
}

/// The API listener and (`server.admin_port`) the admin one.
struct Listeners {
    api: TcpListener,
    addr: SocketAddr,
    admin: Option<TcpListener>,
    admin_addr: Option<SocketAddr>,
}

impl Listeners {
    fn bind(config: &Config, listener: Option<TcpListener>) -> Result<Self, StartError> {
        let listener = match listener {
            Some(l) => l,
            None => {
                let addr = format!("{}:{}", config.server.host, config.server.port);
                TcpListener::bind(&addr).map_err(|source| StartError::Bind { addr, source })?
            }
        };
        let addr = listener.local_addr().map_err(|source| StartError::Bind { addr: "listener".into(), source })?;
        // `server.admin_port`: a second listener for the admin surface, which the API port then
        // no longer serves (requests are told apart by the port their connection came in on).
        let admin = match config.server.admin_port {
            None => None,
            Some(port) => {
                let at = format!("{}:{port}", config.server.host);
                Some(TcpListener::bind(&at).map_err(|source| StartError::Bind { addr: at, source })?)
            }
        };
        let admin_addr = admin
            .as_ref()
            .map(|l| l.local_addr())
            .transpose()
            .map_err(|source| StartError::Bind { addr: "admin listener".into(), source })?;
        Ok(Self { api: listener, addr, admin, admin_addr })
    }
}

/// The HTTP server on its listeners: the Vision API (not on `--role worker`) and the admin
/// surface (metrics, health, placement), the admin port serving only the latter.
fn serve(
    state: Data<AppState>,
    config: &Config,
    role: Role,
    listeners: Listeners,
) -> Result<actix_web::dev::Server, StartError> {
    let Listeners { api, addr, admin, admin_addr } = listeners;
    let admin_port = admin_addr.map(|a| a.port());
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .wrap_fn(move |req, srv| {
                use actix_web::dev::Service;
                let on_admin = req.conn_data::<AdminConnection>().is_some();
                if admin_port.is_some() && on_admin != is_admin_path(req.path()) {
                    let wrong = ApiError::NotFound(format!(
                        "no such method on this port: {} {} (the admin port serves /metrics, /health/*, /admin; \
                         the API port everything else)",
                        req.method(),
                        req.path()
                    ));
                    let resp = actix_web::ResponseError::error_response(&wrong);
                    return Box::pin(async move { Ok(req.into_response(resp)) })
                        as futures_util::future::LocalBoxFuture<'static, _>;
                }
                let call = srv.call(req);
                Box::pin(async move { call.await.map(|r| r.map_into_boxed_body()) })
            })
            .configure(|cfg| {
                if role.serves_api() {
                    api_routes(cfg);
                }
            })
            .route("/metrics", web::get().to(metrics_page))
            .route("/health/live", web::get().to(|| async { HttpResponse::Ok().json(json!({"status": "live"})) }))
            .route("/health/ready", web::get().to(ready))
            .route("/admin/placement", web::get().to(placement::json))
            .route("/admin", web::get().to(placement::page))
            .default_service(web::to(not_found))
    })
    .on_connect(move |conn, ext| {
        disconnect::on_connect(conn, ext);
        if let Some(port) = admin_port
            && let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>()
            && tcp.local_addr().is_ok_and(|a| a.port() == port)
        {
            ext.insert(AdminConnection);
        }
    })
    .workers(config.server.http_workers)
    .shutdown_timeout(config.server.shutdown_timeout_s)
    .disable_signals()
    .listen(api)
    .map_err(|source| StartError::Bind { addr: addr.to_string(), source })?;
    if let Some(l) = admin {
        server = server.listen(l).map_err(|source| StartError::Bind { addr: format!("{admin_addr:?}"), source })?;
        tracing::info!(addr = ?admin_addr, "admin listening (/metrics, /health/*, /admin)");
    }
    Ok(server.run())
}

/// The Vision endpoints behind a gate (`[admission]`): (path, the `endpoint` label of its metrics).
const GATED_ENDPOINTS: &[(&str, &str)] = &[
    ("/api/v1/objects/detect", "objects/detect"),
    ("/api/v1/persons/set", "persons/set"),
    ("/api/v1/persons/recognize", "persons/recognize"),
    ("/api/v1/persons/delete", "persons/delete"),
    ("/api/v1/persons/truncate", "persons/truncate"),
    ("/api/v1/text/recognize", "text/recognize"),
    ("/api/v1/scene_text/recognize", "scene_text/recognize"),
    ("/api/v1/photo/improve", "photo/improve"),
];

/// A family endpoint's path (`adult/detect` → `/api/v1/adult/detect`), made once per endpoint.
fn family_path(endpoint: &'static str) -> &'static str {
    static PATHS: std::sync::OnceLock<HashMap<&'static str, &'static str>> = std::sync::OnceLock::new();
    PATHS.get_or_init(|| {
        crate::infer::family_endpoints().map(|e| (e, &*Box::leak(format!("/api/v1/{e}").into_boxed_str()))).collect()
    })[endpoint]
}

/// A connection that came in on the admin listener (`server.admin_port`).
struct AdminConnection;

/// The admin surface: what probes, Prometheus and operators use.
fn is_admin_path(path: &str) -> bool {
    path == "/metrics" || path.starts_with("/health/") || path == "/admin" || path.starts_with("/admin/")
}

/// The Vision API (not on `--role worker`).
fn api_routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/v1/objects/detect", web::post().to(objects::detect))
        .route("/api/v1/persons/set", web::post().to(persons::set))
        .route("/api/v1/persons/recognize", web::post().to(persons::recognize))
        .route("/api/v1/persons/delete", web::post().to(persons::delete))
        .route("/api/v1/persons/truncate", web::post().to(persons::truncate))
        .route("/api/v1/text/recognize", web::post().to(text::recognize))
        .route("/api/v1/scene_text/recognize", web::post().to(text::scene_text))
        .route("/api/v1/docs/recognize", web::post().to(text::docs_not_served))
        .route("/api/v1/docs/detect", web::post().to(text::docs_not_served))
        .route("/api/v1/photo/improve", web::post().to(improve::improve));
    // The endpoints the model families serve by themselves.
    for e in crate::infer::family_endpoints() {
        cfg.route(
            family_path(e),
            web::post().to(move |state, query, req, payload| endpoint::handle(e, state, query, req, payload)),
        );
    }
    cfg.route("/", web::get().to(playground::page)).route("/playground", web::get().to(playground::page));
    // The Open Inference Protocol (KServe v2 / Triton).
    oip::routes(cfg);
}

async fn metrics_page(state: Data<AppState>) -> HttpResponse {
    let now = Instant::now();
    let samples: Vec<_> = state.infer.workers.iter().map(|w| w.sample(now)).collect();
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(metrics::render(&state.metrics, &samples))
}

async fn ready(state: Data<AppState>) -> HttpResponse {
    if let Some(broker) = &state.infer.broker {
        return ready_api(broker);
    }
    let broker_down = state.worker_broker_up.as_ref().is_some_and(|up| !up.load(std::sync::atomic::Ordering::Acquire));
    let per_model: serde_json::Map<String, serde_json::Value> = state
        .infer
        .placed_models
        .iter()
        .map(|m| {
            let live = state.infer.workers.iter().filter(|w| &w.model == m && w.is_alive()).count();
            (m.clone(), json!(live))
        })
        .collect();
    let ready = !broker_down && per_model.values().all(|v| v.as_u64().unwrap_or(0) > 0);
    // Why each model without a live worker has none (what its workers last failed on).
    let why: serde_json::Map<String, serde_json::Value> = state
        .infer
        .placed_models
        .iter()
        .filter(|m| per_model[*m].as_u64() == Some(0))
        .map(|m| {
            let reasons: Vec<String> = state
                .infer
                .workers
                .iter()
                .filter(|w| &w.model == m)
                .map(|w| format!("{}: {}", w.device, w.last_error().unwrap_or_else(|| "loading".into())))
                .collect();
            (m.clone(), json!(reasons))
        })
        .collect();
    let mut body = json!({"status": if ready { "ready" } else { "not ready" }, "live_workers": per_model});
    if !why.is_empty() {
        body["not_ready"] = json!(why);
    }
    if broker_down {
        body["broker"] = json!("unreachable");
    }
    if ready { HttpResponse::Ok().json(body) } else { HttpResponse::ServiceUnavailable().json(body) }
}

/// `--role api`: ready while the broker is reachable; the body lists each stage's live workers
/// and stream length, and the stages no worker serves (`no_live_workers`).
fn ready_api(broker: &Broker) -> HttpResponse {
    use std::sync::atomic::Ordering;
    let mut streams: Vec<_> = broker.stages().collect();
    streams.sort_by(|a, b| a.name.cmp(&b.name));
    // Stages no live worker serves: their modes are left out of answers (partial answers), or
    // refused when a request asks for nothing else. The api stays ready for the others.
    let unserved: Vec<&str> =
        streams.iter().filter(|s| s.live_workers.load(Ordering::Relaxed) == 0).map(|s| s.name.as_str()).collect();
    let stages: serde_json::Map<String, serde_json::Value> = streams
        .iter()
        .map(|s| {
            let v = json!({
                "live_workers": s.live_workers.load(Ordering::Relaxed),
                "stream_length": s.stream_len.load(Ordering::Relaxed),
            });
            (s.name.clone(), v)
        })
        .collect();
    let up = broker.is_up();
    let mut body = json!({"status": if up { "ready" } else { "not ready" }, "role": "api", "stages": stages});
    if !unserved.is_empty() {
        body["no_live_workers"] = json!(unserved);
    }
    if up {
        HttpResponse::Ok().json(body)
    } else {
        body["broker"] = json!(broker.down_reason());
        HttpResponse::ServiceUnavailable().json(body)
    }
}

async fn not_found(req: actix_web::HttpRequest) -> HttpResponse {
    actix_web::ResponseError::error_response(&ApiError::NotFound(format!(
        "no such method: {} {}",
        req.method(),
        req.path()
    )))
}
