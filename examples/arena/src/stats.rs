//! What the arena counts on each shard: how often each rule fired and why each refusal
//! happened. Tests read it to tell "refused" from "never arrived"; an operator would export it.

use bevy_ecs::prelude::Resource;
use std::collections::BTreeMap;

/// Counters of one shard since it started. Refusal maps are keyed by a fixed set of
/// `&'static str` reasons, so they stay small.
#[derive(Resource, Debug, Default, Clone, PartialEq)]
pub struct ArenaStats {
    /// Attacks that passed every check (a `Damage` was sent).
    pub attacks: u64,
    /// Attacks refused, by reason (`out_of_range`, `cooling_down`, ...).
    pub attacks_refused: BTreeMap<&'static str, u64>,
    /// `Damage` commands applied to a living entity owned here.
    pub damage_applied: u64,
    pub player_deaths: u64,
    pub npc_deaths: u64,
    pub npc_respawns: u64,
    /// `Kill` commands applied to a killer owned here.
    pub kills_credited: u64,
    /// `PickUp` requests that passed the player-side checks (a `Claim` was sent).
    pub claims_sent: u64,
    /// `PickUp` requests refused on the player's side, by reason.
    pub pickups_refused: BTreeMap<&'static str, u64>,
    /// Claims the item's owner granted (one per item, ever).
    pub claims_granted: u64,
    /// Claims that reached the item's owner after someone else's had won.
    pub claims_lost: u64,
    /// `Award`s added to a score here.
    pub awards: u64,
    /// Milestone shouts sent.
    pub milestones: u64,
    /// Pickups spawned (at start and when topping up).
    pub pickups_spawned: u64,
    /// Taken pickups despawned after their linger.
    pub pickups_cleared: u64,
    /// NPC decisions taken here.
    pub npc_decisions: u64,
}

impl ArenaStats {
    pub(crate) fn count(map: &mut BTreeMap<&'static str, u64>, reason: &'static str) {
        *map.entry(reason).or_default() += 1;
    }

    /// Attacks refused for `reason` (0 if never).
    pub fn attack_refusals(&self, reason: &str) -> u64 {
        self.attacks_refused.get(reason).copied().unwrap_or(0)
    }

    /// Pickups refused for `reason` on the player's side (0 if never).
    pub fn pickup_refusals(&self, reason: &str) -> u64 {
        self.pickups_refused.get(reason).copied().unwrap_or(0)
    }
}
