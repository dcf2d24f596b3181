//! `meshara-authority`: the update authority server and its offline tools.
#![allow(clippy::print_stdout, clippy::print_stderr)] // a command-line tool: stdout is its output

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use meshara_authority::config::{Config, read_passphrase_file};
use meshara_authority::keys::{self, AnyDraft};
use meshara_authority::{Authority, auth, db, names};

#[derive(Parser)]
#[command(
    name = "meshara-authority",
    version,
    about = "The Meshara update authority"
)]
struct Cli {
    /// File holding the keystore passphrase (else MESHARA_AUTHORITY_KEY_PASSPHRASE, else
    /// `passphrase_file` in the configuration or MESHARA_AUTHORITY_KEY_PASSPHRASE_FILE).
    /// Refused when every user may read it.
    #[arg(long, global = true)]
    passphrase_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the server (config file, then MESHARA_AUTHORITY_* overrides).
    Serve {
        /// TOML configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Check the configuration and the files it names (identity file, pinned peers,
        /// admin token file), then exit.
        #[arg(long)]
        check: bool,
    },
    /// Sets up a new authority in a data directory: N server-held keys and a root signed by
    /// all of them.
    Init {
        /// Data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Keys to create.
        #[arg(long, default_value_t = 3)]
        keys: usize,
        /// Signatures needed for a release and for a new root.
        #[arg(long, default_value_t = 2)]
        threshold: u32,
        /// Days the root is valid.
        #[arg(long, default_value_t = 365)]
        valid_days: u64,
        /// Do nothing (and succeed) when the data directory already holds a root: for an
        /// init step that runs before every start, such as a Kubernetes init container.
        #[arg(long)]
        exists_ok: bool,
    },
    /// Creates an API token (printed once).
    Token {
        /// TOML configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Who holds it.
        #[arg(long)]
        name: String,
        /// admin, publisher, signer or viewer.
        #[arg(long)]
        role: String,
    },
    /// Checks the audit log's hash chain; exits 1 if an entry was edited, inserted or
    /// deleted, and prints the newest entry's hash (record it elsewhere).
    AuditVerify {
        /// TOML configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Creates a signing key in a keystore file (for an offline signer).
    Keygen {
        /// Keystore file to create.
        #[arg(long)]
        out: PathBuf,
    },
    /// Signs an exported draft (a release or a root rotation) with a key kept offline;
    /// prints the signature to attach.
    Sign {
        /// The draft: JSON from GET /api/v1/releases/{id}/draft or
        /// /api/v1/roots/{sequence}/draft.
        #[arg(long)]
        draft: PathBuf,
        /// The keystore holding the signing key.
        #[arg(long)]
        key: PathBuf,
        /// The signed root you trust (e.g. the root.pb your nodes ship): a root draft's keys
        /// are then marked as listed there or NEW.
        #[arg(long)]
        root: Option<PathBuf>,
    },
}

/// The keystore passphrase: `--passphrase-file`, else `MESHARA_AUTHORITY_KEY_PASSPHRASE`,
/// else the configured file (`passphrase_file`, `MESHARA_AUTHORITY_KEY_PASSPHRASE_FILE`).
fn passphrase(flag: Option<&Path>, configured: Option<&Path>) -> anyhow::Result<Vec<u8>> {
    if let Some(path) = flag {
        return Ok(read_passphrase_file(path)?);
    }
    match std::env::var("MESHARA_AUTHORITY_KEY_PASSPHRASE") {
        Ok(p) if !p.is_empty() => return Ok(p.into_bytes()),
        _ => {}
    }
    let env_file = std::env::var_os("MESHARA_AUTHORITY_KEY_PASSPHRASE_FILE").map(PathBuf::from);
    match configured.or(env_file.as_deref()) {
        Some(path) => Ok(read_passphrase_file(path)?),
        None => bail!(
            "the keystores need a passphrase: --passphrase-file FILE, \
             MESHARA_AUTHORITY_KEY_PASSPHRASE or MESHARA_AUTHORITY_KEY_PASSPHRASE_FILE"
        ),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MESHARA_AUTHORITY_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let flag = cli.passphrase_file.as_deref();
    match cli.command {
        Command::Serve { config, check } => {
            let config = Config::load(config.as_deref(), std::env::vars())?;
            if check {
                if let Some(path) = &config.node.identity_file {
                    let id = meshara_core::keyfile::read_identity_file(path)
                        .with_context(|| format!("node.identity_file {}", path.display()))?;
                    println!("node {}", id.node_id());
                }
                if let Some(path) = &config.passphrase_file {
                    read_passphrase_file(path)
                        .with_context(|| format!("passphrase_file {}", path.display()))?;
                }
                if let Some(path) = &config.admin_token_file {
                    let token = read_passphrase_file(path)
                        .with_context(|| format!("admin_token_file {}", path.display()))?;
                    let ok = std::str::from_utf8(&token)
                        .is_ok_and(|t| auth::is_token_shaped(t) && t.len() >= 36);
                    if !ok {
                        bail!(
                            "admin_token_file {}: a token is `mat_` and 32..=124 more letters or digits",
                            path.display()
                        );
                    }
                }
                println!("configuration is valid");
                return Ok(());
            }
            let passphrase = passphrase(flag, config.passphrase_file.as_deref())?;
            let authority = Authority::start(config.clone(), &passphrase).await?;
            let token_file = config.data_dir.join(meshara_authority::ADMIN_TOKEN_FILE);
            println!("meshara-authority");
            println!("  dashboard + admin API: http://{}/", authority.http_addr());
            // The form `bootstrap` settings take: `<nodeid>@quic://host:port`.
            match authority.node().quic_addr() {
                Some(addr) => println!("  node: {addr}"),
                None => println!("  node: {} (no QUIC listener)", authority.node().node_id()),
            }
            if token_file.exists() {
                println!("  first admin token: {}", token_file.display());
            }
            shutdown_signal().await;
            tracing::info!("shutting down");
            authority.stop().await;
        }
        Command::Init {
            data_dir,
            keys: n,
            threshold,
            valid_days,
            exists_ok,
        } => {
            if exists_ok && data_dir.join("root.pb").exists() {
                println!(
                    "authority already set up in {} (root.pb exists): nothing to do",
                    data_dir.display()
                );
                return Ok(());
            }
            std::fs::create_dir_all(&data_dir)?;
            let signed = keys::init(
                &data_dir,
                n,
                threshold,
                &passphrase(flag, None)?,
                valid_days,
            )?;
            let root = meshara_core::update::Root::decode(&signed.body)?;
            println!("authority set up in {}", data_dir.display());
            println!(
                "  root: {} ({} keys, {threshold}-of-{n})",
                data_dir.join("root.pb").display(),
                root.keys.len()
            );
            for k in &root.keys {
                println!("  key {}: {}", names::escape(&k.name), k.key);
            }
            println!(
                "ship root.pb with your application: nodes trust it and every root it rotates to"
            );
        }
        Command::Token { config, name, role } => {
            let role: auth::Role = role.parse().map_err(anyhow::Error::msg)?;
            names::check(names::NameKind::Token, &name)?;
            let config = Config::load(config.as_deref(), std::env::vars())?;
            let db = db::Db::connect(&config.database_url()).await?;
            let (id, token) = auth::create_token(&db, &name, role).await?;
            db.audit(
                db::Actor::internal("cli"),
                "token.create",
                &id,
                &format!("{name} as {role}"),
            )
            .await?;
            println!("{token}");
            eprintln!("token {id} for {name} ({role}); it is not shown again");
        }
        Command::AuditVerify { config } => {
            let config = Config::load(config.as_deref(), std::env::vars())?;
            let db = db::Db::connect(&config.database_url()).await?;
            let check = db.verify_audit().await?;
            db.close().await;
            println!("{}", serde_json::to_string_pretty(&check)?);
            if let Some(b) = check.broken {
                bail!(
                    "the audit log was tampered with at entry {}: {}",
                    b.id,
                    b.reason
                );
            }
            eprintln!("audit log intact: {} entries", check.entries);
        }
        Command::Keygen { out } => {
            let key = keys::generate(&out, &passphrase(flag, None)?)?;
            println!("{key}");
            eprintln!(
                "created {}; give the public key above to the authority's admins",
                out.display()
            );
        }
        Command::Sign { draft, key, root } => {
            let known = match &root {
                Some(path) => {
                    let signed = keys::read_root(path)?;
                    Some(meshara_core::update::Root::decode(&signed.body)?)
                }
                None => None,
            };
            let text = std::fs::read_to_string(&draft)
                .with_context(|| format!("reading {}", draft.display()))?;
            let draft: AnyDraft = serde_json::from_str(&text)
                .context("the draft is neither a release draft nor a root draft")?;
            let identity = meshara_core::Keystore::new(&key)
                .load(&passphrase(flag, None)?)?
                .identity;
            // Names are checked and escaped before anything reaches the terminal, and each
            // key is shown by its public key, so a draft cannot hide a key from its signer.
            eprint!(
                "{}",
                draft
                    .summary(&identity.node_id(), known.as_ref())
                    .context("refusing to sign this draft")?
            );
            let sig = match draft {
                AnyDraft::Release(d) => d.sign(&identity)?,
                AnyDraft::Root(d) => d.sign(&identity)?,
            };
            println!("{}", serde_json::to_string_pretty(&sig)?);
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
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
