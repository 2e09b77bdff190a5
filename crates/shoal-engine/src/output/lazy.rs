//! `tool_choice: auto`'s call grammar on the last rank ([`super::trigger`] finds where a call starts): compiled when
//! the sequence starts (a grammar that cannot compile is known before any token), unused until a call starts, so
//! free text costs no mask; then it catches up with the call's first bytes and becomes the sequence's constraint.

use super::{CallTrigger, OutputSpec, Segment};
use crate::grammar::{Constrained, Constraint};
use crate::tokenizer::Tokenizer;

/// One sequence's call grammar, waiting for a call.
#[derive(Debug)]
pub struct LazyCall {
    trigger: CallTrigger,
    grammar: Option<Constrained>,
}

/// What one decoded token did to a [`LazyCall`].
#[derive(Debug)]
pub enum Watch {
    /// No call has started.
    Waiting,
    /// A call started: the grammar, caught up with the call so far, masks every later token.
    Started(Box<Constrained>),
    /// A call started with bytes the grammar does not match (a trigger inside other text): the output stays free
    /// (the parser then reads a call, or shows the text), since such a trigger must not break generation.
    Dropped,
}

impl LazyCall {
    /// The call grammar the output spec carries, compiled; `None` without one, without a tool format, or when it
    /// does not compile for this vocabulary (calls are then parsed unconstrained).
    pub fn new(tokenizer: &Tokenizer, output: &OutputSpec) -> Option<Self> {
        let grammar = output.call_grammar.as_ref()?;
        let trigger = CallTrigger::new(output)?;
        let compiled = tokenizer.grammar().and_then(|f| {
            f.compile(&Constraint::Lark {
                grammar: grammar.clone(),
            })
        });
        match compiled {
            Ok(grammar) => Some(Self {
                trigger,
                grammar: Some(grammar),
            }),
            Err(e) => {
                tracing::warn!(error = %e, "the tool-call grammar does not compile; calls are parsed unconstrained");
                None
            }
        }
    }

    /// A decoded token: `raw` is its text before stop strings apply (control tokens are read by id).
    pub fn push(&mut self, tokenizer: &Tokenizer, token: u32, raw: &str) -> Watch {
        let fired = if tokenizer.is_special(token) {
            let text = tokenizer.token_text(token).unwrap_or_default();
            self.trigger.push_control(token, &text)
        } else {
            self.trigger.push(raw)
        };
        let Some(segments) = fired else {
            return Watch::Waiting;
        };
        let Some(mut grammar) = self.grammar.take() else {
            return Watch::Dropped;
        };
        let caught_up = segments.iter().try_for_each(|s| match s {
            Segment::Text(text) => grammar.consume_text(text),
            Segment::Control(id) => grammar.commit(*id),
        });
        match caught_up {
            Ok(()) => Watch::Started(Box::new(grammar)),
            Err(e) => {
                tracing::debug!(error = %e, ?segments, "a call's start does not match its grammar; the output stays free");
                Watch::Dropped
            }
        }
    }
}
