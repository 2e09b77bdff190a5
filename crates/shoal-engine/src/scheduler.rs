//! Rank 0's half of continuous batching: the [`Scheduler`] picks which tokens of which sequences go into the next
//! forward pass, and a [`StepBudget`] sizes the prompt chunks that share a step with decoding sequences.

use std::collections::{BTreeMap, VecDeque};

use crate::stage::{SeqChunk, SeqSlot};
use crate::step_budget::StepBudget;

/// Rank 0's half of continuous batching: which tokens of which sequences go into the next forward pass. Admits up to
/// `max_seqs` sequences (the rest wait in order), gives every decoding sequence its one token per step, and fills
/// the rest of the step's token budget with prompt chunks, so a long prompt is prefilled in pieces between the
/// decode steps of the others. With a [`StepBudget`] ([`Scheduler::with_step_target`]) the prompt chunk beside
/// decoding sequences is sized to keep the step near a time target, so a long prompt never stalls running streams.
/// Pure: the caller runs the batch, reports the sampled tokens back and, with a budget, the step's wall time.
#[derive(Debug)]
pub struct Scheduler {
    max_seqs: usize,
    step_tokens: usize,
    budget: Option<StepBudget>,
    waiting: VecDeque<(SeqSlot, Vec<u32>)>,
    active: BTreeMap<SeqSlot, Feed>,
}

#[derive(Debug)]
struct Feed {
    /// Tokens not yet fed: the rest of the prompt, or the last sampled token.
    pending: Vec<u32>,
    /// Tokens already fed.
    pos: usize,
    /// A step holding this sequence is in flight; nothing more is fed until its token comes back.
    in_flight: bool,
}

/// One forward pass chosen by the [`Scheduler`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledStep {
    pub chunks: Vec<SeqChunk>,
    /// Position of each chunk's first token in its sequence.
    pub positions: Vec<usize>,
    /// Whether the last stage samples a token for each chunk (its prompt is complete after this chunk).
    pub sample: Vec<bool>,
    /// The chunks' tokens, back to back.
    pub tokens: Vec<u32>,
    /// The first this-many chunks are decoding sequences (one token each); the rest are prompt chunks.
    pub decoding: usize,
}

impl Scheduler {
    /// `step_tokens` bounds the tokens of one forward pass (the prefill chunk, [`PREFILL_CHUNK`]).
    pub fn new(max_seqs: usize, step_tokens: usize) -> Self {
        Self {
            max_seqs: max_seqs.max(1),
            step_tokens: step_tokens.max(1),
            budget: None,
            waiting: VecDeque::new(),
            active: BTreeMap::new(),
        }
    }

    /// Sizes the prompt chunks that share a step with decoding sequences so the step takes about `target`, from the
    /// wall times the caller reports with [`Scheduler::observe`]. Steps without decoding sequences stay full.
    pub fn with_step_target(mut self, target: std::time::Duration) -> Self {
        self.budget = Some(StepBudget::new(target, self.step_tokens));
        self
    }

    /// Reports how long a step took, from starting it to its sampled tokens coming back (a no-op without a budget).
    pub fn observe(&mut self, step: &ScheduledStep, elapsed: std::time::Duration) {
        if let Some(budget) = &mut self.budget {
            budget.observe(step.tokens.len().saturating_sub(step.decoding), elapsed);
        }
    }

    /// Queues a sequence; it starts when one of the `max_seqs` places is free.
    pub fn submit(&mut self, slot: SeqSlot, prompt: Vec<u32>) {
        self.waiting.push_back((slot, prompt));
    }

    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.active.is_empty()
    }

    pub fn active(&self) -> usize {
        self.active.len()
    }

    /// Sequences submitted but not yet admitted.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Picks the next step, or `None` when nothing can run.
    pub fn next_step(&mut self) -> Option<ScheduledStep> {
        while self.active.len() < self.max_seqs {
            let Some((slot, prompt)) = self.waiting.pop_front() else {
                break;
            };
            self.active.insert(
                slot,
                Feed {
                    pending: prompt,
                    pos: 0,
                    in_flight: false,
                },
            );
        }
        let mut step = ScheduledStep {
            chunks: Vec::new(),
            positions: Vec::new(),
            sample: Vec::new(),
            tokens: Vec::new(),
            decoding: 0,
        };
        let mut budget = self.step_tokens;
        // Decoding sequences first (one token each): a prompt never delays the tokens users are waiting for.
        let ready = |f: &Feed| !f.in_flight && !f.pending.is_empty();
        let decoding: Vec<SeqSlot> = self
            .active
            .iter()
            .filter(|(_, f)| ready(f) && f.pos > 0 && f.pending.len() == 1)
            .map(|(s, _)| *s)
            .collect();
        let prefilling: Vec<SeqSlot> = self
            .active
            .iter()
            .filter(|(s, f)| ready(f) && !decoding.contains(s))
            .map(|(s, _)| *s)
            .collect();
        let n_decoding = decoding.len().min(budget);
        for (i, slot) in decoding.into_iter().chain(prefilling).enumerate() {
            if i == n_decoding {
                // The prompt chunks' share: what the step budget allows beside the decoding sequences.
                if let Some(b) = &self.budget {
                    budget = budget.min(b.prompt_tokens(n_decoding));
                }
            }
            if budget == 0 {
                break;
            }
            let Some(feed) = self.active.get_mut(&slot) else {
                continue;
            };
            let n = feed.pending.len().min(budget);
            budget -= n;
            if i < n_decoding {
                step.decoding += 1;
            }
            step.chunks.push(SeqChunk { slot, n_tokens: n });
            step.positions.push(feed.pos);
            step.sample.push(n == feed.pending.len());
            step.tokens.extend(feed.pending.drain(..n));
            feed.pos += n;
            feed.in_flight = true;
        }
        (!step.chunks.is_empty()).then_some(step)
    }

    /// Marks a step's sequences as runnable again; `tokens` are the sampled tokens of the chunks that sampled, with
    /// `done` set when the sequence finished (its place is then freed).
    pub fn complete(&mut self, step: &ScheduledStep, tokens: &[(SeqSlot, u32, bool)]) {
        for c in &step.chunks {
            if let Some(f) = self.active.get_mut(&c.slot) {
                f.in_flight = false;
            }
        }
        for &(slot, token, done) in tokens {
            if done {
                self.active.remove(&slot);
            } else if let Some(f) = self.active.get_mut(&slot) {
                f.pending.push(token);
            }
        }
    }

    /// Drops a sequence wherever it is (cancellation).
    pub fn cancel(&mut self, slot: SeqSlot) {
        self.active.remove(&slot);
        self.waiting.retain(|(s, _)| *s != slot);
    }
}

#[cfg(test)]
mod tests {
    use super::{ScheduledStep, Scheduler};
    use crate::stage::SeqChunk;

    fn chunks(step: &ScheduledStep) -> Vec<(u32, usize)> {
        step.chunks.iter().map(|c: &SeqChunk| (c.slot, c.n_tokens)).collect()
    }

    #[test]
    fn admits_max_seqs_and_queues_the_rest_in_order() {
        let mut s = Scheduler::new(2, 100);
        for slot in 0..3 {
            s.submit(slot, vec![1; 3]);
        }
        let step = s.next_step().unwrap();
        assert_eq!(chunks(&step), [(0, 3), (1, 3)]);
        assert_eq!(step.sample, [true, true]);
        assert_eq!(step.positions, [0, 0]);
        assert!(s.next_step().is_none(), "nothing runs while the step is in flight");
        s.complete(&step, &[(0, 7, true), (1, 8, false)]);
        let step = s.next_step().unwrap();
        // Slot 1 decodes its sampled token first; slot 2 takes the freed place.
        assert_eq!(chunks(&step), [(1, 1), (2, 3)]);
        assert_eq!(step.tokens, [8, 1, 1, 1]);
        assert_eq!(step.positions, [3, 0]);
    }

    #[test]
    fn long_prompts_are_chunked_around_decode_steps() {
        let mut s = Scheduler::new(8, 4);
        s.submit(0, vec![5; 2]);
        let step = s.next_step().unwrap();
        s.complete(&step, &[(0, 9, false)]);
        s.submit(1, vec![6; 7]);
        let step = s.next_step().unwrap();
        assert_eq!(
            chunks(&step),
            [(0, 1), (1, 3)],
            "decode first, then the budget's rest of the prompt"
        );
        assert_eq!(step.sample, [true, false]);
        s.complete(&step, &[(0, 10, false)]);
        let step = s.next_step().unwrap();
        assert_eq!(chunks(&step), [(0, 1), (1, 3)]);
        assert_eq!(step.positions, [3, 3]);
        s.complete(&step, &[(0, 11, false)]);
        let step = s.next_step().unwrap();
        assert_eq!(chunks(&step), [(0, 1), (1, 1)]);
        assert_eq!(step.sample, [true, true], "the prompt's last chunk samples");
        s.complete(&step, &[(0, 12, true), (1, 13, true)]);
        assert!(s.is_idle());
    }

    #[test]
    fn cancel_frees_the_place_and_the_queue() {
        let mut s = Scheduler::new(1, 10);
        s.submit(0, vec![1]);
        s.submit(1, vec![1]);
        s.submit(2, vec![1]);
        let step = s.next_step().unwrap();
        s.cancel(2);
        s.cancel(0);
        // The in-flight step's token for the cancelled sequence is ignored.
        s.complete(&step, &[(0, 4, false)]);
        let step = s.next_step().unwrap();
        assert_eq!(chunks(&step), [(1, 1)]);
        s.complete(&step, &[(1, 4, true)]);
        assert!(s.is_idle());
    }

    #[test]
    fn a_step_budget_keeps_prompt_chunks_small_beside_decoding_sequences() {
        use crate::step_budget::{FIRST_PREFILL_TOKENS, MIN_PREFILL_TOKENS};
        use std::time::Duration;
        let ms = Duration::from_millis;
        let mut s = Scheduler::new(8, 512).with_step_target(ms(150));
        // Alone, a prompt goes in full chunks: nobody waits on the step.
        s.submit(0, vec![5; 600]);
        let step = s.next_step().unwrap();
        assert_eq!((chunks(&step), step.decoding), (vec![(0, 512)], 0));
        s.observe(&step, ms(4_000));
        s.complete(&step, &[]);
        let step = s.next_step().unwrap();
        assert_eq!(chunks(&step), [(0, 88)]);
        s.observe(&step, ms(700));
        s.complete(&step, &[(0, 9, false)]);
        let step = s.next_step().unwrap();
        assert_eq!((chunks(&step), step.decoding), (vec![(0, 1)], 1));
        s.observe(&step, ms(50));
        s.complete(&step, &[(0, 9, false)]);
        // Slot 0 decodes when a long prompt arrives: the first chunk beside it is small (the timed cost says ~8 ms a
        // prompt token over a 50 ms base), and every step still carries slot 0's token.
        s.submit(1, vec![6; 7_000]);
        let mut step = s.next_step().unwrap();
        let (_, first) = chunks(&step)[1];
        assert!((MIN_PREFILL_TOKENS..=FIRST_PREFILL_TOKENS).contains(&first), "{first}");
        let mut fed = 0;
        for _ in 0..40 {
            assert_eq!(
                (chunks(&step)[0], step.decoding),
                ((0, 1), 1),
                "the running stream is in every step"
            );
            assert_eq!(step.positions[1], fed, "the prompt advances without gaps");
            let prompt = chunks(&step)[1].1;
            fed += prompt;
            // Later chunks cost 4.9 ms a prompt token: the chunk grows to the 20 that fit in 150 ms.
            s.observe(&step, Duration::from_micros(50_000 + 4_900 * prompt as u64));
            s.complete(&step, &[(0, 9, false)]);
            step = s.next_step().unwrap();
        }
        assert_eq!(chunks(&step), [(0, 1), (1, 20)]);
    }
}
