//! The master role: membership, the cell map, the player directory, and the cluster view.
//!
//! A pure state machine, as the rest of the shard is: the runtime feeds it joins, heartbeats and
//! the clock (`now_ms`), and sends what it returns. One shard process holds it (shard 0).
//!
//! - **Membership**: shards join with their client and link addresses and a capacity weight and
//!   get the next id. The master waits for `expected` members (itself included), then places the
//!   base cells as contiguous regions in proportion to the weights ([`assign_contiguous`]) and
//!   pushes the map to everyone. A shard that joins after that is refused: it would own no cells,
//!   and moving cells to it is the balancer's job, which this build does not have.
//! - **Liveness**: every shard reports its load every [`limits::HEARTBEAT_MS`]; one silent for
//!   [`limits::SHARD_DEAD_AFTER_MS`] is marked dead (reported by the API and logged; recovering
//!   its cells is failover, not built yet).
//! - **Player directory**: which shard each logged-in player is on, from the arrivals and
//!   departures in the heartbeats.

use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use zonescaler_shared::ShardId;
use zonescaler_shared::cellmap::{CellGrid, CellMap, CellMapError, assign_contiguous};
use zonescaler_shared::limits;
use zonescaler_shared::protocol::{JoinRequest, MapPush, MemberInfo, ShardLoad};

/// One member as the master knows it.
#[derive(Clone, Debug)]
pub struct Member {
    pub info: MemberInfo,
    pub alive: bool,
    pub last_heard_ms: u64,
    pub load: ShardLoad,
}

/// Why a join was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JoinRefused {
    #[error(
        "the cluster already placed its cells on {0} shards; a late joiner would own nothing \
         (moving cells to new shards needs the load balancer)"
    )]
    AlreadyPlaced(usize),
    #[error("the cluster is full ({} shards)", limits::SHARDS_MAX)]
    Full,
    #[error("capacity weight must be 1..=1000 (got {0})")]
    BadWeight(u32),
}

/// The master's whole state.
#[derive(Debug)]
pub struct Master {
    grid: CellGrid,
    expected: usize,
    members: BTreeMap<ShardId, Member>,
    map: Option<CellMap>,
    /// Shared with the views handed out (copied only when it changes while one holds it).
    players: Arc<BTreeMap<String, ShardId>>,
}

impl Master {
    /// A master that is itself member 0 and waits for `expected` members in all.
    pub fn new(grid: CellGrid, expected: usize, me: MemberInfo, now_ms: u64) -> Self {
        let mut members = BTreeMap::new();
        members.insert(
            me.id,
            Member {
                info: me,
                alive: true,
                last_heard_ms: now_ms,
                load: ShardLoad::default(),
            },
        );
        Self {
            grid,
            expected: expected.max(1),
            members,
            map: None,
            players: Arc::default(),
        }
    }

    /// Admit a shard; its id.
    pub fn join(&mut self, req: JoinRequest, now_ms: u64) -> Result<ShardId, JoinRefused> {
        if self.map.is_some() {
            return Err(JoinRefused::AlreadyPlaced(self.members.len()));
        }
        if self.members.len() >= limits::SHARDS_MAX {
            return Err(JoinRefused::Full);
        }
        if !(1..=1_000).contains(&req.weight) {
            return Err(JoinRefused::BadWeight(req.weight));
        }
        let id = ShardId(self.members.keys().next_back().map_or(0, |last| last.0 + 1));
        self.members.insert(
            id,
            Member {
                info: MemberInfo {
                    id,
                    client_addr: req.client_addr,
                    link_addr: req.link_addr,
                    weight: req.weight,
                },
                alive: true,
                last_heard_ms: now_ms,
                load: ShardLoad::default(),
            },
        );
        Ok(id)
    }

    /// Whether every expected member is here and the map is not placed yet.
    pub fn ready_to_place(&self) -> bool {
        self.map.is_none() && self.members.len() >= self.expected
    }

    /// Place the base cells on the members (contiguous regions by weight): the map to push.
    pub fn place(&mut self) -> Result<MapPush, CellMapError> {
        let weights: Vec<(ShardId, u32)> = self
            .members
            .values()
            .map(|m| (m.info.id, m.info.weight))
            .collect();
        let map = assign_contiguous(&self.grid, &weights)?;
        let push = Self::push_of(&map, &self.members);
        self.map = Some(map);
        Ok(push)
    }

    fn push_of(map: &CellMap, members: &BTreeMap<ShardId, Member>) -> MapPush {
        MapPush {
            epoch: map.epoch().0,
            leaves: map.leaves().iter().map(|(c, s)| (*c, *s)).collect(),
            members: members.values().map(|m| m.info.clone()).collect(),
        }
    }

    pub fn map(&self) -> Option<&CellMap> {
        self.map.as_ref()
    }

    pub fn members(&self) -> &BTreeMap<ShardId, Member> {
        &self.members
    }

    /// A shard's load report. Arrivals and departures update the player directory.
    pub fn heartbeat(&mut self, from: ShardId, load: ShardLoad, now_ms: u64) {
        if !load.players_left.is_empty() || !load.players_arrived.is_empty() {
            let players = Arc::make_mut(&mut self.players);
            for name in &load.players_left {
                if players.get(name) == Some(&from) {
                    players.remove(name);
                }
            }
            for name in &load.players_arrived {
                if players.len() < limits::SHARDS_MAX * limits::CLIENTS_PER_SHARD_MAX {
                    players.insert(name.clone(), from);
                }
            }
        }
        if let Some(m) = self.members.get_mut(&from) {
            m.alive = true;
            m.last_heard_ms = now_ms;
            m.load = ShardLoad {
                players_arrived: Vec::new(),
                players_left: Vec::new(),
                ..load
            };
        }
    }

    /// Mark members silent for too long as dead; the ones newly marked.
    pub fn check_liveness(&mut self, now_ms: u64) -> Vec<ShardId> {
        let mut dead = Vec::new();
        for m in self.members.values_mut() {
            if m.alive && now_ms.saturating_sub(m.last_heard_ms) > limits::SHARD_DEAD_AFTER_MS {
                m.alive = false;
                dead.push(m.info.id);
            }
        }
        dead
    }

    /// The shard a player is on, per the directory.
    pub fn player(&self, name: &str) -> Option<ShardId> {
        self.players.get(name).copied()
    }

    /// What `GET /api/cluster` returns.
    pub fn view(&self) -> ClusterView {
        let cells_of = |id: ShardId| {
            self.map
                .as_ref()
                .map_or(0, |m| m.leaves().values().filter(|s| **s == id).count())
        };
        let shards: Vec<ShardView> = self
            .members
            .values()
            .map(|m| ShardView {
                id: m.info.id.0,
                addr: m.info.client_addr.clone(),
                link_addr: m.info.link_addr.clone(),
                alive: m.alive,
                weight: m.info.weight,
                cells: cells_of(m.info.id),
                owned_entities: m.load.owned_entities,
                in_transit: m.load.in_transit,
                proxies: m.load.proxies,
                clients: m.load.clients,
                tick: m.load.tick,
                tick_ms_p99: m.load.tick_ms_p99,
                handoffs_out: m.load.handoffs_out,
                handoffs_in: m.load.handoffs_in,
                handoff_transit_ms_p99: m.load.handoff_transit_ms_p99,
            })
            .collect();
        ClusterView {
            epoch: self.map.as_ref().map_or(0, |m| m.epoch().0),
            placed: self.map.is_some(),
            expected_shards: self.expected,
            total_entities: shards
                .iter()
                .map(|s| u64::from(s.owned_entities) + u64::from(s.in_transit))
                .sum(),
            handoffs_total: shards.iter().map(|s| s.handoffs_out).sum(),
            players: self.players.len(),
            shards,
            directory: self.players.clone(),
        }
    }
}

/// The cluster as the master sees it (`GET /api/cluster`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct ClusterView {
    pub epoch: u64,
    /// Whether the cells have been placed (every expected shard joined).
    pub placed: bool,
    pub expected_shards: usize,
    /// Entities owned by some shard, or frozen in a handoff (each counted once).
    pub total_entities: u64,
    /// Handoffs completed, cluster-wide.
    pub handoffs_total: u64,
    /// Players in the directory.
    pub players: usize,
    pub shards: Vec<ShardView>,
    /// The player directory itself (name → shard), for `GET /api/players/{name}`; not part of
    /// `/api/cluster`, which stays the same size however many players log in.
    #[serde(skip)]
    pub directory: Arc<BTreeMap<String, ShardId>>,
}

/// What `GET /api/players/{name}` says of a logged-in player.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlayerView {
    pub name: String,
    /// The shard the player is on.
    pub shard: u16,
    /// Where that shard takes client connections.
    pub addr: String,
}

impl ClusterView {
    /// Where the directory says `name` is, with that shard's client address.
    pub fn player(&self, name: &str) -> Option<PlayerView> {
        let shard = *self.directory.get(name)?;
        Some(PlayerView {
            name: name.to_owned(),
            shard: shard.0,
            addr: self
                .shards
                .iter()
                .find(|s| s.id == shard.0)
                .map(|s| s.addr.clone())
                .unwrap_or_default(),
        })
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ShardView {
    pub id: u16,
    /// Where its clients connect.
    pub addr: String,
    pub link_addr: String,
    pub alive: bool,
    pub weight: u32,
    pub cells: usize,
    pub owned_entities: u32,
    pub in_transit: u32,
    pub proxies: u32,
    pub clients: u32,
    pub tick: u64,
    pub tick_ms_p99: f32,
    pub handoffs_out: u64,
    pub handoffs_in: u64,
    pub handoff_transit_ms_p99: f32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use zonescaler_shared::config::WorldConfig;

    fn info(addr: &str) -> MemberInfo {
        MemberInfo {
            id: ShardId(0),
            client_addr: addr.into(),
            link_addr: addr.into(),
            weight: 1,
        }
    }

    fn join(addr: &str, weight: u32) -> JoinRequest {
        JoinRequest {
            client_addr: addr.into(),
            link_addr: addr.into(),
            weight,
        }
    }

    #[test]
    fn members_join_then_cells_are_placed_by_weight_and_late_joiners_refused() {
        let grid = CellGrid::from_config(&WorldConfig::default());
        let mut m = Master::new(grid, 3, info("a"), 0);
        assert!(!m.ready_to_place(), "waits for every expected shard");
        assert_eq!(m.join(join("b", 1), 0), Ok(ShardId(1)));
        assert_eq!(m.join(join("c", 2), 0), Ok(ShardId(2)));
        assert_eq!(m.join(join("x", 0), 0), Err(JoinRefused::BadWeight(0)));
        assert!(m.ready_to_place());
        let push = m.place().expect("placement");
        assert_eq!(push.members.len(), 3);
        let count = |id: u16| push.leaves.iter().filter(|(_, s)| s.0 == id).count();
        assert_eq!(count(0) + count(1) + count(2), push.leaves.len());
        assert!(
            count(2) > count(0) && count(2) > count(1),
            "the weight-2 shard gets the most cells: {} {} {}",
            count(0),
            count(1),
            count(2)
        );
        assert_eq!(
            m.join(join("d", 1), 0),
            Err(JoinRefused::AlreadyPlaced(3)),
            "a late joiner is refused with the reason"
        );
    }

    #[test]
    fn silent_shards_are_declared_dead_and_heartbeats_fill_the_view_and_directory() {
        let grid = CellGrid::from_config(&WorldConfig::default());
        let mut m = Master::new(grid, 2, info("a"), 0);
        m.join(join("b", 1), 0).expect("join");
        m.place().expect("placement");
        let load = ShardLoad {
            owned_entities: 10,
            in_transit: 1,
            handoffs_out: 4,
            players_arrived: vec!["ann".into()],
            ..ShardLoad::default()
        };
        m.heartbeat(ShardId(1), load, 1_000);
        assert_eq!(m.player("ann"), Some(ShardId(1)));
        let v = m.view();
        assert_eq!((v.total_entities, v.handoffs_total, v.players), (11, 4, 1));
        assert_eq!(
            v.player("ann"),
            Some(PlayerView {
                name: "ann".into(),
                shard: 1,
                addr: "b".into()
            }),
            "the view says where a player is, and where to connect"
        );
        assert_eq!(v.player("bob"), None);
        // Ann moves to shard 0; shard 1's late report of her departure does not lose her.
        m.heartbeat(
            ShardId(0),
            ShardLoad {
                players_arrived: vec!["ann".into()],
                ..ShardLoad::default()
            },
            1_100,
        );
        m.heartbeat(
            ShardId(1),
            ShardLoad {
                players_left: vec!["ann".into()],
                ..ShardLoad::default()
            },
            1_200,
        );
        assert_eq!(m.view().player("ann").map(|p| p.shard), Some(0));
        // Shard 0 (the master itself) reports too; shard 1 then falls silent.
        m.heartbeat(ShardId(0), ShardLoad::default(), 4_500);
        assert_eq!(m.check_liveness(4_500), vec![ShardId(1)]);
        assert!(!m.view().shards[1].alive);
        assert!(m.check_liveness(5_000).is_empty(), "declared dead once");
    }
}
