//! The multi-shard simulator: N shards of one world over the seeded network, with the shard links
//! delayed and jittered (ordered and reliable, as QUIC streams are), and every tick checked for:
//! - `single_authority`: no `NetId` owned by two shards;
//! - `no_lost_entities`: every entity that existed still exists, owned by exactly one shard;
//! - `proxies_converge`: every proxy names a shard that owns (or owned, within the link's delay
//!   bound) that entity, at a position the owner held within that bound; and every entity that
//!   stayed near a neighbour's cells for longer than the bound has a proxy there.

use crate::Violation;
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use zonescaler_net::mem::{LinkFaults, MemNetwork};
use zonescaler_server::ShardApp;
use zonescaler_server::components::{Networked, Owned, Position};
use zonescaler_server::proxy::Proxy;
use zonescaler_shared::cellmap::{CellGrid, CellMap, assign_contiguous};
use zonescaler_shared::config::WorldConfig;
use zonescaler_shared::quant::QPos;
use zonescaler_shared::rng::Rng;
use zonescaler_shared::{NetId, ShardId};

/// One multi-shard run's shape.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub seed: u64,
    pub ticks: u64,
    pub shards: usize,
    pub world: WorldConfig,
    /// Delay and jitter on shard links (loss, duplication and reordering do not apply: links are
    /// reliable ordered streams).
    pub link_faults: LinkFaults,
}

impl ClusterConfig {
    /// The smoke configuration for one seed: 2–4 shards with random weights on a small world,
    /// a few hundred NPCs each, link delay and jitter chosen by the seed.
    pub fn smoke(seed: u64) -> Self {
        let mut rng = Rng::new(seed ^ 0xC1A5);
        let mut world = crate::square_world(256.0, seed, 150 + rng.below(150) as usize);
        world.world.base_cell_size_m = 64.0;
        world.npc.speed_mps = 2.0 + rng.range_f32(0.0, 4.0);
        let link_faults = LinkFaults {
            delay_us: 1_000 + rng.below(60_000),
            jitter_us: rng.below(30_000),
            ..LinkFaults::PERFECT
        };
        Self {
            seed,
            ticks: 200,
            shards: 2 + rng.below(3) as usize,
            world,
            link_faults,
        }
    }

    /// Ticks within which any link message is delivered.
    fn lag_bound_ticks(&self) -> usize {
        let tick_us = 1_000_000 / u64::from(self.world.simulation.tick_hz);
        ((self.link_faults.delay_us + self.link_faults.jitter_us).div_ceil(tick_us) + 2) as usize
    }
}

/// Owned entities of one shard at one tick: id → (quantised position, exact ground position).
type OwnedAt = BTreeMap<NetId, (QPos, [f32; 2])>;

/// N shards and the network between them.
pub struct ClusterSim {
    cfg: ClusterConfig,
    shards: Vec<ShardApp>,
    map: CellMap,
    net: MemNetwork<Bytes>,
    now_us: u64,
    tick_us: u64,
    /// Owned entities per shard for the last `lag_bound + 1` ticks, newest last.
    history: VecDeque<Vec<OwnedAt>>,
    /// Ticks each (entity, neighbour) pair has been continuously in the border zone.
    near_for: BTreeMap<(NetId, ShardId), usize>,
    initial: BTreeSet<NetId>,
    /// Fault injection for checker tests.
    pub sabotage: Option<Box<dyn FnMut(&mut [ShardApp], u64)>>,
}

impl std::fmt::Debug for ClusterSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSim")
            .field("seed", &self.cfg.seed)
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

fn owned_of(app: &mut ShardApp) -> OwnedAt {
    let w = &mut app.world;
    w.query_filtered::<(&Networked, &Position), bevy_ecs::query::With<Owned>>()
        .iter(w)
        .map(|(n, p)| (n.0, (p.quantized(), [p.0.x, p.0.z])))
        .collect()
}

impl ClusterSim {
    pub fn new(cfg: ClusterConfig) -> Result<Self, String> {
        let grid = CellGrid::from_config(&cfg.world);
        let mut rng = Rng::new(cfg.seed);
        let weights: Vec<(ShardId, u32)> = (0..cfg.shards)
            .map(|i| (ShardId(i as u16), 1 + rng.below(3) as u32))
            .collect();
        let map = assign_contiguous(&grid, &weights).map_err(|e| e.to_string())?;
        let mut shards: Vec<ShardApp> = (0..cfg.shards)
            .map(|i| ShardApp::example_in(cfg.world.clone(), ShardId(i as u16), map.clone()))
            .collect();
        let initial = shards
            .iter_mut()
            .flat_map(|s| owned_of(s).into_keys())
            .collect();
        let net = MemNetwork::new(rng.next_u64(), cfg.link_faults);
        let tick_us = 1_000_000 / u64::from(cfg.world.simulation.tick_hz);
        Ok(Self {
            cfg,
            shards,
            map,
            net,
            now_us: 0,
            tick_us,
            history: VecDeque::new(),
            near_for: BTreeMap::new(),
            initial,
            sabotage: None,
        })
    }

    /// Run every tick; stop at the first violated invariant. Returns the proxies seen at most.
    pub fn run(mut self) -> Result<usize, Violation> {
        let mut max_proxies = 0;
        for _ in 0..self.cfg.ticks {
            let tick = self.step();
            if let Some(s) = self.sabotage.as_mut() {
                s(&mut self.shards, tick);
            }
            max_proxies = max_proxies.max(self.check(tick)?);
        }
        Ok(max_proxies)
    }

    fn step(&mut self) -> u64 {
        self.now_us += self.tick_us;
        for (from, to, bytes) in self.net.poll(self.now_us) {
            self.shards[to as usize].push_shard_message(ShardId(from as u16), bytes);
        }
        for s in &mut self.shards {
            s.tick();
        }
        for i in 0..self.shards.len() {
            for (to, bytes) in self.shards[i].drain_shard_outbox() {
                self.net
                    .send(self.now_us, i as u32, u32::from(to.0), bytes, true);
            }
        }
        self.shards[0].tick_number()
    }

    fn check(&mut self, tick: u64) -> Result<usize, Violation> {
        let seed = self.cfg.seed;
        let fail = |invariant, detail| {
            Err(Violation {
                seed,
                tick,
                invariant,
                detail,
            })
        };
        let now: Vec<OwnedAt> = self.shards.iter_mut().map(owned_of).collect();

        // single_authority and no_lost_entities.
        let mut owner: BTreeMap<NetId, usize> = BTreeMap::new();
        for (i, owned) in now.iter().enumerate() {
            for id in owned.keys() {
                if let Some(other) = owner.insert(*id, i) {
                    return fail(
                        "single_authority",
                        format!("{id} is owned by shards {other} and {i}"),
                    );
                }
            }
        }
        if let Some(lost) = self.initial.iter().find(|id| !owner.contains_key(id)) {
            return fail("no_lost_entities", format!("{lost} is owned by no shard"));
        }

        self.history.push_back(now);
        let bound = self.cfg.lag_bound_ticks();
        while self.history.len() > bound + 1 {
            self.history.pop_front();
        }

        // proxies_converge (soundness): a proxy matches its owner's state within the lag bound.
        let mut proxies_total = 0;
        let mut proxied: BTreeSet<(NetId, ShardId)> = BTreeSet::new();
        for (me, app) in self.shards.iter_mut().enumerate() {
            let w = &mut app.world;
            let proxies: Vec<(NetId, ShardId, QPos)> = w
                .query::<(&Networked, &Position, &Proxy)>()
                .iter(w)
                .map(|(n, p, x)| (n.0, x.owner, p.quantized()))
                .collect();
            proxies_total += proxies.len();
            for (id, owner_shard, pos) in proxies {
                let o = usize::from(owner_shard.0);
                let matches = self.history.iter().any(|h| {
                    h.get(o)
                        .and_then(|m| m.get(&id))
                        .is_some_and(|(q, _)| *q == pos)
                });
                if !matches && self.history.len() > bound {
                    return fail(
                        "proxies_converge",
                        format!(
                            "proxy of {id} on shard {me} is at {pos:?}, where shard {o} never had it in the last {bound} ticks"
                        ),
                    );
                }
                proxied.insert((id, ShardId(me as u16)));
            }
        }

        // proxies_converge (completeness): near a neighbour for longer than the bound ⇒ proxied.
        let radius = self.cfg.world.interest.interest_radius_m;
        let newest = self.history.back().cloned().unwrap_or_default();
        let mut near_now: BTreeMap<(NetId, ShardId), usize> = BTreeMap::new();
        for (o, owned) in newest.iter().enumerate() {
            for (id, (_, xz)) in owned {
                for (cell, s) in self.map.leaves() {
                    if usize::from(s.0) != o
                        && self.map.grid().rect(*cell).intersects_circle(*xz, radius)
                    {
                        let n = self.near_for.get(&(*id, *s)).copied().unwrap_or(0) + 1;
                        near_now.insert((*id, *s), n);
                    }
                }
            }
        }
        for ((id, s), n) in &near_now {
            if *n > bound && !proxied.contains(&(*id, *s)) {
                return fail(
                    "proxies_converge",
                    format!(
                        "{id} has been near shard {}'s cells for {n} ticks but has no proxy there",
                        s.0
                    ),
                );
            }
        }
        self.near_for = near_now;
        Ok(proxies_total)
    }
}

/// Run one seed with the multi-shard smoke configuration.
pub fn run_cluster_seed(seed: u64) -> Result<usize, Violation> {
    let sim = ClusterSim::new(ClusterConfig::smoke(seed)).map_err(|e| Violation {
        seed,
        tick: 0,
        invariant: "setup",
        detail: e,
    })?;
    sim.run()
}
