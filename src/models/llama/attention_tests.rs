//! The attention mask of a prefill chunk: causal from its cache, and sliding windows.

use super::mask;
use candle_core::Device;

fn allowed(t: usize, past: usize, start: usize, window: Option<usize>) -> Vec<Vec<bool>> {
    let m: Vec<Vec<f32>> = mask(t, past, start, window, &Device::Cpu)
        .unwrap()
        .unwrap()
        .to_vec2()
        .unwrap();
    m.iter()
        .map(|row| row.iter().map(|v| v.is_finite()).collect())
        .collect()
}

#[test]
fn causal_mask_offsets_by_the_cache() {
    // Two new tokens after three cached: each sees the past and itself.
    let a = allowed(2, 3, 0, None);
    assert_eq!(a[0], vec![true, true, true, true, false]);
    assert_eq!(a[1], vec![true, true, true, true, true]);
}

#[test]
fn sliding_window_sees_itself_and_window_minus_one_before() {
    // Window 2, positions 0..4, no cache: position p sees p-1 and p.
    let a = allowed(4, 0, 0, Some(2));
    assert_eq!(a[0], vec![true, false, false, false]);
    assert_eq!(a[3], vec![false, false, true, true]);
}

#[test]
fn sliding_window_with_keys_starting_later() {
    // Window 3, past 5 (keys from position 3), two new tokens at 5 and 6.
    let a = allowed(2, 5, 3, Some(3));
    assert_eq!(a[0], vec![true, true, true, false]);
    assert_eq!(a[1], vec![false, true, true, true]);
}
