//! Cell moves in a two-shard world in one process: the master moves a crowded leaf from shard 0
//! to shard 1 while its NPCs walk in and out, and aborts a move the target will not take. And the
//! fate of what reaches a moving cell: a player's inputs, game commands for its entities (sent on
//! either shard), an entity that walks in from the source's other cells.
//! Checked every tick: no entity is owned by two shards, none is lost.

use bevy_ecs::prelude::*;
use bitcode::{Decode, Encode};
use bytes::Bytes;
use glam::Vec3;
use std::collections::BTreeMap;
use std::sync::Arc;
use zonescaler_net::{NetCommand, NetEvent};
use zonescaler_server::app::{GameSetup, demo_game};
use zonescaler_server::authority::cell_move::{CellMoves, players_quota};
use zonescaler_server::cluster::LocalCluster;
use zonescaler_server::core::commands::{CommandInbox, Delivered, GameCommands};
use zonescaler_server::core::components::{
    AwaitingClient, InTransit, MoveTarget, NetIndex, Networked, Owned, Player, Position, Proxy,
};
use zonescaler_server::core::resources::{
    Config, HandoffStats, IdAllocator, ShardStats, TickClock,
};
use zonescaler_server::core::space::Space;
use zonescaler_server::core::{ShardApp, ShardSystems};
use zonescaler_shared::cellmap::Rect;
use zonescaler_shared::codec;
use zonescaler_shared::components::GameCommand;
use zonescaler_shared::config::WorldConfig;
use zonescaler_shared::protocol::{ClientControl, ClientDatagram, Hello, Input, ServerControl};
use zonescaler_shared::quant::QPos;
use zonescaler_shared::{CellId, ConnId, NetId, ShardId};

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

// ---- The fate of what reaches a moving cell ----------------------------------------------------

/// A command with a tag, so that each one sent can be told apart where it is delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
struct Poke(u32);
impl GameCommand for Poke {
    const NAME: &'static str = "test.Poke";
}

/// The pokes a shard delivered: (target, tag, whether this shard owned the target then).
#[derive(Resource, Default, Debug)]
struct Pokes(Vec<(NetId, u32, bool)>);

fn record_pokes(pokes: Res<Delivered<Poke>>, owned: Query<Has<Owned>>, mut seen: ResMut<Pokes>) {
    for d in &pokes {
        let is_owned = owned.get(d.entity).unwrap_or(false);
        seen.0.push((d.target, d.command.0, is_owned));
    }
}

fn fates_game() -> GameSetup {
    Arc::new(|app: &mut ShardApp| {
        app.command::<Poke>()
            .add_systems(ShardSystems::Simulate, record_pokes);
        app.world.init_resource::<Pokes>();
    })
}

/// Two shards without NPCs, shipping at most `batch` entities per tick. The balancer is off:
/// only the test's own move changes the map.
fn quiet_cluster(batch: u32) -> LocalCluster {
    let mut world = WorldConfig::default();
    world.npc.count = 0;
    world.balancer.enabled = false;
    world.cluster.cell_move_batch = batch;
    LocalCluster::new(world, 2, &fates_game()).expect("two shards")
}

/// Spawn an entity owned by shard 0 at `at`, walking to `to` at 8 m/s.
fn spawn_walker(c: &mut LocalCluster, at: Vec3, to: Vec3) -> NetId {
    let w = &mut c.shards[0].world;
    let id = w.resource_mut::<IdAllocator>().allocate();
    w.spawn((
        Networked(id),
        Owned,
        Position(at),
        MoveTarget {
            target: to,
            speed_mps: 8.0,
        },
    ));
    id
}

fn entity(c: &mut LocalCluster, i: usize, id: NetId) -> Option<Entity> {
    c.shards[i].world.resource::<NetIndex>().0.get(&id).copied()
}

fn owned_on(c: &mut LocalCluster, i: usize, id: NetId) -> bool {
    entity(c, i, id).is_some_and(|e| c.shards[i].world.get::<Owned>(e).is_some())
}

fn mid(r: &Rect) -> [f32; 2] {
    [(r.min[0] + r.max[0]) / 2.0, (r.min[1] + r.max[1]) / 2.0]
}

/// A leaf of shard 0 with shard 1 across one side and another leaf of shard 0 across another:
/// the leaf, its rectangle, and the unit steps (x, z) towards shard 1 and towards shard 0.
fn border_leaf(c: &LocalCluster) -> (CellId, Rect, [f32; 2], [f32; 2]) {
    let grid = *c.map.grid();
    let across = |r: &Rect, d: [f32; 2]| {
        let (m, half) = (mid(r), (r.max[0] - r.min[0]) / 2.0);
        let p = [m[0] + d[0] * (half + 1.0), m[1] + d[1] * (half + 1.0)];
        grid.world()
            .contains(p)
            .then(|| c.map.owner_at(p))
            .flatten()
    };
    let dirs = [[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]];
    c.map
        .cells_of(ShardId(0))
        .find_map(|cell| {
            let r = grid.rect(cell);
            let to_1 = dirs
                .into_iter()
                .find(|d| across(&r, *d) == Some(ShardId(1)))?;
            let to_0 = dirs
                .into_iter()
                .find(|d| across(&r, *d) == Some(ShardId(0)))?;
            Some((cell, r, to_1, to_0))
        })
        .expect("a leaf of shard 0 between shard 1 and more of shard 0")
}

/// A point `along` metres from the middle of `r` towards `d`, `side` metres across.
fn from_mid(r: &Rect, d: [f32; 2], along: f32, side: f32) -> Vec3 {
    let m = mid(r);
    Vec3::new(
        m[0] + d[0] * along - d[1] * side,
        0.0,
        m[1] + d[1] * along + d[0] * side,
    )
}

fn in_cell(c: &LocalCluster, cell: CellId, p: [f32; 2]) -> bool {
    c.map.grid().contains(cell, p)
}

/// Log `name` in on shard `i` as connection `conn`: its avatar's id.
fn log_in(c: &mut LocalCluster, i: usize, conn: u64, name: &str) -> NetId {
    c.shards[i].push_event(NetEvent::Connected {
        conn: ConnId(conn),
        max_datagram_bytes: 1_200,
    });
    let hello = ClientControl::Hello(Hello {
        protocol_hash: c.shards[i].protocol_hash(),
        name: name.into(),
        ticket: None,
        token: None,
        resume: None,
    });
    c.shards[i].push_event(control(conn, &hello));
    for _ in 0..3 {
        for cmd in c.step().into_iter().flatten() {
            if let NetCommand::Control { bytes, .. } = cmd
                && let Ok(ServerControl::Welcome(w)) = codec::decode_server_control(&bytes)
            {
                return w.avatar;
            }
        }
    }
    panic!("{name} was not welcomed on shard {i}");
}

fn control(conn: u64, msg: &ClientControl) -> NetEvent {
    NetEvent::Control {
        conn: ConnId(conn),
        bytes: Bytes::from(codec::encode(msg)),
    }
}

fn input(conn: u64, seq: u32, target: QPos) -> NetEvent {
    NetEvent::Datagram {
        conn: ConnId(conn),
        bytes: Bytes::from(codec::encode(&ClientDatagram::Input(Input {
            seq,
            ack_tick: 0,
            target,
        }))),
    }
}

/// `holders`, asserting besides that every one of `ids` is held by exactly one shard.
fn check(c: &mut LocalCluster, count: usize, ids: &[NetId], when: &str) {
    let now = holders(c);
    assert_eq!(now.len(), count, "no entity lost or made up ({when})");
    for id in ids {
        assert!(now.contains_key(id), "{id} is held by a shard ({when})");
    }
}

#[test]
fn a_player_steering_through_a_cell_move_is_redirected_once_and_its_last_input_counts() {
    let mut c = quiet_cluster(1);
    c.step();
    let avatar = log_in(&mut c, 0, 1, "ann");
    let e0 = entity(&mut c, 0, avatar).expect("the avatar is on shard 0");
    let spawn = c.shards[0].world.get::<Position>(e0).expect("placed").0;
    let cell = c.map.leaf_at([spawn.x, spawn.z]);
    assert_eq!(c.map.owner_of(cell), Some(ShardId(0)));
    // Others stand in the cell too, so that the move (one entity a tick) takes a while.
    let r = c.map.grid().rect(cell);
    let m = mid(&r);
    for k in 0..12 {
        let at = Vec3::new(m[0] + k as f32, 0.0, m[1] - 12.0);
        spawn_walker(&mut c, at, at);
    }
    c.step();
    let count = holders(&mut c).len();
    // Each input names another point near the cell's middle: the avatar stays in the cell.
    let target = |seq: u32| {
        QPos::quantize(Vec3::new(
            m[0] + (seq % 20) as f32 - 10.0,
            0.0,
            m[1] + (seq / 20) as f32,
        ))
    };

    c.move_cell(cell, ShardId(1)).expect("the move starts");
    let (mut seq, mut last) = (0, None);
    let mut redirects = Vec::new();
    let mut to_51 = Vec::new();
    let mut welcomed_at = None;
    let mut flipped_at = None;
    for tick in 0..600 {
        // The client steers every tick on the connection it plays on, here the old one until
        // the new shard welcomes it (its last input goes out beside its Hello there).
        if welcomed_at.is_none() && flipped_at.is_none() {
            seq += 1;
            c.shards[0].push_event(input(1, seq, target(seq)));
            last = Some(target(seq));
        }
        let out = c.step();
        for (i, cmds) in out.into_iter().enumerate() {
            for cmd in cmds {
                let NetCommand::Control { conn, bytes } = cmd else {
                    continue;
                };
                let Ok(msg) = codec::decode_server_control(&bytes) else {
                    continue;
                };
                if i == 1 && conn.0 == 51 {
                    to_51.push(msg.clone());
                }
                match msg {
                    ServerControl::Redirect(r) => {
                        redirects.push((i, conn.0, r.shard));
                        if (i, conn.0) == (0, 1) {
                            // It follows at once, keeping the old connection until welcomed.
                            c.shards[1].push_event(NetEvent::Connected {
                                conn: ConnId(51),
                                max_datagram_bytes: 1_200,
                            });
                            let hello = ClientControl::Hello(Hello {
                                protocol_hash: c.shards[1].protocol_hash(),
                                name: String::new(),
                                ticket: None,
                                token: Some(r.token),
                                resume: None,
                            });
                            c.shards[1].push_event(control(51, &hello));
                        }
                    }
                    ServerControl::Welcome(w) if (i, conn.0) == (1, 51) => {
                        assert_eq!(w.avatar, avatar, "welcomed to its own avatar");
                        welcomed_at = Some(tick);
                        c.shards[0].push_event(NetEvent::Disconnected {
                            conn: ConnId(1),
                            reason: "moved to shard 1".into(),
                        });
                    }
                    _ => {}
                }
            }
        }
        check(&mut c, count, &[avatar], &format!("tick {tick}"));
        if flipped_at.is_none() && c.map.owner_of(cell) == Some(ShardId(1)) {
            flipped_at = Some(tick);
        }
        if let (Some(f), Some(w)) = (flipped_at, welcomed_at)
            && tick >= f.max(w) + 30
        {
            break;
        }
    }
    println!("inputs 1..={seq}, welcomed at tick {welcomed_at:?}, flipped at {flipped_at:?}");
    assert!(flipped_at.is_some(), "the cell moved");
    assert!(
        welcomed_at.is_some(),
        "shard 1 welcomed the redirected client: {to_51:?}"
    );
    assert_eq!(
        redirects,
        [(0, 1, ShardId(1))],
        "the client was redirected once, from shard 0 to shard 1"
    );
    assert!(owned_on(&mut c, 1, avatar), "shard 1 owns the avatar");
    let e1 = entity(&mut c, 1, avatar).expect("on shard 1");
    let steering = c.shards[1].world.get::<MoveTarget>(e1).expect("a mover");
    let last = last.expect("inputs were sent");
    assert_eq!(
        QPos::quantize(steering.target),
        last,
        "the avatar heads where the client's last input (seq {seq}) said"
    );
    let forwarded = c.shards[0].world.resource::<ShardStats>().inputs_forwarded;
    assert!(forwarded > 0, "some inputs were forwarded to the new owner");
}

/// A crowd's cell moves its players' avatars a few a tick (`cluster.cell_move_players_per_tick`),
/// each bringing its client along: a reconnect and a first full snapshot on the target. In one
/// batch, 150 crowd clients were redirected in the same tick and their handoff gap p99 went from
/// 54 ms to 279 ms (`.ci/crowd.sh`).
#[test]
fn a_crowded_cell_redirects_its_players_a_few_a_tick() {
    let mut world = WorldConfig::default();
    world.npc.count = 0;
    world.balancer.enabled = false;
    world.cluster.cell_move_batch = 200;
    world.cluster.cell_move_players_per_tick = 4;
    let mut c = LocalCluster::new(world, 2, &fates_game()).expect("two shards");
    c.step();
    let first = log_in(&mut c, 0, 1, "p0");
    let e = entity(&mut c, 0, first).expect("on shard 0");
    let at = c.shards[0].world.get::<Position>(e).expect("placed").0;
    let cell = c.map.leaf_at([at.x, at.z]);
    let m = mid(&c.map.grid().rect(cell));
    let mut ids = vec![first];
    for k in 1..18u64 {
        ids.push(log_in(&mut c, 0, 1 + k, &format!("p{k}")));
    }
    // Everyone stands in the same cell, a metre apart.
    for (k, id) in ids.iter().enumerate() {
        let e = entity(&mut c, 0, *id).expect("on shard 0");
        let p = Vec3::new(m[0] + k as f32, 0.0, m[1]);
        c.shards[0].world.get_mut::<Position>(e).expect("placed").0 = p;
    }
    c.step();
    c.move_cell(cell, ShardId(1)).expect("the move starts");
    let mut per_tick = Vec::new();
    for _ in 0..200 {
        let out = c.step();
        let redirects = out[0]
            .iter()
            .filter(|cmd| {
                matches!(cmd, NetCommand::Control { bytes, .. }
                    if matches!(codec::decode_server_control(bytes), Ok(ServerControl::Redirect(_))))
            })
            .count();
        per_tick.push(redirects);
        if c.map.owner_of(cell) == Some(ShardId(1)) {
            break;
        }
    }
    assert_eq!(c.map.owner_of(cell), Some(ShardId(1)), "the cell moved");
    assert_eq!(
        per_tick.iter().sum::<usize>(),
        ids.len(),
        "every player was redirected once: {per_tick:?}"
    );
    assert!(
        per_tick.iter().all(|&n| n <= 4),
        "at most 4 redirects a tick: {per_tick:?}"
    );
    for id in &ids {
        assert!(owned_on(&mut c, 1, *id), "{id} is shard 1's now");
    }
}

/// A player whose avatar is offered to another shard is told so (`ServerControl::Prepare`, the
/// shard and its client address) before the handoff settles and its `Redirect` comes: its
/// client can open that connection meanwhile, and the redirect only needs its `Hello`.
#[test]
fn a_player_is_told_where_it_may_go_ticks_before_its_redirect() {
    let mut world = WorldConfig::default();
    world.npc.count = 0;
    world.balancer.enabled = false;
    let mut c = LocalCluster::new(world, 2, &fates_game()).expect("two shards");
    c.step();
    let ids: Vec<NetId> = (1..=3u64)
        .map(|k| log_in(&mut c, 0, k, &format!("p{k}")))
        .collect();
    let e = entity(&mut c, 0, ids[0]).expect("on shard 0");
    let at = c.shards[0].world.get::<Position>(e).expect("placed").0;
    let cell = c.map.leaf_at([at.x, at.z]);
    let m = mid(&c.map.grid().rect(cell));
    for (k, id) in ids.iter().enumerate() {
        let e = entity(&mut c, 0, *id).expect("on shard 0");
        c.shards[0].world.get_mut::<Position>(e).expect("placed").0 =
            Vec3::new(m[0] + k as f32, 0.0, m[1]);
    }
    c.step();
    c.move_cell(cell, ShardId(1)).expect("the move starts");
    // Per client (conn 1..=3 on shard 0): (tick, what, shard, addr) of every Prepare and Redirect.
    let mut told: BTreeMap<u64, Vec<(usize, &str, ShardId, String)>> = BTreeMap::new();
    for tick in 0..200 {
        let out = c.step();
        for cmd in &out[0] {
            let NetCommand::Control { conn, bytes } = cmd else {
                continue;
            };
            let seen = match codec::decode_server_control(bytes) {
                Ok(ServerControl::Prepare(p)) => (tick, "prepare", p.shard, p.addr),
                Ok(ServerControl::Redirect(r)) => (tick, "redirect", r.shard, r.addr),
                _ => continue,
            };
            told.entry(conn.0).or_default().push(seen);
        }
        if c.map.owner_of(cell) == Some(ShardId(1)) {
            break;
        }
    }
    assert_eq!(c.map.owner_of(cell), Some(ShardId(1)), "the cell moved");
    assert_eq!(told.len(), 3, "every player was told: {told:?}");
    for (conn, seen) in &told {
        let [
            (p_tick, "prepare", p_shard, p_addr),
            (r_tick, "redirect", r_shard, r_addr),
        ] = seen.as_slice()
        else {
            panic!("conn {conn}: one Prepare, then one Redirect: {seen:?}");
        };
        assert_eq!(
            (p_shard, p_addr),
            (r_shard, r_addr),
            "conn {conn}: prepared for where it is sent"
        );
        assert_eq!(*r_shard, ShardId(1));
        assert!(
            p_tick < r_tick,
            "conn {conn}: told a tick or more ahead of the redirect: {seen:?}"
        );
    }
}

/// A client that a cell move redirects, and that quits before it reaches its new shard: its
/// avatar there goes after `REDIRECT_WAIT_MS`, and the player directory forgets it too. The
/// old shard never reported the departure, so 13-16 players of every 600-bot crowd run stayed
/// in the directory for good after the bots left, each counting against its old shard's seats
/// (and, with `duplicate = "refuse"`, keeping the account out).
#[test]
fn a_client_that_quits_during_its_redirect_leaves_the_player_directory() {
    let mut c = quiet_cluster(200);
    c.step();
    let avatar = log_in(&mut c, 0, 1, "ann");
    for _ in 0..30 {
        c.step();
    }
    assert_eq!(
        c.master.player("ann"),
        Some(ShardId(0)),
        "ann plays on shard 0"
    );
    let e0 = entity(&mut c, 0, avatar).expect("the avatar is on shard 0");
    let spawn = c.shards[0].world.get::<Position>(e0).expect("placed").0;
    let cell = c.map.leaf_at([spawn.x, spawn.z]);
    c.move_cell(cell, ShardId(1)).expect("the move starts");
    let redirected = (0..300).any(|_| {
        c.step().into_iter().enumerate().any(|(i, cmds)| {
            cmds.into_iter().any(|cmd| {
                matches!(cmd, NetCommand::Control { conn: ConnId(1), ref bytes }
                    if i == 0 && matches!(codec::decode_server_control(bytes), Ok(ServerControl::Redirect(_))))
            })
        })
    });
    assert!(redirected, "the move redirects ann's client to shard 1");
    c.shards[0].push_event(NetEvent::Disconnected {
        conn: ConnId(1),
        reason: "quit".into(),
    });
    let tick_ms = 1_000 / u64::from(WorldConfig::default().simulation.tick_hz);
    for _ in 0..zonescaler_shared::limits::REDIRECT_WAIT_MS / tick_ms + 60 {
        c.step();
    }
    for i in 0..2 {
        assert!(
            entity(&mut c, i, avatar).is_none(),
            "the avatar whose client never came is gone (shard {i})"
        );
    }
    assert_eq!(
        c.master.player("ann"),
        None,
        "the directory forgot the player who quit"
    );
}

#[test]
fn commands_sent_to_either_shard_mid_move_are_delivered_once_by_the_owner() {
    let mut c = quiet_cluster(1);
    c.step();
    let (cell, r, to_1, _) = border_leaf(&c);
    let half = (r.max[0] - r.min[0]) / 2.0;
    // Targets within shard 1's interest of the border, so shard 1 knows them (as proxies)
    // before it owns them; more entities deep in the cell make the move last.
    let targets: Vec<NetId> = (0..6)
        .map(|k| {
            let at = from_mid(&r, to_1, half - 8.0, k as f32 * 5.0 - 15.0);
            spawn_walker(&mut c, at, at)
        })
        .collect();
    for k in 0..10 {
        let at = from_mid(&r, to_1, -20.0, k as f32 * 3.0);
        spawn_walker(&mut c, at, at);
    }
    for _ in 0..3 {
        c.step();
    }
    let count = holders(&mut c).len();
    for &id in &targets {
        let e = entity(&mut c, 1, id).expect("shard 1 mirrors the border entities");
        assert!(c.shards[1].world.get::<Proxy>(e).is_some());
    }

    c.move_cell(cell, ShardId(1)).expect("the move starts");
    // Every tick of the move, each shard pokes each target it knows: (tag → shard, target, how
    // the sender held it).
    let mut sent: BTreeMap<u32, (usize, NetId, &'static str)> = BTreeMap::new();
    let mut flipped_at = None;
    for tick in 0..600 {
        if flipped_at.is_none() {
            for i in 0..2 {
                for &id in &targets {
                    let Some(e) = entity(&mut c, i, id) else {
                        continue;
                    };
                    let w = &c.shards[i].world;
                    let held = if w.get::<Owned>(e).is_some() {
                        "owned"
                    } else if w.get::<InTransit>(e).is_some() {
                        "in transit"
                    } else {
                        "proxy"
                    };
                    let tag = sent.len() as u32;
                    c.shards[i]
                        .world
                        .resource_mut::<GameCommands>()
                        .send(id, Poke(tag));
                    sent.insert(tag, (i, id, held));
                }
            }
        }
        c.step();
        check(&mut c, count, &targets, &format!("tick {tick}"));
        if flipped_at.is_none() && c.map.owner_of(cell) == Some(ShardId(1)) {
            flipped_at = Some(tick);
        }
        if flipped_at.is_some_and(|f| tick >= f + 10) {
            break;
        }
    }
    assert!(flipped_at.is_some(), "the cell moved");
    let mut delivered: BTreeMap<u32, Vec<(usize, NetId, bool)>> = BTreeMap::new();
    for i in 0..2 {
        for &(id, tag, owned) in &c.shards[i].world.resource::<Pokes>().0 {
            delivered.entry(tag).or_default().push((i, id, owned));
        }
    }
    for (tag, (from, id, held)) in &sent {
        let got = delivered.get(tag).map_or(&[][..], Vec::as_slice);
        assert_eq!(
            got.len(),
            1,
            "poke {tag} to {id}, sent on shard {from} which held it {held}, is delivered \
             exactly once: {got:?}"
        );
        let (on, to, owned) = got[0];
        assert!(
            to == *id && owned,
            "poke {tag} reached {to} on shard {on}, owned there: {owned}"
        );
    }
    assert_eq!(
        delivered.len(),
        sent.len(),
        "nothing delivered that was not sent"
    );
    for i in 0..2 {
        let w = &c.shards[i].world;
        let dropped = w.resource::<CommandInbox>().dropped + w.resource::<GameCommands>().dropped;
        assert_eq!(dropped, 0, "shard {i} dropped no command");
    }
    // The paths the move opens were all taken: a poke from the not-yet-owner, and pokes to an
    // entity already frozen or handed away on the old owner.
    let took = |shard: usize, held: &str| {
        sent.values()
            .any(|(from, _, h)| *from == shard && *h == held)
    };
    assert!(took(1, "proxy"), "shard 1 poked what it did not own yet");
    assert!(took(0, "owned"), "shard 0 poked what it still owned");
    assert!(
        took(0, "in transit"),
        "shard 0 poked what it was handing over"
    );
    assert!(took(0, "proxy"), "shard 0 poked what it had handed over");
    println!(
        "{} pokes over a move that flipped at tick {flipped_at:?}",
        sent.len()
    );
}

#[test]
fn an_entity_walking_into_a_moving_cell_goes_with_it_and_settles_on_the_new_owner() {
    let mut c = quiet_cluster(1);
    c.step();
    let (cell, r, _, to_0) = border_leaf(&c);
    let half = (r.max[0] - r.min[0]) / 2.0;
    // Entities parked in the cell make the move (one a tick) last a while.
    for k in 0..24 {
        let at = from_mid(&r, to_0, -10.0, k as f32 * 2.0 - 24.0);
        spawn_walker(&mut c, at, at);
    }
    // Walkers in shard 0's neighbouring leaf, entering the cell at different ticks of the move
    // (8 m/s: about 0.27 m a tick): (metres outside, metres in where they stop). The first stops
    // within the handoff margin of shard 0's leaf, where no ordinary handoff would take it
    // after the flip (hysteresis): only the move carries it over.
    let margin = c.shards[0]
        .world
        .resource::<Config>()
        .0
        .cluster
        .handoff_margin_m;
    assert!(
        margin > 1.0,
        "the first walker stops within the handoff margin"
    );
    let walkers: Vec<NetId> = [(0.5f32, 1.0f32), (2.0, half), (3.5, half)]
        .iter()
        .enumerate()
        .map(|(k, (outside, inside))| {
            let at = from_mid(&r, to_0, half + outside, k as f32 * 10.0);
            let to = from_mid(&r, to_0, half - inside, k as f32 * 10.0);
            assert!(!in_cell(&c, cell, [at.x, at.z]), "it starts outside");
            spawn_walker(&mut c, at, to)
        })
        .collect();
    c.step();
    let count = holders(&mut c).len();

    c.move_cell(cell, ShardId(1)).expect("the move starts");
    let mut entered: BTreeMap<NetId, usize> = BTreeMap::new();
    let mut flipped_at = None;
    let mut settled_at = None;
    for tick in 0..600 {
        c.step();
        check(&mut c, count, &walkers, &format!("tick {tick}"));
        let now = holders(&mut c);
        for id in &walkers {
            let (_, p) = now[id];
            if in_cell(&c, cell, p) && flipped_at.is_none() {
                entered.entry(*id).or_insert(tick);
            }
        }
        if flipped_at.is_none() && c.map.owner_of(cell) == Some(ShardId(1)) {
            flipped_at = Some(tick);
        }
        let on_1 = walkers.iter().all(|id| owned_on(&mut c, 1, *id));
        if flipped_at.is_some() && on_1 {
            settled_at = Some(tick);
            break;
        }
    }
    let flipped_at = flipped_at.expect("the cell moved");
    println!("walkers entered at {entered:?}, flipped at {flipped_at}, settled at {settled_at:?}");
    let settled_at = settled_at.expect("every walker ends up owned by shard 1");
    assert_eq!(
        entered.len(),
        walkers.len(),
        "every walker entered the cell while it was moving: {entered:?}"
    );
    assert!(
        settled_at <= flipped_at + 30,
        "within a second of the flip (settled at tick {settled_at}, flipped at {flipped_at})"
    );
    for _ in 0..30 {
        c.step();
        check(&mut c, count, &walkers, "after the move");
    }
    for id in &walkers {
        assert!(owned_on(&mut c, 1, *id), "{id} stays on shard 1");
    }
}
