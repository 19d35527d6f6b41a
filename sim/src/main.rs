//! `zonescaler-sim`: replay one seed, or sweep a range, and print the first violated invariant.

use anyhow::{Context, bail};
use clap::Parser;
use std::time::Instant;
use zonescaler_sim::balance::{
    CONVERGED_MAX_OVER_MEAN, EdgeCase, ScaleConfig, ScaleReport, ScaleSim, Spread, edge_cases,
};
use zonescaler_sim::cluster::{ClusterConfig, ClusterSim, LinkStats, Membership};
use zonescaler_sim::{Sim, SimConfig};

/// Deterministic ZoneScaler simulator: a shard and simulated clients over a seeded faulty network,
/// invariants checked every tick.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Replay this one seed.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Sweep seeds `A..B` (B exclusive), e.g. `0..200`.
    #[arg(long)]
    seeds: Option<String>,
    /// Override the ticks per run.
    #[arg(long)]
    ticks: Option<u64>,
    /// Override the number of clients.
    #[arg(long)]
    clients: Option<usize>,
    /// Run the multi-shard world instead (2–4 shards, border proxies over delayed links, a
    /// late joiner and a drain in some seeds).
    #[arg(long)]
    cluster: bool,
    /// Sweep on past a failing seed, and count the failures (the exit status is still 1).
    #[arg(long)]
    keep_going: bool,
    /// Run the balancer's scale simulation instead: the production balancer over a synthetic
    /// load model (hot zones that travel, shards that join, drain and die, one cell hotter than
    /// any shard), one round per simulated second; `--seed` picks the run.
    #[arg(long, conflicts_with_all = ["cluster", "seeds"])]
    balancer: bool,
    /// Players in the scale simulation.
    #[arg(long, default_value_t = 1_000_000, requires = "balancer")]
    players: usize,
    /// Shards at the start of the scale simulation.
    #[arg(long, default_value_t = 2_000, requires = "balancer")]
    shards: usize,
    /// Also write the scale simulation's report as JSON to this file.
    #[arg(long, requires = "balancer")]
    json: Option<std::path::PathBuf>,
}

fn parse_range(s: &str) -> anyhow::Result<(u64, u64)> {
    let Some((a, b)) = s.split_once("..") else {
        bail!("--seeds takes A..B, got `{s}`")
    };
    let (a, b): (u64, u64) = (a.trim().parse()?, b.trim().parse()?);
    if b <= a {
        bail!("--seeds {s}: the range is empty");
    }
    Ok((a, b))
}

fn main() {
    // Quiet unless asked: `RUST_LOG=debug` shows every handoff of a replayed seed.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .without_time()
            .init();
    }
    let args = Args::parse();
    match run(args) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("zonescaler-sim: {e:#}");
            std::process::exit(2);
        }
    }
}

/// One line on stdout. A closed pipe (`| head`) is an error for `main` to report, not a panic.
fn say(line: &str) -> anyhow::Result<()> {
    use std::io::Write;
    writeln!(std::io::stdout().lock(), "{line}").context("cannot write to standard output")
}

fn run(args: Args) -> anyhow::Result<bool> {
    if args.balancer {
        return balancer_scale(&args);
    }
    let (a, b) = match (&args.seed, &args.seeds) {
        (Some(s), _) => (*s, *s + 1),
        (None, Some(r)) => parse_range(r)?,
        (None, None) => (0, 1),
    };
    let started = Instant::now();
    let mut passed = 0u64;
    let mut failed = 0u64;
    let mut members = MembershipTally::default();
    let (mut quit_seeds, mut quitters) = (0u64, 0u64);
    for seed in a..b {
        let result = if args.cluster {
            let mut cfg = ClusterConfig::smoke(seed);
            if let Some(t) = args.ticks {
                cfg.ticks = t;
            }
            let (join, drain) = (cfg.join_at_tick.is_some(), cfg.drain_at_tick.is_some());
            ClusterSim::new(cfg)
                .map_err(|e| anyhow::anyhow!("seed {seed}: {e}"))?
                .run()
                .map(|o| {
                    members.add(join, drain, &o.membership);
                    members.add_links(&o.links);
                    quit_seeds += u64::from(o.quitters > 0);
                    quitters += o.quitters;
                    let m = &o.membership;
                    format!(
                        "seed {seed}: ok, multi-shard, up to {} proxies, {} handoffs ({} of bots' avatars followed by their bots); {} joined ({} cells, up to {} entities), {} of {} drains done; {} crashed ({} entities lost, cells given away after {} ms)",
                        o.max_proxies,
                        o.handoffs,
                        o.bot_handoffs,
                        m.joins,
                        m.cells_to_joiners,
                        m.joiner_entities_max,
                        m.drains_done,
                        m.drains_ordered,
                        m.crashes,
                        m.crash_entities_lost,
                        m.failover_ms
                    )
                })
        } else {
            let mut cfg = SimConfig::smoke(seed);
            if let Some(t) = args.ticks {
                cfg.ticks = t;
            }
            if let Some(c) = args.clients {
                cfg.clients = c;
            }
            Sim::new(cfg).run().map(|o| {
                format!(
                    "seed {seed}: ok, {} ticks, {} snapshots applied, {} messages dropped, final hash {:016x}",
                    o.ticks,
                    o.snapshots_applied,
                    o.messages_dropped,
                    o.hashes.last().copied().unwrap_or(0)
                )
            })
        };
        match result {
            Ok(line) => {
                passed += 1;
                if b - a == 1 {
                    say(&line)?;
                } else if (seed - a + 1) % 100 == 0 {
                    eprintln!(
                        "… {} / {} seeds run, {failed} failed ({:.1}s)",
                        seed - a + 1,
                        b - a,
                        started.elapsed().as_secs_f64()
                    );
                }
            }
            Err(v) => {
                say(&format!("FAIL {v}"))?;
                if args.cluster {
                    let cfg = ClusterConfig::smoke(seed);
                    say(&format!(
                        "shards {}, late joiner dials in at tick {:?}, drain ordered at tick {:?}, crash at tick {:?}, master crash at tick {:?}",
                        cfg.shards,
                        cfg.join_at_tick,
                        cfg.drain_at_tick,
                        cfg.crash_at_tick,
                        cfg.master_crash_at_tick
                    ))?;
                }
                let flag = if args.cluster { " --cluster" } else { "" };
                say(&format!(
                    "replay: cargo run -p zonescaler-sim --{flag} --seed {seed}"
                ))?;
                failed += 1;
                if !args.keep_going {
                    return Ok(false);
                }
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    say(&format!(
        "{passed} passed, {failed} failed ({} seeds in {secs:.1}s, {:.1} seeds/s)",
        b - a,
        (b - a) as f64 / secs.max(1e-9)
    ))?;
    if args.cluster {
        let t = &members;
        say(&format!(
            "membership: {} seeds with a late joiner ({} joined, {} got cells, {} cells in all, {} owned entities), {} seeds with a drain ({} ordered, {} done); {} link messages held until a joiner's link named itself, {} dropped",
            t.join_seeds,
            t.joins,
            t.joiners_with_cells,
            t.cells_to_joiners,
            t.joiners_with_entities,
            t.drain_seeds,
            t.drains_ordered,
            t.drains_done,
            t.unlinked_held,
            t.unlinked_drops
        ))?;
        say(&format!(
            "crashes: {} shards crashed holding {} entities ({} lost for good: no adopter; the rest promoted from their buddies' replicas; {} bots orphaned); their cells were given away at most {} ms after the crash",
            t.crashes,
            t.crash_entities_held,
            t.crash_entities_lost,
            t.crash_bots_orphaned,
            t.failover_ms_max
        ))?;
        say(&format!(
            "masters: {} crashed; {} successors took the role over, in terms up to {}; a successor held the role at most {} ms after the master's crash",
            t.master_crashes, t.takeovers, t.max_term, t.master_failover_ms_max
        ))?;
        let l = &t.links;
        say(&format!(
            "links: {} died with {} frames in flight, {} redials up ({} dials, {} failed), {} frames sent again, {} duplicates dropped, {} dropped at a session's bound",
            l.deaths,
            l.frames_lost,
            l.redials_up,
            l.dials,
            l.dials_failed,
            l.frames_resent,
            l.duplicates,
            l.frames_dropped
        ))?;
        say(&format!(
            "leases: {} shards fenced while running ({} of those fences died with their master), {} stopped on a lost lease, {} shard-ticks paused; {} entities lost with a replica stale from a dead or cut buddy link",
            t.fenced, t.unfenced, t.leases_lost, t.lease_paused_ticks, t.crash_entities_stale
        ))?;
        say(&format!(
            "quitters: {quitters} bots quit mid-redirect, in {quit_seeds} seeds (each must leave the player directory)"
        ))?;
    }
    Ok(failed == 0)
}

/// Joins and drains over a sweep of cluster seeds.
#[derive(Default)]
struct MembershipTally {
    join_seeds: u64,
    joins: u64,
    joiners_with_cells: u64,
    joiners_with_entities: u64,
    cells_to_joiners: u64,
    drain_seeds: u64,
    drains_ordered: u64,
    drains_done: u64,
    unlinked_held: u64,
    unlinked_drops: u64,
    crashes: u64,
    crash_entities_held: u64,
    crash_entities_lost: u64,
    crash_bots_orphaned: u64,
    failover_ms_max: u64,
    master_crashes: u64,
    takeovers: u64,
    max_term: u64,
    master_failover_ms_max: u64,
    fenced: u64,
    unfenced: u64,
    leases_lost: u64,
    lease_paused_ticks: u64,
    crash_entities_stale: u64,
    links: LinkStats,
}

impl MembershipTally {
    fn add(&mut self, join: bool, drain: bool, m: &Membership) {
        self.join_seeds += u64::from(join);
        self.drain_seeds += u64::from(drain);
        self.joins += m.joins;
        self.joiners_with_cells += u64::from(m.cells_to_joiners > 0);
        self.joiners_with_entities += u64::from(m.joiner_entities_max > 0);
        self.cells_to_joiners += m.cells_to_joiners;
        self.drains_ordered += m.drains_ordered;
        self.drains_done += m.drains_done;
        self.unlinked_held += m.unlinked_held;
        self.unlinked_drops += m.unlinked_drops;
        self.crashes += m.crashes;
        self.crash_entities_held += m.crash_entities_held;
        self.crash_entities_lost += m.crash_entities_lost;
        self.crash_bots_orphaned += m.crash_bots_orphaned;
        self.failover_ms_max = self.failover_ms_max.max(m.failover_ms);
        self.master_crashes += m.master_crashes;
        self.takeovers += m.takeovers;
        self.max_term = self.max_term.max(m.max_term);
        self.master_failover_ms_max = self.master_failover_ms_max.max(m.master_failover_ms);
        self.fenced += m.fenced;
        self.unfenced += m.unfenced;
        self.leases_lost += m.leases_lost;
        self.lease_paused_ticks += m.lease_paused_ticks;
        self.crash_entities_stale += m.crash_entities_stale;
    }

    fn add_links(&mut self, l: &LinkStats) {
        let t = &mut self.links;
        t.deaths += l.deaths;
        t.frames_lost += l.frames_lost;
        t.dials += l.dials;
        t.redials_up += l.redials_up;
        t.dials_failed += l.dials_failed;
        t.frames_resent += l.frames_resent;
        t.duplicates += l.duplicates;
        t.frames_dropped += l.frames_dropped;
    }
}

/// Most shards the scale simulation takes: ids are `u16`, and 1% more join during the run.
const SCALE_SHARDS_MAX: usize = 60_000;

/// `--balancer`: run the scale simulation, print its table, check the acceptance targets.
fn balancer_scale(args: &Args) -> anyhow::Result<bool> {
    if args.players == 0 || !(1..=SCALE_SHARDS_MAX).contains(&args.shards) {
        bail!(
            "--balancer needs --players >= 1 and --shards in 1..={SCALE_SHARDS_MAX} (got {} and {})",
            args.players,
            args.shards
        );
    }
    let cfg = ScaleConfig::new(args.seed.unwrap_or(1), args.players, args.shards);
    let sim = ScaleSim::new(cfg)?;
    let origin = Instant::now();
    // The only clock: the wall time of each `Balancer::plan` call.
    let mut clock = || origin.elapsed().as_nanos() as u64;
    let report = sim.run(&mut clock)?;
    let edges = edge_cases();
    print_scale(&report, &edges)?;
    if let Some(path) = &args.json {
        let json = serde_json::json!({ "report": report, "edge_cases": edges });
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let fast = report.round_ms.median <= 50.0;
    let even = report.converged_max_over_mean <= CONVERGED_MAX_OVER_MEAN
        && report.settled_max_over_mean <= CONVERGED_MAX_OVER_MEAN;
    say(&format!(
        "{} round median {:.1} ms (target <= 50 ms); {} max/mean {:.3} after convergence, {:.3} settled (target <= {CONVERGED_MAX_OVER_MEAN})",
        if fast { "ok" } else { "FAIL" },
        report.round_ms.median,
        if even { "ok" } else { "FAIL" },
        report.converged_max_over_mean,
        report.settled_max_over_mean,
    ))?;
    Ok(fast && even)
}

fn print_scale(r: &ScaleReport, edges: &[EdgeCase]) -> anyhow::Result<()> {
    let spread =
        |s: &Spread, unit: &str| format!("{:.1} / {:.1} / {:.1}{unit}", s.median, s.p99, s.max);
    let since = |at: Option<u32>| {
        at.map_or("not under 1.15 at the end".into(), |r| {
            format!("under 1.15 from round {r}")
        })
    };
    let rows = [
        (
            "run",
            format!(
                "seed {}, {} players, {} shards (+{} joined, {} drained, {} died), {} base cells -> {} leaves, {} rounds",
                r.seed,
                r.players,
                r.shards,
                r.joined,
                r.drained,
                r.died,
                r.base_cells,
                r.leaves_at_end,
                r.rounds
            ),
        ),
        (
            "round time (Balancer::plan), median / p99 / max",
            spread(&r.round_ms, " ms"),
        ),
        (
            "max/mean load per weight after convergence",
            format!(
                "{:.3} ({})",
                r.converged_max_over_mean,
                since(r.converged_at_round)
            ),
        ),
        (
            "max/mean, worst while zones travel and shards come and go",
            format!("{:.3}", r.dynamic_max_over_mean),
        ),
        (
            "max/mean after it settled",
            format!(
                "{:.3} ({})",
                r.settled_max_over_mean,
                since(r.settled_at_round)
            ),
        ),
        (
            "cells moved per round, median / p99 / max (total)",
            format!("{} ({})", spread(&r.cells_moved, ""), r.cells_moved_total),
        ),
        (
            "players migrated per round, median / p99 / max (total)",
            format!(
                "{} ({})",
                spread(&r.players_migrated, ""),
                r.players_migrated_total
            ),
        ),
        ("splits / merges", format!("{} / {}", r.splits, r.merges)),
        (
            "the cell hotter than any shard",
            format!(
                "load {:.2} of a tick (threshold 0.8), carried as {} leaves",
                r.festival_load, r.festival_leaves
            ),
        ),
        ("rounds with notes", format!("{:?}", r.notes)),
        ("digest", format!("{:016x}", r.digest)),
    ];
    for (k, v) in rows {
        say(&format!("{k:<58} {v}"))?;
    }
    say("edge cases (the production balancer on a 4x4 world, after 5 rounds):")?;
    for e in edges {
        say(&format!(
            "  {:<36} {} moves, {} splits; {}",
            e.case,
            e.moves,
            e.splits,
            e.notes.join(", ")
        ))?;
    }
    Ok(())
}
