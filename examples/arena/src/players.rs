//! Players: what a fresh avatar gets.

use crate::combat::Cooldown;
use crate::components::{Health, Kind, Score};
use crate::rules::ArenaRules;
use zonescaler_server::prelude::*;

/// `Simulate`: a new avatar becomes a player with full health, no points and no cooldown.
///
/// `Added<Avatar>` also fires on the shard an avatar was handed to, once its client arrives
/// there (the framework binds the connection with a fresh `Avatar`). That avatar already has
/// its health, kind and score (replicated, carried by the handoff) and its cooldown
/// (migrating), so only what is missing is given: crossing a border must not heal anyone.
pub fn equip_new_players(
    mut commands: Commands,
    q: Query<
        (Entity, Has<Health>, Has<Kind>, Has<Score>, Has<Cooldown>),
        (Added<Avatar>, OwnedOnly),
    >,
    rules: Res<ArenaRules>,
) {
    for (e, health, kind, score, cooldown) in &q {
        let mut ent = commands.entity(e);
        if !health {
            ent.insert(Health::full(rules.player_hp_max));
        }
        if !kind {
            ent.insert(Kind::Player);
        }
        if !score {
            ent.insert(Score::default());
        }
        if !cooldown {
            ent.insert(Cooldown::default());
        }
    }
}
