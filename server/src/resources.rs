//! Resources of a shard world: clock, randomness, id allocation, the network boundary, stats.

use bevy_ecs::prelude::*;
use std::collections::BTreeMap;
use zonescaler_net::{NetCommand, NetEvent};
use zonescaler_shared::config::WorldConfig;
use zonescaler_shared::protocol::ErrorCode;
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

    pub fn left(&mut self, name: &str) {
        Self::push(&mut self.left, name);
    }
}

/// Networked entities the engine despawned on purpose this tick (a player left, a handed-off
/// avatar's client never came): the simulator's `no_lost_entities` checker tells these from losses.
/// Drained by whoever reads it; bounded by the entities despawned in one tick.
#[derive(Resource, Debug, Default)]
pub struct DespawnLog(pub Vec<zonescaler_shared::NetId>);

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
    pub inputs_applied: u64,
    pub inputs_refused_out_of_world: u64,
    pub inputs_dropped_rate: u64,
    pub inputs_stale: u64,
    /// Inputs of redirected clients forwarded to their avatar's new owner.
    pub inputs_forwarded: u64,
    /// Clients sent to another shard (after a handoff, or a login whose spawn point is there).
    pub redirects: u64,
    /// Clients that arrived with a valid redirect token.
    pub redirected_in: u64,
    pub closed: BTreeMap<&'static str, u64>,
}

impl ShardStats {
    pub fn count_close(&mut self, code: ErrorCode) {
        *self.closed.entry(code.as_str()).or_default() += 1;
    }
}
