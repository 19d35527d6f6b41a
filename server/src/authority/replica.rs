//! Buddy replication and failover: every shard streams its owned entities to one buddy, which
//! keeps them as a passive replica and promotes it when the master gives it the dead shard's
//! cells.
//!
//! **The stream** ([`send_replica`], `Replicate`, after the tick's handoffs): each tick the
//! owner sends its buddy a [`ReplicaBatch`] with the entities new or changed since the last one
//! (position and movement, the replicated components when their revision moved, the migrating
//! components when one changed, the player, whether it is frozen in a handoff and to whom),
//! and `(id, generation)` for every entity it stopped owning: handed on (the generation its
//! next owner took it at) or despawned (`u32::MAX`). Every `FULL_EVERY_TICKS` ticks, and
//! whenever the buddy changes, the batch is a full snapshot (`reset`). The buddy acknowledges
//! every batch with the owner's tick ([`ShardMessage::ReplicaAck`]); the owner's lag is its
//! tick less the newest acknowledged, exported and reported to the master with the buddy.
//!
//! **The buddy** ([`buddy_for`]): a member that owns a leaf touching the owner's (the neighbour
//! sharing the most borders), else the next member by id that owns a leaf, else any other
//! member. Each shard picks its own from the map; the master reads it from the heartbeat.
//!
//! **Failover** (`MapPush::dead`): the master gives every leaf of a dead shard to the buddy it
//! last reported, in one map. Every shard, on the map that drops the dead member:
//! - the **adopter** ([`adopt`]) promotes the replica: each entity owned at the generation the
//!   dead shard held it, its player awaiting the client (which comes back with its resume
//!   ticket). An entity the dead shard held frozen in a handoff to `X` is frozen here in the
//!   same attempt, and `HandoffCancel` asks `X`: `X` answers from its records or its world
//!   (taken: the adopter keeps a proxy; never taken: the adopter simulates it). Its own
//!   attempts to the dead shard are settled against the replica: taken there (the replica
//!   holds the entity at the attempt's number or later) the replica's newer state wins,
//!   otherwise its own copy is simulated again.
//! - every **other** shard retargets its attempts open to the dead shard to the adopter and
//!   sends it an [`ShardMessage::Orphan`] for each; the adopter answers once it holds that map:
//!   `HandoffAck` when it (or an owner after it) holds the entity at the attempt's number or
//!   later, else `HandoffRefuse { Cancelled }` and the source simulates its copy again. One
//!   shard decides each entity, by its generation: never both, never neither.
//! - a dead member nobody adopted (no buddy alive): attempts to it resume, as for a drained
//!   member; what it owned is lost.

use super::handoff::{self, Effect, Handoffs};
use super::proxy::Mirrors;
use crate::client::Clients;
use crate::core::components::{
    Avatar, AwaitingClient, Generation, InTransit, MoveTarget, NetIndex, Networked, Owned,
    Position, Proxy, ReplicatedComponents,
};
use crate::core::registry::{encode_migrating, migrating_changed};
pub use crate::core::resources::Membership;
use crate::core::resources::{ReplicaStatus, ShardOutbox, TickClock};
use crate::core::space::Space;
use crate::interest::Viewers;
use bevy_ecs::change_detection::Tick as ChangeTick;
use bevy_ecs::prelude::*;
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use tracing::{info, warn};
use zonescaler_shared::cellmap::CellMap;
use zonescaler_shared::codec;
use zonescaler_shared::limits;
use zonescaler_shared::protocol::{
    HandoffRequest, ProxyBatch, REPLICA_BATCH_ENTRIES_MAX, RefuseReason, ReplicaBatch,
    ReplicaEntity, ShardMessage,
};
use zonescaler_shared::quant::QPos;
use zonescaler_shared::{NetId, ShardId};

/// A full snapshot this often (ticks): a replica that missed nothing is rebuilt anyway, so no
/// drift between owner and buddy outlives it.
pub const FULL_EVERY_TICKS: u64 = 90;

/// A replica whose owner sent nothing for this long is dropped (the owner chose another buddy,
/// or left without this shard hearing of it).
pub const REPLICA_STALE_MS: u64 = 10_000;

/// How long a removed entity's generation is remembered (answers a late `Orphan` for it).
pub const TOMBSTONE_KEEP_MS: u64 = 120_000;

/// Bytes of entries in one batch past which it is cut (well under
/// `limits::SHARD_MESSAGE_BYTES_MAX`, which its headers and encoding overhead fit in).
const BATCH_BYTES_SOFT_MAX: usize = limits::SHARD_MESSAGE_BYTES_MAX / 2;

/// What this shard last sent its buddy of one entity.
#[derive(Clone, Debug, PartialEq)]
struct Sent {
    generation: u32,
    pos: [f32; 3],
    target: [f32; 3],
    speed: f32,
    rev: u32,
    transit: Option<(ShardId, u32)>,
    has_player: bool,
    /// The tick it was last seen owned or frozen here.
    seen: u64,
}

/// The owner's side of the stream.
#[derive(Resource, Debug, Default)]
pub struct ReplicaOut {
    /// The buddy, and the map epoch it was chosen under.
    pub buddy: Option<ShardId>,
    /// The buddy before it, which acknowledged batches, until the new one acknowledges one.
    previous: Option<ShardId>,
    /// The map epoch and membership version it was chosen under.
    epoch: (u64, u64),
    sent: HashMap<NetId, Sent>,
    last_full_tick: u64,
    needs_full: bool,
    /// The newest tick of this shard the buddy acknowledged (0: none since it became buddy).
    pub acked_tick: u64,
    /// The world's change tick when the previous batch was built.
    last_run: Option<ChangeTick>,
    /// Batches and entity entries sent since start.
    pub batches: u64,
    pub entries: u64,
    /// What this shard handed on (or despawned) lately, with the generation its next owner took
    /// it at and when (kept [`TOMBSTONE_KEEP_MS`]): a new buddy gets them with its first
    /// snapshot, so that, should this shard die, its adopter knows what it handed on before
    /// that buddy streamed (a handoff source still waiting on it asks the adopter, which must
    /// not send back what lives on elsewhere).
    handed_on: HashMap<NetId, (u32, u64)>,
    /// The next batch carries `handed_on` (the buddy changed).
    tombstones_due: bool,
}

impl ReplicaOut {
    /// The buddy to report to the master: the current one once it acknowledged a batch; until
    /// then the previous one, whose replica is only as old as the switch (else the current
    /// one, which may hold what is on its way).
    pub fn reported_buddy(&self) -> Option<ShardId> {
        if self.acked_tick > 0 {
            return self.buddy;
        }
        self.previous.or(self.buddy)
    }

    /// Ticks between `tick` and the newest the buddy acknowledged.
    pub fn lag_ticks(&self, tick: u64) -> u32 {
        if self.buddy.is_none() || self.acked_tick == 0 {
            return 0;
        }
        tick.saturating_sub(self.acked_tick)
            .min(u64::from(u32::MAX)) as u32
    }
}

/// One owner's replica on its buddy.
#[derive(Debug, Default)]
pub struct Held {
    pub entities: BTreeMap<NetId, ReplicaEntity>,
    /// Entities the owner stopped owning: the generation after it, and when this shard heard.
    pub tombstones: HashMap<NetId, (u32, u64)>,
    pub last_ms: u64,
    pub tick: u64,
}

/// How long a source keeps what it handed off ([`Handed`]): far longer than a target takes to
/// replicate it, and longer than the longest silence that could hide the target's death.
pub const HANDED_KEEP_MS: u64 = 2 * limits::SHARD_SILENCE_MS_MAX;

/// What this shard handed off, kept in case the target dies before its buddy holds it: the
/// request sent per entity until answered, then, acknowledged, [`HANDED_KEEP_MS`] long. On the
/// target's death each record still named is asked of the adopter ([`ShardMessage::Orphan`]):
/// an ack drops it (the adopter, or an owner after it, holds the entity at that generation or
/// later), a refusal brings the entity back here from the record (nobody does).
#[derive(Resource, Debug, Default)]
pub struct Handed {
    offered: HashMap<NetId, HandoffRequest>,
    records: HashMap<NetId, (ShardId, HandoffRequest, u64)>,
    order: std::collections::VecDeque<(u64, NetId)>,
    /// Records asked of an adopter, with it.
    asked: HashMap<NetId, (ShardId, HandoffRequest)>,
    /// Entities brought back from a record since start.
    pub restored: u64,
}

impl Handed {
    /// `req` was sent.
    pub fn offered(&mut self, req: HandoffRequest) {
        if self.offered.len() < limits::ENTITIES_PER_SHARD_MAX || self.offered.contains_key(&req.id)
        {
            self.offered.insert(req.id, req);
        }
    }

    /// `to` took `id` at `generation`: the request sent is kept.
    pub fn released(&mut self, now_ms: u64, id: NetId, to: ShardId, generation: u32) {
        while let Some(&(at, old)) = self.order.front() {
            let full = self.records.len() >= limits::ENTITIES_PER_SHARD_MAX;
            if now_ms.saturating_sub(at) < HANDED_KEEP_MS && !full {
                break;
            }
            self.order.pop_front();
            if self.records.get(&old).is_some_and(|r| r.2 == at) {
                self.records.remove(&old);
            }
        }
        if let Some(req) = self
            .offered
            .remove(&id)
            .filter(|r| r.generation == generation)
        {
            self.records.insert(id, (to, req, now_ms));
            self.order.push_back((now_ms, id));
        }
    }

    /// The attempt for `id` was refused: nothing of it was handed.
    pub fn refused(&mut self, id: NetId) {
        self.offered.remove(&id);
    }

    /// Records of handoffs to `gone` (or asked of `gone`, an adopter that died too).
    fn take_for(&mut self, gone: ShardId) -> Vec<HandoffRequest> {
        let ids: Vec<NetId> = (self.records.iter())
            .filter(|(_, r)| r.0 == gone)
            .map(|(id, _)| *id)
            .collect();
        let mut out: Vec<HandoffRequest> = ids
            .into_iter()
            .filter_map(|id| self.records.remove(&id).map(|r| r.1))
            .collect();
        let asked: Vec<NetId> = (self.asked.iter())
            .filter(|(_, a)| a.0 == gone)
            .map(|(id, _)| *id)
            .collect();
        out.extend(
            asked
                .into_iter()
                .filter_map(|id| self.asked.remove(&id).map(|a| a.1)),
        );
        out.sort_unstable_by_key(|r| r.id);
        out
    }
}

/// An adoption under way ([`Replicas::adopting`]).
#[derive(Debug, Default)]
pub struct Adopting {
    held: Held,
    waiting: BTreeSet<ShardId>,
    taken: BTreeMap<NetId, u32>,
}

/// The replicas this shard holds for the members it is buddy of, and what failover left.
#[derive(Resource, Debug, Default)]
pub struct Replicas {
    pub owners: BTreeMap<ShardId, Held>,
    /// Dead members this shard adopted, with when, and the generations their replicas'
    /// removed entities had moved on to (for late orphans).
    adopted: BTreeMap<ShardId, (u64, HashMap<NetId, (u32, u64)>)>,
    /// Orphans that came before the map that makes this shard their adopter.
    pending: Vec<(ShardId, ShardId, u64, NetId, u32)>,
    /// Adoptions waiting for every live member's `Taken` list: the replica, who has yet to
    /// report, and what was taken from the dead shard (the newest generation per entity).
    adopting: BTreeMap<ShardId, Adopting>,
    /// `Taken` lists that came before this shard knew it adopts: per dead member, who sent its
    /// last part, and the entities.
    early: BTreeMap<ShardId, (BTreeSet<ShardId>, BTreeMap<NetId, u32>)>,
    /// Entities promoted from replicas since start.
    pub promoted: u64,
    /// The newest adoption: the dead member, the newest tick of it the replica held, and the
    /// entities promoted.
    pub last_adoption: Option<(ShardId, u64, u64)>,
}

impl Replicas {
    /// Whether this shard adopted dead `dead` and promoted its replica.
    pub fn adopted(&self, dead: ShardId) -> bool {
        self.adopted.contains_key(&dead)
    }
}

/// The buddy `me` replicates to under `map`: the member (not `me`) owning the most leaves that
/// touch one of `me`'s; without one, the next member by id after `me` that owns a leaf; without
/// one, the next member by id. `None` when `me` is alone. The `current` buddy stays while it
/// still touches `me` (or, with no neighbour at all, while it is a member): every change costs
/// a full snapshot, and a replica only as old as the switch until the new buddy has one.
pub fn buddy_for(
    map: &CellMap,
    members: &BTreeSet<ShardId>,
    me: ShardId,
    current: Option<ShardId>,
) -> Option<ShardId> {
    let grid = map.grid();
    let mine: Vec<_> = map.cells_of(me).map(|c| grid.rect(c)).collect();
    let mut touching: BTreeMap<ShardId, usize> = BTreeMap::new();
    for (cell, owner) in map.leaves() {
        if *owner == me || !members.contains(owner) {
            continue;
        }
        let r = grid.rect(*cell);
        let eps = 1e-3;
        let touches = mine.iter().any(|m| {
            r.min[0] <= m.max[0] + eps
                && m.min[0] <= r.max[0] + eps
                && r.min[1] <= m.max[1] + eps
                && m.min[1] <= r.max[1] + eps
        });
        if touches {
            *touching.entry(*owner).or_default() += 1;
        }
    }
    let keep = current.filter(|c| {
        *c != me
            && members.contains(c)
            && (touching.contains_key(c)
                || touching.is_empty() && map.cells_of(*c).next().is_some())
    });
    if keep.is_some() {
        return keep;
    }
    // After `me` in id order, wrapping: ties go to the nearest next id.
    let ring = |s: &ShardId| (s.0.wrapping_sub(me.0).wrapping_sub(1)) as u32;
    if let Some(best) = touching.values().max().copied() {
        return (touching.iter())
            .filter(|(_, n)| **n == best)
            .map(|(s, _)| *s)
            .min_by_key(ring);
    }
    let owning: BTreeSet<ShardId> = map.leaves().values().copied().collect();
    let others = members.iter().filter(|s| **s != me);
    others
        .clone()
        .filter(|s| owning.contains(s))
        .min_by_key(|s| ring(s))
        .or_else(|| others.min_by_key(|s| ring(s)))
        .copied()
}

/// `Replicate`, exclusive: this tick's batch (or full snapshot) to the buddy.
pub fn send_replica(world: &mut World) {
    let tick = world.resource::<TickClock>().tick.0;
    let this_run = world.change_tick();
    choose_buddy(world);
    let mut out = std::mem::take(&mut *world.resource_mut::<ReplicaOut>());
    let Some(buddy) = out.buddy else {
        out.sent.clear();
        out.last_run = Some(this_run);
        *world.resource_mut::<ReplicaOut>() = out;
        world.insert_resource(ReplicaStatus::default());
        return;
    };
    let full = out.needs_full || tick.saturating_sub(out.last_full_tick) >= FULL_EVERY_TICKS;
    if full {
        out.sent.clear();
        out.needs_full = false;
        out.last_full_tick = tick;
    }
    let last_run = out.last_run.unwrap_or(ChangeTick::new(0));
    let mut upserts = collect_upserts(world, &mut out, tick, last_run, this_run, full);
    let mut removes = collect_removes(world, &mut out, tick);
    let now_ms = world.resource::<TickClock>().now_ms;
    out.handed_on
        .retain(|_, (_, at)| now_ms.saturating_sub(*at) <= TOMBSTONE_KEEP_MS);
    for (id, next) in &removes {
        if out.handed_on.len() < limits::ENTITIES_PER_SHARD_MAX || out.handed_on.contains_key(id) {
            out.handed_on.insert(*id, (*next, now_ms));
        }
    }
    if std::mem::take(&mut out.tombstones_due) {
        // Not what is owned here again (an upsert and a remove of one entity in one batch
        // would remove it), nor what this batch removes already.
        let listed: std::collections::HashSet<NetId> = removes.iter().map(|(id, _)| *id).collect();
        let mut old: Vec<(NetId, u32)> = (out.handed_on.iter())
            .filter(|(id, _)| !out.sent.contains_key(id) && !listed.contains(id))
            .map(|(id, (next, _))| (*id, *next))
            .collect();
        old.sort_unstable_by_key(|(id, _)| *id);
        removes.extend(old);
    }
    out.entries += (upserts.len() + removes.len()) as u64;
    let batches = split(tick, full, &mut upserts, removes);
    out.batches += batches.len() as u64;
    out.last_run = Some(this_run);
    let status = ReplicaStatus {
        buddy: out.reported_buddy(),
        lag_ticks: out.lag_ticks(tick),
    };
    *world.resource_mut::<ReplicaOut>() = out;
    world.insert_resource(status);
    let mut outbox = world.resource_mut::<ShardOutbox>();
    for b in batches {
        let bytes = codec::encode(&ShardMessage::Replica(b));
        outbox.messages.push((buddy, Bytes::from(bytes)));
    }
}

/// Pick the buddy again when the map or the membership changed; a new buddy gets a full
/// snapshot.
fn choose_buddy(world: &mut World) {
    let (epoch, me) = {
        let space = world.resource::<Space>();
        (space.map.epoch().0, space.me)
    };
    let (members, version) = {
        let m = world.resource::<Membership>();
        (m.members.clone(), m.version)
    };
    let stamp = (epoch, version);
    let out = world.resource::<ReplicaOut>();
    if out.epoch == stamp && out.last_run.is_some() {
        return;
    }
    let map = &world.resource::<Space>().map;
    // Until the first push names the members, they are the map's owners (placement gives
    // every member of a forming cluster a leaf).
    let members = if members.is_empty() {
        map.leaves().values().copied().collect()
    } else {
        members
    };
    let current = world.resource::<ReplicaOut>().buddy;
    let buddy = buddy_for(map, &members, me, current);
    let mut out = world.resource_mut::<ReplicaOut>();
    out.epoch = stamp;
    if out.buddy != buddy {
        info!(buddy = ?buddy.map(|b| b.0), "replicating to a new buddy");
        if out.acked_tick > 0 {
            out.previous = out.buddy.filter(|b| members.contains(b));
        }
        out.buddy = buddy;
        out.needs_full = true;
        out.tombstones_due = true;
        out.acked_tick = 0;
    }
}

/// What the owner's entities look like now, for the ones new or changed since the last batch.
fn collect_upserts(
    world: &mut World,
    out: &mut ReplicaOut,
    tick: u64,
    last_run: ChangeTick,
    this_run: ChangeTick,
    full: bool,
) -> Vec<ReplicaEntity> {
    let mut q = world.query_filtered::<(
        Entity,
        &Networked,
        &Generation,
        &Position,
        Option<&MoveTarget>,
        &ReplicatedComponents,
        Option<&InTransit>,
        Option<&Avatar>,
        Option<&AwaitingClient>,
    ), Or<(With<Owned>, With<InTransit>)>>();
    let clients = world.resource::<Clients>();
    let viewers = world.resource::<Viewers>();
    let mut changed = Vec::new();
    for (e, net, g, p, mt, rc, transit, avatar, awaiting) in q.iter(world) {
        let player = handoff::player_of(avatar, awaiting, clients, viewers);
        let now = Sent {
            generation: g.0,
            pos: p.0.to_array(),
            target: mt.map_or(p.0, |m| m.target).to_array(),
            speed: mt.map_or(0.0, |m| m.speed_mps),
            rev: rc.rev,
            transit: transit.map(|t| (t.to, t.generation)),
            has_player: player.is_some(),
            seen: tick,
        };
        let prev = out.sent.get(&net.0);
        let components = (prev.is_none_or(|s| s.rev != now.rev)).then(|| rc.blobs.to_vec());
        let same = prev.is_some_and(|s| {
            Sent {
                seen: tick,
                ..s.clone()
            } == now
        });
        changed.push((e, net.0, now, components, player, prev.is_none(), same));
    }
    let mut upserts = Vec::new();
    for (e, id, now, components, player, new, same) in changed {
        let migrating_moved = new || full || migrating_changed(world, e, last_run, this_run);
        if same && !migrating_moved {
            if let Some(s) = out.sent.get_mut(&id) {
                s.seen = tick;
            }
            continue;
        }
        upserts.push(ReplicaEntity {
            id,
            generation: now.generation,
            pos: now.pos,
            move_target: now.target,
            speed_mps: now.speed,
            rev: now.rev,
            components,
            migrating: migrating_moved.then(|| encode_migrating(world, e)),
            player,
            transit: now.transit,
        });
        out.sent.insert(id, now);
    }
    upserts
}

/// The entities sent before and not owned or frozen here this tick: handed on (the generation
/// their next owner took them at) or despawned (`u32::MAX`). One last sent frozen in a handoff
/// was handed on at that attempt's number, even if its proxy here is gone already (the new
/// owner's remove can come in the same tick as its ack): an entity frozen here is never
/// despawned (a player who quits leaves it frozen until the answer).
fn collect_removes(world: &World, out: &mut ReplicaOut, tick: u64) -> Vec<(NetId, u32)> {
    let index = &world.resource::<NetIndex>().0;
    let mut removes = Vec::new();
    out.sent.retain(|id, s| {
        if s.seen == tick {
            return true;
        }
        let next = index
            .get(id)
            .and_then(|e| world.get::<Generation>(*e))
            .map(|g| g.0)
            .or(s.transit.map(|(_, g)| g))
            .unwrap_or(u32::MAX);
        removes.push((*id, next));
        false
    });
    removes.sort_unstable_by_key(|(id, _)| *id);
    removes
}

/// Cut a tick's entries into batches under the entry and byte bounds (the first one resets a
/// full snapshot). At least one batch, even empty: its acknowledgement measures the lag.
fn split(
    tick: u64,
    reset: bool,
    upserts: &mut Vec<ReplicaEntity>,
    removes: Vec<(NetId, u32)>,
) -> Vec<ReplicaBatch> {
    upserts.sort_unstable_by_key(|u| u.id);
    let size = |u: &ReplicaEntity| {
        64 + u.components.as_ref().map_or(0, |c| blob_bytes(c))
            + u.migrating.as_ref().map_or(0, |c| blob_bytes(c))
    };
    let mut batches = vec![ReplicaBatch {
        tick,
        reset,
        ..ReplicaBatch::default()
    }];
    let mut bytes = 0;
    for u in upserts.drain(..) {
        let n = size(&u);
        let last = batches.last().expect("one batch at least");
        if last.upserts.len() >= REPLICA_BATCH_ENTRIES_MAX || bytes + n > BATCH_BYTES_SOFT_MAX {
            batches.push(ReplicaBatch {
                tick,
                ..ReplicaBatch::default()
            });
            bytes = 0;
        }
        bytes += n;
        batches.last_mut().expect("just pushed").upserts.push(u);
    }
    for chunk in removes.chunks(REPLICA_BATCH_ENTRIES_MAX) {
        batches.push(ReplicaBatch {
            tick,
            removes: chunk.to_vec(),
            ..ReplicaBatch::default()
        });
    }
    batches
}

fn blob_bytes(blobs: &[zonescaler_shared::protocol::ComponentBlob]) -> usize {
    blobs.iter().map(|b| b.bytes.len() + 4).sum()
}

/// A batch from `from`, whose buddy this shard is: folded into its replica, acknowledged.
pub fn on_batch(world: &mut World, from: ShardId, batch: ReplicaBatch) -> bool {
    let members = &world.resource::<Membership>().members;
    if !members.is_empty() && !members.contains(&from) {
        // A member that left: its replica is settled already.
        return false;
    }
    let now_ms = world.resource::<TickClock>().now_ms;
    let mut replicas = world.resource_mut::<Replicas>();
    let held = replicas.owners.entry(from).or_default();
    if batch.reset {
        held.entities.clear();
    }
    held.last_ms = now_ms;
    held.tick = held.tick.max(batch.tick);
    for u in batch.upserts {
        merge(held, u);
    }
    for (id, next) in batch.removes {
        held.entities.remove(&id);
        if held.tombstones.len() < limits::ENTITIES_PER_SHARD_MAX {
            held.tombstones.insert(id, (next, now_ms));
        }
    }
    held.tombstones
        .retain(|_, (_, at)| now_ms.saturating_sub(*at) <= TOMBSTONE_KEEP_MS);
    // Owners that stopped streaming here (another buddy now) leave no replica behind.
    replicas
        .owners
        .retain(|_, h| now_ms.saturating_sub(h.last_ms) <= REPLICA_STALE_MS);
    handoff::send(world, from, &ShardMessage::ReplicaAck { tick: batch.tick });
    true
}

fn merge(held: &mut Held, u: ReplicaEntity) {
    if held.entities.len() >= limits::ENTITIES_PER_SHARD_MAX && !held.entities.contains_key(&u.id) {
        return;
    }
    held.tombstones.remove(&u.id);
    match held.entities.get_mut(&u.id) {
        Some(r) => {
            let components = u.components.or_else(|| r.components.take());
            let migrating = u.migrating.or_else(|| r.migrating.take());
            *r = ReplicaEntity {
                components,
                migrating,
                ..u
            };
        }
        None => {
            held.entities.insert(u.id, u);
        }
    }
}

/// The buddy acknowledged `tick`.
pub fn on_ack(world: &mut World, from: ShardId, tick: u64) -> bool {
    let mut out = world.resource_mut::<ReplicaOut>();
    if out.buddy != Some(from) {
        return false;
    }
    out.acked_tick = out.acked_tick.max(tick);
    out.previous = None;
    true
}

/// The map push that dropped `departed` from the membership: settle what this shard had with
/// each (adopt it, send orphans to its adopter, or resume, by `dead`).
pub fn on_departed(
    world: &mut World,
    departed: &[ShardId],
    dead: &BTreeMap<ShardId, Option<ShardId>>,
) {
    let me = world.resource::<Space>().me;
    let epoch = world.resource::<Space>().map.epoch().0;
    for &gone in departed {
        let again = world.resource::<Membership>().settled.contains(&gone);
        if again {
            // Only attempts opened since (`cell_move::departed_members`).
            match dead.get(&gone) {
                Some(Some(adopter)) if *adopter != me => orphans_to(world, gone, *adopter, epoch),
                Some(Some(_)) => {}
                _ => resume_all(world, gone),
            }
            continue;
        }
        match dead.get(&gone) {
            Some(Some(adopter)) if *adopter == me => start_adoption(world, gone),
            Some(Some(adopter)) => {
                report_taken(world, gone, *adopter);
                orphans_to(world, gone, *adopter, epoch);
                ask_handed(world, gone, *adopter, epoch);
            }
            // Dead with no one holding its replica: what it had not taken yet comes back; what it
            // took is lost with it, as everything it held is. Not brought back from the records
            // here: nobody knows whether it handed an entity on before it died (a source that
            // restored one the dead shard had handed on made two owners of it).
            Some(None) => {
                resume_all(world, gone);
                let lost = world.resource_mut::<Handed>().take_for(gone).len();
                if lost > 0 {
                    warn!(
                        shard = gone.0,
                        entities = lost,
                        "a dead shard no one holds a replica of took entities from here: lost with it"
                    );
                }
            }
            // Drained: it took none of the open attempts, and handed on all it took.
            None => {
                resume_all(world, gone);
                world.resource_mut::<Handed>().take_for(gone);
            }
        }
        world.resource_mut::<Replicas>().owners.remove(&gone);
    }
    // A member that left no longer owes a `Taken` list.
    let adopting: Vec<ShardId> = world
        .resource::<Replicas>()
        .adopting
        .keys()
        .copied()
        .collect();
    for d in adopting {
        try_finish(world, d);
    }
}

/// Tell `adopter` what this shard took from dead `gone`, in parts, the last one marked.
fn report_taken(world: &mut World, gone: ShardId, adopter: ShardId) {
    let ids = world.resource::<Handoffs>().0.taken_from(gone);
    let parts: Vec<&[(NetId, u32)]> = if ids.is_empty() {
        vec![&[]]
    } else {
        ids.chunks(zonescaler_shared::protocol::TAKEN_IDS_MAX)
            .collect()
    };
    let n = parts.len();
    for (i, part) in parts.into_iter().enumerate() {
        let msg = ShardMessage::Taken {
            dead: gone,
            ids: part.to_vec(),
            last: i + 1 == n,
        };
        handoff::send(world, adopter, &msg);
    }
}

/// This shard adopts dead `gone`: its replica waits for every other live member's `Taken`
/// list (what they took from `gone`, which its replica may not know was handed away).
fn start_adoption(world: &mut World, gone: ShardId) {
    let me = world.resource::<Space>().me;
    let members = world.resource::<Membership>().members.clone();
    let mut taken: BTreeMap<NetId, u32> = world
        .resource::<Handoffs>()
        .0
        .taken_from(gone)
        .into_iter()
        .collect();
    let mut replicas = world.resource_mut::<Replicas>();
    if replicas.adopting.contains_key(&gone) || replicas.adopted.contains_key(&gone) {
        return;
    }
    let held = replicas.owners.remove(&gone).unwrap_or_default();
    tracing::debug!(
        dead = gone.0,
        entities = held.entities.len(),
        tick = held.tick,
        "adoption started"
    );
    let (reported, early) = replicas.early.remove(&gone).unwrap_or_default();
    for (id, g) in early {
        let t = taken.entry(id).or_insert(g);
        *t = (*t).max(g);
    }
    let waiting = (members.iter())
        .filter(|m| **m != me && **m != gone && !reported.contains(m))
        .copied()
        .collect();
    replicas.adopting.insert(
        gone,
        Adopting {
            held,
            waiting,
            taken,
        },
    );
    try_finish(world, gone);
}

/// A member's list of what it took from dead `dead`.
pub fn on_taken(
    world: &mut World,
    from: ShardId,
    dead: ShardId,
    ids: Vec<(NetId, u32)>,
    last: bool,
) -> bool {
    let mut replicas = world.resource_mut::<Replicas>();
    let (taken, waiting) = match replicas.adopting.get_mut(&dead) {
        Some(a) => (&mut a.taken, Some(&mut a.waiting)),
        None => {
            if replicas.early.len() >= limits::SHARDS_MAX && !replicas.early.contains_key(&dead) {
                return false;
            }
            let e = replicas.early.entry(dead).or_default();
            if last {
                e.0.insert(from);
            }
            (&mut e.1, None)
        }
    };
    for (id, g) in ids {
        if taken.len() >= limits::ENTITIES_PER_SHARD_MAX && !taken.contains_key(&id) {
            break;
        }
        let t = taken.entry(id).or_insert(g);
        *t = (*t).max(g);
    }
    if let Some(w) = waiting
        && last
    {
        w.remove(&from);
    }
    try_finish(world, dead);
    true
}

/// Promote `dead`'s replica once every live member reported what it took from it.
fn try_finish(world: &mut World, dead: ShardId) {
    let members = world.resource::<Membership>().members.clone();
    let mut replicas = world.resource_mut::<Replicas>();
    let Some(a) = replicas.adopting.get_mut(&dead) else {
        return;
    };
    a.waiting.retain(|m| members.contains(m));
    if !a.waiting.is_empty() {
        return;
    }
    let a = replicas.adopting.remove(&dead).expect("just seen");
    adopt(world, dead, a.held, &a.taken);
    answer_pending(world);
}

/// Attempts open to `gone` are refused as if it had said so: its copy here is simulated again.
fn resume_all(world: &mut World, gone: ShardId) {
    let now_ms = world.resource::<TickClock>().now_ms;
    let effects = world.resource_mut::<Handoffs>().0.on_departed(now_ms, gone);
    if !effects.is_empty() {
        info!(
            shard = gone.0,
            entities = effects.len(),
            "handoffs to a shard that left resumed"
        );
    }
    for effect in effects {
        handoff::apply(world, effect);
    }
}

/// This shard's attempts open to dead `gone` go to `adopter`, which decides each.
fn orphans_to(world: &mut World, gone: ShardId, adopter: ShardId, epoch: u64) {
    let now_ms = world.resource::<TickClock>().now_ms;
    let open = world.resource::<Handoffs>().0.attempts_to(gone);
    for (id, generation) in &open {
        world
            .resource_mut::<Handoffs>()
            .0
            .retarget(now_ms, *id, adopter);
        if let Some(&e) = world.resource::<NetIndex>().0.get(id)
            && let Some(mut t) = world.get_mut::<InTransit>(e)
        {
            t.to = adopter;
        }
        let msg = ShardMessage::Orphan {
            dead: gone,
            epoch,
            id: *id,
            generation: *generation,
        };
        handoff::send(world, adopter, &msg);
    }
    if !open.is_empty() {
        info!(
            dead = gone.0,
            adopter = adopter.0,
            entities = open.len(),
            "handoffs to a dead shard asked of its adopter"
        );
    }
}

/// What this shard handed to dead `gone` and still holds a record of: asked of `adopter`,
/// unless the entity is back here at that generation or later.
fn ask_handed(world: &mut World, gone: ShardId, adopter: ShardId, epoch: u64) {
    let records = world.resource_mut::<Handed>().take_for(gone);
    for req in records {
        if handoff::held_at_or_after(world, req.id, req.generation)
            && world
                .resource::<NetIndex>()
                .0
                .get(&req.id)
                .is_some_and(|e| world.get::<Proxy>(*e).is_none())
        {
            continue;
        }
        let msg = ShardMessage::Orphan {
            dead: gone,
            epoch,
            id: req.id,
            generation: req.generation,
        };
        handoff::send(world, adopter, &msg);
        world
            .resource_mut::<Handed>()
            .asked
            .insert(req.id, (adopter, req));
    }
}

/// The adopter's answer to a record asked of it (an ack or a refusal that named no attempt of
/// the book's): acked, the record goes; refused, the entity comes back here from it. False if
/// it named no record.
pub fn on_handed_answer(
    world: &mut World,
    from: ShardId,
    id: NetId,
    generation: u32,
    taken: bool,
) -> bool {
    let mut handed = world.resource_mut::<Handed>();
    let matches = handed
        .asked
        .get(&id)
        .is_some_and(|(a, r)| *a == from && r.generation == generation);
    if !matches {
        return false;
    }
    let (_, req) = handed.asked.remove(&id).expect("just seen");
    if !taken {
        restore(world, req);
    }
    true
}

/// Bring back an entity handed to a shard that died before anyone held it, from the request
/// this shard sent: owned here at that generation (a neighbour's handoff moves it on if it
/// stands in a foreign cell). Not if this shard holds it at that generation or later already.
fn restore(world: &mut World, req: HandoffRequest) {
    let existing = world.resource::<NetIndex>().0.get(&req.id).copied();
    let e = match existing {
        // Held here, or mirrored by an owner, at that generation or later.
        Some(e)
            if world
                .get::<Generation>(e)
                .is_some_and(|g| g.0 >= req.generation) =>
        {
            return;
        }
        Some(e) => {
            world.entity_mut(e).remove::<(Proxy, InTransit, Owned)>();
            e
        }
        None => world.spawn(Networked(req.id)).id(),
    };
    let id = req.id;
    handoff::install(world, e, req);
    world.entity_mut(e).insert(Owned);
    world.resource_mut::<Handed>().restored += 1;
    info!(id = %id, "entity handed to a shard that died before anyone held it: simulated here again");
}

/// An orphan from `from`: answered now if this shard adopted `dead` in a map at least `epoch`,
/// else kept until it does.
pub fn on_orphan(
    world: &mut World,
    from: ShardId,
    dead: ShardId,
    epoch: u64,
    id: NetId,
    generation: u32,
) -> bool {
    let adopted = world.resource::<Replicas>().adopted.contains_key(&dead);
    if !adopted {
        let mut r = world.resource_mut::<Replicas>();
        if r.pending.len() >= limits::ENTITIES_PER_SHARD_MAX {
            warn!(from = from.0, id = %id, "too many orphans waiting for their adoption: dropped");
            return false;
        }
        r.pending.push((from, dead, epoch, id, generation));
        return true;
    }
    answer_orphan(world, from, dead, id, generation);
    true
}

/// The answer to one orphan, after the adoption: held at that generation or later (here, or
/// by an owner the dead shard handed it to) acks; anything else refuses, for good.
fn answer_orphan(world: &mut World, from: ShardId, dead: ShardId, id: NetId, generation: u32) {
    let moved_on = world
        .resource::<Replicas>()
        .adopted
        .get(&dead)
        .and_then(|(_, t)| t.get(&id))
        .is_some_and(|(next, _)| *next >= generation);
    let owned_here = (world.resource::<NetIndex>().0.get(&id).copied())
        .filter(|e| world.get::<Proxy>(*e).is_none());
    if moved_on || handoff::held_at_or_after(world, id, generation) {
        handoff::send(world, from, &ShardMessage::HandoffAck { id, generation });
        // The ack leaves `from` a proxy of this shard's at `generation` (an open attempt it
        // releases), or `from` holds one already, from this shard's mirroring, at the entity's
        // generation here (a record of a handoff long taken, the entity handed on since). Owned
        // here, the next mirror pass refreshes it (components too) or removes it, at the
        // generation it is owned at here: a remove at the older `generation` would leave a
        // newer proxy there for good. Owned elsewhere (or gone), it goes now.
        if let Some(e) = owned_here {
            let current = world
                .get::<Generation>(e)
                .map_or(0, |g| g.0)
                .max(generation);
            let rev = (world.get::<ReplicatedComponents>(e)).map_or(0, |c| c.rev.wrapping_add(1));
            world
                .resource_mut::<Mirrors>()
                .assume_sent(from, id, QPos::default(), rev, current);
        } else {
            let epoch = world.resource::<Space>().map.epoch().0;
            let batch = ProxyBatch {
                epoch,
                upserts: Vec::new(),
                removes: vec![(id, generation)],
            };
            handoff::send(world, from, &ShardMessage::ProxyBatch(batch));
        }
        return;
    }
    let now_ms = world.resource::<TickClock>().now_ms;
    let effect = world
        .resource_mut::<Handoffs>()
        .0
        .on_cancel(now_ms, from, id, generation);
    handoff::apply(world, effect);
}

/// Orphans kept for an adoption this shard has now made.
fn answer_pending(world: &mut World) {
    let pending = std::mem::take(&mut world.resource_mut::<Replicas>().pending);
    for (from, dead, epoch, id, generation) in pending {
        on_orphan(world, from, dead, epoch, id, generation);
    }
}

/// This shard adopted dead `gone` (the map that says so is installed, every live member said
/// what it took from it): settle its own attempts to it against the replica, then promote the
/// replica, but for what someone took from `gone` at a newer generation than the replica's.
fn adopt(world: &mut World, gone: ShardId, held: Held, taken: &BTreeMap<NetId, u32>) {
    let now_ms = world.resource::<TickClock>().now_ms;
    let mut entities = held.entities;
    let mut tombstones = held.tombstones;
    for (id, g) in taken {
        let t = tombstones.entry(*id).or_insert((*g, now_ms));
        t.0 = t.0.max(*g);
    }
    settle_own_attempts(world, gone, &mut entities, &tombstones);
    restore_own_handed(world, gone, &entities, &tombstones);
    entities.retain(|id, r| taken.get(id).is_none_or(|g| *g <= r.generation));
    let mut promoted = 0;
    for (_, r) in entities {
        promoted += u64::from(promote_replica(world, r));
    }
    let mut replicas = world.resource_mut::<Replicas>();
    replicas.promoted += promoted;
    replicas.last_adoption = Some((gone, held.tick, promoted));
    replicas
        .adopted
        .retain(|_, (at, _)| now_ms.saturating_sub(*at) <= TOMBSTONE_KEEP_MS);
    replicas.adopted.insert(gone, (now_ms, tombstones));
    metrics::counter!("zonescaler_replica_promoted_total").increment(promoted);
    info!(
        dead = gone.0,
        entities = promoted,
        replica_tick = held.tick,
        "adopted a dead shard's cells: its replica promoted"
    );
}

/// This shard's attempts open to dead `gone`: taken there and replicated (the replica, or its
/// tombstone, is at the attempt's number or later), the replica decides; otherwise the attempt
/// is refused, and the copy here simulated again.
fn settle_own_attempts(
    world: &mut World,
    gone: ShardId,
    entities: &mut BTreeMap<NetId, ReplicaEntity>,
    tombstones: &HashMap<NetId, (u32, u64)>,
) {
    let now_ms = world.resource::<TickClock>().now_ms;
    for (id, generation) in world.resource::<Handoffs>().0.attempts_to(gone) {
        let in_replica = entities
            .get(&id)
            .is_some_and(|r| r.generation >= generation);
        let moved_on = tombstones.get(&id).is_some_and(|(g, _)| *g >= generation);
        tracing::debug!(id = %id, generation, in_replica, moved_on, "own attempt to the dead shard settled");
        if !in_replica && !moved_on {
            let effect = world.resource_mut::<Handoffs>().0.on_refuse(
                now_ms,
                id,
                gone,
                generation,
                RefuseReason::Cancelled,
            );
            if let Some(effect) = effect {
                handoff::apply(world, effect);
            }
            continue;
        }
        world
            .resource_mut::<Handoffs>()
            .0
            .close(id, gone, generation);
        // The frozen copy here is older than what the dead shard replicated: the replica is
        // promoted over it (`promote_replica`). Handed on or despawned there, it goes.
        if moved_on && !in_replica {
            entities.remove(&id);
            if let Some(&e) = world.resource::<NetIndex>().0.get(&id) {
                world.despawn(e);
            }
        }
    }
}

/// What this shard handed to dead `gone` that its replica does not hold (nor a newer owner):
/// back from the record.
fn restore_own_handed(
    world: &mut World,
    gone: ShardId,
    entities: &BTreeMap<NetId, ReplicaEntity>,
    tombstones: &HashMap<NetId, (u32, u64)>,
) {
    let records = world.resource_mut::<Handed>().take_for(gone);
    for req in records {
        let g = req.generation;
        let in_replica = entities.get(&req.id).is_some_and(|r| r.generation >= g);
        let moved_on = tombstones.get(&req.id).is_some_and(|(t, _)| *t >= g);
        if !in_replica && !moved_on {
            restore(world, req);
        }
    }
}

/// Where replica `r`'s attempt (the dead shard was handing it on) goes now: `(to, generation)`
/// to ask, and the dead target whose adopter that is (an `Orphan`, not a cancel); `None` when
/// this shard's own world says it is not to be promoted.
///
/// The dead shard was handing it to a member that died too, and that another member adopted:
/// that adopter decides, from the target's replica, as for any source's orphan (the target may
/// have taken it, and its adopter promoted it: owned here as well, it had two owners). Adopted
/// here, this shard's own world decides (it holds it at that number or later, or the target
/// handed it on: not promoted). Dead with no adopter: what the target took is lost with it, so
/// the replica's copy is the only one. An adopter that died too: its own adopter decides, for
/// it.
fn replica_transit(
    world: &World,
    r: &ReplicaEntity,
) -> Option<(Option<(ShardId, u32)>, Option<ShardId>)> {
    let me = world.resource::<Space>().me;
    let membership = world.resource::<Membership>();
    let (members, dead) = (&membership.members, &membership.dead);
    let live_adopter = |mut gone: ShardId| {
        for _ in 0..limits::SHARDS_MAX {
            match dead.get(&gone).copied().flatten() {
                Some(a) if members.contains(&a) => return Some((gone, a)),
                Some(a) if a != gone => gone = a,
                _ => return None,
            }
        }
        None
    };
    let Some((to, g)) = r.transit.filter(|(to, _)| !members.contains(to)) else {
        return Some((r.transit, None));
    };
    match live_adopter(to) {
        Some((gone, adopter)) if adopter != me => Some((Some((adopter, g)), Some(gone))),
        Some((gone, _)) => {
            let moved_on = (world.resource::<Replicas>().adopted.get(&gone))
                .and_then(|(_, t)| t.get(&r.id))
                .is_some_and(|(next, _)| *next >= g);
            if moved_on || handoff::held_at_or_after(world, r.id, g) {
                return None;
            }
            Some((None, None))
        }
        None => Some((None, None)),
    }
}

/// Make replica `r` an entity of this shard: owned, or frozen in the dead shard's attempt that
/// its target is asked about. False if this shard holds it already at that generation or later.
fn promote_replica(world: &mut World, r: ReplicaEntity) -> bool {
    let me = world.resource::<Space>().me;
    let existing = world.resource::<NetIndex>().0.get(&r.id).copied();
    if let Some(e) = existing {
        // Held here at that generation or later (taken from the dead shard, or mirrored by an
        // owner it was handed to since): not the replica's to decide.
        if world
            .get::<Generation>(e)
            .is_some_and(|g| g.0 >= r.generation)
        {
            return false;
        }
    }
    let Some((transit, orphan_of)) = replica_transit(world, &r) else {
        return false;
    };
    if let Some((to, g)) = transit
        && to == me
    {
        // The dead shard was handing it here: taken already (it is wherever it went since),
        // or, recorded as cancelled now, never.
        let now_ms = world.resource::<TickClock>().now_ms;
        let answer = world
            .resource_mut::<Handoffs>()
            .0
            .on_cancel(now_ms, to, r.id, g);
        if matches!(answer, Effect::Send(_, ShardMessage::HandoffAck { .. })) {
            return false;
        }
    }
    let (id, generation) = (r.id, r.generation);
    let req = HandoffRequest {
        epoch: 0,
        id,
        generation,
        pos: r.pos,
        move_target: r.move_target,
        speed_mps: r.speed_mps,
        rev: r.rev,
        components: r.components.unwrap_or_default(),
        migrating: r.migrating.unwrap_or_default(),
        player: r.player,
        sent_ms: 0,
    };
    // Over this shard's own older copy (frozen in its attempt to the dead shard, its client
    // perhaps still here) or its stale proxy; else a new entity.
    let e = match existing {
        Some(e) => {
            world.entity_mut(e).remove::<(Proxy, InTransit, Owned)>();
            e
        }
        None => world.spawn(Networked(id)).id(),
    };
    handoff::install(world, e, req);
    if world.get::<Avatar>(e).is_some() {
        world.entity_mut(e).remove::<AwaitingClient>();
    }
    match transit.filter(|(to, _)| *to != me) {
        Some((to, g)) => inherit_attempt(world, e, id, (to, g), orphan_of),
        None => {
            world.entity_mut(e).insert(Owned);
        }
    }
    true
}

/// Promoted entity `e` stays frozen in the dead shard's attempt to `to`, now this shard's: a
/// cancel asks `to` whether it took it, or an `Orphan` asks the adopter of dead target `orphan_of`.
fn inherit_attempt(
    world: &mut World,
    e: Entity,
    id: NetId,
    (to, g): (ShardId, u32),
    orphan_of: Option<ShardId>,
) {
    let now_ms = world.resource::<TickClock>().now_ms;
    world.entity_mut(e).insert(InTransit { to, generation: g });
    world
        .resource_mut::<Handoffs>()
        .0
        .inherit(now_ms, id, to, g);
    let msg = match orphan_of {
        Some(dead) => ShardMessage::Orphan {
            dead,
            epoch: world.resource::<Space>().map.epoch().0,
            id,
            generation: g,
        },
        None => ShardMessage::HandoffCancel { id, generation: g },
    };
    handoff::send(world, to, &msg);
}

#[cfg(test)]
mod tests {
    use super::*;
    use zonescaler_shared::cellmap::{CellGrid, assign_contiguous};
    use zonescaler_shared::config::WorldConfig;

    fn s(n: u16) -> ShardId {
        ShardId(n)
    }

    /// Four shards placed as strips or blocks over the default world.
    fn four() -> (CellMap, BTreeSet<ShardId>) {
        let grid = CellGrid::from_config(&WorldConfig::default());
        let shards: Vec<(ShardId, u32)> = (0..4).map(|i| (s(i), 1)).collect();
        let map = assign_contiguous(&grid, &shards).expect("placed");
        (map, (0..4).map(s).collect())
    }

    #[test]
    fn the_buddy_is_a_neighbour_never_itself_and_stays_while_it_touches() {
        let (map, members) = four();
        for me in 0..4 {
            let b = buddy_for(&map, &members, s(me), None).expect("a buddy");
            assert_ne!(b, s(me), "never itself");
            // A neighbour: one of its leaves touches one of `me`'s.
            let grid = map.grid();
            let touches = map.cells_of(s(me)).any(|m| {
                let m = grid.rect(m);
                map.cells_of(b).any(|c| {
                    let r = grid.rect(c);
                    r.min[0] <= m.max[0] + 1e-3
                        && m.min[0] <= r.max[0] + 1e-3
                        && r.min[1] <= m.max[1] + 1e-3
                        && m.min[1] <= r.max[1] + 1e-3
                })
            });
            assert!(touches, "shard {me}'s buddy {b:?} is a neighbour");
            // Another neighbour that is the current buddy is kept.
            let others: Vec<ShardId> = members
                .iter()
                .copied()
                .filter(|o| *o != s(me) && *o != b)
                .collect();
            for o in others {
                let kept = buddy_for(&map, &members, s(me), Some(o));
                if kept == Some(o) {
                    continue;
                }
                assert_eq!(
                    kept,
                    Some(b),
                    "a current buddy that does not touch is replaced"
                );
            }
        }
    }

    #[test]
    fn without_neighbours_the_buddy_is_the_next_member_and_alone_there_is_none() {
        let grid = CellGrid::from_config(&WorldConfig::default());
        let map = CellMap::single(grid, s(3));
        // Shard 3 owns everything: shard 1 (owning nothing) is the next after 3 wrapping.
        let members: BTreeSet<ShardId> = [s(1), s(3), s(5)].into();
        assert_eq!(buddy_for(&map, &members, s(3), None), Some(s(5)));
        assert_eq!(
            buddy_for(&map, &members, s(5), None),
            Some(s(3)),
            "one owning a leaf first"
        );
        let alone: BTreeSet<ShardId> = [s(3)].into();
        assert_eq!(buddy_for(&map, &alone, s(3), None), None);
        assert_eq!(
            buddy_for(&map, &members, s(3), Some(s(9))),
            Some(s(5)),
            "a current buddy that left is replaced"
        );
    }

    fn entity(id: u64, generation: u32) -> ReplicaEntity {
        ReplicaEntity {
            id: NetId(id),
            generation,
            pos: [1.0, 0.0, 2.0],
            move_target: [1.0, 0.0, 2.0],
            speed_mps: 0.0,
            rev: 1,
            components: Some(Vec::new()),
            migrating: Some(Vec::new()),
            player: None,
            transit: None,
        }
    }

    #[test]
    fn a_delta_keeps_what_it_does_not_carry_and_a_remove_leaves_its_next_generation() {
        let mut held = Held::default();
        let mut first = entity(7, 2);
        first.components = Some(vec![zonescaler_shared::protocol::ComponentBlob {
            kind: 1,
            bytes: vec![9],
        }]);
        merge(&mut held, first);
        let mut delta = entity(7, 2);
        delta.pos = [5.0, 0.0, 5.0];
        delta.components = None;
        merge(&mut held, delta);
        let r = &held.entities[&NetId(7)];
        assert_eq!(r.pos, [5.0, 0.0, 5.0], "the delta's position");
        assert_eq!(
            r.components.as_ref().map(Vec::len),
            Some(1),
            "the components it did not carry are kept"
        );
    }

    #[test]
    fn a_tick_is_cut_into_bounded_batches_and_an_idle_one_still_sends_one() {
        let mut none = Vec::new();
        let idle = split(9, false, &mut none, Vec::new());
        assert_eq!(idle.len(), 1, "an empty batch measures the lag");
        let mut many: Vec<ReplicaEntity> = (0..1_300).map(|i| entity(i, 0)).collect();
        let removes: Vec<(NetId, u32)> = (0..600).map(|i| (NetId(10_000 + i), 1)).collect();
        let batches = split(9, true, &mut many, removes);
        assert!(batches[0].reset, "the first part resets");
        assert!(batches[1..].iter().all(|b| !b.reset), "only the first");
        let upserts: usize = batches.iter().map(|b| b.upserts.len()).sum();
        let removed: usize = batches.iter().map(|b| b.removes.len()).sum();
        assert_eq!((upserts, removed), (1_300, 600));
        for b in &batches {
            assert!(b.upserts.len() <= REPLICA_BATCH_ENTRIES_MAX);
            assert!(b.removes.len() <= REPLICA_BATCH_ENTRIES_MAX);
            let bytes = codec::encode(&ShardMessage::Replica(b.clone())).len();
            assert!(bytes <= limits::SHARD_MESSAGE_BYTES_MAX, "{bytes} bytes");
        }
    }
}
