//! The local control socket of a running node: JSON lines over a Unix socket (mode 0600).
//!
//! `meshara send/broadcast/peers/status/metrics` connect to it. One request per connection:
//! `{"cmd": "status"}`, `{"cmd": "peers"}`, `{"cmd": "metrics"}`,
//! `{"cmd": "send", "to": NODEID, "content_type": "...", "text": "...", "wait": true}`,
//! `{"cmd": "broadcast", "topic": "...", "content_type": "...", "text": "..."}`;
//! answer `{"ok": true, "result": ...}` or `{"ok": false, "error": "..."}`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use meshara_core::net::PeerInfo;
use meshara_core::{Node, NodeId, Privacy};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// Largest request accepted on the control socket.
const MAX_REQUEST: u64 = 1 << 20;

/// Serves the control socket at `path` until the node stops.
pub(crate) async fn serve(node: Node, path: PathBuf) -> Result<()> {
    if path.exists() {
        // A stale socket from a crashed run; a live one would still accept connections.
        if UnixStream::connect(&path).await.is_ok() {
            bail!(
                "another node is already running with control socket {}",
                path.display()
            );
        }
        std::fs::remove_file(&path)
            .with_context(|| format!("removing stale {}", path.display()))?;
    }
    let listener = UnixListener::bind(&path)
        .with_context(|| format!("binding control socket {}", path.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let node = node.clone();
            tokio::spawn(async move {
                let _ = handle(node, stream).await;
            });
        }
    });
    Ok(())
}

async fn handle(node: Node, stream: UnixStream) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read.take(MAX_REQUEST))
        .read_line(&mut line)
        .await?;
    let answer = match serde_json::from_str::<Value>(&line) {
        Ok(request) => match execute(&node, &request).await {
            Ok(result) => json!({"ok": true, "result": result}),
            Err(e) => json!({"ok": false, "error": format!("{e:#}")}),
        },
        Err(e) => json!({"ok": false, "error": format!("request is not JSON: {e}")}),
    };
    write.write_all(format!("{answer}\n").as_bytes()).await?;
    write.shutdown().await?;
    Ok(())
}

fn field<'a>(request: &'a Value, name: &str) -> Result<&'a str> {
    request
        .get(name)
        .and_then(Value::as_str)
        .with_context(|| format!("missing string field {name:?}"))
}

async fn execute(node: &Node, request: &Value) -> Result<Value> {
    match field(request, "cmd")? {
        "status" => {
            // Bootstrap peers as diagnostics sees them (a fresh dial of each one not
            // connected, so a wrong pin shows its error), bounded.
            let mut status = status_json(node);
            if let Ok(d) =
                tokio::time::timeout(std::time::Duration::from_secs(5), node.diagnostics()).await
            {
                status["bootstrap"] = Value::Array(
                    d.bootstrap
                        .iter()
                        .map(|b| json!({"addr": b.addr.to_string(), "reachable": b.reachable, "error": b.error}))
                        .collect(),
                );
            }
            Ok(status)
        }
        "peers" => Ok(Value::Array(node.peers().iter().map(peer_json).collect())),
        "metrics" => Ok(Value::String(node.metrics_text())),
        "send" => {
            let to: NodeId = field(request, "to")?
                .parse()
                .context("\"to\" is not a NodeId")?;
            let content_type = request
                .get("content_type")
                .and_then(Value::as_str)
                .unwrap_or("text/plain");
            let text = field(request, "text")?;
            let privacy: Privacy = match request.get("privacy").and_then(Value::as_str) {
                None => Privacy::Direct,
                Some(name) => name.parse()?,
            };
            let pending = node
                .send_private_with(to, content_type, text.to_owned(), privacy)
                .await?;
            let id = pending.id();
            if request.get("wait").and_then(Value::as_bool).unwrap_or(true) {
                let delivered = tokio::time::timeout(Duration::from_secs(120), pending.confirmed())
                    .await
                    .context("no acknowledgement within 120 s")??;
                Ok(
                    json!({"id": id.to_string(), "delivered": true, "latency_ms": delivered.latency.as_secs_f64() * 1e3, "attempts": delivered.attempts}),
                )
            } else {
                Ok(json!({"id": id.to_string(), "delivered": false}))
            }
        }
        "broadcast" => {
            let topic = field(request, "topic")?;
            let content_type = request
                .get("content_type")
                .and_then(Value::as_str)
                .unwrap_or("text/plain");
            let id = node.broadcast(topic, content_type, field(request, "text")?.to_owned())?;
            Ok(json!({"id": id.to_string()}))
        }
        other => bail!("unknown command {other:?} (status, peers, metrics, send, broadcast)"),
    }
}

pub(crate) fn status_json(node: &Node) -> Value {
    let s = node.stats();
    json!({
        "node_id": node.node_id().to_string(),
        "fingerprint": node.fingerprint().to_string(),
        "agent": node.record().agent(),
        "quic": node.quic_addr().map(|a| a.to_string()),
        "tcp": node.tcp_addr().map(|a| a.to_string()),
        "peers": s.peers,
        "connections": s.connections,
        "pending_handshakes": s.pending_handshakes,
        "known_nodes": s.known_nodes,
        "outbox": s.outbox,
        "messages_in": s.messages_in,
        "messages_out": s.messages_out,
        "bytes_in": s.bytes_in,
        "bytes_out": s.bytes_out,
        "uptime_s": s.uptime.as_secs(),
    })
}

pub(crate) fn peer_json(p: &PeerInfo) -> Value {
    json!({
        "node_id": p.node_id.to_string(),
        "transport": p.transport.as_str(),
        "addr": p.addr.map(|a| a.to_string()),
        "inbound": p.inbound,
        "connections": p.connections,
        "connected_s": p.connected_for.as_secs(),
        "rtt_ms": p.rtt.map(|r| r.as_secs_f64() * 1e3),
        "agent": p.agent,
        "messages_in": p.messages_in,
        "messages_out": p.messages_out,
        "bytes_in": p.bytes_in,
        "bytes_out": p.bytes_out,
        "dropped": p.dropped,
    })
}

/// Sends one request to the node at `socket` and returns its result.
pub(crate) fn request(socket: &Path, request: Value) -> Result<Value> {
    use std::io::{BufRead, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot reach a running node at {} (start one with `meshara run`, or pass --control)",
            socket.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(150)))?;
    stream.write_all(format!("{request}\n").as_bytes())?;
    let mut line = String::new();
    std::io::BufReader::new(std::io::Read::take(&stream, MAX_REQUEST * 16)).read_line(&mut line)?;
    let answer: Value = serde_json::from_str(&line).context("the node's answer is not JSON")?;
    if answer.get("ok").and_then(Value::as_bool) == Some(true) {
        Ok(answer.get("result").cloned().unwrap_or(Value::Null))
    } else {
        bail!(
            "{}",
            answer
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("the node refused the request")
        )
    }
}
