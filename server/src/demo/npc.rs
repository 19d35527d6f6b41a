//! Wandering NPCs, so a shard has load and something to watch without any client.

use super::Damage;
use crate::core::commands::GameCommands;
use crate::core::components::{MoveTarget, Networked, Owned, Position};
use crate::core::resources::{Config, IdAllocator, ShardRng};
use crate::core::space::Space;
use crate::core::{Plugin, ShardApp, ShardSystems};
use crate::interest::{AoiGrid, Frame};
use bevy_ecs::prelude::*;
use glam::Vec3;
use zonescaler_shared::NetId;
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
        app.add_startup_systems(spawn_npcs);
        app.add_systems(
            ShardSystems::Simulate,
            (adopt_npcs, wander, npc_attacks)
                .chain()
                .before(crate::core::movement::move_entities),
        );
    }
}

/// The demo game's NPC `id`, owned here, standing at `p` and wandering at `speed_mps`.
pub fn npc(id: NetId, p: Vec3, speed_mps: f32) -> impl Bundle {
    (
        Networked(id),
        Owned,
        Position(p),
        MoveTarget {
            target: p,
            speed_mps,
        },
        Wander,
        Kind::Npc,
    )
}

/// Startup: this shard's share of `[npc] count`, in the cells it owns. `npc.count` is for the
/// whole world: each shard places its share by the area it owns, so the same world has the
/// same NPCs on one shard or on many.
pub fn spawn_npcs(world: &mut World) {
    let cfg = world.resource::<Config>().0.clone();
    // The RNG is taken out and put back so the draws stay part of the shard's one
    // deterministic sequence.
    let mut rng = std::mem::replace(&mut world.resource_mut::<ShardRng>().0, Rng::new(0));
    let wanted = world.resource::<Space>().share_of(cfg.npc.count);
    let mut placed = 0;
    for _ in 0..wanted {
        let Some(p) = world.resource::<Space>().random_owned_point(&mut rng) else {
            break;
        };
        let id = world.resource_mut::<IdAllocator>().allocate();
        world.spawn(npc(id, p, cfg.npc.speed_mps));
        placed += 1;
    }
    world.resource_mut::<ShardRng>().0 = rng;
    if placed < wanted {
        tracing::warn!(
            placed,
            wanted,
            "this shard owns too little of the world to place every NPC"
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

/// `Simulate`: an NPC handed over by a neighbour wanders here too.
pub fn adopt_npcs(
    mut commands: Commands,
    q: Query<(Entity, &Kind), (Added<Owned>, Without<Wander>)>,
) {
    for (e, kind) in &q {
        if *kind == Kind::Npc {
            commands.entity(e).insert(Wander);
        }
    }
}

/// Chance per NPC per tick of swinging at whatever stands nearest.
pub const NPC_ATTACK_CHANCE: f32 = 0.002;
/// How close (metres) an NPC must be to hit something.
pub const NPC_ATTACK_RANGE_M: f32 = 4.0;

/// `Simulate`: now and then an NPC hits the nearest other entity within reach for one hit point,
/// with a command to its owner, so it works the same on a neighbour's proxy across a border.
/// Uses last tick's frame and grid (this tick's are built later, in `Interest`).
pub fn npc_attacks(
    npcs: Query<(&Networked, &Position), (With<Wander>, With<Owned>)>,
    frame: Res<Frame>,
    grid: Res<AoiGrid>,
    mut rng: ResMut<ShardRng>,
    mut out: ResMut<GameCommands>,
    mut near: Local<Vec<u32>>,
) {
    if frame.ids.is_empty() {
        return;
    }
    for (net, pos) in &npcs {
        if rng.0.next_f32() >= NPC_ATTACK_CHANCE {
            continue;
        }
        let p = [pos.0.x, pos.0.z];
        grid.query(&frame.xz, p, NPC_ATTACK_RANGE_M, 8, &mut near);
        let d2 = |i: u32| {
            let q = frame.xz[i as usize];
            (q[0] - p[0]).powi(2) + (q[1] - p[1]).powi(2)
        };
        let target = near
            .iter()
            .copied()
            .filter(|i| frame.ids[*i as usize] != net.0)
            .min_by(|a, b| d2(*a).total_cmp(&d2(*b)));
        if let Some(i) = target {
            out.send_from(net.0, frame.ids[i as usize], Damage { hp: 1 });
        }
    }
}
