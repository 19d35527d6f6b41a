//! Authority: who simulates each entity, and how that changes.
//!
//! - [`handoff`]: an owned entity that walks into a neighbour's cell is handed to it, with its
//!   replicated and migrating state, and its player's client follows.
//! - [`cell_move`]: a leaf's entities shipped to its next owner when the master moves it.
//! - [`proxy`]: owned entities near a border are mirrored to the neighbour as read-only proxies.
//! - [`commands`]: a command for an entity reaches its owner, wherever that is.
//! - [`replica`]: buddy replication of owned entities, and failover of a dead shard's.
//! - [`links`]: every message from a neighbour shard, applied in arrival order.

pub mod cell_move;
pub mod commands;
pub mod handoff;
pub mod links;
pub mod proxy;
pub mod replica;

use crate::core::commands::CommandSystems;
use crate::core::{Plugin, ReceiveSteps, ReplicationCache, ShardApp, ShardSystems};
use bevy_ecs::prelude::*;

/// Handoffs, proxies and command routing.
#[derive(Debug, Default, Clone, Copy)]
pub struct AuthorityPlugin;

impl Plugin for AuthorityPlugin {
    fn build(&self, app: &mut ShardApp) {
        app.world.init_resource::<proxy::Mirrors>();
        app.world.init_resource::<handoff::Handoffs>();
        app.world.init_resource::<handoff::Rechecks>();
        app.world
            .init_resource::<crate::core::resources::Forwards>();
        app.world.init_resource::<cell_move::CellMoves>();
        app.world.init_resource::<crate::core::resources::Drained>();
        app.world.init_resource::<handoff::OutgoingOffers>();
        app.world.init_resource::<replica::ReplicaOut>();
        app.world.init_resource::<replica::Replicas>();
        app.world.init_resource::<replica::Membership>();
        app.world.init_resource::<replica::Handed>();
        app.add_systems_raw(
            (cell_move::on_space_notices, links::receive_shard_messages)
                .chain()
                .in_set(ReceiveSteps::Links),
        );
        app.add_systems_raw(commands::deliver_commands.in_set(CommandSystems::Route));
        app.add_systems(
            ShardSystems::Ownership,
            (
                // An avatar despawned for want of its client is gone (its despawn applied)
                // before anything offers it to a neighbour.
                (
                    handoff::expire_awaiting_clients,
                    handoff::poll_handoffs,
                    cell_move::ship_cells,
                    handoff::start_handoffs,
                    handoff::send_offers,
                )
                    .chain()
                    .after(ReplicationCache),
            ),
        );
        app.add_systems(
            ShardSystems::Replicate,
            (proxy::mirror_proxies, replica::send_replica).chain(),
        );
    }
}
