//! CPU pools for decoding and preprocessing, off the HTTP threads.

use std::sync::Arc;

use actix::{Actor, Handler, Message, SyncContext};
use actix_web::web::Bytes;

use crate::config::Limits;
use crate::pipelines::align::aligned_face;
use crate::pipelines::decode::{DecodeError, DecodedImage, decode};
use crate::pipelines::face_detect::{Candidate, DetectParams, Face, Level, Tile, crop_each, pyramid_tiles};
use crate::pipelines::plates::{PlateCrop, PlateInput, PlateParams, det_input as plate_input, plate_crops};
use crate::pipelines::preprocess::{ClassifierPrep, ModelInput, detector_input};
use crate::pipelines::text::{
    Detection, LineCrop, LineInput, TextParams, Working, line_crops, line_inputs, prepare_detection,
};

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
        decode(&msg.bytes, &msg.limits.image())
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
    pub prep: ClassifierPrep,
}

impl Handler<Preprocess> for Preprocessor {
    type Result = actix::MessageResult<Preprocess>;

    fn handle(&mut self, msg: Preprocess, _: &mut SyncContext<Self>) -> Self::Result {
        actix::MessageResult(msg.prep.input(&msg.image))
    }
}

/// The COCO detector's input: the image resized to `side`² (`pipelines::preprocess::detector_input`).
#[derive(Message)]
#[rtype(result = "ModelInput")]
pub struct DetectorInput {
    pub image: Arc<DecodedImage>,
    pub side: usize,
}

impl Handler<DetectorInput> for Preprocessor {
    type Result = actix::MessageResult<DetectorInput>;

    fn handle(&mut self, msg: DetectorInput, _: &mut SyncContext<Self>) -> Self::Result {
        actix::MessageResult(detector_input(&msg.image, msg.side))
    }
}

/// The COCO detector's output → every class's kept detections in the image's pixels, best first
/// (`pipelines::detect`); `top_k` and `pedestrian`'s persons-only are the caller's (per-class NMS
/// makes filtering classes afterwards the same as before).
#[derive(Message)]
#[rtype(result = "Vec<crate::pipelines::detect::Detection>")]
pub struct DetectorBoxes {
    pub output: Vec<f32>,
    pub params: crate::pipelines::detect::DetectorParams,
    pub threshold: f32,
    /// The image's width and height.
    pub size: [u32; 2],
}

impl Handler<DetectorBoxes> for Preprocessor {
    type Result = actix::MessageResult<DetectorBoxes>;

    fn handle(&mut self, msg: DetectorBoxes, _: &mut SyncContext<Self>) -> Self::Result {
        use crate::models::centernet::{CENTERNET_CLASSES, CENTERNET_INPUT, CENTERNET_MAP};
        use crate::pipelines::detect::{CenterNetOutput, select};
        let out = CenterNetOutput { data: &msg.output, classes: CENTERNET_CLASSES, side: CENTERNET_MAP };
        let peaks = out.peaks(msg.params.peaks, CENTERNET_INPUT);
        actix::MessageResult(select(&peaks, msg.threshold, msg.params.iou, usize::MAX, CENTERNET_INPUT, msg.size))
    }
}

/// The face cascade's CPU work between its networks, on the preprocessing pool: the pyramid of an
/// image cut into P-Net tiles.
#[derive(Message)]
#[rtype(result = "(Vec<Level>, Vec<Tile>)")]
pub struct Pyramid {
    pub image: Arc<DecodedImage>,
    pub params: DetectParams,
    pub canvas: usize,
}

impl Handler<Pyramid> for Preprocessor {
    type Result = actix::MessageResult<Pyramid>;

    fn handle(&mut self, msg: Pyramid, _: &mut SyncContext<Self>) -> Self::Result {
        actix::MessageResult(pyramid_tiles(&msg.image, &msg.params, msg.canvas))
    }
}

/// One `size`² crop per box (R-Net 24, O-Net 48); `None` where a box has no pixels.
#[derive(Message)]
#[rtype(result = "Vec<Option<Vec<f32>>>")]
pub struct CropFaces {
    pub image: Arc<DecodedImage>,
    pub boxes: Vec<Candidate>,
    pub size: usize,
}

impl Handler<CropFaces> for Preprocessor {
    type Result = actix::MessageResult<CropFaces>;

    fn handle(&mut self, msg: CropFaces, _: &mut SyncContext<Self>) -> Self::Result {
        actix::MessageResult(crop_each(&msg.image, &msg.boxes, msg.size))
    }
}

/// Each face aligned to the embedder's template.
#[derive(Message)]
#[rtype(result = "Vec<Vec<f32>>")]
pub struct AlignFaces {
    pub image: Arc<DecodedImage>,
    pub faces: Vec<Face>,
}

impl Handler<AlignFaces> for Preprocessor {
    type Result = actix::MessageResult<AlignFaces>;

    fn handle(&mut self, msg: AlignFaces, _: &mut SyncContext<Self>) -> Self::Result {
        actix::MessageResult(msg.faces.iter().map(|f| aligned_face(&msg.image, &f.landmarks)).collect())
    }
}

/// The text pipeline's CPU work before the detector: the working image and the detector's input.
#[derive(Message)]
#[rtype(result = "Detection")]
pub struct DetectText {
    pub image: Arc<DecodedImage>,
    pub params: TextParams,
}

impl Handler<DetectText> for Preprocessor {
    type Result = actix::MessageResult<DetectText>;

    fn handle(&mut self, msg: DetectText, _: &mut SyncContext<Self>) -> Self::Result {
        actix::MessageResult(prepare_detection(&msg.image, &msg.params))
    }
}

/// The text pipeline's CPU work after the detector: its map → line crops (and the
/// classifier's inputs).
#[derive(Message)]
#[rtype(result = "Vec<LineCrop>")]
pub struct TextLines {
    pub work: Arc<Working>,
    pub map: Vec<f32>,
    pub size: [usize; 2],
    pub bucket: [usize; 2],
    pub params: TextParams,
}

impl Handler<TextLines> for Preprocessor {
    type Result = actix::MessageResult<TextLines>;

    fn handle(&mut self, msg: TextLines, _: &mut SyncContext<Self>) -> Self::Result {
        actix::MessageResult(line_crops(&msg.work, &msg.map, msg.size, msg.bucket, &msg.params))
    }
}

/// The text pipeline's CPU work before the recogniser: line crops (turned where the classifier
/// found them upside down) → recogniser inputs.
#[derive(Message)]
#[rtype(result = "Vec<LineInput>")]
pub struct RecLines {
    pub lines: Vec<LineCrop>,
    pub flip: Vec<bool>,
    pub params: TextParams,
}

impl Handler<RecLines> for Preprocessor {
    type Result = actix::MessageResult<RecLines>;

    fn handle(&mut self, msg: RecLines, _: &mut SyncContext<Self>) -> Self::Result {
        actix::MessageResult(line_inputs(msg.lines, &msg.flip, &msg.params))
    }
}

/// The plate pipeline's CPU work before the detector: its input.
#[derive(Message)]
#[rtype(result = "PlateInput")]
pub struct DetectPlates {
    pub image: Arc<DecodedImage>,
    pub params: PlateParams,
}

impl Handler<DetectPlates> for Preprocessor {
    type Result = actix::MessageResult<DetectPlates>;

    fn handle(&mut self, msg: DetectPlates, _: &mut SyncContext<Self>) -> Self::Result {
        actix::MessageResult(plate_input(&msg.image, &msg.params))
    }
}

/// The plate pipeline's CPU work between its networks: detector output → plates and their
/// rectified crops.
#[derive(Message)]
#[rtype(result = "Vec<PlateCrop>")]
pub struct PlateCrops {
    pub image: Arc<DecodedImage>,
    pub output: Vec<f32>,
    pub bucket: [usize; 2],
    pub ratio: f32,
    pub params: PlateParams,
}

impl Handler<PlateCrops> for Preprocessor {
    type Result = actix::MessageResult<PlateCrops>;

    fn handle(&mut self, msg: PlateCrops, _: &mut SyncContext<Self>) -> Self::Result {
        actix::MessageResult(plate_crops(&msg.image, &msg.output, msg.bucket, msg.ratio, &msg.params))
    }
}

/// Super-resolution's windows of an image: each tile and its network input.
#[derive(Message)]
#[rtype(result = "Vec<(crate::pipelines::superres::Tile, Vec<f32>)>")]
pub struct SrTiles {
    pub image: Arc<DecodedImage>,
    pub grid: crate::pipelines::superres::TileGrid,
}

impl Handler<SrTiles> for Preprocessor {
    type Result = actix::MessageResult<SrTiles>;

    fn handle(&mut self, msg: SrTiles, _: &mut SyncContext<Self>) -> Self::Result {
        let (img, g) = (&msg.image, &msg.grid);
        let (w, h) = (img.width as usize, img.height as usize);
        actix::MessageResult(g.tiles(w, h).into_iter().map(|t| (t, g.input(&img.rgb, w, h, &t))).collect())
    }
}

/// One tile's output written into the ×scale raster (handed over and back: one owner at a time).
#[derive(Message)]
#[rtype(result = "Vec<u8>")]
pub struct SrPlace {
    pub grid: crate::pipelines::superres::TileGrid,
    pub tile: crate::pipelines::superres::Tile,
    pub output: Vec<f32>,
    pub raster: Vec<u8>,
    /// The input image's width.
    pub width: usize,
}

impl Handler<SrPlace> for Preprocessor {
    type Result = actix::MessageResult<SrPlace>;

    fn handle(&mut self, mut msg: SrPlace, _: &mut SyncContext<Self>) -> Self::Result {
        msg.grid.place(&msg.output, &msg.tile, &mut msg.raster, msg.width);
        actix::MessageResult(msg.raster)
    }
}

/// The ×scale raster → the answer's JPEG (`pipelines::superres::finish`).
#[derive(Message)]
#[rtype(result = "Result<Vec<u8>, String>")]
pub struct SrFinish {
    pub raster: Vec<u8>,
    pub width: u32,
    pub height: u32,
    pub factor: u32,
    pub scale: u32,
    pub quality: u8,
}

impl Handler<SrFinish> for Preprocessor {
    type Result = Result<Vec<u8>, String>;

    fn handle(&mut self, msg: SrFinish, _: &mut SyncContext<Self>) -> Self::Result {
        crate::pipelines::superres::finish(msg.raster, msg.width, msg.height, msg.factor, msg.scale, msg.quality)
    }
}
