//! The edge: actix-web routes, shared state, and server start-up (actors, placement, listener).

mod auth;
mod disconnect;
mod gate;
mod improve;
mod multipart;
mod objects;
mod persons;
mod placement;
mod plates;
mod playground;
mod ratelimit;
mod stages;
mod text;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Instant;

use actix::{Actor, Addr, Arbiter, Supervisor, SyncArbiter};
use actix_web::web::{self, Data};
use actix_web::{App, HttpResponse, HttpServer};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio::sync::Semaphore;

pub use auth::{Auth, AuthQuery};

use crate::actors::{
    Batcher, Decoder, Enqueue, InferenceWorker, Job, Preprocessor, QueueLen, Refused, StoreActor, WorkerHealth,
};
use crate::broker::api::Broker;
use crate::config::{Config, Limits, ModelConfig, Role};
use crate::error::ApiError;
use crate::metrics;
use crate::models::{self, DeviceSpec, mobilenet_v2};
use crate::pipelines::batching::BatchPolicy;
use crate::pipelines::classify::LabelMap;

/// The face model: its four stages (each a `ServedModel` with its own batcher and workers), its
/// settings and the person store.
pub struct FaceService {
    pub name: String,
    pub pnet: Arc<ServedModel>,
    pub rnet: Arc<ServedModel>,
    pub onet: Arc<ServedModel>,
    pub embed: Arc<ServedModel>,
    pub config: crate::config::FaceConfig,
    /// The person store (not on `--role worker`).
    pub store: Option<Addr<StoreActor>>,
    /// `--role api`: the broker that takes each image to a worker, where the whole cascade runs
    /// (the cascade's inputs are 29–49× the photo's bytes: README, Distributed mode).
    pub remote: Option<Arc<Broker>>,
}

impl FaceService {
    pub fn stages(&self) -> [&Arc<ServedModel>; 4] {
        [&self.pnet, &self.rnet, &self.onet, &self.embed]
    }
}

/// A model stage this process serves: its batcher and (classifiers) how outputs become labels.
pub struct ServedModel {
    /// The stage's name (the model's own for a classifier; `<model>_pnet` … for the face model).
    pub name: String,
    /// The configured model it belongs to.
    pub model: String,
    pub modes: Vec<String>,
    pub queue_capacity: usize,
    pub queue_target: usize,
    /// Where its inputs go: the local batcher, or the broker (`--role api`).
    pub route: Route,
    /// Classifiers and the COCO detector.
    pub labels: Option<LabelMap>,
    pub threshold: f32,
    pub top_k: usize,
    /// The COCO detector's NMS and peaks (None: not a detector).
    pub detector: Option<crate::pipelines::detect::DetectorParams>,
    /// Classifiers: how an image becomes the input, and what the outputs are.
    pub prep: crate::pipelines::preprocess::ClassifierPrep,
    pub scores: crate::models::declared::Scores,
    pub workers: Vec<Arc<WorkerHealth>>,
}

/// A stage's way to its workers.
pub enum Route {
    Local(Addr<Batcher>),
    /// Through the broker to the workers of `--role worker` processes.
    Remote(Arc<Broker>),
}

impl ServedModel {
    /// Whether work for the stage can be taken now: a live local worker, or (through the broker)
    /// the broker reachable; jobs then wait on the stream for a worker, up to `max_queue_wait_ms`.
    pub fn has_live_worker(&self) -> bool {
        match &self.route {
            Route::Local(_) => self.workers.iter().any(|w| w.is_alive()),
            Route::Remote(broker) => broker.is_up() && self.remote_stage(broker).is_none_or(|s| broker.served(s)),
        }
    }

    /// Why [`Self::has_live_worker`] is false.
    pub fn not_live_reason(&self) -> String {
        match &self.route {
            Route::Local(_) => format!("model {} is not ready: no live worker (loading or restarting)", self.name),
            Route::Remote(broker) if !broker.is_up() => format!("broker unavailable ({})", broker.down_reason()),
            Route::Remote(_) => format!("model {} unavailable: no live worker on the broker", self.name),
        }
    }

    /// The broker stream this stage's jobs go on (its own, or its model's when the model's images
    /// go whole, as the face cascade's networks).
    fn remote_stage<'b>(&self, broker: &'b Broker) -> Option<&'b Arc<crate::broker::api::Stage>> {
        broker.stage(&self.name).or_else(|| broker.stage(&self.model))
    }

    /// Hands one input to the stage; `Err` when it is refused (queue full, broker down).
    pub async fn enqueue(&self, job: Job) -> Result<(), Refused> {
        match &self.route {
            Route::Local(batcher) => {
                batcher.send(Enqueue(job)).await.unwrap_or_else(|_| Err(Refused::Stopping(self.name.clone())))
            }
            Route::Remote(broker) => broker.enqueue(&self.name, job),
        }
    }

    /// Items waiting: the local batcher's queue, or this replica's jobs outstanding on the broker.
    pub async fn queue_len(&self) -> usize {
        match &self.route {
            // A batcher that cannot answer (only while the system stops) shows an empty queue.
            Route::Local(batcher) => batcher.send(QueueLen).await.unwrap_or(0),
            Route::Remote(broker) => broker.outstanding(&self.name),
        }
    }

    /// Live workers: local ones, or the broker's heartbeats for the stage.
    pub fn live_workers(&self) -> usize {
        match &self.route {
            Route::Local(_) => self.workers.iter().filter(|w| w.is_alive()).count(),
            // The face model's networks have no streams of their own: its images go whole.
            Route::Remote(broker) => {
                self.remote_stage(broker).map_or(0, |s| s.live_workers.load(std::sync::atomic::Ordering::Relaxed))
            }
        }
    }
}

pub struct AppState {
    pub auth: Auth,
    pub limits: Arc<Limits>,
    /// Vision API mode → classifier (`car_number` is the plates model's, `plates`).
    pub modes: HashMap<String, Arc<ServedModel>>,
    /// Every served model stage (a classifier, or one network of the face cascade), in placement order.
    pub models: Vec<Arc<ServedModel>>,
    /// The face model's stages and the person store, when a face model is placed here.
    pub face: Option<Arc<FaceService>>,
    /// The text model's stages, when a text model is placed here.
    pub text: Option<Arc<text::TextService>>,
    /// The plates model's stages, when a plates model is placed here.
    pub plates: Option<Arc<plates::PlateService>>,
    /// photo/improve `resolution` (a `realesrgan` model placed).
    pub superres: Option<Arc<improve::SuperResService>>,
    pub decoder: Addr<Decoder>,
    pub preprocessor: Addr<Preprocessor>,
    /// Images admitted and not yet answered, over all requests.
    pub admission: Arc<Semaphore>,
    /// The in-flight work byte budget, in KiB permits (`limits.max_inflight_bytes`).
    pub work_budget: Arc<Semaphore>,
    pub workers: Vec<Arc<WorkerHealth>>,
    /// Model stages with at least one worker here; ready when each has a live worker.
    pub placed_models: Vec<String>,
    pub panic_marker: Option<String>,
    pub metrics: PrometheusHandle,
    pub started: Instant,
    pub role: Role,
    /// `--role api`: the broker the stages' inputs go through.
    pub broker: Option<Arc<Broker>>,
    /// `--role worker`: whether this worker reaches the broker (its feeders' last heartbeat).
    pub worker_broker_up: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// Each Vision endpoint's gate, by path (`[admission]`; taken in `multipart::read_upload`).
    pub gates: HashMap<&'static str, Arc<gate::Gate>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Load(#[from] models::LoadError),
    #[error(transparent)]
    Labels(#[from] crate::pipelines::classify::LabelError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
}

/// A started server: where it listens and the future that runs it.
pub struct RunningServer {
    pub addr: SocketAddr,
    /// `server.admin_port`'s listener, where set.
    pub admin_addr: Option<SocketAddr>,
    pub server: actix_web::dev::Server,
    /// `--role worker`: the feeders, drained on shutdown before the server stops.
    pub feeders: Vec<Arc<crate::broker::worker::Feeder>>,
}

impl RunningServer {
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
    let tokens = config.load_tokens()?;
    if tokens.is_empty() {
        tracing::warn!("NO AUTH TOKENS CONFIGURED: every request is accepted. Set auth.tokens or auth.tokens_file.");
    } else {
        tracing::info!(count = tokens.len(), "auth tokens loaded");
    }
    let placed = config.placed_models();
    let fault_injection = config.fault_injection.panic_marker.is_some();
    if fault_injection {
        tracing::warn!("fault injection is ON: inputs carrying the panic marker crash their worker");
    }

    // Each GPU device is probed once, here on one thread, before its workers start: the log says
    // which adapter it runs on, or what is missing. (Probing creates and drops a Vulkan instance,
    // which the loader does not tolerate on several threads at once.)
    for p in config.placement.iter().filter(|p| role.runs_models() && p.models.iter().any(|m| placed.contains(m))) {
        let device = DeviceSpec::parse(&p.device).map_err(models::LoadError::from)?;
        match device.probe() {
            Ok(adapter) => tracing::info!(device = %device, %adapter, "device found"),
            Err(e) => {
                tracing::error!(device = %device, reason = %e, "device unavailable: its workers will keep retrying")
            }
        }
    }

    let decoders = config.pipeline.decoders;
    let decoder = SyncArbiter::start(decoders, || Decoder);
    let preprocessor = SyncArbiter::start(config.pipeline.preprocessors, || Preprocessor);

    let mut modes = HashMap::new();
    let mut served_models = Vec::new();
    let mut all_workers = Vec::new();
    let mut face = None;
    let mut text_service = None;
    let mut plate_service = None;
    let mut superres_service = None;
    // `--role api`: every stage's inputs go through the broker; the face, text and plates models'
    // images go whole (one stream named after the model).
    let broker = (role == Role::Api).then(|| {
        let stages: Vec<(String, usize, std::time::Duration)> = placed
            .iter()
            .flat_map(|name| {
                let mc = &config.models[name];
                mc.broker_streams(name).into_iter().map(|stage| (stage, mc.queue_capacity, mc.max_queue_wait()))
            })
            .collect();
        Broker::start(&config.broker, &stages)
    });
    // `--role worker`: what feeds the models fed whole images (started once the state exists).
    let mut whole_feeds = Vec::new();
    let mut feeders = Vec::new();
    let worker_broker_up = (role == Role::Worker).then(|| Arc::new(std::sync::atomic::AtomicBool::new(false)));
    let consumer = crate::broker::replica_name();
    for name in &placed {
        let mc: &ModelConfig = &config.models[name];
        let labels = match &mc.labels {
            Some(path) => {
                let classes = match (mc.architecture, &mc.io) {
                    (crate::config::Architecture::Centernet, _) => crate::models::centernet::CENTERNET_CLASSES,
                    (crate::config::Architecture::Onnx, Some(io)) => io.classes,
                    _ => mobilenet_v2::NUM_CLASSES,
                };
                Some(LabelMap::load(path, classes)?)
            }
            None => None,
        };
        let mut stages = Vec::new();
        for (stage, spec, max_batch) in mc.stages(name) {
            if role.runs_models() {
                models::check_weights(spec.weights())?;
            }
            let mut addrs = Vec::new();
            for p in config.placement.iter().filter(|p| role.runs_models() && p.models.contains(name)) {
                let device = DeviceSpec::parse(&p.device).map_err(models::LoadError::from)?;
                for _ in 0..p.instances {
                    let health = Arc::new(WorkerHealth::new(&stage, &device, p.depth()));
                    all_workers.push(health.clone());
                    let worker_health = health.clone();
                    let (spec, device, sup) = (spec.clone(), device.clone(), config.supervisor.clone());
                    let arbiter = Arbiter::new();
                    let addr = Supervisor::start_in_arbiter(&arbiter.handle(), move |_| {
                        InferenceWorker::new(spec, device, health, sup, fault_injection)
                    });
                    addrs.push((addr.recipient(), worker_health));
                    // The arbiter thread lives until the System stops.
                    std::mem::forget(arbiter);
                }
            }
            let policy = BatchPolicy {
                max_batch,
                max_delay: mc.max_delay(),
                capacity: mc.queue_capacity,
                max_queue_wait: mc.max_queue_wait(),
            };
            let health: Vec<_> = addrs.iter().map(|(_, h)| h.clone()).collect();
            let slots: usize =
                config.placement.iter().filter(|p| p.models.contains(name)).map(|p| p.instances * p.depth()).sum();
            let route = match &broker {
                Some(b) => Route::Remote(b.clone()),
                None => {
                    let batcher = Batcher::new(&stage, policy, addrs).start();
                    if let Some(up) = worker_broker_up.as_ref().filter(|_| !mc.architecture.fed_whole()) {
                        // Batches in flight on every worker plus one forming: what the worker
                        // takes from the stream at once.
                        let budget = (max_batch * (slots + 1)).min(mc.queue_capacity);
                        feeders.push(crate::broker::worker::Feeder::start(
                            &config.broker,
                            &consumer,
                            &stage,
                            crate::broker::worker::Runner::Batcher(batcher.clone()),
                            vec![health.clone()],
                            budget,
                            up.clone(),
                        ));
                    }
                    Route::Local(batcher)
                }
            };
            metrics::register_model(&stage, mc.queue_capacity, mc.queue_target());
            let served = Arc::new(ServedModel {
                name: stage.clone(),
                model: name.clone(),
                modes: mc.modes.clone(),
                queue_capacity: mc.queue_capacity,
                queue_target: mc.queue_target(),
                route,
                labels: labels.clone(),
                threshold: mc.threshold,
                top_k: mc.top_k,
                detector: (mc.architecture == crate::config::Architecture::Centernet)
                    .then(|| mc.detector.unwrap_or_default()),
                prep: match mc.io {
                    Some(io) => crate::pipelines::preprocess::ClassifierPrep::Declared(io),
                    None => crate::pipelines::preprocess::ClassifierPrep::ImageNet,
                },
                scores: mc.io.map(|io| io.output).unwrap_or_default(),
                workers: health,
            });
            if matches!(
                mc.architecture,
                crate::config::Architecture::MobilenetV2
                    | crate::config::Architecture::Centernet
                    | crate::config::Architecture::Onnx
            ) {
                for mode in &mc.modes {
                    modes.insert(mode.clone(), served.clone());
                }
            }
            served_models.push(served.clone());
            stages.push(served);
        }
        if let (Some(fc), [pnet, rnet, onet, embed]) = (&mc.faces, stages.as_slice()) {
            if face.is_some() {
                return Err(StartError::Config(crate::config::ConfigError::Invalid {
                    field: format!("models.{name}"),
                    message: "only one face model can be placed per process".into(),
                }));
            }
            if !role.serves_api() {
                let groups = [pnet, rnet, onet, embed].map(|s| s.workers.clone()).to_vec();
                whole_feeds.push((WholeImage::Face, name.clone(), groups, mc.max_batch));
            }
            // Opened on the store's own thread (the PostgreSQL client blocks and must not live on
            // the async runtime); its first start reports back. After a panic the arbiter's new
            // actor gets no store: requests fail clearly instead of touching one in an unknown state.
            // Workers keep no persons.
            let store = role.serves_api().then(|| open_store(&config)).transpose()?;
            face = Some(Arc::new(FaceService {
                name: name.clone(),
                pnet: pnet.clone(),
                rnet: rnet.clone(),
                onet: onet.clone(),
                embed: embed.clone(),
                config: fc.clone(),
                store,
                remote: broker.clone(),
            }));
        }
        let groups = stages.iter().map(|s| s.workers.clone()).collect::<Vec<_>>();
        if mc.architecture == crate::config::Architecture::Centernet && !role.serves_api() {
            whole_feeds.push((WholeImage::Detector, name.clone(), groups.clone(), mc.max_batch));
        }
        if let (crate::config::Architecture::Text, [det, cls, rec]) = (&mc.architecture, stages.as_slice()) {
            if text_service.is_some() {
                return Err(StartError::Config(crate::config::ConfigError::Invalid {
                    field: format!("models.{name}"),
                    message: "only one text model can be placed per process".into(),
                }));
            }
            let charset = models::ppocr::Charset::load(&mc.weights.join(crate::config::TEXT_REC_FILE))?;
            text_service = Some(Arc::new(text::TextService {
                name: name.clone(),
                det: det.clone(),
                cls: cls.clone(),
                rec: rec.clone(),
                params: mc.text.unwrap_or_default(),
                charset: Arc::new(charset),
                remote: broker.clone(),
            }));
            if !role.serves_api() {
                whole_feeds.push((WholeImage::Text, name.clone(), groups.clone(), mc.max_batch));
            }
        }
        if let (crate::config::Architecture::Plates, [det, rec]) = (&mc.architecture, stages.as_slice()) {
            if plate_service.is_some() {
                return Err(StartError::Config(crate::config::ConfigError::Invalid {
                    field: format!("models.{name}"),
                    message: "only one plates model can be placed per process".into(),
                }));
            }
            let charset = models::ppocr::Charset::load(&mc.plate_recognizer())?;
            plate_service = Some(Arc::new(plates::PlateService {
                name: name.clone(),
                det: det.clone(),
                rec: rec.clone(),
                params: mc.plates.unwrap_or_default(),
                charset: Arc::new(charset),
                remote: broker.clone(),
            }));
            if !role.serves_api() {
                whole_feeds.push((WholeImage::Plates, name.clone(), groups, mc.max_batch));
            }
        }
        if let (crate::config::Architecture::Realesrgan, [art, photo]) = (&mc.architecture, stages.as_slice()) {
            if superres_service.is_some() {
                return Err(StartError::Config(crate::config::ConfigError::Invalid {
                    field: format!("models.{name}"),
                    message: "only one super-resolution model can be placed per process".into(),
                }));
            }
            superres_service = Some(Arc::new(improve::SuperResService {
                name: name.clone(),
                art: art.clone(),
                photo: photo.clone(),
                config: mc.superres.unwrap_or_default(),
                remote: broker.clone(),
            }));
            if !role.serves_api() {
                let groups = stages.iter().map(|s| s.workers.clone()).collect();
                whole_feeds.push((WholeImage::SuperRes, name.clone(), groups, mc.max_batch));
            }
        }
    }
    let placed: Vec<String> = served_models.iter().map(|m| m.name.clone()).collect();

    metrics::register_zero(&all_workers.iter().map(|w| (w.model.clone(), w.device.clone())).collect::<Vec<_>>());
    let state = Data::new(AppState {
        auth: Auth::new(tokens, config.auth.providers.clone(), config.rate_limit),
        limits: Arc::new(config.limits.clone()),
        modes,
        models: served_models,
        face,
        text: text_service,
        plates: plate_service,
        superres: superres_service,
        decoder,
        preprocessor,
        admission: Arc::new(Semaphore::new(config.limits.max_inflight_images)),
        work_budget: Arc::new(Semaphore::new(objects::budget_permits(config.limits.max_inflight_bytes))),
        workers: all_workers,
        placed_models: placed,
        panic_marker: config.fault_injection.panic_marker.clone(),
        metrics: metrics_handle,
        started: Instant::now(),
        role,
        broker,
        worker_broker_up,
        // One gate per Vision endpoint: requests beyond its active slots wait before their body
        // is read, and are refused after `admission.max_wait_ms`.
        gates: GATED_ENDPOINTS
            .iter()
            .map(|(path, endpoint)| (*path, gate::Gate::new(endpoint, config.admission)))
            .collect(),
    });

    for (kind, model, groups, budget) in whole_feeds {
        let Some(up) = &state.worker_broker_up else { break };
        let runner_state = state.clone();
        let runner_model = model.clone();
        let runner: crate::broker::worker::ImageRunner = Arc::new(move |image, poisoned| {
            let state = runner_state.clone();
            match kind {
                WholeImage::Face => Box::pin(persons::face_job(state, image)),
                WholeImage::Text => Box::pin(text::text_job(state, image)),
                WholeImage::Plates => Box::pin(plates::plates_job(state, image)),
                WholeImage::Detector => Box::pin(objects::detector_job(state, runner_model.clone(), image, poisoned)),
                WholeImage::SuperRes => Box::pin(improve::superres_job(state, image, poisoned)),
            }
        });
        // The images a worker holds at once: `max_batch` (their networks' inputs batch together).
        feeders.push(crate::broker::worker::Feeder::start(
            &config.broker,
            &consumer,
            &model,
            crate::broker::worker::Runner::Image(runner),
            groups,
            budget,
            up.clone(),
        ));
    }

    // Freed memory back to the OS once the work stops (`server.trim_interval_ms`, `alloc`): no
    // image admitted and no forward pass since the last tick, once per quiet period.
    if config.server.trim_interval_ms > 0 {
        let (state, max) = (state.clone(), config.limits.max_inflight_images);
        let every = std::time::Duration::from_millis(config.server.trim_interval_ms);
        actix_web::rt::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let (mut last_busy, mut trimmed) = (-1.0, false);
            loop {
                tick.tick().await;
                let now = Instant::now();
                let busy: f64 = state.workers.iter().map(|w| w.sample(now).busy_seconds_total).sum();
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
    .listen(listener)
    .map_err(|source| StartError::Bind { addr: addr.to_string(), source })?;
    if let Some(l) = admin {
        server = server.listen(l).map_err(|source| StartError::Bind { addr: format!("{admin_addr:?}"), source })?;
        tracing::info!(addr = ?admin_addr, "admin listening (/metrics, /health/*, /admin)");
    }
    let server = server.run();
    tracing::info!(%addr, "listening");
    Ok(RunningServer { addr, admin_addr, server, feeders })
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

/// A connection that came in on the admin listener (`server.admin_port`).
struct AdminConnection;

/// The admin surface: what probes, Prometheus and operators use.
fn is_admin_path(path: &str) -> bool {
    path == "/metrics" || path.starts_with("/health/") || path == "/admin" || path.starts_with("/admin/")
}

/// `--role worker`: the models whose images come whole and run every network here.
#[derive(Debug, Clone, Copy)]
enum WholeImage {
    Face,
    Text,
    Plates,
    /// The COCO detector (the model named beside it).
    Detector,
    /// Super-resolution (each job's factor and network in its header).
    SuperRes,
}

/// The person store's actor, opened on its own thread (its first start reports back).
fn open_store(config: &Config) -> Result<Addr<StoreActor>, StartError> {
    let (opened_tx, opened_rx) = std::sync::mpsc::channel();
    let store = SyncArbiter::start(1, {
        let first = std::sync::Mutex::new(Some((config.store.clone(), opened_tx)));
        move || {
            let first = first.lock().expect("store opener. This is a bug.").take();
            StoreActor::new(first.and_then(|(store_config, opened)| {
                match crate::store::PersonStore::open_config(&store_config, crate::models::sface::EMBEDDING_LEN) {
                    Ok(store) => {
                        let _ = opened.send(Ok(()));
                        Some(store)
                    }
                    Err(e) => {
                        let _ = opened.send(Err(e));
                        None
                    }
                }
            }))
        }
    });
    opened_rx.recv().map_err(|_| crate::store::StoreError::Unavailable)??;
    Ok(store)
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
        .route("/api/v1/photo/improve", web::post().to(improve::improve))
        .route("/", web::get().to(playground::page))
        .route("/playground", web::get().to(playground::page));
}

async fn metrics_page(state: Data<AppState>) -> HttpResponse {
    let now = Instant::now();
    let samples: Vec<_> = state.workers.iter().map(|w| w.sample(now)).collect();
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(metrics::render(&state.metrics, &samples))
}

async fn ready(state: Data<AppState>) -> HttpResponse {
    if let Some(broker) = &state.broker {
        return ready_api(broker);
    }
    let broker_down = state.worker_broker_up.as_ref().is_some_and(|up| !up.load(std::sync::atomic::Ordering::Acquire));
    let per_model: serde_json::Map<String, serde_json::Value> = state
        .placed_models
        .iter()
        .map(|m| {
            let live = state.workers.iter().filter(|w| &w.model == m && w.is_alive()).count();
            (m.clone(), json!(live))
        })
        .collect();
    let ready = !broker_down && per_model.values().all(|v| v.as_u64().unwrap_or(0) > 0);
    // Why each model without a live worker has none (what its workers last failed on).
    let why: serde_json::Map<String, serde_json::Value> = state
        .placed_models
        .iter()
        .filter(|m| per_model[*m].as_u64() == Some(0))
        .map(|m| {
            let reasons: Vec<String> = state
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
