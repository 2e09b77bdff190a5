//! Deserialization that never trusts a length prefix from the wire.
//!
//! imbl's own `Deserialize` for `OrdMap` preallocates `Vec::with_capacity(size_hint)`, and postcard's size hint is
//! the length prefix of the message: one flipped bit there asked for 4 PB and aborted the process (found by the
//! mutated-message property test). Every `OrdMap` field that crosses the wire or the disk deserializes through
//! [`ordmap`], which inserts entry by entry, so memory grows only with bytes actually present.

use std::fmt;
use std::marker::PhantomData;

use imbl::OrdMap;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};

pub fn ordmap<'de, D, K, V>(deserializer: D) -> Result<OrdMap<K, V>, D::Error>
where
    D: Deserializer<'de>,
    K: Deserialize<'de> + Ord + Clone,
    V: Deserialize<'de> + Clone,
{
    struct OrdMapVisitor<K, V>(PhantomData<(K, V)>);

    impl<'de, K, V> Visitor<'de> for OrdMapVisitor<K, V>
    where
        K: Deserialize<'de> + Ord + Clone,
        V: Deserialize<'de> + Clone,
    {
        type Value = OrdMap<K, V>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a map")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
            let mut map = OrdMap::new();
            while let Some((key, value)) = access.next_entry()? {
                map.insert(key, value);
            }
            Ok(map)
        }
    }

    deserializer.deserialize_map(OrdMapVisitor(PhantomData))
}
