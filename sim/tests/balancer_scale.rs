//! The balancer's scale simulation in small: it converges, it repeats, and every edge case has
//! its defined answer.

use zonescaler_sim::balance::{CONVERGED_MAX_OVER_MEAN, ScaleConfig, ScaleSim, edge_cases};

fn run(seed: u64) -> zonescaler_sim::balance::ScaleReport {
    let sim = ScaleSim::new(ScaleConfig::new(seed, 10_000, 20)).expect("the scale world is valid");
    sim.run(&mut || 0)
        .expect("every plan applies to the map it was made for")
}

#[test]
fn ten_thousand_players_on_twenty_shards_converge_and_repeat() {
    let a = run(7);
    assert!(
        a.converged_max_over_mean <= CONVERGED_MAX_OVER_MEAN,
        "from the first placement the load per weight evens out to max/mean <= 1.15 (got {:.3})",
        a.converged_max_over_mean
    );
    assert!(
        a.settled_max_over_mean <= CONVERGED_MAX_OVER_MEAN,
        "after travelling hot zones, a join, a drain and a death it evens out again (got {:.3})",
        a.settled_max_over_mean
    );
    assert!(
        a.dynamic_max_over_mean > a.settled_max_over_mean,
        "the travelling zones and shard churn did unbalance it on the way ({:.3})",
        a.dynamic_max_over_mean
    );
    assert_eq!(
        (a.joined, a.drained, a.died),
        (1, 1, 1),
        "one of each event at this size"
    );
    assert!(
        a.cells_moved_total > 0 && a.splits > 0,
        "it moved and split cells: {a:?}"
    );
    assert!(
        a.festival_load > 0.8 && a.festival_leaves > 1,
        "the cell hotter than any shard ({:.2}) is carried as several leaves ({})",
        a.festival_load,
        a.festival_leaves
    );
    let b = run(7);
    assert_eq!(
        a, b,
        "the same seed gives the same run, round by round (the digest included)"
    );
    assert_ne!(a.digest, run(8).digest, "another seed gives another run");
}

#[test]
fn every_edge_case_has_its_defined_answer() {
    let cases = edge_cases();
    let answer = |name: &str| {
        cases
            .iter()
            .find(|c| c.case == name)
            .unwrap_or_else(|| panic!("case {name} is run"))
    };
    let none = answer("no shards");
    assert_eq!(none.moves, 0);
    assert!(none.notes.iter().any(|n| n == "NoShards"), "{none:?}");

    let all = answer("all overloaded");
    assert_eq!(all.moves, 0, "no move that does not help: {all:?}");
    assert!(
        all.notes.iter().any(|n| n.starts_with("AllOverloaded")),
        "{all:?}"
    );

    let hot = answer("one super-hot cell at minimum size");
    assert_eq!(
        hot.splits, 0,
        "a cell at the minimum size never splits: {hot:?}"
    );
    assert!(
        hot.notes.iter().any(|n| n.starts_with("CannotSplit")),
        "and says so: {hot:?}"
    );

    let single = answer("single shard, overloaded");
    assert_eq!(
        single.moves, 0,
        "one shard has nobody to give to: {single:?}"
    );
    assert!(
        single.notes.iter().any(|n| n.starts_with("AllOverloaded")),
        "{single:?}"
    );
}
