//! Where an attach's weights come from, decided without side effects: among the workers that
//! can take the attach now, one whose own device holds the weights (parked) first, else one
//! that a peer worker holding them resident can copy to (best link first), else the first, read
//! through the host path (host cache, page cache, disk).

use crate::backend::DeviceSpec;
use crate::reports::WorkerState;
use crate::source::{LinkKind, PeerSource, WeightsSource};

/// What the choice needs to know about one worker.
#[derive(Clone, Debug)]
pub(crate) struct Holder<'a> {
    pub device: &'a DeviceSpec,
    pub state: WorkerState,
    /// Identities of the weights resident on its device (parked or lent to its engine).
    pub resident: &'a [String],
    /// Where a peer copy reaches it, from its prewarm; `None`: it lends nothing.
    pub endpoint: Option<Endpoint>,
}

/// A worker's endpoint for peer copies and the process it runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub peer: u64,
    /// Its own process's id (process isolation); `None`: a thread of the serving process.
    pub pid: Option<u32>,
}

/// The target worker and where its weights come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    pub target: usize,
    pub source: WeightsSource,
    /// Why a copy resident on another worker is not used (none when there is no such copy).
    pub fallback: Option<String>,
}

/// Chooses among `ready` (workers that can take the attach now, in placement order) the target
/// for the weights `weights` and their source; `links[a][b]` is the link from worker `a`'s
/// device to worker `b`'s. `None` when `ready` is empty.
pub(crate) fn plan(
    weights: &str,
    ready: &[usize],
    workers: &[Holder<'_>],
    links: &[Vec<LinkKind>],
) -> Option<Plan> {
    let first = *ready.first()?;
    let host = |fallback| Plan {
        target: first,
        source: WeightsSource::Host,
        fallback,
    };
    if weights.is_empty() {
        return Some(host(None));
    }
    let holds = |w: usize| workers[w].resident.iter().any(|r| r == weights);
    if let Some(&target) = ready.iter().find(|&&t| holds(t)) {
        return Some(Plan {
            target,
            source: WeightsSource::Parked,
            fallback: None,
        });
    }
    let holders: Vec<usize> = (0..workers.len()).filter(|&w| holds(w)).collect();
    let mut best: Option<(u8, usize, usize)> = None;
    let mut fallback = None;
    for &target in ready {
        for &peer in &holders {
            let link = links
                .get(peer)
                .and_then(|l| l.get(target))
                .copied()
                .unwrap_or(LinkKind::None);
            match copyable(workers, peer, target) {
                Ok(()) => {
                    let rank = rank(link);
                    if best.is_none_or(|(r, _, _)| rank < r) {
                        best = Some((rank, target, peer));
                    }
                }
                Err(reason) => {
                    fallback.get_or_insert(reason);
                }
            }
        }
    }
    let Some((_, target, peer)) = best else {
        return Some(host(fallback));
    };
    let endpoint = workers[peer].endpoint.map(|e| e.peer).unwrap_or_default();
    Some(Plan {
        target,
        source: WeightsSource::Peer(PeerSource {
            worker: peer,
            endpoint,
            device: workers[peer].device.clone(),
        }),
        fallback: None,
    })
}

/// Whether worker `target` can copy weights resident on worker `peer` now, or why not.
pub(crate) fn copyable(workers: &[Holder<'_>], peer: usize, target: usize) -> Result<(), String> {
    let (from, to) = (&workers[peer], &workers[target]);
    match from.state {
        WorkerState::Idle | WorkerState::Serving => {}
        WorkerState::Attaching | WorkerState::Detaching => {
            return Err(format!(
                "worker {peer} holds the weights but is busy ({})",
                from.state
            ));
        }
        state => return Err(format!("worker {peer} holds the weights but is {state}")),
    }
    if matches!(from.device, DeviceSpec::Cpu) != matches!(to.device, DeviceSpec::Cpu) {
        return Err(format!(
            "worker {peer} holds the weights on {}, another kind of device than {}",
            from.device, to.device
        ));
    }
    reachable(from.endpoint, to.endpoint).map_err(|why| format!("worker {peer}: {why}"))
}

/// Whether a device with endpoint `to` can reach one with endpoint `from` for a peer copy.
pub(crate) fn reachable(from: Option<Endpoint>, to: Option<Endpoint>) -> Result<(), String> {
    let (Some(from), Some(to)) = (from, to) else {
        return Err("its device lends no weights to peers".into());
    };
    if from.pid.is_some() || to.pid.is_some() {
        return Err(
            "workers run in their own processes (process isolation): a peer copy \
                    between processes needs CUDA IPC handles, not built; reading from the host"
                .into(),
        );
    }
    Ok(())
}

/// Lower is faster.
fn rank(link: LinkKind) -> u8 {
    match link {
        LinkKind::SameDevice => 0,
        LinkKind::Nvlink => 1,
        LinkKind::Pcie => 2,
        LinkKind::None => 3,
    }
}

#[cfg(test)]
#[path = "source_tests.rs"]
mod tests;
