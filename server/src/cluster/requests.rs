//! A member's requests to the master that no master has confirmed yet.
//!
//! A request (a login's claim, a release, a message to route, a cell shipped, a resume's
//! locate) goes to the master over the member's one ordered session. Should the master die
//! before it heard it, the successor must get it. The master's answer to the heartbeat sent
//! after the request says it heard it ([`UnconfirmedRequests::confirmed`]); until then the
//! member keeps it and sends it again to the master it follows next
//! ([`UnconfirmedRequests::pending`]).
//!
//! A request the master answered in full is done, heartbeat answer or not
//! ([`UnconfirmedRequests::answered`]): a claim granted, taken over, refused or without room,
//! and a locate answered. Sent again, it would act a second time on a session that has moved on:
//! a claim granted on this shard whose client was redirected and plays elsewhere would, at the
//! successor, take its own player's session over and kick it (seed 4082). A queued claim is not
//! done: the master answers it again as its place moves, and a successor must queue it.

use std::collections::VecDeque;
use zonescaler_shared::protocol::{ClaimOutcome, MasterNotice, MasterRequest};

/// Requests a member keeps for a successor: a master that heard none of this many has been
/// silent for many times its silence, and the oldest go.
pub const UNCONFIRMED_REQUESTS_MAX: usize = 4_096;

/// The requests a member sent that the master may not have heard (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct UnconfirmedRequests {
    /// Each with the sequence number of the heartbeat sent after it.
    kept: VecDeque<(u64, MasterRequest)>,
}

impl UnconfirmedRequests {
    /// `req` was sent; `after` is the heartbeat that follows it.
    pub fn sent(&mut self, after: u64, req: MasterRequest) {
        if self.kept.len() >= UNCONFIRMED_REQUESTS_MAX {
            self.kept.pop_front();
        }
        self.kept.push_back((after, req));
    }

    /// The master answered heartbeat `seq`: it heard every request sent before it.
    pub fn confirmed(&mut self, seq: u64) {
        while self.kept.front().is_some_and(|(after, _)| *after <= seq) {
            self.kept.pop_front();
        }
    }

    /// A notice from the master: one that answers a request in full ends it.
    pub fn answered(&mut self, notice: &MasterNotice) {
        let (account, session, done) = match notice {
            MasterNotice::Claim {
                account,
                session,
                outcome,
            } => (
                account,
                *session,
                !matches!(outcome, ClaimOutcome::Queued(_)),
            ),
            MasterNotice::Located {
                account, session, ..
            } => (account, *session, true),
            _ => return,
        };
        if !done {
            return;
        }
        self.kept.retain(|(_, req)| match (req, notice) {
            (
                MasterRequest::Claim {
                    account: a,
                    session: s,
                    ..
                },
                MasterNotice::Claim { .. },
            )
            | (
                MasterRequest::Locate {
                    account: a,
                    session: s,
                },
                MasterNotice::Located { .. },
            ) => !(a == account && *s == session),
            _ => true,
        });
    }

    /// What a new master gets again.
    pub fn pending(&self) -> Vec<MasterRequest> {
        self.kept.iter().map(|(_, r)| r.clone()).collect()
    }

    /// All of them, leaving none (a member that takes the role over answers them itself).
    pub fn take(&mut self) -> Vec<MasterRequest> {
        std::mem::take(&mut self.kept)
            .into_iter()
            .map(|(_, r)| r)
            .collect()
    }

    pub fn len(&self) -> usize {
        self.kept.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zonescaler_shared::ShardId;
    use zonescaler_shared::protocol::QueuePlace;

    fn claim(account: &str, session: u64) -> MasterRequest {
        MasterRequest::Claim {
            account: account.into(),
            session,
            want: ShardId(1),
        }
    }

    fn answer(account: &str, session: u64, outcome: ClaimOutcome) -> MasterNotice {
        MasterNotice::Claim {
            account: account.into(),
            session,
            outcome,
        }
    }

    #[test]
    fn a_heartbeat_answer_confirms_what_was_sent_before_it() {
        let mut u = UnconfirmedRequests::default();
        u.sent(3, claim("a", 1));
        u.sent(4, claim("b", 2));
        u.confirmed(3);
        assert_eq!(u.pending(), vec![claim("b", 2)]);
        u.confirmed(4);
        assert!(u.is_empty());
    }

    #[test]
    fn a_claim_answered_in_full_is_not_sent_to_a_successor_but_a_queued_one_is() {
        let mut u = UnconfirmedRequests::default();
        u.sent(1, claim("a", 1));
        u.sent(1, claim("b", 2));
        u.sent(1, claim("c", 3));
        // Another session of the same account is a different request.
        u.answered(&answer("a", 9, ClaimOutcome::Granted { shard: ShardId(2) }));
        u.answered(&answer("a", 1, ClaimOutcome::Granted { shard: ShardId(2) }));
        u.answered(&answer(
            "b",
            2,
            ClaimOutcome::Queued(QueuePlace {
                position: 1,
                waiting: 1,
            }),
        ));
        u.answered(&answer("c", 3, ClaimOutcome::InUse));
        assert_eq!(u.pending(), vec![claim("b", 2)]);
        assert_eq!(u.take(), vec![claim("b", 2)]);
        assert!(u.is_empty());
    }

    #[test]
    fn a_located_answer_ends_its_locate_and_the_oldest_go_past_the_bound() {
        let mut u = UnconfirmedRequests::default();
        for s in 0..UNCONFIRMED_REQUESTS_MAX as u64 + 1 {
            u.sent(1, claim("x", s));
        }
        assert_eq!(u.len(), UNCONFIRMED_REQUESTS_MAX);
        assert_eq!(u.pending()[0], claim("x", 1));
        let mut u = UnconfirmedRequests::default();
        let locate = MasterRequest::Locate {
            account: "a".into(),
            session: 5,
        };
        u.sent(1, locate);
        u.answered(&MasterNotice::Located {
            account: "a".into(),
            session: 5,
            shard: Some(ShardId(2)),
            live: true,
        });
        assert!(u.is_empty());
    }
}
