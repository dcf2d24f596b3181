//! Routing between real nodes over loopback QUIC: DHT lookups.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use meshara_core::net::Timeouts;
use meshara_core::{Event, Identity, Node, NodeBuilder, NodeConfig};

const WAIT: Duration = Duration::from_secs(30);

fn builder() -> NodeBuilder {
    NodeBuilder::new()
        .config(NodeConfig {
            // Nodes do not dial what peer exchange tells them: each one only knows its
            // neighbours in the chain and their neighbours' records.
            target_peers: 0,
            ..NodeConfig::default()
        })
        .identity(Identity::generate())
        .listen_quic("127.0.0.1:0".parse().unwrap())
        .mdns(false)
        .timeouts(Timeouts {
            ack: Duration::from_millis(300),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(1),
            peer_exchange: Duration::from_millis(300),
            delivery: Duration::from_secs(20),
            ..Timeouts::default()
        })
}

/// Nodes in a line, each bootstrapped from the one before it.
async fn chain(len: usize) -> Vec<Node> {
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..len {
        let mut b = builder();
        if let Some(prev) = nodes.last() {
            b = b.bootstrap(prev.quic_addr().unwrap());
        }
        nodes.push(b.start().await.unwrap());
        if i > 0 {
            let (prev, new) = (nodes[i - 1].node_id(), nodes[i].node_id());
            tokio::time::timeout(WAIT, async {
                while !nodes[i].peers().iter().any(|p| p.node_id == prev)
                    || !nodes[i - 1].peers().iter().any(|p| p.node_id == new)
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await
            .expect("chain link");
        }
    }
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_nobody_told_us_about_is_found_through_the_dht() {
    let nodes = chain(7).await;
    let (first, last) = (&nodes[0], &nodes[6]);
    // Peer exchange reaches two hops at most: the first node has never heard of the last.
    assert!(first.peers().iter().all(|p| p.node_id != last.node_id()));
    assert!(
        first.record_of(&last.node_id()).is_none(),
        "the first node must not hold the last one's record yet"
    );

    let mut first_events = first.events();
    let mut last_events = last.events();
    let pending = first
        .send_private(
            last.node_id(),
            "text/plain",
            Bytes::from_static(b"found you"),
        )
        .await
        .unwrap();
    // The first node looks the last one up hop by hop, connects to it and delivers.
    let delivered = tokio::time::timeout(WAIT, pending.confirmed())
        .await
        .expect("delivery timed out")
        .expect("delivered");
    assert_eq!(delivered.peer, last.node_id());
    let got = tokio::time::timeout(WAIT, async {
        while let Some(e) = last_events.next().await {
            if let Event::Message(m) = e {
                return m;
            }
        }
        panic!("events ended")
    })
    .await
    .unwrap();
    assert_eq!(&got.content[..], b"found you");
    assert_eq!(got.from, first.node_id());
    let via_dht = tokio::time::timeout(WAIT, async {
        while let Some(e) = first_events.next().await {
            if let Event::PeerDiscovered { peer, via } = e {
                if peer == last.node_id() {
                    return via;
                }
            }
        }
        panic!("events ended")
    })
    .await
    .unwrap();
    assert_eq!(via_dht, "dht");
    assert!(first.peers().iter().any(|p| p.node_id == last.node_id()));
    for n in &nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn looking_up_a_node_that_does_not_exist_fails_cleanly() {
    let nodes = chain(3).await;
    let ghost = Identity::generate().node_id();
    let pending = nodes[0]
        .send_private(ghost, "text/plain", Bytes::from_static(b"anyone?"))
        .await
        .unwrap();
    let result = tokio::time::timeout(Duration::from_secs(60), pending.confirmed())
        .await
        .expect("the delivery deadline must end the wait");
    assert!(result.is_err());
    // The node still works for everyone else.
    let ok = nodes[0]
        .send_private(
            nodes[1].node_id(),
            "text/plain",
            Bytes::from_static(b"still here"),
        )
        .await
        .unwrap();
    tokio::time::timeout(WAIT, ok.confirmed())
        .await
        .unwrap()
        .unwrap();
    for n in &nodes {
        n.stop().await;
    }
}
