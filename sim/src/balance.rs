//! The balancer at scale (`zonescaler-sim --balancer`): the production [`Balancer`] driven by a
//! synthetic load model of up to millions of players and thousands of shards, one round per
//! simulated second.
//!
//! **Load model.** Players are points: most spread evenly over the world, the rest in hot zones
//! (Gaussian crowds) and one "festival" disc so dense that its base cell alone is twice what any
//! shard may carry (it must be split to be carried at all). A cell costs `cost_per_player` of a
//! tick per player in it, a shard `SHARD_OVERHEAD` more; `cost_per_player` is set so the mean
//! shard runs at `MEAN_LOAD` per unit of weight, whatever the scale. Memory grows with players.
//! Every report is exact (no noise), so a round's outcome is a function of the seed only.
//!
//! **Run.** `converge_rounds` with still zones (from the weight-proportional first placement),
//! then `dynamic_rounds` in which the zones travel and shards join, drain and die, then
//! `settle_rounds` with still zones again. Max/mean load per weight is measured at the end of
//! the first and last phases. Plans are applied at once (the master would apply a move when the
//! cell-move protocol completes).
//!
//! **Shard count.** `limits::SHARDS_MAX` (1,024) bounds a real cluster's membership (every shard
//! links every other, and the master pushes every member to every shard); the policy has no such
//! bound, so this simulation runs 2,000 virtual shards without raising the limit.
//!
//! The time of a round is the one thing not derived from the seed: the caller passes a clock
//! (the binary reads `std::time::Instant`; tests pass none), so the balancer and this model stay
//! clock-free.

use serde::Serialize;
use std::collections::BTreeMap;
use zonescaler_server::cluster::balancer::{Action, Balancer, CellInput, Note, Plan, ShardInput};
use zonescaler_shared::cellmap::{CellGrid, CellMap, assign_contiguous};
use zonescaler_shared::config::WorldConfig;
use zonescaler_shared::rng::Rng;
use zonescaler_shared::{CellId, ShardId, limits};

/// Mean tick CPU share per unit of weight the model aims at: a weight-2 shard at the mean must
/// stay under the 0.8 threshold too (at 0.38 the weight-2 shards sat at the cap and could take
/// nothing, which is right, but it measures the cap rather than the balance).
const MEAN_LOAD: f64 = 0.3;
/// Tick CPU share a shard spends outside any cell.
const SHARD_OVERHEAD: f64 = 0.02;
/// Base cells per shard in the generated world.
const CELLS_PER_SHARD: f64 = 32.0;
const BASE_CELL_M: f32 = 256.0;
/// Interest radius of the generated world: minimum cells of 64 m, two splits below a base cell.
const INTEREST_RADIUS_M: f32 = 32.0;
/// Share of the players in hot zones (the rest are spread evenly, bar the festival).
const HOT_SHARE: f64 = 0.4;
/// Spread (σ) of a hot zone, metres.
const ZONE_SIGMA_M: f32 = 1_500.0;
/// Radius of the festival disc, metres: it fits inside one base cell.
const FESTIVAL_RADIUS_M: f32 = 100.0;
/// The festival's base cell costs this many times the tick CPU threshold.
const FESTIVAL_OVER: f64 = 2.0;
/// Max/mean load per weight that counts as converged.
pub const CONVERGED_MAX_OVER_MEAN: f64 = 1.15;

/// One run's shape.
#[derive(Clone, Debug)]
pub struct ScaleConfig {
    pub seed: u64,
    pub players: usize,
    pub shards: usize,
    pub converge_rounds: u32,
    pub dynamic_rounds: u32,
    pub settle_rounds: u32,
    /// Simulated time between rounds.
    pub round_ms: u64,
}

impl ScaleConfig {
    pub fn new(seed: u64, players: usize, shards: usize) -> Self {
        Self {
            seed,
            players,
            shards,
            converge_rounds: 240,
            dynamic_rounds: 120,
            settle_rounds: 240,
            round_ms: 1_000,
        }
    }

    /// A square world with about [`CELLS_PER_SHARD`] base cells per shard, within the world
    /// extent limit, and the default `[balancer]` section.
    pub fn world(&self) -> WorldConfig {
        let max_side = (2.0 * limits::WORLD_EXTENT_M_MAX / BASE_CELL_M) as usize;
        let side = ((CELLS_PER_SHARD * self.shards.max(1) as f64).sqrt().ceil() as usize)
            .clamp(2, max_side);
        let half = side as f32 * BASE_CELL_M / 2.0;
        let mut world = WorldConfig::default();
        world.world.name = "balancer-scale".into();
        world.world.min_x = -half;
        world.world.min_z = -half;
        world.world.max_x = half;
        world.world.max_z = half;
        world.world.base_cell_size_m = BASE_CELL_M;
        world.interest.interest_radius_m = INTEREST_RADIUS_M;
        world
    }
}

/// Distribution of a per-round figure.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Spread {
    pub median: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        Self {
            median: at(0.5),
            p99: at(0.99),
            max: v[v.len() - 1],
            mean: v.iter().sum::<f64>() / v.len() as f64,
        }
    }
}

/// What a run measured. Everything but `round_ms` is a function of the seed.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ScaleReport {
    pub seed: u64,
    pub players: usize,
    pub shards: usize,
    pub base_cells: usize,
    pub rounds: u32,
    /// Wall time of `Balancer::plan`, per round (from the caller's clock; 0 without one).
    pub round_ms: Spread,
    /// Max/mean load per weight at the end of the first phase, and the first round it was under
    /// [`CONVERGED_MAX_OVER_MEAN`].
    pub converged_max_over_mean: f64,
    pub converged_at_round: Option<u32>,
    /// Max/mean at the end of the run, after the moves, joins, drains and deaths settled.
    pub settled_max_over_mean: f64,
    pub settled_at_round: Option<u32>,
    /// Highest max/mean while the zones travelled.
    pub dynamic_max_over_mean: f64,
    pub cells_moved: Spread,
    pub players_migrated: Spread,
    pub cells_moved_total: u64,
    pub players_migrated_total: u64,
    pub splits: u64,
    pub merges: u64,
    pub joined: usize,
    pub drained: usize,
    pub died: usize,
    pub leaves_at_end: usize,
    /// The festival cell's base cell: its load, and the leaves it ended up cut into.
    pub festival_load: f64,
    pub festival_leaves: usize,
    /// Rounds that reported every shard overloaded, a cell unable to split, no receiver.
    pub notes: BTreeMap<String, u64>,
    /// A digest of the final map and every round's actions: equal digests, equal runs.
    pub digest: u64,
}

/// One virtual shard.
#[derive(Clone, Copy, Debug)]
struct Shard {
    input: ShardInput,
    /// Gone from the inputs (drained or dead, and empty).
    gone: bool,
}

/// The players, counted per cell at every level down to the finest the balancer may split to.
struct Players {
    grid: CellGrid,
    finest: u8,
    /// Still players (spread and festival), counted once at the finest level.
    still: Vec<u32>,
    /// Zone players: their zone and offset from its centre.
    zone_of: Vec<u16>,
    offset: Vec<[f32; 2]>,
    centres: Vec<[f32; 2]>,
    velocity: Vec<[f32; 2]>,
    /// counts[level][z * cols_at_level + x].
    counts: Vec<Vec<u32>>,
    festival: CellId,
}

/// The scale simulation.
pub struct ScaleSim {
    cfg: ScaleConfig,
    balancer: Balancer,
    map: CellMap,
    shards: Vec<Shard>,
    players: Players,
    cost_per_player: f64,
    rng: Rng,
    now_ms: u64,
    digest: u64,
}

/// A Gaussian sample (Box–Muller) with spread `sigma`.
fn gaussian(rng: &mut Rng, sigma: f32) -> f32 {
    let u1 = rng.next_f32().max(1e-7);
    let u2 = rng.next_f32();
    sigma * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

impl Players {
    fn new(grid: CellGrid, finest: u8, cfg: &ScaleConfig, per_player: f64, rng: &mut Rng) -> Self {
        let w = grid.world();
        let fine = Self::cols_at(&grid, finest);
        let mut players = Self {
            grid,
            finest,
            still: vec![0; fine.0 * fine.1],
            zone_of: Vec::new(),
            offset: Vec::new(),
            centres: Vec::new(),
            velocity: Vec::new(),
            counts: (0..=finest)
                .map(|l| {
                    let (c, r) = Self::cols_at(&grid, l);
                    vec![0; c * r]
                })
                .collect(),
            festival: CellId::base(0, 0),
        };
        // The festival: a disc in the middle of one base cell, dense enough to overload any shard.
        let (cols, rows) = (grid.cols().max(3), grid.rows().max(3));
        let fx = 1 + rng.below(u64::from(cols - 2)) as u32;
        let fz = 1 + rng.below(u64::from(rows - 2)) as u32;
        players.festival = grid.base_cell_at(grid.rect(CellId::base(fx, fz)).min);
        let r = grid.rect(players.festival);
        let centre = [0.5 * (r.min[0] + r.max[0]), 0.5 * (r.min[1] + r.max[1])];
        let festival = ((FESTIVAL_OVER * 0.8 / per_player) as usize).min(cfg.players / 4);
        let zoned = (cfg.players as f64 * HOT_SHARE) as usize;
        let spread = cfg.players.saturating_sub(festival + zoned);
        for _ in 0..festival {
            let (a, d) = (
                rng.range_f32(0.0, std::f32::consts::TAU),
                rng.next_f32().sqrt(),
            );
            let p = [
                centre[0] + FESTIVAL_RADIUS_M * d * a.cos(),
                centre[1] + FESTIVAL_RADIUS_M * d * a.sin(),
            ];
            let i = players.fine_index(p);
            players.still[i] += 1;
        }
        for _ in 0..spread {
            let p = [
                rng.range_f32(w.min[0], w.max[0]),
                rng.range_f32(w.min[1], w.max[1]),
            ];
            let i = players.fine_index(p);
            players.still[i] += 1;
        }
        players.place_zones(cfg, zoned, rng);
        players.recount();
        players
    }

    /// `cfg.shards / 100` (at least 2) zones at random places, heading in random directions at
    /// 10–30 m/s, sharing `zoned` players.
    fn place_zones(&mut self, cfg: &ScaleConfig, zoned: usize, rng: &mut Rng) {
        let w = self.grid.world();
        let zones = (cfg.shards / 100).max(2);
        for _ in 0..zones {
            self.centres.push([
                rng.range_f32(w.min[0], w.max[0]),
                rng.range_f32(w.min[1], w.max[1]),
            ]);
            let (a, v) = (
                rng.range_f32(0.0, std::f32::consts::TAU),
                rng.range_f32(10.0, 30.0),
            );
            self.velocity.push([v * a.cos(), v * a.sin()]);
        }
        for i in 0..zoned {
            self.zone_of.push((i % zones) as u16);
            self.offset
                .push([gaussian(rng, ZONE_SIGMA_M), gaussian(rng, ZONE_SIGMA_M)]);
        }
    }

    /// Columns and rows of cells at `level`.
    fn cols_at(grid: &CellGrid, level: u8) -> (usize, usize) {
        (
            (grid.cols() as usize) << level,
            (grid.rows() as usize) << level,
        )
    }

    /// Index of the finest-level cell holding `p` (clamped onto the world).
    fn fine_index(&self, p: [f32; 2]) -> usize {
        let w = self.grid.world();
        let side = f64::from(self.grid.base_cell_size_m()) / f64::from(1u32 << self.finest);
        let (cols, rows) = Self::cols_at(&self.grid, self.finest);
        let at = |i: usize, n: usize| {
            let v = ((f64::from(p[i]) - f64::from(w.min[i])) / side).floor();
            (v.max(0.0) as usize).min(n - 1)
        };
        at(1, rows) * cols + at(0, cols)
    }

    /// Count every player at the finest level, then sum up the levels.
    fn recount(&mut self) {
        let finest = self.finest as usize;
        self.counts[finest].copy_from_slice(&self.still);
        let w = self.grid.world();
        // A crowd near the world's edge folds back into the world (clamping would pile everyone
        // beyond the edge onto its last row of cells).
        let fold = |v: f32, i: usize| {
            let v = if v < w.min[i] { 2.0 * w.min[i] - v } else { v };
            let v = if v > w.max[i] { 2.0 * w.max[i] - v } else { v };
            v.clamp(w.min[i], w.max[i])
        };
        for (z, off) in self.zone_of.iter().zip(&self.offset) {
            let c = self.centres[*z as usize];
            let p = [fold(c[0] + off[0], 0), fold(c[1] + off[1], 1)];
            let i = self.fine_index(p);
            self.counts[finest][i] += 1;
        }
        for level in (0..finest).rev() {
            let (cols, rows) = Self::cols_at(&self.grid, level as u8);
            let (below, above) = self.counts.split_at_mut(level + 1);
            let (fine, coarse) = (&above[0], &mut below[level]);
            for z in 0..rows {
                for x in 0..cols {
                    let at = |dx: usize, dz: usize| fine[(2 * z + dz) * 2 * cols + 2 * x + dx];
                    coarse[z * cols + x] = at(0, 0) + at(1, 0) + at(0, 1) + at(1, 1);
                }
            }
        }
    }

    /// Players in `cell` (a cell finer than the counts gets its share of the finest one).
    fn count(&self, cell: CellId) -> f64 {
        let level = cell.level.min(self.finest);
        let shift = cell.level - level;
        let (x, z) = cell.coords();
        let (cols, _) = Self::cols_at(&self.grid, level);
        let i = (z >> shift) as usize * cols + (x >> shift) as usize;
        let n = self.counts[level as usize].get(i).copied().unwrap_or(0);
        f64::from(n) / f64::from(1u32 << (2 * u32::from(shift)))
    }

    /// The zones travel for `dt_ms`, turning back at the world's edges.
    fn travel(&mut self, dt_ms: u64) {
        let w = self.grid.world();
        let dt = dt_ms as f32 / 1_000.0;
        for (c, v) in self.centres.iter_mut().zip(&mut self.velocity) {
            for i in 0..2 {
                c[i] += v[i] * dt;
                if c[i] < w.min[i] || c[i] > w.max[i] {
                    v[i] = -v[i];
                    c[i] = c[i].clamp(w.min[i], w.max[i]);
                }
            }
        }
    }
}

fn fnv(digest: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(digest, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn action_bytes(a: &Action) -> [u8; 14] {
    let (kind, cell, other) = match *a {
        Action::Move { cell, from, to } => (0u8, cell, (u32::from(from.0) << 16) | u32::from(to.0)),
        Action::Split { cell } => (1, cell, 0),
        Action::Merge { parent } => (2, parent, 0),
    };
    let mut out = [0u8; 14];
    out[0] = kind;
    out[1] = cell.level;
    out[2..10].copy_from_slice(&cell.morton.to_le_bytes());
    out[10..14].copy_from_slice(&other.to_le_bytes());
    out
}

/// What one round did.
#[derive(Clone, Debug, Default)]
struct RoundStats {
    plan_ns: u64,
    moves: u64,
    migrated: u64,
    splits: u64,
    merges: u64,
    max_over_mean: f64,
}

/// The phase a round belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Converge,
    Dynamic(u32),
    Settle,
}

impl ScaleSim {
    pub fn new(cfg: ScaleConfig) -> anyhow::Result<Self> {
        let world = cfg.world();
        world
            .validate(std::path::Path::new("<balancer scale world>"))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let balancer = Balancer::new(&world).map_err(|e| anyhow::anyhow!("{e}"))?;
        let grid = CellGrid::from_config(&world);
        let min_cell = f64::from(world.balancer.min_cell_m(world.interest.interest_radius_m));
        let mut finest = 0u8;
        while finest < CellId::MAX_LEVEL
            && f64::from(BASE_CELL_M) / f64::from(1u32 << (finest + 1)) >= min_cell
        {
            finest += 1;
        }
        let mut rng = Rng::new(cfg.seed ^ 0xBA1A);
        // One shard in ten weighs 2.
        let weights: Vec<(ShardId, u32)> = (0..cfg.shards)
            .map(|i| (ShardId(i as u16), if rng.below(10) == 0 { 2 } else { 1 }))
            .collect();
        let total_weight: u32 = weights.iter().map(|w| w.1).sum();
        let map = assign_contiguous(&grid, &weights).map_err(|e| anyhow::anyhow!("{e}"))?;
        let cost_per_player = MEAN_LOAD * f64::from(total_weight) / cfg.players.max(1) as f64;
        let players = Players::new(grid, finest, &cfg, cost_per_player, &mut rng);
        let shards = weights
            .iter()
            .map(|&(id, weight)| Shard {
                input: ShardInput {
                    id,
                    weight,
                    alive: true,
                    draining: false,
                    tick_cpu_share: 0.0,
                    clients: 0,
                    entities: 0,
                    mem_share: 0.0,
                },
                gone: false,
            })
            .collect();
        Ok(Self {
            cfg,
            balancer,
            map,
            shards,
            players,
            cost_per_player,
            rng,
            now_ms: 0,
            digest: 0xcbf2_9ce4_8422_2325,
        })
    }

    /// The reports of every shard still in the cluster, exact per the model.
    fn inputs(&self) -> (Vec<ShardInput>, Vec<CellInput>) {
        let mut players = vec![0.0f64; self.shards.len()];
        let mut cells = Vec::with_capacity(self.map.leaves().len());
        for (&cell, &owner) in self.map.leaves() {
            let n = self.players.count(cell);
            if let Some(p) = players.get_mut(owner.0 as usize) {
                *p += n;
            }
            cells.push(CellInput {
                cell,
                owner,
                entities: n as u32,
                clients: n as u32,
                tick_share: n as f32,
            });
        }
        let cpu: Vec<f64> = players
            .iter()
            .map(|n| SHARD_OVERHEAD + self.cost_per_player * n)
            .collect();
        for c in &mut cells {
            let cell_cpu = self.cost_per_player * f64::from(c.tick_share);
            c.tick_share = (cell_cpu / cpu[c.owner.0 as usize]) as f32;
        }
        let shards = self
            .shards
            .iter()
            .filter(|s| !s.gone)
            .map(|s| {
                let i = s.input.id.0 as usize;
                ShardInput {
                    tick_cpu_share: cpu[i] as f32,
                    clients: players[i] as u32,
                    entities: players[i] as u32,
                    mem_share: (0.1 + 0.000_1 * players[i]) as f32,
                    ..s.input
                }
            })
            .collect();
        (shards, cells)
    }

    /// Max over mean load per weight among the shards that take load (alive, staying, weight > 0).
    fn max_over_mean(&self, shards: &[ShardInput]) -> f64 {
        let takers = shards
            .iter()
            .filter(|s| s.alive && !s.draining && s.weight > 0);
        let (mut total, mut weight, mut max) = (0.0, 0.0, 0.0f64);
        for s in takers {
            let w = f64::from(s.weight);
            total += f64::from(s.tick_cpu_share);
            weight += w;
            max = max.max(f64::from(s.tick_cpu_share) / w);
        }
        if total > 0.0 {
            max * weight / total
        } else {
            0.0
        }
    }

    /// Joins, drains and deaths during the travelling phase: at its 10th, 40th and 70th round,
    /// 1% of the shards join, 1% drain, 0.5% die (at least one each).
    fn events(&mut self, round: u32, report: &mut ScaleReport) {
        let n = self.cfg.shards;
        match round {
            10 => {
                for _ in 0..(n / 100).max(1) {
                    let id = ShardId(self.shards.len() as u16);
                    let mut input = self.shards[0].input;
                    (input.id, input.weight, input.alive, input.draining) = (id, 1, true, false);
                    self.shards.push(Shard { input, gone: false });
                    report.joined += 1;
                }
            }
            40 | 70 => {
                let count = if round == 40 {
                    (n / 100).max(1)
                } else {
                    (n / 200).max(1)
                };
                for _ in 0..count {
                    let alive: Vec<usize> = (0..n)
                        .filter(|&i| {
                            let s = &self.shards[i];
                            !s.gone && s.input.alive && !s.input.draining
                        })
                        .collect();
                    if alive.len() <= 1 {
                        return;
                    }
                    let pick = alive[self.rng.below(alive.len() as u64) as usize];
                    let input = &mut self.shards[pick].input;
                    if round == 40 {
                        input.draining = true;
                        report.drained += 1;
                    } else {
                        input.alive = false;
                        report.died += 1;
                    }
                }
            }
            _ => {}
        }
    }
}

impl ScaleSim {
    /// One round: the phase's changes, the reports, the plan (timed by `clock`, in ns), applied.
    fn step(
        &mut self,
        phase: Phase,
        clock: &mut dyn FnMut() -> u64,
        report: &mut ScaleReport,
    ) -> anyhow::Result<RoundStats> {
        if let Phase::Dynamic(round) = phase {
            self.events(round, report);
            self.players.travel(self.cfg.round_ms);
            self.players.recount();
        }
        let (shards, cells) = self.inputs();
        let started = clock();
        let plan = self.balancer.plan(self.now_ms, &self.map, &shards, &cells);
        let plan_ns = clock().saturating_sub(started);
        let mut stats = self.tally(&plan, report);
        stats.plan_ns = plan_ns;
        let skipped = plan.apply_to(&mut self.map);
        if let Some((action, e)) = skipped.first() {
            anyhow::bail!(
                "seed {}: a fresh plan did not apply: {action:?}: {e}",
                self.cfg.seed
            );
        }
        // A drained or dead shard with no cells left leaves the cluster.
        for s in &mut self.shards {
            let leaving = s.input.draining || !s.input.alive;
            if leaving && !s.gone && self.map.cells_of(s.input.id).next().is_none() {
                s.gone = true;
            }
        }
        let (after, _) = self.inputs();
        stats.max_over_mean = self.max_over_mean(&after);
        self.now_ms += self.cfg.round_ms;
        Ok(stats)
    }

    /// Count a plan's actions, the players in moved cells and the notes; fold it into the digest.
    fn tally(&mut self, plan: &Plan, report: &mut ScaleReport) -> RoundStats {
        let mut stats = RoundStats::default();
        for p in &plan.actions {
            self.digest = fnv(self.digest, &action_bytes(&p.action));
            match p.action {
                Action::Move { cell, .. } => {
                    stats.moves += 1;
                    stats.migrated += self.players.count(cell) as u64;
                }
                Action::Split { .. } => stats.splits += 1,
                Action::Merge { .. } => stats.merges += 1,
            }
        }
        for note in &plan.notes {
            let name = match note {
                Note::NoShards => "no shards",
                Note::AllOverloaded { .. } => "all overloaded",
                Note::CannotSplit { .. } => "hot cell at minimum size",
                Note::NoReceiver { .. } => "overloaded shard without receiver",
                Note::Stranded { .. } => "stranded cells",
                Note::BoundReached { .. } => "per-round bound reached",
                Note::UnknownOwner { .. } => "unknown owner",
            };
            *report.notes.entry(name.to_string()).or_default() += 1;
        }
        stats
    }

    /// The whole run. `clock` returns nanoseconds from any origin; pass `&mut || 0` for none.
    pub fn run(mut self, clock: &mut dyn FnMut() -> u64) -> anyhow::Result<ScaleReport> {
        let cfg = self.cfg.clone();
        let mut report = ScaleReport {
            seed: cfg.seed,
            players: cfg.players,
            shards: cfg.shards,
            base_cells: self.map.leaves().len(),
            ..ScaleReport::default()
        };
        let phases = (0..cfg.converge_rounds)
            .map(|_| Phase::Converge)
            .chain((0..cfg.dynamic_rounds).map(Phase::Dynamic))
            .chain((0..cfg.settle_rounds).map(|_| Phase::Settle));
        let (mut times, mut moved, mut migrated) = (Vec::new(), Vec::new(), Vec::new());
        for (round, phase) in phases.enumerate() {
            let round = round as u32;
            let stats = self.step(phase, clock, &mut report)?;
            times.push(stats.plan_ns as f64 / 1e6);
            moved.push(stats.moves as f64);
            migrated.push(stats.migrated as f64);
            report.splits += stats.splits;
            report.merges += stats.merges;
            report.cells_moved_total += stats.moves;
            report.players_migrated_total += stats.migrated;
            let ok = stats.max_over_mean <= CONVERGED_MAX_OVER_MEAN;
            match phase {
                Phase::Converge => {
                    report.converged_max_over_mean = stats.max_over_mean;
                    report.converged_at_round = report
                        .converged_at_round
                        .filter(|_| ok)
                        .or(ok.then_some(round));
                }
                Phase::Dynamic(_) => {
                    report.dynamic_max_over_mean =
                        report.dynamic_max_over_mean.max(stats.max_over_mean)
                }
                Phase::Settle => {
                    report.settled_max_over_mean = stats.max_over_mean;
                    report.settled_at_round = report
                        .settled_at_round
                        .filter(|_| ok)
                        .or(ok.then_some(round));
                }
            }
            report.rounds = round + 1;
        }
        report.round_ms = Spread::of(&times);
        report.cells_moved = Spread::of(&moved);
        report.players_migrated = Spread::of(&migrated);
        self.finish(&mut report);
        Ok(report)
    }

    fn finish(&mut self, report: &mut ScaleReport) {
        report.leaves_at_end = self.map.leaves().len();
        let festival = self.players.festival;
        report.festival_load = self.cost_per_player * self.players.count(festival);
        report.festival_leaves = self
            .map
            .leaves()
            .keys()
            .filter(|c| {
                let mut up = **c;
                while let Some(p) = up.parent() {
                    up = p;
                }
                up == festival
            })
            .count();
        for (cell, owner) in self.map.leaves() {
            let mut bytes = [0u8; 11];
            bytes[0] = cell.level;
            bytes[1..9].copy_from_slice(&cell.morton.to_le_bytes());
            bytes[9..11].copy_from_slice(&owner.0.to_le_bytes());
            self.digest = fnv(self.digest, &bytes);
        }
        report.digest = self.digest;
    }
}

/// One edge case and the balancer's defined answer to it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EdgeCase {
    pub case: &'static str,
    pub moves: usize,
    pub splits: usize,
    pub notes: Vec<String>,
}

/// A 4×4 world of `side_m` cells on `weights`, every cell at `load`, `hot` one cell at 1.6 (twice
/// the threshold); five rounds of the default balancer, the last one's answer.
fn edge_case(case: &'static str, side_m: f32, weights: &[u32], load: f64, hot: bool) -> EdgeCase {
    let mut world = WorldConfig::default();
    (world.world.min_x, world.world.min_z) = (0.0, 0.0);
    (world.world.max_x, world.world.max_z) = (4.0 * side_m, 4.0 * side_m);
    world.world.base_cell_size_m = side_m;
    world.interest.interest_radius_m = INTEREST_RADIUS_M;
    let grid = CellGrid::from_config(&world);
    let ids: Vec<(ShardId, u32)> = weights
        .iter()
        .enumerate()
        .map(|(i, &w)| (ShardId(i as u16), w))
        .collect();
    let map = assign_contiguous(&grid, &ids).unwrap_or_else(|_| CellMap::single(grid, ShardId(0)));
    let hot_cell = CellId::base(1, 1);
    let cell_load = |c: CellId| if hot && c == hot_cell { 1.6 } else { load };
    let mut shards = Vec::new();
    let mut cells = Vec::new();
    for &(id, weight) in &ids {
        let cpu: f64 = SHARD_OVERHEAD + map.cells_of(id).map(cell_load).sum::<f64>();
        shards.push(ShardInput {
            id,
            weight,
            alive: true,
            draining: false,
            tick_cpu_share: cpu as f32,
            clients: 0,
            entities: 0,
            mem_share: 0.1,
        });
        cells.extend(map.cells_of(id).map(|cell| CellInput {
            cell,
            owner: id,
            entities: 0,
            clients: 0,
            tick_share: (cell_load(cell) / cpu) as f32,
        }));
    }
    let Ok(mut balancer) = Balancer::new(&world) else {
        return EdgeCase {
            case,
            moves: 0,
            splits: 0,
            notes: vec!["invalid settings".into()],
        };
    };
    let mut plan = Plan::default();
    for round in 0..5 {
        plan = balancer.plan(round * 1_000, &map, &shards, &cells);
    }
    let splits = plan
        .actions
        .iter()
        .filter(|p| matches!(p.action, Action::Split { .. }))
        .count();
    let mut notes: Vec<String> = plan.notes.iter().map(|n| format!("{n:?}")).collect();
    notes.dedup();
    EdgeCase {
        case,
        moves: plan.moves().count(),
        splits,
        notes,
    }
}

/// The edge cases the issue names, each with its answer from the production balancer.
pub fn edge_cases() -> Vec<EdgeCase> {
    vec![
        edge_case("no shards", BASE_CELL_M, &[], 0.0, false),
        edge_case("all overloaded", BASE_CELL_M, &[1, 1, 1], 0.2, false),
        // 64 m base cells are already the minimum (twice the 32 m interest radius).
        edge_case(
            "one super-hot cell at minimum size",
            2.0 * INTEREST_RADIUS_M,
            &[1, 1],
            0.01,
            true,
        ),
        edge_case("single shard, overloaded", BASE_CELL_M, &[1], 0.06, false),
    ]
}
