//! The internal wire and disk encoding: `[version: u8 = 1][postcard(value)]` (SYSTEM.md §2.1).
//!
//! postcard is not self-describing, so every type that passes through here avoids `skip_serializing_if`,
//! `flatten`, `untagged` and internally/adjacently tagged enums; a unit test round-trips each of them.

use serde::Serialize;
use serde::de::DeserializeOwned;

pub const WIRE_VERSION: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty message")]
    Empty,
    #[error("unsupported wire version {got} (this node speaks {WIRE_VERSION})")]
    Version { got: u8 },
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot encode {type_name}: {message}")]
pub struct EncodeError {
    pub type_name: &'static str,
    pub message: String,
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, EncodeError> {
    let mut out = vec![WIRE_VERSION];
    postcard::to_io(value, &mut out).map_err(|e| EncodeError {
        type_name: std::any::type_name::<T>(),
        message: e.to_string(),
    })?;
    Ok(out)
}

/// Decodes a whole message; garbage, another version, truncation or trailing bytes are errors, never panics.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if version != WIRE_VERSION {
        return Err(DecodeError::Version { got: version });
    }
    let (value, rest) = postcard::take_from_bytes(body).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(DecodeError::Trailing(rest.len()));
    }
    Ok(value)
}

/// [`decode`] with a size limit checked before any work.
pub fn decode_limited<T: DeserializeOwned>(bytes: &[u8], max: usize) -> Result<T, DecodeError> {
    if bytes.len() > max {
        return Err(DecodeError::TooLarge { len: bytes.len(), max });
    }
    decode(bytes)
}
