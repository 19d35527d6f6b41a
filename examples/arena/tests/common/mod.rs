//! A two-shard arena in one process, and players driven the way a client drives them: a
//! connection, a `Hello`, commands on the control stream. What the shards send back to each
//! player (welcome, messages, closes) is collected per player.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the harness"
)]

use bevy_ecs::prelude::*;
use bytes::Bytes;
use glam::Vec3;
use std::sync::Arc;
use zonescaler_arena::{ArenaPlugin, ArenaRules, ArenaStats};
use zonescaler_net::{NetCommand, NetEvent};
use zonescaler_server::app::GameSetup;
use zonescaler_server::cluster::LocalCluster;
use zonescaler_server::core::components::{
    InTransit, MoveTarget, NetIndex, Networked, Owned, Position, Proxy,
};
use zonescaler_shared::codec;
use zonescaler_shared::components::GameCommand;
use zonescaler_shared::config::WorldConfig;
use zonescaler_shared::protocol::{
    ClientCommand, ClientControl, ErrorCode, Hello, PlayerMessage, ServerControl,
};
use zonescaler_shared::{ConnId, NetId, ShardId};

/// A 512 m x 512 m world of 64 m cells, no NPCs of its own: small, so the tests place what
/// they need.
pub fn small_world() -> WorldConfig {
    let mut cfg = WorldConfig::default();
    cfg.world.min_x = -256.0;
    cfg.world.min_z = -256.0;
    cfg.world.max_x = 256.0;
    cfg.world.max_z = 256.0;
    cfg.world.base_cell_size_m = 64.0;
    cfg.npc.count = 0;
    cfg
}

/// Rules with no pickups of the game's own (tests spawn theirs).
pub fn quiet_rules() -> ArenaRules {
    ArenaRules {
        pickups: 0,
        ..ArenaRules::default()
    }
}

/// One player, as its client sees it.
#[derive(Debug)]
pub struct Client {
    pub name: String,
    pub shard: usize,
    pub conn: ConnId,
    pub id: Option<NetId>,
    pub messages: Vec<PlayerMessage>,
    pub closed: Option<(ErrorCode, String)>,
    /// The shard and token of the last `Redirect` not yet followed.
    pub redirect: Option<(usize, Vec<u8>)>,
}

/// One cell side of border between the two shards: shard `near` owns the cell on one side,
/// shard `far` the cell on the other.
#[derive(Clone, Copy, Debug)]
pub struct Border {
    /// The middle of the shared cell side.
    pub mid: Vec3,
    /// Unit vector across the border, from `near`'s cell into `far`'s.
    pub across: Vec3,
    /// Unit vector along the border.
    pub along: Vec3,
    /// Half the length of the shared side.
    pub half_len: f32,
    pub near: usize,
    pub far: usize,
}

impl Border {
    /// The point `across_m` metres across the border (negative: on `near`'s side) and
    /// `along_m` along it from the middle.
    pub fn point(&self, across_m: f32, along_m: f32) -> Vec3 {
        self.mid + self.across * across_m + self.along * along_m
    }
}

pub struct Arena {
    pub cluster: LocalCluster,
    pub cfg: WorldConfig,
    pub clients: Vec<Client>,
    next_conn: u64,
}

impl Arena {
    pub fn new(cfg: WorldConfig, rules: ArenaRules) -> Self {
        let game: GameSetup = Arc::new(move |app| {
            app.add_plugins(ArenaPlugin {
                rules: rules.clone(),
            });
        });
        let cluster = LocalCluster::new(cfg.clone(), 2, &game).expect("two shards");
        Self {
            cluster,
            cfg,
            clients: Vec::new(),
            next_conn: 1,
        }
    }

    pub fn world(&mut self, shard: usize) -> &mut World {
        &mut self.cluster.shards[shard].world
    }

    /// One tick of both shards; what they sent each player is filed under it.
    pub fn step(&mut self) {
        let out = self.cluster.step();
        for (shard, commands) in out.into_iter().enumerate() {
            for cmd in commands {
                let (conn, what) = match cmd {
                    NetCommand::Control { conn, bytes } => (conn, Some(bytes)),
                    NetCommand::Close { conn, code, reason } => {
                        if let Some(c) = self.client_at(shard, conn) {
                            c.closed = Some((code, reason));
                        }
                        continue;
                    }
                    NetCommand::Datagram { .. } => continue,
                };
                let Some(c) = self.client_at(shard, conn) else {
                    continue;
                };
                let Some(bytes) = what else { continue };
                match codec::decode_server_control(&bytes).expect("the shard sends valid control") {
                    ServerControl::Welcome(w) => c.id = Some(w.avatar),
                    ServerControl::Message(m) => c.messages.push(m),
                    ServerControl::Redirect(r) => {
                        c.redirect = Some((usize::from(r.shard.0), r.token));
                    }
                    ServerControl::Error(e) => c.closed = Some((e.code, e.detail)),
                    ServerControl::CellMap(_)
                    | ServerControl::Queued(_)
                    | ServerControl::Prepare(_)
                    | ServerControl::Resume(_) => {}
                }
            }
        }
    }

    pub fn steps(&mut self, n: usize) {
        for _ in 0..n {
            self.step();
        }
    }

    fn client_at(&mut self, shard: usize, conn: ConnId) -> Option<&mut Client> {
        self.clients
            .iter_mut()
            .find(|c| c.shard == shard && c.conn == conn)
    }

    /// Log `name` in on `shard` and step until it plays there (the master confirms the account
    /// first). Returns the player's index.
    pub fn login(&mut self, shard: usize, name: &str) -> usize {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        let hash = self.cluster.shards[shard].protocol_hash();
        let app = &mut self.cluster.shards[shard];
        app.push_event(NetEvent::Connected {
            conn,
            max_datagram_bytes: 1_200,
        });
        let hello = ClientControl::Hello(Hello {
            protocol_hash: hash,
            name: name.into(),
            ticket: None,
            token: None,
            resume: None,
        });
        app.push_event(NetEvent::Control {
            conn,
            bytes: Bytes::from(codec::encode(&hello)),
        });
        self.clients.push(Client {
            name: name.into(),
            shard,
            conn,
            id: None,
            messages: Vec::new(),
            closed: None,
            redirect: None,
        });
        let i = self.clients.len() - 1;
        for _ in 0..10 {
            self.step();
            if self.clients[i].id.is_some() {
                return i;
            }
        }
        panic!(
            "{name} was not welcomed on shard {shard}: {:?}",
            self.clients[i]
        );
    }

    /// Follow `player`'s redirect as a client does: connect to the shard it names with the
    /// token, and step until welcomed there (the avatar keeps its id).
    pub fn follow(&mut self, player: usize) {
        let (to, token) = self.clients[player]
            .redirect
            .take()
            .expect("a redirect to follow");
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        let hash = self.cluster.shards[to].protocol_hash();
        let app = &mut self.cluster.shards[to];
        app.push_event(NetEvent::Connected {
            conn,
            max_datagram_bytes: 1_200,
        });
        let hello = ClientControl::Hello(Hello {
            protocol_hash: hash,
            name: String::new(),
            ticket: None,
            token: Some(token),
            resume: None,
        });
        app.push_event(NetEvent::Control {
            conn,
            bytes: Bytes::from(codec::encode(&hello)),
        });
        let old = (self.clients[player].shard, self.clients[player].conn);
        let was = self.clients[player].id.take();
        self.clients[player].shard = to;
        self.clients[player].conn = conn;
        for _ in 0..5 {
            self.step();
            if self.clients[player].id.is_some() {
                assert_eq!(self.clients[player].id, was, "the avatar keeps its id");
                // The old connection is the client's to close once it plays on the new shard.
                self.cluster.shards[old.0].push_event(NetEvent::Disconnected {
                    conn: old.1,
                    reason: "followed a redirect".into(),
                });
                return;
            }
        }
        panic!("player {player} was not welcomed on shard {to}");
    }

    pub fn id(&self, player: usize) -> NetId {
        self.clients[player].id.expect("logged in")
    }

    /// Send a client command as `player`'s client would.
    pub fn send<T: GameCommand>(&mut self, player: usize, command: &T) {
        let shard = self.clients[player].shard;
        let kind = self.cluster.shards[shard]
            .registry()
            .protocol
            .client_kind_of(T::NAME)
            .expect("a client command");
        self.send_raw(player, kind, bitcode::encode(command));
    }

    /// Send a client command of wire number `kind` with any bytes at all.
    pub fn send_raw(&mut self, player: usize, kind: u8, bytes: Vec<u8>) {
        let c = &self.clients[player];
        let msg = ClientControl::Command(ClientCommand { kind, bytes });
        let conn = c.conn;
        self.cluster.shards[c.shard].push_event(NetEvent::Control {
            conn,
            bytes: Bytes::from(codec::encode(&msg)),
        });
    }

    pub fn entity(&mut self, shard: usize, id: NetId) -> Option<Entity> {
        self.world(shard).resource::<NetIndex>().0.get(&id).copied()
    }

    /// The shards holding `id` as owned, in transit, and as proxy.
    pub fn holders(&mut self, id: NetId) -> (Vec<usize>, Vec<usize>, Vec<usize>) {
        let (mut owned, mut transit, mut proxy) = (Vec::new(), Vec::new(), Vec::new());
        for s in 0..self.cluster.shards.len() {
            let Some(e) = self.entity(s, id) else {
                continue;
            };
            let w = self.world(s);
            if w.get::<Owned>(e).is_some() {
                owned.push(s);
            }
            if w.get::<InTransit>(e).is_some() {
                transit.push(s);
            }
            if w.get::<Proxy>(e).is_some() {
                proxy.push(s);
            }
        }
        (owned, transit, proxy)
    }

    /// The one shard that owns `id`.
    pub fn owner(&mut self, id: NetId) -> usize {
        let (owned, _, _) = self.holders(id);
        assert_eq!(
            owned.len(),
            1,
            "{id} must be owned by exactly one shard: {owned:?}"
        );
        owned[0]
    }

    /// Component `T` of `id` as shard `shard` holds it (owned or proxy).
    pub fn get<T: Component + Clone>(&mut self, shard: usize, id: NetId) -> Option<T> {
        let e = self.entity(shard, id)?;
        self.world(shard).get::<T>(e).cloned()
    }

    /// `T` of `id` on its owner.
    pub fn get_owned<T: Component + Clone>(&mut self, id: NetId) -> Option<T> {
        let s = self.owner(id);
        self.get::<T>(s, id)
    }

    /// Put `id` at `at` on its owner and keep it there (a test's hand, not a game system).
    pub fn teleport(&mut self, id: NetId, at: Vec3) {
        let s = self.owner(id);
        let e = self.entity(s, id).expect("owned");
        let mut ent = self.world(s).entity_mut(e);
        ent.insert(Position(at));
        if let Some(mut mt) = ent.get_mut::<MoveTarget>() {
            mt.target = at;
        }
    }

    pub fn stats(&mut self, shard: usize) -> ArenaStats {
        self.world(shard).resource::<ArenaStats>().clone()
    }

    /// Every cell side the two shards share, in a fixed order.
    pub fn borders(&self) -> Vec<Border> {
        let w = &self.cfg.world;
        let cell = w.base_cell_size_m;
        let cols = ((w.max_x - w.min_x) / cell).round() as i32;
        let rows = ((w.max_z - w.min_z) / cell).round() as i32;
        let owner = |cx: i32, cz: i32| {
            let p = [
                w.min_x + (cx as f32 + 0.5) * cell,
                w.min_z + (cz as f32 + 0.5) * cell,
            ];
            self.cluster.map.owner_at(p).map(|s| usize::from(s.0))
        };
        let mut out = Vec::new();
        for cz in 0..rows {
            for cx in 0..cols {
                let Some(here) = owner(cx, cz) else { continue };
                let x0 = w.min_x + cx as f32 * cell;
                let z0 = w.min_z + cz as f32 * cell;
                let sides = [
                    (
                        cx + 1,
                        cz,
                        Vec3::new(x0 + cell, 0.0, z0 + cell / 2.0),
                        Vec3::X,
                        Vec3::Z,
                    ),
                    (
                        cx,
                        cz + 1,
                        Vec3::new(x0 + cell / 2.0, 0.0, z0 + cell),
                        Vec3::Z,
                        Vec3::X,
                    ),
                ];
                for (nx, nz, mid, across, along) in sides {
                    if nx >= cols || nz >= rows {
                        continue;
                    }
                    if let Some(there) = owner(nx, nz)
                        && there != here
                    {
                        out.push(Border {
                            mid,
                            across,
                            along,
                            half_len: cell / 2.0,
                            near: here,
                            far: there,
                        });
                    }
                }
            }
        }
        out
    }

    /// A cell centre owned by `shard` with every point within `margin` metres owned by it too
    /// (far from any border).
    pub fn deep_inside(&self, shard: usize, margin: f32) -> Vec3 {
        let w = &self.cfg.world;
        let cell = w.base_cell_size_m;
        let mut z = w.min_z + cell / 2.0;
        while z < w.max_z {
            let mut x = w.min_x + cell / 2.0;
            while x < w.max_x {
                let ok = [
                    (0.0, 0.0),
                    (margin, 0.0),
                    (-margin, 0.0),
                    (0.0, margin),
                    (0.0, -margin),
                ]
                .iter()
                .all(|(dx, dz)| {
                    self.cluster
                        .map
                        .owner_at([x + dx, z + dz])
                        .is_some_and(|s| usize::from(s.0) == shard)
                });
                if ok {
                    return Vec3::new(x, 0.0, z);
                }
                x += cell;
            }
            z += cell;
        }
        panic!("shard {shard} owns no point {margin} m from its borders");
    }

    /// The shard that owns the ground under `p`.
    pub fn owner_at(&self, p: Vec3) -> usize {
        let s: ShardId = self
            .cluster
            .map
            .owner_at([p.x, p.z])
            .expect("inside the world");
        usize::from(s.0)
    }
}

/// Every networked entity of `world` with `T`, by id.
pub fn all_with<T: Component + Clone>(world: &mut World) -> Vec<(NetId, T)> {
    world
        .query::<(&Networked, &T)>()
        .iter(world)
        .map(|(n, t)| (n.0, t.clone()))
        .collect()
}

/// A tiny seeded generator for placements (the tests' own, so changing the game's use of
/// `ShardRng` does not move them).
pub struct Seq(pub u64);

impl Seq {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next() >> 40) as f32 / (1u64 << 24) as f32)
    }
}
