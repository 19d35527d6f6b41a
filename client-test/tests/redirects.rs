//! The swarm follows its avatars from shard to shard over real QUIC connections, against scripted
//! fake shards: a handoff redirect mid-session, a redirected login, a redirect to nowhere, and the
//! border scenario's scouting of the cell map.

use bytes::Bytes;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use zonescaler_bots::Scenario;
use zonescaler_bots::report::Report;
use zonescaler_bots::swarm::{self, SwarmConfig};
use zonescaler_net::quic::QuicServer;
use zonescaler_net::tls::{ClientTrust, ServerIdentity};
use zonescaler_net::{NetCommand, NetEvent};
use zonescaler_shared::codec;
use zonescaler_shared::components::EXAMPLE_GAME_COMPONENTS;
use zonescaler_shared::protocol::*;
use zonescaler_shared::quant::QPos;
use zonescaler_shared::registry::ProtocolRegistry;
use zonescaler_shared::{ConnId, NetId, ShardId};

const TICK: Duration = Duration::from_millis(33);
const AVATAR: NetId = NetId(7);
const HANDOFF_TOKEN: &[u8] = b"avatar 7";

/// What a fake shard answers a `Hello` with.
#[derive(Clone, Debug)]
enum Answer {
    /// Welcome (then the cell map) and a snapshot every tick; once `redirect_after` inputs have
    /// arrived on the connection, redirect the client to `to` (a handoff). Counting the bot's
    /// inputs rather than our own ticks keeps the test independent of how the two clocks drift
    /// on a loaded machine.
    Play {
        redirect_after: Option<(u64, Redirect)>,
    },
    /// Redirect at once (a login that belongs to another shard).
    Redirect(Redirect),
}

/// What a fake shard saw.
#[derive(Debug, Default)]
struct Seen {
    hellos: Vec<Hello>,
    /// Inputs per connection.
    inputs: BTreeMap<ConnId, u64>,
    /// Why each connection ended.
    disconnects: BTreeMap<ConnId, String>,
}

struct FakeShard {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeShard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn protocol_hash() -> u64 {
    ProtocolRegistry::with_components(&EXAMPLE_GAME_COMPONENTS)
        .expect("the example components are distinct")
        .hash()
}

/// Two shards side by side: shard 1 west of x = 0, shard 2 east of it.
fn two_shard_map() -> CellMapView {
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

/// A shard that answers every `Hello` with `answer(&hello, its own address)`, ticking every
/// [`TICK`].
fn fake_shard(
    map: CellMapView,
    answer: impl Fn(&Hello, SocketAddr) -> Answer + Send + 'static,
) -> FakeShard {
    let identity = ServerIdentity::self_signed(&["localhost"]).expect("a self-signed certificate");
    let (server, mut events) =
        QuicServer::bind("127.0.0.1:0".parse().expect("literal"), &identity).expect("bind");
    let addr = server.local_addr();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let log = seen.clone();
    let task = tokio::spawn(async move {
        let hash = protocol_hash();
        // Per playing connection: (inputs received, newest input seq, pending handoff).
        let mut playing: BTreeMap<ConnId, (u64, u32, Option<(u64, Redirect)>)> = BTreeMap::new();
        let mut tick = 0u64;
        let mut every = tokio::time::interval(TICK);
        let mut batch = Vec::new();
        loop {
            every.tick().await;
            tick += 1;
            batch.clear();
            events.drain_into(usize::MAX, &mut batch);
            for event in batch.drain(..) {
                match event {
                    NetEvent::Control { conn, bytes } => {
                        let Ok(ClientControl::Hello(hello)) = codec::decode_client_control(&bytes)
                        else {
                            panic!("a bot sent something other than Hello");
                        };
                        let answer = answer(&hello, addr);
                        log.lock().expect("not poisoned").hellos.push(hello);
                        match answer {
                            Answer::Redirect(r) => server.dispatch(NetCommand::Control {
                                conn,
                                bytes: Bytes::from(codec::encode(&ServerControl::Redirect(r))),
                            }),
                            Answer::Play { redirect_after } => {
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
                                for msg in [welcome, ServerControl::CellMap(map.clone())] {
                                    server.dispatch(NetCommand::Control {
                                        conn,
                                        bytes: Bytes::from(codec::encode(&msg)),
                                    });
                                }
                                playing.insert(conn, (0, 0, redirect_after));
                            }
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
                                p.0 += 1;
                                p.1 = p.1.max(input.seq);
                            }
                        }
                    }
                    NetEvent::Disconnected { conn, reason } => {
                        playing.remove(&conn);
                        log.lock()
                            .expect("not poisoned")
                            .disconnects
                            .insert(conn, reason);
                    }
                    NetEvent::Connected { .. } => {}
                }
            }
            for (conn, (inputs, last_input_seq, redirect)) in &mut playing {
                // A full snapshot every tick: the avatar alone, where it spawned.
                let part = SnapshotPart {
                    tick,
                    parts: 1,
                    last_input_seq: *last_input_seq,
                    rare: Some(RareUpdates {
                        spawned: vec![Spawned {
                            id: AVATAR,
                            pos: QPos([0, 0, 0]),
                            components: vec![],
                        }],
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                server.dispatch(NetCommand::Datagram {
                    conn: *conn,
                    bytes: Bytes::from(codec::encode(&ServerDatagram::Snapshot(part))),
                });
                if redirect
                    .as_ref()
                    .is_some_and(|(after, _)| *inputs >= *after)
                    && let Some((_, r)) = redirect.take()
                {
                    server.dispatch(NetCommand::Control {
                        conn: *conn,
                        bytes: Bytes::from(codec::encode(&ServerControl::Redirect(r))),
                    });
                }
            }
        }
    });
    FakeShard { addr, seen, task }
}

fn swarm_config(addr: SocketAddr, bots: usize, scenario: Scenario) -> SwarmConfig {
    SwarmConfig {
        addr,
        server_name: "localhost".into(),
        bots,
        // ~90 ticks of play: the thresholds below ("> 30 snapshots") leave a starved CI machine
        // two seconds of slack.
        duration: Duration::from_millis(3_000),
        ramp: Duration::ZERO,
        scenario,
        trust: ClientTrust::InsecureSkipVerify,
        seed: 3,
        input_hz: 30,
        progress: false,
    }
}

fn redirect_to(shard: &FakeShard, token: &[u8]) -> Redirect {
    Redirect {
        shard: ShardId(2),
        addr: shard.addr.to_string(),
        token: token.to_vec(),
    }
}

/// Shard B: takes over avatar 7 from a handoff token, and anything else as a new player.
fn target_shard() -> FakeShard {
    fake_shard(two_shard_map(), |_, _| Answer::Play {
        redirect_after: None,
    })
}

async fn run(cfg: SwarmConfig) -> Report {
    swarm::run(cfg).await.expect("the swarm runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handed_off_bot_moves_to_the_new_shard_and_keeps_playing() {
    let b = target_shard();
    let redirect = redirect_to(&b, HANDOFF_TOKEN);
    let a = fake_shard(two_shard_map(), move |_, _| Answer::Play {
        redirect_after: Some((10, redirect.clone())),
    });
    let r = run(swarm_config(a.addr, 1, Scenario::Wander)).await;
    assert!(r.errors.is_empty(), "a clean handoff is no error: {r:?}");
    assert_eq!(r.bots_connected, 1);
    assert_eq!(
        r.handoffs, 1,
        "one redirect after login is one handoff: {r:?}"
    );
    assert!(
        r.handoff_gap_ms_max > 0.0 && r.handoff_gap_ms_max < 5_000.0,
        "the gap is measured (a latency bound is the end-to-end run's business): {r:?}"
    );
    assert!(
        r.snapshots_total > 30,
        "snapshots keep coming through the handoff: {r:?}"
    );
    assert_eq!(r.avatar_missing_total, 0, "{r:?}");
    let (a, b) = (
        a.seen.lock().expect("not poisoned"),
        b.seen.lock().expect("not poisoned"),
    );
    assert_eq!(
        b.hellos
            .iter()
            .map(|h| h.token.as_deref())
            .collect::<Vec<_>>(),
        vec![Some(HANDOFF_TOKEN)],
        "the bot presents the redirect's token to the new shard"
    );
    assert!(
        b.inputs.values().sum::<u64>() > 5,
        "after the switch inputs go to the new shard: {b:?}"
    );
    assert!(
        a.disconnects.values().any(|why| why.contains("redirected")),
        "the bot closes the old connection once the new shard welcomed it: {a:?}"
    );
    assert!(
        a.inputs.values().sum::<u64>() >= 10,
        "inputs flow to the old shard until the switch: {a:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirected_login_is_followed_before_the_first_welcome() {
    let b = target_shard();
    let redirect = redirect_to(&b, b"spawn here");
    let a = fake_shard(two_shard_map(), move |_, _| {
        Answer::Redirect(redirect.clone())
    });
    let r = run(swarm_config(a.addr, 2, Scenario::Wander)).await;
    assert!(r.errors.is_empty(), "{r:?}");
    assert_eq!(r.bots_connected, 2, "{r:?}");
    assert_eq!(r.handoffs, 0, "a login redirect is no handoff: {r:?}");
    assert!(r.snapshots_total > 30, "{r:?}");
    let b = b.seen.lock().expect("not poisoned");
    assert_eq!(
        b.hellos.len(),
        2,
        "both bots log in at the shard they were sent to"
    );
    assert!(b.inputs.values().all(|n| *n > 5), "{b:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_redirect_loop_fails_with_a_clear_error() {
    // Shard A sends every login to itself.
    let a = fake_shard(two_shard_map(), |_, own| {
        Answer::Redirect(Redirect {
            shard: ShardId(1),
            addr: own.to_string(),
            token: vec![1],
        })
    });
    let r = run(swarm_config(a.addr, 1, Scenario::Idle)).await;
    assert_eq!(r.bots_connected, 0, "{r:?}");
    assert_eq!(
        r.errors.get("login: redirected more than 4 times in a row"),
        Some(&1),
        "{r:?}"
    );
    assert_eq!(a.seen.lock().expect("not poisoned").hellos.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_to_nowhere_is_an_error_and_the_bot_stays() {
    let a = fake_shard(two_shard_map(), |_, _| Answer::Play {
        redirect_after: Some((
            10,
            Redirect {
                shard: ShardId(2),
                addr: String::new(),
                token: vec![1],
            },
        )),
    });
    let r = run(swarm_config(a.addr, 1, Scenario::Wander)).await;
    assert_eq!(r.errors.get("redirect_bad_addr"), Some(&1), "{r:?}");
    assert_eq!(r.errors.len(), 1, "{r:?}");
    assert!(
        r.snapshots_total > 30,
        "the old shard keeps serving the bot: {r:?}"
    );
    let a = a.seen.lock().expect("not poisoned");
    assert!(
        a.inputs.values().sum::<u64>() > 30,
        "inputs keep flowing to the old shard: {a:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn border_bots_start_next_to_a_border_of_the_scouted_cell_map() {
    let a = fake_shard(two_shard_map(), |_, _| Answer::Play {
        redirect_after: None,
    });
    let r = run(swarm_config(a.addr, 3, Scenario::Border)).await;
    assert_eq!(r.scenario, "border");
    assert_eq!(r.bots_connected, 3, "{r:?}");
    assert!(r.errors.is_empty(), "every bot has a border to walk: {r:?}");
    let a = a.seen.lock().expect("not poisoned");
    let names: Vec<&str> = a.hellos.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names[0], "scout", "the scout logs in first: {names:?}");
    assert_eq!(names.len(), 4, "{names:?}");
    for h in &a.hellos[1..] {
        let p = h
            .spawn_hint
            .expect("a border bot asks to start at its walk")
            .to_vec3();
        assert!(
            p.x.abs() <= 10.01 && p.z.abs() <= 90.0,
            "{} starts on its walk, within 10 m of the border at x = 0, away from the corners: {p}",
            h.name
        );
    }
    let xs: Vec<f32> = a.hellos[1..]
        .iter()
        .filter_map(|h| h.spawn_hint)
        .map(|p| p.to_vec3().x)
        .collect();
    assert!(
        xs.iter().any(|x| x.abs() < 9.5),
        "the bots start part-way along their walks, not all at an end, so they do not cross in \
         step: {xs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_border_run_against_one_shard_fails_with_a_clear_error() {
    let a = fake_shard(
        CellMapView {
            epoch: 1,
            leaves: vec![LeafView {
                rect: [-100.0, -100.0, 100.0, 100.0],
                shard: ShardId(1),
            }],
        },
        |_, _| Answer::Play {
            redirect_after: None,
        },
    );
    let e = swarm::run(swarm_config(a.addr, 3, Scenario::Border))
        .await
        .expect_err("nothing to measure without a border");
    assert!(
        e.to_string()
            .contains("no border between shards: run against a cluster with more than one shard"),
        "{e}"
    );
    assert_eq!(
        a.seen.lock().expect("not poisoned").hellos.len(),
        1,
        "only the scout logged in"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_that_fails_is_no_handoff() {
    let a = fake_shard(two_shard_map(), |_, _| Answer::Play {
        redirect_after: Some((
            10,
            Redirect {
                shard: ShardId(2),
                addr: String::new(),
                token: vec![1],
            },
        )),
    });
    let r = run(swarm_config(a.addr, 1, Scenario::Wander)).await;
    assert_eq!(r.errors.get("redirect_bad_addr"), Some(&1), "{r:?}");
    assert_eq!(
        (r.handoffs, r.handoff_gap_ms_max),
        (0, 0.0),
        "the bot never reached another shard, so nothing was handed off: {r:?}"
    );
}
