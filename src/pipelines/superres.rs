//! Super-resolution by tiles (photo/improve `resolution`): an image of any size is cut into
//! fixed `tile`² windows (so the tiles of every request batch together), each window's centre
//! ("core") is kept from the network's ×`scale` output, and the cores tile the output exactly.
//! Pure; the tiles run through the model's batcher.
//!
//! Cores step by `tile − 2·pad`; each window reaches `pad` pixels beyond its core where the image
//! has them, and is shifted inwards at the image's edges instead of going past them, so a tile
//! sees the image's border where the whole image would (the network's own zero padding acts at
//! the same place). A side shorter than `tile` is mirrored (without repeating the edge pixel) up
//! to `tile`. A core pixel's output then depends only on pixels within `pad` of it, as in a run
//! on the whole image, up to the network's receptive field beyond `pad`.

/// How images are cut: window side, context kept around each core, the network's scale.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TileGrid {
    pub tile: usize,
    pub pad: usize,
    pub scale: usize,
}

/// One window of an image: its origin, and the core it answers for (image pixels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tile {
    pub x0: usize,
    pub y0: usize,
    /// `[x, y, width, height]`, inside the window.
    pub core: [usize; 4],
}

/// Window origins and core spans along one axis of `size` pixels: `(origin, core start, core len)`.
fn axis(size: usize, tile: usize, pad: usize) -> Vec<(usize, usize, usize)> {
    if size <= tile {
        return vec![(0, 0, size)];
    }
    let step = tile - 2 * pad;
    let mut out = Vec::new();
    let mut start = 0;
    while start < size {
        let len = step.min(size - start);
        // The first core starts at the window's edge (the image's); later windows reach `pad`
        // before their core, the last ones are shifted back inside the image.
        let origin = start.saturating_sub(pad).min(size - tile);
        out.push((origin, start, len));
        start += len;
    }
    out
}

impl TileGrid {
    /// The tiles of a `width` × `height` image, row by row.
    pub fn tiles(&self, width: usize, height: usize) -> Vec<Tile> {
        assert!(self.tile > 2 * self.pad, "tile must exceed twice the pad (config). This is a bug.");
        let (xs, ys) = (axis(width, self.tile, self.pad), axis(height, self.tile, self.pad));
        ys.iter()
            .flat_map(|&(y0, cy, ch)| xs.iter().map(move |&(x0, cx, cw)| Tile { x0, y0, core: [cx, cy, cw, ch] }))
            .collect()
    }

    /// A window's pixels as the network's input: RGB in [0, 1], planar C × tile × tile; positions
    /// past a short side mirrored back into the image.
    pub fn input(&self, rgb: &[u8], width: usize, height: usize, t: &Tile) -> Vec<f32> {
        let n = self.tile;
        let mirror = |i: usize, size: usize| -> usize {
            if size == 1 {
                return 0;
            }
            let period = 2 * (size - 1);
            let m = i % period;
            if m < size { m } else { period - m }
        };
        let mut out = vec![0f32; 3 * n * n];
        for y in 0..n {
            let sy = mirror(t.y0 + y, height);
            for x in 0..n {
                let sx = mirror(t.x0 + x, width);
                let p = (sy * width + sx) * 3;
                for c in 0..3 {
                    out[c * n * n + y * n + x] = rgb[p + c] as f32 * (1.0 / 255.0);
                }
            }
        }
        out
    }

    /// Writes a window's output (planar C × scale·tile²) core into the ×scale RGB image `out`
    /// (`width` × scale wide): `clamp(⌊v · 255 + 0.5⌋, 0, 255)`.
    pub fn place(&self, output: &[f32], t: &Tile, out: &mut [u8], width: usize) {
        let (s, side) = (self.scale, self.tile * self.scale);
        let plane = side * side;
        let [cx, cy, cw, ch] = t.core;
        let out_w = width * s;
        for y in cy * s..(cy + ch) * s {
            let ty = y - t.y0 * s;
            for x in cx * s..(cx + cw) * s {
                let tx = x - t.x0 * s;
                let o = (y * out_w + x) * 3;
                for c in 0..3 {
                    let v = output[c * plane + ty * side + tx];
                    out[o + c] = (v * 255.0 + 0.5).floor().clamp(0.0, 255.0) as u8;
                }
            }
        }
    }
}

/// The answer's image from the ×`scale` raster (`width` × `height`, RGB): for a factor below the
/// network's, first resized to `width · factor / scale` (Lanczos3, as Real-ESRGAN's own
/// `outscale` does with OpenCV's Lanczos), then JPEG at `quality`.
pub fn finish(
    raster: Vec<u8>,
    width: u32,
    height: u32,
    factor: u32,
    scale: u32,
    quality: u8,
) -> Result<Vec<u8>, String> {
    use image::ImageEncoder;
    let img = image::RgbImage::from_raw(width, height, raster).ok_or("raster size. This is a bug.")?;
    let img = if factor == scale {
        img
    } else {
        let (w, h) = (width * factor / scale, height * factor / scale);
        image::imageops::resize(&img, w.max(1), h.max(1), image::imageops::FilterType::Lanczos3)
    };
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, quality)
        .write_image(img.as_raw(), img.width(), img.height(), image::ExtendedColorType::Rgb8)
        .map_err(|e| format!("JPEG encoding failed: {e}"))?;
    Ok(jpeg)
}

/// A `realesrgan` model's settings (`[models.<name>.superres]`).
#[derive(Debug, Clone, Copy, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SuperResConfig {
    /// Window side in input pixels: every tile of every request has this size, so tiles of all
    /// requests batch together.
    pub tile: usize,
    /// Context kept around each tile's core (input pixels); the window steps by `tile − 2·pad`.
    pub pad: usize,
    /// Largest input image (pixels) the endpoint takes; the ×4 raster it builds is 48 bytes per
    /// input pixel.
    pub max_input_pixels: u64,
    /// Largest JPEG answered per image (bytes, before base64); a larger one is that image's
    /// per-file error.
    pub max_output_bytes: usize,
    /// Quality of the answered JPEG (1–100).
    pub jpeg_quality: u8,
    /// Images per request and bytes per image for photo/improve (the documented 48 and 8 MB; the
    /// `limits` section still bounds them).
    pub max_images: usize,
    pub max_image_bytes: usize,
}

impl SuperResConfig {
    /// The settings' own checks: `Err((field, message))`, the field relative to `superres`.
    pub fn check(&self) -> Result<(), (&'static str, &'static str)> {
        if !(16..=1024).contains(&self.tile) || self.tile <= 2 * self.pad + 8 {
            return Err(("tile", "must be within 16..=1024 and exceed 2 × pad + 8"));
        }
        if self.max_input_pixels == 0 || self.max_output_bytes < 1024 {
            return Err(("max_input_pixels", "max_input_pixels must be at least 1 and max_output_bytes at least 1024"));
        }
        if !(1..=100).contains(&self.jpeg_quality) {
            return Err(("jpeg_quality", "must be within 1..=100"));
        }
        if self.max_images == 0 || self.max_image_bytes == 0 {
            return Err(("max_images", "max_images and max_image_bytes must be at least 1"));
        }
        Ok(())
    }
}

impl Default for SuperResConfig {
    fn default() -> Self {
        Self {
            tile: 128,
            pad: 16,
            max_input_pixels: 512 * 512,
            max_output_bytes: 16 << 20,
            jpeg_quality: 92,
            max_images: 48,
            max_image_bytes: 8 << 20,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cores_cover_every_pixel_once_with_context_inside_the_image() {
        let grid = TileGrid { tile: 32, pad: 6, scale: 4 };
        for (w, h) in [(1, 1), (20, 32), (32, 33), (100, 45), (21, 200)] {
            let tiles = grid.tiles(w, h);
            let mut seen = vec![0u8; w * h];
            for t in &tiles {
                let [cx, cy, cw, ch] = t.core;
                for y in cy..cy + ch {
                    for x in cx..cx + cw {
                        seen[y * w + x] += 1;
                    }
                }
                // The core lies in the window; the window lies in the image where the image is
                // longer than a tile.
                assert!(cx >= t.x0 && cx + cw <= t.x0 + 32 && cy >= t.y0 && cy + ch <= t.y0 + 32, "{t:?}");
                if w >= 32 {
                    assert!(t.x0 + 32 <= w);
                    // Context: `pad` on each side of the core unless the image ends first.
                    assert!(cx - t.x0 >= 6 || t.x0 == 0, "{t:?}");
                    assert!(t.x0 + 32 - (cx + cw) >= 6 || t.x0 + 32 == w, "{t:?}");
                }
            }
            assert!(seen.iter().all(|n| *n == 1), "{w}×{h}");
        }
        // 100 px in steps of 20: five cores, the last window shifted back to end at 100.
        let xs: Vec<_> = grid.tiles(100, 10).iter().map(|t| (t.x0, t.core[0], t.core[2])).collect();
        assert_eq!(xs, [(0, 0, 20), (14, 20, 20), (34, 40, 20), (54, 60, 20), (68, 80, 20)]);
    }

    #[test]
    fn short_sides_are_mirrored_and_cores_placed_at_scale() {
        let grid = TileGrid { tile: 4, pad: 1, scale: 2 };
        // A 3 × 1 image: red 0, 1, 2 (× 51) → 0, 1, 2, 1 along x, the row repeated down.
        let rgb: Vec<u8> = (0..3).flat_map(|i| [i * 51, 0, 255]).collect();
        let t = grid.tiles(3, 1)[0];
        let x = grid.input(&rgb, 3, 1, &t);
        let row = [0.0, 51.0, 102.0, 51.0].map(|v: f32| v * (1.0 / 255.0));
        assert_eq!(&x[..8], &[row, row].concat()[..]);
        assert!(x[32..].iter().all(|v| *v == 1.0));
        // The output's core (6 × 2 of the 8 × 8 window) lands in the 6 × 2 image.
        let out: Vec<f32> = (0..3 * 64).map(|i| (i % 64) as f32 / 255.0).collect();
        let mut img = vec![0u8; 6 * 2 * 3];
        grid.place(&out, &t, &mut img, 3);
        let red: Vec<u8> = img.chunks(3).map(|p| p[0]).collect();
        assert_eq!(red, [0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 13]);
    }

    #[test]
    fn finish_halves_for_factor_two_and_answers_a_jpeg() {
        // A 40 × 24 raster: left half dark, right half light.
        let raster: Vec<u8> =
            (0..24).flat_map(|_| (0..40).flat_map(|x| [if x < 20 { 30u8 } else { 220 }; 3])).collect();
        for (factor, size) in [(4, (40, 24)), (2, (20, 12))] {
            let jpeg = finish(raster.clone(), 40, 24, factor, 4, 92).unwrap();
            assert_eq!(&jpeg[..2], &[0xFF, 0xD8]);
            let back = image::load_from_memory(&jpeg).unwrap().to_rgb8();
            assert_eq!(back.dimensions(), size);
            let (w, _) = size;
            let (left, right) = (back.get_pixel(1, 1)[0], back.get_pixel(w - 2, 1)[0]);
            assert!(left.abs_diff(30) <= 6 && right.abs_diff(220) <= 6, "{factor}: {left} {right}");
        }
    }
}
