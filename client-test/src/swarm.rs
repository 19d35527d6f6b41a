//! The QUIC swarm: thousands of [`BotClient`]s over real connections to a cluster of shards.
//!
//! Bots ramp up evenly over `ramp`, each runs until the run's deadline, and every outcome
//! (including connection failures and the shard's stated reason for a close) lands in the report.
//!
//! A bot follows its avatar from shard to shard. On a `Redirect` it connects to the new shard
//! while the old connection keeps carrying snapshots and inputs (the old shard forwards them), and
//! it switches only once the new shard has welcomed it, so a handoff costs the player no frozen
//! frames. A login can be redirected too (the spawn point belongs to another shard); it is
//! followed the same way before the first `Welcome`.
//!
//! Given the account service's key ([`SwarmConfig::login`]), the swarm acts as that service:
//! every bot logs in with a ticket for its own account (`bot-N`), naming where its scenario
//! wants it to start. This module is the only one of the crate that reads the wall clock, for
//! the tickets' expiry.

use crate::core::{BotClient, BotConfig, BotError, Scenario, border_walks};
use crate::game::BotGame;
use crate::hotspot::{HOTSPOT_RADIUS_DEFAULT_M, Hotspot};
use crate::report::{BotOutcome, HotspotSummary, Report, RunSummary};
use crate::timeline::Timeline;
use anyhow::{anyhow, bail};
use glam::Vec3;
use std::collections::BTreeMap;
use std::future::Future;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, oneshot};
use zonescaler_net::quic::{self, ClientSession, NetError};
use zonescaler_net::tls::ClientTrust;
use zonescaler_shared::protocol::{
    CellMapView, ErrorCode, Prepare, Redirect, ServerControl, Welcome,
};
use zonescaler_shared::rng::Rng;
use zonescaler_shared::ticket::TicketSigner;
use zonescaler_shared::{codec, limits};

/// How long a connection attempt may take, and then again the wait for the shard's first answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest a redirect may take to welcome the bot (connect, `Hello`, `Welcome`): a few hundred
/// milliseconds on a loaded machine, so one this late went to a shard that died (its avatar
/// was handed there just before): the bot gives up on it, goes silent on the old shard too
/// (which sent it on), and comes back with its resume ticket.
const HOP_TIMEOUT: Duration = Duration::from_secs(3);
/// Redirects followed in a row without a `Welcome` in between. More means the shards keep
/// pointing at each other (or the avatar outruns its client): give up rather than loop.
const REDIRECTS_IN_A_ROW_MAX: u32 = 4;

/// How long a connection opened on a `Prepare` waits for its redirect before the bot closes it:
/// a handoff is answered within the shards' handoff timeout (2 s by default), and the shard
/// closes a connection without `Hello` after `limits::HELLO_TIMEOUT_MS` (5 s), which the bot
/// would report as an error.
const PREPARED_KEEP: Duration = Duration::from_millis(3_000);
const _: () = assert!(PREPARED_KEEP.as_millis() < limits::HELLO_TIMEOUT_MS as u128);
/// How long the scout of a border run may take to log in and receive the cell map.
const SCOUT_TIMEOUT: Duration = Duration::from_secs(10);
/// The prefix of the bots' account names unless a run names another (`--accounts`).
pub const ACCOUNT_PREFIX_DEFAULT: &str = "bot";
/// The scout's account with the default prefix: `bot-` like every account the swarm logs in, so
/// an operator can tell them from players, and not a name a bot of the run holds (`scout`).
pub const SCOUT_ACCOUNT: &str = "bot-scout";

/// Whether `prefix` makes account names a shard accepts for every one of `bots` bots and the
/// scout: not empty, printable ASCII without spaces, and short enough for the longest name.
pub fn check_account_prefix(prefix: &str, bots: usize) -> Result<(), String> {
    if prefix.is_empty() {
        return Err("the prefix is empty".into());
    }
    if !prefix.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("use printable ASCII without spaces".into());
    }
    let longest = format!("-{}", bots.saturating_sub(1))
        .len()
        .max("-scout".len());
    let max = limits::PLAYER_NAME_BYTES_MAX;
    if prefix.len() + longest > max {
        return Err(format!(
            "too long: with {bots} bots the names need at most {} bytes of prefix (names are at most {max} bytes)",
            max.saturating_sub(longest)
        ));
    }
    Ok(())
}
/// How long a bot's ticket stays valid after the last bot of the ramp is due to log in. Tickets
/// are checked only at login (a handoff carries a redirect token instead), so this only has to
/// outlast the ramp and the clock skew between this machine and the shards.
pub const BOT_TICKET_TTL_MS: u64 = 4 * 3_600_000;
/// Control messages (game commands, chat) waiting to be written on one connection. A shard that
/// does not read its control stream holds the writes up; past this the bot drops what its brain
/// sends (counted as `control_send_queue_full`) rather than buffer without bound.
const CONTROL_SEND_QUEUE_MAX: usize = 64;

/// How a swarm runs.
#[derive(Clone, Debug)]
pub struct SwarmConfig {
    /// The shard every bot logs in at; redirects take them to the others.
    pub addr: SocketAddr,
    /// TLS name every shard is asked for (one certificate, or `--insecure`, covers the cluster).
    pub server_name: String,
    pub bots: usize,
    pub duration: Duration,
    pub ramp: Duration,
    pub scenario: Scenario,
    pub trust: ClientTrust,
    pub seed: u64,
    /// Inputs per second per bot (the shard's tick rate is a good choice).
    pub input_hz: u32,
    /// Open the connection a redirect may need when a shard says it may come (`Prepare`), so
    /// the redirect finds its QUIC handshake done. Off: bots connect on the redirect, as a
    /// client that ignores `Prepare` does.
    pub preconnect: bool,
    /// Bots per QUIC endpoint (UDP socket): see [`BOTS_PER_ENDPOINT`].
    pub bots_per_endpoint: usize,
    /// Show a progress bar (or, without a terminal, a line every few seconds).
    pub progress: bool,
    /// The game the bots play: its client hash, command ids and brain.
    pub game: BotGame,
    /// The game's account service key: with it every bot logs in with a ticket it minted for
    /// itself; without it bots log in without tickets, which only a server without login keys
    /// accepts.
    pub login: Option<Arc<TicketSigner>>,
    /// Account names are `{accounts}-0`, `{accounts}-1`, … (see [`check_account_prefix`]).
    pub accounts: String,
    /// Where a `crowd` gathers, or the midpoint of a `migrate` hot spot's path (x, z): the
    /// world's centre when `None`.
    pub hotspot: Option<(f32, f32)>,
    /// The crowd's radius in metres.
    pub hotspot_radius_m: f32,
}

impl SwarmConfig {
    /// A run of the demo game against `addr` with the command line's defaults: 10 wandering
    /// bots for 30 s, 30 inputs/s, no tickets, no progress display.
    pub fn new(addr: SocketAddr, trust: ClientTrust) -> Self {
        Self {
            addr,
            server_name: "localhost".into(),
            bots: 10,
            duration: Duration::from_secs(30),
            ramp: Duration::from_millis(20),
            scenario: Scenario::Wander,
            trust,
            seed: 1,
            input_hz: 30,
            preconnect: true,
            bots_per_endpoint: BOTS_PER_ENDPOINT,
            progress: false,
            game: BotGame::demo(),
            login: None,
            accounts: ACCOUNT_PREFIX_DEFAULT.into(),
            hotspot: None,
            hotspot_radius_m: HOTSPOT_RADIUS_DEFAULT_M,
        }
    }
}

/// What every bot task of a run shares.
#[derive(Debug)]
struct Run {
    addr: SocketAddr,
    server_name: String,
    game: BotGame,
    start: Instant,
    deadline: Instant,
    input_hz: u32,
    preconnect: bool,
    live: Live,
    /// The seconds bots already handed over (see [`Timeline::drain_before`]).
    timeline: Mutex<Timeline>,
}

/// Live counters shown while the swarm runs.
#[derive(Debug, Default)]
struct Live {
    connected: AtomicUsize,
    failed: AtomicUsize,
    snapshots: AtomicU64,
    handoffs: AtomicU64,
}

/// Bots sharing one QUIC endpoint (one UDP socket, one driver task). quinn's endpoint driver
/// reads its socket for at most 50 µs per poll (`RECV_TIME_BOUND`), then queues itself behind
/// every other task of the runtime; on a busy runtime (hundreds of bots and their connections
/// on two cores) that caps what one endpoint can take in per second. At 128 bots an endpoint
/// (600 crowd bots: 5 endpoints, about 27,000 datagrams a second in all) the sockets fell
/// behind: for seconds at a time the shards measured a path RTT of 200–500 ms to every bot at
/// once while the bots' own runtime lagged only 15–40 ms, and snapshots were paced. At 16 a
/// socket (38 endpoints) the same run's path RTT stayed at 3–30 ms (2026-12-01, benches/README).
pub const BOTS_PER_ENDPOINT: usize = 16;
/// At most this many endpoints (sockets) however many bots.
pub const ENDPOINTS_MAX: usize = 256;

/// Run the swarm to completion and build its report.
///
/// A [`Scenario::Border`] run first logs one scout in to read the cell map, and fails if the map
/// has no border between two shards: there would be nothing to measure. A crowd
/// ([`Scenario::gathers`]) run's scout reads the world's bounds and speed from its `Welcome`, to
/// place the hot spot, and fails if the hot spot is outside the world.
pub async fn run(cfg: SwarmConfig) -> anyhow::Result<Report> {
    let endpoints_n = cfg
        .bots
        .div_ceil(cfg.bots_per_endpoint.max(1))
        .clamp(1, ENDPOINTS_MAX);
    let mut endpoints = Vec::with_capacity(endpoints_n);
    for _ in 0..endpoints_n {
        endpoints.push(quic::client_endpoint_for(&cfg.trust, cfg.addr)?);
    }
    let ticket_expires_ms = unix_ms_now()
        .saturating_add(u64::try_from(cfg.ramp.as_millis()).unwrap_or(u64::MAX))
        .saturating_add(BOT_TICKET_TTL_MS);
    let (mut walks, mut hotspot) = (Vec::new(), None);
    if cfg.scenario == Scenario::Border || cfg.scenario.gathers() {
        let (welcome, map) = scout(&endpoints[0], &cfg, ticket_expires_ms).await?;
        if cfg.scenario == Scenario::Border {
            walks = border_walks_of(&map, &cfg)?;
        } else {
            hotspot = Some(hotspot_of(&welcome, &cfg)?);
        }
    }
    let start = Instant::now();
    let run = Arc::new(Run {
        addr: cfg.addr,
        server_name: cfg.server_name.clone(),
        game: cfg.game.clone(),
        start,
        deadline: start + cfg.ramp + cfg.duration,
        input_hz: cfg.input_hz,
        preconnect: cfg.preconnect,
        live: Live::default(),
        timeline: Mutex::new(Timeline::default()),
    });
    let tasks = spawn_bots(&cfg, &endpoints, (&walks, hotspot), &run, ticket_expires_ms);
    let progress = cfg.progress.then(|| spawn_progress(cfg.bots, run.clone()));
    let (probe_stop, probe_stopped) = oneshot::channel();
    let probe = tokio::spawn(lag_probe(run.start, probe_stopped));
    let (outcomes, extra) = join_bots(tasks).await;
    if let Some(p) = progress {
        p.abort();
    }
    let _ = probe_stop.send(());
    let (lag_timeline, lag_us) = probe.await.unwrap_or_default();
    for e in &endpoints {
        e.close(0u32.into(), b"done");
    }
    for e in &endpoints {
        let _ = tokio::time::timeout(Duration::from_secs(2), e.wait_idle()).await;
    }
    let mut timeline =
        std::mem::take(&mut *run.timeline.lock().unwrap_or_else(PoisonError::into_inner));
    timeline.merge(&lag_timeline);
    let summary = RunSummary {
        game: cfg.game.name.clone(),
        scenario: cfg.scenario.name().into(),
        duration_s: cfg.duration.as_secs_f64(),
        bots_requested: cfg.bots,
        errors: extra,
        timeline,
        hotspot: hotspot.map(|h| HotspotSummary::of(&h)),
        runtime_lag_us: lag_us,
    };
    Ok(Report::build(&summary, &outcomes))
}

/// A border run's walks: every bot gets a walk across a border of the map the scout read. An
/// error if the map is empty or has no border between two shards.
fn border_walks_of(map: &CellMapView, cfg: &SwarmConfig) -> anyhow::Result<Vec<(Vec3, Vec3)>> {
    if map.leaves.is_empty() {
        bail!(
            "the shard sent an empty cell map (shards leave out maps of more than {} \
             leaves), so no border walks can be chosen",
            zonescaler_shared::limits::CELL_MAP_LEAVES_TO_CLIENTS_MAX
        );
    }
    let walks = border_walks(map, cfg.bots, &mut Rng::new(cfg.seed));
    if walks.is_empty() {
        bail!(
            "the cell map has no border between shards: run against a cluster with more \
             than one shard, e.g. `zonescaler up --shards 4`"
        );
    }
    Ok(walks)
}

/// A crowd run's hot spot in the world the scout was welcomed to, travelling over the whole run
/// (ramp and duration) for `migrate`.
fn hotspot_of(welcome: &Welcome, cfg: &SwarmConfig) -> anyhow::Result<Hotspot> {
    let (centre, radius, world) = (cfg.hotspot, cfg.hotspot_radius_m, welcome.bounds);
    let hotspot = if cfg.scenario == Scenario::Migrate {
        let run_us = u64::try_from((cfg.ramp + cfg.duration).as_micros()).unwrap_or(u64::MAX);
        let speed = welcome.max_speed_mps;
        Hotspot::migrate(centre, radius, world, cfg.seed, run_us, speed)
    } else {
        Hotspot::crowd(centre, radius, world)
    };
    Ok(hotspot?)
}

/// One task per bot, each waiting for its place in the ramp before it connects.
fn spawn_bots(
    cfg: &SwarmConfig,
    endpoints: &[quinn::Endpoint],
    (walks, hotspot): (&[(Vec3, Vec3)], Option<Hotspot>),
    run: &Arc<Run>,
    ticket_expires_ms: u64,
) -> Vec<tokio::task::JoinHandle<BotOutcome>> {
    // Each border bot starts somewhere along its walk, so the swarm's crossings are spread over
    // the walk's period (a real crowd does not cross in step). The ramp alone would leave them
    // in waves: 500 bots ramped over 1 s on a 2.5 s walk crossed within the same second.
    let mut phases = Rng::new(cfg.seed ^ 0x5048_4153_4553);
    let mut tasks = Vec::with_capacity(cfg.bots);
    for i in 0..cfg.bots {
        let endpoint = endpoints[i % endpoints.len()].clone();
        let offset = cfg.ramp.mul_f64(i as f64 / cfg.bots.max(1) as f64);
        let at = run.start + offset;
        let mut bot_cfg = BotConfig::new(
            format!("{}-{i}", cfg.accounts),
            cfg.scenario,
            cfg.seed.wrapping_add(i as u64 * 7919),
        );
        bot_cfg.border = walks.get(i).copied();
        bot_cfg.border_start = phases.next_f32();
        bot_cfg.hotspot = hotspot;
        bot_cfg.login_at_us = u64::try_from(offset.as_micros()).unwrap_or(u64::MAX);
        if let Some(signer) = &cfg.login {
            bot_cfg.sign_ticket(signer, ticket_expires_ms);
        }
        let run = run.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            run_bot(endpoint, bot_cfg, &run).await
        }));
    }
    tasks
}

/// Every bot's outcome; a task that panicked counts as a bot that never connected, its panic
/// among the run's errors.
async fn join_bots(
    tasks: Vec<tokio::task::JoinHandle<BotOutcome>>,
) -> (Vec<BotOutcome>, BTreeMap<String, u64>) {
    let mut outcomes = Vec::with_capacity(tasks.len());
    let mut extra = BTreeMap::new();
    for t in tasks {
        match t.await {
            Ok(o) => outcomes.push(o),
            Err(e) => {
                *extra.entry(format!("bot_task_failed: {e}")).or_insert(0) += 1;
                outcomes.push(BotOutcome {
                    metrics: Default::default(),
                    active_s: 0.0,
                    connected: false,
                });
            }
        }
    }
    (outcomes, extra)
}

/// Unix time in milliseconds (0 if the clock is before 1970): what ticket expiry is measured in.
fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Log one idle client in and read its `Welcome` and the cell map the shard sends after it: a
/// border run chooses its walks from the map, a crowd run places its hot spot in the world the
/// `Welcome` describes.
async fn scout(
    endpoint: &quinn::Endpoint,
    cfg: &SwarmConfig,
    ticket_expires_ms: u64,
) -> anyhow::Result<(Welcome, CellMapView)> {
    let start = Instant::now();
    let mut scout = BotConfig::new(format!("{}-scout", cfg.accounts), Scenario::Idle, cfg.seed);
    if let Some(signer) = &cfg.login {
        scout.sign_ticket(signer, ticket_expires_ms);
    }
    let mut bot = BotClient::with_game(scout, &cfg.game);
    let hello = bot.hello(0);
    let scout = async move {
        let mut session = login(&mut bot, endpoint, cfg.addr, &cfg.server_name, hello, start)
            .await
            .map_err(|f| anyhow!("the scout could not log in to {}: {}", cfg.addr, f.kind))?;
        let found = loop {
            if let (Some(w), Some(map)) = (bot.welcome(), bot.cell_map()) {
                break (w.clone(), map.clone());
            }
            let msg = session
                .read_control()
                .await
                .map_err(|e| anyhow!("the scout lost its connection: {e}"))?;
            // A redirect (the scout's avatar handed off) is ignored: the map comes first.
            bot.on_control(micros_since(start), &msg)
                .map_err(|e| anyhow!("the scout was refused: {e}"))?;
        };
        session.conn.close(0u32.into(), b"scouted");
        Ok(found)
    };
    tokio::time::timeout(SCOUT_TIMEOUT, scout)
        .await
        .map_err(|_| {
            anyhow!(
                "the scout got no cell map from {} within {SCOUT_TIMEOUT:?}",
                cfg.addr
            )
        })?
}

/// How late the bots' own runtime wakes a task: sleeps of [`LAG_PROBE_PERIOD`] until `stop`,
/// each one's overshoot recorded (microseconds) and put in the timeline's second. Every bot
/// shares these worker threads, so when they are late every bot's acknowledgements and inputs
/// are too, and a shard sees its whole path to the bots slow down at once: a generator that
/// cannot keep up looks like a server that cannot.
async fn lag_probe(start: Instant, mut stop: oneshot::Receiver<()>) -> (Timeline, Vec<u32>) {
    let (mut timeline, mut samples) = (Timeline::default(), Vec::new());
    loop {
        let before = Instant::now();
        tokio::select! {
            _ = &mut stop => break,
            () = tokio::time::sleep(LAG_PROBE_PERIOD) => {}
        }
        let lag = before.elapsed().saturating_sub(LAG_PROBE_PERIOD);
        let lag_us = u64::try_from(lag.as_micros()).unwrap_or(u64::MAX);
        let now_us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
        timeline.lag(now_us, lag_us);
        // One sample per 10 ms: 360,000 an hour, 1.4 MB; past a day the timeline stops too.
        if samples.len() < LAG_SAMPLES_MAX {
            samples.push(u32::try_from(lag_us).unwrap_or(u32::MAX));
        }
    }
    (timeline, samples)
}

/// The lag probe's sleep.
const LAG_PROBE_PERIOD: Duration = Duration::from_millis(10);
/// Lag samples kept for the report's percentiles (a day of them).
const LAG_SAMPLES_MAX: usize = 24 * 3_600 * 100;

fn spawn_progress(bots: usize, run: Arc<Run>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let (start, deadline, live) = (run.start, run.deadline, &run.live);
        let total = deadline.duration_since(start).as_secs().max(1);
        let tty = std::io::stderr().is_terminal();
        let bar = indicatif::ProgressBar::new(total);
        if tty {
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:30}] {pos}/{len}s {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
        } else {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        let mut every = tokio::time::interval(Duration::from_secs(1));
        let mut last_line = 0;
        loop {
            every.tick().await;
            let el = start.elapsed().as_secs();
            let msg = format!(
                "{}/{bots} connected, {} failed, {} snapshots, {} handoffs",
                live.connected.load(Ordering::Relaxed),
                live.failed.load(Ordering::Relaxed),
                live.snapshots.load(Ordering::Relaxed),
                live.handoffs.load(Ordering::Relaxed)
            );
            if tty {
                bar.set_position(el.min(total));
                bar.set_message(msg);
            } else if el >= last_line + 5 {
                last_line = el;
                eprintln!("[{el:>4}s/{total}s] {msg}");
            }
        }
    })
}

fn micros_since(start: Instant) -> u64 {
    start.elapsed().as_micros() as u64
}

/// Microseconds from `start` to `end` (0 if `end` is earlier).
fn micros_until(start: Instant, end: Instant) -> u64 {
    end.saturating_duration_since(start).as_micros() as u64
}

/// A logged-in connection. Datagrams are read in the bot's loop; control messages are read and
/// written by tasks of their own, because neither reads nor writes on a stream are cancel-safe.
struct Link {
    conn: quinn::Connection,
    control: mpsc::Receiver<Result<Vec<u8>, NetError>>,
    outgoing: mpsc::Sender<Vec<u8>>,
    reader: tokio::task::JoinHandle<()>,
    writer: tokio::task::JoinHandle<()>,
}

impl Link {
    fn new(session: ClientSession) -> Self {
        let ClientSession {
            conn,
            mut send,
            mut recv,
        } = session;
        let (tx, control) = mpsc::channel::<Result<Vec<u8>, NetError>>(4);
        let reader_conn = conn.clone();
        let reader = tokio::spawn(async move {
            loop {
                let r = read_control(&reader_conn, &mut recv).await;
                let stop = r.is_err();
                if tx.send(r).await.is_err() || stop {
                    break;
                }
            }
        });
        // The writer owns our half of the control stream, which stays open as long as the link
        // (dropping it would finish the stream, as the session's reader task used to prevent).
        let (outgoing, mut queue) = mpsc::channel::<Vec<u8>>(CONTROL_SEND_QUEUE_MAX);
        let writer = tokio::spawn(async move {
            while let Some(msg) = queue.recv().await {
                // A failed write means the connection is going; the reader reports why.
                if quic::write_frame(&mut send, &msg).await.is_err() {
                    break;
                }
            }
        });
        Self {
            conn,
            control,
            outgoing,
            reader,
            writer,
        }
    }

    /// Queue a control message for the shard; false if the queue is full.
    fn send_control(&self, msg: Vec<u8>) -> bool {
        match self.outgoing.try_send(msg) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => false,
            // The writer stopped: the connection is ending and the reader will say why.
            Err(mpsc::error::TrySendError::Closed(_)) => true,
        }
    }

    fn close(self, reason: &[u8]) {
        self.conn.close(0u32.into(), reason);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

/// [`ClientSession::read_control`] on the stream's read half alone (that method needs the whole
/// session, whose write half the link's writer owns): a finished stream waits briefly for the
/// connection's close, so the caller gets the shard's stated reason.
async fn read_control(
    conn: &quinn::Connection,
    recv: &mut quinn::RecvStream,
) -> Result<Vec<u8>, NetError> {
    match quic::read_frame(recv).await {
        Err(NetError::StreamFinished) => {
            match tokio::time::timeout(quic::CLOSE_FLUSH_TIMEOUT * 2, conn.closed()).await {
                Ok(err) => Err(err.into()),
                Err(_) => Err(NetError::StreamFinished),
            }
        }
        other => other,
    }
}

/// Why opening a session (connect, say `Hello`, read the first answer) failed.
#[derive(Debug)]
enum OpenError {
    /// A redirect's address was empty or did not resolve.
    BadAddr,
    Connect(NetError),
    ConnectTimeout,
    Read(NetError),
    ReadTimeout,
}

impl OpenError {
    /// The report's error kind. `redirect`: the connection was one a redirect asked for, not the
    /// bot's first (whose kinds stay as they were before shards handed avatars off).
    fn kind(&self, redirect: bool) -> String {
        match (self, redirect) {
            (Self::BadAddr, _) => "redirect_bad_addr".into(),
            (Self::Connect(e), false) => error_kind("connect", e),
            (Self::ConnectTimeout, false) => "connect_timeout".into(),
            (Self::Read(e), false) => error_kind("login", e),
            (Self::ReadTimeout, false) => "welcome_timeout".into(),
            (Self::Connect(e), true) => error_kind("redirect: connect", e),
            (Self::ConnectTimeout, true) => "redirect: connect_timeout".into(),
            (Self::Read(e), true) => error_kind("redirect: login", e),
            (Self::ReadTimeout, true) => "redirect: welcome_timeout".into(),
        }
    }
}

/// A session, the first control message its shard sent, when the QUIC handshake completed, and
/// whether that was ahead of the redirect (a connection opened on a `Prepare`).
type Opened = (ClientSession, Vec<u8>, Instant, bool);

/// A redirect being followed, polled inside the bot's loop so the old connection keeps being
/// served; dropping it abandons the attempt.
type Hop = Pin<Box<dyn Future<Output = Result<Opened, OpenError>> + Send>>;

/// Connect to `addr`, send `hello` and read the shard's first answer.
async fn open(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    server_name: &str,
    hello: &[u8],
) -> Result<Opened, OpenError> {
    let connect = quic::connect(endpoint, addr, server_name, hello);
    let session = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(OpenError::Connect(e)),
        Err(_) => return Err(OpenError::ConnectTimeout),
    };
    let connected = Instant::now();
    first_answer(session, connected, false).await
}

/// Read the shard's first answer on `session`, whose handshake completed at `connected`.
async fn first_answer(
    mut session: ClientSession,
    connected: Instant,
    ahead: bool,
) -> Result<Opened, OpenError> {
    match tokio::time::timeout(CONNECT_TIMEOUT, session.read_control()).await {
        Ok(Ok(first)) => Ok((session, first, connected, ahead)),
        Ok(Err(e)) => Err(OpenError::Read(e)),
        Err(_) => Err(OpenError::ReadTimeout),
    }
}

/// A connection opened on a `Prepare`: its handshake runs in its own task while the old shard
/// keeps serving the bot, so that a redirect to `shard` only has its `Hello` left to send.
struct Ready {
    shard: zonescaler_shared::ShardId,
    addr: String,
    since: Instant,
    handshake: tokio::task::JoinHandle<Result<(quinn::Connection, Instant), OpenError>>,
}

impl Ready {
    fn open(endpoint: &quinn::Endpoint, server_name: &str, p: Prepare, via: SocketAddr) -> Self {
        let (endpoint, name, addr) = (endpoint.clone(), server_name.to_owned(), p.addr.clone());
        let handshake = tokio::spawn(async move {
            let to = resolve(&addr, via).await?;
            match tokio::time::timeout(CONNECT_TIMEOUT, quic::handshake(&endpoint, to, &name)).await
            {
                Ok(Ok(conn)) => Ok((conn, Instant::now())),
                Ok(Err(e)) => Err(OpenError::Connect(e)),
                Err(_) => Err(OpenError::ConnectTimeout),
            }
        });
        Self {
            shard: p.shard,
            addr: p.addr,
            since: Instant::now(),
            handshake,
        }
    }
}

impl Drop for Ready {
    /// An unused connection goes with its task (quinn closes a connection nobody holds).
    fn drop(&mut self) {
        self.handshake.abort();
    }
}

/// Open the connection a redirect asks for (`hello` carries its token): over `ready`'s, opened on
/// the `Prepare` for this shard, if its handshake succeeded; else a fresh one. `via` is the shard
/// that sent the redirect (see [`resolve_redirect`]).
async fn follow(
    ready: Option<Ready>,
    endpoint: quinn::Endpoint,
    server_name: String,
    redirect_addr: String,
    via: SocketAddr,
    hello: Vec<u8>,
) -> Result<Opened, OpenError> {
    if let Some(mut ready) = ready
        && let Ok(Ok((conn, connected))) = (&mut ready.handshake).await
        && conn.close_reason().is_none()
    {
        return match quic::open_session(conn, &hello).await {
            Ok(session) => first_answer(session, connected, true).await,
            Err(e) => Err(OpenError::Connect(e)),
        };
    }
    let addr = resolve(&redirect_addr, via).await?;
    open(&endpoint, addr, &server_name, &hello).await
}

/// [`resolve_redirect`] within [`CONNECT_TIMEOUT`], as the error a redirect reports.
async fn resolve(addr: &str, via: SocketAddr) -> Result<SocketAddr, OpenError> {
    match tokio::time::timeout(CONNECT_TIMEOUT, resolve_redirect(addr, via)).await {
        Ok(Some(a)) => Ok(a),
        Ok(None) => Err(OpenError::BadAddr),
        Err(_) => Err(OpenError::ConnectTimeout),
    }
}

/// Where a redirect's `host:port` points: `None` if it is empty or does not resolve. Of several
/// addresses, one of `via`'s family comes first (the bot's endpoints are bound to that family). A
/// shard listening on a wildcard address may advertise it (`0.0.0.0:port`), which can only mean
/// "the host you reach me on", so `via`'s IP stands in for it.
async fn resolve_redirect(addr: &str, via: SocketAddr) -> Option<SocketAddr> {
    let addr = addr.trim();
    if addr.is_empty() {
        return None;
    }
    let found: Vec<SocketAddr> = match addr.parse::<SocketAddr>() {
        Ok(a) => vec![a],
        Err(_) => tokio::net::lookup_host(addr).await.ok()?.collect(),
    };
    let pick = found
        .iter()
        .find(|a| a.is_ipv4() == via.is_ipv4())
        .or(found.first())
        .copied()?;
    Some(if pick.ip().is_unspecified() {
        SocketAddr::new(via.ip(), pick.port())
    } else {
        pick
    })
}

fn is_welcome(bytes: &[u8]) -> bool {
    matches!(
        codec::decode_server_control(bytes),
        Ok(ServerControl::Welcome(_))
    )
}

/// Why a login (or a resume) did not get the bot a `Welcome`.
#[derive(Debug)]
struct LoginFailed {
    /// The report's error kind.
    kind: String,
    /// The code of the shard's refusal, if it refused.
    refused: Option<ErrorCode>,
}

impl From<String> for LoginFailed {
    fn from(kind: String) -> Self {
        Self {
            kind,
            refused: None,
        }
    }
}

impl LoginFailed {
    fn opening(e: &OpenError, redirect: bool) -> Self {
        let refused = match e {
            OpenError::Read(NetError::PeerClosed { code, .. }) => ErrorCode::from_close_code(*code),
            _ => None,
        };
        Self {
            kind: e.kind(redirect),
            refused,
        }
    }
}

/// Log `bot` in at `addr` with `hello`, following the redirects a login may get (its spawn point
/// belongs to another shard, or a resume's avatar is on another shard): the session that
/// welcomed it, or why not.
async fn login(
    bot: &mut BotClient,
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    server_name: &str,
    hello: Vec<u8>,
    start: Instant,
) -> Result<ClientSession, LoginFailed> {
    let (mut session, mut msg, _, _) = open(endpoint, addr, server_name, &hello)
        .await
        .map_err(|e| LoginFailed::opening(&e, false))?;
    let mut redirects = 0;
    loop {
        match bot.on_control(micros_since(start), &msg) {
            Ok(None) if is_welcome(&msg) => return Ok(session),
            // Every shard is at its cap: wait for the next place, or the admission. However
            // long: the caller bounds the whole login by the run's end.
            Ok(None) if bot.is_queued() => {
                msg = session
                    .read_control()
                    .await
                    .map_err(|e| error_kind("login: while queued", &e))?;
            }
            Ok(None) => {
                return Err(String::from(
                    "login: the first answer was neither Welcome nor Redirect",
                )
                .into());
            }
            Ok(Some(r)) => {
                redirects += 1;
                if redirects > REDIRECTS_IN_A_ROW_MAX {
                    return Err(format!(
                        "login: redirected more than {REDIRECTS_IN_A_ROW_MAX} times in a row"
                    )
                    .into());
                }
                // No session to keep yet: the old shard has nothing of ours.
                let via = session.conn.remote_address();
                session.conn.close(0u32.into(), b"redirected");
                let hello = bot.hello_redirected(&r);
                (session, msg, _, _) = follow(
                    None,
                    endpoint.clone(),
                    server_name.to_owned(),
                    r.addr,
                    via,
                    hello,
                )
                .await
                .map_err(|e| LoginFailed::opening(&e, true))?;
            }
            Err(e) => {
                let refused = match &e {
                    BotError::Refused { code, .. } => {
                        ErrorCode::ALL.into_iter().find(|c| c.as_str() == *code)
                    }
                    BotError::Protocol(_) => None,
                };
                return Err(LoginFailed {
                    kind: format!("login_refused: {e}"),
                    refused,
                });
            }
        }
    }
}

/// A bot's connections: the one it plays on, and the redirect it may be following.
struct Connections {
    link: Link,
    /// False once `link` ended while a redirect was being followed: the old shard may let go of a
    /// client whose avatar it handed off, and the new connection is on its way.
    link_alive: bool,
    hop: Option<Hop>,
    /// Redirects since the last `Welcome`.
    redirects: u32,
    /// The connection opened on the latest `Prepare`, if its redirect has not come yet.
    ready: Option<Ready>,
    endpoint: quinn::Endpoint,
    server_name: String,
}

impl Connections {
    /// The bot is back in the game on `session` after losing its shard.
    fn back(&mut self, session: ClientSession) {
        self.link = Link::new(session);
        self.link_alive = true;
        self.hop = None;
        self.redirects = 0;
        self.ready = None;
    }

    /// The current connection ended: an error for the report (`kind`), unless a redirect is under
    /// way, whose outcome decides how the bot goes on.
    fn lost(&mut self, bot: &mut BotClient, now_us: u64, kind: impl FnOnce() -> String) {
        if self.hop.is_none() {
            bot.metrics.error_at(now_us, &kind());
        }
        self.link_alive = false;
    }

    /// Follow `r`, sent by the shard at `via`. A newer redirect supersedes one still being
    /// followed.
    fn follow(&mut self, bot: &mut BotClient, r: Redirect, via: SocketAddr) {
        self.redirects += 1;
        let ready = self
            .ready
            .take()
            .filter(|w| w.shard == r.shard && w.addr == r.addr);
        self.hop = if self.redirects > REDIRECTS_IN_A_ROW_MAX {
            bot.metrics.error("redirect: too many in a row");
            bot.redirect_abandoned();
            None
        } else {
            let hop = follow(
                ready,
                self.endpoint.clone(),
                self.server_name.clone(),
                r.addr.clone(),
                via,
                bot.hello_redirected(&r),
            );
            Some(Box::pin(async move {
                tokio::time::timeout(HOP_TIMEOUT, hop)
                    .await
                    .unwrap_or(Err(OpenError::ReadTimeout))
            }))
        };
    }

    /// The shard told the bot a redirect may follow: connect there now (a newer `Prepare`
    /// replaces an older one's connection). Not while a redirect is being followed: its
    /// connection is on its way already.
    fn prepare(&mut self, p: Prepare, via: SocketAddr) {
        if self.hop.is_some() {
            return;
        }
        if self
            .ready
            .as_ref()
            .is_some_and(|w| w.shard == p.shard && w.addr == p.addr)
        {
            return;
        }
        self.ready = Some(Ready::open(&self.endpoint, &self.server_name, p, via));
    }

    /// Close a connection opened on a `Prepare` whose redirect did not come in time.
    fn expire_ready(&mut self) {
        if self
            .ready
            .as_ref()
            .is_some_and(|w| w.since.elapsed() >= PREPARED_KEEP)
        {
            self.ready = None;
        }
    }

    /// The redirect being followed opened its connection, or failed to. Returns whether the bot
    /// switched to the new shard. On any failure the bot stays where it is: the old shard keeps
    /// forwarding its inputs.
    fn arrived(
        &mut self,
        bot: &mut BotClient,
        opened: Result<Opened, OpenError>,
        now_us: u64,
    ) -> bool {
        let (session, first, connected, ahead) = match opened {
            Ok(o) => o,
            Err(e) => {
                bot.metrics.error_at(now_us, &e.kind(true));
                bot.redirect_abandoned();
                return false;
            }
        };
        let waited = u64::try_from(connected.elapsed().as_micros()).unwrap_or(u64::MAX);
        if ahead {
            bot.redirect_preconnected(now_us.saturating_sub(waited));
        } else {
            bot.redirect_connected(now_us.saturating_sub(waited));
        }
        match bot.on_control(now_us, &first) {
            Ok(None) if is_welcome(&first) => {
                // The core has reset its snapshot state for the new shard, so from now on only
                // the new connection counts. Datagrams that reached it before the Welcome waited
                // unread in quinn; they are read now, after it.
                let old = std::mem::replace(&mut self.link, Link::new(session));
                old.close(b"redirected");
                self.link_alive = true;
                self.redirects = 0;
                // Prepared from the old shard's offers: the new shard says where it offers.
                self.ready = None;
                true
            }
            Ok(None) => {
                session.conn.close(0u32.into(), b"no welcome");
                bot.metrics
                    .error("redirect: the first answer was neither Welcome nor Redirect");
                bot.redirect_abandoned();
                false
            }
            Ok(Some(r)) => {
                // The avatar moved on before its client arrived: follow it.
                let via = session.conn.remote_address();
                session.conn.close(0u32.into(), b"redirected");
                self.follow(bot, r, via);
                false
            }
            Err(e) => {
                session.conn.close(0u32.into(), b"refused");
                // The core counted the shard's code too; this says it was a redirect's.
                bot.metrics.error(&match e {
                    BotError::Refused { code, .. } => format!("redirect: refused: {code}"),
                    BotError::Protocol(_) => "redirect: protocol error".into(),
                });
                bot.redirect_abandoned();
                false
            }
        }
    }
}

async fn run_bot(endpoint: quinn::Endpoint, cfg: BotConfig, run: &Run) -> BotOutcome {
    let (start, deadline, live) = (run.start, run.deadline, &run.live);
    let now_us = || micros_since(start);
    // The bot's run, for the share of it spent playing: from its turn in the ramp to the end.
    let (start_us, end_us) = (cfg.login_at_us, || {
        now_us().min(micros_until(start, deadline))
    });
    let seed = cfg.seed;
    let mut bot = BotClient::with_game(cfg, &run.game);
    let hello = bot.hello(now_us());
    let logging_in = login(
        &mut bot,
        &endpoint,
        run.addr,
        &run.server_name,
        hello,
        start,
    );
    // A login may wait in the login queue until the run ends; then it never played.
    let logged_in = match tokio::time::timeout_at(deadline.into(), logging_in).await {
        Ok(r) => r.map_err(|f| f.kind),
        Err(_) if bot.is_queued() => {
            Err("login: still in the login queue when the run ended".into())
        }
        Err(_) => Err("login: not welcomed before the run ended".into()),
    };
    let session = match logged_in {
        Ok(s) => s,
        Err(kind) => {
            live.failed.fetch_add(1, Ordering::Relaxed);
            bot.metrics.error_at(now_us(), &kind);
            bot.metrics.end_run(start_us, end_us());
            return BotOutcome {
                metrics: bot.metrics,
                active_s: 0.0,
                connected: false,
            };
        }
    };
    live.connected.fetch_add(1, Ordering::Relaxed);
    let welcomed = Instant::now();
    let mut conns = Connections {
        link: Link::new(session),
        link_alive: true,
        hop: None,
        redirects: 0,
        ready: None,
        endpoint,
        server_name: run.server_name.clone(),
    };
    // Start the input clock at a random phase. Starting it on Welcome would lock every bot to the
    // moment just after a shard tick (when Welcome is sent), so each input would wait a whole tick:
    // real clients run their own frame clocks at arbitrary phases.
    let period = Duration::from_secs_f64(1.0 / f64::from(run.input_hz.max(1)));
    let phase = period.mul_f32(Rng::new(seed ^ 0xC10C).next_f32());
    let inputs = tokio::time::interval_at(tokio::time::Instant::now() + phase, period);
    let mut play = Play {
        inputs,
        last_snaps: 0,
        handed_over_s: 0,
        backoff: Rng::new(seed ^ 0xBAC0FF),
    };
    play.inputs
        .set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // Play; when the shard is lost, come back through another and play on.
    while let Ended::Lost { via, heard } = play.session(&mut conns, &mut bot, run).await {
        let heard_us = heard.saturating_duration_since(run.start).as_micros() as u64;
        match come_back(
            &mut bot,
            &conns.endpoint,
            run,
            (via, heard_us),
            &mut play.backoff,
        )
        .await
        {
            Some(session) => conns.back(session),
            None => break,
        }
    }
    conns.hop = None; // abandon a redirect still being followed
    conns.link.close(b"run finished");
    bot.metrics.end_run(start_us, end_us());
    let active_s = Instant::now()
        .min(deadline)
        .saturating_duration_since(welcomed)
        .as_secs_f64();
    BotOutcome {
        metrics: bot.metrics,
        active_s,
        connected: true,
    }
}

/// How a bot's session on a shard ended.
enum Ended {
    /// The run is over, or the shard refused it for good (its stated reason is in the report).
    Done,
    /// The shard is lost without a redirect (the connection timed out or closed, the shard went
    /// silent, or said it was shutting down): the bot comes back through another shard. `via`:
    /// the lost shard's address; `heard`: when the bot last heard from it (the failover gap
    /// runs from there: the player's world stopped then, not when the bot gave up on it).
    Lost { via: SocketAddr, heard: Instant },
}

/// A bot's input clock and the counters its loop keeps across sessions.
struct Play {
    inputs: tokio::time::Interval,
    last_snaps: u64,
    /// The second up to which this bot handed its timeline to the run's.
    handed_over_s: u32,
    /// Jitter of the comeback's retries.
    backoff: Rng,
}

/// A playing bot hears nothing from its shard for this long: the shard is taken for lost. A live
/// shard sends a snapshot every tick (30 a second); QUIC's own idle timeout
/// (`limits::IDLE_TIMEOUT_MS`, 10 s) is far too late for a player, who sees a frozen world after a
/// few hundred milliseconds.
pub const SHARD_SILENT_AFTER: Duration = Duration::from_millis(1_500);

/// Whether an error that ended the connection means the shard is gone (rather than that it
/// refused the bot for good): anything but a close with one of the shard's own codes, save
/// `shutting_down`.
fn is_loss(e: &NetError) -> bool {
    match e {
        NetError::PeerClosed { code, .. } => match ErrorCode::from_close_code(*code) {
            Some(c) => c == ErrorCode::ShuttingDown,
            None => true,
        },
        _ => true,
    }
}

impl Play {
    /// Play on `conns` until the run ends or the shard is lost.
    async fn session(&mut self, conns: &mut Connections, bot: &mut BotClient, run: &Run) -> Ended {
        let (start, live) = (run.start, &run.live);
        let now_us = || micros_since(start);
        let end = tokio::time::sleep_until(run.deadline.into());
        tokio::pin!(end);
        let mut heard = Instant::now();
        // Set when the session ends with a loss (rather than a refusal for good).
        let mut lost = false;
        let via = conns.link.conn.remote_address();
        while conns.link_alive || conns.hop.is_some() {
            tokio::select! {
                _ = &mut end => return Ended::Done,
                d = conns.link.conn.read_datagram(), if conns.link_alive => match d {
                    Ok(bytes) => {
                        heard = Instant::now();
                        bot.on_datagram(now_us(), &bytes);
                        let new = bot.metrics.snapshots - self.last_snaps;
                        if new > 0 {
                            live.snapshots.fetch_add(new, Ordering::Relaxed);
                            self.last_snaps = bot.metrics.snapshots;
                        }
                    }
                    Err(e) => {
                        let e = NetError::from(e);
                        lost = is_loss(&e);
                        conns.lost(bot, now_us(), || error_kind("connection", &e));
                    }
                },
                c = conns.link.control.recv(), if conns.link_alive => match c {
                    Some(Ok(bytes)) => match bot.on_control(now_us(), &bytes) {
                        Ok(None) => {
                            heard = Instant::now();
                            if let Some(p) = bot.take_prepare().filter(|_| run.preconnect) {
                                let via = conns.link.conn.remote_address();
                                conns.prepare(p, via);
                            }
                        }
                        Ok(Some(r)) => {
                            let via = conns.link.conn.remote_address();
                            conns.follow(bot, r, via);
                        }
                        // The core counted the refusal; the session is over unless a redirect is
                        // under way.
                        Err(e) => {
                            lost = matches!(e, BotError::Refused { code, .. }
                                if code == ErrorCode::ShuttingDown.as_str());
                            conns.link_alive = false;
                        }
                    },
                    Some(Err(e)) => {
                        lost = is_loss(&e);
                        conns.lost(bot, now_us(), || error_kind("control", &e));
                    }
                    None => {
                        lost = true;
                        conns.link_alive = false;
                    }
                },
                r = async {
                    match conns.hop.as_mut() {
                        Some(h) => h.await,
                        None => std::future::pending().await,
                    }
                }, if conns.hop.is_some() => {
                    conns.hop = None;
                    if conns.arrived(bot, r, now_us()) {
                        live.handoffs.fetch_add(1, Ordering::Relaxed);
                        heard = Instant::now();
                    }
                },
                _ = self.inputs.tick() => {
                    if conns.link_alive && conns.hop.is_none() && heard.elapsed() >= SHARD_SILENT_AFTER {
                        bot.metrics.error_at(now_us(), "connection: shard silent");
                        conns.link_alive = false;
                        lost = true;
                    }
                    self.tick(conns, bot, run);
                }
            }
        }
        if lost {
            conns.link.conn.close(0u32.into(), b"lost");
            Ended::Lost { via, heard }
        } else {
            Ended::Done
        }
    }

    /// One input tick: send the input and the brain's control messages, and hand finished
    /// seconds of the timeline to the run's.
    fn tick(&mut self, conns: &mut Connections, bot: &mut BotClient, run: &Run) {
        let now = micros_since(run.start);
        conns.expire_ready();
        if conns.link_alive {
            if let Some(b) = bot.next_input(now)
                && conns.link.conn.send_datagram(b.into()).is_err()
            {
                bot.metrics.error_at(now, "send_input_failed");
            }
            for msg in bot.take_control() {
                if !conns.link.send_control(msg) {
                    bot.metrics.error_at(now, "control_send_queue_full");
                }
            }
        }
        if let Some(s) = Timeline::second_of(now).filter(|s| *s > self.handed_over_s) {
            let ended = bot.metrics.timeline.drain_before(now);
            run.timeline
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .merge(&ended);
            self.handed_over_s = s;
        }
    }
}

/// How long a bot that lost its shard tries to resume (the master declares a shard dead after
/// its `[cluster] shard_silence_ms`, 3 s by default, and the avatar waits for its client
/// `limits::REDIRECT_WAIT_MS` after that) before it logs in anew instead.
pub const RESUME_TRY_FOR: Duration = Duration::from_secs(20);
/// How long a bot that lost its shard tries to come back at all, resuming or logging in anew.
pub const COMEBACK_TRY_FOR: Duration = Duration::from_secs(30);
/// The first wait between tries, doubled after each up to [`RETRY_WAIT_MAX`], each drawn between
/// half and all of it so the bots of one lost shard do not retry in step.
const RETRY_WAIT_FIRST: Duration = Duration::from_millis(100);
const RETRY_WAIT_MAX: Duration = Duration::from_millis(500);
const _: () = assert!(RESUME_TRY_FOR.as_millis() < COMEBACK_TRY_FOR.as_millis());
/// The longest one resume try may take (connecting, the master's answer, a redirect) before the
/// bot tries the next shard: a shard that died too does not answer at all, and the connection
/// attempt alone would wait [`CONNECT_TIMEOUT`].
const RESUME_ATTEMPT_MAX: Duration = Duration::from_secs(3);

/// The shards a bot that lost the one at `lost` may try: the others its last resume ticket
/// named, then the run's own address, resolved and without `lost`.
fn comeback_shards(
    bot: &BotClient,
    run: &Run,
    lost: SocketAddr,
) -> impl Future<Output = Vec<SocketAddr>> + Send + 'static {
    let named: Vec<String> = bot.resume_info().map_or_else(Vec::new, |r| {
        (r.shards.iter())
            .filter(|(shard, _)| *shard != r.shard)
            .map(|(_, addr)| addr.clone())
            .collect()
    });
    resolve_all(named, run.addr, lost)
}

async fn resolve_all(
    named: Vec<String>,
    run_addr: SocketAddr,
    lost: SocketAddr,
) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for addr in named {
        if let Ok(a) = resolve(&addr, lost).await
            && !out.contains(&a)
        {
            out.push(a);
        }
    }
    if !out.contains(&run_addr) {
        out.push(run_addr);
    }
    out.retain(|a| *a != lost);
    out
}

/// Come back after losing the shard at `lost`: present the resume ticket to the other shards in
/// turn (following the redirect to the avatar's new owner) until one welcomes the bot, waiting a
/// little longer after each `resume_later` or failed connection; if the resume fails for good
/// (or takes [`RESUME_TRY_FOR`]), log in anew with the login ticket the same way. The session
/// that welcomed the bot, or `None` when it gave up ([`COMEBACK_TRY_FOR`]) or the run ended.
async fn come_back(
    bot: &mut BotClient,
    endpoint: &quinn::Endpoint,
    run: &Run,
    (lost, heard_us): (SocketAddr, u64),
    jitter: &mut Rng,
) -> Option<ClientSession> {
    bot.lost_shard(heard_us.min(micros_since(run.start)));
    let began = Instant::now();
    let shards = comeback_shards(bot, run, lost).await;
    if shards.is_empty() {
        bot.gave_up("no other shard to go to");
        return None;
    }
    let mut hello = match bot.resume_hello() {
        Some(h) => h,
        None => bot.resume_failed("no resume ticket"),
    };
    let (mut wait, mut attempt) = (RETRY_WAIT_FIRST, jitter.next_u64() as usize);
    let give_up_at = (began + COMEBACK_TRY_FOR).min(run.deadline);
    loop {
        let resuming = !bot.is_relogging();
        // A resume is answered within a master round trip; a fresh login may wait in the queue.
        let until = if resuming {
            give_up_at.min(Instant::now() + RESUME_ATTEMPT_MAX)
        } else {
            give_up_at
        };
        let addr = shards[attempt % shards.len()];
        let tried = login(
            bot,
            endpoint,
            addr,
            &run.server_name,
            hello.clone(),
            run.start,
        );
        let failed = match tokio::time::timeout_at(until.into(), tried).await {
            Ok(Ok(session)) => return Some(session),
            Ok(Err(f)) => f,
            Err(_) => LoginFailed::from(format!("no answer from {addr} in time")),
        };
        match failed.refused {
            // The ticket is bad or its avatar is gone: log in anew.
            Some(ErrorCode::ResumeFailed | ErrorCode::BadToken) if resuming => {
                hello = bot.resume_failed(failed.refused.map_or("", ErrorCode::as_str));
            }
            Some(ErrorCode::BadTicket | ErrorCode::ProtocolMismatch | ErrorCode::WrongVersion) => {
                bot.gave_up(&failed.kind);
                return None;
            }
            _ if resuming && began.elapsed() >= RESUME_TRY_FOR => {
                hello = bot.resume_failed("not resumed in time");
            }
            // `resume_later`, a shard that did not answer or is at its cap, a claim the master
            // has not settled: try the next shard a little later.
            _ => {}
        }
        attempt += 1;
        let pause = wait.mul_f32(0.5 + jitter.next_f32() / 2.0);
        tokio::time::sleep_until((Instant::now() + pause).min(give_up_at).into()).await;
        wait = (wait * 2).min(RETRY_WAIT_MAX);
        if Instant::now() >= give_up_at {
            // The run's end is no failure of the bot's.
            if Instant::now() < run.deadline {
                bot.gave_up(&format!("not back within {COMEBACK_TRY_FOR:?}"));
            }
            return None;
        }
    }
}

/// A stable error kind for the report: the shard's close code when it gave one, else the class.
fn error_kind(stage: &str, e: &NetError) -> String {
    match e {
        NetError::PeerClosed { code, .. } => match ErrorCode::from_close_code(*code) {
            Some(c) => format!("{stage}: closed by shard: {}", c.as_str()),
            None => format!("{stage}: closed by shard with code {code}"),
        },
        other => {
            let s = other.to_string();
            let short: String = s.chars().take(60).collect();
            format!("{stage}: {short}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn redirect_addresses_resolve_or_are_refused() {
        let via: SocketAddr = "127.0.0.1:4433".parse().expect("literal");
        assert_eq!(
            resolve_redirect("", via).await,
            None,
            "empty: nowhere to go"
        );
        assert_eq!(
            resolve_redirect("  ", via).await,
            None,
            "blank: nowhere to go"
        );
        assert_eq!(
            resolve_redirect("no port here", via).await,
            None,
            "an address without a port does not resolve"
        );
        assert_eq!(
            resolve_redirect("10.1.2.3:5000", via).await,
            Some("10.1.2.3:5000".parse().expect("literal")),
            "a literal is taken as it is"
        );
        assert_eq!(
            resolve_redirect("0.0.0.0:4434", via).await,
            Some("127.0.0.1:4434".parse().expect("literal")),
            "a wildcard address means the host the redirect came from"
        );
        let local = resolve_redirect("localhost:4435", via).await;
        assert_eq!(
            local.map(|a| (a.port(), a.ip().is_loopback())),
            Some((4435, true)),
            "a name resolves, keeping its port"
        );
    }

    #[test]
    fn an_account_prefix_must_make_names_a_shard_accepts() {
        assert_eq!(check_account_prefix("bot", 20_000), Ok(()));
        assert_eq!(check_account_prefix("x".repeat(26).as_str(), 10), Ok(()));
        assert!(check_account_prefix("", 1).unwrap_err().contains("empty"));
        assert!(
            check_account_prefix("red team", 1)
                .unwrap_err()
                .contains("ASCII")
        );
        assert!(
            check_account_prefix("blü", 1)
                .unwrap_err()
                .contains("ASCII")
        );
        let long = check_account_prefix(&"x".repeat(27), 10).unwrap_err();
        assert!(long.contains("at most 26 bytes"), "{long}");
        // "-19999" is the longest suffix of a 20 000-bot run.
        assert_eq!(check_account_prefix(&"x".repeat(26), 20_000), Ok(()));
        assert!(check_account_prefix(&"x".repeat(27), 20_000).is_err());
    }

    #[test]
    fn first_connection_error_kinds_are_unchanged_and_redirect_ones_say_so() {
        assert_eq!(OpenError::ConnectTimeout.kind(false), "connect_timeout");
        assert_eq!(OpenError::ReadTimeout.kind(false), "welcome_timeout");
        assert_eq!(
            OpenError::ConnectTimeout.kind(true),
            "redirect: connect_timeout"
        );
        assert_eq!(OpenError::BadAddr.kind(true), "redirect_bad_addr");
        let closed = NetError::PeerClosed {
            code: u64::from(ErrorCode::BadToken.close_code()),
            reason: "expired".into(),
        };
        assert_eq!(
            OpenError::Read(closed).kind(true),
            "redirect: login: closed by shard: bad_token"
        );
    }
}
