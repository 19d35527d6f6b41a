//! The handoff protocol without a world: `(now_ms, message)` in, [`Effect`]s out.
//!
//! [`HandoffBook`] holds everything the protocol remembers on one shard, in both roles:
//! - as **source**, each attempt in flight (to whom, its number, when it was sent, whether it was
//!   cancelled), so it knows which answer settles which attempt, when to cancel, and how many
//!   attempts each neighbour has open; and the backoff after a refusal, so an entity left in a
//!   foreign cell is offered again when the backoff ends even if it never moves;
//! - as **target**, its answer to each attempt (accepted, or cancelled before it was taken), kept
//!   at least the handoff timeout plus [`limits::HANDOFF_RECORD_MARGIN_MS`], so a late cancel or a
//!   duplicate request meets the answer the source may already have acted on.
//!
//! Every attempt has its own number: an entity's generation + 1 when it is offered, and a refused
//! attempt's number becomes the entity's generation when it resumes ([`Effect::Resume`]), so the
//! next attempt can never reuse the number of one the target recorded as cancelled.
//!
//! The ECS adapter (the parent module) asks the world what the book cannot know (does this shard
//! own the cell, is it full, does it hold the entity already) and carries out the effects:
//! freezing, promoting, releasing and resuming entities, and sending the messages.

use std::collections::{BTreeMap, VecDeque};
use zonescaler_shared::limits;
use zonescaler_shared::protocol::{RefuseReason, ShardMessage};
use zonescaler_shared::{NetId, ShardId};

/// What the adapter must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Send `msg` to `to` on the link.
    Send(ShardId, ShardMessage),
    /// Target: take the offered entity as owned at `generation` (then the ack goes out).
    Take {
        from: ShardId,
        id: NetId,
        generation: u32,
    },
    /// Source: `to` owns the entity from `generation` on: keep a proxy, move its client.
    Release {
        id: NetId,
        to: ShardId,
        generation: u32,
    },
    /// Source: the attempt numbered `generation` is refused for good: simulate the entity again,
    /// at that generation, so the next attempt gets a new number.
    Resume {
        id: NetId,
        /// The target that refused (or left): it may still hold this shard's proxy.
        to: ShardId,
        generation: u32,
        reason: RefuseReason,
    },
    /// Source: the backoff after a refusal is over: offer the entity again if it still stands
    /// in a foreign cell.
    Recheck { id: NetId },
}

/// Why an entity cannot be offered now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotNow {
    /// An attempt for it is open already.
    InFlight,
    /// It was refused a moment ago.
    BackingOff,
    /// [`limits::HANDOFFS_IN_FLIGHT_PER_NEIGHBOUR_MAX`] attempts to that neighbour are open.
    NeighbourBusy,
}

/// One attempt this shard made, as source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attempt {
    pub to: ShardId,
    pub generation: u32,
    pub sent_ms: u64,
    pub cancel_sent: bool,
}

/// What a target answered to one attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    Accepted,
    Cancelled,
}

/// The protocol's memory on one shard. See the module docs.
#[derive(Debug)]
pub struct HandoffBook {
    timeout_ms: u64,
    keep_ms: u64,
    /// Source: the open attempt per entity.
    open: BTreeMap<NetId, Attempt>,
    /// Source: open attempts per neighbour, kept with `open` by the two functions that change it.
    open_per: BTreeMap<ShardId, usize>,
    /// Source: entities refused a moment ago, and until when they wait.
    backoff: BTreeMap<NetId, u64>,
    /// Target: the answer to each attempt, and when it was given (`order` in time order).
    answers: BTreeMap<(NetId, u32), Answer>,
    /// Target: the newest attempt accepted per entity (a duplicate of an older one is acked too).
    newest_accepted: BTreeMap<NetId, u32>,
    order: VecDeque<(u64, NetId, u32)>,
    /// Target: the newest attempt accepted per entity, kept [`ACCEPTED_KEEP_MS`] (far longer
    /// than the answers): a failover asks about a dead source's attempts seconds later
    /// (`authority::replica`), after the entity may have moved on from here.
    accepted_long: BTreeMap<NetId, (u32, ShardId)>,
    accepted_order: VecDeque<(u64, NetId, u32)>,
}

/// How long a target remembers that it took an entity at an attempt (longer than a dead
/// shard's silence and its failover).
pub const ACCEPTED_KEEP_MS: u64 = 120_000;

const _: () = assert!(ACCEPTED_KEEP_MS >= 2 * limits::SHARD_SILENCE_MS_MAX);

/// Most takes remembered that long (the oldest go first past it).
pub const ACCEPTED_LOG_MAX: usize = 262_144;

impl HandoffBook {
    /// A book for attempts answered within `timeout_ms` (the cluster's `handoff_timeout_ms`).
    pub fn new(timeout_ms: u64) -> Self {
        Self {
            timeout_ms,
            keep_ms: timeout_ms + limits::HANDOFF_RECORD_MARGIN_MS,
            open: BTreeMap::new(),
            open_per: BTreeMap::new(),
            backoff: BTreeMap::new(),
            answers: BTreeMap::new(),
            newest_accepted: BTreeMap::new(),
            order: VecDeque::new(),
            accepted_long: BTreeMap::new(),
            accepted_order: VecDeque::new(),
        }
    }

    /// Attempts open as source, to every neighbour.
    pub fn in_flight(&self) -> usize {
        self.open.len()
    }

    /// Attempts open as source to `to`.
    pub fn in_flight_to(&self, to: ShardId) -> usize {
        self.open_per.get(&to).copied().unwrap_or(0)
    }

    /// The entities with an attempt open, in id order (an entity despawned while frozen keeps
    /// its attempt until the answer).
    pub fn open_ids(&self) -> impl Iterator<Item = NetId> + '_ {
        self.open.keys().copied()
    }

    /// The open attempt for `id`, if any.
    pub fn attempt(&self, id: NetId) -> Option<&Attempt> {
        self.open.get(&id)
    }

    /// Answers remembered as target.
    pub fn records(&self) -> usize {
        self.answers.len()
    }

    /// Whether `id` may be offered to `to` now.
    pub fn may_offer(&self, now_ms: u64, id: NetId, to: ShardId) -> Result<(), NotNow> {
        if self.open.contains_key(&id) {
            return Err(NotNow::InFlight);
        }
        if self.backoff.get(&id).is_some_and(|until| now_ms < *until) {
            return Err(NotNow::BackingOff);
        }
        if self.in_flight_to(to) >= limits::HANDOFFS_IN_FLIGHT_PER_NEIGHBOUR_MAX {
            return Err(NotNow::NeighbourBusy);
        }
        Ok(())
    }

    /// Source, step 1: open an attempt to hand `id` (now at `generation`) to `to`. Its number,
    /// `generation + 1`, goes in the request.
    pub fn offer(
        &mut self,
        now_ms: u64,
        id: NetId,
        to: ShardId,
        generation: u32,
    ) -> Result<u32, NotNow> {
        self.may_offer(now_ms, id, to)?;
        let number = generation.wrapping_add(1);
        self.backoff.remove(&id);
        self.open.insert(
            id,
            Attempt {
                to,
                generation: number,
                sent_ms: now_ms,
                cancel_sent: false,
            },
        );
        *self.open_per.entry(to).or_default() += 1;
        Ok(number)
    }

    /// Close `id`'s attempt if `from` and `generation` name it.
    fn settle(&mut self, id: NetId, from: ShardId, generation: u32) -> bool {
        let matches = self
            .open
            .get(&id)
            .is_some_and(|a| a.to == from && a.generation == generation);
        if matches {
            self.open.remove(&id);
            if let Some(n) = self.open_per.get_mut(&from) {
                *n -= 1;
                if *n == 0 {
                    self.open_per.remove(&from);
                }
            }
        }
        matches
    }

    /// Source, step 3: `from` took `id` at `generation`. `None` when that names no open attempt
    /// (a duplicate, or the answer to an attempt settled already): it changes nothing.
    pub fn on_ack(&mut self, id: NetId, from: ShardId, generation: u32) -> Option<Effect> {
        self.settle(id, from, generation)
            .then_some(Effect::Release {
                id,
                to: from,
                generation,
            })
    }

    /// Source, step 4: `from` will never take `id` at `generation`.
    pub fn on_refuse(
        &mut self,
        now_ms: u64,
        id: NetId,
        from: ShardId,
        generation: u32,
        reason: RefuseReason,
    ) -> Option<Effect> {
        if !self.settle(id, from, generation) {
            return None;
        }
        self.backoff.insert(id, now_ms + limits::HANDOFF_BACKOFF_MS);
        Some(Effect::Resume {
            id,
            to: from,
            generation,
            reason,
        })
    }

    /// Close `id`'s attempt to `to` numbered `generation` without an answer (failover settled
    /// it: see `authority::replica`). False if that names no open attempt.
    pub fn close(&mut self, id: NetId, to: ShardId, generation: u32) -> bool {
        self.settle(id, to, generation)
    }

    /// Entities this shard took from `from` (within [`ACCEPTED_KEEP_MS`], the newest take of
    /// each): `(entity, attempt number)`. What a failover's adopter must not promote from the
    /// dead `from`'s replica, which may not have heard of the handoff.
    pub fn taken_from(&self, from: ShardId) -> Vec<(NetId, u32)> {
        (self.accepted_long.iter())
            .filter(|(_, (_, f))| *f == from)
            .map(|(id, (g, _))| (*id, *g))
            .collect()
    }

    /// The attempts open to `to`: `(entity, attempt number)`.
    pub fn attempts_to(&self, to: ShardId) -> Vec<(NetId, u32)> {
        (self.open.iter())
            .filter(|(_, a)| a.to == to)
            .map(|(id, a)| (*id, a.generation))
            .collect()
    }

    /// Failover: the attempt for `id`, open to a dead shard, is now the adopter `to`'s to
    /// answer (it holds the dead shard's replica). Never cancelled on a timeout: the adopter
    /// always answers, once it holds the map that made it the adopter.
    pub fn retarget(&mut self, now_ms: u64, id: NetId, to: ShardId) -> Option<u32> {
        let a = *self.open.get(&id)?;
        self.settle(id, a.to, a.generation);
        self.inherit(now_ms, id, to, a.generation);
        Some(a.generation)
    }

    /// Failover: this shard promoted a dead shard's replica of `id`, which was frozen there in
    /// an attempt numbered `generation` to `to`: the attempt is this shard's now, its cancel
    /// already sent (the caller sends it), so `to`'s answer settles it.
    pub fn inherit(&mut self, now_ms: u64, id: NetId, to: ShardId, generation: u32) {
        self.open.insert(
            id,
            Attempt {
                to,
                generation,
                sent_ms: now_ms,
                cancel_sent: true,
            },
        );
        *self.open_per.entry(to).or_default() += 1;
    }

    /// The neighbours that have attempts of this shard's open.
    pub fn open_to(&self) -> impl Iterator<Item = ShardId> + '_ {
        self.open_per.keys().copied()
    }

    /// Source: `to` left the cluster (drained) and will never answer: each attempt still open
    /// to it is refused for good, as if it had said so (`NotOwner`). Safe because the master
    /// lets a shard go only once it owns no cell and no entity, and from then on it refuses
    /// every request: it took none of these.
    pub fn on_departed(&mut self, now_ms: u64, to: ShardId) -> Vec<Effect> {
        let open: Vec<(NetId, u32)> = (self.open.iter())
            .filter(|(_, a)| a.to == to)
            .map(|(id, a)| (*id, a.generation))
            .collect();
        open.into_iter()
            .filter_map(|(id, g)| self.on_refuse(now_ms, id, to, g, RefuseReason::NotOwner))
            .collect()
    }

    /// Time passes: cancel attempts unanswered for the timeout (once each; the entity stays
    /// frozen until the answer to the cancel), end backoffs, forget answers past their keep.
    pub fn poll(&mut self, now_ms: u64) -> Vec<Effect> {
        let mut out = Vec::new();
        for (id, a) in &mut self.open {
            if !a.cancel_sent && now_ms.saturating_sub(a.sent_ms) > self.timeout_ms {
                a.cancel_sent = true;
                out.push(Effect::Send(
                    a.to,
                    ShardMessage::HandoffCancel {
                        id: *id,
                        generation: a.generation,
                    },
                ));
            }
        }
        self.backoff.retain(|id, until| {
            let over = now_ms >= *until;
            if over {
                out.push(Effect::Recheck { id: *id });
            }
            !over
        });
        while let Some(&(at, id, generation)) = self.order.front() {
            if now_ms.saturating_sub(at) < self.keep_ms {
                break;
            }
            self.order.pop_front();
            self.answers.remove(&(id, generation));
            if self.newest_accepted.get(&id) == Some(&generation) {
                self.newest_accepted.remove(&id);
            }
        }
        while let Some(&(at, id, generation)) = self.accepted_order.front() {
            if now_ms.saturating_sub(at) < ACCEPTED_KEEP_MS {
                break;
            }
            self.accepted_order.pop_front();
            if self
                .accepted_long
                .get(&id)
                .is_some_and(|(g, _)| *g == generation)
            {
                self.accepted_long.remove(&id);
            }
        }
        out
    }

    fn record(
        &mut self,
        now_ms: u64,
        (from, id): (ShardId, NetId),
        generation: u32,
        answer: Answer,
    ) {
        self.answers.insert((id, generation), answer);
        self.order.push_back((now_ms, id, generation));
        if answer == Answer::Accepted {
            let newest = self.newest_accepted.entry(id).or_insert(generation);
            *newest = (*newest).max(generation);
            if self.accepted_order.len() >= ACCEPTED_LOG_MAX
                && let Some((_, old, g)) = self.accepted_order.pop_front()
                && self.accepted_long.get(&old).is_some_and(|(n, _)| *n == g)
            {
                self.accepted_long.remove(&old);
            }
            let long = self.accepted_long.entry(id).or_insert((generation, from));
            if generation >= long.0 {
                *long = (generation, from);
            }
            self.accepted_order.push_back((now_ms, id, generation));
        }
    }

    fn accepted(&self, id: NetId, generation: u32) -> bool {
        let at_least = |g: Option<&u32>| g.is_some_and(|g| *g >= generation);
        at_least(self.newest_accepted.get(&id))
            || at_least(self.accepted_long.get(&id).map(|(g, _)| g))
    }

    /// Target, step 2: `from` offers `id` at `generation`; `verdict` is the world's answer (does
    /// this shard own the cell under the request's epoch, has it room, does it not hold the
    /// entity already). A repeated attempt gets the answer it got before, whatever the world
    /// says now.
    pub fn on_request(
        &mut self,
        now_ms: u64,
        from: ShardId,
        id: NetId,
        generation: u32,
        verdict: Result<(), RefuseReason>,
    ) -> Vec<Effect> {
        let refuse = |reason| {
            vec![Effect::Send(
                from,
                ShardMessage::HandoffRefuse {
                    id,
                    generation,
                    reason,
                },
            )]
        };
        if self.answers.get(&(id, generation)) == Some(&Answer::Cancelled) {
            return refuse(RefuseReason::Cancelled);
        }
        if self.accepted(id, generation) {
            return vec![Effect::Send(
                from,
                ShardMessage::HandoffAck { id, generation },
            )];
        }
        if let Err(reason) = verdict {
            return refuse(reason);
        }
        if self.answers.len() >= limits::HANDOFF_RECORDS_MAX {
            // Every record is younger than its keep: taking the entity without one would let a
            // late cancel be refused after this shard took it.
            return refuse(RefuseReason::Full);
        }
        self.record(now_ms, (from, id), generation, Answer::Accepted);
        vec![
            Effect::Take {
                from,
                id,
                generation,
            },
            Effect::Send(from, ShardMessage::HandoffAck { id, generation }),
        ]
    }

    /// Target: the source gave up waiting for its answer to `generation`. The same answer as to
    /// the request if this shard took it; otherwise it never will (recorded).
    pub fn on_cancel(&mut self, now_ms: u64, from: ShardId, id: NetId, generation: u32) -> Effect {
        if self.accepted(id, generation) {
            return Effect::Send(from, ShardMessage::HandoffAck { id, generation });
        }
        if !self.answers.contains_key(&(id, generation)) {
            self.record(now_ms, (from, id), generation, Answer::Cancelled);
        }
        Effect::Send(
            from,
            ShardMessage::HandoffRefuse {
                id,
                generation,
                reason: RefuseReason::Cancelled,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: u64 = 2_000;
    const A: ShardId = ShardId(0);
    const B: ShardId = ShardId(1);
    const C: ShardId = ShardId(2);

    fn id(n: u64) -> NetId {
        NetId(n)
    }

    /// The message a target's effects send back, if exactly one.
    fn reply(effects: &[Effect]) -> ShardMessage {
        let sent: Vec<&ShardMessage> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::Send(_, m) => Some(m),
                _ => None,
            })
            .collect();
        assert_eq!(sent.len(), 1, "one reply: {effects:?}");
        sent[0].clone()
    }

    #[test]
    fn an_accepted_request_is_taken_then_acked_and_the_ack_releases_the_source() {
        let (mut src, mut dst) = (HandoffBook::new(TIMEOUT), HandoffBook::new(TIMEOUT));
        let g = src.offer(0, id(1), B, 4).expect("free to offer");
        assert_eq!(g, 5, "the attempt's number is the generation + 1");
        let fx = dst.on_request(10, A, id(1), g, Ok(()));
        assert_eq!(
            fx[0],
            Effect::Take {
                from: A,
                id: id(1),
                generation: 5
            },
            "the target takes the entity before it acks"
        );
        assert_eq!(
            reply(&fx),
            ShardMessage::HandoffAck {
                id: id(1),
                generation: 5
            }
        );
        assert_eq!(
            src.on_ack(id(1), B, 5),
            Some(Effect::Release {
                id: id(1),
                to: B,
                generation: 5
            })
        );
        assert_eq!(src.in_flight(), 0, "the attempt is closed");
        assert_eq!(
            src.on_ack(id(1), B, 5),
            None,
            "a second ack changes nothing"
        );
    }

    #[test]
    fn attempts_open_to_a_departed_shard_are_refused_and_others_left_alone() {
        let mut src = HandoffBook::new(TIMEOUT);
        let g1 = src.offer(0, id(1), B, 0).unwrap();
        let g2 = src.offer(0, id(2), B, 6).unwrap();
        let g3 = src.offer(0, id(3), C, 2).unwrap();
        assert_eq!(src.open_to().collect::<Vec<_>>(), vec![B, C]);
        let fx = src.on_departed(50, B);
        assert_eq!(
            fx,
            vec![
                Effect::Resume {
                    id: id(1),
                    to: B,
                    generation: g1,
                    reason: RefuseReason::NotOwner
                },
                Effect::Resume {
                    id: id(2),
                    to: B,
                    generation: g2,
                    reason: RefuseReason::NotOwner
                },
            ],
            "B's attempts resume at their numbers"
        );
        assert_eq!(src.in_flight_to(B), 0);
        assert_eq!(
            src.attempt(id(3)).map(|a| a.generation),
            Some(g3),
            "C's is open"
        );
        assert_eq!(
            src.may_offer(50, id(1), C),
            Err(NotNow::BackingOff),
            "and backs off as after any refusal"
        );
        assert_eq!(src.on_ack(id(1), B, g1), None, "a late ack changes nothing");
    }

    #[test]
    fn a_retry_after_a_cancelled_attempt_gets_a_new_number_and_is_accepted() {
        let (mut src, mut dst) = (HandoffBook::new(TIMEOUT), HandoffBook::new(TIMEOUT));
        let g1 = src.offer(0, id(7), B, 0).unwrap();
        // The request is slow; the source cancels after the timeout.
        let fx = src.poll(TIMEOUT + 1);
        let cancel = reply(&fx);
        assert_eq!(
            cancel,
            ShardMessage::HandoffCancel {
                id: id(7),
                generation: g1
            }
        );
        let answer = dst.on_cancel(TIMEOUT + 5, A, id(7), g1);
        let Effect::Send(_, ShardMessage::HandoffRefuse { reason, .. }) = answer else {
            panic!("a cancel before the request is refused: {answer:?}");
        };
        // The slow request arrives after the cancel: refused too, as promised.
        let late = dst.on_request(TIMEOUT + 6, A, id(7), g1, Ok(()));
        assert!(matches!(
            reply(&late),
            ShardMessage::HandoffRefuse {
                reason: RefuseReason::Cancelled,
                ..
            }
        ));
        let resumed = src.on_refuse(TIMEOUT + 10, id(7), B, g1, reason).unwrap();
        let Effect::Resume { generation, .. } = resumed else {
            panic!("{resumed:?}");
        };
        assert_eq!(
            generation, g1,
            "the entity resumes at the refused attempt's number"
        );
        let later = TIMEOUT + 10 + limits::HANDOFF_BACKOFF_MS;
        assert!(src.poll(later).contains(&Effect::Recheck { id: id(7) }));
        let g2 = src.offer(later, id(7), B, generation).unwrap();
        assert_ne!(g2, g1, "the retry does not reuse the cancelled number");
        let fx = dst.on_request(later + 5, A, id(7), g2, Ok(()));
        assert_eq!(
            reply(&fx),
            ShardMessage::HandoffAck {
                id: id(7),
                generation: g2
            },
            "the retry is taken"
        );
    }

    #[test]
    fn a_late_cancel_meets_the_answer_even_after_many_other_handoffs() {
        let mut dst = HandoffBook::new(TIMEOUT);
        dst.on_request(0, A, id(1), 3, Ok(()));
        // More answers than any count-based memory would keep, all within the keep time.
        for n in 0..(limits::HANDOFF_RECORDS_MAX as u64 - 1) {
            dst.on_request(1, A, id(100 + n), 1, Ok(()));
        }
        dst.poll(TIMEOUT + 1);
        assert_eq!(
            dst.on_cancel(TIMEOUT + 2, A, id(1), 3),
            Effect::Send(
                A,
                ShardMessage::HandoffAck {
                    id: id(1),
                    generation: 3
                }
            ),
            "the target took it, so a late cancel is acked, never refused"
        );
        // With the memory full of young answers, a new attempt is refused rather than taken
        // without a record.
        let fx = dst.on_request(3, A, id(99_999_999), 1, Ok(()));
        assert!(matches!(
            reply(&fx),
            ShardMessage::HandoffRefuse {
                reason: RefuseReason::Full,
                ..
            }
        ));
    }

    #[test]
    fn answers_are_forgotten_only_after_the_timeout_and_margin() {
        let mut dst = HandoffBook::new(TIMEOUT);
        dst.on_request(0, A, id(1), 1, Ok(()));
        dst.poll(TIMEOUT + limits::HANDOFF_RECORD_MARGIN_MS - 1);
        assert_eq!(dst.records(), 1, "kept for the timeout plus the margin");
        dst.poll(TIMEOUT + limits::HANDOFF_RECORD_MARGIN_MS);
        assert_eq!(dst.records(), 0, "then forgotten, so memory stays bounded");
    }

    #[test]
    fn a_duplicate_request_gets_the_first_answer_whatever_the_world_says_now() {
        let mut dst = HandoffBook::new(TIMEOUT);
        dst.on_request(0, A, id(1), 2, Ok(()));
        let fx = dst.on_request(5, A, id(1), 2, Err(RefuseReason::Conflict));
        assert_eq!(
            fx,
            vec![Effect::Send(
                A,
                ShardMessage::HandoffAck {
                    id: id(1),
                    generation: 2
                }
            )],
            "acked again and not taken twice"
        );
    }

    #[test]
    fn a_refused_entity_is_rechecked_when_its_backoff_ends_without_moving() {
        let mut src = HandoffBook::new(TIMEOUT);
        let g = src.offer(0, id(3), B, 0).unwrap();
        src.on_refuse(10, id(3), B, g, RefuseReason::NotOwner)
            .unwrap();
        assert_eq!(
            src.may_offer(11, id(3), B),
            Err(NotNow::BackingOff),
            "not offered again at once"
        );
        assert!(src.poll(10 + limits::HANDOFF_BACKOFF_MS - 1).is_empty());
        assert_eq!(
            src.poll(10 + limits::HANDOFF_BACKOFF_MS),
            vec![Effect::Recheck { id: id(3) }],
            "the adapter is told to look at it again"
        );
        assert!(src.poll(10_000).is_empty(), "once");
    }

    #[test]
    fn in_flight_is_counted_per_neighbour_and_a_busy_one_does_not_block_the_others() {
        let mut src = HandoffBook::new(TIMEOUT);
        for n in 0..limits::HANDOFFS_IN_FLIGHT_PER_NEIGHBOUR_MAX as u64 {
            src.offer(0, id(n), B, 0).unwrap();
        }
        let next = id(1 << 40);
        assert_eq!(src.offer(0, next, B, 0), Err(NotNow::NeighbourBusy));
        assert_eq!(src.offer(0, next, C, 0), Ok(1), "another neighbour is free");
        assert_eq!(
            src.in_flight_to(B),
            limits::HANDOFFS_IN_FLIGHT_PER_NEIGHBOUR_MAX
        );
        assert_eq!(src.in_flight_to(C), 1);
        // Every answer closes its attempt, whether or not the entity still exists on the source.
        src.on_refuse(1, id(0), B, 1, RefuseReason::Full).unwrap();
        src.on_ack(id(1), B, 1).unwrap();
        assert_eq!(
            src.in_flight_to(B),
            limits::HANDOFFS_IN_FLIGHT_PER_NEIGHBOUR_MAX - 2
        );
        assert_eq!(src.offer(1, next, B, 0), Err(NotNow::InFlight));
    }

    #[test]
    fn an_answer_from_the_wrong_shard_or_attempt_settles_nothing() {
        let mut src = HandoffBook::new(TIMEOUT);
        let g = src.offer(0, id(1), B, 0).unwrap();
        assert_eq!(src.on_ack(id(1), C, g), None, "from another shard");
        assert_eq!(src.on_ack(id(1), B, g + 1), None, "another attempt");
        assert_eq!(src.on_refuse(1, id(1), B, g + 1, RefuseReason::Full), None);
        assert_eq!(src.in_flight(), 1);
    }

    #[test]
    fn a_cancel_is_sent_once_and_the_entity_stays_frozen_until_answered() {
        let mut src = HandoffBook::new(TIMEOUT);
        src.offer(0, id(1), B, 0).unwrap();
        assert!(src.poll(TIMEOUT).is_empty(), "not before the timeout");
        assert_eq!(src.poll(TIMEOUT + 1).len(), 1);
        assert!(src.poll(TIMEOUT * 10).is_empty(), "once");
        assert_eq!(
            src.in_flight(),
            1,
            "a bare timeout never resumes the entity"
        );
    }

    #[test]
    fn a_failover_retargets_an_attempt_and_an_inherited_one_is_settled_by_its_answer() {
        let mut src = HandoffBook::new(TIMEOUT);
        let g = src.offer(0, id(1), B, 4).expect("free");
        // B died; C adopted it: the attempt is C's to answer, and never cancelled by time.
        assert_eq!(src.retarget(10, id(1), C), Some(g));
        assert_eq!(src.in_flight_to(B), 0);
        assert_eq!(src.attempts_to(C), vec![(id(1), g)]);
        assert!(
            src.poll(10 + 10 * TIMEOUT).is_empty(),
            "no cancel of a retargeted attempt"
        );
        assert_eq!(
            src.on_ack(id(1), B, g),
            None,
            "the dead target's late ack settles nothing"
        );
        assert!(matches!(
            src.on_ack(id(1), C, g),
            Some(Effect::Release { .. })
        ));
        // The adopter inherits the dead source's attempt to B: B's answer settles it.
        let mut adopter = HandoffBook::new(TIMEOUT);
        adopter.inherit(0, id(2), B, 7);
        assert!(matches!(
            adopter.on_refuse(5, id(2), B, 7, RefuseReason::Cancelled),
            Some(Effect::Resume { .. })
        ));
    }

    #[test]
    fn a_target_remembers_what_it_took_long_after_the_answers_keep() {
        let mut dst = HandoffBook::new(TIMEOUT);
        dst.on_request(0, A, id(1), 5, Ok(()));
        // Well past the answers' keep: a failover's cancel for that attempt is still acked.
        let later = TIMEOUT + limits::HANDOFF_RECORD_MARGIN_MS + 1;
        dst.poll(later);
        assert_eq!(dst.records(), 0, "the answer itself is forgotten");
        assert_eq!(
            dst.on_cancel(later, C, id(1), 5),
            Effect::Send(
                C,
                ShardMessage::HandoffAck {
                    id: id(1),
                    generation: 5
                }
            )
        );
        dst.poll(later + ACCEPTED_KEEP_MS);
        assert!(matches!(
            dst.on_cancel(later + ACCEPTED_KEEP_MS, C, id(1), 5),
            Effect::Send(_, ShardMessage::HandoffRefuse { .. })
        ));
    }
}
