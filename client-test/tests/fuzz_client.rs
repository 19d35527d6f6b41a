//! A bot must survive whatever a (broken or hostile) server sends: mutated control messages and
//! snapshot datagrams are errors in its report, never a panic.

use zonescaler_bots::{BotClient, BotConfig, Scenario};
use zonescaler_shared::NetId;
use zonescaler_shared::codec;
use zonescaler_shared::components::EXAMPLE_GAME_COMPONENTS;
use zonescaler_shared::protocol::*;
use zonescaler_shared::quant::QPos;
use zonescaler_shared::registry::ProtocolRegistry;
use zonescaler_shared::rng::Rng;

#[test]
fn mutated_server_messages_never_crash_a_bot() {
    let hash = ProtocolRegistry::with_components(&EXAMPLE_GAME_COMPONENTS)
        .expect("distinct")
        .client_hash();
    let welcome = codec::encode(&ServerControl::Welcome(Welcome {
        avatar: NetId(7),
        spawn: QPos([0, 0, 0]),
        tick: 1,
        tick_hz: 30,
        protocol_hash: hash,
        bounds: [-50.0, -50.0, 50.0, 50.0],
        max_speed_mps: 8.0,
        aoi_radius_m: 40.0,
    }));
    let message = codec::encode(&ServerControl::Message(PlayerMessage {
        from: "ann".into(),
        text: "hello there".into(),
        scope: MessageScope::Tell,
    }));
    let refusal = codec::encode(&ServerControl::Error(ErrorMsg {
        code: ErrorCode::SessionTakenOver,
        detail: "logged in elsewhere".into(),
    }));
    let full = |tick: u64| {
        codec::encode(&ServerDatagram::Snapshot(SnapshotPart {
            tick,
            parts: 1,
            rare: Some(RareUpdates {
                spawned: (0..10)
                    .map(|i| Spawned {
                        id: NetId(i + 5),
                        pos: QPos([i as i32, 0, 0]),
                        components: Default::default(),
                    })
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        }))
    };
    let delta = |tick: u64| {
        codec::encode(&ServerDatagram::Snapshot(SnapshotPart {
            tick,
            baseline_age: 1,
            parts: 1,
            moved: (0..10)
                .map(|_| Moved {
                    index_gap: 0,
                    delta: [1, 0, 1],
                })
                .collect(),
            ..Default::default()
        }))
    };
    let mut rng = Rng::new(0xB07);
    let mut errors = 0u64;
    for round in 0..300u64 {
        let mut bot = BotClient::new(BotConfig::new("fuzz", Scenario::Wander, round));
        let _ = bot.hello(0);
        bot.on_control(1, &welcome).expect("valid welcome");
        for t in 1..60u64 {
            let mut msg = if t == 1 { full(t) } else { delta(t) };
            if rng.chance(0.3) && !msg.is_empty() {
                let i = rng.below(msg.len() as u64) as usize;
                msg[i] ^= 1 << rng.below(8);
                if rng.chance(0.3) {
                    msg.truncate(i);
                }
            }
            bot.on_datagram(t * 33_000, &msg);
            let _ = bot.next_input(t * 33_000);
        }
        let mut ctl = match round % 3 {
            0 => welcome.clone(),
            1 => message.clone(),
            _ => refusal.clone(),
        };
        let i = rng.below(ctl.len() as u64) as usize;
        ctl[i] = rng.next_u64() as u8;
        let _ = bot.on_control(2_000_000, &ctl);
        errors += bot.metrics.errors.values().sum::<u64>();
    }
    assert!(
        errors > 1_000,
        "mutations must reach the decoder and be counted as errors ({errors})"
    );
}
