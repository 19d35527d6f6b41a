//! `zonescaler-server`: the shard framework, the master role, and the `zonescaler` binary.
//!
//! A game is its own crate: it depends on this one, writes Bevy-style plugins, and calls
//! [`main_with`] to get the whole command line (`shard`, `up`, `ticket`, `keygen`):
//!
//! ```no_run
//! use zonescaler_server::prelude::*;
//!
//! struct MyGame;
//! impl Plugin for MyGame {
//!     fn build(&self, app: &mut ShardApp) {
//!         // app.replicate::<Health>().migrate::<Brain>().command::<Heal>() ...
//!     }
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     zonescaler_server::main_with(|app| {
//!         app.add_plugins(MyGame);
//!     })
//! }
//! ```
//!
//! The modules are layers, each importing only the ones below it (a test checks):
//! [`runtime`] → [`cluster`] → [`app`] → [`demo`] → [`authority`] → [`client`] → [`interest`]
//! → [`core`]. `ARCHITECTURE.md` has the map.

pub mod app;
pub mod authority;
pub mod client;
pub mod cluster;
pub mod core;
pub mod demo;
pub mod interest;
pub mod runtime;

pub use app::{GameSetup, ShardPlugins};
pub use core::{Plugin, ShardApp, ShardSystems};
pub use demo::ExampleGamePlugin;
pub use runtime::cli::main_with;

/// What a game's load-test bots are made of: a game implements [`bots::BotBrain`] over what its
/// client sees ([`bots::BrainCtx`]) and registers it with `app.bot_brain(...)`; its binary's
/// `bots` subcommand then plays it.
pub mod bots {
    pub use zonescaler_bots::game::{BotBrain, BotGame, BrainCtx, IdleBrain};
    pub use zonescaler_bots::view::{View, ViewEntity};
}

/// What a game needs in scope: the app and its plugins and sets, the components and filters
/// every game system uses, commands and messages, and bevy's own prelude.
pub mod prelude {
    pub use crate::core::commands::{Delivered, Delivery, GameCommands};
    pub use crate::core::components::{
        Avatar, InCell, MoveTarget, Networked, Owned, OwnedOnly, Player, Position, Proxy,
    };
    pub use crate::core::entities::NetEntities;
    pub use crate::core::messages::PlayerMessages;
    pub use crate::core::registry::Migrating;
    pub use crate::core::resources::{Config, Logins, ShardRng, TickClock};
    pub use crate::core::space::Space;
    pub use crate::core::{Plugin, ShardApp, ShardSystems, Startup};
    pub use crate::interest::{AoiGrid, Frame};
    pub use bevy_ecs::prelude::*;
    pub use zonescaler_shared::NetId;
    pub use zonescaler_shared::components::{GameCommand, Replicated};
}
