//! `zonescaler up`: a local cluster as child processes.
//!
//! Every child shard is started with its standard input piped from this process and the hidden
//! flag `--exit-with-parent`: when this process exits for any reason (Ctrl-C, a crash, `kill -9`)
//! the pipe closes and each child stops itself, so no shard is ever left orphaned.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// `zonescaler up`: run a local cluster as child processes; Ctrl-C stops every one of them.
#[derive(Clone, Debug, clap::Args)]
pub struct UpOptions {
    /// Shard processes to start (one world needs the master role for more than one).
    #[arg(long, default_value_t = 1)]
    pub shards: usize,
    /// World config (TOML).
    #[arg(long, default_value = "assets/worlds/default.toml")]
    pub world: PathBuf,
    /// Also start `zonescaler-bots` with this many bots against shard 0.
    #[arg(long, default_value_t = 0)]
    pub bots: usize,
    /// How long those bots play.
    #[arg(long, default_value = "60s")]
    pub bot_duration: String,
    /// Host the shards listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// First shard's UDP port; shard i listens on port + i.
    #[arg(long, default_value_t = 4433)]
    pub port: u16,
    /// Where certificates and run files go.
    #[arg(long, default_value = "target/zonescaler-run")]
    pub run_dir: PathBuf,
}

struct Proc {
    name: String,
    child: Child,
}

/// Start the cluster, print where to connect, and wait for Ctrl-C (or a child's death).
pub fn up(opts: UpOptions, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    if opts.shards == 0 {
        bail!("--shards must be at least 1");
    }
    if opts.shards > 1 {
        bail!(
            "--shards {}: one world on several shards needs the master role, proxies and handoff, \
             which this build does not have yet; run --shards 1",
            opts.shards
        );
    }
    // Validate before starting anything, so a bad config is one clear line, not a child's crash.
    zonescaler_shared::config::WorldConfig::load(&opts.world)?;
    std::fs::create_dir_all(&opts.run_dir)
        .with_context(|| format!("cannot create run dir {}", opts.run_dir.display()))?;
    let exe = std::env::current_exe().context("cannot find the zonescaler executable")?;
    let mut procs: Vec<Proc> = Vec::new();
    let result = run(&opts, &exe, &mut procs, &stop);
    stop_all(&mut procs);
    result
}

fn run(
    opts: &UpOptions,
    exe: &Path,
    procs: &mut Vec<Proc>,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let mut endpoints = Vec::new();
    for i in 0..opts.shards {
        let addr = format!("{}:{}", opts.host, opts.port + i as u16);
        let cert = opts.run_dir.join(format!("shard-{i}.pem"));
        let _ = std::fs::remove_file(&cert);
        let mut command = Command::new(exe);
        command
            .args(["shard", "--world"])
            .arg(&opts.world)
            .args(["--listen", &addr, "--cert-out"])
            .arg(&cert)
            .arg("--exit-with-parent")
            .stdin(Stdio::piped());
        // A terminal's Ctrl-C signals the whole foreground process group. Shards get a group of
        // their own so only `up` hears it and stops them in order (by closing their stdin),
        // instead of racing them and reporting their exit as a crash.
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command
            .spawn()
            .with_context(|| format!("cannot start shard {i}"))?;
        let pid = child.id();
        procs.push(Proc {
            name: format!("shard-{i}"),
            child,
        });
        wait_for_file(&cert, procs, Duration::from_secs(30))?;
        endpoints.push((addr, cert, pid));
    }
    println!(
        "zonescaler up: {} shard(s) running world {}",
        opts.shards,
        opts.world.display()
    );
    for (i, (addr, cert, pid)) in endpoints.iter().enumerate() {
        println!(
            "  shard-{i}: {addr}  (pid {pid}, certificate {})",
            cert.display()
        );
    }
    let (addr0, cert0, _) = &endpoints[0];
    println!(
        "connect bots with:\n  cargo run --release -p zonescaler-bots -- --connect {addr0} --cert {} --bots 100 --duration 30s",
        cert0.display()
    );
    println!("press Ctrl-C to stop the cluster");
    if opts.bots > 0 {
        let bots_exe =
            exe.with_file_name(format!("zonescaler-bots{}", std::env::consts::EXE_SUFFIX));
        if !bots_exe.exists() {
            bail!(
                "--bots needs {} (build it with `cargo build --release -p zonescaler-bots`)",
                bots_exe.display()
            );
        }
        let child = Command::new(&bots_exe)
            .args(["--connect", addr0, "--cert"])
            .arg(cert0)
            .args([
                "--bots",
                &opts.bots.to_string(),
                "--duration",
                &opts.bot_duration,
            ])
            .stdin(Stdio::null())
            .spawn()
            .context("cannot start zonescaler-bots")?;
        procs.push(Proc {
            name: "bots".into(),
            child,
        });
    }
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
        for p in procs.iter_mut() {
            if let Some(status) = p.child.try_wait().context("cannot poll a child")? {
                if p.name == "bots" {
                    println!(
                        "zonescaler up: bots finished ({status}); cluster keeps running until Ctrl-C"
                    );
                    p.name = "bots (done)".into();
                    continue;
                }
                if p.name.starts_with("bots") {
                    continue;
                }
                bail!(
                    "{} exited unexpectedly ({status}); stopping the cluster",
                    p.name
                );
            }
        }
    }
    println!("zonescaler up: stopping");
    Ok(())
}

fn wait_for_file(path: &Path, procs: &mut [Proc], timeout: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    while !path.exists() {
        if let Some(p) = procs.last_mut()
            && let Some(status) = p.child.try_wait()?
        {
            bail!("{} exited during start ({status})", p.name);
        }
        if start.elapsed() > timeout {
            bail!(
                "{} did not start listening within {timeout:?}",
                path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Close every child's stdin (they stop themselves), wait up to 5 s, then kill what is left.
fn stop_all(procs: &mut [Proc]) {
    for p in procs.iter_mut() {
        drop(p.child.stdin.take());
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for p in procs.iter_mut() {
        loop {
            match p.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    eprintln!("zonescaler up: {} did not stop in time; killing it", p.name);
                    let _ = p.child.kill();
                    let _ = p.child.wait();
                    break;
                }
            }
        }
    }
}
