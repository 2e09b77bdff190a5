//! Model files from other nodes of the cluster (issue 18): the store's side of a peer fetch.
//!
//! The transfer itself (which peers, chunks, TLS, resuming) belongs to the caller, through [`PeerFetcher`]; this crate
//! only says which files are missing, where a transfer may keep its partial copy between attempts, and installs what
//! came back the way every source's files are installed: verified, then an atomic rename, the digest remembered so
//! the `locate` that follows does not read the bytes again.

use std::fs;
use std::path::{Path, PathBuf};

use shoal_types::DownloadProgress;
use shoal_types::ModelCard;
use tracing::info;

use crate::plan::{ExpectedFile, expected_files};
use crate::store::{PARTIAL_DIR, Produced, Reporter, io_error, model_dir_name, partial_path, remove_empty_dirs};
use crate::{ModelError, ModelFiles, ModelStore, SourceError};

/// One file a [`PeerFetcher`] is asked to bring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerFile {
    /// The name as the card writes it.
    pub name: String,
    /// Lowercase hex sha256 (a file without one cannot come from a peer: nothing would prove its bytes).
    pub sha256: String,
    /// The exact size when the card gives it.
    pub size: Option<u64>,
}

/// A transfer of one file from peers into `dest`, verified against its sha256 before it appears there (a partial
/// copy kept beside `dest` may be resumed by a later call). `progress` takes bytes done and the file's size.
pub trait PeerFetcher {
    fn fetch(&mut self, file: &PeerFile, dest: &Path, progress: &mut dyn FnMut(u64, u64)) -> Result<(), String>;
}

impl ModelStore {
    /// Makes the card's files present and verified from peers: at once when [`ModelStore::locate`] finds them, else
    /// each missing file through `fetcher`. Reports `Pending`, `Ongoing`, then `Completed` or `Failed` like
    /// [`ModelStore::fetch`].
    pub fn fetch_from_peers(
        &self,
        card: &ModelCard,
        fetcher: &mut dyn PeerFetcher,
        progress: &mut dyn FnMut(DownloadProgress),
    ) -> Result<ModelFiles, ModelError> {
        progress(DownloadProgress::Pending);
        let result = self.fetch_from_peers_inner(card, fetcher, progress);
        match &result {
            Ok(files) => progress(DownloadProgress::Completed {
                total: files.total_size(),
            }),
            Err(e) => progress(DownloadProgress::Failed { error: e.to_string() }),
        }
        result
    }

    fn fetch_from_peers_inner(
        &self,
        card: &ModelCard,
        fetcher: &mut dyn PeerFetcher,
        progress: &mut dyn FnMut(DownloadProgress),
    ) -> Result<ModelFiles, ModelError> {
        let expected = expected_files(card)?;
        let lock = self.model_lock(&card.id);
        let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(files) = self.locate(card) {
            return Ok(files);
        }
        let failed = |error: String| ModelError::PeerFetch {
            model: card.id.clone(),
            error,
        };
        let partial_root = self.scratch_root(&card.id).join(PARTIAL_DIR);
        let missing: Vec<&ExpectedFile> = expected
            .iter()
            .filter(|f| self.find_file(&card.id, f).is_none())
            .collect();
        let total: u64 = card.storage_size;
        let mut done_before = 0u64;
        let mut reporter = Reporter::new(progress);
        for file in missing {
            let Some(sha256) = file.sha256.clone() else {
                return Err(failed(format!(
                    "{} has no sha256 in the card, so no peer copy can be trusted",
                    file.name
                )));
            };
            let digest = parse_sha256(&sha256)
                .ok_or_else(|| failed(format!("{}: the card's sha256 is not 64 hex characters", file.name)))?;
            let dest = partial_path(&partial_root, &file.rel).with_extension("peer");
            if let Some(parent) = dest.parent() {
                fs::create_dir_all(parent).map_err(|e| failed(io_error(parent, e).to_string()))?;
            }
            let wanted = PeerFile {
                name: file.name.clone(),
                sha256,
                size: file.size,
            };
            let fetched = fetcher.fetch(&wanted, &dest, &mut |done, size| {
                reporter.ongoing(done_before + done, total.max(done_before + size));
            });
            if let Err(error) = fetched {
                return Err(failed(format!("{}: {error}", file.name)));
            }
            let installed = self
                .check_produced(Path::new(&file.name), &dest, file, Some(digest))
                .and_then(|digest| {
                    self.install(
                        &card.id,
                        vec![Produced {
                            file,
                            path: dest.clone(),
                            digest,
                        }],
                    )
                });
            remove_empty_dirs(dest.parent(), &partial_root);
            installed.map_err(|e: SourceError| failed(e.to_string()))?;
            done_before += fs::metadata(self.model_dir(&card.id).join(&file.rel)).map_or(0, |m| m.len());
            info!(model = %card.id.as_str(), file = %file.name, "model file fetched from peers");
        }
        self.locate(card)
            .ok_or_else(|| failed("the files fetched from peers are not all found verified afterwards".into()))
    }

    /// Where fetches of `id` keep their scratch and partial files.
    fn scratch_root(&self, id: &shoal_types::ids::ModelId) -> PathBuf {
        self.own_dir().join(crate::store::TMP_DIR).join(model_dir_name(id))
    }
}

fn parse_sha256(text: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(text).ok()?;
    bytes.try_into().ok()
}
