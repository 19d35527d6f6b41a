//! Death: a killed player is back at once, whole, somewhere its shard picked, and is told who
//! killed it; the killer scores (and the world hears of a milestone). A killed NPC lies dead
//! for its delay, then rises elsewhere, and the world keeps its number of NPCs.

mod common;

use common::{Arena, all_with, quiet_rules, small_world};
use glam::Vec3;
use std::time::Instant;
use zonescaler_arena::npc::{Brain, Mode};
use zonescaler_arena::{ArenaRules, Attack, Health, Kind, Score};
use zonescaler_server::core::components::{InTransit, Owned, Position};
use zonescaler_shared::protocol::MessageScope;

#[test]
fn a_killed_player_respawns_whole_hears_who_did_it_and_the_killer_scores() {
    let started = Instant::now();
    let rules = ArenaRules {
        attack_damage_hp: 50,
        attack_cooldown_ms: 100,
        kill_points_player: 10,
        milestone_points: 10,
        ..quiet_rules()
    };
    let mut a = Arena::new(small_world(), rules);
    let b = a.borders()[0];
    let ann = a.login(b.near, "ann");
    let bob = a.login(b.far, "bob");
    let (ann_id, bob_id) = (a.id(ann), a.id(bob));
    a.teleport(ann_id, b.point(-1.5, 0.0));
    let spot = b.point(1.5, 0.0);
    a.teleport(bob_id, spot);
    a.steps(2);
    let full = a.get::<Health>(b.far, bob_id).expect("health");

    // Two hits of 50 kill bob (100 hp), across the border.
    let mut hits = 0;
    for _ in 0..60 {
        if a.stats(b.far).player_deaths > 0 {
            break;
        }
        if a.get::<Position>(b.far, bob_id).expect("bob").0 != spot {
            break;
        }
        a.send(ann, &Attack { target: bob_id });
        hits += 1;
        a.steps(4);
    }
    assert_eq!(
        a.stats(b.far).player_deaths,
        1,
        "bob died once ({hits} attacks sent)"
    );
    a.steps(4);
    let at = a
        .get::<Position>(b.far, bob_id)
        .expect("bob is still there")
        .0;
    assert_eq!(
        a.get::<Health>(b.far, bob_id),
        Some(full),
        "back with full health"
    );
    assert_ne!(at, spot, "somewhere else");
    assert_eq!(a.owner_at(at), b.far, "a point his own shard owns");
    assert_eq!(a.owner(bob_id), b.far);

    // Bob was told who killed him: ann's shard sent the tell, the master routed it to bob's.
    let told = a.clients[bob]
        .messages
        .iter()
        .any(|m| m.scope == MessageScope::Tell && m.text == "ann killed you");
    assert!(
        told,
        "bob hears who killed him: {:?}",
        a.clients[bob].messages
    );
    assert!(
        a.clients[ann]
            .messages
            .iter()
            .any(|m| m.scope == MessageScope::Tell && m.text == "you killed bob"),
        "{:?}",
        a.clients[ann].messages
    );
    assert_eq!(a.get_owned::<Score>(ann_id), Some(Score { points: 10 }));
    assert_eq!(a.get_owned::<Score>(bob_id), Some(Score { points: 0 }));
    // The kill passed ann's first milestone: everyone in the world hears it, on both shards.
    for p in [ann, bob] {
        assert!(
            a.clients[p]
                .messages
                .iter()
                .any(|m| m.scope == MessageScope::Shout && m.text == "ann passed 10 points"),
            "{} hears the shout: {:?}",
            a.clients[p].name,
            a.clients[p].messages
        );
    }
    assert_eq!(a.stats(b.near).kills_credited, 1);
    println!(
        "a kill in {hits} attacks, checked in {:.1?}",
        started.elapsed()
    );
}

/// NPCs alive or dead, owned or in transit, on both shards.
fn npcs(a: &mut Arena) -> usize {
    (0..2)
        .map(|s| {
            let w = a.world(s);
            w.query::<(&Kind, Option<&Owned>, Option<&InTransit>)>()
                .iter(w)
                .filter(|(k, o, t)| **k == Kind::Npc && (o.is_some() || t.is_some()))
                .count()
        })
        .sum()
}

#[test]
fn a_dead_npc_rises_elsewhere_after_its_delay_and_the_npcs_stay_as_many() {
    let rules = ArenaRules {
        attack_damage_hp: 30,
        attack_cooldown_ms: 100,
        npc_attack_damage_hp: 1,
        npc_respawn_ms: 1_000,
        ..quiet_rules()
    };
    let respawn_ticks = 30;
    let mut world = small_world();
    world.npc.count = 40;
    let mut a = Arena::new(world, rules.clone());
    a.step();
    let count = npcs(&mut a);
    assert_eq!(count, 40, "the world's NPCs, shared by area");
    let ann = a.login(0, "ann");
    let ann_id = a.id(ann);
    // Far from any border, so neither ann nor the NPC is handed off while they fight.
    let arena_at = a.deep_inside(0, 40.0);
    a.teleport(ann_id, arena_at);
    let (npc, _) = all_with::<Brain>(a.world(0))
        .into_iter()
        .next()
        .expect("shard 0 owns NPCs");
    a.teleport(npc, arena_at + Vec3::new(2.0, 0.0, 0.0));
    a.step();
    let mut died_at_step = None;
    let mut steps = 0;
    let mut spot = Vec3::ZERO;
    while died_at_step.is_none() && steps < 120 {
        let owner = a.owner(npc);
        let npc_at = a.get::<Position>(owner, npc).expect("npc").0;
        // Keep ann beside it (it chases her anyway) and hit it whenever she may.
        a.teleport(ann_id, npc_at + Vec3::new(1.0, 0.0, 0.0));
        a.send(ann, &Attack { target: npc });
        a.step();
        steps += 1;
        let owner = a.owner(npc);
        if let Some(Brain {
            mode: Mode::Dead { .. },
            ..
        }) = a.get::<Brain>(owner, npc)
        {
            died_at_step = Some(steps);
            spot = a.get::<Position>(owner, npc).expect("npc").0;
        }
    }
    let died = died_at_step.expect("ann killed the NPC");
    assert_eq!(npcs(&mut a), count);
    // Dead for its delay: no health, not moving.
    for _ in 0..respawn_ticks - 3 {
        a.step();
        let owner = a.owner(npc);
        assert_eq!(
            a.get::<Health>(owner, npc).map(|h| h.hp),
            Some(0),
            "still dead"
        );
        assert_eq!(a.get::<Position>(owner, npc).map(|p| p.0), Some(spot));
        assert_eq!(
            npcs(&mut a),
            count,
            "a dead NPC is still one of the world's NPCs"
        );
    }
    let mut rose = None;
    for n in 0..10 {
        a.step();
        let owner = a.owner(npc);
        if a.get::<Health>(owner, npc).is_some_and(|h| h.hp > 0) {
            rose = Some(respawn_ticks - 3 + n + 1);
            break;
        }
    }
    let rose = rose.expect("the NPC rises after its delay");
    let owner = a.owner(npc);
    let h = a.get::<Health>(owner, npc).expect("health");
    assert_eq!(h.hp, rules.npc_hp_max, "whole again");
    let at = a.get::<Position>(owner, npc).expect("npc").0;
    assert!(at.distance(spot) > 1.0, "elsewhere: {spot} -> {at}");
    assert_eq!(
        a.get::<Brain>(owner, npc).map(|b| b.mode),
        Some(Mode::Wander)
    );
    assert_eq!(npcs(&mut a), count);
    assert_eq!(
        a.get_owned::<Score>(ann_id),
        Some(Score {
            points: rules.kill_points_npc
        })
    );
    println!("the NPC died after {died} steps and rose {rose} ticks later");
}
