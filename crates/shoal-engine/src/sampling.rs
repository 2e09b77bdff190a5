//! Token sampling on the last stage. Order follows llama.cpp's default chain (penalties, top-k, top-p, min-p,
//! temperature, draw) so parameters mean the same thing as in llama.cpp-based servers.

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::error::{EngineError, Result};

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SamplingParams {
    /// 0 (or below) selects greedy decoding.
    pub temperature: f32,
    /// 0 disables.
    pub top_k: usize,
    /// 1 disables.
    pub top_p: f32,
    /// 0 disables; drops tokens whose probability is below `min_p` × the most likely token's.
    pub min_p: f32,
    /// 1 disables; llama.cpp semantics (positive logits divided, negative multiplied).
    pub repetition_penalty: f32,
    /// Subtracted once from the logit of every token seen in the window (OpenAI semantics).
    pub presence_penalty: f32,
    /// Subtracted per occurrence in the window (OpenAI semantics).
    pub frequency_penalty: f32,
    /// How many most recent tokens (prompt included) the penalties look at; 0 means all of them.
    pub penalty_last_n: usize,
    /// `None` draws a fresh seed per sampler.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            penalty_last_n: 64,
            seed: None,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0 || self.top_k == 1
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str| Err(EngineError::InvalidRequest(what.to_string()));
        let all_finite = [
            self.temperature,
            self.top_p,
            self.min_p,
            self.repetition_penalty,
            self.presence_penalty,
            self.frequency_penalty,
        ]
        .iter()
        .all(|v| v.is_finite());
        if !all_finite {
            return bad("sampling parameters must be finite numbers");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p must be in (0, 1]");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p must be in [0, 1]");
        }
        if self.repetition_penalty <= 0.0 {
            return bad("repetition_penalty must be positive");
        }
        Ok(())
    }
}

#[derive(Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
    counts: Vec<(u32, u32)>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        let seed = params.seed.unwrap_or_else(|| {
            use std::hash::{BuildHasher, Hasher};
            // RandomState is seeded from the OS per process plus a counter, enough for a non-reproducible draw.
            std::collections::hash_map::RandomState::new().build_hasher().finish()
        });
        Ok(Self {
            params,
            rng: ChaCha8Rng::seed_from_u64(seed),
            counts: Vec::new(),
        })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token. `history` is the sequence so far (prompt and generated tokens), used by the penalties.
    /// `logits` is modified in place.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> Result<u32> {
        self.apply_penalties(logits, history);
        if self.params.is_greedy() {
            return argmax(logits).ok_or_else(no_candidates);
        }
        let mut cands: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, &l)| (i as u32, l))
            .collect();
        if cands.is_empty() {
            return Err(no_candidates());
        }
        // Descending logit, ascending id on ties, so the same inputs always give the same order.
        let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        let k = self.params.top_k;
        if k > 0 && k < cands.len() {
            cands.select_nth_unstable_by(k - 1, order);
            cands.truncate(k);
        }
        cands.sort_unstable_by(order);

        if self.params.top_p < 1.0 || self.params.min_p > 0.0 {
            let probs = softmax(cands.iter().map(|c| c.1), 1.0);
            let mut keep = cands.len();
            if self.params.top_p < 1.0 {
                let mut cum = 0.0;
                for (i, p) in probs.iter().enumerate() {
                    cum += p;
                    if cum >= self.params.top_p {
                        keep = i + 1;
                        break;
                    }
                }
            }
            if self.params.min_p > 0.0 {
                let threshold = probs[0] * self.params.min_p;
                let above = probs.iter().take_while(|&&p| p >= threshold).count().max(1);
                keep = keep.min(above);
            }
            cands.truncate(keep.max(1));
        }

        let probs = softmax(cands.iter().map(|c| c.1), self.params.temperature);
        let u = self.uniform();
        let mut cum = 0.0;
        for (c, p) in cands.iter().zip(&probs) {
            cum += p;
            if u < cum {
                return Ok(c.0);
            }
        }
        // Rounding can leave the cumulative sum just under u; the last candidate is the right answer then.
        cands.last().map(|c| c.0).ok_or_else(no_candidates)
    }

    fn apply_penalties(&mut self, logits: &mut [f32], history: &[u32]) {
        let p = &self.params;
        if p.repetition_penalty == 1.0 && p.presence_penalty == 0.0 && p.frequency_penalty == 0.0 {
            return;
        }
        let window = if p.penalty_last_n == 0 {
            history
        } else {
            &history[history.len().saturating_sub(p.penalty_last_n)..]
        };
        self.counts.clear();
        let mut sorted: Vec<u32> = window.to_vec();
        sorted.sort_unstable();
        for t in sorted {
            match self.counts.last_mut() {
                Some((id, c)) if *id == t => *c += 1,
                _ => self.counts.push((t, 1)),
            }
        }
        for &(id, count) in &self.counts {
            let Some(l) = logits.get_mut(id as usize) else { continue };
            if p.repetition_penalty != 1.0 {
                *l = if *l > 0.0 {
                    *l / p.repetition_penalty
                } else {
                    *l * p.repetition_penalty
                };
            }
            *l -= count as f32 * p.frequency_penalty + p.presence_penalty;
        }
    }

    /// Uniform in [0, 1) from the top 24 bits, the resolution of an f32 mantissa.
    fn uniform(&mut self) -> f32 {
        (self.rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32
    }
}

fn no_candidates() -> EngineError {
    EngineError::InvalidRequest("no token can be sampled: every logit is NaN or -inf".into())
}

/// Index of the largest finite logit; the lowest id wins ties so greedy decoding is deterministic.
pub fn argmax(logits: &[f32]) -> Option<u32> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &l) in logits.iter().enumerate() {
        if l.is_nan() || l == f32::NEG_INFINITY {
            continue;
        }
        if best.is_none_or(|(_, b)| l > b) {
            best = Some((i, l));
        }
    }
    best.map(|(i, _)| i as u32)
}

fn softmax(logits: impl Iterator<Item = f32> + Clone, temperature: f32) -> Vec<f32> {
    let max = logits.clone().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.map(|l| ((l - max) / temperature).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.0, 3.0, -1.0, f32::NAN, 0.5]
    }

    #[test]
    fn greedy_picks_lowest_id_on_ties_and_skips_nan() {
        let mut s = Sampler::new(SamplingParams::greedy()).unwrap();
        assert_eq!(s.sample(&mut logits(), &[]).unwrap(), 1);
    }

    #[test]
    fn repetition_penalty_changes_greedy_choice() {
        let params = SamplingParams {
            repetition_penalty: 2.0,
            ..SamplingParams::greedy()
        };
        let mut s = Sampler::new(params).unwrap();
        // tokens 1 and 3 penalised: 3.0 / 2 = 1.5 < 2.0, so token 2 wins.
        assert_eq!(s.sample(&mut logits(), &[1, 3]).unwrap(), 2);
    }

    #[test]
    fn presence_and_frequency_penalties() {
        let params = SamplingParams {
            presence_penalty: 0.5,
            frequency_penalty: 0.3,
            ..SamplingParams::greedy()
        };
        let mut s = Sampler::new(params).unwrap();
        let mut l = logits();
        s.sample(&mut l, &[1, 1, 2]).unwrap();
        assert!((l[1] - (3.0 - 0.6 - 0.5)).abs() < 1e-6);
        assert!((l[2] - (2.0 - 0.3 - 0.5)).abs() < 1e-6);
        assert_eq!(l[3], 3.0);
    }

    #[test]
    fn top_k_one_and_tiny_top_p_are_greedy() {
        for params in [
            SamplingParams {
                top_k: 1,
                seed: Some(1),
                ..Default::default()
            },
            SamplingParams {
                top_p: 1e-6,
                seed: Some(1),
                ..Default::default()
            },
            SamplingParams {
                min_p: 1.0,
                seed: Some(1),
                ..Default::default()
            },
        ] {
            let mut s = Sampler::new(params).unwrap();
            for _ in 0..20 {
                // A unique maximum: with a tie, min_p = 1 rightly keeps both.
                assert_eq!(s.sample(&mut [1.0, 3.0, 2.0, 2.9, -1.0, f32::NAN], &[]).unwrap(), 1);
            }
        }
    }

    #[test]
    fn top_k_restricts_support() {
        let mut s = Sampler::new(SamplingParams {
            top_k: 2,
            temperature: 5.0,
            seed: Some(7),
            ..Default::default()
        })
        .unwrap();
        for _ in 0..200 {
            let t = s.sample(&mut logits(), &[]).unwrap();
            assert!(t == 1 || t == 3, "got {t}");
        }
    }

    #[test]
    fn same_seed_same_draws_and_distribution_roughly_right() {
        let params = SamplingParams {
            temperature: 1.0,
            seed: Some(42),
            ..Default::default()
        };
        let draw = |p: SamplingParams| {
            let mut s = Sampler::new(p).unwrap();
            (0..2000)
                .map(|_| s.sample(&mut [0.0, (3.0f32).ln()], &[]).unwrap())
                .collect::<Vec<_>>()
        };
        let a = draw(params.clone());
        assert_eq!(a, draw(params.clone()));
        assert_ne!(
            a,
            draw(SamplingParams {
                seed: Some(43),
                ..params
            })
        );
        let ones = a.iter().filter(|&&t| t == 1).count() as f32 / a.len() as f32;
        assert!((ones - 0.75).abs() < 0.05, "p(1) = {ones}");
    }

    #[test]
    fn invalid_params_are_errors() {
        for p in [
            SamplingParams {
                top_p: 0.0,
                ..Default::default()
            },
            SamplingParams {
                min_p: 1.5,
                ..Default::default()
            },
            SamplingParams {
                temperature: f32::NAN,
                ..Default::default()
            },
            SamplingParams {
                repetition_penalty: 0.0,
                ..Default::default()
            },
        ] {
            assert!(matches!(Sampler::new(p), Err(EngineError::InvalidRequest(_))));
        }
    }

    #[test]
    fn all_nan_logits_is_an_error() {
        let mut s = Sampler::new(SamplingParams::greedy()).unwrap();
        assert!(s.sample(&mut [f32::NAN, f32::NEG_INFINITY], &[]).is_err());
        let mut s = Sampler::new(SamplingParams {
            seed: Some(1),
            ..Default::default()
        })
        .unwrap();
        assert!(s.sample(&mut [f32::NAN], &[]).is_err());
    }
}
