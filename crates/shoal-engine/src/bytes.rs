//! Immutable weight bytes shared between threads: an owned buffer (tests, re-quantized weights) or a range of a
//! read-only memory map of the model file. A stage's weights are mapped, never copied into the heap, so a runner's
//! memory is the pages of its own layers (shared with the page cache and other processes mapping the same file) plus
//! its KV cache.

use std::fs::File;
use std::sync::Arc;

/// A slice of bytes that keeps its owner alive; cloning it shares the owner.
#[derive(Clone)]
pub struct SharedBytes {
    owner: Arc<dyn AsRef<[u8]> + Send + Sync>,
    start: usize,
    len: usize,
}

impl SharedBytes {
    /// Takes ownership of a heap buffer.
    pub fn owned(data: Vec<u8>) -> Self {
        let len = data.len();
        Self {
            owner: Arc::new(data),
            start: 0,
            len,
        }
    }

    /// `len` bytes of `map` from `start`, or `None` when the range does not lie inside the map.
    pub fn mapped(map: &Arc<Mapping>, start: usize, len: usize) -> Option<Self> {
        let end = start.checked_add(len)?;
        if end > map.len() {
            return None;
        }
        Some(Self {
            owner: map.clone(),
            start,
            len,
        })
    }

    pub fn as_slice(&self) -> &[u8] {
        &(*self.owner).as_ref()[self.start..self.start + self.len]
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl std::fmt::Debug for SharedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedBytes")
            .field("start", &self.start)
            .field("len", &self.len)
            .finish()
    }
}

/// A whole model file mapped read-only.
pub struct Mapping {
    map: memmap2::Mmap,
}

impl Mapping {
    /// Maps `file` read-only.
    pub fn map(file: &File) -> std::io::Result<Self> {
        #[allow(unsafe_code)]
        // SAFETY: the map is read-only and private to this process's view of the file. Mapped memory is only sound
        // while nobody truncates or rewrites the file underneath; the model store installs files by an atomic
        // rename and never writes to an installed file, so a file shoal loads is never changed in place. (A third
        // party truncating it would make a later read fault, as it would for llama.cpp, which also maps models.)
        let map = unsafe { memmap2::Mmap::map(file)? };
        Ok(Self { map })
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Asks the kernel to read `len` bytes from `start` ahead of their first use (a stage's own tensors), so the
    /// first request does not fault them in one page at a time. Advisory: failure changes nothing.
    pub fn will_need(&self, start: usize, len: usize) {
        #[cfg(unix)]
        if let Err(e) = self.map.advise_range(memmap2::Advice::WillNeed, start, len) {
            tracing::debug!(start, len, error = %e, "madvise(WILLNEED) failed");
        }
        #[cfg(not(unix))]
        let _ = (start, len);
    }
}

impl AsRef<[u8]> for Mapping {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_ranges_are_bounds_checked_and_keep_the_map_alive() {
        let path = std::env::temp_dir().join(format!("shoal-bytes-test-{}", std::process::id()));
        std::fs::write(&path, b"0123456789").unwrap_or_else(|e| panic!("{e}"));
        let file = File::open(&path).unwrap_or_else(|e| panic!("{e}"));
        let map = Arc::new(Mapping::map(&file).unwrap_or_else(|e| panic!("{e}")));
        std::fs::remove_file(&path).ok();
        let s = SharedBytes::mapped(&map, 2, 5).unwrap_or_else(|| panic!("in range"));
        assert_eq!(s.as_slice(), b"23456");
        assert!(SharedBytes::mapped(&map, 6, 5).is_none(), "past the end");
        assert!(SharedBytes::mapped(&map, usize::MAX, 2).is_none(), "overflow");
        assert_eq!(SharedBytes::owned(vec![1, 2, 3]).as_slice(), &[1, 2, 3]);
        drop(map);
        assert_eq!(s.as_slice(), b"23456", "the slice keeps the map alive");
    }
}
