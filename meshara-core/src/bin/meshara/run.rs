//! `meshara run`: one node from a TOML file with environment overrides.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use meshara_core::net::{Limits, NodeConfig, PeerAddr};
use meshara_core::{Event, NodeBuilder, Padding};
use serde::Deserialize;
use serde_json::json;

use crate::out;

/// The `meshara run` configuration file.
///
/// ```toml
/// keystore = "/var/lib/meshara/identity.key"   # default: --keystore / $MESHARA_HOME
/// control = "/run/meshara/control.sock"        # default: <data_dir>/control.sock
/// padding = "buckets"                          # or "none"
///
/// [node]
/// listen_quic = "0.0.0.0:7340"
/// listen_tcp = "0.0.0.0:7341"
/// bootstrap = ["<nodeid>@quic://203.0.113.7:7340"]
/// mdns = true
///
/// [node.limits]
/// max_connections = 1024
///
/// [node.timeouts]
/// ack = 2.0
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RunFile {
    #[serde(default)]
    keystore: Option<PathBuf>,
    #[serde(default)]
    control: Option<PathBuf>,
    #[serde(default)]
    padding: Option<String>,
    #[serde(default = "default_node")]
    node: NodeConfig,
}

fn default_node() -> NodeConfig {
    NodeConfig {
        listen_quic: Some(SocketAddr::from(([0, 0, 0, 0], 7340))),
        mdns: true,
        ..NodeConfig::default()
    }
}

impl Default for RunFile {
    fn default() -> Self {
        Self {
            keystore: None,
            control: None,
            padding: None,
            node: default_node(),
        }
    }
}

/// The resolved settings of `meshara run`.
pub(crate) struct RunSettings {
    pub(crate) keystore: Option<PathBuf>,
    pub(crate) control: Option<PathBuf>,
    pub(crate) padding: Padding,
    pub(crate) node: NodeConfig,
}

/// Reads `path` (if any), applies `MESHARA_*` overrides from `env`, validates.
pub(crate) fn load_settings(
    path: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<RunSettings> {
    let file: RunFile = match path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading config {}", path.display()))?;
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        None => RunFile::default(),
    };
    let mut node = file.node;
    let sock = |name: &str, v: String| -> Result<SocketAddr> {
        v.parse()
            .with_context(|| format!("{name}: {v:?} is not a socket address like 0.0.0.0:7340"))
    };
    if let Some(v) = env("MESHARA_LISTEN_QUIC") {
        node.listen_quic = if v.is_empty() || v == "off" {
            None
        } else {
            Some(sock("MESHARA_LISTEN_QUIC", v)?)
        };
    }
    if let Some(v) = env("MESHARA_LISTEN_TCP") {
        node.listen_tcp = if v.is_empty() || v == "off" {
            None
        } else {
            Some(sock("MESHARA_LISTEN_TCP", v)?)
        };
    }
    if let Some(v) = env("MESHARA_BOOTSTRAP") {
        node.bootstrap = v
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<PeerAddr>()
                    .map_err(|e| anyhow::anyhow!("MESHARA_BOOTSTRAP: {e}"))
            })
            .collect::<Result<_>>()?;
    }
    if let Some(v) = env("MESHARA_MDNS") {
        node.mdns = match v.as_str() {
            "1" | "true" | "yes" | "on" => true,
            "0" | "false" | "no" | "off" => false,
            _ => bail!("MESHARA_MDNS: {v:?} is not a boolean (true/false)"),
        };
    }
    if let Some(v) = env("MESHARA_DATA_DIR") {
        node.data_dir = Some(PathBuf::from(v));
    }
    if let Some(v) = env("MESHARA_TARGET_PEERS") {
        node.target_peers = v
            .parse()
            .with_context(|| format!("MESHARA_TARGET_PEERS: {v:?} is not a number"))?;
    }
    if let Some(v) = env("MESHARA_MAX_CONNECTIONS") {
        node.limits = Limits {
            max_connections: v
                .parse()
                .with_context(|| format!("MESHARA_MAX_CONNECTIONS: {v:?} is not a number"))?,
            ..node.limits
        };
    }
    let padding = match file.padding.as_deref() {
        None | Some("buckets") => Padding::Buckets,
        Some("none") => Padding::None,
        Some(other) => bail!("padding: {other:?} is not \"buckets\" or \"none\""),
    };
    node.validate()
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    Ok(RunSettings {
        keystore: file.keystore,
        control: file.control,
        padding,
        node,
    })
}

pub(crate) async fn run(
    settings: RunSettings,
    keystore: PathBuf,
    passphrase: zeroize::Zeroizing<String>,
    json_output: bool,
) -> Result<()> {
    let data_dir = settings
        .node
        .data_dir
        .clone()
        .or_else(|| keystore.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    crate::devnet::private_dir(&data_dir)
        .with_context(|| format!("creating data directory {}", data_dir.display()))?;
    let control = settings
        .control
        .unwrap_or_else(|| data_dir.join("control.sock"));
    let mut config = settings.node;
    config.data_dir = Some(data_dir);
    let node = NodeBuilder::new()
        .config(config)
        .padding(settings.padding)
        .keystore(&keystore, passphrase.as_bytes().to_vec())
        .start()
        .await
        .with_context(|| format!("starting the node (keystore {})", keystore.display()))?;
    crate::control::serve(node.clone(), control.clone()).await?;
    if json_output {
        out(json!({"event": "started", "status": crate::control::status_json(&node), "control": control.display().to_string()}).to_string());
    } else {
        out(format!("node        {}", node.node_id()));
        out(format!("fingerprint {}", node.fingerprint()));
        if let Some(a) = node.quic_addr() {
            out(format!("quic        {a}"));
        }
        if let Some(a) = node.tcp_addr() {
            out(format!("tcp         {a}"));
        }
        out(format!(
            "control     {}  (meshara status --control {0})",
            control.display()
        ));
    }
    let mut events = node.events();
    loop {
        tokio::select! {
            e = events.recv() => match e {
                Some(e) => print_event(&e, json_output),
                None => break,
            },
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    if !json_output {
        out("stopping…");
    }
    node.stop().await;
    let _ = std::fs::remove_file(&control);
    Ok(())
}

pub(crate) fn print_event(event: &Event, json_output: bool) {
    if json_output {
        let mut value = event.to_json();
        value["event"] = json!(event.kind());
        out(value.to_string());
        return;
    }
    let line = match event {
        Event::Message(m) => format!(
            "message from {}: {}",
            m.from.fingerprint(),
            String::from_utf8_lossy(&m.content)
        ),
        Event::Broadcast(b) => format!(
            "broadcast [{}] from {}: {}",
            b.broadcast.topic,
            b.broadcast.author.fingerprint(),
            String::from_utf8_lossy(&b.broadcast.content)
        ),
        Event::Query(q) => format!(
            "query {} from {} (no handler in `meshara run`)",
            q.method,
            q.from.fingerprint()
        ),
        Event::PeerConnected {
            peer,
            transport,
            addr,
            ..
        } => format!(
            "peer connected {} over {transport}{}",
            peer.fingerprint(),
            addr.map(|a| format!(" ({a})")).unwrap_or_default()
        ),
        Event::PeerDisconnected { peer, reason } => {
            format!("peer disconnected {}: {reason}", peer.fingerprint())
        }
        Event::PeerDiscovered { peer, via } => {
            format!("discovered {} via {via}", peer.fingerprint())
        }
        Event::DeliveryConfirmed {
            id, peer, latency, ..
        } => format!(
            "delivered {id:?} to {} in {:.2} ms",
            peer.fingerprint(),
            latency.as_secs_f64() * 1e3
        ),
        Event::MessageStored { id, peer, holders } => format!(
            "{} is offline: {id:?} is held by {holders} nodes until it returns",
            peer.fingerprint()
        ),
        Event::DeliveryFailed { id, peer, attempts } => format!(
            "NOT delivered {id:?} to {} after {attempts} attempts",
            peer.fingerprint()
        ),
        Event::Error { context, message } => format!("error ({context}): {message}"),
        Event::Lagged { missed } => format!("(missed {missed} events)"),
        _ => return,
    };
    out(line);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn env_overrides_and_precise_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "[node]\nlisten_quic = \"127.0.0.1:9000\"\nmdns = false\n",
        )
        .unwrap();
        let s = load_settings(Some(&path), &no_env).unwrap();
        assert_eq!(s.node.listen_quic, Some("127.0.0.1:9000".parse().unwrap()));
        let env = |k: &str| (k == "MESHARA_LISTEN_QUIC").then(|| "127.0.0.1:9100".to_owned());
        let s = load_settings(Some(&path), &env).unwrap();
        assert_eq!(s.node.listen_quic, Some("127.0.0.1:9100".parse().unwrap()));
        let bad_env = |k: &str| (k == "MESHARA_MDNS").then(|| "maybe".to_owned());
        let err = load_settings(Some(&path), &bad_env)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("MESHARA_MDNS"), "{err}");
        std::fs::write(
            &path,
            "[node]\nlisten_quic = \"127.0.0.1:9000\"\n\n[node.limits]\nmax_conections = 5\n",
        )
        .unwrap();
        let err = format!("{:#}", load_settings(Some(&path), &no_env).err().unwrap());
        assert!(
            err.contains("max_conections") && err.contains("node.toml"),
            "{err}"
        );
        std::fs::write(&path, "[node.timeouts]\nkeepalive = 100\n").unwrap();
        let err = format!("{:#}", load_settings(Some(&path), &no_env).err().unwrap());
        assert!(err.contains("timeouts.keepalive"), "{err}");
    }
}
