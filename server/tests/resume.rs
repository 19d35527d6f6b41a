//! A client whose shard died comes back by itself: every `Welcome` comes with a resume ticket,
//! and once the cluster has failed the dead shard over (its players' avatars promoted on the
//! shard that adopted them, waiting for their clients, and seated there in the master's
//! directory), the client presents the ticket to any live shard and is bound to its own avatar
//! again, through a redirect when that shard does not hold it. Before the failover it is told to
//! try again later; with a bad ticket, or an avatar that is gone, to log in anew.
//!
//! The failover is the real one: the dead shard's buddy adopts its cells and promotes its replica
//! (`authority::replica`), and the master seats its players there.

use bytes::Bytes;
use zonescaler_net::{NetCommand, NetEvent};
use zonescaler_server::ShardApp;
use zonescaler_server::app::demo_game;
use zonescaler_server::cluster::LocalCluster;
use zonescaler_server::core::components::{Avatar, AwaitingClient, NetIndex};
use zonescaler_server::core::resources::TickClock;
use zonescaler_shared::codec;
use zonescaler_shared::config::WorldConfig;
use zonescaler_shared::protocol::{
    ClientControl, ErrorCode, Hello, Redirect, Resume, ServerControl, Welcome,
};
use zonescaler_shared::resume::ResumeKeys;
use zonescaler_shared::{ConnId, NetId, ShardId, limits};

/// What a shard told one connection.
#[derive(Debug, Default)]
struct Told {
    welcome: Option<Welcome>,
    resume: Option<Resume>,
    redirect: Option<Redirect>,
    error: Option<(ErrorCode, String)>,
    datagrams: usize,
}

fn told(cmds: &[NetCommand], conn: u64, into: &mut Told) {
    for cmd in cmds.iter().filter(|c| c.conn() == ConnId(conn)) {
        match cmd {
            NetCommand::Control { bytes, .. } => match codec::decode_server_control(bytes) {
                Ok(ServerControl::Welcome(w)) => into.welcome = Some(w),
                Ok(ServerControl::Resume(r)) => into.resume = Some(r),
                Ok(ServerControl::Redirect(r)) => into.redirect = Some(r),
                Ok(ServerControl::Error(e)) => into.error = Some((e.code, e.detail)),
                _ => {}
            },
            NetCommand::Datagram { .. } => into.datagrams += 1,
            NetCommand::Close { .. } => {}
        }
    }
}

/// Connect `conn` to `app` and say `Hello` with a name, a redirect token or a resume ticket.
fn hello(app: &mut ShardApp, conn: u64, name: &str, token: Option<&[u8]>, resume: Option<&[u8]>) {
    let bytes = Bytes::from(codec::encode(&ClientControl::Hello(Hello {
        protocol_hash: app.protocol_hash(),
        name: name.into(),
        ticket: None,
        token: token.map(<[u8]>::to_vec),
        resume: resume.map(<[u8]>::to_vec),
    })));
    let conn = ConnId(conn);
    app.push_event(NetEvent::Connected {
        conn,
        max_datagram_bytes: 1_200,
    });
    app.push_event(NetEvent::Control { conn, bytes });
}

/// Step `c` until shard `shard` told `conn` whatever `done` waits for (at most `ticks` ticks).
fn step_until(
    c: &mut LocalCluster,
    shard: usize,
    conn: u64,
    ticks: usize,
    done: impl Fn(&Told) -> bool,
) -> Told {
    let mut t = Told::default();
    for _ in 0..ticks {
        told(&c.step()[shard], conn, &mut t);
        if done(&t) {
            break;
        }
    }
    t
}

fn cluster(shards: usize) -> LocalCluster {
    let mut world = WorldConfig::default();
    world.npc.count = 0;
    LocalCluster::new(world, shards, &demo_game()).expect("a cluster")
}

/// Log `name` in on shard 0 as `conn`: its `Welcome` and the resume ticket that came with it.
fn log_in(c: &mut LocalCluster, conn: u64, name: &str) -> (Welcome, Resume) {
    hello(&mut c.shards[0], conn, name, None, None);
    let t = step_until(c, 0, conn, 10, |t| {
        t.welcome.is_some() && t.resume.is_some()
    });
    match (t.welcome.clone(), t.resume.clone()) {
        (Some(w), Some(r)) => (w, r),
        _ => panic!("{name} logs in on shard 0 with a resume ticket: {t:?}"),
    }
}

#[test]
fn a_client_that_lost_its_shard_resumes_through_another_and_is_bound_to_its_own_avatar() {
    let mut c = cluster(3);
    let hz = u64::from(c.shards[0].world.resource::<TickClock>().tick_hz);
    let (w, r) = log_in(&mut c, 1, "ann");
    let (cat, cat_ticket) = log_in(&mut c, 2, "cat");
    assert_eq!(r.shard, ShardId(0), "the ticket says who issued it");
    let others: Vec<ShardId> = r.shards.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        others,
        vec![ShardId(1), ShardId(2)],
        "the client is told the other live shards to come back through"
    );

    c.kill(ShardId(0));
    // A client takes its shard for lost after a silence (the bots: 1.5 s); here a little more
    // than two heartbeats, past which the master no longer counts shard 0 as reporting
    // (`Located::live`). Before the master declared shard 0 dead, a resume can only be told to
    // come back later: the account is still seated on the shard the client lost.
    for _ in 0..(2 * limits::HEARTBEAT_MS + 100) * hz / 1_000 {
        c.step();
    }
    hello(&mut c.shards[1], 10, "", None, Some(&r.ticket));
    let t = step_until(&mut c, 1, 10, 5, |t| t.error.is_some());
    assert_eq!(
        t.error.as_ref().map(|e| e.0),
        Some(ErrorCode::ResumeLater),
        "{t:?}"
    );

    let silence = limits::SHARD_DEAD_AFTER_MS * hz / 1_000;
    for _ in 0..silence + hz {
        c.step();
    }
    assert!(!c.master.view().shards[0].alive, "shard 0 is declared dead");
    let at = w.spawn.to_vec3();
    let adopter = c
        .map
        .owner_at([at.x, at.z])
        .expect("every cell has an owner");
    let through = [ShardId(1), ShardId(2)]
        .into_iter()
        .find(|s| *s != adopter)
        .expect("two living shards");
    let (a, b) = (usize::from(adopter.0), usize::from(through.0));
    // Promoted from the dead shard's replica, waiting for their clients, seated there.
    for id in [w.avatar, cat.avatar] {
        let world = &mut c.shards[a].world;
        let e = world.resource::<NetIndex>().0.get(&id).copied();
        let waiting = e.and_then(|e| world.get::<AwaitingClient>(e));
        assert!(
            waiting.is_some(),
            "{id} waits for its client on the adopter"
        );
    }
    assert_eq!(c.master.player("ann"), Some(adopter));
    assert_eq!(c.master.player("cat"), Some(adopter));

    // Straight to the shard that holds the avatar: bound at once.
    hello(&mut c.shards[a], 20, "", None, Some(&cat_ticket.ticket));
    let t = step_until(&mut c, a, 20, 5, |t| {
        t.welcome.is_some() || t.error.is_some()
    });
    assert_eq!(
        t.welcome.as_ref().map(|w| w.avatar),
        Some(cat.avatar),
        "cat plays her own avatar again: {t:?}"
    );

    // Through a shard that does not hold the avatar: it asks the master and sends her on.
    hello(&mut c.shards[b], 11, "", None, Some(&r.ticket));
    let t = step_until(&mut c, b, 11, 5, |t| {
        t.redirect.is_some() || t.error.is_some()
    });
    let redirect = t
        .redirect
        .clone()
        .unwrap_or_else(|| panic!("redirected: {t:?}"));
    assert_eq!(redirect.shard, adopter, "to the avatar's new owner");

    // The adopter binds her to her own avatar with the redirect's token.
    hello(&mut c.shards[a], 12, "", Some(&redirect.token), None);
    let t = step_until(&mut c, a, 12, 10, |t| t.datagrams > 2);
    let welcome = t.welcome.as_ref().unwrap_or_else(|| panic!("{t:?}"));
    assert_eq!(welcome.avatar, w.avatar, "the same avatar as before");
    assert!(t.datagrams > 2, "snapshots flow to her again: {t:?}");
    let fresh = t.resume.as_ref().expect("a fresh ticket with the Welcome");
    assert_eq!(fresh.shard, adopter);
    assert!(
        fresh.shards.iter().all(|(s, _)| *s != ShardId(0)),
        "the dead shard is not offered to come back through: {fresh:?}"
    );
    let world = &mut c.shards[a].world;
    let e = world.resource::<NetIndex>().0[&w.avatar];
    assert_eq!(
        world.get::<Avatar>(e).map(|a| a.conn),
        Some(ConnId(12)),
        "the avatar is driven by the resumed connection"
    );
    assert!(world.get::<AwaitingClient>(e).is_none());

    // The old ticket cannot take the avatar from the connection that plays it.
    hello(&mut c.shards[a], 13, "", None, Some(&r.ticket));
    let t = step_until(&mut c, a, 13, 5, |t| t.error.is_some());
    assert_eq!(
        t.error.as_ref().map(|e| e.0),
        Some(ErrorCode::ResumeFailed),
        "{t:?}"
    );
    let world = &mut c.shards[a].world;
    assert_eq!(world.get::<Avatar>(e).map(|a| a.conn), Some(ConnId(12)));
}

#[test]
fn a_bad_ticket_or_a_player_who_is_gone_is_told_to_log_in_anew() {
    let mut c = cluster(2);
    let (_, r) = log_in(&mut c, 1, "bob");
    let refused = |c: &mut LocalCluster, conn: u64, ticket: &[u8]| {
        hello(&mut c.shards[1], conn, "", None, Some(ticket));
        let t = step_until(c, 1, conn, 5, |t| t.error.is_some());
        t.error.clone().unwrap_or_else(|| panic!("refused: {t:?}"))
    };
    let mut forged = r.ticket.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let (code, why) = refused(&mut c, 10, &forged);
    assert_eq!(code, ErrorCode::ResumeFailed, "{why}");
    let foreign = ResumeKeys::new(b"another cluster's secret").sign(
        &zonescaler_shared::resume::ResumeTicket {
            account: "bob".into(),
            avatar: NetId(1),
            shard: ShardId(0),
            expires_ms: u64::MAX,
        },
    );
    let (code, why) = refused(&mut c, 11, &foreign);
    assert_eq!(code, ErrorCode::ResumeFailed, "{why}");
    assert!(why.contains("does not hold"), "the reason says so: {why}");

    // Bob quits: his avatar and his seat go. His ticket still verifies, but resumes nothing.
    c.shards[0].push_event(NetEvent::Disconnected {
        conn: ConnId(1),
        reason: "quit".into(),
    });
    for _ in 0..3 {
        c.step();
    }
    assert_eq!(c.master.player("bob"), None);
    let (code, why) = refused(&mut c, 12, &r.ticket);
    assert_eq!(code, ErrorCode::ResumeFailed, "{why}");
    assert!(why.contains("log in again"), "{why}");
}
