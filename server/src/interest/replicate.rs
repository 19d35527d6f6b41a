//! `Replicate`: per-client delta snapshots.
//!
//! For each logged-in client: query the AOI grid around its avatar (frame indices in `NetId`
//! order), then merge-join that list against the snapshot the client last acknowledged (its
//! baseline, kept in a per-client ring of [`limits::SNAPSHOT_HISTORY_TICKS`]):
//! - in view and in the baseline: a small position delta if it moved (`moved`), its replicated
//!   components if their revision changed (`changed`), nothing if neither;
//! - in view only: full state (`spawned`), also used when a jump does not fit an `i16` delta;
//! - in the baseline only: `removed`.
//!
//! With no usable baseline (first snapshot, or an ack older than the ring) everything is
//! `spawned`. The client rebuilds the same state from its own copy of the baseline.

use super::grid::{AoiGrid, Frame};
use crate::core::components::{Position, ReplicatedComponents};
use crate::core::resources::{Config, Outbox, ShardStats, TickClock};
use bevy_ecs::prelude::*;
use bytes::Bytes;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use zonescaler_net::NetCommand;
use zonescaler_shared::codec;
use zonescaler_shared::limits;
use zonescaler_shared::protocol::{
    Changed, ComponentBlob, Moved, RareUpdates, ServerDatagram, SnapshotPart, Spawned,
};
use zonescaler_shared::quant::QPos;
use zonescaler_shared::{ConnId, NetId};

/// One client connection as replication sees it: what it is shown and what it has.
#[derive(Debug)]
pub struct Viewer {
    /// The entity whose surroundings the client is shown (`None` before login).
    pub view: Option<Entity>,
    pub max_datagram_bytes: usize,
    /// Newest input sequence number applied (or refused) so far; echoed in every snapshot.
    pub last_input_seq: u32,
    /// Newest snapshot tick the client says it holds whole.
    pub ack_tick: u64,
    /// Snapshots sent, newest last, at most [`limits::SNAPSHOT_HISTORY_TICKS`].
    pub history: VecDeque<SentSnapshot>,
    /// Built by `Replicate`, encoded and sent by `Send`.
    pub outgoing: Option<ClientSnapshot>,
    /// The snapshot that last fell out of `history`, kept so its buffers are reused.
    pub spare: SentSnapshot,
}

impl Viewer {
    pub fn new(max_datagram_bytes: usize) -> Self {
        Self {
            view: None,
            max_datagram_bytes,
            last_input_seq: 0,
            ack_tick: 0,
            history: VecDeque::with_capacity(limits::SNAPSHOT_HISTORY_TICKS),
            outgoing: None,
            spare: SentSnapshot::default(),
        }
    }
}

/// Every client connection's replication state, by connection (ordered, so iteration is
/// deterministic). The client plugin adds and removes them and says what each views.
#[derive(Resource, Debug, Default)]
pub struct Viewers(pub BTreeMap<ConnId, Viewer>);

/// What a client was sent at one tick: its view, for use as a later baseline.
#[derive(Debug, Clone, Default)]
pub struct SentSnapshot {
    pub tick: u64,
    pub ids: Vec<NetId>,
    pub qpos: Vec<QPos>,
    pub revs: Vec<u32>,
}

/// One client's snapshot for this tick, before it is cut into parts.
#[derive(Debug, Clone, Default)]
pub struct ClientSnapshot {
    pub tick: u64,
    pub baseline: u64,
    /// (index in the baseline's id list, position delta).
    pub moved: Vec<(u32, [i16; 3])>,
    pub spawned: Vec<Spawned>,
    pub changed: Vec<Changed>,
    pub removed: Vec<NetId>,
}

impl ClientSnapshot {
    fn entries(&self) -> usize {
        self.moved.len() + self.spawned.len() + self.changed.len() + self.removed.len()
    }
}

/// Reused per-tick buffers (no allocation per client once warm).
#[derive(Resource, Debug, Default)]
pub struct ReplicateScratch {
    visible: Vec<u32>,
}

/// `Replicate`: compute every client's delta against its baseline and record what was sent.
pub fn compute_deltas(
    mut viewers: ResMut<Viewers>,
    mut scratch: ResMut<ReplicateScratch>,
    frame: Res<Frame>,
    grid: Res<AoiGrid>,
    clock: Res<TickClock>,
    config: Res<Config>,
    avatars: Query<&Position>,
    blobs: Query<&ReplicatedComponents>,
) {
    let tick = clock.tick.0;
    let radius = config.0.interest.aoi_radius_m;
    let visible = &mut scratch.visible;
    let components = |i: usize| -> Arc<[ComponentBlob]> {
        blobs
            .get(frame.entities[i])
            .map(|r| r.blobs.clone())
            .unwrap_or_default()
    };
    for client in viewers.0.values_mut() {
        let Some(pos) = client.view.and_then(|e| avatars.get(e).ok()) else {
            continue;
        };
        grid.query(
            &frame.xz,
            [pos.0.x, pos.0.z],
            radius,
            limits::AOI_ENTITIES_PER_CLIENT_MAX,
            visible,
        );
        // Reuse the buffers of the snapshot that fell out of the history last tick.
        let mut sent = std::mem::take(&mut client.spare);
        let out = diff(tick, client, visible, &frame, &components, &mut sent);
        if client.history.len() >= limits::SNAPSHOT_HISTORY_TICKS
            && let Some(old) = client.history.pop_front()
        {
            client.spare = old;
        }
        client.history.push_back(sent);
        client.outgoing = Some(out);
    }
}

/// Merge-join the entities `visible` now (frame indices in `NetId` order) against the snapshot
/// the client acknowledged: what moved, changed, appeared and went. Fills `sent` with this
/// tick's view, the next baseline.
fn diff(
    tick: u64,
    client: &Viewer,
    visible: &[u32],
    frame: &Frame,
    components: &impl Fn(usize) -> Arc<[ComponentBlob]>,
    sent: &mut SentSnapshot,
) -> ClientSnapshot {
    let baseline = if client.ack_tick > 0 {
        client.history.iter().find(|s| s.tick == client.ack_tick)
    } else {
        None
    };
    let empty = SentSnapshot::default();
    let base = baseline.unwrap_or(&empty);
    let mut out = ClientSnapshot {
        tick,
        baseline: baseline.map_or(0, |b| b.tick),
        ..Default::default()
    };
    sent.tick = tick;
    sent.ids.clear();
    sent.qpos.clear();
    sent.revs.clear();
    let mut j = 0;
    for &vi in visible {
        let i = vi as usize;
        let (id, qp, rev) = (frame.ids[i], frame.qpos[i], frame.revs[i]);
        while j < base.ids.len() && base.ids[j] < id {
            out.removed.push(base.ids[j]);
            j += 1;
        }
        let delta = (j < base.ids.len() && base.ids[j] == id)
            .then(|| qp.delta_from(base.qpos[j]))
            .flatten();
        match delta {
            Some(d) => {
                if d != [0; 3] {
                    // The baseline holds at most AOI_ENTITIES_PER_CLIENT_MAX ids.
                    out.moved.push((j as u32, d));
                }
                if rev != base.revs[j] {
                    out.changed.push(Changed {
                        id,
                        components: components(i),
                    });
                }
            }
            // New to the client, or a jump no delta holds: full state.
            None => out.spawned.push(Spawned {
                id,
                pos: qp,
                components: components(i),
            }),
        }
        if j < base.ids.len() && base.ids[j] == id {
            j += 1;
        }
        sent.ids.push(id);
        sent.qpos.push(qp);
        sent.revs.push(rev);
    }
    out.removed.extend_from_slice(&base.ids[j..]);
    out
}

/// `Send`: encode every client's snapshot into datagram-sized parts and queue them.
pub fn send_snapshots(
    mut viewers: ResMut<Viewers>,
    mut outbox: ResMut<Outbox>,
    mut stats: ResMut<ShardStats>,
    mut buf: Local<bitcode::Buffer>,
) {
    for (conn, client) in viewers.0.iter_mut() {
        let Some(snap) = client.outgoing.take() else {
            continue;
        };
        let parts = encode_parts(
            &snap,
            client.last_input_seq,
            client.max_datagram_bytes,
            &mut buf,
        );
        for (bytes, updates) in parts {
            stats.snapshot_bytes += bytes.len() as u64;
            stats.snapshot_datagrams += 1;
            stats.entity_updates += updates as u64;
            outbox.commands.push(NetCommand::Datagram {
                conn: *conn,
                bytes: Bytes::from(bytes),
            });
        }
    }
}

/// Cut a snapshot into encoded parts of at most `max_bytes` each. Returns each part's bytes and
/// the entity updates it carries. A snapshot with nothing in it still yields one (empty) part:
/// it tells the client the tick happened and which input was applied.
pub fn encode_parts(
    snap: &ClientSnapshot,
    last_input_seq: u32,
    max_bytes: usize,
    buf: &mut bitcode::Buffer,
) -> Vec<(Vec<u8>, usize)> {
    let total = snap.entries();
    let mut parts = 1usize;
    loop {
        let encoded: Vec<(Vec<u8>, usize)> = (0..parts)
            .map(|p| encode_part(snap, last_input_seq, p, parts, buf))
            .collect();
        let fits = encoded.iter().all(|(b, _)| b.len() <= max_bytes);
        if fits || parts >= total.max(1) || parts >= limits::SNAPSHOT_PARTS_MAX {
            return encoded;
        }
        // Grow by the measured overshoot, at least one part, so most snapshots take two tries.
        let biggest = encoded.iter().map(|(b, _)| b.len()).max().unwrap_or(0);
        let grow = (parts * biggest).div_ceil(max_bytes * 9 / 10);
        parts = grow.clamp(parts + 1, limits::SNAPSHOT_PARTS_MAX.min(total.max(1)));
    }
}

/// Slice `v` into `parts` near-equal runs and return run `p`.
fn slice_of<T>(v: &[T], p: usize, parts: usize) -> &[T] {
    let (start, end) = (v.len() * p / parts, v.len() * (p + 1) / parts);
    &v[start..end]
}

fn encode_part(
    snap: &ClientSnapshot,
    last_input_seq: u32,
    p: usize,
    parts: usize,
    buf: &mut bitcode::Buffer,
) -> (Vec<u8>, usize) {
    let moved_src = slice_of(&snap.moved, p, parts);
    let index_base = moved_src.first().map_or(0, |(i, _)| *i);
    let mut next = index_base;
    let moved: Vec<Moved> = moved_src
        .iter()
        .map(|&(i, d)| {
            let gap = i - next;
            next = i + 1;
            Moved {
                index_gap: gap,
                delta: d,
            }
        })
        .collect();
    let spawned = slice_of(&snap.spawned, p, parts);
    let changed = slice_of(&snap.changed, p, parts);
    let removed = slice_of(&snap.removed, p, parts);
    let rare =
        (!spawned.is_empty() || !changed.is_empty() || !removed.is_empty()).then(|| RareUpdates {
            spawned: spawned.to_vec(),
            changed: changed.to_vec(),
            removed: removed.to_vec(),
        });
    let part = SnapshotPart {
        tick: snap.tick,
        // History holds at most SNAPSHOT_HISTORY_TICKS (< 256) snapshots, so the age fits.
        baseline_age: if snap.baseline == 0 {
            0
        } else {
            (snap.tick - snap.baseline) as u8
        },
        // Both bounded by SNAPSHOT_PARTS_MAX (64).
        part: p as u8,
        parts: parts as u8,
        last_input_seq,
        index_base,
        moved,
        rare,
    };
    let updates = part.entity_updates();
    let mut out = Vec::new();
    codec::encode_into(buf, &ServerDatagram::Snapshot(part), &mut out);
    (out, updates)
}
