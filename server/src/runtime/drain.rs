//! `zonescaler drain --shard N`: drain one shard of a running cluster through the master's HTTP
//! API (`POST /api/shards/N/drain`, with the operator's API token), then follow the drain on
//! `GET /api/cluster` until the shard has left the cluster (it exits 0 by itself once it owns no
//! cell and no entity), printing what it still holds.

use super::cli::SECRET_ENV;
use super::up::http_request;
use anyhow::{Context, bail};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How long one API call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the drain's progress is polled.
const POLL_EVERY: Duration = Duration::from_secs(1);
/// How often an unchanged progress line is said again.
const SAY_AGAIN_EVERY: Duration = Duration::from_secs(10);

/// `zonescaler drain`.
#[derive(Clone, Debug, clap::Args)]
pub struct DrainArgs {
    /// The shard to drain (its id, as `/api/cluster` and `zonescaler up` show it). Shard 0
    /// holds the master role and cannot be drained.
    #[arg(long)]
    pub shard: u16,
    /// The master's HTTP API (`zonescaler up` serves it on 127.0.0.1:8080).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: String,
    /// File holding the operator's API token (`zonescaler up` writes RUN_DIR/api.token). If it
    /// does not exist, the token is derived from the cluster secret in
    /// `ZONESCALER_CLUSTER_SECRET`.
    #[arg(long, default_value = "target/zonescaler-run/api.token")]
    pub token_file: PathBuf,
    /// Return once the drain has started instead of following it until the shard left.
    #[arg(long)]
    pub no_wait: bool,
    /// Stop following after this many seconds (the drain itself goes on) and exit 1.
    #[arg(long, default_value_t = 600)]
    pub timeout_s: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct View {
    shards: Vec<Row>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
struct Row {
    id: u16,
    alive: bool,
    draining: bool,
    cells: usize,
    owned_entities: u32,
    in_transit: u32,
    clients: u32,
}

/// The operator's token: the file's, else the one the secret in the environment gives.
fn token(args: &DrainArgs) -> anyhow::Result<String> {
    match std::fs::read_to_string(&args.token_file) {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_owned()),
        _ => match std::env::var(SECRET_ENV) {
            Ok(secret) if !secret.is_empty() => {
                Ok(zonescaler_shared::token::api_token(secret.as_bytes()))
            }
            _ => bail!(
                "no API token: {} does not exist and {SECRET_ENV} is not set (pass --token-file \
                 RUN_DIR/api.token from `zonescaler up`, or the cluster's secret in \
                 {SECRET_ENV})",
                args.token_file.display()
            ),
        },
    }
}

/// The error text of an API answer (its JSON `error`, else the body).
fn error_text(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_owned())
}

/// What is left on the shard, for people.
fn progress(r: &Row) -> String {
    format!(
        "shard {}: {} cells, {} entities ({} in handoff), {} clients left",
        r.id, r.cells, r.owned_entities, r.in_transit, r.clients
    )
}

/// Drain the shard and (unless `--no-wait`) follow it until it left.
pub fn drain(args: &DrainArgs) -> anyhow::Result<()> {
    let token = token(args)?;
    let path = format!("/api/shards/{}/drain", args.shard);
    let (code, body) = http_request(&args.http, "POST", &path, Some(&token), CALL_TIMEOUT)
        .with_context(|| format!("cannot reach the master's API at http://{}", args.http))?;
    if !(200..300).contains(&code) {
        bail!(
            "the master refused to drain shard {} (HTTP {code}): {}",
            args.shard,
            error_text(&body)
        );
    }
    println!("zonescaler drain: shard {} is draining", args.shard);
    if args.no_wait {
        return Ok(());
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.timeout_s);
    let mut said: Option<(Row, Instant)> = None;
    loop {
        std::thread::sleep(POLL_EVERY);
        let view = match http_request(&args.http, "GET", "/api/cluster", None, CALL_TIMEOUT) {
            Ok((200, body)) => serde_json::from_slice::<View>(&body)
                .context("the master's /api/cluster is not a cluster view")?,
            Ok((code, body)) => bail!("GET /api/cluster: HTTP {code}: {}", error_text(&body)),
            Err(e) => bail!("GET /api/cluster: {e:#}"),
        };
        let Some(row) = view.shards.iter().find(|r| r.id == args.shard) else {
            println!(
                "zonescaler drain: shard {} drained and left the cluster after {}s",
                args.shard,
                start.elapsed().as_secs()
            );
            return Ok(());
        };
        if !row.alive {
            bail!(
                "shard {} died while draining (its cells wait for failover)",
                args.shard
            );
        }
        let again = said
            .as_ref()
            .is_none_or(|(r, at)| r != row || at.elapsed() >= SAY_AGAIN_EVERY);
        if again {
            println!("zonescaler drain: {}", progress(row));
            said = Some((row.clone(), Instant::now()));
        }
        if Instant::now() >= deadline {
            bail!(
                "shard {} still holds something after {}s ({}); the drain goes on (GET /api/cluster)",
                args.shard,
                args.timeout_s,
                progress(row)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_servers_error_is_said_not_its_json() {
        assert_eq!(
            error_text(br#"{"error":"no shard 9 in the cluster"}"#),
            "no shard 9 in the cluster"
        );
        assert_eq!(error_text(b"  plain text\n"), "plain text");
    }

    #[test]
    fn without_a_token_file_or_secret_the_error_says_where_to_get_one() {
        let args = DrainArgs {
            shard: 2,
            http: "127.0.0.1:1".into(),
            token_file: PathBuf::from("/nonexistent/api.token"),
            no_wait: true,
            timeout_s: 1,
        };
        // Only when the environment has no secret (a CI job might set one).
        if std::env::var(SECRET_ENV).is_err() {
            let e = token(&args).expect_err("no token").to_string();
            assert!(e.contains("api.token") && e.contains(SECRET_ENV), "{e}");
        }
    }
}
