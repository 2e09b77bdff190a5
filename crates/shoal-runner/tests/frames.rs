//! The frame decoders take bytes from other processes and from the network: no input makes them panic, and every
//! message survives a round trip.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use shoal_engine::{GenerateParams, SamplingParams};
use shoal_runner::frame::{FRAME_VERSION, read_frame, write_frame};
use shoal_runner::proto::{DataFrame, FromRunner, FwdSeq, Handshake, SeqStart, ToRunner};

fn decode_all(bytes: &[u8]) {
    let _ = read_frame::<DataFrame>(&mut &bytes[..]);
    let _ = read_frame::<ToRunner>(&mut &bytes[..]);
    let _ = read_frame::<FromRunner>(&mut &bytes[..]);
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        decode_all(&bytes);
    }

    #[test]
    fn arbitrary_bodies_behind_a_valid_header_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut bytes = ((body.len() + 1) as u32).to_le_bytes().to_vec();
        bytes.push(FRAME_VERSION);
        bytes.extend_from_slice(&body);
        decode_all(&bytes);
    }

    #[test]
    fn corrupted_real_frames_never_panic(flip in 0usize..4096, value in any::<u8>(), cut in 0usize..4096) {
        let mut bytes = Vec::new();
        write_frame(&mut bytes, &sample_forward()).unwrap();
        let i = flip % bytes.len();
        bytes[i] = value;
        bytes.truncate(cut % (bytes.len() + 1));
        decode_all(&bytes);
    }
}

fn sample_forward() -> DataFrame {
    DataFrame::Forward {
        microbatch: 7,
        seqs: vec![FwdSeq {
            slot: 3,
            pos_start: 12,
            n_tokens: 2,
            sample: true,
            start: Some(SeqStart {
                task: 9,
                prompt: vec![1, 2, 3],
                params: GenerateParams {
                    sampling: SamplingParams::greedy(),
                    max_tokens: 5,
                    stop: vec!["</s>".into()],
                    ..Default::default()
                },
                route: vec![0xAB; 48],
            }),
        }],
        activations: vec![0.5; 2 * 16],
    }
}

#[test]
fn every_frame_kind_round_trips() {
    let frames = [
        sample_forward(),
        DataFrame::Handshake(Handshake {
            instance: "i".into(),
            rank: 1,
            world_size: 3,
            model: "m.gguf".into(),
            token: shoal_runner::proto::Token([9; 16]),
        }),
        DataFrame::Back {
            microbatch: 7,
            tokens: vec![(3, 42, false), (4, 2, true)],
        },
        DataFrame::Release { slot: 3 },
    ];
    let mut bytes = Vec::new();
    for f in &frames {
        write_frame(&mut bytes, f).unwrap();
    }
    let mut r = &bytes[..];
    for f in &frames {
        assert_eq!(read_frame::<DataFrame>(&mut r).unwrap().as_ref(), Some(f));
    }
    assert_eq!(read_frame::<DataFrame>(&mut r).unwrap(), None);
}
