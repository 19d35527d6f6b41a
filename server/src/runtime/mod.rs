//! The production runtime: the only code that touches the OS clock, sockets and threads.
//!
//! A tokio runtime runs the QUIC driver, the shard links and the HTTP API; the calling thread
//! paces ticks at `tick_hz`, moves transport events into the shard's inboxes, runs the schedule,
//! and hands the outboxes to the drivers. If a tick overruns, the next starts at once; if the
//! loop falls more than a few ticks behind it skips ahead (and says so) rather than spiralling.
//!
//! - [`run_shard`]: one shard process ([`Shard::start`] → [`Shard::run`] → shutdown).
//! - [`cli`]: the command line every game binary gets (`main_with`).
//! - [`up`]: a local cluster as supervised child processes.
//! - [`http`]: the HTTP API and the dashboard; [`metrics`]: Prometheus metrics.

/// How long a drained shard keeps running (owning nothing) before it closes its links.
const DRAINED_LINGER: Duration = Duration::from_secs(1);

pub mod cli;
pub mod dashboard;
pub mod drain;
pub mod http;
pub mod metrics;
pub mod up;

use crate::app::GameSetup;
use crate::client::{ClusterDirectory, LoginPolicy};
use crate::cluster::balancer::Balancer;
use crate::cluster::node::MasterSettings;
use crate::cluster::{
    FormAction, FormError, FormEvent, Formed, Forming, LeaseState, LoadCounters, LoadWindow,
    Master, Node,
};
use crate::core::ShardApp;
use crate::core::resources::{ClusterMode, Inbox, ShardInbox, ShardStats};
use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use http::{ApiCommand, ApiCommands, SharedView};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tracing::{error, info, warn};
use zonescaler_net::fault::PartitionSwitch;
use zonescaler_net::link::{
    ClusterAuth, ClusterLinks, LinkEvent, LinkEvents, LinkOptions, LinkStats,
};
use zonescaler_net::quic::{NetStats, QuicEvents, QuicServer, ServerLimits};
use zonescaler_net::tls::ServerIdentity;
use zonescaler_shared::ShardId;
use zonescaler_shared::cellmap::CellGrid;
use zonescaler_shared::codec;
use zonescaler_shared::config::WorldConfig;
use zonescaler_shared::limits;
use zonescaler_shared::protocol::{ErrorCode, JoinRequest};
use zonescaler_shared::ticket::LoginKeys;
use zonescaler_shared::token::TokenKey;

/// How to run one shard process.
#[derive(Clone)]
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
    /// Serve the HTTP API and the dashboard here (the master's has the cluster's view).
    pub http: Option<SocketAddr>,
    /// Serve Prometheus metrics (`GET /metrics`) here.
    pub metrics: Option<SocketAddr>,
    /// Worker threads of the network runtime (QUIC for clients and links, HTTP); the tick runs
    /// on its own thread besides these. See [`NET_THREADS_DEFAULT`].
    pub net_threads: usize,
    /// The game: what every shard app of this process is built with.
    pub game: GameSetup,
}

impl std::fmt::Debug for ShardOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardOptions")
            .field("listen", &self.listen)
            .field("cluster", &self.cluster)
            .field("http", &self.http)
            .field("metrics", &self.metrics)
            .finish_non_exhaustive()
    }
}

impl ShardOptions {
    /// Options for a lone shard of `game` on `listen`, everything else off.
    pub fn new(config: WorldConfig, listen: SocketAddr, game: GameSetup) -> Self {
        Self {
            config,
            listen,
            cert_out: None,
            stats_every: Duration::from_secs(10),
            ready: None,
            cluster: None,
            http: None,
            metrics: None,
            net_threads: NET_THREADS_DEFAULT,
            game,
        }
    }
}

/// Network worker threads of a shard that has the machine to itself. Shards sharing a machine
/// (`zonescaler up --shards N`) run one each: idle workers of many runtimes waking one another
/// cost more in context switches than a second worker gains.
pub const NET_THREADS_DEFAULT: usize = 2;
/// The most network worker threads a shard accepts.
pub const NET_THREADS_MAX: usize = 64;
/// How long forming the cluster may take before the process gives up.
pub const FORM_TIMEOUT: Duration = Duration::from_secs(60);

/// Who this process is in the cluster.
#[derive(Clone, Debug)]
pub enum Role {
    /// Hold the master role and wait for this many shards (itself included).
    Master { expect_shards: usize },
    /// Join the running cluster through the links at these addresses, in order: the master's,
    /// or any member's (a member that does not hold the role names the master's).
    Join { members: Vec<SocketAddr> },
}

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

/// Milliseconds since the Unix epoch: the clock processes share (token expiry, time in transit).
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// This process's clock for the cluster's timing (the master's liveness, timeouts and rounds;
/// a shard's lease): monotonic, so a step of the wall clock (NTP, an operator) never declares
/// shards dead nor stretches a lease. It reads as Unix milliseconds, anchored at the first call,
/// so the master's event times are still dates; it drifts from the wall clock by the steps the
/// wall clock took since. Never compared across processes.
fn cluster_ms() -> u64 {
    static ANCHOR: std::sync::OnceLock<(Instant, u64)> = std::sync::OnceLock::new();
    let (at, unix) = ANCHOR.get_or_init(|| (Instant::now(), unix_ms()));
    unix + at.elapsed().as_millis() as u64
}

/// Run a shard until `stop` is set (or Ctrl-C / SIGTERM arrives).
pub fn run_shard(opts: ShardOptions, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    if !(1..=NET_THREADS_MAX).contains(&opts.net_threads) {
        bail!(
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
    spawn_signal_watch(&rt, stop.clone());
    let Some(mut shard) = Shard::start(&rt, opts, &stop)? else {
        return Ok(());
    };
    let ran = shard.run(&stop);
    shard.shutdown(&rt);
    ran
}

/// A running shard process: its app, its transports, its place in the cluster.
pub struct Shard {
    app: ShardApp,
    server: QuicServer,
    events: QuicEvents,
    node: Option<Node>,
    view: SharedView,
    /// The API's orders for the master, carried out on the tick thread.
    commands: ApiCommands,
    addr: SocketAddr,
    stats_every: Duration,
    metrics: Option<metrics::ShardMetrics>,
    /// The origin of the load reports' wall clock.
    started: Instant,
    /// When the lease lapsed (`cluster_ms`), while simulation waits for the master.
    lease_lapsed_at: Option<u64>,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Shard {
    /// Bind the transports, form the cluster (if any), build the app. `None`: stopped while
    /// forming.
    pub fn start(
        rt: &tokio::runtime::Runtime,
        opts: ShardOptions,
        stop: &Arc<AtomicBool>,
    ) -> anyhow::Result<Option<Self>> {
        // The game first: a setup it refuses stops the process before anything is bound.
        let protocol = ShardApp::with_game(opts.config.clone(), None, &opts.game);
        if !protocol.setup_errors().is_empty() {
            bail!("{}", protocol.setup_errors().join("; "));
        }
        let keys = login_keys(&opts.config)?;
        let identity = match (&opts.config.tls.cert_pem, &opts.config.tls.key_pem) {
            (Some(c), Some(k)) => ServerIdentity::from_pem_files(c, k)?,
            _ => ServerIdentity::self_signed(&["localhost", "127.0.0.1"])?,
        };
        let server_limits = ServerLimits {
            connections_per_address_max: opts.config.cluster.connections_per_address_max as usize,
            ..ServerLimits::default()
        };
        let (server, events) = QuicServer::bind_with(opts.listen, &identity, server_limits)
            .with_context(|| format!("cannot listen on {}", opts.listen))?;
        let addr = server.local_addr();
        let metrics = opts
            .metrics
            .map(metrics::ShardMetrics::install)
            .transpose()?;
        let metrics_addr = metrics.as_ref().map(|m| m.addr().to_string());
        let partition = test_faults()?;
        let (view, commands) = serve_http(rt, &opts, partition.clone())?;

        let node = match &opts.cluster {
            None => None,
            Some(c) => {
                let me = JoinRequest {
                    client_addr: addr.to_string(),
                    link_addr: String::new(),
                    metrics_addr: metrics_addr.clone().unwrap_or_default(),
                    http_addr: opts.http.map(|a| a.to_string()).unwrap_or_default(),
                    weight: c.weight,
                };
                match join_cluster(
                    rt,
                    c,
                    (&opts.config, &identity, partition),
                    me,
                    protocol.cluster_hash(),
                    stop,
                )? {
                    Some(n) => Some(n),
                    None => return Ok(None),
                }
            }
        };
        drop(protocol);
        announce_ready(&opts, &identity, addr)?;
        let app = build_app(&opts, node.as_ref(), keys);
        let mut shard = Self {
            app,
            server,
            events,
            node,
            view,
            commands,
            addr,
            stats_every: opts.stats_every,
            metrics,
            started: Instant::now(),
            lease_lapsed_at: None,
        };
        shard.after_forming();
        let hz = opts.config.simulation.tick_hz;
        info!(%addr, tick_hz = hz, npcs = opts.config.npc.count, world = %opts.config.world.name, "shard listening");
        println!(
            "zonescaler: shard listening on {addr} ({} Hz, {} NPCs in the world)",
            hz, opts.config.npc.count
        );
        Ok(Some(shard))
    }

    /// The master's first view (elsewhere, where the master's API is), and the link messages
    /// that came before the first tick.
    fn after_forming(&mut self) {
        if let Some(n) = self.node.as_ref() {
            let view = match n.master.as_ref() {
                Some(m) => m.view(),
                None => crate::cluster::ClusterView::pointer(
                    n.master_id(),
                    n.term(),
                    n.api_of(n.master_id()),
                ),
            };
            *self.view.lock().unwrap_or_else(PoisonError::into_inner) = Some(view);
        }
        if let Some(n) = self.node.as_mut() {
            let now = cluster_ms();
            for (from, msg) in std::mem::take(&mut n.early) {
                n.on_link_message(&mut self.app, from, msg, now);
            }
        }
    }

    /// Tick until `stop` is set; an error when this shard must stop because it lost its lease
    /// (fenced by the master, or cut off from it for too long).
    pub fn run(&mut self, stop: &AtomicBool) -> anyhow::Result<()> {
        let hz = self
            .app
            .world
            .resource::<crate::core::resources::TickClock>()
            .tick_hz;
        let me = self
            .app
            .world
            .get_resource::<crate::core::space::Space>()
            .map_or(0, |s| s.me.0);
        std::thread::sleep(tick_phase(me, Pacing::period_of(hz)));
        let mut pace = Pacing::new(hz, self.stats_every);
        let mut buf = Buffers::default();
        // Read here, on the thread that ticks: its CPU clock is the one the reports follow.
        let mut window = LoadWindow::new(hz, self.load_counters());
        let mut drained_at: Option<Instant> = None;
        while !stop.load(Ordering::Relaxed) {
            if self.app.drained() {
                // Linger a moment, owning nothing, so the master's new member list reaches the
                // others before this shard's links go down.
                let at = *drained_at.get_or_insert_with(|| {
                    info!("drained: stopping in {} ms", DRAINED_LINGER.as_millis());
                    Instant::now()
                });
                if at.elapsed() >= DRAINED_LINGER {
                    println!(
                        "zonescaler: shard drained: it owns nothing and left the cluster; stopping"
                    );
                    return Ok(());
                }
            }
            self.tick(&mut pace, &mut buf, &mut window)?;
            pace.wait();
            if pace.report_due() {
                self.report(&mut pace);
            }
        }
        Ok(())
    }

    /// One tick: drain the transports, run the schedule, hand out what it produced.
    fn tick(
        &mut self,
        pace: &mut Pacing,
        buf: &mut Buffers,
        window: &mut LoadWindow,
    ) -> anyhow::Result<()> {
        self.events
            .drain_into(limits::INBOX_EVENTS_MAX, &mut buf.client_events);
        for e in buf.client_events.drain(..) {
            self.app.push_event(e);
        }
        let now = cluster_ms();
        if let Some(n) = self.node.as_mut() {
            n.events
                .drain_into(limits::INBOX_EVENTS_MAX, &mut buf.link_events);
            for ev in buf.link_events.drain(..) {
                n.on_link_event(&mut self.app, ev, now);
            }
            n.send_acks();
            n.poll_redials(now);
            n.poll_election(&mut self.app, now);
            if n.master_acts(now) {
                self.api_orders(now);
            }
        }
        self.role_changes();
        if !self.lease_allows(now)? {
            // Still heartbeat (the master's answer renews the lease) and report what it holds
            // (frozen, its own still), but run nothing.
            if pace.heartbeat_due() {
                self.heartbeat(window, now);
            }
            if pace.audit_due() {
                self.audit(now);
            }
            return Ok(());
        }
        let mut queues = metrics::TickQueues {
            client_inbox: self.app.world.resource::<Inbox>().events.len(),
            link_inbox: self.app.world.resource::<ShardInbox>().messages.len(),
            ..Default::default()
        };
        let cpu0 = metrics::thread_cpu();
        let t0 = Instant::now();
        self.app.set_now_ms(unix_ms());
        self.app.tick();
        let wall = t0.elapsed();
        let cpu = metrics::thread_cpu().saturating_sub(cpu0);
        pace.record(wall);
        window.record_tick(wall);
        let commands = self.app.drain_outbox();
        queues.client_outbox = commands.len();
        for cmd in commands {
            self.server.dispatch(cmd);
        }
        if let Some(n) = self.node.as_mut() {
            let messages = self.app.drain_shard_outbox();
            queues.link_outbox = messages.len();
            n.send_batches(messages);
            let reqs = self.app.drain_master_requests();
            n.to_master(&mut self.app, reqs, now);
        }
        if pace.heartbeat_due() {
            self.heartbeat(window, now);
        }
        if pace.audit_due() {
            self.audit(now);
        }
        if let Some(m) = self.metrics.as_mut() {
            let node = self.node.as_ref();
            m.after_tick(&mut self.app, &self.server, node, wall, cpu, queues);
        }
        Ok(())
    }

    /// Whether this shard may simulate now (`cluster::lease`): it says so when its lease lapses
    /// and when it is renewed; an error when the lease is lost (fenced, or cut off too long).
    fn lease_allows(&mut self, now: u64) -> anyhow::Result<bool> {
        let lease = self
            .node
            .as_ref()
            .map_or(LeaseState::Holds, |n| n.lease(now));
        match lease {
            LeaseState::Holds => {
                if let Some(since) = self.lease_lapsed_at.take() {
                    let paused_ms = now.saturating_sub(since);
                    warn!(
                        paused_ms,
                        "the master answered again: lease renewed, simulating again"
                    );
                    println!("zonescaler: lease renewed after {paused_ms} ms: simulating again");
                }
                Ok(true)
            }
            LeaseState::Lapsed { .. } => {
                if self.lease_lapsed_at.is_none() {
                    error!(
                        "no answer from the master in time: lease lapsed, simulation paused \
                         (no two shards may own a cell) until it answers"
                    );
                    self.lease_lapsed_at = Some(now);
                    self.app.world.resource_mut::<ShardStats>().lease_lapses += 1;
                    println!(
                        "zonescaler: lease lapsed: simulation paused until the master answers"
                    );
                }
                Ok(false)
            }
            LeaseState::Lost(why) => bail!("lost its ownership lease: {why}; stopping"),
        }
    }

    /// Report load to the master (the app's counts and the window's measurements, the window
    /// then starting afresh); on the master, check liveness and refresh the API's view.
    fn heartbeat(&mut self, window: &mut LoadWindow, now: u64) {
        // A lone shard reports to nobody: it reads no counters and leaves its window open (its
        // histogram has a fixed size and its counts saturate).
        if self.node.is_none() {
            return;
        }
        let counters = self.load_counters();
        let mut load = self.app.load();
        window.close(counters, &mut load);
        let Some(n) = self.node.as_mut() else {
            return;
        };
        n.heartbeat(load, now);
        // Seats freed by the departures heartbeats reported go to waiting logins.
        n.admit(&mut self.app, now);
        for dead in n.master_housekeeping(&mut self.app, now) {
            error!(
                shard = dead.0,
                "shard silent for [cluster] shard_silence_ms: declared dead and fenced; its \
                 cells and replica go to its buddy (see the failover event)"
            );
        }
        if let Some(m) = n.master.as_ref() {
            *self.view.lock().unwrap_or_else(PoisonError::into_inner) = Some(m.view());
        }
    }

    /// The master role changed hands: say so, and serve the new master's view (here) or a
    /// pointer to its API (elsewhere).
    fn role_changes(&mut self) {
        let Some(n) = self.node.as_mut() else {
            return;
        };
        for change in std::mem::take(&mut n.role_changes) {
            let view = if change.mine {
                println!(
                    "zonescaler: this shard ({}) holds the master role now (term {}): the \
                     cluster API and the player directory are served here",
                    n.me.0, change.term
                );
                n.master.as_ref().map(Master::view)
            } else {
                let api = n.api_of(change.master);
                println!(
                    "zonescaler: shard {} holds the master role now (term {}); its API: {}",
                    change.master.0,
                    change.term,
                    if api.is_empty() { "none" } else { &api }
                );
                Some(crate::cluster::ClusterView::pointer(
                    change.master,
                    change.term,
                    api,
                ))
            };
            *self.view.lock().unwrap_or_else(PoisonError::into_inner) = view;
        }
    }

    /// Report what this shard owns to the master's ownership audit, timed by the wall clock
    /// the ticks use (`unix_ms`: comparable across the cluster's processes, unlike `now`).
    fn audit(&mut self, now: u64) {
        let Some(n) = self.node.as_mut() else {
            return;
        };
        let report = self.app.ownership_report(unix_ms());
        n.audit(&report, now);
    }

    /// Carry out the API's orders (on the master), answering each.
    fn api_orders(&mut self, now: u64) {
        let orders: Vec<ApiCommand> = {
            let mut q = self.commands.lock().unwrap_or_else(PoisonError::into_inner);
            q.drain(..).collect()
        };
        if orders.is_empty() {
            return;
        }
        let Some(m) = self.node.as_mut().and_then(|n| n.master.as_mut()) else {
            return;
        };
        for order in orders {
            match order {
                ApiCommand::Drain { shard, reply } => {
                    let answer = m.drain(ShardId(shard), now);
                    match &answer {
                        Ok(()) => info!(shard, "drain ordered through the API"),
                        Err(e) => warn!(shard, error = %e, "drain refused"),
                    }
                    // The caller may have given up waiting.
                    let _ = reply.send(answer);
                }
            }
        }
        *self.view.lock().unwrap_or_else(PoisonError::into_inner) = Some(m.view());
    }

    /// The process's counters now, for the load reports. Call on the tick thread.
    fn load_counters(&self) -> LoadCounters {
        let links = self.node.as_ref().map(|n| n.links.stats());
        read_counters(self.started.elapsed(), &self.server.stats(), links.as_ref())
    }

    fn report(&mut self, pace: &mut Pacing) {
        let s = self.app.stats();
        let paths = self.server.path_summary();
        info!(
            tick = self.app.tick_number(),
            clients = s.clients,
            entities = s.entities,
            tick_ms_p50 = pace.tick_ms(0.5),
            tick_ms_p99 = pace.tick_ms(0.99),
            snapshot_kib_per_s = pace.snapshot_kib_per_s(s.snapshot_bytes),
            skipped_ahead = pace.skips,
            snapshots_paced = s.snapshots_paced,
            path_rtt_ms_p50 = paths.rtt_ms_p50,
            path_rtt_ms_max = paths.rtt_ms_max,
            path_cwnd_mean = paths.cwnd_sum / paths.connections.max(1) as u64,
            path_lost_packets = paths.lost_packets,
            path_congestion_events = paths.congestion_events,
            datagrams_queued_bytes = paths.queued_bytes,
            datagrams_queued_max = paths.queued_max,
            closed = ?s.closed,
            "shard stats"
        );
        pace.reported(s.snapshot_bytes);
    }

    /// Close every connection and link politely.
    pub fn shutdown(self, rt: &tokio::runtime::Runtime) {
        info!(
            "shard stopping: closing {} connections",
            self.server.connections()
        );
        self.server
            .close_all(ErrorCode::ShuttingDown, "shard is shutting down");
        rt.block_on(self.server.shutdown());
        if let Some(n) = &self.node {
            rt.block_on(n.links.shutdown());
        }
        println!(
            "zonescaler: shard on {} stopped after {} ticks",
            self.addr,
            self.app.tick_number()
        );
    }
}

/// The counters a load report differences, read now: `at` on the runtime's monotonic clock,
/// the calling thread's CPU clock (so call it on the tick thread), the process's CPU clock and
/// resident memory (as `/metrics` reads them), and the transports' payload bytes sent.
fn read_counters(at: Duration, net: &NetStats, links: Option<&LinkStats>) -> LoadCounters {
    LoadCounters {
        at,
        tick_thread_cpu: metrics::thread_cpu(),
        process_cpu: metrics::process_cpu().unwrap_or_default(),
        client_bytes_out: net.datagram_bytes_out + net.control_bytes_out,
        link_bytes_out: links.map_or(0, |l| l.frame_bytes_out),
        rss_bytes: metrics::resident_bytes().unwrap_or(0),
    }
}

/// Test only: whether `ZONESCALER_TEST_FAULTS=1` enables the fault switch of this shard's links
/// (`POST /api/debug/partition`, see `http`): the switch, or `None` (not set). Any other value
/// is an error, so a typo never leaves a switch on, or off, by surprise.
fn test_faults() -> anyhow::Result<Option<PartitionSwitch>> {
    match std::env::var(TEST_FAULTS_ENV).as_deref() {
        Err(_) | Ok("" | "0") => Ok(None),
        Ok("1") => {
            warn!(
                "{TEST_FAULTS_ENV}=1: test faults enabled; POST /api/debug/partition cuts this \
                 shard's links (never set this in production)"
            );
            println!("zonescaler: test faults enabled ({TEST_FAULTS_ENV}=1): not for production");
            Ok(Some(PartitionSwitch::default()))
        }
        Ok(other) => bail!("{TEST_FAULTS_ENV} must be 1 or unset (got {other:?})"),
    }
}

/// The environment variable that enables test faults ([`test_faults`]).
pub const TEST_FAULTS_ENV: &str = "ZONESCALER_TEST_FAULTS";

/// Serve the dashboard and the API on `--http`, if asked: the view the tick thread fills.
/// `partition`: the test-only fault switch, served too when enabled.
fn serve_http(
    rt: &tokio::runtime::Runtime,
    opts: &ShardOptions,
    partition: Option<PartitionSwitch>,
) -> anyhow::Result<(SharedView, ApiCommands)> {
    let view: SharedView = Arc::new(Mutex::new(None));
    let commands: ApiCommands = Arc::default();
    if let Some(addr) = opts.http {
        let token = opts
            .cluster
            .as_ref()
            .map(|c| zonescaler_shared::token::api_token(&c.secret))
            .unwrap_or_default();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(addr))
            .with_context(|| format!("cannot serve HTTP on {addr}"))?;
        println!(
            "zonescaler: dashboard on http://{0}/ (HTTP API: http://{0}/api/cluster)",
            listener.local_addr()?
        );
        rt.spawn(http::serve_http(
            listener,
            view.clone(),
            commands.clone(),
            token,
            partition,
        ));
    }
    Ok((view, commands))
}

/// The login keys of `config`, loaded (none: logins without tickets, which the shard says).
fn login_keys(config: &WorldConfig) -> anyhow::Result<LoginKeys> {
    match &config.login.keys {
        Some(path) => {
            let keys = LoginKeys::load(path)?;
            info!(keys = ?keys.ids().collect::<Vec<_>>(), "logins need a ticket signed by these keys");
            Ok(keys)
        }
        None => {
            warn!(
                "no login keys configured ([login] keys): anyone may log in under any name; \
                 fine for development, never for players"
            );
            Ok(LoginKeys::default())
        }
    }
}

/// The app of this process: the game on its place in the cluster, with its keys and directory.
fn build_app(opts: &ShardOptions, node: Option<&Node>, keys: LoginKeys) -> ShardApp {
    let placement = node.map(|n| (n.me, n.map.clone()));
    let mut app = ShardApp::with_game(opts.config.clone(), placement, &opts.game);
    app.world.insert_resource(LoginPolicy {
        keys,
        duplicate: opts.config.login.duplicate,
    });
    if let (Some(n), Some(c)) = (node, &opts.cluster) {
        app.world.insert_resource(ClusterDirectory {
            key: TokenKey::new(&c.secret),
            resume: zonescaler_shared::resume::ResumeKeys::new(&c.secret),
            client_addrs: n.client_addrs(),
        });
        app.world.insert_resource(ClusterMode(true));
    }
    app.start();
    app
}

/// Write the certificate (a launcher waits for the file) and tell a waiting caller the address.
fn announce_ready(
    opts: &ShardOptions,
    identity: &ServerIdentity,
    addr: SocketAddr,
) -> anyhow::Result<()> {
    // Written once the shard is ready to serve (in a cluster: once the cluster formed).
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
    Ok(())
}

/// Bind the link endpoint and form the cluster. `None`: stopped while forming.
fn join_cluster(
    rt: &tokio::runtime::Runtime,
    c: &ClusterOptions,
    (config, identity, partition): (&WorldConfig, &ServerIdentity, Option<PartitionSwitch>),
    mut me: JoinRequest,
    cluster_hash: u64,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<Option<Node>> {
    let auth = ClusterAuth::new(&c.secret, cluster_hash).context("bad cluster secret")?;
    let options = LinkOptions {
        partition,
        ..LinkOptions::default()
    };
    let (links, mut events) = ClusterLinks::bind_with(c.link_listen, identity, auth, options)
        .with_context(|| format!("cannot listen for shard links on {}", c.link_listen))?;
    me.link_addr = links.local_addr().to_string();
    let grid = CellGrid::from_config(config);
    let duplicate = config.login.duplicate;
    let move_timeout_ms = config.cluster.cell_move_timeout_ms;
    let silence_ms = config.cluster.shard_silence_ms;
    let master_silence_ms = config.cluster.master_silence_ms;
    let balancer = Balancer::new(config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let round_ms = config.balancer.round_ms;
    let (cap, queue_max) = (
        config.cluster.clients_per_shard_max,
        config.cluster.login_queue_max,
    );
    // The master that forms the cluster and any successor are configured alike.
    let settings: MasterSettings = Arc::new(move |m: Master| {
        m.with_duplicate_rule(duplicate)
            .with_admission(cap, queue_max)
            .with_move_timeout(move_timeout_ms)
            .with_silence(silence_ms)
            .with_master_silence(master_silence_ms)
            .with_balancer(balancer.clone(), round_ms)
    });
    let formed = match &c.role {
        Role::Master { expect_shards } => {
            let s = settings.clone();
            let (forming, acts) = Forming::master(grid, me, *expect_shards, |m| s(m), cluster_ms());
            rt.block_on(async {
                tokio::select! {
                    f = form(forming, acts, &links, &mut events) => Some(f),
                    _ = wait_for_stop(stop.clone()) => None,
                }
            })
        }
        Role::Join { members } => rt.block_on(async {
            tokio::select! {
                f = join_through(grid, me, members, &links, &mut events, Duration::from_millis(4 * master_silence_ms)) => Some(f),
                _ = wait_for_stop(stop.clone()) => None,
            }
        }),
    };
    match formed {
        Some(f) => {
            let now = cluster_ms();
            let node =
                Node::new(f?, links, events, now).with_succession(settings, master_silence_ms, now);
            Ok(Some(node))
        }
        None => Ok(None),
    }
}

/// Join the running cluster through `members`' link addresses, in order, following a member's
/// pointer to the master (`NotMaster`); the last error when none let this shard in.
///
/// While the cluster is electing a master (the members still point to the one that died at
/// this process's own address, a restarted master's case, or the master has no majority behind
/// it yet) it tries them all again every half second for up to `patience`.
async fn join_through(
    grid: CellGrid,
    me: JoinRequest,
    members: &[SocketAddr],
    links: &ClusterLinks,
    events: &mut LinkEvents,
    patience: Duration,
) -> anyhow::Result<Formed> {
    let until = Instant::now() + patience;
    loop {
        let (result, electing) = join_round(grid, me.clone(), members, links, events).await;
        match result {
            Err(e) if electing && Instant::now() < until => {
                println!(
                    "zonescaler: the cluster is electing a master; trying again shortly ({e:#})"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            result => return result,
        }
    }
}

/// One pass of [`join_through`] over `members`: the result, and whether a member said the
/// cluster is between masters.
async fn join_round(
    grid: CellGrid,
    me: JoinRequest,
    members: &[SocketAddr],
    links: &ClusterLinks,
    events: &mut LinkEvents,
) -> (anyhow::Result<Formed>, bool) {
    let mut tries: std::collections::VecDeque<String> =
        members.iter().map(ToString::to_string).collect();
    let mut last = anyhow::anyhow!("no address to join through (--join)");
    let mut electing = false;
    // Pointers followed at most: a cluster in the middle of an election may point around.
    let mut redirects = 8;
    while let Some(addr) = tries.pop_front() {
        let (forming, acts) = Forming::joiner(grid, me.clone(), addr.clone());
        match form(forming, acts, links, events).await {
            Ok(f) => return (Ok(f), false),
            Err(e) => {
                let not_master = match e.downcast_ref::<FormError>() {
                    Some(FormError::NotMaster(master)) => Some(master.clone()),
                    _ => None,
                };
                electing |= not_master.as_ref() == Some(&me.link_addr)
                    || format!("{e:#}").contains(crate::cluster::node::NO_MAJORITY);
                if let Some(master) = not_master
                    && redirects > 0
                    && master != me.link_addr
                {
                    redirects -= 1;
                    println!(
                        "zonescaler: {addr} does not hold the master role; joining at {master}"
                    );
                    tries.push_front(master);
                } else {
                    println!("zonescaler: cannot join through {addr}: {e:#}");
                }
                last = e;
            }
        }
    }
    (Err(last), electing)
}

/// Drive [`Forming`] over the links until the cluster formed (or failed, or timed out).
async fn form(
    mut forming: Forming,
    mut acts: Vec<FormAction>,
    links: &ClusterLinks,
    events: &mut LinkEvents,
) -> anyhow::Result<Formed> {
    let deadline = Instant::now() + FORM_TIMEOUT;
    loop {
        for act in acts.drain(..) {
            match act {
                FormAction::Send(link, msg) => {
                    links.send(link, bytes::Bytes::from(codec::encode(&msg)))
                }
                FormAction::Dial(shard, addr) => {
                    let addr: SocketAddr = addr.parse().with_context(|| {
                        format!("shard {} has a bad link address {addr}", shard.0)
                    })?;
                    forming.dialed(shard, links.dial(addr));
                }
                FormAction::Close(link, reason) => links.close(link, &reason),
                FormAction::Say(line) => println!("zonescaler: {line}"),
            }
        }
        if forming.is_formed() {
            return forming
                .finish(cluster_ms())
                .context("the cluster formed but could not be taken");
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = match tokio::time::timeout(left, events.recv()).await {
            Ok(Some(e)) => e,
            Ok(None) => bail!("the link driver stopped"),
            Err(_) => bail!("the cluster did not form within {FORM_TIMEOUT:?}"),
        };
        let ev = match ev {
            LinkEvent::Up { link, .. } => FormEvent::Up(link),
            LinkEvent::Failed { link, reason, .. } => FormEvent::Failed(link, reason),
            LinkEvent::Down { link, reason, .. } => FormEvent::Down(link, reason),
            LinkEvent::Message { link, bytes } => FormEvent::Message(
                link,
                codec::decode_link_message(&bytes)
                    .with_context(|| format!("bad link message on {link}"))?,
            ),
        };
        acts = forming.on_event(ev, cluster_ms())?;
    }
}

/// Reused buffers of the tick loop.
#[derive(Default)]
struct Buffers {
    client_events: Vec<zonescaler_net::NetEvent>,
    link_events: Vec<LinkEvent>,
}

/// The tick loop's clock: pacing, skips, the tick-time histogram of the log's report, when to
/// heartbeat and report.
struct Pacing {
    period: Duration,
    next: Instant,
    tick_us: Histogram<u64>,
    last_heartbeat: Instant,
    last_audit: Instant,
    last_report: Instant,
    stats_every: Duration,
    last_bytes: u64,
    /// Times the loop fell more than five periods behind and skipped ahead (since the start;
    /// the heartbeats count ticks over the period per window instead).
    skips: u64,
}

/// When in its period shard `id` ticks, after the others: the fractional part of `id` times the
/// golden ratio's inverse, which spreads any number of ids evenly over the period.
///
/// Shards that formed together started their tick loops within milliseconds of each other and
/// ticked in phase. A redirected client's `Hello` reaches the target just after the source's
/// tick, so it then waited nearly a whole period for the target's next one: the `Welcome` at
/// about 30 ms p50 of a 33 ms tick (300 border bots, 4 shards). Shards on one machine in phase
/// also all want a core at the same instant.
fn tick_phase(id: u16, period: Duration) -> Duration {
    const INVERSE_GOLDEN_RATIO: f64 = 0.618_033_988_749_895;
    period.mul_f64((f64::from(id) * INVERSE_GOLDEN_RATIO).fract())
}

impl Pacing {
    fn period_of(hz: u32) -> Duration {
        Duration::from_secs_f64(1.0 / f64::from(hz.max(1)))
    }

    fn new(hz: u32, stats_every: Duration) -> Self {
        let now = Instant::now();
        Self {
            period: Self::period_of(hz),
            next: now,
            // 1 µs .. 10 s at 3 significant digits: static bounds, cannot fail.
            tick_us: Histogram::<u64>::new_with_bounds(1, 10_000_000, 3)
                .expect("invariant: valid static bounds"),
            last_heartbeat: now,
            last_audit: now,
            last_report: now,
            stats_every,
            last_bytes: 0,
            skips: 0,
        }
    }

    fn record(&mut self, wall: Duration) {
        self.tick_us
            .saturating_record(wall.as_micros().max(1) as u64);
    }

    fn tick_ms(&self, q: f64) -> f64 {
        self.tick_us.value_at_quantile(q) as f64 / 1000.0
    }

    /// Sleep until the next tick is due; skip ahead rather than spiral when far behind.
    fn wait(&mut self) {
        self.next += self.period;
        let now = Instant::now();
        if now > self.next + self.period * 5 {
            self.skips += 1;
            self.next = now;
        } else if self.next > now {
            std::thread::sleep(self.next - now);
        }
    }

    fn heartbeat_due(&mut self) -> bool {
        let due = self.last_heartbeat.elapsed() >= Duration::from_millis(limits::HEARTBEAT_MS);
        if due {
            self.last_heartbeat = Instant::now();
        }
        due
    }

    fn audit_due(&mut self) -> bool {
        let due = self.last_audit.elapsed() >= Duration::from_millis(limits::AUDIT_MS);
        if due {
            self.last_audit = Instant::now();
        }
        due
    }

    fn report_due(&self) -> bool {
        self.last_report.elapsed() >= self.stats_every
    }

    fn snapshot_kib_per_s(&self, bytes: u64) -> f64 {
        (bytes - self.last_bytes) as f64 / 1024.0 / self.last_report.elapsed().as_secs_f64()
    }

    /// After a report: the next one covers the ticks from now on (the heartbeats keep their
    /// own, shorter window: `LoadWindow`).
    fn reported(&mut self, bytes: u64) {
        self.last_bytes = bytes;
        self.tick_us.reset();
        self.last_report = Instant::now();
    }
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

/// The shard id a process ended up with (for logs of callers that embed a shard).
pub fn shard_of(shard: &Shard) -> ShardId {
    shard.app.shard_id()
}

#[cfg(test)]
mod tests {
    use super::*;
    use zonescaler_shared::protocol::ShardLoad;

    /// A window over `work` done on a fresh thread (as a shard's tick thread is), measured with
    /// the counters the runtime reads.
    fn window_over(work: impl FnOnce() + Send + 'static) -> ShardLoad {
        std::thread::spawn(move || {
            let t0 = Instant::now();
            let read = || read_counters(t0.elapsed(), &NetStats::default(), None);
            let mut window = LoadWindow::new(30, read());
            work();
            let mut load = ShardLoad::default();
            window.close(read(), &mut load);
            load
        })
        .join()
        .expect("the measured thread does not panic")
    }

    #[cfg(unix)]
    #[test]
    fn shards_tick_spread_over_the_period_not_in_phase() {
        let period = Duration::from_micros(33_333);
        for n in [2u16, 4, 8] {
            let mut phases: Vec<Duration> = (0..n).map(|id| tick_phase(id, period)).collect();
            assert!(phases.iter().all(|p| *p < period), "{phases:?}");
            phases.sort();
            // Gaps between neighbours in phase, around the circle.
            let gaps = phases
                .windows(2)
                .map(|w| w[1] - w[0])
                .chain([period + phases[0] - phases[n as usize - 1]]);
            let smallest = gaps.min().expect("n >= 2");
            assert!(
                smallest >= period / (2 * u32::from(n)),
                "{n} shards: no two within half an even share of the period: {phases:?}"
            );
        }
        assert_eq!(tick_phase(0, period), Duration::ZERO);
    }

    #[test]
    fn the_tick_threads_cpu_share_follows_its_work_not_its_wall_time() {
        let burn = Duration::from_millis(40);
        let busy = window_over(move || {
            let t0 = metrics::thread_cpu();
            while metrics::thread_cpu() - t0 < burn {
                std::hint::spin_loop();
            }
        });
        let idle = window_over(|| std::thread::sleep(Duration::from_millis(40)));
        assert!(
            busy.tick_cpu_ms >= 40.0 && busy.window_ms >= 40,
            "the burn is counted: {busy:?}"
        );
        // On a machine shared with other work the burner may wait for a core, so its share of
        // the wall clock can be well under 1; it is never near an idle thread's.
        assert!(
            busy.tick_cpu_share > 0.2 && busy.tick_cpu_share <= 1.0,
            "a thread that only computes uses a large share of its wall time: {busy:?}"
        );
        assert!(
            idle.tick_cpu_ms < 5.0 && idle.tick_cpu_share < 0.1,
            "a sleeping thread uses next to nothing: {idle:?}"
        );
        assert!(
            busy.process_cpu_share >= busy.tick_cpu_share * 0.9,
            "the process's CPU includes its tick thread's: {busy:?}"
        );
        assert!(
            busy.rss_bytes > 1 << 20,
            "resident memory is read: {busy:?}"
        );
    }
}
