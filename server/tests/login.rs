//! Who a client is: a shard with login keys plays only the account a valid ticket names, tells a
//! refused client exactly why, and keeps one session per account (taking the old one over, or
//! refusing the new one, as configured), on one shard and across a cluster.

use bytes::Bytes;
use zonescaler_net::{NetCommand, NetEvent};
use zonescaler_server::ShardApp;
use zonescaler_server::app::demo_game;
use zonescaler_server::client::LoginPolicy;
use zonescaler_server::cluster::LocalCluster;
use zonescaler_shared::codec;
use zonescaler_shared::config::{DuplicateLogin, WorldConfig};
use zonescaler_shared::protocol::{ClientControl, ErrorCode, Hello, ServerControl};
use zonescaler_shared::ticket::{LoginTicket, TicketSigner};
use zonescaler_shared::{ConnId, ShardId};

/// What a shard told one connection.
#[derive(Debug, Default)]
struct Answer {
    welcome: bool,
    error: Option<(ErrorCode, String)>,
    closed: Option<ErrorCode>,
}

fn hello(app: &ShardApp, name: &str, ticket: Option<Vec<u8>>) -> Bytes {
    Bytes::from(codec::encode(&ClientControl::Hello(Hello {
        protocol_hash: app.protocol_hash(),
        name: name.into(),
        ticket,
        token: None,
        resume: None,
    })))
}

fn log_in(app: &mut ShardApp, conn: u64, bytes: Bytes) {
    let conn = ConnId(conn);
    app.push_event(NetEvent::Connected {
        conn,
        max_datagram_bytes: 1_200,
    });
    app.push_event(NetEvent::Control { conn, bytes });
}

/// Fold a tick's commands into what each connection was told.
fn answers(cmds: &[NetCommand], conn: u64, into: &mut Answer) {
    for cmd in cmds.iter().filter(|c| c.conn() == ConnId(conn)) {
        match cmd {
            NetCommand::Control { bytes, .. } => match codec::decode_server_control(bytes) {
                Ok(ServerControl::Welcome(_)) => into.welcome = true,
                Ok(ServerControl::Error(e)) => into.error = Some((e.code, e.detail)),
                _ => {}
            },
            NetCommand::Close { code, .. } => into.closed = Some(*code),
            NetCommand::Datagram { .. } => {}
        }
    }
}

fn keyed_shard(signer: &TicketSigner, duplicate: DuplicateLogin) -> ShardApp {
    let mut app = ShardApp::example(WorldConfig {
        npc: zonescaler_shared::config::NpcSection {
            count: 0,
            ..Default::default()
        },
        ..WorldConfig::default()
    });
    app.world.insert_resource(LoginPolicy {
        keys: signer.public_keys(),
        duplicate,
    });
    app
}

fn ticket(signer: &TicketSigner, account: &str, expires_ms: u64) -> Vec<u8> {
    signer.sign(&LoginTicket {
        account: account.into(),
        spawn: None,
        expires_ms,
    })
}

#[test]
fn forged_expired_foreign_and_missing_tickets_are_refused_with_their_reason() {
    let signer = TicketSigner::generate("k1").expect("key");
    let mut app = keyed_shard(&signer, DuplicateLogin::Takeover);
    app.set_now_ms(10_000);
    let impostor = TicketSigner::generate("k1").expect("key");
    let stranger = TicketSigner::generate("k9").expect("key");
    let cases: [(u64, Option<Vec<u8>>, &str); 5] = [
        (1, None, "needs a login ticket"),
        (2, Some(ticket(&signer, "ann", 5_000)), "expired"),
        (
            3,
            Some(ticket(&impostor, "ann", u64::MAX)),
            "does not verify",
        ),
        (4, Some(ticket(&stranger, "ann", u64::MAX)), "key \"k9\""),
        (5, Some(b"not a ticket".to_vec()), "malformed"),
    ];
    for (conn, t, _) in &cases {
        let h = hello(&app, "whoever", t.clone());
        log_in(&mut app, *conn, h);
    }
    let h = hello(&app, "whoever", Some(ticket(&signer, "ann", u64::MAX)));
    log_in(&mut app, 6, h);
    app.tick();
    let out = app.drain_outbox();
    for (conn, _, why) in &cases {
        let mut a = Answer::default();
        answers(&out, *conn, &mut a);
        let (code, detail) = a
            .error
            .unwrap_or_else(|| panic!("login {conn} must be refused"));
        assert_eq!(code, ErrorCode::BadTicket, "login {conn}: {detail}");
        assert!(
            detail.contains(why),
            "login {conn} is told why ({why}): {detail}"
        );
        assert_eq!(
            a.closed,
            Some(ErrorCode::BadTicket),
            "and its connection closed"
        );
        assert!(!a.welcome);
    }
    let mut ok = Answer::default();
    answers(&out, 6, &mut ok);
    assert!(
        ok.welcome && ok.error.is_none(),
        "a valid ticket plays: {ok:?}"
    );
    let clients = app.world.resource::<zonescaler_server::client::Clients>();
    assert_eq!(
        clients.0.get(&ConnId(6)).map(|c| c.name.as_str()),
        Some("ann"),
        "the account comes from the ticket, not from Hello's name"
    );
}

#[test]
fn a_second_session_of_an_account_takes_the_first_over_or_is_refused_by_the_rule() {
    let signer = TicketSigner::generate("k1").expect("key");
    for rule in [DuplicateLogin::Takeover, DuplicateLogin::Refuse] {
        let mut app = keyed_shard(&signer, rule);
        let h = hello(&app, "", Some(ticket(&signer, "ann", u64::MAX)));
        log_in(&mut app, 1, h.clone());
        app.tick();
        let mut first = Answer::default();
        answers(&app.drain_outbox(), 1, &mut first);
        assert!(first.welcome, "{rule:?}: the first session plays");
        log_in(&mut app, 2, h);
        app.tick();
        let out = app.drain_outbox();
        let (mut first, mut second) = (Answer::default(), Answer::default());
        answers(&out, 1, &mut first);
        answers(&out, 2, &mut second);
        match rule {
            DuplicateLogin::Takeover => {
                assert_eq!(first.closed, Some(ErrorCode::SessionTakenOver), "{first:?}");
                assert!(second.welcome, "the new session plays: {second:?}");
            }
            DuplicateLogin::Refuse => {
                assert_eq!(first.closed, None, "the first session is left alone");
                assert_eq!(second.closed, Some(ErrorCode::AccountInUse), "{second:?}");
                assert!(
                    second
                        .error
                        .is_some_and(|(_, d)| d.contains("already playing")),
                    "the refusal says why"
                );
            }
        }
    }
}

#[test]
fn across_a_cluster_one_account_plays_on_one_shard_at_a_time() {
    for rule in [DuplicateLogin::Takeover, DuplicateLogin::Refuse] {
        let mut world = WorldConfig::default();
        world.npc.count = 0;
        world.login.duplicate = rule;
        let mut c = LocalCluster::new(world, 2, &demo_game()).expect("two shards");
        let h = hello(&c.shards[0], "ann", None);
        log_in(&mut c.shards[0], 1, h.clone());
        let (mut a, mut b) = (Answer::default(), Answer::default());
        for _ in 0..3 {
            answers(&c.step()[0], 1, &mut a);
        }
        assert!(
            a.welcome,
            "{rule:?}: ann plays on shard 0 once the master agrees"
        );
        assert_eq!(c.master.player("ann"), Some(ShardId(0)));
        log_in(&mut c.shards[1], 1, h);
        for _ in 0..4 {
            let out = c.step();
            answers(&out[0], 1, &mut a);
            answers(&out[1], 1, &mut b);
        }
        match rule {
            DuplicateLogin::Takeover => {
                assert_eq!(a.closed, Some(ErrorCode::SessionTakenOver), "{a:?}");
                assert!(b.welcome, "the new session plays on shard 1: {b:?}");
                assert_eq!(c.master.player("ann"), Some(ShardId(1)));
            }
            DuplicateLogin::Refuse => {
                assert_eq!(a.closed, None, "the first session plays on: {a:?}");
                assert_eq!(b.closed, Some(ErrorCode::AccountInUse), "{b:?}");
                assert_eq!(c.master.player("ann"), Some(ShardId(0)));
            }
        }
    }
}
