//! Resources of a shard world: clock, randomness, id allocation, the network boundary (clients,
//! shard links, the master), stats.

use bevy_ecs::prelude::*;
use bytes::Bytes;
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use zonescaler_net::{NetCommand, NetEvent};
use zonescaler_shared::config::WorldConfig;
use zonescaler_shared::protocol::ErrorCode;
use zonescaler_shared::protocol::{MasterNotice, MasterRequest};
use zonescaler_shared::rng::Rng;
use zonescaler_shared::{NetId, ShardId, Tick};

/// The tick clock: the only notion of time inside a shard. The driver advances it; systems read
/// it. Nothing in a shard reads the OS clock.
#[derive(Resource, Clone, Copy, Debug)]
pub struct TickClock {
    /// The tick being simulated now (1 on the first run of the schedule).
    pub tick: Tick,
    /// Seconds per tick.
    pub dt: f32,
    pub tick_hz: u32,
    /// Milliseconds on the cluster's clock (Unix time in production, simulated time in the
    /// simulator), set by the driver before each tick; used only for what crosses shards
    /// (token expiry, time in transit). Advances by one tick's worth if the driver does not set it.
    pub now_ms: u64,
}

/// Players who arrived on this shard (logged in, or followed a handoff here) and who left it,
/// since the runtime last reported them to the master's directory. Bounded: past
/// [`PLAYER_LOG_MAX`] entries the oldest reports are dropped (the directory then catches up on
/// the player's next move).
#[derive(Resource, Debug, Default)]
pub struct PlayerLog {
    pub arrived: std::collections::VecDeque<String>,
    pub left: std::collections::VecDeque<String>,
    pub sent_on: std::collections::VecDeque<String>,
}

/// Entries each list of the [`PlayerLog`] holds.
pub const PLAYER_LOG_MAX: usize = 2 * zonescaler_shared::limits::CLIENTS_PER_SHARD_MAX;

impl PlayerLog {
    fn push(list: &mut std::collections::VecDeque<String>, name: &str) {
        if list.len() >= PLAYER_LOG_MAX {
            list.pop_front();
        }
        list.push_back(name.to_string());
    }

    pub fn arrived(&mut self, name: &str) {
        Self::push(&mut self.arrived, name);
    }

    /// The master applies a report's departures before its arrivals, so an arrival and a
    /// departure of one player between two reports would leave it in the directory for good (a
    /// bot swarm's scout logs in and out within a heartbeat). The departure cancels the
    /// unreported arrival; it is still reported, for an arrival reported earlier.
    pub fn left(&mut self, name: &str) {
        self.arrived.retain(|n| n != name);
        Self::push(&mut self.left, name);
    }

    /// A player sent on to another shard ended its connection here. Not a departure: its new
    /// shard may report its arrival after this report, and until then it holds its seat.
    pub fn sent_on(&mut self, name: &str) {
        self.arrived.retain(|n| n != name);
        Self::push(&mut self.sent_on, name);
    }
}

/// Networked entities despawned on purpose this tick (a player left, a handed-off avatar's client
/// never came, a game's `NetEntities::despawn`): the simulator's `no_lost_entities` checker tells
/// these from losses. Emptied at the start of every tick; bounded by one tick's despawns.
#[derive(Resource, Debug, Default)]
pub struct DespawnLog(pub Vec<zonescaler_shared::NetId>);

/// Players who logged in this tick (not those who arrived by a handoff): their avatar, its id,
/// the account. Read it in `Simulate` to greet, equip or place a new player; refilled every tick.
#[derive(Resource, Debug, Default)]
pub struct Logins(pub Vec<(Entity, zonescaler_shared::NetId, String)>);

/// `Receive`, first: last tick's per-tick logs are read by now (the simulator reads
/// `DespawnLog` after each tick), so they start empty.
pub fn start_tick(mut despawned: ResMut<DespawnLog>, mut logins: ResMut<Logins>) {
    despawned.0.clear();
    logins.0.clear();
}

/// The shard's seeded RNG; every random choice a system makes comes from here.
#[derive(Resource, Debug)]
pub struct ShardRng(pub Rng);

/// The shard's config, as loaded and validated.
#[derive(Resource, Clone, Debug)]
pub struct Config(pub WorldConfig);

/// Mints cluster-unique `NetId`s for entities this shard creates.
#[derive(Resource, Debug)]
pub struct IdAllocator {
    pub shard: ShardId,
    next: u64,
}

impl IdAllocator {
    pub fn new(shard: ShardId) -> Self {
        Self { shard, next: 1 }
    }

    /// A fresh id. Running out of 2⁴⁸ ids is not a state a shard can continue from.
    pub fn allocate(&mut self) -> NetId {
        let id = NetId::new(self.shard, self.next)
            .expect("invariant: 2^48 ids per shard outlast any shard process");
        self.next += 1;
        id
    }
}

/// Network events for the next `Receive` set, filled by the driver. Bounded: past
/// [`zonescaler_shared::limits::INBOX_EVENTS_MAX`] datagrams are dropped (counted), never
/// connection events.
#[derive(Resource, Debug, Default)]
pub struct Inbox {
    pub events: Vec<NetEvent>,
    pub dropped: u64,
}

impl Inbox {
    pub fn push(&mut self, event: NetEvent) {
        let is_datagram = matches!(event, NetEvent::Datagram { .. });
        if is_datagram && self.events.len() >= zonescaler_shared::limits::INBOX_EVENTS_MAX {
            self.dropped += 1;
            return;
        }
        self.events.push(event);
    }
}

/// Commands for the driver, produced by `Receive` (welcome, errors, closes) and `Send` (snapshots).
#[derive(Resource, Debug, Default)]
pub struct Outbox {
    pub commands: Vec<NetCommand>,
}

/// Counters a shard keeps about itself (reported by the runtime, read by tests and benches).
#[derive(Resource, Debug, Default, Clone)]
pub struct ShardStats {
    pub ticks: u64,
    pub clients: usize,
    pub entities: usize,
    pub snapshot_bytes: u64,
    pub snapshot_datagrams: u64,
    pub entity_updates: u64,
    /// Snapshots not built because their client was too far behind in acknowledging
    /// (`Viewer::snapshot_due`).
    pub snapshots_paced: u64,
    pub inputs_applied: u64,
    pub inputs_refused_out_of_world: u64,
    pub inputs_dropped_rate: u64,
    pub inputs_stale: u64,
    /// Inputs of redirected clients forwarded to their avatar's new owner.
    pub inputs_forwarded: u64,
    /// Clients sent to another shard (after a handoff, or a login whose spawn point is there).
    pub redirects: u64,
    /// Clients told a redirect may follow (`ServerControl::Prepare`: their avatar was offered).
    pub redirects_prepared: u64,
    /// Times this shard's ownership lease lapsed (no answer from the master in time) and its
    /// simulation paused (`cluster::lease`).
    pub lease_lapses: u64,
    /// Clients that arrived with a valid redirect token.
    pub redirected_in: u64,
    /// Game commands clients sent (queued for their avatars' owners) and dropped over the
    /// per-tick bound.
    pub client_commands: u64,
    pub client_commands_dropped: u64,
    /// Chat lines dropped over the per-second bound.
    pub says_dropped: u64,
    /// Messages delivered to players here (tells, shouts, chat).
    pub messages_delivered: u64,
    /// Client messages that did not decode (each closed its connection).
    pub decode_errors: u64,
    pub closed: BTreeMap<&'static str, u64>,
}

impl ShardStats {
    pub fn count_close(&mut self, code: ErrorCode) {
        *self.closed.entry(code.as_str()).or_default() += 1;
    }
}

/// Shard-link messages for the next `Receive`, as (sender, bytes). Filled by a link driver.
#[derive(Resource, Debug, Default)]
pub struct ShardInbox {
    pub messages: Vec<(ShardId, Bytes)>,
    /// Messages that did not decode (a link error).
    pub refused: u64,
    /// Messages sent under another cell-map epoch, or stale for another reason (a proxy update
    /// from a former owner, an answer to a handoff no longer in flight). Each entry of a
    /// `ProxyBatch` counts as one message.
    pub stale: u64,
}

/// Shard-link messages to send, as (recipient, bytes).
#[derive(Resource, Debug, Default)]
pub struct ShardOutbox {
    pub messages: Vec<(ShardId, Bytes)>,
}

/// Requests for the master (login claims, tells, shouts), drained by whoever carries them: the
/// runtime over the link to the master (or straight into it on the master's own shard), the
/// simulator into its master. Bounded by what one tick produces (logins and messages are).
#[derive(Resource, Debug, Default)]
pub struct MasterOutbox(pub Vec<MasterRequest>);

/// The master's answers and orders, for the next `Receive`.
#[derive(Resource, Debug, Default)]
pub struct MasterInbox(pub Vec<MasterNotice>);

/// Whether this shard is one of several: its logins are claimed with the master and its messages
/// to players are routed through it. A lone shard (one-shard world) answers both itself.
#[derive(Resource, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClusterMode(pub bool);

/// The change tick at which the link messages were last applied (the only legitimate writer of
/// a proxy). Anything that changes a proxy's replicated state after it is a bug (`error[Z0001]`).
#[derive(Resource, Debug, Default)]
pub struct ProxyApplyTick(pub Option<bevy_ecs::change_detection::Tick>);

/// Handoffs this shard took part in, for its load report and metrics.
#[derive(Resource, Debug)]
pub struct HandoffStats {
    pub started: u64,
    /// Handoffs this shard completed as source (acked).
    pub out: u64,
    /// Handoffs this shard accepted as target.
    pub accepted: u64,
    pub refused_sent: u64,
    pub refused_received: u64,
    pub cancels_sent: u64,
    /// Leaves moved away from / to this shard at runtime (the map flipped).
    pub cells_moved_out: u64,
    pub cells_moved_in: u64,
    /// Milliseconds from the source freezing an entity to this shard simulating it.
    pub transit_ms: Histogram<u64>,
}

impl Default for HandoffStats {
    fn default() -> Self {
        Self {
            started: 0,
            out: 0,
            accepted: 0,
            refused_sent: 0,
            refused_received: 0,
            cancels_sent: 0,
            cells_moved_out: 0,
            cells_moved_in: 0,
            // 1 ms .. 1 h, 2 significant digits: static bounds, cannot fail.
            transit_ms: Histogram::new_with_bounds(1, 3_600_000, 2)
                .expect("invariant: valid static bounds"),
        }
    }
}

/// Set when the master says this shard was drained (`MasterNotice::Drained`): it owns nothing
/// and has left the cluster; the runtime closes it and exits.
#[derive(Resource, Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Drained(pub bool);

/// Where avatars went on before their client arrived (handed off again, or shipped with a
/// moving cell): the client holds a redirect token for this shard and comes here, so it is sent
/// on to the new owner (`client::login`). Each holds for [`zonescaler_shared::limits::REDIRECT_WAIT_MS`];
/// the table keeps at most [`FORWARDS_MAX`], and forgets the lapsed ones when it fills up (so no
/// tick has to sweep it).
#[derive(Resource, Debug, Default)]
pub struct Forwards(std::collections::BTreeMap<NetId, (ShardId, u64)>);

/// Forwards kept at most (a full table sends the late client away with `BadToken`, logged).
pub const FORWARDS_MAX: usize = zonescaler_shared::limits::CLIENTS_PER_SHARD_MAX;

impl Forwards {
    /// Where avatar `id` went, if it left here waiting for its client within the wait.
    pub fn get(&self, id: NetId, now_ms: u64) -> Option<ShardId> {
        self.0
            .get(&id)
            .filter(|(_, until)| *until > now_ms)
            .map(|(to, _)| *to)
    }

    /// Avatar `id` went on to `to`: its client is sent there until the wait ends.
    pub fn insert(&mut self, id: NetId, to: ShardId, now_ms: u64) {
        if self.0.len() >= FORWARDS_MAX {
            self.0.retain(|_, (_, until)| *until > now_ms);
        }
        if self.0.len() >= FORWARDS_MAX && !self.0.contains_key(&id) {
            tracing::warn!(id = %id, "forward table full: a late client of this avatar will be refused");
            return;
        }
        self.0.insert(
            id,
            (to, now_ms + zonescaler_shared::limits::REDIRECT_WAIT_MS),
        );
    }
}

/// Buddy replication as the master hears of it (`authority::replica` keeps it current): the
/// member holding this shard's replica (once it acknowledged a batch), and how many ticks the
/// newest acknowledged batch is behind this shard's tick.
#[derive(Resource, Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaStatus {
    pub buddy: Option<ShardId>,
    pub lag_ticks: u32,
}

/// The members and the dead, as the newest map push says (`authority::cell_move` keeps it).
#[derive(Resource, Debug, Default, Clone)]
pub struct Membership {
    pub members: std::collections::BTreeSet<ShardId>,
    /// Members declared dead, with the member that adopted their cells, if one did.
    pub dead: std::collections::BTreeMap<ShardId, Option<ShardId>>,
    /// Grows with every change of `members`.
    pub version: u64,
    /// Members whose departure this shard settled (`authority::replica::on_departed`).
    pub settled: std::collections::BTreeSet<ShardId>,
}

impl Membership {
    /// Where to look for what was on its way to `to`: `to` while it is a member (or before any
    /// push named the members); the shard that adopted it if it died; `None` if it left
    /// without one (drained, or dead with no replica).
    pub fn successor(&self, to: ShardId) -> Option<ShardId> {
        if self.members.is_empty() || self.members.contains(&to) {
            return Some(to);
        }
        self.dead.get(&to).copied().flatten()
    }
}
