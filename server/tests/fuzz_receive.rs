//! Seeded mutation fuzzing of a live shard's `Receive` path: thousands of logged-in connections
//! each send one mutated input datagram and one mutated control message. The shard must not panic,
//! must close exactly the connections that sent something invalid, and a bystander must keep
//! receiving snapshots throughout.

mod common;

use bytes::Bytes;
use common::{Harness, small_world};
use zonescaler_bots::{BotClient, BotConfig, Scenario};
use zonescaler_net::NetEvent;
use zonescaler_shared::ConnId;
use zonescaler_shared::codec;
use zonescaler_shared::protocol::*;
use zonescaler_shared::quant::QPos;
use zonescaler_shared::rng::Rng;

fn mutate(rng: &mut Rng, seed_msg: &[u8]) -> Vec<u8> {
    let mut b = seed_msg.to_vec();
    for _ in 0..1 + rng.below(3) {
        match rng.below(4) {
            0 if !b.is_empty() => {
                let i = rng.below(b.len() as u64) as usize;
                b[i] ^= 1 << rng.below(8);
            }
            1 => b.truncate(rng.below(b.len() as u64 + 1) as usize),
            2 => (0..rng.below(8)).for_each(|_| b.push(rng.next_u64() as u8)),
            _ if !b.is_empty() => {
                let i = rng.below(b.len() as u64) as usize;
                b[i] = rng.next_u64() as u8;
            }
            _ => {}
        }
    }
    b
}

#[test]
fn mutated_messages_never_crash_the_shard_or_disturb_a_bystander() {
    let mut h = Harness::new(small_world(100));
    let bystander = h.connect(1);
    let mut rng = Rng::new(0xFA22);
    let input = codec::encode(&ClientDatagram::Input(Input {
        seq: 3,
        ack_tick: 1,
        target: QPos([10, 0, 10]),
    }));
    let hello_of =
        |i: u64| BotClient::new(BotConfig::new(format!("f{i}"), Scenario::Idle, i)).hello(0);
    let before = h.snapshots(bystander);
    for round in 0..2_000u64 {
        let conn = ConnId(1_000 + round);
        h.raw(NetEvent::Connected {
            conn,
            max_datagram_bytes: 1_200,
        });
        h.raw(NetEvent::Control {
            conn,
            bytes: Bytes::from(hello_of(round)),
        });
        h.raw(NetEvent::Datagram {
            conn,
            bytes: Bytes::from(mutate(&mut rng, &input)),
        });
        if rng.chance(0.5) {
            h.raw(NetEvent::Control {
                conn,
                bytes: Bytes::from(mutate(&mut rng, &hello_of(round))),
            });
        }
        if round % 20 == 19 {
            h.step();
            // Hang the fuzz connections up, so the shard's table does not fill.
            for c in (round - 19)..=round {
                h.raw(NetEvent::Disconnected {
                    conn: ConnId(1_000 + c),
                    reason: "fuzz done".into(),
                });
            }
        }
    }
    h.step();
    assert!(
        h.snapshots(bystander) >= before + 100,
        "the bystander kept playing through 2000 hostile connections"
    );
    assert_eq!(h.closed(1), None, "the bystander was never closed");
    let closed = h.app.stats().closed.values().sum::<u64>();
    assert!(
        closed > 500,
        "most mutated messages are refused ({closed} closes)"
    );
    assert_eq!(
        h.app.stats().clients,
        1,
        "every fuzz connection is gone, the bystander remains"
    );
}
