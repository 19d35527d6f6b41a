//! The command line every game binary gets: `main_with(|app| app.add_plugins(MyGame))`.
//!
//! - `shard`: one shard process of the game (alone, as the master of a new cluster, or joining).
//! - `up`: a local cluster of the game as supervised child processes (this same binary).
//! - `ticket`: mint a login ticket with the account service's key (local testing).
//! - `keygen`: make a login key pair (the account service keeps the private half).
//! - `drain`: drain a shard of a running cluster through the master's API.

use super::up::{self, UpOptions};
use super::{ClusterOptions, NET_THREADS_DEFAULT, NET_THREADS_MAX, Role, ShardOptions};
use crate::app::GameSetup;
use crate::core::ShardApp;
use anyhow::Context;
use clap::{Parser, Subcommand};
use std::io::{IsTerminal, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use zonescaler_shared::config::{CLUSTER_SECRET_BYTES_MIN, WorldConfig};
use zonescaler_shared::limits;
use zonescaler_shared::quant::QPos;
use zonescaler_shared::ticket::{self, LoginTicket, TICKET_TTL_MS_MAX, TicketSigner};

/// Environment variable holding the cluster secret (preferred over `[cluster] secret`).
pub const SECRET_ENV: &str = "ZONESCALER_CLUSTER_SECRET";

/// A ZoneScaler game server: one seamless world run by many processes.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run one shard process.
    Shard(ShardArgs),
    /// Run a local cluster as child processes; Ctrl-C stops every one of them.
    Up(UpOptions),
    /// Mint a login ticket for an account (local testing: a real game's account service mints
    /// them). Prints it as hex.
    Ticket(TicketArgs),
    /// Make a login key pair: the private file for the account service (and `ticket`, and the
    /// bots), the `.pub` file for the shards (`[login] keys` or `--login-keys`).
    Keygen(KeygenArgs),
    /// Run a swarm of headless bots that play this game against a running cluster, and report.
    Bots(zonescaler_bots::cli::BotArgs),
    /// Drain a shard of a running cluster: the master moves every cell of it to the other
    /// shards, then it leaves the cluster and exits 0. Follows the drain until then.
    Drain(super::drain::DrainArgs),
}

/// `zonescaler shard`.
#[derive(clap::Args, Debug)]
struct ShardArgs {
    /// World config (TOML).
    #[arg(long, default_value = "assets/worlds/default.toml")]
    world: PathBuf,
    /// UDP address for QUIC clients.
    #[arg(long, default_value = "127.0.0.1:4433")]
    listen: SocketAddr,
    /// Write the shard's TLS certificate (PEM) here once listening, for clients to trust.
    #[arg(long)]
    cert_out: Option<PathBuf>,
    /// Seconds between tick-statistics log lines.
    #[arg(long, default_value_t = 10)]
    stats_every_s: u64,
    /// Stop when standard input closes (set by `zonescaler up` so no child outlives it).
    #[arg(long, hide = true)]
    exit_with_parent: bool,
    /// Hold the master role of a new cluster and wait for this many shards in all (itself
    /// included) before placing the cells. Needs a cluster secret.
    #[arg(long, conflicts_with = "join")]
    expect_shards: Option<usize>,
    /// Join the running cluster through the shard links at this address: the master's, or any
    /// member's (it points to the master). Several, comma-separated, are tried in order, so a
    /// restarted shard finds the cluster whichever member died. Needs the cluster's secret.
    #[arg(long, value_delimiter = ',')]
    join: Vec<SocketAddr>,
    /// UDP address for shard links (cluster mode).
    #[arg(long, default_value = "127.0.0.1:0")]
    link_listen: SocketAddr,
    /// Capacity weight: this shard's share of the cells (1..=1000).
    #[arg(long, default_value_t = 1)]
    weight: u32,
    /// Serve the dashboard and the HTTP API here (`/`, `GET /api/cluster`,
    /// `GET /api/players/{name}` on the master).
    #[arg(long)]
    http: Option<SocketAddr>,
    /// Serve Prometheus metrics here (`GET /metrics`).
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Login key file (public halves) logins are checked against; overrides `[login] keys`.
    /// Without keys anyone may log in under any name (development only).
    #[arg(long)]
    login_keys: Option<PathBuf>,
    /// TLS certificate chain (PEM) for clients and links; overrides `[tls]` in the config.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM); overrides `[tls]` in the config.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Worker threads for networking (QUIC, shard links, HTTP), 1..=64; the tick has its own
    /// thread. `zonescaler up --shards N` (N > 1) runs its shards with 1.
    #[arg(long, default_value_t = NET_THREADS_DEFAULT as u16,
          value_parser = clap::value_parser!(u16).range(1..=NET_THREADS_MAX as i64))]
    net_threads: u16,
}

/// `zonescaler ticket`.
#[derive(clap::Args, Debug)]
struct TicketArgs {
    /// The account the ticket logs in (its player's name in the world).
    #[arg(long)]
    account: String,
    /// The account service's private key file (`zonescaler keygen`; `up` writes one to its run
    /// directory as `login.key`).
    #[arg(long, default_value = "target/zonescaler-run/login.key")]
    key: PathBuf,
    /// How long the ticket is valid, e.g. `30m`, `12h`, `2d`.
    #[arg(long, default_value = "12h", value_parser = parse_ttl)]
    ttl: Duration,
    /// Where the player starts, `X,Z` in metres (else the shard picks a point it owns).
    #[arg(long, value_parser = parse_spawn)]
    spawn: Option<QPos>,
}

/// `zonescaler keygen`.
#[derive(clap::Args, Debug)]
struct KeygenArgs {
    /// The private key file to write (the public half goes beside it, with `.pub`).
    #[arg(long)]
    key: PathBuf,
    /// The key's id (tickets name it, so keys can rotate).
    #[arg(long, default_value = "k1")]
    id: String,
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit_ms) = match s.char_indices().last() {
        Some((i, 'm')) => (&s[..i], 60_000.0),
        Some((i, 'h')) => (&s[..i], 3_600_000.0),
        Some((i, 'd')) => (&s[..i], 86_400_000.0),
        Some((i, 's')) => (&s[..i], 1_000.0),
        _ => (s, 1_000.0),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (try 30m, 12h, 2d)"))?;
    let ms = v * unit_ms;
    if !(ms.is_finite() && ms >= 1_000.0 && ms <= TICKET_TTL_MS_MAX as f64) {
        return Err(format!("a ticket lives from 1s to 7d (got `{s}`)"));
    }
    Ok(Duration::from_millis(ms as u64))
}

fn parse_spawn(s: &str) -> Result<QPos, String> {
    let (x, z) = s
        .split_once(',')
        .ok_or_else(|| format!("`{s}` is not X,Z"))?;
    let p = |v: &str| {
        v.trim()
            .parse::<f32>()
            .ok()
            .filter(|f| f.is_finite() && f.abs() <= limits::WORLD_EXTENT_M_MAX)
            .ok_or_else(|| {
                format!(
                    "`{v}` is not a coordinate within ±{} m",
                    limits::WORLD_EXTENT_M_MAX
                )
            })
    };
    Ok(QPos::quantize(glam::Vec3::new(p(x)?, 0.0, p(z)?)))
}

/// Run the game binary's command line: parse, act, exit with a clear line on any error (2 for
/// bad input, 1 for a failure while running).
pub fn main_with(setup: impl Fn(&mut ShardApp) + Send + Sync + 'static) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: `up` sends each shard's stderr to a log file, where escape
        // codes are noise. NO_COLOR (https://no-color.org) still turns them off anywhere.
        .with_ansi(
            std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .init();
    let game: GameSetup = Arc::new(setup);
    let stop = Arc::new(AtomicBool::new(false));
    let result = match Cli::parse().command {
        Cmd::Shard(args) => match shard_options(args, game, &stop) {
            Ok(opts) => super::run_shard(opts, stop),
            Err(e) => {
                eprintln!("zonescaler: {e}");
                return ExitCode::from(2);
            }
        },
        Cmd::Up(opts) => {
            watch_ctrl_c(stop.clone());
            up::up(opts, stop, &game)
        }
        Cmd::Ticket(args) => mint(args),
        Cmd::Keygen(args) => keygen(args),
        Cmd::Drain(args) => super::drain::drain(&args),
        Cmd::Bots(args) => {
            let app = ShardApp::with_game(WorldConfig::default(), None, &game);
            match app.setup_errors() {
                [] => zonescaler_bots::cli::run(args, &[app.bot_game(&game_name())]),
                errors => Err(anyhow::anyhow!("{}", errors.join("; "))),
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zonescaler: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The game's name for `bots --game`: the binary's name without a `zonescaler-` prefix
/// (`zonescaler-arena` plays `arena`), and `demo` for the stock `zonescaler`.
fn game_name() -> String {
    let exe = std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_default();
    match exe.strip_prefix("zonescaler-") {
        Some(game) if !game.is_empty() => game.to_owned(),
        _ if exe == "zonescaler" || exe.is_empty() => "demo".to_owned(),
        _ => exe,
    }
}

/// Ctrl-C stops `up` (which then stops its children in order).
fn watch_ctrl_c(stop: Arc<AtomicBool>) {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => {
            std::thread::spawn(move || {
                rt.block_on(super::shutdown_signal());
                stop.store(true, Ordering::Relaxed);
            });
        }
        Err(e) => eprintln!("zonescaler: cannot watch Ctrl-C: {e}"),
    }
}

/// The shard's options from its flags and config; every error is one line.
fn shard_options(
    args: ShardArgs,
    game: GameSetup,
    stop: &Arc<AtomicBool>,
) -> Result<ShardOptions, String> {
    let mut config = WorldConfig::load(&args.world).map_err(|e| e.to_string())?;
    if args.tls_cert.is_some() {
        config.tls.cert_pem = args.tls_cert;
        config.tls.key_pem = args.tls_key;
    }
    if args.login_keys.is_some() {
        config.login.keys = args.login_keys;
    }
    let cluster = cluster_options(
        &config,
        args.expect_shards,
        args.join,
        args.link_listen,
        args.weight,
    )?;
    if args.exit_with_parent {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut sink = [0u8; 64];
            while matches!(std::io::stdin().read(&mut sink), Ok(n) if n > 0) {}
            stop.store(true, Ordering::Relaxed);
        });
    }
    Ok(ShardOptions {
        config,
        listen: args.listen,
        cert_out: args.cert_out,
        stats_every: Duration::from_secs(args.stats_every_s.max(1)),
        ready: None,
        cluster,
        http: args.http,
        metrics: args.metrics,
        net_threads: usize::from(args.net_threads),
        game,
    })
}

/// Cluster mode from the flags: `--expect-shards N` (N > 1) holds the master role, `--join`
/// joins; either needs the secret. `None`: a one-shard world.
fn cluster_options(
    config: &WorldConfig,
    expect_shards: Option<usize>,
    join: Vec<SocketAddr>,
    link_listen: SocketAddr,
    weight: u32,
) -> Result<Option<ClusterOptions>, String> {
    let role = match (expect_shards, (!join.is_empty()).then_some(join)) {
        (Some(0), _) => return Err("--expect-shards must be at least 1".into()),
        (Some(n), None) if n > limits::SHARDS_MAX => {
            return Err(format!(
                "--expect-shards {n}: at most {} shards",
                limits::SHARDS_MAX
            ));
        }
        (Some(1) | None, None) => return Ok(None),
        (Some(n), None) => Role::Master { expect_shards: n },
        (_, Some(members)) => Role::Join { members },
    };
    if !(1..=1_000).contains(&weight) {
        return Err(format!("--weight must be in 1..=1000 (got {weight})"));
    }
    let secret = match std::env::var(SECRET_ENV) {
        Ok(s) => s,
        Err(_) => config.cluster.secret.clone().ok_or_else(|| {
            format!(
                "a cluster needs a secret: set {SECRET_ENV} (at least {CLUSTER_SECRET_BYTES_MIN} bytes) or `[cluster] secret` in the world config"
            )
        })?,
    };
    if secret.len() < CLUSTER_SECRET_BYTES_MIN {
        return Err(format!(
            "{SECRET_ENV} must be at least {CLUSTER_SECRET_BYTES_MIN} bytes (got {})",
            secret.len()
        ));
    }
    Ok(Some(ClusterOptions {
        role,
        link_listen,
        weight,
        secret: secret.into_bytes(),
    }))
}

/// `zonescaler ticket`: print a signed ticket for `--account`.
fn mint(args: TicketArgs) -> anyhow::Result<()> {
    if args.account.is_empty() || args.account.len() > limits::PLAYER_NAME_BYTES_MAX {
        anyhow::bail!(
            "--account must be 1..={} bytes",
            limits::PLAYER_NAME_BYTES_MAX
        );
    }
    let signer = TicketSigner::load(&args.key)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the system clock is before 1970")?;
    let t = signer.sign(&LoginTicket {
        account: args.account,
        spawn: args.spawn,
        expires_ms: (now + args.ttl).as_millis() as u64,
    });
    println!("{}", ticket::to_text(&t));
    Ok(())
}

/// `zonescaler keygen`: write a key pair.
fn keygen(args: KeygenArgs) -> anyhow::Result<()> {
    let public = args.key.with_extension("pub");
    if args.key.exists() {
        anyhow::bail!(
            "{} exists; refusing to overwrite a login key (move it away first)",
            args.key.display()
        );
    }
    TicketSigner::generate_files(&args.id, &args.key, &public)?;
    println!(
        "zonescaler: login key {:?}: private {} (account service only), public {} (shards: --login-keys)",
        args.id,
        args.key.display(),
        public.display()
    );
    Ok(())
}
