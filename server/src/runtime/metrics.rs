//! Prometheus metrics of one shard process (`GET /metrics` on `--metrics ADDR`).
//!
//! Names follow Prometheus conventions: the `zonescaler_` prefix, base units (seconds, bytes),
//! `_total` on counters, and only low-cardinality labels (a direction, a state, a close reason,
//! a queue name; never an entity, a client or a player). Every metric has a description, so
//! `promtool check metrics` finds nothing to complain about (`.ci/metrics.sh` checks that on a
//! loaded cluster, and that every metric moves).
//!
//! The tick thread records the tick's wall and CPU time every tick (two histogram records, on
//! handles registered once) and keeps its queue lengths' maxima; the rest (gauges, and the
//! counters the shard and its transports already keep, published as absolute values) goes out
//! once a second. The process's CPU time and memory are read when scraped, as every Prometheus
//! client's process collector does. The exporter renders the text on request; its histogram
//! buckets are drained every few seconds (`run_upkeep`).

use crate::cluster::Node;
use crate::core::ShardApp;
use crate::core::components::{InTransit, Owned, Proxy};
use crate::core::resources::{HandoffStats, ReplicaStatus, ShardInbox, ShardStats, TickClock};
use crate::interest::Viewers;
use anyhow::Context;
use bevy_ecs::query::With;
use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tracing::error;
use zonescaler_net::link::LinkStats;
use zonescaler_net::quic::{NetStats, QuicServer};

/// How often gauges and the shard's own counters are published.
const PUBLISH_EVERY: Duration = Duration::from_secs(1);
/// How often the exporter's histograms are drained.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Tick durations, seconds. A small world ticks in well under a millisecond, so the low end is
/// fine; 0.033 is a 30 Hz tick's whole budget.
const TICK_BUCKETS_S: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.033, 0.05, 0.1, 0.25, 1.0,
];
/// Handoff transit, seconds.
const TRANSIT_BUCKETS_S: &[f64] = &[
    0.005, 0.01, 0.02, 0.033, 0.05, 0.066, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
];
/// Replication lag, seconds. Bounds fall between whole ticks at 30 Hz (one tick is 0.033 s), so
/// a lag of n ticks lands in one bucket however the division rounds.
const LAG_BUCKETS_S: &[f64] = &[
    0.0, 0.025, 0.05, 0.075, 0.125, 0.175, 0.25, 0.35, 0.5, 1.0, 2.0, 5.0,
];

/// The lengths of the shard's queues as one tick found and left them: what waited for it when it
/// began, and what it handed the transports when it ended. Between ticks they are empty, so these
/// are the moments a length says something. Filled by the tick loop; the most of each over a
/// second is published (one tick's sample would miss bursts, and link messages do not arrive
/// every tick).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TickQueues {
    /// Client events (connects, control messages, datagrams, disconnects) the tick took in.
    pub client_inbox: usize,
    /// Shard-link messages the tick took in.
    pub link_inbox: usize,
    /// Commands (snapshots, control messages, closes) the tick handed the client driver.
    pub client_outbox: usize,
    /// Messages the tick handed the shard links.
    pub link_outbox: usize,
}

impl TickQueues {
    /// Each queue's longer length of the two.
    fn max(self, other: Self) -> Self {
        Self {
            client_inbox: self.client_inbox.max(other.client_inbox),
            link_inbox: self.link_inbox.max(other.link_inbox),
            client_outbox: self.client_outbox.max(other.client_outbox),
            link_outbox: self.link_outbox.max(other.link_outbox),
        }
    }
}

/// This process's metrics: the exporter's handle and when things were last published.
pub struct ShardMetrics {
    handle: PrometheusHandle,
    addr: SocketAddr,
    last_publish: Instant,
    last_upkeep: Instant,
    /// The longest queues since the last publication.
    queues: TickQueues,
    /// The per-tick histograms, registered once so a tick pays no registry lookup.
    ticks: TickHistograms,
}

/// The two histograms every tick records.
struct TickHistograms {
    wall: metrics::Histogram,
    cpu: metrics::Histogram,
}

impl TickHistograms {
    /// Register them with the current recorder.
    fn register() -> Self {
        Self {
            wall: histogram!("zonescaler_tick_duration_seconds"),
            cpu: histogram!("zonescaler_tick_cpu_seconds"),
        }
    }

    /// The per-tick part of the metrics: two histogram records.
    fn record(&self, wall: Duration, cpu: Duration) {
        self.wall.record(wall.as_secs_f64());
        self.cpu.record(cpu.as_secs_f64());
    }
}

impl std::fmt::Debug for ShardMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardMetrics")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// The exporter with this module's histogram buckets.
fn builder() -> Result<PrometheusBuilder, BuildError> {
    let mut b = PrometheusBuilder::new();
    for (name, buckets) in [
        ("zonescaler_tick_duration_seconds", TICK_BUCKETS_S),
        ("zonescaler_tick_cpu_seconds", TICK_BUCKETS_S),
        ("zonescaler_handoff_transit_seconds", TRANSIT_BUCKETS_S),
        ("zonescaler_replication_lag_seconds", LAG_BUCKETS_S),
    ] {
        b = b.set_buckets_for_metric(Matcher::Full(name.into()), buckets)?;
    }
    Ok(b)
}

/// The text `/metrics` serves: what the recorder holds, then the process's own metrics.
fn render(handle: &PrometheusHandle) -> String {
    let mut text = handle.render();
    write_process_metrics(&mut text);
    text
}

impl ShardMetrics {
    /// Install the process's recorder and serve `/metrics` on `addr` (inside a tokio runtime).
    pub fn install(addr: SocketAddr) -> anyhow::Result<Self> {
        let handle = builder()
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
        let handle_for_http = handle.clone();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let text = render(&handle_for_http);
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
            queues: TickQueues::default(),
            ticks: TickHistograms::register(),
        })
    }

    /// Where `/metrics` is served.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// After every tick: its times and queue lengths; once a second, everything else.
    pub fn after_tick(
        &mut self,
        app: &mut ShardApp,
        server: &QuicServer,
        node: Option<&Node>,
        wall: Duration,
        cpu: Duration,
        queues: TickQueues,
    ) {
        self.ticks.record(wall, cpu);
        self.queues = self.queues.max(queues);
        if self.last_publish.elapsed() >= PUBLISH_EVERY {
            self.last_publish = Instant::now();
            publish(
                app,
                &server.stats(),
                node.map(|n| (n.links.stats(), SessionCounters::of(n))),
                std::mem::take(&mut self.queues),
            );
            if let Some(m) = node.and_then(|n| n.master.as_ref()) {
                publish_audit(&m.audit());
            }
        }
        if self.last_upkeep.elapsed() >= UPKEEP_EVERY {
            self.last_upkeep = Instant::now();
            self.handle.run_upkeep();
        }
    }
}

/// What a node's sessions and redials counted since start (`Node::held_frames`,
/// `Node::session_frames`, `Node::redial_stats`).
#[derive(Clone, Copy, Debug, Default)]
struct SessionCounters {
    held: u64,
    dropped: u64,
    resent: u64,
    duplicates: u64,
    redials: crate::cluster::node::RedialStats,
}

impl SessionCounters {
    fn of(n: &Node) -> Self {
        let (held, dropped) = n.held_frames();
        let (resent, duplicates) = n.session_frames();
        Self {
            held,
            dropped,
            resent,
            duplicates,
            redials: n.redial_stats,
        }
    }
}

/// The once-a-second part: the world, the shard's counters, the transports' counters.
/// `links`: the links' counters and the sessions' ([`SessionCounters`]); none on a lone shard.
fn publish(
    app: &mut ShardApp,
    net: &NetStats,
    links: Option<(LinkStats, SessionCounters)>,
    queues: TickQueues,
) {
    publish_world(app, queues, net);
    publish_stats(app, net, links.as_ref().map(|(l, _)| l));
    publish_transport(net, links.as_ref().map(|(l, _)| l));
    let c = links.map(|(_, c)| c).unwrap_or_default();
    counter!("zonescaler_link_frames_unlinked_total", "outcome" => "held").absolute(c.held);
    counter!("zonescaler_link_frames_unlinked_total", "outcome" => "dropped").absolute(c.dropped);
    counter!("zonescaler_link_frames_again_total", "outcome" => "resent").absolute(c.resent);
    counter!("zonescaler_link_frames_again_total", "outcome" => "duplicate").absolute(c.duplicates);
    let r = c.redials;
    counter!("zonescaler_link_redials_total", "outcome" => "dialled").absolute(r.dialled);
    counter!("zonescaler_link_redials_total", "outcome" => "up").absolute(r.up);
    counter!("zonescaler_link_redials_total", "outcome" => "failed").absolute(r.failed);
}

/// The master's ownership audit (`cluster::audit`): on the master only.
fn publish_audit(a: &crate::cluster::Audit) {
    counter!("zonescaler_audits_total").absolute(a.audits_total);
    counter!("zonescaler_audit_duplicates_total").absolute(a.duplicates_total);
}

/// Descriptions and units of every metric (promtool wants a HELP line for each).
fn describe() {
    describe_histogram!(
        "zonescaler_tick_duration_seconds",
        Unit::Seconds,
        "Wall time of one shard tick (the schedule's six sets, without the transports' work)."
    );
    describe_histogram!(
        "zonescaler_tick_cpu_seconds",
        Unit::Seconds,
        "CPU time of the tick thread per tick (what a noisy, shared machine distorts least; its _sum is the tick thread's CPU seconds)."
    );
    describe_gauge!(
        "zonescaler_entities",
        "Networked entities on this shard, by authority state (owned, in_transit, proxy)."
    );
    describe_gauge!(
        "zonescaler_proxies",
        "Read-only proxies of neighbours' entities held here."
    );
    describe_gauge!(
        "zonescaler_clients",
        "Client connections the shard knows (logging in, playing, or redirected and not yet gone)."
    );
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
        "From the source freezing an entity to this shard, its target, simulating it."
    );
    // Recorded by the handoff code; registered now so it is exported, empty, before the first.
    let _ = histogram!("zonescaler_handoff_transit_seconds");
    describe_counter!(
        "zonescaler_cell_moves_total",
        "Cells moved away from (out) or to (in) this shard at runtime."
    );
    describe_histogram!(
        "zonescaler_replication_lag_seconds",
        Unit::Seconds,
        "How far behind the shard's tick each client's last acknowledged snapshot is, in seconds of ticks (every client, sampled each second)."
    );
    describe_gauge!(
        "zonescaler_queue_length",
        "Items in a shard queue: the most a tick found in client_inbox and link_inbox, and left in client_outbox and link_outbox, over the last second; handshakes in progress now."
    );
    describe_counter!(
        "zonescaler_snapshot_bytes_total",
        Unit::Bytes,
        "Snapshot bytes sent to clients."
    );
    describe_counter!(
        "zonescaler_snapshots_paced_total",
        "Client snapshots not sent because the client was too far behind in acknowledging (interest.snapshot_window_ms)."
    );
    describe_counter!("zonescaler_inputs_total", "Client inputs, by outcome.");
    describe_counter!(
        "zonescaler_redirects_total",
        "Clients sent to another shard."
    );
    describe_counter!(
        "zonescaler_redirects_prepared_total",
        "Clients told that a redirect may follow (their avatar was offered to another shard), so they can connect there ahead of it."
    );
    describe_transport();
    describe_failover();
}

/// Descriptions of the failover metrics: replication, the lease, the master's audit.
fn describe_failover() {
    describe_gauge!(
        "zonescaler_replica_lag_ticks",
        "Ticks between this shard's tick and the last replica batch its buddy acknowledged (0 without a buddy)."
    );
    describe_counter!(
        "zonescaler_replica_promoted_total",
        "Entities this shard took over from a dead member's replica (failover)."
    );
    // Counted by the failover code; registered now so it is exported, at 0, before the first.
    let _ = counter!("zonescaler_replica_promoted_total");
    describe_counter!(
        "zonescaler_lease_lapses_total",
        "Times this shard's ownership lease lapsed (the master did not answer its heartbeats in time) and its simulation paused until the master answered."
    );
    describe_counter!(
        "zonescaler_audits_total",
        "Ownership audits the master took (every second, from every live shard's report of the entities it owns); on the master only."
    );
    describe_counter!(
        "zonescaler_audit_duplicates_total",
        "Entities the master's ownership audits found owned by two shards at once, summed over audits (one owned twice for three audits counts 3; should stay 0); on the master only."
    );
}

/// Descriptions of the transports' metrics.
fn describe_transport() {
    describe_counter!(
        "zonescaler_client_bytes_total",
        Unit::Bytes,
        "Payload bytes of client datagrams and control messages, by direction (without QUIC's overhead)."
    );
    describe_counter!(
        "zonescaler_client_datagrams_total",
        "Client datagrams, by direction."
    );
    describe_counter!(
        "zonescaler_link_bytes_total",
        Unit::Bytes,
        "Payload bytes of shard-link messages, by direction (without QUIC's overhead)."
    );
    describe_counter!(
        "zonescaler_link_frames_unlinked_total",
        "Link frames for a member this shard had no link to (a joiner whose first message is on its way, or a dropped link being redialled): kept and sent once it linked (outcome=held), or dropped past the session's bound (outcome=dropped)."
    );
    describe_counter!(
        "zonescaler_link_frames_again_total",
        "Session frames sent again on a redialled link because the peer had not acknowledged them (outcome=resent), and received again and dropped (outcome=duplicate)."
    );
    describe_counter!(
        "zonescaler_link_redials_total",
        "Redials of dropped links to members: dials started (outcome=dialled), links back up (outcome=up), dials that failed and backed off (outcome=failed)."
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
        "Client connections that ended, by reason: the error code when the shard closed it, else client_closed, timed_out, reset or transport_error."
    );
    describe_counter!(
        "zonescaler_decode_errors_total",
        "Messages refused as undecodable (including oversize or malformed frames), by channel (client, link)."
    );
}

/// Entity counts by state, client replication lag, queue lengths.
fn publish_world(app: &mut ShardApp, queues: TickQueues, net: &NetStats) {
    let w = &mut app.world;
    let owned = w.query_filtered::<(), With<Owned>>().iter(w).count();
    let in_transit = w.query_filtered::<(), With<InTransit>>().iter(w).count();
    let proxies = w.query_filtered::<(), With<Proxy>>().iter(w).count();
    gauge!("zonescaler_entities", "state" => "owned").set(owned as f64);
    gauge!("zonescaler_entities", "state" => "in_transit").set(in_transit as f64);
    gauge!("zonescaler_entities", "state" => "proxy").set(proxies as f64);
    gauge!("zonescaler_proxies").set(proxies as f64);
    let clock = w.resource::<TickClock>();
    let (tick, tick_s) = (clock.tick.0, 1.0 / f64::from(clock.tick_hz.max(1)));
    let lag = histogram!("zonescaler_replication_lag_seconds");
    for v in w.resource::<Viewers>().0.values() {
        if v.view.is_some() && v.ack_tick > 0 {
            lag.record(tick.saturating_sub(v.ack_tick) as f64 * tick_s);
        }
    }
    for (queue, len) in [
        ("client_inbox", queues.client_inbox),
        ("link_inbox", queues.link_inbox),
        ("client_outbox", queues.client_outbox),
        ("link_outbox", queues.link_outbox),
        ("handshakes", net.handshakes_in_progress as usize),
    ] {
        gauge!("zonescaler_queue_length", "queue" => queue).set(len as f64);
    }
    // Zero until the shard has a buddy (a lone shard has none).
    let replica_lag = w.get_resource::<ReplicaStatus>().map_or(0, |r| r.lag_ticks);
    gauge!("zonescaler_replica_lag_ticks").set(f64::from(replica_lag));
}

/// The shard's own counters, as absolute values; decode errors with the transports' refusals.
fn publish_stats(app: &ShardApp, net: &NetStats, links: Option<&LinkStats>) {
    let s = app.world.resource::<ShardStats>();
    gauge!("zonescaler_clients").set(s.clients as f64);
    counter!("zonescaler_snapshot_bytes_total").absolute(s.snapshot_bytes);
    counter!("zonescaler_snapshots_paced_total").absolute(s.snapshots_paced);
    counter!("zonescaler_inputs_total", "outcome" => "applied").absolute(s.inputs_applied);
    counter!("zonescaler_inputs_total", "outcome" => "out_of_world")
        .absolute(s.inputs_refused_out_of_world);
    counter!("zonescaler_inputs_total", "outcome" => "rate_limited")
        .absolute(s.inputs_dropped_rate);
    counter!("zonescaler_inputs_total", "outcome" => "stale").absolute(s.inputs_stale);
    counter!("zonescaler_inputs_total", "outcome" => "forwarded").absolute(s.inputs_forwarded);
    counter!("zonescaler_redirects_total").absolute(s.redirects);
    counter!("zonescaler_redirects_prepared_total").absolute(s.redirects_prepared);
    counter!("zonescaler_lease_lapses_total").absolute(s.lease_lapses);
    // The shard counts what did not decode; the drivers refuse malformed frames (a bad length,
    // an oversize datagram) before the shard sees them. Disjoint, so they add up.
    counter!("zonescaler_decode_errors_total", "channel" => "client")
        .absolute(s.decode_errors + net.closed_bad_message);
    let link_refused = app.world.resource::<ShardInbox>().refused;
    counter!("zonescaler_decode_errors_total", "channel" => "link")
        .absolute(link_refused + links.map_or(0, |l| l.closed_bad_message));
    let h = app.world.resource::<HandoffStats>();
    counter!("zonescaler_handoffs_total", "direction" => "out").absolute(h.out);
    counter!("zonescaler_handoffs_total", "direction" => "in").absolute(h.accepted);
    counter!("zonescaler_handoff_refusals_total", "direction" => "out").absolute(h.refused_sent);
    counter!("zonescaler_handoff_refusals_total", "direction" => "in").absolute(h.refused_received);
    counter!("zonescaler_handoff_cancels_total").absolute(h.cancels_sent);
    counter!("zonescaler_cell_moves_total", "direction" => "out").absolute(h.cells_moved_out);
    counter!("zonescaler_cell_moves_total", "direction" => "in").absolute(h.cells_moved_in);
}

/// What the transports counted.
fn publish_transport(n: &NetStats, links: Option<&LinkStats>) {
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
    counter!("zonescaler_datagrams_dropped_total", "reason" => "inbox_full")
        .absolute(n.datagrams_dropped_inbox_full);
    counter!("zonescaler_datagrams_dropped_total", "reason" => "send_failed")
        .absolute(n.datagram_send_failures);
    // Every reason, zeros too: a series that appears only on its first close breaks `rate()`.
    for (reason, closes) in n.closes_by_reason() {
        counter!("zonescaler_connection_closes_total", "reason" => reason.as_str())
            .absolute(closes);
    }
    // A lone shard has no links: its link series stay at 0 rather than missing.
    let l = links.copied().unwrap_or_default();
    counter!("zonescaler_link_bytes_total", "direction" => "in").absolute(l.frame_bytes_in);
    counter!("zonescaler_link_bytes_total", "direction" => "out").absolute(l.frame_bytes_out);
}

/// Append the process's CPU time and resident memory, read now. Rendered by hand because the
/// recorder's counters are integers and CPU seconds are not.
fn write_process_metrics(out: &mut String) {
    if let Some(cpu) = process_cpu() {
        // Writing to a String cannot fail.
        let _ = write!(
            out,
            "# HELP zonescaler_process_cpu_seconds_total CPU time of the whole shard process (all threads, user and system).\n\
             # TYPE zonescaler_process_cpu_seconds_total counter\n\
             zonescaler_process_cpu_seconds_total {}\n\n",
            cpu.as_secs_f64()
        );
    }
    if let Some(rss) = resident_bytes() {
        let _ = write!(
            out,
            "# HELP zonescaler_process_resident_memory_bytes Resident memory of the shard process.\n\
             # TYPE zonescaler_process_resident_memory_bytes gauge\n\
             zonescaler_process_resident_memory_bytes {rss}\n\n"
        );
    }
}

/// Resident set size of this process, in bytes (Linux; elsewhere `None`).
pub fn resident_bytes() -> Option<u64> {
    parse_vm_rss(&std::fs::read_to_string("/proc/self/status").ok()?)
}

/// `VmRSS` of a `/proc/PID/status` text, in bytes. Read there rather than from `statm`, whose
/// pages would need the page size (4 KiB on x86, often 16 or 64 KiB on arm64).
fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut words = line["VmRSS:".len()..].split_whitespace();
    let kib: u64 = words.next()?.parse().ok()?;
    (words.next()? == "kB").then_some(kib * 1024)
}

/// CPU time of the calling thread, from the kernel's per-thread clock. Exact to the
/// nanosecond, unlike `/proc/thread-self/schedstat`, whose running total only catches up when
/// the scheduler next accounts the thread: read around a short tick it says a fraction of the
/// truth.
#[cfg(unix)]
pub fn thread_cpu() -> Duration {
    duration(rustix::time::clock_gettime(
        rustix::time::ClockId::ThreadCPUTime,
    ))
}

/// Without a per-thread CPU clock: zero.
#[cfg(not(unix))]
pub fn thread_cpu() -> Duration {
    Duration::ZERO
}

/// CPU time of the whole process, all threads.
#[cfg(unix)]
pub fn process_cpu() -> Option<Duration> {
    Some(duration(rustix::time::clock_gettime(
        rustix::time::ClockId::ProcessCPUTime,
    )))
}

/// Without a process CPU clock: nothing to say.
#[cfg(not(unix))]
pub fn process_cpu() -> Option<Duration> {
    None
}

/// A CPU clock's reading (never negative) as a `Duration`.
#[cfg(unix)]
fn duration(t: rustix::time::Timespec) -> Duration {
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};
    use zonescaler_shared::config::WorldConfig;

    /// What a scrape holds: each family's TYPE and HELP, and each sample's name and labels.
    #[derive(Default)]
    struct Exposition {
        types: BTreeMap<String, String>,
        helps: BTreeSet<String>,
        samples: Vec<(String, BTreeMap<String, String>)>,
    }

    /// Parses the text format just enough for the checks below (our own output: no escapes).
    fn parse(text: &str) -> Exposition {
        let mut e = Exposition::default();
        for line in text.lines().filter(|l| !l.is_empty()) {
            let words: Vec<&str> = line.splitn(4, ' ').collect();
            match words.as_slice() {
                ["#", "TYPE", name, kind] => {
                    e.types.insert(name.to_string(), kind.to_string());
                }
                ["#", "HELP", name, ..] => {
                    e.helps.insert(name.to_string());
                }
                _ => {
                    let series = line.rsplit_once(' ').expect("sample: series value").0;
                    let (name, labels) = series.split_once('{').unwrap_or((series, ""));
                    let labels = labels
                        .trim_end_matches('}')
                        .split(',')
                        .filter(|kv| !kv.is_empty())
                        .map(|kv| {
                            let (k, v) = kv.split_once('=').expect("label k=\"v\"");
                            (k.to_string(), v.trim_matches('"').to_string())
                        })
                        .collect();
                    e.samples.push((name.to_string(), labels));
                }
            }
        }
        e
    }

    /// The family a sample belongs to (a histogram's samples carry a suffix).
    fn family<'a>(e: &Exposition, sample: &'a str) -> &'a str {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = sample.strip_suffix(suffix)
                && e.types.get(base).is_some_and(|t| t == "histogram")
            {
                return base;
            }
        }
        sample
    }

    /// Every metric of a shard that ticked a little, rendered as `/metrics` would, through a
    /// recorder local to this test (the global one is the process's, installed by `install`).
    fn render_a_short_run() -> String {
        let recorder = builder().expect("static buckets").build_recorder();
        let handle = recorder.handle();
        let mut app = ShardApp::example(WorldConfig::default());
        metrics::with_local_recorder(&recorder, || {
            describe();
            let ticks = TickHistograms::register();
            for _ in 0..5 {
                let (cpu0, t0) = (thread_cpu(), Instant::now());
                app.tick();
                ticks.record(t0.elapsed(), thread_cpu().saturating_sub(cpu0));
            }
            let queues = TickQueues {
                client_inbox: 3,
                ..Default::default()
            };
            publish(&mut app, &NetStats::default(), None, queues);
        });
        render(&handle)
    }

    #[test]
    fn every_metric_is_described_typed_and_named_by_the_conventions() {
        let text = render_a_short_run();
        let e = parse(&text);
        for (name, kind) in &e.types {
            assert!(e.helps.contains(name), "{name} has no HELP (promtool lint)");
            assert!(
                name.starts_with("zonescaler_"),
                "{name}: zonescaler_ prefix"
            );
            assert_eq!(
                kind == "counter",
                name.ends_with("_total"),
                "{name} ({kind}): counters, and only counters, end in _total"
            );
            assert!(
                !name.contains("_ms") && !name.contains("_milliseconds") && !name.contains("_kib"),
                "{name}: base units (seconds, bytes)"
            );
        }
        let allowed = BTreeSet::from([
            "state",
            "direction",
            "reason",
            "queue",
            "outcome",
            "channel",
            "le",
        ]);
        let mut values: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for (name, labels) in &e.samples {
            let fam = family(&e, name);
            assert!(e.types.contains_key(fam), "{name}: a sample without a TYPE");
            for (k, v) in labels {
                assert!(
                    allowed.contains(k.as_str()),
                    "{name}: label {k} is not a low-cardinality one"
                );
                if k != "le" {
                    values.entry(fam).or_default().insert(v);
                }
            }
        }
        for (fam, vals) in &values {
            assert!(
                vals.len() <= 20,
                "{fam}: {} label values ({vals:?}): too many",
                vals.len()
            );
        }
        assert_the_required_families(&e, &text);
        assert_eq!(
            values["zonescaler_connection_closes_total"].len(),
            zonescaler_net::quic::CloseReason::COUNT,
            "every close reason is exported from the start, zeros too"
        );
        assert!(
            text.contains("zonescaler_tick_duration_seconds_count 5\n"),
            "five ticks recorded:\n{text}"
        );
        assert!(text.contains("zonescaler_queue_length{queue=\"client_inbox\"} 3\n"));
    }

    /// Every family the issue names is there.
    fn assert_the_required_families(e: &Exposition, text: &str) {
        for required in [
            "zonescaler_tick_duration_seconds",
            "zonescaler_tick_cpu_seconds",
            "zonescaler_entities",
            "zonescaler_clients",
            "zonescaler_proxies",
            "zonescaler_handoffs_total",
            "zonescaler_handoff_transit_seconds",
            "zonescaler_cell_moves_total",
            "zonescaler_client_bytes_total",
            "zonescaler_client_datagrams_total",
            "zonescaler_link_bytes_total",
            "zonescaler_link_frames_unlinked_total",
            "zonescaler_link_frames_again_total",
            "zonescaler_link_redials_total",
            "zonescaler_connection_closes_total",
            "zonescaler_decode_errors_total",
            "zonescaler_replication_lag_seconds",
            "zonescaler_queue_length",
            "zonescaler_replica_lag_ticks",
            "zonescaler_process_resident_memory_bytes",
            "zonescaler_process_cpu_seconds_total",
        ] {
            assert!(
                e.types.contains_key(required),
                "{required} is missing from:\n{text}"
            );
        }
    }

    #[test]
    fn resident_memory_is_read_from_vm_rss_in_bytes() {
        let status = "Name:\tzonescaler\nVmPeak:\t  200000 kB\nVmRSS:\t   13092 kB\nThreads:\t5\n";
        assert_eq!(parse_vm_rss(status), Some(13_092 * 1024));
        assert_eq!(
            parse_vm_rss("Name:\tkthreadd\n"),
            None,
            "kernel threads have none"
        );
        assert_eq!(
            parse_vm_rss("VmRSS:\t12 MB\n"),
            None,
            "an unknown unit is not guessed"
        );
        if cfg!(target_os = "linux") {
            let rss = resident_bytes().expect("/proc/self/status has VmRSS on Linux");
            assert!(rss > 1 << 20, "a test process holds more than 1 MiB: {rss}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn thread_cpu_counts_this_thread_only_and_process_cpu_counts_all() {
        let burn = Duration::from_millis(20);
        let (mine0, process0) = (thread_cpu(), process_cpu().expect("a unix process clock"));
        // Another thread burns `burn` of its own CPU time while this one waits without any.
        let burned = std::thread::spawn(move || {
            let t0 = thread_cpu();
            while thread_cpu() - t0 < burn {
                std::hint::spin_loop();
            }
            thread_cpu() - t0
        })
        .join()
        .expect("the burner does not panic");
        let (mine, process) = (
            thread_cpu() - mine0,
            process_cpu().expect("a unix process clock") - process0,
        );
        assert!(burned >= burn);
        assert!(
            mine < burn / 2,
            "a waiting thread's clock stands still while another burns: {mine:?}"
        );
        assert!(
            process >= burned,
            "the process clock counts every thread: {process:?} < {burned:?}"
        );
    }
}
