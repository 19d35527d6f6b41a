//! A live shard over real QUIC on loopback: bots play while attackers send garbage, truncated,
//! oversize and wrong-version messages. Each attacker is closed with its reason; every bot keeps
//! playing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use zonescaler_bots::swarm::{self, SwarmConfig};
use zonescaler_bots::{BotClient, BotConfig, Scenario};
use zonescaler_net::quic::{self, NetError};
use zonescaler_net::tls::ClientTrust;
use zonescaler_server::runtime::{ShardOptions, run_shard};
use zonescaler_shared::codec;
use zonescaler_shared::config::WorldConfig;
use zonescaler_shared::protocol::{ClientControl, ErrorCode, Hello, PROTOCOL_VERSION};

struct Shard {
    addr: SocketAddr,
    trust: ClientTrust,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl Drop for Shard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn start_shard(npcs: usize) -> Shard {
    let mut config = WorldConfig::default();
    config.npc.count = npcs;
    start_shard_with(config)
}

fn start_shard_with(config: WorldConfig) -> Shard {
    let npcs = config.npc.count;
    // One file per shard (tests run in parallel), removed once read.
    static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = STARTED.fetch_add(1, Ordering::Relaxed);
    let cert = std::env::temp_dir().join(format!(
        "zs-quic-shard-{}-{npcs}-{n}.pem",
        std::process::id()
    ));
    let (tx, rx) = std::sync::mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let mut opts = ShardOptions::new(
        config,
        "127.0.0.1:0".parse().expect("literal address"),
        zonescaler_server::app::demo_game(),
    );
    opts.cert_out = Some(cert.clone());
    opts.stats_every = Duration::from_secs(60);
    opts.ready = Some(tx);
    let s = stop.clone();
    let thread = std::thread::spawn(move || run_shard(opts, s));
    let addr = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("shard must start listening");
    let trust = ClientTrust::from_pem_file(&cert).expect("shard wrote its certificate");
    let _ = std::fs::remove_file(&cert);
    Shard {
        addr,
        trust,
        stop,
        thread: Some(thread),
    }
}

/// Connect, log in properly, then misbehave with `attack`; return how the shard closed us.
async fn attack_after_login(
    shard_addr: SocketAddr,
    trust: &ClientTrust,
    attack: &[u8],
) -> NetError {
    let s = login(shard_addr, trust, "attacker")
        .await
        .expect("the attacker logs in");
    s.conn
        .send_datagram(attack.to_vec().into())
        .expect("datagram sent");
    tokio::time::timeout(Duration::from_secs(10), s.closed())
        .await
        .expect("the shard must close an attacker")
}

/// Connect and send `first` as the first control frame instead of a valid Hello.
async fn attack_at_login(shard_addr: SocketAddr, trust: &ClientTrust, first: &[u8]) -> NetError {
    let endpoint = quic::client_endpoint_for(trust, shard_addr).expect("client endpoint");
    let s = quic::connect(&endpoint, shard_addr, "localhost", first)
        .await
        .expect("connect");
    tokio::time::timeout(Duration::from_secs(10), s.closed())
        .await
        .expect("the shard must close an attacker")
}

/// Connect and write raw bytes on the control stream (bypassing framing), then finish it.
async fn raw_control(shard_addr: SocketAddr, trust: &ClientTrust, raw: &[u8]) -> NetError {
    let endpoint = quic::client_endpoint_for(trust, shard_addr).expect("client endpoint");
    let conn = endpoint
        .connect(shard_addr, "localhost")
        .expect("connect")
        .await
        .expect("handshake");
    let (mut send, _recv) = conn.open_bi().await.expect("stream");
    send.write_all(raw).await.expect("write");
    let _ = send.finish();
    tokio::time::timeout(Duration::from_secs(10), conn.closed())
        .await
        .expect("the shard must close an attacker")
        .into()
}

/// Connect and log in as `name`; the live session, or how the connection failed.
async fn login(
    shard_addr: SocketAddr,
    trust: &ClientTrust,
    name: &str,
) -> Result<quic::ClientSession, NetError> {
    let endpoint = quic::client_endpoint_for(trust, shard_addr).expect("client endpoint");
    let mut bot = BotClient::new(BotConfig::new(name, Scenario::Idle, 3));
    let mut s = quic::connect(&endpoint, shard_addr, "localhost", &bot.hello(0)).await?;
    let welcome = s.read_control().await?;
    bot.on_control(0, &welcome).expect("a valid welcome");
    Ok(s)
}

/// `[cluster] connections_per_address_max` reaches the shard's endpoint: with 3, a fourth
/// client from the same host is refused while the three play; closing one frees its place.
#[test]
fn a_configured_per_address_bound_is_what_the_shard_enforces() {
    let mut config = WorldConfig::default();
    config.npc.count = 10;
    config.cluster.connections_per_address_max = 3;
    let shard = start_shard_with(config);
    let rt = runtime();
    rt.block_on(async {
        let mut playing = Vec::new();
        for i in 0..3 {
            let s = login(shard.addr, &shard.trust, &format!("p{i}"))
                .await
                .expect("up to the bound, each client plays");
            playing.push(s);
        }
        let refused = login(shard.addr, &shard.trust, "p3").await;
        assert!(
            refused.is_err(),
            "the fourth connection from one host must be refused"
        );
        let first = playing.remove(0);
        first.conn.close(0u32.into(), b"bye");
        // The place comes back once the shard saw the close: try for a while.
        let mut again = None;
        for _ in 0..50 {
            if let Ok(s) = login(shard.addr, &shard.trust, "p4").await {
                again = Some(s);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(again.is_some(), "a closed connection's place is free again");
    });
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn code_of(e: &NetError) -> Option<ErrorCode> {
    e.close_code().and_then(ErrorCode::from_close_code)
}

#[test]
fn attackers_are_closed_with_a_reason_and_bots_keep_playing() {
    let shard = start_shard(200);
    let rt = runtime();
    rt.block_on(async {
        let cfg = SwarmConfig {
            bots: 20,
            duration: Duration::from_secs(3),
            ramp: Duration::from_millis(200),
            scenario: Scenario::Wander,
            seed: 5,
            input_hz: 30,
            progress: false,
            ..SwarmConfig::new(shard.addr, shard.trust.clone())
        };
        let swarm = tokio::spawn(swarm::run(cfg));
        // Let the bots log in and play a little before the attacks start.
        tokio::time::sleep(Duration::from_millis(800)).await;

        let garbage = attack_after_login(
            shard.addr,
            &shard.trust,
            &[
                b"ZS".as_slice(),
                &zonescaler_shared::protocol::PROTOCOL_VERSION.to_le_bytes(),
                b"\xff\xff\xff garbage",
            ]
            .concat(),
        )
        .await;
        assert_eq!(
            code_of(&garbage),
            Some(ErrorCode::BadMessage),
            "garbage datagram: {garbage}"
        );

        let input = codec::encode(&zonescaler_shared::protocol::ClientDatagram::Input(
            zonescaler_shared::protocol::Input {
                seq: 1,
                ack_tick: 0,
                target: Default::default(),
            },
        ));
        let truncated =
            attack_after_login(shard.addr, &shard.trust, &input[..input.len() - 3]).await;
        assert_eq!(
            code_of(&truncated),
            Some(ErrorCode::BadMessage),
            "truncated datagram: {truncated}"
        );

        let oversize = attack_after_login(shard.addr, &shard.trust, &vec![7u8; 1_000]).await;
        assert_eq!(
            code_of(&oversize),
            Some(ErrorCode::BadMessage),
            "oversize datagram: {oversize}"
        );

        let mut old = codec::encode(&ClientControl::Hello(Hello {
            protocol_hash: 1,
            name: "old".into(),
            ticket: None,
            token: None,
            resume: None,
        }));
        old[2..4].copy_from_slice(&(PROTOCOL_VERSION + 7).to_le_bytes());
        let wrong_version = attack_at_login(shard.addr, &shard.trust, &old).await;
        assert_eq!(
            code_of(&wrong_version),
            Some(ErrorCode::WrongVersion),
            "wrong version: {wrong_version}"
        );
        if let NetError::PeerClosed { reason, .. } = &wrong_version {
            assert!(
                reason.contains("version"),
                "the close carries a readable reason: {reason}"
            );
        }

        let junk_hello = attack_at_login(shard.addr, &shard.trust, &[9u8; 64]).await;
        assert_eq!(
            code_of(&junk_hello),
            Some(ErrorCode::BadMessage),
            "garbage control: {junk_hello}"
        );

        let oversize_frame = raw_control(shard.addr, &shard.trust, &u32::MAX.to_le_bytes()).await;
        assert_eq!(
            code_of(&oversize_frame),
            Some(ErrorCode::BadMessage),
            "oversize frame: {oversize_frame}"
        );

        let truncated_frame = raw_control(shard.addr, &shard.trust, &[100, 0, 0, 0, 1, 2, 3]).await;
        assert_eq!(
            code_of(&truncated_frame),
            Some(ErrorCode::BadMessage),
            "truncated frame: {truncated_frame}"
        );

        let report = swarm.await.expect("swarm task").expect("swarm ran");
        assert_eq!(
            report.bots_connected, 20,
            "every bot stays connected through the attacks: {report:?}"
        );
        assert!(
            report.errors.is_empty(),
            "no bot saw an error: {:?}",
            report.errors
        );
        // A third of the 30 Hz ticks for every bot: a shard stalled by the attacks would fall
        // far below that, while a slow (debug-built, shared) CI machine stays above it.
        assert!(
            report.snapshots_per_sec_min >= 10.0,
            "every bot keeps receiving snapshots: {report:?}"
        );
        assert_eq!(report.avatar_missing_total, 0);
    });
}
