//! Downloads (§10.2 rule 4): fetching a model's files off the worker thread, and finding the files of models only
//! `path` sources name.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use shoal_core::fetch::{self, FetchPlan};
use shoal_core::worker::ActionKey;
use shoal_types::ids::ModelId;
use shoal_types::model::DownloadProgress;
use shoal_types::{ModelCard, NodeId, State};

use crate::sharing::{FromPeers, Sharing};
use crate::{Input, Shell};

/// How often the worker checks that the files it holds are still there.
const GONE_CHECK_EVERY_MS: u64 = 5_000;
/// How often the worker looks on its disk for the files of every model of the catalog it does not hold yet.
const DISK_SCAN_EVERY_MS: u64 = 30_000;

/// How a download ended.
#[derive(Debug)]
pub(crate) enum Fetched {
    /// The files are here, verified: the weights file.
    Installed(PathBuf),
    /// Another node fetches the model for the cluster: ask again in a while.
    Waiting(NodeId),
    /// Failed; `dropped` are peers the transfer found at fault.
    Failed { error: String, dropped: Vec<NodeId> },
    /// A look on this node's disk ([`Shell::scan_disk`]) found no copy; nothing was fetched.
    NotOnDisk,
}

impl From<Result<PathBuf, String>> for Fetched {
    fn from(result: Result<PathBuf, String>) -> Fetched {
        match result {
            Ok(path) => Fetched::Installed(path),
            Err(error) => Fetched::Failed {
                error,
                dropped: Vec::new(),
            },
        }
    }
}

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

    /// Rule 4's download, off the worker thread: a copy on this node's disk first, then where
    /// `shoal_core::fetch::plan` says (peers that hold the files, the card's own sources, or waiting for the node
    /// that downloads them for the cluster).
    pub(crate) fn download(&mut self, model: ModelId, state: &State) {
        let Some(card) = Self::card_of(state, &model) else {
            self.local.finish(&ActionKey::Download(model));
            return;
        };
        let now = crate::unix_ms();
        self.bad_peers.retain(|_, until| *until > now);
        let avoid: BTreeSet<NodeId> = self.bad_peers.keys().copied().collect();
        let mut source = match (&self.sharing, fetch::plan(state, self.node, &model, &avoid)) {
            // Without a file server of its own the node could not pass the files on: it does not share at all.
            (None, _) => FetchPlan::Sources,
            (Some(_), plan) => plan,
        };
        let token = Self::token_for(state, self.node, &model);
        if matches!(source, FetchPlan::Peers(_)) && token.is_none() {
            source = FetchPlan::Sources;
        }
        let entry = self.local.models.entry(model.clone()).or_default();
        entry.downloading = true;
        entry.wait_until_ms = None;
        if !matches!(source, FetchPlan::WaitFor(_)) || entry.progress.is_none() {
            entry.progress = Some(DownloadProgress::Pending);
        }
        let store = self.models.clone();
        let inputs = self.inputs.clone();
        let tls = self.sharing.as_deref().and_then(Sharing::tls);
        std::thread::spawn(move || {
            // Hashing and copying gigabytes must not take the CPU from runners and the node's loops.
            crate::sharing::lower_priority();
            let progress_to = inputs.clone();
            let id = model.clone();
            let mut progress = move |p: DownloadProgress| {
                let _ = progress_to.send(Input::Progress(id.clone(), p));
            };
            let gguf = |files: shoal_models::ModelFiles| {
                files
                    .gguf()
                    .map(|p| p.to_path_buf())
                    .ok_or_else(|| format!("model {} has no .gguf file", card.id))
            };
            let outcome = match source {
                FetchPlan::Sources => Fetched::from(
                    store
                        .fetch(&card, &mut progress)
                        .map_err(|e| e.to_string())
                        .and_then(gguf),
                ),
                FetchPlan::Peers(holders) => {
                    let mut from = FromPeers {
                        holders: holders.into_iter().map(|h| (h.node, h.addrs)).collect(),
                        token: token.unwrap_or_default(),
                        tls,
                        dropped: Vec::new(),
                    };
                    let result = store.fetch_from_peers(&card, &mut from, &mut progress);
                    match result.map_err(|e| e.to_string()).and_then(gguf) {
                        Ok(path) => Fetched::Installed(path),
                        Err(error) => Fetched::Failed {
                            error,
                            dropped: from.dropped,
                        },
                    }
                }
                // A copy on this node's disk needs nobody.
                FetchPlan::WaitFor(downloader) => match store.locate(&card) {
                    Some(files) => {
                        progress(DownloadProgress::Completed {
                            total: files.total_size(),
                        });
                        Fetched::from(gguf(files))
                    }
                    None => Fetched::Waiting(downloader),
                },
            };
            let _ = inputs.send(Input::Fetched(model, outcome));
        });
    }

    /// Reconciles "which models' files does this node hold" with its disk for every model of the catalog (built-in
    /// and added cards), placed here or not: a copy found (`--models-dir`, `<data-dir>/models`), verified, is reported
    /// `Completed`, so peers fetch it from this node instead of the internet (issue 18). Only looks: never fetches.
    /// Hashing runs at the bulk transfers' lower priority; digests are cached, so a later look is a `stat`.
    pub(crate) fn scan_disk(&mut self, state: &State, now: u64) {
        if now < self.last_disk_scan_ms.saturating_add(DISK_SCAN_EVERY_MS) {
            return;
        }
        self.last_disk_scan_ms = now;
        let cards = shoal_types::card::builtin_cards()
            .into_iter()
            .chain(state.model_cards.values().map(|c| c.as_ref().clone()));
        for card in cards {
            let entry = self.local.models.entry(card.id.clone()).or_default();
            if entry.verified || entry.downloading {
                continue;
            }
            entry.downloading = true;
            let store = self.models.clone();
            let inputs = self.inputs.clone();
            std::thread::spawn(move || {
                crate::sharing::lower_priority();
                let outcome = match store.locate(&card) {
                    Some(files) => match files.gguf() {
                        Some(path) => {
                            let total = files.total_size();
                            let progress = DownloadProgress::Completed { total };
                            let _ = inputs.send(Input::Progress(card.id.clone(), progress));
                            Fetched::Installed(path.to_path_buf())
                        }
                        None => Fetched::NotOnDisk,
                    },
                    None => Fetched::NotOnDisk,
                };
                let _ = inputs.send(Input::Fetched(card.id, outcome));
            });
        }
    }

    /// The hex token this node proves to a peer's file server for `model`: that of an instance of the model with a
    /// shard on this node (else any instance of it).
    fn token_for(state: &State, node: NodeId, model: &ModelId) -> Option<String> {
        let of_model = || state.instances.values().filter(|i| i.model.id == *model);
        let mine = of_model().find(|i| i.assignments.node_runner.contains_key(&node));
        mine.or_else(|| of_model().next()).map(|i| hex::encode(i.token.0))
    }

    /// Files that went away (deleted or moved by an operator): the model is no longer held, State hears `Gone`, and
    /// the offer to peers drops it. Checked every [`GONE_CHECK_EVERY_MS`].
    pub(crate) fn check_held_files(&mut self, now: u64) {
        if now < self.last_gone_check_ms.saturating_add(GONE_CHECK_EVERY_MS) {
            return;
        }
        self.last_gone_check_ms = now;
        let gone: Vec<(ModelId, PathBuf)> = self
            .gguf
            .iter()
            .filter(|(_, path)| !path.exists())
            .map(|(m, p)| (m.clone(), p.clone()))
            .collect();
        for (model, path) in gone {
            tracing::warn!(model = %model, path = %path.display(), "a verified model file is gone");
            self.models.forget_digest(&path);
            self.gguf.remove(&model);
            let entry = self.local.models.entry(model).or_default();
            entry.verified = false;
            entry.progress = Some(DownloadProgress::Gone);
        }
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
    pub(crate) fn on_fetched(&mut self, model: ModelId, outcome: Fetched, now: u64) {
        self.local.finish(&ActionKey::Download(model.clone()));
        let entry = self.local.models.entry(model.clone()).or_default();
        entry.downloading = false;
        let result = match outcome {
            Fetched::Installed(path) => Ok(path),
            Fetched::NotOnDisk => return,
            Fetched::Waiting(downloader) => {
                tracing::debug!(model = %model, %downloader, "waiting for the node that fetches the model for the cluster");
                entry.wait_until_ms = Some(now.saturating_add(fetch::WAIT_FOR_DOWNLOADER_MS));
                return;
            }
            Fetched::Failed { error, dropped } => {
                for peer in dropped {
                    tracing::warn!(model = %model, %peer, "a peer failed a model transfer; left out for a while");
                    self.bad_peers.insert(peer, now.saturating_add(fetch::BAD_PEER_MS));
                }
                Err(error)
            }
        };
        let entry = self.local.models.entry(model.clone()).or_default();
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
