//! Anthropic Messages request → [`GenerationParams`] (<https://docs.anthropic.com/en/api/messages>). Parsed field by
//! field, so a wrong type or value is a 400 that names the field (`messages[0].content[1].type`, `max_tokens`);
//! fields shoal has no use for (`metadata`, `service_tier`, `cache_control`, ...) are accepted and ignored.

use serde_json::{Map, Value};
use shoal_types::params::{GenerationParams, Message, Role, ToolCall, ToolChoice};

use crate::error::BadRequest;
use crate::fields;
use crate::tools::{self, ToolShape};

/// Anthropic's sampling temperature range (OpenAI's goes to 2).
pub const MAX_TEMPERATURE: f32 = 1.0;

/// Text blocks of one message (or of `system`) are joined with this, so two blocks never run into one word.
pub const BLOCK_SEPARATOR: &str = "\n\n";

const NO_IMAGES: &str = "no model this cluster serves takes images or documents; send text blocks";

/// What the handlers need besides [`GenerationParams`].
#[derive(Debug, Clone, PartialEq)]
pub struct MessagesRequest {
    pub params: GenerationParams,
    /// The model name as the client sent it (echoed in responses).
    pub model_name: String,
    pub stream: bool,
}

/// `POST /v1/messages`: `max_tokens` is required, as Anthropic requires it.
pub fn parse_messages(body: &[u8]) -> Result<MessagesRequest, BadRequest> {
    parse(body, true)
}

/// `POST /v1/messages/count_tokens`: the same body without `max_tokens`.
pub fn parse_count_tokens(body: &[u8]) -> Result<MessagesRequest, BadRequest> {
    parse(body, false)
}

fn parse(body: &[u8], needs_max_tokens: bool) -> Result<MessagesRequest, BadRequest> {
    let obj = fields::object(body)?;
    let model_name = fields::model(&obj)?;
    let max_output_tokens = fields::opt_token_limit(&obj, "max_tokens")?;
    if needs_max_tokens && max_output_tokens.is_none() {
        return Err(BadRequest::new("max_tokens", "is required"));
    }
    let messages = messages(&obj)?;
    let instructions = system(&obj)?;
    let tools = tools::read_tools(&obj, ToolShape::Anthropic)?;
    let tool_choice = tool_choice(&obj)?;
    tools::check_choice(&tool_choice, tools.as_deref(), "tool_choice")?;
    let params = GenerationParams {
        tools,
        tool_choice,
        single_tool_call: tools::anthropic_single_call(&obj)?,
        model: shoal_types::ModelId::new(model_name.clone()),
        messages,
        instructions,
        max_output_tokens,
        temperature: fields::opt_f32_in(&obj, "temperature", 0.0, MAX_TEMPERATURE)?,
        top_p: fields::opt_top_p(&obj, "top_p")?,
        top_k: fields::opt_u32(&obj, "top_k")?,
        stop: fields::stop_list(&obj, "stop_sequences")?,
        enable_thinking: thinking(&obj)?,
        ..GenerationParams::default()
    };
    // Accepted and ignored: it tags requests for Anthropic's abuse detection.
    fields::opt_object(&obj, "metadata")?;
    let stream = fields::opt_bool(&obj, "stream")?.unwrap_or(false);
    Ok(MessagesRequest {
        params,
        model_name,
        stream,
    })
}

/// `tool_choice`: `{"type":"auto"|"any"|"none"}` or `{"type":"tool","name":…}`.
fn tool_choice(obj: &Map<String, Value>) -> Result<ToolChoice, BadRequest> {
    let Some(c) = fields::opt_object(obj, "tool_choice")? else {
        return Ok(ToolChoice::Auto);
    };
    match c.get("type").and_then(Value::as_str) {
        Some("auto") => Ok(ToolChoice::Auto),
        Some("any") => Ok(ToolChoice::Required),
        Some("none") => Ok(ToolChoice::None),
        Some("tool") => match c.get("name") {
            Some(Value::String(n)) => Ok(ToolChoice::Function(n.clone())),
            _ => Err(BadRequest::new("tool_choice.name", "must be a string")),
        },
        _ => Err(BadRequest::new(
            "tool_choice.type",
            "must be one of auto, any, tool, none",
        )),
    }
}

/// `thinking`: `{"type":"enabled", "budget_tokens": n}` turns a reasoning model's thinking on, `{"type":"disabled"}`
/// off; absent leaves the model's default. The budget is not enforced (the model's template decides).
fn thinking(obj: &Map<String, Value>) -> Result<Option<bool>, BadRequest> {
    let Some(t) = fields::opt_object(obj, "thinking")? else {
        return Ok(None);
    };
    match t.get("type") {
        Some(Value::String(kind)) => match kind.as_str() {
            "enabled" | "adaptive" => Ok(Some(true)),
            "disabled" => Ok(Some(false)),
            other => Err(BadRequest::new(
                "thinking.type",
                format!("`{other}` is not one of enabled, disabled, adaptive"),
            )),
        },
        Some(_) => Err(BadRequest::new("thinking.type", "must be a string")),
        None => Err(BadRequest::new("thinking.type", "is required")),
    }
}

/// `system`: a string, or an array of text blocks.
fn system(obj: &Map<String, Value>) -> Result<Option<String>, BadRequest> {
    let text = match obj.get("system") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(blocks)) => {
            let mut parts = Vec::with_capacity(blocks.len());
            for (i, block) in blocks.iter().enumerate() {
                let field = format!("system[{i}]");
                let Value::Object(b) = block else {
                    return Err(BadRequest::new(field, "must be an object"));
                };
                match b.get("type") {
                    Some(Value::String(t)) if t == "text" => parts.push(block_text(b, &field)?),
                    Some(Value::String(t)) => {
                        return Err(BadRequest::new(
                            format!("{field}.type"),
                            format!("a system block must be of type `text`, not `{t}`"),
                        ));
                    }
                    Some(_) => return Err(BadRequest::new(format!("{field}.type"), "must be a string")),
                    None => return Err(BadRequest::new(format!("{field}.type"), "is required")),
                }
            }
            parts.join(BLOCK_SEPARATOR)
        }
        Some(_) => return Err(BadRequest::new("system", "must be a string or an array of text blocks")),
    };
    Ok((!text.is_empty()).then_some(text))
}

fn block_text(block: &Map<String, Value>, field: &str) -> Result<String, BadRequest> {
    match block.get("text") {
        Some(Value::String(t)) => Ok(t.clone()),
        Some(_) => Err(BadRequest::new(format!("{field}.text"), "must be a string")),
        None => Err(BadRequest::new(format!("{field}.text"), "is required")),
    }
}

fn messages(obj: &Map<String, Value>) -> Result<Vec<Message>, BadRequest> {
    let items = match obj.get("messages") {
        Some(Value::Array(items)) => items,
        Some(_) => return Err(BadRequest::new("messages", "must be an array")),
        None => return Err(BadRequest::new("messages", "is required")),
    };
    if items.is_empty() {
        return Err(BadRequest::new("messages", "must contain at least one message"));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        out.extend(message(i, item)?);
    }
    Ok(out)
}

/// One Anthropic message: its `tool_result` blocks become `tool` messages ahead of the rest of a user turn (the
/// order chat templates expect: results right after the calls), `tool_use` blocks the assistant's calls.
fn message(i: usize, item: &Value) -> Result<Vec<Message>, BadRequest> {
    let field = |name: &str| format!("messages[{i}].{name}");
    let Value::Object(m) = item else {
        return Err(BadRequest::new(format!("messages[{i}]"), "must be an object"));
    };
    let role = match m.get("role") {
        Some(Value::String(r)) => match r.as_str() {
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => {
                return Err(BadRequest::new(
                    field("role"),
                    format!("`{other}` is not one of user, assistant (the system prompt goes in `system`)"),
                ));
            }
        },
        Some(_) => return Err(BadRequest::new(field("role"), "must be a string")),
        None => return Err(BadRequest::new(field("role"), "is required")),
    };
    let mut reasoning = Vec::new();
    let mut calls = Vec::new();
    let mut results = Vec::new();
    let content = match m.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(blocks)) => {
            let mut texts = Vec::with_capacity(blocks.len());
            for (j, block) in blocks.iter().enumerate() {
                let at = format!("messages[{i}].content[{j}]");
                let Value::Object(b) = block else {
                    return Err(BadRequest::new(at, "must be an object"));
                };
                let kind = match b.get("type") {
                    Some(Value::String(t)) => t.as_str(),
                    Some(_) => return Err(BadRequest::new(format!("{at}.type"), "must be a string")),
                    None => return Err(BadRequest::new(format!("{at}.type"), "is required")),
                };
                match kind {
                    "text" => texts.push(block_text(b, &at)?),
                    // A previous answer's thinking, sent back as Anthropic's clients do: kept as its reasoning.
                    "thinking" => match b.get("thinking") {
                        Some(Value::String(t)) => reasoning.push(t.clone()),
                        _ => return Err(BadRequest::new(format!("{at}.thinking"), "must be a string")),
                    },
                    // Encrypted by Anthropic: nothing a local model can read.
                    "redacted_thinking" => {}
                    "image" | "document" => {
                        return Err(BadRequest::new(
                            format!("{at}.type"),
                            format!("`{kind}` blocks are not supported: {NO_IMAGES}"),
                        ));
                    }
                    "tool_use" => calls.push(ToolCall {
                        id: string_field(b, "id", &at)?,
                        name: string_field(b, "name", &at)?,
                        arguments: tools::arguments_text(b.get("input"), &format!("{at}.input"))?,
                    }),
                    "tool_result" => {
                        let mut result = Message::new(Role::Tool, tool_result_text(b, &at)?);
                        result.tool_call_id = Some(string_field(b, "tool_use_id", &at)?);
                        results.push(result);
                    }
                    other => {
                        return Err(BadRequest::new(
                            format!("{at}.type"),
                            format!("content blocks of type `{other}` are not supported"),
                        ));
                    }
                }
            }
            texts.join(BLOCK_SEPARATOR)
        }
        Some(_) => {
            return Err(BadRequest::new(
                field("content"),
                "must be a string or an array of content blocks",
            ));
        }
        None => return Err(BadRequest::new(field("content"), "is required")),
    };
    let mut out = results;
    if !(content.is_empty() && calls.is_empty() && reasoning.is_empty() && !out.is_empty()) {
        out.push(Message {
            role,
            content,
            tool_calls: calls,
            tool_call_id: None,
            reasoning: (!reasoning.is_empty()).then(|| reasoning.join(BLOCK_SEPARATOR)),
        });
    }
    Ok(out)
}

fn string_field(b: &Map<String, Value>, name: &str, at: &str) -> Result<String, BadRequest> {
    match b.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(BadRequest::new(format!("{at}.{name}"), "must be a string")),
        None => Err(BadRequest::new(format!("{at}.{name}"), "is required")),
    }
}

/// A `tool_result`'s content: a string, or text blocks joined.
fn tool_result_text(b: &Map<String, Value>, at: &str) -> Result<String, BadRequest> {
    match b.get("content") {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(blocks)) => {
            let mut texts = Vec::with_capacity(blocks.len());
            for (k, block) in blocks.iter().enumerate() {
                let field = format!("{at}.content[{k}]");
                match block.as_object() {
                    Some(o) if o.get("type").and_then(Value::as_str) == Some("text") => {
                        texts.push(block_text(o, &field)?);
                    }
                    _ => {
                        return Err(BadRequest::new(
                            format!("{field}.type"),
                            "only text blocks are supported",
                        ));
                    }
                }
            }
            Ok(texts.join(BLOCK_SEPARATOR))
        }
        Some(_) => Err(BadRequest::new(
            format!("{at}.content"),
            "must be a string or an array of text blocks",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<MessagesRequest, BadRequest> {
        parse_messages(body.as_bytes())
    }

    #[test]
    fn a_full_request_maps_every_field() {
        let r = parse(
            r#"{"model":"smollm2-135m","max_tokens":7,
                "system":[{"type":"text","text":"be brief"},{"type":"text","text":"and kind","cache_control":{"type":"ephemeral"}}],
                "messages":[{"role":"user","content":[{"type":"text","text":"hi"},{"type":"text","text":"there"}]},
                    {"role":"assistant","content":[{"type":"thinking","thinking":"hmm","signature":"x"},{"type":"text","text":"hello"}]},
                    {"role":"user","content":"count"}],
                "stop_sequences":["3","END"],"temperature":0.5,"top_p":0.9,"top_k":40,
                "metadata":{"user_id":"u1"},"stream":true,"thinking":{"type":"enabled","budget_tokens":1024}}"#,
        )
        .expect("valid");
        assert!(r.stream);
        assert_eq!(r.model_name, "smollm2-135m");
        let p = &r.params;
        assert_eq!(p.instructions.as_deref(), Some("be brief\n\nand kind"));
        assert_eq!(p.messages.len(), 3);
        assert_eq!(p.messages[0].role, Role::User);
        assert_eq!(p.messages[0].content, "hi\n\nthere");
        assert_eq!(p.messages[1].role, Role::Assistant);
        assert_eq!(p.messages[1].content, "hello");
        assert_eq!(p.messages[1].reasoning.as_deref(), Some("hmm"));
        assert_eq!(p.messages[2].content, "count");
        assert_eq!(p.max_output_tokens, Some(7));
        assert_eq!(p.temperature, Some(0.5));
        assert_eq!(p.top_p, Some(0.9));
        assert_eq!(p.top_k, Some(40));
        assert_eq!(p.stop, vec!["3".to_string(), "END".to_string()]);
        assert_eq!(p.enable_thinking, Some(true));
        assert!(p.raw_prompt.is_none() && p.tools.is_none());
    }

    #[test]
    fn minimal_requests_leave_the_rest_unset() {
        let r = parse(r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"x"}],"system":"s"}"#)
            .expect("valid");
        assert!(!r.stream);
        assert_eq!(r.params.instructions.as_deref(), Some("s"));
        assert_eq!(r.params.temperature, None);
        assert_eq!(r.params.enable_thinking, None);
        assert!(r.params.stop.is_empty());
        let off = parse(
            r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"x"}],"thinking":{"type":"disabled"},
                "tools":[],"system":""}"#,
        )
        .expect("valid");
        assert_eq!(off.params.enable_thinking, Some(false));
        assert_eq!(off.params.instructions, None, "an empty system prompt is none");
    }

    #[test]
    fn count_tokens_does_not_need_max_tokens() {
        let body = r#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#;
        assert_eq!(parse(body).expect_err("needs max_tokens").field, "max_tokens");
        let r = parse_count_tokens(body.as_bytes()).expect("valid");
        assert_eq!(r.params.max_output_tokens, None);
    }

    #[test]
    fn bad_input_names_the_field() {
        let msgs = r#""messages":[{"role":"user","content":"x"}]"#;
        let with = |extra: &str| format!(r#"{{"model":"m","max_tokens":8,{msgs},{extra}}}"#);
        let cases = [
            ("{".to_string(), "body"),
            ("[]".to_string(), "body"),
            (format!(r#"{{"max_tokens":8,{msgs}}}"#), "model"),
            (format!(r#"{{"model":"m",{msgs}}}"#), "max_tokens"),
            (with(r#""max_tokens":0"#), "max_tokens"),
            (with(r#""max_tokens":"9""#), "max_tokens"),
            (r#"{"model":"m","max_tokens":8,"messages":[]}"#.to_string(), "messages"),
            (r#"{"model":"m","max_tokens":8}"#.to_string(), "messages"),
            (
                r#"{"model":"m","max_tokens":8,"messages":[{"role":"system","content":"x"}]}"#.to_string(),
                "messages[0].role",
            ),
            (
                r#"{"model":"m","max_tokens":8,"messages":[{"role":"user"}]}"#.to_string(),
                "messages[0].content",
            ),
            (
                r#"{"model":"m","max_tokens":8,"messages":[{"role":"user","content":[{"type":"text","text":"a"},
                    {"type":"image","source":{"type":"base64","media_type":"image/png","data":""}}]}]}"#
                    .to_string(),
                "messages[0].content[1].type",
            ),
            (
                r#"{"model":"m","max_tokens":8,"messages":[{"role":"user","content":[{"type":"document"}]}]}"#
                    .to_string(),
                "messages[0].content[0].type",
            ),
            (
                r#"{"model":"m","max_tokens":8,"messages":[{"role":"user","content":[{"type":"tool_result"}]}]}"#
                    .to_string(),
                "messages[0].content[0].tool_use_id",
            ),
            (
                r#"{"model":"m","max_tokens":8,"messages":[{"role":"user","content":[{"type":"text"}]}]}"#.to_string(),
                "messages[0].content[0].text",
            ),
            (
                r#"{"model":"m","max_tokens":8,"messages":[{"role":"user","content":[{"text":"a"}]}]}"#.to_string(),
                "messages[0].content[0].type",
            ),
            (with(r#""system":5"#), "system"),
            (with(r#""system":[{"type":"image"}]"#), "system[0].type"),
            (with(r#""system":[{"type":"text","text":1}]"#), "system[0].text"),
            (with(r#""temperature":1.5"#), "temperature"),
            (with(r#""top_p":0"#), "top_p"),
            (with(r#""top_k":-1"#), "top_k"),
            (with(r#""stop_sequences":[""]"#), "stop_sequences[0]"),
            (with(r#""stop_sequences":[3]"#), "stop_sequences[0]"),
            (with(r#""stream":"yes""#), "stream"),
            (with(r#""metadata":"x""#), "metadata"),
            (with(r#""tools":[{"name":"f"}]"#), "tools[0].input_schema"),
            (with(r#""tool_choice":{"type":"sometimes"}"#), "tool_choice.type"),
            (with(r#""tool_choice":{"type":"any"}"#), "tool_choice"),
            (with(r#""thinking":true"#), "thinking"),
            (with(r#""thinking":{"type":"maybe"}"#), "thinking.type"),
        ];
        for (body, field) in cases {
            let err = parse(&body).expect_err(&body);
            assert_eq!(err.field, field, "{body}: {err}");
        }
    }

    #[test]
    fn refusals_say_why() {
        let image = parse(
            r#"{"model":"m","max_tokens":8,"messages":[{"role":"user","content":[{"type":"image","source":{}}]}]}"#,
        )
        .expect_err("images");
        assert!(image.message.contains("images"), "{image}");
        let tools = parse(r#"{"model":"m","max_tokens":8,"messages":[{"role":"user","content":"x"}],"tools":[{}]}"#)
            .expect_err("tools");
        assert_eq!(tools.field, "tools[0].name", "{tools}");
    }

    #[test]
    fn a_tool_round_trip_maps_to_calls_and_results() {
        let r = parse(
            r#"{"model":"m","max_tokens":8,"tools":[{"name":"get_weather","input_schema":{"type":"object"}}],
                "tool_choice":{"type":"tool","name":"get_weather"},
                "messages":[{"role":"user","content":"weather?"},
                {"role":"assistant","content":[{"type":"text","text":"checking"},
                    {"type":"tool_use","id":"toolu_1","name":"get_weather","input":{"city":"Paris"}}]},
                {"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1","content":"sunny"},
                    {"type":"text","text":"thanks"}]}]}"#,
        )
        .expect("valid");
        let p = &r.params;
        assert_eq!(p.tool_choice, ToolChoice::Function("get_weather".into()));
        assert!(!p.single_tool_call, "parallel calls unless disabled");
        assert!(p.tools.as_deref().is_some_and(|t| t.contains("\"parameters\"")));
        assert_eq!(p.messages.len(), 4);
        assert_eq!(p.messages[1].tool_calls[0].arguments, r#"{"city":"Paris"}"#);
        assert_eq!(p.messages[2].role, Role::Tool);
        assert_eq!(p.messages[2].tool_call_id.as_deref(), Some("toolu_1"));
        assert_eq!(p.messages[2].content, "sunny");
        assert_eq!(p.messages[3].content, "thanks");
        let one = parse(
            r#"{"model":"m","max_tokens":8,"tools":[{"name":"f","input_schema":{"type":"object"}}],
                "tool_choice":{"type":"any","disable_parallel_tool_use":true},"messages":[{"role":"user","content":"x"}]}"#,
        )
        .expect("valid");
        assert!(one.params.single_tool_call);
    }
}
