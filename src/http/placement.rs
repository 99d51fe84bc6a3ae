//! The placement view (the lecture's admin page, `gpu #0: ["photoaws"]`): what each device of this
//! node serves, its workers' state and busy ratio, and each model's queue.
//! `GET /admin/placement` answers JSON; `GET /admin` renders the same view as a small HTML page.

use std::fmt::Write;
use std::time::Instant;

use actix_web::web::Data;
use actix_web::{HttpResponse, http::header};
use serde::Serialize;

use super::AppState;
use crate::models::DeviceSpec;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PlacementView {
    /// Kubernetes node (env `NODE_NAME`, from the downward API) or, outside Kubernetes, the host name.
    pub node: String,
    pub host: String,
    pub version: String,
    pub uptime_s: u64,
    pub ready: bool,
    pub devices: Vec<DeviceView>,
    pub models: Vec<ModelView>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeviceView {
    /// As configured: `cpu`, `wgpu:0`, `cuda:1`.
    pub device: String,
    /// The lecture's name: `gpu #0`, or `cpu`.
    pub label: String,
    pub models: Vec<String>,
    /// The adapter its workers run on (`NVIDIA H200 (Vulkan, DiscreteGpu, driver …)`), once one has loaded.
    pub adapter: Option<String>,
    pub workers: Vec<WorkerView>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WorkerView {
    pub model: String,
    /// `idle`, `busy` (in a forward pass) or `loading` (starting, or restarting after a failure).
    pub state: String,
    pub busy_ratio: f64,
    pub restarts: u64,
    /// Why the worker is not live (device cannot be opened and what is missing, weights, a failed pass).
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelView {
    /// The stage (a classifier's own name, or `face_pnet` …).
    pub name: String,
    /// The configured model it belongs to.
    pub model: String,
    pub modes: Vec<String>,
    pub queue_size: usize,
    pub queue_capacity: usize,
    pub queue_target: usize,
    pub live_workers: usize,
    pub workers: usize,
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default()
}

async fn collect(state: &AppState) -> PlacementView {
    let now = Instant::now();
    let mut devices: Vec<DeviceView> = Vec::new();
    // A worker's model as configured (the face model's stages list as `face`).
    let model_of = |stage: &str| {
        state.infer.models.iter().find(|m| m.name == stage).map_or_else(|| stage.to_string(), |m| m.model.clone())
    };
    for w in &state.infer.workers {
        let model = model_of(&w.model);
        let sample = w.sample(now);
        let worker = WorkerView {
            model: w.model.clone(),
            state: w.state().to_string(),
            busy_ratio: (sample.busy_ratio * 1000.0).round() / 1000.0,
            restarts: w.restarts.load(std::sync::atomic::Ordering::Relaxed),
            error: w.last_error(),
        };
        let adapter = w.adapter();
        match devices.iter_mut().find(|d| d.device == w.device) {
            Some(d) => {
                if !d.models.contains(&model) {
                    d.models.push(model);
                }
                d.adapter = d.adapter.take().or(adapter);
                d.workers.push(worker);
            }
            None => devices.push(DeviceView {
                device: w.device.clone(),
                label: DeviceSpec::parse(&w.device).map_or_else(|_| w.device.clone(), |d| d.label()),
                models: vec![model],
                adapter,
                workers: vec![worker],
            }),
        }
    }
    let mut models = Vec::new();
    for m in &state.infer.models {
        let queue_size = m.queue_len().await;
        models.push(ModelView {
            name: m.name.clone(),
            model: m.model.clone(),
            modes: m.modes.clone(),
            queue_size,
            queue_capacity: m.queue_capacity,
            queue_target: m.queue_target,
            live_workers: m.live_workers(),
            workers: m.workers.len(),
        });
    }
    let host = host_name();
    PlacementView {
        node: std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()).unwrap_or_else(|| host.clone()),
        host,
        version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_s: state.started.elapsed().as_secs(),
        ready: models.iter().all(|m| m.live_workers > 0),
        devices,
        models,
    }
}

pub async fn json(state: Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(collect(&state).await)
}

pub async fn page(state: Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/html; charset=utf-8"))
        .body(render_html(&collect(&state).await))
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `["a", "b"]`, as the lecture's page prints a device's models.
fn model_list(models: &[String]) -> String {
    let quoted: Vec<String> = models.iter().map(|m| format!("\"{m}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;padding:.3em .7em;text-align:left}\
th{background:#f3f3f3}.idle{color:#1a7f37}.busy{color:#9a6700}.loading{color:#cf222e;font-weight:bold}\
code{font-size:15px}.error{color:#cf222e;max-width:60em}.bar{display:inline-block;height:.7em;background:#4c8bf5;vertical-align:middle;margin-right:.4em}";

/// The page: one line per device in the lecture's form, then workers and queues. It reloads
/// itself every 5 s; the same data is at `/admin/placement`.
pub fn render_html(view: &PlacementView) -> String {
    let mut h = String::new();
    let node = escape(&view.node);
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"5\">\
         <title>gpubackend placement: {node}</title><style>{STYLE}</style></head><body>\
         <h1>Node <span id=\"node\">{node}</span></h1>\
         <p>host {host} · gpubackend {version} · up {uptime} s · <span id=\"ready\">{ready}</span> · \
         <a href=\"/admin/placement\">JSON</a> · <a href=\"/metrics\">metrics</a> · \
         <a href=\"/playground\">playground</a></p><h2>Devices</h2><pre id=\"placement\">",
        host = escape(&view.host),
        version = escape(&view.version),
        uptime = view.uptime_s,
        ready = if view.ready { "ready" } else { "NOT READY" },
    );
    for d in &view.devices {
        let _ = write!(h, "{}: {}  ({}", escape(&d.label), escape(&model_list(&d.models)), escape(&d.device));
        if let Some(a) = &d.adapter {
            let _ = write!(h, " on {}", escape(a));
        }
        h.push_str(")\n");
    }
    h.push_str("</pre><h2>Workers</h2><table id=\"workers\"><tr><th>device</th><th>model</th><th>state</th><th>busy (10 s)</th><th>restarts</th><th>why not live</th></tr>");
    for d in &view.devices {
        for w in &d.workers {
            let _ = write!(
                h,
                "<tr><td>{dev}</td><td>{model}</td><td class=\"{state}\">{state}</td>\
                 <td><span class=\"bar\" style=\"width:{px}px\"></span>{pct:.1} %</td><td>{restarts}</td>\
                 <td class=\"error\">{error}</td></tr>",
                dev = escape(&d.label),
                model = escape(&w.model),
                state = escape(&w.state),
                px = (w.busy_ratio * 100.0).round() as u32,
                pct = w.busy_ratio * 100.0,
                restarts = w.restarts,
                error = escape(w.error.as_deref().unwrap_or("")),
            );
        }
    }
    h.push_str("</table><h2>Models</h2><table id=\"models\"><tr><th>stage</th><th>modes</th><th>live workers</th><th>queue</th><th>capacity</th><th>autoscaling target</th></tr>");
    for m in &view.models {
        let _ = write!(
            h,
            "<tr><td>{name}</td><td>{modes}</td><td>{live} / {all}</td><td>{q}</td><td>{cap}</td><td>{target}</td></tr>",
            name = escape(&m.name),
            modes = escape(&m.modes.join(", ")),
            live = m.live_workers,
            all = m.workers,
            q = m.queue_size,
            cap = m.queue_capacity,
            target = m.queue_target,
        );
    }
    h.push_str("</table></body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> PlacementView {
        PlacementView {
            node: "node-<1>".into(),
            host: "h".into(),
            version: "0.1.0".into(),
            uptime_s: 7,
            ready: false,
            devices: vec![DeviceView {
                device: "wgpu:0".into(),
                label: "gpu #0".into(),
                models: vec!["face".into(), "car".into()],
                adapter: Some("NVIDIA H200 (Vulkan, DiscreteGpu, driver NVIDIA 580.159.04)".into()),
                workers: vec![WorkerView {
                    model: "face".into(),
                    state: "loading".into(),
                    busy_ratio: 0.25,
                    restarts: 3,
                    error: Some("device wgpu:0 cannot be opened: install <libegl1>".into()),
                }],
            }],
            models: vec![ModelView {
                name: "face_pnet".into(),
                model: "face".into(),
                modes: vec!["person".into()],
                queue_size: 5,
                queue_capacity: 512,
                queue_target: 64,
                live_workers: 0,
                workers: 1,
            }],
        }
    }

    #[test]
    fn page_lists_devices_in_the_lectures_form_and_escapes_names() {
        let html = render_html(&view());
        assert!(
            html.contains("gpu #0: [&quot;face&quot;, &quot;car&quot;]  (wgpu:0 on NVIDIA H200 (Vulkan, DiscreteGpu, driver NVIDIA 580.159.04))"),
            "{html}"
        );
        assert!(html.contains("install &lt;libegl1&gt;"), "the failure reason is shown, escaped: {html}");
        assert!(html.contains("node-&lt;1&gt;") && !html.contains("node-<1>"));
        assert!(html.contains("<td class=\"loading\">loading</td>"));
        assert!(html.contains("25.0 %") && html.contains("NOT READY"));
        assert!(html.contains("<td>0 / 1</td><td>5</td><td>512</td><td>64</td>"));
    }
}
