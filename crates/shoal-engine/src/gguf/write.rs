//! A small GGUF writer: the tests build malformed, synthetic and split files with it.

use std::io::Write;

use super::{DEFAULT_ALIGNMENT, MAGIC, Value};

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
