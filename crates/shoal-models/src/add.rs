//! A card for a model named by a source string (`POST /models/add`, `shoal run --model`): a path to a GGUF on this
//! node, or `hf:ORG/REPO/FILE.gguf` (a split set named by its first part). Only headers are read (a range request
//! for `hf`, so the card exists before the download); the sha256 is computed once for a local file (the store's
//! verification cache remembers it) and taken from the Hub's LFS metadata for `hf`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use shoal_engine::gguf::{GgufHeader, HeaderError, parse_header};
use shoal_types::card::{ModelSource, SourceKind};
use shoal_types::{ModelCard, ModelId};

use crate::derive::{DeriveError, card_from_gguf, split_parts};
use crate::hf;
use crate::plan::{check_hf_repo, hf_file_url, safe_relative_path};
use crate::store::ModelStore;

/// The first read of a header; doubled until the header fits.
const FIRST_READ: u64 = 1 << 20;
/// The largest header read (Llama 3's, with its 128k-token vocabulary and merges, is about 10 MB).
pub const MAX_HEADER_BYTES: u64 = 128 << 20;

/// Where a model comes from, parsed from its source string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceSpec {
    Path(PathBuf),
    Hf { repo: String, file: String },
}

impl SourceSpec {
    /// `hf:ORG/REPO/FILE.gguf` or a path.
    pub fn parse(source: &str) -> Result<SourceSpec, AddError> {
        let source = source.trim();
        if source.is_empty() {
            return Err(AddError::Invalid(
                "`source` must name a path or hf:ORG/REPO/FILE.gguf".into(),
            ));
        }
        let Some(rest) = source.strip_prefix("hf:") else {
            return Ok(SourceSpec::Path(PathBuf::from(source)));
        };
        let mut parts = rest.splitn(3, '/');
        let (Some(org), Some(name), Some(file)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(AddError::Invalid(format!(
                "`{source}` is not of the form hf:ORG/REPO/FILE.gguf"
            )));
        };
        let repo = format!("{org}/{name}");
        check_hf_repo(&repo).map_err(AddError::Invalid)?;
        if safe_relative_path(file).is_none() || !file.ends_with(".gguf") {
            return Err(AddError::Invalid(format!(
                "`{file}` is not a .gguf file name inside the repository"
            )));
        }
        Ok(SourceSpec::Hf {
            repo,
            file: file.to_string(),
        })
    }

    /// Whether `name` reads as a source rather than a model id: an `hf:` id, or a name ending in `.gguf`.
    pub fn looks_like_source(name: &str) -> bool {
        name.starts_with("hf:") || name.ends_with(".gguf")
    }
}

/// Why a card could not be made; the API answers each with a 4xx naming it.
#[derive(Debug, thiserror::Error)]
pub enum AddError {
    /// The source string or the file is malformed (400).
    #[error("{0}")]
    Invalid(String),
    /// The file does not exist (404 for a path; the Hub's 404).
    #[error("{0}")]
    NotFound(String),
    /// The Hub refused (401/403).
    #[error("{0}")]
    Unauthorized(String),
    /// The Hub could not be reached or answered otherwise (502).
    #[error("{0}")]
    Upstream(String),
    #[error("{0}")]
    Derive(#[from] DeriveError),
}

/// The id a model gets from its file name: the name without `.gguf` and without a split set's `-00001-of-0000N`.
fn id_from_file(file: &str) -> String {
    let name = Path::new(file)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| file.to_string());
    let stem = name.strip_suffix(".gguf").unwrap_or(&name);
    match stem.rsplit_once("-of-").and_then(|(base, _)| base.rsplit_once('-')) {
        Some((base, index)) if index.bytes().all(|b| b.is_ascii_digit()) && !index.is_empty() => base.to_string(),
        _ => stem.to_string(),
    }
}

fn header_error(what: &str, e: HeaderError) -> AddError {
    match e {
        HeaderError::NeedMore { have } => AddError::Invalid(format!(
            "{what}: the GGUF header is larger than {have} bytes (at most {MAX_HEADER_BYTES} are read)"
        )),
        HeaderError::Invalid(reason) => AddError::Invalid(format!("{what} is not a valid GGUF file: {reason}")),
    }
}

/// Parses the header of the local file `path`, reading more of it until the header fits.
pub fn read_local_header(path: &Path) -> Result<GgufHeader, AddError> {
    let shown = path.display().to_string();
    let io = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::NotFound => AddError::NotFound(format!("{shown} does not exist")),
        _ => AddError::Invalid(format!("{shown}: {e}")),
    };
    let mut file = File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(AddError::Invalid(format!("{shown} is not a file")));
    }
    let len = meta.len();
    let mut prefix = Vec::new();
    let mut want = FIRST_READ.min(len);
    loop {
        let more = want - prefix.len() as u64;
        (&mut file).take(more).read_to_end(&mut prefix).map_err(io)?;
        match parse_header(&prefix, len) {
            Err(HeaderError::NeedMore { .. }) if want < len.min(MAX_HEADER_BYTES) => {
                want = (want * 2).min(len).min(MAX_HEADER_BYTES);
            }
            other => return other.map_err(|e| header_error(&shown, e)),
        }
    }
}

impl ModelStore {
    /// The card of the model `source` names, with `id` (or one derived from the file name). A path source is read
    /// on this node and hashed; an `hf` source's headers are read with range requests.
    pub fn card_for_source(&self, source: &str, id: Option<&str>) -> Result<ModelCard, AddError> {
        match SourceSpec::parse(source)? {
            SourceSpec::Path(path) => self.card_for_path(&path, id),
            SourceSpec::Hf { repo, file } => self.card_for_hf(&repo, &file, id),
        }
    }

    fn card_for_path(&self, path: &Path, id: Option<&str>) -> Result<ModelCard, AddError> {
        let path = if path.is_relative() {
            std::env::current_dir()
                .map(|d| d.join(path))
                .unwrap_or_else(|_| path.to_path_buf())
        } else {
            path.to_path_buf()
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| AddError::Invalid(format!("{} names no file", path.display())))?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let files = split_parts(&name).map_err(AddError::Invalid)?;
        let mut headers = Vec::with_capacity(files.len());
        let mut sha256 = BTreeMap::new();
        for file in &files {
            let p = dir.join(file);
            headers.push(read_local_header(&p)?);
            let digest = self
                .digest_of(&p)
                .map_err(|e| AddError::Invalid(format!("hashing {}: {e}", p.display())))?;
            sha256.insert(file.clone(), hex::encode(digest));
        }
        let source = ModelSource {
            kind: SourceKind::Path,
            repo: None,
            revision: None,
            package: None,
            member: None,
            parts: None,
            path: Some(dir.to_string_lossy().into_owned()),
            files,
            sha256,
        };
        let id = id.map_or_else(|| id_from_file(&name), str::to_string);
        Ok(card_from_gguf(&headers, ModelId(id), vec![source])?)
    }

    fn card_for_hf(&self, repo: &str, first: &str, id: Option<&str>) -> Result<ModelCard, AddError> {
        let files = split_parts(first).map_err(AddError::Invalid)?;
        let mut headers = Vec::with_capacity(files.len());
        let mut sha256 = BTreeMap::new();
        for file in &files {
            let rel = safe_relative_path(file).ok_or_else(|| AddError::Invalid(format!("bad file name {file}")))?;
            let url = hf_file_url(&self.hf_settings().endpoint, repo, None, &rel);
            let mut want = FIRST_READ;
            let header = loop {
                let remote = hf::read_remote_prefix(self.hf_settings(), &url, want).map_err(|e| match e.status {
                    Some(404) => AddError::NotFound(e.message),
                    Some(401 | 403) => AddError::Unauthorized(e.message),
                    Some(400..=499) => AddError::Invalid(e.message),
                    _ => AddError::Upstream(e.message),
                })?;
                match parse_header(&remote.prefix, remote.len) {
                    Err(HeaderError::NeedMore { .. }) if want < remote.len.min(MAX_HEADER_BYTES) => {
                        want = (want * 2).min(MAX_HEADER_BYTES);
                    }
                    other => {
                        if let Some(sha) = remote.sha256 {
                            sha256.insert(file.clone(), sha);
                        }
                        break other.map_err(|e| header_error(&url, e))?;
                    }
                }
            };
            headers.push(header);
        }
        let source = ModelSource {
            kind: SourceKind::Hf,
            repo: Some(repo.to_string()),
            revision: Some("main".into()),
            package: None,
            member: None,
            parts: None,
            path: None,
            files,
            sha256,
        };
        let id = id.map_or_else(|| format!("{repo}/{}", id_from_file(first)), str::to_string);
        Ok(card_from_gguf(&headers, ModelId(id), vec![source])?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_and_name_what_is_wrong() {
        assert_eq!(
            SourceSpec::parse("hf:org/repo/m-Q4_K_M.gguf").ok(),
            Some(SourceSpec::Hf {
                repo: "org/repo".into(),
                file: "m-Q4_K_M.gguf".into()
            })
        );
        assert_eq!(
            SourceSpec::parse("/m/x.gguf").ok(),
            Some(SourceSpec::Path(PathBuf::from("/m/x.gguf")))
        );
        assert!(SourceSpec::parse("hf:org/repo").is_err());
        assert!(SourceSpec::parse("hf:org/repo/../x.gguf").is_err());
        assert!(SourceSpec::parse("hf:org/repo/x.bin").is_err());
        assert!(SourceSpec::parse(" ").is_err());
    }

    #[test]
    fn ids_come_from_file_names() {
        assert_eq!(id_from_file("/a/SmolLM2.Q4_1.gguf"), "SmolLM2.Q4_1");
        assert_eq!(
            id_from_file("Qwen3-235B-Q4_K_M-00001-of-00005.gguf"),
            "Qwen3-235B-Q4_K_M"
        );
    }

    #[test]
    fn a_missing_file_is_not_found_and_a_non_gguf_is_invalid() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = ModelStore::new(dir.path().join("own"), Vec::new());
        let missing = dir.path().join("nope.gguf");
        assert!(matches!(
            store.card_for_source(&missing.to_string_lossy(), None),
            Err(AddError::NotFound(m)) if m.contains("nope.gguf")
        ));
        let junk = dir.path().join("junk.gguf");
        std::fs::write(&junk, b"not a gguf at all, just text").unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            store.card_for_source(&junk.to_string_lossy(), None),
            Err(AddError::Invalid(m)) if m.contains("magic")
        ));
    }
}
