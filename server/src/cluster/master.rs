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
//!   departures in the heartbeats, and the logins it granted. A login claims its account here
//!   first ([`Master::request`]): one session per account, cluster-wide; a second one takes the
//!   first over or is refused (`[login] duplicate`).
//! - **Messages to players**: a tell goes to the shard the directory has the player on (or back
//!   to its sender as "not online"); a shout goes to every live shard.
//! - **Events**: placement, joins and deaths, kept (the last [`EVENTS_MAX`]) for the dashboard.

use super::moves::{ActiveMove, MoveEnd, MoveError, MoveTable};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use zonescaler_shared::cellmap::{CellGrid, CellMap, CellMapError, assign_contiguous};
use zonescaler_shared::config::DuplicateLogin;
use zonescaler_shared::limits;
use zonescaler_shared::protocol::{
    ClaimOutcome, JoinRequest, MapPush, MasterNotice, MasterRequest, MemberInfo, MessageScope,
    PlayerMessage, ShardLoad,
};
use zonescaler_shared::{CellId, ShardId};

/// Events the master keeps for the dashboard (oldest forgotten first).
pub const EVENTS_MAX: usize = 256;

/// Something that happened to the cluster, for people to read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClusterEvent {
    /// The master's clock (Unix milliseconds in production).
    pub at_ms: u64,
    /// `joined`, `placed`, `dead`.
    pub kind: &'static str,
    pub text: String,
}

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
    duplicate: DuplicateLogin,
    events: VecDeque<ClusterEvent>,
    now_ms: u64,
    moves: MoveTable,
    move_timeout_ms: u64,
    /// Cell moves finished since start (the map flipped).
    pub moves_done: u64,
    /// Cell moves aborted since start (the source kept the cell).
    pub moves_aborted: u64,
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
            duplicate: DuplicateLogin::default(),
            events: VecDeque::new(),
            now_ms,
            moves: MoveTable::default(),
            move_timeout_ms: 20_000,
            moves_done: 0,
            moves_aborted: 0,
        }
    }

    /// How long a cell move may take before it is aborted (`cluster.cell_move_timeout_ms`).
    pub fn with_move_timeout(mut self, ms: u64) -> Self {
        self.move_timeout_ms = ms;
        self
    }

    /// The rule for a second login of a playing account (`[login] duplicate`).
    pub fn with_duplicate_rule(mut self, rule: DuplicateLogin) -> Self {
        self.duplicate = rule;
        self
    }

    fn event(&mut self, kind: &'static str, text: String) {
        if self.events.len() >= EVENTS_MAX {
            self.events.pop_front();
        }
        self.events.push_back(ClusterEvent {
            at_ms: self.now_ms,
            kind,
            text,
        });
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
        self.now_ms = now_ms;
        self.event(
            "joined",
            format!("shard {} joined from {}", id.0, req.client_addr),
        );
        self.members.insert(
            id,
            Member {
                info: MemberInfo {
                    id,
                    client_addr: req.client_addr,
                    link_addr: req.link_addr,
                    metrics_addr: req.metrics_addr,
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
        self.event(
            "placed",
            format!(
                "epoch {}: {} cells placed on {} shards",
                map.epoch().0,
                map.leaves().len(),
                self.members.len()
            ),
        );
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
        self.now_ms = now_ms;
        let mut dead = Vec::new();
        for m in self.members.values_mut() {
            if m.alive && now_ms.saturating_sub(m.last_heard_ms) > limits::SHARD_DEAD_AFTER_MS {
                m.alive = false;
                dead.push(m.info.id);
            }
        }
        for id in &dead {
            self.event(
                "dead",
                format!(
                    "shard {} silent for {} ms: declared dead",
                    id.0,
                    limits::SHARD_DEAD_AFTER_MS
                ),
            );
        }
        dead
    }

    /// A shard's request: the notices to send, to whom.
    pub fn request(
        &mut self,
        from: ShardId,
        req: MasterRequest,
        now_ms: u64,
    ) -> Vec<(ShardId, MasterNotice)> {
        self.now_ms = now_ms;
        match req {
            MasterRequest::Claim { account, session } => self.claim(from, account, session),
            MasterRequest::Tell { to, msg } => match self.players.get(&to) {
                Some(&holder) => vec![(holder, MasterNotice::Deliver { to: Some(to), msg })],
                None if msg.from.is_empty() => Vec::new(),
                None => vec![(
                    from,
                    MasterNotice::Deliver {
                        to: Some(msg.from.clone()),
                        msg: PlayerMessage {
                            from: String::new(),
                            text: format!("no player named {to} is online"),
                            scope: MessageScope::Tell,
                        },
                    },
                )],
            },
            MasterRequest::CellShipped { id } => self.finish_move(from, id),
            MasterRequest::Shout(msg) => self
                .members
                .values()
                .filter(|m| m.alive)
                .map(|m| {
                    (
                        m.info.id,
                        MasterNotice::Deliver {
                            to: None,
                            msg: msg.clone(),
                        },
                    )
                })
                .collect(),
        }
    }

    /// The map as every live member gets it: the notices that push it.
    fn map_notices(&self) -> Vec<(ShardId, MasterNotice)> {
        let Some(map) = &self.map else {
            return Vec::new();
        };
        let push = Self::push_of(map, &self.members);
        self.members
            .values()
            .filter(|m| m.alive)
            .map(|m| (m.info.id, MasterNotice::Map(push.clone())))
            .collect()
    }

    fn is_alive(&self, id: ShardId) -> bool {
        self.members.get(&id).is_some_and(|m| m.alive)
    }

    /// Start moving leaf `cell` to shard `to` (see [`super::moves`]): the notices for the
    /// cell's owner and `to`. The map changes when the owner has shipped the cell.
    pub fn move_cell(
        &mut self,
        cell: CellId,
        to: ShardId,
        now_ms: u64,
    ) -> Result<Vec<(ShardId, MasterNotice)>, MoveError> {
        self.now_ms = now_ms;
        let map = self.map.as_ref().ok_or(MoveError::NotPlaced)?;
        let from = map.owner_of(cell).ok_or(MoveError::NotALeaf(cell))?;
        if from == to {
            return Err(MoveError::SameOwner(to.0, cell));
        }
        for s in [from, to] {
            if !self.is_alive(s) {
                return Err(MoveError::NotAlive(s.0));
            }
        }
        let m = self.moves.open(cell, from, to, now_ms)?;
        self.event(
            "move",
            format!("cell {cell} moving from shard {} to shard {}", from.0, to.0),
        );
        let notice = MasterNotice::MoveCell {
            id: m.id,
            cell,
            from,
            to,
        };
        Ok(vec![(from, notice.clone()), (to, notice)])
    }

    /// Moves under way.
    pub fn moves(&self) -> impl Iterator<Item = &ActiveMove> {
        self.moves.active()
    }

    /// The source of move `id` shipped the cell: flip it and push the map.
    fn finish_move(&mut self, from: ShardId, id: u64) -> Vec<(ShardId, MasterNotice)> {
        let Some(m) = self.moves.shipped(id, from) else {
            return Vec::new();
        };
        let Some(map) = self.map.as_mut() else {
            return Vec::new();
        };
        match map.reassign(m.cell, m.to) {
            Ok(epoch) => {
                self.moves_done += 1;
                self.event(
                    "moved",
                    format!(
                        "epoch {}: cell {} moved from shard {} to shard {}",
                        epoch.0, m.cell, m.from.0, m.to.0
                    ),
                );
                self.map_notices()
            }
            // The leaf cannot have changed under a move (splits and merges wait for it), but if
            // it did, the source keeps it: abort rather than guess.
            Err(e) => self.abort(m, &e.to_string()),
        }
    }

    fn abort(&mut self, m: ActiveMove, why: &str) -> Vec<(ShardId, MasterNotice)> {
        self.moves_aborted += 1;
        self.event(
            "move aborted",
            format!(
                "cell {} stays on shard {} (move to shard {} aborted: {why})",
                m.cell, m.from.0, m.to.0
            ),
        );
        let notice = MasterNotice::MoveAborted {
            id: m.id,
            cell: m.cell,
        };
        [m.from, m.to]
            .into_iter()
            .filter(|s| self.is_alive(*s))
            .map(|s| (s, notice.clone()))
            .collect()
    }

    /// Abort the moves past `cluster.cell_move_timeout_ms` or whose source or target died.
    pub fn check_moves(&mut self, now_ms: u64) -> Vec<(ShardId, MasterNotice)> {
        self.now_ms = now_ms;
        let members = &self.members;
        let ended = self.moves.expire(now_ms, self.move_timeout_ms, |s| {
            members.get(&s).is_some_and(|m| m.alive)
        });
        let mut out = Vec::new();
        for (m, end) in ended {
            let why = match end {
                MoveEnd::TimedOut => "timed out",
                MoveEnd::MemberDied => "a shard died",
                MoveEnd::Shipped => "shipped",
            };
            out.extend(self.abort(m, why));
        }
        out
    }

    /// Split leaf `cell` into its four children, all with its owner: the map to push.
    pub fn split_cell(&mut self, cell: CellId) -> Result<Vec<(ShardId, MasterNotice)>, String> {
        self.reshape(cell, true)
    }

    /// Merge the four leaves under `parent` (one owner) back into it: the map to push.
    pub fn merge_cell(&mut self, parent: CellId) -> Result<Vec<(ShardId, MasterNotice)>, String> {
        self.reshape(parent, false)
    }

    fn reshape(
        &mut self,
        cell: CellId,
        split: bool,
    ) -> Result<Vec<(ShardId, MasterNotice)>, String> {
        let moving = self.moves.active().any(|m| {
            m.cell == cell || m.cell.parent() == Some(cell) || cell.parent() == Some(m.cell)
        });
        if moving {
            return Err(MoveError::Busy(cell).to_string());
        }
        let map = self.map.as_mut().ok_or(MoveError::NotPlaced.to_string())?;
        let epoch = if split {
            map.split(cell)
        } else {
            map.merge(cell)
        }
        .map_err(|e| e.to_string())?;
        let kind = if split { "split" } else { "merged" };
        self.event(kind, format!("epoch {}: cell {cell} {kind}", epoch.0));
        Ok(self.map_notices())
    }

    /// One session per account: a login on `from` may play `account` unless it plays elsewhere
    /// and the rule refuses a second session.
    fn claim(
        &mut self,
        from: ShardId,
        account: String,
        session: u64,
    ) -> Vec<(ShardId, MasterNotice)> {
        let answer = |outcome| MasterNotice::Claim {
            account: account.clone(),
            session,
            outcome,
        };
        let holder = self
            .players
            .get(&account)
            .copied()
            .filter(|s| self.members.get(s).is_some_and(|m| m.alive));
        let mut out = Vec::new();
        let outcome = match (holder, self.duplicate) {
            (Some(_), DuplicateLogin::Refuse) => return vec![(from, answer(ClaimOutcome::InUse))],
            (Some(old), DuplicateLogin::Takeover) => {
                out.push((
                    old,
                    MasterNotice::Kick {
                        account: account.clone(),
                    },
                ));
                ClaimOutcome::TookOver
            }
            (None, _) => ClaimOutcome::Granted,
        };
        let players = Arc::make_mut(&mut self.players);
        if players.len() < limits::SHARDS_MAX * limits::CLIENTS_PER_SHARD_MAX {
            players.insert(account.clone(), from);
        }
        out.push((from, answer(outcome)));
        out
    }

    /// The shard a player is on, per the directory.
    pub fn player(&self, name: &str) -> Option<ShardId> {
        self.players.get(name).copied()
    }

    /// What `GET /api/cluster` returns.
    pub fn view(&self) -> ClusterView {
        let mut view = self.shard_view();
        view.cells = self.cell_views();
        view.events = self.events.iter().cloned().collect();
        let w = self.grid.world();
        view.world = WorldView {
            min_x: w.min[0],
            min_z: w.min[1],
            max_x: w.max[0],
            max_z: w.max[1],
        };
        view
    }

    /// The latest load of every cell any shard reported, from each member's last heartbeat:
    /// entities and clients summed over every report (an entity inside the handoff margin past
    /// a border is still simulated, and reported, by the shard it came from, so two shards may
    /// both report a cell), the owner's estimate of the cell's share of its tick, and the part
    /// of one core the cell costs across every shard that reported it.
    pub fn cell_loads(&self) -> BTreeMap<CellId, CellSum> {
        let mut sums: BTreeMap<CellId, CellSum> = BTreeMap::new();
        let owner = |cell| self.map.as_ref().and_then(|m| m.owner_of(cell));
        for m in self.members.values() {
            for c in &m.load.cells {
                let sum = sums.entry(c.cell).or_default();
                sum.entities = sum.entities.saturating_add(c.entities);
                sum.clients = sum.clients.saturating_add(c.clients);
                sum.tick_cpu_share += c.tick_share * m.load.tick_cpu_share;
                if owner(c.cell) == Some(m.info.id) {
                    sum.tick_share = c.tick_share;
                }
            }
        }
        sums
    }

    /// Every leaf of the map with its owner and its load ([`Self::cell_loads`]).
    fn cell_views(&self) -> Vec<CellView> {
        let Some(map) = &self.map else {
            return Vec::new();
        };
        let loads = self.cell_loads();
        map.leaves()
            .iter()
            .map(|(cell, shard)| {
                let r = self.grid.rect(*cell);
                let load = loads.get(cell).copied().unwrap_or_default();
                CellView {
                    id: cell.to_string(),
                    level: cell.level,
                    rect: [r.min[0], r.min[1], r.max[0], r.max[1]],
                    shard: shard.0,
                    entities: load.entities,
                    clients: load.clients,
                    tick_share: load.tick_share,
                    tick_cpu_share: load.tick_cpu_share,
                }
            })
            .collect()
    }

    fn shard_view(&self) -> ClusterView {
        let cells_of = |id: ShardId| {
            self.map
                .as_ref()
                .map_or(0, |m| m.leaves().values().filter(|s| **s == id).count())
        };
        let shards: Vec<ShardView> = self
            .members
            .values()
            .map(|m| ShardView::of(m, cells_of(m.info.id)))
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
            ..ClusterView::default()
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
    /// The world rectangle, in metres.
    pub world: WorldView,
    pub shards: Vec<ShardView>,
    /// Every leaf of the cell map.
    pub cells: Vec<CellView>,
    /// The latest cluster events, oldest first.
    pub events: Vec<ClusterEvent>,
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

/// The world rectangle.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct WorldView {
    pub min_x: f32,
    pub min_z: f32,
    pub max_x: f32,
    pub max_z: f32,
}

/// One leaf of the cell map.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CellView {
    /// `L{level}({column},{row})`.
    pub id: String,
    pub level: u8,
    /// `[min_x, min_z, max_x, max_z]`, metres.
    pub rect: [f32; 4],
    pub shard: u16,
    /// Entities simulated in it, and players' avatars among them (a player counts while its
    /// client follows a redirect), from every shard's last heartbeat.
    pub entities: u32,
    pub clients: u32,
    /// Estimated share of its owner's tick, 0..=1 (the owner's report; `CellLoad::tick_share`).
    pub tick_share: f32,
    /// Estimated part of one core the cell costs: each reporting shard's share for it times
    /// that shard's `tick_cpu_share`, summed. Comparable across shards, unlike `tick_share`.
    pub tick_cpu_share: f32,
}

/// One cell's latest load, over every shard's last report ([`Master::cell_loads`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CellSum {
    pub entities: u32,
    pub clients: u32,
    /// The owner's estimate of the cell's share of its tick (0 when the owner reported none).
    pub tick_share: f32,
    /// The part of one core the cell costs, summed over the shards that reported it.
    pub tick_cpu_share: f32,
}

/// One member in `/api/cluster`: what its last heartbeat said (figures "over the window" cover
/// the `window_ms` before that heartbeat, about `limits::HEARTBEAT_MS`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct ShardView {
    pub id: u16,
    /// Where its clients connect.
    pub addr: String,
    pub link_addr: String,
    /// Where it serves `/metrics` (empty when it does not).
    pub metrics_addr: String,
    pub alive: bool,
    pub weight: u32,
    pub cells: usize,
    pub owned_entities: u32,
    pub in_transit: u32,
    pub proxies: u32,
    pub clients: u32,
    pub tick: u64,
    /// Wall time of the window the figures below cover, ms, and the ticks run in it.
    pub window_ms: u32,
    pub ticks: u32,
    /// The tick thread's CPU time over the window (ms), and as a share of its wall time (0..=1).
    pub tick_cpu_ms: f32,
    pub tick_cpu_share: f32,
    /// The schedule's wall time per tick over the window, ms (before the load reports had a
    /// window, `tick_ms_p99` covered the process's whole life in a cluster).
    pub tick_ms_p50: f32,
    pub tick_ms_p99: f32,
    /// Ticks over the tick period in the window.
    pub tick_overruns: u32,
    pub handoffs_out: u64,
    pub handoffs_in: u64,
    pub handoff_transit_ms_p99: f32,
    /// Payload bytes sent per second over the window, to clients and over shard links.
    pub client_bytes_out_per_s: u64,
    pub link_bytes_out_per_s: u64,
    /// Resident memory of the process, bytes.
    pub rss_bytes: u64,
    /// The whole process's CPU time over the window per second of wall time (cores).
    pub process_cpu_share: f32,
}

impl ShardView {
    /// `m` as the API shows it, owning `cells` leaves.
    fn of(m: &Member, cells: usize) -> Self {
        let l = &m.load;
        Self {
            id: m.info.id.0,
            addr: m.info.client_addr.clone(),
            link_addr: m.info.link_addr.clone(),
            metrics_addr: m.info.metrics_addr.clone(),
            alive: m.alive,
            weight: m.info.weight,
            cells,
            owned_entities: l.owned_entities,
            in_transit: l.in_transit,
            proxies: l.proxies,
            clients: l.clients,
            tick: l.tick,
            window_ms: l.window_ms,
            ticks: l.ticks,
            tick_cpu_ms: l.tick_cpu_ms,
            tick_cpu_share: l.tick_cpu_share,
            tick_ms_p50: l.tick_ms_p50,
            tick_ms_p99: l.tick_ms_p99,
            tick_overruns: l.tick_overruns,
            handoffs_out: l.handoffs_out,
            handoffs_in: l.handoffs_in,
            handoff_transit_ms_p99: l.handoff_transit_ms_p99,
            client_bytes_out_per_s: l.client_bytes_out_per_s,
            link_bytes_out_per_s: l.link_bytes_out_per_s,
            rss_bytes: l.rss_bytes,
            process_cpu_share: l.process_cpu_share,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zonescaler_shared::config::WorldConfig;
    use zonescaler_shared::protocol::CellLoad;

    fn info(addr: &str) -> MemberInfo {
        MemberInfo {
            id: ShardId(0),
            client_addr: addr.into(),
            link_addr: addr.into(),
            metrics_addr: String::new(),
            weight: 1,
        }
    }

    fn join(addr: &str, weight: u32) -> JoinRequest {
        JoinRequest {
            client_addr: addr.into(),
            link_addr: addr.into(),
            metrics_addr: String::new(),
            weight,
        }
    }

    fn placed_pair(rule: DuplicateLogin) -> Master {
        let grid = CellGrid::from_config(&WorldConfig::default());
        let mut m = Master::new(grid, 2, info("a"), 0).with_duplicate_rule(rule);
        m.join(join("b", 1), 0).expect("join");
        m.place().expect("placement");
        m
    }

    fn claim(
        m: &mut Master,
        from: u16,
        account: &str,
        session: u64,
    ) -> Vec<(ShardId, MasterNotice)> {
        m.request(
            ShardId(from),
            MasterRequest::Claim {
                account: account.into(),
                session,
            },
            10,
        )
    }

    #[test]
    fn one_session_per_account_takes_over_or_refuses_by_the_rule() {
        let mut m = placed_pair(DuplicateLogin::Takeover);
        let granted = claim(&mut m, 1, "ann", 7);
        assert_eq!(
            granted,
            vec![(
                ShardId(1),
                MasterNotice::Claim {
                    account: "ann".into(),
                    session: 7,
                    outcome: ClaimOutcome::Granted
                }
            )]
        );
        assert_eq!(
            m.player("ann"),
            Some(ShardId(1)),
            "a granted claim holds the account"
        );
        let again = claim(&mut m, 0, "ann", 3);
        assert_eq!(
            again,
            vec![
                (
                    ShardId(1),
                    MasterNotice::Kick {
                        account: "ann".into()
                    }
                ),
                (
                    ShardId(0),
                    MasterNotice::Claim {
                        account: "ann".into(),
                        session: 3,
                        outcome: ClaimOutcome::TookOver
                    }
                )
            ],
            "the old session is kicked and the new one plays"
        );
        assert_eq!(m.player("ann"), Some(ShardId(0)));

        let mut m = placed_pair(DuplicateLogin::Refuse);
        claim(&mut m, 1, "ann", 7);
        assert_eq!(
            claim(&mut m, 0, "ann", 3),
            vec![(
                ShardId(0),
                MasterNotice::Claim {
                    account: "ann".into(),
                    session: 3,
                    outcome: ClaimOutcome::InUse
                }
            )],
            "refused, and the first session is left alone"
        );
        assert_eq!(m.player("ann"), Some(ShardId(1)));
    }

    #[test]
    fn tells_go_where_the_player_is_and_shouts_everywhere() {
        let mut m = placed_pair(DuplicateLogin::Takeover);
        claim(&mut m, 1, "ann", 7);
        let msg = |from: &str| PlayerMessage {
            from: from.into(),
            text: "hi".into(),
            scope: MessageScope::Tell,
        };
        assert_eq!(
            m.request(
                ShardId(0),
                MasterRequest::Tell {
                    to: "ann".into(),
                    msg: msg("bob")
                },
                20
            ),
            vec![(
                ShardId(1),
                MasterNotice::Deliver {
                    to: Some("ann".into()),
                    msg: msg("bob")
                }
            )]
        );
        let nobody = m.request(
            ShardId(0),
            MasterRequest::Tell {
                to: "zed".into(),
                msg: msg("bob"),
            },
            20,
        );
        assert!(
            matches!(&nobody[..], [(ShardId(0), MasterNotice::Deliver { to: Some(b), msg })]
                if b == "bob" && msg.text.contains("no player named zed")),
            "the sender learns nobody of that name is online: {nobody:?}"
        );
        let shout = m.request(ShardId(1), MasterRequest::Shout(msg("ann")), 20);
        assert_eq!(shout.len(), 2, "every live shard: {shout:?}");
    }

    #[test]
    fn the_view_lists_every_cell_with_its_owner_and_load_and_the_events() {
        let mut m = placed_pair(DuplicateLogin::Takeover);
        let leaves: Vec<(CellId, ShardId)> = m
            .map()
            .expect("placed")
            .leaves()
            .iter()
            .map(|(c, s)| (*c, *s))
            .collect();
        let (busy, owner) = leaves[0];
        let neighbour = ShardId(1 - owner.0);
        let load = |entities, clients, tick_share, tick_cpu_share| ShardLoad {
            tick_cpu_share,
            cells: vec![CellLoad {
                cell: busy,
                entities,
                clients,
                tick_share,
            }],
            ..ShardLoad::default()
        };
        m.heartbeat(owner, load(12, 3, 0.5, 0.4), 5);
        // Two entities of the neighbour walked into the cell but are not handed over yet (they
        // are within the handoff margin): the neighbour reports them, after the owner.
        m.heartbeat(neighbour, load(2, 1, 0.25, 0.2), 6);
        let v = m.view();
        assert_eq!(v.cells.len(), leaves.len());
        let c = v
            .cells
            .iter()
            .find(|c| c.id == busy.to_string())
            .expect("listed");
        assert_eq!(
            (c.shard, c.entities, c.clients),
            (owner.0, 14, 4),
            "both shards' reports of the cell count, neither replaces the other"
        );
        assert_eq!(
            c.tick_share, 0.5,
            "the cell's share of its owner's tick is the owner's estimate"
        );
        assert!(
            (c.tick_cpu_share - (0.5 * 0.4 + 0.25 * 0.2)).abs() < 1e-6,
            "the cell costs half of the owner's 40% of a core and a quarter of the neighbour's 20%: {}",
            c.tick_cpu_share
        );
        assert!(c.rect[2] > c.rect[0] && c.rect[3] > c.rect[1]);
        assert_eq!(v.world.min_x, -1024.0);
        let kinds: Vec<&str> = v.events.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, ["joined", "placed"]);
    }

    #[test]
    fn the_latest_heartbeat_is_each_shards_and_each_cells_load_in_the_view() {
        let mut m = placed_pair(DuplicateLogin::Takeover);
        let cell = *m
            .map()
            .expect("placed")
            .leaves()
            .iter()
            .find(|(_, s)| **s == ShardId(1))
            .expect("shard 1 owns cells")
            .0;
        let report = |tick_cpu_share: f32, entities| ShardLoad {
            window_ms: 201,
            ticks: 6,
            tick_cpu_ms: tick_cpu_share * 201.0,
            tick_cpu_share,
            tick_ms_p50: 3.5,
            tick_ms_p99: 41.0,
            tick_overruns: 1,
            client_bytes_out_per_s: 120_000,
            link_bytes_out_per_s: 8_000,
            rss_bytes: 50 << 20,
            process_cpu_share: 1.25,
            cells: vec![CellLoad {
                cell,
                entities,
                clients: 2,
                tick_share: 1.0,
            }],
            ..ShardLoad::default()
        };
        m.heartbeat(ShardId(1), report(0.9, 500), 10);
        m.heartbeat(ShardId(1), report(0.3, 40), 210);
        let v = m.view();
        let s = &v.shards[1];
        assert_eq!(
            (s.window_ms, s.ticks, s.tick_cpu_share, s.tick_overruns),
            (201, 6, 0.3, 1),
            "the latest window replaces the one before"
        );
        assert_eq!((s.tick_ms_p50, s.tick_ms_p99), (3.5, 41.0));
        assert_eq!(
            (s.client_bytes_out_per_s, s.link_bytes_out_per_s),
            (120_000, 8_000)
        );
        assert_eq!((s.rss_bytes, s.process_cpu_share), (50 << 20, 1.25));
        let c = &m.cell_loads()[&cell];
        assert_eq!((c.entities, c.clients, c.tick_share), (40, 2, 1.0));
        assert!((c.tick_cpu_share - 0.3).abs() < 1e-6, "{c:?}");
        let json = serde_json::to_value(&v).expect("serializes");
        let shard = &json["shards"][1];
        for key in [
            "tick_cpu_share",
            "tick_cpu_ms",
            "tick_ms_p50",
            "tick_ms_p99",
            "tick_overruns",
            "client_bytes_out_per_s",
            "link_bytes_out_per_s",
            "rss_bytes",
            "process_cpu_share",
            "owned_entities",
            "handoff_transit_ms_p99",
        ] {
            assert!(
                shard[key].is_number(),
                "/api/cluster's shard has {key}: {shard}"
            );
        }
        let served = json["cells"]
            .as_array()
            .expect("cells")
            .iter()
            .find(|c| c["id"] == cell.to_string())
            .expect("the cell is listed");
        assert_eq!(served["entities"], 40);
        assert_eq!(served["tick_share"], 1.0);
        assert!(served["tick_cpu_share"].is_number(), "{served}");
    }

    #[test]
    fn a_player_in_and_out_between_two_heartbeats_leaves_no_trace_in_the_directory() {
        use crate::core::resources::PlayerLog;
        let mut m = placed_pair(DuplicateLogin::Takeover);
        let mut log = PlayerLog::default();
        // A scout logs in and hangs up; ann leaves and comes back; all before the next report.
        log.arrived("scout");
        log.arrived("ann");
        log.left("scout");
        log.left("ann");
        log.arrived("ann");
        let load = ShardLoad {
            players_arrived: log.arrived.drain(..).collect(),
            players_left: log.left.drain(..).collect(),
            ..ShardLoad::default()
        };
        m.heartbeat(ShardId(1), load, 10);
        assert_eq!(m.player("scout"), None, "the scout is gone");
        assert_eq!(m.player("ann"), Some(ShardId(1)), "ann is back");
        assert_eq!(m.view().players, 1);
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
