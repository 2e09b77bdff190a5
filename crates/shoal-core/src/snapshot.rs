//! The snapshot codec (SYSTEM.md §6): State at idx N ⇄ compressed, hashed, schema-versioned bytes.
//!
//! `body = zstd_level_3(postcard(State))`, `sha256` over the body. Decoding checks, in order: schema, hash, the
//! 1 GiB decompression cap, the postcard decode, the State's own schema and its position against the header. Any
//! failure is an error naming the cause; nothing partial is ever returned.

use std::io::Read;

use sha2::{Digest, Sha256};
use shoal_types::wire::SnapshotBlob;
use shoal_types::{DecodeError, STATE_SCHEMA, State, codec};

pub const ZSTD_LEVEL: i32 = 3;
/// Decompressed States larger than this are refused (a corrupt or hostile body cannot exhaust memory).
pub const DECOMPRESSED_CAP: u64 = 1 << 30;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot schema {got} is not this node's {want}: incompatible shoal version")]
    Schema { got: u16, want: u16 },
    #[error("snapshot hash mismatch: corrupt or truncated body")]
    Hash,
    #[error("snapshot body does not decompress: {0}")]
    Decompress(String),
    #[error("snapshot decompresses to more than {DECOMPRESSED_CAP} bytes")]
    TooLarge,
    #[error("snapshot State does not decode: {0}")]
    Decode(String),
    #[error("snapshot State is at {state} but its header says {header}")]
    Pos { state: String, header: String },
    #[error("snapshot cannot be encoded: {0}")]
    Encode(String),
    #[error("snapshot envelope: {0}")]
    Envelope(#[from] DecodeError),
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

pub fn encode(state: &State) -> Result<SnapshotBlob, SnapshotError> {
    let raw = postcard::to_allocvec(state).map_err(|e| SnapshotError::Encode(e.to_string()))?;
    let body = zstd::bulk::compress(&raw, ZSTD_LEVEL).map_err(|e| SnapshotError::Encode(e.to_string()))?;
    Ok(SnapshotBlob {
        schema: state.schema,
        pos: state.pos,
        sha256: sha256(&body),
        body,
    })
}

pub fn decode(blob: &SnapshotBlob) -> Result<State, SnapshotError> {
    if blob.schema != STATE_SCHEMA {
        return Err(SnapshotError::Schema {
            got: blob.schema,
            want: STATE_SCHEMA,
        });
    }
    if sha256(&blob.body) != blob.sha256 {
        return Err(SnapshotError::Hash);
    }
    let mut raw = Vec::new();
    let decoder =
        zstd::stream::read::Decoder::new(blob.body.as_slice()).map_err(|e| SnapshotError::Decompress(e.to_string()))?;
    decoder
        .take(DECOMPRESSED_CAP + 1)
        .read_to_end(&mut raw)
        .map_err(|e| SnapshotError::Decompress(e.to_string()))?;
    if raw.len() as u64 > DECOMPRESSED_CAP {
        return Err(SnapshotError::TooLarge);
    }
    let (state, rest): (State, _) =
        postcard::take_from_bytes(&raw).map_err(|e| SnapshotError::Decode(e.to_string()))?;
    if !rest.is_empty() {
        return Err(SnapshotError::Decode(format!("{} trailing bytes", rest.len())));
    }
    if state.schema != STATE_SCHEMA {
        return Err(SnapshotError::Schema {
            got: state.schema,
            want: STATE_SCHEMA,
        });
    }
    if state.pos != blob.pos {
        return Err(SnapshotError::Pos {
            state: format!("{:?}", state.pos),
            header: format!("{:?}", blob.pos),
        });
    }
    Ok(state)
}

/// The whole snapshot as one versioned byte string (`[v][postcard(SnapshotBlob)]`): a checkpoint on disk.
pub fn to_bytes(state: &State) -> Result<Vec<u8>, SnapshotError> {
    codec::encode(&encode(state)?).map_err(|e| SnapshotError::Encode(e.to_string()))
}

pub fn from_bytes(bytes: &[u8]) -> Result<State, SnapshotError> {
    decode(&codec::decode::<SnapshotBlob>(bytes)?)
}
