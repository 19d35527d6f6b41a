//! A seeded in-memory network for the simulator and tests.
//!
//! Messages between two endpoints travel with a configured delay and jitter; unreliable ones may be
//! lost, duplicated or reordered, reliable ones arrive once and in order (as on a QUIC stream).
//! Time is whatever the caller says it is (`now_us`), and all randomness comes from the seed, so
//! a run is a pure function of its seed.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use zonescaler_shared::rng::Rng;

/// Faults on one direction of one link.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkFaults {
    pub delay_us: u64,
    pub jitter_us: u64,
    /// Probability an unreliable message is dropped.
    pub loss: f32,
    /// Probability an unreliable message is delivered twice.
    pub duplicate: f32,
    /// Probability an unreliable message gets extra delay (so it overtakes nothing but is overtaken).
    pub reorder: f32,
}

impl LinkFaults {
    /// A perfect link: no delay, nothing lost.
    pub const PERFECT: Self = Self {
        delay_us: 0,
        jitter_us: 0,
        loss: 0.0,
        duplicate: 0.0,
        reorder: 0.0,
    };
}

impl Default for LinkFaults {
    fn default() -> Self {
        Self::PERFECT
    }
}

#[derive(Debug)]
struct InFlight<P> {
    from: u32,
    to: u32,
    payload: P,
}

/// A network of numbered endpoints carrying payloads of type `P`.
#[derive(Debug)]
pub struct MemNetwork<P> {
    rng: Rng,
    default_faults: LinkFaults,
    faults: BTreeMap<(u32, u32), LinkFaults>,
    partitioned: BTreeMap<(u32, u32), bool>,
    /// Reliable messages may not overtake each other: the last delivery time per link.
    reliable_tail: BTreeMap<(u32, u32), u64>,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    in_flight: BTreeMap<u64, InFlight<P>>,
    next_seq: u64,
    /// Messages dropped by loss or partition (for reports).
    pub dropped: u64,
}

impl<P: Clone> MemNetwork<P> {
    pub fn new(seed: u64, default_faults: LinkFaults) -> Self {
        Self {
            rng: Rng::new(seed),
            default_faults,
            faults: BTreeMap::new(),
            partitioned: BTreeMap::new(),
            reliable_tail: BTreeMap::new(),
            queue: BinaryHeap::new(),
            in_flight: BTreeMap::new(),
            next_seq: 0,
            dropped: 0,
        }
    }

    /// Override faults for the direction `from → to`.
    pub fn set_faults(&mut self, from: u32, to: u32, f: LinkFaults) {
        self.faults.insert((from, to), f);
    }

    /// Cut (or heal) both directions between `a` and `b`: unreliable messages are dropped,
    /// reliable ones wait until the partition heals (as a QUIC stream retransmits).
    pub fn set_partition(&mut self, a: u32, b: u32, cut: bool) {
        self.partitioned.insert((a.min(b), a.max(b)), cut);
    }

    fn is_cut(&self, a: u32, b: u32) -> bool {
        self.partitioned
            .get(&(a.min(b), a.max(b)))
            .copied()
            .unwrap_or(false)
    }

    /// Send `payload`; it becomes visible to [`Self::poll`] at its delivery time.
    pub fn send(&mut self, now_us: u64, from: u32, to: u32, payload: P, reliable: bool) {
        let f = self
            .faults
            .get(&(from, to))
            .copied()
            .unwrap_or(self.default_faults);
        let jitter = if f.jitter_us > 0 {
            self.rng.below(f.jitter_us + 1)
        } else {
            0
        };
        let mut at = now_us + f.delay_us + jitter;
        if reliable {
            let tail = self.reliable_tail.entry((from, to)).or_insert(0);
            at = at.max(*tail);
            *tail = at;
            self.push(at, from, to, payload);
            return;
        }
        if self.is_cut(from, to) || self.rng.chance(f.loss) {
            self.dropped += 1;
            return;
        }
        if self.rng.chance(f.reorder) {
            at += f.delay_us.max(1_000) + self.rng.below(f.jitter_us.max(1_000) + 1);
        }
        if self.rng.chance(f.duplicate) {
            let extra = self.rng.below(f.jitter_us + 1);
            self.push(at + extra, from, to, payload.clone());
        }
        self.push(at, from, to, payload);
    }

    fn push(&mut self, at: u64, from: u32, to: u32, payload: P) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queue.push(Reverse((at, seq)));
        self.in_flight.insert(seq, InFlight { from, to, payload });
    }

    /// Everything due by `now_us`, in delivery order, as `(from, to, payload)`. Reliable messages
    /// across a partition stay queued.
    pub fn poll(&mut self, now_us: u64) -> Vec<(u32, u32, P)> {
        let mut out = Vec::new();
        let mut held = Vec::new();
        while let Some(Reverse((at, seq))) = self.queue.peek().copied() {
            if at > now_us {
                break;
            }
            self.queue.pop();
            let Some(m) = self.in_flight.remove(&seq) else {
                continue;
            };
            if self.is_cut(m.from, m.to) {
                held.push((at, seq, m));
                continue;
            }
            out.push((m.from, m.to, m.payload));
        }
        for (at, seq, m) in held {
            // Retried at the next poll under its original delivery time: a later message on the
            // same link can never get ahead of it (a new time, even 1 ms on, would let one whose
            // own time fell in between overtake it once the partition heals).
            self.queue.push(Reverse((at, seq)));
            self.in_flight.insert(seq, m);
        }
        out
    }

    /// A link between `a` and `b` died: every message in flight between them, either way, for
    /// which `on_link` says it travelled on that link, is lost (counted in `dropped`). What is
    /// sent afterwards travels as before: a new link.
    pub fn drop_between(&mut self, a: u32, b: u32, on_link: impl Fn(&P) -> bool) -> usize {
        let before = self.in_flight.len();
        self.in_flight.retain(|_, m| {
            let between = (m.from, m.to) == (a, b) || (m.from, m.to) == (b, a);
            !(between && on_link(&m.payload))
        });
        let lost = before - self.in_flight.len();
        self.dropped += lost as u64;
        lost
    }

    /// Messages still in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reliable_messages_arrive_once_and_in_order_under_faults() {
        let faults = LinkFaults {
            delay_us: 5_000,
            jitter_us: 4_000,
            loss: 0.5,
            duplicate: 0.5,
            reorder: 0.5,
        };
        let mut net = MemNetwork::new(7, faults);
        for i in 0..100u32 {
            net.send(u64::from(i) * 100, 0, 1, i, true);
        }
        let got: Vec<u32> = net.poll(1_000_000).into_iter().map(|(_, _, p)| p).collect();
        assert_eq!(
            got,
            (0..100).collect::<Vec<_>>(),
            "reliable delivery must be exactly-once, in order"
        );
    }

    #[test]
    fn unreliable_faults_happen_and_are_reproducible() {
        let faults = LinkFaults {
            delay_us: 1_000,
            jitter_us: 3_000,
            loss: 0.2,
            duplicate: 0.1,
            reorder: 0.2,
        };
        let run = |seed| {
            let mut net = MemNetwork::new(seed, faults);
            for i in 0..1_000u32 {
                net.send(u64::from(i) * 10, 0, 1, i, false);
            }
            net.poll(10_000_000)
                .into_iter()
                .map(|(_, _, p)| p)
                .collect::<Vec<_>>()
        };
        let a = run(1);
        assert_eq!(a, run(1), "same seed, same deliveries");
        assert_ne!(a, run(2));
        assert!(
            a.len() < 1_000 + 100 && a.len() > 700,
            "some loss, some duplication: {}",
            a.len()
        );
        assert!(a.windows(2).any(|w| w[0] > w[1]), "some reordering");
    }

    #[test]
    fn partitions_drop_unreliable_and_hold_reliable() {
        let mut net = MemNetwork::new(1, LinkFaults::PERFECT);
        net.set_partition(0, 1, true);
        net.send(0, 0, 1, 1u8, false);
        net.send(0, 0, 1, 2u8, true);
        assert!(net.poll(10_000).is_empty());
        net.set_partition(0, 1, false);
        let got: Vec<u8> = net.poll(20_000).into_iter().map(|(_, _, p)| p).collect();
        assert_eq!(got, vec![2]);
    }

    /// Regression (cluster simulator seed 238): a message sent on a partitioned link just before
    /// it healed, whose delivery time fell within a millisecond after the poll that held the
    /// earlier ones, was delivered before them, so a proxy removal overtook the updates before
    /// it and a stale proxy was left behind.
    #[test]
    fn held_reliable_messages_keep_their_order_after_a_partition() {
        let delay = |d| LinkFaults {
            delay_us: d,
            ..LinkFaults::PERFECT
        };
        let mut net = MemNetwork::new(1, delay(1_000));
        net.set_partition(0, 1, true);
        net.send(0, 0, 1, 1u8, true); // due at 1 ms: held by the poll at 10 ms
        assert!(net.poll(10_000).is_empty());
        net.set_faults(0, 1, delay(500));
        net.send(10_000, 0, 1, 2u8, true); // due at 10.5 ms: within 1 ms of that poll
        net.set_partition(0, 1, false);
        let got: Vec<u8> = net.poll(20_000).into_iter().map(|(_, _, p)| p).collect();
        assert_eq!(got, vec![1, 2], "a reliable link delivers in send order");
    }

    #[test]
    fn a_dead_link_loses_what_was_in_flight_on_it_and_nothing_else() {
        let mut net = MemNetwork::new(
            3,
            LinkFaults {
                delay_us: 1_000,
                ..LinkFaults::PERFECT
            },
        );
        for i in 0..4u32 {
            net.send(0, 0, 1, i, true);
            net.send(0, 1, 0, 10 + i, true);
            net.send(0, 0, 2, 20 + i, true);
        }
        assert_eq!(
            net.drop_between(1, 0, |p| p % 2 == 0),
            4,
            "the even ones were on the link"
        );
        net.send(0, 0, 1, 100, true);
        let mut got: Vec<u32> = net.poll(10_000).into_iter().map(|(_, _, p)| p).collect();
        got.sort_unstable();
        assert_eq!(got, vec![1, 3, 11, 13, 20, 21, 22, 23, 100]);
        assert_eq!(net.dropped, 4);
    }
}
