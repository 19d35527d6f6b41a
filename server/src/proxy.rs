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
use crate::components::{Networked, Owned, Position, ReplicatedComponents};
use crate::resources::Config;
use bevy_ecs::prelude::*;
use bytes::Bytes;
use std::collections::BTreeMap;
use tracing::warn;
use zonescaler_shared::cellmap::{CellGrid, CellMap};
use zonescaler_shared::codec;
use zonescaler_shared::protocol::{ProxyState, ShardMessage};
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

/// Proxies on this shard by id.
#[derive(Resource, Debug, Default)]
pub struct ProxyIndex(pub BTreeMap<NetId, Entity>);

/// What this shard has mirrored to each neighbour: id → (position, revision, tick last seen).
#[derive(Resource, Debug, Default)]
pub struct Mirrors(pub BTreeMap<ShardId, BTreeMap<NetId, (QPos, u32, u64)>>);

/// `Receive`: apply proxy updates from neighbours.
pub fn receive_shard_messages(
    mut commands: Commands,
    mut inbox: ResMut<ShardInbox>,
    mut index: ResMut<ProxyIndex>,
    space: Res<Space>,
    mut proxies: Query<(&mut Position, &mut ReplicatedComponents), With<Proxy>>,
    mut applied: ResMut<ProxyApplyTick>,
    ticks: bevy_ecs::system::SystemChangeTick,
) {
    applied.0 = Some(ticks.this_run());
    let epoch = space.map.epoch().0;
    let messages = std::mem::take(&mut inbox.messages);
    // Proxies new in this batch are spawned at the end: spawning goes through `Commands`, so a
    // second message for the same entity in the same batch must find it here, not in the world
    // (where it would not exist yet, and a second copy would be spawned and orphaned).
    let mut spawns: BTreeMap<NetId, (ShardId, Position, ReplicatedComponents)> = BTreeMap::new();
    for (from, bytes) in messages {
        let msg = match codec::decode_shard_message(&bytes) {
            Ok(m) => m,
            Err(e) => {
                inbox.refused += 1;
                warn!(from = from.0, error = %e, "shard message refused");
                continue;
            }
        };
        match msg {
            ShardMessage::ProxyUpsert(p) if p.epoch == epoch => {
                let pos = Position(p.pos.to_vec3());
                if let Some((_, at, cache)) = spawns.get_mut(&p.id) {
                    *at = pos;
                    if let Some(blobs) = p.components {
                        *cache = ReplicatedComponents { rev: p.rev, blobs };
                    }
                } else if let Some((mut at, mut cache)) =
                    index.0.get(&p.id).and_then(|e| proxies.get_mut(*e).ok())
                {
                    *at = pos;
                    if let Some(blobs) = p.components {
                        cache.blobs = blobs;
                        cache.rev = p.rev;
                    }
                } else {
                    let cache = ReplicatedComponents {
                        rev: p.rev,
                        blobs: p.components.unwrap_or_default(),
                    };
                    spawns.insert(p.id, (from, pos, cache));
                }
            }
            ShardMessage::ProxyRemove { epoch: e, id } if e == epoch => {
                if spawns.remove(&id).is_none()
                    && let Some(entity) = index.0.remove(&id)
                {
                    commands.entity(entity).despawn();
                }
            }
            _ => inbox.stale += 1,
        }
    }
    for (id, (owner, pos, cache)) in spawns {
        if let Some(old) = index.0.remove(&id) {
            // The index named an entity that is gone (despawned elsewhere): replace it.
            commands.entity(old).try_despawn();
        }
        let e = commands
            .spawn((Networked(id), pos, cache, Proxy { owner }))
            .id();
        index.0.insert(id, e);
    }
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
    owned: Query<(&Networked, &Position, &ReplicatedComponents), With<Owned>>,
    clock: Res<crate::resources::TickClock>,
) {
    if !space.has_neighbours {
        return;
    }
    let tick = clock.tick.0;
    let epoch = space.map.epoch().0;
    let radius = config.0.interest.interest_radius_m;
    for (net, pos, cache) in &owned {
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
            let sent = mirrors.0.entry(to).or_default();
            let prev = sent.get(&net.0).copied();
            let entry = sent.entry(net.0).or_insert((qpos, cache.rev, tick));
            entry.2 = tick;
            let components_changed = prev.is_none_or(|(_, rev, _)| rev != cache.rev);
            if prev.is_none_or(|(q, _, _)| q != qpos) || components_changed {
                entry.0 = qpos;
                entry.1 = cache.rev;
                let msg = ShardMessage::ProxyUpsert(ProxyState {
                    epoch,
                    id: net.0,
                    pos: qpos,
                    rev: cache.rev,
                    components: components_changed.then(|| cache.blobs.clone()),
                });
                outbox.messages.push((to, Bytes::from(codec::encode(&msg))));
            }
        }
    }
    // Whatever was not seen this tick left the border zone (or was despawned): remove it there.
    for (to, sent) in mirrors.0.iter_mut() {
        sent.retain(|id, (_, _, seen)| {
            let keep = *seen == tick;
            if !keep {
                let msg = ShardMessage::ProxyRemove { epoch, id: *id };
                outbox
                    .messages
                    .push((*to, Bytes::from(codec::encode(&msg))));
            }
            keep
        });
    }
}
