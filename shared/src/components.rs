//! What a game puts on the wire: the replication and command contracts, and the demo game's
//! components.

use bevy_ecs::component::Component;
use bitcode::{Decode, DecodeOwned, Encode};

/// A component a shard replicates to clients and neighbours. `NAME` is its stable wire name
/// (part of the protocol hash); renaming the Rust type does not change the wire, renaming
/// `NAME` does.
pub trait Replicated:
    Component + Encode + DecodeOwned + Clone + PartialEq + Send + Sync + 'static
{
    const NAME: &'static str;
}

/// A typed command a game registers (`app.command::<T>()` or `app.client_command::<T>()`):
/// sent to an entity's owner, which applies it on its next tick. `NAME` is its stable wire name
/// (part of the protocol hash), as for [`Replicated`].
pub trait GameCommand: Encode + DecodeOwned + Send + Sync + 'static {
    const NAME: &'static str;
}

/// What kind of thing an entity is, so a client can draw it.
#[derive(Component, Clone, Copy, Debug, PartialEq, Eq, Hash, Encode, Decode)]
pub enum Kind {
    Npc,
    Player,
}

impl Replicated for Kind {
    const NAME: &'static str = "zonescaler.Kind";
}

/// Hit points of the example game.
#[derive(Component, Clone, Copy, Debug, PartialEq, Eq, Hash, Encode, Decode)]
pub struct Health {
    pub hp: u16,
    pub max: u16,
}

impl Replicated for Health {
    const NAME: &'static str = "zonescaler.Health";
}

/// The example game's replicated components in registration order. A client built against the
/// example game registers exactly these; the server's example plugin registers the same (a test
/// in `zonescaler-server` keeps the two in step).
pub const EXAMPLE_GAME_COMPONENTS: [&str; 2] = [Kind::NAME, Health::NAME];
