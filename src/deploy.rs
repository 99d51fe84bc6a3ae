//! Deploy files from the model list: the distributed mode's per-model worker Deployments and their
//! KEDA ScaledObjects (`deploy/k8s/distributed/{workers,keda-workers,keda-workers-prometheus}.yaml`)
//! are one template each (`deploy/templates/`), filled for every placed model of a
//! configuration (`gpubackend deploy k8s`, `make deploy-files`). A test checks that the committed
//! files are what the generator makes from `config/gpu.toml`: a model added to the config and not
//! to the deploy files fails it.

use std::path::Path;

use crate::broker::Keys;
use crate::config::Config;

const WORKER: &str = include_str!("../deploy/templates/worker.yaml");
const KEDA_STREAMS: &str = include_str!("../deploy/templates/keda-worker.yaml");
const KEDA_PROMETHEUS: &str = include_str!("../deploy/templates/keda-worker-prometheus.yaml");

/// Where the generated files go, relative to the repository root.
pub const OUT_DIR: &str = "deploy/k8s/distributed";

/// A template's body: its leading comment lines (which say how it is filled) left out.
fn body(template: &str) -> &str {
    let start = template.lines().take_while(|l| l.starts_with('#')).map(|l| l.len() + 1).sum::<usize>();
    &template[start..]
}

fn fill(template: &str, vars: &[(&str, &str)]) -> String {
    vars.iter().fold(template.to_string(), |t, (k, v)| t.replace(&format!("{{{{{k}}}}}"), v))
}

/// `redis://host:port/db` → `host:port` (what KEDA's redis-streams scaler takes).
fn redis_address(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

/// The three files, `(file name, text)`, for every placed model of `config` (read from
/// `config_path`, named in the files' headers).
pub fn k8s_workers(config: &Config, config_path: &str) -> Vec<(&'static str, String)> {
    let keys = Keys::new(&config.broker.prefix);
    let redis = redis_address(&config.broker.url);
    let header = |template: &str, what: &str| {
        format!(
            "# Generated from deploy/templates/{template} by `gpubackend deploy k8s -c {config_path}`\n\
             # (`make deploy-files`): edit the template or the config and regenerate, not this file.\n{what}"
        )
    };
    let (mut workers, mut streams, mut prometheus) = (Vec::new(), Vec::new(), Vec::new());
    for model in config.placed_models() {
        let mc = &config.models[&model];
        let name = model.replace('_', "-");
        let target = crate::infer::broker_stream_target(mc).to_string();
        let stages = crate::infer::broker_streams(&model, mc);
        let vars = [
            ("model", model.as_str()),
            ("name", name.as_str()),
            ("stream_target", target.as_str()),
            ("redis_address", redis),
        ];
        workers.push(fill(body(WORKER), &vars));
        // One redis-streams trigger per stream of the model.
        let keda = fill(body(KEDA_STREAMS), &vars);
        let (head, trigger) = keda.split_once("  triggers:\n").expect("the KEDA template has triggers");
        let triggers: String = stages.iter().map(|s| trigger.replace("{{stream}}", &keys.jobs(s))).collect();
        streams.push(format!("{head}  triggers:\n{triggers}"));
        let regex = stages.join("|");
        prometheus.push(fill(
            body(KEDA_PROMETHEUS),
            &[("stages", regex.as_str()), ("name", name.as_str()), ("stream_target", target.as_str())],
        ));
    }
    let join =
        |docs: Vec<String>| docs.iter().map(|d| d.trim_end_matches('\n')).collect::<Vec<_>>().join("\n---\n") + "\n";
    vec![
        (
            "workers.yaml",
            header(
                "worker.yaml",
                "# The distributed mode's GPU workers: one Deployment per model, one pod = one GPU = one model\n\
                 # (the lecture's pod), fed from the model's Redis streams (`--role worker`). Replicas are set\n\
                 # by KEDA on each stream's length (keda-workers.yaml).\n",
            ) + &join(workers),
        ),
        (
            "keda-workers.yaml",
            header(
                "keda-worker.yaml",
                "# KEDA's redis-streams scaler on each worker Deployment: replicas follow the length of the\n\
                 # model's streams (XLEN; acknowledged jobs are deleted, so the length is the backlog plus the\n\
                 # jobs being worked on). `consumerGroup` is left out on purpose: with it KEDA counts pending\n\
                 # entries or lag instead (docs/research/redis-postgres.md, section 5). streamLength = the\n\
                 # model's queue_target; a model whose images go whole to a worker (face, text, plates, the\n\
                 # detector, super-resolution: one stream each, README, Distributed mode) keeps the images one\n\
                 # worker takes at once (its max_batch). The Prometheus route is keda-workers-prometheus.yaml:\n\
                 # apply one of the two.\n",
            ) + &join(streams),
        ),
        (
            "keda-workers-prometheus.yaml",
            header(
                "keda-worker-prometheus.yaml",
                "# The Prometheus route to the same scaling as keda-workers.yaml (apply one of the two): the api\n\
                 # pods sample every stage's stream length into gpubackend_broker_stream_length; KEDA reads the\n\
                 # model's largest stage from Prometheus, with the same per-replica value.\n",
            ) + &join(prometheus),
        ),
    ]
}

/// Writes the files under `out` (or, with `check`, compares them): the paths that differ.
pub fn write_k8s_workers(config: &Config, config_path: &str, out: &Path, check: bool) -> std::io::Result<Vec<String>> {
    let mut differ = Vec::new();
    for (file, text) in k8s_workers(config, config_path) {
        let path = out.join(file);
        if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            differ.push(path.display().to_string());
            if !check {
                std::fs::write(&path, text)?;
            }
        }
    }
    Ok(differ)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_fill_and_redis_urls_become_addresses() {
        assert_eq!(fill("a {{x}} b {{y}} {{x}}", &[("x", "1"), ("y", "2")]), "a 1 b 2 1");
        assert_eq!(body("# one\n# two\napiVersion: v1\n# kept\n"), "apiVersion: v1\n# kept\n");
        assert_eq!(redis_address("redis://redis.gpubackend.svc:6379/"), "redis.gpubackend.svc:6379");
        assert_eq!(redis_address("redis://user:pw@host:1/2"), "host:1");
    }

    #[test]
    fn every_placed_model_gets_a_worker_and_its_scalers() {
        let mut config = crate::infer::load_config(None).unwrap();
        config.broker.url = "redis://r:6379/".into();
        let files = k8s_workers(&config, "config/default.toml");
        let placed = config.placed_models();
        for (file, text) in &files {
            assert_eq!(text.matches("\n---\n").count() + 1, placed.len(), "{file}");
            assert!(!text.contains("{{"), "{file} has an unfilled placeholder");
        }
        assert!(files[0].1.contains("\"--models\", \"mobilenet_v2\""));
        assert!(files[1].1.contains("stream: gpubackend:jobs:face\n") && files[1].1.contains("address: r:6379\n"));
    }
}
