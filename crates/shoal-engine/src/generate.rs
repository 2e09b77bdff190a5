//! Generation loops: one sequence ([`generate`]) or several with continuous batching ([`generate_batch`]), built from
//! two pure halves that a pipeline splits between its ranks: the [`Scheduler`] (rank 0: what to feed next) and
//! [`Decoding`] (last rank: sample, decode, stop).

use std::time::{Duration, Instant};

use crate::error::{EngineError, Result};
use crate::grammar::{Constrained, Constraint};
use crate::logprobs::{MAX_TOP_LOGPROBS, TokenLogprobs, token_logprobs};
use crate::output::lazy::{LazyCall, Watch};
use crate::pipeline::{PREFILL_CHUNK, Pipeline};
use crate::sampling::{Sampler, SamplingParams};
use crate::scheduler::Scheduler;
use crate::stage::SeqSlot;
use crate::tokenizer::{IncrementalDecoder, Tokenizer};

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GenerateParams {
    pub sampling: SamplingParams,
    pub max_tokens: usize,
    /// Generation ends before the first occurrence of any of these; the stop string itself is not returned.
    pub stop: Vec<String>,
    /// How the last rank reads the output: reasoning and tool calls (default: plain text).
    #[serde(default)]
    pub output: crate::output::OutputSpec,
    /// The output must match this grammar (enforced by masking the logits on the last rank).
    #[serde(default)]
    pub constraint: Option<Constraint>,
    /// `Some(n)`: report each sampled token's log-probability and the `n` (≤ [`MAX_TOP_LOGPROBS`]) most likely
    /// alternatives ([`crate::logprobs`]); `None` computes nothing.
    pub logprobs: Option<usize>,
}

impl Default for GenerateParams {
    fn default() -> Self {
        Self {
            sampling: SamplingParams::default(),
            max_tokens: 256,
            stop: Vec::new(),
            output: crate::output::OutputSpec::default(),
            constraint: None,
            logprobs: None,
        }
    }
}

impl GenerateParams {
    /// Checks a request before any work: a non-empty prompt with room for at least one generated token, a token
    /// budget, and valid sampling parameters. Rank 0 runs this at admission, so a bad request fails at once.
    pub fn validate(&self, prompt_tokens: usize, context_limit: usize) -> Result<()> {
        if prompt_tokens == 0 {
            return Err(EngineError::InvalidRequest("the prompt is empty".into()));
        }
        if self.max_tokens == 0 {
            return Err(EngineError::InvalidRequest("max_tokens must be at least 1".into()));
        }
        if prompt_tokens >= context_limit {
            // One slot must remain for the first generated token.
            return Err(EngineError::ContextOverflow {
                needed: prompt_tokens + 1,
                limit: context_limit,
            });
        }
        if self.logprobs.is_some_and(|n| n > MAX_TOP_LOGPROBS) {
            return Err(EngineError::InvalidRequest(format!(
                "top_logprobs must be at most {MAX_TOP_LOGPROBS}"
            )));
        }
        self.sampling.validate()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FinishReason {
    /// End-of-generation token.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The context window is full.
    ContextLength,
    /// A stop string: its index in [`GenerateParams::stop`] (Anthropic's `stop_sequence` names the one matched).
    StopSequence(u32),
}

#[derive(Debug, Clone)]
pub struct Generation {
    /// Sampled tokens, including a final end-of-generation token if one was sampled.
    pub tokens: Vec<u32>,
    pub text: String,
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    /// Until the first token could be sampled (in a batch: since the batch started, queueing included).
    pub prefill_time: Duration,
    /// Time spent in single-token forward passes after prefill (in a batch: first to last token, shared passes).
    pub decode_time: Duration,
    pub decode_steps: usize,
    /// Time spent computing each token's grammar mask (empty without a constraint).
    pub mask_times: Vec<Duration>,
}

impl Generation {
    pub fn prefill_tok_per_s(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_time.as_secs_f64().max(1e-9)
    }

    pub fn decode_tok_per_s(&self) -> f64 {
        self.decode_steps as f64 / self.decode_time.as_secs_f64().max(1e-9)
    }
}

/// The last stage's half of a sequence: samples each next token, decodes it incrementally, applies stop strings,
/// the token budget and the context limit. Pure over logits, so a runner at the end of a pipeline uses it as is.
#[derive(Debug)]
pub struct Decoding<'t> {
    tokenizer: &'t Tokenizer,
    sampler: Sampler,
    stops: StopMatcher,
    decoder: IncrementalDecoder<'t>,
    /// Prompt and generated tokens, for the repetition penalties and the context check.
    history: Vec<u32>,
    prompt_tokens: usize,
    max_tokens: usize,
    context_limit: usize,
    finished: Option<FinishReason>,
    constraint: Option<Constrained>,
    /// `tool_choice: auto`: the call grammar, waiting for a call to start; it then becomes `constraint`.
    lazy: Option<LazyCall>,
    mask_times: Vec<Duration>,
    logprobs: Option<usize>,
}

/// What one sampled token produced.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeStep {
    pub token: u32,
    /// Text that is now safe to show (possibly empty while a stop string or a UTF-8 sequence is undecided).
    pub text: String,
    /// Set on the sequence's last token.
    pub finish: Option<FinishReason>,
    /// When the request asked for them ([`GenerateParams::logprobs`]).
    pub logprobs: Option<TokenLogprobs>,
}

impl<'t> Decoding<'t> {
    /// Checks the request against the model: a non-empty prompt with room for at least one generated token.
    pub fn new(
        tokenizer: &'t Tokenizer,
        prompt: &[u32],
        params: &GenerateParams,
        context_limit: usize,
    ) -> Result<Self> {
        params.validate(prompt.len(), context_limit)?;
        let constraint = match &params.constraint {
            Some(c) => {
                let factory = tokenizer.grammar().map_err(|e| EngineError::Grammar(e.to_string()))?;
                Some(factory.compile(c).map_err(|e| EngineError::Grammar(e.to_string()))?)
            }
            None => None,
        };
        // A constraint of the request's own (`response_format`) leaves no room for a call grammar.
        let lazy = match &params.constraint {
            None => LazyCall::new(tokenizer, &params.output),
            Some(_) => None,
        };
        Ok(Self {
            tokenizer,
            sampler: Sampler::new(params.sampling.clone())?,
            stops: StopMatcher::new(&params.stop),
            decoder: tokenizer.decoder(),
            history: prompt.to_vec(),
            prompt_tokens: prompt.len(),
            max_tokens: params.max_tokens,
            context_limit,
            finished: None,
            constraint,
            lazy,
            mask_times: Vec::new(),
            logprobs: params.logprobs,
        })
    }

    pub fn prompt_tokens(&self) -> usize {
        self.prompt_tokens
    }

    pub fn generated(&self) -> &[u32] {
        &self.history[self.prompt_tokens..]
    }

    pub fn finished(&self) -> Option<FinishReason> {
        self.finished
    }

    /// Time each grammar mask took so far (empty without a constraint).
    pub fn mask_times(&self) -> &[Duration] {
        &self.mask_times
    }

    /// Samples from the logits of the sequence's last position.
    pub fn step(&mut self, logits: &mut [f32]) -> Result<DecodeStep> {
        if self.finished.is_some() {
            return Err(EngineError::InvalidRequest("the sequence has already finished".into()));
        }
        if let Some(c) = &mut self.constraint {
            let t = Instant::now();
            c.mask(logits).map_err(|e| EngineError::Grammar(e.to_string()))?;
            self.mask_times.push(t.elapsed());
        }
        let token = self.sampler.sample(logits, &self.history)?;
        // `sample` left the penalised logits in place: the distribution the logprobs describe.
        let logprobs = self.logprobs.and_then(|n| token_logprobs(logits, token, n));
        self.history.push(token);
        let n = self.history.len() - self.prompt_tokens;
        let mut text = String::new();
        let end_of_generation = self.tokenizer.is_end_of_generation(token);
        let mut grammar_done = false;
        if let Some(c) = &mut self.constraint
            && !end_of_generation
        {
            c.commit(token).map_err(|e| EngineError::Grammar(e.to_string()))?;
            grammar_done = c.is_stopped();
        }
        let finish = if end_of_generation {
            Some(FinishReason::Stop)
        } else {
            let raw = self.decoder.push(token);
            grammar_done |= self.watch_call(token, &raw);
            let (out, _) = self.stops.push(&raw);
            text = out;
            if let Some(index) = self.stops.matched() {
                Some(FinishReason::StopSequence(u32::try_from(index).unwrap_or(u32::MAX)))
            } else if grammar_done {
                // Only EOS could follow: end now rather than spend a forward pass on it.
                Some(FinishReason::Stop)
            } else if n >= self.max_tokens {
                Some(FinishReason::Length)
            } else if self.history.len() >= self.context_limit {
                Some(FinishReason::ContextLength)
            } else {
                None
            }
        };
        if finish.is_some() && !self.stops.stopped() {
            // Nothing more will come: release what the decoder and the stop matcher held back.
            let (out, _) = self.stops.push(&self.decoder.finish());
            text.push_str(&out);
            text.push_str(&self.stops.finish());
        }
        self.finished = finish;
        Ok(DecodeStep {
            token,
            text,
            finish,
            logprobs,
        })
    }
}

impl Decoding<'_> {
    /// `tool_choice: auto`: from where a call starts, its grammar masks every later token. True when the call's
    /// first bytes already complete it (nothing but EOS may follow).
    fn watch_call(&mut self, token: u32, raw: &str) -> bool {
        let Some(lazy) = &mut self.lazy else {
            return false;
        };
        match lazy.push(self.tokenizer, token, raw) {
            Watch::Waiting => false,
            Watch::Started(grammar) => {
                let done = grammar.is_stopped();
                self.constraint = Some(*grammar);
                self.lazy = None;
                done
            }
            Watch::Dropped => {
                self.lazy = None;
                false
            }
        }
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
    let mut decoding = Decoding::new(tokenizer, prompt, params, pipeline.hparams().context_length)?;
    let mut text = String::new();
    let t0 = Instant::now();
    let mut logits = pipeline.forward(slot, prompt)?;
    let prefill_time = t0.elapsed();
    tracing::debug!(prompt_tokens = prompt.len(), ?prefill_time, "prefill done");

    let mut decode_time = Duration::ZERO;
    let mut decode_steps = 0;
    let finish_reason = loop {
        let step = decoding.step(&mut logits)?;
        if !step.text.is_empty() {
            on_text(&step.text);
            text.push_str(&step.text);
        }
        if let Some(reason) = step.finish {
            break reason;
        }
        let t = Instant::now();
        logits = pipeline.forward(slot, &[step.token])?;
        decode_time += t.elapsed();
        decode_steps += 1;
    };
    Ok(Generation {
        tokens: decoding.generated().to_vec(),
        text,
        finish_reason,
        prompt_tokens: prompt.len(),
        prefill_time,
        decode_time,
        decode_steps,
        mask_times: decoding.mask_times().to_vec(),
    })
}

/// One request of [`generate_batch`].
#[derive(Debug, Clone)]
pub struct BatchRequest {
    pub prompt: Vec<u32>,
    pub params: GenerateParams,
}

/// Generates several sequences at once with continuous batching: up to `max_seqs` share each forward pass.
/// `on_text(i, text)` streams request `i`'s text. Results are in request order.
pub fn generate_batch(
    pipeline: &mut Pipeline,
    tokenizer: &Tokenizer,
    requests: &[BatchRequest],
    max_seqs: usize,
    on_text: &mut dyn FnMut(usize, &str),
) -> Result<Vec<Generation>> {
    let limit = pipeline.hparams().context_length;
    let mut decodings = requests
        .iter()
        .map(|r| Decoding::new(tokenizer, &r.prompt, &r.params, limit))
        .collect::<Result<Vec<_>>>()?;
    let slots: Vec<SeqSlot> = (0..requests.len())
        .map(|i| u32::try_from(i).map_err(|_| EngineError::InvalidRequest("too many requests".into())))
        .collect::<Result<_>>()?;
    for &s in &slots {
        pipeline.release(s);
    }
    let mut scheduler = Scheduler::new(max_seqs, PREFILL_CHUNK);
    for (slot, r) in slots.iter().zip(requests) {
        scheduler.submit(*slot, r.prompt.clone());
    }
    let mut texts = vec![String::new(); requests.len()];
    let mut finish = vec![None; requests.len()];
    // When each request sampled its first and its latest token: its prefill and decode times, as a client sees them.
    let mut first_token: Vec<Option<Instant>> = vec![None; requests.len()];
    let mut last_token: Vec<Option<Instant>> = vec![None; requests.len()];
    let started = Instant::now();
    let result = (|| {
        while let Some(step) = scheduler.next_step() {
            let mut logits = pipeline.forward_batch(&step.chunks, &step.tokens)?;
            let mut sampled = Vec::new();
            for ((chunk, &sample), logits) in step.chunks.iter().zip(&step.sample).zip(logits.iter_mut()) {
                if !sample {
                    continue;
                }
                let i = chunk.slot as usize;
                let out = decodings[i].step(logits)?;
                let now = Instant::now();
                first_token[i].get_or_insert(now);
                last_token[i] = Some(now);
                if !out.text.is_empty() {
                    on_text(i, &out.text);
                    texts[i].push_str(&out.text);
                }
                finish[i] = out.finish;
                if out.finish.is_some() {
                    pipeline.release(chunk.slot);
                }
                sampled.push((chunk.slot, out.token, out.finish.is_some()));
            }
            scheduler.complete(&step, &sampled);
        }
        Ok(())
    })();
    for &s in &slots {
        pipeline.release(s);
    }
    result?;
    Ok(decodings
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let first = first_token[i].unwrap_or(started);
            Generation {
                tokens: d.generated().to_vec(),
                text: std::mem::take(&mut texts[i]),
                finish_reason: finish[i].unwrap_or(FinishReason::Length),
                prompt_tokens: d.prompt_tokens,
                prefill_time: first - started,
                decode_time: last_token[i].unwrap_or(first) - first,
                decode_steps: d.generated().len().saturating_sub(1),
                mask_times: d.mask_times().to_vec(),
            }
        })
        .collect())
}

/// Finds stop strings across token boundaries. Text that could still be the start of a stop string is held back
/// until it is disambiguated, so a client never receives the beginning of a stop string.
#[derive(Debug)]
pub struct StopMatcher {
    /// The non-empty stop strings, each with its index in the list it was given (reported by [`Self::matched`]).
    stops: Vec<(usize, String)>,
    pending: String,
    matched: Option<usize>,
}

impl StopMatcher {
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops
                .iter()
                .enumerate()
                .filter(|(_, s)| !s.is_empty())
                .map(|(i, s)| (i, s.clone()))
                .collect(),
            pending: String::new(),
            matched: None,
        }
    }

    pub fn stopped(&self) -> bool {
        self.matched.is_some()
    }

    /// The index (in the list given to [`Self::new`]) of the stop string that ended the text, once one has.
    pub fn matched(&self) -> Option<usize> {
        self.matched
    }

    /// Returns the text that is safe to emit and whether a stop string was hit.
    pub fn push(&mut self, text: &str) -> (String, bool) {
        if self.stopped() {
            return (String::new(), true);
        }
        self.pending.push_str(text);
        // The earliest match wins; of two at the same place, the one listed first.
        let first = self
            .stops
            .iter()
            .filter_map(|(i, s)| self.pending.find(s.as_str()).map(|at| (at, *i)))
            .min();
        if let Some((at, index)) = first {
            let out = self.pending[..at].to_string();
            self.pending.clear();
            self.matched = Some(index);
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
        for (_, stop) in &self.stops {
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
    fn the_matched_stop_is_reported_by_its_index_in_the_given_list() {
        let stops: Vec<String> = ["", "zz", "é!"].iter().map(|s| s.to_string()).collect();
        let mut m = StopMatcher::new(&stops);
        assert_eq!(m.matched(), None);
        assert_eq!(m.push("aé"), ("a".into(), false));
        assert_eq!(m.push("!zz"), ("".into(), true));
        assert_eq!(m.matched(), Some(2), "the empty string keeps its place in the list");
        let mut tie = StopMatcher::new(&["abc".to_string(), "ab".to_string()]);
        assert_eq!(tie.push("xabc"), ("x".into(), true));
        assert_eq!(tie.matched(), Some(0), "at the same place, the first listed");
    }

    #[test]
    fn no_stops_passes_everything_through() {
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
    }
}
