//! The slab's slots given and freed, reused slots holding only what their new owner wrote, and
//! writes of a pass landing where its reads (prefill and batched decode) find them.

use candle_core::{DType, Device, Tensor};

use super::KvPass;
use crate::models::layers::kv_cache::KvCache;
use crate::models::layers::kv_cache::TokenCache;
use crate::models::layers::kv_slab::{Allocation, KvSlab};
use crate::models::layers::packing::packing_order;

const LAYERS: usize = 2;
const HEADS: usize = 2;
const DIM: usize = 3;

fn slab() -> KvSlab {
    KvSlab::new(LAYERS, HEADS, DIM, DType::F32, &Device::Cpu)
}

/// A slab that allocates its reserve at once, as on a GPU.
fn eager_slab() -> KvSlab {
    KvSlab::with_allocation(
        LAYERS,
        HEADS,
        DIM,
        DType::F32,
        &Device::Cpu,
        Allocation::Eager,
    )
}

/// `[tokens, HEADS, DIM]` with every value of token `t` equal to `base + t`.
fn tokens(base: f32, count: usize) -> Tensor {
    let values: Vec<f32> = (0..count)
        .flat_map(|t| std::iter::repeat_n(base + t as f32, HEADS * DIM))
        .collect();
    Tensor::from_vec(values, (count, HEADS, DIM), &Device::Cpu).unwrap()
}

/// One pass: reserves `new[i]` tokens in each cache, writes `base[i] + t` (keys) and its
/// negation (values) in every layer, and returns the pass before the lengths advance.
fn pass(slab: &KvSlab, caches: &mut [&mut KvCache], new: &[usize], base: &[f32]) -> KvPass {
    pass_windows(slab, caches, new, base, &[None])
}

/// [`pass`] for layers with these windows.
fn pass_windows(
    slab: &KvSlab,
    caches: &mut [&mut KvCache],
    new: &[usize],
    base: &[f32],
    windows: &[Option<usize>],
) -> KvPass {
    for (cache, &n) in caches.iter_mut().zip(new) {
        cache.reserve(n, slab).unwrap();
    }
    let order = packing_order(new.iter().copied(), false);
    let refs: Vec<&KvCache> = caches.iter().map(|c| &**c).collect();
    let kv = KvPass::new(slab, &refs, new, &order, windows, DType::F32, &Device::Cpu).unwrap();
    let packed: Vec<Tensor> = order
        .order
        .iter()
        .map(|&i| tokens(base[i], new[i]))
        .collect();
    let k = Tensor::cat(&packed, 0).unwrap();
    for layer in 0..LAYERS {
        let scale = (layer + 1) as f64;
        kv.write(layer, &(&k * scale).unwrap(), &(&k * -scale).unwrap())
            .unwrap();
    }
    kv
}

/// The first value of each token of `[kv_heads, tokens, head_dim]`, checking every head agrees.
fn per_token(t: &Tensor) -> Vec<f32> {
    let all: Vec<Vec<Vec<f32>>> = t.to_vec3().unwrap();
    for head in &all {
        assert_eq!(head, &all[0], "every head holds the same values here");
    }
    all[0].iter().map(|row| row[0]).collect()
}

#[test]
fn slots_are_given_and_freed_and_a_reserved_slab_is_fixed() {
    let slab = eager_slab();
    slab.reserve(8).unwrap();
    assert_eq!((slab.capacity(), slab.free_slots()), (8, 8));
    assert_eq!(
        slab.device_bytes(),
        (2 * LAYERS * 8 * HEADS * DIM * 4) as u64
    );
    let (mut a, mut b) = (KvCache::new(), KvCache::new());
    a.reserve(5, &slab).unwrap();
    assert_eq!(slab.free_slots(), 3);
    assert!(
        b.reserve(4, &slab).is_err(),
        "a reserved slab does not grow"
    );
    drop(a);
    assert_eq!(slab.free_slots(), 8);
    b.reserve(4, &slab).unwrap();
    assert_eq!((slab.capacity(), slab.free_slots()), (8, 4));
    let other = self::slab();
    assert!(
        b.reserve(1, &other).is_err(),
        "a cache stays on its own slab"
    );
}

#[test]
fn an_unreserved_slab_grows_keeping_what_it_holds() {
    let slab = slab();
    assert_eq!(slab.device_bytes(), 0);
    let mut a = KvCache::new();
    pass(&slab, &mut [&mut a], &[3], &[10.0]);
    a.advance(3);
    let mut big = KvCache::new();
    big.reserve(300, &slab).unwrap();
    assert!(slab.capacity() >= 303);
    let kv = pass(&slab, &mut [&mut a], &[2], &[20.0]);
    let (k, _) = kv.read(0, 0, 0, 5).unwrap();
    assert_eq!(per_token(&k), [10.0, 11.0, 12.0, 20.0, 21.0]);
}

#[test]
fn writes_land_where_prefill_and_decode_reads_find_them() {
    let slab = slab();
    let (mut a, mut b) = (KvCache::new(), KvCache::new());
    // Both prefill: a three tokens, b two.
    let kv = pass(&slab, &mut [&mut a, &mut b], &[3, 2], &[10.0, 20.0]);
    let (k, v) = kv.read(1, 1, 0, 2).unwrap();
    assert_eq!(per_token(&k), [40.0, 42.0], "layer 1 keys are doubled");
    assert_eq!(per_token(&v), [-40.0, -42.0]);
    let (k, _) = kv.read(0, 0, 1, 3).unwrap();
    assert_eq!(per_token(&k), [11.0, 12.0], "a window starts later");
    a.advance(3);
    b.advance(2);
    // Both decode: one token each, read together padded to a's four positions.
    let kv = pass(&slab, &mut [&mut a, &mut b], &[1, 1], &[13.0, 22.0]);
    let (k, v) = kv.decode_kv(0).unwrap();
    assert_eq!(k.dims(), [HEADS, 2, 4, DIM]);
    let seq = |t: &Tensor, i| per_token(&t.get_on_dim(1, i).unwrap());
    assert_eq!(seq(&k, 0), [10.0, 11.0, 12.0, 13.0]);
    assert_eq!(seq(&v, 0), [-10.0, -11.0, -12.0, -13.0]);
    assert_eq!(seq(&k, 1)[..3], [20.0, 21.0, 22.0]);
    let mask: Vec<f32> = kv
        .decode_mask(None)
        .unwrap()
        .expect("a padded pass masks")
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let seen: Vec<bool> = mask.iter().map(|m| m.is_finite()).collect();
    assert_eq!(seen, [true, true, true, true, true, true, true, false]);
    assert_eq!(
        (a.len(), b.len()),
        (3, 2),
        "lengths move on only when advanced"
    );
}

#[test]
fn a_lone_decode_reads_its_run_in_place_and_a_scattered_one_gathers() {
    let slab = slab();
    let mut a = KvCache::new();
    pass(&slab, &mut [&mut a], &[3], &[10.0]);
    a.advance(3);
    let kv = pass_windows(&slab, &mut [&mut a], &[1], &[13.0], &[None, Some(2)]);
    let (k, v) = kv.decode_kv(0).unwrap();
    assert_eq!(k.dims(), [HEADS, 1, 4, DIM]);
    assert_eq!(
        per_token(&k.get_on_dim(1, 0).unwrap()),
        [10.0, 11.0, 12.0, 13.0]
    );
    assert_eq!(
        per_token(&v.get_on_dim(1, 0).unwrap()),
        [-10.0, -11.0, -12.0, -13.0]
    );
    assert!(
        !k.is_contiguous(),
        "a view of the slab, not a gathered copy"
    );
    assert!(kv.decode_mask(None).unwrap().is_none(), "nothing to mask");
    assert!(
        kv.decode_mask(Some(2)).unwrap().is_some(),
        "a window shorter than the sequence still masks"
    );
    // Slots out of order (a's freed slots reused after b's): read by a gather.
    let mut b = KvCache::new();
    pass(&slab, &mut [&mut b], &[2], &[30.0]);
    drop(a);
    let mut c = KvCache::new();
    pass(&slab, &mut [&mut c], &[6], &[40.0]);
    c.advance(6);
    let kv = pass(&slab, &mut [&mut c], &[1], &[46.0]);
    let (k, _) = kv.decode_kv(0).unwrap();
    assert_eq!(
        per_token(&k.get_on_dim(1, 0).unwrap()),
        [40.0, 41.0, 42.0, 43.0, 44.0, 45.0, 46.0]
    );
}

#[test]
fn a_reused_slot_holds_only_what_its_new_owner_wrote() {
    let slab = slab();
    slab.reserve(4).unwrap();
    let mut a = KvCache::new();
    pass(&slab, &mut [&mut a], &[4], &[50.0]);
    let freed = a.slots(0, 4).to_vec();
    drop(a);
    let mut c = KvCache::new();
    let kv = pass(&slab, &mut [&mut c], &[2], &[7.0]);
    assert!(c.slots(0, 2).iter().all(|s| freed.contains(s)));
    for layer in 0..LAYERS {
        let scale = (layer + 1) as f32;
        let (k, v) = kv.read(0, layer, 0, 2).unwrap();
        assert_eq!(per_token(&k), [7.0 * scale, 8.0 * scale]);
        assert_eq!(per_token(&v), [-7.0 * scale, -8.0 * scale]);
    }
}

#[test]
fn a_prefill_over_scattered_slots_is_written_run_by_run() {
    let slab = slab();
    slab.reserve(5).unwrap();
    let (mut x, mut y, mut z) = (KvCache::new(), KvCache::new(), KvCache::new());
    pass(
        &slab,
        &mut [&mut x, &mut y, &mut z],
        &[2, 2, 1],
        &[1.0, 3.0, 5.0],
    );
    drop(x);
    drop(z);
    let mut c = KvCache::new();
    let kv = pass(&slab, &mut [&mut c], &[3], &[30.0]);
    assert_eq!(
        c.slots(0, 3),
        [4, 0, 1],
        "two runs: slot 4, then slots 0 and 1"
    );
    let (k, _) = kv.read(0, 1, 0, 3).unwrap();
    assert_eq!(per_token(&k), [60.0, 62.0, 64.0]);
    let (k, _) = kv.read(0, 0, 0, 2).unwrap();
    assert_eq!(per_token(&k), [30.0, 31.0]);
    drop(kv);
    drop(c);
    y.advance(2);
    let kv = pass(&slab, &mut [&mut y], &[1], &[5.0]);
    let (k, _) = kv.decode_kv(0).unwrap();
    assert_eq!(
        per_token(&k.get_on_dim(1, 0).unwrap()),
        [3.0, 4.0, 5.0],
        "y kept its own"
    );
}
