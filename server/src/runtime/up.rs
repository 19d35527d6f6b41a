//! `zonescaler up`: a local cluster as child processes.
//!
//! With `--shards N` (N > 1), shard 0 holds the master role (`--expect-shards N`) and the others
//! join it (`--join`); `up` generates a cluster secret (passed in the environment, never on a
//! command line) and one TLS certificate that every shard presents, so bots trust the whole
//! cluster with one `--cert` file and follow redirects between shards.
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
    /// Shard processes to start; with more than one, shard 0 holds the master role.
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
    /// First shard's UDP port for clients; shard i listens on port + i.
    #[arg(long, default_value_t = 4433)]
    pub port: u16,
    /// First shard's UDP port for shard links; shard i uses link-port + i.
    #[arg(long, default_value_t = 5433)]
    pub link_port: u16,
    /// Where the master serves the dashboard and the HTTP API (`/`, `GET /api/cluster`).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: String,
    /// First shard's port for Prometheus metrics (`GET /metrics`); shard i uses metrics-port + i.
    /// Default: `--port` + 5000 (9433 for the default port), so clusters on other ports do not
    /// collide on it.
    #[arg(long)]
    pub metrics_port: Option<u16>,
    /// What the `--bots` do (wander, idle, border).
    #[arg(long, default_value = "wander")]
    pub bot_scenario: String,
    /// Where certificates and run files go.
    #[arg(long, default_value = "target/zonescaler-run")]
    pub run_dir: PathBuf,
}

impl UpOptions {
    /// The first shard's metrics port: `--metrics-port`, else `--port` + 5000.
    pub fn metrics_port(&self) -> u16 {
        self.metrics_port
            .unwrap_or_else(|| self.port.saturating_add(5_000))
    }
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
    if opts.shards > zonescaler_shared::limits::SHARDS_MAX {
        bail!(
            "--shards {}: at most {}",
            opts.shards,
            zonescaler_shared::limits::SHARDS_MAX
        );
    }
    if [opts.port, opts.link_port, opts.metrics_port()]
        .iter()
        .any(|p| usize::from(*p) + opts.shards > usize::from(u16::MAX))
    {
        bail!("--port / --link-port / --metrics-port + --shards runs past port 65535");
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
    // One certificate for every shard, so a client trusts the whole cluster with one file.
    let identity =
        zonescaler_net::tls::ServerIdentity::self_signed(&["localhost", "127.0.0.1", &opts.host])
            .context("cannot make the cluster's certificate")?;
    let (cluster_cert, cluster_key) = (
        opts.run_dir.join("cluster.pem"),
        opts.run_dir.join("cluster.key"),
    );
    std::fs::write(&cluster_cert, identity.cert_pem())
        .with_context(|| format!("cannot write {}", cluster_cert.display()))?;
    write_private(&cluster_key, &identity.key_pem())?;
    let secret = match std::env::var("ZONESCALER_CLUSTER_SECRET") {
        Ok(s) => s,
        Err(_) => random_secret()?,
    };
    // The operator's API token (player lookups), readable by this user only.
    write_private(
        &opts.run_dir.join("api.token"),
        &zonescaler_shared::token::api_token(secret.as_bytes()),
    )?;
    // A login key for this local cluster: shards get the public half, the bots (and
    // `zonescaler ticket`) mint tickets with the private one, as a game's account service would.
    let (login_key, login_pub) = (
        opts.run_dir.join("login.key"),
        opts.run_dir.join("login.pub"),
    );
    zonescaler_shared::ticket::TicketSigner::generate_files("local", &login_key, &login_pub)
        .context("cannot make the cluster's login key")?;
    let master_links = format!("{}:{}", opts.host, opts.link_port);
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
            .arg("--tls-cert")
            .arg(&cluster_cert)
            .arg("--tls-key")
            .arg(&cluster_key)
            .arg("--exit-with-parent")
            .arg("--login-keys")
            .arg(&login_pub)
            .args([
                "--metrics",
                &format!("{}:{}", opts.host, opts.metrics_port() + i as u16),
            ])
            .env("ZONESCALER_CLUSTER_SECRET", &secret)
            .stdin(Stdio::piped());
        if opts.shards > 1 {
            let links = format!("{}:{}", opts.host, opts.link_port + i as u16);
            // The shards share this machine: one network thread each (see NET_THREADS_DEFAULT).
            command.args(["--link-listen", &links, "--net-threads", "1"]);
            if i == 0 {
                command.args([
                    "--expect-shards",
                    &opts.shards.to_string(),
                    "--http",
                    &opts.http,
                ]);
            } else {
                command.args(["--join", &master_links]);
            }
        }
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
        let metrics = format!(
            "http://{}:{}/metrics",
            opts.host,
            opts.metrics_port() + i as u16
        );
        endpoints.push((addr, cert, pid, metrics));
    }
    // Each shard writes its certificate once it serves: in a cluster, once the cluster formed.
    for (_, cert, _, _) in &endpoints {
        wait_for_file(cert, procs, Duration::from_secs(90))?;
    }
    println!(
        "zonescaler up: {} shard(s) running world {}",
        opts.shards,
        opts.world.display()
    );
    for (i, (addr, cert, pid, metrics)) in endpoints.iter().enumerate() {
        println!(
            "  shard-{i}: {addr}  (pid {pid}, certificate {}, metrics {metrics})",
            cert.display()
        );
    }
    let (addr0, _, _, _) = &endpoints[0];
    let cert0 = &cluster_cert;
    if opts.shards > 1 {
        println!("  cluster API: http://{}/api/cluster", opts.http);
    }
    println!(
        "connect bots with:\n  cargo run --release -p zonescaler-bots -- --connect {addr0} --cert {} --bots 100 --duration 30s{}",
        cert0.display(),
        if opts.shards > 1 {
            " --scenario border"
        } else {
            ""
        }
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
                "--scenario",
                &opts.bot_scenario,
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

/// A fresh 256-bit cluster secret, hex-encoded.
fn random_secret() -> anyhow::Result<String> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("the system random source failed"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Write a private key readable by this user only.
fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    std::io::Write::write_all(&mut f, contents.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

fn wait_for_file(path: &Path, procs: &mut [Proc], timeout: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    while !path.exists() {
        for p in procs.iter_mut() {
            if let Some(status) = p.child.try_wait()? {
                bail!("{} exited during start ({status})", p.name);
            }
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
