//! The inference layer: one place that runs the networks and their cascades, for the HTTP
//! handlers (`http`) and for `--role worker`'s broker jobs alike. It starts the decoder and
//! preprocessing pools, a batcher and supervised workers per network (or, `--role api`, the
//! broker's streams), and the multi-network services: faces (`face`), text (`text`), plates
//! (`plates`), super-resolution (`superres`), classifiers and the COCO detector (`objects`).
//! Nothing here speaks HTTP.

pub mod adult;
pub mod face;
pub mod family;
pub mod objects;
pub mod plates;
pub mod stages;
pub mod superres;
pub mod text;

use std::collections::HashMap;
use std::sync::Arc;

use actix::{Actor, Addr, Arbiter, Supervisor, SyncArbiter};
use futures_util::future::BoxFuture;

use crate::actors::{
    Batcher, Decoder, Enqueue, InferenceWorker, Job, Preprocessor, QueueLen, Refused, StoreActor, WorkerHealth,
};
use crate::broker::api::Broker;
use crate::config::{Config, ConfigError, Limits, ModelConfig, Role};
use crate::metrics;
use crate::models;
use crate::pipelines::batching::BatchPolicy;
use crate::pipelines::classify::LabelMap;
pub use family::{Family, Invalid, Services, Stage};

/// Every model family the server knows, by its `architecture` in the config: a new built-in
/// family is its file in this directory and one line here.
pub static FAMILIES: &[&dyn Family] = &[
    &objects::MobileNetV2,
    &objects::Declared,
    &objects::CenterNet,
    &face::Faces,
    &text::Text,
    &plates::Plates,
    &superres::RealEsrgan,
    &adult::Nsfw,
];

/// The Vision endpoints the families serve by themselves (`POST /api/v1/<path>`).
pub fn family_endpoints() -> impl Iterator<Item = &'static str> {
    FAMILIES.iter().filter_map(|f| f.endpoint())
}

/// The family of `architecture`, if the server has it.
pub fn family(architecture: &str) -> Option<&'static dyn Family> {
    FAMILIES.iter().copied().find(|f| f.architecture() == architecture)
}

/// The family of a model whose config was checked ([`check`]).
pub fn family_of(mc: &ModelConfig) -> &'static dyn Family {
    family(&mc.architecture)
        .unwrap_or_else(|| panic!("architecture `{}` not checked at load. This is a bug.", mc.architecture))
}

/// Checks what the config leaves to the families: each model's architecture is one the server
/// has, and its family accepts its modes, labels and settings (the error names the field).
pub fn check(config: &Config) -> Result<(), ConfigError> {
    for (name, mc) in &config.models {
        let Some(family) = family(&mc.architecture) else {
            let known: Vec<_> = FAMILIES.iter().map(|f| f.architecture()).collect();
            return Err(ConfigError::Invalid {
                field: format!("models.{name}.architecture"),
                message: format!("unknown architecture `{}` (one of: {})", mc.architecture, known.join(", ")),
            });
        };
        family.check(mc).map_err(|e| e.into_config(name))?;
    }
    Ok(())
}

/// The config read (`None`: the embedded defaults) and checked, the families' settings too.
/// The model repository (`repository.path`), when set, is read in too.
pub fn load_config(path: Option<&std::path::Path>) -> Result<Config, ConfigError> {
    let mut config = Config::load(path)?;
    if let Some(dir) = config.repository.path.clone() {
        config.add_repository(&dir)?;
    }
    check(&config)?;
    Ok(config)
}

/// The networks a model's workers load, one batcher each.
pub fn stages(name: &str, mc: &ModelConfig) -> Vec<Stage> {
    family_of(mc).stages(name, mc)
}

/// The broker streams of the model: one per network, except one for a model fed whole images
/// (a worker decodes each image and runs every network of the model).
pub fn broker_streams(name: &str, mc: &ModelConfig) -> Vec<String> {
    if family_of(mc).fed_whole() {
        vec![name.to_string()]
    } else {
        stages(name, mc).into_iter().map(|s| s.name).collect()
    }
}

/// The jobs per worker on the model's streams that autoscaling keeps (KEDA `streamLength`):
/// `queue_target`, except for a model fed whole images, whose stream holds images: the images
/// one worker takes at once (`max_batch`).
pub fn broker_stream_target(mc: &ModelConfig) -> usize {
    if family_of(mc).fed_whole() { mc.max_batch } else { mc.queue_target() }
}

/// The inference layer, as the handlers and `--role worker` use it: the decoder and
/// preprocessing pools, every served stage (a batcher and its workers, or the broker), and the
/// multi-network services (face, text, plates, super-resolution) whose cascades run here.
pub struct Inference {
    /// The image limits images are decoded within.
    pub limits: Arc<Limits>,
    /// Vision API mode → classifier or detector (`car_number` is the plates model's, `plates`).
    pub modes: HashMap<String, Arc<ServedModel>>,
    /// Every served model stage (a classifier, or one network of a cascade), in placement order.
    pub models: Vec<Arc<ServedModel>>,
    /// The multi-network services the placed models' families attached (the face model's stages
    /// and person store, the text model's, the plates model's, super-resolution's), by type:
    /// `infer.service::<text::TextService>()`.
    pub services: Services,
    /// The family endpoints served here (`Family::endpoint`), by path (`adult/detect`).
    pub endpoints: HashMap<&'static str, Arc<dyn family::ImageEndpoint>>,
    pub decoder: Addr<Decoder>,
    pub preprocessor: Addr<Preprocessor>,
    pub workers: Vec<Arc<WorkerHealth>>,
    /// Model stages with at least one worker here; ready when each has a live worker.
    pub placed_models: Vec<String>,
    /// `--role api`: the broker the stages' inputs go through.
    pub broker: Option<Arc<Broker>>,
}

/// The inference layer started: the state, and (`--role worker`) what feeds it from the broker.
pub struct Started {
    pub inference: Arc<Inference>,
    /// `--role worker`: the feeders, drained on shutdown before the server stops.
    pub feeders: Vec<Arc<crate::broker::worker::Feeder>>,
    /// `--role worker`: whether this worker reaches the broker (its feeders' last heartbeat).
    pub worker_broker_up: Option<Arc<std::sync::atomic::AtomicBool>>,
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

impl Inference {
    /// The service of type `S`, when a model of its family is placed here.
    pub fn service<S: std::any::Any + Send + Sync>(&self) -> Option<Arc<S>> {
        self.services.get::<S>()
    }
}

/// How a one-network model's outputs are read: labels, detector settings, input preparation.
#[derive(Default)]
pub struct Head {
    /// Classifiers and the COCO detector: the label table (its classes checked against the
    /// network's outputs).
    pub labels: Option<LabelMap>,
    /// The COCO detector's NMS and peaks.
    pub detector: Option<crate::pipelines::detect::DetectorParams>,
    pub prep: crate::pipelines::preprocess::ClassifierPrep,
    pub scores: crate::models::declared::Scores,
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

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Load(#[from] models::LoadError),
    #[error(transparent)]
    Labels(#[from] crate::pipelines::classify::LabelError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
}

/// Starts the inference layer of `role` inside the current actix `System`: the pools, every placed
/// model's stages (batchers and supervised workers; `--role api`: the broker's streams instead),
/// each model's service (its family's `attach`), and (`--role worker`) the feeders that take jobs
/// from the broker.
pub fn start(config: &Config, role: Role) -> Result<Started, StartError> {
    check(config)?;
    let placed = config.placed_models();
    if role.runs_models() {
        probe_devices(config, &placed)?;
    }
    let mut b = Builder::new(config, role, &placed);
    for name in &placed {
        let mc = &config.models[name];
        family_of(mc).attach(&mut b, name, mc)?;
    }
    Ok(b.finish())
}

/// Each GPU device is probed once, here on one thread, before its workers start: the log says
/// which adapter it runs on, or what is missing. (Probing creates and drops a Vulkan instance,
/// which the loader does not tolerate on several threads at once.)
fn probe_devices(config: &Config, placed: &[String]) -> Result<(), StartError> {
    for p in config.placement.iter().filter(|p| p.models.iter().any(|m| placed.contains(m))) {
        let device = &p.device;
        match device.probe() {
            Ok(adapter) => tracing::info!(device = %device, %adapter, "device found"),
            Err(e) => {
                tracing::error!(device = %device, reason = %e, "device unavailable: its workers will keep retrying")
            }
        }
    }
    Ok(())
}

/// `--role worker`: a model's whole pipeline on one image job (the model's name, the image, the
/// fault-injection mark).
pub type ImageJob = fn(Arc<Inference>, String, Vec<u8>, bool) -> BoxFuture<'static, crate::broker::codec::Outcome>;

/// `--role worker`: a model fed whole images: its workers (per stage) and how many images it holds.
struct WholeFeed {
    model: String,
    groups: Vec<Vec<Arc<WorkerHealth>>>,
    budget: usize,
    job: ImageJob,
}

/// The inference layer while it starts: what every model's stages and services are added to.
pub struct Builder<'c> {
    config: &'c Config,
    pub role: Role,
    /// `--role api`: every stage's inputs go through the broker; the models fed whole images go
    /// whole (one stream named after the model).
    pub broker: Option<Arc<Broker>>,
    decoder: Addr<Decoder>,
    preprocessor: Addr<Preprocessor>,
    modes: HashMap<String, Arc<ServedModel>>,
    models: Vec<Arc<ServedModel>>,
    workers: Vec<Arc<WorkerHealth>>,
    /// The services the families attach.
    pub services: Services,
    endpoints: HashMap<&'static str, Arc<dyn family::ImageEndpoint>>,
    /// `--role worker`: the models fed whole images, fed once the state exists.
    whole_feeds: Vec<WholeFeed>,
    feeders: Vec<Arc<crate::broker::worker::Feeder>>,
    worker_broker_up: Option<Arc<std::sync::atomic::AtomicBool>>,
    consumer: String,
}

impl<'c> Builder<'c> {
    fn new(config: &'c Config, role: Role, placed: &[String]) -> Self {
        if config.fault_injection.panic_marker.is_some() {
            tracing::warn!("fault injection is ON: inputs carrying the panic marker crash their worker");
        }
        let broker = (role == Role::Api).then(|| {
            let stages: Vec<(String, usize, std::time::Duration)> = placed
                .iter()
                .flat_map(|name| {
                    let mc = &config.models[name];
                    broker_streams(name, mc).into_iter().map(|stage| (stage, mc.queue_capacity, mc.max_queue_wait()))
                })
                .collect();
            Broker::start(&config.broker, &stages)
        });
        Self {
            config,
            role,
            broker,
            decoder: SyncArbiter::start(config.pipeline.decoders, || Decoder),
            preprocessor: SyncArbiter::start(config.pipeline.preprocessors, || Preprocessor),
            modes: HashMap::new(),
            models: Vec::new(),
            workers: Vec::new(),
            services: Services::default(),
            endpoints: HashMap::new(),
            whole_feeds: Vec::new(),
            feeders: Vec::new(),
            worker_broker_up: (role == Role::Worker).then(|| Arc::new(std::sync::atomic::AtomicBool::new(false))),
            consumer: crate::broker::replica_name(),
        }
    }

    /// A model's stages, one per network: a batcher and the placement's supervised workers
    /// (`--role api`: the broker's stream; `--role worker`: fed from it too, unless the model's
    /// images come whole).
    /// `head` says how a one-network model's outputs are read (`Head::default()`: a cascade's
    /// networks, read by its service).
    pub fn place(&mut self, name: &str, mc: &ModelConfig, head: Head) -> Result<Vec<Arc<ServedModel>>, StartError> {
        let (config, role) = (self.config, self.role);
        let fault_injection = config.fault_injection.panic_marker.is_some();
        let family = family_of(mc);
        let Head { labels, detector, prep, scores } = head;
        let mut stages = Vec::new();
        for Stage { name: stage, spec, max_batch } in family.stages(name, mc) {
            if role.runs_models() {
                models::check_weights(spec.weights())?;
            }
            let mut addrs = Vec::new();
            for p in config.placement.iter().filter(|p| role.runs_models() && p.models.iter().any(|m| m == name)) {
                let device = p.device.clone();
                for _ in 0..p.instances {
                    let health = Arc::new(WorkerHealth::new(&stage, &device, p.depth()));
                    self.workers.push(health.clone());
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
            let slots: usize = config
                .placement
                .iter()
                .filter(|p| p.models.iter().any(|m| m == name))
                .map(|p| p.instances * p.depth())
                .sum();
            let route = match &self.broker {
                Some(b) => Route::Remote(b.clone()),
                None => {
                    let batcher = Batcher::new(&stage, policy, addrs).start();
                    if let Some(up) = self.worker_broker_up.as_ref().filter(|_| !family.fed_whole()) {
                        // Batches in flight on every worker plus one forming: what the worker
                        // takes from the stream at once.
                        let budget = (max_batch * (slots + 1)).min(mc.queue_capacity);
                        self.feeders.push(crate::broker::worker::Feeder::start(
                            &config.broker,
                            &self.consumer,
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
                model: name.to_string(),
                modes: mc.modes.clone(),
                queue_capacity: mc.queue_capacity,
                queue_target: mc.queue_target(),
                route,
                labels: labels.clone(),
                threshold: mc.threshold,
                top_k: mc.top_k,
                detector,
                prep,
                scores,
                workers: health,
            });
            self.models.push(served.clone());
            stages.push(served);
        }
        Ok(stages)
    }

    /// The Vision modes a one-network model answers (objects/detect).
    pub fn serve_modes(&mut self, mc: &ModelConfig, served: &Arc<ServedModel>) {
        for mode in &mc.modes {
            self.modes.insert(mode.clone(), served.clone());
        }
    }

    /// `--role worker`: `job` runs each of the model's whole-image jobs here (nothing on `--role
    /// all` or `api`). The images a worker holds at once: `max_batch` (their networks' inputs
    /// batch together).
    pub fn feed_whole(&mut self, name: &str, mc: &ModelConfig, stages: &[Arc<ServedModel>], job: ImageJob) {
        if !self.role.serves_api() {
            let groups = stages.iter().map(|s| s.workers.clone()).collect();
            self.whole_feeds.push(WholeFeed { model: name.to_string(), groups, budget: mc.max_batch, job });
        }
    }

    /// The stages of a model whose family serves one per process through its service `S`
    /// (`what` names the family in the error of a second one); `head` as for [`Self::place`].
    pub fn place_one<S: std::any::Any + Send + Sync>(
        &mut self,
        name: &str,
        mc: &ModelConfig,
        what: &str,
        head: Head,
    ) -> Result<Vec<Arc<ServedModel>>, StartError> {
        if self.services.contains::<S>() {
            return Err(StartError::Config(ConfigError::Invalid {
                field: format!("models.{name}"),
                message: format!("only one {what} model can be placed per process"),
            }));
        }
        self.place(name, mc, head)
    }

    /// Serves the family endpoint `path` (`Family::endpoint`) by `service`; on `--role worker`,
    /// when the family's images come whole, the model's jobs are answered by it too.
    pub fn serve_endpoint(
        &mut self,
        path: &'static str,
        service: Arc<dyn family::ImageEndpoint>,
        name: &str,
        mc: &ModelConfig,
    ) {
        let stage = service.stage().clone();
        self.endpoints.insert(path, service);
        if family_of(mc).fed_whole() {
            self.feed_whole(name, mc, &[stage], |state, model, image, poisoned| {
                Box::pin(family::endpoint_job(state, model, image, poisoned))
            });
        }
    }

    /// The person store, opened once (`--role all` / `api`; workers keep no persons).
    pub fn open_store(&self) -> Result<Option<Addr<StoreActor>>, StartError> {
        self.role.serves_api().then(|| open_store(self.config)).transpose()
    }

    fn finish(self) -> Started {
        let placed: Vec<String> = self.models.iter().map(|m| m.name.clone()).collect();
        metrics::register_zero(&self.workers.iter().map(|w| (w.model.clone(), w.device.clone())).collect::<Vec<_>>());
        let inference = Arc::new(Inference {
            limits: Arc::new(self.config.limits.clone()),
            modes: self.modes,
            models: self.models,
            services: self.services,
            endpoints: self.endpoints,
            decoder: self.decoder,
            preprocessor: self.preprocessor,
            workers: self.workers,
            placed_models: placed,
            broker: self.broker,
        });
        let mut feeders = self.feeders;
        for WholeFeed { model, groups, budget, job } in self.whole_feeds {
            let Some(up) = &self.worker_broker_up else { break };
            let (state, name) = (inference.clone(), model.clone());
            let runner: crate::broker::worker::ImageRunner =
                Arc::new(move |image, poisoned| job(state.clone(), name.clone(), image, poisoned));
            feeders.push(crate::broker::worker::Feeder::start(
                &self.config.broker,
                &self.consumer,
                &model,
                crate::broker::worker::Runner::Image(runner),
                groups,
                budget,
                up.clone(),
            ));
        }
        Started { inference, feeders, worker_broker_up: self.worker_broker_up }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EMBEDDED_DEFAULT;

    fn checked(text: &str) -> Result<Config, ConfigError> {
        let config = Config::from_toml(text, "t")?;
        check(&config)?;
        Ok(config)
    }

    #[test]
    fn every_shipped_config_is_accepted_by_its_families() {
        for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/config")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                load_config(Some(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            }
        }
    }

    #[test]
    fn a_familys_settings_are_checked_naming_the_field() {
        let err = |text: &str| checked(text).unwrap_err().to_string();
        let e = err(&EMBEDDED_DEFAULT.replace("iou = 0.5", "iou = 1.5"));
        assert!(e.contains("models.centernet.detector.iou"), "{e}");
        let e = err(&EMBEDDED_DEFAULT.replace("modes = [\"multiobject\", \"pedestrian\"]", "modes = [\"scene\"]"));
        assert!(e.contains("models.centernet.modes"), "{e}");
        // A key no family of the model's takes (another family's, or misspelt) is refused by name.
        let e = err(&EMBEDDED_DEFAULT.replace("iou = 0.5", "iou = 0.5\n[models.centernet.text]\nbox_thresh = 0.3"));
        assert!(e.contains("models.centernet.text") && e.contains("unknown field"), "{e}");
        let e = err(&EMBEDDED_DEFAULT.replace("iou = 0.5", "iou = 0.5\nmax_iou_typo = 1"));
        assert!(e.contains("models.centernet.detector.max_iou_typo"), "{e}");
        // An architecture the server has not.
        let e = err(&EMBEDDED_DEFAULT.replacen("architecture = \"centernet\"", "architecture = \"yolo\"", 1));
        assert!(e.contains("models.centernet.architecture") && e.contains("yolo") && e.contains("realesrgan"), "{e}");
    }

    #[test]
    fn each_family_names_its_stages_and_how_the_broker_feeds_them() {
        let c = load_config(None).unwrap();
        let names = |m: &str| stages(m, &c.models[m]).into_iter().map(|s| s.name).collect::<Vec<_>>();
        assert_eq!(names("mobilenet_v2"), ["mobilenet_v2"]);
        assert_eq!(names("face"), ["face_pnet", "face_rnet", "face_onet", "face_embed"]);
        assert_eq!(names("text"), ["text_det", "text_cls", "text_rec"]);
        assert_eq!(broker_streams("mobilenet_v2", &c.models["mobilenet_v2"]), ["mobilenet_v2"]);
        assert_eq!(broker_streams("face", &c.models["face"]), ["face"]);
        assert_eq!(broker_stream_target(&c.models["face"]), c.models["face"].max_batch);
        assert_eq!(broker_stream_target(&c.models["mobilenet_v2"]), c.models["mobilenet_v2"].queue_target());
        // Every family is listed once, by its own name.
        let mut archs: Vec<_> = FAMILIES.iter().map(|f| f.architecture()).collect();
        archs.sort();
        archs.dedup();
        assert_eq!(archs.len(), FAMILIES.len());
    }
}
