//! A member's player reports that no master has confirmed yet.
//!
//! Each heartbeat tells the master which players arrived on this shard, left it, or were sent
//! on from it since the last one (`ShardLoad::players_*`): deltas, so one lost is lost for good.
//! A heartbeat to a master that crashed is lost with it, and so is what it reported: a player
//! who arrived meanwhile would never be seated by the successor (and one who left would stay).
//! An answered one is not safe yet either: the master applied it, but a successor learns the
//! directory from the master's [`Standby`](zonescaler_shared::protocol::Standby) messages, and a
//! master that crashes between the answer and its next one takes the change with it. So a member
//! keeps the reports of every heartbeat until the master answered it *and* sent its state after
//! that ([`PlayerReports::answered`], [`PlayerReports::standby`]: both come on the master's one
//! ordered session, the state after the answer), and when it follows a new master
//! ([`PlayerReports::new_master`])
//! its next heartbeat carries all of them, merged so that the master, which applies a heartbeat's
//! `players_left`, then `players_sent_on`, then `players_arrived`, ends where applying them one
//! after the other would: each player in the list of its last event.

use std::collections::{BTreeMap, VecDeque};
use zonescaler_shared::protocol::ShardLoad;

/// Unanswered heartbeats whose reports a member keeps; older ones are dropped (a master that
/// answers none of 64 heartbeats has been silent for many times its silence).
pub const KEPT_REPORTS_MAX: usize = 64;

/// What a heartbeat reports of players, in the order the master applies it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlayerDeltas {
    pub left: Vec<String>,
    pub sent_on: Vec<String>,
    pub arrived: Vec<String>,
}

impl PlayerDeltas {
    fn of(load: &ShardLoad) -> Self {
        Self {
            left: load.players_left.clone(),
            sent_on: load.players_sent_on.clone(),
            arrived: load.players_arrived.clone(),
        }
    }

    fn is_empty(&self) -> bool {
        self.left.is_empty() && self.sent_on.is_empty() && self.arrived.is_empty()
    }

    /// `reports` applied one after the other, as one: each player in the list of its last event.
    pub fn merge<'a>(reports: impl IntoIterator<Item = &'a PlayerDeltas>) -> Self {
        #[derive(Clone, Copy)]
        enum Last {
            Left,
            SentOn,
            Arrived,
        }
        let mut last: BTreeMap<&str, Last> = BTreeMap::new();
        for r in reports {
            for (list, kind) in [
                (&r.left, Last::Left),
                (&r.sent_on, Last::SentOn),
                (&r.arrived, Last::Arrived),
            ] {
                for name in list {
                    last.insert(name, kind);
                }
            }
        }
        let mut out = Self::default();
        for (name, kind) in last {
            let list = match kind {
                Last::Left => &mut out.left,
                Last::SentOn => &mut out.sent_on,
                Last::Arrived => &mut out.arrived,
            };
            list.push(name.to_string());
        }
        out
    }
}

/// A member's unconfirmed player reports (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct PlayerReports {
    /// Heartbeat seq → what it reported, oldest first.
    kept: VecDeque<(u64, PlayerDeltas)>,
    /// The newest heartbeat the master answered: kept until its state follows.
    answered: u64,
    /// A new master: the next heartbeat carries every kept report.
    resend: bool,
}

impl PlayerReports {
    /// `load` is about to go to the master (its `seq` set; `direct`: this member holds the role,
    /// and records it at once). After a new master, it carries every kept report too.
    pub fn sending(&mut self, load: &mut ShardLoad, direct: bool) {
        let now = PlayerDeltas::of(load);
        if self.resend && !self.kept.is_empty() {
            let merged = PlayerDeltas::merge(self.kept.iter().map(|(_, d)| d).chain([&now]));
            load.players_left = merged.left;
            load.players_sent_on = merged.sent_on;
            load.players_arrived = merged.arrived;
        }
        self.resend = false;
        if direct {
            self.kept.clear();
            return;
        }
        if !now.is_empty() {
            if self.kept.len() >= KEPT_REPORTS_MAX {
                self.kept.pop_front();
            }
            self.kept.push_back((load.seq, now));
        }
    }

    /// The master answered heartbeat `seq`: it applied every report up to it.
    pub fn answered(&mut self, seq: u64) {
        self.answered = self.answered.max(seq);
    }

    /// The master sent its state (a `Standby`): it holds every report it answered before.
    pub fn standby(&mut self) {
        let upto = self.answered;
        while self.kept.front().is_some_and(|(s, _)| *s <= upto) {
            self.kept.pop_front();
        }
    }

    /// Another member holds the master role now (or this one does).
    pub fn new_master(&mut self) {
        self.resend = true;
        // The old master's answers say nothing of what the new one holds.
        self.answered = 0;
    }

    /// Heartbeats whose reports are kept.
    pub fn kept(&self) -> usize {
        self.kept.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(seq: u64, left: &[&str], sent_on: &[&str], arrived: &[&str]) -> ShardLoad {
        let v = |l: &[&str]| l.iter().map(|s| (*s).to_string()).collect();
        ShardLoad {
            seq,
            players_left: v(left),
            players_sent_on: v(sent_on),
            players_arrived: v(arrived),
            ..ShardLoad::default()
        }
    }

    #[test]
    fn reports_a_dead_master_never_answered_go_to_its_successor_merged() {
        let mut r = PlayerReports::default();
        // ann arrived and bob left; the master answered that one.
        let mut a = load(1, &["bob"], &[], &["ann"]);
        r.sending(&mut a, false);
        r.answered(1);
        r.standby();
        // Then, unanswered: cat arrived, ann was sent on, cat left, dan arrived, then came back.
        let mut b = load(2, &[], &["ann"], &["cat", "dan"]);
        r.sending(&mut b, false);
        let mut c = load(3, &["cat", "dan"], &[], &["dan"]);
        r.sending(&mut c, false);
        assert_eq!(r.kept(), 2);
        // A new master: the next heartbeat carries both, each player by its last event.
        r.new_master();
        let mut d = load(4, &[], &[], &["eve"]);
        r.sending(&mut d, false);
        assert_eq!(d.players_left, vec!["cat".to_string()]);
        assert_eq!(d.players_sent_on, vec!["ann".to_string()]);
        assert_eq!(
            d.players_arrived,
            vec!["dan".to_string(), "eve".to_string()]
        );
        // Only once: the one after carries its own reports alone.
        let mut e = load(5, &[], &[], &["fay"]);
        r.sending(&mut e, false);
        assert_eq!(e.players_arrived, vec!["fay".to_string()]);
        assert!(e.players_left.is_empty() && e.players_sent_on.is_empty());
        r.answered(5);
        // Answered, but the master's state after the answer has not come: a master that dies
        // now took them with it (heartbeats 2 to 5).
        assert_eq!(r.kept(), 4);
        r.standby();
        assert_eq!(r.kept(), 0);
    }

    #[test]
    fn a_member_that_takes_the_role_records_its_kept_reports_once() {
        let mut r = PlayerReports::default();
        let mut a = load(7, &[], &[], &["ann"]);
        r.sending(&mut a, false);
        r.new_master();
        let mut own = load(0, &[], &[], &[]);
        r.sending(&mut own, true);
        assert_eq!(own.players_arrived, vec!["ann".to_string()]);
        assert_eq!(r.kept(), 0);
    }

    #[test]
    fn kept_reports_are_bounded() {
        let mut r = PlayerReports::default();
        for seq in 0..(KEPT_REPORTS_MAX as u64 + 10) {
            let mut l = load(seq, &[], &[], &["ann"]);
            r.sending(&mut l, false);
        }
        assert_eq!(r.kept(), KEPT_REPORTS_MAX);
    }
}
