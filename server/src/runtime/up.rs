//! `zonescaler up`: a local cluster of this game as child processes, for a person at a terminal.
//!
//! One function per step: `up` checks the options; `prepare_run_dir` writes the run files;
//! `start_shards` starts them; `wait_ready` waits until each serves; `next_steps` says what
//! to do next (dashboard, API, each shard's client and metrics address, the log files, the bots
//! command); `supervise` shows the live status and restarts dead shards until Ctrl-C or a death
//! it cannot recover from; `Supervisor::stop_all` stops everything.
//!
//! With `--shards N` (N > 1), shard 0 holds the master role (`--expect-shards N`) and the others
//! join it (`--join`, every other shard's link address: any member points to the master); every
//! shard serves the API on `--http`'s port + its index (one without the master role redirects); `up` generates a cluster secret (passed in the environment, never on a
//! command line) and one TLS certificate that every shard presents, so bots trust the whole
//! cluster with one `--cert` file and follow redirects between shards. It also writes a login key
//! pair (`login.key` for the bots and `zonescaler ticket`, `login.pub` for the shards) and the
//! operator's API token (`api.token`).
//!
//! **Logs.** Each child's stdout and stderr go to a file in the run directory (`shard-N.log`,
//! `bots.log`), never to the terminal, so nothing interleaves with the status. Each file is
//! truncated when its child first starts and begins with a line naming the command and when it
//! started; a restart appends to it under a like line that says `restarted (attempt K)`, so the
//! crash's log survives. `RUST_LOG` passes through to the children. When a child exits, `up`
//! prints its exit status and the last `LOG_TAIL_LINES` lines of its log, then (see `verdict`):
//!
//! - a shard that exited 0 was drained: said, not restarted;
//! - a shard of a cluster that died (non-zero, or a signal) is started again, joining the running
//!   cluster (`--join` every other shard; shard 0 too: if it held the master role, the others
//!   elected a successor meanwhile, `cluster::election`), after a backoff (`Backoff`: 1 s,
//!   doubled for each death within 30 s of its start, at most 30 s). The master gives the new
//!   process a new shard id; the cluster keeps running meanwhile;
//! - a lone shard's death (`--shards 1`) stops `up` (exit 1), and so does any shard's before the
//!   cluster first served;
//! - the bots' end is said; the cluster keeps running.
//!
//! `Supervisor` holds the per-child state (name, role, log, how to build its command, start
//! time, backoff) and starts dead joiners again when their backoff is up. Restarts are
//! deadlines that the supervise loop checks every `SUPERVISE_EVERY`, never a sleep, so Ctrl-C
//! stops everything at once while a restart waits.
//!
//! **Status.** Once a second `up` asks the master's `GET /api/cluster` (plain HTTP/1.1 on a std
//! `TcpStream` with short timeouts; the address that answered last first, then every shard's,
//! following a shard's pointer to the master; it says so when the master role moved) and shows per shard: alive, cells, clients, owned entities,
//! proxies, tick p99 and the tick thread's CPU share (both over the shard's last heartbeat
//! window), and handoffs per second (the change of `handoffs_out` between two polls), then a
//! totals line. On a terminal the table is redrawn in place (cursor up, overwrite, clear to end
//! of line); when stdout is not a terminal `up` prints one line every 10 s instead, e.g.
//!
//! ```text
//! up: t=30s epoch=1 shards=4/4 players=500 clients=500 entities=1504 handoffs/s=213 tick_p99_ms=[4.1,3.9,5.2,4.4] tick_cpu_pct=[12,11,19,13]
//! ```
//!
//! or `up: t=30s api_error="…"` while the API does not answer (the table says so too). A
//! one-shard `up` has no master and so no API: it shows only that the shard runs (`up: t=30s
//! shards=1/1 running` when piped); the shard's `/metrics` has its numbers.
//!
//! **Stopping.** Every child shard is started with its standard input piped from this process and
//! the hidden flag `--exit-with-parent`: when this process exits for any reason (Ctrl-C, a crash,
//! `kill -9`) the pipe closes and each child stops itself, so no shard is ever left orphaned.
//! Ctrl-C makes `up` close those pipes, wait for the shards, and exit 0.

use anyhow::{Context, bail};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{IsTerminal, Read, Seek, SeekFrom, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{self, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Lines of a dead child's log that `up` prints.
const LOG_TAIL_LINES: usize = 20;
/// Bytes read from the end of a log to find those lines.
const LOG_TAIL_BYTES_MAX: u64 = 16 * 1024;
/// How long the shards get to form the cluster and serve.
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How often `up` checks its children and the stop flag.
const SUPERVISE_EVERY: Duration = Duration::from_millis(100);
/// How often the master's API is polled (and a terminal's table redrawn).
const STATUS_EVERY: Duration = Duration::from_secs(1);
/// How often a summary line is printed when stdout is not a terminal.
const SUMMARY_EVERY: Duration = Duration::from_secs(10);
/// Connect, write and read timeout of one API poll: short, so Ctrl-C and deaths are seen at once.
const API_TIMEOUT: Duration = Duration::from_millis(500);
/// The largest API response `up` reads.
const API_RESPONSE_BYTES_MAX: usize = 4 << 20;
/// A child that exits this soon after it started never ran (a bad flag, an unknown subcommand).
const EXITED_AT_ONCE: Duration = Duration::from_secs(3);
/// How long children get to stop once their stdin closes before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Longest line of the live table: wider lines would wrap and break redrawing in place.
const TABLE_LINE_CHARS_MAX: usize = 79;
/// The wait before the first restart of a dead shard; each quick death doubles it.
const RESTART_DELAY_MIN: Duration = Duration::from_secs(1);
/// The longest wait before a restart: a shard that keeps dying is tried twice a minute.
const RESTART_DELAY_MAX: Duration = Duration::from_secs(30);
/// A shard that ran this long before it died was healthy: its next restart waits
/// [`RESTART_DELAY_MIN`] again.
const RESTART_STABLE_AFTER: Duration = Duration::from_secs(30);
const _: () = assert!(
    RESTART_DELAY_MIN.as_millis() > 0
        && RESTART_DELAY_MIN.as_millis() <= RESTART_DELAY_MAX.as_millis()
);

/// `zonescaler up`: run a local cluster as child processes; Ctrl-C stops every one of them.
#[derive(Clone, Debug, clap::Args)]
pub struct UpOptions {
    /// Shard processes to start; with more than one, shard 0 holds the master role (its death
    /// stops the cluster) and the others join it (each restarted, after a backoff, when it dies).
    #[arg(long, default_value_t = 1)]
    pub shards: usize,
    /// World config (TOML).
    #[arg(long, default_value = "assets/worlds/default.toml")]
    pub world: PathBuf,
    /// Also run `bots` (this same binary) with this many bots against shard 0; they log to
    /// RUN_DIR/bots.log.
    #[arg(long, default_value_t = 0)]
    pub bots: usize,
    /// How long those bots play.
    #[arg(long, default_value = "60s")]
    pub bot_duration: String,
    /// Host the shards listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// First shard's UDP port for clients; shard i listens on port + i.
    #[arg(long, default_value_t = 4433)]
    pub port: u16,
    /// First shard's UDP port for shard links; shard i uses link-port + i.
    #[arg(long, default_value_t = 5433)]
    pub link_port: u16,
    /// Where shard 0 serves the dashboard and the HTTP API (`/`, `GET /api/cluster`); shard i
    /// serves it on this port + i. The shard holding the master role answers; the others
    /// redirect (`307`) to it, so this address keeps working after the master moves.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: String,
    /// First shard's port for Prometheus metrics (`GET /metrics`); shard i uses metrics-port + i.
    /// Default: `--port` + 5000 (9433 for the default port), so clusters on other ports do not
    /// collide on it.
    #[arg(long)]
    pub metrics_port: Option<u16>,
    /// What the `--bots` do (wander, idle, border, crowd, migrate; see `bots --help`).
    #[arg(long, default_value = "wander")]
    pub bot_scenario: String,
    /// Where certificates, keys, the API token and the logs go.
    #[arg(long, default_value = "target/zonescaler-run")]
    pub run_dir: PathBuf,
    /// Capacity weight of each shard, in start order, e.g. `1,1,2` (each 1..=1000; one per
    /// shard). Default: 1 each.
    #[arg(long, value_delimiter = ',')]
    pub weights: Vec<u32>,
}

impl UpOptions {
    /// Where shard `i` serves the API: `--http`'s port + `i` (`--http` itself if it has no
    /// port to add to; `check_options` refuses that for a cluster).
    pub fn http_of(&self, i: usize) -> String {
        match self.http.rsplit_once(':') {
            Some((host, port)) => match port.parse::<u16>() {
                Ok(p) => format!("{host}:{}", usize::from(p) + i),
                Err(_) => self.http.clone(),
            },
            None => self.http.clone(),
        }
    }

    /// The first shard's metrics port: `--metrics-port`, else `--port` + 5000.
    pub fn metrics_port(&self) -> u16 {
        self.metrics_port
            .unwrap_or_else(|| self.port.saturating_add(5_000))
    }
}

/// Start the cluster, say what to do next, show its status and restart dead joiners until
/// Ctrl-C (exit 0) or a death the cluster cannot go on without (an error naming it).
pub fn up(
    opts: UpOptions,
    stop: Arc<AtomicBool>,
    game: &crate::app::GameSetup,
) -> anyhow::Result<()> {
    check_options(&opts)?;
    // Validate before starting anything, so a bad config (the world's, or the game's own
    // settings) is one clear line, not a child's crash.
    let config = zonescaler_shared::config::WorldConfig::load(&opts.world)?;
    let app = crate::core::ShardApp::with_game(config, None, game);
    if !app.setup_errors().is_empty() {
        bail!("{}", app.setup_errors().join("; "));
    }
    drop(app);
    std::fs::create_dir_all(&opts.run_dir)
        .with_context(|| format!("cannot create run dir {}", opts.run_dir.display()))?;
    let exe = std::env::current_exe().context("cannot find the zonescaler executable")?;
    let mut screen = Screen::new(std::io::stdout().is_terminal());
    let mut children = Supervisor::default();
    let result = run(&opts, &exe, &mut children, &mut screen, &stop);
    screen.finish();
    screen.say(&["zonescaler up: stopping".into()]);
    children.stop_all();
    result
}

fn check_options(opts: &UpOptions) -> anyhow::Result<()> {
    use zonescaler_shared::limits::SHARDS_MAX;
    if opts.shards == 0 {
        bail!("--shards must be at least 1");
    }
    if opts.shards > SHARDS_MAX {
        bail!("--shards {}: at most {SHARDS_MAX}", opts.shards);
    }
    if [opts.port, opts.link_port, opts.metrics_port()]
        .iter()
        .any(|p| usize::from(*p) + opts.shards > usize::from(u16::MAX))
    {
        bail!("--port / --link-port / --metrics-port + --shards runs past port 65535");
    }
    if opts.shards > 1 {
        let port = (opts.http.rsplit_once(':')).and_then(|(_, p)| p.parse::<u16>().ok());
        match port {
            None => bail!("--http {:?}: give a host:port", opts.http),
            Some(p) if usize::from(p) + opts.shards > usize::from(u16::MAX) => {
                bail!("--http's port + --shards runs past port 65535")
            }
            Some(_) => {}
        }
    }
    if !opts.weights.is_empty() && opts.weights.len() != opts.shards {
        bail!(
            "--weights names {} weights for {} shards: give one per shard",
            opts.weights.len(),
            opts.shards
        );
    }
    if let Some(w) = opts.weights.iter().find(|w| !(1..=1_000).contains(*w)) {
        bail!("--weights: each weight must be 1..=1000 (got {w})");
    }
    Ok(())
}

fn run(
    opts: &UpOptions,
    exe: &Path,
    children: &mut Supervisor,
    screen: &mut Screen,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let files = prepare_run_dir(opts)?;
    screen.say(&[format!(
        "zonescaler up: starting {}; logs in {}",
        shards_text(opts.shards),
        opts.run_dir.display()
    )]);
    let shards = start_shards(opts, exe, &files, children)?;
    if !wait_ready(&shards, children, screen, stop)? {
        return Ok(());
    }
    screen.say(&next_steps(opts, &shards, &files, &shown_exe(exe)));
    if opts.bots > 0 {
        let log = opts.run_dir.join("bots.log");
        let args = bots_args(
            &shards[0].addr,
            &files,
            opts.bots,
            &opts.bot_duration,
            Some(&opts.bot_scenario),
        );
        let exe = exe.to_path_buf();
        let command = move |_restart| {
            let mut command = Command::new(&exe);
            command.args(&args).stdin(Stdio::null());
            command
        };
        // Bots stay in this process group: a terminal's Ctrl-C reaches them and they stop their
        // own way; if `up` is killed they still end when their --duration runs out.
        children.start("bots", Role::Bots, &log, Box::new(command))?;
        screen.say(&[format!(
            "zonescaler up: started {} bots (log {})",
            opts.bots,
            log.display()
        )]);
    }
    supervise(opts, children, screen, stop)
}

// ---------------------------------------------------------------------------------------------
// Run files and children

/// What `up` writes to the run directory before starting anything.
#[derive(Clone)]
struct RunFiles {
    /// The certificate every shard presents, and its key.
    cluster_cert: PathBuf,
    cluster_key: PathBuf,
    /// The login key pair: the private half mints tickets (bots), the public half checks them.
    login_key: PathBuf,
    login_pub: PathBuf,
    /// The operator's token for `GET /api/players/{name}`.
    api_token: PathBuf,
    secret: String,
    /// The secret, for a shard the operator adds to the running cluster (`shard --join`).
    secret_file: PathBuf,
}

fn prepare_run_dir(opts: &UpOptions) -> anyhow::Result<RunFiles> {
    let dir = &opts.run_dir;
    let files = RunFiles {
        cluster_cert: dir.join("cluster.pem"),
        cluster_key: dir.join("cluster.key"),
        login_key: dir.join("login.key"),
        login_pub: dir.join("login.pub"),
        api_token: dir.join("api.token"),
        secret_file: dir.join("cluster.secret"),
        secret: match std::env::var(super::cli::SECRET_ENV) {
            Ok(s) => s,
            Err(_) => random_secret()?,
        },
    };
    // One certificate for every shard, so a client trusts the whole cluster with one file.
    let identity =
        zonescaler_net::tls::ServerIdentity::self_signed(&["localhost", "127.0.0.1", &opts.host])
            .context("cannot make the cluster's certificate")?;
    std::fs::write(&files.cluster_cert, identity.cert_pem())
        .with_context(|| format!("cannot write {}", files.cluster_cert.display()))?;
    write_private(&files.cluster_key, &identity.key_pem())?;
    let token = zonescaler_shared::token::api_token(files.secret.as_bytes());
    write_private(&files.api_token, &token)?;
    write_private(&files.secret_file, &files.secret)?;
    // A login key for this local cluster: shards get the public half, the bots (and
    // `zonescaler ticket`) mint tickets with the private one, as a game's account service would.
    zonescaler_shared::ticket::TicketSigner::generate_files(
        "local",
        &files.login_key,
        &files.login_pub,
    )
    .context("cannot make the cluster's login key")?;
    Ok(files)
}

/// One shard as `up` started it.
#[derive(Clone)]
struct ShardInfo {
    name: String,
    /// Where its clients connect.
    addr: String,
    /// Where it serves `/metrics`.
    metrics: String,
    /// Written by the shard once it serves.
    cert: PathBuf,
    log: PathBuf,
    pid: u32,
}

fn start_shards(
    opts: &UpOptions,
    exe: &Path,
    files: &RunFiles,
    children: &mut Supervisor,
) -> anyhow::Result<Vec<ShardInfo>> {
    let mut shards = Vec::with_capacity(opts.shards);
    for i in 0..opts.shards {
        // `check_options` keeps every port + i within u16.
        let offset = i as u16;
        let mut shard = ShardInfo {
            name: format!("shard-{i}"),
            addr: format!("{}:{}", opts.host, opts.port + offset),
            metrics: format!("{}:{}", opts.host, opts.metrics_port() + offset),
            cert: opts.run_dir.join(format!("shard-{i}.pem")),
            log: opts.run_dir.join(format!("shard-{i}.log")),
            pid: 0,
        };
        let _ = std::fs::remove_file(&shard.cert);
        let role = match (opts.shards, i) {
            (1, _) => Role::Alone,
            (_, 0) => Role::Master,
            _ => Role::Joiner,
        };
        // A restart runs the same command: a joiner's already says `--join` the master.
        let (o, e, f, s) = (
            opts.clone(),
            exe.to_path_buf(),
            files.clone(),
            shard.clone(),
        );
        let command = move |restart| shard_command(&o, &e, &f, &s, i, restart);
        shard.pid = children.start(&shard.name, role, &shard.log, Box::new(command))?;
        shards.push(shard);
    }
    Ok(shards)
}

fn shard_command(
    opts: &UpOptions,
    exe: &Path,
    files: &RunFiles,
    shard: &ShardInfo,
    i: usize,
    restart: bool,
) -> Command {
    let mut command = Command::new(exe);
    command
        .args(["shard", "--world"])
        .arg(&opts.world)
        .args(["--listen", &shard.addr, "--cert-out"])
        .arg(&shard.cert)
        .arg("--tls-cert")
        .arg(&files.cluster_cert)
        .arg("--tls-key")
        .arg(&files.cluster_key)
        .arg("--exit-with-parent")
        .arg("--login-keys")
        .arg(&files.login_pub)
        .args(["--metrics", &shard.metrics])
        .env(super::cli::SECRET_ENV, &files.secret)
        .stdin(Stdio::piped());
    if opts.shards > 1 {
        let links = format!("{}:{}", opts.host, usize::from(opts.link_port) + i);
        // The shards share this machine: one network thread each (see NET_THREADS_DEFAULT).
        command.args(["--link-listen", &links, "--net-threads", "1"]);
        if let Some(w) = opts.weights.get(i) {
            command.args(["--weight", &w.to_string()]);
        }
        // Every shard serves the API: the master's answers, the others point to it.
        command.args(["--http", &opts.http_of(i)]);
        if i == 0 && !restart {
            let expect = opts.shards.to_string();
            command.args(["--expect-shards", &expect]);
        } else {
            // Through any member (one that does not hold the master role points to it): shard
            // 0 first, the others after, so a restart finds the cluster whichever shard died.
            let members: Vec<String> = (0..opts.shards)
                .filter(|j| *j != i)
                .map(|j| format!("{}:{}", opts.host, usize::from(opts.link_port) + j))
                .collect();
            command.args(["--join", &members.join(",")]);
        }
    }
    // A terminal's Ctrl-C signals the whole foreground process group. Shards get a group of
    // their own so only `up` hears it and stops them in order (by closing their stdin),
    // instead of racing them and reporting their exit as a crash.
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    command
}

/// The `bots` subcommand's arguments: `bots` bots against `addr` (shard 0) for `duration`.
fn bots_args(
    addr: &str,
    files: &RunFiles,
    bots: usize,
    duration: &str,
    scenario: Option<&str>,
) -> Vec<String> {
    let mut args: Vec<String> = vec!["bots".into(), "--connect".into(), addr.into()];
    args.extend(["--cert".into(), files.cluster_cert.display().to_string()]);
    args.extend(["--login-key".into(), files.login_key.display().to_string()]);
    args.extend([
        "--bots".into(),
        bots.to_string(),
        "--duration".into(),
        duration.into(),
    ]);
    if let Some(scenario) = scenario {
        args.extend(["--scenario".into(), scenario.into()]);
    }
    args
}

/// Wait until every shard serves (it writes its certificate then: in a cluster, once the cluster
/// formed). `Ok(false)`: Ctrl-C came first.
fn wait_ready(
    shards: &[ShardInfo],
    children: &mut Supervisor,
    screen: &mut Screen,
    stop: &AtomicBool,
) -> anyhow::Result<bool> {
    let start = Instant::now();
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(false);
        }
        for exit in children.reap()? {
            on_exit(&exit, Stage::Starting, children, screen)?;
        }
        let waiting: Vec<&str> = shards
            .iter()
            .filter(|s| !s.cert.exists())
            .map(|s| s.name.as_str())
            .collect();
        if waiting.is_empty() {
            return Ok(true);
        }
        if start.elapsed() > READY_TIMEOUT {
            bail!(
                "{} not serving after {}s; see {}",
                waiting.join(", "),
                READY_TIMEOUT.as_secs(),
                shards[0].log.with_file_name("shard-N.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Show the status and restart dead joiners until Ctrl-C; the master's death (or a lone
/// shard's) is an error.
fn supervise(
    opts: &UpOptions,
    children: &mut Supervisor,
    screen: &mut Screen,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let metrics = format!("http://{}:{}/metrics", opts.host, opts.metrics_port());
    let apis = (0..opts.shards).map(|i| opts.http_of(i));
    let mut status = Status::new(
        if opts.shards > 1 {
            apis.collect()
        } else {
            Vec::new()
        },
        metrics,
    );
    let start = Instant::now();
    let mut next_poll = start;
    let mut next_summary = SUMMARY_EVERY;
    loop {
        // Checked before reaping: a terminal's Ctrl-C also reaches the bots, and their exit then
        // is part of stopping, not news.
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        for exit in children.reap()? {
            on_exit(&exit, Stage::Serving, children, screen)?;
        }
        let restarted = children.restart_due(Instant::now())?;
        if !restarted.is_empty() {
            screen.say(&restarted);
        }
        if Instant::now() >= next_poll {
            let t = start.elapsed();
            let news = status.poll(t);
            if !news.is_empty() {
                screen.say(&news);
            }
            if screen.tty {
                screen.draw(status.frame(t));
            } else if t >= next_summary {
                let line = status.summary(t);
                screen.say(&[line]);
                next_summary += SUMMARY_EVERY;
            }
            next_poll = (next_poll + STATUS_EVERY).max(Instant::now());
        }
        std::thread::sleep(SUPERVISE_EVERY);
    }
}

/// Whether the cluster has served yet: before, any shard's death stops `up` (a shard that
/// cannot start is a problem to fix, not to retry, and the cluster is still forming).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Starting,
    Serving,
}

/// What `up` does about a child's exit.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// A shard exited 0: it was drained (it left the cluster owning nothing). Not restarted.
    Drained,
    /// Report it; the cluster keeps running (the bots' end).
    KeepRunning,
    /// Report it and start it again after its backoff (a joiner's death).
    Restart,
    /// Report it and stop the cluster; the error says why.
    Stop(String),
}

/// What a child's exit means for the cluster (see the module docs).
fn verdict(exit: &Exit, stage: Stage) -> Verdict {
    if exit.role != Role::Bots && exit.status.success() {
        return Verdict::Drained;
    }
    let died = format!("{} exited unexpectedly ({})", exit.name, exit.status);
    let log = exit.log.display();
    match (exit.role, stage) {
        (Role::Bots, _) => Verdict::KeepRunning,
        (Role::Joiner, Stage::Serving) => Verdict::Restart,
        (Role::Joiner, Stage::Starting) => Verdict::Stop(format!(
            "{died} before the cluster served, so it is not restarted; its log: {log}"
        )),
        // The others elect a successor (`cluster::election`); the process joins again.
        (Role::Master, Stage::Serving) => Verdict::Restart,
        (Role::Master, Stage::Starting) => Verdict::Stop(format!(
            "{died} before the cluster served, so it is not restarted; its log: {log}"
        )),
        (Role::Alone, _) => Verdict::Stop(format!("{died}; its log: {log}")),
    }
}

/// Report a child's exit and act on its [`verdict`]: a restart is scheduled in `children`, a
/// stop is an error.
fn on_exit(
    exit: &Exit,
    stage: Stage,
    children: &mut Supervisor,
    screen: &mut Screen,
) -> anyhow::Result<()> {
    let report = || exit_report(exit, &log_tail(&exit.log));
    match verdict(exit, stage) {
        Verdict::Drained => {
            screen.say(&[format!(
                "zonescaler up: {} was drained and exited 0; the cluster keeps running",
                exit.name
            )]);
            Ok(())
        }
        Verdict::KeepRunning => {
            let mut lines = report();
            lines.push("zonescaler up: the cluster keeps running; Ctrl-C stops it".into());
            screen.say(&lines);
            Ok(())
        }
        Verdict::Restart => {
            let (attempt, delay) = children.restart_later(exit, Instant::now());
            let mut lines = report();
            lines.push(format!(
                "zonescaler up: the cluster keeps running; {} starts again in {} s (attempt \
                 {attempt}) and joins under a new shard id",
                exit.name,
                delay.as_secs()
            ));
            screen.say(&lines);
            Ok(())
        }
        Verdict::Stop(why) => {
            screen.report(&report());
            bail!("{why}")
        }
    }
}

/// What a child is to the cluster, which decides what its death does (see [`verdict`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// The only shard (`--shards 1`): no master and no joiners, so nothing to rejoin.
    Alone,
    /// Shard 0 of a cluster: it holds the master role, the API and the player directory.
    Master,
    /// Any other shard of a cluster: it joined the master, and can join again.
    Joiner,
    Bots,
}

/// How a dead shard's restarts are spaced: [`RESTART_DELAY_MIN`] before the first, doubled for
/// each death within [`RESTART_STABLE_AFTER`] of its (re)start, at most [`RESTART_DELAY_MAX`];
/// a shard that ran [`RESTART_STABLE_AFTER`] before it died starts from the first again. Pure:
/// how long the shard ran is an input.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Backoff {
    /// Restarts since the shard last ran [`RESTART_STABLE_AFTER`] (or since `up` started it).
    attempts: u32,
}

impl Backoff {
    /// The shard died after running `ran_for`: the number of the restart to come (1 after a
    /// healthy run) and how long to wait before it.
    fn died(&mut self, ran_for: Duration) -> (u32, Duration) {
        if ran_for >= RESTART_STABLE_AFTER {
            self.attempts = 0;
        }
        self.attempts = self.attempts.saturating_add(1);
        // 2^5 s is past the cap already; the bound keeps the shift in range.
        let doublings = (self.attempts - 1).min(16);
        let delay = RESTART_DELAY_MIN
            .saturating_mul(1 << doublings)
            .min(RESTART_DELAY_MAX);
        (self.attempts, delay)
    }
}

/// A restart waiting for its time.
#[derive(Clone, Copy, Debug)]
struct Due {
    at: Instant,
    attempt: u32,
    /// How long it waited, for the line that says it restarts.
    delay: Duration,
}

/// How a child's log starts.
#[derive(Clone, Copy, Debug)]
enum Start {
    /// Its first start: a fresh file.
    First,
    /// Restart number `attempt` (see [`Backoff`]): appended, so the crash's log stays.
    Restart { attempt: u32 },
}

/// Builds a child's command; called again for each restart.
/// Builds a child's command; `true` for a restart (a restarted shard 0 joins the running
/// cluster instead of forming a new one).
type CommandFn = Box<dyn Fn(bool) -> Command>;

/// One child process and what `up` knows of it.
struct Child {
    name: String,
    role: Role,
    log: PathBuf,
    command: CommandFn,
    process: process::Child,
    started: Instant,
    /// Set once `up` has seen it exit.
    exited: Option<ExitStatus>,
    backoff: Backoff,
    /// Set while it waits to be started again.
    restart: Option<Due>,
}

/// A child's exit, as [`Supervisor::reap`] reports it.
struct Exit {
    /// Its index in [`Supervisor::children`].
    child: usize,
    name: String,
    role: Role,
    status: ExitStatus,
    ran_for: Duration,
    log: PathBuf,
}

/// The children of one `up`, started, watched, restarted and stopped together.
#[derive(Default)]
struct Supervisor {
    children: Vec<Child>,
}

impl Supervisor {
    /// Start `command()` as `name` with its stdout and stderr going to a fresh `log`; its pid.
    fn start(
        &mut self,
        name: &str,
        role: Role,
        log: &Path,
        command: CommandFn,
    ) -> anyhow::Result<u32> {
        let process = spawn(name, command(false), log, Start::First)?;
        let pid = process.id();
        self.children.push(Child {
            name: name.into(),
            role,
            log: log.into(),
            command,
            process,
            started: Instant::now(),
            exited: None,
            backoff: Backoff::default(),
            restart: None,
        });
        Ok(pid)
    }

    /// The children that exited since the last call.
    fn reap(&mut self) -> anyhow::Result<Vec<Exit>> {
        let mut exits = Vec::new();
        for (i, c) in self.children.iter_mut().enumerate() {
            if c.exited.is_some() {
                continue;
            }
            let polled = c.process.try_wait();
            let Some(status) = polled.with_context(|| format!("cannot poll {}", c.name))? else {
                continue;
            };
            c.exited = Some(status);
            exits.push(Exit {
                child: i,
                name: c.name.clone(),
                role: c.role,
                status,
                ran_for: c.started.elapsed(),
                log: c.log.clone(),
            });
        }
        Ok(exits)
    }

    /// Schedule `exit`'s child to start again after its backoff, counted from `now`: the
    /// attempt's number and the wait.
    fn restart_later(&mut self, exit: &Exit, now: Instant) -> (u32, Duration) {
        let c = &mut self.children[exit.child];
        debug_assert!(
            c.exited.is_some() && c.restart.is_none(),
            "{} is dead",
            c.name
        );
        let (attempt, delay) = c.backoff.died(exit.ran_for);
        c.restart = Some(Due {
            at: now + delay,
            attempt,
            delay,
        });
        (attempt, delay)
    }

    /// Start again every child whose restart is due at `now`: a line for each.
    fn restart_due(&mut self, now: Instant) -> anyhow::Result<Vec<String>> {
        let mut lines = Vec::new();
        for c in &mut self.children {
            let Some(due) = c.restart.filter(|d| d.at <= now) else {
                continue;
            };
            let start = Start::Restart {
                attempt: due.attempt,
            };
            c.process = spawn(&c.name, (c.command)(true), &c.log, start)
                .with_context(|| format!("cannot restart {}", c.name))?;
            c.started = Instant::now();
            c.exited = None;
            c.restart = None;
            lines.push(format!(
                "zonescaler up: restarting {} (attempt {}, after {} s) as pid {}; log {}",
                c.name,
                due.attempt,
                due.delay.as_secs(),
                c.process.id(),
                c.log.display()
            ));
        }
        Ok(lines)
    }

    /// Close every child's stdin (shards stop themselves), wait up to [`STOP_GRACE`] in all,
    /// then kill what is left. A child waiting for its restart is not started.
    fn stop_all(&mut self) {
        for c in &mut self.children {
            c.restart = None;
            drop(c.process.stdin.take());
        }
        let deadline = Instant::now() + STOP_GRACE;
        for c in &mut self.children {
            loop {
                match c.process.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    _ => {
                        eprintln!("zonescaler up: {} did not stop in time; killing it", c.name);
                        let _ = c.process.kill();
                        let _ = c.process.wait();
                        break;
                    }
                }
            }
        }
    }
}

/// Start `command` as `name`, its stdout and stderr going to `log` (fresh for a first start,
/// appended to for a restart) under a line naming the command and when it started.
fn spawn(
    name: &str,
    mut command: Command,
    log: &Path,
    start: Start,
) -> anyhow::Result<process::Child> {
    let cannot = || format!("cannot write {}", log.display());
    let mut file = match start {
        Start::First => File::create(log),
        Start::Restart { .. } => File::options().create(true).append(true).open(log),
    }
    .with_context(cannot)?;
    let restarted = match start {
        Start::First => String::new(),
        Start::Restart { attempt } => format!(" restarted (attempt {attempt}),"),
    };
    writeln!(
        file,
        "=== zonescaler up: {name}{restarted} started at unix time {}s: {}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        command_line(&command)
    )
    .with_context(cannot)?;
    let stderr = file.try_clone().with_context(cannot)?;
    command.stdout(file).stderr(stderr);
    command
        .spawn()
        .with_context(|| format!("cannot start {name}"))
}

/// The last [`LOG_TAIL_LINES`] lines of a log (none if it cannot be read).
fn log_tail(path: &Path) -> Vec<String> {
    let Ok(mut f) = File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map_or(0, |m| m.len());
    let from = len.saturating_sub(LOG_TAIL_BYTES_MAX);
    let mut bytes = Vec::new();
    if f.seek(SeekFrom::Start(from)).is_err() || f.read_to_end(&mut bytes).is_err() {
        return Vec::new();
    }
    last_lines(&String::from_utf8_lossy(&bytes), LOG_TAIL_LINES, from > 0)
}

/// The last `n` lines of `text`; `cut`: the text starts mid-file, so its first line is partial.
fn last_lines(text: &str, n: usize, cut: bool) -> Vec<String> {
    let lines: Vec<&str> = text.lines().skip(usize::from(cut)).collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| (*l).to_owned())
        .collect()
}

/// What `up` prints when a child exits: how, and the end of its log.
fn exit_report(exit: &Exit, tail: &[String]) -> Vec<String> {
    let how = if exit.ran_for < EXITED_AT_ONCE {
        "exited at once".to_owned()
    } else {
        format!("exited after {}s", exit.ran_for.as_secs())
    };
    let mut lines = vec![format!(
        "zonescaler up: {} {how} ({}); last lines of {}:",
        exit.name,
        exit.status,
        exit.log.display()
    )];
    if tail.is_empty() {
        lines.push("  | (nothing)".into());
    }
    lines.extend(tail.iter().map(|l| format!("  | {l}")));
    lines
}

// ---------------------------------------------------------------------------------------------
// What to do next

/// The lines `up` prints once the cluster serves: short, each command pasteable as it stands.
fn next_steps(opts: &UpOptions, shards: &[ShardInfo], files: &RunFiles, exe: &str) -> Vec<String> {
    let mut lines = vec![format!(
        "zonescaler up: {} running world {}",
        shards_text(shards.len()),
        opts.world.display()
    )];
    if shards.len() > 1 {
        let http = &opts.http;
        lines.push(format!("  dashboard  http://{http}/"));
        lines.push(format!("  API        http://{http}/api/cluster"));
        lines.push(format!(
            "  player     curl -H \"Authorization: Bearer $(cat {})\" http://{http}/api/players/NAME",
            shell_word(&files.api_token.display().to_string())
        ));
    } else {
        lines.push("  (one shard: no master, so no dashboard or API; --shards 2 for those)".into());
    }
    for s in shards {
        lines.push(format!(
            "  {:<9}  {}  metrics http://{}/metrics  (pid {}, log {})",
            s.name,
            s.addr,
            s.metrics,
            s.pid,
            s.log.display()
        ));
    }
    // Border crossings are what a cluster is for; one shard has none.
    let scenario = (shards.len() > 1).then_some("border");
    let bots = bots_args(&shards[0].addr, files, 100, "60s", scenario);
    let words: Vec<String> = bots.iter().map(|w| shell_word(w)).collect();
    lines.push("run 100 bots against it:".into());
    lines.push(format!("  {exe} {}", words.join(" ")));
    if shards.len() > 1 {
        lines.extend(join_and_drain_lines(opts, files, exe, shards.len()));
    }
    lines.push("Ctrl-C stops the cluster.".into());
    lines
}

/// The commands that add a shard to the running cluster and drain one out of it.
fn join_and_drain_lines(opts: &UpOptions, files: &RunFiles, exe: &str, n: usize) -> Vec<String> {
    // The next ports after the ones `up` gave its shards (`check_options` keeps them in u16).
    let next = |base: u16| usize::from(base) + n;
    let host = &opts.host;
    let word = |p: &Path| shell_word(&p.display().to_string());
    vec![
        "add a shard (it gets cells from the busiest), then drain one (it exits 0 once empty):"
            .into(),
        format!(
            "  {}=$(cat {}) {exe} shard --world {} --join {host}:{} --listen {host}:{} \
             --link-listen {host}:{} --metrics {host}:{} --tls-cert {} --tls-key {} --login-keys {}",
            super::cli::SECRET_ENV,
            word(&files.secret_file),
            word(&opts.world),
            opts.link_port,
            next(opts.port),
            next(opts.link_port),
            next(opts.metrics_port()),
            word(&files.cluster_cert),
            word(&files.cluster_key),
            word(&files.login_pub),
        ),
        format!(
            "  {exe} drain --shard {} --http {} --token-file {}",
            n - 1,
            shell_word(&opts.http),
            word(&files.api_token)
        ),
    ]
}

fn shards_text(n: usize) -> String {
    format!("{n} shard{}", if n == 1 { "" } else { "s" })
}

/// The executable as the person ran it (`target/debug/zonescaler` stays that, a name found on
/// `PATH` stays a name), so printed commands paste in the same directory; else its full path.
fn shown_exe(exe: &Path) -> String {
    let shown = match std::env::args_os().next().map(PathBuf::from) {
        Some(a) if a.components().count() > 1 && a.is_file() => a,
        Some(a) if a.components().count() == 1 && a.file_name() == exe.file_name() => a,
        _ => exe.to_path_buf(),
    };
    shell_word(&shown.display().to_string())
}

/// `s` as one shell word: as it is when it is plain, else single-quoted.
fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:,=@%".contains(c));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// A command as a shell line (for log headers; the environment, which holds the secret, is not
/// part of it).
fn command_line(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|w| shell_word(&w.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------------------------------------
// Live status

/// The part of `GET /api/cluster` the status shows (the server's `ClusterView` has more).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
struct View {
    /// The member holding the master role, and its term.
    master: u16,
    term: u64,
    /// Set when the shard asked does not hold the master role: where the master's API is.
    master_api: Option<String>,
    epoch: u64,
    expected_shards: usize,
    total_entities: u64,
    handoffs_total: u64,
    players: usize,
    shards: Vec<ShardRow>,
}

/// One shard in [`View`].
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
struct ShardRow {
    id: u16,
    alive: bool,
    cells: usize,
    clients: u32,
    owned_entities: u32,
    proxies: u32,
    tick_ms_p99: f32,
    tick_cpu_share: f32,
    handoffs_out: u64,
}

/// A view and when `up` got it (time since the cluster came up).
#[derive(Clone, Debug, PartialEq)]
struct Sample {
    t: Duration,
    view: View,
}

/// Handoffs per second between two samples, per shard and in all.
#[derive(Clone, Debug, PartialEq)]
struct Rates {
    shards: BTreeMap<u16, f64>,
    total: f64,
}

fn parse_view(body: &[u8]) -> Result<View, serde_json::Error> {
    serde_json::from_slice(body)
}

/// The master's API address in the body of a `307` from a shard without the role
/// (`{"master", "term", "api"}`).
fn parse_pointer(body: &[u8]) -> Result<String, serde_json::Error> {
    #[derive(Deserialize)]
    struct Pointer {
        api: String,
    }
    Ok(serde_json::from_slice::<Pointer>(body)?.api)
}

/// Handoffs per second from `from` to `to` (`None` without time between them). A shard missing
/// from `from` has no rate yet; a counter that went down (a restarted shard) counts as 0.
fn handoff_rates(from: &Sample, to: &Sample) -> Option<Rates> {
    let dt = to.t.checked_sub(from.t)?.as_secs_f64();
    if dt <= 0.0 {
        return None;
    }
    let before: BTreeMap<u16, u64> = from
        .view
        .shards
        .iter()
        .map(|s| (s.id, s.handoffs_out))
        .collect();
    let shards = to
        .view
        .shards
        .iter()
        .filter_map(|s| {
            let was = *before.get(&s.id)?;
            Some((s.id, s.handoffs_out.saturating_sub(was) as f64 / dt))
        })
        .collect();
    let total = to
        .view
        .handoffs_total
        .saturating_sub(from.view.handoffs_total) as f64
        / dt;
    Some(Rates { shards, total })
}

/// Shards alive, of those expected (or listed, if more).
fn alive_of(view: &View) -> (usize, usize) {
    let alive = view.shards.iter().filter(|s| s.alive).count();
    (alive, view.expected_shards.max(view.shards.len()))
}

/// A share of one core as a whole percentage.
fn cpu_text(share: f32) -> String {
    format!("{:.0}%", share * 100.0)
}

fn rate_text(rate: Option<f64>) -> String {
    rate.map_or_else(|| "-".into(), |r| format!("{r:.0}"))
}

/// The live table: one line per shard, a totals line, and a last line with the epoch and players
/// (or the API's error, above the last table it gave).
fn table(
    latest: Option<&Sample>,
    rates: Option<&Rates>,
    t: Duration,
    error: Option<&str>,
) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(s) = latest {
        let v = &s.view;
        lines.push(format!(
            "{:>6} {:>6} {:>6} {:>8} {:>9} {:>8} {:>9} {:>5} {:>11}",
            "shard",
            "alive",
            "cells",
            "clients",
            "entities",
            "proxies",
            "tick p99",
            "cpu",
            "handoffs/s"
        ));
        for row in &v.shards {
            lines.push(format!(
                "{:>6} {:>6} {:>6} {:>8} {:>9} {:>8} {:>6.1} ms {:>5} {:>11}",
                row.id,
                if row.alive { "yes" } else { "NO" },
                row.cells,
                row.clients,
                row.owned_entities,
                row.proxies,
                row.tick_ms_p99,
                cpu_text(row.tick_cpu_share),
                rate_text(rates.and_then(|r| r.shards.get(&row.id).copied()))
            ));
        }
        lines.push(totals_row(v, rates));
    }
    lines.push(match (error, latest) {
        (Some(e), Some(s)) => format!(" API {e}; table from t={}s", s.t.as_secs()),
        (Some(e), None) => format!(" API {e}; retrying"),
        (None, Some(s)) => format!(
            " epoch {}, {} players, t={}s; Ctrl-C stops the cluster",
            s.view.epoch,
            s.view.players,
            t.as_secs()
        ),
        (None, None) => format!(" waiting for the API, t={}s", t.as_secs()),
    });
    lines
}

/// The table's totals: sums, the worst tick p99 and the busiest tick thread.
fn totals_row(v: &View, rates: Option<&Rates>) -> String {
    let (alive, of) = alive_of(v);
    format!(
        "{:>6} {:>6} {:>6} {:>8} {:>9} {:>8} {:>6.1} ms {:>5} {:>11}",
        "total",
        format!("{alive}/{of}"),
        v.shards.iter().map(|r| r.cells).sum::<usize>(),
        v.shards.iter().map(|r| u64::from(r.clients)).sum::<u64>(),
        v.total_entities,
        v.shards.iter().map(|r| u64::from(r.proxies)).sum::<u64>(),
        v.shards.iter().map(|r| r.tick_ms_p99).fold(0.0, f32::max),
        cpu_text(
            v.shards
                .iter()
                .map(|r| r.tick_cpu_share)
                .fold(0.0, f32::max)
        ),
        rate_text(rates.map(|r| r.total))
    )
}

/// The line printed every [`SUMMARY_EVERY`] when stdout is not a terminal.
fn summary_line(latest: &Sample, rates: Option<&Rates>, t: Duration) -> String {
    let v = &latest.view;
    let (alive, of) = alive_of(v);
    let p99: Vec<String> = v
        .shards
        .iter()
        .map(|s| format!("{:.1}", s.tick_ms_p99))
        .collect();
    let cpu: Vec<String> = v
        .shards
        .iter()
        .map(|s| format!("{:.0}", s.tick_cpu_share * 100.0))
        .collect();
    format!(
        "up: t={}s epoch={} shards={alive}/{of} players={} clients={} entities={} handoffs/s={} tick_p99_ms=[{}] tick_cpu_pct=[{}]",
        t.as_secs(),
        v.epoch,
        v.players,
        v.shards.iter().map(|s| u64::from(s.clients)).sum::<u64>(),
        v.total_entities,
        rate_text(rates.map(|r| r.total)),
        p99.join(","),
        cpu.join(",")
    )
}

/// What the status display knows.
struct Status {
    /// Every shard's API address, shard 0's first; empty for one shard (no master, no API).
    apis: Vec<String>,
    /// The address that answered last: the master's, as far as `up` knows.
    api: Option<String>,
    /// The master and its term at the last answer.
    master: Option<(u16, u64)>,
    /// Shard 0's metrics URL, for the one-shard line.
    metrics: String,
    latest: Option<Sample>,
    previous: Option<Sample>,
    /// The sample the last summary line was computed to (its rates start there).
    summarized: Option<Sample>,
    /// Why the last poll failed, if it did.
    error: Option<String>,
}

impl Status {
    fn new(apis: Vec<String>, metrics: String) -> Self {
        Status {
            api: apis.first().cloned(),
            apis,
            master: None,
            metrics,
            latest: None,
            previous: None,
            summarized: None,
            error: None,
        }
    }

    /// Ask the master's API for the cluster: the address that answered last first, then every
    /// shard's (a shard that does not hold the master role points to the one that does). What
    /// to tell the user: that the master role moved, and where the API is now.
    fn poll(&mut self, t: Duration) -> Vec<String> {
        let mut tries: Vec<String> = self.api.iter().cloned().collect();
        tries.extend(
            self.apis
                .iter()
                .filter(|a| Some(*a) != self.api.as_ref())
                .cloned(),
        );
        let mut error = None;
        let mut i = 0;
        while i < tries.len() && i < 2 * self.apis.len() + 2 {
            let api = tries[i].clone();
            i += 1;
            let got = http_get(&api, "/api/cluster").and_then(|(code, body)| match code {
                200 => Ok(parse_view(&body)?),
                // A shard without the master role points to the one that holds it.
                307 => Ok(View {
                    master_api: Some(parse_pointer(&body)?),
                    ..View::default()
                }),
                _ => bail!("answered HTTP {code}"),
            });
            match got {
                Ok(View {
                    master_api: Some(to),
                    ..
                }) => {
                    // Not the master: ask the one it names next.
                    if !to.is_empty() && !tries[..i].contains(&to) {
                        tries.insert(i, to);
                    }
                }
                Ok(view) => {
                    let mut news = Vec::new();
                    let now = (view.master, view.term);
                    // The cluster forms with shard 0 as the master in term 0: a successor found at
                    // the first answer (the master died before it) is news too.
                    if self.master.unwrap_or((0, 0)) != now {
                        news.push(format!(
                            "zonescaler up: shard {} holds the master role now (term {}); the \
                             API is at http://{api}/api/cluster (every shard's address \
                             redirects there)",
                            now.0, now.1
                        ));
                    }
                    self.master = Some(now);
                    self.api = Some(api);
                    self.record(Sample { t, view });
                    self.error = None;
                    return news;
                }
                Err(e) => {
                    error.get_or_insert_with(|| format!("http://{api}/api/cluster: {e:#}"));
                }
            }
        }
        self.error = Some(error.unwrap_or_else(|| "no shard holds the master role".into()));
        Vec::new()
    }

    fn record(&mut self, sample: Sample) {
        // The first sample is where the first summary line's rates start.
        if self.summarized.is_none() {
            self.summarized = Some(sample.clone());
        }
        self.previous = self.latest.replace(sample);
    }

    /// The terminal's table.
    fn frame(&self, t: Duration) -> Vec<String> {
        if self.apis.is_empty() {
            return vec![format!(
                " shard-0 running, t={}s; its numbers: {}",
                t.as_secs(),
                self.metrics
            )];
        }
        let rates = self.previous.as_ref().zip(self.latest.as_ref());
        let rates = rates.and_then(|(a, b)| handoff_rates(a, b));
        table(
            self.latest.as_ref(),
            rates.as_ref(),
            t,
            self.error.as_deref(),
        )
    }

    /// The piped summary line; its rates run from the previous summary's sample.
    fn summary(&mut self, t: Duration) -> String {
        if self.apis.is_empty() {
            return format!("up: t={}s shards=1/1 running", t.as_secs());
        }
        if let Some(e) = &self.error {
            return format!("up: t={}s api_error={e:?}", t.as_secs());
        }
        let Some(latest) = self.latest.clone() else {
            return format!("up: t={}s api_error=\"no answer yet\"", t.as_secs());
        };
        let base = self.summarized.replace(latest.clone());
        let rates = base.and_then(|b| handoff_rates(&b, &latest));
        summary_line(&latest, rates.as_ref(), t)
    }
}

/// `GET path` from `addr` over plain HTTP/1.1, each step bounded by [`API_TIMEOUT`]: the status
/// code and the body.
fn http_get(addr: &str, path: &str) -> anyhow::Result<(u16, Vec<u8>)> {
    http_request(addr, "GET", path, None, API_TIMEOUT)
}

/// `method path` on `addr` over plain HTTP/1.1 (an empty body; `token` as a bearer token),
/// each step bounded by `timeout`: the status code and the body.
pub(crate) fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let to = addr
        .to_socket_addrs()?
        .next()
        .with_context(|| format!("{addr} names no address"))?;
    let mut stream = TcpStream::connect_timeout(&to, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let deadline = Instant::now() + timeout;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => bail!("timed out"),
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if raw.len() > API_RESPONSE_BYTES_MAX {
            bail!("answer over {API_RESPONSE_BYTES_MAX} bytes");
        }
        if Instant::now() > deadline {
            bail!("timed out");
        }
    }
    parse_http_response(&raw)
}

/// An HTTP/1.1 response's status code and body (sized by `Content-Length`, chunked, or up to
/// the end).
fn parse_http_response(raw: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("an answer without the end of its headers")?;
    let head = std::str::from_utf8(&raw[..split]).context("headers are not UTF-8")?;
    let body = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let code = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .context("an answer without a status line")?;
    let (mut chunked, mut length) = (false, None);
    for (name, value) in lines.filter_map(|l| l.split_once(':')) {
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().context("a bad Content-Length")?);
        }
    }
    let body = match (chunked, length) {
        (true, _) => dechunk(body)?,
        (false, Some(n)) => body
            .get(..n)
            .context("a body shorter than its length")?
            .to_vec(),
        (false, None) => body.to_vec(),
    };
    Ok((code, body))
}

/// A chunked body's bytes.
fn dechunk(mut raw: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let end = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("a chunk size cut off")?;
        let size = std::str::from_utf8(&raw[..end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
            .context("a bad chunk size")?;
        raw = &raw[end + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(raw.get(..size).context("a chunk cut off")?);
        raw = raw.get(size + 2..).context("a chunk cut off")?;
    }
}

// ---------------------------------------------------------------------------------------------
// The terminal

/// Where `up` writes: on a terminal, messages scroll above a live table redrawn in place; else
/// plain lines. Write errors (a closed pipe) are ignored: the cluster runs on regardless.
struct Screen {
    tty: bool,
    /// The table last drawn, and how many lines of it are on the screen now.
    frame: Vec<String>,
    drawn: usize,
}

impl Screen {
    fn new(tty: bool) -> Self {
        Screen {
            tty,
            frame: Vec::new(),
            drawn: 0,
        }
    }

    /// Print `lines` (above the table, which is drawn again beneath them).
    fn say(&mut self, lines: &[String]) {
        let mut text = String::new();
        if self.drawn > 0 {
            text.push_str(&redraw(self.drawn, &[]));
        }
        for l in lines {
            text.push_str(l);
            text.push('\n');
        }
        if self.tty && !self.frame.is_empty() {
            text.push_str(&redraw(0, &self.frame));
            self.drawn = self.frame.len();
        }
        write_out(&mut std::io::stdout().lock(), &text);
    }

    /// Redraw the table as `frame`.
    fn draw(&mut self, frame: Vec<String>) {
        let text = redraw(self.drawn, &frame);
        self.drawn = frame.len();
        self.frame = frame;
        write_out(&mut std::io::stdout().lock(), &text);
    }

    /// An error report, on stderr below the table (which stays, the last picture of the cluster).
    fn report(&mut self, lines: &[String]) {
        self.frame.clear();
        self.drawn = 0;
        let _ = std::io::stdout().flush();
        write_out(&mut std::io::stderr().lock(), &(lines.join("\n") + "\n"));
    }

    /// Leave the terminal tidy: the cursor visible at the start of a clean line below the table
    /// (over a `^C` the terminal echoed there).
    fn finish(&mut self) {
        self.frame.clear();
        self.drawn = 0;
        if self.tty {
            write_out(&mut std::io::stdout().lock(), "\r\x1b[K\x1b[?25h");
        }
    }
}

/// The bytes that replace the `drawn` lines above the cursor with `frame`, without flicker: move
/// up, overwrite each line and clear its rest, then clear whatever the old table had below.
fn redraw(drawn: usize, frame: &[String]) -> String {
    let mut text = String::new();
    if drawn > 0 {
        // `ESC [ 0 A` would still move up one line on most terminals, hence the guard.
        text.push_str(&format!("\r\x1b[{drawn}A"));
    }
    for line in frame {
        text.extend(line.chars().take(TABLE_LINE_CHARS_MAX));
        text.push_str("\x1b[K\n");
    }
    text.push_str("\x1b[J");
    text
}

fn write_out(out: &mut impl Write, text: &str) {
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// A fresh 256-bit cluster secret, hex-encoded.
fn random_secret() -> anyhow::Result<String> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("the system random source failed"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Write a private file (a key, the API token) readable by this user only.
fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(contents.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: u16, alive: bool, clients: u32, owned: u32, p99: f32, out: u64) -> ShardRow {
        ShardRow {
            // Tick CPU in proportion to the clients: 125 clients, 15.6% of a core.
            tick_cpu_share: clients as f32 / 800.0,
            id,
            alive,
            cells: 16,
            clients,
            owned_entities: owned,
            proxies: 40,
            tick_ms_p99: p99,
            handoffs_out: out,
        }
    }

    /// Four shards at t=30s, the last one dead, and the same cluster 10 s earlier.
    fn samples() -> (Sample, Sample) {
        let now = View {
            epoch: 3,
            expected_shards: 4,
            total_entities: 1504,
            handoffs_total: 4300,
            players: 500,
            shards: vec![
                row(0, true, 125, 376, 4.1, 1200),
                row(1, true, 125, 380, 3.9, 1100),
                row(2, true, 250, 748, 5.25, 2000),
                row(3, false, 0, 0, 0.0, 0),
            ],
            ..View::default()
        };
        let mut before = now.clone();
        before.handoffs_total = 2170;
        before.shards[0].handoffs_out = 670;
        before.shards[1].handoffs_out = 600;
        before.shards[2].handoffs_out = 900;
        // Shard 3 was not in the view yet: it has no rate.
        before.shards.pop();
        (
            Sample {
                t: Duration::from_secs(20),
                view: before,
            },
            Sample {
                t: Duration::from_secs(30),
                view: now,
            },
        )
    }

    #[test]
    fn rates_are_the_change_of_handoffs_out_per_second_between_two_samples() {
        let (before, now) = samples();
        let r = handoff_rates(&before, &now).expect("10 s apart");
        assert_eq!(r.shards.get(&0), Some(&53.0), "(1200 - 670) / 10 s");
        assert_eq!(r.shards.get(&1), Some(&50.0));
        assert_eq!(r.shards.get(&2), Some(&110.0));
        assert_eq!(
            r.shards.get(&3),
            None,
            "a shard first seen now has no rate yet"
        );
        assert_eq!(r.total, 213.0, "(4300 - 2170) / 10 s");
        assert_eq!(
            handoff_rates(&now, &now),
            None,
            "no time between samples, no rate"
        );
        assert_eq!(
            handoff_rates(&now, &before),
            None,
            "samples out of order give no rate"
        );
        let restarted = handoff_rates(
            &now,
            &Sample {
                t: Duration::from_secs(31),
                ..before
            },
        );
        assert_eq!(
            restarted.expect("1 s apart").shards.get(&0),
            Some(&0.0),
            "a counter that went down (a restarted shard) is no handoffs, not a huge number"
        );
    }

    #[test]
    fn a_known_view_renders_as_the_expected_table() {
        let (before, now) = samples();
        let rates = handoff_rates(&before, &now);
        let lines = table(Some(&now), rates.as_ref(), Duration::from_secs(30), None);
        let expected = [
            " shard  alive  cells  clients  entities  proxies  tick p99   cpu  handoffs/s",
            "     0    yes     16      125       376       40    4.1 ms   16%          53",
            "     1    yes     16      125       380       40    3.9 ms   16%          50",
            "     2    yes     16      250       748       40    5.2 ms   31%         110",
            "     3     NO     16        0         0       40    0.0 ms    0%           -",
            " total    3/4     64      500      1504      160    5.2 ms   31%         213",
            " epoch 3, 500 players, t=30s; Ctrl-C stops the cluster",
        ];
        assert_eq!(lines, expected);
        assert!(
            lines
                .iter()
                .all(|l| l.chars().count() <= TABLE_LINE_CHARS_MAX),
            "every line fits a terminal, so redrawing in place stays aligned"
        );
        let first = table(Some(&now), None, Duration::from_secs(30), None);
        assert!(
            first[1].ends_with("          -"),
            "before a second sample there is no rate: {first:?}"
        );
    }

    #[test]
    fn an_unreachable_api_is_said_in_the_table_not_a_crash() {
        let (_, now) = samples();
        let err = "http://127.0.0.1:8080/api/cluster: Connection refused (os error 111)";
        let never = table(None, None, Duration::from_secs(3), Some(err));
        assert_eq!(never, [format!(" API {err}; retrying")]);
        let lost = table(Some(&now), None, Duration::from_secs(42), Some(err));
        assert_eq!(lost.len(), 7, "the last table the API gave stays: {lost:?}");
        assert_eq!(lost[6], format!(" API {err}; table from t=30s"));
    }

    #[test]
    fn piped_mode_prints_one_stable_greppable_line() {
        let (before, now) = samples();
        let rates = handoff_rates(&before, &now);
        assert_eq!(
            summary_line(&now, rates.as_ref(), Duration::from_secs(30)),
            "up: t=30s epoch=3 shards=3/4 players=500 clients=500 entities=1504 handoffs/s=213 tick_p99_ms=[4.1,3.9,5.2,0.0] tick_cpu_pct=[16,16,31,0]"
        );
        let mut status = Status::new(vec!["127.0.0.1:8080".into()], String::new());
        status.record(before);
        assert!(
            status
                .summary(Duration::from_secs(20))
                .contains(" handoffs/s=- "),
            "one sample is no rate"
        );
        status.record(Sample {
            t: Duration::from_secs(25),
            ..now.clone()
        });
        status.record(now);
        assert!(
            status
                .summary(Duration::from_secs(30))
                .contains(" handoffs/s=213 "),
            "a line's rate runs from the previous line's sample, not the last poll's"
        );
        status.error = Some("http://127.0.0.1:8080/api/cluster: timed out".into());
        assert_eq!(
            status.summary(Duration::from_secs(40)),
            "up: t=40s api_error=\"http://127.0.0.1:8080/api/cluster: timed out\""
        );
        let mut alone = Status::new(Vec::new(), "http://127.0.0.1:9100/metrics".into());
        assert_eq!(
            alone.summary(Duration::from_secs(10)),
            "up: t=10s shards=1/1 running"
        );
    }

    /// The status reads what the master serves: a real `Master`'s view, serialized as the API does.
    #[test]
    fn the_status_parses_the_masters_view() {
        use crate::cluster::Master;
        use zonescaler_shared::ShardId;
        use zonescaler_shared::cellmap::CellGrid;
        use zonescaler_shared::config::WorldConfig;
        use zonescaler_shared::protocol::{JoinRequest, MemberInfo, ShardLoad};
        let me = MemberInfo {
            id: ShardId(0),
            client_addr: "127.0.0.1:4433".into(),
            link_addr: "127.0.0.1:5433".into(),
            metrics_addr: String::new(),
            http_addr: String::new(),
            weight: 1,
        };
        let mut m = Master::new(CellGrid::from_config(&WorldConfig::default()), 2, me, 0);
        let join = JoinRequest {
            client_addr: "127.0.0.1:4434".into(),
            link_addr: "127.0.0.1:5434".into(),
            metrics_addr: String::new(),
            http_addr: String::new(),
            weight: 1,
        };
        let second = m.join(join, 0).expect("joins");
        m.place().expect("placed");
        let load = ShardLoad {
            owned_entities: 7,
            proxies: 2,
            clients: 1,
            tick_ms_p99: 4.5,
            tick_cpu_share: 0.25,
            handoffs_out: 9,
            players_arrived: vec!["ann".into()],
            ..ShardLoad::default()
        };
        m.heartbeat(second, load, 10);
        let body = serde_json::to_vec(&m.view()).expect("serializes");
        let v = parse_view(&body).expect("the status reads the API's JSON");
        // A shard without the role answers 307 with a pointer: the status follows its `api`.
        let pointer =
            crate::cluster::master::ClusterView::pointer(ShardId(1), 1, "127.0.0.1:8081".into());
        let redirect = super::super::http::pointer_body(&pointer, "127.0.0.1:8081");
        let to = parse_pointer(redirect.to_string().as_bytes()).expect("a pointer");
        assert_eq!(to, "127.0.0.1:8081");
        assert_eq!(
            (v.epoch, v.expected_shards, v.players),
            (m.view().epoch, 2, 1)
        );
        assert_eq!(v.total_entities, 7);
        assert_eq!(v.handoffs_total, 9);
        let s = v.shards.iter().find(|s| s.id == second.0).expect("listed");
        assert_eq!(
            (
                s.alive,
                s.owned_entities,
                s.proxies,
                s.clients,
                s.tick_ms_p99,
                s.tick_cpu_share,
                s.handoffs_out
            ),
            (true, 7, 2, 1, 4.5, 0.25, 9)
        );
        assert_eq!(
            v.shards.iter().map(|s| s.cells).sum::<usize>(),
            m.view().cells.len()
        );
    }

    #[test]
    fn http_answers_parse_by_length_by_chunks_or_to_the_end() {
        let sized = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(
            parse_http_response(sized).expect("parses"),
            (200, b"{}".to_vec())
        );
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4;x=y\r\n\":1}\r\n0\r\n\r\n";
        assert_eq!(
            parse_http_response(chunked).expect("parses"),
            (200, b"{\"a\":1}".to_vec())
        );
        let to_the_end = b"HTTP/1.1 503 Service Unavailable\r\n\r\nlater";
        assert_eq!(
            parse_http_response(to_the_end).expect("parses"),
            (503, b"later".to_vec())
        );
        assert!(parse_http_response(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n{}").is_err());
        assert!(
            parse_http_response(b"HTTP/1.1 200 OK\r\n").is_err(),
            "headers cut off"
        );
        assert!(
            parse_http_response(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n")
                .is_err()
        );
    }

    #[test]
    fn redrawing_moves_up_overwrites_and_clears_without_blanking_first() {
        let frame = ["a".to_owned(), "b".to_owned()];
        assert_eq!(
            redraw(0, &frame),
            "a\x1b[K\nb\x1b[K\n\x1b[J",
            "a first draw moves nothing"
        );
        assert_eq!(
            redraw(3, &frame),
            "\r\x1b[3Aa\x1b[K\nb\x1b[K\n\x1b[J",
            "up over the old table's 3 lines, overwrite 2, clear the one left over"
        );
        let long = ["x".repeat(200)];
        assert_eq!(
            redraw(0, &long),
            format!("{}\x1b[K\n\x1b[J", "x".repeat(TABLE_LINE_CHARS_MAX)),
            "a line never wraps (which would break moving up by line count)"
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_dead_childs_report_says_how_it_ended_and_shows_its_log_tail() {
        use std::os::unix::process::ExitStatusExt;
        let log = "=== header\n".to_owned()
            + &(1..=30).map(|i| format!("line {i}\n")).collect::<String>();
        let tail = last_lines(&log, LOG_TAIL_LINES, false);
        assert_eq!(tail.len(), 20);
        assert_eq!(
            (tail[0].as_str(), tail[19].as_str()),
            ("line 11", "line 30")
        );
        assert_eq!(
            last_lines("tial line\nwhole\n", 5, true),
            ["whole"],
            "a cut first line is dropped"
        );
        let exit = Exit {
            child: 0,
            name: "bots".into(),
            role: Role::Bots,
            status: ExitStatus::from_raw(2 << 8),
            ran_for: Duration::from_millis(80),
            log: "/run/bots.log".into(),
        };
        let unknown = ["error: unrecognized subcommand 'bots'".to_owned()];
        assert_eq!(
            exit_report(&exit, &unknown),
            [
                "zonescaler up: bots exited at once (exit status: 2); last lines of /run/bots.log:",
                "  | error: unrecognized subcommand 'bots'",
            ]
        );
        let killed = Exit {
            child: 2,
            name: "shard-2".into(),
            role: Role::Joiner,
            status: ExitStatus::from_raw(9),
            ran_for: Duration::from_secs(42),
            log: "/run/shard-2.log".into(),
        };
        assert_eq!(
            exit_report(&killed, &[])[..],
            [
                "zonescaler up: shard-2 exited after 42s (signal: 9 (SIGKILL)); last lines of /run/shard-2.log:",
                "  | (nothing)",
            ]
        );
    }

    #[test]
    fn restarts_wait_1s_then_double_on_quick_deaths_up_to_30s_and_start_over_after_a_healthy_run() {
        let secs = Duration::from_secs;
        let mut b = Backoff::default();
        assert_eq!(b.died(secs(3_600)), (1, secs(1)), "a first death waits 1 s");
        assert_eq!(
            b.died(secs(2)),
            (2, secs(2)),
            "dead again within 30 s: doubled"
        );
        assert_eq!(b.died(secs(29)), (3, secs(4)));
        assert_eq!(b.died(secs(0)), (4, secs(8)));
        assert_eq!(b.died(secs(5)), (5, secs(16)));
        assert_eq!(b.died(secs(5)), (6, secs(30)), "32 s is capped at 30 s");
        for _ in 0..100 {
            assert_eq!(
                b.died(secs(1)).1,
                secs(30),
                "and stays capped, never overflows"
            );
        }
        assert_eq!(
            b.died(secs(30)),
            (1, secs(1)),
            "a shard that ran 30 s was healthy: it starts over from 1 s"
        );
        assert_eq!(b.died(Duration::from_millis(29_999)), (2, secs(2)));
        let mut quick = Backoff::default();
        assert_eq!(
            quick.died(Duration::ZERO),
            (1, secs(1)),
            "a shard that died at once is first retried after 1 s too"
        );
    }

    #[cfg(unix)]
    #[test]
    fn only_a_joiner_that_dies_once_the_cluster_serves_is_restarted() {
        use std::os::unix::process::ExitStatusExt;
        let exit = |role: Role, raw: i32| Exit {
            child: 0,
            name: "shard-1".into(),
            role,
            status: ExitStatus::from_raw(raw),
            ran_for: Duration::from_secs(5),
            log: "/run/shard-1.log".into(),
        };
        let (killed, failed, ok) = (9, 1 << 8, 0);
        use Stage::{Serving, Starting};
        assert_eq!(
            verdict(&exit(Role::Joiner, killed), Serving),
            Verdict::Restart
        );
        assert_eq!(
            verdict(&exit(Role::Joiner, failed), Serving),
            Verdict::Restart
        );
        assert_eq!(
            verdict(&exit(Role::Joiner, ok), Serving),
            Verdict::Drained,
            "a drained shard is not restarted"
        );
        assert_eq!(verdict(&exit(Role::Master, ok), Serving), Verdict::Drained);
        assert_eq!(
            verdict(&exit(Role::Bots, ok), Serving),
            Verdict::KeepRunning
        );
        assert_eq!(
            verdict(&exit(Role::Bots, failed), Serving),
            Verdict::KeepRunning
        );
        let stop = |v: Verdict| match v {
            Verdict::Stop(why) => why,
            other => panic!("expected a stop, got {other:?}"),
        };
        assert_eq!(
            verdict(&exit(Role::Master, killed), Serving),
            Verdict::Restart,
            "the others elect a successor; the process joins again"
        );
        let early_master = stop(verdict(&exit(Role::Master, killed), Starting));
        assert!(
            early_master.contains("before the cluster served"),
            "{early_master}"
        );
        let alone = stop(verdict(&exit(Role::Alone, failed), Serving));
        assert!(
            alone.contains("exited unexpectedly (exit status: 1)") && !alone.contains("master"),
            "{alone}"
        );
        let early = stop(verdict(&exit(Role::Joiner, killed), Starting));
        assert!(early.contains("before the cluster served"), "{early}");
    }

    /// A restart runs the child's command again and appends to its log, so the dead process's
    /// lines stay above the new header. Time is an input: the restart is due 1 s after `now`.
    #[cfg(unix)]
    #[test]
    fn a_restart_appends_to_the_log_under_a_restarted_header() {
        let dir = std::env::temp_dir().join(format!("zs-up-restart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let log = dir.join("shard-1.log");
        let mut children = Supervisor::default();
        let command = |_restart| {
            let mut c = Command::new("sh");
            c.args(["-c", "echo ran; exit 3"]).stdin(Stdio::piped());
            c
        };
        children
            .start("shard-1", Role::Joiner, &log, Box::new(command))
            .expect("sh starts");
        let wait_exit = |children: &mut Supervisor| {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Some(exit) = children.reap().expect("polls").pop() {
                    return exit;
                }
                assert!(Instant::now() < deadline, "sh exits");
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        let exit = wait_exit(&mut children);
        assert_eq!(exit.status.code(), Some(3));
        let now = Instant::now();
        assert_eq!(
            children.restart_later(&exit, now),
            (1, Duration::from_secs(1))
        );
        assert!(
            children.restart_due(now).expect("nothing due").is_empty(),
            "not before its backoff is up"
        );
        let lines = children
            .restart_due(now + Duration::from_secs(1))
            .expect("restarts");
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0]
                .starts_with("zonescaler up: restarting shard-1 (attempt 1, after 1 s) as pid "),
            "{lines:?}"
        );
        assert!(
            children
                .restart_due(now + Duration::from_secs(2))
                .expect("once")
                .is_empty(),
            "a restart happens once"
        );
        wait_exit(&mut children);
        children.stop_all();
        let text = std::fs::read_to_string(&log).expect("log");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].starts_with("=== zonescaler up: shard-1 started at unix time "));
        assert_eq!(
            lines[1], "ran",
            "the first run's output survives the restart"
        );
        assert!(
            lines[2].starts_with(
                "=== zonescaler up: shard-1 restarted (attempt 1), started at unix time "
            ) && lines[2].ends_with(": sh -c 'echo ran; exit 3'"),
            "{}",
            lines[2]
        );
        assert_eq!(lines[3], "ran");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn next_steps_are_pasteable_commands() {
        let dir = PathBuf::from("/tmp/my run");
        let files = RunFiles {
            cluster_cert: dir.join("cluster.pem"),
            cluster_key: dir.join("cluster.key"),
            login_key: dir.join("login.key"),
            login_pub: dir.join("login.pub"),
            api_token: dir.join("api.token"),
            secret_file: dir.join("cluster.secret"),
            secret: String::new(),
        };
        let shard = |i: u16| ShardInfo {
            name: format!("shard-{i}"),
            addr: format!("127.0.0.1:{}", 4433 + i),
            metrics: format!("127.0.0.1:{}", 9100 + i),
            cert: dir.join(format!("shard-{i}.pem")),
            log: dir.join(format!("shard-{i}.log")),
            pid: 700 + u32::from(i),
        };
        let opts = UpOptions {
            metrics_port: Some(9100),
            ..up_options(2, &dir)
        };
        let lines = next_steps(
            &opts,
            &[shard(0), shard(1)],
            &files,
            "target/debug/zonescaler",
        );
        let text = lines.join("\n");
        for want in [
            "  dashboard  http://127.0.0.1:8080/",
            "  API        http://127.0.0.1:8080/api/cluster",
            "curl -H \"Authorization: Bearer $(cat '/tmp/my run/api.token')\" http://127.0.0.1:8080/api/players/NAME",
            "  shard-1    127.0.0.1:4434  metrics http://127.0.0.1:9101/metrics  (pid 701, log /tmp/my run/shard-1.log)",
            "  target/debug/zonescaler bots --connect 127.0.0.1:4433 --cert '/tmp/my run/cluster.pem' --login-key '/tmp/my run/login.key' --bots 100 --duration 60s --scenario border",
            "  ZONESCALER_CLUSTER_SECRET=$(cat '/tmp/my run/cluster.secret') target/debug/zonescaler shard --world assets/worlds/default.toml --join 127.0.0.1:5433 --listen 127.0.0.1:4435 --link-listen 127.0.0.1:5435 --metrics 127.0.0.1:9102",
            "  target/debug/zonescaler drain --shard 1 --http 127.0.0.1:8080 --token-file '/tmp/my run/api.token'",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
        let alone = next_steps(
            &UpOptions { shards: 1, ..opts },
            &[shard(0)],
            &files,
            "zonescaler",
        );
        let alone = alone.join("\n");
        assert!(
            !alone.contains("dashboard  http")
                && !alone.contains("--scenario")
                && !alone.contains("drain"),
            "{alone}"
        );
    }

    /// `up`'s defaults for `shards` shards writing to `run_dir`.
    fn up_options(shards: usize, run_dir: &Path) -> UpOptions {
        UpOptions {
            shards,
            world: "assets/worlds/default.toml".into(),
            bots: 0,
            bot_duration: "60s".into(),
            host: "127.0.0.1".into(),
            port: 4433,
            link_port: 5433,
            http: "127.0.0.1:8080".into(),
            metrics_port: None,
            bot_scenario: "wander".into(),
            run_dir: run_dir.to_path_buf(),
            weights: Vec::new(),
        }
    }

    #[test]
    fn weights_are_one_per_shard_and_in_range() {
        let opts = |weights: Vec<u32>| UpOptions {
            weights,
            ..up_options(3, Path::new("target/zonescaler-run"))
        };
        assert!(check_options(&opts(vec![])).is_ok(), "1 each by default");
        assert!(check_options(&opts(vec![1, 1, 2])).is_ok());
        let short = check_options(&opts(vec![1, 2])).expect_err("two for three");
        assert!(short.to_string().contains("one per shard"), "{short}");
        let zero = check_options(&opts(vec![1, 0, 2])).expect_err("weight 0");
        assert!(zero.to_string().contains("1..=1000"), "{zero}");
    }

    #[test]
    fn shell_words_are_quoted_only_when_they_need_it() {
        assert_eq!(
            shell_word("target/debug/zonescaler"),
            "target/debug/zonescaler"
        );
        assert_eq!(shell_word("127.0.0.1:4433"), "127.0.0.1:4433");
        assert_eq!(shell_word("/tmp/my run"), "'/tmp/my run'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        assert_eq!(shell_word(""), "''");
    }
}
