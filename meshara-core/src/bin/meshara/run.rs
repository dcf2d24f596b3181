//! `meshara run`: one node from a TOML file with environment overrides.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use std::time::Duration;

use meshara_core::net::{Limits, NodeConfig, PeerAddr};
use meshara_core::updater::{AutoUpdate, FileInstaller, UpdateEvent, Updater};
use meshara_core::{Event, Node, NodeBuilder, NodeId, Padding};
use serde::Deserialize;
use serde_json::json;

use crate::out;

/// The `meshara run` configuration file.
///
/// ```toml
/// keystore = "/var/lib/meshara/identity.key"   # default: --keystore / $MESHARA_HOME
/// control = "/run/meshara/control.sock"        # default: <data_dir>/control.sock
/// padding = "buckets"                          # or "none"
/// http_listen = "127.0.0.1:9340"               # /healthz, /readyz, /metrics (default: off)
///
/// [node]
/// listen_quic = "0.0.0.0:7340"
/// listen_tcp = "0.0.0.0:7341"
/// bootstrap = ["<nodeid>@quic://203.0.113.7:7340", "file:/etc/meshara/peers/seed-0.crt@quic://seed-0:7340"]
/// mdns = true                                  # default: false (what it reveals: docs/protocol.md §15.20)
/// # identity_file = "/etc/meshara/identity/node.pem"  # a PEM Ed25519 key instead of the keystore
///
/// [updates]                                    # follow an authority's signed releases
/// authorities = ["file:/etc/meshara/peers/authority.crt"]
/// # root = "/etc/meshara/root.pb"              # else fetched once from the first authority
/// follow = ["myapp/stable"]
/// policy = "install"                           # "notify", "download" or "install"
/// install_path = "/var/lib/meshara/myapp"
/// check_interval_secs = 300
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
    #[serde(default)]
    http_listen: Option<SocketAddr>,
    #[serde(default = "default_node")]
    node: NodeConfig,
    #[serde(default)]
    updates: Option<UpdatesFile>,
}

/// The `[updates]` section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdatesFile {
    #[serde(default)]
    root: Option<PathBuf>,
    #[serde(default)]
    authorities: Vec<String>,
    #[serde(default)]
    follow: Vec<String>,
    #[serde(default)]
    policy: Option<String>,
    #[serde(default)]
    install_path: Option<PathBuf>,
    #[serde(default)]
    check_interval_secs: Option<u64>,
}

/// The resolved `[updates]` section.
pub(crate) struct UpdateSettings {
    /// The signed root to trust; `None`: fetched from the first authority that answers.
    root: Option<PathBuf>,
    authorities: Vec<NodeId>,
    follow: Vec<(String, String)>,
    policy: AutoUpdate,
    install_path: Option<PathBuf>,
    check_interval: Option<Duration>,
}

impl UpdatesFile {
    fn resolve(self) -> Result<UpdateSettings> {
        let authorities = self
            .authorities
            .iter()
            .map(|a| {
                meshara_core::keyfile::resolve_node_id(a)
                    .map_err(|e| anyhow::anyhow!("updates.authorities: {a:?}: {e}"))
            })
            .collect::<Result<Vec<_>>>()?;
        let follow = self
            .follow
            .iter()
            .map(|f| match f.split_once('/') {
                Some((p, c)) if !p.is_empty() && !c.is_empty() && !c.contains('/') => {
                    Ok((p.to_owned(), c.to_owned()))
                }
                _ => bail!("updates.follow: {f:?} is not \"package/channel\""),
            })
            .collect::<Result<Vec<_>>>()?;
        if follow.is_empty() {
            bail!("updates.follow: name at least one \"package/channel\" to follow");
        }
        let policy = match self.policy.as_deref() {
            None | Some("notify") => AutoUpdate::Notify,
            Some("download") => AutoUpdate::Download,
            Some("install") => AutoUpdate::Install,
            Some(other) => {
                bail!("updates.policy: {other:?} is not \"notify\", \"download\" or \"install\"")
            }
        };
        if matches!(policy, AutoUpdate::Install) && self.install_path.is_none() {
            bail!("updates.policy = \"install\" needs updates.install_path");
        }
        if self.root.is_none() && authorities.is_empty() {
            bail!(
                "updates: give a root (the authority's root.pb) or at least one authority to \
                 take the root from"
            );
        }
        if let Some(root) = &self.root {
            let bytes = std::fs::read(root)
                .with_context(|| format!("updates.root: reading {}", root.display()))?;
            let signed = meshara_core::update::decode_signed(&bytes)
                .with_context(|| format!("updates.root: {}", root.display()))?;
            meshara_core::update::Root::decode(&signed.body)
                .with_context(|| format!("updates.root: {}", root.display()))?;
        }
        if self.check_interval_secs == Some(0) {
            bail!("updates.check_interval_secs must be greater than 0");
        }
        Ok(UpdateSettings {
            root: self.root,
            authorities,
            follow,
            policy,
            install_path: self.install_path,
            check_interval: self.check_interval_secs.map(Duration::from_secs),
        })
    }
}

fn default_node() -> NodeConfig {
    NodeConfig {
        listen_quic: Some(SocketAddr::from(([0, 0, 0, 0], 7340))),
        // Off unless asked for: even a nameless announcement tells everyone on the local
        // network that a Meshara node runs at this address.
        mdns: false,
        ..NodeConfig::default()
    }
}

impl Default for RunFile {
    fn default() -> Self {
        Self {
            keystore: None,
            control: None,
            padding: None,
            http_listen: None,
            node: default_node(),
            updates: None,
        }
    }
}

/// The resolved settings of `meshara run`.
pub(crate) struct RunSettings {
    pub(crate) keystore: Option<PathBuf>,
    pub(crate) control: Option<PathBuf>,
    pub(crate) padding: Padding,
    pub(crate) http_listen: Option<SocketAddr>,
    pub(crate) node: NodeConfig,
    pub(crate) updates: Option<UpdateSettings>,
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
                PeerAddr::from_config(s).map_err(|e| anyhow::anyhow!("MESHARA_BOOTSTRAP: {e}"))
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
    if let Some(v) = env("MESHARA_IDENTITY_FILE") {
        node.identity_file = (!v.is_empty()).then(|| PathBuf::from(v));
    }
    let mut http_listen = file.http_listen;
    if let Some(v) = env("MESHARA_HTTP_LISTEN") {
        http_listen = if v.is_empty() || v == "off" {
            None
        } else {
            Some(sock("MESHARA_HTTP_LISTEN", v)?)
        };
    }
    if let Some(v) = env("MESHARA_DIAL_PRIVATE") {
        node.dial_private = match v.as_str() {
            "" | "auto" => None,
            "1" | "true" | "yes" | "on" => Some(true),
            "0" | "false" | "no" | "off" => Some(false),
            _ => bail!("MESHARA_DIAL_PRIVATE: {v:?} is not true, false or auto"),
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
    if node.identity_file.is_some() && file.keystore.is_some() {
        bail!("keystore and node.identity_file are both set: choose one");
    }
    let updates = file.updates.map(UpdatesFile::resolve).transpose()?;
    Ok(RunSettings {
        keystore: file.keystore,
        control: file.control,
        padding,
        http_listen,
        node,
        updates,
    })
}

/// `meshara run --check`: the settings are loaded (so pinned peers and the update root were
/// read); the identity file, if any, is opened too. Prints the identity.
pub(crate) fn check(settings: &RunSettings, json_output: bool) -> Result<()> {
    let node = match &settings.node.identity_file {
        Some(path) => Some(
            meshara_core::keyfile::read_identity_file(path)
                .with_context(|| format!("node.identity_file {}", path.display()))?
                .node_id(),
        ),
        None => None,
    };
    if json_output {
        out(json!({"valid": true, "node": node.map(|n| n.to_string())}).to_string());
    } else {
        match node {
            Some(n) => out(format!("configuration is valid; node {n}")),
            None => out("configuration is valid (the identity is in the keystore)"),
        }
    }
    Ok(())
}

pub(crate) async fn run(
    settings: RunSettings,
    keystore: Option<(PathBuf, zeroize::Zeroizing<String>)>,
    json_output: bool,
) -> Result<()> {
    let data_dir = settings
        .node
        .data_dir
        .clone()
        .or_else(|| {
            keystore
                .as_ref()
                .and_then(|(k, _)| k.parent().map(Path::to_path_buf))
        })
        .unwrap_or_else(|| PathBuf::from("."));
    crate::devnet::private_dir(&data_dir)
        .with_context(|| format!("creating data directory {}", data_dir.display()))?;
    let control = settings
        .control
        .unwrap_or_else(|| data_dir.join("control.sock"));
    let mut config = settings.node;
    config.data_dir = Some(data_dir.clone());
    let mut builder = NodeBuilder::new().config(config).padding(settings.padding);
    let identity_source = match &keystore {
        Some((path, passphrase)) => {
            builder = builder.keystore(path, passphrase.as_bytes().to_vec());
            format!("keystore {}", path.display())
        }
        None => "identity file".to_owned(),
    };
    let node = builder
        .start()
        .await
        .with_context(|| format!("starting the node ({identity_source})"))?;
    crate::control::serve(node.clone(), control.clone()).await?;
    let http = match settings.http_listen {
        Some(addr) => Some(crate::http::serve(addr, node.clone()).await?),
        None => None,
    };
    if let Some(updates) = settings.updates {
        let dir = data_dir.join("updates");
        tokio::spawn(follow_updates(node.clone(), dir, updates, json_output));
    }
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
        if let Some(a) = http {
            out(format!("http        http://{a}/healthz /readyz /metrics"));
        }
    }
    let mut events = node.events();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            e = events.recv() => match e {
                Some(e) => print_event(&e, json_output),
                None => break,
            },
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
    }
    if !json_output {
        out("stopping…");
    }
    node.stop().await;
    let _ = std::fs::remove_file(&control);
    Ok(())
}

/// Follows the configured releases: the root from the file, else the one kept from an
/// earlier start, else fetched from the first configured authority that answers (retried with
/// a backoff up to a minute while none does), kept as `<dir>/root.pb`.
async fn follow_updates(node: Node, dir: PathBuf, updates: UpdateSettings, json_output: bool) {
    let report = move |value: serde_json::Value, line: String| {
        if json_output {
            out(value.to_string());
        } else {
            out(line);
        }
    };
    if let Err(e) = crate::devnet::private_dir(&dir) {
        report(
            json!({"event": "update_error", "error": e.to_string()}),
            format!("updates: cannot create {}: {e}", dir.display()),
        );
        return;
    }
    let kept = dir.join("root.pb");
    let root = match updates.root.as_ref().map(std::fs::read) {
        Some(Ok(bytes)) => meshara_core::update::decode_signed(&bytes).map_err(|e| e.to_string()),
        Some(Err(e)) => Err(e.to_string()),
        None if kept.exists() => std::fs::read(&kept)
            .map_err(|e| e.to_string())
            .and_then(|b| meshara_core::update::decode_signed(&b).map_err(|e| e.to_string())),
        None => Ok(fetch_root(&node, &updates.authorities, &kept, &report).await),
    };
    let root = match root {
        Ok(root) => root,
        Err(e) => {
            report(
                json!({"event": "update_error", "error": e}),
                format!("updates: no usable root: {e}"),
            );
            return;
        }
    };
    let installs = matches!(updates.policy, AutoUpdate::Install);
    let mut builder = Updater::builder(node.clone(), &dir, root).policy(updates.policy);
    for (package, channel) in &updates.follow {
        builder = builder.subscribe(package, channel);
    }
    for a in &updates.authorities {
        builder = builder.authority(*a);
    }
    if let Some(every) = updates.check_interval {
        builder = builder.check_interval(every);
    }
    if let Some(path) = &updates.install_path {
        builder = builder.installer(FileInstaller::new(path));
    }
    let updater = match builder.start() {
        Ok(u) => u,
        Err(e) => {
            report(
                json!({"event": "update_error", "error": e.to_string()}),
                format!("updates: {e}"),
            );
            return;
        }
    };
    let mut events = updater.events();
    // A node that installs what it follows says what it runs: `package/version` of the
    // installed release becomes its record's agent (what explorers count as adoption).
    let advertise = |package: &str, semver: &str| {
        if installs {
            if let Err(e) = node.set_agent(&format!("{package}/{semver}")) {
                tracing::warn!(error = %e, "cannot publish the installed version");
            }
        }
    };
    for (package, channel) in &updates.follow {
        if let Some(r) = updater.latest(package, channel) {
            if updater.installed(package, channel) == Some(r.sequence) {
                advertise(&r.package, &r.semver);
            }
        }
    }
    // A first check at once, so a node that starts after a release does not wait for the
    // next announcement or interval.
    for (package, channel) in &updates.follow {
        if let Err(e) = updater.check(package, channel).await {
            tracing::debug!(%package, %channel, error = %e, "first update check");
        }
    }
    while let Ok(e) = events.recv().await {
        if let UpdateEvent::Installed { release } = &e {
            advertise(&release.package, &release.semver);
        }
        let (kind, line) = match &e {
            UpdateEvent::Available { release, .. } => (
                "update_available",
                format!(
                    "update available: {} {} #{}",
                    release.package, release.semver, release.sequence
                ),
            ),
            UpdateEvent::Downloaded { release } => (
                "update_downloaded",
                format!(
                    "update downloaded and verified: {} {}",
                    release.package, release.semver
                ),
            ),
            UpdateEvent::Installed { release } => (
                "update_installed",
                format!("update installed: {} {}", release.package, release.semver),
            ),
            UpdateEvent::RootRotated { .. } => {
                ("update_root_rotated", "update root rotated".to_owned())
            }
            UpdateEvent::Refused { error, .. } => (
                "update_refused",
                format!("update metadata refused: {error}"),
            ),
            _ => continue,
        };
        report(json!({"event": kind, "detail": line}), line);
    }
    drop(updater);
}

/// Asks each authority in turn for its root until one gives a valid one; keeps it at `kept`.
async fn fetch_root(
    node: &Node,
    authorities: &[NodeId],
    kept: &Path,
    report: &impl Fn(serde_json::Value, String),
) -> meshara_core::proto::SignedMetadata {
    let mut wait = Duration::from_secs(1);
    loop {
        for a in authorities {
            match meshara_core::updater::fetch_root(node, *a).await {
                Ok(root) => {
                    use prost::Message as _;
                    if let Err(e) = crate::devnet::write_private(kept, &root.encode_to_vec()) {
                        tracing::warn!(path = %kept.display(), error = %e, "cannot keep the update root");
                    }
                    report(
                        json!({"event": "update_root", "authority": a.to_string()}),
                        format!("updates: took the signed root from authority {a}"),
                    );
                    return root;
                }
                Err(e) => {
                    tracing::info!(authority = %a, error = %e, "no root from this authority yet")
                }
            }
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(60));
    }
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
    fn mdns_is_off_unless_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "[node]\nlisten_quic = \"127.0.0.1:9000\"\n").unwrap();
        assert!(!load_settings(None, &no_env).unwrap().node.mdns);
        assert!(!load_settings(Some(&path), &no_env).unwrap().node.mdns);
        let on = |k: &str| (k == "MESHARA_MDNS").then(|| "1".to_owned());
        assert!(load_settings(Some(&path), &on).unwrap().node.mdns);
        std::fs::write(&path, "[node]\nmdns = true\n").unwrap();
        assert!(load_settings(Some(&path), &no_env).unwrap().node.mdns);
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
