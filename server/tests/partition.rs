//! Shard processes whose links are cut off the network (the test-only fault switch,
//! `ZONESCALER_TEST_FAULTS=1` and `POST /api/debug/partition?ms=N`):
//!
//! - cut for 5 s, past the master's silence: the cut-off shard pauses within its lease, before
//!   the master may give its cells away (so no cell ever has two owners), the others take its
//!   cells, and after the heal it learns it is fenced and stops; restarted, it rejoins;
//! - cut past QUIC's idle timeout but within a long silence: every link of the shard drops, is
//!   redialled after the heal, and the frames in flight or queued meanwhile are sent again:
//!   handoffs go on, no entity lost or doubled.
#![cfg(target_os = "linux")]

use std::cell::RefCell;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const SECRET: &str = "the-cluster-secret-of-the-partition-test";
const WORLD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../assets/worlds/default.toml");

/// A running shard process with test faults enabled; killed when dropped.
struct Shard {
    child: Child,
    /// Lines of its standard output, each with when the test read it.
    lines: mpsc::Receiver<(Instant, String)>,
    /// The lines read so far.
    seen: RefCell<Vec<(Instant, String)>>,
}

impl Drop for Shard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Shard {
    fn start(world: &str, args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_zonescaler"))
            .arg("shard")
            .args(["--world", world, "--listen", "127.0.0.1:0"])
            .args(["--link-listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
            .args(["--metrics", "127.0.0.1:0"])
            .args(args)
            .env("ZONESCALER_CLUSTER_SECRET", SECRET)
            .env("ZONESCALER_TEST_FAULTS", "1")
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("zonescaler starts");
        let out = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send((Instant::now(), l)).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: RefCell::default(),
        }
    }

    /// The first output line containing `marker` (waiting up to `limit`), and when it came.
    fn line_within(&self, marker: &str, limit: Duration) -> (Instant, String) {
        if let Some(hit) = self.seen.borrow().iter().find(|(_, l)| l.contains(marker)) {
            return hit.clone();
        }
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.borrow_mut().push(line.clone());
                    if line.1.contains(marker) {
                        return line;
                    }
                }
                Err(_) => panic!("no line with `{marker}` within {limit:?}"),
            }
        }
    }

    fn line_with(&self, marker: &str) -> String {
        self.line_within(marker, Duration::from_secs(30)).1
    }

    /// Its HTTP address (`--http`), read from its output.
    fn http(&self) -> String {
        self.address("dashboard on")
    }

    /// The address after `http://` on its line with `marker`.
    fn address(&self, marker: &str) -> String {
        let line = self.line_with(marker);
        line.split("http://")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .expect("an HTTP address")
            .to_string()
    }

    /// Exit status and standard error once it exits (waits up to `limit`).
    fn wait_exit(mut self, limit: Duration) -> (i32, String) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                return (status.code().unwrap_or(-1), err);
            }
            assert!(Instant::now() < deadline, "the process did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// One HTTP/1.1 request: (status, body).
fn http(addr: &str, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("HTTP connects");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("response");
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (code, body)
}

fn cluster_view(addr: &str) -> serde_json::Value {
    match http(addr, "GET", "/api/cluster", None) {
        (200, body) => serde_json::from_str(&body).unwrap_or_default(),
        _ => serde_json::Value::Null,
    }
}

/// Cut `shard`'s links for `ms`.
fn partition(shard: &Shard, ms: u64) {
    let token = zonescaler_shared::token::api_token(SECRET.as_bytes());
    let path = format!("/api/debug/partition?ms={ms}");
    let (code, body) = http(&shard.http(), "POST", &path, Some(&token));
    assert_eq!(code, 202, "the fault switch answers: {body}");
}

/// Poll the API every 20 ms until `done` holds of it: the view, when it was read, and when the
/// last read before it started (the condition did not hold then).
fn wait_view(
    addr: &str,
    what: &str,
    limit: Duration,
    done: impl Fn(&serde_json::Value) -> bool,
) -> (serde_json::Value, Instant, Instant) {
    let start = Instant::now();
    let mut before = start;
    loop {
        let asked = Instant::now();
        let view = cluster_view(addr);
        if done(&view) {
            return (view, Instant::now(), before);
        }
        before = asked;
        assert!(
            start.elapsed() < limit,
            "not within {limit:?}: {what}\nshards: {}\nevents: {}",
            view["shards"],
            view["events"]
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The member serving clients at `addr`: (id, leaves it owns, alive).
fn member_at(view: &serde_json::Value, addr: &str) -> Option<(u64, usize, bool)> {
    let s = view["shards"]
        .as_array()?
        .iter()
        .find(|s| s["addr"] == addr)?;
    let id = s["id"].as_u64()?;
    let cells = view["cells"]
        .as_array()?
        .iter()
        .filter(|c| c["shard"].as_u64() == Some(id))
        .count();
    Some((id, cells, s["alive"] == true))
}

fn listen_addr(shard: &Shard) -> String {
    let line = shard.line_with("shard listening on");
    line.split("listening on ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .expect("an address")
        .to_string()
}

/// The default world with `[cluster] shard_silence_ms = silence_ms`, in a temporary file.
fn world_with_silence(silence_ms: u64, name: &str) -> String {
    let text = std::fs::read_to_string(WORLD).expect("the default world");
    let text = text.replace(
        "shard_silence_ms = 3000",
        &format!("shard_silence_ms = {silence_ms}"),
    );
    assert!(text.contains(&format!("shard_silence_ms = {silence_ms}")));
    let path = std::env::temp_dir().join(format!("zs-{name}-{}.toml", std::process::id()));
    std::fs::write(&path, text).expect("temp world");
    path.to_str().expect("utf-8 path").to_owned()
}

/// A master and `joiners` joined shards, every one owning cells: the master's HTTP address, its
/// link address, and the joiners with their client addresses.
fn cluster(world: &str, joiners: usize) -> (Shard, String, String, Vec<(Shard, String)>) {
    let expect = (joiners + 1).to_string();
    let master = Shard::start(world, &["--expect-shards", &expect]);
    let api = master.http();
    let waiting = master.line_with("master waiting");
    let links = waiting.rsplit(' ').next().expect("link address").to_owned();
    // The cluster forms once all have joined: only then do they serve.
    let started: Vec<Shard> = (0..joiners)
        .map(|_| Shard::start(world, &["--join", &links]))
        .collect();
    let shards: Vec<(Shard, String)> = started
        .into_iter()
        .map(|s| {
            let addr = listen_addr(&s);
            (s, addr)
        })
        .collect();
    wait_view(
        &api,
        "every member with cells",
        Duration::from_secs(60),
        |v| {
            shards
                .iter()
                .all(|(_, a)| member_at(v, a).is_some_and(|(_, cells, _)| cells > 0))
        },
    );
    (master, api, links, shards)
}

/// A metric's value in a shard's `/metrics` (0 when not published yet).
fn metric(shard: &Shard, name_and_labels: &str) -> f64 {
    let (_, body) = http(&shard.address("metrics on"), "GET", "/metrics", None);
    body.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// At the default silence (3 s: leases of 2 s), one shard's links cut for 5 s.
#[test]
fn a_shard_cut_off_pauses_within_its_lease_loses_its_cells_and_rejoins_after_the_heal() {
    const SILENCE_MS: u64 = 3_000;
    const LEASE_MS: u64 = SILENCE_MS * 2 / 3;
    const CUT_MS: u64 = 5_000;
    let world = world_with_silence(SILENCE_MS, "partition");
    let (master, api, links, mut shards) = cluster(&world, 3);
    let (victim, victim_addr) = shards.remove(1);
    // Two seconds of play: the master has answered its heartbeats, so it holds a full lease.
    let (view, _, _) = wait_view(&api, "two seconds of play", Duration::from_secs(30), |v| {
        (v["shards"].as_array().into_iter().flatten())
            .find(|s| s["addr"] == victim_addr.as_str())
            .is_some_and(|s| s["tick"].as_u64().unwrap_or(0) >= 60)
    });
    let (victim_id, _, _) = member_at(&view, &victim_addr).expect("a member");
    let cells = view["cells"].as_array().expect("cells").len();

    partition(&victim, CUT_MS);
    let cut = Instant::now();
    let (paused, _) = victim.line_within("lease lapsed", Duration::from_millis(CUT_MS));
    let pause_ms = paused.duration_since(cut).as_millis() as u64;
    eprintln!("the cut-off shard paused {pause_ms} ms after the cut");
    assert!(
        pause_ms <= LEASE_MS + 300,
        "it paused within its lease ({LEASE_MS} ms) of its last answered heartbeat: {pause_ms} ms"
    );
    let (view, seen, not_yet) = wait_view(
        &api,
        "the cut-off shard declared dead and its cells owned by the others",
        Duration::from_millis(SILENCE_MS + 5_000),
        |v| {
            let dead = member_at(v, &victim_addr).is_some_and(|(_, _, alive)| !alive);
            let gone = (v["cells"].as_array())
                .is_some_and(|c| c.iter().all(|c| c["shard"].as_u64() != Some(victim_id)));
            dead && gone
        },
    );
    eprintln!(
        "its cells were on the others {} ms after the cut",
        seen.duration_since(cut).as_millis()
    );
    assert!(
        paused < not_yet,
        "no two owners: the cut-off shard had paused ({pause_ms} ms) before the master gave its \
         cells away (still its own {} ms after the cut)",
        not_yet.duration_since(cut).as_millis()
    );
    assert_eq!(view["cells"].as_array().expect("cells").len(), cells);
    for (s, addr) in &shards {
        let (_, owns, alive) = member_at(&view, addr).expect("still a member");
        assert!(alive && owns > 0, "the others play on: {addr}");
        assert_eq!(
            metric(s, "zonescaler_lease_lapses_total"),
            0.0,
            "{addr} never paused"
        );
    }

    // The heal: its links carry the master's news, and it stops rather than play on.
    let (code, stderr) = victim.wait_exit(Duration::from_millis(CUT_MS + 10_000));
    let stopped_ms = cut.elapsed().as_millis();
    eprintln!("it stopped {stopped_ms} ms after the cut (healed at {CUT_MS} ms)");
    assert_ne!(code, 0, "a fenced shard does not exit as if drained");
    assert!(
        stderr.contains("lost its ownership lease"),
        "it says why it stopped: {stderr}"
    );
    let view = cluster_view(&api);
    assert!(
        (view["cells"].as_array())
            .is_some_and(|c| c.iter().all(|c| c["shard"].as_u64() != Some(victim_id))),
        "it took nothing back: {view}"
    );

    // Restarted (as `zonescaler up` does), it rejoins as a new member and gets cells again.
    let restarted = Shard::start(&world, &["--join", &links]);
    let addr = listen_addr(&restarted);
    let again = Instant::now();
    let (_, seen, _) = wait_view(
        &api,
        "the restarted shard a member with cells",
        Duration::from_secs(60),
        |v| {
            member_at(v, &addr)
                .is_some_and(|(id, cells, alive)| alive && cells > 0 && id != victim_id)
        },
    );
    eprintln!(
        "restarted, it owned cells again {} ms later",
        seen.duration_since(again).as_millis()
    );
    drop((master, shards, restarted));
    let _ = std::fs::remove_file(&world);
}

/// The sum of a per-shard field of the view over the living shards.
fn total(view: &serde_json::Value, field: &str) -> u64 {
    (view["shards"].as_array().into_iter().flatten())
        .filter(|s| s["alive"] == true)
        .filter_map(|s| s[field].as_u64())
        .sum()
}

/// With a silence of 60 s (leases of 40 s), one shard's links cut for longer than QUIC's idle
/// timeout: every one of its links drops (both ends see it go), the shard stays a member, and
/// once the cut heals the larger id of each pair redials. What was in flight when the links
/// dropped, and what was queued while they were down, is sent again and delivered once.
#[test]
fn links_dropped_by_a_long_cut_are_redialled_and_handoffs_go_on_with_nothing_lost_or_doubled() {
    const SILENCE_MS: u64 = 60_000;
    let cut_ms = zonescaler_shared::limits::IDLE_TIMEOUT_MS + 2_000;
    let world = world_with_silence(SILENCE_MS, "redial");
    let (master, api, _, shards) = cluster(&world, 2);
    let npcs = 1_000;
    // Play until handoffs cross the borders, every entity owned by someone.
    let (before, _, _) = wait_view(&api, "handoffs under way", Duration::from_secs(60), |v| {
        v["handoffs_total"].as_u64().unwrap_or(0) > 20 && total(v, "owned_entities") == npcs
    });
    let (victim, victim_addr) = &shards[1];
    let (victim_id, _, _) = member_at(&before, victim_addr).expect("a member");

    partition(victim, cut_ms);
    let cut = Instant::now();
    // A link of the victim drops once the idle timeout passes, and the victim (the larger id)
    // redials it. Not necessarily both: QUIC's idle timeout is at least three probe timeouts,
    // and the probe timeout backs off while nothing is acknowledged, so a link that carries
    // traffic every tick (the buddy's replica stream) can outlive a 12 s cut and simply resume
    // when it heals. What counts is the rest: everything goes on, nothing lost or doubled.
    let redialled = || metric(victim, "zonescaler_link_redials_total{outcome=\"up\"}");
    let deadline = cut + Duration::from_millis(cut_ms + 20_000);
    while redialled() < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the victim redialled a dropped link"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "{} links redialled {} ms after the cut (healed at {cut_ms} ms); failed dials meanwhile: {}",
        redialled(),
        cut.elapsed().as_millis(),
        metric(victim, "zonescaler_link_redials_total{outcome=\"failed\"}")
    );
    assert!(
        cut.elapsed() >= Duration::from_millis(cut_ms),
        "not before the heal: the cut drops everything"
    );
    let resent = metric(
        victim,
        "zonescaler_link_frames_again_total{outcome=\"resent\"}",
    ) + metric(
        &shards[0].0,
        "zonescaler_link_frames_again_total{outcome=\"resent\"}",
    ) + metric(
        &master,
        "zonescaler_link_frames_again_total{outcome=\"resent\"}",
    );
    eprintln!("frames sent again after the redials: {resent}");

    // The shard was never declared dead, and handoffs go on across its borders.
    let handoffs = before["handoffs_total"].as_u64().unwrap_or(0);
    let (after, _, _) = wait_view(
        &api,
        "handoffs after the heal, every entity owned once and none frozen",
        Duration::from_secs(30),
        |v| {
            v["handoffs_total"].as_u64().unwrap_or(0) > handoffs + 20
                && total(v, "owned_entities") == npcs
                && total(v, "in_transit") == 0
        },
    );
    let (_, cells, alive) = member_at(&after, victim_addr).expect("still a member");
    assert!(alive && cells > 0, "the cut shard kept its place: {after}");
    assert_eq!(
        member_at(&after, victim_addr).map(|m| m.0),
        Some(victim_id),
        "as the same member"
    );
    assert_eq!(
        metric(victim, "zonescaler_lease_lapses_total"),
        0.0,
        "a 40 s lease outlasts the cut"
    );
    let events = after["events"].to_string();
    assert!(
        !events.contains("failover"),
        "nobody was declared dead: {events}"
    );
    drop((master, shards));
    let _ = std::fs::remove_file(&world);
}
