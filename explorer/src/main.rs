//! `meshara-explorer`: the network explorer server and its tools.
#![allow(clippy::print_stdout, clippy::print_stderr)] // a command-line tool: stdout is its output

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use meshara_explorer::Explorer;
use meshara_explorer::config::Config;

#[derive(Parser)]
#[command(
    name = "meshara-explorer",
    version,
    about = "The Meshara network explorer"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the crawler and the web UI (config file, then MESHARA_EXPLORER_* overrides).
    Serve {
        /// TOML configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Check the configuration and the files it names (identity file, pinned peers and
        /// authorities), then exit.
        #[arg(long)]
        check: bool,
    },
    /// Loads a simulator topology (`meshara sim SCENARIO --topology FILE`) into the database,
    /// replacing the previous one, so the UI can show a network of that size.
    ImportSim {
        /// TOML configuration file (for the database).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The topology JSON.
        file: PathBuf,
    },
}

fn passphrase() -> anyhow::Result<Vec<u8>> {
    if let Ok(path) = std::env::var("MESHARA_EXPLORER_PASSPHRASE_FILE") {
        return meshara_core::keystore::read_passphrase_file(std::path::Path::new(&path))
            .with_context(|| format!("reading the passphrase file {path}"));
    }
    match std::env::var("MESHARA_EXPLORER_PASSPHRASE") {
        Ok(p) if !p.is_empty() => Ok(p.into_bytes()),
        _ => anyhow::bail!(
            "set MESHARA_EXPLORER_PASSPHRASE or MESHARA_EXPLORER_PASSPHRASE_FILE (unlocks the explorer node's keystore)"
        ),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MESHARA_EXPLORER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, check } => {
            let config = Config::load(config.as_deref(), std::env::vars())?;
            if check {
                if let Some(path) = &config.node.identity_file {
                    let id = meshara_core::keyfile::read_identity_file(path)
                        .with_context(|| format!("node.identity_file {}", path.display()))?;
                    println!("node {}", id.node_id());
                }
                println!("configuration is valid");
                return Ok(());
            }
            // With an identity file there is no keystore to unlock.
            let passphrase = match config.node.identity_file {
                Some(_) => Vec::new(),
                None => passphrase()?,
            };
            let explorer = Explorer::start(config, &passphrase).await?;
            println!("explorer  http://{}/", explorer.http_addr());
            if let Some(q) = explorer.node().quic_addr() {
                println!("node      {q}");
            }
            shutdown_signal().await;
            explorer.stop().await;
        }
        Command::ImportSim { config, file } => {
            let config = Config::load(config.as_deref(), std::env::vars())?;
            std::fs::create_dir_all(&config.data_dir)
                .with_context(|| format!("creating {}", config.data_dir.display()))?;
            let db = meshara_explorer::db::Db::connect(&config.database_url()).await?;
            let n = meshara_explorer::sim::import(&db, &file).await?;
            db.close().await;
            println!("imported {n} simulated nodes from {}", file.display());
        }
    }
    Ok(())
}

/// SIGINT (Ctrl-C) or SIGTERM (a container runtime stopping us).
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}
