//! Client connections: who is connected, logins, inputs, client commands, chat and messages.
//!
//! `Receive` turns transport events into game state: a `Hello` is checked (protocol hash, then a
//! redirect token or a login ticket), the account is claimed (with the master in a cluster,
//! locally on a lone shard) and the avatar spawned or bound, or the login redirected to the shard
//! that owns its spawn point (or made to wait for a seat when every shard is at its client cap:
//! [`admission`]), or, with a resume ticket, bound to its avatar wherever the cluster keeps it
//! ([`resume`]); inputs are queued for `Simulate`; a client's game command is queued
//! for its own avatar's owner; chat is routed like the game's player messages. Anything that does
//! not decode, or is not allowed, closes that one connection with a logged reason and nothing
//! else. What each client sees is the interest plugin's business ([`crate::interest::Viewers`]).

pub mod admission;
pub mod directory;
pub mod input;
pub mod login;
pub mod messages;
pub mod receive;
pub mod resume;

pub use directory::{ClusterDirectory, LoginPolicy, Sessions};

use crate::core::components::{Avatar, AwaitingClient, InTransit, Proxy};
use crate::core::resources::{Config, DespawnLog, Outbox, PlayerLog, ShardStats, TickClock};
use crate::core::{Plugin, ReceiveSteps, ShardApp, ShardSystems};
use crate::interest::Viewers;
use bevy_ecs::prelude::*;
use bytes::Bytes;
use std::collections::BTreeMap;
use tracing::warn;
use zonescaler_net::NetCommand;
use zonescaler_shared::codec;
use zonescaler_shared::limits;
use zonescaler_shared::protocol::{ErrorCode, ErrorMsg, Input, ServerControl};
use zonescaler_shared::quant::QPos;
use zonescaler_shared::{ConnId, NetId, ShardId};

/// Logins, inputs, client commands, chat, and the master's answers about accounts.
#[derive(Debug, Default, Clone, Copy)]
pub struct ClientPlugin;

impl Plugin for ClientPlugin {
    fn build(&self, app: &mut ShardApp) {
        app.world.init_resource::<Clients>();
        app.world.init_resource::<ClusterDirectory>();
        app.world.init_resource::<LoginPolicy>();
        app.world.init_resource::<Sessions>();
        app.world.init_resource::<LoginsEnded>();
        let cluster = app.world.resource::<Config>().0.cluster.clone();
        app.world
            .insert_resource(admission::LoginQueue(admission::Admission::new(
                cluster.clients_per_shard_max,
                cluster.login_queue_max,
            )));
        app.add_systems_raw(
            (
                receive::receive,
                messages::on_master_notices,
                login::admit_waiting,
            )
                .chain()
                .in_set(ReceiveSteps::Clients),
        );
        app.add_systems(ShardSystems::Simulate, input::apply_inputs);
        app.add_systems(
            ShardSystems::Ownership,
            (
                receive::drop_clients_without_avatar,
                messages::route_messages,
                resume::refresh_resume_tickets,
            ),
        );
    }
}

/// Where a connection is in its life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Connected; waiting for `Hello` since this tick.
    AwaitHello { since_tick: u64 },
    /// `Hello` checked out; the master is asked whether this account may play (session `conn`).
    AwaitClaim {
        since_tick: u64,
        spawn: Option<QPos>,
    },
    /// Every shard is at its client cap: waiting in the login queue (the master's in a cluster,
    /// this shard's own alone), for as long as the client stays. `spawn` as in `AwaitClaim`.
    Queued { spawn: Option<QPos> },
    /// Logged in and driving `avatar`.
    Playing { avatar: Entity, id: NetId },
    /// `Hello` carried a resume ticket for `avatar`, issued by shard `from`, which this shard does
    /// not hold: the master is asked where the account is seated (session `conn`).
    AwaitLocate {
        since_tick: u64,
        avatar: NetId,
        from: ShardId,
    },
    /// Sent to shard `to` (its avatar was handed off there, or its login belongs there). Until
    /// the client hangs up, it keeps receiving snapshots around `avatar` (now a proxy) and its
    /// inputs are forwarded to `to`.
    Redirected { avatar: Option<Entity>, to: ShardId },
}

impl Phase {
    /// The entity whose surroundings this client is shown.
    pub fn view(&self) -> Option<Entity> {
        match *self {
            Self::Playing { avatar, .. } => Some(avatar),
            Self::Redirected { avatar, .. } => avatar,
            Self::AwaitHello { .. }
            | Self::AwaitClaim { .. }
            | Self::AwaitLocate { .. }
            | Self::Queued { .. } => None,
        }
    }
}

/// One client connection of this shard (its replication state is its [`crate::interest::Viewer`]).
#[derive(Debug)]
pub struct ClientState {
    pub phase: Phase,
    /// The account it plays (empty before `Hello`).
    pub name: String,
    /// The newest input received since the last `Simulate`, if newer than the last applied.
    pub pending_input: Option<Input>,
    pub datagrams_this_tick: usize,
    /// Control messages (commands, chat) this tick.
    pub control_this_tick: usize,
    pub commands_this_tick: usize,
    /// Chat lines allowed: refilled by [`limits::CLIENT_SAYS_PER_SECOND_MAX`] each second.
    pub say_budget: u32,
    pub say_budget_second: u64,
    /// When (`TickClock::now_ms`) this client was last sent a resume ticket.
    pub resume_sent_ms: u64,
}

impl ClientState {
    fn new(tick: u64) -> Self {
        Self {
            phase: Phase::AwaitHello { since_tick: tick },
            name: String::new(),
            pending_input: None,
            datagrams_this_tick: 0,
            control_this_tick: 0,
            commands_this_tick: 0,
            say_budget: limits::CLIENT_SAYS_PER_SECOND_MAX,
            say_budget_second: 0,
            resume_sent_ms: 0,
        }
    }
}

/// Every connection of this shard, by id (ordered, so iteration is deterministic).
#[derive(Resource, Debug, Default)]
pub struct Clients(pub BTreeMap<ConnId, ClientState>);

/// Logins that ended (their client left or was closed) while they waited for the master's
/// answer or for a seat, this tick: the master (or this shard's own queue) must let them go.
/// Drained every tick by `login::admit_waiting`, so it holds at most one tick's closes.
#[derive(Resource, Debug, Default)]
pub struct LoginsEnded(pub Vec<(ConnId, String)>);

/// Why a connection is being closed: the code the client sees and the reason logged.
pub type Refusal = (ErrorCode, String);

/// Tell the client why, then close its connection. Touches no client state.
pub fn send_close(
    conn: ConnId,
    code: ErrorCode,
    reason: String,
    outbox: &mut Outbox,
    stats: &mut ShardStats,
) {
    warn!(conn = conn.0, code = code.as_str(), %reason, "closing client connection");
    let mut detail = reason.clone();
    detail.truncate(detail.floor_char_boundary(limits::ERROR_DETAIL_BYTES_MAX));
    send_control(
        conn,
        &ServerControl::Error(ErrorMsg { code, detail }),
        outbox,
    );
    outbox
        .commands
        .push(NetCommand::Close { conn, code, reason });
    stats.count_close(code);
}

/// Queue a control message for one client.
pub fn send_control(conn: ConnId, msg: &ServerControl, outbox: &mut Outbox) {
    outbox.commands.push(NetCommand::Control {
        conn,
        bytes: Bytes::from(codec::encode(msg)),
    });
}

/// The avatar of a client that left, when commands apply: despawned if it is still simulated
/// here. One frozen in a handoff is not: its target may have taken it already, and then counts
/// on this shard turning it into a proxy when the ack comes (despawned instead, the new owner
/// never mirrored it here again: simulator seed 4758, a bot quitting while its avatar was in a
/// handoff). It waits for its client like any avatar handed over, which never comes: taken, it
/// expires on the target; refused, it expires here (`REDIRECT_WAIT_MS`). One that became a
/// proxy meanwhile is the new owner's, not ours to remove.
fn leave_avatar(world: &mut World, avatar: Entity, id: NetId, name: String) {
    let Ok(e) = world.get_entity(avatar) else {
        return;
    };
    if e.contains::<Proxy>() {
        return;
    }
    if e.contains::<InTransit>() {
        let since_ms = world.resource::<TickClock>().now_ms;
        world
            .entity_mut(avatar)
            .remove::<Avatar>()
            .insert(AwaitingClient {
                name,
                since_ms,
                last_input_seq: 0,
            });
        return;
    }
    world.despawn(avatar);
    world.resource_mut::<DespawnLog>().0.push(id);
}

/// What closing a client touches besides the transport.
#[derive(bevy_ecs::system::SystemParam)]
pub struct Closing<'w, 's> {
    pub clients: ResMut<'w, Clients>,
    pub viewers: ResMut<'w, Viewers>,
    pub outbox: ResMut<'w, Outbox>,
    pub stats: ResMut<'w, ShardStats>,
    pub players: ResMut<'w, PlayerLog>,
    pub sessions: ResMut<'w, Sessions>,
    pub ended: ResMut<'w, LoginsEnded>,
    pub commands: Commands<'w, 's>,
}

impl Closing<'_, '_> {
    /// Close a client: send the reason, forget its state and despawn its avatar.
    pub fn close(&mut self, conn: ConnId, code: ErrorCode, reason: String) {
        send_close(conn, code, reason, &mut self.outbox, &mut self.stats);
        self.forget(conn);
    }

    /// The client is gone (closed here or by the transport): its avatar leaves the world with
    /// it. A redirected client's avatar is not its own any more (it is a proxy of the shard it
    /// moved to), so it stays.
    pub fn forget(&mut self, conn: ConnId) {
        self.viewers.0.remove(&conn);
        let Some(c) = self.clients.0.remove(&conn) else {
            return;
        };
        self.sessions.release(&c.name, conn);
        match c.phase {
            Phase::Playing { avatar, id } => {
                self.players.left(&c.name);
                let name = c.name.clone();
                self.commands
                    .queue(move |world: &mut World| leave_avatar(world, avatar, id, name));
            }
            // The master may have noted the account for this login already, or given it a seat.
            Phase::AwaitClaim { .. } => {
                self.players.left(&c.name);
                self.ended.0.push((conn, c.name));
            }
            Phase::Queued { .. } => self.ended.0.push((conn, c.name)),
            // It played here and was sent on. If it reached its new shard, that shard reports the
            // arrival, perhaps after this report (the master keeps the seat meanwhile); if it
            // quit on the way, this is the only report that it left (its avatar there just
            // expires). Unless it is back here already on another connection.
            Phase::Redirected { .. } if !self.sessions.0.contains_key(&c.name) => {
                self.players.sent_on(&c.name);
            }
            _ => {}
        }
    }
}
