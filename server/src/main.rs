//! `zonescaler`: run a shard, or a local cluster.

use clap::{Parser, Subcommand};
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use zonescaler_server::cluster::{self, UpOptions};
use zonescaler_server::runtime::{self, ShardOptions};
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
    },
    /// Run a local cluster as child processes; Ctrl-C stops every one of them.
    Up(UpOptions),
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
        } => {
            let config = match WorldConfig::load(&world) {
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
