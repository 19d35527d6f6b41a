//! `Receive` for clients: drain the transport's inbox, one event at a time. Each handler either
//! succeeds or returns a [`Refusal`], and a refusal closes that one connection.

use super::input::on_datagram;
use super::login::{Login, on_hello};
use super::{ClientState, Clients, Closing, Phase, Refusal, Sessions, send_close};
use crate::core::commands::CommandInbox;
use crate::core::components::{Avatar, Networked};
use crate::core::messages::PlayerMessages;
use crate::core::registry::GameRegistry;
use crate::core::resources::{Inbox, Outbox, PlayerLog, ShardStats, TickClock};
use crate::interest::{Viewer, Viewers};
use bevy_ecs::prelude::*;
use tracing::{debug, info};
use zonescaler_net::NetEvent;
use zonescaler_shared::ConnId;
use zonescaler_shared::codec::{self, DecodeError};
use zonescaler_shared::limits;
use zonescaler_shared::protocol::{ClientCommand, ClientControl, EntityCommand, ErrorCode, Say};

fn decode_error_code(e: &DecodeError) -> ErrorCode {
    match e {
        DecodeError::WrongVersion { .. } => ErrorCode::WrongVersion,
        _ => ErrorCode::BadMessage,
    }
}

/// A refusal for bytes that did not decode.
pub fn decode_refusal(what: &str, e: &DecodeError) -> Refusal {
    (decode_error_code(e), format!("{what} refused: {e}"))
}

/// `Receive`: drain the inbox, then close clients that said nothing in time.
pub fn receive(
    mut inbox: ResMut<Inbox>,
    mut closing: Closing,
    mut login: Login,
    mut queue: ResMut<CommandInbox>,
    mut messages: ResMut<PlayerMessages>,
    registry: Res<GameRegistry>,
) {
    let tick = login.clock.tick.0;
    for c in closing.clients.0.values_mut() {
        c.datagrams_this_tick = 0;
        c.control_this_tick = 0;
        c.commands_this_tick = 0;
    }
    let events = std::mem::take(&mut inbox.events);
    for event in events {
        let conn = event.conn();
        let outcome = match event {
            NetEvent::Connected {
                max_datagram_bytes, ..
            } => on_connected(conn, max_datagram_bytes, tick, &mut closing),
            NetEvent::Disconnected { reason, .. } => {
                if closing.clients.0.contains_key(&conn) {
                    info!(conn = conn.0, %reason, "client disconnected");
                    closing.forget(conn);
                }
                Ok(())
            }
            NetEvent::Control { bytes, .. } => match codec::decode_client_control(&bytes) {
                Err(e) => {
                    closing.stats.decode_errors += 1;
                    Err(decode_refusal("control message", &e))
                }
                Ok(ClientControl::Hello(hello)) => on_hello(conn, hello, &mut closing, &mut login),
                Ok(ClientControl::Command(cmd)) => {
                    on_command(conn, cmd, &mut closing, &mut queue, &registry)
                }
                Ok(ClientControl::Say(say)) => {
                    on_say(conn, say, &mut closing, &mut messages, &login.clock)
                }
            },
            NetEvent::Datagram { bytes, .. } => {
                let Closing {
                    clients,
                    viewers,
                    stats,
                    ..
                } = &mut closing;
                match (clients.0.get_mut(&conn), viewers.0.get_mut(&conn)) {
                    (Some(client), Some(viewer)) => {
                        on_datagram(client, viewer, &bytes, tick, stats)
                    }
                    _ => Ok(()),
                }
            }
        };
        if let Err((code, reason)) = outcome {
            closing.close(conn, code, reason);
        }
    }
    close_silent_clients(tick, &mut closing, login.clock.tick_hz);
    closing.stats.clients = closing.clients.0.len();
}

fn on_connected(
    conn: ConnId,
    max_datagram_bytes: usize,
    tick: u64,
    closing: &mut Closing,
) -> Result<(), Refusal> {
    if closing.clients.0.len() >= limits::CLIENTS_PER_SHARD_MAX {
        // Not registered, so the close below only sends the refusal.
        return Err((
            ErrorCode::ServerFull,
            format!("shard is full ({} clients)", limits::CLIENTS_PER_SHARD_MAX),
        ));
    }
    debug!(conn = conn.0, max_datagram_bytes, "client connected");
    let mtu = max_datagram_bytes.max(limits::DATAGRAM_BYTES_MIN);
    closing.clients.0.insert(conn, ClientState::new(tick));
    closing.viewers.0.insert(conn, Viewer::new(mtu));
    Ok(())
}

/// Count one control message of `conn` this tick; a client past the bound is flooding.
fn control_budget(client: &mut ClientState) -> Result<(), Refusal> {
    client.control_this_tick += 1;
    if client.control_this_tick > limits::CLIENT_CONTROL_PER_TICK_MAX {
        return Err((
            ErrorCode::BadMessage,
            format!(
                "more than {} control messages in one tick",
                limits::CLIENT_CONTROL_PER_TICK_MAX
            ),
        ));
    }
    Ok(())
}

/// A player's game command: only a kind the game lets clients send, only as its own avatar,
/// only while it plays here or its avatar is on its way elsewhere (then the owner gets it).
fn on_command(
    conn: ConnId,
    cmd: ClientCommand,
    closing: &mut Closing,
    queue: &mut CommandInbox,
    registry: &GameRegistry,
) -> Result<(), Refusal> {
    let Some(client) = closing.clients.0.get_mut(&conn) else {
        return Ok(());
    };
    control_budget(client)?;
    let Some(kind) = registry.protocol.command_of_client_kind(cmd.kind) else {
        return Err((
            ErrorCode::BadMessage,
            format!("no client command numbered {}", cmd.kind),
        ));
    };
    let avatar = match client.phase {
        Phase::Playing { id, .. } => id,
        Phase::Redirected { .. }
        | Phase::AwaitClaim { .. }
        | Phase::AwaitLocate { .. }
        | Phase::Queued { .. } => {
            return Ok(());
        }
        Phase::AwaitHello { .. } => {
            return Err((ErrorCode::Unexpected, "a command before Hello".into()));
        }
    };
    client.commands_this_tick += 1;
    if client.commands_this_tick > limits::CLIENT_COMMANDS_PER_TICK_MAX {
        closing.stats.client_commands_dropped += 1;
        return Ok(());
    }
    closing.stats.client_commands += 1;
    queue.push(EntityCommand {
        target: avatar,
        hops: crate::core::commands::COMMAND_HOPS_MAX,
        kind,
        bytes: cmd.bytes,
        from: Some(avatar),
    });
    Ok(())
}

/// A chat line: rate-limited per client, sent as the client's account.
fn on_say(
    conn: ConnId,
    say: Say,
    closing: &mut Closing,
    messages: &mut PlayerMessages,
    clock: &TickClock,
) -> Result<(), Refusal> {
    let Some(client) = closing.clients.0.get_mut(&conn) else {
        return Ok(());
    };
    control_budget(client)?;
    if matches!(client.phase, Phase::AwaitHello { .. }) {
        return Err((ErrorCode::Unexpected, "chat before Hello".into()));
    }
    let second = clock.tick.0 / u64::from(clock.tick_hz.max(1));
    if second != client.say_budget_second {
        client.say_budget_second = second;
        client.say_budget = limits::CLIENT_SAYS_PER_SECOND_MAX;
    }
    if client.say_budget == 0 {
        closing.stats.says_dropped += 1;
        return Ok(());
    }
    client.say_budget -= 1;
    match &say.to {
        Some(to) => messages.tell(to, &client.name, &say.text),
        None => messages.shout(&client.name, &say.text),
    }
    Ok(())
}

/// Close clients that did not say `Hello` (or whose account claim, or resume, went unanswered) in
/// time.
fn close_silent_clients(tick: u64, closing: &mut Closing, tick_hz: u32) {
    let ticks = |ms: u64| ms * u64::from(tick_hz) / 1_000;
    let (hello, claim) = (
        ticks(limits::HELLO_TIMEOUT_MS),
        ticks(limits::LOGIN_CLAIM_TIMEOUT_MS),
    );
    let late: Vec<(ConnId, ErrorCode, String)> = closing
        .clients
        .0
        .iter()
        .filter_map(|(conn, c)| match c.phase {
            Phase::AwaitHello { since_tick } if tick.saturating_sub(since_tick) > hello => Some((
                *conn,
                ErrorCode::HelloTimeout,
                format!("no Hello within {} ms", limits::HELLO_TIMEOUT_MS),
            )),
            Phase::AwaitClaim { since_tick, .. } if tick.saturating_sub(since_tick) > claim => {
                Some((
                    *conn,
                    ErrorCode::Unexpected,
                    format!(
                        "the master did not confirm the account within {} ms; try again",
                        limits::LOGIN_CLAIM_TIMEOUT_MS
                    ),
                ))
            }
            Phase::AwaitLocate { since_tick, .. } if tick.saturating_sub(since_tick) > claim => {
                Some((
                    *conn,
                    ErrorCode::ResumeLater,
                    format!(
                        "the master did not say where the account is within {} ms",
                        limits::LOGIN_CLAIM_TIMEOUT_MS
                    ),
                ))
            }
            _ => None,
        })
        .collect();
    for (conn, code, reason) in late {
        closing.close(conn, code, reason);
    }
}

/// `Ownership`: a client whose avatar vanished (despawned by a game system) is closed rather than
/// left driving nothing. A redirected client whose old avatar (a proxy here by now) vanished
/// keeps its connection, seeing nothing more from here: it is on its way to the new owner.
pub fn drop_clients_without_avatar(
    mut clients: ResMut<Clients>,
    mut viewers: ResMut<Viewers>,
    mut outbox: ResMut<Outbox>,
    mut stats: ResMut<ShardStats>,
    mut players: ResMut<PlayerLog>,
    mut sessions: ResMut<Sessions>,
    avatars: Query<(), With<Avatar>>,
    views: Query<(), With<Networked>>,
) {
    let mut orphaned = Vec::new();
    for (conn, c) in clients.0.iter_mut() {
        match c.phase {
            Phase::Playing { avatar, .. } if avatars.get(avatar).is_err() => orphaned.push(*conn),
            Phase::Redirected {
                avatar: Some(e),
                to,
            } if views.get(e).is_err() => {
                c.phase = Phase::Redirected { avatar: None, to };
                if let Some(v) = viewers.0.get_mut(conn) {
                    v.view = None;
                }
            }
            _ => {}
        }
    }
    for conn in orphaned {
        // The avatar is already gone: forget the client, nothing to despawn.
        viewers.0.remove(&conn);
        if let Some(c) = clients.0.remove(&conn) {
            sessions.release(&c.name, conn);
            players.left(&c.name);
        }
        send_close(
            conn,
            ErrorCode::Unexpected,
            "avatar was despawned".into(),
            &mut outbox,
            &mut stats,
        );
    }
}
