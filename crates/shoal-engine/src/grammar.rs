//! Constrained decoding with llguidance (ENGINE.md): a JSON schema, "any JSON object" or a Lark grammar becomes a
//! token mask before every sampling step, computed from the model's own vocabulary. One [`GrammarFactory`] per
//! loaded tokenizer (building the token trie walks the whole vocabulary); one [`Constrained`] per sequence.

use std::sync::{Arc, OnceLock};

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, TokEnv, TokRxInfo, TokTrie};
use llguidance::{JsonCompileOptions, Matcher, ParserFactory};
use serde_json::Value;

use crate::tokenizer::Tokenizer;

/// What a sequence's output must match. The engine's copy of the API's constraint (shoal-types does not reach the
/// engine); JSON travels as text because the runner protocol (postcard) cannot carry free-form JSON values.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Constraint {
    /// Any JSON object (OpenAI `json_object`, Ollama `"json"`).
    JsonObject,
    /// A JSON schema as JSON text. `strict`: an unsupported keyword or format is an error; otherwise it is ignored.
    JsonSchema { schema: String, strict: bool },
    /// llguidance's Lark syntax (may embed `%json{…}`).
    Lark { grammar: String },
}

/// Why a constraint cannot be used: `path` is where in the JSON schema (dotted, `[i]` for array items, empty for
/// the whole schema or a Lark grammar), `message` llguidance's reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrammarError {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for GrammarError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "at {}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for GrammarError {}

fn whole(message: impl std::fmt::Display) -> GrammarError {
    GrammarError {
        path: String::new(),
        message: message.to_string(),
    }
}

/// Compiles constraints against one tokenizer's vocabulary. Cheap to share (`Arc` inside).
#[derive(Clone)]
pub struct GrammarFactory {
    factory: Arc<ParserFactory>,
}

impl std::fmt::Debug for GrammarFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrammarFactory")
            .field("vocab", &self.vocab_size())
            .finish()
    }
}

impl GrammarFactory {
    /// Builds the token trie from what each token prints as; control tokens get llguidance's special-token marker
    /// in front of their literal text, so a grammar can name them (`<|im_end|>`) but plain text never matches them.
    pub fn new(tokenizer: &Tokenizer) -> Result<Self, GrammarError> {
        let n = tokenizer.vocab_size();
        let words: Vec<Vec<u8>> = (0..n as u32)
            .map(|id| {
                if tokenizer.is_special(id) {
                    let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    w.extend_from_slice(tokenizer.token_text(id).unwrap_or_default().as_bytes());
                    w
                } else {
                    tokenizer.token_bytes(id).to_vec()
                }
            })
            .collect();
        Self::from_words(&words, tokenizer.eos())
    }

    /// A factory over these token spellings (a control token's starts with [`TokTrie::SPECIAL_TOKEN_MARKER`]).
    pub fn from_words(words: &[Vec<u8>], eos: u32) -> Result<Self, GrammarError> {
        let vocab = u32::try_from(words.len()).map_err(|_| whole("the vocabulary is too large"))?;
        let info = TokRxInfo::new(vocab, eos);
        // Greedy tokenization stands in for the model's: llguidance needs it only for forced tokens, which we do
        // not use (every token is sampled from the masked logits), and for text a grammar takes over mid-output
        // ([`Constrained::consume_text`]), where any spelling of the same bytes matches alike.
        Self::from_env(Arc::new(ApproximateTokEnv::new(TokTrie::from(&info, words))))
    }

    /// A factory over a vocabulary of the 256 single bytes: compiles any JSON schema exactly as a model's factory
    /// does (schema errors do not depend on the vocabulary), so a node that holds no model can validate one.
    pub fn byte_level() -> Result<&'static GrammarFactory, GrammarError> {
        static FACTORY: OnceLock<Result<GrammarFactory, GrammarError>> = OnceLock::new();
        FACTORY
            .get_or_init(|| Self::from_env(ApproximateTokEnv::single_byte_env()))
            .as_ref()
            .map_err(Clone::clone)
    }

    fn from_env(env: TokEnv) -> Result<Self, GrammarError> {
        let mut factory = ParserFactory::new_simple(&env).map_err(whole)?;
        factory.quiet();
        Ok(Self {
            factory: Arc::new(factory),
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.factory.tok_env().tok_trie().vocab_size()
    }

    /// A matcher for one sequence; on a JSON schema that does not compile, the error names the innermost
    /// sub-schema that fails on its own.
    pub fn compile(&self, constraint: &Constraint) -> Result<Constrained, GrammarError> {
        let grammar = match constraint {
            Constraint::JsonObject => json_grammar(serde_json::json!({ "type": "object" }), false),
            Constraint::JsonSchema { schema, strict } => {
                let value: Value = serde_json::from_str(schema).map_err(|e| whole(format!("not JSON: {e}")))?;
                if !value.is_object() && !value.is_boolean() {
                    return Err(whole("a schema must be an object"));
                }
                if let Err(message) = self.parser(json_grammar(value.clone(), *strict)) {
                    return Err(self.locate(&value, *strict, String::new(), message));
                }
                json_grammar(value, *strict)
            }
            Constraint::Lark { grammar } => TopLevelGrammar::from_lark(grammar.clone()),
        };
        let parser = self.parser(grammar).map_err(whole)?;
        Ok(Constrained {
            matcher: Matcher::new(Ok(parser)),
        })
    }

    /// Checks a constraint without keeping it (the API node validates before a request goes out).
    pub fn validate(&self, constraint: &Constraint) -> Result<(), GrammarError> {
        self.compile(constraint).map(|_| ())
    }

    fn parser(&self, grammar: TopLevelGrammar) -> Result<llguidance::TokenParser, String> {
        self.factory.create_parser(grammar).map_err(|e| e.to_string())
    }

    /// Descends into the sub-schemas of a schema that failed, to the deepest one that fails alone. Sub-schemas with
    /// a `$ref` are not tried alone (the reference would dangle there).
    fn locate(&self, schema: &Value, strict: bool, path: String, message: String) -> GrammarError {
        for (child_path, child) in sub_schemas(schema, &path) {
            if !(child.is_object() || child.is_boolean()) || mentions_ref(child) {
                continue;
            }
            if let Err(inner) = self.parser(json_grammar(child.clone(), strict)) {
                return self.locate(child, strict, child_path, inner);
            }
        }
        GrammarError { path, message }
    }
}

/// JSON with no free whitespace: llguidance's flexible whitespace lets a small model pad forever inside an object.
fn json_grammar(mut schema: Value, strict: bool) -> TopLevelGrammar {
    if let Some(obj) = schema.as_object_mut()
        && !obj.contains_key("x-guidance")
    {
        let options = JsonCompileOptions {
            whitespace_flexible: false,
            lenient: !strict,
            ..JsonCompileOptions::default()
        };
        if let Ok(v) = serde_json::to_value(&options) {
            obj.insert("x-guidance".to_string(), v);
        }
    }
    TopLevelGrammar::from_json_schema(schema)
}

fn mentions_ref(schema: &Value) -> bool {
    match schema {
        Value::Object(o) => o.contains_key("$ref") || o.values().any(mentions_ref),
        Value::Array(a) => a.iter().any(mentions_ref),
        _ => false,
    }
}

/// The keywords whose values are schemas (or maps / lists of schemas), with the path of each.
fn sub_schemas<'v>(schema: &'v Value, path: &str) -> Vec<(String, &'v Value)> {
    const ONE: &[&str] = &["items", "additionalProperties", "not", "contains", "if", "then", "else"];
    const MAP: &[&str] = &["properties", "patternProperties", "$defs", "definitions"];
    const LIST: &[&str] = &["anyOf", "oneOf", "allOf", "prefixItems"];
    let Some(obj) = schema.as_object() else {
        return Vec::new();
    };
    let join = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    let mut out = Vec::new();
    for (key, value) in obj {
        let key = key.as_str();
        if ONE.contains(&key) {
            out.push((join(key), value));
        } else if MAP.contains(&key) {
            if let Some(map) = value.as_object() {
                out.extend(map.iter().map(|(name, v)| (format!("{}.{name}", join(key)), v)));
            }
        } else if LIST.contains(&key)
            && let Some(list) = value.as_array()
        {
            out.extend(list.iter().enumerate().map(|(i, v)| (format!("{}[{i}]", join(key)), v)));
        }
    }
    out
}

/// One sequence's grammar state: the mask before a token is sampled, the token after.
pub struct Constrained {
    matcher: Matcher,
}

impl std::fmt::Debug for Constrained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constrained")
            .field("stopped", &self.matcher.is_stopped())
            .finish()
    }
}

const BITS: usize = 32;

impl Constrained {
    /// Sets every token the grammar does not allow next to -inf (tokens past the vocabulary too: a model may pad
    /// its output layer). Once the grammar is complete only EOS is allowed.
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<(), GrammarError> {
        let mask = self.matcher.compute_mask_or_eos().map_err(whole)?;
        let words = mask.as_slice();
        let mut any = false;
        for (w, chunk) in logits.chunks_mut(BITS).enumerate() {
            let bits = words.get(w).copied().unwrap_or(0);
            if bits == u32::MAX && chunk.len() == BITS {
                any = true;
                continue;
            }
            for (b, l) in chunk.iter_mut().enumerate() {
                if bits & (1 << b) == 0 {
                    *l = f32::NEG_INFINITY;
                } else {
                    any = true;
                }
            }
        }
        if any {
            Ok(())
        } else {
            Err(whole("the grammar allows no token of this vocabulary"))
        }
    }

    /// Advances the grammar by the sampled token.
    pub fn commit(&mut self, token: u32) -> Result<(), GrammarError> {
        self.matcher.consume_token(token).map_err(whole)
    }

    /// Advances the grammar by text already written (a grammar that takes over mid-output catches up with the
    /// call's first bytes): the bytes are spelled greedily with the vocabulary's plain tokens.
    pub fn consume_text(&mut self, text: &str) -> Result<(), GrammarError> {
        if text.is_empty() {
            return Ok(());
        }
        let tokens = self.matcher.tok_env().map_err(whole)?.tokenize_bytes(text.as_bytes());
        self.matcher.consume_tokens(&tokens).map_err(whole)
    }

    /// The grammar is complete and allows nothing but EOS: the sequence ends here.
    pub fn is_stopped(&self) -> bool {
        self.matcher.is_stopped()
    }

    /// The output so far is a complete match (EOS is allowed now).
    pub fn is_accepting(&mut self) -> bool {
        self.matcher.is_accepting().unwrap_or(false)
    }
}
