//! Scores: awards from pickups, points from kills, a shout at each milestone.

use crate::commands::Award;
use crate::components::Score;
use crate::stats::ArenaStats;
use zonescaler_server::prelude::*;

/// Add `points` to `score` (saturating: a score never wraps to zero). Returns the highest
/// multiple of `milestone` the score passed, if it passed one (`milestone` 0: never).
pub fn add_points(score: &mut Score, points: u32, milestone: u32) -> Option<u32> {
    let before = score.points;
    score.points = before.saturating_add(points);
    (milestone > 0 && score.points / milestone > before / milestone)
        .then(|| score.points / milestone * milestone)
}

/// Largest award applied at once. Awards come from other shards of the same build, never from
/// clients, but a bound keeps one bad message from pinning a score at `u32::MAX`.
pub const AWARD_POINTS_MAX: u32 = 1_000;

/// `Simulate`: `Award` on the winner's owner.
pub fn apply_awards(
    awards: Res<Delivered<Award>>,
    mut scorers: Query<(&mut Score, Option<&Player>), OwnedOnly>,
    rules: Res<crate::rules::ArenaRules>,
    mut messages: ResMut<PlayerMessages>,
    mut stats: ResMut<ArenaStats>,
) {
    for d in &awards {
        let Ok((mut score, player)) = scorers.get_mut(d.entity) else {
            continue;
        };
        stats.awards += 1;
        let points = d.command.points.min(AWARD_POINTS_MAX);
        if let (Some(m), Some(p)) = (
            add_points(&mut score, points, rules.milestone_points),
            player,
        ) {
            stats.milestones += 1;
            messages.shout("", &format!("{} passed {m} points", p.account));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milestones_fire_once_per_multiple_passed_and_scores_saturate() {
        let mut s = Score { points: 45 };
        assert_eq!(add_points(&mut s, 4, 50), None);
        assert_eq!(add_points(&mut s, 1, 50), Some(50), "reaching it counts");
        assert_eq!(
            add_points(&mut s, 120, 50),
            Some(150),
            "the highest one passed"
        );
        assert_eq!(add_points(&mut s, 10, 0), None, "0 means no milestones");
        s.points = u32::MAX - 1;
        add_points(&mut s, 10, 0);
        assert_eq!(s.points, u32::MAX);
    }
}
