//! Networked entities from a game system's point of view: spawn one this shard owns, despawn one
//! on purpose, find one by its cluster-wide id.
//!
//! ```
//! use zonescaler_server::prelude::*;
//!
//! #[derive(Component)]
//! struct Crate;
//!
//! fn spawn_crates(mut net: NetEntities, space: Res<Space>, mut rng: ResMut<ShardRng>) {
//!     if let Some(p) = space.random_owned_point(&mut rng.0) {
//!         let (_entity, _id) = net.spawn(Position(p), Crate);
//!     }
//! }
//!
//! let mut app = ShardApp::new(Default::default(), zonescaler_shared::ShardId(0));
//! app.add_systems(ShardSystems::Simulate, spawn_crates);
//! app.tick();
//! app.tick();
//! assert!(app.world.query::<&Crate>().iter(&app.world).count() >= 1);
//! ```

use super::components::{NetIndex, Networked, Owned, Position};
use super::resources::{DespawnLog, IdAllocator};
use bevy_ecs::prelude::*;
use bevy_ecs::system::SystemParam;
use zonescaler_shared::NetId;

/// Spawn, despawn and look up networked entities.
#[derive(SystemParam)]
pub struct NetEntities<'w, 's> {
    commands: Commands<'w, 's>,
    ids: ResMut<'w, IdAllocator>,
    index: Res<'w, NetIndex>,
    despawned: ResMut<'w, DespawnLog>,
    owned: Query<'w, 's, (), With<Owned>>,
}

impl NetEntities<'_, '_> {
    /// Spawn a networked entity at `at` that this shard owns and simulates, with `bundle`: a
    /// fresh cluster-wide id that never changes, across handoffs and failover. The entity exists
    /// once this system's commands apply (the next system that runs after it sees it).
    pub fn spawn(&mut self, at: Position, bundle: impl Bundle) -> (Entity, NetId) {
        let id = self.ids.allocate();
        let e = self.commands.spawn((Networked(id), Owned, at, bundle)).id();
        (e, id)
    }

    /// Take an entity this shard owns out of the world on purpose (a pickup taken, a corpse
    /// gone): its proxies on neighbours are removed by the next mirror pass, and the simulator's
    /// `no_lost_entities` checker knows it was meant. False (and nothing done) for an entity this
    /// shard does not own: a proxy is the owner's to despawn, and one frozen in a handoff is
    /// the target's next.
    pub fn despawn(&mut self, entity: Entity, id: NetId) -> bool {
        if !self.owned.contains(entity) {
            tracing::error!(%id, "despawn of an entity this shard does not own: refused");
            return false;
        }
        self.despawned.0.push(id);
        self.commands.entity(entity).despawn();
        true
    }

    /// The entity of `id` on this shard (owned, in transit or a proxy), if it has one.
    pub fn entity(&self, id: NetId) -> Option<Entity> {
        self.index.0.get(&id).copied()
    }
}
