//! The production loop: the one module of a shard that reads the OS clock.
//!
//! A tokio runtime runs the QUIC driver; this thread paces ticks at `tick_hz`, moves transport
//! events into the shard's inbox, runs the schedule, and hands the outbox to the driver. If a
//! tick overruns, the next starts at once; if the loop falls more than a few ticks behind it
//! skips ahead (and says so) rather than spiralling.

use crate::app::ShardApp;
use anyhow::Context;
use hdrhistogram::Histogram;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tracing::{info, warn};
use zonescaler_net::quic::QuicServer;
use zonescaler_net::tls::ServerIdentity;
use zonescaler_shared::config::WorldConfig;
use zonescaler_shared::limits;
use zonescaler_shared::protocol::ErrorCode;

/// How to run one shard process.
#[derive(Clone, Debug)]
pub struct ShardOptions {
    pub config: WorldConfig,
    pub listen: SocketAddr,
    /// Write the shard's certificate (PEM) here once it listens, for clients to trust.
    pub cert_out: Option<PathBuf>,
    /// How often to log tick statistics.
    pub stats_every: Duration,
    /// Told the bound address once the shard listens (tests bind port 0 and need to know).
    pub ready: Option<std::sync::mpsc::Sender<SocketAddr>>,
}

/// Run a shard until `stop` is set (or Ctrl-C / SIGTERM arrives).
pub fn run_shard(opts: ShardOptions, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("zs-net")
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let _guard = rt.enter();
    let identity = match (&opts.config.tls.cert_pem, &opts.config.tls.key_pem) {
        (Some(c), Some(k)) => ServerIdentity::from_pem_files(c, k)?,
        _ => ServerIdentity::self_signed(&["localhost", "127.0.0.1"])?,
    };
    let (server, mut events) = QuicServer::bind(opts.listen, &identity)
        .with_context(|| format!("cannot listen on {}", opts.listen))?;
    let addr = server.local_addr();
    if let Some(path) = &opts.cert_out {
        // Write then rename, so a launcher waiting for the file never reads half of it.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, identity.cert_pem())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    }
    spawn_signal_watch(&rt, stop.clone());
    if let Some(tx) = &opts.ready {
        // The receiver may have given up waiting; the shard runs on regardless.
        let _ = tx.send(addr);
    }

    let mut app = ShardApp::example(opts.config.clone());
    let hz = opts.config.simulation.tick_hz;
    info!(%addr, tick_hz = hz, npcs = opts.config.npc.count, world = %opts.config.world.name, "shard listening");
    println!(
        "zonescaler: shard listening on {addr} ({} Hz, {} NPCs)",
        hz, opts.config.npc.count
    );

    let period = Duration::from_secs_f64(1.0 / f64::from(hz));
    // 1 µs .. 10 s at 3 significant digits: static bounds, cannot fail.
    let mut tick_us = Histogram::<u64>::new_with_bounds(1, 10_000_000, 3)
        .expect("invariant: valid static bounds");
    let mut events_buf = Vec::new();
    let mut next = Instant::now();
    let mut last_report = Instant::now();
    let mut last_bytes = 0u64;
    let mut overruns = 0u64;
    while !stop.load(Ordering::Relaxed) {
        events.drain_into(limits::INBOX_EVENTS_MAX, &mut events_buf);
        for e in events_buf.drain(..) {
            app.push_event(e);
        }
        let t0 = Instant::now();
        app.tick();
        tick_us.saturating_record(t0.elapsed().as_micros().max(1) as u64);
        for cmd in app.drain_outbox() {
            server.dispatch(cmd);
        }
        next += period;
        let now = Instant::now();
        if now > next + period * 5 {
            overruns += 1;
            next = now;
        } else if next > now {
            std::thread::sleep(next - now);
        }
        if last_report.elapsed() >= opts.stats_every {
            let s = app.stats();
            let secs = last_report.elapsed().as_secs_f64();
            info!(
                tick = app.tick_number(),
                clients = s.clients,
                entities = s.entities,
                tick_ms_p50 = tick_us.value_at_quantile(0.5) as f64 / 1000.0,
                tick_ms_p99 = tick_us.value_at_quantile(0.99) as f64 / 1000.0,
                snapshot_kib_per_s = (s.snapshot_bytes - last_bytes) as f64 / 1024.0 / secs,
                overruns,
                closed = ?s.closed,
                "shard stats"
            );
            last_bytes = s.snapshot_bytes;
            tick_us.reset();
            last_report = Instant::now();
        }
    }
    info!(
        "shard stopping: closing {} connections",
        server.connections()
    );
    server.close_all(ErrorCode::ShuttingDown, "shard is shutting down");
    rt.block_on(server.shutdown());
    println!(
        "zonescaler: shard on {addr} stopped after {} ticks",
        app.tick_number()
    );
    Ok(())
}

/// Ctrl-C and SIGTERM set `stop`; the tick loop finishes its tick and closes connections cleanly.
fn spawn_signal_watch(rt: &tokio::runtime::Runtime, stop: Arc<AtomicBool>) {
    rt.spawn(async move {
        shutdown_signal().await;
        stop.store(true, Ordering::Relaxed);
    });
}

/// Resolves on Ctrl-C (SIGINT) or, on Unix, SIGTERM: the two ways operators stop a process.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                warn!(error = %e, "cannot watch SIGTERM; Ctrl-C still stops the process");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
