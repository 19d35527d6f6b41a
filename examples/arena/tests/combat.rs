//! Attacks across a border: the neighbour's entity takes the hit on its owner, the attacker's
//! shard sees the new health on its proxy one tick later, the cooldown holds (across a handoff
//! too), and attacks out of range or at nonsense are refused without harm.

mod common;

use common::{Arena, quiet_rules, small_world};
use std::time::Instant;
use zonescaler_arena::pickups::spawn_pickup;
use zonescaler_arena::{ArenaRules, Attack, Health};
use zonescaler_shared::NetId;

/// Steps within which a hit sent by a client must have landed on the target's owner: the
/// attack is checked (1), the damage routed across the link (2), applied (3).
const LAND_TICKS_MAX: usize = 6;

/// Step until `id`'s health on `owner` changes from `from`; the number of steps taken.
fn until_hit(a: &mut Arena, owner: usize, id: NetId, from: Health) -> Option<usize> {
    for n in 1..=LAND_TICKS_MAX {
        a.step();
        if a.get::<Health>(owner, id) != Some(from) {
            return Some(n);
        }
    }
    None
}

#[test]
fn an_attack_across_a_border_damages_the_neighbours_entity_once_per_cooldown() {
    let started = Instant::now();
    let rules = ArenaRules {
        attack_cooldown_ms: 600,
        ..quiet_rules()
    };
    let damage = rules.attack_damage_hp;
    let mut a = Arena::new(small_world(), rules);
    let b = a.borders()[0];
    let ann = a.login(b.near, "ann");
    let bob = a.login(b.far, "bob");
    let (ann_id, bob_id) = (a.id(ann), a.id(bob));
    a.teleport(ann_id, b.point(-1.5, 0.0));
    a.teleport(bob_id, b.point(1.5, 0.0));
    a.steps(2);
    let full = a.get::<Health>(b.far, bob_id).expect("bob has health");
    assert_eq!(
        a.get::<Health>(b.near, bob_id),
        Some(full),
        "ann's shard holds bob as a proxy with his health, typed"
    );

    // A hit lands on bob's owner, and ann's shard learns of it one tick later.
    let west_before = a.stats(b.near);
    a.send(ann, &Attack { target: bob_id });
    let took = until_hit(&mut a, b.far, bob_id, full).expect("the hit lands on bob's owner");
    let hurt = Health {
        hp: full.hp - damage,
        ..full
    };
    assert_eq!(
        a.get::<Health>(b.far, bob_id),
        Some(hurt),
        "bob's owner applied it"
    );
    assert_eq!(
        a.get::<Health>(b.near, bob_id),
        Some(full),
        "the proxy is not written by the attacker's side"
    );
    a.step();
    assert_eq!(
        a.get::<Health>(b.near, bob_id),
        Some(hurt),
        "one tick later the proxy on ann's shard shows the new health"
    );
    assert_eq!(a.stats(b.near).attacks, west_before.attacks + 1);
    assert_eq!(a.stats(b.far).damage_applied, 1);

    // Within the cooldown a second attack is refused; after it, one lands again.
    a.send(ann, &Attack { target: bob_id });
    assert_eq!(
        until_hit(&mut a, b.far, bob_id, hurt),
        None,
        "no second hit within the cooldown"
    );
    assert_eq!(a.stats(b.near).attack_refusals("cooling_down"), 1);
    a.steps(18);
    a.send(ann, &Attack { target: bob_id });
    until_hit(&mut a, b.far, bob_id, hurt).expect("after the cooldown the next one lands");
    let hurt2 = a.get::<Health>(b.far, bob_id).expect("health");
    assert_eq!(hurt2.hp, full.hp - 2 * damage);

    // Out of range: bob steps back 10 m (still in ann's shard's border zone, still a proxy).
    a.teleport(bob_id, b.point(10.0, 0.0));
    a.steps(20);
    assert!(
        a.holders(bob_id).2.contains(&b.near),
        "bob is still a proxy there"
    );
    a.send(ann, &Attack { target: bob_id });
    assert_eq!(until_hit(&mut a, b.far, bob_id, hurt2), None);
    assert_eq!(a.stats(b.near).attack_refusals("out_of_range"), 1);

    // Nonsense is refused without harm: oneself, an unknown id, a pickup, undecodable bytes.
    let item = spawn_pickup(a.world(b.near), b.point(-2.0, 0.0), 1);
    a.step();
    a.send(ann, &Attack { target: ann_id });
    a.send(
        ann,
        &Attack {
            target: NetId(u64::MAX),
        },
    );
    a.send(ann, &Attack { target: item });
    let kind = a.cluster.shards[b.near]
        .registry()
        .protocol
        .client_kind_of("arena.Attack")
        .expect("registered");
    a.send_raw(ann, kind, vec![0xff; 3]);
    a.steps(3);
    let s = a.stats(b.near);
    assert_eq!(s.attack_refusals("self_target"), 1);
    assert_eq!(s.attack_refusals("unknown_target"), 1);
    assert_eq!(s.attack_refusals("not_attackable"), 1);
    assert!(
        a.clients[ann].closed.is_none(),
        "bad commands refuse the command, not the player"
    );
    assert_eq!(a.get::<Health>(b.near, ann_id).map(|h| h.hp), Some(full.hp));

    // The cooldown crosses the border with ann: hit bob, walk into his shard, hit again at
    // once from there: refused by the new owner.
    a.teleport(bob_id, b.point(2.0, 0.0));
    a.steps(20);
    let before = a.get::<Health>(b.far, bob_id).expect("health");
    a.send(ann, &Attack { target: bob_id });
    let hit = until_hit(&mut a, b.far, bob_id, before).expect("the hit lands");
    a.teleport(ann_id, b.point(3.0, 0.0));
    for _ in 0..5 {
        a.step();
        if a.clients[ann].redirect.is_some() {
            break;
        }
    }
    a.follow(ann);
    assert_eq!(a.owner(ann_id), b.far, "ann was handed to bob's shard");
    let cooling_before = a.stats(b.far).attack_refusals("cooling_down");
    let now = a.get::<Health>(b.far, bob_id).expect("health");
    a.send(ann, &Attack { target: bob_id });
    assert_eq!(until_hit(&mut a, b.far, bob_id, now), None);
    assert_eq!(
        a.stats(b.far).attack_refusals("cooling_down"),
        cooling_before + 1,
        "the new owner refuses: the cooldown came with ann"
    );
    println!(
        "hits landed {took} and {hit} ticks after the client sent them; ran in {:.1?}",
        started.elapsed()
    );
}
