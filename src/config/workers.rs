//! The `[[workers]]` groups: how many workers on which device, their checks, and the actor
//! runtime's configuration they make with `[prewarm]` and `[runtime]`.

use serde::{de, Deserialize, Deserializer};
use wc_actors::{DeviceSpec, PrewarmOptions, RuntimeConfig, WorkerConfig};

use super::Config;
use crate::backend::affinity::check_cpus;

/// The most workers a server may run, over all `[[workers]]` groups: each is an OS thread with
/// a device context and one engine; 64 covers eight GPUs with eight engines each.
pub const MAX_WORKERS: usize = 64;

/// One `[[workers]]` entry: `count` workers on one device.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerGroup {
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: DeviceSpec,
    /// How many workers (each holds one engine at a time): 1 to [`MAX_WORKERS`].
    #[serde(default = "one", deserialize_with = "worker_count")]
    pub count: usize,
    /// CPUs this group's device threads are kept on, instead of `[prewarm] cpus` (e.g. the CPUs
    /// of its GPU's NUMA node).
    #[serde(default)]
    pub cpus: Option<Vec<usize>>,
}

fn one() -> usize {
    1
}

/// Checks a number of workers in one group (or given by `--workers`).
pub fn check_worker_count(count: usize) -> Result<(), String> {
    if !(1..=MAX_WORKERS).contains(&count) {
        return Err(format!(
            "worker count {count} is out of range: 1 to {MAX_WORKERS}"
        ));
    }
    Ok(())
}

fn worker_count<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let count = usize::deserialize(d)?;
    check_worker_count(count).map_err(de::Error::custom)?;
    Ok(count)
}

impl Config {
    pub(super) fn check_workers(&self) -> Result<(), String> {
        check_cpus(&self.prewarm.cpus).map_err(|reason| format!("[prewarm] {reason}"))?;
        for group in &self.workers {
            check_worker_count(group.count)
                .and_then(|()| check_cpus(group.cpus.as_deref().unwrap_or_default()))
                .map_err(|reason| format!("[[workers]] on `{}`: {reason}", group.device))?;
        }
        let total: usize = self.workers.iter().map(|g| g.count).sum();
        if total > MAX_WORKERS {
            return Err(format!(
                "{total} workers in all: at most {MAX_WORKERS} over every [[workers]] group"
            ));
        }
        Ok(())
    }

    /// The actor runtime's configuration: the `[[workers]]` groups (one CPU worker when there
    /// are none), each prewarmed as `[prewarm]` says (its own `cpus` if it names them), and the
    /// `[runtime]` options.
    pub fn runtime_config(&self) -> RuntimeConfig {
        let group = |group: &WorkerGroup| WorkerConfig {
            device: group.device.clone(),
            count: group.count,
            prewarm: PrewarmOptions {
                cpus: group
                    .cpus
                    .clone()
                    .unwrap_or_else(|| self.prewarm.cpus.clone()),
                ..self.prewarm.clone()
            },
        };
        let workers = match self.workers.is_empty() {
            true => vec![group(&WorkerGroup {
                device: DeviceSpec::Cpu,
                count: 1,
                cpus: None,
            })],
            false => self.workers.iter().map(group).collect(),
        };
        RuntimeConfig {
            workers,
            options: self.runtime.clone(),
        }
    }
}
