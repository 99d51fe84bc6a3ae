//! The server's layers as the source has them: the modules of `src/` import one another without a
//! circle, and the networks' crate (`crates/nets`, `gpubackend::models`) depends on nothing of the
//! server's (a backward `use crate::pipelines…` there does not compile: the crate has no such
//! module; its manifest is checked here so that no one adds the server as a dependency).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The top-level module a file of `src/` belongs to (`src/http/objects.rs` → `http`).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next().unwrap().as_os_str().to_string_lossy().to_string();
    first.trim_end_matches(".rs").to_string()
}

/// The `crate::<module>` paths a file names (code only: `//` comments are skipped).
fn imports(text: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let tail = &rest[i + "crate::".len()..];
            let name: String = tail.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if modules.contains(&name) {
                out.insert(name);
            }
            // `crate::{a, b}`: each name inside the braces.
            if let Some(group) = tail.strip_prefix('{') {
                for part in group.split(['}', ',']).map(|p| p.trim().split("::").next().unwrap_or("")) {
                    if modules.contains(part) {
                        out.insert(part.to_string());
                    }
                }
            }
            rest = tail;
        }
    }
    out
}

/// The top-level module graph of `src/`: module → the modules it imports.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new("src");
    let files = sources(src);
    let modules: BTreeSet<String> =
        files.iter().map(|f| module_of(src, f)).filter(|m| m != "lib" && m != "main").collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = modules.iter().map(|m| (m.clone(), BTreeSet::new())).collect();
    for f in &files {
        let m = module_of(src, f);
        if m == "lib" || m == "main" {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap();
        let deps = imports(&text, &modules);
        graph.get_mut(&m).unwrap().extend(deps.into_iter().filter(|d| *d != m));
    }
    graph
}

/// A circle in `graph`, if there is one (depth-first search; the path from the circle's start).
fn find_circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == node) {
            let mut circle = path[i..].to_vec();
            circle.push(node.to_string());
            return Some(circle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_finder_sees_a_circle_and_its_absence() {
    let g = |edges: &[(&str, &str)]| {
        let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in edges {
            g.entry(a.to_string()).or_default().insert(b.to_string());
            g.entry(b.to_string()).or_default();
        }
        g
    };
    assert_eq!(find_circle(&g(&[("a", "b"), ("b", "c"), ("a", "c")])), None);
    let c = find_circle(&g(&[("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")])).unwrap();
    assert_eq!(c.first(), c.last());
    assert_eq!(c.len(), 4, "{c:?}");
    let modules: BTreeSet<String> = ["config", "models", "pipelines"].map(String::from).into();
    let text =
        "use crate::{config::Limits, models::x};\n// crate::pipelines in a comment\nlet a = crate::pipelines::f();";
    assert_eq!(imports(text, &modules), modules);
}

#[test]
fn the_servers_modules_import_one_another_without_a_circle() {
    let graph = module_graph();
    // The layers the design names, bottom up (what imports what is checked for a circle below;
    // these edges pin the direction of the ones most likely to be reversed).
    for (module, must_not) in [
        ("pipelines", ["config", "http", "actors", "broker"].as_slice()),
        ("actors", ["http", "broker"].as_slice()),
        ("broker", ["http", "infer"].as_slice()),
        // The inference layer under HTTP and the broker's workers: nothing of HTTP's.
        ("infer", ["http"].as_slice()),
        ("oip", ["http", "broker"].as_slice()),
        ("store", ["http", "actors", "pipelines"].as_slice()),
        ("metrics", ["http", "actors", "config"].as_slice()),
    ] {
        let deps = &graph[module];
        for m in must_not {
            assert!(!deps.contains(*m), "src/{module} imports crate::{m} (a backward edge); it imports {deps:?}");
        }
    }
    if let Some(circle) = find_circle(&graph) {
        panic!("an import circle among the server's modules: {}\nthe graph: {graph:#?}", circle.join(" → "));
    }
}

#[test]
fn the_networks_crate_depends_on_nothing_of_the_servers() {
    let manifest = std::fs::read_to_string("crates/nets/Cargo.toml").unwrap();
    let deps = manifest.split("[dependencies]").nth(1).expect("crates/nets has dependencies");
    for server_crate in ["gpubackend =", "gpubackend = {", "path = \"../..\"", "path = \"../../\""] {
        assert!(!deps.contains(server_crate), "crates/nets depends on the server: {server_crate}");
    }
    // And its sources name no server module (they cannot compile if they do; this says why).
    for f in sources(Path::new("crates/nets/src")) {
        let text = std::fs::read_to_string(&f).unwrap();
        for server_module in ["crate::pipelines", "crate::config", "crate::http", "crate::actors", "crate::broker"] {
            assert!(!text.contains(server_module), "{} names {server_module}", f.display());
        }
    }
}
