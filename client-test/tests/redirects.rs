//! The swarm follows its avatars from shard to shard over real QUIC connections, against scripted
//! fake shards: a handoff redirect mid-session, a redirected login, a redirect to nowhere, and the
//! border scenario's scouting of the cell map.

mod common;

use common::{Answer, FakeShard, fake_shard, swarm_config, two_shard_map, unix_ms_now};
use std::sync::Arc;
use zonescaler_bots::Scenario;
use zonescaler_bots::report::Report;
use zonescaler_bots::swarm::{self, SCOUT_ACCOUNT, SwarmConfig};
use zonescaler_shared::ShardId;
use zonescaler_shared::protocol::*;
use zonescaler_shared::ticket::{LoginKeys, TicketSigner};

const HANDOFF_TOKEN: &[u8] = b"avatar 7";

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

/// The redirect token of each `Hello` a fake shard saw, in order.
fn tokens(seen: &common::Seen) -> Vec<Option<&[u8]>> {
    seen.hellos.iter().map(|h| h.token.as_deref()).collect()
}

async fn run(cfg: SwarmConfig) -> Report {
    swarm::run(cfg).await.expect("the swarm runs")
}

/// A border run of `bots` bots named `accounts`-N against `a`, the test acting as the account
/// service (the shard would verify with the public half, returned beside the report).
async fn signed_border_run(a: &FakeShard, bots: usize, accounts: &str) -> (Report, LoginKeys) {
    let signer = TicketSigner::from_seed("test-key", [7; 32]).expect("a seeded key");
    let ring = signer.public_keys();
    let cfg = SwarmConfig {
        login: Some(Arc::new(signer)),
        accounts: accounts.into(),
        ..swarm_config(a.addr, bots, Scenario::Border)
    };
    (run(cfg).await, ring)
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
        tokens(&b),
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
    let signer = TicketSigner::from_seed("test-key", [9; 32]).expect("a seeded key");
    let cfg = SwarmConfig {
        login: Some(Arc::new(signer)),
        ..swarm_config(a.addr, 2, Scenario::Wander)
    };
    let r = run(cfg).await;
    assert!(r.errors.is_empty(), "{r:?}");
    assert_eq!(r.bots_connected, 2, "{r:?}");
    assert_eq!(r.handoffs, 0, "a login redirect is no handoff: {r:?}");
    assert!(r.snapshots_total > 30, "{r:?}");
    let (a, b) = (
        a.seen.lock().expect("not poisoned"),
        b.seen.lock().expect("not poisoned"),
    );
    assert!(
        a.hellos
            .iter()
            .all(|h| h.ticket.is_some() && h.token.is_none()),
        "a first login carries the bot's ticket: {:?}",
        a.hellos
    );
    assert_eq!(
        b.hellos.len(),
        2,
        "both bots log in at the shard they were sent to"
    );
    assert!(
        b.hellos
            .iter()
            .all(|h| h.ticket.is_none() && h.token.as_deref() == Some(&b"spawn here"[..])),
        "a redirected login carries the redirect's token, not the ticket: {:?}",
        b.hellos
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
    let (r, ring) = signed_border_run(&a, 3, "bot").await;
    assert_eq!(r.scenario, "border");
    assert_eq!(r.bots_connected, 3, "{r:?}");
    assert!(r.errors.is_empty(), "every bot has a border to walk: {r:?}");
    let a = a.seen.lock().expect("not poisoned");
    let names: Vec<&str> = a.hellos.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(
        names[0], SCOUT_ACCOUNT,
        "the scout logs in first: {names:?}"
    );
    assert_eq!(names.len(), 4, "{names:?}");
    let now_ms = unix_ms_now();
    let tickets: Vec<_> = a
        .hellos
        .iter()
        .map(|h| {
            let bytes = h.ticket.as_deref().expect("every login carries a ticket");
            let t = ring
                .verify(bytes, now_ms)
                .expect("the ticket verifies with the public key and has not expired");
            assert_eq!(
                t.account, h.name,
                "the ticket is for the account the bot names"
            );
            assert!(
                t.expires_ms > now_ms + 3_600_000,
                "a ticket outlives the run by hours: {t:?}"
            );
            t
        })
        .collect();
    assert_eq!(
        tickets[0].spawn, None,
        "the scout lets the shard pick where it starts"
    );
    let mut xs = Vec::new();
    for (t, h) in tickets[1..].iter().zip(&a.hellos[1..]) {
        let p = t
            .spawn
            .expect("a border bot's ticket starts it on its walk")
            .to_vec3();
        assert!(
            p.x.abs() <= 10.01 && p.z.abs() <= 90.0,
            "{} starts on its walk, within 10 m of the border at x = 0, away from the corners: {p}",
            h.name
        );
        xs.push(p.x);
    }
    assert!(
        xs.iter().any(|x| x.abs() < 9.5),
        "the bots start part-way along their walks, not all at an end, so they do not cross in \
         step: {xs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_login_key_bots_log_in_without_tickets() {
    let a = fake_shard(two_shard_map(), |_, _| Answer::Play {
        redirect_after: None,
    });
    let r = run(swarm_config(a.addr, 2, Scenario::Border)).await;
    assert_eq!(r.bots_connected, 2, "{r:?}");
    let a = a.seen.lock().expect("not poisoned");
    assert!(
        a.hellos.iter().all(|h| h.ticket.is_none()),
        "no key, no tickets: {:?}",
        a.hellos
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
    let a = a.seen.lock().expect("not poisoned");
    assert_eq!(
        a.hellos.iter().map(|h| h.name.as_str()).collect::<Vec<_>>(),
        [SCOUT_ACCOUNT],
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swarm_logs_in_under_its_own_account_prefix_tickets_included() {
    let a = fake_shard(two_shard_map(), |_, _| Answer::Play {
        redirect_after: None,
    });
    let (r, ring) = signed_border_run(&a, 2, "red").await;
    assert_eq!(r.bots_connected, 2, "{r:?}");
    let a = a.seen.lock().expect("not poisoned");
    let mut names: Vec<&str> = a.hellos.iter().map(|h| h.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["red-0", "red-1", "red-scout"]);
    let now_ms = unix_ms_now();
    for h in &a.hellos {
        let t = ring
            .verify(h.ticket.as_deref().expect("a ticket"), now_ms)
            .expect("valid");
        assert_eq!(t.account, h.name, "each ticket names the prefixed account");
    }
}

/// Shard A tells its bot after 5 inputs that a redirect to B may follow (`Prepare`), and
/// redirects it after `redirect_after` inputs (never with `None`).
fn preparing_shard(b: &FakeShard, redirect_after: Option<u64>) -> FakeShard {
    let redirect = redirect_to(b, HANDOFF_TOKEN);
    let prepare = Prepare {
        shard: redirect.shard,
        addr: redirect.addr.clone(),
    };
    fake_shard(two_shard_map(), move |_, _| Answer::PlayPrepared {
        prepare_after: 5,
        prepare: prepare.clone(),
        redirect_after: redirect_after.map(|n| (n, redirect.clone())),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_told_a_redirect_may_come_connects_ahead_and_sends_only_its_hello_then() {
    let b = target_shard();
    let a = preparing_shard(&b, Some(30));
    let r = run(swarm_config(a.addr, 1, Scenario::Wander)).await;
    assert!(r.errors.is_empty(), "{r:?}");
    assert_eq!((r.handoffs, r.redirects_prepared), (1, 1), "{r:?}");
    assert_eq!(
        r.handoffs_preconnected, 1,
        "the redirect went over the connection opened on the Prepare: {r:?}"
    );
    let (a, b) = (
        a.seen.lock().expect("not poisoned"),
        b.seen.lock().expect("not poisoned"),
    );
    let [(_, connected)] = b.connected.as_slice() else {
        panic!("one connection to shard B: {b:?}");
    };
    let [redirected] = a.redirected.as_slice() else {
        panic!("one redirect from shard A: {a:?}");
    };
    assert!(
        connected < redirected,
        "the bot's connection to B was up before A redirected it"
    );
    assert_eq!(
        tokens(&b),
        vec![Some(HANDOFF_TOKEN)],
        "its Hello, sent on the redirect, carries the token"
    );
    assert!(b.inputs.values().sum::<u64>() > 5, "it plays on B: {b:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_preconnect_a_bot_connects_only_when_redirected() {
    let b = target_shard();
    let a = preparing_shard(&b, Some(30));
    let cfg = SwarmConfig {
        preconnect: false,
        ..swarm_config(a.addr, 1, Scenario::Wander)
    };
    let r = run(cfg).await;
    assert!(r.errors.is_empty(), "{r:?}");
    assert_eq!(
        (r.handoffs, r.redirects_prepared, r.handoffs_preconnected),
        (1, 1, 0),
        "{r:?}"
    );
    let (a, b) = (
        a.seen.lock().expect("not poisoned"),
        b.seen.lock().expect("not poisoned"),
    );
    let ([(_, connected)], [redirected]) = (b.connected.as_slice(), a.redirected.as_slice()) else {
        panic!("one connection to B, one redirect from A: {a:?} {b:?}");
    };
    assert!(
        connected > redirected,
        "it connected to B after the redirect"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepare_without_a_redirect_costs_an_unused_connection_and_no_error() {
    let b = target_shard();
    let a = preparing_shard(&b, None);
    let r = run(swarm_config(a.addr, 1, Scenario::Wander)).await;
    assert!(r.errors.is_empty(), "{r:?}");
    assert_eq!(
        (r.handoffs, r.redirects_prepared, r.handoffs_preconnected),
        (0, 1, 0),
        "{r:?}"
    );
    let b = b.seen.lock().expect("not poisoned");
    assert_eq!(b.connected.len(), 1, "the bot connected ahead: {b:?}");
    assert!(b.hellos.is_empty(), "and never logged in there: {b:?}");
}
