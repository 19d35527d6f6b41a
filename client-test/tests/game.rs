//! A game plugs into the swarm: its protocol decides the client hash, its brain reads replicated
//! components and sends the game's commands and chat over the control stream, and the shard's
//! messages come back into the report.

mod common;

use bitcode::{Decode, Encode};
use common::{Answer, fake_shard_for, swarm_config, two_shard_map};
use zonescaler_bots::swarm::{self, SwarmConfig};
use zonescaler_bots::{BotBrain, BotGame, BrainCtx, Scenario};
use zonescaler_shared::components::{EXAMPLE_GAME_COMPONENTS, GameCommand, Kind};
use zonescaler_shared::registry::ProtocolRegistry;

/// The test game's one client command.
#[derive(Debug, PartialEq, Encode, Decode)]
struct Wave {
    seed: u64,
}

impl GameCommand for Wave {
    const NAME: &'static str = "test.Wave";
}

/// Waves once it sees its own avatar as a player, then says so.
struct Waver {
    seed: u64,
    waved: bool,
}

impl BotBrain for Waver {
    fn think(&mut self, ctx: &mut BrainCtx<'_>) {
        if self.waved {
            return;
        }
        let me = ctx
            .avatar()
            .and_then(|id| ctx.view().and_then(|v| v.get(&id)))
            .and_then(|e| ctx.component::<Kind>(e));
        if me == Some(Kind::Player) {
            assert!(ctx.send_command(&Wave { seed: self.seed }));
            ctx.say(None, &format!("waved {}", self.seed));
            self.waved = true;
        }
    }
}

fn waving_game() -> BotGame {
    let mut protocol =
        ProtocolRegistry::with_components(&EXAMPLE_GAME_COMPONENTS).expect("distinct");
    protocol
        .register_command("test.Heal", false)
        .expect("server-only command");
    protocol
        .register_command(Wave::NAME, true)
        .expect("client command");
    BotGame::new("waving", protocol, |seed| {
        Box::new(Waver { seed, waved: false })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_games_brain_sends_commands_and_chat_and_hears_back() {
    let game = waving_game();
    let shard = fake_shard_for(game.protocol.client_hash(), two_shard_map(), |_, _| {
        Answer::Play {
            redirect_after: None,
        }
    });
    let cfg = SwarmConfig {
        game: game.clone(),
        ..swarm_config(shard.addr, 2, Scenario::Idle)
    };
    let r = swarm::run(cfg).await.expect("the swarm runs");
    assert_eq!(r.game, "waving");
    assert!(r.errors.is_empty(), "{r:?}");
    assert_eq!(
        r.bots_connected, 2,
        "the game's client hash was welcomed: {r:?}"
    );
    assert_eq!(
        (r.commands_sent_total, r.says_sent_total),
        (2, 2),
        "each bot waved once and said so: {r:?}"
    );
    assert_eq!(
        r.messages_received_total, 2,
        "each bot heard its own line echoed back: {r:?}"
    );
    let seen = shard.seen.lock().expect("not poisoned");
    assert_eq!(seen.bad_control, 0, "{seen:?}");
    assert_eq!(seen.commands.len(), 2, "{seen:?}");
    for (name, c) in &seen.commands {
        assert_eq!(
            c.kind, 0,
            "Wave is the game's first client command (the server-only Heal has no client number)"
        );
        let wave: Wave = bitcode::decode(&c.bytes).expect("a Wave");
        assert!(
            seen.says.iter().any(|(n, s)| n == name
                && s.text == format!("waved {}", wave.seed)
                && s.to.is_none()),
            "{name}'s chat line follows its command: {seen:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_of_another_game_is_refused_at_welcome() {
    // The shard runs the demo game; the bots present the waving game's client hash.
    let shard = fake_shard_for(
        BotGame::demo().protocol.client_hash(),
        two_shard_map(),
        |_, _| Answer::Play {
            redirect_after: None,
        },
    );
    let cfg = SwarmConfig {
        game: waving_game(),
        ..swarm_config(shard.addr, 1, Scenario::Idle)
    };
    let r = swarm::run(cfg).await.expect("the swarm runs");
    assert_eq!(r.bots_connected, 0, "{r:?}");
    assert_eq!(r.errors.get("protocol_mismatch"), Some(&1), "{r:?}");
}
