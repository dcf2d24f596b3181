//! Meshara nodes over a real i2pd router started by the test: SAM STREAM sessions carry
//! messages, queries and streams; the destination (and so the `.b32.i2p` address) survives a
//! restart, and a node that knows only that address reaches the restarted node. Messages sent
//! with `Privacy::I2p` travel over I2P even between nodes connected over QUIC.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use meshara_core::net::testing::{exchange_traffic, next_message, wait_for};
use meshara_core::net::{PeerAddr, Timeouts};
use meshara_core::{
    DeliveryError, Event, Identity, Node, NodeBuilder, NodeConfig, Privacy, Transport,
    TransportKind,
};
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
    let got = next_message(&mut b2_events).await;
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

/// A node on QUIC and I2P both: a QUIC listener, its `.b32.i2p` address in its record too.
async fn dual_node(i2p: &I2pTransport, timeouts: Timeouts) -> (Node, ServeHandle) {
    let node = NodeBuilder::new()
        .config(NodeConfig {
            listen_quic: Some("127.0.0.1:0".parse().unwrap()),
            target_peers: 0,
            timeouts,
            ..NodeConfig::default()
        })
        .identity(Identity::generate())
        .also_advertise(i2p.address())
        .dialer(Transport::I2p, i2p.dialer())
        .start()
        .await
        .unwrap();
    let serving = i2p.serve(node.clone());
    (node, serving)
}

fn transports_to(n: &Node, peer: meshara_core::NodeId) -> (Option<TransportKind>, usize) {
    n.peers()
        .into_iter()
        .find(|p| p.node_id == peer)
        .map_or((None, 0), |p| (Some(p.transport), p.connections))
}

/// `Privacy::I2p` between nodes already connected over QUIC: the sender dials the recipient's
/// `.b32.i2p` address for it and the message arrives over I2P, while direct messages keep
/// taking QUIC. To a peer with no I2P address and no bridge, an I2P message waits and fails at
/// its deadline: it is never sent over the QUIC connection that is right there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i2p_messages_travel_over_i2p_beside_quic() {
    let Some(router) = I2pd::start().await else {
        return;
    };
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (td, te, tg) = tokio::join!(
        I2pTransport::start(router.config(dirs[0].path())),
        I2pTransport::start(router.config(dirs[1].path())),
        I2pTransport::start(router.config(dirs[2].path())),
    );
    let (td, te, tg) = (td.unwrap(), te.unwrap(), tg.unwrap());
    let (d, _d_serving) = dual_node(&td, timeouts()).await;
    let (e, _e_serving) = dual_node(&te, timeouts()).await;
    d.connect(&e.quic_addr().unwrap()).await.unwrap();
    assert_eq!(
        transports_to(&d, e.node_id()),
        (Some(TransportKind::Quic), 1)
    );
    let mut e_events = e.events();

    let pending = d
        .send_private_with(e.node_id(), "text/plain", "over i2p", Privacy::I2p)
        .await
        .unwrap();
    let got = next_message(&mut e_events).await;
    assert_eq!(&got.content[..], b"over i2p");
    assert_eq!(got.via, Some(TransportKind::I2p));
    tokio::time::timeout(Duration::from_secs(60), pending.confirmed())
        .await
        .unwrap()
        .unwrap();
    // d now holds both connections; direct messages still take QUIC.
    assert_eq!(
        transports_to(&d, e.node_id()),
        (Some(TransportKind::I2p), 2)
    );
    d.send_private(e.node_id(), "text/plain", "direct")
        .await
        .unwrap();
    let got = next_message(&mut e_events).await;
    assert_eq!(&got.content[..], b"direct");
    assert_eq!(got.via, Some(TransportKind::Quic));
    // A second I2P message reuses the I2P connection.
    d.send_private_with(e.node_id(), "text/plain", "again", Privacy::I2p)
        .await
        .unwrap();
    let got = next_message(&mut e_events).await;
    assert_eq!(
        (&got.content[..], got.via),
        (&b"again"[..], Some(TransportKind::I2p))
    );

    // g has I2P, f only QUIC and no bridge exists: g's I2P message to f has no route.
    let short = Timeouts {
        delivery: Duration::from_secs(8),
        ..timeouts()
    };
    let (g, _g_serving) = dual_node(&tg, short).await;
    let f = NodeBuilder::new()
        .identity(Identity::generate())
        .listen_quic("127.0.0.1:0".parse().unwrap())
        .timeouts(timeouts())
        .start()
        .await
        .unwrap();
    g.connect(&f.quic_addr().unwrap()).await.unwrap();
    let mut f_events = f.events();
    let pending = g
        .send_private_with(f.node_id(), "text/plain", "nowhere", Privacy::I2p)
        .await
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(60), pending.confirmed())
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, DeliveryError::Unacknowledged { .. }), "{err}");
    // Over QUIC, f still hears from g, and the first message it gets is this one.
    g.send_private(f.node_id(), "text/plain", "over quic")
        .await
        .unwrap();
    let got = next_message(&mut f_events).await;
    assert_eq!(
        (&got.content[..], got.via),
        (&b"over quic"[..], Some(TransportKind::Quic))
    );
    assert_eq!(
        transports_to(&g, f.node_id()),
        (Some(TransportKind::Quic), 1)
    );
    for n in [d, e, f, g] {
        n.stop().await;
    }
    router.stop().await;
}
