//! The load-test report: per-bot metrics folded into the numbers an operator reads.

use crate::core::BotMetrics;
use crate::hotspot::Hotspot;
use crate::timeline::{Timeline, TimelinePoint};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;

/// Bins a histogram of the report has at most. Each is one bar of a chart 640 pixels wide.
pub const HISTOGRAM_BINS_MAX: usize = 40;
/// Bins aimed for: the bin width is the next round number (1, 2 or 5 × 10ⁿ) above
/// range / this, which gives between this and `HISTOGRAM_BINS_MAX` bins.
const HISTOGRAM_BINS_AIM: f64 = 30.0;

/// What one bot contributes: its metrics and how long it was logged in.
#[derive(Debug, Clone)]
pub struct BotOutcome {
    pub metrics: BotMetrics,
    /// Seconds from `Welcome` to the end of the run (0 if it never logged in).
    pub active_s: f64,
    pub connected: bool,
}

/// The run a report describes, besides its bots' outcomes.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    /// The game the bots played ([`crate::game::BotGame::name`]).
    pub game: String,
    pub scenario: String,
    /// How long every bot played after the ramp.
    pub duration_s: f64,
    pub bots_requested: usize,
    /// Errors no bot's metrics hold (a bot's task failed).
    pub errors: BTreeMap<String, u64>,
    /// Per-second counters the swarm already took from its bots while they ran; merged with
    /// what is left in each outcome's [`BotMetrics::timeline`].
    pub timeline: Timeline,
    /// Where a `crowd` or `migrate` run gathered its bots.
    pub hotspot: Option<HotspotSummary>,
    /// How late the bots' runtime woke a 10 ms timer, sample by sample (microseconds).
    pub runtime_lag_us: Vec<u32>,
}

/// The hot spot of a `crowd` or `migrate` run, as the report gives it: from `(x, z)` to
/// `(to_x, to_z)` over `travel_s` seconds of the run (the same point and 0 for `crowd`).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct HotspotSummary {
    pub x: f32,
    pub z: f32,
    pub radius_m: f32,
    pub to_x: f32,
    pub to_z: f32,
    pub travel_s: f64,
}

impl HotspotSummary {
    pub fn of(h: &Hotspot) -> Self {
        Self {
            x: h.from.x,
            z: h.from.z,
            radius_m: h.radius_m,
            to_x: h.to.x,
            to_z: h.to.z,
            travel_s: h.travel_us as f64 / 1e6,
        }
    }

    /// One line for the human summary.
    fn render(&self) -> String {
        let mut s = format!(
            "hotspot         ({:.0}, {:.0}) radius {:.0} m",
            self.x, self.z, self.radius_m
        );
        if (self.x, self.z) != (self.to_x, self.to_z) {
            s.push_str(&format!(
                ", moving to ({:.0}, {:.0}) over {:.0} s",
                self.to_x, self.to_z, self.travel_s
            ));
        }
        s.push('\n');
        s
    }
}

/// Samples counted in equal bins from 0: bin `i` holds values in `[i·bin_width, (i+1)·bin_width)`.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Distribution {
    /// 0 when there is no sample (and no bin).
    pub bin_width: f64,
    pub counts: Vec<u64>,
    /// Samples past the last bin. The bins stop near 1.5 × p99 when the maximum is further out,
    /// so one outlier does not squeeze the rest into the first bar.
    pub above: u64,
    /// The largest sample (0 when none).
    pub max: f64,
}

impl Distribution {
    /// Bin weighted samples (`(value, count)`, values ≥ 0) whose 99th percentile is `p99` and
    /// maximum `max`.
    fn of(samples: impl Iterator<Item = (f64, u64)>, p99: f64, max: f64) -> Self {
        let samples: Vec<(f64, u64)> = samples.filter(|(_, c)| *c > 0).collect();
        if samples.is_empty() {
            return Self::default();
        }
        let hi = if max <= 2.0 * p99 { max } else { 1.5 * p99 };
        let bin_width = nice_step(hi / HISTOGRAM_BINS_AIM);
        // `nice_step` rounds up, so `hi / bin_width` ≤ the aim and the cast is small.
        let bins = ((hi / bin_width).floor() as usize + 1).clamp(1, HISTOGRAM_BINS_MAX);
        let mut d = Self {
            bin_width,
            counts: vec![0; bins],
            above: 0,
            max,
        };
        for (v, c) in samples {
            let i = (v.max(0.0) / bin_width).floor();
            match d.counts.get_mut(i as usize).filter(|_| i.is_finite()) {
                Some(n) => *n += c,
                None => d.above += c,
            }
        }
        d
    }

    /// Samples counted.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum::<u64>() + self.above
    }
}

/// The smallest of 1, 2, 5 × 10ⁿ that is at least `x` (1 for nothing positive).
pub(crate) fn nice_step(x: f64) -> f64 {
    if !(x.is_finite() && x > 0.0) {
        return 1.0;
    }
    let mag = 10f64.powf(x.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|s| *s >= x * (1.0 - 1e-9))
        .unwrap_or(10.0 * mag)
}

/// The distributions the HTML report draws.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Histograms {
    /// Input round trip, milliseconds, one sample per input.
    pub rtt_ms: Distribution,
    /// Complete snapshots per second while logged in, one sample per bot.
    pub snapshots_per_sec: Distribution,
    /// Handoff gap, milliseconds, one sample per handoff.
    pub handoff_gap_ms: Distribution,
    /// Failover gap, milliseconds, one sample per comeback after a lost shard.
    pub failover_gap_ms: Distribution,
}

/// The JSON report of `zonescaler-bots --report-json`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    /// The game the bots played.
    pub game: String,
    pub scenario: String,
    /// The `crowd` / `migrate` hot spot (absent for other scenarios).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hotspot: Option<HotspotSummary>,
    pub duration_s: f64,
    pub bots_requested: usize,
    pub bots_connected: usize,
    pub connect_failures: usize,
    /// Median over bots of complete snapshots per second while logged in.
    pub snapshots_per_sec_p50: f64,
    pub snapshots_per_sec_min: f64,
    /// Input sent → first snapshot reflecting it, over every input of every bot.
    pub rtt_ms_p50: f64,
    pub rtt_ms_p99: f64,
    pub rtt_ms_max: f64,
    pub rtt_samples: u64,
    /// Mean over bots of bytes received per second while logged in.
    pub bytes_down_per_sec_mean: f64,
    /// Snapshot bytes divided by entity updates (moved + spawned + changed) they carried.
    pub bytes_per_entity_update_mean: f64,
    pub snapshots_total: u64,
    pub entity_updates_total: u64,
    pub snapshot_bytes_total: u64,
    pub inputs_sent_total: u64,
    /// Snapshots in which a bot did not see its own avatar (should be 0).
    pub avatar_missing_total: u64,
    /// Times a bot's avatar was handed to another shard and the bot followed it there.
    pub handoffs: u64,
    /// Redirect received → first complete snapshot from the new shard, over every handoff of
    /// every bot (0 when there was none).
    pub handoff_gap_ms_p50: f64,
    pub handoff_gap_ms_p99: f64,
    pub handoff_gap_ms_max: f64,
    /// Of that gap, redirect received → the new shard's `Welcome` (connecting, and waiting for
    /// the avatar to be there), over the same handoffs.
    pub handoff_welcome_ms_p50: f64,
    pub handoff_welcome_ms_p99: f64,
    /// Of that, redirect received → the new connection's QUIC handshake done.
    pub handoff_connect_ms_p50: f64,
    pub handoff_connect_ms_p99: f64,
    /// Times a bot lost its shard without a redirect (timed out, closed, silent, shutting down)
    /// and set out to come back; of them, those that came back to their avatar with the resume
    /// ticket (`resumes`), resumes that failed (`resumes_failed`: the bot logged in anew), and
    /// fresh logins that got a bot playing again (`relogins`). `failovers - resumes - relogins`
    /// bots did not come back (why is in `errors`, as `failover: …`), or the run ended first.
    pub failovers: u64,
    pub resumes: u64,
    pub resumes_failed: u64,
    pub relogins: u64,
    /// Lost shard noticed → first complete snapshot again, over every comeback (resumed or
    /// logged in anew) of every bot (0 when there was none).
    pub failover_gap_ms_p50: f64,
    pub failover_gap_ms_p99: f64,
    pub failover_gap_ms_max: f64,
    /// The share of its run each bot was playing (its own avatar in view, complete snapshots
    /// coming: each counts until the next, at most `core::PLAYING_COVER_US`), from its turn in
    /// the ramp to the run's end, as the mean over bots and the least of them: logins, lost
    /// shards and slow comebacks are what it is not. A bot that never logged in counts 0.
    pub playing_fraction_mean: f64,
    pub playing_fraction_min: f64,
    /// Snapshot parts that came after a newer snapshot was complete (the bot was behind its
    /// datagrams), and snapshots begun but never completed (a part lost or overtaken).
    pub snapshot_parts_stale: u64,
    pub snapshots_incomplete: u64,
    /// How late the bots' own runtime woke a 10 ms timer (its worker threads all busy): the
    /// generator's lag, which delays every bot at once and which a shard cannot tell from a slow
    /// path. Over a few tens of ms at p99, the run measured the bots' machine as much as the
    /// cluster.
    pub runtime_lag_ms_p99: f64,
    pub runtime_lag_ms_max: f64,
    /// Of the handoffs, those that took more than one redirect (the avatar was handed on again
    /// before its client got to it); their gap spans every hop.
    pub handoffs_chained: u64,
    /// Times a shard told a bot that its avatar was offered elsewhere (`Prepare`), and the
    /// handoffs whose new connection the bot had opened on one, before its redirect came (0
    /// with `--no-preconnect`).
    pub redirects_prepared: u64,
    pub handoffs_preconnected: u64,
    /// Game commands and chat lines the bots' brains sent, and player messages they received.
    pub commands_sent_total: u64,
    pub says_sent_total: u64,
    pub messages_received_total: u64,
    /// Bots whose login waited in the login queue (every shard at its client cap), the
    /// furthest back any of them started (its first place), and how long they waited: `Hello`
    /// sent → admitted, over the bots that were admitted (0 when none waited).
    pub bots_queued: usize,
    pub queue_position_max: u32,
    pub queue_ms_p50: f64,
    pub queue_ms_p99: f64,
    pub queue_ms_max: f64,
    /// Errors by kind (connect failures, refusals by code, decode problems).
    pub errors: BTreeMap<String, u64>,
    /// One point per second since the swarm started: bots logged in, handoffs, errors and
    /// snapshots in that second.
    pub timeline: Vec<TimelinePoint>,
    pub histograms: Histograms,
}

/// A histogram of microsecond samples from 1 µs to 1 h at 3 significant digits.
fn micros_histogram() -> Histogram<u64> {
    // The bounds are fixed and valid, so `new_with_bounds` cannot fail.
    Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("invariant: valid static bounds")
}

/// `h`'s value at quantile `q` (1.0: the maximum), in milliseconds; 0 when it holds no sample.
fn quantile_ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        0.0
    } else if q >= 1.0 {
        h.max() as f64 / 1_000.0
    } else {
        h.value_at_quantile(q) as f64 / 1_000.0
    }
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// `h`'s microsecond samples as milliseconds, binned.
fn micros_distribution(h: &Histogram<u64>) -> Distribution {
    Distribution::of(
        h.iter_recorded()
            .map(|v| (v.value_iterated_to() as f64 / 1_000.0, v.count_at_value())),
        quantile_ms(h, 0.99),
        quantile_ms(h, 1.0),
    )
}

/// The value at quantile `q` of sorted `v` (nearest rank), 0 when empty.
fn sorted_quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

impl Report {
    pub fn build(run: &RunSummary, outcomes: &[BotOutcome]) -> Self {
        let requested = run.bots_requested;
        let mut rtt = micros_histogram();
        let mut gaps = micros_histogram();
        let mut failover_gaps = micros_histogram();
        let (mut failovers, mut resumes, mut resumes_failed, mut relogins) = (0, 0, 0, 0);
        let mut welcomes = micros_histogram();
        let mut connects = micros_histogram();
        let mut sps = Vec::new();
        let mut bps = Vec::new();
        let mut errors = run.errors.clone();
        let mut timeline = run.timeline.clone();
        let (mut commands, mut says, mut messages) = (0, 0, 0);
        let (mut snaps, mut updates, mut sbytes, mut inputs, mut missing, mut handoffs) =
            (0, 0, 0, 0, 0, 0);
        let (mut chained, mut stale, mut incomplete) = (0, 0, 0);
        let (mut prepared, mut preconnected) = (0, 0);
        for o in outcomes {
            let m = &o.metrics;
            for &r in &m.rtt_us {
                rtt.saturating_record(u64::from(r).max(1));
            }
            for &g in &m.handoff_gap_us {
                gaps.saturating_record(u64::from(g).max(1));
            }
            for &g in &m.failover_gap_us {
                failover_gaps.saturating_record(u64::from(g).max(1));
            }
            failovers += m.failovers;
            resumes += m.resumes;
            resumes_failed += m.resumes_failed;
            relogins += m.relogins;
            for &w in &m.handoff_welcome_us {
                welcomes.saturating_record(u64::from(w).max(1));
            }
            for &c in &m.handoff_connect_us {
                connects.saturating_record(u64::from(c).max(1));
            }
            if o.connected && o.active_s > 0.0 {
                sps.push(m.snapshots as f64 / o.active_s);
                bps.push(m.bytes_down as f64 / o.active_s);
            }
            snaps += m.snapshots;
            updates += m.entity_updates;
            sbytes += m.snapshot_bytes;
            inputs += m.inputs_sent;
            missing += m.avatar_missing;
            handoffs += m.handoffs;
            chained += m.handoffs_chained;
            prepared += m.redirects_prepared;
            preconnected += m.handoffs_preconnected;
            stale += m.parts_stale;
            incomplete += m.snapshots_incomplete;
            commands += m.commands_sent;
            says += m.says_sent;
            messages += m.messages_received;
            for (k, v) in &m.errors {
                *errors.entry(k.clone()).or_default() += v;
            }
            timeline.merge(&m.timeline);
        }
        let connected = outcomes.iter().filter(|o| o.connected).count();
        let playing: Vec<f64> = (outcomes.iter())
            .filter_map(|o| o.metrics.playing_fraction())
            .collect();
        let mut lag = micros_histogram();
        for &us in &run.runtime_lag_us {
            lag.saturating_record(u64::from(us).max(1));
        }
        let mut queue = micros_histogram();
        for us in outcomes.iter().filter_map(|o| o.metrics.queue_us) {
            queue.saturating_record(us.max(1));
        }
        let queued: Vec<u32> = outcomes
            .iter()
            .filter_map(|o| o.metrics.queue_first.map(|p| p.position))
            .collect();
        sps.sort_by(f64::total_cmp);
        let histograms = Histograms {
            rtt_ms: micros_distribution(&rtt),
            snapshots_per_sec: Distribution::of(
                sps.iter().map(|v| (*v, 1)),
                sorted_quantile(&sps, 0.99),
                sorted_quantile(&sps, 1.0),
            ),
            handoff_gap_ms: micros_distribution(&gaps),
            failover_gap_ms: micros_distribution(&failover_gaps),
        };
        Self {
            game: run.game.clone(),
            scenario: run.scenario.clone(),
            hotspot: run.hotspot,
            duration_s: run.duration_s,
            bots_requested: requested,
            bots_connected: connected,
            connect_failures: requested.saturating_sub(connected),
            snapshots_per_sec_min: sps.iter().copied().reduce(f64::min).unwrap_or(0.0),
            snapshots_per_sec_p50: median(&mut sps),
            rtt_ms_p50: quantile_ms(&rtt, 0.5),
            rtt_ms_p99: quantile_ms(&rtt, 0.99),
            rtt_ms_max: quantile_ms(&rtt, 1.0),
            rtt_samples: rtt.len(),
            bytes_down_per_sec_mean: if bps.is_empty() {
                0.0
            } else {
                bps.iter().sum::<f64>() / bps.len() as f64
            },
            bytes_per_entity_update_mean: if updates == 0 {
                0.0
            } else {
                sbytes as f64 / updates as f64
            },
            snapshots_total: snaps,
            entity_updates_total: updates,
            snapshot_bytes_total: sbytes,
            inputs_sent_total: inputs,
            avatar_missing_total: missing,
            handoffs,
            handoff_gap_ms_p50: quantile_ms(&gaps, 0.5),
            handoff_gap_ms_p99: quantile_ms(&gaps, 0.99),
            handoff_gap_ms_max: quantile_ms(&gaps, 1.0),
            handoff_welcome_ms_p50: quantile_ms(&welcomes, 0.5),
            handoff_welcome_ms_p99: quantile_ms(&welcomes, 0.99),
            handoff_connect_ms_p50: quantile_ms(&connects, 0.5),
            handoff_connect_ms_p99: quantile_ms(&connects, 0.99),
            handoffs_chained: chained,
            failovers,
            resumes,
            resumes_failed,
            relogins,
            failover_gap_ms_p50: quantile_ms(&failover_gaps, 0.5),
            failover_gap_ms_p99: quantile_ms(&failover_gaps, 0.99),
            failover_gap_ms_max: quantile_ms(&failover_gaps, 1.0),
            playing_fraction_mean: if playing.is_empty() {
                0.0
            } else {
                playing.iter().sum::<f64>() / playing.len() as f64
            },
            playing_fraction_min: playing.iter().copied().reduce(f64::min).unwrap_or(0.0),
            redirects_prepared: prepared,
            handoffs_preconnected: preconnected,
            snapshot_parts_stale: stale,
            runtime_lag_ms_p99: quantile_ms(&lag, 0.99),
            runtime_lag_ms_max: quantile_ms(&lag, 1.0),
            snapshots_incomplete: incomplete,
            commands_sent_total: commands,
            says_sent_total: says,
            messages_received_total: messages,
            bots_queued: queued.len(),
            queue_position_max: queued.iter().copied().max().unwrap_or(0),
            queue_ms_p50: quantile_ms(&queue, 0.5),
            queue_ms_p99: quantile_ms(&queue, 0.99),
            queue_ms_max: quantile_ms(&queue, 1.0),
            errors,
            timeline: timeline.points(),
            histograms,
        }
    }

    /// The human-readable summary printed at the end of a run.
    pub fn render(&self) -> String {
        let mut s = format!(
            "game {}, scenario {} for {:.1}s\n\
             bots            {} connected / {} requested ({} failed)\n\
             snapshots/s     p50 {:.1}  min {:.1}  (per bot; {} incomplete, {} stale parts)\n\
             rtt             p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms  ({} inputs)\n\
             bandwidth       {:.0} B/s down per bot (mean)\n\
             entity update   {:.2} B mean ({} updates in {} B)\n\
             avatar missing  {} snapshots\n\
             handoffs        {}  gap p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms  \
             (connected p50 {:.1} ms  p99 {:.1} ms, Welcome p50 {:.1} ms  p99 {:.1} ms; \
             {} chained, {} of {} prepared connected ahead)\n\
             failovers       {}  gap p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms  \
             ({} resumed, {} resumes failed, {} logged in anew)\n\
             playing         {:.1}% of each bot's run (mean), min {:.1}%\n\
             game traffic    {} commands, {} chat lines sent; {} messages received\n\
             bots' runtime   lag p99 {:.1} ms  max {:.1} ms (a 10 ms timer, late)\n",
            self.game,
            self.scenario,
            self.duration_s,
            self.bots_connected,
            self.bots_requested,
            self.connect_failures,
            self.snapshots_per_sec_p50,
            self.snapshots_per_sec_min,
            self.snapshots_incomplete,
            self.snapshot_parts_stale,
            self.rtt_ms_p50,
            self.rtt_ms_p99,
            self.rtt_ms_max,
            self.rtt_samples,
            self.bytes_down_per_sec_mean,
            self.bytes_per_entity_update_mean,
            self.entity_updates_total,
            self.snapshot_bytes_total,
            self.avatar_missing_total,
            self.handoffs,
            self.handoff_gap_ms_p50,
            self.handoff_gap_ms_p99,
            self.handoff_gap_ms_max,
            self.handoff_connect_ms_p50,
            self.handoff_connect_ms_p99,
            self.handoff_welcome_ms_p50,
            self.handoff_welcome_ms_p99,
            self.handoffs_chained,
            self.handoffs_preconnected,
            self.redirects_prepared,
            self.failovers,
            self.failover_gap_ms_p50,
            self.failover_gap_ms_p99,
            self.failover_gap_ms_max,
            self.resumes,
            self.resumes_failed,
            self.relogins,
            self.playing_fraction_mean * 100.0,
            self.playing_fraction_min * 100.0,
            self.commands_sent_total,
            self.says_sent_total,
            self.messages_received_total,
            self.runtime_lag_ms_p99,
            self.runtime_lag_ms_max,
        );
        if let Some(h) = &self.hotspot {
            s.push_str(&h.render());
        }
        s.push_str(&format!(
            "login queue     {} bots waited (first place up to {})  p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms\n",
            self.bots_queued,
            self.queue_position_max,
            self.queue_ms_p50,
            self.queue_ms_p99,
            self.queue_ms_max
        ));
        if self.errors.is_empty() {
            s.push_str("errors          none\n");
        } else {
            for (k, v) in &self.errors {
                s.push_str(&format!("error           {k}: {v}\n"));
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(scenario: &str, bots_requested: usize) -> RunSummary {
        RunSummary {
            game: "demo".into(),
            scenario: scenario.into(),
            duration_s: 10.0,
            bots_requested,
            ..Default::default()
        }
    }

    #[test]
    fn aggregates_per_bot_rates_and_global_ratios() {
        let mk = |snaps, bytes, updates, rtts: Vec<u32>| BotOutcome {
            metrics: BotMetrics {
                snapshots: snaps,
                bytes_down: bytes,
                snapshot_bytes: bytes,
                entity_updates: updates,
                rtt_us: rtts,
                ..Default::default()
            },
            active_s: 10.0,
            connected: true,
        };
        let outcomes = vec![
            mk(300, 1000, 100, vec![10_000; 99]),
            mk(280, 3000, 300, vec![40_000]),
            BotOutcome {
                metrics: BotMetrics::default(),
                active_s: 0.0,
                connected: false,
            },
        ];
        let r = Report::build(&run("wander", 3), &outcomes);
        assert_eq!((r.bots_connected, r.connect_failures), (2, 1));
        assert_eq!(r.snapshots_per_sec_p50, 29.0);
        assert_eq!(r.snapshots_per_sec_min, 28.0);
        assert_eq!(r.bytes_per_entity_update_mean, 10.0);
        assert!(
            (r.rtt_ms_p50 - 10.0).abs() < 0.1 && (r.rtt_ms_p99 - 10.0).abs() < 0.1,
            "{r:?}"
        );
        assert!((r.rtt_ms_max - 40.0).abs() < 0.1);
        assert_eq!(
            (r.handoffs, r.handoff_gap_ms_p50, r.handoff_gap_ms_max),
            (0, 0.0, 0.0),
            "no handoff: the gap numbers are 0, not garbage"
        );
    }

    #[test]
    fn failovers_are_counted_and_their_gaps_are_percentiles_over_every_comeback() {
        let mk = |gaps: &[u32], resumes, failed, relogins| BotOutcome {
            metrics: BotMetrics {
                failovers: gaps.len() as u64,
                resumes,
                resumes_failed: failed,
                relogins,
                failover_gap_us: gaps.to_vec(),
                ..Default::default()
            },
            active_s: 10.0,
            connected: true,
        };
        let gaps: Vec<u32> = (1..=100).map(|ms| ms * 10_000).collect();
        let outcomes = vec![mk(&gaps[..60], 60, 0, 0), mk(&gaps[60..], 38, 2, 2)];
        let r = Report::build(&run("border", 2), &outcomes);
        assert_eq!(
            (r.failovers, r.resumes, r.resumes_failed, r.relogins),
            (100, 98, 2, 2)
        );
        assert!((r.failover_gap_ms_p50 - 500.0).abs() < 1.0, "{r:?}");
        assert!((r.failover_gap_ms_p99 - 990.0).abs() < 1.0, "{r:?}");
        assert!((r.failover_gap_ms_max - 1_000.0).abs() < 1.0, "{r:?}");
        let json = serde_json::to_value(&r).expect("a report serializes");
        for field in [
            "failovers",
            "resumes",
            "resumes_failed",
            "relogins",
            "failover_gap_ms_p50",
            "failover_gap_ms_p99",
            "failover_gap_ms_max",
        ] {
            assert!(json.get(field).is_some(), "the JSON report has `{field}`");
        }
        let text = r.render();
        let line = text
            .lines()
            .find(|l| l.starts_with("failovers "))
            .unwrap_or("");
        assert!(
            line.starts_with("failovers       100  gap p50 500.")
                && line.ends_with("ms  (98 resumed, 2 resumes failed, 2 logged in anew)"),
            "{text}"
        );
    }

    #[test]
    fn handoff_gaps_are_percentiles_over_every_handoff_of_every_bot() {
        // Gaps of 1..=100 ms, spread unevenly over three bots (one of them failed to log in after
        // a handoff, which must not hide its samples).
        let gaps: Vec<u32> = (1..=100).map(|ms| ms * 1_000).collect();
        let mk = |gaps: &[u32], connected| BotOutcome {
            metrics: BotMetrics {
                handoffs: gaps.len() as u64,
                handoff_gap_us: gaps.to_vec(),
                ..Default::default()
            },
            active_s: if connected { 10.0 } else { 0.0 },
            connected,
        };
        let outcomes = vec![
            mk(&gaps[..10], true),
            mk(&gaps[10..95], true),
            mk(&gaps[95..], false),
        ];
        let r = Report::build(&run("border", 3), &outcomes);
        assert_eq!(r.handoffs, 100, "handoffs are summed over bots");
        assert!(
            (r.handoff_gap_ms_p50 - 50.0).abs() < 0.1,
            "p50 of 1..=100 ms is 50 ms: {r:?}"
        );
        assert!(
            (r.handoff_gap_ms_p99 - 99.0).abs() < 0.1,
            "p99 of 1..=100 ms is 99 ms: {r:?}"
        );
        assert!(
            (r.handoff_gap_ms_max - 100.0).abs() < 0.1,
            "max is the largest gap: {r:?}"
        );
        let json = serde_json::to_value(&r).expect("a report serializes");
        for field in [
            "handoffs",
            "handoff_gap_ms_p50",
            "handoff_gap_ms_p99",
            "handoff_gap_ms_max",
            "rtt_ms_p50",
        ] {
            assert!(json.get(field).is_some(), "the JSON report has `{field}`");
        }
        assert!(
            r.render().contains("handoffs        100  gap p50 50.0 ms"),
            "{}",
            r.render()
        );
    }

    #[test]
    fn queue_times_are_percentiles_over_the_bots_that_waited() {
        let mk = |first: Option<u32>, wait_ms: Option<u64>| BotOutcome {
            metrics: BotMetrics {
                queue_first: first.map(|position| zonescaler_shared::protocol::QueuePlace {
                    position,
                    waiting: position,
                }),
                queue_us: wait_ms.map(|ms| ms * 1_000),
                ..Default::default()
            },
            active_s: 1.0,
            connected: wait_ms.is_some() || first.is_none(),
        };
        let mut outcomes: Vec<BotOutcome> = (1..=100)
            .map(|i| mk(Some(i), Some(u64::from(i) * 10)))
            .collect();
        outcomes.push(mk(Some(101), None)); // still waiting at the end
        outcomes.push(mk(None, None)); // played at once
        let r = Report::build(&run("crowd", 102), &outcomes);
        assert_eq!((r.bots_queued, r.queue_position_max), (101, 101));
        assert!((r.queue_ms_p50 - 500.0).abs() < 1.0, "{r:?}");
        assert!((r.queue_ms_p99 - 990.0).abs() < 1.0, "{r:?}");
        assert!((r.queue_ms_max - 1_000.0).abs() < 1.0, "{r:?}");
        assert!(
            r.render()
                .contains("login queue     101 bots waited (first place up to 101)  p50 500."),
            "{}",
            r.render()
        );
        let json = serde_json::to_value(&r).expect("a report serializes");
        for field in [
            "bots_queued",
            "queue_ms_p50",
            "queue_ms_p99",
            "queue_position_max",
        ] {
            assert!(json.get(field).is_some(), "the JSON report has `{field}`");
        }
        let none = Report::build(&run("wander", 1), &[mk(None, None)]);
        assert_eq!((none.bots_queued, none.queue_ms_p99), (0, 0.0));
    }

    #[test]
    fn a_crowd_run_names_its_hot_spot_in_both_reports() {
        let h = Hotspot {
            from: glam::Vec3::new(-300.0, 0.0, 10.0),
            to: glam::Vec3::new(300.0, 0.0, 10.0),
            radius_m: 80.0,
            travel_us: 90_000_000,
        };
        let summary = RunSummary {
            hotspot: Some(HotspotSummary::of(&h)),
            ..run("migrate", 1)
        };
        let r = Report::build(&summary, &[]);
        let text = r.render();
        assert!(
            text.contains("hotspot         (-300, 10) radius 80 m, moving to (300, 10) over 90 s"),
            "{text}"
        );
        let json = serde_json::to_value(&r).expect("a report serializes");
        assert_eq!(json["hotspot"]["radius_m"], 80.0);
        assert_eq!(json["hotspot"]["to_x"], 300.0);
        let plain = Report::build(&run("wander", 1), &[]);
        assert!(!plain.render().contains("hotspot"));
        let json = serde_json::to_value(&plain).expect("a report serializes");
        assert!(json.get("hotspot").is_none(), "no hot spot, no field");
    }

    #[test]
    fn the_playing_share_is_the_mean_over_bots_a_bot_that_never_played_counting_zero() {
        let bot = |playing_us, run_us| BotOutcome {
            metrics: BotMetrics {
                playing_us,
                run_us,
                ..Default::default()
            },
            active_s: 10.0,
            connected: playing_us > 0,
        };
        let outcomes = [
            bot(10_000_000, 10_000_000),
            bot(9_000_000, 10_000_000),
            bot(0, 8_000_000),
        ];
        let r = Report::build(&run("border", 3), &outcomes);
        assert!((r.playing_fraction_mean - 1.9 / 3.0).abs() < 1e-9, "{r:?}");
        assert_eq!(r.playing_fraction_min, 0.0);
        assert!(
            r.render()
                .contains("playing         63.3% of each bot's run (mean), min 0.0%")
        );
        let json = serde_json::to_value(&r).expect("a report serializes");
        assert!(json["playing_fraction_mean"].as_f64().is_some());
    }

    #[test]
    fn histograms_bin_every_sample_and_keep_a_far_tail_apart() {
        // 99 round trips of 10 ms and one of 900 ms: bins stop near 1.5 × p99 (15 ms), so the
        // outlier is counted above them instead of squeezing the body into one bar.
        let mut rtts = vec![10_000u32; 99];
        rtts.push(900_000);
        let o = BotOutcome {
            metrics: BotMetrics {
                rtt_us: rtts,
                snapshots: 300,
                ..Default::default()
            },
            active_s: 10.0,
            connected: true,
        };
        let r = Report::build(&run("wander", 1), &[o]);
        let h = &r.histograms.rtt_ms;
        assert_eq!(h.total(), 100, "every sample is counted: {h:?}");
        assert_eq!(h.above, 1, "the outlier is past the bins: {h:?}");
        assert!(
            h.counts.len() <= HISTOGRAM_BINS_MAX && h.counts.len() > 10,
            "{h:?}"
        );
        let bin = (10.0 / h.bin_width) as usize;
        assert_eq!(h.counts[bin], 99, "10 ms lands in its bin: {h:?}");
        assert!((h.max - 900.0).abs() < 1.0, "{h:?}");
        assert_eq!(
            r.histograms.snapshots_per_sec.total(),
            1,
            "one sample per bot"
        );
        assert_eq!(
            r.histograms.handoff_gap_ms,
            Distribution::default(),
            "no handoff, no bins"
        );
        for (x, step) in [
            (0.31, 0.5),
            (3.0, 5.0),
            (1.0, 1.0),
            (0.0, 1.0),
            (170.0, 200.0),
        ] {
            assert_eq!(nice_step(x), step, "nice step above {x}");
        }
    }

    #[test]
    fn the_report_merges_the_swarms_timeline_with_what_bots_kept() {
        let s = 1_000_000;
        let mut swarm = Timeline::default();
        let mut bot = BotMetrics::default();
        bot.timeline.connected(0);
        bot.timeline.connected(s);
        swarm.merge(&bot.timeline.drain_before(s));
        bot.timeline.handoff(s + 1, 50_000);
        bot.error_at(2 * s, "connection: reset");
        let summary = RunSummary {
            timeline: swarm,
            ..run("border", 1)
        };
        let o = BotOutcome {
            metrics: bot,
            active_s: 2.0,
            connected: true,
        };
        let r = Report::build(&summary, &[o]);
        let got: Vec<(u32, u32, u32, u32)> = r
            .timeline
            .iter()
            .map(|p| (p.t_s, p.connected, p.handoffs, p.errors))
            .collect();
        assert_eq!(got, [(0, 1, 0, 0), (1, 1, 1, 0), (2, 0, 0, 1)]);
        let json = serde_json::to_value(&r).expect("a report serializes");
        let first = &json["timeline"][1];
        for field in ["t_s", "connected", "handoffs", "errors", "snapshots"] {
            assert!(first.get(field).is_some(), "a timeline point has `{field}`");
        }
    }
}
