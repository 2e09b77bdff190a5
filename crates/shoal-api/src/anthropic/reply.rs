//! Writing Anthropic Messages answers: the whole message ([`message_json`]) and the stream ([`MessageStream`], SSE
//! with named events in Anthropic's order: `message_start`, then per content block `content_block_start`,
//! `content_block_delta`s and `content_block_stop` (a `ping` after the first start), then `message_delta` with the
//! stop reason and usage, and `message_stop`; a late failure is `event: error` and the end of the stream).

use serde_json::{Value, json};
use shoal_types::chunk::{FinishReason, Usage};

use shoal_types::params::ToolCall;

use crate::error::{ApiError, Dialect};
use crate::generation::{Completion, Encoder, Frame, Wire};
use crate::tools::arguments_value;

/// `stop_reason` and `stop_sequence` (the stop string matched, else null).
pub fn stop_reason(finish: FinishReason, stops: &[String]) -> (&'static str, Value) {
    match finish {
        FinishReason::Stop => ("end_turn", Value::Null),
        FinishReason::StopSequence(i) => (
            "stop_sequence",
            usize::try_from(i)
                .ok()
                .and_then(|i| stops.get(i))
                .map_or(Value::Null, |s| Value::from(s.as_str())),
        ),
        FinishReason::Length => ("max_tokens", Value::Null),
        FinishReason::ContentFilter => ("refusal", Value::Null),
    }
}

/// What every part of one answer repeats.
#[derive(Debug, Clone)]
pub struct Reply {
    /// `msg_…`.
    pub id: String,
    /// The model name as the client sent it.
    pub model: String,
    /// The request's stop sequences, to name the one matched.
    pub stops: Vec<String>,
    /// The prompt's length where this node counted it; the runner's count (in the final usage) wins.
    pub input_tokens: Option<usize>,
}

impl Reply {
    fn input_tokens(&self, usage: &Usage) -> u64 {
        if usage.prompt_tokens > 0 {
            u64::from(usage.prompt_tokens)
        } else {
            self.input_tokens.map_or(0, |n| n as u64)
        }
    }
}

/// The non-streaming answer.
pub fn message_json(reply: &Reply, done: &Completion) -> Value {
    let mut content = Vec::new();
    if !done.reasoning.is_empty() {
        content.push(json!({ "type": "thinking", "thinking": done.reasoning, "signature": "" }));
    }
    if done.tool_calls.is_empty() || !done.text.is_empty() {
        content.push(json!({ "type": "text", "text": done.text }));
    }
    content.extend(done.tool_calls.iter().map(|c| tool_use(c, arguments_value(c))));
    let (stop_reason, stop_sequence) = if done.tool_calls.is_empty() {
        stop_reason(done.finish(), &reply.stops)
    } else {
        (TOOL_USE, Value::Null)
    };
    json!({
        "id": reply.id,
        "type": "message",
        "role": "assistant",
        "model": reply.model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": {
            "input_tokens": reply.input_tokens(&done.usage),
            "output_tokens": done.usage.completion_tokens,
        },
    })
}

/// The kinds of content block a stream writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Thinking,
    Text,
}

/// The stream's [`Encoder`]: content blocks are opened as text of their kind arrives, so thinking comes first in
/// its own block when the model thinks.
pub struct MessageStream {
    reply: Reply,
    /// The open block and its index.
    open: Option<(usize, Block)>,
    /// Blocks started so far (the next block's index).
    blocks: usize,
    text_written: bool,
    finished: bool,
}

impl MessageStream {
    pub fn new(reply: Reply) -> MessageStream {
        MessageStream {
            reply,
            open: None,
            blocks: 0,
            text_written: false,
            finished: false,
        }
    }

    /// Makes `kind` the open block, closing another first.
    fn enter(&mut self, kind: Block, out: &mut Vec<Frame>) -> usize {
        if let Some((index, open)) = self.open {
            if open == kind {
                return index;
            }
            self.close(out);
        }
        let index = self.blocks;
        self.blocks += 1;
        let block = match kind {
            Block::Thinking => json!({ "type": "thinking", "thinking": "", "signature": "" }),
            Block::Text => json!({ "type": "text", "text": "" }),
        };
        out.push(event(
            "content_block_start",
            json!({ "type": "content_block_start", "index": index, "content_block": block }),
        ));
        if index == 0 {
            // Anthropic's own streams ping once here.
            out.push(ping());
        }
        self.text_written |= kind == Block::Text;
        self.open = Some((index, kind));
        index
    }

    fn close(&mut self, out: &mut Vec<Frame>) {
        if let Some((index, _)) = self.open.take() {
            out.push(event(
                "content_block_stop",
                json!({ "type": "content_block_stop", "index": index }),
            ));
        }
    }
}

/// `stop_reason` of an answer that ended in tool calls.
const TOOL_USE: &str = "tool_use";

/// A `tool_use` content block with its input (empty when streaming: the input follows as `input_json_delta`).
fn tool_use(call: &ToolCall, input: Value) -> Value {
    json!({ "type": "tool_use", "id": call.id, "name": call.name, "input": input })
}

fn event(name: &'static str, body: Value) -> Frame {
    Frame::event(name, body.to_string())
}

fn ping() -> Frame {
    event("ping", json!({ "type": "ping" }))
}

impl Encoder for MessageStream {
    fn wire(&self) -> Wire {
        Wire::Sse
    }

    fn dialect(&self) -> Dialect {
        Dialect::Anthropic
    }

    fn open(&mut self, out: &mut Vec<Frame>) {
        let r = &self.reply;
        out.push(event(
            "message_start",
            json!({ "type": "message_start", "message": {
                "id": r.id,
                "type": "message",
                "role": "assistant",
                "model": r.model,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": { "input_tokens": r.input_tokens.unwrap_or(0), "output_tokens": 0 },
            }}),
        ));
    }

    fn text(&mut self, text: &str, thinking: bool, out: &mut Vec<Frame>) {
        let (kind, delta) = if thinking {
            (Block::Thinking, json!({ "type": "thinking_delta", "thinking": text }))
        } else {
            (Block::Text, json!({ "type": "text_delta", "text": text }))
        };
        let index = self.enter(kind, out);
        out.push(event(
            "content_block_delta",
            json!({ "type": "content_block_delta", "index": index, "delta": delta }),
        ));
    }

    fn finish(&mut self, finish: FinishReason, usage: &Usage, out: &mut Vec<Frame>) {
        if self.finished {
            return;
        }
        // Every message has a text block, empty when the model said nothing.
        if !self.text_written {
            self.enter(Block::Text, out);
        }
        let (stop_reason, stop_sequence) = stop_reason(finish, &self.reply.stops);
        self.end(stop_reason, stop_sequence, usage, out);
    }

    fn tool_calls(&mut self, calls: &[ToolCall], usage: &Usage, out: &mut Vec<Frame>) {
        if self.finished {
            return;
        }
        self.close(out);
        for call in calls {
            let index = self.blocks;
            self.blocks += 1;
            out.push(event(
                "content_block_start",
                json!({ "type": "content_block_start", "index": index, "content_block": tool_use(call, json!({})) }),
            ));
            if index == 0 {
                out.push(ping());
            }
            out.push(event(
                "content_block_delta",
                json!({ "type": "content_block_delta", "index": index,
                        "delta": { "type": "input_json_delta", "partial_json": call.arguments } }),
            ));
            out.push(event(
                "content_block_stop",
                json!({ "type": "content_block_stop", "index": index }),
            ));
        }
        self.end(TOOL_USE, Value::Null, usage, out);
    }

    fn done(&mut self, out: &mut Vec<Frame>) {
        // A stream that ended without a final chunk still ends as a message does.
        self.finish(FinishReason::Stop, &Usage::default(), out);
        out.push(event("message_stop", json!({ "type": "message_stop" })));
    }

    fn fail(&mut self, error: &ApiError, out: &mut Vec<Frame>) {
        out.push(event("error", Dialect::Anthropic.error_body(error)));
    }

    fn keep_alive(&self) -> Option<Frame> {
        Some(ping())
    }
}

impl MessageStream {
    /// Closes the open block and writes `message_delta` with the stop reason and usage.
    fn end(&mut self, stop_reason: &str, stop_sequence: Value, usage: &Usage, out: &mut Vec<Frame>) {
        self.finished = true;
        self.close(out);
        out.push(event(
            "message_delta",
            json!({
                "type": "message_delta",
                "delta": { "stop_reason": stop_reason, "stop_sequence": stop_sequence },
                // Cumulative, as Anthropic writes it: the runner's prompt count replaces message_start's.
                "usage": {
                    "input_tokens": self.reply.input_tokens(usage),
                    "output_tokens": usage.completion_tokens,
                },
            }),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply() -> Reply {
        Reply {
            id: "msg_1".into(),
            model: "smol".into(),
            stops: vec!["3".into(), "END".into()],
            input_tokens: Some(9),
        }
    }

    /// (event name, parsed data) of each frame.
    fn events(frames: &[Frame]) -> Vec<(&'static str, Value)> {
        frames
            .iter()
            .map(|f| match f {
                Frame::Event { name, data } => (
                    name.unwrap_or("<unnamed>"),
                    serde_json::from_str(data).unwrap_or(Value::Null),
                ),
                other => ("<not an event>", Value::from(format!("{other:?}"))),
            })
            .collect()
    }

    fn usage(prompt: u32, completion: u32) -> Usage {
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            ..Usage::default()
        }
    }

    #[test]
    fn stop_reasons_map_and_name_the_matched_sequence() {
        let stops = reply().stops;
        assert_eq!(stop_reason(FinishReason::Stop, &stops), ("end_turn", Value::Null));
        assert_eq!(stop_reason(FinishReason::Length, &stops), ("max_tokens", Value::Null));
        assert_eq!(
            stop_reason(FinishReason::StopSequence(1), &stops),
            ("stop_sequence", Value::from("END"))
        );
        assert_eq!(
            stop_reason(FinishReason::StopSequence(7), &stops),
            ("stop_sequence", Value::Null)
        );
    }

    #[test]
    fn a_whole_message_has_anthropics_shape() {
        let done = Completion {
            text: "1, 2, ".into(),
            reasoning: String::new(),
            finish: Some(FinishReason::StopSequence(0)),
            usage: usage(11, 5),
            ..Completion::default()
        };
        let m = message_json(&reply(), &done);
        assert_eq!(m["type"], "message");
        assert_eq!(m["role"], "assistant");
        assert_eq!(m["model"], "smol");
        assert_eq!(m["content"], json!([{ "type": "text", "text": "1, 2, " }]));
        assert_eq!(m["stop_reason"], "stop_sequence");
        assert_eq!(m["stop_sequence"], "3");
        assert_eq!(m["usage"], json!({ "input_tokens": 11, "output_tokens": 5 }));
        let thought = Completion {
            reasoning: "hmm".into(),
            finish: Some(FinishReason::Length),
            ..done
        };
        let m = message_json(&reply(), &thought);
        assert_eq!(m["content"][0]["type"], "thinking");
        assert_eq!(m["content"][1]["type"], "text");
        assert_eq!(m["stop_reason"], "max_tokens");
        assert_eq!(m["stop_sequence"], Value::Null);
    }

    #[test]
    fn a_stream_writes_anthropics_event_sequence() {
        let mut s = MessageStream::new(reply());
        let mut out = Vec::new();
        s.open(&mut out);
        s.text("Hel", false, &mut out);
        s.text("lo", false, &mut out);
        s.finish(FinishReason::Length, &usage(12, 2), &mut out);
        s.done(&mut out);
        let ev = events(&out);
        let names: Vec<&str> = ev.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        for (name, data) in &ev {
            assert_eq!(data["type"], *name, "each event's data names its type");
        }
        let start = &ev[0].1["message"];
        assert_eq!(start["id"], "msg_1");
        assert_eq!(start["content"], json!([]));
        assert_eq!(start["usage"]["input_tokens"], 9);
        assert_eq!(ev[1].1["content_block"], json!({ "type": "text", "text": "" }));
        assert_eq!(ev[3].1["delta"], json!({ "type": "text_delta", "text": "Hel" }));
        assert_eq!(ev[3].1["index"], 0);
        assert_eq!(ev[6].1["delta"]["stop_reason"], "max_tokens");
        assert_eq!(ev[6].1["delta"]["stop_sequence"], Value::Null);
        assert_eq!(ev[6].1["usage"]["output_tokens"], 2);
        assert_eq!(ev[6].1["usage"]["input_tokens"], 12);
    }

    #[test]
    fn thinking_comes_first_in_its_own_block() {
        let mut s = MessageStream::new(reply());
        let mut out = Vec::new();
        s.open(&mut out);
        s.text("let me see", true, &mut out);
        s.text("Hi", false, &mut out);
        s.finish(FinishReason::StopSequence(1), &usage(3, 4), &mut out);
        s.done(&mut out);
        let ev = events(&out);
        let names: Vec<&str> = ev.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(ev[1].1["content_block"]["type"], "thinking");
        assert_eq!(
            ev[3].1["delta"],
            json!({ "type": "thinking_delta", "thinking": "let me see" })
        );
        assert_eq!(ev[5].1["index"], 1);
        assert_eq!(ev[5].1["content_block"]["type"], "text");
        assert_eq!(ev[6].1["index"], 1);
        assert_eq!(ev[8].1["delta"]["stop_sequence"], "END");
    }

    #[test]
    fn an_empty_answer_still_has_a_text_block_and_failures_are_error_events() {
        let mut s = MessageStream::new(reply());
        let mut out = Vec::new();
        s.open(&mut out);
        s.finish(FinishReason::Stop, &usage(3, 1), &mut out);
        s.done(&mut out);
        let names: Vec<&str> = events(&out).iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );

        let mut s = MessageStream::new(reply());
        let mut out = Vec::new();
        s.open(&mut out);
        s.text("a", false, &mut out);
        out.clear();
        s.fail(
            &ApiError::from_close(&shoal_core::registry::CloseReason::InstanceGone),
            &mut out,
        );
        let ev = events(&out);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].0, "error");
        assert_eq!(ev[0].1["type"], "error");
        assert_eq!(ev[0].1["error"]["type"], "overloaded_error");
        assert_eq!(s.keep_alive(), Some(ping()));
    }
}
