//! Scripted fake shards over real QUIC, shared by the swarm's integration tests.
#![allow(
    dead_code,
    reason = "each test binary uses its own part of these helpers"
)]

use bytes::Bytes;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use zonescaler_bots::Scenario;
use zonescaler_bots::swarm::SwarmConfig;
use zonescaler_net::quic::QuicServer;
use zonescaler_net::tls::{ClientTrust, ServerIdentity};
use zonescaler_net::{NetCommand, NetEvent};
use zonescaler_shared::codec;
use zonescaler_shared::components::{EXAMPLE_GAME_COMPONENTS, Kind, Replicated};
use zonescaler_shared::protocol::*;
use zonescaler_shared::quant::QPos;
use zonescaler_shared::registry::ProtocolRegistry;
use zonescaler_shared::{ConnId, NetId, ShardId};

pub const TICK: Duration = Duration::from_millis(33);
pub const AVATAR: NetId = NetId(7);

/// What a fake shard answers a `Hello` with.
#[derive(Clone, Debug)]
pub enum Answer {
    /// Welcome (then the cell map) and a snapshot every tick; once `redirect_after` inputs have
    /// arrived on the connection, redirect the client to `to` (a handoff). Counting the bot's
    /// inputs rather than our own ticks keeps the test independent of how the two clocks drift
    /// on a loaded machine.
    Play {
        redirect_after: Option<(u64, Redirect)>,
    },
    /// As `Play`, and once `prepare_after` inputs have arrived, tell the client a redirect to
    /// `prepare.shard` may follow (`ServerControl::Prepare`).
    PlayPrepared {
        prepare_after: u64,
        prepare: Prepare,
        redirect_after: Option<(u64, Redirect)>,
    },
    /// Redirect at once (a login that belongs to another shard).
    Redirect(Redirect),
    /// Refuse with this code (an `Error`, then the close).
    Refuse(ErrorCode),
    /// As `Play` without a redirect, with `resume` sent after the `Welcome`; once `vanish_after`
    /// inputs have arrived the shard sends that connection nothing more, as a shard killed with
    /// `kill -9` (the QUIC connection itself stays up: only the game goes silent).
    PlayThenVanish { resume: Resume, vanish_after: u64 },
}

/// What a fake shard saw.
#[derive(Debug, Default)]
pub struct Seen {
    pub hellos: Vec<Hello>,
    /// Inputs per connection.
    pub inputs: BTreeMap<ConnId, u64>,
    /// Why each connection ended.
    pub disconnects: BTreeMap<ConnId, String>,
    /// Game commands, with the name of the player that sent each.
    pub commands: Vec<(String, ClientCommand)>,
    /// Chat lines, with the name of the player that said each.
    pub says: Vec<(String, Say)>,
    /// Control messages that did not decode, or came before `Hello`.
    pub bad_control: u64,
    /// When each connection completed its handshake (`NetEvent::Connected`), in order.
    pub connected: Vec<(ConnId, std::time::Instant)>,
    /// When this shard sent each `Redirect` of a playing client.
    pub redirected: Vec<std::time::Instant>,
}

pub struct FakeShard {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeShard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The demo game's client hash, which a fake shard welcomes with unless told otherwise.
pub fn protocol_hash() -> u64 {
    ProtocolRegistry::with_components(&EXAMPLE_GAME_COMPONENTS)
        .expect("the example components are distinct")
        .client_hash()
}

/// Two shards side by side: shard 1 west of x = 0, shard 2 east of it.
pub fn two_shard_map() -> CellMapView {
    CellMapView {
        epoch: 1,
        leaves: vec![
            LeafView {
                rect: [-100.0, -100.0, 0.0, 100.0],
                shard: ShardId(1),
            },
            LeafView {
                rect: [0.0, -100.0, 100.0, 100.0],
                shard: ShardId(2),
            },
        ],
    }
}

/// A demo-game shard that answers every `Hello` with `answer(&hello, its own address)`.
pub fn fake_shard(
    map: CellMapView,
    answer: impl Fn(&Hello, SocketAddr) -> Answer + Send + 'static,
) -> FakeShard {
    fake_shard_for(protocol_hash(), map, answer)
}

/// A shard of the game whose client hash is `hash`, ticking every [`TICK`]. Its avatars carry
/// the example game's `Kind::Player` (component 0 of the demo game, and of any game that
/// registers the example components first). Chat lines are echoed to their sender as a
/// message from the sayer, a tell when addressed, a shout when not.
pub fn fake_shard_for(
    hash: u64,
    map: CellMapView,
    answer: impl Fn(&Hello, SocketAddr) -> Answer + Send + 'static,
) -> FakeShard {
    let identity = ServerIdentity::self_signed(&["localhost"]).expect("a self-signed certificate");
    let (server, mut events) =
        QuicServer::bind("127.0.0.1:0".parse().expect("literal"), &identity).expect("bind");
    let addr = server.local_addr();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let log = seen.clone();
    let kind_player = ComponentBlob {
        kind: 0,
        bytes: bitcode::encode(&Kind::Player),
    };
    assert_eq!(EXAMPLE_GAME_COMPONENTS[0], Kind::NAME);
    let task = tokio::spawn(async move {
        // Per playing connection: (inputs received, newest input seq, pending handoff).
        let mut playing: BTreeMap<ConnId, Playing> = BTreeMap::new();
        let mut names: BTreeMap<ConnId, String> = BTreeMap::new();
        let mut tick = 0u64;
        let mut every = tokio::time::interval(TICK);
        let mut batch = Vec::new();
        let send = |conn, msg: &ServerControl| {
            server.dispatch(NetCommand::Control {
                conn,
                bytes: Bytes::from(codec::encode(msg)),
            })
        };
        loop {
            every.tick().await;
            tick += 1;
            batch.clear();
            events.drain_into(usize::MAX, &mut batch);
            for event in batch.drain(..) {
                match event {
                    NetEvent::Control { conn, bytes } => {
                        let msg = codec::decode_client_control(&bytes);
                        let mut seen = log.lock().expect("not poisoned");
                        let name = names.get(&conn).cloned();
                        match (msg, name) {
                            (Ok(ClientControl::Hello(hello)), None) => {
                                let answer = answer(&hello, addr);
                                names.insert(conn, hello.name.clone());
                                seen.hellos.push(hello);
                                let (mut resume, mut vanish_after) = (None, None);
                                let (prepare, redirect_after) = match answer {
                                    Answer::Redirect(r) => {
                                        send(conn, &ServerControl::Redirect(r));
                                        continue;
                                    }
                                    Answer::Refuse(code) => {
                                        let detail = format!("refused: {}", code.as_str());
                                        send(
                                            conn,
                                            &ServerControl::Error(ErrorMsg { code, detail }),
                                        );
                                        server.dispatch(NetCommand::Close {
                                            conn,
                                            code,
                                            reason: "refused".into(),
                                        });
                                        continue;
                                    }
                                    Answer::Play { redirect_after } => (None, redirect_after),
                                    Answer::PlayPrepared {
                                        prepare_after,
                                        prepare,
                                        redirect_after,
                                    } => (Some((prepare_after, prepare)), redirect_after),
                                    Answer::PlayThenVanish {
                                        resume: r,
                                        vanish_after: v,
                                    } => {
                                        (resume, vanish_after) = (Some(r), Some(v));
                                        (None, None)
                                    }
                                };
                                let welcome = ServerControl::Welcome(Welcome {
                                    avatar: AVATAR,
                                    spawn: QPos([0, 0, 0]),
                                    tick,
                                    tick_hz: 30,
                                    protocol_hash: hash,
                                    bounds: [-100.0, -100.0, 100.0, 100.0],
                                    max_speed_mps: 8.0,
                                    aoi_radius_m: 40.0,
                                });
                                send(conn, &welcome);
                                send(conn, &ServerControl::CellMap(map.clone()));
                                if let Some(r) = resume {
                                    send(conn, &ServerControl::Resume(r));
                                }
                                playing.insert(
                                    conn,
                                    Playing {
                                        redirect: redirect_after,
                                        prepare,
                                        vanish_after,
                                        ..Playing::default()
                                    },
                                );
                            }
                            (Ok(ClientControl::Command(c)), Some(name)) => {
                                seen.commands.push((name, c));
                            }
                            (Ok(ClientControl::Say(say)), Some(name)) => {
                                let echo = PlayerMessage {
                                    from: name.clone(),
                                    text: say.text.clone(),
                                    scope: if say.to.is_some() {
                                        MessageScope::Tell
                                    } else {
                                        MessageScope::Shout
                                    },
                                };
                                send(conn, &ServerControl::Message(echo));
                                seen.says.push((name, say));
                            }
                            _ => seen.bad_control += 1,
                        }
                    }
                    NetEvent::Datagram { conn, bytes } => {
                        if let Ok(ClientDatagram::Input(input)) =
                            codec::decode_client_datagram(&bytes)
                        {
                            *log.lock()
                                .expect("not poisoned")
                                .inputs
                                .entry(conn)
                                .or_default() += 1;
                            if let Some(p) = playing.get_mut(&conn) {
                                p.inputs += 1;
                                p.last_input_seq = p.last_input_seq.max(input.seq);
                            }
                        }
                    }
                    NetEvent::Disconnected { conn, reason } => {
                        playing.remove(&conn);
                        names.remove(&conn);
                        log.lock()
                            .expect("not poisoned")
                            .disconnects
                            .insert(conn, reason);
                    }
                    NetEvent::Connected { conn, .. } => log
                        .lock()
                        .expect("not poisoned")
                        .connected
                        .push((conn, std::time::Instant::now())),
                }
            }
            for (conn, p) in &mut playing {
                let Playing {
                    inputs,
                    last_input_seq,
                    redirect,
                    prepare,
                    vanish_after,
                } = p;
                if vanish_after.is_some_and(|after| *inputs >= after) {
                    continue;
                }
                // A full snapshot every tick: the avatar alone, where it spawned.
                let part = SnapshotPart {
                    tick,
                    parts: 1,
                    last_input_seq: *last_input_seq,
                    rare: Some(RareUpdates {
                        spawned: vec![Spawned {
                            id: AVATAR,
                            pos: QPos([0, 0, 0]),
                            components: vec![kind_player.clone()].into(),
                        }],
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                server.dispatch(NetCommand::Datagram {
                    conn: *conn,
                    bytes: Bytes::from(codec::encode(&ServerDatagram::Snapshot(part))),
                });
                if prepare.as_ref().is_some_and(|(after, _)| *inputs >= *after)
                    && let Some((_, p)) = prepare.take()
                {
                    send(*conn, &ServerControl::Prepare(p));
                }
                if redirect
                    .as_ref()
                    .is_some_and(|(after, _)| *inputs >= *after)
                    && let Some((_, r)) = redirect.take()
                {
                    send(*conn, &ServerControl::Redirect(r));
                    log.lock()
                        .expect("not poisoned")
                        .redirected
                        .push(std::time::Instant::now());
                }
            }
        }
    });
    FakeShard { addr, seen, task }
}

/// A playing connection of a fake shard.
#[derive(Default)]
struct Playing {
    inputs: u64,
    last_input_seq: u32,
    redirect: Option<(u64, Redirect)>,
    prepare: Option<(u64, Prepare)>,
    vanish_after: Option<u64>,
}

/// A demo-game swarm of `bots` against `addr` that plays 3 s after a ramp of zero.
pub fn swarm_config(addr: SocketAddr, bots: usize, scenario: Scenario) -> SwarmConfig {
    SwarmConfig {
        bots,
        // ~90 ticks of play: the thresholds in the tests ("> 30 snapshots") leave a starved CI
        // machine two seconds of slack.
        duration: Duration::from_millis(3_000),
        ramp: Duration::ZERO,
        scenario,
        seed: 3,
        ..SwarmConfig::new(addr, ClientTrust::InsecureSkipVerify)
    }
}

/// Unix time in milliseconds, to verify the tickets the swarm minted.
pub fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
