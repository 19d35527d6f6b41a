//! The same seed twice gives the same world, tick by tick; another seed gives another world.

use zonescaler_sim::{Sim, SimConfig, run_seed};

#[test]
fn same_seed_same_state_hash_every_tick() {
    let a = run_seed(42).expect("seed 42 passes its invariants");
    let b = run_seed(42).expect("seed 42 passes its invariants");
    assert_eq!(a.hashes.len(), 300);
    assert_eq!(
        a.hashes, b.hashes,
        "every tick's state hash must repeat exactly"
    );
    assert_eq!(a.snapshots_applied, b.snapshots_applied);
    assert!(
        a.snapshots_applied > 1_000,
        "clients must actually play ({} snapshots)",
        a.snapshots_applied
    );
    let c = run_seed(43).expect("seed 43 passes its invariants");
    assert_ne!(
        a.hashes.last(),
        c.hashes.last(),
        "a different seed must give a different world"
    );
}

#[test]
fn smoke_seeds_pass_every_invariant() {
    for seed in 0..20 {
        if let Err(v) = run_seed(seed) {
            panic!("{v}\nreplay: cargo run -p zonescaler-sim -- --seed {seed}");
        }
    }
}

#[test]
fn heavy_faults_still_pass() {
    let mut cfg = SimConfig::smoke(7);
    cfg.faults.loss = 0.4;
    cfg.faults.duplicate = 0.2;
    cfg.faults.reorder = 0.3;
    cfg.faults.jitter_us = 60_000;
    cfg.churn = 1.0;
    let o = Sim::new(cfg).run().unwrap_or_else(|v| panic!("{v}"));
    assert!(
        o.messages_dropped > 100,
        "the run must really lose messages ({})",
        o.messages_dropped
    );
}
