//! Every type that crosses the wire or the disk round-trips through postcard (with the version byte) and JSON, and
//! the JSON shapes match SYSTEM.md §2.1.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::fmt::Debug;

use serde::Serialize;
use serde::de::DeserializeOwned;
use shoal_core::testing::{EventGen, Mix};
use shoal_types::chunk::{FinishReason, GenStats, PrefixCacheHit, TopLogprob, Usage};
use shoal_types::model::*;
use shoal_types::params::ToolCall;
use shoal_types::wire::*;
use shoal_types::*;

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(value: &T) {
    let bytes = codec::encode(value).unwrap();
    assert_eq!(bytes[0], codec::WIRE_VERSION);
    assert_eq!(&codec::decode::<T>(&bytes).unwrap(), value, "postcard");
    let json = serde_json::to_string(value).unwrap();
    assert_eq!(&serde_json::from_str::<T>(&json).unwrap(), value, "json: {json}");
}

fn node(i: u8) -> NodeId {
    NodeId::from_bytes([0x20 + i; 16])
}

#[test]
fn every_event_kind_round_trips() {
    let mut generator = EventGen::new(42, Mix::Chaos);
    let mut seen = BTreeSet::new();
    for e in generator.take_events(5_000) {
        round_trip(&e);
        seen.insert(e.event.name());
    }
    assert_eq!(seen.len(), 16, "the generator covers every durable event: {seen:?}");
    round_trip(generator.state());
    round_trip(&State::empty());
}

#[test]
fn commands_chunks_and_transients_round_trip() {
    let params = GenerationParams {
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
            Message {
                tool_call_id: Some("c1".into()),
                ..Message::new(Role::Tool, "42")
            },
        ],
        tools: Some("[{\"type\":\"function\"}]".into()),
        temperature: Some(0.5),
        seed: Some(7),
        stop: vec!["\n\n".into()],
        logprobs: true,
        top_logprobs: Some(3),
        enable_thinking: Some(false),
        constraint: Some(shoal_types::Constraint::JsonSchema {
            schema: "{\"type\":\"object\"}".into(),
            strict: true,
        }),
        ..Default::default()
    };
    let commands = vec![
        Command::PlaceInstance {
            deployment_id: DeploymentId::from_u128(1),
            model_id: "m/x".into(),
            sharding: Sharding::Pipeline,
            min_nodes: 2,
            max_nodes: Some(3),
            nodes: Some(vec![node(1)]),
        },
        Command::DeleteInstance {
            instance_id: InstanceId::from_u128(3),
        },
        Command::TextGeneration {
            params: params.clone(),
            prompt: shoal_types::params::PromptRef {
                bytes: 1234,
                messages: 2,
                digest: [7; 32],
            },
        },
        Command::TaskCancelled {
            target: CommandId::from_u128(4),
        },
        Command::TaskFinished {
            target: CommandId::from_u128(4),
        },
        Command::AddModelCard {
            card: card::builtin_cards().remove(0),
        },
        Command::AddModelCard {
            // A pip source in parts (the built-in Gemma 3 270M card).
            card: card::builtin_cards()
                .into_iter()
                .find(|c| c.sources.iter().any(|s| s.parts.is_some()))
                .unwrap(),
        },
        Command::AddModelCard {
            // A card derived from a GGUF header: per-layer bytes, embedding, head, formats and the model's template.
            card: {
                let mut c = card::builtin_cards().remove(0);
                c.layer_bytes = vec![7; c.n_layers as usize];
                c.embedding_bytes = 11;
                c.head_bytes = 13;
                c.weight_formats = [("Q4_K".to_string(), 99u64), ("F32".to_string(), 5)]
                    .into_iter()
                    .collect();
                c.chat_template.model = Some("{{ x }}".into());
                c
            },
        },
        Command::DeleteModelCard { model_id: "m/x".into() },
    ];
    for (i, command) in commands.into_iter().enumerate() {
        round_trip(&CommandEnvelope {
            session: SessionId {
                term: 3,
                master: node(0),
            },
            origin: node(1),
            command_id: CommandId::from_u128(i as u128),
            sent_ms: 5,
            command,
        });
    }
    let chunks = vec![
        Chunk::Token {
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
            usage: Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 4,
                total_tokens: 7,
                ..Default::default()
            }),
            stats: Some(GenStats {
                prompt_tps: 100.0,
                generation_tps: 50.0,
                peak_memory_bytes: 1 << 20,
                prefix_cache_hit: PrefixCacheHit::None,
            }),
            token_bytes: vec![0xc3],
        },
        Chunk::ToolCall {
            calls: vec![ToolCall {
                id: "1".into(),
                name: "f".into(),
                arguments: "{}".into(),
            }],
            usage: None,
            stats: None,
        },
        Chunk::Error {
            kind: ErrorKind::Runner,
            message: "boom".into(),
        },
        Chunk::PrefillProgress {
            processed_tokens: 512,
            total_tokens: 1000,
        },
    ];
    assert_eq!(
        chunks.iter().map(Chunk::is_final).collect::<Vec<_>>(),
        [true, true, true, false]
    );
    let mut transients: Vec<Transient> = chunks
        .into_iter()
        .enumerate()
        .map(|(i, chunk)| Transient::Chunk {
            command_id: CommandId::from_u128(1),
            task_id: TaskId::from_u128(2),
            seq: if i == 2 { SEQ_OOB } else { i as u32 },
            chunk,
        })
        .collect();
    transients.push(Transient::Acked {
        origin: Origin { node: node(1), boot: 9 },
        through_seq: 10,
    });
    for reason in [
        RejectReason::NoInstance { model: "m/x".into() },
        RejectReason::UnknownModel { model: "m/x".into() },
        RejectReason::Placement(PlacementError::InsufficientMemory { need: 10, have: 5 }),
        RejectReason::Placement(PlacementError::NodeNotFound(node(4))),
        RejectReason::InvalidInstance { message: "gap".into() },
        RejectReason::NotFound,
        RejectReason::Invalid { message: "x".into() },
        RejectReason::InUse { model: "m/x".into() },
    ] {
        transients.push(Transient::CommandRejected {
            command_id: CommandId::from_u128(1),
            reason,
        });
    }
    transients.push(Transient::Trace {
        task_id: TaskId::from_u128(1),
        rank: 0,
        spans: vec![Span {
            name: "prefill".into(),
            start_us: 1,
            duration_us: 2,
        }],
    });
    for body in transients {
        round_trip(&TransientEnvelope {
            from: node(2),
            session: SessionId::NONE,
            body,
        });
    }
}

#[test]
fn transport_snapshot_and_election_messages_round_trip() {
    let mut generator = EventGen::new(1, Mix::Typical);
    let events = generator.take_events(20);
    round_trip(&UpMsg {
        origin: Origin { node: node(1), boot: 1 },
        seq: 3,
        floor: 1,
        event: events[3].event.clone(),
    });
    round_trip(&DownMsg::Event(Box::new(events[4].clone())));
    round_trip(&DownMsg::Head { idx: 19 });
    round_trip(&RangeRequest {
        after: Pos::EMPTY,
        max: 10_000,
    });
    for reply in [
        RangeReply::Events { events: events.clone() },
        RangeReply::End { head: 19 },
        RangeReply::Diverged,
        RangeReply::Pruned,
        RangeReply::NotMaster,
    ] {
        round_trip(&reply);
    }
    round_trip(&SnapshotRequest { requester: node(3) });
    round_trip(&PromptRequest {
        command_id: CommandId::from_u128(9),
        requester: node(2),
    });
    round_trip(&PromptReply::Missing);
    round_trip(&PromptReply::Found {
        salt: [3; 16],
        params: Box::new(GenerationParams {
            model: "m".into(),
            messages: vec![Message::new(Role::User, "hi")],
            raw_prompt: Some("raw".into()),
            constraint: Some(Constraint::JsonSchema {
                schema: "{}".into(),
                strict: true,
            }),
            ..GenerationParams::default()
        }),
    });
    let blob = shoal_core::snapshot::encode(generator.state()).unwrap();
    round_trip(&SnapshotHeader {
        schema: blob.schema,
        wire: codec::WIRE_VERSION,
        master_session: SessionId {
            term: 1,
            master: node(0),
        },
        pos: blob.pos,
        body_len: blob.body.len() as u64,
        sha256: blob.sha256,
        chunks: 1,
    });
    round_trip(&SnapshotChunk {
        index: 0,
        bytes: blob.body.clone(),
    });
    round_trip(&blob);
    round_trip(&ElectionMsg::Campaign {
        term: 4,
        candidate: Candidate {
            node: node(1),
            last: Pos::EMPTY,
            priority: 1,
            incumbent: false,
        },
    });
}

#[test]
fn json_shapes_follow_the_spec() {
    let shard = ShardMetadata::Pipeline(PipelineShard {
        start_layer: 0,
        end_layer: 15,
        n_layers: 30,
        device_rank: 0,
        world_size: 2,
    });
    assert_eq!(
        serde_json::to_string(&shard).unwrap(),
        r#"{"Pipeline":{"start_layer":0,"end_layer":15,"n_layers":30,"device_rank":0,"world_size":2}}"#
    );
    assert_eq!(serde_json::to_string(&RunnerStatus::Ready).unwrap(), r#""Ready""#);
    assert_eq!(
        serde_json::to_string(&RunnerStatus::Loading {
            layers_loaded: 3,
            total_layers: 15
        })
        .unwrap(),
        r#"{"Loading":{"layers_loaded":3,"total_layers":15}}"#
    );
    let session = SessionId {
        term: 7,
        master: node(0),
    };
    assert_eq!(
        serde_json::to_string(&session).unwrap(),
        format!(r#"{{"term":7,"master":"{}"}}"#, node(0))
    );
    assert_eq!(serde_json::to_string(&Role::Assistant).unwrap(), r#""assistant""#);
    assert_eq!(serde_json::to_string(&Backend::Cuda).unwrap(), r#""cuda""#);
}
