//! A bot whose shard vanishes comes back by itself, against scripted fake shards over real QUIC:
//! it presents its resume ticket to another shard, follows that shard's redirect to its avatar's
//! new owner and plays on, reporting the failover gap; when the resume is refused it logs in
//! anew with its login ticket, and says so.

mod common;

use common::{Answer, FakeShard, fake_shard, swarm_config, two_shard_map};
use std::time::Duration;
use zonescaler_bots::Scenario;
use zonescaler_bots::report::Report;
use zonescaler_bots::swarm::{self, SHARD_SILENT_AFTER, SwarmConfig};
use zonescaler_shared::ShardId;
use zonescaler_shared::protocol::*;

const RESUME_TICKET: &[u8] = b"resume avatar 7";
const AVATAR_TOKEN: &[u8] = b"avatar 7, on shard 2";

/// Shard A: plays, hands out a resume ticket naming shard C (`via`) to come back through, and
/// goes silent after 10 inputs.
fn vanishing_shard(via: &FakeShard) -> FakeShard {
    let resume = Resume {
        shard: ShardId(1),
        ticket: RESUME_TICKET.to_vec(),
        shards: vec![(ShardId(3), via.addr.to_string())],
    };
    fake_shard(two_shard_map(), move |_, _| Answer::PlayThenVanish {
        resume: resume.clone(),
        vanish_after: 10,
    })
}

/// A run long enough to notice the silence, come back and play a while.
fn config(a: &FakeShard) -> SwarmConfig {
    SwarmConfig {
        duration: SHARD_SILENT_AFTER + Duration::from_millis(3_500),
        ..swarm_config(a.addr, 1, Scenario::Wander)
    }
}

async fn run(cfg: SwarmConfig) -> Report {
    swarm::run(cfg).await.expect("the swarm runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_whose_shard_vanished_resumes_through_another_and_reports_the_gap() {
    // B holds the avatar now; C sends resumes there.
    let b = fake_shard(two_shard_map(), |_, _| Answer::Play {
        redirect_after: None,
    });
    let to_b = Redirect {
        shard: ShardId(2),
        addr: b.addr.to_string(),
        token: AVATAR_TOKEN.to_vec(),
    };
    let c = fake_shard(two_shard_map(), move |_, _| Answer::Redirect(to_b.clone()));
    let a = vanishing_shard(&c);
    let r = run(config(&a)).await;
    assert_eq!(r.bots_connected, 1, "{r:?}");
    assert_eq!(
        (r.failovers, r.resumes, r.resumes_failed, r.relogins),
        (1, 1, 0, 0),
        "one lost shard, one resume: {r:?}"
    );
    assert_eq!(r.handoffs, 0, "a failover is no handoff: {r:?}");
    assert!(
        r.failover_gap_ms_max > 0.0 && r.failover_gap_ms_max < 3_000.0,
        "the gap is measured, from noticing the loss to the first snapshot from B: {r:?}"
    );
    assert_eq!(
        r.errors.get("connection: shard silent"),
        Some(&1),
        "the silence is what the bot noticed: {r:?}"
    );
    let (c, b) = (
        c.seen.lock().expect("not poisoned"),
        b.seen.lock().expect("not poisoned"),
    );
    let resumes: Vec<_> = c.hellos.iter().map(|h| h.resume.as_deref()).collect();
    assert_eq!(
        resumes,
        vec![Some(RESUME_TICKET)],
        "the bot presents its resume ticket to the shard the ticket named: {:?}",
        c.hellos
    );
    assert!(c.hellos[0].ticket.is_none() && c.hellos[0].token.is_none());
    let tokens: Vec<_> = b.hellos.iter().map(|h| h.token.as_deref()).collect();
    assert_eq!(
        tokens,
        vec![Some(AVATAR_TOKEN)],
        "and follows the redirect to its avatar's new owner"
    );
    assert!(
        b.inputs.values().sum::<u64>() > 10,
        "it plays on there: {b:?}"
    );
    assert!(
        r.render().contains("failovers       1  gap p50"),
        "{}",
        r.render()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_whose_resume_is_refused_logs_in_anew() {
    // C refuses the resume (its avatar is gone) and takes the fresh login.
    let c = fake_shard(two_shard_map(), |hello, _| {
        if hello.resume.is_some() {
            Answer::Refuse(ErrorCode::ResumeFailed)
        } else {
            Answer::Play {
                redirect_after: None,
            }
        }
    });
    let a = vanishing_shard(&c);
    let r = run(config(&a)).await;
    assert_eq!(
        (r.failovers, r.resumes, r.resumes_failed, r.relogins),
        (1, 0, 1, 1),
        "the refused resume is counted, and the fresh login that brought it back: {r:?}"
    );
    assert!(r.failover_gap_ms_max > 0.0, "{r:?}");
    assert_eq!(
        r.errors.get("resume: resume_failed"),
        Some(&1),
        "{:?}",
        r.errors
    );
    let c = c.seen.lock().expect("not poisoned");
    assert_eq!(c.hellos.len(), 2, "{:?}", c.hellos);
    assert!(c.hellos[0].resume.is_some());
    assert!(
        c.hellos[1].resume.is_none() && c.hellos[1].token.is_none(),
        "then a login like the first: {:?}",
        c.hellos[1]
    );
    assert!(c.inputs.values().sum::<u64>() > 10, "{c:?}");
}
