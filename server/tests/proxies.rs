//! Two shards, one world: entities near the border are mirrored to the neighbour as read-only
//! proxies, kept in step, and removed when they leave the border zone; a client near the border
//! sees the other shard's entities.

use bytes::Bytes;
use std::collections::BTreeMap;
use zonescaler_bots::{BotClient, BotConfig, Scenario};
use zonescaler_net::{NetCommand, NetEvent};
use zonescaler_server::app::demo_game;
use zonescaler_server::cluster::LocalCluster;
use zonescaler_server::core::components::{Avatar, MoveTarget, Networked, Owned, Position, Proxy};
use zonescaler_shared::cellmap::CellMap;
use zonescaler_shared::config::WorldConfig;
use zonescaler_shared::quant::QPos;
use zonescaler_shared::{ConnId, NetId, ShardId};

struct Cluster {
    inner: LocalCluster,
    map: CellMap,
    cfg: WorldConfig,
}

impl std::ops::Deref for Cluster {
    type Target = LocalCluster;
    fn deref(&self) -> &LocalCluster {
        &self.inner
    }
}

impl std::ops::DerefMut for Cluster {
    fn deref_mut(&mut self) -> &mut LocalCluster {
        &mut self.inner
    }
}

impl Cluster {
    fn new(npcs_per_shard: usize) -> Self {
        let mut cfg = WorldConfig::default();
        cfg.npc.count = npcs_per_shard;
        let inner = LocalCluster::new(cfg.clone(), 2, &demo_game()).expect("two shards");
        let map = inner.map.clone();
        Self { inner, map, cfg }
    }

    /// Owned entities of shard `i`: id → (quantised position, exact ground position).
    fn owned(&mut self, i: usize) -> BTreeMap<NetId, (QPos, [f32; 2])> {
        let w = &mut self.shards[i].world;
        w.query_filtered::<(&Networked, &Position), bevy_ecs::query::With<Owned>>()
            .iter(w)
            .map(|(n, p)| (n.0, (p.quantized(), [p.0.x, p.0.z])))
            .collect()
    }

    /// Proxies on shard `i`: id → (owner, quantised position).
    fn proxies(&mut self, i: usize) -> BTreeMap<NetId, (ShardId, QPos)> {
        let w = &mut self.shards[i].world;
        w.query::<(&Networked, &Position, &Proxy)>()
            .iter(w)
            .map(|(n, p, x)| (n.0, (x.owner, p.quantized())))
            .collect()
    }

    /// Is `p` within the interest radius of a cell owned by `shard`? (Brute force over leaves,
    /// on the exact position the shard itself decides from.)
    fn near_cells_of(&self, p: [f32; 2], shard: ShardId) -> bool {
        let r = self.cfg.interest.interest_radius_m;
        self.map.leaves().iter().any(|(cell, owner)| {
            *owner == shard && self.map.grid().rect(*cell).intersects_circle(p, r)
        })
    }
}

#[test]
fn proxies_track_their_owners_and_leave_with_them() {
    let mut c = Cluster::new(1_500);
    let mut before = [c.owned(0), c.owned(1)];
    let mut max_proxies = 0;
    let mut removals = 0;
    let mut last_proxies = [BTreeMap::new(), BTreeMap::new()];
    for tick in 0..120 {
        c.step();
        for (me, other) in [(0usize, 1usize), (1, 0)] {
            let proxies = c.proxies(me);
            max_proxies = max_proxies.max(proxies.len());
            // Messages sent at tick T are applied at T + 1: proxies equal the owner one tick ago.
            for (id, (owner, pos)) in &proxies {
                assert_eq!(
                    *owner,
                    ShardId(other as u16),
                    "tick {tick}: proxy {id} names its owner"
                );
                let (owner_pos, _) = before[other]
                    .get(id)
                    .unwrap_or_else(|| panic!("tick {tick}: proxy {id} has no owned original"));
                assert_eq!(
                    pos, owner_pos,
                    "tick {tick}: proxy {id} must match its owner's last state"
                );
            }
            // Exactly the owner's entities that were near this shard's cells are mirrored here.
            if tick > 0 {
                let expected: Vec<NetId> = before[other]
                    .iter()
                    .filter(|(_, (_, xz))| c.near_cells_of(*xz, ShardId(me as u16)))
                    .map(|(id, _)| *id)
                    .collect();
                let got: Vec<NetId> = proxies.keys().copied().collect();
                assert_eq!(
                    got, expected,
                    "tick {tick}: shard {me} must hold proxies of exactly the border entities"
                );
            }
        }
        for (i, last) in last_proxies.iter_mut().enumerate() {
            let now = c.proxies(i);
            removals += last.keys().filter(|id| !now.contains_key(*id)).count();
            *last = now;
        }
        before = [c.owned(0), c.owned(1)];
    }
    assert!(
        max_proxies > 20,
        "the border zone must hold a real number of proxies ({max_proxies})"
    );
    assert!(
        removals > 0,
        "entities wandered out of the border zone and their proxies went with them"
    );
    // No proxy is ever simulated: nothing but the link writes its position, checked above.
    assert_eq!(
        c.shards[0]
            .world
            .query::<(&Proxy, &Owned)>()
            .iter(&c.shards[0].world)
            .count(),
        0,
        "a proxy is never owned"
    );
}

#[test]
fn a_bot_near_a_border_sees_entities_owned_by_the_other_shard() {
    let mut c = Cluster::new(3_000);
    // Find the border along the z axis at x = 0: the last point shard 0 owns.
    let mut z = c.cfg.world.min_z;
    while c.map.owner_at([0.0, z + 1.0]) == Some(ShardId(0)) {
        z += 1.0;
    }
    assert_eq!(
        c.map.owner_at([0.0, z + 2.0]),
        Some(ShardId(1)),
        "a border between the shards at z = {z}"
    );
    let spot = glam::Vec3::new(0.0, 0.0, z - 10.0);

    let conn = ConnId(1);
    let mut bot = BotClient::new(BotConfig::new("border", Scenario::Idle, 1));
    c.shards[0].push_event(NetEvent::Connected {
        conn,
        max_datagram_bytes: 1_200,
    });
    c.shards[0].push_event(NetEvent::Control {
        conn,
        bytes: Bytes::from(bot.hello(0)),
    });
    let mut now = 0;
    let mut placed = false;
    for _tick in 0..40 {
        if !placed {
            // Once the login went through (the master confirms the account first), stand the
            // avatar 10 m from the border, on shard 0's side.
            let w = &mut c.shards[0].world;
            let mut q = w.query::<(&Avatar, &mut Position, &mut MoveTarget)>();
            for (_, mut p, mut t) in q.iter_mut(w) {
                p.0 = spot;
                t.target = spot;
                placed = true;
            }
        }
        now += 33_333;
        let out = c.step();
        for cmd in &out[0] {
            match cmd {
                NetCommand::Control { bytes, .. } => {
                    bot.on_control(now, bytes).expect("welcome");
                }
                NetCommand::Datagram { bytes, .. } => bot.on_datagram(now, bytes),
                NetCommand::Close { .. } => panic!("the bot must not be closed"),
            }
        }
        if let Some(input) = bot.next_input(now) {
            c.shards[0].push_event(NetEvent::Datagram {
                conn,
                bytes: Bytes::from(input),
            });
        }
    }
    let (_, view) = bot.view().expect("snapshots arrived");
    let foreign: Vec<NetId> = view
        .keys()
        .copied()
        .filter(|id| id.origin() == ShardId(1))
        .collect();
    assert!(
        !foreign.is_empty(),
        "a bot 10 m from the border must see shard 1's entities (sees {} in all)",
        view.len()
    );
    let owned_by_1 = c.owned(1);
    for id in &foreign {
        assert!(owned_by_1.contains_key(id), "{id} is simulated by shard 1");
    }
    assert!(
        bot.metrics.errors.is_empty(),
        "no client errors: {:?}",
        bot.metrics.errors
    );
}

/// A game system that forgets `With<Owned>` and moves everything, proxies included.
fn careless_push(mut q: bevy_ecs::system::Query<&mut Position>) {
    for mut p in &mut q {
        p.0.x += 0.01;
    }
}

#[test]
#[should_panic(expected = "error[Z0001]")]
fn writing_a_proxy_fails_loudly_in_debug_builds() {
    let mut c = Cluster::new(1_500);
    c.shards[0].add_systems(zonescaler_server::ShardSystems::Simulate, careless_push);
    for _ in 0..10 {
        c.step();
    }
}
