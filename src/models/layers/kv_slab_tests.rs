//! When a reserved slab's memory is allocated: a CPU slab takes none of its budget at attach and
//! grows, keeping what it holds, up to the budget and no further; an eager (GPU) one holds all
//! of it from the reserve on. Both count the whole budget as the engine's bytes.

use candle_core::{DType, Device, Tensor};

use super::{Allocation, KvSlab};
use crate::models::layers::kv_cache::KvCache;

const LAYERS: usize = 2;
const HEADS: usize = 2;
const DIM: usize = 3;

/// Bytes of `slots` slots of keys and values, every layer, in f32.
fn bytes(slots: usize) -> u64 {
    (2 * LAYERS * slots * HEADS * DIM * 4) as u64
}

fn cpu_slab() -> KvSlab {
    KvSlab::new(LAYERS, HEADS, DIM, DType::F32, &Device::Cpu)
}

/// Writes `value` into `slot` of every layer's keys.
fn write(slab: &KvSlab, slot: u32, value: f32) {
    let row = Tensor::full(value, (HEADS, 1, DIM), &Device::Cpu).unwrap();
    for (k, _) in slab.tensors() {
        k.slice_set(&row, 1, slot as usize).unwrap();
    }
}

/// The keys of `slot` in every layer (the first value of each).
fn read(slab: &KvSlab, slot: u32) -> Vec<f32> {
    slab.tensors()
        .iter()
        .map(|(k, _)| {
            let row = k
                .narrow(1, slot as usize, 1)
                .unwrap()
                .flatten_all()
                .unwrap();
            row.to_vec1::<f32>().unwrap()[0]
        })
        .collect()
}

#[test]
fn a_cpu_attach_reserves_the_budget_without_allocating_it() {
    assert_eq!(Allocation::for_device(&Device::Cpu), Allocation::Lazy);
    let slab = cpu_slab();
    slab.reserve(32_768).unwrap();
    assert_eq!(
        slab.capacity(),
        0,
        "nothing allocated (or zeroed) at attach"
    );
    assert_eq!(
        slab.free_slots(),
        32_768,
        "the whole budget is there to take"
    );
    assert_eq!(
        slab.device_bytes(),
        bytes(32_768),
        "the engine's size counts its whole budget, as the fit check does"
    );
    let mut warm_up = KvCache::new();
    warm_up.reserve(2, &slab).unwrap();
    assert_eq!(
        slab.capacity(),
        256,
        "the first slots allocate one small block"
    );
    assert_eq!(slab.device_bytes(), bytes(32_768));
}

#[test]
fn a_lazy_slab_grows_keeping_what_it_holds_up_to_its_budget_and_no_further() {
    let slab = cpu_slab();
    slab.reserve(300).unwrap();
    let mut a = KvCache::new();
    a.reserve(200, &slab).unwrap();
    assert_eq!(slab.capacity(), 256);
    let first = a.slots(0, 1)[0];
    write(&slab, first, 42.0);
    let mut b = KvCache::new();
    b.reserve(100, &slab).unwrap();
    assert_eq!(
        slab.capacity(),
        300,
        "grown to the budget, not doubled past it"
    );
    assert_eq!(
        read(&slab, first),
        [42.0; LAYERS],
        "the slots held kept their values"
    );
    assert_eq!(slab.free_slots(), 0);
    let err = KvCache::new().reserve(1, &slab).unwrap_err().to_string();
    assert!(err.contains("KV cache is full"), "{err}");
    drop(b);
    assert_eq!(slab.free_slots(), 100);
    assert_eq!(
        slab.capacity(),
        300,
        "freed slots stay allocated for the next sequence"
    );
}

#[test]
fn an_eager_slab_holds_its_whole_budget_from_the_reserve_on() {
    let slab = KvSlab::with_allocation(
        LAYERS,
        HEADS,
        DIM,
        DType::F32,
        &Device::Cpu,
        Allocation::Eager,
    );
    slab.reserve(300).unwrap();
    assert_eq!((slab.capacity(), slab.free_slots()), (300, 300));
    assert_eq!(slab.device_bytes(), bytes(300));
    let err = KvCache::new().reserve(301, &slab).unwrap_err().to_string();
    assert!(err.contains("KV cache is full"), "{err}");
}

#[test]
fn an_unreserved_slab_grows_by_doubling_without_a_limit() {
    let slab = cpu_slab();
    assert_eq!(slab.device_bytes(), 0);
    let mut a = KvCache::new();
    a.reserve(300, &slab).unwrap();
    assert_eq!(slab.capacity(), 300);
    let mut b = KvCache::new();
    b.reserve(1, &slab).unwrap();
    assert_eq!(slab.capacity(), 600);
    assert_eq!(slab.device_bytes(), bytes(600));
}
