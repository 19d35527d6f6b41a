//! Shard processes forming a cluster for real (QUIC links on loopback): only a process with the
//! cluster secret can join, and the master's `GET /api/cluster` shows the formed cluster.
#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const SECRET: &str = "the-cluster-secret-of-this-test";
const WORLD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../assets/worlds/default.toml");

/// A running shard process; killed when dropped.
struct Shard {
    child: Child,
    /// Lines of its standard output, as they come.
    lines: mpsc::Receiver<String>,
}

impl Drop for Shard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Shard {
    fn start(args: &[&str], secret: &str) -> Self {
        Self::start_in(WORLD, args, secret)
    }

    /// [`Self::start`] with the world file `world`.
    fn start_in(world: &str, args: &[&str], secret: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_zonescaler"))
            .arg("shard")
            .args([
                "--world",
                world,
                "--listen",
                "127.0.0.1:0",
                "--link-listen",
                "127.0.0.1:0",
            ])
            .args(args)
            .env("ZONESCALER_CLUSTER_SECRET", secret)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("zonescaler starts");
        let out = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// The first output line containing `marker` (waits up to 30 s).
    fn line_with(&self, marker: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(marker) => return l,
                Ok(_) => {}
                Err(_) => panic!("no line with `{marker}` within 30 s"),
            }
        }
    }

    /// Exit status and standard error once it exits (waits up to 30 s).
    fn wait_exit(mut self) -> (i32, String) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                return (status.code().unwrap_or(-1), err);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the process did not exit"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `http://ADDR/api/cluster` from a line like `... dashboard on http://127.0.0.1:1234/ ...`.
fn http_get(line: &str) -> (u16, String) {
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .expect("an HTTP address");
    let mut s = std::net::TcpStream::connect(addr).expect("HTTP connects");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET /api/cluster HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("response");
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    let body = resp
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (code, body)
}

#[test]
fn only_a_process_with_the_cluster_secret_can_join() {
    let master = Shard::start(&["--expect-shards", "2", "--http", "127.0.0.1:0"], SECRET);
    let http = master.line_with("dashboard on");
    let waiting = master.line_with("master waiting");
    let links = waiting
        .rsplit(' ')
        .next()
        .expect("the master's link address")
        .to_string();

    let intruder = Shard::start(&["--join", &links], "not-the-secret-of-this-cluster");
    let (code, stderr) = intruder.wait_exit();
    assert_ne!(code, 0, "a process without the secret must not join");
    assert!(
        stderr.contains("not a member") || stderr.contains("not_a_member"),
        "the refusal says why: {stderr}"
    );
    let (status, body) = http_get(&http);
    assert_eq!(
        status, 503,
        "the cluster has not formed: the intruder is no member ({body})"
    );

    let member = Shard::start(&["--join", &links], SECRET);
    member.line_with("linked");
    master.line_with("linked");
    // The master publishes its view once its world is built, a moment after linking.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (status, body) = loop {
        let (status, body) = http_get(&http);
        if status == 200 || std::time::Instant::now() > deadline {
            break (status, body);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status, 200, "{body}");
    for field in [
        "\"epoch\":1",
        "\"total_entities\":",
        "\"handoffs_total\":",
        "\"shards\":",
        "\"tick_ms_p99\":",
        "\"owned_entities\":",
        "\"proxies\":",
        "\"clients\":",
        "\"cells\":",
        "\"alive\":true",
        "\"weight\":1",
    ] {
        assert!(body.contains(field), "/api/cluster has {field}: {body}");
    }
    assert!(
        body.contains("\"id\":0") && body.contains("\"id\":1") && !body.contains("\"id\":2"),
        "two members, the intruder not among them: {body}"
    );
    both_shards_report_their_measured_load(&http);
}

/// Every shard's heartbeat carries what its runtime measured over the last window: the tick
/// thread's CPU (1,000 NPCs wander, so it is never idle), tick times, memory, and a tick share
/// for the cells holding them.
fn both_shards_report_their_measured_load(http: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let measured = |s: &serde_json::Value| {
        s["ticks"].as_u64() > Some(0)
            && s["window_ms"].as_u64() > Some(0)
            && s["tick_cpu_share"].as_f64() > Some(0.0)
    };
    let view = loop {
        let (_, body) = http_get(http);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let shards = v["shards"].as_array().cloned().unwrap_or_default();
        if shards.len() == 2 && shards.iter().all(measured) {
            break v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no measured load from both shards within 20 s: {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    for s in view["shards"].as_array().expect("shards") {
        let share = s["tick_cpu_share"].as_f64().expect("a number");
        assert!(share > 0.0 && share <= 1.0, "{s}");
        let cpu_ms = s["tick_cpu_ms"].as_f64().expect("a number");
        let window_ms = s["window_ms"].as_f64().expect("a number");
        assert!(
            (cpu_ms / window_ms - share).abs() < 0.01,
            "the share is the window's CPU over its wall time: {s}"
        );
        assert!(
            s["tick_ms_p99"].as_f64() >= s["tick_ms_p50"].as_f64(),
            "{s}"
        );
        assert!(s["rss_bytes"].as_u64() > Some(1 << 20), "{s}");
        assert!(s["process_cpu_share"].as_f64() > Some(0.0), "{s}");
    }
    let cells = view["cells"].as_array().expect("cells");
    assert!(
        cells.iter().any(|c| c["tick_share"].as_f64() > Some(0.0)),
        "the NPCs' cells carry a share of their owners' ticks"
    );
}

#[test]
fn a_cluster_without_a_secret_is_refused_at_start() {
    let out = Command::new(env!("CARGO_BIN_EXE_zonescaler"))
        .args(["shard", "--expect-shards", "2", "--world", WORLD])
        .env_remove("ZONESCALER_CLUSTER_SECRET")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ZONESCALER_CLUSTER_SECRET"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_zonescaler"))
        .args(["shard", "--expect-shards", "2", "--world", WORLD])
        .env("ZONESCALER_CLUSTER_SECRET", "short")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("at least 16 bytes"), "{err}");
}

/// `GET /api/cluster` as JSON (`Null` while the master does not answer 200).
fn cluster_view(http: &str) -> serde_json::Value {
    match http_get(http) {
        (200, body) => serde_json::from_str(&body).unwrap_or_default(),
        _ => serde_json::Value::Null,
    }
}

/// The client address a shard prints once it serves.
fn listen_addr(shard: &Shard) -> String {
    let line = shard.line_with("shard listening on");
    line.split("listening on ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .expect("an address")
        .to_string()
}

/// The member id serving clients at `addr`, and how many leaves it owns.
fn member_at(view: &serde_json::Value, addr: &str) -> Option<(u64, usize)> {
    let id = view["shards"]
        .as_array()?
        .iter()
        .find(|s| s["addr"] == addr)?["id"]
        .as_u64()?;
    let cells = view["cells"]
        .as_array()?
        .iter()
        .filter(|c| c["shard"].as_u64() == Some(id))
        .count();
    Some((id, cells))
}

/// Poll the API until `done` holds of it; the view and the time it took.
fn wait_view(
    http: &str,
    what: &str,
    limit: Duration,
    done: impl Fn(&serde_json::Value) -> bool,
) -> (serde_json::Value, Duration) {
    let start = std::time::Instant::now();
    loop {
        let view = cluster_view(http);
        if done(&view) {
            return (view, start.elapsed());
        }
        assert!(
            start.elapsed() < limit,
            "not within {limit:?}: {what}\nshards: {}\nevents: {}",
            view["shards"],
            view["events"]
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn epoch_of(view: &serde_json::Value) -> u64 {
    view["epoch"].as_u64().expect("an epoch")
}

/// The silence the failover test's world sets (`[cluster] shard_silence_ms`): the shortest
/// allowed, as the target of a cluster that recovers within 2 s asks.
const SILENCE_MS: u64 = 1_000;

/// A shard process killed outright loses its cells to the living within the master's silence
/// (`[cluster] shard_silence_ms`, 1 s here) and a balancing round; the rest keeps running. One
/// that stalls (here `SIGSTOP`, as a paused VM or a long GC would) past the silence has its cells
/// given away too, and when it wakes it learns it is fenced and stops rather than serving what
/// is no longer its own.
#[test]
fn dead_or_stalled_shards_lose_their_cells_to_the_living_and_a_stalled_one_stops_when_it_wakes() {
    let text = std::fs::read_to_string(WORLD).expect("the default world");
    let text = text.replace(
        "shard_silence_ms = 3000",
        &format!("shard_silence_ms = {SILENCE_MS}"),
    );
    assert!(text.contains(&format!("shard_silence_ms = {SILENCE_MS}")));
    let world = std::env::temp_dir().join(format!("zs-failover-{}.toml", std::process::id()));
    std::fs::write(&world, text).expect("temp world");
    let world_path = world.to_str().expect("utf-8 path").to_string();
    let start = |args: &[&str]| Shard::start_in(&world_path, args, SECRET);
    let master = start(&["--expect-shards", "3", "--http", "127.0.0.1:0"]);
    let http = master.line_with("dashboard on");
    let waiting = master.line_with("master waiting");
    let links = waiting
        .rsplit(' ')
        .next()
        .expect("link address")
        .to_string();
    let killed = start(&["--join", &links]);
    let stalled = start(&["--join", &links]);
    let (killed_addr, stalled_addr) = (listen_addr(&killed), listen_addr(&stalled));
    let (view, _) = wait_view(
        &http,
        "three members with cells",
        Duration::from_secs(30),
        |v| {
            [&killed_addr, &stalled_addr]
                .iter()
                .all(|a| member_at(v, a).is_some_and(|(_, cells)| cells > 0))
        },
    );
    let (killed_id, _) = member_at(&view, &killed_addr).expect("a member");
    let (stalled_id, _) = member_at(&view, &stalled_addr).expect("a member");
    let cells = view["cells"].as_array().expect("cells").len();
    let epoch = epoch_of(&view);

    // kill -9: no goodbye, its links just go quiet.
    let pid = killed.child.id().to_string();
    let status = Command::new("kill")
        .args(["-9", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let (view, took) = wait_view(
        &http,
        "the killed shard's cells owned by the living",
        Duration::from_millis(SILENCE_MS + 10_000),
        |v| {
            let dead = v["shards"]
                .as_array()
                .and_then(|s| s.iter().find(|s| s["id"].as_u64() == Some(killed_id)))
                .is_some_and(|s| s["alive"] == false);
            let owned = v["cells"]
                .as_array()
                .is_some_and(|c| c.iter().all(|c| c["shard"].as_u64() != Some(killed_id)));
            dead && owned
        },
    );
    assert!(
        took >= Duration::from_millis(SILENCE_MS - 300),
        "declared dead only after the silence, not at the first missed heartbeat: {took:?}"
    );
    assert!(
        took <= Duration::from_millis(SILENCE_MS + 2_000),
        "its cells were taken over {took:?} after the kill"
    );
    eprintln!("the killed shard's cells were taken over {took:?} after the kill");
    assert!(epoch_of(&view) > epoch, "under a new epoch");
    assert_eq!(
        view["cells"].as_array().expect("cells").len(),
        cells,
        "{view}"
    );
    let events = view["events"].to_string();
    assert!(
        events.contains("failover"),
        "the API says what happened: {events}"
    );

    // Two reports of the stalled-to-be shard after the failover: it holds the membership
    // without the dead one, so the master, with half of the two behind it, may still act when
    // this one falls silent (`Master::quorum`). Stalled before it knew, the strict majority
    // holds, and two of three gone stop the master, as they must.
    let tick_of = |v: &serde_json::Value| {
        (v["shards"].as_array().into_iter().flatten())
            .find(|s| s["id"].as_u64() == Some(stalled_id))
            .and_then(|s| s["tick"].as_u64())
    };
    for _ in 0..2 {
        let before = tick_of(&cluster_view(&http));
        wait_view(
            &http,
            "a report of the stalled-to-be shard",
            Duration::from_secs(10),
            |v| tick_of(v) != before,
        );
    }

    // SIGSTOP past the silence, then SIGCONT: its cells are gone meanwhile, and it stops.
    let pid = stalled.child.id().to_string();
    let signal = |sig: &str| {
        let ok = Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill");
        assert!(ok.success());
    };
    signal("-STOP");
    let (view, _) = wait_view(
        &http,
        "the stalled shard's cells owned by the living",
        Duration::from_millis(SILENCE_MS + 10_000),
        |v| {
            v["cells"]
                .as_array()
                .is_some_and(|c| c.iter().all(|c| c["shard"].as_u64() == Some(0)))
        },
    );
    assert_eq!(view["cells"].as_array().expect("cells").len(), cells);
    signal("-CONT");
    let (code, stderr) = stalled.wait_exit();
    assert_ne!(code, 0, "a fenced shard does not exit as if drained");
    assert!(
        stderr.contains("lost its ownership lease"),
        "it says why it stopped: {stderr}"
    );
    eprintln!(
        "the stalled shard, woken: {}",
        stderr
            .lines()
            .rfind(|l| l.contains("lease"))
            .unwrap_or_default()
    );
    let view = cluster_view(&http);
    assert!(
        view["cells"]
            .as_array()
            .is_some_and(|c| c.iter().all(|c| c["shard"].as_u64() == Some(0))),
        "it took nothing back: {view}"
    );
    assert_ne!(stalled_id, killed_id);
    drop(killed);
    let _ = std::fs::remove_file(&world);
}

/// Two shards, and the one that is not the master dies: the master, with half of the members
/// behind it and the silent half holding its membership, may still act (`cluster::election`),
/// so it declares the dead one after the default silence (3 s: far past the 1.35 s the dead
/// one's last promise runs), takes all its cells and keeps simulating.
#[test]
fn two_shards_survive_the_death_of_the_one_that_is_not_the_master() {
    let master = Shard::start(&["--expect-shards", "2", "--http", "127.0.0.1:0"], SECRET);
    let http = master.line_with("dashboard on");
    let waiting = master.line_with("master waiting");
    let links = waiting
        .rsplit(' ')
        .next()
        .expect("link address")
        .to_string();
    let other = Shard::start(&["--join", &links], SECRET);
    let other_addr = listen_addr(&other);
    let (view, _) = wait_view(
        &http,
        "two members with cells",
        Duration::from_secs(30),
        |v| member_at(v, &other_addr).is_some_and(|(_, cells)| cells > 0),
    );
    let cells = view["cells"].as_array().expect("cells").len();
    let status = Command::new("kill")
        .args(["-9", &other.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let (view, took) = wait_view(
        &http,
        "every cell on the master",
        Duration::from_secs(15),
        |v| {
            v["cells"]
                .as_array()
                .is_some_and(|c| c.iter().all(|c| c["shard"].as_u64() == Some(0)))
        },
    );
    eprintln!("the master took every cell {took:?} after the kill");
    assert_eq!(view["cells"].as_array().expect("cells").len(), cells);
    let tick = |v: &serde_json::Value| v["shards"][0]["tick"].as_u64().expect("a tick");
    let before = tick(&view);
    let (view, _) = wait_view(
        &http,
        "the master simulating on alone",
        Duration::from_secs(10),
        |v| tick(v) > before + 30,
    );
    assert_eq!(view["shards"][0]["alive"], true, "{view}");
    drop(other);
}
