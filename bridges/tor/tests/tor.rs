//! Meshara nodes over a private Tor network started by the test (three authorities, two
//! relays, an exit, all on loopback): two nodes reachable only as arti-hosted onion services
//! exchange private messages, a query and a 10 MiB stream; after a restart the onion address
//! is the same and the peer reconnects to it by itself; an onion service that accepts a
//! stream and then says nothing gives a clear timeout, and the node keeps serving its peer.
//! `Privacy::Tor` messages between clearnet nodes leave through the exit (to the recipient's TCP
//! address) even beside a QUIC connection, and an onion-only node reaches a TCP address too.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use meshara_core::net::testing::{exchange_traffic, next_message, wait_for};
use meshara_core::net::{PeerAddr, Timeouts};
use meshara_core::{
    Event, Identity, Node, NodeBuilder, NodeConfig, Privacy, Transport, TransportError,
    TransportKind,
};
use meshara_tor::testing::TorNet;
use meshara_tor::{ServeHandle, TorTransport};

/// How long a peer may take to reach a restarted onion service (descriptor caches expire,
/// connects time out and are retried).
const RECONNECT_WITHIN: Duration = Duration::from_secs(240);

fn timeouts() -> Timeouts {
    Timeouts {
        // An onion connect: descriptor fetch, introduction, rendezvous, then TLS.
        connect: Duration::from_secs(30),
        ack: Duration::from_secs(10),
        reconnect_min: Duration::from_millis(500),
        reconnect_max: Duration::from_secs(4),
        ..Timeouts::default()
    }
}

/// A node reachable only as an onion service: no QUIC listener, every connection via Tor.
async fn onion_node(
    tor: &TorTransport,
    identity: Identity,
    bootstrap: Option<PeerAddr>,
) -> (Node, ServeHandle) {
    let mut config = NodeConfig {
        listen_quic: None,
        advertise: vec![tor.address().unwrap()],
        route_all_via: Some(Transport::Tor),
        target_peers: 0,
        timeouts: timeouts(),
        ..NodeConfig::default()
    };
    config.bootstrap.extend(bootstrap);
    let node = NodeBuilder::new()
        .config(config)
        .identity(identity)
        .dialer(Transport::Tor, tor.dialer())
        .start()
        .await
        .unwrap();
    let serving = tor.serve(node.clone()).unwrap();
    (node, serving)
}

async fn connected(events: &mut meshara_core::EventStream, who: meshara_core::NodeId) {
    wait_for(events, |e| match e {
        Event::PeerConnected { peer, .. } if peer == who => Some(()),
        _ => None,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onion_services_talk_keep_their_address_and_survive_a_stalled_peer() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let Some(net) = TorNet::start().await else {
        return;
    };
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let dir_c = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let (ta, tb, tc) = tokio::join!(
        TorTransport::start(net.config(dir_a.path())),
        TorTransport::start(net.config(dir_b.path())),
        TorTransport::start(net.config(dir_c.path())),
    );
    let (ta, tb, tc) = (ta.unwrap(), tb.unwrap(), tc.unwrap());
    eprintln!("arti clients bootstrapped after {:.0?}", started.elapsed());
    // The onion service's state settles after the start returns; on this six-relay network
    // arti can call it broken for a moment while it picks introduction points.
    for t in [&ta, &tb] {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !t.is_up() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(t.is_up(), "transport not up: {:?}", t.status());
    }
    let b_onion = tb.address().unwrap();
    assert!(meshara_tor::is_onion_host(&b_onion.host), "{b_onion}");
    assert_ne!(ta.address(), tb.address());

    // b's identity, restored after its restart.
    let id_b = || Identity::from_secret_bytes(&[3; 32], &[4; 32]);
    let b_id = id_b().node_id();
    let (b, b_serving) = onion_node(&tb, id_b(), None).await;
    let boot = PeerAddr {
        node: Some(b_id),
        address: b_onion.clone(),
    };
    let (a, _a_serving) = onion_node(&ta, Identity::generate(), Some(boot)).await;
    let mut a_events = a.events();
    connected(&mut a_events, b_id).await;
    assert_eq!(
        a.record_of(&b_id).unwrap().addresses(),
        std::slice::from_ref(&b_onion)
    );
    // Messages, a broadcast, a query and a 10 MiB stream, both ways.
    exchange_traffic(&a, &b, 10 << 20).await;
    let transports: Vec<_> = a.peers().iter().map(|p| p.transport).collect();
    assert_eq!(transports, vec![TransportKind::Tor]);

    // Restart b from its data directory: the same onion address, and a (which keeps b as a
    // bootstrap peer) reconnects to it by itself.
    drop(b_serving);
    b.stop().await;
    tb.close();
    assert!(!tb.is_up());
    // Nothing of the first b may live on: its node holds the dialer, and so the client.
    drop(b);
    drop(tb);
    // The old client's onion service releases its state lock from a task of its own, shortly
    // after the last handle is gone: a start that finds it still held is tried again.
    let mut tries = 0;
    let tb2 = loop {
        match TorTransport::start(net.config(dir_b.path())).await {
            Ok(t) => break t,
            Err(e) if tries < 20 && e.to_string().contains("already locked") => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("restarting b's Tor transport: {e}"),
        }
    };
    assert_eq!(
        tb2.address().unwrap(),
        b_onion,
        "the onion address survives a restart"
    );
    let (b2, _b2_serving) = onion_node(&tb2, id_b(), None).await;
    let mut b2_events = b2.events();
    // a's first attempts may still use b's old descriptor, cached, and time out; its retries
    // find the new one.
    tokio::time::timeout(RECONNECT_WITHIN, async {
        while a.peers().iter().all(|p| p.node_id != b_id) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("a reconnects to the restarted b at its onion address");
    let pending = a
        .send_private(b_id, "text/plain", "after the restart")
        .await
        .unwrap();
    let got = next_message(&mut b2_events).await;
    assert_eq!(&got.content[..], b"after the restart");
    assert_eq!(got.from, a.node_id());
    tokio::time::timeout(Duration::from_secs(90), pending.confirmed())
        .await
        .unwrap()
        .unwrap();

    // c accepts Tor streams and never answers: a's connection attempt ends with a timeout
    // (no panic, no hang), and a keeps talking to b meanwhile.
    let silent = tc.clone();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok(stream) = silent.accept().await {
            held.push(stream);
        }
    });
    let stalled = PeerAddr {
        node: None,
        address: tc.address().unwrap(),
    };
    let (err, sent) = tokio::join!(
        a.connect(&stalled),
        a.send_private(b_id, "text/plain", "while c stalls"),
    );
    let err = err.unwrap_err();
    assert!(
        matches!(err, TransportError::Timeout(_)),
        "a stalled Tor stream gives a timeout, got: {err}"
    );
    let got = next_message(&mut b2_events).await;
    assert_eq!(&got.content[..], b"while c stalls");
    tokio::time::timeout(Duration::from_secs(90), sent.unwrap().confirmed())
        .await
        .unwrap()
        .unwrap();
    assert!(a.is_running());
    holder.abort();

    // Clearnet nodes: e listens on QUIC and TCP; f is on QUIC with a Tor client. Connected
    // over QUIC, f's Tor message still goes through Tor: to e's TCP address via the exit, so
    // e sees a TCP connection from the exit and f's QUIC connection carries only the rest.
    let e = NodeBuilder::new()
        .identity(Identity::generate())
        .listen_quic("127.0.0.1:0".parse().unwrap())
        .listen_tcp("127.0.0.1:0".parse().unwrap())
        .timeouts(timeouts())
        .start()
        .await
        .unwrap();
    let f = NodeBuilder::new()
        .identity(Identity::generate())
        .listen_quic("127.0.0.1:0".parse().unwrap())
        .timeouts(timeouts())
        .dialer(Transport::Tor, tc.dialer())
        .start()
        .await
        .unwrap();
    f.connect(&e.quic_addr().unwrap()).await.unwrap();
    let mut e_events = e.events();
    let pending = f
        .send_private_with(e.node_id(), "text/plain", "through the exit", Privacy::Tor)
        .await
        .unwrap();
    let got = next_message(&mut e_events).await;
    assert_eq!(&got.content[..], b"through the exit");
    assert_eq!(got.via, Some(TransportKind::Tcp));
    tokio::time::timeout(Duration::from_secs(90), pending.confirmed())
        .await
        .unwrap()
        .unwrap();
    let to_e = f
        .peers()
        .into_iter()
        .find(|p| p.node_id == e.node_id())
        .unwrap();
    assert_eq!((to_e.transport, to_e.connections), (TransportKind::Tor, 2));
    f.send_private(e.node_id(), "text/plain", "direct")
        .await
        .unwrap();
    let got = next_message(&mut e_events).await;
    assert_eq!(
        (&got.content[..], got.via),
        (&b"direct"[..], Some(TransportKind::Quic))
    );

    // The onion-only a (every connection through Tor) reaches e at its TCP address through
    // the exit; it never resolves or dials anything itself.
    a.connect(&e.tcp_addr().unwrap()).await.unwrap();
    let to_e = a
        .peers()
        .into_iter()
        .find(|p| p.node_id == e.node_id())
        .unwrap();
    assert_eq!(to_e.transport, TransportKind::Tor);
    a.send_private(e.node_id(), "text/plain", "from an onion-only node")
        .await
        .unwrap();
    let got = next_message(&mut e_events).await;
    assert_eq!(
        (&got.content[..], got.via),
        (&b"from an onion-only node"[..], Some(TransportKind::Tcp))
    );
    assert!(a.connect(&e.quic_addr().unwrap()).await.is_err());
    for n in [a, b2, e, f] {
        n.stop().await;
    }
}
