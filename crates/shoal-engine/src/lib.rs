//! shoal's inference engine: runs one pipeline stage (a layer range) of a GGUF transformer on CPU, with the
//! tokenizer, chat template and sampler the last stage needs.

pub mod arch;
pub mod error;
pub mod gguf;
pub mod ops;
pub mod pipeline;
pub mod stage;

pub use error::{EngineError, Result};
pub use pipeline::Pipeline;
pub use stage::{LayerRange, SeqSlot, Stage, StageInput, StageOutput};

pub mod chat;
pub mod generate;
pub mod sampling;
pub mod tokenizer;

pub use chat::{ChatMessage, ChatTemplate};
pub use generate::{FinishReason, GenerateParams, Generation, generate};
pub use sampling::{Sampler, SamplingParams};
pub use tokenizer::{IncrementalDecoder, Tokenizer};
