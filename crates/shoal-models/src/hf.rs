//! The `hf` source: each file from `{endpoint}/{repo}/resolve/{revision}/{file}` over HTTP(S), redirects followed
//! (the Hub answers a file of a large repository with a redirect to its CDN), downloads resumed across attempts.
//!
//! Resume: a file is downloaded into a partial file (`<own_dir>/.tmp/<model dir>/partial/<file>.part`) that outlives
//! the attempt; the store's sweep of leftover scratch directories spares it. The next attempt hashes what is there
//! and asks for the rest with `Range: bytes=<len>-`: `206` appends, `200` (a server ignoring ranges) starts over,
//! `416` means the partial file already holds the whole file, and it is verified as it is. Only files with a listed
//! sha256 are resumed: without one, the start of an older revision could be completed with a newer revision's end
//! and nothing would notice, so such a partial file is started over. A resumed file that fails verification is
//! deleted and downloaded once more from its start in the same attempt (the damaged or stale part was ours); a fresh
//! download that fails verification is deleted and the source fails.
//!
//! Endpoint and token: `HF_ENDPOINT` and `HF_TOKEN`, as huggingface_hub reads them (see
//! [`crate::ModelStore::with_hf_endpoint`]). The token goes only to the endpoint's host: it is dropped when a
//! redirect leads to another host or from HTTPS to HTTP (the CDN's URLs are signed and need none).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tracing::{info, warn};
use ureq::config::RedirectAuthHeaders;
use ureq::http::{HeaderMap, StatusCode};

use crate::error::SourceError;
use crate::plan::{ExpectedFile, HF_DEFAULT_ENDPOINT};
use crate::store::Reporter;
use crate::verify::{CHUNK, VerifyCache, check_sha, check_size};

/// Resolving the host and setting up the connection (TCP and TLS) each get this long.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default for the longest silence while waiting for the response or reading the body.
pub(crate) const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the `hf` source downloads from, as whom, and how long it waits.
#[derive(Clone)]
pub(crate) struct HfSettings {
    pub(crate) endpoint: String,
    pub(crate) token: Option<String>,
    pub(crate) read_timeout: Duration,
}

impl HfSettings {
    /// `HF_ENDPOINT` (default `https://huggingface.co`) and `HF_TOKEN`; empty values count as unset.
    pub(crate) fn from_env() -> HfSettings {
        let var = |name: &str| {
            std::env::var(name)
                .ok()
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        HfSettings {
            endpoint: var("HF_ENDPOINT").unwrap_or_else(|| HF_DEFAULT_ENDPOINT.to_owned()),
            token: var("HF_TOKEN"),
            read_timeout: READ_TIMEOUT,
        }
    }
}

/// One attempt's HTTP agent (its connections are reused between the files of the attempt).
pub(crate) struct Client {
    agent: ureq::Agent,
    token: Option<String>,
    read_timeout: Duration,
}

impl Client {
    pub(crate) fn new(settings: &HfSettings) -> Client {
        let agent = ureq::Agent::config_builder()
            // Statuses are answers to interpret (206, 200, 416), not errors.
            .http_status_as_error(false)
            .timeout_resolve(Some(CONNECT_TIMEOUT))
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_per_read(Some(settings.read_timeout))
            .timeout_per_write(Some(settings.read_timeout))
            .redirect_auth_headers(RedirectAuthHeaders::SameHost)
            .user_agent(concat!("shoal/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        Client {
            agent,
            token: settings.token.clone(),
            read_timeout: settings.read_timeout,
        }
    }
}

/// Progress over the files of one attempt: bytes already in partial files count as done when the download of a
/// file starts, so a resumed download does not appear to begin at zero.
pub(crate) struct Progress<'r, 's> {
    reporter: &'r mut Reporter<'s>,
    done: u64,
    total: u64,
}

impl<'r, 's> Progress<'r, 's> {
    /// `total_hint` (the card's `storage_size`) is the total until more bytes than that are known to come.
    pub(crate) fn new(reporter: &'r mut Reporter<'s>, total_hint: u64) -> Progress<'r, 's> {
        Progress {
            reporter,
            done: 0,
            total: total_hint,
        }
    }

    fn advance(&mut self, n: u64) {
        self.done = self.done.saturating_add(n);
        self.total = self.total.max(self.done);
        self.reporter.ongoing(self.done, self.total);
    }

    /// Bytes counted as done that were discarded (a partial file started over).
    fn rewind(&mut self, n: u64) {
        self.done = self.done.saturating_sub(n);
    }

    /// `remaining` more bytes are announced for the file being downloaded.
    fn expect(&mut self, remaining: u64) {
        self.total = self.total.max(self.done.saturating_add(remaining));
    }
}

/// What one request left in the partial file.
struct Fetched {
    digest: Option<[u8; 32]>,
    /// Bytes the partial file held when the attempt began (0: downloaded from the start).
    resumed_from: u64,
    /// Bytes it holds now.
    len: u64,
}

/// Makes `part` hold the complete, verified (size when known, sha256 when listed) and synced bytes of `url`,
/// resuming what `part` holds already. Returns the digest when one was listed (for the verification cache).
///
/// On a network error `part` keeps what arrived, for the next attempt; on a verification failure it is deleted.
pub(crate) fn download(
    client: &Client,
    url: &str,
    part: &Path,
    file: &ExpectedFile,
    progress: &mut Progress<'_, '_>,
    cache: &VerifyCache,
) -> Result<Option<[u8; 32]>, SourceError> {
    let mut retried = false;
    loop {
        let fetched = match fetch(client, url, part, file, progress) {
            Ok(fetched) => fetched,
            Err(e) => {
                // An empty partial file (an error status, no connection) is nothing to resume.
                if fs::metadata(part).is_ok_and(|m| m.len() == 0) {
                    let _ = fs::remove_file(part);
                }
                return Err(e);
            }
        };
        if fetched.digest.is_some() {
            cache.count_hash();
        }
        let checked = check_size(Path::new(url), file, fetched.len).and_then(|()| match &fetched.digest {
            Some(digest) => check_sha(Path::new(url), file, digest),
            None => Ok(()),
        });
        match checked {
            Ok(()) => return Ok(fetched.digest),
            Err(e) => {
                let _ = fs::remove_file(part);
                if fetched.resumed_from > 0 && !retried {
                    warn!("{e}; the resumed partial file was deleted, downloading {url} again from the start");
                    progress.rewind(fetched.len);
                    retried = true;
                    continue;
                }
                return Err(e);
            }
        }
    }
}

/// One request: asks for what `part` lacks and appends it (or starts over), hashing as it writes.
fn fetch(
    client: &Client,
    url: &str,
    part: &Path,
    file: &ExpectedFile,
    progress: &mut Progress<'_, '_>,
) -> Result<Fetched, SourceError> {
    if let Some(dir) = part.parent() {
        fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
    }
    let mut out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(part)
        .map_err(|e| io_error(part, e))?;
    let mut len = out.metadata().map_err(|e| io_error(part, e))?.len();
    if len > 0 && (file.sha256.is_none() || file.size.is_some_and(|size| len > size)) {
        info!(
            "starting {url} over: the partial file's {len} bytes cannot be checked (no sha256 listed) or are too many"
        );
        out.set_len(0).map_err(|e| io_error(part, e))?;
        len = 0;
    }
    let mut hasher = file.sha256.as_ref().map(|_| Sha256::new());
    let resumed_from = len;
    if len > 0 {
        if let Some(h) = hasher.as_mut() {
            hash_prefix(part, len, h).map_err(|e| io_error(part, e))?;
        }
        info!("resuming {url} after {len} bytes");
        progress.advance(len);
        if file.size == Some(len) {
            // Complete already (the previous attempt failed after the last byte): nothing to ask for.
            return Ok(Fetched {
                digest: hasher.map(|h| h.finalize().into()),
                resumed_from,
                len,
            });
        }
    }

    let mut request = client.agent.get(url);
    if len > 0 {
        request = request.header("Range", format!("bytes={len}-"));
    }
    if let Some(token) = &client.token {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    let response = request.call().map_err(|e| request_error(url, client, e))?;
    let status = response.status();
    let remaining = content_length(response.headers());
    match status {
        StatusCode::PARTIAL_CONTENT if len > 0 => {
            let start = range_start(response.headers());
            if start != Some(len) {
                // Resuming from this server cannot work: the next attempt starts over.
                out.set_len(0).map_err(|e| io_error(part, e))?;
                return Err(http_error(
                    url,
                    Some(status),
                    format!("asked for bytes {len}- and got a range starting at {start:?}"),
                ));
            }
        }
        StatusCode::OK => {
            if len > 0 {
                info!("{url} ignored the range request: downloading it from the start");
                out.set_len(0).map_err(|e| io_error(part, e))?;
                progress.rewind(len);
                hasher = file.sha256.as_ref().map(|_| Sha256::new());
                len = 0;
            }
        }
        // The partial file is as long as the file or longer: verified as it is.
        StatusCode::RANGE_NOT_SATISFIABLE if len > 0 => {
            return Ok(Fetched {
                digest: hasher.map(|h| h.finalize().into()),
                resumed_from,
                len,
            });
        }
        _ => {
            let mut reason = status_text(status);
            if matches!(status.as_u16(), 401 | 403) {
                reason.push_str(if client.token.is_some() {
                    " (HF_TOKEN is set but not accepted for this repository)"
                } else {
                    " (a gated or private repository needs HF_TOKEN)"
                });
            }
            return Err(http_error(url, Some(status), reason));
        }
    }
    if let Some(remaining) = remaining {
        progress.expect(remaining);
    }

    let mut body = response.into_body().into_reader();
    let mut buf = vec![0u8; CHUNK];
    let mut received = 0u64;
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let why = describe_error(ureq::Error::from(e), client);
                return Err(http_error(
                    url,
                    Some(status),
                    format!(
                        "{}: the download stopped after {} bytes: {why}",
                        status_text(status),
                        len + received
                    ),
                ));
            }
        };
        out.write_all(&buf[..n]).map_err(|e| io_error(part, e))?;
        if let Some(h) = hasher.as_mut() {
            h.update(&buf[..n]);
        }
        received += n as u64;
        progress.advance(n as u64);
    }
    if let Some(expected) = remaining
        && received != expected
    {
        return Err(http_error(
            url,
            Some(status),
            format!(
                "{}: the connection ended after {received} of {expected} bytes",
                status_text(status)
            ),
        ));
    }
    // On disk before it can be renamed to its final name.
    out.sync_all().map_err(|e| io_error(part, e))?;
    Ok(Fetched {
        digest: hasher.map(|h| h.finalize().into()),
        resumed_from,
        len: len + received,
    })
}

/// Feeds the first `len` bytes of `path` to `hasher`.
fn hash_prefix(path: &Path, len: u64, hasher: &mut Sha256) -> io::Result<()> {
    let mut input = File::open(path)?.take(len);
    let mut buf = vec![0u8; CHUNK];
    let mut read = 0u64;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        read += n as u64;
    }
    if read == len {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the partial file shrank while it was hashed",
        ))
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get("content-length")?.to_str().ok()?.trim().parse().ok()
}

/// The first byte of a `Content-Range: bytes <first>-<last>/<total>` header.
fn range_start(headers: &HeaderMap) -> Option<u64> {
    let value = headers.get("content-range")?.to_str().ok()?.trim();
    let range = value.strip_prefix("bytes")?.trim_start();
    range.split('-').next()?.trim().parse().ok()
}

fn status_text(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("HTTP {} {reason}", status.as_u16()),
        None => format!("HTTP {}", status.as_u16()),
    }
}

fn describe_error(error: ureq::Error, client: &Client) -> String {
    match error {
        ureq::Error::Timeout(ureq::Timeout::PerRead) => {
            format!("no data for {} s", client.read_timeout.as_secs_f64())
        }
        ureq::Error::Timeout(ureq::Timeout::Connect | ureq::Timeout::Resolve) => {
            format!("no connection within {} s", CONNECT_TIMEOUT.as_secs())
        }
        other => other.to_string(),
    }
}

fn request_error(url: &str, client: &Client, error: ureq::Error) -> SourceError {
    http_error(url, None, describe_error(error, client))
}

fn http_error(url: &str, status: Option<StatusCode>, reason: String) -> SourceError {
    SourceError::Http {
        url: url.to_owned(),
        status: status.map(|s| s.as_u16()),
        reason,
    }
}

fn io_error(path: &Path, source: io::Error) -> SourceError {
    SourceError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What the Hub says about a file before it is downloaded: its length and, for an LFS file, its sha256.
pub(crate) struct RemoteFile {
    pub(crate) len: u64,
    pub(crate) sha256: Option<String>,
    /// The file's first bytes (as many as were asked for, or the whole file when it is shorter).
    pub(crate) prefix: Vec<u8>,
}

/// Why a remote header could not be read: the HTTP status when there was one (401, 404, …) and the reason.
pub(crate) struct RemoteError {
    pub(crate) status: Option<u16>,
    pub(crate) message: String,
}

fn remote_error(url: &str, status: Option<StatusCode>, reason: String) -> RemoteError {
    RemoteError {
        status: status.map(|s| s.as_u16()),
        message: format!("{url}: {reason}"),
    }
}

fn refused(url: &str, status: StatusCode, client: &Client) -> RemoteError {
    let mut reason = status_text(status);
    if matches!(status.as_u16(), 401 | 403) {
        reason.push_str(if client.token.is_some() {
            " (HF_TOKEN is set but not accepted for this repository)"
        } else {
            " (a gated or private repository needs HF_TOKEN)"
        });
    }
    remote_error(url, Some(status), reason)
}

/// The sha256 the Hub lists for an LFS file: `X-Linked-Etag` of the (unfollowed) answer to a `HEAD` of its
/// `resolve` URL, as huggingface_hub reads it; `None` for a file kept in git itself.
fn lfs_sha256(headers: &HeaderMap) -> Option<String> {
    let etag = headers.get("x-linked-etag")?.to_str().ok()?;
    let hex = etag
        .trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .to_ascii_lowercase();
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
}

/// The total of a `Content-Range: bytes <first>-<last>/<total>` header.
fn range_total(headers: &HeaderMap) -> Option<u64> {
    let value = headers.get("content-range")?.to_str().ok()?;
    value.rsplit_once('/')?.1.trim().parse().ok()
}

/// Reads the first `want` bytes of `url` with a range request, and its sha256 from the Hub's LFS metadata: enough to
/// derive a model card before any download.
pub(crate) fn read_remote_prefix(settings: &HfSettings, url: &str, want: u64) -> Result<RemoteFile, RemoteError> {
    let client = Client::new(settings);
    let head_agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_resolve(Some(CONNECT_TIMEOUT))
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_per_read(Some(settings.read_timeout))
        .user_agent(concat!("shoal/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent();
    let mut head = head_agent.head(url);
    if let Some(token) = &client.token {
        head = head.header("Authorization", format!("Bearer {token}"));
    }
    let response = head
        .call()
        .map_err(|e| remote_error(url, None, describe_error(e, &client)))?;
    let status = response.status();
    if !(status.is_success() || status.is_redirection()) {
        return Err(refused(url, status, &client));
    }
    let sha256 = lfs_sha256(response.headers());
    let linked_size: Option<u64> = response
        .headers()
        .get("x-linked-size")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());

    let mut get = client
        .agent
        .get(url)
        .header("Range", format!("bytes=0-{}", want.saturating_sub(1)));
    if let Some(token) = &client.token {
        get = get.header("Authorization", format!("Bearer {token}"));
    }
    let response = get
        .call()
        .map_err(|e| remote_error(url, None, describe_error(e, &client)))?;
    let status = response.status();
    let len = match status {
        StatusCode::PARTIAL_CONTENT => range_total(response.headers()),
        StatusCode::OK => content_length(response.headers()),
        _ => return Err(refused(url, status, &client)),
    }
    .or(linked_size)
    .ok_or_else(|| remote_error(url, Some(status), "the server did not say how long the file is".into()))?;
    let mut prefix = Vec::with_capacity(usize::try_from(want.min(len)).unwrap_or(0));
    response
        .into_body()
        .into_reader()
        .take(want)
        .read_to_end(&mut prefix)
        .map_err(|e| remote_error(url, Some(status), format!("reading the header: {e}")))?;
    Ok(RemoteFile { len, sha256, prefix })
}
