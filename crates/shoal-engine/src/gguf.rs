//! Thin, error-mapped access to a GGUF file: metadata getters and loading of single tensors, so that a stage reads
//! only the tensors of its own layers.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::quantized::{GgmlDType, gguf_file};

use crate::error::{EngineError, Result};
use crate::kernels::{QMatrix, WeightType};

pub struct GgufFile {
    path: PathBuf,
    content: gguf_file::Content,
    reader: BufReader<File>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("tensors", &self.content.tensor_infos.len())
            .finish()
    }
}

impl GgufFile {
    /// Reads the header (metadata and tensor directory) only; tensor data is read on demand.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|source| EngineError::Io {
            path: path.clone(),
            source,
        })?;
        let mut reader = BufReader::new(file);
        let content = gguf_file::Content::read(&mut reader).map_err(|e| EngineError::InvalidGguf {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        // candle checks each tensor's bounds only when it is read; checking the directory up front turns a
        // truncated download into one clear error at open instead of a failure halfway through loading.
        let file_len = reader
            .get_ref()
            .metadata()
            .map_err(|source| EngineError::Io {
                path: path.clone(),
                source,
            })?
            .len();
        for (name, info) in &content.tensor_infos {
            let block = info.ggml_dtype.block_size();
            let bytes = (info.shape.elem_count() / block.max(1)) as u64 * info.ggml_dtype.type_size() as u64;
            let end = content
                .tensor_data_offset
                .saturating_add(info.offset)
                .saturating_add(bytes);
            if end > file_len {
                return Err(EngineError::InvalidGguf {
                    path,
                    reason: format!(
                        "tensor `{name}` ends at byte {end} but the file has only {file_len} bytes (truncated?)"
                    ),
                });
            }
        }
        Ok(Self { path, content, reader })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    pub fn tensor_shape(&self, name: &str) -> Option<&[usize]> {
        self.content.tensor_infos.get(name).map(|i| i.shape.dims())
    }

    /// Reads one tensor's bytes as a matrix: rows are the outer GGUF dimension, columns the inner (contiguous) one;
    /// a 1-D tensor is one row.
    pub fn read_matrix(&mut self, name: &str) -> Result<QMatrix> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| EngineError::MissingTensor(name.to_string()))?;
        let ty = weight_type(info.ggml_dtype).ok_or_else(|| EngineError::UnsupportedQuant {
            name: name.to_string(),
            ty: format!("{:?}", info.ggml_dtype),
        })?;
        // candle reverses ggml's dims, so the last one is the contiguous (column) dimension.
        let dims = info.shape.dims();
        let (rows, cols) = match dims {
            [cols] => (1, *cols),
            [rows, cols] => (*rows, *cols),
            _ => {
                return Err(EngineError::InvalidTensor {
                    name: name.to_string(),
                    reason: format!("shape {dims:?} is not a vector or a matrix"),
                });
            }
        };
        let invalid = |reason: String| EngineError::InvalidTensor {
            name: name.to_string(),
            reason,
        };
        if !cols.is_multiple_of(ty.block_elems()) {
            return Err(invalid(format!("{cols} columns are not whole {} blocks", ty.name())));
        }
        let len = rows
            .checked_mul(ty.row_bytes(cols))
            .ok_or_else(|| invalid(format!("shape {dims:?} overflows")))?;
        let mut data = vec![0u8; len];
        let at = self.content.tensor_data_offset.saturating_add(info.offset);
        self.reader
            .seek(SeekFrom::Start(at))
            .and_then(|_| self.reader.read_exact(&mut data))
            .map_err(|e| invalid(format!("reading {len} bytes at offset {at}: {e}")))?;
        QMatrix::new(ty, rows, cols, data).map_err(|e| invalid(e.to_string()))
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

    fn value(&self, key: &str) -> Result<&gguf_file::Value> {
        self.content
            .metadata
            .get(key)
            .ok_or_else(|| EngineError::MissingMetadata(key.to_string()))
    }

    pub fn has_key(&self, key: &str) -> bool {
        self.content.metadata.contains_key(key)
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.value(key)?
            .to_string()
            .map(String::as_str)
            .map_err(|e| invalid(key, e))
    }

    /// Accepts any integer width: converters disagree on whether counts are u32, i32 or u64.
    pub fn get_usize(&self, key: &str) -> Result<usize> {
        use gguf_file::Value as V;
        let v: i128 = match self.value(key)? {
            V::U8(v) => (*v).into(),
            V::I8(v) => (*v).into(),
            V::U16(v) => (*v).into(),
            V::I16(v) => (*v).into(),
            V::U32(v) => (*v).into(),
            V::I32(v) => (*v).into(),
            V::U64(v) => (*v).into(),
            V::I64(v) => (*v).into(),
            other => {
                return Err(EngineError::InvalidMetadata {
                    key: key.to_string(),
                    reason: format!("expected an integer, found {:?}", other.value_type()),
                });
            }
        };
        usize::try_from(v).map_err(|_| EngineError::InvalidMetadata {
            key: key.to_string(),
            reason: format!("{v} is out of range"),
        })
    }

    pub fn get_f32(&self, key: &str) -> Result<f32> {
        use gguf_file::Value as V;
        match self.value(key)? {
            V::F32(v) => Ok(*v),
            V::F64(v) => Ok(*v as f32),
            other => Err(EngineError::InvalidMetadata {
                key: key.to_string(),
                reason: format!("expected a float, found {:?}", other.value_type()),
            }),
        }
    }

    pub fn get_bool(&self, key: &str) -> Result<bool> {
        self.value(key)?.to_bool().map_err(|e| invalid(key, e))
    }

    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>> {
        let arr = self.value(key)?.to_vec().map_err(|e| invalid(key, e))?;
        arr.iter()
            .map(|v| v.to_string().map(String::as_str).map_err(|e| invalid(key, e)))
            .collect()
    }

    pub fn get_i64_array(&self, key: &str) -> Result<Vec<i64>> {
        use gguf_file::Value as V;
        let arr = self.value(key)?.to_vec().map_err(|e| invalid(key, e))?;
        arr.iter()
            .map(|v| match v {
                V::I32(x) => Ok(i64::from(*x)),
                V::U32(x) => Ok(i64::from(*x)),
                V::I8(x) => Ok(i64::from(*x)),
                V::U8(x) => Ok(i64::from(*x)),
                V::I64(x) => Ok(*x),
                other => Err(EngineError::InvalidMetadata {
                    key: key.to_string(),
                    reason: format!("expected integers, found {:?}", other.value_type()),
                }),
            })
            .collect()
    }
}

fn invalid(key: &str, e: candle_core::Error) -> EngineError {
    EngineError::InvalidMetadata {
        key: key.to_string(),
        reason: e.to_string(),
    }
}

/// The GGUF encodings our kernels run; the others are refused at load with the tensor named.
fn weight_type(t: GgmlDType) -> Option<WeightType> {
    Some(match t {
        GgmlDType::F32 => WeightType::F32,
        GgmlDType::F16 => WeightType::F16,
        GgmlDType::Q4_0 => WeightType::Q4_0,
        GgmlDType::Q4_1 => WeightType::Q4_1,
        GgmlDType::Q8_0 => WeightType::Q8_0,
        GgmlDType::Q4K => WeightType::Q4K,
        GgmlDType::Q6K => WeightType::Q6K,
        _ => return None,
    })
}
