//! Identifiers (SYSTEM.md §2.2).
//!
//! Every id serializes as a string in human-readable formats (JSON) and as raw bytes in compact ones (postcard), so
//! `/state` is readable and the wire stays small.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// A node's identity: 16 random bytes, created once and persisted in `<data_dir>/node_id`; also the zenoh session id.
///
/// Text form: 32 lowercase hex characters. Generated ids never start with `0` so the text round-trips as a zenoh id
/// (zenoh drops leading zero bytes); the all-zero id is reserved for [`SessionId::NONE`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NodeId([u8; 16]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid node id {text:?}: expected 32 lowercase hex characters")]
pub struct NodeIdParseError {
    pub text: String,
}

impl NodeId {
    pub const ZERO: NodeId = NodeId([0; 16]);

    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        NodeId(bytes)
    }

    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Makes a node id from random bytes, or `None` when they would give a text form starting with `0`; the caller
    /// draws again (the rule of §2.2).
    pub fn from_random(bytes: [u8; 16]) -> Option<Self> {
        (bytes[0] >> 4 != 0).then_some(NodeId(bytes))
    }

    /// True when the id is usable as a node's own id (not the reserved zero id, no leading `0` in its text).
    pub fn is_valid_generated(&self) -> bool {
        self.0[0] >> 4 != 0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 32];
        // Encoding 16 bytes into 32 always fits.
        if hex::encode_to_slice(self.0, &mut buf).is_err() {
            return Err(fmt::Error);
        }
        f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

impl FromStr for NodeId {
    type Err = NodeIdParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || NodeIdParseError { text: s.to_owned() };
        if s.len() != 32 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(err());
        }
        let mut bytes = [0u8; 16];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| err())?;
        Ok(NodeId(bytes))
    }
}

impl Serialize for NodeId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            serializer.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NodeIdVisitor;
        impl<'de> Visitor<'de> for NodeIdVisitor {
            type Value = NodeId;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a node id (32 hex characters or 16 bytes)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<NodeId, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<NodeId, E> {
                let bytes: [u8; 16] = v.try_into().map_err(|_| E::invalid_length(v.len(), &self))?;
                Ok(NodeId(bytes))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<NodeId, A::Error> {
                let mut bytes = [0u8; 16];
                for (i, slot) in bytes.iter_mut().enumerate() {
                    *slot = seq.next_element()?.ok_or_else(|| de::Error::invalid_length(i, &self))?;
                }
                Ok(NodeId(bytes))
            }
        }
        if deserializer.is_human_readable() {
            deserializer.deserialize_str(NodeIdVisitor)
        } else {
            deserializer.deserialize_bytes(NodeIdVisitor)
        }
    }
}

macro_rules! uuid_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            pub const fn from_u128(v: u128) -> Self {
                $name(Uuid::from_u128(v))
            }
            pub const fn from_bytes(bytes: [u8; 16]) -> Self {
                $name(Uuid::from_bytes(bytes))
            }
            /// A fresh random (v4) id. Only shells call this; pure code takes ids from an `IdSource`.
            pub fn new_random() -> Self {
                $name(Uuid::new_v4())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map($name)
            }
        }
    };
}

uuid_id!(
    /// Id of a command, chosen by the API node that sends it; the master deduplicates by it.
    CommandId
);
uuid_id!(
    /// Id of a generation task, chosen by the master.
    TaskId
);
uuid_id!(
    /// Id of a model instance, chosen by the master (or by the user for `CreateInstance`).
    InstanceId
);
uuid_id!(
    /// Id of a runner (one per node of an instance), chosen by the master.
    RunnerId
);
uuid_id!(
    /// Id of a deployment (the durable "keep this model placed" request), chosen by the API.
    DeploymentId
);

/// A model id `org/name` (or a custom id). Short aliases are resolved to ids through the cards, never stored.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ModelId(pub String);

impl ModelId {
    pub fn new(id: impl Into<String>) -> Self {
        ModelId(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The form used for file and directory names: `/` becomes `--`.
    pub fn file_name(&self) -> String {
        self.0.replace('/', "--")
    }
}

impl fmt::Display for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ModelId({})", self.0)
    }
}

impl From<&str> for ModelId {
    fn from(s: &str) -> Self {
        ModelId(s.to_owned())
    }
}

/// A master's session: `(term, master)`, ordered by term then master id (§7).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct SessionId {
    pub term: u64,
    pub master: NodeId,
}

impl SessionId {
    pub const NONE: SessionId = SessionId {
        term: 0,
        master: NodeId::ZERO,
    };

    /// The key-expression form `<term>.<master_id>` (§12).
    pub fn key_form(&self) -> String {
        format!("{}.{}", self.term, self.master)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.term, self.master)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

/// The position of the last applied event: its idx and the session that indexed it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Pos {
    pub idx: i64,
    pub session: SessionId,
}

impl Pos {
    pub const EMPTY: Pos = Pos {
        idx: -1,
        session: SessionId::NONE,
    };
}

impl Default for Pos {
    fn default() -> Self {
        Pos::EMPTY
    }
}

impl fmt::Debug for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pos({}@{})", self.idx, self.session)
    }
}

/// Who produced an event: a node and a random number per process start, so a restarted node's fresh sequence
/// numbers are never taken for duplicates of its previous life's.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct Origin {
    pub node: NodeId,
    pub boot: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_text_round_trip_and_rules() {
        let id = NodeId::from_bytes([0x3f; 16]);
        let text = id.to_string();
        assert_eq!(text, "3f".repeat(16));
        assert_eq!(text.parse::<NodeId>(), Ok(id));
        assert!(id.is_valid_generated());
        assert!(NodeId::from_random([0x0f; 16]).is_none(), "text would start with 0");
        assert!(NodeId::from_random([0x10; 16]).is_some());
        assert!(
            "3F".repeat(16).parse::<NodeId>().is_err(),
            "uppercase is not the canonical form"
        );
        assert!("3f".repeat(15).parse::<NodeId>().is_err());
        assert!("zz".repeat(16).parse::<NodeId>().is_err());
    }

    #[test]
    fn ids_are_strings_in_json_and_bytes_in_postcard() {
        let id = NodeId::from_bytes([0xab; 16]);
        assert_eq!(
            serde_json::to_string(&id).ok(),
            Some(format!("\"{}\"", "ab".repeat(16)))
        );
        let bytes = postcard::to_allocvec(&id).unwrap_or_default();
        assert_eq!(bytes.len(), 17, "length prefix + 16 raw bytes");
        assert_eq!(postcard::from_bytes::<NodeId>(&bytes).ok(), Some(id));

        let task = TaskId::from_u128(7);
        let json = serde_json::to_string(&task).unwrap_or_default();
        assert_eq!(json, "\"00000000-0000-0000-0000-000000000007\"");
        assert_eq!(postcard::to_allocvec(&task).map(|b| b.len()).ok(), Some(17));
    }

    #[test]
    fn session_order_is_term_then_master() {
        let a = SessionId {
            term: 1,
            master: NodeId::from_bytes([0xff; 16]),
        };
        let b = SessionId {
            term: 2,
            master: NodeId::from_bytes([0x10; 16]),
        };
        let c = SessionId {
            term: 2,
            master: NodeId::from_bytes([0x20; 16]),
        };
        assert!(SessionId::NONE < a && a < b && b < c);
        assert_eq!(
            serde_json::to_string(&b).unwrap_or_default(),
            format!("{{\"term\":2,\"master\":\"{}\"}}", "10".repeat(16))
        );
    }

    #[test]
    fn model_id_file_name() {
        assert_eq!(
            ModelId::from("HuggingFaceTB/SmolLM2-135M-Instruct").file_name(),
            "HuggingFaceTB--SmolLM2-135M-Instruct"
        );
    }
}
