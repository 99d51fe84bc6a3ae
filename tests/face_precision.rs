//! The face detector's answered faces against labelled real group photos (tools/eval/faces.json:
//! insightface 2.1's t1.jpg, @vladmandic/face-api 1.7.15's six demo photos, the portraits and
//! collage of tests/data, four photos without a face; and the group photos tiled 3 × 3, the crowd
//! case). The configured filter (final score, minimum size) must keep precision at 1 where the
//! cascade alone (facenet-pytorch's behaviour) answers hands and poker chips, at a stated recall.

use std::path::Path;

use gpubackend::eval::{NO_FILTER, detect_all, load_labels, score_all};

#[test]
fn configured_filter_answers_only_faces() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let labels = load_labels(&root.join("tools/eval/faces.json")).unwrap();
    let config = gpubackend::infer::load_config(None).unwrap();
    let model = &config.models["face"];
    let fc = &gpubackend::infer::face::face_config(model).unwrap();
    let dets = detect_all(&labels, fc, &model.weights, root).unwrap();
    let (crowds, photos): (Vec<&_>, Vec<_>) = dets.iter().partition(|d| d.crowd);

    let old = score_all(photos.iter().copied(), &NO_FILTER, labels.iou);
    let new = score_all(photos.iter().copied(), &fc.filter(), labels.iou);
    println!("photos: cascade alone {old:?}, configured {new:?}");
    // Measured: the cascade alone answers 4 non-faces over 36 faces (precision 0.90); the filter
    // none, and loses the two faces looking down in sample2.jpg (O-Net 0.77, 0.81).
    assert!(old.fp >= 3, "the labels no longer show the cascade's false positives: {old:?}");
    assert_eq!(new.fp, 0, "{new:?}");
    assert!(new.recall() >= 0.94, "{new:?}");

    let old = score_all(crowds.iter().copied(), &NO_FILTER, labels.iou);
    let new = score_all(crowds.iter().copied(), &fc.filter(), labels.iou);
    println!("crowds: cascade alone {old:?}, configured {new:?}");
    // Measured: recall 0.944 → 0.925; precision 0.956 → 1.
    assert!(new.precision() >= 0.99 && new.precision() > old.precision(), "{new:?} vs {old:?}");
    assert!(new.recall() >= 0.9, "the size floor drops small real faces: {new:?}");
}
