//! Buckets' shapes and what a fill writes into a bucket's buffers.

use super::{bucket_of, reserve_bytes, Bucket};
use crate::models::layers::kv_cache::KvCache;
use crate::models::layers::kv_slab::KvSlab;
use candle_core::{DType, Device};

#[test]
fn a_fill_writes_every_input_and_pads_with_row_zero() {
    let cpu = Device::Cpu;
    let slab = KvSlab::new(1, 2, 4, DType::F32, &cpu);
    // Two sequences of 2 and 4 cached tokens, each with its new token's slot reserved.
    let (mut a, mut b) = (KvCache::new(), KvCache::new());
    a.reserve(3, &slab).unwrap();
    b.reserve(5, &slab).unwrap();
    a.advance(2);
    b.advance(4);
    let bucket = Bucket::new(4, 128, (2, 4), &[None, Some(2)], 10, DType::F32, &cpu).unwrap();
    let windows = [None, Some(2)];
    bucket
        .fill(&[&a, &b], &[7, 9], &[3, 5], &windows, DType::F32, &cpu)
        .unwrap();
    let u32s = |t: &candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<u32>().unwrap();
    assert_eq!(u32s(&bucket.ids), [7, 9, 7, 7]);
    assert_eq!(u32s(&bucket.positions), [2, 4, 2, 2]);
    assert_eq!(u32s(&bucket.lens), [3, 5, 3, 3]);
    let (a_slots, b_slots) = (a.slots(0, 3).to_vec(), b.slots(0, 5).to_vec());
    let gather = u32s(&bucket.gather);
    assert_eq!(gather[..3], a_slots[..]);
    assert!(
        gather[3..128].iter().all(|&s| s == a_slots[0]),
        "padding keys"
    );
    assert_eq!(gather[128..133], b_slots[..]);
    assert_eq!(gather[256..259], a_slots[..], "a padding row repeats row 0");
    // Every head and dimension of a row's scatter index is its new token's slot.
    let scatter = u32s(&bucket.scatter);
    for head in 0..2 {
        let row = |r: usize| scatter[(head * 4 + r) * 4..(head * 4 + r + 1) * 4].to_vec();
        assert_eq!(row(0), [a_slots[2]; 4]);
        assert_eq!(row(1), [b_slots[4]; 4]);
        assert_eq!(row(3), [a_slots[2]; 4]);
    }
    // Row 1 (5 positions) sees keys 0..5, and with a window of 2 only keys 3 and 4.
    let seen = |window: Option<usize>| -> Vec<bool> {
        let (_, mask) = bucket.masks.iter().find(|(w, _)| *w == window).unwrap();
        let values = mask
            .as_ref()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        values[128..136].iter().map(|v| v.is_finite()).collect()
    };
    assert_eq!(
        seen(None),
        [true, true, true, true, true, false, false, false]
    );
    assert_eq!(
        seen(Some(2)),
        [false, false, false, true, true, false, false, false]
    );
}

#[test]
fn buckets_round_the_batch_to_a_power_of_two_and_keys_to_128_then_powers() {
    assert_eq!(bucket_of(1, 33), Some((1, 128)));
    assert_eq!(bucket_of(3, 129), Some((4, 256)));
    assert_eq!(bucket_of(64, 160), Some((64, 256)));
    assert_eq!(bucket_of(2, 1500), Some((2, 2048)));
    assert_eq!(bucket_of(129, 10), None);
    assert_eq!(bucket_of(128, 4000), None);
}

#[test]
fn the_reserve_covers_the_largest_buckets_outputs_and_logits() {
    // Llama 3 8B: 128 256 tokens, bf16. 24 buckets of at most 128 rows, each row holding f32
    // output, f32 and bf16 logits (1.28 MB): between 24 * 32 rows' and 24 * 128 rows' worth.
    let per_row = 128_256u64 * 10;
    let reserve = reserve_bytes(128_256, 2);
    assert!(reserve > 24 * 32 * per_row, "{reserve}");
    assert!(reserve < 24 * 128 * per_row + (1 << 30), "{reserve}");
    // Grows with the vocabulary and the dtype.
    assert!(reserve_bytes(256_000, 2) > reserve);
    assert!(reserve_bytes(128_256, 4) > reserve);
}
