#![allow(
    dead_code,
    reason = "each test binary uses a different part of this shared harness"
)]

//! A shard app and clients connected without sockets: events in, commands out.

use bytes::Bytes;
use zonescaler_bots::{BotClient, BotConfig, Scenario};
use zonescaler_net::{NetCommand, NetEvent};
use zonescaler_server::ShardApp;
use zonescaler_shared::ConnId;
use zonescaler_shared::config::WorldConfig;
use zonescaler_shared::protocol::ErrorCode;

pub struct Harness {
    pub app: ShardApp,
    pub bots: Vec<(ConnId, BotClient)>,
    /// Every command the shard issued, per tick, for assertions.
    pub log: Vec<NetCommand>,
    now_us: u64,
}

pub fn small_world(npcs: usize) -> WorldConfig {
    let mut cfg = WorldConfig::default();
    cfg.world.min_x = -100.0;
    cfg.world.min_z = -100.0;
    cfg.world.max_x = 100.0;
    cfg.world.max_z = 100.0;
    cfg.npc.count = npcs;
    cfg
}

impl Harness {
    pub fn new(cfg: WorldConfig) -> Self {
        Self {
            app: ShardApp::example(cfg),
            bots: Vec::new(),
            log: Vec::new(),
            now_us: 0,
        }
    }

    /// Connect a bot on `conn` and log it in (one tick for Hello → Welcome).
    pub fn connect(&mut self, conn: u64) -> usize {
        let conn = ConnId(conn);
        let mut bot = BotClient::new(BotConfig::new(
            format!("t{}", conn.0),
            Scenario::Idle,
            conn.0,
        ));
        self.app.push_event(NetEvent::Connected {
            conn,
            max_datagram_bytes: 1_200,
        });
        let hello = bot.hello(self.now_us);
        self.app.push_event(NetEvent::Control {
            conn,
            bytes: Bytes::from(hello),
        });
        self.bots.push((conn, bot));
        self.step();
        self.bots.len() - 1
    }

    /// One tick: the shard runs, its commands reach the bots, and each logged-in bot sends an input.
    pub fn step(&mut self) {
        self.step_holding(None);
    }

    /// [`Self::step`], except that bot `held` (if any) reads none of this tick's datagrams: a
    /// client too slow to keep up, which goes on sending inputs that acknowledge an old tick.
    /// Returns how many datagrams the shard sent it.
    pub fn step_holding(&mut self, held: Option<usize>) -> usize {
        let held = held.map(|i| self.bots[i].0);
        let mut withheld = 0;
        self.now_us += 33_333;
        self.app.tick();
        let cmds = self.app.drain_outbox();
        for cmd in &cmds {
            let Some((_, bot)) = self.bots.iter_mut().find(|(c, _)| *c == cmd.conn()) else {
                continue;
            };
            match cmd {
                NetCommand::Control { bytes, .. } => {
                    let _ = bot.on_control(self.now_us, bytes);
                }
                NetCommand::Datagram { conn, .. } if Some(*conn) == held => withheld += 1,
                NetCommand::Datagram { bytes, .. } => bot.on_datagram(self.now_us, bytes),
                NetCommand::Close { .. } => {}
            }
        }
        self.log.extend(cmds);
        for (conn, bot) in &mut self.bots {
            if let Some(input) = bot.next_input(self.now_us) {
                self.app.push_event(NetEvent::Datagram {
                    conn: *conn,
                    bytes: Bytes::from(input),
                });
            }
        }
        withheld
    }

    pub fn raw(&mut self, event: NetEvent) {
        self.app.push_event(event);
    }

    /// The close code issued for `conn`, if any.
    pub fn closed(&self, conn: u64) -> Option<ErrorCode> {
        self.log.iter().find_map(|c| match c {
            NetCommand::Close { conn: c, code, .. } if c.0 == conn => Some(*code),
            _ => None,
        })
    }

    /// Snapshots fully applied by bot `i` so far.
    pub fn snapshots(&self, i: usize) -> u64 {
        self.bots[i].1.metrics.snapshots
    }
}
