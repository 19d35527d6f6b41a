//! Prometheus metrics of one shard process (`GET /metrics` on `--metrics ADDR`).
//!
//! Names follow Prometheus conventions: the `zonescaler_` prefix, base units (seconds, bytes),
//! `_total` on counters, and only low-cardinality labels (a direction, a state, a close reason,
//! a queue name; never an entity, a client or a player). Every metric has a description, so
//! `promtool check metrics` finds nothing to complain about.
//!
//! The tick thread records the tick's wall and CPU time every tick; the rest (gauges, and the
//! counters the shard already keeps, published as absolute values) once a second, so the hot
//! path pays two atomic updates. The exporter renders the text on request; its histogram buckets
//! are drained every few seconds (`run_upkeep`).

use crate::cluster::Node;
use crate::core::ShardApp;
use crate::core::components::{InTransit, Owned, Proxy};
use crate::core::resources::{HandoffStats, Inbox, ShardInbox, ShardStats, TickClock};
use crate::interest::Viewers;
use anyhow::Context;
use bevy_ecs::query::With;
use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tracing::error;
use zonescaler_net::quic::QuicServer;

/// How often gauges and the shard's own counters are published.
const PUBLISH_EVERY: Duration = Duration::from_secs(1);
/// How often the exporter's histograms are drained.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Tick durations, seconds: a 30 Hz tick has 33 ms.
const TICK_BUCKETS_S: &[f64] = &[
    0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.033, 0.066, 0.1, 0.25, 0.5, 1.0,
];
/// Handoff transit, seconds.
const TRANSIT_BUCKETS_S: &[f64] = &[
    0.005, 0.01, 0.02, 0.033, 0.05, 0.066, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
];
/// Replication lag, ticks behind.
const LAG_BUCKETS_TICKS: &[f64] = &[0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 32.0, 64.0];

/// This process's metrics: the exporter's handle and when things were last published.
pub struct ShardMetrics {
    handle: PrometheusHandle,
    addr: SocketAddr,
    last_publish: Instant,
    last_upkeep: Instant,
}

impl std::fmt::Debug for ShardMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardMetrics")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl ShardMetrics {
    /// Install the process's recorder and serve `/metrics` on `addr` (inside a tokio runtime).
    pub fn install(addr: SocketAddr) -> anyhow::Result<Self> {
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("zonescaler_tick_duration_seconds".into()),
                TICK_BUCKETS_S,
            )
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("zonescaler_handoff_transit_seconds".into()),
                    TRANSIT_BUCKETS_S,
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("zonescaler_tick_cpu_seconds".into()),
                    TICK_BUCKETS_S,
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("zonescaler_replication_lag_ticks".into()),
                    LAG_BUCKETS_TICKS,
                )
            })
            .context("metric buckets")?
            .install_recorder()
            .context("cannot install the metrics recorder (one per process)")?;
        describe();
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
        listener.set_nonblocking(true).context("metrics listener")?;
        let bound = listener.local_addr()?;
        let listener =
            tokio::net::TcpListener::from_std(listener).context("metrics listener needs tokio")?;
        let render = handle.clone();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let text = render.render();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        text,
                    )
                }
            }),
        );
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                error!(error = %e, "metrics endpoint stopped");
            }
        });
        println!("zonescaler: metrics on http://{bound}/metrics");
        let now = Instant::now();
        Ok(Self {
            handle,
            addr: bound,
            last_publish: now - PUBLISH_EVERY,
            last_upkeep: now,
        })
    }

    /// Where `/metrics` is served.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// After every tick: its times; once a second, everything else.
    pub fn after_tick(
        &mut self,
        app: &mut ShardApp,
        server: &QuicServer,
        node: Option<&Node>,
        wall: Duration,
        cpu_ns: u64,
    ) {
        histogram!("zonescaler_tick_duration_seconds").record(wall.as_secs_f64());
        histogram!("zonescaler_tick_cpu_seconds").record(cpu_ns as f64 / 1e9);
        if self.last_publish.elapsed() >= PUBLISH_EVERY {
            self.last_publish = Instant::now();
            publish_world(app);
            publish_stats(app);
            publish_transport(server, node);
            publish_process();
        }
        if self.last_upkeep.elapsed() >= UPKEEP_EVERY {
            self.last_upkeep = Instant::now();
            self.handle.run_upkeep();
        }
    }
}

/// Descriptions and units of every metric (promtool wants a HELP line for each).
fn describe() {
    describe_histogram!(
        "zonescaler_tick_duration_seconds",
        Unit::Seconds,
        "Wall time of one shard tick (all six sets)."
    );
    describe_histogram!(
        "zonescaler_tick_cpu_seconds",
        Unit::Seconds,
        "CPU time of the tick thread per tick (its _sum is the thread's CPU seconds: what a noisy machine distorts least)."
    );
    describe_gauge!(
        "zonescaler_entities",
        "Networked entities on this shard, by authority state (owned, in_transit, proxy)."
    );
    describe_gauge!(
        "zonescaler_proxies",
        "Read-only proxies of neighbours' entities held here."
    );
    describe_gauge!("zonescaler_clients", "Client connections of this shard.");
    describe_counter!(
        "zonescaler_handoffs_total",
        "Handoffs this shard completed as source (direction=out) or accepted as target (direction=in)."
    );
    describe_counter!(
        "zonescaler_handoff_refusals_total",
        "Handoff refusals sent (direction=out) and received (direction=in)."
    );
    describe_counter!(
        "zonescaler_handoff_cancels_total",
        "Handoffs cancelled after their timeout."
    );
    describe_histogram!(
        "zonescaler_handoff_transit_seconds",
        Unit::Seconds,
        "From the source freezing an entity to this shard simulating it."
    );
    describe_transport();
}

/// Descriptions of the transport's and the process's metrics.
fn describe_transport() {
    describe_counter!(
        "zonescaler_cell_moves_total",
        "Cells moved to or from this shard at runtime (cell moves arrive with the balancer)."
    );
    describe_counter!(
        "zonescaler_client_bytes_total",
        Unit::Bytes,
        "Bytes of client datagrams and control frames, by direction."
    );
    describe_counter!(
        "zonescaler_client_datagrams_total",
        "Client datagrams, by direction."
    );
    describe_counter!(
        "zonescaler_link_bytes_total",
        Unit::Bytes,
        "Bytes on shard links, by direction."
    );
    describe_counter!(
        "zonescaler_connections_total",
        "Client connection attempts, by outcome (accepted, refused_per_address, refused_full, handshake_failed)."
    );
    describe_counter!(
        "zonescaler_quic_retries_total",
        "QUIC Retry packets sent to make new clients prove their address under handshake load."
    );
    describe_counter!(
        "zonescaler_datagrams_dropped_total",
        "Client datagrams dropped by the driver, by reason."
    );
    describe_counter!(
        "zonescaler_connection_closes_total",
        "Client connections the shard closed, by reason."
    );
    describe_counter!(
        "zonescaler_decode_errors_total",
        "Messages that did not decode, by channel (client, link)."
    );
    describe_histogram!(
        "zonescaler_replication_lag_ticks",
        "How many ticks behind the shard each client's acknowledged snapshot is (sampled each second)."
    );
    describe_gauge!(
        "zonescaler_queue_length",
        "Items waiting in a shard queue, by queue."
    );
    describe_counter!(
        "zonescaler_snapshot_bytes_total",
        Unit::Bytes,
        "Snapshot bytes sent to clients."
    );
    describe_counter!("zonescaler_inputs_total", "Client inputs, by outcome.");
    describe_counter!(
        "zonescaler_redirects_total",
        "Clients sent to another shard."
    );
    describe_gauge!(
        "zonescaler_process_resident_memory_bytes",
        Unit::Bytes,
        "Resident memory of the shard process."
    );
    describe_counter!(
        "zonescaler_process_cpu_seconds_total",
        Unit::Seconds,
        "CPU time of the whole shard process (all threads), whole seconds."
    );
}

/// Entity counts by state, client replication lag, queue lengths.
fn publish_world(app: &mut ShardApp) {
    let w = &mut app.world;
    let owned = w.query_filtered::<(), With<Owned>>().iter(w).count();
    let in_transit = w.query_filtered::<(), With<InTransit>>().iter(w).count();
    let proxies = w.query_filtered::<(), With<Proxy>>().iter(w).count();
    gauge!("zonescaler_entities", "state" => "owned").set(owned as f64);
    gauge!("zonescaler_entities", "state" => "in_transit").set(in_transit as f64);
    gauge!("zonescaler_entities", "state" => "proxy").set(proxies as f64);
    gauge!("zonescaler_proxies").set(proxies as f64);
    let tick = w.resource::<TickClock>().tick.0;
    let lag = histogram!("zonescaler_replication_lag_ticks");
    for v in w.resource::<Viewers>().0.values() {
        if v.view.is_some() && v.ack_tick > 0 {
            lag.record(tick.saturating_sub(v.ack_tick) as f64);
        }
    }
    gauge!("zonescaler_queue_length", "queue" => "client_inbox")
        .set(w.resource::<Inbox>().events.len() as f64);
    gauge!("zonescaler_queue_length", "queue" => "link_inbox")
        .set(w.resource::<ShardInbox>().messages.len() as f64);
}

/// The shard's own counters, as absolute values.
fn publish_stats(app: &ShardApp) {
    let s = app.world.resource::<ShardStats>();
    gauge!("zonescaler_clients").set(s.clients as f64);
    counter!("zonescaler_snapshot_bytes_total").absolute(s.snapshot_bytes);
    counter!("zonescaler_inputs_total", "outcome" => "applied").absolute(s.inputs_applied);
    counter!("zonescaler_inputs_total", "outcome" => "out_of_world")
        .absolute(s.inputs_refused_out_of_world);
    counter!("zonescaler_inputs_total", "outcome" => "rate_limited")
        .absolute(s.inputs_dropped_rate);
    counter!("zonescaler_inputs_total", "outcome" => "stale").absolute(s.inputs_stale);
    counter!("zonescaler_inputs_total", "outcome" => "forwarded").absolute(s.inputs_forwarded);
    counter!("zonescaler_redirects_total").absolute(s.redirects);
    for (reason, n) in &s.closed {
        counter!("zonescaler_connection_closes_total", "reason" => *reason).absolute(*n);
    }
    counter!("zonescaler_decode_errors_total", "channel" => "client").absolute(s.decode_errors);
    let links = app.world.resource::<ShardInbox>();
    counter!("zonescaler_decode_errors_total", "channel" => "link").absolute(links.refused);
    let h = app.world.resource::<HandoffStats>();
    counter!("zonescaler_handoffs_total", "direction" => "out").absolute(h.out);
    counter!("zonescaler_handoffs_total", "direction" => "in").absolute(h.accepted);
    counter!("zonescaler_handoff_refusals_total", "direction" => "out").absolute(h.refused_sent);
    counter!("zonescaler_handoff_refusals_total", "direction" => "in").absolute(h.refused_received);
    counter!("zonescaler_handoff_cancels_total").absolute(h.cancels_sent);
    counter!("zonescaler_cell_moves_total").absolute(0);
}

/// What the transports counted.
fn publish_transport(server: &QuicServer, node: Option<&Node>) {
    let n = server.stats();
    counter!("zonescaler_client_bytes_total", "direction" => "in")
        .absolute(n.datagram_bytes_in + n.control_bytes_in);
    counter!("zonescaler_client_bytes_total", "direction" => "out")
        .absolute(n.datagram_bytes_out + n.control_bytes_out);
    counter!("zonescaler_client_datagrams_total", "direction" => "in").absolute(n.datagrams_in);
    counter!("zonescaler_client_datagrams_total", "direction" => "out").absolute(n.datagrams_out);
    counter!("zonescaler_connections_total", "outcome" => "accepted")
        .absolute(n.connections_accepted);
    counter!("zonescaler_connections_total", "outcome" => "refused_per_address")
        .absolute(n.connections_refused_per_address);
    counter!("zonescaler_connections_total", "outcome" => "refused_full")
        .absolute(n.connections_refused);
    counter!("zonescaler_connections_total", "outcome" => "handshake_failed")
        .absolute(n.handshakes_failed);
    counter!("zonescaler_quic_retries_total").absolute(n.retries_sent);
    gauge!("zonescaler_queue_length", "queue" => "handshakes").set(n.handshakes_in_progress as f64);
    counter!("zonescaler_datagrams_dropped_total", "reason" => "inbox_full")
        .absolute(n.datagrams_dropped_inbox_full);
    counter!("zonescaler_datagrams_dropped_total", "reason" => "send_failed")
        .absolute(n.datagram_send_failures);
    if let Some(node) = node {
        let l = node.links.stats();
        counter!("zonescaler_link_bytes_total", "direction" => "in").absolute(l.frame_bytes_in);
        counter!("zonescaler_link_bytes_total", "direction" => "out").absolute(l.frame_bytes_out);
    }
}

/// Resident memory and CPU of the whole process, from `/proc` (Linux; elsewhere nothing).
fn publish_process() {
    if let Some(rss) = resident_bytes() {
        gauge!("zonescaler_process_resident_memory_bytes").set(rss as f64);
    }
    if let Some(cpu) = process_cpu_seconds() {
        counter!("zonescaler_process_cpu_seconds_total").absolute(cpu as u64);
    }
}

/// Resident set size of this process, in bytes.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// User + system CPU seconds of this process.
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// CPU time of the calling thread, nanoseconds (`/proc/thread-self/schedstat`; 0 where there is
/// none). A tick's CPU time is what a noisy, shared machine distorts least.
pub fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
