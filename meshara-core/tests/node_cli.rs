//! `meshara run`, `send`, `broadcast`, `peers`, `status` and `devnet`, driven as processes.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_meshara"));
    c.env_remove("MESHARA_KEYSTORE")
        .env_remove("MESHARA_CONTROL")
        .env_remove("MESHARA_CONFIG")
        .env("MESHARA_PASSPHRASE", "test passphrase");
    c
}

struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    node_id: String,
    quic: String,
    control: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `meshara run` in `home` (keystore made with fast KDF parameters first).
fn run_node(home: &Path, env: &[(&str, &str)]) -> Running {
    let keystore = home.join("identity.key");
    let out = bin()
        .args(["--keystore"])
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
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = home.join("node.toml");
    std::fs::write(
        &config,
        "[node]\nlisten_quic = \"127.0.0.1:0\"\nmdns = false\n\n[node.timeouts]\nack = 0.5\n",
    )
    .unwrap();
    let mut cmd = bin();
    cmd.arg("--keystore")
        .arg(&keystore)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
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
    let mut node_id = String::new();
    let mut quic = String::new();
    let mut control = PathBuf::new();
    while control.as_os_str().is_empty() {
        let line = lines
            .recv_timeout(Duration::from_secs(30))
            .expect("node did not start");
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next()) {
            (Some("node"), Some(id)) => node_id = id.to_owned(),
            (Some("quic"), Some(addr)) => quic = addr.to_owned(),
            (Some("control"), Some(path)) => control = PathBuf::from(path),
            _ => {}
        }
    }
    Running {
        child,
        lines,
        node_id,
        quic,
        control,
    }
}

fn ctl(control: &Path, args: &[&str]) -> serde_json::Value {
    let out = bin()
        .arg("--json")
        .arg("--control")
        .arg(control)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn wait_line(node: &Running, needle: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = node
            .lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no line containing {needle:?}"));
        if line.contains(needle) {
            return line;
        }
    }
}

#[test]
fn two_node_processes_talk_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let a = run_node(&dir.path().join("a"), &[]);
    let b = run_node(
        &dir.path().join("b"),
        &[("MESHARA_BOOTSTRAP", a.quic.as_str())],
    );
    assert!(
        a.quic
            .starts_with(&format!("{}@quic://127.0.0.1:", a.node_id)),
        "{}",
        a.quic
    );
    wait_line(&a, "peer connected");

    let sent = ctl(&b.control, &["send", &a.node_id, "hello over the CLI"]);
    assert!(sent["latency_ms"].as_f64().is_some(), "{sent}");
    let line = wait_line(&a, "message from");
    assert!(line.contains("hello over the CLI"), "{line}");

    let bc = ctl(&b.control, &["broadcast", "news", "cli broadcast"]);
    assert!(bc["id"].is_string());
    assert!(wait_line(&a, "broadcast [news]").contains("cli broadcast"));

    let peers = ctl(&a.control, &["peers"]);
    assert_eq!(peers[0]["node_id"], b.node_id.as_str(), "{peers}");
    let status = ctl(&a.control, &["status"]);
    assert_eq!(status["node_id"], a.node_id.as_str());
    assert_eq!(status["peers"], 1);
    let metrics = bin()
        .arg("--control")
        .arg(&a.control)
        .arg("metrics")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&metrics.stdout).contains("meshara_connections"));

    // A bad config names the key; a missing node is a clear error.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[node]\nlisten_quick = \"127.0.0.1:0\"\n").unwrap();
    let out = bin()
        .args(["--keystore", "/nonexistent/k", "run", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("listen_quick"));
    let out = bin()
        .args(["--control", "/nonexistent/control.sock", "status"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach a running node"));
}

#[test]
fn devnet_runs_and_delivers() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .args([
            "devnet",
            "--nodes",
            "3",
            "--duration",
            "3",
            "--interval-ms",
            "200",
            "--dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("mesh formed"), "{stdout}");
    assert!(stdout.contains("delivered, end-to-end ack"), "{stdout}");
    assert!(stdout.contains("0 failed"), "{stdout}");
}
