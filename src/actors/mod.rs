//! Thin actix actors around the pure stages: they own threads, mailboxes and supervision.
//! Decoder and Preprocessor are SyncArbiter pools; one Batcher per model; one InferenceWorker per
//! device × model instance, each on its own arbiter thread under an actix `Supervisor`.

pub mod batcher;
pub mod decoder;
pub mod store;
pub mod worker;

pub use batcher::{Batcher, Enqueue, InferError, Job, Prediction, QueueLen, Refused};
pub use decoder::{
    AlignFaces, CropFaces, Decode, Decoder, DetectPlates, DetectText, DetectorBoxes, DetectorInput, PlateCrops,
    Preprocess, Preprocessor, Pyramid, RecLines, SrFinish, SrPlace, SrTiles, TextLines,
};
pub use store::StoreActor;
pub use worker::{InferenceWorker, RunBatch, WorkerHealth};
