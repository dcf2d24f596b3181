//! The bridge against a real i2pd started by the test: a clearnet-only node and an I2P-only
//! node (it dials nothing but I2P) reach each other through the bridge, both ways, with
//! messages, broadcasts, queries and a stream; the bridge's HTTP endpoints tell its state and
//! it shuts down gracefully.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::{http_get, meet_through_bridge, timeouts};
use meshara_bridge::{Bridge, Config, IdentitySource};
use meshara_core::net::PeerAddr;
use meshara_core::{Capability, Identity, NodeBuilder, NodeConfig, Transport};
use meshara_i2p::I2pTransport;
use meshara_i2p::testing::{I2pd, LOCAL_SESSION_OPTIONS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clearnet_and_i2p_only_nodes_meet_through_the_bridge() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let Some(router) = I2pd::start().await else {
        return;
    };
    let bridge_dir = tempfile::tempdir().unwrap();
    let leaf_dir = tempfile::tempdir().unwrap();
    let mut config = Config::with_data_dir(bridge_dir.path());
    config.http_listen = "127.0.0.1:0".parse().unwrap();
    config.node.listen_quic = Some("127.0.0.1:0".parse().unwrap());
    config.node.timeouts = timeouts();
    config.node.bridge.enabled = true;
    config.i2p.enabled = true;
    config.i2p.sam = router.sam;
    config.i2p.session_options = LOCAL_SESSION_OPTIONS
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    config.validate().unwrap();
    // The bridge's and the I2P-only node's sessions build their tunnels at the same time.
    let dual_dir = tempfile::tempdir().unwrap();
    let (bridge, leaf_i2p, dual_i2p) = tokio::join!(
        Bridge::start(
            config,
            IdentitySource::Identity(Box::new(Identity::generate()))
        ),
        I2pTransport::start(router.config(leaf_dir.path())),
        I2pTransport::start(router.config(dual_dir.path())),
    );
    let (bridge, leaf_i2p, dual_i2p) = (bridge.unwrap(), leaf_i2p.unwrap(), dual_i2p.unwrap());
    let http = bridge.http_addr();
    assert_eq!(http_get(http, "/healthz").await.0, 200);
    assert_eq!(http_get(http, "/readyz").await, (200, "ready\n".to_owned()));
    let record = bridge.node().record();
    assert!(record.has_capability(Capability::BridgeI2p));
    let b32 = bridge.i2p().unwrap().address();
    assert!(
        record.addresses().contains(&b32),
        "{:?}",
        record.addresses()
    );

    // The I2P-only node: no listener but I2P, nothing dialled except over I2P; it knows the
    // bridge by its .b32.i2p address.
    let leaf = NodeBuilder::new()
        .config(NodeConfig {
            listen_quic: None,
            advertise: vec![leaf_i2p.address()],
            bootstrap: vec![PeerAddr {
                node: Some(bridge.node().node_id()),
                address: b32,
            }],
            route_all_via: Some(Transport::I2p),
            target_peers: 0,
            timeouts: timeouts(),
            ..NodeConfig::default()
        })
        .identity(Identity::generate())
        .dialer(Transport::I2p, leaf_i2p.dialer())
        .start()
        .await
        .unwrap();
    let _leaf_serving = leaf_i2p.serve(leaf.clone());
    // On QUIC, and an I2P client for the messages that must go over I2P.
    let dual = NodeBuilder::new()
        .config(NodeConfig {
            listen_quic: Some("127.0.0.1:0".parse().unwrap()),
            // Only the connections the test makes, so that what it asserts about them holds.
            target_peers: 0,
            timeouts: timeouts(),
            ..NodeConfig::default()
        })
        .identity(Identity::generate())
        .dialer(Transport::I2p, dual_i2p.dialer())
        .start()
        .await
        .unwrap();
    meet_through_bridge(
        bridge,
        &leaf,
        &dual,
        Transport::I2p,
        2 << 20,
        "meshara_bridge_i2p_up",
        timeouts(),
    )
    .await;
    leaf.stop().await;
    dual.stop().await;
    router.stop().await;
}

/// A wrong passphrase fails the start at once, before any I2P session is attempted (the SAM
/// address here has no router behind it).
#[tokio::test]
async fn a_wrong_passphrase_fails_before_i2p() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::with_data_dir(dir.path().join("bridge"));
    config.http_listen = "127.0.0.1:0".parse().unwrap();
    config.node.listen_quic = Some("127.0.0.1:0".parse().unwrap());
    config.node.bridge.enabled = true;
    config.i2p.enabled = true;
    config.i2p.sam = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    std::fs::create_dir_all(&config.data_dir).unwrap();
    meshara_core::Keystore::new(config.keystore_path())
        .create(
            &Identity::generate(),
            b"right",
            meshara_core::KdfParams::minimum(),
            0,
        )
        .unwrap();
    let err = Bridge::start(config, IdentitySource::Keystore(b"wrong".to_vec()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, meshara_bridge::StartError::Keystore(_)),
        "{err}"
    );
}
