//! The `wgpu` device: which Vulkan adapter burn's wgpu runtime (cubecl-wgpu) will take, and, when
//! there is none, why — from the Vulkan loader, the ICD manifests it reads and their libraries,
//! glvnd's EGL vendor files (NVIDIA's Vulkan ICD initialises through EGL), and the NVIDIA device
//! nodes. gpubackend runs `wgpu` devices on Vulkan: where Vulkan has no adapter, cubecl would fall
//! back to wgpu's GL backend (on a server, most likely a software rasteriser), which the probe
//! refuses with the Vulkan diagnosis instead.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::Adapter;

/// Where drivers mounted into containers keep their manifests (GKE: /usr/local/nvidia; the GPU
/// operator: /run/nvidia/driver), which the loaders do not search by default.
const DRIVER_ROOTS: [&str; 3] = ["/usr/local/nvidia", "/run/nvidia/driver/usr", "/run/nvidia/driver"];

/// Every Vulkan adapter wgpu finds. Creates and drops one instance: call it from one thread at a
/// time (the `probe` cache does).
pub fn enumerate_adapters() -> Vec<Adapter> {
    let mut out = Vec::new();
    let api = wgpu::Backend::Vulkan;
    if wgpu::Instance::enabled_backend_features().contains(api.into()) {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends: api.into(),
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        for adapter in block_on(instance.enumerate_adapters(api.into())) {
            let info = adapter.get_info();
            let driver = [info.driver.as_str(), info.driver_info.as_str()]
                .iter()
                .filter(|s| !s.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join(" ");
            out.push(Adapter {
                name: info.name,
                backend: format!("{:?}", info.backend),
                device_type: format!("{:?}", info.device_type),
                driver: if driver.is_empty() { "unknown".into() } else { driver },
            });
        }
    }
    out
}

/// Polls a future that native wgpu resolves at once.
fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::yield_now();
    }
}

/// The Vulkan adapter cubecl-wgpu takes for `wgpu` (`index` None: the best one, a hardware
/// adapter before a software one) or `wgpu:N` (the N-th discrete GPU), as its `try_create_setup`
/// does; the error says what was found instead.
pub fn select(adapters: &[Adapter], index: Option<usize>) -> Result<Adapter, String> {
    let list: Vec<&Adapter> = adapters.iter().filter(|a| a.backend == "Vulkan").collect();
    if list.is_empty() {
        return Err("no Vulkan adapter found".into());
    }
    let rank = |t: &str| ["DiscreteGpu", "IntegratedGpu", "VirtualGpu", "Other", "Cpu"].iter().position(|k| *k == t);
    match index {
        None => Ok(list.iter().min_by_key(|a| rank(&a.device_type)).copied().expect("non-empty list. This is a bug.").clone()),
        Some(i) => list.iter().filter(|a| a.device_type == "DiscreteGpu").nth(i).map(|a| (*a).clone()).ok_or_else(|| {
            let found = list.iter().map(|a| format!("{a}")).collect::<Vec<_>>().join(", ");
            format!(
                "wgpu:{i} is discrete GPU #{i}, but the adapters are: {found} (device = \"wgpu\" takes the best adapter, a software one too)"
            )
        }),
    }
}

/// One ICD manifest the loader reads.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Manifest {
    pub path: PathBuf,
    /// `ICD.library_path`; None when the file is not a readable ICD manifest.
    pub library: Option<String>,
    /// Why the library cannot be dlopen-ed (a missing dependency shows here), or the file read.
    pub load_error: Option<String>,
}

impl Manifest {
    fn is_nvidia(&self) -> bool {
        self.library.as_deref().is_some_and(|l| l.to_ascii_lowercase().contains("nvidia"))
            || self.path.to_string_lossy().to_ascii_lowercase().contains("nvidia")
    }
}

/// What the system offers Vulkan, as the loader and glvnd would see it.
#[derive(Debug, Clone, Serialize, Default)]
pub struct VulkanFacts {
    /// Why `libvulkan.so.1` cannot be loaded, if it cannot.
    pub loader_error: Option<String>,
    /// `VK_DRIVER_FILES` (or the older `VK_ICD_FILENAMES`) when set: the loader reads only those.
    pub driver_files_env: Option<String>,
    /// The directories searched for manifests when no override is set.
    pub search_dirs: Vec<PathBuf>,
    pub manifests: Vec<Manifest>,
    /// NVIDIA ICD manifests under a mounted driver root, where the loader does not look.
    pub unseen_nvidia_manifests: Vec<PathBuf>,
    /// Why glvnd's `libEGL.so.1` cannot be loaded, if it cannot (NVIDIA's GLX ICD dlopens it).
    pub libegl_error: Option<String>,
    /// EGL vendor files glvnd will read.
    pub egl_vendor_files: Vec<PathBuf>,
    /// NVIDIA EGL vendor files under a mounted driver root, where glvnd does not look.
    pub unseen_nvidia_egl_vendor_files: Vec<PathBuf>,
    /// NVIDIA device nodes that are missing (or not read-write).
    pub missing_nvidia_nodes: Vec<String>,
    /// The kernel module's version line (/proc/driver/nvidia/version), when an NVIDIA driver is loaded.
    pub nvidia_kernel_driver: Option<String>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    v.sort();
    v
}

/// Files named directly, or the `.json` files of directories named, in a `:`-separated list.
fn files_or_dirs(list: &str) -> Vec<PathBuf> {
    list.split(':')
        .filter(|s| !s.is_empty())
        .flat_map(|s| {
            let p = PathBuf::from(s);
            if p.is_dir() { json_files(&p) } else { vec![p] }
        })
        .collect()
}

/// dlopen `name`; the error text (dlerror) when it fails. The library stays loaded: drivers do not
/// all unload cleanly, and the runtime loads the same ones anyway.
pub(crate) fn try_dlopen(name: &str) -> Result<(), String> {
    // SAFETY: loading a system library runs its initialisers; these are the libraries the Vulkan
    // loader or libcuda users load themselves.
    match unsafe { libloading::Library::new(name) } {
        Ok(lib) => {
            std::mem::forget(lib);
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}

fn home_dir(var: &str, default_under_home: &str) -> Option<PathBuf> {
    env(var).map(PathBuf::from).or_else(|| env("HOME").map(|h| Path::new(&h).join(default_under_home)))
}

impl VulkanFacts {
    pub fn gather() -> Self {
        let mut f = Self { loader_error: try_dlopen("libvulkan.so.1").err(), ..Self::default() };
        f.driver_files_env = env("VK_DRIVER_FILES").or_else(|| env("VK_ICD_FILENAMES"));
        let mut files = match &f.driver_files_env {
            Some(list) => files_or_dirs(list),
            None => {
                // The loader's search order on Linux (XDG config, sysconf, XDG data).
                let mut dirs: Vec<PathBuf> = Vec::new();
                dirs.extend(home_dir("XDG_CONFIG_HOME", ".config"));
                dirs.extend(env("XDG_CONFIG_DIRS").unwrap_or_else(|| "/etc/xdg".into()).split(':').map(PathBuf::from));
                dirs.extend(["/usr/local/etc", "/etc"].map(PathBuf::from));
                dirs.extend(home_dir("XDG_DATA_HOME", ".local/share"));
                dirs.extend(
                    env("XDG_DATA_DIRS")
                        .unwrap_or_else(|| "/usr/local/share:/usr/share".into())
                        .split(':')
                        .map(PathBuf::from),
                );
                f.search_dirs = dirs.into_iter().map(|d| d.join("vulkan/icd.d")).collect();
                f.search_dirs.iter().flat_map(|d| json_files(d)).collect()
            }
        };
        files.extend(env("VK_ADD_DRIVER_FILES").map(|l| files_or_dirs(&l)).unwrap_or_default());
        f.manifests = files.into_iter().map(read_manifest).collect();
        let seen = |p: &Path| f.manifests.iter().any(|m| same_file(&m.path, p));
        f.unseen_nvidia_manifests = DRIVER_ROOTS
            .iter()
            .flat_map(|r| ["share/vulkan/icd.d", "etc/vulkan/icd.d"].map(|d| Path::new(r).join(d)))
            .flat_map(|d| json_files(&d))
            .filter(|p| p.to_string_lossy().contains("nvidia") && !seen(p))
            .collect();

        f.libegl_error = try_dlopen("libEGL.so.1").err();
        f.egl_vendor_files = match env("__EGL_VENDOR_LIBRARY_FILENAMES") {
            Some(list) => list.split(':').filter(|s| !s.is_empty()).map(PathBuf::from).collect(),
            None => env("__EGL_VENDOR_LIBRARY_DIRS")
                .unwrap_or_else(|| "/etc/glvnd/egl_vendor.d:/usr/share/glvnd/egl_vendor.d".into())
                .split(':')
                .flat_map(|d| json_files(Path::new(d)))
                .collect(),
        };
        f.unseen_nvidia_egl_vendor_files = DRIVER_ROOTS
            .iter()
            .flat_map(|r| json_files(&Path::new(r).join("share/glvnd/egl_vendor.d")))
            .filter(|p| p.to_string_lossy().contains("nvidia") && !f.egl_vendor_files.iter().any(|v| same_file(v, p)))
            .collect();
        f.nvidia_kernel_driver = std::fs::read_to_string("/proc/driver/nvidia/version")
            .ok()
            .and_then(|s| s.lines().next().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")));
        f.missing_nvidia_nodes = ["/dev/nvidiactl", "/dev/nvidia0"]
            .into_iter()
            .filter(|n| std::fs::OpenOptions::new().read(true).write(true).open(n).is_err())
            .map(String::from)
            .collect();
        f
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
}

fn read_manifest(path: PathBuf) -> Manifest {
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => return Manifest { path, library: None, load_error: Some(format!("cannot be read: {e}")) },
    };
    let library = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["ICD"]["library_path"].as_str().map(String::from));
    let load_error = library.as_deref().and_then(|lib| {
        // A relative path with a slash is relative to the manifest; a bare name goes to dlopen's search.
        let resolved = if lib.contains('/') && !lib.starts_with('/') {
            path.parent().unwrap_or(Path::new("/")).join(lib).to_string_lossy().into_owned()
        } else {
            lib.to_string()
        };
        try_dlopen(&resolved).err()
    });
    Manifest { path, library, load_error }
}

/// Why no usable adapter: `why` is what selection found (no adapter, or none of the wanted kind),
/// followed by every cause the facts show, each with its fix.
pub fn diagnose(f: &VulkanFacts, adapters: &[Adapter], why: &str) -> String {
    let mut causes: Vec<String> = Vec::new();
    if let Some(e) = &f.loader_error {
        causes.push(format!(
            "no Vulkan loader: libvulkan.so.1 cannot be loaded ({e}); install it (Debian/Ubuntu: libvulkan1)"
        ));
        return format!("{why}: {}", causes.join("; "));
    }
    let where_ = match &f.driver_files_env {
        Some(list) => format!("VK_DRIVER_FILES={list}"),
        None => f.search_dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "),
    };
    let unseen = |list: &[PathBuf]| list.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":");
    if f.manifests.iter().all(|m| m.library.is_none()) {
        causes.push(format!("no Vulkan driver: no ICD manifest in {where_}"));
    }
    if !f.unseen_nvidia_manifests.is_empty() {
        causes.push(format!(
            "the NVIDIA driver's ICD manifest is where the loader does not look: export VK_DRIVER_FILES={}",
            unseen(&f.unseen_nvidia_manifests)
        ));
    }
    for m in &f.manifests {
        match (&m.library, &m.load_error) {
            (None, Some(e)) => causes.push(format!("{} {e}", m.path.display())),
            (None, None) => {
                causes.push(format!("{} is not a Vulkan ICD manifest (no ICD.library_path)", m.path.display()))
            }
            (Some(lib), Some(e)) => causes.push(format!("the ICD {lib} ({}) cannot be loaded: {e}", m.path.display())),
            _ => {}
        }
    }
    let nvidia_loaded = f.manifests.iter().any(|m| m.is_nvidia() && m.library.is_some() && m.load_error.is_none());
    let nvidia_adapter = adapters.iter().any(|a| a.name.contains("NVIDIA") || a.driver.contains("NVIDIA"));
    if nvidia_loaded && !nvidia_adapter {
        let before = causes.len();
        if let Some(e) = &f.libegl_error {
            causes.push(format!(
                "glvnd's libEGL.so.1 cannot be loaded ({e}): NVIDIA's Vulkan ICD initialises through it; install libegl1 (and libglvnd0)"
            ));
        }
        if !f.egl_vendor_files.iter().any(|p| p.to_string_lossy().contains("nvidia")) {
            if f.unseen_nvidia_egl_vendor_files.is_empty() {
                causes.push(
                    "glvnd sees no NVIDIA EGL vendor file (10_nvidia.json): run the container with NVIDIA_DRIVER_CAPABILITIES including graphics".into(),
                );
            } else {
                causes.push(format!(
                    "NVIDIA's EGL vendor file is where glvnd does not look: export __EGL_VENDOR_LIBRARY_FILENAMES={}",
                    unseen(&f.unseen_nvidia_egl_vendor_files)
                ));
            }
        }
        for node in &f.missing_nvidia_nodes {
            causes.push(format!(
                "{node} is missing or not read-write: start the container with the GPU (--gpus, or --device {node})"
            ));
        }
        if causes.len() == before {
            causes.push(format!(
                "the NVIDIA ICD loaded but did not initialise (vkCreateInstance through it failed){}; its user-space libraries must match the kernel module",
                f.nvidia_kernel_driver.as_deref().map(|v| format!(", kernel module: {v}")).unwrap_or_default()
            ));
        }
    }
    if causes.is_empty() { why.to_string() } else { format!("{why}: {}", causes.join("; ")) }
}

impl fmt::Display for VulkanFacts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.loader_error {
            None => writeln!(f, "  loader: libvulkan.so.1 loads")?,
            Some(e) => writeln!(f, "  loader: libvulkan.so.1 CANNOT be loaded: {e}")?,
        }
        match &self.driver_files_env {
            Some(v) => writeln!(f, "  VK_DRIVER_FILES={v}")?,
            None => writeln!(
                f,
                "  ICD search: {}",
                self.search_dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(":")
            )?,
        }
        for m in &self.manifests {
            let lib = m.library.as_deref().unwrap_or("(no library_path)");
            match &m.load_error {
                None => writeln!(f, "  ICD {lib} ({}): loads", m.path.display())?,
                Some(e) => writeln!(f, "  ICD {lib} ({}): CANNOT be loaded: {e}", m.path.display())?,
            }
        }
        for p in &self.unseen_nvidia_manifests {
            writeln!(f, "  NVIDIA ICD manifest outside the search path: {}", p.display())?;
        }
        match &self.libegl_error {
            None => writeln!(f, "  glvnd libEGL.so.1: loads")?,
            Some(e) => writeln!(f, "  glvnd libEGL.so.1: CANNOT be loaded: {e}")?,
        }
        for p in &self.egl_vendor_files {
            writeln!(f, "  EGL vendor file: {}", p.display())?;
        }
        for p in &self.unseen_nvidia_egl_vendor_files {
            writeln!(f, "  NVIDIA EGL vendor file outside glvnd's search path: {}", p.display())?;
        }
        if let Some(v) = &self.nvidia_kernel_driver {
            writeln!(f, "  NVIDIA kernel module: {v}")?;
        }
        // Device nodes matter only where an NVIDIA driver is (or should be) in play.
        if self.nvidia_kernel_driver.is_some() || self.manifests.iter().any(Manifest::is_nvidia) {
            for n in &self.missing_nvidia_nodes {
                writeln!(f, "  {n}: missing or not read-write")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adapter(name: &str, backend: &str, kind: &str) -> Adapter {
        Adapter { name: name.into(), backend: backend.into(), device_type: kind.into(), driver: "d".into() }
    }

    #[test]
    fn selection_follows_cubecl() {
        let lavapipe = adapter("llvmpipe", "Vulkan", "Cpu");
        let gl = adapter("llvmpipe", "Gl", "Cpu");
        let h200 = adapter("NVIDIA H200", "Vulkan", "DiscreteGpu");
        // Software only: the default adapter is lavapipe; wgpu:0 (a discrete GPU) is not there.
        assert_eq!(select(&[gl.clone(), lavapipe.clone()], None).unwrap(), lavapipe);
        let err = select(std::slice::from_ref(&lavapipe), Some(0)).unwrap_err();
        assert!(err.contains("wgpu:0 is discrete GPU #0") && err.contains("llvmpipe"), "{err}");
        // A GPU on Vulkan wins over the software adapter, for both names.
        let both = [lavapipe.clone(), h200.clone()];
        assert_eq!(select(&both, None).unwrap(), h200);
        assert_eq!(select(&both, Some(0)).unwrap(), h200);
        assert!(select(&both, Some(1)).is_err());
        // GL adapters are never taken: wgpu devices run on Vulkan.
        assert!(select(&[gl], None).unwrap_err().contains("no Vulkan adapter"));
        assert!(select(&[], None).unwrap_err().contains("no Vulkan adapter"));
    }

    fn nvidia_glx() -> Manifest {
        Manifest {
            path: "/etc/vulkan/icd.d/nvidia_icd.json".into(),
            library: Some("libGLX_nvidia.so.0".into()),
            load_error: None,
        }
    }

    #[test]
    fn missing_loader_is_named_first() {
        let f = VulkanFacts {
            loader_error: Some("libvulkan.so.1: cannot open shared object file".into()),
            ..Default::default()
        };
        let r = diagnose(&f, &[], "no Vulkan adapter found");
        assert!(r.contains("no Vulkan loader") && r.contains("libvulkan1"), "{r}");
    }

    #[test]
    fn no_manifest_and_one_outside_the_search_path() {
        let f = VulkanFacts {
            search_dirs: vec!["/usr/share/vulkan/icd.d".into()],
            unseen_nvidia_manifests: vec!["/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json".into()],
            ..Default::default()
        };
        let r = diagnose(&f, &[], "no adapter");
        assert!(r.contains("no ICD manifest in /usr/share/vulkan/icd.d"), "{r}");
        assert!(r.contains("export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json"), "{r}");
    }

    #[test]
    fn an_icd_library_that_cannot_load_is_named() {
        let f = VulkanFacts {
            manifests: vec![Manifest {
                load_error: Some("libXext.so.6: cannot open shared object file".into()),
                ..nvidia_glx()
            }],
            ..Default::default()
        };
        let r = diagnose(&f, &[], "no adapter");
        assert!(r.contains("the ICD libGLX_nvidia.so.0") && r.contains("libXext.so.6"), "{r}");
    }

    #[test]
    fn nvidia_icd_without_egl_says_what_to_install_and_export() {
        // The lent H200: the GLX ICD loads, but glvnd's libEGL is absent and NVIDIA's EGL vendor
        // file sits under /usr/local/nvidia.
        let f = VulkanFacts {
            manifests: vec![nvidia_glx()],
            libegl_error: Some("libEGL.so.1: cannot open shared object file".into()),
            unseen_nvidia_egl_vendor_files: vec!["/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json".into()],
            ..Default::default()
        };
        let r = diagnose(&f, &[], "no Vulkan adapter found");
        assert!(r.starts_with("no Vulkan adapter found: "), "{r}");
        assert!(r.contains("install libegl1"), "{r}");
        assert!(
            r.contains(
                "export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json"
            ),
            "{r}"
        );
        // With everything in place but still no adapter: the ICD itself failed.
        let f = VulkanFacts {
            manifests: vec![nvidia_glx()],
            egl_vendor_files: vec!["/usr/share/glvnd/egl_vendor.d/10_nvidia.json".into()],
            nvidia_kernel_driver: Some("NVRM version: 580.159.04".into()),
            ..Default::default()
        };
        let r = diagnose(&f, &[], "no adapter");
        assert!(r.contains("did not initialise") && r.contains("580.159.04"), "{r}");
        // Missing device nodes are named.
        let f = VulkanFacts { missing_nvidia_nodes: vec!["/dev/nvidiactl".into()], ..f };
        assert!(diagnose(&f, &[], "x").contains("/dev/nvidiactl is missing"));
    }

    #[test]
    fn a_working_nvidia_icd_adds_nothing() {
        let f = VulkanFacts { manifests: vec![nvidia_glx()], ..Default::default() };
        let h200 = adapter("NVIDIA H200", "Vulkan", "DiscreteGpu");
        assert_eq!(diagnose(&f, &[h200], "wgpu:1 is discrete GPU #1"), "wgpu:1 is discrete GPU #1");
    }
}
