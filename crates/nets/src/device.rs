//! Device names from config (`cpu`, `wgpu`, `wgpu:N`, `cuda:N`) → burn `Device`, opened only once
//! `probe` has found the adapter (or said why there is none).

use std::fmt;

use burn::prelude::{Device, DeviceKind};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSpec {
    /// burn `flex`: pure-Rust CPU backend.
    Cpu,
    /// burn `wgpu`; `None` = the default adapter, `Some(n)` = the n-th discrete GPU.
    Wgpu(Option<usize>),
    /// burn `cuda` (build feature `cuda`).
    Cuda(usize),
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum DeviceError {
    #[error("unknown device `{0}`: expected cpu, wgpu, wgpu:N or cuda:N")]
    Unknown(String),
    #[error("device `{0}` needs a build with the `cuda` feature (cargo build --features cuda)")]
    CudaNotBuilt(String),
    /// The probe found no usable adapter; `reason` says what is missing.
    #[error("device {device} cannot be opened: {reason}")]
    Unavailable { device: String, reason: String },
}

impl DeviceSpec {
    pub fn parse(s: &str) -> Result<Self, DeviceError> {
        let (kind, index) = match s.split_once(':') {
            Some((k, i)) => (k, Some(i.parse::<usize>().map_err(|_| DeviceError::Unknown(s.into()))?)),
            None => (s, None),
        };
        match (kind, index) {
            ("cpu", None) => Ok(Self::Cpu),
            ("wgpu", i) => Ok(Self::Wgpu(i)),
            ("cuda", i) if cfg!(feature = "cuda") => Ok(Self::Cuda(i.unwrap_or(0))),
            ("cuda", _) => Err(DeviceError::CudaNotBuilt(s.into())),
            _ => Err(DeviceError::Unknown(s.into())),
        }
    }

    /// The adapter this device runs on, or why it cannot be opened (probed once per process).
    pub fn probe(&self) -> Result<super::probe::Adapter, DeviceError> {
        if let Self::Cuda(i) = self
            && !cfg!(feature = "cuda")
        {
            return Err(DeviceError::CudaNotBuilt(format!("cuda:{i}")));
        }
        super::probe::probe(self).map_err(|reason| DeviceError::Unavailable { device: self.to_string(), reason })
    }

    /// The burn device, after the probe found its adapter: a device that cannot be created fails
    /// here with the probe's reason instead of inside burn's device thread.
    pub fn open(&self) -> Result<Device, DeviceError> {
        self.probe()?;
        self.device()
    }

    /// The burn device, unprobed (burn creates the runtime lazily, on first use).
    pub fn device(&self) -> Result<Device, DeviceError> {
        Ok(match self {
            Self::Cpu => Device::flex(),
            Self::Wgpu(None) => Device::wgpu(DeviceKind::DefaultDevice),
            Self::Wgpu(Some(i)) => Device::wgpu(DeviceKind::DiscreteGpu(*i)),
            #[cfg(feature = "cuda")]
            Self::Cuda(i) => Device::cuda(*i),
            #[cfg(not(feature = "cuda"))]
            Self::Cuda(i) => return Err(DeviceError::CudaNotBuilt(format!("cuda:{i}"))),
        })
    }
}

impl DeviceSpec {
    /// The lecture's name of the device on a node's page: `gpu #0`, `gpu (default adapter)`, `cpu`.
    pub fn label(&self) -> String {
        match self {
            Self::Cpu => "cpu".into(),
            Self::Wgpu(None) => "gpu (default adapter)".into(),
            Self::Wgpu(Some(i)) | Self::Cuda(i) => format!("gpu #{i}"),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Wgpu(None) => write!(f, "wgpu"),
            Self::Wgpu(Some(i)) => write!(f, "wgpu:{i}"),
            Self::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!(DeviceSpec::parse("cpu").unwrap(), DeviceSpec::Cpu);
        assert_eq!(DeviceSpec::parse("wgpu").unwrap(), DeviceSpec::Wgpu(None));
        assert_eq!(DeviceSpec::parse("wgpu:1").unwrap(), DeviceSpec::Wgpu(Some(1)));
        assert!(DeviceSpec::parse("cpu:0").is_err());
        assert!(DeviceSpec::parse("tpu").is_err());
        assert!(DeviceSpec::parse("wgpu:x").is_err());
        assert_eq!(DeviceSpec::parse("cuda:0").is_ok(), cfg!(feature = "cuda"));
        assert_eq!(DeviceSpec::parse("wgpu:2").unwrap().to_string(), "wgpu:2");
    }
}
