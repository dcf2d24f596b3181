//! An I2P-only Meshara node that sends one end-to-end encrypted message to a node on clearnet
//! and waits for its acknowledgement. Every connection it makes goes through its I2P router
//! (`route_all_via = i2p`), so it reaches clearnet nodes only through a bridge. The
//! whole-system test (tests/system/run.py) runs it; it is also the shortest complete example
//! of an I2P-only application node.
//!
//! ```text
//! cargo run -p meshara-bridge --example i2p_send -- --sam 127.0.0.1:7656 --data-dir /tmp/leaf \
//!     --bridge <nodeid>@i2p://<52 base32>.b32.i2p:7340 --to <nodeid> --text hello
//! ```
#![allow(clippy::print_stdout)] // a command-line example: stdout is its output

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use meshara_core::net::Timeouts;
use meshara_core::{Identity, NodeBuilder, NodeConfig, NodeId, PeerAddr, Privacy, Transport};
use meshara_i2p::{I2pConfig, I2pTransport};

/// Send one message from an I2P-only node through a bridge.
#[derive(Debug, Parser)]
struct Args {
    /// The I2P router's SAM bridge.
    #[arg(long, default_value = "127.0.0.1:7656")]
    sam: SocketAddr,
    /// Where the node keeps its I2P destination.
    #[arg(long)]
    data_dir: PathBuf,
    /// The bridge: `<nodeid>@i2p://<name>.b32.i2p:<port>`.
    #[arg(long)]
    bridge: String,
    /// The recipient's NodeId.
    #[arg(long)]
    to: NodeId,
    /// The message.
    #[arg(long)]
    text: String,
    /// I2CP session option `key=value` (repeatable), e.g. `inbound.length=0` on a test router.
    #[arg(long = "session-option")]
    session_options: Vec<String>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MESHARA_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let bridge: PeerAddr = args.bridge.parse().context("--bridge")?;
    if bridge.address.transport != Transport::I2p || bridge.node.is_none() {
        bail!("--bridge must be <nodeid>@i2p://<name>.b32.i2p:<port>");
    }
    let started = Instant::now();
    let mut config = I2pConfig::new(args.sam, &args.data_dir);
    config.session_options = args.session_options;
    std::fs::create_dir_all(&args.data_dir)?;
    let i2p = I2pTransport::start(config)
        .await
        .context("opening an I2P session")?;
    let timeouts = Timeouts {
        connect: Duration::from_secs(60),
        ..Timeouts::default()
    };
    let node = NodeBuilder::new()
        .config(NodeConfig {
            listen_quic: None,
            advertise: vec![i2p.address()],
            bootstrap: vec![bridge],
            route_all_via: Some(Transport::I2p),
            target_peers: 0,
            timeouts,
            ..NodeConfig::default()
        })
        .identity(Identity::generate())
        .dialer(Transport::I2p, i2p.dialer())
        .start()
        .await?;
    let _serving = i2p.serve(node.clone());
    let deadline = Duration::from_secs(args.timeout_secs);
    // Retried while the bridge connection and the lookup of the recipient settle.
    let result = tokio::time::timeout(deadline, async {
        loop {
            match node
                .send_private_with(args.to, "text/plain", args.text.clone(), Privacy::I2p)
                .await
            {
                Ok(pending) => match pending.confirmed().await {
                    Ok(delivered) => return Ok::<_, anyhow::Error>(delivered),
                    Err(e) => tracing::info!(error = %e, "not delivered yet"),
                },
                Err(e) => tracing::info!(error = %e, "cannot send yet"),
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    })
    .await;
    let outcome = match result {
        Ok(Ok(delivered)) => {
            println!(
                "{}",
                serde_json::json!({
                    "delivered": true,
                    "from": node.node_id().to_string(),
                    "latency_ms": delivered.latency.as_secs_f64() * 1e3,
                    "elapsed_s": started.elapsed().as_secs_f64(),
                })
            );
            Ok(())
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(anyhow::anyhow!(
            "not delivered within {} s",
            args.timeout_secs
        )),
    };
    node.stop().await;
    i2p.close().await;
    outcome
}
