//! Two or more real nodes over real loopback sockets (QUIC and TLS over TCP).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use meshara_core::net::testing::{exchange_traffic, next_message, wait_for};
use meshara_core::net::{DropReason, Limits, PeerAddr, Timeouts};
use meshara_core::{
    Event, Identity, Node, NodeBuilder, NodeId, Privacy, SendError, TransportError, TransportKind,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(20);

fn fast_timeouts() -> Timeouts {
    Timeouts {
        ack: Duration::from_millis(300),
        reconnect_min: Duration::from_millis(100),
        reconnect_max: Duration::from_secs(1),
        peer_exchange: Duration::from_millis(500),
        ..Timeouts::default()
    }
}

fn builder() -> NodeBuilder {
    NodeBuilder::new()
        .identity(Identity::generate())
        .listen_quic("127.0.0.1:0".parse().unwrap())
        .listen_tcp("127.0.0.1:0".parse().unwrap())
        .timeouts(fast_timeouts())
}

async fn node() -> Node {
    builder().start().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_nodes_exchange_everything_both_ways() {
    let a = node().await;
    let b = node().await;
    let id = a.connect(&b.quic_addr().unwrap()).await.unwrap();
    assert_eq!(id, b.node_id());
    exchange_traffic(&a, &b, 100 << 20).await;
    let peers = a.peers();
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].node_id, b.node_id());
    assert!(peers[0].messages_in > 0 && peers[0].bytes_out > 0);
    let metrics = a.metrics_text();
    assert!(
        metrics.contains("meshara_messages_total{direction=\"in\",kind=\"private\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("meshara_delivery_latency_seconds_count"),
        "{metrics}"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_transport_carries_the_same_traffic() {
    let a = NodeBuilder::new()
        .identity(Identity::generate())
        .no_quic_listener()
        .listen_tcp("127.0.0.1:0".parse().unwrap())
        .timeouts(fast_timeouts())
        .start()
        .await
        .unwrap();
    let b = node().await;
    a.connect(&b.tcp_addr().unwrap()).await.unwrap();
    assert_eq!(
        a.peers()[0].transport,
        meshara_core::net::TransportKind::Tcp
    );
    exchange_traffic(&a, &b, 100 << 20).await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialing_the_wrong_node_id_is_refused() {
    let a = node().await;
    let b = node().await;
    let impostor = Identity::generate().node_id();
    for addr in [b.quic_addr().unwrap(), b.tcp_addr().unwrap()] {
        let wrong = PeerAddr {
            node: Some(impostor),
            address: addr.address.clone(),
        };
        let err = a.connect(&wrong).await.unwrap_err();
        assert!(
            matches!(err, TransportError::WrongPeer { expected } if expected == impostor),
            "{addr}: {err:?}"
        );
    }
    assert!(a.peers().is_empty());
    // The right id still works.
    assert_eq!(
        a.connect(&b.quic_addr().unwrap()).await.unwrap(),
        b.node_id()
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_the_same_keystore_keeps_the_node_id() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("identity.key");
    let params = meshara_core::KdfParams::minimum();
    let start = || {
        NodeBuilder::new()
            .keystore_with_params(&path, "correct horse", params)
            .listen_quic("127.0.0.1:0".parse().unwrap())
            .start()
    };
    let first = start().await.unwrap();
    let id = first.node_id();
    first.stop().await;
    let second = start().await.unwrap();
    assert_eq!(second.node_id(), id);
    second.stop().await;
    let wrong = NodeBuilder::new()
        .keystore_with_params(&path, "wrong", params)
        .listen_quic("127.0.0.1:0".parse().unwrap())
        .start()
        .await
        .unwrap_err();
    assert!(wrong.to_string().contains("passphrase"), "{wrong}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_learns_the_network_from_one_bootstrap() {
    let hub = node().await;
    let mut others = Vec::new();
    for _ in 0..3 {
        others.push(
            builder()
                .bootstrap(hub.quic_addr().unwrap())
                .start()
                .await
                .unwrap(),
        );
    }
    // Every node ends up connected to every other one via peer exchange.
    tokio::time::timeout(WAIT, async {
        loop {
            if others.iter().all(|n| n.peers().len() == 3) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("peer exchange did not connect the network");
    // A broadcast from one leaf reaches the others.
    let mut e2 = others[2].events();
    let id = others[0].broadcast("t", "", "x").unwrap();
    let got = wait_for(&mut e2, |e| match e {
        Event::Broadcast(b) => Some(b.broadcast.id),
        _ => None,
    })
    .await;
    assert_eq!(got, id);
    for n in others {
        n.stop().await;
    }
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bootstrap_peer_is_usable_right_after_start() {
    let hub = node().await;
    let mut incoming = hub.listen_streams("hello");
    // Right after start the bootstrap dial may still be under way and the hub's record is
    // not known yet: a message and a stream to it wait for the connection instead of failing.
    let leaf = builder()
        .bootstrap(hub.quic_addr().unwrap())
        .start()
        .await
        .unwrap();
    let delivered = leaf
        .send_private(hub.node_id(), "text/plain", "first")
        .await
        .unwrap();
    let mut stream = leaf.open_stream(hub.node_id(), "hello").await.unwrap();
    stream.write_all(b"hi").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut accepted = tokio::time::timeout(WAIT, incoming.accept())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(accepted.peer(), leaf.node_id());
    let mut got = Vec::new();
    accepted.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"hi");
    delivered.confirmed().await.unwrap();
    leaf.stop().await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_to_an_unreachable_peer_fails_after_retries() {
    let timeouts = Timeouts {
        ack: Duration::from_millis(100),
        max_attempts: 2,
        delivery: Duration::from_secs(2),
        connect: Duration::from_millis(500),
        ..fast_timeouts()
    };
    let a = builder().timeouts(timeouts).start().await.unwrap();
    let b = node().await;
    a.connect(&b.quic_addr().unwrap()).await.unwrap();
    let b_id = b.node_id();
    b.stop().await;
    let mut events = a.events();
    let pending = a.send_private(b_id, "", "anyone there?").await.unwrap();
    let id = pending.id();
    let err = tokio::time::timeout(WAIT, pending.confirmed())
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, meshara_core::DeliveryError::Unacknowledged { id: i, .. } if i == id),
        "{err}"
    );
    let failed = wait_for(&mut events, |e| match e {
        Event::DeliveryFailed { id, .. } => Some(id),
        _ => None,
    })
    .await;
    assert_eq!(failed, id);
    a.stop().await;
}

/// A message asked to travel over Tor or I2P is refused by a node that has neither, even
/// with a QUIC connection to its recipient; what does arrive says which transport carried it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tor_and_i2p_messages_never_fall_back_to_clearnet() {
    let a = node().await;
    let b = node().await;
    a.connect(&b.quic_addr().unwrap()).await.unwrap();
    let mut events = b.events();
    for privacy in [Privacy::Tor, Privacy::I2p] {
        let err = a
            .send_private_with(b.node_id(), "text/plain", "not over QUIC", privacy)
            .await
            .unwrap_err();
        assert!(
            matches!(err, SendError::NoTransport(p) if p == privacy),
            "{err}"
        );
        assert!(err.to_string().contains(privacy.as_str()), "{err}");
    }
    let pending = a
        .send_private(b.node_id(), "text/plain", "over QUIC")
        .await
        .unwrap();
    let got = next_message(&mut events).await;
    // The first message b receives is the direct one: the refused ones never left a.
    assert_eq!(&got.content[..], b"over QUIC");
    assert_eq!(got.via, Some(TransportKind::Quic));
    tokio::time::timeout(WAIT, pending.confirmed())
        .await
        .unwrap()
        .unwrap();

    // Over TLS-over-TCP the message says so.
    let c = node().await;
    c.connect(&b.tcp_addr().unwrap()).await.unwrap();
    c.send_private(b.node_id(), "text/plain", "over TCP")
        .await
        .unwrap();
    let got = next_message(&mut events).await;
    assert_eq!(got.via, Some(TransportKind::Tcp));
    for n in [a, b, c] {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_time_out_and_unanswered_queries_are_rejected() {
    let a = node().await;
    let b = node().await;
    a.connect(&b.quic_addr().unwrap()).await.unwrap();
    // Nobody subscribed on b: the query is answered 501 at once.
    let err = a
        .query(
            b.node_id(),
            "nobody-home",
            &b""[..],
            Duration::from_secs(10),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, meshara_core::QueryError::Rejected { status: 501, .. }),
        "{err}"
    );
    // A subscriber that holds the query without answering: the asker times out.
    let mut events = b.events();
    let holder = tokio::spawn(async move {
        let q = wait_for(&mut events, |e| match e {
            Event::Query(q) => Some(q),
            _ => None,
        })
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        drop(q);
    });
    let err = a
        .query(b.node_id(), "slow", &b""[..], Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(
        matches!(err, meshara_core::QueryError::Timeout { .. }),
        "{err}"
    );
    holder.await.unwrap();
    // Built-in status query.
    let status = a
        .query(
            b.node_id(),
            "meshara.status",
            &b""[..],
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert!(!status.is_empty());
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ban_and_remove_peer() {
    let a = node().await;
    let b = node().await;
    a.connect(&b.quic_addr().unwrap()).await.unwrap();
    let mut events = a.events();
    a.ban_peer(b.node_id());
    let gone = wait_for(&mut events, |e| match e {
        Event::PeerDisconnected { peer, .. } => Some(peer),
        _ => None,
    })
    .await;
    assert_eq!(gone, b.node_id());
    // b cannot come back while banned, and a refuses to send to it.
    let _ = b.connect(&a.quic_addr().unwrap()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(a.peers().is_empty());
    assert!(a.drops(DropReason::Banned) >= 1);
    assert!(matches!(
        a.send_private(b.node_id(), "", "x").await.unwrap_err(),
        meshara_core::SendError::Banned(_)
    ));
    a.unban_peer(b.node_id());
    assert_eq!(
        a.connect(&b.quic_addr().unwrap()).await.unwrap(),
        b.node_id()
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_byte_stream_carries_a_connection() {
    // The seam Tor and I2P use: an already-connected byte stream (here an in-memory pipe).
    let a = node().await;
    let b = node().await;
    let (left, right) = tokio::io::duplex(64 * 1024);
    let b2 = b.clone();
    let accept = tokio::spawn(async move { b2.accept_stream(right).await });
    let id = a.connect_stream(left, Some(b.node_id())).await.unwrap();
    assert_eq!(id, b.node_id());
    assert_eq!(accept.await.unwrap().unwrap(), a.node_id());
    tokio::time::timeout(WAIT, async {
        while a.peers().is_empty() || b.peers().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(
        a.peers()[0].transport,
        meshara_core::net::TransportKind::Stream
    );
    exchange_traffic(&a, &b, 8 << 20).await;
    // A wrong expected identity fails inside the handshake here too.
    let (left, right) = tokio::io::duplex(64 * 1024);
    let b2 = b.clone();
    let accept = tokio::spawn(async move { b2.accept_stream(right).await });
    let impostor = Identity::generate().node_id();
    let err = a.connect_stream(left, Some(impostor)).await.unwrap_err();
    assert!(matches!(err, TransportError::WrongPeer { .. }), "{err:?}");
    assert!(accept.await.unwrap().is_err());
    assert_eq!(a.drops(meshara_core::net::DropReason::Handshake), 1);
    assert_eq!(b.drops(meshara_core::net::DropReason::Handshake), 1);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diagnostics_and_identity_export() {
    let dir = tempfile::tempdir().unwrap();
    let b = node().await;
    let dead: PeerAddr = "quic://127.0.0.1:9".parse().unwrap();
    let a = builder()
        .keystore_with_params(
            dir.path().join("identity.key"),
            "pw",
            meshara_core::KdfParams::minimum(),
        )
        .bootstrap(b.quic_addr().unwrap())
        .bootstrap(dead.clone())
        .timeouts(Timeouts {
            connect: Duration::from_millis(500),
            ..fast_timeouts()
        })
        .start()
        .await
        .unwrap();
    let d = a.diagnostics().await;
    assert!(d.storage_ok, "{:?}", d.storage_error);
    assert_eq!(d.listening.len(), 2);
    assert_eq!(d.bootstrap.len(), 2);
    let good = d
        .bootstrap
        .iter()
        .find(|s| s.addr == b.quic_addr().unwrap())
        .unwrap();
    assert!(good.reachable, "{good:?}");
    let bad = d.bootstrap.iter().find(|s| s.addr == dead).unwrap();
    assert!(!bad.reachable && bad.error.is_some(), "{bad:?}");
    // b has been dialed by a: b saw an inbound connection.
    assert!(b.diagnostics().await.inbound_reachable);
    // Identity export/import round trip.
    let bundle = a.export_identity(b"bundle pw").unwrap();
    let imported = Identity::import_bundle(&bundle, b"bundle pw").unwrap();
    assert_eq!(imported.identity.node_id(), a.node_id());
    assert!(Identity::import_bundle(&bundle, b"wrong").is_err());
    // Storage problems are reported, not hidden.
    let broken = builder()
        .config(meshara_core::NodeConfig {
            data_dir: Some(dir.path().join("missing/sub")),
            listen_quic: Some("127.0.0.1:0".parse().unwrap()),
            ..Default::default()
        })
        .start()
        .await
        .unwrap();
    let d = broken.diagnostics().await;
    assert!(!d.storage_ok);
    assert!(d.storage_error.unwrap().contains("not writable"));
    broken.stop().await;
    a.stop().await;
    b.stop().await;
}

#[allow(dead_code)]
fn _assert_send_sync(n: Node, l: Limits, id: NodeId) -> impl Send + Sync {
    (n, l, id)
}
