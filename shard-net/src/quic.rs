//! The production transport: QUIC (quinn) on tokio, driving the sans-IO shard.
//!
//! The shard is a synchronous world ticking on its own thread. This driver turns each client
//! connection into [`NetEvent`]s on one bounded channel ([`QuicEvents`], drained by the shard
//! between ticks) and carries out the shard's [`NetCommand`]s ([`QuicServer::dispatch`], a plain
//! sync call).
//!
//! The endpoint speaks the client protocol only (ALPN `zs-client/1`, [`tls::ALPN_CLIENT`]): a
//! shard-link dialer pointed here by mistake, or a client that names no protocol, fails the TLS
//! handshake with [`NetError::WrongProtocol`] and the shard never hears of it.
//!
//! Every incoming connection is judged at its first packet, before it costs a handshake
//! ([`ServerLimits`]):
//!
//! - One source address (an IPv6 /64) holds at most `ServerLimits::connections_per_address_max`
//!   connections (a shard takes it from `[cluster] connections_per_address_max`, default
//!   `CONNECTIONS_PER_ADDRESS_MAX`),
//!   counted from that first packet to the end, handshakes included. The shard's own bound,
//!   `CLIENTS_PER_SHARD_MAX`, only applies once a client says `Hello`, so without this one host
//!   could open every slot and hold it for `HELLO_TIMEOUT_MS` while real players are refused as
//!   `ServerFull`. Past the bound the connection is refused (stateless `CONNECTION_REFUSED`).
//! - Once `HANDSHAKES_BEFORE_RETRY` handshakes are in progress, a connection from an address that
//!   has not proven it can receive there is answered with a QUIC Retry instead: spoofed sources
//!   never answer, so a spoofed flood costs no state and cannot use up a real address's share; a
//!   real client answers by itself and pays one round trip, only while the server is busy.
//!
//! Per connection:
//!
//! - `Connected` is always its first event and `Disconnected` its last, exactly once, whoever
//!   ended it and however (a supervisor task emits it after the connection's readers are done).
//! - The client opens one bi-directional stream, the control stream, and writes first. Frames on
//!   it are a `u32` little-endian length and a body; the length is checked against
//!   `CONTROL_FRAME_BYTES_MAX` before anything is allocated. A bad frame closes the connection
//!   with `ErrorCode::BadMessage`.
//! - Datagrams pass through as they are, unless larger than any input could be (closed as
//!   `BadMessage`) or the shard's inbox is full (dropped and counted: inputs are unreliable
//!   anyway, and one flooding client must not make the driver buffer without bound).
//! - Outbound control messages go through a bounded per-connection queue and one writer task, so
//!   they are written in order and a `Close` is carried out only after what was queued before it
//!   (or after [`CLOSE_FLUSH_TIMEOUT`] if the client stops reading). A client that lets the queue
//!   fill is closed as too slow ([`CLOSE_CODE_TOO_SLOW`]) rather than buffered without bound.
//!
//! Traffic, admissions and refusals are counted in [`NetStats`] for the shard to export as
//! metrics: relaxed atomics bumped where the driver already holds the bytes, so counting costs no
//! extra pass and no lock on the hot path.
//!
//! The client helpers at the end ([`client_endpoint`], [`connect`], [`read_frame`],
//! [`write_frame`]) are what the bot load tester uses; they frame and check exactly like the
//! server.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use quinn::{
    ConnectionError, ReadError, ReadExactError, SendDatagramError, TransportErrorCode, VarInt,
    WriteError,
};
use tokio::sync::mpsc::error::{TryRecvError, TrySendError};
use tokio::sync::{mpsc, oneshot};
use zonescaler_shared::ConnId;
use zonescaler_shared::codec::{self, DecodeError, FRAME_PREFIX_BYTES};
use zonescaler_shared::limits;
use zonescaler_shared::protocol::ErrorCode;

use crate::admission::{Admission, Sources, admission, source_of};
pub use crate::admission::{CONNECTIONS_HARD_MAX, ServerLimits};
pub use crate::closing::{CLOSE_FLUSH_TIMEOUT, CLOSE_REASON_BYTES_MAX};
use crate::closing::{Closer, bump, close_endpoint, closed, count, flush, lock};
use crate::tls::{self, ClientTrust, ServerIdentity, TlsError};
use crate::transport::{NetCommand, NetEvent};

/// QUIC application close code the driver uses for a client whose control queue overflowed: the
/// shard never decided it, the driver did, to keep its memory bounded.
pub const CLOSE_CODE_TOO_SLOW: u32 = ErrorCode::TooSlow.close_code();
/// How long [`QuicServer::shutdown`] waits for closes to reach the peers.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);
/// Reason sent to every client when the server shuts down or is dropped.
const SHUTDOWN_REASON: &str = "server shutting down";

/// Why a QUIC operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Endpoints and their tasks need a tokio runtime to live on.
    #[error("QUIC endpoints must be created inside a tokio runtime")]
    NoRuntime,
    /// The UDP socket could not be bound.
    #[error("cannot bind UDP socket {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// Certificates, keys or TLS settings were refused.
    #[error("TLS setup failed: {0}")]
    Tls(#[from] TlsError),
    /// The connection attempt could not even start (bad server name, endpoint closed).
    #[error("cannot connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The peer closed the connection on purpose, saying why (the server's stated reason).
    #[error("peer closed the connection with code {code}: {reason}")]
    PeerClosed { code: u64, reason: String },
    /// The TLS handshake failed because the two ends speak different protocols (ALPN, see
    /// [`tls::ALPN_CLIENT`] and [`tls::ALPN_LINK`]), or one offered none: typically a client
    /// port and a shard-link port mixed up in a configuration.
    #[error(
        "the peer does not speak this protocol (TLS ALPN mismatch: a client port and a shard \
         link port mixed up?): {0}"
    )]
    WrongProtocol(ConnectionError),
    /// The connection failed or ended for any other reason (TLS failure, timeout, reset, local
    /// close).
    #[error("connection failed: {0}")]
    Connection(ConnectionError),
    /// Reading the control stream failed (e.g. the peer reset it).
    #[error("control stream read failed: {0}")]
    Read(ReadError),
    /// Writing the control stream failed (e.g. the peer stopped it).
    #[error("control stream write failed: {0}")]
    Write(WriteError),
    /// The peer finished its side of the control stream cleanly, between two frames.
    #[error("control stream finished by the peer")]
    StreamFinished,
    /// The peer finished the control stream in the middle of a frame.
    #[error("control stream ended in the middle of a frame")]
    TruncatedFrame,
    /// A frame's length is over its stream's limit (read or about to be written):
    /// `CONTROL_FRAME_BYTES_MAX` on a client's control stream, smaller or larger bounds on a
    /// shard link's handshake and message frames.
    #[error("bad control frame: {0}")]
    BadFrame(#[from] DecodeError),
}

impl NetError {
    /// The application close code, when the peer closed the connection on purpose.
    pub fn close_code(&self) -> Option<u64> {
        match self {
            Self::PeerClosed { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether the connection itself is gone (closed by either side, failed, never set up), as
    /// opposed to a fault of one stream or frame on a live connection.
    pub fn is_connection_lost(&self) -> bool {
        matches!(
            self,
            Self::PeerClosed { .. } | Self::WrongProtocol(_) | Self::Connection(_)
        )
    }
}

impl From<ConnectionError> for NetError {
    /// A peer's application close becomes [`NetError::PeerClosed`] so callers can report the
    /// peer's own reason instead of quinn's generic wording.
    fn from(err: ConnectionError) -> Self {
        match err {
            ConnectionError::ApplicationClosed(close) => Self::PeerClosed {
                code: close.error_code.into_inner(),
                reason: String::from_utf8_lossy(&close.reason).into_owned(),
            },
            other if is_alpn_mismatch(&other) => Self::WrongProtocol(other),
            other => Self::Connection(other),
        }
    }
}

/// Whether `err` is a TLS `no_application_protocol` alert, sent by the peer or raised here.
fn is_alpn_mismatch(err: &ConnectionError) -> bool {
    let alpn =
        TransportErrorCode::crypto(u8::from(rustls::AlertDescription::NoApplicationProtocol));
    match err {
        ConnectionError::ConnectionClosed(close) => close.error_code == alpn,
        ConnectionError::TransportError(err) => err.code == alpn,
        _ => false,
    }
}

impl From<ReadError> for NetError {
    fn from(err: ReadError) -> Self {
        match err {
            ReadError::ConnectionLost(e) => e.into(),
            other => Self::Read(other),
        }
    }
}

impl From<WriteError> for NetError {
    fn from(err: WriteError) -> Self {
        match err {
            WriteError::ConnectionLost(e) => e.into(),
            other => Self::Write(other),
        }
    }
}

/// Counters of what the driver carried, accepted, refused or dropped, for the shard to export as
/// metrics. All only grow, except the one gauge, [`Self::handshakes_in_progress`], which says how
/// many there are now. Byte counts are payload: datagram contents and control message bodies,
/// without the frame's length prefix or QUIC's own overhead.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Datagrams received from clients, every one, including those then dropped or refused.
    pub datagrams_in: u64,
    /// Bytes of [`Self::datagrams_in`].
    pub datagram_bytes_in: u64,
    /// Datagrams `dispatch` handed to quinn (which may still drop them on a congested path).
    pub datagrams_out: u64,
    /// Bytes of [`Self::datagrams_out`].
    pub datagram_bytes_out: u64,
    /// Control messages read from clients' control streams.
    pub control_frames_in: u64,
    /// Body bytes of [`Self::control_frames_in`].
    pub control_bytes_in: u64,
    /// Control messages written to clients' control streams.
    pub control_frames_out: u64,
    /// Body bytes of [`Self::control_frames_out`].
    pub control_bytes_out: u64,
    /// Incoming connections admitted to a handshake (not refused, not answered with a Retry).
    pub connections_accepted: u64,
    /// Admitted connections whose handshake failed (wrong protocol, bad certificate, timeout);
    /// the shard never heard of them.
    pub handshakes_failed: u64,
    /// Gauge: handshakes admitted and not finished yet.
    pub handshakes_in_progress: u64,
    /// Incoming connections refused because their source address already held
    /// [`ServerLimits::connections_per_address_max`] connections.
    pub connections_refused_per_address: u64,
    /// Incoming connections from an unvalidated address answered with a QUIC Retry because
    /// [`ServerLimits::handshakes_before_retry`] handshakes were in progress.
    pub retries_sent: u64,
    /// Inbound datagrams dropped because the shard's inbox was full.
    pub datagrams_dropped_inbox_full: u64,
    /// Datagrams `dispatch` could not hand to quinn (too large, connection gone, ...).
    pub datagram_send_failures: u64,
    /// Connections closed because their control queue overflowed.
    pub closed_too_slow: u64,
    /// Connections closed for a bad control frame or an oversize datagram.
    pub closed_bad_message: u64,
    /// Incoming connections refused because [`CONNECTIONS_HARD_MAX`] connections were live.
    pub connections_refused: u64,
    /// Commands for a connection that no longer exists (normal right after a disconnect).
    pub commands_for_unknown_connections: u64,
    /// Control messages `dispatch` refused to send because they exceed the frame limit.
    pub control_messages_too_large: u64,
    /// Connections that ended, by why, indexed by [`CloseReason::index`]: every connection the
    /// shard heard of (`Connected` sent) counts here once, when its `Disconnected` goes out.
    pub closes: [u64; CloseReason::COUNT],
}

impl NetStats {
    /// [`Self::closes`] with their reasons, every reason (zeros too).
    pub fn closes_by_reason(&self) -> impl Iterator<Item = (CloseReason, u64)> + '_ {
        CloseReason::all().map(|r| (r, self.closes[r.index()]))
    }
}

/// Why a client connection ended, as counted in [`NetStats::closes`]: the error code when this
/// side closed it (the shard's decision, or the driver's for a bad frame or a slow reader), or
/// what the client or the network did. A small fixed set, so it can label a metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// This side closed it, with this code.
    Server(ErrorCode),
    /// The client closed it, whatever code it gave: quitting, or leaving for another shard
    /// after a redirect.
    Client,
    /// Nothing heard from the client for the idle timeout.
    TimedOut,
    /// The client's endpoint no longer knew the connection (a stateless reset: it restarted).
    Reset,
    /// A QUIC protocol violation, detected here or reported by the client's stack.
    TransportError,
}

impl CloseReason {
    /// How many reasons there are.
    pub const COUNT: usize = ErrorCode::ALL.len() + 4;

    /// Every reason, in [`Self::index`] order.
    pub fn all() -> impl Iterator<Item = Self> {
        ErrorCode::ALL.into_iter().map(Self::Server).chain([
            Self::Client,
            Self::TimedOut,
            Self::Reset,
            Self::TransportError,
        ])
    }

    /// Position in [`NetStats::closes`].
    pub fn index(self) -> usize {
        let n = ErrorCode::ALL.len();
        match self {
            // `ALL` is in close-code order, from 1.
            Self::Server(code) => code.close_code() as usize - 1,
            Self::Client => n,
            Self::TimedOut => n + 1,
            Self::Reset => n + 2,
            Self::TransportError => n + 3,
        }
    }

    /// Snake-case name: the error code's own for [`Self::Server`], a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Server(code) => code.as_str(),
            Self::Client => "client_closed",
            Self::TimedOut => "timed_out",
            Self::Reset => "reset",
            Self::TransportError => "transport_error",
        }
    }

    /// Why a connection ended: `local` is the code this side closed it with, if it did first;
    /// `err` is what quinn reported.
    pub fn of(local: Option<u32>, err: &ConnectionError) -> Self {
        if let Some(code) = local {
            // Every close of ours carries an `ErrorCode`; anything else would be a bug here.
            return Self::Server(
                ErrorCode::from_close_code(code.into()).unwrap_or(ErrorCode::Unexpected),
            );
        }
        match err {
            ConnectionError::ApplicationClosed(_) => Self::Client,
            ConnectionError::ConnectionClosed(c)
                if c.error_code == TransportErrorCode::NO_ERROR =>
            {
                Self::Client
            }
            ConnectionError::ConnectionClosed(_)
            | ConnectionError::TransportError(_)
            | ConnectionError::VersionMismatch
            | ConnectionError::CidsExhausted => Self::TransportError,
            ConnectionError::TimedOut => Self::TimedOut,
            ConnectionError::Reset => Self::Reset,
            // The endpoint closed under the connection: the server is shutting down.
            ConnectionError::LocallyClosed => Self::Server(ErrorCode::ShuttingDown),
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    datagrams_in: AtomicU64,
    datagram_bytes_in: AtomicU64,
    datagrams_out: AtomicU64,
    datagram_bytes_out: AtomicU64,
    control_frames_in: AtomicU64,
    control_bytes_in: AtomicU64,
    control_frames_out: AtomicU64,
    control_bytes_out: AtomicU64,
    connections_accepted: AtomicU64,
    handshakes_failed: AtomicU64,
    handshakes_in_progress: AtomicU64,
    connections_refused_per_address: AtomicU64,
    retries_sent: AtomicU64,
    datagrams_dropped_inbox_full: AtomicU64,
    datagram_send_failures: AtomicU64,
    closed_too_slow: AtomicU64,
    closed_bad_message: AtomicU64,
    connections_refused: AtomicU64,
    commands_for_unknown_connections: AtomicU64,
    control_messages_too_large: AtomicU64,
    closes: [AtomicU64; CloseReason::COUNT],
}

/// What the shard queued for one connection's writer task.
#[derive(Debug)]
enum Outbound {
    Control(Bytes),
    /// Marks where in the queue the shard asked to close; the code and reason are in the
    /// connection's [`Closer`].
    Close,
}

/// One live connection as `dispatch` sees it.
struct ConnEntry {
    id: ConnId,
    /// The connection, and how the driver or the shard closed it.
    closer: Closer,
    outbox: mpsc::Sender<Outbound>,
}

impl ConnEntry {
    fn conn(&self) -> &quinn::Connection {
        &self.closer.conn
    }

    /// See [`Closer::close`]: only the first close counts.
    fn close(&self, code: u32, reason: &str, log_reason: String) -> bool {
        self.closer.close(code, reason, log_reason)
    }

    fn close_bad_message(&self, shared: &Shared, detail: &str) {
        if self.close(
            ErrorCode::BadMessage.close_code(),
            detail,
            format!("bad message: {detail}"),
        ) {
            let n = bump(&shared.counters.closed_bad_message);
            tracing::warn!(
                conn = self.id.0,
                total = n,
                "closing connection: bad message: {detail}"
            );
        }
    }

    fn close_too_slow(&self, shared: &Shared) {
        if self.close(
            CLOSE_CODE_TOO_SLOW,
            "too slow",
            "too slow: control queue full".to_owned(),
        ) {
            let n = bump(&shared.counters.closed_too_slow);
            tracing::warn!(
                conn = self.id.0,
                total = n,
                "closing connection: control queue full"
            );
        }
    }
}

/// State shared by the server handle and every connection task.
struct Shared {
    events: mpsc::Sender<NetEvent>,
    conns: Mutex<HashMap<ConnId, Arc<ConnEntry>>>,
    /// Every connection from admission to its end, by source, for the admission bounds.
    sources: Mutex<Sources>,
    limits: ServerLimits,
    next_conn: AtomicU64,
    counters: Counters,
}

impl Shared {
    fn get(&self, id: ConnId) -> Option<Arc<ConnEntry>> {
        lock(&self.conns).get(&id).cloned()
    }
}

/// The client connections' paths at one moment ([`QuicServer::path_summary`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PathSummary {
    pub connections: usize,
    pub rtt_ms_p50: f64,
    pub rtt_ms_max: f64,
    /// Congestion windows, summed (bytes).
    pub cwnd_sum: u64,
    /// Since each connection opened, summed.
    pub lost_packets: u64,
    pub congestion_events: u64,
    /// Datagram bytes waiting in the connections' send buffers, summed and the largest.
    pub queued_bytes: u64,
    pub queued_max: u64,
}

/// The server side of the QUIC transport. Created inside a tokio runtime (its tasks live there);
/// [`Self::dispatch`] is sync and meant to be called from the shard thread.
pub struct QuicServer {
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    shared: Arc<Shared>,
}

/// The receiving half of the transport: every [`NetEvent`] of every connection, in one bounded
/// channel the shard thread drains between ticks.
pub struct QuicEvents {
    rx: mpsc::Receiver<NetEvent>,
    /// An event [`Self::wait`] received; handed out first by the next drain so none is lost.
    pending: Option<NetEvent>,
}

impl QuicServer {
    /// Bind a QUIC endpoint on `addr` presenting `identity`, and start accepting connections on
    /// the current tokio runtime, with the default [`ServerLimits`]. Fails with
    /// [`NetError::NoRuntime`] outside one.
    pub fn bind(
        addr: SocketAddr,
        identity: &ServerIdentity,
    ) -> Result<(QuicServer, QuicEvents), NetError> {
        Self::bind_with(addr, identity, ServerLimits::default())
    }

    /// [`Self::bind`] with explicit admission bounds.
    pub fn bind_with(
        addr: SocketAddr,
        identity: &ServerIdentity,
        limits: ServerLimits,
    ) -> Result<(QuicServer, QuicEvents), NetError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| NetError::NoRuntime)?;
        let config = tls::server_config(identity)?;
        let endpoint = crate::udp::endpoint(addr, Some(config))?;
        let local_addr = endpoint
            .local_addr()
            .map_err(|source| NetError::Bind { addr, source })?;
        let (tx, rx) = mpsc::channel(limits::INBOX_EVENTS_MAX);
        let shared = Arc::new(Shared {
            events: tx,
            conns: Mutex::new(HashMap::new()),
            sources: Mutex::new(Sources::default()),
            limits,
            next_conn: AtomicU64::new(1),
            counters: Counters::default(),
        });
        runtime.spawn(accept_loop(endpoint.clone(), shared.clone()));
        tracing::info!(%local_addr, "QUIC server listening");
        Ok((
            QuicServer {
                endpoint,
                local_addr,
                shared,
            },
            QuicEvents { rx, pending: None },
        ))
    }

    /// The address the endpoint is bound to (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Carry out one command. Never blocks and never panics: failures are logged and counted,
    /// and a command for a connection that is already gone is ignored (the shard may issue it
    /// before it has drained that connection's `Disconnected`).
    pub fn dispatch(&self, cmd: NetCommand) {
        let id = cmd.conn();
        let Some(entry) = self.shared.get(id) else {
            bump(&self.shared.counters.commands_for_unknown_connections);
            tracing::trace!(conn = id.0, "command for a connection that is gone");
            return;
        };
        match cmd {
            NetCommand::Datagram { bytes, .. } => {
                let len = bytes.len();
                if let Err(err) = entry.conn().send_datagram(bytes) {
                    let n = bump(&self.shared.counters.datagram_send_failures);
                    match err {
                        // Normal while a disconnect is on its way to the shard.
                        SendDatagramError::ConnectionLost(_) => {
                            tracing::trace!(conn = id.0, "datagram to a closed connection")
                        }
                        _ if n.is_power_of_two() => {
                            tracing::warn!(conn = id.0, total = n, %err, "datagram not sent")
                        }
                        _ => tracing::debug!(conn = id.0, %err, "datagram not sent"),
                    }
                } else {
                    count(
                        &self.shared.counters.datagrams_out,
                        &self.shared.counters.datagram_bytes_out,
                        len,
                    );
                }
            }
            NetCommand::Control { bytes, .. } => {
                if bytes.len() > limits::CONTROL_FRAME_BYTES_MAX {
                    // The client would close us for it; refusing here keeps the shard's bug
                    // visible in its own log instead.
                    let n = bump(&self.shared.counters.control_messages_too_large);
                    tracing::error!(
                        conn = id.0,
                        len = bytes.len(),
                        total = n,
                        "control message over the frame limit not sent"
                    );
                    return;
                }
                match entry.outbox.try_send(Outbound::Control(bytes)) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_)) => entry.close_too_slow(&self.shared),
                    // The writer is gone, so the connection is closing already.
                    Err(TrySendError::Closed(_)) => {}
                }
            }
            NetCommand::Close { code, reason, .. } => {
                let log_reason = closed_by_server(code, &reason);
                if !entry.closer.request(code.close_code(), reason, log_reason) {
                    return; // already closing as asked the first time
                }
                if entry.outbox.try_send(Outbound::Close).is_err() {
                    // Queue full (the client is too slow to get what is queued anyway) or the
                    // writer is gone: close right away.
                    entry.closer.close_as_requested();
                }
            }
        }
    }

    /// What the client connections' paths look like now, summed over the open connections
    /// (quinn's own view of each: its RTT estimate, congestion window, losses, and the datagrams
    /// still waiting in its send buffer). For the shard's periodic stats line: a standing queue
    /// or a collapsed window shows clients that cannot keep up, or a sender that thinks so.
    pub fn path_summary(&self) -> PathSummary {
        let entries: Vec<Arc<ConnEntry>> = lock(&self.shared.conns).values().cloned().collect();
        let mut out = PathSummary::default();
        let mut rtts = Vec::with_capacity(entries.len());
        for e in &entries {
            let st = e.conn().stats();
            rtts.push(st.path.rtt.as_secs_f64() * 1e3);
            out.cwnd_sum += st.path.cwnd;
            out.lost_packets += st.path.lost_packets;
            out.congestion_events += st.path.congestion_events;
            let queued = tls::SERVER_DATAGRAM_SEND_BUFFER_BYTES
                .saturating_sub(e.conn().datagram_send_buffer_space());
            out.queued_bytes += queued as u64;
            out.queued_max = out.queued_max.max(queued as u64);
        }
        out.connections = entries.len();
        rtts.sort_by(f64::total_cmp);
        let q = |f: f64| {
            rtts.get(((rtts.len() as f64 - 1.0) * f).round() as usize)
                .copied()
        };
        out.rtt_ms_p50 = q(0.5).unwrap_or(0.0);
        out.rtt_ms_max = rtts.last().copied().unwrap_or(0.0);
        out
    }

    /// Connections currently open (handshake done, `Disconnected` not yet emitted).
    pub fn connections(&self) -> usize {
        lock(&self.shared.conns).len()
    }

    /// Close every connection now with `code` and `reason`, without waiting for queued control
    /// messages (this is for shutdown, when there is no time to be polite).
    pub fn close_all(&self, code: ErrorCode, reason: &str) {
        let entries: Vec<Arc<ConnEntry>> = lock(&self.shared.conns).values().cloned().collect();
        for entry in entries {
            entry.close(code.close_code(), reason, closed_by_server(code, reason));
        }
    }

    /// Snapshot of the counters (see [`NetStats`] for which are gauges).
    pub fn stats(&self) -> NetStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        NetStats {
            datagrams_in: get(&c.datagrams_in),
            datagram_bytes_in: get(&c.datagram_bytes_in),
            datagrams_out: get(&c.datagrams_out),
            datagram_bytes_out: get(&c.datagram_bytes_out),
            control_frames_in: get(&c.control_frames_in),
            control_bytes_in: get(&c.control_bytes_in),
            control_frames_out: get(&c.control_frames_out),
            control_bytes_out: get(&c.control_bytes_out),
            connections_accepted: get(&c.connections_accepted),
            handshakes_failed: get(&c.handshakes_failed),
            handshakes_in_progress: get(&c.handshakes_in_progress),
            connections_refused_per_address: get(&c.connections_refused_per_address),
            retries_sent: get(&c.retries_sent),
            datagrams_dropped_inbox_full: get(&c.datagrams_dropped_inbox_full),
            datagram_send_failures: get(&c.datagram_send_failures),
            closed_too_slow: get(&c.closed_too_slow),
            closed_bad_message: get(&c.closed_bad_message),
            connections_refused: get(&c.connections_refused),
            commands_for_unknown_connections: get(&c.commands_for_unknown_connections),
            control_messages_too_large: get(&c.control_messages_too_large),
            closes: std::array::from_fn(|i| get(&c.closes[i])),
        }
    }

    /// Close every connection (`ShuttingDown`) and the endpoint, then wait up to
    /// [`SHUTDOWN_TIMEOUT`] for the closes to reach the peers, so clients learn the reason
    /// instead of timing out.
    pub async fn shutdown(&self) {
        self.close_all(ErrorCode::ShuttingDown, SHUTDOWN_REASON);
        close_endpoint(
            &self.endpoint,
            ErrorCode::ShuttingDown.close_code(),
            SHUTDOWN_REASON,
            SHUTDOWN_TIMEOUT,
        )
        .await;
    }
}

impl Drop for QuicServer {
    /// The accept loop holds its own endpoint handle, so without this a dropped server would keep
    /// accepting clients nobody can answer.
    fn drop(&mut self) {
        self.endpoint.close(
            VarInt::from_u32(ErrorCode::ShuttingDown.close_code()),
            SHUTDOWN_REASON.as_bytes(),
        );
    }
}

/// What the shard is told when it closed a connection itself.
fn closed_by_server(code: ErrorCode, reason: &str) -> String {
    format!("closed by server: {}: {reason}", code.as_str())
}

impl QuicEvents {
    /// Move up to `max` pending events into `out` without blocking; returns how many.
    pub fn drain_into(&mut self, max: usize, out: &mut Vec<NetEvent>) -> usize {
        let mut n = 0;
        if max > 0
            && let Some(event) = self.pending.take()
        {
            out.push(event);
            n += 1;
        }
        while n < max {
            match self.rx.try_recv() {
                Ok(event) => {
                    out.push(event);
                    n += 1;
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        n
    }

    /// Await at least one event or the timeout (for tests and idle shards); returns false on
    /// timeout, or if the server and all its tasks are gone. The event stays queued for the next
    /// [`Self::drain_into`]. Must run on a tokio runtime (e.g. inside `Handle::block_on`).
    pub async fn wait(&mut self, timeout: Duration) -> bool {
        if self.pending.is_some() || !self.rx.is_empty() {
            return true;
        }
        match tokio::time::timeout(timeout, self.rx.recv()).await {
            Ok(Some(event)) => {
                self.pending = Some(event);
                true
            }
            Ok(None) | Err(_) => false,
        }
    }
}

// ------------------------------------------------------------------------------------------
// Admission: what happens to a connection at its first packet.
// ------------------------------------------------------------------------------------------

/// An admitted connection's place in [`Sources`]; given back when dropped, however the
/// connection ends.
struct SourceSlot {
    shared: Arc<Shared>,
    source: IpAddr,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        lock(&self.shared.sources).remove(self.source);
    }
}

/// One handshake in [`NetStats::handshakes_in_progress`], until dropped.
struct Handshaking(Arc<Shared>);

impl Handshaking {
    fn start(shared: &Arc<Shared>) -> Self {
        shared
            .counters
            .handshakes_in_progress
            .fetch_add(1, Ordering::Relaxed);
        Self(shared.clone())
    }
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        self.0
            .counters
            .handshakes_in_progress
            .fetch_sub(1, Ordering::Relaxed);
    }
}

async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    while let Some(incoming) = endpoint.accept().await {
        admit(&shared, incoming);
    }
    tracing::debug!("QUIC accept loop ended");
}

/// Accept, refuse or Retry one incoming connection (see [`admission`]). Refusals and Retries
/// are stateless and anyone can cause them, so they are logged loudly only at powers of two.
fn admit(shared: &Arc<Shared>, incoming: quinn::Incoming) {
    let remote = incoming.remote_address();
    let source = source_of(remote);
    let counters = &shared.counters;
    let handshakes = counters.handshakes_in_progress.load(Ordering::Relaxed);
    let validated = incoming.remote_address_validated();
    // Decided and counted under one lock; only this loop adds, so the bounds hold exactly.
    let decision = {
        let mut sources = lock(&shared.sources);
        let decision = admission(
            &shared.limits,
            sources.total,
            sources.count(source),
            handshakes,
            validated,
        );
        if decision == Admission::Accept {
            sources.add(source);
        }
        decision
    };
    match decision {
        Admission::Accept => {
            let slot = SourceSlot {
                shared: shared.clone(),
                source,
            };
            let handshaking = Handshaking::start(shared);
            bump(&counters.connections_accepted);
            // Each handshake on its own task, so a slow one never delays the next client.
            tokio::spawn(supervise(shared.clone(), incoming, slot, handshaking));
        }
        Admission::RefuseFull => {
            let n = bump(&counters.connections_refused);
            if n.is_power_of_two() {
                tracing::warn!(%remote, total = n, "refusing connection: hard limit reached");
            }
            incoming.refuse();
        }
        Admission::RefuseAddress => {
            let n = bump(&counters.connections_refused_per_address);
            if n.is_power_of_two() {
                tracing::warn!(
                    %remote,
                    %source,
                    max = shared.limits.connections_per_address_max,
                    total = n,
                    "refusing connection: too many from one address"
                );
            }
            incoming.refuse();
        }
        Admission::Retry => match incoming.retry() {
            Ok(()) => {
                let n = bump(&counters.retries_sent);
                if n.is_power_of_two() {
                    tracing::info!(
                        %remote,
                        handshakes,
                        total = n,
                        "handshake load: unvalidated addresses must answer a Retry first"
                    );
                }
            }
            // quinn guarantees that an unvalidated address may be retried; should that ever
            // change, refusing is the stateless answer that is left.
            Err(err) => {
                tracing::debug!(%remote, "cannot retry: {err}");
                err.into_incoming().refuse();
            }
        },
    }
}

// ------------------------------------------------------------------------------------------
// One connection.
// ------------------------------------------------------------------------------------------

/// Owns one connection from handshake to `Disconnected`; `slot` and `handshaking` are its
/// places in the admission counts.
async fn supervise(
    shared: Arc<Shared>,
    incoming: quinn::Incoming,
    slot: SourceSlot,
    handshaking: Handshaking,
) {
    let remote = incoming.remote_address();
    let handshake = incoming.await;
    drop(handshaking);
    let conn = match handshake {
        Ok(conn) => conn,
        Err(err) => {
            // Before `Connected`, so the shard never hears of it.
            let n = bump(&shared.counters.handshakes_failed);
            tracing::debug!(%remote, %err, total = n, "handshake failed");
            return;
        }
    };
    let id = ConnId(shared.next_conn.fetch_add(1, Ordering::Relaxed));
    let (outbox, outbox_rx) = mpsc::channel(limits::CONTROL_QUEUE_PER_CLIENT_MAX);
    let entry = Arc::new(ConnEntry {
        id,
        closer: Closer::new(conn.clone()),
        outbox,
    });
    // In the map before `Connected` goes out, so the shard can answer as soon as it sees it.
    lock(&shared.conns).insert(id, entry.clone());
    tracing::debug!(conn = id.0, %remote, "connected");

    let max_datagram_bytes = conn
        .max_datagram_size()
        .unwrap_or(limits::DATAGRAM_BYTES_MIN);
    if shared
        .events
        .send(NetEvent::Connected {
            conn: id,
            max_datagram_bytes,
        })
        .await
        .is_ok()
    {
        let (stream_tx, stream_rx) = oneshot::channel();
        tokio::spawn(write_control(
            shared.clone(),
            entry.clone(),
            stream_rx,
            outbox_rx,
        ));
        // The readers run as their own task so that even a panic in them (there is no known
        // way) ends only this connection, and still produces its `Disconnected`.
        let readers = tokio::spawn({
            let (shared, entry) = (shared.clone(), entry.clone());
            async move {
                tokio::join!(
                    read_control(&shared, &entry, stream_tx),
                    read_datagrams(&shared, &entry)
                );
            }
        });
        if let Err(err) = readers.await {
            tracing::error!(conn = id.0, %err, "connection task failed");
            entry.close(
                ErrorCode::Unexpected.close_code(),
                "internal error",
                format!("driver task failed: {err}"),
            );
        }
    } else {
        // Nobody drains the events any more: the server is gone.
        entry.close(
            ErrorCode::ShuttingDown.close_code(),
            SHUTDOWN_REASON,
            SHUTDOWN_REASON.to_owned(),
        );
    }

    // The datagram reader only stops once the connection is closed, so this returns at once in
    // every path above; it also gives the remote side's reason when it was not us.
    let err = conn.closed().await;
    let local = entry.closer.take_local();
    bump(&shared.counters.closes[CloseReason::of(local.as_ref().map(|l| l.code), &err).index()]);
    let reason = local.map_or_else(|| err.to_string(), |local| local.log_reason);
    lock(&shared.conns).remove(&id);
    // Given back before `Disconnected` goes out, so whoever sees it can connect again at once.
    drop(slot);
    tracing::debug!(conn = id.0, %reason, "disconnected");
    // Sent last, after both readers ended, so nothing for this connection can follow it.
    let _ = shared
        .events
        .send(NetEvent::Disconnected { conn: id, reason })
        .await;
}

/// Accept the control stream, hand its send half to the writer, and turn frames into events.
async fn read_control(
    shared: &Shared,
    entry: &ConnEntry,
    stream_tx: oneshot::Sender<quinn::SendStream>,
) {
    let (send, mut recv) = match entry.conn().accept_bi().await {
        Ok(streams) => streams,
        Err(_) => return, // the connection ended before the client opened its stream
    };
    // If the writer is gone the connection is closing; reading on is still harmless.
    let _ = stream_tx.send(send);
    loop {
        match read_frame(&mut recv).await {
            Ok(body) => {
                count(
                    &shared.counters.control_frames_in,
                    &shared.counters.control_bytes_in,
                    body.len(),
                );
                let event = NetEvent::Control {
                    conn: entry.id,
                    bytes: Bytes::from(body),
                };
                if shared.events.send(event).await.is_err() {
                    entry.close(
                        ErrorCode::ShuttingDown.close_code(),
                        SHUTDOWN_REASON,
                        SHUTDOWN_REASON.to_owned(),
                    );
                    return;
                }
            }
            // A client may end its side cleanly; it just cannot send control messages any more.
            Err(NetError::StreamFinished) => {
                tracing::debug!(conn = entry.id.0, "client finished its control stream");
                return;
            }
            // The connection is gone; the supervisor reports why.
            Err(err) if err.is_connection_lost() => return,
            Err(err) => {
                entry.close_bad_message(shared, &err.to_string());
                return;
            }
        }
    }
}

/// Forward datagrams until the connection ends.
async fn read_datagrams(shared: &Shared, entry: &ConnEntry) {
    while let Ok(datagram) = entry.conn().read_datagram().await {
        count(
            &shared.counters.datagrams_in,
            &shared.counters.datagram_bytes_in,
            datagram.len(),
        );
        if datagram.len() > limits::CLIENT_DATAGRAM_BYTES_MAX {
            // No valid input is this big; refusing here keeps big datagrams out of the inbox.
            let detail = format!(
                "datagram of {} bytes exceeds the {}-byte limit",
                datagram.len(),
                limits::CLIENT_DATAGRAM_BYTES_MAX
            );
            entry.close_bad_message(shared, &detail);
            return;
        }
        // Copied so a queued input does not keep quinn's whole receive buffer alive.
        let bytes = Bytes::copy_from_slice(&datagram);
        match shared.events.try_send(NetEvent::Datagram {
            conn: entry.id,
            bytes,
        }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                let n = bump(&shared.counters.datagrams_dropped_inbox_full);
                if n.is_power_of_two() {
                    tracing::warn!(total = n, "shard inbox full: dropping datagrams");
                }
            }
            Err(TrySendError::Closed(_)) => {
                entry.close(
                    ErrorCode::ShuttingDown.close_code(),
                    SHUTDOWN_REASON,
                    SHUTDOWN_REASON.to_owned(),
                );
                return;
            }
        }
    }
}

/// The single writer of a connection's control stream: writes queued messages in order and
/// carries out `Close` after them (or [`CLOSE_FLUSH_TIMEOUT`] after it was asked for, if a
/// client that stopped reading holds the writes up).
async fn write_control(
    shared: Arc<Shared>,
    entry: Arc<ConnEntry>,
    mut stream_rx: oneshot::Receiver<quinn::SendStream>,
    mut outbox: mpsc::Receiver<Outbound>,
) {
    // Until the client opens its control stream there is nothing to write on; what the shard
    // queues meanwhile (say, a `ServerFull` error) waits here, bounded like the queue itself.
    let mut early: VecDeque<Bytes> = VecDeque::new();
    let mut send = loop {
        tokio::select! {
            stream = &mut stream_rx => match stream {
                Ok(send) => break send,
                Err(_) => return, // the reader ended without a stream: the connection is gone
            },
            msg = outbox.recv() => match msg {
                None => return,
                Some(Outbound::Control(bytes)) => {
                    if early.len() >= limits::CONTROL_QUEUE_PER_CLIENT_MAX {
                        entry.close_too_slow(&shared);
                        return;
                    }
                    early.push_back(bytes);
                }
                Some(Outbound::Close) => {
                    // Give the client a moment to open its stream so the queued messages
                    // reach it.
                    let stream = tokio::select! {
                        stream = &mut stream_rx => stream.ok(),
                        () = entry.closer.deadline() => None,
                    };
                    if let Some(mut send) = stream {
                        for bytes in early.drain(..) {
                            if !write_guarded(&shared, &entry, &mut send, &bytes).await {
                                break;
                            }
                        }
                        flush(&mut send).await;
                    }
                    entry.closer.close_as_requested();
                    return;
                }
            },
            () = closed(entry.conn()) => return,
        }
    };
    for bytes in early.drain(..) {
        if !write_guarded(&shared, &entry, &mut send, &bytes).await {
            return;
        }
    }
    loop {
        let msg = tokio::select! {
            msg = outbox.recv() => msg,
            () = closed(entry.conn()) => return,
        };
        match msg {
            None => return,
            Some(Outbound::Control(bytes)) => {
                if !write_guarded(&shared, &entry, &mut send, &bytes).await {
                    return;
                }
            }
            Some(Outbound::Close) => {
                flush(&mut send).await;
                entry.closer.close_as_requested();
                return;
            }
        }
    }
}

/// Write one framed control message, counted once written; see [`Closer::write_guarded`].
async fn write_guarded(
    shared: &Shared,
    entry: &ConnEntry,
    send: &mut quinn::SendStream,
    bytes: &[u8],
) -> bool {
    let mut frame = [Bytes::from(codec::frame(bytes))];
    let written = entry.closer.write_guarded(send, &mut frame).await;
    if written {
        count(
            &shared.counters.control_frames_out,
            &shared.counters.control_bytes_out,
            bytes.len(),
        );
    }
    written
}

/// A client endpoint on `0.0.0.0:0` (IPv4, the common case for bots) whose default client
/// configuration trusts what `trust` says. Use [`client_endpoint_for`] to reach IPv6 servers.
pub fn client_endpoint(trust: &ClientTrust) -> Result<quinn::Endpoint, NetError> {
    client_endpoint_bound(trust, SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))
}

/// Like [`client_endpoint`], but bound to the wildcard address of `server`'s family: dual-stack
/// behaviour of an IPv6 socket differs between platforms, so matching the family is portable.
pub fn client_endpoint_for(
    trust: &ClientTrust,
    server: SocketAddr,
) -> Result<quinn::Endpoint, NetError> {
    let bind = match server {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    };
    client_endpoint_bound(trust, bind)
}

fn client_endpoint_bound(
    trust: &ClientTrust,
    bind: SocketAddr,
) -> Result<quinn::Endpoint, NetError> {
    let config = tls::client_config(trust)?;
    let mut endpoint = crate::udp::endpoint(bind, None)?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

/// A client connection (protocol-agnostic: it may or may not have logged in): the control
/// stream's two halves and the connection that carries datagrams.
pub struct ClientSession {
    /// The connection (datagrams, close, stats).
    pub conn: quinn::Connection,
    /// Our half of the control stream.
    pub send: quinn::SendStream,
    /// The server's half of the control stream.
    pub recv: quinn::RecvStream,
}

impl ClientSession {
    /// Read the next control message. When the server closes, it first finishes the stream and
    /// then closes the connection with its reason; this waits briefly for that close so the
    /// caller gets [`NetError::PeerClosed`] with the server's stated reason, not just
    /// [`NetError::StreamFinished`].
    pub async fn read_control(&mut self) -> Result<Vec<u8>, NetError> {
        match read_frame(&mut self.recv).await {
            Err(NetError::StreamFinished) => {
                match tokio::time::timeout(CLOSE_FLUSH_TIMEOUT * 2, self.conn.closed()).await {
                    Ok(err) => Err(err.into()),
                    Err(_) => Err(NetError::StreamFinished),
                }
            }
            other => other,
        }
    }

    /// Wait until the connection is closed and say why.
    pub async fn closed(&self) -> NetError {
        self.conn.closed().await.into()
    }
}

/// Connect to `addr` (TLS name `server_name`), open the control stream and write
/// `first_control_message` framed on it: the server only sees the stream once it carries data.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    server_name: &str,
    first_control_message: &[u8],
) -> Result<ClientSession, NetError> {
    // `open_session` checks the message; checking it first too spares a doomed handshake.
    check_len(first_control_message)?;
    let conn = handshake(endpoint, addr, server_name).await?;
    open_session(conn, first_control_message).await
}

/// The QUIC handshake of a client connection to `addr` (TLS name `server_name`), and nothing
/// more: a client told that a redirect may follow (`ServerControl::Prepare`) opens it ahead and
/// starts the session with [`open_session`] once the redirect's token is there. The shard closes
/// a connection that sends no `Hello` within `limits::HELLO_TIMEOUT_MS`.
pub async fn handshake(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    server_name: &str,
) -> Result<quinn::Connection, NetError> {
    Ok(endpoint.connect(addr, server_name)?.await?)
}

/// Open the control stream on `conn` (from [`handshake`]) and write `first_control_message`
/// framed on it.
pub async fn open_session(
    conn: quinn::Connection,
    first_control_message: &[u8],
) -> Result<ClientSession, NetError> {
    check_len(first_control_message)?;
    let (mut send, recv) = conn.open_bi().await?;
    write_frame(&mut send, first_control_message).await?;
    Ok(ClientSession { conn, send, recv })
}

/// Read one control frame; the length prefix is checked before the body is allocated.
pub async fn read_frame(recv: &mut quinn::RecvStream) -> Result<Vec<u8>, NetError> {
    let len = read_frame_len(recv, limits::CONTROL_FRAME_BYTES_MAX).await?;
    read_frame_body(recv, len).await
}

/// Read a frame's length prefix and refuse it if it exceeds `max`, so the caller can check (and
/// reserve) the length before [`read_frame_body`] allocates anything.
pub(crate) async fn read_frame_len(
    recv: &mut quinn::RecvStream,
    max: usize,
) -> Result<usize, NetError> {
    let mut prefix = [0u8; FRAME_PREFIX_BYTES];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(ReadExactError::FinishedEarly(0)) => return Err(NetError::StreamFinished),
        Err(ReadExactError::FinishedEarly(_)) => return Err(NetError::TruncatedFrame),
        Err(ReadExactError::ReadError(err)) => return Err(err.into()),
    }
    // `codec::frame_len` is this check for the control limit; other streams have other limits.
    let len = u32::from_le_bytes(prefix) as usize;
    if len > max {
        return Err(DecodeError::TooLarge { len, max }.into());
    }
    Ok(len)
}

/// Read a frame body of `len` bytes (already checked by [`read_frame_len`]).
pub(crate) async fn read_frame_body(
    recv: &mut quinn::RecvStream,
    len: usize,
) -> Result<Vec<u8>, NetError> {
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.map_err(|err| match err {
        ReadExactError::FinishedEarly(_) => NetError::TruncatedFrame,
        ReadExactError::ReadError(err) => err.into(),
    })?;
    Ok(body)
}

/// Write one control frame (length prefix and body).
pub async fn write_frame(send: &mut quinn::SendStream, msg: &[u8]) -> Result<(), NetError> {
    check_len(msg)?;
    send.write_all(&codec::frame(msg)).await?;
    Ok(())
}

/// Refuse to send what the peer must refuse to read.
fn check_len(msg: &[u8]) -> Result<(), NetError> {
    if msg.len() > limits::CONTROL_FRAME_BYTES_MAX {
        return Err(DecodeError::TooLarge {
            len: msg.len(),
            max: limits::CONTROL_FRAME_BYTES_MAX,
        }
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_handle_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<QuicServer>();
        fn assert_send<T: Send>() {}
        assert_send::<QuicEvents>();
    }

    #[test]
    fn bind_outside_a_runtime_is_an_error() {
        let id = ServerIdentity::self_signed(&["localhost"]).expect("identity");
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        assert!(matches!(
            QuicServer::bind(addr, &id),
            Err(NetError::NoRuntime)
        ));
        assert!(matches!(
            client_endpoint(&ClientTrust::InsecureSkipVerify),
            Err(NetError::NoRuntime)
        ));
    }

    #[test]
    fn close_reasons_are_distinct_and_each_has_its_own_slot() {
        let all: Vec<CloseReason> = CloseReason::all().collect();
        assert_eq!(all.len(), CloseReason::COUNT);
        for (i, r) in all.iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?} must count in slot {i}");
        }
        let mut names: Vec<&str> = all.iter().map(|r| r.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), CloseReason::COUNT, "labels must be distinct");
        assert!(
            names
                .iter()
                .all(|n| n.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')),
            "labels are snake_case: {names:?}"
        );
    }

    #[test]
    fn a_close_is_ours_when_we_closed_first_else_what_the_client_or_network_did() {
        let by_client = ConnectionError::ApplicationClosed(quinn::ApplicationClose {
            error_code: VarInt::from_u32(0),
            reason: Bytes::from_static(b"redirected"),
        });
        let too_slow = CloseReason::of(Some(CLOSE_CODE_TOO_SLOW), &ConnectionError::LocallyClosed);
        assert_eq!(too_slow.as_str(), "too_slow");
        assert_eq!(
            CloseReason::of(Some(ErrorCode::BadTicket.close_code()), &by_client),
            CloseReason::Server(ErrorCode::BadTicket),
            "our close came first: the client's answer does not count"
        );
        assert_eq!(CloseReason::of(None, &by_client), CloseReason::Client);
        assert_eq!(
            CloseReason::of(None, &ConnectionError::TimedOut).as_str(),
            "timed_out"
        );
        assert_eq!(
            CloseReason::of(None, &ConnectionError::Reset),
            CloseReason::Reset
        );
        assert_eq!(
            CloseReason::of(None, &ConnectionError::VersionMismatch),
            CloseReason::TransportError
        );
        assert_eq!(
            CloseReason::of(None, &ConnectionError::LocallyClosed),
            CloseReason::Server(ErrorCode::ShuttingDown),
            "the endpoint closing under a connection is the server shutting down"
        );
    }
}
