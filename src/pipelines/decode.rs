//! Upload bytes → `DecodedImage` (RGB8, EXIF orientation applied), with the format and pixel limits
//! checked from the header before any pixel buffer is allocated.

pub use gpubackend_formats::image::{DecodeError, DecodedImage, ImageLimits};

/// Upload bytes → upright RGB8 within the pixel limits (`gpubackend_formats::image`, fuzzed:
/// fuzz/).
pub fn decode(bytes: &[u8], limits: &ImageLimits) -> Result<DecodedImage, DecodeError> {
    gpubackend_formats::image::decode(bytes, limits)
}
