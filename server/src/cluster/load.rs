//! A shard's load over one report window: the measured half of a heartbeat's [`ShardLoad`].
//!
//! Pure, like the rest of the cluster layer: the driver hands in each tick's wall time and, at
//! the end of every window, cumulative readings of its counters ([`LoadCounters`]); the window
//! turns them into the figures of that window alone (CPU shares, tick percentiles, overruns,
//! bytes per second) and starts the next. The runtime reads the OS clocks, `/proc` and the
//! transports' counters; the simulator hands in modelled, deterministic values. Both send the
//! result in the heartbeat, every [`limits::HEARTBEAT_MS`], so the master sees the last
//! ~200 ms, not the process's whole life.
//!
//! [`limits::HEARTBEAT_MS`]: zonescaler_shared::limits::HEARTBEAT_MS

use hdrhistogram::Histogram;
use std::time::Duration;
use zonescaler_shared::protocol::ShardLoad;

/// Cumulative readings of a shard's counters at one moment. Differences between two readings
/// are a window's figures; a reading that went down (a counter reset) counts as no change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadCounters {
    /// Time since a fixed start (the runtime: a monotonic clock; the simulator: its own).
    pub at: Duration,
    /// CPU time the tick thread used so far.
    pub tick_thread_cpu: Duration,
    /// CPU time the whole process used so far, every thread.
    pub process_cpu: Duration,
    /// Payload bytes sent so far to clients, and to other shards.
    pub client_bytes_out: u64,
    pub link_bytes_out: u64,
    /// Resident memory now, bytes (a level, not a counter: reported as read).
    pub rss_bytes: u64,
}

/// The figures of the window being measured, and the readings it started from.
#[derive(Debug)]
pub struct LoadWindow {
    /// A tick's budget: one that takes longer is an overrun.
    period: Duration,
    /// This window's tick wall times, microseconds.
    tick_us: Histogram<u64>,
    overruns: u32,
    start: LoadCounters,
}

impl LoadWindow {
    /// A window for a shard ticking at `tick_hz`, starting at the readings `start`.
    pub fn new(tick_hz: u32, start: LoadCounters) -> Self {
        Self {
            period: Duration::from_secs_f64(1.0 / f64::from(tick_hz.max(1))),
            // 1 µs .. 100 s at 3 significant digits: static bounds, cannot fail.
            tick_us: Histogram::new_with_bounds(1, 100_000_000, 3)
                .expect("invariant: valid static bounds"),
            overruns: 0,
            start,
        }
    }

    /// One tick's wall time (the schedule's run).
    pub fn record_tick(&mut self, wall: Duration) {
        let us = u64::try_from(wall.as_micros()).unwrap_or(u64::MAX).max(1);
        self.tick_us.saturating_record(us);
        if wall > self.period {
            self.overruns = self.overruns.saturating_add(1);
        }
    }

    /// Close the window at the readings `now`: write its figures into `load` and start the next
    /// window from `now`. Figures of a window with no wall time (two readings at one instant)
    /// are zero rather than a division by zero.
    pub fn close(&mut self, now: LoadCounters, load: &mut ShardLoad) {
        let start = std::mem::replace(&mut self.start, now);
        let wall = now.at.saturating_sub(start.at);
        let wall_s = wall.as_secs_f64();
        let per_wall = |v: f64| if wall_s > 0.0 { v / wall_s } else { 0.0 };
        let tick_cpu = now.tick_thread_cpu.saturating_sub(start.tick_thread_cpu);
        let process_cpu = now.process_cpu.saturating_sub(start.process_cpu);
        let ms = |q: f64| {
            if self.tick_us.is_empty() {
                0.0
            } else {
                self.tick_us.value_at_quantile(q) as f32 / 1000.0
            }
        };
        load.window_ms = u32::try_from(wall.as_millis()).unwrap_or(u32::MAX);
        load.ticks = u32::try_from(self.tick_us.len()).unwrap_or(u32::MAX);
        load.tick_cpu_ms = tick_cpu.as_secs_f32() * 1000.0;
        // One thread cannot run longer than the wall clock; the two clocks are read a moment
        // apart, so the ratio may round past 1, which the wire refuses.
        load.tick_cpu_share = per_wall(tick_cpu.as_secs_f64()).clamp(0.0, 1.0) as f32;
        load.tick_ms_p50 = ms(0.5);
        load.tick_ms_p99 = ms(0.99);
        load.tick_overruns = self.overruns;
        // Ticks run back to back at their period take `ticks × period`; a window longer than
        // that is how far the shard fell behind (the pacer catches up a few periods at most,
        // then skips ahead).
        let due = self.period.as_secs_f64() * self.tick_us.len() as f64;
        load.tick_slowdown = if due > 0.0 {
            (wall_s / due).max(1.0) as f32
        } else {
            0.0
        };
        load.client_bytes_out_per_s =
            per_wall(now.client_bytes_out.saturating_sub(start.client_bytes_out) as f64) as u64;
        load.link_bytes_out_per_s =
            per_wall(now.link_bytes_out.saturating_sub(start.link_bytes_out) as f64) as u64;
        load.rss_bytes = now.rss_bytes;
        load.process_cpu_share = per_wall(process_cpu.as_secs_f64()) as f32;
        self.tick_us.reset();
        self.overruns = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Readings `at_ms` into a run whose tick thread used `cpu_ms` and sent `bytes`.
    fn at(at_ms: u64, cpu_ms: u64, bytes: u64) -> LoadCounters {
        LoadCounters {
            at: MS * at_ms as u32,
            tick_thread_cpu: MS * cpu_ms as u32,
            process_cpu: MS * (cpu_ms * 3) as u32,
            client_bytes_out: bytes,
            link_bytes_out: bytes / 2,
            rss_bytes: 64 << 20,
        }
    }

    /// Whether `got` is `want` within the histogram's 3 significant digits.
    fn near(got: f32, want: f32) -> bool {
        (got - want).abs() <= want * 1e-3
    }

    #[test]
    fn a_window_reports_its_own_ticks_percentiles_and_overruns() {
        let mut w = LoadWindow::new(10, at(0, 0, 0)); // a 100 ms tick budget
        for ms in 1..=100 {
            w.record_tick(MS * ms);
        }
        w.record_tick(MS * 150); // one over budget, the slowest of the window
        let mut load = ShardLoad::default();
        w.close(at(1_000, 250, 0), &mut load);
        assert_eq!(load.ticks, 101);
        assert!(near(load.tick_ms_p50, 51.0), "p50 {}", load.tick_ms_p50);
        assert!(near(load.tick_ms_p99, 100.0), "p99 {}", load.tick_ms_p99);
        assert_eq!(load.tick_overruns, 1, "only the 150 ms tick overran");

        for _ in 0..10 {
            w.record_tick(MS * 2);
        }
        w.close(at(1_200, 260, 0), &mut load);
        assert_eq!(load.ticks, 10, "the last window's ticks are gone");
        assert!(
            near(load.tick_ms_p50, 2.0) && near(load.tick_ms_p99, 2.0),
            "nothing of the slow window is left in this one's percentiles: p50 {} p99 {}",
            load.tick_ms_p50,
            load.tick_ms_p99
        );
        assert_eq!(load.tick_overruns, 0, "overruns are per window");
    }

    #[test]
    fn cpu_and_bytes_are_the_windows_differences_over_its_wall_time() {
        let mut w = LoadWindow::new(30, at(5_000, 4_000, 1_000_000));
        let mut load = ShardLoad::default();
        w.close(at(5_200, 4_050, 1_100_000), &mut load);
        assert_eq!(load.window_ms, 200);
        assert!(near(load.tick_cpu_ms, 50.0), "{}", load.tick_cpu_ms);
        assert!(
            near(load.tick_cpu_share, 0.25),
            "50 ms of CPU in 200 ms of wall time, not 4 s of 5 s: {}",
            load.tick_cpu_share
        );
        assert!(near(load.process_cpu_share, 0.75), "three threads' worth");
        assert_eq!(load.client_bytes_out_per_s, 500_000, "100 kB in 0.2 s");
        assert_eq!(load.link_bytes_out_per_s, 250_000);
        assert_eq!(load.rss_bytes, 64 << 20);
        assert_eq!(
            (load.ticks, load.tick_ms_p99),
            (0, 0.0),
            "no ticks, no times"
        );
    }

    #[test]
    fn empty_or_backward_windows_give_zeros_and_shares_stay_within_one() {
        let mut w = LoadWindow::new(30, at(1_000, 100, 500));
        let mut load = ShardLoad::default();
        w.close(at(1_000, 150, 900), &mut load);
        assert_eq!(
            (load.tick_cpu_share, load.client_bytes_out_per_s),
            (0.0, 0),
            "no wall time: nothing per second"
        );
        w.close(at(900, 100, 0), &mut load);
        assert_eq!(
            (
                load.window_ms,
                load.tick_cpu_ms,
                load.client_bytes_out_per_s
            ),
            (0, 0.0, 0),
            "readings that went back are no change, not a wrap-around"
        );
        let mut w = LoadWindow::new(30, at(0, 0, 0));
        w.close(at(100, 101, 0), &mut load);
        assert_eq!(load.tick_cpu_share, 1.0, "clocks read a moment apart");
        assert!(
            load.figures_ok(),
            "what the window writes, the wire accepts"
        );
    }

    #[test]
    fn a_shard_that_falls_behind_reports_how_far_and_the_cpu_it_would_need() {
        // 10 Hz: 100 ms per tick. Ten ticks in a second: on schedule.
        let mut w = LoadWindow::new(10, at(0, 0, 0));
        for _ in 0..10 {
            w.record_tick(MS * 60);
        }
        let mut load = ShardLoad::default();
        w.close(at(1_000, 600, 0), &mut load);
        assert!(near(load.tick_slowdown, 1.0), "{}", load.tick_slowdown);
        assert!(
            near(load.cpu_demand(), 1.8),
            "the process's three threads' worth"
        );

        // Four ticks of 250 ms in the next second: the tick thread used its whole core and
        // kept 40% of its rate, so keeping the rate would take 2.5 cores.
        for _ in 0..4 {
            w.record_tick(MS * 250);
        }
        w.close(at(2_000, 1_600, 0), &mut load);
        assert_eq!(load.tick_cpu_share, 1.0, "what it got: one core");
        assert!(near(load.tick_slowdown, 2.5), "{}", load.tick_slowdown);
        load.process_cpu_share = 1.0;
        assert!(near(load.cpu_demand(), 2.5), "{}", load.cpu_demand());
        assert!(load.figures_ok());

        // No tick in a window: nothing to say how far behind (not infinitely).
        w.close(at(2_500, 1_800, 0), &mut load);
        assert_eq!(load.tick_slowdown, 0.0);
        assert!(load.figures_ok());
    }

    #[test]
    fn cpu_demand_counts_the_slowdown_within_bounds() {
        let load = |tick_slowdown| ShardLoad {
            tick_cpu_share: 0.9,
            process_cpu_share: 0.5,
            tick_slowdown,
            ..ShardLoad::default()
        };
        assert_eq!(load(0.0).cpu_demand(), 0.9, "not measured: what it used");
        assert_eq!(load(0.5).cpu_demand(), 0.9, "never less than what it used");
        assert_eq!(load(2.0).cpu_demand(), 1.8);
        assert_eq!(
            load(1e9).cpu_demand(),
            0.9 * zonescaler_shared::limits::TICK_SLOWDOWN_MAX,
            "a stalled shard counts as far behind, not as a billion cores"
        );
        assert_eq!(load(f32::NAN).cpu_demand(), 0.9);
    }
}
