//! A shard cut off from the others (its links lose everything both ways, `LocalCluster::partition`),
//! in one process and checked at every tick: it stops simulating within its ownership lease,
//! before the master gives its cells away, so no entity and no place in the world is ever
//! simulated by two shards; after the heal it learns it was fenced and stops, and a shard that
//! joins in its place gets cells.

use bevy_ecs::prelude::*;
use std::collections::BTreeMap;
use zonescaler_server::app::demo_game;
use zonescaler_server::cluster::LocalCluster;
use zonescaler_server::core::components::{Networked, Owned};
use zonescaler_server::core::space::Space;
use zonescaler_shared::cellmap::CellGrid;
use zonescaler_shared::config::WorldConfig;
use zonescaler_shared::limits;
use zonescaler_shared::{NetId, ShardId};

/// The shards that ticked in the last step: none simulates an entity another simulates, and
/// none believes it owns a place (the centre of a base cell) another one that ticked believes
/// it owns.
fn one_owner_at_most(c: &mut LocalCluster, grid: &CellGrid) {
    let ticking: Vec<usize> = (0..c.shards.len())
        .filter(|i| c.simulating(ShardId(*i as u16)))
        .collect();
    let mut owner_of: BTreeMap<NetId, usize> = BTreeMap::new();
    for &i in &ticking {
        let w = &mut c.shards[i].world;
        let mut q = w.query_filtered::<&Networked, With<Owned>>();
        for n in q.iter(w) {
            if let Some(other) = owner_of.insert(n.0, i) {
                panic!("entity {} simulated by shards {other} and {i}", n.0);
            }
        }
    }
    for cell in grid.base_cells() {
        let r = grid.rect(cell);
        let p = [(r.min[0] + r.max[0]) / 2.0, (r.min[1] + r.max[1]) / 2.0];
        let owners: Vec<usize> = (ticking.iter().copied())
            .filter(|&i| {
                let space = c.shards[i].world.resource::<Space>();
                space.map.owner_at(p) == Some(space.me)
            })
            .collect();
        assert!(
            owners.len() <= 1,
            "{cell:?} simulated by shards {owners:?} at {} ms",
            c.now_ms()
        );
    }
}

#[test]
fn a_shard_cut_off_stops_simulating_before_its_cells_have_another_owner_and_a_new_one_rejoins() {
    let mut world = WorldConfig::default();
    world.npc.count = 900;
    world.balancer.round_ms = 200;
    let silence = world.cluster.shard_silence_ms;
    let lease = limits::lease_ms_for(silence);
    let grid = CellGrid::from_config(&world);
    let period = 1_000 / u64::from(world.simulation.tick_hz);
    let mut c = LocalCluster::new(world, 3, &demo_game()).expect("three shards");
    let cut = ShardId(2);
    // Three seconds of play: leases granted, entities handed across the borders.
    for _ in 0..90 {
        c.step();
        one_owner_at_most(&mut c, &grid);
    }
    assert!(c.simulating(cut));

    c.partition(cut, 5_000);
    let t0 = c.now_ms();
    let (mut paused, mut given) = (None, None);
    while c.now_ms() < t0 + 5_000 + 1_000 {
        c.step();
        one_owner_at_most(&mut c, &grid);
        let now = c.now_ms();
        if paused.is_none() && !c.simulating(cut) {
            paused = Some(now);
        }
        if given.is_none() && c.map.cells_of(cut).next().is_none() {
            given = Some(now);
        }
    }
    let paused = paused.expect("the cut shard stopped simulating") - t0;
    let given = given.expect("the master gave its cells away") - t0;
    eprintln!("paused {paused} ms after the cut, its cells given away at {given} ms");
    assert!(
        paused <= lease + period,
        "it paused within its lease ({lease} ms) of its last answered heartbeat: {paused} ms"
    );
    assert!(
        given >= silence,
        "the master waited its silence ({silence} ms): {given} ms"
    );
    assert!(
        paused < given,
        "it had paused before its cells had another owner"
    );
    for s in [0, 1] {
        assert!(c.simulating(ShardId(s)), "shard {s} plays on");
    }
    assert!(
        c.lost_lease(cut),
        "after the heal it heard it was fenced and stopped"
    );

    // A shard joins in its place (as a restarted process would) and gets cells.
    let new = c.join(1).expect("joins");
    let mut ticks = 0;
    while c.map.cells_of(new).next().is_none() {
        c.step();
        one_owner_at_most(&mut c, &grid);
        ticks += 1;
        assert!(ticks < 3_000, "the new shard got no cells");
    }
    eprintln!("the new shard {} owned cells after {ticks} ticks", new.0);
    assert!(!c.simulating(cut), "the fenced shard stays stopped");
}
