//! The multi-shard simulator: N shards of one world and a few dozen bots over the seeded network.
//! Shard links are delayed and jittered, ordered and reliable (as QUIC streams are), and now and
//! then partitioned (messages wait, as a stream retransmits); client datagrams also see loss,
//! duplication and reordering. NPCs wander across borders and are handed off; bots walk back and
//! forth across borders and follow their avatar from shard to shard with redirect tokens.
//! The master role places the cells (shard 0 holds it, the others join with random weights) and
//! hears every shard's load as heartbeats. Every tick is checked for:
//! - `single_authority`: no `NetId` owned by two shards;
//! - `no_lost_entities`: every entity that existed still exists (owned somewhere, or frozen in a
//!   handoff), unless the engine despawned it on purpose (its player left);
//! - `handoff_bounded`: no entity frozen in a handoff longer than the link's round trip allows
//!   (time its link spends partitioned does not count);
//! - `players_keep_avatars`: every logged-in bot's avatar exists;
//! - `proxies_converge`: every proxy names a shard that owns (or owned, within the link's delay
//!   bound) that entity, at a position the owner held within that bound; and every entity that
//!   stayed near a neighbour's cells for longer than the bound has a proxy there.

use crate::{Packet, Violation};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use zonescaler_bots::{BotClient, BotConfig, Scenario, border_walks};
use zonescaler_net::mem::{LinkFaults, MemNetwork};
use zonescaler_server::ShardApp;
use zonescaler_server::components::{Networked, Owned, Position};
use zonescaler_server::handoff::InTransit;
use zonescaler_server::master::Master;
use zonescaler_server::proxy::{Proxy, Space};
use zonescaler_server::resources::DespawnLog;
use zonescaler_shared::cellmap::{CellGrid, CellMap};
use zonescaler_shared::config::WorldConfig;
use zonescaler_shared::protocol::{JoinRequest, MemberInfo};
use zonescaler_shared::quant::QPos;
use zonescaler_shared::rng::Rng;
use zonescaler_shared::{ConnId, NetId, ShardId, limits};

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
    /// Faults on client datagrams (and delay on their control streams).
    pub client_faults: LinkFaults,
    pub bots: usize,
    /// Chance per tick that a random pair of shards is partitioned (healed after a while).
    pub partition_chance: f32,
}

impl ClusterConfig {
    /// The smoke configuration for one seed: 2–4 shards with random weights on a small world,
    /// a few hundred NPCs, a dozen or two bots walking across borders, link delay and jitter,
    /// client loss, and short partitions, all chosen by the seed.
    pub fn smoke(seed: u64) -> Self {
        let mut rng = Rng::new(seed ^ 0xC1A5);
        let mut world = crate::square_world(256.0, seed, 300 + rng.below(300) as usize);
        world.world.base_cell_size_m = 64.0;
        world.npc.speed_mps = 2.0 + rng.range_f32(0.0, 4.0);
        let link_faults = LinkFaults {
            delay_us: 1_000 + rng.below(60_000),
            jitter_us: rng.below(30_000),
            ..LinkFaults::PERFECT
        };
        let client_faults = LinkFaults {
            delay_us: 1_000 + rng.below(30_000),
            jitter_us: rng.below(10_000),
            loss: rng.range_f32(0.0, 0.1),
            duplicate: rng.range_f32(0.0, 0.05),
            reorder: rng.range_f32(0.0, 0.05),
        };
        Self {
            seed,
            ticks: 240,
            shards: 2 + rng.below(3) as usize,
            world,
            link_faults,
            client_faults,
            bots: 8 + rng.below(16) as usize,
            partition_chance: if rng.chance(0.5) { 0.01 } else { 0.0 },
        }
    }

    /// Ticks within which any link message is delivered (when not partitioned).
    fn lag_bound_ticks(&self) -> usize {
        let tick_us = 1_000_000 / u64::from(self.world.simulation.tick_hz);
        ((self.link_faults.delay_us + self.link_faults.jitter_us).div_ceil(tick_us) + 2) as usize
    }
}

/// Owned entities of one shard at one tick: id → (quantised position, exact ground position).
type OwnedAt = BTreeMap<NetId, (QPos, [f32; 2])>;

/// A bot and its connections: `shard` is the one it plays on, `pending` the one a redirect sent
/// it to (until that one's `Welcome`).
struct ClusterBot {
    bot: BotClient,
    shard: Option<usize>,
    pending: Option<usize>,
    welcomed: bool,
    gone: bool,
}

/// N shards, bots, and the network between them. Endpoints `0..N` are shards, `N + i` is bot `i`
/// (`ConnId(i)` on every shard).
pub struct ClusterSim {
    cfg: ClusterConfig,
    shards: Vec<ShardApp>,
    map: CellMap,
    net: MemNetwork<Packet>,
    rng: Rng,
    now_us: u64,
    tick_us: u64,
    bots: Vec<ClusterBot>,
    /// Owned entities per shard for the last `lag_bound + 1` ticks, newest last.
    history: VecDeque<Vec<OwnedAt>>,
    /// Positions of entities frozen in a handoff, for the same ticks: a source's proxy of an
    /// entity it just handed off shows it where it froze until the new owner's first update.
    frozen_history: VecDeque<BTreeMap<NetId, QPos>>,
    /// Ticks each (entity, neighbour) pair has been continuously in the border zone.
    near_for: BTreeMap<(NetId, ShardId), usize>,
    /// Entities that must exist (owned or in transit somewhere).
    alive: BTreeSet<NetId>,
    /// Ticks each in-transit entity has waited on a connected link.
    transit_for: BTreeMap<NetId, usize>,
    /// Partitioned shard pairs and the tick each heals.
    partitions: BTreeMap<(usize, usize), u64>,
    /// Pairs partitioned recently, and the last tick they were.
    disturbed: BTreeMap<(usize, usize), u64>,
    /// The master role (placement done; heartbeats keep its view and directory current).
    pub master: Master,
    /// Handoffs completed (acks seen by sources), for reports and tests.
    pub handoffs: u64,
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

fn in_transit_of(app: &mut ShardApp) -> Vec<(NetId, InTransit, QPos)> {
    let w = &mut app.world;
    w.query::<(&Networked, &InTransit, &Position)>()
        .iter(w)
        .map(|(n, t, p)| (n.0, *t, p.quantized()))
        .collect()
}

/// What a run reports when every invariant held.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterOutcome {
    pub max_proxies: usize,
    /// Handoffs completed (sources that got an ack).
    pub handoffs: u64,
    /// Bot redirects that ended with the bot on its avatar's new shard.
    pub bot_handoffs: u64,
}

impl ClusterSim {
    pub fn new(cfg: ClusterConfig) -> Result<Self, String> {
        let grid = CellGrid::from_config(&cfg.world);
        let mut rng = Rng::new(cfg.seed);
        // The master role places the cells, as in a real cluster: shard 0 holds it, the others
        // join with random capacity weights.
        let member = |i: usize, weight: u32| JoinRequest {
            client_addr: String::new(),
            link_addr: format!("sim:{i}"),
            weight,
        };
        let first = member(0, 1 + rng.below(3) as u32);
        let mut master = Master::new(
            grid,
            cfg.shards,
            MemberInfo {
                id: ShardId(0),
                client_addr: first.client_addr,
                link_addr: first.link_addr,
                weight: first.weight,
            },
            0,
        );
        for i in 1..cfg.shards {
            master
                .join(member(i, 1 + rng.below(3) as u32), 0)
                .map_err(|e| e.to_string())?;
        }
        master.place().map_err(|e| e.to_string())?;
        let map = master.map().cloned().ok_or("the master placed no map")?;
        let mut shards: Vec<ShardApp> = (0..cfg.shards)
            .map(|i| ShardApp::example_in(cfg.world.clone(), ShardId(i as u16), map.clone()))
            .collect();
        let alive = shards
            .iter_mut()
            .flat_map(|s| owned_of(s).into_keys())
            .collect();
        let mut net = MemNetwork::new(rng.next_u64(), cfg.client_faults);
        for a in 0..cfg.shards as u32 {
            for b in 0..cfg.shards as u32 {
                if a != b {
                    net.set_faults(a, b, cfg.link_faults);
                }
            }
        }
        let view = shards[0].world.resource::<Space>().client_view();
        let walks = border_walks(&view, cfg.bots, &mut rng);
        let bots = (0..cfg.bots)
            .map(|i| {
                let mut c = BotConfig::new(
                    format!("sim-{i}"),
                    Scenario::Border,
                    cfg.seed ^ (i as u64) << 20,
                );
                c.border = walks.get(i).copied();
                ClusterBot {
                    bot: BotClient::new(c),
                    shard: None,
                    pending: None,
                    welcomed: false,
                    gone: false,
                }
            })
            .collect();
        let tick_us = 1_000_000 / u64::from(cfg.world.simulation.tick_hz);
        Ok(Self {
            cfg,
            shards,
            map,
            net,
            rng,
            now_us: 0,
            tick_us,
            bots,
            history: VecDeque::new(),
            frozen_history: VecDeque::new(),
            near_for: BTreeMap::new(),
            alive,
            transit_for: BTreeMap::new(),
            partitions: BTreeMap::new(),
            disturbed: BTreeMap::new(),
            master,
            handoffs: 0,
            sabotage: None,
        })
    }

    /// Run every tick; stop at the first violated invariant.
    pub fn run(mut self) -> Result<ClusterOutcome, Violation> {
        let mut max_proxies = 0;
        for _ in 0..self.cfg.ticks {
            let tick = self.step();
            if let Some(s) = self.sabotage.as_mut() {
                s(&mut self.shards, tick);
            }
            max_proxies = max_proxies.max(self.check(tick)?);
        }
        let handoffs = self
            .shards
            .iter()
            .map(|s| {
                s.world
                    .resource::<zonescaler_server::handoff::HandoffState>()
                    .out
            })
            .sum();
        Ok(ClusterOutcome {
            max_proxies,
            handoffs,
            bot_handoffs: self.bots.iter().map(|b| b.bot.metrics.handoffs).sum(),
        })
    }

    fn n(&self) -> usize {
        self.shards.len()
    }

    fn step(&mut self) -> u64 {
        self.now_us += self.tick_us;
        let now = self.now_us;
        let next_tick = self.shards[0].tick_number() + 1;
        let n = self.n();
        // Partitions come and go.
        if n > 1 && self.rng.chance(self.cfg.partition_chance) {
            let a = self.rng.below(n as u64) as usize;
            let b = (a + 1 + self.rng.below(n as u64 - 1) as usize) % n;
            let heal = next_tick + 5 + self.rng.below(40);
            self.partitions.insert((a.min(b), a.max(b)), heal);
            self.net.set_partition(a as u32, b as u32, true);
        }
        let net = &mut self.net;
        self.partitions.retain(|&(a, b), heal| {
            let keep = *heal > next_tick;
            if !keep {
                net.set_partition(a as u32, b as u32, false);
            }
            keep
        });
        // Bots log in over the first ticks, through a random shard.
        for i in 0..self.bots.len() {
            let b = &mut self.bots[i];
            if b.shard.is_none()
                && b.pending.is_none()
                && !b.gone
                && next_tick == 2 + (i as u64 % 20)
            {
                let via = self.rng.below(n as u64) as usize;
                let hello = b.bot.hello(now);
                b.pending = Some(via);
                self.net
                    .send(now, (n + i) as u32, via as u32, Packet::Connect, true);
                self.net.send(
                    now,
                    (n + i) as u32,
                    via as u32,
                    Packet::Control(Bytes::from(hello)),
                    true,
                );
            }
        }
        for (from, to, packet) in self.net.poll(now) {
            let (from, to) = (from as usize, to as usize);
            if to < n {
                if from < n {
                    if let Packet::Link(bytes) = packet {
                        self.shards[to].push_shard_message(ShardId(from as u16), bytes);
                    }
                    continue;
                }
                if let Some(ev) = packet.into_event(ConnId((from - n) as u64)) {
                    self.shards[to].push_event(ev);
                }
            } else {
                self.deliver_to_bot(now, from, to - n, packet);
            }
        }
        for s in &mut self.shards {
            s.set_now_ms(now / 1_000);
            s.tick();
        }
        let heartbeat_ticks =
            (limits::HEARTBEAT_MS * u64::from(self.cfg.world.simulation.tick_hz) / 1_000).max(1);
        if next_tick.is_multiple_of(heartbeat_ticks) {
            for (i, s) in self.shards.iter_mut().enumerate() {
                self.master
                    .heartbeat(ShardId(i as u16), s.load(), now / 1_000);
            }
            let dead = self.master.check_liveness(now / 1_000);
            debug_assert!(dead.is_empty(), "every simulated shard reports");
        }
        for i in 0..n {
            for (to, bytes) in self.shards[i].drain_shard_outbox() {
                self.net
                    .send(now, i as u32, u32::from(to.0), Packet::Link(bytes), true);
            }
            for cmd in self.shards[i].drain_outbox() {
                let to = (n as u64 + cmd.conn().0) as u32;
                let (packet, reliable) = Packet::from_command(cmd);
                self.net.send(now, i as u32, to, packet, reliable);
            }
        }
        for (i, b) in self.bots.iter_mut().enumerate() {
            let Some(shard) = b.shard.filter(|_| b.welcomed && !b.gone) else {
                continue;
            };
            if let Some(input) = b.bot.next_input(now) {
                self.net.send(
                    now,
                    (n + i) as u32,
                    shard as u32,
                    Packet::Datagram(Bytes::from(input)),
                    false,
                );
            }
        }
        self.shards[0].tick_number()
    }

    /// A packet from shard `from` to bot `i`.
    fn deliver_to_bot(&mut self, now: u64, from: usize, i: usize, packet: Packet) {
        let n = self.n();
        let Self { bots, net, .. } = self;
        let b = &mut bots[i];
        if b.gone {
            return;
        }
        let me = (n + i) as u32;
        // Everything a bot sends on its control streams is reliable and ordered.
        let mut send = |to: usize, p: Packet| net.send(now, me, to as u32, p, true);
        let current = b.shard == Some(from);
        let pending = b.pending == Some(from);
        match packet {
            Packet::Control(bytes) if current || pending => match b.bot.on_control(now, &bytes) {
                Ok(Some(redirect)) => {
                    let to = usize::from(redirect.shard.0);
                    if pending {
                        // A login redirected onwards: this connection has nothing to keep.
                        send(from, Packet::Close("redirected".into()));
                    }
                    b.pending = Some(to);
                    send(to, Packet::Connect);
                    send(
                        to,
                        Packet::Control(Bytes::from(b.bot.hello_redirected(&redirect))),
                    );
                }
                Ok(None) => {
                    if pending && b.bot.welcome().is_some() {
                        // The new shard's Welcome: switch, and hang up on the old one.
                        if let Some(old) = b.shard.filter(|o| *o != from) {
                            send(old, Packet::Close("redirected".into()));
                        }
                        b.shard = Some(from);
                        b.pending = None;
                        b.welcomed = true;
                    }
                }
                Err(_) => b.gone = true,
            },
            Packet::Datagram(bytes) if current && b.welcomed => b.bot.on_datagram(now, &bytes),
            Packet::Close(_) if current => b.gone = true,
            _ => {}
        }
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
        let transit: Vec<Vec<(NetId, InTransit, QPos)>> =
            self.shards.iter_mut().map(in_transit_of).collect();
        for s in &mut self.shards {
            for id in std::mem::take(&mut s.world.resource_mut::<DespawnLog>().0) {
                self.alive.remove(&id);
            }
        }

        // single_authority.
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
        // no_lost_entities: owned somewhere or frozen in a handoff.
        let held: BTreeSet<NetId> = transit.iter().flatten().map(|(id, _, _)| *id).collect();
        if let Some(lost) = self
            .alive
            .iter()
            .find(|id| !owner.contains_key(id) && !held.contains(id))
        {
            return fail(
                "no_lost_entities",
                format!("{lost} is owned by no shard and in no handoff"),
            );
        }
        self.alive.extend(owner.keys().copied());

        // handoff_bounded: a round trip on a connected link, plus a tick on each side.
        let bound = self.cfg.lag_bound_ticks();
        let mut transit_now = BTreeMap::new();
        for (src, list) in transit.iter().enumerate() {
            for (id, t, _) in list {
                let dst = usize::from(t.to.0);
                let cut = self.partitions.contains_key(&(src.min(dst), src.max(dst)));
                // After a partition heals, the held messages need a full bound again.
                let waited = if cut {
                    0
                } else {
                    self.transit_for.get(id).copied().unwrap_or(0) + 1
                };
                if waited > 2 * bound + 2 {
                    return fail(
                        "handoff_bounded",
                        format!(
                            "{id} has been in transit from shard {src} to shard {dst} for {waited} connected ticks (bound {})",
                            2 * bound + 2
                        ),
                    );
                }
                transit_now.insert(*id, waited);
            }
        }
        self.transit_for = transit_now;

        // players_keep_avatars.
        for (i, b) in self.bots.iter().enumerate() {
            if let (Some(w), false) = (b.bot.welcome(), b.gone)
                && !self.alive.contains(&w.avatar)
            {
                return fail(
                    "players_keep_avatars",
                    format!("bot {i}'s avatar {} no longer exists", w.avatar),
                );
            }
        }

        self.history.push_back(now);
        self.frozen_history.push_back(
            transit
                .iter()
                .flatten()
                .map(|(id, _, q)| (*id, *q))
                .collect(),
        );
        while self.history.len() > bound + 1 {
            self.history.pop_front();
            self.frozen_history.pop_front();
        }
        self.check_proxies(tick, bound)
    }

    /// `proxies_converge`, both halves; pairs of shards partitioned within the last `bound`
    /// ticks are exempt (their updates are legitimately late).
    fn check_proxies(&mut self, tick: u64, bound: usize) -> Result<usize, Violation> {
        let seed = self.cfg.seed;
        let fail = |invariant, detail| {
            Err(Violation {
                seed,
                tick,
                invariant,
                detail,
            })
        };
        for pair in self.partitions.keys() {
            self.disturbed.insert(*pair, tick);
        }
        self.disturbed
            .retain(|_, at| tick.saturating_sub(*at) <= 2 * bound as u64);
        let disturbed = |a: usize, b: usize| self.disturbed.contains_key(&(a.min(b), a.max(b)));

        // Soundness: a proxy matches its owner's state within the lag bound.
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
                proxied.insert((id, ShardId(me as u16)));
                let o = usize::from(owner_shard.0);
                if disturbed(me, o) || self.history.len() <= bound {
                    continue;
                }
                let matches = self.history.iter().any(|h| {
                    h.get(o)
                        .and_then(|m| m.get(&id))
                        .is_some_and(|(q, _)| *q == pos)
                }) || self.frozen_history.iter().any(|h| h.get(&id) == Some(&pos));
                if !matches {
                    return fail(
                        "proxies_converge",
                        format!(
                            "proxy of {id} on shard {me} is at {pos:?}, where shard {o} never had it in the last {bound} ticks"
                        ),
                    );
                }
            }
        }

        // Completeness: near a neighbour for longer than the bound ⇒ proxied there.
        let radius = self.cfg.world.interest.interest_radius_m;
        let newest = self.history.back().cloned().unwrap_or_default();
        let mut near_now: BTreeMap<(NetId, ShardId), usize> = BTreeMap::new();
        for (o, owned) in newest.iter().enumerate() {
            for (id, (_, xz)) in owned {
                for (cell, s) in self.map.leaves() {
                    if usize::from(s.0) != o
                        && !disturbed(o, usize::from(s.0))
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
pub fn run_cluster_seed(seed: u64) -> Result<ClusterOutcome, Violation> {
    let sim = ClusterSim::new(ClusterConfig::smoke(seed)).map_err(|e| Violation {
        seed,
        tick: 0,
        invariant: "setup",
        detail: e,
    })?;
    sim.run()
}
