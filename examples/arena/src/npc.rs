//! NPCs: wanderers that chase and bite players who come close, die, and rise elsewhere.
//!
//! All of an NPC's mind is one server-only component, [`Brain`], registered with
//! `migrate::<Brain>()`: its mode, home point, decision counter, next decision time and its own
//! small random generator. Because the whole mind travels with the entity, an NPC that wanders
//! across a border carries on exactly where it was: the same chase, the same next decision, the
//! same random sequence. Its own generator (seeded from the shard's `ShardRng` when it is born)
//! also makes its choices independent of which shard happens to run it and of how many other
//! NPCs that shard has, so the world does not change character when cells move.
//!
//! Times in the brain are on the cluster clock (`TickClock::now_ms`): tick numbers are a
//! shard's own count and mean nothing on the next shard.

use crate::combat::Cooldown;
use crate::combat::{check_attack, ground_distance, view_of};
use crate::commands::Damage;
use crate::components::{Health, Kind};
use crate::rules::ArenaRules;
use crate::stats::ArenaStats;
use bitcode::{Decode, Encode};
use glam::Vec3;
use zonescaler_server::core::components::NetIndex;
use zonescaler_server::core::resources::IdAllocator;
use zonescaler_server::core::space::Space;
use zonescaler_server::interest::{AoiGrid, Frame};
use zonescaler_server::prelude::*;
use zonescaler_shared::rng::Rng;

/// What an NPC is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub enum Mode {
    /// Walking from point to point near its home, looking for players.
    Wander,
    /// Following `target` (a player, possibly a neighbour's proxy) and biting when in reach.
    Chase { target: NetId },
    /// Lying dead until `rise_at_ms` (cluster clock), then rising somewhere else.
    Dead { rise_at_ms: u64 },
}

/// An NPC's whole mind. Server-only; follows the NPC across handoffs bit for bit.
#[derive(Component, Clone, Debug, PartialEq, Encode, Decode)]
pub struct Brain {
    pub mode: Mode,
    /// Where it was born or last rose (x, z): it roams around this point.
    pub home: [f32; 2],
    /// Decisions taken so far (wraps).
    pub decisions: u32,
    /// When it decides next (cluster clock).
    pub next_decision_ms: u64,
    /// Its random generator's state (SplitMix64: one `u64`, so the whole mind is a few bytes).
    pub rng: u64,
}

impl Migrating for Brain {
    const NAME: &'static str = "arena.Brain";
}

impl Brain {
    /// A fresh mind at `home`, its generator seeded with `seed`.
    pub fn new(home: Vec3, seed: u64) -> Self {
        Self {
            mode: Mode::Wander,
            home: [home.x, home.z],
            decisions: 0,
            next_decision_ms: 0,
            rng: seed,
        }
    }

    /// The next number of its SplitMix64 sequence.
    pub fn next_u64(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit()
    }

    fn home(&self) -> Vec3 {
        Vec3::new(self.home[0], 0.0, self.home[1])
    }
}

/// How much faster than its walk an NPC runs after a player.
pub const CHASE_SPEED_FACTOR: f32 = 1.5;
/// Players an NPC considers when it looks around (the nearest are kept).
pub const LOOK_ENTITIES_MAX: usize = 16;

/// Spawn an NPC this shard owns at `at`, with a fresh brain. Returns its id.
pub fn spawn_npc(world: &mut World, at: Vec3) -> NetId {
    let id = world.resource_mut::<IdAllocator>().allocate();
    let seed = world.resource_mut::<ShardRng>().0.next_u64();
    let hp = world.resource::<ArenaRules>().npc_hp_max;
    let speed = world.resource::<Config>().0.npc.speed_mps;
    world.spawn((
        Networked(id),
        Owned,
        Position(at),
        MoveTarget {
            target: at,
            speed_mps: speed,
        },
        Kind::Npc,
        Health::full(hp),
        Cooldown::default(),
        Brain::new(at, seed),
    ));
    id
}

/// Startup: this shard's share of the world's `[npc] count`, by the area it owns, so the same
/// world has the same number of NPCs on one shard or many.
pub fn spawn_npcs(world: &mut World) {
    let count = world.resource::<Config>().0.npc.count;
    let wanted = crate::share_of(world, count);
    // Taken out and put back, so every draw stays part of the shard's one seeded sequence.
    let mut rng = std::mem::replace(&mut world.resource_mut::<ShardRng>().0, Rng::new(0));
    let points: Vec<Vec3> = {
        let space = world.resource::<Space>();
        (0..wanted)
            .map_while(|_| space.random_owned_point(&mut rng))
            .collect()
    };
    world.resource_mut::<ShardRng>().0 = rng;
    for p in points {
        spawn_npc(world, p);
    }
}

/// `Simulate`: an NPC that arrives without a brain (from a shard that could not carry one:
/// today only a bug, once failover promotes cold copies perhaps a fact) gets a fresh one
/// rather than standing still forever.
pub fn adopt_npcs(
    mut commands: Commands,
    q: Query<(Entity, &Kind, &Position, Has<Cooldown>), (Added<Owned>, Without<Brain>)>,
    mut rng: ResMut<ShardRng>,
) {
    for (e, kind, pos, has_cooldown) in &q {
        if *kind != Kind::Npc {
            continue;
        }
        let mut ent = commands.entity(e);
        ent.insert(Brain::new(pos.0, rng.0.next_u64()));
        if !has_cooldown {
            ent.insert(Cooldown::default());
        }
    }
}

/// What [`think`] reads and writes of an NPC it owns.
type NpcParts = (
    &'static Networked,
    &'static mut Position,
    &'static mut MoveTarget,
    &'static mut Brain,
    &'static mut Health,
    &'static mut Cooldown,
);

/// `Simulate`: every NPC this shard owns rises, decides, follows and bites.
///
/// Looking around uses the AOI grid built at the end of the last tick (positions one tick old,
/// proxies included): the same view clients get, at no extra cost.
pub fn think(
    mut npcs: Query<NpcParts, OwnedOnly>,
    others: Query<(&Position, Option<&Health>), Without<Brain>>,
    kinds: Query<&Kind>,
    index: Res<NetIndex>,
    frame: Res<Frame>,
    grid: Res<AoiGrid>,
    space: Res<Space>,
    config: Res<Config>,
    rules: Res<ArenaRules>,
    clock: Res<TickClock>,
    mut out: ResMut<GameCommands>,
    mut stats: ResMut<ArenaStats>,
    mut near: Local<Vec<u32>>,
) {
    let now = clock.now_ms;
    let walk = config.0.npc.speed_mps;
    for (net, mut pos, mut mt, mut brain, mut health, mut cooldown) in &mut npcs {
        if let Mode::Dead { rise_at_ms } = brain.mode {
            if now >= rise_at_ms {
                // Rise somewhere this shard owns (elsewhere would be an instant handoff).
                let at = space
                    .random_owned_point(&mut Rng::new(brain.next_u64()))
                    .unwrap_or(pos.0);
                pos.0 = at;
                *mt = MoveTarget {
                    target: at,
                    speed_mps: walk,
                };
                *health = Health::full(health.max);
                brain.home = [at.x, at.z];
                brain.mode = Mode::Wander;
                brain.next_decision_ms = now;
                stats.npc_respawns += 1;
            }
            continue;
        }
        if now >= brain.next_decision_ms {
            stats.npc_decisions += 1;
            decide(
                &mut brain,
                pos.0,
                &mut mt,
                now,
                &rules,
                &config,
                walk,
                |center| {
                    nearest_player(
                        center,
                        rules.npc_aggro_radius_m,
                        &frame,
                        &grid,
                        &others,
                        &kinds,
                        &mut near,
                    )
                },
            );
        }
        let Mode::Chase { target } = brain.mode else {
            continue;
        };
        match view_of(&index, target, &others) {
            Some((at, Some(hp)))
                if hp.is_alive() && ground_distance(pos.0, at) <= rules.npc_leash_m =>
            {
                *mt = MoveTarget {
                    target: at,
                    speed_mps: walk * CHASE_SPEED_FACTOR,
                };
                let me = (net.0, pos.0, *health, *cooldown);
                if check_attack(&rules, now, me, target, Some((at, Some(hp)))).is_ok() {
                    cooldown.attack_ready_ms = now.saturating_add(rules.attack_cooldown_ms);
                    let hit = Damage {
                        hp: rules.npc_attack_damage_hp,
                    };
                    out.send_from(net.0, target, hit);
                    stats.attacks += 1;
                }
            }
            // Gone, dead, or too far: back to wandering from here.
            _ => {
                brain.mode = Mode::Wander;
                *mt = MoveTarget {
                    target: pos.0,
                    speed_mps: walk,
                };
            }
        }
    }
}

/// One decision: schedule the next, then (wandering) chase a player in sight, or now and then
/// pick a new point to walk to.
fn decide(
    brain: &mut Brain,
    pos: Vec3,
    mt: &mut MoveTarget,
    now: u64,
    rules: &ArenaRules,
    config: &Config,
    walk: f32,
    look: impl FnOnce(Vec3) -> Option<NetId>,
) {
    brain.decisions = brain.decisions.wrapping_add(1);
    // Jittered so NPCs born together do not all think on the same tick.
    let jitter = (rules.npc_think_ms / 4) as f32 * brain.unit();
    brain.next_decision_ms = now
        .saturating_add(rules.npc_think_ms)
        .saturating_add(jitter as u64);
    if brain.mode != Mode::Wander {
        return;
    }
    if let Some(target) = look(pos) {
        brain.mode = Mode::Chase { target };
        return;
    }
    let arrived = ground_distance(pos, mt.target) < 0.5;
    if arrived || brain.unit() < 0.25 {
        mt.target = wander_point(brain, pos, rules, config);
        mt.speed_mps = walk;
    }
}

/// A point within `npc_wander_radius_m` of `pos`, pulled halfway home when the NPC has roamed
/// farther than `npc_roam_radius_m`, inside the world.
fn wander_point(brain: &mut Brain, pos: Vec3, rules: &ArenaRules, config: &Config) -> Vec3 {
    let r = rules.npc_wander_radius_m;
    let mut x = pos.x + brain.range(-r, r);
    let mut z = pos.z + brain.range(-r, r);
    let home = brain.home();
    if ground_distance(pos, home) > rules.npc_roam_radius_m {
        x = (x + home.x) * 0.5;
        z = (z + home.z) * 0.5;
    }
    let w = &config.0.world;
    Vec3::new(x.clamp(w.min_x, w.max_x), 0.0, z.clamp(w.min_z, w.max_z))
}

/// The nearest living player within `radius` of `center`, owned here or a neighbour's proxy.
fn nearest_player(
    center: Vec3,
    radius: f32,
    frame: &Frame,
    grid: &AoiGrid,
    others: &Query<(&Position, Option<&Health>), Without<Brain>>,
    kinds: &Query<&Kind>,
    near: &mut Vec<u32>,
) -> Option<NetId> {
    if frame.ids.is_empty() {
        return None;
    }
    grid.query(
        &frame.xz,
        [center.x, center.z],
        radius,
        LOOK_ENTITIES_MAX,
        near,
    );
    near.iter()
        .filter_map(|&i| {
            let i = i as usize;
            let e = frame.entities[i];
            // The frame is last tick's: an entity gone since fails these lookups.
            let (p, hp) = others.get(e).ok()?;
            let is_player = kinds.get(e).is_ok_and(|k| *k == Kind::Player);
            (is_player && hp.is_some_and(|h| h.is_alive()))
                .then(|| (frame.ids[i], ground_distance(center, p.0)))
        })
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(id, _)| id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_brain_encodes_to_a_few_bytes_and_back_bit_for_bit() {
        let mut b = Brain::new(Vec3::new(1.5, 0.0, -2.25), 42);
        b.mode = Mode::Chase {
            target: NetId(7 << 48 | 9),
        };
        b.next_u64();
        let bytes = bitcode::encode(&b);
        assert!(
            bytes.len() <= zonescaler_shared::limits::COMPONENT_BYTES_MAX,
            "a brain must fit one component ({} bytes)",
            bytes.len()
        );
        let back: Brain = bitcode::decode(&bytes).expect("decodes");
        assert_eq!(back, b);
        assert_eq!(bitcode::encode(&back), bytes);
    }

    #[test]
    fn the_brain_generator_is_its_state_alone() {
        let mut a = Brain::new(Vec3::ZERO, 5);
        let mut b = a.clone();
        for _ in 0..100 {
            let v = a.range(-3.0, 4.0);
            assert!((-3.0..4.0).contains(&v));
            assert_eq!(v.to_bits(), b.range(-3.0, 4.0).to_bits());
        }
        assert_ne!(a.rng, 5, "drawing advances the state");
    }
}
