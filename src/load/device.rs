//! Opening candle devices from a `DeviceSpec`, with typed errors for devices this build or machine
//! lacks; the host's memory as a CPU worker may use it.

use candle_core::Device;
use wc_actors::DeviceSpec;

use super::{cuda, LoadError};

/// Opens `spec` on the calling thread.
pub fn open(spec: &DeviceSpec) -> Result<Device, LoadError> {
    match spec {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Cuda(index) => open_cuda(*index, spec),
    }
}

fn open_cuda(index: usize, spec: &DeviceSpec) -> Result<Device, LoadError> {
    if !cuda::COMPILED {
        return Err(LoadError::CudaNotCompiled(spec.to_string()));
    }
    let unavailable = |reason: String| LoadError::DeviceUnavailable {
        device: spec.to_string(),
        reason,
    };
    let count = cuda::device_count().map_err(unavailable)?;
    if index >= count {
        return Err(unavailable(format!(
            "no such GPU: this machine has {count} CUDA device(s)"
        )));
    }
    let device = Device::new_cuda_with_stream(index).map_err(|e| unavailable(e.to_string()))?;
    if let Device::Cuda(cuda) = &device {
        cuda::single_stream(cuda);
    }
    Ok(device)
}

/// Total and available host memory from `/proc/meminfo`, in bytes.
pub fn host_memory() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    meminfo(&text)
}

/// `MemTotal` and `MemAvailable` of a `/proc/meminfo` text, in bytes (0 when missing).
fn meminfo(text: &str) -> (u64, u64) {
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb.saturating_mul(1024))
            .unwrap_or(0)
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

/// Host memory this process can still take: the kernel's `MemAvailable`, and no more than its
/// memory cgroup's limit less the cgroup's usage (which counts every worker process in it).
///
/// Memory this process freed and its allocator keeps for reuse counts as available too (engines'
/// processes keep freed memory, see `cli/allocator.rs`): after a detach it is not back in
/// `MemAvailable`, yet the next attach reuses it.
pub fn host_available_bytes() -> u64 {
    let (_, available) = host_memory();
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let headroom = available.min(cgroup_headroom(&cgroup, read).unwrap_or(u64::MAX));
    headroom.saturating_add(allocator_free_bytes())
}

/// Bytes this process's allocator holds free: glibc's `fordblks` (0 elsewhere).
fn allocator_free_bytes() -> u64 {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    let free = unsafe { libc::mallinfo2() }.fordblks as u64;
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let free = 0;
    free
}

/// Limit minus usage of the memory cgroup that `/proc/self/cgroup`'s `text` names (v2's
/// `memory.max`/`memory.current`, or v1's `memory.limit_in_bytes`/`memory.usage_in_bytes`),
/// reading files through `read`; `None` when there is no limit or it cannot be read.
pub fn cgroup_headroom(text: &str, read: impl Fn(&str) -> Option<String>) -> Option<u64> {
    let number = |path: String| read(&path)?.trim().parse::<u64>().ok();
    let headroom = |dir: &str, limit: &str, usage: &str| {
        let max = number(format!("{dir}/{limit}"))?;
        Some(max.saturating_sub(number(format!("{dir}/{usage}"))?))
    };
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let path = path.trim_end_matches('/');
        let found = if id == "0" && controllers.is_empty() {
            // v2: the path as mounted, or the namespace's own root.
            headroom(
                &format!("/sys/fs/cgroup{path}"),
                "memory.max",
                "memory.current",
            )
            .or_else(|| headroom("/sys/fs/cgroup", "memory.max", "memory.current"))
        } else if controllers.split(',').any(|c| c == "memory") {
            let (limit, usage) = ("memory.limit_in_bytes", "memory.usage_in_bytes");
            headroom(&format!("/sys/fs/cgroup/memory{path}"), limit, usage)
                .or_else(|| headroom("/sys/fs/cgroup/memory", limit, usage))
        } else {
            None
        };
        if found.is_some() {
            return found;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_reads_total_and_available() {
        let text = "MemTotal:       1000 kB\nMemFree:  10 kB\nMemAvailable:    600 kB\n";
        assert_eq!(meminfo(text), (1000 * 1024, 600 * 1024));
    }

    #[test]
    fn a_cgroup_limit_bounds_the_headroom() {
        let files = |path: &str| match path {
            "/sys/fs/cgroup/work/memory.max" => Some("8000\n".to_string()),
            "/sys/fs/cgroup/work/memory.current" => Some("4500\n".to_string()),
            "/sys/fs/cgroup/memory/job/memory.limit_in_bytes" => Some("3000".to_string()),
            "/sys/fs/cgroup/memory/job/memory.usage_in_bytes" => Some("1000".to_string()),
            _ => None,
        };
        assert_eq!(cgroup_headroom("0::/work\n", files), Some(3500));
        assert_eq!(cgroup_headroom("4:memory:/job\n0::/\n", files), Some(2000));
        // v2 without a limit reads "max": no headroom to apply.
        let unlimited = |path: &str| path.ends_with("memory.max").then(|| "max".to_string());
        assert_eq!(cgroup_headroom("0::/\n", unlimited), None);
    }
}
