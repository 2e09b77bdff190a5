#![allow(clippy::unwrap_used)]
//! The `hf` source against a real HTTP/1.1 server on 127.0.0.1 (a few dozen lines below, on `std::net`): download
//! and verification, resume with `Range` after a cut connection, a server ignoring ranges, a bad sha256, a 404
//! falling through to the next source, redirects (the token stays with the endpoint's host), a stalled server.
//! Nothing here contacts the internet.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use shoal_models::{ModelError, ModelFiles, ModelStore, SourceError};
use shoal_types::card::{ModelSource, SourceKind, builtin_cards};
use shoal_types::{DownloadProgress, ModelCard, ModelId};
use tempfile::TempDir;

const FILE: &str = "fake.Q4_1.gguf";
const RESOLVE: &str = "/org/repo/resolve/main/fake.Q4_1.gguf";

// ---------------------------------------------------------------------------------------------------------------
// The test server.

/// A request the server received: its path and its headers (names lowercased).
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    headers: Vec<(String, String)>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct State {
    /// Path → bytes served there.
    files: HashMap<String, Vec<u8>>,
    /// Path → `Location` of a 302.
    redirects: HashMap<String, String>,
    /// Answer every request for a file with 200 and the whole file.
    ignore_range: bool,
    /// One-shot: the next body sent is cut (the connection closed) after this many bytes.
    cut_after: Option<usize>,
    /// One-shot: the next body stops after this many bytes and the connection stays silent for the duration.
    stall_after: Option<(usize, Duration)>,
    requests: Vec<Seen>,
}

/// A tiny HTTP/1.1 server: one request per connection (`Connection: close`), `GET` only, `Range: bytes=N-` honoured
/// (206, or 416 past the end) unless told to ignore it, 404 for unknown paths.
struct Server {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl Server {
    fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let state = shared.clone();
                thread::spawn(move || handle(stream, &state));
            }
        });
        Server { addr, state }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.endpoint())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    fn serve(&self, path: &str, bytes: &[u8]) {
        self.state().files.insert(path.to_owned(), bytes.to_vec());
    }

    fn requests(&self) -> Vec<Seen> {
        self.state().requests.clone()
    }
}

fn handle(stream: TcpStream, state: &Mutex<State>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let mut headers = Vec::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    let seen = Seen { path, headers };

    let mut st = state.lock().unwrap();
    st.requests.push(seen.clone());
    let mut head = String::new();
    let mut body: &[u8] = &[];
    let owned;
    let status;
    if let Some(location) = st.redirects.get(&seen.path) {
        status = "302 Found";
        head.push_str(&format!("Location: {location}\r\n"));
    } else if let Some(file) = st.files.get(&seen.path) {
        owned = file.clone();
        let start = seen
            .header("range")
            .filter(|_| !st.ignore_range)
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.strip_suffix('-'))
            .map(|n| n.parse::<usize>().unwrap());
        match start {
            None => {
                status = "200 OK";
                body = &owned;
            }
            Some(start) if start < owned.len() => {
                status = "206 Partial Content";
                head.push_str(&format!(
                    "Content-Range: bytes {start}-{}/{}\r\n",
                    owned.len() - 1,
                    owned.len()
                ));
                body = &owned[start..];
            }
            Some(_) => {
                status = "416 Range Not Satisfiable";
                head.push_str(&format!("Content-Range: bytes */{}\r\n", owned.len()));
            }
        }
    } else {
        status = "404 Not Found";
        body = b"Entry not found";
    }
    let cut = if body.is_empty() { None } else { st.cut_after.take() };
    let stall = if body.is_empty() { None } else { st.stall_after.take() };
    drop(st);

    let mut out = stream;
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{head}\r\n",
        body.len()
    );
    let send = cut.or(stall.map(|(n, _)| n)).unwrap_or(body.len()).min(body.len());
    let _ = out.write_all(head.as_bytes());
    let _ = out.write_all(&body[..send]);
    let _ = out.flush();
    if let Some((_, silence)) = stall {
        thread::sleep(silence);
    }
    let _ = out.shutdown(Shutdown::Write);
}

// ---------------------------------------------------------------------------------------------------------------
// Cards and stores.

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// 1 MiB that is not periodic in any small power of two, so a misplaced byte range changes the hash.
fn content() -> Vec<u8> {
    (0..1u64 << 20).map(|i| (i.wrapping_mul(7919) % 251) as u8).collect()
}

fn hf_source(repo: &str, bytes: &[u8]) -> ModelSource {
    ModelSource {
        kind: SourceKind::Hf,
        repo: Some(repo.to_owned()),
        revision: None,
        package: None,
        member: None,
        parts: None,
        path: None,
        files: vec![FILE.to_owned()],
        sha256: BTreeMap::from([(FILE.to_owned(), sha(bytes))]),
    }
}

/// The built-in card with a test id, one file of `bytes`' size and the given sources.
fn card(bytes: &[u8], sources: Vec<ModelSource>) -> ModelCard {
    let mut card = builtin_cards().remove(0);
    card.id = ModelId::new("test/hf-model");
    card.aliases.clear();
    card.storage_size = bytes.len() as u64;
    card.sources = sources;
    card
}

/// A store whose own directory is `<tmp>/models`, fetching from `server`, with no token.
fn store(server: &Server) -> (TempDir, ModelStore) {
    let data = TempDir::new().unwrap();
    let store = ModelStore::new(data.path().join("models"), Vec::new())
        .with_hf_endpoint(server.endpoint())
        .with_hf_token(None);
    (data, store)
}

fn installed(store: &ModelStore, card: &ModelCard) -> PathBuf {
    store.model_dir(&card.id).join(FILE)
}

fn scratch_root(store: &ModelStore) -> PathBuf {
    store.own_dir().join(".tmp").join("test--hf-model")
}

fn partial(store: &ModelStore) -> PathBuf {
    scratch_root(store).join("partial").join(format!("{FILE}.part"))
}

/// Entries left in the model's scratch directory (`<own_dir>/.tmp/<model dir>/`).
fn scratch_entries(store: &ModelStore) -> Vec<PathBuf> {
    match fs::read_dir(scratch_root(store)) {
        Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    }
}

fn fetch(store: &ModelStore, card: &ModelCard) -> (Result<ModelFiles, ModelError>, Vec<DownloadProgress>) {
    let mut seen = Vec::new();
    let result = store.fetch(card, &mut |p| seen.push(p));
    (result, seen)
}

fn only_failure(result: Result<ModelFiles, ModelError>) -> (SourceError, String) {
    let err = result.unwrap_err();
    let text = err.to_string();
    let ModelError::AllSourcesFailed { mut failures, .. } = err else {
        panic!("expected AllSourcesFailed, got {text}");
    };
    assert_eq!(failures.len(), 1, "{text}");
    (failures.remove(0).error, text)
}

fn ongoing(seen: &[DownloadProgress]) -> Vec<(u64, u64)> {
    seen.iter()
        .filter_map(|p| match p {
            DownloadProgress::Ongoing { done, total } => Some((*done, *total)),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------------------------
// Tests.

/// (a) A file is fetched from `{endpoint}/{repo}/resolve/main/{file}`, verified, installed, reported, and located
/// afterwards without being hashed again; no partial file stays behind.
#[test]
fn hf_source_downloads_and_verifies_a_file() {
    let server = Server::start();
    let bytes = content();
    server.serve(RESOLVE, &bytes);
    let (_data, store) = store(&server);
    let card = card(&bytes, vec![hf_source("org/repo", &bytes)]);

    let (result, seen) = fetch(&store, &card);
    let files = result.unwrap();
    let own = installed(&store, &card);
    assert_eq!(files.gguf(), Some(own.as_path()));
    assert_eq!(fs::read(&own).unwrap(), bytes);

    let requests = server.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].path, RESOLVE);
    assert_eq!(
        requests[0].header("range"),
        None,
        "a fresh download asks for everything"
    );
    assert_eq!(requests[0].header("authorization"), None, "no token configured");
    assert!(
        requests[0]
            .header("user-agent")
            .is_some_and(|ua| ua.starts_with("shoal/")),
        "{requests:?}"
    );

    let total = bytes.len() as u64;
    assert_eq!(seen.first(), Some(&DownloadProgress::Pending));
    assert_eq!(seen.last(), Some(&DownloadProgress::Completed { total }));
    let reports = ongoing(&seen);
    assert_eq!(reports.last(), Some(&(total, total)), "{reports:?}");
    assert!(
        reports.windows(2).all(|w| w[0].0 < w[1].0),
        "progress only grows: {reports:?}"
    );

    assert!(
        scratch_entries(&store).is_empty(),
        "no partial file left: {:?}",
        scratch_entries(&store)
    );
    assert_eq!(store.hashes_computed(), 1, "hashed while downloading only");
    assert_eq!(store.locate(&card), Some(files));
    assert_eq!(store.hashes_computed(), 1);
}

/// (b) A connection cut halfway leaves a partial file (the error names the URL); the next fetch, after the sweep of
/// leftover scratch directories, resumes it with `Range: bytes=<cut>-`, counts the resumed bytes as done, and the
/// result verifies.
#[test]
fn a_cut_download_resumes_from_the_cut_point() {
    let server = Server::start();
    let bytes = content();
    server.serve(RESOLVE, &bytes);
    let (_data, store) = store(&server);
    let card = card(&bytes, vec![hf_source("org/repo", &bytes)]);
    let cut = 300_000;

    server.state().cut_after = Some(cut);
    let (result, _) = fetch(&store, &card);
    let (error, text) = only_failure(result);
    assert!(
        matches!(error, SourceError::Http { status: Some(200), .. }),
        "{error:?}"
    );
    for needle in [&server.url(RESOLVE), "HTTP 200", &cut.to_string()] {
        assert!(text.contains(needle), "{needle:?} not in {text:?}");
    }
    assert!(!installed(&store, &card).exists(), "nothing under the final name");
    assert_eq!(
        fs::metadata(partial(&store)).unwrap().len(),
        cut as u64,
        "the partial file survives"
    );

    // A leftover per-attempt directory is swept; the partial file is not.
    let leftover = scratch_root(&store).join("fetch-crashed");
    fs::create_dir_all(&leftover).unwrap();
    let (result, seen) = fetch(&store, &card);
    let files = result.unwrap();
    assert_eq!(fs::read(files.gguf().unwrap()).unwrap(), bytes);
    assert!(!leftover.exists());

    let requests = server.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[1].header("range"), Some(format!("bytes={cut}-").as_str()));
    let total = bytes.len() as u64;
    let reports = ongoing(&seen);
    assert_eq!(
        reports.first(),
        Some(&(cut as u64, total)),
        "resumed bytes count as done: {reports:?}"
    );
    assert_eq!(reports.last(), Some(&(total, total)));
    assert_eq!(seen.last(), Some(&DownloadProgress::Completed { total }));
    assert!(scratch_entries(&store).is_empty(), "{:?}", scratch_entries(&store));
    assert_eq!(store.hashes_computed(), 1, "prefix and rest hashed as one pass");
}

/// (c) A server that ignores `Range` and answers 200 with the whole file: the partial file is started over and the
/// result is still correct.
#[test]
fn a_server_ignoring_range_still_yields_a_correct_file() {
    let server = Server::start();
    let bytes = content();
    server.serve(RESOLVE, &bytes);
    server.state().ignore_range = true;
    let (_data, store) = store(&server);
    let card = card(&bytes, vec![hf_source("org/repo", &bytes)]);

    server.state().cut_after = Some(400_000);
    assert!(fetch(&store, &card).0.is_err());
    assert_eq!(fs::metadata(partial(&store)).unwrap().len(), 400_000);

    let (result, seen) = fetch(&store, &card);
    assert_eq!(fs::read(result.unwrap().gguf().unwrap()).unwrap(), bytes);
    let requests = server.requests();
    assert_eq!(requests[1].header("range"), Some("bytes=400000-"), "asked, ignored");
    let total = bytes.len() as u64;
    let reports = ongoing(&seen);
    assert!(reports.iter().all(|&(done, t)| done <= t && t == total), "{reports:?}");
    assert_eq!(reports.last(), Some(&(total, total)));
    assert!(scratch_entries(&store).is_empty());
}

/// (d) Bytes that do not match the card's sha256: the error names the URL and both hashes, and neither the final
/// name nor a partial file holds anything.
#[test]
fn a_wrong_sha256_leaves_no_file_and_no_partial() {
    let server = Server::start();
    let bytes = content();
    let mut evil = bytes.clone();
    evil[123_456] ^= 1;
    server.serve(RESOLVE, &evil);
    let (_data, store) = store(&server);
    let card = card(&bytes, vec![hf_source("org/repo", &bytes)]);

    let (result, _) = fetch(&store, &card);
    let (error, text) = only_failure(result);
    match &error {
        SourceError::ShaMismatch { file, expected, actual } => {
            assert_eq!(file, &PathBuf::from(server.url(RESOLVE)));
            assert_eq!(expected, &sha(&bytes));
            assert_eq!(actual, &sha(&evil));
        }
        other => panic!("expected a sha256 mismatch, got {other}"),
    }
    assert!(text.contains("source 1 (hf org/repo)"), "{text}");
    assert!(!installed(&store, &card).exists());
    assert!(!partial(&store).exists());
    assert!(scratch_entries(&store).is_empty(), "{:?}", scratch_entries(&store));
    assert_eq!(store.locate(&card), None);
}

/// A damaged partial file (its bytes are not the file's start) is resumed, fails verification, and is downloaded
/// once more from the start within the same fetch.
#[test]
fn a_damaged_partial_file_is_started_over_in_the_same_fetch() {
    let server = Server::start();
    let bytes = content();
    server.serve(RESOLVE, &bytes);
    let (_data, store) = store(&server);
    let card = card(&bytes, vec![hf_source("org/repo", &bytes)]);
    let part = partial(&store);
    fs::create_dir_all(part.parent().unwrap()).unwrap();
    fs::write(&part, vec![0xAAu8; 200_000]).unwrap();

    let (result, _) = fetch(&store, &card);
    assert_eq!(fs::read(result.unwrap().gguf().unwrap()).unwrap(), bytes);
    let requests = server.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[0].header("range"), Some("bytes=200000-"));
    assert_eq!(requests[1].header("range"), None, "started over");
    assert!(scratch_entries(&store).is_empty());
}

/// A partial file holding the whole file (an earlier attempt failed after the last byte) gets a 416 when the size is
/// not known in advance, and is verified and installed as it is.
#[test]
fn a_complete_partial_file_is_verified_after_a_416() {
    let server = Server::start();
    let bytes = content();
    server.serve(RESOLVE, &bytes);
    let (_data, store) = store(&server);
    let mut source = hf_source("org/repo", &bytes);
    source.files.push("tokenizer.json".into());
    source.sha256.insert("tokenizer.json".into(), sha(b"{}"));
    server.serve("/org/repo/resolve/main/tokenizer.json", b"{}");
    // Two files: no per-file size, so the partial file's length proves nothing until the server says so.
    let card = card(&bytes, vec![source]);
    let part = partial(&store);
    fs::create_dir_all(part.parent().unwrap()).unwrap();
    fs::write(&part, &bytes).unwrap();

    let (result, _) = fetch(&store, &card);
    let files = result.unwrap();
    assert_eq!(fs::read(files.gguf().unwrap()).unwrap(), bytes);
    assert_eq!(fs::read(files.path("tokenizer.json").unwrap()).unwrap(), b"{}");
    let requests = server.requests();
    assert_eq!(
        requests[0].header("range"),
        Some(format!("bytes={}-", bytes.len()).as_str())
    );
    assert_eq!(requests.len(), 2, "the 416, then the tokenizer: {requests:?}");
    assert!(scratch_entries(&store).is_empty());
}

/// (e) A 404 is an error naming the URL and the status, and the next source is tried.
#[test]
fn a_404_names_the_url_and_falls_through_to_the_next_source() {
    let server = Server::start();
    let bytes = content();
    let (_data, store) = store(&server);
    let missing = "/org/gone/resolve/main/fake.Q4_1.gguf";

    let card_hf_only = card(&bytes, vec![hf_source("org/gone", &bytes)]);
    let (error, text) = only_failure(fetch(&store, &card_hf_only).0);
    match &error {
        SourceError::Http { url, status, .. } => {
            assert_eq!(url, &server.url(missing));
            assert_eq!(*status, Some(404));
        }
        other => panic!("expected an HTTP error, got {other}"),
    }
    let expected = format!(
        "source 1 (hf org/gone): GET {}: HTTP 404 Not Found",
        server.url(missing)
    );
    assert!(text.contains(&expected), "{expected:?} not in {text:?}");

    let dir = TempDir::new().unwrap();
    fs::write(dir.path().join(FILE), &bytes).unwrap();
    let path_source = ModelSource {
        kind: SourceKind::Path,
        repo: None,
        path: Some(dir.path().display().to_string()),
        ..hf_source("unused", &bytes)
    };
    let card = card(&bytes, vec![hf_source("org/gone", &bytes), path_source]);
    let (result, _) = fetch(&store, &card);
    assert_eq!(fs::read(result.unwrap().gguf().unwrap()).unwrap(), bytes);
    assert!(scratch_entries(&store).is_empty(), "{:?}", scratch_entries(&store));
}

/// Redirects are followed (the Hub sends large files to its CDN, another host; here `localhost` for `127.0.0.1`)
/// with the revision in the URL; the token goes to the endpoint's host only; `Range` survives the redirect.
#[test]
fn redirects_are_followed_and_the_token_stays_behind() {
    let server = Server::start();
    let bytes = content();
    let resolve = "/org/repo/resolve/refs%2Fpr%2F1/fake.Q4_1.gguf";
    let cdn = format!("http://localhost:{}/cdn/blob?sig=x", server.addr.port());
    server.state().redirects.insert(resolve.into(), cdn);
    server.serve("/cdn/blob?sig=x", &bytes);
    let (_data, store) = store(&server);
    let store = store.with_hf_token(Some("hf_secret".into()));
    let mut source = hf_source("org/repo", &bytes);
    source.revision = Some("refs/pr/1".into());
    let card = card(&bytes, vec![source]);

    server.state().cut_after = Some(100_000);
    assert!(fetch(&store, &card).0.is_err());
    let (result, _) = fetch(&store, &card);
    assert_eq!(fs::read(result.unwrap().gguf().unwrap()).unwrap(), bytes);

    let requests = server.requests();
    let paths: Vec<&str> = requests.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, [resolve, "/cdn/blob?sig=x", resolve, "/cdn/blob?sig=x"]);
    assert_eq!(requests[0].header("authorization"), Some("Bearer hf_secret"));
    assert_eq!(requests[1].header("authorization"), None, "not sent to another host");
    assert_eq!(requests[2].header("range"), Some("bytes=100000-"));
    assert_eq!(
        requests[3].header("range"),
        Some("bytes=100000-"),
        "Range kept across the redirect"
    );
}

/// A server that goes silent mid-body: the read timeout ends the request with an error naming the URL, and the
/// bytes received are resumed by the next fetch.
#[test]
fn a_silent_server_times_out_and_the_download_resumes() {
    let server = Server::start();
    let bytes = content();
    server.serve(RESOLVE, &bytes);
    let (_data, store) = store(&server);
    let store = store.with_hf_read_timeout(Duration::from_millis(500));
    let card = card(&bytes, vec![hf_source("org/repo", &bytes)]);

    server.state().stall_after = Some((100_000, Duration::from_secs(10)));
    let started = Instant::now();
    let (error, text) = only_failure(fetch(&store, &card).0);
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert!(matches!(error, SourceError::Http { .. }), "{error:?}");
    assert!(text.contains(&server.url(RESOLVE)), "{text}");
    assert!(text.contains("no data for 0.5 s"), "{text}");
    assert_eq!(fs::metadata(partial(&store)).unwrap().len(), 100_000);

    let (result, _) = fetch(&store, &card);
    assert_eq!(fs::read(result.unwrap().gguf().unwrap()).unwrap(), bytes);
    assert_eq!(server.requests()[1].header("range"), Some("bytes=100000-"));
}

/// A repository id that could change the URL's shape is refused before any request.
#[test]
fn an_unsafe_repository_id_is_refused_without_a_request() {
    let server = Server::start();
    let bytes = content();
    let (_data, store) = store(&server);
    let card = card(&bytes, vec![hf_source("org/repo/../../x", &bytes)]);
    let (error, _) = only_failure(fetch(&store, &card).0);
    assert!(matches!(error, SourceError::Invalid(_)), "{error:?}");
    assert!(server.requests().is_empty());
}
