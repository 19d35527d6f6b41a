//! [`ClusterScene`]: one world split over N in-process shards, with bots that follow their
//! avatars from shard to shard; the fixture of the `cluster_tax` and `cell_move` binaries.
//!
//! Everything is driven by hand, tick by tick, on one thread: no sockets, no tasks, simulated
//! time. Shard links have zero delay (a message a shard sends during tick `t` is in its
//! recipient's inbox before tick `t + 1`), client connections too. Only the shard side is timed:
//! each `ShardApp::tick()` and the hand-over of its link messages, which is what the shard
//! processes would spend; the bots' decoding and input generation runs outside the timed sections.
//!
//! The master is either a stand-in that grants every login ([`ClusterScene::new`], enough for a
//! fixed map) or the real [`Master`] ([`ClusterScene::with_master`]), wired as
//! `LocalCluster` wires it, so the scene can move cells.

use bytes::Bytes;
use std::time::{Duration, Instant};
use zonescaler_bots::{BotClient, BotConfig, Scenario, border_walks};
use zonescaler_net::{NetCommand, NetEvent};
use zonescaler_server::ShardApp;
use zonescaler_server::client::LoginPolicy;
use zonescaler_server::cluster::Master;
use zonescaler_server::cluster::moves::MoveError;
use zonescaler_server::core::components::{Networked, Proxy};
use zonescaler_server::core::resources::HandoffStats;
use zonescaler_server::core::space::Space;
use zonescaler_server::runtime::metrics::thread_cpu;
use zonescaler_shared::cellmap::{CellGrid, CellMap, CellMapError, assign_contiguous};
use zonescaler_shared::config::WorldConfig;
use zonescaler_shared::protocol::{ClaimOutcome, MasterNotice, MasterRequest};
use zonescaler_shared::rng::Rng;
use zonescaler_shared::ticket::TicketSigner;
use zonescaler_shared::{CellId, ConnId, ShardId, limits};

/// The cell map of `world` cut into `shards` equal contiguous regions (see [`assign_contiguous`]).
pub fn equal_split(world: &WorldConfig, shards: usize) -> Result<CellMap, CellMapError> {
    let weights: Vec<(ShardId, u32)> = (0..shards).map(|i| (ShardId(i as u16), 1)).collect();
    assign_contiguous(&CellGrid::from_config(world), &weights)
}

/// A master of `shards` members of equal weight with the cells of `world` placed (as
/// `LocalCluster` builds it, without a balancer: the cells move only when the caller says).
pub use zonescaler_server::cluster::local::placed_master;

/// `bots` [`Scenario::Border`] bots walking back and forth across the borders of `map` (10 m to
/// either side, see [`border_walks`]). Pass the same bots to the one-shard scene: they walk the
/// same lines there, where those lines are no border.
pub fn border_bots(map: &CellMap, bots: usize, seed: u64) -> Vec<BotConfig> {
    let view = Space::new(ShardId(0), map.clone()).client_view();
    let walks = border_walks(&view, bots, &mut Rng::new(seed));
    (0..bots)
        .map(|i| {
            let mut c = BotConfig::new(
                format!("bench-{i}"),
                Scenario::Border,
                seed ^ ((i as u64) << 20),
            );
            c.border = walks.get(i).copied();
            c
        })
        .collect()
}

/// A bot and its connections. It is `ConnId(index + 1)` on every shard: it holds at most one
/// connection per shard, and closes one before it could come back.
struct SceneBot {
    bot: BotClient,
    /// The shard it plays on (after that shard's `Welcome`).
    shard: Option<usize>,
    /// The shard a login or redirect sent it to, until that shard's `Welcome`.
    pending: Option<usize>,
    /// Refused or closed: it no longer plays.
    gone: bool,
}

/// Shard-side time spent over the ticks since the last [`ClusterScene::reset_counters`].
#[derive(Clone, Debug, Default)]
pub struct ShardTime {
    /// Per shard: its `tick()` calls plus handing its link messages to their recipients.
    pub per_shard: Vec<Duration>,
    /// Of that, the hand-over of link messages alone (all shards).
    pub links: Duration,
}

impl ShardTime {
    pub fn total(&self) -> Duration {
        self.per_shard.iter().sum()
    }
}

/// One shard's last `tick()`: wall time and the CPU time of the thread that ran it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TickTime {
    pub wall: Duration,
    pub cpu: Duration,
}

/// Counters since the last [`ClusterScene::reset_counters`].
#[derive(Clone, Debug, Default)]
pub struct SceneCounters {
    pub ticks: u64,
    /// Link messages (batches of shard messages, as the shards emit them) and their bytes.
    pub link_messages: u64,
    pub link_bytes: u64,
    /// Proxies summed over shards, summed over ticks (divide by `ticks` for the mean).
    pub proxy_ticks: u64,
}

/// One world on N shards with bots connected in-process.
pub struct ClusterScene {
    shards: Vec<ShardApp>,
    bots: Vec<SceneBot>,
    now_us: u64,
    tick_us: u64,
    time: ShardTime,
    counters: SceneCounters,
    /// Each shard's last tick alone (no link hand-over).
    last_ticks: Vec<TickTime>,
    /// Handoffs completed before the last reset (subtracted from [`Self::handoffs`]).
    handoffs_base: u64,
    bot_handoffs_base: u64,
    /// The real master, if the scene has one; without, a stand-in grants every login.
    master: Option<Master>,
}

impl std::fmt::Debug for ClusterScene {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterScene")
            .field("shards", &self.shards.len())
            .field("bots", &self.bots.len())
            .finish_non_exhaustive()
    }
}

impl ClusterScene {
    /// The world `world` (its `npc.count` NPCs in all) split by `map`, and one bot per entry of
    /// `bots`. Each bot logs in on the shard that owns its spawn point (or shard 0, where the
    /// scenario has none), as a directory would send it; the login happens during the first
    /// tick. A stand-in master grants every login.
    pub fn new(world: &WorldConfig, map: &CellMap, bots: &[BotConfig]) -> Self {
        Self::build(world, map, bots, None)
    }

    /// As [`Self::new`], with `master`'s placed map and `master` itself answering the shards:
    /// logins, cell moves ([`Self::move_cell`]), new maps. Every tick is a heartbeat and an
    /// admission round, as in `LocalCluster`.
    pub fn with_master(
        world: &WorldConfig,
        master: Master,
        bots: &[BotConfig],
    ) -> Result<Self, String> {
        let map = master
            .map()
            .cloned()
            .ok_or("the master has placed no map")?;
        Ok(Self::build(world, &map, bots, Some(master)))
    }

    fn build(
        world: &WorldConfig,
        map: &CellMap,
        bots: &[BotConfig],
        master: Option<Master>,
    ) -> Self {
        let n = map
            .leaves()
            .values()
            .map(|s| usize::from(s.0) + 1)
            .max()
            .unwrap_or(1);
        // The scene is its own account service: a fixed key, tickets that start each bot where
        // its scenario wants it.
        let signer = TicketSigner::from_seed("bench", [7; 32])
            .expect("invariant: a 32-byte seed is a valid Ed25519 seed");
        let mut shards: Vec<ShardApp> = (0..n)
            .map(|i| {
                let mut app = ShardApp::example_in(world.clone(), ShardId(i as u16), map.clone());
                app.world.insert_resource(LoginPolicy {
                    keys: signer.public_keys(),
                    ..LoginPolicy::default()
                });
                app
            })
            .collect();
        let mut scene_bots = Vec::with_capacity(bots.len());
        for (i, cfg) in bots.iter().enumerate() {
            let via = cfg
                .spawn_point()
                .and_then(|p| map.owner_at([p.x, p.z]))
                .map_or(0, |s| usize::from(s.0));
            let mut cfg = cfg.clone();
            cfg.sign_ticket(&signer, u64::MAX);
            let mut bot = BotClient::new(cfg);
            let conn = ConnId(i as u64 + 1);
            shards[via].push_event(NetEvent::Connected {
                conn,
                max_datagram_bytes: limits::DATAGRAM_BYTES_MIN,
            });
            shards[via].push_event(NetEvent::Control {
                conn,
                bytes: Bytes::from(bot.hello(0)),
            });
            scene_bots.push(SceneBot {
                bot,
                shard: None,
                pending: Some(via),
                gone: false,
            });
        }
        Self {
            time: ShardTime {
                per_shard: vec![Duration::ZERO; n],
                links: Duration::ZERO,
            },
            last_ticks: vec![TickTime::default(); n],
            shards,
            bots: scene_bots,
            now_us: 0,
            tick_us: 1_000_000 / u64::from(world.simulation.tick_hz),
            counters: SceneCounters::default(),
            handoffs_base: 0,
            bot_handoffs_base: 0,
            master,
        }
    }

    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// One tick of every shard, then the shards' output to the bots and the bots' inputs.
    pub fn step(&mut self) {
        self.now_us += self.tick_us;
        let now = self.now_us;
        let n = self.shards.len();
        // Timed: the shards' work. Every shard ticks, then the link messages of all of them are
        // handed over, so every message waits exactly until its recipient's next tick whatever
        // the order of the shards.
        for (i, shard) in self.shards.iter_mut().enumerate() {
            shard.set_now_ms(now / 1_000);
            let (t0, cpu0) = (Instant::now(), thread_cpu());
            shard.tick();
            let (wall, cpu) = (t0.elapsed(), thread_cpu().saturating_sub(cpu0));
            self.last_ticks[i] = TickTime { wall, cpu };
            self.time.per_shard[i] += wall;
        }
        for i in 0..n {
            let t0 = Instant::now();
            let out = self.shards[i].drain_shard_outbox();
            let (mut messages, mut bytes) = (0, 0);
            for (to, msg) in out {
                messages += 1;
                bytes += msg.len() as u64;
                if let Some(dst) = self.shards.get_mut(usize::from(to.0)) {
                    dst.push_shard_message(ShardId(i as u16), msg);
                }
            }
            let dt = t0.elapsed();
            self.time.per_shard[i] += dt;
            self.time.links += dt;
            self.counters.link_messages += messages;
            self.counters.link_bytes += bytes;
        }
        self.counters.ticks += 1;

        // Untimed: the master's side and the clients'.
        self.master_round(now / 1_000);
        for i in 0..n {
            for cmd in self.shards[i].drain_outbox() {
                self.deliver_to_bot(i, cmd);
            }
        }
        for (i, b) in self.bots.iter_mut().enumerate() {
            let Some(shard) = b.shard.filter(|_| !b.gone) else {
                continue;
            };
            if let Some(input) = b.bot.next_input(now) {
                self.shards[shard].push_event(NetEvent::Datagram {
                    conn: ConnId(i as u64 + 1),
                    bytes: Bytes::from(input),
                });
            }
        }
        for s in &mut self.shards {
            let w = &mut s.world;
            self.counters.proxy_ticks += w.query::<&Proxy>().iter(w).count() as u64;
        }
    }

    /// The master's side of a tick: with the real master, its answers to the shards' requests,
    /// its move checks, a heartbeat from every shard and an admission round, all delivered for
    /// the next tick (as `LocalCluster::step` does); with the stand-in, every login granted (the
    /// scene's bots are all different accounts).
    fn master_round(&mut self, now_ms: u64) {
        let Some(master) = self.master.as_mut() else {
            for shard in &mut self.shards {
                for req in shard.drain_master_requests() {
                    if let MasterRequest::Claim {
                        account,
                        session,
                        want,
                    } = req
                    {
                        shard.push_master_notice(MasterNotice::Claim {
                            account,
                            session,
                            outcome: ClaimOutcome::Granted { shard: want },
                        });
                    }
                }
            }
            return;
        };
        let mut notices = master.check_moves(now_ms);
        for (i, s) in self.shards.iter_mut().enumerate() {
            for req in s.drain_master_requests() {
                notices.extend(master.request(ShardId(i as u16), req, now_ms));
            }
        }
        for (i, s) in self.shards.iter_mut().enumerate() {
            master.heartbeat(ShardId(i as u16), s.load(), now_ms);
        }
        notices.extend(master.admit(now_ms));
        for (to, notice) in notices {
            if let Some(s) = self.shards.get_mut(usize::from(to.0)) {
                s.push_master_notice(notice);
            }
        }
    }

    /// Order the move of leaf `cell` to shard `to` (the real master only): both shards act on
    /// it in their next tick. The move's id.
    pub fn move_cell(&mut self, cell: CellId, to: ShardId) -> Result<u64, MoveError> {
        let now_ms = self.now_us / 1_000;
        let master = self.master.as_mut().ok_or(MoveError::NotPlaced)?;
        let notices = master.move_cell(cell, to, now_ms)?;
        let mut id = 0;
        for (shard, notice) in notices {
            if let MasterNotice::MoveCell { id: i, .. } = &notice {
                id = *i;
            }
            if let Some(s) = self.shards.get_mut(usize::from(shard.0)) {
                s.push_master_notice(notice);
            }
        }
        Ok(id)
    }

    /// The real master, if the scene has one.
    pub fn master(&self) -> Option<&Master> {
        self.master.as_ref()
    }

    /// Shard `i`'s app (to read or change its world between steps).
    pub fn shard_mut(&mut self, i: usize) -> &mut ShardApp {
        &mut self.shards[i]
    }

    /// Each shard's last tick: wall and thread CPU time of its `tick()` alone.
    pub fn last_ticks(&self) -> &[TickTime] {
        &self.last_ticks
    }

    /// How many bots play on each shard (welcomed there, not gone).
    pub fn bots_per_shard(&self) -> Vec<usize> {
        let mut per = vec![0; self.shards.len()];
        for b in self.bots.iter().filter(|b| !b.gone) {
            if let Some(s) = b.shard {
                per[s] += 1;
            }
        }
        per
    }

    /// A command of shard `from` for a bot: the same protocol as the simulator's `ClusterSim`,
    /// with zero delay. On a `Redirect` the bot connects to the new shard and keeps the old
    /// connection until the new `Welcome`, then hangs up on the old one.
    fn deliver_to_bot(&mut self, from: usize, cmd: NetCommand) {
        let now = self.now_us;
        let Some(i) = (cmd.conn().0 as usize).checked_sub(1) else {
            return;
        };
        let conn = cmd.conn();
        let Some(b) = self.bots.get_mut(i) else {
            return;
        };
        if b.gone {
            return;
        }
        let current = b.shard == Some(from);
        let pending = b.pending == Some(from);
        match cmd {
            NetCommand::Control { bytes, .. } if current || pending => {
                match b.bot.on_control(now, &bytes) {
                    Ok(Some(redirect)) => {
                        let to = usize::from(redirect.shard.0);
                        if to >= self.shards.len() {
                            b.bot.redirect_abandoned();
                            return;
                        }
                        if pending {
                            // A login redirected onwards: this connection has nothing to keep.
                            self.shards[from].push_event(NetEvent::Disconnected {
                                conn,
                                reason: "redirected".into(),
                            });
                        }
                        b.pending = Some(to);
                        let hello = b.bot.hello_redirected(&redirect);
                        self.shards[to].push_event(NetEvent::Connected {
                            conn,
                            max_datagram_bytes: limits::DATAGRAM_BYTES_MIN,
                        });
                        self.shards[to].push_event(NetEvent::Control {
                            conn,
                            bytes: Bytes::from(hello),
                        });
                    }
                    Ok(None) => {
                        if pending && b.bot.welcome().is_some() {
                            // The new shard's Welcome: switch, and hang up on the old one.
                            if let Some(old) = b.shard.filter(|o| *o != from) {
                                self.shards[old].push_event(NetEvent::Disconnected {
                                    conn,
                                    reason: "redirected".into(),
                                });
                            }
                            b.shard = Some(from);
                            b.pending = None;
                        }
                    }
                    Err(_) => b.gone = true,
                }
            }
            NetCommand::Datagram { bytes, .. } if current => b.bot.on_datagram(now, &bytes),
            NetCommand::Close { .. } if current => b.gone = true,
            _ => {}
        }
    }

    /// Start counting afresh (after a warm-up).
    pub fn reset_counters(&mut self) {
        self.time = ShardTime {
            per_shard: vec![Duration::ZERO; self.shards.len()],
            links: Duration::ZERO,
        };
        self.counters = SceneCounters::default();
        self.handoffs_base = self.handoffs_total();
        self.bot_handoffs_base = self.bot_handoffs_total();
    }

    pub fn time(&self) -> &ShardTime {
        &self.time
    }

    pub fn counters(&self) -> &SceneCounters {
        &self.counters
    }

    fn handoffs_total(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.world.resource::<HandoffStats>().out)
            .sum()
    }

    fn bot_handoffs_total(&self) -> u64 {
        self.bots.iter().map(|b| b.bot.metrics.handoffs).sum()
    }

    /// Handoffs completed since the last reset (sources that got an ack), NPCs and avatars.
    pub fn handoffs(&self) -> u64 {
        self.handoffs_total() - self.handoffs_base
    }

    /// Bot redirects completed since the last reset (the bot is on its avatar's new shard).
    pub fn bot_handoffs(&self) -> u64 {
        self.bot_handoffs_total() - self.bot_handoffs_base
    }

    /// Networked entities that are no proxy, over all shards: every entity of the world once
    /// (owned, or frozen in a handoff on its source).
    pub fn entities(&mut self) -> usize {
        self.shards
            .iter_mut()
            .map(|s| {
                let w = &mut s.world;
                w.query::<(&Networked, Option<&Proxy>)>()
                    .iter(w)
                    .filter(|(_, p)| p.is_none())
                    .count()
            })
            .sum()
    }

    /// Bots that are logged in and playing (welcomed, not refused or closed).
    pub fn bots_playing(&self) -> usize {
        self.bots
            .iter()
            .filter(|b| b.shard.is_some() && !b.gone)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The benchmark measures the sharding tax only if the split scene really hands entities and
    /// bots over while the one-shard scene, with the same bots, does not.
    #[test]
    fn split_scene_hands_off_and_single_scene_does_not() {
        let mut world = WorldConfig::default();
        world.npc.count = 400;
        let split = equal_split(&world, 2).expect("64 cells split in two");
        let single = equal_split(&world, 1).expect("one shard");
        let bots = border_bots(&split, 8, 7);
        assert!(
            bots.iter().all(|b| b.border.is_some()),
            "a two-shard map has a border to walk across"
        );
        for (map, shards) in [(&single, 1), (&split, 2)] {
            let mut scene = ClusterScene::new(&world, map, &bots);
            assert_eq!(scene.shards(), shards);
            for _ in 0..30 {
                scene.step();
            }
            scene.reset_counters();
            let before = scene.entities();
            for _ in 0..150 {
                scene.step();
            }
            assert_eq!(before, 408, "NPCs and avatars, each once");
            assert_eq!(scene.entities(), before, "no entity lost or duplicated");
            assert_eq!(scene.bots_playing(), 8, "every bot stays logged in");
            assert_eq!(scene.counters().ticks, 150);
            if shards == 1 {
                assert_eq!(scene.handoffs(), 0, "one shard has nobody to hand over to");
                assert_eq!(scene.counters().link_messages, 0);
            } else {
                assert!(
                    scene.bot_handoffs() >= 8,
                    "each bot crosses its border at least once in 5 s, got {}",
                    scene.bot_handoffs()
                );
                assert!(scene.handoffs() >= scene.bot_handoffs());
                assert!(
                    scene.counters().proxy_ticks > 0,
                    "border entities are mirrored"
                );
            }
        }
    }
}
