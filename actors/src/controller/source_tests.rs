//! The source choice on CPU: a peer's resident copy is preferred to the host path, the target's
//! own parked copy to both, and a peer that is busy, failed or in another process is passed
//! over with the reason.

use super::*;

const LLAMA: &str = "llama-files:bf16";

fn holder<'a>(device: &'a DeviceSpec, state: WorkerState, resident: &'a [String]) -> Holder<'a> {
    Holder {
        device,
        state,
        resident,
        endpoint: Some(Endpoint {
            peer: 1 + resident.len() as u64,
            pid: None,
        }),
    }
}

fn links(kinds: &[&[LinkKind]]) -> Vec<Vec<LinkKind>> {
    kinds.iter().map(|row| row.to_vec()).collect()
}

fn peer_of(plan: &Plan) -> Option<usize> {
    match &plan.source {
        WeightsSource::Peer(peer) => Some(peer.worker),
        _ => None,
    }
}

#[test]
fn a_copy_attached_on_another_gpu_is_copied_from_instead_of_read_from_the_host() {
    let (a, b) = (DeviceSpec::Cuda(0), DeviceSpec::Cuda(1));
    let held = vec![LLAMA.to_string()];
    let workers = [
        holder(&a, WorkerState::Serving, &held),
        holder(&b, WorkerState::Idle, &[]),
    ];
    let nvlink = links(&[
        &[LinkKind::SameDevice, LinkKind::Nvlink],
        &[LinkKind::Nvlink, LinkKind::SameDevice],
    ]);
    let planned = plan_for(LLAMA, &[1], &workers, &nvlink);
    assert_eq!(planned.target, 1);
    assert_eq!(peer_of(&planned), Some(0));
    assert_eq!(planned.fallback, None);
    match planned.source {
        WeightsSource::Peer(peer) => {
            assert_eq!(peer.device, a);
            assert_eq!(peer.endpoint, 2, "the peer's own endpoint");
        }
        other => panic!("expected a peer copy, got {other:?}"),
    }
    // Other weights: the host path, with nothing to explain.
    let other = plan_for("other-files:f16", &[1], &workers, &nvlink);
    assert_eq!(other.source, WeightsSource::Host);
    assert_eq!(other.fallback, None);
}

fn plan_for(
    weights: &str,
    ready: &[usize],
    workers: &[Holder<'_>],
    links: &[Vec<LinkKind>],
) -> Plan {
    plan(weights, ready, workers, links).expect("a ready worker")
}

#[test]
fn the_only_copy_on_the_target_itself_is_a_parked_reattach_not_a_peer_copy() {
    let cpu = DeviceSpec::Cpu;
    let held = vec![LLAMA.to_string()];
    let workers = [
        holder(&cpu, WorkerState::Idle, &[]),
        holder(&cpu, WorkerState::Idle, &held),
    ];
    let none = links(&[&[LinkKind::None; 2], &[LinkKind::None; 2]]);
    // Asked for on the worker that parks it.
    let pinned = plan_for(LLAMA, &[1], &workers, &none);
    assert_eq!((pinned.target, pinned.source), (1, WeightsSource::Parked));
    // Free to choose: the parked worker beats the lower-numbered one and any peer copy.
    let free = plan_for(LLAMA, &[0, 1], &workers, &none);
    assert_eq!((free.target, free.source), (1, WeightsSource::Parked));
    // Asked for on the other worker: copied from the parked one.
    let other = plan_for(LLAMA, &[0], &workers, &none);
    assert_eq!((other.target, peer_of(&other)), (0, Some(1)));
}

#[test]
fn a_busy_or_failed_peer_falls_back_to_the_host_path_with_the_reason() {
    let (a, b) = (DeviceSpec::Cuda(0), DeviceSpec::Cuda(1));
    let held = vec![LLAMA.to_string()];
    let pcie = links(&[&[LinkKind::Pcie; 2], &[LinkKind::Pcie; 2]]);
    for (state, why) in [
        (WorkerState::Attaching, "busy"),
        (WorkerState::Detaching, "busy"),
        (WorkerState::Failed, "failed"),
        (WorkerState::Restarting, "restarting"),
    ] {
        let workers = [holder(&a, state, &held), holder(&b, WorkerState::Idle, &[])];
        let plan = plan_for(LLAMA, &[1], &workers, &pcie);
        assert_eq!(
            (plan.target, &plan.source),
            (1, &WeightsSource::Host),
            "{state}"
        );
        let reason = plan.fallback.unwrap_or_default();
        assert!(
            reason.contains("worker 0") && reason.contains(why),
            "{state}: {reason}"
        );
    }
}

#[test]
fn workers_in_their_own_processes_fall_back_to_the_host_path() {
    let (a, b) = (DeviceSpec::Cuda(0), DeviceSpec::Cuda(1));
    let held = vec![LLAMA.to_string()];
    let mut workers = [
        holder(&a, WorkerState::Serving, &held),
        holder(&b, WorkerState::Idle, &[]),
    ];
    workers[0].endpoint = Some(Endpoint {
        peer: 1,
        pid: Some(100),
    });
    workers[1].endpoint = Some(Endpoint {
        peer: 1,
        pid: Some(101),
    });
    let nvlink = links(&[&[LinkKind::Nvlink; 2], &[LinkKind::Nvlink; 2]]);
    let plan = plan_for(LLAMA, &[1], &workers, &nvlink);
    assert_eq!(plan.source, WeightsSource::Host);
    assert!(plan.fallback.unwrap().contains("CUDA IPC"));
    // A device that lends nothing (no endpoint) is no source either.
    workers[0].endpoint = None;
    workers[1].endpoint = Some(Endpoint { peer: 1, pid: None });
    let plan = plan_for(LLAMA, &[1], &workers, &nvlink);
    assert_eq!(plan.source, WeightsSource::Host);
    assert!(plan.fallback.unwrap().contains("lends no weights"));
}

#[test]
fn the_fastest_link_wins_among_peers_and_targets() {
    let devices = [
        DeviceSpec::Cuda(0),
        DeviceSpec::Cuda(1),
        DeviceSpec::Cuda(2),
    ];
    let held = vec![LLAMA.to_string()];
    let workers = [
        holder(&devices[0], WorkerState::Serving, &held),
        holder(&devices[1], WorkerState::Idle, &[]),
        holder(&devices[2], WorkerState::Idle, &[]),
    ];
    // 0 reaches 1 over PCIe and 2 over NVLink: the attach goes to 2.
    let mixed = links(&[
        &[LinkKind::SameDevice, LinkKind::Pcie, LinkKind::Nvlink],
        &[LinkKind::Pcie, LinkKind::SameDevice, LinkKind::Pcie],
        &[LinkKind::Nvlink, LinkKind::Pcie, LinkKind::SameDevice],
    ]);
    let planned = plan_for(LLAMA, &[1, 2], &workers, &mixed);
    assert_eq!((planned.target, peer_of(&planned)), (2, Some(0)));
    // Unknown weights (a backend that names none) never plan a copy.
    let unnamed = plan_for("", &[1, 2], &workers, &mixed);
    assert_eq!((unnamed.target, unnamed.source), (1, WeightsSource::Host));
    assert!(plan_for(LLAMA, &[2], &workers, &[]).fallback.is_none());
    assert_eq!(plan(LLAMA, &[], &workers, &mixed), None);
}

#[test]
fn a_copy_on_another_kind_of_device_is_no_source() {
    let (cpu, gpu) = (DeviceSpec::Cpu, DeviceSpec::Cuda(0));
    let held = vec![LLAMA.to_string()];
    let workers = [
        holder(&cpu, WorkerState::Serving, &held),
        holder(&gpu, WorkerState::Idle, &[]),
    ];
    let none = links(&[&[LinkKind::None; 2], &[LinkKind::None; 2]]);
    let plan = plan_for(LLAMA, &[1], &workers, &none);
    assert_eq!(plan.source, WeightsSource::Host);
    assert!(plan.fallback.unwrap().contains("another kind of device"));
}
