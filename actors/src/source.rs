//! Where an attach's weights come from: the source the controller plans (a peer worker's
//! resident copy, weights parked on the target itself, or the host path), what the device
//! reports it used, and the peer links between workers that `/workers` lists.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::backend::DeviceSpec;

/// The source the controller planned for an attach, sent with it to the target worker.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightsSource {
    /// Read by the worker as it always does: its host cache, else the page cache, else disk.
    #[default]
    Host,
    /// The same weights are parked on (or lent by) the target worker's own device.
    Parked,
    /// Copied from another worker's device, which holds the same weights resident.
    Peer(PeerSource),
}

/// Another worker holding the wanted weights resident, as the target's device reaches it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerSource {
    /// The worker's index (for reports).
    pub worker: usize,
    /// The peer's endpoint, as its prewarm reported it ([`crate::PrewarmReport::peer`]).
    pub endpoint: u64,
    /// The peer's device.
    pub device: DeviceSpec,
}

/// What a device says it used for an attach.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceReport {
    /// `peer:<worker>`, `parked`, or `host` (host cache, page cache or disk).
    pub source: String,
    /// Why a planned faster source was not used (the attach then took the next one).
    #[serde(default)]
    pub fallback: Option<String>,
}

impl Default for SourceReport {
    fn default() -> Self {
        Self::host()
    }
}

impl SourceReport {
    pub fn host() -> Self {
        Self {
            source: "host".into(),
            fallback: None,
        }
    }

    pub fn parked() -> Self {
        Self {
            source: "parked".into(),
            fallback: None,
        }
    }

    pub fn peer(worker: usize) -> Self {
        Self {
            source: format!("peer:{worker}"),
            fallback: None,
        }
    }

    /// Whether the weights were copied from a peer.
    pub fn is_peer(&self) -> bool {
        self.source.starts_with("peer:")
    }

    /// This report, noting why a faster source was passed over (the first reason stands).
    pub fn with_fallback(mut self, reason: impl Into<String>) -> Self {
        self.fallback.get_or_insert_with(|| reason.into());
        self
    }
}

/// The physical link between two workers' devices, as the driver reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkKind {
    /// One device (two workers of one GPU, or the host CPU): a copy stays in its memory.
    SameDevice,
    /// GPUs with peer access over NVLink (native atomics between them).
    Nvlink,
    /// GPUs with peer access over PCIe.
    Pcie,
    /// No peer access (a copy would go through the host).
    None,
}

impl fmt::Display for LinkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LinkKind::SameDevice => "same_device",
            LinkKind::Nvlink => "nvlink",
            LinkKind::Pcie => "pcie",
            LinkKind::None => "none",
        })
    }
}

/// From one worker to another: what links their devices and whether a peer copy can go that
/// way now (both prewarmed in one process; across processes it would need CUDA IPC).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerLink {
    pub peer: usize,
    pub device: DeviceSpec,
    pub link: LinkKind,
    /// A peer copy from `peer` to this worker can be planned.
    pub copy: bool,
    /// Why not, when `copy` is false.
    #[serde(default)]
    pub reason: Option<String>,
}
