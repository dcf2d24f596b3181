//! mDNS discovery between two network namespaces joined by a veth pair: two `meshara run`
//! processes that know nothing of each other find and connect to each other, and tcpdump on the
//! link shows that their announcements name neither node.
//!
//! Needs root (CAP_NET_ADMIN), `ip` and `tcpdump`; without namespaces the test prints why and
//! skips.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    clippy::print_stderr
)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

struct Netns {
    names: Vec<String>,
    /// The veth end in the first namespace.
    dev: String,
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn setup() -> Result<Netns, String> {
    let tag = std::process::id() % 100_000;
    let (a, b) = (format!("mshA{tag}"), format!("mshB{tag}"));
    let (va, vb) = (format!("va{tag}"), format!("vb{tag}"));
    let mut guard = Netns {
        names: Vec::new(),
        dev: va.clone(),
    };
    ip(&["netns", "add", &a])?;
    guard.names.push(a.clone());
    ip(&["netns", "add", &b])?;
    guard.names.push(b.clone());
    ip(&[
        "link", "add", &va, "netns", &a, "type", "veth", "peer", "name", &vb, "netns", &b,
    ])?;
    for (ns, dev, addr) in [(&a, &va, "10.77.0.1/24"), (&b, &vb, "10.77.0.2/24")] {
        ip(&["-n", ns, "addr", "add", addr, "dev", dev])?;
        ip(&["-n", ns, "link", "set", dev, "up", "multicast", "on"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
    }
    Ok(guard)
}

struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// The node's NodeId text, as `keygen` printed it.
    node_id: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(ns: &str, home: &Path) -> Proc {
    std::fs::create_dir_all(home).unwrap();
    let keystore = home.join("identity.key");
    let out = Command::new(env!("CARGO_BIN_EXE_meshara"))
        .env("MESHARA_PASSPHRASE", "netns")
        .arg("--keystore")
        .arg(&keystore)
        .args([
            "keygen",
            "--kdf-memory-kib",
            "8192",
            "--kdf-iterations",
            "1",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let node_id = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("node id").map(|id| id.trim().to_owned()))
        .expect("keygen prints the node id");
    let config = home.join("node.toml");
    std::fs::write(
        &config,
        "[node]\nlisten_quic = \"0.0.0.0:7340\"\nmdns = true\n",
    )
    .unwrap();
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(env!("CARGO_BIN_EXE_meshara"))
        .arg("--keystore")
        .arg(&keystore)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env("MESHARA_PASSPHRASE", "netns")
        .env_remove("MESHARA_BOOTSTRAP")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    Proc {
        child,
        lines,
        node_id,
    }
}

fn wait_for(p: &Proc, needle: &str, seen: &mut Vec<String>) -> bool {
    let deadline = Instant::now() + Duration::from_secs(40);
    while let Ok(line) = p
        .lines
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
    {
        let hit = line.contains(needle);
        seen.push(line);
        if hit {
            return true;
        }
    }
    false
}

#[test]
fn mdns_discovers_a_node_in_another_namespace() {
    let guard = match setup() {
        Ok(g) => g,
        Err(reason) => {
            eprintln!(
                "SKIPPED mdns_discovers_a_node_in_another_namespace: cannot create network namespaces ({reason}); run as root with iproute2"
            );
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let capture = Capture::start(&guard.names[0], &guard.dev, &dir.path().join("mdns.pcap"));
    let a = start(&guard.names[0], &dir.path().join("a"));
    let b = start(&guard.names[1], &dir.path().join("b"));
    let mut seen_a = Vec::new();
    let mut seen_b = Vec::new();
    assert!(
        wait_for(&a, "peer connected", &mut seen_a),
        "a never connected: {seen_a:#?}"
    );
    assert!(
        wait_for(&b, "peer connected", &mut seen_b),
        "b never connected: {seen_b:#?}"
    );
    // Whichever side resolved the other first dialed it; the other just accepted.
    assert!(
        seen_a.iter().chain(&seen_b).any(|l| l.contains("via mdns")),
        "no mDNS discovery reported: {seen_a:#?} {seen_b:#?}"
    );
    // The connection runs over the veth between the namespaces.
    assert!(
        seen_a.iter().chain(&seen_b).any(|l| l.contains("10.77.0.")),
        "{seen_a:#?} {seen_b:#?}"
    );
    // Let each side announce a few more times (mDNS repeats announcements at start), then read
    // what the link carried.
    std::thread::sleep(Duration::from_secs(3));
    let pcap = capture.stop();
    assert!(
        contains(&pcap, b"_meshara"),
        "the capture holds no announcement ({} bytes)",
        pcap.len()
    );
    for p in [&a, &b] {
        let id: meshara_core::NodeId = p.node_id.parse().unwrap();
        let text = id.to_string();
        let leaks: [(&str, Vec<u8>); 5] = [
            ("NodeId text", text.clone().into_bytes()),
            ("NodeId text, upper case", text.to_uppercase().into_bytes()),
            (
                "first 16 characters of the NodeId",
                text.as_bytes()[..16].to_vec(),
            ),
            ("NodeId bytes", id.as_bytes().to_vec()),
            ("fingerprint", id.fingerprint().to_string().into_bytes()),
        ];
        for (what, needle) in leaks {
            assert!(
                !contains(&pcap, &needle),
                "the mDNS traffic carries a node's {what}"
            );
        }
    }
    drop(a);
    drop(b);
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// tcpdump writing the link's mDNS packets to a file.
struct Capture {
    child: Child,
    file: std::path::PathBuf,
}

impl Capture {
    fn start(ns: &str, dev: &str, file: &Path) -> Capture {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "tcpdump", "-i", dev, "-U", "-n", "-w"])
            .arg(file)
            .args(["udp", "port", "5353"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot run tcpdump (scripts/test.sh installs it)");
        // tcpdump says "listening on …" once it captures.
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut first = String::new();
        stderr.read_line(&mut first).unwrap();
        assert!(first.contains("listening on"), "tcpdump: {first}");
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        Capture {
            child,
            file: file.to_owned(),
        }
    }

    fn stop(mut self) -> Vec<u8> {
        // SIGTERM lets tcpdump flush and close the file (`ip netns exec` execs tcpdump itself).
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        std::fs::read(&self.file).unwrap()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
