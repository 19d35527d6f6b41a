//! Ownership handoff: an owned entity that walks into another shard's cell becomes that shard's.
//!
//! The protocol, as DESIGN.md gives it, with the rule that keeps it safe under delay and
//! partitions:
//! 1. **Source** (`Ownership`, [`start_handoffs`]): an owned entity stands in a cell another
//!    shard owns and is at least `handoff_margin_m` from every cell this shard owns (hysteresis:
//!    pacing on a border does not flap). The source stops simulating it (`Owned` → [`InTransit`])
//!    and sends a `HandoffRequest` with its full state and the attempt's number (generation + 1)
//!    under the current epoch.
//! 2. **Target** ([`on_message`]): if the epoch is its own, it owns the cell at the entity's
//!    position, and it did not own the entity already, it promotes its proxy (or spawns the
//!    entity) as owned at the new generation and answers `HandoffAck`; otherwise
//!    `HandoffRefuse`. Each answer is recorded, so a duplicate request or a late cancel gets
//!    the same answer.
//! 3. **Source** on `HandoffAck`: the entity becomes a proxy of the target; a player's client
//!    gets a `Redirect` with a signed token and its inputs are forwarded until it arrives.
//! 4. On `HandoffRefuse` the source resumes simulating it at the attempt's number (so the next
//!    attempt has a new one), waits `HANDOFF_BACKOFF_MS`, then looks at it again, moved or not. On a **timeout** the source sends `HandoffCancel` and keeps the entity frozen until
//!    the answer: the target either took it already (it answers `HandoffAck` again) or records
//!    the generation as cancelled and refuses. The source never resumes on a bare timeout; a
//!    timeout with no answer at all (a partition) leaves the entity frozen, owned by no one
//!    simulating it but held by the source, until the link comes back. Nothing is ever owned twice
//!    or by no one.
//! 5. Two things settle an attempt without its answer: a proxy update for the entity at the
//!    attempt's number or later, from whoever owns it now, proves the target took it (the ack is
//!    late: [`taken_meanwhile`]); and the target leaving the cluster (drained, so it owned no
//!    cell and took nothing) refuses it (`replica::on_departed`); a target that died is settled
//!    by the shard that adopted its cells (see `super::replica`).
//!
//! The request carries everything the entity is: its replicated components (which stay on the
//! source, typed, as the proxy's) and the server-only components the game registered with
//! `migrate::<T>()` (encoded when the offer is sent, taken off the source on the ack).
//!
//! What the protocol remembers lives in [`HandoffBook`] (`machine.rs`), a pure state machine;
//! this module is its ECS adapter.

mod machine;

pub use machine::{Attempt, Effect, HandoffBook, NotNow};

use super::cell_move::CellMoves;
use super::proxy::Mirrors;
use crate::client::{Clients, ClusterDirectory, Phase, send_control};
use crate::core::components::{
    Avatar, AwaitingClient, Generation, InTransit, MoveTarget, NetIndex, Networked, Owned, Player,
    Position, Proxy, ReplicatedComponents,
};
use crate::core::registry::{
    apply_replicated, encode_migrating, insert_migrating, remove_migrating,
};
use crate::core::resources::{
    Config, DespawnLog, HandoffStats, Outbox, ShardOutbox, ShardStats, TickClock,
};
use crate::core::space::Space;
use crate::interest::Viewers;
use bevy_ecs::prelude::*;
use bevy_ecs::system::SystemParam;
use bytes::Bytes;
use glam::Vec3;
use tracing::{debug, warn};
use zonescaler_shared::codec;
use zonescaler_shared::limits;
use zonescaler_shared::protocol::*;
use zonescaler_shared::quant::QPos;
use zonescaler_shared::token::GrantKind;
use zonescaler_shared::{NetId, ShardId};

/// The shard's [`HandoffBook`]: every attempt open as source, every answer given as target.
#[derive(Resource, Debug)]
pub struct Handoffs(pub HandoffBook);

impl FromWorld for Handoffs {
    fn from_world(world: &mut World) -> Self {
        let timeout_ms = world
            .get_resource::<Config>()
            .map_or(2_000, |c| c.0.cluster.handoff_timeout_ms);
        Self(HandoffBook::new(timeout_ms))
    }
}

/// Entities whose backoff after a refusal ended this tick: [`start_handoffs`] looks at them
/// again, moved or not.
#[derive(Resource, Debug, Default)]
pub struct Rechecks(Vec<NetId>);

/// Handoff requests built this tick, waiting for their migrating components (which need the
/// whole world to encode) before they are sent.
#[derive(Resource, Debug, Default)]
pub struct OutgoingOffers(Vec<(Entity, ShardId, HandoffRequest)>);

pub(crate) fn send(world: &mut World, to: ShardId, msg: &ShardMessage) {
    world
        .resource_mut::<ShardOutbox>()
        .messages
        .push((to, Bytes::from(codec::encode(msg))));
}

/// Who an avatar's player is, for the target: from its client, or from what a previous
/// handoff carried while the client is still on its way.
pub(crate) fn player_of(
    avatar: Option<&Avatar>,
    awaiting: Option<&AwaitingClient>,
    clients: &Clients,
    viewers: &Viewers,
) -> Option<PlayerHandoff> {
    match (avatar, awaiting) {
        (Some(a), _) => clients.0.get(&a.conn).map(|c| PlayerHandoff {
            name: c.name.clone(),
            last_input_seq: viewers.0.get(&a.conn).map_or(0, |v| v.last_input_seq),
        }),
        (None, Some(w)) => Some(PlayerHandoff {
            name: w.name.clone(),
            last_input_seq: w.last_input_seq,
        }),
        (None, None) => None,
    }
}

/// What `start_handoffs` reads of an owned entity it offers.
type OfferParts = (
    &'static Networked,
    &'static Generation,
    Option<&'static MoveTarget>,
    &'static ReplicatedComponents,
    Option<&'static Avatar>,
    Option<&'static AwaitingClient>,
);

/// `Ownership`, first: time passes for the [`HandoffBook`]: cancels for attempts unanswered past
/// the timeout (the entity stays frozen until the answer), and the entities whose backoff ended,
/// for [`start_handoffs`] to look at again.
pub fn poll_handoffs(
    mut book: ResMut<Handoffs>,
    clock: Res<TickClock>,
    mut outbox: ResMut<ShardOutbox>,
    mut rechecks: ResMut<Rechecks>,
    mut stats: ResMut<HandoffStats>,
) {
    rechecks.0.clear();
    for effect in book.0.poll(clock.now_ms) {
        match effect {
            Effect::Send(to, msg) => {
                if let ShardMessage::HandoffCancel { id, .. } = &msg {
                    stats.cancels_sent += 1;
                    warn!(id = %id, to = to.0, "handoff unanswered: cancelling");
                }
                outbox.messages.push((to, Bytes::from(codec::encode(&msg))));
            }
            Effect::Recheck { id } => rechecks.0.push(id),
            // `poll` settles nothing: it only sends and asks for rechecks.
            Effect::Take { .. } | Effect::Release { .. } | Effect::Resume { .. } => {}
        }
    }
}

/// The shard an owned entity at `p` should go to: the owner of the cell it stands in, when that
/// is another shard and the entity is at least `handoff_margin_m` from every cell this shard
/// owns (hysteresis), unless this shard is taking that cell over in a cell move.
fn handoff_target(space: &Space, moves: &CellMoves, margin: f32, p: [f32; 2]) -> Option<ShardId> {
    // Most moved entities stand in a base cell this shard owns whole: one table read.
    let to = space.owner_at(p)?;
    let away = to != space.me && !space.boundary.owns_near(p, margin, space.me);
    (away && !moves.takes(&space.map, p, None)).then_some(to)
}

/// What offering an owned entity to a neighbour takes: the handoff book and the entity's parts.
/// Ordinary handoffs ([`start_handoffs`]) and cell moves (`cell_move::ship_cells`) both offer
/// through it.
#[derive(SystemParam)]
pub struct Offerer<'w, 's> {
    commands: Commands<'w, 's>,
    pub space: Res<'w, Space>,
    clock: Res<'w, TickClock>,
    book: ResMut<'w, Handoffs>,
    stats: ResMut<'w, HandoffStats>,
    mirrors: ResMut<'w, Mirrors>,
    offers: ResMut<'w, OutgoingOffers>,
    clients: Res<'w, Clients>,
    viewers: Res<'w, Viewers>,
    parts: Query<'w, 's, OfferParts, With<Owned>>,
    membership: Option<Res<'w, crate::core::resources::Membership>>,
}

impl Offerer<'_, '_> {
    /// Offer owned entity `e`, standing at `pos`, to `to`: it is frozen and its request queued
    /// for [`send_offers`]. False if it cannot be offered now (already offered, backing off
    /// after a refusal, or `to` has its fill of open attempts): it stays owned here.
    pub fn offer(&mut self, e: Entity, pos: Vec3, to: ShardId) -> bool {
        let Ok((net, generation, mt, cache, avatar, awaiting)) = self.parts.get(e) else {
            return false;
        };
        // A cell of a member that left (its map not replaced yet): nobody would answer.
        let gone = self
            .membership
            .as_ref()
            .is_some_and(|m| !m.members.is_empty() && !m.members.contains(&to));
        if gone {
            return false;
        }
        let now_ms = self.clock.now_ms;
        let Ok(number) = self.book.0.offer(now_ms, net.0, to, generation.0) else {
            return false;
        };
        let (target, speed) = mt.map_or((pos, 0.0), |m| (m.target, m.speed_mps));
        let req = HandoffRequest {
            epoch: self.space.map.epoch().0,
            id: net.0,
            generation: number,
            pos: pos.to_array(),
            move_target: target.to_array(),
            speed_mps: speed,
            rev: cache.rev,
            components: cache.blobs.to_vec(),
            migrating: Vec::new(),
            player: player_of(avatar, awaiting, &self.clients, &self.viewers),
            sent_ms: now_ms,
        };
        let id = net.0;
        self.offers.0.push((e, to, req));
        // The target promotes its proxy: it must not get a remove for it from here.
        if let Some(sent) = self.mirrors.0.get_mut(&to) {
            sent.remove(&id);
        }
        self.commands.entity(e).remove::<Owned>().insert(InTransit {
            to,
            generation: number,
        });
        self.stats.started += 1;
        debug!(id = %id, to = to.0, generation = number, "handoff offered");
        true
    }
}

/// `Ownership`: offer every owned entity that stands clearly inside another shard's cell to
/// that shard: those that moved this tick, and those whose backoff after a refusal just ended
/// (an entity refused while standing still would otherwise never be offered again). The request
/// goes out in [`send_offers`], once its migrating state is encoded.
pub fn start_handoffs(
    mut offerer: Offerer,
    config: Res<Config>,
    moves: Res<CellMoves>,
    (rechecks, index): (Res<Rechecks>, Res<NetIndex>),
    moved: Query<(Entity, &Position), (With<Owned>, bevy_ecs::query::Changed<Position>)>,
    owned: Query<&Position, With<Owned>>,
) {
    if !offerer.space.has_neighbours {
        return;
    }
    let margin = config.0.cluster.handoff_margin_m;
    let rechecked = rechecks.0.iter().filter_map(|id| {
        let e = *index.0.get(id)?;
        owned.get(e).ok().map(|pos| (e, pos))
    });
    for (e, pos) in moved.iter().chain(rechecked) {
        if let Some(to) = handoff_target(&offerer.space, &moves, margin, [pos.0.x, pos.0.z]) {
            offerer.offer(e, pos.0, to);
        }
    }
}

/// `Ownership`, after [`start_handoffs`]: encode each offered entity's migrating components
/// into its request and send it (before this tick's proxy updates, which follow on the link).
/// A playing avatar's client is told where it may be sent ([`prepare_client`]).
pub fn send_offers(world: &mut World) {
    let offers = std::mem::take(&mut world.resource_mut::<OutgoingOffers>().0);
    for (e, to, mut req) in offers {
        req.migrating = encode_migrating(world, e);
        world
            .resource_mut::<super::replica::Handed>()
            .offered(req.clone());
        send(world, to, &ShardMessage::HandoffRequest(req));
        if let Some(conn) = world.get::<Avatar>(e).map(|a| a.conn) {
            prepare_client(world, conn, to);
        }
    }
}

/// Tell the client of an avatar just offered to `to` that a redirect there may follow
/// (`ServerControl::Prepare`), so it can open that connection while the shards settle the
/// handoff (a link round trip and a tick on each side) instead of after: the QUIC handshake
/// leaves the handoff gap. Only a client playing here is told.
fn prepare_client(world: &mut World, conn: zonescaler_shared::ConnId, to: ShardId) {
    let playing = world
        .resource::<Clients>()
        .0
        .get(&conn)
        .is_some_and(|c| matches!(c.phase, Phase::Playing { .. }));
    if !playing {
        return;
    }
    let prepare = world.resource::<ClusterDirectory>().prepare(to);
    send_control(
        conn,
        &ServerControl::Prepare(prepare),
        &mut world.resource_mut::<Outbox>(),
    );
    world.resource_mut::<ShardStats>().redirects_prepared += 1;
}

/// `Ownership`: avatars whose client never arrived after a handoff are despawned.
pub fn expire_awaiting_clients(
    mut commands: Commands,
    q: Query<(Entity, &Networked, &AwaitingClient), With<Owned>>,
    clock: Res<TickClock>,
    mut despawned: ResMut<DespawnLog>,
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
    let now_ms = world.resource::<TickClock>().now_ms;
    match msg {
        ShardMessage::HandoffRequest(req) => {
            on_request(world, from, req);
            true
        }
        ShardMessage::HandoffAck { id, generation } => {
            let effect = world
                .resource_mut::<Handoffs>()
                .0
                .on_ack(id, from, generation);
            match effect {
                Some(e) => apply(world, e),
                None => super::replica::on_handed_answer(world, from, id, generation, true),
            }
        }
        ShardMessage::HandoffRefuse {
            id,
            generation,
            reason,
        } => {
            let effect = world
                .resource_mut::<Handoffs>()
                .0
                .on_refuse(now_ms, id, from, generation, reason);
            match effect {
                Some(e) => apply(world, e),
                None => super::replica::on_handed_answer(world, from, id, generation, false),
            }
        }
        ShardMessage::HandoffCancel { id, generation } => {
            if held_at_or_after(world, id, generation) {
                // Taken at that attempt (and perhaps handed on since), whether or not the book
                // still remembers it: a failover's inherited cancel can come after the answer's
                // keep (`authority::replica`).
                send(world, from, &ShardMessage::HandoffAck { id, generation });
                return true;
            }
            let effect = world
                .resource_mut::<Handoffs>()
                .0
                .on_cancel(now_ms, from, id, generation);
            apply(world, effect)
        }
        ShardMessage::ForwardInput { id, input } => on_forwarded_input(world, id, input),
        ShardMessage::Command(cmd) => {
            world
                .resource_mut::<crate::core::commands::CommandInbox>()
                .push(cmd);
            true
        }
        ShardMessage::ProxyBatch(_) => false,
        ShardMessage::Replica(batch) => super::replica::on_batch(world, from, batch),
        ShardMessage::ReplicaAck { tick } => super::replica::on_ack(world, from, tick),
        ShardMessage::Orphan {
            dead,
            epoch,
            id,
            generation,
        } => super::replica::on_orphan(world, from, dead, epoch, id, generation),
        ShardMessage::Taken { dead, ids, last } => {
            super::replica::on_taken(world, from, dead, ids, last)
        }
    }
}

/// Whether this shard holds `id` (owned, frozen or as a proxy) at ownership generation
/// `generation` or later: then the attempt numbered `generation` was taken (only its target
/// can hold the entity at that number, and generations only grow along its owners).
pub(crate) fn held_at_or_after(world: &World, id: NetId, generation: u32) -> bool {
    let Some(&e) = world.resource::<NetIndex>().0.get(&id) else {
        return false;
    };
    world
        .get::<Generation>(e)
        .is_some_and(|g| g.0 >= generation)
}

/// An owner's proxy update for `id` at `generation` came while this shard still holds `id`
/// frozen in a handoff numbered `generation` or lower: the handoff's target took it, and its
/// ack is still on the way (an attempt's number is the generation the target takes the entity
/// at, and generations only grow along its owners, so no shard holds it at that number or
/// later unless the attempt was accepted). Settle the attempt as acked now, so the update is
/// taken as the proxy it is; refused, it would be missing once the late ack came, while its
/// owner (which may be a shard further on) believed it sent.
pub(crate) fn taken_meanwhile(world: &mut World, id: NetId, generation: u32) {
    let Some(&e) = world.resource::<NetIndex>().0.get(&id) else {
        return;
    };
    let Some(t) = world.get::<InTransit>(e).copied() else {
        return;
    };
    if generation < t.generation {
        return;
    }
    let acked = world
        .resource_mut::<Handoffs>()
        .0
        .on_ack(id, t.to, t.generation);
    if let Some(effect) = acked {
        debug!(id = %id, to = t.to.0, "handoff taken: a newer owner's update came before the ack");
        apply(world, effect);
    }
}

/// Carry out one of the book's effects on the world. False if it named an entity that is gone.
pub(crate) fn apply(world: &mut World, effect: Effect) -> bool {
    match effect {
        Effect::Send(to, msg) => {
            if let ShardMessage::HandoffRefuse { id, reason, .. } = &msg {
                world.resource_mut::<HandoffStats>().refused_sent += 1;
                debug!(id = %id, to = to.0, ?reason, "handoff refused");
            }
            send(world, to, &msg);
            true
        }
        Effect::Release { id, to, generation } => release(world, id, to, generation),
        Effect::Resume {
            id,
            to,
            generation,
            reason,
        } => resume(world, id, to, generation, reason),
        // A take comes with its request's state: `on_request` carries it out.
        Effect::Take { .. } => false,
        Effect::Recheck { id } => {
            world.resource_mut::<Rechecks>().0.push(id);
            true
        }
    }
}

/// Why this shard will not take `req` by what its world says (the book answers repeats first).
fn refusal(world: &World, from: ShardId, req: &HandoffRequest) -> Option<RefuseReason> {
    let space = world.resource::<Space>();
    if req.epoch != space.map.epoch().0 {
        return Some(RefuseReason::StaleEpoch);
    }
    let p = [req.pos[0], req.pos[2]];
    let moves = world.resource::<CellMoves>();
    if space.map.owner_at(p) != Some(space.me) && !moves.takes(&space.map, p, Some(from)) {
        return Some(RefuseReason::NotOwner);
    }
    if moves.ships(&space.map, p).is_some() {
        return Some(RefuseReason::CellMoving);
    }
    let index = &world.resource::<NetIndex>().0;
    if let Some(&e) = index.get(&req.id) {
        let ent = world.entity(e);
        let newer = ent.get::<Generation>().is_none_or(|g| g.0 < req.generation);
        if !ent.contains::<Proxy>() || !newer {
            // The receiver asserts it did not own the entity before accepting it.
            warn!(id = %req.id, from = from.0, "handoff of an entity this shard already owns or has newer");
            return Some(RefuseReason::Conflict);
        }
    } else if index.len() >= limits::ENTITIES_PER_SHARD_MAX {
        return Some(RefuseReason::Full);
    }
    None
}

/// Target side of step 2.
fn on_request(world: &mut World, from: ShardId, req: HandoffRequest) {
    if held_at_or_after(world, req.id, req.generation) {
        // Taken at that attempt, here or by an owner before this one, whether or not the book
        // remembers it: a failover can retarget an attempt it inherited to the adopter of the
        // shard that took it (simulator seed 1881: refused `Conflict`, the source resumed a
        // copy the adopter had promoted, two owners). The source must let go, as on any ack.
        send(
            world,
            from,
            &ShardMessage::HandoffAck {
                id: req.id,
                generation: req.generation,
            },
        );
        return;
    }
    let verdict = refusal(world, from, &req).map_or(Ok(()), Err);
    let now_ms = world.resource::<TickClock>().now_ms;
    let effects = world.resource_mut::<Handoffs>().0.on_request(
        now_ms,
        from,
        req.id,
        req.generation,
        verdict,
    );
    let mut req = Some(req);
    for effect in effects {
        match effect {
            Effect::Take { from, .. } => {
                if let Some(req) = req.take() {
                    take(world, from, req);
                }
            }
            other => {
                apply(world, other);
            }
        }
    }
}

/// Make the offered entity this shard's (its proxy promoted, or spawned).
fn take(world: &mut World, from: ShardId, req: HandoffRequest) {
    let (id, generation) = (req.id, req.generation);
    let existing = world.resource::<NetIndex>().0.get(&id).copied();
    let entity = match existing {
        Some(e) => {
            world.entity_mut(e).remove::<Proxy>();
            e
        }
        None => world.spawn(Networked(id)).id(),
    };
    let (pos, rev) = (QPos::quantize(Vec3::from_array(req.pos)), req.rev);
    promote(world, entity, req);
    // From the ack on, the source holds a proxy of it (its old copy). Recording that here, as if
    // this shard had mirrored it, makes the next mirror pass keep that proxy fresh, or remove it
    // when the entity is not near the source's cells (or was despawned at once), instead of
    // leaving it there forever.
    world
        .resource_mut::<Mirrors>()
        .assume_sent(from, id, pos, rev, generation);
}

/// Make `entity` this shard's, from the state `req` carried; `Owned` last, so from there on it is
/// simulated.
fn promote(world: &mut World, entity: Entity, req: HandoffRequest) {
    let now_ms = world.resource::<TickClock>().now_ms;
    let sent_ms = req.sent_ms;
    install(world, entity, req);
    world.entity_mut(entity).insert(Owned);
    let transit_ms = now_ms.saturating_sub(sent_ms).max(1);
    let mut stats = world.resource_mut::<HandoffStats>();
    stats.accepted += 1;
    stats.transit_ms.saturating_record(transit_ms);
    metrics::histogram!("zonescaler_handoff_transit_seconds").record(transit_ms as f64 / 1_000.0);
}

/// Give `entity` the state `req` carries (position, movement, generation, replicated and
/// migrating components, its player awaiting the client), without `Owned`: a handoff's target
/// and a promoted replica ([`super::replica`]) both start from it.
pub(crate) fn install(world: &mut World, entity: Entity, req: HandoffRequest) {
    let now_ms = world.resource::<TickClock>().now_ms;
    let mut ent = world.entity_mut(entity);
    ent.insert((
        Position(Vec3::from_array(req.pos)),
        MoveTarget {
            target: Vec3::from_array(req.move_target),
            speed_mps: req.speed_mps,
        },
        Generation(req.generation),
        ReplicatedComponents {
            rev: req.rev,
            blobs: req.components.as_slice().into(),
        },
    ));
    if let Some(p) = req.player {
        ent.insert((
            Player {
                account: p.name.clone(),
            },
            AwaitingClient {
                name: p.name,
                since_ms: now_ms,
                last_input_seq: p.last_input_seq,
            },
        ));
    }
    apply_replicated(world, entity, &req.components);
    insert_migrating(world, entity, &req.migrating);
}

/// The entity `id` frozen here for a handoff to `to` at `generation`, if it is still here (a
/// player's avatar is despawned when its client leaves, handoff or not).
fn in_transit(world: &World, id: NetId, to: ShardId, generation: u32) -> Option<Entity> {
    let e = *world.resource::<NetIndex>().0.get(&id)?;
    let t = world.get::<InTransit>(e)?;
    (t.to == to && t.generation == generation).then_some(e)
}

/// Source side of step 3: the entity is now the target's; keep a proxy, move its client.
fn release(world: &mut World, id: NetId, from: ShardId, generation: u32) -> bool {
    let Some(e) = in_transit(world, id, from, generation) else {
        return false;
    };
    let now_ms = world.resource::<TickClock>().now_ms;
    world
        .resource_mut::<super::replica::Handed>()
        .released(now_ms, id, from, generation);
    let old_generation = world.get::<Generation>(e).map_or(0, |g| g.0);
    let avatar = world.get::<Avatar>(e).copied();
    if world.get::<AwaitingClient>(e).is_some() {
        // Its client is on its way here with a token for this shard: send it on when it comes.
        let now_ms = world.resource::<TickClock>().now_ms;
        world
            .resource_mut::<crate::core::resources::Forwards>()
            .insert(id, from, now_ms);
    }
    let mut ent = world.entity_mut(e);
    ent.remove::<(InTransit, MoveTarget, Avatar, AwaitingClient, Player)>();
    ent.insert((Proxy { owner: from }, Generation(generation)));
    // Its replicated components stay, typed, as the proxy's; its server-only state went with it.
    remove_migrating(world, e);
    world.resource_mut::<HandoffStats>().out += 1;
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
    send_control(
        conn,
        &ServerControl::Redirect(redirect),
        &mut world.resource_mut::<Outbox>(),
    );
    world.resource_mut::<ShardStats>().redirects += 1;
}

/// Source side of step 4: the target will never take it at this attempt; simulate it again,
/// at the attempt's number, so the next attempt has a new one.
fn resume(
    world: &mut World,
    id: NetId,
    to: ShardId,
    generation: u32,
    reason: RefuseReason,
) -> bool {
    // The target may still hold its proxy from before the offer (mirroring to it stopped then):
    // remembered as sent at the entity's old generation, the next mirror pass refreshes it at
    // the new one, or removes it if the entity is not near the target any more, or gone: an
    // entity despawned while frozen (its player quit mid-handoff) has nothing to resume, and
    // without the remove the target kept its proxy for good.
    let Some(&e) = world.resource::<NetIndex>().0.get(&id) else {
        world.resource_mut::<Mirrors>().assume_sent(
            to,
            id,
            QPos::default(),
            0,
            generation.wrapping_sub(1),
        );
        return false;
    };
    if world.get::<InTransit>(e).is_none_or(|t| t.to != to) {
        return false;
    }
    let pos = world
        .get::<Position>(e)
        .map(Position::quantized)
        .unwrap_or_default();
    let rev = world.get::<ReplicatedComponents>(e).map_or(0, |c| c.rev);
    world
        .resource_mut::<Mirrors>()
        .assume_sent(to, id, pos, rev, generation.wrapping_sub(1));
    world.resource_mut::<super::replica::Handed>().refused(id);
    world
        .entity_mut(e)
        .remove::<InTransit>()
        .insert((Owned, Generation(generation)));
    world.resource_mut::<HandoffStats>().refused_received += 1;
    debug!(id = %id, ?reason, "handoff refused: resuming");
    true
}

/// An input the source forwarded for an avatar whose client left it for this shard: it steers
/// the avatar while the client is on its way; once the client is here it is that client's input.
fn on_forwarded_input(world: &mut World, id: NetId, input: Input) -> bool {
    let Some(e) = world.resource::<NetIndex>().0.get(&id).copied() else {
        return false;
    };
    let target = input.target.to_vec3();
    if !crate::core::movement::in_world(&world.resource::<Config>().0, target) {
        return false;
    }
    if let Some(a) = world.get::<Avatar>(e).copied() {
        return arrived_input(world, a.conn, e, input);
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

/// A forwarded input for avatar `e`, whose client arrived here as `conn` meanwhile. A client
/// switching shards sends its inputs on the old connection until the new shard welcomes it: one
/// sent beside its `Hello` here is forwarded, and lands after the client took the avatar over,
/// when it may still be the newest input the client sent. So it is taken as if it had come on
/// the new connection (the newest sequence number wins) instead of being dropped.
fn arrived_input(
    world: &mut World,
    conn: zonescaler_shared::ConnId,
    e: Entity,
    input: Input,
) -> bool {
    let Some(last) = world
        .resource::<Viewers>()
        .0
        .get(&conn)
        .map(|v| v.last_input_seq)
    else {
        return false;
    };
    let mut clients = world.resource_mut::<Clients>();
    let Some(client) = clients.0.get_mut(&conn) else {
        return false;
    };
    let drives = matches!(client.phase, Phase::Playing { avatar, .. } if avatar == e);
    let newer = input.seq > last && client.pending_input.is_none_or(|p| input.seq > p.seq);
    if drives && newer {
        client.pending_input = Some(input);
    }
    drives && newer
}
