//! `zonescaler-bots`: run a swarm of headless bots of the demo game against a shard and report.
//! Everything but logging setup lives in [`zonescaler_bots::cli`], which game server binaries
//! embed with their own game.

use clap::Parser;
use zonescaler_bots::BotGame;
use zonescaler_bots::cli::{self, BotArgs};

/// Headless ZoneScaler bots: connect N clients over QUIC, play a scenario, report latency,
/// bandwidth and errors.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    #[command(flatten)]
    bots: BotArgs,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = cli::run(Args::parse().bots, &[BotGame::demo()]) {
        eprintln!("zonescaler-bots: {e:#}");
        std::process::exit(1);
    }
}
