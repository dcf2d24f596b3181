//! `meshara devnet`: a local network of real nodes on loopback, with traffic.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use meshara_core::net::Timeouts;
use meshara_core::{Event, KdfParams, Node, NodeBuilder};

use crate::out;

pub(crate) struct DevnetOptions {
    pub(crate) nodes: usize,
    pub(crate) dir: Option<PathBuf>,
    pub(crate) duration: Option<u64>,
    pub(crate) interval_ms: u64,
    pub(crate) bootstrap: Option<String>,
    pub(crate) update_root: Option<PathBuf>,
}

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    delivered: AtomicU64,
    failed: AtomicU64,
    broadcasts: AtomicU64,
    broadcast_receipts: AtomicU64,
    queries: AtomicU64,
}

/// Every node follows `devnet-app` on `stable` and downloads releases from the mesh.
fn follow_updates(
    nodes: &[Node],
    dir: &std::path::Path,
    root: &std::path::Path,
    name: &(impl Fn(&meshara_core::NodeId) -> String + Clone + Send + 'static),
    authority: Option<&str>,
) -> Result<()> {
    use meshara_core::updater::{AutoUpdate, UpdateEvent, Updater};
    let signed = meshara_core::update::decode_signed(&std::fs::read(root)?)?;
    let authority = authority
        .and_then(|a| a.split('@').next())
        .and_then(|id| id.parse::<meshara_core::NodeId>().ok());
    out(format!(
        "every node follows releases of devnet-app/stable (root {}); publish one on the authority to watch it spread",
        root.display()
    ));
    for (i, node) in nodes.iter().enumerate() {
        let mut b = Updater::builder(
            node.clone(),
            dir.join(format!("node{i}/updates")),
            signed.clone(),
        )
        .subscribe("devnet-app", "stable")
        .policy(AutoUpdate::Download);
        if let Some(a) = authority {
            b = b.authority(a);
        }
        let updater = b.start()?;
        let mut events = updater.events();
        let name = name.clone();
        tokio::spawn(async move {
            let _keep = updater;
            while let Ok(e) = events.recv().await {
                match e {
                    UpdateEvent::Available { release, from } => out(format!(
                        "  node{i} verified release {} {} #{} (from {})",
                        release.package,
                        release.semver,
                        release.sequence,
                        from.map_or_else(|| "a check".into(), |f| name(&f))
                    )),
                    UpdateEvent::Downloaded { release } => out(format!(
                        "  node{i} downloaded and verified {} {} ({} bytes)",
                        release.package, release.semver, release.size
                    )),
                    UpdateEvent::Refused { error, .. } => {
                        out(format!("  node{i} refused update metadata: {error}"))
                    }
                    UpdateEvent::PeerMisbehaved { peer, reason } => out(format!(
                        "  node{i} dropped {} as a source: {reason}",
                        name(&peer)
                    )),
                    _ => {}
                }
            }
        });
    }
    Ok(())
}

pub(crate) async fn devnet(opts: DevnetOptions) -> Result<()> {
    if !(2..=32).contains(&opts.nodes) {
        bail!("--nodes must be between 2 and 32");
    }
    let dir = match opts.dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("meshara-devnet-{}", std::process::id())),
    };
    private_dir(&dir)?;
    const PASS: &str = "devnet passphrase (not for production)";
    let timeouts = Timeouts {
        peer_exchange: Duration::from_secs(2),
        ..Timeouts::default()
    };
    out(format!(
        "Meshara devnet: {} nodes on 127.0.0.1, state in {}",
        opts.nodes,
        dir.display()
    ));
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..opts.nodes {
        let home = dir.join(format!("node{i}"));
        private_dir(&home)?;
        let mut builder = NodeBuilder::new()
            .keystore_with_params(home.join("identity.key"), PASS, KdfParams::minimum())
            .listen_quic("127.0.0.1:0".parse()?)
            .listen_tcp("127.0.0.1:0".parse()?)
            .timeouts(timeouts.clone());
        // Everyone bootstraps from node0 and learns the rest by peer exchange; node0 joins
        // the outside peer, if any.
        if let Some(first) = nodes.first() {
            if let Some(addr) = first.quic_addr() {
                builder = builder.bootstrap(addr);
            }
        } else if let Some(peer) = &opts.bootstrap {
            builder = builder.bootstrap(peer.parse()?);
        }
        let node = builder.start().await?;
        let control = home.join("control.sock");
        crate::control::serve(node.clone(), control.clone()).await?;
        out(format!(
            "  node{i}  {}  quic {}  control {}",
            node.node_id(),
            node.quic_addr()
                .map(|a| a.address.to_string())
                .unwrap_or_default(),
            control.display()
        ));
        nodes.push(node);
    }
    let names: Arc<Vec<(meshara_core::NodeId, String)>> = Arc::new(
        nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.node_id(), format!("node{i}")))
            .collect(),
    );
    let name = {
        let names = names.clone();
        move |id: &meshara_core::NodeId| {
            names
                .iter()
                .find(|(n, _)| n == id)
                .map_or_else(|| id.fingerprint().to_string(), |(_, s)| s.clone())
        }
    };
    if let Some(root) = &opts.update_root {
        follow_updates(&nodes, &dir, root, &name, opts.bootstrap.as_deref())?;
    }
    let tally = Arc::new(Tally::default());
    // Every node answers the "devnet.time" query and counts broadcasts.
    for (i, node) in nodes.iter().enumerate() {
        let mut events = node.events();
        let tally = tally.clone();
        let name = name.clone();
        tokio::spawn(async move {
            while let Some(e) = events.recv().await {
                match e {
                    Event::Query(q) if q.method == "devnet.time" => {
                        let _ = q.respond(format!("node{i} time {} ms", meshara_core_time_ms()));
                    }
                    Event::Broadcast(_) => {
                        tally.broadcast_receipts.fetch_add(1, Ordering::Relaxed);
                    }
                    Event::PeerConnected {
                        peer, transport, ..
                    } => {
                        out(format!(
                            "  node{i} connected to {} over {transport}",
                            name(&peer)
                        ));
                    }
                    _ => {}
                }
            }
        });
    }
    // Wait for the mesh to form (bounded).
    let formed = Instant::now();
    while formed.elapsed() < Duration::from_secs(15)
        && nodes.iter().any(|n| n.peers().len() + 1 < nodes.len())
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    out(format!(
        "mesh formed in {:.1} s: every node knows {} peers",
        formed.elapsed().as_secs_f64(),
        nodes.iter().map(|n| n.peers().len()).min().unwrap_or(0)
    ));
    out(format!(
        "watch a node:   cargo run -q -p meshara-core -- status --control {}/node1/control.sock",
        dir.display()
    ));
    out(format!(
        "list its peers: cargo run -q -p meshara-core -- peers --control {}/node1/control.sock",
        dir.display()
    ));
    out(format!(
        "its metrics:    cargo run -q -p meshara-core -- metrics --control {}/node1/control.sock",
        dir.display()
    ));
    out(format!(
        "send yourself:  cargo run -q -p meshara-core -- send --control {}/node1/control.sock {} 'hello'",
        dir.display(),
        nodes[0].node_id()
    ));
    out("traffic (Ctrl-C to stop):");

    let started = Instant::now();
    let mut round: u64 = 0;
    let mut ticker = tokio::time::interval(Duration::from_millis(opts.interval_ms.max(10)));
    let mut last_summary = Instant::now();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        if opts
            .duration
            .is_some_and(|d| started.elapsed() >= Duration::from_secs(d))
        {
            break;
        }
        round += 1;
        let n = nodes.len();
        let from = (round as usize * 7) % n;
        let to = (from + 1 + (round as usize % (n - 1))) % n;
        let (a, b) = (nodes[from].clone(), nodes[to].clone());
        let tally_c = tally.clone();
        let name_c = name.clone();
        match round % 5 {
            0 => {
                let text = format!("devnet broadcast #{round}");
                if a.broadcast("devnet", "text/plain", text.clone()).is_ok() {
                    tally.broadcasts.fetch_add(1, Ordering::Relaxed);
                    out(format!(
                        "  {} broadcast [devnet] {text:?} to the mesh",
                        name(&a.node_id())
                    ));
                }
            }
            3 => {
                tokio::spawn(async move {
                    let t = Instant::now();
                    match a
                        .query(b.node_id(), "devnet.time", &b""[..], Duration::from_secs(5))
                        .await
                    {
                        Ok(answer) => {
                            tally_c.queries.fetch_add(1, Ordering::Relaxed);
                            out(format!(
                                "  {} asked {} devnet.time: {:?} ({:.2} ms)",
                                name_c(&a.node_id()),
                                name_c(&b.node_id()),
                                String::from_utf8_lossy(&answer),
                                t.elapsed().as_secs_f64() * 1e3
                            ));
                        }
                        Err(e) => out(format!(
                            "  query {} -> {} failed: {e}",
                            name_c(&a.node_id()),
                            name_c(&b.node_id())
                        )),
                    }
                });
            }
            _ => {
                tokio::spawn(async move {
                    let text = format!("private hello #{round}");
                    tally_c.sent.fetch_add(1, Ordering::Relaxed);
                    let pending = match a
                        .send_private(b.node_id(), "text/plain", text.clone())
                        .await
                    {
                        Ok(p) => p,
                        Err(e) => {
                            tally_c.failed.fetch_add(1, Ordering::Relaxed);
                            out(format!("  send failed: {e}"));
                            return;
                        }
                    };
                    match pending.confirmed().await {
                        Ok(d) => {
                            tally_c.delivered.fetch_add(1, Ordering::Relaxed);
                            out(format!(
                                "  {} -> {} private {text:?}: delivered, end-to-end ack in {:.2} ms",
                                name_c(&a.node_id()),
                                name_c(&b.node_id()),
                                d.latency.as_secs_f64() * 1e3
                            ));
                        }
                        Err(e) => {
                            tally_c.failed.fetch_add(1, Ordering::Relaxed);
                            out(format!(
                                "  {} -> {}: {e}",
                                name_c(&a.node_id()),
                                name_c(&b.node_id())
                            ));
                        }
                    }
                });
            }
        }
        if last_summary.elapsed() >= Duration::from_secs(10) {
            last_summary = Instant::now();
            summary(&tally);
        }
    }
    // Let in-flight acknowledgements land before the final count.
    tokio::time::sleep(Duration::from_millis(500)).await;
    summary(&tally);
    for node in &nodes {
        node.stop().await;
    }
    if tally.delivered.load(Ordering::Relaxed) == 0 {
        bail!("no private message was delivered");
    }
    Ok(())
}

/// Creates `dir` (and parents) readable only by us, as keystore directories should be.
pub(crate) fn private_dir(dir: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    Ok(())
}

/// Writes `bytes` to `path` readable only by us, through a temporary file and a rename.
pub(crate) fn write_private(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn summary(t: &Tally) {
    out(format!(
        "summary: private {} sent / {} delivered / {} failed; broadcasts {} ({} receipts); queries answered {}",
        t.sent.load(Ordering::Relaxed),
        t.delivered.load(Ordering::Relaxed),
        t.failed.load(Ordering::Relaxed),
        t.broadcasts.load(Ordering::Relaxed),
        t.broadcast_receipts.load(Ordering::Relaxed),
        t.queries.load(Ordering::Relaxed),
    ));
}

fn meshara_core_time_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
