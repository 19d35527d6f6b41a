//! Fixtures shared by the ZoneScaler benchmarks.
//!
//! [`TickFixture`] is one shard with N NPCs and C logged-in clients connected in-process (no
//! sockets): the benchmark times `ShardApp::tick` alone, while the clients' work (decoding
//! snapshots, producing inputs and acks) happens outside the timed section, so deltas are taken
//! against real acknowledged baselines exactly as in production.
//!
//! [`cluster::ClusterScene`] is one world split over N shards, with bots that cross the borders;
//! the `cluster_tax` binary compares its cost on one shard and on N.
//!
//! [`cell_move`] moves one crowded cell from shard to shard under that scene, with the real
//! master, and times each shard's ticks before, during and after; the `cell_move` binary.

pub mod cell_move;
pub mod cluster;

use bytes::Bytes;
use zonescaler_bots::{BotClient, BotConfig, Scenario};
use zonescaler_net::{NetCommand, NetEvent};
use zonescaler_server::ShardApp;
use zonescaler_shared::ConnId;
use zonescaler_shared::config::WorldConfig;

pub struct TickFixture {
    pub app: ShardApp,
    bots: Vec<(ConnId, BotClient)>,
    now_us: u64,
    pending: Vec<NetCommand>,
}

impl std::fmt::Debug for TickFixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TickFixture")
            .field("bots", &self.bots.len())
            .finish_non_exhaustive()
    }
}

impl TickFixture {
    /// The default world (2 km × 2 km, AOI 80 m, 30 Hz) with `entities` networked entities in all:
    /// `clients` avatars and the rest wandering NPCs.
    pub fn new(entities: usize, clients: usize) -> Self {
        Self::with_config(WorldConfig::default(), entities, clients)
    }

    /// A crowd: `entities` in all (`clients` of them avatars) in a world of 200 m × 200 m, so
    /// every client sees most of the others (interest radius 80 m): what a bot's snapshot
    /// handling costs in a crowd.
    pub fn crowd(entities: usize, clients: usize) -> Self {
        let mut cfg = WorldConfig::default();
        cfg.world.min_x = -100.0;
        cfg.world.min_z = -100.0;
        cfg.world.max_x = 100.0;
        cfg.world.max_z = 100.0;
        cfg.world.base_cell_size_m = 100.0;
        Self::with_config(cfg, entities, clients)
    }

    fn with_config(mut cfg: WorldConfig, entities: usize, clients: usize) -> Self {
        cfg.npc.count = entities.saturating_sub(clients);
        let mut app = ShardApp::example(cfg);
        let mut bots = Vec::with_capacity(clients);
        for i in 0..clients {
            let conn = ConnId(i as u64 + 1);
            let mut bot =
                BotClient::new(BotConfig::new(format!("b{i}"), Scenario::Wander, i as u64));
            app.push_event(NetEvent::Connected {
                conn,
                max_datagram_bytes: 1_200,
            });
            app.push_event(NetEvent::Control {
                conn,
                bytes: Bytes::from(bot.hello(0)),
            });
            bots.push((conn, bot));
        }
        let mut f = Self {
            app,
            bots,
            now_us: 0,
            pending: Vec::new(),
        };
        // Warm up: logins, first full snapshots, acks, steady-state deltas.
        for _ in 0..10 {
            f.before_tick();
            f.app.tick();
            f.after_tick();
        }
        // Count bytes only over measured ticks: warm-up is dominated by full first snapshots.
        for (_, bot) in &mut f.bots {
            bot.metrics.snapshot_bytes = 0;
            bot.metrics.entity_updates = 0;
        }
        f
    }

    /// Untimed: clients send this tick's inputs (carrying their acks).
    pub fn before_tick(&mut self) {
        self.now_us += 33_333;
        for (conn, bot) in &mut self.bots {
            if let Some(input) = bot.next_input(self.now_us) {
                self.app.push_event(NetEvent::Datagram {
                    conn: *conn,
                    bytes: Bytes::from(input),
                });
            }
        }
    }

    /// Untimed: deliver the tick's output to the clients.
    pub fn after_tick(&mut self) {
        self.pending = self.app.drain_outbox();
        for cmd in self.pending.drain(..) {
            let idx = (cmd.conn().0 - 1) as usize;
            let Some((_, bot)) = self.bots.get_mut(idx) else {
                continue;
            };
            match &cmd {
                NetCommand::Control { bytes, .. } => {
                    let _ = bot.on_control(self.now_us, bytes);
                }
                NetCommand::Datagram { bytes, .. } => bot.on_datagram(self.now_us, bytes),
                NetCommand::Close { .. } => {}
            }
        }
    }

    /// Entities in a client's newest view, the mean over the clients.
    pub fn mean_view_len(&self) -> f64 {
        let n: usize = self
            .bots
            .iter()
            .map(|(_, b)| b.view().map_or(0, |(_, v)| v.len()))
            .sum();
        n as f64 / self.bots.len().max(1) as f64
    }

    /// Bytes per entity update the clients received over the measured ticks (`None` if the
    /// benchmark was filtered out and never ran).
    pub fn bytes_per_entity_update(&self) -> Option<f64> {
        let (b, u) = self.bots.iter().fold((0u64, 0u64), |(b, u), (_, bot)| {
            (
                b + bot.metrics.snapshot_bytes,
                u + bot.metrics.entity_updates,
            )
        });
        (u > 0).then(|| b as f64 / u as f64)
    }
}
