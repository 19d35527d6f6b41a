//! `zonescaler-net`: the transport boundary of a shard.
//!
//! A shard never touches a socket. Its whole network is an inbox of [`NetEvent`]s and an outbox of
//! [`NetCommand`]s ([`transport`]). Something outside fills and drains them:
//! - [`quic`]: the production driver on quinn/tokio (TLS from [`tls`]);
//! - [`mem`]: a seeded in-memory network with delay, jitter, loss, duplication and reordering,
//!   used by the simulator and by tests, so the same shard code runs deterministically.
//!
//! Shards talk to each other over [`link`]: authenticated QUIC links that deliver nothing until
//! both ends have proven membership of the cluster; [`fault`] can cut a link endpoint off the
//! network on command, for tests of partitions.

mod admission;
mod closing;
pub mod fault;
pub mod link;
pub mod mem;
pub mod quic;
pub mod tls;
pub mod transport;
mod udp;

pub use transport::{NetCommand, NetEvent};
