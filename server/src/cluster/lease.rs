//! A shard's ownership lease: it simulates its cells only while the master keeps answering its
//! heartbeats, so a shard cut off from the master stops by itself before the master gives its
//! cells to anyone else.
//!
//! Each heartbeat is numbered ([`ShardLoad::seq`](zonescaler_shared::protocol::ShardLoad)) and
//! the master answers the ones it hears from a member with `MasterNotice::Lease { seq,
//! lease_ms }`. The lease then runs to `lease_ms` after this shard *sent* that heartbeat, by its
//! own monotonic clock. The master hears a heartbeat after it was sent and declares a shard dead
//! only its silence (`[cluster] shard_silence_ms`) after the last one it heard; the lease it
//! grants is two thirds of that ([`lease_ms_for`]), so by then the shard has stopped simulating:
//! never two owners of a cell, whatever the network does with the heartbeats and their answers.
//! Until the first answer the lease is the shortest any master grants (formation just ended).
//!
//! - **Holds**: simulate.
//! - **Lapsed**: no answer for a while (the master is slow, or unreachable): do not simulate,
//!   keep networking and heartbeating; a late answer renews it and the shard goes on.
//! - **Lost**: lapsed for three times the master's silence more ([`GIVE_UP_SILENCES`]), or the
//!   master said `Fenced`: the master has given its cells away, or no master has been elected
//!   (`cluster::election`) in all that time. The shard stops; restarted, it joins anew. While
//!   the lease is lapsed an election may run: a new master's answers renew it as the old one's
//!   did.
//! - An answer with a lease of 0 (a master that lost its majority) renews nothing: it only says
//!   the master is there (`cluster::election`).
//!
//! Pure: the clock comes in with every call.
//!
//! [`lease_ms_for`]: zonescaler_shared::limits::lease_ms_for

use std::collections::VecDeque;
use zonescaler_shared::limits;

/// Heartbeats remembered while unanswered: more than a lease's worth, so an answer that comes
/// back at all finds its send time.
const SENT_REMEMBERED: usize = (limits::SHARD_SILENCE_MS_MAX / limits::HEARTBEAT_MS) as usize * 2;

/// The lease before the master's first answer: the shortest any master grants.
const FIRST_LEASE_MS: u64 = limits::lease_ms_for(limits::SHARD_SILENCE_MS_MIN);

/// How many of the master's silences a lapsed lease waits, past the first, for a master (the
/// old one, or one elected meanwhile) to answer before the shard gives up: elections start a
/// silence after the master was last heard and take a fraction of one, or half a silence more
/// per candidate in line that is dead too.
pub const GIVE_UP_SILENCES: u64 = 3;

/// What the lease allows now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseState {
    Holds,
    /// Since this many ms: simulation waits for the master's answer.
    Lapsed {
        for_ms: u64,
    },
    /// The shard must stop: the master fenced it, or it has been cut off so long that it surely
    /// will have.
    Lost(LostWhy),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LostWhy {
    Fenced,
    Silent { for_ms: u64 },
}

impl std::fmt::Display for LostWhy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Fenced => f.write_str(
                "the master declared this shard dead and gave its cells to others (fenced)",
            ),
            Self::Silent { for_ms } => write!(
                f,
                "no answer from the master for {for_ms} ms: its cells are others' by now"
            ),
        }
    }
}

/// A shard's lease (not the master's own: it is the authority).
#[derive(Debug)]
pub struct Lease {
    next_seq: u64,
    /// Heartbeats sent and not answered yet: (seq, sent at), oldest first.
    sent: VecDeque<(u64, u64)>,
    until_ms: u64,
    /// The lease the master granted last.
    granted_ms: u64,
    fenced: bool,
}

impl Lease {
    /// A lease that holds from `now_ms` for a lease's length: the cluster formed (the master's
    /// map reached this shard) just now.
    pub fn new(now_ms: u64) -> Self {
        Self {
            next_seq: 1,
            sent: VecDeque::new(),
            until_ms: now_ms + FIRST_LEASE_MS,
            granted_ms: FIRST_LEASE_MS,
            fenced: false,
        }
    }

    /// The number the next heartbeat will carry.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// A heartbeat goes out now: its number.
    pub fn sent(&mut self, now_ms: u64) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        if self.sent.len() >= SENT_REMEMBERED {
            self.sent.pop_front();
        }
        self.sent.push_back((seq, now_ms));
        seq
    }

    /// The master answered heartbeat `seq` with a lease of `lease_ms`. An answer to one it does
    /// not remember (far too old, or never sent) renews nothing.
    pub fn answered(&mut self, seq: u64, lease_ms: u64) {
        while let Some(&(s, at)) = self.sent.front() {
            if s > seq {
                break;
            }
            self.sent.pop_front();
            if s == seq && lease_ms > 0 {
                self.until_ms = self.until_ms.max(at + lease_ms);
                self.granted_ms = lease_ms;
            }
        }
    }

    /// The master said `Fenced`.
    pub fn fenced(&mut self) {
        self.fenced = true;
    }

    pub fn state(&self, now_ms: u64) -> LeaseState {
        if self.fenced {
            return LeaseState::Lost(LostWhy::Fenced);
        }
        if now_ms < self.until_ms {
            return LeaseState::Holds;
        }
        let for_ms = now_ms - self.until_ms;
        // The master's silence is half again the lease it grants.
        if for_ms >= GIVE_UP_SILENCES * (self.granted_ms * 3 / 2) {
            LeaseState::Lost(LostWhy::Silent {
                for_ms: now_ms - (self.until_ms - self.granted_ms),
            })
        } else {
            LeaseState::Lapsed { for_ms }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use limits::{HEARTBEAT_MS, SHARD_DEAD_AFTER_MS, SHARD_LEASE_MS};

    #[test]
    fn answered_heartbeats_keep_it_and_it_runs_from_when_the_heartbeat_was_sent() {
        let mut l = Lease::new(0);
        assert_eq!(l.state(FIRST_LEASE_MS - 1), LeaseState::Holds);
        assert_eq!(
            l.state(FIRST_LEASE_MS),
            LeaseState::Lapsed { for_ms: 0 },
            "before the first answer: the shortest lease any master grants"
        );
        let s1 = l.sent(1_000);
        let s2 = l.sent(1_200);
        // The answer to the first arrives late, at 2 500: the lease counts from 1 000, not 2 500.
        l.answered(s1, SHARD_LEASE_MS);
        assert_eq!(l.state(1_000 + SHARD_LEASE_MS - 1), LeaseState::Holds);
        assert_eq!(
            l.state(1_000 + SHARD_LEASE_MS),
            LeaseState::Lapsed { for_ms: 0 }
        );
        // A late answer to a later heartbeat renews a lapsed lease.
        l.answered(s2, SHARD_LEASE_MS);
        assert_eq!(l.state(1_000 + SHARD_LEASE_MS), LeaseState::Holds);
        assert_eq!(
            l.state(1_200 + SHARD_LEASE_MS + 5),
            LeaseState::Lapsed { for_ms: 5 }
        );
    }

    #[test]
    fn an_old_or_repeated_answer_never_moves_the_lease_back_or_forward_wrongly() {
        let mut l = Lease::new(0);
        let s1 = l.sent(100);
        let s2 = l.sent(300);
        l.answered(s2, SHARD_LEASE_MS);
        l.answered(s1, SHARD_LEASE_MS); // out of order: forgotten already, renews nothing
        assert_eq!(l.state(300 + SHARD_LEASE_MS - 1), LeaseState::Holds);
        assert_eq!(
            l.state(300 + SHARD_LEASE_MS),
            LeaseState::Lapsed { for_ms: 0 }
        );
        l.answered(999, SHARD_LEASE_MS); // never sent
        assert_eq!(
            l.state(300 + SHARD_LEASE_MS),
            LeaseState::Lapsed { for_ms: 0 }
        );
    }

    #[test]
    fn a_shard_cut_off_stops_before_the_master_can_declare_it_dead() {
        // The shard heartbeats every HEARTBEAT_MS; the master hears the one sent at `last`
        // (at `last` or later) and nothing after. The master declares it dead no sooner than
        // its silence after hearing it; the shard must have stopped simulating a third of the
        // silence before, at every silence a master may be set to.
        for silence in [
            limits::SHARD_SILENCE_MS_MIN,
            SHARD_DEAD_AFTER_MS,
            limits::SHARD_SILENCE_MS_MAX,
        ] {
            let lease = limits::lease_ms_for(silence);
            let mut l = Lease::new(0);
            let mut t = 0;
            let mut last = 0;
            while t < 4 * silence {
                let seq = l.sent(t);
                if t <= silence {
                    l.answered(seq, lease);
                    last = t;
                }
                t += HEARTBEAT_MS;
            }
            let verdict = last + silence;
            let first_lapsed = (0..=verdict)
                .find(|&now| l.state(now) != LeaseState::Holds)
                .expect("lapses before the verdict");
            assert!(
                first_lapsed + silence / 3 <= verdict,
                "silence {silence}: lapsed at {first_lapsed} ms, the master's verdict at {verdict} ms"
            );
            assert!(
                matches!(l.state(verdict - 1), LeaseState::Lapsed { .. }),
                "silence {silence}: still waiting for an answer until the verdict"
            );
            assert!(
                matches!(
                    l.state(last + lease + GIVE_UP_SILENCES * (lease * 3 / 2) - 1),
                    LeaseState::Lapsed { .. }
                ),
                "silence {silence}: waits for an election"
            );
            assert!(
                matches!(
                    l.state(last + lease + GIVE_UP_SILENCES * (lease * 3 / 2)),
                    LeaseState::Lost(LostWhy::Silent { .. })
                ),
                "silence {silence}: gives up once no master answered for that long"
            );
        }
    }

    #[test]
    fn an_answer_without_a_lease_renews_nothing() {
        let mut l = Lease::new(0);
        let s = l.sent(100);
        l.answered(s, 0);
        assert_eq!(l.state(FIRST_LEASE_MS), LeaseState::Lapsed { for_ms: 0 });
        let s = l.sent(FIRST_LEASE_MS + 10);
        l.answered(s, SHARD_LEASE_MS);
        assert_eq!(l.state(FIRST_LEASE_MS + 20), LeaseState::Holds);
    }

    #[test]
    fn fenced_is_final() {
        let mut l = Lease::new(0);
        let s = l.sent(10);
        l.fenced();
        l.answered(s, SHARD_LEASE_MS);
        assert_eq!(l.state(20), LeaseState::Lost(LostWhy::Fenced));
    }
}
