//! Thin, error-mapped access to a GGUF file: metadata getters and loading of single tensors, so that a stage reads
//! only the tensors of its own layers.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Device;
use candle_core::quantized::{QTensor, gguf_file};

use crate::error::{EngineError, Result};

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

    pub fn load(&mut self, name: &str, device: &Device) -> Result<Arc<QTensor>> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| EngineError::MissingTensor(name.to_string()))?;
        let t = info
            .read(&mut self.reader, self.content.tensor_data_offset, device)
            .map_err(|e| EngineError::InvalidTensor {
                name: name.to_string(),
                reason: e.to_string(),
            })?;
        Ok(Arc::new(t))
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
