//! The session between this shard and each other member: play-time link frames numbered per
//! direction for as long as both are members, so that a link that drops and is redialled loses
//! nothing and doubles nothing.
//!
//! QUIC makes one link reliable and ordered, but a link that drops (idle timeout over a long
//! partition, a stream error, a queue overflow) takes with it whatever was in flight: a handoff
//! request, its ack, a forwarded command, a map push. So every frame a member sends another
//! during play is a `LinkMessage::Seq` with the next number, and kept until the receiver's
//! `Ack` says it has it. When the link is down (or, for a joiner, not named yet) frames are only
//! kept. Once a link names itself again ([`Sessions::relinked`]) the sender sends every frame
//! still kept, oldest first; the receiver delivers a number only if it is the next one
//! ([`Sessions::receive`]), so frames that had arrived before the drop are not delivered twice.
//! A number past the next one can only come from a bug (frames are never dropped after being
//! numbered) and is delivered and logged.
//!
//! Bounded: at most [`limits::UNACKED_MEMBER_FRAMES_MAX`] frames and
//! [`limits::UNACKED_MEMBER_BYTES_MAX`] bytes kept per member; past that a new frame is not
//! numbered but dropped and counted (the caller logs it), so the receiver never sees a gap. A
//! handoff in a dropped frame is cancelled after its timeout and answered from the target's
//! records (`authority::handoff`), as after any loss.
//!
//! Pure: no clock, no I/O; `Node` sends what it returns.

use bytes::Bytes;
use std::collections::{BTreeMap, VecDeque};
use zonescaler_shared::ShardId;
use zonescaler_shared::codec;
use zonescaler_shared::limits;
use zonescaler_shared::protocol::LinkMessage;

/// One direction of frames to one member, and what it has sent back.
#[derive(Debug)]
struct Session {
    /// The number of the next frame to send.
    next_seq: u64,
    /// Numbered frames, encoded as sent, not acknowledged yet, and whether they went out on a
    /// link already: oldest first.
    unacked: VecDeque<(u64, Bytes, bool)>,
    unacked_bytes: usize,
    /// The last number delivered from this member.
    received: u64,
    /// `received` moved since the last `Ack` went out.
    ack_due: bool,
}

impl Default for Session {
    fn default() -> Self {
        Self {
            next_seq: 1,
            unacked: VecDeque::new(),
            unacked_bytes: 0,
            received: 0,
            ack_due: false,
        }
    }
}

/// What to do with a numbered frame that arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// The next one: deliver it.
    Deliver,
    /// Had already (sent again after a redial): drop it.
    Duplicate,
    /// Past the next one: `missing` frames never came. Delivered anyway (a bug to log: senders
    /// never drop a numbered frame).
    Gap { missing: u64 },
}

/// Every member's session with this shard, and counters for the metrics.
#[derive(Debug, Default)]
pub struct Sessions {
    per: BTreeMap<ShardId, Session>,
    /// Frames numbered and kept while their member had no link (down, or not named yet).
    pub kept_unlinked: u64,
    /// Frames dropped because their member's session was at its bound.
    pub dropped: u64,
    /// Frames sent again on a redialled link (they had gone out on the link that dropped).
    pub resent: u64,
    /// Frames received twice (after a redial) and dropped.
    pub duplicates: u64,
}

impl Sessions {
    /// Number `frame` (an encoded `LinkMessage`) for `to` and keep it until acknowledged: the
    /// `Seq` frame to put on the link (`linked`: there is one), or to send later. `None` when
    /// `to`'s session is at its bound: the frame is dropped and counted.
    pub fn push(&mut self, to: ShardId, frame: Vec<u8>, linked: bool) -> Option<Bytes> {
        let s = self.per.entry(to).or_default();
        let seq = s.next_seq;
        let wire = Bytes::from(codec::encode(&LinkMessage::Seq { seq, frame }));
        if s.unacked.len() >= limits::UNACKED_MEMBER_FRAMES_MAX
            || s.unacked_bytes + wire.len() > limits::UNACKED_MEMBER_BYTES_MAX
        {
            self.dropped += 1;
            return None;
        }
        s.next_seq += 1;
        s.unacked_bytes += wire.len();
        s.unacked.push_back((seq, wire.clone(), linked));
        if !linked {
            self.kept_unlinked += 1;
        }
        Some(wire)
    }

    /// `from` has every frame up to `received`: forget them.
    pub fn acked(&mut self, from: ShardId, received: u64) {
        let Some(s) = self.per.get_mut(&from) else {
            return;
        };
        while let Some((seq, wire, _)) = s.unacked.front() {
            if *seq > received {
                break;
            }
            s.unacked_bytes -= wire.len();
            s.unacked.pop_front();
        }
    }

    /// Frame `seq` from `from` arrived: deliver it or not.
    pub fn receive(&mut self, from: ShardId, seq: u64) -> Arrival {
        let s = self.per.entry(from).or_default();
        if seq <= s.received {
            // Sent again after a redial: say again how far we are, so the sender forgets it.
            s.ack_due = true;
            self.duplicates += 1;
            return Arrival::Duplicate;
        }
        let missing = seq - s.received - 1;
        s.received = seq;
        s.ack_due = true;
        if missing == 0 {
            Arrival::Deliver
        } else {
            Arrival::Gap { missing }
        }
    }

    /// The last frame delivered from `from` (0: none yet).
    pub fn received(&self, from: ShardId) -> u64 {
        self.per.get(&from).map_or(0, |s| s.received)
    }

    /// The `Ack` each member is owed (it sent frames since the last one), clearing them.
    pub fn acks_due(&mut self) -> Vec<(ShardId, u64)> {
        (self.per.iter_mut())
            .filter(|(_, s)| s.ack_due)
            .map(|(id, s)| {
                s.ack_due = false;
                (*id, s.received)
            })
            .collect()
    }

    /// A link to `to` named itself, and `to` has every frame up to `received`: the frames to
    /// send on it, oldest first (every one still unacknowledged).
    pub fn relinked(&mut self, to: ShardId, received: u64) -> Vec<Bytes> {
        self.acked(to, received);
        let Some(s) = self.per.get_mut(&to) else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(s.unacked.len());
        for (_, wire, sent) in &mut s.unacked {
            if *sent {
                self.resent += 1;
            }
            *sent = true;
            out.push(wire.clone());
        }
        out
    }

    /// Frames kept for `to` and not acknowledged.
    pub fn unacked(&self, to: ShardId) -> usize {
        self.per.get(&to).map_or(0, |s| s.unacked.len())
    }

    /// `id` left the cluster: its session ends; the frames it never acknowledged, dropped.
    pub fn forget(&mut self, id: ShardId) -> usize {
        self.per.remove(&id).map_or(0, |s| s.unacked.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `len` bytes that bitcode cannot pack smaller.
    fn noise(len: usize) -> Vec<u8> {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn seq_of(wire: &Bytes) -> (u64, Vec<u8>) {
        match codec::decode_link_message(wire) {
            Ok(LinkMessage::Seq { seq, frame }) => (seq, frame),
            other => panic!("a Seq frame: {other:?}"),
        }
    }

    /// Two members' sessions over a link that drops with frames in flight: every frame is
    /// delivered once, in order.
    #[test]
    fn a_link_dropped_with_frames_in_flight_loses_and_doubles_nothing_after_the_redial() {
        let (a, b) = (ShardId(1), ShardId(2));
        let mut at_a = Sessions::default();
        let mut at_b = Sessions::default();
        let mut delivered = Vec::new();
        let mut deliver = |at_b: &mut Sessions, wire: &Bytes| {
            let (seq, frame) = seq_of(wire);
            match at_b.receive(a, seq) {
                Arrival::Deliver => delivered.push(frame[0]),
                Arrival::Duplicate => {}
                Arrival::Gap { missing } => panic!("gap of {missing}"),
            }
        };
        // Frames 1..=3 arrive, 4..=5 are in flight when the link drops, 6..=7 are sent while it
        // is down.
        let sent: Vec<Bytes> = (1..=5u8)
            .map(|i| at_a.push(b, vec![i], true).expect("room"))
            .collect();
        for w in &sent[..3] {
            deliver(&mut at_b, w);
        }
        let acks = at_b.acks_due();
        assert_eq!(acks, vec![(a, 3)], "b acknowledges what it has");
        assert!(at_b.acks_due().is_empty(), "once");
        // The ack of 2 only reaches a (the one of 3 is lost with the link).
        at_a.acked(b, 2);
        assert_eq!(at_a.unacked(b), 3);
        for i in 6..=7u8 {
            at_a.push(b, vec![i], false).expect("room");
        }
        assert_eq!(at_a.kept_unlinked, 2);
        // Redialled: b says it has 3 (`Relink.received`), a sends the rest.
        let again = at_a.relinked(b, at_b.received(a));
        assert_eq!(again.len(), 4, "4..=7 are sent again");
        assert_eq!(
            at_a.resent, 2,
            "4..=5 went out before; 6..=7 go out the first time"
        );
        // Sent twice over: the second copy is dropped.
        for w in again.iter().chain(&again) {
            deliver(&mut at_b, w);
        }
        assert_eq!(
            delivered,
            (1..=7u8).collect::<Vec<_>>(),
            "each once, in order"
        );
        assert_eq!(at_b.duplicates, 4);
        at_a.acked(b, at_b.received(a));
        assert_eq!(at_a.unacked(b), 0, "all acknowledged");
    }

    #[test]
    fn a_session_past_its_bound_drops_new_frames_without_numbering_them() {
        let to = ShardId(3);
        let mut s = Sessions::default();
        for _ in 0..limits::UNACKED_MEMBER_FRAMES_MAX {
            assert!(s.push(to, vec![0], false).is_some());
        }
        assert!(s.push(to, vec![1], false).is_none(), "past the frame bound");
        assert_eq!(s.dropped, 1);
        s.acked(to, 1);
        let wire = s
            .push(to, vec![2], true)
            .expect("room again once one is acknowledged");
        assert_eq!(
            seq_of(&wire).0,
            limits::UNACKED_MEMBER_FRAMES_MAX as u64 + 1,
            "the dropped frame took no number: the receiver sees no gap"
        );
        let big = noise(limits::LINK_FRAME_BYTES_MAX - limits::LINK_SEQ_BYTES_FIXED);
        let mut s = Sessions::default();
        let fit = limits::UNACKED_MEMBER_BYTES_MAX / limits::LINK_FRAME_BYTES_MAX;
        for _ in 0..fit {
            assert!(s.push(to, big.clone(), false).is_some());
        }
        assert!(s.push(to, big, false).is_none(), "past the byte bound");
        assert_eq!(s.forget(to), fit, "a departed member's frames are dropped");
        assert_eq!(s.unacked(to), 0);
    }

    #[test]
    fn the_seq_wrapper_fits_its_allowance_and_a_gap_is_reported() {
        let big = noise(limits::LINK_FRAME_BYTES_MAX - limits::LINK_SEQ_BYTES_FIXED);
        let wire = codec::encode(&LinkMessage::Seq {
            seq: u64::MAX,
            frame: big,
        });
        assert!(
            wire.len() <= limits::LINK_FRAME_BYTES_MAX,
            "a full frame wrapped still fits a link frame: {}",
            wire.len()
        );
        assert!(wire.len() > limits::LINK_FRAME_BYTES_MAX - limits::LINK_SEQ_BYTES_FIXED);
        let mut s = Sessions::default();
        assert_eq!(s.receive(ShardId(1), 1), Arrival::Deliver);
        assert_eq!(s.receive(ShardId(1), 4), Arrival::Gap { missing: 2 });
        assert_eq!(s.receive(ShardId(1), 2), Arrival::Duplicate);
        assert_eq!(s.received(ShardId(1)), 4);
    }
}
