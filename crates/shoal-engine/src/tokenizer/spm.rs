//! SentencePiece BPE (`tokenizer.ggml.model = llama`) the way llama.cpp's SPM tokenizer runs it: the text (spaces
//! already escaped to U+2581) starts as one symbol per UTF-8 character; the adjacent pair whose concatenation is the
//! vocabulary token with the highest score merges first (ties: leftmost), until no pair is a token. Symbols that are
//! not tokens fall back to `<0xXX>` byte tokens. No crate reproduces exactly this (scores, not merge ranks, decide),
//! so it is written out here.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

/// SentencePiece's visible space.
pub(super) const SPACE: &str = "\u{2581}";

#[derive(Debug)]
pub(super) struct Spm {
    token_to_id: HashMap<String, u32>,
    scores: Vec<f32>,
    /// `<0xXX>` token of every byte (or the byte as a one-character token), for text no token covers.
    byte_tokens: Box<[Option<u32>; 256]>,
    unk: Option<u32>,
}

#[derive(Debug, Clone, Copy)]
struct Symbol {
    /// Byte range of the symbol in the escaped text; `len == 0` once merged into its left neighbour.
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

#[derive(Debug)]
struct Bigram {
    left: usize,
    right: usize,
    score: f32,
    /// Byte length when queued: a pair whose symbols changed since then no longer adds up to it and is skipped.
    size: usize,
}

// Max-heap order: higher score first, then the leftmost pair (llama.cpp's llm_bigram_spm comparator).
impl Ord for Bigram {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .partial_cmp(&other.score)
            .unwrap_or(Ordering::Equal)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Bigram {}

impl Spm {
    /// `tokens`, `scores` index by id. When two ids share a text the last one wins, as in llama.cpp.
    pub(super) fn new(tokens: &[&str], scores: Vec<f32>, unk: Option<u32>) -> Self {
        let mut token_to_id = HashMap::with_capacity(tokens.len());
        for (id, t) in tokens.iter().enumerate() {
            token_to_id.insert((*t).to_string(), id as u32);
        }
        let mut byte_tokens = Box::new([None; 256]);
        for (b, slot) in byte_tokens.iter_mut().enumerate() {
            let hex = format!("<0x{b:02X}>");
            *slot = token_to_id.get(hex.as_str()).copied().or_else(|| {
                let single = [b as u8];
                std::str::from_utf8(&single)
                    .ok()
                    .and_then(|s| token_to_id.get(s).copied())
            });
        }
        Self {
            token_to_id,
            scores,
            byte_tokens,
            unk,
        }
    }

    fn token(&self, text: &str) -> Option<u32> {
        self.token_to_id.get(text).copied()
    }

    /// Tokenizes one raw fragment (no special tokens in it), appending to `out`. `prefix_space` puts a space in
    /// front first (`tokenizer.ggml.add_space_prefix` at the start of the text and after a special token).
    pub(super) fn encode(&self, raw: &str, prefix_space: bool, out: &mut Vec<u32>) {
        let mut text = String::with_capacity(raw.len() * 3 / 2 + SPACE.len());
        if prefix_space {
            text.push_str(SPACE);
        }
        text.push_str(&raw.replace(' ', SPACE));
        if text.is_empty() {
            return;
        }
        let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
        for (i, (start, c)) in text.char_indices().enumerate() {
            let len = c.len_utf8();
            symbols.push(Symbol {
                start,
                len,
                prev: i.checked_sub(1),
                next: (start + len < text.len()).then_some(i + 1),
            });
        }
        let mut queue = BinaryHeap::with_capacity(symbols.len());
        for right in 1..symbols.len() {
            self.push_bigram(&text, &symbols, right - 1, right, &mut queue);
        }
        while let Some(bigram) = queue.pop() {
            let (l, r) = (symbols[bigram.left], symbols[bigram.right]);
            if l.len == 0 || r.len == 0 || l.len + r.len != bigram.size {
                continue;
            }
            symbols[bigram.left].len += r.len;
            symbols[bigram.right].len = 0;
            symbols[bigram.left].next = r.next;
            if let Some(n) = r.next {
                symbols[n].prev = Some(bigram.left);
            }
            if let Some(p) = l.prev {
                self.push_bigram(&text, &symbols, p, bigram.left, &mut queue);
            }
            if let Some(n) = r.next {
                self.push_bigram(&text, &symbols, bigram.left, n, &mut queue);
            }
        }
        let mut at = Some(0);
        while let Some(i) = at {
            let s = symbols[i];
            let piece = &text[s.start..s.start + s.len];
            match self.token(piece) {
                Some(id) => out.push(id),
                // Only single characters can be missing (every merge makes a token): spell them in bytes.
                None => out.extend(piece.bytes().filter_map(|b| self.byte_tokens[b as usize].or(self.unk))),
            }
            at = s.next;
        }
    }

    fn push_bigram(&self, text: &str, symbols: &[Symbol], left: usize, right: usize, queue: &mut BinaryHeap<Bigram>) {
        let (l, r) = (symbols[left], symbols[right]);
        let size = l.len + r.len;
        // Adjacent symbols are contiguous in the text, so the pair is one slice (no allocation per candidate).
        let Some(id) = text.get(l.start..l.start + size).and_then(|s| self.token(s)) else {
            return;
        };
        let score = self.scores.get(id as usize).copied().unwrap_or(0.0);
        queue.push(Bigram {
            left,
            right,
            score,
            size,
        });
    }
}
