//! Admission: with a client cap per shard, logins fill every shard to its cap, then wait in the
//! login queue told their place, and are seated in order as players leave; when no shard can
//! take a player, the login is refused at once with `no_room` and the server's reason.

use bytes::Bytes;
use std::collections::BTreeMap;
use zonescaler_net::{NetCommand, NetEvent};
use zonescaler_server::ShardApp;
use zonescaler_server::app::demo_game;
use zonescaler_server::cluster::LocalCluster;
use zonescaler_shared::codec;
use zonescaler_shared::config::WorldConfig;
use zonescaler_shared::protocol::{ClientControl, ErrorCode, Hello, QueuePlace, ServerControl};
use zonescaler_shared::{ConnId, ShardId};

/// A client's connections, by (shard, connection id).
type Conn = (usize, u64);

/// What clients were told, over every step.
#[derive(Default)]
struct Told {
    welcomed: BTreeMap<Conn, usize>,
    places: BTreeMap<Conn, Vec<QueuePlace>>,
    redirects: BTreeMap<Conn, (ShardId, Vec<u8>)>,
    errors: BTreeMap<Conn, (ErrorCode, String)>,
    /// When each connection was welcomed (the step number).
    order: Vec<Conn>,
}

impl Told {
    fn read(&mut self, shard: usize, cmds: &[NetCommand]) {
        for cmd in cmds {
            let NetCommand::Control { conn, bytes } = cmd else {
                continue;
            };
            let at = (shard, conn.0);
            match codec::decode_server_control(bytes) {
                Ok(ServerControl::Welcome(_)) => {
                    *self.welcomed.entry(at).or_default() += 1;
                    self.order.push(at);
                }
                Ok(ServerControl::Queued(p)) => self.places.entry(at).or_default().push(p),
                Ok(ServerControl::Redirect(r)) => {
                    self.redirects.insert(at, (r.shard, r.token));
                }
                Ok(ServerControl::Error(e)) => {
                    self.errors.insert(at, (e.code, e.detail));
                }
                _ => {}
            }
        }
    }

    fn last_place(&self, at: Conn) -> Option<u32> {
        self.places
            .get(&at)
            .and_then(|p| p.last())
            .map(|p| p.position)
    }
}

fn hello(hash: u64, name: &str, token: Option<Vec<u8>>) -> Bytes {
    Bytes::from(codec::encode(&ClientControl::Hello(Hello {
        protocol_hash: hash,
        name: name.into(),
        ticket: None,
        token,
        resume: None,
    })))
}

fn connect(app: &mut ShardApp, conn: u64, hello: Bytes) {
    let conn = ConnId(conn);
    app.push_event(NetEvent::Connected {
        conn,
        max_datagram_bytes: 1_200,
    });
    app.push_event(NetEvent::Control { conn, bytes: hello });
}

fn hang_up(app: &mut ShardApp, conn: u64) {
    app.push_event(NetEvent::Disconnected {
        conn: ConnId(conn),
        reason: "bye".into(),
    });
}

/// A cluster of two shards of an empty world with a cap of `cap` players each and room for
/// `queue_max` logins to wait; every client logs in through shard 0.
struct Cluster {
    c: LocalCluster,
    told: Told,
    hash: u64,
}

impl Cluster {
    fn new(cap: u32, queue_max: u32) -> Self {
        let mut world = WorldConfig::default();
        world.npc.count = 0;
        world.cluster.clients_per_shard_max = cap;
        world.cluster.login_queue_max = queue_max;
        let c = LocalCluster::new(world, 2, &demo_game()).expect("two shards");
        let hash = c.shards[0].protocol_hash();
        Self {
            c,
            told: Told::default(),
            hash,
        }
    }

    /// Steps, following every redirect the way a client does: to the shard it names, with its
    /// token, as connection `1000 + n` there; the gateway's connection is hung up once the
    /// client is welcomed there.
    fn steps(&mut self, n: usize) {
        for _ in 0..n {
            let out = self.c.step();
            let before: Vec<Conn> = self.told.redirects.keys().copied().collect();
            for (shard, cmds) in out.iter().enumerate() {
                self.told.read(shard, cmds);
            }
            let new: Vec<(Conn, (ShardId, Vec<u8>))> = self
                .told
                .redirects
                .iter()
                .filter(|(k, _)| !before.contains(k))
                .map(|(k, v)| (*k, v.clone()))
                .collect();
            for ((from, conn), (to, token)) in new {
                let h = hello(self.hash, "", Some(token));
                connect(&mut self.c.shards[usize::from(to.0)], 1_000 + conn, h);
                hang_up(&mut self.c.shards[from], conn);
            }
        }
    }

    fn log_in(&mut self, conn: u64) {
        let h = hello(self.hash, &format!("p{conn}"), None);
        connect(&mut self.c.shards[0], conn, h);
    }

    /// Where player `n` plays: its gateway connection, or the one it was redirected to.
    fn playing(&self, n: u64) -> Option<Conn> {
        [(0, n), (1, 1_000 + n), (0, 1_000 + n)]
            .into_iter()
            .find(|c| self.told.welcomed.contains_key(c))
    }
}

#[test]
fn with_two_shards_full_logins_wait_in_line_and_are_seated_in_order_as_players_leave() {
    let mut k = Cluster::new(3, 4);
    for n in 1..=6 {
        k.log_in(n);
    }
    k.steps(6);
    let on: Vec<Option<Conn>> = (1..=6).map(|n| k.playing(n)).collect();
    assert_eq!(
        on,
        [
            Some((0, 1)),
            Some((0, 2)),
            Some((0, 3)),
            Some((1, 1_004)),
            Some((1, 1_005)),
            Some((1, 1_006))
        ],
        "three play on shard 0, the next three are sent to shard 1"
    );
    for n in 7..=11 {
        k.log_in(n);
    }
    k.steps(3);
    let places: Vec<Option<u32>> = (7..=10).map(|n| k.told.last_place((0, n))).collect();
    assert_eq!(
        places,
        [Some(1), Some(2), Some(3), Some(4)],
        "both shards full: the next four wait, told their places"
    );
    let (code, why) = k.told.errors.get(&(0, 11)).expect("p11 is refused").clone();
    assert_eq!(code, ErrorCode::NoRoom);
    assert!(why.contains("login queue is full (4 waiting)"), "{why}");
    assert!(
        (7..=10).all(|n| k.playing(n).is_none()),
        "nobody waiting plays"
    );

    // p1 leaves shard 0; p5 leaves shard 1: p7 and then p8 take their seats, the others move up.
    hang_up(&mut k.c.shards[0], 1);
    k.steps(3);
    assert_eq!(k.playing(7), Some((0, 7)), "p7 takes p1's seat on shard 0");
    assert_eq!(
        (k.told.last_place((0, 8)), k.told.last_place((0, 10))),
        (Some(1), Some(3)),
        "the ones behind move up"
    );
    hang_up(&mut k.c.shards[1], 1_005);
    k.steps(4);
    assert_eq!(
        k.playing(8),
        Some((1, 1_008)),
        "p8 takes p5's seat on shard 1"
    );
    assert_eq!(k.told.last_place((0, 9)), Some(1));
    let seated: Vec<Conn> = k.told.order[6..].to_vec();
    assert_eq!(seated, [(0, 7), (1, 1_008)], "in the order they queued");
    let waited: Vec<u32> = k.told.places[&(0, 9)].iter().map(|p| p.position).collect();
    assert_eq!(waited, [3, 2, 1], "p9 was told each place as it moved");
    assert_eq!(k.c.master.view().login_queue, 2);

    // p9 hangs up while waiting: p10 is next, and gets the next seat.
    hang_up(&mut k.c.shards[0], 9);
    k.steps(2);
    assert_eq!(k.told.last_place((0, 10)), Some(1));
    hang_up(&mut k.c.shards[0], 2);
    k.steps(3);
    assert_eq!(k.playing(10), Some((0, 10)));
    assert_eq!(k.playing(9), None, "p9 left the line and never played");
    assert_eq!(k.c.master.view().login_queue, 0);
}

#[test]
fn when_no_shard_takes_players_a_login_is_refused_at_once_with_the_reason() {
    let mut k = Cluster::new(0, 10);
    k.log_in(1);
    k.steps(2);
    let (code, why) = k.told.errors.get(&(0, 1)).expect("refused").clone();
    assert_eq!(code, ErrorCode::NoRoom);
    assert_eq!(why, "no shard of this world takes players now");
    assert!(
        k.told.places.is_empty(),
        "never queued for a seat that cannot come"
    );
}

#[test]
fn a_lone_shard_keeps_its_own_queue() {
    let mut world = WorldConfig::default();
    world.npc.count = 0;
    world.cluster.clients_per_shard_max = 2;
    world.cluster.login_queue_max = 1;
    let mut app = ShardApp::example(world);
    let hash = app.protocol_hash();
    let mut told = Told::default();
    for n in 1..=4 {
        connect(&mut app, n, hello(hash, &format!("p{n}"), None));
    }
    app.tick();
    told.read(0, &app.drain_outbox());
    assert_eq!(told.order, [(0, 1), (0, 2)]);
    assert_eq!(told.last_place((0, 3)), Some(1));
    assert_eq!(
        told.errors.get(&(0, 4)).map(|e| e.0),
        Some(ErrorCode::NoRoom)
    );
    app.tick();
    told.read(0, &app.drain_outbox());
    assert_eq!(told.order.len(), 2, "no seat, no welcome");
    hang_up(&mut app, 2);
    app.tick();
    told.read(0, &app.drain_outbox());
    assert_eq!(told.order, [(0, 1), (0, 2), (0, 3)], "p3 takes p2's seat");
}
