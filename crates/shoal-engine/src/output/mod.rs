//! What the last rank makes of decoded text before it becomes chunks (SYSTEM.md §10.4): reasoning split from the
//! answer ([`reasoning`]) and tool calls parsed out of it ([`tool_calls`]), both pure and incremental so text
//! streams as soon as it cannot be part of a tag or a call. [`tool_grammar`] builds the grammars of calls (forced, or
//! `tool_choice: auto`'s, which [`trigger`] and [`lazy`] apply from where a call starts).
//!
//! Here rather than in shoal-models because the last rank (shoal-runner) depends on the engine only, and the formats
//! are detected from the chat template, which the engine owns.

pub mod lazy;
pub mod reasoning;
pub mod tool_calls;
pub mod tool_grammar;
pub mod trigger;

use serde::{Deserialize, Serialize};

pub use reasoning::ThinkSplitter;
pub use tool_calls::{ParsedCall, ToolFormat};
pub use trigger::{CallTrigger, Segment};

/// How a sequence's output is to be read, decided with its prompt (rank 0) and carried to the last rank.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputSpec {
    /// Parse tool calls in this format (the request has tools and did not say `tool_choice: none`).
    pub tools: Option<ToolFormat>,
    /// Split `<think>` reasoning; `Some(true)` when the prompt already opened it.
    pub thinking: Option<bool>,
    /// `tool_choice: auto`: the grammar (llguidance Lark) a call must match from where it starts
    /// ([`tool_grammar::auto_call_grammar`], [`trigger`]); the text before it is free.
    pub call_grammar: Option<String>,
}

/// A run of output text, reasoning or answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub text: String,
    pub thinking: bool,
}

/// Turns a sequence's decoded text into pieces to show and, at the end, its tool calls.
#[derive(Debug, Clone)]
pub struct OutputParser {
    think: Option<ThinkSplitter>,
    tools: Option<CallWatch>,
}

/// The answer seen so far and how much of it has been shown, for one tool format.
#[derive(Debug, Clone)]
struct CallWatch {
    format: ToolFormat,
    answer: String,
    shown: usize,
    /// Where a call began: everything after it is held until the end.
    start: Option<usize>,
    /// Control tokens in `answer` (where each starts, its length): the parser reads them, nobody sees them.
    controls: Vec<(usize, usize)>,
}

impl CallWatch {
    /// `answer[from..to]` without its control tokens.
    fn visible(&self, from: usize, to: usize) -> String {
        let mut out = String::new();
        let mut pos = from;
        for &(start, len) in &self.controls {
            let end = start + len;
            if end <= pos || start >= to {
                continue;
            }
            if start > pos {
                out.push_str(&self.answer[pos..start]);
            }
            pos = end.min(to);
        }
        if pos < to {
            out.push_str(&self.answer[pos..to]);
        }
        out
    }

    /// Takes answer text (or a control token's spelling), and gives what is now safe to show.
    fn append(&mut self, text: &str, control: bool) -> Option<Piece> {
        if control {
            self.controls.push((self.answer.len(), text.len()));
        }
        self.answer.push_str(text);
        if self.start.is_some() {
            return None;
        }
        self.start = self.format.call_start(&self.answer);
        let upto = self
            .start
            .unwrap_or_else(|| self.format.safe_len(&self.answer))
            .max(self.shown);
        if upto <= self.shown {
            return None;
        }
        let text = self.visible(self.shown, upto);
        self.shown = upto;
        (!text.is_empty()).then_some(Piece { text, thinking: false })
    }
}

impl OutputParser {
    pub fn new(spec: &OutputSpec) -> Self {
        Self {
            think: spec.thinking.map(ThinkSplitter::new),
            tools: spec.tools.map(|format| CallWatch {
                format,
                answer: String::new(),
                shown: 0,
                start: None,
                controls: Vec::new(),
            }),
        }
    }

    /// Whether the parser changes anything (otherwise text passes through as one answer piece).
    pub fn is_active(&self) -> bool {
        self.think.is_some() || self.tools.is_some()
    }

    /// The pieces that newly decoded `text` makes safe to show.
    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        let pieces = match &mut self.think {
            Some(think) => think.push(text),
            None if text.is_empty() => Vec::new(),
            None => vec![Piece {
                text: text.to_string(),
                thinking: false,
            }],
        };
        self.watch(pieces)
    }

    /// The end of the output: the rest of the text to show and the calls made (none when no well-formed call was
    /// found: held text is then shown).
    pub fn finish(&mut self) -> (Vec<Piece>, Vec<ParsedCall>) {
        let rest = self.think.as_mut().map(ThinkSplitter::finish).unwrap_or_default();
        let mut pieces = self.watch(rest);
        let Some(w) = &mut self.tools else {
            return (pieces, Vec::new());
        };
        if let Some(start) = w.start
            && let Some(calls) = w.format.parse(&w.answer[start..])
        {
            return (pieces, calls);
        }
        if w.shown < w.answer.len() {
            let text = w.visible(w.shown, w.answer.len());
            if !text.is_empty() {
                pieces.push(Piece { text, thinking: false });
            }
            w.shown = w.answer.len();
        }
        (pieces, Vec::new())
    }

    /// A control token the decoder leaves out of the text, spelled `text`: the format's markers
    /// ([`ToolFormat::markers`], e.g. Mistral's `[TOOL_CALLS]`, `[ARGS]`) reach the call parser, never the text
    /// shown; any other is dropped. The pieces it makes safe to show.
    pub fn push_control(&mut self, text: &str) -> Vec<Piece> {
        let Some(format) = self.tools.as_ref().map(|w| w.format) else {
            return Vec::new();
        };
        if !format.markers().contains(&text) {
            return Vec::new();
        }
        // A control token ends any tag being spelled: what the splitter held is text as it stands.
        let held = self.think.as_mut().map(ThinkSplitter::finish).unwrap_or_default();
        let mut pieces = self.watch(held);
        if self.think.as_ref().is_some_and(ThinkSplitter::thinking) {
            return pieces;
        }
        if let Some(w) = &mut self.tools {
            pieces.extend(w.append(text, true));
        }
        pieces
    }

    fn watch(&mut self, pieces: Vec<Piece>) -> Vec<Piece> {
        let Some(w) = &mut self.tools else {
            return pieces;
        };
        let mut out = Vec::new();
        for p in pieces {
            if p.thinking {
                out.push(p);
                continue;
            }
            out.extend(w.append(&p.text, false));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(spec: &OutputSpec, tokens: &[&str]) -> (String, String, Vec<ParsedCall>) {
        let mut p = OutputParser::new(spec);
        let mut pieces: Vec<Piece> = tokens.iter().flat_map(|t| p.push(t)).collect();
        let (rest, calls) = p.finish();
        pieces.extend(rest);
        let text = |thinking: bool| {
            pieces
                .iter()
                .filter(|p| p.thinking == thinking)
                .map(|p| p.text.as_str())
                .collect::<String>()
        };
        (text(true), text(false), calls)
    }

    #[test]
    fn text_before_a_call_streams_and_the_call_is_held() {
        let spec = OutputSpec {
            tools: Some(ToolFormat::Hermes),
            thinking: None,
            call_grammar: None,
        };
        let mut p = OutputParser::new(&spec);
        assert_eq!(p.push("Checking. ").len(), 1);
        assert!(p.push("<tool").is_empty(), "a marker may be starting");
        assert!(p.push("_call>\n{\"name\": \"f\", ").is_empty());
        assert!(p.push("\"arguments\": {\"a\": 1}}\n</tool_call>").is_empty());
        let (rest, calls) = p.finish();
        assert!(rest.is_empty());
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].arguments, r#"{"a":1}"#);
    }

    #[test]
    fn a_malformed_call_becomes_text() {
        let spec = OutputSpec {
            tools: Some(ToolFormat::Generic),
            thinking: None,
            call_grammar: None,
        };
        let (_, text, calls) = run(&spec, &["{\"name\": ", "\"f\", \"arguments\": {"]);
        assert!(calls.is_empty());
        assert_eq!(text, "{\"name\": \"f\", \"arguments\": {");
        let (_, text, calls) = run(&spec, &["  Hello", " {there}"]);
        assert!(calls.is_empty());
        assert_eq!(text, "  Hello {there}");
    }

    #[test]
    fn qwen3_thinks_then_calls() {
        // Recorded from Qwen3-0.6B with a weather tool.
        let spec = OutputSpec {
            tools: Some(ToolFormat::Hermes),
            thinking: Some(false),
            call_grammar: None,
        };
        let tokens = [
            "<think>",
            "\nThe user wants the weather",
            " in Paris.\n",
            "</think>",
            "\n\n",
            "<tool_call>",
            "\n{\"name\": \"",
            "get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n",
            "</tool_call>",
        ];
        let (thinking, text, calls) = run(&spec, &tokens);
        assert_eq!(thinking, "The user wants the weather in Paris.\n");
        assert_eq!(text, "");
        assert_eq!(calls[0].name, "get_weather");
    }

    /// Recorded from a Mistral model with the newer template, the control tokens as the last rank hands them over:
    /// the parser reads `[TOOL_CALLS]name[ARGS]{…}`; the text shown never holds a control token.
    #[test]
    fn mistral_control_markers_reach_the_parser_only() {
        let spec = OutputSpec {
            tools: Some(ToolFormat::Mistral),
            thinking: None,
            call_grammar: None,
        };
        let mut p = OutputParser::new(&spec);
        let mut shown: Vec<Piece> = p.push("Checking.");
        shown.extend(p.push_control("[TOOL_CALLS]"));
        shown.extend(p.push("get_weather"));
        shown.extend(p.push_control("[ARGS]"));
        shown.extend(p.push("{\"city\": \"Rome\"}"));
        shown.extend(p.push_control("[TOOL_CALLS]"));
        shown.extend(p.push("get_time"));
        shown.extend(p.push_control("[ARGS]"));
        shown.extend(p.push("{}"));
        let (rest, calls) = p.finish();
        shown.extend(rest);
        let text: String = shown.iter().map(|p| p.text.as_str()).collect();
        assert_eq!(text, "Checking.");
        let got: Vec<(&str, &str)> = calls.iter().map(|c| (c.name.as_str(), c.arguments.as_str())).collect();
        assert_eq!(got, [("get_weather", r#"{"city":"Rome"}"#), ("get_time", "{}")]);

        // A malformed call is shown as text, its control tokens left out; other control tokens are dropped.
        let mut p = OutputParser::new(&spec);
        let mut shown = p.push_control("[INST]");
        shown.extend(p.push_control("[TOOL_CALLS]"));
        shown.extend(p.push("oops"));
        shown.extend(p.push_control("[ARGS]"));
        shown.extend(p.push("{broken"));
        let (rest, calls) = p.finish();
        shown.extend(rest);
        assert!(calls.is_empty());
        let text: String = shown.iter().map(|p| p.text.as_str()).collect();
        assert_eq!(text, "oops{broken");
    }

    #[test]
    fn without_a_spec_text_passes_through() {
        let (thinking, text, calls) = run(&OutputSpec::default(), &["<think>", "a", "<tool_call>"]);
        assert_eq!(
            (thinking.as_str(), text.as_str(), calls.len()),
            ("", "<think>a<tool_call>", 0)
        );
    }

    /// Recorded outputs give the same pieces and calls however the decoder splits them: whole, at every byte
    /// boundary in two, and one character at a time.
    #[test]
    fn any_split_gives_the_same_result() {
        let hermes = OutputSpec {
            tools: Some(ToolFormat::Hermes),
            thinking: Some(false),
            call_grammar: None,
        };
        let generic = OutputSpec {
            tools: Some(ToolFormat::Generic),
            thinking: None,
            call_grammar: None,
        };
        let cases = [
            (
                &hermes,
                "<think>\nhm</think>\n\nSure <tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>",
            ),
            (&hermes, "<think>a</think>plain <tool_call> broken"),
            (&hermes, "no tags at all, just < and <t"),
            (
                &generic,
                "  {\"tool_calls\": [{\"name\": \"é\", \"arguments\": {\"x\": \"ü\"}}]}",
            ),
            (&generic, "Hello {\"tool_calls\": 1}"),
            (&generic, "```json\n{\"name\": \"f\"}\n```"),
        ];
        for (spec, text) in cases {
            let whole = run(spec, &[text]);
            for cut in (1..text.len()).filter(|&i| text.is_char_boundary(i)) {
                assert_eq!(run(spec, &[&text[..cut], &text[cut..]]), whole, "{text:?} cut at {cut}");
            }
            let chars: Vec<String> = text.chars().map(String::from).collect();
            let refs: Vec<&str> = chars.iter().map(String::as_str).collect();
            assert_eq!(run(spec, &refs), whole, "{text:?} char by char");
            if whole.2.is_empty() && spec.thinking.is_none() {
                assert_eq!(whole.1, text, "without a call every byte is shown");
            }
        }
    }
}
