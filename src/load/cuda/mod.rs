//! CUDA pieces behind one API in every build: the real ones with feature `cuda`, a stub with the
//! same names without it, so that the loader has no `#[cfg]` branches of its own and every build
//! compiles all of it.
//!
//! The real module: device memory queries, device errors classified by driver code, the pinned
//! staging ring and host cache ([`PinnedPool`]), and the upload of any checkpoint through them.

#[cfg(feature = "cuda")]
mod real;
#[cfg(feature = "cuda")]
pub use real::*;

#[cfg(not(feature = "cuda"))]
mod stub;
#[cfg(not(feature = "cuda"))]
pub use stub::*;

use super::error::{candle_message, DeviceError, LoadError};

/// The link between two GPUs, as the driver reports it ([`p2p_link`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum P2pLink {
    /// One GPU (two workers of it).
    SameDevice,
    /// Peer access with native atomics: NVLink.
    Nvlink,
    /// Peer access without: PCIe.
    Pcie,
    /// No peer access.
    None,
}

/// A candle error as a device error, its meaning for the worker read from the driver's code
/// ([`fault_of`]; here, not in `error.rs`, so that the errors need nothing of CUDA).
impl From<&candle_core::Error> for DeviceError {
    fn from(e: &candle_core::Error) -> Self {
        Self {
            message: candle_message(e),
            fault: fault_of(e),
        }
    }
}

impl From<candle_core::Error> for LoadError {
    fn from(e: candle_core::Error) -> Self {
        LoadError::Device(DeviceError::from(&e))
    }
}
