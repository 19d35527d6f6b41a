//! A shard process's place in a formed cluster: carrying shard messages, heartbeats and the
//! master's traffic on the links.
//!
//! During play, [`Node`] turns one tick's shard outbox into one `Batch` frame per neighbour and
//! each received batch back into shard messages from that neighbour, carries heartbeats to the
//! master, and routes requests to the master and its notices back (on the master's own shard,
//! straight through its [`Master`]).

use super::forming::Formed;
use super::master::Master;
use crate::core::ShardApp;
use bytes::Bytes;
use std::collections::BTreeMap;
use tracing::{error, warn};
use zonescaler_net::link::{ClusterLinks, LinkEvent, LinkEvents, LinkId};
use zonescaler_shared::ShardId;
use zonescaler_shared::cellmap::CellMap;
use zonescaler_shared::codec;
use zonescaler_shared::protocol::{
    LinkMessage, MasterNotice, MasterRequest, MemberInfo, ShardLoad,
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
    /// Link messages that arrived before the first tick, in order.
    pub early: Vec<(ShardId, LinkMessage)>,
    pub batch_bytes_out: u64,
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
    /// The node of a formed cluster.
    pub fn new(formed: Formed, links: ClusterLinks, events: LinkEvents) -> Self {
        let peer_of = formed.link_of.iter().map(|(id, l)| (*l, *id)).collect();
        Self {
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
        }
    }

    fn send(&self, to: ShardId, msg: &LinkMessage) {
        match self.link_of.get(&to) {
            Some(link) => self.links.send(*link, Bytes::from(codec::encode(msg))),
            None => warn!(shard = to.0, "no link to shard; message dropped"),
        }
    }

    /// Send one tick's shard messages: one frame per neighbour.
    pub fn send_batches(&mut self, out: Vec<(ShardId, Bytes)>) {
        let mut per: BTreeMap<ShardId, Vec<Vec<u8>>> = BTreeMap::new();
        for (to, bytes) in out {
            per.entry(to).or_default().push(bytes.to_vec());
        }
        for (to, msgs) in per {
            let Some(link) = self.link_of.get(&to) else {
                warn!(shard = to.0, "no link to shard; its messages are dropped");
                continue;
            };
            let frame = codec::encode(&LinkMessage::Batch(msgs));
            self.batch_bytes_out += frame.len() as u64;
            self.links.send(*link, Bytes::from(frame));
        }
    }

    /// The shard at the other end of `link`.
    pub fn peer(&self, link: LinkId) -> Option<ShardId> {
        self.peer_of.get(&link).copied()
    }

    /// Report load to the master (on the master: record it directly).
    pub fn heartbeat(&mut self, load: ShardLoad, now_ms: u64) {
        if let Some(m) = self.master.as_mut() {
            m.heartbeat(self.me, load, now_ms);
        } else {
            self.send(ShardId(0), &LinkMessage::Heartbeat(load));
        }
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

    /// On the master: one admission round ([`Master::admit`]), its notices delivered.
    pub fn admit(&mut self, app: &mut ShardApp, now_ms: u64) {
        let Some(m) = self.master.as_mut() else {
            return;
        };
        for (to, notice) in m.admit(now_ms) {
            self.notify(app, to, notice);
        }
    }

    fn notify(&self, app: &mut ShardApp, to: ShardId, notice: MasterNotice) {
        if to == self.me {
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
                    warn!(%link, "message on a link that is no member's; ignored");
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
                error!(
                    %link,
                    shard = self.peer(link).map(|s| s.0),
                    %reason,
                    "link to a member lost (its entities in handoff stay frozen: failover is not built yet)"
                );
            }
            LinkEvent::Up { link, .. } => {
                // Joins after the cells are placed are refused (the balancer would have to move
                // cells to the newcomer, and there is none yet).
                self.links.close(
                    link,
                    "the cluster has formed: late joins are not supported yet",
                );
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
                if let Some(m) = self.master.as_mut() {
                    m.heartbeat(from, load, now_ms);
                }
            }
            LinkMessage::ToMaster(req) => self.master_request(app, from, req, now_ms),
            LinkMessage::FromMaster(notice) if from == ShardId(0) => app.push_master_notice(notice),
            other => warn!(
                shard = from.0,
                ?other,
                "unexpected link message during play; ignored"
            ),
        }
    }
}
