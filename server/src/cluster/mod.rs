//! The cluster: membership and the master role, forming, and what a formed shard carries on its
//! links.
//!
//! - [`master`]: a pure state machine of membership, placement, liveness, the player directory
//!   and message routing, driven by joins, heartbeats, requests and the clock.
//! - [`forming`]: joining or gathering a cluster as a state machine of link events and actions,
//!   driven over QUIC by the runtime and over the seeded network by the simulator.
//! - [`moves`]: the master's table of cell moves under way, and what ends them.
//! - [`node`]: a formed shard's links during play.
//! - [`election`]: who holds the master role; a successor elected by a majority when the master
//!   falls silent, behind one small interface ([`MasterElection`]).
//! - [`lease`]: a shard's ownership lease, renewed by the master's answers to its heartbeats.
//! - [`load`]: a shard's load over one report window, from readings its driver hands in.
//! - [`requests`], [`reports`]: what a member keeps for a successor until the master surely
//!   heard it.
//! - [`audit`]: the master's cluster-wide audit of who owns every entity, from the shards'
//!   ownership reports.
//! - [`balancer`]: the pure, deterministic policy that plans cell moves, splits and merges from
//!   the shards' loads.

pub mod audit;
pub mod balancer;
pub mod election;
pub mod forming;
pub mod lease;
pub mod load;
pub mod local;
pub mod master;
pub mod moves;
pub mod node;
pub mod reports;
pub mod requests;
pub mod session;

pub use audit::{Audit, AuditSummary, Auditor};
pub use balancer::{Balancer, CellInput, Plan, ShardInput};
pub use election::{ElectionOut, ElectionView, MasterElection, QuorumElection, Support};
pub use forming::{FormAction, FormError, FormEvent, Formed, Forming};
pub use lease::{Lease, LeaseState, LostWhy};
pub use load::{LoadCounters, LoadWindow};
pub use local::LocalCluster;
pub use master::{ClusterView, DrainRefused, JoinRefused, Master};
pub use node::Node;
