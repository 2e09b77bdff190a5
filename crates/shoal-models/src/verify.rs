//! File verification: size and sha256 against an [`ExpectedFile`], with an in-memory cache of digests.
//!
//! Hashing a model is the expensive part of `locate` (≈0.3 s per 100 MB, minutes for a 70 GB model), and the worker
//! asks "are the files present and verified?" on every tick (§10.2 rules 4 and 5). So a digest is remembered per path
//! together with the file's size, modification time, inode and change time when it was read; while all are unchanged
//! the file is not read again. The mtime alone is not enough: a file rewritten in place with its old mtime set back
//! (`touch -r`, a restore tool) would pass with its old digest, but every write and every mtime change sets the
//! change time, which no user can set back, and a file replaced by another has a new inode. The cache lives in memory only: a restarted node hashes each file once more, which is cheap next to
//! trusting a stale on-disk record of a file something else may have rewritten.

use std::collections::HashMap;
use std::fs::{self, File, Metadata};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use crate::error::SourceError;
use crate::plan::ExpectedFile;

/// Read size for hashing and copying: large enough that syscalls do not dominate, small enough to stay in cache.
pub(crate) const CHUNK: usize = 1 << 20;

/// What a digest was computed from: a file is taken as unchanged while its size, mtime, inode and ctime are.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Stamp {
    size: u64,
    mtime: SystemTime,
    /// (device, inode, ctime seconds, ctime nanoseconds) where the platform has them (Unix), else zeros.
    identity: (u64, u64, i64, i64),
}

impl Stamp {
    /// `None` where the platform has no mtime: such files are hashed every time rather than trusted.
    fn of(meta: &Metadata) -> Option<Stamp> {
        Some(Stamp {
            size: meta.len(),
            mtime: meta.modified().ok()?,
            identity: identity(meta),
        })
    }
}

#[cfg(unix)]
fn identity(meta: &Metadata) -> (u64, u64, i64, i64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino(), meta.ctime(), meta.ctime_nsec())
}

#[cfg(not(unix))]
fn identity(_meta: &Metadata) -> (u64, u64, i64, i64) {
    (0, 0, 0, 0)
}

#[derive(Default)]
pub(crate) struct VerifyCache {
    digests: Mutex<HashMap<PathBuf, (Stamp, [u8; 32])>>,
    hashes: AtomicU64,
}

impl VerifyCache {
    /// Full-file sha256 computations so far (cache misses and hashes of freshly produced files).
    pub(crate) fn hashes(&self) -> u64 {
        self.hashes.load(Ordering::Relaxed)
    }

    pub(crate) fn count_hash(&self) {
        self.hashes.fetch_add(1, Ordering::Relaxed);
    }

    /// The sha256 of `path`, whose metadata is `meta` (read before the hash, so a write during the hash changes the
    /// mtime and the next call hashes again).
    pub(crate) fn digest(&self, path: &Path, meta: &Metadata) -> io::Result<[u8; 32]> {
        let stamp = Stamp::of(meta);
        if let Some(stamp) = stamp
            && let Some((cached, digest)) = self.lock().get(path)
            && *cached == stamp
        {
            return Ok(*digest);
        }
        let digest = hash_file(path)?;
        self.count_hash();
        if let Some(stamp) = stamp {
            self.lock().insert(path.to_owned(), (stamp, digest));
        }
        Ok(digest)
    }

    /// Records a digest computed while the file was produced, so the file just installed is not read again.
    pub(crate) fn remember(&self, path: &Path, meta: &Metadata, digest: [u8; 32]) {
        if let Some(stamp) = Stamp::of(meta) {
            self.lock().insert(path.to_owned(), (stamp, digest));
        }
    }

    /// Drops what is remembered of `path`, so the next check reads it again: a runner found the file's bytes wrong
    /// (its weights produced NaN) although its size, times and inode may all be as they were (bit rot, a write
    /// through a raw device or a tool that restores the change time).
    pub(crate) fn forget(&self, path: &Path) {
        self.lock().remove(path);
    }

    /// A panic while the map was held cannot leave it inconsistent (single inserts), so poisoning is ignored.
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, (Stamp, [u8; 32])>> {
        self.digests.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks an existing file against `expected`: a regular file, the right size when known, the right sha256 when
    /// listed. Returns its size.
    pub(crate) fn verify(&self, path: &Path, expected: &ExpectedFile) -> Result<u64, SourceError> {
        let meta = match fs::metadata(path) {
            Ok(meta) if meta.is_file() => meta,
            Ok(_) => return Err(SourceError::Missing { path: path.to_owned() }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SourceError::Missing { path: path.to_owned() });
            }
            Err(source) => {
                return Err(SourceError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        check_size(path, expected, meta.len())?;
        if expected.sha256.is_some() {
            let digest = self.digest(path, &meta).map_err(|source| SourceError::Io {
                path: path.to_owned(),
                source,
            })?;
            check_sha(path, expected, &digest)?;
        }
        Ok(meta.len())
    }
}

/// Hashes `path` now, whatever any cache remembers, and checks it against `sha256` (lowercase or uppercase hex).
/// The entry point for a runner whose weights produced non-finite numbers: the corruption it suspects may have kept
/// every stamp the cache trusts, so only reading the bytes again can tell.
pub fn verify_digest_now(path: &Path, sha256: &str) -> Result<(), SourceError> {
    let digest = hash_file(path).map_err(|source| SourceError::Io {
        path: path.to_owned(),
        source,
    })?;
    let got = hex::encode(digest);
    if got.eq_ignore_ascii_case(sha256) {
        Ok(())
    } else {
        Err(SourceError::ShaMismatch {
            file: path.to_owned(),
            expected: sha256.to_ascii_lowercase(),
            actual: got,
        })
    }
}

pub(crate) fn check_size(shown_as: &Path, expected: &ExpectedFile, actual: u64) -> Result<(), SourceError> {
    match expected.size {
        Some(size) if size != actual => Err(SourceError::SizeMismatch {
            file: shown_as.to_owned(),
            expected: size,
            actual,
        }),
        _ => Ok(()),
    }
}

pub(crate) fn check_sha(shown_as: &Path, expected: &ExpectedFile, digest: &[u8; 32]) -> Result<(), SourceError> {
    match &expected.sha256 {
        Some(want) => {
            let got = hex::encode(digest);
            if *want == got {
                Ok(())
            } else {
                Err(SourceError::ShaMismatch {
                    file: shown_as.to_owned(),
                    expected: want.clone(),
                    actual: got,
                })
            }
        }
        None => Ok(()),
    }
}

pub(crate) fn hash_file(path: &Path) -> io::Result<[u8; 32]> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().into())
}
