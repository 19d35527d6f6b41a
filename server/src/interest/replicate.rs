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
//! With no usable baseline (first snapshot, an ack older than the ring, or one more than 255 ticks
//! old: the age travels as a byte) everything is `spawned`. The client rebuilds the same state from its own copy of the baseline.
//!
//! A client whose acknowledgements fall more than `interest.snapshot_window_ms` behind is paced
//! ([`Viewer::snapshot_due`]): it gets a snapshot every window instead of every tick until it
//! catches up, so a slow client is never buried in stale snapshots.

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
    /// Ticks of the first and the newest snapshot built for this client (`None`: none yet).
    pub first_sent_tick: Option<u64>,
    pub last_sent_tick: u64,
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
            first_sent_tick: None,
            last_sent_tick: 0,
            history: VecDeque::with_capacity(limits::SNAPSHOT_HISTORY_TICKS),
            outgoing: None,
            spare: SentSnapshot::default(),
        }
    }

    /// Whether the client gets a snapshot at `tick`: every tick while its newest acknowledged
    /// snapshot is at most `window` ticks old, else one every `window` ticks until its
    /// acknowledgements catch up. A client that has acknowledged nothing yet counts from its first
    /// snapshot: a new connection (a login, or a client following its avatar after a handoff or
    /// a cell move) gets every tick until its first acknowledgement is due.
    ///
    /// A client that falls behind (its path or its own process slower than the snapshots) would
    /// otherwise be sent more than it can take, and what it finally reads would be seconds old:
    /// the queues in between (the connection's send buffer, the client's receive buffer) fill
    /// with stale snapshots, while the shard spends a tick's CPU building them. A new connection
    /// is the worst case: with no baseline every snapshot is full, and a cell move redirects a
    /// whole cell's clients at once. The occasional snapshot keeps a client that stopped
    /// acknowledging (lost inputs, an idle client) in the picture.
    pub fn snapshot_due(&self, tick: u64, window: u64) -> bool {
        let Some(first) = self.first_sent_tick else {
            return true;
        };
        let since = if self.ack_tick > 0 {
            self.ack_tick
        } else {
            first
        };
        tick.saturating_sub(since) <= window || tick.saturating_sub(self.last_sent_tick) >= window
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
    /// `tick` minus the baseline's tick; 0: no baseline (everything is spawned).
    pub baseline_age: u8,
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
    mut stats: ResMut<ShardStats>,
    avatars: Query<&Position>,
    blobs: Query<&ReplicatedComponents>,
) {
    let tick = clock.tick.0;
    let radius = config.0.interest.aoi_radius_m;
    let window = config.0.snapshot_window_ticks();
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
        if !client.snapshot_due(tick, window) {
            stats.snapshots_paced += 1;
            continue;
        }
        client.first_sent_tick.get_or_insert(tick);
        client.last_sent_tick = tick;
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
    // The age travels as one byte: a baseline older than that (the history holds the snapshots
    // sent, which span more ticks for a paced client) is not one.
    let age = u8::try_from(tick.saturating_sub(client.ack_tick)).ok();
    let baseline = match age {
        Some(age) if age > 0 && client.ack_tick > 0 => client
            .history
            .iter()
            .find(|s| s.tick == client.ack_tick)
            .map(|b| (age, b)),
        _ => None,
    };
    let empty = SentSnapshot::default();
    let base = baseline.map_or(&empty, |(_, b)| b);
    let mut out = ClientSnapshot {
        tick,
        baseline_age: baseline.map_or(0, |(age, _)| age),
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
        baseline_age: snap.baseline_age,
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

#[cfg(test)]
mod tests {
    use super::*;
    use glam::Vec3;

    fn frame(n: u64) -> Frame {
        let mut f = Frame::default();
        for i in 0..n {
            f.ids.push(NetId(i + 1));
            f.entities.push(Entity::PLACEHOLDER);
            f.qpos.push(QPos::quantize(Vec3::new(i as f32, 0.0, 0.0)));
            f.xz.push([i as f32, 0.0]);
            f.revs.push(0);
        }
        f
    }

    /// A viewer that holds the snapshot of `base_tick` (everything in `f`) and acknowledged it.
    fn acked_at(base_tick: u64, f: &Frame) -> Viewer {
        let mut v = Viewer::new(1_200);
        v.history.push_back(SentSnapshot {
            tick: base_tick,
            ids: f.ids.clone(),
            qpos: f.qpos.clone(),
            revs: f.revs.clone(),
        });
        v.ack_tick = base_tick;
        v
    }

    #[test]
    fn a_baseline_is_named_by_its_age_and_one_too_old_for_a_byte_is_not_used() {
        let f = frame(5);
        let visible: Vec<u32> = (0..5).collect();
        let none = |_: usize| Arc::<[ComponentBlob]>::from(Vec::new());
        let mut sent = SentSnapshot::default();

        // 200 ticks after the baseline: a delta against it (nothing moved: no entries).
        let v = acked_at(100, &f);
        let out = diff(300, &v, &visible, &f, &none, &mut sent);
        assert_eq!(out.baseline_age, 200);
        assert!(out.spawned.is_empty() && out.moved.is_empty());

        // 300 ticks after it, still in the history (a paced client's history spans that many):
        // the age would not fit its byte, so the snapshot is full.
        let out = diff(400, &v, &visible, &f, &none, &mut sent);
        assert_eq!(out.baseline_age, 0, "no baseline older than 255 ticks");
        assert_eq!(out.spawned.len(), 5, "everything in full");
        assert!(out.moved.is_empty() && out.removed.is_empty());
    }

    #[test]
    fn a_new_connection_is_paced_from_its_first_snapshot_until_it_acknowledges() {
        let mut v = Viewer::new(1_200);
        assert!(v.snapshot_due(100, 8), "nothing sent yet");
        let mut sent = Vec::new();
        for t in 100..=140 {
            if v.snapshot_due(t, 8) {
                v.first_sent_tick.get_or_insert(t);
                v.last_sent_tick = t;
                sent.push(t);
            }
        }
        let expected: Vec<u64> = (100..=108).chain([116, 124, 132, 140]).collect();
        assert_eq!(
            sent, expected,
            "every tick for a window after the first, then one per window"
        );
        v.ack_tick = 139;
        assert!(v.snapshot_due(141, 8), "an acknowledgement catches it up");
    }
}
