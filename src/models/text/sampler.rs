//! Picks the next token from logits: greedy, or sampled with temperature and top-p from a seeded generator.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::error::RunError;

/// Chooses tokens for one request.
pub struct Sampler {
    temperature: f64,
    top_p: f64,
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
            rng,
        })
    }

    /// Whether this sampler takes the argmax.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// The next token for these logits.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.temperature == 0.0 {
            return argmax(logits);
        }
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut probs: Vec<(u32, f64)> = logits
            .iter()
            .enumerate()
            .map(|(i, l)| (i as u32, (((*l - max) as f64) / self.temperature).exp()))
            .collect();
        probs.sort_by(|a, b| b.1.total_cmp(&a.1));
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
    fn bad_parameters_are_errors() {
        assert!(Sampler::new(-1.0, 1.0, None).is_err());
        assert!(Sampler::new(1.0, 0.0, None).is_err());
        assert!(Sampler::new(1.0, 1.5, None).is_err());
    }
}
