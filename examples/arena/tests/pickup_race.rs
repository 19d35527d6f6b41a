//! Two players on two shards reach for one pickup by the border between them: exactly one wins,
//! the item is gone everywhere afterwards, and nobody's score moves but the winner's.

mod common;

use common::{Arena, Seq, quiet_rules, small_world};
use std::collections::BTreeMap;
use std::time::Instant;
use zonescaler_arena::pickups::spawn_pickup;
use zonescaler_arena::{PickUp, Score, Taken, Value};

/// Placements along the borders, each raced in every timing below.
const PLACEMENTS: usize = 50;

/// When each player's client sends its `PickUp`, relative to the other's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timing {
    /// Both in the same tick. The item's owner applies its own player's claim first (it has
    /// no link to cross), so the near player should win.
    SameTick,
    /// The near player one tick later: both claims reach the item's owner in the same tick
    /// (the far one crossed the link), and the owner must grant one and refuse the other.
    SameArrival,
    /// The far player three ticks earlier: the claim across the border arrives first and
    /// must win; the near player's owner sees the item taken and does not even send a claim.
    FarFirst,
    /// Both in the same tick in which the item is moved across the border: the item is being
    /// handed off from the near shard to the far one while the claims fly.
    MidHandoff,
    /// Both in the same tick; the item is moved across the border one tick later, so its owner
    /// grants the near player's claim in the very tick it offers the item to the far shard.
    /// The far player's claim then chases the item to its new owner, which must know it is
    /// taken: the handoff has to carry this tick's `Taken`.
    GrantedAsItLeaves,
}

const TIMINGS: [Timing; 5] = [
    Timing::SameTick,
    Timing::SameArrival,
    Timing::FarFirst,
    Timing::MidHandoff,
    Timing::GrantedAsItLeaves,
];

/// Ticks after the last claim within which the race must be settled and the item gone from
/// both shards: award 2 ticks, linger 300 ms (9 ticks), the remove 1 more, and slack.
const SETTLE_TICKS_MAX: usize = 30;

#[test]
fn a_pickup_raced_across_a_border_has_exactly_one_winner() {
    let started = Instant::now();
    let mut a = Arena::new(small_world(), quiet_rules());
    let borders = a.borders();
    assert!(!borders.is_empty(), "two shards share at least one border");
    // One player on each shard; in each race the one on the item's side is "near".
    let players = [a.login(0, "ann"), a.login(1, "bob")];
    let mut seq = Seq(2024);
    let mut wins: BTreeMap<(Timing, &str), u32> = BTreeMap::new();
    let mut contested_at_owner = 0;
    let mut refused_early = 0;
    let mut mid_handoff_seen = 0;
    let mut races = 0;
    let mut awarded_total = 0u64;
    let mut values_total = 0u64;
    for placement in 0..PLACEMENTS {
        let b = borders[(seq.next() % borders.len() as u64) as usize];
        // Away from the ends of the shared side, so every point is in one of its two cells.
        let along = seq.range(4.0 - b.half_len, b.half_len - 4.0);
        let item_at = b.point(-seq.range(0.3, 1.5), along);
        let near_at = b.point(-seq.range(0.5, 2.0), along + seq.range(-1.0, 1.0));
        let far_at = b.point(seq.range(0.3, 2.0), along + seq.range(-1.0, 1.0));
        for timing in TIMINGS {
            races += 1;
            let (near, far) = (players[b.near], players[b.far]);
            let (near_id, far_id) = (a.id(near), a.id(far));
            assert_eq!(a.owner_at(near_at), b.near);
            assert_eq!(a.owner_at(far_at), b.far);
            a.teleport(near_id, near_at);
            a.teleport(far_id, far_at);
            let value = 1 + (seq.next() % 20) as u32;
            values_total += u64::from(value);
            let item = spawn_pickup(a.world(b.near), item_at, value);
            a.steps(2);
            let (owned, _, proxies) = a.holders(item);
            assert_eq!(
                (owned.clone(), proxies.clone()),
                (vec![b.near], vec![b.far]),
                "race {races}: the item is owned by the near shard and the far player's shard \
                 sees it as a proxy"
            );
            let score = |a: &mut Arena, id| a.get_owned::<Score>(id).expect("a player").points;
            let before = (score(&mut a, near_id), score(&mut a, far_id));
            let lost_before = a.stats(b.near).claims_lost + a.stats(b.far).claims_lost;
            let early_before = a.stats(b.near).pickup_refusals("already_taken")
                + a.stats(b.far).pickup_refusals("already_taken");
            let pick = PickUp { item };
            match timing {
                Timing::SameTick => {
                    a.send(near, &pick);
                    a.send(far, &pick);
                }
                Timing::SameArrival => {
                    a.send(far, &pick);
                    a.step();
                    a.send(near, &pick);
                }
                Timing::FarFirst => {
                    a.send(far, &pick);
                    a.steps(3);
                    a.send(near, &pick);
                }
                Timing::MidHandoff => {
                    // Clearly inside the far shard's cells (past the handoff margin) and still
                    // in both players' reach.
                    let across = b.point(2.5, along);
                    a.teleport(item, across);
                    a.send(near, &pick);
                    a.send(far, &pick);
                    a.step();
                    let (_, transit, _) = a.holders(item);
                    assert_eq!(
                        transit,
                        vec![b.near],
                        "race {races}: the claims fly while the item is in transit"
                    );
                    mid_handoff_seen += 1;
                }
                Timing::GrantedAsItLeaves => {
                    a.send(near, &pick);
                    a.send(far, &pick);
                    a.step();
                    a.teleport(item, b.point(2.5, along));
                    a.step();
                    let (_, transit, _) = a.holders(item);
                    assert_eq!(
                        transit,
                        vec![b.near],
                        "race {races}: offered as it was granted"
                    );
                    assert!(
                        a.get::<Taken>(b.near, item).is_some(),
                        "race {races}: granted in the tick it was offered"
                    );
                    mid_handoff_seen += 1;
                }
            }
            let mut settled = false;
            for _ in 0..SETTLE_TICKS_MAX {
                a.step();
                let (owned, transit, proxies) = a.holders(item);
                // Never two owners, at any tick (a handoff's source stays frozen, not owning,
                // until the target's ack).
                assert!(owned.len() <= 1, "race {races}: owned by {owned:?}");
                if owned.is_empty() && transit.is_empty() && proxies.is_empty() {
                    settled = true;
                    break;
                }
            }
            assert!(
                settled,
                "race {races} ({timing:?}, placement {placement}): the item must be gone from \
                 both shards, proxies included, within {SETTLE_TICKS_MAX} ticks: {:?}",
                a.holders(item)
            );
            a.steps(2);
            let after = (score(&mut a, near_id), score(&mut a, far_id));
            let gained = (after.0 - before.0, after.1 - before.1);
            let winner = match gained {
                (g, 0) if g == value => "near",
                (0, g) if g == value => "far",
                _ => panic!(
                    "race {races} ({timing:?}, placement {placement}): exactly one player must \
                     gain the item's {value} points, got near +{} far +{}",
                    gained.0, gained.1
                ),
            };
            awarded_total += u64::from(gained.0 + gained.1);
            *wins.entry((timing, winner)).or_default() += 1;
            match timing {
                Timing::FarFirst => {
                    assert_eq!(
                        winner, "far",
                        "race {races}: the claim that arrives first wins"
                    );
                }
                Timing::GrantedAsItLeaves => {
                    assert_eq!(winner, "near", "race {races}: granted before it left");
                }
                _ => {}
            }
            let lost = a.stats(b.near).claims_lost + a.stats(b.far).claims_lost - lost_before;
            let early = a.stats(b.near).pickup_refusals("already_taken")
                + a.stats(b.far).pickup_refusals("already_taken")
                - early_before;
            contested_at_owner += lost;
            refused_early += early;
            if timing == Timing::SameArrival {
                assert_eq!(
                    lost, 1,
                    "race {races}: both claims reached the item's owner and one was refused"
                );
            }
            assert!(
                a.get::<Value>(b.near, item).is_none() && a.get::<Value>(b.far, item).is_none()
            );
        }
    }
    let granted: u64 = (0..2).map(|s| a.stats(s).claims_granted).sum();
    assert_eq!(granted, races, "one grant per item, ever");
    assert_eq!(awarded_total, values_total, "no points made or lost");
    let side_wins = |side: &str| {
        wins.iter()
            .filter(|((_, s), _)| *s == side)
            .map(|(_, n)| n)
            .sum::<u32>()
    };
    assert!(
        side_wins("near") > 0 && side_wins("far") > 0,
        "both the owner's player and the neighbour's player win races: {wins:?}"
    );
    for c in &a.clients {
        assert!(
            c.closed.is_none(),
            "{} was never disconnected: {:?}",
            c.name,
            c.closed
        );
    }
    println!(
        "{races} races ({PLACEMENTS} placements x {} timings) in {:.1?}: wins {wins:?}; \
         {contested_at_owner} claims refused by the item's owner, {refused_early} refused \
         early by the player's owner, {mid_handoff_seen} raced mid-handoff",
        TIMINGS.len(),
        started.elapsed()
    );
}
