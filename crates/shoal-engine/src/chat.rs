//! Chat prompts rendered with the model's own `tokenizer.chat_template` (a Jinja template) through minijinja.
//! The environment mirrors what HF transformers gives templates (trim_blocks, lstrip_blocks, Python string methods,
//! `raise_exception`), since templates are written and tested against that.
//!
//! A file without a template (base models such as Gemma 3 270M) gets its family's usual format, rendered as
//! llama.cpp's built-in templates render it (llm_chat_apply_template): [`Builtin`].

use std::collections::BTreeMap;

use minijinja::{Environment, ErrorKind, Value};

use crate::error::{EngineError, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    /// An assistant message's calls (HF: `message.tool_calls[i].function.{name,arguments}`).
    pub tool_calls: Vec<ChatToolCall>,
    /// A `tool` message: the call it answers.
    pub tool_call_id: Option<String>,
    /// An assistant message's reasoning (HF: `message.reasoning_content`, which Qwen3's templates read).
    pub reasoning: Option<String>,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
            reasoning: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatToolCall {
    pub id: String,
    pub name: String,
    /// The arguments as JSON text; templates get them as a mapping (HF's convention), or as the text when it is not
    /// JSON.
    pub arguments: String,
}

/// What a request adds to the template's context besides its messages, as HF transformers and vLLM pass it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TemplateExtras {
    /// The OpenAI function list (`[{"type":"function","function":{name,description,parameters}}]`).
    pub tools: Option<serde_json::Value>,
    pub enable_thinking: Option<bool>,
    pub reasoning_effort: Option<String>,
}

/// The chat formats used when a model file carries no template, named as llama.cpp names its built-ins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    /// `<|im_start|>role\ncontent<|im_end|>\n`: Qwen2/Qwen3, SmolLM, and llama.cpp's default for unknown families.
    ChatMl,
    /// `<start_of_turn>user\n…<end_of_turn>\n`, assistant called `model`, system folded into the first user turn.
    Gemma,
    /// `<|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|>` (Llama 3.x).
    Llama3,
    /// `[SYSTEM_PROMPT]…[/SYSTEM_PROMPT][INST]…[/INST]answer</s>` (Mistral Nemo/Small, tekken vocabulary).
    MistralV7Tekken,
}

impl Builtin {
    /// llama.cpp's name for the template.
    pub fn name(self) -> &'static str {
        match self {
            Builtin::ChatMl => "chatml",
            Builtin::Gemma => "gemma",
            Builtin::Llama3 => "llama3",
            Builtin::MistralV7Tekken => "mistral-v7-tekken",
        }
    }

    /// The family's template, recognised from the architecture, the pre-tokenizer and the vocabulary's turn tokens.
    pub fn for_tokenizer(tok: &crate::tokenizer::Tokenizer) -> Self {
        let arch = tok.architecture().unwrap_or_default();
        if arch.starts_with("gemma") || tok.token_id("<start_of_turn>").is_some() {
            Builtin::Gemma
        } else if tok.token_id("<|start_header_id|>").is_some() && tok.token_id("<|eot_id|>").is_some() {
            Builtin::Llama3
        } else if tok.pre() == "tekken" {
            Builtin::MistralV7Tekken
        } else {
            Builtin::ChatMl
        }
    }

    fn render(self, messages: &[ChatMessage], add_generation_prompt: bool) -> String {
        let mut out = String::new();
        match self {
            Builtin::ChatMl => {
                for m in messages {
                    out.push_str(&format!("<|im_start|>{}\n{}<|im_end|>\n", m.role, m.content));
                }
                if add_generation_prompt {
                    out.push_str("<|im_start|>assistant\n");
                }
            }
            Builtin::Gemma => {
                // Gemma has no system role: its text goes ahead of the next user turn.
                let mut system = String::new();
                for m in messages {
                    if m.role == "system" {
                        system.push_str(c_trim(&m.content));
                        continue;
                    }
                    let role = if m.role == "assistant" {
                        "model"
                    } else {
                        m.role.as_str()
                    };
                    out.push_str(&format!("<start_of_turn>{role}\n"));
                    if !system.is_empty() && role != "model" {
                        out.push_str(&system);
                        out.push_str("\n\n");
                        system.clear();
                    }
                    out.push_str(c_trim(&m.content));
                    out.push_str("<end_of_turn>\n");
                }
                if add_generation_prompt {
                    out.push_str("<start_of_turn>model\n");
                }
            }
            Builtin::Llama3 => {
                for m in messages {
                    out.push_str(&format!(
                        "<|start_header_id|>{}<|end_header_id|>\n\n{}<|eot_id|>",
                        m.role,
                        c_trim(&m.content)
                    ));
                }
                if add_generation_prompt {
                    out.push_str("<|start_header_id|>assistant<|end_header_id|>\n\n");
                }
            }
            // The answer follows `[/INST]` directly, so there is no generation prompt to add.
            Builtin::MistralV7Tekken => {
                for m in messages {
                    match m.role.as_str() {
                        "system" => out.push_str(&format!("[SYSTEM_PROMPT]{}[/SYSTEM_PROMPT]", m.content)),
                        "user" => out.push_str(&format!("[INST]{}[/INST]", m.content)),
                        _ => out.push_str(&format!("{}</s>", m.content)),
                    }
                }
            }
        }
        out
    }
}

/// A JSON value as a template value (objects' keys sorted, as serde_json keeps them).
fn json_value(v: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    match v {
        J::Null => Value::from(()),
        J::Bool(b) => Value::from(*b),
        J::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Value::from(i),
            (None, Some(f)) => Value::from(f),
            (None, None) => Value::from(n.to_string()),
        },
        J::String(s) => Value::from(s.as_str()),
        J::Array(items) => Value::from(items.iter().map(json_value).collect::<Vec<_>>()),
        J::Object(map) => Value::from(
            map.iter()
                .map(|(k, v)| (k.clone(), json_value(v)))
                .collect::<BTreeMap<String, Value>>(),
        ),
    }
}

/// A message as HF templates see it.
fn message_value(m: &ChatMessage) -> Value {
    let mut map: BTreeMap<&str, Value> = BTreeMap::new();
    map.insert("role", Value::from(m.role.as_str()));
    map.insert("content", Value::from(m.content.as_str()));
    if !m.tool_calls.is_empty() {
        let calls: Vec<Value> = m
            .tool_calls
            .iter()
            .map(|c| {
                let arguments = serde_json::from_str::<serde_json::Value>(&c.arguments)
                    .unwrap_or_else(|_| serde_json::Value::String(c.arguments.clone()));
                json_value(&serde_json::json!({
                    "id": c.id,
                    "type": "function",
                    "function": { "name": c.name, "arguments": arguments },
                }))
            })
            .collect();
        map.insert("tool_calls", Value::from(calls));
    }
    if let Some(id) = &m.tool_call_id {
        map.insert("tool_call_id", Value::from(id.as_str()));
    }
    if let Some(r) = &m.reasoning {
        map.insert("reasoning_content", Value::from(r.as_str()));
    }
    Value::from(map)
}

/// Trims what C's `isspace` calls space (llama.cpp's templates trim with it; unlike `str::trim`, ASCII only and
/// including vertical tab).
fn c_trim(s: &str) -> &str {
    s.trim_matches(|c| matches!(c, ' ' | '\t' | '\n' | '\x0B' | '\x0C' | '\r'))
}

struct Jinja {
    env: Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
    /// The tokenizer adds BOS/EOS itself: a template that writes them too would double them (see `render`).
    strip_bos: bool,
    strip_eos: bool,
}

enum Kind {
    Jinja(Box<Jinja>),
    Builtin(Builtin),
}

pub struct ChatTemplate {
    kind: Kind,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Jinja(j) => f
                .debug_struct("ChatTemplate")
                .field("source_len", &j.source.len())
                .finish(),
            Kind::Builtin(b) => f.debug_struct("ChatTemplate").field("builtin", &b.name()).finish(),
        }
    }
}

impl ChatTemplate {
    /// Compiles `source` once so a broken template fails at load, not at the first request.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| EngineError::Template(e.to_string()))?;
        env.set_syntax(syntax);
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<Value, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.template_from_str(source)
            .map_err(|e| EngineError::Template(format!("{e:#}")))?;
        Ok(Self {
            kind: Kind::Jinja(Box::new(Jinja {
                env,
                source: source.to_string(),
                bos_token: bos_token.to_string(),
                eos_token: eos_token.to_string(),
                strip_bos: false,
                strip_eos: false,
            })),
        })
    }

    /// One of the built-in formats (no Jinja involved).
    pub fn builtin(builtin: Builtin) -> Self {
        Self {
            kind: Kind::Builtin(builtin),
        }
    }

    /// The built-in format in use, if this is not a Jinja template.
    pub fn builtin_kind(&self) -> Option<Builtin> {
        match self.kind {
            Kind::Builtin(b) => Some(b),
            Kind::Jinja(_) => None,
        }
    }

    /// The template stored in the GGUF, with the file's bos/eos spelled as the template expects them; without
    /// one, the family's built-in format ([`Builtin::for_tokenizer`]).
    pub fn from_tokenizer(tok: &crate::tokenizer::Tokenizer) -> Result<Self> {
        let Some(source) = tok.chat_template() else {
            let builtin = Builtin::for_tokenizer(tok);
            tracing::info!(
                template = builtin.name(),
                architecture = tok.architecture().unwrap_or("?"),
                "the model file has no chat template; using the family's built-in format"
            );
            return Ok(Self::builtin(builtin));
        };
        let bos = tok.bos().and_then(|b| tok.token_text(b)).unwrap_or_default();
        let eos = tok.token_text(tok.eos()).unwrap_or_default();
        Ok(Self::new(source, &bos, &eos)?.strip_specials(tok.add_bos(), tok.add_eos()))
    }

    /// As llama.cpp does for Jinja templates: when the tokenizer adds BOS (EOS) itself, a rendered prompt that
    /// starts with the BOS text (ends with the EOS text) loses it, so the prompt does not get it twice (Gemma's
    /// instruct templates begin with `{{ bos_token }}` and its files set add_bos_token).
    pub fn strip_specials(mut self, add_bos: bool, add_eos: bool) -> Self {
        if let Kind::Jinja(j) = &mut self.kind {
            j.strip_bos = add_bos;
            j.strip_eos = add_eos;
        }
        self
    }

    /// The Jinja source (`None` for a built-in format).
    pub fn source(&self) -> Option<&str> {
        match &self.kind {
            Kind::Jinja(j) => Some(&j.source),
            Kind::Builtin(_) => None,
        }
    }

    /// Whether the template renders a request's `tools` itself (otherwise the caller describes them in the system
    /// prompt). What llama.cpp's capability probe finds, judged from the source.
    pub fn renders_tools(&self) -> bool {
        self.source().is_some_and(|s| s.contains("tools"))
    }

    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.render_with(messages, add_generation_prompt, &TemplateExtras::default())
    }

    pub fn render_with(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        extras: &TemplateExtras,
    ) -> Result<String> {
        let j = match &self.kind {
            Kind::Builtin(b) => return Ok(b.render(messages, add_generation_prompt)),
            Kind::Jinja(j) => j,
        };
        let msgs: Vec<Value> = messages.iter().map(message_value).collect();
        let mut ctx: BTreeMap<&str, Value> = BTreeMap::new();
        ctx.insert("messages", Value::from(msgs));
        ctx.insert("add_generation_prompt", Value::from(add_generation_prompt));
        ctx.insert("bos_token", Value::from(j.bos_token.as_str()));
        ctx.insert("eos_token", Value::from(j.eos_token.as_str()));
        // Only what the request set: templates test `tools is defined` / `enable_thinking is defined`.
        if let Some(tools) = &extras.tools {
            ctx.insert("tools", json_value(tools));
        }
        if let Some(on) = extras.enable_thinking {
            ctx.insert("enable_thinking", Value::from(on));
        }
        if let Some(effort) = &extras.reasoning_effort {
            ctx.insert("reasoning_effort", Value::from(effort.as_str()));
        }
        let ctx = Value::from(ctx);
        let mut out = j
            .env
            .render_str(&j.source, ctx)
            .map_err(|e| EngineError::Template(format!("{e:#}")))?;
        if j.strip_bos && !j.bos_token.is_empty() && out.starts_with(&j.bos_token) {
            out.drain(..j.bos_token.len());
        }
        if j.strip_eos && !j.eos_token.is_empty() && out.ends_with(&j.eos_token) {
            out.truncate(out.len() - j.eos_token.len());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parts of Qwen2.5's and Qwen3's templates that read tools, calls, results and `enable_thinking`.
    const QWEN_LIKE: &str = "{%- if tools %}<|im_start|>system\n# Tools\n<tools>\
        {%- for tool in tools %}\n{{ tool | tojson }}{%- endfor %}\n</tools><|im_end|>\n{%- endif %}\
        {%- for message in messages %}\
        {%- if message.role == 'assistant' and message.tool_calls %}<|im_start|>assistant\n{{ message.content }}\
        {%- for tool_call in message.tool_calls %}{%- if tool_call.function is defined %}\
        {%- set tool_call = tool_call.function %}{%- endif %}\
        <tool_call>\n{\"name\": \"{{ tool_call.name }}\", \"arguments\": {{ tool_call.arguments | tojson }}}\n</tool_call>\
        {%- endfor %}<|im_end|>\n\
        {%- elif message.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ message.content }}\n</tool_response>\
        <|im_end|>\n\
        {%- else %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{%- endif %}\
        {%- endfor %}\
        {%- if add_generation_prompt %}<|im_start|>assistant\n\
        {%- if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{%- endif %}\
        {%- endif %}";

    #[test]
    fn tools_calls_results_and_thinking_reach_the_template() {
        let t = ChatTemplate::new(QWEN_LIKE, "", "<|im_end|>").expect("compiles");
        let mut call = ChatMessage::new("assistant", "");
        call.tool_calls.push(ChatToolCall {
            id: "call_1".into(),
            name: "get_weather".into(),
            arguments: r#"{"city":"Paris"}"#.into(),
        });
        let mut result = ChatMessage::new("tool", "sunny");
        result.tool_call_id = Some("call_1".into());
        let messages = [ChatMessage::new("user", "weather?"), call, result];
        let extras = TemplateExtras {
            tools: Some(serde_json::json!([{"type": "function", "function": {"name": "get_weather"}}])),
            enable_thinking: Some(false),
            reasoning_effort: None,
        };
        let out = t.render_with(&messages, true, &extras).expect("renders");
        assert!(
            out.contains(r#"<tools>{"function": {"name": "get_weather"}, "type": "function"}</tools>"#),
            "{out}"
        );
        assert!(
            out.contains(r#"{"name": "get_weather", "arguments": {"city": "Paris"}}"#),
            "arguments are a mapping: {out}"
        );
        assert!(out.contains("<tool_response>\nsunny\n</tool_response>"), "{out}");
        assert!(out.trim_end().ends_with("<think>\n\n</think>"), "{out}");
        // Without extras nothing is defined: no tools block, no empty thinking.
        let plain = t.render(&messages[..1], true).expect("renders");
        assert!(!plain.contains("<tools>") && !plain.contains("<think>"), "{plain}");
        assert!(t.renders_tools());
    }
}
