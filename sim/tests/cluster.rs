//! The multi-shard simulator: smoke seeds pass, a seed that once failed stays fixed, and each
//! checker fires on a deliberately broken run.

use bevy_ecs::entity::Entity;
use bevy_ecs::query::With;
use zonescaler_server::ShardApp;
use zonescaler_server::authority::cell_move::{CellMoves, MovePeer};
use zonescaler_server::core::components::{Avatar, InTransit, Networked, Owned, Position, Proxy};
use zonescaler_server::core::resources::{DespawnLog, PlayerLog};
use zonescaler_server::core::space::Space;
use zonescaler_shared::ShardId;
use zonescaler_shared::cellmap::CellMap;
use zonescaler_sim::Violation;
use zonescaler_sim::cluster::{ClusterConfig, ClusterSim, run_cluster_seed};

#[test]
fn multi_shard_smoke_seeds_pass() {
    for seed in [0, 2, 3] {
        let o = run_cluster_seed(seed).unwrap_or_else(|v| {
            panic!("{v}\nreplay: cargo run -p zonescaler-sim -- --cluster --seed {seed}")
        });
        assert!(
            o.max_proxies > 10,
            "seed {seed}: the border zones must hold proxies ({o:?})"
        );
        assert!(
            o.handoffs > 10,
            "seed {seed}: NPCs and bots crossing borders must be handed off ({o:?})"
        );
        assert!(
            o.bot_handoffs > 0,
            "seed {seed}: bots must follow their avatars to the new shard ({o:?})"
        );
        assert!(
            !o.tick_cpu_shares.is_empty() && o.tick_cpu_shares.iter().all(|s| *s > 0.0),
            "seed {seed}: every shard's heartbeat reports its modelled tick CPU ({o:?})"
        );
        assert!(
            o.cell_share_sums.iter().all(|s| (s - 1.0).abs() < 1e-3),
            "seed {seed}: each shard's cells share its whole tick ({o:?})"
        );
    }
}

/// Regression: cluster seeds 1 and 3 found the checker too strict at the moment a source turns a
/// handed-off entity into a proxy (it shows the frozen position until the new owner's first
/// update, which the new owner may already have moved past).
#[test]
fn regression_cluster_seeds_1_and_3_frozen_position_proxies() {
    for seed in [1, 3] {
        run_cluster_seed(seed).unwrap_or_else(|v| panic!("{v}"));
    }
}

/// Regression: cluster seed 1 found two updates for a new proxy arriving in one tick spawning two
/// copies, one of them orphaned at a stale position.
#[test]
fn regression_cluster_seed_1_no_duplicate_proxies() {
    run_cluster_seed(1).unwrap_or_else(|v| panic!("{v}"));
}

/// Regression: cluster seed 238 found the simulated network delivering a proxy removal, sent
/// just before a partition healed, ahead of the updates held by the partition (a reliable link
/// must keep its order), which left a stale proxy behind.
#[test]
fn regression_cluster_seed_238_partition_keeps_link_order() {
    run_cluster_seed(238).unwrap_or_else(|v| panic!("{v}"));
}

fn sabotaged(seed: u64, f: impl FnMut(&mut [ShardApp], u64) + 'static) -> Violation {
    let mut cfg = ClusterConfig::smoke(seed);
    // No partitions: they would excuse late proxies and hide the sabotage.
    cfg.partition_chance = 0.0;
    let mut sim = ClusterSim::new(cfg).expect("valid config");
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

#[test]
fn handoff_bounded_fires_on_a_handoff_nobody_answers() {
    let v = sabotaged(3, |shards, tick| {
        if tick == 40 {
            let e = shards[0]
                .world
                .query_filtered::<Entity, With<Owned>>()
                .iter(&shards[0].world)
                .next();
            if let Some(e) = e {
                // Frozen for a handoff the target never heard of.
                shards[0]
                    .world
                    .entity_mut(e)
                    .remove::<Owned>()
                    .insert(InTransit {
                        to: ShardId(1),
                        generation: 999,
                    });
            }
        }
    });
    assert_eq!(v.invariant, "handoff_bounded", "{v}");
    assert!(v.tick > 40, "it fires once the bound has passed: {v}");
}

#[test]
fn players_keep_avatars_fires_when_an_avatar_disappears() {
    let v = sabotaged(0, |shards, tick| {
        if tick == 60 {
            for s in shards.iter_mut() {
                let found = s
                    .world
                    .query_filtered::<(Entity, &Networked), With<Avatar>>()
                    .iter(&s.world)
                    .next()
                    .map(|(e, n)| (e, n.0));
                if let Some((e, id)) = found {
                    // Despawned as if on purpose, so only the player's loss is left to notice.
                    s.world.resource_mut::<DespawnLog>().0.push(id);
                    s.world.despawn(e);
                    return;
                }
            }
        }
    });
    assert_eq!((v.invariant, v.tick), ("players_keep_avatars", 60), "{v}");
}

/// Regression: with bots quitting mid-redirect (2026-12-01), cluster seeds 0, 2, 5, 6, 7, 8, 9
/// and 11 failed `directory_forgets_quitters`: the shard a redirected client played on never
/// reported that it left, so a player who quit on the way to its new shard stayed in the master's
/// directory for good (13-16 per 600-bot crowd run on a real cluster).
#[test]
fn regression_cluster_seeds_quitters_leave_the_player_directory() {
    // The seeds' runs shift whenever the traffic between shards changes (every message draws
    // its delay from the seed's stream), so: all of them pass, and most still have quitters.
    let mut with_quitters = 0;
    for seed in [0, 2, 5, 6, 7, 8, 9, 11] {
        let o = run_cluster_seed(seed).unwrap_or_else(|v| panic!("{v}"));
        with_quitters += usize::from(o.quitters > 0);
    }
    assert!(
        with_quitters >= 3,
        "{with_quitters} of the seeds have a bot quit mid-redirect"
    );
}

/// Regression: with quitters, cluster seeds 329, 1359, 5109, 5448, 6330 and 6427 failed
/// `proxies_converge`: an avatar despawned while frozen in a handoff (its player quit) that the
/// target then refused had nothing to resume, so the target kept the proxy it held from before
/// the offer for good. Seeds 876, 982 and 5868 found the checker too strict about the same
/// proxy while the handoff was still unanswered. Seed 4758: the target took it, and counted on
/// the source holding its proxy once acked; despawned, the source never got one. A frozen
/// avatar whose client leaves now waits for a client that never comes instead.
#[test]
fn regression_cluster_seeds_an_avatar_despawned_mid_handoff_leaves_no_proxy() {
    for seed in [6427, 876, 4758] {
        // As found: seed 876 draws a crash since, which changes its run.
        let cfg = ClusterConfig::smoke_without_crash(seed);
        let o = (ClusterSim::new(cfg).expect("forms").run()).unwrap_or_else(|v| panic!("{v}"));
        assert!(o.quitters > 0, "seed {seed}: a bot quits mid-redirect");
    }
}

#[test]
fn directory_forgets_quitters_fires_when_departures_go_unreported() {
    let v = sabotaged(0, |shards, _| {
        for s in shards.iter_mut() {
            let mut log = s.world.resource_mut::<PlayerLog>();
            log.left.clear();
            log.sent_on.clear();
        }
    });
    assert_eq!(v.invariant, "directory_forgets_quitters", "{v}");
}

#[test]
fn one_owner_per_point_fires_when_a_shard_holds_a_map_the_master_never_made() {
    let v = sabotaged(3, |shards, tick| {
        if tick == 50 {
            // Shard 1 gives itself a leaf of someone else's, at the epoch it holds.
            let space = shards[1].world.resource::<Space>();
            let mut map = space.map.clone();
            let me = space.me;
            let foreign = map
                .leaves()
                .iter()
                .find(|(_, s)| **s != me)
                .map(|(c, _)| *c)
                .expect("a foreign leaf");
            let epoch = map.epoch();
            map.reassign(foreign, me).expect("a leaf");
            let leaves = map.leaves().clone();
            let forged = CellMap::from_leaves(*map.grid(), epoch, leaves).expect("valid");
            shards[1].world.insert_resource(Space::new(me, forged));
        }
    });
    assert_eq!(v.invariant, "one_owner_per_point", "{v}");
    assert_eq!(v.tick, 50, "it fires at once: {v}");
}

#[test]
fn settles_into_owner_fires_when_a_shard_keeps_entities_in_a_leaf_it_does_not_own() {
    let v = sabotaged(3, |shards, tick| {
        // Shard 0 believes it is taking over every leaf, for the whole run: it never hands an
        // entity on, wherever it walks.
        if tick == 40 {
            let leaves: Vec<_> = shards[0]
                .world
                .resource::<Space>()
                .map
                .leaves()
                .keys()
                .copied()
                .collect();
            let mut moves = shards[0].world.resource_mut::<CellMoves>();
            for cell in leaves {
                moves.incoming.insert(
                    cell,
                    MovePeer {
                        id: 0,
                        peer: ShardId(1),
                    },
                );
            }
        }
    });
    assert_eq!(v.invariant, "settles_into_owner", "{v}");
    assert!(v.tick > 40, "once the bound has passed: {v}");
}

/// Seeds that failed while cell moves were built: 1 (a remove sent under the old map was dropped
/// by a receiver already on the new one, leaving a stale proxy: proxy batches now apply whatever
/// map they were sent under), 20 (a refused handoff's target kept its pre-freeze proxy: the
/// source now re-mirrors it on resuming), 28 (a shard cut off from the master mirrors by the map
/// it holds: the checker now asks each owner's map) and 50 (two maps in one tick: the checker
/// now keeps every map the master makes).
#[test]
fn regression_cluster_seeds_1_20_28_50_cell_moves() {
    for seed in [1, 20, 28, 50] {
        if let Err(v) = run_cluster_seed(seed) {
            panic!("{v}");
        }
    }
}
