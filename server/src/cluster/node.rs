//! A shard process's place in a formed cluster: carrying shard messages, heartbeats and the
//! master's traffic on the links.
//!
//! During play, [`Node`] turns one tick's shard outbox into one `Batch` frame per neighbour and
//! each received batch back into shard messages from that neighbour, carries heartbeats to the
//! master, and routes requests to the master and its notices back (on the master's own shard,
//! straight through its [`Master`]).
//!
//! Every frame to a member during play goes through its session ([`super::session`]): numbered,
//! kept until acknowledged, sent again after a dropped link comes back. A link that drops between
//! two members is redialled by the one with the larger id (as at forming), with capped
//! exponential backoff ([`redial_backoff_ms`]), for as long as the master lists the other; its
//! first frame, `Relink`, names the dialer and the member it meant to reach, and the acceptor
//! refuses it unless that is itself. A member the master removed (dead, drained) is not redialled
//! and its session ends.

use super::election::{ElectionOut, ElectionView, MasterElection, QuorumElection};
use super::forming::Formed;
use super::lease::{Lease, LeaseState, LostWhy};
use super::master::Master;
use super::reports::PlayerReports;
use super::requests::UnconfirmedRequests;
use super::session::{Arrival, Sessions};
use crate::core::ShardApp;
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use tracing::{debug, error, info, warn};
use zonescaler_net::link::{ClusterLinks, LinkEvent, LinkEvents, LinkId};
use zonescaler_shared::ShardId;
use zonescaler_shared::cellmap::{CellMap, Epoch};
use zonescaler_shared::codec;
use zonescaler_shared::limits;
use zonescaler_shared::protocol::{
    ElectionMessage, JoinRequest, LinkMessage, MasterNotice, MasterRequest, MemberInfo,
    OwnershipReport, ShardLoad, Standby,
};

/// How a master is configured from the world config (the duplicate-login rule, admission, the
/// silence, the balancer): applied to the master that forms the cluster and to any successor.
pub type MasterSettings = Arc<dyn Fn(Master) -> Master + Send + Sync>;

/// The master role changed hands (for the runtime to say so and move the API's view).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoleChange {
    pub master: ShardId,
    pub term: u64,
    /// This process holds the role now.
    pub mine: bool,
}

/// A formed cluster, seen from this process, with its links.
pub struct Node {
    pub me: ShardId,
    /// The newest map the master pushed (the placement at first).
    pub map: CellMap,
    pub members: Vec<MemberInfo>,
    pub links: ClusterLinks,
    pub events: LinkEvents,
    /// The link to each other member.
    link_of: BTreeMap<ShardId, LinkId>,
    peer_of: BTreeMap<LinkId, ShardId>,
    /// The master's state, on the master only.
    pub master: Option<Master>,
    /// This shard's ownership lease, renewed by the master's answers to its heartbeats; `None`
    /// on the master (it is the authority).
    lease: Option<Lease>,
    /// Link messages that arrived before the first tick, in order.
    pub early: Vec<(ShardId, LinkMessage)>,
    pub batch_bytes_out: u64,
    /// Links up that have not said who they are yet (a late joiner dialing in).
    unnamed: BTreeSet<LinkId>,
    /// Members that left the cluster (drained, or declared dead): their links going down is no
    /// fault, and they are not redialled.
    departed: BTreeSet<ShardId>,
    /// Joiners that linked to this member with `Peer` (at most `limits::SHARDS_MAX`): members
    /// even before the master's push naming them reaches this one, so their redials are taken
    /// ([`relink_allowed`]).
    peered: BTreeSet<ShardId>,
    /// The numbered frames to and from each member, kept until acknowledged: sent once its link
    /// names itself (a joiner's `Peer` may arrive after the master gave it a cell) or is back.
    sessions: Sessions,
    /// Dropped links this shard redials (to members with a smaller id).
    redials: BTreeMap<ShardId, Redial>,
    /// When each redialled link came back, and the failures before: one that drops again soon
    /// after (the peer refused the relink, or the path is flapping) keeps its backoff.
    relinked: BTreeMap<ShardId, (u64, u32)>,
    /// Redials since start, for the metrics.
    pub redial_stats: RedialStats,
    /// Who holds the master role, and the election of a successor when it falls silent.
    election: Box<dyn MasterElection>,
    /// The master's state as this member holds it, for a successor ([`Standby`]; its player
    /// directory in `standby_seats`).
    pub standby: Standby,
    pub standby_seats: BTreeMap<String, ShardId>,
    /// The dead members of the last map push (a successor pushes them on).
    dead: Vec<(ShardId, Option<ShardId>)>,
    /// The newest heartbeat the master answered (`ShardLoad::lease_seq`).
    lease_seq: u64,
    /// How a successor is configured (`None`: as [`Master::successor`] makes it).
    settings: Option<MasterSettings>,
    /// Changes of the master role since the runtime last took them.
    pub role_changes: Vec<RoleChange>,
    /// This process held the role and another was elected: it must stop.
    deposed: bool,
    /// Requests sent to the master that it may not have heard: a successor gets them.
    unconfirmed: UnconfirmedRequests,
    /// Ownership reports sent since start (each numbers its parts).
    audits_sent: u64,
    /// Player reports of heartbeats the master has not answered: a successor gets them.
    reports: PlayerReports,
}

/// Why a master refuses a late joiner while it has no majority behind it (the joiner tries
/// again: the majority may come back, or a successor be elected).
pub const NO_MAJORITY: &str = "the master has no majority behind it now; try again shortly";

/// A dropped link to a member being redialled.
#[derive(Debug)]
struct Redial {
    /// When the link dropped.
    since_ms: u64,
    /// Dials that failed since.
    failures: u32,
    /// When to dial next.
    next_ms: u64,
    /// The dial under way.
    dialing: Option<LinkId>,
}

/// Redials since start: dials started, links back up, dials that failed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RedialStats {
    pub dialled: u64,
    pub up: u64,
    pub failed: u64,
}

/// Whether `me` takes a link whose first frame is `Relink { from, to }`: only one meant for it,
/// from a listed member, or a joiner that linked to it with `Peer` (`peered`: the master's push
/// naming it may not have reached `me`, cut off from the master, and never will if the master
/// dies: refused, the two could never talk again, nor elect a successor), that has not left,
/// with a larger id (the one that redials); else why not.
pub fn relink_allowed(
    me: ShardId,
    (from, to): (ShardId, ShardId),
    members: &[MemberInfo],
    peered: &BTreeSet<ShardId>,
    departed: &BTreeSet<ShardId>,
) -> Result<(), &'static str> {
    if to != me {
        Err("not the member you dialled (a new process at its address?)")
    } else if departed.contains(&from) {
        Err("you left the cluster")
    } else if !members.iter().any(|m| m.id == from) && !peered.contains(&from) {
        Err("not a member")
    } else if from <= me {
        Err("the larger id redials, not the smaller")
    } else {
        Ok(())
    }
}

/// The wait before the next dial of a dropped link after `failures` failed ones: from
/// `LINK_REDIAL_BACKOFF_MS_MIN`, doubling, at most `LINK_REDIAL_BACKOFF_MS_MAX`.
pub fn redial_backoff_ms(failures: u32) -> u64 {
    let doubled = limits::LINK_REDIAL_BACKOFF_MS_MIN << failures.min(16);
    doubled.min(limits::LINK_REDIAL_BACKOFF_MS_MAX)
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("me", &self.me)
            .field("members", &self.members.len())
            .finish_non_exhaustive()
    }
}

impl Node {
    /// The node of a formed cluster; `now_ms` is the runtime's monotonic clock (the lease
    /// starts then: the master's map has just arrived).
    pub fn new(formed: Formed, links: ClusterLinks, events: LinkEvents, now_ms: u64) -> Self {
        let peer_of = formed.link_of.iter().map(|(id, l)| (*l, *id)).collect();
        let lease = formed.master.is_none().then(|| Lease::new(now_ms));
        let election = QuorumElection::new(
            formed.me,
            formed.master_id,
            limits::MASTER_SILENCE_MS_DEFAULT,
            now_ms,
        );
        Self {
            lease,
            me: formed.me,
            map: formed.map,
            members: formed.members,
            links,
            events,
            link_of: formed.link_of,
            peer_of,
            master: formed.master,
            early: formed.early,
            batch_bytes_out: 0,
            unnamed: BTreeSet::new(),
            departed: BTreeSet::new(),
            peered: BTreeSet::new(),
            sessions: Sessions::default(),
            redials: BTreeMap::new(),
            relinked: BTreeMap::new(),
            redial_stats: RedialStats::default(),
            election: Box::new(election),
            standby: Standby::default(),
            standby_seats: BTreeMap::new(),
            dead: Vec::new(),
            lease_seq: 0,
            settings: None,
            role_changes: Vec::new(),
            deposed: false,
            unconfirmed: UnconfirmedRequests::default(),
            audits_sent: 0,
            reports: PlayerReports::default(),
        }
    }

    /// Configure a successor as `settings` does, and elect one after `silence_ms` without the
    /// master's answers (`[cluster] master_silence_ms`).
    pub fn with_succession(
        mut self,
        settings: MasterSettings,
        silence_ms: u64,
        now_ms: u64,
    ) -> Self {
        let silence_ms =
            silence_ms.clamp(limits::MASTER_SILENCE_MS_MIN, limits::MASTER_SILENCE_MS_MAX);
        let master = self.election.master();
        let mut e = QuorumElection::new(self.me, master, silence_ms, now_ms);
        if self.master.is_some() {
            e = QuorumElection::new(self.me, self.me, silence_ms, now_ms);
        }
        self.election = Box::new(e);
        self.settings = Some(settings);
        self
    }

    /// Where member `id` serves the HTTP API (empty: nowhere, or no such member).
    pub fn api_of(&self, id: ShardId) -> String {
        (self.members.iter())
            .find(|m| m.id == id)
            .map(|m| m.http_addr.clone())
            .unwrap_or_default()
    }

    /// The member holding the master role, as far as this one knows.
    pub fn master_id(&self) -> ShardId {
        self.election.master()
    }

    /// The master's term, as far as this member knows.
    pub fn term(&self) -> u64 {
        self.election.term()
    }

    /// What the election sees from here.
    fn election_view(&self) -> ElectionView {
        let mut reachable: BTreeSet<ShardId> = self.link_of.keys().copied().collect();
        reachable.insert(self.me);
        ElectionView {
            members: self.members.iter().map(|m| m.id).collect(),
            reachable,
            version: self.standby.version,
            epoch: self.map.epoch().0,
        }
    }

    /// Run the election (every tick): stand when the master has been silent long enough.
    pub fn poll_election(&mut self, app: &mut ShardApp, now_ms: u64) {
        if self.deposed {
            return;
        }
        let view = self.election_view();
        let outs = self.election.poll(now_ms, &view);
        self.election_outs(app, outs, now_ms);
    }

    fn election_outs(&mut self, app: &mut ShardApp, outs: Vec<ElectionOut>, now_ms: u64) {
        // One line per candidacy (not per member it goes to): elections are rare, and an
        // operator reading a slow failover wants to see who stood when.
        let mut stood = None;
        for out in outs {
            match out {
                ElectionOut::Send(to, msg) => {
                    match msg {
                        ElectionMessage::Candidacy {
                            term,
                            version,
                            epoch,
                        } if stood != Some(term) => {
                            stood = Some(term);
                            info!(
                                term,
                                version, epoch, "the master is silent: standing for master"
                            );
                        }
                        ElectionMessage::Vote {
                            term,
                            granted: true,
                        } => {
                            debug!(to = to.0, term, "voted for a candidate");
                        }
                        ElectionMessage::Vote {
                            term,
                            granted: false,
                        } => {
                            let view = self.election_view();
                            info!(
                                to = to.0,
                                term,
                                version = view.version,
                                epoch = view.epoch,
                                "refused a candidate its vote (this shard hears the master, voted \
                                 in that term already, or holds newer state)"
                            );
                        }
                        _ => {}
                    }
                    self.send(to, &LinkMessage::Election(msg));
                }
                ElectionOut::Won { term, from, voters } => {
                    self.take_over(app, term, from, &voters, now_ms)
                }
                ElectionOut::Follow { master, term } => {
                    warn!(
                        master = master.0,
                        term,
                        resent = self.unconfirmed.len(),
                        "a new master was elected: following it (requests the old one may not \
                         have heard go to it)"
                    );
                    // Its player reports the old one never answered go with the next heartbeat.
                    self.reports.new_master();
                    crate::authority::cell_move::abort_moves(app);
                    for req in self.unconfirmed.pending() {
                        self.send(master, &LinkMessage::ToMaster(req));
                    }
                    self.role_changes.push(RoleChange {
                        master,
                        term,
                        mine: false,
                    });
                }
                ElectionOut::Deposed { term } => {
                    error!(
                        term,
                        "another shard was elected master while this one was cut off: \
                         stepping down (it fenced this shard and took its cells)"
                    );
                    self.master = None;
                    self.deposed = true;
                }
            }
        }
    }

    /// This member won the election for `term`: it becomes the master, from the state it holds
    /// of `old`'s, fences `old` and gives its cells to their buddy.
    fn take_over(
        &mut self,
        app: &mut ShardApp,
        term: u64,
        old: ShardId,
        voters: &[ShardId],
        now_ms: u64,
    ) {
        let built = Master::successor(
            &self.map,
            &self.members,
            &self.dead,
            &self.standby,
            &self.standby_seats,
            self.me,
            term,
            voters,
            now_ms,
        );
        let mut m = match built {
            Ok(m) => m,
            Err(e) => {
                error!(error = %e, "won the election but cannot rebuild the map: not taking the role");
                return;
            }
        };
        if let Some(settings) = &self.settings {
            m = settings(m);
        }
        error!(
            term,
            old = old.0,
            voters = voters.len(),
            "the master fell silent: this shard was elected master; fencing the old one and \
             giving its cells to its buddy"
        );
        let notices = m.take_over(old, now_ms);
        self.master = Some(m);
        self.reports.new_master();
        crate::authority::cell_move::abort_moves(app);
        self.lease = None;
        // Its own requests the old master may not have heard, answered here now.
        for req in self.unconfirmed.take() {
            self.master_request(app, self.me, req, now_ms);
        }
        self.role_changes.push(RoleChange {
            master: self.me,
            term,
            mine: true,
        });
        for (to, notice) in notices {
            self.notify(app, to, notice);
        }
    }

    /// Whether this process holds the master role and a majority of the members behind it:
    /// only then does it act as the master (see `cluster::election`).
    pub fn master_acts(&self, now_ms: u64) -> bool {
        self.master.as_ref().is_some_and(|m| m.quorum(now_ms).1)
    }

    /// A map notice went by: keep the member list (a member joined or left) in step.
    fn observe(&mut self, notice: &MasterNotice) {
        let MasterNotice::Map(push) = notice else {
            return;
        };
        let now: BTreeSet<ShardId> = push.members.iter().map(|m| m.id).collect();
        for m in &self.members {
            if m.id != self.me && !now.contains(&m.id) {
                info!(
                    shard = m.id.0,
                    "shard left the cluster (drained, or declared dead)"
                );
                self.departed.insert(m.id);
                self.relinked.remove(&m.id);
                if let Some(dial) = self.redials.remove(&m.id).and_then(|r| r.dialing) {
                    self.links.close(dial, "the shard left the cluster");
                }
                let lost = self.sessions.forget(m.id);
                if lost > 0 {
                    warn!(
                        shard = m.id.0,
                        frames = lost,
                        "shard left with frames it never acknowledged: dropped (its handoffs \
                         are resumed here, its proxies removed)"
                    );
                }
            }
        }
        for m in &push.members {
            if m.id != self.me && !self.members.iter().any(|x| x.id == m.id) {
                info!(shard = m.id.0, addr = %m.client_addr, "shard joined the cluster");
            }
        }
        self.members = push.members.clone();
        self.dead = push.dead.clone();
        // The map too: a successor rebuilds the master from it, and a candidacy names its epoch
        // (a member that kept its first map stood with epoch 1, and a successor pushed that
        // map again, undoing every cell move since the cluster formed).
        if push.epoch > self.map.epoch().0 {
            let leaves = push.leaves.iter().copied().collect();
            match CellMap::from_leaves(*self.map.grid(), Epoch(push.epoch), leaves) {
                Ok(map) => self.map = map,
                Err(e) => warn!(epoch = push.epoch, error = %e, "a map push that does not fit"),
            }
        }
    }

    /// On the master: a shard that dialed in during play asks to join.
    fn late_join(&mut self, app: &mut ShardApp, link: LinkId, req: JoinRequest, now_ms: u64) {
        let Some(m) = self.master.as_mut() else {
            let master = self.master_id();
            let addr = (self.members.iter())
                .find(|m| m.id == master)
                .map(|m| m.link_addr.clone());
            if let Some(master) = addr {
                let msg = LinkMessage::NotMaster { master };
                self.links.send(link, Bytes::from(codec::encode(&msg)));
            }
            self.links
                .close(link, "this shard does not hold the master role");
            return;
        };
        let addr = req.client_addr.clone();
        if !m.quorum(now_ms).1 {
            // A member added now would count towards a majority this master does not hold: a
            // master cut off in a minority could grow one beside the master the rest elected.
            warn!(%addr, "late join refused: {NO_MAJORITY}");
            self.links.close(link, NO_MAJORITY);
            return;
        }
        let id = match m.join(req, now_ms) {
            Ok(id) => id,
            Err(e) => {
                warn!(%addr, error = %e, "late join refused");
                self.links.close(link, &e.to_string());
                return;
            }
        };
        let Some(push) = m.push_for_joiner() else {
            return;
        };
        let notices = m.members_changed(Some(id));
        info!(shard = id.0, %addr, "shard joined the running cluster");
        // Before its session's frames: its forming reads these two unnumbered.
        let master = self.me;
        for msg in [LinkMessage::Joined { id, master }, LinkMessage::Map(push)] {
            self.links.send(link, Bytes::from(codec::encode(&msg)));
        }
        self.name_link(id, link, 0);
        for (to, notice) in notices {
            self.notify(app, to, notice);
        }
    }

    /// A message on a link that has not said who it is: a late joiner's `Join` (on the
    /// master) or `Peer` (a joiner linking to every member once it has the map).
    fn unnamed_message(&mut self, app: &mut ShardApp, link: LinkId, bytes: &[u8], now_ms: u64) {
        match codec::decode_link_message(bytes) {
            Ok(LinkMessage::Join(req)) => {
                self.late_join(app, link, req, now_ms);
            }
            Ok(LinkMessage::Peer { id })
                if id > self.me
                    && !self.link_of.contains_key(&id)
                    && !self.departed.contains(&id) =>
            {
                self.name_link(id, link, 0);
                if self.peered.len() < limits::SHARDS_MAX {
                    self.peered.insert(id);
                }
                info!(shard = id.0, "linked to a shard that joined");
            }
            Ok(LinkMessage::Relink { from, to, received }) => {
                self.relinked_by_peer(link, from, to, received);
            }
            Ok(other) => {
                warn!(%link, ?other, "unexpected first message on a new link: closing it");
                self.unnamed.remove(&link);
                self.links.close(link, "expected Join or Peer first");
            }
            Err(e) => {
                warn!(%link, error = %e, "bad first message on a new link: closing it");
                self.unnamed.remove(&link);
                self.links.close(link, "bad link message");
            }
        }
    }

    /// `link` is `id`'s, and `id` has our session frames up to `received`: every frame it has
    /// not acknowledged goes out on it first, in order (all of them to a joiner; those in flight
    /// or kept while the link was down after a redial).
    fn name_link(&mut self, id: ShardId, link: LinkId, received: u64) {
        self.unnamed.remove(&link);
        self.link_of.insert(id, link);
        self.peer_of.insert(link, id);
        for frame in self.sessions.relinked(id, received) {
            self.links.send(link, frame);
        }
    }

    /// A member with a larger id redialled a dropped link to this shard. Refused unless it is a
    /// member and meant this shard (the process at an address can change: a restarted shard is
    /// a new member). A link of ours to it that still looks up is replaced: its end saw it drop.
    fn relinked_by_peer(&mut self, link: LinkId, from: ShardId, to: ShardId, received: u64) {
        let allowed = relink_allowed(
            self.me,
            (from, to),
            &self.members,
            &self.peered,
            &self.departed,
        );
        if let Err(why) = allowed {
            warn!(%link, from = from.0, to = to.0, why, "a redialled link refused: closing it");
            self.unnamed.remove(&link);
            self.links.close(link, &format!("relink refused: {why}"));
            return;
        }
        if let Some(old) = self.link_of.remove(&from) {
            self.peer_of.remove(&old);
            self.links.close(old, "replaced by a redialled link");
        }
        info!(
            shard = from.0,
            resend = self.sessions.unacked(from),
            "the shard redialled a dropped link: sending again what it did not acknowledge"
        );
        self.name_link(from, link, received);
    }

    fn send(&mut self, to: ShardId, msg: &LinkMessage) {
        self.send_frame(to, codec::encode(msg));
    }

    /// One frame (an encoded `LinkMessage`) for `to`, numbered in its session: on its link, or
    /// kept until the link names itself or is back (a joiner whose `Peer` is on its way, a link
    /// being redialled). To a member that left, on the link it may still have, unnumbered (its
    /// session ended); to no member, dropped.
    fn send_frame(&mut self, to: ShardId, frame: Vec<u8>) {
        let link = self.link_of.get(&to).copied();
        if self.departed.contains(&to) || to == self.me {
            match link {
                Some(link) => self.links.send(link, Bytes::from(frame)),
                None => warn!(shard = to.0, "no link to shard; frame dropped"),
            }
            return;
        }
        if link.is_none() && !self.members.iter().any(|m| m.id == to) {
            warn!(shard = to.0, "no such member; frame dropped");
            return;
        }
        match (self.sessions.push(to, frame, link.is_some()), link) {
            (Some(wire), Some(link)) => self.links.send(link, wire),
            (Some(_), None) => {}
            (None, _) => error!(
                shard = to.0,
                unacked = self.sessions.unacked(to),
                "frames kept for shard at their bound (its link is down or it does not \
                 acknowledge): frame dropped; handoffs in it are cancelled after their timeout"
            ),
        }
    }

    /// Frames kept for members with no link (not named yet, or down), and dropped for want of
    /// room, since start.
    pub fn held_frames(&self) -> (u64, u64) {
        (self.sessions.kept_unlinked, self.sessions.dropped)
    }

    /// Session frames sent again on redialled links, and received twice and dropped.
    pub fn session_frames(&self) -> (u64, u64) {
        (self.sessions.resent, self.sessions.duplicates)
    }

    /// After a tick's link events: tell each member how far its frames arrived.
    pub fn send_acks(&mut self) {
        for (id, received) in self.sessions.acks_due() {
            if let Some(link) = self.link_of.get(&id) {
                let ack = LinkMessage::Ack { received };
                self.links.send(*link, Bytes::from(codec::encode(&ack)));
            }
        }
    }

    /// Dial the dropped links whose backoff is over.
    pub fn poll_redials(&mut self, now_ms: u64) {
        let due: Vec<ShardId> = (self.redials.iter())
            .filter(|(_, r)| r.dialing.is_none() && r.next_ms <= now_ms)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let addr = (self.members.iter())
                .find(|m| m.id == id)
                .and_then(|m| m.link_addr.parse::<SocketAddr>().ok());
            let Some(addr) = addr else {
                warn!(
                    shard = id.0,
                    "not redialling: no longer a member, or no link address"
                );
                self.redials.remove(&id);
                continue;
            };
            let link = self.links.dial(addr);
            self.redial_stats.dialled += 1;
            if let Some(r) = self.redials.get_mut(&id) {
                info!(shard = id.0, %addr, failures = r.failures, "redialling a dropped link");
                r.dialing = Some(link);
            }
        }
    }

    /// A link to `id` is gone while both are members: redial it (the larger id does) or wait.
    fn link_lost(&mut self, id: ShardId, reason: &str, now_ms: u64) {
        let unacked = self.sessions.unacked(id);
        if self.me > id {
            warn!(shard = id.0, %reason, unacked, "link to a member lost: redialling it; frames for it are kept until it is back");
            // Up for less than the longest backoff: count it as one more failure, so a relink the
            // peer refuses is not redialled in a tight loop.
            let failures = (self.relinked.remove(&id))
                .filter(|(at, _)| now_ms < at + limits::LINK_REDIAL_BACKOFF_MS_MAX)
                .map_or(0, |(_, f)| f + 1);
            let next_ms = now_ms
                + if failures == 0 {
                    0
                } else {
                    redial_backoff_ms(failures)
                };
            self.redials.entry(id).or_insert(Redial {
                since_ms: now_ms,
                failures,
                next_ms,
                dialing: None,
            });
        } else {
            warn!(shard = id.0, %reason, unacked, "link to a member lost: waiting for it to redial (the larger id dials); frames for it are kept until it is back");
        }
    }

    /// A dial of ours came up or failed: `true` if it was a redial.
    fn redial_outcome(&mut self, link: LinkId, up: Result<(), &str>, now_ms: u64) -> bool {
        let Some(id) = (self.redials.iter())
            .find(|(_, r)| r.dialing == Some(link))
            .map(|(id, _)| *id)
        else {
            return false;
        };
        match up {
            Ok(()) => {
                let Some(r) = self.redials.remove(&id) else {
                    return true;
                };
                self.redial_stats.up += 1;
                self.relinked.insert(id, (now_ms, r.failures));
                let relink = LinkMessage::Relink {
                    from: self.me,
                    to: id,
                    received: self.sessions.received(id),
                };
                self.links.send(link, Bytes::from(codec::encode(&relink)));
                info!(
                    shard = id.0,
                    down_ms = now_ms.saturating_sub(r.since_ms),
                    failures = r.failures,
                    resend = self.sessions.unacked(id),
                    "link redialled: sending again what the shard did not acknowledge"
                );
                self.name_link(id, link, 0);
            }
            Err(reason) => {
                self.redial_stats.failed += 1;
                if let Some(r) = self.redials.get_mut(&id) {
                    r.dialing = None;
                    r.failures += 1;
                    r.next_ms = now_ms + redial_backoff_ms(r.failures);
                    info!(shard = id.0, %reason, failures = r.failures, next_in_ms = redial_backoff_ms(r.failures), "redial failed");
                }
            }
        }
        true
    }

    /// Send one tick's shard messages: one frame per neighbour, or several in order where they
    /// do not fit one (see [`batch_frames`]).
    pub fn send_batches(&mut self, out: Vec<(ShardId, Bytes)>) {
        let mut per: BTreeMap<ShardId, Vec<Vec<u8>>> = BTreeMap::new();
        for (to, bytes) in out {
            per.entry(to).or_default().push(bytes.to_vec());
        }
        for (to, msgs) in per {
            for batch in batch_frames(msgs) {
                let frame = codec::encode(&LinkMessage::Batch(batch));
                self.batch_bytes_out += frame.len() as u64;
                self.send_frame(to, frame);
            }
        }
    }

    /// The shard at the other end of `link`.
    pub fn peer(&self, link: LinkId) -> Option<ShardId> {
        self.peer_of.get(&link).copied()
    }

    /// Report load to the master (on the master: record it directly), numbered for the lease.
    pub fn heartbeat(&mut self, mut load: ShardLoad, now_ms: u64) {
        load.term = self.election.term();
        load.members_digest =
            zonescaler_shared::protocol::members_digest(self.members.iter().map(|m| m.id));
        if let Some(m) = self.master.as_mut() {
            self.reports.sending(&mut load, true);
            m.heartbeat(self.me, load, now_ms);
        } else {
            load.seq = self.lease.as_mut().map_or(0, |l| l.sent(now_ms));
            self.reports.sending(&mut load, false);
            load.lease_seq = self.lease_seq;
            let master = self.master_id();
            self.send(master, &LinkMessage::Heartbeat(load));
        }
    }

    /// Report what this shard owns to the master's audit (on the master: record it directly),
    /// in as many parts as it takes, numbered.
    pub fn audit(&mut self, report: &OwnershipReport, now_ms: u64) {
        self.audits_sent += 1;
        let master = self.master_id();
        for part in report.parts(self.audits_sent) {
            if let Some(m) = self.master.as_mut() {
                m.audit_part(self.me, part, now_ms);
            } else {
                self.send(master, &LinkMessage::Audit(part));
            }
        }
    }

    /// What this shard's lease allows at `now_ms` (the monotonic clock): the master always
    /// holds its own.
    pub fn lease(&self, now_ms: u64) -> LeaseState {
        if self.deposed {
            return LeaseState::Lost(LostWhy::Fenced);
        }
        if let Some(m) = &self.master {
            // The master's own lease is its majority's promises (`cluster::election`).
            return if m.quorum(now_ms).1 {
                LeaseState::Holds
            } else {
                LeaseState::Lapsed { for_ms: 0 }
            };
        }
        self.lease
            .as_ref()
            .map_or(LeaseState::Holds, |l| l.state(now_ms))
    }

    /// This shard's requests for the master: over the link, or (on the master) answered at once,
    /// the notices for this shard pushed into `app` and the others sent on.
    pub fn to_master(&mut self, app: &mut ShardApp, reqs: Vec<MasterRequest>, now_ms: u64) {
        for req in reqs {
            if self.master.is_some() {
                self.master_request(app, self.me, req, now_ms);
            } else {
                let master = self.master_id();
                self.send(master, &LinkMessage::ToMaster(req.clone()));
                let after = self.lease.as_ref().map_or(0, Lease::next_seq);
                self.unconfirmed.sent(after, req);
            }
        }
    }

    /// On the master: answer `from`'s request, delivering the notices.
    fn master_request(
        &mut self,
        app: &mut ShardApp,
        from: ShardId,
        req: MasterRequest,
        now_ms: u64,
    ) {
        let Some(m) = self.master.as_mut() else {
            return;
        };
        for (to, notice) in m.request(from, req, now_ms) {
            self.notify(app, to, notice);
        }
    }

    /// On the master: mark members silent for too long as dead, abort the cell moves that are
    /// overdue or lost a party, and run a balancing round when one is due, sending their
    /// notices. The members newly declared dead.
    pub fn master_housekeeping(&mut self, app: &mut ShardApp, now_ms: u64) -> Vec<ShardId> {
        if !self.master_acts(now_ms) {
            return Vec::new();
        }
        let Some(m) = self.master.as_mut() else {
            return Vec::new();
        };
        let (dead, mut notices) = m.housekeeping(now_ms);
        notices.extend(m.standby());
        for (to, notice) in notices {
            self.notify(app, to, notice);
        }
        dead
    }

    /// On the master: send the notices of an order (a cell move, split or merge).
    pub fn master_notices(&mut self, app: &mut ShardApp, notices: Vec<(ShardId, MasterNotice)>) {
        for (to, notice) in notices {
            self.notify(app, to, notice);
        }
    }

    /// On the master: one admission round ([`Master::admit`]), its notices delivered.
    pub fn admit(&mut self, app: &mut ShardApp, now_ms: u64) {
        if !self.master_acts(now_ms) {
            return;
        }
        let Some(m) = self.master.as_mut() else {
            return;
        };
        for (to, notice) in m.admit(now_ms) {
            self.notify(app, to, notice);
        }
    }

    fn notify(&mut self, app: &mut ShardApp, to: ShardId, notice: MasterNotice) {
        if to == self.me {
            self.observe(&notice);
            app.push_master_notice(notice);
        } else {
            self.send(to, &LinkMessage::FromMaster(notice));
        }
    }

    /// Client address of every member, for redirects.
    pub fn client_addrs(&self) -> BTreeMap<ShardId, String> {
        self.members
            .iter()
            .map(|m| (m.id, m.client_addr.clone()))
            .collect()
    }

    /// A link event during play.
    pub fn on_link_event(&mut self, app: &mut ShardApp, ev: LinkEvent, now_ms: u64) {
        match ev {
            LinkEvent::Message { link, bytes } => {
                let Some(from) = self.peer(link) else {
                    if self.unnamed.contains(&link) {
                        self.unnamed_message(app, link, &bytes, now_ms);
                    } else {
                        warn!(%link, "message on a link that is no member's; ignored");
                    }
                    return;
                };
                match codec::decode_link_message(&bytes) {
                    Ok(msg) => self.on_link_message(app, from, msg, now_ms),
                    Err(e) => {
                        error!(shard = from.0, error = %e, "bad link message: closing the link");
                        self.links.close(link, "bad link message");
                    }
                }
            }
            LinkEvent::Down { link, reason, .. } => {
                self.unnamed.remove(&link);
                let Some(id) = self.peer_of.remove(&link) else {
                    debug!(%link, %reason, "a link that names no member closed (replaced, or never named)");
                    return;
                };
                if self.link_of.get(&id) == Some(&link) {
                    self.link_of.remove(&id);
                }
                if self.departed.contains(&id) {
                    info!(shard = id.0, "link to a shard that left closed");
                } else {
                    self.link_lost(id, &reason, now_ms);
                }
            }
            LinkEvent::Up { link, dialed, .. } => {
                if dialed && self.redial_outcome(link, Ok(()), now_ms) {
                    return;
                }
                // A late joiner dialing in: it says who it is with its first message. The link
                // is authenticated (the cluster secret), so the count bounds only mistakes.
                if self.unnamed.len() >= limits::SHARDS_MAX {
                    self.links
                        .close(link, "too many links that have not said who they are");
                } else {
                    self.unnamed.insert(link);
                }
            }
            LinkEvent::Failed { link, reason, .. } => {
                self.redial_outcome(link, Err(&reason), now_ms);
            }
        }
    }

    /// One decoded link message from member `from`.
    pub fn on_link_message(
        &mut self,
        app: &mut ShardApp,
        from: ShardId,
        msg: LinkMessage,
        now_ms: u64,
    ) {
        match msg {
            LinkMessage::Seq { seq, frame } => {
                self.on_session_frame(app, from, seq, &frame, now_ms)
            }
            LinkMessage::Ack { received } => self.sessions.acked(from, received),
            LinkMessage::Batch(msgs) => {
                for m in msgs {
                    app.push_shard_message(from, Bytes::from(m));
                }
            }
            LinkMessage::Heartbeat(load) => {
                let outs = self.election.heard_term(load.term);
                self.election_outs(app, outs, now_ms);
                let answer = self
                    .master
                    .as_mut()
                    .and_then(|m| m.heartbeat(from, load, now_ms));
                if let Some(answer) = answer {
                    self.send(from, &LinkMessage::FromMaster(answer));
                }
            }
            LinkMessage::ToMaster(req) => {
                if self.master_acts(now_ms) {
                    self.master_request(app, from, req, now_ms);
                } else if self.master.is_some() {
                    warn!(
                        shard = from.0,
                        "a request while this master has no majority behind it: dropped"
                    );
                }
            }
            LinkMessage::Audit(part) => {
                if let Some(m) = self.master.as_mut() {
                    m.audit_part(from, part, now_ms);
                }
            }
            LinkMessage::Election(msg) => {
                let view = self.election_view();
                let outs = self.election.on_message(from, msg, now_ms, &view);
                self.election_outs(app, outs, now_ms);
            }
            LinkMessage::FromMaster(notice) if from != self.master_id() => {
                // A master of a newer term (a joiner learns the term from its first state).
                if let MasterNotice::Standby(s) = &notice
                    && s.term > self.election.term()
                {
                    let view = self.election_view();
                    let elected = ElectionMessage::Elected { term: s.term };
                    let outs = self.election.on_message(from, elected, now_ms, &view);
                    self.election_outs(app, outs, now_ms);
                    if self.master_id() == from {
                        self.on_master_notice(app, notice, now_ms);
                        return;
                    }
                }
                debug!(
                    shard = from.0,
                    master = self.master_id().0,
                    "a master's notice from a shard that does not hold the role; ignored"
                );
            }
            LinkMessage::FromMaster(notice) => self.on_master_notice(app, notice, now_ms),
            other => warn!(
                shard = from.0,
                ?other,
                "unexpected link message during play; ignored"
            ),
        }
    }
}

impl Node {
    /// A notice from the master this member follows.
    fn on_master_notice(&mut self, app: &mut ShardApp, notice: MasterNotice, now_ms: u64) {
        match notice {
            MasterNotice::Lease { seq, lease_ms } => {
                self.election.heard_master(now_ms);
                self.lease_seq = self.lease_seq.max(seq);
                self.reports.answered(seq);
                self.unconfirmed.confirmed(seq);
                if let Some(l) = self.lease.as_mut() {
                    l.answered(seq, u64::from(lease_ms));
                }
            }
            MasterNotice::Fenced => {
                error!("the master declared this shard dead and gave its cells to others: fenced");
                if let Some(l) = self.lease.as_mut() {
                    l.fenced();
                }
            }
            MasterNotice::Standby(s) => {
                self.reports.standby();
                apply_standby(&mut self.standby, &mut self.standby_seats, *s);
            }
            notice => {
                self.observe(&notice);
                self.unconfirmed.answered(&notice);
                app.push_master_notice(notice);
            }
        }
    }

    /// Frame `seq` of `from`'s session: delivered if it is the next one.
    fn on_session_frame(
        &mut self,
        app: &mut ShardApp,
        from: ShardId,
        seq: u64,
        frame: &[u8],
        now_ms: u64,
    ) {
        if self.departed.contains(&from) {
            // Its session ended when the master let it go; what it sent before is stale (a
            // fenced shard's last ticks), and its cells and proxies are handled already.
            debug!(shard = from.0, "a frame from a shard that left; dropped");
            return;
        }
        match self.sessions.receive(from, seq) {
            Arrival::Duplicate => return,
            Arrival::Gap { missing } => error!(
                shard = from.0,
                missing, "session frames never came (a bug: senders never drop a numbered frame)"
            ),
            Arrival::Deliver => {}
        }
        match codec::decode_link_message(frame) {
            Ok(LinkMessage::Seq { .. } | LinkMessage::Ack { .. } | LinkMessage::Relink { .. }) => {
                error!(
                    shard = from.0,
                    "a session frame inside a session frame; dropped"
                );
            }
            Ok(msg) => self.on_link_message(app, from, msg, now_ms),
            Err(e) => error!(shard = from.0, error = %e, "bad session frame; dropped"),
        }
    }
}

/// Apply one [`Standby`] message of the master's to the state this member holds.
pub fn apply_standby(held: &mut Standby, seats: &mut BTreeMap<String, ShardId>, mut s: Standby) {
    if s.full {
        seats.clear();
    }
    for (name, seat) in std::mem::take(&mut s.seats) {
        match seat {
            Some(shard) => {
                seats.insert(name, shard);
            }
            None => {
                seats.remove(&name);
            }
        }
    }
    *held = s;
}

/// One neighbour's messages of one tick as batches that each fit a link frame and the
/// receiver's batch limits, in order. A message over `SHARD_MESSAGE_BYTES_MAX` would make the
/// receiver refuse its whole batch: it is left out and logged (encoders split proxy batches and
/// bound handoffs and commands below that limit, so this is a bug to find, never traffic).
pub fn batch_frames(msgs: Vec<Vec<u8>>) -> Vec<Vec<Vec<u8>>> {
    let mut out: Vec<Vec<Vec<u8>>> = Vec::new();
    let mut bytes = usize::MAX;
    for m in msgs {
        if m.len() > limits::SHARD_MESSAGE_BYTES_MAX {
            error!(bytes = m.len(), "shard message over the limit: not sent");
            continue;
        }
        let cost = m.len() + limits::LINK_BATCH_BYTES_PER_MESSAGE;
        let full = out.last().is_none_or(|b| {
            b.len() >= limits::LINK_BATCH_MESSAGES_MAX
                || bytes + cost > limits::LINK_FRAME_BYTES_MAX - limits::LINK_SEQ_BYTES_FIXED
        });
        if full {
            out.push(Vec::new());
            bytes = limits::LINK_BATCH_BYTES_FIXED;
        }
        bytes += cost;
        if let Some(b) = out.last_mut() {
            b.push(m);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames_of(msgs: &[Vec<u8>]) -> Vec<Vec<u8>> {
        batch_frames(msgs.to_vec())
            .into_iter()
            .map(|b| codec::encode(&LinkMessage::Batch(b)))
            .collect()
    }

    #[test]
    fn a_tick_of_messages_over_one_frame_goes_in_several_frames_in_order() {
        // 200 messages at the message limit: about 6.4 MiB, over the 4 MiB frame.
        let msgs: Vec<Vec<u8>> = (0..200u32)
            .map(|i| {
                let mut m = vec![(i % 251) as u8; limits::SHARD_MESSAGE_BYTES_MAX];
                m[..4].copy_from_slice(&i.to_le_bytes());
                m
            })
            .collect();
        let frames = frames_of(&msgs);
        assert!(frames.len() >= 2, "split: {} frames", frames.len());
        let mut back = Vec::new();
        for f in &frames {
            assert!(
                f.len() <= limits::LINK_FRAME_BYTES_MAX,
                "every frame fits the link: {} bytes",
                f.len()
            );
            let wrapped = codec::encode(&LinkMessage::Seq {
                seq: u64::MAX,
                frame: f.clone(),
            });
            assert!(
                wrapped.len() <= limits::LINK_FRAME_BYTES_MAX,
                "and still does in its session's wrapper: {} bytes",
                wrapped.len()
            );
            match codec::decode_link_message(f) {
                Ok(LinkMessage::Batch(b)) => back.extend(b),
                other => panic!("a frame the receiver accepts: {other:?}"),
            }
        }
        assert_eq!(back, msgs, "every message, once, in order");
    }

    #[test]
    fn redials_back_off_exponentially_to_a_cap() {
        let waits: Vec<u64> = (0..8).map(redial_backoff_ms).collect();
        assert_eq!(waits[0], limits::LINK_REDIAL_BACKOFF_MS_MIN);
        assert!(waits.windows(2).all(|w| w[1] >= w[0]), "never shorter");
        assert_eq!(waits[1], 2 * waits[0], "doubling");
        assert_eq!(waits[7], limits::LINK_REDIAL_BACKOFF_MS_MAX, "capped");
        assert_eq!(
            redial_backoff_ms(u32::MAX),
            limits::LINK_REDIAL_BACKOFF_MS_MAX
        );
    }

    #[test]
    fn a_relink_is_taken_only_from_a_listed_larger_member_that_meant_this_shard() {
        let member = |id| MemberInfo {
            id: ShardId(id),
            client_addr: String::new(),
            link_addr: String::new(),
            metrics_addr: String::new(),
            http_addr: String::new(),
            weight: 1,
        };
        let members = [member(0), member(1), member(2), member(3)];
        let me = ShardId(1);
        let mut departed = BTreeSet::new();
        let peered = BTreeSet::from([ShardId(5)]);
        let ask = |from, to, departed: &BTreeSet<ShardId>| {
            relink_allowed(
                me,
                (ShardId(from), ShardId(to)),
                &members,
                &peered,
                departed,
            )
        };
        assert_eq!(ask(2, 1, &departed), Ok(()));
        assert!(ask(2, 3, &departed).is_err(), "meant for another shard");
        assert!(
            ask(0, 1, &departed).is_err(),
            "the smaller id never redials"
        );
        assert!(ask(7, 1, &departed).is_err(), "no such member");
        departed.insert(ShardId(2));
        assert!(ask(2, 1, &departed).is_err(), "a member that left");
        assert_eq!(ask(3, 1, &departed), Ok(()));
        // A joiner that linked with `Peer` before the push naming it reached this member (the
        // master cut off from it, and perhaps dead: the push may never come).
        assert_eq!(ask(5, 1, &departed), Ok(()), "a joiner that peered");
        departed.insert(ShardId(5));
        assert!(
            ask(5, 1, &departed).is_err(),
            "a joiner that peered and left"
        );
    }

    #[test]
    fn many_small_messages_are_split_by_count() {
        let msgs = vec![vec![1u8]; limits::LINK_BATCH_MESSAGES_MAX + 5];
        let batches = batch_frames(msgs);
        assert_eq!(
            batches.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![limits::LINK_BATCH_MESSAGES_MAX, 5]
        );
    }

    #[test]
    fn a_message_over_the_message_limit_is_left_out_not_sent_to_spoil_its_batch() {
        let msgs = vec![
            vec![1u8; 10],
            vec![2u8; limits::SHARD_MESSAGE_BYTES_MAX + 1],
            vec![3u8; 10],
        ];
        assert_eq!(batch_frames(msgs), vec![vec![vec![1u8; 10], vec![3u8; 10]]]);
        assert!(
            batch_frames(Vec::new()).is_empty(),
            "nothing to send, no frame"
        );
    }
}
