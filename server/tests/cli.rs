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
fn up_refuses_what_it_cannot_do_yet_and_bad_configs_before_starting_anything() {
    let (code, stderr) = zonescaler(&["up", "--shards", "4"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("--shards 4"), "{stderr}");
    let path = write_config("up", "[npc]\ncount = -3\n");
    let (code, stderr) = zonescaler(&["up", "--world", path.to_str().expect("utf-8 path")]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("npc.count") || stderr.contains("count"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"));
}

/// `up` may die any way at all (here SIGKILL, which it cannot catch): its shards must not
/// outlive it.
#[cfg(target_os = "linux")]
#[test]
fn shards_stop_when_up_is_killed() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let run_dir = std::env::temp_dir().join(format!("zs-cli-up-{}", std::process::id()));
    let port = 40_000 + (std::process::id() % 20_000) as u16;
    let mut up = Command::new(env!("CARGO_BIN_EXE_zonescaler"))
        .args(["up", "--port", &port.to_string(), "--run-dir"])
        .arg(&run_dir)
        .args([
            "--world",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../assets/worlds/default.toml"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("up starts");
    let stdout = up.stdout.take().expect("piped stdout");
    let pid: u32 = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            l.split("(pid ")
                .nth(1)
                .and_then(|r| r.split(',').next())
                .and_then(|p| p.parse().ok())
        })
        .expect("up prints each shard's pid once it listens");
    let alive = |pid: u32| {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z ")
    };
    assert!(alive(pid), "the shard runs");
    up.kill().expect("SIGKILL up");
    up.wait().expect("reaped");
    let deadline = Instant::now() + Duration::from_secs(15);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!alive(pid), "shard {pid} outlived a killed `up`");
}

/// A terminal's Ctrl-C signals the whole foreground process group: `up` must stop its shards in
/// order and exit 0, not race them and report their exit as a crash.
#[cfg(target_os = "linux")]
#[test]
fn ctrl_c_to_the_process_group_stops_up_cleanly() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let run_dir = std::env::temp_dir().join(format!("zs-cli-ctrlc-{}", std::process::id()));
    let port = 30_000 + (std::process::id() % 9_000) as u16;
    let mut up = Command::new(env!("CARGO_BIN_EXE_zonescaler"))
        .args(["up", "--port", &port.to_string(), "--run-dir"])
        .arg(&run_dir)
        .args([
            "--world",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../assets/worlds/default.toml"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("up starts");
    let mut lines = BufReader::new(up.stdout.take().expect("piped stdout"))
        .lines()
        .map_while(Result::ok);
    let pid: u32 = lines
        .find_map(|l| {
            l.split("(pid ")
                .nth(1)
                .and_then(|r| r.split(',').next())
                .and_then(|p| p.parse().ok())
        })
        .expect("up prints each shard's pid once it listens");
    // Keep draining stdout so `up` never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    let group = format!("-{}", up.id());
    let sent = Command::new("kill")
        .args(["-INT", "--", &group])
        .status()
        .expect("kill runs");
    assert!(sent.success(), "SIGINT sent to up's process group");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = up.try_wait().expect("poll up") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "up did not stop within 15 s of Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut up.stderr.take().expect("piped stderr"), &mut stderr)
        .expect("stderr");
    assert!(
        status.success(),
        "up must exit 0 on Ctrl-C: {status}; stderr: {stderr}"
    );
    assert!(
        !stderr.contains("unexpectedly"),
        "a requested stop is not a crash: {stderr}"
    );
    let alive = std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ");
    assert!(!alive, "shard {pid} outlived up");
}
