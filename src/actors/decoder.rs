//! CPU pools for decoding and preprocessing, off the HTTP threads.

use std::sync::Arc;

use actix::{Actor, Handler, Message, SyncContext};
use actix_web::web::Bytes;

use crate::config::Limits;
use crate::pipelines::align::aligned_face;
use crate::pipelines::decode::{DecodeError, DecodedImage, decode};
use crate::pipelines::face_detect::{Candidate, DetectParams, Face, Level, Tile, crop_each, pyramid_tiles};
use crate::pipelines::preprocess::{ClassifierSpec, ModelInput, classifier_input};

pub struct Decoder;

impl Actor for Decoder {
    type Context = SyncContext<Self>;
}

#[derive(Message)]
#[rtype(result = "Result<DecodedImage, DecodeError>")]
pub struct Decode {
    pub bytes: Bytes,
    pub limits: Arc<Limits>,
}

impl Handler<Decode> for Decoder {
    type Result = Result<DecodedImage, DecodeError>;

    fn handle(&mut self, msg: Decode, _: &mut SyncContext<Self>) -> Self::Result {
        decode(&msg.bytes, &msg.limits)
    }
}

pub struct Preprocessor;

impl Actor for Preprocessor {
    type Context = SyncContext<Self>;
}

#[derive(Message)]
#[rtype(result = "ModelInput")]
pub struct Preprocess {
    pub image: Arc<DecodedImage>,
    pub spec: ClassifierSpec,
}

impl Handler<Preprocess> for Preprocessor {
    type Result = actix::MessageResult<Preprocess>;

    fn handle(&mut self, msg: Preprocess, _: &mut SyncContext<Self>) -> Self::Result {
        actix::MessageResult(classifier_input(&msg.image, msg.spec))
    }
}

/// The face cascade's CPU work between its networks, on the preprocessing pool.
#[derive(Message)]
#[rtype(result = "FacePrepared")]
pub enum FacePrep {
    /// The pyramid of an image, cut into P-Net tiles.
    Pyramid { image: Arc<DecodedImage>, params: DetectParams, canvas: usize },
    /// One `size`² crop per box (R-Net 24, O-Net 48).
    Crops { image: Arc<DecodedImage>, boxes: Vec<Candidate>, size: usize },
    /// Each face aligned to the embedder's template.
    Align { image: Arc<DecodedImage>, faces: Vec<Face> },
}

pub enum FacePrepared {
    Tiles(Vec<Level>, Vec<Tile>),
    Crops(Vec<Option<Vec<f32>>>),
    Aligned(Vec<Vec<f32>>),
}

impl Handler<FacePrep> for Preprocessor {
    type Result = actix::MessageResult<FacePrep>;

    fn handle(&mut self, msg: FacePrep, _: &mut SyncContext<Self>) -> Self::Result {
        actix::MessageResult(match msg {
            FacePrep::Pyramid { image, params, canvas } => {
                let (levels, tiles) = pyramid_tiles(&image, &params, canvas);
                FacePrepared::Tiles(levels, tiles)
            }
            FacePrep::Crops { image, boxes, size } => FacePrepared::Crops(crop_each(&image, &boxes, size)),
            FacePrep::Align { image, faces } => {
                FacePrepared::Aligned(faces.iter().map(|f| aligned_face(&image, &f.landmarks)).collect())
            }
        })
    }
}
