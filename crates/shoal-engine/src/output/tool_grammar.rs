//! The grammars of tool calls, in llguidance's Lark syntax with each call's JSON schema inlined (`%json{…}`), written
//! in the model's own call format so the parser in [`super::tool_calls`] reads them back. Two uses:
//! - [`forced_call_grammar`] (`tool_choice` `required` or a named function): the whole output is the call(s);
//! - [`auto_call_grammar`] (`tool_choice: auto`): the output is free until a call starts
//!   ([`ToolFormat::grammar_start`]); the last rank then applies this grammar from the call's first byte on
//!   ([`super::trigger::CallTrigger`]).
//!
//! Pure text building; llguidance checks it when it compiles it.

use serde_json::{Value, json};

use super::ToolFormat;
use super::tool_calls::{HERMES_CLOSE, HERMES_OPEN, MISTRAL_ARGS, MISTRAL_MARK, PYTHON_TAG};

/// Calls one output may make when parallel calls are allowed: a small model let free to add calls repeats them until
/// its token limit (seen with the test model at temperature 0.7), and an output cut there is no call at all.
pub const MAX_PARALLEL_CALLS: usize = 4;

/// Whitespace between JSON tokens once `auto`'s grammar takes over: what models write (`{\n  "a": 1}`, which may
/// come in the very token that started the call), bounded so a small model cannot pad forever.
const JSON_WHITESPACE: &str = r"[\x20\x0A\x0D\x09]{1,8}";

/// How the JSON in a call grammar may be spaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spacing {
    /// No whitespace between tokens: a forced output is the grammar's from its first token, and a small model spends
    /// its tokens on padding otherwise.
    Compact,
    /// [`JSON_WHITESPACE`].
    Bounded,
}

/// A function the request offers: its name and its parameters' JSON schema.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub parameters: Value,
}

/// Which call the grammar forces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forced {
    /// Any of the tools (`required`, Anthropic's `any`).
    Any,
    /// This one (a named function, Anthropic's `tool`).
    Named(String),
}

/// What every call grammar is built from.
pub struct CallGrammar<'a> {
    pub format: ToolFormat,
    pub tools: &'a [ToolSpec],
    /// Several calls may be made (OpenAI `parallel_tool_calls` not false, Anthropic `disable_parallel_tool_use` not
    /// true); otherwise exactly one.
    pub parallel: bool,
    /// The id of the model's control token spelled so, if it has one: a marker written with a control token is
    /// named by id in the grammar (`<[id]>`), since plain text can never match a control token.
    pub control: &'a dyn Fn(&str) -> Option<u32>,
}

/// The Lark grammar of an output that is only calls; an error when nothing can be forced (no tools, or no tool of
/// that name).
pub fn forced_call_grammar(g: &CallGrammar<'_>, forced: &Forced) -> Result<String, String> {
    let chosen: Vec<&ToolSpec> = match forced {
        Forced::Any => g.tools.iter().collect(),
        Forced::Named(name) => g.tools.iter().filter(|t| &t.name == name).collect(),
    };
    if chosen.is_empty() {
        return Err(match forced {
            Forced::Any => "no tools to call".to_string(),
            Forced::Named(name) => format!("no tool is named `{name}`"),
        });
    }
    let max = g.max_calls();
    Ok(match g.format {
        ToolFormat::Hermes => g.hermes(&chosen, Spacing::Compact),
        // `[TOOL_CALLS]` may be left out (older grammars did, the parser reads the array alone).
        ToolFormat::Mistral => g.mistral(&chosen, true, Spacing::Compact),
        ToolFormat::Llama3 => g.llama3(&chosen, false, Spacing::Compact),
        // The generic format's instructions ask for `{"tool_calls":[…]}`.
        ToolFormat::Generic => format!(
            "start: call\ncall: {}\n",
            json_rule(&wrapper(&chosen, max), Spacing::Compact)
        ),
    })
}

/// The Lark grammar of `tool_choice: auto` once a call has started: it matches the output from the byte
/// [`ToolFormat::grammar_start`] found on, a call of any offered tool (several when parallel calls are allowed).
/// An error when there are no tools.
pub fn auto_call_grammar(g: &CallGrammar<'_>) -> Result<String, String> {
    let chosen: Vec<&ToolSpec> = g.tools.iter().collect();
    if chosen.is_empty() {
        return Err("no tools to call".to_string());
    }
    Ok(match g.format {
        ToolFormat::Hermes => g.hermes(&chosen, Spacing::Bounded),
        ToolFormat::Mistral => g.mistral(&chosen, false, Spacing::Bounded),
        ToolFormat::Llama3 => g.llama3(&chosen, true, Spacing::Bounded),
        // The instructions' wrapper, or a bare call (the parser takes both).
        ToolFormat::Generic => {
            let either = json!({ "anyOf": [wrapper(&chosen, g.max_calls()), any_call(&chosen, "arguments")] });
            format!("start: call\ncall: {}\n", json_rule(&either, Spacing::Bounded))
        }
    })
}

impl CallGrammar<'_> {
    fn max_calls(&self) -> usize {
        if self.parallel { MAX_PARALLEL_CALLS } else { 1 }
    }

    /// `first (sep first){0,max-1}`, or `first` alone for one call.
    fn repeat(&self, item: &str, sep: &str) -> String {
        match self.max_calls() {
            1 => item.to_string(),
            n => format!("{item} ({sep} {item}){{0,{}}}", n - 1),
        }
    }

    /// A marker as a grammar item: the control token's id, or its text.
    fn mark(&self, text: &str) -> String {
        match (self.control)(text) {
            Some(id) => format!("<[{id}]>"),
            None => lark_string(text),
        }
    }

    /// `<tool_call>\n{…}\n</tool_call>` blocks, one a line.
    fn hermes(&self, chosen: &[&ToolSpec], spacing: Spacing) -> String {
        format!(
            "start: {}\nblock: {} \"\\n\"? call \"\\n\"? {}\ncall: {}\n",
            self.repeat("block", "\"\\n\""),
            self.mark(HERMES_OPEN),
            self.mark(HERMES_CLOSE),
            json_rule(&any_call(chosen, "arguments"), spacing),
        )
    }

    /// `[TOOL_CALLS]` then a JSON array of calls, or (vocabularies with an `[ARGS]` control token, the newer
    /// templates) `name[ARGS]{…}` calls each after its own `[TOOL_CALLS]`.
    fn mistral(&self, chosen: &[&ToolSpec], marker_optional: bool, spacing: Spacing) -> String {
        let mark = self.mark(MISTRAL_MARK);
        let array = json!({ "type": "array", "items": any_call(chosen, "arguments"), "minItems": 1,
                            "maxItems": self.max_calls() });
        let old = if marker_optional {
            format!("{mark}? array")
        } else {
            format!("{mark} array")
        };
        let mut out = format!("array: {}\n", json_rule(&array, spacing));
        match (self.control)(MISTRAL_ARGS) {
            Some(args) => {
                let fns: Vec<String> = chosen
                    .iter()
                    .map(|t| {
                        format!(
                            "{} <[{args}]> {}",
                            lark_string(&t.name),
                            json_rule(&parameters(t), spacing)
                        )
                    })
                    .collect();
                out.push_str(&format!("fn: {}\n", fns.join(" | ")));
                let new = self.repeat(&format!("{mark} fn"), "");
                out.insert_str(0, &format!("start: {old} | {new}\n"));
            }
            None => out.insert_str(0, &format!("start: {old}\n")),
        }
        out
    }

    /// `{"name":…,"parameters":…}` calls separated by `; ` (as Llama 3.2 writes several), after an optional
    /// `<|python_tag|>` where the output may open with one.
    fn llama3(&self, chosen: &[&ToolSpec], tag: bool, spacing: Spacing) -> String {
        let calls = self.repeat("call", "\"; \"");
        let start = if tag {
            format!("{}? {calls}", self.mark(PYTHON_TAG))
        } else {
            calls
        };
        format!(
            "start: {start}\ncall: {}\n",
            json_rule(&any_call(chosen, "parameters"), spacing)
        )
    }
}

/// `%json{…}` spaced so.
fn json_rule(schema: &Value, spacing: Spacing) -> String {
    let mut schema = schema.clone();
    let options = match spacing {
        Spacing::Compact => json!({ "whitespace_flexible": false }),
        Spacing::Bounded => json!({ "whitespace_pattern": JSON_WHITESPACE }),
    };
    if let Some(obj) = schema.as_object_mut() {
        obj.insert("x-guidance".to_string(), options);
    }
    format!("%json{schema}")
}

/// A Lark string literal (JSON's escapes are Lark's).
fn lark_string(text: &str) -> String {
    Value::String(text.to_string()).to_string()
}

/// The generic format's `{"tool_calls":[…]}` with 1 to `max` calls.
fn wrapper(chosen: &[&ToolSpec], max: usize) -> Value {
    json!({
        "type": "object",
        "properties": {
            "tool_calls": { "type": "array", "items": any_call(chosen, "arguments"), "minItems": 1, "maxItems": max }
        },
        "required": ["tool_calls"],
        "additionalProperties": false,
    })
}

/// One call of any of `chosen`.
fn any_call(chosen: &[&ToolSpec], args_key: &str) -> Value {
    let variants: Vec<Value> = chosen.iter().map(|t| call_schema(t, args_key)).collect();
    match <[Value; 1]>::try_from(variants) {
        Ok([one]) => one,
        Err(many) => json!({ "anyOf": many }),
    }
}

/// A function's parameters schema; one without takes any object.
fn parameters(tool: &ToolSpec) -> Value {
    match &tool.parameters {
        Value::Object(o) if !o.is_empty() => tool.parameters.clone(),
        _ => json!({ "type": "object" }),
    }
}

fn call_schema(tool: &ToolSpec, args_key: &str) -> Value {
    json!({
        "type": "object",
        "properties": { "name": { "const": tool.name }, args_key: parameters(tool) },
        "required": ["name", args_key],
        "additionalProperties": false,
    })
}

#[cfg(test)]
#[path = "tool_grammar_tests.rs"]
mod tests;
