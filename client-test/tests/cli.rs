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
        5,
        "four histograms, one timeline"
    );
    assert!(page.contains("2 connected of 2 requested (0 failed)"));
    assert!(!page.contains("http://") && !page.contains("https://") && !page.contains("<script"));
    drop(shard);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A crowd run: the scout learns the world, every bot's ticket starts it inside the hot spot's
/// disc, and the report names the hot spot; a hot spot outside the world stops the run before
/// any bot logs in, with the flag named.
#[test]
fn crowd_bots_start_in_their_hot_spot_and_one_outside_the_world_is_refused() {
    let dir = std::env::temp_dir().join(format!("zs-bots-crowd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (key, public) = (dir.join("login.key"), dir.join("login.pub"));
    TicketSigner::generate_files("bots-test", &key, &public).expect("key files");
    let json = dir.join("report.json");
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
    let key_arg = key.to_str().expect("utf-8 temp path");
    let argv = |hotspot: &'static str| {
        let mut v = vec![
            "bots",
            "--connect",
            &addr,
            "--insecure",
            "--bots",
            "8",
            "--scenario",
            "crowd",
            "--hotspot",
            hotspot,
            "--radius",
            "20",
            "--duration",
            "500ms",
            "--ramp",
            "10ms",
            "--threads",
            "1",
            "--quiet",
            "--login-key",
            key_arg,
        ];
        v.extend(["--report-json", json.to_str().expect("utf-8 temp path")]);
        Cmd::try_parse_from(v).expect("valid flags").args
    };
    cli::run(argv("50,-40"), &[BotGame::demo()]).expect("the run succeeds");
    let ring = LoginKeys::load(&public).expect("the public half loads");
    let spawns: Vec<(String, Option<[f32; 3]>)> = shard
        .seen
        .lock()
        .expect("not poisoned")
        .hellos
        .iter()
        .map(|h| {
            let t = ring
                .verify(h.ticket.as_deref().expect("a ticket"), unix_ms_now())
                .expect("valid");
            let at = t.spawn.map(|q| q.to_vec3().to_array());
            (t.account, at)
        })
        .collect();
    assert_eq!(spawns.len(), 9, "the scout and 8 bots: {spawns:?}");
    assert_eq!(
        spawns[0],
        ("bot-scout".into(), None),
        "the scout starts anywhere"
    );
    for (account, at) in &spawns[1..] {
        let [x, _, z] = at.unwrap_or_else(|| panic!("{account} asks for a start"));
        let d = ((x - 50.0).powi(2) + (z + 40.0).powi(2)).sqrt();
        assert!(d <= 20.01, "{account} starts {d} m from the hot spot");
    }
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("written")).expect("JSON");
    assert_eq!(report["scenario"], "crowd");
    assert_eq!(report["hotspot"]["x"], 50.0, "{report}");
    assert_eq!(report["hotspot"]["radius_m"], 20.0, "{report}");

    let e = cli::run(argv("500,0"), &[BotGame::demo()]).expect_err("outside the world");
    assert!(
        format!("{e:#}").contains("--hotspot 500,0 is outside the world"),
        "{e:#}"
    );
    drop(shard);
    let _ = std::fs::remove_dir_all(&dir);
}
