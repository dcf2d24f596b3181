//! `meshara`: the command-line tool for Meshara identities and (as the node runtime lands) nodes.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use data_encoding::HEXLOWER;
use meshara_core::{
    Capability, HandshakeGuard, Identity, KdfParams, Keystore, NodeRecord, NodeRecordBuilder,
    Padding, Transport, message, open, proto, seal, session, vectors,
};
use serde_json::json;

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
    /// Run a local demonstration network of several identities.
    Devnet {
        /// Number of nodes.
        #[arg(long, default_value_t = 4)]
        nodes: usize,
        /// Directory for the nodes' keystores (default: a fresh temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Private messages each node sends to each other node over its session.
        #[arg(long, default_value_t = 2000)]
        messages: usize,
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

fn default_keystore() -> PathBuf {
    if let Some(home) = std::env::var_os("MESHARA_HOME") {
        return PathBuf::from(home).join("identity.key");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".meshara").join("identity.key")
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
        Command::Devnet {
            nodes,
            dir,
            messages,
        } => devnet(*nodes, dir.clone(), *messages)?,
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

/// The foundation-stage devnet: real keystores, records, sealed first contact and sessions
/// between several identities, in one process. Networking joins with the node runtime.
fn devnet(nodes: usize, dir: Option<PathBuf>, messages: usize) -> Result<()> {
    if !(2..=64).contains(&nodes) {
        bail!("--nodes must be between 2 and 64");
    }
    let temp;
    let dir = match dir {
        Some(d) => d,
        None => {
            temp = std::env::temp_dir().join(format!("meshara-devnet-{}", std::process::id()));
            temp
        }
    };
    const PASS: &[u8] = b"devnet passphrase (not for production)";
    let now = now_secs();
    out(format!(
        "Meshara devnet: {nodes} nodes, keystores in {}",
        dir.display()
    ));
    out(
        "(foundation stage: identities, records and end-to-end crypto; QUIC networking arrives with the node runtime)",
    );
    let mut members = Vec::new();
    for i in 0..nodes {
        let store = Keystore::new(dir.join(format!("node{i}")).join("identity.key"));
        let (identity, created) = store.load_or_create(PASS, KdfParams::minimum(), now)?;
        let record = NodeRecordBuilder::new(&identity, now_millis())
            .address(Transport::Quic, "127.0.0.1", 7700 + i as u16)
            .capability(Capability::Relay)
            .sign(now)?;
        out(format!(
            "  node{i}  {}  fingerprint {}  {}",
            identity.node_id(),
            identity.fingerprint(),
            if created { "(new)" } else { "(loaded)" }
        ));
        members.push((identity, record));
    }
    // First contact: everyone seals a hello to everyone.
    let started = Instant::now();
    let mut sealed = 0;
    for (a, (ida, reca)) in members.iter().enumerate() {
        for (b, (idb, recb)) in members.iter().enumerate() {
            if a == b {
                continue;
            }
            let (_, msg) = message::new_private_message(
                &ida.node_id(),
                &idb.node_id(),
                "text/plain",
                Bytes::from(format!("hello node{b}, this is node{a}")),
                now_millis(),
                true,
            );
            let payload = message::encode_payload(&proto::PrivatePayload {
                body: Some(proto::private_payload::Body::Message(msg)),
            })?;
            let s = seal(ida, reca, recb, &payload, Padding::Buckets)?;
            let opened = open(idb, &s, now)?;
            let decoded = message::decode_payload(&opened.payload)?;
            if let Some(proto::private_payload::Body::Message(m)) = decoded.body {
                message::verify_private_message(&m, &opened.sender.node_id(), &idb.node_id())?;
            }
            sealed += 1;
        }
    }
    out(format!(
        "sealed first-contact messages: {sealed} opened and verified in {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    ));
    // Sessions: node0 handshakes with every other node and streams messages.
    let (id0, rec0) = &members[0];
    let t = Instant::now();
    let mut guard = HandshakeGuard::new(1024);
    let payload = vec![0x5a; 1024];
    let mut total = 0usize;
    let started = Instant::now();
    for (idb, recb) in &members[1..] {
        let (pending, init) = session::initiate(id0, rec0, recb, now_millis())?;
        let (mut bob, resp) = session::respond(idb, &init, &mut guard, now, t)?;
        let mut alice = pending.complete(id0, &resp, t)?;
        for _ in 0..messages {
            let m = alice.encrypt(&payload, Padding::None, t)?;
            let back = bob.decrypt(&m, t)?;
            total += back.len();
        }
    }
    let secs = started.elapsed().as_secs_f64();
    out(format!(
        "sessions: node0 -> {} peers, {} x 1 KiB messages encrypted+decrypted in {:.1} ms ({:.0} msg/s on one core)",
        nodes - 1,
        messages * (nodes - 1),
        secs * 1e3,
        (messages * (nodes - 1)) as f64 / secs
    ));
    let _ = total;
    out(format!(
        "inspect an identity:  MESHARA_PASSPHRASE='{}' cargo run -q -p meshara-core --bin meshara -- --keystore {}/node0/identity.key identity",
        String::from_utf8_lossy(PASS),
        dir.display()
    ));
    out("protocol spec: docs/protocol.md   benchmarks: docs/benchmarks.md");
    Ok(())
}
