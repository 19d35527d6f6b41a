//! The arena's bots play it as a client would: a real bot client (the load tester's own), with
//! the game's registry and brain from the plugin, logs in, sees an NPC and a pickup next to it,
//! hits the one and takes the other, through client commands the shard checks.

mod common;

use bytes::Bytes;
use std::sync::Arc;
use zonescaler_arena::components::{Health, Score};
use zonescaler_arena::npc::spawn_npc;
use zonescaler_arena::pickups::spawn_pickup;
use zonescaler_arena::{ArenaPlugin, ArenaRules};
use zonescaler_bots::{BotClient, BotConfig, Scenario};
use zonescaler_net::{NetCommand, NetEvent};
use zonescaler_server::app::GameSetup;
use zonescaler_server::cluster::LocalCluster;
use zonescaler_server::core::components::{Avatar, Position};
use zonescaler_shared::ConnId;

#[test]
fn an_arena_bot_hits_what_stands_near_and_takes_the_pickup_beside_it() {
    let rules = ArenaRules {
        pickups: 0,
        ..ArenaRules::default()
    };
    let game: GameSetup = Arc::new(move |app| {
        app.add_plugins(ArenaPlugin {
            rules: rules.clone(),
        });
    });
    let mut c = LocalCluster::new(common::small_world(), 1, &game).expect("one shard");
    let bot_game = c.shards[0].bot_game("arena");
    assert_eq!(bot_game.protocol.client_hash(), c.shards[0].protocol_hash());
    let mut bot = BotClient::with_game(BotConfig::new("bot-0", Scenario::Idle, 3), &bot_game);
    let conn = ConnId(1);
    c.shards[0].push_event(NetEvent::Connected {
        conn,
        max_datagram_bytes: 1_200,
    });
    c.shards[0].push_event(NetEvent::Control {
        conn,
        bytes: Bytes::from(bot.hello(0)),
    });
    let (mut now, mut placed) = (0u64, None);
    for _ in 0..150 {
        now += 33_333;
        for cmd in c.step().into_iter().flatten() {
            match cmd {
                NetCommand::Control { bytes, .. } => {
                    bot.on_control(now, &bytes).expect("no refusal");
                }
                NetCommand::Datagram { bytes, .. } => bot.on_datagram(now, &bytes),
                NetCommand::Close { reason, .. } => panic!("the bot was closed: {reason}"),
            }
        }
        let w = &mut c.shards[0].world;
        if placed.is_none()
            && let Some(at) = w
                .query::<(&Avatar, &Position)>()
                .iter(w)
                .map(|(_, p)| p.0)
                .next()
        {
            // Beside the bot: something to hit and something to take.
            let npc = spawn_npc(w, at + glam::Vec3::new(2.0, 0.0, 0.0));
            let item = spawn_pickup(w, at + glam::Vec3::new(0.0, 0.0, 2.0), 7);
            placed = Some((npc, item));
        }
        if let Some(input) = bot.next_input(now) {
            c.shards[0].push_event(NetEvent::Datagram {
                conn,
                bytes: Bytes::from(input),
            });
        }
        for bytes in bot.take_control() {
            c.shards[0].push_event(NetEvent::Control {
                conn,
                bytes: Bytes::from(bytes),
            });
        }
    }
    let (npc, _) = placed.expect("the bot logged in and the scene was set");
    let w = &mut c.shards[0].world;
    let score = w
        .query::<(&Avatar, &Score)>()
        .iter(w)
        .map(|(_, s)| s.points)
        .next();
    // 7 for the pickup, and 3 more if its blows killed the NPC (they usually do in 5 s).
    assert!(
        matches!(score, Some(7 | 10)),
        "the bot took the pickup worth 7 (score {score:?})"
    );
    let hurt = w
        .query::<(&zonescaler_server::core::components::Networked, &Health)>()
        .iter(w)
        .any(|(n, h)| n.0 == npc && h.hp < h.max)
        || score == Some(10);
    assert!(hurt, "the bot hit the NPC beside it");
    assert!(
        bot.metrics.commands_sent >= 2,
        "{:?}",
        bot.metrics.commands_sent
    );
    assert!(bot.metrics.errors.is_empty(), "{:?}", bot.metrics.errors);
}
