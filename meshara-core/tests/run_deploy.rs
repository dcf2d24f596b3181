//! `meshara run` as a deployment runs it: identities from PEM key files, peers pinned by
//! `file:` certificates or public keys, the health and metrics endpoint, `--check`, and an
//! update root taken from a pinned authority node. Real processes on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey, spki::der::pem::LineEnding};
use meshara_core::update::{AuthorityKey, Release, Role, Root};
use meshara_core::updater::{AutoUpdate, Updater};
use meshara_core::{Identity, NodeBuilder, NodeId};

const WAIT: Duration = Duration::from_secs(60);

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_meshara"));
    for k in [
        "MESHARA_KEYSTORE",
        "MESHARA_CONTROL",
        "MESHARA_CONFIG",
        "MESHARA_PASSPHRASE",
        "MESHARA_BOOTSTRAP",
        "MESHARA_IDENTITY_FILE",
        "MESHARA_HTTP_LISTEN",
    ] {
        c.env_remove(k);
    }
    c
}

/// A fresh Ed25519 key written as PEM (mode 0600) and its public key (0644).
fn key_files(dir: &Path, name: &str) -> (PathBuf, PathBuf, NodeId) {
    let mut seed = [0u8; 32];
    seed.copy_from_slice(&Identity::generate().node_id().as_bytes()[..]);
    let key = SigningKey::from_bytes(&seed);
    let private = dir.join(format!("{name}.pem"));
    std::fs::write(
        &private,
        key.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes(),
    )
    .unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).unwrap();
    let public = dir.join(format!("{name}.pub"));
    std::fs::write(
        &public,
        key.verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap(),
    )
    .unwrap();
    let id = NodeId::from_bytes(key.verifying_key().as_bytes()).unwrap();
    (private, public, id)
}

struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    dir: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    fn start(dir: &Path, config: &str) -> Running {
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join("node.toml");
        std::fs::write(&path, config).unwrap();
        let mut child = bin()
            .arg("run")
            .arg("--config")
            .arg(&path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
            dir: dir.to_owned(),
        }
    }

    /// The first output line containing `needle` (bounded wait).
    fn line(&mut self, needle: &str) -> String {
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        let deadline = Instant::now() + WAIT;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(_) => break,
            }
        }
        panic!("no line with {needle:?}; output so far: {:#?}", self.seen);
    }

    fn value(&mut self, key: &str) -> String {
        let line = self.line(&format!("{key} "));
        line.split_whitespace().nth(1).unwrap().to_owned()
    }

    fn ctl(&self, args: &[&str]) -> serde_json::Value {
        let out = bin()
            .arg("--json")
            .arg("--control")
            .arg(self.dir.join("control.sock"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

fn node_toml(dir: &Path, identity: &Path, bootstrap: &[String], extra: &str) -> String {
    let list = bootstrap
        .iter()
        .map(|b| format!("{b:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "control = {control:?}\nhttp_listen = \"127.0.0.1:0\"\n{extra}\n[node]\n\
         listen_quic = \"127.0.0.1:0\"\nmdns = false\ndata_dir = {data:?}\n\
         identity_file = {identity:?}\nbootstrap = [{list}]\n\n[node.timeouts]\n\
         reconnect_min = 0.1\nreconnect_max = 1.0\n",
        control = dir.join("control.sock"),
        data = dir,
    )
}

/// Sends raw bytes, returns what the server answered (empty if it closed at once).
fn http(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(request);
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn nodes_with_key_files_reach_only_the_peers_they_pinned() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = tmp.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    let (a_key, a_pub, a_id) = key_files(&keys, "a");
    let (b_key, b_pub, b_id) = key_files(&keys, "b");
    let (c_key, _, c_id) = key_files(&keys, "c");

    let a_dir = tmp.path().join("a");
    // A's bootstrap list names A itself (a shared seed list): it is skipped, not dialled.
    let self_entry = format!("file:{}@quic://127.0.0.1:9", a_pub.display());
    let mut a = Running::start(&a_dir, &node_toml(&a_dir, &a_key, &[self_entry], ""));
    assert_eq!(a.value("node"), a_id.to_string());
    let a_quic = a.value("quic");
    let a_quic = a_quic.split('@').nth(1).unwrap().to_owned();

    // B pins A by its public key file and connects.
    let b_dir = tmp.path().join("b");
    let pinned = format!("file:{}@{a_quic}", a_pub.display());
    let mut b = Running::start(&b_dir, &node_toml(&b_dir, &b_key, &[pinned], ""));
    assert_eq!(b.value("node"), b_id.to_string());
    wait_until("B connected to the pinned A", || {
        b.ctl(&["peers"])
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["node_id"] == a_id.to_string())
    });
    let status = a.ctl(&["status"]);
    assert_eq!(
        status["bootstrap"],
        serde_json::json!([]),
        "A skips the entry pinned to itself"
    );

    // C pins B's key at A's address: whoever answers there is not B, so C never connects.
    let c_dir = tmp.path().join("c");
    let wrong = format!("file:{}@{a_quic}", b_pub.display());
    let mut c = Running::start(&c_dir, &node_toml(&c_dir, &c_key, &[wrong], ""));
    c.line("control");
    wait_until("C reported the identity mismatch", || {
        let s = c.ctl(&["status"]);
        s["bootstrap"][0]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty())
    });
    assert!(c.ctl(&["peers"]).as_array().unwrap().is_empty());
    let c_id = c_id.to_string();
    assert!(
        !a.ctl(&["peers"])
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["node_id"] == c_id.as_str()),
        "A never completed a handshake with C"
    );

    // The health and metrics endpoint.
    let http_addr: SocketAddr = a
        .value("http")
        .trim_start_matches("http://")
        .trim_end_matches("/healthz")
        .parse()
        .unwrap();
    let ok = http(http_addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    let ready = http(http_addr, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    // Negotiated: OpenMetrics for a scraper that asks for it (as Prometheus does), the classic
    // text format (counters typed by their `_total` name) for anything else.
    let metrics = http(
        http_addr,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n\r\n",
    );
    assert!(
        metrics.contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{metrics}"
    );
    assert!(metrics.trim_end().ends_with("# EOF"), "{metrics}");
    let classic = http(http_addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        classic.contains("content-type: text/plain; version=0.0.4"),
        "{classic}"
    );
    assert!(
        classic.contains("# TYPE meshara_messages_total counter") && !classic.contains("# EOF"),
        "{classic}"
    );
    assert!(http(http_addr, b"GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
    assert!(http(http_addr, b"POST /healthz HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
    assert!(http(http_addr, b"garbage\r\n\r\n").starts_with("HTTP/1.1 400"));
    let mut huge = b"GET /healthz HTTP/1.1\r\nX: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 8192));
    assert!(http(http_addr, &huge).starts_with("HTTP/1.1 431"));

    // Slow clients from one address hold at most 8 connections; a probe from another
    // address is still answered while they wait.
    let slow: Vec<TcpStream> = (0..20)
        .filter_map(|_| {
            let s = std::net::TcpStream::connect(http_addr).ok()?;
            let _ = (&s).write_all(b"GET /healthz HTTP/1.1\r\n");
            Some(s)
        })
        .collect();
    assert_eq!(slow.len(), 20);
    let probe = {
        let sock = socket_from("127.0.0.2");
        sock.connect(&http_addr.into()).unwrap();
        let mut s: TcpStream = sock.into();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    assert!(probe.starts_with("HTTP/1.1 200"), "{probe}");
    drop(slow);
}

/// A TCP socket bound to `ip` (another loopback address: another client).
fn socket_from(ip: &str) -> socket2::Socket {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local: SocketAddr = format!("{ip}:0").parse().unwrap();
    sock.bind(&local.into()).unwrap();
    sock
}

#[test]
fn check_mode_names_what_is_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    let (key, public, id) = key_files(tmp.path(), "n");
    let check = |config: &str| {
        let path = tmp.path().join("check.toml");
        std::fs::write(&path, config).unwrap();
        let out = bin()
            .args(["run", "--check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let base = |identity: &Path, peer: &str, updates: &str| {
        format!(
            "http_listen = \"127.0.0.1:0\"\n[node]\nmdns = false\nidentity_file = {identity:?}\n\
             bootstrap = [{peer:?}]\n{updates}"
        )
    };
    let pin = format!("file:{}@quic://seed-0.example:7340", public.display());
    let updates = format!(
        "[updates]\nauthorities = [\"file:{}\"]\nfollow = [\"app/stable\"]\npolicy = \"download\"\n",
        public.display()
    );
    let (ok, out) = check(&base(&key, &pin, &updates));
    assert!(ok, "{out}");
    assert!(out.contains(&id.to_string()), "{out}");

    let cases: Vec<(String, &str)> = vec![
        (
            base(
                &key,
                "file:/nonexistent/seed.crt@quic://seed-0.example:7340",
                "",
            ),
            "/nonexistent/seed.crt",
        ),
        (
            base(&key, &format!("file:{}@quic://x:7340", key.display()), ""),
            "private key",
        ),
        (
            base(&tmp.path().join("missing.pem"), &pin, ""),
            "missing.pem",
        ),
        (
            base(
                &key,
                &pin,
                "[updates]\nauthorities = []\nfollow = [\"app/stable\"]\n",
            ),
            "root",
        ),
        (
            base(&key, &pin, &updates.replace("\"download\"", "\"install\"")),
            "install_path",
        ),
        (
            base(&key, &pin, &updates.replace("app/stable", "app")),
            "package/channel",
        ),
        (
            base(
                &key,
                &pin,
                &updates.replace("\"download\"", "\"sometimes\""),
            ),
            "policy",
        ),
    ];
    for (config, needle) in cases {
        let (ok, out) = check(&config);
        assert!(!ok && out.contains(needle), "{needle:?} not in: {out}");
    }
    // A key file others may read is refused.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, out) = check(&base(&key, &pin, ""));
    assert!(!ok && out.contains("every user"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_takes_its_root_from_the_pinned_authority_and_installs_a_release() {
    let tmp = tempfile::tempdir().unwrap();
    // The authority: an in-process node with a 2-of-3 root and an updater that publishes.
    let keys: Vec<Identity> = (0..3).map(|_| Identity::generate()).collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let root = Root {
        sequence: 1,
        expires_at: now + 86_400,
        keys: keys
            .iter()
            .enumerate()
            .map(|(i, k)| AuthorityKey {
                key: k.node_id(),
                name: format!("k{i}"),
                roles: [Role::Root, Role::Release].into(),
            })
            .collect(),
        root_threshold: 2,
        release_threshold: 2,
        revoked: vec![],
    }
    .sign(&[&keys[0], &keys[1]])
    .unwrap();
    let auth_identity = Identity::generate();
    let auth_pub = tmp.path().join("authority.txt");
    std::fs::write(&auth_pub, format!("{}\n", auth_identity.node_id())).unwrap();
    let authority = NodeBuilder::new()
        .identity(auth_identity)
        .listen_quic("127.0.0.1:0".parse().unwrap())
        .start()
        .await
        .unwrap();
    let auth_dir = tmp.path().join("authority");
    let publisher = Updater::builder(authority.clone(), &auth_dir, root)
        .policy(AutoUpdate::Notify)
        .start()
        .unwrap();

    let (key, _, _) = key_files(tmp.path(), "node");
    let dir = tmp.path().join("node");
    let target = dir.join("installed-app");
    let updates = format!(
        "[updates]\nauthorities = [\"file:{}\"]\nfollow = [\"app/stable\"]\npolicy = \"install\"\n\
         install_path = {target:?}\n",
        auth_pub.display()
    );
    let bootstrap = format!(
        "file:{}@{}",
        auth_pub.display(),
        authority.quic_addr().unwrap().address
    );
    let config = node_toml(&dir, &key, &[bootstrap], "") + &updates;
    let mut node = {
        let dir = dir.clone();
        let config = config.clone();
        tokio::task::spawn_blocking(move || Running::start(&dir, &config))
            .await
            .unwrap()
    };
    let mut node = tokio::task::spawn_blocking(move || {
        node.line("took the signed root from authority");
        node
    })
    .await
    .unwrap();
    assert!(dir.join("updates/root.pb").exists(), "the root is kept");

    // Publish a release: the node hears the announcement, downloads, verifies, installs.
    let body: Vec<u8> = (0..200_000u32).map(|i| (i * 31 % 251) as u8).collect();
    let content = tmp.path().join("app-1.0.0");
    std::fs::write(&content, &body).unwrap();
    let release = Release::for_content("app", "stable", "1.0.0", 1, now + 86_400, &body, 16 * 1024)
        .unwrap()
        .sign(&[&keys[1], &keys[2]])
        .unwrap();
    // The node must be connected before the announcement, or it learns it from its check.
    publisher.publish(release, &content).await.unwrap();
    let node = tokio::task::spawn_blocking(move || {
        node.line("update installed: app 1.0.0");
        node
    })
    .await
    .unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), body);
    // The node now says what it runs: its record's agent is the installed release.
    let status = node.ctl(&["status"]);
    assert_eq!(status["agent"], "app/1.0.0", "{status}");
    drop(node);
    authority.stop().await;
}
