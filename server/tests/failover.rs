//! A shard that dies (killed: it goes silent, as a crashed process does), in one process: the
//! master declares it dead after `SHARD_DEAD_AFTER_MS` and gives its cells to the buddy that
//! holds its replica, under a new epoch; the buddy promotes the replica; every neighbour drops
//! the proxies of its entities, and what they were handing to it is settled by the adopter. No
//! entity is lost or doubled at any tick, and the dead shard's come back from at most a few
//! ticks before its death. The master's ownership audit, taken every second from the shards'
//! reports, agrees: never a duplicate, and every entity that existed held once at the end.

use bevy_ecs::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use zonescaler_server::app::demo_game;
use zonescaler_server::authority::replica::Replicas;
use zonescaler_server::cluster::LocalCluster;
use zonescaler_server::core::components::{
    Generation, InTransit, Networked, Owned, Position, Proxy,
};
use zonescaler_shared::config::WorldConfig;
use zonescaler_shared::limits;
use zonescaler_shared::{NetId, ShardId};

/// What shard `i` holds: owned, frozen in a handoff (and to whom), proxies (and whose).
#[derive(Default)]
struct Held {
    owned: BTreeSet<NetId>,
    frozen: BTreeMap<NetId, ShardId>,
    proxies: BTreeMap<NetId, ShardId>,
}

fn held(c: &mut LocalCluster, i: usize) -> Held {
    let s = &mut c.shards[i];
    let mut q = s
        .world
        .query::<(&Networked, Has<Owned>, Option<&InTransit>, Option<&Proxy>)>();
    let mut h = Held::default();
    for (n, owned, transit, proxy) in q.iter(&s.world) {
        if owned {
            h.owned.insert(n.0);
        }
        if let Some(t) = transit {
            h.frozen.insert(n.0, t.to);
        }
        if let Some(p) = proxy {
            h.proxies.insert(n.0, p.owner);
        }
    }
    h
}

/// Every entity the living shards `alive` hold (owned or frozen), panicking if two simulate one.
fn held_by(c: &mut LocalCluster, alive: &[usize]) -> BTreeSet<NetId> {
    let mut all = BTreeSet::new();
    let mut owned = BTreeMap::new();
    for &i in alive {
        let h = held(c, i);
        for id in &h.owned {
            if let Some(other) = owned.insert(*id, i) {
                panic!("entity {id} is simulated by shards {other} and {i}");
            }
        }
        all.extend(h.owned);
        all.extend(h.frozen.into_keys());
    }
    all
}

#[test]
fn a_dead_shards_entities_come_back_on_its_buddy_and_nothing_is_lost_or_doubled() {
    let mut world = WorldConfig::default();
    world.npc.count = 900;
    world.balancer.round_ms = 200;
    let hz = u64::from(world.simulation.tick_hz);
    let mut c = LocalCluster::new(world, 3, &demo_game()).expect("three shards");
    let dying = ShardId(2);
    // Play until the others mirror shard 2's border entities and hand entities to it.
    let mut ticks = 0;
    loop {
        c.step();
        ticks += 1;
        let sees = (0..2).any(|i| held(&mut c, i).proxies.values().any(|o| *o == dying));
        if sees && ticks >= 60 {
            break;
        }
        assert!(ticks < 3_000, "no proxy of shard 2 on its neighbours");
    }
    let epoch = c.map.epoch();
    let cells = c.map.leaves().len();
    let everything = held_by(&mut c, &[0, 1, 2]);
    let its_own: BTreeSet<NetId> = held(&mut c, 2).owned;
    assert!(!its_own.is_empty(), "shard 2 simulates entities");
    let died_at = c.shards[2].tick_number();

    c.kill(dying);
    let silence_ticks = limits::SHARD_DEAD_AFTER_MS * hz / 1_000;
    let mut taken_over = None;
    let mut adopted_at = None;
    let mut handed_to_dead = 0usize;
    for t in 1..=silence_ticks + 3 * hz {
        c.step();
        handed_to_dead = handed_to_dead.max(
            (0..2)
                .map(|i| {
                    held(&mut c, i)
                        .frozen
                        .values()
                        .filter(|to| **to == dying)
                        .count()
                })
                .sum(),
        );
        // Never two simulating copies (`held_by` panics), and until the adopter promoted the
        // replica nothing the living held is lost: it is theirs still, or the dead shard's;
        // after, nothing at all is.
        let now = held_by(&mut c, &[0, 1]);
        if adopted_at.is_none()
            && (0..2).any(|i| c.shards[i].world.resource::<Replicas>().adopted(dying))
        {
            adopted_at = Some(t);
        }
        if adopted_at.is_none() {
            let dead = held(&mut c, 2);
            for id in everything.difference(&now) {
                assert!(
                    dead.owned.contains(id) || dead.frozen.contains_key(id),
                    "tick {t}: entity {id} vanished without reaching the dead shard"
                );
            }
        } else {
            let lost: Vec<_> = everything.difference(&now).collect();
            assert!(
                lost.is_empty(),
                "tick {t}: lost after the failover: {lost:?}"
            );
        }
        if taken_over.is_none() && c.map.cells_of(dying).next().is_none() {
            taken_over = Some(t);
        }
        let audit = c.master.audit();
        assert_eq!(
            audit.duplicates_total, 0,
            "tick {t}: the master's audit found entities owned twice: {:?}",
            audit.last_duplicates
        );
    }
    let t = taken_over.expect("the dead shard's cells were given away");
    let a = adopted_at.expect("the adopter promoted the replica");
    // Once it heard from the other live shard what it took from the dead one (a link hop).
    assert!(a <= t + 3, "promoted {} ticks after the map flipped", a - t);
    assert!(
        t * 1_000 / hz >= limits::SHARD_DEAD_AFTER_MS,
        "not before the silence: after {t} ticks"
    );
    assert!(
        t <= silence_ticks + hz,
        "within a second of the silence: after {t} ticks ({silence_ticks} of silence)"
    );
    assert!(c.map.epoch() > epoch, "under a new epoch");
    assert_eq!(c.map.leaves().len(), cells, "every cell still has an owner");
    assert!(!c.master.view().shards[2].alive);
    // One adopter took every cell and promoted the replica, which was at most a few ticks
    // older than the dead shard's last tick (the rollback).
    let adopters: BTreeSet<ShardId> = c.map.leaves().values().copied().collect();
    let (adopter, replica_tick, promoted) = (0..2)
        .find_map(|i| {
            c.shards[i]
                .world
                .resource::<Replicas>()
                .last_adoption
                .map(|(dead, tick, n)| {
                    assert_eq!(dead, dying);
                    (i, tick, n)
                })
        })
        .expect("a living shard adopted the dead one");
    assert!(adopters.contains(&ShardId(adopter as u16)));
    let rollback_ticks = died_at.saturating_sub(replica_tick);
    eprintln!(
        "shard 2's cells on shard {adopter} {} ms after it died; {promoted} entities promoted, \
         the replica {rollback_ticks} ticks behind ({} ms); {handed_to_dead} entities were on \
         their way to it",
        t * 1_000 / hz,
        rollback_ticks * 1_000 / hz
    );
    assert!(
        rollback_ticks * 1_000 / hz <= 100,
        "rollback {rollback_ticks} ticks"
    );
    assert!(
        promoted as usize >= its_own.len() / 2,
        "the replica held its entities"
    );
    for i in 0..2 {
        let h = held(&mut c, i);
        assert!(
            h.proxies.values().all(|o| *o != dying),
            "shard {i} still shows proxies of the dead shard"
        );
        assert!(
            h.frozen.values().all(|to| *to != dying),
            "shard {i} still holds entities frozen for the dead shard"
        );
    }
    // Everything that existed before the death exists once among the living, and nothing else.
    let after = held_by(&mut c, &[0, 1]);
    assert_eq!(after, everything, "the living hold exactly what existed");
    // The master's audit says so too: the living reported, each entity once, no two owners.
    let audits_before = c.master.audit().audits_total;
    let audit = c.audit();
    assert!(
        audits_before >= silence_ticks / hz,
        "an audit every second: {audits_before}"
    );
    assert!(audit.complete, "every live member reported: {audit:?}");
    assert_eq!(
        audit.shards.len(),
        2,
        "the dead member's report left the audit"
    );
    assert_eq!(audit.duplicates_total, 0, "{:?}", audit.last_duplicates);
    assert_eq!(
        audit.distinct_entities as usize,
        everything.len(),
        "the audit holds what existed"
    );
    assert!(audit.total_owned <= audit.distinct_entities);
    assert!(audit.distinct_entities <= audit.total_owned + audit.total_in_transit);
}

/// The audit is no rubber stamp: an entity a second shard simulates at its owner's generation
/// (what a failover that promoted a replica over a live owner would leave) is flagged at once.
#[test]
fn the_audit_flags_an_entity_two_shards_own() {
    let mut world = WorldConfig::default();
    world.npc.count = 200;
    let mut c = LocalCluster::new(world, 2, &demo_game()).expect("two shards");
    for _ in 0..10 {
        c.step();
    }
    let clean = c.audit();
    assert_eq!(
        (clean.duplicates, clean.distinct_entities),
        (0, 200),
        "{clean:?}"
    );
    let w = &mut c.shards[0].world;
    let (id, generation, pos) = w
        .query_filtered::<(&Networked, &Generation, &Position), With<Owned>>()
        .iter(w)
        .map(|(n, g, p)| (n.0, *g, *p))
        .next()
        .expect("shard 0 owns NPCs");
    c.shards[1]
        .world
        .spawn((Networked(id), generation, pos, Owned));
    let audit = c.audit();
    assert_eq!(audit.duplicates, 1, "{audit:?}");
    assert_eq!(audit.listed[0].id, id.to_string());
    assert_eq!(audit.distinct_entities, 200, "one entity, owned twice");
    assert_eq!(audit.total_owned, 201);
}
