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
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use std::sync::Arc;

use crate::bytes::{Mapping, SharedBytes};
use crate::error::{EngineError, Result};
use crate::kernels::{QMatrix, WeightType};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
const MAX_ARRAY_DEPTH: usize = 4;
const MAX_DIMS: usize = 4;
/// The split-set keys, as llama.cpp's `gguf-split` writes them (u16, u16, i32).
const SPLIT_NO: &str = "split.no";
const SPLIT_COUNT: &str = "split.count";
const SPLIT_TENSORS: &str = "split.tensors.count";

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    /// Elements of one type (GGUF arrays are homogeneous; [`write`] checks it).
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::String(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "u8",
            Value::I8(_) => "i8",
            Value::U16(_) => "u16",
            Value::I16(_) => "i16",
            Value::U32(_) => "u32",
            Value::I32(_) => "i32",
            Value::F32(_) => "f32",
            Value::Bool(_) => "bool",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::U64(_) => "u64",
            Value::I64(_) => "i64",
            Value::F64(_) => "f64",
        }
    }

    fn as_i128(&self) -> Option<i128> {
        Some(match self {
            Value::U8(v) => (*v).into(),
            Value::I8(v) => (*v).into(),
            Value::U16(v) => (*v).into(),
            Value::I16(v) => (*v).into(),
            Value::U32(v) => (*v).into(),
            Value::I32(v) => (*v).into(),
            Value::U64(v) => (*v).into(),
            Value::I64(v) => (*v).into(),
            _ => return None,
        })
    }
}

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

/// Reads header fields, counting what is left of the file so no length from it can over-allocate.
struct Header<R> {
    r: R,
    remaining: u64,
    /// Set when a length ran past the bytes at hand: for a prefix of a remote file, "read more" rather than invalid.
    ran_out: bool,
}

type ParseResult<T> = std::result::Result<T, String>;

impl<R: Read> Header<R> {
    fn bytes(&mut self, n: u64) -> ParseResult<Vec<u8>> {
        if n > self.remaining {
            self.ran_out = true;
            return Err(format!(
                "a field of {n} bytes runs past the end of the file (truncated?)"
            ));
        }
        let mut buf = vec![0u8; n as usize];
        self.r
            .read_exact(&mut buf)
            .map_err(|e| format!("reading the header: {e}"))?;
        self.remaining -= n;
        Ok(buf)
    }

    fn array<const N: usize>(&mut self) -> ParseResult<[u8; N]> {
        let v = self.bytes(N as u64)?;
        let mut a = [0u8; N];
        a.copy_from_slice(&v);
        Ok(a)
    }

    fn u32(&mut self) -> ParseResult<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> ParseResult<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn string(&mut self) -> ParseResult<String> {
        let len = self.u64()?;
        String::from_utf8(self.bytes(len)?).map_err(|_| "a string is not UTF-8".to_string())
    }

    fn value(&mut self, ty: u32, depth: usize) -> ParseResult<Value> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>()?[0]),
            1 => Value::I8(i8::from_le_bytes(self.array()?)),
            2 => Value::U16(u16::from_le_bytes(self.array()?)),
            3 => Value::I16(i16::from_le_bytes(self.array()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.array()?)),
            6 => Value::F32(f32::from_le_bytes(self.array()?)),
            7 => match self.array::<1>()?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(format!("invalid bool byte {b}")),
            },
            8 => Value::String(self.string()?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(format!("arrays nested deeper than {MAX_ARRAY_DEPTH}"));
                }
                let elem = self.u32()?;
                let count = self.u64()?;
                // Every element takes at least one byte, so a count beyond the file is a lie.
                if count > self.remaining {
                    self.ran_out = true;
                    return Err(format!("an array of {count} elements is longer than the file"));
                }
                let mut items = Vec::with_capacity((count as usize).min(1 << 16));
                for _ in 0..count {
                    items.push(self.value(elem, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.array()?)),
            12 => Value::F64(f64::from_le_bytes(self.array()?)),
            other => return Err(format!("unknown metadata value type {other}")),
        })
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

/// Bytes of a tensor whose encoding the kernels know; `None` for the others (refused only if a stage loads them).
fn tensor_bytes(info: &TensorInfo) -> Option<u64> {
    let ty = WeightType::from_ggml_id(info.ggml_type)?;
    let elems = info.dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d))?;
    (elems / ty.block_elems() as u64).checked_mul(ty.block_bytes() as u64)
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

/// One tensor for [`write`]: its name, ggml type id, dimensions in ggml order (columns first) and raw bytes.
pub struct TensorData<'a> {
    pub name: &'a str,
    pub ggml_type: u32,
    pub dims: &'a [u64],
    pub data: &'a [u8],
}

/// Writes a GGUF version 3 file (tensor data aligned to 32 bytes). Used by tests to build files; the engine never
/// writes models.
pub fn write(w: &mut impl Write, metadata: &[(&str, &Value)], tensors: &[TensorData<'_>]) -> std::io::Result<()> {
    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    fn value(out: &mut Vec<u8>, v: &Value) -> std::io::Result<()> {
        match v {
            Value::U8(x) => out.push(*x),
            Value::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::Bool(x) => out.push(u8::from(*x)),
            Value::String(s) => string(out, s),
            Value::Array(items) => {
                let elem = items.first().map_or(0, Value::type_id);
                if items.iter().any(|i| i.type_id() != elem) {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "GGUF arrays hold one type",
                    ));
                }
                out.extend_from_slice(&elem.to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for i in items {
                    value(out, i)?;
                }
            }
            Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        }
        Ok(())
    }
    let align = |n: u64| n.div_ceil(DEFAULT_ALIGNMENT) * DEFAULT_ALIGNMENT;
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        string(&mut out, k);
        out.extend_from_slice(&v.type_id().to_le_bytes());
        value(&mut out, v)?;
    }
    let mut offset = 0u64;
    for t in tensors {
        string(&mut out, t.name);
        out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in t.dims {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&t.ggml_type.to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        offset = align(offset + t.data.len() as u64);
    }
    out.resize(align(out.len() as u64) as usize, 0);
    for t in tensors {
        out.extend_from_slice(t.data);
        out.resize(align(out.len() as u64) as usize, 0);
    }
    w.write_all(&out)
}

/// One tensor of a [`GgufHeader`]: its name, dimensions (ggml order), ggml type id and offset in the data section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderTensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    pub offset: u64,
}

impl HeaderTensor {
    /// Bytes of the tensor's data, when the kernels know its encoding (`None` for the others).
    pub fn bytes(&self) -> Option<u64> {
        tensor_bytes(&TensorInfo {
            dims: self.dims.clone(),
            ggml_type: self.ggml_type,
            offset: self.offset,
            part: 0,
        })
    }

    /// ggml's name of the tensor's encoding (`Q4_K`, `BF16`, …), also for encodings the kernels do not know.
    pub fn type_name(&self) -> String {
        match WeightType::from_ggml_id(self.ggml_type) {
            Some(ty) => ty.name().to_string(),
            None => ggml_type_name(self.ggml_type),
        }
    }
}

/// A GGUF header (metadata and tensor directory) parsed from the first bytes of a file, without the file: what a
/// model card is derived from, also for a file on a remote server read with range requests.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufHeader {
    /// Keys and values in file order.
    pub metadata: Vec<(String, Value)>,
    /// In file order.
    pub tensors: Vec<HeaderTensor>,
    /// Where tensor data starts.
    pub data_offset: u64,
    /// The whole file's length.
    pub file_len: u64,
}

/// Why [`parse_header`] gave no header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The prefix ends inside the header: read more of the file and try again.
    #[error("the header runs past the first {have} bytes")]
    NeedMore { have: u64 },
    /// The file is not a valid GGUF (or is truncated).
    #[error("not a valid GGUF file: {0}")]
    Invalid(String),
}

impl GgufHeader {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// An integer value of any width.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key)?.as_i128().and_then(|v| u64::try_from(v).ok())
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        match self.get(key)? {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
}

/// Parses the header of a GGUF file of `file_len` bytes from its first bytes, `prefix` (which may be the whole
/// file). The same checks as [`GgufFile::open`] (lengths against what remains of the file, nesting, dimensions,
/// every known tensor ending inside the file); a prefix that ends inside the header is [`HeaderError::NeedMore`].
pub fn parse_header(prefix: &[u8], file_len: u64) -> std::result::Result<GgufHeader, HeaderError> {
    let prefix = &prefix[..prefix.len().min(usize::try_from(file_len).unwrap_or(usize::MAX))];
    // Lengths are checked against the prefix, not the file: a lying length in a remote file of many GB must not
    // allocate before the bytes are here.
    let have = prefix.len() as u64;
    let mut h = Header {
        r: prefix,
        remaining: have,
        ran_out: false,
    };
    match parse_header_fields(&mut h, have, file_len) {
        Ok(header) => Ok(header),
        Err(_) if have < file_len && h.ran_out => Err(HeaderError::NeedMore { have }),
        Err(reason) => Err(HeaderError::Invalid(reason)),
    }
}

fn parse_header_fields(h: &mut Header<&[u8]>, have: u64, file_len: u64) -> ParseResult<GgufHeader> {
    if &h.array::<4>()? != MAGIC {
        return Err("no GGUF magic at the start".into());
    }
    let version = h.u32()?;
    if !(2..=3).contains(&version) {
        return Err(format!("GGUF version {version} (supported: 2 and 3)"));
    }
    let n_tensors = h.u64()?;
    let n_kv = h.u64()?;
    if n_tensors > h.remaining || n_kv > h.remaining {
        h.ran_out = true;
        return Err(format!("{n_tensors} tensors and {n_kv} keys cannot fit in the file"));
    }
    let mut metadata: Vec<(String, Value)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..n_kv {
        let key = h.string()?;
        let ty = h.u32()?;
        let value = h.value(ty, 0)?;
        if !seen.insert(key.clone()) {
            return Err(format!("metadata key `{key}` appears twice"));
        }
        metadata.push((key, value));
    }
    let mut tensors = Vec::new();
    let mut names = std::collections::HashSet::new();
    for _ in 0..n_tensors {
        let name = h.string()?;
        let n_dims = h.u32()? as usize;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(format!("tensor `{name}` has {n_dims} dimensions"));
        }
        let dims = (0..n_dims).map(|_| h.u64()).collect::<ParseResult<Vec<_>>>()?;
        let ggml_type = h.u32()?;
        let offset = h.u64()?;
        if !names.insert(name.clone()) {
            return Err(format!("tensor `{name}` appears twice"));
        }
        tensors.push(HeaderTensor {
            name,
            dims,
            ggml_type,
            offset,
        });
    }
    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, v)) => match v.as_i128() {
            Some(a) if a > 0 && (a as u64).is_power_of_two() => a as u64,
            _ => return Err(format!("general.alignment {v:?} is not a power of two")),
        },
    };
    let header_end = have - h.remaining;
    let data_offset = header_end.div_ceil(alignment) * alignment;
    for t in &tensors {
        let Some(bytes) = t.bytes() else { continue };
        let end = data_offset.saturating_add(t.offset).saturating_add(bytes);
        if end > file_len {
            return Err(format!(
                "tensor `{}` ends at byte {end} but the file has only {file_len} bytes (truncated?)",
                t.name
            ));
        }
    }
    Ok(GgufHeader {
        metadata,
        tensors,
        data_offset,
        file_len,
    })
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
