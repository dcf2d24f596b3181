//! `meshara-bridge`: parses the command line, loads the configuration and runs a [`Bridge`]
//! until SIGINT or SIGTERM.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use meshara_bridge::{Bridge, Config, IdentitySource};

/// A Meshara bridge node: clearnet QUIC, Tor and I2P, relaying circuits between them.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file (TOML); `MESHARA_BRIDGE_*` variables override it.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// File holding the keystore passphrase (else `MESHARA_BRIDGE_PASSPHRASE`).
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
    /// Check the configuration and exit.
    #[arg(long)]
    check: bool,
}

fn passphrase(cli: &Cli) -> Result<Vec<u8>> {
    if let Some(path) = &cli.passphrase_file {
        return meshara_core::keystore::read_passphrase_file(path)
            .with_context(|| format!("reading the passphrase file {}", path.display()));
    }
    match std::env::var("MESHARA_BRIDGE_PASSPHRASE") {
        Ok(p) if !p.is_empty() => Ok(p.into_bytes()),
        _ => anyhow::bail!(
            "the keystore needs a passphrase: --passphrase-file FILE or MESHARA_BRIDGE_PASSPHRASE"
        ),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[tokio::main]
async fn main() -> Result<()> {
    let filter = std::env::var("MESHARA_BRIDGE_LOG").unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .init();
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref(), std::env::vars())?;
    if cli.check {
        if let Some(path) = &config.node.identity_file {
            let identity = meshara_core::keyfile::read_identity_file(path)
                .with_context(|| format!("node.identity_file {}", path.display()))?;
            tracing::info!(node = %identity.node_id(), "configuration is valid");
        } else {
            tracing::info!("configuration is valid");
        }
        return Ok(());
    }
    // With an identity file there is no keystore to unlock.
    let passphrase = match config.node.identity_file {
        Some(_) => Vec::new(),
        None => passphrase(&cli)?,
    };
    let bridge = Bridge::start(config, IdentitySource::Keystore(passphrase)).await?;
    tracing::info!(http = %bridge.http_addr(), node = %bridge.node().node_id(), "serving");
    shutdown_signal().await;
    tracing::info!("shutting down");
    bridge.shutdown().await;
    Ok(())
}
