//! The multi-shard simulator: smoke seeds pass, a seed that once failed stays fixed, and each
//! checker fires on a deliberately broken run.

use bevy_ecs::entity::Entity;
use bevy_ecs::query::With;
use zonescaler_server::ShardApp;
use zonescaler_server::components::{Owned, Position};
use zonescaler_server::proxy::Proxy;
use zonescaler_sim::Violation;
use zonescaler_sim::cluster::{ClusterConfig, ClusterSim, run_cluster_seed};

#[test]
fn multi_shard_smoke_seeds_pass() {
    for seed in [0, 2, 3] {
        let proxies = run_cluster_seed(seed).unwrap_or_else(|v| {
            panic!("{v}\nreplay: cargo run -p zonescaler-sim -- --cluster --seed {seed}")
        });
        assert!(
            proxies > 10,
            "seed {seed}: the border zones must hold proxies ({proxies})"
        );
    }
}

/// Regression: cluster seed 1 found two updates for a new proxy arriving in one tick spawning two
/// copies, one of them orphaned at a stale position.
#[test]
fn regression_cluster_seed_1_no_duplicate_proxies() {
    run_cluster_seed(1).unwrap_or_else(|v| panic!("{v}"));
}

fn sabotaged(seed: u64, f: impl FnMut(&mut [ShardApp], u64) + 'static) -> Violation {
    let mut sim = ClusterSim::new(ClusterConfig::smoke(seed)).expect("valid config");
    sim.sabotage = Some(Box::new(f));
    sim.run()
        .expect_err("a sabotaged run must violate an invariant")
}

fn first_proxy(app: &mut ShardApp) -> Option<Entity> {
    app.world
        .query_filtered::<Entity, With<Proxy>>()
        .iter(&app.world)
        .next()
}

#[test]
fn single_authority_fires_on_a_forced_double_owner() {
    let v = sabotaged(3, |shards, tick| {
        if tick == 40
            && let Some(e) = first_proxy(&mut shards[1])
        {
            shards[1].world.entity_mut(e).insert(Owned);
        }
    });
    assert_eq!((v.invariant, v.tick), ("single_authority", 40), "{v}");
}

#[test]
fn no_lost_entities_fires_when_an_owned_entity_vanishes() {
    let v = sabotaged(3, |shards, tick| {
        if tick == 40 {
            let e = shards[0]
                .world
                .query_filtered::<Entity, With<Owned>>()
                .iter(&shards[0].world)
                .next();
            if let Some(e) = e {
                shards[0].world.despawn(e);
            }
        }
    });
    assert_eq!((v.invariant, v.tick), ("no_lost_entities", 40), "{v}");
}

#[test]
fn proxies_converge_fires_on_a_proxy_that_drifted() {
    let v = sabotaged(3, |shards, tick| {
        if tick == 40
            && let Some(e) = first_proxy(&mut shards[1])
            && let Some(mut p) = shards[1].world.get_mut::<Position>(e)
        {
            p.0.x += 50.0;
        }
    });
    assert_eq!((v.invariant, v.tick), ("proxies_converge", 40), "{v}");
}

#[test]
fn proxies_converge_fires_when_proxies_go_missing() {
    let v = sabotaged(3, |shards, tick| {
        if tick >= 40 {
            let all: Vec<Entity> = shards[1]
                .world
                .query_filtered::<Entity, With<Proxy>>()
                .iter(&shards[1].world)
                .collect();
            for e in all {
                shards[1].world.despawn(e);
            }
        }
    });
    assert_eq!(v.invariant, "proxies_converge", "{v}");
    assert!(
        v.tick >= 40 && v.detail.contains("no proxy"),
        "the completeness half fires: {v}"
    );
}
