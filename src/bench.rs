//! Benchmarks (`gpubackend bench …`). A tool, not the data path: anyhow errors, printed reports,
//! and `--json FILE` for machine-readable results (the GPU check assembles them into one report).
//!
//! `bench e2e`     drives a running server with concurrent multipart uploads of real images and
//!                 prints req/s, latency percentiles, mean batch size, worker busy ratio and server
//!                 CPU ms per request (from the server's /metrics).
//! `bench model`   runs the forward pass alone in a loop at a given batch size on a device, keeping
//!                 `--depth` batches in flight as the server's worker does (the next launched
//!                 before the current one is read back); `--torch PYTHON` runs PyTorch's eager
//!                 torchvision MobileNetV2 (same weights, batch, device, threads) beside it.
//! `bench compare` runs both (model-only at the e2e mean batch size) and prints e2e / model-only.
//! `bench faces`   drives a running server's persons/recognize with real faces: the four portraits
//!                 of tests/data and tests/data/collage.jpg (a 2×2 collage of them: 4 faces in one
//!                 photo; no real group photo is available from the package registries here), and prints req/s, faces/s,
//!                 p50/p99 and, per face stage (P-Net tiles, R-Net, O-Net, embedder), the mean
//!                 batch size, batches/s, worker busy share and mean queue wait.
//! `bench persons` fills a person store space with N synthetic 128-d embeddings and times exact
//!                 cosine search (and the writes), to size `persons per space`.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde::Serialize;

use crate::client::{Conn, metric_value};
use crate::config::Limits;
use crate::models::{DeviceSpec, Model, ModelSpec};
use crate::pipelines::decode::decode;
use crate::pipelines::preprocess::{ClassifierSpec, classifier_input};

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Drive a running server's objects/detect with real JPEG uploads.
    E2e(E2eArgs),
    /// The forward pass alone (MobileNetV2), optionally beside PyTorch eager.
    Model(ModelArgs),
    /// `e2e`, then `model` at the e2e mean batch size: e2e / model-only and the serving overhead.
    Compare {
        #[command(flatten)]
        e2e: E2eArgs,
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Batches kept in flight by the model-only loop (default: the server's, 1 on cpu, 2 on GPUs).
        #[arg(long)]
        depth: Option<usize>,
        #[arg(long, default_value = "models/mobilenet_v2/mobilenet_v2-b0353104.pth")]
        weights: PathBuf,
    },
    /// Person store search and writes at 1k…75k persons per space.
    Persons(PersonsArgs),
    /// Drive a running server's persons/recognize with real faces.
    Faces(FacesArgs),
}

/// Writes `value` as JSON to `path`, when one was given.
fn write_json(path: &Option<PathBuf>, value: &impl Serialize) -> anyhow::Result<()> {
    if let Some(p) = path {
        std::fs::write(p, serde_json::to_vec_pretty(value)?).with_context(|| format!("write {}", p.display()))?;
    }
    Ok(())
}

#[derive(Debug, Args, Clone)]
pub struct FacesArgs {
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Seconds of measured load (after a warm-up of 10 % of it).
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    #[arg(long, default_value = "test")]
    token: String,
    /// The face model's name in the server's config.
    #[arg(long, default_value = "face")]
    model: String,
    /// Also write the results as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Serialize)]
struct FacesReport {
    clients: usize,
    seconds: f64,
    requests_per_s: f64,
    faces_per_s: f64,
    errors: usize,
    p50_ms: f64,
    p99_ms: f64,
    /// Per face stage: mean batch, batches/s, worker busy share, mean queue wait (ms), CPU…
    stages: Vec<StageReport>,
}

#[derive(Serialize)]
struct StageReport {
    model: String,
    mean_batch: f64,
    batches_per_s: f64,
    worker_busy: f64,
    mean_queue_wait_ms: f64,
    /// Mean time from a batch's launch to its outputs read back.
    mean_inference_ms: f64,
}

fn run_faces(a: &FacesArgs) -> anyhow::Result<()> {
    let addr = a.addr.to_socket_addrs()?.next().context("address")?;
    let photos: Vec<Vec<u8>> = ["obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg", "collage.jpg"]
        .iter()
        .map(|n| std::fs::read(format!("tests/data/{n}")).with_context(|| format!("read tests/data/{n}")))
        .collect::<Result<_, _>>()?;
    let photos = Arc::new(photos);
    let path = Arc::new(format!("/api/v1/persons/recognize?oauth_provider=mcs&oauth_token={}", a.token));
    let meta: &'static [u8] = br#"{"space":"9","create_new":true,"update_embedding":false,"images":[{"name":"file"}]}"#;
    let load = |until: Instant| -> Vec<std::thread::JoinHandle<(Vec<Duration>, usize, usize)>> {
        (0..a.concurrency)
            .map(|i| {
                let (photos, path) = (photos.clone(), path.clone());
                std::thread::spawn(move || {
                    let mut c = Conn::new(addr);
                    let (mut lat, mut faces, mut errors, mut k) = (Vec::new(), 0usize, 0usize, i);
                    while Instant::now() < until {
                        let photo = &photos[k % photos.len()];
                        k += 1;
                        let t = Instant::now();
                        match c.post_multipart(&path, &[("file", Some("photo.jpg"), photo), ("meta", None, meta)]) {
                            Ok(r) if r.status == 200 => {
                                lat.push(t.elapsed());
                                faces += r.json()["body"]["objects"][0]["persons"].as_array().map_or(0, Vec::len);
                            }
                            _ => errors += 1,
                        }
                    }
                    (lat, faces, errors)
                })
            })
            .collect()
    };
    for h in load(Instant::now() + Duration::from_secs_f64(a.duration * 0.1)) {
        h.join().expect("client thread");
    }
    let before = scrape(addr)?;
    let start = Instant::now();
    let (mut lat, mut faces, mut errors) = (Vec::new(), 0, 0);
    for h in load(start + Duration::from_secs_f64(a.duration)) {
        let (l, f, e) = h.join().expect("client thread");
        lat.extend(l);
        faces += f;
        errors += e;
    }
    let wall = start.elapsed().as_secs_f64();
    let after = scrape(addr)?;
    lat.sort();
    println!(
        "faces e2e: persons/recognize, {} clients, {:.0} s, photos: 4 portraits + a 4-face collage",
        a.concurrency, wall
    );
    println!("  requests/s          {:.2}  ({errors} errors)", lat.len() as f64 / wall);
    println!("  faces/s             {:.2}", faces as f64 / wall);
    println!("  latency p50 / p99   {:.0} / {:.0} ms", percentile(&lat, 0.5), percentile(&lat, 0.99));
    println!("  stage         mean batch   batches/s   worker busy   mean queue wait   mean inference");
    let mut stages = Vec::new();
    for stage in ["pnet", "rnet", "onet", "embed"] {
        let model = format!("{}_{stage}", a.model);
        let d = |name: &str, labels: &[(&str, &str)]| {
            metric_value(&after, name, labels) - metric_value(&before, name, labels)
        };
        let m = [("model", model.as_str())];
        let batches = d("gpubackend_batch_size_count", &m);
        let mean_ms = |stage: &str| {
            let l = [("model", model.as_str()), ("stage", stage)];
            1e3 * d("gpubackend_stage_duration_seconds_sum", &l)
                / d("gpubackend_stage_duration_seconds_count", &l).max(1.0)
        };
        let workers = metric_value(&after, "gpubackend_workers_live", &m).max(1.0);
        let r = StageReport {
            mean_batch: d("gpubackend_batch_size_sum", &m) / batches.max(1.0),
            batches_per_s: batches / wall,
            worker_busy: d("gpubackend_worker_busy_seconds_total", &m) / wall / workers,
            mean_queue_wait_ms: mean_ms("queue_wait"),
            mean_inference_ms: mean_ms("inference"),
            model,
        };
        println!(
            "  {:<13} {:>10.1} {:>11.1} {:>12.1} % {:>14.1} ms {:>13.1} ms",
            r.model,
            r.mean_batch,
            r.batches_per_s,
            100.0 * r.worker_busy,
            r.mean_queue_wait_ms,
            r.mean_inference_ms
        );
        stages.push(r);
    }
    write_json(
        &a.json,
        &FacesReport {
            clients: a.concurrency,
            seconds: wall,
            requests_per_s: lat.len() as f64 / wall,
            faces_per_s: faces as f64 / wall,
            errors,
            p50_ms: percentile(&lat, 0.5),
            p99_ms: percentile(&lat, 0.99),
            stages,
        },
    )
}

#[derive(Debug, Args, Clone)]
pub struct PersonsArgs {
    /// Persons in the space (the Vision docs' limit is 75,000).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,75000")]
    counts: Vec<usize>,
    /// Searches timed per size.
    #[arg(long, default_value_t = 200)]
    queries: usize,
}

/// Fills one space per size and times `best_match` (exact cosine over the whole space).
fn run_persons(a: &PersonsArgs) -> anyhow::Result<()> {
    use crate::store::PersonStore;
    let dim = crate::models::sface::EMBEDDING_LEN;
    // A deterministic spread of directions (no randomness crate needed).
    let vector = |i: usize| -> Vec<f32> { (0..dim).map(|k| ((i * 7919 + k * 104_729) as f32 * 0.618).sin()).collect() };
    let dir = std::env::temp_dir().join(format!("gpubackend-bench-persons-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut store = PersonStore::open(&dir, dim)?;
    println!("persons: exact cosine search, {dim}-d, store in {}", dir.display());
    for (space, &count) in a.counts.iter().enumerate() {
        let space = space as u32;
        let t = Instant::now();
        let faces: Vec<(i64, Vec<f32>)> = (0..count).map(|i| (i as i64 + 1, vector(i))).collect();
        for chunk in faces.chunks(5000) {
            let refs: Vec<(i64, &[f32])> = chunk.iter().map(|(id, v)| (*id, v.as_slice())).collect();
            store.add_faces(space, &refs)?;
        }
        let fill = t.elapsed();
        let t = Instant::now();
        let mut hits = 0;
        for q in 0..a.queries {
            let i = (q * 37) % count;
            hits += usize::from(store.best_match(space, &vector(i))?.is_some_and(|m| m.person_id == i as i64 + 1));
        }
        let per = t.elapsed().as_secs_f64() * 1e3 / a.queries as f64;
        let t = Instant::now();
        store.add_face(space, 1, &vector(0))?;
        let write = t.elapsed().as_secs_f64() * 1e3;
        println!(
            "  {count:>7} persons: search {per:.3} ms/face ({hits}/{} found themselves), one write {write:.2} ms, bulk fill {:.1} s",
            a.queries,
            fill.as_secs_f64()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[derive(Debug, Args, Clone)]
pub struct E2eArgs {
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    /// Concurrent clients (one keep-alive connection each).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds of measured load (after a warm-up of 10 % of it).
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Images sent, round-robin.
    #[arg(long, value_delimiter = ',', default_value = "tests/data/chelsea.jpg,tests/data/rocket.jpg")]
    images: Vec<PathBuf>,
    #[arg(long, default_value = "test")]
    token: String,
    /// Also write the results as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Args, Clone)]
pub struct ModelArgs {
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Seconds of measured forward passes (after 2 warm-up passes).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Batches kept in flight (default: the server's, 1 on cpu, 2 on GPUs).
    #[arg(long)]
    depth: Option<usize>,
    /// CPU threads of burn flex's pool (cpu only; default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long, default_value = "models/mobilenet_v2/mobilenet_v2-b0353104.pth")]
    weights: PathBuf,
    /// Run PyTorch's eager torchvision MobileNetV2 with this Python (same weights, batch, device,
    /// threads; fp32, TF32 off) and print it beside ours. Needs torch + torchvision.
    #[arg(long)]
    torch: Option<String>,
    /// Also write the results as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Serialize)]
struct E2eReport {
    clients: usize,
    seconds: f64,
    ok: usize,
    errors: usize,
    requests_per_s: f64,
    images_per_s: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    mean_batch: f64,
    worker_busy: f64,
    server_cpu_ms_per_req: f64,
    serving_ms_per_req: f64,
}

#[derive(Serialize)]
struct ModelReport {
    device: String,
    adapter: String,
    batch: usize,
    depth: usize,
    passes: usize,
    seconds: f64,
    images_per_s: f64,
    ms_per_batch: f64,
    cpu_ms_per_image: f64,
    /// PyTorch eager on the same device, batch and threads, when `--torch` was given.
    torch: Option<serde_json::Value>,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

fn scrape(addr: SocketAddr) -> anyhow::Result<String> {
    Ok(Conn::new(addr).get("/metrics")?.text())
}

fn run_e2e(a: &E2eArgs) -> anyhow::Result<E2eReport> {
    let addr = a.addr.to_socket_addrs()?.next().context("address")?;
    let images: Vec<Vec<u8>> = a
        .images
        .iter()
        .map(|p| std::fs::read(p).with_context(|| format!("read {}", p.display())))
        .collect::<Result<_, _>>()?;
    let images = Arc::new(images);
    let path = Arc::new(format!("/api/v1/objects/detect?oauth_provider=mcs&oauth_token={}", a.token));
    let meta: &'static [u8] = br#"{"mode":["object"],"images":[{"name":"file_0"}]}"#;
    let warmup = Duration::from_secs_f64(a.duration * 0.1);
    let measure = Duration::from_secs_f64(a.duration);
    // Warm-up: same load, unmeasured.
    let load = |until: Instant, record: bool| -> Vec<std::thread::JoinHandle<(Vec<Duration>, usize)>> {
        (0..a.concurrency)
            .map(|i| {
                let (images, path) = (images.clone(), path.clone());
                std::thread::spawn(move || {
                    let mut c = Conn::new(addr);
                    let (mut lat, mut errors, mut k) = (Vec::new(), 0usize, i);
                    while Instant::now() < until {
                        let img = &images[k % images.len()];
                        k += 1;
                        let t = Instant::now();
                        match c.post_multipart(&path, &[("file_0", Some("img"), img), ("meta", None, meta)]) {
                            Ok(r) if r.status == 200 => {
                                if record {
                                    lat.push(t.elapsed())
                                }
                            }
                            _ => errors += 1,
                        }
                    }
                    (lat, errors)
                })
            })
            .collect()
    };
    for h in load(Instant::now() + warmup, false) {
        h.join().expect("client thread");
    }
    let before = scrape(addr)?;
    let start = Instant::now();
    let mut lat = Vec::new();
    let mut errors = 0;
    for h in load(start + measure, true) {
        let (l, e) = h.join().expect("client thread");
        lat.extend(l);
        errors += e;
    }
    let wall = start.elapsed().as_secs_f64();
    let after = scrape(addr)?;
    let delta = |name: &str| metric_value(&after, name, &[]) - metric_value(&before, name, &[]);
    lat.sort();
    let n = lat.len() as f64;
    let batches = delta("gpubackend_batch_size_count");
    let mean_batch = delta("gpubackend_batch_size_sum") / batches.max(1.0);
    let workers = metric_value(&after, "gpubackend_workers_live", &[]).max(1.0);
    let busy = delta("gpubackend_worker_busy_seconds_total") / wall / workers;
    let cpu_ms = delta("gpubackend_process_cpu_seconds_total") * 1e3 / n.max(1.0);
    let serving_ms = (delta("gpubackend_process_cpu_seconds_total") - delta("gpubackend_inference_cpu_seconds_total"))
        * 1e3
        / n.max(1.0);
    println!("e2e: {} clients, {:.1} s, {} ok, {} errors", a.concurrency, wall, lat.len(), errors);
    println!("  requests/s          {:.1}", n / wall);
    println!(
        "  latency ms          p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}",
        percentile(&lat, 0.5),
        percentile(&lat, 0.9),
        percentile(&lat, 0.99),
        percentile(&lat, 1.0)
    );
    println!("  mean batch size     {mean_batch:.2} ({batches} batches)");
    println!("  worker busy ratio   {:.1} %", busy * 100.0);
    println!("  server CPU / req    {cpu_ms:.2} ms (of which serving, outside forward passes: {serving_ms:.2} ms)");
    let report = E2eReport {
        clients: a.concurrency,
        seconds: wall,
        ok: lat.len(),
        errors,
        requests_per_s: n / wall,
        images_per_s: n / wall,
        p50_ms: percentile(&lat, 0.5),
        p90_ms: percentile(&lat, 0.9),
        p99_ms: percentile(&lat, 0.99),
        mean_batch,
        worker_busy: busy,
        server_cpu_ms_per_req: cpu_ms,
        serving_ms_per_req: serving_ms,
    };
    write_json(&a.json, &report)?;
    if errors > 0 {
        bail!("{errors} requests failed");
    }
    Ok(report)
}

fn process_cpu() -> f64 {
    crate::metrics::process_cpu_seconds().unwrap_or(f64::NAN)
}

/// The forward loop: keeps `depth` batches launched (the next staged, uploaded and queued before
/// the oldest is read back), as the server's worker does.
fn run_model(a: &ModelArgs) -> anyhow::Result<ModelReport> {
    let spec = DeviceSpec::parse(&a.device)?;
    if let Some(t) = a.threads {
        // The CPU backend's rayon pool; only the first call in a process takes effect.
        let _ = rayon::ThreadPoolBuilder::new().num_threads(t).build_global();
    }
    let depth = a.depth.unwrap_or(if spec == DeviceSpec::Cpu { 1 } else { 2 }).max(1);
    let adapter = spec.probe()?.to_string();
    let model = Model::load(&ModelSpec::MobilenetV2 { weights: a.weights.clone() }, &spec)?;
    let img = decode(&std::fs::read("tests/data/chelsea.jpg")?, &Limits::default())?;
    let input = classifier_input(&img, ClassifierSpec::IMAGENET);
    let batch: Vec<&[f32]> = (0..a.batch).map(|_| input.data.as_slice()).collect();
    let side = model.input_side();
    for _ in 0..2 {
        model.forward(&batch)?;
    }
    let (start, cpu0) = (Instant::now(), process_cpu());
    let mut passes = 0usize;
    let mut launched = std::collections::VecDeque::new();
    while start.elapsed().as_secs_f64() < a.duration || passes + launched.len() < 3 {
        launched.push_back(model.launch(crate::models::stage(&batch, side)?)?);
        if launched.len() >= depth {
            launched.pop_front().expect("non-empty. This is a bug.").read()?;
            passes += 1;
        }
    }
    for p in launched {
        p.read()?;
        passes += 1;
    }
    let wall = start.elapsed().as_secs_f64();
    let images = (passes * a.batch) as f64;
    let cpu_ms = (process_cpu() - cpu0) * 1e3 / images;
    println!(
        "model-only: mobilenet_v2 on {} ({adapter}), batch {}, depth {depth}, {passes} passes in {wall:.1} s",
        a.device, a.batch
    );
    println!("  images/s            {:.1}", images / wall);
    println!("  ms per batch        {:.1}", wall * 1e3 / passes as f64);
    println!("  CPU per image       {cpu_ms:.2} ms");
    let torch = match &a.torch {
        Some(python) => Some(run_torch(python, a, &spec)?),
        None => None,
    };
    if let Some(t) = &torch {
        let theirs = t["images_per_s"].as_f64().unwrap_or(f64::NAN);
        println!("  PyTorch eager       {theirs:.1} images/s ({})", t["label"].as_str().unwrap_or("torch"));
        println!("  ours / PyTorch      {:.2}", images / wall / theirs);
    }
    let report = ModelReport {
        device: a.device.clone(),
        adapter,
        batch: a.batch,
        depth,
        passes,
        seconds: wall,
        images_per_s: images / wall,
        ms_per_batch: wall * 1e3 / passes as f64,
        cpu_ms_per_image: cpu_ms,
        torch,
    };
    write_json(&a.json, &report)?;
    Ok(report)
}

/// PyTorch eager torchvision MobileNetV2 on the same weights, batch and device
/// (tools/bench/torch_mobilenet.py); its JSON result.
fn run_torch(python: &str, a: &ModelArgs, spec: &DeviceSpec) -> anyhow::Result<serde_json::Value> {
    let device = match spec {
        DeviceSpec::Cpu => "cpu".to_string(),
        DeviceSpec::Cuda(i) | DeviceSpec::Wgpu(Some(i)) => format!("cuda:{i}"),
        DeviceSpec::Wgpu(None) => "cuda:0".to_string(),
    };
    let threads = a.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let out = std::process::Command::new(python)
        .args(["tools/bench/torch_mobilenet.py", "--weights"])
        .arg(&a.weights)
        .args(["--batch", &a.batch.to_string(), "--device", &device, "--threads", &threads.to_string()])
        .args(["--duration", &a.duration.to_string(), "--image", "tests/data/chelsea.jpg"])
        .output()
        .with_context(|| format!("run {python} tools/bench/torch_mobilenet.py"))?;
    if !out.status.success() {
        bail!("PyTorch run failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let last = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().to_string();
    serde_json::from_str(&last).with_context(|| format!("PyTorch run printed no JSON result: {last}"))
}

pub fn run(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::E2e(a) => {
            run_e2e(&a)?;
        }
        Cmd::Model(a) => {
            run_model(&a)?;
        }
        Cmd::Persons(a) => run_persons(&a)?,
        Cmd::Faces(a) => run_faces(&a)?,
        Cmd::Compare { e2e, device, depth, weights } => {
            let r = run_e2e(&E2eArgs { json: None, ..e2e.clone() })?;
            let batch = r.mean_batch.round().max(1.0) as usize;
            let m = run_model(&ModelArgs {
                device,
                batch,
                duration: e2e.duration / 2.0,
                depth,
                threads: None,
                weights,
                torch: None,
                json: None,
            })?;
            let ratio = r.images_per_s / m.images_per_s;
            println!("compare:");
            println!("  e2e / model-only    {ratio:.3} (images/s {:.1} / {:.1})", r.images_per_s, m.images_per_s);
            println!("  serving overhead    {:.2} ms CPU per request (outside forward passes)", r.serving_ms_per_req);
            write_json(&e2e.json, &serde_json::json!({"e2e": r, "model": m, "e2e_over_model": ratio}))?;
        }
    }
    Ok(())
}
