//! What a model family is to the server: the one contract each family implements beside its
//! service (`face`, `text`, `plates`, `superres`, `objects`), listed once in [`super::FAMILIES`].
//! The config knows only the family's name (`architecture`) and hands its own settings over
//! unread (`ModelConfig::settings`); the family checks them, names the networks its workers load,
//! and attaches its service to the inference layer. A new built-in family whose networks are graph
//! files is one file here and one line in the registry.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use super::{Builder, StartError};
use crate::config::{ConfigError, ModelConfig};
use crate::models::ModelSpec;

/// A model family: what a model of `architecture = "<name>"` is made of and serves.
pub trait Family: Sync {
    /// Its `architecture` in the config.
    fn architecture(&self) -> &'static str;

    /// Whether, in distributed mode, the model's images go whole to a worker, which decodes them
    /// and runs every network of the model (a cascade's inputs are 5–50× the file's bytes); a
    /// one-network classifier's input goes instead.
    fn fed_whole(&self) -> bool {
        true
    }

    /// Checks the model's modes, labels and settings; the error names the field below
    /// `models.<name>`.
    fn check(&self, mc: &ModelConfig) -> Result<(), Invalid>;

    /// The networks the model's workers load, one batcher each.
    fn stages(&self, name: &str, mc: &ModelConfig) -> Vec<Stage>;

    /// Places the model's stages ([`Builder::place`]) and attaches what serves them.
    fn attach(&self, b: &mut Builder<'_>, name: &str, mc: &ModelConfig) -> Result<(), StartError>;

    /// A Vision endpoint the family serves by itself, `POST /api/v1/<path>`: the edge routes it,
    /// reads the request (auth, gate, upload, `meta.images`, admission) and answers each image as
    /// an `objects[]` entry of `status`, `name`, `error` and the fields its [`ImageEndpoint`]
    /// (registered by `attach` through [`Builder::serve_endpoint`]) gives; unplaced, the endpoint
    /// answers that it is not served.
    fn endpoint(&self) -> Option<&'static str> {
        None
    }
}

/// What answers a family endpoint, one image at a time.
pub trait ImageEndpoint: Send + Sync {
    /// The stage the request's images are admitted against (a live worker, its queue).
    fn stage(&self) -> &Arc<super::ServedModel>;

    /// `--role api`, for a family fed whole images: the broker the images go to, whole, on the
    /// model's stream.
    fn remote(&self) -> Option<&Arc<crate::broker::api::Broker>>;

    /// One decoded image's fields of its entry, computed here.
    fn answer<'a>(
        &'a self,
        state: &'a super::Inference,
        image: Arc<crate::pipelines::decode::DecodedImage>,
        poisoned: bool,
    ) -> futures_util::future::BoxFuture<
        'a,
        Result<serde_json::Map<String, serde_json::Value>, super::stages::StageError>,
    >;

    /// The fields a failed file's entry carries beside `status`, `name` and `error` (those the
    /// endpoint's schema requires).
    fn failed(&self) -> serde_json::Map<String, serde_json::Value>;
}

/// `--role worker`: one image job of a family endpoint's model fed whole images: decode, the
/// endpoint's answer, its fields as JSON (the api puts them in the entry).
pub async fn endpoint_job(
    state: Arc<super::Inference>,
    model: String,
    image: Vec<u8>,
    poisoned: bool,
) -> crate::broker::codec::Outcome {
    let Some(endpoint) = state.endpoints.values().find(|e| e.stage().model == model).cloned() else {
        return crate::broker::codec::Outcome::Failed {
            status: crate::error::FileStatus::Permanent,
            message: format!("no endpoint of model {model} on this worker. This is a bug."),
        };
    };
    let encode = |fields: &serde_json::Map<String, serde_json::Value>| {
        serde_json::to_vec(fields).expect("a JSON object serializes. This is a bug.")
    };
    super::stages::image_job(&state, &model, image, |img| endpoint.answer(&state, img, poisoned), encode).await
}

/// One network of a model: its stage's name (the model's own for a one-network model;
/// `<model>_pnet` … for a cascade), what its workers load, and its largest batch.
#[derive(Clone)]
pub struct Stage {
    pub name: String,
    pub spec: ModelSpec,
    pub max_batch: usize,
}

impl Stage {
    pub fn new(name: impl Into<String>, spec: ModelSpec, max_batch: usize) -> Self {
        Self { name: name.into(), spec, max_batch }
    }
}

/// A family's refusal of a model's config: the field below `models.<name>` (empty: the model's
/// section itself) and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }

    /// A sub-section's own check (`(field, message)` within `section`).
    pub fn within<M: Into<String>>(section: &str) -> impl Fn((&'static str, M)) -> Self + '_ {
        move |(field, message)| Self::new(format!("{section}.{field}"), message)
    }

    pub fn into_config(self, model: &str) -> ConfigError {
        let field =
            if self.field.is_empty() { format!("models.{model}") } else { format!("models.{model}.{}", self.field) };
        ConfigError::Invalid { field, message: self.message }
    }
}

/// The family's settings read from the model's section: `T` names every key the family takes
/// (`#[serde(deny_unknown_fields)]`), so a key of another family's or a misspelt one is refused.
pub fn settings<T: DeserializeOwned>(mc: &ModelConfig) -> Result<T, Invalid> {
    toml::Value::Table(mc.settings.clone()).try_into().map_err(|e: toml::de::Error| {
        let message = e.message().trim();
        let Some(unknown) = message.strip_prefix("unknown field `").and_then(|m| m.split('`').next()) else {
            return Invalid::new("", message);
        };
        // The key's place: a section of the model's own, or a key inside one of its sections.
        if mc.settings.contains_key(unknown) {
            let message = format!(
                "{message} (the `{}` family's own sections); every model takes {}",
                mc.architecture,
                crate::config::MODEL_KEYS.join(", ")
            );
            return Invalid::new(unknown, message);
        }
        let section = mc.settings.iter().find(|(_, v)| v.as_table().is_some_and(|t| t.contains_key(unknown)));
        match section {
            Some((section, _)) => Invalid::new(format!("{section}.{unknown}"), message),
            None => Invalid::new("", message),
        }
    })
}

/// What a family reads from a model's config after [`super::check`] accepted it (placement,
/// start-up, the broker's streams): an error here is a config that skipped the check.
pub fn checked<T>(read: Result<T, Invalid>) -> T {
    read.unwrap_or_else(|e| panic!("`{}`: {} (the config was not checked at load). This is a bug.", e.field, e.message))
}

/// A family that serves its own endpoints, not objects/detect modes: `serves` says which.
pub fn no_modes(mc: &ModelConfig, serves: &str) -> Result<(), Invalid> {
    if mc.modes.is_empty() { Ok(()) } else { Err(Invalid::new("modes", format!("{serves}, not modes"))) }
}

/// The services the families attach (the face model's, the text model's …), one per type.
#[derive(Default)]
pub struct Services(HashMap<TypeId, Arc<dyn Any + Send + Sync>>);

impl Services {
    pub fn get<S: Any + Send + Sync>(&self) -> Option<Arc<S>> {
        self.0.get(&TypeId::of::<S>()).cloned().and_then(|s| s.downcast::<S>().ok())
    }

    pub fn contains<S: Any + Send + Sync>(&self) -> bool {
        self.0.contains_key(&TypeId::of::<S>())
    }

    pub fn insert<S: Any + Send + Sync>(&mut self, service: Arc<S>) {
        self.0.insert(TypeId::of::<S>(), service);
    }
}
