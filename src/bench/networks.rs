//! `bench networks`: every network we serve, model-only on the CPU device, beside the engine its
//! files come from (onnxruntime for the `.onnx` networks, ncnn for Real-ESRGAN's `.param`), same
//! input shape and thread count, in one run: ms per pass, anchor / ours, and the convolutions'
//! GFLOP/s against the machine's measured matrix-multiply rate.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use serde::Serialize;

use crate::models::onnx_graph::OnnxGraph;
use crate::models::profile::OpTime;
use crate::models::{self, DeviceSpec, Model, ModelSpec};

#[derive(Debug, Args, Clone)]
pub struct NetworksArgs {
    /// Threads of ours (burn flex's pool) and of each anchor (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Seconds of timed passes per network and engine (after 2 warm-up passes; at least 3 passes).
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Python with onnxruntime and ncnn (`make setup-anchors`: tools/bench/.venv-anchors/bin/python);
    /// without it only ours is timed.
    #[arg(long)]
    anchor: Option<String>,
    /// Only the networks whose name contains this.
    #[arg(long)]
    only: Option<String>,
    /// Also time each op of the chosen graph networks' CPU forward pass, summed per kind.
    #[arg(long)]
    profile: bool,
    /// The fetched weights (`make weights`).
    #[arg(long, default_value = "models")]
    models: PathBuf,
    /// Also write the results as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// One network as timed: its spec at the timed input size, the batch, and its anchor engine.
struct Case {
    name: &'static str,
    spec: ModelSpec,
    batch: usize,
    /// onnxruntime or ncnn, with the file it loads; None where the anchor is not in this tool.
    anchor: Option<(&'static str, PathBuf)>,
    /// The network as a bare graph, for `--profile` (the graph-file networks).
    graph: Option<Graph>,
}

type Graph = Box<dyn Fn(&burn::prelude::Device) -> Result<OnnxGraph, models::LoadError> + Send + Sync>;

#[derive(Debug, Serialize)]
struct Row {
    name: &'static str,
    shape: [usize; 4],
    ours_ms: f64,
    anchor: Option<&'static str>,
    anchor_ms: Option<f64>,
    anchor_error: Option<String>,
    /// The threads the anchor really ran on, where it says (TF.js's wasm backend runs on one in
    /// Node: its multi-threaded build needs web workers).
    anchor_threads: Option<u64>,
    /// anchor ms / ours ms: above 1 we are faster.
    anchor_over_ours: Option<f64>,
    /// Convolution GFLOP/s of ours (the convolutions the CPU engine ran).
    conv_gflops: f64,
    conv_gflop_per_pass: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    cpu: String,
    simd: &'static str,
    threads: usize,
    matmul_peak_gflops: f64,
    rows: Vec<Row>,
}

fn sized(mut spec: ModelSpec, input: [usize; 2]) -> ModelSpec {
    spec.input = input;
    spec
}

/// adult/detect's classifier contract, as the embedded config declares it.
fn nsfw_io() -> models::declared::IoContract {
    let config = crate::infer::load_config(None).expect("the embedded config is valid. This is a bug.");
    config.models["adult"].settings["io"].clone().try_into().expect("the embedded config declares adult's io")
}

fn cases(dir: &std::path::Path) -> Vec<Case> {
    let p = |f: &str| dir.join(f);
    let onnx = |f: &str| Some(("onnxruntime", dir.join(f)));
    let ncnn = |f: &str| Some(("ncnn", dir.join(f)));
    let tfjs = |f: &str| Some(("tfjs-wasm", dir.join(f)));
    vec![
        Case {
            name: "text_det 640²",
            spec: sized(models::ppocr::det_spec(p("ppocr/PP-OCRv6_det_small.onnx")), [640, 640]),
            batch: 1,
            anchor: onnx("ppocr/PP-OCRv6_det_small.onnx"),
            graph: Some(onnx_graph(p("ppocr/PP-OCRv6_det_small.onnx"))),
        },
        Case {
            name: "text_rec 48×320",
            spec: sized(models::ppocr::rec_spec(p("ppocr/PP-OCRv6_rec_small.onnx")), [48, 320]),
            batch: 1,
            anchor: onnx("ppocr/PP-OCRv6_rec_small.onnx"),
            graph: None,
        },
        Case {
            name: "text_cls 48×192 ×6",
            spec: models::ppocr::cls_spec(p("ppocr/ch_ppocr_mobile_v2.0_cls_mobile.onnx")),
            batch: 6,
            anchor: onnx("ppocr/ch_ppocr_mobile_v2.0_cls_mobile.onnx"),
            graph: Some(onnx_graph(p("ppocr/ch_ppocr_mobile_v2.0_cls_mobile.onnx"))),
        },
        Case {
            name: "plate_det 640²",
            spec: sized(models::plates::spec(p("plates/clp_det.onnx")), [640, 640]),
            batch: 1,
            anchor: onnx("plates/clp_det.onnx"),
            graph: None,
        },
        Case {
            name: "sface 112² ×8",
            spec: models::sface::spec(p("sface/face_recognition_sface_2021dec.onnx")),
            batch: 8,
            anchor: onnx("sface/face_recognition_sface_2021dec.onnx"),
            graph: None,
        },
        Case {
            name: "superres art 128²",
            spec: models::ncnn::superres_spec(p("realesrgan/REALESRGAN_ANIMAVIDEOV3_UP4X.param"), 128),
            batch: 1,
            anchor: ncnn("realesrgan/REALESRGAN_ANIMAVIDEOV3_UP4X.param"),
            graph: Some(ncnn_graph(p("realesrgan/REALESRGAN_ANIMAVIDEOV3_UP4X.param"))),
        },
        Case {
            name: "superres photo 64²",
            spec: models::ncnn::superres_spec(p("realesrgan/REALESRGAN_X4PLUS_UP4X.param"), 64),
            batch: 1,
            anchor: ncnn("realesrgan/REALESRGAN_X4PLUS_UP4X.param"),
            graph: Some(ncnn_graph(p("realesrgan/REALESRGAN_X4PLUS_UP4X.param"))),
        },
        Case {
            name: "centernet 512²",
            spec: models::centernet::spec(p("centernet/centernet.json")),
            batch: 1,
            anchor: tfjs("centernet/centernet.json"),
            graph: Some({
                let json = p("centernet/centernet.json");
                Box::new(move |d| models::tfjs::load_graph(&json, &models::centernet::CENTERNET_OUTPUTS, d))
            }),
        },
        Case {
            name: "nsfw 224² ×4",
            spec: models::declared::spec(p("nsfw/model.json"), nsfw_io()),
            batch: 4,
            anchor: None,
            graph: Some({
                let json = p("nsfw/model.json");
                Box::new(move |d| models::tfjs::load_graph(&json, &[], d))
            }),
        },
        Case {
            name: "mobilenet_v2 224² ×16",
            spec: models::mobilenet_v2::spec(p("mobilenet_v2/mobilenet_v2-b0353104.pth")),
            batch: 16,
            anchor: None,
            graph: None,
        },
        Case {
            name: "mtcnn onet 48² ×16",
            spec: models::mtcnn::onet_spec(p("mtcnn/onet.pt")),
            batch: 16,
            anchor: None,
            graph: None,
        },
    ]
}

fn onnx_graph(file: PathBuf) -> Graph {
    Box::new(move |d| OnnxGraph::load(&file, d))
}

fn ncnn_graph(file: PathBuf) -> Graph {
    Box::new(move |d| models::ncnn::load_graph(&file, d))
}

/// Each op of `graph`'s CPU forward pass on an input of `shape`, summed per kind over `passes`
/// passes (after one warm-up): kind, ms per pass, GFLOP/s.
fn profile_graph(graph: &OnnxGraph, shape: [usize; 4], passes: usize) -> Vec<(&'static str, f64, f64)> {
    use burn::prelude::{Tensor, TensorData};
    let device = burn::prelude::Device::flex();
    let len = shape.iter().product::<usize>();
    let data: Vec<f32> = (0..len).map(|i| ((i * 7919) % 1009) as f32 / 1009.0).collect();
    let x = Tensor::<4>::from_data(TensorData::new(data, shape), &device);
    let mut ops: Vec<OpTime> = Vec::new();
    graph.forward(x.clone()).into_data();
    for _ in 0..passes {
        graph.forward_profiled(x.clone(), &mut ops).into_data();
    }
    let mut kinds: Vec<(&'static str, f64, f64)> = Vec::new();
    for op in ops {
        match kinds.iter_mut().find(|k| k.0 == op.kind) {
            Some(k) => (k.1, k.2) = (k.1 + op.seconds, k.2 + op.flops),
            None => kinds.push((op.kind, op.seconds, op.flops)),
        }
    }
    kinds.sort_by(|a, b| b.1.total_cmp(&a.1));
    kinds.into_iter().map(|(k, s, f)| (k, s * 1e3 / passes as f64, if s > 0.0 { f / s / 1e9 } else { 0.0 })).collect()
}

/// Mean ms per pass of `model` on `batch` copies of one input, and the convolution multiply-adds
/// per pass.
fn time_ours(model: &Model, batch: usize, duration: f64) -> anyhow::Result<(f64, u64)> {
    let [h, w] = model.input_size();
    let item: Vec<f32> = (0..3 * h * w).map(|i| ((i * 7919) % 1009) as f32 / 1009.0).collect();
    let inputs: Vec<&[f32]> = (0..batch).map(|_| item.as_slice()).collect();
    model.forward(&inputs)?;
    models::cpu::count_macs(true);
    model.forward(&inputs)?;
    let macs = models::cpu::count_macs(false);
    let (start, mut passes) = (Instant::now(), 0usize);
    while start.elapsed().as_secs_f64() < duration || passes < 3 {
        model.forward(&inputs)?;
        passes += 1;
    }
    Ok((start.elapsed().as_secs_f64() * 1e3 / passes as f64, macs))
}

/// The anchors' ms per pass by case name (tools/bench/anchors.py).
fn time_anchors(
    python: &str,
    cases: &[(&Case, [usize; 4])],
    threads: usize,
    duration: f64,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let input: Vec<serde_json::Value> = cases
        .iter()
        .filter_map(|(c, shape)| {
            let (engine, file) = c.anchor.as_ref()?;
            Some(serde_json::json!({"name": c.name, "engine": engine, "file": file, "shape": shape,
                "threads": threads, "duration": duration}))
        })
        .collect();
    let mut child = std::process::Command::new(python)
        .arg("tools/bench/anchors.py")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("run {python} tools/bench/anchors.py"))?;
    child.stdin.take().expect("piped").write_all(&serde_json::to_vec(&input)?)?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("the anchors failed (exit {})", out.status);
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("anchor line {l}")))
        .collect()
}

pub fn run(a: &NetworksArgs) -> anyhow::Result<()> {
    let threads = a.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
    let peak = pool.install(|| models::cpu::matmul_peak_gflops(1536));
    let simd = models::cpu::Level::detect().name();
    println!("bench networks: {} ({simd}), {threads} thread(s); matmul peak {peak:.1} GFLOP/s", super::cpu_name());
    let all = cases(&a.models);
    let chosen: Vec<&Case> = all.iter().filter(|c| a.only.as_deref().is_none_or(|o| c.name.contains(o))).collect();
    let mut ours = Vec::new();
    for c in &chosen {
        let model = Model::load(&c.spec, &DeviceSpec::Cpu).with_context(|| format!("load {}", c.name))?;
        let [h, w] = model.input_size();
        let (ms, macs) = pool.install(|| time_ours(&model, c.batch, a.duration))?;
        println!("  ours    {:<24} {ms:>9.2} ms", c.name);
        if let (true, Some(load)) = (a.profile, &c.graph) {
            let graph = load(&burn::prelude::Device::flex())?;
            let kinds = pool.install(|| profile_graph(&graph, [c.batch, 3, h, w], 3));
            let total: f64 = kinds.iter().map(|k| k.1).sum();
            for (kind, k_ms, gflops) in kinds {
                println!("          {kind:<26} {k_ms:>9.2} ms {:>5.1} %  {gflops:>6.1} GFLOP/s", 100.0 * k_ms / total);
            }
        }
        ours.push((*c, [c.batch, 3, h, w], ms, macs));
    }
    let shapes: Vec<(&Case, [usize; 4])> = ours.iter().map(|(c, s, _, _)| (*c, *s)).collect();
    let anchors = match &a.anchor {
        Some(python) => time_anchors(python, &shapes, threads, a.duration)?,
        None => Vec::new(),
    };
    let mut rows = Vec::new();
    println!();
    println!(
        "  {:<24} {:>10} {:>12} {:>10} {:>8} {:>9}",
        "network", "ours ms", "anchor ms", "anchor/us", "GFLOP/s", "of peak"
    );
    for (c, shape, ms, macs) in ours {
        let found = anchors.iter().find(|v| v["name"] == c.name);
        let anchor_ms = found.and_then(|v| v["ms"].as_f64());
        let anchor_error = found.and_then(|v| v["error"].as_str().map(str::to_string));
        let anchor_threads = found.and_then(|v| v["threads"].as_u64());
        let gflop = 2.0 * macs as f64 / 1e9;
        let gflops = gflop / (ms / 1e3);
        let engine = c.anchor.as_ref().map(|(e, _)| *e);
        println!(
            "  {:<24} {ms:>10.2} {:>12} {:>10} {gflops:>8.1} {:>8.0}%",
            c.name,
            anchor_ms.map_or_else(
                || if a.anchor.is_some() && engine.is_some() { "failed".into() } else { "—".into() },
                |m| format!("{m:.2} {}", short(engine))
            ),
            anchor_ms.map_or("—".into(), |m| format!("{:.2}", m / ms)),
            100.0 * gflops / peak
        );
        rows.push(Row {
            name: c.name,
            shape,
            ours_ms: ms,
            anchor: engine,
            anchor_ms,
            anchor_error,
            anchor_threads,
            anchor_over_ours: anchor_ms.map(|m| m / ms),
            conv_gflops: gflops,
            conv_gflop_per_pass: gflop,
        });
    }
    for r in rows.iter().filter(|r| r.anchor_threads.is_some_and(|t| t as usize != threads)) {
        let t = r.anchor_threads.unwrap_or_default();
        println!("  {}: the anchor ran on {t} thread(s), ours on {threads}", r.name);
    }
    for r in rows.iter().filter(|r| r.anchor_error.is_some()) {
        println!("  {}: anchor failed: {}", r.name, r.anchor_error.as_deref().unwrap_or(""));
    }
    let report = Report { cpu: super::cpu_name(), simd, threads, matmul_peak_gflops: peak, rows };
    super::write_json(&a.json, &report)
}

fn short(engine: Option<&str>) -> &'static str {
    match engine {
        Some("onnxruntime") => "ort",
        Some("ncnn") => "ncnn",
        Some("tfjs-wasm") => "tfjs",
        _ => "",
    }
}
