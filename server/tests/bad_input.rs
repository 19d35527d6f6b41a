//! Hostile or broken client messages close that one connection, with a reason, and the shard
//! keeps serving everyone else.

mod common;

use bytes::Bytes;
use common::{Harness, small_world};
use zonescaler_bots::{BotClient, BotConfig, Scenario};
use zonescaler_net::{NetCommand, NetEvent};
use zonescaler_shared::ConnId;
use zonescaler_shared::codec;
use zonescaler_shared::limits;
use zonescaler_shared::protocol::*;
use zonescaler_shared::quant::QPos;

/// Connect a victim and a bystander, deliver `bad` from the victim, and check that only the
/// victim is closed (with `expect`) while the bystander keeps receiving snapshots.
fn assert_closes_only_sender(bad: NetEvent, expect: ErrorCode) {
    let mut h = Harness::new(small_world(50));
    let _victim = h.connect(1);
    let bystander = h.connect(2);
    for _ in 0..5 {
        h.step();
    }
    let before = h.snapshots(bystander);
    assert!(
        before > 0,
        "the bystander must be receiving snapshots before the attack"
    );
    h.raw(bad);
    for _ in 0..10 {
        h.step();
    }
    assert_eq!(
        h.closed(1),
        Some(expect),
        "the sender of a bad message must be closed with {expect:?}"
    );
    assert_eq!(h.closed(2), None, "nobody else may be closed");
    assert!(
        h.snapshots(bystander) >= before + 8,
        "the bystander must keep getting snapshots"
    );
    let error_sent = h.log.iter().any(|c| matches!(c, NetCommand::Control { conn, bytes } if conn.0 == 1
        && matches!(codec::decode_server_control(bytes), Ok(ServerControl::Error(e)) if e.code == expect)));
    assert!(error_sent, "the closed client is told why before the close");
    assert_eq!(h.app.stats().closed.get(expect.as_str()), Some(&1));
}

fn ev_control(bytes: Vec<u8>) -> NetEvent {
    NetEvent::Control {
        conn: ConnId(1),
        bytes: Bytes::from(bytes),
    }
}

fn ev_datagram(bytes: Vec<u8>) -> NetEvent {
    NetEvent::Datagram {
        conn: ConnId(1),
        bytes: Bytes::from(bytes),
    }
}

#[test]
fn garbage_datagram_closes_only_its_sender() {
    assert_closes_only_sender(
        ev_datagram(
            [
                b"ZS".as_slice(),
                &zonescaler_shared::protocol::PROTOCOL_VERSION.to_le_bytes(),
                b"this is not bitcode at all",
            ]
            .concat(),
        ),
        ErrorCode::BadMessage,
    );
}

#[test]
fn random_bytes_datagram_closes_only_its_sender() {
    assert_closes_only_sender(ev_datagram(vec![0xFF; 40]), ErrorCode::BadMessage);
}

#[test]
fn truncated_input_closes_only_its_sender() {
    let input = codec::encode(&ClientDatagram::Input(Input {
        seq: 99,
        ack_tick: 0,
        target: QPos([1, 2, 3]),
    }));
    assert_closes_only_sender(
        ev_datagram(input[..input.len() - 2].to_vec()),
        ErrorCode::BadMessage,
    );
}

#[test]
fn oversize_datagram_closes_only_its_sender() {
    assert_closes_only_sender(
        ev_datagram(vec![0; limits::CLIENT_DATAGRAM_BYTES_MAX + 1]),
        ErrorCode::BadMessage,
    );
}

#[test]
fn wrong_version_closes_only_its_sender() {
    let mut input = codec::encode(&ClientDatagram::Input(Input {
        seq: 99,
        ack_tick: 0,
        target: QPos([1, 2, 3]),
    }));
    input[2..4].copy_from_slice(&(PROTOCOL_VERSION + 1).to_le_bytes());
    assert_closes_only_sender(ev_datagram(input), ErrorCode::WrongVersion);
}

#[test]
fn garbage_control_message_closes_only_its_sender() {
    assert_closes_only_sender(
        ev_control(vec![1, 2, 3, 4, 5, 6, 7, 8]),
        ErrorCode::BadMessage,
    );
}

#[test]
fn second_hello_closes_only_its_sender() {
    let hello = BotClient::new(BotConfig::new("again", Scenario::Idle, 1)).hello(0);
    assert_closes_only_sender(ev_control(hello), ErrorCode::Unexpected);
}

#[test]
fn ack_of_a_future_tick_closes_only_its_sender() {
    let input = codec::encode(&ClientDatagram::Input(Input {
        seq: 99,
        ack_tick: 1_000_000,
        target: QPos([0, 0, 0]),
    }));
    assert_closes_only_sender(ev_datagram(input), ErrorCode::BadMessage);
}

#[test]
fn wrong_protocol_hash_is_refused_at_hello() {
    let mut h = Harness::new(small_world(10));
    let mut bot = BotClient::with_protocol_hash(BotConfig::new("old", Scenario::Idle, 3), 0xDEAD);
    h.raw(NetEvent::Connected {
        conn: ConnId(7),
        max_datagram_bytes: 1_200,
    });
    h.raw(NetEvent::Control {
        conn: ConnId(7),
        bytes: Bytes::from(bot.hello(0)),
    });
    h.step();
    assert_eq!(h.closed(7), Some(ErrorCode::ProtocolMismatch));
}

#[test]
fn silent_client_is_closed_after_the_hello_timeout() {
    let mut h = Harness::new(small_world(0));
    h.raw(NetEvent::Connected {
        conn: ConnId(9),
        max_datagram_bytes: 1_200,
    });
    let ticks = limits::HELLO_TIMEOUT_MS * 30 / 1_000 + 2;
    for _ in 0..ticks {
        h.step();
    }
    assert_eq!(h.closed(9), Some(ErrorCode::HelloTimeout));
}
