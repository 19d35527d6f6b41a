//! A shard process's place in a formed cluster: carrying shard messages, heartbeats and the
//! master's traffic on the links.
//!
//! During play, [`Node`] turns one tick's shard outbox into one `Batch` frame per neighbour and
//! each received batch back into shard messages from that neighbour, carries heartbeats to the
//! master, and routes requests to the master and its notices back (on the master's own shard,
//! straight through its [`Master`]).

use super::forming::Formed;
use super::lease::{Lease, LeaseState};
use super::master::Master;
use crate::core::ShardApp;
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet};
use tracing::{error, info, warn};
use zonescaler_net::link::{ClusterLinks, LinkEvent, LinkEvents, LinkId};
use zonescaler_shared::ShardId;
use zonescaler_shared::cellmap::CellMap;
use zonescaler_shared::codec;
use zonescaler_shared::limits;
use zonescaler_shared::protocol::{
    JoinRequest, LinkMessage, MasterNotice, MasterRequest, MemberInfo, ShardLoad,
};

/// A formed cluster, seen from this process, with its links.
pub struct Node {
    pub me: ShardId,
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
    /// Members that left the cluster (drained): their links going down is no fault.
    departed: BTreeSet<ShardId>,
    /// Frames for members whose link has not named itself yet, in order: a joiner's `Peer` may
    /// arrive after the master gave it a cell, and the first handoffs to it must not be lost.
    held: HeldFrames,
}

/// Frames kept for members in the member list that this shard has no link to yet, sent in
/// order once the link names itself, at most [`limits::UNLINKED_MEMBER_BYTES_MAX`] per member
/// (past that they are dropped and counted: the handoffs in them are retried after their
/// timeout).
#[derive(Debug, Default)]
pub struct HeldFrames {
    frames: BTreeMap<ShardId, (usize, Vec<Bytes>)>,
    /// Frames held so far, and dropped for want of room.
    pub held: u64,
    pub dropped: u64,
}

impl HeldFrames {
    /// Keep `frame` for `to`; false (and counted) when `to`'s frames are at their bound.
    pub fn hold(&mut self, to: ShardId, frame: Bytes) -> bool {
        let (bytes, frames) = self.frames.entry(to).or_default();
        if *bytes + frame.len() > limits::UNLINKED_MEMBER_BYTES_MAX {
            self.dropped += 1;
            return false;
        }
        *bytes += frame.len();
        frames.push(frame);
        self.held += 1;
        true
    }

    /// `to`'s frames, oldest first, no longer held (its link named itself, or it left).
    pub fn take(&mut self, to: ShardId) -> Vec<Bytes> {
        self.frames.remove(&to).map(|(_, f)| f).unwrap_or_default()
    }
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
            held: HeldFrames::default(),
        }
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
                let lost = self.held.take(m.id).len();
                if lost > 0 {
                    warn!(
                        shard = m.id.0,
                        frames = lost,
                        "shard left before it linked: frames held for it dropped"
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
    }

    /// On the master: a shard that dialed in during play asks to join.
    fn late_join(&mut self, app: &mut ShardApp, link: LinkId, req: JoinRequest, now_ms: u64) {
        let Some(m) = self.master.as_mut() else {
            self.links
                .close(link, "this shard does not hold the master role");
            return;
        };
        let addr = req.client_addr.clone();
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
        self.name_link(id, link);
        info!(shard = id.0, %addr, "shard joined the running cluster");
        self.send(id, &LinkMessage::Joined { id });
        self.send(id, &LinkMessage::Map(push));
        for (to, notice) in notices {
            self.notify(app, to, notice);
        }
    }

    /// A message on a link that has not said who it is: a late joiner's `Join` (on the
    /// master) or `Peer` (a joiner linking to every member once it has the map).
    fn unnamed_message(&mut self, app: &mut ShardApp, link: LinkId, bytes: &[u8], now_ms: u64) {
        match codec::decode_link_message(bytes) {
            Ok(LinkMessage::Join(req)) if self.master.is_some() => {
                self.late_join(app, link, req, now_ms);
            }
            Ok(LinkMessage::Peer { id })
                if id > self.me
                    && !self.link_of.contains_key(&id)
                    && !self.departed.contains(&id) =>
            {
                self.name_link(id, link);
                info!(shard = id.0, "linked to a shard that joined");
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

    /// `link` is `id`'s: what was held for `id` goes out on it first, in order.
    fn name_link(&mut self, id: ShardId, link: LinkId) {
        self.unnamed.remove(&link);
        self.link_of.insert(id, link);
        self.peer_of.insert(link, id);
        for frame in self.held.take(id) {
            self.links.send(link, frame);
        }
    }

    fn send(&mut self, to: ShardId, msg: &LinkMessage) {
        self.send_frame(to, Bytes::from(codec::encode(msg)));
    }

    /// One frame for `to`: on its link; held for a member whose link has not named itself yet
    /// (a joiner whose `Peer` is on its way); else dropped (no such member, or it left).
    fn send_frame(&mut self, to: ShardId, frame: Bytes) {
        if let Some(link) = self.link_of.get(&to) {
            self.links.send(*link, frame);
        } else if to != self.me
            && !self.departed.contains(&to)
            && self.members.iter().any(|m| m.id == to)
        {
            if !self.held.hold(to, frame) {
                warn!(
                    shard = to.0,
                    "no link to shard yet and its held frames are at their bound; frame dropped"
                );
            }
        } else {
            warn!(shard = to.0, "no link to shard; frame dropped");
        }
    }

    /// Frames held for members not linked yet, and dropped for want of room, since start.
    pub fn held_frames(&self) -> (u64, u64) {
        (self.held.held, self.held.dropped)
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
                self.send_frame(to, Bytes::from(frame));
            }
        }
    }

    /// The shard at the other end of `link`.
    pub fn peer(&self, link: LinkId) -> Option<ShardId> {
        self.peer_of.get(&link).copied()
    }

    /// Report load to the master (on the master: record it directly), numbered for the lease.
    pub fn heartbeat(&mut self, mut load: ShardLoad, now_ms: u64) {
        if let Some(m) = self.master.as_mut() {
            m.heartbeat(self.me, load, now_ms);
        } else {
            load.seq = self.lease.as_mut().map_or(0, |l| l.sent(now_ms));
            self.send(ShardId(0), &LinkMessage::Heartbeat(load));
        }
    }

    /// What this shard's lease allows at `now_ms` (the monotonic clock): the master always
    /// holds its own.
    pub fn lease(&self, now_ms: u64) -> LeaseState {
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
                self.send(ShardId(0), &LinkMessage::ToMaster(req));
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
        let Some(m) = self.master.as_mut() else {
            return Vec::new();
        };
        let (dead, notices) = m.housekeeping(now_ms);
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
                let peer = self.peer(link);
                if let Some(id) = peer.filter(|id| self.departed.contains(id)) {
                    info!(shard = id.0, "link to a drained shard closed");
                    self.link_of.remove(&id);
                    self.peer_of.remove(&link);
                    return;
                }
                error!(
                    %link,
                    shard = peer.map(|s| s.0),
                    %reason,
                    "link to a member lost (its entities in handoff stay frozen: failover is not built yet)"
                );
            }
            LinkEvent::Up { link, .. } => {
                // A late joiner dialing in: it says who it is with its first message. The link
                // is authenticated (the cluster secret), so the count bounds only mistakes.
                if self.unnamed.len() >= limits::SHARDS_MAX {
                    self.links
                        .close(link, "too many links that have not said who they are");
                } else {
                    self.unnamed.insert(link);
                }
            }
            LinkEvent::Failed { .. } => {}
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
            LinkMessage::Batch(msgs) => {
                for m in msgs {
                    app.push_shard_message(from, Bytes::from(m));
                }
            }
            LinkMessage::Heartbeat(load) => {
                let answer = self
                    .master
                    .as_mut()
                    .and_then(|m| m.heartbeat(from, load, now_ms));
                if let Some(answer) = answer {
                    self.send(from, &LinkMessage::FromMaster(answer));
                }
            }
            LinkMessage::ToMaster(req) => self.master_request(app, from, req, now_ms),
            LinkMessage::FromMaster(MasterNotice::Lease { seq, lease_ms })
                if from == ShardId(0) =>
            {
                if let Some(l) = self.lease.as_mut() {
                    l.answered(seq, u64::from(lease_ms));
                }
            }
            LinkMessage::FromMaster(MasterNotice::Fenced) if from == ShardId(0) => {
                error!("the master declared this shard dead and gave its cells to others: fenced");
                if let Some(l) = self.lease.as_mut() {
                    l.fenced();
                }
            }
            LinkMessage::FromMaster(notice) if from == ShardId(0) => {
                self.observe(&notice);
                app.push_master_notice(notice);
            }
            other => warn!(
                shard = from.0,
                ?other,
                "unexpected link message during play; ignored"
            ),
        }
    }
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
                || bytes + cost > limits::LINK_FRAME_BYTES_MAX
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
            match codec::decode_link_message(f) {
                Ok(LinkMessage::Batch(b)) => back.extend(b),
                other => panic!("a frame the receiver accepts: {other:?}"),
            }
        }
        assert_eq!(back, msgs, "every message, once, in order");
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

    #[test]
    fn frames_for_a_member_not_linked_yet_are_held_in_order_within_a_bound() {
        let mut held = HeldFrames::default();
        let joiner = ShardId(3);
        for i in 0..3u8 {
            assert!(held.hold(joiner, Bytes::from(vec![i; 10])));
        }
        assert!(held.hold(ShardId(4), Bytes::from_static(b"other")));
        let out = held.take(joiner);
        assert_eq!(
            out.iter().map(|f| f[0]).collect::<Vec<_>>(),
            [0, 1, 2],
            "sent oldest first once the link names itself"
        );
        assert!(held.take(joiner).is_empty(), "taken once");
        assert_eq!(held.take(ShardId(4)).len(), 1, "each member's own");

        let half = limits::UNLINKED_MEMBER_BYTES_MAX / 2;
        assert!(held.hold(joiner, Bytes::from(vec![0; half])));
        assert!(held.hold(joiner, Bytes::from(vec![0; half])));
        assert!(
            !held.hold(joiner, Bytes::from_static(b"x")),
            "past the bound a frame is dropped, not kept"
        );
        assert_eq!((held.held, held.dropped), (6, 1));
        assert_eq!(held.take(joiner).len(), 2, "what fit is kept");
    }
}
