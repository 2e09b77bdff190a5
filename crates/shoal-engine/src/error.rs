use std::path::PathBuf;

/// Everything the engine can fail with. Variants carry enough context to be shown to an operator as-is; the server
/// maps `ContextOverflow` and `InvalidRequest` to 400s and the rest to 500s.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot open model file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a readable GGUF file: {reason}")]
    InvalidGguf { path: PathBuf, reason: String },
    #[error("GGUF metadata key `{0}` is missing")]
    MissingMetadata(String),
    #[error("GGUF metadata key `{key}` is invalid: {reason}")]
    InvalidMetadata { key: String, reason: String },
    #[error("unsupported model architecture `{0}` (supported: {supported})", supported = crate::arch::SUPPORTED.join(", "))]
    UnsupportedArchitecture(String),
    #[error("tensor `{0}` is missing from the GGUF file")]
    MissingTensor(String),
    #[error("cannot load tensor `{name}`: {reason}")]
    InvalidTensor { name: String, reason: String },
    #[error(
        "tensor `{name}` uses the {ty} encoding, which this build cannot run (supported: F32, F16, Q4_0, Q4_1, Q8_0, Q4_K, Q6_K)"
    )]
    UnsupportedQuant { name: String, ty: String },
    #[error("invalid layer range [{start}, {end}) for a model with {n_layers} layers")]
    InvalidLayerRange { start: usize, end: usize, n_layers: usize },
    #[error("sequence needs {needed} tokens but the context length is {limit}")]
    ContextOverflow { needed: usize, limit: usize },
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A constraint that does not compile, or a grammar that reached a dead end.
    #[error("constraint: {0}")]
    Grammar(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
