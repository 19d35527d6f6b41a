//! The arena's tuning, in one place, units last (the way `zonescaler_shared::limits` does it).
//!
//! An operator tunes them in the world file's `[game]` section (any key left out keeps its
//! default; an unknown key or a value that does not fit the world stops the shard with one line
//! naming it). The `[game]` section is part of the cluster hash, so two shards with different
//! rules refuse each other's links. Tests pass rules to the plugin directly.

use bevy_ecs::prelude::Resource;
use zonescaler_shared::config::WorldConfig;

/// How the arena plays. `ArenaRules::default()` is the game as shipped; tests shorten timers.
#[derive(Resource, Clone, Debug, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArenaRules {
    /// Hit points of a fresh player.
    pub player_hp_max: u16,
    /// Hit points of a fresh NPC.
    pub npc_hp_max: u16,
    /// Hit points one player attack takes.
    pub attack_damage_hp: u16,
    /// Hit points one NPC attack takes.
    pub npc_attack_damage_hp: u16,
    /// Farthest an attacker may stand from its target (ground distance). At most the world's
    /// `interest_radius_m`, so a target across a border is always visible as a proxy.
    pub attack_range_m: f32,
    /// Time between two attacks of one attacker, on the cluster clock (so it means the same on
    /// every shard the attacker crosses to).
    pub attack_cooldown_ms: u64,
    /// Farthest a player may stand from a pickup to claim it. At most `interest_radius_m`.
    pub pickup_range_m: f32,
    /// Pickups in the whole world; each shard keeps its share by the area it owns.
    pub pickups: usize,
    /// A pickup is worth `1..=pickup_value_max` points.
    pub pickup_value_max: u32,
    /// How often a shard tops its pickups back up to its share.
    pub pickup_restock_ms: u64,
    /// How long a taken pickup stays (marked `Taken`) before its owner despawns it. Long enough
    /// for the neighbours to learn of it through proxy updates: see `pickups::clear_taken`.
    pub taken_linger_ms: u64,
    /// Share of pickups placed within `BORDER_BAND_M` of another shard's cells, so border races
    /// happen in every game (0.0..=1.0).
    pub pickups_near_borders: f32,
    /// Points for killing a player / an NPC.
    pub kill_points_player: u32,
    pub kill_points_npc: u32,
    /// A world-wide shout each time a player's score passes a multiple of this (0: never).
    pub milestone_points: u32,
    /// Time between two decisions of an NPC.
    pub npc_think_ms: u64,
    /// An NPC notices a living player this close.
    pub npc_aggro_radius_m: f32,
    /// An NPC gives up a chase when its target is farther than this.
    pub npc_leash_m: f32,
    /// How far an NPC looks for its next wander point.
    pub npc_wander_radius_m: f32,
    /// An NPC farther than this from its home point wanders back towards it.
    pub npc_roam_radius_m: f32,
    /// How long a dead NPC waits before it rises elsewhere.
    pub npc_respawn_ms: u64,
}

impl ArenaRules {
    /// The rules in a world config's `[game]` section (the defaults for what it leaves out), or
    /// the line that says what is wrong with it.
    pub fn from_game_section(game: &toml::Table) -> Result<Self, String> {
        toml::Value::Table(game.clone())
            .try_into()
            .map_err(|e: toml::de::Error| format!("[game] section: {}", e.message()))
    }
}

/// Pickups placed "near a border" stand this close to another shard's cells.
pub const BORDER_BAND_M: f32 = 8.0;

impl Default for ArenaRules {
    fn default() -> Self {
        Self {
            player_hp_max: 100,
            npc_hp_max: 60,
            attack_damage_hp: 20,
            npc_attack_damage_hp: 8,
            attack_range_m: 4.0,
            attack_cooldown_ms: 600,
            pickup_range_m: 5.0,
            pickups: 120,
            pickup_value_max: 10,
            pickup_restock_ms: 1_000,
            taken_linger_ms: 300,
            pickups_near_borders: 0.3,
            kill_points_player: 10,
            kill_points_npc: 3,
            milestone_points: 50,
            npc_think_ms: 500,
            npc_aggro_radius_m: 12.0,
            npc_leash_m: 24.0,
            npc_wander_radius_m: 40.0,
            npc_roam_radius_m: 160.0,
            npc_respawn_ms: 5_000,
        }
    }
}

impl ArenaRules {
    /// Check the rules against themselves and against the world they run in. An `Err` names
    /// the rule; the plugin refuses to build with it (a setup bug, found at start).
    pub fn validate(&self, world: &WorldConfig) -> Result<(), String> {
        let radius = world.interest.interest_radius_m;
        let ranges = [
            ("attack_range_m", self.attack_range_m),
            ("pickup_range_m", self.pickup_range_m),
        ];
        for (name, v) in ranges {
            if !(v.is_finite() && v > 0.0 && v <= radius) {
                return Err(format!(
                    "{name} must be in (0, interest_radius_m = {radius}] so a target across a \
                     border is visible as a proxy (got {v})"
                ));
            }
        }
        let positive = [
            ("npc_aggro_radius_m", self.npc_aggro_radius_m),
            ("npc_leash_m", self.npc_leash_m),
            ("npc_wander_radius_m", self.npc_wander_radius_m),
            ("npc_roam_radius_m", self.npc_roam_radius_m),
        ];
        for (name, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!(
                    "{name} must be a positive number of metres (got {v})"
                ));
            }
        }
        if self.npc_aggro_radius_m > world.interest.aoi_radius_m {
            return Err(format!(
                "npc_aggro_radius_m must be at most aoi_radius_m ({}): NPCs look through the \
                 AOI grid (got {})",
                world.interest.aoi_radius_m, self.npc_aggro_radius_m
            ));
        }
        if self.player_hp_max == 0 || self.npc_hp_max == 0 {
            return Err("player_hp_max and npc_hp_max must be at least 1".into());
        }
        if self.pickup_value_max == 0 {
            return Err("pickup_value_max must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.pickups_near_borders) {
            return Err(format!(
                "pickups_near_borders must be in 0.0..=1.0 (got {})",
                self.pickups_near_borders
            ));
        }
        if self.pickups > PICKUPS_MAX {
            return Err(format!(
                "pickups must be at most {PICKUPS_MAX} (got {})",
                self.pickups
            ));
        }
        Ok(())
    }
}

/// Most pickups a world may ask for: they are entities like any other, and a shard holds at
/// most `ENTITIES_PER_SHARD_MAX`; a tenth of that leaves the rest to players and NPCs.
pub const PICKUPS_MAX: usize = zonescaler_shared::limits::ENTITIES_PER_SHARD_MAX / 10;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_game_section_sets_what_it_names_and_refuses_what_it_does_not_know() {
        let mut game = toml::Table::new();
        game.insert("attack_range_m".into(), toml::Value::Float(3.0));
        game.insert("pickups".into(), toml::Value::Integer(7));
        let r = ArenaRules::from_game_section(&game).expect("parses");
        assert_eq!((r.attack_range_m, r.pickups), (3.0, 7));
        assert_eq!(
            r.attack_cooldown_ms,
            ArenaRules::default().attack_cooldown_ms
        );
        game.insert("atack_range_m".into(), toml::Value::Float(3.0));
        let err = ArenaRules::from_game_section(&game).expect_err("a typo");
        assert!(
            err.contains("atack_range_m"),
            "the error names the key: {err}"
        );
    }

    #[test]
    fn the_shipped_rules_fit_the_shipped_world_and_nonsense_is_named() {
        let world = WorldConfig::default();
        assert_eq!(ArenaRules::default().validate(&world), Ok(()));
        let far = ArenaRules {
            attack_range_m: world.interest.interest_radius_m + 1.0,
            ..ArenaRules::default()
        };
        let err = far
            .validate(&world)
            .expect_err("a range past the proxies is refused");
        assert!(err.contains("attack_range_m"), "{err}");
        let nan = ArenaRules {
            pickup_range_m: f32::NAN,
            ..ArenaRules::default()
        };
        assert!(nan.validate(&world).is_err());
    }
}
