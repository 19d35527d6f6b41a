//! Border proxies: read-only copies of a neighbour shard's entities.
//!
//! Every tick, each owned entity within `interest_radius_m` of a cell owned by another shard is
//! mirrored to that shard: an upsert when it is new there or its quantised position or
//! replication revision changed (components only when the revision changed), a remove when it
//! leaves the border zone or is despawned. One tick's upserts and removes for one neighbour
//! travel as one `ProxyBatch` message. The receiving shard keeps the proxy as an ordinary
//! networked entity without `Owned`, so clients near the border see it through the normal AOI
//! and snapshots, and no simulation system (all of which filter on `Owned`) moves it. Its
//! replicated components are held typed, so a neighbour's system reads a proxy's `Health` as a
//! `Health`. Messages carry the cell-map epoch; one sent under another epoch is dropped.

use super::cell_move::CellMoves;
use crate::core::boundary::NearLists;
use crate::core::components::{
    Generation, InTransit, NetIndex, Networked, Owned, Position, Proxy, ReplicatedComponents,
};
use crate::core::registry::apply_replicated;
use crate::core::resources::{Config, ShardOutbox, TickClock};
use crate::core::space::Space;
use bevy_ecs::prelude::*;
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use zonescaler_shared::codec;
use zonescaler_shared::limits;
use zonescaler_shared::protocol::{PROXY_BATCH_ENTRIES_MAX, ProxyBatch, ProxyUpdate, ShardMessage};
use zonescaler_shared::quant::QPos;
use zonescaler_shared::{NetId, ShardId};

/// What this shard has mirrored to each neighbour, by entity.
#[derive(Resource, Debug, Default)]
pub struct Mirrors(pub BTreeMap<ShardId, MirrorMap>);

impl Mirrors {
    /// Record that `to` holds a proxy of `id` at `pos`, `rev` and `generation`, as if this shard
    /// had mirrored it, though not this tick: the next mirror pass then refreshes that proxy, or
    /// removes it if the entity is not near `to` (or gone), instead of leaving it there forever.
    pub(crate) fn assume_sent(
        &mut self,
        to: ShardId,
        id: NetId,
        pos: QPos,
        rev: u32,
        generation: u32,
    ) {
        let entry = Mirrored {
            pos,
            rev,
            generation,
            seen: 0,
        };
        self.0.entry(to).or_default().insert(id, entry);
    }
}

/// What this shard has mirrored to one neighbour, by entity. Looked up for every border entity
/// every tick, so a hash map; with a fixed hasher, so the order in which the removes of a tick
/// go out is the same in every run of a seed.
pub type MirrorMap = HashMap<NetId, Mirrored, BuildHasherDefault<NetIdHasher>>;

/// FxHash's multiply-rotate over the one `u64` of a [`NetId`]. Ids are spread already (a counter
/// under the shard bits), the keys are the ids this shard owns (nothing an outsider picks, so no
/// need for SipHash's flood resistance), and it is a handful of cycles.
#[derive(Clone, Copy, Debug, Default)]
pub struct NetIdHasher(u64);

impl Hasher for NetIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

/// The last state of one entity sent to one neighbour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mirrored {
    pub pos: QPos,
    pub rev: u32,
    pub generation: u32,
    /// The tick it was last in that neighbour's border zone.
    pub seen: u64,
}

/// Where the proxies refreshed lately are: a guess, checked against the entity's `Networked`
/// before use, that saves the [`NetIndex`] lookup (SipHash) for the hundreds of proxies a
/// neighbour refreshes every tick. Entries of proxies gone are dropped with their remove, and
/// all at once should the map ever outgrow the shard's entities (a proxy despawned otherwise).
#[derive(Debug, Default)]
pub struct ProxyHints(pub(crate) HashMap<NetId, Entity, BuildHasherDefault<NetIdHasher>>);

/// What `receive_shard_messages` reads and writes on a proxy it refreshes.
pub type ProxyParts = (
    &'static Networked,
    &'static Proxy,
    &'static Generation,
    &'static mut Position,
);

/// The common case of [`upsert_proxy`], through a cached query: the proxy exists, is `from`'s,
/// and at `p`'s generation, and only its position changed. Gives `p` back for every other case
/// (components changed too: their typed values need the world).
pub(crate) fn refresh_proxy(
    world: &mut World,
    proxies: &mut QueryState<ProxyParts>,
    hints: &mut ProxyHints,
    from: ShardId,
    p: ProxyUpdate,
) -> Option<ProxyUpdate> {
    let e = match hints.0.get(&p.id) {
        Some(&e) => e,
        None => {
            let index = &world.resource::<NetIndex>().0;
            let Some(&e) = index.get(&p.id) else {
                return Some(p);
            };
            if hints.0.len() > index.len() {
                hints.0.clear();
            }
            hints.0.insert(p.id, e);
            e
        }
    };
    let found = proxies.get_mut(world, e);
    let Some((_, proxy, generation, mut pos)) = found.ok().filter(|f| f.0.0 == p.id) else {
        // Despawned, or no longer a proxy: the general path decides.
        hints.0.remove(&p.id);
        return Some(p);
    };
    if proxy.owner != from || generation.0 != p.generation || p.components.is_some() {
        return Some(p);
    }
    *pos = Position(p.pos.to_vec3());
    None
}

/// Create or refresh the proxy of `p.id`. Refused (false) when this shard owns the entity, or
/// already has it from a newer owner generation.
pub(crate) fn upsert_proxy(world: &mut World, from: ShardId, p: ProxyUpdate) -> bool {
    let pos = Position(p.pos.to_vec3());
    let existing = world.resource::<NetIndex>().0.get(&p.id).copied();
    let Some(e) = existing else {
        let blobs = p.components.unwrap_or_default();
        let e = world
            .spawn((
                Networked(p.id),
                pos,
                ReplicatedComponents {
                    rev: p.rev,
                    blobs: blobs.clone(),
                },
                Generation(p.generation),
                Proxy { owner: from },
            ))
            .id();
        apply_replicated(world, e, &blobs);
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
    // Written in place rather than inserted: the same change tick, without the archetype
    // lookup an insert does (a proxy always has a position; inserting covers one that has not).
    match entity.get_mut::<Position>() {
        Some(mut at) => *at = pos,
        None => {
            entity.insert(pos);
        }
    }
    if let Some(mut cache) = entity.get_mut::<ReplicatedComponents>() {
        cache.rev = p.rev;
    }
    if let Some(blobs) = p.components {
        if let Some(mut cache) = entity.get_mut::<ReplicatedComponents>() {
            cache.blobs = blobs.clone();
        }
        apply_replicated(world, e, &blobs);
    }
    true
}

/// Despawn the proxy of `id` if it is `from`'s at `generation` (a remove from a former owner
/// must not delete the copy the new owner keeps fresh).
pub(crate) fn remove_proxy(world: &mut World, from: ShardId, id: NetId, generation: u32) -> bool {
    let Some(e) = world.resource::<NetIndex>().0.get(&id).copied() else {
        return false;
    };
    let entity = world.entity(e);
    let matches = entity.get::<Proxy>().is_some_and(|p| p.owner == from)
        && entity
            .get::<Generation>()
            .is_some_and(|g| g.0 <= generation);
    if matches {
        world.despawn(e);
    }
    matches
}

/// The master's member list changed: proxies owned by a shard no longer in it are despawned
/// (a drained shard has removed its own already; a dead one, fenced, never will, and its entities
/// are no longer anyone's), and what this shard mirrored to it is forgotten. The proxies of its
/// entities' new owner, if any, come with that owner's mirroring. The proxies despawned.
pub(crate) fn forget_departed_proxies(
    world: &mut World,
    members: &std::collections::BTreeSet<ShardId>,
) -> usize {
    if let Some(mut mirrors) = world.get_resource_mut::<Mirrors>() {
        mirrors.0.retain(|to, _| members.contains(to));
    }
    let mut gone = world.query::<(Entity, &Proxy)>();
    let stale: Vec<Entity> = gone
        .iter(world)
        .filter(|(_, p)| !members.contains(&p.owner))
        .map(|(e, _)| e)
        .collect();
    for &e in &stale {
        world.despawn(e);
    }
    stale.len()
}

/// What [`mirror_proxies`] keeps between ticks.
#[derive(Default)]
pub struct MirrorScratch {
    near: NearLists,
    shards: Vec<ShardId>,
    /// Per neighbour, this tick's batch (emptied after sending, allocations kept), in the order
    /// the neighbours first had traffic: a fixed order, so runs of a seed send alike.
    batches: Vec<(ShardId, ProxyBatch)>,
    buf: bitcode::Buffer,
}

impl std::fmt::Debug for MirrorScratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirrorScratch")
            .field("near", &self.near)
            .field("batches", &self.batches.len())
            .finish_non_exhaustive()
    }
}

impl MirrorScratch {
    fn batch(batches: &mut Vec<(ShardId, ProxyBatch)>, to: ShardId) -> &mut ProxyBatch {
        let i = match batches.iter().position(|(s, _)| *s == to) {
            Some(i) => i,
            None => {
                batches.push((to, ProxyBatch::default()));
                batches.len() - 1
            }
        };
        &mut batches[i].1
    }
}

/// `Replicate`: mirror owned entities near foreign cells to those cells' shards, one
/// `ProxyBatch` per neighbour with traffic. It runs after `Ownership`, where handoff requests are
/// queued, so on each link this tick's proxy updates follow them, as the receiver expects.
pub fn mirror_proxies(
    space: Res<Space>,
    config: Res<Config>,
    mut mirrors: ResMut<Mirrors>,
    mut outbox: ResMut<ShardOutbox>,
    mut scratch: Local<MirrorScratch>,
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
    clock: Res<TickClock>,
    moves: Res<CellMoves>,
) {
    if alone(&space, &moves, &mirrors) {
        return;
    }
    let tick = clock.tick.0;
    let epoch = space.map.epoch().0;
    let radius = config.0.interest.interest_radius_m;
    let MirrorScratch {
        near,
        shards,
        batches,
        buf,
    } = &mut *scratch;
    for (net, pos, cache, generation, transit) in &owned {
        let p = [pos.0.x, pos.0.z];
        // Most entities are in the safe part of a block or cell (four comparisons); the rest
        // test their disc against the few foreign leaves near their base cell, no tree walk.
        near.foreign_shards_near(&space.boundary, p, radius, space.me, shards);
        // A leaf being shipped is mirrored whole to its next owner, so that shard's clients in
        // it see what has not crossed yet.
        if let Some(to) = moves.ships(&space.map, p)
            && !shards.contains(&to)
        {
            shards.push(to);
        }
        if shards.is_empty() {
            continue;
        }
        let qpos = pos.quantized();
        for &to in shards.iter() {
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
                MirrorScratch::batch(batches, to).upserts.push(ProxyUpdate {
                    id: net.0,
                    generation: generation.0,
                    pos: qpos,
                    rev: cache.rev,
                    components: components_changed.then(|| cache.blobs.clone()),
                });
            }
        }
    }
    remove_unseen(&mut mirrors, batches, tick);
    flush(&mut outbox, batches, epoch, buf);
}

/// Alone in the world there is nothing to mirror, unless a leaf is being shipped (to a joiner,
/// say) or proxies sent before are still to be removed (the last neighbour's cells just came
/// here: without their removes, that shard would keep them until it left).
fn alone(space: &Space, moves: &CellMoves, mirrors: &Mirrors) -> bool {
    !space.has_neighbours
        && moves.outgoing.is_empty()
        && mirrors.0.values().all(|sent| sent.is_empty())
}

/// Whatever was not seen this tick left the border zone (or was despawned): remove it there.
/// Entries of entities handed off are dropped by the handoff itself, with their generation.
fn remove_unseen(mirrors: &mut Mirrors, batches: &mut Vec<(ShardId, ProxyBatch)>, tick: u64) {
    for (to, sent) in mirrors.0.iter_mut() {
        let batch = MirrorScratch::batch(batches, *to);
        sent.retain(|id, m| {
            let keep = m.seen == tick;
            if !keep {
                batch.removes.push((*id, m.generation));
            }
            keep
        });
    }
}

/// Queue every neighbour's batch that has something in it, keeping the vectors' allocations.
fn flush(
    outbox: &mut ShardOutbox,
    batches: &mut [(ShardId, ProxyBatch)],
    epoch: u64,
    buf: &mut bitcode::Buffer,
) {
    for (to, batch) in batches.iter_mut() {
        if batch.is_empty() {
            continue;
        }
        batch.epoch = epoch;
        if let Some(mut kept) = push_batch(outbox, *to, std::mem::take(batch), buf) {
            kept.upserts.clear();
            kept.removes.clear();
            *batch = kept;
        }
    }
}

/// Encode `batch` into the outbox as one message, or, past [`PROXY_BATCH_ENTRIES_MAX`] entries
/// or `SHARD_MESSAGE_BYTES_MAX` bytes, as several consecutive batches that apply the same way
/// (the entries in the same order). Returns the batch when it went out whole, so its
/// allocations can be reused.
fn push_batch(
    outbox: &mut ShardOutbox,
    to: ShardId,
    batch: ProxyBatch,
    buf: &mut bitcode::Buffer,
) -> Option<ProxyBatch> {
    if batch.len() > PROXY_BATCH_ENTRIES_MAX {
        return split_batch(outbox, to, batch, buf);
    }
    let msg = ShardMessage::ProxyBatch(batch);
    let mut bytes = Vec::new();
    codec::encode_into(buf, &msg, &mut bytes);
    let ShardMessage::ProxyBatch(batch) = msg else {
        unreachable!("built as a batch just above");
    };
    // One entry always fits (`limits` bounds one entity's components well below a message),
    // so halving ends.
    if bytes.len() <= limits::SHARD_MESSAGE_BYTES_MAX || batch.len() <= 1 {
        outbox.messages.push((to, Bytes::from(bytes)));
        return Some(batch);
    }
    split_batch(outbox, to, batch, buf)
}

/// [`push_batch`] of each half of `first`, in order.
fn split_batch(
    outbox: &mut ShardOutbox,
    to: ShardId,
    mut first: ProxyBatch,
    buf: &mut bitcode::Buffer,
) -> Option<ProxyBatch> {
    let half = first.len() / 2;
    let mut second = ProxyBatch {
        epoch: first.epoch,
        ..ProxyBatch::default()
    };
    if half <= first.upserts.len() {
        second.upserts = first.upserts.split_off(half);
        second.removes = std::mem::take(&mut first.removes);
    } else {
        second.removes = first.removes.split_off(half - first.upserts.len());
    }
    push_batch(outbox, to, first, buf);
    push_batch(outbox, to, second, buf);
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use zonescaler_shared::protocol::ComponentBlob;

    fn update(i: u64, blob_bytes: usize) -> ProxyUpdate {
        ProxyUpdate {
            id: NetId(i),
            generation: 1,
            pos: QPos([i as i32, 0, -(i as i32)]),
            rev: 2,
            components: (blob_bytes > 0).then(|| {
                vec![ComponentBlob {
                    kind: 0,
                    bytes: vec![i as u8; blob_bytes],
                }]
                .into()
            }),
        }
    }

    /// Decode what `push_batch` queued and flatten it back into one batch.
    fn sent(outbox: &ShardOutbox) -> ProxyBatch {
        let mut all = ProxyBatch::default();
        for (to, bytes) in &outbox.messages {
            assert_eq!(*to, ShardId(2));
            assert!(bytes.len() <= limits::SHARD_MESSAGE_BYTES_MAX);
            let Ok(ShardMessage::ProxyBatch(b)) = codec::decode_shard_message(bytes) else {
                panic!("each message is a batch the receiver accepts");
            };
            assert!(!b.is_empty() && b.len() <= PROXY_BATCH_ENTRIES_MAX);
            all.epoch = b.epoch;
            all.upserts.extend(b.upserts);
            all.removes.extend(b.removes);
        }
        all
    }

    #[test]
    fn a_small_batch_is_one_message() {
        let batch = ProxyBatch {
            epoch: 7,
            upserts: (0..300).map(|i| update(i, 0)).collect(),
            removes: (300..310).map(|i| (NetId(i), 1)).collect(),
        };
        let mut outbox = ShardOutbox::default();
        let back = push_batch(
            &mut outbox,
            ShardId(2),
            batch.clone(),
            &mut bitcode::Buffer::new(),
        );
        assert_eq!(outbox.messages.len(), 1, "a tick's traffic is one message");
        assert_eq!(sent(&outbox), batch);
        assert_eq!(
            back,
            Some(batch),
            "the batch comes back for its allocations"
        );
    }

    #[test]
    fn a_batch_over_the_limits_splits_in_order() {
        for (upserts, blob_bytes, removes) in [(400, 200, 30), (9_000, 0, 500), (3, 0, 5_000)] {
            let batch = ProxyBatch {
                epoch: 3,
                upserts: (0..upserts).map(|i| update(i, blob_bytes)).collect(),
                removes: (0..removes).map(|i| (NetId(100_000 + i), 4)).collect(),
            };
            let mut outbox = ShardOutbox::default();
            push_batch(
                &mut outbox,
                ShardId(2),
                batch.clone(),
                &mut bitcode::Buffer::new(),
            );
            assert!(outbox.messages.len() > 1, "{upserts} upserts need several");
            assert_eq!(
                sent(&outbox),
                batch,
                "the pieces carry every entry once, upserts before removes, in order"
            );
        }
    }

    #[test]
    fn a_batch_over_the_entry_limit_is_refused_on_the_wire() {
        let batch = ProxyBatch {
            epoch: 1,
            upserts: Vec::new(),
            removes: (0..=PROXY_BATCH_ENTRIES_MAX as u64)
                .map(|i| (NetId(i), 1))
                .collect(),
        };
        let bytes = codec::encode(&ShardMessage::ProxyBatch(batch));
        assert!(bytes.len() <= limits::SHARD_MESSAGE_BYTES_MAX);
        assert_eq!(
            codec::decode_shard_message(&bytes),
            Err(codec::DecodeError::Invalid("proxy batch too long"))
        );
        let mut big = update(1, limits::COMPONENT_BYTES_MAX + 1);
        let batch = ProxyBatch {
            epoch: 1,
            upserts: vec![update(0, 1), big.clone()],
            removes: Vec::new(),
        };
        assert_eq!(
            codec::decode_shard_message(&codec::encode(&ShardMessage::ProxyBatch(batch))),
            Err(codec::DecodeError::Invalid("component payload over limits")),
            "each upsert's components are checked against the limits"
        );
        big.components = Some(
            vec![
                ComponentBlob {
                    kind: 0,
                    bytes: Vec::new()
                };
                limits::COMPONENTS_PER_ENTITY_MAX + 1
            ]
            .into(),
        );
        let batch = ProxyBatch {
            epoch: 1,
            upserts: vec![big],
            removes: Vec::new(),
        };
        assert_eq!(
            codec::decode_shard_message(&codec::encode(&ShardMessage::ProxyBatch(batch))),
            Err(codec::DecodeError::Invalid("component payload over limits"))
        );
    }
}
