//! Placement: which worker an attach goes to, whether it must wait, or why it can never fit.

use crate::backend::DeviceSpec;
use crate::errors::AttachError;
use crate::reports::WorkerState;

/// What placement needs to know about one worker.
#[derive(Clone, Debug)]
pub(crate) struct Candidate<'a> {
    pub device: &'a DeviceSpec,
    pub state: WorkerState,
    /// Free bytes when it holds no engine (known once it has prewarmed).
    pub idle_free: Option<u64>,
    /// Free bytes now, as last reported.
    pub free_now: Option<u64>,
}

/// The outcome of placing one attach.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Placement {
    /// Attach on this worker now.
    Now(usize),
    /// Every suitable worker is busy or still warming: wait.
    Wait,
    /// It can never succeed as asked.
    Fail(AttachError),
}

/// Chooses a worker for a model needing `needed` device bytes, restricted to `worker` and/or
/// `device` when given: the lowest-numbered idle suitable worker with room.
pub(crate) fn place(
    workers: &[Candidate<'_>],
    needed: u64,
    worker: Option<usize>,
    device: Option<&DeviceSpec>,
) -> Placement {
    let suitable: Vec<usize> = match worker {
        Some(w) if w >= workers.len() => {
            return Placement::Fail(AttachError::UnknownWorker { worker: w });
        }
        Some(w) => vec![w],
        None => (0..workers.len()).collect(),
    };
    let suitable: Vec<usize> = suitable
        .into_iter()
        .filter(|&w| device.is_none_or(|d| workers[w].device == d))
        .collect();
    if suitable.is_empty() {
        let device = device.map(|d| d.to_string()).unwrap_or_default();
        return Placement::Fail(AttachError::NoWorkerOnDevice { device });
    }
    let alive: Vec<usize> = suitable
        .iter()
        .copied()
        .filter(|&w| !matches!(workers[w].state, WorkerState::Failed | WorkerState::Stopped))
        .collect();
    if alive.is_empty() {
        return Placement::Fail(AttachError::NoWorkerAlive {
            failed: suitable.len(),
        });
    }
    let capacities: Option<Vec<u64>> = alive.iter().map(|&w| workers[w].idle_free).collect();
    if let Some(largest) = capacities.and_then(|c| c.into_iter().max()) {
        if needed > largest {
            return Placement::Fail(AttachError::DoesNotFit {
                needed_bytes: needed,
                free_bytes: largest,
            });
        }
    }
    ready_now(workers, needed, &alive)
        .first()
        .copied()
        .map_or(Placement::Wait, Placement::Now)
}

/// Of `suitable`, the workers that can take an attach needing `needed` bytes now (idle, with
/// room), lowest-numbered first.
pub(crate) fn ready_now(workers: &[Candidate<'_>], needed: u64, suitable: &[usize]) -> Vec<usize> {
    suitable
        .iter()
        .copied()
        .filter(|&w| {
            workers[w].state == WorkerState::Idle && workers[w].free_now.unwrap_or(0) >= needed
        })
        .collect()
}

/// The workers an attach restricted to `worker` and/or `device` may go to.
pub(crate) fn suitable(
    workers: &[Candidate<'_>],
    worker: Option<usize>,
    device: Option<&DeviceSpec>,
) -> Vec<usize> {
    (0..workers.len())
        .filter(|&w| worker.is_none_or(|only| only == w))
        .filter(|&w| device.is_none_or(|d| workers[w].device == d))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(device: &DeviceSpec, state: WorkerState, free: u64) -> Candidate<'_> {
        Candidate {
            device,
            state,
            idle_free: Some(free),
            free_now: Some(free),
        }
    }

    #[test]
    fn picks_the_first_idle_worker_with_room() {
        let cpu = DeviceSpec::Cpu;
        let workers = [
            worker(&cpu, WorkerState::Serving, 100),
            worker(&cpu, WorkerState::Idle, 50),
            worker(&cpu, WorkerState::Idle, 100),
        ];
        assert_eq!(place(&workers, 80, None, None), Placement::Now(2));
        assert_eq!(place(&workers, 40, None, None), Placement::Now(1));
        assert_eq!(place(&workers, 80, Some(0), None), Placement::Wait);
    }

    #[test]
    fn too_large_for_every_worker_does_not_fit_with_the_largest_capacity() {
        let cpu = DeviceSpec::Cpu;
        let workers = [
            worker(&cpu, WorkerState::Idle, 10),
            worker(&cpu, WorkerState::Serving, 30),
        ];
        assert_eq!(
            place(&workers, 31, None, None),
            Placement::Fail(AttachError::DoesNotFit {
                needed_bytes: 31,
                free_bytes: 30
            })
        );
    }

    #[test]
    fn unknown_worker_wrong_device_and_all_failed_fail_at_once() {
        let cpu = DeviceSpec::Cpu;
        let gpu = DeviceSpec::Cuda(0);
        let workers = [worker(&cpu, WorkerState::Failed, 10)];
        assert!(matches!(
            place(&workers, 1, Some(3), None),
            Placement::Fail(AttachError::UnknownWorker { worker: 3 })
        ));
        assert!(matches!(
            place(&workers, 1, None, Some(&gpu)),
            Placement::Fail(AttachError::NoWorkerOnDevice { .. })
        ));
        assert!(matches!(
            place(&workers, 1, None, None),
            Placement::Fail(AttachError::NoWorkerAlive { failed: 1 })
        ));
    }

    #[test]
    fn a_warming_worker_means_wait_not_does_not_fit() {
        let cpu = DeviceSpec::Cpu;
        let mut warming = worker(&cpu, WorkerState::Warming, 0);
        warming.idle_free = None;
        let workers = [worker(&cpu, WorkerState::Idle, 10), warming];
        assert_eq!(place(&workers, 100, None, None), Placement::Wait);
    }
}
