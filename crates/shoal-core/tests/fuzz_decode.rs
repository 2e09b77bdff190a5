//! Fuzzing every decoder of bytes a node reads from the network or its disk (issue 15): every message type a peer
//! can send (§2.1), the log entries and checkpoints the store replays, and the snapshot a new node installs. Whatever
//! the bytes (arbitrary, or a valid encoding with random edits), decoding returns a value or an error and never
//! panics; a decoded value re-encodes; a decoded event applies to a live State without panicking (the reducers are
//! total). `SHOAL_FUZZ_CASES=1000000` runs the long version.
#![allow(clippy::unwrap_used)]

#[path = "../../shoal-types/tests/fuzz_support/mod.rs"]
mod fuzz_support;

use std::sync::LazyLock;

use fuzz_support::{bytes_after, edits, mutate};
use proptest::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use shoal_core::snapshot;
use shoal_core::testing::{EventGen, Mix};
use shoal_types::chunk::{FinishReason, TopLogprob};
use shoal_types::params::{PromptRef, ToolCall};
use shoal_types::wire::*;
use shoal_types::*;

fn node(i: u8) -> NodeId {
    NodeId::from_bytes([0x20 + i; 16])
}

/// A State that has seen a mixed history, and the events that built it.
static HISTORY: LazyLock<(State, Vec<IndexedEvent>)> = LazyLock::new(|| {
    let mut generator = EventGen::new(7, Mix::Chaos);
    let events = generator.take_events(300);
    (generator.state().clone(), events)
});

/// The live State as a snapshot.
static BLOB: LazyLock<SnapshotBlob> = LazyLock::new(|| snapshot::encode(&HISTORY.0).unwrap());

fn params() -> GenerationParams {
    GenerationParams {
        model: "smollm2-135m".into(),
        messages: vec![
            Message::new(Role::System, "be brief"),
            Message {
                role: Role::Assistant,
                content: String::new(),
                tool_calls: vec![ToolCall {
                    id: "c1".into(),
                    name: "f".into(),
                    arguments: "{\"a\":1}".into(),
                }],
                tool_call_id: None,
                reasoning: Some("think".into()),
            },
        ],
        tools: Some("[{\"type\":\"function\"}]".into()),
        temperature: Some(0.5),
        stop: vec!["\n\n".into()],
        top_logprobs: Some(3),
        constraint: Some(Constraint::JsonSchema {
            schema: "{\"type\":\"object\"}".into(),
            strict: true,
        }),
        ..Default::default()
    }
}

/// A valid encoding of every kind of message and record.
static SAMPLES: LazyLock<Vec<Vec<u8>>> = LazyLock::new(|| {
    let (state, events) = &*HISTORY;
    let session = SessionId {
        term: 3,
        master: node(0),
    };
    let mut out = Vec::new();
    for e in events.iter().step_by(10) {
        out.push(codec::encode(e).unwrap());
        out.push(codec::encode(&DownMsg::Event(Box::new(e.clone()))).unwrap());
        out.push(
            codec::encode(&UpMsg {
                origin: Origin { node: node(1), boot: 1 },
                seq: 3,
                floor: 1,
                event: e.event.clone(),
            })
            .unwrap(),
        );
    }
    out.push(codec::encode(&DownMsg::Head { idx: 19 }).unwrap());
    out.push(
        codec::encode(&RangeRequest {
            after: state.pos,
            max: 10_000,
        })
        .unwrap(),
    );
    out.push(
        codec::encode(&RangeReply::Events {
            events: events[..5].to_vec(),
        })
        .unwrap(),
    );
    out.push(codec::encode(&RangeReply::End { head: 19 }).unwrap());
    out.push(codec::encode(&SnapshotRequest { requester: node(3) }).unwrap());
    out.push(
        codec::encode(&PromptRequest {
            command_id: CommandId::from_u128(9),
            requester: node(2),
        })
        .unwrap(),
    );
    out.push(
        codec::encode(&PromptReply::Found {
            salt: [3; 16],
            params: Box::new(params()),
        })
        .unwrap(),
    );
    out.push(
        codec::encode(&CommandEnvelope {
            session,
            origin: node(1),
            command_id: CommandId::from_u128(1),
            sent_ms: 5,
            command: Command::TextGeneration {
                params: params(),
                prompt: PromptRef {
                    bytes: 12,
                    messages: 2,
                    digest: [7; 32],
                },
            },
        })
        .unwrap(),
    );
    let chunk = Chunk::Token {
        text: "héllo".into(),
        token_id: 17,
        is_thinking: false,
        logprob: Some(-0.25),
        top_logprobs: vec![TopLogprob {
            token: "h".into(),
            token_id: 3,
            logprob: -1.5,
            bytes: vec![b'h'],
        }],
        finish: Some(FinishReason::Stop),
        usage: None,
        stats: None,
        token_bytes: vec![0xc3],
    };
    let body = Transient::Chunk {
        command_id: CommandId::from_u128(1),
        task_id: TaskId::from_u128(2),
        seq: 4,
        chunk,
    };
    out.push(
        codec::encode(&TransientEnvelope {
            from: node(2),
            session,
            body,
        })
        .unwrap(),
    );
    out.push(
        codec::encode(&ElectionMsg::Campaign {
            term: 4,
            candidate: Candidate {
                node: node(1),
                last: state.pos,
                priority: 1,
                incumbent: false,
            },
        })
        .unwrap(),
    );
    let blob = &*BLOB;
    out.push(
        codec::encode(&SnapshotHeader {
            schema: blob.schema,
            wire: codec::WIRE_VERSION,
            master_session: session,
            pos: blob.pos,
            body_len: blob.body.len() as u64,
            sha256: blob.sha256,
            chunks: 1,
        })
        .unwrap(),
    );
    out.push(
        codec::encode(&SnapshotChunk {
            index: 0,
            bytes: blob.body[..64].to_vec(),
        })
        .unwrap(),
    );
    out.push(snapshot::to_bytes(state).unwrap());
    out
});

/// Decodes `bytes` as `T`; a value must encode again. Returns the value.
fn decoded<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    let value = codec::decode::<T>(bytes).ok()?;
    codec::encode(&value).unwrap();
    Some(value)
}

/// Applies `event` as the next entry after the live State: the reducers take any event a peer or the disk holds.
fn applies(event: Event) {
    let (state, _) = &*HISTORY;
    let next = IndexedEvent {
        idx: (state.pos.idx + 1) as u64,
        session: state.pos.session,
        prev: state.pos.session,
        time_ms: 1,
        origin: None,
        event,
    };
    shoal_core::apply(state, &next).unwrap();
}

/// Every decoder of network and disk bytes; returns how many accepted `bytes`.
fn decode_all(bytes: &[u8]) -> usize {
    let mut ok = 0;
    ok += usize::from(decoded::<ElectionMsg>(bytes).is_some());
    ok += usize::from(decoded::<TransientEnvelope>(bytes).is_some());
    ok += usize::from(decoded::<CommandEnvelope>(bytes).is_some());
    ok += usize::from(decoded::<RangeRequest>(bytes).is_some());
    ok += usize::from(decoded::<SnapshotRequest>(bytes).is_some());
    ok += usize::from(decoded::<SnapshotHeader>(bytes).is_some());
    ok += usize::from(decoded::<SnapshotChunk>(bytes).is_some());
    ok += usize::from(decoded::<PromptRequest>(bytes).is_some());
    ok += usize::from(decoded::<PromptReply>(bytes).is_some());
    if let Some(up) = decoded::<UpMsg>(bytes) {
        applies(up.event);
        ok += 1;
    }
    if let Some(down) = decoded::<DownMsg>(bytes) {
        if let DownMsg::Event(e) = down {
            applies(e.event);
        }
        ok += 1;
    }
    if let Some(RangeReply::Events { events }) = decoded::<RangeReply>(bytes) {
        events.into_iter().for_each(|e| applies(e.event));
        ok += 1;
    }
    // The store: a log entry, and a checkpoint (decoded, hash-checked, decompressed, decoded again).
    if let Some(e) = decoded::<IndexedEvent>(bytes) {
        applies(e.event);
        ok += 1;
    }
    if let Some(blob) = decoded::<SnapshotBlob>(bytes) {
        ok += usize::from(snapshot::decode(&blob).is_ok());
    }
    ok
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(fuzz_support::cases()))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in bytes_after(&[codec::WIRE_VERSION])) {
        decode_all(&bytes);
    }

    #[test]
    fn edited_valid_messages_never_panic(which in any::<prop::sample::Index>(), edits in edits()) {
        let mut bytes = which.get(&SAMPLES).clone();
        mutate(&mut bytes, &edits);
        decode_all(&bytes);
    }

    /// A checkpoint or snapshot whose body was damaged and whose hash was recomputed to match: the hash no longer
    /// guards the decompressor and the State decoder, which must then refuse the body on their own.
    #[test]
    fn a_damaged_snapshot_body_behind_a_matching_hash_is_refused_or_decoded(edits in edits()) {
        let mut blob = BLOB.clone();
        mutate(&mut blob.body, &edits);
        blob.sha256 = snapshot::sha256(&blob.body);
        if let Ok(state) = snapshot::decode(&blob) {
            prop_assert_eq!(state.pos, blob.pos);
        }
    }
}

#[test]
fn every_sample_decodes_before_it_is_edited() {
    for bytes in SAMPLES.iter() {
        assert!(decode_all(bytes) >= 1, "{bytes:?}");
    }
}
