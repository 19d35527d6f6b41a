//! Who holds the master role: a successor is elected when the master falls silent, and only
//! with a majority of the members behind it, so a partition never makes two masters.
//!
//! Behind one small interface, [`MasterElection`], so that a coordinator service (etcd, for
//! deployments over several machines) can take its place; [`QuorumElection`] is the one built in,
//! a pure state machine over the cluster's own links. The runtime feeds it the clock, what it
//! hears from the master, and the election messages; it answers with messages to send and with
//! the outcome.
//!
//! **Terms.** The shard that formed the cluster is the master of term 0. A member that has not
//! heard the master (its answers to heartbeats, [`MasterElection::heard_master`]) for the
//! silence (`[cluster] shard_silence_ms`) may stand for the next term: the first in line is the
//! lowest-id member it can reach, the others stand half a silence later each, in id order, should
//! the first not win. A member that hears the candidacy of one ahead of it (newer state, or the
//! same and a lower id) lets that one stand alone next time, once per candidate and vacancy, so
//! that two candidates split by a vote do not stand together again. A member grants one vote per
//! term, and only
//! - to a term newer than the one it follows,
//! - while it has not heard its master for the silence itself (a member that still hears a live
//!   master never helps depose it),
//! - to a candidate holding the master's state ([`Standby`](zonescaler_shared::protocol::Standby)
//!   version) and map (epoch) at least as new as its own: the successor is the member with the
//!   newest state, as the issue asks ("the lowest id holding the newest epoch").
//!
//! A candidate with the votes of a majority of the members (the last membership it heard of, the
//! silent master included) wins, says so to every member (`Elected`), and takes over the role.
//!
//! **Never two masters.** A master acts (declares deaths, pushes maps, seats players) only while
//! a majority of the members, itself included, *promised* it recently: a member's heartbeat names
//! the newest heartbeat the master answered (`ShardLoad::lease_seq`), and a member never votes
//! within the silence after it heard that answer, so its promise runs at least the silence from
//! when the master *sent* the answer, on the master's own clock ([`Support`]). Two majorities
//! share a member; that member cannot have promised the old master and voted for the new one at
//! once. An old master cut off in a minority therefore stops before any successor can win, and
//! when it hears of a newer term (a heartbeat naming one, or `Elected`) it steps down for good:
//! the successor has fenced it and given its cells away.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use zonescaler_shared::ShardId;
use zonescaler_shared::protocol::ElectionMessage;

/// A majority of `members`.
pub fn majority(members: usize) -> usize {
    members / 2 + 1
}

/// What a member knows when the election runs.
#[derive(Clone, Debug, Default)]
pub struct ElectionView {
    /// The members as the last map push named them (the master among them, silent or not).
    pub members: Vec<ShardId>,
    /// Members this one has a link up to.
    pub reachable: BTreeSet<ShardId>,
    /// The newest master state this member holds (`Standby::version`) and its map's epoch.
    pub version: u64,
    pub epoch: u64,
}

/// What an election step asks of the runtime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ElectionOut {
    /// Send this to that member.
    Send(ShardId, ElectionMessage),
    /// This member won `term` with `voters` (itself among them): it takes the master role over
    /// from `from` (the silent master).
    Won {
        term: u64,
        from: ShardId,
        voters: Vec<ShardId>,
    },
    /// `master` holds the role in `term` now: heartbeats and requests go there.
    Follow { master: ShardId, term: u64 },
    /// This member held the role and another won a newer term: it must stop being the master
    /// (the successor fenced it).
    Deposed { term: u64 },
}

/// The election behind the master role (see the module docs).
pub trait MasterElection: Send {
    /// The member that holds the role as far as this one knows.
    fn master(&self) -> ShardId;
    /// The term it holds it in.
    fn term(&self) -> u64;
    /// The master answered this member (a lease renewal) at `now_ms`.
    fn heard_master(&mut self, now_ms: u64);
    /// Time passed: stand when the master has been silent long enough.
    fn poll(&mut self, now_ms: u64, view: &ElectionView) -> Vec<ElectionOut>;
    /// An election message from `from`.
    fn on_message(
        &mut self,
        from: ShardId,
        msg: ElectionMessage,
        now_ms: u64,
        view: &ElectionView,
    ) -> Vec<ElectionOut>;
    /// A member's heartbeat named `term`: on a master, a newer one means it was deposed.
    fn heard_term(&mut self, term: u64) -> Vec<ElectionOut>;
}

/// A candidacy under way.
#[derive(Clone, Debug)]
struct Standing {
    term: u64,
    since_ms: u64,
    votes: BTreeSet<ShardId>,
    /// Members that refused.
    refused: BTreeSet<ShardId>,
    /// The majority it needs (of the members when it stood).
    need: usize,
}

/// The election over the cluster's links (see the module docs).
#[derive(Clone, Debug)]
pub struct QuorumElection {
    me: ShardId,
    silence_ms: u64,
    term: u64,
    master: ShardId,
    /// When the master was last heard (or elected).
    heard_ms: u64,
    /// The newest term this member voted in, and for whom.
    voted: Option<(u64, ShardId)>,
    standing: Option<Standing>,
    /// When this member's last candidacy ended without a win: it waits a silence before the next.
    lost_ms: Option<u64>,
    /// The newest term any candidacy or vote named: a candidacy of this member's own takes the
    /// next (a member that lost one term does not stand in it again).
    seen_term: u64,
    /// A candidacy that came before this member's own silence ran out (the members heard the
    /// master last at slightly different times): answered once it has, unless the master is heard
    /// again first.
    deferred: Option<(ShardId, ElectionMessage)>,
    /// A candidate ahead of this member (newer state, or the same and a lower id) stood: this
    /// member does not stand before then, so that the candidate's next try is not split.
    yield_until_ms: u64,
    /// The candidates this member yielded to since it last heard a master: once each, so that
    /// one that can never win (it reaches no majority) does not keep this member from standing.
    yielded_to: BTreeSet<ShardId>,
}

impl QuorumElection {
    /// A member of a cluster whose master (term 0) is `master`, heard last at `now_ms`.
    pub fn new(me: ShardId, master: ShardId, silence_ms: u64, now_ms: u64) -> Self {
        Self {
            me,
            silence_ms,
            term: 0,
            master,
            heard_ms: now_ms,
            voted: None,
            standing: None,
            lost_ms: None,
            seen_term: 0,
            deferred: None,
            yield_until_ms: 0,
            yielded_to: BTreeSet::new(),
        }
    }

    /// Half a silence for each member (not the master) with an id below `id` in `view`: a
    /// member's place in line.
    fn place(&self, id: ShardId, view: &ElectionView) -> u64 {
        (view.members.iter())
            .filter(|m| **m < id && **m != self.master)
            .count() as u64
    }

    /// A candidacy of `from`'s holding `version` and `epoch`: if it is ahead of this member (the
    /// successor is the lowest id holding the newest state), this member lets it stand alone
    /// next time. Two members whose rests after a split vote end together would otherwise
    /// stand together again, each refusing the other, for as long as both run (seed 2429: a
    /// member that missed the master's last state and one that had it).
    fn yield_to(
        &mut self,
        from: ShardId,
        version: u64,
        epoch: u64,
        now_ms: u64,
        view: &ElectionView,
    ) {
        let ahead = (version, epoch) > (view.version, view.epoch)
            || ((version, epoch) == (view.version, view.epoch) && from < self.me);
        if !ahead || from == self.me || !self.yielded_to.insert(from) {
            return;
        }
        // Its candidacy (half a silence), its rest after a loss (`may_stand`), and half a
        // silence for the messages.
        let half = self.silence_ms / 2;
        let until = now_ms + half + self.silence_ms + self.place(from, view) * half + half;
        self.yield_until_ms = self.yield_until_ms.max(until);
    }

    fn silent_for(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.heard_ms)
    }

    /// Whether this member may stand now: the master silent for the silence, plus half a silence
    /// for each reachable member with a smaller id (the first in line stands first), a silence
    /// after a candidacy of its own that failed, and not while it yields to a candidate ahead of
    /// it.
    fn may_stand(&self, now_ms: u64, view: &ElectionView) -> bool {
        if self.master == self.me || self.standing.is_some() {
            return false;
        }
        let rank = (view.reachable.iter())
            .filter(|id| **id < self.me && **id != self.master && view.members.contains(id))
            .count() as u64;
        let wait = self.silence_ms + rank * (self.silence_ms / 2);
        // After a lost candidacy the members in line stand again half a silence apart by their
        // place among all members (reachable or not): two that stood at once (each could not
        // reach the other, so each was first in line) and split the vote would otherwise rest
        // alike and split it again, forever.
        let rest = self.silence_ms + self.place(self.me, view) * (self.silence_ms / 2);
        let rested = self
            .lost_ms
            .is_none_or(|at| now_ms.saturating_sub(at) >= rest);
        self.silent_for(now_ms) >= wait && rested && now_ms >= self.yield_until_ms
    }

    fn stand(&mut self, now_ms: u64, view: &ElectionView) -> Vec<ElectionOut> {
        let voted = self.voted.map_or(0, |(t, _)| t);
        let term = self.term.max(voted).max(self.seen_term) + 1;
        self.seen_term = term;
        self.voted = Some((term, self.me));
        let need = majority(view.members.len().max(1));
        let mut votes = BTreeSet::new();
        votes.insert(self.me);
        self.standing = Some(Standing {
            term,
            since_ms: now_ms,
            votes,
            refused: BTreeSet::new(),
            need,
        });
        let msg = ElectionMessage::Candidacy {
            term,
            version: view.version,
            epoch: view.epoch,
        };
        let mut out: Vec<ElectionOut> = (view.members.iter())
            .filter(|id| **id != self.me)
            .map(|id| ElectionOut::Send(*id, msg))
            .collect();
        out.extend(self.check_won(view));
        out
    }

    /// A majority voted: this member is the master of the standing's term.
    fn check_won(&mut self, view: &ElectionView) -> Vec<ElectionOut> {
        let Some(s) = self.standing.as_ref() else {
            return Vec::new();
        };
        if s.votes.len() < s.need {
            return Vec::new();
        }
        let term = s.term;
        let from = self.master;
        let voters: Vec<ShardId> = s.votes.iter().copied().collect();
        self.standing = None;
        self.term = term;
        self.master = self.me;
        let mut out: Vec<ElectionOut> = (view.members.iter())
            .filter(|id| **id != self.me)
            .map(|id| ElectionOut::Send(*id, ElectionMessage::Elected { term }))
            .collect();
        out.push(ElectionOut::Won { term, from, voters });
        out
    }

    fn vote(
        &mut self,
        from: ShardId,
        term: u64,
        version: u64,
        epoch: u64,
        now_ms: u64,
        view: &ElectionView,
    ) -> bool {
        if term <= self.term || self.master == self.me {
            return false;
        }
        if self.silent_for(now_ms) < self.silence_ms {
            return false;
        }
        if (version, epoch) < (view.version, view.epoch) {
            return false;
        }
        match self.voted {
            Some((t, who)) if t > term || (t == term && who != from) => return false,
            _ => {}
        }
        self.voted = Some((term, from));
        // A vote is a promise: the candidate, should it win, counts this member's support from
        // its win for `promise_ms` (`Support::all_from`), so this member must not vote again (for
        // a newer term's candidate) within the silence after this vote, as after hearing a
        // master. Without this a voter could elect two masters a moment apart, each counting it
        // in its majority. A win comes within half a silence of the candidacy (a candidacy ends
        // then) and the vote after the candidacy, so the winner's count (win + 0.9 silence)
        // ends before this member's silence does (vote + silence).
        self.heard_ms = self.heard_ms.max(now_ms);
        // A vote for another's newer term ends a candidacy of this member's own.
        if self.standing.as_ref().is_some_and(|s| s.term <= term) {
            self.standing = None;
        }
        true
    }
}

impl MasterElection for QuorumElection {
    fn master(&self) -> ShardId {
        self.master
    }

    fn term(&self) -> u64 {
        self.term
    }

    fn heard_master(&mut self, now_ms: u64) {
        self.heard_ms = self.heard_ms.max(now_ms);
        self.deferred = None;
        self.yielded_to.clear();
    }

    fn poll(&mut self, now_ms: u64, view: &ElectionView) -> Vec<ElectionOut> {
        if self.deferred.is_some() && self.silent_for(now_ms) >= self.silence_ms {
            let (from, msg) = self.deferred.take().expect("checked");
            return self.on_message(from, msg, now_ms, view);
        }
        if let Some(s) = &self.standing
            && now_ms.saturating_sub(s.since_ms) >= self.silence_ms / 2
        {
            // Not won in time (a split vote, a member that does not answer): stand again later.
            self.standing = None;
            self.lost_ms = Some(now_ms);
        }
        if self.may_stand(now_ms, view) {
            return self.stand(now_ms, view);
        }
        Vec::new()
    }

    fn on_message(
        &mut self,
        from: ShardId,
        msg: ElectionMessage,
        now_ms: u64,
        view: &ElectionView,
    ) -> Vec<ElectionOut> {
        if let ElectionMessage::Candidacy { term, .. } | ElectionMessage::Vote { term, .. } = msg {
            self.seen_term = self.seen_term.max(term);
        }
        match msg {
            ElectionMessage::Candidacy {
                term,
                version,
                epoch,
            } => {
                if term > self.term {
                    self.yield_to(from, version, epoch, now_ms, view);
                }
                // Silent for most of the silence: the master is likely gone here too; answer
                // when the silence is up rather than refuse now.
                let nearly = self.silent_for(now_ms) >= self.silence_ms / 2;
                if term > self.term
                    && self.master != self.me
                    && nearly
                    && self.silent_for(now_ms) < self.silence_ms
                {
                    self.deferred = Some((from, msg));
                    return Vec::new();
                }
                let granted = self.vote(from, term, version, epoch, now_ms, view);
                vec![ElectionOut::Send(
                    from,
                    ElectionMessage::Vote { term, granted },
                )]
            }
            ElectionMessage::Vote { term, granted } => {
                let Some(s) = self.standing.as_mut().filter(|s| s.term == term) else {
                    return Vec::new();
                };
                if granted {
                    s.votes.insert(from);
                } else {
                    s.refused.insert(from);
                }
                self.check_won(view)
            }
            ElectionMessage::Elected { term } => {
                if term < self.term || (term == self.term && self.master != from) {
                    return Vec::new();
                }
                let was_master = self.master == self.me;
                self.term = term;
                self.master = from;
                self.heard_ms = self.heard_ms.max(now_ms);
                self.standing = None;
                self.lost_ms = None;
                self.yielded_to.clear();
                let mut out = Vec::new();
                if was_master && from != self.me {
                    out.push(ElectionOut::Deposed { term });
                }
                out.push(ElectionOut::Follow { master: from, term });
                out
            }
        }
    }

    fn heard_term(&mut self, term: u64) -> Vec<ElectionOut> {
        if self.master == self.me && term > self.term {
            self.term = term;
            // The winner's `Elected` names it; until then nobody is known to hold the role.
            return vec![ElectionOut::Deposed { term }];
        }
        Vec::new()
    }
}

/// The master's side of the promises (see the module docs): when it sent each answer to each
/// member, and so until when each member has promised not to vote for anyone else.
#[derive(Clone, Debug, Default)]
pub struct Support {
    /// Per member: (heartbeat seq answered, when the answer went out), oldest first.
    sent: BTreeMap<ShardId, VecDeque<(u64, u64)>>,
    /// Per member: its promise runs until then (the master's clock).
    until: BTreeMap<ShardId, u64>,
}

/// Answers remembered per member: more than a silence's worth of heartbeats.
const ANSWERS_REMEMBERED: usize = 1_024;

impl Support {
    /// Every member in `members` promised from `now_ms` (the cluster formed, or this master was
    /// just elected by them: a voter does not vote again within the silence).
    pub fn all_from(
        members: impl IntoIterator<Item = ShardId>,
        now_ms: u64,
        silence_ms: u64,
    ) -> Self {
        let mut s = Self::default();
        for id in members {
            s.until.insert(id, now_ms + promise_ms(silence_ms));
        }
        s
    }

    /// `member` promised from `now_ms` (it joined: its election starts after this).
    pub fn promised(&mut self, member: ShardId, now_ms: u64, silence_ms: u64) {
        let until = self.until.entry(member).or_default();
        *until = (*until).max(now_ms + promise_ms(silence_ms));
    }

    /// The answer to `member`'s heartbeat `seq` goes out now.
    pub fn answered(&mut self, member: ShardId, seq: u64, now_ms: u64) {
        let q = self.sent.entry(member).or_default();
        if q.len() >= ANSWERS_REMEMBERED {
            q.pop_front();
        }
        q.push_back((seq, now_ms));
    }

    /// `member`'s heartbeat says it heard the answer to its heartbeat `lease_seq`.
    pub fn heard(&mut self, member: ShardId, lease_seq: u64, silence_ms: u64) {
        let Some(q) = self.sent.get_mut(&member) else {
            return;
        };
        while let Some(&(seq, at)) = q.front() {
            if seq > lease_seq {
                break;
            }
            q.pop_front();
            if seq == lease_seq {
                let until = self.until.entry(member).or_default();
                *until = (*until).max(at + promise_ms(silence_ms));
            }
        }
    }

    /// Whether `member`'s promise runs at `now_ms`.
    pub fn runs(&self, member: ShardId, now_ms: u64) -> bool {
        self.until.get(&member).is_some_and(|u| *u > now_ms)
    }

    /// `member` left the membership.
    pub fn forget(&mut self, member: ShardId) {
        self.sent.remove(&member);
        self.until.remove(&member);
    }

    /// Members of `members` (the master `me` counted always) whose promise runs at `now_ms`,
    /// and whether they are a majority of them.
    pub fn holds(&self, me: ShardId, members: &[ShardId], now_ms: u64) -> (usize, bool) {
        let with = (members.iter())
            .filter(|id| **id == me || self.runs(**id, now_ms))
            .count();
        (with, with >= majority(members.len().max(1)))
    }
}

/// How long the master counts on a member's promise after it sent the answer the member heard:
/// the silence less a tenth, against the two clocks running at slightly different rates.
pub fn promise_ms(silence_ms: u64) -> u64 {
    silence_ms - silence_ms / 10
}

#[cfg(test)]
mod tests {
    use super::*;

    const SILENCE: u64 = 1_000;

    fn view(members: &[u16], reachable: &[u16]) -> ElectionView {
        ElectionView {
            members: members.iter().map(|i| ShardId(*i)).collect(),
            reachable: reachable.iter().map(|i| ShardId(*i)).collect(),
            version: 5,
            epoch: 3,
        }
    }

    /// Deliver every `Send` among `nodes` until none is left; the other outputs, by member.
    fn run(
        nodes: &mut BTreeMap<ShardId, QuorumElection>,
        mut queue: Vec<(ShardId, ElectionOut)>,
        now: u64,
        views: &BTreeMap<ShardId, ElectionView>,
        cut: &BTreeSet<(ShardId, ShardId)>,
    ) -> Vec<(ShardId, ElectionOut)> {
        let mut done = Vec::new();
        while let Some((from, out)) = queue.pop() {
            match out {
                ElectionOut::Send(to, msg) => {
                    if cut.contains(&(from, to)) || cut.contains(&(to, from)) {
                        continue;
                    }
                    let Some(n) = nodes.get_mut(&to) else {
                        continue;
                    };
                    for o in n.on_message(from, msg, now, &views[&to]) {
                        queue.push((to, o));
                    }
                }
                other => done.push((from, other)),
            }
        }
        done
    }

    fn cluster(n: u16) -> BTreeMap<ShardId, QuorumElection> {
        (0..n)
            .map(|i| {
                (
                    ShardId(i),
                    QuorumElection::new(ShardId(i), ShardId(0), SILENCE, 0),
                )
            })
            .collect()
    }

    fn poll_all(
        nodes: &mut BTreeMap<ShardId, QuorumElection>,
        now: u64,
        views: &BTreeMap<ShardId, ElectionView>,
    ) -> Vec<(ShardId, ElectionOut)> {
        let mut q = Vec::new();
        for (id, n) in nodes.iter_mut() {
            for o in n.poll(now, &views[id]) {
                q.push((*id, o));
            }
        }
        q
    }

    #[test]
    fn the_lowest_reachable_member_succeeds_a_silent_master_with_a_majority() {
        let mut nodes = cluster(4);
        nodes.remove(&ShardId(0));
        let all = [0, 1, 2, 3];
        let views: BTreeMap<_, _> = (1..4)
            .map(|i| (ShardId(i), view(&all, &[1, 2, 3])))
            .collect();
        // Before the silence nobody stands.
        assert!(poll_all(&mut nodes, SILENCE - 1, &views).is_empty());
        let q = poll_all(&mut nodes, SILENCE, &views);
        let done = run(&mut nodes, q, SILENCE, &views, &BTreeSet::new());
        assert!(done.contains(&(
            ShardId(1),
            ElectionOut::Won {
                term: 1,
                from: ShardId(0),
                voters: vec![ShardId(1), ShardId(2), ShardId(3)],
            }
        )));
        for i in 1..4 {
            assert_eq!(nodes[&ShardId(i)].master(), ShardId(1));
            assert_eq!(nodes[&ShardId(i)].term(), 1);
        }
    }

    #[test]
    fn two_members_that_stood_at_once_and_split_the_vote_do_not_split_it_again() {
        // Shards 1 and 2 survive the master of three; their link was down when the silence ran
        // out, so each was first in line: both stand for term 1 and each refuses the other.
        let mut nodes = cluster(3);
        nodes.remove(&ShardId(0));
        let all = [0, 1, 2];
        let alone: BTreeMap<_, _> = [
            (ShardId(1), view(&all, &[1])),
            (ShardId(2), view(&all, &[2])),
        ]
        .into_iter()
        .collect();
        let q = poll_all(&mut nodes, SILENCE, &alone);
        let done = run(&mut nodes, q, SILENCE, &alone, &BTreeSet::new());
        assert!(
            !done
                .iter()
                .any(|(_, o)| matches!(o, ElectionOut::Won { .. })),
            "{done:?}"
        );
        // The link is back. The candidacies end unwon; shard 1 stands again first, alone, and
        // wins with shard 2's vote.
        let linked: BTreeMap<_, _> = [1, 2].map(|i| (ShardId(i), view(&all, &[1, 2]))).into();
        let lost = SILENCE + SILENCE / 2;
        assert!(poll_all(&mut nodes, lost, &linked).is_empty());
        let again = lost + SILENCE;
        let q = poll_all(&mut nodes, again, &linked);
        assert!(q.iter().all(|(from, _)| *from == ShardId(1)), "{q:?}");
        let done = run(&mut nodes, q, again, &linked, &BTreeSet::new());
        assert!(
            done.iter()
                .any(|(id, o)| *id == ShardId(1) && matches!(o, ElectionOut::Won { .. })),
            "{done:?}"
        );
        assert_eq!(nodes[&ShardId(2)].master(), ShardId(1));
    }

    /// Seed 2429: shard 2 missed the master's last state and the join of shard 4; shards 3 and
    /// 4 hold it. 2 and 3 stood at once (the link between them looked down), each refused the
    /// other, and their rests after the loss end together (each has one member below it in its
    /// own view): they stood together again for as long as they ran. Now 2, having heard the
    /// candidacy of 3 (newer state), lets 3 stand alone, and votes for it.
    #[test]
    fn a_member_that_heard_a_candidate_with_newer_state_lets_it_stand_alone_next_time() {
        let mut nodes = cluster(5);
        nodes.remove(&ShardId(0));
        nodes.remove(&ShardId(1));
        let stale = ElectionView {
            version: 4,
            ..view(&[0, 1, 2, 3], &[2, 3])
        };
        let newest = |reachable: &[u16]| view(&[0, 2, 3, 4], reachable);
        let apart: BTreeMap<_, _> = [
            (
                ShardId(2),
                ElectionView {
                    reachable: [ShardId(2)].into(),
                    ..stale.clone()
                },
            ),
            (ShardId(3), newest(&[3, 4])),
            (ShardId(4), newest(&[3, 4])),
        ]
        .into();
        let q = poll_all(&mut nodes, SILENCE, &apart);
        assert_eq!(
            (q.iter().map(|(from, _)| *from)).collect::<BTreeSet<_>>(),
            [ShardId(2), ShardId(3)].into(),
            "both first in line"
        );
        let linked: BTreeMap<_, _> = [
            (ShardId(2), stale.clone()),
            (ShardId(3), newest(&[2, 3, 4])),
            (ShardId(4), newest(&[2, 3, 4])),
        ]
        .into();
        let done = run(&mut nodes, q, SILENCE, &linked, &BTreeSet::new());
        assert!(
            !done
                .iter()
                .any(|(_, o)| matches!(o, ElectionOut::Won { .. })),
            "split: {done:?}"
        );
        // Both candidacies end unwon; the rests of 2 and 3 end together.
        let lost = SILENCE + SILENCE / 2;
        assert!(poll_all(&mut nodes, lost, &linked).is_empty());
        let again = lost + SILENCE + SILENCE / 2;
        let q = poll_all(&mut nodes, again, &linked);
        assert!(q.iter().all(|(from, _)| *from == ShardId(3)), "{q:?}");
        let done = run(&mut nodes, q, again, &linked, &BTreeSet::new());
        assert!(
            done.iter().any(|(id, o)| *id == ShardId(3)
                && matches!(o, ElectionOut::Won { voters, .. } if voters.len() == 3)),
            "{done:?}"
        );
        assert_eq!(nodes[&ShardId(2)].master(), ShardId(3));
    }

    #[test]
    fn a_member_that_still_hears_the_master_refuses_to_depose_it() {
        let mut nodes = cluster(3);
        let all = [0, 1, 2];
        let views: BTreeMap<_, _> = (0..3)
            .map(|i| (ShardId(i), view(&all, &[0, 1, 2])))
            .collect();
        // Only shard 1 lost the master (a one-way cut); 2 hears it.
        nodes.get_mut(&ShardId(2)).unwrap().heard_master(SILENCE);
        let q: Vec<_> = nodes
            .get_mut(&ShardId(1))
            .unwrap()
            .poll(SILENCE, &views[&ShardId(1)])
            .into_iter()
            .map(|o| (ShardId(1), o))
            .collect();
        let done = run(&mut nodes, q, SILENCE, &views, &BTreeSet::new());
        assert!(done.is_empty(), "{done:?}");
        assert_eq!(nodes[&ShardId(1)].master(), ShardId(0));
    }

    #[test]
    fn a_minority_never_elects_and_a_partition_never_makes_two_masters() {
        // 5 members; the master 0 and member 1 on one side, 2, 3, 4 on the other.
        let mut nodes = cluster(5);
        let all = [0, 1, 2, 3, 4];
        let side_a = [0u16, 1];
        let side_b = [2u16, 3, 4];
        let mut cut = BTreeSet::new();
        for a in side_a {
            for b in side_b {
                cut.insert((ShardId(a), ShardId(b)));
            }
        }
        let mut views = BTreeMap::new();
        for i in side_a {
            views.insert(ShardId(i), view(&all, &side_a));
        }
        for i in side_b {
            views.insert(ShardId(i), view(&all, &side_b));
        }
        // Side A keeps hearing its master; side B does not.
        let mut masters_over_time = BTreeSet::new();
        let mut now = 0;
        while now < 20 * SILENCE {
            now += 50;
            nodes.get_mut(&ShardId(1)).unwrap().heard_master(now);
            let q = poll_all(&mut nodes, now, &views);
            run(&mut nodes, q, now, &views, &cut);
            for n in nodes.values() {
                if n.master() == n.me {
                    masters_over_time.insert((n.term(), n.me));
                }
            }
        }
        // Side B (3 of 5) elected one of its own, once per term; side A never did.
        let b_master = nodes[&ShardId(3)].master();
        assert_eq!(b_master, ShardId(2));
        assert_eq!(nodes[&ShardId(1)].master(), ShardId(0));
        let per_term: BTreeMap<u64, usize> =
            masters_over_time
                .iter()
                .fold(BTreeMap::new(), |mut m, (t, _)| {
                    *m.entry(*t).or_default() += 1;
                    m
                });
        assert!(per_term.values().all(|n| *n == 1), "{masters_over_time:?}");
        // The old master learns of the newer term at the heal and steps down.
        let term = nodes[&ShardId(2)].term();
        let out = nodes.get_mut(&ShardId(0)).unwrap().heard_term(term);
        assert_eq!(out, vec![ElectionOut::Deposed { term }]);
    }

    #[test]
    fn a_member_that_heard_the_master_a_little_later_votes_when_its_silence_is_up() {
        let mut nodes = cluster(3);
        nodes.remove(&ShardId(0));
        let all = [0, 1, 2];
        let views: BTreeMap<_, _> = (1..3).map(|i| (ShardId(i), view(&all, &[1, 2]))).collect();
        // Shard 2 heard the master 150 ms after shard 1 did.
        nodes.get_mut(&ShardId(2)).unwrap().heard_master(150);
        let q = poll_all(&mut nodes, SILENCE, &views);
        let done = run(&mut nodes, q, SILENCE, &views, &BTreeSet::new());
        assert!(done.is_empty(), "2's silence is not up yet: {done:?}");
        assert_eq!(nodes[&ShardId(1)].master(), ShardId(0));
        let q = poll_all(&mut nodes, SILENCE + 150, &views);
        let done = run(&mut nodes, q, SILENCE + 150, &views, &BTreeSet::new());
        assert!(
            done.iter()
                .any(|(id, o)| *id == ShardId(1) && matches!(o, ElectionOut::Won { term: 1, .. })),
            "the first in line wins its first term: {done:?}"
        );
    }

    #[test]
    fn a_candidate_with_older_state_is_refused() {
        let mut nodes = cluster(3);
        nodes.remove(&ShardId(0));
        let all = [0, 1, 2];
        let mut views: BTreeMap<_, _> = (1..3).map(|i| (ShardId(i), view(&all, &[1, 2]))).collect();
        views.get_mut(&ShardId(2)).unwrap().version = 6;
        let q = poll_all(&mut nodes, SILENCE, &views);
        run(&mut nodes, q, SILENCE, &views, &BTreeSet::new());
        assert_eq!(nodes[&ShardId(1)].master(), ShardId(0), "1 had older state");
        // 1's candidacy times out; 2 stands half a silence after the first in line and wins.
        let mut now = SILENCE;
        while nodes[&ShardId(2)].master() != ShardId(2) && now < 10 * SILENCE {
            now += 50;
            let q = poll_all(&mut nodes, now, &views);
            run(&mut nodes, q, now, &views, &BTreeSet::new());
        }
        assert_eq!(nodes[&ShardId(1)].master(), ShardId(2));
        assert!(now <= 3 * SILENCE, "elected at {now}");
    }

    #[test]
    fn a_dead_first_in_line_delays_the_election_by_half_a_silence() {
        let mut nodes = cluster(5);
        nodes.remove(&ShardId(0));
        nodes.remove(&ShardId(1));
        let all = [0, 1, 2, 3, 4];
        // Links to 1 still look up for a while (QUIC has not timed out yet).
        let views: BTreeMap<_, _> = (2..5)
            .map(|i| (ShardId(i), view(&all, &[1, 2, 3, 4])))
            .collect();
        let mut now = 0;
        while nodes[&ShardId(3)].master() != ShardId(2) && now < 10 * SILENCE {
            now += 50;
            let q = poll_all(&mut nodes, now, &views);
            run(&mut nodes, q, now, &views, &BTreeSet::new());
        }
        assert_eq!(nodes[&ShardId(4)].master(), ShardId(2));
        assert_eq!(now, SILENCE + SILENCE / 2);
    }

    #[test]
    fn a_voter_does_not_vote_for_a_newer_term_within_the_silence_after_its_vote() {
        let mut nodes = cluster(4);
        nodes.remove(&ShardId(0));
        let all = [0, 1, 2, 3];
        let views: BTreeMap<_, _> = (1..4)
            .map(|i| (ShardId(i), view(&all, &[1, 2, 3])))
            .collect();
        let v = &views[&ShardId(3)];
        let voter = nodes.get_mut(&ShardId(3)).unwrap();
        let candidacy = |term| ElectionMessage::Candidacy {
            term,
            version: 5,
            epoch: 3,
        };
        let granted = |out: Vec<ElectionOut>| {
            out.iter().any(|o| {
                matches!(
                    o,
                    ElectionOut::Send(_, ElectionMessage::Vote { granted: true, .. })
                )
            })
        };
        // Shard 2 stands in term 1 and gets the vote (it may win with it and count on it).
        assert!(granted(voter.on_message(
            ShardId(2),
            candidacy(1),
            SILENCE,
            v
        )));
        // Shard 1, which never heard of it, stands in term 2 a moment later: refused, or the
        // voter would be in two majorities at once.
        let out = voter.on_message(ShardId(1), candidacy(2), SILENCE + 50, v);
        assert!(!granted(out), "a second vote within the silence");
        // A silence after its vote, with no master heard, it may vote again.
        let out = voter.on_message(ShardId(1), candidacy(3), 2 * SILENCE + 1, v);
        assert!(granted(out), "a vote after the silence");
    }

    #[test]
    fn support_counts_promises_from_when_the_answer_was_sent() {
        let members: Vec<ShardId> = (0..3).map(ShardId).collect();
        let me = ShardId(0);
        let mut s = Support::all_from(members.clone(), 0, SILENCE);
        assert_eq!(s.holds(me, &members, 0), (3, true));
        assert_eq!(s.holds(me, &members, promise_ms(SILENCE)), (1, false));
        s.answered(ShardId(1), 7, 500);
        // Answered, but not heard yet: no promise.
        assert_eq!(s.holds(me, &members, promise_ms(SILENCE)), (1, false));
        s.heard(ShardId(1), 7, SILENCE);
        assert_eq!(s.holds(me, &members, promise_ms(SILENCE)), (2, true));
        assert_eq!(s.holds(me, &members, 500 + promise_ms(SILENCE)), (1, false));
        // A member that left no longer counts, and the majority is of fewer.
        s.forget(ShardId(2));
        let two = &members[..2];
        assert_eq!(s.holds(me, two, 600), (2, true));
    }

    #[test]
    fn a_lone_member_is_its_own_majority_and_two_need_both() {
        assert_eq!(majority(1), 1);
        assert_eq!(majority(2), 2);
        assert_eq!(majority(3), 2);
        assert_eq!(majority(4), 3);
    }
}
