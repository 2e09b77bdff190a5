//! Fuzzing the runner protocol's frame decoder (issue 15): the worker's commands (`ToRunner`), the runner's reports
//! (`FromRunner`) and the data-plane frames between ranks (`DataFrame`), each read from a stream of frames. Whatever
//! the bytes (arbitrary, or valid frames with random edits), a read returns a frame, a clean end or an error; it never
//! panics, and a stream of any bytes ends within as many reads as it has bytes. `SHOAL_FUZZ_CASES=1000000` runs the
//! long version.
#![allow(clippy::unwrap_used)]

#[path = "../../shoal-types/tests/fuzz_support/mod.rs"]
mod fuzz_support;

use std::sync::LazyLock;

use fuzz_support::{edits, mutate};
use proptest::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use shoal_engine::{FinishReason, GenerateParams, SamplingParams};
use shoal_runner::frame::{FRAME_VERSION, read_frame, write_frame};
use shoal_runner::proto::{
    ChunkEnd, ChunkLogprobs, DataFrame, DataPlaneTls, FromRunner, FwdSeq, Handshake, LoadSpec, LogprobEntry, Outcome,
    RunnerStatus, SeqStart, ToRunner, Token,
};

fn params() -> GenerateParams {
    GenerateParams {
        sampling: SamplingParams::greedy(),
        max_tokens: 5,
        stop: vec!["</s>".into()],
        ..Default::default()
    }
}

fn frame<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut out = Vec::new();
    write_frame(&mut out, msg).unwrap();
    out
}

/// Valid frames of every kind the three streams carry.
static SAMPLES: LazyLock<Vec<Vec<u8>>> = LazyLock::new(|| {
    let end = ChunkEnd {
        finish: FinishReason::Stop,
        prompt_tokens: 3,
        completion_tokens: 4,
        reasoning_tokens: 0,
    };
    let entry = LogprobEntry {
        token: 5,
        bytes: vec![b'h', 0xc3],
        logprob: -0.5,
    };
    let mut out = vec![
        frame(&DataFrame::Handshake(Handshake {
            instance: "i".into(),
            rank: 1,
            world_size: 3,
            model: "m.gguf".into(),
            token: Token([9; 16]),
        })),
        frame(&DataFrame::Forward {
            microbatch: 7,
            seqs: vec![FwdSeq {
                slot: 3,
                pos_start: 12,
                n_tokens: 2,
                sample: true,
                start: Some(SeqStart {
                    task: 9,
                    prompt: vec![1, 2, 3],
                    params: params(),
                    route: vec![0xAB; 48],
                }),
            }],
            activations: vec![0.5; 2 * 16],
        }),
        frame(&DataFrame::Back {
            microbatch: 7,
            tokens: vec![(3, 42, false), (4, 2, true)],
        }),
        frame(&DataFrame::Release { slot: 3 }),
        frame(&ToRunner::Load(LoadSpec {
            model_path: "/m/model.gguf".into(),
            sha256: Some("ab".repeat(32)),
            instance: "i".into(),
            layer_start: 0,
            layer_end: 30,
            rank: 0,
            world_size: 2,
            max_seqs: 8,
            threads: 2,
            kv_cache: shoal_engine::KvType::F16,
            bind: [127, 0, 0, 1].into(),
            token: Token([1; 16]),
            tls: Some(DataPlaneTls {
                ca_pem: "ca".into(),
                cert_pem: "cert".into(),
                key_pem: "key".into(),
                server_name: "n".into(),
            }),
        })),
        frame(&ToRunner::Connect {
            next: vec!["127.0.0.1:4000".parse().unwrap()],
        }),
        frame(&ToRunner::Submit {
            task: 1,
            prompt: vec![1, 2, 3],
            params: params(),
            route: vec![7; 8],
        }),
        frame(&ToRunner::Cancel { task: 1 }),
        frame(&ToRunner::Shutdown),
        frame(&FromRunner::Hello { pid: 1, protocol: 2 }),
        frame(&FromRunner::Status(RunnerStatus::Failed("x".into()))),
        frame(&FromRunner::Started {
            task: 1,
            route: vec![7; 8],
        }),
        frame(&FromRunner::Chunk {
            task: 1,
            seq: 0,
            token: 5,
            text: "hé".into(),
            end: Some(end),
            logprobs: Some(ChunkLogprobs {
                chosen: entry.clone(),
                top: vec![entry],
            }),
            thinking: false,
        }),
        frame(&FromRunner::TaskDone {
            task: 1,
            outcome: Outcome::Failed("boom".into()),
        }),
        frame(&FromRunner::Heartbeat {
            steps: 9,
            stepping: true,
        }),
        frame(&FromRunner::FileCorrupt {
            path: "/m/model.gguf".into(),
        }),
    ];
    // A stream of several frames, so edits shift the boundaries between them.
    out.push(out[1..4].concat());
    out
});

/// Reads frames of type `T` from `bytes` until the end or an error; every read consumes bytes.
fn read_all<T: DeserializeOwned>(bytes: &[u8]) {
    let mut r = bytes;
    for _ in 0..=bytes.len() {
        match read_frame::<T>(&mut r) {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return,
        }
    }
    panic!("{} bytes gave more frames than bytes", bytes.len());
}

fn decode_all(bytes: &[u8]) {
    read_all::<DataFrame>(bytes);
    read_all::<ToRunner>(bytes);
    read_all::<FromRunner>(bytes);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(fuzz_support::cases()))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_all(&bytes);
    }

    #[test]
    fn arbitrary_bodies_behind_a_valid_header_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut bytes = ((body.len() + 1) as u32).to_le_bytes().to_vec();
        bytes.push(FRAME_VERSION);
        bytes.extend_from_slice(&body);
        decode_all(&bytes);
    }

    #[test]
    fn edited_valid_frames_never_panic(which in any::<prop::sample::Index>(), edits in edits()) {
        let mut bytes = which.get(&SAMPLES).clone();
        mutate(&mut bytes, &edits);
        decode_all(&bytes);
    }
}

#[test]
fn every_sample_reads_before_it_is_edited() {
    for bytes in SAMPLES.iter() {
        let r = &mut &bytes[..];
        let ok = read_frame::<DataFrame>(&mut &bytes[..]).is_ok_and(|f| f.is_some())
            || read_frame::<ToRunner>(&mut &bytes[..]).is_ok_and(|f| f.is_some())
            || read_frame::<FromRunner>(r).is_ok_and(|f| f.is_some());
        assert!(ok, "{bytes:?}");
    }
}
