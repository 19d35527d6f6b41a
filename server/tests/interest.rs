//! Clients receive exactly the entities within their AOI radius, reconstructed from deltas.

mod common;

use common::{Harness, small_world};
use zonescaler_server::core::components::{Avatar, Networked, Position};

#[test]
fn a_client_sees_exactly_the_entities_within_its_aoi() {
    let mut cfg = small_world(300);
    cfg.interest.aoi_radius_m = 30.0;
    let mut h = Harness::new(cfg);
    let me = h.connect(1);
    for _ in 0..40 {
        h.step();
    }
    let bot = &h.bots[me].1;
    let (tick, view) = bot.view().expect("snapshots arrived");
    assert_eq!(
        tick,
        h.app.tick_number(),
        "on a perfect link the newest view is this tick's"
    );
    let world = &mut h.app.world;
    let me_pos = world
        .query::<(&Avatar, &Position)>()
        .iter(world)
        .next()
        .map(|(_, p)| p.0)
        .expect("avatar");
    let mut expected: Vec<_> = world
        .query::<(&Networked, &Position)>()
        .iter(world)
        .filter(|(_, p)| {
            let d = p.0 - me_pos;
            d.x * d.x + d.z * d.z <= 30.0 * 30.0
        })
        .map(|(n, p)| (n.0, zonescaler_shared::quant::QPos::quantize(p.0)))
        .collect();
    expected.sort_by_key(|e| e.0);
    let seen: Vec<_> = view.iter().map(|(id, e)| (*id, e.pos)).collect();
    assert_eq!(
        seen, expected,
        "the client's view must equal the shard's entities within the AOI radius"
    );
    assert!(
        expected.len() > 3,
        "the scene should put several entities in view ({})",
        expected.len()
    );
    assert!(bot.metrics.entity_updates > 0 && bot.metrics.snapshots >= 38);
}
