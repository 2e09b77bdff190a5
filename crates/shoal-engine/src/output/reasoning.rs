//! Reasoning split from the answer for models that think in `<think>…</think>` (Qwen3, DeepSeek-R1 distills).
//! Incremental and pure: text goes in as it is decoded, pieces marked thinking or not come out, with a tag that is
//! split across tokens held back until it is whole.

use super::Piece;

pub const THINK_OPEN: &str = "<think>";
pub const THINK_CLOSE: &str = "</think>";

/// Whether a model thinks in `<think>` tags: its template or its vocabulary has both.
pub fn thinks(template: Option<&str>, has_token: impl Fn(&str) -> bool) -> bool {
    let in_template = template.is_some_and(|t| t.contains(THINK_OPEN) && t.contains(THINK_CLOSE));
    in_template || (has_token(THINK_OPEN) && has_token(THINK_CLOSE))
}

/// Whether a rendered prompt leaves the model inside its thinking: its last `<think>` is not closed (DeepSeek-R1's
/// templates open it in the generation prompt; Qwen3's with `enable_thinking=false` open and close an empty one).
pub fn prompt_opens_thinking(prompt: &str) -> bool {
    match (prompt.rfind(THINK_OPEN), prompt.rfind(THINK_CLOSE)) {
        (Some(open), Some(close)) => open > close,
        (Some(_), None) => true,
        _ => false,
    }
}

#[derive(Debug, Clone)]
pub struct ThinkSplitter {
    thinking: bool,
    /// Text not yet given out: it may be the start of a tag.
    held: String,
    /// Blank text right after a tag is layout (`<think>\n`, `</think>\n\n`), not content: dropped.
    trim: bool,
}

impl ThinkSplitter {
    /// `inside`: the prompt already opened `<think>`, so the output starts as reasoning.
    pub fn new(inside: bool) -> Self {
        Self {
            thinking: inside,
            held: String::new(),
            trim: inside,
        }
    }

    /// Whether the output is inside reasoning now.
    pub fn thinking(&self) -> bool {
        self.thinking
    }

    /// The pieces `text` completes.
    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        self.held.push_str(text);
        let mut out = Vec::new();
        loop {
            if self.trim {
                let blank = self.held.len() - self.held.trim_start().len();
                self.held.drain(..blank);
                if self.held.is_empty() {
                    break;
                }
                self.trim = false;
            }
            let tag = if self.thinking { THINK_CLOSE } else { THINK_OPEN };
            if let Some(at) = self.held.find(tag) {
                let before: String = self.held.drain(..at).collect();
                self.held.drain(..tag.len());
                emit(&mut out, before, self.thinking);
                self.thinking = !self.thinking;
                self.trim = true;
                continue;
            }
            let keep = partial_tag(&self.held, tag);
            let ready: String = self.held.drain(..self.held.len() - keep).collect();
            emit(&mut out, ready, self.thinking);
            break;
        }
        out
    }

    /// The end of the output: what was held back (a tag never completed is text).
    pub fn finish(&mut self) -> Vec<Piece> {
        let mut out = Vec::new();
        emit(&mut out, std::mem::take(&mut self.held), self.thinking);
        out
    }
}

fn emit(out: &mut Vec<Piece>, text: String, thinking: bool) {
    if !text.is_empty() {
        out.push(Piece { text, thinking });
    }
}

/// The longest end of `text` that starts `tag` (the next token may complete it).
fn partial_tag(text: &str, tag: &str) -> usize {
    (1..tag.len())
        .rev()
        .find(|&n| text.len() >= n && text.is_char_boundary(text.len() - n) && tag.starts_with(&text[text.len() - n..]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `tokens` one by one and joins consecutive pieces of the same kind.
    fn split(inside: bool, tokens: &[&str]) -> Vec<(bool, String)> {
        let mut s = ThinkSplitter::new(inside);
        let mut pieces: Vec<Piece> = tokens.iter().flat_map(|t| s.push(t)).collect();
        pieces.extend(s.finish());
        let mut out: Vec<(bool, String)> = Vec::new();
        for p in pieces {
            match out.last_mut() {
                Some((k, text)) if *k == p.thinking => text.push_str(&p.text),
                _ => out.push((p.thinking, p.text)),
            }
        }
        out
    }

    #[test]
    fn qwen3_thinking_then_answer() {
        // Recorded from Qwen3-0.6B (tokens as the decoder gave them).
        let tokens = [
            "<think>", "\n", "Okay", ",", " the", " user", " says", " hi", ".", "\n", "</think>", "\n\n", "Hello", "!",
            " How", " can", " I", " help", "?",
        ];
        assert_eq!(
            split(false, &tokens),
            [
                (true, "Okay, the user says hi.\n".to_string()),
                (false, "Hello! How can I help?".to_string())
            ]
        );
    }

    #[test]
    fn a_prompt_that_opened_think_starts_inside() {
        // DeepSeek-R1-Distill: the generation prompt ends in `<think>\n`.
        let tokens = ["Let", " me", " add", ": 4", ".\n", "</", "think", ">\n\n", "4"];
        assert_eq!(
            split(true, &tokens),
            [(true, "Let me add: 4.\n".to_string()), (false, "4".to_string())]
        );
        assert!(prompt_opens_thinking("<|Assistant|><think>\n"));
        assert!(!prompt_opens_thinking("<|im_start|>assistant\n<think>\n\n</think>\n\n"));
        assert!(!prompt_opens_thinking("<|im_start|>assistant\n"));
    }

    #[test]
    fn empty_thinking_and_plain_answers() {
        // Qwen3 with enable_thinking=false: the template closed an empty block, the answer is plain.
        assert_eq!(split(false, &["Hi", " there"]), [(false, "Hi there".to_string())]);
        assert_eq!(
            split(false, &["<think>\n\n</think>\n\n", "Hi"]),
            [(false, "Hi".to_string())]
        );
        // A tag split at every character.
        let chars: Vec<String> = "<think>a</think>b".chars().map(String::from).collect();
        let refs: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(split(false, &refs), [(true, "a".to_string()), (false, "b".to_string())]);
    }

    #[test]
    fn an_unclosed_tag_end_is_text() {
        // The output ended inside thinking (max_tokens): all of it is reasoning; a half tag at the end is kept.
        assert_eq!(
            split(true, &["still", " thinking </thi"]),
            [(true, "still thinking </thi".to_string())]
        );
        assert_eq!(split(false, &["a <thi"]), [(false, "a <thi".to_string())]);
    }

    #[test]
    fn detection() {
        assert!(thinks(Some("{% if x %}<think>\n{% endif %}</think>"), |_| false));
        assert!(thinks(None, |t| t == "<think>" || t == "</think>"));
        assert!(!thinks(Some("<|im_start|>"), |_| false));
    }
}
