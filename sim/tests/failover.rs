//! Crashes in the multi-shard simulator: a shard that stops dead is declared dead by the master
//! after its silence and its cells go to the buddy holding its replica (`failover_completes`),
//! which promotes it: no entity is lost (`no_lost_entities`: what the crashed shard held comes
//! back within `FAILOVER_BOUND_MS` of the adoption), its proxies leave its neighbours, their
//! handoffs to it are settled by the adopter (`proxies_converge`, `handoff_bounded`), and never
//! two owners (`single_authority`). Each checker fires on a sabotaged run, and the seeds the
//! sweeps found stay fixed.

use zonescaler_server::authority::replica::Replicas;
use zonescaler_shared::limits;
use zonescaler_sim::cluster::{ClusterConfig, ClusterSim, FAILOVER_BOUND_MS, run_cluster_seed};

/// The first seeds with a crash (they draw it from a stream of their own).
fn crash_seeds(n: usize) -> Vec<u64> {
    (0..)
        .filter(|&s| ClusterConfig::smoke(s).crash_at_tick.is_some())
        .take(n)
        .collect()
}

/// A crash seed with only its crash among the membership faults: no link deaths and no long cut,
/// which may take a second shard down (`sim/tests/faults.rs` covers those).
fn crash_only(seed: u64) -> ClusterConfig {
    let mut cfg = ClusterConfig::smoke(seed);
    cfg.link_death_chance = 0.0;
    cfg.long_cut = None;
    cfg
}

#[test]
fn a_crashed_shards_entities_come_back_from_its_buddy_and_nothing_is_lost() {
    for seed in crash_seeds(5) {
        let sim = ClusterSim::new(crash_only(seed)).expect("the cluster forms");
        let o = sim.run().unwrap_or_else(|v| {
            panic!("{v}\nreplay: cargo run -p zonescaler-sim -- --cluster --seed {seed}")
        });
        let m = o.membership;
        assert_eq!(m.crashes, 1, "seed {seed}: one shard crashed ({m:?})");
        assert!(
            m.crash_entities_held > 0,
            "seed {seed}: it held entities ({m:?})"
        );
        assert_eq!(
            m.crash_entities_lost, 0,
            "seed {seed}: all of them came back ({m:?})"
        );
        assert!(
            m.failover_ms >= limits::SHARD_DEAD_AFTER_MS - limits::HEARTBEAT_MS,
            "seed {seed}: declared dead only after the silence ({m:?})"
        );
        assert!(
            m.failover_ms > 0,
            "seed {seed}: its cells were given away ({m:?})"
        );
    }
}

#[test]
fn failover_completes_fires_when_the_master_never_gives_the_cells_away() {
    let seed = crash_seeds(1)[0];
    let mut cfg = crash_only(seed);
    // No buddy heard of and no balancing rounds at all: nobody adopts the dead shard's cells.
    cfg.balance = false;
    cfg.buddies_reported = false;
    let v = ClusterSim::new(cfg)
        .expect("the cluster forms")
        .run()
        .expect_err("a crash nobody recovers");
    assert_eq!(v.invariant, "failover_completes", "{v}");
    assert!(
        v.detail.contains(&format!(
            "{} ms",
            limits::SHARD_DEAD_AFTER_MS + FAILOVER_BOUND_MS
        )),
        "{v}"
    );
}

/// Found by the first sweep with crashes: the balancer kept a move it had planned out of a shard
/// that then died "in flight" for its cooldown, so that leaf stayed the dead shard's.
#[test]
fn regression_cluster_seed_42_a_dead_shards_leaf_in_a_pending_move() {
    run_cluster_seed(42).unwrap_or_else(|v| panic!("{v}"));
    assert_eq!(ClusterConfig::smoke(42).crash_at_tick, Some(41));
}

/// Found by the first 10,000-seed sweep with crashes:
/// - 566, 878, 1695, 3681, 4328, 5731, 6361, 7743, 7933, 8164, 8497: a player on a shard that
///   crashed stayed in the master's player directory for good (a dead shard's players are now
///   forgotten when it is declared dead);
/// - 2417, 5420: a late joiner waits to link to a member that crashed unnoticed until the master's
///   verdict (the checker's bound now allows for it);
/// - 749, 4036, 9305, 9323: back-to-back partitions of one pair outlasted the master's silence
///   (the simulation runs no leases; a pair already cut now heals when it was going to);
/// - 8486: an avatar handed on by the shard that then crashed waits for a client that never
///   comes, unhanded, until `REDIRECT_WAIT_MS` (out of `settles_into_owner`).
#[test]
fn regression_cluster_seeds_from_the_first_crash_sweep() {
    for seed in [
        566, 878, 1695, 3681, 4328, 5731, 6361, 7743, 7933, 8164, 8497, 2417, 5420, 749, 4036,
        9305, 9323, 8486,
    ] {
        run_cluster_seed(seed).unwrap_or_else(|v| {
            panic!("{v}\nreplay: cargo run -p zonescaler-sim -- --cluster --seed {seed}")
        });
    }
}

#[test]
fn no_lost_entities_fires_when_the_buddy_lost_the_replica() {
    let seed = crash_seeds(1)[0];
    let mut cfg = crash_only(seed);
    cfg.partition_chance = 0.0;
    let mut sim = ClusterSim::new(cfg).expect("the cluster forms");
    // Every replica forgotten as it arrives: the adopter has nothing to promote.
    sim.sabotage = Some(Box::new(|shards, _| {
        for s in shards.iter_mut() {
            s.world.resource_mut::<Replicas>().owners.clear();
        }
    }));
    let v = sim
        .run()
        .expect_err("the crashed shard's entities never come back");
    assert_eq!(v.invariant, "no_lost_entities", "{v}");
    assert!(v.detail.contains("did not come back"), "{v}");
}

/// Found by the first sweep with buddy replication: seed 6033's shard 3 had an attempt open to
/// shard 2 when 2 crashed, for an entity 2 had handed to 3 a moment before. Shard 2's replica
/// said the entity was despawned (its proxy was gone when the batch was built: the new owner's
/// remove came in the same tick as its ack), so the adopter took its own attempt for moved on and
/// dropped its copy: lost. A removal now names the handoff's generation.
#[test]
fn regression_cluster_seed_6033_a_handed_on_entity_is_no_despawned_one() {
    run_cluster_seed(6033).unwrap_or_else(|v| panic!("{v}"));
}

/// Found by the same sweep: seed 3352's shard 2 was handing an entity to the late joiner when it
/// crashed; the joiner took it, but the replica never heard (two owners once the adopter
/// promoted it). The adopter now waits for every live member's `Taken` list. With that, the
/// seed lost an entity shard 1 had handed to shard 2 just before the crash, acknowledged but not
/// yet replicated (so was seed 2286): the source keeps what it handed (`Handed`) and asks the
/// adopter, which gives it back when nobody holds it.
///
/// Seed 7002: a shard offered an entity to a member that had died with no adopter, between the
/// push that dropped it and the map that gave its cells away; nothing settled that attempt again,
/// so the entity stayed frozen. Now nobody offers to a member that left, and attempts to one
/// opened since its departure are settled on the next push.
#[test]
fn regression_cluster_seeds_3352_and_2286_what_the_dead_shard_took_or_gave_just_before() {
    for seed in [3352, 2286, 7002] {
        run_cluster_seed(seed).unwrap_or_else(|v| panic!("{v}"));
    }
}

/// Found by the first sweep with link deaths and long cuts: seed 1881's shard 2 offered an
/// entity to shard 1 and crashed; shard 1 took it, then was cut off from the master and fenced,
/// and shard 0 promoted it from shard 1's replica. Shard 3, adopting shard 2 only then, inherited
/// the attempt and offered it to shard 1's adopter, which refused `Conflict` (it held it at that
/// generation); shard 3 resumed its copy: two owners. A request for an entity the target holds
/// at that generation or later is now answered `HandoffAck`.
#[test]
fn regression_cluster_seed_1881_an_inherited_attempt_retargeted_to_the_adopter_of_its_taker() {
    let cfg = ClusterConfig::smoke(1881);
    assert!(cfg.crash_at_tick.is_some() && cfg.long_cut.is_some());
    let o = run_cluster_seed(1881).unwrap_or_else(|v| panic!("{v}"));
    assert_eq!(o.membership.crashes, 1, "{:?}", o.membership);
    assert_eq!(o.membership.fenced, 1, "{:?}", o.membership);
}

/// Seed 2706: shard 1 offered an avatar to shard 2 and crashed; shard 2, cut off from the master,
/// took it, streamed it to its buddy, shard 3, and was fenced. Shard 3 promoted it from shard 2's
/// replica; then shard 0, adopting shard 1, found it frozen in shard 1's attempt to shard 2,
/// which was no member any more, and simulated it too: two owners. An adopter now asks the dead
/// target's adopter (`Orphan`), which answers from the target's replica, as it does for any
/// source's attempt to that shard.
#[test]
fn regression_cluster_seed_2706_a_dead_sources_attempt_to_a_target_that_died_too() {
    let cfg = ClusterConfig::smoke(2706);
    assert!(cfg.crash_at_tick.is_some() && cfg.long_cut.is_some());
    let o = run_cluster_seed(2706).unwrap_or_else(|v| panic!("{v}"));
    assert_eq!(o.membership.crashes, 1, "{:?}", o.membership);
    assert_eq!(o.membership.fenced, 1, "{:?}", o.membership);
}

/// Seed 4079: shard 1 handed an entity to shard 2, which handed it on to shard 3; shard 1 kept
/// a fresh proxy of it from shard 3. When shard 2 was fenced, shard 1 asked its adopter, shard 3,
/// about its record of that handoff; shard 3 acknowledged and recorded shard 1's proxy as mirrored
/// at the record's older generation, so the remove it sent when the entity left shard 1's border
/// named that generation and left the newer proxy there for good. The adopter now records it at
/// the generation the entity is owned at there (its components sent again with the next refresh).
#[test]
fn regression_cluster_seed_4079_an_answered_record_keeps_the_proxy_generation() {
    let cfg = ClusterConfig::smoke(4079);
    assert!(cfg.long_cut.is_some());
    let o = run_cluster_seed(4079).unwrap_or_else(|v| panic!("{v}"));
    assert_eq!(o.membership.fenced, 1, "{:?}", o.membership);
}
