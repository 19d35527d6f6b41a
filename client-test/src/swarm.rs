//! The QUIC swarm: thousands of [`BotClient`]s over real connections to a shard.
//!
//! Bots ramp up evenly over `ramp`, each runs until the run's deadline, and every outcome
//! (including connection failures and the shard's stated reason for a close) lands in the report.

use crate::core::{BotClient, BotConfig, Scenario};
use crate::report::{BotOutcome, Report};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use zonescaler_net::quic::{self, NetError};
use zonescaler_net::tls::ClientTrust;
use zonescaler_shared::protocol::ErrorCode;
use zonescaler_shared::rng::Rng;

/// How a swarm runs.
#[derive(Clone, Debug)]
pub struct SwarmConfig {
    pub addr: SocketAddr,
    pub server_name: String,
    pub bots: usize,
    pub duration: Duration,
    pub ramp: Duration,
    pub scenario: Scenario,
    pub trust: ClientTrust,
    pub seed: u64,
    /// Inputs per second per bot (the shard's tick rate is a good choice).
    pub input_hz: u32,
    /// Show a progress bar (or, without a terminal, a line every few seconds).
    pub progress: bool,
}

/// Live counters shown while the swarm runs.
#[derive(Debug, Default)]
struct Live {
    connected: AtomicUsize,
    failed: AtomicUsize,
    snapshots: AtomicU64,
}

/// Run the swarm to completion and build its report.
pub async fn run(cfg: SwarmConfig) -> anyhow::Result<Report> {
    let endpoints_n = (cfg.bots / 128 + 1).min(8);
    let mut endpoints = Vec::with_capacity(endpoints_n);
    for _ in 0..endpoints_n {
        endpoints.push(quic::client_endpoint_for(&cfg.trust, cfg.addr)?);
    }
    let start = Instant::now();
    let deadline = start + cfg.ramp + cfg.duration;
    let live = Arc::new(Live::default());
    let mut tasks = Vec::with_capacity(cfg.bots);
    for i in 0..cfg.bots {
        let endpoint = endpoints[i % endpoints_n].clone();
        let offset = cfg.ramp.mul_f64(i as f64 / cfg.bots.max(1) as f64);
        let bot_cfg = BotConfig {
            name: format!("bot-{i}"),
            scenario: cfg.scenario,
            seed: cfg.seed.wrapping_add(i as u64 * 7919),
        };
        let (addr, name, live, input_hz) = (
            cfg.addr,
            cfg.server_name.clone(),
            live.clone(),
            cfg.input_hz,
        );
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until((start + offset).into()).await;
            run_bot(
                endpoint, addr, name, bot_cfg, start, deadline, input_hz, live,
            )
            .await
        }));
    }
    let progress = cfg
        .progress
        .then(|| spawn_progress(cfg.bots, start, deadline, live.clone()));
    let mut outcomes = Vec::with_capacity(cfg.bots);
    let mut extra = BTreeMap::new();
    for t in tasks {
        match t.await {
            Ok(o) => outcomes.push(o),
            Err(e) => {
                *extra.entry(format!("bot_task_failed: {e}")).or_insert(0) += 1;
                outcomes.push(BotOutcome {
                    metrics: Default::default(),
                    active_s: 0.0,
                    connected: false,
                });
            }
        }
    }
    if let Some(p) = progress {
        p.abort();
    }
    for e in &endpoints {
        e.close(0u32.into(), b"done");
    }
    for e in &endpoints {
        let _ = tokio::time::timeout(Duration::from_secs(2), e.wait_idle()).await;
    }
    Ok(Report::build(
        cfg.scenario.name(),
        cfg.duration.as_secs_f64(),
        cfg.bots,
        &outcomes,
        &extra,
    ))
}

fn spawn_progress(
    bots: usize,
    start: Instant,
    deadline: Instant,
    live: Arc<Live>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let total = deadline.duration_since(start).as_secs().max(1);
        let tty = std::io::stderr().is_terminal();
        let bar = indicatif::ProgressBar::new(total);
        if tty {
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:30}] {pos}/{len}s {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
        } else {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        let mut every = tokio::time::interval(Duration::from_secs(1));
        let mut last_line = 0;
        loop {
            every.tick().await;
            let el = start.elapsed().as_secs();
            let msg = format!(
                "{}/{bots} connected, {} failed, {} snapshots",
                live.connected.load(Ordering::Relaxed),
                live.failed.load(Ordering::Relaxed),
                live.snapshots.load(Ordering::Relaxed)
            );
            if tty {
                bar.set_position(el.min(total));
                bar.set_message(msg);
            } else if el >= last_line + 5 {
                last_line = el;
                eprintln!("[{el:>4}s/{total}s] {msg}");
            }
        }
    })
}

async fn run_bot(
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
    server_name: String,
    cfg: BotConfig,
    start: Instant,
    deadline: Instant,
    input_hz: u32,
    live: Arc<Live>,
) -> BotOutcome {
    let now_us = || start.elapsed().as_micros() as u64;
    let seed = cfg.seed;
    let mut bot = BotClient::new(cfg);
    let hello = bot.hello(now_us());
    let fail = |mut bot: BotClient, kind: String, live: &Live| {
        live.failed.fetch_add(1, Ordering::Relaxed);
        bot.metrics.error(&kind);
        BotOutcome {
            metrics: bot.metrics,
            active_s: 0.0,
            connected: false,
        }
    };
    let session = match tokio::time::timeout(
        Duration::from_secs(10),
        quic::connect(&endpoint, addr, &server_name, &hello),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return fail(bot, error_kind("connect", &e), &live),
        Err(_) => return fail(bot, "connect_timeout".into(), &live),
    };
    let mut session = session;
    let welcome = match tokio::time::timeout(Duration::from_secs(10), session.read_control()).await
    {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => return fail(bot, error_kind("login", &e), &live),
        Err(_) => return fail(bot, "welcome_timeout".into(), &live),
    };
    if let Err(e) = bot.on_control(now_us(), &welcome) {
        return fail(bot, format!("login_refused: {e}"), &live);
    }
    live.connected.fetch_add(1, Ordering::Relaxed);
    let welcomed = Instant::now();
    // Control frames after Welcome are read on their own task: reads are not cancel-safe.
    let (ctrl_tx, mut ctrl_rx) = mpsc::channel::<Result<Vec<u8>, NetError>>(4);
    let conn = session.conn.clone();
    let reader = tokio::spawn(async move {
        loop {
            let r = session.read_control().await;
            let stop = r.is_err();
            if ctrl_tx.send(r).await.is_err() || stop {
                break;
            }
        }
    });
    // Start the input clock at a random phase. Starting it on Welcome would lock every bot to the
    // moment just after a shard tick (when Welcome is sent), so each input would wait a whole tick:
    // real clients run their own frame clocks at arbitrary phases.
    let period = Duration::from_secs_f64(1.0 / f64::from(input_hz.max(1)));
    let phase = period.mul_f32(Rng::new(seed ^ 0xC10C).next_f32());
    let mut inputs = tokio::time::interval_at(tokio::time::Instant::now() + phase, period);
    inputs.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let end = tokio::time::sleep_until(deadline.into());
    tokio::pin!(end);
    let mut last_snaps = 0;
    loop {
        tokio::select! {
            _ = &mut end => break,
            d = conn.read_datagram() => match d {
                Ok(bytes) => {
                    bot.on_datagram(now_us(), &bytes);
                    if bot.metrics.snapshots != last_snaps {
                        live.snapshots.fetch_add(bot.metrics.snapshots - last_snaps, Ordering::Relaxed);
                        last_snaps = bot.metrics.snapshots;
                    }
                }
                Err(e) => {
                    bot.metrics.error(&error_kind("connection", &NetError::from(e)));
                    break;
                }
            },
            c = ctrl_rx.recv() => match c {
                Some(Ok(bytes)) => {
                    if bot.on_control(now_us(), &bytes).is_err() {
                        break;
                    }
                }
                Some(Err(e)) => {
                    bot.metrics.error(&error_kind("control", &e));
                    break;
                }
                None => break,
            },
            _ = inputs.tick() => {
                if let Some(b) = bot.next_input(now_us())
                    && conn.send_datagram(b.into()).is_err()
                {
                    bot.metrics.error("send_input_failed");
                }
            }
        }
    }
    reader.abort();
    conn.close(0u32.into(), b"run finished");
    let active_s = Instant::now()
        .min(deadline)
        .saturating_duration_since(welcomed)
        .as_secs_f64();
    BotOutcome {
        metrics: bot.metrics,
        active_s,
        connected: true,
    }
}

/// A stable error kind for the report: the shard's close code when it gave one, else the class.
fn error_kind(stage: &str, e: &NetError) -> String {
    match e {
        NetError::PeerClosed { code, .. } => match ErrorCode::from_close_code(*code) {
            Some(c) => format!("{stage}: closed by shard: {}", c.as_str()),
            None => format!("{stage}: closed by shard with code {code}"),
        },
        other => {
            let s = other.to_string();
            let short: String = s.chars().take(60).collect();
            format!("{stage}: {short}")
        }
    }
}
