//! Keeping the thread that drives a worker's device on the CPUs its `[prewarm] cpus` names.

use wc_actors::DeviceSpec;

use crate::load::LoadError;

/// The CPUs this process may run on (Linux).
pub fn allowed_cpus() -> Result<Vec<usize>, String> {
    imp::allowed()
}

/// Whether this process may run on every CPU of `cpus` (for a config check before any worker
/// starts); the error names the first one it may not and the CPUs it may.
pub fn check_cpus(cpus: &[usize]) -> Result<(), String> {
    match cpus.is_empty() {
        true => Ok(()),
        false => imp::check(cpus),
    }
}

/// Keeps the calling thread on `cpus` (nothing to do when empty). A CPU this process may not
/// run on, or any CPU on a system without thread affinity, is refused with a typed error.
pub fn keep_thread_on(cpus: &[usize], device: &DeviceSpec) -> Result<(), LoadError> {
    if cpus.is_empty() {
        return Ok(());
    }
    let refuse = |reason: String| LoadError::DeviceUnavailable {
        device: device.to_string(),
        reason,
    };
    imp::keep_thread_on(cpus).map_err(refuse)
}

#[cfg(target_os = "linux")]
mod imp {
    use std::mem::{size_of, zeroed};

    /// The CPUs this process may run on.
    pub(super) fn allowed() -> Result<Vec<usize>, String> {
        // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity writes at most its size.
        let mut set: libc::cpu_set_t = unsafe { zeroed() };
        let status = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) };
        if status != 0 {
            return Err(format!(
                "reading this process's CPUs: {}",
                std::io::Error::last_os_error()
            ));
        }
        let count = 8 * size_of::<libc::cpu_set_t>();
        // SAFETY: every index is below the set's size.
        Ok((0..count)
            .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
            .collect())
    }

    pub(super) fn check(cpus: &[usize]) -> Result<(), String> {
        let allowed = allowed()?;
        match cpus.iter().find(|cpu| !allowed.contains(cpu)) {
            Some(cpu) => Err(format!(
                "cpus names CPU {cpu}, which this process may not run on (it may run on {})",
                ranges(&allowed)
            )),
            None => Ok(()),
        }
    }

    pub(super) fn keep_thread_on(cpus: &[usize]) -> Result<(), String> {
        check(cpus)?;
        // SAFETY: as above; every CPU set is below the set's size (it is one of `allowed`).
        let mut set: libc::cpu_set_t = unsafe { zeroed() };
        for &cpu in cpus {
            unsafe { libc::CPU_SET(cpu, &mut set) };
        }
        // SAFETY: pid 0 is the calling thread; `set` is a valid cpu_set_t of the size given.
        let status = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) };
        match status {
            0 => Ok(()),
            _ => Err(format!(
                "keeping the worker on CPUs {}: {}",
                ranges(cpus),
                std::io::Error::last_os_error()
            )),
        }
    }

    /// `0-3,8` for `[0, 1, 2, 3, 8]`.
    pub(super) fn ranges(cpus: &[usize]) -> String {
        let mut sorted = cpus.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let mut parts: Vec<String> = Vec::new();
        let mut at = 0;
        while at < sorted.len() {
            let start = sorted[at];
            while at + 1 < sorted.len() && sorted[at + 1] == sorted[at] + 1 {
                at += 1;
            }
            parts.push(match sorted[at] {
                end if end == start => start.to_string(),
                end => format!("{start}-{end}"),
            });
            at += 1;
        }
        parts.join(",")
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    pub(super) fn allowed() -> Result<Vec<usize>, String> {
        Err("CPU affinity is supported on Linux only".into())
    }

    pub(super) fn check(_cpus: &[usize]) -> Result<(), String> {
        Err("cpus is supported on Linux only".into())
    }

    pub(super) fn keep_thread_on(cpus: &[usize]) -> Result<(), String> {
        check(cpus)
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_read_as_ranges() {
        assert_eq!(imp::ranges(&[8, 0, 1, 2, 3, 3]), "0-3,8");
        assert_eq!(imp::ranges(&[5]), "5");
    }

    #[test]
    fn a_cpu_the_process_may_not_use_is_refused_by_name() {
        let on_thread = std::thread::spawn(|| keep_thread_on(&[100_000], &DeviceSpec::Cpu));
        let refused = on_thread.join().unwrap().unwrap_err();
        let text = refused.to_string();
        assert!(text.contains("CPU 100000"), "{text}");
        assert!(text.contains("may run on"), "{text}");
    }

    #[test]
    fn the_thread_is_kept_where_asked() {
        let first = imp::allowed().unwrap()[0];
        let cpu = std::thread::spawn(move || {
            keep_thread_on(&[first], &DeviceSpec::Cpu).unwrap();
            // SAFETY: sched_getcpu has no preconditions.
            unsafe { libc::sched_getcpu() }
        });
        assert_eq!(cpu.join().unwrap(), first as i32);
    }
}
