//! The single-sequence generation loop: prefill, then sample/decode until end of generation, a stop string, the
//! token budget or the context length.

use std::time::{Duration, Instant};

use crate::error::{EngineError, Result};
use crate::pipeline::Pipeline;
use crate::sampling::{Sampler, SamplingParams};
use crate::stage::SeqSlot;
use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone, PartialEq)]
pub struct GenerateParams {
    pub sampling: SamplingParams,
    pub max_tokens: usize,
    /// Generation ends before the first occurrence of any of these; the stop string itself is not returned.
    pub stop: Vec<String>,
}

impl Default for GenerateParams {
    fn default() -> Self {
        Self {
            sampling: SamplingParams::default(),
            max_tokens: 256,
            stop: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// End-of-generation token or stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The context window is full.
    ContextLength,
}

#[derive(Debug, Clone)]
pub struct Generation {
    /// Sampled tokens, including a final end-of-generation token if one was sampled.
    pub tokens: Vec<u32>,
    pub text: String,
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    pub prefill_time: Duration,
    /// Time spent in single-token forward passes after prefill.
    pub decode_time: Duration,
    pub decode_steps: usize,
}

impl Generation {
    pub fn prefill_tok_per_s(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_time.as_secs_f64().max(1e-9)
    }

    pub fn decode_tok_per_s(&self) -> f64 {
        self.decode_steps as f64 / self.decode_time.as_secs_f64().max(1e-9)
    }
}

/// Runs one sequence on `slot` to completion, streaming text through `on_text`. The slot is released afterwards,
/// also on error.
pub fn generate(
    pipeline: &mut Pipeline,
    tokenizer: &Tokenizer,
    slot: SeqSlot,
    prompt: &[u32],
    params: &GenerateParams,
    on_text: &mut dyn FnMut(&str),
) -> Result<Generation> {
    pipeline.release(slot);
    let result = run(pipeline, tokenizer, slot, prompt, params, on_text);
    pipeline.release(slot);
    result
}

fn run(
    pipeline: &mut Pipeline,
    tokenizer: &Tokenizer,
    slot: SeqSlot,
    prompt: &[u32],
    params: &GenerateParams,
    on_text: &mut dyn FnMut(&str),
) -> Result<Generation> {
    if prompt.is_empty() {
        return Err(EngineError::InvalidRequest("the prompt is empty".into()));
    }
    let limit = pipeline.hparams().context_length;
    if prompt.len() >= limit {
        // One slot must remain for the first generated token.
        return Err(EngineError::ContextOverflow {
            needed: prompt.len() + 1,
            limit,
        });
    }
    let mut sampler = Sampler::new(params.sampling.clone())?;
    let mut stops = StopMatcher::new(&params.stop);
    let mut decoder = tokenizer.decoder();
    let mut history = prompt.to_vec();
    let mut text = String::new();
    let mut emit = |s: &str, text: &mut String| {
        if !s.is_empty() {
            text.push_str(s);
            on_text(s);
        }
    };

    let t0 = Instant::now();
    let mut logits = pipeline.forward(slot, prompt)?;
    let prefill_time = t0.elapsed();
    tracing::debug!(prompt_tokens = prompt.len(), ?prefill_time, "prefill done");

    let mut decode_time = Duration::ZERO;
    let mut decode_steps = 0;
    let mut tokens = Vec::new();
    let finish_reason = loop {
        if tokens.len() >= params.max_tokens {
            break FinishReason::Length;
        }
        let token = sampler.sample(&mut logits, &history)?;
        tokens.push(token);
        history.push(token);
        if tokenizer.is_end_of_generation(token) {
            break FinishReason::Stop;
        }
        let (out, stopped) = stops.push(&decoder.push(token));
        emit(&out, &mut text);
        if stopped {
            break FinishReason::Stop;
        }
        if tokens.len() >= params.max_tokens {
            break FinishReason::Length;
        }
        if history.len() >= limit {
            break FinishReason::ContextLength;
        }
        let t = Instant::now();
        logits = pipeline.forward(slot, &[token])?;
        decode_time += t.elapsed();
        decode_steps += 1;
    };
    if finish_reason != FinishReason::Stop || !stops.stopped() {
        let (out, _) = stops.push(&decoder.finish());
        emit(&out, &mut text);
        emit(&stops.finish(), &mut text);
    }
    Ok(Generation {
        tokens,
        text,
        finish_reason,
        prompt_tokens: prompt.len(),
        prefill_time,
        decode_time,
        decode_steps,
    })
}

/// Finds stop strings across token boundaries. Text that could still be the start of a stop string is held back
/// until it is disambiguated, so a client never receives the beginning of a stop string.
#[derive(Debug)]
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
    stopped: bool,
}

impl StopMatcher {
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            pending: String::new(),
            stopped: false,
        }
    }

    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Returns the text that is safe to emit and whether a stop string was hit.
    pub fn push(&mut self, text: &str) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        self.pending.push_str(text);
        if let Some(at) = self.stops.iter().filter_map(|s| self.pending.find(s.as_str())).min() {
            let out = self.pending[..at].to_string();
            self.pending.clear();
            self.stopped = true;
            return (out, true);
        }
        let hold = self.longest_partial_suffix();
        let cut = self.pending.len() - hold;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        (out, false)
    }

    /// Emits whatever was held back once no more text will come.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }

    /// Length in bytes of the longest suffix of `pending` that is a proper prefix of some stop string.
    fn longest_partial_suffix(&self) -> usize {
        let p = &self.pending;
        let mut best = 0;
        for stop in &self.stops {
            let max = (stop.len() - 1).min(p.len());
            for len in (best + 1..=max).rev() {
                let start = p.len() - len;
                if p.is_char_boundary(start) && stop.starts_with(&p[start..]) {
                    best = len;
                    break;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::StopMatcher;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopMatcher::new(&stops);
        let mut out = String::new();
        for p in pieces {
            let (o, stopped) = m.push(p);
            out.push_str(&o);
            if stopped {
                return (out, true);
            }
        }
        out.push_str(&m.finish());
        (out, false)
    }

    #[test]
    fn stop_split_across_pieces() {
        assert_eq!(run(&["END"], &["hello E", "N", "D more"]), ("hello ".into(), true));
    }

    #[test]
    fn partial_match_released_when_disambiguated() {
        assert_eq!(run(&["END"], &["hello E", "N", "x"]), ("hello ENx".into(), false));
        assert_eq!(run(&["END"], &["tail EN"]), ("tail EN".into(), false));
    }

    #[test]
    fn earliest_of_several_stops_wins_and_unicode_is_safe() {
        assert_eq!(run(&["zz", "é!"], &["aé", "!zz"]), ("a".into(), true));
        assert_eq!(run(&["ééx"], &["ab é", "é", "y"]), ("ab ééy".into(), false));
    }

    #[test]
    fn no_stops_passes_everything_through() {
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
    }
}
