//! The canonical generation request every API adapter produces (SYSTEM.md §2.3).

use serde::{Deserialize, Serialize};

use crate::ids::ModelId;

/// Encoded params larger than this are refused by the API with 413.
pub const MAX_PARAMS_BYTES: usize = 4 * 1024 * 1024;

/// What State and the durable log say of a request's content (issue 15): its size and a salted digest, never the
/// content. The content travels from the API node to rank 0 as a transient message (`wire::PromptReply`), and the
/// digest lets rank 0 check that what it fetched is what the master scheduled. The salt is random per request and
/// travels only with the content, so the digest in State cannot be used to confirm a guess of a short prompt.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct PromptRef {
    /// Encoded size of the full request (content included).
    pub bytes: u32,
    /// Messages in the request (0 for a raw prompt).
    pub messages: u32,
    /// sha256 of the salt followed by the encoded full request.
    pub digest: [u8; 32],
}

impl GenerationParams {
    /// The request without its content, as it may be written to the durable log and served by `/state`. Content is
    /// every text the client or a tool wrote: messages (with tool calls and results), the raw prompt, instructions,
    /// stop strings, tool definitions and a constraint's schema or grammar (they carry descriptions and enum values a
    /// user wrote, and can be megabytes). Kept: the model, sampling numbers, flags and `tool_choice` (an identifier).
    pub fn without_content(&self) -> GenerationParams {
        // Destructured field by field, so a new field cannot reach the log before someone decides what it is.
        let GenerationParams {
            model,
            messages: _,
            raw_prompt: _,
            instructions: _,
            tools: _,
            max_output_tokens,
            temperature,
            top_p,
            top_k,
            min_p,
            repetition_penalty,
            presence_penalty,
            frequency_penalty,
            seed,
            stop: _,
            logprobs,
            top_logprobs,
            enable_thinking,
            reasoning_effort,
            constraint: _,
            tool_choice,
            single_tool_call,
        } = self;
        GenerationParams {
            model: model.clone(),
            messages: Vec::new(),
            raw_prompt: None,
            instructions: None,
            tools: None,
            max_output_tokens: *max_output_tokens,
            temperature: *temperature,
            top_p: *top_p,
            top_k: *top_k,
            min_p: *min_p,
            repetition_penalty: *repetition_penalty,
            presence_penalty: *presence_penalty,
            frequency_penalty: *frequency_penalty,
            seed: *seed,
            stop: Vec::new(),
            logprobs: *logprobs,
            top_logprobs: *top_logprobs,
            enable_thinking: *enable_thinking,
            reasoning_effort: reasoning_effort.clone(),
            constraint: None,
            tool_choice: tool_choice.clone(),
            single_tool_call: *single_tool_call,
        }
    }

    /// Whether the request carries none of the content [`Self::without_content`] removes.
    pub fn is_content_free(&self) -> bool {
        *self == self.without_content()
    }
}

#[derive(Clone, PartialEq, Debug, Default, Serialize, Deserialize)]
pub struct GenerationParams {
    pub model: ModelId,
    pub messages: Vec<Message>,
    /// A prompt given to the model as is, without the chat template (OpenAI Completions, Ollama `raw`); `messages`
    /// is then empty.
    pub raw_prompt: Option<String>,
    pub instructions: Option<String>,
    /// OpenAI function tools as a JSON string (postcard cannot carry free-form JSON values).
    pub tools: Option<String>,
    pub max_output_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub logprobs: bool,
    pub top_logprobs: Option<u32>,
    pub enable_thinking: Option<bool>,
    pub reasoning_effort: Option<String>,
    /// Structured output: the answer must match this (enforced on the last rank, validated by the API first).
    pub constraint: Option<Constraint>,
    /// Whether and which tool the model must call (OpenAI `tool_choice`, Anthropic's `any`/`tool`/`auto`/`none`).
    pub tool_choice: ToolChoice,
    /// The model may make only one call per answer (OpenAI `parallel_tool_calls: false`, Anthropic
    /// `disable_parallel_tool_use: true`); the call grammars allow several otherwise.
    pub single_tool_call: bool,
}

/// `tool_choice`: `Auto` lets the model choose; `None` hides the tools; `Required` and `Function` force a call (with
/// a grammar).
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub enum ToolChoice {
    #[default]
    Auto,
    None,
    Required,
    Function(String),
}

/// A grammar the output must match. JSON travels as text: postcard cannot carry free-form JSON values.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Constraint {
    /// Any JSON object (OpenAI `json_object`, Ollama `"json"`).
    JsonObject,
    /// A JSON schema (JSON text); `strict`: an unsupported keyword is refused rather than ignored.
    JsonSchema { schema: String, strict: bool },
    /// llguidance's Lark syntax, which may embed `%json{…}` (tool-call formats).
    Lark { grammar: String },
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
    /// Calls an assistant message made (empty when none).
    pub tool_calls: Vec<ToolCall>,
    /// For a `tool` message: the call it answers.
    pub tool_call_id: Option<String>,
    pub reasoning: Option<String>,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Message {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
            reasoning: None,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
    Developer,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments as a JSON text.
    pub arguments: String,
}
