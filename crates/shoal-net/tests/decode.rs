//! Fuzzing the network decoders: no byte string a peer can send makes a node panic, and every message is either
//! decoded or counted under exactly one reason (§2.1, §12).
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use shoal_net::{Counters, decode_counted};
use shoal_types::wire::{
    DownMsg, ElectionMsg, RangeReply, RangeRequest, SnapshotChunk, SnapshotHeader, SnapshotRequest, TransientEnvelope,
    UpMsg,
};
use shoal_types::{NodeId, Pos, codec};

/// Decodes `bytes` as every message type a node accepts; returns how many decoded.
fn decode_all(bytes: &[u8], counters: &Counters) -> u64 {
    let mut ok = 0;
    ok += u64::from(decode_counted::<ElectionMsg>(bytes, "election", counters).is_some());
    ok += u64::from(decode_counted::<UpMsg>(bytes, "up", counters).is_some());
    ok += u64::from(decode_counted::<DownMsg>(bytes, "down", counters).is_some());
    ok += u64::from(decode_counted::<TransientEnvelope>(bytes, "ctl", counters).is_some());
    ok += u64::from(decode_counted::<RangeRequest>(bytes, "range", counters).is_some());
    ok += u64::from(decode_counted::<RangeReply>(bytes, "range", counters).is_some());
    ok += u64::from(decode_counted::<SnapshotRequest>(bytes, "snapshot", counters).is_some());
    ok += u64::from(decode_counted::<SnapshotHeader>(bytes, "snapshot", counters).is_some());
    ok += u64::from(decode_counted::<SnapshotChunk>(bytes, "snapshot", counters).is_some());
    ok
}

fn accounted(counters: &Counters, ok: u64) {
    let c = counters.snapshot();
    assert_eq!(c.received, 9);
    assert_eq!(ok + c.malformed + c.incompatible + c.oversized, c.received, "{c:?}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let counters = Counters::default();
        let ok = decode_all(&bytes, &counters);
        accounted(&counters, ok);
    }

    #[test]
    fn corrupted_real_messages_never_panic(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8), cut in any::<usize>()) {
        let request = RangeRequest { after: Pos::EMPTY, max: 10_000 };
        let reply = RangeReply::End { head: 41 };
        let snapshot = SnapshotRequest { requester: NodeId::from_bytes([0x55; 16]) };
        for mut bytes in [codec::encode(&request).unwrap(), codec::encode(&reply).unwrap(), codec::encode(&snapshot).unwrap()] {
            for (at, value) in &flips {
                let i = at % bytes.len();
                bytes[i] ^= value;
            }
            bytes.truncate(cut % (bytes.len() + 1));
            let counters = Counters::default();
            let ok = decode_all(&bytes, &counters);
            accounted(&counters, ok);
        }
    }
}

#[test]
fn another_version_is_counted_as_incompatible() {
    let mut bytes = codec::encode(&RangeRequest {
        after: Pos::EMPTY,
        max: 1,
    })
    .unwrap();
    bytes[0] = 2;
    let counters = Counters::default();
    assert!(decode_counted::<RangeRequest>(&bytes, "range", &counters).is_none());
    assert_eq!(counters.snapshot().incompatible, 1);
}

#[test]
fn an_oversized_message_is_refused_before_decoding() {
    let bytes = vec![1u8; shoal_net::MAX_MESSAGE_BYTES + 1];
    let counters = Counters::default();
    assert!(decode_counted::<SnapshotChunk>(&bytes, "snapshot", &counters).is_none());
    assert_eq!(counters.snapshot().oversized, 1);
}
