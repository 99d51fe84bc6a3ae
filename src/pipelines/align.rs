//! Face alignment for the embedder: the similarity transform (rotation, uniform scale,
//! translation; least squares, no reflection) that takes the five MTCNN landmarks to the ArcFace
//! 112×112 template, and the 112×112 face sampled through it (bilinear, zero outside the image,
//! rounded to 8 bits) as planar RGB 0–255 — what tools/reference/sface.py does in numpy.

use super::decode::DecodedImage;

pub const SIZE: usize = 112;
/// ArcFace / InsightFace template (x, y): left eye, right eye, nose, left and right mouth corner.
pub const TEMPLATE: [[f64; 2]; 5] =
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]];

/// `[a, b, tx, ty]`: x' = a·x − b·y + tx, y' = b·x + a·y + ty.
pub type Similarity = [f64; 4];

/// Least-squares similarity from `src` to `dst` points (the closed form of Umeyama's method in 2-D).
pub fn similarity(src: &[[f64; 2]], dst: &[[f64; 2]]) -> Similarity {
    let n = src.len() as f64;
    let mean = |p: &[[f64; 2]]| {
        let (sx, sy) = p.iter().fold((0.0, 0.0), |(x, y), q| (x + q[0], y + q[1]));
        [sx / n, sy / n]
    };
    let (ms, md) = (mean(src), mean(dst));
    let (mut dot, mut cross, mut norm) = (0.0, 0.0, 0.0);
    for (s, d) in src.iter().zip(dst) {
        let (sx, sy, dx, dy) = (s[0] - ms[0], s[1] - ms[1], d[0] - md[0], d[1] - md[1]);
        dot += sx * dx + sy * dy;
        cross += sx * dy - sy * dx;
        norm += sx * sx + sy * sy;
    }
    let (a, b) = (dot / norm, cross / norm);
    [a, b, md[0] - (a * ms[0] - b * ms[1]), md[1] - (b * ms[0] + a * ms[1])]
}

/// The aligned face: output pixel (x, y) samples `img` at the inverse transform of (x, y).
pub fn warp(img: &DecodedImage, t: Similarity) -> Vec<f32> {
    let [a, b, tx, ty] = t;
    let det = a * a + b * b;
    let (w, h) = (img.width as i64, img.height as i64);
    let pixel = |x: i64, y: i64, c: usize| -> f64 {
        if x < 0 || y < 0 || x >= w || y >= h { 0.0 } else { f64::from(img.rgb[((y * w + x) * 3) as usize + c]) }
    };
    let plane = SIZE * SIZE;
    let mut out = vec![0f32; 3 * plane];
    for oy in 0..SIZE {
        for ox in 0..SIZE {
            let (u, v) = (ox as f64 - tx, oy as f64 - ty);
            // Inverse of [[a, −b], [b, a]] is [[a, b], [−b, a]] / (a² + b²).
            let sx = (a * u + b * v) / det;
            let sy = (-b * u + a * v) / det;
            let (x0, y0) = (sx.floor() as i64, sy.floor() as i64);
            let (fx, fy) = (sx - x0 as f64, sy - y0 as f64);
            for c in 0..3 {
                let value = pixel(x0, y0, c) * (1.0 - fx) * (1.0 - fy)
                    + pixel(x0 + 1, y0, c) * fx * (1.0 - fy)
                    + pixel(x0, y0 + 1, c) * (1.0 - fx) * fy
                    + pixel(x0 + 1, y0 + 1, c) * fx * fy;
                out[c * plane + oy * SIZE + ox] = (value + 0.5).floor().clamp(0.0, 255.0) as f32;
            }
        }
    }
    out
}

/// The embedder's input for a face with these landmarks.
pub fn aligned_face(img: &DecodedImage, landmarks: &[[f32; 2]; 5]) -> Vec<f32> {
    let src: Vec<[f64; 2]> = landmarks.iter().map(|p| [f64::from(p[0]), f64::from(p[1])]).collect();
    warp(img, similarity(&src, &TEMPLATE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn similarity_recovers_a_known_transform() {
        // Rotate 30°, scale 0.5, shift (10, −4).
        let (s, r) = (0.5f64, 30f64.to_radians());
        let (a, b) = (s * r.cos(), s * r.sin());
        let src = [[0.0, 0.0], [100.0, 0.0], [0.0, 50.0], [70.0, 80.0], [30.0, 20.0]];
        let dst: Vec<[f64; 2]> = src.iter().map(|p| [a * p[0] - b * p[1] + 10.0, b * p[0] + a * p[1] - 4.0]).collect();
        let t = similarity(&src, &dst);
        for (got, want) in t.iter().zip([a, b, 10.0, -4.0]) {
            assert!((got - want).abs() < 1e-9, "{t:?}");
        }
    }

    #[test]
    fn identity_warp_copies_pixels_and_blanks_the_outside() {
        let img = DecodedImage { width: 2, height: 1, rgb: vec![10, 20, 30, 40, 50, 60] };
        let out = warp(&img, [1.0, 0.0, 0.0, 0.0]);
        let plane = SIZE * SIZE;
        assert_eq!([out[0], out[plane], out[2 * plane]], [10.0, 20.0, 30.0]);
        assert_eq!(out[1], 40.0);
        assert_eq!(out[2], 0.0);
        assert_eq!(out[SIZE], 0.0);
    }
}
