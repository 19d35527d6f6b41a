//! A shard process's place in a cluster: joining it, and carrying shard messages on the links.
//!
//! [`form`] runs before the first tick. The master (shard 0, started with `--expect-shards N`)
//! accepts joins on its link endpoint until N shards are members, places the cells, and pushes
//! the map to everyone. A joiner (`--join ADDR`) dials the master, sends `Join`, gets its id and
//! then the map; it then dials every member with a smaller id other than the master (sending
//! `Peer` so the acceptor knows who it is) and waits for every member with a larger id to dial
//! it, so every pair of shards has exactly one link. Nothing ticks until all links are up, so no
//! shard message is ever sent to a neighbour without a link. Any link message that arrives
//! early is kept for the first tick, in order.
//!
//! During play, [`Node`] turns one tick's shard outbox into one `Batch` frame per neighbour and
//! each received batch back into shard messages from that neighbour, and carries heartbeats to
//! the master.

use crate::master::Master;
use anyhow::{Context, bail};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tracing::{info, warn};
use zonescaler_net::link::{ClusterLinks, LinkEvent, LinkEvents, LinkId};
use zonescaler_shared::ShardId;
use zonescaler_shared::cellmap::{CellGrid, CellMap, Epoch};
use zonescaler_shared::codec;
use zonescaler_shared::protocol::{JoinRequest, LinkMessage, MapPush, MemberInfo, ShardLoad};

/// How long forming the cluster may take before the process gives up.
pub const FORM_TIMEOUT: Duration = Duration::from_secs(60);

/// Who this process is in the cluster.
#[derive(Clone, Debug)]
pub enum Role {
    /// Hold the master role and wait for this many shards (itself included).
    Master { expect_shards: usize },
    /// Join the cluster whose master's links are at this address.
    Join { master: SocketAddr },
}

/// A formed cluster, seen from this process.
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

fn send(links: &ClusterLinks, link: LinkId, msg: &LinkMessage) {
    links.send(link, Bytes::from(codec::encode(msg)));
}

fn decode(bytes: &[u8], from: &str) -> anyhow::Result<LinkMessage> {
    codec::decode_link_message(bytes).with_context(|| format!("bad link message from {from}"))
}

async fn next_event(events: &mut LinkEvents, deadline: Instant) -> anyhow::Result<LinkEvent> {
    let left = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(left, events.recv()).await {
        Ok(Some(e)) => Ok(e),
        Ok(None) => bail!("the link driver stopped"),
        Err(_) => bail!("the cluster did not form within {FORM_TIMEOUT:?}"),
    }
}

/// Join or gather the cluster, place or receive the map, and link every pair of shards.
pub async fn form(
    role: Role,
    links: ClusterLinks,
    mut events: LinkEvents,
    grid: CellGrid,
    me: JoinRequest,
    now_ms: impl Fn() -> u64,
) -> anyhow::Result<Node> {
    let deadline = Instant::now() + FORM_TIMEOUT;
    let mut link_of: BTreeMap<ShardId, LinkId> = BTreeMap::new();
    let mut early = Vec::new();
    let (my_id, push, mut master) = match role {
        Role::Master { expect_shards } => {
            let info = MemberInfo {
                id: ShardId(0),
                client_addr: me.client_addr.clone(),
                link_addr: me.link_addr.clone(),
                weight: me.weight,
            };
            let mut master = Master::new(grid, expect_shards, info, now_ms());
            println!(
                "zonescaler: master waiting for {} more shard(s) to join at {}",
                expect_shards.saturating_sub(1),
                links.local_addr()
            );
            while !master.ready_to_place() {
                match next_event(&mut events, deadline).await? {
                    LinkEvent::Message { link, bytes } => match decode(&bytes, "a joiner")? {
                        LinkMessage::Join(req) => match master.join(req, now_ms()) {
                            Ok(id) => {
                                info!(shard = id.0, "shard joined");
                                link_of.insert(id, link);
                                send(&links, link, &LinkMessage::Joined { id });
                            }
                            Err(e) => {
                                warn!(error = %e, "join refused");
                                links.close(link, &e.to_string());
                            }
                        },
                        other => warn!(?other, "unexpected message before joining; ignored"),
                    },
                    LinkEvent::Down { link, reason, .. } => {
                        if let Some((id, _)) = link_of.iter().find(|(_, l)| **l == link) {
                            bail!("shard {} left while the cluster formed: {reason}", id.0);
                        }
                    }
                    LinkEvent::Up { .. } | LinkEvent::Failed { .. } => {}
                }
            }
            let push = master.place().context("cannot place the cells")?;
            for link in link_of.values() {
                send(&links, *link, &LinkMessage::Map(push.clone()));
            }
            (ShardId(0), push, Some(master))
        }
        Role::Join { master: addr } => {
            let link = links.dial(addr);
            let mut id = None;
            let push = loop {
                match next_event(&mut events, deadline).await? {
                    LinkEvent::Up { link: l, .. } if l == link => {
                        send(&links, link, &LinkMessage::Join(me.clone()));
                    }
                    LinkEvent::Failed {
                        link: l, reason, ..
                    } if l == link => {
                        bail!("cannot join the cluster at {addr}: {reason}");
                    }
                    LinkEvent::Down {
                        link: l, reason, ..
                    } if l == link => {
                        bail!("the master at {addr} closed the link: {reason}");
                    }
                    LinkEvent::Message { link: l, bytes } if l == link => {
                        match decode(&bytes, "the master")? {
                            LinkMessage::Joined { id: given } => id = Some(given),
                            LinkMessage::Map(push) => break push,
                            other => early.push((ShardId(0), other)),
                        }
                    }
                    _ => {}
                }
            };
            let id = id.context("the master sent the map before an id")?;
            link_of.insert(ShardId(0), link);
            (id, push, None)
        }
    };
    let MapPush {
        epoch,
        leaves,
        members,
    } = push;
    let map = CellMap::from_leaves(grid, Epoch(epoch), leaves.into_iter().collect()).context(
        "the master's cell map does not fit this world config (same --world everywhere?)",
    )?;
    // Link the rest: dial the smaller ids (the master is linked already), accept the larger.
    let mut pending_dials: BTreeMap<LinkId, ShardId> = BTreeMap::new();
    for m in &members {
        if m.id != my_id && m.id != ShardId(0) && m.id < my_id {
            let addr: SocketAddr = m.link_addr.parse().with_context(|| {
                format!("shard {} has a bad link address {}", m.id.0, m.link_addr)
            })?;
            pending_dials.insert(links.dial(addr), m.id);
        }
    }
    let wanted = members.len() - 1;
    while link_of.len() < wanted {
        match next_event(&mut events, deadline).await? {
            LinkEvent::Up { link, .. } => {
                if let Some(id) = pending_dials.remove(&link) {
                    send(&links, link, &LinkMessage::Peer { id: my_id });
                    link_of.insert(id, link);
                }
            }
            LinkEvent::Failed { link, reason, .. } => {
                if let Some(id) = pending_dials.get(&link) {
                    bail!("cannot link to shard {}: {reason}", id.0);
                }
            }
            LinkEvent::Message { link, bytes } => {
                let from = link_of.iter().find(|(_, l)| **l == link).map(|(id, _)| *id);
                match (decode(&bytes, "a peer")?, from) {
                    (LinkMessage::Peer { id }, None)
                        if members.iter().any(|m| m.id == id && m.id > my_id) =>
                    {
                        link_of.insert(id, link);
                    }
                    (other, Some(from)) => early.push((from, other)),
                    (other, None) => warn!(?other, "message on an unknown link; ignored"),
                }
            }
            LinkEvent::Down { link, reason, .. } => {
                if let Some((id, _)) = link_of.iter().find(|(_, l)| **l == link) {
                    bail!("lost the link to shard {} while forming: {reason}", id.0);
                }
            }
        }
    }
    if let Some(m) = master.as_mut() {
        m.heartbeat(my_id, ShardLoad::default(), now_ms());
    }
    let peer_of = link_of.iter().map(|(id, l)| (*l, *id)).collect();
    println!(
        "zonescaler: shard {} of {} linked; {} cells at epoch {}",
        my_id.0,
        members.len(),
        map.cells_of(my_id).count(),
        map.epoch()
    );
    Ok(Node {
        me: my_id,
        map,
        members,
        links,
        events,
        link_of,
        peer_of,
        master,
        early,
        batch_bytes_out: 0,
    })
}

impl Node {
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
        } else if let Some(link) = self.link_of.get(&ShardId(0)) {
            send(&self.links, *link, &LinkMessage::Heartbeat(load));
        }
    }

    /// Client address of every member, for redirects.
    pub fn client_addrs(&self) -> BTreeMap<ShardId, String> {
        self.members
            .iter()
            .map(|m| (m.id, m.client_addr.clone()))
            .collect()
    }
}
