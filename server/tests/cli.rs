//! The `zonescaler` binary meets bad input the way an operator expects: one line naming the
//! problem, a non-zero exit, never a panic.

use std::process::Command;

fn zonescaler(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_zonescaler"))
        .args(args)
        .output()
        .expect("binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Run `zonescaler args` expecting success; its stdout.
fn zonescaler_ok(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_zonescaler"))
        .args(args)
        .output()
        .expect("binary runs");
    assert!(
        out.status.success(),
        "zonescaler {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn write_config(name: &str, text: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("zs-cli-{}-{name}.toml", std::process::id()));
    std::fs::write(&p, text).expect("temp file");
    p
}

#[test]
fn bad_configs_exit_with_one_line_naming_the_field() {
    let cases = [
        (
            "cell",
            "[world]\nbase_cell_size_m = 0.0\n",
            "world.base_cell_size_m",
        ),
        (
            "bounds",
            "[world]\nmin_x = 50.0\nmax_x = -50.0\n",
            "world.max_x",
        ),
        ("unknown", "[world]\ncolour = \"red\"\n", "colour"),
        ("syntax", "[world\n", "line 1"),
        (
            "silence",
            "[cluster]\nshard_silence_ms = 100\n",
            "cluster.shard_silence_ms",
        ),
    ];
    for (name, text, field) in cases {
        let path = write_config(name, text);
        let (code, stderr) = zonescaler(&[
            "shard",
            "--world",
            path.to_str().expect("utf-8 path"),
            "--listen",
            "127.0.0.1:0",
        ]);
        assert_eq!(code, 2, "{name}: exit code; stderr: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{name}: exactly one line: {stderr}");
        assert!(lines[0].contains(field), "{name}: names {field}: {stderr}");
        assert!(!stderr.contains("panicked"), "{name}: no panic: {stderr}");
        let _ = std::fs::remove_file(&path);
    }
}

#[test]
fn a_missing_config_file_is_one_clear_line() {
    let (code, stderr) = zonescaler(&[
        "shard",
        "--world",
        "/nonexistent/world.toml",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("/nonexistent/world.toml") && stderr.lines().count() == 1,
        "{stderr}"
    );
}

#[test]
fn up_refuses_nonsense_and_bad_configs_before_starting_anything() {
    let (code, stderr) = zonescaler(&["up", "--shards", "0"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("--shards must be at least 1"), "{stderr}");
    let (code, stderr) = zonescaler(&["up", "--shards", "5000"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("--shards 5000: at most"), "{stderr}");
    let path = write_config("up", "[npc]\ncount = -3\n");
    let (code, stderr) = zonescaler(&["up", "--world", path.to_str().expect("utf-8 path")]);
    let _ = std::fs::remove_file(&path);
    assert_ne!(code, 0);
    assert!(stderr.contains("npc.count"), "{stderr}");
    assert!(!stderr.contains("panicked"));
}

/// A running `zonescaler up` (Linux process tests). Dropping it kills `up` if it still runs
/// (its shards then stop: their stdin closes) and removes its run directory, so a failed test
/// leaves no process and no files behind.
#[cfg(target_os = "linux")]
struct Up {
    child: std::process::Child,
    /// Each shard's pid, from the lines `up` prints once every shard serves.
    shard_pids: Vec<u32>,
    /// Every line `up` has printed to stdout so far.
    stdout: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// Everything `up` wrote to stderr, once it exits (see [`Up::stderr`]).
    stderr: Option<std::thread::JoinHandle<String>>,
    run_dir: std::path::PathBuf,
}

#[cfg(target_os = "linux")]
impl Up {
    /// `up`'s stderr; waits for `up` to close it.
    fn stderr(&mut self) -> String {
        let reader = self.stderr.take().expect("stderr is read once");
        reader.join().expect("stderr reader")
    }

    /// `up`'s stdout so far, one string.
    fn stdout(&self) -> String {
        self.stdout.lock().expect("stdout lines").join("\n")
    }

    /// Send `up`'s process group SIGINT, as a terminal's Ctrl-C does (needs `own_group`).
    fn ctrl_c(&self) {
        let group = format!("-{}", self.child.id());
        let sent = Command::new("kill")
            .args(["-INT", "--", &group])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "SIGINT sent to up's process group");
    }
}

#[cfg(target_os = "linux")]
impl Drop for Up {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}

/// Start `up` with one shard on `port` (in a process group of its own when `own_group`, as a
/// terminal would) and wait for its shard.
#[cfg(target_os = "linux")]
fn spawn_up(name: &str, port: u16, own_group: bool) -> Up {
    // Metrics listen on TCP, clients on UDP: the same number keeps parallel tests apart.
    let port = port.to_string();
    spawn_up_with(
        name,
        &["--port", &port, "--metrics-port", &port],
        1,
        own_group,
    )
}

/// Start `up` with `shards` shards from `base` on: clients (UDP) and metrics (TCP) on `base`
/// and up, shard links (UDP) and the master's HTTP (TCP) on `base + shards` and up.
#[cfg(target_os = "linux")]
fn spawn_cluster(name: &str, base: u16, shards: u16, own_group: bool) -> Up {
    let port = base.to_string();
    let links = (base + shards).to_string();
    let http = format!("127.0.0.1:{}", base + shards);
    let n = shards.to_string();
    spawn_up_with(
        name,
        &[
            "--shards",
            &n,
            "--port",
            &port,
            "--metrics-port",
            &port,
            "--link-port",
            &links,
            "--http",
            &http,
        ],
        shards.into(),
        own_group,
    )
}

/// Start `up args` with a run directory of its own and wait until its `shards` shards serve.
/// Both pipes are drained on threads so neither `up` nor a shard (which inherits stderr) ever
/// blocks on a full pipe.
#[cfg(target_os = "linux")]
fn spawn_up_with(name: &str, args: &[&str], shards: usize, own_group: bool) -> Up {
    use std::io::{BufRead, BufReader, Read};
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    let run_dir = std::env::temp_dir().join(format!("zs-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&run_dir);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_zonescaler"));
    cmd.arg("up")
        .args(args)
        .arg("--run-dir")
        .arg(&run_dir)
        .args([
            "--world",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../assets/worlds/default.toml"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if own_group {
        cmd.process_group(0);
    }
    let mut child = cmd.spawn().expect("up starts");
    let mut err = child.stderr.take().expect("piped stderr");
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let stdout = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (pids_tx, pids_rx) = std::sync::mpsc::channel();
    let lines = BufReader::new(child.stdout.take().expect("piped stdout"))
        .lines()
        .map_while(Result::ok);
    let seen = stdout.clone();
    std::thread::spawn(move || {
        for l in lines {
            // `  shard-N    ADDR  metrics URL  (pid P, log FILE)`, once every shard serves.
            let pid = l
                .split("(pid ")
                .nth(1)
                .and_then(|r| r.split(',').next())
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(pid) = pid {
                let _ = pids_tx.send(pid);
            }
            seen.lock().expect("stdout lines").push(l);
        }
    });
    let mut up = Up {
        child,
        shard_pids: Vec::new(),
        stdout,
        stderr: Some(stderr),
        run_dir,
    };
    while up.shard_pids.len() < shards {
        match pids_rx.recv_timeout(std::time::Duration::from_secs(120)) {
            Ok(pid) => up.shard_pids.push(pid),
            Err(_) => panic!(
                "up prints each shard's pid once it serves; stdout:\n{}\nstderr:\n{}",
                up.stdout(),
                up.stderr()
            ),
        }
    }
    up
}

/// Whether `pid` is a live (not zombie) process.
#[cfg(target_os = "linux")]
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

/// Wait up to 15 s for `pid` to be gone.
#[cfg(target_os = "linux")]
fn gone_within_15s(pid: u32) -> bool {
    within(std::time::Duration::from_secs(15), || !alive(pid))
}

/// Poll `done` every 50 ms for up to `limit`; whether it came true.
#[cfg(target_os = "linux")]
fn within(limit: std::time::Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while !done() {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    true
}

/// SIGKILL `pid`, as a crash or the OOM killer would.
#[cfg(target_os = "linux")]
fn kill_9(pid: u32) {
    let sent = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success(), "SIGKILL sent to {pid}");
}

/// `up` may die any way at all (here SIGKILL, which it cannot catch): its shards must not
/// outlive it.
#[cfg(target_os = "linux")]
#[test]
fn shards_stop_when_up_is_killed() {
    let mut up = spawn_up("kill", 40_000 + (std::process::id() % 20_000) as u16, false);
    let shard = up.shard_pids[0];
    assert!(alive(shard), "the shard runs");
    up.child.kill().expect("SIGKILL up");
    up.child.wait().expect("reaped");
    assert!(
        gone_within_15s(shard),
        "shard {shard} outlived a killed `up`"
    );
}

/// A terminal's Ctrl-C signals the whole foreground process group: `up` must stop its shards in
/// order and exit 0, not race them and report their exit as a crash.
#[cfg(target_os = "linux")]
#[test]
fn ctrl_c_to_the_process_group_stops_up_cleanly() {
    let mut up = spawn_up("ctrlc", 30_000 + (std::process::id() % 9_000) as u16, true);
    let shard = up.shard_pids[0];
    up.ctrl_c();
    assert!(
        gone_within_15s(up.child.id()),
        "up stops within 15 s of Ctrl-C"
    );
    let status = up.child.wait().expect("reaped");
    // Before reading stderr: a surviving shard would hold the pipe open and the read would hang.
    assert!(gone_within_15s(shard), "shard {shard} outlived up");
    let stderr = up.stderr();
    assert!(
        status.success(),
        "up must exit 0 on Ctrl-C: {status}; stderr: {stderr}"
    );
    assert!(
        !stderr.contains("unexpectedly"),
        "a requested stop is not a crash: {stderr}"
    );
}

/// A non-master shard that dies is reported and started again as a joiner (same command, same
/// addresses, its log appended to); the cluster keeps running, and Ctrl-C still stops it all
/// with exit 0.
#[cfg(target_os = "linux")]
#[test]
fn a_killed_non_master_shard_is_restarted_and_the_cluster_keeps_running() {
    let base = 10_000 + (std::process::id() % 9_000) as u16;
    let mut up = spawn_cluster("restart", base, 2, true);
    let (master, victim) = (up.shard_pids[0], up.shard_pids[1]);
    let log = up.run_dir.join("shard-1.log");
    kill_9(victim);
    let minute = std::time::Duration::from_secs(60);
    let up_pid = up.child.id();
    // Also done when `up` exits, so a cluster that stopped fails here at once with its output.
    let restarted = within(minute, || {
        up.stdout().contains("restarting shard-1") || !alive(up_pid)
    });
    let out = up.stdout();
    assert!(
        restarted && alive(up_pid),
        "up restarts shard-1 within a minute:\n{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("zonescaler up: shard-1 exited ")
                && l.contains("(signal: 9 (SIGKILL)); last lines of")),
        "up reports how shard-1 died (its exit status and its log's tail):\n{out}"
    );
    assert!(
        out.contains("the cluster keeps running; shard-1 starts again in 1 s (attempt 1)"),
        "up says the cluster keeps running and when shard-1 starts again:\n{out}"
    );
    let restart_line = out
        .lines()
        .find(|l| l.starts_with("zonescaler up: restarting shard-1 (attempt 1, after 1 s) as pid "))
        .unwrap_or_else(|| panic!("the restart line names the attempt and the wait:\n{out}"));
    let new_pid: u32 = restart_line
        .split("as pid ")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("the restart line names the new pid: {restart_line}"));
    assert_ne!(new_pid, victim, "a new process");
    // A joiner says `shard N of M linked` once the master gave it an id and the map.
    let joined = within(minute, || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.split("=== zonescaler up: shard-1 restarted (attempt 1), started at unix time ")
            .nth(1)
            .is_some_and(|after| after.contains(" linked; "))
    });
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        joined,
        "the restarted shard-1 joins the cluster again, logging below a restart header:\n{text}"
    );
    assert_eq!(
        text.matches("=== zonescaler up: shard-1").count(),
        2,
        "the log was appended to, not truncated: the crash's lines stay above the restart:\n{text}"
    );
    assert!(
        text.lines()
            .next()
            .is_some_and(|l| l.starts_with("=== zonescaler up: shard-1 started at unix time ")),
        "{text}"
    );
    assert!(
        matches!(up.child.try_wait(), Ok(None)),
        "up keeps running after a non-master shard's death:\n{}",
        up.stdout()
    );
    assert!(
        alive(master) && alive(new_pid),
        "the master and the new shard-1 run"
    );
    // It came back at the dead member's addresses before the master's silence ran out: the
    // master fences the old member at once and gives its cells to the living.
    let http = format!("127.0.0.1:{}", base + 2);
    let mut view = serde_json::Value::Null;
    let recovered = within(minute, || {
        view = api_cluster(&http);
        let shards = view["shards"].as_array().cloned().unwrap_or_default();
        let live: Vec<u64> = (shards.iter())
            .filter(|s| s["alive"] == true)
            .filter_map(|s| s["id"].as_u64())
            .collect();
        let cells = view["cells"].as_array().cloned().unwrap_or_default();
        let old_dead = shards
            .iter()
            .any(|s| s["id"].as_u64() == Some(1) && s["alive"] == false);
        old_dead
            && live.contains(&2)
            && !cells.is_empty()
            && cells
                .iter()
                .all(|c| c["shard"].as_u64().is_some_and(|s| live.contains(&s)))
    });
    assert!(
        recovered,
        "shard 1 fenced, every cell on a live member, the newcomer (shard 2) alive: {view}"
    );
    assert!(
        view["events"]
            .to_string()
            .contains("was replaced by shard 2"),
        "the master says why: {}",
        view["events"]
    );

    up.ctrl_c();
    assert!(
        within(minute, || !alive(up.child.id())),
        "up stops on Ctrl-C"
    );
    let status = up.child.wait().expect("reaped");
    assert!(gone_within_15s(master), "shard {master} outlived up");
    assert!(gone_within_15s(new_pid), "shard {new_pid} outlived up");
    let stderr = up.stderr();
    assert!(
        status.success(),
        "up exits 0 on Ctrl-C after a restart: {status}; stderr: {stderr}\nstdout:\n{}",
        up.stdout()
    );
    assert!(!stderr.contains("unexpectedly"), "{stderr}");
}

/// The master's process dies: the other shards elect a successor, `up` says which shard holds
/// the role now and where the API is, and restarts the dead process, which joins the running
/// cluster through the other members; every cell is on a live member. Ctrl-C still stops it
/// all with exit 0.
#[cfg(target_os = "linux")]
#[test]
fn a_killed_master_is_succeeded_and_its_process_restarted() {
    let base = 20_000 + (std::process::id() % 9_000) as u16;
    let mut up = spawn_cluster("master-kill", base, 3, true);
    let (master, others) = (up.shard_pids[0], [up.shard_pids[1], up.shard_pids[2]]);
    kill_9(master);
    let minute = std::time::Duration::from_secs(60);
    let up_pid = up.child.id();
    let succeeded = within(minute, || {
        up.stdout().contains("holds the master role now") || !alive(up_pid)
    });
    let out = up.stdout();
    assert!(
        succeeded && alive(up_pid),
        "up names the successor within a minute:\n{out}"
    );
    let line = (out.lines())
        .find(|l| l.contains("holds the master role now"))
        .unwrap_or_default()
        .to_string();
    assert!(
        line.contains("(term ") && line.contains("the API is at"),
        "it names the term and the API's address: {line}"
    );
    let api = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or_else(|| panic!("an API address in: {line}"))
        .to_string();
    let mut view = serde_json::Value::Null;
    let moved = within(minute, || {
        view = api_cluster(&api);
        let master = view["master"].as_u64();
        let shards = view["shards"].as_array().cloned().unwrap_or_default();
        let live: Vec<u64> = (shards.iter())
            .filter(|s| s["alive"] == true)
            .filter_map(|s| s["id"].as_u64())
            .collect();
        let cells = view["cells"].as_array().cloned().unwrap_or_default();
        master.is_some_and(|m| m != 0)
            && view["term"].as_u64().is_some_and(|t| t >= 1)
            && !live.contains(&0)
            && !cells.is_empty()
            && cells
                .iter()
                .all(|c| c["shard"].as_u64().is_some_and(|s| live.contains(&s)))
    });
    assert!(
        moved,
        "the successor serves the API at {api} ({line}), shard 0 fenced, every cell on a live member: {view}\n{}",
        up.stdout()
    );
    let restarted = within(minute, || {
        up.stdout().contains("restarting shard-0") || !alive(up_pid)
    });
    assert!(
        restarted && alive(up_pid),
        "up restarts the master's process:\n{}",
        up.stdout()
    );
    let log = up.run_dir.join("shard-0.log");
    let joined = within(minute, || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.split("=== zonescaler up: shard-0 restarted (attempt ")
            .nth(1)
            .is_some_and(|after| after.contains(" linked; "))
    });
    assert!(
        joined,
        "the restarted shard-0 joins the running cluster:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(others.iter().all(|p| alive(*p)), "the other shards run on");

    up.ctrl_c();
    assert!(
        within(minute, || !alive(up.child.id())),
        "up stops on Ctrl-C"
    );
    let status = up.child.wait().expect("reaped");
    for pid in others {
        assert!(gone_within_15s(pid), "shard {pid} outlived up");
    }
    assert!(status.success(), "up exits 0 on Ctrl-C: {status}");
}

/// `GET /api/cluster` at `addr` as JSON (`Null` while it does not answer 200).
#[cfg(target_os = "linux")]
fn api_cluster(addr: &str) -> serde_json::Value {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return serde_json::Value::Null;
    };
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(5)));
    let req = format!("GET /api/cluster HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut resp = String::new();
    if s.write_all(req.as_bytes()).is_err() || s.read_to_string(&mut resp).is_err() {
        return serde_json::Value::Null;
    }
    match resp.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => {
            serde_json::from_str(body).unwrap_or_default()
        }
        _ => serde_json::Value::Null,
    }
}

/// An operator makes a login key pair and mints a ticket for local testing: the ticket names the
/// account and spawn point, verifies with the public half only, and expires when asked.
#[test]
fn keygen_and_ticket_mint_what_a_shard_accepts() {
    use zonescaler_shared::ticket::{self, LoginKeys};
    let dir = std::env::temp_dir().join(format!("zs-cli-keys-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let key = dir.join("login.key");
    let key_arg = key.to_str().expect("utf-8 path");
    zonescaler_ok(&["keygen", "--key", key_arg, "--id", "2026-11"]);
    let (code, stderr) = zonescaler(&["keygen", "--key", key_arg]);
    assert_ne!(code, 0, "an existing key is never overwritten");
    assert!(stderr.contains("refusing to overwrite"), "{stderr}");

    let text = zonescaler_ok(&[
        "ticket",
        "--account",
        "ann",
        "--key",
        key_arg,
        "--ttl",
        "1h",
        "--spawn",
        "10,-40",
    ]);
    let bytes = ticket::from_text(&text).expect("a hex ticket on stdout");
    let ring = LoginKeys::load(&dir.join("login.pub")).expect("the public half loads");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64;
    let t = ring
        .verify(&bytes, now)
        .expect("the shard's ring accepts it");
    assert_eq!(t.account, "ann");
    let spawn = t.spawn.expect("the spawn point asked for").to_vec3();
    assert!(
        (spawn.x - 10.0).abs() < 0.01 && (spawn.z + 40.0).abs() < 0.01,
        "{spawn:?}"
    );
    assert!(
        ring.verify(&bytes, now + 2 * 3_600_000).is_err(),
        "an hour-long ticket is refused two hours later"
    );
    for bad in [
        vec!["ticket", "--account", "", "--key", key_arg],
        vec![
            "ticket",
            "--account",
            "ann",
            "--key",
            key_arg,
            "--ttl",
            "9d",
        ],
        vec![
            "ticket",
            "--account",
            "ann",
            "--key",
            key_arg,
            "--spawn",
            "x",
        ],
        vec![
            "ticket",
            "--account",
            "ann",
            "--key",
            "/nonexistent/login.key",
        ],
    ] {
        let (code, stderr) = zonescaler(&bad);
        assert_ne!(code, 0, "{bad:?} must fail");
        assert!(!stderr.contains("panicked"), "{bad:?}: {stderr}");
        let first = stderr.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("zonescaler:") || first.starts_with("error:"),
            "{bad:?}: the first line says what is wrong: {stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
