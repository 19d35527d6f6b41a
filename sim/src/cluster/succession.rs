//! The master role's succession, as `Node` runs it: every process runs the production
//! [`QuorumElection`] on its own clock, keeps the master's state it hears ([`Standby`], the map
//! and the dead of the last push), and follows whoever won; the winner builds its master with
//! [`Master::successor`] and takes the role over ([`Master::take_over`]). The master's process
//! crashes in the seeds that draw it ([`ClusterConfig::master_crash_at_tick`]).
//!
//! Checked every tick:
//! - `one_master`: no two live processes hold the role in one term, and at most one process
//!   holding it acts (a majority behind it) at any tick;
//! - `settles_to_one_master`: after the master's crash a live successor holds the role and
//!   acts within [`MASTER_SETTLE_BOUND_MS`] (simulated), the longest an election may take: the
//!   silence, half of one for each member ahead in line, a lost candidacy's rest and the next,
//!   counted over the ticks its running members are linked to one another and a majority of
//!   the members.
//!
//! [`ClusterConfig::master_crash_at_tick`]: super::ClusterConfig::master_crash_at_tick

use super::ClusterSim;
use crate::Violation;
use std::collections::BTreeSet;
use zonescaler_server::authority::replica::Replicas;
use zonescaler_server::cluster::election::{ElectionOut, ElectionView, MasterElection};
use zonescaler_server::cluster::node::apply_standby;
use zonescaler_server::cluster::{Balancer, LeaseState, Master};
use zonescaler_server::core::space::Space;
use zonescaler_shared::protocol::{ElectionMessage, LinkMessage, MasterNotice};
use zonescaler_shared::{ShardId, limits};

/// `settles_to_one_master`'s bound past the crash, in master silences: one for the silence, one
/// and a half for the members that may stand ahead in line (up to three, half a silence each),
/// and one and a half more for a candidacy that lost (a partition, a member that refused for
/// newer state) and the rest before the next.
pub const MASTER_SETTLE_SILENCES: u64 = 4;

/// [`MASTER_SETTLE_SILENCES`] at the default master silence, plus a second for link delay and
/// heartbeats (simulated).
pub const MASTER_SETTLE_BOUND_MS: u64 =
    MASTER_SETTLE_SILENCES * limits::MASTER_SILENCE_MS_DEFAULT + 1_000;

impl ClusterSim {
    /// Whether the process holding the master role is up (not crashed, not deposed).
    pub(super) fn master_up(&self) -> bool {
        !self.master_down
    }

    /// Whether the master acts now: up, with a majority behind it (`Node::master_acts`).
    pub(super) fn master_acts(&self) -> bool {
        self.master_up() && self.master.quorum(self.master_ms()).1
    }

    /// The master's own lease (`Node::lease`): its majority's promises.
    pub(super) fn master_lease(&self) -> LeaseState {
        if self.master_acts() {
            LeaseState::Holds
        } else {
            LeaseState::Lapsed { for_ms: 0 }
        }
    }

    /// The process the master role's holder crashes: it stops where it is, as any crash, and
    /// nobody holds the role until a successor wins.
    pub(super) fn crash_master(&mut self, tick: u64) {
        let c = self.master_at;
        tracing::info!(shard = c, tick, "sim: the master's process crashed");
        self.take_down(c, tick);
        self.stopped(c);
        self.membership.crashes += 1;
        self.membership.master_crashes += 1;
        self.master_down = true;
        self.master_crash = Some((c, tick));
    }

    /// Whether the members left after the master's crash can elect a successor: a majority of
    /// the membership they know runs (with two shards, or one dead and not yet declared so, it
    /// cannot, by design: the crash waits until it can).
    pub(super) fn master_crash_survivable(&self) -> bool {
        let members: Vec<usize> = (self.master.members().values())
            .filter(|m| m.alive)
            .map(|m| usize::from(m.info.id.0))
            .collect();
        let running = (members.iter())
            .filter(|&&i| {
                i != self.master_at && !self.departed.contains(&i) && !self.fenced.contains_key(&i)
            })
            .count();
        let known = (self.live())
            .filter(|&i| i != self.master_at)
            .all(|i| self.members[i].len() == members.len());
        known && running >= zonescaler_server::cluster::election::majority(members.len())
    }

    /// What process `p`'s election sees (`Node::election_view`): the members of the last push,
    /// those it has a link to (a crashed member's link lingers until its idle timeout), and the
    /// master's state and map it holds.
    fn election_view(&self, p: usize) -> ElectionView {
        let idle = self.cfg.ticks_in(limits::IDLE_TIMEOUT_MS);
        let reachable: BTreeSet<ShardId> = (self.members[p].iter())
            .map(|m| usize::from(m.id.0))
            .filter(|&q| {
                let gone = match self.crashed.get(&q) {
                    Some((at, _)) => self.tick > at + idle,
                    None => self.departed.contains(&q),
                };
                q == p || (self.linked(p, q) && !gone)
            })
            .map(|q| ShardId(q as u16))
            .collect();
        ElectionView {
            members: self.members[p].iter().map(|m| m.id).collect(),
            reachable,
            version: self.standbys[p].version,
            epoch: self.shards[p].world.resource::<Space>().map.epoch().0,
        }
    }

    /// Every process that runs polls its election (`Node::poll_election`, every tick).
    pub(super) fn poll_elections(&mut self) {
        let running: Vec<usize> = self.live().collect();
        for p in running {
            let now = self.mono_ms(p);
            let view = self.election_view(p);
            let outs = self.elections[p].poll(now, &view);
            self.election_outs(p, outs);
        }
    }

    /// An election message from `from` reached `to`.
    pub(super) fn election_message(&mut self, to: usize, from: usize, msg: ElectionMessage) {
        let now = self.mono_ms(to);
        let view = self.election_view(to);
        let outs = self.elections[to].on_message(ShardId(from as u16), msg, now, &view);
        self.election_outs(to, outs);
    }

    /// A heartbeat at `to` named `term`: a master deposed hears it here.
    pub(super) fn heard_term(&mut self, to: usize, term: u64) {
        let outs = self.elections[to].heard_term(term);
        self.election_outs(to, outs);
    }

    /// A master's notice at `to` from `from`, which `to` does not follow: a master of a newer
    /// term (its first state names it) is followed, as `Node` does; anything else is ignored.
    /// Whether the notice is to be taken.
    pub(super) fn follows_newer_master(
        &mut self,
        to: usize,
        from: usize,
        notice: &MasterNotice,
    ) -> bool {
        let MasterNotice::Standby(s) = notice else {
            return false;
        };
        if s.term <= self.elections[to].term() {
            return false;
        }
        self.election_message(to, from, ElectionMessage::Elected { term: s.term });
        usize::from(self.elections[to].master().0) == from
    }

    /// A notice from the master `to` follows: leases renew its election's silence and confirm
    /// its requests; the master's state is kept for a successor.
    pub(super) fn master_state(&mut self, to: usize, notice: &MasterNotice) {
        match notice {
            MasterNotice::Lease { seq, .. } => {
                let now = self.mono_ms(to);
                self.elections[to].heard_master(now);
                self.reports[to].answered(*seq);
                self.unconfirmed[to].confirmed(*seq);
            }
            MasterNotice::Standby(s) => {
                self.reports[to].standby();
                apply_standby(
                    &mut self.standbys[to],
                    &mut self.standby_seats[to],
                    (**s).clone(),
                );
            }
            notice => self.unconfirmed[to].answered(notice),
        }
    }

    /// Carry out what an election step of process `p` asks (`Node::election_outs`).
    fn election_outs(&mut self, p: usize, outs: Vec<ElectionOut>) {
        for out in outs {
            match out {
                ElectionOut::Send(to, msg) => {
                    tracing::debug!(from = p, to = to.0, ?msg, tick = self.tick, "sim: election");
                    if self.cfg.elections_delivered {
                        self.link_send(p, usize::from(to.0), LinkMessage::Election(msg));
                    }
                }
                ElectionOut::Won { term, from, voters } => {
                    self.take_over(p, term, usize::from(from.0), &voters);
                }
                ElectionOut::Follow { master, term } => {
                    tracing::info!(shard = p, master = master.0, term, "sim: following");
                    self.membership.max_term = self.membership.max_term.max(term);
                    self.reports[p].new_master();
                    zonescaler_server::authority::cell_move::abort_moves(&mut self.shards[p]);
                    let to = usize::from(master.0);
                    for req in self.unconfirmed[p].pending() {
                        self.link_send(p, to, LinkMessage::ToMaster(req));
                    }
                }
                ElectionOut::Deposed { term } => {
                    if p == self.master_at && self.master_up() {
                        tracing::info!(shard = p, term, "sim: the master was deposed");
                        self.master_down = true;
                    }
                    if self.live().any(|i| i == p) {
                        self.lease_lost(p, self.tick, "deposed: another shard holds the role");
                    }
                }
            }
        }
    }

    /// Process `p` won `term` with `voters`: it builds the master from the state it holds of
    /// `old`'s (`Node::take_over`), fences `old` and gives its cells to its buddy.
    fn take_over(&mut self, p: usize, term: u64, old: usize, voters: &[ShardId]) {
        let tick = self.tick;
        let now_ms = self.mono_ms(p);
        if self.master_up() && self.master_at != p && self.master_acts() {
            self.failure.get_or_insert((
                "one_master",
                format!(
                    "shard {p} won term {term} while shard {} holds the role in term {} and acts",
                    self.master_at,
                    self.master.term()
                ),
            ));
            return;
        }
        let map = self.shards[p].world.resource::<Space>().map.clone();
        let built = Master::successor(
            &map,
            &self.members[p],
            &self.held_dead[p],
            &self.standbys[p],
            &self.standby_seats[p],
            ShardId(p as u16),
            term,
            voters,
            now_ms,
        );
        let mut m = match built {
            Ok(m) => m,
            Err(e) => {
                self.failure.get_or_insert((
                    "settles_to_one_master",
                    format!("shard {p} won term {term} but cannot rebuild the map: {e}"),
                ));
                return;
            }
        };
        if self.cfg.balance {
            match Balancer::new(&self.cfg.world) {
                Ok(b) => m = m.with_balancer(b, self.cfg.world.balancer.round_ms),
                Err(e) => {
                    self.failure
                        .get_or_insert(("settles_to_one_master", format!("balancer: {e}")));
                    return;
                }
            }
        }
        m = (m.with_silence(self.cfg.world.cluster.shard_silence_ms))
            .with_sent_on_wait(super::SENT_ON_WAIT_MS);
        // The old master, if it still runs, stopped acting before anyone could win (its
        // majority's promises ran out): it is deposed, and stops once it hears so.
        let previous = self.master_at;
        if self.master_up() && previous != p && self.live().any(|i| i == previous) {
            self.master_down = true;
            self.lease_lost(previous, tick, "deposed: a successor won");
        }
        tracing::info!(
            shard = p,
            term,
            old,
            tick,
            "sim: won the election, taking over"
        );
        let notices = m.take_over(ShardId(old as u16), now_ms);
        self.master = m;
        tracing::info!(old, adopter = ?self.master.adopter_of(ShardId(old as u16)), "sim: the successor's verdict on the old master");
        self.master_at = p;
        self.master_down = false;
        self.leases[p] = None;
        self.unfence_forgotten(tick);
        self.reports[p].new_master();
        zonescaler_server::authority::cell_move::abort_moves(&mut self.shards[p]);
        // A successor starts every wait of the directory anew (`Master::take_over`): a quitter's
        // seat with them.
        for b in &mut self.bots {
            if let Some(q) = b.quit.as_mut() {
                q.waited = 0;
            }
        }
        self.membership.takeovers += 1;
        self.membership.max_term = self.membership.max_term.max(term);
        if let Some((_, at)) = self.master_crash
            && self.master_takeover.is_none()
        {
            self.master_takeover = Some(tick);
            self.membership.master_failover_ms = self.cfg.ms_in(tick - at);
        }
        if let Some((_, verdict)) = self.crashed.get_mut(&old)
            && verdict.is_none()
        {
            *verdict = Some(tick);
        }
        // Its own requests the old master may not have heard, answered here now.
        for req in self.unconfirmed[p].take() {
            self.master_request(p, req);
        }
        self.record_map();
        for (to, notice) in notices {
            self.notify(usize::from(to.0), notice);
        }
        if self.cfg.forge_second_winner {
            self.forge_winner(p, term);
        }
    }

    /// A fence the successor does not know of died with the master that declared it: the push
    /// that named the shard dead reached no member that the successor heard from (an adopter
    /// promotes only once every other live member reported on the dead shard, so each of them
    /// holds that push, and any majority that elects a successor counts one of them). The shard
    /// is a member again under the new master, and simulates its cells again once it follows
    /// it. That is a violation only if its cells were promoted somewhere: then two shards own
    /// them.
    fn unfence_forgotten(&mut self, tick: u64) {
        let forgotten: Vec<(usize, u64)> = (self.fenced.iter())
            .filter(|(c, _)| (self.master.members()).contains_key(&ShardId(**c as u16)))
            .map(|(c, v)| (*c, *v))
            .collect();
        for (c, verdict) in forgotten {
            let adopters: Vec<usize> = (self.live())
                .filter(|&i| {
                    (self.shards[i].world.resource::<Replicas>()).adopted(ShardId(c as u16))
                })
                .collect();
            if !adopters.is_empty() {
                self.failure.get_or_insert((
                    "single_authority",
                    format!(
                        "shard {c}, fenced at tick {verdict}, is a member again under the successor, but shard(s) {adopters:?} adopted its cells"
                    ),
                ));
                continue;
            }
            tracing::info!(
                shard = c,
                verdict,
                tick,
                "sim: the fence died with the master that declared it: a member again"
            );
            self.fenced.remove(&c);
            self.crashed.remove(&c);
            self.crash_limbo.retain(|_, s| *s != c);
            self.stale_replica.remove(&c);
            self.membership.unfenced += 1;
        }
    }

    /// Sabotage: another live member is told it won `term` itself.
    fn forge_winner(&mut self, p: usize, term: u64) {
        let Some(q) = self.live().find(|&q| q != p) else {
            return;
        };
        let now = self.mono_ms(q);
        let view = self.election_view(q);
        let forged = ElectionMessage::Elected { term };
        let _ = self.elections[q].on_message(ShardId(q as u16), forged, now, &view);
    }

    /// `one_master` and `settles_to_one_master` (see the module docs).
    pub(super) fn check_masters(&mut self, tick: u64) -> Result<(), Violation> {
        let fail = |invariant, detail| {
            Err(Violation {
                seed: self.cfg.seed,
                tick,
                invariant,
                detail,
            })
        };
        let mut holders: Vec<(usize, u64)> = (self.live())
            .filter(|&p| usize::from(self.elections[p].master().0) == p)
            .map(|p| (p, self.elections[p].term()))
            .collect();
        holders.sort_by_key(|(_, t)| *t);
        if let Some(w) = holders.windows(2).find(|w| w[0].1 == w[1].1) {
            return fail(
                "one_master",
                format!(
                    "shards {} and {} both hold the master role in term {}",
                    w[0].0, w[1].0, w[0].1
                ),
            );
        }
        if let Some((c, at)) = self.master_crash {
            let bound = self.cfg.ticks_in(self.master_settle_bound_ms());
            let settled = self.master_up() && self.master_at != c && self.master_acts();
            let running: Vec<usize> = self.live().collect();
            // A shard paused by its lapsed lease still runs its election: only partitions and
            // dead links keep members from electing.
            let linked = |a: usize, b: usize| {
                let key = (a.min(b), a.max(b));
                !self.partitions.contains_key(&key) && !self.dead_links.contains_key(&key)
            };
            let connected =
                (running.iter()).all(|&a| running.iter().all(|&b| a >= b || linked(a, b)));
            // Nor can they once fewer than a majority of the members run (a member cut from the
            // master before its crash may give its lease up and stop before the others' silence
            // is over: two failures of three, as seed 9981 has it): no election may win then,
            // by design.
            let members = (self.master.members().values()).filter(|m| m.alive).count();
            let quorate = running.len() >= zonescaler_server::cluster::election::majority(members);
            if self.master_takeover.is_none() && connected && quorate {
                self.vacant_connected += 1;
            }
            if self.master_takeover.is_none() && !settled && self.vacant_connected > bound {
                let terms: Vec<String> = (self.live())
                    .map(|p| {
                        let e = &self.elections[p];
                        format!("{p}: term {} master {}", e.term(), e.master().0)
                    })
                    .collect();
                return fail(
                    "settles_to_one_master",
                    format!(
                        "the master (shard {c}) crashed at tick {at} and no successor holds the role {} ticks later, {} of them with every running shard linked to the others (bound {bound}); {}",
                        tick - at,
                        self.vacant_connected,
                        terms.join(", ")
                    ),
                );
            }
        }
        Ok(())
    }

    /// `settles_to_one_master`'s bound at this run's master silence.
    fn master_settle_bound_ms(&self) -> u64 {
        MASTER_SETTLE_SILENCES * self.cfg.world.cluster.master_silence_ms + 1_000
    }
}
