//! Where `tool_choice: auto`'s grammar takes over (a lazy grammar, as llama.cpp's `grammar_triggers`): the output is
//! free text, unmasked, until a call starts in the model's format ([`ToolFormat::grammar_start`], outside
//! reasoning); from there the call grammar ([`super::tool_grammar::auto_call_grammar`]) masks every token. The
//! grammar first catches up with what the output already holds from the call's first byte on: the
//! [`Segment`]s this returns. Pure.

use super::reasoning::ThinkSplitter;
use super::{OutputSpec, ToolFormat};

/// Output from a call's start: text, and control tokens by id (a grammar names those by id, not by text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Text(String),
    Control(u32),
}

/// Watches one sequence's decoded output for the start of a call.
#[derive(Debug, Clone)]
pub struct CallTrigger {
    format: ToolFormat,
    think: Option<ThinkSplitter>,
    /// The answer so far (reasoning left out), control markers spelled out.
    answer: String,
    /// Control tokens in `answer`: where each starts, its length, its id.
    controls: Vec<(usize, usize, u32)>,
    /// How much of `answer` has been searched (a marker may straddle this point).
    searched: usize,
    /// A start was found, or can no longer be: nothing more is watched.
    done: bool,
}

impl CallTrigger {
    /// A watch for the output `spec` describes; `None` when it has no tool format.
    pub fn new(spec: &OutputSpec) -> Option<Self> {
        Some(Self {
            format: spec.tools?,
            think: spec.thinking.map(ThinkSplitter::new),
            answer: String::new(),
            controls: Vec::new(),
            searched: 0,
            done: false,
        })
    }

    /// Newly decoded text; the call's output so far when a call starts with it.
    pub fn push(&mut self, text: &str) -> Option<Vec<Segment>> {
        if self.done {
            return None;
        }
        match &mut self.think {
            Some(think) => {
                for piece in think.push(text).into_iter().filter(|p| !p.thinking) {
                    self.answer.push_str(&piece.text);
                }
            }
            None => self.answer.push_str(text),
        }
        self.search()
    }

    /// A control token the decoder leaves out of the text, spelled `text`; only a format's markers matter.
    pub fn push_control(&mut self, id: u32, text: &str) -> Option<Vec<Segment>> {
        if self.done || !self.format.markers().contains(&text) {
            return None;
        }
        if let Some(think) = &mut self.think {
            // A control token ends any tag being spelled: what the splitter held is text as it stands.
            for piece in think.finish().into_iter().filter(|p| !p.thinking) {
                self.answer.push_str(&piece.text);
            }
            if think.thinking() {
                return None;
            }
        }
        self.controls.push((self.answer.len(), text.len(), id));
        self.answer.push_str(text);
        self.search()
    }

    fn search(&mut self) -> Option<Vec<Segment>> {
        // A marker found before would have fired: look again only where one may end now.
        // (The formats whose calls open the answer look at its start, which stays short until it is decided.)
        let longest = self.format.markers().iter().map(|m| m.len()).max().unwrap_or(1);
        let mut from = match self.format {
            ToolFormat::Hermes | ToolFormat::Mistral => self.searched.saturating_sub(longest),
            ToolFormat::Llama3 | ToolFormat::Generic => 0,
        };
        while !self.answer.is_char_boundary(from) {
            from -= 1;
        }
        self.searched = self.answer.len();
        let Some(at) = self.format.grammar_start(&self.answer[from..]).map(|at| at + from) else {
            self.done = !self.format.grammar_may_start(&self.answer);
            return None;
        };
        self.done = true;
        Some(self.segments(at))
    }

    /// `answer[at..]` split at its control tokens.
    fn segments(&self, at: usize) -> Vec<Segment> {
        let mut out = Vec::new();
        let mut pos = at;
        for &(start, len, id) in self.controls.iter().filter(|c| c.0 >= at) {
            if start > pos {
                out.push(Segment::Text(self.answer[pos..start].to_string()));
            }
            out.push(Segment::Control(id));
            pos = start + len;
        }
        if pos < self.answer.len() {
            out.push(Segment::Text(self.answer[pos..].to_string()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(format: ToolFormat, thinking: Option<bool>) -> OutputSpec {
        OutputSpec {
            tools: Some(format),
            thinking,
            call_grammar: None,
        }
    }

    /// Pushes pieces until the trigger fires: the index of the piece that fired it and the segments.
    fn fire(t: &mut CallTrigger, pieces: &[&str]) -> Option<(usize, Vec<Segment>)> {
        pieces.iter().enumerate().find_map(|(i, p)| t.push(p).map(|s| (i, s)))
    }

    #[test]
    fn hermes_fires_at_the_marker_even_split_across_tokens() {
        let mut t = CallTrigger::new(&spec(ToolFormat::Hermes, None)).expect("tools");
        let got = fire(&mut t, &["Let me check. <", "tool", "_call", ">\n{\"na"]);
        assert_eq!(got, Some((3, vec![Segment::Text("<tool_call>\n{\"na".into())])));
        assert_eq!(t.push("<tool_call>"), None, "fires once");
    }

    #[test]
    fn mentions_inside_other_words_do_not_fire() {
        let mut t = CallTrigger::new(&spec(ToolFormat::Hermes, None)).expect("tools");
        assert_eq!(
            fire(&mut t, &["use <tool_calls> or <tool_call_id>", " and my_tool_call"]),
            None
        );
        let mut g = CallTrigger::new(&spec(ToolFormat::Generic, None)).expect("tools");
        assert_eq!(fire(&mut g, &["Hello", " {name} and {\"name\": 1}"]), None);
        assert!(g.done, "a generic answer that opens with text is decided");
        let mut fence = CallTrigger::new(&spec(ToolFormat::Generic, None)).expect("tools");
        assert_eq!(fire(&mut fence, &["```", "python\nprint({1})\n```"]), None);
    }

    #[test]
    fn generic_and_llama3_fire_on_an_opening_brace() {
        let mut g = CallTrigger::new(&spec(ToolFormat::Generic, None)).expect("tools");
        assert_eq!(
            fire(&mut g, &["\n", " {\""]),
            Some((1, vec![Segment::Text("{\"".into())]))
        );
        let mut l = CallTrigger::new(&spec(ToolFormat::Llama3, None)).expect("tools");
        assert_eq!(l.push_control(7, "<|python_tag|>"), Some(vec![Segment::Control(7)]));
    }

    #[test]
    fn reasoning_is_not_watched() {
        let mut t = CallTrigger::new(&spec(ToolFormat::Hermes, Some(false))).expect("tools");
        let got = fire(
            &mut t,
            &["<think>", "maybe <tool_call> here", "</think>", "\n\nok <tool_call>"],
        );
        assert_eq!(got, Some((3, vec![Segment::Text("<tool_call>".into())])));
    }

    #[test]
    fn mistral_control_markers_come_by_id() {
        let mut t = CallTrigger::new(&spec(ToolFormat::Mistral, None)).expect("tools");
        assert_eq!(t.push("Sure."), None);
        assert_eq!(t.push_control(3, "[INST]"), None, "not a marker of the format");
        assert_eq!(t.push_control(9, "[TOOL_CALLS]"), Some(vec![Segment::Control(9)]));
        let mut text = CallTrigger::new(&spec(ToolFormat::Mistral, None)).expect("tools");
        assert_eq!(
            fire(&mut text, &["[TOOL_", "CALLS][{"]),
            Some((1, vec![Segment::Text("[TOOL_CALLS][{".into())]))
        );
    }

    #[test]
    fn no_tools_no_watch() {
        assert!(CallTrigger::new(&OutputSpec::default()).is_none());
    }
}
