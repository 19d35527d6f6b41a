//! Seeded mutation fuzzing of every decoder. (`cargo fuzz` needs a nightly toolchain, which this
//! project's machines do not have; this runs on stable, in every CI run, and any failure prints
//! the seed and the input that caused it.)
//!
//! Properties: no decoder panics on any input; whatever decodes re-encodes to bytes that decode to
//! the same value (so a shard never acts on a message it could not have been sent).

use zonescaler_shared::codec::{self, DecodeError};
use zonescaler_shared::protocol::*;
use zonescaler_shared::quant::QPos;
use zonescaler_shared::rng::Rng;
use zonescaler_shared::{NetId, ShardId};

fn corpus() -> Vec<Vec<u8>> {
    let snapshot = ServerDatagram::Snapshot(SnapshotPart {
        tick: 1234,
        baseline_age: 2,
        part: 0,
        parts: 2,
        last_input_seq: 77,
        index_base: 3,
        moved: (0..20)
            .map(|i| Moved {
                index_gap: i % 3,
                delta: [i as i16 - 10, 0, 5],
            })
            .collect(),
        rare: Some(RareUpdates {
            spawned: vec![Spawned {
                id: NetId(9),
                pos: QPos([100, 0, -100]),
                components: vec![ComponentBlob {
                    kind: 1,
                    bytes: vec![1, 2, 3],
                }]
                .into(),
            }],
            changed: vec![Changed {
                id: NetId(4),
                components: vec![ComponentBlob {
                    kind: 0,
                    bytes: vec![0],
                }]
                .into(),
            }],
            removed: vec![NetId(5), NetId(6)],
        }),
    });
    vec![
        codec::encode(&ClientControl::Hello(Hello {
            protocol_hash: 0xABCD,
            name: "player-one".into(),
            ticket: Some(vec![7; 40]),
            token: None,
            resume: None,
        })),
        codec::encode(&ClientControl::Command(ClientCommand {
            kind: 1,
            bytes: vec![1, 2, 3],
        })),
        codec::encode(&ClientControl::Say(Say {
            to: Some("ann".into()),
            text: "hello".into(),
        })),
        codec::encode(&ServerControl::Message(PlayerMessage {
            from: "bob".into(),
            text: "hi".into(),
            scope: MessageScope::Tell,
        })),
        codec::encode(&ClientDatagram::Input(Input {
            seq: 5,
            ack_tick: 1200,
            target: QPos([1, -2, 3]),
        })),
        codec::encode(&ServerControl::Welcome(Welcome {
            avatar: NetId(42),
            spawn: QPos([0, 0, 0]),
            tick: 10,
            tick_hz: 30,
            protocol_hash: 1,
            bounds: [-10.0, -10.0, 10.0, 10.0],
            max_speed_mps: 8.0,
            aoi_radius_m: 80.0,
        })),
        codec::encode(&ServerControl::Error(ErrorMsg {
            code: ErrorCode::BadMessage,
            detail: "nope".into(),
        })),
        codec::encode(&ClientControl::Hello(Hello {
            protocol_hash: 0xABCD,
            name: String::new(),
            ticket: None,
            token: None,
            resume: Some(vec![9; 60]),
        })),
        codec::encode(&ServerControl::Resume(Resume {
            shard: ShardId(1),
            ticket: vec![9; 60],
            shards: vec![(ShardId(2), "127.0.0.1:4434".into())],
        })),
        codec::encode(&snapshot),
    ]
}

fn mutate(rng: &mut Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut b = corpus[rng.below(corpus.len() as u64) as usize].clone();
    for _ in 0..1 + rng.below(4) {
        let len = b.len().max(1) as u64;
        match rng.below(7) {
            0 => {
                let i = rng.below(len) as usize % b.len().max(1);
                if let Some(x) = b.get_mut(i) {
                    *x ^= 1 << rng.below(8);
                }
            }
            1 => {
                let i = rng.below(len) as usize % b.len().max(1);
                if let Some(x) = b.get_mut(i) {
                    *x = rng.next_u64() as u8;
                }
            }
            2 => b.truncate(rng.below(len) as usize),
            3 => (0..rng.below(16)).for_each(|_| b.push(rng.next_u64() as u8)),
            4 if b.len() > 4 => {
                // Splice a chunk of another corpus entry over the body.
                let other = &corpus[rng.below(corpus.len() as u64) as usize];
                let at = 4 + rng.below((b.len() - 4) as u64) as usize;
                let from = rng.below(other.len() as u64) as usize;
                let n = (other.len() - from).min(b.len() - at);
                b[at..at + n].copy_from_slice(&other[from..from + n]);
            }
            5 => {
                // Interesting integers where bitcode keeps lengths and packings.
                let i = rng.below(len) as usize % b.len().max(1);
                if let Some(x) = b.get_mut(i) {
                    *x = [0, 1, 0x7F, 0x80, 0xFF, 0xFE][rng.below(6) as usize];
                }
            }
            _ => {
                let i = rng.below(len) as usize % b.len().max(1);
                if i < b.len() {
                    b.remove(i);
                }
            }
        }
    }
    b
}

fn check<T: PartialEq + std::fmt::Debug + bitcode::Encode>(
    decoded: Result<T, DecodeError>,
    redecode: impl Fn(&[u8]) -> Result<T, DecodeError>,
    input: &[u8],
) {
    if let Ok(v) = decoded {
        let again = redecode(&codec::encode(&v));
        assert_eq!(
            again.as_ref(),
            Ok(&v),
            "a decoded message must round-trip; input {input:?}"
        );
    }
}

#[test]
fn every_decoder_survives_200k_mutations() {
    let corpus = corpus();
    for seed in 0..4u64 {
        let mut rng = Rng::new(0xF022 + seed);
        for _ in 0..50_000 {
            let input = mutate(&mut rng, &corpus);
            check(
                codec::decode_client_control(&input),
                codec::decode_client_control,
                &input,
            );
            check(
                codec::decode_client_datagram(&input),
                codec::decode_client_datagram,
                &input,
            );
            check(
                codec::decode_server_control(&input),
                codec::decode_server_control,
                &input,
            );
            check(
                codec::decode_server_datagram(&input),
                codec::decode_server_datagram,
                &input,
            );
        }
    }
}
