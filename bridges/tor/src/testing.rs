//! A private Tor network on loopback for tests (feature `test-utils`): three directory
//! authorities, two relays and an exit, all Debian's C `tor` in `TestingTorNetwork` mode with
//! 20-second voting, on free ports, in a temporary directory (see `../shared/RECIPES.md`).
//! [`TorNet::config`] gives arti a configuration for it. Every process exits with the test
//! (it watches the test's PID), and is killed when the network is dropped.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    missing_docs
)]

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arti_client::config::TorClientConfigBuilder;
use arti_client::config::dir::{AuthorityContacts, FallbackDir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tor_llcrypto::pk::ed25519::Ed25519Identity;
use tor_llcrypto::pk::rsa::RsaIdentity;

use crate::TorConfig;

/// Nodes of the network; the first three are directory authorities, the last the exit.
const NODES: [&str; 6] = ["a0", "a1", "a2", "r3", "r4", "x5"];
const AUTHORITIES: usize = 3;
/// How long the network may take to publish a consensus listing every relay.
const READY_WITHIN: Duration = Duration::from_secs(240);

const COMMON: &str = "TestingTorNetwork 1
AssumeReachable 1
PathsNeededToBuildCircuits 0.67
TestingDirAuthVoteExit *
TestingDirAuthVoteHSDir *
TestingDirAuthVoteGuard *
TestingMinExitFlagThreshold 0
V3AuthNIntervalsValid 2
RunAsDaemon 0
ShutdownWaitLength 0
SafeLogging 0
LogTimeGranularity 1
TestingServerDownloadInitialDelay 0
TestingServerConsensusDownloadInitialDelay 0
SocksPort 0
";

/// Whether tests that need tor must run (`MESHARA_REQUIRE_TOR=1`, set by CI) rather than skip
/// on a machine without it.
pub fn required() -> bool {
    std::env::var("MESHARA_REQUIRE_TOR").is_ok_and(|v| v == "1")
}

fn binary(name: &str) -> Option<PathBuf> {
    ["/usr/bin", "/usr/sbin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

/// A free loopback port, and the listener that holds it: keep the listener until every port of
/// the network is chosen, so that no two relays are handed the same one.
fn free_port(held: &mut Vec<std::net::TcpListener>) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    held.push(listener);
    port
}

#[derive(Debug)]
struct Relay {
    name: &'static str,
    dir: PathBuf,
    or_port: u16,
    dir_port: u16,
}

/// A running private Tor network; its processes are killed on drop.
#[derive(Debug)]
pub struct TorNet {
    relays: Vec<Relay>,
    children: Vec<Child>,
    _dir: tempfile::TempDir,
}

fn run(command: &mut Command, what: &str) {
    let out = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            if let Some(mut stdin) = child.stdin.take() {
                // tor-gencert reads the (empty) passphrase here.
                let _ = std::io::Write::write_all(&mut stdin, b"\n");
            }
            child.wait_with_output()
        })
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The second field of a `<nickname> <fingerprint>` file.
fn fingerprint(path: &Path) -> String {
    read(path)
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("{}: no fingerprint", path.display()))
        .to_owned()
}

impl TorNet {
    /// Generates the authorities' keys, starts the six relays and waits (at most four
    /// minutes) until the authorities publish a consensus with all of them, an exit and
    /// onion service directories. `None` when tor is not installed and not [`required`].
    pub async fn start() -> Option<Self> {
        let (Some(tor), Some(gencert)) = (binary("tor"), binary("tor-gencert")) else {
            assert!(
                !required(),
                "MESHARA_REQUIRE_TOR=1 but tor is not installed"
            );
            eprintln!("SKIPPED: tor is not installed (apt-get install tor)");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let mut held = Vec::new();
        let relays: Vec<Relay> = NODES
            .iter()
            .map(|name| Relay {
                name,
                dir: dir.path().join(name),
                or_port: free_port(&mut held),
                dir_port: free_port(&mut held),
            })
            .collect();
        drop(held);
        let mut dir_authorities = String::new();
        for relay in &relays[..AUTHORITIES] {
            let keys = relay.dir.join("keys");
            std::fs::create_dir_all(&keys).unwrap();
            restrict(&relay.dir);
            run(
                Command::new(&gencert)
                    .current_dir(&keys)
                    .args(["--create-identity-key", "--passphrase-fd", "0", "-m", "12"])
                    .arg("-a")
                    .arg(format!("127.0.0.1:{}", relay.dir_port))
                    .args([
                        "-i",
                        "authority_identity_key",
                        "-s",
                        "authority_signing_key",
                    ])
                    .args(["-c", "authority_certificate"]),
                "tor-gencert",
            );
            run(
                Command::new(&tor)
                    .args(["--ignore-missing-torrc", "-f", "/dev/null", "--orport", "1"])
                    .arg("--datadirectory")
                    .arg(&relay.dir)
                    .args([
                        "--dirserver",
                        "x 127.0.0.1:1 ffffffffffffffffffffffffffffffffffffffff",
                        "--list-fingerprint",
                    ]),
                "tor --list-fingerprint",
            );
            let v3 = v3_ident(&relay.dir);
            let fp = fingerprint(&relay.dir.join("fingerprint"));
            writeln!(
                dir_authorities,
                "DirAuthority {} orport={} no-v2 v3ident={v3} 127.0.0.1:{} {fp}",
                relay.name, relay.or_port, relay.dir_port
            )
            .unwrap();
        }
        let pid = std::process::id();
        let mut children = Vec::new();
        for (i, relay) in relays.iter().enumerate() {
            std::fs::create_dir_all(&relay.dir).unwrap();
            restrict(&relay.dir);
            let mut torrc = format!(
                "{COMMON}{dir_authorities}Nickname {name}\nDataDirectory {dir}\n\
                 Log notice file {dir}/notice.log\nAddress 127.0.0.1\n\
                 ORPort 127.0.0.1:{or}\nDirPort 127.0.0.1:{dirport}\n\
                 ContactInfo {name}@test.invalid\n__OwningControllerProcess {pid}\n",
                name = relay.name,
                dir = relay.dir.display(),
                or = relay.or_port,
                dirport = relay.dir_port,
            );
            if i < AUTHORITIES {
                torrc.push_str(
                    "AuthoritativeDirectory 1\nV3AuthoritativeDirectory 1\n\
                     TestingV3AuthInitialVotingInterval 20\nTestingV3AuthInitialVoteDelay 4\n\
                     TestingV3AuthInitialDistDelay 4\nV3AuthVotingInterval 20\n\
                     V3AuthVoteDelay 4\nV3AuthDistDelay 4\nExitRelay 0\nExitPolicy reject *:*\n",
                );
            } else if i + 1 < NODES.len() {
                torrc.push_str("ExitRelay 0\nExitPolicy reject *:*\n");
            } else {
                torrc.push_str(
                    "ExitRelay 1\nExitPolicyRejectPrivate 0\nExitPolicyRejectLocalInterfaces 0\n\
                     ExitPolicy accept 127.0.0.0/8:*\nExitPolicy accept *:*\n\
                     ServerDNSDetectHijacking 0\nServerDNSTestAddresses\n\
                     ServerDNSResolvConfFile /dev/null\n",
                );
            }
            let path = relay.dir.join("torrc");
            std::fs::write(&path, torrc).unwrap();
            let child = Command::new(&tor)
                .arg("-f")
                .arg(&path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            children.push(child);
        }
        let net = Self {
            relays,
            children,
            _dir: dir,
        };
        net.wait_consensus().await;
        Some(net)
    }

    /// Polls the authorities until one serves a microdescriptor consensus listing every
    /// relay, with an exit and HSDirs.
    async fn wait_consensus(&self) {
        let started = Instant::now();
        loop {
            for relay in &self.relays[..AUTHORITIES] {
                let addr = SocketAddr::from(([127, 0, 0, 1], relay.dir_port));
                if let Some(body) =
                    http_get(addr, "/tor/status-vote/current/consensus-microdesc").await
                {
                    let listed = body.lines().filter(|l| l.starts_with("r ")).count();
                    let flags: Vec<&str> = body.lines().filter(|l| l.starts_with("s ")).collect();
                    let exit = flags.iter().any(|l| l.contains(" Exit"));
                    let hsdirs = flags.iter().filter(|l| l.contains(" HSDir")).count();
                    if listed == NODES.len() && exit && hsdirs >= 3 {
                        eprintln!("private Tor network ready in {:.0?}", started.elapsed());
                        return;
                    }
                }
            }
            assert!(
                started.elapsed() < READY_WITHIN,
                "the private Tor network published no complete consensus within {READY_WITHIN:?}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// The tail of every relay's log (for failure messages).
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for relay in &self.relays {
            let log = std::fs::read_to_string(relay.dir.join("notice.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            let _ = writeln!(out, "--- {} ---", relay.name);
            for line in tail.into_iter().rev() {
                let _ = writeln!(out, "{line}");
            }
        }
        out
    }

    /// arti's configuration for this network: its authorities (also the fallback
    /// directories), path rules that let relays share 127.0.0.1, local addresses allowed,
    /// and the short onion-service time periods of a test network.
    pub fn client_config(&self) -> TorClientConfigBuilder {
        let mut builder = TorClientConfigBuilder::default();
        let mut authorities = AuthorityContacts::builder();
        let mut fallbacks = Vec::new();
        for relay in &self.relays[..AUTHORITIES] {
            let v3 = v3_ident(&relay.dir);
            let rsa = fingerprint(&relay.dir.join("fingerprint"));
            let ed = fingerprint(&relay.dir.join("fingerprint-ed25519"));
            let dir = SocketAddr::from(([127, 0, 0, 1], relay.dir_port));
            authorities
                .v3idents()
                .push(RsaIdentity::from_hex(&v3).unwrap());
            authorities.uploads().push(vec![dir]);
            authorities.downloads().push(vec![dir]);
            authorities.votes().push(vec![dir]);
            let mut fallback = FallbackDir::builder();
            fallback
                .rsa_identity(RsaIdentity::from_hex(&rsa).unwrap())
                .ed_identity(Ed25519Identity::from_base64(&ed).unwrap());
            fallback
                .orports()
                .push(SocketAddr::from(([127, 0, 0, 1], relay.or_port)));
            fallbacks.push(fallback);
        }
        *builder.tor_network().authorities() = authorities;
        builder.tor_network().set_fallback_caches(fallbacks);
        // Temporary directories live under the world-writable /tmp.
        builder.storage().permissions().dangerously_trust_everyone();
        builder
            .path_rules()
            .ipv4_subnet_family_prefix(33)
            .ipv6_subnet_family_prefix(129);
        builder.address_filter().allow_local_addrs(true);
        // C tor test networks use time periods of 24 voting intervals: 8 minutes.
        let params = builder.override_net_params();
        params.insert("hsdir_interval".into(), 8);
        params.insert("guard-min-filtered-sample-size".into(), 2);
        params.insert("guard-n-primary-guards-to-use".into(), 2);
        builder
    }

    /// A transport configuration for this network with state in `data_dir`.
    pub fn config(&self, data_dir: &Path) -> TorConfig {
        let mut config = TorConfig::new(data_dir);
        config.client = self.client_config();
        config.bootstrap_timeout = Duration::from_secs(120);
        config.connect_timeout = Duration::from_secs(60);
        config
    }
}

impl Drop for TorNet {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn restrict(dir: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
}

fn v3_ident(relay_dir: &Path) -> String {
    read(&relay_dir.join("keys/authority_certificate"))
        .lines()
        .find_map(|l| l.strip_prefix("fingerprint "))
        .expect("authority certificate without fingerprint")
        .trim()
        .to_owned()
}

/// A plain HTTP/1.0 GET; the body when the answer is 200.
async fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.ok()?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.0 200").then(|| body.to_owned())
    };
    tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .ok()
        .flatten()
}
