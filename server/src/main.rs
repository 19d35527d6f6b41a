//! `zonescaler`: run a shard, or a local cluster.

use clap::{Parser, Subcommand};
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use zonescaler_server::cluster::{self, UpOptions};
use zonescaler_server::node::Role;
use zonescaler_server::runtime::{self, ClusterOptions, ShardOptions};
use zonescaler_shared::config::WorldConfig;

/// ZoneScaler: an authoritative game server for one seamless world run by many processes.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run one shard process.
    Shard {
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
        /// Join the cluster whose master's shard links listen at this address. Needs the
        /// cluster's secret.
        #[arg(long)]
        join: Option<SocketAddr>,
        /// UDP address for shard links (cluster mode).
        #[arg(long, default_value = "127.0.0.1:0")]
        link_listen: SocketAddr,
        /// Capacity weight: this shard's share of the cells (1..=1000).
        #[arg(long, default_value_t = 1)]
        weight: u32,
        /// Serve the HTTP API here (`GET /api/cluster`, `GET /api/players/{name}` on the master).
        #[arg(long)]
        http: Option<SocketAddr>,
        /// TLS certificate chain (PEM) for clients and links; overrides `[tls]` in the config.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// TLS private key (PEM); overrides `[tls]` in the config.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Worker threads for networking (QUIC, shard links, HTTP), 1..=64; the tick has its own
        /// thread. `zonescaler up --shards N` (N > 1) runs its shards with 1.
        #[arg(long, default_value_t = runtime::NET_THREADS_DEFAULT as u16,
              value_parser = clap::value_parser!(u16).range(1..=runtime::NET_THREADS_MAX as i64))]
        net_threads: u16,
    },
    /// Run a local cluster as child processes; Ctrl-C stops every one of them.
    Up(UpOptions),
}

/// Environment variable holding the cluster secret (preferred over `[cluster] secret`).
const SECRET_ENV: &str = "ZONESCALER_CLUSTER_SECRET";

/// Cluster mode from the flags: `--expect-shards N` (N > 1) holds the master role, `--join`
/// joins; either needs the secret. `None`: a one-shard world.
fn cluster_options(
    config: &WorldConfig,
    expect_shards: Option<usize>,
    join: Option<SocketAddr>,
    link_listen: SocketAddr,
    weight: u32,
) -> Result<Option<ClusterOptions>, String> {
    let role = match (expect_shards, join) {
        (Some(0), _) => return Err("--expect-shards must be at least 1".into()),
        (Some(n), None) if n > zonescaler_shared::limits::SHARDS_MAX => {
            return Err(format!(
                "--expect-shards {n}: at most {} shards",
                zonescaler_shared::limits::SHARDS_MAX
            ));
        }
        (Some(1) | None, None) => return Ok(None),
        (Some(n), None) => Role::Master { expect_shards: n },
        (_, Some(master)) => Role::Join { master },
    };
    if !(1..=1_000).contains(&weight) {
        return Err(format!("--weight must be in 1..=1000 (got {weight})"));
    }
    let secret = match std::env::var(SECRET_ENV) {
        Ok(s) => s,
        Err(_) => config.cluster.secret.clone().ok_or_else(|| {
            format!(
                "a cluster needs a secret: set {SECRET_ENV} (at least {} bytes) or `[cluster] secret` in the world config",
                zonescaler_shared::config::CLUSTER_SECRET_BYTES_MIN
            )
        })?,
    };
    if secret.len() < zonescaler_shared::config::CLUSTER_SECRET_BYTES_MIN {
        return Err(format!(
            "{SECRET_ENV} must be at least {} bytes (got {})",
            zonescaler_shared::config::CLUSTER_SECRET_BYTES_MIN,
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

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let stop = Arc::new(AtomicBool::new(false));
    let result = match Cli::parse().command {
        Cmd::Shard {
            world,
            listen,
            cert_out,
            stats_every_s,
            exit_with_parent,
            expect_shards,
            join,
            link_listen,
            weight,
            http,
            tls_cert,
            tls_key,
            net_threads,
        } => {
            let mut config = match WorldConfig::load(&world) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("zonescaler: {e}");
                    std::process::exit(2);
                }
            };
            if tls_cert.is_some() {
                config.tls.cert_pem = tls_cert;
                config.tls.key_pem = tls_key;
            }
            let cluster = match cluster_options(&config, expect_shards, join, link_listen, weight) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("zonescaler: {e}");
                    std::process::exit(2);
                }
            };
            if exit_with_parent {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut sink = [0u8; 64];
                    while matches!(std::io::stdin().read(&mut sink), Ok(n) if n > 0) {}
                    stop.store(true, Ordering::Relaxed);
                });
            }
            let opts = ShardOptions {
                config,
                listen,
                cert_out,
                stats_every: Duration::from_secs(stats_every_s.max(1)),
                ready: None,
                cluster,
                http,
                net_threads: usize::from(net_threads),
            };
            runtime::run_shard(opts, stop)
        }
        Cmd::Up(opts) => {
            let s = stop.clone();
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => {
                    std::thread::spawn(move || {
                        rt.block_on(runtime::shutdown_signal());
                        s.store(true, Ordering::Relaxed);
                    });
                }
                Err(e) => eprintln!("zonescaler: cannot watch Ctrl-C: {e}"),
            }
            cluster::up(opts, stop)
        }
    };
    if let Err(e) = result {
        eprintln!("zonescaler: {e:#}");
        std::process::exit(1);
    }
}
