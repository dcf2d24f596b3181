//! Onion routing between real nodes over loopback QUIC.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use meshara_core::net::{Limits, Onion, Timeouts};
use meshara_core::{Event, Identity, Node, NodeBuilder, NodeConfig, NodeId, Privacy, SendError};

const WAIT: Duration = Duration::from_secs(30);

fn config(onion: Onion) -> NodeConfig {
    NodeConfig {
        // Nodes only connect where they must: to the bootstrap node, and to the hops of the
        // circuits they build or relay on.
        target_peers: 0,
        limits: Limits {
            max_connections_per_ip: 64,
            ..Limits::default()
        },
        onion,
        ..NodeConfig::default()
    }
}

fn builder(onion: Onion) -> NodeBuilder {
    NodeBuilder::new()
        .config(config(onion))
        .identity(Identity::generate())
        .listen_quic("127.0.0.1:0".parse().unwrap())
        .mdns(false)
        .timeouts(Timeouts {
            connect: Duration::from_secs(3),
            // Generous: a resend would build a second circuit, which this test tolerates
            // but does not need.
            ack: Duration::from_secs(3),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(1),
            peer_exchange: Duration::from_millis(200),
            delivery: Duration::from_secs(40),
            ..Timeouts::default()
        })
}

/// A seed and `n` nodes bootstrapped from it; returns once every node holds the records of
/// all the others (learned by peer exchange through the seed).
async fn network(n: usize, onion: Onion) -> Vec<Node> {
    let seed = builder(onion.clone()).start().await.unwrap();
    let boot = seed.quic_addr().unwrap();
    let mut nodes = vec![seed];
    for _ in 0..n {
        let node = builder(onion.clone())
            .bootstrap(boot.clone())
            .start()
            .await
            .unwrap();
        nodes.push(node);
    }
    let ids: Vec<NodeId> = nodes.iter().map(Node::node_id).collect();
    tokio::time::timeout(WAIT, async {
        while !nodes.iter().all(|node| {
            ids.iter()
                .all(|id| *id == node.node_id() || node.record_of(id).is_some())
        }) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("every node learns every record");
    nodes
}

/// Everything already in `events`, without waiting.
fn drain(events: &mut meshara_core::EventStream) -> Vec<Event> {
    let mut out = Vec::new();
    while let Some(Some(e)) = events.next().now_or_never() {
        out.push(e);
    }
    out
}

/// A relay chain `from → r1 → … → rk → to` in the relays' observations, if there is one.
fn chain(
    seen: &HashMap<NodeId, Vec<(NodeId, NodeId)>>,
    from: NodeId,
    to: NodeId,
) -> Option<Vec<NodeId>> {
    // Depth-first over "relay X got it from P and sent it to Q".
    fn walk(
        seen: &HashMap<NodeId, Vec<(NodeId, NodeId)>>,
        prev: NodeId,
        at: NodeId,
        to: NodeId,
        path: &mut Vec<NodeId>,
    ) -> bool {
        if path.len() > 4 {
            return false;
        }
        for (relay_from, relay_to) in seen.get(&at).into_iter().flatten() {
            if *relay_from != prev {
                continue;
            }
            path.push(at);
            if *relay_to == to || walk(seen, at, *relay_to, to, path) {
                return true;
            }
            path.pop();
        }
        false
    }
    for (relay, hops) in seen {
        for (relay_from, relay_to) in hops {
            if *relay_from == from {
                let mut path = vec![*relay];
                if *relay_to == to || walk(seen, *relay, *relay_to, to, &mut path) {
                    return Some(path);
                }
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_onion_routed_message_arrives_and_each_relay_sees_only_its_neighbours() {
    let nodes = network(5, Onion::default()).await;
    let (sender, recipient) = (&nodes[1], &nodes[2]);
    let (s, d) = (sender.node_id(), recipient.node_id());
    let mut streams: Vec<_> = nodes.iter().map(Node::events).collect();

    // Too large for one packet: refused up front, with the exact limit.
    let err = sender
        .send_private_with(d, "text/plain", vec![b'x'; 8000], Privacy::Onion)
        .await
        .unwrap_err();
    let SendError::TooLarge { len: 8000, max } = err else {
        panic!("expected TooLarge, got {err}")
    };
    assert!((6000..8000).contains(&max), "onion content limit {max}");

    // The largest content that fits goes through.
    let content = Bytes::from(vec![b'o'; max]);
    let pending = sender
        .send_private_with(d, "text/plain", content.clone(), Privacy::Onion)
        .await
        .unwrap();
    let delivered = tokio::time::timeout(WAIT, pending.confirmed())
        .await
        .expect("onion delivery timed out")
        .expect("delivered");
    assert_eq!(delivered.peer, d);

    let got = tokio::time::timeout(WAIT, async {
        loop {
            match streams[2].next().await {
                Some(Event::Message(m)) => return m,
                Some(_) => {}
                None => panic!("events ended"),
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(got.content, content);
    assert_eq!(
        got.from, s,
        "the recipient learns the sender from the sealed message"
    );

    // What each relay observed.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut seen: HashMap<NodeId, Vec<(NodeId, NodeId)>> = HashMap::new();
    for (node, events) in nodes.iter().zip(streams.iter_mut()) {
        for e in drain(events) {
            match e {
                Event::OnionRelayed { from, to } => {
                    seen.entry(node.node_id()).or_default().push((from, to))
                }
                Event::Message(m) if node.node_id() != d => {
                    panic!("{} received a message from {}", node.node_id(), m.from)
                }
                _ => {}
            }
        }
    }
    assert!(
        !seen.contains_key(&s) && !seen.contains_key(&d),
        "the ends do not relay"
    );
    for (relay, hops) in &seen {
        for (from, to) in hops {
            assert!(
                !([*from, *to].contains(&s) && [*from, *to].contains(&d)),
                "relay {relay} saw both the sender and the recipient"
            );
            assert_ne!(from, relay);
            assert_ne!(to, relay);
        }
    }
    // The message went sender → three relays → recipient, the acknowledgement back over a
    // circuit of the recipient's; in both, each relay's view is its two neighbours only, and
    // the middle relay saw neither end.
    for (from, to) in [(s, d), (d, s)] {
        let path = chain(&seen, from, to).expect("a relay chain between the ends");
        assert_eq!(path.len(), 3, "three relays: {path:?}");
        let middle = path[1];
        assert!(
            seen[&middle]
                .iter()
                .any(|(f, t)| *f == path[0] && *t == path[2]),
            "the middle relay knew only the relays around it"
        );
        assert!(path.iter().all(|r| *r != s && *r != d));
    }

    futures_util::future::join_all(nodes.iter().map(Node::stop)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onion_sends_need_enough_relays_and_relaying_can_be_disabled() {
    async fn refused_for_lack_of_relays(from: &Node, to: NodeId) {
        let err = from
            .send_private_with(to, "text/plain", Bytes::from_static(b"hi"), Privacy::Onion)
            .await
            .unwrap_err();
        assert!(
            matches!(err, SendError::TooFewRelays { have: 0, need: 3 }),
            "{err}"
        );
    }
    // Alone, a node knows no relays.
    let lonely = builder(Onion::default()).start().await.unwrap();
    refused_for_lack_of_relays(&lonely, Identity::generate().node_id()).await;
    lonely.stop().await;

    // Nodes that do not relay are not picked as relays: four nodes that all refuse leave a
    // sender with no relays at all.
    let no_relay = Onion {
        relay: false,
        ..Onion::default()
    };
    let nodes = network(3, no_relay).await;
    assert!(
        nodes[1]
            .record_of(&nodes[2].node_id())
            .is_some_and(|r| !r.has_capability(meshara_core::Capability::Relay))
    );
    refused_for_lack_of_relays(&nodes[1], nodes[2].node_id()).await;
    futures_util::future::join_all(nodes.iter().map(Node::stop)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cover_traffic_loops_back_and_is_dropped() {
    let onion = Onion {
        cover_interval: Duration::from_millis(200),
        // Circuits built while a node still knew only some relays are soon replaced, so
        // every node ends up relaying for the others.
        circuit_lifetime: Duration::from_secs(1),
        ..Onion::default()
    };
    let nodes = network(4, onion).await;
    let cover_in = |n: &Node| {
        n.metrics_text()
            .lines()
            .find(|l| l.starts_with("meshara_messages_total{direction=\"in\",kind=\"cover\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let relayed = |n: &Node| n.metrics_text().contains("kind=\"onion-relay\"");
    tokio::time::timeout(WAIT, async {
        while nodes.iter().any(|n| cover_in(n) < 2.0 || !relayed(n)) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("every node's cover packets come back to it, and every node relays others'");
    // Relays forwarded them like any other packet, and nobody delivered or dropped anything.
    for n in &nodes {
        assert_eq!(n.drops(meshara_core::net::DropReason::Onion), 0);
    }
    futures_util::future::join_all(nodes.iter().map(Node::stop)).await;
}
