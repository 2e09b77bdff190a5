//! A request's prompt (SYSTEM.md §10.4): the chat template (the card's override, else the model's own) and the
//! tokenizer turn a task's messages (or its raw prompt) into prompt tokens, and its parameters become the engine's.
//! Rank 0 does it to run the task; the API node does the same to count a prompt before it sends anything (a prompt
//! longer than the context is the client's 400, and Anthropic's `count_tokens` is exactly this count).

use std::path::Path;

use shoal_engine::{ChatMessage, ChatTemplate, GenerateParams, SamplingParams, Tokenizer};
use shoal_types::ModelCard;
use shoal_types::params::{GenerationParams, Role};

/// `max_tokens` when the request sets none: the rest of the context, capped so a forgotten limit cannot hold a
/// sequence slot for minutes.
pub const DEFAULT_MAX_TOKENS: usize = 4_096;

/// The tokenizer and chat template of one model, loaded once per node.
pub struct Prompter {
    tokenizer: Tokenizer,
    template: ChatTemplate,
    context_length: usize,
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
        Ok(Prompter {
            tokenizer,
            template,
            context_length: card.context_length as usize,
        })
    }

    /// The prompt tokens and engine parameters of a request; an error is the request's fault (`Invalid`).
    pub fn prepare(&self, params: &GenerationParams) -> Result<(Vec<u32>, GenerateParams), String> {
        let prompt = self.tokens(params)?;
        let room = self.context_length.saturating_sub(prompt.len()).max(1);
        let max_tokens = params
            .max_output_tokens
            .map_or(DEFAULT_MAX_TOKENS.min(room), |m| m as usize);
        Ok((prompt, engine_params(params, max_tokens)))
    }

    /// The prompt tokens of a request: its raw prompt as is, else its messages through the chat template.
    pub fn tokens(&self, params: &GenerationParams) -> Result<Vec<u32>, String> {
        if let Some(raw) = &params.raw_prompt {
            return self.tokenizer.encode(raw).map_err(|e| e.to_string());
        }
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
            messages.push(ChatMessage::new(role, m.content.clone()));
        }
        let text = self
            .template
            .render(&messages, true)
            .map_err(|e| format!("cannot apply the chat template: {e}"))?;
        self.tokenizer.encode(&text).map_err(|e| e.to_string())
    }

    /// The context length the card gives the model.
    pub fn context_length(&self) -> usize {
        self.context_length
    }
}

/// The engine's parameters; a field the request leaves unset keeps the engine's default (the API has already filled
/// the card's defaults in).
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
    }
    output: Default::default(),
}
