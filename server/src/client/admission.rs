//! Admission: which shard a new player plays on, or where it waits, when shards have a client
//! cap (`[cluster] clients_per_shard_max`).
//!
//! **Where the queue lives, and why.** Seats are a cluster-wide resource (a login may play on
//! any shard with room), so one authority hands them out, in one order: the master, which
//! already claims every login's account (one session per account) and keeps the player
//! directory, so it counts the players on each shard without any extra message. The queue is
//! therefore the master's: a login's account claim ([`MasterRequest::Claim`], with the shard
//! that owns its spawn point) is answered with a seat (`Granted { shard }`), a place in the
//! queue (`Queued`, sent again whenever the place moves), or `NoRoom`. The login waits on the
//! shard it connected through (its gateway: `Phase::Queued`), which tells the client
//! (`ServerControl::Queued`) and, once granted, spawns it or redirects it to the shard it was
//! given. Queues on each gateway instead would each see only their own logins, so two gateways
//! would race for the same free seat and neither order nor positions would mean anything
//! cluster-wide. A lone shard is its own master: it keeps the same [`Admission`] as a resource
//! ([`LoginQueue`]) and counts its own players.
//!
//! Seats are freed by the departures the shards report on their heartbeats, so a seat comes back
//! at most a heartbeat late (never early: no shard goes over its cap). A player a shard sent on
//! (a handoff or a cell move) whose connection there ended is reported apart (`players_sent_on`):
//! its new shard may report its arrival after that, so it keeps its seat until then, or for
//! [`limits::REDIRECT_WAIT_MS`] if it never arrives (it quit on the way). Freed at once, that seat
//! went to a waiting login and the cap was broken by one. A seat given to a login
//! whose client never arrives where it was sent is freed after
//! [`limits::ADMISSION_ARRIVAL_WAIT_MS`]. The cap is checked at login only: an avatar that walks
//! into a full shard is handed off as always (moving load is the balancer's job).
//!
//! [`Admission`] is pure: the players per shard come in as an argument, decisions go out.
//!
//! [`MasterRequest::Claim`]: zonescaler_shared::protocol::MasterRequest::Claim

use bevy_ecs::prelude::*;
use std::collections::{BTreeMap, VecDeque};
use zonescaler_shared::ShardId;
use zonescaler_shared::limits;
use zonescaler_shared::protocol::{NoRoomWhy, QueuePlace};

/// A login that asks for a seat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiter {
    /// The shard it is connected to, and its session number there.
    pub gateway: ShardId,
    pub session: u64,
    pub account: String,
    /// The shard that owns its spawn point: it plays there if that shard has room.
    pub want: ShardId,
}

/// What a login is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Play on this shard.
    Play(ShardId),
    /// Wait for room at this place.
    Queued(QueuePlace),
    /// No shard can take it.
    NoRoom(NoRoomWhy),
}

/// The caps and the login queue.
#[derive(Clone, Debug)]
pub struct Admission {
    cap: u32,
    queue_max: usize,
    /// Waiting logins, first in line first, each with the position it was last told.
    queue: VecDeque<(Waiter, u32)>,
}

impl Admission {
    /// `cap` players per shard at most, `queue_max` logins waiting at most (clamped to
    /// [`limits::LOGIN_QUEUE_MAX`]: the config is validated, this keeps a hand-built one bounded).
    pub fn new(cap: u32, queue_max: u32) -> Self {
        Self {
            cap,
            queue_max: (queue_max as usize).min(limits::LOGIN_QUEUE_MAX),
            queue: VecDeque::new(),
        }
    }

    /// Logins waiting.
    pub fn waiting(&self) -> usize {
        self.queue.len()
    }

    /// The shard a login that wants `want` plays on now, if any has room: `want` itself, else
    /// the emptiest (the lowest id among equals). `seats`: players on every shard that may take
    /// players (live ones). Players who walk across borders can leave one shard over its cap
    /// and another under it; the second one's room is not the cluster's, so nobody is seated
    /// while all shards together hold their caps' sum.
    pub fn pick(&self, want: ShardId, seats: &BTreeMap<ShardId, u32>) -> Option<ShardId> {
        let total: u64 = seats.values().map(|n| u64::from(*n)).sum();
        if total >= u64::from(self.cap) * seats.len() as u64 {
            return None;
        }
        if seats.get(&want).is_some_and(|n| *n < self.cap) {
            return Some(want);
        }
        seats
            .iter()
            .filter(|(_, n)| **n < self.cap)
            .min_by_key(|(id, n)| (**n, **id))
            .map(|(id, _)| *id)
    }

    /// A new login asks for a seat. It plays at once only if nobody waits before it (first
    /// come, first served); otherwise it joins the end of the queue, if the queue has room.
    pub fn ask(&mut self, w: Waiter, seats: &BTreeMap<ShardId, u32>) -> Verdict {
        if self.cap == 0 || seats.is_empty() {
            return Verdict::NoRoom(NoRoomWhy::NoShard);
        }
        if self.queue.is_empty()
            && let Some(shard) = self.pick(w.want, seats)
        {
            return Verdict::Play(shard);
        }
        if self.queue.len() >= self.queue_max {
            return Verdict::NoRoom(NoRoomWhy::QueueFull {
                max: self.queue_max as u32,
            });
        }
        let position = self.queue.len() as u32 + 1;
        self.queue.push_back((w, position));
        Verdict::Queued(QueuePlace {
            position,
            waiting: position,
        })
    }

    /// The waiter of `account`, if one waits: its gateway and session.
    pub fn waiting_as(&self, account: &str) -> Option<(ShardId, u64)> {
        self.queue
            .iter()
            .find(|(w, _)| w.account == account)
            .map(|(w, _)| (w.gateway, w.session))
    }

    /// A second login of a waiting account takes the first one's place in line (the session
    /// takeover rule, applied to the queue): its place, if `account` was waiting.
    pub fn replace(&mut self, w: Waiter) -> Option<QueuePlace> {
        let waiting = self.queue.len() as u32;
        let (i, slot) = self
            .queue
            .iter_mut()
            .enumerate()
            .find(|(_, (old, _))| old.account == w.account)?;
        slot.0 = w;
        Some(QueuePlace {
            position: i as u32 + 1,
            waiting,
        })
    }

    /// Session `session` of `gateway` stopped waiting (its client left): whether it was waiting.
    pub fn leave(&mut self, gateway: ShardId, session: u64) -> bool {
        let before = self.queue.len();
        self.queue
            .retain(|(w, _)| !(w.gateway == gateway && w.session == session));
        self.queue.len() != before
    }

    /// Forget every login waiting on `gateway` (it died: its clients went with it).
    pub fn forget_gateway(&mut self, gateway: ShardId) {
        self.queue.retain(|(w, _)| w.gateway != gateway);
    }

    /// Seat waiting logins, first in line first, while a shard has room, counting each seat in
    /// `seats`; then the places that moved. When no shard can ever take them (cap 0, or no live
    /// shard), every waiter is refused instead of left waiting for nothing.
    pub fn admit(&mut self, seats: &mut BTreeMap<ShardId, u32>) -> Admitted {
        let mut out = Admitted::default();
        if self.cap == 0 || seats.is_empty() {
            out.refused = self.queue.drain(..).map(|(w, _)| w).collect();
            return out;
        }
        while let Some((front, _)) = self.queue.front() {
            let Some(shard) = self.pick(front.want, seats) else {
                break;
            };
            *seats.entry(shard).or_default() += 1;
            if let Some((w, _)) = self.queue.pop_front() {
                out.seated.push((w, shard));
            }
        }
        let waiting = self.queue.len() as u32;
        for (i, (w, told)) in self.queue.iter_mut().enumerate() {
            let position = i as u32 + 1;
            if position != *told {
                *told = position;
                out.moved
                    .push((w.clone(), QueuePlace { position, waiting }));
            }
        }
        out
    }
}

/// What one [`Admission::admit`] round decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Admitted {
    /// Logins that got a seat, and on which shard.
    pub seated: Vec<(Waiter, ShardId)>,
    /// Logins still waiting whose place moved.
    pub moved: Vec<(Waiter, QueuePlace)>,
    /// Logins that can never get a seat.
    pub refused: Vec<Waiter>,
}

/// A lone shard's own admission (in a cluster the master's decides). Built from the world
/// config by the client plugin.
#[derive(Resource, Debug, Clone)]
pub struct LoginQueue(pub Admission);

#[cfg(test)]
mod tests {
    use super::*;

    fn waiter(n: u64, want: u16) -> Waiter {
        Waiter {
            gateway: ShardId(0),
            session: n,
            account: format!("p{n}"),
            want: ShardId(want),
        }
    }

    fn seats(counts: &[(u16, u32)]) -> BTreeMap<ShardId, u32> {
        counts.iter().map(|(s, n)| (ShardId(*s), *n)).collect()
    }

    #[test]
    fn a_login_plays_where_it_wants_else_where_there_is_room_else_waits_in_line() {
        let mut a = Admission::new(2, 3);
        let s = seats(&[(0, 1), (1, 2)]);
        assert_eq!(a.ask(waiter(1, 0), &s), Verdict::Play(ShardId(0)));
        assert_eq!(
            a.ask(waiter(2, 1), &s),
            Verdict::Play(ShardId(0)),
            "its own shard is full: another with room"
        );
        let full = seats(&[(0, 2), (1, 2)]);
        for n in 1..=3 {
            assert_eq!(
                a.ask(waiter(10 + u64::from(n), 0), &full),
                Verdict::Queued(QueuePlace {
                    position: n,
                    waiting: n
                })
            );
        }
        assert_eq!(
            a.ask(waiter(20, 0), &full),
            Verdict::NoRoom(NoRoomWhy::QueueFull { max: 3 }),
            "the queue is bounded"
        );
        assert_eq!(
            a.ask(waiter(21, 0), &s),
            Verdict::NoRoom(NoRoomWhy::QueueFull { max: 3 }),
            "room appeared, but three wait before it: no jumping the line"
        );
        assert_eq!(
            a.pick(ShardId(1), &seats(&[(0, 3), (1, 1)])),
            None,
            "a player walked from shard 1 to shard 0: the cluster is still full"
        );
        assert_eq!(
            a.pick(ShardId(0), &seats(&[(0, 3), (1, 0)])),
            Some(ShardId(1))
        );
    }

    #[test]
    fn waiters_are_seated_in_order_as_room_frees_and_told_when_their_place_moves() {
        let mut a = Admission::new(1, 10);
        let mut s = seats(&[(0, 1), (1, 1)]);
        for n in 1..=4 {
            assert!(matches!(a.ask(waiter(n, 1), &s), Verdict::Queued(_)));
        }
        assert_eq!(
            a.admit(&mut s),
            Admitted::default(),
            "no room, nothing moves"
        );
        assert!(a.leave(ShardId(0), 2), "p2 hangs up");
        assert!(!a.leave(ShardId(0), 2), "once");
        let r = a.admit(&mut s);
        assert!(r.seated.is_empty());
        let moved: Vec<(u64, u32)> = r
            .moved
            .iter()
            .map(|(w, p)| (w.session, p.position))
            .collect();
        assert_eq!(moved, [(3, 2), (4, 3)], "the ones behind p2 move up");
        s.insert(ShardId(1), 0);
        let r = a.admit(&mut s);
        assert_eq!(
            r.seated,
            [(waiter(1, 1), ShardId(1))],
            "the first in line gets the seat"
        );
        assert_eq!(s[&ShardId(1)], 1, "and it is counted");
        let moved: Vec<(u64, u32)> = r
            .moved
            .iter()
            .map(|(w, p)| (w.session, p.position))
            .collect();
        assert_eq!(moved, [(3, 1), (4, 2)]);
        s.insert(ShardId(0), 0);
        s.insert(ShardId(1), 0);
        let r = a.admit(&mut s);
        let seated: Vec<(u64, ShardId)> = r.seated.iter().map(|(w, s)| (w.session, *s)).collect();
        assert_eq!(
            seated,
            [(3, ShardId(1)), (4, ShardId(0))],
            "in order, where room is"
        );
        assert_eq!(a.waiting(), 0);
    }

    #[test]
    fn with_no_shard_to_take_players_logins_are_refused_at_once_and_waiters_too() {
        let mut a = Admission::new(0, 10);
        assert_eq!(
            a.ask(waiter(1, 0), &seats(&[(0, 0)])),
            Verdict::NoRoom(NoRoomWhy::NoShard),
            "cap 0"
        );
        let mut a = Admission::new(5, 10);
        assert_eq!(
            a.ask(waiter(1, 0), &BTreeMap::new()),
            Verdict::NoRoom(NoRoomWhy::NoShard),
            "no live shard"
        );
        let mut s = seats(&[(0, 5)]);
        assert!(matches!(a.ask(waiter(2, 0), &s), Verdict::Queued(_)));
        assert!(matches!(a.ask(waiter(3, 0), &s), Verdict::Queued(_)));
        s.clear(); // the only shard died
        let r = a.admit(&mut s);
        assert_eq!(r.refused, [waiter(2, 0), waiter(3, 0)]);
        assert_eq!(a.waiting(), 0);
    }

    #[test]
    fn a_second_login_of_a_waiting_account_takes_its_place() {
        let mut a = Admission::new(1, 10);
        let s = seats(&[(0, 1)]);
        a.ask(waiter(1, 0), &s);
        a.ask(waiter(2, 0), &s);
        let again = Waiter {
            session: 9,
            gateway: ShardId(3),
            ..waiter(1, 0)
        };
        assert_eq!(a.waiting_as("p1"), Some((ShardId(0), 1)));
        assert_eq!(
            a.replace(again),
            Some(QueuePlace {
                position: 1,
                waiting: 2
            })
        );
        assert_eq!(a.waiting_as("p1"), Some((ShardId(3), 9)));
        assert_eq!(a.replace(waiter(7, 0)), None, "p7 was not waiting");
        assert_eq!(a.waiting(), 2);
    }
}
