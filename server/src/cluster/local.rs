//! A whole cluster in one process, stepped tick by tick: for tests of a game across borders.
//!
//! ```
//! use zonescaler_server::cluster::LocalCluster;
//! use zonescaler_server::app::demo_game;
//! use zonescaler_shared::config::WorldConfig;
//!
//! let mut world = WorldConfig::default();
//! world.npc.count = 100;
//! let mut c = LocalCluster::new(world, 2, &demo_game()).expect("two shards");
//! for _ in 0..30 {
//!     c.step();
//! }
//! assert_eq!(c.shards.len(), 2);
//! ```
//!
//! The master places the cells on `n` shards of equal weight; shard links are perfect (a message
//! sent in one tick arrives for the next); requests to the master (login claims, tells, shouts)
//! are answered at once and its notices arrive for the next tick, as do its cell moves
//! ([`LocalCluster::move_cell`]) and new maps; every tick is a heartbeat and an admission round,
//! and every `limits::AUDIT_MS` each shard reports what it owns to the master's ownership
//! audit ([`crate::cluster::audit`]; the master takes one as often: `master.audit()`).
//! A shard can be killed ([`LocalCluster::kill`]): it goes silent and the master's liveness
//! check, run every tick, declares it dead in due time. Every shard but the master holds an
//! ownership lease (`cluster::lease`, as its runtime does): it ticks only while the lease holds,
//! and stops for good once it is lost. A shard's links can be cut for a while
//! ([`LocalCluster::partition`]): its shard messages, heartbeats, requests and notices are lost
//! both ways, so its lease lapses and the master declares it dead, as over a real partition.
//! Client traffic is the test's:
//! push events into a shard and read what it sent with [`LocalCluster::step`]'s return value.

use super::balancer::Balancer;
use super::lease::{Lease, LeaseState};
use super::master::Master;
use super::moves::MoveError;
use crate::app::GameSetup;
use crate::core::ShardApp;
use bytes::Bytes;
use zonescaler_net::NetCommand;
use zonescaler_shared::cellmap::{CellGrid, CellMap};
use zonescaler_shared::config::WorldConfig;
use zonescaler_shared::limits;
use zonescaler_shared::protocol::{JoinRequest, MasterNotice, MemberInfo};
use zonescaler_shared::{CellId, ShardId};

/// `n` shards of one world and their master, in one process.
pub struct LocalCluster {
    /// Shard `i` is `shards[i]`; a drained or killed one stays in place but no longer ticks.
    pub shards: Vec<ShardApp>,
    /// Shards killed ([`Self::kill`]): silent from then on, as a crashed process.
    killed: Vec<bool>,
    /// Each shard's ownership lease (none on the master: it is the authority).
    leases: Vec<Option<Lease>>,
    /// The newest heartbeat of each shard the master answered (`ShardLoad::lease_seq`: the
    /// master acts while a majority heard it recently, `cluster::election`).
    lease_seqs: Vec<u64>,
    /// Shards that lost their lease (fenced, or cut off too long): stopped, as their process.
    lost: Vec<bool>,
    /// Until when each shard's links are cut ([`Self::partition`]).
    cut_until: Vec<u64>,
    /// Which shards ticked in the last step.
    ticked: Vec<bool>,
    pub master: Master,
    pub map: CellMap,
    config: WorldConfig,
    game: GameSetup,
    now_ms: u64,
    /// The master's notices for the next step (a move ordered between steps, for instance).
    notices: Vec<(ShardId, MasterNotice)>,
    /// When the shards next report what they own, and the reports sent so far.
    next_audit_ms: u64,
    audits_sent: u64,
}

impl std::fmt::Debug for LocalCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCluster")
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

fn member(i: usize) -> JoinRequest {
    JoinRequest {
        client_addr: format!("local:{i}"),
        link_addr: format!("local:{i}"),
        metrics_addr: String::new(),
        http_addr: String::new(),
        weight: 1,
    }
}

/// The master of `n` members of equal weight (`local:0`..) with `config`'s cells placed, and
/// its cluster settings (duplicate logins, admission, the move timeout) but no balancer.
pub fn placed_master(config: &WorldConfig, n: usize) -> Result<Master, String> {
    let first = member(0);
    let me = MemberInfo {
        id: ShardId(0),
        client_addr: first.client_addr,
        link_addr: first.link_addr,
        metrics_addr: String::new(),
        http_addr: String::new(),
        weight: 1,
    };
    let c = &config.cluster;
    let mut master = Master::new(CellGrid::from_config(config), n, me, 0)
        .with_duplicate_rule(config.login.duplicate)
        .with_admission(c.clients_per_shard_max, c.login_queue_max)
        .with_move_timeout(c.cell_move_timeout_ms)
        .with_silence(c.shard_silence_ms)
        .with_master_silence(c.master_silence_ms);
    for i in 1..n {
        master.join(member(i), 0).map_err(|e| e.to_string())?;
    }
    master.place().map_err(|e| e.to_string())?;
    Ok(master)
}

impl LocalCluster {
    /// `n` shards of `game` on `config`'s world, the cells placed by the master.
    pub fn new(config: WorldConfig, n: usize, game: &GameSetup) -> Result<Self, String> {
        let mut master = placed_master(&config, n)?;
        if let Ok(b) = Balancer::new(&config) {
            master = master.with_balancer(b, config.balancer.round_ms);
        }
        let map = master.map().cloned().ok_or("the master placed no map")?;
        let shards = (0..n)
            .map(|i| {
                let placement = Some((ShardId(i as u16), map.clone()));
                ShardApp::with_game(config.clone(), placement, game)
            })
            .collect();
        Ok(Self {
            shards,
            master,
            map,
            config,
            game: game.clone(),
            now_ms: 0,
            notices: Vec::new(),
            next_audit_ms: 0,
            audits_sent: 0,
            killed: vec![false; n],
            leases: (0..n).map(|i| (i > 0).then(|| Lease::new(0))).collect(),
            lease_seqs: vec![0; n],
            lost: vec![false; n],
            cut_until: vec![0; n],
            ticked: vec![false; n],
        })
    }

    /// A shard joins the running cluster (as `zonescaler shard --join` does): its id. It owns
    /// nothing until the balancer gives it cells.
    pub fn join(&mut self, weight: u32) -> Result<ShardId, String> {
        let mut req = member(self.shards.len());
        req.weight = weight;
        let id = self
            .master
            .join(req, self.now_ms)
            .map_err(|e| e.to_string())?;
        if usize::from(id.0) != self.shards.len() {
            return Err(format!(
                "the master gave id {} to shard {}",
                id.0,
                self.shards.len()
            ));
        }
        let placement = Some((id, self.map.clone()));
        self.shards.push(ShardApp::with_game(
            self.config.clone(),
            placement,
            &self.game,
        ));
        self.killed.push(false);
        self.leases.push(Some(Lease::new(self.now_ms)));
        self.lost.push(false);
        self.cut_until.push(0);
        self.ticked.push(false);
        self.notices.extend(self.master.members_changed(Some(id)));
        Ok(id)
    }

    /// Drain shard `id` (as `zonescaler drain` does): its cells move away, and once it owns
    /// nothing the master lets it go ([`ShardApp::drained`]); it then no longer ticks.
    pub fn drain(&mut self, id: ShardId) -> Result<(), String> {
        self.master
            .drain(id, self.now_ms)
            .map_err(|e| e.to_string())
    }

    /// Kill shard `id` as `kill -9` would: from the next step it neither ticks nor sends nor
    /// reports, and messages to it are lost. The master declares it dead once it has been silent
    /// for `[cluster] shard_silence_ms` and gives its cells to the others.
    pub fn kill(&mut self, id: ShardId) {
        if let Some(k) = self.killed.get_mut(usize::from(id.0)) {
            *k = true;
        }
    }

    /// Cut shard `id`'s links for `ms` from now: whatever it sends or is sent is lost (shard
    /// messages, heartbeats and their answers, requests to the master and its notices), while
    /// it goes on as its lease allows.
    pub fn partition(&mut self, id: ShardId, ms: u64) {
        if let Some(c) = self.cut_until.get_mut(usize::from(id.0)) {
            *c = self.now_ms + ms;
        }
    }

    /// Whether shard `id` ticked in the last step (not killed, drained, stopped, or paused by
    /// a lapsed lease).
    pub fn simulating(&self, id: ShardId) -> bool {
        self.ticked.get(usize::from(id.0)) == Some(&true)
    }

    /// Whether shard `id` stopped because it lost its ownership lease (fenced, or cut off past
    /// the master's silence), as its process exits.
    pub fn lost_lease(&self, id: ShardId) -> bool {
        self.lost.get(usize::from(id.0)) == Some(&true)
    }

    /// The cluster's clock (ms since it started).
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    fn silent(&self, i: usize) -> bool {
        self.killed[i] || self.lost[i] || self.shards[i].drained()
    }

    /// Whether traffic between shard `a` and shard `b` (or the master, 0) is lost now.
    fn cut(&self, a: usize, b: usize) -> bool {
        a != b && (self.cut_until[a] > self.now_ms || self.cut_until[b] > self.now_ms)
    }

    /// Tick every shard whose lease holds; one that lost it stops.
    fn tick_shards(&mut self) {
        for i in 0..self.shards.len() {
            self.ticked[i] = false;
            if self.silent(i) {
                continue;
            }
            let lease = self.leases[i]
                .as_ref()
                .map_or(LeaseState::Holds, |l| l.state(self.now_ms));
            match lease {
                LeaseState::Holds => {
                    self.shards[i].set_now_ms(self.now_ms);
                    self.shards[i].tick();
                    self.ticked[i] = true;
                }
                LeaseState::Lapsed { .. } => {}
                LeaseState::Lost(_) => self.lost[i] = true,
            }
        }
    }

    /// Every shard reports what it owns now (those running and not cut off from the master),
    /// and the master takes its ownership audit of them: what the cluster holds at this instant
    /// (the step's reports are all taken between the same two ticks).
    pub fn audit(&mut self) -> std::sync::Arc<super::Audit> {
        self.report_ownership();
        self.master.take_audit(self.now_ms)
    }

    /// Every running shard not cut off from the master reports what it owns.
    fn report_ownership(&mut self) {
        for i in 0..self.shards.len() {
            if self.silent(i) || self.cut(i, 0) {
                continue;
            }
            self.audits_sent += 1;
            let report = self.shards[i].ownership_report(self.now_ms);
            for part in report.parts(self.audits_sent) {
                self.master.audit_part(ShardId(i as u16), part, self.now_ms);
            }
        }
    }

    /// Every running shard reports to the master (numbered for its lease), and every
    /// `limits::AUDIT_MS` what it owns; the answers that are not cut off renew (or end) the
    /// leases.
    fn heartbeats(&mut self) {
        if self.now_ms >= self.next_audit_ms {
            self.next_audit_ms = self.now_ms + limits::AUDIT_MS;
            self.report_ownership();
        }
        for i in 0..self.shards.len() {
            if self.silent(i) {
                continue;
            }
            let mut load = self.shards[i].load();
            load.seq = self.leases[i].as_mut().map_or(0, |l| l.sent(self.now_ms));
            load.lease_seq = self.lease_seqs.get(i).copied().unwrap_or(0);
            if self.cut(i, 0) {
                continue;
            }
            let answer = self.master.heartbeat(ShardId(i as u16), load, self.now_ms);
            match (answer, self.leases[i].as_mut()) {
                (Some(MasterNotice::Lease { seq, lease_ms }), Some(l)) => {
                    l.answered(seq, u64::from(lease_ms));
                    if self.lease_seqs.len() <= i {
                        self.lease_seqs.resize(i + 1, 0);
                    }
                    self.lease_seqs[i] = self.lease_seqs[i].max(seq);
                }
                (Some(MasterNotice::Fenced), Some(l)) => l.fenced(),
                _ => {}
            }
        }
    }

    /// Deliver the master's `notices`, but not to shards cut off from it.
    fn deliver_notices(&mut self, notices: Vec<(ShardId, MasterNotice)>) {
        for (to, notice) in notices {
            let i = usize::from(to.0);
            if i < self.shards.len() && !self.cut(i, 0) {
                self.shards[i].push_master_notice(notice);
            }
        }
    }

    /// Order the move of leaf `cell` to shard `to` (see `cluster::moves`): the shards hear of
    /// it in the next step, and [`Self::map`] changes when the move is done.
    pub fn move_cell(&mut self, cell: CellId, to: ShardId) -> Result<u64, MoveError> {
        let notices = self.master.move_cell(cell, to, self.now_ms)?;
        let id = notices.iter().find_map(|(_, n)| match n {
            MasterNotice::MoveCell { id, .. } => Some(*id),
            _ => None,
        });
        self.notices.extend(notices);
        Ok(id.unwrap_or_default())
    }

    /// Split or merge a leaf (`split`: `cell` into its children; else the children of `cell`
    /// into it), the new map pushed to the shards in the next step.
    pub fn reshape(&mut self, cell: CellId, split: bool) -> Result<(), String> {
        let notices = if split {
            self.master.split_cell(cell)?
        } else {
            self.master.merge_cell(cell)?
        };
        self.notices.extend(notices);
        Ok(())
    }

    /// One tick of every shard, then their link messages and the master's traffic delivered
    /// for the next tick. Each shard's client commands, by shard.
    pub fn step(&mut self) -> Vec<Vec<NetCommand>> {
        self.step_filtered(|_, _, _| true)
    }

    /// [`Self::step`], delivering only the link messages `deliver(from, to, bytes)` keeps: the
    /// others are lost, as they are when a link breaks with them in flight.
    pub fn step_filtered(
        &mut self,
        mut deliver: impl FnMut(ShardId, ShardId, &Bytes) -> bool,
    ) -> Vec<Vec<NetCommand>> {
        let hz = self.shards.first().map_or(30, |s| {
            s.world
                .resource::<crate::core::resources::TickClock>()
                .tick_hz
        });
        self.now_ms += 1_000 / u64::from(hz.max(1));
        self.tick_shards();
        let mut mail = Vec::new();
        let mut notices = std::mem::take(&mut self.notices);
        notices.extend(self.master.housekeeping(self.now_ms).1);
        let silent: Vec<bool> = (0..self.shards.len()).map(|i| self.silent(i)).collect();
        for (i, s) in self.shards.iter_mut().enumerate() {
            if silent[i] {
                continue;
            }
            let from = ShardId(i as u16);
            for (to, bytes) in s.drain_shard_outbox() {
                mail.push((from, to, bytes));
            }
            let requests = s.drain_master_requests();
            if self.cut_until[i] > self.now_ms || self.cut_until[0] > self.now_ms {
                continue; // lost with the link to the master
            }
            for req in requests {
                notices.extend(self.master.request(from, req, self.now_ms));
            }
        }
        for (from, to, bytes) in mail {
            let (a, b) = (usize::from(from.0), usize::from(to.0));
            if silent.get(b) != Some(&false) || self.cut(a, b) || !deliver(from, to, &bytes) {
                continue;
            }
            if let Some(s) = self.shards.get_mut(b) {
                s.push_shard_message(from, bytes);
            }
        }
        self.deliver_notices(notices);
        self.heartbeats();
        let admitted = self.master.admit(self.now_ms);
        self.deliver_notices(admitted);
        if let Some(map) = self.master.map() {
            self.map.clone_from(map);
        }
        self.shards.iter_mut().map(|s| s.drain_outbox()).collect()
    }
}
