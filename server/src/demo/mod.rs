//! The demo game the stock `zonescaler` binary runs, so `zonescaler up` works out of the box:
//! wandering NPCs that now and then hit whatever stands nearest (across borders too, with a
//! command to the owner), and players with health.
//!
//! It is an ordinary game plugin on the public API; the arena in `examples/arena` is a fuller
//! one.

pub mod npc;

pub use npc::NpcPlugin;

use crate::core::commands::Delivered;
use crate::core::components::{Avatar, Networked, OwnedOnly};
use crate::core::{Plugin, ShardApp, ShardSystems};
use bevy_ecs::prelude::*;
use bitcode::{Decode, Encode};
use zonescaler_shared::components::{GameCommand, Health, Kind};

/// Take `hp` hit points (never below zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Damage {
    pub hp: u16,
}

impl GameCommand for Damage {
    const NAME: &'static str = "zonescaler.Damage";
}

/// The demo game: `Kind` and `Health` replicated, the `Damage` command, wandering NPCs.
#[derive(Debug, Default, Clone, Copy)]
pub struct ExampleGamePlugin;

impl Plugin for ExampleGamePlugin {
    fn build(&self, app: &mut ShardApp) {
        app.replicate::<Kind>()
            .replicate::<Health>()
            .command::<Damage>()
            .add_systems(
                ShardSystems::Simulate,
                (mark_players, give_health, apply_damage),
            );
        app.add_plugins(NpcPlugin);
    }
}

/// `Simulate`: damage delivered to entities this shard owns.
fn apply_damage(delivered: Res<Delivered<Damage>>, mut health: Query<&mut Health, OwnedOnly>) {
    for d in &delivered {
        if let Ok(mut h) = health.get_mut(d.entity) {
            h.hp = h.hp.saturating_sub(d.command.hp);
        }
    }
}

/// `Simulate`: a new player's avatar is a `Player` to clients.
fn mark_players(
    mut commands: Commands,
    q: Query<Entity, (Added<Avatar>, OwnedOnly, Without<Kind>)>,
) {
    for e in &q {
        commands.entity(e).insert(Kind::Player);
    }
}

/// `Simulate`: every new networked entity this shard owns starts with full health.
fn give_health(
    mut commands: Commands,
    q: Query<Entity, (Added<Networked>, OwnedOnly, Without<Health>)>,
) {
    for e in &q {
        commands.entity(e).insert(Health { hp: 100, max: 100 });
    }
}
