//! A request's prompt (SYSTEM.md §10.4): the chat template (the card's override, else the model's own) and the
//! tokenizer turn a task's messages (or its raw prompt) into prompt tokens, and its parameters become the engine's.
//! Rank 0 does it to run the task; the API node does the same to count a prompt before it sends anything (a prompt
//! longer than the context is the client's 400, and Anthropic's `count_tokens` is exactly this count).

use std::path::Path;

use serde_json::Value;
use shoal_engine::output::tool_grammar::{self, Forced, ToolSpec};
use shoal_engine::output::{OutputSpec, ToolFormat, reasoning};
use shoal_engine::{
    ChatMessage, ChatTemplate, ChatToolCall, GenerateParams, SamplingParams, TemplateExtras, Tokenizer,
};
use shoal_types::ModelCard;
use shoal_types::params::{Constraint, GenerationParams, Role, ToolChoice};

/// What [`Prompter::tokens_within`] found.
pub use shoal_engine::Bounded;

/// `max_tokens` when the request sets none: the rest of the context, capped so a forgotten limit cannot hold a
/// sequence slot for minutes.
pub const DEFAULT_MAX_TOKENS: usize = 4_096;

/// The tokenizer and chat template of one model, loaded once per node.
pub struct Prompter {
    tokenizer: Tokenizer,
    template: ChatTemplate,
    context_length: usize,
    /// How this model writes tool calls (from its template).
    tool_format: ToolFormat,
    /// The model thinks in `<think>` tags (template or vocabulary).
    thinks: bool,
}

/// A request's tools, rendered by the template itself or described in the system prompt (templates without tool
/// support: llama.cpp's generic format).
enum ToolMode {
    Off,
    Template(Value),
    Fallback(Value),
}

impl Prompter {
    pub fn load(gguf: &Path, card: &ModelCard) -> Result<Prompter, String> {
        let tokenizer = Tokenizer::from_gguf_path(gguf).map_err(|e| e.to_string())?;
        let template = match &card.chat_template.template_override {
            Some(source) => {
                let bos = tokenizer
                    .bos()
                    .and_then(|b| tokenizer.token_text(b))
                    .unwrap_or_default();
                let eos = tokenizer.token_text(tokenizer.eos()).unwrap_or_default();
                ChatTemplate::new(source, &bos, &eos)
            }
            None => ChatTemplate::from_tokenizer(&tokenizer),
        }
        .map_err(|e| e.to_string())?;
        let tool_format = if template.renders_tools() {
            ToolFormat::detect(template.source())
        } else {
            ToolFormat::Generic
        };
        let thinks = reasoning::thinks(template.source(), |t| tokenizer.token_id(t).is_some());
        Ok(Prompter {
            tokenizer,
            template,
            context_length: card.context_length as usize,
            tool_format,
            thinks,
        })
    }

    /// The prompt tokens and engine parameters of a request; an error is the request's fault (`Invalid`), a prompt
    /// that leaves no room for one generated token among them. A prompt far past the context is told without
    /// tokenizing all of it ([`Tokenizer::encode_within`]).
    pub fn prepare(&self, params: &GenerationParams) -> Result<(Vec<u32>, GenerateParams), String> {
        let (text, tools) = self.render(params)?;
        let prompt = match self.encode_within(&text, self.context_length.saturating_sub(1))? {
            Bounded::Tokens(ids) => ids,
            Bounded::Over { at_least } => return Err(too_long(at_least, self.context_length)),
        };
        let max_tokens = output_budget(params.max_output_tokens, self.context_length, prompt.len());
        let mut engine = engine_params(params, max_tokens);
        engine.output = OutputSpec {
            tools: tools.then_some(self.tool_format),
            thinking: (self.thinks && params.raw_prompt.is_none()).then(|| reasoning::prompt_opens_thinking(&text)),
            call_grammar: None,
        };
        // `required` or a named function: a grammar in the model's own call format forces the call (it takes the
        // place of any `response_format`: the answer is the call). `auto`: the call grammar applies from where a
        // call starts, if one does.
        if tools {
            let control = |text: &str| {
                self.tokenizer
                    .token_id(text)
                    .filter(|&id| self.tokenizer.is_special(id))
            };
            if let Some(grammar) = forced_call_grammar(self.tool_format, params, &control)? {
                engine.constraint = Some(shoal_engine::Constraint::Lark { grammar });
            } else if engine.constraint.is_none() {
                engine.output.call_grammar = auto_call_grammar(self.tool_format, params, &control)?;
            }
        }
        Ok((prompt, engine))
    }

    /// The prompt tokens of a request (its raw prompt as is, else its messages through the chat template), or that
    /// it has more than `limit`, told in memory that does not grow with the prompt.
    pub fn tokens_within(&self, params: &GenerationParams, limit: usize) -> Result<Bounded, String> {
        let (text, _) = self.render(params)?;
        self.encode_within(&text, limit)
    }

    fn encode_within(&self, text: &str, limit: usize) -> Result<Bounded, String> {
        self.tokenizer.encode_within(text, limit).map_err(|e| e.to_string())
    }

    /// How this model writes tool calls.
    pub fn tool_format(&self) -> ToolFormat {
        self.tool_format
    }

    /// The prompt text, and whether the output is to be read for tool calls.
    fn render(&self, params: &GenerationParams) -> Result<(String, bool), String> {
        if let Some(raw) = &params.raw_prompt {
            return Ok((raw.clone(), false));
        }
        let mode = self.tool_mode(params)?;
        let mut messages = Vec::with_capacity(params.messages.len() + 1);
        if let Some(instructions) = params.instructions.as_deref().filter(|i| !i.is_empty()) {
            messages.push(ChatMessage::new("system", instructions));
        }
        for m in &params.messages {
            let role = match m.role {
                Role::System | Role::Developer => "system",
                Role::User => "user",
                Role::Assistant => "assistant",
                Role::Tool => "tool",
            };
            let mut message = ChatMessage::new(role, m.content.clone());
            message.tool_call_id = m.tool_call_id.clone();
            message.reasoning = m.reasoning.clone();
            let calls = m.tool_calls.iter().map(|c| ChatToolCall {
                id: c.id.clone(),
                name: c.name.clone(),
                arguments: c.arguments.clone(),
            });
            match mode {
                ToolMode::Fallback(_) if !m.tool_calls.is_empty() => {
                    // Written back as the generic format asks the model to write them.
                    let calls: Vec<Value> = calls
                        .map(|c| {
                            let args =
                                serde_json::from_str::<Value>(&c.arguments).unwrap_or(Value::String(c.arguments));
                            serde_json::json!({ "name": c.name, "arguments": args })
                        })
                        .collect();
                    let json = serde_json::json!({ "tool_calls": calls }).to_string();
                    message.content = if message.content.is_empty() {
                        json
                    } else {
                        format!("{}\n{json}", message.content)
                    };
                }
                _ => message.tool_calls = calls.collect(),
            }
            messages.push(message);
        }
        let mut extras = TemplateExtras {
            tools: None,
            enable_thinking: params.enable_thinking,
            reasoning_effort: params.reasoning_effort.clone(),
        };
        let parse = match &mode {
            ToolMode::Off => false,
            ToolMode::Template(tools) => {
                extras.tools = Some(tools.clone());
                true
            }
            ToolMode::Fallback(tools) => {
                let text = fallback_instructions(tools, &params.tool_choice);
                match messages.first_mut().filter(|m| m.role == "system") {
                    Some(system) => system.content = format!("{}\n\n{text}", system.content),
                    None => messages.insert(0, ChatMessage::new("system", text)),
                }
                true
            }
        };
        let text = self
            .template
            .render_with(&messages, true, &extras)
            .map_err(|e| format!("cannot apply the chat template: {e}"))?;
        Ok((text, parse))
    }

    /// The request's tools and how they reach the prompt (`tool_choice: none` leaves them out).
    fn tool_mode(&self, params: &GenerationParams) -> Result<ToolMode, String> {
        let Some(text) = &params.tools else {
            return Ok(ToolMode::Off);
        };
        let tools: Value = serde_json::from_str(text).map_err(|e| format!("tools: {e}"))?;
        if params.tool_choice == ToolChoice::None || tools.as_array().is_none_or(Vec::is_empty) {
            return Ok(ToolMode::Off);
        }
        Ok(if self.template.renders_tools() {
            ToolMode::Template(tools)
        } else {
            ToolMode::Fallback(tools)
        })
    }

    /// The context length the card gives the model.
    pub fn context_length(&self) -> usize {
        self.context_length
    }
}

/// The grammar that forces the call `tool_choice` asks for (`required` or a named function), in the model's call
/// format; `None` when the choice forces nothing or the request has no tools. `control`: the id of the model's
/// control token spelled so, if any.
pub fn forced_call_grammar(
    format: ToolFormat,
    params: &GenerationParams,
    control: &dyn Fn(&str) -> Option<u32>,
) -> Result<Option<String>, String> {
    let forced = match &params.tool_choice {
        ToolChoice::Required => Forced::Any,
        ToolChoice::Function(name) => Forced::Named(name.clone()),
        ToolChoice::Auto | ToolChoice::None => return Ok(None),
    };
    let specs = tool_specs(params.tools.as_deref())?;
    if specs.is_empty() {
        return Ok(None);
    }
    tool_grammar::forced_call_grammar(&call_grammar(format, &specs, params, control), &forced).map(Some)
}

/// `tool_choice: auto`'s grammar of a call once one starts; `None` for other choices or without tools.
pub fn auto_call_grammar(
    format: ToolFormat,
    params: &GenerationParams,
    control: &dyn Fn(&str) -> Option<u32>,
) -> Result<Option<String>, String> {
    if params.tool_choice != ToolChoice::Auto {
        return Ok(None);
    }
    let specs = tool_specs(params.tools.as_deref())?;
    if specs.is_empty() {
        return Ok(None);
    }
    tool_grammar::auto_call_grammar(&call_grammar(format, &specs, params, control)).map(Some)
}

fn call_grammar<'a>(
    format: ToolFormat,
    tools: &'a [ToolSpec],
    params: &GenerationParams,
    control: &'a dyn Fn(&str) -> Option<u32>,
) -> tool_grammar::CallGrammar<'a> {
    tool_grammar::CallGrammar {
        format,
        tools,
        parallel: !params.single_tool_call,
        control,
    }
}

/// The functions in OpenAI's list (as the API wrote it): names and parameter schemas.
fn tool_specs(tools: Option<&str>) -> Result<Vec<ToolSpec>, String> {
    let Some(list) = tools
        .map(serde_json::from_str::<Value>)
        .transpose()
        .map_err(|e| format!("tools: {e}"))?
    else {
        return Ok(Vec::new());
    };
    Ok(list
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| {
                    let f = t.get("function")?;
                    Some(ToolSpec {
                        name: f.get("name")?.as_str()?.to_string(),
                        parameters: f.get("parameters").cloned().unwrap_or(Value::Null),
                    })
                })
                .collect()
        })
        .unwrap_or_default())
}

/// The system prompt that describes tools to a template that cannot render them, asking for the generic JSON format
/// ([`ToolFormat::Generic`]), as llama.cpp's generic format does.
pub fn fallback_instructions(tools: &Value, choice: &ToolChoice) -> String {
    let functions: Vec<Value> = tools
        .as_array()
        .map(|a| {
            a.iter()
                .map(|t| t.get("function").cloned().unwrap_or_else(|| t.clone()))
                .collect()
        })
        .unwrap_or_default();
    // Compact: every token of it is prefilled with each request.
    let list = serde_json::to_string(&functions).unwrap_or_default();
    let when = match choice {
        ToolChoice::Required => "You must call at least one tool.".to_string(),
        ToolChoice::Function(name) => format!("You must call the tool `{name}`."),
        ToolChoice::Auto | ToolChoice::None => {
            "Call tools only when they help; otherwise answer the user in plain text.".to_string()
        }
    };
    format!(
        "You can call these tools (JSON Schema for their arguments):\n{list}\n\n{when} To call tools, answer with only \
         a JSON object of this form and nothing else:\n\
         {{\"tool_calls\": [{{\"name\": \"<tool name>\", \"arguments\": {{<the arguments>}}}}]}}"
    )
}

/// Compiles a constraint as the last rank will, without the model: schema errors do not depend on the vocabulary,
/// so every API node (one holding no model file too) can refuse a bad schema with a 400 while parsing the request.
/// The last rank compiles it again against the model's vocabulary (a grammar that needs a token the model lacks
/// fails the task there).
pub fn validate_constraint(constraint: &Constraint) -> Result<(), shoal_engine::GrammarError> {
    shoal_engine::GrammarFactory::byte_level()?.validate(&engine_constraint(constraint))
}

/// The engine's copy of a request's constraint (the engine does not depend on shoal-types).
pub fn engine_constraint(c: &Constraint) -> shoal_engine::Constraint {
    match c {
        Constraint::JsonObject => shoal_engine::Constraint::JsonObject,
        Constraint::JsonSchema { schema, strict } => shoal_engine::Constraint::JsonSchema {
            schema: schema.clone(),
            strict: *strict,
        },
        Constraint::Lark { grammar } => shoal_engine::Constraint::Lark {
            grammar: grammar.clone(),
        },
    }
}

/// The engine's parameters; a field the request leaves unset keeps the engine's default (the API has already filled
/// the card's defaults in).
/// The tokens a request may generate: its `max_tokens` (or [`DEFAULT_MAX_TOKENS`]), capped at the room the context
/// leaves after the prompt (issue 15), so no request asks for more than the model can hold. At least 1: a prompt that
/// fills the context is refused by the engine's own check, with its own message.
/// Why a prompt is refused as too long (rank 0's `Invalid`; the API node says the same as a 400 before sending).
pub fn too_long(at_least: usize, context_length: usize) -> String {
    format!(
        "the prompt is at least {at_least} tokens; this model's context holds {context_length} tokens, including at \
         least one generated token"
    )
}

pub fn output_budget(requested: Option<u32>, context_length: usize, prompt_tokens: usize) -> usize {
    let room = context_length.saturating_sub(prompt_tokens).max(1);
    requested.map_or(DEFAULT_MAX_TOKENS, |m| m as usize).min(room)
}

pub fn engine_params(params: &GenerationParams, max_tokens: usize) -> GenerateParams {
    let defaults = SamplingParams::default();
    GenerateParams {
        sampling: SamplingParams {
            temperature: params.temperature.unwrap_or(defaults.temperature),
            top_k: params.top_k.map_or(defaults.top_k, |k| k as usize),
            top_p: params.top_p.unwrap_or(defaults.top_p),
            min_p: params.min_p.unwrap_or(defaults.min_p),
            repetition_penalty: params.repetition_penalty.unwrap_or(defaults.repetition_penalty),
            presence_penalty: params.presence_penalty.unwrap_or(defaults.presence_penalty),
            frequency_penalty: params.frequency_penalty.unwrap_or(defaults.frequency_penalty),
            penalty_last_n: defaults.penalty_last_n,
            seed: params.seed,
        },
        max_tokens,
        stop: params.stop.clone(),
        output: Default::default(),
        constraint: params.constraint.as_ref().map(engine_constraint),
        logprobs: params.logprobs.then(|| params.top_logprobs.map_or(0, |n| n as usize)),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn max_tokens_is_capped_at_the_room_the_context_leaves() {
        use super::{DEFAULT_MAX_TOKENS, output_budget};
        // Within the room: as asked.
        assert_eq!(output_budget(Some(100), 8_192, 50), 100);
        // Past it (even past u32's worth of context): the room.
        assert_eq!(output_budget(Some(1_000_000), 8_192, 192), 8_000);
        assert_eq!(output_budget(Some(u32::MAX), 2_048, 0), 2_048);
        // Unset: the default, capped the same way.
        assert_eq!(output_budget(None, 100_000, 10), DEFAULT_MAX_TOKENS);
        assert_eq!(output_budget(None, 1_000, 10), 990);
        // A prompt that fills the context leaves 1 (the engine refuses it with its own message).
        assert_eq!(output_budget(Some(5), 1_000, 1_000), 1);
        assert_eq!(output_budget(Some(5), 1_000, 5_000), 1);
    }

    use super::*;

    const TOOLS: &str = r#"[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object",
        "properties":{"city":{"type":"string"},"days":{"type":"integer"}},"required":["city","days"]}}}]"#;

    fn with(choice: ToolChoice, tools: Option<&str>) -> GenerationParams {
        GenerationParams {
            tools: tools.map(str::to_string),
            tool_choice: choice,
            ..GenerationParams::default()
        }
    }

    fn no_controls(_: &str) -> Option<u32> {
        None
    }

    #[test]
    fn a_forced_choice_becomes_a_grammar_in_the_models_format() {
        let g = forced_call_grammar(
            ToolFormat::Generic,
            &with(ToolChoice::Required, Some(TOOLS)),
            &no_controls,
        )
        .expect("ok")
        .expect("a grammar");
        assert!(g.starts_with("start: call\ncall: %json{"), "{g}");
        assert!(g.contains(r#""name":{"const":"get_weather"}"#), "{g}");
        assert!(g.contains(r#""maxItems":4"#), "parallel calls by default: {g}");
        let mut single = with(ToolChoice::Required, Some(TOOLS));
        single.single_tool_call = true;
        let one = forced_call_grammar(ToolFormat::Generic, &single, &no_controls)
            .expect("ok")
            .expect("a grammar");
        assert!(one.contains(r#""maxItems":1"#), "{one}");
        let named = forced_call_grammar(
            ToolFormat::Hermes,
            &with(ToolChoice::Function("get_weather".into()), Some(TOOLS)),
            &no_controls,
        )
        .expect("ok")
        .expect("a grammar");
        assert!(named.contains("block: \"<tool_call>\""), "{named}");
        assert_eq!(
            forced_call_grammar(ToolFormat::Generic, &with(ToolChoice::Auto, Some(TOOLS)), &no_controls),
            Ok(None)
        );
        assert_eq!(
            forced_call_grammar(ToolFormat::Generic, &with(ToolChoice::Required, None), &no_controls),
            Ok(None)
        );
        assert!(
            forced_call_grammar(
                ToolFormat::Generic,
                &with(ToolChoice::Function("x".into()), Some(TOOLS)),
                &no_controls
            )
            .is_err()
        );
    }

    #[test]
    fn auto_has_a_call_grammar_only_with_tools() {
        let g = auto_call_grammar(ToolFormat::Generic, &with(ToolChoice::Auto, Some(TOOLS)), &no_controls)
            .expect("ok")
            .expect("a grammar");
        assert!(g.contains("anyOf"), "the wrapper or a bare call: {g}");
        for params in [
            with(ToolChoice::Auto, None),
            with(ToolChoice::None, Some(TOOLS)),
            with(ToolChoice::Required, Some(TOOLS)),
        ] {
            assert_eq!(auto_call_grammar(ToolFormat::Hermes, &params, &no_controls), Ok(None));
        }
    }

    #[test]
    fn fallback_instructions_list_the_tools_and_the_format() {
        let tools: Value = serde_json::from_str(TOOLS).expect("json");
        let text = fallback_instructions(&tools, &ToolChoice::Required);
        assert!(text.contains(r#""name":"get_weather""#), "{text}");
        assert!(text.contains("You must call at least one tool."), "{text}");
        assert!(text.contains(r#"{"tool_calls": [{"name": "<tool name>""#), "{text}");
    }
}
