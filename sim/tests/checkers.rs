//! Each invariant checker fires on a deliberately broken run: a checker that cannot fail proves
//! nothing.

use zonescaler_server::core::components::{Avatar, Networked, Position};
use zonescaler_server::interest::Viewers;
use zonescaler_shared::NetId;
use zonescaler_sim::{Sim, SimConfig};

fn sabotaged(
    f: impl FnMut(&mut zonescaler_server::ShardApp, u64) + 'static,
) -> zonescaler_sim::Violation {
    let mut sim = Sim::new(SimConfig::smoke(5));
    sim.sabotage = Some(Box::new(f));
    sim.run()
        .expect_err("a sabotaged run must violate an invariant")
}

#[test]
fn unique_net_ids_fires_on_a_duplicate_id() {
    let v = sabotaged(|app, tick| {
        if tick == 50 {
            app.world.spawn((Networked(NetId(1)), Position::default()));
        }
    });
    assert_eq!((v.invariant, v.tick), ("unique_net_ids", 50), "{v}");
}

#[test]
fn in_world_fires_on_an_escaped_entity() {
    let v = sabotaged(|app, tick| {
        if tick == 60 {
            let mut q = app.world.query::<&mut Position>();
            if let Some(mut p) = q.iter_mut(&mut app.world).next() {
                p.0.x = 1.0e6;
            }
        }
    });
    assert_eq!((v.invariant, v.tick), ("in_world", 60), "{v}");
}

#[test]
fn one_avatar_per_client_fires_on_a_lost_avatar() {
    let v = sabotaged(|app, tick| {
        if tick == 80 {
            let e = app
                .world
                .query_filtered::<bevy_ecs::entity::Entity, bevy_ecs::query::With<Avatar>>()
                .iter(&app.world)
                .next();
            if let Some(e) = e {
                app.world.entity_mut(e).remove::<Avatar>();
            }
        }
    });
    assert_eq!((v.invariant, v.tick), ("one_avatar_per_client", 80), "{v}");
}

#[test]
fn client_view_matches_server_fires_on_a_corrupted_baseline() {
    let v = sabotaged(|app, tick| {
        if tick == 100 {
            // Corrupt what the shard remembers having sent: the next comparison must catch it.
            for c in app.world.resource_mut::<Viewers>().0.values_mut() {
                for s in c.history.iter_mut() {
                    if let Some(p) = s.qpos.first_mut() {
                        p.0[0] += 7;
                    }
                }
            }
        }
    });
    assert_eq!(
        (v.invariant, v.tick),
        ("client_view_matches_server", 100),
        "{v}"
    );
}
