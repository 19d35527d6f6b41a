//! What the arena puts on the wire about an entity: the replicated components clients and
//! neighbours' proxies see.
//!
//! Every type here is a plain struct with `bitcode` derives, and this module (like
//! [`crate::commands`]) needs nothing but `zonescaler-shared`, so a bot or a client decodes
//! the same bytes with the same definitions. Server-only state (`Cooldown`, `Brain`) lives with
//! the systems that use it.

use bevy_ecs::prelude::Component;
use bitcode::{Decode, Encode};
use zonescaler_shared::components::Replicated;

/// Hit points. A proxy of a neighbour's entity carries it too, typed, so an attacker on this
/// side of a border reads its target's health without asking.
#[derive(Component, Clone, Copy, Debug, PartialEq, Eq, Hash, Encode, Decode)]
pub struct Health {
    pub hp: u16,
    pub max: u16,
}

impl Health {
    pub fn full(max: u16) -> Self {
        Self { hp: max, max }
    }

    pub fn is_alive(&self) -> bool {
        self.hp > 0
    }
}

impl Replicated for Health {
    const NAME: &'static str = "arena.Health";
}

/// What an entity is, so a client can draw it and a handler can refuse nonsense (attacking a
/// pickup, picking up a player).
#[derive(Component, Clone, Copy, Debug, PartialEq, Eq, Hash, Encode, Decode)]
pub enum Kind {
    Player,
    Npc,
    Pickup,
}

impl Replicated for Kind {
    const NAME: &'static str = "arena.Kind";
}

/// A player's points: pickups and kills.
#[derive(Component, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Encode, Decode)]
pub struct Score {
    pub points: u32,
}

impl Replicated for Score {
    const NAME: &'static str = "arena.Score";
}

/// What a pickup is worth.
#[derive(Component, Clone, Copy, Debug, PartialEq, Eq, Hash, Encode, Decode)]
pub struct Value {
    pub points: u32,
}

impl Replicated for Value {
    const NAME: &'static str = "arena.Value";
}

/// A pickup somebody won: its owner ignores every later claim and despawns it a little later.
/// Replicated, not server-only, for three reasons: it travels with the item if the item is
/// handed off before it is despawned (so a new owner cannot grant it again), a player's owner
/// on either side of a border refuses to send a hopeless claim for it, and clients can show it
/// being taken. `at_ms` is on the cluster clock.
#[derive(Component, Clone, Copy, Debug, PartialEq, Eq, Hash, Encode, Decode)]
pub struct Taken {
    pub at_ms: u64,
}

impl Replicated for Taken {
    const NAME: &'static str = "arena.Taken";
}
