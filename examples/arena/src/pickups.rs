//! Pickups: items worth points that any player in reach may take, exactly one of them.
//!
//! Two players may reach for one item from two shards: the item stands near a border, one
//! player's owner holds the item, the other sees only its proxy. The rule that makes exactly
//! one of them win is that **only the item's owner decides**, and it decides one claim at a
//! time:
//! 1. A player's owner checks the request ([`handle_pickups`]: alive, a pickup not yet taken,
//!    in reach of the item as this shard sees it) and sends [`Claim`] to the item.
//! 2. The claim reaches whichever shard owns the item when it arrives: the framework delivers a
//!    command only to the owner, forwards it after a handoff, and never has two owners. That
//!    shard ([`apply_claims`]) grants the first claim it applies, marks the item [`Taken`] and
//!    sends [`Award`] to the winner; every later claim, in the same tick or any later one,
//!    finds the item taken (or gone) and is dropped.
//! 3. The winner's owner adds the points (`score::apply_awards`).
//!
//! `Taken` is a replicated component, so it travels with the item if the item is handed off
//! before it is despawned: a new owner cannot grant it a second time. Because the framework
//! offers a handoff with the replication cache of the *previous* tick, the arena flushes its
//! components into that cache before handoffs are offered (see `flush` in the crate root);
//! without that, an item granted in the tick it was handed off would arrive untaken.
//!
//! Neither side can lose the item either: the item is despawned only by its owner, only after
//! a grant, and an `Award` is a command to the winner's entity like any other. What is not
//! guaranteed is the award to a winner who logs out (or whose avatar is forwarded more than
//! `COMMAND_HOPS_MAX` times) in the tick or two the award is in flight: commands are
//! at-most-once. DESIGN.md puts trades that must never lose in the store, not in messages.

use crate::commands::{Award, Claim, PickUp};
use crate::components::{Health, Kind, Taken, Value};
use crate::rules::{ArenaRules, BORDER_BAND_M};
use crate::stats::ArenaStats;
use glam::Vec3;
use zonescaler_server::core::components::NetIndex;
use zonescaler_server::core::resources::IdAllocator;
use zonescaler_server::core::space::Space;
use zonescaler_server::prelude::*;
use zonescaler_shared::rng::Rng;

/// How many pickups this shard keeps in its cells, and when it next tops them up.
#[derive(Resource, Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PickupStock {
    pub wanted: usize,
    pub next_check_ms: u64,
}

/// Why a pickup request was refused on the player's side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PickUpRefusal {
    NotSelf,
    NotAPlayer,
    PlayerDead,
    UnknownItem,
    NotAPickup,
    AlreadyTaken,
    OutOfRange,
}

impl PickUpRefusal {
    /// The key under which [`ArenaStats::pickups_refused`] counts it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotSelf => "not_self",
            Self::NotAPlayer => "not_a_player",
            Self::PlayerDead => "player_dead",
            Self::UnknownItem => "unknown_item",
            Self::NotAPickup => "not_a_pickup",
            Self::AlreadyTaken => "already_taken",
            Self::OutOfRange => "out_of_range",
        }
    }
}

/// The components of a fresh pickup worth `points`, owned here.
fn pickup_bundle(id: NetId, at: Vec3, points: u32) -> impl Bundle {
    (
        Networked(id),
        Owned,
        Position(at),
        Kind::Pickup,
        Value { points },
    )
}

/// Spawn a pickup this shard owns at `at`, worth `points`. Returns its id.
pub fn spawn_pickup(world: &mut World, at: Vec3, points: u32) -> NetId {
    let id = world.resource_mut::<IdAllocator>().allocate();
    world.spawn(pickup_bundle(id, at, points));
    world.resource_mut::<ArenaStats>().pickups_spawned += 1;
    id
}

/// Where a new pickup goes: a point this shard owns, and with probability
/// `pickups_near_borders` one within [`BORDER_BAND_M`] of another shard's cells (if this shard
/// has any border; 32 tries).
fn pickup_point(space: &Space, rng: &mut Rng, rules: &ArenaRules) -> Option<Vec3> {
    let first = space.random_owned_point(rng)?;
    if !(space.has_neighbours && rng.chance(rules.pickups_near_borders)) {
        return Some(first);
    }
    let near_border = |p: Vec3| {
        let b = BORDER_BAND_M;
        [(b, 0.0), (-b, 0.0), (0.0, b), (0.0, -b)]
            .iter()
            .any(|(dx, dz)| {
                space
                    .owner_at([p.x + dx, p.z + dz])
                    .is_some_and(|s| s != space.me)
            })
    };
    Some(
        (0..32)
            .filter_map(|_| space.random_owned_point(rng))
            .find(|p| near_border(*p))
            .unwrap_or(first),
    )
}

/// A pickup's worth, `1..=pickup_value_max`.
fn pickup_value(rng: &mut Rng, rules: &ArenaRules) -> u32 {
    1 + rng.below(u64::from(rules.pickup_value_max)) as u32
}

/// Startup: this shard's share of the world's pickups, some of them by the borders.
pub fn spawn_pickups(world: &mut World) {
    let rules = world.resource::<ArenaRules>().clone();
    let wanted = crate::share_of(world, rules.pickups);
    world.resource_mut::<PickupStock>().wanted = wanted;
    let mut rng = std::mem::replace(&mut world.resource_mut::<ShardRng>().0, Rng::new(0));
    let placed: Vec<(Vec3, u32)> = {
        let space = world.resource::<Space>();
        let mut placed = Vec::with_capacity(wanted);
        while placed.len() < wanted {
            let Some(p) = pickup_point(space, &mut rng, &rules) else {
                break;
            };
            placed.push((p, pickup_value(&mut rng, &rules)));
        }
        placed
    };
    world.resource_mut::<ShardRng>().0 = rng;
    for (p, points) in placed {
        spawn_pickup(world, p, points);
    }
}

/// What a player's owner sees of a player: (id, position, health, kind).
type PlayerView<'a> = (&'a Networked, &'a Position, &'a Health, &'a Kind);

/// The pickup rule on the player's side, pure: may `player` claim `item`, seen as
/// `(position, kind, taken)`? Returns the claimant's id.
pub fn check_pickup(
    rules: &ArenaRules,
    player: Option<PlayerView>,
    item: Option<(&Position, Option<&Kind>, bool)>,
) -> Result<NetId, PickUpRefusal> {
    let (me, pos, hp, kind) = player.ok_or(PickUpRefusal::NotAPlayer)?;
    if *kind != Kind::Player {
        return Err(PickUpRefusal::NotAPlayer);
    }
    if !hp.is_alive() {
        return Err(PickUpRefusal::PlayerDead);
    }
    let (at, item_kind, taken) = item.ok_or(PickUpRefusal::UnknownItem)?;
    if item_kind != Some(&Kind::Pickup) {
        return Err(PickUpRefusal::NotAPickup);
    }
    if taken {
        return Err(PickUpRefusal::AlreadyTaken);
    }
    if !crate::combat::in_reach(pos.0, at.0, rules.pickup_range_m) {
        return Err(PickUpRefusal::OutOfRange);
    }
    Ok(me.0)
}

/// `Simulate`: players' `PickUp` requests, on the player's owner. The item may be a proxy:
/// its position and `Taken` are read as the neighbour last sent them.
pub fn handle_pickups(
    requests: Res<Delivered<PickUp>>,
    players: Query<(&Networked, &Position, &Health, &Kind), OwnedOnly>,
    items: Query<(&Position, Option<&Kind>, Has<Taken>)>,
    index: Res<NetIndex>,
    rules: Res<ArenaRules>,
    mut out: ResMut<GameCommands>,
    mut stats: ResMut<ArenaStats>,
) {
    for d in &requests {
        let outcome = if d.from == Some(d.target) {
            let item = index
                .0
                .get(&d.command.item)
                .and_then(|e| items.get(*e).ok());
            check_pickup(&rules, players.get(d.entity).ok(), item)
        } else {
            Err(PickUpRefusal::NotSelf)
        };
        match outcome {
            Ok(me) => {
                out.send_from(me, d.command.item, Claim { by: me });
                stats.claims_sent += 1;
            }
            Err(why) => ArenaStats::count(&mut stats.pickups_refused, why.as_str()),
        }
    }
}

/// `Simulate`: claims on the item's owner. The first claim applied wins; the rest are lost.
///
/// `granted` holds this tick's grants because `Taken` is inserted through `Commands`, which
/// apply only after the system: without it two claims delivered in the same tick would both
/// see an untaken item.
pub fn apply_claims(
    claims: Res<Delivered<Claim>>,
    items: Query<(&Networked, &Kind, &Value, Has<Taken>), OwnedOnly>,
    mut commands: Commands,
    clock: Res<TickClock>,
    mut out: ResMut<GameCommands>,
    mut stats: ResMut<ArenaStats>,
    mut granted: Local<Vec<Entity>>,
) {
    granted.clear();
    for d in &claims {
        // Claims are sent only by a player's owner, on the player's behalf.
        if d.from != Some(d.command.by) {
            tracing::warn!(item = %d.target, "a claim not sent by its claimant; ignored");
            continue;
        }
        let Ok((item, kind, value, taken)) = items.get(d.entity) else {
            continue;
        };
        if *kind != Kind::Pickup {
            continue;
        }
        if taken || granted.contains(&d.entity) {
            stats.claims_lost += 1;
            continue;
        }
        granted.push(d.entity);
        commands.entity(d.entity).insert(Taken {
            at_ms: clock.now_ms,
        });
        out.send_from(
            item.0,
            d.command.by,
            Award {
                points: value.points,
            },
        );
        stats.claims_granted += 1;
    }
}

/// `Simulate`: despawn taken pickups once they have lingered `taken_linger_ms`.
///
/// Why linger at all, rather than despawn on the grant: a shard that receives an item by
/// handoff and despawns it in the same tick never mirrors it, so the former owner, which turned
/// its copy into a proxy on the ack, never hears a remove for it and keeps a stray proxy
/// forever (a framework gap, written up in the crate docs). Lingering lets the new owner's
/// ordinary proxy updates reach the neighbour first, and the remove follow. It also lets
/// clients show the item being taken.
pub fn clear_taken(
    mut commands: Commands,
    q: Query<(Entity, &Taken), OwnedOnly>,
    clock: Res<TickClock>,
    rules: Res<ArenaRules>,
    mut stats: ResMut<ArenaStats>,
) {
    for (e, taken) in &q {
        if clock.now_ms >= taken.at_ms.saturating_add(rules.taken_linger_ms) {
            commands.entity(e).despawn();
            stats.pickups_cleared += 1;
        }
    }
}

/// `Simulate`: every `pickup_restock_ms`, one new pickup if this shard has fewer than its
/// share, so the world's pickups stay at their count as players take them.
pub fn restock(
    mut commands: Commands,
    mut stock: ResMut<PickupStock>,
    items: Query<&Kind, (OwnedOnly, Without<Taken>)>,
    mut ids: ResMut<IdAllocator>,
    space: Res<Space>,
    mut rng: ResMut<ShardRng>,
    rules: Res<ArenaRules>,
    clock: Res<TickClock>,
    mut stats: ResMut<ArenaStats>,
) {
    if clock.now_ms < stock.next_check_ms {
        return;
    }
    stock.next_check_ms = clock.now_ms.saturating_add(rules.pickup_restock_ms);
    let have = items.iter().filter(|k| **k == Kind::Pickup).count();
    if have >= stock.wanted {
        return;
    }
    let Some(at) = pickup_point(&space, &mut rng.0, &rules) else {
        return;
    };
    let points = pickup_value(&mut rng.0, &rules);
    commands.spawn(pickup_bundle(ids.allocate(), at, points));
    stats.pickups_spawned += 1;
}

#[cfg(test)]
mod tests {
    use super::*;
    use zonescaler_shared::ShardId;

    #[test]
    fn the_pickup_rule_wants_a_living_player_in_reach_of_an_untaken_pickup() {
        let rules = ArenaRules::default();
        let me = Networked(NetId::new(ShardId(0), 1).expect("small id"));
        let (here, hp, player) = (Position(Vec3::ZERO), Health::full(10), Kind::Player);
        let at = |x: f32| Position(Vec3::new(x, 0.0, 0.0));
        let (near, far) = (at(rules.pickup_range_m), at(rules.pickup_range_m + 0.01));
        let pickup = Some(&Kind::Pickup);
        let check = |p, i| check_pickup(&rules, p, i);
        assert_eq!(
            check(
                Some((&me, &here, &hp, &player)),
                Some((&near, pickup, false))
            ),
            Ok(me.0)
        );
        assert_eq!(
            check(
                Some((&me, &here, &hp, &player)),
                Some((&far, pickup, false))
            ),
            Err(PickUpRefusal::OutOfRange)
        );
        assert_eq!(
            check(
                Some((&me, &here, &hp, &player)),
                Some((&near, pickup, true))
            ),
            Err(PickUpRefusal::AlreadyTaken)
        );
        assert_eq!(
            check(
                Some((&me, &here, &hp, &player)),
                Some((&near, Some(&Kind::Npc), false))
            ),
            Err(PickUpRefusal::NotAPickup)
        );
        assert_eq!(
            check(Some((&me, &here, &hp, &player)), None),
            Err(PickUpRefusal::UnknownItem)
        );
        let dead = Health { hp: 0, max: 10 };
        assert_eq!(
            check(
                Some((&me, &here, &dead, &player)),
                Some((&near, pickup, false))
            ),
            Err(PickUpRefusal::PlayerDead)
        );
        assert_eq!(
            check(
                Some((&me, &here, &hp, &Kind::Npc)),
                Some((&near, pickup, false))
            ),
            Err(PickUpRefusal::NotAPlayer)
        );
        assert_eq!(
            check(None, Some((&near, pickup, false))),
            Err(PickUpRefusal::NotAPlayer)
        );
    }
}
