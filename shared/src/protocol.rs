//! Client ↔ shard messages, one enum per channel so a message can only arrive where it belongs.
//!
//! | channel | client → shard | shard → client |
//! |---|---|---|
//! | reliable control stream | [`ClientControl`] (`Hello`, `Command`, `Say`) | [`ServerControl`] (`Welcome`, `Error`, `Redirect`, `CellMap`, `Message`, `Queued`, `Prepare`, `Resume`) |
//! | unreliable datagrams | [`ClientDatagram`] (`Input`) | [`ServerDatagram`] (snapshot parts) |
//!
//! Bytes are produced and checked only by [`crate::codec`]; every type here implements
//! [`Validate`] so the codec rejects a well-formed but oversized message before anything uses it.

use crate::limits;
use crate::quant::QPos;
use crate::{NetId, ShardId};
use bitcode::{Decode, Encode};
use std::sync::Arc;

/// Bumped on every incompatible change to a type in this module.
pub const PROTOCOL_VERSION: u16 = 5;

/// Semantic checks the codec runs after decoding (lengths, ranges).
pub trait Validate {
    fn validate(&self) -> Result<(), &'static str>;
}

/// Client → shard on the control stream.
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub enum ClientControl {
    /// First message on a connection; anything else first closes it.
    Hello(Hello),
    /// A game command the client's player sends (attack, pick up, use...): one of the commands
    /// the game registered as sendable by clients. It always acts as the client's own avatar.
    Command(ClientCommand),
    /// A chat line: to one player (by account) wherever they play, or to everyone.
    Say(Say),
}

/// A client's game command: `kind` indexes the game's client-sendable commands (in registration
/// order, see [`crate::registry::ProtocolRegistry::client_commands`]), `bytes` is its `bitcode`.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct ClientCommand {
    pub kind: u8,
    pub bytes: Vec<u8>,
}

/// A chat line from a client: `to` an account, or everyone (`None`).
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Say {
    pub to: Option<String>,
    pub text: String,
}

#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub struct Hello {
    /// [`crate::registry::ProtocolRegistry::hash`] of the client's build; must match the shard's.
    pub protocol_hash: u64,
    /// The player's name on a server that takes logins without tickets (`[login]` with no keys:
    /// development only). With login keys configured the name comes from the ticket and this is
    /// ignored.
    pub name: String,
    /// A login ticket signed by the game's account service ([`crate::ticket`]): which account
    /// this is and where the game wants it to start. Required when the server has login keys.
    pub ticket: Option<Vec<u8>>,
    /// A redirect token from another shard of the cluster ([`crate::token`]): bind to the avatar
    /// it names (after a handoff) or spawn where it says (a login that came through another shard).
    pub token: Option<Vec<u8>>,
    /// A resume ticket ([`crate::resume`]) from the client's last shard, which it lost: bind to
    /// its avatar, wherever the cluster now keeps it (this shard redirects there). Taken only
    /// without `token`; `ticket` is not needed with it.
    pub resume: Option<Vec<u8>>,
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
    /// Your avatar now lives on another shard (or your login belongs there): connect to `addr`
    /// with `token` in `Hello`, then close this connection. Until then this shard keeps sending
    /// snapshots and forwards your inputs, so there is no gap.
    Redirect(Redirect),
    /// Which shard owns which part of the world, sent after `Welcome` (empty when the map has
    /// more than [`limits::CELL_MAP_LEAVES_TO_CLIENTS_MAX`] leaves). For debug views and for load
    /// testers that walk bots across borders.
    CellMap(CellMapView),
    /// A chat line or a game's message to this player: a tell (to this account) or a shout.
    Message(PlayerMessage),
    /// Every shard is at its client cap: this login waits for room. Sent when it starts waiting
    /// and again whenever its place moves; the login then goes on as any other (`Welcome` or
    /// `Redirect`), or ends with an `Error` (`no_room`).
    Queued(QueuePlace),
    /// Your avatar is being offered to another shard: a [`Redirect`] there may follow within a
    /// tick or two. A client may open its QUIC connection to `addr` now, so that the handshake is
    /// done when the `Redirect` comes and only its `Hello` (with the token) is left to send.
    /// Nothing may follow (the shard can refuse the avatar); a connection that sends no `Hello`
    /// is closed by that shard after `limits::HELLO_TIMEOUT_MS`. A client may ignore it.
    Prepare(Prepare),
    /// How to come back if this shard is lost: a resume ticket for the avatar this client plays,
    /// and other shards to present it to. Sent with every `Welcome` and refreshed every
    /// [`crate::resume::RESUME_TICKET_REFRESH_MS`]; keep the newest.
    Resume(Resume),
}

/// See [`ServerControl::Resume`].
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Resume {
    /// The shard that sent it (the one to skip when it is the one lost).
    pub shard: ShardId,
    /// Opaque to the client: present it in [`Hello::resume`].
    pub ticket: Vec<u8>,
    /// Other live shards and their client addresses (`host:port`; empty where the transport
    /// routes by shard id), at most [`limits::RESUME_SHARDS_MAX`]: any of them takes the ticket.
    pub shards: Vec<(ShardId, String)>,
}

/// Where a [`ServerControl::Redirect`] may soon send the client.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Prepare {
    pub shard: ShardId,
    /// The shard's client address (`host:port`), as a `Redirect` would carry it.
    pub addr: String,
}

/// A waiting login's place in the login queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub struct QueuePlace {
    /// 1: the next login to get a seat.
    pub position: u32,
    /// Logins waiting when this was sent, this one included.
    pub waiting: u32,
}

/// A message delivered to a player.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct PlayerMessage {
    /// Who sent it: an account, or the game (empty).
    pub from: String,
    pub text: String,
    pub scope: MessageScope,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub enum MessageScope {
    /// To this one account.
    Tell,
    /// To everyone in the world.
    Shout,
}

#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub struct CellMapView {
    pub epoch: u64,
    pub leaves: Vec<LeafView>,
}

/// One leaf of the cell map: its rectangle `[min_x, min_z, max_x, max_z]` and owner.
#[derive(Clone, Copy, Debug, PartialEq, Encode, Decode)]
pub struct LeafView {
    pub rect: [f32; 4],
    pub shard: ShardId,
}

#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub struct Redirect {
    pub shard: ShardId,
    /// The target's client address (`host:port`); empty where the transport routes by shard id.
    pub addr: String,
    pub token: Vec<u8>,
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
    /// The redirect token in `Hello` did not verify, expired, or names nothing to take over.
    BadToken,
    /// The login ticket is missing, forged, expired or signed by a key this server does not know.
    BadTicket,
    /// The account is already playing and the server refuses a second session.
    AccountInUse,
    /// The account logged in again elsewhere and that session took over from this one.
    SessionTakenOver,
    /// No shard can take this player: every one is at its client cap and the login queue is
    /// full, or no shard takes players at all (a cap of 0, or no shard alive).
    NoRoom,
    /// The resume ticket is good but the avatar has no new owner yet (its shard is not declared
    /// dead yet, or its copy is being promoted): try again shortly, through any live shard. Also
    /// the answer to a redirect whose avatar is not on that shard (yet): resume with the ticket.
    ResumeLater,
    /// The resume ticket did not verify, expired, or its avatar exists no more: log in anew
    /// with the login ticket.
    ResumeFailed,
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
            Self::BadToken => 9,
            Self::BadTicket => 10,
            Self::AccountInUse => 11,
            Self::SessionTakenOver => 12,
            Self::NoRoom => 13,
            Self::ResumeLater => 14,
            Self::ResumeFailed => 15,
        }
    }

    /// Every code, in close-code order (metrics count closes by each, zeros included).
    pub const ALL: [Self; 15] = [
        Self::BadMessage,
        Self::WrongVersion,
        Self::ProtocolMismatch,
        Self::Unexpected,
        Self::ServerFull,
        Self::HelloTimeout,
        Self::ShuttingDown,
        Self::TooSlow,
        Self::BadToken,
        Self::BadTicket,
        Self::AccountInUse,
        Self::SessionTakenOver,
        Self::NoRoom,
        Self::ResumeLater,
        Self::ResumeFailed,
    ];

    /// The reason behind a QUIC application close code, if it is one of ours.
    pub fn from_close_code(code: u64) -> Option<Self> {
        Self::ALL
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
            Self::BadToken => "bad_token",
            Self::BadTicket => "bad_ticket",
            Self::AccountInUse => "account_in_use",
            Self::SessionTakenOver => "session_taken_over",
            Self::NoRoom => "no_room",
            Self::ResumeLater => "resume_later",
            Self::ResumeFailed => "resume_failed",
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
    /// `tick - baseline tick`, or 0 for none. A byte: the shard names no baseline older than
    /// 255 ticks (an older acknowledgement gets a full snapshot).
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
    /// Shared with the owner's cache and every other viewer's snapshot (same wire bytes as a
    /// `Vec`): building a snapshot bumps a count instead of copying the bytes.
    pub components: Arc<[ComponentBlob]>,
}

#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub struct Changed {
    pub id: NetId,
    pub components: Arc<[ComponentBlob]>,
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
    /// Handoff step 1: the sender stopped simulating `id` and offers it, full state, to the
    /// receiver, which owns the cell at `state.pos` (under `epoch`).
    HandoffRequest(HandoffRequest),
    /// Handoff step 2: the receiver owns `id` from generation `generation` on.
    HandoffAck { id: NetId, generation: u32 },
    /// The receiver will not take `id` at `generation` (and never will: a refusal is final for that
    /// generation), so the sender resumes simulating it.
    HandoffRefuse {
        id: NetId,
        generation: u32,
        reason: RefuseReason,
    },
    /// The sender waited past its handoff timeout: "answer now, and if you have not taken it,
    /// never take it". Answered with `HandoffAck` or `HandoffRefuse { reason: Cancelled }`.
    HandoffCancel { id: NetId, generation: u32 },
    /// An input for a handed-off avatar whose client has not reached its new shard yet.
    ForwardInput { id: NetId, input: Input },
    /// A typed game command for an entity the receiver owns (or owned: it is forwarded on).
    Command(EntityCommand),
    /// Proxy traffic to the receiver, all under `epoch`: upserts (create or refresh the
    /// read-only proxy of an entity the sender owns), then removes (the sender no longer mirrors
    /// that entity here). Mirroring sends one per neighbour per tick: a header, and one `bitcode`
    /// pass that packs the columns of hundreds of entries, instead of hundreds of messages.
    ProxyBatch(ProxyBatch),
    /// Buddy replication: the sender's owned entities, for the receiver to keep as a passive
    /// replica (never simulated, never shown) and to promote if the sender dies and the master
    /// gives the receiver its cells.
    Replica(ReplicaBatch),
    /// The buddy holds the sender's replica as of the sender's tick `tick` (its lag, and what
    /// the sender reports to the master as its buddy).
    ReplicaAck { tick: u64 },
    /// Failover: the sender held `id` in a handoff with `dead` (an attempt at `generation`
    /// open to it, or handed to it and perhaps not replicated yet), and the receiver adopted
    /// `dead`'s cells in the map of `epoch`. Answered once the receiver holds that map:
    /// `HandoffAck` (the receiver, or an owner after it, holds `id` at that generation or
    /// newer: the sender drops its copy) or `HandoffRefuse { reason: Cancelled }` (nobody does:
    /// the sender simulates its copy again).
    Orphan {
        dead: ShardId,
        epoch: u64,
        id: NetId,
        generation: u32,
    },
    /// Failover: the entities the sender took from `dead` by handoff (`(id, generation)`), for
    /// its adopter, which promotes none of them from `dead`'s replica (that may not have heard
    /// of the handoff). Every member sends its list, `last` on its final part, empty or not: the
    /// adopter promotes once all did.
    Taken {
        dead: ShardId,
        ids: Vec<(NetId, u32)>,
        last: bool,
    },
}

/// Entries in one [`ShardMessage::Taken`].
pub const TAKEN_IDS_MAX: usize = 2_048;

/// Entries in one [`ProxyBatch`], upserts and removes together. A sender splits a tick's traffic
/// into several batches past this (or past `limits::SHARD_MESSAGE_BYTES_MAX` encoded), so it
/// bounds the receiver's work per message, not the traffic. A proxy update is at least a few
/// bytes, so the byte limit alone allows a few thousand; this keeps the same order of magnitude.
/// (Beside the one message it bounds; `limits.rs`, which holds every other bound, is its natural
/// home, with a `const` assert tying it to `LINK_BATCH_MESSAGES_MAX`.)
pub const PROXY_BATCH_ENTRIES_MAX: usize = 4_096;

/// One tick's proxy upserts and removes for one neighbour, under one epoch.
#[derive(Clone, Debug, Default, PartialEq, Encode, Decode)]
pub struct ProxyBatch {
    pub epoch: u64,
    /// Applied first, in order: create or refresh each proxy.
    pub upserts: Vec<ProxyUpdate>,
    /// Then these, in order: `(id, generation)`, the proxy of `id` to drop. Applies only to a
    /// proxy of this sender at this ownership generation.
    pub removes: Vec<(NetId, u32)>,
}

/// An owned entity's replicated state, as mirrored to a neighbour (under its batch's epoch).
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub struct ProxyUpdate {
    pub id: NetId,
    /// Ownership generation: grows by one on every handoff, so a proxy update from a former
    /// owner that arrives after one from the new owner is recognised as stale.
    pub generation: u32,
    pub pos: QPos,
    /// The owner's replication revision; `components` is sent only when it changed.
    pub rev: u32,
    pub components: Option<Arc<[ComponentBlob]>>,
}

impl ProxyBatch {
    /// Upserts and removes together.
    pub fn len(&self) -> usize {
        self.upserts.len() + self.removes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.removes.is_empty()
    }
}

/// Entries in one [`ReplicaBatch`] (a tick's replication is split over several past this).
pub const REPLICA_BATCH_ENTRIES_MAX: usize = 512;

/// One part of a tick's buddy replication. A `reset` part starts a full snapshot: the receiver
/// forgets every replica it held of the sender first.
#[derive(Clone, Debug, Default, PartialEq, Encode, Decode)]
pub struct ReplicaBatch {
    /// The sender's tick.
    pub tick: u64,
    pub reset: bool,
    /// Entities new or changed since the previous batch (components and migrating state only
    /// when they changed).
    pub upserts: Vec<ReplicaEntity>,
    /// Entities the sender no longer owns: `(id, generation)`, the generation its next owner
    /// took it at (`u32::MAX` when it was despawned).
    pub removes: Vec<(NetId, u32)>,
}

/// An owned entity's migrating state, as replicated to the buddy.
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub struct ReplicaEntity {
    pub id: NetId,
    pub generation: u32,
    pub pos: [f32; 3],
    pub move_target: [f32; 3],
    pub speed_mps: f32,
    pub rev: u32,
    /// Every replicated component, when they changed since the last batch (`None`: as before).
    pub components: Option<Vec<ComponentBlob>>,
    /// Every registered server-only component, when any changed (`None`: as before).
    pub migrating: Option<Vec<ComponentBlob>>,
    pub player: Option<PlayerHandoff>,
    /// Frozen in a handoff: to whom, at which attempt.
    pub transit: Option<(ShardId, u32)>,
}

/// One frame on a shard-to-shard link (after the link's own membership handshake).
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub enum LinkMessage {
    /// Joiner → master: a new shard of this cluster.
    Join(JoinRequest),
    /// Master → joiner: its shard id and the master's own (the map follows once every expected
    /// shard has joined).
    Joined { id: ShardId, master: ShardId },
    /// Master → every shard: the cell map and the members.
    Map(MapPush),
    /// A member that does not hold the master role → a joiner that asked it to join: the
    /// master's links are at `master` (join there).
    NotMaster { master: String },
    /// Between two non-master shards, first frame of the dialer: who it is.
    Peer { id: ShardId },
    /// Shard → master, every `HEARTBEAT_MS`: load and counters.
    Heartbeat(ShardLoad),
    /// Shard → master, every `limits::AUDIT_MS`: one part of the ownership report the master's
    /// cluster-wide audit reads (the `NetId`s this shard owns and holds frozen in handoffs).
    Audit(AuditPart),
    /// One tick's shard messages for the receiver, each already encoded (`ShardMessage`).
    Batch(Vec<Vec<u8>>),
    /// Shard → master: a request only the master can answer (it holds the player directory).
    ToMaster(MasterRequest),
    /// Master → shard: an answer or an order.
    FromMaster(MasterNotice),
    /// During play, between two members: one frame of their session, `frame` an encoded
    /// `LinkMessage` (never `Seq`, `Ack` or `Relink`). Numbered from 1 in each direction for as
    /// long as both are members, across links: after a dropped link is redialled the sender sends
    /// again every frame not acknowledged, and the receiver delivers each number once, in order.
    Seq { seq: u64, frame: Vec<u8> },
    /// The receiver of session frames has every one up to `received`: the sender forgets them.
    Ack { received: u64 },
    /// First frame of a redialled link, from its dialer (the larger id): who it is, the member it
    /// meant to reach (an acceptor that is not `to` refuses the link), and the last session frame
    /// it has from `to`.
    Relink {
        from: ShardId,
        to: ShardId,
        received: u64,
    },
    /// Between members, in their session: the election of a new master when the master falls
    /// silent (`cluster::election`).
    Election(ElectionMessage),
}

/// The master's election, between members (`cluster::election`): a member that has not heard
/// the master for its silence stands for the next term; a majority of the members' votes makes it
/// the master.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub enum ElectionMessage {
    /// The sender stands for master in `term`, holding the master's state as of `version`
    /// ([`Standby::version`]) and the map of `epoch`: a member with newer state refuses it.
    Candidacy { term: u64, version: u64, epoch: u64 },
    /// The answer to the candidacy for `term`.
    Vote { term: u64, granted: bool },
    /// The sender won `term` with a majority: it is the master now.
    Elected { term: u64 },
}

/// The master's state that is not in the map pushes, as every member keeps it so that any of them
/// can take the master's role over (`cluster::election`). Sent to every member as it changes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
pub struct Standby {
    /// Numbers the master's state: one more with each of these messages (a member's first one
    /// starts it, `full`), continued by a successor.
    pub version: u64,
    /// The master's term (0: the shard that formed the cluster).
    pub term: u64,
    /// Whether `seats` is the whole player directory (a member's first one), or the changes since
    /// the previous one.
    pub full: bool,
    /// Player → the shard the directory seats it on; `None`: out of the directory.
    pub seats: Vec<(String, Option<ShardId>)>,
    /// Members being drained.
    pub draining: Vec<ShardId>,
    /// Each member's buddy (the one holding its replica), as its heartbeats named it.
    pub buddies: Vec<(ShardId, ShardId)>,
    /// Cell moves under way: id, leaf, from, to. A successor aborts them.
    pub moves: Vec<(u64, crate::CellId, ShardId, ShardId)>,
    /// The id the next joiner gets (ids are never reused).
    pub next_id: u16,
    /// Seats that wait for their shard to report the player (a login granted there, a player
    /// sent on to it), at most `STANDBY_PENDING_MAX`, by name: a successor frees each unless
    /// its shard reports the player within the wait, as the old master would have.
    pub pending: Vec<(String, ShardId)>,
}

/// What a shard asks of the master.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum MasterRequest {
    /// A login for `account` is waiting on this shard (as `session`, the shard's own number for
    /// it): may it play, and where? `want` is the shard that owns its spawn point. Answered with
    /// [`MasterNotice::Claim`] (again while it waits in the login queue, as its place moves).
    Claim {
        account: String,
        session: u64,
        want: ShardId,
    },
    /// The login `session` of `account` on this shard ended before it played: take it out of the
    /// login queue, and free the seat it was given if no shard has reported it since.
    Release { account: String, session: u64 },
    /// Deliver `msg` to the player `to`, wherever the directory has them.
    Tell { to: String, msg: PlayerMessage },
    /// Deliver `msg` to every player of the world.
    Shout(PlayerMessage),
    /// The source of cell move `id`: no entity of the cell is owned or frozen here any more;
    /// the map may flip.
    CellShipped { id: u64 },
    /// A client presented a resume ticket for `account` on this shard (as `session`): on which
    /// shard does the directory seat it? Answered with [`MasterNotice::Located`].
    Locate { account: String, session: u64 },
}

/// What the master tells a shard.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum MasterNotice {
    /// The answer to a [`MasterRequest::Claim`].
    Claim {
        account: String,
        session: u64,
        outcome: ClaimOutcome,
    },
    /// Close the session of `account` on this shard: it logged in elsewhere and took over.
    Kick { account: String },
    /// Deliver `msg` to `to` (an account on this shard), or to every client here (`None`).
    Deliver {
        to: Option<String>,
        msg: PlayerMessage,
    },
    /// A new cell map (a cell moved, split or merged; a member joined or left). A shard takes it
    /// if its epoch is newer than the one it has.
    Map(MapPush),
    /// Cell move `id`: `from` ships every entity of leaf `cell` to `to`, which takes them as if
    /// it owned the cell already; the map flips when `from` reports it shipped
    /// ([`MasterRequest::CellShipped`]). Sent to both.
    MoveCell {
        id: u64,
        cell: crate::CellId,
        from: ShardId,
        to: ShardId,
    },
    /// Cell move `id` is abandoned (the target refused or died, or it took too long): `from`
    /// keeps the cell; entities `to` took meanwhile are handed back by the usual handoff.
    MoveAborted { id: u64, cell: crate::CellId },
    /// This shard was drained: it owns no cell and no entity and has left the membership. It
    /// closes its clients and links and exits (status 0).
    Drained,
    /// The answer to heartbeat `seq`: the master heard it while this shard was a member, so the
    /// shard may simulate its cells until `lease_ms` after it sent it (its ownership lease, two
    /// thirds of the master's silence: [`limits::lease_ms_for`]; see `cluster::lease`).
    Lease { seq: u64, lease_ms: u32 },
    /// The master declared this shard dead (silent for its `[cluster] shard_silence_ms`) and
    /// gave its cells to others: it must not simulate or serve anything again. It stops;
    /// restarted, it joins as a new member.
    Fenced,
    /// The master's state for its successors ([`Standby`]; boxed: the other notices are small).
    Standby(Box<Standby>),
    /// The answer to a [`MasterRequest::Locate`]: the shard the directory seats `account` on,
    /// `None` when it seats it nowhere (it logged out, or its avatar was lost), and whether
    /// that shard reported within the last two heartbeats (`live`: not the silent shard the
    /// client lost; its client was on its way elsewhere).
    Located {
        account: String,
        session: u64,
        shard: Option<ShardId>,
        live: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub enum ClaimOutcome {
    /// Nobody plays this account: play on `shard` (the one the login wanted while it has room).
    Granted { shard: ShardId },
    /// It plays elsewhere and the cluster's rule takes the old session over: play on `shard`
    /// (the old one is being kicked).
    TookOver { shard: ShardId },
    /// It plays elsewhere and the rule refuses a second session.
    InUse,
    /// Every shard is at its cap: the login waits at this place (sent again as it moves up).
    Queued(QueuePlace),
    /// No shard can take it (see [`ErrorCode::NoRoom`]).
    NoRoom(NoRoomWhy),
}

/// Why no shard can take a login.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub enum NoRoomWhy {
    /// Every shard is at its cap and `max` logins wait already.
    QueueFull { max: u32 },
    /// No live shard takes players (`clients_per_shard_max = 0`, or none is alive).
    NoShard,
}

impl std::fmt::Display for NoRoomWhy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::QueueFull { max } => write!(
                f,
                "every shard is at its client cap and the login queue is full ({max} waiting)"
            ),
            Self::NoShard => f.write_str("no shard of this world takes players now"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub struct JoinRequest {
    /// Where the joiner's clients connect (`host:port`).
    pub client_addr: String,
    /// Where the joiner's links are accepted (`host:port`).
    pub link_addr: String,
    /// Where the joiner serves `/metrics` (`host:port`; empty when it does not).
    pub metrics_addr: String,
    /// Where the joiner serves the HTTP API (`host:port`; empty when it does not): the cluster's
    /// API is there while it holds the master role.
    pub http_addr: String,
    /// Capacity weight: its share of the cells is proportional to it.
    pub weight: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct MapPush {
    pub epoch: u64,
    pub leaves: Vec<(crate::CellId, ShardId)>,
    pub members: Vec<MemberInfo>,
    /// Members declared dead (newest last, at most `limits::SHARDS_MAX`), each with the member
    /// that adopted its cells and promoted its replica, if one did. A member that left without
    /// an entry here was drained.
    pub dead: Vec<(ShardId, Option<ShardId>)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct MemberInfo {
    pub id: ShardId,
    pub client_addr: String,
    pub link_addr: String,
    pub metrics_addr: String,
    /// Where it serves the HTTP API (empty: nowhere).
    pub http_addr: String,
    pub weight: u32,
}

/// What a shard tells the master about itself: counts as of now, and its load over the report
/// window, the time since its previous heartbeat (`window_ms`, about
/// [`limits::HEARTBEAT_MS`]). Every `f32` is finite and non-negative (a heartbeat with any other
/// is refused), and the shares of one tick thread are at most 1.
#[derive(Clone, Debug, Default, PartialEq, Encode, Decode)]
pub struct ShardLoad {
    /// Numbers this shard's heartbeats, from 1 (0: not numbered, as in a test). The master's
    /// [`MasterNotice::Lease`] answer echoes it.
    pub seq: u64,
    /// The newest heartbeat the master's [`MasterNotice::Lease`] answered, as this shard heard
    /// it: the master holds its role while a majority has heard it recently
    /// (`cluster::election`).
    pub lease_seq: u64,
    /// The master's term this shard follows.
    pub term: u64,
    /// [`members_digest`] of the members this shard's last map push named: the master knows
    /// from it which membership a silent member would count votes in (`cluster::election`).
    pub members_digest: u64,
    pub tick: u64,
    pub owned_entities: u32,
    pub in_transit: u32,
    pub proxies: u32,
    pub clients: u32,
    /// Wall time the window's figures cover, milliseconds.
    pub window_ms: u32,
    /// Ticks run in the window.
    pub ticks: u32,
    /// CPU time of the tick thread over the window (the schedule and the transports' work it
    /// does between ticks, never its sleep), milliseconds.
    pub tick_cpu_ms: f32,
    /// `tick_cpu_ms / window_ms`: the share of one core the tick thread used, 0..=1. The
    /// balancer's main input: CPU time is what a noisy machine distorts least (a tick that
    /// waited for a core takes longer on the wall clock, not on the CPU clock).
    pub tick_cpu_share: f32,
    /// Median and 99th percentile of the schedule's wall time per tick over the window, ms.
    pub tick_ms_p50: f32,
    pub tick_ms_p99: f32,
    /// Ticks in the window whose schedule took longer than the tick period.
    pub tick_overruns: u32,
    /// The window's wall time over the time its ticks were due to take (`ticks` × the tick
    /// period): 1 on schedule, 2 when the shard ticked at half its rate; 0 when not measured.
    /// A shard that falls behind would need this much more CPU to keep its rate, which its CPU
    /// shares, bounded by the cores it got, cannot show ([`ShardLoad::cpu_demand`]).
    pub tick_slowdown: f32,
    pub handoffs_out: u64,
    pub handoffs_in: u64,
    pub handoff_transit_ms_p99: f32,
    /// Payload bytes sent per second over the window to clients (datagrams and control
    /// messages) and to other shards (link frames), without QUIC's overhead.
    pub client_bytes_out_per_s: u64,
    pub link_bytes_out_per_s: u64,
    /// Resident memory of the shard process at the end of the window, bytes.
    pub rss_bytes: u64,
    /// CPU time of the whole process (every thread: tick, network, HTTP) over the window,
    /// divided by the window's wall time: cores, so it may exceed 1.
    pub process_cpu_share: f32,
    /// Players who logged in (or arrived by redirect) / left since the last heartbeat.
    pub players_arrived: Vec<String>,
    pub players_left: Vec<String>,
    /// Players this shard sent on to another shard whose connection here has ended since the
    /// last heartbeat: on their way, or gone. The master keeps their seat until their new shard
    /// reports them, or for `limits::REDIRECT_WAIT_MS` (their avatar waits that long there).
    pub players_sent_on: Vec<String>,
    /// Entities and clients per owned base cell (only cells with any), at most
    /// [`limits::CELL_LOADS_PER_HEARTBEAT_MAX`] of the busiest.
    pub cells: Vec<CellLoad>,
    /// The member that holds this shard's replica (acknowledged), which adopts its cells if
    /// it dies; `None` while it has none.
    pub buddy: Option<ShardId>,
    /// Ticks between this shard's newest tick and the newest its buddy acknowledged.
    pub replica_lag_ticks: u32,
}

/// A digest of a membership (the members' ids, in any order; FNV-1a over them sorted), as a
/// heartbeat reports it ([`ShardLoad::members_digest`]). Never 0, so a heartbeat without one
/// (0) matches no membership.
pub fn members_digest(ids: impl IntoIterator<Item = ShardId>) -> u64 {
    let mut ids: Vec<u16> = ids.into_iter().map(|id| id.0).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for id in ids {
        for byte in id.to_le_bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash.max(1)
}

impl ShardLoad {
    /// The CPU the shard would need to tick at its full rate, in cores: the busier of its tick
    /// thread and its whole process (at hundreds of clients the network threads, encrypting
    /// snapshots, cost more than the tick), times how far its ticks fell behind
    /// (`tick_slowdown`, taken as at least 1 and at most [`limits::TICK_SLOWDOWN_MAX`]).
    ///
    /// The measured shares alone are censored: a tick thread that needs two cores' worth
    /// reports one core, so a balancer reading them would take a saturated shard's cells for
    /// half what they cost and overload whoever receives them.
    pub fn cpu_demand(&self) -> f32 {
        let slowdown = if self.tick_slowdown.is_finite() {
            self.tick_slowdown.clamp(1.0, limits::TICK_SLOWDOWN_MAX)
        } else {
            1.0
        };
        self.tick_cpu_share.max(self.process_cpu_share) * slowdown
    }

    /// Whether every measured figure is one the master can add and compare: finite and
    /// non-negative, shares of the tick thread at most 1. A NaN would poison every sum and
    /// comparison the balancer makes with it.
    pub fn figures_ok(&self) -> bool {
        let amount = |v: f32| v.is_finite() && v >= 0.0;
        let share = |v: f32| amount(v) && v <= 1.0;
        [
            self.tick_cpu_ms,
            self.tick_ms_p50,
            self.tick_ms_p99,
            self.handoff_transit_ms_p99,
            self.process_cpu_share,
            self.tick_slowdown,
        ]
        .into_iter()
        .all(amount)
            && share(self.tick_cpu_share)
            && self.cells.iter().all(|c| share(c.tick_share))
    }
}

/// One part of a shard's ownership report for the master's audit (`cluster::audit`): what it
/// owned and what it held frozen in handoffs when it took the report, between two ticks. A
/// report whose lists pass [`limits::AUDIT_PART_ENTRIES_MAX`] entries goes in several parts, sent
/// together and in order (a link session delivers them so), each list cut in ascending order:
/// the master keeps a report only once it has every part.
#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
pub struct AuditPart {
    /// Numbers this shard's reports, from 1: a part of another report drops one half received.
    pub report: u64,
    /// `part` of `parts` (0-based), at most [`limits::AUDIT_PARTS_MAX`] parts.
    pub part: u16,
    pub parts: u16,
    /// The shard's tick, map epoch and clock (Unix milliseconds in production, the simulated
    /// time in tests) when it took the report: its state held then and until its next tick.
    pub tick: u64,
    pub epoch: u64,
    pub taken_ms: u64,
    /// Owned here (`Owned`), with each entity's ownership generation.
    pub owned: IdList,
    /// Frozen here in a handoff (`InTransit`), with the attempt's number: not owners.
    pub in_transit: IdList,
}

/// A shard's whole ownership report, before it is cut into [`AuditPart`]s and after the master
/// put them together: each list sorted by id, each id once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OwnershipReport {
    pub tick: u64,
    pub epoch: u64,
    pub taken_ms: u64,
    /// `(id, its ownership generation)` of every entity owned.
    pub owned: Vec<(NetId, u32)>,
    /// `(id, the attempt's number)` of every entity frozen in a handoff.
    pub in_transit: Vec<(NetId, u32)>,
}

impl OwnershipReport {
    /// The parts of this report as report number `report`: the owned entries, then the frozen
    /// ones, [`limits::AUDIT_PART_ENTRIES_MAX`] a part, in order (one part when it has none).
    /// Past [`limits::AUDIT_PARTS_MAX`] parts (more than a shard may hold) the rest is left
    /// out: the master then sees fewer entities, never a second owner.
    pub fn parts(&self, report: u64) -> Vec<AuditPart> {
        let per = limits::AUDIT_PART_ENTRIES_MAX;
        let total = self.owned.len() + self.in_transit.len();
        let parts = total.div_ceil(per).clamp(1, limits::AUDIT_PARTS_MAX);
        let owned_len = self.owned.len();
        (0..parts)
            .map(|k| {
                let (from, to) = (k * per, ((k + 1) * per).min(total));
                let owned = &self.owned[from.min(owned_len)..to.min(owned_len)];
                let frozen =
                    &self.in_transit[from.saturating_sub(owned_len)..to.saturating_sub(owned_len)];
                AuditPart {
                    report,
                    part: k as u16,
                    parts: parts as u16,
                    tick: self.tick,
                    epoch: self.epoch,
                    taken_ms: self.taken_ms,
                    owned: IdList::from_sorted(owned),
                    in_transit: IdList::from_sorted(frozen),
                }
            })
            .collect()
    }
}

/// A sorted list of distinct `(NetId, u32)` pairs, compact on the wire: ids grouped by the shard
/// that minted them (the top 16 bits), each group's counters as gaps. Shards mint ids from 1
/// upwards, so an owned set is mostly runs of small gaps: `bitcode` packs a column by its
/// largest value, so the gaps and generations usually take a byte each (or less), where raw
/// ids would take eight (a single jump between two minting shards in one column would make
/// every entry eight bytes).
#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
pub struct IdList {
    /// Per minting shard, ascending: its number and how many ids of it follow in `deltas`.
    pub groups: Vec<(u16, u32)>,
    /// Per id: the first of a group its counter (the id's low 48 bits), each next one its gap
    /// from the one before (at least 1).
    pub deltas: Vec<u64>,
    /// Per id: the number paired with it (a generation).
    pub values: Vec<u32>,
}

impl IdList {
    /// `entries`, which must be sorted by id with no id twice (a debug assertion says so).
    pub fn from_sorted(entries: &[(NetId, u32)]) -> Self {
        debug_assert!(
            entries.windows(2).all(|w| w[0].0 < w[1].0),
            "sorted, distinct"
        );
        let mut list = Self {
            groups: Vec::new(),
            deltas: Vec::with_capacity(entries.len()),
            values: Vec::with_capacity(entries.len()),
        };
        let mut prev: Option<NetId> = None;
        for &(id, value) in entries {
            let (group, counter) = (id.origin().0, id.0 & NetId::COUNTER_MASK);
            match list.groups.last_mut() {
                Some((g, n)) if *g == group => {
                    *n += 1;
                    let before = prev.map_or(0, |p| p.0 & NetId::COUNTER_MASK);
                    list.deltas.push(counter - before);
                }
                _ => {
                    list.groups.push((group, 1));
                    list.deltas.push(counter);
                }
            }
            list.values.push(value);
            prev = Some(id);
        }
        list
    }

    /// Entries in the list.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The pairs, in ascending id order; why not when the list is malformed (counts that do not
    /// add up, groups out of order, a gap of 0, a counter past 48 bits).
    pub fn entries(&self) -> Result<Vec<(NetId, u32)>, &'static str> {
        let mut out = Vec::with_capacity(self.values.len());
        self.walk(|id, v| out.push((id, v)))?;
        Ok(out)
    }

    /// Calls `f` with each pair in ascending id order, or says why the list is malformed (the
    /// decoder's check, which allocates nothing).
    pub fn walk(&self, mut f: impl FnMut(NetId, u32)) -> Result<(), &'static str> {
        let counted: u64 = self.groups.iter().map(|(_, n)| u64::from(*n)).sum();
        if counted != self.deltas.len() as u64 || self.deltas.len() != self.values.len() {
            return Err("id list lengths disagree");
        }
        if self.groups.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err("id list groups out of order");
        }
        let mut pairs = self.deltas.iter().zip(&self.values);
        for &(group, n) in &self.groups {
            let mut counter = 0u64;
            for (i, (&d, &v)) in (&mut pairs).take(n as usize).enumerate() {
                if i > 0 && d == 0 {
                    return Err("id listed twice");
                }
                counter = counter.checked_add(d).ok_or("id counter past 48 bits")?;
                let id = NetId::new(ShardId(group), counter).ok_or("id counter past 48 bits")?;
                f(id, v);
            }
        }
        Ok(())
    }
}

/// What one cell holds.
#[derive(Clone, Copy, Debug, PartialEq, Encode, Decode)]
pub struct CellLoad {
    pub cell: crate::CellId,
    pub entities: u32,
    pub clients: u32,
    /// Estimated share of the reporting shard's tick this cell costs, 0..=1: the shard's
    /// measured tick CPU apportioned over its cells by a cost model of entities and clients
    /// (`zonescaler_server::core::load`). The shares of one report add up to at most 1.
    pub tick_share: f32,
}

impl Validate for LinkMessage {
    fn validate(&self) -> Result<(), &'static str> {
        let addr_ok = |a: &str| a.len() <= limits::ADDR_BYTES_MAX;
        match self {
            Self::Join(j)
                if !addr_ok(&j.client_addr)
                    || !addr_ok(&j.link_addr)
                    || !addr_ok(&j.metrics_addr) =>
            {
                Err("address too long")
            }
            Self::Map(m) | Self::FromMaster(MasterNotice::Map(m))
                if m.members.len() > limits::SHARDS_MAX =>
            {
                Err("too many members")
            }
            Self::Map(m) | Self::FromMaster(MasterNotice::Map(m))
                if m.leaves.len() > limits::BASE_CELLS_MAX =>
            {
                Err("too many leaves")
            }
            Self::Map(m) | Self::FromMaster(MasterNotice::Map(m))
                if m.members.iter().any(|x| {
                    !addr_ok(&x.client_addr) || !addr_ok(&x.link_addr) || !addr_ok(&x.metrics_addr)
                }) =>
            {
                Err("address too long")
            }
            Self::Heartbeat(h)
                if h.players_arrived.len() + h.players_left.len() + h.players_sent_on.len()
                    > limits::CLIENTS_PER_SHARD_MAX * 3
                    || h.players_arrived
                        .iter()
                        .chain(&h.players_left)
                        .chain(&h.players_sent_on)
                        .any(|n| n.len() > limits::PLAYER_NAME_BYTES_MAX) =>
            {
                Err("player list over limits")
            }
            Self::Heartbeat(h) if h.cells.len() > limits::CELL_LOADS_PER_HEARTBEAT_MAX => {
                Err("cell loads over limits")
            }
            Self::Heartbeat(h) if !h.figures_ok() => {
                Err("load figure not finite, negative, or a share over 1")
            }
            Self::Audit(a)
                if a.parts == 0
                    || a.part >= a.parts
                    || usize::from(a.parts) > limits::AUDIT_PARTS_MAX
                    || a.owned.len() + a.in_transit.len() > limits::AUDIT_PART_ENTRIES_MAX =>
            {
                Err("audit part over limits")
            }
            Self::Audit(a) => a.owned.walk(|_, _| {}).and(a.in_transit.walk(|_, _| {})),
            Self::Batch(b)
                if b.len() > limits::LINK_BATCH_MESSAGES_MAX
                    || b.iter().any(|m| m.len() > limits::SHARD_MESSAGE_BYTES_MAX) =>
            {
                Err("batch over limits")
            }
            Self::ToMaster(MasterRequest::Claim { account, .. })
            | Self::ToMaster(MasterRequest::Release { account, .. })
            | Self::FromMaster(MasterNotice::Claim { account, .. })
            | Self::FromMaster(MasterNotice::Kick { account })
            | Self::ToMaster(MasterRequest::Locate { account, .. })
            | Self::FromMaster(MasterNotice::Located { account, .. })
                if account.len() > limits::PLAYER_NAME_BYTES_MAX =>
            {
                Err("account name too long")
            }
            Self::ToMaster(MasterRequest::Tell { to, msg })
                if to.len() > limits::PLAYER_NAME_BYTES_MAX || !msg.within_limits() =>
            {
                Err("message over limits")
            }
            Self::ToMaster(MasterRequest::Shout(msg))
            | Self::FromMaster(MasterNotice::Deliver { msg, .. })
                if !msg.within_limits() =>
            {
                Err("message over limits")
            }
            Self::FromMaster(MasterNotice::Deliver { to: Some(to), .. })
                if to.len() > limits::PLAYER_NAME_BYTES_MAX =>
            {
                Err("account name too long")
            }
            _ => Ok(()),
        }
    }
}

/// Why a handoff was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub enum RefuseReason {
    /// The request was sent under another cell-map epoch.
    StaleEpoch,
    /// The receiver does not own the cell at the entity's position.
    NotOwner,
    /// The receiver is at its entity limit.
    Full,
    /// The sender cancelled after its timeout before the receiver took it.
    Cancelled,
    /// The receiver is moving the cell at the entity's position to another shard: try again
    /// when the new map is out.
    CellMoving,
    /// The receiver already has this entity at a newer generation, or as its own.
    Conflict,
}

/// Everything a shard needs to simulate an entity it did not create.
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub struct HandoffRequest {
    pub epoch: u64,
    pub id: NetId,
    /// The ownership generation the receiver takes it at (the sender's + 1).
    pub generation: u32,
    /// Exact position (metres), not quantised: the simulation continues from it.
    pub pos: [f32; 3],
    pub move_target: [f32; 3],
    pub speed_mps: f32,
    /// Replication revision and every replicated component's bytes.
    pub rev: u32,
    pub components: Vec<ComponentBlob>,
    /// Every server-only component the game registered with `migrate::<T>()` that the entity
    /// has (AI state, cooldowns, inventory): never sent to clients or proxies, only to the next
    /// owner.
    pub migrating: Vec<ComponentBlob>,
    /// Set when the entity is a player's avatar: its client follows with a redirect token.
    pub player: Option<PlayerHandoff>,
    /// The sender's clock when it stopped simulating (milliseconds), to measure time in transit.
    pub sent_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub struct PlayerHandoff {
    pub name: String,
    pub last_input_seq: u32,
}

/// A command addressed to an entity, applied by its owner on the owner's next tick.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct EntityCommand {
    pub target: NetId,
    /// Hops left: a command for an entity that moved on is forwarded at most this many times.
    pub hops: u8,
    /// The command's id in the game's registry (registration order of `app.command::<T>()`).
    pub kind: u8,
    /// Its `bitcode` encoding, at most [`limits::COMMAND_BYTES_MAX`].
    pub bytes: Vec<u8>,
    /// The entity on whose behalf it was sent (a player's avatar for a client's command), if any.
    pub from: Option<NetId>,
}

impl PlayerMessage {
    fn within_limits(&self) -> bool {
        self.from.len() <= limits::PLAYER_NAME_BYTES_MAX
            && self.text.len() <= limits::CHAT_TEXT_BYTES_MAX
    }
}

fn blobs_within_limits(c: &[ComponentBlob]) -> bool {
    c.len() <= limits::COMPONENTS_PER_ENTITY_MAX
        && c.iter()
            .all(|b| b.bytes.len() <= limits::COMPONENT_BYTES_MAX)
}

impl Validate for ShardMessage {
    fn validate(&self) -> Result<(), &'static str> {
        match self {
            Self::HandoffRequest(h) => {
                if !blobs_within_limits(&h.components) || !blobs_within_limits(&h.migrating) {
                    return Err("component payload over limits");
                }
                if !h
                    .pos
                    .iter()
                    .chain(&h.move_target)
                    .all(|c| c.is_finite() && c.abs() <= limits::WORLD_EXTENT_M_MAX)
                {
                    return Err("handoff position out of range");
                }
                if !(h.speed_mps.is_finite() && h.speed_mps >= 0.0) {
                    return Err("handoff speed not a speed");
                }
                match &h.player {
                    Some(p) if p.name.len() > limits::PLAYER_NAME_BYTES_MAX => {
                        Err("player name too long")
                    }
                    _ => Ok(()),
                }
            }
            Self::ProxyBatch(b) => {
                if b.len() > PROXY_BATCH_ENTRIES_MAX {
                    return Err("proxy batch too long");
                }
                let blobs_ok = b
                    .upserts
                    .iter()
                    .filter_map(|u| u.components.as_deref())
                    .all(blobs_within_limits);
                if blobs_ok {
                    Ok(())
                } else {
                    Err("component payload over limits")
                }
            }
            Self::Command(c) if c.bytes.len() > limits::COMMAND_BYTES_MAX => {
                Err("command over limits")
            }
            Self::Replica(b) => b.validate(),
            Self::Taken { ids, .. } if ids.len() > TAKEN_IDS_MAX => Err("taken list too long"),
            Self::Taken { .. } => Ok(()),
            Self::HandoffAck { .. }
            | Self::HandoffRefuse { .. }
            | Self::HandoffCancel { .. }
            | Self::ForwardInput { .. }
            | Self::ReplicaAck { .. }
            | Self::Orphan { .. }
            | Self::Command(_) => Ok(()),
        }
    }
}

impl ReplicaBatch {
    /// Within the entry bounds, every position and speed a real one, every payload within the
    /// component limits, every player name within its bound.
    fn validate(&self) -> Result<(), &'static str> {
        if self.upserts.len() > REPLICA_BATCH_ENTRIES_MAX
            || self.removes.len() > REPLICA_BATCH_ENTRIES_MAX
        {
            return Err("replica batch too long");
        }
        for u in &self.upserts {
            let in_world = (u.pos.iter().chain(&u.move_target))
                .all(|c| c.is_finite() && c.abs() <= limits::WORLD_EXTENT_M_MAX);
            if !(in_world && u.speed_mps.is_finite() && u.speed_mps >= 0.0) {
                return Err("replica position or speed out of range");
            }
            let blobs_ok = [&u.components, &u.migrating]
                .into_iter()
                .flatten()
                .all(|b| blobs_within_limits(b));
            if !blobs_ok {
                return Err("component payload over limits");
            }
            if u.player
                .as_ref()
                .is_some_and(|p| p.name.len() > limits::PLAYER_NAME_BYTES_MAX)
            {
                return Err("player name too long");
            }
        }
        Ok(())
    }
}

impl Validate for ClientControl {
    fn validate(&self) -> Result<(), &'static str> {
        match self {
            Self::Hello(h) if h.name.len() > limits::PLAYER_NAME_BYTES_MAX => {
                Err("player name too long")
            }
            Self::Hello(h)
                if h.token
                    .as_ref()
                    .is_some_and(|t| t.len() > crate::token::TOKEN_BYTES_MAX) =>
            {
                Err("token too long")
            }
            Self::Hello(h)
                if h.ticket
                    .as_ref()
                    .is_some_and(|t| t.len() > crate::ticket::TICKET_BYTES_MAX) =>
            {
                Err("ticket too long")
            }
            Self::Hello(h)
                if h.resume
                    .as_ref()
                    .is_some_and(|t| t.len() > crate::resume::RESUME_TICKET_BYTES_MAX) =>
            {
                Err("resume ticket too long")
            }
            Self::Hello(_) => Ok(()),
            Self::Command(c) if c.bytes.len() > limits::COMMAND_BYTES_MAX => {
                Err("command over limits")
            }
            Self::Command(_) => Ok(()),
            Self::Say(s)
                if s.text.len() > limits::CHAT_TEXT_BYTES_MAX
                    || s.to
                        .as_ref()
                        .is_some_and(|t| t.len() > limits::PLAYER_NAME_BYTES_MAX) =>
            {
                Err("chat line over limits")
            }
            Self::Say(_) => Ok(()),
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
            Self::Redirect(r)
                if r.addr.len() > limits::ADDR_BYTES_MAX
                    || r.token.len() > crate::token::TOKEN_BYTES_MAX =>
            {
                Err("redirect over limits")
            }
            Self::Redirect(_) => Ok(()),
            Self::Prepare(p) if p.addr.len() > limits::ADDR_BYTES_MAX => Err("prepare over limits"),
            Self::Prepare(_) => Ok(()),
            Self::Resume(r)
                if r.ticket.len() > crate::resume::RESUME_TICKET_BYTES_MAX
                    || r.shards.len() > limits::RESUME_SHARDS_MAX
                    || r.shards
                        .iter()
                        .any(|(_, a)| a.len() > limits::ADDR_BYTES_MAX) =>
            {
                Err("resume over limits")
            }
            Self::Resume(_) => Ok(()),
            Self::Message(m) if !m.within_limits() => Err("message over limits"),
            Self::Message(_) => Ok(()),
            Self::Queued(q)
                if q.position == 0
                    || q.position > q.waiting
                    || q.waiting as usize > limits::LOGIN_QUEUE_MAX =>
            {
                Err("queue place out of range")
            }
            Self::Queued(_) => Ok(()),
            Self::CellMap(m) if m.leaves.len() > limits::CELL_MAP_LEAVES_TO_CLIENTS_MAX => {
                Err("cell map too large")
            }
            Self::CellMap(m) => {
                if m.leaves
                    .iter()
                    .all(|l| l.rect.iter().all(|c| c.is_finite()))
                {
                    Ok(())
                } else {
                    Err("cell map rectangle not finite")
                }
            }
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
        let blobs_ok = blobs_within_limits;
        if !s.spawned().iter().all(|e| blobs_ok(&e.components))
            || !s.changed().iter().all(|e| blobs_ok(&e.components))
        {
            return Err("component payload over limits");
        }
        Ok(())
    }
}
