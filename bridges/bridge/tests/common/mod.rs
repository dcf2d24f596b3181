//! Helpers shared by the bridge's integration tests.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    unreachable_pub
)]

use std::net::SocketAddr;
use std::time::Duration;

use meshara_bridge::Bridge;
use meshara_core::net::Timeouts;
use meshara_core::net::testing::{exchange_traffic, wait_for};
use meshara_core::{
    Event, Identity, Node, NodeBuilder, NodeConfig, Privacy, SendError, Transport, TransportKind,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub fn timeouts() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(30),
        ack: Duration::from_secs(5),
        reconnect_min: Duration::from_millis(200),
        reconnect_max: Duration::from_secs(2),
        peer_exchange: Duration::from_millis(500),
        ..Timeouts::default()
    }
}

pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: bridge\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

pub async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    // Generous: over Tor on a loaded 2-core machine, records take minutes to cross the bridge.
    tokio::time::timeout(Duration::from_secs(240), async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting until {what}"));
}

/// How `n` reaches `peer` now, if connected.
pub fn via(n: &Node, peer: meshara_core::NodeId) -> Option<meshara_core::TransportKind> {
    n.peers()
        .into_iter()
        .find(|p| p.node_id == peer)
        .map(|p| p.transport)
}

/// The meeting both bridge tests show: a clearnet node that knows only the bridge's QUIC
/// address and `leaf`, which is reachable only over `overlay` and dials nothing else, learn each
/// other's records through the bridge and exchange every kind of traffic (a `stream_bytes`
/// stream included) over bridge circuits, both ways; the bridge's metrics say `up_gauge 1` and
/// count the circuits; on shutdown its peers are told and its HTTP server stops.
///
/// Per-message routes over the overlay: `dual` (on QUIC, with a dialer for the overlay) is
/// connected to the clearnet node over QUIC, yet its message sent with the overlay's privacy
/// takes a circuit through the bridge, which it dials over the overlay for it; the leaf's rides
/// its circuit; the clearnet node, which has no overlay, is refused at once.
pub async fn meet_through_bridge(
    bridge: Bridge,
    leaf: &Node,
    dual: &Node,
    overlay: Transport,
    stream_bytes: usize,
    up_gauge: &str,
    timeouts: Timeouts,
) {
    let http = bridge.http_addr();
    let clear = NodeBuilder::new()
        .config(NodeConfig {
            listen_quic: Some("127.0.0.1:0".parse().unwrap()),
            bootstrap: vec![bridge.node().quic_addr().unwrap()],
            target_peers: 0,
            timeouts,
            ..NodeConfig::default()
        })
        .identity(Identity::generate())
        .start()
        .await
        .unwrap();
    let (leaf_id, clear_id) = (leaf.node_id(), clear.node_id());
    wait_until(
        "the nodes learn each other's records through the bridge",
        || clear.record_of(&leaf_id).is_some() && leaf.record_of(&clear_id).is_some(),
    )
    .await;
    // The leaf's record offers nothing but the overlay, so the clearnet node needs the bridge;
    // the leaf dials nothing but the overlay, so it needs the bridge too.
    assert!(
        clear
            .record_of(&leaf_id)
            .unwrap()
            .addresses()
            .iter()
            .all(|a| a.transport == overlay)
    );
    exchange_traffic(&clear, leaf, stream_bytes).await;
    assert_eq!(via(&clear, leaf_id), Some(TransportKind::Relayed));
    assert_eq!(via(leaf, clear_id), Some(TransportKind::Relayed));
    let overlay_kind = match overlay {
        Transport::Tor => TransportKind::Tor,
        _ => TransportKind::I2p,
    };
    assert_eq!(via(leaf, bridge.node().node_id()), Some(overlay_kind));

    let privacy = match overlay {
        Transport::Tor => Privacy::Tor,
        _ => Privacy::I2p,
    };
    let bridge_id = bridge.node().node_id();
    dual.connect(&bridge.node().quic_addr().unwrap())
        .await
        .unwrap();
    dual.connect(&clear.quic_addr().unwrap()).await.unwrap();
    assert_eq!(via(dual, clear_id), Some(TransportKind::Quic));
    let mut clear_events = clear.events();
    for (from, text) in [(dual, "from dual"), (leaf, "from leaf")] {
        let pending = from
            .send_private_with(clear_id, "text/plain", text, privacy)
            .await
            .unwrap();
        let got = wait_for(&mut clear_events, |e| match e {
            Event::Message(m) if m.from == from.node_id() => Some(m),
            _ => None,
        })
        .await;
        assert_eq!(&got.content[..], text.as_bytes());
        assert_eq!(got.via, Some(TransportKind::Relayed), "{text}");
        tokio::time::timeout(Duration::from_secs(120), pending.confirmed())
            .await
            .unwrap()
            .unwrap();
    }
    // The dual node reached the bridge over the overlay for it, beside its QUIC connection.
    assert_eq!(via(dual, bridge_id), Some(overlay_kind));
    let err = clear
        .send_private_with(leaf_id, "text/plain", "no overlay here", privacy)
        .await
        .unwrap_err();
    assert!(
        matches!(err, SendError::NoTransport(p) if p == privacy),
        "{err}"
    );
    let (status, metrics) = http_get(http, "/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains(&format!("{up_gauge} 1")), "{metrics}");
    assert!(
        metrics.contains("meshara_bridge_circuit_requests_total{result=\"ok\"}"),
        "{metrics}"
    );
    // No Accept header: the classic text format, where counters are typed by their `_total`
    // name (OpenMetrics, with its `# EOF`, is for scrapers that ask for it).
    assert!(
        metrics.contains("# TYPE meshara_bridge_circuit_requests_total counter")
            && !metrics.contains("# EOF"),
        "{metrics}"
    );

    // Graceful shutdown: peers are told, the HTTP server stops.
    let mut leaf_events = leaf.events();
    bridge.shutdown().await;
    wait_for(&mut leaf_events, |e| match e {
        Event::PeerDisconnected { .. } => Some(()),
        _ => None,
    })
    .await;
    assert!(tokio::net::TcpStream::connect(http).await.is_err());
    clear.stop().await;
}
