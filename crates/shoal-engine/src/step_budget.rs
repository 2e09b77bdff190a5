//! How many prompt tokens may share a forward pass with decoding sequences. A decoding stream gets one token per
//! step, so a step's wall time is that stream's gap: a 512-token chunk of a long prompt held running streams for
//! 3–10 s on 2 cores (later chunks attend over a longer prefix, so they are slower still). The budget sizes the
//! prompt chunk from the measured cost of recent steps so that a step stays near a time target. With no sequence
//! decoding the chunk may take up to [`SOLO_STEP_TARGET`]: nobody waits on each step, but a late chunk of a long
//! prompt (512 tokens attending over ~7,000) must not hold the pipeline for many seconds either, or a request that
//! arrives meanwhile waits that long for its first step, and the worker's hang watch (no layer done for 5 s) can
//! fire on a loaded machine, as it did while measuring this.
//!
//! Pure: the caller times each step and reports it; nothing here reads a clock.

use std::time::Duration;

/// The wall time a step that holds decoding sequences aims for, below the ≤ 250 ms gap a running stream should see
/// while another request prefills, with room for scheduling jitter on a shared machine. (120 ms was tried: over a
/// whole 7,000-token prefill on 2 cores its gaps read p99 233 ms, max 331 ms, against 207 / 252 ms at 150 ms, within
/// this machine's noise, and the prefill took 191 s against 179 s.)
pub const STEP_TARGET: Duration = Duration::from_millis(150);
/// The wall time a step of prompt chunks alone aims for (see the module comment); early chunks of a prompt are
/// cheap and stay at the full chunk size.
pub const SOLO_STEP_TARGET: Duration = Duration::from_secs(1);
/// A prompt chunk beside decoding sequences never shrinks below this, so a long prompt always advances: on a machine
/// too slow for the target, progress of the prompt wins over the target. At 8 the floor bound the last chunks of a
/// 7,000-token prompt on 2 cores (8 tokens over ~7k of prefix: ~170 ms, p99 gap 340 ms); at 4 it leaves the target
/// in charge there.
pub const MIN_PREFILL_TOKENS: usize = 4;
/// The chunk beside decoding sequences before any step with a prompt chunk has been timed.
pub const FIRST_PREFILL_TOKENS: usize = 16;
/// Weight of the newest step in the running estimates: high enough to follow a prompt whose chunks grow slower as
/// its prefix grows, low enough that one step delayed by another process does not halve the next chunk.
const NEWEST_WEIGHT: f64 = 0.25;
/// Added to the tokens that fit before rounding down, far below one token.
const FIT_NUDGE: f64 = 1e-6;

/// The running cost model of one pipeline's steps: `time ≈ base + per_prompt_token × prompt tokens`, where `base`
/// (weights streamed once, the ring's round trip, the decode tokens) comes from steps without a prompt chunk.
#[derive(Debug, Clone)]
pub struct StepBudget {
    target: Duration,
    /// The most tokens one step may hold.
    max_tokens: usize,
    /// Seconds of a step without prompt tokens.
    base: Option<f64>,
    /// Seconds each prompt token adds to a step.
    per_prompt_token: Option<f64>,
}

impl StepBudget {
    pub fn new(target: Duration, max_tokens: usize) -> Self {
        Self {
            target,
            max_tokens: max_tokens.max(1),
            base: None,
            per_prompt_token: None,
        }
    }

    /// Records a finished step: how many of its tokens were prompt tokens, and its wall time (from the first rank
    /// starting it to its sampled tokens coming back, so every stage and the ring's hops count).
    pub fn observe(&mut self, prompt_tokens: usize, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        if prompt_tokens == 0 {
            self.base = Some(blend(self.base, secs));
            return;
        }
        // Without a base yet the whole step is put on the prompt tokens: an overestimate, so a smaller next chunk.
        let per = (secs - self.base.unwrap_or(0.0)).max(0.0) / prompt_tokens as f64;
        self.per_prompt_token = Some(blend(self.per_prompt_token, per));
    }

    /// Prompt tokens the next step may hold beside `decoding` decoding sequences (one token each).
    pub fn prompt_tokens(&self, decoding: usize) -> usize {
        let room = self.max_tokens.saturating_sub(decoding).max(MIN_PREFILL_TOKENS);
        let (target, base) = if decoding == 0 {
            // Nobody decodes: the base of decode steps does not apply.
            (self.target.max(SOLO_STEP_TARGET), 0.0)
        } else {
            (self.target, self.base.unwrap_or(0.0))
        };
        let Some(per) = self.per_prompt_token.filter(|p| *p > 0.0) else {
            return if decoding == 0 {
                room
            } else {
                FIRST_PREFILL_TOKENS.min(room)
            };
        };
        let spare = (target.as_secs_f64() - base).max(0.0);
        // Bounded by `room` before the conversion, so the float always fits; the nudge keeps an exact fit (16.0 computed
        // as 15.999…) from losing a token to rounding.
        let fit = (spare / per + FIT_NUDGE).floor().min(room as f64) as usize;
        fit.clamp(MIN_PREFILL_TOKENS, room)
    }
}

fn blend(old: Option<f64>, new: f64) -> f64 {
    old.map_or(new, |old| old + NEWEST_WEIGHT * (new - old))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn larger_chunks_when_nobody_decodes() {
        let mut b = StepBudget::new(ms(150), 512);
        assert_eq!(b.prompt_tokens(0), 512);
        b.observe(512, ms(1_024));
        assert_eq!(
            b.prompt_tokens(0),
            500,
            "no stream waits on the step: up to the solo target"
        );
        assert_eq!(b.prompt_tokens(1), 75, "beside a decoding stream: the step target");
        // Late chunks attend over a long prefix: they shrink so one step stays near the solo target.
        let mut late = StepBudget::new(ms(150), 512);
        late.observe(512, ms(9_000));
        assert_eq!(late.prompt_tokens(0), 56);
    }

    #[test]
    fn starts_small_then_fits_the_target() {
        let mut b = StepBudget::new(ms(150), 512);
        assert_eq!(b.prompt_tokens(1), FIRST_PREFILL_TOKENS);
        b.observe(0, ms(30));
        // 16 prompt tokens took 130 ms beyond the 30 ms base: 7.5 ms each, so (150 - 30) / 7.5 = 16 fit.
        b.observe(16, ms(150));
        assert_eq!(b.prompt_tokens(1), 16);
        // A faster machine: 2 ms a token, 60 fit.
        let mut fast = StepBudget::new(ms(150), 512);
        fast.observe(0, ms(30));
        fast.observe(100, ms(230));
        assert_eq!(fast.prompt_tokens(1), 60);
        assert_eq!(fast.prompt_tokens(3), 60, "the decode tokens are in the base");
    }

    #[test]
    fn the_chunk_shrinks_as_tokens_grow_slower_and_recovers() {
        let mut b = StepBudget::new(ms(150), 512);
        b.observe(0, ms(30));
        b.observe(40, ms(150)); // 3 ms a token: 40 fit
        assert_eq!(b.prompt_tokens(1), 40);
        // A long prefix makes each token cost 6 ms: the estimate follows within a few steps.
        for _ in 0..20 {
            b.observe(20, ms(150));
        }
        assert_eq!(b.prompt_tokens(1), 20);
        // One step stalled by another process moves the estimate, but only partly.
        b.observe(20, ms(300));
        let after_stall = b.prompt_tokens(1);
        assert!((MIN_PREFILL_TOKENS + 1..20).contains(&after_stall), "{after_stall}");
        for _ in 0..20 {
            b.observe(20, ms(150));
        }
        assert!(b.prompt_tokens(1) >= 19, "recovered: {}", b.prompt_tokens(1));
    }

    #[test]
    fn never_below_the_floor_nor_above_the_room() {
        let mut slow = StepBudget::new(ms(150), 512);
        slow.observe(0, ms(400)); // the base alone misses the target
        slow.observe(8, ms(900));
        assert_eq!(slow.prompt_tokens(1), MIN_PREFILL_TOKENS, "a prompt always advances");
        let mut fast = StepBudget::new(ms(150), 64);
        fast.observe(0, ms(1));
        fast.observe(64, ms(2));
        assert_eq!(
            fast.prompt_tokens(4),
            60,
            "decode tokens and the chunk share the step's tokens"
        );
        assert_eq!(fast.prompt_tokens(64), MIN_PREFILL_TOKENS);
    }
}
