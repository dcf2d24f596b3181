//! `meshara`: the command-line tool for Meshara identities and nodes.

mod control;
mod devnet;
mod http;
mod run;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use data_encoding::HEXLOWER;
use meshara_core::{
    Capability, Identity, KdfParams, Keystore, NodeRecord, NodeRecordBuilder, Transport, vectors,
};
use serde_json::{Value, json};

#[derive(Parser)]
#[command(
    name = "meshara",
    version,
    about = "Meshara: private, censorship-resistant messaging"
)]
struct Cli {
    /// Keystore file (default: $MESHARA_HOME/identity.key, or ~/.meshara/identity.key).
    #[arg(long, global = true, env = "MESHARA_KEYSTORE")]
    keystore: Option<PathBuf>,
    /// Read the passphrase from this file instead of prompting (first line).
    #[arg(long, global = true)]
    passphrase_file: Option<PathBuf>,
    /// Print machine-readable JSON.
    #[arg(long, global = true)]
    json: bool,
    /// Control socket of a running node (default: $MESHARA_HOME/control.sock).
    #[arg(long, global = true, env = "MESHARA_CONTROL")]
    control: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new identity in the keystore (refuses to overwrite one).
    Keygen {
        /// Argon2id memory cost in KiB (default 65536).
        #[arg(long, default_value_t = KdfParams::default().memory_kib)]
        kdf_memory_kib: u32,
        /// Argon2id passes (default 3).
        #[arg(long, default_value_t = KdfParams::default().iterations)]
        kdf_iterations: u32,
    },
    /// Show the identity: NodeId, fingerprint, X25519 key.
    Identity,
    /// Write the identity as a passphrase-protected bundle (for another machine).
    Export {
        /// Output file ("-" for stdout).
        #[arg(long, default_value = "-")]
        out: PathBuf,
    },
    /// Create a keystore from a bundle made by `export`.
    Import {
        /// Bundle file ("-" for stdin).
        bundle: PathBuf,
    },
    /// Sign and print a node record for this identity.
    Record {
        /// Address as quic://IP:PORT, tcp://IP:PORT, tor://NAME.onion:PORT or i2p://NAME:PORT.
        #[arg(long = "address")]
        addresses: Vec<String>,
        /// relay, bridge-tor, bridge-i2p, authority, store-forward, update-mirror.
        #[arg(long = "capability")]
        capabilities: Vec<String>,
        /// Sequence number (default: Unix milliseconds now).
        #[arg(long)]
        sequence: Option<u64>,
    },
    /// Check a signed node record (hex) and print its contents.
    VerifyRecord {
        /// Hex of an encoded SignedNodeRecord.
        hex: String,
    },
    /// Print the protocol test vectors as JSON.
    Vectors,
    /// Check a test vector file against this implementation.
    CheckVectors {
        /// The JSON file.
        file: PathBuf,
    },
    /// Run a routing simulation scenario (TOML, see meshara-core/simulations/) and report
    /// delivery, redundancy, DHT lookups and costs. Exits non-zero if its targets are missed.
    Sim {
        /// The scenario file.
        scenario: PathBuf,
        /// Override the scenario's node count.
        #[arg(long)]
        nodes: Option<u32>,
        /// Override the scenario's seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Also write the report as JSON to this file.
        #[arg(long)]
        json_out: Option<PathBuf>,
        /// Also write an SVG plot of deliveries over time to this file.
        #[arg(long)]
        svg: Option<PathBuf>,
        /// Also write the final overlay (every node's routing table) as JSON to this file,
        /// for `meshara-explorer import-sim`.
        #[arg(long)]
        topology: Option<PathBuf>,
    },
    /// Run a node (TOML config, MESHARA_* environment overrides) until Ctrl-C.
    Run {
        /// Configuration file (see `meshara run --help`; every key is optional).
        #[arg(long, env = "MESHARA_CONFIG")]
        config: Option<PathBuf>,
        /// Check the configuration and every file it names (identity file, pinned peers,
        /// update root), print the node's identity and exit.
        #[arg(long)]
        check: bool,
    },
    /// Send an end-to-end encrypted message through the running node and wait for the ack.
    Send {
        /// Recipient NodeId.
        to: String,
        /// Message text.
        text: String,
        /// Content type.
        #[arg(long, default_value = "text/plain")]
        content_type: String,
        /// Return once queued instead of waiting for the acknowledgement.
        #[arg(long)]
        no_wait: bool,
        /// Onion-route the message through at least three relays (none of them learns both
        /// ends); content limited to one onion packet.
        #[arg(long)]
        onion: bool,
    },
    /// Broadcast a signed message on a topic through the running node.
    Broadcast {
        /// Topic.
        topic: String,
        /// Message text.
        text: String,
        /// Content type.
        #[arg(long, default_value = "text/plain")]
        content_type: String,
    },
    /// List the running node's peers.
    Peers,
    /// Show the running node's status.
    Status,
    /// Print the running node's Prometheus metrics.
    Metrics,
    /// Run a local network of several nodes on loopback, with traffic, until Ctrl-C.
    Devnet {
        /// Number of nodes.
        #[arg(long, default_value_t = 4)]
        nodes: usize,
        /// Directory for the nodes' keystores and control sockets (default: a fresh temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Stop after this many seconds (default: run until Ctrl-C).
        #[arg(long)]
        duration: Option<u64>,
        /// Time between traffic rounds, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// A peer node0 also joins (`nodeid@host:port`), e.g. an authority server's node.
        #[arg(long)]
        bootstrap: Option<String>,
        /// Signed update root (root.pb from `meshara-authority init`): every node follows
        /// releases of `devnet-app` on `stable` and downloads them from the mesh.
        #[arg(long)]
        update_root: Option<PathBuf>,
    },
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn meshara_home() -> PathBuf {
    if let Some(home) = std::env::var_os("MESHARA_HOME") {
        return PathBuf::from(home);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".meshara")
}

fn default_keystore() -> PathBuf {
    meshara_home().join("identity.key")
}

fn control_path(cli: &Cli) -> PathBuf {
    cli.control
        .clone()
        .unwrap_or_else(|| meshara_home().join("control.sock"))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn print_result(cli: &Cli, value: &Value, human: impl FnOnce(&Value)) {
    if cli.json {
        out(value.to_string());
    } else {
        human(value);
    }
}

fn passphrase(cli: &Cli, prompt: &str, confirm: bool) -> Result<zeroize::Zeroizing<String>> {
    if let Some(path) = &cli.passphrase_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading passphrase file {}", path.display()))?;
        let line = text.lines().next().unwrap_or_default().to_owned();
        return Ok(zeroize::Zeroizing::new(line));
    }
    if let Ok(value) = std::env::var("MESHARA_PASSPHRASE") {
        return Ok(zeroize::Zeroizing::new(value));
    }
    let first = zeroize::Zeroizing::new(
        rpassword::prompt_password(prompt).context("reading passphrase from the terminal")?,
    );
    if confirm {
        let again = zeroize::Zeroizing::new(rpassword::prompt_password("Repeat passphrase: ")?);
        if *first != *again {
            bail!("passphrases do not match");
        }
    }
    Ok(first)
}

fn parse_address(text: &str) -> Result<(Transport, String, u16)> {
    let (scheme, rest) = text.split_once("://").with_context(|| {
        format!("address {text:?} has no scheme (quic://, tcp://, tor://, i2p://)")
    })?;
    let transport = match scheme {
        "quic" => Transport::Quic,
        "tcp" => Transport::Tcp,
        "tor" => Transport::Tor,
        "i2p" => Transport::I2p,
        other => bail!("unknown transport {other:?} in {text:?}"),
    };
    let (host, port) = rest
        .rsplit_once(':')
        .with_context(|| format!("address {text:?} has no :PORT"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port
        .parse()
        .with_context(|| format!("bad port in {text:?}"))?;
    Ok((transport, host.to_owned(), port))
}

fn parse_capability(text: &str) -> Result<Capability> {
    Ok(match text {
        "relay" => Capability::Relay,
        "bridge-tor" => Capability::BridgeTor,
        "bridge-i2p" => Capability::BridgeI2p,
        "authority" => Capability::Authority,
        "store-forward" => Capability::StoreForward,
        "update-mirror" => Capability::UpdateMirror,
        other => bail!("unknown capability {other:?}"),
    })
}

fn record_json(record: &NodeRecord) -> serde_json::Value {
    json!({
        "node_id": record.node_id().to_string(),
        "fingerprint": record.node_id().fingerprint().to_string(),
        "x25519_key": HEXLOWER.encode(record.x25519_key().as_bytes()),
        "sequence": record.sequence(),
        "issued_at": record.issued_at(),
        "expires_at": record.expires_at(),
        "addresses": record.addresses().iter().map(ToString::to_string).collect::<Vec<_>>(),
        "capabilities": record.capabilities().iter().map(|c| format!("{c:?}")).collect::<Vec<_>>(),
        "agent": record.agent(),
        "signed_record": HEXLOWER.encode(&record.encode()),
    })
}

fn out(line: impl AsRef<str>) {
    #[allow(clippy::print_stdout)]
    {
        println!("{}", line.as_ref());
    }
}

fn load(cli: &Cli, store: &Keystore) -> Result<Identity> {
    Ok(unlock(cli, store)?.identity)
}

fn unlock(cli: &Cli, store: &Keystore) -> Result<meshara_core::Unlocked> {
    let pass = passphrase(cli, "Keystore passphrase: ", false)?;
    store
        .load(pass.as_bytes())
        .with_context(|| format!("opening keystore {}", store.path().display()))
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let store = Keystore::new(cli.keystore.clone().unwrap_or_else(default_keystore));
    match &cli.command {
        Command::Keygen {
            kdf_memory_kib,
            kdf_iterations,
        } => {
            if store.exists() {
                bail!(
                    "a keystore already exists at {}; refusing to overwrite it",
                    store.path().display()
                );
            }
            let params = KdfParams {
                memory_kib: *kdf_memory_kib,
                iterations: *kdf_iterations,
                parallelism: 1,
            };
            let pass = passphrase(&cli, "New keystore passphrase: ", true)?;
            let identity = Identity::generate();
            store.create(&identity, pass.as_bytes(), params, now_secs())?;
            print_identity(&cli, &identity, store.path());
        }
        Command::Identity => {
            let identity = load(&cli, &store)?;
            print_identity(&cli, &identity, store.path());
        }
        Command::Export { out: path } => {
            let unlocked = unlock(&cli, &store)?;
            let pass = passphrase(&cli, "Bundle passphrase: ", true)?;
            let bundle = unlocked.identity.export_bundle(
                pass.as_bytes(),
                KdfParams::default(),
                unlocked.created_at,
            )?;
            if path == Path::new("-") {
                out(bundle.trim_end());
            } else {
                write_private(path, bundle.as_bytes())?;
            }
        }
        Command::Import { bundle } => {
            let text = if bundle == Path::new("-") {
                let mut s = String::new();
                std::io::stdin().take(8192).read_to_string(&mut s)?;
                s
            } else {
                std::fs::read_to_string(bundle)
                    .with_context(|| format!("reading {}", bundle.display()))?
            };
            let pass = passphrase(&cli, "Bundle passphrase: ", false)?;
            let unlocked = Identity::import_bundle(&text, pass.as_bytes())?;
            store.create(
                &unlocked.identity,
                pass.as_bytes(),
                KdfParams::default(),
                unlocked.created_at,
            )?;
            print_identity(&cli, &unlocked.identity, store.path());
        }
        Command::Record {
            addresses,
            capabilities,
            sequence,
        } => {
            let identity = load(&cli, &store)?;
            let mut builder =
                NodeRecordBuilder::new(&identity, sequence.unwrap_or_else(now_millis));
            for a in addresses {
                let (t, h, p) = parse_address(a)?;
                builder = builder.address(t, h, p);
            }
            for c in capabilities {
                builder = builder.capability(parse_capability(c)?);
            }
            let record = builder.sign(now_secs())?;
            if cli.json {
                out(serde_json::to_string_pretty(&record_json(&record))?);
            } else {
                out(HEXLOWER.encode(&record.encode()));
            }
        }
        Command::VerifyRecord { hex } => {
            let bytes = HEXLOWER
                .decode(hex.trim().to_ascii_lowercase().as_bytes())
                .context("the record is not hex")?;
            let record = NodeRecord::decode(&bytes, now_secs())?;
            out(serde_json::to_string_pretty(&record_json(&record))?);
        }
        Command::Vectors => out(serde_json::to_string_pretty(&vectors::generate())?),
        Command::CheckVectors { file } => {
            let text = std::fs::read_to_string(file)?;
            let value: serde_json::Value = serde_json::from_str(&text)?;
            vectors::check(&value)?;
            out(format!("{}: all vectors verified", file.display()));
        }
        Command::Run { config, check } => {
            let settings = run::load_settings(config.as_deref(), &|k| std::env::var(k).ok())?;
            if *check {
                return run::check(&settings, cli.json);
            }
            if settings.node.identity_file.is_some() {
                // The identity comes from the key file: no keystore, no passphrase.
                return runtime()?.block_on(run::run(settings, None, cli.json));
            }
            let keystore = settings
                .keystore
                .clone()
                .or_else(|| cli.keystore.clone())
                .unwrap_or_else(default_keystore);
            if let Some(dir) = keystore.parent().filter(|d| !d.as_os_str().is_empty()) {
                devnet::private_dir(dir)?;
            }
            let confirm = !keystore.exists();
            let pass = passphrase(&cli, "Keystore passphrase: ", confirm)?;
            runtime()?.block_on(run::run(settings, Some((keystore, pass)), cli.json))?;
        }
        Command::Send {
            to,
            text,
            content_type,
            no_wait,
            onion,
        } => {
            let privacy = if *onion { "onion" } else { "direct" };
            let result = control::request(
                &control_path(&cli),
                json!({"cmd": "send", "to": to, "text": text, "content_type": content_type, "wait": !no_wait, "privacy": privacy}),
            )?;
            print_result(&cli, &result, |r| {
                let id = r["id"].as_str().unwrap_or_default();
                match r["latency_ms"].as_f64() {
                    Some(ms) => out(format!(
                        "delivered {id} ({ms:.2} ms, {} attempt(s))",
                        r["attempts"]
                    )),
                    None => out(format!("queued {id}")),
                }
            });
        }
        Command::Broadcast {
            topic,
            text,
            content_type,
        } => {
            let result = control::request(
                &control_path(&cli),
                json!({"cmd": "broadcast", "topic": topic, "text": text, "content_type": content_type}),
            )?;
            print_result(&cli, &result, |r| {
                out(format!(
                    "broadcast {}",
                    r["id"].as_str().unwrap_or_default()
                ));
            });
        }
        Command::Peers => {
            let result = control::request(&control_path(&cli), json!({"cmd": "peers"}))?;
            print_result(&cli, &result, |r| {
                let peers = r.as_array().cloned().unwrap_or_default();
                if peers.is_empty() {
                    out("no peers");
                }
                for p in peers {
                    out(format!(
                        "{}  {:<4} {:<22} {}  in {} / out {} msgs  rtt {}",
                        p["node_id"].as_str().unwrap_or_default(),
                        p["transport"].as_str().unwrap_or_default(),
                        p["addr"].as_str().unwrap_or("-"),
                        if p["inbound"].as_bool() == Some(true) {
                            "in "
                        } else {
                            "out"
                        },
                        p["messages_in"],
                        p["messages_out"],
                        p["rtt_ms"]
                            .as_f64()
                            .map_or("-".into(), |v| format!("{v:.2} ms")),
                    ));
                }
            });
        }
        Command::Status => {
            let result = control::request(&control_path(&cli), json!({"cmd": "status"}))?;
            print_result(&cli, &result, |r| {
                if let Some(map) = r.as_object() {
                    for (k, v) in map {
                        out(format!(
                            "{k:<12} {}",
                            v.as_str().map_or_else(|| v.to_string(), str::to_owned)
                        ));
                    }
                }
            });
        }
        Command::Metrics => {
            let result = control::request(&control_path(&cli), json!({"cmd": "metrics"}))?;
            print_result(&cli, &result, |r| {
                out(r.as_str().unwrap_or_default().trim_end())
            });
        }
        Command::Sim {
            scenario,
            nodes,
            seed,
            json_out,
            svg,
            topology: topology_out,
        } => {
            let text = std::fs::read_to_string(scenario)
                .with_context(|| format!("reading {}", scenario.display()))?;
            let mut parsed = meshara_core::routing::sim::Scenario::from_toml(&text)
                .with_context(|| format!("in {}", scenario.display()))?;
            if let Some(n) = nodes {
                parsed = parsed.with_nodes(*n).context("--nodes")?;
            }
            if let Some(seed) = seed {
                parsed.seed = *seed;
            }
            let (report, topology) = meshara_core::routing::sim::run_with_topology(&parsed);
            if let Some(path) = topology_out {
                std::fs::write(path, serde_json::to_string(&topology)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            if cli.json {
                out(serde_json::to_string_pretty(&report)?);
            } else {
                out(report.to_text());
            }
            if let Some(path) = json_out {
                std::fs::write(path, serde_json::to_string_pretty(&report)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            if let Some(path) = svg {
                std::fs::write(path, report.svg())
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            let missed = report.check(&parsed.expect);
            if !missed.is_empty() {
                anyhow::bail!("targets missed: {}", missed.join("; "));
            }
        }
        Command::Devnet {
            nodes,
            dir,
            duration,
            interval_ms,
            bootstrap,
            update_root,
        } => runtime()?.block_on(devnet::devnet(devnet::DevnetOptions {
            nodes: *nodes,
            dir: dir.clone(),
            duration: *duration,
            interval_ms: *interval_ms,
            bootstrap: bootstrap.clone(),
            update_root: update_root.clone(),
        }))?,
    }
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {} (it must not exist yet)", path.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}

fn print_identity(cli: &Cli, identity: &Identity, path: &Path) {
    if cli.json {
        out(json!({
            "node_id": identity.node_id().to_string(),
            "fingerprint": identity.fingerprint().to_string(),
            "x25519_public": HEXLOWER.encode(identity.x25519_public().as_bytes()),
            "keystore": path.display().to_string(),
        })
        .to_string());
    } else {
        out(format!("node id      {}", identity.node_id()));
        out(format!("fingerprint  {}", identity.fingerprint()));
        out(format!("keystore     {}", path.display()));
    }
}
