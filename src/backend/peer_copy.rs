//! A peer copy: the weights another worker of this process holds resident (parked, or lent to
//! the engine it serves), copied onto this worker's device instead of read from the host:
//! device to device on CUDA (`cuMemcpyPeerAsync`, one per weight buffer), a memory copy on the
//! CPU. The peer's engine keeps serving (its weights are only read), and its weights stay held
//! for the copy's length even if it detaches meanwhile.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor};
use wc_actors::{Anchor, PeerSource, SourceReport, Timeline, WeightsSource};

use super::device::lock;
use super::inspect::Inspected;
use super::parking::{ParkKey, Parking};
use super::CandleDevice;
use crate::load::weights::FusedGroup;
use crate::load::{cuda, DeviceWeights, LoadError};

/// Follows the source planned for this load: with a peer, its copy of `key`'s weights on this
/// device (the anchors marked, the source reported), or `None` (the host path follows) with the
/// reason the peer could not serve in the report. A copy that fails part-way fails the attach
/// with [`LoadError::PeerCopy`] (everything copied is freed).
pub(super) fn from_planned_peer(
    device: &mut CandleDevice,
    inspected: &Inspected,
    key: &ParkKey,
    timeline: &mut Timeline,
) -> Result<Option<DeviceWeights>, LoadError> {
    let WeightsSource::Peer(peer) = std::mem::take(&mut device.source) else {
        return Ok(None);
    };
    let groups = inspected.config.fused_groups();
    let lent = lend(device, &peer, key)
        .and_then(|lent| copyable(device, &lent.weights, &groups).map(|()| lent));
    match lent {
        Ok(lent) => {
            timeline.mark(Anchor::WeightsRead);
            let copied = copy(device, &lent.weights, &groups, peer.worker)?;
            device
                .device
                .synchronize()
                .map_err(|e| LoadError::PeerCopy {
                    worker: peer.worker,
                    reason: e.to_string(),
                })?;
            timeline.mark(Anchor::WeightsOnDevice);
            device.source_report = SourceReport::peer(peer.worker);
            tracing::debug!(
                target: "wc::attach",
                peer = peer.worker,
                bytes = copied.device_bytes,
                "weights copied from a peer"
            );
            Ok(Some(copied))
        }
        Err(reason) => {
            device.source_report = SourceReport::host().with_fallback(reason);
            Ok(None)
        }
    }
}

/// The peer's weights, held for the copy: given back when dropped.
struct Lent {
    parking: Arc<Mutex<Parking>>,
    key: ParkKey,
    weights: DeviceWeights,
}

impl Drop for Lent {
    fn drop(&mut self) {
        lock(&self.parking).copy_done(&self.key);
    }
}

/// Borrows `key`'s weights from `peer`, or says why they are not there.
fn lend(device: &CandleDevice, peer: &PeerSource, key: &ParkKey) -> Result<Lent, String> {
    let worker = peer.worker;
    let gone = || format!("worker {worker}'s device is gone");
    let registry = device
        .peer
        .as_ref()
        .map(|m| m.registry.clone())
        .ok_or_else(|| "this device lends and borrows no weights".to_string())?;
    let found = registry.get(peer.endpoint).ok_or_else(gone)?;
    let same_kind = matches!(
        (&found.device, &device.device),
        (Device::Cpu, Device::Cpu) | (Device::Cuda(_), Device::Cuda(_))
    );
    if !same_kind {
        return Err(format!("worker {worker}'s device is of another kind"));
    }
    let parking = found.parking.upgrade().ok_or_else(gone)?;
    let weights = lock(&parking)
        .lend(key)
        .ok_or_else(|| format!("worker {worker} no longer holds these weights"))?;
    Ok(Lent {
        parking,
        key: key.clone(),
        weights,
    })
}

/// The fused groups `weights` holds, and the names of their members (views of the groups).
fn fused_in<'a>(
    weights: &DeviceWeights,
    groups: &'a [FusedGroup],
) -> (Vec<&'a FusedGroup>, HashSet<&'a str>) {
    let present: Vec<_> = groups
        .iter()
        .filter(|g| weights.contains(&g.name))
        .collect();
    let members = present
        .iter()
        .flat_map(|g| g.members.iter().map(String::as_str))
        .collect();
    (present, members)
}

/// Whether every buffer [`copy`] copies can go device to device (on CUDA: a contiguous tensor
/// of a float dtype), checked before any byte moves so that the host path can still follow.
fn copyable(
    device: &CandleDevice,
    weights: &DeviceWeights,
    groups: &[FusedGroup],
) -> Result<(), String> {
    if !device.device.is_cuda() {
        return Ok(());
    }
    let (_, members) = fused_in(weights, groups);
    let floats = [DType::F32, DType::F16, DType::BF16];
    let odd = weights
        .tensors()
        .filter(|(name, _)| !members.contains(name))
        .find(|(_, t)| !floats.contains(&t.dtype()) || !t.is_contiguous());
    match odd {
        Some((name, t)) => Err(format!(
            "the peer's tensor `{name}` ({:?}, contiguous: {}) cannot be copied device to device",
            t.dtype(),
            t.is_contiguous()
        )),
        None => Ok(()),
    }
}

/// Copies every tensor of `weights` onto `device`; members of a fused group become views of
/// the group's copy again, as on the peer (no byte copied twice).
fn copy(
    device: &CandleDevice,
    weights: &DeviceWeights,
    groups: &[FusedGroup],
    worker: usize,
) -> Result<DeviceWeights, LoadError> {
    let failed = |reason: String| LoadError::PeerCopy { worker, reason };
    let (present, members) = fused_in(weights, groups);
    let fault_after = device
        .peer
        .as_ref()
        .and_then(|m| m.registry.take_copy_fault());
    let mut copied: HashMap<String, Tensor> = HashMap::new();
    for (name, tensor) in weights.tensors().filter(|(n, _)| !members.contains(n)) {
        if fault_after.is_some_and(|after| copied.len() >= after) {
            return Err(failed(
                "the peer's device failed mid-copy (injected)".into(),
            ));
        }
        let copy = match &device.device {
            Device::Cuda(cuda) => cuda::copy_from_peer(cuda, tensor),
            _ => tensor.copy().map_err(LoadError::from),
        };
        copied.insert(name.to_string(), copy.map_err(|e| failed(e.to_string()))?);
    }
    for group in present {
        let fused = copied[&group.name].clone();
        let mut offset = 0;
        for member in &group.members {
            let Some(rows) = weights
                .tensors()
                .find(|(n, _)| n == member)
                .map(|(_, t)| t.dim(0))
            else {
                continue;
            };
            let rows = rows?;
            copied.insert(member.clone(), fused.narrow(0, offset, rows)?);
            offset += rows;
        }
    }
    let mut weights_copied = DeviceWeights::from_tensors(copied);
    weights_copied.device_bytes = weights.device_bytes;
    Ok(weights_copied)
}
