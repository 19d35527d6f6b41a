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

#[test]
fn a_client_that_falls_behind_is_paced_and_gets_every_tick_again_once_it_catches_up() {
    let mut cfg = small_world(50);
    cfg.interest.snapshot_window_ms = 250; // 8 ticks at 30 Hz
    let window = cfg.snapshot_window_ticks();
    assert_eq!(window, 8);
    let mut h = Harness::new(cfg);
    let slow = h.connect(1);
    let steady = h.connect(2);
    for _ in 0..20 {
        h.step();
    }
    assert_eq!(h.app.stats().snapshots_paced, 0, "no one is behind yet");
    // The slow client reads nothing for 80 ticks; it keeps acknowledging the tick it last held.
    let steady_before = h.snapshots(steady);
    let mut ticks_sent = 0;
    for _ in 0..80 {
        if h.step_holding(Some(slow)) > 0 {
            ticks_sent += 1;
        }
    }
    // Every tick until its acknowledgement is `window` old, then one every `window` ticks. (The
    // input that acknowledged the last tick it read arrives one tick later.)
    let most = window + 1 + (80 - window) / window + 1;
    assert!(
        (window..=most).contains(&ticks_sent),
        "a client {window} ticks behind gets a snapshot every {window} ticks: {ticks_sent} of 80 ticks sent, expected at most {most}"
    );
    assert!(h.app.stats().snapshots_paced >= 80 - most);
    assert_eq!(
        h.snapshots(steady) - steady_before,
        80,
        "a client that keeps up is not paced"
    );
    // It reads again: the next snapshot it gets (against the baseline it acknowledged) brings it
    // up to date, and from then on it gets one every tick.
    for _ in 0..window + 2 {
        h.step();
    }
    let caught_up = h.snapshots(slow);
    for _ in 0..30 {
        h.step();
    }
    assert_eq!(
        h.snapshots(slow) - caught_up,
        30,
        "once it acknowledges again, every tick"
    );
    let (tick, _) = h.bots[slow].1.view().expect("a view");
    assert_eq!(tick, h.app.tick_number(), "its view is this tick's");
    assert_eq!(
        h.bots[slow].1.metrics.errors.get("missing_baseline"),
        None,
        "pacing keeps the acknowledged baseline"
    );
}
