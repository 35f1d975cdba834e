//! Where a worker runs and in what precision: [`DeviceSpec`] (the host CPU or one CUDA device)
//! and [`DType`], each written and parsed as users type them (`cpu`, `cuda:0`, `bf16`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::backend::{EngineError, ErrorKind};

/// Where a worker lives: the host CPU or one CUDA device.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            EngineError::new(
                ErrorKind::InvalidRequest,
                format!("unknown device `{s}`: expected `cpu`, `cuda` or `cuda:N`"),
            )
        };
        match s.trim() {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
            other => {
                let index = other.strip_prefix("cuda:").ok_or_else(bad)?;
                index.parse().map(DeviceSpec::Cuda).map_err(|_| bad())
            }
        }
    }
}

impl From<DeviceSpec> for String {
    fn from(d: DeviceSpec) -> String {
        d.to_string()
    }
}

impl TryFrom<String> for DeviceSpec {
    type Error = EngineError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// The floating-point type an engine's weights are held in on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum DType {
    F32,
    F16,
    BF16,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        })
    }
}

impl FromStr for DType {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "float32" | "float" => Ok(DType::F32),
            "f16" | "float16" | "half" => Ok(DType::F16),
            "bf16" | "bfloat16" => Ok(DType::BF16),
            _ => Err(EngineError::new(
                ErrorKind::InvalidRequest,
                format!("unknown dtype `{s}`: expected f32, f16 or bf16"),
            )),
        }
    }
}

impl From<DType> for String {
    fn from(d: DType) -> String {
        d.to_string()
    }
}

impl TryFrom<String> for DType {
    type Error = EngineError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}
