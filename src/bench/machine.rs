//! Facts about where a bench ran: date, machine, GPU name, and the state of the CUDA JIT cache.

use std::path::PathBuf;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

/// Today's UTC date as `YYYY-MM-DD`.
pub fn today() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Howard Hinnant's days-to-civil conversion.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// CPU model and core count, plus GPU names when `nvidia-smi` is present.
pub fn describe() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(str::trim)
        .unwrap_or("unknown CPU");
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut text = format!("{cpu}, {cores} cores");
    if let Some(gpus) = gpu_names() {
        text.push_str(&format!("; GPU: {gpus}"));
    }
    text
}

/// GPU names from `nvidia-smi`, if it runs.
pub fn gpu_names() -> Option<String> {
    let out = Command::new("nvidia-smi")
        .args(["--query-gpu=name,driver_version", "--format=csv,noheader"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout)
        .trim()
        .replace('\n', " | ");
    (out.status.success() && !text.is_empty()).then_some(text)
}

/// The driver's JIT cache directory (`CUDA_CACHE_PATH` or `~/.nv/ComputeCache`).
fn jit_cache_dir() -> Option<PathBuf> {
    std::env::var_os("CUDA_CACHE_PATH")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".nv/ComputeCache")))
}

/// `warm` when the JIT cache already holds entries, else `cold`.
pub fn jit_cache_state() -> String {
    let warm = jit_cache_dir()
        .and_then(|d| std::fs::read_dir(d).ok())
        .map(|mut entries| entries.next().is_some())
        .unwrap_or(false);
    if warm {
        "warm".into()
    } else {
        "cold".into()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn civil_dates() {
        assert_eq!(super::civil_from_days(0), (1970, 1, 1));
        assert_eq!(super::civil_from_days(20_784), (2026, 11, 27));
    }
}
