//! Real nodes over a hostile network: every node is reachable only through a UDP relay on
//! loopback that delays datagrams by 50 ms ± 10 ms (so they also arrive out of order), loses 5%,
//! duplicates 2%, and can partition the nodes into two halves. Every acknowledged private
//! message must be delivered exactly once, and broadcasts must reach every node after the
//! partition heals.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use meshara_core::net::{Limits, PeerAddr, Timeouts};
use meshara_core::record::{Address, Transport};
use meshara_core::{
    Event, Identity, MessageId, Node, NodeBuilder, NodeConfig, NodeId, PendingDelivery,
};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

const NODES: usize = 6;
const WAIT: Duration = Duration::from_secs(90);
const DELAY_MS: u64 = 50;
const JITTER_MS: u64 = 10;
const LOSS: f64 = 0.05;
const DUPLICATE: f64 = 0.02;

/// What every relay shares: which real node address is which node, which side of the
/// partition each node is on, and a seeded random stream.
struct Network {
    index: Mutex<HashMap<SocketAddr, usize>>,
    partitioned: AtomicBool,
    rng: AtomicU64,
    delivered: AtomicU64,
    dropped: AtomicU64,
    duplicated: AtomicU64,
    cut: AtomicU64,
}

impl Network {
    fn random(&self) -> f64 {
        // splitmix64 over a shared counter: seeded and safe across tasks (the order in which
        // tasks draw from it follows the scheduler, so runs differ in detail).
        let mut z = self
            .rng
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    fn blocked(&self, a: Option<usize>, b: usize) -> bool {
        let side = |n: usize| n < NODES / 2;
        let cut = self.partitioned.load(Ordering::Relaxed) && a.is_some_and(|a| side(a) != side(b));
        if cut {
            self.cut.fetch_add(1, Ordering::Relaxed);
        }
        cut
    }

    /// Sends `datagram` through the impairments: lost, or delayed (and maybe twice).
    fn forward(
        self: &Arc<Self>,
        socket: Arc<UdpSocket>,
        datagram: Vec<u8>,
        to: Option<SocketAddr>,
    ) {
        if self.random() < LOSS {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let copies = if self.random() < DUPLICATE {
            self.duplicated.fetch_add(1, Ordering::Relaxed);
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = DELAY_MS - JITTER_MS + (self.random() * (2 * JITTER_MS) as f64) as u64;
            let (socket, datagram, net) = (socket.clone(), datagram.clone(), self.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                let sent = match to {
                    Some(to) => socket.send_to(&datagram, to).await,
                    None => socket.send(&datagram).await,
                };
                if sent.is_ok() {
                    net.delivered.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    }
}

/// The relay in front of node `target`: peers send to its front socket; each peer gets its own
/// back socket toward the node, so replies find their way back.
struct Relay {
    front: SocketAddr,
    task: JoinHandle<()>,
}

async fn relay(
    net: Arc<Network>,
    target: usize,
    node: tokio::sync::oneshot::Receiver<SocketAddr>,
) -> Relay {
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let front_addr = front.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let node_addr = node.await.unwrap();
        let mut backs: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
        let mut buf = vec![0u8; 65_536];
        loop {
            let Ok((len, from)) = front.recv_from(&mut buf).await else {
                return;
            };
            let source = net.index.lock().unwrap().get(&from).copied();
            if net.blocked(source, target) {
                net.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let back = match backs.get(&from) {
                Some(b) => b.clone(),
                None => {
                    let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
                    back.connect(node_addr).await.unwrap();
                    backs.insert(from, back.clone());
                    // Replies from the node to this peer.
                    let (back2, front2, net2) = (back.clone(), front.clone(), net.clone());
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 65_536];
                        while let Ok(len) = back2.recv(&mut buf).await {
                            let source = net2.index.lock().unwrap().get(&from).copied();
                            if net2.blocked(source, target) {
                                net2.dropped.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                            net2.forward(front2.clone(), buf[..len].to_vec(), Some(from));
                        }
                    });
                    back
                }
            };
            net.forward(back, buf[..len].to_vec(), None);
        }
    });
    Relay {
        front: front_addr,
        task,
    }
}

/// Every node sends one private message to the next node and one to the node opposite.
async fn send_round(nodes: &[Node], round: usize) -> Vec<(NodeId, PendingDelivery)> {
    let mut out = Vec::new();
    for (i, from) in nodes.iter().enumerate() {
        for step in [1, 3] {
            let to = nodes[(i + step) % NODES].node_id();
            let text = format!("round {round} from {i}");
            let pending = from
                .send_private(to, "text/plain", Bytes::from(text))
                .await
                .unwrap();
            out.push((to, pending));
        }
    }
    out
}

/// Everything a node delivered, for counting afterwards.
#[derive(Default)]
struct Seen {
    messages: Vec<MessageId>,
    broadcasts: Vec<MessageId>,
}

fn address(port: u16) -> Address {
    Address {
        transport: Transport::Quic,
        host: "127.0.0.1".into(),
        port,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_arrive_once_and_broadcasts_heal_across_a_lossy_partitioned_network()
{
    let net = Arc::new(Network {
        index: Mutex::new(HashMap::new()),
        partitioned: AtomicBool::new(false),
        rng: AtomicU64::new(0x5eed),
        delivered: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
        duplicated: AtomicU64::new(0),
        cut: AtomicU64::new(0),
    });
    let mut nodes: Vec<Node> = Vec::new();
    let mut relays = Vec::new();
    let mut seen: Vec<Arc<Mutex<Seen>>> = Vec::new();
    let mut collectors = Vec::new();
    for i in 0..NODES {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let r = relay(net.clone(), i, rx).await;
        let mut builder = NodeBuilder::new()
            .config(NodeConfig {
                // Peers only ever see the relay's address.
                advertise: vec![address(r.front.port())],
                limits: Limits {
                    max_connections_per_ip: 64,
                    ..Limits::default()
                },
                ..NodeConfig::default()
            })
            .identity(Identity::generate())
            .listen_quic("127.0.0.1:0".parse().unwrap())
            .mdns(false)
            .timeouts(Timeouts {
                ack: Duration::from_millis(500),
                max_attempts: 40,
                delivery: WAIT,
                reconnect_min: Duration::from_millis(200),
                reconnect_max: Duration::from_secs(2),
                peer_exchange: Duration::from_millis(500),
                ..Timeouts::default()
            });
        if let Some(seed) = nodes.first() {
            builder = builder.bootstrap(PeerAddr {
                node: Some(seed.node_id()),
                address: address(relays.first().map_or(0, |r: &Relay| r.front.port())),
            });
        }
        let node = builder.start().await.unwrap();
        let real = node.quic_addr().unwrap();
        let real: SocketAddr = format!("{}:{}", real.address.host, real.address.port)
            .parse()
            .unwrap();
        net.index.lock().unwrap().insert(real, i);
        tx.send(real).unwrap();
        let log = Arc::new(Mutex::new(Seen::default()));
        let mut events = node.events();
        let log2 = log.clone();
        collectors.push(tokio::spawn(async move {
            while let Some(e) = events.next().await {
                match e {
                    Event::Message(m) => log2.lock().unwrap().messages.push(m.id),
                    Event::Broadcast(b) => log2.lock().unwrap().broadcasts.push(b.broadcast.id),
                    _ => {}
                }
            }
        }));
        seen.push(log);
        relays.push(r);
        nodes.push(node);
    }
    tokio::time::timeout(WAIT, async {
        while nodes.iter().any(|n| n.peers().len() < 2) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the mesh forms through the relays");

    // Private traffic before, during and after a partition; broadcasts on both sides of it.
    let mut pending = Vec::new();
    let mut broadcasts = Vec::new();
    pending.extend(send_round(&nodes, 0).await);
    broadcasts.push((
        1,
        nodes[1].broadcast("chaos", "text/plain", "before").unwrap(),
    ));

    net.partitioned.store(true, Ordering::Relaxed);
    pending.extend(send_round(&nodes, 1).await);
    broadcasts.push((
        0,
        nodes[0]
            .broadcast("chaos", "text/plain", "left side")
            .unwrap(),
    ));
    broadcasts.push((
        NODES - 1,
        nodes[NODES - 1]
            .broadcast("chaos", "text/plain", "right side")
            .unwrap(),
    ));
    tokio::time::sleep(Duration::from_secs(4)).await;
    net.partitioned.store(false, Ordering::Relaxed);

    pending.extend(send_round(&nodes, 2).await);
    broadcasts.push((
        2,
        nodes[2].broadcast("chaos", "text/plain", "after").unwrap(),
    ));

    // Every message is acknowledged (the deadline is long enough to outlast the partition).
    let mut confirmed: Vec<(NodeId, MessageId)> = Vec::new();
    for (to, p) in pending {
        let id = p.id();
        let d = tokio::time::timeout(WAIT, p.confirmed())
            .await
            .expect("confirmation in time")
            .unwrap_or_else(|e| panic!("message {id} not delivered: {e}"));
        assert_eq!(d.peer, to);
        confirmed.push((to, id));
    }
    // Every broadcast reaches every node but its author, after the heal.
    tokio::time::timeout(WAIT, async {
        loop {
            let complete = seen.iter().enumerate().all(|(i, s)| {
                let s = s.lock().unwrap();
                broadcasts
                    .iter()
                    .filter(|(author, _)| *author != i)
                    .all(|(_, id)| s.broadcasts.contains(id))
            });
            if complete {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        let counts: Vec<usize> = seen
            .iter()
            .map(|s| s.lock().unwrap().broadcasts.len())
            .collect();
        panic!("broadcasts did not reach everyone: {counts:?}")
    });
    // Let late duplicates (resends, relay duplicates) arrive before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let index: HashMap<NodeId, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.node_id(), i))
        .collect();
    for (to, id) in &confirmed {
        let s = seen[index[to]].lock().unwrap();
        let copies = s.messages.iter().filter(|m| *m == id).count();
        assert_eq!(copies, 1, "message {id} delivered {copies} times");
    }
    for (i, s) in seen.iter().enumerate() {
        let s = s.lock().unwrap();
        let mut b = s.broadcasts.clone();
        b.sort_unstable_by_key(|id| id.0);
        let before = b.len();
        b.dedup();
        assert_eq!(b.len(), before, "node {i} delivered a broadcast twice");
        assert_eq!(
            s.messages.len(),
            confirmed.iter().filter(|(to, _)| index[to] == i).count()
        );
    }
    // The network really was hostile.
    assert!(net.dropped.load(Ordering::Relaxed) > 0);
    assert!(net.duplicated.load(Ordering::Relaxed) > 0);
    assert!(
        net.cut.load(Ordering::Relaxed) > 0,
        "the partition cut traffic"
    );
    eprintln!(
        "relayed {} datagrams, dropped {} (cut by the partition {}), duplicated {}; {} messages, {} broadcasts",
        net.delivered.load(Ordering::Relaxed),
        net.dropped.load(Ordering::Relaxed),
        net.cut.load(Ordering::Relaxed),
        net.duplicated.load(Ordering::Relaxed),
        confirmed.len(),
        broadcasts.len()
    );
    futures_util::future::join_all(nodes.iter().map(Node::stop)).await;
    for r in relays {
        r.task.abort();
    }
    for c in collectors {
        c.abort();
    }
}
