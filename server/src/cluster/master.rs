//! The master role: membership, the cell map, the player directory, and the cluster view.
//!
//! A pure state machine, as the rest of the shard is: the runtime feeds it joins, heartbeats and
//! the clock (`now_ms`), and sends what it returns. One shard process holds it (shard 0).
//!
//! - **Membership**: shards join with their client and link addresses and a capacity weight and
//!   get the next id. The master waits for `expected` members (itself included), then places the
//!   base cells as contiguous regions in proportion to the weights ([`assign_contiguous`]) and
//!   pushes the map to everyone. A shard that joins after that is a late joiner: the balancer
//!   gives it cells once it has linked to every member.
//! - **Liveness**: every shard reports its load every [`limits::HEARTBEAT_MS`] and gets its
//!   ownership lease renewed in answer ([`super::lease`]); one silent for `[cluster]
//!   shard_silence_ms` (on the runtime's monotonic clock) is declared dead and
//!   fenced: it leaves the membership for good (a heartbeat from it is answered `Fenced`), and
//!   the next balancing round, due at once, gives each of its leaves to a live shard under a new
//!   epoch ([`Master::adopt_cell`]). Its lease ran out before that, so it no longer simulated
//!   them. What it held is lost until buddy replication is built.
//! - **Player directory**: which shard each logged-in player is on, from the arrivals and
//!   departures in the heartbeats, and the logins it granted. A login claims its account here
//!   first ([`Master::request`]): one session per account, cluster-wide; a second one takes the
//!   first over or is refused (`[login] duplicate`).
//! - **Admission**: the same claim gets the login a seat on a shard under its client cap, a place
//!   in the login queue, or `NoRoom` (see [`crate::client::admission`], which says why the queue
//!   lives here); [`Master::admit`] seats waiting logins as heartbeats report departures.
//! - **Messages to players**: a tell goes to the shard the directory has the player on (or back
//!   to its sender as "not online"); a shout goes to every live shard.
//! - **Events**: placement, joins and deaths, kept (the last [`EVENTS_MAX`]) for the dashboard.

use super::audit::{Audit, AuditSummary, Auditor};
use super::balancer::{Action, Balancer, CellInput, ShardInput};
use super::election::Support;
use super::moves::{ActiveMove, MoveEnd, MoveError, MoveTable};
use crate::client::admission::{Admission, Verdict, Waiter};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use zonescaler_shared::cellmap::{CellGrid, CellMap, CellMapError, Epoch, assign_contiguous};
use zonescaler_shared::config::{CLIENTS_PER_SHARD_DEFAULT, DuplicateLogin, LOGIN_QUEUE_DEFAULT};
use zonescaler_shared::limits;
use zonescaler_shared::protocol::{
    AuditPart, ClaimOutcome, JoinRequest, MapPush, MasterNotice, MasterRequest, MemberInfo,
    MessageScope, NoRoomWhy, PlayerMessage, ShardLoad, Standby,
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
    /// Being drained: the balancer moves its cells away and admission seats nobody on it.
    pub draining: bool,
    /// It reported since it joined (a late joiner reports once it linked to every member):
    /// until then nothing is moved to it and no login is seated on it.
    pub linked: bool,
    /// When a draining member was first seen owning no cell (master's clock).
    emptied_ms: Option<u64>,
}

impl Member {
    fn new(info: MemberInfo, now_ms: u64, linked: bool) -> Self {
        Self {
            info,
            alive: true,
            last_heard_ms: now_ms,
            load: ShardLoad::default(),
            draining: false,
            linked,
            emptied_ms: None,
        }
    }

    /// Alive, linked and not draining: one that may be given cells and players.
    pub fn takes_work(&self) -> bool {
        self.alive && self.linked && !self.draining
    }
}

/// Why a join was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JoinRefused {
    #[error("the cluster is full ({} shards)", limits::SHARDS_MAX)]
    Full,
    #[error("capacity weight must be 1..=1000 (got {0})")]
    BadWeight(u32),
}

/// Why a drain was refused (`zonescaler drain`, `POST /api/shards/N/drain`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DrainRefused {
    #[error("the cluster has not placed its cells yet")]
    NotPlaced,
    #[error("no shard {0} in the cluster")]
    NoSuchShard(u16),
    #[error(
        "shard {0} holds the master role and cannot be drained (kill it instead: the others \
         elect a successor and adopt its cells)"
    )]
    Master(u16),
    #[error("shard {0} is not alive; a dead shard's cells are recovered by failover, not drained")]
    NotAlive(u16),
    #[error(
        "no other shard can take shard {0}'s cells (every other one is draining or not linked yet)"
    )]
    NoOtherShard(u16),
}

/// How long a drained shard's clients (logins it is redirecting or holding in the queue) get to
/// leave once it owns no cell and no entity, before the master lets it go regardless.
pub const DRAIN_CLIENTS_GRACE_MS: u64 = 10_000;

/// A seat given to a login, until its shard reports the player's arrival.
#[derive(Clone, Copy, Debug)]
struct Unconfirmed {
    shard: ShardId,
    gateway: ShardId,
    session: u64,
    until_ms: u64,
}

/// Players the directory holds at most: every shard full.
const DIRECTORY_MAX: usize = limits::SHARDS_MAX * limits::CLIENTS_PER_SHARD_MAX;

/// The master's whole state.
#[derive(Debug)]
pub struct Master {
    grid: CellGrid,
    expected: usize,
    members: BTreeMap<ShardId, Member>,
    /// The id the next joiner gets: ids are never reused, so a late joiner is never taken for
    /// a drained shard whose messages are still on their way.
    next_id: u16,
    map: Option<CellMap>,
    /// Shared with the views handed out (copied only when it changes while one holds it).
    players: Arc<BTreeMap<String, ShardId>>,
    /// Players per shard in `players`, kept with it (admission counts seats from it).
    seats: BTreeMap<ShardId, u32>,
    /// Seats given to logins that the shard they were sent to has not reported yet.
    unconfirmed: BTreeMap<String, Unconfirmed>,
    /// Players whose shard sent them on and lost their connection, with that shard and until
    /// when their seat is kept: the new shard's arrival report may come after the old shard's.
    sent_on: BTreeMap<String, (ShardId, u64)>,
    /// How long a player sent on keeps its seat ([`Self::with_sent_on_wait`]).
    sent_on_wait_ms: u64,
    admission: Admission,
    duplicate: DuplicateLogin,
    events: VecDeque<ClusterEvent>,
    now_ms: u64,
    moves: MoveTable,
    move_timeout_ms: u64,
    /// The balancing policy and when its next round is due (`None`: never balance).
    balancer: Option<(Balancer, u64)>,
    round_ms: u64,
    /// Cell moves finished since start (the map flipped).
    pub moves_done: u64,
    /// Cell moves aborted since start (the source kept the cell).
    pub moves_aborted: u64,
    /// Leaves of dead shards given to live ones since start ([`Self::adopt_cell`]).
    pub failovers: u64,
    /// A member not heard from this long is declared dead (`[cluster] shard_silence_ms`).
    silence_ms: u64,
    /// Members elect a successor after this long without this master (`[cluster]
    /// master_silence_ms`): how long their promises run.
    master_silence_ms: u64,
    /// Members declared dead, newest last (at most `limits::SHARDS_MAX`), with the member that
    /// adopted their cells and replica: every map push carries it (`MapPush::dead`).
    dead: VecDeque<(ShardId, Option<ShardId>)>,
    /// Entities of dead shards their adopters took over, by the dead shards' last reports.
    pub adopted_entities: u64,
    /// This master's own member id.
    me: ShardId,
    /// The term this master holds the role in (0: it formed the cluster; see
    /// [`super::election`]).
    term: u64,
    /// Until when each member promised not to vote for another master: this one acts only while
    /// a majority did ([`Self::quorum`]).
    support: Support,
    /// What the members hold of this master's state, for a successor ([`Self::standby`]).
    standby: StandbyOut,
    /// The members' ownership reports and the audits taken from them ([`super::audit`]).
    audit: Auditor,
}

/// The master's state as sent to the members ([`Master::standby`]): its version, the directory
/// changes not sent yet, the members that have had the whole of it, and what was sent last.
#[derive(Debug, Default)]
struct StandbyOut {
    version: u64,
    seats: BTreeMap<String, Option<ShardId>>,
    full_sent: BTreeSet<ShardId>,
    last: Standby,
}

/// Directory entries in one [`Standby`] message (a whole directory goes in several).
pub const STANDBY_SEATS_PER_MESSAGE: usize = 1_024;
/// Seats waiting to be confirmed that a [`Standby`] names (the first by name; a successor keeps
/// any others for good, as it keeps every seat).
pub const STANDBY_PENDING_MAX: usize = 1_024;
const _: () = assert!(
    STANDBY_SEATS_PER_MESSAGE * (limits::PLAYER_NAME_BYTES_MAX + 8) + 64 * 1_024
        <= limits::LINK_FRAME_BYTES_MAX
);

/// How far a successor moves the map's epoch on: past any map its predecessor may have pushed to
/// some members and not to it.
pub const TAKEOVER_EPOCH_GAP: u64 = 1 << 20;

impl Master {
    /// A master that is itself member 0 and waits for `expected` members in all.
    pub fn new(grid: CellGrid, expected: usize, me: MemberInfo, now_ms: u64) -> Self {
        let mut members = BTreeMap::new();
        let next_id = me.id.0 + 1;
        let me_id = me.id;
        members.insert(me.id, Member::new(me, now_ms, true));
        Self {
            grid,
            expected: expected.max(1),
            members,
            next_id,
            map: None,
            players: Arc::default(),
            seats: BTreeMap::new(),
            unconfirmed: BTreeMap::new(),
            sent_on: BTreeMap::new(),
            sent_on_wait_ms: limits::REDIRECT_WAIT_MS,
            admission: Admission::new(CLIENTS_PER_SHARD_DEFAULT, LOGIN_QUEUE_DEFAULT),
            duplicate: DuplicateLogin::default(),
            events: VecDeque::new(),
            now_ms,
            moves: MoveTable::default(),
            move_timeout_ms: 20_000,
            balancer: None,
            round_ms: 1_000,
            moves_done: 0,
            moves_aborted: 0,
            failovers: 0,
            silence_ms: limits::SHARD_DEAD_AFTER_MS,
            master_silence_ms: limits::MASTER_SILENCE_MS_DEFAULT,
            dead: VecDeque::new(),
            adopted_entities: 0,
            me: me_id,
            term: 0,
            support: Support::default(),
            standby: StandbyOut::default(),
            audit: Auditor::default(),
        }
    }

    /// The successor of a master that fell silent: this member (`me`) won the election for
    /// `term` with `voters` behind it (see [`super::election`]). Its state is what every member
    /// holds of the old master's: the map, the members and the dead of the last push, and the
    /// [`Standby`] (directory, draining members, buddies, moves under way, the next id). Call
    /// [`Self::take_over`] next, once configured as the old one was.
    #[allow(clippy::too_many_arguments)]
    pub fn successor(
        map: &CellMap,
        members: &[MemberInfo],
        dead: &[(ShardId, Option<ShardId>)],
        standby: &Standby,
        seats: &BTreeMap<String, ShardId>,
        me: ShardId,
        term: u64,
        voters: &[ShardId],
        now_ms: u64,
    ) -> Result<Self, CellMapError> {
        let info = (members.iter().find(|m| m.id == me).cloned()).unwrap_or(MemberInfo {
            id: me,
            client_addr: String::new(),
            link_addr: String::new(),
            metrics_addr: String::new(),
            http_addr: String::new(),
            weight: 1,
        });
        let grid = *map.grid();
        let mut m = Self::new(grid, members.len(), info, now_ms);
        for i in members {
            let mut member = Member::new(i.clone(), now_ms, true);
            // The master cannot leave: a drain of the member that now holds the role ends here
            // (it would evacuate itself and let itself go, and the cluster its master).
            member.draining = standby.draining.contains(&i.id) && i.id != me;
            member.load.buddy = (standby.buddies.iter())
                .find(|(of, _)| *of == i.id)
                .map(|(_, b)| *b);
            m.members.insert(i.id, member);
        }
        let top = members.iter().map(|i| i.id.0).max().unwrap_or(me.0);
        m.next_id = standby.next_id.max(top.saturating_add(1));
        let epoch = Epoch(map.epoch().0.saturating_add(TAKEOVER_EPOCH_GAP));
        m.map = Some(CellMap::from_leaves(grid, epoch, map.leaves().clone())?);
        m.dead = dead.iter().copied().collect();
        // A seat on a shard that is no member any more (drained, or dead, while the state was on
        // its way) seats nobody.
        for (name, shard) in seats {
            if members.iter().any(|i| i.id == *shard) {
                m.seat(name, *shard);
            }
        }
        // Seats the old master waited on: freed unless their shard reports the player within
        // the wait, which `take_over` starts (once configured).
        for (name, shard) in &standby.pending {
            if m.players.get(name) == Some(shard) && m.sent_on.len() < DIRECTORY_MAX {
                m.sent_on.insert(name.clone(), (*shard, now_ms));
            }
        }
        m.moves = MoveTable::resumed(standby.moves.iter().map(|(id, cell, from, to)| {
            ActiveMove {
                id: *id,
                cell: *cell,
                from: *from,
                to: *to,
                // Aborted by `take_over` (the old master's word on it died with it).
                started_ms: 0,
            }
        }));
        m.term = term;
        m.support = Support::all_from(voters.iter().copied(), now_ms, m.master_silence_ms);
        m.standby = StandbyOut {
            version: standby.version,
            ..StandbyOut::default()
        };
        Ok(m)
    }

    /// A successor takes the role over from `old`, the master that fell silent: `old` is declared
    /// dead and fenced, its cells go to its buddy (with its replica) as any dead member's do, the
    /// moves the old master had under way are aborted, and every member gets the new map (with
    /// an epoch past any the old master may have pushed). The notices to send.
    pub fn take_over(&mut self, old: ShardId, now_ms: u64) -> Vec<(ShardId, MasterNotice)> {
        self.now_ms = now_ms;
        let me = self.me();
        self.event(
            "master",
            format!(
                "shard {} holds the master role in term {} (shard {} fell silent)",
                me.0, self.term, old.0
            ),
        );
        for (_, until) in self.sent_on.values_mut() {
            *until = now_ms.saturating_add(self.sent_on_wait_ms);
        }
        self.declare_dead(old, "held the master role and fell silent");
        let mut out = Vec::new();
        for m in self.moves.take_all() {
            out.extend(self.abort(m, "the master that ordered it fell silent"));
        }
        out.extend(self.members_changed(None));
        out
    }

    /// This master's own member id.
    pub fn me(&self) -> ShardId {
        self.me
    }

    /// The term it holds the role in.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// Members (itself included) whose promise not to vote for another master runs now, and
    /// whether this master may act: while they are a majority of the live members, or exactly
    /// half when every other member reported this very membership ([`super::election`]).
    ///
    /// The half is safe: a candidate needs a majority of the membership it heard of, the members
    /// that promised do not vote, and this master does not; a member whose last heartbeat named
    /// this membership (`ShardLoad::members_digest`) counts in it, so at most half can vote,
    /// short of any majority. It is what lets two shards survive the death of the one that is
    /// not the master (and three, two deaths one after the other). A member that may hold
    /// another membership (one that missed a join or a death) keeps the strict majority.
    pub fn quorum(&self, now_ms: u64) -> (usize, bool) {
        let alive: Vec<ShardId> = (self.members.values())
            .filter(|m| m.alive)
            .map(|m| m.info.id)
            .collect();
        let (with, majority) = self.support.holds(self.me, &alive, now_ms);
        if majority || with * 2 < alive.len() {
            return (with, majority);
        }
        let digest = zonescaler_shared::protocol::members_digest(alive.iter().copied());
        let same_view = (self.members.values())
            .filter(|m| m.alive && m.info.id != self.me && !self.support.runs(m.info.id, now_ms))
            .all(|m| m.load.members_digest == digest);
        (with, same_view)
    }

    /// The master's state the members do not have yet ([`Standby`]): the changes since the last
    /// round to those that have the whole, the whole to the others (a joiner, everyone after a
    /// takeover). Nothing while nothing changed. Call it every housekeeping round.
    pub fn standby(&mut self) -> Vec<(ShardId, MasterNotice)> {
        if self.map.is_none() {
            return Vec::new();
        }
        let now = self.standby_now();
        let targets: Vec<ShardId> = (self.members.values())
            .filter(|m| m.alive && m.info.id != self.me)
            .map(|m| m.info.id)
            .collect();
        let fresh: Vec<ShardId> = (targets.iter())
            .filter(|id| !self.standby.full_sent.contains(id))
            .copied()
            .collect();
        let changed = !self.standby.seats.is_empty() || now != self.standby.last;
        if !changed && fresh.is_empty() {
            return Vec::new();
        }
        self.standby.version += 1;
        let version = self.standby.version;
        let chunks = |seats: Vec<(String, Option<ShardId>)>, full: bool| -> Vec<Standby> {
            let mut out: Vec<Standby> = seats
                .chunks(STANDBY_SEATS_PER_MESSAGE)
                .enumerate()
                .map(|(i, c)| Standby {
                    version,
                    full: full && i == 0,
                    seats: c.to_vec(),
                    ..now.clone()
                })
                .collect();
            if out.is_empty() {
                out.push(Standby {
                    version,
                    full,
                    ..now.clone()
                });
            }
            out
        };
        let mut out = Vec::new();
        let delta = std::mem::take(&mut self.standby.seats)
            .into_iter()
            .collect();
        let delta = chunks(delta, false);
        for id in targets.iter().filter(|id| !fresh.contains(id)) {
            out.extend(
                delta
                    .iter()
                    .map(|s| (*id, MasterNotice::Standby(Box::new(s.clone())))),
            );
        }
        if !fresh.is_empty() {
            let whole = (self.players.iter())
                .map(|(name, shard)| (name.clone(), Some(*shard)))
                .collect();
            let whole = chunks(whole, true);
            for id in fresh {
                out.extend(
                    whole
                        .iter()
                        .map(|s| (id, MasterNotice::Standby(Box::new(s.clone())))),
                );
                self.standby.full_sent.insert(id);
            }
        }
        self.standby.last = now;
        out
    }

    /// The master's state besides the directory, as a [`Standby`] without seats or version.
    fn standby_now(&self) -> Standby {
        Standby {
            version: 0,
            term: self.term,
            full: false,
            seats: Vec::new(),
            draining: (self.members.values())
                .filter(|m| m.alive && m.draining)
                .map(|m| m.info.id)
                .collect(),
            buddies: (self.members.values())
                .filter(|m| m.alive)
                .filter_map(|m| m.load.buddy.map(|b| (m.info.id, b)))
                .collect(),
            moves: (self.moves.active())
                .map(|m| (m.id, m.cell, m.from, m.to))
                .collect(),
            next_id: self.next_id,
            // Only waits on the seat the directory holds: a successor waits on nothing else.
            pending: (self.sent_on.iter())
                .map(|(name, (shard, _))| (name, *shard))
                .chain((self.unconfirmed.iter()).map(|(name, u)| (name, u.shard)))
                .filter(|(name, shard)| self.players.get(*name) == Some(shard))
                .map(|(name, shard)| (name.clone(), shard))
                .collect::<BTreeMap<String, ShardId>>()
                .into_iter()
                .take(STANDBY_PENDING_MAX)
                .collect(),
        }
    }

    /// Balance the cells with `balancer` every `round_ms` (`[balancer]`).
    pub fn with_balancer(mut self, balancer: Balancer, round_ms: u64) -> Self {
        self.balancer = Some((balancer, 0));
        self.round_ms = round_ms.max(1);
        self
    }

    /// Declare a member dead after `ms` without a heartbeat (`[cluster] shard_silence_ms`,
    /// clamped to its range); the leases it grants are two thirds of that.
    pub fn with_silence(mut self, ms: u64) -> Self {
        self.silence_ms = ms.clamp(limits::SHARD_SILENCE_MS_MIN, limits::SHARD_SILENCE_MS_MAX);
        self
    }

    /// Members elect a successor after `ms` without the master's answers (`[cluster]
    /// master_silence_ms`, clamped to its range): the promises this master counts on run that
    /// long, less a tenth ([`super::election`]).
    pub fn with_master_silence(mut self, ms: u64) -> Self {
        self.master_silence_ms =
            ms.clamp(limits::MASTER_SILENCE_MS_MIN, limits::MASTER_SILENCE_MS_MAX);
        self
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

    /// How long a player whose shard sent it on, and then lost its connection, keeps its seat
    /// unless another shard reports it first (default [`limits::REDIRECT_WAIT_MS`], the time
    /// its avatar waits for it there). The simulator shortens it to fit its runs.
    pub fn with_sent_on_wait(mut self, ms: u64) -> Self {
        self.sent_on_wait_ms = ms;
        self
    }

    /// The client cap of every shard and the login queue's bound (`[cluster]
    /// clients_per_shard_max`, `login_queue_max`).
    pub fn with_admission(mut self, clients_per_shard_max: u32, login_queue_max: u32) -> Self {
        self.admission = Admission::new(clients_per_shard_max, login_queue_max);
        self
    }

    /// Put `name` on `shard` in the directory, moving its seat from wherever it was.
    fn seat(&mut self, name: &str, shard: ShardId) {
        let players = Arc::make_mut(&mut self.players);
        if players.len() >= DIRECTORY_MAX && !players.contains_key(name) {
            return;
        }
        if let Some(old) = players.insert(name.to_owned(), shard)
            && let Some(n) = self.seats.get_mut(&old)
        {
            *n = n.saturating_sub(1);
        }
        *self.seats.entry(shard).or_default() += 1;
        self.standby.seats.insert(name.to_owned(), Some(shard));
    }

    /// Take `name` out of the directory if it is on `shard` there.
    fn unseat(&mut self, name: &str, shard: ShardId) {
        if self.players.get(name) != Some(&shard) {
            return;
        }
        Arc::make_mut(&mut self.players).remove(name);
        if let Some(n) = self.seats.get_mut(&shard) {
            *n = n.saturating_sub(1);
        }
        self.standby.seats.insert(name.to_owned(), None);
    }

    /// Players on every shard that takes work: the seats admission may give.
    fn live_seats(&self) -> BTreeMap<ShardId, u32> {
        self.members
            .values()
            .filter(|m| m.takes_work())
            .map(|m| (m.info.id, self.seats.get(&m.info.id).copied().unwrap_or(0)))
            .collect()
    }

    /// Logins waiting for a seat.
    pub fn login_queue(&self) -> usize {
        self.admission.waiting()
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

    /// Admit a shard; its id. Before placement it counts towards the expected members; after,
    /// it is a late joiner: it owns nothing until it has linked to every member and reported,
    /// and then the balancer gives it cells from the busiest shards.
    pub fn join(&mut self, req: JoinRequest, now_ms: u64) -> Result<ShardId, JoinRefused> {
        if self.members.len() >= limits::SHARDS_MAX || self.next_id == u16::MAX {
            return Err(JoinRefused::Full);
        }
        if !(1..=1_000).contains(&req.weight) {
            return Err(JoinRefused::BadWeight(req.weight));
        }
        let id = ShardId(self.next_id);
        self.next_id += 1;
        self.now_ms = now_ms;
        let late = self.map.is_some();
        // One process holds an address: a member at the joiner's link address is a process that
        // died there and was restarted (`up` does so) before the master's silence ran out.
        let replaced: Vec<ShardId> = (self.members.values())
            .filter(|m| m.alive && !req.link_addr.is_empty())
            .filter(|m| m.info.link_addr == req.link_addr)
            .map(|m| m.info.id)
            .collect();
        for old in replaced {
            let why = format!(
                "was replaced by shard {} at its address {}",
                id.0, req.link_addr
            );
            self.declare_dead(old, &why);
        }
        self.event(
            "joined",
            if late {
                format!(
                    "shard {} joined from {} (weight {}); the balancer gives it cells once it linked",
                    id.0, req.client_addr, req.weight
                )
            } else {
                format!("shard {} joined from {}", id.0, req.client_addr)
            },
        );
        let info = MemberInfo {
            id,
            client_addr: req.client_addr,
            link_addr: req.link_addr,
            metrics_addr: req.metrics_addr,
            http_addr: req.http_addr,
            weight: req.weight,
        };
        self.members.insert(id, Member::new(info, now_ms, !late));
        if late {
            // The first map it gets names the members as they are now: until its heartbeats
            // say otherwise, that is the membership it would count votes in.
            self.note_first_view(&[id]);
        }
        // Its election starts when it has formed, after this: no vote of its within the silence.
        self.support.promised(id, now_ms, self.master_silence_ms);
        Ok(id)
    }

    /// What a late joiner gets after its id: the map and the live members it must link to.
    pub fn push_for_joiner(&self) -> Option<MapPush> {
        let map = self.map.as_ref()?;
        Some(Self::push_of(map, &self.members, &self.dead))
    }

    /// The map with the member list as it is now, for every member but `except` (a joiner gets
    /// [`Self::push_for_joiner`] instead): how the others learn who joined or left.
    pub fn members_changed(&self, except: Option<ShardId>) -> Vec<(ShardId, MasterNotice)> {
        self.map_notices()
            .into_iter()
            .filter(|(to, _)| Some(*to) != except)
            .collect()
    }

    /// Start draining shard `id`: the balancer moves every cell of it away (whether balancing
    /// is on or not), admission seats nobody new on it, and once it owns no cell and no entity
    /// [`Self::check_drained`] lets it go. Draining one already draining is not an error.
    pub fn drain(&mut self, id: ShardId, now_ms: u64) -> Result<(), DrainRefused> {
        self.now_ms = now_ms;
        if self.map.is_none() {
            return Err(DrainRefused::NotPlaced);
        }
        let m = self
            .members
            .get(&id)
            .ok_or(DrainRefused::NoSuchShard(id.0))?;
        if m.draining {
            return Ok(());
        }
        if id == self.me {
            return Err(DrainRefused::Master(id.0));
        }
        if !m.alive {
            return Err(DrainRefused::NotAlive(id.0));
        }
        let others = self
            .members
            .values()
            .any(|o| o.info.id != id && o.takes_work() && o.info.weight > 0);
        if !others {
            return Err(DrainRefused::NoOtherShard(id.0));
        }
        if let Some(m) = self.members.get_mut(&id) {
            m.draining = true;
        }
        let cells = self.map.as_ref().map_or(0, |map| map.cells_of(id).count());
        self.event(
            "draining",
            format!(
                "shard {} draining: its {cells} cells move to the others",
                id.0
            ),
        );
        Ok(())
    }

    /// Let go of the draining members that are empty: no cell in the map, no move to or from
    /// them, and a report since then that they own no entity and hold no client (or clients
    /// that did not leave within [`DRAIN_CLIENTS_GRACE_MS`]). Each gets
    /// [`MasterNotice::Drained`] and leaves the membership; the others get the new member list.
    pub fn check_drained(&mut self, now_ms: u64) -> Vec<(ShardId, MasterNotice)> {
        self.now_ms = now_ms;
        let Some(map) = &self.map else {
            return Vec::new();
        };
        let mut done = Vec::new();
        for m in self.members.values_mut().filter(|m| m.draining && m.alive) {
            let id = m.info.id;
            let busy = map.cells_of(id).next().is_some()
                || self.moves.active().any(|mv| mv.from == id || mv.to == id);
            if busy {
                m.emptied_ms = None;
                continue;
            }
            let since = *m.emptied_ms.get_or_insert(now_ms);
            // A report sent after the last cell left, so its counts cover the cell's entities.
            let reported = m.last_heard_ms > since;
            let empty = m.load.owned_entities == 0 && m.load.in_transit == 0;
            let clients_gone =
                m.load.clients == 0 || now_ms.saturating_sub(since) >= DRAIN_CLIENTS_GRACE_MS;
            if reported && empty && clients_gone {
                done.push((id, m.load.clients));
            }
        }
        let mut out = Vec::new();
        for (id, clients) in done {
            self.members.remove(&id);
            self.audit.forget(id);
            self.admission.forget_gateway(id);
            self.seats.remove(&id);
            let players = Arc::make_mut(&mut self.players);
            players.retain(|_, s| *s != id);
            self.unconfirmed
                .retain(|_, u| u.shard != id && u.gateway != id);
            self.event(
                "drained",
                format!(
                    "shard {} drained: it owns nothing and leaves the cluster{}",
                    id.0,
                    if clients > 0 {
                        format!(" ({clients} clients still connected are closed)")
                    } else {
                        String::new()
                    }
                ),
            );
            out.push((id, MasterNotice::Drained));
        }
        if !out.is_empty() {
            out.extend(self.members_changed(None));
        }
        out
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
        let push = Self::push_of(&map, &self.members, &self.dead);
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
        // Each member's election starts with the map: none votes within the silence after it.
        let ids: Vec<ShardId> = self.members.keys().copied().collect();
        self.support = Support::all_from(ids.clone(), self.now_ms, self.master_silence_ms);
        self.note_first_view(&ids);
        Ok(push)
    }

    /// `ids` get their first map now, naming the live members: the membership each holds until
    /// its heartbeats report one (`ShardLoad::members_digest`, for [`Self::quorum`]).
    fn note_first_view(&mut self, ids: &[ShardId]) {
        let digest = zonescaler_shared::protocol::members_digest(
            (self.members.values())
                .filter(|m| m.alive)
                .map(|m| m.info.id),
        );
        for id in ids {
            if let Some(m) = self.members.get_mut(id) {
                m.load.members_digest = digest;
            }
        }
    }

    /// The map and the live members (a dead one is fenced: out of the membership for good).
    fn push_of(
        map: &CellMap,
        members: &BTreeMap<ShardId, Member>,
        dead: &VecDeque<(ShardId, Option<ShardId>)>,
    ) -> MapPush {
        MapPush {
            epoch: map.epoch().0,
            leaves: map.leaves().iter().map(|(c, s)| (*c, *s)).collect(),
            members: members
                .values()
                .filter(|m| m.alive)
                .map(|m| m.info.clone())
                .collect(),
            dead: dead.iter().copied().collect(),
        }
    }

    /// Whether `id` was declared dead (`Some`), and the member that adopted its cells and
    /// replica if one did.
    pub fn adopter_of(&self, id: ShardId) -> Option<Option<ShardId>> {
        self.dead.iter().find(|(d, _)| *d == id).map(|(_, a)| *a)
    }

    pub fn map(&self) -> Option<&CellMap> {
        self.map.as_ref()
    }

    pub fn members(&self) -> &BTreeMap<ShardId, Member> {
        &self.members
    }

    /// A shard's load report. Arrivals and departures update the player directory (and so the
    /// seats); an arrival confirms the seat a login was given there. The answer for `from`:
    /// its lease renewed ([`MasterNotice::Lease`]), or, for a member declared dead, that it is
    /// fenced ([`MasterNotice::Fenced`]: its cells are others' now, it must not come back to
    /// life); none for a shard that is no member (a drained shard's last report on its way).
    pub fn heartbeat(
        &mut self,
        from: ShardId,
        load: ShardLoad,
        now_ms: u64,
    ) -> Option<MasterNotice> {
        let alive = self.members.get(&from)?.alive;
        if !alive {
            return Some(MasterNotice::Fenced);
        }
        let seq = load.seq;
        self.support
            .heard(from, load.lease_seq, self.master_silence_ms);
        for name in &load.players_left {
            self.unseat(name, from);
        }
        // Unseated later, by `admit`, unless another shard reports the player first.
        for name in &load.players_sent_on {
            if self.players.get(name) == Some(&from)
                && (self.sent_on.len() < DIRECTORY_MAX || self.sent_on.contains_key(name))
            {
                let until = now_ms.saturating_add(self.sent_on_wait_ms);
                self.sent_on.insert(name.clone(), (from, until));
            }
        }
        // An arrival anywhere ends the login's wait: the player is seated where it plays (a
        // wait left on the shard the login was granted would name a seat it no longer has, and
        // a successor would take it for the seat's own: seed 2109).
        for name in &load.players_arrived {
            self.sent_on.remove(name);
            self.seat(name, from);
            self.unconfirmed.remove(name);
        }
        if let Some(m) = self.members.get_mut(&from) {
            m.linked = true;
            m.last_heard_ms = now_ms;
            m.load = ShardLoad {
                players_arrived: Vec::new(),
                players_left: Vec::new(),
                players_sent_on: Vec::new(),
                ..load
            };
        }
        self.support.answered(from, seq, now_ms);
        // Without a majority behind it this master grants no lease (another may be elected),
        // but still answers: a member that hears it promises again, and the majority may return.
        let lease_ms = if self.quorum(now_ms).1 {
            limits::lease_ms_for(self.silence_ms) as u32
        } else {
            0
        };
        Some(MasterNotice::Lease { seq, lease_ms })
    }

    /// Part of a member's ownership report ([`super::audit`]); one from a shard that is no live
    /// member (fenced, drained, its report on its way) is dropped: a dead member's entities are
    /// its adopter's to report.
    pub fn audit_part(&mut self, from: ShardId, part: AuditPart, now_ms: u64) {
        if !self.members.get(&from).is_some_and(|m| m.alive) {
            return;
        }
        if let Err(e) = self.audit.part(from, part, now_ms) {
            tracing::warn!(shard = from.0, error = %e, "ownership report part refused");
        }
    }

    /// Take the ownership audit now, of every live member's latest report (the housekeeping
    /// does every `limits::AUDIT_MS`).
    pub fn take_audit(&mut self, now_ms: u64) -> Arc<Audit> {
        let live: Vec<ShardId> = (self.members.values())
            .filter(|m| m.alive)
            .map(|m| m.info.id)
            .collect();
        self.audit.take(now_ms, &live)
    }

    /// The latest ownership audit.
    pub fn audit(&self) -> Arc<Audit> {
        self.audit.latest()
    }

    /// One admission round (call it after heartbeats): seats given to logins whose client never
    /// arrived are freed, then waiting logins are seated while shards have room. The notices to
    /// send: seats granted, places that moved, refusals when no shard can take players any more.
    pub fn admit(&mut self, now_ms: u64) -> Vec<(ShardId, MasterNotice)> {
        self.now_ms = now_ms;
        let expired: Vec<(String, ShardId)> = self
            .unconfirmed
            .iter()
            .filter(|(_, u)| u.until_ms <= now_ms)
            .map(|(name, u)| (name.clone(), u.shard))
            .collect();
        for (name, shard) in expired {
            self.unconfirmed.remove(&name);
            self.unseat(&name, shard);
        }
        let gone: Vec<(String, ShardId)> = self
            .sent_on
            .iter()
            .filter(|(_, (_, until))| *until <= now_ms)
            .map(|(name, (shard, _))| (name.clone(), *shard))
            .collect();
        for (name, shard) in gone {
            self.sent_on.remove(&name);
            self.unseat(&name, shard);
        }
        let mut seats = self.live_seats();
        let round = self.admission.admit(&mut seats);
        let mut out = Vec::new();
        let notice = |w: &Waiter, outcome| {
            let account = w.account.clone();
            let session = w.session;
            (
                w.gateway,
                MasterNotice::Claim {
                    account,
                    session,
                    outcome,
                },
            )
        };
        for (w, shard) in round.seated {
            self.grant(&w, shard);
            out.push(notice(&w, ClaimOutcome::Granted { shard }));
        }
        for (w, place) in round.moved {
            out.push(notice(&w, ClaimOutcome::Queued(place)));
        }
        for w in round.refused {
            out.push(notice(&w, ClaimOutcome::NoRoom(NoRoomWhy::NoShard)));
        }
        out
    }

    /// `w` plays on `shard`: its seat is taken now, and freed again unless `shard` reports it
    /// within [`limits::ADMISSION_ARRIVAL_WAIT_MS`].
    fn grant(&mut self, w: &Waiter, shard: ShardId) {
        self.seat(&w.account, shard);
        if self.unconfirmed.len() < DIRECTORY_MAX {
            let until_ms = self.now_ms + limits::ADMISSION_ARRIVAL_WAIT_MS;
            let u = Unconfirmed {
                shard,
                gateway: w.gateway,
                session: w.session,
                until_ms,
            };
            self.unconfirmed.insert(w.account.clone(), u);
        }
    }

    /// One round of the master's housekeeping, as the runtime runs it with every heartbeat:
    /// members silent too long declared dead, moves overdue or with a dead party aborted, a
    /// balancing round when one is due (at once after a death), the others told who left, and
    /// drained shards let go. The members newly declared dead, and the notices to send.
    pub fn housekeeping(&mut self, now_ms: u64) -> (Vec<ShardId>, Vec<(ShardId, MasterNotice)>) {
        let dead = self.check_liveness(now_ms);
        if self.audit.due(now_ms) {
            self.take_audit(now_ms);
        }
        let mut notices = self.check_moves(now_ms);
        notices.extend(self.balance(now_ms));
        if !dead.is_empty() {
            // The others learn who left even when it owned no cell to give away.
            notices.extend(self.members_changed(None));
        }
        notices.extend(self.check_drained(now_ms));
        (dead, notices)
    }

    /// Mark members silent for too long as dead (fenced: out of the membership for good, their
    /// cells given to live shards by the next balancing round, which comes at once); the ones
    /// newly marked.
    pub fn check_liveness(&mut self, now_ms: u64) -> Vec<ShardId> {
        self.now_ms = now_ms;
        let dead: Vec<ShardId> = (self.members.values())
            .filter(|m| m.alive && now_ms.saturating_sub(m.last_heard_ms) > self.silence_ms)
            .map(|m| m.info.id)
            .collect();
        for id in &dead {
            let why = format!("silent for {} ms", self.silence_ms);
            self.declare_dead(*id, &why);
        }
        dead
    }

    /// Member `id` is dead: fenced (out of the membership for good), its waiting logins gone
    /// (their clients were connected to it), and a balancing round due now, since its cells
    /// have no simulating owner.
    fn declare_dead(&mut self, id: ShardId, why: &str) {
        let Some(m) = self.members.get_mut(&id).filter(|m| m.alive) else {
            return;
        };
        m.alive = false;
        self.support.forget(id);
        self.standby.full_sent.remove(&id);
        // Before its cells go anywhere: its adopter continues its entities' generations.
        self.audit.forget(id);
        self.admission.forget_gateway(id);
        // Its players' sessions died with it: out of the directory (a player who comes back
        // logs in afresh), and their seats with them.
        let gone: Vec<String> = (self.players.iter())
            .filter(|(_, s)| **s == id)
            .map(|(name, _)| name.clone())
            .collect();
        for name in &gone {
            self.unseat(name, id);
        }
        self.sent_on.retain(|_, (from, _)| *from != id);
        self.unconfirmed.retain(|_, u| u.shard != id);
        self.seats.remove(&id);
        self.event(
            "dead",
            format!("shard {} {why}: declared dead and fenced", id.0),
        );
        let adopter = self.adopt_all(id);
        // Its players' avatars are the adopter's now, waiting for their clients to come back
        // (with their resume tickets): seated there for as long as an avatar waits.
        if let Some(to) = adopter {
            let until = self.now_ms.saturating_add(self.sent_on_wait_ms);
            for name in gone {
                self.seat(&name, to);
                if self.sent_on.len() < DIRECTORY_MAX {
                    self.sent_on.insert(name, (to, until));
                }
            }
        }
        if self.dead.len() >= limits::SHARDS_MAX {
            self.dead.pop_front();
        }
        self.dead.push_back((id, adopter));
        if let Some((_, next)) = self.balancer.as_mut() {
            *next = self.now_ms;
        }
    }

    /// Failover of dead member `id`: every leaf of it to the buddy that holds its replica (the
    /// one its last heartbeat named), in one map, if that buddy is alive and linked; the
    /// adopter. Without one its leaves wait for the balancer, and what it owned is lost.
    fn adopt_all(&mut self, id: ShardId) -> Option<ShardId> {
        let (buddy, owned, lag) = self.members.get(&id).map(|m| {
            (
                m.load.buddy,
                m.load.owned_entities,
                m.load.replica_lag_ticks,
            )
        })?;
        let to = buddy.filter(|b| self.members.get(b).is_some_and(|m| m.alive && m.linked))?;
        let map = self.map.as_mut()?;
        let leaves: Vec<CellId> = map.cells_of(id).collect();
        let mut epoch = map.epoch();
        for cell in &leaves {
            match map.reassign(*cell, to) {
                Ok(e) => epoch = e,
                Err(e) => tracing::error!(%cell, error = %e, "failover could not reassign a leaf"),
            }
        }
        self.failovers += leaves.len() as u64;
        self.adopted_entities += u64::from(owned);
        self.event(
            "failover",
            format!(
                "epoch {}: shard {} adopted dead shard {}'s {} cells and its replica \
                 ({owned} entities at its last report, replica {lag} ticks behind)",
                epoch.0,
                to.0,
                id.0,
                leaves.len()
            ),
        );
        Some(to)
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
            MasterRequest::Claim {
                account,
                session,
                want,
            } => self.claim(from, account, session, want),
            MasterRequest::Release { account, session } => {
                self.release(from, &account, session);
                Vec::new()
            }
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
            MasterRequest::Locate { account, session } => self.locate(from, account, session),
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
        let push = Self::push_of(map, &self.members, &self.dead);
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
        // A draining shard would have to give the cell straight back; a joiner not linked yet
        // could not reach the cell's neighbours.
        if !self.members.get(&to).is_some_and(Member::takes_work) {
            return Err(MoveError::NotTakingCells(to.0));
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

    /// One balancing round when one is due: the balancer's plan from the shards' last reports,
    /// carried out (moves started, splits and merges pushed). Its notices, to send.
    pub fn balance(&mut self, now_ms: u64) -> Vec<(ShardId, MasterNotice)> {
        let (shards, cells) = self.balance_inputs();
        let (Some((balancer, next)), Some(map)) = (self.balancer.as_mut(), self.map.as_ref())
        else {
            return Vec::new();
        };
        if now_ms < *next {
            return Vec::new();
        }
        *next = now_ms + self.round_ms;
        let plan = balancer.plan(now_ms, map, &shards, &cells);
        let mut out = Vec::new();
        for p in plan.actions {
            let done = match p.action {
                Action::Move { cell, from, to } if !self.is_alive(from) => {
                    self.adopt_cell(cell, from, to)
                }
                Action::Move { cell, to, .. } => {
                    self.move_cell(cell, to, now_ms).map_err(|e| e.to_string())
                }
                Action::Split { cell } => self.split_cell(cell),
                Action::Merge { parent } => self.merge_cell(parent),
            };
            match done {
                Ok(notices) => {
                    self.event("balancer", format!("{:?}: {}", p.action, p.reason));
                    out.extend(notices);
                }
                Err(e) => {
                    tracing::debug!(action = ?p.action, error = %e, "balancer action not taken")
                }
            }
        }
        for note in plan.notes {
            tracing::debug!(?note, "balancer");
        }
        out
    }

    /// Failover of leaf `cell` of dead (fenced) shard `from`: `to` owns it from the new epoch on,
    /// at once (nobody simulates it; the lease stopped `from` before it was declared dead). Only
    /// for a dead shard nobody adopted ([`Self::adopt_all`]): what it held there is lost.
    fn adopt_cell(
        &mut self,
        cell: CellId,
        from: ShardId,
        to: ShardId,
    ) -> Result<Vec<(ShardId, MasterNotice)>, String> {
        if !self.members.get(&to).is_some_and(Member::takes_work) {
            return Err(MoveError::NotTakingCells(to.0).to_string());
        }
        let map = self.map.as_mut().ok_or(MoveError::NotPlaced.to_string())?;
        if map.owner_of(cell) != Some(from) {
            return Err(MoveError::NotALeaf(cell).to_string());
        }
        let epoch = map.reassign(cell, to).map_err(|e| e.to_string())?;
        let lost = self.members.get(&from).map_or(0, |m| {
            m.load
                .cells
                .iter()
                .filter(|c| c.cell == cell)
                .map(|c| c.entities)
                .sum::<u32>()
        });
        self.failovers += 1;
        self.event(
            "failover",
            format!(
                "epoch {}: cell {cell} of dead shard {} now on shard {} ({lost} entities it last \
                 reported there are lost: its buddy was gone too)",
                epoch.0, from.0, to.0
            ),
        );
        Ok(self.map_notices())
    }

    /// What the balancer reads: each member's last load, and each cell it reported.
    fn balance_inputs(&self) -> (Vec<ShardInput>, Vec<CellInput>) {
        let shards = self
            .members
            .values()
            .map(|m| ShardInput {
                id: m.info.id,
                weight: m.info.weight,
                // A late joiner gets cells once it linked to every member.
                alive: m.alive && m.linked,
                draining: m.draining,
                // What it would need to keep its tick rate, not what it got: a saturated
                // shard's measured shares stop at the cores it has.
                tick_cpu_share: m.load.cpu_demand(),
                clients: m.load.clients,
                entities: m.load.owned_entities,
                mem_share: 0.0,
            })
            .collect();
        let cells = self
            .members
            .values()
            .filter(|m| m.alive)
            .flat_map(|m| {
                m.load.cells.iter().map(|c| CellInput {
                    cell: c.cell,
                    owner: m.info.id,
                    entities: c.entities,
                    clients: c.clients,
                    tick_share: c.tick_share,
                })
            })
            .collect();
        (shards, cells)
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

    /// One session per account: a login on `from` may play `account` unless it plays (or waits)
    /// elsewhere and the rule refuses a second session. Then admission: a seat on `want` or
    /// another shard with room, a place in the login queue, or no room.
    fn claim(
        &mut self,
        from: ShardId,
        account: String,
        session: u64,
        want: ShardId,
    ) -> Vec<(ShardId, MasterNotice)> {
        let answer = |outcome| MasterNotice::Claim {
            account: account.clone(),
            session,
            outcome,
        };
        let w = Waiter {
            gateway: from,
            session,
            account: account.clone(),
            want,
        };
        let holder = self
            .players
            .get(&account)
            .copied()
            .filter(|s| self.members.get(s).is_some_and(|m| m.alive));
        let waiting = self.admission.waiting_as(&account);
        let mut out = Vec::new();
        match (holder, waiting, self.duplicate) {
            (Some(_), _, DuplicateLogin::Refuse) | (_, Some(_), DuplicateLogin::Refuse) => {
                return vec![(from, answer(ClaimOutcome::InUse))];
            }
            (_, Some((old, _)), DuplicateLogin::Takeover) => {
                // The new session waits in the old one's place.
                out.push((
                    old,
                    MasterNotice::Kick {
                        account: account.clone(),
                    },
                ));
                if let Some(place) = self.admission.replace(w) {
                    out.push((from, answer(ClaimOutcome::Queued(place))));
                }
                return out;
            }
            (Some(old), None, DuplicateLogin::Takeover) => {
                // The old session's seat is the new one's: it never queues.
                out.push((
                    old,
                    MasterNotice::Kick {
                        account: account.clone(),
                    },
                ));
                self.unseat(&account, old);
                let shard = self.admission.pick(want, &self.live_seats()).unwrap_or(old);
                self.grant(&w, shard);
                out.push((from, answer(ClaimOutcome::TookOver { shard })));
                return out;
            }
            (None, None, _) => {}
        }
        let outcome = match self.admission.ask(w.clone(), &self.live_seats()) {
            Verdict::Play(shard) => {
                self.grant(&w, shard);
                ClaimOutcome::Granted { shard }
            }
            Verdict::Queued(place) => ClaimOutcome::Queued(place),
            Verdict::NoRoom(why) => ClaimOutcome::NoRoom(why),
        };
        vec![(from, answer(outcome))]
    }

    /// The login `session` of `account` on `from` ended before it played: out of the queue, and
    /// its seat freed if it was given one that no shard has reported since.
    fn release(&mut self, from: ShardId, account: &str, session: u64) {
        if self.admission.leave(from, session) {
            return;
        }
        let mine = |u: &Unconfirmed| u.gateway == from && u.session == session;
        if let Some(u) = self.unconfirmed.get(account).copied().filter(mine) {
            self.unconfirmed.remove(account);
            self.unseat(account, u.shard);
        }
    }

    /// Where the directory seats `account`, for a client that resumes through `from` (its
    /// session there is `session`). Failover seats a dead shard's players on the shard that
    /// adopts their avatars, so this is where a resuming client's avatar is, or will be.
    ///
    /// `live` when that shard reported within two heartbeats: a client that lost its shard
    /// notices only after a silence longer than that, so a live seat is not the shard it lost,
    /// but the one it was being sent on from (the directory seats it there until it arrives).
    fn locate(&self, from: ShardId, account: String, session: u64) -> Vec<(ShardId, MasterNotice)> {
        let shard = self.player(&account);
        let live = shard.and_then(|s| self.members.get(&s)).is_some_and(|m| {
            m.alive && self.now_ms.saturating_sub(m.last_heard_ms) <= 2 * limits::HEARTBEAT_MS
        });
        vec![(
            from,
            MasterNotice::Located {
                account,
                session,
                shard,
                live,
            },
        )]
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
        let audit = self.audit.latest();
        view.audit = audit.summary();
        view.audit_full = audit;
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
        // A dead shard's last report describes entities that went with it.
        for m in self.members.values().filter(|m| m.alive) {
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
            .map(|m| {
                let seats = self.seats.get(&m.info.id).copied().unwrap_or(0);
                ShardView::of(m, cells_of(m.info.id), seats)
            })
            .collect();
        ClusterView {
            master: self.me.0,
            term: self.term,
            epoch: self.map.as_ref().map_or(0, |m| m.epoch().0),
            placed: self.map.is_some(),
            expected_shards: self.expected,
            // The living's: what a dead shard last reported went with it.
            total_entities: shards
                .iter()
                .filter(|s| s.alive)
                .map(|s| u64::from(s.owned_entities) + u64::from(s.in_transit))
                .sum(),
            handoffs_total: shards.iter().map(|s| s.handoffs_out).sum(),
            players: self.players.len(),
            login_queue: self.admission.waiting(),
            shards,
            directory: self.players.clone(),
            ..ClusterView::default()
        }
    }
}

/// The cluster as the master sees it (`GET /api/cluster`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct ClusterView {
    /// The member holding the master role (the one serving this view) and its term (0: the
    /// shard that formed the cluster; one more with each successor, `cluster::election`).
    pub master: u16,
    pub term: u64,
    /// Served by a shard that does not hold the master role: the master's API address (empty
    /// when it serves none). Nothing else is filled then; the API answers `307` to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub master_api: Option<String>,
    pub epoch: u64,
    /// Whether the cells have been placed (every expected shard joined).
    pub placed: bool,
    pub expected_shards: usize,
    /// Entities owned by some shard, or frozen in a handoff, summed over each shard's last
    /// heartbeat. The heartbeats are up to `HEARTBEAT_MS` apart, so an entity handed over
    /// between two of them counts on both shards, or on neither, for a moment: with entities
    /// crossing borders the figure wanders by about the handoffs in flight.
    pub total_entities: u64,
    /// Handoffs completed, cluster-wide.
    pub handoffs_total: u64,
    /// Players in the directory.
    pub players: usize,
    /// Logins waiting for a seat (every shard at its client cap).
    pub login_queue: usize,
    /// The world rectangle, in metres.
    pub world: WorldView,
    pub shards: Vec<ShardView>,
    /// Every leaf of the cell map.
    pub cells: Vec<CellView>,
    /// The latest cluster events, oldest first.
    pub events: Vec<ClusterEvent>,
    /// The latest ownership audit, in short (`GET /api/audit` has all of it).
    pub audit: AuditSummary,
    /// The latest ownership audit, for `GET /api/audit` (operator only: it names entities).
    #[serde(skip)]
    pub audit_full: Arc<Audit>,
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
    /// What a shard that does not hold the master role serves: where the master's API is.
    pub fn pointer(master: ShardId, term: u64, api: String) -> Self {
        Self {
            master: master.0,
            term,
            master_api: Some(api),
            ..Self::default()
        }
    }

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
    /// Being drained (`zonescaler drain`): its cells move away, then it leaves.
    pub draining: bool,
    /// It reported since it joined; a late joiner gets cells only then.
    pub linked: bool,
    pub weight: u32,
    pub cells: usize,
    pub owned_entities: u32,
    pub in_transit: u32,
    pub proxies: u32,
    /// Connections (playing, logging in, waiting in the login queue, following a redirect).
    pub clients: u32,
    /// Players the directory has on it: the seats admission counts against the client cap.
    pub players: u32,
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
    /// The window's wall time over the time its ticks were due to take (1: on schedule; 0:
    /// not measured), and the CPU it would need to keep its rate, in cores
    /// (`ShardLoad::cpu_demand`): the load the balancer reads.
    pub tick_slowdown: f32,
    pub cpu_demand: f32,
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
    /// `m` as the API shows it, owning `cells` leaves, holding `players` seats.
    fn of(m: &Member, cells: usize, players: u32) -> Self {
        let l = &m.load;
        Self {
            id: m.info.id.0,
            addr: m.info.client_addr.clone(),
            link_addr: m.info.link_addr.clone(),
            metrics_addr: m.info.metrics_addr.clone(),
            alive: m.alive,
            draining: m.draining,
            linked: m.linked,
            weight: m.info.weight,
            cells,
            owned_entities: l.owned_entities,
            in_transit: l.in_transit,
            proxies: l.proxies,
            clients: l.clients,
            players,
            tick: l.tick,
            window_ms: l.window_ms,
            ticks: l.ticks,
            tick_cpu_ms: l.tick_cpu_ms,
            tick_cpu_share: l.tick_cpu_share,
            tick_ms_p50: l.tick_ms_p50,
            tick_ms_p99: l.tick_ms_p99,
            tick_overruns: l.tick_overruns,
            tick_slowdown: l.tick_slowdown,
            cpu_demand: l.cpu_demand(),
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
            http_addr: String::new(),
            weight: 1,
        }
    }

    fn join(addr: &str, weight: u32) -> JoinRequest {
        JoinRequest {
            client_addr: addr.into(),
            link_addr: addr.into(),
            metrics_addr: String::new(),
            http_addr: String::new(),
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
                want: ShardId(from),
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
                    outcome: ClaimOutcome::Granted { shard: ShardId(1) }
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
                        outcome: ClaimOutcome::TookOver { shard: ShardId(0) }
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
            "tick_slowdown",
            "cpu_demand",
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

    /// Two shards, the owner of every cell saturated: its tick thread got the whole core and
    /// still ticked at a third of its rate. Each of its two busy border cells takes half its
    /// tick. The neighbour is nearly idle.
    fn saturated_pair(owner_slowdown: f32) -> (Master, ShardId, ShardId) {
        let config = WorldConfig::default();
        let grid = CellGrid::from_config(&config);
        let balancer = Balancer::new(&config).expect("default balancer settings");
        let mut m = Master::new(grid, 2, info("a"), 0).with_balancer(balancer, 1_000);
        m.join(join("b", 1), 0).expect("join");
        m.place().expect("placement");
        let leaves: Vec<(CellId, ShardId)> = m
            .map()
            .expect("placed")
            .leaves()
            .iter()
            .map(|(c, s)| (*c, *s))
            .collect();
        let owner = leaves[0].1;
        let neighbour = ShardId(1 - owner.0);
        let mine: Vec<CellId> = leaves
            .iter()
            .filter(|(_, s)| *s == owner)
            .map(|(c, _)| *c)
            .collect();
        let cell = |cell, tick_share| CellLoad {
            cell,
            entities: 500,
            clients: 50,
            tick_share,
        };
        for t in 0..=10u64 {
            let now = t * 500;
            m.heartbeat(
                owner,
                ShardLoad {
                    ticks: 2,
                    tick_cpu_share: 1.0,
                    process_cpu_share: 0.9,
                    tick_slowdown: owner_slowdown,
                    cells: vec![cell(mine[0], 0.5), cell(mine[mine.len() - 1], 0.5)],
                    ..ShardLoad::default()
                },
                now,
            );
            m.heartbeat(
                neighbour,
                ShardLoad {
                    ticks: 6,
                    tick_cpu_share: 0.05,
                    process_cpu_share: 0.05,
                    tick_slowdown: 1.0,
                    ..ShardLoad::default()
                },
                now,
            );
        }
        (m, owner, neighbour)
    }

    /// The cells moved to `target` over `rounds` balancing rounds, one a second, the heartbeats
    /// unchanged (a threshold must hold `hold_ms`, 3 s by default, before anything moves).
    fn moved_to(m: &mut Master, target: ShardId, rounds: u64) -> Vec<CellId> {
        let mut moved = Vec::new();
        for r in 0..rounds {
            for (_, notice) in m.balance(6_000 + r * 1_000) {
                if let MasterNotice::MoveCell { to, cell, .. } = notice
                    && to == target
                    && !moved.contains(&cell)
                {
                    moved.push(cell);
                }
            }
        }
        moved
    }

    #[test]
    fn the_balancer_reads_what_a_saturated_shard_would_need_not_the_core_it_got() {
        let (m, owner, neighbour) = saturated_pair(3.0);
        let (shards, _) = m.balance_inputs();
        let load_of = |id| {
            shards
                .iter()
                .find(|s| s.id == id)
                .expect("listed")
                .tick_cpu_share
        };
        assert_eq!(
            load_of(owner),
            3.0,
            "a whole core at a third of the tick rate: three cores' worth"
        );
        assert_eq!(load_of(neighbour), 0.05, "on schedule: what it used");
        let view = m.view();
        let s = &view.shards[usize::from(owner.0)];
        assert_eq!((s.tick_slowdown, s.cpu_demand), (3.0, 3.0));

        // Each busy base cell costs 1.5 cores, too much for the neighbour: the balancer splits
        // them and gives away quarters (0.375 each), only as many as the neighbour can take
        // under the 0.8 threshold. Read as the censored single core, a quarter would look like
        // an eighth of a core and the neighbour would be sent far more than it can carry: the
        // churn a saturated cluster showed.
        let received = |moved: &[CellId]| -> f32 {
            0.05 + moved
                .iter()
                .map(|c| 1.5 / 4f32.powi(i32::from(c.level)))
                .sum::<f32>()
        };
        let (mut m, _, neighbour) = saturated_pair(3.0);
        let moved = moved_to(&mut m, neighbour, 8);
        assert!(!moved.is_empty(), "the saturated shard is relieved");
        assert!(
            received(&moved) <= 0.8 + 1e-4,
            "the neighbour ends at {} cores: {moved:?}",
            received(&moved)
        );
        let (mut censored, _, neighbour) = saturated_pair(0.0);
        let moved = moved_to(&mut censored, neighbour, 8);
        assert!(
            received(&moved) > 1.0,
            "the control: without the slowdown (not measured) the neighbour would be given {} \
             cores: {moved:?}",
            received(&moved)
        );
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

    /// The outcome of each notice, by account.
    fn outcomes(notices: &[(ShardId, MasterNotice)]) -> Vec<(String, ClaimOutcome)> {
        notices
            .iter()
            .filter_map(|(_, n)| match n {
                MasterNotice::Claim {
                    account, outcome, ..
                } => Some((account.clone(), *outcome)),
                _ => None,
            })
            .collect()
    }

    fn names(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn leaving(names_: &[&str]) -> ShardLoad {
        ShardLoad {
            players_left: names(names_),
            ..ShardLoad::default()
        }
    }

    fn queued(position: u32, waiting: u32) -> ClaimOutcome {
        ClaimOutcome::Queued(zonescaler_shared::protocol::QueuePlace { position, waiting })
    }

    #[test]
    fn logins_fill_every_shard_to_its_cap_then_wait_in_line_and_are_seated_as_players_leave() {
        let mut m = placed_pair(DuplicateLogin::Refuse).with_admission(2, 2);
        let mut got = Vec::new();
        for n in 1..=7 {
            got.extend(outcomes(&claim(&mut m, 0, &format!("p{n}"), n)));
        }
        let granted = |s| ClaimOutcome::Granted { shard: ShardId(s) };
        let no_room = ClaimOutcome::NoRoom(NoRoomWhy::QueueFull { max: 2 });
        let want: Vec<(String, ClaimOutcome)> = [
            ("p1", granted(0)),
            ("p2", granted(0)),
            ("p3", granted(1)),
            ("p4", granted(1)),
            ("p5", queued(1, 1)),
            ("p6", queued(2, 2)),
            ("p7", no_room),
        ]
        .into_iter()
        .map(|(a, o)| (a.to_string(), o))
        .collect();
        assert_eq!(got, want, "shard 0 fills, then shard 1, then the queue");
        assert_eq!(m.login_queue(), 2);
        assert!(m.admit(20).is_empty(), "nobody left: nothing moves");
        m.heartbeat(ShardId(1), leaving(&["p4"]), 30);
        assert_eq!(
            outcomes(&m.admit(30)),
            [
                ("p5".to_string(), granted(1)),
                ("p6".to_string(), queued(1, 1))
            ],
            "the first in line takes the seat, the next moves up"
        );
        assert_eq!(m.player("p5"), Some(ShardId(1)));
        m.request(
            ShardId(0),
            MasterRequest::Release {
                account: "p6".into(),
                session: 6,
            },
            40,
        );
        assert_eq!(m.login_queue(), 0, "a waiter that hung up leaves the line");
        assert_eq!(m.view().shards[1].players, 2);
    }

    fn arriving(names_: &[&str]) -> ShardLoad {
        ShardLoad {
            players_arrived: names(names_),
            ..ShardLoad::default()
        }
    }

    fn sent_on(names_: &[&str]) -> ShardLoad {
        ShardLoad {
            players_sent_on: names(names_),
            ..ShardLoad::default()
        }
    }

    #[test]
    fn a_player_sent_on_keeps_its_seat_until_its_new_shard_reports_it_or_the_wait_ends() {
        // Both shards full (cap 1); p1 walks from shard 0 to shard 1, p2 from 1 to 0, and
        // shard 0's report that p1's connection ended comes before shard 1's of its arrival.
        let mut m = placed_pair(DuplicateLogin::Refuse).with_admission(1, 5);
        claim(&mut m, 0, "p1", 1);
        claim(&mut m, 0, "p2", 2);
        m.heartbeat(ShardId(0), arriving(&["p1"]), 10);
        m.heartbeat(ShardId(1), arriving(&["p2"]), 10);
        assert_eq!(
            outcomes(&claim(&mut m, 0, "p3", 3)),
            [("p3".to_string(), queued(1, 1))]
        );
        m.heartbeat(ShardId(0), sent_on(&["p1"]), 100);
        assert!(
            m.admit(100).is_empty(),
            "p1 is on its way: no seat for p3 (it was given one, and the cap broken, before)"
        );
        m.heartbeat(ShardId(1), arriving(&["p1"]), 200);
        m.heartbeat(ShardId(0), arriving(&["p2"]), 200);
        let wait = limits::REDIRECT_WAIT_MS;
        assert!(
            m.admit(100 + wait).is_empty(),
            "p1 arrived: nothing to free"
        );
        assert_eq!(m.player("p1"), Some(ShardId(1)));
        assert_eq!(
            (m.view().shards[0].players, m.view().shards[1].players),
            (1, 1)
        );
        // p2 is sent on again and never arrives anywhere: its seat comes back after the wait.
        m.heartbeat(ShardId(0), sent_on(&["p2"]), 1_000);
        assert!(m.admit(1_000 + wait - 1).is_empty(), "not yet");
        assert_eq!(
            outcomes(&m.admit(1_000 + wait)),
            [(
                "p3".to_string(),
                ClaimOutcome::Granted { shard: ShardId(0) }
            )],
            "p2's seat came back"
        );
        assert_eq!(m.player("p2"), None);
    }

    /// Seed 2109: a login granted on one shard arrived on the other, was sent on from there, and
    /// quit. The login's wait on the first shard stayed, and the state for successors named it
    /// instead of the wait on the seat: a successor kept the seat for good.
    #[test]
    fn a_login_that_arrives_on_another_shard_ends_its_wait_and_successors_wait_on_its_seat() {
        let mut m = placed_pair(DuplicateLogin::Refuse);
        claim(&mut m, 0, "p1", 1);
        let granted = m.player("p1").expect("seated");
        let other = ShardId(1 - granted.0);
        m.heartbeat(other, arriving(&["p1"]), 10);
        m.heartbeat(other, sent_on(&["p1"]), 20);
        let pending: Vec<Vec<(String, ShardId)>> = (m.standby().into_iter())
            .filter_map(|(_, n)| match n {
                MasterNotice::Standby(s) => Some(s.pending),
                _ => None,
            })
            .collect();
        assert!(!pending.is_empty(), "the other member gets the state");
        for p in pending {
            assert_eq!(p, vec![("p1".to_string(), other)], "the wait on its seat");
        }
        // Its seat is freed by the wait of the shard that sent it on, not kept for the login.
        assert!(m.admit(20 + limits::REDIRECT_WAIT_MS - 1).is_empty());
        assert_eq!(m.player("p1"), Some(other));
        m.admit(20 + limits::REDIRECT_WAIT_MS.max(limits::ADMISSION_ARRIVAL_WAIT_MS));
        assert_eq!(m.player("p1"), None);
    }

    #[test]
    fn a_seat_whose_player_never_arrives_is_freed_after_the_wait_or_at_once_when_released() {
        let mut m = placed_pair(DuplicateLogin::Refuse).with_admission(1, 5);
        claim(&mut m, 0, "p1", 1); // shard 0, confirmed below
        claim(&mut m, 0, "p2", 2); // shard 1, never arrives
        m.heartbeat(
            ShardId(0),
            ShardLoad {
                players_arrived: vec!["p1".into()],
                ..ShardLoad::default()
            },
            20,
        );
        assert_eq!(
            outcomes(&claim(&mut m, 0, "p3", 3)),
            [("p3".to_string(), queued(1, 1))]
        );
        let wait = limits::ADMISSION_ARRIVAL_WAIT_MS;
        assert!(m.admit(10 + wait - 1).is_empty(), "not yet");
        assert_eq!(
            outcomes(&m.admit(10 + wait)),
            [(
                "p3".to_string(),
                ClaimOutcome::Granted { shard: ShardId(1) }
            )],
            "p2's seat came back; p1's was confirmed and stays"
        );
        assert_eq!(m.player("p1"), Some(ShardId(0)));
        assert_eq!(m.player("p2"), None);
        m.request(
            ShardId(0),
            MasterRequest::Release {
                account: "p3".into(),
                session: 3,
            },
            20_000,
        );
        assert_eq!(
            m.player("p3"),
            None,
            "released before it arrived: its seat is free"
        );
        assert_eq!(
            outcomes(&claim(&mut m, 0, "p4", 4)),
            [(
                "p4".to_string(),
                ClaimOutcome::Granted { shard: ShardId(1) }
            )]
        );
    }

    #[test]
    fn with_no_shard_to_take_players_a_login_is_refused_at_once_and_waiters_when_it_dies() {
        let mut m = placed_pair(DuplicateLogin::Refuse).with_admission(0, 5);
        assert_eq!(
            outcomes(&claim(&mut m, 1, "p1", 1)),
            [("p1".to_string(), ClaimOutcome::NoRoom(NoRoomWhy::NoShard))]
        );
        let mut m = placed_pair(DuplicateLogin::Refuse).with_admission(1, 5);
        claim(&mut m, 0, "p1", 1);
        claim(&mut m, 0, "p2", 2);
        assert_eq!(
            outcomes(&claim(&mut m, 1, "p3", 3)),
            [("p3".to_string(), queued(1, 1))]
        );
        // Shard 1 falls silent first (it held p3's connection), then shard 0 too.
        m.heartbeat(ShardId(0), ShardLoad::default(), 1_000);
        assert_eq!(
            m.check_liveness(limits::SHARD_DEAD_AFTER_MS + 1),
            [ShardId(1)]
        );
        assert_eq!(m.login_queue(), 0, "shard 1 died with its waiting clients");
        m.check_liveness(1_000 + limits::SHARD_DEAD_AFTER_MS + 1);
        assert_eq!(
            outcomes(&claim(&mut m, 0, "p4", 4)),
            [("p4".to_string(), ClaimOutcome::NoRoom(NoRoomWhy::NoShard))],
            "no live shard: refused at once, not left waiting"
        );
    }

    #[test]
    fn a_takeover_keeps_the_old_seat_or_the_old_place_in_line() {
        let mut m = placed_pair(DuplicateLogin::Takeover).with_admission(1, 5);
        claim(&mut m, 1, "ann", 1);
        claim(&mut m, 0, "bob", 2);
        let again = claim(&mut m, 0, "ann", 3);
        assert_eq!(
            outcomes(&again),
            [(
                "ann".to_string(),
                ClaimOutcome::TookOver { shard: ShardId(1) }
            )],
            "every shard is full, but ann's old seat is hers"
        );
        assert_eq!(claim(&mut m, 0, "cid", 4).len(), 1);
        let twice = claim(&mut m, 1, "cid", 5);
        assert_eq!(
            twice[0],
            (
                ShardId(0),
                MasterNotice::Kick {
                    account: "cid".into()
                }
            ),
            "the waiting session is closed"
        );
        assert_eq!(outcomes(&twice), [("cid".to_string(), queued(1, 1))]);
        assert_eq!(m.login_queue(), 1);
    }

    #[test]
    fn members_join_then_cells_are_placed_by_weight_and_late_joiners_wait_to_link() {
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
        let late = m.join(join("d", 1), 5).expect("a late joiner is admitted");
        assert_eq!(late, ShardId(3));
        assert!(
            !m.members()[&late].linked && !m.members()[&late].takes_work(),
            "it gets no cells or players before it linked and reported"
        );
        let push = m.push_for_joiner().expect("the map for the joiner");
        assert_eq!(push.members.len(), 4, "it links to every live member");
        assert_eq!(
            m.members_changed(Some(late)).len(),
            3,
            "the others hear of it"
        );
        m.heartbeat(late, ShardLoad::default(), 10);
        assert!(m.members()[&late].takes_work(), "linked once it reported");
    }

    #[test]
    fn no_cell_moves_to_a_draining_shard_or_a_joiner_not_linked_yet() {
        let grid = CellGrid::from_config(&WorldConfig::default());
        let mut m = Master::new(grid, 3, info("a"), 0);
        m.join(join("b", 1), 0).expect("join");
        m.join(join("c", 1), 0).expect("join");
        m.place().expect("placement");
        for id in 0..3 {
            m.heartbeat(ShardId(id), ShardLoad::default(), 1);
        }
        let cell = m
            .map()
            .expect("placed")
            .cells_of(ShardId(0))
            .next()
            .expect("a cell");
        m.drain(ShardId(2), 2).expect("drains");
        assert_eq!(
            m.move_cell(cell, ShardId(2), 3),
            Err(MoveError::NotTakingCells(2)),
            "a draining shard would only give it back"
        );
        let late = m.join(join("d", 1), 4).expect("a late joiner");
        assert_eq!(
            m.move_cell(cell, late, 5),
            Err(MoveError::NotTakingCells(late.0)),
            "a joiner that has not linked to everyone cannot reach the cell's neighbours"
        );
        m.heartbeat(late, ShardLoad::default(), 6);
        assert!(
            m.move_cell(cell, late, 7).is_ok(),
            "once it reported, it takes cells"
        );
    }

    #[test]
    fn a_drained_shard_leaves_once_it_reported_owning_nothing_and_its_id_is_not_reused() {
        let grid = CellGrid::from_config(&WorldConfig::default());
        let mut m = Master::new(grid, 3, info("a"), 0);
        m.join(join("b", 1), 0).expect("join");
        m.join(join("c", 1), 0).expect("join");
        m.place().expect("placement");
        assert_eq!(m.drain(ShardId(0), 1), Err(DrainRefused::Master(0)));
        assert_eq!(m.drain(ShardId(7), 1), Err(DrainRefused::NoSuchShard(7)));
        m.drain(ShardId(2), 1).expect("drains");
        assert!(m.view().shards.iter().any(|s| s.id == 2 && s.draining));
        assert!(m.check_drained(2).is_empty(), "it still owns cells");
        // Its cells go to shard 1 (as the balancer would move them).
        let cells: Vec<CellId> = m.map().expect("placed").cells_of(ShardId(2)).collect();
        for cell in cells {
            m.map
                .as_mut()
                .expect("placed")
                .reassign(cell, ShardId(1))
                .expect("leaf");
        }
        let busy = ShardLoad {
            owned_entities: 3,
            ..ShardLoad::default()
        };
        m.heartbeat(ShardId(2), busy, 3);
        assert!(m.check_drained(4).is_empty(), "no report since it emptied");
        m.heartbeat(
            ShardId(2),
            ShardLoad {
                owned_entities: 3,
                ..ShardLoad::default()
            },
            5,
        );
        assert!(m.check_drained(6).is_empty(), "it still owns entities");
        m.heartbeat(ShardId(2), ShardLoad::default(), 7);
        let out = m.check_drained(8);
        assert!(
            out.contains(&(ShardId(2), MasterNotice::Drained)),
            "{out:?}"
        );
        assert_eq!(
            out.iter()
                .filter(|(_, n)| matches!(n, MasterNotice::Map(_)))
                .count(),
            2,
            "the two others get the member list without it"
        );
        assert!(!m.members().contains_key(&ShardId(2)));
        m.heartbeat(ShardId(2), ShardLoad::default(), 9);
        assert!(
            !m.members().contains_key(&ShardId(2)),
            "a late report does not bring it back"
        );
        assert_eq!(
            m.join(join("d", 1), 10),
            Ok(ShardId(3)),
            "ids are not reused"
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

    /// What member `to` holds of the master's state after these notices.
    fn held_by(
        to: ShardId,
        notices: &[(ShardId, MasterNotice)],
        held: &mut (Standby, BTreeMap<String, ShardId>),
    ) {
        for (dest, n) in notices {
            if let (true, MasterNotice::Standby(s)) = (*dest == to, n) {
                crate::cluster::node::apply_standby(&mut held.0, &mut held.1, (**s).clone());
            }
        }
    }

    /// The master's state reaches every member as it changes (the whole to a newcomer, changes
    /// after), and a member rebuilds the master from it: the directory, buddies and draining
    /// members as they were; the silent master fenced and its cells with its buddy; the players
    /// it held seated there; a map epoch past any the old master may have pushed; moves under
    /// way aborted; the voters' majority behind it.
    /// Three members, their players and buddies reported, the state sent to shard 1 as it
    /// changes (a player leaves, a move starts): the master, what shard 1 holds, and the cell
    /// moving.
    fn master_with_state_held_by_1() -> (Master, (Standby, BTreeMap<String, ShardId>), CellId) {
        let mut m = three_with_balancer();
        let arrive = |names: &[&str], buddy: u16, seq: u64| ShardLoad {
            players_arrived: names.iter().map(|n| (*n).to_string()).collect(),
            buddy: Some(ShardId(buddy)),
            ..beat(seq)
        };
        m.heartbeat(ShardId(0), arrive(&["ann"], 1, 1), 100);
        m.heartbeat(ShardId(1), arrive(&["bob", "cy"], 2, 1), 100);
        m.heartbeat(ShardId(2), arrive(&[], 1, 1), 100);
        let mut held = (Standby::default(), BTreeMap::new());
        let first = m.standby();
        held_by(ShardId(1), &first, &mut held);
        assert!(held.0.version > 0);
        assert_eq!(held.1.len(), 3, "the whole directory first: {:?}", held.1);
        assert!(
            first.iter().all(|(to, _)| *to != ShardId(0)),
            "not to the master itself"
        );
        assert!(m.standby().is_empty(), "nothing changed, nothing sent");
        m.heartbeat(
            ShardId(1),
            ShardLoad {
                players_left: vec!["cy".into()],
                ..beat(2)
            },
            200,
        );
        let change = m.standby();
        held_by(ShardId(1), &change, &mut held);
        assert_eq!(
            held.1.keys().cloned().collect::<Vec<_>>(),
            ["ann", "bob"],
            "a change, not the whole"
        );
        let cell = m
            .map()
            .expect("placed")
            .cells_of(ShardId(2))
            .next()
            .expect("a cell");
        m.move_cell(cell, ShardId(1), 300).expect("a move");
        held_by(ShardId(1), &m.standby(), &mut held);
        assert_eq!(held.0.moves.len(), 1);
        assert!(held.0.buddies.contains(&(ShardId(0), ShardId(1))));
        (m, held, cell)
    }

    #[test]
    fn a_successor_takes_the_masters_state_over_from_what_every_member_holds() {
        let (m, held, cell) = master_with_state_held_by_1();
        // The master falls silent; shard 1 won term 1 with 1 and 2's votes.
        let map = m.map().expect("placed").clone();
        let members: Vec<MemberInfo> = m.members().values().map(|x| x.info.clone()).collect();
        let voters = [ShardId(1), ShardId(2)];
        let mut s = Master::successor(
            &map,
            &members,
            &[],
            &held.0,
            &held.1,
            ShardId(1),
            1,
            &voters,
            5_000,
        )
        .expect("rebuilt");
        let master_cells = map.cells_of(ShardId(0)).count();
        let notices = s.take_over(ShardId(0), 5_000);
        let after = s.map().expect("a map");
        assert!(after.epoch().0 > map.epoch().0 + TAKEOVER_EPOCH_GAP - 1);
        assert_eq!(after.cells_of(ShardId(0)).count(), 0);
        assert_eq!(
            after.cells_of(ShardId(1)).count(),
            map.cells_of(ShardId(1)).count() + master_cells,
            "the old master's cells went to its buddy"
        );
        assert_eq!(s.adopter_of(ShardId(0)), Some(Some(ShardId(1))));
        assert_eq!(
            s.player("ann"),
            Some(ShardId(1)),
            "seated with its avatar's adopter"
        );
        assert_eq!(s.player("bob"), Some(ShardId(1)));
        assert_eq!(s.player("cy"), None);
        assert!(notices.iter().any(|(to, n)| *to == ShardId(2)
            && matches!(n, MasterNotice::MoveAborted { cell: c, .. } if *c == cell)));
        assert!(notices.iter().any(|(to, n)| *to == ShardId(2)
            && matches!(n, MasterNotice::Map(p) if p.dead.contains(&(ShardId(0), Some(ShardId(1)))))));
        assert!(notices.iter().all(|(to, _)| *to != ShardId(0)));
        assert_eq!(
            s.quorum(5_000),
            (2, true),
            "its voters are a majority of the living"
        );
        assert_eq!(
            s.heartbeat(ShardId(0), beat(9), 5_100),
            Some(MasterNotice::Fenced)
        );
        let view = s.view();
        assert_eq!((view.master, view.term), (1, 1));
        // Every living member gets the whole state from the successor, at a newer version.
        let whole = s.standby();
        assert!(whole.iter().any(|(to, n)| *to == ShardId(2)
            && matches!(n, MasterNotice::Standby(x) if x.full && x.version > held.0.version && x.term == 1)));
    }

    /// A master acts only while a majority of the members promised not to vote for another
    /// (`cluster::election`): their heartbeats say they heard its answers. Without, it still
    /// answers, but with a lease of 0.
    #[test]
    fn a_master_without_its_majority_grants_no_lease() {
        let mut m = three_with_balancer();
        let promise = crate::cluster::election::promise_ms(limits::MASTER_SILENCE_MS_DEFAULT);
        assert!(m.quorum(0).1);
        assert!(!m.quorum(promise).1, "the promises from forming ran out");
        for s in [1, 2] {
            m.heartbeat(ShardId(s), beat(1), 100);
        }
        // Answered, and heard: shard 1 promises again from the answer's time.
        m.heartbeat(ShardId(1), beat(2), 300);
        assert_eq!(m.quorum(100 + promise - 1), (2, true));
        assert_eq!(m.quorum(100 + promise), (1, false));
        assert_eq!(
            m.heartbeat(
                ShardId(2),
                ShardLoad {
                    seq: 5,
                    ..ShardLoad::default()
                },
                100 + promise
            ),
            Some(MasterNotice::Lease {
                seq: 5,
                lease_ms: 0
            })
        );
    }

    /// With exactly half of the members behind it, a master acts only while every silent one
    /// last reported this very membership: they alone are short of any majority. So two shards
    /// survive the death of the one that is not the master, and a member that may count votes
    /// among another membership keeps the strict majority.
    #[test]
    fn a_master_with_half_acts_only_while_the_silent_half_holds_its_membership() {
        use zonescaler_shared::protocol::members_digest;
        let promise = crate::cluster::election::promise_ms(limits::MASTER_SILENCE_MS_DEFAULT);
        let config = WorldConfig::default();
        let mut m = Master::new(CellGrid::from_config(&config), 2, info("a"), 0);
        m.join(join("b", 1), 0).expect("join");
        m.place().expect("placement");
        let both = members_digest([ShardId(0), ShardId(1)]);
        m.heartbeat(ShardId(1), beat(1), 100);
        assert_eq!(m.quorum(promise + 1), (1, false), "no membership reported");
        m.heartbeat(
            ShardId(1),
            ShardLoad {
                members_digest: both,
                ..beat(2)
            },
            200,
        );
        assert_eq!(
            m.quorum(200 + promise + 1),
            (1, true),
            "its half, same view"
        );
        // The silent member is declared dead in time, and the master, alone, is its majority.
        let silence = m.silence_ms;
        m.heartbeat(ShardId(0), beat(1), 200 + silence);
        let (dead, _) = m.housekeeping(200 + silence + 1);
        assert_eq!(dead, vec![ShardId(1)]);
        assert_eq!(m.quorum(200 + silence + 2), (1, true));

        // Four members: two silent ones with the master's membership leave two short of three.
        let mut m = Master::new(CellGrid::from_config(&config), 4, info("a"), 0);
        for name in ["b", "c", "d"] {
            m.join(join(name, 1), 0).expect("join");
        }
        m.place().expect("placement");
        let four = members_digest((0..4).map(ShardId));
        let three = members_digest((0..3).map(ShardId));
        for (s, digest) in [(1, four), (2, four), (3, four)] {
            let load = ShardLoad {
                members_digest: digest,
                ..beat(1)
            };
            m.heartbeat(ShardId(s), load, 100);
            m.heartbeat(
                ShardId(s),
                ShardLoad {
                    members_digest: digest,
                    ..beat(2)
                },
                150,
            );
        }
        for (seq, at) in [(3, 1_000), (4, 1_100)] {
            m.heartbeat(
                ShardId(1),
                ShardLoad {
                    members_digest: four,
                    ..beat(seq)
                },
                at,
            );
        }
        let later = 150 + promise + 1;
        assert_eq!(m.quorum(later), (2, true));
        // Shard 3 last named a membership without itself: it may count votes among three.
        m.heartbeat(
            ShardId(3),
            ShardLoad {
                members_digest: three,
                seq: 3,
                lease_seq: 1,
                ..ShardLoad::default()
            },
            160,
        );
        assert_eq!(m.quorum(later), (2, false));
        // One of four behind it is never enough.
        assert!(!m.quorum(1_000 + promise + 1).1);
    }

    /// A resume's `Locate` says whether the seat's shard still reports: a client sent on from a
    /// live shard goes back there, one that lost its (silent) shard waits for the verdict.
    #[test]
    fn a_located_seat_says_whether_its_shard_still_reports() {
        let mut m = three_with_balancer();
        let load = ShardLoad {
            players_arrived: vec!["ann".into()],
            ..beat(1)
        };
        m.heartbeat(ShardId(1), load, 100);
        let locate = |m: &mut Master, at| {
            let req = MasterRequest::Locate {
                account: "ann".into(),
                session: 7,
            };
            match m.request(ShardId(2), req, at).as_slice() {
                [(to, MasterNotice::Located { shard, live, .. })] if *to == ShardId(2) => {
                    (*shard, *live)
                }
                other => panic!("one answer to the asker: {other:?}"),
            }
        };
        assert_eq!(
            locate(&mut m, 100 + limits::HEARTBEAT_MS),
            (Some(ShardId(1)), true)
        );
        assert_eq!(
            locate(&mut m, 100 + 2 * limits::HEARTBEAT_MS + 1),
            (Some(ShardId(1)), false),
            "silent for two heartbeats: maybe the shard the client lost"
        );
    }

    /// Three members placed, balancing every minute (the first round at once).
    fn three_with_balancer() -> Master {
        let config = WorldConfig::default();
        let balancer = Balancer::new(&config).expect("default settings");
        let mut m = Master::new(CellGrid::from_config(&config), 3, info("a"), 0)
            .with_balancer(balancer, 60_000);
        m.join(join("b", 1), 0).expect("join");
        m.join(join("c", 1), 0).expect("join");
        m.place().expect("placement");
        m
    }

    /// Heartbeat `seq` of a member that heard the answer to the one before.
    fn beat(seq: u64) -> ShardLoad {
        ShardLoad {
            seq,
            lease_seq: seq.saturating_sub(1),
            ..ShardLoad::default()
        }
    }

    /// `[cluster] shard_silence_ms`: the master declares death after its own silence and grants
    /// leases of two thirds of it, so a shard's lease follows the master's setting.
    #[test]
    fn the_silence_is_the_masters_setting_and_the_leases_follow_it() {
        let mut m = three_with_balancer().with_silence(1_000);
        for s in [0, 1, 2] {
            assert_eq!(
                m.heartbeat(ShardId(s), beat(1), 0),
                Some(MasterNotice::Lease {
                    seq: 1,
                    lease_ms: 666
                })
            );
        }
        m.heartbeat(ShardId(0), beat(2), 1_000);
        m.heartbeat(ShardId(1), beat(2), 1_000);
        assert!(
            m.check_liveness(1_000).is_empty(),
            "silent for exactly the silence"
        );
        assert_eq!(m.check_liveness(1_001), [ShardId(2)]);
        let lowest = three_with_balancer().with_silence(10);
        assert_eq!(
            lowest.silence_ms,
            limits::SHARD_SILENCE_MS_MIN,
            "clamped to its range"
        );
    }

    /// Shards 0 and 1 report every second to 3 s, each answered with a lease; shard 2 reports
    /// once at 0.5 s, with a player and 7 entities, and then nothing.
    fn shard_2_reports_once_then_falls_silent(m: &mut Master) {
        let lease = |seq| {
            Some(MasterNotice::Lease {
                seq,
                lease_ms: limits::SHARD_LEASE_MS as u32,
            })
        };
        for (t, seq) in [(1_000, 1), (2_000, 2), (3_000, 3)] {
            let answer = m.heartbeat(ShardId(1), beat(seq), t);
            assert_eq!(
                answer,
                lease(seq),
                "a live shard's heartbeat renews its lease"
            );
            m.heartbeat(ShardId(0), beat(seq), t);
        }
        let arriving = ShardLoad {
            players_arrived: vec!["ann".into()],
            owned_entities: 7,
            ..beat(1)
        };
        assert_eq!(m.heartbeat(ShardId(2), arriving, 500), lease(1));
    }

    /// `zonescaler up` restarts a dead shard at its old addresses within a second, before the
    /// master's silence runs out. Only one process can hold an address, so the member there is
    /// dead: fenced at once, its cells given away, and the newcomer is not told to link to it
    /// (it would dial itself).
    #[test]
    fn a_joiner_at_a_members_address_replaces_it_at_once() {
        let mut m = three_with_balancer();
        m.balance(0);
        let old_leaves = m.map().expect("placed").cells_of(ShardId(2)).count();
        assert!(old_leaves > 0);
        let id = m
            .join(join("c", 1), 500)
            .expect("the restarted process joins");
        assert_eq!(id, ShardId(3), "under a new id");
        assert!(!m.view().shards[2].alive, "the old member is dead at once");
        let push = m.push_for_joiner().expect("placed");
        assert!(
            push.members.iter().all(|i| i.id != ShardId(2)),
            "the newcomer is not told to link to the dead member at its own address"
        );
        m.balance(500);
        assert_eq!(
            m.map().expect("placed").cells_of(ShardId(2)).count(),
            0,
            "its cells go to the living in the round made due at once"
        );
        assert_eq!(
            m.heartbeat(ShardId(2), beat(9), 600),
            Some(MasterNotice::Fenced),
            "were it still running somehow, it would be told it is fenced"
        );
        let other = m.join(join("d", 1), 700).expect("a shard at a new address");
        assert!(
            m.view().shards.iter().filter(|s| s.alive).count() == 4,
            "{other:?} replaces nobody"
        );
    }

    /// A shard silent past `SHARD_DEAD_AFTER_MS` is fenced: its cells go to the live shards in
    /// the housekeeping that declared it dead (not at the next round), under newer epochs, and
    /// it never comes back to life: its heartbeats are answered `Fenced` from then on, while a
    /// live shard's are answered with its lease.
    #[test]
    fn a_dead_shard_is_fenced_and_its_cells_go_to_the_living_at_once() {
        let mut m = three_with_balancer();
        let leaves_of = |m: &Master, s: u16| {
            let map = m.map().expect("placed");
            map.leaves().values().filter(|o| o.0 == s).count()
        };
        let dying = leaves_of(&m, 2);
        assert!(dying > 0, "shard 2 owns cells to lose");
        let epoch = m.map().expect("placed").epoch();
        // The first round runs at once (due at 0); the next is a minute away.
        m.balance(0);
        shard_2_reports_once_then_falls_silent(&mut m);
        assert_eq!(m.player("ann"), Some(ShardId(2)));
        assert_eq!(m.view().total_entities, 7);
        assert!(m.check_liveness(3_000).is_empty(), "not silent long enough");
        let now = 500 + limits::SHARD_DEAD_AFTER_MS + 1;
        assert_eq!(m.check_liveness(now), [ShardId(2)]);
        assert_eq!(m.player("ann"), None, "its players' sessions died with it");
        assert_eq!(
            m.view().total_entities,
            0,
            "what it last reported went with it: counted no more"
        );
        let notices = m.balance(now);
        assert_eq!(
            leaves_of(&m, 2),
            0,
            "every cell of the dead shard has a live owner"
        );
        assert_eq!(m.failovers, dying as u64);
        assert_eq!(
            leaves_of(&m, 0) + leaves_of(&m, 1),
            m.map().expect("placed").leaves().len()
        );
        assert!(
            m.map().expect("placed").epoch() > epoch,
            "under a new epoch"
        );
        let pushed: Vec<ShardId> = notices
            .iter()
            .filter(|(_, n)| matches!(n, MasterNotice::Map(_)))
            .map(|(to, _)| *to)
            .collect();
        assert!(
            pushed.contains(&ShardId(0)) && pushed.contains(&ShardId(1)),
            "the living get the new map: {pushed:?}"
        );
        assert!(!pushed.contains(&ShardId(2)), "the dead shard gets none");
        for (_, n) in &notices {
            if let MasterNotice::Map(push) = n {
                assert!(
                    push.members.iter().all(|i| i.id != ShardId(2)),
                    "it is out of the membership"
                );
            }
        }
        assert!(
            m.view().events.iter().any(|e| e.kind == "failover"),
            "the API says what happened"
        );
        // It wakes up (a paused process, a healed partition) and reports: fenced, still dead.
        assert_eq!(
            m.heartbeat(ShardId(2), beat(2), now + 10),
            Some(MasterNotice::Fenced)
        );
        assert!(!m.view().shards[2].alive, "a fenced shard never comes back");
        assert_eq!(leaves_of(&m, 2), 0);
        // A shard that is no member (drained and gone) gets no answer.
        assert_eq!(m.heartbeat(ShardId(9), beat(1), now + 10), None);
    }

    /// The ownership audit reads the live members' latest reports: a dead member's leaves it
    /// when it is declared dead (its adopter continues its entities' generations), and a fenced
    /// member's later report is not taken.
    #[test]
    fn the_audit_forgets_a_dead_member_before_its_adopter_reports_its_entities() {
        use zonescaler_shared::NetId;
        use zonescaler_shared::protocol::OwnershipReport;
        let mut m = three_with_balancer();
        let e = |n| NetId::new(ShardId(2), n).expect("48 bits");
        let report = |taken_ms, owned: Vec<(NetId, u32)>| OwnershipReport {
            taken_ms,
            owned,
            ..OwnershipReport::default()
        };
        let send = |m: &mut Master, from: u16, r: &OwnershipReport, now| {
            for p in r.parts(now) {
                m.audit_part(ShardId(from), p, now);
            }
        };
        send(&mut m, 0, &report(900, vec![]), 1_000);
        send(&mut m, 1, &report(900, vec![(e(1), 0)]), 1_000);
        send(&mut m, 2, &report(900, vec![(e(2), 5), (e(3), 0)]), 1_000);
        let audit = m.take_audit(1_000);
        assert!(audit.complete, "{audit:?}");
        assert_eq!((audit.total_owned, audit.duplicates), (3, 0));
        assert_eq!(m.view().audit.total_owned, 3, "the cluster view's summary");

        // Shard 2 falls silent and is declared dead; shard 1 adopts its entities at their
        // generations. Were shard 2's last report kept, both would be two owners.
        for (s, t) in [(0, 3_500), (1, 3_500)] {
            m.heartbeat(ShardId(s), beat(2), t);
        }
        assert_eq!(m.check_liveness(3_500), [ShardId(2)]);
        let adopted = vec![(e(1), 0), (e(2), 5), (e(3), 0)];
        send(&mut m, 1, &report(3_600, adopted), 3_700);
        // A report the dead shard sent before it died, arriving late: not taken.
        send(&mut m, 2, &report(2_900, vec![(e(2), 5), (e(3), 0)]), 3_700);
        let audit = m.take_audit(3_800);
        assert_eq!(audit.duplicates, 0, "{audit:?}");
        assert_eq!((audit.total_owned, audit.distinct_entities), (3, 3));
        assert_eq!(audit.shards.len(), 2, "the living's reports only");
        assert!(audit.complete);
    }
}
