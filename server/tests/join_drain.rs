//! Shards joining and draining a running cluster, in one process: a fourth shard joins three and
//! the balancer gives it cells from the busiest; then a shard is drained: every cell of it moves
//! away, it is let go, and no entity is lost or doubled on the way. Checked every tick.

use bevy_ecs::prelude::*;
use std::collections::BTreeMap;
use zonescaler_server::app::demo_game;
use zonescaler_server::cluster::LocalCluster;
use zonescaler_server::core::components::{InTransit, Networked, Owned, Proxy};
use zonescaler_shared::NetId;
use zonescaler_shared::ShardId;
use zonescaler_shared::config::WorldConfig;

fn cluster() -> LocalCluster {
    let mut world = WorldConfig::default();
    world.npc.count = 600;
    world.cluster.cell_move_batch = 100;
    // Act quickly: this test is about membership, not about thresholds.
    world.balancer.round_ms = 200;
    LocalCluster::new(world, 3, &demo_game()).expect("three shards")
}

/// Each entity's shard (owned, or frozen in a handoff); panics if two shards simulate one.
fn holders(c: &mut LocalCluster) -> BTreeMap<NetId, usize> {
    let mut owned = BTreeMap::new();
    let mut frozen = BTreeMap::new();
    for (i, s) in c.shards.iter_mut().enumerate() {
        if s.drained() {
            continue;
        }
        let mut q = s.world.query::<(&Networked, Has<Owned>, Has<InTransit>)>();
        for (n, is_owned, in_transit) in q.iter(&s.world) {
            if is_owned {
                if let Some(other) = owned.insert(n.0, i) {
                    panic!("entity {} is simulated by shards {other} and {i}", n.0);
                }
            } else if in_transit {
                frozen.insert(n.0, i);
            }
        }
    }
    for (id, at) in frozen {
        owned.entry(id).or_insert(at);
    }
    owned
}

fn cells_of(c: &LocalCluster, id: u16) -> usize {
    c.map.cells_of(ShardId(id)).count()
}

/// Step until `done` or `ticks` pass, checking every tick that every entity is still held
/// exactly once; the ticks it took.
fn run_until(
    c: &mut LocalCluster,
    ticks: u32,
    mut done: impl FnMut(&mut LocalCluster) -> bool,
) -> Option<u32> {
    let all = holders(c).len();
    for t in 0..ticks {
        c.step();
        let now = holders(c).len();
        assert_eq!(now, all, "tick {t}: {now} entities held, {all} before");
        if done(c) {
            return Some(t);
        }
    }
    None
}

#[test]
fn a_late_joiner_gets_cells_and_a_drained_shard_leaves_with_nothing_lost() {
    let mut c = cluster();
    for _ in 0..30 {
        c.step();
    }
    let entities = holders(&mut c).len();
    assert!(entities >= 600, "the NPCs exist: {entities}");

    let joined = c.join(1).expect("a shard joins the running cluster");
    assert_eq!(joined, ShardId(3), "the next id");
    assert_eq!(cells_of(&c, 3), 0, "a joiner owns nothing at first");
    let took = run_until(&mut c, 3_000, |c| cells_of(c, 3) > 0);
    assert!(took.is_some(), "the balancer gives the joiner cells");
    eprintln!("the joiner got its first cell after {took:?} ticks");
    let owned_by_3 = |c: &mut LocalCluster| holders(c).values().filter(|s| **s == 3).count();
    run_until(&mut c, 3_000, |c| owned_by_3(c) > 0).expect("the joiner simulates entities");

    let before = cells_of(&c, 1);
    assert!(before > 0);
    c.drain(ShardId(1)).expect("shard 1 can be drained");
    assert!(
        c.drain(ShardId(1)).is_ok(),
        "draining a draining shard again is no error"
    );
    let left = run_until(&mut c, 20_000, |c| c.shards[1].drained());
    assert!(
        left.is_some(),
        "shard 1 is let go; it still has {} cells",
        cells_of(&c, 1)
    );
    assert_eq!(cells_of(&c, 1), 0, "a drained shard owns no cell");
    eprintln!("shard 1's {before} cells moved away and it left after {left:?} ticks");
    assert!(
        !c.master.members().contains_key(&ShardId(1)),
        "and is no member any more"
    );
    assert_eq!(
        holders(&mut c).len(),
        entities,
        "every entity is still simulated exactly once"
    );
    // The cluster goes on without it.
    run_until(&mut c, 300, |_| false);
    let again = c.join(1).expect("another shard joins after the drain");
    assert_eq!(again, ShardId(4), "ids are never reused");
}

#[test]
fn a_drain_that_cannot_happen_says_why() {
    let mut c = cluster();
    c.step();
    let master = c.drain(ShardId(0)).expect_err("the master's shard");
    assert!(master.contains("master role"), "{master}");
    let none = c.drain(ShardId(9)).expect_err("no such shard");
    assert!(none.contains("no shard 9"), "{none}");
    c.drain(ShardId(1)).expect("one");
    c.drain(ShardId(2))
        .expect("and another: the master's shard takes their cells");
}

/// Found by the cluster simulator (seed 6): when the last other shard's cells all came to one
/// shard, that shard stopped mirroring at once (it has no neighbour left) without removing the
/// proxies it had sent, so the drained shard kept stale copies of its entities to the end.
#[test]
fn a_shard_drained_down_to_no_cell_is_sent_the_removes_of_its_proxies() {
    let mut world = WorldConfig::default();
    world.npc.count = 600;
    world.cluster.cell_move_batch = 100;
    world.balancer.round_ms = 200;
    let mut c = LocalCluster::new(world, 2, &demo_game()).expect("two shards");
    let proxies = |c: &mut LocalCluster, i: usize| {
        let w = &mut c.shards[i].world;
        w.query_filtered::<(), With<Proxy>>().iter(w).count()
    };
    for _ in 0..30 {
        c.step();
    }
    assert!(
        proxies(&mut c, 1) > 0,
        "shard 1 holds proxies of shard 0's border"
    );
    c.drain(ShardId(1)).expect("shard 1 can be drained");
    let left = run_until(&mut c, 20_000, |c| c.shards[1].drained());
    assert!(left.is_some(), "shard 1 is let go");
    assert_eq!(
        proxies(&mut c, 1),
        0,
        "shard 0, alone now, removed every proxy it had mirrored there"
    );
}
