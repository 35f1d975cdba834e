//! A CPU attach is checked against what the host can still give, not against its total memory:
//! a KV budget larger than the available memory is refused before anything is allocated.

mod common;

use common::{fixture, spec};
use wc_actors::{DeviceSpec, ErrorKind, PrewarmOptions, Timeline, WorkerDevice};
use worker_controller::load::LoadError;
use worker_controller::CandleDevice;

#[test]
fn a_kv_budget_past_the_available_host_memory_is_refused_up_front() {
    let model = fixture("tiny-opt-prenorm");
    let footprint = worker_controller::backend::inspect(&spec(&model))
        .unwrap()
        .footprint;
    let (total, available) = worker_controller::load::device::host_memory();
    assert!(total > available && available > 0, "meminfo read");
    // Below the host's total (what the check used to count as free) but above what is left.
    let target = available + (total - available) / 2;
    let options = PrewarmOptions {
        kv_cache_tokens: (target / footprint.kv_bytes_per_token) as usize,
        host_cache_bytes: 64 << 20,
        ..PrewarmOptions::default()
    };
    let (mut device, _) = CandleDevice::open(&DeviceSpec::Cpu, Some(&options)).unwrap();
    let error = device
        .load_as::<worker_controller::models::OptEngine>(&spec(&model), &mut Timeline::default())
        .err()
        .expect("refused");
    let LoadError::DoesNotFit {
        needed_bytes,
        free_bytes,
    } = error
    else {
        panic!("expected DoesNotFit, got {error:?}");
    };
    assert!(needed_bytes > free_bytes && free_bytes <= available + (64 << 20));
    let refused = device
        .load(
            &spec(&model),
            &wc_actors::Handoff::default(),
            &mut Timeline::default(),
        )
        .err()
        .unwrap();
    assert_eq!(refused.kind, ErrorKind::OutOfMemory, "{}", refused.message);

    // The same worker still attaches within what it has.
    let small = PrewarmOptions {
        kv_cache_tokens: 256,
        ..options
    };
    let (mut device, _) = CandleDevice::open(&DeviceSpec::Cpu, Some(&small)).unwrap();
    device
        .load(
            &spec(&model),
            &wc_actors::Handoff::default(),
            &mut Timeline::default(),
        )
        .expect("a budget that fits attaches");
}
