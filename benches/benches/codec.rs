//! Encoding and decoding a 64-entity snapshot part: steady-state deltas and a full (spawn) part.

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use zonescaler_shared::NetId;
use zonescaler_shared::codec;
use zonescaler_shared::protocol::{
    ComponentBlob, Moved, RareUpdates, ServerDatagram, SnapshotPart, Spawned,
};
use zonescaler_shared::quant::QPos;
use zonescaler_shared::rng::Rng;

fn delta_part() -> ServerDatagram {
    let mut rng = Rng::new(1);
    let moved = (0..64)
        .map(|_| Moved {
            index_gap: rng.below(2) as u32,
            delta: [rng.below(15) as i16 - 7, 0, rng.below(15) as i16 - 7],
        })
        .collect();
    ServerDatagram::Snapshot(SnapshotPart {
        tick: 1000,
        baseline_age: 2,
        part: 0,
        parts: 1,
        last_input_seq: 990,
        index_base: 0,
        moved,
        ..Default::default()
    })
}

fn full_part() -> ServerDatagram {
    let mut rng = Rng::new(2);
    let spawned = (0..64)
        .map(|i| Spawned {
            id: NetId(100 + i * 37),
            pos: QPos([
                rng.below(200_000) as i32 - 100_000,
                0,
                rng.below(200_000) as i32 - 100_000,
            ]),
            components: vec![
                ComponentBlob {
                    kind: 0,
                    bytes: vec![0],
                },
                ComponentBlob {
                    kind: 1,
                    bytes: vec![100, 0, 100, 0],
                },
            ]
            .into(),
        })
        .collect();
    ServerDatagram::Snapshot(SnapshotPart {
        tick: 1000,
        baseline_age: 0,
        part: 0,
        parts: 1,
        rare: Some(RareUpdates {
            spawned,
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn snapshot_codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("snapshot_64_entities");
    for (name, msg) in [("delta", delta_part()), ("full", full_part())] {
        let bytes = codec::encode(&msg);
        eprintln!(
            "  {name}: {} bytes for 64 entities ({:.2} B/entity)",
            bytes.len(),
            bytes.len() as f64 / 64.0
        );
        g.bench_function(format!("encode_{name}"), |b| {
            b.iter(|| codec::encode(black_box(&msg)))
        });
        g.bench_function(format!("decode_{name}"), |b| {
            b.iter(|| codec::decode_server_datagram(black_box(&bytes)).map(|_| ()))
        });
    }
    g.finish();
}

criterion_group!(benches, snapshot_codec);
criterion_main!(benches);
