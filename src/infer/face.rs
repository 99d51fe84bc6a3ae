//! The face cascade (MTCNN: P-Net on fixed tiles of the image pyramid, R-Net and O-Net on face
//! crops) and the embedder (SFace) on aligned faces, each network through its own batcher; CPU work
//! on the preprocessing pool. Run for the persons handlers and for `--role worker`'s face jobs.

use std::sync::Arc;

use actix::Addr;

use super::family::{checked, no_modes, settings};
use super::stages::{StageError, fixed, image_job, infer, prepare};
use super::{Builder, Family, Head, Inference, Invalid, ServedModel, Stage, StartError};
use crate::actors::{AlignFaces, CropFaces, Pyramid, StoreActor};
use crate::broker::api::Broker;
use crate::config::ModelConfig;
use crate::error::FileStatus;
use crate::models::{mtcnn, sface};
use crate::pipelines::decode::DecodedImage;
use crate::pipelines::face_detect::{self, Candidate, CascadeRunner, DetectParams, Face, FaceConfig, Level, Tile};

/// The face model: its four stages (each a `ServedModel` with its own batcher and workers), its
/// settings and the person store.
pub struct FaceService {
    pub name: String,
    pub pnet: Arc<ServedModel>,
    pub rnet: Arc<ServedModel>,
    pub onet: Arc<ServedModel>,
    pub embed: Arc<ServedModel>,
    pub config: FaceConfig,
    /// The person store (not on `--role worker`).
    pub store: Option<Addr<StoreActor>>,
    /// `--role api`: the broker that takes each image to a worker, where the whole cascade runs
    /// (the cascade's inputs are 29–49× the photo's bytes: README, Distributed mode).
    pub remote: Option<Arc<Broker>>,
}

impl FaceService {
    pub fn stages(&self) -> [&Arc<ServedModel>; 4] {
        [&self.pnet, &self.rnet, &self.onet, &self.embed]
    }
}

/// Floats per face in a worker's answer: box (4), score, landmarks (10), embedding.
const FACE_FLOATS: usize = 4 + 1 + 10 + crate::models::sface::EMBEDDING_LEN;

/// A worker's cascade result: the faces one after another, each as [`FACE_FLOATS`]
/// little-endian f32 (572 bytes).
fn encode_faces(faces: &[(Face, Vec<f32>)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(faces.len() * FACE_FLOATS);
    for (f, embedding) in faces {
        out.extend_from_slice(&f.bbox);
        out.push(f.score);
        out.extend(f.landmarks.iter().flatten());
        out.extend_from_slice(embedding);
    }
    out.iter().flat_map(|v| v.to_le_bytes()).collect()
}

pub fn decode_faces(body: &[u8]) -> Result<Vec<(Face, Vec<f32>)>, String> {
    if !body.len().is_multiple_of(FACE_FLOATS * 4) {
        return Err(format!("worker answered {} bytes, not a multiple of {} (faces)", body.len(), FACE_FLOATS * 4));
    }
    let out: Vec<f32> = body.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    Ok(out
        .chunks_exact(FACE_FLOATS)
        .map(|c| {
            let mut landmarks = [[0f32; 2]; 5];
            for (i, l) in landmarks.iter_mut().enumerate() {
                *l = [c[5 + 2 * i], c[6 + 2 * i]];
            }
            let face = Face { bbox: [c[0], c[1], c[2], c[3]], score: c[4], landmarks };
            (face, c[15..].to_vec())
        })
        .collect())
}

/// `--role worker`: one image job of the face model: decode (the configured limits), the cascade
/// and the embedder on this worker's networks, the faces as one flat output.
pub async fn face_job(state: Arc<Inference>, image: Vec<u8>) -> crate::broker::codec::Outcome {
    let Some(face) = state.service::<FaceService>() else {
        return crate::broker::codec::Outcome::Failed {
            status: FileStatus::Permanent,
            message: "no face model on this worker. This is a bug.".into(),
        };
    };
    image_job(&state, &face.name, image, |img| faces_with_embeddings(&state, &face, img), |faces| encode_faces(faces))
        .await
}

/// The cascade's networks through their batchers, its CPU steps on the preprocessing pool.
struct Batched<'a> {
    state: &'a Inference,
    face: &'a FaceService,
}

impl CascadeRunner for Batched<'_> {
    type Error = StageError;

    async fn tiles(
        &self,
        image: Arc<DecodedImage>,
        params: DetectParams,
        canvas: usize,
    ) -> Result<(Vec<Level>, Vec<Tile>), StageError> {
        prepare(self.state, Pyramid { image, params, canvas }).await
    }

    async fn crops(
        &self,
        image: Arc<DecodedImage>,
        boxes: Vec<Candidate>,
        size: usize,
    ) -> Result<Vec<Option<Vec<f32>>>, StageError> {
        prepare(self.state, CropFaces { image, boxes, size }).await
    }

    async fn pnet(&self, tiles: Vec<Vec<f32>>) -> Result<Vec<Vec<f32>>, StageError> {
        Ok(infer(&self.face.pnet, fixed(tiles)).await?.into_iter().map(|p| p.output).collect())
    }

    async fn rnet(&self, crops: Vec<Vec<f32>>) -> Result<Vec<Vec<f32>>, StageError> {
        Ok(infer(&self.face.rnet, fixed(crops)).await?.into_iter().map(|p| p.output).collect())
    }

    async fn onet(&self, crops: Vec<Vec<f32>>) -> Result<Vec<Vec<f32>>, StageError> {
        Ok(infer(&self.face.onet, fixed(crops)).await?.into_iter().map(|p| p.output).collect())
    }
}

/// One image through the cascade (`pipelines::face_detect::cascade`, the networks through their
/// batchers), the answer's filter, and the embedder on the aligned faces.
pub async fn faces_with_embeddings(
    state: &Inference,
    face: &FaceService,
    image: Arc<DecodedImage>,
) -> Result<Vec<(Face, Vec<f32>)>, StageError> {
    let fc = &face.config;
    let params = DetectParams { min_face: fc.min_face, thresholds: fc.thresholds, factor: fc.factor };
    let mut faces = face_detect::cascade(image.clone(), params, fc.canvas, &Batched { state, face }).await?;
    let filter = fc.filter();
    faces.retain(|f| filter.keeps(f, image.width, image.height));
    faces.sort_by(|a, b| b.score.total_cmp(&a.score));
    faces.truncate(fc.max_faces);
    if faces.is_empty() {
        return Ok(Vec::new());
    }
    // Embeddings of the aligned faces.
    let aligned = prepare(state, AlignFaces { image, faces: faces.clone() }).await?;
    let embeddings = infer(&face.embed, fixed(aligned)).await?;
    Ok(faces.into_iter().zip(embeddings.into_iter().map(|p| p.output)).collect())
}

/// `architecture = "face"`: face detection (MTCNN) and embeddings (SFace) for the persons
/// endpoints; `weights` is the directory holding MTCNN's `pnet.pt`, `rnet.pt`, `onet.pt`.
pub struct Faces;

/// The face model's settings (`[models.<name>.faces]`: the embedder's file, the cascade's).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FaceSettings {
    faces: Option<FaceConfig>,
}

/// The face model's settings (checked when the config was loaded).
pub fn face_config(mc: &ModelConfig) -> Result<FaceConfig, Invalid> {
    settings::<FaceSettings>(mc)?
        .faces
        .ok_or_else(|| Invalid::new("faces", "a face model needs [models.<name>.faces] (embedder, …)"))
}

impl Family for Faces {
    fn architecture(&self) -> &'static str {
        "face"
    }

    fn check(&self, mc: &ModelConfig) -> Result<(), Invalid> {
        let fc = face_config(mc)?;
        no_modes(mc, "a face model serves the persons endpoints")?;
        fc.check().map_err(Invalid::within("faces"))
    }

    /// `<name>_pnet`, `_rnet`, `_onet`, `_embed`.
    fn stages(&self, name: &str, mc: &ModelConfig) -> Vec<Stage> {
        let fc = checked(face_config(mc));
        let net = |file: &str| mc.weights.join(file);
        vec![
            Stage::new(format!("{name}_pnet"), mtcnn::pnet_spec(net("pnet.pt"), fc.canvas), fc.pnet_max_batch),
            Stage::new(format!("{name}_rnet"), mtcnn::rnet_spec(net("rnet.pt")), mc.max_batch),
            Stage::new(format!("{name}_onet"), mtcnn::onet_spec(net("onet.pt")), mc.max_batch),
            Stage::new(format!("{name}_embed"), sface::spec(fc.embedder.clone()), mc.max_batch),
        ]
    }

    /// The face model's service from its four stages (P-Net, R-Net, O-Net, the embedder), the
    /// person store (`--role all` / `api`), and its whole-image jobs on `--role worker`.
    fn attach(&self, b: &mut Builder, name: &str, mc: &ModelConfig) -> Result<(), StartError> {
        let fc = checked(face_config(mc));
        let stages = b.place_one::<FaceService>(name, mc, "face", Head::default())?;
        let [pnet, rnet, onet, embed] = &stages[..] else {
            return Ok(());
        };
        b.feed_whole(name, mc, &stages, |state, _, image, _| Box::pin(face_job(state, image)));
        // Opened on the store's own thread (the PostgreSQL client blocks and must not live on the
        // async runtime); its first start reports back. After a panic the arbiter's new actor gets
        // no store: requests fail clearly instead of touching one in an unknown state.
        let store = b.open_store()?;
        b.services.insert(Arc::new(FaceService {
            name: name.to_string(),
            pnet: pnet.clone(),
            rnet: rnet.clone(),
            onet: onet.clone(),
            embed: embed.clone(),
            config: fc,
            store,
            remote: b.broker.clone(),
        }));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_faces_roundtrip_through_one_flat_output() {
        let face = |k: f32| Face {
            bbox: [k, k + 1.0, k + 30.0, k + 40.0],
            score: 0.99,
            landmarks: [[k, 1.0], [2.0, 3.0], [4.0, 5.0], [6.0, 7.0], [8.0, k]],
        };
        let faces: Vec<(Face, Vec<f32>)> = (0..3)
            .map(|i| (face(i as f32), (0..crate::models::sface::EMBEDDING_LEN).map(|j| (i * j) as f32).collect()))
            .collect();
        let out = encode_faces(&faces);
        assert_eq!(out.len(), 3 * FACE_FLOATS * 4);
        assert_eq!(decode_faces(&out).unwrap(), faces);
        assert!(decode_faces(&out[4..]).is_err());
        assert_eq!(decode_faces(&[]).unwrap(), vec![]);
    }
}
