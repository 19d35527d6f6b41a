//! Shard links end to end on loopback: real QUIC, real TLS, real membership proofs.
//!
//! Nothing here sleeps and hopes: every step waits for the event or close it needs, with a
//! generous timeout that only a hang can reach. Where a test asserts that something did *not*
//! happen (no `Up`, no `Message` for a stranger), it waits for a later event that can only come
//! after it: a fresh member's link coming up on the same acceptor.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::{ConnectionError, SendDatagramError};
use zonescaler_net::NetEvent;
use zonescaler_net::link::{
    self, ClusterAuth, ClusterLinks, LinkCloseCode, LinkEvent, LinkEvents, LinkHello, LinkId,
    LinkOptions, LinkWelcome,
};
use zonescaler_net::quic::{self, NetError, QuicServer};
use zonescaler_net::tls::{self, ClientTrust, ServerIdentity};
use zonescaler_shared::limits;

const TIMEOUT: Duration = Duration::from_secs(10);
const SECRET: &[u8] = b"the cluster secret, 32 bytes ok!";
const OTHER_SECRET: &[u8] = b"not the cluster secret, but long";
const HASH: u64 = 0x0123_4567_89ab_cdef;
/// Short enough that tests about timeouts take about a second rather than five, long enough
/// that a loaded 2-core CI machine still completes honest handshakes well within it.
// Long enough that an honest handshake on a starved CI machine still finishes inside it (the
// test checks that one does), short enough to keep the test quick.
const SHORT_HANDSHAKE: Duration = Duration::from_secs(3);

/// One shard's links and a log of every event they reported.
struct Node {
    links: ClusterLinks,
    events: LinkEvents,
    buf: VecDeque<LinkEvent>,
    log: Vec<LinkEvent>,
}

impl Node {
    fn new(secret: &[u8], hash: u64) -> Self {
        Self::with_options(secret, hash, LinkOptions::default())
    }

    fn with_options(secret: &[u8], hash: u64, options: LinkOptions) -> Self {
        let id = ServerIdentity::self_signed(&["localhost"]).expect("self-signed identity");
        let auth = ClusterAuth::new(secret, hash).expect("secret long enough");
        let (links, events) =
            ClusterLinks::bind_with(loopback(), &id, auth, options).expect("bind links");
        Self {
            links,
            events,
            buf: VecDeque::new(),
            log: Vec::new(),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.links.local_addr()
    }

    async fn fill(&mut self) {
        let event = within("a link event", self.events.recv())
            .await
            .expect("links alive");
        let mut out = vec![event];
        self.events.drain_into(usize::MAX, &mut out);
        self.log.extend(out.iter().cloned());
        self.buf.extend(out);
    }

    /// The next event, whatever link it is for.
    async fn next(&mut self) -> LinkEvent {
        loop {
            if let Some(e) = self.buf.pop_front() {
                return e;
            }
            self.fill().await;
        }
    }

    /// The next event for `link`, leaving other links' events queued.
    async fn next_for(&mut self, link: LinkId) -> LinkEvent {
        loop {
            if let Some(i) = self.buf.iter().position(|e| e.link() == link) {
                return self.buf.remove(i).expect("index from position");
            }
            self.fill().await;
        }
    }

    async fn expect_up(&mut self, dialed: bool) -> LinkId {
        match self.next().await {
            LinkEvent::Up {
                link, dialed: d, ..
            } if d == dialed => link,
            other => panic!("expected Up (dialed: {dialed}), got {other:?}"),
        }
    }

    async fn expect_up_for(&mut self, link: LinkId) {
        match self.next_for(link).await {
            LinkEvent::Up { dialed: true, .. } => {}
            other => panic!("expected Up for the dial {link}, got {other:?}"),
        }
    }

    async fn expect_down(&mut self, link: LinkId) -> (Option<LinkCloseCode>, String) {
        match self.next_for(link).await {
            LinkEvent::Down { code, reason, .. } => (code, reason),
            other => panic!("expected Down for {link}, got {other:?}"),
        }
    }

    async fn expect_failed(&mut self, link: LinkId) -> (Option<LinkCloseCode>, String) {
        match self.next_for(link).await {
            LinkEvent::Failed { code, reason, .. } => (code, reason),
            other => panic!("expected Failed for {link}, got {other:?}"),
        }
    }

    /// Per link: `Failed` alone, or `Up` first and at most one `Down`, last.
    fn check_ordering(&self) {
        let mut per_link: HashMap<LinkId, Vec<&LinkEvent>> = HashMap::new();
        for e in &self.log {
            per_link.entry(e.link()).or_default().push(e);
        }
        for (link, events) in per_link {
            if matches!(events[0], LinkEvent::Failed { .. }) {
                assert_eq!(
                    events.len(),
                    1,
                    "{link}: a failed dial reports nothing else: {events:?}"
                );
                continue;
            }
            assert!(
                matches!(events[0], LinkEvent::Up { .. }),
                "{link}: the shard must hear Up before anything else: {events:?}"
            );
            let ups = events
                .iter()
                .filter(|e| matches!(e, LinkEvent::Up { .. }))
                .count();
            assert_eq!(ups, 1, "{link}: {events:?}");
            let downs: Vec<usize> = (0..events.len())
                .filter(|&i| matches!(events[i], LinkEvent::Down { .. }))
                .collect();
            assert!(downs.len() <= 1, "{link}: several Down: {events:?}");
            if let Some(&i) = downs.first() {
                assert_eq!(
                    i,
                    events.len() - 1,
                    "{link}: Down must be a link's last event: {events:?}"
                );
            }
        }
    }

    /// Prove that nothing about earlier, failed connections reached this shard: a fresh member
    /// dials, and its `Up` must be the very next event here. Anything the driver had reported
    /// for the earlier connections would have been queued before it.
    async fn assert_next_event_is_a_new_member(&mut self, why: &str) {
        let mut member = Node::new(SECRET, HASH);
        let dial = member.links.dial(self.addr());
        member.expect_up_for(dial).await;
        match self.next().await {
            LinkEvent::Up { dialed: false, .. } => {}
            other => panic!("{why}: expected only the new member's Up, got {other:?}"),
        }
        assert_eq!(self.links.links(), 1, "{why}");
        assert!(self.buf.is_empty(), "{why}: {:?}", self.buf);
    }
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(TIMEOUT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
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

/// A plain quinn client that offers the link protocol (ALPN) and trusts any certificate: a
/// stranger with a TLS stack and no secret, who knows which protocol to ask for (and, unlike a
/// real dialer, would send datagrams).
fn stranger_endpoint() -> quinn::Endpoint {
    let mut endpoint =
        quic::client_endpoint(&ClientTrust::InsecureSkipVerify).expect("client endpoint");
    let config = tls::client_config_for(&ClientTrust::InsecureSkipVerify, tls::ALPN_LINK)
        .expect("client config");
    endpoint.set_default_client_config(config);
    endpoint
}

/// A connection to `addr` that completes TLS and nothing else.
async fn tls_only(endpoint: &quinn::Endpoint, addr: SocketAddr) -> quinn::Connection {
    let connecting = endpoint.connect(addr, "localhost").expect("connect");
    within("TLS handshake", connecting)
        .await
        .expect("TLS completes: certificates prove nothing on links")
}

/// Connect to `addr`, write `first_frame` where the hello belongs, and return how the acceptor
/// closed the connection, after checking it answered nothing but the close.
async fn close_code_for_first_frame(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    first_frame: &[u8],
) -> Option<LinkCloseCode> {
    let mut session = within(
        "connect",
        quic::connect(endpoint, addr, "localhost", first_frame),
    )
    .await
    .expect("TLS completes: certificates prove nothing on links");
    let err = within("close", session.closed()).await;
    assert!(
        matches!(
            session.read_control().await,
            Err(NetError::PeerClosed { .. })
        ),
        "the acceptor answers a stranger with nothing but the close"
    );
    err.close_code().and_then(LinkCloseCode::from_close_code)
}

/// The application close code of a connection the peer closed on purpose.
fn peer_close_code(err: &ConnectionError) -> Option<LinkCloseCode> {
    match err {
        ConnectionError::ApplicationClosed(close) => {
            LinkCloseCode::from_close_code(close.error_code.into_inner())
        }
        _ => None,
    }
}

/// Frame `i` of a test stream: sizes from 0 to ~64 KiB plus a few of 1 MiB (more than a flow
/// control window), contents that tell frames apart.
fn frame(direction: u8, i: u32) -> Bytes {
    let len = if i % 250 == 7 {
        1024 * 1024
    } else {
        (i as usize * 7919) % 65_536
    };
    let mut body = Vec::with_capacity(len + 5);
    body.push(direction);
    body.extend_from_slice(&i.to_le_bytes());
    body.extend((0..len).map(|k| (k as u32 ^ i) as u8));
    Bytes::from(body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_link_and_exchange_ordered_messages_both_ways() {
    const FRAMES: u32 = 1_000;
    let mut a = Node::new(SECRET, HASH);
    let mut b = Node::new(SECRET, HASH);

    let a_link = a.links.dial(b.addr());
    a.expect_up_for(a_link).await;
    let b_link = b.expect_up(false).await;
    assert_eq!(
        (a.links.links(), b.links.links()),
        (1, 1),
        "both members count the link as up once the handshake is done"
    );

    for i in 0..FRAMES {
        a.links.send(a_link, frame(b'a', i));
        b.links.send(b_link, frame(b'b', i));
    }
    for i in 0..FRAMES {
        match b.next_for(b_link).await {
            LinkEvent::Message { bytes, .. } => assert!(
                bytes == frame(b'a', i),
                "shards rely on link messages arriving intact and in order: frame {i} from a"
            ),
            other => panic!("expected frame {i} from a, got {other:?}"),
        }
        match a.next_for(a_link).await {
            LinkEvent::Message { bytes, .. } => assert!(
                bytes == frame(b'b', i),
                "shards rely on link messages arriving intact and in order: frame {i} from b"
            ),
            other => panic!("expected frame {i} from b, got {other:?}"),
        }
    }

    // Messages queued just before a close still arrive, then the close with its reason.
    for i in 0..10 {
        a.links.send(a_link, frame(b'z', i));
    }
    a.links.close(a_link, "rebalancing done");
    for i in 0..10 {
        match b.next_for(b_link).await {
            LinkEvent::Message { bytes, .. } => assert!(
                bytes == frame(b'z', i),
                "a close must not drop what the shard queued before it (frame {i})"
            ),
            other => panic!("expected last frame {i}, got {other:?}"),
        }
    }
    let (code, reason) = b.expect_down(b_link).await;
    assert_eq!(code, Some(LinkCloseCode::Closed), "{reason}");
    assert!(
        reason.contains("rebalancing done"),
        "the peer learns why the link was closed: {reason}"
    );
    let (code, reason) = a.expect_down(a_link).await;
    assert_eq!(code, Some(LinkCloseCode::Closed), "{reason}");
    assert!(reason.contains("closed locally"), "{reason}");

    a.links.send(a_link, Bytes::from_static(b"late"));
    assert_eq!(
        a.links.stats().sends_dropped,
        1,
        "a send after Down is a counted no-op, not an error"
    );
    assert_eq!((a.links.links(), b.links.links()), (0, 0));

    // Every frame is counted once on each side, with its body's bytes.
    let bytes = |direction, range: std::ops::Range<u32>| -> u64 {
        range.map(|i| frame(direction, i).len() as u64).sum()
    };
    let a_sent = (
        u64::from(FRAMES) + 10,
        bytes(b'a', 0..FRAMES) + bytes(b'z', 0..10),
    );
    let b_sent = (u64::from(FRAMES), bytes(b'b', 0..FRAMES));
    let (a_stats, b_stats) = (a.links.stats(), b.links.stats());
    assert_eq!((b_stats.frames_in, b_stats.frame_bytes_in), a_sent);
    assert_eq!((a_stats.frames_in, a_stats.frame_bytes_in), b_sent);
    eventually("a's writes counted", || {
        let s = a.links.stats();
        (s.frames_out, s.frame_bytes_out) == a_sent
    })
    .await;
    eventually("b's writes counted", || {
        let s = b.links.stats();
        (s.frames_out, s.frame_bytes_out) == b_sent
    })
    .await;
    a.check_ordering();
    b.check_ordering();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_without_the_cluster_secret_cannot_join() {
    let mut member = Node::new(SECRET, HASH);
    let mut stranger = Node::new(OTHER_SECRET, HASH);

    let dial = stranger.links.dial(member.addr());
    stranger
        .links
        .send(dial, Bytes::from_static(b"proxy upsert"));
    let (code, reason) = stranger.expect_failed(dial).await;
    assert_eq!(
        code,
        Some(LinkCloseCode::NotAMember),
        "a process without the cluster secret is told it is not a member: {reason}"
    );
    assert!(
        reason.contains("not_a_member") && reason.contains("closed by peer"),
        "{reason}"
    );
    assert_eq!(
        stranger.links.stats().sends_dropped,
        1,
        "nothing is sent on a link before it is up"
    );
    member
        .assert_next_event_is_a_new_member(
            "a shard never hears of a process that cannot prove membership",
        )
        .await;
    assert_eq!(member.links.stats().handshakes_refused, 1);
    member.check_ordering();
    stranger.check_ordering();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_connections_without_a_valid_hello_deliver_nothing() {
    let mut member = Node::new(SECRET, HASH);
    let endpoint = stranger_endpoint();

    // A shard message where the hello should be.
    assert_eq!(
        close_code_for_first_frame(&endpoint, member.addr(), b"proxy upsert bytes").await,
        Some(LinkCloseCode::BadMessage),
        "bytes that are not a hello end the connection before anything is delivered"
    );
    // A well-formed hello with a made-up proof.
    let forged = LinkHello {
        version: link::LINK_VERSION,
        protocol_hash: HASH,
        proof: [0x42; link::PROOF_BYTES],
    };
    assert_eq!(
        close_code_for_first_frame(&endpoint, member.addr(), &forged.encode()).await,
        Some(LinkCloseCode::NotAMember),
        "a guessed proof is refused as not a member"
    );

    // Datagrams are not part of the link protocol: the acceptor does not even accept them.
    let conn = tls_only(&endpoint, member.addr()).await;
    assert!(
        matches!(
            conn.send_datagram(Bytes::from_static(b"input")),
            Err(SendDatagramError::UnsupportedByPeer)
        ),
        "links announce that they take no datagrams, so none can reach a shard"
    );
    conn.close(0u32.into(), b"done");

    member
        .assert_next_event_is_a_new_member(
            "connections that never proved membership produce no Up and no Message",
        )
        .await;
    member.check_ordering();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_that_do_not_finish_in_time_are_closed() {
    let mut member = Node::with_options(
        SECRET,
        HASH,
        LinkOptions {
            handshake_timeout: SHORT_HANDSHAKE,
            ..LinkOptions::default()
        },
    );

    // A stranger that completes TLS and then says nothing.
    let endpoint = stranger_endpoint();
    let started = Instant::now();
    let conn = tls_only(&endpoint, member.addr()).await;
    let err = within("the handshake timeout", conn.closed()).await;
    assert_eq!(
        peer_close_code(&err),
        Some(LinkCloseCode::HandshakeTimeout),
        "a silent peer holds a slot only until the handshake timeout: {err}"
    );
    assert!(
        started.elapsed() >= SHORT_HANDSHAKE,
        "{:?}",
        started.elapsed()
    );

    // A dial to an address that never answers fails at the same timeout; one closed first
    // fails at once with the shard's own reason.
    let silent = std::net::UdpSocket::bind(loopback()).expect("silent socket");
    let silent_addr = silent.local_addr().expect("addr");
    let timed_out = member.links.dial(silent_addr);
    let abandoned = member.links.dial(silent_addr);
    member.links.close(abandoned, "not needed any more");
    let (code, reason) = member.expect_failed(abandoned).await;
    assert_eq!(code, Some(LinkCloseCode::Closed), "{reason}");
    assert!(reason.contains("not needed any more"), "{reason}");
    let (code, reason) = member.expect_failed(timed_out).await;
    assert_eq!(
        code,
        Some(LinkCloseCode::HandshakeTimeout),
        "an unreachable shard is reported as a failed dial, never as a link: {reason}"
    );

    member
        .assert_next_event_is_a_new_member("a peer that timed out never became a link")
        .await;
    member.check_ordering();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_with_another_protocol_hash_is_refused() {
    let mut member = Node::new(SECRET, HASH);
    let mut other_build = Node::new(SECRET, HASH ^ 1);

    let dial = other_build.links.dial(member.addr());
    let (code, reason) = other_build.expect_failed(dial).await;
    assert_eq!(
        code,
        Some(LinkCloseCode::ProtocolMismatch),
        "shards built from different registries must not exchange messages: {reason}"
    );
    assert!(reason.contains("protocol hash"), "{reason}");
    member
        .assert_next_event_is_a_new_member("a protocol mismatch never becomes a link")
        .await;
    member.check_ordering();
    other_build.check_ordering();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_frame_prefix_closes_the_link_as_bad_message() {
    let mut member = Node::new(SECRET, HASH);
    let auth = ClusterAuth::new(SECRET, HASH).expect("secret");
    let endpoint = stranger_endpoint();
    let mut raw = within("dial", link::dial_raw(&endpoint, member.addr(), &auth))
        .await
        .expect("a raw dialer with the secret completes the handshake");
    let link = member.expect_up(false).await;

    let oversize = u32::try_from(limits::LINK_FRAME_BYTES_MAX + 1).expect("fits");
    raw.send
        .write_all(&oversize.to_le_bytes())
        .await
        .expect("write prefix");
    let (code, reason) = member.expect_down(link).await;
    assert_eq!(
        code,
        Some(LinkCloseCode::BadMessage),
        "a frame over the limit ends the link before anything is allocated: {reason}"
    );
    assert!(reason.contains("exceeds"), "{reason}");
    let err = within("close", raw.conn.closed()).await;
    assert_eq!(
        peer_close_code(&err),
        Some(LinkCloseCode::BadMessage),
        "{err}"
    );
    assert_eq!(member.links.stats().closed_bad_message, 1);
    member.check_ordering();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dialer_sends_nothing_to_an_acceptor_that_cannot_prove_membership() {
    let mut member = Node::new(SECRET, HASH);
    // An impostor: valid TLS, reads the hello, answers with a made-up welcome.
    let id = ServerIdentity::self_signed(&["localhost"]).expect("identity");
    let impostor = {
        let config = link::link_server_config(&id).expect("server config");
        quinn::Endpoint::server(config, loopback()).expect("impostor endpoint")
    };
    let impostor_addr = impostor.local_addr().expect("addr");
    let dial = member.links.dial(impostor_addr);

    let incoming = within("incoming", impostor.accept())
        .await
        .expect("endpoint open");
    let conn = within("handshake", incoming.into_future())
        .await
        .expect("TLS handshake");
    let (mut send, mut recv) = within("stream", conn.accept_bi())
        .await
        .expect("the dialer opens the link stream");
    let hello = within("hello", quic::read_frame(&mut recv))
        .await
        .expect("hello frame");
    assert!(LinkHello::decode(&hello).is_some());
    let forged = LinkWelcome {
        proof: [7; link::PROOF_BYTES],
    };
    quic::write_frame(&mut send, &forged.encode())
        .await
        .expect("write welcome");
    member
        .links
        .send(dial, Bytes::from_static(b"handoff: secrets"));

    let (code, reason) = member.expect_failed(dial).await;
    assert_eq!(
        code,
        Some(LinkCloseCode::NotAMember),
        "membership is mutual: an acceptor without the secret is refused: {reason}"
    );
    assert!(reason.contains("acceptor is not a member"), "{reason}");
    match within("close", quic::read_frame(&mut recv)).await {
        Err(err @ NetError::PeerClosed { .. }) => assert_eq!(
            err.close_code().and_then(LinkCloseCode::from_close_code),
            Some(LinkCloseCode::NotAMember),
            "{err}"
        ),
        other => panic!(
            "the impostor must get no shard message after the hello, only the close: {other:?}"
        ),
    }
    member.check_ordering();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading_is_closed_as_too_slow() {
    let mut member = Node::new(SECRET, HASH);
    let auth = ClusterAuth::new(SECRET, HASH).expect("secret");
    let endpoint = stranger_endpoint();
    // Dials and completes the handshake, then never reads its stream.
    let raw = within("dial", link::dial_raw(&endpoint, member.addr(), &auth))
        .await
        .expect("handshake");
    let link = member.expect_up(false).await;

    // More frames than the queue holds plus what the flow-control windows let through.
    let chunk = Bytes::from(vec![0u8; 1024]);
    for _ in 0..2 * limits::LINK_QUEUE_FRAMES_MAX + 2 * 1024 {
        member.links.send(link, chunk.clone());
    }
    let (code, reason) = member.expect_down(link).await;
    assert_eq!(
        code,
        Some(LinkCloseCode::TooSlow),
        "a peer that stops reading is dropped instead of buffered without bound: {reason}"
    );
    // The peer is disconnected. Its socket is flooded with data it does not read, so the close
    // packet itself may be dropped and the peer then learns of it from a stateless reset.
    let err = within("close", raw.conn.closed()).await;
    match err {
        ConnectionError::ApplicationClosed(_) => {
            assert_eq!(peer_close_code(&err), Some(LinkCloseCode::TooSlow), "{err}")
        }
        ConnectionError::Reset => {}
        other => panic!("the shard closes a slow peer, it does not wait for it: {other}"),
    }
    assert_eq!(member.links.stats().closed_too_slow, 1);
    member.check_ordering();
}

/// A frame over the limit cannot be sent; dropping it alone would lose what it held while the
/// link looked healthy, so the link is closed and both sides see it broken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sending_a_frame_over_the_limit_breaks_the_link_instead_of_dropping_it_silently() {
    let mut member = Node::new(SECRET, HASH);
    let auth = ClusterAuth::new(SECRET, HASH).expect("secret");
    let endpoint = stranger_endpoint();
    let raw = within("dial", link::dial_raw(&endpoint, member.addr(), &auth))
        .await
        .expect("handshake");
    let link = member.expect_up(false).await;

    member.links.send(
        link,
        Bytes::from(vec![0u8; limits::LINK_FRAME_BYTES_MAX + 1]),
    );
    let (code, reason) = member.expect_down(link).await;
    assert_eq!(code, Some(LinkCloseCode::Internal), "{reason}");
    assert!(reason.contains("frame limit"), "{reason}");
    let err = within("close", raw.conn.closed()).await;
    assert_eq!(
        peer_close_code(&err),
        Some(LinkCloseCode::Internal),
        "{err}"
    );
    assert_eq!(member.links.stats().messages_too_large, 1);
    member.check_ordering();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_every_link_with_a_reason() {
    let mut a = Node::new(SECRET, HASH);
    let mut b = Node::new(SECRET, HASH);
    let mut c = Node::new(SECRET, HASH);
    let ab = a.links.dial(b.addr());
    let ac = a.links.dial(c.addr());
    a.expect_up_for(ab).await;
    a.expect_up_for(ac).await;
    let b_link = b.expect_up(false).await;
    let c_link = c.expect_up(false).await;

    within("shutdown", a.links.shutdown()).await;
    for (node, link) in [(&mut b, b_link), (&mut c, c_link)] {
        let (code, reason) = node.expect_down(link).await;
        assert_eq!(
            code,
            Some(LinkCloseCode::ShuttingDown),
            "neighbours learn that a shard went away on purpose: {reason}"
        );
    }
    for link in [ab, ac] {
        let (code, _) = a.expect_down(link).await;
        assert_eq!(code, Some(LinkCloseCode::ShuttingDown));
    }
    a.check_ordering();
    b.check_ordering();
    c.check_ordering();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_and_link_ports_refuse_each_others_protocol() {
    let mut member = Node::new(SECRET, HASH);
    let id = ServerIdentity::self_signed(&["localhost"]).expect("identity");
    let (server, mut server_events) = QuicServer::bind(loopback(), &id).expect("bind client port");

    // A bot pointed at a link port.
    let bot = quic::client_endpoint(&ClientTrust::InsecureSkipVerify).expect("client endpoint");
    let err = match within(
        "refused handshake",
        quic::connect(&bot, member.addr(), "localhost", b"hello"),
    )
    .await
    {
        Ok(_) => panic!("a client reached a link port"),
        Err(err) => err,
    };
    assert!(
        matches!(err, NetError::WrongProtocol(_)) && err.to_string().contains("ALPN"),
        "a client at a link port fails the TLS handshake, saying why: {err}"
    );

    // A link dialer pointed at a client port, through `ClusterLinks` and byte by byte.
    let dial = member.links.dial(server.local_addr());
    let (code, reason) = member.expect_failed(dial).await;
    assert_eq!(
        code, None,
        "no link close code: nothing link-level began: {reason}"
    );
    assert!(
        reason.contains("ALPN"),
        "a link dialed to a client port fails, saying why: {reason}"
    );
    let auth = ClusterAuth::new(SECRET, HASH).expect("secret");
    match within(
        "raw dial",
        link::dial_raw(&stranger_endpoint(), server.local_addr(), &auth),
    )
    .await
    {
        Ok(_) => panic!("a link dialer reached a client port"),
        Err(err) => assert!(
            matches!(err, link::HandshakeError::Net(NetError::WrongProtocol(_))),
            "{err}"
        ),
    }

    // Neither side's shard heard of the other protocol's connections.
    assert_eq!(member.links.stats().handshakes_refused, 1);
    eventually("the client port's failed handshakes counted", || {
        server.stats().handshakes_failed == 2
    })
    .await;
    member
        .assert_next_event_is_a_new_member("a client at a link port never reaches the shard")
        .await;
    let _client = within(
        "connect",
        quic::connect(&bot, server.local_addr(), "localhost", b"hello"),
    )
    .await
    .expect("the right protocol on the client port connects");
    assert!(server_events.wait(TIMEOUT).await, "no client event");
    let mut events = Vec::new();
    server_events.drain_into(1, &mut events);
    assert!(
        matches!(events.as_slice(), [NetEvent::Connected { .. }]),
        "the first event on the client port is the real client's, so no link dialer reached \
         the shard: {events:?}"
    );
    member.check_ordering();
    server.shutdown().await;
}
