//! Ownership handoff: an owned entity that walks into another shard's cell becomes that shard's.
//!
//! The protocol, as DESIGN.md gives it, with the rule that keeps it safe under delay and
//! partitions:
//! 1. **Source** (`Ownership`, [`start_handoffs`]): an owned entity stands in a cell another
//!    shard owns and is at least `handoff_margin_m` from every cell this shard owns (hysteresis:
//!    pacing on a border does not flap). The source stops simulating it (`Owned` → [`InTransit`])
//!    and sends a `HandoffRequest` with its full state and generation + 1 under the current epoch.
//! 2. **Target** ([`on_message`]): if the epoch is its own, it owns the cell at the entity's
//!    position, and it did not own the entity already, it promotes its proxy (or spawns the
//!    entity) as owned at the new generation and answers `HandoffAck`; otherwise
//!    `HandoffRefuse`. Each answer is recorded, so a duplicate request or a late cancel gets
//!    the same answer.
//! 3. **Source** on `HandoffAck`: the entity becomes a proxy of the target; a player's client
//!    gets a `Redirect` with a signed token and its inputs are forwarded until it arrives.
//! 4. On `HandoffRefuse` the source resumes simulating it (and waits a little before trying
//!    again). On a **timeout** the source sends `HandoffCancel` and keeps the entity frozen until
//!    the answer: the target either took it already (it answers `HandoffAck` again) or records
//!    the generation as cancelled and refuses. The source never resumes on a bare timeout; a
//!    timeout with no answer at all (a partition) leaves the entity frozen, owned by no one
//!    simulating it but held by the source, until the link comes back. Nothing is ever owned twice
//!    or by no one.

use crate::components::{
    Avatar, Generation, MoveTarget, NetIndex, Networked, Owned, Position, ReplicatedComponents,
};
use crate::net::{Clients, Phase};
use crate::proxy::{Mirrors, Proxy, ShardOutbox, Space};
use crate::resources::{Config, Outbox, ShardStats, TickClock};
use bevy_ecs::prelude::*;
use bytes::Bytes;
use glam::Vec3;
use hdrhistogram::Histogram;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use tracing::{debug, warn};
use zonescaler_net::NetCommand;
use zonescaler_shared::codec;
use zonescaler_shared::limits;
use zonescaler_shared::protocol::*;
use zonescaler_shared::token::{Grant, GrantKind, TOKEN_LIFETIME_MS, TokenKey};
use zonescaler_shared::{NetId, ShardId};

/// Frozen on the source while its handoff is answered: not simulated (no `Owned`), not a proxy.
#[derive(Component, Clone, Copy, Debug, PartialEq, Eq)]
pub struct InTransit {
    pub to: ShardId,
    /// The generation the target takes it at.
    pub generation: u32,
    pub since_tick: u64,
    pub cancel_sent: bool,
}

/// After a refusal, the source waits until this tick before offering the entity again.
#[derive(Component, Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandoffBackoff {
    pub until_tick: u64,
}

/// A handed-off player avatar whose client has not arrived with its token yet. Inputs forwarded
/// by the source drive it meanwhile; past [`limits::REDIRECT_WAIT_MS`] it is despawned.
#[derive(Component, Clone, Debug, PartialEq, Eq)]
pub struct AwaitingClient {
    pub name: String,
    pub since_ms: u64,
    pub last_input_seq: u32,
}

/// The cluster's token key (from the cluster secret) and where each shard's clients connect.
#[derive(Resource, Debug, Clone)]
pub struct ClusterDirectory {
    pub key: TokenKey,
    /// Client-facing `host:port` of each shard (empty where the transport routes by shard id).
    pub client_addrs: BTreeMap<ShardId, String>,
}

impl Default for ClusterDirectory {
    fn default() -> Self {
        // A single process needs no secret: its tokens never leave it. Multi-process clusters
        // always replace this with the configured cluster secret (the runtime refuses to start
        // without one).
        Self {
            key: TokenKey::new(b"zonescaler single-process key"),
            client_addrs: BTreeMap::new(),
        }
    }
}

impl ClusterDirectory {
    /// A signed redirect for `what` on shard `to`, valid for [`TOKEN_LIFETIME_MS`] from `now_ms`.
    pub fn redirect(&self, to: ShardId, what: GrantKind, now_ms: u64) -> Redirect {
        let token = self.key.sign(&Grant {
            shard: to,
            what,
            expires_ms: now_ms + TOKEN_LIFETIME_MS,
        });
        Redirect {
            shard: to,
            addr: self.client_addrs.get(&to).cloned().unwrap_or_default(),
            token,
        }
    }
}

/// The target's memory of its answers, and the counters the cluster API reports.
#[derive(Resource, Debug)]
pub struct HandoffState {
    /// Highest generation accepted per entity (bounded: oldest forgotten first).
    accepted: BTreeMap<NetId, u32>,
    accepted_order: VecDeque<NetId>,
    cancelled: BTreeSet<(NetId, u32)>,
    cancelled_order: VecDeque<(NetId, u32)>,
    /// Entities frozen on this shard waiting for an answer.
    pub in_flight: usize,
    pub started: u64,
    /// Handoffs this shard completed as source (acked).
    pub out: u64,
    /// Handoffs this shard accepted as target.
    pub accepted_total: u64,
    pub refused_sent: u64,
    pub refused_received: u64,
    pub cancels_sent: u64,
    /// Milliseconds from the source freezing an entity to this shard simulating it.
    pub transit_ms: Histogram<u64>,
}

impl Default for HandoffState {
    fn default() -> Self {
        Self {
            accepted: BTreeMap::new(),
            accepted_order: VecDeque::new(),
            cancelled: BTreeSet::new(),
            cancelled_order: VecDeque::new(),
            in_flight: 0,
            started: 0,
            out: 0,
            accepted_total: 0,
            refused_sent: 0,
            refused_received: 0,
            cancels_sent: 0,
            // 1 ms .. 1 h, 2 significant digits: static bounds, cannot fail.
            transit_ms: Histogram::new_with_bounds(1, 3_600_000, 2)
                .expect("invariant: valid static bounds"),
        }
    }
}

impl HandoffState {
    fn record_accepted(&mut self, id: NetId, generation: u32) {
        if self.accepted.insert(id, generation).is_none() {
            self.accepted_order.push_back(id);
        }
        while self.accepted_order.len() > limits::HANDOFF_RECORDS_MAX {
            if let Some(old) = self.accepted_order.pop_front() {
                self.accepted.remove(&old);
            }
        }
    }

    fn record_cancelled(&mut self, id: NetId, generation: u32) {
        if self.cancelled.insert((id, generation)) {
            self.cancelled_order.push_back((id, generation));
        }
        while self.cancelled_order.len() > limits::HANDOFF_RECORDS_MAX {
            if let Some(old) = self.cancelled_order.pop_front() {
                self.cancelled.remove(&old);
            }
        }
    }

    fn has_accepted(&self, id: NetId, generation: u32) -> bool {
        self.accepted.get(&id).is_some_and(|g| *g >= generation)
    }
}

fn send(world: &mut World, to: ShardId, msg: &ShardMessage) {
    world
        .resource_mut::<ShardOutbox>()
        .messages
        .push((to, Bytes::from(codec::encode(msg))));
}

/// `Ownership`: offer every owned entity that stands clearly inside another shard's cell to
/// that shard.
pub fn start_handoffs(
    mut commands: Commands,
    space: Res<Space>,
    config: Res<Config>,
    clock: Res<TickClock>,
    mut outbox: ResMut<ShardOutbox>,
    mut state: ResMut<HandoffState>,
    mut mirrors: ResMut<Mirrors>,
    clients: Res<Clients>,
    moved: Query<(Entity, &Position), (With<Owned>, bevy_ecs::query::Changed<Position>)>,
    q: Query<
        (
            &Networked,
            &Generation,
            Option<&MoveTarget>,
            &ReplicatedComponents,
            Option<&Avatar>,
            Option<&AwaitingClient>,
            Option<&HandoffBackoff>,
        ),
        With<Owned>,
    >,
) {
    if !space.has_neighbours {
        return;
    }
    let tick = clock.tick.0;
    let margin = config.0.cluster.handoff_margin_m;
    // Two queries: the narrow one walks every moved entity, the wide one is read only for the
    // few that stand in another shard's cell.
    for (e, pos) in &moved {
        let p = [pos.0.x, pos.0.z];
        // Most moved entities stand in a base cell this shard owns whole: one table read.
        let Some(to) = space.owner_at(p) else {
            continue;
        };
        if to == space.me || space.boundary.owns_near(p, margin, space.me) {
            continue;
        }
        let Ok((net, generation, mt, cache, avatar, awaiting, backoff)) = q.get(e) else {
            continue;
        };
        if backoff.is_some_and(|b| tick < b.until_tick) {
            continue;
        }
        if state.in_flight >= limits::HANDOFFS_IN_FLIGHT_MAX {
            break;
        }
        let player = match (avatar, awaiting) {
            (Some(a), _) => clients.0.get(&a.conn).map(|c| PlayerHandoff {
                name: c.name.clone(),
                last_input_seq: c.last_input_seq,
            }),
            (None, Some(w)) => Some(PlayerHandoff {
                name: w.name.clone(),
                last_input_seq: w.last_input_seq,
            }),
            (None, None) => None,
        };
        let next = generation.0.wrapping_add(1);
        let (target, speed) = mt.map_or((pos.0, 0.0), |m| (m.target, m.speed_mps));
        let req = ShardMessage::HandoffRequest(HandoffRequest {
            epoch: space.map.epoch().0,
            id: net.0,
            generation: next,
            pos: pos.0.to_array(),
            move_target: target.to_array(),
            speed_mps: speed,
            rev: cache.rev,
            components: cache.blobs.clone(),
            player,
            sent_ms: clock.now_ms,
        });
        outbox.messages.push((to, Bytes::from(codec::encode(&req))));
        // The target promotes its proxy: it must not get a remove for it from here.
        if let Some(sent) = mirrors.0.get_mut(&to) {
            sent.remove(&net.0);
        }
        commands
            .entity(e)
            .remove::<(Owned, HandoffBackoff)>()
            .insert(InTransit {
                to,
                generation: next,
                since_tick: tick,
                cancel_sent: false,
            });
        state.in_flight += 1;
        state.started += 1;
        debug!(id = %net.0, to = to.0, generation = next, "handoff offered");
    }
}

/// `Ownership`: a handoff unanswered for `handoff_timeout_ms` is cancelled (once); the entity
/// stays frozen until the target's answer to the cancel.
pub fn cancel_late_handoffs(
    mut q: Query<(&Networked, &mut InTransit)>,
    clock: Res<TickClock>,
    config: Res<Config>,
    mut outbox: ResMut<ShardOutbox>,
    mut state: ResMut<HandoffState>,
) {
    let timeout_ticks = config.0.cluster.handoff_timeout_ms * u64::from(clock.tick_hz) / 1_000;
    for (net, mut t) in &mut q {
        if t.cancel_sent || clock.tick.0.saturating_sub(t.since_tick) <= timeout_ticks {
            continue;
        }
        t.cancel_sent = true;
        state.cancels_sent += 1;
        warn!(id = %net.0, to = t.to.0, "handoff unanswered: cancelling");
        let msg = ShardMessage::HandoffCancel {
            id: net.0,
            generation: t.generation,
        };
        outbox
            .messages
            .push((t.to, Bytes::from(codec::encode(&msg))));
    }
}

/// `Ownership`: avatars whose client never arrived after a handoff are despawned.
pub fn expire_awaiting_clients(
    mut commands: Commands,
    q: Query<(Entity, &Networked, &AwaitingClient), With<Owned>>,
    clock: Res<TickClock>,
    mut despawned: ResMut<crate::resources::DespawnLog>,
) {
    for (e, net, w) in &q {
        if clock.now_ms.saturating_sub(w.since_ms) > limits::REDIRECT_WAIT_MS {
            warn!(id = %net.0, name = %w.name, "handed-off avatar's client never arrived: despawning");
            despawned.0.push(net.0);
            commands.entity(e).despawn();
        }
    }
}

/// Handle one handoff-related or command message from `from`. False if it was stale.
pub fn on_message(world: &mut World, from: ShardId, msg: ShardMessage) -> bool {
    match msg {
        ShardMessage::HandoffRequest(req) => {
            on_request(world, from, req);
            true
        }
        ShardMessage::HandoffAck { id, generation } => on_ack(world, from, id, generation),
        ShardMessage::HandoffRefuse {
            id,
            generation,
            reason,
        } => on_refuse(world, from, id, generation, reason),
        ShardMessage::HandoffCancel { id, generation } => {
            let answer = if world
                .resource::<HandoffState>()
                .has_accepted(id, generation)
            {
                ShardMessage::HandoffAck { id, generation }
            } else {
                world
                    .resource_mut::<HandoffState>()
                    .record_cancelled(id, generation);
                ShardMessage::HandoffRefuse {
                    id,
                    generation,
                    reason: RefuseReason::Cancelled,
                }
            };
            send(world, from, &answer);
            true
        }
        ShardMessage::ForwardInput { id, input } => on_forwarded_input(world, id, input),
        ShardMessage::Command(cmd) => {
            crate::commands::receive(world, cmd);
            true
        }
        ShardMessage::ProxyBatch(_) => false,
    }
}

fn refuse(world: &mut World, to: ShardId, id: NetId, generation: u32, reason: RefuseReason) {
    world.resource_mut::<HandoffState>().refused_sent += 1;
    debug!(id = %id, to = to.0, ?reason, "handoff refused");
    send(
        world,
        to,
        &ShardMessage::HandoffRefuse {
            id,
            generation,
            reason,
        },
    );
}

/// Target side of step 2.
fn on_request(world: &mut World, from: ShardId, req: HandoffRequest) {
    let (id, generation) = (req.id, req.generation);
    let state = world.resource::<HandoffState>();
    if state.cancelled.contains(&(id, generation)) {
        return refuse(world, from, id, generation, RefuseReason::Cancelled);
    }
    if state.has_accepted(id, generation) {
        // A duplicate: the same answer again.
        return send(world, from, &ShardMessage::HandoffAck { id, generation });
    }
    let space = world.resource::<Space>();
    if req.epoch != space.map.epoch().0 {
        return refuse(world, from, id, generation, RefuseReason::StaleEpoch);
    }
    if space.map.owner_at([req.pos[0], req.pos[2]]) != Some(space.me) {
        return refuse(world, from, id, generation, RefuseReason::NotOwner);
    }
    if world.resource::<NetIndex>().0.len() >= limits::ENTITIES_PER_SHARD_MAX {
        return refuse(world, from, id, generation, RefuseReason::Full);
    }
    let existing = world.resource::<NetIndex>().0.get(&id).copied();
    let entity = match existing {
        Some(e) => {
            let ent = world.entity(e);
            let is_proxy = ent.contains::<Proxy>();
            let newer = ent.get::<Generation>().is_none_or(|g| g.0 < generation);
            if !is_proxy || !newer {
                // The receiver asserts it did not own the entity before accepting it.
                warn!(id = %id, from = from.0, "handoff of an entity this shard already owns or has newer");
                return refuse(world, from, id, generation, RefuseReason::Conflict);
            }
            world.entity_mut(e).remove::<Proxy>();
            e
        }
        None => world.spawn(Networked(id)).id(),
    };
    let now_ms = world.resource::<TickClock>().now_ms;
    let pos = Vec3::from_array(req.pos);
    let mut ent = world.entity_mut(entity);
    ent.insert((
        Position(pos),
        MoveTarget {
            target: Vec3::from_array(req.move_target),
            speed_mps: req.speed_mps,
        },
        Generation(generation),
        ReplicatedComponents {
            rev: req.rev,
            blobs: req.components.clone(),
        },
    ));
    if let Some(p) = req.player {
        ent.insert(AwaitingClient {
            name: p.name,
            since_ms: now_ms,
            last_input_seq: p.last_input_seq,
        });
    }
    // Typed game components from their bytes, then `Owned` last: from here on it is simulated.
    crate::app::insert_replicated(world, entity, &req.components);
    world.entity_mut(entity).insert(Owned);
    let mut state = world.resource_mut::<HandoffState>();
    state.record_accepted(id, generation);
    state.accepted_total += 1;
    state
        .transit_ms
        .saturating_record(now_ms.saturating_sub(req.sent_ms).max(1));
    send(world, from, &ShardMessage::HandoffAck { id, generation });
}

/// The entity `id` frozen here for a handoff to `to` at `generation`, if any.
fn in_transit(world: &World, id: NetId, to: ShardId, generation: u32) -> Option<Entity> {
    let e = *world.resource::<NetIndex>().0.get(&id)?;
    let t = world.get::<InTransit>(e)?;
    (t.to == to && t.generation == generation).then_some(e)
}

/// Source side of step 3: the entity is now the target's; keep a proxy, move its client.
fn on_ack(world: &mut World, from: ShardId, id: NetId, generation: u32) -> bool {
    let Some(e) = in_transit(world, id, from, generation) else {
        return false;
    };
    let old_generation = world.get::<Generation>(e).map_or(0, |g| g.0);
    let avatar = world.get::<Avatar>(e).copied();
    let mut ent = world.entity_mut(e);
    ent.remove::<(
        InTransit,
        MoveTarget,
        Avatar,
        AwaitingClient,
        HandoffBackoff,
    )>();
    ent.insert((Proxy { owner: from }, Generation(generation)));
    crate::app::remove_replicated(world, e);
    {
        let mut state = world.resource_mut::<HandoffState>();
        state.in_flight = state.in_flight.saturating_sub(1);
        state.out += 1;
    }
    // Other neighbours' proxies of it were ours: the new owner mirrors it from now on.
    let epoch = world.resource::<Space>().map.epoch().0;
    let holders: Vec<ShardId> = world
        .resource_mut::<Mirrors>()
        .0
        .iter_mut()
        .filter_map(|(to, sent)| sent.remove(&id).map(|_| *to))
        .collect();
    for to in holders {
        send(
            world,
            to,
            &ShardMessage::ProxyBatch(ProxyBatch {
                epoch,
                upserts: Vec::new(),
                removes: vec![(id, old_generation)],
            }),
        );
    }
    if let Some(a) = avatar {
        redirect_client(world, a.conn, e, id, from);
    }
    true
}

/// Tell the client of a handed-off avatar where its avatar went.
fn redirect_client(
    world: &mut World,
    conn: zonescaler_shared::ConnId,
    e: Entity,
    id: NetId,
    to: ShardId,
) {
    let now_ms = world.resource::<TickClock>().now_ms;
    let redirect = world
        .resource::<ClusterDirectory>()
        .redirect(to, GrantKind::Avatar(id), now_ms);
    let mut clients = world.resource_mut::<Clients>();
    let Some(client) = clients.0.get_mut(&conn) else {
        return;
    };
    client.phase = Phase::Redirected {
        avatar: Some(e),
        to,
    };
    world
        .resource_mut::<Outbox>()
        .commands
        .push(NetCommand::Control {
            conn,
            bytes: Bytes::from(codec::encode(&ServerControl::Redirect(redirect))),
        });
    world.resource_mut::<ShardStats>().redirects += 1;
}

/// Source side of step 4: the target will never take it at this generation; simulate it again.
fn on_refuse(
    world: &mut World,
    from: ShardId,
    id: NetId,
    generation: u32,
    reason: RefuseReason,
) -> bool {
    let Some(e) = in_transit(world, id, from, generation) else {
        return false;
    };
    let tick = world.resource::<TickClock>().tick.0;
    let hz = u64::from(world.resource::<TickClock>().tick_hz);
    world.entity_mut(e).remove::<InTransit>().insert((
        Owned,
        HandoffBackoff {
            until_tick: tick + hz / 2,
        },
    ));
    let mut state = world.resource_mut::<HandoffState>();
    state.in_flight = state.in_flight.saturating_sub(1);
    state.refused_received += 1;
    debug!(id = %id, from = from.0, ?reason, "handoff refused: resuming");
    true
}

/// An input the source forwarded for an avatar whose client is still on its way here.
fn on_forwarded_input(world: &mut World, id: NetId, input: Input) -> bool {
    let Some(e) = world.resource::<NetIndex>().0.get(&id).copied() else {
        return false;
    };
    let target = input.target.to_vec3();
    if !crate::movement::in_world(&world.resource::<Config>().0, target) {
        return false;
    }
    let mut ent = world.entity_mut(e);
    let Some(mut w) = ent.get_mut::<AwaitingClient>() else {
        return false;
    };
    if input.seq <= w.last_input_seq {
        return false;
    }
    w.last_input_seq = input.seq;
    if let Some(mut mt) = ent.get_mut::<MoveTarget>() {
        mt.target = target;
    }
    true
}
