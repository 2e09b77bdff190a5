//! The GGUF header (metadata and tensor directory), parsed from bytes: a whole mapped file, or the first bytes of a
//! remote one read with range requests. Every length read from the file is checked against the bytes that remain
//! before anything is allocated.

use std::io::Read;

use super::{DEFAULT_ALIGNMENT, MAGIC, MAX_ARRAY_DEPTH, MAX_DIMS, ggml_type_name};
use crate::kernels::WeightType;

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
    pub(crate) fn type_id(&self) -> u32 {
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

    pub(crate) fn type_name(&self) -> &'static str {
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

    pub(crate) fn as_i128(&self) -> Option<i128> {
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
        let ty = WeightType::from_ggml_id(self.ggml_type)?;
        let elems = self.dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d))?;
        (elems / ty.block_elems() as u64).checked_mul(ty.block_bytes() as u64)
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
