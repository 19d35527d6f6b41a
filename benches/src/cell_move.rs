//! One cell move under load, measured tick by tick: the fixture of the `cell_move` binary.
//!
//! A two-shard [`ClusterScene`] with the real master. One leaf of shard 0 on the border with
//! shard 1 holds `entities` NPCs (placed there at start, wandering) and a crowd of `clients`
//! logged-in bots ([`Scenario::Crowd`] around the cell's centre, the real sans-IO client: its
//! snapshots are decoded and acked, and it follows its avatar's `Redirect` to the other shard
//! like the simulator's clients). The rest of the world holds `background` NPCs, so both shards
//! tick with a load of their own. After a warm-up and `steady` measured ticks, the master moves
//! the cell to shard 1; the move lasts until both shards hold the new map, then `after` ticks
//! more are measured. Every tick records each shard's `tick()` wall time and thread CPU time.
//!
//! A run fails (an error, not a panic) if the move is aborted, does not finish, or if an entity
//! is lost, duplicated or left on the source deeper in the cell than the handoff margin, or a
//! client stops playing.

use crate::cluster::{ClusterScene, TickTime, placed_master};
use glam::Vec3;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use zonescaler_bots::{BotConfig, Hotspot, Scenario};
use zonescaler_server::core::components::{InTransit, Networked, Owned, Position};
use zonescaler_server::core::resources::{HandoffStats, IdAllocator};
use zonescaler_server::core::space::Space;
use zonescaler_server::demo::npc::{WANDER_RADIUS_M, npc};
use zonescaler_server::prelude::Has;
use zonescaler_shared::cellmap::{CellMap, Rect};
use zonescaler_shared::config::WorldConfig;
use zonescaler_shared::rng::Rng;
use zonescaler_shared::{CellId, NetId, ShardId};

/// The shard that owns the moving cell, and the one it moves to.
pub const SOURCE: ShardId = ShardId(0);
pub const TARGET: ShardId = ShardId(1);

/// Salt of the placement of the cell's NPCs, apart from the shards' own draws.
const NPC_RNG_SALT: u64 = 0x4345_4c4c_4e50_4300;

/// What one run sets up and how long it measures.
#[derive(Clone, Debug)]
pub struct MoveConfig {
    /// NPCs placed in the moving cell.
    pub entities: usize,
    /// Bots crowding the moving cell.
    pub clients: usize,
    /// NPCs of the whole world besides (`npc.count`, placed by each shard in its own cells).
    pub background: usize,
    /// `cluster.cell_move_batch`: entities the source offers per tick.
    pub batch: u32,
    /// Radius (metres) of the bots' crowd around the cell's centre.
    pub crowd_radius_m: f32,
    /// Unmeasured ticks first (logins, first full snapshots).
    pub warmup: u64,
    /// Measured ticks before the move, and after it.
    pub steady: u64,
    pub after: u64,
    /// Seed of the world, the NPC placement and the bots.
    pub seed: u64,
}

impl MoveConfig {
    /// The defaults of the `cell_move` binary: 2,000 entities and 100 clients in the cell.
    pub fn new(batch: u32) -> Self {
        Self {
            entities: 2_000,
            clients: 100,
            background: 1_000,
            batch,
            crowd_radius_m: 60.0,
            warmup: 90,
            steady: 300,
            after: 300,
            seed: 1,
        }
    }

    /// The world of the run: the default one with this run's NPCs, seed and batch.
    pub fn world(&self) -> WorldConfig {
        let mut w = WorldConfig::default();
        w.npc.count = self.background;
        w.simulation.seed = self.seed;
        w.cluster.cell_move_batch = self.batch;
        w.balancer.enabled = false;
        w
    }
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum MoveFailed {
    #[error("setting up the scene: {0}")]
    Setup(String),
    #[error("the master aborted the move of cell {cell} (move {id}) after {ticks} ticks")]
    Aborted { id: u64, cell: CellId, ticks: u64 },
    #[error("the move of cell {cell} did not finish in {ticks} ticks")]
    Unfinished { cell: CellId, ticks: u64 },
    #[error("entity {id:?} is simulated by shards {a} and {b} ({phase})")]
    Duplicated {
        id: NetId,
        a: usize,
        b: usize,
        phase: &'static str,
    },
    #[error("{before} entities before the move, {now} {phase}: entities lost or made up")]
    Count {
        before: usize,
        now: usize,
        phase: &'static str,
    },
    #[error(
        "{n} entities of the moved cell are still on the source after the move, deeper in it than the handoff margin (the first: {first:?} at {at:?})"
    )]
    LeftBehind {
        n: usize,
        first: NetId,
        at: [f32; 2],
    },
    #[error("{playing} of {clients} clients are playing after the move")]
    ClientsLost { playing: usize, clients: usize },
}

/// One run: the move's facts and every measured tick of the two shards.
#[derive(Clone, Debug)]
pub struct MoveRun {
    pub batch: u32,
    pub cell: CellId,
    /// Entities the source owned in the cell when the move was ordered (NPCs and avatars).
    pub in_cell: usize,
    /// Of those, how many the target owns at the end (the rest walked out of the cell and were
    /// handed back by the ordinary border handoff).
    pub arrived: usize,
    /// Handoffs the source completed during the move (the cell's, and any border traffic).
    pub handoffs: u64,
    /// Ticks from the order to the master's flip of the map, and to both shards holding it.
    pub ticks_to_flip: u64,
    pub ticks_to_settle: u64,
    pub tick_ms: f64,
    /// Wall time the bench took for the move's ticks (shards, bots and checks, one thread).
    pub bench_wall: Duration,
    /// Distinct entities of the world before the move and at the end.
    pub entities_before: usize,
    pub entities_after: usize,
    /// Bots that followed a redirect during the move, and bots on the target at the end.
    pub redirects: u64,
    pub clients_on_target: usize,
    /// The shards' state hashes at the end: equal for two runs of one seed (the scene is
    /// deterministic; only the times differ).
    pub end_hash: u64,
    /// Per phase, per tick: `[source, target]`.
    pub steady: Vec<[TickTime; 2]>,
    pub during: Vec<[TickTime; 2]>,
    pub after: Vec<[TickTime; 2]>,
}

/// The leaf of `SOURCE` on the border with `TARGET` nearest the world's centre.
pub fn border_cell(map: &CellMap) -> Option<CellId> {
    let grid = *map.grid();
    let world = grid.world();
    let centre = [
        (world.min[0] + world.max[0]) / 2.0,
        (world.min[1] + world.max[1]) / 2.0,
    ];
    let borders_target = |r: Rect| {
        let size = r.max[0] - r.min[0];
        let mid = [(r.min[0] + r.max[0]) / 2.0, (r.min[1] + r.max[1]) / 2.0];
        [[size, 0.0], [-size, 0.0], [0.0, size], [0.0, -size]]
            .iter()
            .any(|d| {
                let p = [mid[0] + d[0], mid[1] + d[1]];
                world.contains(p) && map.owner_at(p) == Some(TARGET)
            })
    };
    let dist = |r: Rect| {
        let mid = [(r.min[0] + r.max[0]) / 2.0, (r.min[1] + r.max[1]) / 2.0];
        (mid[0] - centre[0]).powi(2) + (mid[1] - centre[1]).powi(2)
    };
    map.leaves()
        .iter()
        .filter(|(cell, s)| **s == SOURCE && borders_target(grid.rect(**cell)))
        .min_by(|a, b| dist(grid.rect(*a.0)).total_cmp(&dist(grid.rect(*b.0))))
        .map(|(cell, _)| *cell)
}

/// `n` wandering NPCs on `app`'s shard, uniformly in `rect` less a margin of one wander radius,
/// so they stay in the cell for the few tens of seconds of a run (2 m/s, targets ≤ 40 m away).
/// The demo game's own NPCs ([`npc`]).
fn spawn_npcs_in(scene: &mut ClusterScene, rect: Rect, n: usize, cfg: &MoveConfig) {
    let speed = cfg.world().npc.speed_mps;
    let mut rng = Rng::new(cfg.seed ^ NPC_RNG_SALT);
    let m = WANDER_RADIUS_M;
    let world = &mut scene.shard_mut(usize::from(SOURCE.0)).world;
    for _ in 0..n {
        let p = Vec3::new(
            rng.range_f32(rect.min[0] + m, rect.max[0] - m),
            0.0,
            rng.range_f32(rect.min[1] + m, rect.max[1] - m),
        );
        let id = world.resource_mut::<IdAllocator>().allocate();
        world.spawn(npc(id, p, speed));
    }
}

/// Who simulates each entity (or holds it frozen between a handoff's request and its ack) and
/// where it stands; an error if two shards simulate one.
fn holders(
    scene: &mut ClusterScene,
    phase: &'static str,
) -> Result<BTreeMap<NetId, (usize, [f32; 2])>, MoveFailed> {
    let mut owned = BTreeMap::new();
    let mut frozen = BTreeMap::new();
    for i in 0..scene.shards() {
        let world = &mut scene.shard_mut(i).world;
        let mut q = world.query::<(&Networked, &Position, Has<Owned>, Has<InTransit>)>();
        for (n, p, is_owned, in_transit) in q.iter(world) {
            let at = (i, [p.0.x, p.0.z]);
            if is_owned {
                if let Some((a, _)) = owned.insert(n.0, at) {
                    return Err(MoveFailed::Duplicated {
                        id: n.0,
                        a,
                        b: i,
                        phase,
                    });
                }
            } else if in_transit {
                frozen.insert(n.0, at);
            }
        }
    }
    for (id, at) in frozen {
        owned.entry(id).or_insert(at);
    }
    Ok(owned)
}

/// How far `p` is inside `rect` (metres to its nearest edge).
fn depth(rect: Rect, p: [f32; 2]) -> f32 {
    (p[0] - rect.min[0])
        .min(rect.max[0] - p[0])
        .min(p[1] - rect.min[1])
        .min(rect.max[1] - p[1])
}

fn check_count(
    scene: &mut ClusterScene,
    before: usize,
    phase: &'static str,
) -> Result<(), MoveFailed> {
    let now = holders(scene, phase)?.len();
    if now == before {
        Ok(())
    } else {
        Err(MoveFailed::Count { before, now, phase })
    }
}

fn ticks_of(scene: &ClusterScene) -> [TickTime; 2] {
    let t = scene.last_ticks();
    [t[usize::from(SOURCE.0)], t[usize::from(TARGET.0)]]
}

/// The map epoch shard `i` holds.
fn epoch_of(scene: &mut ClusterScene, i: usize) -> u64 {
    scene.shard_mut(i).world.resource::<Space>().map.epoch().0
}

/// The crowd bots of one run: every client around the centre of `rect`, standing still there.
fn crowd_bots(cfg: &MoveConfig, rect: Rect) -> Vec<BotConfig> {
    let centre = Vec3::new(
        (rect.min[0] + rect.max[0]) / 2.0,
        0.0,
        (rect.min[1] + rect.max[1]) / 2.0,
    );
    let hotspot = Hotspot {
        from: centre,
        to: centre,
        radius_m: cfg.crowd_radius_m,
        travel_us: 0,
    };
    (0..cfg.clients)
        .map(|i| {
            let mut b = BotConfig::new(
                format!("mover-{i}"),
                Scenario::Crowd,
                cfg.seed ^ ((i as u64) << 20),
            );
            b.hotspot = Some(hotspot);
            b
        })
        .collect()
}

/// `n` steps, each one's tick times.
fn step_timed(scene: &mut ClusterScene, n: u64) -> Vec<[TickTime; 2]> {
    (0..n)
        .map(|_| {
            scene.step();
            ticks_of(scene)
        })
        .collect()
}

/// Step move `id` of `cell` until the map flipped and every shard holds the new map: each
/// step's tick times and the steps the flip took. An error if it aborts, runs past `limit`
/// steps, or the entity count leaves `entities`.
fn step_until_settled(
    scene: &mut ClusterScene,
    id: u64,
    cell: CellId,
    limit: u64,
    entities: usize,
) -> Result<(Vec<[TickTime; 2]>, Option<u64>), MoveFailed> {
    let (done0, aborted0) = scene
        .master()
        .map_or((0, 0), |m| (m.moves_done, m.moves_aborted));
    let mut during = Vec::new();
    let mut ticks_to_flip = None;
    loop {
        scene.step();
        during.push(ticks_of(scene));
        let ticks = during.len() as u64;
        let master = scene
            .master()
            .ok_or(MoveFailed::Setup("no master".into()))?;
        if master.moves_aborted > aborted0 {
            return Err(MoveFailed::Aborted { id, cell, ticks });
        }
        let epoch = master.map().map_or(0, |m| m.epoch().0);
        if ticks_to_flip.is_none() && master.moves_done > done0 {
            ticks_to_flip = Some(ticks);
        }
        check_count(scene, entities, "during the move")?;
        if ticks_to_flip.is_some() && (0..scene.shards()).all(|i| epoch_of(scene, i) >= epoch) {
            return Ok((during, ticks_to_flip));
        }
        if ticks > limit {
            return Err(MoveFailed::Unfinished { cell, ticks });
        }
    }
}

/// Nothing of `cell` may be left on the source after the move, but for the hysteresis: an
/// entity of the source's other cells may stand up to `margin` m inside the moved cell and
/// stay with the source.
fn check_left_behind(
    end: &BTreeMap<NetId, (usize, [f32; 2])>,
    map: &CellMap,
    cell: CellId,
    margin: f32,
) -> Result<(), MoveFailed> {
    let rect = map.grid().rect(cell);
    let left: Vec<(NetId, [f32; 2])> = end
        .iter()
        .filter(|(_, (s, p))| {
            *s == usize::from(SOURCE.0) && map.leaf_at(*p) == cell && depth(rect, *p) > margin
        })
        .map(|(id, (_, p))| (*id, *p))
        .collect();
    match left.first() {
        Some(&(first, at)) => Err(MoveFailed::LeftBehind {
            n: left.len(),
            first,
            at,
        }),
        None => Ok(()),
    }
}

/// One run: set up, warm up, measure steady ticks, move the cell, measure after.
pub fn run(cfg: &MoveConfig) -> Result<MoveRun, MoveFailed> {
    let world = cfg.world();
    let master = placed_master(&world, 2).map_err(MoveFailed::Setup)?;
    let map = master
        .map()
        .cloned()
        .ok_or(MoveFailed::Setup("the master has placed no map".into()))?;
    let cell = border_cell(&map).ok_or(MoveFailed::Setup(
        "shard 0 has no leaf on the border with shard 1".into(),
    ))?;
    let rect = map.grid().rect(cell);
    let bots = crowd_bots(cfg, rect);
    let mut scene = ClusterScene::with_master(&world, master, &bots).map_err(MoveFailed::Setup)?;
    spawn_npcs_in(&mut scene, rect, cfg.entities, cfg);
    let tick_ms = 1e3 / f64::from(world.simulation.tick_hz);

    for _ in 0..cfg.warmup {
        scene.step();
    }
    let steady = step_timed(&mut scene, cfg.steady);

    let before = holders(&mut scene, "before the move")?;
    let in_cell: BTreeSet<NetId> = before
        .iter()
        .filter(|(_, (s, p))| *s == usize::from(SOURCE.0) && map.leaf_at(*p) == cell)
        .map(|(id, _)| *id)
        .collect();
    let stats = |scene: &mut ClusterScene| {
        scene
            .shard_mut(usize::from(SOURCE.0))
            .world
            .resource::<HandoffStats>()
            .out
    };
    let handoffs0 = stats(&mut scene);
    scene.reset_counters();
    let id = scene
        .move_cell(cell, TARGET)
        .map_err(|e| MoveFailed::Setup(format!("the move of cell {cell} did not start: {e}")))?;
    // The master gives up after `cell_move_timeout_ms`; a few ticks more for its word to land.
    let limit = world.cluster.cell_move_timeout_ms / tick_ms as u64 + 30;
    let t0 = Instant::now();
    let (during, ticks_to_flip) = step_until_settled(&mut scene, id, cell, limit, before.len())?;
    let bench_wall = t0.elapsed();
    let ticks_to_settle = during.len() as u64;
    let handoffs = stats(&mut scene) - handoffs0;
    let redirects = scene.bot_handoffs();

    let after = step_timed(&mut scene, cfg.after);
    let end = holders(&mut scene, "after the move")?;
    if end.len() != before.len() {
        return Err(MoveFailed::Count {
            before: before.len(),
            now: end.len(),
            phase: "after the move",
        });
    }
    check_left_behind(&end, &map, cell, world.cluster.handoff_margin_m)?;
    let arrived = in_cell
        .iter()
        .filter(|id| {
            end.get(id)
                .is_some_and(|(s, _)| *s == usize::from(TARGET.0))
        })
        .count();
    let playing = scene.bots_playing();
    if playing < cfg.clients {
        return Err(MoveFailed::ClientsLost {
            playing,
            clients: cfg.clients,
        });
    }
    let end_hash = (0..scene.shards()).fold(0u64, |h, i| {
        h.rotate_left(17) ^ scene.shard_mut(i).state_hash()
    });
    Ok(MoveRun {
        end_hash,
        batch: cfg.batch,
        cell,
        in_cell: in_cell.len(),
        arrived,
        handoffs,
        ticks_to_flip: ticks_to_flip.unwrap_or(ticks_to_settle),
        ticks_to_settle,
        tick_ms,
        bench_wall,
        entities_before: before.len(),
        entities_after: end.len(),
        redirects,
        clients_on_target: scene.bots_per_shard()[usize::from(TARGET.0)],
        steady,
        during,
        after,
    })
}

/// Runs of one seed and batch, tick by tick the least time of each (CPU and wall alike): the
/// scene is deterministic, so every run does the same work in the same tick and the least of
/// them is the run with the machine's noise (other processes, a hypervisor's steal, counted as
/// the thread's CPU time) mostly filtered out. `None` if the runs are not the same run (their
/// end states or the move's course differ), or there are none.
pub fn least_of(runs: &[MoveRun]) -> Option<MoveRun> {
    let (first, rest) = runs.split_first()?;
    let same = |r: &MoveRun| {
        r.end_hash == first.end_hash
            && r.batch == first.batch
            && r.ticks_to_flip == first.ticks_to_flip
            && r.ticks_to_settle == first.ticks_to_settle
            && r.in_cell == first.in_cell
            && r.arrived == first.arrived
            && r.handoffs == first.handoffs
            && r.redirects == first.redirects
            && r.steady.len() == first.steady.len()
            && r.after.len() == first.after.len()
    };
    if !rest.iter().all(same) {
        return None;
    }
    let least = |pick: fn(&MoveRun) -> &Vec<[TickTime; 2]>| -> Vec<[TickTime; 2]> {
        (0..pick(first).len())
            .map(|i| {
                [0, 1].map(|side| TickTime {
                    wall: runs
                        .iter()
                        .map(|r| pick(r)[i][side].wall)
                        .min()
                        .unwrap_or_default(),
                    cpu: runs
                        .iter()
                        .map(|r| pick(r)[i][side].cpu)
                        .min()
                        .unwrap_or_default(),
                })
            })
            .collect()
    };
    Some(MoveRun {
        bench_wall: runs.iter().map(|r| r.bench_wall).min().unwrap_or_default(),
        steady: least(|r| &r.steady),
        during: least(|r| &r.during),
        after: least(|r| &r.after),
        ..first.clone()
    })
}

/// The `q` quantile (0..=1) of `xs` by nearest rank (the smallest value with at least `q` of the
/// samples at or below it); NaN for no samples.
pub fn quantile(xs: &[f64], q: f64) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    // Less a hair, so 0.99 × 100 (98.99999… or 99.00000…1 in floating point) is rank 99.
    let rank = (q * v.len() as f64 - 1e-9).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

/// p50, p99 and max of one shard's ticks in one phase, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(ticks: &[[TickTime; 2]], shard: usize, cpu: bool) -> Self {
        let ms: Vec<f64> = ticks
            .iter()
            .map(|t| {
                let d = if cpu { t[shard].cpu } else { t[shard].wall };
                d.as_secs_f64() * 1e3
            })
            .collect();
        Self {
            p50: quantile(&ms, 0.5),
            p99: quantile(&ms, 0.99),
            max: quantile(&ms, 1.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bench's claims rest on a move that really happens under it: a small cell of NPCs
    /// and a few clients moves, every entity arrives on the target, the clients follow, nothing
    /// is lost. No timing is asserted.
    #[test]
    fn a_small_cell_moves_whole_with_its_clients() {
        let cfg = MoveConfig {
            entities: 200,
            clients: 10,
            background: 100,
            batch: 50,
            crowd_radius_m: 40.0,
            warmup: 30,
            steady: 10,
            after: 30,
            seed: 3,
        };
        let r = run(&cfg).expect("the move completes with nothing lost");
        assert!(
            r.in_cell >= 210,
            "the cell held its NPCs and the avatars: {}",
            r.in_cell
        );
        assert_eq!(
            r.arrived, r.in_cell,
            "every entity of the cell is on the target"
        );
        assert_eq!(r.entities_after, r.entities_before, "no entity lost");
        assert_eq!(
            r.entities_before, 310,
            "NPCs, cell NPCs and avatars, each once"
        );
        assert_eq!(r.clients_on_target, 10, "every client followed its avatar");
        assert!(
            r.redirects >= 10,
            "each client was redirected: {}",
            r.redirects
        );
        assert!(
            r.ticks_to_flip >= 210 / 50,
            "paced at 50 a tick: {} ticks",
            r.ticks_to_flip
        );
        assert!(r.ticks_to_settle > r.ticks_to_flip);
        assert_eq!(r.steady.len(), 10);
        assert_eq!(r.during.len() as u64, r.ticks_to_settle);
        assert_eq!(r.after.len(), 30);
    }

    /// The noise filter: two runs of one seed are the same run, tick by tick the least of them.
    #[test]
    fn the_least_of_two_runs_of_one_seed_is_their_tick_by_tick_minimum() {
        let cfg = MoveConfig {
            entities: 60,
            clients: 2,
            background: 20,
            batch: 40,
            crowd_radius_m: 30.0,
            warmup: 10,
            steady: 5,
            after: 5,
            seed: 9,
        };
        let a = run(&cfg).expect("the move completes");
        let b = run(&cfg).expect("the move completes");
        assert_eq!(
            a.end_hash, b.end_hash,
            "one seed, one run: the scene is deterministic"
        );
        let l = least_of(&[a.clone(), b.clone()]).expect("the same run twice");
        for ((l, a), b) in l.during.iter().zip(&a.during).zip(&b.during) {
            for ((l, a), b) in l.iter().zip(a).zip(b) {
                assert_eq!(l.cpu, a.cpu.min(b.cpu));
                assert_eq!(l.wall, a.wall.min(b.wall));
            }
        }
        let other = run(&MoveConfig { seed: 10, ..cfg }).expect("the move completes");
        assert!(
            least_of(&[a, other]).is_none(),
            "two seeds are not one run to filter"
        );
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        let xs: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&xs, 0.5), 50.0);
        assert_eq!(quantile(&xs, 0.99), 99.0);
        assert_eq!(quantile(&xs, 1.0), 100.0);
        assert_eq!(quantile(&[3.0], 0.99), 3.0);
        assert!(quantile(&[], 0.5).is_nan());
    }
}
