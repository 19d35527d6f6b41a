//! What lies between the simulated processes besides the network: each process's clocks, each
//! member's sessions with the others (the production [`Sessions`]), link deaths and redials,
//! and each shard's ownership lease (the production [`Lease`]).
//!
//! **Why not `Node`.** `Node` owns a QUIC endpoint (`ClusterLinks`) and its event channel, so
//! the simulator cannot drive it; it does here what `Node` does around the same pure parts:
//! every play-time frame to a member is numbered and kept by [`Sessions::push`], delivered only
//! if it is the next one by [`Sessions::receive`], acknowledged after each tick's link events by
//! [`Sessions::acks_due`], and sent again after a redial by [`Sessions::relinked`]; the member
//! with the larger id redials a dead link at once and then after [`redial_backoff_ms`] of the
//! failures so far, its first frame a `Relink` that the other end takes only if
//! [`relink_allowed`] says so; a member the master removed ends its session
//! ([`Sessions::forget`]) and its frames are ignored.
//!
//! **Message loss on links.** A QUIC stream never loses a message while its link lives (the
//! simulated network keeps link messages reliable and ordered, and a partition only delays
//! them while their sender runs: a process that stops takes with it what a cut holds of its
//! frames, as nobody is left to send them again); a link that dies (its idle timeout ran out
//! over a cut, a stream error, a `too_slow` close) loses everything in flight on it, both ways. That is the loss simulated: a dead link
//! drops its in-flight frames ([`MemNetwork::drop_between`]), both ends keep what they send
//! meanwhile, and dials fail while the cause lasts (up to 1.5 s).
//!
//! **Clocks.** Each process has its own monotonic clock (an offset, which no other process
//! ever compares against, and a rate skewed by up to [`ClusterConfig::clock_skew_ppm_max`]):
//! the master's liveness, moves and rounds, a shard's lease and its redials run on it, as
//! production runs them on `cluster_ms`. Its wall clock (what the ECS's `TickClock` gets, as
//! production's `set_now_ms(unix_ms())`) has a small offset of its own and may step once, by
//! up to [`ClusterConfig::wall_step_ms_max`] either way, which nothing that decides liveness
//! may notice.
//!
//! [`MemNetwork::drop_between`]: zonescaler_net::mem::MemNetwork::drop_between
//! [`ClusterConfig::clock_skew_ppm_max`]: super::ClusterConfig::clock_skew_ppm_max
//! [`ClusterConfig::wall_step_ms_max`]: super::ClusterConfig::wall_step_ms_max

use super::{ClusterSim, Leases};
use crate::Packet;
use bytes::Bytes;
use std::collections::BTreeSet;
use zonescaler_server::cluster::LeaseState;
use zonescaler_server::cluster::node::{redial_backoff_ms, relink_allowed};
use zonescaler_server::cluster::session::{Arrival, Sessions};
use zonescaler_shared::protocol::{LinkMessage, MapPush, MasterNotice};
use zonescaler_shared::rng::Rng;
use zonescaler_shared::{ShardId, codec, limits};

pub use zonescaler_server::cluster::Lease;

/// One simulated process's clocks, as functions of the simulation's time.
#[derive(Clone, Copy, Debug, Default)]
pub struct Clock {
    /// Where its monotonic clock starts (no other process may care).
    offset_ms: u64,
    /// Its rate's error, in parts per million (either way).
    rate_ppm: i64,
    /// Its wall clock's offset from the simulation's time.
    wall_offset_ms: u64,
    /// A step of its wall clock: from this simulated time on, by this many ms.
    wall_step: Option<(u64, i64)>,
}

impl Clock {
    /// A process's clocks drawn from `rng`: a monotonic offset (none for the master, whose
    /// forming ran on the simulation's time) and rate skew within `skew_ppm_max`, a wall offset
    /// within 50 ms, and in a quarter of processes a wall step within `step_ms_max`, sometime
    /// in `run_us`.
    pub fn draw(
        rng: &mut Rng,
        master: bool,
        skew_ppm_max: u64,
        step_ms_max: u64,
        run_us: u64,
    ) -> Self {
        let offset_ms = if master { 0 } else { rng.below(1 << 40) };
        let rate_ppm = rng.below(2 * skew_ppm_max + 1) as i64 - skew_ppm_max as i64;
        // The master's clock only runs fast: forming ran on the simulation's time, and its
        // clock must not read earlier than the times forming left in it.
        let rate_ppm = if master { rate_ppm.abs() } else { rate_ppm };
        let wall_offset_ms = rng.below(51);
        let wall_step = (step_ms_max > 0 && rng.chance(0.25)).then(|| {
            let at = rng.below(run_us.max(1));
            let by = rng.below(2 * step_ms_max + 1) as i64 - step_ms_max as i64;
            (at, by)
        });
        Self {
            offset_ms,
            rate_ppm,
            wall_offset_ms,
            wall_step,
        }
    }

    /// Its reading of `now_us` of simulated time, skewed, in µs from its own start.
    fn skewed_us(&self, now_us: u64) -> u64 {
        let us = i128::from(now_us);
        (us + us * i128::from(self.rate_ppm) / 1_000_000).max(0) as u64
    }

    /// Its monotonic clock (`cluster_ms` in production).
    pub fn mono_ms(&self, now_us: u64) -> u64 {
        self.offset_ms + self.skewed_us(now_us) / 1_000
    }

    /// Its wall clock (`unix_ms` in production).
    pub fn wall_ms(&self, now_us: u64) -> u64 {
        let ms = (self.skewed_us(now_us) / 1_000 + self.wall_offset_ms) as i64;
        let step = self
            .wall_step
            .filter(|(at, _)| now_us >= *at)
            .map_or(0, |(_, by)| by);
        (ms + step).max(0) as u64
    }
}

/// A link between two members that died and is not back yet.
#[derive(Clone, Debug)]
pub(super) struct DeadLink {
    /// The member that redials (the larger id) and the one that waits for it.
    pub dialer: usize,
    pub acceptor: usize,
    /// Dials fail until then (the cut that killed the link lasts).
    pub broken_until_us: u64,
    pub failures: u32,
    /// When the dialer dials next, by its monotonic clock.
    pub next_dial_ms: u64,
    /// A dial under way: when it comes up or fails.
    pub dialing_until_us: Option<u64>,
    /// Each end has the new link (the dialer once its dial came up, the acceptor once the
    /// `Relink` arrived).
    pub dialer_up: bool,
    pub acceptor_up: bool,
    /// Ticks since the cause ended and the last failed dial on which the pair was not
    /// partitioned (`links_heal`).
    pub connected_ticks: u64,
}

/// Link deaths, redials and frames sent again, for reports and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub deaths: u64,
    /// Frames in flight that died with their link.
    pub frames_lost: u64,
    pub dials: u64,
    pub redials_up: u64,
    pub dials_failed: u64,
    /// Session frames sent again after a redial, and received twice and dropped.
    pub frames_resent: u64,
    pub duplicates: u64,
    /// Frames dropped because a session was at its bound.
    pub frames_dropped: u64,
}

impl ClusterSim {
    /// Process `p`'s monotonic clock now.
    pub(super) fn mono_ms(&self, p: usize) -> u64 {
        self.clocks[p].mono_ms(self.now_us)
    }

    /// The master's clock now (its liveness, moves and rounds run on it).
    pub(super) fn master_ms(&self) -> u64 {
        self.mono_ms(self.master_at)
    }

    /// Whether `from` has a link to `to` it can send on (not while the link is dead and not
    /// back on its side, nor to a joiner whose `Peer` it has not heard).
    pub(super) fn linked(&self, from: usize, to: usize) -> bool {
        let unnamed =
            (self.joiner.as_ref()).is_some_and(|j| j.id == to && j.unnamed_at.contains(&from));
        !unnamed
            && self
                .dead_links
                .get(&(from.min(to), from.max(to)))
                .is_none_or(|d| {
                    if d.dialer == from {
                        d.dialer_up
                    } else {
                        d.acceptor_up
                    }
                })
    }

    /// A play-time link message from `from` to `to`, as `Node::send_frame`: numbered in their
    /// session and sent if there is a link (else kept until it is back or names itself); to a
    /// member `from` saw leave, unnumbered (the master's `Fenced` to a shard it declared dead);
    /// to a process that stopped, nowhere.
    pub(super) fn link_send(&mut self, from: usize, to: usize, msg: LinkMessage) {
        if self.departed.contains(&to) || to == from {
            return;
        }
        let frame = codec::encode(&msg);
        if self.left[from].contains(&ShardId(to as u16)) {
            if self.linked(from, to) {
                self.put_on_link(from, to, Bytes::from(frame));
            }
            return;
        }
        let linked = self.linked(from, to);
        let joiner_unnamed =
            (self.joiner.as_ref()).is_some_and(|j| j.id == to && j.unnamed_at.contains(&from));
        match self.sessions[from].push(ShardId(to as u16), frame, linked) {
            Some(wire) if linked => self.put_on_link(from, to, wire),
            Some(_) => {
                if joiner_unnamed {
                    self.membership.unlinked_held += 1;
                }
            }
            None => {
                if joiner_unnamed {
                    self.membership.unlinked_drops += 1;
                }
                self.link_stats.frames_dropped += 1;
                tracing::warn!(from, to, "sim: frames kept at their bound: frame dropped");
            }
        }
    }

    fn put_on_link(&mut self, from: usize, to: usize, wire: Bytes) {
        let now = self.now_us;
        self.net
            .send(now, from as u32, to as u32, Packet::Frame(wire), true);
    }

    /// A frame from `from` arrived at `to` on their link (as `Node::on_link_event` decodes it).
    pub(super) fn on_frame(&mut self, to: usize, from: usize, bytes: &[u8]) {
        match codec::decode_link_message(bytes) {
            Ok(msg) => self.on_wire_message(to, from, msg),
            Err(e) => {
                self.failure.get_or_insert((
                    "links_lose_nothing",
                    format!("shard {to} got an undecodable frame from shard {from}: {e}"),
                ));
            }
        }
    }

    /// A link message during play at `to` from `from`: session frames, acks and relinks here,
    /// the rest to [`ClusterSim::on_link_message`].
    pub(super) fn on_wire_message(&mut self, to: usize, from: usize, msg: LinkMessage) {
        let peer = ShardId(from as u16);
        match msg {
            LinkMessage::Seq { seq, frame } => {
                if self.left[to].contains(&peer) {
                    // Its session ended when the master let it go (a fenced shard's last words).
                    return;
                }
                match self.sessions[to].receive(peer, seq) {
                    Arrival::Deliver => {}
                    Arrival::Duplicate => return,
                    Arrival::Gap { missing } => {
                        self.failure.get_or_insert((
                            "links_lose_nothing",
                            format!(
                                "shard {to} got frame {seq} of shard {from}'s session with {missing} before it never delivered"
                            ),
                        ));
                    }
                }
                match codec::decode_link_message(&frame) {
                    Ok(
                        LinkMessage::Seq { .. }
                        | LinkMessage::Ack { .. }
                        | LinkMessage::Relink { .. },
                    ) => {
                        self.failure.get_or_insert((
                            "links_lose_nothing",
                            format!("a session frame inside a session frame, {from} to {to}"),
                        ));
                    }
                    Ok(inner) => self.on_link_message(to, from, inner),
                    Err(e) => {
                        self.failure.get_or_insert((
                            "links_lose_nothing",
                            format!("a bad session frame from {from} at {to}: {e}"),
                        ));
                    }
                }
            }
            LinkMessage::Ack { received } => self.sessions[to].acked(peer, received),
            LinkMessage::Relink {
                from: dialer,
                to: meant,
                received,
            } => self.relinked_by_peer(to, from, (dialer, meant), received),
            other => self.on_link_message(to, from, other),
        }
    }

    /// The dialer's `Relink` reached `at`: taken if `relink_allowed` says so, and then `at`
    /// sends again what the dialer has not acknowledged.
    fn relinked_by_peer(
        &mut self,
        at: usize,
        from: usize,
        claim: (ShardId, ShardId),
        received: u64,
    ) {
        let key = (at.min(from), at.max(from));
        let allowed = relink_allowed(
            ShardId(at as u16),
            claim,
            &self.members[at],
            &self.peered[at],
            &self.left[at],
        );
        let Some(d) = self.dead_links.get_mut(&key) else {
            return;
        };
        if let Err(why) = allowed {
            tracing::info!(at, from, why, "sim: a relink refused");
            d.dialer_up = false;
            d.failures += 1;
            d.next_dial_ms = self.clocks[from].mono_ms(self.now_us) + redial_backoff_ms(d.failures);
            return;
        }
        d.acceptor_up = true;
        let frames = self.sessions[at].relinked(ShardId(from as u16), received);
        if self.cfg.resend_after_redial {
            for f in frames {
                self.put_on_link(at, from, f);
            }
        }
    }

    /// After a tick's link events: every member that sent frames is told how far they arrived
    /// (`Node::send_acks`), where there is a link.
    pub(super) fn send_acks(&mut self) {
        let live: Vec<usize> = self.live().collect();
        for p in live {
            for (id, received) in self.sessions[p].acks_due() {
                let to = usize::from(id.0);
                if self.linked(p, to) && !self.departed.contains(&to) {
                    let ack = codec::encode(&LinkMessage::Ack { received });
                    self.put_on_link(p, to, Bytes::from(ack));
                }
            }
        }
    }

    /// A member heard a map push: a member missing from it left (drained or declared dead):
    /// its session ends and it is not redialled (`Node::observe`).
    pub(super) fn observe(&mut self, p: usize, push: &MapPush) {
        let now: BTreeSet<ShardId> = push.members.iter().map(|m| m.id).collect();
        let gone: Vec<ShardId> = (self.members[p].iter())
            .map(|m| m.id)
            .filter(|id| usize::from(id.0) != p && !now.contains(id))
            .collect();
        for id in gone {
            self.left[p].insert(id);
            self.sessions[p].forget(id);
            let i = usize::from(id.0);
            let key = (p.min(i), p.max(i));
            if self.dead_links.get(&key).is_some_and(|d| d.dialer == p) {
                self.dead_links.remove(&key);
            }
        }
        if self.members[p] != push.members {
            self.members_at[p] = self.shards.get(p).map_or(0, |s| s.tick_number());
        }
        self.members[p] = push.members.clone();
        self.held_dead[p] = push.dead.clone();
    }

    /// Links die now and then (their own stream), losing what is in flight on them; a dead
    /// link's dialer redials it once its backoff is over, and a dial comes up when the cause has
    /// ended and the pair is not partitioned, a link round trip later.
    pub(super) fn link_weather(&mut self) {
        let live: Vec<usize> = (self.live())
            .filter(|i| {
                !self
                    .joiner
                    .as_ref()
                    .is_some_and(|j| j.id == *i && !j.unnamed_at.is_empty())
            })
            .collect();
        if live.len() > 1 && self.link_rng.chance(self.cfg.link_death_chance) {
            let n = live.len() as u64;
            let a = self.link_rng.below(n) as usize;
            let b = (a + 1 + self.link_rng.below(n - 1) as usize) % live.len();
            let broken_us = self.link_rng.below(1_500_000);
            self.kill_link(live[a], live[b], broken_us);
        }
        self.poll_redials();
    }

    /// Process `c` stopped (crashed, or gave up on a lost lease): it leaves `live`, and what it
    /// sent that a partition holds is lost ([`Self::drop_held_frames`]).
    pub(super) fn stopped(&mut self, c: usize) {
        self.departed.insert(c);
        self.drop_held_frames(c);
    }

    /// What stopped process `c` sent that a partition holds is lost. A partition only delays link messages because QUIC sends them again until
    /// they arrive; a process that is gone sends nothing again, so its frames held across a cut
    /// must not arrive once the cut heals (a crashed master's lease answer, arriving seconds
    /// after its crash, made a member that heard it refuse every candidate for another silence).
    fn drop_held_frames(&mut self, c: usize) {
        let cut: Vec<usize> = (self.partitions.keys())
            .filter_map(|&(a, b)| match (a == c, b == c) {
                (true, _) => Some(b),
                (_, true) => Some(a),
                _ => None,
            })
            .collect();
        for other in cut {
            let lost =
                (self.net).drop_between(c as u32, other as u32, |p| matches!(p, Packet::Frame(_)));
            if lost > 0 {
                tracing::info!(
                    shard = c,
                    other,
                    lost,
                    "sim: frames held by a cut died with their sender"
                );
            }
        }
    }

    /// The link between `a` and `b` dies: what is in flight on it is lost both ways.
    pub(super) fn kill_link(&mut self, a: usize, b: usize, broken_us: u64) {
        let lost = self
            .net
            .drop_between(a as u32, b as u32, |p| matches!(p, Packet::Frame(_)));
        let (dialer, acceptor) = (a.max(b), a.min(b));
        let next_dial_ms = self.mono_ms(dialer);
        let failures = self
            .dead_links
            .get(&(acceptor, dialer))
            .map_or(0, |d| d.failures);
        tracing::info!(a, b, lost, broken_us, tick = self.tick, "sim: a link died");
        self.link_stats.deaths += 1;
        self.link_stats.frames_lost += lost as u64;
        self.dead_links.insert(
            (acceptor, dialer),
            DeadLink {
                dialer,
                acceptor,
                broken_until_us: self.now_us + broken_us,
                failures,
                next_dial_ms,
                dialing_until_us: None,
                dialer_up: false,
                acceptor_up: false,
                connected_ticks: 0,
            },
        );
    }

    /// Dials whose backoff is over start; dials under way come up or fail (`Node::poll_redials`
    /// and `Node::redial_outcome`). A link up at both ends is alive again.
    fn poll_redials(&mut self) {
        let now = self.now_us;
        let dial_us = 2 * (self.cfg.link_faults.delay_us + self.cfg.link_faults.jitter_us);
        let keys: Vec<(usize, usize)> = self.dead_links.keys().copied().collect();
        for key in keys {
            let Some(d) = self.dead_links.get(&key).cloned() else {
                continue;
            };
            if d.dialer_up && d.acceptor_up {
                self.dead_links.remove(&key);
                self.link_back_at.insert(key, self.tick);
                continue;
            }
            if d.dialer_up || self.departed.contains(&d.dialer) || !self.cfg.redial {
                continue;
            }
            let mono = self.mono_ms(d.dialer);
            match d.dialing_until_us {
                None if mono >= d.next_dial_ms => {
                    self.link_stats.dials += 1;
                    if let Some(d) = self.dead_links.get_mut(&key) {
                        d.dialing_until_us = Some(now + dial_us);
                    }
                }
                Some(until) if now >= until => {
                    let up = now >= d.broken_until_us
                        && !self.partitions.contains_key(&key)
                        && !self.departed.contains(&d.acceptor);
                    if up {
                        self.redialled(key);
                    } else if let Some(d) = self.dead_links.get_mut(&key) {
                        // `links_heal` counts from the last failure: one after the cause ended
                        // met a partition, and the backoff after it is legitimate.
                        d.connected_ticks = 0;
                        self.link_stats.dials_failed += 1;
                        d.dialing_until_us = None;
                        d.failures += 1;
                        d.next_dial_ms = mono + redial_backoff_ms(d.failures);
                    }
                }
                _ => {}
            }
        }
    }

    /// The dialer's dial came up: `Relink` first, then every frame the acceptor has not
    /// acknowledged.
    fn redialled(&mut self, key: (usize, usize)) {
        let Some(d) = self.dead_links.get_mut(&key) else {
            return;
        };
        d.dialer_up = true;
        d.dialing_until_us = None;
        let (dialer, acceptor) = (d.dialer, d.acceptor);
        self.link_stats.redials_up += 1;
        let to = ShardId(acceptor as u16);
        let relink = LinkMessage::Relink {
            from: ShardId(dialer as u16),
            to,
            received: self.sessions[dialer].received(to),
        };
        self.put_on_link(dialer, acceptor, Bytes::from(codec::encode(&relink)));
        let frames = self.sessions[dialer].relinked(to, 0);
        if self.cfg.resend_after_redial {
            for f in frames {
                self.put_on_link(dialer, acceptor, f);
            }
        }
    }

    /// `links_heal`: a dead link between two processes that run is back within the longest
    /// backoff and a few round trips of its cause ending, counting ticks the pair is not
    /// partitioned.
    pub(super) fn check_links(&mut self, tick: u64) -> Result<(), (&'static str, String)> {
        let bound = self.cfg.ticks_in(limits::LINK_REDIAL_BACKOFF_MS_MAX + 500)
            + 3 * self.cfg.lag_bound_ticks() as u64;
        let now = self.now_us;
        for (key, d) in &mut self.dead_links {
            // A member the other saw leave (declared dead while it ran) is refused, rightly.
            let (a, b) = (ShardId(d.acceptor as u16), ShardId(d.dialer as u16));
            let stopped = self.departed.contains(&d.dialer)
                || self.departed.contains(&d.acceptor)
                || self.left[d.acceptor].contains(&b)
                || self.left[d.dialer].contains(&a);
            if stopped || now < d.broken_until_us || self.partitions.contains_key(key) {
                continue;
            }
            d.connected_ticks += 1;
            if d.connected_ticks > bound {
                return Err((
                    "links_heal",
                    format!(
                        "the link between shards {} and {} is still dead {} ticks after its cause ended (bound {bound}; tick {tick}, {} dials failed)",
                        d.acceptor, d.dialer, d.connected_ticks, d.failures
                    ),
                ));
            }
        }
        let stats = self
            .sessions
            .iter()
            .fold((0, 0), |(r, d), s| (r + s.resent, d + s.duplicates));
        (self.link_stats.frames_resent, self.link_stats.duplicates) = stats;
        Ok(())
    }

    /// What shard `i`'s lease allows now (the master's is its majority's promises).
    pub(super) fn lease_state(&self, i: usize) -> LeaseState {
        let state = if i == self.master_at && self.master_up() {
            self.master_lease()
        } else {
            (self.leases.get(i).and_then(Option::as_ref))
                .map_or(LeaseState::Holds, |l| l.state(self.mono_ms(i)))
        };
        match (self.cfg.leases, state) {
            (Leases::Ignored, _) => LeaseState::Holds,
            (Leases::NeverLost, LeaseState::Lost(_)) => LeaseState::Lapsed { for_ms: 0 },
            (_, s) => s,
        }
    }

    /// The master's answer to a heartbeat reached shard `to`.
    pub(super) fn lease_answer(&mut self, to: usize, notice: &MasterNotice) {
        if let (MasterNotice::Lease { seq, .. }, Some(s)) = (notice, self.lease_seqs.get_mut(to)) {
            *s = (*s).max(*seq);
        }
        let Some(l) = self.leases.get_mut(to).and_then(Option::as_mut) else {
            return;
        };
        match notice {
            MasterNotice::Lease { seq, lease_ms } => {
                tracing::debug!(shard = to, seq, "sim: lease answered");
                l.answered(*seq, u64::from(*lease_ms));
            }
            MasterNotice::Fenced => {
                tracing::info!(shard = to, "sim: told it is fenced");
                l.fenced();
            }
            _ => {}
        }
    }
}

/// A fresh session table per process.
pub(super) fn sessions_for(n: usize) -> Vec<Sessions> {
    (0..n).map(|_| Sessions::default()).collect()
}
