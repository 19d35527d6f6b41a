//! Every bound in ZoneScaler, in one place, units last (`_bytes`, `_ms`, `_max`).
//!
//! A queue, a message or a table without a bound is a way to run a shard out of memory from the
//! network; each constant below is the reason that cannot happen. The `const` asserts at the end
//! tie the bounds to each other so changing one cannot silently break another.

/// Smallest datagram every QUIC path must carry (RFC 9000 §14: 1200-byte UDP payload, minus QUIC
/// overhead). Snapshots are split so no part exceeds the connection's limit, never below this.
pub const DATAGRAM_BYTES_MIN: usize = 1_100;
/// Largest inbound client datagram (an input) a shard will decode.
pub const CLIENT_DATAGRAM_BYTES_MAX: usize = 512;
/// Largest control-stream frame either side will read (login, errors).
pub const CONTROL_FRAME_BYTES_MAX: usize = 16 * 1024;
/// Largest shard-to-shard message a shard will decode: a handoff request with an entity's every
/// replicated and migrating component at their limits fits (asserted below).
pub const SHARD_MESSAGE_BYTES_MAX: usize = 32 * 1024;
/// Largest snapshot part a client will decode: one datagram of the largest MTU QUIC supports.
pub const SERVER_DATAGRAM_BYTES_MAX: usize = 65_527;

/// Entities one shard will hold, owned and proxies together.
pub const ENTITIES_PER_SHARD_MAX: usize = 200_000;
/// Client connections one shard will accept; the next one is refused with `ServerFull`.
pub const CLIENTS_PER_SHARD_MAX: usize = 4_096;
/// Entities one client receives per tick; past this the nearest are kept.
pub const AOI_ENTITIES_PER_CLIENT_MAX: usize = 512;
/// Parts one snapshot may be split into.
pub const SNAPSHOT_PARTS_MAX: usize = 64;
/// Entries per snapshot part a decoder accepts (updates + removals).
pub const SNAPSHOT_PART_ENTRIES_MAX: usize = AOI_ENTITIES_PER_CLIENT_MAX;
/// Replicated component payloads on one entity in one snapshot.
pub const COMPONENTS_PER_ENTITY_MAX: usize = 32;
/// Bytes of one replicated component's encoding.
pub const COMPONENT_BYTES_MAX: usize = 256;
/// Registered replicated component types (ids are `u8`).
pub const REPLICATED_COMPONENTS_MAX: usize = 255;

/// Snapshots per client remembered as delta baselines. An ack older than this gets a full snapshot.
pub const SNAPSHOT_HISTORY_TICKS: usize = 32;
/// Inbound datagrams one client may queue between two ticks before the rest are dropped.
pub const CLIENT_DATAGRAMS_PER_TICK_MAX: usize = 16;
/// Events the transport may queue into a shard's inbox between two ticks.
pub const INBOX_EVENTS_MAX: usize = 262_144;
/// Reliable control messages queued for one client before it is disconnected as too slow.
pub const CONTROL_QUEUE_PER_CLIENT_MAX: usize = 64;
/// Length of a player name in `Hello` (and of an account name in a login ticket).
pub const PLAYER_NAME_BYTES_MAX: usize = 32;
/// Length of one chat line or game message to a player.
pub const CHAT_TEXT_BYTES_MAX: usize = 256;
/// Bytes of one game command's encoding (from a client or between shards).
pub const COMMAND_BYTES_MAX: usize = 256;
/// Game command types a game may register (ids are `u8`).
pub const COMMAND_KINDS_MAX: usize = 255;
/// Server-only component types a game may register with `migrate::<T>()` (ids are `u8`).
pub const MIGRATING_COMPONENTS_MAX: usize = 255;
/// Game commands one client may send per tick; more close the connection as abusive only
/// past [`CLIENT_CONTROL_PER_TICK_MAX`], below it they are dropped (counted).
pub const CLIENT_COMMANDS_PER_TICK_MAX: usize = 4;
/// Chat lines one client may send per second; more are dropped (counted).
pub const CLIENT_SAYS_PER_SECOND_MAX: u32 = 2;
/// Control messages (commands, chat) one client may send per tick before it is closed as
/// flooding.
pub const CLIENT_CONTROL_PER_TICK_MAX: usize = 64;
/// Messages queued for players per tick (tells, shouts and their deliveries); more are dropped
/// (counted).
pub const PLAYER_MESSAGES_PER_TICK_MAX: usize = 4_096;
/// Logins one shard may have waiting for the master's answer about their account.
pub const LOGINS_PENDING_MAX: usize = 1_024;
/// A login waiting this long for the master's answer about its account is refused.
pub const LOGIN_CLAIM_TIMEOUT_MS: u64 = 5_000;
/// Logins that may wait for room in one cluster (or on one lone shard) when every shard is at its
/// client cap (`[cluster] login_queue_max` is at most this). Each waiting login holds a
/// connection on the shard it came through, so the queue stays well under what one shard
/// accepts (asserted below).
pub const LOGIN_QUEUE_MAX: usize = 2_048;
/// How long the master keeps a seat it gave a login before the shard it sent it to reports the
/// player's arrival: the redirect token's lifetime (10 s) plus a few heartbeats. A client that
/// never arrives (it hung up mid-redirect) frees its seat after this.
pub const ADMISSION_ARRIVAL_WAIT_MS: u64 = 12_000;
/// Length of the human-readable reason in an error message.
pub const ERROR_DETAIL_BYTES_MAX: usize = 256;
/// Leaves of the cell map sent to a client after `Welcome`; a bigger map is not sent.
pub const CELL_MAP_LEAVES_TO_CLIENTS_MAX: usize = 1_024;
/// Length of a `host:port` address in a redirect.
pub const ADDR_BYTES_MAX: usize = 128;

/// Slowest and fastest tick rates a world config may ask for.
pub const TICK_HZ_MIN: u32 = 1;
pub const TICK_HZ_MAX: u32 = 240;
/// World coordinates must stay within this many metres of the origin: f32 still resolves 3.9 mm
/// there (so the 5 mm quantisation bound means something) and centimetres fit an `i32` easily.
pub const WORLD_EXTENT_M_MAX: f32 = 32_768.0;
/// Base (level-0) cells a world config may have; the cell map is per-leaf state on every shard.
pub const BASE_CELLS_MAX: usize = 1_000_000;
/// NPCs a world config may ask for.
pub const NPC_COUNT_MAX: usize = ENTITIES_PER_SHARD_MAX / 2;
/// Cells of the uniform AOI grid; the grid grows its cell size to stay under this.
pub const AOI_GRID_CELLS_MAX: usize = 1 << 20;

/// How long a connecting client has to send `Hello` before it is closed.
pub const HELLO_TIMEOUT_MS: u64 = 5_000;
/// Client connections, handshaking or established, that one source address may hold on a shard;
/// the next is refused at its first packet. Without it one host could take every one of the
/// `CLIENTS_PER_SHARD_MAX` slots and hold them for `HELLO_TIMEOUT_MS` without logging in. Load
/// tests run up to 1,000 bots from one machine, so it stays above that. An IPv6 source counts by
/// its /64, the block one host is usually given.
pub const CONNECTIONS_PER_ADDRESS_MAX: usize = 1_024;
/// Client handshakes in progress past which a shard answers a new connection from a source
/// address it has not validated with a QUIC Retry instead of starting a handshake, so a flood of
/// spoofed-source packets costs it no state. A real client follows the Retry by itself, one
/// round trip later; below this bound nobody pays that round trip.
pub const HANDSHAKES_BEFORE_RETRY: usize = 256;
/// QUIC idle timeout: a peer silent this long is gone.
pub const IDLE_TIMEOUT_MS: u64 = 10_000;
/// The round trip QUIC assumes before it has measured one: it sets how soon a lost handshake
/// packet is resent (about three times this).
pub const INITIAL_RTT_MS: u64 = 100;
/// Receive and send buffer asked for on every QUIC socket. The kernel's default (~208 KiB on
/// Linux) overflows when a busy process leaves a socket carrying hundreds of connections unread
/// for a few milliseconds, and every datagram it drops is a lost snapshot or, worse, a lost
/// handshake packet that costs a redirect hundreds of milliseconds. The kernel caps the request
/// at `net.core.rmem_max` / `wmem_max`; the endpoint logs what it got.
pub const UDP_SOCKET_BUFFER_BYTES: usize = 4 << 20;
/// QUIC keep-alive interval, well under the idle timeout.
pub const KEEP_ALIVE_MS: u64 = 2_000;

/// Handoffs one shard has in flight to one neighbour at once (entities frozen, waiting for that
/// neighbour's answer). Per neighbour, so one slow or partitioned neighbour cannot stop handoffs
/// to the others.
pub const HANDOFFS_IN_FLIGHT_PER_NEIGHBOUR_MAX: usize = 2_048;
/// After a refusal the source waits this long before offering the entity again.
pub const HANDOFF_BACKOFF_MS: u64 = 500;
/// A target keeps its answer to a handoff attempt (accepted or cancelled) at least the handoff
/// timeout plus this long, so a cancel or a duplicate request that arrives late (a slow link, a
/// link that reconnected) still meets the answer the source may already have acted on.
pub const HANDOFF_RECORD_MARGIN_MS: u64 = 30_000;
/// A handed-off avatar whose client has not arrived with its token after this long is despawned
/// (the player left mid-redirect).
pub const REDIRECT_WAIT_MS: u64 = 15_000;
/// Answers a target remembers at once (see `HANDOFF_RECORD_MARGIN_MS`). A record is never
/// forgotten before its time; while this many are young the target refuses new handoffs as
/// `Full` instead.
pub const HANDOFF_RECORDS_MAX: usize = 65_536;
/// Shards in one cluster (ids are `u16`; the master pushes every member to every shard).
pub const SHARDS_MAX: usize = 1_024;
/// Other shards a client is told it may resume through (`ServerControl::Resume`): a few live
/// ones are enough to reach any, since each redirects the client to its avatar's shard.
pub const RESUME_SHARDS_MAX: usize = 8;
/// Shard messages in one link batch frame. A tick's messages for one neighbour that do not fit
/// one frame (by count or by `LINK_FRAME_BYTES_MAX`) go in several, in order.
pub const LINK_BATCH_MESSAGES_MAX: usize = 262_144;
/// What a batch frame's encoding adds to its messages' bytes: at most this per message (its
/// length) and this for the frame (the message tag and the count). Generous bounds of bitcode's
/// (a length takes at most 5 bytes); a test checks a full frame against them.
pub const LINK_BATCH_BYTES_PER_MESSAGE: usize = 8;
pub const LINK_BATCH_BYTES_FIXED: usize = 64;
/// Cells a heartbeat reports the load of (the busiest first).
pub const CELL_LOADS_PER_HEARTBEAT_MAX: usize = 4_096;
/// How often a shard reports its load to the master.
pub const HEARTBEAT_MS: u64 = 200;

/// How often a shard reports what it owns to the master, and the master takes its cluster-wide
/// ownership audit (`GET /api/audit`).
pub const AUDIT_MS: u64 = 1_000;
/// Entries (owned and frozen together) in one part of an ownership report; a shard with more
/// sends its report in several parts. At most about `AUDIT_ENTRY_BYTES_MAX` each on the wire.
pub const AUDIT_PART_ENTRIES_MAX: usize = 16_384;
/// Parts of one ownership report: enough for a shard at `ENTITIES_PER_SHARD_MAX` (asserted).
pub const AUDIT_PARTS_MAX: usize = 16;
/// A generous bound of one report entry's bytes on the wire at its worst (an 8-byte gap, a
/// 4-byte generation, a group of its own), so a full part fits a link frame (asserted).
pub const AUDIT_ENTRY_BYTES_MAX: usize = 32;
/// Entries the master keeps of every member's latest report together (about 16 bytes each in
/// memory): a report that would pass it is not kept, and the audit names its member unaudited.
pub const AUDIT_ENTITIES_MAX: usize = 4_000_000;
/// Entities owned twice that one audit lists (all of them are counted).
pub const AUDIT_DUPLICATES_LISTED_MAX: usize = 64;
/// How far apart two shards' clocks may be for the audit's time rule: an owner at an older
/// generation is a second owner only if its report was taken more than this after the report
/// of the owner at the newer one (`cluster::audit`). On one machine the clocks are one.
pub const AUDIT_CLOCK_SKEW_MS: u64 = 100;

/// The most a load report's `tick_slowdown` counts for (a shard that ran one tick in a window
/// of ten periods): past it, the figure says "far behind", not how far.
pub const TICK_SLOWDOWN_MAX: f32 = 10.0;

/// Session frames (`LinkMessage::Seq`) a shard keeps per member until the member acknowledges
/// them: about one round trip of traffic while the link is up; everything since the link went
/// down while it is down (or, for a joiner, not linked yet), sent again in order once it is back.
/// Past either bound a new frame is dropped and logged (the handoffs in it are cancelled and
/// answered after their timeout). Half the link queue, so resending all of them after a redial
/// always fits that queue.
pub const UNACKED_MEMBER_BYTES_MAX: usize = 32 << 20;
pub const UNACKED_MEMBER_FRAMES_MAX: usize = 2_048;
/// What the `Seq` wrapper adds to the frame it carries (tag, number and length; generous, a test
/// checks it): batches are cut to fit a link frame with it.
pub const LINK_SEQ_BYTES_FIXED: usize = 32;
/// Backoff between redials of a dropped link: the first after the least, then doubling up to
/// the most, for as long as the peer stays in the master's member list.
pub const LINK_REDIAL_BACKOFF_MS_MIN: u64 = 100;
pub const LINK_REDIAL_BACKOFF_MS_MAX: u64 = 2_000;

/// The default master's silence (`[cluster] shard_silence_ms`): a shard not heard from this long
/// (no heartbeat, on the master's monotonic clock) is declared dead and fenced: it leaves the
/// membership and its cells go to live shards.
pub const SHARD_DEAD_AFTER_MS: u64 = 3_000;
/// The range `[cluster] shard_silence_ms` may take: not below five heartbeats (a shard that
/// misses a few reports on a busy machine is not dead), not past a minute.
pub const SHARD_SILENCE_MS_MIN: u64 = 1_000;
pub const SHARD_SILENCE_MS_MAX: u64 = 60_000;

/// The default `[cluster] master_silence_ms`: members elect a successor once the master has not
/// answered them for this long (`cluster::election`). Half the default shard silence: the new
/// master answers before the members' leases (two thirds of the shard silence) lapse, so a
/// master's death pauses no other shard.
pub const MASTER_SILENCE_MS_DEFAULT: u64 = 1_500;
/// The range `[cluster] master_silence_ms` may take: not below a few heartbeats and a tick stall
/// (a false election deposes a live master), not past a minute.
pub const MASTER_SILENCE_MS_MIN: u64 = 500;
pub const MASTER_SILENCE_MS_MAX: u64 = 60_000;
const _: () = assert!(MASTER_SILENCE_MS_MIN > 2 * HEARTBEAT_MS);
const _: () = assert!(MASTER_SILENCE_MS_DEFAULT < lease_ms_for(SHARD_DEAD_AFTER_MS));

/// The ownership lease the master grants with a silence of `silence_ms`: two thirds of it. A
/// shard simulates its cells only while the master has answered a heartbeat it sent less than
/// this long ago (by its own monotonic clock). The master declares it dead no sooner than
/// `silence_ms` after it last heard from it, which is after the shard sent that heartbeat, so
/// a shard cut off from the master has stopped simulating a third of the silence before the
/// master can give its cells to anyone else. That third holds the tick that was running when
/// the lease ran out (the shard checks it before each tick) and the two clocks' rates differing.
pub const fn lease_ms_for(silence_ms: u64) -> u64 {
    silence_ms * 2 / 3
}
/// The lease at the default silence, and its margin.
pub const SHARD_LEASE_MS: u64 = lease_ms_for(SHARD_DEAD_AFTER_MS);
pub const SHARD_LEASE_MARGIN_MS: u64 = SHARD_DEAD_AFTER_MS - SHARD_LEASE_MS;
// A shard's whole ownership report fits its parts, and one part a link frame in its session.
const _: () = assert!(ENTITIES_PER_SHARD_MAX <= AUDIT_PARTS_MAX * AUDIT_PART_ENTRIES_MAX);
const _: () = assert!(AUDIT_PARTS_MAX <= u16::MAX as usize);
const _: () = assert!(
    AUDIT_PART_ENTRIES_MAX * AUDIT_ENTRY_BYTES_MAX + LINK_SEQ_BYTES_FIXED + 1_024
        <= LINK_FRAME_BYTES_MAX
);
// The master keeps at least a few full shards' reports, and audits no faster than heartbeats.
const _: () = assert!(AUDIT_ENTITIES_MAX >= 4 * ENTITIES_PER_SHARD_MAX);
const _: () = assert!(AUDIT_MS >= HEARTBEAT_MS);
const _: () = assert!(RESUME_SHARDS_MAX < SHARDS_MAX);
const _: () = assert!(SHARD_DEAD_AFTER_MS >= SHARD_SILENCE_MS_MIN);
const _: () = assert!(SHARD_DEAD_AFTER_MS <= SHARD_SILENCE_MS_MAX);
// Even the shortest lease outlasts two heartbeats, and its margin ten ticks at 30 Hz.
const _: () = assert!(lease_ms_for(SHARD_SILENCE_MS_MIN) > 2 * HEARTBEAT_MS);
const _: () = assert!(SHARD_SILENCE_MS_MIN - lease_ms_for(SHARD_SILENCE_MS_MIN) >= 330);
/// Commands queued for entities per tick; more are dropped (counted).
pub const COMMANDS_PER_TICK_MAX: usize = 16_384;
/// Shortest cluster secret a shard accepts. The secret is the only thing that proves a process
/// belongs to the cluster, so it must be too long to guess: 16 bytes is 128 bits when random.
pub const LINK_SECRET_BYTES_MIN: usize = 16;
/// How long a shard link has, from the first packet (or from `dial`) to both membership proofs
/// checked, before it is closed as `handshake_timeout`. A process that completes TLS and then
/// says nothing holds a connection slot at most this long.
pub const LINK_HANDSHAKE_TIMEOUT_MS: u64 = 5_000;
/// Largest frame on a shard link, either way; a larger length prefix closes the link before the
/// body is allocated. Far above any single shard message (`SHARD_MESSAGE_BYTES_MAX`) so batches
/// and future bulk transfers (a region's entities during handoff) fit one frame.
pub const LINK_FRAME_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Frames queued for one link's writer; past this the link is closed as too slow.
pub const LINK_QUEUE_FRAMES_MAX: usize = 4_096;
/// Bytes queued for one link's writer; past this the link is closed as too slow. Without it a
/// queue bounded only in frames could hold `LINK_QUEUE_FRAMES_MAX` 4 MiB frames (16 GiB).
pub const LINK_QUEUE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Bytes of received link messages waiting, all links together, for the shard to drain them.
/// When it is reached the links stop reading, so QUIC flow control slows the senders down.
pub const LINK_INBOX_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Link events (up, message, down) waiting for the shard to drain them.
pub const LINK_EVENTS_MAX: usize = 16_384;
/// Shard links one shard holds at once, dials in progress included; the next dial fails and the
/// next incoming link is refused.
pub const LINKS_MAX: usize = 256;
/// Incoming links still proving membership at once; past this new ones are refused, so a flood
/// of strangers cannot hold more than this many TLS sessions for `LINK_HANDSHAKE_TIMEOUT_MS`.
pub const LINK_HANDSHAKES_PENDING_MAX: usize = 64;

const _: () = assert!(
    DATAGRAM_BYTES_MIN <= 1_200,
    "QUIC guarantees 1200-byte UDP payloads"
);
const _: () = assert!(CLIENT_DATAGRAM_BYTES_MAX <= DATAGRAM_BYTES_MIN);
const _: () = assert!(SNAPSHOT_PART_ENTRIES_MAX >= AOI_ENTITIES_PER_CLIENT_MAX);
const _: () = assert!(REPLICATED_COMPONENTS_MAX <= u8::MAX as usize);
const _: () = assert!(COMMAND_KINDS_MAX <= u8::MAX as usize);
const _: () = assert!(MIGRATING_COMPONENTS_MAX <= u8::MAX as usize);
const _: () = assert!(CLIENT_COMMANDS_PER_TICK_MAX <= CLIENT_CONTROL_PER_TICK_MAX);
// A command (with its header) and a chat line fit a control frame and a shard message.
const _: () = assert!(COMMAND_BYTES_MAX + 64 <= CONTROL_FRAME_BYTES_MAX);
const _: () = assert!(COMMAND_BYTES_MAX + 64 <= SHARD_MESSAGE_BYTES_MAX);
const _: () = assert!(CHAT_TEXT_BYTES_MAX + PLAYER_NAME_BYTES_MAX + 64 <= CONTROL_FRAME_BYTES_MAX);
// A handoff request carries an entity's replicated and migrating components, each list at its
// limits, plus a header (ids, positions, the player's name: well under 1 KiB).
const _: () = assert!(
    2 * COMPONENTS_PER_ENTITY_MAX * (COMPONENT_BYTES_MAX + 8) + 1_024 < SHARD_MESSAGE_BYTES_MAX
);
const _: () = assert!(COMPONENTS_PER_ENTITY_MAX <= REPLICATED_COMPONENTS_MAX);
// Baselines travel as a one-byte age.
const _: () = assert!(SNAPSHOT_HISTORY_TICKS >= 2 && SNAPSHOT_HISTORY_TICKS <= u8::MAX as usize);
const _: () = assert!(KEEP_ALIVE_MS * 3 <= IDLE_TIMEOUT_MS);
const _: () = assert!(CLIENTS_PER_SHARD_MAX * CLIENT_DATAGRAMS_PER_TICK_MAX <= INBOX_EVENTS_MAX);
const _: () = assert!(NPC_COUNT_MAX + CLIENTS_PER_SHARD_MAX <= ENTITIES_PER_SHARD_MAX);
// A base grid side within BASE_CELLS_MAX fits the 2^24 columns that level-8 Morton codes allow.
const _: () = assert!(BASE_CELLS_MAX <= (1 << 24));
// A link frame's length travels as a u32, and one frame must fit every budget it passes through.
const _: () = assert!(LINK_FRAME_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(SHARD_MESSAGE_BYTES_MAX <= LINK_FRAME_BYTES_MAX);
// Any one shard message fits a batch frame by itself, so splitting a tick's batch always works.
const _: () = assert!(
    LINK_SEQ_BYTES_FIXED
        + LINK_BATCH_BYTES_FIXED
        + LINK_BATCH_BYTES_PER_MESSAGE
        + SHARD_MESSAGE_BYTES_MAX
        <= LINK_FRAME_BYTES_MAX
);
const _: () = assert!(LINK_FRAME_BYTES_MAX <= LINK_QUEUE_BYTES_MAX);
const _: () = assert!(UNACKED_MEMBER_BYTES_MAX * 2 <= LINK_QUEUE_BYTES_MAX);
const _: () = assert!(UNACKED_MEMBER_FRAMES_MAX * 2 <= LINK_QUEUE_FRAMES_MAX);
const _: () = assert!(LINK_FRAME_BYTES_MAX <= UNACKED_MEMBER_BYTES_MAX);
const _: () = assert!(LINK_REDIAL_BACKOFF_MS_MIN <= LINK_REDIAL_BACKOFF_MS_MAX);
// A redial at the longest backoff still comes well within the shortest silence.
const _: () = assert!(LINK_REDIAL_BACKOFF_MS_MAX < SHARD_SILENCE_MS_MIN * 3);
const _: () = assert!(LINK_FRAME_BYTES_MAX <= LINK_INBOX_BYTES_MAX);
const _: () = assert!(LINK_HANDSHAKES_PENDING_MAX <= LINKS_MAX);
const _: () = assert!(LINK_HANDSHAKE_TIMEOUT_MS < IDLE_TIMEOUT_MS);
// Logins waiting for room hold connections on their gateway shard: the whole queue fits on one
// shard beside its playing clients.
const _: () = assert!(2 * LOGIN_QUEUE_MAX <= CLIENTS_PER_SHARD_MAX);
// One host cannot take every client slot, but a load test's bot swarm fits on one host.
const _: () = assert!(CONNECTIONS_PER_ADDRESS_MAX < CLIENTS_PER_SHARD_MAX);
const _: () = assert!(
    CONNECTIONS_PER_ADDRESS_MAX >= 1_000,
    "load tests run up to 1,000 bots from one host"
);
// Spoofed sources cannot fill a real address's allowance: once HANDSHAKES_BEFORE_RETRY
// handshakes are in progress, every unvalidated source must first prove it receives there.
const _: () = assert!(HANDSHAKES_BEFORE_RETRY < CONNECTIONS_PER_ADDRESS_MAX);
