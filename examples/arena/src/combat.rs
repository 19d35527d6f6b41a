//! Attacks, damage, death, respawn and kill credit.
//!
//! An attack takes three shards' worth of steps, any of which may be the same shard:
//! 1. The attacker's owner checks the attack ([`check_attack`]: alive, a target with health,
//!    in range, off cooldown) against what it sees of the target: its own entity, or the
//!    read-only proxy of a neighbour's, read as typed `Position` and `Health`. It then sends
//!    [`Damage`] to the target with `send_from`, so the target's owner knows who hit it.
//! 2. The target's owner ([`apply_damage`]) takes the hit points. At zero a player respawns at
//!    once, at a point this shard picks, with full health; an NPC lies dead and rises later
//!    (`npc::think`). Either way it sends [`Kill`] back to the attacker.
//! 3. The killer's owner ([`apply_kills`]) scores the kill and tells the victim who killed it.
//!
//! The result reaches the attacker's side the ordinary way: the next proxy update carries the
//! new `Health`.

use crate::commands::{Attack, Damage, Kill};
use crate::components::{Health, Kind, Score};
use crate::npc::{Brain, Mode};
use crate::rules::ArenaRules;
use crate::score::add_points;
use crate::stats::ArenaStats;
use bitcode::{Decode, Encode};
use glam::Vec3;
use zonescaler_server::core::components::NetIndex;
use zonescaler_server::core::space::Space;
use zonescaler_server::prelude::*;
use zonescaler_shared::limits;

/// When an entity may attack next, on the cluster clock. Server-only (a client learns it by
/// being refused) and carried on handoff, so crossing a border does not reset it.
#[derive(Component, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Encode, Decode)]
pub struct Cooldown {
    pub attack_ready_ms: u64,
}

impl Migrating for Cooldown {
    const NAME: &'static str = "arena.Cooldown";
}

/// Why an attack was refused. Every one is something a client can cause, so none is an error:
/// the attack just does not happen (and is counted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttackRefusal {
    /// The command did not come from the entity it was addressed to (only a server bug could
    /// send that: clients' commands always act as their own avatar).
    NotSelf,
    /// The attacker is not an entity that can attack (no health or cooldown: a pickup).
    NotAnAttacker,
    AttackerDead,
    SelfTarget,
    /// No entity of that id is known here (never was, despawned, or out of sight).
    UnknownTarget,
    /// The target has no health (a pickup).
    NotAttackable,
    TargetDead,
    OutOfRange,
    CoolingDown,
}

impl AttackRefusal {
    /// The key under which [`ArenaStats::attacks_refused`] counts it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotSelf => "not_self",
            Self::NotAnAttacker => "not_an_attacker",
            Self::AttackerDead => "attacker_dead",
            Self::SelfTarget => "self_target",
            Self::UnknownTarget => "unknown_target",
            Self::NotAttackable => "not_attackable",
            Self::TargetDead => "target_dead",
            Self::OutOfRange => "out_of_range",
            Self::CoolingDown => "cooling_down",
        }
    }
}

/// Distance on the ground plane: the world is partitioned on (x, z), and so are ranges.
pub fn ground_distance(a: Vec3, b: Vec3) -> f32 {
    (a.x - b.x).hypot(a.z - b.z)
}

/// Is `b` within `range` of `a` on the ground? A NaN distance (never from positions the
/// movement code keeps, but a proxy's bytes come from another process) is not in reach.
pub fn in_reach(a: Vec3, b: Vec3, range: f32) -> bool {
    use std::cmp::Ordering::{Equal, Less};
    matches!(
        ground_distance(a, b).partial_cmp(&range),
        Some(Less | Equal)
    )
}

/// What an attacker's owner knows of a target: where it stands and its health, if it has any.
pub type TargetView = (Vec3, Option<Health>);

/// The attack rule, pure: may `attacker` (at `attacker_pos`, with `hp` and `cooldown`) hit
/// `target_id`, seen as `target`, at `now_ms`?
pub fn check_attack(
    rules: &ArenaRules,
    now_ms: u64,
    attacker: (NetId, Vec3, Health, Cooldown),
    target_id: NetId,
    target: Option<TargetView>,
) -> Result<(), AttackRefusal> {
    let (id, pos, hp, cooldown) = attacker;
    if !hp.is_alive() {
        return Err(AttackRefusal::AttackerDead);
    }
    if target_id == id {
        return Err(AttackRefusal::SelfTarget);
    }
    let (target_pos, target_hp) = target.ok_or(AttackRefusal::UnknownTarget)?;
    let target_hp = target_hp.ok_or(AttackRefusal::NotAttackable)?;
    if !target_hp.is_alive() {
        return Err(AttackRefusal::TargetDead);
    }
    if !in_reach(pos, target_pos, rules.attack_range_m) {
        return Err(AttackRefusal::OutOfRange);
    }
    if now_ms < cooldown.attack_ready_ms {
        return Err(AttackRefusal::CoolingDown);
    }
    Ok(())
}

/// Look `id` up among every entity this shard knows, owned or proxy.
pub fn view_of(
    index: &NetIndex,
    id: NetId,
    q: &Query<(&Position, Option<&Health>), impl bevy_ecs::query::QueryFilter>,
) -> Option<TargetView> {
    let e = *index.0.get(&id)?;
    q.get(e).ok().map(|(p, h)| (p.0, h.copied()))
}

/// `Simulate`: players' `Attack` commands, on the attacker's owner. A refused attack costs
/// nothing (the cooldown starts only when a hit is sent).
pub fn handle_attacks(
    attacks: Res<Delivered<Attack>>,
    mut attackers: Query<(&Networked, &Position, &Health, &mut Cooldown), OwnedOnly>,
    targets: Query<(&Position, Option<&Health>)>,
    index: Res<NetIndex>,
    rules: Res<ArenaRules>,
    clock: Res<TickClock>,
    mut out: ResMut<GameCommands>,
    mut stats: ResMut<ArenaStats>,
) {
    for d in &attacks {
        let outcome = if d.from != Some(d.target) {
            Err(AttackRefusal::NotSelf)
        } else if let Ok((net, pos, hp, mut cooldown)) = attackers.get_mut(d.entity) {
            let target = view_of(&index, d.command.target, &targets);
            let me = (net.0, pos.0, *hp, *cooldown);
            check_attack(&rules, clock.now_ms, me, d.command.target, target).map(|()| {
                cooldown.attack_ready_ms = clock.now_ms.saturating_add(rules.attack_cooldown_ms);
                out.send_from(
                    net.0,
                    d.command.target,
                    Damage {
                        hp: rules.attack_damage_hp,
                    },
                );
            })
        } else {
            Err(AttackRefusal::NotAnAttacker)
        };
        match outcome {
            Ok(()) => stats.attacks += 1,
            Err(why) => ArenaStats::count(&mut stats.attacks_refused, why.as_str()),
        }
    }
}

/// What [`apply_damage`] reads and writes of a victim it owns.
type VictimParts = (
    &'static Networked,
    &'static Kind,
    &'static mut Health,
    &'static mut Position,
    Option<&'static mut MoveTarget>,
    Option<&'static Player>,
    Option<&'static mut Brain>,
);

/// `Simulate`: `Damage` on the target's owner. Hits on the dead (an NPC waiting to rise) are
/// ignored; an entity killed this tick takes no further hits this tick, so one death is
/// credited once even when two attackers' blows land together.
pub fn apply_damage(
    hits: Res<Delivered<Damage>>,
    mut victims: Query<VictimParts, OwnedOnly>,
    space: Res<Space>,
    mut rng: ResMut<ShardRng>,
    clock: Res<TickClock>,
    rules: Res<ArenaRules>,
    mut out: ResMut<GameCommands>,
    mut stats: ResMut<ArenaStats>,
    mut died: Local<Vec<Entity>>,
) {
    died.clear();
    for d in &hits {
        if died.contains(&d.entity) {
            continue;
        }
        // Pickups have no health: a stray `Damage` for one finds nothing here.
        let Ok((net, kind, mut health, mut pos, mt, player, brain)) = victims.get_mut(d.entity)
        else {
            continue;
        };
        if !health.is_alive() {
            continue;
        }
        health.hp = health.hp.saturating_sub(d.command.hp);
        stats.damage_applied += 1;
        if health.is_alive() {
            continue;
        }
        died.push(d.entity);
        match (*kind, brain) {
            (Kind::Npc, Some(mut brain)) => {
                stats.npc_deaths += 1;
                brain.mode = Mode::Dead {
                    rise_at_ms: clock.now_ms.saturating_add(rules.npc_respawn_ms),
                };
                if let Some(mut mt) = mt {
                    mt.target = pos.0;
                }
            }
            _ => {
                // A player (or anything else with health) is back at once, somewhere this shard
                // owns: a point elsewhere would hand it straight off again.
                stats.player_deaths += 1;
                let at = space.random_owned_point(&mut rng.0).unwrap_or(pos.0);
                pos.0 = at;
                if let Some(mut mt) = mt {
                    mt.target = at;
                }
                *health = Health::full(health.max);
            }
        }
        if let Some(killer) = d.from {
            let victim_account = player.map(|p| p.account.clone()).unwrap_or_default();
            let kill = Kill {
                victim_kind: *kind,
                victim_account,
            };
            out.send_from(net.0, killer, kill);
        }
    }
}

/// `Simulate`: `Kill` on the killer's owner: score it (players have a score, NPCs do not) and
/// tell the victim who did it, wherever the victim plays now (a tell finds its player through
/// the master's directory).
pub fn apply_kills(
    kills: Res<Delivered<Kill>>,
    mut killers: Query<(Option<&Player>, Option<&mut Score>), OwnedOnly>,
    rules: Res<ArenaRules>,
    mut messages: ResMut<PlayerMessages>,
    mut stats: ResMut<ArenaStats>,
) {
    for d in &kills {
        let Ok((player, score)) = killers.get_mut(d.entity) else {
            continue;
        };
        stats.kills_credited += 1;
        let killer = player.map_or("an NPC", |p| p.account.as_str());
        let points = match d.command.victim_kind {
            Kind::Player => rules.kill_points_player,
            Kind::Npc => rules.kill_points_npc,
            Kind::Pickup => 0,
        };
        if let Some(mut score) = score {
            let passed = add_points(&mut score, points, rules.milestone_points);
            if let (Some(m), Some(p)) = (passed, player) {
                stats.milestones += 1;
                messages.shout("", &format!("{} passed {m} points", p.account));
            }
        }
        let victim = &d.command.victim_account;
        // The name comes from another shard; an oversized one is dropped by `tell` anyway, but
        // checking here keeps the text sensible.
        if !victim.is_empty() && victim.len() <= limits::PLAYER_NAME_BYTES_MAX {
            messages.tell(victim, "", &format!("{killer} killed you"));
        }
        if let Some(p) = player {
            let whom = if victim.is_empty() { "an NPC" } else { victim };
            messages.tell(&p.account, "", &format!("you killed {whom}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zonescaler_shared::ShardId;

    fn id(n: u64) -> NetId {
        NetId::new(ShardId(0), n).expect("small id")
    }

    #[test]
    fn the_attack_rule_checks_life_range_and_cooldown_in_that_order() {
        let rules = ArenaRules::default();
        let me = (id(1), Vec3::ZERO, Health::full(100), Cooldown::default());
        let near = Some((Vec3::new(3.0, 9.0, 0.0), Some(Health::full(50))));
        assert_eq!(
            check_attack(&rules, 0, me, id(2), near),
            Ok(()),
            "height is ignored"
        );
        let far = Some((Vec3::new(3.0, 0.0, 3.0), Some(Health::full(50))));
        assert_eq!(
            check_attack(&rules, 0, me, id(2), far),
            Err(AttackRefusal::OutOfRange)
        );
        let nan = Some((Vec3::new(f32::NAN, 0.0, 0.0), Some(Health::full(50))));
        assert_eq!(
            check_attack(&rules, 0, me, id(2), nan),
            Err(AttackRefusal::OutOfRange)
        );
        let cooling = (
            me.0,
            me.1,
            me.2,
            Cooldown {
                attack_ready_ms: 10,
            },
        );
        assert_eq!(
            check_attack(&rules, 9, cooling, id(2), near),
            Err(AttackRefusal::CoolingDown)
        );
        assert_eq!(check_attack(&rules, 10, cooling, id(2), near), Ok(()));
        assert_eq!(
            check_attack(&rules, 0, me, id(1), near),
            Err(AttackRefusal::SelfTarget)
        );
        assert_eq!(
            check_attack(&rules, 0, me, id(2), None),
            Err(AttackRefusal::UnknownTarget)
        );
        let pickup = Some((Vec3::ZERO, None));
        assert_eq!(
            check_attack(&rules, 0, me, id(2), pickup),
            Err(AttackRefusal::NotAttackable)
        );
        let corpse = Some((Vec3::ZERO, Some(Health { hp: 0, max: 50 })));
        assert_eq!(
            check_attack(&rules, 0, me, id(2), corpse),
            Err(AttackRefusal::TargetDead)
        );
        let dead_me = (me.0, me.1, Health { hp: 0, max: 100 }, me.3);
        assert_eq!(
            check_attack(&rules, 0, dead_me, id(2), near),
            Err(AttackRefusal::AttackerDead)
        );
    }
}
