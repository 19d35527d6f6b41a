//! Client ↔ shard messages, one enum per channel so a message can only arrive where it belongs.
//!
//! | channel | client → shard | shard → client |
//! |---|---|---|
//! | reliable control stream | [`ClientControl`] (`Hello`) | [`ServerControl`] (`Welcome`, `Error`) |
//! | unreliable datagrams | [`ClientDatagram`] (`Input`) | [`ServerDatagram`] (snapshot parts) |
//!
//! Bytes are produced and checked only by [`crate::codec`]; every type here implements
//! [`Validate`] so the codec rejects a well-formed but oversized message before anything uses it.

use crate::NetId;
use crate::limits;
use crate::quant::QPos;
use bitcode::{Decode, Encode};

/// Bumped on every incompatible change to a type in this module.
pub const PROTOCOL_VERSION: u16 = 1;

/// Semantic checks the codec runs after decoding (lengths, ranges).
pub trait Validate {
    fn validate(&self) -> Result<(), &'static str>;
}

/// Client → shard on the control stream.
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub enum ClientControl {
    /// First message on a connection; anything else first closes it.
    Hello(Hello),
}

#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub struct Hello {
    /// [`crate::registry::ProtocolRegistry::hash`] of the client's build; must match the shard's.
    pub protocol_hash: u64,
    pub name: String,
}

/// Client → shard as a datagram.
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub enum ClientDatagram {
    Input(Input),
}

/// One movement input. Inputs are sent every client tick; any may be lost, so each carries the
/// newest intent, and the shard applies only sequence numbers newer than the last it applied.
#[derive(Clone, Copy, Debug, PartialEq, Encode, Decode)]
pub struct Input {
    pub seq: u32,
    /// Newest snapshot tick the client holds whole: the shard's delta baseline.
    pub ack_tick: u64,
    /// Where the client wants its avatar to be. The shard moves the avatar towards it by at most
    /// `max_speed_mps / tick_hz` per tick and refuses targets outside the world.
    pub target: QPos,
}

/// Shard → client on the control stream.
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub enum ServerControl {
    Welcome(Welcome),
    /// Sent just before the shard closes the connection.
    Error(ErrorMsg),
}

#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub struct Welcome {
    /// The entity this connection drives.
    pub avatar: NetId,
    pub spawn: QPos,
    pub tick: u64,
    pub tick_hz: u16,
    pub protocol_hash: u64,
    /// World rectangle `[min_x, min_z, max_x, max_z]` in metres.
    pub bounds: [f32; 4],
    pub max_speed_mps: f32,
    pub aoi_radius_m: f32,
}

/// Why the shard is closing a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Encode, Decode)]
pub enum ErrorCode {
    /// Bytes that did not decode (garbage, truncated, oversize).
    BadMessage,
    /// The peer speaks another protocol version.
    WrongVersion,
    /// The registries differ (component set or message schema).
    ProtocolMismatch,
    /// A message that is valid but not allowed now (e.g. a second `Hello`).
    Unexpected,
    ServerFull,
    HelloTimeout,
    ShuttingDown,
    /// The client did not read its control stream fast enough; the driver closed it to keep
    /// memory bounded.
    TooSlow,
}

impl ErrorCode {
    /// QUIC application close code for this reason.
    pub const fn close_code(self) -> u32 {
        match self {
            Self::BadMessage => 1,
            Self::WrongVersion => 2,
            Self::ProtocolMismatch => 3,
            Self::Unexpected => 4,
            Self::ServerFull => 5,
            Self::HelloTimeout => 6,
            Self::ShuttingDown => 7,
            Self::TooSlow => 8,
        }
    }

    /// The reason behind a QUIC application close code, if it is one of ours.
    pub fn from_close_code(code: u64) -> Option<Self> {
        [
            Self::BadMessage,
            Self::WrongVersion,
            Self::ProtocolMismatch,
            Self::Unexpected,
            Self::ServerFull,
            Self::HelloTimeout,
            Self::ShuttingDown,
            Self::TooSlow,
        ]
        .into_iter()
        .find(|c| u64::from(c.close_code()) == code)
    }

    /// Snake-case name used in logs and bot reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadMessage => "bad_message",
            Self::WrongVersion => "wrong_version",
            Self::ProtocolMismatch => "protocol_mismatch",
            Self::Unexpected => "unexpected",
            Self::ServerFull => "server_full",
            Self::HelloTimeout => "hello_timeout",
            Self::ShuttingDown => "shutting_down",
            Self::TooSlow => "too_slow",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub struct ErrorMsg {
    pub code: ErrorCode,
    pub detail: String,
}

/// Shard → client as a datagram.
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub enum ServerDatagram {
    Snapshot(SnapshotPart),
}

/// One part of the snapshot for `tick`. A snapshot too big for one datagram is split into
/// `parts` parts; the client applies it once all parts of that tick arrived.
///
/// Entities unchanged since the baseline snapshot (one the client acknowledged, `baseline_age`
/// ticks ago) are omitted; `baseline_age == 0` means "no baseline": the part lists every visible
/// entity in full. The header is kept small on purpose: at a few entities in view it is most of
/// the datagram.
#[derive(Clone, Debug, Default, PartialEq, Encode, Decode)]
pub struct SnapshotPart {
    pub tick: u64,
    /// `tick - baseline tick`, or 0 for none. Baselines are at most
    /// [`limits::SNAPSHOT_HISTORY_TICKS`] old, so a byte is enough.
    pub baseline_age: u8,
    pub part: u8,
    pub parts: u8,
    /// Newest input sequence number of this client the shard had applied at `tick`.
    pub last_input_seq: u32,
    /// Entities in `moved` are named by their index in the baseline's sorted id list, which both
    /// sides hold: `moved[0]` is at `index_base + moved[0].index_gap`, and each next one at the
    /// previous index `+ 1 + index_gap`. When most entities move every gap is 0, which `bitcode`
    /// packs into almost nothing.
    pub index_base: u32,
    pub moved: Vec<Moved>,
    /// Spawns, component changes and removals: absent from most steady-state parts, where they
    /// then cost one bit instead of three list lengths.
    pub rare: Option<RareUpdates>,
}

/// The less frequent kinds of snapshot entries.
#[derive(Clone, Debug, Default, PartialEq, Encode, Decode)]
pub struct RareUpdates {
    /// Entities new to this client, or whose move did not fit a delta: full state.
    pub spawned: Vec<Spawned>,
    /// Entities whose replicated components changed (position handled by `moved`).
    pub changed: Vec<Changed>,
    /// Entities that left this client's view or were despawned.
    pub removed: Vec<NetId>,
}

/// A position change against the baseline, in quantised units (centimetres).
#[derive(Clone, Copy, Debug, PartialEq, Encode, Decode)]
pub struct Moved {
    /// Baseline entries skipped since the previous moved entity (see `SnapshotPart::index_base`).
    pub index_gap: u32,
    pub delta: [i16; 3],
}

#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub struct Spawned {
    pub id: NetId,
    pub pos: QPos,
    pub components: Vec<ComponentBlob>,
}

#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub struct Changed {
    pub id: NetId,
    pub components: Vec<ComponentBlob>,
}

/// One replicated component: its registry id and its `bitcode` bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Encode, Decode)]
pub struct ComponentBlob {
    pub kind: u8,
    pub bytes: Vec<u8>,
}

impl SnapshotPart {
    /// The baseline's tick, 0 for none.
    pub fn baseline(&self) -> u64 {
        if self.baseline_age == 0 {
            0
        } else {
            self.tick.saturating_sub(u64::from(self.baseline_age))
        }
    }

    pub fn spawned(&self) -> &[Spawned] {
        self.rare.as_ref().map_or(&[], |r| &r.spawned)
    }

    pub fn changed(&self) -> &[Changed] {
        self.rare.as_ref().map_or(&[], |r| &r.changed)
    }

    pub fn removed(&self) -> &[NetId] {
        self.rare.as_ref().map_or(&[], |r| &r.removed)
    }

    /// Entity updates carried by this part (what `bytes_per_entity_update` divides by).
    pub fn entity_updates(&self) -> usize {
        self.moved.len() + self.spawned().len() + self.changed().len()
    }
}

/// Shard → shard, on the link between two neighbours. Everything that depends on who owns what
/// carries the cell-map epoch it was sent under; a receiver on another epoch drops it.
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub enum ShardMessage {
    /// Create or refresh the read-only proxy of an entity the sender owns.
    ProxyUpsert(ProxyState),
    /// The sender no longer mirrors this entity here (it left the border zone or was despawned).
    ProxyRemove { epoch: u64, id: NetId },
}

/// An owned entity's replicated state, as mirrored to a neighbour.
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub struct ProxyState {
    pub epoch: u64,
    pub id: NetId,
    pub pos: QPos,
    /// The owner's replication revision; `components` is sent only when it changed.
    pub rev: u32,
    pub components: Option<Vec<ComponentBlob>>,
}

impl Validate for ShardMessage {
    fn validate(&self) -> Result<(), &'static str> {
        match self {
            Self::ProxyUpsert(p) => match &p.components {
                Some(c) if c.len() > limits::COMPONENTS_PER_ENTITY_MAX => {
                    Err("too many components")
                }
                Some(c)
                    if c.iter()
                        .any(|b| b.bytes.len() > limits::COMPONENT_BYTES_MAX) =>
                {
                    Err("component payload too large")
                }
                _ => Ok(()),
            },
            Self::ProxyRemove { .. } => Ok(()),
        }
    }
}

impl Validate for ClientControl {
    fn validate(&self) -> Result<(), &'static str> {
        match self {
            Self::Hello(h) if h.name.len() > limits::PLAYER_NAME_BYTES_MAX => {
                Err("player name too long")
            }
            Self::Hello(_) => Ok(()),
        }
    }
}

impl Validate for ClientDatagram {
    fn validate(&self) -> Result<(), &'static str> {
        Ok(())
    }
}

impl Validate for ServerControl {
    fn validate(&self) -> Result<(), &'static str> {
        match self {
            Self::Error(e) if e.detail.len() > limits::ERROR_DETAIL_BYTES_MAX => {
                Err("error detail too long")
            }
            Self::Error(_) => Ok(()),
            Self::Welcome(w) => {
                let [min_x, min_z, max_x, max_z] = w.bounds;
                if !w
                    .bounds
                    .iter()
                    .all(|b| b.is_finite() && b.abs() <= limits::WORLD_EXTENT_M_MAX)
                {
                    return Err("world bounds out of range");
                }
                if max_x <= min_x || max_z <= min_z {
                    return Err("inverted world bounds");
                }
                if !(w.max_speed_mps.is_finite() && w.max_speed_mps > 0.0) {
                    return Err("max speed not positive");
                }
                if !(w.aoi_radius_m.is_finite() && w.aoi_radius_m > 0.0) {
                    return Err("AOI radius not positive");
                }
                if w.tick_hz == 0 || u32::from(w.tick_hz) > limits::TICK_HZ_MAX {
                    return Err("tick rate out of range");
                }
                Ok(())
            }
        }
    }
}

impl Validate for ServerDatagram {
    fn validate(&self) -> Result<(), &'static str> {
        let Self::Snapshot(s) = self;
        if s.parts == 0 || usize::from(s.parts) > limits::SNAPSHOT_PARTS_MAX || s.part >= s.parts {
            return Err("bad snapshot part numbering");
        }
        if u64::from(s.baseline_age) > s.tick {
            return Err("baseline before tick 0");
        }
        if s.moved.len() + s.spawned().len() + s.changed().len() + s.removed().len()
            > limits::SNAPSHOT_PART_ENTRIES_MAX
        {
            return Err("too many snapshot entries");
        }
        let blobs_ok = |c: &[ComponentBlob]| {
            c.len() <= limits::COMPONENTS_PER_ENTITY_MAX
                && c.iter()
                    .all(|b| b.bytes.len() <= limits::COMPONENT_BYTES_MAX)
        };
        if !s.spawned().iter().all(|e| blobs_ok(&e.components))
            || !s.changed().iter().all(|e| blobs_ok(&e.components))
        {
            return Err("component payload over limits");
        }
        Ok(())
    }
}
