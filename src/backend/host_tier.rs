//! A worker's own host cache (when it keeps one rather than using the machine's shared cache),
//! as its memory report lists it: bytes held, capacity, and bytes per model.

use wc_actors::TierEntry;

use super::CandleDevice;

/// What the host cache holds: the pinned one on CUDA (as last seen when another worker's
/// load holds it), the pageable one elsewhere.
pub(super) fn usage(device: &CandleDevice) -> HostCacheUsage {
    let Some(shared) = &device.pinned else {
        return HostCacheUsage {
            used_bytes: device.host_cache.bytes(),
            capacity_bytes: device.host_cache.budget_bytes(),
            models: by_model(device.host_cache.files()),
        };
    };
    let mut last = device
        .pinned_usage
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Ok(pool) = shared.try_lock() {
        if let Some(contents) = pool.contents() {
            *last = HostCacheUsage {
                used_bytes: contents.used_bytes,
                capacity_bytes: contents.capacity_bytes,
                models: by_model(contents.files),
            };
        }
    }
    last.clone()
}

/// What a worker's host cache holds, for [`wc_actors::MemoryInfo`].
#[derive(Clone, Debug, Default)]
pub(super) struct HostCacheUsage {
    pub(super) used_bytes: u64,
    pub(super) capacity_bytes: u64,
    /// Bytes per checkpoint directory, most recently used first.
    pub(super) models: Vec<TierEntry>,
}

/// Weight files `(path, bytes)` summed per checkpoint directory (a file's parent), in the
/// order each directory first appears.
fn by_model(files: impl IntoIterator<Item = (std::path::PathBuf, u64)>) -> Vec<TierEntry> {
    let mut models: Vec<TierEntry> = Vec::new();
    for (path, bytes) in files {
        let model = path.parent().unwrap_or(&path).display().to_string();
        match models.iter_mut().find(|m| m.model == model) {
            Some(entry) => entry.bytes += bytes,
            None => models.push(TierEntry { model, bytes }),
        }
    }
    models
}
