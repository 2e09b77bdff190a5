//! GGUF files: the header (metadata and tensor directory) parsed at open, the file memory-mapped read-only, and
//! single tensors handed out as ranges of that map, so a stage touches only the pages of its own layers and never
//! copies weights into the heap. Also a small writer, which the tests use to build malformed and
//! unusual files.
//!
//! Written here rather than taken from candle: candle's reader was the last use of candle-core, whose build
//! (gemm, zip, safetensors) was most of the workspace's build time. The format (llama.cpp's `gguf.md`): magic
//! `GGUF`, version 2 or 3, tensor and key-value counts (u64), key-value pairs, tensor infos, then tensor data at
//! the next multiple of `general.alignment` (default 32). Everything little-endian.
//!
//! A split set (llama.cpp's `gguf-split`: `PREFIX-00001-of-0000N.gguf` … `PREFIX-0000N-of-0000N.gguf`, each a complete
//! GGUF with its own header and tensor directory, keys `split.no`, `split.count`, `split.tensors.count`, the model's
//! metadata in the first) opens as one file when its first part is named: the other parts are found beside it by that
//! naming rule, each is mapped read-only, and every tensor is served from the map of the part that holds it.
//!
//! Limits: the file is untrusted. No length read from it is used to allocate before it is checked against the
//! bytes that remain, arrays nest at most 4 deep, a tensor has at most 4 dimensions, and every tensor the kernels
//! can run is checked at open to end inside the file.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use crate::bytes::{Mapping, SharedBytes};
use crate::error::{EngineError, Result};
use crate::kernels::{QMatrix, WeightType};

mod header;
mod write;

pub use header::{GgufHeader, HeaderError, HeaderTensor, Value, parse_header};
pub use write::{TensorData, write};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
const MAX_ARRAY_DEPTH: usize = 4;
const MAX_DIMS: usize = 4;
/// The split-set keys, as llama.cpp's `gguf-split` writes them (u16, u16, i32).
const SPLIT_NO: &str = "split.no";
const SPLIT_COUNT: &str = "split.count";
const SPLIT_TENSORS: &str = "split.tensors.count";

#[derive(Debug, Clone)]
struct TensorInfo {
    /// ggml order: `dims[0]` is the contiguous (column) dimension.
    dims: Vec<u64>,
    ggml_type: u32,
    /// From the start of its part's data section.
    offset: u64,
    /// Index into [`GgufFile::parts`] of the file that holds the tensor.
    part: usize,
}

/// One file of the model: the only one, or one part of a split set.
struct Part {
    path: PathBuf,
    data_offset: u64,
    /// The whole file, mapped read-only; its tensors are ranges of it.
    map: Arc<Mapping>,
}

/// One file's header and map, before the parts of a split set are joined.
struct ParsedFile {
    metadata: HashMap<String, Value>,
    keys: Vec<String>,
    tensors: HashMap<String, TensorInfo>,
    part: Part,
}

pub struct GgufFile {
    /// The file named at open (a split set's first part).
    path: PathBuf,
    /// The first part's metadata (a split set's later parts carry only their `split.*` keys).
    metadata: HashMap<String, Value>,
    /// Keys in file order, so a rewritten file keeps them in order.
    keys: Vec<String>,
    tensors: HashMap<String, TensorInfo>,
    /// The file itself, or every part of a split set in order.
    parts: Vec<Part>,
    /// Tensor bytes handed out so far: what a stage really holds of the file (checked by the cluster's shard tests).
    tensor_bytes_read: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("parts", &self.parts.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Reads the header (metadata and tensor directory) only; tensor data is read on demand. The first part of a
    /// split set opens the whole set; any other part is an error naming the first.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let first = Self::open_part(&path)?;
        let Some((no, count)) = split_position(&path, &first.metadata)? else {
            return Ok(Self {
                path,
                metadata: first.metadata,
                keys: first.keys,
                tensors: first.tensors,
                parts: vec![first.part],
                tensor_bytes_read: 0,
            });
        };
        Self::open_set(path, first, no, count)
    }

    /// Joins the split set whose part `no` of `count` is `first` (already opened from `path`), or says which file
    /// to name instead.
    fn open_set(path: PathBuf, first: ParsedFile, no: usize, count: usize) -> Result<Self> {
        let invalid = |path: &Path, reason: String| EngineError::InvalidGguf {
            path: path.to_path_buf(),
            reason,
        };
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let prefix = split_prefix(name, no, count);
        if no != 0 {
            let hint = match prefix {
                Some(p) => format!("open its first part, {}", split_name(p, 0, count)),
                None => format!("open its first part (named like PREFIX{})", split_suffix(0, count)),
            };
            return Err(invalid(
                &path,
                format!("this is part {} of a split set of {count}: {hint}", no + 1),
            ));
        }
        let Some(prefix) = prefix else {
            return Err(invalid(
                &path,
                format!(
                    "the first part of a split set of {count} must be named PREFIX{} so its other parts can be found",
                    split_suffix(0, count)
                ),
            ));
        };
        let expected = match first.metadata.get(SPLIT_TENSORS) {
            Some(v) => v.as_i128().ok_or_else(|| {
                invalid(
                    &path,
                    format!("`{SPLIT_TENSORS}` is a {}, not an integer", v.type_name()),
                )
            })?,
            None => {
                return Err(invalid(
                    &path,
                    format!("a split set's first part lacks `{SPLIT_TENSORS}`"),
                ));
            }
        };
        let mut tensors = first.tensors;
        let mut parts = vec![first.part];
        for no in 1..count {
            let part_path = path.with_file_name(split_name(prefix, no, count));
            let which = format!("part {} of the split set {}", no + 1, path.display());
            if !part_path.is_file() {
                return Err(invalid(&part_path, format!("{which} is missing")));
            }
            let part = Self::open_part(&part_path).map_err(|e| match e {
                EngineError::InvalidGguf { path, reason } => invalid(&path, format!("{which}: {reason}")),
                other => other,
            })?;
            match split_position(&part_path, &part.metadata)? {
                Some((n, c)) if (n, c) == (no, count) => {}
                Some((n, c)) => {
                    return Err(invalid(
                        &part_path,
                        format!(
                            "{which} says it is part {} of {c} (`{SPLIT_NO}`, `{SPLIT_COUNT}`)",
                            n + 1
                        ),
                    ));
                }
                None => {
                    return Err(invalid(
                        &part_path,
                        format!("{which} has no `{SPLIT_NO}`/`{SPLIT_COUNT}` keys"),
                    ));
                }
            }
            // gguf-split writes the set's total into every part: another total is a part of another set.
            match part.metadata.get(SPLIT_TENSORS).and_then(Value::as_i128) {
                Some(total) if total != expected => {
                    return Err(invalid(
                        &part_path,
                        format!("{which} belongs to a set of {total} tensors, not {expected} (`{SPLIT_TENSORS}`)"),
                    ));
                }
                _ => {}
            }
            for (name, mut info) in part.tensors {
                if let Some(other) = tensors.get(&name) {
                    return Err(invalid(
                        &part_path,
                        format!(
                            "{which} holds tensor `{name}`, which {} holds too",
                            parts[other.part].path.display()
                        ),
                    ));
                }
                info.part = parts.len();
                tensors.insert(name, info);
            }
            parts.push(part.part);
        }
        if tensors.len() as i128 != expected {
            return Err(invalid(
                &path,
                format!(
                    "the split set's {count} parts hold {} tensors, but `{SPLIT_TENSORS}` is {expected}",
                    tensors.len()
                ),
            ));
        }
        tracing::debug!(path = %path.display(), parts = count, tensors = tensors.len(), "opened a split GGUF set");
        Ok(Self {
            path,
            metadata: first.metadata,
            keys: first.keys,
            tensors,
            parts,
            tensor_bytes_read: 0,
        })
    }

    /// One GGUF file: its header parsed and the file mapped.
    fn open_part(path: &Path) -> Result<ParsedFile> {
        let io = |source| EngineError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let map = Mapping::map(&file).map_err(io)?;
        let header = parse_header(map.as_ref(), map.len() as u64).map_err(|e| EngineError::InvalidGguf {
            path: path.to_path_buf(),
            reason: match e {
                HeaderError::NeedMore { .. } => "the header runs past the end of the file (truncated?)".into(),
                HeaderError::Invalid(reason) => reason,
            },
        })?;
        let keys = header.metadata.iter().map(|(k, _)| k.clone()).collect();
        let metadata = header.metadata.into_iter().collect();
        let tensors = header
            .tensors
            .into_iter()
            .map(|t| {
                let info = TensorInfo {
                    dims: t.dims,
                    ggml_type: t.ggml_type,
                    offset: t.offset,
                    part: 0,
                };
                (t.name, info)
            })
            .collect();
        Ok(ParsedFile {
            metadata,
            keys,
            tensors,
            part: Part {
                path: path.to_path_buf(),
                data_offset: header.data_offset,
                map: Arc::new(map),
            },
        })
    }

    /// The file named at open (a split set's first part).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every file of the model in order: the file itself, or each part of a split set (what a model store must
    /// hold, hash and count the size of).
    pub fn part_paths(&self) -> impl Iterator<Item = &Path> {
        self.parts.iter().map(|p| p.path.as_path())
    }

    /// Bytes of tensor data handed out (mapped for a stage) since the file was opened.
    pub fn tensor_bytes_read(&self) -> u64 {
        self.tensor_bytes_read
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Metadata in file order.
    pub fn metadata(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.keys
            .iter()
            .filter_map(|k| self.metadata.get(k).map(|v| (k.as_str(), v)))
    }

    /// One tensor as a matrix over its bytes in the mapped file (no copy): rows are the outer GGUF dimension, columns
    /// the inner (contiguous) one; a 1-D tensor is one row. The kernel is asked to read the range ahead.
    pub fn read_matrix(&mut self, name: &str) -> Result<QMatrix> {
        let (ty, dims) = self.tensor_type(name)?;
        if dims.iter().skip(2).any(|&d| d != 1) {
            return Err(invalid_tensor(
                name,
                format!("shape {dims:?} is not a vector or a matrix"),
            ));
        }
        let rows = dims.get(1).copied().unwrap_or(1);
        Ok(self.map_matrices(name, ty, dims[0], rows, 1)?.remove(0))
    }

    /// `m` (tensor `name`, or matrix `index` of its stack of experts) with its rows packed for this machine's
    /// row-group kernel, mapped from the pack cache next to nothing else of the file (`crate::pack_cache`); `m` as it
    /// is where the machine packs nothing of its type or `name` is not a tensor of this file.
    pub fn pack_rows(&self, name: &str, index: usize, m: QMatrix) -> QMatrix {
        let Some(info) = self.tensors.get(name) else { return m };
        let Some(part) = self.parts.get(info.part) else {
            return m;
        };
        let source = crate::pack_cache::PackSource {
            file: &part.path,
            offset: part.data_offset.saturating_add(info.offset),
            index,
        };
        crate::pack_cache::pack(m, &source, crate::pack_cache::cache_root().as_deref())
    }

    /// A 3-D tensor of stacked matrices (a mixture-of-experts layer's `ffn_*_exps`, ggml shape
    /// [cols, rows, n_expert]) as one matrix per expert, each over its own contiguous rows of the mapped file. Kept
    /// apart from [`Self::read_matrix`], which refuses anything but a vector or a matrix.
    pub fn read_expert_matrices(&mut self, name: &str) -> Result<Vec<QMatrix>> {
        let (ty, dims) = self.tensor_type(name)?;
        if dims.len() < 3 || dims.iter().skip(3).any(|&d| d != 1) {
            return Err(invalid_tensor(
                name,
                format!("shape {dims:?} is not a stack of matrices"),
            ));
        }
        self.map_matrices(name, ty, dims[0], dims[1], dims[2])
    }

    /// The weight type and ggml shape of a tensor the kernels can run.
    fn tensor_type(&self, name: &str) -> Result<(WeightType, Vec<u64>)> {
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| EngineError::MissingTensor(name.to_string()))?;
        let ty = WeightType::from_ggml_id(info.ggml_type).ok_or_else(|| EngineError::UnsupportedQuant {
            name: name.to_string(),
            ty: ggml_type_name(info.ggml_type),
        })?;
        Ok((ty, info.dims.clone()))
    }

    /// `count` consecutive `rows × cols` matrices from the start of tensor `name`, as ranges of the mapped file.
    fn map_matrices(&mut self, name: &str, ty: WeightType, cols: u64, rows: u64, count: u64) -> Result<Vec<QMatrix>> {
        let shape = [cols, rows, count];
        let too_large = || invalid_tensor(name, format!("shape {shape:?} is too large"));
        let cols = usize::try_from(cols).map_err(|_| too_large())?;
        let rows = usize::try_from(rows).map_err(|_| too_large())?;
        let count = usize::try_from(count).map_err(|_| too_large())?;
        if !cols.is_multiple_of(ty.block_elems()) {
            return Err(invalid_tensor(
                name,
                format!("{cols} columns are not whole {} blocks", ty.name()),
            ));
        }
        let each = rows.checked_mul(ty.row_bytes(cols)).ok_or_else(too_large)?;
        let len = each.checked_mul(count).ok_or_else(too_large)?;
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| EngineError::MissingTensor(name.to_string()))?;
        let part = self
            .parts
            .get(info.part)
            .ok_or_else(|| EngineError::MissingTensor(name.to_string()))?;
        let at = part.data_offset.saturating_add(info.offset);
        let outside = || {
            invalid_tensor(
                name,
                format!("{len} bytes at offset {at} lie outside {}", part.path.display()),
            )
        };
        let start = usize::try_from(at).map_err(|_| outside())?;
        if SharedBytes::mapped(&part.map, start, len).is_none() {
            return Err(outside());
        }
        part.map.will_need(start, len);
        self.tensor_bytes_read = self.tensor_bytes_read.saturating_add(len as u64);
        (0..count)
            .map(|i| {
                let data = SharedBytes::mapped(&part.map, start + i * each, each).ok_or_else(outside)?;
                QMatrix::from_shared(ty, rows, cols, data).map_err(|e| invalid_tensor(name, e.to_string()))
            })
            .collect()
    }

    /// Reads a small tensor (a norm's weight) as f32 values, whatever its encoding.
    pub fn read_vector(&mut self, name: &str) -> Result<Vec<f32>> {
        let m = self.read_matrix(name)?;
        let mut out = vec![0.0; m.rows() * m.cols()];
        for (r, row) in out.chunks_exact_mut(m.cols().max(1)).enumerate() {
            m.dequantize_row(r, row);
        }
        Ok(out)
    }

    fn value(&self, key: &str) -> Result<&Value> {
        self.metadata
            .get(key)
            .ok_or_else(|| EngineError::MissingMetadata(key.to_string()))
    }

    pub fn has_key(&self, key: &str) -> bool {
        self.metadata.contains_key(key)
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        match self.value(key)? {
            Value::String(s) => Ok(s),
            other => Err(expected(key, "a string", other)),
        }
    }

    /// Accepts any integer width: converters disagree on whether counts are u32, i32 or u64.
    pub fn get_usize(&self, key: &str) -> Result<usize> {
        let value = self.value(key)?;
        let v = value.as_i128().ok_or_else(|| expected(key, "an integer", value))?;
        usize::try_from(v).map_err(|_| EngineError::InvalidMetadata {
            key: key.to_string(),
            reason: format!("{v} is out of range"),
        })
    }

    pub fn get_f32(&self, key: &str) -> Result<f32> {
        match self.value(key)? {
            Value::F32(v) => Ok(*v),
            Value::F64(v) => Ok(*v as f32),
            other => Err(expected(key, "a float", other)),
        }
    }

    pub fn get_bool(&self, key: &str) -> Result<bool> {
        match self.value(key)? {
            Value::Bool(b) => Ok(*b),
            other => Err(expected(key, "a bool", other)),
        }
    }

    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>> {
        match self.value(key)? {
            Value::Array(items) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.as_str()),
                    other => Err(expected(key, "strings", other)),
                })
                .collect(),
            other => Err(expected(key, "an array", other)),
        }
    }

    pub fn get_i64_array(&self, key: &str) -> Result<Vec<i64>> {
        match self.value(key)? {
            Value::Array(items) => items
                .iter()
                .map(|v| {
                    v.as_i128()
                        .and_then(|x| i64::try_from(x).ok())
                        .ok_or_else(|| expected(key, "integers", v))
                })
                .collect(),
            other => Err(expected(key, "an array", other)),
        }
    }

    /// Float arrays (SentencePiece scores); integer elements are accepted too, as llama.cpp accepts i32 scores.
    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>> {
        match self.value(key)? {
            Value::Array(items) => items
                .iter()
                .map(|v| match v {
                    Value::F32(x) => Ok(*x),
                    Value::F64(x) => Ok(*x as f32),
                    other => other
                        .as_i128()
                        .map(|x| x as f32)
                        .ok_or_else(|| expected(key, "floats", other)),
                })
                .collect(),
            other => Err(expected(key, "an array", other)),
        }
    }
}

/// Where a file stands in a split set: `Some((split.no, split.count))` for a part of a set of two or more (as
/// llama.cpp, a `split.count` of 0 or 1 is a plain file).
fn split_position(path: &Path, metadata: &HashMap<String, Value>) -> Result<Option<(usize, usize)>> {
    let int = |key: &str| -> Result<Option<usize>> {
        let Some(v) = metadata.get(key) else { return Ok(None) };
        let n = v.as_i128().and_then(|n| usize::try_from(n).ok());
        n.map(Some).ok_or_else(|| EngineError::InvalidGguf {
            path: path.to_path_buf(),
            reason: format!("`{key}` is {v:?}, not a count"),
        })
    };
    let count = int(SPLIT_COUNT)?.unwrap_or(0);
    if count < 2 {
        return Ok(None);
    }
    let no = int(SPLIT_NO)?.ok_or_else(|| EngineError::InvalidGguf {
        path: path.to_path_buf(),
        reason: format!("`{SPLIT_COUNT}` is {count} but `{SPLIT_NO}` is missing"),
    })?;
    if no >= count {
        return Err(EngineError::InvalidGguf {
            path: path.to_path_buf(),
            reason: format!("`{SPLIT_NO}` {no} is not below `{SPLIT_COUNT}` {count}"),
        });
    }
    Ok(Some((no, count)))
}

/// A split part's file name ending (llama.cpp's `-%05d-of-%05d.gguf`, numbered from 1).
fn split_suffix(no: usize, count: usize) -> String {
    format!("-{:05}-of-{count:05}.gguf", no + 1)
}

/// The file name of part `no` (0-based) of a set of `count` named by `prefix`.
fn split_name(prefix: &str, no: usize, count: usize) -> String {
    format!("{prefix}{}", split_suffix(no, count))
}

/// The set's prefix from the file name of its part `no`, if the name follows the rule.
fn split_prefix(file_name: &str, no: usize, count: usize) -> Option<&str> {
    file_name
        .strip_suffix(&split_suffix(no, count))
        .filter(|p| !p.is_empty())
}

fn invalid_tensor(name: &str, reason: String) -> EngineError {
    EngineError::InvalidTensor {
        name: name.to_string(),
        reason,
    }
}

fn expected(key: &str, what: &str, found: &Value) -> EngineError {
    EngineError::InvalidMetadata {
        key: key.to_string(),
        reason: format!("expected {what}, found {}", found.type_name()),
    }
}

/// ggml's name for a type id, for error messages.
fn ggml_type_name(id: u32) -> String {
    let name = match id {
        6 => "Q5_0",
        7 => "Q5_1",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        13 => "Q5_K",
        15 => "Q8_K",
        16..=23 | 29 => "an IQ type",
        30 => "BF16",
        _ => return format!("ggml type {id}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn write_then_read_round_trips() {
        let dir = std::env::temp_dir().join(format!("shoal-gguf-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.gguf");
        let md = [
            ("a.str", Value::String("héllo".into())),
            ("a.u32", Value::U32(7)),
            ("a.f32", Value::F32(1.5)),
            ("a.bool", Value::Bool(true)),
            (
                "a.arr",
                Value::Array(vec![Value::String("x".into()), Value::String("y".into())]),
            ),
            ("a.ints", Value::Array(vec![Value::I32(-1), Value::I32(2)])),
        ];
        let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (*k, v)).collect();
        let data: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let tensors = [TensorData {
            name: "w",
            ggml_type: 0,
            dims: &[2, 2],
            data: &data,
        }];
        write(&mut std::fs::File::create(&path).unwrap(), &md_refs, &tensors).unwrap();
        let mut g = GgufFile::open(&path).unwrap();
        assert_eq!(g.get_str("a.str").unwrap(), "héllo");
        assert_eq!(g.get_usize("a.u32").unwrap(), 7);
        assert_eq!(g.get_f32("a.f32").unwrap(), 1.5);
        assert!(g.get_bool("a.bool").unwrap());
        assert_eq!(g.get_str_array("a.arr").unwrap(), ["x", "y"]);
        assert_eq!(g.get_i64_array("a.ints").unwrap(), [-1, 2]);
        assert!(matches!(g.get_str("a.u32"), Err(EngineError::InvalidMetadata { .. })));
        assert!(matches!(g.get_str("nope"), Err(EngineError::MissingMetadata(_))));
        assert_eq!(g.metadata().map(|(k, _)| k).collect::<Vec<_>>(), md.map(|(k, _)| k));
        let m = g.read_matrix("w").unwrap();
        assert_eq!((m.rows(), m.cols()), (2, 2));
        let mut row = [0.0; 2];
        m.dequantize_row(1, &mut row);
        assert_eq!(row, [3.0, 4.0]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn hostile_headers_are_errors_without_huge_allocations() {
        let dir = std::env::temp_dir().join(format!("shoal-gguf-hostile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("h.gguf");
        let head = |n_tensors: u64, n_kv: u64| {
            let mut v = b"GGUF".to_vec();
            v.extend_from_slice(&3u32.to_le_bytes());
            v.extend_from_slice(&n_tensors.to_le_bytes());
            v.extend_from_slice(&n_kv.to_le_bytes());
            v
        };
        let mut huge_string = head(0, 1);
        huge_string.extend_from_slice(&u64::MAX.to_le_bytes());
        let mut huge_array = head(0, 1);
        huge_array.extend_from_slice(&1u64.to_le_bytes());
        huge_array.push(b'k');
        huge_array.extend_from_slice(&9u32.to_le_bytes());
        huge_array.extend_from_slice(&0u32.to_le_bytes());
        huge_array.extend_from_slice(&(u64::MAX / 2).to_le_bytes());
        let mut bad_version = b"GGUF".to_vec();
        bad_version.extend_from_slice(&1u32.to_le_bytes());
        let cases = [
            huge_string,
            huge_array,
            head(u64::MAX, 0),
            head(0, u64::MAX),
            bad_version,
            b"GGUF".to_vec(),
        ];
        for (i, bytes) in cases.iter().enumerate() {
            std::fs::write(&path, bytes).unwrap();
            let err = GgufFile::open(&path).unwrap_err();
            assert!(matches!(err, EngineError::InvalidGguf { .. }), "case {i}: {err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
