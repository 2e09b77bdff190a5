//! The Responses stream ([`Events`], an [`Encoder`]) and its output items ([`Item`]): the event sequence
//! [`super::responses`] documents, each event numbered by `sequence_number`.

use serde_json::{Value, json};
use shoal_types::chunk::{FinishReason, Usage};
use shoal_types::params::ToolCall;

use super::responses::{Shape, outcome};
use crate::error::{ApiError, Dialect};
use crate::generation::{Encoder, Frame, Wire};
use crate::logprobs::{TokenLogprob, entry_json};
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Reasoning,
    Message,
    /// A `function_call` item: `text` holds its arguments.
    Call,
}

/// One output item: a `reasoning` item or the assistant's `message`, each with one text part.
pub(super) struct Item {
    kind: Kind,
    id: String,
    text: String,
    /// `in_progress` until the item is done.
    status: &'static str,
    /// A message's `output_text.logprobs` entries, when the request asked for them.
    pub(super) logprobs: Option<Vec<Value>>,
    /// A call's `call_id` and function name.
    call: Option<(String, String)>,
}

impl Item {
    pub(super) fn new(kind: Kind, id: &str, text: String) -> Item {
        let prefix = match kind {
            Kind::Reasoning => "rs",
            Kind::Message => "msg",
            Kind::Call => "fc",
        };
        Item {
            kind,
            id: format!("{prefix}_{id}"),
            text,
            status: "in_progress",
            logprobs: None,
            call: None,
        }
    }

    /// A `function_call` item for a parsed call (its id made from the call's own, which is unique).
    pub(super) fn call(call: &ToolCall) -> Item {
        let mut item = Item::new(Kind::Call, &call.id, call.arguments.clone());
        item.call = Some((call.id.clone(), call.name.clone()));
        item
    }

    fn part(&self, text: &str) -> Value {
        match self.kind {
            Kind::Reasoning => json!({ "type": "reasoning_text", "text": text }),
            Kind::Message | Kind::Call => {
                let mut part = json!({ "type": "output_text", "text": text, "annotations": [] });
                if let Some(logprobs) = &self.logprobs {
                    part["logprobs"] = Value::from(logprobs.clone());
                }
                part
            }
        }
    }

    /// The item with `status`; `content` is empty while it is being added, as OpenAI sends it.
    fn with_content(&self, status: &str, content: Vec<Value>) -> Value {
        match self.kind {
            Kind::Reasoning => json!({
                "type": "reasoning", "id": self.id, "status": status, "summary": [], "content": content,
            }),
            Kind::Message => json!({
                "type": "message", "id": self.id, "status": status, "role": "assistant", "content": content,
            }),
            Kind::Call => {
                let (call_id, name) = self.call.clone().unwrap_or_default();
                let arguments = if content.is_empty() { "" } else { self.text.as_str() };
                json!({
                    "type": "function_call", "id": self.id, "call_id": call_id, "name": name,
                    "arguments": arguments, "status": status,
                })
            }
        }
    }

    pub(super) fn json(&self, status: &str) -> Value {
        self.with_content(status, vec![self.part(&self.text)])
    }
}

/// The stream's [`Encoder`]: the Response as it grows, and the next `sequence_number`.
pub(super) struct Events {
    shape: Shape,
    sequence: u64,
    items: Vec<Item>,
    /// The request asked for logprobs: the message's part and text events carry them.
    pub(super) logprobs: bool,
}

impl Events {
    pub(super) fn new(shape: Shape) -> Events {
        Events {
            shape,
            sequence: 0,
            items: Vec::new(),
            logprobs: false,
        }
    }

    fn emit(&mut self, kind: &'static str, mut body: Value, out: &mut Vec<Frame>) {
        body["type"] = Value::from(kind);
        body["sequence_number"] = Value::from(self.sequence);
        self.sequence += 1;
        out.push(Frame::event(kind, body.to_string()));
    }

    fn output(&self) -> Vec<Value> {
        self.items.iter().map(|item| item.json(item.status)).collect()
    }

    /// The item being written, if one is open.
    fn open_item(&self) -> Option<(usize, &Item)> {
        let index = self.items.len().checked_sub(1)?;
        let item = &self.items[index];
        (item.status == "in_progress").then_some((index, item))
    }

    fn add_item(&mut self, kind: Kind, out: &mut Vec<Frame>) {
        let mut item = Item::new(kind, &self.shape.id, String::new());
        if self.logprobs && kind == Kind::Message {
            item.logprobs = Some(Vec::new());
        }
        let index = self.items.len();
        let added = json!({ "output_index": index, "item": item.with_content("in_progress", Vec::new()) });
        let part = json!({ "item_id": item.id, "output_index": index, "content_index": 0, "part": item.part("") });
        self.items.push(item);
        self.emit("response.output_item.added", added, out);
        self.emit("response.content_part.added", part, out);
    }

    /// Text of the current kind's item (opening it), with the token's logprob entry on a message.
    fn write(&mut self, text: &str, thinking: bool, logprob: Option<&TokenLogprob>, out: &mut Vec<Frame>) {
        let kind = if thinking { Kind::Reasoning } else { Kind::Message };
        if self.open_item().is_none_or(|(_, item)| item.kind != kind) {
            self.close_item("completed", out);
            self.add_item(kind, out);
        }
        let index = self.items.len() - 1;
        let item = &mut self.items[index];
        item.text.push_str(text);
        let entries: Vec<Value> = logprob.map(entry_json).into_iter().collect();
        if let Some(all) = &mut item.logprobs {
            all.extend(entries.iter().cloned());
        }
        let (name, mut delta) = match kind {
            Kind::Reasoning => ("response.reasoning_text.delta", json!({})),
            Kind::Message | Kind::Call => ("response.output_text.delta", json!({ "logprobs": entries })),
        };
        delta["item_id"] = Value::from(item.id.clone());
        delta["output_index"] = Value::from(index);
        delta["content_index"] = Value::from(0);
        delta["delta"] = Value::from(text);
        self.emit(name, delta, out);
    }

    fn close_item(&mut self, status: &'static str, out: &mut Vec<Frame>) {
        let Some((index, item)) = self.open_item() else {
            return;
        };
        let (text_done, mut text) = match item.kind {
            Kind::Reasoning => ("response.reasoning_text.done", json!({})),
            Kind::Message | Kind::Call => (
                "response.output_text.done",
                json!({ "logprobs": item.logprobs.clone().unwrap_or_default() }),
            ),
        };
        text["item_id"] = Value::from(item.id.clone());
        text["output_index"] = Value::from(index);
        text["content_index"] = Value::from(0);
        text["text"] = Value::from(item.text.clone());
        let part = json!({
            "item_id": item.id, "output_index": index, "content_index": 0, "part": item.part(&item.text),
        });
        let done = json!({ "output_index": index, "item": item.json(status) });
        self.items[index].status = status;
        self.emit(text_done, text, out);
        self.emit("response.content_part.done", part, out);
        self.emit("response.output_item.done", done, out);
    }
}

impl Encoder for Events {
    fn wire(&self) -> Wire {
        Wire::Sse
    }

    fn dialect(&self) -> Dialect {
        Dialect::OpenAi
    }

    fn open(&mut self, out: &mut Vec<Frame>) {
        let response = self.shape.response("in_progress", Vec::new(), None, None, None);
        self.emit("response.created", json!({ "response": response }), out);
        let response = self.shape.response("in_progress", Vec::new(), None, None, None);
        self.emit("response.in_progress", json!({ "response": response }), out);
    }

    fn text(&mut self, text: &str, thinking: bool, out: &mut Vec<Frame>) {
        self.write(text, thinking, None, out);
    }

    fn token(&mut self, text: &str, thinking: bool, logprob: &TokenLogprob, out: &mut Vec<Frame>) {
        // Reasoning text has no logprobs in Responses; the message's `output_text` has.
        if thinking {
            if !text.is_empty() {
                self.write(text, thinking, None, out);
            }
            return;
        }
        self.write(text, thinking, Some(logprob), out);
    }

    fn finish(&mut self, finish: FinishReason, usage: &Usage, out: &mut Vec<Frame>) {
        let (status, incomplete) = outcome(finish);
        let item_status = if incomplete.is_some() {
            "incomplete"
        } else {
            "completed"
        };
        // Every Response has its message, even an empty one.
        if !self.items.iter().any(|item| item.kind == Kind::Message) {
            self.close_item(item_status, out);
            self.add_item(Kind::Message, out);
        }
        self.close_item(item_status, out);
        let response = self
            .shape
            .response(status, self.output(), Some(usage), incomplete, None);
        let kind = if incomplete.is_some() {
            "response.incomplete"
        } else {
            "response.completed"
        };
        self.emit(kind, json!({ "response": response }), out);
    }

    fn tool_calls(&mut self, calls: &[ToolCall], usage: &Usage, out: &mut Vec<Frame>) {
        self.close_item("completed", out);
        for call in calls {
            let item = Item::call(call);
            let index = self.items.len();
            let (id, args) = (item.id.clone(), item.text.clone());
            let added = json!({ "output_index": index, "item": item.with_content("in_progress", Vec::new()) });
            self.emit("response.output_item.added", added, out);
            let delta = json!({ "item_id": id, "output_index": index, "delta": args });
            self.emit("response.function_call_arguments.delta", delta, out);
            let done = json!({ "item_id": id, "output_index": index, "arguments": args });
            self.emit("response.function_call_arguments.done", done, out);
            let item_done = json!({ "output_index": index, "item": item.json("completed") });
            self.emit("response.output_item.done", item_done, out);
            self.items.push(Item {
                status: "completed",
                ..item
            });
        }
        let response = self.shape.response("completed", self.output(), Some(usage), None, None);
        self.emit("response.completed", json!({ "response": response }), out);
    }

    fn done(&mut self, _out: &mut Vec<Frame>) {
        // `response.completed` (or `response.incomplete`) was the last event; the stream just ends.
    }

    fn fail(&mut self, error: &ApiError, out: &mut Vec<Frame>) {
        if let Some((index, _)) = self.open_item() {
            self.items[index].status = "incomplete";
        }
        let response = self.shape.response("failed", self.output(), None, None, Some(error));
        self.emit("response.failed", json!({ "response": response }), out);
    }
}
