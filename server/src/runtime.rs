//! The production loop: the one module of a shard that reads the OS clock.
//!
//! A tokio runtime runs the QUIC driver; this thread paces ticks at `tick_hz`, moves transport
//! events into the shard's inbox, runs the schedule, and hands the outbox to the driver. If a
//! tick overruns, the next starts at once; if the loop falls more than a few ticks behind it
//! skips ahead (and says so) rather than spiralling.

use crate::app::ShardApp;
use crate::handoff::ClusterDirectory;
use crate::master::ClusterView;
use crate::node::{Node, Role};
use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};
use tracing::{error, info, warn};
use zonescaler_net::link::{ClusterAuth, ClusterLinks, LinkEvent};
use zonescaler_net::quic::QuicServer;
use zonescaler_net::tls::ServerIdentity;
use zonescaler_shared::ShardId;
use zonescaler_shared::cellmap::CellGrid;
use zonescaler_shared::codec;
use zonescaler_shared::config::WorldConfig;
use zonescaler_shared::limits;
use zonescaler_shared::protocol::ErrorCode;
use zonescaler_shared::protocol::{JoinRequest, LinkMessage};
use zonescaler_shared::token::TokenKey;

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
    /// Run as a member of a multi-shard cluster.
    pub cluster: Option<ClusterOptions>,
    /// Serve the HTTP API here (`GET /api/cluster` and `GET /api/players/{name}` on the master).
    pub http: Option<SocketAddr>,
    /// Worker threads of the network runtime (QUIC for clients and links, HTTP); the tick runs
    /// on its own thread besides these. See [`NET_THREADS_DEFAULT`].
    pub net_threads: usize,
}

/// Network worker threads of a shard that has the machine to itself. Shards sharing a machine
/// (`zonescaler up --shards N`) run one each: idle workers of many runtimes waking one another
/// cost more in context switches than a second worker gains.
pub const NET_THREADS_DEFAULT: usize = 2;
/// The most network worker threads a shard accepts.
pub const NET_THREADS_MAX: usize = 64;

/// How a shard takes part in a cluster.
#[derive(Clone)]
pub struct ClusterOptions {
    pub role: Role,
    /// UDP address for shard links.
    pub link_listen: SocketAddr,
    /// Capacity weight (share of the cells).
    pub weight: u32,
    /// The cluster secret: proves membership on links and signs redirect tokens.
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for ClusterOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterOptions")
            .field("role", &self.role)
            .field("link_listen", &self.link_listen)
            .field("weight", &self.weight)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Milliseconds since the Unix epoch: the cluster clock (token expiry, time in transit).
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Run a shard until `stop` is set (or Ctrl-C / SIGTERM arrives).
pub fn run_shard(opts: ShardOptions, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    if !(1..=NET_THREADS_MAX).contains(&opts.net_threads) {
        anyhow::bail!(
            "network threads must be 1..={NET_THREADS_MAX} (got {})",
            opts.net_threads
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.net_threads)
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
    spawn_signal_watch(&rt, stop.clone());
    let view: Arc<Mutex<Option<ClusterView>>> = Arc::new(Mutex::new(None));
    if let Some(http) = opts.http {
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(http))
            .with_context(|| format!("cannot serve HTTP on {http}"))?;
        println!(
            "zonescaler: HTTP API on http://{}/api/cluster",
            listener.local_addr()?
        );
        rt.spawn(serve_http(listener, view.clone()));
    }

    let mut node = match &opts.cluster {
        None => None,
        Some(c) => {
            let auth = ClusterAuth::new(&c.secret, crate::app::ShardApp::example_protocol_hash())
                .context("bad cluster secret")?;
            let (links, link_events) = ClusterLinks::bind(c.link_listen, &identity, auth)
                .with_context(|| format!("cannot listen for shard links on {}", c.link_listen))?;
            let me = JoinRequest {
                client_addr: addr.to_string(),
                link_addr: links.local_addr().to_string(),
                weight: c.weight,
            };
            let grid = CellGrid::from_config(&opts.config);
            let formed = rt.block_on(async {
                tokio::select! {
                    n = crate::node::form(c.role.clone(), links, link_events, grid, me, unix_ms) => Some(n),
                    _ = wait_for_stop(stop.clone()) => None,
                }
            });
            match formed {
                Some(n) => Some(n?),
                None => return Ok(()),
            }
        }
    };

    // Written once the shard is ready to serve (in a cluster: once the cluster formed), so a
    // launcher waiting for the file knows clients can play.
    if let Some(path) = &opts.cert_out {
        // Write then rename, so a launcher waiting for the file never reads half of it.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, identity.cert_pem())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    }
    // After the certificate is written: a caller told the address may read it at once.
    if let Some(tx) = &opts.ready {
        // The receiver may have given up waiting; the shard runs on regardless.
        let _ = tx.send(addr);
    }
    let mut app = match &node {
        None => ShardApp::example(opts.config.clone()),
        Some(n) => {
            let mut app = ShardApp::example_in(opts.config.clone(), n.me, n.map.clone());
            let secret = &opts
                .cluster
                .as_ref()
                .expect("invariant: a node implies cluster options")
                .secret;
            app.world.insert_resource(ClusterDirectory {
                key: TokenKey::new(secret),
                client_addrs: n.client_addrs(),
            });
            app
        }
    };
    if let Some(m) = node.as_ref().and_then(|n| n.master.as_ref()) {
        *view.lock().unwrap_or_else(PoisonError::into_inner) = Some(m.view());
    }
    if let Some(n) = node.as_mut() {
        for (from, msg) in std::mem::take(&mut n.early) {
            on_link_message(&mut app, n, from, msg);
        }
    }
    let hz = opts.config.simulation.tick_hz;
    info!(%addr, tick_hz = hz, npcs = opts.config.npc.count, world = %opts.config.world.name, "shard listening");
    println!(
        "zonescaler: shard listening on {addr} ({} Hz, {} NPCs in the world)",
        hz, opts.config.npc.count
    );

    let period = Duration::from_secs_f64(1.0 / f64::from(hz));
    // 1 µs .. 10 s at 3 significant digits: static bounds, cannot fail.
    let mut tick_us = Histogram::<u64>::new_with_bounds(1, 10_000_000, 3)
        .expect("invariant: valid static bounds");
    let mut events_buf = Vec::new();
    let mut link_buf = Vec::new();
    let mut last_heartbeat = Instant::now();
    let mut next = Instant::now();
    let mut last_report = Instant::now();
    let mut last_bytes = 0u64;
    let mut overruns = 0u64;
    while !stop.load(Ordering::Relaxed) {
        events.drain_into(limits::INBOX_EVENTS_MAX, &mut events_buf);
        for e in events_buf.drain(..) {
            app.push_event(e);
        }
        if let Some(n) = node.as_mut() {
            n.events.drain_into(limits::INBOX_EVENTS_MAX, &mut link_buf);
            for ev in link_buf.drain(..) {
                on_link_event(&mut app, n, ev);
            }
        }
        let t0 = Instant::now();
        app.set_now_ms(unix_ms());
        app.tick();
        tick_us.saturating_record(t0.elapsed().as_micros().max(1) as u64);
        for cmd in app.drain_outbox() {
            server.dispatch(cmd);
        }
        if let Some(n) = node.as_mut() {
            n.send_batches(app.drain_shard_outbox());
            if last_heartbeat.elapsed() >= Duration::from_millis(limits::HEARTBEAT_MS) {
                last_heartbeat = Instant::now();
                let mut load = app.load();
                load.tick_ms_p99 = tick_us.value_at_quantile(0.99) as f32 / 1000.0;
                let now = unix_ms();
                n.heartbeat(load, now);
                if let Some(m) = n.master.as_mut() {
                    for dead in m.check_liveness(now) {
                        error!(
                            shard = dead.0,
                            "shard silent for {} ms: declared dead (its cells are not recovered: failover is not built yet)",
                            limits::SHARD_DEAD_AFTER_MS
                        );
                    }
                    *view.lock().unwrap_or_else(PoisonError::into_inner) = Some(m.view());
                }
            }
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
            if node.is_none() {
                tick_us.reset();
            }
            last_report = Instant::now();
        }
    }
    info!(
        "shard stopping: closing {} connections",
        server.connections()
    );
    server.close_all(ErrorCode::ShuttingDown, "shard is shutting down");
    rt.block_on(server.shutdown());
    if let Some(n) = &node {
        rt.block_on(n.links.shutdown());
    }
    println!(
        "zonescaler: shard on {addr} stopped after {} ticks",
        app.tick_number()
    );
    Ok(())
}

/// A link event during play.
fn on_link_event(app: &mut ShardApp, node: &mut Node, ev: LinkEvent) {
    match ev {
        LinkEvent::Message { link, bytes } => {
            let Some(from) = node.peer(link) else {
                warn!(%link, "message on a link that is no member's; ignored");
                return;
            };
            match codec::decode_link_message(&bytes) {
                Ok(msg) => on_link_message(app, node, from, msg),
                Err(e) => {
                    error!(shard = from.0, error = %e, "bad link message: closing the link");
                    node.links.close(link, "bad link message");
                }
            }
        }
        LinkEvent::Down { link, reason, .. } => {
            error!(
                %link,
                shard = node.peer(link).map(|s| s.0),
                %reason,
                "link to a member lost (its entities in handoff stay frozen: failover is not built yet)"
            );
        }
        LinkEvent::Up { link, .. } => {
            // Joins after the cells are placed are refused (the balancer would have to move
            // cells to the newcomer, and there is none yet).
            node.links.close(
                link,
                "the cluster has formed: late joins are not supported yet",
            );
        }
        LinkEvent::Failed { .. } => {}
    }
}

fn on_link_message(app: &mut ShardApp, node: &mut Node, from: ShardId, msg: LinkMessage) {
    match msg {
        LinkMessage::Batch(msgs) => {
            for m in msgs {
                app.push_shard_message(from, Bytes::from(m));
            }
        }
        LinkMessage::Heartbeat(load) => {
            if let Some(m) = node.master.as_mut() {
                m.heartbeat(from, load, unix_ms());
            }
        }
        other => warn!(
            shard = from.0,
            ?other,
            "unexpected link message during play; ignored"
        ),
    }
}

/// The HTTP API, served on `--http` by every shard; only the master has a view to give.
/// - `GET /api/cluster`: the master's view as JSON.
/// - `GET /api/players/{name}`: which shard the directory says a player is on, and that shard's
///   client address; 404 if no such player is logged in.
///
/// Both answer 503 on a shard without the master role (or before the cluster formed).
async fn serve_http(listener: tokio::net::TcpListener, view: Arc<Mutex<Option<ClusterView>>>) {
    if let Err(e) = axum::serve(listener, api_router(view)).await {
        error!(error = %e, "HTTP API stopped");
    }
}

fn api_router(view: Arc<Mutex<Option<ClusterView>>>) -> axum::Router {
    use axum::extract::Path;
    use axum::http::StatusCode;
    use axum::response::{IntoResponse, Response};
    fn no_master() -> Response {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({
                "error": "this shard does not hold the master role (or the cluster has not formed yet); ask shard 0"
            })),
        )
            .into_response()
    }
    let current = move || view.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let cluster = current.clone();
    axum::Router::new()
        .route(
            "/api/cluster",
            axum::routing::get(move || {
                let v = cluster();
                async move {
                    match v {
                        Some(v) => axum::Json(v).into_response(),
                        None => no_master(),
                    }
                }
            }),
        )
        .route(
            "/api/players/{name}",
            axum::routing::get(move |Path(name): Path<String>| {
                let v = current();
                async move {
                    match v {
                        None => no_master(),
                        Some(v) => match v.player(&name) {
                            Some(p) => axum::Json(p).into_response(),
                            None => (
                                StatusCode::NOT_FOUND,
                                axum::Json(serde_json::json!({
                                    "error": format!("no player named {name:?} is logged in")
                                })),
                            )
                                .into_response(),
                        },
                    }
                }
            }),
        )
}

async fn wait_for_stop(stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master::Master;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use zonescaler_shared::config::WorldConfig;
    use zonescaler_shared::protocol::{JoinRequest, MemberInfo, ShardLoad};

    /// `GET path` over a real TCP connection: (status, body).
    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connects");
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("request sent");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("response read");
        let status = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("a status line");
        let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
        (status, body)
    }

    #[tokio::test]
    async fn the_api_says_which_shard_a_player_is_on() {
        let view: Arc<Mutex<Option<ClusterView>>> = Arc::new(Mutex::new(None));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("bound");
        tokio::spawn(serve_http(listener, view.clone()));

        let (status, body) = get(addr, "/api/players/ann").await;
        assert_eq!(status, 503, "no master view yet: {body}");

        let me = MemberInfo {
            id: ShardId(0),
            client_addr: "127.0.0.1:4433".into(),
            link_addr: "127.0.0.1:5433".into(),
            weight: 1,
        };
        let mut m = Master::new(CellGrid::from_config(&WorldConfig::default()), 2, me, 0);
        let joined = m
            .join(
                JoinRequest {
                    client_addr: "127.0.0.1:4434".into(),
                    link_addr: "127.0.0.1:5434".into(),
                    weight: 1,
                },
                0,
            )
            .expect("joins");
        m.place().expect("placed");
        m.heartbeat(
            joined,
            ShardLoad {
                players_arrived: vec!["ann".into()],
                ..ShardLoad::default()
            },
            10,
        );
        *view.lock().expect("not poisoned") = Some(m.view());

        let (status, body) = get(addr, "/api/players/ann").await;
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(v["shard"], 1, "{body}");
        assert_eq!(v["addr"], "127.0.0.1:4434", "{body}");

        let (status, body) = get(addr, "/api/players/bob").await;
        assert_eq!(status, 404, "{body}");
        assert!(
            body.contains("no player named \\\"bob\\\" is logged in"),
            "{body}"
        );

        let (status, body) = get(addr, "/api/cluster").await;
        assert_eq!(status, 200, "{body}");
        assert!(
            body.contains("\"players\":1") && !body.contains("ann"),
            "the cluster view counts players without listing them: {body}"
        );
    }
}
