//! Authenticated shard-to-shard links over QUIC.
//!
//! Shards of one cluster exchange shard messages (proxies today; handoffs next) over links. A
//! link is a QUIC connection carrying one bi-directional stream of length-prefixed frames, and
//! it is worth nothing until both ends have proven they belong to the same cluster: a process
//! without the cluster secret can neither join nor get a single shard message delivered.
//!
//! # What a link proves, and how
//!
//! Every shard of a cluster is given the same secret ([`ClusterAuth`], at least
//! `LINK_SECRET_BYTES_MIN` bytes) and has the same protocol hash (of the component registry,
//! the value clients send in `Hello`). Once TLS is up, both ends derive the same 32 bytes from
//! the TLS session with the keying-material exporter (RFC 5705/8446, label
//! `"zonescaler link v1"`), then:
//!
//! 1. the dialer opens the link stream and writes [`LinkHello`]: `version`, its protocol hash and
//!    `HMAC-SHA256(secret, 0 || exporter || protocol_hash_le)`;
//! 2. the acceptor checks the version, the proof (constant time, `ring::hmac::verify`) and then
//!    the protocol hash, and answers [`LinkWelcome`] with its own proof,
//!    `HMAC-SHA256(secret, 1 || exporter || its protocol_hash_le)`;
//! 3. the dialer checks that proof. Only then does either side report [`LinkEvent::Up`].
//!
//! Any failure closes the connection with a [`LinkCloseCode`] and a reason.
//!
//! **Why channel binding and no nonces.** The exporter is unique to one TLS session and known
//! only to its two ends. A relay in the middle runs two TLS sessions with two different
//! exporters, so a proof it forwards does not verify on the other side, and a proof recorded
//! from one link is worthless on any other. The role byte keeps the acceptor from reflecting
//! the dialer's own proof back. Freshness comes from the TLS session itself, so no nonce
//! exchange (and no extra round trip) is needed.
//!
//! **Why the dialer does not check the acceptor's certificate.** Knowing the secret is what
//! makes a shard a member; a certificate chain would prove a name, which is not the question.
//! The dialer therefore accepts any certificate (`ClientTrust::InsecureSkipVerify`, which still
//! checks the TLS handshake signature, so the session is bound to the key of the certificate
//! presented) and relies on the acceptor's [`LinkWelcome`] proof instead: an impostor holding a
//! valid certificate but not the secret fails at step 3, before the dialer sends anything. This
//! also means shards can keep using throw-away self-signed identities with no PKI to run.
//!
//! **Order of the acceptor's checks.** Version first (a future version may prove differently),
//! then the proof, then the protocol hash. The proof covers the hash the dialer *claims*, so a
//! member built from another registry gets the useful `protocol_mismatch`, while a stranger
//! always gets `not_a_member` whatever hash it sends.
//!
//! # Before the handshake completes
//!
//! Link endpoints speak their own protocol (ALPN `zs-link/1`, [`tls::ALPN_LINK`]), in both
//! directions, so a game client that reaches a link port by mistake fails at TLS with an error
//! naming the mix-up (and counts in [`LinkStats::handshakes_refused`]), and a link dialed to a
//! client port fails the same way instead of talking link frames to a client driver.
//!
//! Nothing reaches the shard: no `Up`, no `Message`. The acceptor reads exactly one small frame
//! (the hello, at most [`HANDSHAKE_FRAME_BYTES_MAX`]); datagrams are disabled on link
//! connections (a peer that sends one violates the transport parameters and quinn closes the
//! connection) and no second stream can be opened (stream limits of 1 on the acceptor, 0 on the
//! dialer). A peer that does not finish within the handshake timeout
//! (`LINK_HANDSHAKE_TIMEOUT_MS`, [`LinkOptions::handshake_timeout`]) is closed as
//! `handshake_timeout`; at most `LINK_HANDSHAKES_PENDING_MAX` strangers are in this phase at once.
//!
//! # After it
//!
//! Shard messages are frames on the link stream in both directions, ordered and reliable. A
//! length prefix over `LINK_FRAME_BYTES_MAX` closes the link as `bad_message` before anything
//! is allocated. Outbound frames go through a per-link queue bounded in frames and bytes
//! (`LINK_QUEUE_FRAMES_MAX`, `LINK_QUEUE_BYTES_MAX`) to one writer task; a link that lets it
//! overflow is closed as `too_slow`. Inbound frames wait for the shard within one budget of
//! `LINK_INBOX_BYTES_MAX` for all links: when it is spent the readers stop reading, and QUIC
//! flow control slows the senders down instead of this process buffering without bound.
//!
//! A polite close ([`ClusterLinks::close`]) loses nothing either way: the two ends exchange the
//! ends of their streams before the connection closes (why, and the one exception, at
//! `write_link`).
//!
//! # Events
//!
//! [`ClusterLinks`] is sync to drive from the shard's tick thread (like `QuicServer::dispatch`);
//! its events arrive on one bounded channel ([`LinkEvents`]) drained between ticks. Per link:
//! - a link that came up reports `Up` first and `Down` exactly once, last (both ends; the
//!   acceptor reports `Up` when it sends its welcome, so if the dialer gives up at that very
//!   moment the acceptor sees a short `Up`/`Down` the dialer never saw);
//! - a [`ClusterLinks::dial`] that never comes up reports `Failed` instead, exactly once and
//!   nothing else. It is a separate event, not a `Down`, so "this link was up and is gone" (its
//!   messages may have been lost in flight) never looks like "we never reached that shard";
//! - an incoming connection that does not prove membership reports nothing at all: it is
//!   logged and counted ([`LinkStats::handshakes_refused`]).
//!
//! Frames and bytes each way are counted for the whole endpoint ([`LinkStats`]), not per link:
//! metrics want the shard's link traffic, and per-link series would come and go with every
//! rebalance.
//!
//! The sans-IO half is the proof and the two handshake messages ([`ClusterAuth`],
//! [`LinkHello`], [`LinkWelcome`]): pure functions of the secret, the exporter bytes and the
//! received bytes, unit-tested below without a socket. The rest maps them onto quinn the way
//! [`crate::quic`] does for clients, sharing its framing and close handling.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use quinn::{ConnectionError, VarInt};
use ring::hmac;
use tokio::sync::mpsc::error::{TryRecvError, TrySendError};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::time::Instant;
use zonescaler_shared::codec::{self, DecodeError};
use zonescaler_shared::limits;

use crate::closing::{
    CLOSE_FLUSH_TIMEOUT, Closer, bump, close_endpoint, closed, count, lock, truncate_reason,
};
use crate::quic::{NetError, SHUTDOWN_TIMEOUT, read_frame_body, read_frame_len};
use crate::tls::{self, ClientTrust, ServerIdentity};

/// Version of the link handshake; part of [`LinkHello`] and of the exporter label.
pub const LINK_VERSION: u16 = 1;
/// TLS server name a dialer asks for. Nothing checks it (see the module docs); it only has to be
/// a valid DNS name.
pub const LINK_SERVER_NAME: &str = "zonescaler-link";
/// Bytes of a membership proof (one HMAC-SHA256 tag).
pub const PROOF_BYTES: usize = 32;
/// Largest handshake frame either side reads. A [`LinkHello`] encodes to well under this; a
/// stranger cannot make the acceptor allocate more before it has proven anything.
pub const HANDSHAKE_FRAME_BYTES_MAX: usize = 128;
/// Per-stream and per-connection flow-control window of a link. Links carry bulk shard traffic
/// between machines of one data centre, so the window is larger than a client's control stream
/// (1 MiB per round trip is over 1 GB/s at a 1 ms RTT); `LINKS_MAX` of them bound what peers can
/// make this process buffer to 256 MiB.
pub const LINK_STREAM_WINDOW_BYTES: u32 = 1024 * 1024;

/// Exporter label; it names the version so a future handshake derives different bytes.
const EXPORTER_LABEL: &[u8] = b"zonescaler link v1";
/// Reason given to peers when this process closes its links.
const SHUTDOWN_REASON: &str = "shard shutting down";

const _: () = assert!(HANDSHAKE_FRAME_BYTES_MAX <= limits::LINK_FRAME_BYTES_MAX);
const _: () = assert!(limits::LINK_SECRET_BYTES_MIN >= 16);

// ------------------------------------------------------------------------------------------
// The pure core: membership proofs and handshake messages.
// ------------------------------------------------------------------------------------------

/// Why a [`ClusterAuth`] could not be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClusterAuthError {
    /// The secret is short enough to guess.
    #[error(
        "the cluster secret is {len} bytes, but at least {min} are required: it alone proves that a \
         process belongs to the cluster, so use {min} or more random bytes"
    )]
    SecretTooShort { len: usize, min: usize },
}

/// What a shard proves membership with: the cluster secret (as an HMAC key) and the protocol
/// hash every member must share. The raw secret is not kept, and `Debug` never prints the key.
#[derive(Clone)]
pub struct ClusterAuth {
    key: hmac::Key,
    protocol_hash: u64,
}

impl fmt::Debug for ClusterAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterAuth")
            .field("secret", &"<redacted>")
            .field(
                "protocol_hash",
                &format_args!("{:016x}", self.protocol_hash),
            )
            .finish()
    }
}

/// Which end of a link computed a proof. Part of the proof, so the acceptor cannot answer the
/// dialer with the dialer's own proof.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Dialer = 0,
    Acceptor = 1,
}

/// Bytes both ends of one TLS session derive with the keying-material exporter.
type Exporter = [u8; 32];

impl ClusterAuth {
    /// Membership credentials from the cluster `secret` and this build's `protocol_hash`.
    /// Refuses secrets shorter than `LINK_SECRET_BYTES_MIN`.
    pub fn new(secret: &[u8], protocol_hash: u64) -> Result<Self, ClusterAuthError> {
        if secret.len() < limits::LINK_SECRET_BYTES_MIN {
            return Err(ClusterAuthError::SecretTooShort {
                len: secret.len(),
                min: limits::LINK_SECRET_BYTES_MIN,
            });
        }
        Ok(Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            protocol_hash,
        })
    }

    /// The protocol hash this shard requires of its peers.
    pub fn protocol_hash(&self) -> u64 {
        self.protocol_hash
    }

    /// `role || exporter || protocol_hash_le`, the bytes a proof signs.
    fn proof_input(role: Role, exporter: &Exporter, protocol_hash: u64) -> [u8; 41] {
        let mut input = [0u8; 41];
        input[0] = role as u8;
        input[1..33].copy_from_slice(exporter);
        input[33..].copy_from_slice(&protocol_hash.to_le_bytes());
        input
    }

    fn proof(&self, role: Role, exporter: &Exporter) -> [u8; PROOF_BYTES] {
        let tag = hmac::sign(
            &self.key,
            &Self::proof_input(role, exporter, self.protocol_hash),
        );
        let mut proof = [0u8; PROOF_BYTES];
        proof.copy_from_slice(tag.as_ref());
        proof
    }

    /// Whether `proof` is `role`'s proof for `exporter` and `protocol_hash` under our secret, in
    /// constant time.
    fn verifies(
        &self,
        role: Role,
        exporter: &Exporter,
        protocol_hash: u64,
        proof: &[u8; PROOF_BYTES],
    ) -> bool {
        let input = Self::proof_input(role, exporter, protocol_hash);
        hmac::verify(&self.key, &input, proof).is_ok()
    }

    /// The dialer's first message on the TLS session that derived `exporter`.
    fn hello(&self, exporter: &Exporter) -> LinkHello {
        LinkHello {
            version: LINK_VERSION,
            protocol_hash: self.protocol_hash,
            proof: self.proof(Role::Dialer, exporter),
        }
    }

    /// The acceptor's check of a received hello frame.
    fn check_hello(&self, exporter: &Exporter, body: &[u8]) -> Result<(), Refusal> {
        let hello: LinkHello = decode_handshake(body, "LinkHello")?;
        if hello.version != LINK_VERSION {
            return Err(Refusal::new(
                LinkCloseCode::WrongVersion,
                format!(
                    "link version {}, this shard speaks {LINK_VERSION}",
                    hello.version
                ),
            ));
        }
        if !self.verifies(Role::Dialer, exporter, hello.protocol_hash, &hello.proof) {
            return Err(not_a_member("not a member"));
        }
        if hello.protocol_hash != self.protocol_hash {
            return Err(Refusal::new(
                LinkCloseCode::ProtocolMismatch,
                format!(
                    "protocol hash {:016x} differs from this shard's {:016x}",
                    hello.protocol_hash, self.protocol_hash
                ),
            ));
        }
        Ok(())
    }

    /// The acceptor's answer once the hello checked out.
    fn welcome(&self, exporter: &Exporter) -> LinkWelcome {
        LinkWelcome {
            proof: self.proof(Role::Acceptor, exporter),
        }
    }

    /// The dialer's check of the welcome frame. The acceptor's proof covers its own protocol
    /// hash, so checking it against ours also confirms the hashes agree.
    fn check_welcome(&self, exporter: &Exporter, body: &[u8]) -> Result<(), Refusal> {
        let welcome: LinkWelcome = decode_handshake(body, "LinkWelcome")?;
        if !self.verifies(Role::Acceptor, exporter, self.protocol_hash, &welcome.proof) {
            return Err(not_a_member("the acceptor is not a member"));
        }
        Ok(())
    }
}

/// `body` as one handshake message, or a `bad_message` refusal naming `what` was expected.
fn decode_handshake<T: bitcode::DecodeOwned>(body: &[u8], what: &str) -> Result<T, Refusal> {
    bitcode::decode(body).map_err(|_| {
        Refusal::new(
            LinkCloseCode::BadMessage,
            format!("a {}-byte frame is not a {what}", body.len()),
        )
    })
}

/// The refusal for a proof that does not verify; `who` starts the sentence.
fn not_a_member(who: &str) -> Refusal {
    Refusal::new(
        LinkCloseCode::NotAMember,
        format!("{who} of this cluster: its membership proof does not match the cluster secret"),
    )
}

/// The dialer's first frame on a link.
#[derive(Clone, Debug, PartialEq, Eq, bitcode::Encode, bitcode::Decode)]
pub struct LinkHello {
    /// [`LINK_VERSION`].
    pub version: u16,
    /// The dialer's protocol hash.
    pub protocol_hash: u64,
    /// `HMAC-SHA256(secret, 0 || exporter || protocol_hash_le)`.
    pub proof: [u8; PROOF_BYTES],
}

/// The acceptor's answer to a valid [`LinkHello`].
#[derive(Clone, Debug, PartialEq, Eq, bitcode::Encode, bitcode::Decode)]
pub struct LinkWelcome {
    /// `HMAC-SHA256(secret, 1 || exporter || protocol_hash_le)`.
    pub proof: [u8; PROOF_BYTES],
}

impl LinkHello {
    /// The frame body (bitcode).
    pub fn encode(&self) -> Vec<u8> {
        bitcode::encode(self)
    }

    /// `None` unless `bytes` is exactly one encoded hello.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        bitcode::decode(bytes).ok()
    }
}

impl LinkWelcome {
    /// The frame body (bitcode).
    pub fn encode(&self) -> Vec<u8> {
        bitcode::encode(self)
    }

    /// `None` unless `bytes` is exactly one encoded welcome.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        bitcode::decode(bytes).ok()
    }
}

/// Why a link was closed on purpose, as a QUIC application close code. The codes are in the
/// 0x100 range so they never read as a client connection's `ErrorCode` (1–8) in a packet trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LinkCloseCode {
    /// A shard closed the link ([`ClusterLinks::close`]).
    Closed,
    /// The peer's membership proof did not verify: it does not hold the cluster secret (or the
    /// proof was relayed from another session).
    NotAMember,
    /// A member, but built with another protocol registry.
    ProtocolMismatch,
    /// The peer speaks another link handshake version.
    WrongVersion,
    /// Bytes that are not what the link protocol allows at that point (a hello that does not
    /// decode, an oversize frame, a stream ended mid-frame).
    BadMessage,
    /// The handshake did not finish within the handshake timeout.
    HandshakeTimeout,
    /// The peer did not read fast enough and the outbound queue overflowed.
    TooSlow,
    /// The shard is shutting down.
    ShuttingDown,
    /// This side already holds `LINKS_MAX` links.
    Full,
    /// A driver task failed; a bug.
    Internal,
}

impl LinkCloseCode {
    const ALL: [Self; 10] = [
        Self::Closed,
        Self::NotAMember,
        Self::ProtocolMismatch,
        Self::WrongVersion,
        Self::BadMessage,
        Self::HandshakeTimeout,
        Self::TooSlow,
        Self::ShuttingDown,
        Self::Full,
        Self::Internal,
    ];

    /// The QUIC application close code.
    pub const fn close_code(self) -> u32 {
        match self {
            Self::Closed => 0x100,
            Self::NotAMember => 0x101,
            Self::ProtocolMismatch => 0x102,
            Self::WrongVersion => 0x103,
            Self::BadMessage => 0x104,
            Self::HandshakeTimeout => 0x105,
            Self::TooSlow => 0x106,
            Self::ShuttingDown => 0x107,
            Self::Full => 0x108,
            Self::Internal => 0x109,
        }
    }

    /// The reason behind a QUIC application close code, if it is a link code.
    pub fn from_close_code(code: u64) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|c| u64::from(c.close_code()) == code)
    }

    /// Snake-case name used in logs and event reasons.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::NotAMember => "not_a_member",
            Self::ProtocolMismatch => "protocol_mismatch",
            Self::WrongVersion => "wrong_version",
            Self::BadMessage => "bad_message",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::TooSlow => "too_slow",
            Self::ShuttingDown => "shutting_down",
            Self::Full => "full",
            Self::Internal => "internal",
        }
    }
}

impl fmt::Display for LinkCloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// This side's reason to end a link during the handshake.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct Refusal {
    pub code: LinkCloseCode,
    pub detail: String,
}

impl Refusal {
    fn new(code: LinkCloseCode, detail: String) -> Self {
        Self { code, detail }
    }
}

/// Why a link handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// This side refused the peer and closed the connection with the refusal's code.
    #[error("refused the peer: {0}")]
    Refused(Refusal),
    /// The connection failed or the peer closed it (with its own code and reason, when it
    /// refused us: see [`NetError::close_code`]).
    #[error(transparent)]
    Net(#[from] NetError),
}

impl HandshakeError {
    /// The link close code behind the failure, whichever side closed on purpose.
    pub fn code(&self) -> Option<LinkCloseCode> {
        match self {
            Self::Refused(refusal) => Some(refusal.code),
            Self::Net(err) => err.close_code().and_then(LinkCloseCode::from_close_code),
        }
    }

    /// A sentence for events and logs, naming who ended the link and why.
    fn describe(&self) -> String {
        match self {
            Self::Refused(refusal) => closed_locally(refusal.code, &refusal.detail),
            Self::Net(NetError::PeerClosed { code, reason }) => closed_by_peer(*code, reason),
            Self::Net(err) => err.to_string(),
        }
    }
}

fn closed_locally(code: LinkCloseCode, detail: &str) -> String {
    format!("closed locally: {code}: {detail}")
}

fn closed_by_peer(code: u64, reason: &str) -> String {
    match LinkCloseCode::from_close_code(code) {
        Some(code) => format!("closed by peer: {code}: {reason}"),
        None => format!("closed by peer with code {code}: {reason}"),
    }
}

/// The code and sentence for a connection that ended without us closing it.
fn describe_end(err: &ConnectionError) -> (Option<LinkCloseCode>, String) {
    match err {
        ConnectionError::ApplicationClosed(close) => {
            let code = close.error_code.into_inner();
            let reason = String::from_utf8_lossy(&close.reason);
            (
                LinkCloseCode::from_close_code(code),
                closed_by_peer(code, &reason),
            )
        }
        other => (None, other.to_string()),
    }
}

// ------------------------------------------------------------------------------------------
// The handshake on a QUIC connection.
// ------------------------------------------------------------------------------------------

/// Transport settings of link connections: idle timeout and keep-alive as for clients, no
/// datagrams, one stream opened by the dialer, and [`LINK_STREAM_WINDOW_BYTES`] windows.
fn link_transport_config(accepts_the_stream: bool) -> quinn::TransportConfig {
    let window = VarInt::from_u32(LINK_STREAM_WINDOW_BYTES);
    let mut t = tls::transport_config();
    // `None` tells the peer in the transport parameters that datagrams are not accepted, so a
    // peer sending one breaks the transport contract and quinn closes the connection itself.
    t.datagram_receive_buffer_size(None)
        .max_concurrent_bidi_streams(VarInt::from_u32(u32::from(accepts_the_stream)))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .stream_receive_window(window)
        .receive_window(window)
        .send_window(u64::from(LINK_STREAM_WINDOW_BYTES));
    t
}

/// The acceptor's QUIC configuration: `identity` as its certificate, [`tls::ALPN_LINK`], link
/// transport settings. Public so tools and tests can stand up an endpoint that speaks the link
/// protocol without being a [`ClusterLinks`].
pub fn link_server_config(identity: &ServerIdentity) -> Result<quinn::ServerConfig, NetError> {
    let mut config = tls::server_config_for(identity, tls::ALPN_LINK)?;
    config.transport_config(Arc::new(link_transport_config(true)));
    Ok(config)
}

/// The dialer's QUIC configuration: any certificate, because the acceptor proves membership
/// with its [`LinkWelcome`] instead (see the module docs), [`tls::ALPN_LINK`], and link transport
/// settings.
pub fn link_client_config() -> Result<quinn::ClientConfig, NetError> {
    let mut config = tls::client_config_for(&ClientTrust::InsecureSkipVerify, tls::ALPN_LINK)?;
    config.transport_config(Arc::new(link_transport_config(false)));
    Ok(config)
}

/// The exporter bytes of `conn`'s TLS session.
fn exporter(conn: &quinn::Connection) -> Result<Exporter, Refusal> {
    let mut out = [0u8; 32];
    conn.export_keying_material(&mut out, EXPORTER_LABEL, b"")
        .map_err(|err| {
            Refusal::new(
                LinkCloseCode::Internal,
                format!("TLS keying material unavailable: {err:?}"),
            )
        })?;
    Ok(out)
}

/// Close `conn` for `refusal` and return it as the handshake's error.
fn refuse(conn: &quinn::Connection, refusal: Refusal) -> HandshakeError {
    conn.close(
        VarInt::from_u32(refusal.code.close_code()),
        truncate_reason(&refusal.detail).as_bytes(),
    );
    HandshakeError::Refused(refusal)
}

/// Read one handshake frame (at most [`HANDSHAKE_FRAME_BYTES_MAX`]). Anything but a frame or a
/// lost connection is a refusal: a peer that ends the stream or sends an oversize prefix here
/// is not speaking the link protocol.
async fn read_handshake_frame(
    conn: &quinn::Connection,
    recv: &mut quinn::RecvStream,
    what: &str,
) -> Result<Vec<u8>, HandshakeError> {
    let frame = async {
        let len = read_frame_len(recv, HANDSHAKE_FRAME_BYTES_MAX).await?;
        read_frame_body(recv, len).await
    };
    match frame.await {
        Ok(body) => Ok(body),
        Err(err) if err.is_connection_lost() => Err(err.into()),
        Err(err) => Err(refuse(
            conn,
            Refusal::new(LinkCloseCode::BadMessage, format!("no {what}: {err}")),
        )),
    }
}

/// Write one handshake frame.
async fn write_handshake_frame(
    send: &mut quinn::SendStream,
    body: &[u8],
) -> Result<(), HandshakeError> {
    send.write_all(&codec::frame(body))
        .await
        .map_err(|err| HandshakeError::Net(err.into()))
}

/// The dialer's half of the handshake on an established connection: open the link stream, send
/// our proof, check the acceptor's. Closes `conn` on refusal.
async fn dialer_handshake(
    conn: &quinn::Connection,
    auth: &ClusterAuth,
) -> Result<(quinn::SendStream, quinn::RecvStream), HandshakeError> {
    let exporter = exporter(conn).map_err(|r| refuse(conn, r))?;
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|err| HandshakeError::Net(err.into()))?;
    write_handshake_frame(&mut send, &auth.hello(&exporter).encode()).await?;
    let body = read_handshake_frame(conn, &mut recv, "LinkWelcome").await?;
    auth.check_welcome(&exporter, &body)
        .map_err(|r| refuse(conn, r))?;
    Ok((send, recv))
}

/// The acceptor's half: take the dialer's stream, check its hello, answer with our proof.
/// Closes `conn` on refusal.
async fn acceptor_handshake(
    conn: &quinn::Connection,
    auth: &ClusterAuth,
) -> Result<(quinn::SendStream, quinn::RecvStream), HandshakeError> {
    let exporter = exporter(conn).map_err(|r| refuse(conn, r))?;
    let (mut send, mut recv) = conn
        .accept_bi()
        .await
        .map_err(|err| HandshakeError::Net(err.into()))?;
    let body = read_handshake_frame(conn, &mut recv, "LinkHello").await?;
    auth.check_hello(&exporter, &body)
        .map_err(|r| refuse(conn, r))?;
    write_handshake_frame(&mut send, &auth.welcome(&exporter).encode()).await?;
    Ok((send, recv))
}

/// Run `handshake` on `conn` until `deadline` or until `cancel` fires, closing the connection
/// with `handshake_timeout` or the cancel's reason if either comes first.
async fn handshake_until<T>(
    conn: &quinn::Connection,
    deadline: Instant,
    cancel: Option<&DialCancel>,
    handshake: impl Future<Output = Result<T, HandshakeError>>,
) -> Result<T, HandshakeError> {
    tokio::select! {
        result = handshake => result,
        () = tokio::time::sleep_until(deadline) => Err(refuse(
            conn,
            Refusal::new(
                LinkCloseCode::HandshakeTimeout,
                "no membership proof within the handshake timeout".to_owned(),
            ),
        )),
        refusal = cancelled(cancel) => Err(refuse(conn, refusal)),
    }
}

/// A link's QUIC parts after a successful dialer handshake: what [`dial_raw`] returns.
pub struct RawLink {
    /// The connection.
    pub conn: quinn::Connection,
    /// Our half of the link stream; frames are `u32` LE length and body.
    pub send: quinn::SendStream,
    /// The acceptor's half of the link stream.
    pub recv: quinn::RecvStream,
}

/// Dial `addr` from any quinn `endpoint` and run the dialer's handshake, without a
/// [`ClusterLinks`]: for tools and tests that need to speak the link protocol byte by byte.
/// [`ClusterLinks::dial`] runs exactly this, under its timeout.
pub async fn dial_raw(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    auth: &ClusterAuth,
) -> Result<RawLink, HandshakeError> {
    let conn = connect(endpoint, &link_client_config()?, addr).await?;
    let (send, recv) = dialer_handshake(&conn, auth).await?;
    Ok(RawLink { conn, send, recv })
}

async fn connect(
    endpoint: &quinn::Endpoint,
    config: &quinn::ClientConfig,
    addr: SocketAddr,
) -> Result<quinn::Connection, NetError> {
    Ok(endpoint
        .connect_with(config.clone(), addr, LINK_SERVER_NAME)?
        .await?)
}

// ------------------------------------------------------------------------------------------
// The driver.
// ------------------------------------------------------------------------------------------

/// One link of this shard, as the shard names it. Dialed and accepted links share one sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkId(pub u64);

impl fmt::Display for LinkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "link {}", self.0)
    }
}

/// What happened on the shard's links (see the module docs for the per-link order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// Both sides proved membership and agree on the protocol; [`ClusterLinks::send`] works
    /// from now on. `dialed` says whether this shard dialed it.
    Up {
        link: LinkId,
        remote: SocketAddr,
        dialed: bool,
    },
    /// One frame from the peer, in the order it was sent.
    Message { link: LinkId, bytes: Bytes },
    /// A link that was `Up` ended; its last event. `code` is the close code when either side
    /// closed it on purpose, `None` when it was lost (idle timeout, reset).
    Down {
        link: LinkId,
        code: Option<LinkCloseCode>,
        reason: String,
    },
    /// A [`ClusterLinks::dial`] that never came up (unreachable, refused, not a member, timed
    /// out, closed before it was up); its only event.
    Failed {
        link: LinkId,
        code: Option<LinkCloseCode>,
        reason: String,
    },
}

impl LinkEvent {
    /// The link the event is about.
    pub fn link(&self) -> LinkId {
        match self {
            Self::Up { link, .. }
            | Self::Message { link, .. }
            | Self::Down { link, .. }
            | Self::Failed { link, .. } => *link,
        }
    }
}

/// Settings of a [`ClusterLinks`] that tests may want to change.
#[derive(Clone, Debug)]
pub struct LinkOptions {
    /// How long a link has to complete its handshake, from `dial` or from the first packet of an
    /// incoming one. Defaults to `LINK_HANDSHAKE_TIMEOUT_MS`.
    pub handshake_timeout: Duration,
    /// Test only: a switch that cuts the endpoint off the network on command
    /// ([`crate::fault`]). `None` (the default): quinn's own socket, nothing in its path.
    pub partition: Option<crate::fault::PartitionSwitch>,
}

impl Default for LinkOptions {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_millis(limits::LINK_HANDSHAKE_TIMEOUT_MS),
            partition: None,
        }
    }
}

/// Counters of what the link driver carried, refused or dropped, over the whole endpoint (every
/// link, dialed and accepted), for the shard to export as metrics; all only grow. Frames are shard
/// messages after the handshake; bytes are their bodies, without the length prefix or QUIC's own
/// overhead.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Frames read from peers (each one a [`LinkEvent::Message`]).
    pub frames_in: u64,
    /// Bytes of [`Self::frames_in`].
    pub frame_bytes_in: u64,
    /// Frames written to peers' link streams.
    pub frames_out: u64,
    /// Bytes of [`Self::frames_out`].
    pub frame_bytes_out: u64,
    /// Incoming connections that did not become links: failed TLS, bad or missing hello, wrong
    /// proof, version or protocol hash, handshake timeout.
    pub handshakes_refused: u64,
    /// Incoming connections refused outright at `LINKS_MAX` or `LINK_HANDSHAKES_PENDING_MAX`.
    pub connections_refused: u64,
    /// Links closed because their outbound queue overflowed.
    pub closed_too_slow: u64,
    /// Links closed for a bad frame after the handshake.
    pub closed_bad_message: u64,
    /// `send`s that queued nothing because the link was not up (still dialing, down, unknown).
    pub sends_dropped: u64,
    /// `send`s refused because the message exceeds `LINK_FRAME_BYTES_MAX`.
    pub messages_too_large: u64,
}

#[derive(Debug, Default)]
struct Counters {
    frames_in: AtomicU64,
    frame_bytes_in: AtomicU64,
    frames_out: AtomicU64,
    frame_bytes_out: AtomicU64,
    handshakes_refused: AtomicU64,
    connections_refused: AtomicU64,
    closed_too_slow: AtomicU64,
    closed_bad_message: AtomicU64,
    sends_dropped: AtomicU64,
    messages_too_large: AtomicU64,
}

/// The shard's request to end a dial that is not up yet.
#[derive(Default)]
struct DialCancel {
    refusal: Mutex<Option<Refusal>>,
    notify: Notify,
}

impl DialCancel {
    fn cancel(&self, refusal: Refusal) {
        lock(&self.refusal).get_or_insert(refusal);
        self.notify.notify_one();
    }

    fn refusal(&self) -> Option<Refusal> {
        lock(&self.refusal).clone()
    }
}

/// Resolves with the refusal once `cancel` fires; never without one.
async fn cancelled(cancel: Option<&DialCancel>) -> Refusal {
    let Some(cancel) = cancel else {
        return std::future::pending().await;
    };
    loop {
        // Created before the check so a cancel in between still wakes us.
        let notified = cancel.notify.notified();
        if let Some(refusal) = cancel.refusal() {
            return refusal;
        }
        notified.await;
    }
}

/// What the shard queued for one link's writer task.
#[derive(Debug)]
enum Outbound {
    Frame(Bytes),
    /// Marks where in the queue the shard asked to close; the reason is in the [`Closer`].
    Close,
    /// The peer finished its stream to close the link: finish ours after what is queued.
    Finish,
}

/// One link that is up, as `send` and `close` see it.
struct LinkEntry {
    id: LinkId,
    closer: Closer,
    outbox: mpsc::Sender<Outbound>,
    /// Bytes in `outbox`, bounded by `LINK_QUEUE_BYTES_MAX`.
    queued_bytes: AtomicUsize,
    /// Our side of the link stream is finished (see [`write_link`] on closing politely).
    finished: AtomicBool,
}

impl LinkEntry {
    /// Close now with `code`; see [`Closer::close`]: only the first close counts.
    fn close(&self, code: LinkCloseCode, detail: &str) -> bool {
        self.closer
            .close(code.close_code(), detail, closed_locally(code, detail))
    }

    fn close_counted(&self, counter: &AtomicU64, code: LinkCloseCode, detail: &str) {
        if self.close(code, detail) {
            let n = bump(counter);
            tracing::warn!(
                link = self.id.0,
                total = n,
                "closing link: {code}: {detail}"
            );
        }
    }
}

/// A link slot: a dial in progress, or a link that is up.
enum Slot {
    Dialing(Arc<DialCancel>),
    Up(Arc<LinkEntry>),
}

/// State shared by the handle and every link task.
struct Shared {
    auth: ClusterAuth,
    options: LinkOptions,
    client_config: quinn::ClientConfig,
    events: mpsc::Sender<LinkEvent>,
    /// Bytes of received messages not yet handed to the shard, `LINK_INBOX_BYTES_MAX` in all.
    inbox: Arc<Semaphore>,
    links: Mutex<HashMap<LinkId, Slot>>,
    /// Incoming connections still in their handshake.
    pending_accepts: AtomicUsize,
    next_link: AtomicU64,
    counters: Counters,
}

impl Shared {
    fn next_id(&self) -> LinkId {
        LinkId(self.next_link.fetch_add(1, Ordering::Relaxed))
    }

    fn up(&self, link: LinkId) -> Option<Arc<LinkEntry>> {
        match lock(&self.links).get(&link) {
            Some(Slot::Up(entry)) => Some(entry.clone()),
            _ => None,
        }
    }
}

/// Holds one of the `LINK_HANDSHAKES_PENDING_MAX` places of incoming handshakes.
struct PendingAccept(Arc<Shared>);

impl PendingAccept {
    fn try_new(shared: &Arc<Shared>) -> Option<Self> {
        shared
            .pending_accepts
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limits::LINK_HANDSHAKES_PENDING_MAX).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(shared.clone()))
    }
}

impl Drop for PendingAccept {
    fn drop(&mut self) {
        self.0.pending_accepts.fetch_sub(1, Ordering::AcqRel);
    }
}

/// This shard's links: one UDP endpoint that accepts links from other members and dials them.
/// Created inside a tokio runtime (its tasks live there); every other method is sync and meant
/// for the shard's tick thread.
pub struct ClusterLinks {
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    runtime: tokio::runtime::Handle,
    shared: Arc<Shared>,
}

/// Every [`LinkEvent`] of every link, in one bounded channel the shard drains between ticks.
pub struct LinkEvents {
    rx: mpsc::Receiver<LinkEvent>,
    inbox: Arc<Semaphore>,
}

impl ClusterLinks {
    /// Bind `listen`, presenting `identity` to dialers, proving membership with `auth`, with
    /// default [`LinkOptions`]. Fails with [`NetError::NoRuntime`] outside a tokio runtime.
    pub fn bind(
        listen: SocketAddr,
        identity: &ServerIdentity,
        auth: ClusterAuth,
    ) -> Result<(ClusterLinks, LinkEvents), NetError> {
        Self::bind_with(listen, identity, auth, LinkOptions::default())
    }

    /// [`Self::bind`] with explicit options.
    pub fn bind_with(
        listen: SocketAddr,
        identity: &ServerIdentity,
        auth: ClusterAuth,
        options: LinkOptions,
    ) -> Result<(ClusterLinks, LinkEvents), NetError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| NetError::NoRuntime)?;
        let server_config = link_server_config(identity)?;
        let client_config = link_client_config()?;
        let endpoint = match &options.partition {
            Some(switch) => {
                crate::udp::endpoint_with_switch(listen, Some(server_config), switch.clone())?
            }
            None => crate::udp::endpoint(listen, Some(server_config))?,
        };
        let local_addr = endpoint.local_addr().map_err(|source| NetError::Bind {
            addr: listen,
            source,
        })?;
        let (tx, rx) = mpsc::channel(limits::LINK_EVENTS_MAX);
        let inbox = Arc::new(Semaphore::new(limits::LINK_INBOX_BYTES_MAX));
        let shared = Arc::new(Shared {
            auth,
            options,
            client_config,
            events: tx,
            inbox: inbox.clone(),
            links: Mutex::new(HashMap::new()),
            pending_accepts: AtomicUsize::new(0),
            next_link: AtomicU64::new(1),
            counters: Counters::default(),
        });
        runtime.spawn(accept_loop(endpoint.clone(), shared.clone()));
        tracing::info!(%local_addr, "shard links listening");
        Ok((
            ClusterLinks {
                endpoint,
                local_addr,
                runtime,
                shared,
            },
            LinkEvents { rx, inbox },
        ))
    }

    /// The address the endpoint is bound to (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Start dialing the shard at `addr`. Returns at once; the outcome arrives as
    /// [`LinkEvent::Up`] (`dialed: true`) or [`LinkEvent::Failed`] for the returned id.
    /// Dialing a shard that also dials us gives two links; which to keep is the caller's choice.
    pub fn dial(&self, addr: SocketAddr) -> LinkId {
        let id = self.shared.next_id();
        let cancel = Arc::new(DialCancel::default());
        let admitted = {
            let mut links = lock(&self.shared.links);
            let admitted = links.len() < limits::LINKS_MAX;
            if admitted {
                links.insert(id, Slot::Dialing(cancel.clone()));
            }
            admitted
        };
        if admitted {
            self.runtime.spawn(dial_link(
                self.shared.clone(),
                self.endpoint.clone(),
                id,
                addr,
                cancel,
            ));
        } else {
            let shared = self.shared.clone();
            self.runtime.spawn(async move {
                let reason = format!("not dialing {addr}: already {} links", limits::LINKS_MAX);
                tracing::warn!(link = id.0, "{reason}");
                let _ = shared
                    .events
                    .send(LinkEvent::Failed {
                        link: id,
                        code: Some(LinkCloseCode::Full),
                        reason,
                    })
                    .await;
            });
        }
        id
    }

    /// Queue `bytes` as one frame to `link`. Never blocks: a link that is not up is a no-op
    /// (counted: normal right after a `Down`), a message over `LINK_FRAME_BYTES_MAX` is refused
    /// (counted and logged: the peer would close the link for it), and a link whose queue is
    /// full is closed as `too_slow`.
    pub fn send(&self, link: LinkId, bytes: Bytes) {
        let counters = &self.shared.counters;
        let Some(entry) = self.shared.up(link) else {
            bump(&counters.sends_dropped);
            tracing::trace!(link = link.0, "send to a link that is not up");
            return;
        };
        let len = bytes.len();
        if len > limits::LINK_FRAME_BYTES_MAX {
            // A sender's bug (batches are split to fit). Dropping the frame and carrying on would
            // lose whatever it held (a handoff answer, proxy updates) while the link looked
            // healthy; closing the link makes the loss visible to both sides as a broken link.
            let n = bump(&counters.messages_too_large);
            tracing::error!(
                link = link.0,
                len,
                total = n,
                "link frame over the frame limit: closing the link"
            );
            entry.close(LinkCloseCode::Internal, "a frame over the frame limit");
            return;
        }
        let queued = entry.queued_bytes.fetch_add(len, Ordering::AcqRel) + len;
        if queued > limits::LINK_QUEUE_BYTES_MAX {
            entry.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            entry.close_counted(
                &counters.closed_too_slow,
                LinkCloseCode::TooSlow,
                "too slow: link queue bytes full",
            );
            return;
        }
        match entry.outbox.try_send(Outbound::Frame(bytes)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                entry.queued_bytes.fetch_sub(len, Ordering::AcqRel);
                entry.close_counted(
                    &counters.closed_too_slow,
                    LinkCloseCode::TooSlow,
                    "too slow: link queue frames full",
                );
            }
            // The writer is gone, so the link is closing already.
            Err(TrySendError::Closed(_)) => {
                entry.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            }
        }
    }

    /// Close `link` with `reason`, politely: the peer's shard gets every frame queued here
    /// before this call, and this shard every frame the peer had queued, before both report
    /// `Down` (see `write_link`; after `CLOSE_FLUSH_TIMEOUT` the link closes regardless). A
    /// dial that is not up yet is abandoned (it reports `Failed`). Unknown or already closing
    /// links are ignored.
    pub fn close(&self, link: LinkId, reason: &str) {
        let slot = match lock(&self.shared.links).get(&link) {
            Some(Slot::Dialing(cancel)) => Slot::Dialing(cancel.clone()),
            Some(Slot::Up(entry)) => Slot::Up(entry.clone()),
            None => return,
        };
        match slot {
            Slot::Dialing(cancel) => {
                cancel.cancel(Refusal::new(LinkCloseCode::Closed, reason.to_owned()))
            }
            Slot::Up(entry) => {
                let code = LinkCloseCode::Closed;
                let log_reason = closed_locally(code, reason);
                if !entry
                    .closer
                    .request(code.close_code(), reason.to_owned(), log_reason)
                {
                    return; // already closing as asked the first time
                }
                if entry.outbox.try_send(Outbound::Close).is_err() {
                    // Queue full (the peer is too slow to get what is queued anyway) or the
                    // writer is gone: close right away.
                    entry.closer.close_as_requested();
                }
            }
        }
    }

    /// Links currently up (`Up` sent, `Down` not yet).
    pub fn links(&self) -> usize {
        lock(&self.shared.links)
            .values()
            .filter(|slot| matches!(slot, Slot::Up(_)))
            .count()
    }

    /// Snapshot of the counters.
    pub fn stats(&self) -> LinkStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        LinkStats {
            frames_in: get(&c.frames_in),
            frame_bytes_in: get(&c.frame_bytes_in),
            frames_out: get(&c.frames_out),
            frame_bytes_out: get(&c.frame_bytes_out),
            handshakes_refused: get(&c.handshakes_refused),
            connections_refused: get(&c.connections_refused),
            closed_too_slow: get(&c.closed_too_slow),
            closed_bad_message: get(&c.closed_bad_message),
            sends_dropped: get(&c.sends_dropped),
            messages_too_large: get(&c.messages_too_large),
        }
    }

    /// Close every link and dial now (`shutting_down`, without waiting for queued frames) and
    /// the endpoint, then wait up to `SHUTDOWN_TIMEOUT` for the closes to reach the peers. Each
    /// link still reports its `Down` (or `Failed`) if the events are being drained.
    pub async fn shutdown(&self) {
        let slots: Vec<Slot> = lock(&self.shared.links)
            .values()
            .map(|slot| match slot {
                Slot::Dialing(cancel) => Slot::Dialing(cancel.clone()),
                Slot::Up(entry) => Slot::Up(entry.clone()),
            })
            .collect();
        let code = LinkCloseCode::ShuttingDown;
        for slot in slots {
            match slot {
                Slot::Dialing(cancel) => {
                    cancel.cancel(Refusal::new(code, SHUTDOWN_REASON.to_owned()))
                }
                Slot::Up(entry) => {
                    entry.close(code, SHUTDOWN_REASON);
                }
            }
        }
        close_endpoint(
            &self.endpoint,
            code.close_code(),
            SHUTDOWN_REASON,
            SHUTDOWN_TIMEOUT,
        )
        .await;
    }
}

impl Drop for ClusterLinks {
    /// The accept loop holds its own endpoint handle, so without this dropped links would keep
    /// accepting peers nobody can answer.
    fn drop(&mut self) {
        self.endpoint.close(
            VarInt::from_u32(LinkCloseCode::ShuttingDown.close_code()),
            SHUTDOWN_REASON.as_bytes(),
        );
    }
}

impl LinkEvents {
    /// Move up to `max` pending events into `out` without blocking; returns how many.
    pub fn drain_into(&mut self, max: usize, out: &mut Vec<LinkEvent>) -> usize {
        let mut n = 0;
        while n < max {
            match self.rx.try_recv() {
                Ok(event) => {
                    self.release(&event);
                    out.push(event);
                    n += 1;
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        n
    }

    /// The next event; `None` once the links and all their tasks are gone.
    pub async fn recv(&mut self) -> Option<LinkEvent> {
        let event = self.rx.recv().await?;
        self.release(&event);
        Some(event)
    }

    /// A message handed to the shard no longer counts against `LINK_INBOX_BYTES_MAX`.
    fn release(&self, event: &LinkEvent) {
        if let LinkEvent::Message { bytes, .. } = event {
            self.inbox.add_permits(bytes.len());
        }
    }
}

impl Drop for LinkEvents {
    /// Nobody will hand messages out any more: stop readers waiting for inbox room.
    fn drop(&mut self) {
        self.inbox.close();
    }
}

async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    while let Some(incoming) = endpoint.accept().await {
        let full = lock(&shared.links).len() >= limits::LINKS_MAX;
        let pending = if full {
            None
        } else {
            PendingAccept::try_new(&shared)
        };
        let Some(pending) = pending else {
            let n = bump(&shared.counters.connections_refused);
            if n.is_power_of_two() {
                let remote = incoming.remote_address();
                tracing::warn!(%remote, total = n, "refusing link: link or handshake limit reached");
            }
            incoming.refuse();
            continue;
        };
        // Each handshake on its own task, so a slow one never delays the next peer.
        tokio::spawn(accept_link(shared.clone(), incoming, pending));
    }
    tracing::debug!("link accept loop ended");
}

/// Owns one incoming connection from its first packet to `Down` (or to its refusal).
async fn accept_link(shared: Arc<Shared>, incoming: quinn::Incoming, pending: PendingAccept) {
    let remote = incoming.remote_address();
    let deadline = Instant::now() + shared.options.handshake_timeout;
    // Strangers can cause this at will: loud only at powers of two, so never silent but never
    // a log flood.
    let refused = |err: &dyn fmt::Display| {
        let n = bump(&shared.counters.handshakes_refused);
        if n.is_power_of_two() {
            tracing::warn!(%remote, total = n, "incoming link refused: {err}");
        } else {
            tracing::debug!(%remote, total = n, "incoming link refused: {err}");
        }
    };
    let conn = match tokio::time::timeout_at(deadline, incoming).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(err)) => return refused(&err),
        // Dropping the half-done connection aborts it; nothing was proven, nothing is owed.
        Err(_) => return refused(&"TLS handshake timed out"),
    };
    let streams = handshake_until(
        &conn,
        deadline,
        None,
        acceptor_handshake(&conn, &shared.auth),
    )
    .await;
    match streams {
        Ok((send, recv)) => {
            run_link(
                shared.clone(),
                conn,
                send,
                recv,
                remote,
                None,
                Some(pending),
            )
            .await;
        }
        Err(err) => refused(&err),
    }
}

/// Owns one dial from `dial` to `Down` (or `Failed`).
async fn dial_link(
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    id: LinkId,
    addr: SocketAddr,
    cancel: Arc<DialCancel>,
) {
    let deadline = Instant::now() + shared.options.handshake_timeout;
    let connected = tokio::select! {
        conn = tokio::time::timeout_at(deadline, connect(&endpoint, &shared.client_config, addr)) => {
            match conn {
                Ok(Ok(conn)) => Ok(conn),
                Ok(Err(err)) => Err(HandshakeError::Net(err)),
                Err(_) => Err(HandshakeError::Refused(Refusal::new(
                    LinkCloseCode::HandshakeTimeout,
                    format!("no QUIC connection to {addr} within the handshake timeout"),
                ))),
            }
        }
        refusal = cancelled(Some(&cancel)) => Err(HandshakeError::Refused(refusal)),
    };
    let result = match connected {
        Ok(conn) => handshake_until(
            &conn,
            deadline,
            Some(&cancel),
            dialer_handshake(&conn, &shared.auth),
        )
        .await
        .map(|streams| (conn, streams)),
        Err(err) => Err(err),
    };
    match result {
        Ok((conn, (send, recv))) => {
            let remote = conn.remote_address();
            run_link(shared, conn, send, recv, remote, Some((id, cancel)), None).await;
        }
        Err(err) => {
            lock(&shared.links).remove(&id);
            let reason = format!("dialing {addr}: {}", err.describe());
            tracing::info!(link = id.0, "{reason}");
            let _ = shared
                .events
                .send(LinkEvent::Failed {
                    link: id,
                    code: err.code(),
                    reason,
                })
                .await;
        }
    }
}

/// Register a link whose handshake succeeded, report `Up`, carry its frames both ways until it
/// ends, and report `Down`. `dialed` is the dial's id and cancel; accepted links get an id here,
/// and give back their place among the pending handshakes (`pending`) once registered.
async fn run_link(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    remote: SocketAddr,
    dialed: Option<(LinkId, Arc<DialCancel>)>,
    pending: Option<PendingAccept>,
) {
    let (outbox, outbox_rx) = mpsc::channel(limits::LINK_QUEUE_FRAMES_MAX);
    let is_dialed = dialed.is_some();
    let id = dialed
        .as_ref()
        .map_or_else(|| shared.next_id(), |(id, _)| *id);
    let entry = Arc::new(LinkEntry {
        id,
        closer: Closer::new(conn.clone()),
        outbox,
        queued_bytes: AtomicUsize::new(0),
        finished: AtomicBool::new(false),
    });
    // In the map before `Up` goes out, so the shard can send as soon as it sees it. Checked
    // under the lock that `close` takes, so a dial closed at the last moment never goes up.
    let refusal = {
        let mut links = lock(&shared.links);
        let refusal = match &dialed {
            Some((_, cancel)) => cancel.refusal(),
            None if links.len() >= limits::LINKS_MAX => Some(Refusal::new(
                LinkCloseCode::Full,
                format!("this shard already holds {} links", limits::LINKS_MAX),
            )),
            None => None,
        };
        match &refusal {
            Some(_) => {
                links.remove(&id);
            }
            None => {
                links.insert(id, Slot::Up(entry.clone()));
            }
        }
        refusal
    };
    if let Some(refusal) = refusal {
        let err = refuse(&conn, refusal);
        if is_dialed {
            let reason = format!("dialing {remote}: {}", err.describe());
            let _ = shared
                .events
                .send(LinkEvent::Failed {
                    link: id,
                    code: err.code(),
                    reason,
                })
                .await;
        } else {
            let n = bump(&shared.counters.connections_refused);
            tracing::warn!(%remote, total = n, "incoming link refused: {err}");
        }
        return;
    }
    drop(pending);
    tracing::info!(link = id.0, %remote, dialed = is_dialed, "link up");

    let up = LinkEvent::Up {
        link: id,
        remote,
        dialed: is_dialed,
    };
    if shared.events.send(up).await.is_ok() {
        tokio::spawn(write_link(shared.clone(), entry.clone(), send, outbox_rx));
        // The reader runs as its own task so that even a panic in it (there is no known way)
        // ends only this link, and still produces its `Down`.
        let reader = tokio::spawn({
            let (shared, entry) = (shared.clone(), entry.clone());
            async move { read_link(&shared, &entry, recv).await }
        });
        if let Err(err) = reader.await {
            tracing::error!(link = id.0, %err, "link task failed");
            entry.close(LinkCloseCode::Internal, "internal error");
        }
    } else {
        // Nobody drains the events any more: the shard is gone.
        entry.close(LinkCloseCode::ShuttingDown, SHUTDOWN_REASON);
    }

    // The reader ends only once the connection is closed or closing (it closes it itself
    // otherwise), so this returns at once; it also gives the peer's reason when it was not us.
    let err = conn.closed().await;
    let (code, reason) = match entry.closer.take_local() {
        Some(local) => (
            LinkCloseCode::from_close_code(u64::from(local.code)),
            local.log_reason,
        ),
        None => describe_end(&err),
    };
    lock(&shared.links).remove(&id);
    tracing::info!(link = id.0, %reason, "link down");
    // Sent last, after the reader ended, so nothing for this link can follow it.
    let _ = shared
        .events
        .send(LinkEvent::Down {
            link: id,
            code,
            reason,
        })
        .await;
}

/// Turn the peer's frames into `Message` events until the link ends; on any violation close
/// the link, so that when this returns the connection is closed or closing.
async fn read_link(shared: &Shared, entry: &LinkEntry, mut recv: quinn::RecvStream) {
    let conn = &entry.closer.conn;
    loop {
        let len = match read_frame_len(&mut recv, limits::LINK_FRAME_BYTES_MAX).await {
            Ok(len) => len,
            Err(err) => return read_failed(shared, entry, err).await,
        };
        // Reserve the bytes before allocating them. While the shard has not drained enough
        // earlier messages this waits, and not reading is what makes QUIC flow control slow
        // the peer down.
        let permits = u32::try_from(len).unwrap_or(u32::MAX); // len <= LINK_FRAME_BYTES_MAX <= u32::MAX
        let reserved = tokio::select! {
            permit = shared.inbox.acquire_many(permits) => permit.map(|p| p.forget()).is_ok(),
            () = closed(conn) => return,
        };
        if !reserved {
            // The semaphore closes only when `LinkEvents` is dropped.
            entry.close(LinkCloseCode::ShuttingDown, SHUTDOWN_REASON);
            return;
        }
        let body = match read_frame_body(&mut recv, len).await {
            Ok(body) => body,
            Err(err) => {
                shared.inbox.add_permits(len);
                return read_failed(shared, entry, err).await;
            }
        };
        count(
            &shared.counters.frames_in,
            &shared.counters.frame_bytes_in,
            body.len(),
        );
        let event = LinkEvent::Message {
            link: entry.id,
            bytes: Bytes::from(body),
        };
        if shared.events.send(event).await.is_err() {
            entry.close(LinkCloseCode::ShuttingDown, SHUTDOWN_REASON);
            return;
        }
    }
}

/// The link stream could not be read: close the link unless the connection is already gone.
async fn read_failed(shared: &Shared, entry: &LinkEntry, err: NetError) {
    match err {
        // The connection is gone; the supervisor reports why.
        err if err.is_connection_lost() => {}
        // Everything the peer sent has been read. If we finished first, this is the peer's
        // answer to our close, so it has read everything too: close now (see `write_link`).
        NetError::StreamFinished if entry.finished.load(Ordering::Acquire) => {
            entry.closer.close_as_requested();
        }
        // The peer is closing: answer by finishing our side after what is queued, then wait for
        // its close so `Down` carries its reason.
        NetError::StreamFinished => {
            let conn = &entry.closer.conn;
            let answered = async {
                let _ = entry.outbox.send(Outbound::Finish).await;
                conn.closed().await;
            };
            if tokio::time::timeout(CLOSE_FLUSH_TIMEOUT * 2, answered)
                .await
                .is_err()
            {
                entry.close_counted(
                    &shared.counters.closed_bad_message,
                    LinkCloseCode::BadMessage,
                    "the peer finished its link stream but did not close the link",
                );
            }
        }
        NetError::BadFrame(DecodeError::TooLarge { len, max }) => entry.close_counted(
            &shared.counters.closed_bad_message,
            LinkCloseCode::BadMessage,
            &format!("a frame of {len} bytes exceeds the {max}-byte link frame limit"),
        ),
        other => entry.close_counted(
            &shared.counters.closed_bad_message,
            LinkCloseCode::BadMessage,
            &format!("link stream: {other}"),
        ),
    }
}

/// The single writer of a link's stream: writes queued frames in order, and closes politely.
///
/// A polite close must not lose frames, and quinn discards data the peer's transport has
/// received but its reader has not read yet once the connection closes, so waiting for the
/// peer to acknowledge our data is not enough. Instead the two ends exchange the ends of their
/// streams: the closing side finishes its stream after what it queued; the peer reads up to that
/// end, finishes its own stream after what *it* queued, and waits; the closing side reads up to
/// the peer's end and only then closes the connection with its code and reason. By then each
/// side has read everything the other sent. If the peer does not answer within
/// `CLOSE_FLUSH_TIMEOUT` of the request (it stopped reading), the link is closed anyway. Two
/// ends closing one link at the same moment both finish first, and each closes when it reads
/// the other's end, so there the last frames of the side that reads more slowly can be lost.
async fn write_link(
    shared: Arc<Shared>,
    entry: Arc<LinkEntry>,
    mut send: quinn::SendStream,
    mut outbox: mpsc::Receiver<Outbound>,
) {
    loop {
        let msg = tokio::select! {
            msg = outbox.recv() => msg,
            () = closed(&entry.closer.conn) => return,
        };
        match msg {
            None => return,
            Some(Outbound::Frame(bytes)) => {
                let len = bytes.len();
                let mut frame = [Bytes::from(codec::frame(&bytes))];
                drop(bytes);
                let written = entry.closer.write_guarded(&mut send, &mut frame).await;
                entry.queued_bytes.fetch_sub(len, Ordering::AcqRel);
                if !written {
                    return;
                }
                count(
                    &shared.counters.frames_out,
                    &shared.counters.frame_bytes_out,
                    len,
                );
            }
            Some(Outbound::Close) => {
                entry.finished.store(true, Ordering::Release);
                let _ = send.finish();
                // The reader closes when the peer's answer arrives; this is for a peer that
                // does not answer.
                tokio::select! {
                    () = entry.closer.deadline() => entry.closer.close_as_requested(),
                    () = closed(&entry.closer.conn) => {}
                }
                return;
            }
            Some(Outbound::Finish) => {
                entry.finished.store(true, Ordering::Release);
                let _ = send.finish();
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"sixteen byte key and then some";
    const HASH: u64 = 0x5a5a_1234_abcd_0001;

    fn auth(secret: &[u8], hash: u64) -> ClusterAuth {
        ClusterAuth::new(secret, hash).expect("secret long enough")
    }

    fn exporter_of(seed: u8) -> Exporter {
        [seed; 32]
    }

    #[test]
    fn short_secrets_are_refused_and_debug_hides_the_secret() {
        let err = ClusterAuth::new(b"too short", HASH).expect_err("9 bytes");
        assert_eq!(
            err,
            ClusterAuthError::SecretTooShort {
                len: 9,
                min: limits::LINK_SECRET_BYTES_MIN
            }
        );
        assert!(err.to_string().contains("at least 16"), "{err}");
        let ok = auth(SECRET, HASH);
        let shown = format!("{ok:?}");
        assert!(
            !shown.contains("sixteen") && shown.contains("<redacted>"),
            "operators paste Debug output into tickets, so it must not carry the secret: {shown}"
        );
    }

    #[test]
    fn members_accept_each_other() {
        let (dialer, acceptor) = (auth(SECRET, HASH), auth(SECRET, HASH));
        let ex = exporter_of(7);
        let hello = dialer.hello(&ex).encode();
        assert_eq!(acceptor.check_hello(&ex, &hello), Ok(()));
        let welcome = acceptor.welcome(&ex).encode();
        assert_eq!(dialer.check_welcome(&ex, &welcome), Ok(()));
        assert!(hello.len() <= HANDSHAKE_FRAME_BYTES_MAX);
    }

    #[test]
    fn a_wrong_secret_is_not_a_member_either_way() {
        let member = auth(SECRET, HASH);
        let stranger = auth(b"another secret of enough bytes", HASH);
        let ex = exporter_of(1);
        let refused = member.check_hello(&ex, &stranger.hello(&ex).encode());
        assert_eq!(refused.map_err(|r| r.code), Err(LinkCloseCode::NotAMember));
        let refused = member.check_welcome(&ex, &stranger.welcome(&ex).encode());
        assert_eq!(refused.map_err(|r| r.code), Err(LinkCloseCode::NotAMember));
    }

    #[test]
    fn a_proof_from_another_session_or_role_does_not_verify() {
        let member = auth(SECRET, HASH);
        // A relay forwards a hello made for its own TLS session to another one.
        let relayed = member.hello(&exporter_of(1)).encode();
        assert_eq!(
            member
                .check_hello(&exporter_of(2), &relayed)
                .map_err(|r| r.code),
            Err(LinkCloseCode::NotAMember),
            "channel binding: a proof is only good on the TLS session it was made for"
        );
        // An acceptor that reflects the dialer's proof as its welcome.
        let ex = exporter_of(3);
        let reflected = LinkWelcome {
            proof: member.hello(&ex).proof,
        };
        assert_eq!(
            member
                .check_welcome(&ex, &reflected.encode())
                .map_err(|r| r.code),
            Err(LinkCloseCode::NotAMember),
            "the role byte keeps a peer from answering with our own proof"
        );
    }

    #[test]
    fn a_member_with_another_registry_gets_protocol_mismatch() {
        let ex = exporter_of(4);
        let refused =
            auth(SECRET, HASH).check_hello(&ex, &auth(SECRET, HASH + 1).hello(&ex).encode());
        assert_eq!(
            refused.map_err(|r| r.code),
            Err(LinkCloseCode::ProtocolMismatch)
        );
        // A stranger claiming our hash still only learns that it is not a member.
        let mut forged = auth(b"another secret of enough bytes", HASH + 1).hello(&ex);
        forged.protocol_hash = HASH + 1;
        let refused = auth(SECRET, HASH).check_hello(&ex, &forged.encode());
        assert_eq!(refused.map_err(|r| r.code), Err(LinkCloseCode::NotAMember));
    }

    #[test]
    fn malformed_and_foreign_version_hellos_are_refused() {
        let member = auth(SECRET, HASH);
        let ex = exporter_of(5);
        for garbage in [&b""[..], b"hello", &[0xff; 64]] {
            assert_eq!(
                member.check_hello(&ex, garbage).map_err(|r| r.code),
                Err(LinkCloseCode::BadMessage),
                "{garbage:?}"
            );
            assert_eq!(
                member.check_welcome(&ex, garbage).map_err(|r| r.code),
                Err(LinkCloseCode::BadMessage),
                "{garbage:?}"
            );
        }
        let mut hello = member.hello(&ex);
        hello.version = LINK_VERSION + 1;
        assert_eq!(
            member.check_hello(&ex, &hello.encode()).map_err(|r| r.code),
            Err(LinkCloseCode::WrongVersion)
        );
    }

    #[test]
    fn close_codes_round_trip_and_do_not_collide_with_client_codes() {
        for code in LinkCloseCode::ALL {
            assert_eq!(
                LinkCloseCode::from_close_code(u64::from(code.close_code())),
                Some(code)
            );
            assert!(
                zonescaler_shared::protocol::ErrorCode::from_close_code(u64::from(
                    code.close_code()
                ))
                .is_none(),
                "{code}"
            );
        }
        assert_eq!(LinkCloseCode::from_close_code(0), None);
    }

    #[test]
    fn handles_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<ClusterLinks>();
        fn assert_send<T: Send>() {}
        assert_send::<LinkEvents>();
    }

    #[test]
    fn bind_outside_a_runtime_is_an_error() {
        let id = ServerIdentity::self_signed(&["localhost"]).expect("identity");
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        assert!(matches!(
            ClusterLinks::bind(addr, &id, auth(SECRET, HASH)),
            Err(NetError::NoRuntime)
        ));
    }
}
