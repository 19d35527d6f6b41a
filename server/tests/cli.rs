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
    assert_ne!(code, 0);
    assert!(stderr.contains("npc.count"), "{stderr}");
    assert!(!stderr.contains("panicked"));
}

/// A running `zonescaler up` (Linux process tests).
#[cfg(target_os = "linux")]
struct Up {
    child: std::process::Child,
    /// The shard's pid, from the line `up` prints once the shard listens.
    shard_pid: u32,
    /// Everything `up` and its shards wrote to stderr, once they exit.
    stderr: std::thread::JoinHandle<String>,
}

/// Start `up` on `port` (in a process group of its own when `own_group`, as a terminal would) and
/// wait for its shard. Both pipes are drained on threads so neither `up` nor a shard (which
/// inherits stderr) ever blocks on a full pipe.
#[cfg(target_os = "linux")]
fn spawn_up(name: &str, port: u16, own_group: bool) -> Up {
    use std::io::{BufRead, BufReader, Read};
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    let run_dir = std::env::temp_dir().join(format!("zs-cli-{name}-{}", std::process::id()));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_zonescaler"));
    // Metrics listen on TCP, clients on UDP: the same number keeps parallel tests apart.
    let port = port.to_string();
    cmd.args(["up", "--port", &port, "--metrics-port", &port, "--run-dir"])
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
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout"))
        .lines()
        .map_while(Result::ok);
    let shard_pid = lines
        .find_map(|l| {
            l.split("(pid ")
                .nth(1)
                .and_then(|r| r.split(',').next())
                .and_then(|p| p.parse().ok())
        })
        .expect("up prints each shard's pid once it listens");
    std::thread::spawn(move || lines.for_each(drop));
    Up {
        child,
        shard_pid,
        stderr,
    }
}

/// Whether `pid` is a live (not zombie) process.
#[cfg(target_os = "linux")]
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

/// Wait up to 15 s for `pid` to be gone.
#[cfg(target_os = "linux")]
fn gone_within_15s(pid: u32) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while alive(pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    !alive(pid)
}

/// `up` may die any way at all (here SIGKILL, which it cannot catch): its shards must not
/// outlive it.
#[cfg(target_os = "linux")]
#[test]
fn shards_stop_when_up_is_killed() {
    let mut up = spawn_up("kill", 40_000 + (std::process::id() % 20_000) as u16, false);
    assert!(alive(up.shard_pid), "the shard runs");
    up.child.kill().expect("SIGKILL up");
    up.child.wait().expect("reaped");
    assert!(
        gone_within_15s(up.shard_pid),
        "shard {} outlived a killed `up`",
        up.shard_pid
    );
}

/// A terminal's Ctrl-C signals the whole foreground process group: `up` must stop its shards in
/// order and exit 0, not race them and report their exit as a crash.
#[cfg(target_os = "linux")]
#[test]
fn ctrl_c_to_the_process_group_stops_up_cleanly() {
    let mut up = spawn_up("ctrlc", 30_000 + (std::process::id() % 9_000) as u16, true);
    let group = format!("-{}", up.child.id());
    let sent = Command::new("kill")
        .args(["-INT", "--", &group])
        .status()
        .expect("kill runs");
    assert!(sent.success(), "SIGINT sent to up's process group");
    assert!(
        gone_within_15s(up.child.id()),
        "up stops within 15 s of Ctrl-C"
    );
    let status = up.child.wait().expect("reaped");
    // Before reading stderr: a surviving shard would hold the pipe open and the read would hang.
    assert!(
        gone_within_15s(up.shard_pid),
        "shard {} outlived up",
        up.shard_pid
    );
    let stderr = up.stderr.join().expect("stderr reader");
    assert!(
        status.success(),
        "up must exit 0 on Ctrl-C: {status}; stderr: {stderr}"
    );
    assert!(
        !stderr.contains("unexpectedly"),
        "a requested stop is not a crash: {stderr}"
    );
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
