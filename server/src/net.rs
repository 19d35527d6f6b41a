//! The `Receive` and `Send` sets: the only systems that touch the [`Inbox`] and [`Outbox`].
//!
//! `Receive` turns transport events into game state: a `Hello` spawns the client's avatar and
//! answers `Welcome`; inputs are queued for `Simulate`; anything that does not decode, or is not
//! allowed, closes that one connection with a logged reason and nothing else. `Send` cuts each
//! client's snapshot into parts that fit its datagram size and queues them.

use crate::components::{Avatar, MoveTarget, NetIndex, Networked, Owned, Position};
use crate::handoff::{AwaitingClient, ClusterDirectory, InTransit};
use crate::proxy::{Proxy, Space};
use crate::replicate::{ClientSnapshot, SentSnapshot};
use crate::resources::{
    Config, DespawnLog, IdAllocator, Inbox, Outbox, PlayerLog, ShardRng, ShardStats, TickClock,
};
use bevy_ecs::prelude::*;
use bytes::Bytes;
use glam::Vec3;
use std::collections::{BTreeMap, VecDeque};
use tracing::{debug, info, warn};
use zonescaler_net::{NetCommand, NetEvent};
use zonescaler_shared::codec::{self, DecodeError};
use zonescaler_shared::components::Kind;
use zonescaler_shared::limits;
use zonescaler_shared::protocol::*;
use zonescaler_shared::quant::QPos;
use zonescaler_shared::registry::ProtocolRegistry;
use zonescaler_shared::token::GrantKind;
use zonescaler_shared::{ConnId, NetId, ShardId};

/// The shard's protocol registry (components registered with `replicate::<T>()`).
#[derive(Resource, Debug, Default)]
pub struct Registry(pub ProtocolRegistry);

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Connected; waiting for `Hello` since this tick.
    AwaitHello { since_tick: u64 },
    /// Logged in and driving `avatar`.
    Playing { avatar: Entity, id: NetId },
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
            Self::AwaitHello { .. } => None,
        }
    }
}

/// One client connection of this shard.
#[derive(Debug)]
pub struct ClientState {
    pub phase: Phase,
    /// The player's name from `Hello` (empty before it).
    pub name: String,
    pub max_datagram_bytes: usize,
    /// Newest input sequence number applied (or refused) so far.
    pub last_input_seq: u32,
    /// The newest input received since the last `Simulate`, if newer than `last_input_seq`.
    pub pending_input: Option<Input>,
    pub datagrams_this_tick: usize,
    /// Newest snapshot tick the client says it holds whole.
    pub ack_tick: u64,
    /// Snapshots sent, newest last, at most [`limits::SNAPSHOT_HISTORY_TICKS`].
    pub history: VecDeque<SentSnapshot>,
    /// Built by `Replicate`, encoded and sent by `Send`.
    pub outgoing: Option<ClientSnapshot>,
    /// The snapshot that last fell out of `history`, kept so its buffers are reused.
    pub spare: SentSnapshot,
}

impl ClientState {
    fn new(max_datagram_bytes: usize, tick: u64) -> Self {
        Self {
            phase: Phase::AwaitHello { since_tick: tick },
            name: String::new(),
            max_datagram_bytes,
            last_input_seq: 0,
            pending_input: None,
            datagrams_this_tick: 0,
            ack_tick: 0,
            history: VecDeque::with_capacity(limits::SNAPSHOT_HISTORY_TICKS),
            outgoing: None,
            spare: SentSnapshot::default(),
        }
    }
}

/// Every connection of this shard, by id (ordered, so iteration is deterministic).
#[derive(Resource, Debug, Default)]
pub struct Clients(pub BTreeMap<ConnId, ClientState>);

/// Tell the client why, then close its connection. Touches no client state.
fn send_close(
    conn: ConnId,
    code: ErrorCode,
    reason: String,
    outbox: &mut Outbox,
    stats: &mut ShardStats,
) {
    warn!(conn = conn.0, code = code.as_str(), %reason, "closing client connection");
    let mut detail = reason.clone();
    detail.truncate(detail.floor_char_boundary(limits::ERROR_DETAIL_BYTES_MAX));
    let msg = codec::encode(&ServerControl::Error(ErrorMsg { code, detail }));
    outbox.commands.push(NetCommand::Control {
        conn,
        bytes: Bytes::from(msg),
    });
    outbox
        .commands
        .push(NetCommand::Close { conn, code, reason });
    stats.count_close(code);
}

/// Close a client: send the reason, forget its state and despawn its avatar.
fn close_client(
    conn: ConnId,
    code: ErrorCode,
    reason: String,
    clients: &mut Clients,
    outbox: &mut Outbox,
    commands: &mut Commands,
    stats: &mut ShardStats,
    despawned: &mut DespawnLog,
    players: &mut PlayerLog,
) {
    send_close(conn, code, reason, outbox, stats);
    if let Some(c) = clients.0.remove(&conn) {
        forget_avatar(&c, commands, despawned, players);
    }
}

/// A client is gone: its avatar leaves the world with it. A redirected client's avatar is not
/// its own any more (it is a proxy of the shard it moved to), so it stays.
fn forget_avatar(
    client: &ClientState,
    commands: &mut Commands,
    despawned: &mut DespawnLog,
    players: &mut PlayerLog,
) {
    if let Phase::Playing { avatar, id } = client.phase {
        despawned.0.push(id);
        players.left(&client.name);
        commands.entity(avatar).despawn();
    }
}

fn decode_error_code(e: &DecodeError) -> ErrorCode {
    match e {
        DecodeError::WrongVersion { .. } => ErrorCode::WrongVersion,
        _ => ErrorCode::BadMessage,
    }
}

/// Why a connection is being closed: the code the client sees and the reason logged.
type Refusal = (ErrorCode, String);

fn decode_refusal(what: &str, e: &DecodeError) -> Refusal {
    (decode_error_code(e), format!("{what} refused: {e}"))
}

/// `Receive`: drain the inbox. Each event handler either succeeds or returns a [`Refusal`], and
/// a refusal closes that one connection.
pub fn receive(
    mut commands: Commands,
    mut inbox: ResMut<Inbox>,
    mut outbox: ResMut<Outbox>,
    mut clients: ResMut<Clients>,
    mut ids: ResMut<IdAllocator>,
    mut rng: ResMut<ShardRng>,
    clock: Res<TickClock>,
    config: Res<Config>,
    registry: Res<Registry>,
    space: Res<Space>,
    mut stats: ResMut<ShardStats>,
    mut despawned: ResMut<DespawnLog>,
    mut players: ResMut<PlayerLog>,
    login: LoginContext,
) {
    let tick = clock.tick.0;
    let mut claimed = Vec::new();
    for c in clients.0.values_mut() {
        c.datagrams_this_tick = 0;
    }
    let events = std::mem::take(&mut inbox.events);
    for event in events {
        let conn = event.conn();
        let outcome = match event {
            NetEvent::Connected {
                max_datagram_bytes, ..
            } => {
                if clients.0.len() >= limits::CLIENTS_PER_SHARD_MAX {
                    // Not registered, so close_client below only sends the refusal.
                    Err((
                        ErrorCode::ServerFull,
                        format!("shard is full ({} clients)", limits::CLIENTS_PER_SHARD_MAX),
                    ))
                } else {
                    debug!(conn = conn.0, max_datagram_bytes, "client connected");
                    let mtu = max_datagram_bytes.max(limits::DATAGRAM_BYTES_MIN);
                    clients.0.insert(conn, ClientState::new(mtu, tick));
                    Ok(())
                }
            }
            NetEvent::Disconnected { reason, .. } => {
                if let Some(c) = clients.0.remove(&conn) {
                    info!(conn = conn.0, %reason, "client disconnected");
                    forget_avatar(&c, &mut commands, &mut despawned, &mut players);
                }
                Ok(())
            }
            NetEvent::Control { bytes, .. } => match clients.0.get_mut(&conn) {
                None => Ok(()),
                Some(client) => on_control(
                    conn,
                    client,
                    &bytes,
                    &mut commands,
                    &mut outbox,
                    &mut ids,
                    &mut rng,
                    &clock,
                    &config,
                    &registry,
                    &space,
                    &login,
                    &mut claimed,
                    &mut stats,
                    &mut players,
                ),
            },
            NetEvent::Datagram { bytes, .. } => match clients.0.get_mut(&conn) {
                None => Ok(()),
                Some(client) => on_datagram(client, &bytes, tick, &mut stats),
            },
        };
        if let Err((code, reason)) = outcome {
            close_client(
                conn,
                code,
                reason,
                &mut clients,
                &mut outbox,
                &mut commands,
                &mut stats,
                &mut despawned,
                &mut players,
            );
        }
    }
    let timeout_ticks = limits::HELLO_TIMEOUT_MS * u64::from(clock.tick_hz) / 1_000;
    let late: Vec<ConnId> = clients
        .0
        .iter()
        .filter(|(_, c)| matches!(c.phase, Phase::AwaitHello { since_tick } if tick.saturating_sub(since_tick) > timeout_ticks))
        .map(|(conn, _)| *conn)
        .collect();
    for conn in late {
        let reason = format!("no Hello within {} ms", limits::HELLO_TIMEOUT_MS);
        close_client(
            conn,
            ErrorCode::HelloTimeout,
            reason,
            &mut clients,
            &mut outbox,
            &mut commands,
            &mut stats,
            &mut despawned,
            &mut players,
        );
    }
    stats.clients = clients.0.len();
}

/// What a login needs besides the connection: the cluster's tokens and the entities a token
/// may name.
#[derive(bevy_ecs::system::SystemParam)]
pub struct LoginContext<'w, 's> {
    directory: Res<'w, ClusterDirectory>,
    index: Res<'w, NetIndex>,
    entities: Query<
        'w,
        's,
        (
            &'static Position,
            Option<&'static AwaitingClient>,
            Option<&'static Proxy>,
            Option<&'static InTransit>,
        ),
    >,
}

/// A control message: only `Hello`, only once, only with our protocol hash. Spawns the avatar,
/// binds a handed-off one (with a token), or redirects the login to the shard that owns its
/// spawn point.
fn on_control(
    conn: ConnId,
    client: &mut ClientState,
    bytes: &[u8],
    commands: &mut Commands,
    outbox: &mut Outbox,
    ids: &mut IdAllocator,
    rng: &mut ShardRng,
    clock: &TickClock,
    config: &Config,
    registry: &Registry,
    space: &Space,
    login: &LoginContext,
    claimed: &mut Vec<Entity>,
    stats: &mut ShardStats,
    players: &mut PlayerLog,
) -> Result<(), Refusal> {
    let ClientControl::Hello(hello) =
        codec::decode_client_control(bytes).map_err(|e| decode_refusal("control message", &e))?;
    if !matches!(client.phase, Phase::AwaitHello { .. }) {
        return Err((
            ErrorCode::Unexpected,
            "second Hello on one connection".into(),
        ));
    }
    let expected = registry.0.hash();
    if hello.protocol_hash != expected {
        return Err((
            ErrorCode::ProtocolMismatch,
            format!(
                "protocol hash {:016x}, shard has {expected:016x}",
                hello.protocol_hash
            ),
        ));
    }
    let cfg = &config.0;
    let w = &cfg.world;
    client.name = hello.name.clone();
    let redirect =
        |client: &mut ClientState, outbox: &mut Outbox, to, what, stats: &mut ShardStats| {
            let r = login.directory.redirect(to, what, clock.now_ms);
            client.phase = Phase::Redirected { avatar: None, to };
            stats.redirects += 1;
            outbox.commands.push(NetCommand::Control {
                conn,
                bytes: Bytes::from(codec::encode(&ServerControl::Redirect(r))),
            });
            Ok(())
        };
    let grant = match &hello.token {
        Some(t) => Some(
            login
                .directory
                .key
                .verify(t, space.me, clock.now_ms)
                .map_err(|e| (ErrorCode::BadToken, e.to_string()))?,
        ),
        None => None,
    };
    let (avatar, id, at) = match grant.map(|g| g.what) {
        Some(GrantKind::Avatar(id)) => {
            let found = login
                .index
                .0
                .get(&id)
                .and_then(|e| login.entities.get(*e).ok().map(|q| (*e, q)));
            match found {
                Some((e, (pos, Some(awaiting), _, _))) if !claimed.contains(&e) => {
                    claimed.push(e);
                    client.name = awaiting.name.clone();
                    client.last_input_seq = awaiting.last_input_seq;
                    commands
                        .entity(e)
                        .remove::<AwaitingClient>()
                        .insert(Avatar { conn });
                    stats.redirected_in += 1;
                    (e, id, pos.0)
                }
                // It moved on before its client arrived: follow it.
                Some((_, (_, None, Some(proxy), _))) => {
                    return redirect(client, outbox, proxy.owner, GrantKind::Avatar(id), stats);
                }
                Some((_, (_, None, None, Some(transit)))) => {
                    return redirect(client, outbox, transit.to, GrantKind::Avatar(id), stats);
                }
                _ => {
                    return Err((
                        ErrorCode::BadToken,
                        format!("avatar {id} is not waiting for a client here"),
                    ));
                }
            }
        }
        grant_spawn => {
            // A new player: where it asked (or was sent by another shard), else anywhere this
            // shard owns.
            let hint = match grant_spawn {
                Some(GrantKind::Spawn { spawn, .. }) => Some(spawn),
                _ => hello.spawn_hint,
            };
            let spawn = match hint.map(|q| q.to_vec3()).filter(|p| p.is_finite()) {
                Some(p) => Vec3::new(
                    p.x.clamp(w.min_x, w.max_x),
                    0.0,
                    p.z.clamp(w.min_z, w.max_z),
                ),
                None => space.random_owned_point(&mut rng.0).unwrap_or_else(|| {
                    Vec3::new(
                        rng.0.range_f32(w.min_x, w.max_x),
                        0.0,
                        rng.0.range_f32(w.min_z, w.max_z),
                    )
                }),
            };
            if let Some(owner) = space.map.owner_at([spawn.x, spawn.z])
                && owner != space.me
            {
                let what = GrantKind::Spawn {
                    name: hello.name.clone(),
                    spawn: QPos::quantize(spawn),
                };
                return redirect(client, outbox, owner, what, stats);
            }
            let id = ids.allocate();
            let avatar = commands
                .spawn((
                    Networked(id),
                    Owned,
                    Position(spawn),
                    MoveTarget {
                        target: spawn,
                        speed_mps: cfg.simulation.max_speed_mps,
                    },
                    Avatar { conn },
                    Kind::Player,
                ))
                .id();
            (avatar, id, spawn)
        }
    };
    client.phase = Phase::Playing { avatar, id };
    players.arrived(&client.name);
    info!(conn = conn.0, name = %client.name, avatar = %id, "client logged in");
    let welcome = ServerControl::Welcome(Welcome {
        avatar: id,
        spawn: QPos::quantize(at),
        tick: clock.tick.0,
        tick_hz: cfg.simulation.tick_hz as u16,
        protocol_hash: expected,
        bounds: [w.min_x, w.min_z, w.max_x, w.max_z],
        max_speed_mps: cfg.simulation.max_speed_mps,
        aoi_radius_m: cfg.interest.aoi_radius_m,
    });
    outbox.commands.push(NetCommand::Control {
        conn,
        bytes: Bytes::from(codec::encode(&welcome)),
    });
    outbox.commands.push(NetCommand::Control {
        conn,
        bytes: Bytes::from(codec::encode(&ServerControl::CellMap(space.client_view()))),
    });
    Ok(())
}

/// A datagram: an input. Rate-limited per tick; the newest sequence number wins.
fn on_datagram(
    client: &mut ClientState,
    bytes: &[u8],
    tick: u64,
    stats: &mut ShardStats,
) -> Result<(), Refusal> {
    client.datagrams_this_tick += 1;
    if client.datagrams_this_tick > limits::CLIENT_DATAGRAMS_PER_TICK_MAX {
        stats.inputs_dropped_rate += 1;
        return Ok(());
    }
    let ClientDatagram::Input(input) =
        codec::decode_client_datagram(bytes).map_err(|e| decode_refusal("datagram", &e))?;
    if input.ack_tick > tick {
        return Err((
            ErrorCode::BadMessage,
            format!(
                "acknowledged tick {} which the shard has not reached ({tick})",
                input.ack_tick
            ),
        ));
    }
    if matches!(client.phase, Phase::AwaitHello { .. }) {
        // A datagram may overtake the Hello on its stream; it carries nothing to keep.
        return Ok(());
    }
    client.ack_tick = client.ack_tick.max(input.ack_tick);
    if input.seq > client.last_input_seq && client.pending_input.is_none_or(|p| input.seq > p.seq) {
        client.pending_input = Some(input);
    } else {
        stats.inputs_stale += 1;
    }
    Ok(())
}

/// `Send`: encode every client's snapshot into datagram-sized parts and queue them.
pub fn send_snapshots(
    mut clients: ResMut<Clients>,
    mut outbox: ResMut<Outbox>,
    mut stats: ResMut<ShardStats>,
    mut buf: Local<bitcode::Buffer>,
) {
    for (conn, client) in clients.0.iter_mut() {
        let Some(snap) = client.outgoing.take() else {
            continue;
        };
        let parts = crate::replicate::encode_parts(
            &snap,
            client.last_input_seq,
            client.max_datagram_bytes,
            &mut buf,
        );
        for (bytes, updates) in parts {
            stats.snapshot_bytes += bytes.len() as u64;
            stats.snapshot_datagrams += 1;
            stats.entity_updates += updates as u64;
            outbox.commands.push(NetCommand::Datagram {
                conn: *conn,
                bytes: Bytes::from(bytes),
            });
        }
    }
}

/// `Ownership`: a client whose avatar vanished (despawned by a game system) is closed rather than
/// left driving nothing.
pub fn drop_clients_without_avatar(
    mut clients: ResMut<Clients>,
    mut outbox: ResMut<Outbox>,
    mut stats: ResMut<ShardStats>,
    avatars: Query<(), With<Avatar>>,
    views: Query<(), With<Networked>>,
) {
    let orphaned: Vec<ConnId> = clients
        .0
        .iter()
        .filter(|(_, c)| match c.phase {
            Phase::Playing { avatar, .. } => avatars.get(avatar).is_err(),
            Phase::Redirected {
                avatar: Some(e), ..
            } => views.get(e).is_err(),
            _ => false,
        })
        .map(|(conn, _)| *conn)
        .collect();
    for conn in orphaned {
        // The avatar is already gone: forget the client, nothing to despawn.
        clients.0.remove(&conn);
        send_close(
            conn,
            ErrorCode::Unexpected,
            "avatar was despawned".into(),
            &mut outbox,
            &mut stats,
        );
    }
}
