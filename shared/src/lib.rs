//! `zonescaler-shared`: everything two ZoneScaler peers must agree on.
//!
//! Ids ([`ids`]), every bound in one place ([`limits`]), the world config ([`config`]), the cell
//! grid, cell map and contiguous placement ([`cellmap`]), position
//! quantisation ([`quant`]), the seeded RNG ([`rng`]), the wire types ([`protocol`]), the one codec
//! that turns them into bytes ([`codec`]) and the protocol registry whose hash every handshake
//! checks ([`registry`]), the signed redirect tokens that
//! move a client between shards ([`token`]), and the resume tickets that bring a client back to
//! its avatar when its shard dies ([`resume`]). Nothing here does I/O or reads a clock.

pub mod cellmap;
pub mod codec;
pub mod components;
pub mod config;
pub mod ids;
pub mod limits;
pub mod protocol;
pub mod quant;
pub mod registry;
pub mod resume;
pub mod rng;
pub mod ticket;
pub mod token;

pub use ids::{CellId, ConnId, NetId, ShardId, Tick};
