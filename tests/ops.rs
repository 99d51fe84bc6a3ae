//! Operations files checked with the real tools: hadolint on the Dockerfiles, `docker-compose
//! config`, kubernetes-validate (and the CRDs' own schemas) on deploy/k8s, promtool on the alert
//! rules, rpmbuild + `rpm -qlp` on the package; plus the consistency a linter cannot see (the
//! flags each manifest passes are ones the binary accepts, the autoscaling target is the config's),
//! and the graceful drain on SIGTERM. The tools come from `make setup` (scripts/setup.sh).

use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common;

use common::{repo, tempdir};
use gpubackend::client::{Conn, metric_value};
use gpubackend::config::Config;
use serde::Deserialize;
use serde_yaml::Value;

/// The debug server binary cargo built for these tests.
fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_gpubackend"))
}

/// A tool from tools/ops/.venv (installed by `make setup`) or, failing that, from PATH.
fn tool(name: &str) -> PathBuf {
    let venv = repo().join("tools/ops/.venv/bin").join(name);
    if venv.exists() {
        return venv;
    }
    let on_path =
        std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|p| p.exists()));
    on_path.unwrap_or_else(|| panic!("`{name}` is not installed: run `make setup` (scripts/setup.sh)"))
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for key in path {
        cur = match key.parse::<usize>() {
            Ok(i) => &cur[i],
            Err(_) => &cur[*key],
        };
    }
    cur.as_str().unwrap_or_else(|| panic!("no string at {path:?} in {v:?}"))
}

fn k8s_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "yaml") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(&repo().join("deploy/k8s"), &mut files);
    files.sort();
    assert!(files.len() >= 6, "{files:?}");
    files
}

/// Every Kubernetes object under deploy/k8s, with the file it came from.
fn k8s_objects() -> Vec<(PathBuf, Value)> {
    k8s_files().into_iter().flat_map(|f| yaml_docs(&f).into_iter().map(move |d| (f.clone(), d))).collect()
}

fn find_object<'a>(objects: &'a [(PathBuf, Value)], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .map(|(_, o)| o)
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name} in deploy/k8s"))
}

/// Runs the server binary with `args` + `--check` (config and weight files validated, placement
/// printed) from the repository root, where the relative weight paths resolve as they do from
/// the images' and the package's working directory (/usr/local/gpu).
fn check_args(args: &[String]) {
    // The GPUs these configs name are not on the test machine: devices are not opened here
    // (tests/devices.rs checks opening them).
    run(Command::new(binary()).args(args).args(["--check", "--skip-devices"]).current_dir(repo()));
}

// ---------------------------------------------------------------------------------------------
// Containers

/// The final stage of a Dockerfile: instructions after the last FROM, continuation lines joined.
fn final_stage(path: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut joined = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && cur.is_empty()) {
            continue;
        }
        if let Some(head) = t.strip_suffix('\\') {
            cur.push_str(head);
            cur.push(' ');
            continue;
        }
        cur.push_str(t);
        if !cur.trim().is_empty() {
            joined.push(std::mem::take(&mut cur));
        }
        cur.clear();
    }
    let last_from = joined.iter().rposition(|l| l.starts_with("FROM ")).expect("a FROM");
    joined[last_from..]
        .iter()
        .map(|l| {
            let (op, rest) = l.split_once(' ').unwrap_or((l, ""));
            (op.to_string(), rest.trim().to_string())
        })
        .collect()
}

fn json_array(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not an exec-form JSON array ({e}): {text}"))
}

/// Maps an image path to the repository file the final stage copied there (`COPY a b /dir/`).
fn image_to_repo(stage: &[(String, String)], image_path: &str) -> Option<PathBuf> {
    for (op, rest) in stage {
        if op != "COPY" || rest.starts_with("--from") {
            continue;
        }
        let parts: Vec<&str> = rest.split_whitespace().collect();
        let (dest, sources) = parts.split_last().unwrap();
        for src in sources {
            let name = Path::new(src).file_name().unwrap().to_str().unwrap();
            let target = if dest.ends_with('/') { format!("{dest}{name}") } else { dest.to_string() };
            if target == image_path {
                return Some(repo().join(src));
            }
        }
    }
    None
}

#[test]
fn dockerfiles_pass_hadolint() {
    run(Command::new(tool("hadolint")).args(["Dockerfile", "Dockerfile.gpu"]).current_dir(repo()));
}

#[test]
fn dockerfiles_run_the_binary_with_flags_it_accepts() {
    for file in ["Dockerfile", "Dockerfile.gpu"] {
        let stage = final_stage(&repo().join(file));
        let get = |op: &str| stage.iter().filter(|(o, _)| o == op).map(|(_, r)| r.as_str()).next_back();
        let entrypoint = json_array(get("ENTRYPOINT").unwrap_or_else(|| panic!("{file}: no ENTRYPOINT")));
        let cmd = json_array(get("CMD").unwrap_or_else(|| panic!("{file}: no CMD")));
        assert_eq!(entrypoint, ["/usr/local/gpu/gpubackend"], "{file}: the binary lives where the RPM puts it");
        assert!(
            stage.iter().any(|(o, r)| o == "COPY"
                && r.starts_with("--from=build")
                && r.ends_with("/usr/local/gpu/gpubackend")
                && r.contains("target/release/gpubackend")),
            "{file}: the release binary is copied to the entrypoint"
        );
        let user = get("USER").unwrap_or_else(|| panic!("{file}: no USER"));
        assert!(user != "0" && user != "root", "{file}: runs as root");
        assert_eq!(get("WORKDIR"), Some("/usr/local/gpu"), "{file}: relative weight paths resolve from here");
        let health = get("HEALTHCHECK").unwrap_or_else(|| panic!("{file}: no HEALTHCHECK"));
        assert!(health.contains("http://127.0.0.1:8080/health/ready"), "{file}: {health}");
        // The API (Vision, /v2, metrics) and the Open Inference Protocol's gRPC.
        assert_eq!(get("EXPOSE"), Some("8080 8001"));
        // The CMD, with the config path taken back to the file the image copied there.
        let mut args = cmd.clone();
        if let Some(i) = args.iter().position(|a| a == "-c") {
            let in_image = args[i + 1].clone();
            let local =
                image_to_repo(&stage, &in_image).unwrap_or_else(|| panic!("{file}: nothing copied to {in_image}"));
            args[i + 1] = local.to_string_lossy().into_owned();
        }
        check_args(&args);
        // The weights and labels the config names are copied to the same relative place.
        let config = Config::load(Some(Path::new(&args[args.iter().position(|a| a == "-c").unwrap() + 1]))).unwrap();
        for (name, m) in &config.models {
            let files: Vec<PathBuf> = gpubackend::infer::stages(name, m)
                .iter()
                .map(|s| s.spec.weights().to_path_buf())
                .chain(m.labels.clone())
                .collect();
            for rel in &files {
                let dest = format!("/usr/local/gpu/{}", rel.display());
                let dir = format!("{}/", Path::new(&dest).parent().unwrap().display());
                assert!(
                    stage.iter().any(|(o, r)| o == "COPY"
                        && r.split_whitespace().any(|s| s.ends_with(rel.file_name().unwrap().to_str().unwrap()))
                        && (r.ends_with(&dest) || r.ends_with(&dir))),
                    "{file}: {} is not copied to {dest}",
                    rel.display()
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// docker-compose

#[test]
fn compose_file_validates_and_mounts_what_exists() {
    run(Command::new("docker-compose").args(["-f", "docker-compose.yml", "config", "--quiet"]).current_dir(repo()));
    let compose = &yaml_docs(&repo().join("docker-compose.yml"))[0];
    let services = compose["services"].as_mapping().unwrap();
    for name in ["gpubackend", "prometheus", "grafana"] {
        assert!(services.contains_key(name), "service {name} missing");
    }
    for (name, service) in services {
        for volume in service["volumes"].as_sequence().into_iter().flatten() {
            let source = volume.as_str().unwrap().split(':').next().unwrap();
            if source.starts_with("./") {
                assert!(repo().join(source).exists(), "{name:?}: {source} does not exist");
            }
        }
    }
    // The server's command is one the binary accepts, and Prometheus scrapes it where it listens.
    let command: Vec<String> = serde_yaml::from_value(compose["services"]["gpubackend"]["command"].clone()).unwrap();
    let mut args = command.clone();
    let i = args.iter().position(|a| a == "-c").unwrap();
    assert_eq!(args[i + 1], "/etc/gpubackend/default.toml");
    args[i + 1] = repo().join("config/default.toml").to_string_lossy().into_owned();
    check_args(&args);
    let prom = &yaml_docs(&repo().join("deploy/prometheus/prometheus.yml"))[0];
    let port = &command[command.iter().position(|a| a == "--port").unwrap() + 1];
    assert_eq!(
        str_at(prom, &["scrape_configs", "0", "static_configs", "0", "targets", "0"]),
        format!("gpubackend:{port}")
    );
}

// ---------------------------------------------------------------------------------------------
// Prometheus rules

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    let dir = repo().join("deploy/prometheus");
    let out = run(Command::new("promtool").args(["check", "rules", "alerts.yml"]).current_dir(&dir));
    assert!(String::from_utf8_lossy(&out.stdout).contains("SUCCESS"));
    run(Command::new("promtool").args(["test", "rules", "alerts_test.yml"]).current_dir(&dir));
    // The dev stack's Prometheus config, with its rule path pointed at the repository's file.
    let tmp = tempdir("promcfg");
    let cfg = std::fs::read_to_string(dir.join("prometheus.yml")).unwrap();
    assert!(cfg.contains("/etc/prometheus/alerts.yml"));
    std::fs::write(tmp.join("prometheus.yml"), cfg.replace("/etc/prometheus/alerts.yml", "alerts.yml")).unwrap();
    std::fs::copy(dir.join("alerts.yml"), tmp.join("alerts.yml")).unwrap();
    run(Command::new("promtool").args(["check", "config", "prometheus.yml"]).current_dir(&tmp));
}

// ---------------------------------------------------------------------------------------------
// Kubernetes

/// CRD kinds kubernetes-validate has no schema for; validated against the CRDs' published schemas.
const CRD_API_GROUPS: [&str; 2] = ["keda.sh/", "monitoring.coreos.com/"];

#[test]
fn k8s_manifests_validate_against_the_schemas() {
    let objects = k8s_objects();
    let (crds, builtin): (Vec<_>, Vec<_>) = objects
        .iter()
        .partition(|(_, o)| CRD_API_GROUPS.iter().any(|g| o["apiVersion"].as_str().unwrap().starts_with(g)));
    let out = run(Command::new(tool("kubernetes-validate")).arg("--strict").args(k8s_files()));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches(" passed for resource ").count(), builtin.len(), "{text}");
    assert!(!crds.is_empty());
    let node_tools = repo().join("tools/ops");
    assert!(node_tools.join("node_modules").exists(), "CRD schemas not installed: run `make setup`");
    for (file, crd) in crds {
        let mut child = Command::new("node")
            .arg("validate-crd.mjs")
            .current_dir(&node_tools)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("node");
        serde_json::to_writer(child.stdin.take().unwrap(), &serde_json::to_value(crd).unwrap()).unwrap();
        let out = child.wait_with_output().unwrap();
        let verdict = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && verdict.trim() == "ok", "{}: {verdict}", file.display());
    }
}

#[test]
fn crd_validation_rejects_a_broken_scaled_object() {
    let mut child = Command::new("node")
        .arg("validate-crd.mjs")
        .current_dir(repo().join("tools/ops"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node");
    let broken = r#"{"apiVersion":"keda.sh/v1alpha1","kind":"ScaledObject","metadata":{"name":"x"},
        "spec":{"scaleTargetRef":{"name":"d"},"minReplicaCount":"one","triggers":[]}}"#;
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), broken.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stdout).contains("minReplicaCount"));
}

#[test]
fn k8s_deployment_is_the_lectures_pod_and_matches_the_config() {
    let objects = k8s_objects();
    let gpu_toml = std::fs::read_to_string(repo().join("config/gpu.toml")).unwrap();
    let gpu = Config::from_toml(&gpu_toml, "config/gpu.toml").unwrap();
    let cm = find_object(&objects, "ConfigMap", "gpubackend-config");
    assert_eq!(str_at(cm, &["data", "gpubackend.toml"]), gpu_toml, "ConfigMap must be config/gpu.toml verbatim");

    let deploy = find_object(&objects, "Deployment", "gpubackend-mobilenet-v2");
    let pod = &deploy["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let args: Vec<String> = serde_yaml::from_value(c["args"].clone()).unwrap();
    assert_eq!(args, ["-c", "/etc/gpubackend/config/gpubackend.toml", "--gpu", "0", "--models", "mobilenet_v2"]);
    assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], "1", "one pod = one GPU");
    // The config path is where the ConfigMap is mounted; the args pass the binary's own check.
    let mount = c["volumeMounts"].as_sequence().unwrap().iter().find(|m| m["name"] == "config").unwrap();
    assert_eq!(format!("{}/gpubackend.toml", str_at(mount, &["mountPath"])), args[1]);
    let tokens = c["volumeMounts"].as_sequence().unwrap().iter().find(|m| m["name"] == "tokens").unwrap();
    assert_eq!(Some(Path::new(str_at(tokens, &["mountPath"]))), gpu.auth.tokens_file.as_deref());
    let tmp = tempdir("k8sargs");
    std::fs::write(tmp.join("gpubackend.toml"), &gpu_toml).unwrap();
    let mut local = args.clone();
    local[1] = tmp.join("gpubackend.toml").to_string_lossy().into_owned();
    check_args(&local);
    // Probes on the health endpoints; the grace period covers preStop plus the server's drain.
    assert_eq!(str_at(c, &["readinessProbe", "httpGet", "path"]), "/health/ready");
    assert_eq!(str_at(c, &["livenessProbe", "httpGet", "path"]), "/health/live");
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    let pre_stop: u64 = str_at(c, &["lifecycle", "preStop", "exec", "command", "1"]).parse().unwrap();
    assert!(grace > pre_stop + gpu.server.shutdown_timeout_s, "grace {grace} s");
    assert_eq!(c["ports"][0]["containerPort"].as_u64(), Some(u64::from(gpu.server.port)));

    // Autoscaling: the HPA (via the adapter's metric) and KEDA keep the config's queue target.
    let target = gpu.models["mobilenet_v2"].queue_target();
    let hpa = find_object(&objects, "HorizontalPodAutoscaler", "gpubackend-mobilenet-v2");
    assert_eq!(str_at(hpa, &["spec", "scaleTargetRef", "name"]), "gpubackend-mobilenet-v2");
    let metric = &hpa["spec"]["metrics"][0];
    assert_eq!(str_at(metric, &["type"]), "Pods");
    assert_eq!(str_at(metric, &["pods", "metric", "name"]), "gpubackend_queue_size");
    assert_eq!(str_at(metric, &["pods", "target", "averageValue"]), target.to_string());
    let adapter = find_object(&objects, "ConfigMap", "prometheus-adapter");
    let rules: Value = serde_yaml::from_str(str_at(adapter, &["data", "config.yaml"])).unwrap();
    assert!(str_at(&rules, &["rules", "0", "seriesQuery"]).starts_with("gpubackend_queue_size{"));
    assert_eq!(str_at(&rules, &["rules", "0", "name", "as"]), "gpubackend_queue_size");
    let keda = find_object(&objects, "ScaledObject", "gpubackend-mobilenet-v2");
    assert_eq!(str_at(keda, &["spec", "scaleTargetRef", "name"]), "gpubackend-mobilenet-v2");
    let trigger = &keda["spec"]["triggers"][0];
    assert_eq!(str_at(trigger, &["metadata", "threshold"]), target.to_string());
    assert!(str_at(trigger, &["metadata", "query"]).contains("gpubackend_queue_size{"));
    assert_eq!(str_at(trigger, &["metricType"]), "AverageValue");

    // The Operator's rules are the repository's alert rules.
    let rule = find_object(&objects, "PrometheusRule", "gpubackend");
    let alerts = &yaml_docs(&repo().join("deploy/prometheus/alerts.yml"))[0];
    assert_eq!(rule["spec"]["groups"], alerts["groups"]);
}

/// The per-model worker Deployments and ScaledObjects are what the generator makes from
/// config/gpu.toml (the ConfigMap's config) and the templates: none is written by hand.
#[test]
fn k8s_worker_files_are_generated_from_the_model_list() {
    let gpu = Config::load(Some(&repo().join("config/gpu.toml"))).unwrap();
    for (file, text) in gpubackend::deploy::k8s_workers(&gpu, "config/gpu.toml") {
        let path = repo().join(gpubackend::deploy::OUT_DIR).join(file);
        let committed = std::fs::read_to_string(&path).unwrap();
        assert!(committed == text, "{} is not what `make deploy-files` makes from config/gpu.toml", path.display());
    }
    // The CLI's check says the same.
    let out = Command::new(binary()).args(["deploy", "k8s", "--check"]).current_dir(repo()).output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

#[test]
fn k8s_distributed_mode_is_an_api_and_a_worker_per_model_scaled_on_their_streams() {
    let objects = k8s_objects();
    let gpu_toml = std::fs::read_to_string(repo().join("config/gpu.toml")).unwrap();
    let gpu = Config::from_toml(&gpu_toml, "config/gpu.toml").unwrap();
    let tmp = tempdir("k8sdist");
    std::fs::write(tmp.join("gpubackend.toml"), &gpu_toml).unwrap();
    let local = |args: &[String]| {
        let mut a = args.to_vec();
        a[1] = tmp.join("gpubackend.toml").to_string_lossy().into_owned();
        a
    };
    // The broker URL names the Redis Service.
    let redis_svc = find_object(&objects, "Service", "redis");
    let redis_port = redis_svc["spec"]["ports"][0]["port"].as_u64().unwrap();
    let redis_address = format!("redis.{}.svc:{redis_port}", str_at(redis_svc, &["metadata", "namespace"]));
    assert_eq!(gpu.broker.url, format!("redis://{redis_address}/"));
    find_object(&objects, "StatefulSet", "redis");
    find_object(&objects, "StatefulSet", "postgres");

    // One api Deployment (no GPU) behind the one Service, persons from the PostgreSQL Secret.
    let api = find_object(&objects, "Deployment", "gpubackend-api");
    let c = &api["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<String> = serde_yaml::from_value(c["args"].clone()).unwrap();
    assert_eq!(args, ["-c", "/etc/gpubackend/config/gpubackend.toml", "--role", "api"]);
    check_args(&local(&args));
    assert!(c["resources"]["limits"]["nvidia.com/gpu"].is_null(), "the api needs no GPU");
    let env = c["env"].as_sequence().unwrap();
    let pg = env.iter().find(|e| e["name"] == "GPUBACKEND_POSTGRES_URL").expect("GPUBACKEND_POSTGRES_URL");
    assert_eq!(str_at(pg, &["valueFrom", "secretKeyRef", "name"]), "gpubackend-postgres");
    let svc = find_object(&objects, "Service", "gpubackend");
    assert_eq!(svc["spec"]["selector"], api["spec"]["selector"]["matchLabels"]);

    let keys = gpubackend::broker::Keys::new(&gpu.broker.prefix);
    let in_file = |file: &str, name: &str| -> Value {
        objects
            .iter()
            .find(|(f, o)| f.ends_with(file) && o["kind"] == "ScaledObject" && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no ScaledObject/{name} in {file}"))
            .1
            .clone()
    };
    for model in gpu.placed_models() {
        let name = format!("gpubackend-worker-{}", model.replace('_', "-"));
        let worker = find_object(&objects, "Deployment", &name);
        let c = &worker["spec"]["template"]["spec"]["containers"][0];
        let args: Vec<String> = serde_yaml::from_value(c["args"].clone()).unwrap();
        assert_eq!(
            args,
            ["-c", "/etc/gpubackend/config/gpubackend.toml", "--role", "worker", "--gpu", "0", "--models", &model]
        );
        check_args(&local(&args));
        assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], "1", "one worker pod = one GPU");
        assert_eq!(str_at(c, &["readinessProbe", "httpGet", "path"]), "/health/ready");

        // KEDA: one redis-streams trigger per stream of the model, at its queue target, by length.
        let mc = &gpu.models[&model];
        let target = gpubackend::infer::broker_stream_target(mc).to_string();
        let keda = in_file("keda-workers.yaml", &name);
        assert_eq!(str_at(&keda, &["spec", "scaleTargetRef", "name"]), name);
        let triggers = keda["spec"]["triggers"].as_sequence().unwrap();
        let stages = gpubackend::infer::broker_streams(&model, mc);
        assert_eq!(triggers.len(), stages.len());
        for (t, stage) in triggers.iter().zip(&stages) {
            assert_eq!(str_at(t, &["type"]), "redis-streams");
            assert_eq!(str_at(t, &["metadata", "stream"]), keys.jobs(stage));
            assert_eq!(str_at(t, &["metadata", "address"]), redis_address);
            assert_eq!(str_at(t, &["metadata", "streamLength"]), target);
            assert!(t["metadata"]["consumerGroup"].is_null(), "with a group KEDA counts pending entries, not length");
        }
        let prom = in_file("keda-workers-prometheus.yaml", &name);
        let t = &prom["spec"]["triggers"][0];
        assert_eq!(str_at(t, &["metadata", "threshold"]), target);
        let query = str_at(t, &["metadata", "query"]);
        assert!(query.contains("gpubackend_broker_stream_length{"), "{query}");
        for stage in &stages {
            assert!(query.contains(stage.as_str()), "{query}");
        }
    }
}

#[test]
fn compose_distributed_profile_runs_redis_postgres_an_api_and_a_worker() {
    let out = run(Command::new("docker-compose")
        .args(["-f", "docker-compose.yml", "--profile", "distributed", "config", "--services"])
        .current_dir(repo()));
    let services = String::from_utf8_lossy(&out.stdout).to_string();
    for name in ["gpubackend", "redis", "postgres", "api", "worker", "prometheus", "grafana"] {
        assert!(services.lines().any(|l| l == name), "service {name} missing: {services}");
    }
    let compose = &yaml_docs(&repo().join("docker-compose.yml"))[0];
    for (service, role) in [("api", "api"), ("worker", "worker")] {
        let s = &compose["services"][service];
        let mut args: Vec<String> = serde_yaml::from_value(s["command"].clone()).unwrap();
        assert_eq!(args[args.iter().position(|a| a == "--role").unwrap() + 1], role);
        let i = args.iter().position(|a| a == "-c").unwrap();
        args[i + 1] = repo().join("config/default.toml").to_string_lossy().into_owned();
        check_args(&args);
        assert_eq!(str_at(s, &["environment", "GPUBACKEND_BROKER_URL"]), "redis://redis:6379/");
    }
    assert!(str_at(&compose["services"]["api"], &["environment", "GPUBACKEND_POSTGRES_URL"]).contains("host=postgres"));
    // Prometheus scrapes both roles.
    let prom = &yaml_docs(&repo().join("deploy/prometheus/prometheus.yml"))[0];
    let targets: Vec<String> =
        serde_yaml::from_value(prom["scrape_configs"][1]["static_configs"][0]["targets"].clone()).unwrap();
    assert_eq!(targets, ["api:8080", "worker:8080"]);
}

// ---------------------------------------------------------------------------------------------
// RPM

/// Packages the server binary cargo built for these tests (`make rpm` packages the release build
/// the same way; building a second, release-profile copy of everything in CI would add half an hour
/// and test nothing the packaging does differently).
#[test]
fn rpm_builds_from_the_server_binary_with_the_lectures_layout() {
    let out_dir = tempdir("rpm");
    let out = run(Command::new("bash").arg("scripts/build-rpm.sh").arg(binary()).arg(&out_dir).current_dir(repo()));
    let rpm = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(rpm.exists(), "{}", rpm.display());
    let version = env!("CARGO_PKG_VERSION");
    let q = run(Command::new("rpm").args(["-qp", "--qf", "%{NAME} %{VERSION}"]).arg(&rpm));
    assert_eq!(String::from_utf8_lossy(&q.stdout), format!("gpu_backend {version}"));
    let list = run(Command::new("rpm").arg("-qlp").arg(&rpm));
    let files: Vec<&str> = std::str::from_utf8(&list.stdout).unwrap().lines().collect();
    assert_eq!(
        files,
        [
            "/etc/gpubackend.conf",
            "/usr/lib/systemd/system/gpubackend.service",
            "/usr/local/gpu",
            "/usr/local/gpu/gpubackend",
            "/usr/local/gpu/models",
            "/usr/local/gpu/models/centernet",
            "/usr/local/gpu/models/centernet/centernet.bin",
            "/usr/local/gpu/models/centernet/centernet.json",
            "/usr/local/gpu/models/centernet/labels.json",
            "/usr/local/gpu/models/mobilenet_v2",
            "/usr/local/gpu/models/mobilenet_v2/labels.json",
            "/usr/local/gpu/models/mobilenet_v2/mobilenet_v2-b0353104.pth",
            "/usr/local/gpu/models/mtcnn",
            "/usr/local/gpu/models/mtcnn/onet.pt",
            "/usr/local/gpu/models/mtcnn/pnet.pt",
            "/usr/local/gpu/models/mtcnn/rnet.pt",
            "/usr/local/gpu/models/nsfw",
            "/usr/local/gpu/models/nsfw/group1-shard1of1",
            "/usr/local/gpu/models/nsfw/labels.txt",
            "/usr/local/gpu/models/nsfw/model.json",
            "/usr/local/gpu/models/plates",
            "/usr/local/gpu/models/plates/clp_det.onnx",
            "/usr/local/gpu/models/ppocr",
            "/usr/local/gpu/models/ppocr/PP-OCRv6_det_small.onnx",
            "/usr/local/gpu/models/ppocr/PP-OCRv6_rec_small.onnx",
            "/usr/local/gpu/models/ppocr/ch_ppocr_mobile_v2.0_cls_mobile.onnx",
            "/usr/local/gpu/models/realesrgan",
            "/usr/local/gpu/models/realesrgan/REALESRGAN_ANIMAVIDEOV3_UP4X.bin",
            "/usr/local/gpu/models/realesrgan/REALESRGAN_ANIMAVIDEOV3_UP4X.param",
            "/usr/local/gpu/models/realesrgan/REALESRGAN_X4PLUS_UP4X.bin",
            "/usr/local/gpu/models/realesrgan/REALESRGAN_X4PLUS_UP4X.param",
            "/usr/local/gpu/models/sface",
            "/usr/local/gpu/models/sface/face_recognition_sface_2021dec.onnx",
            "/var/lib/gpubackend",
        ]
    );
    let conf = run(Command::new("rpm").args(["-qcp"]).arg(&rpm));
    assert_eq!(String::from_utf8_lossy(&conf.stdout).trim(), "/etc/gpubackend.conf", "config(noreplace)");

    // Unpack it and run the packaged binary on the packaged config from the unit's working
    // directory: config, weights and labels all resolve.
    let root = out_dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    run(Command::new("rpm2archive").arg(&rpm).current_dir(&out_dir));
    run(Command::new("tar").arg("xzf").arg(format!("{}.tgz", rpm.display())).current_dir(&root));
    let unit = std::fs::read_to_string(root.join("usr/lib/systemd/system/gpubackend.service")).unwrap();
    assert!(unit.contains("\nExecStart=/usr/local/gpu/gpubackend -c /etc/gpubackend.conf\n"), "{unit}");
    assert!(unit.contains("\nWorkingDirectory=/usr/local/gpu\n"));
    let packaged = root.join("usr/local/gpu/gpubackend");
    run(Command::new(&packaged)
        .args(["-c", "../../../etc/gpubackend.conf", "--check", "--skip-devices"])
        .current_dir(root.join("usr/local/gpu")));
    let v = run(Command::new(&packaged).arg("--version"));
    assert_eq!(String::from_utf8_lossy(&v.stdout).trim(), format!("gpubackend {version}"));
}

// ---------------------------------------------------------------------------------------------
// Graceful drain

/// SIGTERM while requests are in flight: every one of them is answered in full, no new
/// connection is accepted, and the process exits 0.
#[test]
fn sigterm_drains_in_flight_requests_then_exits() {
    const IN_FLIGHT: usize = 4;
    // A long batching window keeps the requests waiting in the queue when SIGTERM arrives.
    let text = gpubackend::config::EMBEDDED_DEFAULT
        .replace("max_delay_ms = 5\n", "max_delay_ms = 3000\n")
        .replace("max_batch = 4\n", "max_batch = 16\n");
    assert!(
        text.contains("max_delay_ms = 3000") && text.contains("max_batch = 16"),
        "the embedded default's MobileNetV2 batching moved: update this test"
    );
    let dir = tempdir("drain");
    let text = text.replace("dir = \"data\"", &format!("dir = {:?}", dir.join("store")));
    std::fs::write(dir.join("drain.toml"), text).unwrap();
    let (mut child, addr) = crate::common::spawn_server(&dir.join("drain.toml"));
    let start = Instant::now();
    let image = std::fs::read(repo().join("tests/data/chelsea.jpg")).unwrap();
    let clients: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let image = image.clone();
            std::thread::spawn(move || {
                let meta = br#"{"mode":["object"],"images":[{"name":"file"}]}"#;
                Conn::new(addr)
                    .post_multipart("/api/v1/objects/detect", &[("file", Some("c.jpg"), &image), ("meta", None, meta)])
            })
        })
        .collect();
    // Wait until all are admitted (the gauge counts images not yet answered).
    loop {
        let text = Conn::new(addr).get("/metrics").unwrap().text();
        if metric_value(&text, "gpubackend_inflight_images", &[]) as usize == IN_FLIGHT {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(600), "requests never admitted");
        std::thread::sleep(Duration::from_millis(20));
    }
    run(Command::new("kill").args(["-TERM", &child.0.id().to_string()]));
    // The listener closes at once: new connections are refused while the drain goes on.
    let refused_by = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(addr).is_ok() {
        assert!(Instant::now() < refused_by, "still accepting connections after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    for c in clients {
        let r = c.join().unwrap().expect("an in-flight request lost its answer");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["body"]["object_labels"][0]["labels"][0]["eng"], "Cat");
    }
    let status = child.0.wait().unwrap();
    let mut log = String::new();
    // The server logs (tracing) to stderr; a few lines, they fit the pipe while it runs.
    child.0.stderr.take().unwrap().read_to_string(&mut log).unwrap();
    assert!(status.success(), "exit {status}:\n{log}");
    assert!(log.contains("draining in-flight requests"), "{log}");
}
