//! Upload bytes → `DecodedImage` (RGB8, EXIF orientation applied), with the format and pixel limits
//! checked from the header before any pixel buffer is allocated.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};

use crate::config::Limits;

/// A decoded image in RGB8, upright.
#[derive(Debug, Clone)]
pub struct DecodedImage {
    pub width: u32,
    pub height: u32,
    /// Row-major RGB, `width * height * 3` bytes.
    pub rgb: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty image")]
    Empty,
    #[error("unsupported image format: only jpeg, png and tiff are accepted")]
    UnsupportedFormat,
    #[error("image is too small: {width}x{height}, the minimum is {min_width}x{min_height}")]
    TooSmall { width: u32, height: u32, min_width: u32, min_height: u32 },
    #[error("image is too large: {width}x{height}, the maximum is {max_width}x{max_height}")]
    TooLarge { width: u32, height: u32, max_width: u32, max_height: u32 },
    #[error("cannot decode image: {0}")]
    Corrupt(String),
}

impl DecodeError {
    /// Short, fixed label for metrics.
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::UnsupportedFormat => "unsupported_format",
            Self::TooSmall { .. } => "too_small",
            Self::TooLarge { .. } => "too_large",
            Self::Corrupt(_) => "corrupt",
        }
    }
}

pub fn decode(bytes: &[u8], limits: &Limits) -> Result<DecodedImage, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    let format = image::guess_format(bytes).map_err(|_| DecodeError::UnsupportedFormat)?;
    if !matches!(format, ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::Tiff) {
        return Err(DecodeError::UnsupportedFormat);
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut decoder_limits = image::Limits::default();
    // Pixel buffer bound (RGBA16 worst case) in case a decoder allocates beyond the header's size.
    decoder_limits.max_alloc = Some(u64::from(limits.max_width) * u64::from(limits.max_height) * 8 + (1 << 20));
    reader.limits(decoder_limits);
    let mut decoder = reader.into_decoder().map_err(|e| DecodeError::Corrupt(e.to_string()))?;
    let (w, h) = decoder.dimensions();
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    // Limits apply to the stored raster (what we must allocate), whatever the orientation.
    let (long, short) = (w.max(h), w.min(h));
    let (max_long, max_short) = (limits.max_width.max(limits.max_height), limits.max_width.min(limits.max_height));
    if long > max_long || short > max_short {
        return Err(DecodeError::TooLarge {
            width: w,
            height: h,
            max_width: limits.max_width,
            max_height: limits.max_height,
        });
    }
    if w < limits.min_width || h < limits.min_height {
        return Err(DecodeError::TooSmall {
            width: w,
            height: h,
            min_width: limits.min_width,
            min_height: limits.min_height,
        });
    }
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| DecodeError::Corrupt(e.to_string()))?;
    img.apply_orientation(orientation);
    let rgb = img.into_rgb8();
    Ok(DecodedImage { width: rgb.width(), height: rgb.height(), rgb: rgb.into_raw() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn decodes_png_to_rgb() {
        let d = decode(&png(6, 5), &Limits::default()).unwrap();
        assert_eq!((d.width, d.height, d.rgb.len()), (6, 5, 90));
        assert_eq!(&d.rgb[3..6], &[1, 0, 7]);
    }

    #[test]
    fn decodes_tiff_and_grey_images_to_rgb() {
        let img = image::GrayImage::from_fn(9, 7, |x, _| image::Luma([x as u8 * 10]));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Tiff).unwrap();
        let d = decode(&out.into_inner(), &Limits::default()).unwrap();
        assert_eq!((d.width, d.height), (9, 7));
        assert_eq!(&d.rgb[3..6], &[10, 10, 10]);
    }

    #[test]
    fn rejects_bad_inputs_with_clear_errors() {
        let l = Limits::default();
        assert_eq!(decode(b"", &l).unwrap_err(), DecodeError::Empty);
        assert_eq!(decode(b"GIF89a....", &l).unwrap_err(), DecodeError::UnsupportedFormat);
        assert_eq!(decode(b"hello world", &l).unwrap_err(), DecodeError::UnsupportedFormat);
        assert!(matches!(decode(&png(4, 9), &l).unwrap_err(), DecodeError::TooSmall { width: 4, .. }));
        let mut truncated = png(64, 64);
        truncated.truncate(60);
        assert!(matches!(decode(&truncated, &l).unwrap_err(), DecodeError::Corrupt(_)));
    }

    #[test]
    fn pixel_limit_is_checked_from_the_header() {
        let l = Limits { max_width: 32, max_height: 16, ..Limits::default() };
        assert!(matches!(decode(&png(33, 10), &l).unwrap_err(), DecodeError::TooLarge { width: 33, .. }));
        // Portrait within the rotated bound is accepted (phones store rotated rasters).
        assert!(decode(&png(16, 32), &l).is_ok());
        assert!(decode(&png(32, 16), &l).is_ok());
    }

    #[test]
    fn huge_declared_dimensions_are_refused_before_decoding() {
        // A real 16×16 JPEG whose frame header is patched to claim 60000×50000 pixels (a
        // decompression bomb): refused from the header, nothing allocated for the raster.
        let img = image::RgbImage::from_fn(16, 16, |_, _| image::Rgb([1, 2, 3]));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Jpeg).unwrap();
        let mut jpeg = out.into_inner();
        let sof = jpeg.windows(2).position(|w| w == [0xFF, 0xC0]).expect("baseline SOF0");
        jpeg[sof + 5..sof + 7].copy_from_slice(&50_000u16.to_be_bytes());
        jpeg[sof + 7..sof + 9].copy_from_slice(&60_000u16.to_be_bytes());
        let err = decode(&jpeg, &Limits::default()).unwrap_err();
        assert_eq!(err, DecodeError::TooLarge { width: 60_000, height: 50_000, max_width: 3840, max_height: 2160 });
    }

    #[test]
    fn exif_orientation_is_applied() {
        // A 16×8 JPEG whose EXIF says "rotate 90° CW" decodes as 8×16.
        let img = image::RgbImage::from_fn(16, 8, |_, _| image::Rgb([200, 10, 10]));
        let mut jpeg = Cursor::new(Vec::new());
        img.write_to(&mut jpeg, ImageFormat::Jpeg).unwrap();
        let jpeg = jpeg.into_inner();
        let exif: Vec<u8> = [
            b"Exif\0\0MM\0\x2a\0\0\0\x08".as_slice(),
            &[0, 1, 0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0],
        ]
        .concat();
        let len = (exif.len() + 2) as u16;
        let mut with_exif = vec![0xFF, 0xD8, 0xFF, 0xE1];
        with_exif.extend_from_slice(&len.to_be_bytes());
        with_exif.extend_from_slice(&exif);
        with_exif.extend_from_slice(&jpeg[2..]);
        let d = decode(&with_exif, &Limits::default()).unwrap();
        assert_eq!((d.width, d.height), (8, 16));
    }
}
