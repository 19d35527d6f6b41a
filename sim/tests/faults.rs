//! The faults simulated after crashes: links that die with frames in flight (the members'
//! sessions send them again after the redial), shards cut off from the master past its silence
//! (their lease stops them before the master gives their cells away, and they stop once told
//! they are fenced), and each process's own clocks. Each checker these faults brought fires on a
//! sabotaged run.

use zonescaler_sim::Violation;
use zonescaler_sim::cluster::{ClusterConfig, ClusterSim, Leases, run_cluster_seed};

/// The first seed whose sabotaged run, from `cfg`, fails; that failure.
fn first_failure(seeds: std::ops::Range<u64>, cfg: impl Fn(u64) -> ClusterConfig) -> Violation {
    seeds
        .clone()
        .find_map(|seed| ClusterSim::new(cfg(seed)).ok()?.run().err())
        .unwrap_or_else(|| panic!("no seed in {seeds:?} failed"))
}

/// Seeds with many link deaths and none of the other membership faults.
fn dying_links(seed: u64) -> ClusterConfig {
    let mut cfg = ClusterConfig::smoke(seed);
    cfg.link_death_chance = 0.05;
    cfg.crash_at_tick = None;
    cfg.long_cut = None;
    cfg
}

/// Seeds with a long cut of a shard from the master, and no crash.
fn long_cut(seed: u64) -> ClusterConfig {
    let mut cfg = ClusterConfig::smoke(seed);
    cfg.crash_at_tick = None;
    cfg.long_cut = Some((40, 130));
    cfg.balance = true;
    cfg
}

#[test]
fn links_that_die_lose_nothing_their_sessions_send_again() {
    let mut deaths = 0;
    for seed in 0..4 {
        let o = (ClusterSim::new(dying_links(seed)).expect("forms").run()).unwrap_or_else(|v| {
            panic!("{v}\nreplay: cargo run -p zonescaler-sim -- --cluster --seed {seed}")
        });
        let s = o.links;
        assert!(s.redials_up > 0 || s.deaths == 0, "seed {seed}: {s:?}");
        deaths += s.deaths;
        assert!(
            s.frames_lost == 0 || s.frames_resent > 0,
            "seed {seed}: what was lost in flight was sent again ({s:?})"
        );
    }
    assert!(deaths > 10, "links died ({deaths})");
}

#[test]
fn links_lose_nothing_fires_when_sessions_do_not_send_again_after_a_redial() {
    let v = first_failure(0..20, |seed| {
        let mut cfg = dying_links(seed);
        cfg.resend_after_redial = false;
        cfg
    });
    assert_eq!(v.invariant, "links_lose_nothing", "{v}");
}

#[test]
fn links_heal_fires_when_dead_links_are_never_redialled() {
    let v = first_failure(0..20, |seed| {
        let mut cfg = dying_links(seed);
        cfg.redial = false;
        cfg
    });
    assert_eq!(v.invariant, "links_heal", "{v}");
}

#[test]
fn a_shard_cut_off_from_the_master_past_its_silence_is_fenced_and_stops() {
    let mut fenced = 0;
    for seed in 0..6 {
        let o = ClusterSim::new(long_cut(seed))
            .expect("forms")
            .run()
            .unwrap_or_else(|v| panic!("{v}"));
        let m = o.membership;
        fenced += m.fenced;
        assert!(
            m.fenced == 0 || m.lease_paused_ticks > 0,
            "seed {seed}: paused before it was fenced ({m:?})"
        );
    }
    assert!(fenced >= 3, "long cuts got shards fenced ({fenced})");
}

#[test]
fn single_authority_fires_when_a_cut_off_shard_ignores_its_lease() {
    let v = first_failure(0..20, |seed| {
        let mut cfg = long_cut(seed);
        cfg.leases = Leases::Ignored;
        cfg
    });
    assert_eq!(v.invariant, "single_authority", "{v}");
    assert!(v.detail.contains("fenced"), "{v}");
}

#[test]
fn fenced_shard_stops_fires_when_a_lost_lease_only_pauses() {
    let v = first_failure(0..20, |seed| {
        let mut cfg = long_cut(seed);
        cfg.leases = Leases::NeverLost;
        cfg.ticks = 900;
        cfg
    });
    assert_eq!(v.invariant, "fenced_shard_stops", "{v}");
}

#[test]
fn no_false_death_fires_when_the_master_records_none_of_a_shards_heartbeats() {
    let v = first_failure(0..5, |seed| {
        let mut cfg = ClusterConfig::smoke(seed);
        cfg.heartbeats_heard = false;
        // Nobody cut off from the master: every death is false.
        (cfg.partition_chance, cfg.link_death_chance, cfg.long_cut) = (0.0, 0.0, None);
        cfg
    });
    assert_eq!(v.invariant, "no_false_death", "{v}");
}

/// Wall clocks that step by seconds either way change nothing that decides liveness (the
/// master and the leases run on each process's monotonic clock).
#[test]
fn wall_clock_steps_do_not_matter() {
    for seed in 0..4 {
        let mut cfg = ClusterConfig::smoke(seed);
        cfg.wall_step_ms_max = 5_000;
        ClusterSim::new(cfg)
            .expect("forms")
            .run()
            .unwrap_or_else(|v| panic!("{v}"));
    }
}

#[test]
fn smoke_seeds_with_the_new_faults_pass() {
    for seed in 0..3 {
        run_cluster_seed(seed).unwrap_or_else(|v| panic!("{v}"));
    }
}
