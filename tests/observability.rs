//! The dashboards against a real Prometheus (Debian `prometheus`) scraping the real server under a
//! short real load: every panel query of every dashboard must evaluate without error and return
//! series with values. And the placement page rendered by headless Chromium (Debian `chromium`).

use crate::common;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{ChildGuard, DETECT, TestServer, config, data, repo, tempdir};
use gpubackend::client::Conn;
use serde_json::Value;

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// A real Prometheus scraping `target` every second, with the repository's alert rules loaded.
struct Prometheus {
    addr: SocketAddr,
    _child: ChildGuard,
}

impl Prometheus {
    fn start(targets: &[SocketAddr]) -> Self {
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let targets = targets.join(", ");
        let dir = tempdir("prometheus");
        let rules = repo().join("deploy/prometheus/alerts.yml");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: gpubackend\n    static_configs:\n      - targets: [{targets}]\n",
            rules.display()
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("prometheus (Debian package `prometheus`; `make setup` installs it)");
        let mut child = ChildGuard(child);
        let start = Instant::now();
        while !Conn::new(addr).get("/-/ready").map(|r| r.status == 200).unwrap_or(false) {
            assert!(child.0.try_wait().unwrap().is_none(), "prometheus exited");
            assert!(start.elapsed() < Duration::from_secs(120), "prometheus not ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { addr, _child: child }
    }

    fn api(&self, path: &str) -> Value {
        let r = Conn::new(self.addr).get(path).unwrap();
        let v = r.json();
        assert_eq!(v["status"], "success", "{path}: {v}");
        v["data"].clone()
    }

    fn query(&self, expr: &str) -> Vec<Value> {
        self.api(&format!("/api/v1/query?query={}", encode(expr))).get("result").unwrap().as_array().unwrap().clone()
    }
}

/// `label_values(selector, label)` (Grafana's variable query) through Prometheus' label API.
fn label_values(prom: &Prometheus, query: &str) -> Vec<String> {
    let inner = query.strip_prefix("label_values(").and_then(|q| q.strip_suffix(')')).expect(query);
    let (selector, label) = inner.rsplit_once(',').unwrap();
    let data = prom.api(&format!("/api/v1/label/{}/values?match[]={}", label.trim(), encode(selector.trim())));
    data.as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect()
}

/// Every `expr` of every panel (rows' nested panels included), with its panel title.
fn panel_queries(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(panels: &[Value], out: &mut Vec<(String, String)>) {
        for p in panels {
            for t in p["targets"].as_array().into_iter().flatten() {
                out.push((p["title"].as_str().unwrap_or("?").to_string(), t["expr"].as_str().unwrap().to_string()));
            }
            walk(p["panels"].as_array().map(Vec::as_slice).unwrap_or(&[]), out);
        }
    }
    let mut out = Vec::new();
    walk(dashboard["panels"].as_array().unwrap(), &mut out);
    out
}

fn substitute(expr: &str, vars: &[(String, String)]) -> String {
    let mut e = expr.replace("$__rate_interval", "20s");
    for (name, value) in vars {
        e = e.replace(&format!("${{{name}}}"), value).replace(&format!("${name}"), value);
    }
    assert!(!e.contains('$'), "unresolved variable in {e}");
    e
}

/// Good requests, client errors and an unknown path, from two threads, and face recognition from
/// a third, for `duration`.
fn drive_load(addr: SocketAddr, duration: Duration) {
    let faces = std::thread::spawn(move || {
        let photo = data("obama2.jpg");
        let mut c = Conn::new(addr);
        let end = Instant::now() + duration;
        let meta = br#"{"space":"1","create_new":true,"images":[{"name":"file"}]}"#;
        while Instant::now() < end {
            let r = c
                .post_multipart(
                    &DETECT.replace("objects/detect", "persons/recognize"),
                    &[("file", Some("o.jpg"), &photo), ("meta", None, meta)],
                )
                .unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
        }
    });
    let image = data("chelsea.jpg");
    let threads: Vec<_> = (0..2)
        .map(|i| {
            let image = image.clone();
            std::thread::spawn(move || {
                let mut c = Conn::new(addr);
                let end = Instant::now() + duration;
                let mut n = 0;
                while Instant::now() < end {
                    // Every model's series (adult/detect every third request of the second client)
                    // and client errors (a mode no model serves: 400).
                    let (path, meta): (String, &[u8]) = if i == 1 && n % 7 == 0 {
                        (DETECT.into(), br#"{"mode":["no_such_mode"],"images":[{"name":"file"}]}"#)
                    } else if i == 1 && n % 5 == 0 {
                        (DETECT.into(), br#"{"mode":["pedestrian"],"images":[{"name":"file"}]}"#)
                    } else if i == 1 && n % 3 == 0 {
                        (DETECT.replace("objects/detect", "adult/detect"), br#"{"images":[{"name":"file"}]}"#)
                    } else {
                        (DETECT.into(), br#"{"mode":["object"],"images":[{"name":"file"}]}"#)
                    };
                    let r = c.post_multipart(&path, &[("file", Some("c.jpg"), &image), ("meta", None, meta)]).unwrap();
                    assert!(r.status == 200 || r.status == 400, "{}", r.text());
                    if n % 10 == 0 {
                        assert_eq!(c.get("/api/v1/nothing").unwrap().status, 404);
                    }
                    n += 1;
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    faces.join().unwrap();
}

#[test]
fn every_dashboard_query_returns_series_from_a_real_prometheus() {
    let server = TestServer::start(config());
    let prom = Prometheus::start(&[server.addr]);
    // Wait for the first scrape, then load long enough for 20 s rate windows to see it.
    let start = Instant::now();
    while prom.query("gpubackend_workers_live").is_empty() {
        assert!(start.elapsed() < Duration::from_secs(60), "no scrape");
        std::thread::sleep(Duration::from_millis(200));
    }
    let load_start = unix_now();
    drive_load(server.addr, Duration::from_secs(8));
    // Two more scrapes after the load.
    std::thread::sleep(Duration::from_secs(3));
    let end = unix_now();

    // The alert rules loaded and evaluate in the real Prometheus.
    let rules = prom.api("/api/v1/rules");
    let loaded: Vec<&Value> =
        rules["groups"].as_array().unwrap().iter().flat_map(|g| g["rules"].as_array().unwrap()).collect();
    assert!(loaded.len() >= 7, "{rules}");
    for r in &loaded {
        assert_ne!(r["health"], "err", "{r}");
    }

    let dir = repo().join("deploy/grafana/dashboards");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        // Resolve the variables the way Grafana does: each query in order, the first value chosen;
        // then once more with "All" (the `allValue` regex).
        let mut selected: Vec<(String, String)> = Vec::new();
        let mut all: Vec<(String, String)> = Vec::new();
        for var in dashboard["templating"]["list"].as_array().unwrap() {
            let var_name = var["name"].as_str().unwrap().to_string();
            let query = substitute(var["query"]["query"].as_str().unwrap(), &selected);
            let values = label_values(&prom, &query);
            assert!(!values.is_empty(), "{name}: variable {var_name} ({query}) has no values");
            selected.push((var_name.clone(), values[0].clone()));
            all.push((var_name, var["allValue"].as_str().unwrap_or(".*").to_string()));
        }
        assert!(selected.iter().any(|(n, _)| n == "instance") && selected.iter().any(|(n, _)| n == "model"));
        // The broker row has series only in the distributed mode (the test below).
        for (title, expr) in panel_queries(&dashboard).into_iter().filter(|(t, _)| !t.starts_with(BROKER_PANELS)) {
            for vars in [&selected, &all] {
                let q = substitute(&expr, vars);
                assert_series(&prom, &format!("{name} / {title}"), &q, load_start, end);
                checked += 1;
            }
        }
    }
    assert!(checked >= 40, "only {checked} queries checked");
}

/// Title prefix of the dashboard's broker row panels.
const BROKER_PANELS: &str = "Broker:";

/// Checks a range query returns finite series.
fn assert_series(prom: &Prometheus, what: &str, q: &str, start: f64, end: f64) {
    let path = format!("/api/v1/query_range?query={}&start={start:.3}&end={end:.3}&step=1", encode(q));
    let v = Conn::new(prom.addr).get(&path).unwrap().json();
    assert_eq!(v["status"], "success", "{what}: {q}: {v}");
    let series = v["data"]["result"].as_array().unwrap();
    assert!(!series.is_empty(), "{what}: no series for {q}");
    let finite = series
        .iter()
        .flat_map(|s| s["values"].as_array().unwrap())
        .any(|p| p[1].as_str().and_then(|x| x.parse::<f64>().ok()).is_some_and(f64::is_finite));
    assert!(finite, "{what}: only NaN for {q}");
}

#[test]
fn the_broker_row_returns_series_from_a_real_prometheus_over_an_api_and_a_worker() {
    use crate::broker::{Node, write_config};
    let redis = crate::common::redis::RedisServer::start();
    let cfg = write_config(&redis, "dash", "");
    let mut worker = Node::start("worker", &cfg, "mobilenet_v2,face");
    let mut api = Node::start("api", &cfg, "mobilenet_v2,face");
    worker.wait_ready();
    api.wait_ready();
    let prom = Prometheus::start(&[api.addr, worker.addr]);
    let start = Instant::now();
    while prom.query("gpubackend_broker_up").len() < 2 {
        assert!(start.elapsed() < Duration::from_secs(60), "no scrape of both roles");
        std::thread::sleep(Duration::from_millis(200));
    }
    let load_start = unix_now();
    drive_load(api.addr, Duration::from_secs(8));
    std::thread::sleep(Duration::from_secs(3));
    let end = unix_now();
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("deploy/grafana/dashboards/gpubackend.json")).unwrap(),
    )
    .unwrap();
    let queries: Vec<_> = panel_queries(&dashboard).into_iter().filter(|(t, _)| t.starts_with(BROKER_PANELS)).collect();
    assert!(queries.len() >= 10, "{queries:?}");
    for (title, expr) in queries {
        assert_series(&prom, &title, &substitute(&expr, &[]), load_start, end);
    }
}

fn chromium(args: &[&str], profile: &Path) -> std::process::Output {
    Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("chromium (Debian package `chromium`; `make setup` installs it)")
}

#[test]
fn placement_page_renders_in_headless_chromium() {
    let server = TestServer::start(config());
    let view = Conn::new(server.addr).get("/admin/placement").unwrap().json();
    assert_eq!(view["devices"][0]["device"], "cpu");
    assert_eq!(view["devices"][0]["label"], "cpu");
    assert_eq!(
        view["devices"][0]["models"],
        serde_json::json!(["adult", "centernet", "face", "mobilenet_v2", "plates", "realesrgan", "text"])
    );
    assert_eq!(
        view["devices"][0]["workers"].as_array().unwrap().len(),
        14,
        "4 face stages + mobilenet_v2 + 3 text stages + 2 plates stages + centernet + 2 realesrgan stages + adult"
    );
    assert_eq!(view["devices"][0]["workers"][0]["state"], "idle");
    let mobilenet = view["models"].as_array().unwrap().iter().find(|m| m["name"] == "mobilenet_v2").unwrap();
    assert_eq!(mobilenet["queue_capacity"], 512);
    assert_eq!(mobilenet["queue_target"], 16);
    assert_eq!(mobilenet["live_workers"], 1);
    let stages: Vec<&str> = view["models"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["model"] == "face")
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["face_pnet", "face_rnet", "face_onet", "face_embed"]);
    assert_eq!(view["ready"], true);
    let node = view["node"].as_str().unwrap().to_string();

    let url = format!("http://{}/admin", server.addr);
    let profile = tempdir("chromium-profile");
    let out = chromium(&["--dump-dom", &url], &profile);
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(dom.contains(&format!("<span id=\"node\">{node}</span>")), "{dom}");
    assert!(
        dom.contains(
            "cpu: [\"adult\", \"centernet\", \"face\", \"mobilenet_v2\", \"plates\", \"realesrgan\", \"text\"]  (cpu on "
        ),
        "{dom}"
    );
    assert!(dom.contains("(CPU, Cpu, driver burn flex))"), "the adapter: {dom}");
    assert!(dom.contains("<td class=\"idle\">idle</td>"), "{dom}");
    assert!(
        dom.contains("<td>mobilenet_v2</td><td>object</td><td>1 / 1</td><td>0</td><td>512</td><td>16</td>"),
        "{dom}"
    );

    // The screenshot stays in the test output (target dir) for a person to look at.
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("placement.png");
    let _ = std::fs::remove_file(&shot);
    let out = chromium(&[&format!("--screenshot={}", shot.display()), "--window-size=1100,700", &url], &profile);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let img = image::open(&shot).expect("a PNG screenshot").to_rgb8();
    assert_eq!(img.dimensions(), (1100, 700));
    // Rendered content, not a blank page: plenty of dark (text) pixels.
    let dark = img.pixels().filter(|p| p.0.iter().all(|&c| c < 100)).count();
    assert!(dark > 2000, "screenshot looks blank ({dark} dark pixels)");
    println!("placement page screenshot: {}", shot.display());
}

/// Runs tools/ops/playground.mjs: the page in headless Chromium, an image chosen in its file input,
/// Send pressed; what the page then shows.
fn playground(server: &TestServer, image: &Path, shot: &Path, endpoint: &str, extra: &[&str]) -> Value {
    let url = format!("http://{}/playground", server.addr);
    let out = Command::new("node")
        .arg(repo().join("tools/ops/playground.mjs"))
        .args([url.as_str(), &image.to_string_lossy(), &shot.to_string_lossy(), endpoint])
        .args(extra)
        .output()
        .expect("node (scripts/setup.sh installs it)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// Pixels of the screenshot within 30 of `rgb` on every channel.
fn colored(shot: &Path, rgb: [u8; 3]) -> usize {
    let img = image::open(shot).expect("a PNG screenshot").to_rgb8();
    img.pixels().filter(|p| p.0.iter().zip(rgb).all(|(a, b)| a.abs_diff(b) <= 30)).count()
}

#[test]
fn playground_page_sends_an_upload_and_draws_the_answer_in_headless_chromium() {
    let mut c = config();
    // Small super-resolution tiles: the CPU answers in seconds.
    let sr = c.models.get_mut("realesrgan").expect("the embedded defaults place realesrgan");
    sr.settings.insert("superres".into(), toml::from_str("tile = 48\npad = 8").unwrap());
    let server = TestServer::start(c);
    let page = Conn::new(server.addr).get("/").unwrap();
    assert_eq!(page.status, 200);
    assert!(page.text().contains("gpubackend playground"));
    let admin = Conn::new(server.addr).get("/admin").unwrap().text();
    assert!(admin.contains("<a href=\"/playground\">playground</a>"), "{admin}");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));

    // Objects with boxes: the COCO detector on darknet's dog photo, drawn over the image.
    let shot = dir.join("playground-objects.png");
    let shown = playground(&server, &repo().join("tests/data/dog.jpg"), &shot, "objects/detect", &["multiobject"]);
    let result = &shown["results"][0];
    assert_eq!(shown["answer"]["status"], 200, "{shown}");
    let labels = shown["answer"]["body"]["multiobject_labels"][0]["labels"].as_array().unwrap().len();
    assert!(labels >= 2, "{shown}");
    assert_eq!(result["shapes"], labels, "one box per label: {shown}");
    assert_eq!(result["canvas"], serde_json::json!([768, 576]), "drawn at the photo's size: {shown}");
    let lines: Vec<&str> = result["lines"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    assert!(lines.iter().any(|l| l.starts_with("multiobject: Dog / Собака")), "{lines:?}");
    // The boxes are on the screenshot in multiobject's colour.
    assert!(colored(&shot, [0x1a, 0x7f, 0x37]) > 500, "no boxes drawn: {}", shot.display());
    println!("playground screenshots: {}", shot.display());

    // Super-resolution: the ×2 image beside the original.
    let small = dir.join("playground-eye.png");
    let img = image::open(repo().join("tests/data/chelsea.png")).unwrap();
    img.crop_imm(150, 80, 60, 40).save(&small).unwrap();
    let shot = dir.join("playground-improve.png");
    let shown = playground(&server, &small, &shot, "photo/improve", &["--set=rfactor=2", "--set=ftype=art"]);
    let result = &shown["results"][0];
    assert_eq!(shown["answer"]["body"]["resolution"][0]["status"], 0, "{shown}");
    assert_eq!(result["resolved"], serde_json::json!([120, 80]), "{shown}");
    assert_eq!(result["canvas"], serde_json::json!([60, 40]), "{shown}");

    // adult/detect: the photo's `safe` as a line under it.
    let shot = dir.join("playground-adult.png");
    let shown = playground(&server, &repo().join("tests/data/dog.jpg"), &shot, "adult/detect", &[]);
    assert_eq!(shown["answer"]["body"]["objects"][0]["status"], 0, "{shown}");
    let lines = shown["results"][0]["lines"].as_array().unwrap();
    assert!(lines.iter().any(|l| l.as_str().unwrap().starts_with("safe 0.99")), "{shown}");
}
