//! Token logprobs: the log-softmax of the raw logits, the top ones sorted.

use super::token_logprobs;

#[test]
fn logprobs_are_the_log_softmax_and_top_is_sorted() {
    let logits = [1.0f32, 3.0, 2.0, 3.0];
    let l = token_logprobs(&logits, 2, 3, None);
    let norm = logits.iter().map(|&x| (x as f64).exp()).sum::<f64>().ln();
    assert!((l.logprob as f64 - (2.0 - norm)).abs() < 1e-6);
    let ids: Vec<u32> = l.top.iter().map(|t| t.0).collect();
    assert_eq!(ids, [1, 3, 2]);
}
