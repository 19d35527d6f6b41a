//! The core of a shard: the app container, the components and resources every other part
//! shares, the game registry, typed commands and player messages, space, movement.
//!
//! Everything else in the crate builds on this module, and it imports none of them.

pub mod app;
pub mod boundary;
pub mod commands;
pub mod components;
pub mod entities;
pub mod load;
pub mod messages;
pub mod movement;
pub mod registry;
pub mod resources;
pub mod space;

pub use app::{Plugin, ReceiveSteps, ReplicationCache, ShardApp, ShardSystems, Startup};

use bevy_ecs::schedule::IntoScheduleConfigs;

/// The core systems and resources: movement, cells, the command queue, the registry.
#[derive(Debug, Default, Clone, Copy)]
pub struct CorePlugin;

impl Plugin for CorePlugin {
    fn build(&self, app: &mut ShardApp) {
        let w = &mut app.world;
        w.init_resource::<registry::GameRegistry>();
        w.init_resource::<registry::OversizedComponents>();
        w.init_resource::<commands::GameCommands>();
        w.init_resource::<commands::CommandInbox>();
        w.init_resource::<commands::DeliveredRaw>();
        w.init_resource::<messages::PlayerMessages>();
        w.init_resource::<resources::ProxyApplyTick>();
        w.init_resource::<resources::DespawnLog>();
        w.init_resource::<resources::Logins>();
        app.add_systems_raw(
            resources::start_tick
                .in_set(ShardSystems::Receive)
                .before(ReceiveSteps::Links),
        );
        app.add_systems(ShardSystems::Simulate, movement::move_entities);
        app.add_systems(
            ShardSystems::Ownership,
            (movement::update_cells, commands::queue_commands),
        );
        #[cfg(debug_assertions)]
        registry::guard_positions(app);
    }
}
