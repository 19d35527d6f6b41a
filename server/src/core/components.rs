//! Components every networked entity of a shard carries, and the markers of who simulates it.
//!
//! An entity is in exactly one authority state on a shard: [`Owned`] (simulated here, the only
//! writer), [`InTransit`] (frozen while its handoff to a neighbour is answered) or [`Proxy`] (a
//! read-only copy of a neighbour's entity). Game systems filter on [`OwnedOnly`].

use bevy_ecs::lifecycle::HookContext;
use bevy_ecs::prelude::*;
use bevy_ecs::world::DeferredWorld;
use glam::Vec3;
use std::collections::HashMap;
use std::sync::Arc;
use zonescaler_shared::protocol::ComponentBlob;
use zonescaler_shared::quant::QPos;
use zonescaler_shared::{CellId, ConnId, NetId, ShardId};

/// Marks an entity as networked and gives its cluster-wide id. Requires the replication cache.
/// An entity this shard simulates also carries [`Owned`]; a neighbour's copy carries
/// [`Proxy`] instead.
///
/// Every `Networked` entity is in the [`NetIndex`] (kept by this component's hooks), so a message
/// naming a `NetId` finds its entity, owned or proxy, without a scan.
#[derive(Component, Clone, Copy, Debug, PartialEq, Eq)]
#[require(ReplicatedComponents, Generation)]
#[component(immutable, on_add = index_networked, on_remove = unindex_networked)]
pub struct Networked(pub NetId);

/// Every networked entity of this shard by id: owned, in transit or proxy.
#[derive(Resource, Debug, Default)]
pub struct NetIndex(pub HashMap<NetId, Entity>);

fn index_networked(mut world: DeferredWorld, ctx: HookContext) {
    let Some(&Networked(id)) = world.get::<Networked>(ctx.entity) else {
        return;
    };
    if let Some(mut index) = world.get_resource_mut::<NetIndex>() {
        index.0.insert(id, ctx.entity);
    }
}

fn unindex_networked(mut world: DeferredWorld, ctx: HookContext) {
    let Some(&Networked(id)) = world.get::<Networked>(ctx.entity) else {
        return;
    };
    if let Some(mut index) = world.get_resource_mut::<NetIndex>() {
        // Only if it still names this entity (a replacement may already be indexed).
        if index.0.get(&id) == Some(&ctx.entity) {
            index.0.remove(&id);
        }
    }
}

/// Ownership generation: 0 when created, one more after every handoff. Proxy updates and
/// handoff answers carry it, so a message from a former owner is recognised as stale.
#[derive(Component, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Generation(pub u32);

/// Simulated here: this shard is the only writer. Every simulation system filters on it.
#[derive(Component, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Owned;

/// The query filter for a game system that writes: the entities this shard simulates.
/// `Query<&mut Health, OwnedOnly>` never touches a neighbour's read-only proxy (which debug
/// builds refuse with `error[Z0001]`) nor an entity frozen in a handoff.
pub type OwnedOnly = With<Owned>;

/// A read-only copy of an entity `owner` simulates. Its replicated components are kept current
/// by the owner's updates, as typed components: a system may read a proxy's `Health` as a
/// `Health`, and act on it only through a command to the owner.
#[derive(Component, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proxy {
    pub owner: ShardId,
}

/// Frozen on the source while its handoff is answered: not simulated (no `Owned`), not a proxy.
#[derive(Component, Clone, Copy, Debug, PartialEq, Eq)]
pub struct InTransit {
    pub to: ShardId,
    /// The attempt's number: the generation the target takes it at. When, and whether, the
    /// attempt was cancelled is the handoff book's (`authority::handoff::HandoffBook`).
    pub generation: u32,
}

/// A handed-off player avatar whose client has not arrived with its token yet. Inputs forwarded
/// by the source drive it meanwhile; past `limits::REDIRECT_WAIT_MS` it is despawned.
#[derive(Component, Clone, Debug, PartialEq, Eq)]
pub struct AwaitingClient {
    pub name: String,
    pub since_ms: u64,
    pub last_input_seq: u32,
}

/// Authoritative position in metres (x, z on the ground, y height).
#[derive(Component, Clone, Copy, Debug, Default, PartialEq)]
pub struct Position(pub Vec3);

impl Position {
    pub fn quantized(&self) -> QPos {
        QPos::quantize(self.0)
    }
}

/// The player avatar driven by one client connection.
#[derive(Component, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Avatar {
    pub conn: ConnId,
}

/// The account a player's avatar belongs to (server-side; not replicated).
#[derive(Component, Clone, Debug, PartialEq, Eq)]
pub struct Player {
    pub account: String,
}

/// Where a moving entity is heading, and how fast it may go (metres per second).
#[derive(Component, Clone, Copy, Debug, PartialEq)]
pub struct MoveTarget {
    pub target: Vec3,
    pub speed_mps: f32,
}

/// The leaf of the cell map an entity stands in (kept by the `Ownership` set).
#[derive(Component, Clone, Copy, Debug, PartialEq, Eq)]
pub struct InCell(pub CellId);

/// The rectangle of an entity's [`InCell`] leaf and the map epoch it was a leaf at: while the
/// entity stays inside it at that epoch, its leaf is the same, and `update_cells` need not look
/// it up again (a lookup per moving entity per tick was most of an NPC-heavy tick).
#[derive(Component, Clone, Copy, Debug, PartialEq)]
pub struct CellBounds {
    pub rect: zonescaler_shared::cellmap::Rect,
    pub epoch: u64,
}

/// Encoded replicated components of an entity, refreshed from `Changed<T>` for every type
/// registered with `replicate::<T>()`. `rev` grows on every change so a snapshot can tell whether
/// a client's baseline is stale without comparing bytes.
#[derive(Component, Clone, Debug, Default, PartialEq)]
pub struct ReplicatedComponents {
    pub rev: u32,
    /// Sorted by `kind`, at most one blob per kind. Shared (copy on write) with the snapshots
    /// and proxy updates that carry it, so a tick copies no component bytes per viewer.
    pub blobs: Arc<[ComponentBlob]>,
}

impl ReplicatedComponents {
    /// Replace (or add) the blob of `kind`; bumps `rev` only if the bytes changed.
    pub fn set(&mut self, kind: u8, bytes: Vec<u8>) {
        let found = self.blobs.binary_search_by_key(&kind, |b| b.kind);
        if matches!(found, Ok(i) if self.blobs[i].bytes == bytes) {
            return;
        }
        let mut blobs = self.blobs.to_vec();
        match found {
            Ok(i) => blobs[i].bytes = bytes,
            Err(i) => blobs.insert(i, ComponentBlob { kind, bytes }),
        }
        self.blobs = blobs.into();
        self.rev = self.rev.wrapping_add(1);
    }

    /// Drop the blob of `kind` (its component was removed); bumps `rev` if there was one, so
    /// clients and proxies learn of the removal like of any change.
    pub fn remove(&mut self, kind: u8) {
        if let Ok(i) = self.blobs.binary_search_by_key(&kind, |b| b.kind) {
            let mut blobs = self.blobs.to_vec();
            blobs.remove(i);
            self.blobs = blobs.into();
            self.rev = self.rev.wrapping_add(1);
        }
    }
}
