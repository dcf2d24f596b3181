//! Time to distribute one release to many nodes: the swarm (nodes fetch chunks from each
//! other as well as from the authority) beside the authority serving every node alone, in
//! one run on loopback.
//!
//! `cargo bench -p meshara-core --bench distribution` (100 MiB to 20 nodes).
//! `DIST_BENCH_MIB` and `DIST_BENCH_NODES` change the size and the number of nodes.
//! Prints markdown; docs/benchmarks.md records the results.
//!
//! Each mode runs twice: on bare loopback, where every node shares the same two cores and
//! the authority's upload is as fast as anyone's, and with the authority behind a UDP relay
//! that paces what it sends to `DIST_BENCH_UPLINK_MIBPS` (default 25 MiB/s, about 200 Mbit/s)
//! through a 256-packet queue that drops when full, like a real bottleneck link. That is the
//! case swarming is for: an authority whose uplink is smaller than its audience.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshara_core::net::{Limits, NodeConfig, Timeouts};
use meshara_core::record::{Address, Transport};
use meshara_core::update::{AuthorityKey, Release, Role, Root};
use meshara_core::updater::{AutoUpdate, UpdateEvent, Updater};
use meshara_core::{Identity, Node, NodeBuilder};
use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc};

/// Chunk size of the release.
const CHUNK: u32 = 256 * 1024;
/// Other clients each client dials, besides the authority.
const LINKS: usize = 3;
/// Longest a whole distribution may take before the run is called failed.
const DEADLINE: Duration = Duration::from_secs(600);

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn builder() -> NodeBuilder {
    builder_with(NodeConfig {
        listen_quic: Some("127.0.0.1:0".parse().unwrap()),
        ..NodeConfig::default()
    })
}

fn builder_with(config: NodeConfig) -> NodeBuilder {
    NodeBuilder::new()
        .config(config)
        .identity(Identity::generate())
        .limits(Limits {
            max_connections: 256,
            max_connections_per_ip: 256,
            ..Limits::default()
        })
        .timeouts(Timeouts {
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(1),
            ..Timeouts::default()
        })
}

fn content(len: usize) -> Vec<u8> {
    let mut x = 0x2545_f491_u32;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// A UDP relay in front of `target`: datagrams from clients pass straight through; the
/// target's answers go out through one queue paced at `bytes_per_sec` and dropped when the
/// queue is full. Returns the address clients dial. Runs until the runtime ends.
async fn paced_relay(target: SocketAddr, bytes_per_sec: f64) -> SocketAddr {
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = front.local_addr().unwrap();
    let (tx, mut rx) = mpsc::channel::<(Vec<u8>, SocketAddr)>(256);
    // The bottleneck: one paced sender for everything the target sends.
    let out = front.clone();
    tokio::spawn(async move {
        let start = Instant::now();
        let mut sent = 0.0f64;
        while let Some((packet, to)) = rx.recv().await {
            sent += packet.len() as f64;
            let due = start + Duration::from_secs_f64(sent / bytes_per_sec);
            tokio::time::sleep_until(due.into()).await;
            let _ = out.send_to(&packet, to).await;
        }
    });
    tokio::spawn(async move {
        let mut backs: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
        let mut buf = vec![0u8; 65_536];
        loop {
            let Ok((n, from)) = front.recv_from(&mut buf).await else {
                return;
            };
            let back = match backs.get(&from) {
                Some(b) => b.clone(),
                None => {
                    let b = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
                    b.connect(target).await.unwrap();
                    let (b2, tx) = (b.clone(), tx.clone());
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 65_536];
                        while let Ok(n) = b2.recv(&mut buf).await {
                            // A full queue drops, as a router would.
                            let _ = tx.try_send((buf[..n].to_vec(), from));
                        }
                    });
                    backs.insert(from, b.clone());
                    b
                }
            };
            let _ = back.send(&buf[..n]).await;
        }
    });
    addr
}

struct Run {
    elapsed: Duration,
    first: Duration,
    authority_mib: f64,
    peers_mib: f64,
}

/// Publishes one release to `nodes` fresh clients and waits until every one holds it.
async fn distribute(body: &[u8], nodes: usize, swarm: bool, uplink: Option<f64>) -> Run {
    let keys: Vec<Identity> = (0..2).map(|_| Identity::generate()).collect();
    let root = Root {
        sequence: 1,
        expires_at: now() + 86_400,
        keys: keys
            .iter()
            .map(|k| AuthorityKey {
                key: k.node_id(),
                name: "bench".into(),
                roles: [Role::Root, Role::Release].into(),
            })
            .collect(),
        root_threshold: 2,
        release_threshold: 2,
        revoked: vec![],
    }
    .sign(&keys.iter().collect::<Vec<_>>())
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Behind a paced relay, the authority advertises the relay's address (as a server behind
    // a bottleneck link or NAT would its public one) and does not dial out for peers, so every
    // byte it sends crosses the bottleneck.
    let (auth, dial) = match uplink {
        None => {
            let auth = builder().start().await.unwrap();
            let dial = auth.quic_addr().unwrap();
            (auth, dial)
        }
        Some(rate) => {
            let port = std::net::UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let listen = SocketAddr::from(([127, 0, 0, 1], port));
            let relay = paced_relay(listen, rate).await;
            let auth = builder_with(NodeConfig {
                listen_quic: Some(listen),
                advertise: vec![Address {
                    transport: Transport::Quic,
                    host: "127.0.0.1".into(),
                    port: relay.port(),
                }],
                target_peers: 0,
                ..NodeConfig::default()
            })
            .start()
            .await
            .unwrap();
            let mut dial = auth.quic_addr().unwrap();
            dial.address.port = relay.port();
            (auth, dial)
        }
    };
    let publisher = Updater::builder(auth.clone(), dir.path().join("authority"), root.clone())
        .cache_bytes(4 * body.len() as u64)
        .start()
        .unwrap();

    let mut clients: Vec<(Node, Updater)> = Vec::new();
    let mut receivers: Vec<broadcast::Receiver<UpdateEvent>> = Vec::new();
    for i in 0..nodes {
        let node = builder().bootstrap(dial.clone()).start().await.unwrap();
        // A mesh: each client also dials a few earlier ones.
        for j in 1..=LINKS.min(i) {
            node.connect(&clients[i - j].0.quic_addr().unwrap())
                .await
                .unwrap();
        }
        let updater =
            Updater::builder(node.clone(), dir.path().join(format!("c{i}")), root.clone())
                .subscribe("app", "stable")
                .policy(AutoUpdate::Download)
                .authority(auth.node_id())
                .fetch_from_peers(swarm)
                .cache_bytes(4 * body.len() as u64)
                .start()
                .unwrap();
        receivers.push(updater.events());
        clients.push((node, updater));
    }
    tokio::time::timeout(Duration::from_secs(30), async {
        while auth.peers().len() < nodes {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("clients connected to the authority");

    let release =
        Release::for_content("app", "stable", "1.0.0", 1, now() + 86_400, body, CHUNK).unwrap();
    let signed = release.sign(&keys.iter().collect::<Vec<_>>()).unwrap();
    let path = dir.path().join("content");
    std::fs::write(&path, body).unwrap();

    let started = Instant::now();
    publisher.publish(signed, &path).await.unwrap();
    let mut waits = tokio::task::JoinSet::new();
    for mut events in receivers {
        waits.spawn(async move {
            loop {
                match events.recv().await {
                    Ok(UpdateEvent::Downloaded { .. }) => return started.elapsed(),
                    Ok(UpdateEvent::DownloadFailed { error, .. }) => {
                        eprintln!("a download failed and will be retried: {error}");
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(e) => panic!("events ended: {e}"),
                }
            }
        });
    }
    let mut times = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        while let Some(t) = waits.join_next().await {
            times.push(t.unwrap());
        }
    })
    .await
    .expect("every node downloaded the release");
    let elapsed = started.elapsed();
    times.sort_unstable();
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let run = Run {
        elapsed,
        first: times[0],
        authority_mib: mib(publisher.served_bytes()),
        peers_mib: mib(clients.iter().map(|(_, u)| u.served_bytes()).sum()),
    };
    for (node, updater) in &clients {
        updater.stop();
        node.stop().await;
    }
    publisher.stop();
    auth.stop().await;
    run
}

fn main() {
    let mib = env("DIST_BENCH_MIB", 100);
    let nodes = env("DIST_BENCH_NODES", 20);
    let uplink = env("DIST_BENCH_UPLINK_MIBPS", 25);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let body = content(mib << 20);
    println!(
        "## Distributing {mib} MiB to {nodes} nodes ({} KiB chunks)\n",
        CHUNK / 1024
    );
    println!(
        "| authority uplink | mode | all nodes done | first node done | authority served | peers served | aggregate goodput |"
    );
    println!("|---|---|---|---|---|---|---|");
    let runs = [
        (None, false),
        (None, true),
        (Some(uplink), false),
        (Some(uplink), true),
    ];
    for (limit, swarm) in runs {
        let name = if swarm {
            "swarm (peers too)"
        } else {
            "authority alone"
        };
        let link = limit.map_or("loopback".to_owned(), |l| format!("{l} MiB/s"));
        let r = rt.block_on(distribute(
            &body,
            nodes,
            swarm,
            limit.map(|l| (l << 20) as f64),
        ));
        let total_mib = (mib * nodes) as f64;
        println!(
            "| {link} | {name} | {:.1} s | {:.1} s | {:.0} MiB | {:.0} MiB | {:.0} MiB/s |",
            r.elapsed.as_secs_f64(),
            r.first.as_secs_f64(),
            r.authority_mib,
            r.peers_mib,
            total_mib / r.elapsed.as_secs_f64(),
        );
    }
}
