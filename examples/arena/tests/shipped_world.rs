//! The arena as shipped (`assets/worlds/arena.toml`, default rules) runs as a two-shard cluster:
//! NPCs wander across borders and keep their number, pickups stand in every shard's cells
//! (some by the borders), players among them get chased and bitten, and no system of the game
//! ever writes a proxy (a debug build would panic with `error[Z0001]`).

mod common;

use bevy_ecs::prelude::With;
use common::Arena;
use glam::Vec3;
use std::time::Instant;
use zonescaler_arena::pickups::PickupStock;
use zonescaler_arena::rules::BORDER_BAND_M;
use zonescaler_arena::{ArenaRules, Kind};
use zonescaler_server::core::components::{InTransit, Owned, Position};
use zonescaler_server::core::resources::HandoffStats;
use zonescaler_shared::config::WorldConfig;

const TICKS: usize = 600;

fn count(a: &mut Arena, kind: Kind) -> [usize; 2] {
    [0, 1].map(|s| {
        let w = a.world(s);
        w.query::<(&Kind, Option<&Owned>, Option<&InTransit>)>()
            .iter(w)
            .filter(|(k, o, t)| **k == kind && (o.is_some() || t.is_some()))
            .count()
    })
}

#[test]
fn the_shipped_arena_runs_as_a_cluster_and_keeps_its_numbers() {
    let started = Instant::now();
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/worlds/arena.toml");
    let cfg = WorldConfig::load(&path).expect("the shipped arena world loads");
    let rules = ArenaRules::default();
    rules
        .validate(&cfg)
        .expect("the shipped rules fit the shipped world");
    let npc_count = cfg.npc.count;
    let mut a = Arena::new(cfg, rules.clone());
    a.step();
    let npcs = count(&mut a, Kind::Npc);
    assert_eq!(npcs[0] + npcs[1], npc_count, "every NPC placed: {npcs:?}");
    let pickups = count(&mut a, Kind::Pickup);
    assert_eq!(
        pickups[0] + pickups[1],
        rules.pickups,
        "every pickup placed: {pickups:?}"
    );
    for (s, placed) in pickups.into_iter().enumerate() {
        assert_eq!(
            a.world(s).resource::<PickupStock>().wanted,
            placed,
            "shard {s} keeps its share"
        );
    }
    // Some of each shard's pickups stand by a border, where players of both shards can race.
    for s in 0..2 {
        let items: Vec<Vec3> = {
            let w = a.world(s);
            w.query_filtered::<(&Kind, &Position), With<Owned>>()
                .iter(w)
                .filter(|(k, _)| **k == Kind::Pickup)
                .map(|(_, p)| p.0)
                .collect()
        };
        let by_border = items
            .iter()
            .filter(|p| {
                let b = BORDER_BAND_M;
                [(b, 0.0), (-b, 0.0), (0.0, b), (0.0, -b)]
                    .iter()
                    .any(|(dx, dz)| {
                        a.cluster
                            .map
                            .owner_at([p.x + dx, p.z + dz])
                            .is_some_and(|o| usize::from(o.0) != s)
                    })
            })
            .count();
        assert!(
            by_border > 0 && by_border < items.len(),
            "shard {s}: {by_border} of its {} pickups stand by a border",
            items.len()
        );
    }
    // Players by the borders, where NPCs from both sides find them.
    let borders = a.borders();
    for (i, b) in borders.iter().take(4).enumerate() {
        let p = a.login(b.near, &format!("p{i}"));
        let id = a.id(p);
        a.teleport(id, b.point(-3.0, 0.0));
    }
    for tick in 0..TICKS {
        a.step();
        if tick % 30 == 0 {
            let n = count(&mut a, Kind::Npc);
            assert_eq!(
                n[0] + n[1],
                npc_count,
                "tick {tick}: NPCs neither lost nor doubled"
            );
        }
    }
    let handoffs: u64 = (0..2)
        .map(|s| a.world(s).resource::<HandoffStats>().accepted)
        .sum();
    let stats = [a.stats(0), a.stats(1)];
    let decisions: u64 = stats.iter().map(|s| s.npc_decisions).sum();
    let attacks: u64 = stats.iter().map(|s| s.attacks).sum();
    assert!(handoffs > 0, "NPCs wandered across borders");
    assert!(
        decisions > npc_count as u64,
        "NPCs kept deciding ({decisions})"
    );
    println!(
        "{TICKS} ticks of {npc_count} NPCs, {} pickups, 4 players in {:.1?}: {handoffs} \
         handoffs, {decisions} NPC decisions, {attacks} attacks, {} player deaths",
        rules.pickups,
        started.elapsed(),
        stats[0].player_deaths + stats[1].player_deaths
    );
}
