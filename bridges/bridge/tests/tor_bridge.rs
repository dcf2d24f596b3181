//! The bridge on a private Tor network started by the test (three authorities, two relays and
//! an exit on loopback): a clearnet-only node and a node reachable only as an arti-hosted
//! onion service (it dials nothing but Tor) exchange private messages, a broadcast, a query
//! and a 10 MiB stream through the bridge, both ways; the bridge reports Tor in its records,
//! health and metrics, and shuts down gracefully.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::Duration;

use common::{http_get, via, wait_until};
use meshara_bridge::{Bridge, Config, IdentitySource};
use meshara_core::net::testing::exchange_traffic;
use meshara_core::net::{PeerAddr, Timeouts};
use meshara_core::{Capability, Identity, NodeBuilder, NodeConfig, Transport, TransportKind};
use meshara_tor::TorTransport;
use meshara_tor::testing::TorNet;

fn timeouts() -> Timeouts {
    Timeouts {
        // An onion connect: descriptor fetch, introduction, rendezvous, then TLS.
        connect: Duration::from_secs(30),
        ..common::timeouts()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clearnet_and_onion_only_nodes_meet_through_the_bridge() {
    let Some(net) = TorNet::start().await else {
        return;
    };
    let bridge_dir = tempfile::tempdir().unwrap();
    let leaf_dir = tempfile::tempdir().unwrap();
    let mut config = Config::with_data_dir(bridge_dir.path());
    config.http_listen = "127.0.0.1:0".parse().unwrap();
    config.node.listen_quic = Some("127.0.0.1:0".parse().unwrap());
    config.node.timeouts = timeouts();
    config.node.bridge.enabled = true;
    config.tor.enabled = true;
    config.tor.arti = net.client_config();
    config.validate().unwrap();
    let (bridge, leaf_tor) = tokio::join!(
        Bridge::start(
            config,
            IdentitySource::Identity(Box::new(Identity::generate()))
        ),
        TorTransport::start(net.config(leaf_dir.path())),
    );
    let (bridge, leaf_tor) = (bridge.unwrap(), leaf_tor.unwrap());
    let http = bridge.http_addr();
    assert_eq!(http_get(http, "/healthz").await.0, 200);
    assert_eq!(http_get(http, "/readyz").await, (200, "ready\n".to_owned()));
    let record = bridge.node().record();
    assert!(record.has_capability(Capability::BridgeTor));
    assert!(!record.has_capability(Capability::BridgeI2p));
    let onion = bridge.tor().unwrap().address().unwrap();
    assert!(
        record.addresses().contains(&onion),
        "{:?}",
        record.addresses()
    );

    // The onion-only node: no listener but its onion service, nothing dialled except over
    // Tor; it knows the bridge by its onion address.
    let leaf = NodeBuilder::new()
        .config(NodeConfig {
            listen_quic: None,
            advertise: vec![leaf_tor.address().unwrap()],
            bootstrap: vec![PeerAddr {
                node: Some(bridge.node().node_id()),
                address: onion,
            }],
            route_all_via: Some(Transport::Tor),
            target_peers: 0,
            timeouts: timeouts(),
            ..NodeConfig::default()
        })
        .identity(Identity::generate())
        .dialer(Transport::Tor, leaf_tor.dialer())
        .start()
        .await
        .unwrap();
    let _leaf_serving = leaf_tor.serve(leaf.clone()).unwrap();
    // The clearnet node knows only the bridge's QUIC address.
    let clear = NodeBuilder::new()
        .config(NodeConfig {
            listen_quic: Some("127.0.0.1:0".parse().unwrap()),
            bootstrap: vec![bridge.node().quic_addr().unwrap()],
            target_peers: 0,
            timeouts: timeouts(),
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
    // The leaf's record offers nothing but its onion address, so the clearnet node needs the
    // bridge; the leaf cannot dial QUIC, so it needs the bridge too.
    assert!(
        clear
            .record_of(&leaf_id)
            .unwrap()
            .addresses()
            .iter()
            .all(|a| a.transport == Transport::Tor)
    );
    exchange_traffic(&clear, &leaf, 10 << 20).await;
    assert_eq!(via(&clear, leaf_id), Some(TransportKind::Relayed));
    assert_eq!(via(&leaf, clear_id), Some(TransportKind::Relayed));
    assert_eq!(
        via(&leaf, bridge.node().node_id()),
        Some(TransportKind::Tor)
    );
    let (status, metrics) = http_get(http, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("meshara_bridge_tor_up 1"),
        "{metrics}\n{:?}",
        bridge.tor().unwrap().status()
    );
    assert!(metrics.contains("meshara_bridge_i2p_up 0"), "{metrics}");
    assert!(
        metrics.contains("meshara_bridge_circuit_requests_total{result=\"ok\"}"),
        "{metrics}"
    );

    // Graceful shutdown: peers are told, the HTTP server stops.
    let mut leaf_events = leaf.events();
    bridge.shutdown().await;
    meshara_core::net::testing::wait_for(&mut leaf_events, |e| match e {
        meshara_core::Event::PeerDisconnected { .. } => Some(()),
        _ => None,
    })
    .await;
    assert!(tokio::net::TcpStream::connect(http).await.is_err());
    clear.stop().await;
    leaf.stop().await;
}
