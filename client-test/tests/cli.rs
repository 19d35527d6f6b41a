//! The command line end to end, as a game server binary embedding it would run it: flags in,
//! a swarm against a (fake) shard, tickets minted from a key file, and both reports on disk.

mod common;

use clap::Parser;
use common::{Answer, fake_shard, two_shard_map, unix_ms_now};
use zonescaler_bots::BotGame;
use zonescaler_bots::cli::{self, BotArgs};
use zonescaler_shared::ticket::{LoginKeys, TicketSigner};

#[derive(Parser, Debug)]
struct Cmd {
    #[command(flatten)]
    args: BotArgs,
}

#[test]
fn cli_run_logs_in_with_minted_tickets_and_writes_both_reports() {
    let dir = std::env::temp_dir().join(format!("zs-bots-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (key, public) = (dir.join("login.key"), dir.join("login.pub"));
    TicketSigner::generate_files("bots-test", &key, &public).expect("key files");
    let (json, html) = (dir.join("report.json"), dir.join("report.html"));
    // The shard lives on a runtime of its own: `cli::run` builds the bots' runtime itself.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let shard = rt.block_on(async {
        fake_shard(two_shard_map(), |_, _| Answer::Play {
            redirect_after: None,
        })
    });
    let addr = shard.addr.to_string();
    let argv = [
        "bots",
        "--connect",
        &addr,
        "--insecure",
        "--bots",
        "2",
        "--scenario",
        "border",
        "--duration",
        "1s",
        "--ramp",
        "10ms",
        "--threads",
        "1",
        "--quiet",
        "--login-key",
        key.to_str().expect("utf-8 temp path"),
        "--report-json",
        json.to_str().expect("utf-8 temp path"),
        "--report-html",
        html.to_str().expect("utf-8 temp path"),
    ];
    let args = Cmd::try_parse_from(argv).expect("valid flags").args;
    cli::run(args, &[BotGame::demo()]).expect("the run succeeds");

    let ring = LoginKeys::load(&public).expect("the public half loads");
    let seen = shard.seen.lock().expect("not poisoned");
    let accounts: Vec<String> = seen
        .hellos
        .iter()
        .map(|h| {
            let t = h.ticket.as_deref().expect("a ticket");
            ring.verify(t, unix_ms_now())
                .expect("a shard with the public key accepts it")
                .account
        })
        .collect();
    assert_eq!(
        accounts,
        ["bot-scout", "bot-0", "bot-1"],
        "the scout, then every bot, each as its own account"
    );
    drop(seen);

    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("the JSON report was written"))
            .expect("it is JSON");
    assert_eq!(report["bots_connected"], 2, "{report}");
    assert_eq!(report["game"], "demo");
    let timeline = report["timeline"].as_array().expect("a timeline");
    let connected: Vec<u64> = timeline
        .iter()
        .map(|p| p["connected"].as_u64().expect("a count"))
        .collect();
    assert!(
        connected.iter().any(|n| *n >= 1) && connected.iter().all(|n| *n <= 2),
        "bots show up in the timeline, each at most once per second: {connected:?}"
    );
    let page = std::fs::read_to_string(&html).expect("the HTML report was written");
    assert!(page.starts_with("<!DOCTYPE html>"));
    assert_eq!(
        page.matches("<svg").count(),
        4,
        "three histograms, one timeline"
    );
    assert!(page.contains("2 connected of 2 requested (0 failed)"));
    assert!(!page.contains("http://") && !page.contains("https://") && !page.contains("<script"));
    drop(shard);
    let _ = std::fs::remove_dir_all(&dir);
}
