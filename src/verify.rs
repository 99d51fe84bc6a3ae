//! `gpubackend verify --device D`: every served network on device D against the committed
//! reference fixtures (tests/fixtures: onnxruntime, TensorFlow.js and ncnn outputs made by
//! tools/reference/* from the same weights on real images), with the tolerances the CPU tests use. This is how a GPU machine proves its numbers:
//! the same fixtures, no Python, no network.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::prelude::{Device, Tensor, TensorData};
use serde::Serialize;

use crate::models::mobilenet_v2::{Classifier, NUM_CLASSES};
use crate::models::mtcnn::{ONet, PNet, RNet};
use crate::models::onnx_graph::OnnxGraph;
use crate::models::plates::{ANCHOR_VALUES, PlateDetector};
use crate::models::ppocr::OrientationClassifier;
use crate::models::sface::{EMBEDDING_LEN, Embedder};
use crate::models::{DeviceSpec, ForwardError, LoadError};
use crate::pipelines::plates::{PlateParams, det_input};

/// Per value, absolute: the tolerance of tests/model_*.rs.
pub const TOLERANCE: f32 = 1e-4;

/// One output compared with its reference.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// `mobilenet_v2`, `pnet`, …
    pub model: String,
    /// What was compared: `logits (2 images)`, `reg`, …
    pub output: String,
    pub max_abs_diff: f32,
    pub tolerance: f32,
    pub ok: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub device: String,
    pub adapter: String,
    pub checks: Vec<Check>,
    pub ok: bool,
    /// Wall time, kernel compilation and autotuning included.
    pub seconds: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Device(#[from] crate::models::DeviceError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Forward(#[from] ForwardError),
    #[error("fixture {path}: {message}")]
    Fixture { path: PathBuf, message: String },
}

struct Fixtures {
    root: PathBuf,
}

impl Fixtures {
    fn f32s(&self, rel: &str) -> Result<Vec<f32>, VerifyError> {
        let path = self.root.join("tests/fixtures").join(rel);
        let bytes =
            std::fs::read(&path).map_err(|e| VerifyError::Fixture { path: path.clone(), message: e.to_string() })?;
        Ok(bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4-byte chunk. This is a bug.")))
            .collect())
    }

    fn json(&self, rel: &str) -> Result<serde_json::Value, VerifyError> {
        let path = self.root.join("tests/fixtures").join(rel);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| VerifyError::Fixture { path: path.clone(), message: e.to_string() })?;
        serde_json::from_str(&text).map_err(|e| VerifyError::Fixture { path, message: e.to_string() })
    }

    fn weights(&self, rel: &str) -> PathBuf {
        self.root.join("models").join(rel)
    }
}

fn max_abs_diff(ours: &[f32], reference: &[f32]) -> f32 {
    if ours.len() != reference.len() {
        return f32::INFINITY;
    }
    ours.iter().zip(reference).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
}

fn check(model: &str, output: impl Into<String>, ours: &[f32], reference: &[f32]) -> Check {
    let d = max_abs_diff(ours, reference);
    Check { model: model.into(), output: output.into(), max_abs_diff: d, tolerance: TOLERANCE, ok: d <= TOLERANCE }
}

fn values<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>, ForwardError> {
    t.try_into_data()
        .map_err(|e| ForwardError::Device(format!("{e:?}")))?
        .try_into_vec::<f32>()
        .map_err(|e| ForwardError::Device(format!("{e:?}")))
}

/// MobileNetV2: the two fixture images batched, and repeated to `big_batch` (the batched kernels a
/// GPU picks for serving batches must give the same logits).
fn mobilenet(fx: &Fixtures, device: &Device, big_batch: usize) -> Result<Vec<Check>, VerifyError> {
    let model = Classifier::load(&fx.weights("mobilenet_v2/mobilenet_v2-b0353104.pth"), device.clone())?;
    let names = ["chelsea", "coffee"];
    let mut inputs = Vec::new();
    let mut reference = Vec::new();
    for n in names {
        inputs.push(fx.f32s(&format!("mobilenet_v2/{n}.input.f32"))?);
        reference.extend(fx.f32s(&format!("mobilenet_v2/{n}.logits.f32"))?);
    }
    let refs: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();
    let ours: Vec<f32> = model.forward(&refs)?.concat();
    let mut checks = vec![check("mobilenet_v2", "logits (2 images)", &ours, &reference)];
    let argmax = |v: &[f32]| (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b]));
    let top1 = ours.chunks(NUM_CLASSES).map(argmax).eq(reference.chunks(NUM_CLASSES).map(argmax));
    checks.push(Check {
        model: "mobilenet_v2".into(),
        output: "top-1 class".into(),
        max_abs_diff: if top1 { 0.0 } else { f32::INFINITY },
        tolerance: 0.0,
        ok: top1,
    });
    if big_batch > 2 {
        let batch: Vec<&[f32]> = (0..big_batch).map(|i| refs[i % 2]).collect();
        let ours: Vec<f32> = model.forward(&batch)?.concat();
        let expected: Vec<f32> = (0..big_batch)
            .flat_map(|i| reference.chunks(NUM_CLASSES).nth(i % 2).into_iter().flatten().copied())
            .collect();
        checks.push(check("mobilenet_v2", format!("logits (batch {big_batch})"), &ours, &expected));
    }
    Ok(checks)
}

fn mtcnn(fx: &Fixtures, device: &Device) -> Result<Vec<Check>, VerifyError> {
    let manifest = fx.json("mtcnn/manifest.json")?;
    let input = |net: &str| -> Result<Tensor<4>, VerifyError> {
        let dims: Vec<usize> = serde_json::from_value(manifest["nets"][net]["input"].clone())
            .map_err(|e| VerifyError::Fixture { path: "mtcnn/manifest.json".into(), message: e.to_string() })?;
        let dims: [usize; 4] = dims.try_into().map_err(|_| VerifyError::Fixture {
            path: "mtcnn/manifest.json".into(),
            message: format!("{net}.input is not 4-d"),
        })?;
        Ok(Tensor::from_data(TensorData::new(fx.f32s(&format!("mtcnn/{net}.input.f32"))?, dims), device))
    };
    let reference = |net: &str, out: &str| fx.f32s(&format!("mtcnn/{net}.{out}.f32"));
    let mut checks = Vec::new();
    let p = PNet::load(&fx.weights("mtcnn/pnet.pt"), device)?.forward(input("pnet")?);
    checks.push(check("pnet", "reg", &values(p.reg)?, &reference("pnet", "reg")?));
    checks.push(check("pnet", "prob", &values(p.prob)?, &reference("pnet", "prob")?));
    let r = RNet::load(&fx.weights("mtcnn/rnet.pt"), device)?.forward(input("rnet")?);
    checks.push(check("rnet", "reg", &values(r.reg)?, &reference("rnet", "reg")?));
    checks.push(check("rnet", "prob", &values(r.prob)?, &reference("rnet", "prob")?));
    let o = ONet::load(&fx.weights("mtcnn/onet.pt"), device)?.forward(input("onet")?);
    checks.push(check("onet", "reg", &values(o.reg)?, &reference("onet", "reg")?));
    checks.push(check("onet", "prob", &values(o.prob)?, &reference("onet", "prob")?));
    let landmarks = o.landmarks.ok_or_else(|| ForwardError::Device("O-Net gave no landmarks".into()))?;
    checks.push(check("onet", "landmarks", &values(landmarks)?, &reference("onet", "landmarks")?));
    Ok(checks)
}

fn sface(fx: &Fixtures, device: &Device) -> Result<Vec<Check>, VerifyError> {
    let embedder = Embedder::load(&fx.weights("sface/face_recognition_sface_2021dec.onnx"), device.clone())?;
    let inputs = fx.f32s("sface/sface.input.f32")?;
    let reference = fx.f32s("sface/sface.embedding.f32")?;
    let faces: Vec<&[f32]> = inputs.chunks(crate::models::sface::INPUT_LEN).collect();
    let ours: Vec<f32> = embedder.forward(&faces)?.concat();
    let n = reference.len() / EMBEDDING_LEN;
    Ok(vec![check("sface", format!("embeddings ({n} aligned faces)"), &ours, &reference)])
}

/// PP-OCRv6 text detection (the ONNX graph runner) on a plate photo: the probability map.
fn ppocr(fx: &Fixtures, device: &Device) -> Result<Vec<Check>, VerifyError> {
    let det = OnnxGraph::load(&fx.weights("ppocr/PP-OCRv6_det_small.onnx"), device)?;
    let x = Tensor::<4>::from_data(TensorData::new(fx.f32s("ppocr/det.input.f32")?, [1, 3, 96, 256]), device);
    let ours = values(det.forward(x))?;
    let mut checks = vec![check("ppocr_det", "probability map (96×256)", &ours, &fx.f32s("ppocr/det.prob.f32")?)];
    let cls = OrientationClassifier::load(&fx.weights("ppocr/ch_ppocr_mobile_v2.0_cls_mobile.onnx"), device)?;
    let x = Tensor::<4>::from_data(TensorData::new(fx.f32s("ppocr/cls.input.f32")?, [2, 3, 48, 192]), device);
    let ours = values(cls.forward(x))?;
    checks.push(check(
        "ppocr_cls",
        "orientation probabilities (a line upright and turned)",
        &ours,
        &fx.f32s("ppocr/cls.prob.f32")?,
    ));
    Ok(checks)
}

/// The plate detector on a car photo (its exact input rebuilt from the PNG): the plate
/// probabilities at 1e-4, the box and corner offsets at 1e-3 (regression outputs up to ~10).
fn plates(fx: &Fixtures, device: &Device) -> Result<Vec<Check>, VerifyError> {
    let net = PlateDetector::load(&fx.weights("plates/clp_det.onnx"), device)?;
    let path = fx.root.join("tests/data/car_5au5341.png");
    let bytes =
        std::fs::read(&path).map_err(|e| VerifyError::Fixture { path: path.clone(), message: e.to_string() })?;
    let img = crate::pipelines::decode::decode(&bytes, &Default::default())
        .map_err(|e| VerifyError::Fixture { path: path.clone(), message: e.to_string() })?;
    let x = det_input(&img, &PlateParams { bucket: 32, ..PlateParams::default() });
    let [h, w] = x.bucket;
    let out = values(net.forward(Tensor::<4>::from_data(TensorData::new(x.input, [1, 3, h, w]), device)))?;
    let (conf, loc, landms) =
        (fx.f32s("plates/det.conf.f32")?, fx.f32s("plates/det.loc.f32")?, fx.f32s("plates/det.landms.f32")?);
    let rows = out.chunks_exact(ANCHOR_VALUES);
    let score: Vec<f32> = rows.clone().map(|r| r[4]).collect();
    let ours_offsets: Vec<f32> = rows.flat_map(|r| r[..4].iter().chain(&r[5..]).copied().collect::<Vec<_>>()).collect();
    let theirs_offsets: Vec<f32> = loc
        .chunks_exact(4)
        .zip(landms.chunks_exact(8))
        .flat_map(|(l, m)| l.iter().chain(m).copied().collect::<Vec<_>>())
        .collect();
    let theirs_score: Vec<f32> = conf.chunks_exact(2).map(|c| c[1]).collect();
    let mut offsets = check("plates_det", format!("box and corner offsets ({h}×{w})"), &ours_offsets, &theirs_offsets);
    offsets.tolerance = 1e-3;
    offsets.ok = offsets.max_abs_diff <= offsets.tolerance;
    Ok(vec![check("plates_det", format!("plate probabilities ({h}×{w})"), &score, &theirs_score), offsets])
}

/// A JSON array of numbers (a fixture's), as f32.
fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array().map(|a| a.iter().filter_map(|x| x.as_f64()).map(|x| x as f32).collect()).unwrap_or_default()
}

/// A photo of tests/data, decoded.
fn photo(fx: &Fixtures, file: &str) -> Result<crate::pipelines::decode::DecodedImage, VerifyError> {
    let path = fx.root.join("tests/data").join(file);
    let bytes =
        std::fs::read(&path).map_err(|e| VerifyError::Fixture { path: path.clone(), message: e.to_string() })?;
    crate::pipelines::decode::decode(&bytes, &Default::default())
        .map_err(|e| VerifyError::Fixture { path, message: e.to_string() })
}

/// The COCO detector (TF.js graph) on two PNG photos against TensorFlow.js (tests/fixtures/
/// centernet/tfjs.json, tests/model_centernet.rs' tolerances): the heatmap at the sampled cells
/// and each class's maximum within 1e-4, the box sides within 0.01 px.
fn centernet(fx: &Fixtures, device: &Device) -> Result<Vec<Check>, VerifyError> {
    use crate::models::centernet::{CENTERNET_CLASSES as CLASSES, CENTERNET_INPUT as SIDE, CENTERNET_MAP as MAP};
    let json = fx.weights("centernet/centernet.json");
    let net = crate::models::tfjs::load_graph(&json, &crate::models::centernet::CENTERNET_OUTPUTS, device)?;
    let reference = fx.json("centernet/tfjs.json")?;
    let mut checks = Vec::new();
    for file in ["chelsea.png", "car_5au5341.png"] {
        let r = &reference["images"][file];
        let input = crate::pipelines::preprocess::detector_input(&photo(fx, file)?, SIDE);
        let out = values(net.forward(Tensor::<4>::from_data(TensorData::new(input.data, [1, 3, SIDE, SIDE]), device)))?;
        let at = |c: usize, cell: usize| out.get(c * MAP * MAP + cell).copied().unwrap_or(f32::NAN);
        let cells: Vec<usize> = r["sample_cells"]
            .as_array()
            .map(|a| a.iter().filter_map(|c| c.as_u64()).map(|c| c as usize).collect())
            .unwrap_or_default();
        let (mut heat, mut heat_ref, mut size, mut size_ref) = (vec![], vec![], vec![], vec![]);
        for (i, &cell) in cells.iter().enumerate() {
            let k = floats(&r["keypoints"][i]);
            heat.extend((0..k.len()).map(|c| at(c, cell)));
            heat_ref.extend(k);
            let wh = floats(&r["wh"][i]);
            size.extend((0..wh.len()).map(|k| at(CLASSES + k, cell)));
            size_ref.extend(wh);
        }
        let maxima: Vec<f32> =
            (0..CLASSES).map(|c| (0..MAP * MAP).map(|cell| at(c, cell)).fold(0.0, f32::max)).collect();
        checks.push(check("centernet", format!("heatmap cells ({file})"), &heat, &heat_ref));
        checks.push(check("centernet", format!("class maxima ({file})"), &maxima, &floats(&r["class_max"])));
        let mut sides = check("centernet", format!("box sides px ({file})"), &size, &size_ref);
        sides.tolerance = 0.01;
        sides.ok = sides.max_abs_diff <= sides.tolerance;
        checks.push(sides);
    }
    Ok(checks)
}

/// Both Real-ESRGAN networks (ncnn files) on a 48 × 40 crop of a real photo against ncnn
/// (tests/fixtures/realesrgan): the raw ×4 outputs within 1e-4.
fn realesrgan(fx: &Fixtures, device: &Device) -> Result<Vec<Check>, VerifyError> {
    let input = fx.f32s("realesrgan/input.f32")?;
    let mut checks = Vec::new();
    for (net, file) in [("art", "REALESRGAN_ANIMAVIDEOV3_UP4X"), ("photo", "REALESRGAN_X4PLUS_UP4X")] {
        let graph = crate::models::ncnn::load_graph(&fx.weights(&format!("realesrgan/{file}.param")), device)?;
        let x = Tensor::<4>::from_data(TensorData::new(input.clone(), [1, 3, 40, 48]), device);
        let ours = values(graph.forward(x))?;
        let reference = fx.f32s(&format!("realesrgan/{net}.output.f32"))?;
        checks.push(check(&format!("realesrgan_{net}"), "×4 output (160×192)", &ours, &reference));
    }
    Ok(checks)
}

/// adult/detect's classifier (nsfwjs's TF.js layers model, the shipped I/O contract) against
/// nsfwjs in TensorFlow.js (tests/fixtures/nsfw/tfjs.json, tests/model_nsfw.rs): the five
/// probabilities on the fixed input and, preprocessing included, on two PNG photos, within 1e-4.
fn nsfw(fx: &Fixtures, device: &Device) -> Result<Vec<Check>, VerifyError> {
    use crate::models::declared::{DeclaredNet, IoContract};
    const SIDE: usize = 224;
    let config = crate::infer::load_config(None)
        .map_err(|e| VerifyError::Fixture { path: PathBuf::from("config/default.toml"), message: e.to_string() })?;
    let io: IoContract = config.models["adult"].settings["io"].clone().try_into().map_err(|e: toml::de::Error| {
        VerifyError::Fixture { path: PathBuf::from("config/default.toml"), message: e.to_string() }
    })?;
    let net = DeclaredNet::load(&fx.weights("nsfw/model.json"), &io, device)?;
    let reference = fx.json("nsfw/tfjs.json")?;
    let mut x = vec![0f32; 3 * SIDE * SIDE];
    for (i, v) in (0..3 * SIDE * SIDE).map(|i| ((i * 7919) % 256) as f32 / 255.0).enumerate() {
        let (pixel, c) = (i / 3, i % 3);
        x[c * SIDE * SIDE + pixel] = v;
    }
    let ours = values(net.forward(Tensor::<4>::from_data(TensorData::new(x, [1, 3, SIDE, SIDE]), device)))?;
    let mut checks = vec![check("nsfw", "probabilities (fixed input)", &ours, &floats(&reference["synthetic"]))];
    for file in ["coffee.png", "car_5au5341.png"] {
        let input = crate::pipelines::preprocess::declared_input(&photo(fx, file)?, &io);
        let ours =
            values(net.forward(Tensor::<4>::from_data(TensorData::new(input.data, [1, 3, SIDE, SIDE]), device)))?;
        let theirs = floats(&reference["images"][file]["probabilities"]);
        checks.push(check("nsfw", format!("probabilities ({file})"), &ours, &theirs));
    }
    Ok(checks)
}

/// The networks `run` can check.
pub const NETWORKS: [&str; 8] =
    ["mobilenet_v2", "mtcnn", "sface", "ppocr", "plates", "centernet", "realesrgan", "nsfw"];

/// Runs the checks of `networks` (all of `NETWORKS` when empty) on `device`, with fixtures and
/// weights under `root` (the repository root).
pub fn run(device: &DeviceSpec, root: &Path, big_batch: usize, networks: &[String]) -> Result<Report, VerifyError> {
    let t = Instant::now();
    let wanted = |n: &str| networks.is_empty() || networks.iter().any(|w| w == n);
    if let Some(unknown) = networks.iter().find(|n| !NETWORKS.contains(&n.as_str())) {
        return Err(VerifyError::Fixture {
            path: PathBuf::from(unknown),
            message: format!("unknown network; expected one of {}", NETWORKS.join(", ")),
        });
    }
    let adapter = device.probe()?.to_string();
    let d = device.open()?;
    let fx = Fixtures { root: root.to_path_buf() };
    let mut checks = Vec::new();
    if wanted("mobilenet_v2") {
        checks.extend(mobilenet(&fx, &d, big_batch)?);
    }
    if wanted("mtcnn") {
        checks.extend(mtcnn(&fx, &d)?);
    }
    if wanted("sface") {
        checks.extend(sface(&fx, &d)?);
    }
    if wanted("ppocr") {
        checks.extend(ppocr(&fx, &d)?);
    }
    if wanted("plates") {
        checks.extend(plates(&fx, &d)?);
    }
    if wanted("centernet") {
        checks.extend(centernet(&fx, &d)?);
    }
    if wanted("realesrgan") {
        checks.extend(realesrgan(&fx, &d)?);
    }
    if wanted("nsfw") {
        checks.extend(nsfw(&fx, &d)?);
    }
    let ok = checks.iter().all(|c| c.ok);
    Ok(Report { device: device.to_string(), adapter, checks, ok, seconds: t.elapsed().as_secs_f64() })
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "verify on {} ({}): {} in {:.1} s",
            self.device,
            self.adapter,
            if self.ok { "OK" } else { "FAILED" },
            self.seconds
        )?;
        for c in &self.checks {
            writeln!(
                f,
                "  {:<4} {:<16} {:<34} max |ours - reference| = {:.2e} (tolerance {:.0e})",
                if c.ok { "ok" } else { "FAIL" },
                c.model,
                c.output,
                c.max_abs_diff,
                c.tolerance
            )?;
        }
        Ok(())
    }
}
