//! Text: per image the detector (its batcher batches images of all requests by size bucket) → DB
//! boxes and line crops (preprocessing pool) → the orientation classifier when on → the recogniser
//! (batched by width bucket) → CTC → lines and words in the original's pixels. Run for the text
//! handlers and for `--role worker`'s text jobs.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::family::{checked, no_modes, settings};
use super::stages::{StageError, image_job, infer, prepare};
use super::{Builder, Family, Head, Inference, Invalid, ServedModel, Stage, StartError};
use crate::actors::{DetectText, RecLines, TextLines};
use crate::config::ModelConfig;
use crate::error::FileStatus;
use crate::models::ppocr::{self, CLS_HEIGHT, CLS_WIDTH, Charset, steps};
use crate::pipelines::decode::DecodedImage;
use crate::pipelines::preprocess::ModelInput;
use crate::pipelines::text::{Quad, TextParams, ctc_decode, to_original, upside_down, words};

/// The text model: its detector and recogniser stages, its settings and the recogniser's classes.
pub struct TextService {
    pub name: String,
    pub det: Arc<ServedModel>,
    pub cls: Arc<ServedModel>,
    pub rec: Arc<ServedModel>,
    pub params: TextParams,
    pub charset: Arc<Charset>,
    /// `--role api`: the broker that takes each image to a worker, where detection and reading
    /// run (the detector's input is 5–10 MB per image, the file tens of KB).
    pub remote: Option<Arc<crate::broker::api::Broker>>,
}

/// A line read from an image, in the original's pixels (JSON between a worker and the api).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Line {
    pub text: String,
    pub prob: f32,
    pub quad: Quad,
    pub words: Vec<(String, f32, Quad)>,
}

/// `--role worker`: one image job of the text model: decode (the configured limits), detection
/// and reading on this worker's networks, the lines as JSON.
pub async fn text_job(state: Arc<Inference>, image: Vec<u8>) -> crate::broker::codec::Outcome {
    let Some(svc) = state.service::<TextService>() else {
        return crate::broker::codec::Outcome::Failed {
            status: FileStatus::Permanent,
            message: "no text model on this worker. This is a bug.".into(),
        };
    };
    let encode = |lines: &Vec<Line>| serde_json::to_vec(lines).expect("lines serialize. This is a bug.");
    image_job(&state, &svc.name, image, |img| read_image(&state, &svc, img), encode).await
}

/// One image through the detector and the recogniser.
pub async fn read_image(
    state: &Inference,
    svc: &TextService,
    image: Arc<DecodedImage>,
) -> Result<Vec<Line>, StageError> {
    let p = svc.params;
    let det = prepare(state, DetectText { image, params: p }).await?;
    let [bh, bw] = det.bucket;
    let map = infer(&svc.det, vec![ModelInput::sized(det.input, bh, bw)]).await?.remove(0).output;
    let work = Arc::new(det.work);
    let crops =
        prepare(state, TextLines { work: work.clone(), map, size: det.size, bucket: det.bucket, params: p }).await?;
    if crops.is_empty() {
        return Ok(Vec::new());
    }
    let flip = if p.use_cls {
        let inputs = crops.iter().map(|c| ModelInput::sized(c.cls.clone(), CLS_HEIGHT, CLS_WIDTH)).collect();
        infer(&svc.cls, inputs).await?.iter().map(|o| upside_down(&o.output, &p)).collect()
    } else {
        Vec::new()
    };
    let lines = prepare(state, RecLines { lines: crops, flip, params: p }).await?;
    let (boxes, inputs): (Vec<_>, Vec<_>) = lines
        .into_iter()
        .map(|l| {
            ((l.text_box, l.width, l.resized), ModelInput::sized(l.input, crate::models::ppocr::REC_HEIGHT, l.width))
        })
        .unzip();
    let read = infer(&svc.rec, inputs).await?;
    let mut out = Vec::new();
    for ((text_box, width, resized), prediction) in boxes.into_iter().zip(read) {
        let steps = steps(&prediction.output)
            .map_err(|e| StageError::Image(crate::actors::InferError::Failed(e.to_string())))?;
        let reading = ctc_decode(&steps, &svc.charset);
        if reading.text.trim().is_empty() || reading.score < p.text_score {
            continue;
        }
        let words = words(&reading, &text_box.quad, steps.len(), width, resized)
            .into_iter()
            .map(|w| (w.text, w.prob, to_original(&w.quad, &work)))
            .collect();
        out.push(Line { text: reading.text, prob: reading.score, quad: to_original(&text_box.quad, &work), words });
    }
    Ok(out)
}

/// File names of the text model's networks in its weights directory (`scripts/fetch-weights.sh`).
pub const TEXT_DET_FILE: &str = "PP-OCRv6_det_small.onnx";
pub const TEXT_REC_FILE: &str = "PP-OCRv6_rec_small.onnx";
pub const TEXT_CLS_FILE: &str = "ch_ppocr_mobile_v2.0_cls_mobile.onnx";

/// `architecture = "text"`: text detection, orientation and recognition (PP-OCRv6) for
/// text/recognize and scene_text/recognize; `weights` is the directory of the three networks.
pub struct Text;

/// The text model's settings (`[models.<name>.text]`; every field has RapidOCR's default).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TextSettings {
    text: Option<TextParams>,
}

impl Family for Text {
    fn architecture(&self) -> &'static str {
        "text"
    }

    fn check(&self, mc: &ModelConfig) -> Result<(), Invalid> {
        let s = settings::<TextSettings>(mc)?;
        no_modes(mc, "a text model serves the text endpoints")?;
        s.text.unwrap_or_default().check().map_err(Invalid::within("text"))
    }

    /// `<name>_det`, `_cls`, `_rec`.
    fn stages(&self, name: &str, mc: &ModelConfig) -> Vec<Stage> {
        let net = |file: &str| mc.weights.join(file);
        vec![
            Stage::new(format!("{name}_det"), ppocr::det_spec(net(TEXT_DET_FILE)), mc.max_batch),
            Stage::new(format!("{name}_cls"), ppocr::cls_spec(net(TEXT_CLS_FILE)), mc.max_batch),
            Stage::new(format!("{name}_rec"), ppocr::rec_spec(net(TEXT_REC_FILE)), mc.max_batch),
        ]
    }

    /// The text model's service from its three stages (detector, orientation classifier,
    /// recogniser) and the recogniser's classes, and its whole-image jobs on `--role worker`.
    fn attach(&self, b: &mut Builder, name: &str, mc: &ModelConfig) -> Result<(), StartError> {
        let params = checked(settings::<TextSettings>(mc)).text.unwrap_or_default();
        let stages = b.place_one::<TextService>(name, mc, "text", Head::default())?;
        let [det, cls, rec] = &stages[..] else {
            return Ok(());
        };
        let charset = Charset::load(&mc.weights.join(TEXT_REC_FILE))?;
        b.services.insert(Arc::new(TextService {
            name: name.to_string(),
            det: det.clone(),
            cls: cls.clone(),
            rec: rec.clone(),
            params,
            charset: Arc::new(charset),
            remote: b.broker.clone(),
        }));
        b.feed_whole(name, mc, &stages, |state, _, image, _| Box::pin(text_job(state, image)));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_roundtrip_through_the_workers_json() {
        let quad = [[10.5, 20.25], [130.0, 20.0], [130.125, 52.0], [10.0, 51.75]];
        let line = Line {
            text: "Привет, world 42".into(),
            prob: 0.987_654_3,
            quad,
            words: vec![("Привет,".into(), 0.912_345_7, quad), ("world".into(), 1.0, quad)],
        };
        let body = serde_json::to_vec(&vec![line.clone(), line.clone()]).unwrap();
        assert_eq!(serde_json::from_slice::<Vec<Line>>(&body).unwrap(), vec![line.clone(), line]);
    }
}
