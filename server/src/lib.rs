//! `zonescaler-server`: the shard app and the `zonescaler` binary.
//!
//! - [`app`]: [`ShardApp`], a `bevy_ecs` world and one schedule per tick with the named sets of
//!   [`ShardSystems`]; plugins and `replicate::<T>()` for game developers.
//! - [`net`]: the `Receive` and `Send` systems: the shard's only contact with the network is the
//!   [`Inbox`] and [`Outbox`] resources, filled and drained by a driver.
//! - [`npc`], [`movement`]: the built-in `Simulate` systems (wandering NPCs, authoritative input).
//! - [`interest`]: the uniform AOI grid rebuilt every tick.
//! - [`proxy`]: read-only copies of neighbour shards' entities near the borders; [`handoff`]:
//!   ownership moving to the neighbour when an entity crosses; [`commands`]: typed commands
//!   routed to an entity's owner.
//! - [`boundary`]: the R-tree over cell rectangles that tells which neighbour shards must hold a
//!   proxy of an entity near a border (used by multi-shard worlds).
//! - [`replicate`]: per-client delta snapshots.
//! - [`runtime`]: the production loop (OS clock + QUIC driver), [`cluster`]: `zonescaler up`.

pub mod app;
pub mod boundary;
pub mod cluster;
pub mod commands;
pub mod components;
pub mod handoff;
pub mod interest;
pub mod master;
pub mod movement;
pub mod net;
pub mod node;
pub mod npc;
pub mod proxy;
pub mod replicate;
pub mod resources;
pub mod runtime;

pub use app::{ExampleGamePlugin, Plugin, ShardApp, ShardSystems};
pub use resources::{Inbox, Outbox, ShardRng, ShardStats, TickClock};
