//! The workers' devices of one backend (threads of one process) that lend their resident
//! weights to each other for peer copies: each joins at prewarm (on CUDA, with peer access
//! enabled both ways with every other GPU that has joined), is found by its endpoint, and
//! leaves when it is dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use candle_core::Device;

use super::parking::Parking;
use super::CandleDevice;
use crate::load::cuda;

/// One backend's devices, by endpoint.
#[derive(Debug, Default)]
pub struct PeerRegistry {
    inner: Mutex<Members>,
}

#[derive(Debug, Default)]
struct Members {
    devices: HashMap<u64, Peer>,
    next: u64,
    /// Test hook: the next peer copy fails once this many tensors are copied, as when the
    /// peer's device fails mid-copy.
    fail_next_copy_after: Option<usize>,
}

/// A device that lends its resident weights.
#[derive(Clone)]
pub(super) struct Peer {
    pub(super) device: Device,
    pub(super) parking: Weak<Mutex<Parking>>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Peer({:?})", self.device.location())
    }
}

/// A device's place in the registry, given up when dropped (with the device).
pub(super) struct Membership {
    pub(super) registry: Arc<PeerRegistry>,
    pub(super) endpoint: u64,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.registry.members().devices.remove(&self.endpoint);
    }
}

impl PeerRegistry {
    fn members(&self) -> MutexGuard<'_, Members> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds `device` (whose resident weights `parking` holds); on CUDA enables peer access
    /// between it and every other GPU already in, both ways, where the driver allows. Returns
    /// its membership and a line per GPU pair for the prewarm report.
    pub(super) fn join(
        self: &Arc<Self>,
        device: &Device,
        parking: &Arc<Mutex<Parking>>,
    ) -> (Membership, Vec<String>) {
        let mut members = self.members();
        let mut steps = Vec::new();
        if let Device::Cuda(mine) = device {
            for peer in members.devices.values() {
                let Device::Cuda(theirs) = &peer.device else {
                    continue;
                };
                // Each call makes its first device's context current: this worker's last.
                let back = cuda::enable_peer_access(theirs, mine);
                let there = cuda::enable_peer_access(mine, theirs);
                let state = match (there, back) {
                    (Ok(true), Ok(true)) => "on".to_string(),
                    (Ok(_), Ok(_)) => "not supported".to_string(),
                    (Err(e), _) | (_, Err(e)) => format!("failed: {e}"),
                };
                steps.push(format!(
                    "peer access {:?} <-> {:?}: {state}",
                    device.location(),
                    peer.device.location()
                ));
            }
        }
        members.next += 1;
        let endpoint = members.next;
        members.devices.insert(
            endpoint,
            Peer {
                device: device.clone(),
                parking: Arc::downgrade(parking),
            },
        );
        let membership = Membership {
            registry: self.clone(),
            endpoint,
        };
        (membership, steps)
    }

    /// The device at `endpoint`, while it is alive.
    pub(super) fn get(&self, endpoint: u64) -> Option<Peer> {
        self.members().devices.get(&endpoint).cloned()
    }

    /// Test hook: the next peer copy fails once `tensors` tensors are copied (as if the peer's
    /// device failed mid-copy).
    #[doc(hidden)]
    pub fn fail_next_copy_after(&self, tensors: usize) {
        self.members().fail_next_copy_after = Some(tensors);
    }

    /// The pending test fault, taken.
    pub(super) fn take_copy_fault(&self) -> Option<usize> {
        self.members().fail_next_copy_after.take()
    }
}

/// Makes `device` one of `registry`'s: from now on it lends its resident weights to the other
/// devices of it, and copies theirs (see `peer_copy`). Returns its endpoint for its prewarm
/// report and a step per GPU pair whose peer access it enabled.
pub(super) fn join(device: &mut CandleDevice, registry: &Arc<PeerRegistry>) -> (u64, Vec<String>) {
    let (membership, steps) = registry.join(&device.device, &device.parking);
    let endpoint = membership.endpoint;
    device.peer = Some(membership);
    (endpoint, steps)
}
