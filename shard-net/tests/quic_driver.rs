//! The QUIC driver end to end on loopback: real handshakes, real streams and datagrams.
//!
//! Nothing here sleeps and hopes: every step waits for the event or message it needs, with a
//! generous timeout that only a hang can reach.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use quinn::{ConnectionError, TransportErrorCode, VarInt};
use zonescaler_net::quic::{
    self, CLOSE_CODE_TOO_SLOW, CloseReason, NetError, QuicEvents, QuicServer, ServerLimits,
};
use zonescaler_net::tls::{ClientTrust, ServerIdentity, TlsError};
use zonescaler_net::{NetCommand, NetEvent};
use zonescaler_shared::ConnId;
use zonescaler_shared::limits;
use zonescaler_shared::protocol::ErrorCode;

const TIMEOUT: Duration = Duration::from_secs(10);

/// The server's event stream with a buffer, plus a log of everything seen so the per-connection
/// ordering rules can be checked at the end of each test.
struct Tap {
    events: QuicEvents,
    buf: VecDeque<NetEvent>,
    log: Vec<NetEvent>,
}

impl Tap {
    fn new(events: QuicEvents) -> Self {
        Self {
            events,
            buf: VecDeque::new(),
            log: Vec::new(),
        }
    }

    async fn fill(&mut self) {
        assert!(
            self.events.wait(TIMEOUT).await,
            "no server event within {TIMEOUT:?}"
        );
        let mut out = Vec::new();
        let n = self.events.drain_into(usize::MAX, &mut out);
        assert_eq!(n, out.len());
        assert!(n >= 1, "wait said an event was ready");
        self.log.extend(out.iter().cloned());
        self.buf.extend(out);
    }

    /// The next event, whatever connection it is for.
    async fn next(&mut self) -> NetEvent {
        loop {
            if let Some(e) = self.buf.pop_front() {
                return e;
            }
            self.fill().await;
        }
    }

    /// The next event for `conn`, leaving other connections' events queued.
    async fn next_for(&mut self, conn: ConnId) -> NetEvent {
        loop {
            if let Some(i) = self.buf.iter().position(|e| e.conn() == conn) {
                return self.buf.remove(i).expect("index from position");
            }
            self.fill().await;
        }
    }

    /// Per connection: `Connected` first, at most one `Disconnected`, and nothing after it.
    fn check_ordering(&self) {
        let mut per_conn: HashMap<ConnId, Vec<&NetEvent>> = HashMap::new();
        for e in &self.log {
            per_conn.entry(e.conn()).or_default().push(e);
        }
        for (conn, events) in per_conn {
            assert!(
                matches!(events[0], NetEvent::Connected { .. }),
                "{conn:?}: first event {:?}",
                events[0]
            );
            let connected = events
                .iter()
                .filter(|e| matches!(e, NetEvent::Connected { .. }))
                .count();
            assert_eq!(connected, 1, "{conn:?}: {events:?}");
            let disc: Vec<usize> = (0..events.len())
                .filter(|&i| matches!(events[i], NetEvent::Disconnected { .. }))
                .collect();
            assert!(
                disc.len() <= 1,
                "{conn:?}: several Disconnected: {events:?}"
            );
            if let Some(&i) = disc.first() {
                assert_eq!(
                    i,
                    events.len() - 1,
                    "{conn:?}: events after Disconnected: {events:?}"
                );
            }
        }
    }
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn start() -> (ServerIdentity, QuicServer, Tap) {
    let id = ServerIdentity::self_signed(&["localhost"]).expect("self-signed identity");
    let (server, events) = QuicServer::bind(loopback(), &id).expect("bind");
    (id, server, Tap::new(events))
}

fn trusting(id: &ServerIdentity) -> quinn::Endpoint {
    quic::client_endpoint(&ClientTrust::Certs(id.cert_chain.clone())).expect("client endpoint")
}

async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(TIMEOUT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

async fn expect_connected(tap: &mut Tap) -> ConnId {
    match tap.next().await {
        NetEvent::Connected {
            conn,
            max_datagram_bytes,
        } => {
            assert!(
                max_datagram_bytes >= limits::DATAGRAM_BYTES_MIN,
                "{max_datagram_bytes}"
            );
            conn
        }
        other => panic!("expected Connected, got {other:?}"),
    }
}

async fn expect_disconnected(tap: &mut Tap, conn: ConnId) -> String {
    loop {
        match tap.next_for(conn).await {
            NetEvent::Disconnected { reason, .. } => return reason,
            // Anything the connection sent before it went away is fine.
            NetEvent::Control { .. } | NetEvent::Datagram { .. } => {}
            other => panic!("expected Disconnected for {conn:?}, got {other:?}"),
        }
    }
}

/// Wait until `cond` holds, checking every few milliseconds up to the timeout. Only for counters
/// a driver task bumps just after the thing the test can observe (a write completing), so there
/// is no event to wait for; the condition, not the delay, decides.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    within(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

/// Send `bytes` from a client and wait until the server sees it as a datagram from `conn`,
/// resending on a timer: datagrams are unreliable by contract, even if loopback rarely drops.
async fn datagram_to_server(
    tap: &mut Tap,
    client: &quinn::Connection,
    conn: ConnId,
    bytes: &'static [u8],
) {
    for _ in 0..20 {
        client
            .send_datagram(Bytes::from_static(bytes))
            .expect("send datagram");
        let got = tokio::time::timeout(Duration::from_millis(500), async {
            loop {
                match tap.next_for(conn).await {
                    NetEvent::Datagram { bytes: b, .. } if b.as_ref() == bytes => return,
                    NetEvent::Datagram { .. } => {}
                    other => panic!("expected a datagram from {conn:?}, got {other:?}"),
                }
            }
        })
        .await;
        if got.is_ok() {
            return;
        }
    }
    panic!("datagram never reached the server");
}

/// Dispatch a datagram to `conn` until the client receives it (same reasoning as above).
async fn datagram_to_client(
    server: &QuicServer,
    client: &quinn::Connection,
    conn: ConnId,
    bytes: &'static [u8],
) {
    for _ in 0..20 {
        server.dispatch(NetCommand::Datagram {
            conn,
            bytes: Bytes::from_static(bytes),
        });
        if let Ok(got) =
            tokio::time::timeout(Duration::from_millis(500), client.read_datagram()).await
        {
            assert_eq!(got.expect("read datagram").as_ref(), bytes);
            return;
        }
    }
    panic!("datagram never reached the client");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_and_datagrams_flow_both_ways() {
    let (id, server, mut tap) = start();
    let endpoint = trusting(&id);
    let mut client = within(
        "connect",
        quic::connect(&endpoint, server.local_addr(), "localhost", b"hello"),
    )
    .await
    .expect("connect");
    client
        .conn
        .send_datagram(Bytes::from_static(b"input-1"))
        .expect("send datagram");

    let conn = expect_connected(&mut tap).await;
    let mut saw_control = false;
    let mut saw_datagram = false;
    while !(saw_control && saw_datagram) {
        match tap.next_for(conn).await {
            NetEvent::Control { bytes, .. } => {
                assert!(!saw_control, "one control message sent");
                assert_eq!(bytes.as_ref(), b"hello");
                saw_control = true;
            }
            // Sent once; loopback with multi-MiB buffers does not drop it.
            NetEvent::Datagram { bytes, .. } => {
                assert_eq!(bytes.as_ref(), b"input-1");
                saw_datagram = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(server.connections(), 1);

    server.dispatch(NetCommand::Control {
        conn,
        bytes: Bytes::from_static(b"welcome"),
    });
    server.dispatch(NetCommand::Datagram {
        conn,
        bytes: Bytes::from_static(b"snapshot"),
    });
    assert_eq!(
        within("control", client.read_control())
            .await
            .expect("read control"),
        b"welcome"
    );
    let datagram = within("datagram", client.conn.read_datagram())
        .await
        .expect("read datagram");
    assert_eq!(datagram.as_ref(), b"snapshot");

    // Everything above was counted once, with its payload bytes.
    let stats = server.stats();
    assert_eq!((stats.control_frames_in, stats.control_bytes_in), (1, 5));
    assert_eq!((stats.datagrams_in, stats.datagram_bytes_in), (1, 7));
    assert_eq!((stats.datagrams_out, stats.datagram_bytes_out), (1, 8));
    assert_eq!(
        (
            stats.connections_accepted,
            stats.retries_sent,
            stats.handshakes_failed
        ),
        (1, 0, 0),
        "one client on an idle server starts its handshake at once: {stats:?}"
    );
    assert_eq!(stats.handshakes_in_progress, 0);
    eventually("the control write counted", || {
        let s = server.stats();
        (s.control_frames_out, s.control_bytes_out) == (1, 7)
    })
    .await;

    // The client leaving is reported once, with its reason, and the server forgets it.
    client.conn.close(VarInt::from_u32(0), b"bye");
    let reason = expect_disconnected(&mut tap, conn).await;
    assert!(reason.contains("bye"), "{reason}");
    assert_eq!(server.connections(), 0);
    assert_eq!(
        server.stats().closes[CloseReason::Client.index()],
        1,
        "the close is counted as the client's, once"
    );
    // Commands for a gone connection are ignored, not fatal.
    server.dispatch(NetCommand::Datagram {
        conn,
        bytes: Bytes::from_static(b"late"),
    });
    server.dispatch(NetCommand::Control {
        conn,
        bytes: Bytes::from_static(b"late"),
    });
    assert!(server.stats().commands_for_unknown_connections >= 2);
    tap.check_ordering();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_frame_closes_only_that_connection() {
    let (id, server, mut tap) = start();
    let endpoint = trusting(&id);

    let good = within(
        "connect",
        quic::connect(&endpoint, server.local_addr(), "localhost", b"hello"),
    )
    .await
    .expect("connect good client");
    let good_id = expect_connected(&mut tap).await;
    assert!(matches!(
        tap.next_for(good_id).await,
        NetEvent::Control { .. }
    ));

    // A client announcing a frame over the limit: refused from the prefix alone.
    let bad = within("connect", async {
        endpoint
            .connect(server.local_addr(), "localhost")
            .expect("start")
            .await
    })
    .await
    .expect("connect bad client");
    let (mut send, _recv) = within("open_bi", bad.open_bi()).await.expect("open_bi");
    let prefix = u32::try_from(limits::CONTROL_FRAME_BYTES_MAX + 1)
        .expect("fits u32")
        .to_le_bytes();
    send.write_all(&prefix).await.expect("write prefix");
    let bad_id = expect_connected(&mut tap).await;
    assert_ne!(bad_id, good_id);

    let closed = NetError::from(within("bad client close", bad.closed()).await);
    assert_eq!(
        closed.close_code(),
        Some(u64::from(ErrorCode::BadMessage.close_code())),
        "{closed}"
    );
    let reason = expect_disconnected(&mut tap, bad_id).await;
    assert!(reason.contains("bad message"), "{reason}");
    assert_eq!(server.stats().closed_bad_message, 1);
    assert_eq!(
        server.stats().closes[CloseReason::Server(ErrorCode::BadMessage).index()],
        1,
        "the driver's own close is counted under its code"
    );

    // The well-behaved client is untouched.
    datagram_to_server(&mut tap, &good.conn, good_id, b"still-here").await;
    datagram_to_client(&server, &good.conn, good_id, b"echo").await;
    assert_eq!(server.connections(), 1);
    tap.check_ordering();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_datagram_closes_the_connection() {
    let (id, server, mut tap) = start();
    let endpoint = trusting(&id);
    let client = within(
        "connect",
        quic::connect(&endpoint, server.local_addr(), "localhost", b"hello"),
    )
    .await
    .expect("connect");
    let conn = expect_connected(&mut tap).await;
    let big = Bytes::from(vec![0u8; limits::CLIENT_DATAGRAM_BYTES_MAX + 1]);
    client
        .conn
        .send_datagram(big)
        .expect("fits the path, not the protocol");
    let closed = client.closed().await;
    assert_eq!(
        closed.close_code(),
        Some(u64::from(ErrorCode::BadMessage.close_code())),
        "{closed}"
    );
    assert!(
        expect_disconnected(&mut tap, conn)
            .await
            .contains("datagram")
    );
    tap.check_ordering();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_delivers_queued_messages_then_the_reason() {
    let (id, server, mut tap) = start();
    let endpoint = trusting(&id);
    let mut client = within(
        "connect",
        quic::connect(&endpoint, server.local_addr(), "localhost", b"hello"),
    )
    .await
    .expect("connect");
    let conn = expect_connected(&mut tap).await;
    assert!(matches!(tap.next_for(conn).await, NetEvent::Control { .. }));

    server.dispatch(NetCommand::Control {
        conn,
        bytes: Bytes::from_static(b"error: full"),
    });
    server.dispatch(NetCommand::Close {
        conn,
        code: ErrorCode::ServerFull,
        reason: "shard is full".into(),
    });

    // Wait for the close first: the queued message must have been delivered before it.
    let closed = within("close", client.closed()).await;
    match &closed {
        NetError::PeerClosed { code, reason } => {
            assert_eq!(*code, u64::from(ErrorCode::ServerFull.close_code()));
            assert_eq!(reason, "shard is full");
        }
        other => panic!("expected PeerClosed, got {other:?}"),
    }
    assert_eq!(
        within("queued control", client.read_control())
            .await
            .expect("queued message"),
        b"error: full"
    );
    match within("end of stream", client.read_control()).await {
        Err(NetError::PeerClosed { code, .. }) => {
            assert_eq!(code, u64::from(ErrorCode::ServerFull.close_code()))
        }
        other => panic!("expected PeerClosed after the last message, got {other:?}"),
    }
    let reason = expect_disconnected(&mut tap, conn).await;
    assert!(
        reason.contains("server_full") && reason.contains("shard is full"),
        "{reason}"
    );
    tap.check_ordering();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_happens_even_when_the_client_stopped_reading() {
    let (id, server, mut tap) = start();
    let endpoint = trusting(&id);
    let client = within(
        "connect",
        quic::connect(&endpoint, server.local_addr(), "localhost", b"hello"),
    )
    .await
    .expect("connect");
    let conn = expect_connected(&mut tap).await;
    // More than the control stream's flow-control window, less than the queue: the writer
    // blocks on a client that never reads, with the rest still queued ahead of the close.
    let big = Bytes::from(vec![1u8; limits::CONTROL_FRAME_BYTES_MAX]);
    let n = limits::CONTROL_QUEUE_PER_CLIENT_MAX / 2;
    assert!(n * big.len() > 2 * zonescaler_net::tls::CONTROL_STREAM_WINDOW_BYTES as usize);
    for _ in 0..n {
        server.dispatch(NetCommand::Control {
            conn,
            bytes: big.clone(),
        });
    }
    server.dispatch(NetCommand::Close {
        conn,
        code: ErrorCode::HelloTimeout,
        reason: "no hello".into(),
    });
    match within("close despite blocked writes", client.closed()).await {
        NetError::PeerClosed { code, reason } => {
            assert_eq!(code, u64::from(ErrorCode::HelloTimeout.close_code()));
            assert_eq!(reason, "no hello");
        }
        other => panic!("expected PeerClosed, got {other:?}"),
    }
    assert!(
        expect_disconnected(&mut tap, conn)
            .await
            .contains("hello_timeout")
    );
    assert_eq!(server.stats().closed_too_slow, 0);
    tap.check_ordering();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_as_too_slow() {
    let (id, server, mut tap) = start();
    let endpoint = trusting(&id);
    // Never reads its control stream, so flow control stalls the server's writer.
    let client = within(
        "connect",
        quic::connect(&endpoint, server.local_addr(), "localhost", b"hello"),
    )
    .await
    .expect("connect");
    let conn = expect_connected(&mut tap).await;
    let big = Bytes::from(vec![7u8; limits::CONTROL_FRAME_BYTES_MAX]);
    // Far more than the flow-control windows plus the queue can hold.
    for _ in 0..(limits::CONTROL_QUEUE_PER_CLIENT_MAX * 4) {
        server.dispatch(NetCommand::Control {
            conn,
            bytes: big.clone(),
        });
    }
    // The server side is exact: one `Disconnected` saying why, promptly.
    assert!(
        expect_disconnected(&mut tap, conn)
            .await
            .contains("too slow")
    );
    // The client usually gets the close code, but quinn-proto 0.11.19 withholds CONNECTION_CLOSE
    // while the congestion window is full of the very data it was too slow for
    // (quinn-rs/quinn#2785, fixed upstream by #2787); the client then learns of the close from a
    // stateless reset at its next keep-alive, or at worst its idle timeout.
    let wait = Duration::from_millis(limits::IDLE_TIMEOUT_MS) + TIMEOUT;
    let closed = tokio::time::timeout(wait, client.closed())
        .await
        .expect("client connection ends");
    match closed {
        NetError::PeerClosed { code, .. } => assert_eq!(code, u64::from(CLOSE_CODE_TOO_SLOW)),
        NetError::Connection(ConnectionError::Reset | ConnectionError::TimedOut) => {}
        other => panic!("unexpected end of a too-slow client: {other:?}"),
    }
    assert_eq!(server.stats().closed_too_slow, 1);
    tap.check_ordering();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_checked_unless_told_not_to() {
    let (_id, server, mut tap) = start();
    let stranger = ServerIdentity::self_signed(&["localhost"]).expect("other identity");

    let wrong = trusting(&stranger);
    match within(
        "refused handshake",
        quic::connect(&wrong, server.local_addr(), "localhost", b"hello"),
    )
    .await
    {
        Err(NetError::Connection(ConnectionError::TransportError(err))) => {
            assert!(
                err.to_string().to_lowercase().contains("certificate"),
                "{err}"
            );
        }
        Err(other) => panic!("expected a TLS error, got {other:?}"),
        Ok(_) => panic!("connected to a server with an untrusted certificate"),
    }

    let insecure =
        quic::client_endpoint(&ClientTrust::InsecureSkipVerify).expect("insecure endpoint");
    let client = within(
        "insecure connect",
        quic::connect(&insecure, server.local_addr(), "localhost", b"hello"),
    )
    .await
    .expect("InsecureSkipVerify connects");
    // The failed handshake never reached the shard: the first event is the good client.
    let conn = expect_connected(&mut tap).await;
    match tap.next_for(conn).await {
        NetEvent::Control { bytes, .. } => assert_eq!(bytes.as_ref(), b"hello"),
        other => panic!("expected the first control message, got {other:?}"),
    }

    // Shutdown tells the client why.
    server.shutdown().await;
    let closed = within("shutdown close", client.closed()).await;
    assert_eq!(
        closed.close_code(),
        Some(u64::from(ErrorCode::ShuttingDown.close_code())),
        "{closed}"
    );
    assert!(
        expect_disconnected(&mut tap, conn)
            .await
            .contains("shutting_down")
    );
    tap.check_ordering();
}

/// Wait until `n` connections have reported `Disconnected`, whichever they are.
async fn expect_disconnects(tap: &mut Tap, n: usize) {
    let mut seen = 0;
    while seen < n {
        match tap.next().await {
            NetEvent::Disconnected { .. } => seen += 1,
            NetEvent::Connected { .. } => panic!("no connection was expected to open now"),
            NetEvent::Control { .. } | NetEvent::Datagram { .. } => {}
        }
    }
}

/// Connect without opening a stream: a connection that holds a slot and says nothing, the way a
/// flood would.
async fn idle_connection(
    endpoint: &quinn::Endpoint,
    server: SocketAddr,
) -> Result<quinn::Connection, ConnectionError> {
    let connecting = endpoint
        .connect(server, "localhost")
        .expect("start connecting");
    within("handshake", connecting).await
}

fn assert_refused(result: Result<quinn::Connection, ConnectionError>, why: &str) {
    match result {
        Err(ConnectionError::ConnectionClosed(close))
            if close.error_code == TransportErrorCode::CONNECTION_REFUSED => {}
        Err(other) => panic!("{why}: expected CONNECTION_REFUSED, got {other}"),
        Ok(_) => panic!("{why}: the connection was accepted"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_hold_more_than_its_share_of_connections() {
    const BOUND: usize = 8;
    const EXTRA: usize = 5;
    const CLOSED: usize = 3;
    let id = ServerIdentity::self_signed(&["localhost"]).expect("identity");
    let limits = ServerLimits {
        connections_per_address_max: BOUND,
        ..ServerLimits::default()
    };
    let (server, events) = QuicServer::bind_with(loopback(), &id, limits).expect("bind");
    let mut tap = Tap::new(events);
    let addr = server.local_addr();
    // Like a bot swarm: several endpoints, so several ports, on one host.
    let endpoints: Vec<quinn::Endpoint> = (0..3).map(|_| trusting(&id)).collect();
    let endpoint = |i: usize| &endpoints[i % endpoints.len()];

    let mut idle = Vec::new();
    for i in 0..BOUND {
        let conn = idle_connection(endpoint(i), addr)
            .await
            .expect("connections up to the bound are accepted");
        idle.push(conn);
    }
    for _ in 0..BOUND {
        expect_connected(&mut tap).await;
    }
    for i in 0..EXTRA {
        assert_refused(
            idle_connection(endpoint(i), addr).await,
            "one host past its bound, on any port, is refused",
        );
    }
    let stats = server.stats();
    assert_eq!(server.connections(), BOUND);
    assert_eq!(stats.connections_accepted, BOUND as u64);
    // At least: a refusal keeps no state, so a client that resends its first packet before the
    // refusal reaches it (a slow machine) is refused, and counted, once more.
    assert!(
        stats.connections_refused_per_address >= EXTRA as u64,
        "{stats:?}"
    );
    assert_eq!(stats.handshakes_in_progress, 0);
    let refused = stats.connections_refused_per_address;

    // Closing gives the places back: exactly as many new ones are accepted, and no more.
    for conn in idle.drain(..CLOSED) {
        conn.close(VarInt::from_u32(0), b"bye");
    }
    expect_disconnects(&mut tap, CLOSED).await;
    for i in 0..CLOSED {
        let conn = idle_connection(endpoint(i), addr)
            .await
            .expect("a closed connection's place is free again");
        idle.push(conn);
        expect_connected(&mut tap).await;
    }
    assert_refused(
        idle_connection(endpoint(0), addr).await,
        "the freed places are taken again, and the bound still holds",
    );
    let stats = server.stats();
    assert_eq!(server.connections(), BOUND);
    assert_eq!(stats.connections_accepted, (BOUND + CLOSED) as u64);
    assert!(stats.connections_refused_per_address > refused, "{stats:?}");
    tap.check_ordering();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_handshake_load_a_client_proves_its_address_with_a_retry() {
    let id = ServerIdentity::self_signed(&["localhost"]).expect("identity");
    // 0: as if the server were always under load, so every unvalidated address gets a Retry.
    let limits = ServerLimits {
        handshakes_before_retry: 0,
        ..ServerLimits::default()
    };
    let (server, events) = QuicServer::bind_with(loopback(), &id, limits).expect("bind");
    let mut tap = Tap::new(events);
    let endpoint = trusting(&id);
    let mut client = within(
        "connect through a Retry",
        quic::connect(&endpoint, server.local_addr(), "localhost", b"hello"),
    )
    .await
    .expect("a real client follows the Retry by itself");
    let conn = expect_connected(&mut tap).await;
    match tap.next_for(conn).await {
        NetEvent::Control { bytes, .. } => assert_eq!(bytes.as_ref(), b"hello"),
        other => panic!("expected the first control message, got {other:?}"),
    }
    server.dispatch(NetCommand::Control {
        conn,
        bytes: Bytes::from_static(b"welcome"),
    });
    assert_eq!(
        within("control", client.read_control())
            .await
            .expect("read control"),
        b"welcome"
    );
    let stats = server.stats();
    // A retransmitted first packet may be answered with a second Retry; never with state.
    assert!(
        stats.retries_sent >= 1,
        "the server asked for address validation: {stats:?}"
    );
    assert_eq!(
        stats.connections_accepted, 1,
        "only the validated attempt started a handshake: {stats:?}"
    );
    assert_eq!(stats.handshakes_in_progress, 0, "{stats:?}");
    tap.check_ordering();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_offering_no_protocol_fails_the_handshake() {
    let (id, server, mut tap) = start();
    // quinn's own default client configuration offers no ALPN at all.
    let mut roots = quinn::rustls::RootCertStore::empty();
    roots.add(id.cert_chain[0].clone()).expect("root");
    let plain = quinn::ClientConfig::with_root_certificates(Arc::new(roots)).expect("config");
    let endpoint = quic::client_endpoint(&ClientTrust::InsecureSkipVerify).expect("endpoint");
    let connecting = endpoint
        .connect_with(plain, server.local_addr(), "localhost")
        .expect("start");
    let err = NetError::from(
        within("refused handshake", connecting)
            .await
            .expect_err("a client that names no protocol must not connect"),
    );
    assert!(
        matches!(err, NetError::WrongProtocol(_)) && err.to_string().contains("ALPN"),
        "the client learns that it spoke the wrong protocol: {err}"
    );

    eventually("the failed handshake counted", || {
        server.stats().handshakes_failed == 1
    })
    .await;

    // The failed handshake never reached the shard: the first event is the good client's.
    let good = trusting(&id);
    let _client = within(
        "connect",
        quic::connect(&good, server.local_addr(), "localhost", b"hello"),
    )
    .await
    .expect("connect");
    let conn = expect_connected(&mut tap).await;
    assert!(matches!(tap.next_for(conn).await, NetEvent::Control { .. }));
    tap.check_ordering();
    server.shutdown().await;
}

fn temp_path(tag: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!(
        "zonescaler-net-{}-{nanos}-{tag}.pem",
        std::process::id()
    ))
}

#[test]
fn pem_files_round_trip_and_errors_name_the_file() {
    let id = ServerIdentity::self_signed(&["localhost", "127.0.0.1"]).expect("identity");
    let cert_path = temp_path("cert");
    let key_path = temp_path("key");
    std::fs::write(&cert_path, id.cert_pem()).expect("write cert");
    std::fs::write(&key_path, id.key_pem()).expect("write key");

    let loaded = ServerIdentity::from_pem_files(&cert_path, &key_path).expect("load PEM files");
    assert_eq!(loaded.cert_chain, id.cert_chain);
    assert_eq!(loaded.key.secret_der(), id.key.secret_der());
    match ClientTrust::from_pem_file(&cert_path).expect("trust file") {
        ClientTrust::Certs(certs) => assert_eq!(certs, id.cert_chain),
        other => panic!("{other:?}"),
    }

    // A missing file names itself.
    let missing = temp_path("missing");
    let err = ServerIdentity::from_pem_files(&missing, &key_path).expect_err("missing cert");
    assert!(matches!(err, TlsError::Read { .. }));
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );
    let err = ClientTrust::from_pem_file(&missing).expect_err("missing trust file");
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );

    // Swapped files: no certificate in the key file, no key in the certificate file.
    let err = ServerIdentity::from_pem_files(&key_path, &key_path).expect_err("no cert");
    assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");
    let err = ServerIdentity::from_pem_files(&cert_path, &cert_path).expect_err("no key");
    assert!(matches!(err, TlsError::NoPrivateKey { .. }), "{err}");
    assert!(
        err.to_string().contains(&cert_path.display().to_string()),
        "{err}"
    );

    // A key that belongs to another certificate is caught at load time.
    let other = ServerIdentity::self_signed(&["localhost"]).expect("other identity");
    let other_key = temp_path("other-key");
    std::fs::write(&other_key, other.key_pem()).expect("write other key");
    let err = ServerIdentity::from_pem_files(&cert_path, &other_key).expect_err("mismatched key");
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");

    for p in [cert_path, key_path, other_key] {
        let _ = std::fs::remove_file(p);
    }
}
