//! Byte-level BPE (`tokenizer.ggml.model = gpt2`): the `tokenizers` crate's BPE behind the regex splits that
//! llama.cpp applies for the file's `tokenizer.ggml.pre`. Each regex of a family splits every piece the previous one
//! left (matches and the text between them both kept), then bytes map to GPT-2's printable alphabet.

use tokenizers::SplitDelimiterBehavior;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::Split;

use crate::error::{EngineError, Result};

// llama.cpp's regexes (src/llama-vocab.cpp, llm_tokenizer_bpe), as facts: case-insensitive contractions spelled out.
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
// Mistral's tekken. llama.cpp's std::regex has no \p{Lu}/\p{Ll}, so it spells "upper" as a letter that is not a-z and
// "lower" as a letter that is not A-Z: every non-ASCII letter counts as both. The same spelling here keeps that.
const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const DEFAULT_PUNCT: &str = r"[\p{P}\$\+<=>\^~\|]+";
const DIGIT_RUNS: &str = r"\p{N}+";
const DIGIT_TRIPLES: &str = r"[0-9][0-9][0-9]";
const DIGIT: &str = r"\p{N}";

/// The `tokenizer.ggml.pre` values this build knows; anything else is refused (a wrong split silently changes ids).
pub const SUPPORTED_PRE: &[&str] = &[
    "default",
    "gpt-2",
    "smollm",
    "llama-bpe",
    "llama3",
    "llama-v3",
    "qwen2",
    "deepseek-r1-qwen",
    "tekken",
];

/// How one `tokenizer.ggml.pre` family tokenizes (llama.cpp's llama_vocab::impl::load).
#[derive(Debug, Clone, Copy)]
pub(super) struct PreTokenizerSpec {
    regexes: &'static [&'static str],
    /// Whole pre-tokenized words found in the vocabulary are taken as they are, before any merge.
    ignore_merges: bool,
    /// BOS when the file does not say (`tokenizer.ggml.add_bos_token` overrides).
    pub(super) add_bos: bool,
}

pub(super) fn spec(pre: &str) -> Option<PreTokenizerSpec> {
    let (regexes, ignore_merges, add_bos): (&'static [&'static str], bool, bool) = match pre {
        "default" => (&[DEFAULT_PUNCT, GPT2, DIGIT_RUNS, DIGIT_TRIPLES], false, false),
        "gpt-2" => (&[GPT2], false, false),
        "smollm" => (&[DIGIT, GPT2], false, false),
        "llama-bpe" | "llama3" | "llama-v3" => (&[LLAMA3], true, true),
        "qwen2" | "deepseek-r1-qwen" => (&[QWEN2], false, false),
        "tekken" => (&[TEKKEN], true, true),
        _ => return None,
    };
    Some(PreTokenizerSpec {
        regexes,
        ignore_merges,
        add_bos,
    })
}

fn pre_tokenizer(spec: &PreTokenizerSpec) -> Result<PreTokenizerWrapper> {
    let mut steps = spec
        .regexes
        .iter()
        .map(|re| {
            Split::new(
                tokenizers::pre_tokenizers::split::SplitPattern::Regex((*re).to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map(PreTokenizerWrapper::Split)
            .map_err(|e| EngineError::Tokenizer(format!("bad pre-tokenizer regex `{re}`: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    steps.push(PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, false)));
    Ok(PreTokenizerWrapper::Sequence(Sequence::new(steps)))
}

pub(super) fn unknown_pre(pre: &str) -> EngineError {
    EngineError::Tokenizer(format!(
        "pre-tokenizer `{pre}` is not supported (supported: {})",
        SUPPORTED_PRE.join(", ")
    ))
}

pub(super) fn build(tokens: &[&str], merges: &[&str], spec: &PreTokenizerSpec) -> Result<tokenizers::Tokenizer> {
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), i as u32))
        .collect();
    let merges = merges
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| EngineError::Tokenizer(format!("malformed merge `{m}`")))
        })
        .collect::<Result<Vec<_>>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(spec.ignore_merges)
        .build()
        .map_err(|e| EngineError::Tokenizer(format!("cannot build BPE: {e}")))?;
    let mut inner = tokenizers::Tokenizer::new(bpe);
    inner.with_pre_tokenizer(Some(pre_tokenizer(spec)?));
    Ok(inner)
}

/// `raw` cut into pieces of about `piece_bytes` (more where no cut is found), each cut just before a space that
/// follows an ASCII letter. Every supported pre-tokenizer cuts there: no regex of theirs matches a letter followed
/// by a space, every letter is matched (so no unmatched stretch spans the cut), none looks behind, and a lookahead
/// at the end of the letter run sees a space or the end alike. So the pieces' ids, joined, are the whole text's.
pub(super) fn pieces(raw: &str, piece_bytes: usize) -> impl Iterator<Item = &str> {
    let mut rest = raw;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let bytes = rest.as_bytes();
        let cut = (piece_bytes.max(1)..bytes.len())
            .find(|&i| bytes[i] == b' ' && bytes[i - 1].is_ascii_alphabetic())
            .unwrap_or(bytes.len());
        // A space is one byte, so the cut is a character boundary.
        let (piece, after) = rest.split_at(cut);
        rest = after;
        Some(piece)
    })
}

pub(super) fn encode(inner: &tokenizers::Tokenizer, raw: &str, out: &mut Vec<u32>) -> Result<()> {
    let enc = inner
        .encode_fast(raw, false)
        .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
    out.extend_from_slice(enc.get_ids());
    Ok(())
}

/// Inverse of GPT-2's byte→unicode table: printable bytes map to themselves, the others to U+0100 onwards.
pub(super) fn byte_level_bytes(token: &str) -> Vec<u8> {
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
