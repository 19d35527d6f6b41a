//! The modelled load of a simulated shard: what its heartbeats say in place of measurements.
//!
//! A simulated shard has no thread or process of its own to measure, and a measurement would
//! break replay, so each tick is charged a CPU time by the same cost model that apportions a
//! real shard's tick over its cells (`zonescaler_server::core::load`), at the price measured in
//! `benches/` (~60 ns per entity unit), and the figures go through the production
//! [`LoadWindow`]. Everything is a function of the simulated state, so a seed replays to the
//! same heartbeats. The simulated machine is never contended: a tick's wall time equals its
//! CPU time, the process does nothing but tick, and memory is not modelled (0).

use std::time::Duration;
use zonescaler_server::ShardApp;
use zonescaler_server::cluster::{LoadCounters, LoadWindow};
use zonescaler_server::core::load::cell_cost;
use zonescaler_shared::protocol::ShardLoad;

/// CPU time one entity unit costs a tick (`benches/README.md`: ~58 ns per idle entity at 1 000
/// and 10 000 entities).
pub const TICK_NS_PER_COST: u64 = 60;

/// One simulated shard's load: cumulative modelled counters and the window they feed.
#[derive(Debug)]
pub struct ModelledLoad {
    counters: LoadCounters,
    window: LoadWindow,
}

impl ModelledLoad {
    pub fn new(tick_hz: u32) -> Self {
        Self {
            counters: LoadCounters::default(),
            window: LoadWindow::new(tick_hz, LoadCounters::default()),
        }
    }

    /// After `app` ticked (a tick of `period` simulated time) and handed the links
    /// `link_bytes` of messages.
    pub fn after_tick(&mut self, app: &ShardApp, period: Duration, link_bytes: u64) {
        let s = app.stats();
        // Every networked entity here (proxies too: they are mirrored and viewed), and each
        // client's AOI, delta and snapshot on top.
        let cost = cell_cost(
            u32::try_from(s.entities).unwrap_or(u32::MAX),
            u32::try_from(s.clients).unwrap_or(u32::MAX),
        );
        let cpu = Duration::from_nanos(cost.saturating_mul(TICK_NS_PER_COST));
        self.window.record_tick(cpu);
        let c = &mut self.counters;
        c.at += period;
        c.tick_thread_cpu += cpu.min(period);
        c.process_cpu += cpu.min(period);
        c.client_bytes_out = s.snapshot_bytes;
        c.link_bytes_out += link_bytes;
    }

    /// Close the window into `load` (a heartbeat is due).
    pub fn close(&mut self, load: &mut ShardLoad) {
        self.window.close(self.counters, load);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zonescaler_shared::config::WorldConfig;

    #[test]
    fn a_busier_shard_reports_more_cpu_and_equal_shards_the_same() {
        let world = WorldConfig::default();
        let period = Duration::from_millis(33);
        let run = |npcs: u32| {
            let mut cfg = world.clone();
            cfg.npc.count = npcs as usize;
            let mut app = ShardApp::example(cfg);
            let mut load = ModelledLoad::new(30);
            for _ in 0..6 {
                app.tick();
                load.after_tick(&app, period, 100);
            }
            let mut out = ShardLoad::default();
            load.close(&mut out);
            out
        };
        let (small, big) = (run(100), run(1_000));
        assert_eq!(small, run(100), "the same world, the same report");
        assert!(
            big.tick_cpu_share > small.tick_cpu_share && small.tick_cpu_share > 0.0,
            "{small:?} vs {big:?}"
        );
        assert_eq!((big.ticks, big.window_ms), (6, 198));
        assert_eq!(big.link_bytes_out_per_s, 3_030, "600 bytes in 0.198 s");
        assert!(big.figures_ok());
    }
}
