//! The codec: the only code that turns protocol messages into bytes and back.
//!
//! A message on the wire is `"ZS"`, the protocol version as a little-endian `u16`, then the
//! `bitcode` encoding. Decoding checks, in this order and before any allocation that depends on
//! the input: the length against the channel's limit, the magic, the version; then `bitcode`
//! decodes (its lengths are bounded by the bytes present, which the first check bounded), and
//! finally the message's own [`Validate`] checks run. Every failure is a [`DecodeError`]; none
//! panics. Control-stream frames add a `u32` length prefix, checked before the body is read.

use crate::limits;
use crate::protocol::{
    ClientControl, ClientDatagram, LinkMessage, PROTOCOL_VERSION, ServerControl, ServerDatagram,
    ShardMessage, Validate,
};
use bitcode::{DecodeOwned, Encode};

/// First two bytes of every message.
pub const MAGIC: [u8; 2] = *b"ZS";
/// Magic plus version.
pub const HEADER_BYTES: usize = 4;
/// Bytes of a control frame's length prefix.
pub const FRAME_PREFIX_BYTES: usize = 4;

/// Why bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("message of {len} bytes is shorter than its header")]
    Truncated { len: usize },
    #[error("bad magic bytes")]
    BadMagic,
    #[error("protocol version {got}, expected {PROTOCOL_VERSION}")]
    WrongVersion { got: u16 },
    #[error("malformed message body")]
    Malformed,
    #[error("invalid message: {0}")]
    Invalid(&'static str),
}

/// Encode any wire message with the header.
pub fn encode<T: Encode>(msg: &T) -> Vec<u8> {
    let body = bitcode::encode(msg);
    let mut out = Vec::with_capacity(HEADER_BYTES + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Encode into `out` (cleared first), reusing `buf`'s allocations: the hot-path form of
/// [`encode`] for a shard encoding thousands of snapshot parts per tick.
pub fn encode_into<T: Encode>(buf: &mut bitcode::Buffer, msg: &T, out: &mut Vec<u8>) {
    let body = buf.encode(msg);
    out.clear();
    out.reserve(HEADER_BYTES + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    out.extend_from_slice(body);
}

/// Decode a message of type `T` from at most `max` bytes.
pub fn decode<T: DecodeOwned + Validate>(bytes: &[u8], max: usize) -> Result<T, DecodeError> {
    if bytes.len() > max {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    if bytes.len() < HEADER_BYTES {
        return Err(DecodeError::Truncated { len: bytes.len() });
    }
    if bytes[..2] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let version = u16::from_le_bytes([bytes[2], bytes[3]]);
    if version != PROTOCOL_VERSION {
        return Err(DecodeError::WrongVersion { got: version });
    }
    let msg: T = bitcode::decode(&bytes[HEADER_BYTES..]).map_err(|_| DecodeError::Malformed)?;
    msg.validate().map_err(DecodeError::Invalid)?;
    Ok(msg)
}

/// Client control message (the shard's side of the control stream).
pub fn decode_client_control(bytes: &[u8]) -> Result<ClientControl, DecodeError> {
    decode(bytes, limits::CONTROL_FRAME_BYTES_MAX)
}

/// Client datagram (input).
pub fn decode_client_datagram(bytes: &[u8]) -> Result<ClientDatagram, DecodeError> {
    decode(bytes, limits::CLIENT_DATAGRAM_BYTES_MAX)
}

/// Shard control message (the client's side of the control stream).
pub fn decode_server_control(bytes: &[u8]) -> Result<ServerControl, DecodeError> {
    decode(bytes, limits::CONTROL_FRAME_BYTES_MAX)
}

/// Shard datagram (snapshot part).
pub fn decode_server_datagram(bytes: &[u8]) -> Result<ServerDatagram, DecodeError> {
    decode(bytes, limits::SERVER_DATAGRAM_BYTES_MAX)
}

/// Shard-to-shard message.
pub fn decode_link_message(bytes: &[u8]) -> Result<LinkMessage, DecodeError> {
    decode(bytes, limits::LINK_FRAME_BYTES_MAX)
}

pub fn decode_shard_message(bytes: &[u8]) -> Result<ShardMessage, DecodeError> {
    decode(bytes, limits::SHARD_MESSAGE_BYTES_MAX)
}

/// Prefix a control message with its length, ready for a reliable stream.
pub fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_PREFIX_BYTES + message.len());
    out.extend_from_slice(&(message.len() as u32).to_le_bytes());
    out.extend_from_slice(message);
    out
}

/// Read a frame's length prefix and check it against the control limit before the body is read.
pub fn frame_len(prefix: [u8; FRAME_PREFIX_BYTES]) -> Result<usize, DecodeError> {
    let len = u32::from_le_bytes(prefix) as usize;
    if len > limits::CONTROL_FRAME_BYTES_MAX {
        return Err(DecodeError::TooLarge {
            len,
            max: limits::CONTROL_FRAME_BYTES_MAX,
        });
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NetId;
    use crate::protocol::*;
    use crate::quant::QPos;

    fn hello() -> ClientControl {
        ClientControl::Hello(Hello {
            protocol_hash: 7,
            name: "bot-1".into(),
            ticket: None,
            token: None,
            resume: None,
        })
    }

    #[test]
    fn round_trips_every_channel() {
        let h = hello();
        assert_eq!(decode_client_control(&encode(&h)), Ok(h));
        let i = ClientDatagram::Input(Input {
            seq: 9,
            ack_tick: 3,
            target: QPos([1, 2, 3]),
        });
        assert_eq!(decode_client_datagram(&encode(&i)), Ok(i));
        let s = ServerDatagram::Snapshot(SnapshotPart {
            tick: 10,
            parts: 1,
            moved: vec![Moved {
                index_gap: 0,
                delta: [1, 0, -1],
            }],
            rare: Some(RareUpdates {
                removed: vec![NetId(5)],
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(decode_server_datagram(&encode(&s)), Ok(s));
    }

    #[test]
    fn encode_into_matches_encode() {
        let mut buf = bitcode::Buffer::new();
        let mut out = vec![9; 3];
        encode_into(&mut buf, &hello(), &mut out);
        assert_eq!(out, encode(&hello()));
    }

    #[test]
    fn refuses_bad_bytes_without_panicking() {
        let good = encode(&hello());
        assert_eq!(
            decode_client_control(&good[..2]),
            Err(DecodeError::Truncated { len: 2 })
        );
        let mut wrong_version = good.clone();
        wrong_version[2] = 99;
        assert_eq!(
            decode_client_control(&wrong_version),
            Err(DecodeError::WrongVersion { got: 99 })
        );
        let mut bad_magic = good.clone();
        bad_magic[0] = b'X';
        assert_eq!(
            decode_client_control(&bad_magic),
            Err(DecodeError::BadMagic)
        );
        let big = vec![0u8; limits::CLIENT_DATAGRAM_BYTES_MAX + 1];
        assert!(matches!(
            decode_client_datagram(&big),
            Err(DecodeError::TooLarge { .. })
        ));
        // Every truncation of a valid message and a sweep of garbage: errors, never panics.
        for n in HEADER_BYTES..good.len() {
            assert!(
                decode_client_control(&good[..n]).is_err(),
                "truncated to {n} bytes"
            );
        }
        let mut rng = crate::rng::Rng::new(3);
        for len in 0..400 {
            let mut junk: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            if len >= 4 && rng.chance(0.5) {
                junk[..4].copy_from_slice(&good[..4]);
            }
            let _ = decode_client_control(&junk);
            let _ = decode_client_datagram(&junk);
            let _ = decode_server_datagram(&junk);
        }
    }

    #[test]
    fn invalid_but_well_formed_messages_are_refused() {
        let long = ClientControl::Hello(Hello {
            protocol_hash: 1,
            name: "x".repeat(200),
            ticket: None,
            token: None,
            resume: None,
        });
        assert_eq!(
            decode_client_control(&encode(&long)),
            Err(DecodeError::Invalid("player name too long"))
        );
        let bad_parts = ServerDatagram::Snapshot(SnapshotPart {
            parts: 2,
            part: 2,
            ..Default::default()
        });
        assert!(matches!(
            decode_server_datagram(&encode(&bad_parts)),
            Err(DecodeError::Invalid(_))
        ));
        let ok = ServerControl::Queued(QueuePlace {
            position: 3,
            waiting: 10,
        });
        assert_eq!(decode_server_control(&encode(&ok)), Ok(ok));
        for (position, waiting) in [(0, 10), (11, 10), (1, limits::LOGIN_QUEUE_MAX as u32 + 1)] {
            let bad = ServerControl::Queued(QueuePlace { position, waiting });
            assert_eq!(
                decode_server_control(&encode(&bad)),
                Err(DecodeError::Invalid("queue place out of range")),
                "place {position} of {waiting}"
            );
        }
        assert_eq!(ErrorCode::from_close_code(13), Some(ErrorCode::NoRoom));
        assert_eq!(ErrorCode::NoRoom.as_str(), "no_room");
    }

    /// A heartbeat that measured 30% of a core, over two cells.
    fn heartbeat() -> ShardLoad {
        let cell = |x, share| CellLoad {
            cell: crate::CellId::base(x, 0),
            entities: 10,
            clients: 1,
            tick_share: share,
        };
        ShardLoad {
            window_ms: 200,
            ticks: 6,
            tick_cpu_ms: 60.0,
            tick_cpu_share: 0.3,
            tick_ms_p50: 9.0,
            tick_ms_p99: 12.5,
            process_cpu_share: 1.4,
            cells: vec![cell(0, 0.75), cell(1, 0.25)],
            ..ShardLoad::default()
        }
    }

    #[test]
    fn heartbeats_with_figures_the_master_cannot_use_are_refused() {
        let decode = |load: ShardLoad| decode_link_message(&encode(&LinkMessage::Heartbeat(load)));
        assert_eq!(
            decode(heartbeat()),
            Ok(LinkMessage::Heartbeat(heartbeat())),
            "a sane report round-trips (a process may use more than one core)"
        );
        let bad_figure = Err(DecodeError::Invalid(
            "load figure not finite, negative, or a share over 1",
        ));
        let cases: [(&str, fn(&mut ShardLoad)); 10] = [
            ("NaN tick CPU share", |l| l.tick_cpu_share = f32::NAN),
            ("tick thread over one core", |l| l.tick_cpu_share = 1.01),
            ("negative tick CPU", |l| l.tick_cpu_ms = -1.0),
            ("infinite p99", |l| l.tick_ms_p99 = f32::INFINITY),
            ("negative p50", |l| l.tick_ms_p50 = -0.5),
            ("NaN transit", |l| l.handoff_transit_ms_p99 = f32::NAN),
            ("negative process CPU", |l| l.process_cpu_share = -0.1),
            ("NaN slowdown", |l| l.tick_slowdown = f32::NAN),
            ("NaN cell share", |l| l.cells[1].tick_share = f32::NAN),
            ("cell share over 1", |l| l.cells[0].tick_share = 2.0),
        ];
        for (what, spoil) in cases {
            let mut load = heartbeat();
            spoil(&mut load);
            assert_eq!(decode(load), bad_figure, "{what}");
        }
        let mut crowded = heartbeat();
        crowded.cells = vec![crowded.cells[0]; limits::CELL_LOADS_PER_HEARTBEAT_MAX + 1];
        crowded.cells.iter_mut().for_each(|c| c.tick_share = 0.0);
        assert_eq!(
            decode(crowded),
            Err(DecodeError::Invalid("cell loads over limits")),
            "one cell more than a heartbeat may carry"
        );
    }

    /// `n` ids minted by each of `shards`, from counter 1, each at generation `g % 5`.
    fn owned_ids(shards: &[u16], n: u64) -> Vec<(crate::NetId, u32)> {
        let mut ids: Vec<(crate::NetId, u32)> = shards
            .iter()
            .flat_map(|s| (1..=n).map(move |c| (crate::NetId::new(crate::ShardId(*s), c), c)))
            .map(|(id, c)| (id.expect("48 bits"), (c % 5) as u32))
            .collect();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn ownership_reports_round_trip_compactly_and_malformed_lists_are_refused() {
        use crate::protocol::{AuditPart, IdList};
        // Every third id, from three minting shards: gaps of 3, three groups.
        let owned: Vec<_> = owned_ids(&[0, 1, 7], 3_000)
            .into_iter()
            .step_by(3)
            .collect();
        let part = AuditPart {
            report: 4,
            part: 0,
            parts: 1,
            tick: 900,
            epoch: 3,
            taken_ms: 1_700_000_000_000,
            owned: IdList::from_sorted(&owned),
            in_transit: IdList::from_sorted(&owned[..2]),
        };
        let bytes = encode(&LinkMessage::Audit(part.clone()));
        let back = decode_link_message(&bytes);
        assert_eq!(back, Ok(LinkMessage::Audit(part.clone())), "round-trips");
        assert_eq!(
            part.owned.entries(),
            Ok(owned.clone()),
            "the same pairs back"
        );
        // Gaps and generations take a byte each (bitcode packs a column by its largest value):
        // raw (u64, u32) pairs would be twelve.
        assert!(
            bytes.len() < 2 * owned.len() + 128,
            "{} bytes for {} entries",
            bytes.len(),
            owned.len()
        );
        let refused = |p: AuditPart| decode_link_message(&encode(&LinkMessage::Audit(p)));
        let spoilt: [(&str, fn(&mut AuditPart)); 6] = [
            ("part past the count", |p| p.part = 1),
            ("no parts", |p| p.parts = 0),
            ("too many parts", |p| {
                p.parts = limits::AUDIT_PARTS_MAX as u16 + 1
            }),
            ("a gap of 0", |p| p.owned.deltas[5] = 0),
            ("counts that do not add up", |p| p.owned.groups[0].1 += 1),
            ("groups out of order", |p| p.owned.groups.swap(0, 1)),
        ];
        for (what, spoil) in spoilt {
            let mut p = part.clone();
            spoil(&mut p);
            assert!(matches!(refused(p), Err(DecodeError::Invalid(_))), "{what}");
        }
        let mut crowded = part.clone();
        let many = owned_ids(&[1], limits::AUDIT_PART_ENTRIES_MAX as u64 + 1);
        crowded.owned = IdList::from_sorted(&many);
        assert_eq!(
            refused(crowded),
            Err(DecodeError::Invalid("audit part over limits"))
        );
        let mut overflow = part;
        overflow.owned.deltas[1] = u64::MAX;
        assert_eq!(
            refused(overflow),
            Err(DecodeError::Invalid("id counter past 48 bits"))
        );
    }

    #[test]
    fn frame_lengths_are_checked_before_reading() {
        let f = frame(&[1, 2, 3]);
        assert_eq!(frame_len(f[..4].try_into().expect("4 bytes")), Ok(3));
        assert!(frame_len(u32::MAX.to_le_bytes()).is_err());
    }
}
