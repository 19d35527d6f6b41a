//! Cell moves in a two-shard world in one process: the master moves a crowded leaf from shard 0
//! to shard 1 while its NPCs walk in and out, and aborts a move the target will not take.
//! Checked every tick: no entity is owned by two shards, none is lost.

use bevy_ecs::prelude::*;
use glam::Vec3;
use std::collections::BTreeMap;
use zonescaler_server::app::demo_game;
use zonescaler_server::authority::cell_move::{CellMoves, players_quota};
use zonescaler_server::cluster::LocalCluster;
use zonescaler_server::core::components::{
    AwaitingClient, InTransit, MoveTarget, Networked, Owned, Player, Position,
};
use zonescaler_server::core::resources::{HandoffStats, IdAllocator, TickClock};
use zonescaler_server::core::space::Space;
use zonescaler_shared::config::WorldConfig;
use zonescaler_shared::{CellId, NetId, ShardId};

fn cluster(timeout_ms: u64) -> LocalCluster {
    let mut world = WorldConfig::default();
    world.npc.count = 2_000;
    world.cluster.cell_move_batch = 50;
    world.cluster.cell_move_timeout_ms = timeout_ms;
    LocalCluster::new(world, 2, &demo_game()).expect("two shards")
}

/// Who simulates each entity (or, between a handoff's request and its ack, holds it frozen),
/// by shard; panics if two shards simulate one.
fn holders(c: &mut LocalCluster) -> BTreeMap<NetId, (usize, [f32; 2])> {
    let mut owned = BTreeMap::new();
    let mut frozen = BTreeMap::new();
    for (i, s) in c.shards.iter_mut().enumerate() {
        let mut q = s
            .world
            .query::<(&Networked, &Position, Has<Owned>, Has<InTransit>)>();
        for (n, p, is_owned, in_transit) in q.iter(&s.world) {
            let at = (i, [p.0.x, p.0.z]);
            if is_owned {
                if let Some((other, _)) = owned.insert(n.0, at) {
                    panic!("entity {} is simulated by shards {other} and {i}", n.0);
                }
            } else if in_transit {
                frozen.insert(n.0, at);
            }
        }
    }
    for (id, at) in frozen {
        owned.entry(id).or_insert(at);
    }
    owned
}

/// The leaf of shard 0 with the most entities that borders shard 1's region.
fn crowded_leaf_of_shard_0(c: &mut LocalCluster) -> CellId {
    let mut count: BTreeMap<CellId, usize> = BTreeMap::new();
    for (_, (shard, p)) in holders(c) {
        if shard == 0 {
            *count.entry(c.map.leaf_at(p)).or_default() += 1;
        }
    }
    let grid = *c.map.grid();
    let borders_1 = |cell: CellId| {
        let r = grid.rect(cell);
        let size = r.max[0] - r.min[0];
        [[size, 0.0], [-size, 0.0], [0.0, size], [0.0, -size]]
            .iter()
            .any(|d| {
                let p = [
                    (r.min[0] + r.max[0]) / 2.0 + d[0],
                    (r.min[1] + r.max[1]) / 2.0 + d[1],
                ];
                grid.world().contains(p) && c.map.owner_at(p) == Some(ShardId(1))
            })
    };
    count
        .into_iter()
        .filter(|(cell, _)| borders_1(*cell))
        .max_by_key(|(cell, n)| (*n, std::cmp::Reverse(*cell)))
        .map(|(cell, _)| cell)
        .expect("shard 0 has a leaf on the border")
}

#[test]
fn a_moved_cell_ends_up_with_every_entity_on_its_new_owner_and_none_lost() {
    let mut c = cluster(20_000);
    for _ in 0..30 {
        c.step();
    }
    let before = holders(&mut c);
    let cell = crowded_leaf_of_shard_0(&mut c);
    let in_cell = before
        .values()
        .filter(|(_, p)| c.map.leaf_at(*p) == cell)
        .count();
    assert!(in_cell >= 20, "a crowded cell: {in_cell} entities");
    let epoch = c.map.epoch();
    c.move_cell(cell, ShardId(1)).expect("the move starts");
    let mut ticks = 0;
    while c.master.moves_done == 0 {
        c.step();
        let now = holders(&mut c);
        assert_eq!(
            now.len(),
            before.len(),
            "no entity lost or made up during the move (tick {ticks})"
        );
        ticks += 1;
        assert!(ticks < 600, "the move finished in time");
    }
    assert_eq!(c.map.owner_of(cell), Some(ShardId(1)), "the leaf flipped");
    assert!(c.map.epoch() > epoch, "under a new epoch");
    // A few ticks for the new map to reach both shards and stragglers to be handed over.
    for _ in 0..90 {
        c.step();
        assert_eq!(holders(&mut c).len(), before.len());
    }
    for s in &c.shards {
        assert_eq!(
            s.world.resource::<Space>().map.owner_of(cell),
            Some(ShardId(1))
        );
        let moves = s.world.resource::<CellMoves>();
        assert!(
            moves.outgoing.is_empty() && moves.incoming.is_empty(),
            "the move is over"
        );
    }
    let after = holders(&mut c);
    let stuck: Vec<_> = after
        .iter()
        .filter(|(_, (shard, p))| *shard == 0 && c.map.leaf_at(*p) == cell)
        .collect();
    assert!(
        stuck.is_empty(),
        "nothing of the cell is left on its old owner: {stuck:?}"
    );
    let moved = c.shards[1].world.resource::<HandoffStats>().cells_moved_in;
    assert_eq!(moved, 1, "the target counted the move");
    assert_eq!(
        c.shards[0].world.resource::<HandoffStats>().cells_moved_out,
        1
    );
    println!("moved {in_cell} entities in {ticks} ticks");
}

#[test]
fn a_move_the_target_will_not_take_is_aborted_and_the_source_keeps_the_cell() {
    let mut c = cluster(3_000);
    for _ in 0..30 {
        c.step();
    }
    let before = holders(&mut c).len();
    let cell = crowded_leaf_of_shard_0(&mut c);
    let epoch = c.map.epoch();
    c.move_cell(cell, ShardId(1)).expect("the move starts");
    let mut ticks = 0;
    while c.master.moves_aborted == 0 {
        c.step();
        // The target forgets the move as soon as it hears of it: it refuses the cell's entities.
        c.shards[1]
            .world
            .resource_mut::<CellMoves>()
            .incoming
            .clear();
        assert_eq!(holders(&mut c).len(), before, "nothing lost while refused");
        ticks += 1;
        assert!(ticks < 300, "the move timed out");
    }
    assert_eq!(
        c.map.owner_of(cell),
        Some(ShardId(0)),
        "the source keeps the cell"
    );
    assert_eq!(c.map.epoch(), epoch, "and the map did not change");
    for _ in 0..60 {
        c.step();
        assert_eq!(holders(&mut c).len(), before);
    }
    let moves = c.shards[0].world.resource::<CellMoves>();
    assert!(moves.outgoing.is_empty(), "the source heard of the abort");
    let refused = c.shards[0]
        .world
        .resource::<HandoffStats>()
        .refused_received;
    assert!(refused > 0, "the target did refuse");
}

/// Players' avatars leave a moving cell spread over the whole move, a few with each batch, not
/// all together: each brings its client, whose redirect costs the target a login and a first
/// full snapshot. In query order they would come last (spawned after the NPCs), all in the
/// final batches.
#[test]
fn players_leave_a_moving_cell_a_few_with_each_batch() {
    let mut world = WorldConfig::default();
    world.npc.count = 2_000;
    world.cluster.cell_move_batch = 10;
    let mut c = LocalCluster::new(world, 2, &demo_game()).expect("two shards");
    for _ in 0..30 {
        c.step();
    }
    let cell = crowded_leaf_of_shard_0(&mut c);
    let r = c.map.grid().rect(cell);
    let centre = [(r.min[0] + r.max[0]) / 2.0, (r.min[1] + r.max[1]) / 2.0];
    // Twenty avatars whose clients are on their way (as after a handoff): players, standing
    // still in the middle of the cell, spawned after every NPC.
    let mut players = Vec::new();
    {
        let w = &mut c.shards[0].world;
        let now_ms = w.resource::<TickClock>().now_ms;
        for i in 0..20 {
            let id = w.resource_mut::<IdAllocator>().allocate();
            let p = Vec3::new(centre[0] + i as f32, 0.0, centre[1]);
            w.spawn((
                Networked(id),
                Owned,
                Position(p),
                MoveTarget {
                    target: p,
                    speed_mps: 0.0,
                },
                Player {
                    account: format!("p{i}"),
                },
                AwaitingClient {
                    name: format!("p{i}"),
                    since_ms: now_ms,
                    last_input_seq: 0,
                },
            ));
            players.push(id);
        }
    }
    c.step();
    let in_cell = holders(&mut c)
        .values()
        .filter(|(s, p)| *s == 0 && c.map.leaf_at(*p) == cell)
        .count();
    c.move_cell(cell, ShardId(1)).expect("the move starts");
    let mut arrivals: Vec<usize> = Vec::new();
    let mut ticks = 0;
    while c.master.moves_done == 0 {
        c.step();
        let on_target = holders(&mut c);
        let here = players
            .iter()
            .filter(|id| on_target.get(id).is_some_and(|(s, _)| *s == 1))
            .count();
        arrivals.push(here - arrivals.iter().sum::<usize>());
        ticks += 1;
        assert!(ticks < 600, "the move finished in time");
    }
    assert_eq!(arrivals.iter().sum::<usize>(), 20, "every avatar arrived");
    // 20 of about `in_cell` entities at 10 a tick: a share of 20 / in_cell of each batch.
    let quota = players_quota(10, 20, in_cell - 20);
    assert!(
        arrivals.iter().all(|n| *n <= quota),
        "at most {quota} avatars a tick ({in_cell} entities in the cell): {arrivals:?}"
    );
    let busy = arrivals.iter().filter(|n| **n > 0).count();
    assert!(
        busy >= 20 / quota,
        "the avatars arrive over the move, not at its end: {arrivals:?}"
    );
}
