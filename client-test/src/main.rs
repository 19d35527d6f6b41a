//! `zonescaler-bots`: run a swarm of headless bots against a shard and report.

use anyhow::{Context, bail};
use clap::Parser;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;
use zonescaler_bots::swarm::{self, SwarmConfig};
use zonescaler_bots::{BotGame, Scenario};
use zonescaler_net::tls::ClientTrust;

/// Headless ZoneScaler bots: connect N clients over QUIC, play a scenario, report latency,
/// bandwidth and errors.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Shard address to connect to (host:port). Bots follow redirects to the cluster's other
    /// shards from there.
    #[arg(long, default_value = "127.0.0.1:4433")]
    connect: String,
    /// Number of bots.
    #[arg(long, default_value_t = 10)]
    bots: usize,
    /// How long every bot plays after the ramp, e.g. `30s`, `2m`, `500ms`.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// Time over which bots connect, evenly spaced (default: 2 ms per bot, at most 5 s).
    #[arg(long, value_parser = parse_duration)]
    ramp: Option<Duration>,
    /// What the bots do: wander (random waypoints), idle (stand still), border (walk back and
    /// forth across borders between shards, chosen from the cell map; needs a cluster of more
    /// than one shard, e.g. `zonescaler up --shards 4`).
    #[arg(long, default_value = "wander", value_parser = parse_scenario)]
    scenario: Scenario,
    /// Write the report as JSON to this file.
    #[arg(long)]
    report_json: Option<PathBuf>,
    /// PEM certificate to trust (`zonescaler up` writes one that every shard of its cluster
    /// presents).
    #[arg(long, conflicts_with = "insecure")]
    cert: Option<PathBuf>,
    /// Accept any server certificate (local testing only).
    #[arg(long)]
    insecure: bool,
    /// TLS server name to ask for.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// Inputs per second per bot.
    #[arg(long, default_value_t = 30)]
    input_hz: u32,
    /// Seed for the bots' choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Do not show progress.
    #[arg(long)]
    quiet: bool,
    /// Worker threads for the bots' async runtime (default: one per CPU core).
    #[arg(long)]
    threads: Option<usize>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mul) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (try 30s, 2m, 500ms)"))?;
    if !(v.is_finite() && v > 0.0) {
        return Err(format!("`{s}` must be a positive duration"));
    }
    Ok(Duration::from_secs_f64(v * mul))
}

fn parse_scenario(s: &str) -> Result<Scenario, String> {
    Scenario::parse(s).ok_or_else(|| {
        let names: Vec<&str> = Scenario::ALL.iter().map(|x| x.name()).collect();
        format!("unknown scenario `{s}` (one of: {})", names.join(", "))
    })
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = real_main(Args::parse()) {
        eprintln!("zonescaler-bots: {e:#}");
        std::process::exit(1);
    }
}

fn real_main(args: Args) -> anyhow::Result<()> {
    if args.bots == 0 {
        bail!("--bots must be at least 1");
    }
    if args.bots > 20_000 {
        bail!(
            "--bots {} is more than one process should drive (at most 20000)",
            args.bots
        );
    }
    if args.input_hz == 0 || args.input_hz > 240 {
        bail!("--input-hz must be in 1..=240");
    }
    let addr: SocketAddr = args
        .connect
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve --connect {}", args.connect))?
        .next()
        .with_context(|| format!("--connect {} resolves to no address", args.connect))?;
    let trust = match (&args.cert, args.insecure) {
        (Some(p), _) => ClientTrust::from_pem_file(p)?,
        (None, true) => ClientTrust::InsecureSkipVerify,
        (None, false) => bail!(
            "give --cert FILE (the shard's certificate) or --insecure to accept any certificate"
        ),
    };
    let ramp = args
        .ramp
        .unwrap_or_else(|| Duration::from_millis((2 * args.bots as u64).min(5_000)));
    let cfg = SwarmConfig {
        addr,
        server_name: args.server_name.clone(),
        bots: args.bots,
        duration: args.duration,
        ramp,
        scenario: args.scenario,
        trust,
        seed: args.seed,
        input_hz: args.input_hz,
        progress: !args.quiet,
        game: BotGame::demo(),
        login: None,
    };
    eprintln!(
        "zonescaler-bots: {} bots → {addr} ({}), ramp {:?}, run {:?}",
        args.bots,
        args.scenario.name(),
        ramp,
        args.duration
    );
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        if n == 0 || n > 256 {
            bail!("--threads must be in 1..=256");
        }
        builder.worker_threads(n);
    }
    let rt = builder
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let report = rt.block_on(swarm::run(cfg))?;
    print!("{}", report.render());
    if let Some(path) = &args.report_json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json)
            .with_context(|| format!("cannot write report to {}", path.display()))?;
        eprintln!("zonescaler-bots: report written to {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_refuse_nonsense() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("abc").is_err());
    }

    #[test]
    fn every_scenario_parses_and_the_help_names_it() {
        use clap::CommandFactory;
        let help = Args::command().render_long_help().to_string();
        for s in Scenario::ALL {
            assert_eq!(parse_scenario(s.name()), Ok(s));
            assert!(help.contains(s.name()), "--help names `{}`", s.name());
        }
        assert!(
            help.contains("more than one shard"),
            "--help says border needs a multi-shard cluster"
        );
        assert!(parse_scenario("sideways").is_err());
    }
}
