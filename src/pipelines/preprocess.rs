//! `DecodedImage` → model input. For the ImageNet classifier: antialiased triangle-filter resize of
//! the shorter side to 256, centre crop 224, ImageNet mean/std, CHW f32. The same steps are written
//! in numpy in `tools/reference/mobilenet_v2.py`; the model test checks both agree.

use super::decode::DecodedImage;
use crate::models::declared::{Channels, IoContract, Resize};
use crate::models::onnx_graph::tf_bilinear_taps;

const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Model input for one item, CHW f32 (3 channels).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInput {
    pub data: Vec<f32>,
    /// (height, width) for models that take any size (the text networks); None: the model's own
    /// square side. Only items of the same size are batched together.
    pub size: Option<[usize; 2]>,
}

impl ModelInput {
    /// An input of the model's fixed square size.
    pub fn fixed(data: Vec<f32>) -> Self {
        Self { data, size: None }
    }

    /// An input of its own size.
    pub fn sized(data: Vec<f32>, height: usize, width: usize) -> Self {
        Self { data, size: Some([height, width]) }
    }
}

/// How an image becomes a classifier input.
#[derive(Debug, Clone, Copy)]
pub struct ClassifierSpec {
    pub resize_short: usize,
    pub crop: usize,
}

impl ClassifierSpec {
    pub const IMAGENET: Self = Self { resize_short: 256, crop: 224 };
}

/// How a served classifier's input is made: the built-in ImageNet steps, or a declared network's
/// I/O contract (`[models.<name>.io]`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum ClassifierPrep {
    #[default]
    ImageNet,
    Declared(IoContract),
}

impl ClassifierPrep {
    pub fn input(&self, img: &DecodedImage) -> ModelInput {
        match self {
            Self::ImageNet => classifier_input(img, ClassifierSpec::IMAGENET),
            Self::Declared(io) => declared_input(img, io),
        }
    }
}

/// A declared network's input (its I/O contract): the image resized (stretched, or the shorter
/// side scaled and the centre cut) to `io.input` with the same antialiased triangle filter as the
/// ImageNet steps (the identity when the image already has the input's size), channels in the
/// declared order, `(x · scale − mean) / std`, CHW f32, sized `io.input`.
pub fn declared_input(img: &DecodedImage, io: &IoContract) -> ModelInput {
    let (w, h) = (img.width as usize, img.height as usize);
    let [oh, ow] = io.input;
    if io.resize == Resize::BilinearAlignCorners {
        return align_corners_input(img, io);
    }
    // The resized image's size, and where the input window sits in it.
    let (nw, nh) = match io.resize {
        Resize::Stretch | Resize::BilinearAlignCorners => (ow, oh),
        Resize::CenterCrop => {
            let k = (ow as f64 / w as f64).max(oh as f64 / h as f64) / f64::from(io.crop_fraction);
            (((w as f64 * k).round() as usize).max(ow), ((h as f64 * k).round() as usize).max(oh))
        }
    };
    let (top, left) = ((nh - oh) / 2, (nw - ow) / 2);
    let rows: Vec<(usize, Vec<f64>)> = triangle_weights(h, nh).into_iter().skip(top).take(oh).collect();
    let cols: Vec<(usize, Vec<f64>)> = triangle_weights(w, nw).into_iter().skip(left).take(ow).collect();
    let order = match io.channels {
        Channels::Rgb => [0, 1, 2],
        Channels::Bgr => [2, 1, 0],
    };
    let mut data = vec![0f32; 3 * oh * ow];
    for (y, (ylo, yw)) in rows.iter().enumerate() {
        for (x, (xlo, xw)) in cols.iter().enumerate() {
            let mut acc = [0f64; 3];
            for (dy, &wy) in yw.iter().enumerate() {
                for (dx, &wx) in xw.iter().enumerate() {
                    let at = ((ylo + dy) * w + xlo + dx) * 3;
                    for (c, a) in acc.iter_mut().enumerate() {
                        *a += wy * wx * f64::from(img.rgb[at + c]);
                    }
                }
            }
            for (c, &src) in order.iter().enumerate() {
                let v = acc[src] as f32 * io.scale;
                data[c * oh * ow + y * ow + x] = (v - io.mean[c]) / io.std[c];
            }
        }
    }
    ModelInput::sized(data, oh, ow)
}

/// A declared network's input resized as TensorFlow's `resize_bilinear(align_corners=True)` does
/// (TF.js's CPU kernel: the pixel values scaled first, each output pixel from its four
/// neighbours at `o · (in − 1) / (out − 1)` in f64, along x on both rows, then along y), then
/// channels in the declared order and `(x − mean) / std`, CHW f32.
fn align_corners_input(img: &DecodedImage, io: &IoContract) -> ModelInput {
    let (w, h) = (img.width as usize, img.height as usize);
    let [oh, ow] = io.input;
    let taps = |size: usize, out: usize| -> Vec<(usize, usize, f64)> {
        let ratio = if out > 1 { (size - 1) as f64 / (out - 1) as f64 } else { size as f64 / out as f64 };
        (0..out)
            .map(|o| {
                let src = ratio * o as f64;
                let lo = (src.floor() as usize).min(size - 1);
                let hi = (src.ceil() as usize).min(size - 1);
                (lo, hi, src - lo as f64)
            })
            .collect()
    };
    let (rows, cols) = (taps(h, oh), taps(w, ow));
    let order = match io.channels {
        Channels::Rgb => [0, 1, 2],
        Channels::Bgr => [2, 1, 0],
    };
    let px = |y: usize, x: usize, c: usize| f64::from(f32::from(img.rgb[(y * w + x) * 3 + c]) * io.scale);
    let mut data = vec![0f32; 3 * oh * ow];
    for (y, &(ylo, yhi, yf)) in rows.iter().enumerate() {
        for (x, &(xlo, xhi, xf)) in cols.iter().enumerate() {
            for (c, &src) in order.iter().enumerate() {
                let top = px(ylo, xlo, src) + (px(ylo, xhi, src) - px(ylo, xlo, src)) * xf;
                let bottom = px(yhi, xlo, src) + (px(yhi, xhi, src) - px(yhi, xlo, src)) * xf;
                let v = (top + (bottom - top) * yf) as f32;
                data[c * oh * ow + y * ow + x] = (v - io.mean[c]) / io.std[c];
            }
        }
    }
    ModelInput::sized(data, oh, ow)
}

/// Sparse rows of an (out × in) resampling matrix: (first input index, weights).
fn triangle_weights(in_size: usize, out_size: usize) -> Vec<(usize, Vec<f64>)> {
    let scale = in_size as f64 / out_size as f64;
    let support = scale.max(1.0);
    (0..out_size)
        .map(|o| {
            let center = (o as f64 + 0.5) * scale;
            // Truncation toward zero matches Python's int() on these non-negative values.
            let lo = ((center - support + 0.5).max(0.0)) as usize;
            let hi = ((center + support + 0.5) as usize).min(in_size);
            let mut w: Vec<f64> =
                (lo..hi).map(|i| (1.0 - ((i as f64 - center + 0.5) / support).abs()).max(0.0)).collect();
            let sum: f64 = w.iter().sum();
            w.iter_mut().for_each(|x| *x /= sum);
            (lo, w)
        })
        .collect()
}

fn resized_size(w: usize, h: usize, short: usize) -> (usize, usize) {
    if w <= h {
        (short, (h as f64 * short as f64 / w as f64 + 0.5) as usize)
    } else {
        ((w as f64 * short as f64 / h as f64 + 0.5) as usize, short)
    }
}

/// Resize (short side) + centre crop + normalise. Only the cropped window is computed: the
/// vertical pass covers the crop's rows and the input columns its columns read, then the
/// horizontal pass writes CHW. f32 arithmetic (weights computed in f64), which the compiler
/// vectorises: 1.2e-6 from the f64 numpy reference on the test photos (`tests/model_mobilenet_v2.rs`).
pub fn classifier_input(img: &DecodedImage, spec: ClassifierSpec) -> ModelInput {
    let (w, h) = (img.width as usize, img.height as usize);
    let (nw, nh) = resized_size(w, h, spec.resize_short);
    let c = spec.crop;
    let (top, left) = (nh.saturating_sub(c) / 2, nw.saturating_sub(c) / 2);
    let to_f32 = |v: Vec<(usize, Vec<f64>)>| -> Vec<(usize, Vec<f32>)> {
        v.into_iter().map(|(lo, w)| (lo, w.into_iter().map(|x| x as f32).collect())).collect()
    };
    let rows = to_f32(triangle_weights(h, nh));
    let cols: Vec<(usize, Vec<f32>)> = to_f32(triangle_weights(w, nw)).into_iter().skip(left).take(c).collect();
    // The input columns the crop's columns read: [x0, x1).
    let x0 = cols.iter().map(|(lo, _)| *lo).min().unwrap_or(0);
    let x1 = cols.iter().map(|(lo, wt)| lo + wt.len()).max().unwrap_or(0);
    let span = (x1 - x0) * 3;
    // Vertical pass over the crop's rows and those columns: (c × span).
    let mut tmp = vec![0f32; c * span];
    for (y, (lo, weights)) in rows.iter().skip(top).take(c).enumerate() {
        let out = &mut tmp[y * span..(y + 1) * span];
        for (k, &wt) in weights.iter().enumerate() {
            let at = (lo + k) * w * 3 + x0 * 3;
            let src = &img.rgb[at..at + span];
            for (o, &s) in out.iter_mut().zip(src) {
                *o += wt * f32::from(s);
            }
        }
    }
    // Horizontal pass over the crop's columns, then normalise into CHW.
    let scale = STD.map(|s| 1.0 / (255.0 * s));
    let shift = [MEAN[0] / STD[0], MEAN[1] / STD[1], MEAN[2] / STD[2]];
    let mut data = vec![0f32; 3 * c * c];
    for y in 0..c {
        let row = &tmp[y * span..(y + 1) * span];
        for (x, (lo, weights)) in cols.iter().enumerate() {
            let mut acc = [0f32; 3];
            for (k, &wt) in weights.iter().enumerate() {
                let p = &row[(lo - x0 + k) * 3..(lo - x0 + k) * 3 + 3];
                for ch in 0..3 {
                    acc[ch] += wt * p[ch];
                }
            }
            for ch in 0..3 {
                data[ch * c * c + y * c + x] = acc[ch] * scale[ch] - shift[ch];
            }
        }
    }
    ModelInput::fixed(data)
}

/// The COCO detector's input: the image resized to `side`² by TensorFlow's legacy bilinear
/// resize (the aspect ratio is not kept, as the reference library feeds it), RGB 0–255, CHW f32.
pub fn detector_input(img: &DecodedImage, side: usize) -> ModelInput {
    let (w, h) = (img.width as usize, img.height as usize);
    let (ylo, yhi, yf) = tf_bilinear_taps(h, side);
    let (xlo, xhi, xf) = tf_bilinear_taps(w, side);
    let px = |y: usize, x: usize, c: usize| f32::from(img.rgb[(y * w + x) * 3 + c]);
    let mut data = vec![0f32; 3 * side * side];
    for oy in 0..side {
        for ox in 0..side {
            for c in 0..3 {
                // As TensorFlow computes it: along x on both rows, then along y.
                let top = px(ylo[oy], xlo[ox], c) + (px(ylo[oy], xhi[ox], c) - px(ylo[oy], xlo[ox], c)) * xf[ox];
                let bottom = px(yhi[oy], xlo[ox], c) + (px(yhi[oy], xhi[ox], c) - px(yhi[oy], xlo[ox], c)) * xf[ox];
                data[(c * side + oy) * side + ox] = top + (bottom - top) * yf[oy];
            }
        }
    }
    ModelInput::fixed(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(w: u32, h: u32) -> DecodedImage {
        let rgb = (0..w * h * 3).map(|i| (i * 37 % 251) as u8).collect();
        DecodedImage { width: w, height: h, rgb }
    }

    fn io(input: [usize; 2]) -> IoContract {
        IoContract {
            task: crate::models::declared::Task::Classify,
            input,
            layout: Default::default(),
            channels: Channels::Bgr,
            resize: Resize::Stretch,
            crop_fraction: 0.875,
            scale: 1.0 / 255.0,
            mean: [0.5; 3],
            std: [0.5; 3],
            output: Default::default(),
            classes: 2,
        }
    }

    #[test]
    fn a_declared_input_of_the_images_own_size_is_its_pixels_normalised() {
        let img = image(7, 5);
        let x = declared_input(&img, &io([5, 7]));
        assert_eq!(x.size, Some([5, 7]));
        for (y, xx, c) in [(0, 0, 0), (4, 6, 1), (2, 3, 2)] {
            // BGR: channel 0 is the image's blue.
            let px = f32::from(img.rgb[(y * 7 + xx) * 3 + (2 - c)]);
            let want = (px / 255.0 - 0.5) / 0.5;
            assert!((x.data[c * 35 + y * 7 + xx] - want).abs() < 1e-6, "({y}, {xx}, {c})");
        }
    }

    #[test]
    fn a_declared_centre_crop_keeps_the_aspect_and_the_middle() {
        // A 40 × 20 image of one colour left and another right; a 10² centre crop at 1.0 scales
        // the shorter side to 10 and cuts the middle 10 columns: half of each colour.
        let mut rgb = vec![0u8; 40 * 20 * 3];
        for y in 0..20 {
            for x in 20..40 {
                rgb[(y * 40 + x) * 3..(y * 40 + x) * 3 + 3].copy_from_slice(&[255, 255, 255]);
            }
        }
        let img = DecodedImage { width: 40, height: 20, rgb };
        let mut c = io([10, 10]);
        c.resize = Resize::CenterCrop;
        c.crop_fraction = 1.0;
        c.mean = [0.0; 3];
        c.std = [1.0; 3];
        let x = declared_input(&img, &c);
        assert!(x.data[0] < 0.01 && x.data[9] > 0.99, "{:?}", &x.data[..10]);
    }

    #[test]
    fn align_corners_keeps_the_corners_and_interpolates_between_them() {
        // 2 × 2 grey values 0, 60 / 120, 180 → 3 × 3: the corners as they are, the centre their mean.
        let rgb = [0u8, 60, 120, 180].iter().flat_map(|&v| [v, v, v]).collect();
        let img = DecodedImage { width: 2, height: 2, rgb };
        let mut c = io([3, 3]);
        (c.resize, c.channels, c.scale, c.mean, c.std) =
            (Resize::BilinearAlignCorners, Channels::Rgb, 1.0, [0.0; 3], [1.0; 3]);
        let x = declared_input(&img, &c);
        assert_eq!(x.size, Some([3, 3]));
        assert_eq!(&x.data[..9], &[0.0, 30.0, 60.0, 60.0, 90.0, 120.0, 120.0, 150.0, 180.0]);
    }

    #[test]
    fn weights_are_normalised_and_local() {
        for (i, o) in [(451, 256), (300, 256), (100, 256), (3840, 256), (7, 3)] {
            let rows = triangle_weights(i, o);
            assert_eq!(rows.len(), o);
            for (lo, w) in rows {
                assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-9);
                assert!(lo + w.len() <= i);
            }
        }
    }

    #[test]
    fn uniform_image_maps_to_its_normalised_colour() {
        let img = DecodedImage { width: 300, height: 500, rgb: [10u8, 128, 250].repeat(300 * 500) };
        let x = classifier_input(&img, ClassifierSpec::IMAGENET);
        assert_eq!(x.data.len(), 3 * 224 * 224);
        for (ch, v) in [10f32, 128., 250.].iter().enumerate() {
            let want = (v / 255.0 - MEAN[ch]) / STD[ch];
            assert!(x.data[ch * 224 * 224..(ch + 1) * 224 * 224].iter().all(|p| (p - want).abs() < 1e-5));
        }
    }

    #[test]
    fn tiny_images_are_upscaled() {
        let img = DecodedImage { width: 5, height: 5, rgb: vec![77; 75] };
        assert_eq!(classifier_input(&img, ClassifierSpec::IMAGENET).data.len(), 3 * 224 * 224);
    }
}
