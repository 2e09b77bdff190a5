//! Prompt counting on the API node: the tokenizer and chat template of each model whose file this node holds,
//! loaded on first use. A prompt longer than the model's context is refused here, with a 400 in the client's dialect,
//! before anything is sent to a runner; Anthropic's `count_tokens` and Ollama's `prompt_eval_count` are this count.
//!
//! A node without the model's file cannot count (an API-only node, or one still downloading): its requests go on, and
//! rank 0 refuses an oversized prompt the same way, as a failed generation.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use shoal_models::ModelStore;

use shoal_models::prompt::{Bounded, Prompter};
use shoal_types::ModelCard;
use shoal_types::ids::ModelId;
use shoal_types::params::GenerationParams;

use crate::error::ApiError;

/// Tokenizers kept at once; a cluster serves a handful of models, and each costs its vocabulary (a few MB).
pub const MAX_PROMPTERS: usize = 8;

/// Loaded prompters by model, each with the card it was loaded for (a card re-added under the same id reloads).
pub struct Prompts {
    store: Option<Arc<ModelStore>>,
    loaded: Mutex<BTreeMap<ModelId, (ModelCard, Arc<Prompter>)>>,
}

impl Prompts {
    pub fn new(store: Option<Arc<ModelStore>>) -> Prompts {
        Prompts {
            store,
            loaded: Mutex::new(BTreeMap::new()),
        }
    }

    /// The model's prompter, or `None` where this node does not hold the model's file.
    pub async fn prompter(&self, card: &ModelCard) -> Option<Arc<Prompter>> {
        {
            let loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((c, p)) = loaded.get(&card.id)
                && c == card
            {
                return Some(p.clone());
            }
        }
        let store = self.store.clone()?;
        let wanted = card.clone();
        // Locating hashes a file the first time it is seen: off the async threads.
        let loaded = tokio::task::spawn_blocking(move || {
            let files = store.locate(&wanted)?;
            let gguf = files.gguf()?;
            Prompter::load(gguf, &wanted)
                .inspect_err(|e| tracing::warn!(model = %wanted.id, error = %e, "cannot load the tokenizer"))
                .ok()
        })
        .await
        .ok()
        .flatten()?;
        let prompter = Arc::new(loaded);
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if loaded.len() >= MAX_PROMPTERS
            && !loaded.contains_key(&card.id)
            && let Some(first) = loaded.keys().next().cloned()
        {
            loaded.remove(&first);
        }
        loaded.insert(card.id.clone(), (card.clone(), prompter.clone()));
        Some(prompter)
    }

    /// The prompt's token count, where this node can count it, or that it has more than `limit` tokens (told
    /// without tokenizing all of a long prompt); an error if the prompt cannot be rendered.
    pub async fn count(
        &self,
        card: &ModelCard,
        params: &GenerationParams,
        limit: usize,
    ) -> Result<Option<Count>, ApiError> {
        let Some(prompter) = self.prompter(card).await else {
            return Ok(None);
        };
        // A long prompt takes milliseconds to tokenize: off the async threads too.
        let params = params.clone();
        let counted = tokio::task::spawn_blocking(move || prompter.tokens_within(&params, limit))
            .await
            .map_err(|e| ApiError::internal(format!("prompt counting failed: {e}")))?;
        match counted {
            Ok(Bounded::Tokens(ids)) => Ok(Some(Count::Exactly(ids.len()))),
            Ok(Bounded::Over { at_least }) => Ok(Some(Count::AtLeast(at_least))),
            Err(e) => Err(ApiError::bad_request("messages", e)),
        }
    }
}

/// A prompt's size in tokens, as far as it was counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Count {
    Exactly(usize),
    /// More than the limit asked for: at least this many.
    AtLeast(usize),
}
