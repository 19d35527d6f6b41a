//! # The arena: a game on ZoneScaler, read as a tutorial
//!
//! The arena is the example game that proves the platform: players fight NPCs and each other,
//! race for pickups, die and respawn, in one seamless world that several shard processes run
//! together. It is written only against `zonescaler-server`'s public game API, the way any game
//! would be. Read the modules in this order:
//!
//! 1. **The binary is one line.** `src/main.rs` calls [`zonescaler_server::main_with`] with a
//!    closure that adds [`ArenaPlugin`]; the game gets the whole command line for free
//!    (`zonescaler-arena up --world assets/worlds/arena.toml` runs a local cluster).
//!
//! 2. **Say what crosses the wire** ([`components`], [`commands`]). Each type is a plain struct
//!    with `bitcode` derives and a stable wire `NAME`:
//!    - `replicate::<T>()` for state clients and neighbours see ([`Health`], [`Kind`],
//!      [`Score`], [`Value`], [`Taken`]). A neighbour holds them on its proxies *typed*: a
//!      system reads a proxy's `Health` as a `Health`.
//!    - `migrate::<T>()` for server-only state that must follow an entity when it crosses a
//!      border ([`Cooldown`], [`npc::Brain`]). A proxy never has it.
//!    - `client_command::<T>()` for what a player may ask ([`Attack`], [`PickUp`]): the
//!      framework addresses it to the client's own avatar; the game checks what it asks.
//!    - `command::<T>()` for what one entity's owner tells another entity's owner ([`Damage`],
//!      [`Claim`], [`Award`], [`Kill`]), wherever that entity is.
//!
//!    All of it lands in one registry whose hash every client and shard checks at connect.
//!
//! 3. **Write systems for what you own** ([`combat`], [`pickups`], [`npc`], [`score`],
//!    [`players`]). They run in `ShardSystems::Simulate`; every query that writes filters on
//!    `OwnedOnly`, so it never touches a neighbour's read-only proxy (debug builds panic with
//!    `error[Z0001]` if one does). Reads need no filter: an attack reads its target's position
//!    and health whether the target is owned here or a proxy.
//!
//! 4. **Act on what you do not own with a command.** Damage to a neighbour's entity is
//!    `GameCommands::send_from(attacker, target, Damage { hp })`; the framework delivers it to
//!    the target's owner on its next tick (forwarding it after a handoff), where a system reads
//!    it from `Res<Delivered<Damage>>`. The effect comes back through ordinary proxy updates.
//!    The pickup race ([`pickups`]) is the example to study: exactly one of two players on two
//!    shards wins, because only the item's owner decides.
//!
//! 5. **Time and chance are inputs.** Nothing here reads the OS clock or `rand`: timers use
//!    `TickClock::now_ms` (the cluster clock, meaningful on every shard, unlike tick numbers),
//!    shard-level draws use `ShardRng`, and each NPC carries its own seeded generator in its
//!    brain.
//!
//! 6. **Test it as a cluster in one process.** `tests/` builds a `LocalCluster` of two shards,
//!    logs players in by pushing `NetEvent`s, sends their commands, and steps tick by tick.
//!
//! ```
//! use zonescaler_arena::{ArenaPlugin, ArenaStats};
//! use zonescaler_server::prelude::*;
//! use zonescaler_shared::config::WorldConfig;
//!
//! let mut world = WorldConfig::default();
//! world.npc.count = 50;
//! let mut app = ShardApp::new(world, zonescaler_shared::ShardId(0));
//! app.add_plugins(ArenaPlugin::default());
//! for _ in 0..30 {
//!     app.tick();
//! }
//! assert!(app.world.resource::<ArenaStats>().npc_decisions > 0, "the NPCs are thinking");
//! ```
//!
//! ## What writing this game taught the platform
//!
//! Writing the arena found two platform bugs, both fixed in the framework with a test each in
//! `server/tests/game_api.rs`: a handoff carried the previous tick's replicated state (the
//! replication cache now refreshes first in `Ownership`, before handoffs are offered), and an
//! entity despawned by its new owner in the tick it arrived left a stray proxy on the old owner
//! (the target now records the source's proxy from the ack on). It also asked for what the
//! prelude now has: `NetEntities` (spawn, despawn on purpose, find by `NetId`), `Logins` (fresh
//! logins, apart from handoff arrivals), `Space`, `Frame`/`AoiGrid`, and a `[game]` section of
//! the world config (part of the cluster hash). This crate predates some of them and still does
//! a few of those things by hand.
//!
//! Still open, and worked around here:
//! - **Commands are at-most-once with no feedback.** A command to an entity that was despawned,
//!   or forwarded more than `COMMAND_HOPS_MAX` times, is dropped and only counted in
//!   `GameCommands::dropped`. An `Award` to a winner who logs out in that tick is lost. Fine
//!   for damage, not for trades; DESIGN.md sends those to the store.
//! - **A server-only component that was not registered with `migrate` silently stays on the
//!   source's proxy** (only registered ones are taken off on the ack), and comes back stale if
//!   the entity is handed back. Forgetting `migrate::<Brain>()` did exactly that in a trial
//!   run. Debug builds could flag non-framework components on a proxy that are neither
//!   replicated nor migrating.

pub mod bots;
pub mod combat;
pub mod commands;
pub mod components;
pub mod npc;
pub mod pickups;
pub mod players;
pub mod rules;
pub mod score;
pub mod stats;

pub use combat::Cooldown;
pub use commands::{Attack, Award, Claim, Damage, Kill, PickUp};
pub use components::{Health, Kind, Score, Taken, Value};
pub use rules::ArenaRules;
pub use stats::ArenaStats;

use zonescaler_server::core::movement::move_entities;
use zonescaler_server::core::space::Space;
use zonescaler_server::prelude::*;

/// The arena. `ArenaPlugin::default()` plays by the world config's `[game]` section (the shipped
/// rules where it says nothing); tests pass their own rules, which then win.
#[derive(Clone, Debug, Default)]
pub struct ArenaPlugin {
    pub rules: ArenaRules,
}

/// The arena's systems inside `ShardSystems::Simulate`, in one chain, before movement steps.
#[derive(SystemSet, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ArenaSystems;

impl Plugin for ArenaPlugin {
    /// Rules that do not fit the world (a range longer than the proxies reach) or a `[game]`
    /// section that does not parse stop the process at start with a line naming the problem
    /// (a setup error), rather than as attacks that silently never land.
    fn build(&self, app: &mut ShardApp) {
        let config = app.world.resource::<Config>().0.clone();
        let rules = if self.rules == ArenaRules::default() && !config.game.is_empty() {
            ArenaRules::from_game_section(&config.game)
        } else {
            Ok(self.rules.clone())
        };
        let rules = match rules.and_then(|r| r.validate(&config).map(|()| r)) {
            Ok(r) => r,
            Err(e) => {
                app.setup_error(format!("arena: {e}"));
                ArenaRules::default()
            }
        };
        app.bot_brain(|seed| Box::new(bots::ArenaBot::new(seed)));
        app.replicate::<Kind>()
            .replicate::<Health>()
            .replicate::<Score>()
            .replicate::<Value>()
            .replicate::<Taken>()
            .migrate::<Cooldown>()
            .migrate::<npc::Brain>()
            .client_command::<Attack>()
            .client_command::<PickUp>()
            .command::<Damage>()
            .command::<Claim>()
            .command::<Award>()
            .command::<Kill>();
        app.world.insert_resource(rules);
        app.world.init_resource::<ArenaStats>();
        app.world.init_resource::<pickups::PickupStock>();
        app.add_startup_systems((npc::spawn_npcs, pickups::spawn_pickups).chain());
        app.add_systems(
            ShardSystems::Simulate,
            (
                players::equip_new_players,
                npc::adopt_npcs,
                combat::handle_attacks,
                pickups::handle_pickups,
                pickups::apply_claims,
                score::apply_awards,
                combat::apply_damage,
                combat::apply_kills,
                npc::think,
                pickups::clear_taken,
                pickups::restock,
            )
                .chain()
                .in_set(ArenaSystems)
                .before(move_entities),
        );
    }
}

/// This shard's share of `count` things spread over the world by area: the same world has the
/// same number of NPCs and pickups on one shard or many.
pub(crate) fn share_of(world: &World, count: usize) -> usize {
    world.resource::<Space>().share_of(count)
}
