//! Stage logic, pure and unit-tested where it lives: no actix, no HTTP.

pub mod align;
pub mod batching;
pub mod classify;
pub mod decode;
pub mod detect;
pub mod face_detect;
pub mod plates;
pub mod preprocess;
pub mod superres;
pub mod text;
