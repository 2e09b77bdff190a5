//! The partial file of a fetch: `<final>.part`, preallocated to the file's size and written at chunk offsets, and
//! its sidecar `<final>.part.chunks`, which records the chunks known to be on disk so a later fetch resumes.
//!
//! A chunk is recorded only after the partial file was synced (`fdatasync`), so a recorded chunk's bytes are durable
//! before the record is. The sidecar's header names the file (sha256, size, chunk size): a sidecar for anything else,
//! a damaged one, or a partial file of the wrong length means starting over. Only the final rename, after the whole
//! file verified, puts anything at the final path.
//!
//! Sidecar layout: [`SIDECAR_MAGIC`] | version u32 | sha256 [32] | size u64 | chunk size u64 | one byte per chunk
//! (1 = on disk).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

const SIDECAR_MAGIC: [u8; 8] = *b"shoalprt";
const SIDECAR_VERSION: u32 = 1;
const SIDECAR_HEADER: usize = 8 + 4 + 32 + 8 + 8;
/// Most chunks one file may have (the sidecar is read whole: this bounds it).
pub const MAX_CHUNKS: u64 = 1 << 22;

/// The chunks of a file of `size` bytes cut every `chunk_size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    pub(crate) size: u64,
    pub(crate) chunk_size: u64,
}

impl Layout {
    pub(crate) fn chunks(&self) -> usize {
        usize::try_from(self.size.div_ceil(self.chunk_size)).unwrap_or(usize::MAX)
    }

    /// Offset and length of chunk `i`.
    pub(crate) fn range(&self, i: usize) -> (u64, u64) {
        let offset = i as u64 * self.chunk_size;
        (offset, self.chunk_size.min(self.size - offset))
    }
}

pub(crate) fn part_path(dest: &Path) -> PathBuf {
    suffixed(dest, ".part")
}

pub(crate) fn sidecar_path(dest: &Path) -> PathBuf {
    suffixed(dest, ".part.chunks")
}

fn suffixed(dest: &Path, suffix: &str) -> PathBuf {
    let mut name = dest.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// An I/O failure on one of our own files (not the peer's fault: the fetch stops).
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct LocalIoError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

fn at(path: &Path) -> impl FnOnce(io::Error) -> LocalIoError + '_ {
    move |source| LocalIoError {
        path: path.to_owned(),
        source,
    }
}

pub(crate) struct Partial {
    pub(crate) part: PathBuf,
    sidecar: PathBuf,
    pub(crate) file: File,
    /// The sidecar, written by one worker at a time.
    marks: Mutex<File>,
    layout: Layout,
}

impl Partial {
    /// Opens the partial file of `dest` for `sha256`, resuming what a valid sidecar records; returns it with the
    /// chunks already on disk.
    pub(crate) fn open(dest: &Path, sha256: &[u8; 32], layout: Layout) -> Result<(Partial, Vec<bool>), LocalIoError> {
        let part = part_path(dest);
        let sidecar = sidecar_path(dest);
        let header = header(sha256, layout);
        if let Some(done) = resumable(&part, &sidecar, &header, layout) {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&part)
                .map_err(at(&part))?;
            let marks = OpenOptions::new().write(true).open(&sidecar).map_err(at(&sidecar))?;
            let partial = Partial {
                part,
                sidecar,
                file,
                marks: Mutex::new(marks),
                layout,
            };
            return Ok((partial, done));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&part)
            .map_err(at(&part))?;
        // Sparse: the chunks fill it in any order.
        file.set_len(layout.size).map_err(at(&part))?;
        let mut content = header.to_vec();
        content.resize(SIDECAR_HEADER + layout.chunks(), 0);
        fs::write(&sidecar, &content).map_err(at(&sidecar))?;
        let marks = OpenOptions::new().write(true).open(&sidecar).map_err(at(&sidecar))?;
        marks.sync_all().map_err(at(&sidecar))?;
        let partial = Partial {
            part,
            sidecar,
            file,
            marks: Mutex::new(marks),
            layout,
        };
        Ok((partial, vec![false; layout.chunks()]))
    }

    /// Records chunk `i` as on disk: syncs the partial file first.
    pub(crate) fn mark_done(&self, i: usize) -> Result<(), LocalIoError> {
        self.file.sync_data().map_err(at(&self.part))?;
        let marks = self.marks.lock().unwrap_or_else(PoisonError::into_inner);
        marks
            .write_all_at(&[1], (SIDECAR_HEADER + i) as u64)
            .map_err(at(&self.sidecar))
    }

    /// Forgets every chunk (their bytes stay, to be compared with a peer's in a single-peer retry).
    pub(crate) fn forget_all(&self) -> Result<(), LocalIoError> {
        let marks = self.marks.lock().unwrap_or_else(PoisonError::into_inner);
        marks
            .write_all_at(&vec![0u8; self.layout.chunks()], SIDECAR_HEADER as u64)
            .and_then(|()| marks.sync_data())
            .map_err(at(&self.sidecar))
    }

    /// Moves the verified partial file to `dest` and syncs the directory; the sidecar goes after the rename (a crash
    /// in between leaves a sidecar without its partial file, which the next fetch ignores).
    pub(crate) fn install(self, dest: &Path) -> Result<(), LocalIoError> {
        self.file.sync_all().map_err(at(&self.part))?;
        drop(self.file);
        fs::rename(&self.part, dest).map_err(at(dest))?;
        let _ = fs::remove_file(&self.sidecar);
        sync_dir(dest).map_err(at(dest))
    }

    /// Removes the partial file and its sidecar (their bytes are known bad).
    pub(crate) fn discard(self) {
        let _ = fs::remove_file(&self.sidecar);
        let _ = fs::remove_file(&self.part);
    }
}

fn header(sha256: &[u8; 32], layout: Layout) -> [u8; SIDECAR_HEADER] {
    let mut h = [0u8; SIDECAR_HEADER];
    h[..8].copy_from_slice(&SIDECAR_MAGIC);
    h[8..12].copy_from_slice(&SIDECAR_VERSION.to_le_bytes());
    h[12..44].copy_from_slice(sha256);
    h[44..52].copy_from_slice(&layout.size.to_le_bytes());
    h[52..60].copy_from_slice(&layout.chunk_size.to_le_bytes());
    h
}

/// The recorded chunks when `sidecar` matches `header` and `part` has the file's length; `None` to start over.
fn resumable(part: &Path, sidecar: &Path, header: &[u8; SIDECAR_HEADER], layout: Layout) -> Option<Vec<bool>> {
    let part_len = fs::metadata(part).ok()?.len();
    if part_len != layout.size {
        return None;
    }
    let expected = SIDECAR_HEADER + layout.chunks();
    let mut content = Vec::with_capacity(expected);
    File::open(sidecar)
        .ok()?
        .take(expected as u64 + 1)
        .read_to_end(&mut content)
        .ok()?;
    if content.len() != expected || content[..SIDECAR_HEADER] != header[..] {
        return None;
    }
    content[SIDECAR_HEADER..]
        .iter()
        .map(|&b| match b {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        })
        .collect()
}

/// Syncs the directory holding `path`, so a rename into it survives a crash.
pub(crate) fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const LAYOUT: Layout = Layout {
        size: 10_000,
        chunk_size: 4096,
    };

    #[test]
    fn the_layout_cuts_a_short_last_chunk() {
        assert_eq!(LAYOUT.chunks(), 3);
        assert_eq!(LAYOUT.range(2), (8192, 10_000 - 8192));
        let empty = Layout {
            size: 0,
            chunk_size: 4096,
        };
        assert_eq!(empty.chunks(), 0);
    }

    #[test]
    fn a_sidecar_resumes_only_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f.gguf");
        let (p, done) = Partial::open(&dest, &[1; 32], LAYOUT).unwrap();
        assert_eq!(done, vec![false; 3]);
        p.file.write_all_at(&[5; 4096], 4096).unwrap();
        p.mark_done(1).unwrap();
        drop(p);
        let (p, done) = Partial::open(&dest, &[1; 32], LAYOUT).unwrap();
        assert_eq!(done, vec![false, true, false]);
        let mut back = [0u8; 4096];
        p.file.read_exact_at(&mut back, 4096).unwrap();
        assert_eq!(back, [5; 4096]);
        drop(p);
        // Another sha256, another chunk size: start over.
        let (_, done) = Partial::open(&dest, &[2; 32], LAYOUT).unwrap();
        assert_eq!(done, vec![false; 3]);
        let (p, _) = Partial::open(&dest, &[1; 32], LAYOUT).unwrap();
        p.mark_done(0).unwrap();
        p.forget_all().unwrap();
        drop(p);
        let (p, done) = Partial::open(&dest, &[1; 32], LAYOUT).unwrap();
        assert_eq!(done, vec![false; 3]);
        // A damaged sidecar: start over.
        p.mark_done(2).unwrap();
        drop(p);
        let mut bytes = fs::read(sidecar_path(&dest)).unwrap();
        bytes.push(0);
        fs::write(sidecar_path(&dest), &bytes).unwrap();
        let (p, done) = Partial::open(&dest, &[1; 32], LAYOUT).unwrap();
        assert_eq!(done, vec![false; 3]);
        p.install(&dest).unwrap();
        assert!(dest.exists() && !part_path(&dest).exists() && !sidecar_path(&dest).exists());
    }
}
