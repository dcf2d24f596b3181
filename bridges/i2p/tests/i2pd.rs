//! Meshara nodes over a real i2pd router started by the test: SAM STREAM sessions carry
//! messages, queries and streams; the destination (and so the `.b32.i2p` address) survives a
//! restart, and a node that knows only that address reaches the restarted node.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use meshara_core::net::testing::{exchange_traffic, wait_for};
use meshara_core::net::{PeerAddr, Timeouts};
use meshara_core::{Event, Identity, Node, NodeBuilder, NodeConfig, Transport, TransportKind};
use meshara_i2p::testing::I2pd;
use meshara_i2p::{I2pTransport, ServeHandle};

fn timeouts() -> Timeouts {
    Timeouts {
        // An I2P connect is a lease set lookup plus a streaming handshake.
        connect: Duration::from_secs(30),
        ack: Duration::from_secs(5),
        reconnect_min: Duration::from_millis(200),
        reconnect_max: Duration::from_secs(2),
        ..Timeouts::default()
    }
}

/// A node reachable only over I2P: no QUIC listener, its record lists only its b32 address.
async fn i2p_node(
    i2p: &I2pTransport,
    identity: Identity,
    bootstrap: Option<PeerAddr>,
) -> (Node, ServeHandle) {
    let mut config = NodeConfig {
        listen_quic: None,
        advertise: vec![i2p.address()],
        target_peers: 0,
        timeouts: timeouts(),
        ..NodeConfig::default()
    };
    config.bootstrap.extend(bootstrap);
    let node = NodeBuilder::new()
        .config(config)
        .identity(identity)
        .dialer(Transport::I2p, i2p.dialer())
        .start()
        .await
        .unwrap();
    let serving = i2p.serve(node.clone());
    (node, serving)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_talk_over_i2p_and_keep_their_address() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let Some(router) = I2pd::start().await else {
        return;
    };
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    // Session creation takes ~20 s on i2pd: both at once.
    let (ta, tb) = tokio::join!(
        I2pTransport::start(router.config(dir_a.path())),
        I2pTransport::start(router.config(dir_b.path())),
    );
    let (ta, tb) = (ta.unwrap(), tb.unwrap());
    assert_ne!(ta.b32(), tb.b32());
    assert!(meshara_i2p::dest::is_b32(ta.b32()), "{}", ta.b32());

    // b's identity, restored after its restart.
    let id_b = || Identity::from_secret_bytes(&[7; 32], &[8; 32]);
    let b_id = id_b().node_id();
    let (b, b_serving) = i2p_node(&tb, id_b(), None).await;
    let boot = PeerAddr {
        node: Some(b_id),
        address: tb.address(),
    };
    let (a, _a_serving) = i2p_node(&ta, Identity::generate(), Some(boot)).await;
    let mut a_events = a.events();
    wait_for(&mut a_events, |e| match e {
        Event::PeerConnected { peer, .. } if peer == b_id => Some(()),
        _ => None,
    })
    .await;
    assert_eq!(a.record_of(&b_id).unwrap().addresses(), &[tb.address()]);
    exchange_traffic(&a, &b, 1 << 20).await;
    let transports: Vec<_> = a.peers().iter().map(|p| p.transport).collect();
    assert_eq!(transports, vec![TransportKind::I2p]);

    // Restart everything, the router included (a machine reboot): b's new session from the
    // saved keys has the same address, and a node that knows only that address reaches it.
    // (Re-creating a destination on a router that still runs its previous session is not
    // shown: i2pd 2.45 then often leaves the new session unreachable for minutes.)
    let old_address = tb.address();
    drop(b_serving);
    drop(_a_serving);
    b.stop().await;
    a.stop().await;
    tb.close().await;
    ta.close().await;
    assert!(!tb.is_up());
    let mut router = router;
    router.restart().await;
    let dir_c = tempfile::tempdir().unwrap();
    let (tb2, tc) = tokio::join!(
        I2pTransport::start(router.config(dir_b.path())),
        I2pTransport::start(router.config(dir_c.path())),
    );
    let (tb2, tc) = (tb2.unwrap(), tc.unwrap());
    assert_eq!(
        tb2.address(),
        old_address,
        "the .b32.i2p address survives a restart"
    );
    let (b2, _b2_serving) = i2p_node(&tb2, id_b(), None).await;
    let mut b2_events = b2.events();
    let boot = PeerAddr {
        node: Some(b_id),
        address: old_address,
    };
    let (c, _c_serving) = i2p_node(&tc, Identity::generate(), Some(boot)).await;
    let mut c_events = c.events();
    wait_for(&mut c_events, |e| match e {
        Event::PeerConnected { peer, .. } if peer == b_id => Some(()),
        _ => None,
    })
    .await;
    let pending = c
        .send_private(b_id, "text/plain", "after the restart")
        .await
        .unwrap();
    let got = wait_for(&mut b2_events, |e| match e {
        Event::Message(m) => Some(m),
        _ => None,
    })
    .await;
    assert_eq!(&got.content[..], b"after the restart");
    assert_eq!(got.from, c.node_id());
    tokio::time::timeout(Duration::from_secs(60), pending.confirmed())
        .await
        .unwrap()
        .unwrap();
    c.stop().await;
    b2.stop().await;
    router.stop().await;
}
