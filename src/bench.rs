//! Benchmarks (`gpubackend bench …`). A tool, not the data path: anyhow errors, printed reports,
//! and `--json FILE` for machine-readable results (the GPU check assembles them into one report).
//!
//! `bench e2e`     drives a running server with concurrent multipart uploads of real images and
//!                 prints req/s, latency percentiles, mean batch size, worker busy ratio and server
//!                 CPU ms per request (from the server's /metrics).
//! `bench distributed` starts one process and `--role api` + `--role worker` processes over a
//!                 Redis it starts, runs `e2e` on each in turn for `--rounds` rounds, and prints
//!                 each round's ratio and the median round.
//! `bench model`   runs the forward pass alone in a loop at a given batch size on a device, keeping
//!                 `--depth` batches in flight as the server's worker does (the next launched
//!                 before the current one is read back); `--torch PYTHON` runs PyTorch's eager
//!                 torchvision MobileNetV2 (same weights, batch, device, threads) beside it.
//! `bench layers`  times every op of the CPU forward pass (MobileNetV2 or P-Net) and sums them per
//!                 kind (stem, depthwise, pointwise, BatchNorm, ReLU6, …): ms per item, share and
//!                 GFLOP/s; for MobileNetV2 both torchvision's graph and as served (BatchNorm folded).
//! `bench compare` runs both (model-only at the e2e mean batch size) and prints e2e / model-only.
//! `bench faces`   drives a running server's persons/recognize with real faces: the four portraits
//!                 of tests/data and tests/data/collage.jpg (a 2×2 collage of them: 4 faces in one
//!                 photo; no real group photo is available from the package registries here), and prints req/s, faces/s,
//!                 p50/p99 and, per face stage (P-Net tiles, R-Net, O-Net, embedder), the mean
//!                 batch size, batches/s, worker busy share and mean queue wait.
//! `bench text`    the same for text/recognize (lines/s; stages det, cls, rec) on the test
//!                 images with text, and `bench plates` for objects/detect `car_number` (plates/s;
//!                 stages det, rec) on a car photo and a photo without a plate.
//! `bench improve` drives photo/improve `resolution` with tests/data/chelsea.png resized to each
//!                 `--sizes` side: images/s, tiles/s, p50/p99, the networks' batches and busy share.
//! `bench soak`    many clients for a long time on mixed endpoints (objects, detector, text, faces,
//!                 super-resolution) and bad inputs (truncated JPEG, garbage, broken meta): the
//!                 server's resident memory over time and after the load, p50/p99, answers by HTTP
//!                 status, and every 200 answer checked to name each sent image exactly once.
//! `bench networks` every network we serve, model-only on the CPU, beside onnxruntime / ncnn on
//!                 the same files, shapes and threads (src/bench/networks.rs).
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
use crate::models::profile::OpTime;
use crate::models::{DeviceSpec, Model};
use crate::pipelines::decode::decode;
use crate::pipelines::preprocess::{ClassifierSpec, classifier_input};

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Drive a running server's objects/detect with real JPEG uploads.
    E2e(E2eArgs),
    /// `e2e` on one process (`--role all`), then on `--role api` + `--role worker` over a Redis it
    /// starts: req/s, p50/p99 and worker busy of both, and distributed / in-process.
    Distributed(DistributedArgs),
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
    /// Where the CPU forward pass spends its time, per op kind (MobileNetV2, CPU backend).
    Layers(LayersArgs),
    /// Person store search and writes at 1k…75k persons per space.
    Persons(PersonsArgs),
    /// Drive a running server's persons/recognize with real faces.
    Faces(DriveArgs),
    /// Drive a running server's text/recognize with real text images.
    Text(DriveArgs),
    /// Drive a running server's objects/detect `car_number` with a car photo and a photo without a plate.
    Plates(DriveArgs),
    /// Drive a running server's photo/improve `resolution` at several image sizes: images/s, tiles/s.
    Improve(ImproveArgs),
    /// Mixed endpoints and bad inputs from many clients for a long time: resident memory over
    /// time, p50/p99, answers by status, and that every answered image was answered exactly once.
    Soak(SoakArgs),
    /// `e2e` at its capacity (`--concurrency`, default 32 clients), then at `--overload-clients`
    /// (default 512: 10× more clients than the capacity needs) on the same server: goodput (200
    /// answers/s) and p99 of the answered at both, and their ratios.
    Overload {
        #[command(flatten)]
        e2e: E2eArgs,
        #[arg(long, default_value_t = 512)]
        overload_clients: usize,
    },
    /// Every network we serve, model-only on the CPU, beside onnxruntime / ncnn on the same files,
    /// shapes and threads: ms, anchor / ours, convolution GFLOP/s against the matmul peak.
    Networks(networks::NetworksArgs),
}

mod networks;

/// Writes `value` as JSON to `path`, when one was given.
fn write_json(path: &Option<PathBuf>, value: &impl Serialize) -> anyhow::Result<()> {
    if let Some(p) = path {
        std::fs::write(p, serde_json::to_vec_pretty(value)?).with_context(|| format!("write {}", p.display()))?;
    }
    Ok(())
}

/// How `bench faces`, `bench text` and `bench plates` drive a running server.
#[derive(Debug, Args, Clone)]
pub struct DriveArgs {
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Seconds of measured load (after a warm-up of 10 % of it).
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    #[arg(long, default_value = "test")]
    token: String,
    /// The model's name in the server's config (default: `face`, `text` or `plates`).
    #[arg(long)]
    model: Option<String>,
    /// Also write the results as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// What `bench faces`, `bench text` and `bench plates` send, and what they count in the answers.
struct Drive {
    title: &'static str,
    /// Endpoint path without the query.
    endpoint: &'static str,
    meta: &'static [u8],
    photos: &'static [&'static str],
    /// Items found in one answer (faces, lines, plates).
    unit: &'static str,
    count: fn(&serde_json::Value) -> usize,
    /// The model's stages (suffixes of its name).
    stages: &'static [&'static str],
    default_model: &'static str,
}

const FACES: Drive = Drive {
    title: "persons/recognize, photos: 4 portraits + a 4-face collage",
    endpoint: "/api/v1/persons/recognize",
    meta: br#"{"space":"9","create_new":true,"update_embedding":false,"images":[{"name":"file"}]}"#,
    photos: &["obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg", "collage.jpg"],
    unit: "faces",
    count: |v| v["body"]["objects"][0]["persons"].as_array().map_or(0, Vec::len),
    stages: &["pnet", "rnet", "onet", "embed"],
    default_model: "face",
};

const TEXT: Drive = Drive {
    title: "text/recognize, images: 2 screenshots, a rendered page, 2 plate photos, a car photo",
    endpoint: "/api/v1/text/recognize",
    meta: br#"{"images":[{"name":"file"}]}"#,
    photos: &[
        "why-rust.png",
        "polar-bears.png",
        "rendered_lines.png",
        "plate_ad799kb.png",
        "plate_krw301.png",
        "car_5au5341.png",
    ],
    unit: "lines",
    count: |v| v["body"]["objects"][0]["text"].as_str().map_or(0, |t| t.lines().count()),
    stages: &["det", "cls", "rec"],
    default_model: "text",
};

const PLATES: Drive = Drive {
    title: "objects/detect car_number, images: a car photo (518×331) and a cat photo (451×300, no plate)",
    endpoint: "/api/v1/objects/detect",
    meta: br#"{"mode":["car_number"],"images":[{"name":"file"}]}"#,
    photos: &["car_5au5341.png", "chelsea.jpg"],
    unit: "plates",
    count: |v| v["body"]["car_number_labels"][0]["labels"].as_array().map_or(0, Vec::len),
    stages: &["det", "rec"],
    default_model: "plates",
};

#[derive(Serialize)]
struct DriveReport {
    clients: usize,
    seconds: f64,
    requests_per_s: f64,
    /// Items (faces, lines, plates) found per second.
    items_per_s: f64,
    unit: &'static str,
    /// `bench faces`' name for `items_per_s` (the GPU report reads it).
    #[serde(skip_serializing_if = "Option::is_none")]
    faces_per_s: Option<f64>,
    errors: usize,
    p50_ms: f64,
    p99_ms: f64,
    /// Per stage: mean batch, batches/s, worker busy share, mean queue wait (ms), CPU…
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

/// Drives a running server with `d`'s photos from `a.concurrency` clients (each its own
/// keep-alive connection, photos in turn) and prints requests/s, items/s, p50/p99 and, per stage,
/// what /metrics says about its batches over the measured window.
fn run_drive(a: &DriveArgs, d: &Drive) -> anyhow::Result<()> {
    let photos: Vec<(String, Vec<u8>)> = d
        .photos
        .iter()
        .map(|n| {
            std::fs::read(format!("tests/data/{n}"))
                .with_context(|| format!("read tests/data/{n}"))
                .map(|b| (n.to_string(), b))
        })
        .collect::<Result<_, _>>()?;
    let report = drive(a, d, photos, d.meta.to_vec())?;
    write_json(&a.json, &report)
}

/// [`run_drive`] with `photos` and `meta` given: prints the report and returns it.
fn drive(a: &DriveArgs, d: &Drive, photos: Vec<(String, Vec<u8>)>, meta: Vec<u8>) -> anyhow::Result<DriveReport> {
    let addr = a.addr.to_socket_addrs()?.next().context("address")?;
    let photos = Arc::new(photos);
    let meta = Arc::new(meta);
    let path = Arc::new(format!("{}?oauth_provider=mcs&oauth_token={}", d.endpoint, a.token));
    let count = d.count;
    let load = |until: Instant| -> Vec<std::thread::JoinHandle<(Vec<Duration>, usize, usize)>> {
        (0..a.concurrency)
            .map(|i| {
                let (photos, path, meta) = (photos.clone(), path.clone(), meta.clone());
                std::thread::spawn(move || {
                    let mut c = Conn::new(addr);
                    let (mut lat, mut items, mut errors, mut k) = (Vec::new(), 0usize, 0usize, i);
                    while Instant::now() < until {
                        let (name, photo) = &photos[k % photos.len()];
                        k += 1;
                        let t = Instant::now();
                        match c.post_multipart(&path, &[("file", Some(name.as_str()), photo), ("meta", None, &meta)]) {
                            Ok(r) if r.status == 200 => {
                                lat.push(t.elapsed());
                                items += count(&r.json());
                            }
                            _ => errors += 1,
                        }
                    }
                    (lat, items, errors)
                })
            })
            .collect()
    };
    for h in load(Instant::now() + Duration::from_secs_f64(a.duration * 0.1)) {
        h.join().expect("client thread");
    }
    let before = scrape(addr)?;
    let start = Instant::now();
    let (mut lat, mut items, mut errors) = (Vec::new(), 0, 0);
    for h in load(start + Duration::from_secs_f64(a.duration)) {
        let (l, f, e) = h.join().expect("client thread");
        lat.extend(l);
        items += f;
        errors += e;
    }
    let wall = start.elapsed().as_secs_f64();
    let after = scrape(addr)?;
    lat.sort();
    println!("{} e2e: {}, {} clients, {:.0} s", d.default_model, d.title, a.concurrency, wall);
    println!(
        "  machine             {} ({} cores)",
        cpu_name(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("  requests/s          {:.2}  ({errors} errors)", lat.len() as f64 / wall);
    println!("  {:<19} {:.2}", format!("{}/s", d.unit), items as f64 / wall);
    println!("  latency p50 / p99   {:.0} / {:.0} ms", percentile(&lat, 0.5), percentile(&lat, 0.99));
    println!("  stage         mean batch   batches/s   worker busy   mean queue wait   mean inference");
    let model_name = a.model.as_deref().unwrap_or(d.default_model);
    let mut stages = Vec::new();
    for stage in d.stages {
        let model = format!("{model_name}_{stage}");
        let delta = |name: &str, labels: &[(&str, &str)]| {
            metric_value(&after, name, labels) - metric_value(&before, name, labels)
        };
        let m = [("model", model.as_str())];
        let batches = delta("gpubackend_batch_size_count", &m);
        let mean_ms = |stage: &str| {
            let l = [("model", model.as_str()), ("stage", stage)];
            1e3 * delta("gpubackend_stage_duration_seconds_sum", &l)
                / delta("gpubackend_stage_duration_seconds_count", &l).max(1.0)
        };
        let workers = metric_value(&after, "gpubackend_workers_live", &m).max(1.0);
        let r = StageReport {
            mean_batch: delta("gpubackend_batch_size_sum", &m) / batches.max(1.0),
            batches_per_s: batches / wall,
            worker_busy: delta("gpubackend_worker_busy_seconds_total", &m) / wall / workers,
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
    let items_per_s = items as f64 / wall;
    Ok(DriveReport {
        clients: a.concurrency,
        seconds: wall,
        requests_per_s: lat.len() as f64 / wall,
        items_per_s,
        unit: d.unit,
        faces_per_s: (d.unit == "faces").then_some(items_per_s),
        errors,
        p50_ms: percentile(&lat, 0.5),
        p99_ms: percentile(&lat, 0.99),
        stages,
    })
}

#[derive(Debug, Args, Clone)]
pub struct ImproveArgs {
    #[command(flatten)]
    drive: DriveArgs,
    /// Square image sides driven in turn (tests/data/chelsea.png resized).
    #[arg(long, value_delimiter = ',', default_value = "64,128,256")]
    sizes: Vec<u32>,
    /// `art` (realesr-animevideov3) or `photo` (RealESRGAN_x4plus).
    #[arg(long, default_value = "art")]
    ftype: String,
    #[arg(long, default_value_t = 4)]
    rfactor: u32,
}

const IMPROVE: Drive = Drive {
    title: "photo/improve resolution, tests/data/chelsea.png resized",
    endpoint: "/api/v1/photo/improve",
    meta: b"",
    photos: &[],
    unit: "images",
    count: |v| usize::from(v["body"]["resolution"][0]["status"] == 0),
    stages: &["art", "photo"],
    default_model: "realesrgan",
};

/// `bench improve`: per size, images/s, tiles/s (the network's items), p50/p99 and the stages'
/// batches and busy share.
fn run_improve(a: &ImproveArgs) -> anyhow::Result<()> {
    let cat = image::open("tests/data/chelsea.png").context("read tests/data/chelsea.png")?;
    let meta = serde_json::json!({"mode": ["resolution"], "rfactor": a.rfactor, "ftype": a.ftype,
        "images": [{"name": "file"}]});
    let mut reports = Vec::new();
    for &side in &a.sizes {
        let img = cat.resize_exact(side, side, image::imageops::FilterType::Triangle);
        let mut png = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
        println!("== {side}×{side}, ftype {}, ×{}", a.ftype, a.rfactor);
        let r = drive(&a.drive, &IMPROVE, vec![(format!("chelsea-{side}.png"), png)], meta.to_string().into_bytes())?;
        let stage = r.stages.iter().find(|s| s.model.ends_with(&a.ftype)).context("the asked network's stage")?;
        let tiles_per_s = stage.mean_batch * stage.batches_per_s;
        println!(
            "  tiles/s             {tiles_per_s:.2}  ({:.1} tiles per image)",
            tiles_per_s / r.items_per_s.max(1e-9)
        );
        reports.push(serde_json::json!({"side": side, "tiles_per_s": tiles_per_s, "report": r}));
    }
    write_json(&a.drive.json, &reports)
}

#[derive(Debug, Args, Clone)]
pub struct PersonsArgs {
    /// Persons in the space (the Vision docs' limit is 75,000).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,75000")]
    counts: Vec<usize>,
    /// Searches timed per size.
    #[arg(long, default_value_t = 200)]
    queries: usize,
    /// Measure the shared store on this PostgreSQL database instead of a temporary SQLite file
    /// (also times a second replica catching up and a fresh replica loading). It empties and
    /// fills spaces 0, 1, … of that database: never point it at one with real persons.
    #[arg(long)]
    postgres_url: Option<String>,
}

/// Milliseconds `f` took.
fn timed_ms<E>(f: impl FnOnce() -> Result<(), E>) -> Result<f64, E> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

/// Fills one space per size and times `best_match` (exact cosine over the whole space).
fn run_persons(a: &PersonsArgs) -> anyhow::Result<()> {
    use crate::store::PersonStore;
    let dim = crate::models::sface::EMBEDDING_LEN;
    // A deterministic spread of directions (no randomness crate needed).
    let vector = |i: usize| -> Vec<f32> { (0..dim).map(|k| ((i * 7919 + k * 104_729) as f32 * 0.618).sin()).collect() };
    let dir = std::env::temp_dir().join(format!("gpubackend-bench-persons-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let open = || match &a.postgres_url {
        Some(url) => PersonStore::open_postgres(url, dim),
        None => PersonStore::open(&dir, dim),
    };
    let mut store = open()?;
    // A second replica (PostgreSQL): how long catching up with the others' writes takes.
    let mut other = match a.postgres_url {
        Some(_) => Some(open()?),
        None => None,
    };
    match &a.postgres_url {
        Some(_) => println!("persons: exact cosine search, {dim}-d, store on PostgreSQL (--postgres-url)"),
        None => println!("persons: exact cosine search, {dim}-d, store in {}", dir.display()),
    }
    for (space, &count) in a.counts.iter().enumerate() {
        let space = space as u32;
        store.truncate(space)?;
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
        let caught_up_bulk = other.as_mut().map(|o| timed_ms(|| o.refresh())).transpose()?;
        // Single-face writes (a `persons/set` of one photo), each its own transaction.
        const WRITES: usize = 20;
        let t = Instant::now();
        for w in 0..WRITES {
            store.add_face(space, (w % count) as i64 + 1, &vector(w))?;
        }
        let write = t.elapsed().as_secs_f64() * 1e3 / WRITES as f64;
        println!(
            "  {count:>7} persons: search {per:.3} ms/face ({hits}/{} found themselves), one write {write:.2} ms (mean of {WRITES}), bulk fill {:.1} s",
            a.queries,
            fill.as_secs_f64()
        );
        if let (Some(o), Some(bulk)) = (other.as_mut(), caught_up_bulk) {
            let one = timed_ms(|| o.refresh())?;
            let (load, fresh) = {
                let t = Instant::now();
                let fresh = open()?;
                (t.elapsed().as_secs_f64() * 1e3, fresh)
            };
            let total: usize = (0..=space).map(|s| fresh.len(s)).sum();
            println!(
                "           another replica: catch-up {bulk:.0} ms after the fill ({count} changes), {one:.2} ms after {WRITES} writes; a new replica loads {total} persons in {load:.0} ms"
            );
        }
    }
    if a.postgres_url.is_some() {
        for space in 0..a.counts.len() as u32 {
            store.truncate(space)?;
        }
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
    /// The model's name in the server's config: worker busy and batch figures are its own.
    #[arg(long, default_value = "mobilenet_v2")]
    model: String,
    /// The objects/detect mode requested (`multiobject` / `pedestrian` with `--model centernet`
    /// drives the COCO detector).
    #[arg(long, default_value = "object")]
    mode: String,
    /// The Vision endpoint driven: objects/detect (with `--mode`), or an endpoint whose meta is
    /// the images alone (`adult/detect` with `--model adult`).
    #[arg(long, default_value = "objects/detect")]
    endpoint: String,
    /// Also write the results as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Where the model's workers export their metrics when they are other processes (`--role
    /// worker`): batch and busy figures are summed over these instead of read from `--addr`.
    #[arg(long, value_delimiter = ',')]
    worker_metrics: Vec<String>,
    /// 503 refusals are expected (overload): counted and reported, not a failure of the run.
    #[arg(long)]
    refusals_ok: bool,
}

/// `bench distributed`: the same load on one process and on api + workers over Redis.
#[derive(Debug, Args, Clone)]
pub struct DistributedArgs {
    #[command(flatten)]
    e2e: E2eArgs,
    /// The server's config (the model's batching settings apply to both runs).
    #[arg(long, default_value = "config/default.toml")]
    config: PathBuf,
    /// Worker processes (`--role worker`) in the distributed run.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// The Redis server binary (Debian `redis-server`), started on a free loopback port.
    #[arg(long, default_value = "redis-server")]
    redis_server: PathBuf,
    /// Measured rounds. Both set-ups stay up; each round loads the one process, then api +
    /// workers, so a machine whose speed drifts moves both sides of each round's ratio alike.
    /// The median round is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
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
    /// CPU threads of the forward pass (cpu only; default: one per core, and with --torch also 1).
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

#[derive(Debug, Args, Clone)]
pub struct LayersArgs {
    /// `mobilenet_v2` (224² images) or `pnet` (MTCNN P-Net on 128² tiles, as the face model runs it).
    #[arg(long, default_value = "mobilenet_v2")]
    model: String,
    /// Images (MobileNetV2) or tiles (P-Net) per forward pass.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Timed forward passes (after 2 warm-up passes).
    #[arg(long, default_value_t = 10)]
    passes: usize,
    /// CPU threads of burn flex's pool (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// The model's weights (default: the fetched MobileNetV2 or P-Net file).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Also write the results as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Serialize)]
struct LayerRow {
    kind: &'static str,
    ops_per_pass: usize,
    ms_per_item: f64,
    share: f64,
    gflops: Option<f64>,
}

#[derive(Serialize)]
struct LayersReport {
    model: String,
    cpu: String,
    simd: Vec<&'static str>,
    /// The SIMD level of the fused kernels' loops (gemm picks the same).
    kernels: &'static str,
    threads: usize,
    batch: usize,
    /// A 1024³ f32 matmul on the same backend and threads: the attainable GFLOP/s reference.
    matmul_gflops: f64,
    /// MobileNetV2 only: torchvision's graph as loaded (conv → BatchNorm → ReLU6).
    unfolded: Option<Vec<LayerRow>>,
    unfolded_ms_per_item: Option<f64>,
    /// MobileNetV2 only: BatchNorm folded, burn flex's own convolution and ReLU6.
    folded: Option<Vec<LayerRow>>,
    folded_ms_per_item: Option<f64>,
    /// P-Net only: burn flex's own ops (NCHW), what the GPUs run.
    burn_ops: Option<Vec<LayerRow>>,
    burn_ops_ms_per_item: Option<f64>,
    /// As served (MobileNetV2: BatchNorm folded into the convolutions).
    served: Vec<LayerRow>,
    served_ms_per_item: f64,
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn simd_features() -> Vec<&'static str> {
    #[allow(unused_mut)]
    let mut v = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        for (name, on) in [
            ("sse4.2", is_x86_feature_detected!("sse4.2")),
            ("avx2", is_x86_feature_detected!("avx2")),
            ("fma", is_x86_feature_detected!("fma")),
            ("avx512f", is_x86_feature_detected!("avx512f")),
            ("avx512vl", is_x86_feature_detected!("avx512vl")),
        ] {
            if on {
                v.push(name);
            }
        }
    }
    v
}

/// Runs `pass` (one forward pass, its ops timed into the vector) 2 + `passes` times and sums the
/// timed passes per op kind; also the total ms per item.
fn profile(pass: impl Fn(&mut Vec<OpTime>), batch: usize, passes: usize) -> (Vec<LayerRow>, f64) {
    let mut ops = Vec::new();
    for _ in 0..2 {
        pass(&mut ops);
    }
    ops.clear();
    for _ in 0..passes {
        pass(&mut ops);
    }
    let total: f64 = ops.iter().map(|o| o.seconds).sum();
    let mut kinds: Vec<&'static str> = Vec::new();
    for o in &ops {
        if !kinds.contains(&o.kind) {
            kinds.push(o.kind);
        }
    }
    let rows = kinds
        .into_iter()
        .map(|kind| {
            let of: Vec<_> = ops.iter().filter(|o| o.kind == kind).collect();
            let secs: f64 = of.iter().map(|o| o.seconds).sum();
            let flops: f64 = of.iter().map(|o| o.flops).sum();
            LayerRow {
                kind,
                ops_per_pass: of.len() / passes,
                ms_per_item: secs * 1e3 / (passes * batch) as f64,
                share: secs / total,
                gflops: (flops > 0.0).then(|| flops / secs / 1e9),
            }
        })
        .collect();
    (rows, total * 1e3 / (passes * batch) as f64)
}

fn print_layers(title: &str, unit: &str, rows: &[LayerRow], total: f64) {
    println!("{title}: {total:.2} ms per {unit}");
    println!("  {:<24} {:>5} {:>9} {:>7} {:>9}", "op", "ops", "ms/item", "share", "GFLOP/s");
    for r in rows {
        let g = r.gflops.map_or("-".to_string(), |g| format!("{g:.1}"));
        println!("  {:<24} {:>5} {:>9.3} {:>6.1}% {:>9}", r.kind, r.ops_per_pass, r.ms_per_item, r.share * 100.0, g);
    }
}

fn print_header(a: &LayersArgs, matmul_gflops: f64) {
    println!(
        "{} on cpu: {} [{}], fused kernels at {}, {} threads, batch {}, {} passes",
        a.model,
        cpu_name(),
        simd_features().join(" "),
        crate::models::cpu::Level::detect().name(),
        rayon::current_num_threads(),
        a.batch,
        a.passes
    );
    println!("  reference: 1024³ f32 matmul {matmul_gflops:.1} GFLOP/s on burn flex, same threads");
}

fn run_layers(a: &LayersArgs) -> anyhow::Result<()> {
    use crate::models::mobilenet_v2::{Classifier, INPUT_SIZE};
    use crate::models::mtcnn::PNet;
    use burn::prelude::{Tensor, TensorData};
    if let Some(t) = a.threads {
        let _ = rayon::ThreadPoolBuilder::new().num_threads(t).build_global();
    }
    let device = burn::prelude::Device::flex();

    let n = 1024;
    let m = Tensor::<2>::from_data(TensorData::new(vec![0.5f32; n * n], [n, n]), &device);
    m.clone().matmul(m.clone()).into_data();
    let start = Instant::now();
    for _ in 0..3 {
        m.clone().matmul(m.clone()).into_data();
    }
    let matmul_gflops = 3.0 * 2.0 * (n * n * n) as f64 / start.elapsed().as_secs_f64() / 1e9;

    let (unfolded, folded, burn_ops, served) = match a.model.as_str() {
        "mobilenet_v2" => {
            let weights = a.weights.clone().unwrap_or_else(|| "models/mobilenet_v2/mobilenet_v2-b0353104.pth".into());
            let img = decode(&std::fs::read("tests/data/chelsea.jpg")?, &Default::default())?;
            let input = classifier_input(&img, ClassifierSpec::IMAGENET);
            let data: Vec<f32> = (0..a.batch).flat_map(|_| input.data.iter().copied()).collect();
            let x = Tensor::<4>::from_data(TensorData::new(data, [a.batch, 3, INPUT_SIZE, INPUT_SIZE]), &device);
            let run = |fold: bool, fused: bool| -> anyhow::Result<(Vec<LayerRow>, f64)> {
                let net = Classifier::load_variant(&weights, device.clone(), fold, fused)?;
                Ok(profile(
                    |ops| {
                        net.network().forward_profiled(x.clone(), ops).into_data();
                    },
                    a.batch,
                    a.passes,
                ))
            };
            let unfolded = run(false, false)?;
            let folded = run(true, false)?;
            let served = run(true, true)?;
            print_header(a, matmul_gflops);
            print_layers("torchvision graph on burn flex (conv → BatchNorm → ReLU6)", "image", &unfolded.0, unfolded.1);
            print_layers("BatchNorm folded, burn flex ops", "image", &folded.0, folded.1);
            print_layers("as served: folded + fused CPU kernels", "image", &served.0, served.1);
            (Some(unfolded), Some(folded), None, served)
        }
        "pnet" => {
            let weights = a.weights.clone().unwrap_or_else(|| "models/mtcnn/pnet.pt".into());
            let img = decode(&std::fs::read("tests/data/obama2.jpg")?, &Default::default())?;
            let side = 128;
            // The photo's first P-Net tile, as the face model cuts and normalises it.
            let (_, tiles) = crate::pipelines::face_detect::pyramid_tiles(&img, &Default::default(), side);
            let tile = tiles.into_iter().next().context("no P-Net tile")?.input;
            let data: Vec<f32> = (0..a.batch).flat_map(|_| tile.iter().copied()).collect();
            let x = Tensor::<4>::from_data(TensorData::new(data, [a.batch, 3, side, side]), &device);
            let run = |net: &PNet| {
                profile(
                    |ops| {
                        let out = net.forward_profiled(x.clone(), ops);
                        out.prob.into_data();
                        out.reg.into_data();
                    },
                    a.batch,
                    a.passes,
                )
            };
            let net = PNet::load(&weights, &device)?;
            let burn_ops = run(&net.clone().burn_ops());
            let served = run(&net);
            print_header(a, matmul_gflops);
            print_layers("burn flex ops (NCHW)", "128² tile", &burn_ops.0, burn_ops.1);
            print_layers("as served: channels-last trunk (crates/kernels hwc)", "128² tile", &served.0, served.1);
            (None, None, Some(burn_ops), served)
        }
        other => bail!("--model {other}: expected mobilenet_v2 or pnet"),
    };

    let report = LayersReport {
        model: a.model.clone(),
        cpu: cpu_name(),
        simd: simd_features(),
        kernels: crate::models::cpu::Level::detect().name(),
        threads: rayon::current_num_threads(),
        batch: a.batch,
        matmul_gflops,
        unfolded_ms_per_item: unfolded.as_ref().map(|u| u.1),
        unfolded: unfolded.map(|u| u.0),
        folded_ms_per_item: folded.as_ref().map(|u| u.1),
        folded: folded.map(|u| u.0),
        burn_ops_ms_per_item: burn_ops.as_ref().map(|u| u.1),
        burn_ops: burn_ops.map(|u| u.0),
        served_ms_per_item: served.1,
        served: served.0,
    };
    write_json(&a.json, &report)
}

#[derive(Serialize)]
struct E2eReport {
    clients: usize,
    seconds: f64,
    ok: usize,
    /// 503 answers (the server refused: overload), and every other failure.
    refused: usize,
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
    client_cpu_ms_per_req: f64,
}

#[derive(Serialize)]
struct ModelReport {
    device: String,
    adapter: String,
    batch: usize,
    depth: usize,
    /// CPU threads (the rayon pool the forward pass ran in; on GPUs: the cores).
    threads: usize,
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
    let path = Arc::new(format!("/api/v1/{}?oauth_provider=mcs&oauth_token={}", a.endpoint, a.token));
    let meta = if a.endpoint == "objects/detect" {
        serde_json::json!({"mode": [a.mode.as_str()], "images": [{"name": "file_0"}]})
    } else {
        serde_json::json!({"images": [{"name": "file_0"}]})
    };
    let meta: Arc<Vec<u8>> = Arc::new(meta.to_string().into_bytes());
    let warmup = Duration::from_secs_f64(a.duration * 0.1);
    let measure = Duration::from_secs_f64(a.duration);
    // Warm-up: same load, unmeasured.
    let load = |until: Instant, record: bool| -> Vec<std::thread::JoinHandle<(Vec<Duration>, usize, usize)>> {
        (0..a.concurrency)
            .map(|i| {
                let (images, path, meta) = (images.clone(), path.clone(), meta.clone());
                std::thread::spawn(move || {
                    let mut c = Conn::new(addr);
                    let (mut lat, mut refused, mut errors, mut k) = (Vec::new(), 0usize, 0usize, i);
                    while Instant::now() < until {
                        let img = &images[k % images.len()];
                        k += 1;
                        let t = Instant::now();
                        match c.post_multipart(&path, &[("file_0", Some("img"), img), ("meta", None, meta.as_slice())])
                        {
                            Ok(r) if r.status == 200 => {
                                if record {
                                    lat.push(t.elapsed())
                                }
                            }
                            // A closed-loop client: sent again at once, as wrk does.
                            Ok(r) if r.status == 503 => refused += 1,
                            _ => errors += 1,
                        }
                    }
                    (lat, refused, errors)
                })
            })
            .collect()
    };
    for h in load(Instant::now() + warmup, false) {
        h.join().expect("client thread");
    }
    let before = scrape(addr)?;
    let workers_before = worker_scrapes(&a.worker_metrics)?;
    let client_cpu0 = process_cpu();
    let start = Instant::now();
    let mut lat = Vec::new();
    let (mut refused, mut errors) = (0, 0);
    for h in load(start + measure, true) {
        let (l, r, e) = h.join().expect("client thread");
        lat.extend(l);
        refused += r;
        errors += e;
    }
    let wall = start.elapsed().as_secs_f64();
    let client_cpu = process_cpu() - client_cpu0;
    let after = scrape(addr)?;
    let workers_after = worker_scrapes(&a.worker_metrics)?;
    let delta = |name: &str| metric_value(&after, name, &[]) - metric_value(&before, name, &[]);
    // Per-model series: the classifier's own (the server may serve other models, e.g. faces).
    let m = [("model", a.model.as_str())];
    // The model's figures: from the worker processes when they are separate (`--worker-metrics`).
    let (model_before, model_after) = if a.worker_metrics.is_empty() {
        (vec![before.clone()], vec![after.clone()])
    } else {
        (workers_before, workers_after)
    };
    let sum = |texts: &[String], name: &str| texts.iter().map(|t| metric_value(t, name, &m)).sum::<f64>();
    let delta_m = |name: &str| sum(&model_after, name) - sum(&model_before, name);
    lat.sort();
    let n = lat.len() as f64;
    let batches = delta_m("gpubackend_batch_size_count");
    let mean_batch = delta_m("gpubackend_batch_size_sum") / batches.max(1.0);
    let workers = sum(&model_after, "gpubackend_workers_live").max(1.0);
    let busy = delta_m("gpubackend_worker_busy_seconds_total") / wall / workers;
    let cpu_ms = delta("gpubackend_process_cpu_seconds_total") * 1e3 / n.max(1.0);
    let serving_ms = (delta("gpubackend_process_cpu_seconds_total") - delta("gpubackend_inference_cpu_seconds_total"))
        * 1e3
        / n.max(1.0);
    println!(
        "e2e: {} clients, {:.1} s, {} ok, {} refused (503), {} errors",
        a.concurrency,
        wall,
        lat.len(),
        refused,
        errors
    );
    println!("  requests/s          {:.1} answered 200 (goodput), {:.1} refused", n / wall, refused as f64 / wall);
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
    // The load generator's own CPU: on a small machine it shares the cores with the server.
    let client_ms = client_cpu * 1e3 / n.max(1.0);
    println!("  client CPU / req    {client_ms:.2} ms (this load generator)");
    let report = E2eReport {
        clients: a.concurrency,
        seconds: wall,
        ok: lat.len(),
        refused,
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
        client_cpu_ms_per_req: client_ms,
    };
    write_json(&a.json, &report)?;
    if errors > 0 {
        bail!("{errors} requests failed");
    }
    if refused > 0 && !a.refusals_ok {
        bail!("{refused} requests refused (503; --refusals-ok when overload is the point)");
    }
    Ok(report)
}

fn worker_scrapes(addrs: &[String]) -> anyhow::Result<Vec<String>> {
    addrs.iter().map(|a| scrape(a.to_socket_addrs()?.next().context("worker address")?)).collect()
}

/// A server process of this binary, killed on drop.
struct Proc(std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts `gpubackend <args>` on a free port and waits until /health/ready answers 200.
fn start_role(args: &[String]) -> anyhow::Result<(Proc, SocketAddr)> {
    let port = free_port()?;
    let child = std::process::Command::new(std::env::current_exe()?)
        .args(args)
        .args(["--port", &port.to_string()])
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("start a server process")?;
    let mut proc = Proc(child);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let start = Instant::now();
    while !Conn::new(addr).get("/health/ready").is_ok_and(|r| r.status == 200) {
        if let Some(status) = proc.0.try_wait()? {
            bail!("{args:?} exited: {status}");
        }
        if start.elapsed() > Duration::from_secs(600) {
            bail!("{args:?} not ready within 600 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok((proc, addr))
}

fn run_distributed(a: &DistributedArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.rounds >= 1, "--rounds must be at least 1");
    let config = a.config.to_string_lossy().into_owned();
    let base = |role: &str| -> Vec<String> {
        ["-c", &config, "--role", role, "--models", &a.e2e.model].iter().map(|s| s.to_string()).collect()
    };
    let port = free_port()?;
    let _redis = Proc(
        std::process::Command::new(&a.redis_server)
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("start {}", a.redis_server.display()))?,
    );
    let url = format!("redis://127.0.0.1:{port}/");
    let with_broker = |role: &str| -> Vec<String> {
        let mut v = base(role);
        v.extend(["--broker-url".to_string(), url.clone()]);
        v
    };
    println!(
        "== one `--role all` process, and `--role api` + {} `--role worker` over Redis (broker.payload from \
         the config); {} rounds of both",
        a.workers, a.rounds
    );
    let (_single, single_addr) = start_role(&base("all"))?;
    let mut procs = Vec::new();
    let mut worker_addrs = Vec::new();
    for _ in 0..a.workers {
        let (p, w) = start_role(&with_broker("worker"))?;
        procs.push(p);
        worker_addrs.push(w.to_string());
    }
    let (_api, api_addr) = start_role(&with_broker("api"))?;
    let mut rounds = Vec::new();
    for round in 1..=a.rounds {
        println!("-- round {round}: in-process");
        let one =
            run_e2e(&E2eArgs { addr: single_addr.to_string(), json: None, worker_metrics: vec![], ..a.e2e.clone() })?;
        println!("-- round {round}: distributed");
        let dist = run_e2e(&E2eArgs {
            addr: api_addr.to_string(),
            json: None,
            worker_metrics: worker_addrs.clone(),
            ..a.e2e.clone()
        })?;
        rounds.push((dist.requests_per_s / one.requests_per_s, one, dist));
    }
    let api_metrics = scrape(api_addr)?;
    let m = [("stage", a.e2e.model.as_str())];
    let rt_n = metric_value(&api_metrics, "gpubackend_broker_round_trip_seconds_count", &m);
    let rt_ms = metric_value(&api_metrics, "gpubackend_broker_round_trip_seconds_sum", &m) * 1e3 / rt_n.max(1.0);
    let bytes = metric_value(&api_metrics, "gpubackend_broker_payload_bytes_total", &[("stage", a.e2e.model.as_str())]);
    println!("distributed vs in-process ({} clients), per round:", a.e2e.concurrency);
    for (i, (ratio, one, dist)) in rounds.iter().enumerate() {
        println!(
            "  round {}: {:.1} vs {:.1} req/s: {ratio:.3}; CPU outside forward passes {:.2} (api) vs {:.2} ms/req",
            i + 1,
            dist.requests_per_s,
            one.requests_per_s,
            dist.serving_ms_per_req,
            one.serving_ms_per_req
        );
    }
    let mut order: Vec<usize> = (0..rounds.len()).collect();
    order.sort_by(|&x, &y| rounds[x].0.total_cmp(&rounds[y].0));
    let (ratio, one, dist) = &rounds[order[rounds.len() / 2]];
    println!("median round:");
    println!("  requests/s          {:.1} vs {:.1}: {ratio:.3}", dist.requests_per_s, one.requests_per_s);
    println!("  p50 ms              {:.1} vs {:.1}", dist.p50_ms, one.p50_ms);
    println!("  p99 ms              {:.1} vs {:.1}", dist.p99_ms, one.p99_ms);
    println!("  worker busy         {:.1} % vs {:.1} %", dist.worker_busy * 100.0, one.worker_busy * 100.0);
    println!("  mean batch          {:.2} vs {:.2}", dist.mean_batch, one.mean_batch);
    println!(
        "  broker round trip   {rt_ms:.1} ms mean over {rt_n} jobs (all rounds); {:.0} input bytes per job",
        bytes / rt_n.max(1.0)
    );
    let all: Vec<_> = rounds
        .iter()
        .map(|(ratio, one, dist)| serde_json::json!({"in_process": one, "distributed": dist, "ratio": ratio}))
        .collect();
    write_json(&a.e2e.json, &serde_json::json!({"rounds": all, "median_ratio": ratio, "broker_round_trip_ms": rt_ms}))?;
    Ok(())
}

fn process_cpu() -> f64 {
    crate::metrics::process_cpu_seconds().unwrap_or(f64::NAN)
}

/// The forward loop: keeps `depth` batches launched (the next staged, uploaded and queued before
/// the oldest is read back), as the server's worker does. Passes and wall seconds.
fn forward_loop(model: &Model, batch: &[&[f32]], depth: usize, duration: f64) -> anyhow::Result<(usize, f64)> {
    let size = model.input_size();
    for _ in 0..2 {
        model.forward(batch)?;
    }
    let start = Instant::now();
    let mut passes = 0usize;
    let mut launched = std::collections::VecDeque::new();
    while start.elapsed().as_secs_f64() < duration || passes + launched.len() < 3 {
        launched.push_back(model.launch(crate::models::stage_sized(batch, size)?)?);
        if launched.len() >= depth {
            launched.pop_front().expect("non-empty. This is a bug.").read()?;
            passes += 1;
        }
    }
    for p in launched {
        p.read()?;
        passes += 1;
    }
    Ok((passes, start.elapsed().as_secs_f64()))
}

fn run_model(a: &ModelArgs) -> anyhow::Result<ModelReport> {
    let spec = DeviceSpec::parse(&a.device)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let depth = a.depth.unwrap_or(if spec == DeviceSpec::Cpu { 1 } else { 2 }).max(1);
    let adapter = spec.probe()?.to_string();
    let model = Model::load(&crate::models::mobilenet_v2::spec(a.weights.clone()), &spec)?;
    let img = decode(&std::fs::read("tests/data/chelsea.jpg")?, &Default::default())?;
    let input = classifier_input(&img, ClassifierSpec::IMAGENET);
    let batch: Vec<&[f32]> = (0..a.batch).map(|_| input.data.as_slice()).collect();
    // On the CPU each thread count runs in its own rayon pool (burn flex's ops and gemm use the
    // pool they are called from); with --torch and no --threads: 1 thread and one per core.
    let thread_counts: Vec<usize> = match (a.threads, &a.torch, &spec) {
        (Some(t), _, _) => vec![t],
        (None, Some(_), DeviceSpec::Cpu) if cores > 1 => vec![1, cores],
        (None, _, _) => vec![cores],
    };
    let mut runs = Vec::new();
    for &threads in &thread_counts {
        let cpu0 = process_cpu();
        let (passes, wall) = if spec == DeviceSpec::Cpu {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
            pool.install(|| forward_loop(&model, &batch, depth, a.duration))?
        } else {
            forward_loop(&model, &batch, depth, a.duration)?
        };
        let images = (passes * a.batch) as f64;
        let cpu_ms = (process_cpu() - cpu0) * 1e3 / images;
        println!(
            "model-only: mobilenet_v2 on {} ({adapter}), batch {}, depth {depth}, {threads} thread(s), {passes} passes in {wall:.1} s",
            a.device, a.batch
        );
        println!("  images/s            {:.1}", images / wall);
        println!("  ms per batch        {:.1}", wall * 1e3 / passes as f64);
        println!("  CPU per image       {cpu_ms:.2} ms");
        let torch = match &a.torch {
            Some(python) => Some(run_torch(python, a, &spec, threads)?),
            None => None,
        };
        if let Some(t) = &torch {
            let theirs = t["images_per_s"].as_f64().unwrap_or(f64::NAN);
            println!("  PyTorch eager       {theirs:.1} images/s ({})", t["label"].as_str().unwrap_or("torch"));
            println!("  ours / PyTorch      {:.2}", images / wall / theirs);
        }
        runs.push(ModelReport {
            device: a.device.clone(),
            adapter: adapter.clone(),
            batch: a.batch,
            depth,
            threads,
            passes,
            seconds: wall,
            images_per_s: images / wall,
            ms_per_batch: wall * 1e3 / passes as f64,
            cpu_ms_per_image: cpu_ms,
            torch,
        });
    }
    let last = runs.pop().expect("at least one thread count. This is a bug.");
    match runs.pop() {
        Some(first) => write_json(&a.json, &[&first, &last])?,
        None => write_json(&a.json, &last)?,
    }
    Ok(last)
}

/// PyTorch eager torchvision MobileNetV2 on the same weights, batch and device
/// (tools/bench/torch_mobilenet.py); its JSON result.
fn run_torch(python: &str, a: &ModelArgs, spec: &DeviceSpec, threads: usize) -> anyhow::Result<serde_json::Value> {
    let device = match spec {
        DeviceSpec::Cpu => "cpu".to_string(),
        DeviceSpec::Cuda(i) | DeviceSpec::Wgpu(Some(i)) => format!("cuda:{i}"),
        DeviceSpec::Wgpu(None) => "cuda:0".to_string(),
    };
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
        Cmd::Distributed(a) => run_distributed(&a)?,
        Cmd::Model(a) => {
            run_model(&a)?;
        }
        Cmd::Persons(a) => run_persons(&a)?,
        Cmd::Layers(a) => run_layers(&a)?,
        Cmd::Faces(a) => run_drive(&a, &FACES)?,
        Cmd::Text(a) => run_drive(&a, &TEXT)?,
        Cmd::Plates(a) => run_drive(&a, &PLATES)?,
        Cmd::Improve(a) => run_improve(&a)?,
        Cmd::Soak(a) => {
            let r = run_soak(&a)?;
            write_json(&a.json, &r)?;
        }
        Cmd::Overload { e2e, overload_clients } => run_overload(&e2e, overload_clients)?,
        Cmd::Networks(a) => networks::run(&a)?,
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

/// `bench overload`: capacity, then 10× the clients, on the same server in one run.
fn run_overload(e2e: &E2eArgs, overload_clients: usize) -> anyhow::Result<()> {
    let capacity = run_e2e(&E2eArgs { json: None, refusals_ok: true, ..e2e.clone() })?;
    // The refused come back at once: let the server's gauges settle between the two loads.
    std::thread::sleep(Duration::from_secs(2));
    let over = run_e2e(&E2eArgs { json: None, refusals_ok: true, concurrency: overload_clients, ..e2e.clone() })?;
    let goodput = over.requests_per_s / capacity.requests_per_s;
    let p99 = over.p99_ms / capacity.p99_ms;
    println!("overload: {} clients against the capacity of {}:", over.clients, capacity.clients);
    println!(
        "  goodput             {:.1} / {:.1} answered/s = {goodput:.2} of capacity (target ≥ 0.8)",
        over.requests_per_s, capacity.requests_per_s
    );
    println!(
        "  p99 of the answered {:.0} / {:.0} ms = {p99:.2}× capacity's (target ≤ 3)",
        over.p99_ms, capacity.p99_ms
    );
    println!("  refused             {:.0}/s (503, Retry-After)", over.refused as f64 / over.seconds);
    write_json(
        &e2e.json,
        &serde_json::json!({"capacity": capacity, "overload": over, "goodput_ratio": goodput, "p99_ratio": p99}),
    )
}

#[derive(Debug, Args, Clone)]
pub struct SoakArgs {
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: String,
    /// Clients at once, each on its own connection (32: about twice what saturates the CPU
    /// server's embedded defaults, so many requests are refused and must come back cleanly).
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Seconds of load.
    #[arg(long, default_value_t = 600.0)]
    pub duration: f64,
    /// Seconds between resident-memory samples.
    #[arg(long, default_value_t = 10.0)]
    pub sample: f64,
    /// Seconds idle after the load before the last sample.
    #[arg(long, default_value_t = 5.0)]
    pub idle: f64,
    #[arg(long, default_value = "test")]
    pub token: String,
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// What `bench soak` saw.
#[derive(Debug, Serialize)]
pub struct SoakReport {
    pub seconds: f64,
    pub requests: usize,
    /// HTTP status → requests.
    pub by_status: std::collections::BTreeMap<u16, usize>,
    /// Requests without an HTTP answer (connection errors).
    pub transport_errors: usize,
    /// 200 answers whose per-image list did not name each sent image exactly once, in order.
    pub answer_mismatches: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// The server's refusals during the load, by reason (its `gpubackend_refusals_total`).
    pub refusals: std::collections::BTreeMap<String, u64>,
    /// (seconds since the start, resident bytes of the server).
    pub rss: Vec<(f64, u64)>,
    pub rss_start: u64,
    pub rss_peak: u64,
    /// At the end of the load, and after `idle` seconds without it.
    pub rss_end: u64,
    pub rss_idle: u64,
}

/// One kind of request of the soak: where, its meta, its files, and the body's per-image list.
struct SoakCall {
    path: &'static str,
    meta: String,
    files: Vec<(String, Vec<u8>)>,
    list: &'static str,
}

fn soak_calls() -> anyhow::Result<Vec<SoakCall>> {
    let file = |n: &str| std::fs::read(format!("tests/data/{n}")).with_context(|| format!("read tests/data/{n}"));
    let named = |names: &[&str]| -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        names.iter().enumerate().map(|(i, n)| Ok((format!("f{i}"), file(n)?))).collect()
    };
    let images = |n: usize| (0..n).map(|i| serde_json::json!({"name": format!("f{i}")})).collect::<Vec<_>>();
    let cat = file("chelsea.jpg")?;
    Ok(vec![
        SoakCall {
            path: "/api/v1/objects/detect",
            meta: serde_json::json!({"mode": ["object"], "images": images(4)}).to_string(),
            files: named(&["chelsea.jpg", "coffee.png", "rocket.jpg", "dog.jpg"])?,
            list: "object_labels",
        },
        SoakCall {
            path: "/api/v1/objects/detect",
            meta: serde_json::json!({"mode": ["multiobject"], "images": images(1)}).to_string(),
            files: named(&["person.jpg"])?,
            list: "multiobject_labels",
        },
        SoakCall {
            path: "/api/v1/text/recognize",
            meta: serde_json::json!({"images": images(1)}).to_string(),
            files: named(&["rendered_lines.png"])?,
            list: "objects",
        },
        SoakCall {
            path: "/api/v1/persons/recognize",
            meta:
                serde_json::json!({"space": "9", "create_new": false, "update_embedding": false, "images": images(1)})
                    .to_string(),
            files: named(&["obama.jpg"])?,
            list: "objects",
        },
        // Bad inputs: a truncated JPEG and garbage (each image's status 1), a broken meta (400).
        SoakCall {
            path: "/api/v1/objects/detect",
            meta: serde_json::json!({"mode": ["object"], "images": images(2)}).to_string(),
            files: vec![("f0".into(), cat[..3000].to_vec()), ("f1".into(), b"\xFF\xD8 not a jpeg".to_vec())],
            list: "object_labels",
        },
        SoakCall { path: "/api/v1/objects/detect", meta: "{".into(), files: named(&["chelsea.jpg"])?, list: "" },
        SoakCall {
            path: "/api/v1/photo/improve",
            meta: serde_json::json!({"mode": ["resolution"], "rfactor": 2, "ftype": "art", "images": images(1)})
                .to_string(),
            files: named(&["eye.png"])?,
            list: "resolution",
        },
    ])
}

/// Whether a 200 answer's per-image list names `files` exactly once each, in order.
fn answered_once(v: &serde_json::Value, list: &str, files: &[(String, Vec<u8>)]) -> bool {
    let names: Vec<&str> =
        v["body"][list].as_array().map(|l| l.iter().filter_map(|r| r["name"].as_str()).collect()).unwrap_or_default();
    names.len() == files.len() && names.iter().zip(files).all(|(a, (b, _))| *a == b)
}

/// `bench soak`: prints the run and returns it.
pub fn run_soak(a: &SoakArgs) -> anyhow::Result<SoakReport> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let addr = a.addr.to_socket_addrs()?.next().context("address")?;
    let calls = Arc::new(soak_calls()?);
    let rss_now = || -> anyhow::Result<u64> { Ok(metric_value(&scrape(addr)?, crate::metrics::RESIDENT, &[]) as u64) };
    const REASONS: [&str; 6] = ["queue_full", "admission", "memory", "not_ready", "queue_timeout", "rate_limit"];
    let refusals_now = || -> anyhow::Result<Vec<f64>> {
        let text = scrape(addr)?;
        Ok(REASONS.iter().map(|r| metric_value(&text, crate::metrics::REFUSALS, &[("reason", r)])).collect())
    };
    let refused_before = refusals_now()?;
    let start = Instant::now();
    let rss_start = rss_now()?;
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (done, every) = (done.clone(), Duration::from_secs_f64(a.sample));
        std::thread::spawn(move || {
            let mut samples = Vec::new();
            let mut next = start;
            while !done.load(Ordering::Relaxed) {
                if Instant::now() >= next {
                    if let Ok(text) = scrape(addr) {
                        let rss = metric_value(&text, crate::metrics::RESIDENT, &[]) as u64;
                        samples.push((start.elapsed().as_secs_f64(), rss));
                    }
                    next += every;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            samples
        })
    };
    let until = start + Duration::from_secs_f64(a.duration);
    type Seen = (Vec<Duration>, std::collections::BTreeMap<u16, usize>, usize, usize);
    let clients: Vec<std::thread::JoinHandle<Seen>> = (0..a.concurrency)
        .map(|i| {
            let calls = calls.clone();
            let token = a.token.clone();
            std::thread::spawn(move || {
                let mut c = Conn::new(addr);
                let (mut lat, mut by_status, mut transport, mut mismatches) =
                    (Vec::new(), std::collections::BTreeMap::new(), 0usize, 0usize);
                let mut k = i;
                while Instant::now() < until {
                    let call = &calls[k % calls.len()];
                    k += 1;
                    let mut parts: Vec<crate::client::Part<'_>> =
                        call.files.iter().map(|(n, b)| (n.as_str(), Some("image"), b.as_slice())).collect();
                    parts.push(("meta", None, call.meta.as_bytes()));
                    let path = format!("{}?oauth_provider=mcs&oauth_token={token}", call.path);
                    let t = Instant::now();
                    match c.post_multipart(&path, &parts) {
                        Ok(r) => {
                            *by_status.entry(r.status).or_insert(0) += 1;
                            if r.status == 200 {
                                lat.push(t.elapsed());
                                if !answered_once(&r.json(), call.list, &call.files) {
                                    mismatches += 1;
                                }
                            }
                        }
                        Err(_) => {
                            transport += 1;
                            c = Conn::new(addr);
                        }
                    }
                }
                (lat, by_status, transport, mismatches)
            })
        })
        .collect();
    let (mut lat, mut by_status, mut transport_errors, mut answer_mismatches) =
        (Vec::new(), std::collections::BTreeMap::new(), 0, 0);
    for h in clients {
        let (l, b, t, m) = h.join().expect("client thread");
        lat.extend(l);
        for (k, v) in b {
            *by_status.entry(k).or_insert(0) += v;
        }
        transport_errors += t;
        answer_mismatches += m;
    }
    let seconds = start.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let mut rss = sampler.join().expect("sampler thread");
    let rss_end = rss_now()?;
    rss.push((seconds, rss_end));
    std::thread::sleep(Duration::from_secs_f64(a.idle));
    let rss_idle = rss_now()?;
    let refusals = REASONS
        .iter()
        .zip(refusals_now()?.iter().zip(&refused_before))
        .map(|(r, (after, before))| (r.to_string(), (after - before) as u64))
        .filter(|(_, n)| *n > 0)
        .collect();
    lat.sort();
    let report = SoakReport {
        refusals,
        seconds,
        requests: by_status.values().sum::<usize>() + transport_errors,
        by_status,
        transport_errors,
        answer_mismatches,
        p50_ms: percentile(&lat, 0.5),
        p99_ms: percentile(&lat, 0.99),
        rss_peak: rss.iter().map(|r| r.1).max().unwrap_or(rss_end).max(rss_start),
        rss,
        rss_start,
        rss_end,
        rss_idle,
    };
    let mb = |b: u64| b as f64 / (1 << 20) as f64;
    println!("soak: {} clients, {:.0} s, mixed endpoints + bad inputs", a.concurrency, seconds);
    println!(
        "  machine             {} ({} cores)",
        cpu_name(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("  requests            {} ({} without an HTTP answer)", report.requests, report.transport_errors);
    for (status, n) in &report.by_status {
        println!("  HTTP {status}            {n}");
    }
    println!(
        "  answered            {:.2} requests/s with 200 ({} every request got exactly one HTTP answer)",
        report.by_status.get(&200).copied().unwrap_or(0) as f64 / seconds,
        if report.transport_errors == 0 { "yes:" } else { "NO:" }
    );
    println!("  refusals (server)   {:?}", report.refusals);
    println!("  answer mismatches   {} (200 answers not naming each image exactly once)", report.answer_mismatches);
    println!("  latency p50 / p99   {:.0} / {:.0} ms (200 answers)", report.p50_ms, report.p99_ms);
    println!(
        "  resident MB         start {:.0}, peak {:.0}, end {:.0}, after {:.0} s idle {:.0}",
        mb(report.rss_start),
        mb(report.rss_peak),
        mb(report.rss_end),
        a.idle,
        mb(report.rss_idle)
    );
    println!(
        "  resident MB over time: {}",
        report.rss.iter().map(|(t, b)| format!("{t:.0}s {:.0}", mb(*b))).collect::<Vec<_>>().join(", ")
    );
    Ok(report)
}
