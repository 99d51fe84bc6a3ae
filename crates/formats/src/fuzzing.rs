//! The fuzz targets' bodies (fuzz/fuzz_targets/ call them; tests/regressions.rs replays the
//! committed corpus and every input the fuzzer found through them). Each reads untrusted bytes
//! with the server's limits and checks what a success promises; any panic, abort or stall is a bug.

use crate::image::{ImageLimits, decode};
use crate::multipart::{UploadLimits, read, ready};

const UPLOAD: UploadLimits =
    UploadLimits { max_images: 8, max_image_bytes: 64 * 1024, max_request_bytes: 256 * 1024, max_meta_bytes: 4096 };

/// The boundary of [`multipart`]'s bodies.
pub const BOUNDARY: &str = "gpubackendfuzz";

/// A request body as `multipart/form-data` (boundary [`BOUNDARY`]) streamed in chunks of the first
/// byte's size, then the images its `meta` names (`images[].name`, the shape every Vision method's
/// meta has) taken out with the server's checks.
pub fn multipart(data: &[u8]) {
    use actix_web::http::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
    let Some((&chunk, body)) = data.split_first() else { return };
    let chunk = usize::from(chunk).max(1);
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("multipart/form-data; boundary=gpubackendfuzz"));
    let parts: Vec<Result<actix_web::web::Bytes, actix_web::error::PayloadError>> =
        body.chunks(chunk).map(|c| Ok(actix_web::web::Bytes::copy_from_slice(c))).collect();
    let Ok(upload) = ready(read(&headers, futures_util::stream::iter(parts), &UPLOAD)) else { return };
    let meta_len = upload.meta.as_ref().map_or(0, |m| m.len());
    let total: usize = upload.files.iter().map(|(_, b)| b.len()).sum::<usize>() + meta_len;
    assert!(total <= UPLOAD.max_request_bytes && upload.files.len() <= UPLOAD.max_images);
    assert!(meta_len <= UPLOAD.max_meta_bytes);
    let Some(meta) = &upload.meta else { return };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(meta) else { return };
    let names: Vec<&str> = v["images"].as_array().into_iter().flatten().filter_map(|i| i["name"].as_str()).collect();
    if let Ok(images) = upload.images(&names, &UPLOAD) {
        assert_eq!(images.len(), names.len());
        assert!(images.iter().all(|(_, b)| !b.is_empty() && b.len() <= UPLOAD.max_image_bytes));
    }
}

/// Upload bytes through the decoder with limits (JPEG strict, PNG, TIFF; EXIF orientation): an
/// error, or an image within the limits whose buffer matches its size.
pub fn image(data: &[u8]) {
    const LIMITS: ImageLimits = ImageLimits { min_width: 5, min_height: 5, max_width: 512, max_height: 384 };
    if let Ok(img) = decode(data, &LIMITS) {
        assert_eq!(img.rgb.len(), img.width as usize * img.height as usize * 3);
        let (long, short) = (img.width.max(img.height), img.width.min(img.height));
        assert!(long <= 512 && (5..=384).contains(&short));
    }
}

/// An ONNX file through the protobuf reader: the model, its initializers and the lookups the
/// networks make.
pub fn onnx(data: &[u8]) {
    if let Ok(model) = crate::onnx::read(data) {
        for node in &model.nodes {
            for i in &node.inputs {
                if let Some(t) = model.float(model.resolve(i)) {
                    assert_eq!(Some(t.data.len()), crate::elements(&t.dims));
                }
            }
            let _ = (node.attr_int("axis"), node.attr_ints("pads"), node.attr_float("alpha"));
        }
    }
    let _ = crate::onnx::initializers(data);
}

/// An ncnn `.param` text graph through the parser, and every parameter read the graph builder makes.
pub fn ncnn_param(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(layers) = crate::ncnn::parse_param(text) {
        for l in &layers {
            for k in 0..32 {
                let _ = (l.int(k, 0), l.usize(k, 0), l.float(k, 0.0), l.array(k));
            }
        }
    }
}

/// A TF.js graph or layers model: `model.json`, a NUL byte, then the bytes every weight file it names reads
/// as; through the manifest reader (float32/int32, float16/uint8/uint16 dequantised).
pub fn tfjs(data: &[u8]) {
    let (json, bin) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    if let Ok(model) = crate::tfjs::TfjsModel::parse(json, |_| Ok(bin.to_vec())) {
        if let crate::tfjs::Topology::Layers(l) = &model.topology {
            for layer in &l.layers {
                let _ = (layer.pair("strides"), layer.str("padding"), layer.f64("epsilon"), layer.bool("use_bias"));
            }
        }
        for n in model.nodes() {
            let _ = (n.attr_str("padding"), n.attr_ints("strides"), n.attr_strs("fused_ops"), n.attr_bool("x"));
            let _ = n.data_inputs();
        }
        for w in model.weights.values() {
            let n = w.floats().map(<[f32]>::len).or(w.ints().map(<[i32]>::len));
            assert_eq!(n, crate::elements(&w.shape));
        }
    }
}
