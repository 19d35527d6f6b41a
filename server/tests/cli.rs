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
