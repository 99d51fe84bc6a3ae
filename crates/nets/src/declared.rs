//! A network declared in the configuration, not in code: an ONNX graph, an ncnn model (`weights`
//! ending in `.param`, the `.bin` beside it) or a TF.js model (graph or layers; `weights` ending
//! in `.json`) on the graph runner with its I/O contract (`[models.<name>.io]`): the input it takes (size, layout, channel order,
//! normalisation), the task and what its output is. The server serves it through the same
//! batcher and workers as the built-in networks; no Rust is written for it.

use std::path::Path;

use burn::prelude::{Device, Tensor};
use serde::Deserialize;

use super::LoadError;
use super::onnx_graph::OnnxGraph;

/// Largest input side a declared network may ask for.
pub const MAX_SIDE: usize = 4096;

/// What a declared network does with an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// One score per class for the whole image (objects/detect modes, as a classifier).
    Classify,
}

/// The input tensor's axes. The graph runner computes in N × C × H × W.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    #[default]
    Nchw,
    Nhwc,
}

/// Channel order of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channels {
    #[default]
    Rgb,
    Bgr,
}

/// How an image is brought to the input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resize {
    /// Bilinear to exactly the input size (the aspect ratio is not kept).
    #[default]
    Stretch,
    /// Bilinear so that the shorter side is `crop_fraction` larger than the input's, then the
    /// centre cut out (torchvision's Resize(256) + CenterCrop(224) at 0.875).
    CenterCrop,
    /// Bilinear to exactly the input size without antialiasing, corners aligned (TensorFlow's
    /// `resize_bilinear(align_corners=True)`: output pixel `o` samples the input at
    /// `o · (in − 1) / (out − 1)`), as TF.js classifiers such as nsfwjs feed their images.
    BilinearAlignCorners,
}

/// What the output values are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scores {
    /// Unnormalised: a softmax is taken.
    #[default]
    Logits,
    /// Already probabilities (the graph ends in a softmax).
    Probabilities,
}

/// `[models.<name>.io]`: the I/O contract of a declared network.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IoContract {
    pub task: Task,
    /// Input height and width.
    pub input: [usize; 2],
    #[serde(default)]
    pub layout: Layout,
    #[serde(default)]
    pub channels: Channels,
    #[serde(default)]
    pub resize: Resize,
    /// `center_crop`: the input side over the resized shorter side.
    #[serde(default = "default_crop_fraction")]
    pub crop_fraction: f32,
    /// Each 0–255 pixel value is multiplied by `scale`, then `(x − mean) / std` per channel (in
    /// the input's channel order).
    #[serde(default = "default_scale")]
    pub scale: f32,
    #[serde(default)]
    pub mean: [f32; 3],
    #[serde(default = "default_std")]
    pub std: [f32; 3],
    #[serde(default)]
    pub output: Scores,
    /// Values the network gives per image (its classes).
    pub classes: usize,
}

/// Whether `weights` is a TF.js model (`model.json`), whose graph the reader turns N×C×H×W.
pub fn is_tfjs(weights: &Path) -> bool {
    weights.extension().is_some_and(|e| e == "json")
}

/// Whether `weights` is an ncnn model (`model.param`, its `model.bin` beside it).
pub fn is_ncnn(weights: &Path) -> bool {
    weights.extension().is_some_and(|e| e == "param")
}

fn default_crop_fraction() -> f32 {
    0.875
}
fn default_scale() -> f32 {
    1.0 / 255.0
}
fn default_std() -> [f32; 3] {
    [1.0; 3]
}

impl IoContract {
    /// The contract's own checks: `Err((field, message))`, the field relative to `io`.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let [h, w] = self.input;
        if !(1..=MAX_SIDE).contains(&h) || !(1..=MAX_SIDE).contains(&w) {
            return Err(("input", format!("height and width must be within 1..={MAX_SIDE}")));
        }
        if self.layout == Layout::Nhwc {
            return Err((
                "layout",
                "\"nhwc\" is not supported yet: the graph runner computes in N×C×H×W (export an ONNX graph \
                 channels-first; TF.js models, N×H×W×C by definition, are turned channels-first by the reader: \
                 leave `layout` out)"
                    .into(),
            ));
        }
        if !(self.crop_fraction > 0.0 && self.crop_fraction <= 1.0) {
            return Err(("crop_fraction", "must be within (0, 1]".into()));
        }
        if !self.scale.is_finite() || self.scale == 0.0 {
            return Err(("scale", "must be a finite number other than 0".into()));
        }
        if self.mean.iter().any(|m| !m.is_finite()) {
            return Err(("mean", "must be finite".into()));
        }
        if self.std.iter().any(|s| !s.is_finite() || *s == 0.0) {
            return Err(("std", "each must be finite and other than 0".into()));
        }
        if self.classes == 0 {
            return Err(("classes", "must be at least 1".into()));
        }
        Ok(())
    }
}

/// A declared network, loaded: the graph and what it was declared to give.
#[derive(Debug)]
pub struct DeclaredNet {
    graph: OnnxGraph,
    classes: usize,
    device: Device,
}

impl DeclaredNet {
    /// Loads the graph onto `device` (an op the runner lacks is named with its node) and checks
    /// that one pass gives `classes` values per image.
    pub fn load(weights: &Path, io: &IoContract, device: &Device) -> Result<Self, LoadError> {
        let graph = if is_tfjs(weights) {
            // TF.js models are N×H×W×C by definition; the reader turns them N×C×H×W.
            super::tfjs::load_graph(weights, &[], device)?
        } else if is_ncnn(weights) {
            super::ncnn::load_graph(weights, device)?
        } else {
            OnnxGraph::load(weights, device)?
        };
        let [h, w] = io.input;
        let out = graph.forward(Tensor::zeros([1, 3, h, w], device));
        let got: usize = out.dims().iter().product();
        if got != io.classes {
            return Err(LoadError::Weights {
                path: weights.to_path_buf(),
                message: format!("the graph gives {got} values per image, `io.classes` declares {}", io.classes),
            });
        }
        Ok(Self { graph, classes: io.classes, device: device.clone() })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// N × classes.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let n = x.dims()[0];
        self.graph.forward(x).reshape([n, self.classes])
    }
}

/// Per item: the declared classes' scores.
impl super::Network for DeclaredNet {
    fn device(&self) -> &Device {
        &self.device
    }

    fn launch(&self, x: Tensor<4>) -> Result<super::Readback, super::ForwardError> {
        let n = x.dims()[0];
        let out = self.forward(x);
        Ok(Box::new(move || super::rows(out, n)))
    }
}

/// A declared network as a worker loads it.
pub fn spec(weights: std::path::PathBuf, io: IoContract) -> super::ModelSpec {
    super::ModelSpec::new("onnx", weights, io.input, move |w, d| Ok(Box::new(DeclaredNet::load(w, &io, d)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The contract as JSON (the crate has no TOML parser; the server's configuration tests read
    /// it from TOML).
    fn io(json: &str) -> IoContract {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn defaults_and_checks_name_the_field() {
        let c = io(r#"{"task": "classify", "input": [48, 192], "classes": 2}"#);
        assert_eq!(
            (c.layout, c.channels, c.resize, c.output, c.mean, c.std),
            (Layout::Nchw, Channels::Rgb, Resize::Stretch, Scores::Logits, [0.0; 3], [1.0; 3])
        );
        assert!((c.scale - 1.0 / 255.0).abs() < 1e-9);
        assert_eq!(c.check(), Ok(()));
        for (json, field) in [
            (r#"{"task": "classify", "input": [0, 192], "classes": 2}"#, "input"),
            (r#"{"task": "classify", "input": [48, 192], "classes": 0}"#, "classes"),
            (r#"{"task": "classify", "input": [48, 192], "classes": 2, "std": [1, 0, 1]}"#, "std"),
            (r#"{"task": "classify", "input": [48, 192], "classes": 2, "scale": 0}"#, "scale"),
            (r#"{"task": "classify", "input": [48, 192], "classes": 2, "layout": "nhwc"}"#, "layout"),
            (r#"{"task": "classify", "input": [48, 192], "classes": 2, "crop_fraction": 1.5}"#, "crop_fraction"),
        ] {
            assert_eq!(io(json).check().unwrap_err().0, field, "{json}");
        }
        assert!(serde_json::from_str::<IoContract>(r#"{"task": "segment", "input": [1, 1], "classes": 1}"#).is_err());
        assert!(
            serde_json::from_str::<IoContract>(r#"{"task": "classify", "input": [1, 1], "classes": 1, "x": 1}"#)
                .is_err()
        );
    }
}
