//! The arena's commands: what clients ask for, and what shards tell each other's entities.
//!
//! | command | sent by | to | handled by |
//! |---|---|---|---|
//! | [`Attack`] | a client | its own avatar | the attacker's owner: range, cooldown, then [`Damage`] |
//! | [`PickUp`] | a client | its own avatar | the player's owner: range, then [`Claim`] |
//! | [`Damage`] | an attacker's owner | the target | the target's owner: health, death, [`Kill`] |
//! | [`Claim`] | a player's owner | the item | the item's owner: first claim wins, [`Award`] |
//! | [`Award`] | an item's owner | the winner | the winner's owner: score |
//! | [`Kill`] | a victim's owner | the killer | the killer's owner: score, the victim is told |
//!
//! A client may send only the first two (`client_command`); the framework addresses them to
//! the client's own avatar, so `Delivery::entity` is the actor. The others travel between
//! shards (`command`), applied by whichever shard owns the target on arrival, however often it
//! changed hands on the way.
//!
//! Plain structs with `bitcode` derives: a bot builds the same bytes from the same types.

use crate::components::Kind;
use bitcode::{Decode, Encode};
use zonescaler_shared::NetId;
use zonescaler_shared::components::GameCommand;

/// Client → own avatar: hit `target` (any entity with health, a neighbour's included).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Attack {
    pub target: NetId,
}

impl GameCommand for Attack {
    const NAME: &'static str = "arena.Attack";
}

/// Client → own avatar: take the pickup `item` (which may stand across a border).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub struct PickUp {
    pub item: NetId,
}

impl GameCommand for PickUp {
    const NAME: &'static str = "arena.PickUp";
}

/// Attacker's owner → target: take `hp` hit points. `Delivery::from` is the attacker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Damage {
    pub hp: u16,
}

impl GameCommand for Damage {
    const NAME: &'static str = "arena.Damage";
}

/// Player's owner → item: `by` wants it. The item's owner grants the first claim it applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Claim {
    pub by: NetId,
}

impl GameCommand for Claim {
    const NAME: &'static str = "arena.Claim";
}

/// Item's owner → winner: add `points` to the score. `Delivery::from` is the item.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Award {
    pub points: u32,
}

impl GameCommand for Award {
    const NAME: &'static str = "arena.Award";
}

/// Victim's owner → killer: you killed a `victim_kind` (a player's account, or empty). The
/// killer's owner scores it and tells the victim who it was: only the killer's owner knows the
/// killer's name for sure (a `Player` is server-only, and the killer may be out of the victim
/// owner's sight by now).
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Kill {
    pub victim_kind: Kind,
    pub victim_account: String,
}

impl GameCommand for Kill {
    const NAME: &'static str = "arena.Kill";
}
