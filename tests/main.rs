//! The integration tests, one module per area, built as one test binary (`integration`): one
//! compile of the shared helpers and one link of the server's code instead of one per file (each
//! link was ~300 MB with the cuda build). `tests/wgpu_lavapipe.rs` stays a binary of its own (it sets cubecl's autotune level
//! through the environment, which is only safe in a process with no other test threads).
//!
//! One test: `cargo test --test integration text::` (module path filters).

mod adult;
mod broker;
mod common;
mod declared;
mod devices;
mod disconnect;
mod face_precision;
mod improve;
mod model_centernet;
mod model_mobilenet_v2;
mod model_mtcnn;
mod model_nsfw;
mod model_plates;
mod model_ppocr;
mod model_realesrgan;
mod model_sface;
mod observability;
mod oip;
mod onnx_models;
mod ops;
mod overload;
mod persons;
mod plates;
mod server;
mod soak;
mod store_durability;
mod store_postgres;
mod structure;
mod supervision;
mod text;
mod unloadable;
mod verify;
