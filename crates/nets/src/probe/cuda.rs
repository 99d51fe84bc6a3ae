//! The `cuda` device: the driver library (libcuda, dlopen-ed the way cudarc loads it), its version
//! against the CUDA version this build's bindings target, and the devices it sees. Compiled in every
//! build, so a build without the `cuda` feature still reports what the machine has.

use std::ffi::{CStr, c_char, c_int, c_uint};
use std::fmt;

use serde::Serialize;

use super::Adapter;

/// CUDA version the `cuda` build's bindings were generated for (`CUDARC_CUDA_VERSION`, e.g. 13000),
/// when it was set at build time (the Makefile, CI and Dockerfile.gpu set it).
pub const BUILD_TARGET: Option<u32> = match option_env!("CUDARC_CUDA_VERSION") {
    Some(v) => Some(parse_u32(v)),
    None => None,
};

const fn parse_u32(s: &str) -> u32 {
    let b = s.as_bytes();
    let mut i = 0;
    let mut n = 0u32;
    while i < b.len() {
        assert!(b[i].is_ascii_digit(), "CUDARC_CUDA_VERSION must be a number such as 13000");
        n = n * 10 + (b[i] - b'0') as u32;
        i += 1;
    }
    n
}

/// 13000 → "13.0".
pub fn version_string(v: u32) -> String {
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CudaDevice {
    pub name: String,
    /// Compute capability (9.0 for Hopper).
    pub compute_capability: (i32, i32),
    pub memory_bytes: u64,
}

/// What the CUDA driver says about this machine.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CudaFacts {
    /// The driver library that loaded, or why none did.
    pub library: Result<String, String>,
    /// `cuInit(0)`'s error (name and description), if it failed.
    pub init_error: Option<String>,
    /// `cuDriverGetVersion`: the newest CUDA the driver supports (13000 = 13.0).
    pub driver_version: Option<u32>,
    pub devices: Vec<CudaDevice>,
    /// The kernel module's version line, when /proc/driver/nvidia/version exists.
    pub kernel_driver: Option<String>,
    /// The NVRTC library found, if any. Informational: this build compiles kernels to PTX with
    /// LLVM and needs no NVRTC; a build with cubecl's C++ back-end would.
    pub nvrtc: Option<String>,
}

impl Default for CudaFacts {
    fn default() -> Self {
        Self {
            library: Err(String::new()),
            init_error: None,
            driver_version: None,
            devices: Vec::new(),
            kernel_driver: None,
            nvrtc: None,
        }
    }
}

const LIBRARIES: [&str; 2] = ["libcuda.so.1", "libcuda.so"];
const NVRTC: [&str; 4] = ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so", "libnvrtc.so.11.2"];

type CuInit = unsafe extern "C" fn(c_uint) -> c_int;
type CuGetInt = unsafe extern "C" fn(*mut c_int) -> c_int;
type CuDeviceGet = unsafe extern "C" fn(*mut c_int, c_int) -> c_int;
type CuDeviceGetName = unsafe extern "C" fn(*mut c_char, c_int, c_int) -> c_int;
type CuDeviceGetAttribute = unsafe extern "C" fn(*mut c_int, c_int, c_int) -> c_int;
type CuDeviceTotalMem = unsafe extern "C" fn(*mut usize, c_int) -> c_int;
type CuGetErrorString = unsafe extern "C" fn(c_int, *mut *const c_char) -> c_int;

const CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: c_int = 75;
const CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: c_int = 76;

impl CudaFacts {
    pub fn gather() -> Self {
        let kernel_driver = std::fs::read_to_string("/proc/driver/nvidia/version")
            .ok()
            .and_then(|s| s.lines().next().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")));
        let nvrtc = NVRTC.iter().find(|n| super::vulkan::try_dlopen(n).is_ok()).map(|n| n.to_string());
        let mut errors = Vec::new();
        for name in LIBRARIES {
            // SAFETY: libcuda's initialisers; cudarc loads the same library in `cuda` builds.
            match unsafe { libloading::Library::new(name) } {
                Ok(lib) => {
                    let mut facts = Self { library: Ok(name.into()), kernel_driver, nvrtc, ..Self::default() };
                    // SAFETY: the driver API's C signatures (cuda.h); every out-pointer is valid.
                    unsafe { facts.query(&lib) };
                    std::mem::forget(lib); // the runtime keeps using the driver
                    return facts;
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        Self { library: Err(errors.join("; ")), kernel_driver, nvrtc, ..Self::default() }
    }

    unsafe fn query(&mut self, lib: &libloading::Library) {
        macro_rules! sym {
            ($t:ty, $name:literal) => {
                match unsafe { lib.get::<$t>($name) } {
                    Ok(f) => *f,
                    Err(e) => {
                        self.init_error =
                            Some(format!("libcuda lacks {}: {e}", String::from_utf8_lossy(&$name[..$name.len() - 1])));
                        return;
                    }
                }
            };
        }
        let describe = |code: c_int| -> String {
            let mut s: *const c_char = std::ptr::null();
            match unsafe { lib.get::<CuGetErrorString>(b"cuGetErrorString\0") } {
                Ok(f) if unsafe { (*f)(code, &mut s) } == 0 && !s.is_null() => {
                    format!("error {code}: {}", unsafe { CStr::from_ptr(s) }.to_string_lossy())
                }
                _ => format!("error {code}"),
            }
        };
        let init = sym!(CuInit, b"cuInit\0");
        let version = sym!(CuGetInt, b"cuDriverGetVersion\0");
        let mut v: c_int = 0;
        if unsafe { version(&mut v) } == 0 {
            self.driver_version = Some(v as u32);
        }
        let rc = unsafe { init(0) };
        if rc != 0 {
            self.init_error = Some(format!("cuInit failed: {}", describe(rc)));
            return;
        }
        let count = sym!(CuGetInt, b"cuDeviceGetCount\0");
        let get = sym!(CuDeviceGet, b"cuDeviceGet\0");
        let name = sym!(CuDeviceGetName, b"cuDeviceGetName\0");
        let attr = sym!(CuDeviceGetAttribute, b"cuDeviceGetAttribute\0");
        let mem = sym!(CuDeviceTotalMem, b"cuDeviceTotalMem_v2\0");
        let mut n: c_int = 0;
        if unsafe { count(&mut n) } != 0 {
            return;
        }
        for ordinal in 0..n {
            let mut dev: c_int = 0;
            if unsafe { get(&mut dev, ordinal) } != 0 {
                continue;
            }
            let mut buf = [0 as c_char; 256];
            unsafe { name(buf.as_mut_ptr(), buf.len() as c_int, dev) };
            let (mut major, mut minor, mut bytes) = (0, 0, 0usize);
            unsafe {
                attr(&mut major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev);
                attr(&mut minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev);
                mem(&mut bytes, dev);
            }
            self.devices.push(CudaDevice {
                name: unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned(),
                compute_capability: (major, minor),
                memory_bytes: bytes as u64,
            });
        }
    }
}

/// The adapter `cuda:index` runs on, or why it cannot: no driver library, a failed `cuInit`, a
/// driver older than the CUDA version this build targets, or no such device.
pub fn diagnose(f: &CudaFacts, index: usize, build_target: Option<u32>) -> Result<Adapter, String> {
    let lib = f.library.as_ref().map_err(|e| {
        format!(
            "libcuda not found ({e}): the NVIDIA driver is not installed or not mounted into the container \
             (run it with --gpus and NVIDIA_DRIVER_CAPABILITIES including compute)"
        )
    })?;
    if let (Some(driver), Some(target)) = (f.driver_version, build_target)
        && driver < target
    {
        return Err(format!(
            "the NVIDIA driver supports CUDA {} but this build targets CUDA {}: update the driver, or rebuild with CUDARC_CUDA_VERSION={driver}",
            version_string(driver),
            version_string(target)
        ));
    }
    if let Some(e) = &f.init_error {
        let hint = if e.contains("error 100") || e.contains("no CUDA-capable device") {
            ": no GPU is visible to this process (NVIDIA_VISIBLE_DEVICES, --gpus, /dev/nvidia*)"
        } else if e.contains("error 803") || e.contains("error 804") || e.contains("error 35") {
            ": the user-space driver (libcuda) does not match the kernel module"
        } else {
            ""
        };
        return Err(format!("{lib}: {e}{hint}"));
    }
    let d = f
        .devices
        .get(index)
        .ok_or_else(|| format!("cuda:{index} does not exist: the driver sees {} CUDA device(s)", f.devices.len()))?;
    Ok(Adapter {
        name: d.name.clone(),
        backend: "CUDA".into(),
        device_type: format!("sm_{}{}", d.compute_capability.0, d.compute_capability.1),
        driver: match f.driver_version {
            Some(v) => format!(
                "CUDA {} ({lib}{})",
                version_string(v),
                f.kernel_driver.as_deref().map(|k| format!(", {k}")).unwrap_or_default()
            ),
            None => lib.clone(),
        },
    })
}

impl fmt::Display for CudaFacts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.library {
            Ok(l) => writeln!(f, "  driver library: {l}")?,
            Err(e) => writeln!(f, "  driver library: NOT FOUND ({e})")?,
        }
        if let Some(v) = self.driver_version {
            writeln!(f, "  driver supports CUDA {}", version_string(v))?;
        }
        if let Some(k) = &self.kernel_driver {
            writeln!(f, "  kernel module: {k}")?;
        }
        if let Some(e) = &self.init_error {
            writeln!(f, "  {e}")?;
        }
        match &self.nvrtc {
            Some(n) => writeln!(f, "  NVRTC: {n} (not needed: kernels compile to PTX with LLVM)")?,
            None => writeln!(f, "  NVRTC: none (not needed: kernels compile to PTX with LLVM)")?,
        }
        for (i, d) in self.devices.iter().enumerate() {
            writeln!(
                f,
                "  cuda:{i}: {} (sm_{}{}, {:.1} GiB)",
                d.name,
                d.compute_capability.0,
                d.compute_capability.1,
                d.memory_bytes as f64 / (1u64 << 30) as f64
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h200() -> CudaFacts {
        CudaFacts {
            library: Ok("libcuda.so.1".into()),
            init_error: None,
            driver_version: Some(13000),
            devices: vec![CudaDevice {
                name: "NVIDIA H200".into(),
                compute_capability: (9, 0),
                memory_bytes: 150 << 30,
            }],
            kernel_driver: Some("NVRM version: NVIDIA UNIX x86_64 Kernel Module 580.159.04".into()),
            nvrtc: None,
        }
    }

    #[test]
    fn a_working_driver_gives_the_device() {
        let a = diagnose(&h200(), 0, Some(13000)).unwrap();
        assert_eq!((a.name.as_str(), a.backend.as_str(), a.device_type.as_str()), ("NVIDIA H200", "CUDA", "sm_90"));
        assert!(a.driver.contains("CUDA 13.0") && a.driver.contains("580.159.04"), "{}", a.driver);
        let e = diagnose(&h200(), 1, Some(13000)).unwrap_err();
        assert!(e.contains("cuda:1 does not exist") && e.contains("sees 1"), "{e}");
    }

    #[test]
    fn missing_library_old_driver_and_failed_init_are_named() {
        let none =
            CudaFacts { library: Err("libcuda.so.1: cannot open shared object file".into()), ..Default::default() };
        let e = diagnose(&none, 0, Some(13000)).unwrap_err();
        assert!(e.starts_with("libcuda not found") && e.contains("--gpus"), "{e}");

        let old = CudaFacts { driver_version: Some(12020), ..h200() };
        let e = diagnose(&old, 0, Some(13000)).unwrap_err();
        assert!(e.contains("supports CUDA 12.2 but this build targets CUDA 13.0"), "{e}");
        // Without a known build target the version is not judged.
        assert!(diagnose(&old, 0, None).is_ok());

        let no_gpu = CudaFacts {
            init_error: Some("cuInit failed: error 100: no CUDA-capable device is detected".into()),
            devices: vec![],
            ..h200()
        };
        let e = diagnose(&no_gpu, 0, Some(13000)).unwrap_err();
        assert!(e.contains("no GPU is visible"), "{e}");
    }

    #[test]
    fn versions_print_as_major_minor() {
        assert_eq!(version_string(13000), "13.0");
        assert_eq!(version_string(12080), "12.8");
        assert_eq!(parse_u32("13000"), 13000);
    }
}
