//! Ollama requests → [`GenerationParams`]: `POST /api/chat`, `/api/generate`, `/api/show`, `/api/pull`. Parsed field
//! by field, so a wrong type or value is a 400 naming the field (`messages[1].role`, `options.num_ctx`); fields
//! Ollama has and shoal does not need (`keep_alive`, `template`, unknown `options`) are accepted and ignored, and
//! features shoal does not have yet (images, tools) are refused with a 400 that says so rather
//! than silently dropped. `format` (`"json"` or a schema) constrains the answer (`structured.rs`).

use serde_json::{Map, Value};
use shoal_types::params::{GenerationParams, Message, Role};

use crate::error::BadRequest;
use crate::fields;
use crate::tools::{self, ToolShape};

/// What a chat or generate request asks for besides [`GenerationParams`].
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    /// `params.model` is the name as sent; the handler resolves it to a card.
    pub params: GenerationParams,
    /// The model name as the client sent it (echoed in every line).
    pub model_name: String,
    /// Ollama streams unless told not to.
    pub stream: bool,
    /// `options.num_ctx`: refused when over the card's context.
    pub num_ctx: Option<u64>,
    /// No prompt and no messages: Ollama's "load the model" (or, with `keep_alive: 0`, "unload") call, answered
    /// without generating.
    pub load_only: bool,
    /// `keep_alive` is zero: the load call is an unload.
    pub unload: bool,
}

/// `POST /api/chat`.
pub fn parse_chat(body: &[u8]) -> Result<GenerateRequest, BadRequest> {
    let obj = fields::object(body)?;
    let mut request = common(&obj)?;
    request.params.messages = messages(&obj)?;
    // The official client sends `tools: []` with every chat: no tools. Ollama has no `tool_choice`.
    request.params.tools = tools::read_tools(&obj, ToolShape::Nested)?;
    request.load_only = request.params.messages.is_empty();
    Ok(request)
}

/// `POST /api/generate`.
pub fn parse_generate(body: &[u8]) -> Result<GenerateRequest, BadRequest> {
    let obj = fields::object(body)?;
    let mut request = common(&obj)?;
    let prompt = fields::opt_string(&obj, "prompt")?.unwrap_or_default();
    let system = fields::opt_string(&obj, "system")?;
    let raw = fields::opt_bool(&obj, "raw")?.unwrap_or(false);
    if fields::opt_string(&obj, "suffix")?.is_some_and(|s| !s.is_empty()) {
        return Err(BadRequest::new("suffix", "fill-in-the-middle is not supported"));
    }
    refuse_images(&obj, "images")?;
    // Ollama's tokenized history from an earlier reply; shoal never returns one, so a client sending one got it
    // elsewhere and would silently lose its history.
    match obj.get("context") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) if items.is_empty() => {}
        Some(Value::Array(_)) => {
            return Err(BadRequest::new(
                "context",
                "is not supported: send the conversation as /api/chat messages",
            ));
        }
        Some(_) => return Err(BadRequest::new("context", "must be an array of token ids")),
    }
    // `template` replaces the model's template in Ollama; shoal renders the card's template, and ignoring the field
    // is what clients that always send it expect.
    let _ = fields::opt_string(&obj, "template")?;
    request.load_only = prompt.is_empty();
    if raw {
        // Raw mode: the prompt as is, no template, and so no system prompt either (as Ollama does).
        request.params.raw_prompt = Some(prompt);
    } else {
        request.params.instructions = system.filter(|s| !s.is_empty());
        request.params.messages = vec![Message::new(Role::User, prompt)];
    }
    Ok(request)
}

/// The fields chat and generate share: `model`, `stream`, `options`, `format`, `keep_alive`, `think`.
fn common(obj: &Map<String, Value>) -> Result<GenerateRequest, BadRequest> {
    let model_name = fields::model(obj)?;
    let mut params = GenerationParams {
        model: shoal_types::ModelId::new(model_name.clone()),
        ..GenerationParams::default()
    };
    let stream = fields::opt_bool(obj, "stream")?.unwrap_or(true);
    let num_ctx = match fields::opt_object(obj, "options")? {
        Some(options) => self::options(options, &mut params).map_err(|e| e.within("options"))?,
        None => None,
    };
    params.constraint = crate::structured::ollama_format(obj.get("format"))?;
    let unload = keep_alive_is_zero(obj)?;
    match obj.get("think") {
        None | Some(Value::Null) => {}
        Some(Value::Bool(b)) => params.enable_thinking = Some(*b),
        // gpt-oss style levels: thinking on, at that effort.
        Some(Value::String(level)) if matches!(level.as_str(), "low" | "medium" | "high") => {
            params.enable_thinking = Some(true);
            params.reasoning_effort = Some(level.clone());
        }
        Some(_) => {
            return Err(BadRequest::new(
                "think",
                "must be true, false, \"low\", \"medium\" or \"high\"",
            ));
        }
    }
    // Ollama's `logprobs` / `top_logprobs` (0.12.11 and later) mean what Chat Completions' do.
    crate::logprobs::parse_chat_fields(obj, &mut params)?;
    Ok(GenerateRequest {
        params,
        model_name,
        stream,
        num_ctx,
        load_only: false,
        unload,
    })
}

/// `keep_alive` is accepted and otherwise ignored (shoal keeps a model until its instance is deleted); only its type
/// is checked, and whether it is zero (`0`, `"0"`, `"0s"`), which turns a load call into an unload.
fn keep_alive_is_zero(obj: &Map<String, Value>) -> Result<bool, BadRequest> {
    match obj.get("keep_alive") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Number(n)) => Ok(n.as_f64() == Some(0.0)),
        Some(Value::String(s)) => Ok(s
            .trim_end_matches(|c: char| c.is_ascii_alphabetic())
            .parse::<f64>()
            .is_ok_and(|v| v == 0.0)),
        Some(_) => Err(BadRequest::new(
            "keep_alive",
            "must be a number of seconds or a duration such as \"5m\"",
        )),
    }
}

/// Ollama's `options` (the Modelfile parameters); unknown ones are ignored, as Ollama ignores those a runner does
/// not use. Returns `num_ctx`.
fn options(obj: &Map<String, Value>, params: &mut GenerationParams) -> Result<Option<u64>, BadRequest> {
    params.max_output_tokens = match obj.get("num_predict") {
        None | Some(Value::Null) => None,
        // -1: until the context is full; -2: until the context is full, then stop (Ollama's "fill").
        Some(Value::Number(n)) if matches!(n.as_i64(), Some(-1 | -2)) => None,
        Some(Value::Number(n)) if n.is_f64() => return Err(BadRequest::new("num_predict", "must be an integer")),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(0) | None => {
                return Err(BadRequest::new("num_predict", "must be at least 1, or -1 for no limit"));
            }
            Some(v) => Some(u32::try_from(v).unwrap_or(u32::MAX)),
        },
        Some(_) => return Err(BadRequest::new("num_predict", "must be an integer")),
    };
    params.temperature = fields::opt_f32_in(obj, "temperature", 0.0, 2.0)?;
    params.top_k = fields::opt_u32(obj, "top_k")?;
    params.top_p = fields::opt_top_p(obj, "top_p")?;
    params.min_p = fields::opt_f32_in(obj, "min_p", 0.0, 1.0)?;
    params.seed = fields::opt_seed(obj, "seed")?;
    params.stop = fields::stop_list(obj, "stop")?;
    params.repetition_penalty = fields::opt_f32_in(obj, "repeat_penalty", 0.0, 10.0)?;
    if params.repetition_penalty == Some(0.0) {
        return Err(BadRequest::new("repeat_penalty", "must be greater than 0"));
    }
    params.presence_penalty = fields::opt_f32_in(obj, "presence_penalty", -2.0, 2.0)?;
    params.frequency_penalty = fields::opt_f32_in(obj, "frequency_penalty", -2.0, 2.0)?;
    match fields::opt_u64(obj, "num_ctx")? {
        Some(0) => Err(BadRequest::new("num_ctx", "must be at least 1")),
        other => Ok(other),
    }
}

/// Images are refused while no model takes them; an empty list carries none and is accepted.
fn refuse_images(obj: &Map<String, Value>, field: &str) -> Result<(), BadRequest> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Array(items)) if items.is_empty() => Ok(()),
        Some(_) => Err(BadRequest::new(
            field,
            "images are not supported: no model served here takes images",
        )),
    }
}

/// `messages`: absent or empty is the load call; otherwise each has a known role and string content.
fn messages(obj: &Map<String, Value>) -> Result<Vec<Message>, BadRequest> {
    let items = match obj.get("messages") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(BadRequest::new("messages", "must be an array")),
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let at = format!("messages[{i}]");
            let Value::Object(m) = item else {
                return Err(BadRequest::new(at, "must be an object"));
            };
            let in_message = |e: BadRequest| e.within(&at);
            let role = match m.get("role") {
                Some(Value::String(r)) => match r.as_str() {
                    "system" => Role::System,
                    "user" => Role::User,
                    "assistant" => Role::Assistant,
                    "tool" => Role::Tool,
                    other => {
                        return Err(in_message(BadRequest::new(
                            "role",
                            format!("`{other}` is not one of system, user, assistant, tool"),
                        )));
                    }
                },
                Some(_) => return Err(in_message(BadRequest::new("role", "must be a string"))),
                None => return Err(in_message(BadRequest::new("role", "is required"))),
            };
            let content = fields::opt_string(m, "content")
                .map_err(in_message)?
                .unwrap_or_default();
            refuse_images(m, "images").map_err(in_message)?;
            let mut message = Message::new(role, content);
            message.tool_calls = tools::openai_calls(m, &at)?;
            message.reasoning = fields::opt_string(m, "thinking")
                .map_err(in_message)?
                .filter(|t| !t.is_empty());
            message.tool_call_id = fields::opt_string(m, "tool_name").map_err(in_message)?;
            Ok(message)
        })
        .collect()
}

/// `POST /api/show` and `/api/pull` name their model as `model` (or `name`, the older spelling).
pub fn model_named(obj: &Map<String, Value>) -> Result<String, BadRequest> {
    if obj.get("model").is_none_or(Value::is_null)
        && let Some(name) = obj.get("name")
    {
        return match name {
            Value::String(n) if !n.trim().is_empty() => Ok(n.clone()),
            Value::String(_) => Err(BadRequest::new("name", "must not be empty")),
            _ => Err(BadRequest::new("name", "must be a string")),
        };
    }
    fields::model(obj)
}

/// `POST /api/show`: the model's name.
pub fn parse_show(body: &[u8]) -> Result<String, BadRequest> {
    let obj = fields::object(body)?;
    let _ = fields::opt_bool(&obj, "verbose")?;
    model_named(&obj)
}

/// `POST /api/pull`: the model's name and whether to stream progress (default true).
pub fn parse_pull(body: &[u8]) -> Result<(String, bool), BadRequest> {
    let obj = fields::object(body)?;
    let _ = fields::opt_bool(&obj, "insecure")?;
    Ok((model_named(&obj)?, fields::opt_bool(&obj, "stream")?.unwrap_or(true)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: &str) -> Result<GenerateRequest, BadRequest> {
        parse_chat(body.as_bytes())
    }

    fn generate(body: &str) -> Result<GenerateRequest, BadRequest> {
        parse_generate(body.as_bytes())
    }

    #[test]
    fn a_full_chat_maps_every_field() {
        let r = chat(
            r#"{"model":"smollm2-135m","messages":[{"role":"system","content":"be brief"},
                {"role":"user","content":"hi","images":[]},{"role":"assistant","content":"yo","thinking":"hmm"},
                {"role":"tool","content":"42","tool_name":"answer"}],
                "options":{"num_predict":7,"temperature":0.5,"top_k":40,"top_p":0.9,"min_p":0.05,"seed":-1,
                "stop":["END"],"repeat_penalty":1.1,"presence_penalty":0.1,"frequency_penalty":0.2,"num_ctx":2048,
                "mirostat":2,"num_gpu":99},
                "format":"","keep_alive":"5m","think":true,"tools":[]}"#,
        )
        .expect("valid");
        assert!(r.stream, "Ollama streams by default");
        assert!(!r.load_only && !r.unload);
        assert_eq!(r.model_name, "smollm2-135m");
        assert_eq!(r.num_ctx, Some(2048));
        let p = &r.params;
        assert_eq!(p.messages.len(), 4);
        assert_eq!(p.messages[0].role, Role::System);
        assert_eq!(p.messages[2].reasoning.as_deref(), Some("hmm"));
        assert_eq!(p.messages[3].role, Role::Tool);
        assert_eq!(p.messages[3].tool_call_id.as_deref(), Some("answer"));
        assert_eq!(p.max_output_tokens, Some(7));
        assert_eq!(p.temperature, Some(0.5));
        assert_eq!(p.top_k, Some(40));
        assert_eq!(p.top_p, Some(0.9));
        assert_eq!(p.min_p, Some(0.05));
        assert_eq!(p.seed, Some(u64::MAX));
        assert_eq!(p.stop, vec!["END".to_string()]);
        assert_eq!(p.repetition_penalty, Some(1.1));
        assert_eq!(p.presence_penalty, Some(0.1));
        assert_eq!(p.frequency_penalty, Some(0.2));
        assert_eq!(p.enable_thinking, Some(true));
        assert_eq!(p.raw_prompt, None);
    }

    #[test]
    fn num_predict_minus_one_or_two_is_no_limit_and_stream_false_is_kept() {
        for n in [-1, -2] {
            let r = chat(&format!(
                r#"{{"model":"m","messages":[{{"role":"user","content":"x"}}],"stream":false,"options":{{"num_predict":{n}}}}}"#
            ))
            .expect("valid");
            assert_eq!(r.params.max_output_tokens, None);
            assert!(!r.stream);
        }
        let r = chat(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"think":"high"}"#).expect("valid");
        assert_eq!(r.params.enable_thinking, Some(true));
        assert_eq!(r.params.reasoning_effort.as_deref(), Some("high"));
    }

    #[test]
    fn generate_maps_prompt_system_and_raw() {
        let r =
            generate(r#"{"model":"m","prompt":"Why?","system":"be brief","template":"{{ .Prompt }}"}"#).expect("valid");
        assert_eq!(r.params.messages, vec![Message::new(Role::User, "Why?")]);
        assert_eq!(r.params.instructions.as_deref(), Some("be brief"));
        assert_eq!(r.params.raw_prompt, None);
        assert!(r.stream && !r.load_only);

        let r = generate(r#"{"model":"m","prompt":"<|im_start|>user","raw":true,"system":"x","stream":false}"#)
            .expect("valid");
        assert_eq!(r.params.raw_prompt.as_deref(), Some("<|im_start|>user"));
        assert!(r.params.messages.is_empty());
        assert_eq!(r.params.instructions, None);
        assert!(!r.stream);
    }

    #[test]
    fn an_empty_prompt_or_no_messages_is_the_load_call() {
        assert!(generate(r#"{"model":"m"}"#).expect("valid").load_only);
        assert!(generate(r#"{"model":"m","prompt":""}"#).expect("valid").load_only);
        assert!(chat(r#"{"model":"m","messages":[]}"#).expect("valid").load_only);
        assert!(chat(r#"{"model":"m"}"#).expect("valid").load_only);
        for keep_alive in ["0", "\"0\"", "\"0s\"", "0.0"] {
            let r = generate(&format!(r#"{{"model":"m","keep_alive":{keep_alive}}}"#)).expect("valid");
            assert!(r.unload, "{keep_alive}");
        }
        assert!(!generate(r#"{"model":"m","keep_alive":"5m"}"#).expect("valid").unload);
        assert!(!generate(r#"{"model":"m","keep_alive":-1}"#).expect("valid").unload);
    }

    #[test]
    fn bad_input_names_the_field() {
        let user = r#""messages":[{"role":"user","content":"x"}]"#;
        let cases = [
            ("{".to_string(), "body"),
            ("[]".to_string(), "body"),
            (format!("{{{user}}}"), "model"),
            (format!(r#"{{"model":"",{user}}}"#), "model"),
            (r#"{"model":"m","messages":"hi"}"#.to_string(), "messages"),
            (r#"{"model":"m","messages":[3]}"#.to_string(), "messages[0]"),
            (
                r#"{"model":"m","messages":[{"role":"boss","content":"x"}]}"#.to_string(),
                "messages[0].role",
            ),
            (r#"{"model":"m","messages":[{"content":"x"}]}"#.to_string(), "messages[0].role"),
            (
                r#"{"model":"m","messages":[{"role":"user","content":["x"]}]}"#.to_string(),
                "messages[0].content",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"},{"role":"user","content":"y","images":["aGk="]}]}"#
                    .to_string(),
                "messages[1].images",
            ),
            (
                r#"{"model":"m","messages":[{"role":"assistant","content":"","tool_calls":[{"function":{}}]}]}"#
                    .to_string(),
                "messages[0].tool_calls[0].function.name",
            ),
            (format!(r#"{{"model":"m",{user},"stream":"yes"}}"#), "stream"),
            (format!(r#"{{"model":"m",{user},"options":3}}"#), "options"),
            (format!(r#"{{"model":"m",{user},"options":{{"num_predict":0}}}}"#), "options.num_predict"),
            (format!(r#"{{"model":"m",{user},"options":{{"num_predict":-3}}}}"#), "options.num_predict"),
            (format!(r#"{{"model":"m",{user},"options":{{"num_predict":"9"}}}}"#), "options.num_predict"),
            (format!(r#"{{"model":"m",{user},"options":{{"num_predict":1.5}}}}"#), "options.num_predict"),
            (format!(r#"{{"model":"m",{user},"options":{{"temperature":"hot"}}}}"#), "options.temperature"),
            (format!(r#"{{"model":"m",{user},"options":{{"temperature":9}}}}"#), "options.temperature"),
            (format!(r#"{{"model":"m",{user},"options":{{"top_p":0}}}}"#), "options.top_p"),
            (format!(r#"{{"model":"m",{user},"options":{{"top_k":-1}}}}"#), "options.top_k"),
            (format!(r#"{{"model":"m",{user},"options":{{"stop":[1]}}}}"#), "options.stop[0]"),
            (format!(r#"{{"model":"m",{user},"options":{{"repeat_penalty":0}}}}"#), "options.repeat_penalty"),
            (format!(r#"{{"model":"m",{user},"options":{{"num_ctx":0}}}}"#), "options.num_ctx"),
            (format!(r#"{{"model":"m",{user},"options":{{"seed":"x"}}}}"#), "options.seed"),
            (format!(r#"{{"model":"m",{user},"format":"yaml"}}"#), "format"),
            (format!(r#"{{"model":"m",{user},"format":{{"type":"objekt"}}}}"#), "format"),
            (format!(r#"{{"model":"m",{user},"format":3}}"#), "format"),
            (format!(r#"{{"model":"m",{user},"keep_alive":true}}"#), "keep_alive"),
            (format!(r#"{{"model":"m",{user},"think":"max"}}"#), "think"),
            (format!(r#"{{"model":"m",{user},"logprobs":1}}"#), "logprobs"),
            (format!(r#"{{"model":"m",{user},"top_logprobs":2}}"#), "top_logprobs"),
            (
                format!(r#"{{"model":"m",{user},"tools":[{{"type":"function"}}]}}"#),
                "tools[0].function",
            ),
            (format!(r#"{{"model":"m",{user},"tools":{{}}}}"#), "tools"),
        ];
        for (body, field) in cases {
            let err = chat(&body).expect_err(&body);
            assert_eq!(err.field, field, "{body}: {err}");
        }
        let generate_cases = [
            (r#"{"model":"m","prompt":3}"#, "prompt"),
            (r#"{"model":"m","prompt":"x","system":[]}"#, "system"),
            (r#"{"model":"m","prompt":"x","raw":"yes"}"#, "raw"),
            (r#"{"model":"m","prompt":"x","suffix":"y"}"#, "suffix"),
            (r#"{"model":"m","prompt":"x","images":["aGk="]}"#, "images"),
            (r#"{"model":"m","prompt":"x","context":[1,2]}"#, "context"),
            (r#"{"model":"m","prompt":"x","template":5}"#, "template"),
            (
                r#"{"model":"m","prompt":"x","options":{"num_ctx":-1}}"#,
                "options.num_ctx",
            ),
        ];
        for (body, field) in generate_cases {
            let err = generate(body).expect_err(body);
            assert_eq!(err.field, field, "{body}: {err}");
        }
    }

    #[test]
    fn show_and_pull_take_model_or_name() {
        assert_eq!(parse_show(br#"{"model":"a"}"#), Ok("a".to_string()));
        assert_eq!(parse_show(br#"{"name":"b"}"#), Ok("b".to_string()));
        assert_eq!(parse_show(br#"{}"#).map_err(|e| e.field), Err("model".to_string()));
        assert_eq!(
            parse_show(br#"{"name":""}"#).map_err(|e| e.field),
            Err("name".to_string())
        );
        assert_eq!(parse_pull(br#"{"model":"a"}"#), Ok(("a".to_string(), true)));
        assert_eq!(
            parse_pull(br#"{"name":"a","stream":false}"#),
            Ok(("a".to_string(), false))
        );
        assert_eq!(
            parse_pull(br#"{"model":"a","stream":1}"#).map_err(|e| e.field),
            Err("stream".to_string())
        );
    }
}
