//! A client that sends a shard one control message that does not decode, as its first message,
//! and waits for the shard to close the connection as `bad_message`. `.ci/metrics.sh` runs it
//! against one shard of a loaded cluster so that `zonescaler_decode_errors_total{channel="client"}`
//! and `zonescaler_connection_closes_total{reason="bad_message"}` move; it exits non-zero unless
//! the shard answered exactly so.
//!
//! `cargo run --release -p zonescaler-server --example garbage_client -- --connect 127.0.0.1:4433
//! --cert target/zonescaler-run/cluster.pem`

use anyhow::{Context, bail};
use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use zonescaler_net::quic;
use zonescaler_net::tls::ClientTrust;
use zonescaler_shared::protocol::ErrorCode;

/// The same junk `server/tests/quic_shard.rs` sends as a `Hello`: framed correctly, decodes to
/// nothing.
const GARBAGE: [u8; 64] = [9; 64];
/// How long connecting, and then waiting for the shard's close, may take on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(20);

/// Send a shard one undecodable control message and expect a `bad_message` close.
#[derive(Parser, Debug)]
struct Args {
    /// The shard's client address (host:port).
    #[arg(long)]
    connect: SocketAddr,
    /// PEM certificate to trust (`zonescaler up` writes `RUN_DIR/cluster.pem`).
    #[arg(long)]
    cert: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let trust = ClientTrust::from_pem_file(&args.cert)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let closed = rt.block_on(async {
        let endpoint = quic::client_endpoint_for(&trust, args.connect)?;
        let session = tokio::time::timeout(
            PATIENCE,
            quic::connect(&endpoint, args.connect, "localhost", &GARBAGE),
        )
        .await
        .context("connecting timed out")??;
        tokio::time::timeout(PATIENCE, session.closed())
            .await
            .context("the shard did not close the connection")
    })?;
    let code = closed.close_code().and_then(ErrorCode::from_close_code);
    if code != Some(ErrorCode::BadMessage) {
        bail!("expected a bad_message close, got: {closed}");
    }
    println!(
        "garbage_client: {} closed the connection as bad_message",
        args.connect
    );
    Ok(())
}
