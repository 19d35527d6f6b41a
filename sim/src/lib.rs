//! `zonescaler-sim`: a deterministic harness that steps a shard world and simulated clients over
//! a seeded in-memory network, and checks invariants after every tick.
//!
//! Everything is a function of the seed: the world (NPC placement and wandering), the clients'
//! choices, and the network's delay, jitter, loss, duplication and reordering. A failure prints its
//! seed and tick; `cargo run -p zonescaler-sim -- --seed N` replays it exactly.

pub mod balance;
pub mod cluster;
pub mod load;

use bytes::Bytes;
use std::collections::BTreeSet;
use zonescaler_bots::{BotClient, BotConfig, Scenario};
use zonescaler_net::mem::{LinkFaults, MemNetwork};
use zonescaler_net::{NetCommand, NetEvent};
use zonescaler_server::ShardApp;
use zonescaler_server::client::{Clients, Phase};
use zonescaler_server::core::components::{Avatar, Networked, Position};
use zonescaler_server::interest::Viewers;
use zonescaler_shared::config::WorldConfig;
use zonescaler_shared::rng::Rng;
use zonescaler_shared::{ConnId, NetId, limits};

/// One run's shape.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub ticks: u64,
    pub clients: usize,
    pub world: WorldConfig,
    /// Faults on every client ↔ shard link; per-seed variation is added on top.
    pub faults: LinkFaults,
    /// Fraction of clients that disconnect and reconnect during the run.
    pub churn: f32,
}

impl SimConfig {
    /// The smoke configuration for one seed: a small world, a few hundred NPCs, a dozen clients
    /// on a lossy, jittery, duplicating, reordering network whose severity the seed chooses.
    pub fn smoke(seed: u64) -> Self {
        let mut rng = Rng::new(seed ^ 0x5EED);
        let mut world = square_world(200.0, seed, 150 + rng.below(150) as usize);
        world.interest.aoi_radius_m = 40.0 + rng.range_f32(0.0, 40.0);
        let faults = LinkFaults {
            delay_us: 1_000 + rng.below(40_000),
            jitter_us: rng.below(20_000),
            loss: rng.range_f32(0.0, 0.2),
            duplicate: rng.range_f32(0.0, 0.05),
            reorder: rng.range_f32(0.0, 0.1),
        };
        Self {
            seed,
            ticks: 300,
            clients: 8 + rng.below(8) as usize,
            world,
            faults,
            churn: 0.25,
        }
    }
}

/// A square world of side `2 × half_m` centred on the origin, with `npcs` NPCs and the given seed:
/// the small worlds the simulators' smoke configurations start from.
pub fn square_world(half_m: f32, seed: u64, npcs: usize) -> WorldConfig {
    let mut world = WorldConfig::default();
    world.world.min_x = -half_m;
    world.world.min_z = -half_m;
    world.world.max_x = half_m;
    world.world.max_z = half_m;
    world.npc.count = npcs;
    world.simulation.seed = seed;
    world
}

/// What travels on the simulated wire: client connections, and in the multi-shard simulator
/// shard links too.
#[derive(Clone, Debug)]
// Shard-link messages are a heartbeat's size at most; boxing them is not worth a simulated hop.
#[allow(clippy::large_enum_variant)]
enum Packet {
    /// A shard link came up (the multi-shard simulator only): both ends hear it.
    LinkUp(zonescaler_net::link::LinkId),
    /// A shard-link message (the multi-shard simulator only).
    Link(
        zonescaler_net::link::LinkId,
        zonescaler_shared::protocol::LinkMessage,
    ),
    /// An encoded link frame during play (the multi-shard simulator only): a member's session
    /// frame (`LinkMessage::Seq`), an `Ack` or a `Relink`, as `Node` puts them on a link.
    Frame(Bytes),
    Connect,
    Control(Bytes),
    Datagram(Bytes),
    /// The shard closed the connection, or the client hung up.
    Close(String),
}

impl Packet {
    /// The shard's event for this client packet on connection `conn`; `None` for a link message.
    fn into_event(self, conn: ConnId) -> Option<NetEvent> {
        Some(match self {
            Self::Connect => NetEvent::Connected {
                conn,
                max_datagram_bytes: limits::DATAGRAM_BYTES_MIN,
            },
            Self::Control(bytes) => NetEvent::Control { conn, bytes },
            Self::Datagram(bytes) => NetEvent::Datagram { conn, bytes },
            Self::Close(reason) => NetEvent::Disconnected { conn, reason },
            Self::Link(..) | Self::LinkUp(_) | Self::Frame(_) => return None,
        })
    }

    /// A shard's command as a packet, and whether it travels reliably (control stream) or not
    /// (datagrams).
    fn from_command(cmd: NetCommand) -> (Self, bool) {
        match cmd {
            NetCommand::Control { bytes, .. } => (Self::Control(bytes), true),
            NetCommand::Datagram { bytes, .. } => (Self::Datagram(bytes), false),
            NetCommand::Close { reason, .. } => (Self::Close(reason), true),
        }
    }
}

/// A broken invariant: which, when, and what was seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub seed: u64,
    pub tick: u64,
    pub invariant: &'static str,
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {} tick {}: invariant `{}` violated: {}",
            self.seed, self.tick, self.invariant, self.detail
        )
    }
}

/// What a passing run reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub ticks: u64,
    /// The shard's state hash after each tick.
    pub hashes: Vec<u64>,
    pub snapshots_applied: u64,
    pub messages_dropped: u64,
}

struct SimBot {
    bot: Option<BotClient>,
    connected: bool,
    /// Tick at which this bot (re)connects.
    connect_at: u64,
    generation: u64,
}

/// Endpoint 0 is the shard; client `i` is endpoint `i + 1` and `ConnId(i + 1)` on the shard.
pub struct Sim {
    cfg: SimConfig,
    app: ShardApp,
    net: MemNetwork<Packet>,
    bots: Vec<SimBot>,
    rng: Rng,
    tick_us: u64,
    now_us: u64,
    /// Fault injection hook for checker tests: corrupt the world before checks.
    pub sabotage: Option<Box<dyn FnMut(&mut ShardApp, u64)>>,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim")
            .field("seed", &self.cfg.seed)
            .field("now_us", &self.now_us)
            .finish_non_exhaustive()
    }
}

impl Sim {
    pub fn new(cfg: SimConfig) -> Self {
        let app = ShardApp::example(cfg.world.clone());
        let mut rng = Rng::new(cfg.seed);
        let net = MemNetwork::new(rng.next_u64(), cfg.faults);
        let tick_us = 1_000_000 / u64::from(cfg.world.simulation.tick_hz);
        let bots = (0..cfg.clients)
            .map(|i| SimBot {
                bot: None,
                connected: false,
                connect_at: 1 + rng.below(30) + i as u64 % 5,
                generation: 0,
            })
            .collect();
        Self {
            cfg,
            app,
            net,
            bots,
            rng,
            tick_us,
            now_us: 0,
            sabotage: None,
        }
    }

    pub fn app(&self) -> &ShardApp {
        &self.app
    }

    /// Run every tick; stop at the first violated invariant.
    pub fn run(mut self) -> Result<Outcome, Violation> {
        let mut hashes = Vec::with_capacity(self.cfg.ticks as usize);
        for _ in 0..self.cfg.ticks {
            let tick = self.step();
            if let Some(s) = self.sabotage.as_mut() {
                s(&mut self.app, tick);
            }
            self.check(tick)?;
            hashes.push(self.app.state_hash());
        }
        let snapshots_applied = self
            .bots
            .iter()
            .filter_map(|b| b.bot.as_ref())
            .map(|b| b.metrics.snapshots)
            .sum();
        Ok(Outcome {
            ticks: self.cfg.ticks,
            hashes,
            snapshots_applied,
            messages_dropped: self.net.dropped,
        })
    }

    /// Advance one tick: deliver what is due, tick the shard, send what it produced, let clients act.
    pub fn step(&mut self) -> u64 {
        self.now_us += self.tick_us;
        let now = self.now_us;
        let next_tick = self.app.tick_number() + 1;
        // Clients connect, and some churn (hang up, come back later).
        for i in 0..self.bots.len() {
            let ep = i as u32 + 1;
            let b = &mut self.bots[i];
            if !b.connected && b.connect_at == next_tick {
                b.generation += 1;
                let cfg = BotConfig::new(
                    format!("sim-{i}"),
                    Scenario::Wander,
                    self.cfg.seed ^ (i as u64) << 20 ^ b.generation,
                );
                let mut bot = BotClient::new(cfg);
                let hello = bot.hello(now);
                b.bot = Some(bot);
                b.connected = true;
                self.net.send(now, ep, 0, Packet::Connect, true);
                self.net
                    .send(now, ep, 0, Packet::Control(Bytes::from(hello)), true);
            } else if b.connected && self.rng.chance(self.cfg.churn / self.cfg.ticks as f32) {
                b.connected = false;
                b.connect_at = next_tick + 5 + self.rng.below(40);
                self.net
                    .send(now, ep, 0, Packet::Close("client hung up".into()), true);
            }
        }
        for (from, to, packet) in self.net.poll(now) {
            if to == 0 {
                if let Some(ev) = packet.into_event(ConnId(u64::from(from))) {
                    self.app.push_event(ev);
                }
            } else {
                let b = &mut self.bots[to as usize - 1];
                let Some(bot) = b.bot.as_mut().filter(|_| b.connected) else {
                    continue;
                };
                match packet {
                    Packet::Control(bytes) => {
                        if bot.on_control(now, &bytes).is_err() {
                            b.connected = false;
                        }
                    }
                    Packet::Datagram(bytes) => bot.on_datagram(now, &bytes),
                    Packet::Close(_) => b.connected = false,
                    Packet::Connect | Packet::Link(..) | Packet::LinkUp(_) | Packet::Frame(_) => {}
                }
            }
        }
        self.app.tick();
        for cmd in self.app.drain_outbox() {
            let to = cmd.conn().0 as u32;
            let (packet, reliable) = Packet::from_command(cmd);
            self.net.send(now, 0, to, packet, reliable);
        }
        for i in 0..self.bots.len() {
            let b = &mut self.bots[i];
            if !b.connected {
                continue;
            }
            if let Some(input) = b.bot.as_mut().and_then(|bot| bot.next_input(now)) {
                self.net.send(
                    now,
                    i as u32 + 1,
                    0,
                    Packet::Datagram(Bytes::from(input)),
                    false,
                );
            }
        }
        self.app.tick_number()
    }

    /// Every invariant, after every tick.
    fn check(&mut self, tick: u64) -> Result<(), Violation> {
        let seed = self.cfg.seed;
        let fail = |invariant, detail| {
            Err(Violation {
                seed,
                tick,
                invariant,
                detail,
            })
        };
        let world = &mut self.app.world;

        // unique_net_ids: one entity per NetId on the shard.
        let mut seen = BTreeSet::new();
        let mut q = world.query::<&Networked>();
        for n in q.iter(world) {
            if !seen.insert(n.0) {
                return fail(
                    "unique_net_ids",
                    format!("NetId {} is held by two entities", n.0),
                );
            }
        }

        // in_world: nothing leaves the world rectangle.
        let w = self.cfg.world.world.clone();
        let mut q = world.query::<(&Networked, &Position)>();
        for (n, p) in q.iter(world) {
            if !(w.min_x..=w.max_x).contains(&p.0.x) || !(w.min_z..=w.max_z).contains(&p.0.z) {
                return fail(
                    "in_world",
                    format!("{} at {:?} is outside the world", n.0, p.0),
                );
            }
        }

        // one_avatar_per_client: every logged-in client drives exactly one avatar, and every
        // avatar belongs to a logged-in client.
        let mut avatars: Vec<(ConnId, NetId)> = world
            .query::<(&Avatar, &Networked)>()
            .iter(world)
            .map(|(a, n)| (a.conn, n.0))
            .collect();
        avatars.sort();
        let clients = world.resource::<Clients>();
        let viewers = world.resource::<Viewers>();
        let mut playing: Vec<(ConnId, NetId)> = clients
            .0
            .iter()
            .filter_map(|(c, s)| match s.phase {
                Phase::Playing { id, .. } => Some((*c, id)),
                Phase::AwaitHello { .. }
                | Phase::AwaitClaim { .. }
                | Phase::AwaitLocate { .. }
                | Phase::Queued { .. }
                | Phase::Redirected { .. } => None,
            })
            .collect();
        playing.sort();
        if avatars != playing {
            return fail(
                "one_avatar_per_client",
                format!("avatars {avatars:?} but logged-in clients {playing:?}"),
            );
        }

        // client_view_matches_server: a client's reconstructed view at tick T equals what the
        // shard sent it for T (delta encoding, parts, loss and reordering must not corrupt it).
        for (i, b) in self.bots.iter().enumerate() {
            let (Some(bot), true) = (&b.bot, b.connected) else {
                continue;
            };
            let Some((vt, view)) = bot.view() else {
                continue;
            };
            let conn = ConnId(i as u64 + 1);
            let Some(sent) = viewers
                .0
                .get(&conn)
                .and_then(|c| c.history.iter().find(|s| s.tick == vt))
            else {
                continue;
            };
            let ids: Vec<NetId> = view.keys().copied().collect();
            if ids != sent.ids {
                return fail(
                    "client_view_matches_server",
                    format!(
                        "client {i} at tick {vt}: sees {} entities, shard sent {}",
                        ids.len(),
                        sent.ids.len()
                    ),
                );
            }
            for (k, (id, e)) in view.iter().enumerate() {
                if e.pos != sent.qpos[k] {
                    return fail(
                        "client_view_matches_server",
                        format!(
                            "client {i} at tick {vt}: {id} at {:?}, shard sent {:?}",
                            e.pos, sent.qpos[k]
                        ),
                    );
                }
            }
            if bot.metrics.avatar_missing > 0 {
                return fail(
                    "client_sees_own_avatar",
                    format!(
                        "client {i} missed its avatar in {} snapshots",
                        bot.metrics.avatar_missing
                    ),
                );
            }
        }
        Ok(())
    }
}

/// Run one seed with the smoke configuration.
pub fn run_seed(seed: u64) -> Result<Outcome, Violation> {
    Sim::new(SimConfig::smoke(seed)).run()
}
