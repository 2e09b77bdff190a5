//! Packed weight rows kept as files, so a stage's weights stay mapped rather than copied onto the heap (ENGINE.md
//! "Decisions"): the first load of a model packs each matrix the machine has a row-group kernel for
//! ([`QMatrix::packed_image`]) and writes the image to a file (temporary name, then an atomic rename, so a reader
//! never sees half a file); every later load, by any process, maps that file. Processes running stages of the same
//! model share the pages, as they share the model file's.
//!
//! Where: `SHOAL_PACK_CACHE` (a directory, or `off` for heap copies), else `$XDG_CACHE_HOME/shoal/packed`, else
//! `$HOME/.cache/shoal/packed`. Under it, one directory per model file (a hash of its canonical path, which its
//! `source` file names) holding one directory per version of that file (its length and modification time, and the
//! layout's version), holding one file per matrix (its offset in the model file, its index in a stack of experts,
//! and a digest of 64 samples of its bytes, so a file rewritten within one timestamp tick is not mistaken for the
//! old one). Bounded: writing a new version removes the older ones of the same path, and the first use in a process
//! removes the directories of model files that no longer exist, so the cache holds at most one copy per model file
//! on disk. Each file ends with a checksum of its image, checked at every load: a file of the wrong length or sum is
//! rewritten. If nothing can be written, the packed rows go on the heap and a warning says why.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::bytes::{Mapping, SharedBytes};
use crate::kernels::QMatrix;

/// Bumped whenever the packed layout or the file naming changes, so old files are never read with a new layout.
const LAYOUT_VERSION: u32 = 3;

/// Where packed images go, from the environment (see the module comment); `None` means heap copies.
pub(crate) fn cache_root() -> Option<PathBuf> {
    root_from(
        std::env::var_os("SHOAL_PACK_CACHE"),
        std::env::var_os("XDG_CACHE_HOME"),
        std::env::var_os("HOME"),
    )
}

fn root_from(
    explicit: Option<std::ffi::OsString>,
    xdg: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
) -> Option<PathBuf> {
    let nonempty = |v: Option<std::ffi::OsString>| v.filter(|v| !v.is_empty());
    if let Some(dir) = nonempty(explicit) {
        return (dir != "off").then(|| PathBuf::from(dir));
    }
    if let Some(xdg) = nonempty(xdg) {
        return Some(Path::new(&xdg).join("shoal/packed"));
    }
    nonempty(home).map(|h| Path::new(&h).join(".cache/shoal/packed"))
}

/// Where one matrix of one model file is packed: the model file, the tensor's byte offset in it, and its index in a
/// stack of experts (0 otherwise).
pub(crate) struct PackSource<'a> {
    pub file: &'a Path,
    pub offset: u64,
    pub index: usize,
}

/// `m` with its rows packed, from the cache under `root` (written there first if missing), or on the heap if
/// `root` is `None` or unusable. `m` as it is where this machine packs nothing of its type.
pub(crate) fn pack(m: QMatrix, source: &PackSource, root: Option<&Path>) -> QMatrix {
    if !crate::kernels::packs(m.ty()) {
        return m;
    }
    let Some(root) = root else {
        return m.with_packed_rows();
    };
    match mapped_image(&m, source, root) {
        Ok(image) => m.with_packed_image(image),
        Err(e) => {
            warn_once(&e);
            m.with_packed_rows()
        }
    }
}

/// The packed image of `m` mapped from its cache file, written first if missing, of the wrong length, or failing its
/// checksum (a damaged disk, a file cut short or edited): the image is followed by [`checksum`] of it, 8 bytes
/// little-endian, checked at every load, since the model's sha256 (what the node verifies) does not cover this file.
fn mapped_image(m: &QMatrix, source: &PackSource, root: &Path) -> std::io::Result<SharedBytes> {
    let path = image_path(source, m, root)?;
    let want = m.packed_image_len();
    if let Some(image) = map_checked(&path, want)? {
        return Ok(image);
    }
    let mut image = m
        .packed_image()
        .ok_or_else(|| std::io::Error::other("this type is not packed"))?;
    let sum = checksum(&image);
    image.extend_from_slice(&sum.to_le_bytes());
    write_atomically(&path, &image)?;
    drop(image);
    // Another process may have replaced the file meanwhile, with the same bytes: checked again on what is mapped.
    map_checked(&path, want)?
        .ok_or_else(|| std::io::Error::other(format!("{} fails its checksum just after writing", path.display())))
}

/// The first `want` bytes of the file at `path`, mapped, if it holds exactly them and their checksum; `None` if it
/// is missing or does not.
fn map_checked(path: &Path, want: usize) -> std::io::Result<Option<SharedBytes>> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if file.metadata()?.len() != (want + TRAILER_BYTES) as u64 {
        return Ok(None);
    }
    let map = Arc::new(Mapping::map(&file)?);
    map.will_need(0, want);
    let bytes = map.as_ref().as_ref();
    if bytes.len() != want + TRAILER_BYTES {
        return Ok(None);
    }
    let (image, trailer) = bytes.split_at(want);
    if trailer != checksum(image).to_le_bytes() {
        return Ok(None);
    }
    Ok(SharedBytes::mapped(&map, 0, want))
}

/// Bytes after the image in a cache file: its [`checksum`].
const TRAILER_BYTES: usize = 8;

/// A fast 64-bit checksum (four independent multiply-rotate lanes over 8-byte words, then the tail): it catches
/// damaged or edited cache files; it is not meant to resist someone forging one (who could as well edit the model).
fn checksum(bytes: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut lanes = [1u64, 2, 3, 4];
    let (words, tail) = bytes.as_chunks::<32>();
    for chunk in words {
        for (lane, w) in lanes.iter_mut().zip(chunk.as_chunks::<8>().0) {
            *lane = (*lane ^ u64::from_le_bytes(*w)).wrapping_mul(K).rotate_left(29);
        }
    }
    let mut h = lanes
        .iter()
        .fold(bytes.len() as u64, |h, &l| (h ^ l).wrapping_mul(K).rotate_left(31));
    for &b in tail {
        h = (h ^ u64::from(b)).wrapping_mul(K);
    }
    h
}

/// `<root>/<hash of the canonical path>/<length>-<mtime>-v<layout>/t<offset>-<index>-<sample digest>.p16`, creating
/// the version directory (and removing older versions of the same path) when it is new.
fn image_path(source: &PackSource, m: &QMatrix, root: &Path) -> std::io::Result<PathBuf> {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(|| remove_orphans(root));
    let canonical = std::fs::canonicalize(source.file)?;
    let md = std::fs::metadata(&canonical)?;
    let mtime = md
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let model_dir = root.join(format!("{:016x}", fnv1a(canonical.as_os_str().as_encoded_bytes())));
    let version = format!("{}-{mtime}-v{LAYOUT_VERSION}", md.len());
    let dir = model_dir.join(&version);
    let named = model_dir.join(SOURCE_FILE);
    if !named.is_file() {
        std::fs::create_dir_all(&model_dir)?;
        write_atomically(&named, canonical.as_os_str().as_encoded_bytes())?;
    }
    if !dir.is_dir() {
        std::fs::create_dir_all(&dir)?;
        for old in std::fs::read_dir(&model_dir)?.flatten() {
            if old.file_name() != version.as_str() && old.file_name() != SOURCE_FILE {
                // Processes still mapping an old file keep their pages; a failure leaves a stale copy, no harm.
                let _ = std::fs::remove_dir_all(old.path());
            }
        }
    }
    let digest = sample_digest(m.data());
    Ok(dir.join(format!("t{}-{}-{digest:016x}.p16", source.offset, source.index)))
}

/// The file in each model directory naming the model file it caches.
const SOURCE_FILE: &str = "source";

/// Removes the directories of model files that no longer exist (a test's temporary model, a deleted download).
/// A directory without its `source` yet (being created) is left alone.
fn remove_orphans(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else { return };
    for entry in entries.flatten() {
        let Ok(named) = std::fs::read(entry.path().join(SOURCE_FILE)) else {
            continue;
        };
        let Ok(named) = String::from_utf8(named) else { continue };
        if !Path::new(&named).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// FNV-1a of the first and last 256 bytes of `bytes` and of 64 windows of 64 bytes spread evenly between: cheap
/// (a few dozen pages), and different for any two distinct matrices in practice.
fn sample_digest(bytes: &[u8]) -> u64 {
    const WINDOWS: usize = 64;
    let mut h = fnv1a(&bytes[..bytes.len().min(256)]);
    for w in 0..WINDOWS {
        let at = bytes.len() * w / WINDOWS;
        h ^= fnv1a(&bytes[at..(at + 64).min(bytes.len())]).rotate_left(w as u32);
    }
    h ^ fnv1a(&bytes[bytes.len().saturating_sub(256)..]).rotate_left(17)
}

/// Writes `bytes` to a unique temporary file beside `path`, then renames it over `path`.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let tmp = path.with_extension(format!(
        "tmp{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// FNV-1a, 64 bits: a hash that stays the same across Rust releases (std's `DefaultHasher` may not).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// One warning per process: a model has hundreds of matrices.
fn warn_once(e: &std::io::Error) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| {
        tracing::warn!(error = %e, "packed weight rows cannot be cached on disk; keeping them on the heap (set SHOAL_PACK_CACHE to a writable directory)");
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{Pool, WeightType};

    fn matrix() -> QMatrix {
        let (rows, cols) = (37, 64);
        let v: Vec<f32> = (0..rows * cols).map(|i| ((i * 13 % 41) as f32 - 20.0) * 0.05).collect();
        QMatrix::quantize(WeightType::Q4_1, rows, cols, &v).unwrap_or_else(|e| panic!("{e}"))
    }

    fn product(m: &QMatrix) -> Vec<u32> {
        let x: Vec<f32> = (0..3 * m.cols()).map(|i| (i % 7) as f32 - 3.0).collect();
        let mut y = vec![0.0; 3 * m.rows()];
        m.matmul(&x, 3, &mut y, &Pool::new(1));
        y.iter().map(|v| v.to_bits()).collect()
    }

    #[test]
    fn the_root_comes_from_the_environment_in_order() {
        let s = |v: &str| Some(std::ffi::OsString::from(v));
        assert_eq!(root_from(s("/x"), s("/y"), s("/h")), Some(PathBuf::from("/x")));
        assert_eq!(root_from(s("off"), s("/y"), s("/h")), None);
        assert_eq!(
            root_from(s(""), s("/y"), s("/h")),
            Some(PathBuf::from("/y/shoal/packed"))
        );
        assert_eq!(
            root_from(None, None, s("/h")),
            Some(PathBuf::from("/h/.cache/shoal/packed"))
        );
        assert_eq!(root_from(None, None, None), None);
    }

    /// A miss writes the image and maps it; a hit maps the same file; a file of the wrong length or checksum is
    /// rewritten; a new version of the model file replaces the old directory; every way gives the unpacked product's
    /// bits.
    #[test]
    fn images_are_written_once_mapped_after_and_replaced_with_the_model() {
        let dir = std::env::temp_dir().join(format!("shoal-pack-cache-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let model = dir.join("model.gguf");
        std::fs::write(&model, b"stand-in model file").unwrap_or_else(|e| panic!("{e}"));
        let root = dir.join("cache");
        let m = matrix();
        let want = product(&m);
        let source = PackSource {
            file: &model,
            offset: 4096,
            index: 2,
        };
        let first = pack(m.clone(), &source, Some(&root));
        assert_eq!(product(&first), want);
        if !crate::kernels::packs(WeightType::Q4_1) {
            eprintln!("this machine packs nothing: nothing was cached");
            let _ = std::fs::remove_dir_all(&dir);
            return;
        }
        let path = image_path(&source, &m, &root).unwrap_or_else(|e| panic!("{e}"));
        let image = m.packed_image().unwrap_or_default();
        let mut file = image.clone();
        file.extend_from_slice(&checksum(&image).to_le_bytes());
        assert_eq!(
            std::fs::read(&path).ok(),
            Some(file.clone()),
            "the image, then its checksum"
        );
        // A hit, then a damaged (short) file: both give the same bits. (Nothing may map the file while it is cut
        // short in place; the cache itself only ever renames new files over old.)
        drop(first);
        let hit = pack(m.clone(), &source, Some(&root));
        assert_eq!(product(&hit), want);
        drop(hit);
        std::fs::write(&path, b"short").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(product(&pack(m.clone(), &source, Some(&root))), want);
        assert_eq!(std::fs::read(&path).ok(), Some(file.clone()));
        // A flipped byte of the right-length file fails the checksum and is rewritten too.
        let mut damaged = file.clone();
        damaged[7] ^= 0x40;
        std::fs::write(&path, &damaged).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(product(&pack(m.clone(), &source, Some(&root))), want);
        assert_eq!(std::fs::read(&path).ok(), Some(file.clone()));
        // The model file changes: its old version directory goes.
        std::fs::write(&model, b"a longer stand-in model file").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(product(&pack(m.clone(), &source, Some(&root))), want);
        let model_dir = path.parent().and_then(Path::parent).unwrap_or(&root).to_path_buf();
        let versions = std::fs::read_dir(&model_dir)
            .map(|d| d.flatten().filter(|e| e.path().is_dir()).count())
            .unwrap_or(0);
        assert_eq!(versions, 1, "one version directory per model file");
        // Once the model file is gone, a sweep removes its directory; another model's stays.
        let other = dir.join("other.gguf");
        std::fs::write(&other, b"another model").unwrap_or_else(|e| panic!("{e}"));
        let kept = PackSource {
            file: &other,
            offset: 0,
            index: 0,
        };
        let kept_path = image_path(&kept, &m, &root).unwrap_or_else(|e| panic!("{e}"));
        std::fs::remove_file(&model).unwrap_or_else(|e| panic!("{e}"));
        remove_orphans(&root);
        assert!(!model_dir.exists(), "the deleted model's images stay");
        assert!(
            kept_path.parent().is_some_and(Path::is_dir),
            "a live model's directory went"
        );
        // Unwritable: heap copy, same bits.
        let blocked = dir.join("a-file");
        std::fs::write(&blocked, b"x").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(product(&pack(m.clone(), &source, Some(&blocked.join("cache")))), want);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
