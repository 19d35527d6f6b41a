//! Border proxies: read-only copies of a neighbour shard's entities.
//!
//! Every tick, each owned entity within `interest_radius_m` of a cell owned by another shard is
//! mirrored to that shard: a `ProxyUpsert` when it is new there or its quantised position or
//! replication revision changed (components only when the revision changed), a `ProxyRemove`
//! when it leaves the border zone or is despawned. The receiving shard keeps the proxy as an
//! ordinary networked entity without `Owned`, so clients near the border see it through the
//! normal AOI and snapshots, and no simulation system (all of which filter on `Owned`) moves it.
//! Messages carry the cell-map epoch; one sent under another epoch is dropped.

use crate::boundary::BoundaryIndex;
use crate::components::{Generation, NetIndex, Networked, Owned, Position, ReplicatedComponents};
use crate::handoff::InTransit;
use crate::resources::Config;
use bevy_ecs::prelude::*;
use bytes::Bytes;
use std::collections::BTreeMap;
use tracing::warn;
use zonescaler_shared::cellmap::{CellGrid, CellMap};
use zonescaler_shared::codec;
use zonescaler_shared::protocol::{CellMapView, LeafView, ProxyState, ShardMessage};
use zonescaler_shared::quant::QPos;
use zonescaler_shared::{NetId, ShardId};

/// This shard's place in the cluster's space.
#[derive(Resource, Debug)]
pub struct Space {
    pub me: ShardId,
    pub map: CellMap,
    pub boundary: BoundaryIndex,
    /// Whether any cell belongs to another shard (if not, there is nothing to mirror).
    pub has_neighbours: bool,
}

impl Space {
    /// A point in a cell this shard owns, drawn from `rng` (64 tries; `None` if the shard owns
    /// (almost) nothing).
    pub fn random_owned_point(&self, rng: &mut zonescaler_shared::rng::Rng) -> Option<glam::Vec3> {
        let w = self.grid().world();
        (0..64).find_map(|_| {
            let p = [
                rng.range_f32(w.min[0], w.max[0]),
                rng.range_f32(w.min[1], w.max[1]),
            ];
            self.owns(p).then(|| glam::Vec3::new(p[0], 0.0, p[1]))
        })
    }

    pub fn new(me: ShardId, map: CellMap) -> Self {
        let boundary = BoundaryIndex::new(&map);
        let has_neighbours = map.leaves().values().any(|s| *s != me);
        Self {
            me,
            map,
            boundary,
            has_neighbours,
        }
    }

    /// Whether this shard owns the leaf under `p`.
    pub fn owns(&self, p: [f32; 2]) -> bool {
        self.map.owner_at(p) == Some(self.me)
    }

    pub fn grid(&self) -> &CellGrid {
        self.map.grid()
    }

    /// The map as clients get it (no leaves if it is too big to send).
    pub fn client_view(&self) -> CellMapView {
        let leaves = self.map.leaves();
        let leaves = if leaves.len() > zonescaler_shared::limits::CELL_MAP_LEAVES_TO_CLIENTS_MAX {
            Vec::new()
        } else {
            leaves
                .iter()
                .map(|(cell, shard)| {
                    let r = self.grid().rect(*cell);
                    LeafView {
                        rect: [r.min[0], r.min[1], r.max[0], r.max[1]],
                        shard: *shard,
                    }
                })
                .filter(|l| l.rect[2] > l.rect[0] && l.rect[3] > l.rect[1])
                .collect()
        };
        CellMapView {
            epoch: self.map.epoch().0,
            leaves,
        }
    }
}

/// A read-only copy of an entity `owner` simulates.
#[derive(Component, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proxy {
    pub owner: ShardId,
}

/// Shard-link messages for the next `Receive`, as (sender, bytes). Filled by a link driver.
#[derive(Resource, Debug, Default)]
pub struct ShardInbox {
    pub messages: Vec<(ShardId, Bytes)>,
    /// Messages that did not decode (a link error).
    pub refused: u64,
    /// Messages sent under another cell-map epoch.
    pub stale: u64,
}

/// Shard-link messages to send, as (recipient, bytes).
#[derive(Resource, Debug, Default)]
pub struct ShardOutbox {
    pub messages: Vec<(ShardId, Bytes)>,
}

/// The change tick at which `receive_shard_messages` last ran: the only legitimate writer of a
/// proxy. Anything that changes a proxy after it is a bug ([`forbid_proxy_writes`]).
#[derive(Resource, Debug, Default)]
pub struct ProxyApplyTick(pub Option<bevy_ecs::change_detection::Tick>);

/// What this shard has mirrored to each neighbour, by entity.
#[derive(Resource, Debug, Default)]
pub struct Mirrors(pub BTreeMap<ShardId, BTreeMap<NetId, Mirrored>>);

/// The last state of one entity sent to one neighbour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mirrored {
    pub pos: QPos,
    pub rev: u32,
    pub generation: u32,
    /// The tick it was last in that neighbour's border zone.
    pub seen: u64,
}

/// `Receive`: apply every shard-link message in arrival order (links are ordered, and a handoff
/// answer must be applied before a proxy update sent after it). Exclusive, so each message sees
/// the world as the previous one left it: a proxy spawned by one message is there for the next.
pub fn receive_shard_messages(world: &mut World) {
    let this_run = world.change_tick();
    world.resource_mut::<ProxyApplyTick>().0 = Some(this_run);
    let messages = std::mem::take(&mut world.resource_mut::<ShardInbox>().messages);
    let epoch = world.resource::<Space>().map.epoch().0;
    for (from, bytes) in messages {
        let msg = match codec::decode_shard_message(&bytes) {
            Ok(m) => m,
            Err(e) => {
                world.resource_mut::<ShardInbox>().refused += 1;
                warn!(from = from.0, error = %e, "shard message refused");
                continue;
            }
        };
        let applied = match msg {
            ShardMessage::ProxyUpsert(p) if p.epoch == epoch => upsert_proxy(world, from, p),
            ShardMessage::ProxyRemove {
                epoch: e,
                id,
                generation,
            } if e == epoch => remove_proxy(world, from, id, generation),
            ShardMessage::ProxyUpsert(_) | ShardMessage::ProxyRemove { .. } => false,
            other => crate::handoff::on_message(world, from, other),
        };
        if !applied {
            world.resource_mut::<ShardInbox>().stale += 1;
        }
    }
}

/// Create or refresh the proxy of `p.id`. Refused (false) when this shard owns the entity, or
/// already has it from a newer owner generation.
fn upsert_proxy(world: &mut World, from: ShardId, p: ProxyState) -> bool {
    let pos = Position(p.pos.to_vec3());
    let existing = world.resource::<NetIndex>().0.get(&p.id).copied();
    let Some(e) = existing else {
        let cache = ReplicatedComponents {
            rev: p.rev,
            blobs: p.components.unwrap_or_default(),
        };
        world.spawn((
            Networked(p.id),
            pos,
            cache,
            Generation(p.generation),
            Proxy { owner: from },
        ));
        return true;
    };
    let mut entity = world.entity_mut(e);
    let (Some(proxy), Some(generation)) = (entity.get::<Proxy>(), entity.get::<Generation>())
    else {
        // Owned (or in transit) here: this shard is the authority, the sender is stale.
        return false;
    };
    let newer = p.generation > generation.0;
    if !(newer || (p.generation == generation.0 && proxy.owner == from)) {
        return false;
    }
    if newer {
        entity.insert((Proxy { owner: from }, Generation(p.generation)));
    }
    entity.insert(pos);
    if let Some(blobs) = p.components
        && let Some(mut cache) = entity.get_mut::<ReplicatedComponents>()
    {
        cache.blobs = blobs;
        cache.rev = p.rev;
    }
    true
}

/// Despawn the proxy of `id` if it is `from`'s at `generation` (a remove from a former owner
/// must not delete the copy the new owner keeps fresh).
fn remove_proxy(world: &mut World, from: ShardId, id: NetId, generation: u32) -> bool {
    let Some(e) = world.resource::<NetIndex>().0.get(&id).copied() else {
        return false;
    };
    let entity = world.entity(e);
    let matches = entity.get::<Proxy>().is_some_and(|p| p.owner == from)
        && entity
            .get::<Generation>()
            .is_some_and(|g| g.0 == generation);
    if matches {
        world.despawn(e);
    }
    matches
}

/// `Ownership`, debug builds only: proxies are read-only. A system that wrote a proxy's position
/// (instead of sending a command to its owner) fails here, loudly, with `error[Z0001]`
/// (`docs/errors/Z0001.md`). Spawns by the link (added and changed at once) are not writes.
pub fn forbid_proxy_writes(
    applied: Res<ProxyApplyTick>,
    proxies: Query<(&Networked, &Proxy, Ref<Position>)>,
) {
    let Some(at) = applied.0 else { return };
    for (net, proxy, pos) in &proxies {
        if pos.is_changed_after(at) && pos.added() != pos.last_changed() {
            panic!(
                "error[Z0001]: a system wrote the position of {}, a read-only proxy of shard {}'s \
                 entity; send the owner a command instead. See docs/errors/Z0001.md",
                net.0, proxy.owner.0
            );
        }
    }
}

/// `Replicate`: mirror owned entities near foreign cells to those cells' shards.
pub fn mirror_proxies(
    space: Res<Space>,
    config: Res<Config>,
    mut mirrors: ResMut<Mirrors>,
    mut outbox: ResMut<ShardOutbox>,
    mut scratch: Local<Vec<ShardId>>,
    owned: Query<
        (
            &Networked,
            &Position,
            &ReplicatedComponents,
            &Generation,
            Option<&InTransit>,
        ),
        Or<(With<Owned>, With<InTransit>)>,
    >,
    clock: Res<crate::resources::TickClock>,
) {
    if !space.has_neighbours {
        return;
    }
    let tick = clock.tick.0;
    let epoch = space.map.epoch().0;
    let radius = config.0.interest.interest_radius_m;
    for (net, pos, cache, generation, transit) in &owned {
        let p = [pos.0.x, pos.0.z];
        // An entity deeper than the radius inside a leaf this shard owns cannot be near a
        // foreign cell: skip the R-tree for the vast majority of entities.
        let leaf = space.map.leaf_at(p);
        if space.map.owner_of(leaf) == Some(space.me) {
            let r = space.grid().rect(leaf);
            let inner = (p[0] - r.min[0])
                .min(r.max[0] - p[0])
                .min(p[1] - r.min[1])
                .min(r.max[1] - p[1]);
            if inner > radius {
                continue;
            }
        }
        space
            .boundary
            .foreign_shards_near(p, radius, space.me, &mut scratch);
        let qpos = pos.quantized();
        for &to in scratch.iter() {
            if transit.is_some_and(|t| t.to == to) {
                // The handoff target is taking the entity over: it needs no proxy from here.
                continue;
            }
            let now = Mirrored {
                pos: qpos,
                rev: cache.rev,
                generation: generation.0,
                seen: tick,
            };
            let prev = mirrors.0.entry(to).or_default().insert(net.0, now);
            let components_changed =
                prev.is_none_or(|m| m.rev != cache.rev || m.generation != generation.0);
            if prev.is_none_or(|m| m.pos != qpos) || components_changed {
                let msg = ShardMessage::ProxyUpsert(ProxyState {
                    epoch,
                    id: net.0,
                    generation: generation.0,
                    pos: qpos,
                    rev: cache.rev,
                    components: components_changed.then(|| cache.blobs.clone()),
                });
                outbox.messages.push((to, Bytes::from(codec::encode(&msg))));
            }
        }
    }
    // Whatever was not seen this tick left the border zone (or was despawned): remove it there.
    // Entries of entities handed off are dropped by the handoff itself, with their generation.
    for (to, sent) in mirrors.0.iter_mut() {
        sent.retain(|id, m| {
            let keep = m.seen == tick;
            if !keep {
                let msg = ShardMessage::ProxyRemove {
                    epoch,
                    id: *id,
                    generation: m.generation,
                };
                outbox
                    .messages
                    .push((*to, Bytes::from(codec::encode(&msg))));
            }
            keep
        });
    }
}
