//! Splits text on control, user-defined and unknown tokens written literally, with llama.cpp's precedence: tokens are
//! taken longest first (ties by id), each one cutting every occurrence out of the text that is still raw, left to
//! right and without overlapping itself. A leftmost-longest scan would disagree where a long token overlaps an
//! earlier short one, so this finds every occurrence once (byte trie) and then replays that order.

use std::collections::BTreeMap;

/// A piece of the input: raw text for the model's tokenizer, or a token matched as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fragment<'a> {
    Text(&'a str),
    Token(u32),
}

#[derive(Debug, Default)]
struct Node {
    /// Sorted by byte.
    children: Vec<(u8, u32)>,
    token: Option<u32>,
}

#[derive(Debug)]
pub(super) struct SpecialMatcher {
    nodes: Vec<Node>,
    /// Root children by first byte (most positions of a text start no special token; this keeps them cheap).
    root: Box<[u32; 256]>,
}

/// Marks "no child" in the root table (node 0 is the root itself, never a child).
const NO_NODE: u32 = 0;

/// Kept small (u32s): a run of spaces yields one occurrence per position and per space-run token length.
#[derive(Debug, Clone, Copy)]
struct Occurrence {
    pos: u32,
    len: u32,
    id: u32,
}

impl SpecialMatcher {
    /// `tokens` are (id, text) of every token to match whole. Empty texts are ignored. When two ids share a text
    /// the last one wins, as in llama.cpp's text→id map.
    pub(super) fn new<'a>(tokens: impl IntoIterator<Item = (u32, &'a str)>) -> Self {
        let mut nodes = vec![Node::default()];
        for (id, text) in tokens {
            if text.is_empty() {
                continue;
            }
            let mut at = 0usize;
            for &b in text.as_bytes() {
                let next = match nodes[at].children.binary_search_by_key(&b, |c| c.0) {
                    Ok(i) => nodes[at].children[i].1 as usize,
                    Err(i) => {
                        let new = nodes.len();
                        nodes[at].children.insert(i, (b, new as u32));
                        nodes.push(Node::default());
                        new
                    }
                };
                at = next;
            }
            nodes[at].token = Some(id);
        }
        let mut root = Box::new([NO_NODE; 256]);
        for &(b, child) in &nodes[0].children {
            root[b as usize] = child;
        }
        Self { nodes, root }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.nodes[0].children.is_empty()
    }

    /// Every (position, token) match. `text` is shorter than 4 GiB (checked by the caller).
    fn occurrences(&self, text: &[u8]) -> Vec<Occurrence> {
        let mut found = Vec::new();
        for pos in 0..text.len() {
            let mut at = self.root[text[pos] as usize] as usize;
            let mut len = 1;
            while at != NO_NODE as usize {
                let node = &self.nodes[at];
                if let Some(id) = node.token {
                    found.push(Occurrence {
                        pos: pos as u32,
                        len: len as u32,
                        id,
                    });
                }
                let Some(&b) = text.get(pos + len) else { break };
                at = match node.children.binary_search_by_key(&b, |c| c.0) {
                    Ok(i) => node.children[i].1 as usize,
                    Err(_) => NO_NODE as usize,
                };
                len += 1;
            }
        }
        found
    }

    pub(super) fn split<'a>(&self, text: &'a str) -> Vec<Fragment<'a>> {
        if text.is_empty() {
            return Vec::new();
        }
        if self.is_empty() || u32::try_from(text.len()).is_err() {
            // No special tokens to find (or a text beyond 4 GiB, far past any context: left whole).
            return vec![Fragment::Text(text)];
        }
        let mut occ = self.occurrences(text.as_bytes());
        occ.sort_unstable_by(|a, b| b.len.cmp(&a.len).then(a.id.cmp(&b.id)).then(a.pos.cmp(&b.pos)));
        // Accepted matches by start: (end, id). They never overlap, so the only one that can overlap a candidate is
        // the last one starting before the candidate's end.
        let mut taken: BTreeMap<usize, (usize, u32)> = BTreeMap::new();
        let mut current: Option<u32> = None;
        let mut last_end = 0usize;
        for o in occ {
            let (pos, end) = (o.pos as usize, (o.pos + o.len) as usize);
            if current != Some(o.id) {
                current = Some(o.id);
                last_end = 0;
            }
            if pos < last_end {
                continue;
            }
            let overlaps = taken
                .range(..end)
                .next_back()
                .is_some_and(|(_, &(prev_end, _))| prev_end > pos);
            if overlaps {
                continue;
            }
            taken.insert(pos, (end, o.id));
            last_end = end;
        }
        let mut out = Vec::with_capacity(taken.len() * 2 + 1);
        let mut at = 0usize;
        for (start, (end, id)) in taken {
            if start > at
                && let Some(raw) = text.get(at..start)
            {
                out.push(Fragment::Text(raw));
            }
            out.push(Fragment::Token(id));
            at = end;
        }
        if at < text.len()
            && let Some(raw) = text.get(at..)
        {
            out.push(Fragment::Text(raw));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longer_tokens_win_even_when_a_shorter_one_starts_first() {
        let m = SpecialMatcher::new([(7, "ab"), (9, "b c")]);
        assert_eq!(
            m.split("ab c"),
            [Fragment::Text("a"), Fragment::Token(9)],
            "llama.cpp cuts the longest token first"
        );
        assert_eq!(
            m.split("xabyab"),
            [
                Fragment::Text("x"),
                Fragment::Token(7),
                Fragment::Text("y"),
                Fragment::Token(7)
            ]
        );
    }

    #[test]
    fn runs_do_not_overlap_themselves() {
        let m = SpecialMatcher::new([(1, "\n"), (2, "\n\n")]);
        assert_eq!(
            m.split("a\n\n\nb"),
            [
                Fragment::Text("a"),
                Fragment::Token(2),
                Fragment::Token(1),
                Fragment::Text("b")
            ]
        );
        assert_eq!(m.split(""), []);
        assert_eq!(m.split("plain"), [Fragment::Text("plain")]);
    }
}
