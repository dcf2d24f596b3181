//! The bridge on a private Tor network started by the test (three authorities, two relays and
//! an exit on loopback): a clearnet-only node and a node reachable only as an arti-hosted
//! onion service (it dials nothing but Tor) exchange private messages, a broadcast, a query
//! and a 10 MiB stream through the bridge, both ways; the bridge reports Tor in its records,
//! health and metrics, and shuts down gracefully.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::Duration;

use common::{http_get, meet_through_bridge};
use meshara_bridge::{Bridge, Config, IdentitySource};
use meshara_core::net::{PeerAddr, Timeouts};
use meshara_core::{Capability, Identity, NodeBuilder, NodeConfig, Transport};
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
    let dual_dir = tempfile::tempdir().unwrap();
    let (bridge, leaf_tor, dual_tor) = tokio::join!(
        Bridge::start(
            config,
            IdentitySource::Identity(Box::new(Identity::generate()))
        ),
        TorTransport::start(net.config(leaf_dir.path())),
        TorTransport::start(net.config(dual_dir.path())),
    );
    let (bridge, leaf_tor, dual_tor) = (bridge.unwrap(), leaf_tor.unwrap(), dual_tor.unwrap());
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
    // On QUIC, and a Tor client for the messages that must go over Tor.
    let dual = NodeBuilder::new()
        .config(NodeConfig {
            listen_quic: Some("127.0.0.1:0".parse().unwrap()),
            // Only the connections the test makes, so that what it asserts about them holds.
            target_peers: 0,
            timeouts: timeouts(),
            ..NodeConfig::default()
        })
        .identity(Identity::generate())
        .dialer(Transport::Tor, dual_tor.dialer())
        .start()
        .await
        .unwrap();
    meet_through_bridge(
        bridge,
        &leaf,
        &dual,
        Transport::Tor,
        10 << 20,
        "meshara_bridge_tor_up",
        timeouts(),
    )
    .await;
    leaf.stop().await;
    dual.stop().await;
}
