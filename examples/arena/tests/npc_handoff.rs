//! An NPC's mind survives crossing borders: its `Brain` arrives on the new owner exactly as the
//! old owner let it go, a thousand times over, and the NPC is never owned twice nor lost.

mod common;

use bevy_ecs::prelude::*;
use common::{Arena, small_world};
use std::collections::BTreeMap;
use std::time::Instant;
use zonescaler_arena::ArenaRules;
use zonescaler_arena::npc::{Brain, spawn_npc};
use zonescaler_server::core::ReceiveSteps;
use zonescaler_server::core::components::{Generation, InTransit};
use zonescaler_server::prelude::*;

/// Handoffs the test waits for.
const HANDOFFS: usize = 1_000;
/// Steps it may take (a handoff needs two: offered in one tick, accepted in the next).
const STEPS_MAX: usize = 3 * HANDOFFS;

/// Brains that arrived by handoff on one shard: (id, generation, encoded brain or `None` if
/// it came without one) as the shard held them right after accepting, before any of its game
/// systems ran.
#[derive(Resource, Default)]
struct Arrivals(Vec<(NetId, u32, Option<Vec<u8>>)>);

/// Runs on each shard at the end of `Receive`, after the link messages (and so the handoff
/// requests) were applied and before `Simulate` can change anything.
fn record_arrivals(
    q: Query<(&Networked, &Generation, Option<&Brain>), Added<Owned>>,
    mut arrivals: ResMut<Arrivals>,
) {
    for (net, generation, brain) in &q {
        let brain = brain.map(bitcode::encode);
        arrivals.0.push((net.0, generation.0, brain));
    }
}

#[test]
fn npc_brains_survive_1000_handoffs_unchanged() {
    let started = Instant::now();
    let rules = ArenaRules {
        pickups: 0,
        // A decision every tick: the brain changes all the time, so a stale or missing copy
        // cannot pass for the real one.
        npc_think_ms: 0,
        ..ArenaRules::default()
    };
    let mut a = Arena::new(small_world(), rules);
    for s in &mut a.cluster.shards {
        s.world.init_resource::<Arrivals>();
        s.add_systems_raw(
            record_arrivals
                .in_set(ShardSystems::Receive)
                .after(ReceiveSteps::Commands),
        );
    }
    let b = a.borders()[0];
    let id = spawn_npc(a.world(b.near), b.point(-3.0, 0.0));
    a.step();
    for s in 0..2 {
        a.world(s).resource_mut::<Arrivals>().0.clear();
    }

    // What each source held when it let go, by the generation the target takes it at.
    let mut let_go: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    let mut handoffs = 0;
    let mut changed_between = 0;
    let mut last_arrival: Option<Vec<u8>> = None;
    let mut steps = 0;
    while handoffs < HANDOFFS {
        assert!(
            steps < STEPS_MAX,
            "only {handoffs} handoffs in {steps} steps"
        );
        let (owned, transit, proxies) = a.holders(id);
        assert!(
            owned.len() <= 1,
            "step {steps}: owned by {owned:?}, never by two shards"
        );
        assert!(
            owned.len() + transit.len() >= 1,
            "step {steps}: held by nobody (owned {owned:?}, in transit {transit:?}, proxies \
             {proxies:?})"
        );
        // Walk it across whenever it is settled on one side: 3 m past the border, beyond the
        // 2 m handoff margin.
        if let [owner] = owned[..] {
            let here = a.get::<Position>(owner, id).expect("owned").0;
            if a.owner_at(here) == owner {
                let side = if owner == b.near { 3.0 } else { -3.0 };
                a.teleport(id, b.point(side, 0.0));
            }
        }
        a.step();
        steps += 1;
        for s in 0..2 {
            let w = a.world(s);
            let mut q = w.query::<(&Networked, &InTransit, &Brain)>();
            for (net, t, brain) in q.iter(w) {
                if net.0 == id {
                    let_go
                        .entry(t.generation)
                        .or_insert_with(|| bitcode::encode(brain));
                }
            }
        }
        for s in 0..2 {
            let arrived = std::mem::take(&mut a.world(s).resource_mut::<Arrivals>().0);
            for (net, generation, brain) in arrived {
                assert_eq!(net, id);
                let sent = let_go.remove(&generation).unwrap_or_else(|| {
                    panic!("step {steps}: generation {generation} arrived on shard {s} but no shard let it go")
                });
                assert_eq!(
                    brain.as_ref(),
                    Some(&sent),
                    "step {steps}: handoff {handoffs} (generation {generation}) must carry the \
                     brain bit for bit"
                );
                if last_arrival.as_ref().is_some_and(|l| *l != sent) {
                    changed_between += 1;
                }
                last_arrival = Some(sent);
                handoffs += 1;
            }
        }
    }
    assert!(
        let_go.len() <= 1,
        "every brain let go arrived, but for the handoff still in flight: {:?}",
        let_go.keys()
    );
    let brain = a.get_owned::<Brain>(id).expect("an NPC keeps its brain");
    assert!(
        brain.decisions as usize >= handoffs,
        "the brain kept deciding throughout ({} decisions)",
        brain.decisions
    );
    assert!(
        changed_between + 1 >= handoffs,
        "the brain changed between every two handoffs ({changed_between} of {handoffs})"
    );
    println!(
        "{handoffs} handoffs in {steps} steps ({:.1?}); {} decisions; the brain differed \
         between consecutive arrivals {changed_between} times",
        started.elapsed(),
        brain.decisions
    );
}
