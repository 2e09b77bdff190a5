//! The last rank's side of a sequence: its sampling state, and the messages to the worker that one sampled token
//! makes (text split into reasoning and answer, logprobs, tool calls at the end).

use shoal_engine::output::{OutputParser, Piece};
use shoal_engine::{DecodeStep, Decoding, FinishReason, Tokenizer};

use crate::proto::{ChunkEnd, ChunkLogprobs, FromRunner, LogprobEntry, TaskHandle};

/// The last rank's state of one sequence.
pub(crate) struct Sampling<'t> {
    pub task: TaskHandle,
    pub decoding: Decoding<'t>,
    /// Reasoning and tool calls read out of the text (SYSTEM.md §10.4).
    pub output: OutputParser,
    /// Tokens whose text was reasoning.
    pub reasoning_tokens: usize,
    pub seq: u64,
}

/// A step's logprobs spelled with the tokenizer; none for an end-of-generation token (OpenAI never lists it).
pub(crate) fn chunk_logprobs(tokenizer: &Tokenizer, step: &DecodeStep) -> Option<ChunkLogprobs> {
    if step.finish == Some(FinishReason::Stop) {
        return None;
    }
    let lp = step.logprobs.as_ref()?;
    let entry = |token: u32, logprob: f32| LogprobEntry {
        token,
        bytes: tokenizer.token_bytes(token).to_vec(),
        logprob,
    };
    Some(ChunkLogprobs {
        chosen: entry(lp.token, lp.logprob),
        top: lp.top.iter().map(|&(t, l)| entry(t, l)).collect(),
    })
}

/// The messages one sampled token makes: its text split into reasoning and answer pieces (at least one chunk, so
/// every token is seen), and at the end either the last chunk or the tool calls the output made.
/// The token's logprobs go with its first chunk.
pub(crate) fn chunk_messages(
    seq: &mut Sampling<'_>,
    token: u32,
    text: &str,
    control: Option<&str>,
    end: Option<ChunkEnd>,
    mut logprobs: Option<ChunkLogprobs>,
) -> Vec<FromRunner> {
    let task = seq.task;
    let mut pieces = if seq.output.is_active() {
        let mut pieces = seq.output.push(text);
        if let Some(control) = control {
            pieces.extend(seq.output.push_control(control));
        }
        pieces
    } else {
        vec![Piece {
            text: text.to_string(),
            thinking: false,
        }]
    };
    if pieces.iter().any(|p| p.thinking) {
        seq.reasoning_tokens += 1;
    }
    let end = end.map(|e| ChunkEnd {
        reasoning_tokens: seq.reasoning_tokens,
        ..e
    });
    let mut calls = Vec::new();
    if end.is_some() && seq.output.is_active() {
        let (rest, made) = seq.output.finish();
        pieces.extend(rest);
        calls = made;
    }
    if pieces.is_empty() && (end.is_none() || calls.is_empty()) {
        pieces.push(Piece {
            text: String::new(),
            thinking: false,
        });
    }
    let mut out = Vec::with_capacity(pieces.len() + 1);
    let last = pieces.len().saturating_sub(1);
    for (i, piece) in pieces.into_iter().enumerate() {
        out.push(FromRunner::Chunk {
            task,
            seq: seq.seq,
            token,
            text: piece.text,
            end: if i == last && calls.is_empty() { end } else { None },
            thinking: piece.thinking,
            logprobs: logprobs.take(),
        });
        seq.seq += 1;
    }
    if let Some(end) = end.filter(|_| !calls.is_empty()) {
        out.push(FromRunner::ToolCalls {
            task,
            seq: seq.seq,
            calls,
            end,
        });
        seq.seq += 1;
    }
    out
}
