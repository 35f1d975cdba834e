//! Picks the next token from logits: greedy, or sampled with temperature, top-k, top-p and
//! min-p from a seeded generator.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::error::RunError;

/// Chooses tokens for one request.
pub struct Sampler {
    temperature: f64,
    top_p: f64,
    /// Only the `top_k` most likely tokens; 0 keeps all.
    top_k: usize,
    /// Only tokens at least `min_p` times as likely as the most likely; 0 keeps all.
    min_p: f64,
    rng: StdRng,
}

impl Sampler {
    /// `temperature == 0` is greedy. `seed` makes sampling repeatable.
    pub fn new(temperature: f64, top_p: f64, seed: Option<u64>) -> Result<Self, RunError> {
        if !(temperature >= 0.0 && temperature.is_finite()) {
            return Err(RunError::InvalidSampling(format!(
                "temperature must be >= 0, got {temperature}"
            )));
        }
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(RunError::InvalidSampling(format!(
                "top_p must be in (0, 1], got {top_p}"
            )));
        }
        let rng = match seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Ok(Self {
            temperature,
            top_p,
            top_k: 0,
            min_p: 0.0,
            rng,
        })
    }

    /// Keeps only the `top_k` most likely tokens (0: all) and those at least `min_p` times as
    /// likely as the most likely one (0: all).
    pub fn with_filters(mut self, top_k: usize, min_p: f64) -> Result<Self, RunError> {
        if !(0.0..=1.0).contains(&min_p) {
            return Err(RunError::InvalidSampling(format!(
                "min_p must be in [0, 1], got {min_p}"
            )));
        }
        self.top_k = top_k;
        self.min_p = min_p;
        Ok(self)
    }

    /// Whether this sampler takes the argmax (temperature 0, or only the most likely token
    /// kept).
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0 || self.top_k == 1
    }

    /// The next token for these logits.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.is_greedy() {
            return argmax(logits);
        }
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut probs: Vec<(u32, f64)> = logits
            .iter()
            .enumerate()
            .map(|(i, l)| (i as u32, (((*l - max) as f64) / self.temperature).exp()))
            .collect();
        // Stable: equally likely tokens stay in id order, the first of them kept by top-k.
        probs.sort_by(|a, b| b.1.total_cmp(&a.1));
        if self.top_k > 0 {
            probs.truncate(self.top_k);
        }
        if self.min_p > 0.0 {
            let floor = probs.first().map_or(0.0, |p| p.1) * self.min_p;
            probs.retain(|p| p.1 >= floor);
        }
        let total: f64 = probs.iter().map(|p| p.1).sum();
        let mut kept = 0.0;
        let mut cut = probs.len();
        for (i, (_, p)) in probs.iter().enumerate() {
            kept += p / total;
            if kept >= self.top_p {
                cut = i + 1;
                break;
            }
        }
        probs.truncate(cut);
        let mass: f64 = probs.iter().map(|p| p.1).sum();
        let mut target = self.rng.random::<f64>() * mass;
        for (id, p) in &probs {
            target -= p;
            if target <= 0.0 {
                return *id;
            }
        }
        probs.last().map(|p| p.0).unwrap_or(0)
    }
}

/// Index of the largest logit; the first one on ties, as `torch.argmax`.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in logits.iter().enumerate() {
        if *v > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = Sampler::new(0.0, 1.0, Some(1)).unwrap();
        assert_eq!(s.sample(&[0.1, 3.0, 3.0, -1.0]), 1);
    }

    #[test]
    fn same_seed_same_tokens_and_top_p_cuts_the_tail() {
        let logits = [2.0, 1.9, -10.0, -10.0];
        let draw = |seed| {
            let mut s = Sampler::new(1.0, 0.9, Some(seed)).unwrap();
            (0..50).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert!(
            draw(7).iter().all(|t| *t < 2),
            "top_p 0.9 keeps only the two likely tokens"
        );
        assert!(draw(7).contains(&0) && draw(7).contains(&1));
    }

    #[test]
    fn top_k_and_min_p_keep_only_the_likely_tokens() {
        let logits = [2.0, 1.9, 1.8, -1.0];
        let draw = |top_k, min_p| {
            let mut s = Sampler::new(1.0, 1.0, Some(3))
                .unwrap()
                .with_filters(top_k, min_p)
                .unwrap();
            (0..1000).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert!(draw(1, 0.0).iter().all(|t| *t == 0), "top_k 1 is greedy");
        assert!(draw(2, 0.0).iter().all(|t| *t < 2) && draw(2, 0.0).contains(&1));
        // exp(-3) of the top one's probability is under 0.1: token 3 goes, the others stay.
        assert!(draw(0, 0.1).iter().all(|t| *t < 3) && draw(0, 0.1).contains(&2));
        assert!(
            draw(0, 0.0).contains(&3),
            "no filter keeps the unlikely token"
        );
        assert!(Sampler::new(1.0, 1.0, None)
            .unwrap()
            .with_filters(0, 1.5)
            .is_err());
    }

    #[test]
    fn bad_parameters_are_errors() {
        assert!(Sampler::new(-1.0, 1.0, None).is_err());
        assert!(Sampler::new(1.0, 0.0, None).is_err());
        assert!(Sampler::new(1.0, 1.5, None).is_err());
    }
}
