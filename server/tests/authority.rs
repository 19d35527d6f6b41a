//! The shard is authoritative over movement: speed is clamped, targets outside the world are
//! refused, stale inputs are ignored, and a client moves only its own avatar.

mod common;

use bytes::Bytes;
use common::{Harness, small_world};
use glam::Vec3;
use zonescaler_net::NetEvent;
use zonescaler_server::core::components::{Avatar, Position};
use zonescaler_shared::ConnId;
use zonescaler_shared::quant::QPos;

fn avatar_pos(h: &mut Harness, conn: u64) -> Vec3 {
    let mut q = h.app.world.query::<(&Avatar, &Position)>();
    q.iter(&h.app.world)
        .find(|(a, _)| a.conn == ConnId(conn))
        .map(|(_, p)| p.0)
        .expect("avatar exists")
}

fn send_input(h: &mut Harness, bot: usize, target: QPos) {
    let (conn, b) = &mut h.bots[bot];
    let bytes = b.input_to(target);
    let conn = *conn;
    h.raw(NetEvent::Datagram {
        conn,
        bytes: Bytes::from(bytes),
    });
}

#[test]
fn movement_is_clamped_to_max_speed() {
    let mut h = Harness::new(small_world(0));
    let me = h.connect(1);
    let start = avatar_pos(&mut h, 1);
    let far = Vec3::new(if start.x > 0.0 { -99.0 } else { 99.0 }, 0.0, start.z);
    for _ in 0..10 {
        send_input(&mut h, me, QPos::quantize(far));
        h.app.tick();
        h.app.drain_outbox();
    }
    let moved = avatar_pos(&mut h, 1).distance(start);
    let max = 8.0 / 30.0 * 10.0;
    assert!(
        moved <= max + 1e-3,
        "moved {moved} m in 10 ticks; the limit is {max} m"
    );
    assert!(
        moved >= max * 0.9,
        "a valid input must move the avatar at full speed ({moved} m)"
    );
}

#[test]
fn targets_outside_the_world_are_refused() {
    let mut h = Harness::new(small_world(0));
    let me = h.connect(1);
    let start = avatar_pos(&mut h, 1);
    for _ in 0..5 {
        send_input(&mut h, me, QPos::quantize(Vec3::new(5_000.0, 0.0, 0.0)));
        h.app.tick();
        h.app.drain_outbox();
    }
    assert_eq!(
        avatar_pos(&mut h, 1),
        start,
        "an out-of-world target must not move the avatar"
    );
    assert!(h.app.stats().inputs_refused_out_of_world >= 5);
}

#[test]
fn stale_inputs_are_ignored() {
    let mut h = Harness::new(small_world(0));
    h.connect(1);
    // Apply the login tick's own pending input before taking the reference position.
    h.app.tick();
    let spawn = avatar_pos(&mut h, 1);
    let target = Vec3::new(spawn.x, 0.0, (spawn.z + 5.0).min(99.0));
    let input = |seq: u32, t: Vec3| {
        zonescaler_shared::codec::encode(&zonescaler_shared::protocol::ClientDatagram::Input(
            zonescaler_shared::protocol::Input {
                seq,
                ack_tick: 0,
                target: QPos::quantize(t),
            },
        ))
    };
    h.raw(NetEvent::Datagram {
        conn: ConnId(1),
        bytes: Bytes::from(input(100, spawn)),
    });
    h.app.tick();
    let start = avatar_pos(&mut h, 1);
    h.raw(NetEvent::Datagram {
        conn: ConnId(1),
        bytes: Bytes::from(input(50, target)),
    });
    for _ in 0..5 {
        h.app.tick();
    }
    assert_eq!(
        avatar_pos(&mut h, 1),
        start,
        "an input older than one already applied must be ignored"
    );
    assert!(h.app.stats().inputs_stale >= 1);
}

#[test]
fn a_client_moves_only_its_own_avatar() {
    let mut h = Harness::new(small_world(0));
    let a = h.connect(1);
    h.connect(2);
    // Apply the login ticks' own pending inputs; from here on only client 1 sends.
    h.app.tick();
    let b_start = avatar_pos(&mut h, 2);
    let a_start = avatar_pos(&mut h, 1);
    for _ in 0..20 {
        send_input(&mut h, a, QPos::quantize(b_start));
        h.app.tick();
        h.app.drain_outbox();
    }
    assert_eq!(
        avatar_pos(&mut h, 2),
        b_start,
        "client 1's inputs must never move client 2's avatar"
    );
    assert_ne!(avatar_pos(&mut h, 1), a_start);
}

#[test]
fn a_client_whose_avatar_is_despawned_is_closed_not_left_driving_nothing() {
    let mut h = Harness::new(small_world(0));
    h.connect(1);
    h.connect(2);
    let e = {
        let mut q = h.app.world.query::<(bevy_ecs::entity::Entity, &Avatar)>();
        q.iter(&h.app.world)
            .find(|(_, a)| a.conn == ConnId(1))
            .map(|(e, _)| e)
            .expect("avatar 1")
    };
    h.app.world.despawn(e);
    h.step();
    assert_eq!(
        h.closed(1),
        Some(zonescaler_shared::protocol::ErrorCode::Unexpected)
    );
    assert_eq!(h.closed(2), None, "the other client plays on");
}
