//! shoal's inference engine: runs one pipeline stage (a layer range) of a GGUF transformer on CPU with its own
//! quantized kernels, plus the tokenizer, chat template, sampler and batching loops around it.

pub mod arch;
pub mod attention;
pub mod bytes;
pub mod error;
pub mod gguf;
pub mod kernels;
pub mod ops;
mod pack_cache;
pub mod pipeline;
pub mod stage;

pub use attention::KvType;
pub use error::{EngineError, Result};
pub use kernels::Pool;
pub use pipeline::{PREFILL_CHUNK, Pipeline};
pub use stage::{LayerRange, SeqChunk, SeqSlot, Stage, StageInput, StageOutput};

pub mod chat;
pub mod generate;
pub mod grammar;
pub mod logprobs;
pub mod output;
pub mod sampling;
pub mod scheduler;
pub mod step_budget;
pub mod tokenizer;

pub use chat::{ChatMessage, ChatTemplate, ChatToolCall, TemplateExtras};
pub use generate::{
    BatchRequest, DecodeStep, Decoding, FinishReason, GenerateParams, Generation, generate, generate_batch,
};
pub use grammar::{Constrained, Constraint, GrammarError, GrammarFactory};
pub use logprobs::{MAX_TOP_LOGPROBS, TokenLogprobs, token_logprobs};
pub use sampling::{Sampler, SamplingParams};
pub use scheduler::{ScheduledStep, Scheduler};
pub use step_budget::{STEP_TARGET, StepBudget};
pub use tokenizer::{Bounded, IncrementalDecoder, Tokenizer};
