//! Parked weights, the device tier of the weight cache: a detached model's weights kept on the
//! device (no engine, no KV cache) while no one needs the room, so that attaching the same files
//! in the same dtype again skips the read and the copy. An attach that needs the room frees them
//! first, least recently used first (`[prewarm] park_detached`, or a model's own `park`).

use std::path::PathBuf;

use wc_actors::DType;

use super::inspect::Inspected;
use crate::load::{DeviceWeights, FileKey};

/// What parked weights are: every weight file's identity and the dtype on the device. A file
/// changed on disk has another identity, so stale weights are never reused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParkKey {
    files: Vec<FileKey>,
    dtype: DType,
}

impl ParkKey {
    pub fn of(inspected: &Inspected) -> Self {
        Self {
            files: inspected.files.iter().map(|f| f.key.clone()).collect(),
            dtype: inspected.dtype,
        }
    }

    /// The weights' identity as the runtime compares it ([`wc_actors::Footprint::weights`]):
    /// equal for equal keys, within this build.
    pub fn identity(&self) -> String {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.files.hash(&mut hasher);
        format!("{:016x}:{}", hasher.finish(), self.dtype)
    }

    /// Whether both name one of the same paths (maybe in another version).
    fn shares_a_file_with(&self, other: &ParkKey) -> bool {
        self.files
            .iter()
            .any(|a| other.files.iter().any(|b| a.path == b.path))
    }
}

struct Entry {
    key: ParkKey,
    /// The checkpoint directory, for reports.
    model: PathBuf,
    /// Handles on the tensors (the engines built on them share the same device memory).
    weights: DeviceWeights,
    /// Engines (and peer copies) using these weights; parked when none.
    engines: usize,
    /// Whether they stay parked once none uses them (the last engine given back says).
    park: bool,
    last_used: u64,
}

/// One device's weights that engines use or that are parked.
#[derive(Default)]
pub struct Parking {
    entries: Vec<Entry>,
    clock: u64,
}

impl Parking {
    /// The weights of `key` (parked, or lent to a live engine), lent to one more engine.
    pub fn lend(&mut self, key: &ParkKey) -> Option<DeviceWeights> {
        self.clock += 1;
        let entry = self.entries.iter_mut().find(|e| &e.key == key)?;
        entry.engines += 1;
        entry.last_used = self.clock;
        Some(entry.weights.clone())
    }

    /// Records weights just put on the device for `key`, lent to one engine; parked weights of
    /// older versions of the same files go (they would never be served again).
    /// `park`: whether they stay parked once the engine is gone.
    pub fn record(&mut self, key: ParkKey, model: PathBuf, weights: &DeviceWeights, park: bool) {
        self.clock += 1;
        self.forget_other_versions(&key);
        self.entries.push(Entry {
            key,
            model,
            weights: weights.clone(),
            engines: 1,
            park,
            last_used: self.clock,
        });
    }

    /// A peer copy of `key`'s weights has ended: once nothing uses them they stay parked or
    /// go as the last engine given back said (a copy never changes that).
    pub fn copy_done(&mut self, key: &ParkKey) {
        let Some(i) = self.entries.iter().position(|e| &e.key == key) else {
            return;
        };
        let entry = &mut self.entries[i];
        entry.engines = entry.engines.saturating_sub(1);
        if entry.engines == 0 && !entry.park {
            self.entries.swap_remove(i);
        }
    }

    /// The identities of every weights held (parked or in use).
    pub fn resident(&self) -> Vec<String> {
        self.entries.iter().map(|e| e.key.identity()).collect()
    }

    /// Frees parked weights of `key`'s files in another version (or the same, being replaced):
    /// they would never be served again.
    pub fn forget_other_versions(&mut self, key: &ParkKey) {
        self.entries
            .retain(|e| e.engines > 0 || (&e.key != key && !e.key.shares_a_file_with(key)));
    }

    /// An engine on `key`'s weights has gone: once no engine uses them they are parked, or
    /// freed when `park` is false (the last engine's model may not stay on the device).
    pub fn give_back(&mut self, key: &ParkKey, park: bool) {
        let Some(i) = self.entries.iter().position(|e| &e.key == key) else {
            return;
        };
        let entry = &mut self.entries[i];
        entry.engines = entry.engines.saturating_sub(1);
        entry.park = park;
        if entry.engines == 0 && !park {
            let entry = self.entries.swap_remove(i);
            tracing::debug!(bytes = entry.weights.device_bytes, "detached weights freed");
        }
    }

    /// The parked models (checkpoint directory, device bytes), most recently used first.
    pub fn parked(&self) -> Vec<(PathBuf, u64)> {
        let mut parked: Vec<&Entry> = self.entries.iter().filter(|e| e.engines == 0).collect();
        parked.sort_by_key(|e| std::cmp::Reverse(e.last_used));
        parked
            .into_iter()
            .map(|e| (e.model.clone(), e.weights.device_bytes))
            .collect()
    }

    /// Device bytes of the parked weights (those no engine uses).
    pub fn parked_bytes(&self) -> u64 {
        self.entries
            .iter()
            .filter(|e| e.engines == 0)
            .map(|e| e.weights.device_bytes)
            .sum()
    }

    /// Frees parked weights, least recently used first, until at least `bytes` are freed or
    /// none is left; returns the bytes freed.
    pub fn free(&mut self, bytes: u64) -> u64 {
        let mut freed = 0;
        while freed < bytes {
            let oldest = (0..self.entries.len())
                .filter(|&i| self.entries[i].engines == 0)
                .min_by_key(|&i| self.entries[i].last_used);
            let Some(i) = oldest else { break };
            let entry = self.entries.swap_remove(i);
            freed += entry.weights.device_bytes;
            tracing::debug!(bytes = entry.weights.device_bytes, "parked weights freed");
        }
        freed
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::{Device, Tensor};

    use super::*;

    fn weights() -> DeviceWeights {
        let tensor = Tensor::zeros((4, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        DeviceWeights::from_tensors(HashMap::from([("w".to_string(), tensor)]))
    }

    fn key(dtype: DType) -> ParkKey {
        ParkKey {
            files: Vec::new(),
            dtype,
        }
    }

    #[test]
    fn weights_in_use_are_resident_and_go_with_their_engine_unless_parked() {
        let mut parking = Parking::default();
        let key = key(DType::F32);
        parking.record(key.clone(), "m".into(), &weights(), false);
        assert_eq!(parking.resident(), vec![key.identity()]);
        assert_eq!(parking.parked_bytes(), 0, "in use, not parked");
        parking.give_back(&key, false);
        assert!(parking.resident().is_empty());
    }

    #[test]
    fn an_engine_detached_mid_copy_frees_its_weights_once_the_copy_is_done() {
        let mut parking = Parking::default();
        let key = key(DType::BF16);
        parking.record(key.clone(), "m".into(), &weights(), false);
        assert!(parking.lend(&key).is_some(), "lent to a peer copy");
        parking.give_back(&key, false);
        assert_eq!(parking.resident().len(), 1, "held for the copy");
        parking.copy_done(&key);
        assert!(parking.resident().is_empty(), "freed as the engine said");
    }

    #[test]
    fn parked_weights_copied_by_a_peer_stay_parked() {
        let mut parking = Parking::default();
        let key = key(DType::F16);
        parking.record(key.clone(), "m".into(), &weights(), true);
        parking.give_back(&key, true);
        let parked = parking.parked_bytes();
        assert!(parked > 0);
        assert!(parking.lend(&key).is_some());
        assert_eq!(parking.parked_bytes(), 0, "in use while copied");
        parking.copy_done(&key);
        assert_eq!(parking.parked_bytes(), parked);
        let other = super::tests::key(DType::F32);
        assert_ne!(
            key.identity(),
            other.identity(),
            "another dtype: other weights"
        );
    }
}
