//! adult/detect end to end on the real server with the shipped defaults (every model of
//! config/default.toml placed on the CPU): README's request answered as documented (`objects[]` of
//! `{status, name, safe}`, the OpenAPI schema), `safe` = P(Drawing) + P(Neutral) within 1e-4 of
//! nsfwjs in TensorFlow.js on PNG photos, per-file errors beside good files, the documented 400s,
//! the evaluation set (every safe image of tests/data and models/nsfw-eval, all in one request,
//! batched) answered as TF.js decides, and the endpoint not served where no nsfw model is placed.

use crate::common;

use common::schema::OpenApi;
use common::{TestServer, config, data};
use gpubackend::client::{Conn, metric_value};
use serde_json::{Value, json};

const ADULT: &str = "/api/v1/adult/detect?oauth_provider=mcs&oauth_token=test";

fn detect(c: &mut Conn, meta: &Value, files: &[(String, Vec<u8>)]) -> (u16, Value) {
    let meta = meta.to_string();
    let mut parts: Vec<(&str, Option<&str>, &[u8])> =
        files.iter().map(|(n, b)| (n.as_str(), Some("image"), b.as_slice())).collect();
    parts.push(("meta", None, meta.as_bytes()));
    let r = c.post_multipart(ADULT, &parts).unwrap();
    let v = r.json();
    OpenApi::load().assert_valid(if r.status == 200 { "adult_detect_response" } else { "error_response" }, &v);
    (r.status, v)
}

fn reference() -> Value {
    serde_json::from_slice(&std::fs::read("tests/fixtures/nsfw/tfjs.json").unwrap()).unwrap()
}

/// TF.js's `safe` for a fixture image: P(Drawing) + P(Neutral).
fn tfjs_safe(reference: &Value, name: &str) -> f64 {
    let p = &reference["images"][name]["probabilities"];
    p[0].as_f64().unwrap() + p[2].as_f64().unwrap()
}

#[test]
fn adult_detect_answers_safe_as_nsfwjs_with_the_shipped_defaults() {
    let server = TestServer::start(config());
    let mut c = server.conn();
    let reference = reference();

    // README's request: two files, one of them a close-up that the model takes for 18+.
    let files = vec![("file".to_string(), data("coffee.png")), ("file2".to_string(), data("eye.png"))];
    let (status, v) = detect(&mut c, &json!({"images": [{"name": "file"}, {"name": "file2"}]}), &files);
    assert_eq!(status, 200, "{v}");
    let objects = v["body"]["objects"].as_array().unwrap();
    assert_eq!(objects.len(), 2, "{v}");
    for (o, (name, fixture)) in objects.iter().zip([("file", "coffee.png"), ("file2", "eye.png")]) {
        assert_eq!((o["status"].as_u64(), o["name"].as_str()), (Some(0), Some(name)), "{v}");
        let (got, want) = (o["safe"].as_f64().unwrap(), tfjs_safe(&reference, fixture));
        assert!((got - want).abs() < 1e-4, "{fixture}: safe {got} vs TF.js {want}");
        assert!(o.get("error").is_none(), "{v}");
    }
    assert!(objects[0]["safe"].as_f64().unwrap() > 0.99 && objects[1]["safe"].as_f64().unwrap() < 0.01, "{v}");

    // A broken file beside a good one: status 1 with its error (and `safe` 0, which the schema
    // requires); the good one answered.
    let files = vec![("a".to_string(), b"not an image".to_vec()), ("b".to_string(), data("rocket.jpg"))];
    let (status, v) = detect(&mut c, &json!({"images": [{"name": "a"}, {"name": "b"}]}), &files);
    assert_eq!(status, 200, "{v}");
    let o = &v["body"]["objects"];
    assert_eq!((o[0]["status"].as_u64(), o[0]["safe"].as_f64()), (Some(1), Some(0.0)), "{v}");
    assert!(o[0]["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    assert_eq!(o[1]["status"], 0, "{v}");
    assert!(o[1]["safe"].as_f64().unwrap() > 0.9, "{v}");

    // The documented 400s: no meta, a meta naming no uploaded file, no images.
    let (status, v) = detect(&mut c, &json!({"images": [{"name": "missing"}]}), &[("file".into(), data("coffee.png"))]);
    assert_eq!(status, 400, "{v}");
    let r = c.post_multipart(ADULT, &[("file", Some("image"), data("coffee.png").as_slice())]).unwrap();
    assert_eq!(r.status, 400);
    assert!(r.text().contains("meta is required"), "{}", r.text());

    // The evaluation set, one request: each image's answer as TF.js decides it (`safe ≥ 0.5`), and
    // within 1e-4 on the PNG files (the JPEG decoders differ by a level here and there).
    let names: Vec<String> = reference["images"].as_object().unwrap().keys().cloned().collect();
    let files: Vec<(String, Vec<u8>)> = names
        .iter()
        .map(|n| {
            let path = common::repo().join("tests/data").join(n);
            let path = if path.exists() { path } else { common::repo().join("models/nsfw-eval").join(n) };
            (n.clone(), std::fs::read(path).unwrap())
        })
        .collect();
    let meta = json!({"images": names.iter().map(|n| json!({"name": n})).collect::<Vec<_>>()});
    let (status, v) = detect(&mut c, &meta, &files);
    assert_eq!(status, 200, "{v}");
    let mut safe_answers = 0;
    for o in v["body"]["objects"].as_array().unwrap() {
        let name = o["name"].as_str().unwrap();
        let (got, want) = (o["safe"].as_f64().unwrap(), tfjs_safe(&reference, name));
        assert_eq!(o["status"], 0, "{o}");
        assert_eq!(got >= 0.5, want >= 0.5, "{name}: safe {got} vs TF.js {want}");
        if name.ends_with(".png") {
            assert!((got - want).abs() < 1e-4, "{name}: safe {got} vs TF.js {want}");
        }
        safe_answers += usize::from(got >= 0.5);
    }
    // Every image of the set is safe (photos, portraits, drawings, text pages); the one the model
    // gets wrong is eye.png, a close-up of a cat's eye (README, "adult/detect").
    println!("adult/detect: {safe_answers} of {} safe images answered safe ≥ 0.5", names.len());
    assert_eq!(safe_answers, names.len() - 1);

    // Batched with each other, counted per endpoint.
    let m = server.metrics();
    let batches = metric_value(&m, "gpubackend_batch_size_count", &[("model", "adult")]);
    let items = metric_value(&m, "gpubackend_batch_size_sum", &[("model", "adult")]);
    assert!(batches > 0.0 && items / batches > 1.0, "mean batch {items} / {batches}");
    let ok = metric_value(&m, "gpubackend_requests_total", &[("endpoint", "adult/detect"), ("outcome", "ok")]);
    assert!(ok >= 3.0, "{ok}");
}

#[test]
fn adult_detect_is_not_served_where_no_nsfw_model_is_placed() {
    let mut c = config();
    c.placement.retain(|p| p.models.iter().any(|m| m == "mobilenet_v2"));
    for p in &mut c.placement {
        p.models = vec!["mobilenet_v2".into()];
    }
    let server = TestServer::start(c);
    let (status, v) =
        detect(&mut server.conn(), &json!({"images": [{"name": "file"}]}), &[("file".into(), data("coffee.png"))]);
    assert_eq!(status, 400, "{v}");
    assert!(v["body"].as_str().unwrap().contains("adult/detect is not served"), "{v}");
}
