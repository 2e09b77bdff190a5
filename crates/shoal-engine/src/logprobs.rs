//! Log-probabilities of sampled tokens (OpenAI `logprobs` / `top_logprobs`), computed on the last rank only for the
//! sequences that ask for them.
//!
//! **Which distribution.** The log-softmax over the whole vocabulary of the logits the sampler scored: after the
//! repetition/presence/frequency penalties (and any logit mask), at temperature 1, before top-k/top-p/min-p
//! truncation. This is llama-server's (`n_probs`, default `post_sampling_probs: false`) and vLLM's choice (the full
//! distribution, not the truncated one; vLLM's default is even before penalties) and matches what OpenAI's values look
//! like: they do not change with temperature, and a token outside top-p still has a finite logprob, so the chosen
//! token's logprob is always defined. Temperature is left out because at temperature 0 (greedy) it is undefined, and
//! a value scaled by the temperature would make the numbers of two requests incomparable. At temperature 0 the
//! chosen token is therefore the first of the top list (ties: the lowest id, as the greedy sampler picks).
//!
//! Cost: one pass for the max, one for the sum of exponentials, one for the top list; nothing when not asked.

/// The most alternatives a request may ask for per token (OpenAI's limit for `top_logprobs`).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// The chosen token's log-probability and the most likely tokens', most likely first.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TokenLogprobs {
    pub token: u32,
    pub logprob: f32,
    /// `(token, logprob)`, descending logprob, ascending id on ties; at most the count asked for.
    pub top: Vec<(u32, f32)>,
}

/// Log-probabilities of `chosen` and of the `top_n` (capped at [`MAX_TOP_LOGPROBS`]) most likely tokens under
/// `logits`. NaN logits count as impossible (`-inf`). `None` when no logit is finite or `chosen` is out of range.
pub fn token_logprobs(logits: &[f32], chosen: u32, top_n: usize) -> Option<TokenLogprobs> {
    let finite = |l: f32| if l.is_nan() { f32::NEG_INFINITY } else { l };
    let max = logits.iter().map(|&l| finite(l)).fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return None;
    }
    // Exponentials in f32 (an f64 `exp` costs several times as much: ~1.2 ms per token over 49k logits), summed in
    // f64 so the sum stays exact enough over a 150k-token vocabulary.
    let sum: f64 = logits.iter().map(|&l| f64::from((finite(l) - max).exp())).sum();
    let log_z = max + sum.ln() as f32;
    let logprob = |l: f32| (finite(l) - log_z).min(0.0);
    let chosen_logit = *logits.get(chosen as usize)?;
    Some(TokenLogprobs {
        token: chosen,
        logprob: logprob(chosen_logit),
        top: top_k(logits, top_n.min(MAX_TOP_LOGPROBS))
            .into_iter()
            .map(|(id, l)| (id, logprob(l)))
            .collect(),
    })
}

/// The `n` largest finite logits as `(id, logit)`, descending, lowest id first on ties. One pass with a small sorted
/// buffer: for n ≤ 20 nearly every logit is rejected by one comparison with the buffer's last entry.
fn top_k(logits: &[f32], n: usize) -> Vec<(u32, f32)> {
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(n + 1);
    if n == 0 {
        return best;
    }
    for (i, &l) in logits.iter().enumerate() {
        if l.is_nan() || l == f32::NEG_INFINITY {
            continue;
        }
        // Strictly greater: an equal logit later in the vocabulary has a higher id and loses the tie.
        if best.len() == n && best.last().is_some_and(|&(_, last)| l <= last) {
            continue;
        }
        let at = best.partition_point(|&(_, b)| b >= l);
        best.insert(at, (i as u32, l));
        best.truncate(n);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(logits: &[f32]) -> Vec<f64> {
        let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let z: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
        logits.iter().map(|&l| l as f64 - max - z.ln()).collect()
    }

    #[test]
    fn values_are_the_log_softmax() {
        let logits = [1.0, 3.0, 2.0, 3.0, -1.0, 0.5];
        let r = reference(&logits);
        let lp = token_logprobs(&logits, 2, 3).expect("finite");
        assert!((lp.logprob as f64 - r[2]).abs() < 1e-6);
        assert_eq!(
            lp.top.iter().map(|t| t.0).collect::<Vec<_>>(),
            vec![1, 3, 2],
            "ties: lowest id first"
        );
        for (id, v) in &lp.top {
            assert!((*v as f64 - r[*id as usize]).abs() < 1e-6);
        }
        let total: f64 = r.iter().map(|v| v.exp()).sum();
        assert!((total - 1.0).abs() < 1e-9);
    }

    #[test]
    fn nan_and_neg_infinity_are_impossible_and_never_listed() {
        let logits = [f32::NAN, 0.0, f32::NEG_INFINITY, 0.0];
        let lp = token_logprobs(&logits, 1, 20).expect("finite");
        assert!((lp.logprob - 0.5f32.ln()).abs() < 1e-6);
        assert_eq!(lp.top.len(), 2);
        assert_eq!(
            token_logprobs(&logits, 0, 1).map(|l| l.logprob),
            Some(f32::NEG_INFINITY)
        );
        assert!(token_logprobs(&[f32::NAN], 0, 1).is_none());
        assert!(token_logprobs(&logits, 9, 1).is_none(), "chosen out of range");
    }

    #[test]
    fn top_list_is_capped_and_sorted() {
        let logits: Vec<f32> = (0..1000).map(|i| ((i * 7919) % 1000) as f32 / 10.0).collect();
        let lp = token_logprobs(&logits, 0, 100).expect("finite");
        assert_eq!(lp.top.len(), MAX_TOP_LOGPROBS);
        assert!(lp.top.windows(2).all(|w| w[0].1 >= w[1].1));
        assert!(lp.top.iter().all(|t| t.1 <= 0.0));
        let mut sorted = logits.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        assert_eq!(logits[lp.top[0].0 as usize], sorted[0]);
        assert_eq!(logits[lp.top[19].0 as usize], sorted[19]);
        assert!(token_logprobs(&logits, 0, 0).expect("finite").top.is_empty());
    }
}
