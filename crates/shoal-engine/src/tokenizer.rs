//! Tokenizer rebuilt from GGUF metadata (`tokenizer.ggml.*`), plus an incremental, UTF-8-safe detokenizer.
//!
//! candle's own GGUF tokenizer adds a prefix space and so disagrees with llama.cpp on this model family; this
//! builds the BPE the way the original HF tokenizer.json does: Digits(individual) then ByteLevel(no prefix space,
//! regex on), ByteLevel decoder, control tokens registered as special.

use std::collections::HashSet;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, DecoderWrapper};

use crate::error::{EngineError, Result};
use crate::gguf::GgufFile;

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp's llama_token_type).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Raw bytes of every token, so streaming output can be cut on UTF-8 boundaries without re-decoding.
    token_bytes: Vec<Vec<u8>>,
    special: Vec<bool>,
    bos: Option<u32>,
    eos: u32,
    /// Ids that end generation: eos plus eot/eom when the file names them.
    end_of_generation: HashSet<u32>,
    add_bos: bool,
    chat_template: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab", &self.token_bytes.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish()
    }
}

impl Tokenizer {
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let model = gguf.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(EngineError::Tokenizer(format!(
                "tokenizer model `{model}` is not supported yet (only byte-level BPE `gpt2`)"
            )));
        }
        // The pre-tokenizer regex differs per family; guessing wrong silently changes token ids, so refuse instead.
        let pre = if gguf.has_key("tokenizer.ggml.pre") {
            gguf.get_str("tokenizer.ggml.pre")?
        } else {
            "default"
        };
        let digits_first = match pre {
            "smollm" => true,
            "gpt-2" | "gpt2" | "default" => false,
            other => {
                return Err(EngineError::Tokenizer(format!(
                    "pre-tokenizer `{other}` is not supported yet"
                )));
            }
        };
        let tokens = gguf.get_str_array("tokenizer.ggml.tokens")?;
        let merges_raw = gguf.get_str_array("tokenizer.ggml.merges")?;
        let types = if gguf.has_key("tokenizer.ggml.token_type") {
            gguf.get_i64_array("tokenizer.ggml.token_type")?
        } else {
            vec![1; tokens.len()]
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
        let bos = token_id("tokenizer.ggml.bos_token_id")?;
        let eos = token_id("tokenizer.ggml.eos_token_id")?
            .ok_or_else(|| EngineError::MissingMetadata("tokenizer.ggml.eos_token_id".into()))?;
        let mut end_of_generation = HashSet::from([eos]);
        for key in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
            if let Some(id) = token_id(key)? {
                end_of_generation.insert(id);
            }
        }
        let add_bos = gguf.has_key("tokenizer.ggml.add_bos_token") && gguf.get_bool("tokenizer.ggml.add_bos_token")?;
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i as u32))
            .collect();
        let merges = merges_raw
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| EngineError::Tokenizer(format!("malformed merge `{m}`")))
            })
            .collect::<Result<Vec<_>>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| EngineError::Tokenizer(format!("cannot build BPE: {e}")))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        let byte_level = PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true));
        let pre_tok = if digits_first {
            PreTokenizerWrapper::Sequence(Sequence::new(vec![
                PreTokenizerWrapper::Digits(Digits::new(true)),
                byte_level,
            ]))
        } else {
            byte_level
        };
        inner.with_pre_tokenizer(Some(pre_tok));
        inner.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevelDecoder::default())));

        let specials: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, t)| **t == TOKEN_TYPE_CONTROL)
            .map(|(s, _)| AddedToken::from(s.to_string(), true))
            .collect();
        let user_defined: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, t)| **t == TOKEN_TYPE_USER_DEFINED)
            .map(|(s, _)| AddedToken::from(s.to_string(), false))
            .collect();
        inner
            .add_special_tokens(specials)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        inner
            .add_tokens(user_defined)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;

        let special = types.iter().map(|t| *t == TOKEN_TYPE_CONTROL).collect();
        let token_bytes = tokens
            .iter()
            .zip(&types)
            .map(|(s, t)| {
                if *t == TOKEN_TYPE_CONTROL || *t == TOKEN_TYPE_USER_DEFINED {
                    s.as_bytes().to_vec()
                } else {
                    byte_level_bytes(s)
                }
            })
            .collect();
        let chat_template = gguf.get_str("tokenizer.chat_template").ok().map(str::to_string);
        tracing::debug!(
            vocab = tokens.len(),
            merges = merges_raw.len(),
            pre,
            "built tokenizer from GGUF"
        );
        Ok(Self {
            inner,
            token_bytes,
            special,
            bos,
            eos,
            end_of_generation,
            add_bos,
            chat_template,
        })
    }

    pub fn from_gguf_path(path: impl AsRef<std::path::Path>) -> Result<Self> {
        Self::from_gguf(&GgufFile::open(path)?)
    }

    /// Encodes text, recognising control tokens written literally (as chat templates do). Adds BOS only when the
    /// file asks for it (`tokenizer.ggml.add_bos_token`).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        let mut ids = Vec::with_capacity(enc.get_ids().len() + 1);
        if self.add_bos
            && let Some(bos) = self.bos
        {
            ids.push(bos);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))
    }

    pub fn vocab_size(&self) -> usize {
        self.token_bytes.len()
    }

    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos(&self) -> u32 {
        self.eos
    }

    pub fn is_end_of_generation(&self, id: u32) -> bool {
        self.end_of_generation.contains(&id)
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    /// The literal text of a token as the chat template writes it (e.g. `<|im_end|>`).
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.token_bytes.get(id as usize).map_or(&[], Vec::as_slice)
    }

    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    pub fn decoder(&self) -> IncrementalDecoder<'_> {
        IncrementalDecoder {
            tok: self,
            pending: Vec::new(),
            skip_special: true,
        }
    }
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
        if self.skip_special && self.tok.is_special(id) {
            return String::new();
        }
        self.pending.extend_from_slice(self.tok.token_bytes(id));
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

/// Inverse of GPT-2's byte→unicode table: printable bytes map to themselves, the others to U+0100 onwards.
fn byte_level_bytes(token: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(token.len());
    for c in token.chars() {
        match unicode_to_byte(c) {
            Some(b) => out.push(b),
            // Not produced by a byte-level vocabulary; keep the character rather than lose it.
            None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    out
}

fn unicode_to_byte(c: char) -> Option<u8> {
    let printable = |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
    let cp = c as u32;
    if printable(cp) {
        return u8::try_from(cp).ok();
    }
    if !(0x100..0x100 + 68).contains(&cp) {
        return None;
    }
    // The n-th non-printable byte (in increasing order) maps to U+0100 + n.
    let n = cp - 0x100;
    (0u32..256)
        .filter(|b| !printable(*b))
        .nth(n as usize)
        .and_then(|b| u8::try_from(b).ok())
}
