//! `zonescaler-bots`: headless clients for load tests and the simulator.
//!
//! [`core::BotClient`] is a sans-IO client: it takes bytes and the time, and returns bytes to
//! send. The QUIC swarm ([`swarm`]) and the simulator drive the same core, so what the simulator
//! proves about snapshot reconstruction holds for the load tester too. [`report`] aggregates
//! per-bot metrics into the JSON report.

pub mod core;
pub mod report;
pub mod swarm;

pub use core::{BotClient, BotConfig, Scenario, border_walks};
