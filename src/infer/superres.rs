//! Super-resolution ×4 (Real-ESRGAN): per image the size limit → fixed-size tiles (preprocessing
//! pool) → the chosen network's batcher (tiles of every request batch together) → each tile's core
//! into the ×4 raster as it comes → ×2 by Lanczos3 when asked, JPEG (preprocessing pool). Run for
//! photo/improve and for `--role worker`'s super-resolution jobs.

use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;

use super::family::{checked, no_modes, settings};
use super::stages::{StageError, image_job, infer_unordered, prepare};
use super::{Builder, Family, Head, Inference, Invalid, ServedModel, Stage, StartError};
use crate::actors::{SrFinish, SrPlace, SrTiles};
use crate::config::ModelConfig;
use crate::error::FileStatus;
use crate::models::ncnn;
use crate::pipelines::decode::DecodedImage;
use crate::pipelines::preprocess::ModelInput;
use crate::pipelines::superres::SuperResConfig;
use crate::pipelines::superres::TileGrid;

/// The networks' scale.
const SCALE: usize = 4;

/// The super-resolution model: its two networks and its tiles and limits.
pub struct SuperResService {
    pub name: String,
    pub art: Arc<ServedModel>,
    pub photo: Arc<ServedModel>,
    pub config: SuperResConfig,
    /// `--role api`: the broker that takes each image (with its factor and type) to a worker,
    /// which answers the JPEG (the tiles' outputs are 16× the input's pixels as floats).
    pub remote: Option<Arc<crate::broker::api::Broker>>,
}

/// What one request asks: the factor and which network.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Resolution {
    pub factor: u32,
    pub photo: bool,
}

impl Resolution {
    /// The header a worker's job carries before the file: factor, then 0 (art) or 1 (photo).
    pub fn header(self) -> [u8; 2] {
        [self.factor as u8, u8::from(self.photo)]
    }

    fn from_header(h: &[u8]) -> Option<Self> {
        match h {
            [f @ (2 | 4), p @ (0 | 1), ..] => Some(Self { factor: u32::from(*f), photo: *p == 1 }),
            _ => None,
        }
    }
}

/// `--role worker`: one image job of the super-resolution model: its factor and network from the
/// job's header, decode (the configured limits), the tiles on this worker's network, the JPEG.
pub async fn superres_job(state: Arc<Inference>, job: Vec<u8>, poisoned: bool) -> crate::broker::codec::Outcome {
    use crate::broker::codec::Outcome;
    let Some(svc) = state.service::<SuperResService>() else {
        return Outcome::Failed {
            status: FileStatus::Permanent,
            message: "no super-resolution model on this worker. This is a bug.".into(),
        };
    };
    let Some(asked) = Resolution::from_header(&job) else {
        return Outcome::Failed {
            status: FileStatus::Permanent,
            message: "a super-resolution job without its header. This is a bug.".into(),
        };
    };
    let image = job[2..].to_vec();
    image_job(
        &state,
        &svc.name,
        image,
        |img| resolve(&state, &svc, img, asked, poisoned),
        |jpeg: &Vec<u8>| jpeg.clone(),
    )
    .await
}

/// One image at the asked factor through the asked network: its JPEG.
pub async fn resolve(
    state: &Inference,
    svc: &SuperResService,
    image: Arc<DecodedImage>,
    asked: Resolution,
    poisoned: bool,
) -> Result<Vec<u8>, StageError> {
    let c = &svc.config;
    let (w, h) = (image.width as usize, image.height as usize);
    let pixels = w as u64 * h as u64;
    if pixels > c.max_input_pixels {
        return Err(StageError::File(
            FileStatus::Permanent,
            format!(
                "image is {w}×{h} = {pixels} pixels; photo/improve takes at most {} (superres.max_input_pixels)",
                c.max_input_pixels
            ),
        ));
    }
    let stage = if asked.photo { &svc.photo } else { &svc.art };
    let grid = TileGrid { tile: c.tile, pad: c.pad, scale: SCALE };
    let start = Instant::now();
    let tiles = prepare(state, SrTiles { image: image.clone(), grid }).await?;
    ::metrics::histogram!(crate::metrics::STAGE_DURATION, "stage" => "preprocess", "model" => stage.name.clone())
        .record(start.elapsed().as_secs_f64());
    let (tiles, inputs): (Vec<_>, Vec<_>) = tiles.into_iter().map(|(t, x)| (t, ModelInput::fixed(x))).unzip();
    // Each tile's core goes into the raster as its output comes, and the output is dropped.
    let mut raster = vec![0u8; w * SCALE * h * SCALE * 3];
    let mut outputs = std::pin::pin!(infer_unordered(stage, inputs, poisoned).await?);
    while let Some((i, prediction)) = outputs.next().await {
        let output = prediction?.output;
        raster = prepare(state, SrPlace { grid, tile: tiles[i], output, raster, width: w }).await?;
    }
    let finish = SrFinish {
        raster,
        width: (w * SCALE) as u32,
        height: (h * SCALE) as u32,
        factor: asked.factor,
        scale: SCALE as u32,
        quality: c.jpeg_quality,
    };
    let jpeg = prepare(state, finish).await?.map_err(|e| StageError::File(FileStatus::Permanent, e))?;
    if jpeg.len() > c.max_output_bytes {
        return Err(StageError::File(
            FileStatus::Permanent,
            format!(
                "the result is a {} byte JPEG; photo/improve answers at most {} (superres.max_output_bytes)",
                jpeg.len(),
                c.max_output_bytes
            ),
        ));
    }
    Ok(jpeg)
}

/// File names of the super-resolution networks in a `realesrgan` model's weights directory
/// (`scripts/fetch-weights.sh`; each `.bin` beside its `.param`).
pub const SR_ART_FILE: &str = "REALESRGAN_ANIMAVIDEOV3_UP4X.param";
pub const SR_PHOTO_FILE: &str = "REALESRGAN_X4PLUS_UP4X.param";

/// `architecture = "realesrgan"`: super-resolution ×4 (Real-ESRGAN, ncnn files) for
/// photo/improve `resolution`: two networks, `art` (realesr-animevideov3) and `photo`
/// (RealESRGAN_x4plus).
pub struct RealEsrgan;

/// Super-resolution tiles and limits (`[models.<name>.superres]`; every field has a default).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SuperResSettings {
    superres: Option<SuperResConfig>,
}

impl Family for RealEsrgan {
    fn architecture(&self) -> &'static str {
        "realesrgan"
    }

    fn check(&self, mc: &ModelConfig) -> Result<(), Invalid> {
        let s = settings::<SuperResSettings>(mc)?;
        no_modes(mc, "a super-resolution model serves photo/improve")?;
        s.superres.unwrap_or_default().check().map_err(Invalid::within("superres"))
    }

    /// `<name>_art`, `_photo`.
    fn stages(&self, name: &str, mc: &ModelConfig) -> Vec<Stage> {
        let tile = checked(settings::<SuperResSettings>(mc)).superres.unwrap_or_default().tile;
        let net = |file: &str| ncnn::superres_spec(mc.weights.join(file), tile);
        vec![
            Stage::new(format!("{name}_art"), net(SR_ART_FILE), mc.max_batch),
            Stage::new(format!("{name}_photo"), net(SR_PHOTO_FILE), mc.max_batch),
        ]
    }

    /// The super-resolution model's service from its two networks (`art`, `photo`), and its
    /// whole-image jobs on `--role worker`.
    fn attach(&self, b: &mut Builder, name: &str, mc: &ModelConfig) -> Result<(), StartError> {
        let config = checked(settings::<SuperResSettings>(mc)).superres.unwrap_or_default();
        let stages = b.place_one::<SuperResService>(name, mc, "super-resolution", Head::default())?;
        let [art, photo] = &stages[..] else {
            return Ok(());
        };
        b.services.insert(Arc::new(SuperResService {
            name: name.to_string(),
            art: art.clone(),
            photo: photo.clone(),
            config,
            remote: b.broker.clone(),
        }));
        b.feed_whole(name, mc, &stages, |state, _, image, poisoned| Box::pin(superres_job(state, image, poisoned)));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jobs_header_carries_factor_and_network() {
        for asked in [Resolution { factor: 2, photo: true }, Resolution { factor: 4, photo: false }] {
            let job = [&asked.header()[..], b"\xff\xd8jpeg"].concat();
            assert_eq!(Resolution::from_header(&job), Some(asked));
        }
        assert_eq!(Resolution::from_header(&[3, 0]), None);
        assert_eq!(Resolution::from_header(&[2]), None);
    }
}
