//! Thin actix actors around the pure stages: they own threads, mailboxes and supervision.
//! Decoder and Preprocessor are SyncArbiter pools; one Batcher per model; one InferenceWorker per
//! device × model instance, each on its own arbiter thread under an actix `Supervisor`.

pub mod batcher;
pub mod decoder;
pub mod worker;

pub use batcher::{Batcher, Enqueue, InferError, Job, Prediction, QueueLen, Refused};
pub use decoder::{Decode, Decoder, Preprocess, Preprocessor};
pub use worker::{InferenceWorker, RunBatch, WorkerHealth};
