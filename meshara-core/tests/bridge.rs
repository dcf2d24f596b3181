//! Bridge circuits between real nodes over loopback QUIC: a node whose record lists only an
//! address nobody here can dial is reached through a bridge, end to end, and the bridge's
//! policy (allow list, circuit rate, per-peer and total circuits, bandwidth) holds.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use meshara_core::net::testing::{exchange_traffic, stream_both_ways};
use meshara_core::net::transport::{Connection, StreamConnection};
use meshara_core::net::{Bridge, DropReason, Limits, Timeouts};
use meshara_core::{
    Address, Capability, Identity, Node, NodeBuilder, NodeConfig, NodeId, Transport,
    TransportError, TransportKind,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(30);

fn config(bridge: Bridge) -> NodeConfig {
    NodeConfig {
        target_peers: 0,
        limits: Limits {
            max_connections_per_ip: 64,
            ..Limits::default()
        },
        timeouts: Timeouts {
            connect: Duration::from_secs(5),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(1),
            peer_exchange: Duration::from_millis(200),
            ..Timeouts::default()
        },
        bridge,
        ..NodeConfig::default()
    }
}

fn open_bridge() -> Bridge {
    Bridge {
        enabled: true,
        ..Bridge::default()
    }
}

/// A bridge for I2P-only peers (it advertises the capability; reaching such peers here means
/// they connected to it first).
async fn bridge(policy: Bridge) -> Node {
    NodeBuilder::new()
        .config(config(policy))
        .identity(Identity::generate())
        .listen_quic("127.0.0.1:0".parse().unwrap())
        .listen_tcp("127.0.0.1:0".parse().unwrap())
        .capability(Capability::BridgeI2p)
        .start()
        .await
        .unwrap()
}

/// A node whose record lists only an I2P address (that nobody here can dial), connected to
/// `bridge`: reachable by others only through it.
async fn hidden(bridge: &Node) -> Node {
    let mut cfg = config(Bridge::default());
    // It has a QUIC socket only because this test runs in one process; a real I2P-only node
    // could not dial the others' QUIC addresses, which its self lookup would do here.
    cfg.timeouts.dht_refresh = Duration::ZERO;
    cfg.advertise = vec![Address {
        transport: Transport::I2p,
        host: format!("{}.b32.i2p", "a".repeat(52)),
        port: 7340,
    }];
    let node = NodeBuilder::new()
        .config(cfg)
        .identity(Identity::generate())
        .listen_quic("127.0.0.1:0".parse().unwrap())
        .start()
        .await
        .unwrap();
    node.connect(&bridge.quic_addr().unwrap()).await.unwrap();
    node
}

/// A clearnet node that knows `bridge` and, through it, the record of `target`.
async fn clearnet(bridge: &Node, target: &Node) -> Node {
    clearnet_from("127.0.0.1", bridge, target).await
}

/// [`clearnet`] with its socket (and so its source address) on `ip`.
async fn clearnet_from(ip: &str, bridge: &Node, target: &Node) -> Node {
    let node = NodeBuilder::new()
        .config(config(Bridge::default()))
        .identity(Identity::generate())
        .listen_quic(format!("{ip}:0").parse().unwrap())
        .start()
        .await
        .unwrap();
    node.connect(&bridge.quic_addr().unwrap()).await.unwrap();
    let id = target.node_id();
    tokio::time::timeout(WAIT, async {
        while node.record_of(&id).is_none() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the target's record arrives by peer exchange");
    node
}

fn transport_to(node: &Node, peer: NodeId) -> Option<TransportKind> {
    node.peers()
        .into_iter()
        .find(|p| p.node_id == peer)
        .map(|p| p.transport)
}

fn refusal(e: TransportError) -> String {
    match e {
        TransportError::CircuitRefused { reason, .. } => reason,
        other => panic!("expected a circuit refusal, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_node_is_reached_through_a_bridge() {
    let b = bridge(open_bridge()).await;
    let t = hidden(&b).await;
    let a = clearnet(&b, &t).await;
    assert!(
        b.record().has_capability(Capability::BridgeI2p),
        "the bridge advertises itself"
    );
    // Messages, broadcasts, queries and a 10 MiB stream each way, with no address to dial:
    // the node finds the bridge in its records and opens a circuit by itself.
    exchange_traffic(&a, &t, 10 << 20).await;
    assert_eq!(transport_to(&a, t.node_id()), Some(TransportKind::Relayed));
    assert_eq!(transport_to(&t, a.node_id()), Some(TransportKind::Relayed));
    let metrics = b.metrics_text();
    assert!(
        metrics.contains("meshara_bridge_circuit_requests_total{result=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("meshara_bridge_circuits 1"), "{metrics}");
    // Nodes that are not bridges export no bridge series.
    for node in [&a, &t] {
        let text = node.metrics_text();
        assert!(
            !text.contains("meshara_bridge_") && text.contains("meshara_connections"),
            "{text}"
        );
    }
    // The bridge spliced at least both 10 MiB streams (it cannot read them: TLS end to end).
    let spliced: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("meshara_bridge_bytes_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(spliced > 20 << 20, "{spliced}");
    // When the end-to-end connection closes, the bridge forgets the circuit.
    a.remove_peer(t.node_id());
    tokio::time::timeout(WAIT, async {
        while !b.metrics_text().contains("meshara_bridge_circuits 0") {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the circuit is released");
    for n in [a, t, b] {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuits_refused_by_policy_say_why() {
    // Not a bridge at all.
    let plain = bridge(Bridge::default()).await;
    let t = hidden(&plain).await;
    let a = clearnet(&plain, &t).await;
    let why = refusal(
        a.connect_via(plain.node_id(), t.node_id())
            .await
            .unwrap_err(),
    );
    assert!(why.contains("not a bridge"), "{why}");
    assert_eq!(plain.drops(DropReason::Bridge), 1);

    // An allow list without us.
    let strict = bridge(Bridge {
        allow: vec![Identity::generate().node_id()],
        ..open_bridge()
    })
    .await;
    let t2 = hidden(&strict).await;
    let a2 = clearnet(&strict, &t2).await;
    let why = refusal(
        a2.connect_via(strict.node_id(), t2.node_id())
            .await
            .unwrap_err(),
    );
    assert!(why.contains("allow list"), "{why}");
    // … which lets in whoever is on it.
    let listed = bridge(Bridge {
        allow: vec![a2.node_id()],
        ..open_bridge()
    })
    .await;
    t2.connect(&listed.quic_addr().unwrap()).await.unwrap();
    a2.connect(&listed.quic_addr().unwrap()).await.unwrap();
    a2.connect_via(listed.node_id(), t2.node_id())
        .await
        .unwrap();

    // A target the bridge cannot reach.
    let stranger = Identity::generate().node_id();
    let open = bridge(open_bridge()).await;
    a.connect(&open.quic_addr().unwrap()).await.unwrap();
    let why = refusal(a.connect_via(open.node_id(), stranger).await.unwrap_err());
    assert!(why.contains("cannot reach"), "{why}");
    // A circuit needs three distinct nodes; that is checked before asking anyone.
    assert!(matches!(
        a.connect_via(open.node_id(), open.node_id()).await,
        Err(TransportError::Connect(_))
    ));
    for n in [a, a2, t, t2, plain, strict, listed, open] {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_rate_and_counts_are_limited() {
    // One new circuit per minute per peer.
    let b = bridge(Bridge {
        circuits_per_minute: 1,
        ..open_bridge()
    })
    .await;
    let t = hidden(&b).await;
    let a = clearnet(&b, &t).await;
    a.connect_via(b.node_id(), t.node_id()).await.unwrap();
    let why = refusal(a.connect_via(b.node_id(), t.node_id()).await.unwrap_err());
    assert!(why.contains("too many new circuits"), "{why}");
    // Closing every circuit does not refill the budget early.
    a.remove_peer(t.node_id());
    a.connect(&b.quic_addr().unwrap()).await.unwrap();
    let why = refusal(a.connect_via(b.node_id(), t.node_id()).await.unwrap_err());
    assert!(why.contains("too many new circuits"), "{why}");

    // One circuit per peer at a time: a second target is refused while the first is open.
    let b2 = bridge(Bridge {
        max_circuits_per_peer: 1,
        ..open_bridge()
    })
    .await;
    let t1 = hidden(&b2).await;
    let t2 = hidden(&b2).await;
    let a2 = clearnet(&b2, &t1).await;
    a2.connect_via(b2.node_id(), t1.node_id()).await.unwrap();
    let why = refusal(
        a2.connect_via(b2.node_id(), t2.node_id())
            .await
            .unwrap_err(),
    );
    assert!(why.contains("too many circuits for this peer"), "{why}");

    // One circuit in all: another peer is refused while it is open, and served once it closed.
    let b3 = bridge(Bridge {
        max_circuits: 1,
        ..open_bridge()
    })
    .await;
    let t3 = hidden(&b3).await;
    let a3 = clearnet(&b3, &t3).await;
    let c3 = clearnet(&b3, &t3).await;
    a3.connect_via(b3.node_id(), t3.node_id()).await.unwrap();
    let why = refusal(
        c3.connect_via(b3.node_id(), t3.node_id())
            .await
            .unwrap_err(),
    );
    assert!(why.contains("circuit limit"), "{why}");
    a3.remove_peer(t3.node_id());
    tokio::time::timeout(WAIT, async {
        loop {
            match c3.connect_via(b3.node_id(), t3.node_id()).await {
                Ok(_) => break,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await
    .expect("the freed slot serves the next peer");
    assert!(b3.drops(DropReason::Bridge) >= 1);
    for n in [a, t, b, a2, t1, t2, b2, a3, c3, t3, b3] {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throwaway_identities_from_one_address_share_its_circuit_limit() {
    // Per-peer limits are generous; the address block's are not.
    let b = bridge(Bridge {
        max_circuits_per_ip: 3,
        ..open_bridge()
    })
    .await;
    let t = hidden(&b).await;
    // An abuser makes up a fresh identity per circuit, all from 127.0.66.1.
    let mut abusers = Vec::new();
    let mut refused = Vec::new();
    for _ in 0..6 {
        let a = clearnet_from("127.0.66.1", &b, &t).await;
        match a.connect_via(b.node_id(), t.node_id()).await {
            Ok(_) => {}
            Err(e) => refused.push(refusal(e)),
        }
        abusers.push(a);
    }
    assert_eq!(refused.len(), 3, "{refused:?}");
    assert!(
        refused
            .iter()
            .all(|r| r.contains("too many circuits from this address")),
        "{refused:?}"
    );
    // An honest node from another address is served, end to end.
    let honest = clearnet(&b, &t).await;
    honest.connect_via(b.node_id(), t.node_id()).await.unwrap();
    exchange_traffic(&honest, &t, 64 << 10).await;
    // Closing the abusers' circuits gives the address its slots back.
    for a in &abusers {
        a.remove_peer(t.node_id());
    }
    let late = clearnet_from("127.0.66.1", &b, &t).await;
    tokio::time::timeout(WAIT, async {
        while late.connect_via(b.node_id(), t.node_id()).await.is_err() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the address block's slots come back");
    for n in abusers.into_iter().chain([honest, late, t, b]) {
        n.stop().await;
    }
}

/// The bandwidth limit holds: a stream through a bridge limited to 256 KiB/s cannot move
/// 1 MiB each way faster than the token bucket refills. This checks a lower bound only (a
/// slow machine makes it slower, never faster), so it cannot flake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_bandwidth_is_limited_per_peer() {
    let rate = 256 * 1024;
    let b = bridge(Bridge {
        bytes_per_sec: rate,
        ..open_bridge()
    })
    .await;
    let t = hidden(&b).await;
    let a = clearnet(&b, &t).await;
    a.connect_via(b.node_id(), t.node_id()).await.unwrap();
    let started = Instant::now();
    stream_both_ways(&a, &t, 1 << 20).await;
    let elapsed = started.elapsed();
    // 2 MiB crossed, at most one second's burst of it for free.
    let floor = Duration::from_secs_f64(((2u64 << 20) - rate) as f64 / rate as f64);
    assert!(elapsed >= floor, "{elapsed:?} < {floor:?}");
    for n in [a, t, b] {
        n.stop().await;
    }
}

/// Hostile circuit requests over a correctly authenticated connection: garbage, truncation,
/// an unknown operation, a forged `INCOMING` naming someone else. Each is refused or dropped,
/// and the bridge goes on relaying for an honest peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_circuit_requests_leave_the_bridge_serving() {
    let b = bridge(open_bridge()).await;
    let t = hidden(&b).await;
    let tcp: SocketAddr = format!("127.0.0.1:{}", b.tcp_addr().unwrap().address.port)
        .parse()
        .unwrap();
    let hostile = std::sync::Arc::new(Identity::generate());
    let io = tokio::net::TcpStream::connect(tcp).await.unwrap();
    let conn = StreamConnection::connect(io, &hostile, Some(b.node_id()), TransportKind::Tcp, None)
        .await
        .unwrap();
    // Truncated request: the bridge gives up after its timeout, holding nothing.
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(&[3, 1, 0xAA]).await.unwrap();
    // Unknown operation.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let mut req = vec![3, 9];
    req.extend_from_slice(t.node_id().as_bytes());
    send.write_all(&req).await.unwrap();
    let status = recv.read_u8().await.unwrap();
    assert_eq!(status, 6, "bad request");
    // A forged INCOMING to the bridge: it is nobody's target, and the "source" never proves
    // itself, so no connection is registered.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let mut req = vec![3, 2];
    req.extend_from_slice(t.node_id().as_bytes());
    send.write_all(&req).await.unwrap();
    assert_eq!(recv.read_u8().await.unwrap(), 0);
    let _ = recv.read_u8().await;
    send.write_all(b"not a TLS client hello").await.unwrap();
    // The honest peer is served all along.
    let a = clearnet(&b, &t).await;
    exchange_traffic(&a, &t, 1 << 20).await;
    assert_eq!(transport_to(&a, t.node_id()), Some(TransportKind::Relayed));
    tokio::time::timeout(WAIT, async {
        while b.drops(DropReason::Bridge) < 2 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the truncated and the unknown request are counted");
    assert!(
        !b.peers()
            .iter()
            .any(|p| p.node_id == t.node_id() && p.transport == TransportKind::Relayed),
        "the forged circuit registered nothing"
    );
    conn.close(0, "done");
    for n in [a, t, b] {
        n.stop().await;
    }
}
