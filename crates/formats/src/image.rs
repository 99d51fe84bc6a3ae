//! Upload bytes → `DecodedImage` (RGB8, EXIF orientation applied), with the format and pixel limits
//! checked from the header before any pixel buffer is allocated.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};

/// The image limits [`decode`] checks from the header, before any pixel buffer is allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    pub min_width: u32,
    pub min_height: u32,
    pub max_width: u32,
    pub max_height: u32,
}

impl Default for ImageLimits {
    fn default() -> Self {
        Self { min_width: 5, min_height: 5, max_width: 3840, max_height: 2160 }
    }
}

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

pub fn decode(bytes: &[u8], limits: &ImageLimits) -> Result<DecodedImage, DecodeError> {
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
    let mut img = if format == ImageFormat::Jpeg {
        drop(decoder);
        strict_jpeg(bytes, w, h)?
    } else {
        DynamicImage::from_decoder(decoder).map_err(|e| DecodeError::Corrupt(e.to_string()))?
    };
    img.apply_orientation(orientation);
    let rgb = img.into_rgb8();
    Ok(DecodedImage { width: rgb.width(), height: rgb.height(), rgb: rgb.into_raw() })
}

/// A JPEG decoded strictly: what a lenient decoder reports and paints over (scan data that ends
/// early — a truncated upload —, markers where none belong, bytes between headers) is an error,
/// not an image half filled with grey. `w` × `h` from the headers already checked.
fn strict_jpeg(bytes: &[u8], w: u32, h: u32) -> Result<DynamicImage, DecodeError> {
    use zune_core::colorspace::ColorSpace;
    let corrupt = |e: zune_jpeg::errors::DecodeErrors| DecodeError::Corrupt(format!("jpeg: {e}"));
    let options = zune_core::options::DecoderOptions::default()
        .set_strict_mode(true)
        .set_max_width(w as usize)
        .set_max_height(h as usize);
    let mut probe = zune_jpeg::JpegDecoder::new_with_options(zune_core::bytestream::ZCursor::new(bytes), options);
    probe.decode_headers().map_err(corrupt)?;
    let grey = matches!(probe.input_colorspace(), Some(ColorSpace::Luma));
    let out = if grey { ColorSpace::Luma } else { ColorSpace::RGB };
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(
        zune_core::bytestream::ZCursor::new(bytes),
        options.jpeg_set_out_colorspace(out),
    );
    let pixels = decoder.decode().map_err(corrupt)?;
    let n = pixels.len();
    let size = || DecodeError::Corrupt(format!("jpeg: {n} bytes of pixels for {w}x{h}"));
    Ok(if grey {
        DynamicImage::ImageLuma8(image::GrayImage::from_raw(w, h, pixels).ok_or_else(size)?)
    } else {
        DynamicImage::ImageRgb8(image::RgbImage::from_raw(w, h, pixels).ok_or_else(size)?)
    })
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
        let d = decode(&png(6, 5), &ImageLimits::default()).unwrap();
        assert_eq!((d.width, d.height, d.rgb.len()), (6, 5, 90));
        assert_eq!(&d.rgb[3..6], &[1, 0, 7]);
    }

    #[test]
    fn decodes_tiff_and_grey_images_to_rgb() {
        let img = image::GrayImage::from_fn(9, 7, |x, _| image::Luma([x as u8 * 10]));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Tiff).unwrap();
        let d = decode(&out.into_inner(), &ImageLimits::default()).unwrap();
        assert_eq!((d.width, d.height), (9, 7));
        assert_eq!(&d.rgb[3..6], &[10, 10, 10]);
    }

    #[test]
    fn rejects_bad_inputs_with_clear_errors() {
        let l = ImageLimits::default();
        assert_eq!(decode(b"", &l).unwrap_err(), DecodeError::Empty);
        assert_eq!(decode(b"GIF89a....", &l).unwrap_err(), DecodeError::UnsupportedFormat);
        assert_eq!(decode(b"hello world", &l).unwrap_err(), DecodeError::UnsupportedFormat);
        assert!(matches!(decode(&png(4, 9), &l).unwrap_err(), DecodeError::TooSmall { width: 4, .. }));
        let mut truncated = png(64, 64);
        truncated.truncate(60);
        assert!(matches!(decode(&truncated, &l).unwrap_err(), DecodeError::Corrupt(_)));
    }

    fn jpeg(img: &DynamicImage) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Jpeg).unwrap();
        out.into_inner()
    }

    #[test]
    fn a_truncated_jpeg_is_an_error_not_grey_fill() {
        // A real photo cut at 3 KB of its bytes: the headers are whole, the scan ends early.
        let cat = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/data/chelsea.jpg")).unwrap();
        let e = decode(&cat[..3000], &ImageLimits::default()).unwrap_err();
        assert!(matches!(&e, DecodeError::Corrupt(m) if m.contains("jpeg")), "{e}");
        let whole = decode(&cat, &ImageLimits::default()).unwrap();
        assert_eq!((whole.width, whole.height), (451, 300));
        // Colour and grey JPEGs still decode, to RGB.
        let grey = DynamicImage::ImageLuma8(image::GrayImage::from_fn(24, 16, |x, _| image::Luma([x as u8 * 10])));
        let d = decode(&jpeg(&grey), &ImageLimits::default()).unwrap();
        assert_eq!((d.width, d.height), (24, 16));
        assert!(d.rgb[3 * 10].abs_diff(100) <= 4 && d.rgb[3 * 10] == d.rgb[3 * 10 + 1]);
        let colour = DynamicImage::ImageRgb8(image::RgbImage::from_fn(24, 16, |_, _| image::Rgb([200, 40, 10])));
        let d = decode(&jpeg(&colour), &ImageLimits::default()).unwrap();
        assert!(d.rgb[0].abs_diff(200) <= 6 && d.rgb[1].abs_diff(40) <= 6, "{:?}", &d.rgb[..3]);
    }

    #[test]
    fn pixel_limit_is_checked_from_the_header() {
        let l = ImageLimits { max_width: 32, max_height: 16, ..ImageLimits::default() };
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
        let err = decode(&jpeg, &ImageLimits::default()).unwrap_err();
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
        let d = decode(&with_exif, &ImageLimits::default()).unwrap();
        assert_eq!((d.width, d.height), (8, 16));
    }
}
