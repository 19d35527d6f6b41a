//! Client interest and replication: which entities each client sees, and the delta snapshots
//! that show them.
//!
//! Every tick the `Interest` set flattens the networked entities into a [`Frame`] and rebuilds
//! the [`AoiGrid`] over it; `Replicate` queries the grid around each viewer and merge-joins the
//! result against the snapshot the client acknowledged; `Send` cuts each snapshot into datagrams.
//! The client plugin decides who views what ([`Viewers`]); this module only shows it.

pub mod grid;
pub mod replicate;

pub use grid::{AoiGrid, Frame};
pub use replicate::{Viewer, Viewers};

use crate::core::{Plugin, ShardApp, ShardSystems};
use bevy_ecs::prelude::*;

/// Frame, grid, deltas and snapshot encoding.
#[derive(Debug, Default, Clone, Copy)]
pub struct InterestPlugin;

impl Plugin for InterestPlugin {
    fn build(&self, app: &mut ShardApp) {
        app.world.init_resource::<Frame>();
        app.world.init_resource::<AoiGrid>();
        app.world.init_resource::<Viewers>();
        app.world.init_resource::<replicate::ReplicateScratch>();
        app.add_systems(
            ShardSystems::Interest,
            (grid::build_frame, grid::build_grid).chain(),
        );
        app.add_systems(ShardSystems::Replicate, replicate::compute_deltas);
        app.add_systems(ShardSystems::Send, replicate::send_snapshots);
    }
}
