//! Downloads (§10.2 rule 4): fetching a model's files off the worker thread, and finding the files of models only
//! `path` sources name.

use std::path::{Path, PathBuf};

use shoal_core::worker::ActionKey;
use shoal_types::ids::ModelId;
use shoal_types::model::DownloadProgress;
use shoal_types::{ModelCard, State};

use crate::{Input, Shell};

/// How often the files of a model this node was not found to hold are looked for again (an operator may copy them
/// into a models directory at any time).
const RESCAN_EVERY_MS: u64 = 30_000;

impl Shell {
    fn card_of(state: &State, model: &ModelId) -> Option<ModelCard> {
        state
            .instances
            .values()
            .find(|i| i.model.id == *model)
            .map(|i| i.model.clone())
            .or_else(|| state.model_cards.get(model).map(|c| c.as_ref().clone()))
    }

    pub(crate) fn download(&mut self, model: ModelId, state: &State) {
        let Some(card) = Self::card_of(state, &model) else {
            self.local.finish(&ActionKey::Download(model));
            return;
        };
        let entry = self.local.models.entry(model.clone()).or_default();
        entry.downloading = true;
        entry.progress = Some(DownloadProgress::Pending);
        let store = self.models.clone();
        let inputs = self.inputs.clone();
        std::thread::spawn(move || {
            let progress_to = inputs.clone();
            let id = model.clone();
            let mut progress = move |p: DownloadProgress| {
                let _ = progress_to.send(Input::Progress(id.clone(), p));
            };
            let result = store
                .fetch(&card, &mut progress)
                .map_err(|e| e.to_string())
                .and_then(|files| {
                    files
                        .gguf()
                        .map(|p| p.to_path_buf())
                        .ok_or_else(|| format!("model {} has no .gguf file", card.id))
                });
            let _ = inputs.send(Input::Fetched(model, result));
        });
    }

    /// Reconciles "which models' files does this node hold" with State's custom cards: a model that only `path`
    /// sources name can be placed only where its files are (no node can fetch them), so each node fetches it as
    /// the store does any model (found by name and sha256 in its models directories, else copied from the source
    /// directory when this node has it) and reports the result as its download (rule 9), which placement reads.
    /// A node without the files retries every 30 s (an operator may copy them in). Never against an empty State.
    pub(crate) fn scan_held_files(&mut self, state: &State, now: u64) {
        let wanted: Vec<ModelId> = state
            .model_cards
            .values()
            .filter(|card| card.files_only_where_held())
            .filter(|card| {
                self.local.models.get(&card.id).is_none_or(|m| {
                    !m.verified
                        && !m.downloading
                        && m.last_failure_ms
                            .is_none_or(|at| now.saturating_sub(at) >= RESCAN_EVERY_MS)
                })
            })
            .map(|card| card.id.clone())
            .collect();
        for model in wanted {
            self.download(model, state);
        }
    }

    /// A download's progress report: the CLI's hook hears it at once, State through rule 9 (throttled).
    pub(crate) fn on_download_progress(&mut self, model: ModelId, progress: DownloadProgress) {
        if let Some(hook) = &self.config.on_progress {
            hook(&model, &progress);
        }
        let entry = self.local.models.entry(model).or_default();
        entry.progress = Some(progress);
    }

    /// A runner found its model file corrupt (non-finite output, then a sha256 mismatch): the file's cached digest
    /// and the model's verification are forgotten, so no runner is handed the file again. Rule 4 then fetches the
    /// model anew; the store hashes the copy again, rejects it, logs it and names it in the download's error (State).
    pub(crate) fn on_file_corrupt(&mut self, path: &Path) {
        tracing::error!(path = %path.display(), "model file corrupt: its weights produced non-finite numbers and its sha256 no longer matches");
        self.models.forget_digest(path);
        let models: Vec<ModelId> = self
            .gguf
            .iter()
            .filter(|(_, p)| p.as_path() == path)
            .map(|(m, _)| m.clone())
            .collect();
        for model in models {
            self.gguf.remove(&model);
            if let Some(entry) = self.local.models.get_mut(&model) {
                entry.verified = false;
            }
        }
    }

    /// A download ended, either way.
    pub(crate) fn on_fetched(&mut self, model: ModelId, result: Result<PathBuf, String>, now: u64) {
        self.local.finish(&ActionKey::Download(model.clone()));
        let entry = self.local.models.entry(model.clone()).or_default();
        entry.downloading = false;
        match result {
            Ok(path) => {
                tracing::info!(model = %model, path = %path.display(), "model files verified");
                entry.verified = true;
                entry.failures = 0;
                self.gguf.insert(model, path);
            }
            Err(error) => {
                tracing::warn!(model = %model, %error, "model download failed");
                entry.failures = entry.failures.saturating_add(1);
                entry.last_failure_ms = Some(now);
                entry.progress = Some(DownloadProgress::Failed { error });
            }
        }
    }
}
