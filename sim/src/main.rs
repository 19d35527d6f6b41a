//! `zonescaler-sim`: replay one seed, or sweep a range, and print the first violated invariant.

use anyhow::{Context, bail};
use clap::Parser;
use std::time::Instant;
use zonescaler_sim::cluster::{ClusterConfig, ClusterSim};
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
    /// Run the multi-shard world instead (2–4 shards, border proxies over delayed links).
    #[arg(long)]
    cluster: bool,
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
    let (a, b) = match (&args.seed, &args.seeds) {
        (Some(s), _) => (*s, *s + 1),
        (None, Some(r)) => parse_range(r)?,
        (None, None) => (0, 1),
    };
    let started = Instant::now();
    let mut passed = 0u64;
    for seed in a..b {
        let result = if args.cluster {
            let mut cfg = ClusterConfig::smoke(seed);
            if let Some(t) = args.ticks {
                cfg.ticks = t;
            }
            ClusterSim::new(cfg)
                .map_err(|e| anyhow::anyhow!("seed {seed}: {e}"))?
                .run()
                .map(|o| {
                    format!(
                        "seed {seed}: ok, multi-shard, up to {} proxies, {} handoffs ({} of bots' avatars followed by their bots)",
                        o.max_proxies, o.handoffs, o.bot_handoffs
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
                        "… {} / {} seeds ok ({:.1}s)",
                        seed - a + 1,
                        b - a,
                        started.elapsed().as_secs_f64()
                    );
                }
            }
            Err(v) => {
                say(&format!("FAIL {v}"))?;
                let flag = if args.cluster { " --cluster" } else { "" };
                say(&format!(
                    "replay: cargo run -p zonescaler-sim --{flag} --seed {seed}"
                ))?;
                return Ok(false);
            }
        }
    }
    say(&format!(
        "{passed} passed, 0 failed ({} seeds in {:.1}s)",
        b - a,
        started.elapsed().as_secs_f64()
    ))?;
    Ok(true)
}
