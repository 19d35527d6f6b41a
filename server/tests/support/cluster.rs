//! A real local cluster for integration tests: `zonescaler up --shards N` on free ports with a
//! fresh run directory, and `zonescaler bots` against it, both the binary under test.
//!
//! [`LocalCluster`] waits until `up` says every shard serves and the master's `/api/cluster`
//! answers, and reads the dashboard's address from shard 0's output (it serves HTTP on port 0).
//! Dropping it (also while a test panics) stops `up` with Ctrl-C the way a terminal would (its
//! shards stop with it), kills what is left and removes the run directory; [`Bots`] are killed
//! when dropped. A watchdog shell does the same if the test process itself is killed, so no
//! shard or bot outlives its test.
//!
//! ```ignore
//! let cluster = LocalCluster::up(4);
//! let view = cluster.api_cluster();
//! let _bots = cluster.bots(20, "20s", "border");
//! ```

use std::io::{BufRead, BufReader, Read};
use std::net::{TcpListener, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::watchdog;
use super::webdriver::http;

const ZONESCALER: &str = env!("CARGO_BIN_EXE_zonescaler");
const WORLD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../assets/worlds/default.toml");

/// How long `up` may take until every shard serves: it waits 90 s for its shards itself, and
/// the machines here have two busy cores.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long after Ctrl-C `up` may take to stop its shards (it gives them 5 s) before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Starts with fresh ports when `up` dies at start (a port taken between the probe and the bind).
const START_TRIES: usize = 3;
/// Most bytes of the processes' output kept for failure messages.
const LOG_TAIL_BYTES: usize = 16 << 10;

/// A running `zonescaler up --shards N`.
pub struct LocalCluster {
    child: Child,
    watchdog: Option<Child>,
    run_dir: PathBuf,
    /// `host:port` of the master's dashboard and HTTP API.
    pub http: String,
    /// The first shard's client address (bots connect here and are redirected).
    pub connect: String,
    log: Log,
}

impl LocalCluster {
    /// Starts `zonescaler up --shards shards` on the default world and waits until every shard
    /// serves and the master's `/api/cluster` shows all of them alive with the cells placed.
    /// Panics with `up`'s output if it does not get there.
    pub fn up(shards: usize) -> Self {
        let mut tries = 0;
        loop {
            tries += 1;
            match Self::try_up(shards) {
                Ok(cluster) => return cluster,
                // It died at once, most likely on a port taken since the probe: fresh ports.
                Err(Start::Died(_)) if tries < START_TRIES => {}
                Err(Start::Died(why) | Start::Stuck(why)) => {
                    panic!("zonescaler up --shards {shards} did not start (try {tries}): {why}")
                }
            }
        }
    }

    fn try_up(shards: usize) -> Result<Self, Start> {
        let ports = free_port_ranges(shards);
        let run_dir = fresh_dir("cluster");
        let mut child = Command::new(ZONESCALER)
            .arg("up")
            .args(["--shards", &shards.to_string(), "--world", WORLD])
            .args(["--port", &ports.client.to_string()])
            .args(["--link-port", &ports.link.to_string()])
            .args(["--metrics-port", &ports.metrics.to_string()])
            .args(["--http", &format!("127.0.0.1:{}", ports.http), "--run-dir"])
            .arg(&run_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group, as a terminal would start it, so the test's signals stay its own.
            .process_group(0)
            .spawn()
            .map_err(|e| {
                let _ = std::fs::remove_dir_all(&run_dir);
                Start::Stuck(format!("cannot start {ZONESCALER}: {e}"))
            })?;
        let log = Log::default();
        let lines = log.drain(&mut child);
        let mut cluster = Self {
            watchdog: watchdog::spawn(child.id(), "INT", 10, &run_dir),
            child,
            run_dir,
            http: format!("127.0.0.1:{}", ports.http),
            connect: format!("127.0.0.1:{}", ports.client),
            log,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match lines.recv_timeout(left) {
                Ok(line) => line,
                Err(RecvTimeoutError::Timeout) => {
                    return Err(Start::Stuck(format!(
                        "not serving after {START_TIMEOUT:?}; output:\n{}",
                        cluster.log.tail()
                    )));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = cluster.child.wait().map(|s| s.to_string());
                    return Err(Start::Died(format!(
                        "exited during start ({status:?}); output:\n{}",
                        cluster.log.tail()
                    )));
                }
            };
            // `up` prints this once every shard wrote its certificate, i.e. serves.
            if line.starts_with("Ctrl-C stops the cluster") {
                break;
            }
        }
        cluster
            .wait_api(|v| {
                v["placed"] == Value::Bool(true)
                    && v["shards"].as_array().is_some_and(|s| {
                        s.len() == shards && s.iter().all(|s| s["alive"] == Value::Bool(true))
                    })
            })
            .map_err(|e| Start::Stuck(format!("{e}\noutput:\n{}", cluster.log.tail())))?;
        Ok(cluster)
    }

    /// `http://host:port/`, the dashboard.
    pub fn dashboard_url(&self) -> String {
        format!("http://{}/", self.http)
    }

    /// The run directory (certificate, login key, API token).
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// `GET /api/cluster` as JSON; panics (with the answer) on anything but a 200 with JSON.
    pub fn api_cluster(&self) -> Value {
        self.try_api_cluster()
            .unwrap_or_else(|e| panic!("GET http://{}/api/cluster: {e}", self.http))
    }

    fn try_api_cluster(&self) -> Result<Value, String> {
        let (status, body) = http(
            &self.http,
            "GET",
            "/api/cluster",
            None,
            Duration::from_secs(10),
        )
        .map_err(|e| e.to_string())?;
        if status != 200 {
            return Err(format!("HTTP {status}: {body}"));
        }
        serde_json::from_str(&body).map_err(|e| format!("not JSON ({e}): {body}"))
    }

    /// Polls `/api/cluster` until `done` holds for it (at most [`START_TIMEOUT`]); the last
    /// answer, or why not with the last answer.
    pub fn wait_api(&self, mut done: impl FnMut(&Value) -> bool) -> Result<Value, String> {
        let start = Instant::now();
        loop {
            let last = self.try_api_cluster();
            match &last {
                Ok(v) if done(v) => return Ok(v.clone()),
                _ if start.elapsed() > START_TIMEOUT => {
                    return Err(format!(
                        "/api/cluster not as expected after {START_TIMEOUT:?}; last: {last:?}"
                    ));
                }
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// Starts `zonescaler bots --bots n --duration duration --scenario scenario` against this
    /// cluster, logging in with tickets from its login key.
    pub fn bots(&self, n: usize, duration: &str, scenario: &str) -> Bots {
        let mut child = Command::new(ZONESCALER)
            .arg("bots")
            .args(["--connect", &self.connect, "--cert"])
            .arg(self.run_dir.join("cluster.pem"))
            .arg("--login-key")
            .arg(self.run_dir.join("login.key"))
            .args(["--bots", &n.to_string(), "--duration", duration])
            .args(["--scenario", scenario, "--quiet"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {ZONESCALER} bots: {e}"));
        let log = Log::default();
        drop(log.drain(&mut child));
        Bots {
            watchdog: watchdog::spawn(child.id(), "KILL", 0, Path::new("")),
            child,
            log,
        }
    }

    /// The last lines `up` and its shards printed (for failure messages).
    pub fn log_tail(&self) -> String {
        self.log.tail()
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        // Ctrl-C: `up` closes its shards' stdin and they stop; kill whatever is slower than that.
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        watchdog::stop(self.watchdog.take());
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}

/// Why `up` did not start: it died (worth a try on fresh ports), or it runs but never got to
/// serving (not worth another two minutes).
enum Start {
    Died(String),
    Stuck(String),
}

/// A running `zonescaler bots`; killed when dropped.
pub struct Bots {
    child: Child,
    watchdog: Option<Child>,
    log: Log,
}

impl Bots {
    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// What the bots printed so far (their report once they finished).
    pub fn log_tail(&self) -> String {
        self.log.tail()
    }
}

impl Drop for Bots {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        watchdog::stop(self.watchdog.take());
    }
}

/// The tail of a child's standard output and error, interleaved as they came.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<String>>);

impl Log {
    /// Reads the child's stdout (lines also sent to the returned channel) and stderr on threads,
    /// so neither it nor a grandchild that inherited the pipes blocks on a full pipe.
    fn drain(&self, child: &mut Child) -> Receiver<String> {
        let (tx, rx) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            let log = self.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    log.push(&line);
                    let _ = tx.send(line); // nobody listening any more is fine
                }
            });
        }
        if let Some(mut err) = child.stderr.take() {
            let log = self.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = err.read(&mut buf) {
                    log.push_raw(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        rx
    }

    fn push(&self, line: &str) {
        self.push_raw(&format!("{line}\n"));
    }

    fn push_raw(&self, text: &str) {
        let mut log = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        log.push_str(text);
        if log.len() > 2 * LOG_TAIL_BYTES {
            let cut = log.len() - LOG_TAIL_BYTES;
            let cut = (cut..log.len())
                .find(|i| log.is_char_boundary(*i))
                .unwrap_or(0);
            log.replace_range(..cut, "");
        }
    }

    fn tail(&self) -> String {
        let log = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Tracing's colours make a failure message hard to read.
        strip_ansi(&log)
    }
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// First ports of the three ranges `up` binds, `shards` ports each, all free when probed.
struct Ports {
    client: u16,
    link: u16,
    metrics: u16,
    /// The master's dashboard and API (one TCP port).
    http: u16,
}

fn free_port_ranges(shards: usize) -> Ports {
    let span = u16::try_from(shards).expect("a test cluster has few shards");
    let mut seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id().rotate_left(16)
        | 1; // xorshift never leaves 0
    let mut next = || {
        // xorshift: enough to spread tests running at once over the range.
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        20_000 + u16::try_from(seed % 30_000).unwrap_or(0)
    };
    let udp_free = |p: u16| (p..p + span).all(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok());
    let tcp_free = |p: u16| (p..p + span).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok());
    let mut pick = |free: &dyn Fn(u16) -> bool| loop {
        let p = next();
        if free(p) {
            break p;
        }
    };
    let client = pick(&udp_free);
    let link = pick(&|p| udp_free(p) && (p + span <= client || p >= client + span));
    let metrics = pick(&tcp_free);
    let http = pick(&|p| tcp_free(p) && (p + span <= metrics || p >= metrics + span));
    Ports {
        client,
        link,
        metrics,
        http,
    }
}

/// A new folder under the system temp dir, unique to this process and call.
fn fresh_dir(what: &str) -> PathBuf {
    static COUNT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "zonescaler-test-{what}-{}-{}",
        std::process::id(),
        COUNT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}
