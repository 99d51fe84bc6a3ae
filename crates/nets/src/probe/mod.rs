//! Can this process open a GPU device, and if not, what is missing? Each GPU device is probed once
//! per process, before burn creates it: the adapter it will run on (name, graphics API, driver), or
//! a reason a user can act on (no Vulkan loader, no NVIDIA ICD, the ICD failed to initialise and
//! why, libcuda not found, a driver too old for this build, …) instead of the bare error a failed
//! device thread leaves behind.
//!
//! `vulkan` and `cuda` gather facts from the system (libraries dlopen-ed, manifest files, device
//! nodes); their `diagnose` functions are pure and unit-tested on made-up facts.

pub mod cuda;
pub mod vulkan;

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

use serde::Serialize;

use super::DeviceSpec;

/// The adapter a device runs on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Adapter {
    pub name: String,
    /// `Vulkan`, `Gl`, `CUDA`, or `CPU` for burn flex.
    pub backend: String,
    /// `DiscreteGpu`, `IntegratedGpu`, `Cpu` (a software rasteriser such as lavapipe), …
    pub device_type: String,
    /// Driver name and version as the API reports them.
    pub driver: String,
}

impl fmt::Display for Adapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}, {}, driver {})", self.name, self.backend, self.device_type, self.driver)
    }
}

/// Probe results by device name: probing creates (and drops) a Vulkan instance or initialises the
/// CUDA driver, so it runs once per device and never concurrently with another probe.
static PROBED: Mutex<Option<HashMap<String, Result<Adapter, String>>>> = Mutex::new(None);

/// The adapter `spec` runs on, or why it cannot be opened. Cached per device for the process.
pub fn probe(spec: &DeviceSpec) -> Result<Adapter, String> {
    let mut cache = PROBED.lock().unwrap_or_else(|e| e.into_inner());
    let cache = cache.get_or_insert_with(HashMap::new);
    cache.entry(spec.to_string()).or_insert_with(|| probe_uncached(spec)).clone()
}

fn probe_uncached(spec: &DeviceSpec) -> Result<Adapter, String> {
    match spec {
        DeviceSpec::Cpu => Ok(Adapter {
            name: cpu_model_name(),
            backend: "CPU".into(),
            device_type: "Cpu".into(),
            driver: "burn flex".into(),
        }),
        DeviceSpec::Wgpu(index) => {
            let adapters = vulkan::enumerate_adapters();
            match vulkan::select(&adapters, *index) {
                Ok(adapter) => Ok(adapter),
                Err(why) => Err(vulkan::diagnose(&vulkan::VulkanFacts::gather(), &adapters, &why)),
            }
        }
        DeviceSpec::Cuda(index) => cuda::diagnose(&cuda::CudaFacts::gather(), *index, cuda::BUILD_TARGET),
    }
}

/// `model name` of the first CPU in /proc/cpuinfo.
pub fn cpu_model_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().into())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.into())
}

/// What `gpubackend devices` prints: every fact both probes gathered, for a person diagnosing a
/// machine (the GPU check records it too).
#[derive(Debug, Serialize)]
pub struct Report {
    pub vulkan: vulkan::VulkanFacts,
    pub wgpu_adapters: Vec<Adapter>,
    pub cuda: cuda::CudaFacts,
    /// The `cuda` feature is compiled in.
    pub cuda_built: bool,
    /// CUDA version this build's bindings target (`CUDARC_CUDA_VERSION` at build time).
    pub cuda_build_target: Option<u32>,
}

impl Report {
    pub fn gather() -> Self {
        Self {
            vulkan: vulkan::VulkanFacts::gather(),
            wgpu_adapters: vulkan::enumerate_adapters(),
            cuda: cuda::CudaFacts::gather(),
            cuda_built: cfg!(feature = "cuda"),
            cuda_build_target: cuda::BUILD_TARGET,
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Vulkan")?;
        write!(f, "{}", self.vulkan)?;
        if self.wgpu_adapters.is_empty() {
            writeln!(f, "  wgpu adapters: none")?;
        }
        for a in &self.wgpu_adapters {
            writeln!(f, "  wgpu adapter: {a}")?;
        }
        writeln!(
            f,
            "CUDA (this build: {})",
            match (self.cuda_built, self.cuda_build_target) {
                (true, Some(v)) => format!("cuda feature on, bindings for CUDA {}", cuda::version_string(v)),
                (true, None) => "cuda feature on".into(),
                (false, _) => "no cuda feature".into(),
            }
        )?;
        write!(f, "{}", self.cuda)
    }
}
