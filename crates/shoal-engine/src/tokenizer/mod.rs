//! Tokenizer rebuilt from GGUF metadata (`tokenizer.ggml.*`) to give llama.cpp's ids, plus an incremental, UTF-8-safe
//! detokenizer.
//!
//! Two models: byte-level BPE (`gpt2`, [`bpe`]) with the regex pre-tokenizer its `tokenizer.ggml.pre` names, and
//! SentencePiece (`llama`, [`spm`]). For both, control, user-defined and unknown tokens written literally in the text
//! are cut out first ([`special`], llama.cpp's precedence) and only the text between them reaches the model.

mod bpe;
mod special;
mod spm;

use std::collections::HashSet;

use crate::error::{EngineError, Result};
use crate::gguf::GgufFile;

pub use bpe::SUPPORTED_PRE;
use special::{Fragment, SpecialMatcher};

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp's llama_token_type).
const TOKEN_TYPE_NORMAL: i64 = 1;
const TOKEN_TYPE_UNKNOWN: i64 = 2;
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;
const TOKEN_TYPE_BYTE: i64 = 6;

/// SentencePiece files that omit the special ids get llama.cpp's defaults.
const SPM_DEFAULT_BOS: u32 = 1;
const SPM_DEFAULT_EOS: u32 = 2;
const SPM_DEFAULT_UNK: u32 = 0;

/// Tokens llama.cpp treats as end of generation by their text, whatever the file says (llama_vocab::impl::load): it
/// also makes them control tokens, so they are matched whole in text even where the vocabulary calls them normal
/// (Qwen's `</s>`). E.g. Gemma's `<end_of_turn>` ends a chat reply while its eos is `<eos>`.
const END_OF_GENERATION_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<\u{ff5c}end\u{2581}of\u{2581}sentence\u{ff5c}>",
    "[e~[",
];

/// Fill-in-the-middle tokens llama.cpp recognises by text when the file does not name them
/// (`tokenizer.ggml.fim_*_token_id`), and makes control tokens.
const FIM_TEXTS: &[(&str, &[&str])] = &[
    (
        "tokenizer.ggml.fim_pre_token_id",
        &[
            "<|fim_prefix|>",
            "<fim-prefix>",
            "<fim_prefix>",
            "<\u{ff5c}fim\u{2581}begin\u{ff5c}>",
            "<PRE>",
            "\u{2581}<PRE>",
            "<|code_prefix|>",
            "<|prefix|>",
        ],
    ),
    (
        "tokenizer.ggml.fim_suf_token_id",
        &[
            "<|fim_suffix|>",
            "<fim-suffix>",
            "<fim_suffix>",
            "<\u{ff5c}fim\u{2581}hole\u{ff5c}>",
            "<SUF>",
            "\u{2581}<SUF>",
            "<|code_suffix|>",
            "<|suffix|>",
        ],
    ),
    (
        "tokenizer.ggml.fim_mid_token_id",
        &[
            "<|fim_middle|>",
            "<fim-middle>",
            "<fim_middle>",
            "<\u{ff5c}fim\u{2581}end\u{ff5c}>",
            "<MID>",
            "\u{2581}<MID>",
            "<|code_middle|>",
            "<|middle|>",
        ],
    ),
    (
        "tokenizer.ggml.fim_pad_token_id",
        &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"],
    ),
    (
        "tokenizer.ggml.fim_rep_token_id",
        &["<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"],
    ),
    ("tokenizer.ggml.fim_sep_token_id", &["<|file_sep|>"]),
];

/// gpt-oss (harmony) tokens llama.cpp always renders, whatever their type.
const HARMONY_USER_DEFINED: &[&str] = &["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"];

#[derive(Debug)]
enum Model {
    Bpe(Box<tokenizers::Tokenizer>),
    Spm(spm::Spm),
}

/// UTF-8's longest character: what one byte-fallback or unknown token can stand for.
const MAX_CHAR_BYTES: usize = 4;

/// How much of a long prompt [`Tokenizer::encode_within`] hands the BPE tokenizer at a time: about 3 MB of its
/// bookkeeping (a whole 1 MB text took ~170 MB).
pub const ENCODE_PIECE_BYTES: usize = 16 * 1024;

/// What [`Tokenizer::encode_within`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bounded {
    /// The text's ids: at most the limit.
    Tokens(Vec<u32>),
    /// More tokens than the limit: at least this many.
    Over { at_least: usize },
}

pub struct Tokenizer {
    model: Model,
    specials: SpecialMatcher,
    tokens: Vec<String>,
    /// What each token prints as (llama.cpp's token_to_piece), so decoding and streaming never re-derive it.
    token_bytes: Vec<Vec<u8>>,
    /// The most bytes of text one token can stand for (its spelling in the vocabulary or its piece, whichever is
    /// longer): a text of `n` bytes has at least `n / longest_token_bytes` tokens, which tells a prompt far past any
    /// context without tokenizing it.
    longest_token_bytes: usize,
    /// Control and unknown tokens: left out of decoded text unless asked for.
    special: Vec<bool>,
    bos: Option<u32>,
    eos: u32,
    /// Ids that end generation: eos, eot/eom when the file names them, and llama.cpp's end-of-turn texts.
    end_of_generation: HashSet<u32>,
    add_bos: bool,
    add_eos: bool,
    /// SentencePiece: a space goes in front of the text and after every special token; decoding drops it again.
    add_space_prefix: bool,
    model_name: String,
    pre: String,
    architecture: Option<String>,
    chat_template: Option<String>,
    /// Built on the first constrained request, then shared by every sequence of this model.
    grammar: std::sync::OnceLock<Result<crate::grammar::GrammarFactory, crate::grammar::GrammarError>>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("model", &self.model_name)
            .field("pre", &self.pre)
            .field("vocab", &self.tokens.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish()
    }
}

impl Tokenizer {
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let model_name = gguf.get_str("tokenizer.ggml.model")?;
        let is_spm = match model_name {
            "llama" => true,
            "gpt2" => false,
            other => {
                return Err(EngineError::Tokenizer(format!(
                    "tokenizer model `{other}` is not supported (supported: gpt2 byte-level BPE, llama SentencePiece)"
                )));
            }
        };
        let pre = if gguf.has_key("tokenizer.ggml.pre") {
            gguf.get_str("tokenizer.ggml.pre")?
        } else {
            "default"
        };
        // The pre-tokenizer regex differs per family; guessing wrong silently changes token ids, so refuse instead.
        // SentencePiece has no pre-tokenizer (llama.cpp ignores `pre` there).
        let bpe_spec = if is_spm {
            None
        } else {
            Some(bpe::spec(pre).ok_or_else(|| bpe::unknown_pre(pre))?)
        };
        let tokens = gguf.get_str_array("tokenizer.ggml.tokens")?;
        let types = if gguf.has_key("tokenizer.ggml.token_type") {
            gguf.get_i64_array("tokenizer.ggml.token_type")?
        } else {
            vec![TOKEN_TYPE_NORMAL; tokens.len()]
        };
        if types.len() != tokens.len() {
            return Err(EngineError::InvalidMetadata {
                key: "tokenizer.ggml.token_type".into(),
                reason: format!("{} types for {} tokens", types.len(), tokens.len()),
            });
        }
        let n_vocab = u32::try_from(tokens.len())
            .map_err(|_| EngineError::Tokenizer(format!("vocabulary of {} tokens is too large", tokens.len())))?;
        let token_id = |key: &str| -> Result<Option<u32>> {
            if !gguf.has_key(key) {
                return Ok(None);
            }
            let id = gguf.get_usize(key)?;
            u32::try_from(id)
                .ok()
                .filter(|&i| i < n_vocab)
                .map(Some)
                .ok_or_else(|| EngineError::InvalidMetadata {
                    key: key.to_string(),
                    reason: format!("token id {id} is outside the vocabulary ({n_vocab})"),
                })
        };
        let spm_default = |id: u32| (is_spm && id < n_vocab).then_some(id);
        let bos = token_id("tokenizer.ggml.bos_token_id")?.or(spm_default(SPM_DEFAULT_BOS));
        let eos = token_id("tokenizer.ggml.eos_token_id")?
            .or(spm_default(SPM_DEFAULT_EOS))
            .ok_or_else(|| EngineError::MissingMetadata("tokenizer.ggml.eos_token_id".into()))?;
        let unk = token_id("tokenizer.ggml.unknown_token_id")?.or(spm_default(SPM_DEFAULT_UNK));
        let mut end_of_generation = HashSet::from([eos]);
        for key in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
            if let Some(id) = token_id(key)? {
                end_of_generation.insert(id);
            }
        }
        let mut types = types;
        retype_by_text(gguf, &tokens, &mut types, &mut end_of_generation);
        let flag = |key: &str, default: bool| -> Result<bool> {
            if gguf.has_key(key) {
                gguf.get_bool(key)
            } else {
                Ok(default)
            }
        };
        let add_bos = flag(
            "tokenizer.ggml.add_bos_token",
            is_spm || bpe_spec.is_some_and(|s| s.add_bos),
        )? && bos.is_some();
        let add_eos = flag("tokenizer.ggml.add_eos_token", false)?;
        let add_space_prefix = flag("tokenizer.ggml.add_space_prefix", is_spm)?;

        let model = if is_spm {
            let scores = if gguf.has_key("tokenizer.ggml.scores") {
                gguf.get_f32_array("tokenizer.ggml.scores")?
            } else {
                vec![0.0; tokens.len()]
            };
            if scores.len() < tokens.len() {
                return Err(EngineError::InvalidMetadata {
                    key: "tokenizer.ggml.scores".into(),
                    reason: format!("{} scores for {} tokens", scores.len(), tokens.len()),
                });
            }
            Model::Spm(spm::Spm::new(&tokens, scores, unk))
        } else {
            let merges = gguf.get_str_array("tokenizer.ggml.merges")?;
            let spec = bpe_spec.ok_or_else(|| bpe::unknown_pre(pre))?;
            Model::Bpe(Box::new(bpe::build(&tokens, &merges, &spec)?))
        };

        let matched_whole = |t: i64| matches!(t, TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED | TOKEN_TYPE_UNKNOWN);
        let specials = SpecialMatcher::new(
            tokens
                .iter()
                .zip(&types)
                .enumerate()
                .filter(|(_, (_, t))| matched_whole(**t))
                .map(|(i, (s, _))| (i as u32, *s)),
        );
        let special = types
            .iter()
            .map(|t| matches!(*t, TOKEN_TYPE_CONTROL | TOKEN_TYPE_UNKNOWN))
            .collect();
        let token_bytes: Vec<Vec<u8>> = tokens.iter().zip(&types).map(|(s, t)| piece(s, *t, is_spm)).collect();
        let longest_token_bytes = tokens
            .iter()
            .zip(&token_bytes)
            // A byte-fallback or unknown token stands for at most one character.
            .map(|(s, b)| s.len().max(b.len()).max(MAX_CHAR_BYTES))
            .max()
            .unwrap_or(MAX_CHAR_BYTES);
        let chat_template = gguf.get_str("tokenizer.chat_template").ok().map(str::to_string);
        let architecture = gguf.get_str("general.architecture").ok().map(str::to_string);
        tracing::debug!(
            vocab = tokens.len(),
            model = model_name,
            pre,
            "built tokenizer from GGUF"
        );
        Ok(Self {
            model,
            specials,
            tokens: tokens.iter().map(|s| s.to_string()).collect(),
            token_bytes,
            longest_token_bytes,
            special,
            bos,
            eos,
            end_of_generation,
            add_bos,
            add_eos,
            add_space_prefix,
            model_name: model_name.to_string(),
            pre: pre.to_string(),
            architecture,
            chat_template,
            grammar: std::sync::OnceLock::new(),
        })
    }

    pub fn from_gguf_path(path: impl AsRef<std::path::Path>) -> Result<Self> {
        Self::from_gguf(&GgufFile::open(path)?)
    }

    /// Encodes text as llama.cpp's `llama_tokenize(.., add_special = true, parse_special = true)` does: control,
    /// user-defined and unknown tokens written literally (as chat templates do) become their ids, BOS/EOS are added
    /// when the file asks for them (`tokenizer.ggml.add_bos_token` / `add_eos_token`, else the family's default).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match self.encode_bounded(text, usize::MAX, usize::MAX)? {
            Bounded::Tokens(ids) => Ok(ids),
            Bounded::Over { .. } => unreachable!("no text has more than usize::MAX tokens"),
        }
    }

    /// [`Self::encode`] for a text that may be far longer than any context (a request's prompt): more than `limit`
    /// tokens is told without tokenizing all of it, in memory that does not grow with the text. A text longer than
    /// `limit` tokens can cover is refused by its length alone; byte-level BPE text is tokenized in pieces of
    /// [`ENCODE_PIECE_BYTES`] cut where every pre-tokenizer cuts (so the ids are exactly `encode`'s), and stops at
    /// the first piece past `limit`. Tokenizing a whole 1 MB text at once takes ~170 MB of the `tokenizers` crate's
    /// bookkeeping, which the allocator then keeps (issue 15).
    pub fn encode_within(&self, text: &str, limit: usize) -> Result<Bounded> {
        self.encode_bounded(text, limit, ENCODE_PIECE_BYTES)
    }

    /// [`Self::encode_within`] with the piece size chosen (tests cut pieces of a few bytes, to cut everywhere).
    #[doc(hidden)]
    pub fn encode_bounded(&self, text: &str, limit: usize, piece_bytes: usize) -> Result<Bounded> {
        let at_least = text.len().div_ceil(self.longest_token_bytes);
        if at_least > limit {
            return Ok(Bounded::Over { at_least });
        }
        let mut ids = Vec::with_capacity((text.len() / 2 + 2).min(limit.saturating_add(2)));
        if self.add_bos
            && let Some(bos) = self.bos
        {
            ids.push(bos);
        }
        // SentencePiece prefixes a space at the start and after each special token (llama.cpp's is_prev_special).
        let mut prev_special = true;
        for fragment in self.specials.split(text) {
            match fragment {
                Fragment::Token(id) => {
                    ids.push(id);
                    prev_special = true;
                }
                Fragment::Text(raw) => {
                    match &self.model {
                        // Our own SentencePiece merges may cross spaces, so it takes the text whole (bounded above).
                        Model::Spm(spm) => spm.encode(raw, self.add_space_prefix && prev_special, &mut ids),
                        Model::Bpe(inner) => {
                            for piece in bpe::pieces(raw, piece_bytes) {
                                bpe::encode(inner, piece, &mut ids)?;
                                if ids.len() > limit {
                                    return Ok(Bounded::Over { at_least: ids.len() });
                                }
                            }
                        }
                    }
                    prev_special = false;
                }
            }
            if ids.len() > limit {
                return Ok(Bounded::Over { at_least: ids.len() });
            }
        }
        if self.add_eos {
            ids.push(self.eos);
        }
        if ids.len() > limit {
            return Ok(Bounded::Over { at_least: ids.len() });
        }
        Ok(Bounded::Tokens(ids))
    }

    /// Decodes as llama.cpp's `llama_detokenize` (without its optional space clean-up): `skip_special` leaves out
    /// control and unknown tokens (and a leading BOS); with `add_space_prefix` the space the encoder put in front is
    /// dropped again, unless a skipped BOS came first (llama.cpp's rule).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        let mut remove_space = self.add_space_prefix;
        let mut ids = ids;
        if skip_special
            && self.add_bos
            && let Some((&first, rest)) = ids.split_first()
            && Some(first) == self.bos
        {
            remove_space = false;
            ids = rest;
        }
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            if let Some(piece) = self.piece(id, skip_special) {
                let strip = usize::from(remove_space && piece.first() == Some(&b' '));
                bytes.extend_from_slice(&piece[strip..]);
            }
            remove_space = false;
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn piece(&self, id: u32, skip_special: bool) -> Option<&[u8]> {
        if skip_special && self.is_special(id) {
            return None;
        }
        self.token_bytes.get(id as usize).map(Vec::as_slice)
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// Whether [`Tokenizer::encode`] puts BOS in front (`tokenizer.ggml.add_bos_token`, else the family default).
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether [`Tokenizer::encode`] appends EOS (`tokenizer.ggml.add_eos_token`).
    pub fn add_eos(&self) -> bool {
        self.add_eos
    }

    pub fn eos(&self) -> u32 {
        self.eos
    }

    pub fn is_end_of_generation(&self, id: u32) -> bool {
        self.end_of_generation.contains(&id)
    }

    /// Control and unknown tokens (llama.cpp leaves them out of text unless asked to render specials).
    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    /// The literal text of a token as the vocabulary stores it (e.g. `<|im_end|>`, `▁Hello`, `ĠHello`).
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.tokens.get(id as usize).cloned()
    }

    /// Id of a token by its literal text, if the vocabulary has it.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.tokens.iter().position(|t| t == text).map(|i| i as u32)
    }

    /// What the token prints as: its bytes after undoing the vocabulary's encoding (GPT-2 byte alphabet, `▁` for
    /// space, `<0xXX>` byte tokens); may be part of a UTF-8 character.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.token_bytes.get(id as usize).map_or(&[], Vec::as_slice)
    }

    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// `tokenizer.ggml.model`: `gpt2` or `llama`.
    pub fn model_name(&self) -> &str {
        &self.model_name
    }

    /// `tokenizer.ggml.pre` (`default` when absent).
    pub fn pre(&self) -> &str {
        &self.pre
    }

    /// `general.architecture` of the file the tokenizer came from.
    pub fn architecture(&self) -> Option<&str> {
        self.architecture.as_deref()
    }

    /// The constrained-decoding factory of this vocabulary, built once (on first use: a model never asked for a
    /// grammar never pays for the token trie).
    pub fn grammar(&self) -> Result<&crate::grammar::GrammarFactory, crate::grammar::GrammarError> {
        self.grammar
            .get_or_init(|| crate::grammar::GrammarFactory::new(self))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// A streaming decoder for generated tokens. Like llama.cpp's per-token `token_to_piece`, it keeps every
    /// token's leading space (generated text continues a prompt, so no prefix space is dropped).
    pub fn decoder(&self) -> IncrementalDecoder<'_> {
        IncrementalDecoder {
            tok: self,
            pending: Vec::new(),
            skip_special: true,
        }
    }
}

/// llama.cpp's corrections by token text: end-of-generation and FIM texts become control tokens (and the former end
/// generation), with its two exceptions (harmony's `<|end|>` when `<|return|>`/`<|call|>` exist, a plain `</s>`
/// next to Gemma 4's `<|tool_response>`), and harmony's channel tokens become user-defined.
fn retype_by_text(gguf: &GgufFile, tokens: &[&str], types: &mut [i64], end_of_generation: &mut HashSet<u32>) {
    let find = |text: &str| tokens.iter().rposition(|t| *t == text);
    let mut eog_texts: Vec<&str> = Vec::new();
    for (id, t) in tokens.iter().enumerate() {
        if END_OF_GENERATION_TEXTS.contains(t) {
            types[id] = TOKEN_TYPE_CONTROL;
            end_of_generation.insert(id as u32);
            eog_texts.push(t);
        }
    }
    for (key, texts) in FIM_TEXTS {
        if gguf.has_key(key) {
            continue;
        }
        for (id, t) in tokens.iter().enumerate() {
            if texts.contains(t) {
                types[id] = TOKEN_TYPE_CONTROL;
            }
        }
    }
    for text in HARMONY_USER_DEFINED {
        if let Some(id) = find(text) {
            types[id] = TOKEN_TYPE_USER_DEFINED;
        }
    }
    let has = |t: &str| eog_texts.contains(&t);
    let has_call = has("<|call|>") || has("<|calls|>");
    if has_call
        && (has("<|return|>") || has("<|flush|>"))
        && let Some(id) = find("<|end|>")
    {
        types[id] = TOKEN_TYPE_USER_DEFINED;
        end_of_generation.remove(&(id as u32));
    }
    if has("<|tool_response>")
        && let Some(id) = find("</s>")
    {
        types[id] = TOKEN_TYPE_NORMAL;
        end_of_generation.remove(&(id as u32));
    }
}

/// What a token of type `ty` prints as (llama.cpp's token_to_piece): specials and user-defined tokens verbatim,
/// normal tokens decoded from their vocabulary alphabet, byte tokens as their byte, other types as nothing.
fn piece(text: &str, ty: i64, is_spm: bool) -> Vec<u8> {
    match ty {
        TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED | TOKEN_TYPE_UNKNOWN => text.as_bytes().to_vec(),
        TOKEN_TYPE_NORMAL if is_spm => text.replace(spm::SPACE, " ").into_bytes(),
        TOKEN_TYPE_BYTE if is_spm => spm_byte(text).map_or_else(Vec::new, |b| vec![b]),
        TOKEN_TYPE_NORMAL | TOKEN_TYPE_BYTE => bpe::byte_level_bytes(text),
        _ => Vec::new(),
    }
}

/// The byte of a SentencePiece `<0xXX>` token.
fn spm_byte(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    u8::from_str_radix(hex, 16).ok()
}

/// Streams text token by token without ever emitting half a multibyte character: bytes of an incomplete UTF-8
/// sequence are held until the token that completes them arrives. Invalid bytes become U+FFFD exactly as a full
/// decode (`String::from_utf8_lossy`) would render them.
#[derive(Debug)]
pub struct IncrementalDecoder<'a> {
    tok: &'a Tokenizer,
    pending: Vec<u8>,
    skip_special: bool,
}

impl IncrementalDecoder<'_> {
    pub fn with_special(mut self, emit_special: bool) -> Self {
        self.skip_special = !emit_special;
        self
    }

    /// Adds one token and returns the text that became complete (possibly empty).
    pub fn push(&mut self, id: u32) -> String {
        let Some(piece) = self.tok.piece(id, self.skip_special) else {
            return String::new();
        };
        self.pending.extend_from_slice(piece);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // valid_up_to guarantees this prefix is UTF-8.
                    out.push_str(std::str::from_utf8(&self.pending[..valid]).unwrap_or_default());
                    match e.error_len() {
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                    }
                }
            }
        }
    }

    /// Flushes bytes still waiting for a continuation (rendered as U+FFFD).
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}
