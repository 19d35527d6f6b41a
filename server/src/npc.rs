//! Wandering NPCs, so a shard has load and something to watch without any client.

use crate::app::{Plugin, ShardApp, ShardSystems};
use crate::components::{MoveTarget, Networked, Owned, Position};
use crate::proxy::Space;
use crate::resources::{Config, IdAllocator, ShardRng};
use bevy_ecs::prelude::*;
use glam::Vec3;
use zonescaler_shared::components::Kind;
use zonescaler_shared::rng::Rng;

/// Marks an NPC that picks a new random target when it arrives at its current one.
#[derive(Component, Clone, Copy, Debug, Default)]
pub struct Wander;

/// How far (metres) a wandering NPC looks for its next target.
pub const WANDER_RADIUS_M: f32 = 40.0;

/// Spawns `[npc] count` wandering NPCs at start and keeps them wandering.
#[derive(Debug, Default, Clone, Copy)]
pub struct NpcPlugin;

impl Plugin for NpcPlugin {
    fn build(&self, app: &mut ShardApp) {
        let cfg = app.world.resource::<Config>().0.clone();
        // NPCs start only in cells this shard owns; the RNG is taken out and put back so the
        // draws stay part of the shard's one deterministic sequence.
        let mut rng = std::mem::replace(&mut app.world.resource_mut::<ShardRng>().0, Rng::new(0));
        let mut placed = 0;
        for _ in 0..cfg.npc.count {
            let Some(p) = app.world.resource::<Space>().random_owned_point(&mut rng) else {
                break;
            };
            let id = app.world.resource_mut::<IdAllocator>().allocate();
            app.world.spawn((
                Networked(id),
                Owned,
                Position(p),
                MoveTarget {
                    target: p,
                    speed_mps: cfg.npc.speed_mps,
                },
                Wander,
                Kind::Npc,
            ));
            placed += 1;
        }
        app.world.resource_mut::<ShardRng>().0 = rng;
        if placed < cfg.npc.count {
            tracing::warn!(
                placed,
                wanted = cfg.npc.count,
                "this shard owns too little of the world to place every NPC"
            );
        }
        app.add_systems(
            ShardSystems::Simulate,
            wander.before(crate::movement::move_entities),
        );
    }
}

/// `Simulate`: NPCs that reached their target pick another one nearby, inside the world.
pub fn wander(
    mut npcs: Query<(&Position, &mut MoveTarget), With<Wander>>,
    mut rng: ResMut<ShardRng>,
    config: Res<Config>,
) {
    let w = &config.0.world;
    for (pos, mut mt) in &mut npcs {
        if pos.0.distance_squared(mt.target) > 1e-4 {
            continue;
        }
        let x =
            (pos.0.x + rng.0.range_f32(-WANDER_RADIUS_M, WANDER_RADIUS_M)).clamp(w.min_x, w.max_x);
        let z =
            (pos.0.z + rng.0.range_f32(-WANDER_RADIUS_M, WANDER_RADIUS_M)).clamp(w.min_z, w.max_z);
        mt.target = Vec3::new(x, 0.0, z);
    }
}
