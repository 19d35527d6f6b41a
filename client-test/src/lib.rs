//! `zonescaler-bots`: headless clients for load tests and the simulator.
//!
//! [`core::BotClient`] is a sans-IO client: it takes bytes and the time, and returns bytes to
//! send. The QUIC swarm ([`swarm`]) and the simulator drive the same core, so what the simulator
//! proves about snapshot reconstruction holds for the load tester too. A game plugs in through
//! [`game::BotGame`]: its protocol registry and a brain that plays it. [`hotspot`] is where the
//! `crowd` and `migrate` scenarios gather, as a function of time. [`report`] aggregates
//! per-bot metrics (and their [`timeline`]) into the JSON report, [`html`] renders it as a page
//! people read, and [`cli`] is the command line any binary can embed (`zonescaler-bots` itself,
//! or a game server's `bots` subcommand).

pub mod cli;
pub mod core;
pub mod game;
pub mod hotspot;
pub mod html;
pub mod report;
pub mod swarm;
pub mod timeline;
pub mod view;

pub use core::{BotClient, BotConfig, Scenario, border_walks};
pub use game::{BotBrain, BotGame, BrainCtx};
pub use hotspot::Hotspot;
