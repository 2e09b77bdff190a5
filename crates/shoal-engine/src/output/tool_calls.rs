//! Tool calls in a model's output, by format (SYSTEM.md §10.4: the last rank parses them). Pure: the format is
//! chosen from the chat template's source (what llama.cpp's chat-parser detection looks at), the text is what the
//! model wrote. A call that does not parse is not a call: its text is shown as text, never an error.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// How a model writes its tool calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToolFormat {
    /// Hermes 2 Pro / Qwen 2.5 / Qwen 3: `<tool_call>{"name":…,"arguments":…}</tool_call>`, one block per call.
    Hermes,
    /// Llama 3.x: the answer is `{"name":…,"parameters":…}`, optionally after `<|python_tag|>`.
    Llama3,
    /// Mistral Nemo/Small: `[TOOL_CALLS][{…},…]`, or the newer `[TOOL_CALLS]name[ARGS]{…}`.
    Mistral,
    /// Templates without tool support: the instructions in the system prompt ask for
    /// `{"tool_calls":[{"name":…,"arguments":…}]}` (a bare `{"name":…,"arguments":…}` is taken too).
    Generic,
}

/// A parsed call: the function's name and its arguments as compact JSON object text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParsedCall {
    pub name: String,
    pub arguments: String,
}

pub(crate) const HERMES_OPEN: &str = "<tool_call>";
pub(crate) const HERMES_CLOSE: &str = "</tool_call>";
pub(crate) const PYTHON_TAG: &str = "<|python_tag|>";
pub(crate) const MISTRAL_MARK: &str = "[TOOL_CALLS]";
pub(crate) const MISTRAL_ARGS: &str = "[ARGS]";
const FENCE: &str = "```";

impl ToolFormat {
    /// The format a chat template's source writes calls in (`None`: the file has no template, a built-in format).
    pub fn detect(template: Option<&str>) -> ToolFormat {
        let Some(src) = template else {
            return ToolFormat::Generic;
        };
        if src.contains(HERMES_OPEN) {
            ToolFormat::Hermes
        } else if src.contains(MISTRAL_MARK) {
            ToolFormat::Mistral
        } else if src.contains("<|start_header_id|>") && (src.contains("ipython") || src.contains(PYTHON_TAG)) {
            ToolFormat::Llama3
        } else {
            ToolFormat::Generic
        }
    }

    /// Where, in the answer so far, a call begins; `None` when none has begun yet.
    pub fn call_start(self, text: &str) -> Option<usize> {
        match self {
            ToolFormat::Hermes => text.find(HERMES_OPEN),
            ToolFormat::Mistral => text.find(MISTRAL_MARK).or_else(|| leading(text, &["[{"])),
            ToolFormat::Llama3 => leading(text, &[PYTHON_TAG, "{"]),
            ToolFormat::Generic => leading(text, &["{", FENCE]),
        }
    }

    /// Where the grammar of `tool_choice: auto` takes over: the call's opening marker anywhere in the answer
    /// (Hermes, Mistral), or an answer that opens with a call (Llama 3.x, generic: `{`). Narrower than
    /// [`ToolFormat::call_start`]: an answer that opens with `[{` or a code fence may be a plain answer, so it is not
    /// forced into a call (the parser still reads a call written so).
    pub fn grammar_start(self, text: &str) -> Option<usize> {
        match self {
            ToolFormat::Hermes => text.find(HERMES_OPEN),
            ToolFormat::Mistral => text.find(MISTRAL_MARK),
            ToolFormat::Llama3 => leading(text, &[PYTHON_TAG, "{"]),
            ToolFormat::Generic => leading(text, &["{"]),
        }
    }

    /// Whether [`ToolFormat::grammar_start`] may still find a start in an answer that begins with `text` (it found
    /// none so far): the formats whose calls open the answer are decided by its first non-blank text.
    pub fn grammar_may_start(self, text: &str) -> bool {
        match self {
            ToolFormat::Hermes | ToolFormat::Mistral => true,
            ToolFormat::Llama3 => undecided_lead(text, &[PYTHON_TAG, "{"]),
            ToolFormat::Generic => undecided_lead(text, &["{"]),
        }
    }

    /// The marker texts this format writes calls with that a model's vocabulary may hold as control tokens: the
    /// decoder drops control tokens from the text shown, so the last rank hands these to the parser on their own
    /// ([`super::OutputParser::push_control`]).
    pub fn markers(self) -> &'static [&'static str] {
        match self {
            ToolFormat::Hermes => &[HERMES_OPEN, HERMES_CLOSE],
            ToolFormat::Llama3 => &[PYTHON_TAG],
            ToolFormat::Mistral => &[MISTRAL_MARK, MISTRAL_ARGS],
            ToolFormat::Generic => &[],
        }
    }

    /// How much of `text` (an answer in which no call has begun) can be shown now: what a later token cannot turn
    /// into the start of a call.
    pub fn safe_len(self, text: &str) -> usize {
        match self {
            ToolFormat::Hermes => text.len() - partial_suffix(text, HERMES_OPEN),
            ToolFormat::Mistral => {
                if undecided_lead(text, &["[{"]) {
                    0
                } else {
                    text.len() - partial_suffix(text, MISTRAL_MARK)
                }
            }
            ToolFormat::Llama3 => usize::from(!undecided_lead(text, &[PYTHON_TAG, "{"])) * text.len(),
            ToolFormat::Generic => usize::from(!undecided_lead(text, &["{", FENCE])) * text.len(),
        }
    }

    /// The calls in `text`, which starts where [`ToolFormat::call_start`] said; `None` when it is not a well-formed
    /// call (it is then shown as text).
    pub fn parse(self, text: &str) -> Option<Vec<ParsedCall>> {
        let calls = match self {
            ToolFormat::Hermes => parse_hermes(text)?,
            ToolFormat::Llama3 => json_values(text.trim_start().strip_prefix(PYTHON_TAG).unwrap_or(text))?
                .iter()
                .map(call_of)
                .collect::<Option<Vec<_>>>()?,
            ToolFormat::Mistral => parse_mistral(text)?,
            ToolFormat::Generic => parse_generic(text)?,
        };
        (!calls.is_empty()).then_some(calls)
    }
}

/// Where the answer's first non-blank text starts, if it starts with one of `starts`.
fn leading(text: &str, starts: &[&str]) -> Option<usize> {
    let at = text.len() - text.trim_start().len();
    starts.iter().any(|s| text[at..].starts_with(s)).then_some(at)
}

/// The answer so far is blank, or its start could still grow into one of `starts`.
fn undecided_lead(text: &str, starts: &[&str]) -> bool {
    let t = text.trim_start();
    t.is_empty() || starts.iter().any(|s| s.starts_with(t) || t.starts_with(s))
}

/// The length of the longest end of `text` that is a proper start of `marker` (it may be completed next token).
fn partial_suffix(text: &str, marker: &str) -> usize {
    (1..marker.len())
        .rev()
        .find(|&n| {
            text.len() >= n && text.is_char_boundary(text.len() - n) && marker.starts_with(&text[text.len() - n..])
        })
        .unwrap_or(0)
}

/// `<tool_call>{…}</tool_call>` blocks with only blank text between them; the last block may lack its closing tag
/// (the model ended right after the JSON).
fn parse_hermes(text: &str) -> Option<Vec<ParsedCall>> {
    let mut calls = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let body = rest.strip_prefix(HERMES_OPEN)?;
        let (json, after) = match body.find(HERMES_CLOSE) {
            Some(end) => (&body[..end], &body[end + HERMES_CLOSE.len()..]),
            None => (body, ""),
        };
        calls.push(call_of(&serde_json::from_str::<Value>(json.trim()).ok()?)?);
        rest = after.trim_start();
    }
    Some(calls)
}

/// `[TOOL_CALLS][{…}]` (the marker may be missing: it is a control token the decoder can leave out), or one or more
/// `[TOOL_CALLS]name[ARGS]{…}`.
fn parse_mistral(text: &str) -> Option<Vec<ParsedCall>> {
    let text = text.trim();
    let first = text.strip_prefix(MISTRAL_MARK).unwrap_or(text).trim_start();
    if first.starts_with('[') {
        let Value::Array(items) = serde_json::from_str::<Value>(first).ok()? else {
            return None;
        };
        return items.iter().map(call_of).collect();
    }
    let mut calls = Vec::new();
    for part in text.split(MISTRAL_MARK).filter(|p| !p.trim().is_empty()) {
        let (name, args) = part.split_once(MISTRAL_ARGS)?;
        let name = name.trim();
        let args = serde_json::from_str::<Value>(args.trim()).ok()?;
        if name.is_empty() || !args.is_object() {
            return None;
        }
        calls.push(ParsedCall {
            name: name.to_string(),
            arguments: args.to_string(),
        });
    }
    Some(calls)
}

/// `{"tool_calls":[…]}`, `{"tool_call":{…}}` or a bare call, optionally in a Markdown code fence.
fn parse_generic(text: &str) -> Option<Vec<ParsedCall>> {
    let mut t = text.trim();
    if let Some(fenced) = t.strip_prefix(FENCE) {
        let body = fenced.trim_start_matches(|c: char| c.is_ascii_alphanumeric());
        t = body.trim().strip_suffix(FENCE).unwrap_or(body).trim();
    }
    let values = json_values(t)?;
    let mut calls = Vec::new();
    for v in &values {
        match v.get("tool_calls").or_else(|| v.get("tool_call")) {
            Some(Value::Array(items)) => calls.extend(items.iter().map(call_of).collect::<Option<Vec<_>>>()?),
            Some(one @ Value::Object(_)) => calls.push(call_of(one)?),
            Some(_) => return None,
            None => calls.push(call_of(v)?),
        }
    }
    Some(calls)
}

/// Consecutive JSON values separated by blanks or `;` (Llama 3.2 writes several calls so); `None` if anything else
/// is there.
fn json_values(text: &str) -> Option<Vec<Value>> {
    let mut out = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let mut stream = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
        let value = stream.next()?.ok()?;
        let used = stream.byte_offset();
        out.push(value);
        rest = rest[used..].trim_start().trim_start_matches(';').trim_start();
    }
    Some(out)
}

/// One call object: a name and its arguments (`arguments` or Llama's `parameters`; an object, or a string holding
/// one as OpenAI writes them), possibly wrapped as `{"type":"function","function":{…}}`.
fn call_of(v: &Value) -> Option<ParsedCall> {
    let obj: &Map<String, Value> = v.as_object()?;
    let obj = match obj.get("function") {
        Some(Value::Object(inner)) => inner,
        _ => obj,
    };
    let name = obj.get("name")?.as_str()?.trim();
    if name.is_empty() {
        return None;
    }
    let arguments = match obj.get("arguments").or_else(|| obj.get("parameters")) {
        None => Value::Object(Map::new()),
        Some(Value::String(s)) => serde_json::from_str::<Value>(s).ok()?,
        Some(v) => v.clone(),
    };
    if !arguments.is_object() {
        return None;
    }
    Some(ParsedCall {
        name: name.to_string(),
        arguments: arguments.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(calls: &[ParsedCall]) -> Vec<(&str, &str)> {
        calls.iter().map(|c| (c.name.as_str(), c.arguments.as_str())).collect()
    }

    #[test]
    fn the_format_comes_from_the_template() {
        let qwen = "{%- if tools %}…<tool_call>\\n{\"name\": <function-name>…</tool_call>{% endif %}";
        assert_eq!(ToolFormat::detect(Some(qwen)), ToolFormat::Hermes);
        let llama = "<|start_header_id|>ipython<|end_header_id|>{{ '<|python_tag|>' }}";
        assert_eq!(ToolFormat::detect(Some(llama)), ToolFormat::Llama3);
        let mistral = "{%- if message.tool_calls %}[TOOL_CALLS][{{ calls|tojson }}]{% endif %}";
        assert_eq!(ToolFormat::detect(Some(mistral)), ToolFormat::Mistral);
        let smollm = "{% for message in messages %}<|im_start|>{{ message['role'] }}{% endfor %}";
        assert_eq!(ToolFormat::detect(Some(smollm)), ToolFormat::Generic);
        assert_eq!(ToolFormat::detect(None), ToolFormat::Generic);
    }

    #[test]
    fn hermes_blocks_are_parallel_calls() {
        // Recorded from Qwen2.5-7B-Instruct.
        let out = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n\
                   <tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"tz\": \"CET\"}}\n</tool_call>";
        let calls = ToolFormat::Hermes.parse(out).expect("two calls");
        assert_eq!(
            names(&calls),
            [("get_weather", r#"{"city":"Paris"}"#), ("get_time", r#"{"tz":"CET"}"#)]
        );
        // The model stopped right after the JSON.
        let open = "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n";
        assert_eq!(names(&ToolFormat::Hermes.parse(open).expect("one")), [("f", "{}")]);
    }

    #[test]
    fn malformed_calls_are_not_calls() {
        let cases = [
            (
                ToolFormat::Hermes,
                "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1}\n</tool_call>",
            ),
            (ToolFormat::Hermes, "<tool_call>{\"arguments\": {}}</tool_call>"),
            (
                ToolFormat::Hermes,
                "<tool_call>{\"name\": \"f\"}</tool_call> and then some prose",
            ),
            (
                ToolFormat::Hermes,
                "<tool_call>{\"name\": \"\", \"arguments\": {}}</tool_call>",
            ),
            (
                ToolFormat::Hermes,
                "<tool_call>{\"name\": \"f\", \"arguments\": [1]}</tool_call>",
            ),
            (ToolFormat::Hermes, "<tool_call>"),
            (ToolFormat::Llama3, "{\"name\": \"f\", \"parameters\": {\"x\": "),
            (ToolFormat::Llama3, "{\"answer\": 42}"),
            (ToolFormat::Mistral, "[TOOL_CALLS][{\"name\": \"f\", \"arguments\": {}"),
            (ToolFormat::Mistral, "[TOOL_CALLS]f{\"a\": 1}"),
            (ToolFormat::Generic, "{\"tool_calls\": \"f\"}"),
            (ToolFormat::Generic, "{\"response\": \"hello\"}"),
            (ToolFormat::Generic, "{ not json"),
            (ToolFormat::Generic, "```python\nprint(1)\n```"),
            (ToolFormat::Generic, "{\"tool_calls\": []}"),
        ];
        for (format, text) in cases {
            assert_eq!(format.parse(text), None, "{format:?}: {text}");
        }
    }

    #[test]
    fn llama3_json_with_or_without_the_python_tag() {
        // Recorded from Llama-3.2-3B-Instruct.
        let out = "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"San Francisco\"}}";
        assert_eq!(
            names(&ToolFormat::Llama3.parse(out).expect("call")),
            [("get_weather", r#"{"city":"San Francisco"}"#)]
        );
        let tagged =
            "<|python_tag|>{\"name\": \"a\", \"parameters\": {}}; {\"name\": \"b\", \"parameters\": {\"n\": 2}}";
        assert_eq!(
            names(&ToolFormat::Llama3.parse(tagged).expect("calls")),
            [("a", "{}"), ("b", r#"{"n":2}"#)]
        );
        assert_eq!(ToolFormat::Llama3.call_start("  {\"name\""), Some(2));
        assert_eq!(ToolFormat::Llama3.call_start("The answer is {x}"), None);
    }

    #[test]
    fn mistral_both_spellings() {
        let old = "[TOOL_CALLS][{\"name\": \"f\", \"arguments\": {\"a\": 1}, \"id\": \"abcdefghi\"}]";
        assert_eq!(
            names(&ToolFormat::Mistral.parse(old).expect("call")),
            [("f", r#"{"a":1}"#)]
        );
        // The control token left out by the decoder.
        assert_eq!(
            names(
                &ToolFormat::Mistral
                    .parse("[{\"name\": \"f\", \"arguments\": {}}]")
                    .expect("call")
            ),
            [("f", "{}")]
        );
        let new = "[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Rome\"}[TOOL_CALLS]get_time[ARGS]{}";
        assert_eq!(
            names(&ToolFormat::Mistral.parse(new).expect("calls")),
            [("get_weather", r#"{"city":"Rome"}"#), ("get_time", "{}")]
        );
        assert_eq!(ToolFormat::Mistral.call_start("Sure. [TOOL_CALLS]f[ARGS]{}"), Some(6));
    }

    #[test]
    fn generic_json_shapes() {
        let wrapped =
            r#"{"tool_calls": [{"name": "f", "arguments": {"a": "x"}}, {"name": "g", "arguments": "{\"b\": 2}"}]}"#;
        assert_eq!(
            names(&ToolFormat::Generic.parse(wrapped).expect("calls")),
            [("f", r#"{"a":"x"}"#), ("g", r#"{"b":2}"#)]
        );
        let single = r#"{"tool_call": {"name": "f", "arguments": {}}}"#;
        assert_eq!(names(&ToolFormat::Generic.parse(single).expect("call")), [("f", "{}")]);
        let fenced = "```json\n{\"name\": \"f\", \"arguments\": {\"a\": 1}}\n```";
        assert_eq!(
            names(&ToolFormat::Generic.parse(fenced).expect("call")),
            [("f", r#"{"a":1}"#)]
        );
        let openai = r#"{"type": "function", "function": {"name": "f", "arguments": "{}"}}"#;
        assert_eq!(names(&ToolFormat::Generic.parse(openai).expect("call")), [("f", "{}")]);
    }

    #[test]
    fn text_is_held_only_while_a_call_may_be_starting() {
        assert_eq!(ToolFormat::Hermes.safe_len("Let me check <tool"), "Let me check ".len());
        assert_eq!(ToolFormat::Hermes.safe_len("a < b"), 5);
        assert_eq!(ToolFormat::Hermes.call_start("ok <tool_call>{"), Some(3));
        assert_eq!(ToolFormat::Generic.safe_len("\n "), 0);
        assert_eq!(ToolFormat::Generic.safe_len("``"), 0);
        assert_eq!(ToolFormat::Generic.safe_len("Hello"), 5);
        assert_eq!(ToolFormat::Llama3.safe_len("<|py"), 0);
        assert_eq!(ToolFormat::Mistral.safe_len("see [TOOL_"), 4);
        assert_eq!(ToolFormat::Mistral.safe_len("["), 0);
        // Multibyte text before a partial marker.
        assert_eq!(ToolFormat::Hermes.safe_len("é<"), "é".len());
    }
}
