//! Per-second counters of a run: what the report's timeline shows.
//!
//! Percentiles over a whole run hide *when* things went wrong: a burst of errors while the ramp
//! was still connecting bots reads the same as errors spread over the run. A [`Timeline`] keeps
//! one [`Second`] per second since the run started, so the report can plot bots connected,
//! handoffs, errors and snapshots against time.
//!
//! Time comes in as the caller's microseconds since the run's start (the same clock the bot core
//! is driven with), so the simulator's timelines are as deterministic as the rest of its run.
//! Memory is bounded twice: one bucket per second, and nothing past [`TIMELINE_SECONDS_MAX`].

use serde::Serialize;
use std::collections::BTreeMap;

/// Seconds a timeline covers (24 h); events later than that are not plotted (the run's totals
/// still count them). A bucket is 16 bytes, so a whole day is about 1.4 MB per timeline.
pub const TIMELINE_SECONDS_MAX: u32 = 24 * 3_600;

/// What happened during one second.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Second {
    /// Bots that were logged in during this second. In one bot's timeline this is 0 or 1; in a
    /// merged timeline it is the number of bots.
    pub connected: u32,
    pub handoffs: u32,
    pub errors: u32,
    /// Complete snapshots applied.
    pub snapshots: u32,
    /// The longest handoff gap among the handoffs that ended this second, in milliseconds
    /// (merged: the longest of any bot's). Whole-run percentiles say how bad the tail is; this
    /// says when it happened, so it can be laid beside the cluster's moves.
    pub gap_ms_max: u32,
    /// The bots' own runtime: the longest a 10 ms timer fired late this second, in ms. A
    /// generator that stalls delays every bot's acknowledgements and inputs at once, and the
    /// shards see it as a slow path; this says when it happened.
    pub lag_ms_max: u32,
}

impl Second {
    fn add(&mut self, o: &Second) {
        self.connected = self.connected.saturating_add(o.connected);
        self.handoffs = self.handoffs.saturating_add(o.handoffs);
        self.errors = self.errors.saturating_add(o.errors);
        self.snapshots = self.snapshots.saturating_add(o.snapshots);
        self.gap_ms_max = self.gap_ms_max.max(o.gap_ms_max);
        self.lag_ms_max = self.lag_ms_max.max(o.lag_ms_max);
    }
}

/// One point of the report's timeline (JSON: `{t_s, connected, handoffs, errors, snapshots,
/// gap_ms_max, lag_ms_max}`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TimelinePoint {
    /// Seconds since the run started: the point covers `[t_s, t_s + 1)`.
    pub t_s: u32,
    pub connected: u32,
    pub handoffs: u32,
    pub errors: u32,
    pub snapshots: u32,
    /// The longest handoff gap that ended in this second (ms; 0 without handoffs).
    pub gap_ms_max: u32,
    /// The bots' runtime's longest lag this second (ms): see [`Second::lag_ms_max`].
    pub lag_ms_max: u32,
}

/// Counters by second since the run's start. Sparse (a map), because a bot's own timeline holds
/// only the seconds it has not handed to the swarm yet (see [`Timeline::drain_before`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Timeline {
    seconds: BTreeMap<u32, Second>,
}

impl Timeline {
    /// The second `now_us` falls in, or `None` past [`TIMELINE_SECONDS_MAX`].
    pub fn second_of(now_us: u64) -> Option<u32> {
        u32::try_from(now_us / 1_000_000)
            .ok()
            .filter(|s| *s < TIMELINE_SECONDS_MAX)
    }

    fn at(&mut self, now_us: u64) -> Option<&mut Second> {
        Self::second_of(now_us).map(|s| self.seconds.entry(s).or_default())
    }

    /// This (one bot's) timeline was logged in at `now_us`: marking a second twice counts once.
    pub fn connected(&mut self, now_us: u64) {
        if let Some(s) = self.at(now_us) {
            s.connected = 1;
        }
    }

    /// A handoff ended at `now_us` (its first snapshot from the new shard) after a gap of
    /// `gap_us`.
    pub fn handoff(&mut self, now_us: u64, gap_us: u64) {
        if let Some(s) = self.at(now_us) {
            s.handoffs = s.handoffs.saturating_add(1);
            let ms = u32::try_from(gap_us / 1_000).unwrap_or(u32::MAX);
            s.gap_ms_max = s.gap_ms_max.max(ms);
        }
    }

    /// The bots' runtime woke a timer `lag_us` late at `now_us`.
    pub fn lag(&mut self, now_us: u64, lag_us: u64) {
        if let Some(s) = self.at(now_us) {
            let ms = u32::try_from(lag_us / 1_000).unwrap_or(u32::MAX);
            s.lag_ms_max = s.lag_ms_max.max(ms);
        }
    }

    pub fn errors(&mut self, now_us: u64, n: u64) {
        if let Some(s) = self.at(now_us) {
            s.errors = s
                .errors
                .saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
        }
    }

    pub fn snapshot(&mut self, now_us: u64) {
        if let Some(s) = self.at(now_us) {
            s.snapshots = s.snapshots.saturating_add(1);
        }
    }

    /// Add `other`'s counters to this one's (bots connected add up to a count of bots).
    pub fn merge(&mut self, other: &Timeline) {
        for (t, s) in &other.seconds {
            self.seconds.entry(*t).or_default().add(s);
        }
    }

    /// Take out every second that ended before the one `now_us` falls in. A bot hands these to
    /// the swarm's timeline as it goes, so it never holds more than a second or two of buckets:
    /// 20 000 bots each keeping an hour of buckets would be gigabytes. Only ended seconds move,
    /// because a bot marks itself connected at most once per second in its own timeline, and
    /// merging a second twice would count it twice.
    pub fn drain_before(&mut self, now_us: u64) -> Timeline {
        let cut = u32::try_from(now_us / 1_000_000).unwrap_or(u32::MAX);
        let keep = self.seconds.split_off(&cut);
        Timeline {
            seconds: std::mem::replace(&mut self.seconds, keep),
        }
    }

    pub fn get(&self, t_s: u32) -> Option<Second> {
        self.seconds.get(&t_s).copied()
    }

    pub fn is_empty(&self) -> bool {
        self.seconds.is_empty()
    }

    /// One point per second from 0 to the last second with any event, seconds without events
    /// as zeros (a plot needs the quiet seconds too). Empty when nothing was recorded.
    pub fn points(&self) -> Vec<TimelinePoint> {
        let Some(last) = self.seconds.keys().next_back().copied() else {
            return Vec::new();
        };
        (0..=last)
            .map(|t_s| {
                let s = self.get(t_s).unwrap_or_default();
                TimelinePoint {
                    t_s,
                    connected: s.connected,
                    handoffs: s.handoffs,
                    errors: s.errors,
                    snapshots: s.snapshots,
                    gap_ms_max: s.gap_ms_max,
                    lag_ms_max: s.lag_ms_max,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    #[test]
    fn counters_land_in_the_second_of_their_event() {
        let mut t = Timeline::default();
        t.connected(0);
        t.connected(S / 2);
        t.snapshot(S / 2);
        t.snapshot(S + 1);
        t.handoff(2 * S + 5, 40_700);
        t.handoff(2 * S + 9, 9_000);
        t.errors(2 * S + 6, 3);
        assert_eq!(
            t.get(0),
            Some(Second {
                connected: 1,
                snapshots: 1,
                ..Default::default()
            }),
            "a bot is connected once per second however often it says so"
        );
        assert_eq!(t.get(1).map(|s| s.snapshots), Some(1));
        assert_eq!(
            t.get(2),
            Some(Second {
                handoffs: 2,
                errors: 3,
                gap_ms_max: 40,
                ..Default::default()
            }),
            "the second keeps its longest gap"
        );
        let points = t.points();
        assert_eq!(
            points.iter().map(|p| p.t_s).collect::<Vec<_>>(),
            [0, 1, 2],
            "one point per second"
        );
    }

    #[test]
    fn merging_counts_bots_and_draining_moves_only_ended_seconds() {
        let (mut a, mut b) = (Timeline::default(), Timeline::default());
        for t in [0, S, 2 * S, 3 * S] {
            a.connected(t);
        }
        b.connected(S);
        b.connected(3 * S);
        a.handoff(S, 30_000);
        b.handoff(S, 700_000);
        let mut swarm = Timeline::default();
        // Mid-way through second 2 the bots hand over seconds 0 and 1 only.
        swarm.merge(&a.drain_before(2 * S + 1));
        swarm.merge(&b.drain_before(2 * S + 1));
        assert_eq!(a.get(0), None, "drained seconds leave the bot");
        assert_eq!(a.get(2).map(|s| s.connected), Some(1), "second 2 stays");
        // At the end, what is left comes with the outcomes.
        swarm.merge(&a);
        swarm.merge(&b);
        let connected: Vec<u32> = swarm.points().iter().map(|p| p.connected).collect();
        assert_eq!(connected, [1, 2, 1, 2], "each second counts each bot once");
        assert_eq!(
            swarm.get(1).map(|s| (s.handoffs, s.gap_ms_max)),
            Some((2, 700)),
            "handoffs add up; the longest gap is the longest of any bot's"
        );
    }

    #[test]
    fn nothing_is_kept_past_a_day_and_quiet_seconds_are_zeros() {
        let mut t = Timeline::default();
        t.snapshot(u64::from(TIMELINE_SECONDS_MAX) * S);
        t.errors(u64::MAX, 1);
        assert!(t.is_empty(), "events past 24 h are not plotted");
        t.handoff(3 * S, 1);
        let p = t.points();
        assert_eq!(p.len(), 4);
        assert_eq!(p[0], TimelinePoint::default());
        assert_eq!(p[3].handoffs, 1);
    }
}
