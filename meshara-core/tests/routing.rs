//! Routing between real nodes over loopback QUIC: DHT lookups.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use meshara_core::net::Timeouts;
use meshara_core::{Event, Identity, Node, NodeBuilder, NodeConfig};

const WAIT: Duration = Duration::from_secs(30);

fn builder() -> NodeBuilder {
    let config = NodeConfig {
        // Nodes do not dial what peer exchange tells them: each one only knows its
        // neighbours in the chain and their neighbours' records.
        target_peers: 0,
        ..NodeConfig::default()
    };
    // Nor do they look themselves up, which in a network smaller than a bucket reaches
    // every node.
    builder_with(config).timeouts(Timeouts {
        dht_refresh: Duration::ZERO,
        ..timeouts()
    })
}

fn timeouts() -> Timeouts {
    Timeouts {
        ack: Duration::from_millis(300),
        reconnect_min: Duration::from_millis(100),
        reconnect_max: Duration::from_secs(1),
        peer_exchange: Duration::from_millis(300),
        delivery: Duration::from_secs(20),
        ..Timeouts::default()
    }
}

fn builder_with(config: NodeConfig) -> NodeBuilder {
    NodeBuilder::new()
        .config(config)
        .identity(Identity::generate())
        .listen_quic("127.0.0.1:0".parse().unwrap())
        .mdns(false)
        .timeouts(timeouts())
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
        .expect("the lookup must end the wait");
    // Reported as soon as the lookup that reached the other nodes ended, not at the deadline.
    assert!(
        matches!(result, Err(meshara_core::DeliveryError::NotFound { peer, .. }) if peer == ghost),
        "{result:?}"
    );
    // A query to it fails the same way, long before its own timeout.
    let asked = tokio::time::timeout(
        Duration::from_secs(60),
        nodes[0].query(ghost, "ping", Bytes::new(), Duration::from_secs(600)),
    )
    .await
    .expect("the lookup must end the wait");
    assert!(
        matches!(asked, Err(meshara_core::QueryError::NotFound { peer }) if peer == ghost),
        "{asked:?}"
    );
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

/// Waits until `node` has delivered broadcasts with all of `ids` (each once), or panics.
async fn collect_broadcasts(
    mut events: meshara_core::EventStream,
    ids: Vec<meshara_core::MessageId>,
) -> Vec<meshara_core::MessageId> {
    let mut got = Vec::new();
    let _ = tokio::time::timeout(WAIT, async {
        while got.len() < ids.len() {
            match events.next().await {
                Some(Event::Broadcast(b)) => got.push(b.broadcast.id),
                Some(_) => {}
                None => panic!("events ended"),
            }
        }
    })
    .await;
    got
}

/// A node that joins through one peer must end up in the routing tables of the nodes closest to
/// it, or nobody but that peer can ever find it (in a large network, that peer's bucket for it
/// is full and it is in no table at all). The self lookup at join converges on those nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_enters_the_routing_tables_of_its_closest_nodes() {
    let config = NodeConfig {
        // Joiners connect to the seed only, and peer exchange never runs after the first one:
        // what spreads a joiner's record is its own self lookup, or the later joiners'.
        target_peers: 1,
        limits: meshara_core::net::Limits {
            max_connections_per_ip: 64,
            ..meshara_core::net::Limits::default()
        },
        ..NodeConfig::default()
    };
    let slow_exchange = Timeouts {
        peer_exchange: Duration::from_secs(3600),
        ..timeouts()
    };
    let seed = builder_with(config.clone())
        .timeouts(slow_exchange.clone())
        .start()
        .await
        .unwrap();
    let mut joiners: Vec<Node> = Vec::new();
    for _ in 0..12 {
        let node = builder_with(config.clone())
            .timeouts(slow_exchange.clone())
            .bootstrap(seed.quic_addr().unwrap())
            .start()
            .await
            .unwrap();
        joiners.push(node);
    }
    let ids: Vec<[u8; 32]> = joiners.iter().map(|n| *n.node_id().as_bytes()).collect();
    let distance = |a: &[u8; 32], b: &[u8; 32]| -> [u8; 32] {
        let mut d = [0u8; 32];
        for i in 0..32 {
            d[i] = a[i] ^ b[i];
        }
        d
    };
    // For each joiner, the other joiner closest to it by XOR distance.
    let nearest: Vec<usize> = (0..ids.len())
        .map(|i| {
            (0..ids.len())
                .filter(|&j| j != i)
                .min_by_key(|&j| distance(&ids[i], &ids[j]))
                .unwrap()
        })
        .collect();
    let missing = || -> Vec<(usize, usize)> {
        (0..ids.len())
            .filter(|&i| {
                !joiners[nearest[i]]
                    .routing_table()
                    .contains(&joiners[i].node_id())
            })
            .map(|i| (i, nearest[i]))
            .collect()
    };
    let settled = tokio::time::timeout(WAIT, async {
        while !missing().is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        settled.is_ok(),
        "joiners missing from their nearest node's routing table (joiner, nearest): {:?}",
        missing()
    );
    // So every joiner is known to some node besides the seed it joined through.
    for node in &joiners {
        assert!(
            joiners
                .iter()
                .any(|other| other.routing_table().contains(&node.node_id())),
            "{} is in no joiner's table",
            node.node_id()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_nodes_from_one_bootstrap_all_receive_every_broadcast() {
    let config = NodeConfig {
        target_peers: 4,
        limits: meshara_core::net::Limits {
            // Every node dials the bootstrap from 127.0.0.1.
            max_connections_per_ip: 64,
            ..meshara_core::net::Limits::default()
        },
        ..NodeConfig::default()
    };
    let seed = builder_with(config.clone()).start().await.unwrap();
    let mut nodes = vec![seed];
    for _ in 1..20 {
        let node = builder_with(config.clone())
            .bootstrap(nodes[0].quic_addr().unwrap())
            .start()
            .await
            .unwrap();
        nodes.push(node);
    }
    tokio::time::timeout(WAIT, async {
        while nodes.iter().any(|n| n.peers().is_empty()) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("every node connects");

    // Two authors on two topics; every other node must deliver each broadcast exactly once.
    let listeners: Vec<_> = nodes.iter().map(Node::events).collect();
    let mut sent = Vec::new();
    for (author, topic) in [(7usize, "news"), (13, "weather")] {
        for i in 0..3 {
            let id = nodes[author]
                .broadcast(topic, "text/plain", format!("{topic} {i}"))
                .unwrap();
            sent.push((author, id));
        }
    }
    let mut waits = Vec::new();
    for (n, events) in listeners.into_iter().enumerate() {
        let expected: Vec<_> = sent
            .iter()
            .filter(|(author, _)| *author != n)
            .map(|(_, id)| *id)
            .collect();
        waits.push(tokio::spawn(async move {
            (
                n,
                expected.clone(),
                collect_broadcasts(events, expected).await,
            )
        }));
    }
    let mut results = Vec::new();
    for w in waits {
        results.push(w.await.unwrap());
    }
    if results.iter().any(|(_, e, g)| e.len() != g.len()) {
        for (i, n) in nodes.iter().enumerate() {
            eprintln!(
                "node {i} got {} peers {} topics {:?}",
                results[i].2.len(),
                n.peers().len(),
                n.topics()
                    .iter()
                    .map(|t| (t.topic.clone(), t.active.len(), t.eager, t.passive, t.stats))
                    .collect::<Vec<_>>()
            );
        }
    }
    for (n, mut expected, mut got) in results {
        expected.sort_unstable_by_key(|id| id.0);
        got.sort_unstable_by_key(|id| id.0);
        assert_eq!(got, expected, "node {n} got each broadcast exactly once");
    }
    // Both topics now have an overlay on every node, with neighbours to carry the next ones.
    for n in &nodes {
        let topics = n.topics();
        assert_eq!(
            topics.iter().map(|t| t.topic.as_str()).collect::<Vec<_>>(),
            ["news", "weather"]
        );
    }
    tokio::time::timeout(WAIT, async {
        while nodes
            .iter()
            .any(|n| n.topics().iter().any(|t| t.active.is_empty()))
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("every topic's overlay gives every node a neighbour");
    // A later broadcast follows the built trees.
    let listeners: Vec<_> = nodes.iter().map(Node::events).collect();
    let id = nodes[0].broadcast("news", "text/plain", "later").unwrap();
    for events in listeners.into_iter().skip(1) {
        assert_eq!(collect_broadcasts(events, vec![id]).await, vec![id]);
    }
    futures_util::future::join_all(nodes.iter().map(Node::stop)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_are_capped_per_node() {
    let capped = |max_topics| NodeConfig {
        limits: meshara_core::net::Limits {
            max_topics,
            ..meshara_core::net::Limits::default()
        },
        ..NodeConfig::default()
    };
    let a = builder_with(capped(2)).start().await.unwrap();
    let b = builder_with(capped(1))
        .bootstrap(a.quic_addr().unwrap())
        .start()
        .await
        .unwrap();
    tokio::time::timeout(WAIT, async {
        while a.peers().is_empty() || b.peers().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    let b_events = b.events();
    let first = a.broadcast("first", "text/plain", "1").unwrap();
    assert_eq!(collect_broadcasts(b_events, vec![first]).await, vec![first]);
    // A carries a second topic; B, at its cap, refuses it and counts the refusal.
    a.broadcast("second", "text/plain", "2").unwrap();
    tokio::time::timeout(WAIT, async {
        while b.drops(meshara_core::net::DropReason::MaxTopics) == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("B refuses the second topic");
    assert_eq!(
        b.topics()
            .iter()
            .map(|t| t.topic.as_str())
            .collect::<Vec<_>>(),
        ["first"]
    );
    // A third topic is refused at the source with a clear error.
    let err = a.broadcast("third", "text/plain", "3").unwrap_err();
    assert!(
        matches!(err, meshara_core::SendError::TopicLimit(2)),
        "{err}"
    );
    // The capped topic still works.
    let b_events = b.events();
    let again = a.broadcast("first", "text/plain", "again").unwrap();
    assert_eq!(collect_broadcasts(b_events, vec![again]).await, vec![again]);
    futures_util::future::join_all([a.stop(), b.stop()]).await;
}

/// A mesh where every node bootstraps from the first and dials what peer exchange tells it.
fn mesh_config() -> NodeConfig {
    NodeConfig {
        limits: meshara_core::net::Limits {
            max_connections_per_ip: 64,
            ..meshara_core::net::Limits::default()
        },
        ..NodeConfig::default()
    }
}

fn mesh_builder(identity: Identity) -> NodeBuilder {
    builder_with(mesh_config())
        .identity(identity)
        .timeouts(Timeouts {
            connect: Duration::from_secs(2),
            ack: Duration::from_millis(300),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(1),
            peer_exchange: Duration::from_millis(300),
            delivery: Duration::from_secs(20),
            ..Timeouts::default()
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_to_an_offline_node_is_delivered_when_it_returns() {
    let seed = mesh_builder(Identity::generate()).start().await.unwrap();
    let boot = seed.quic_addr().unwrap();
    let mut others = Vec::new();
    for _ in 0..3 {
        let n = mesh_builder(Identity::generate())
            .bootstrap(boot.clone())
            .start()
            .await
            .unwrap();
        others.push(n);
    }
    let sender = others.remove(0);
    let recipient_identity = Identity::generate();
    let recipient = mesh_builder(recipient_identity.clone())
        .bootstrap(boot.clone())
        .start()
        .await
        .unwrap();
    let r = recipient.node_id();
    tokio::time::timeout(WAIT, async {
        while sender.record_of(&r).is_none() || sender.peers().len() < 3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the sender learns the recipient");
    recipient.stop().await;
    drop(recipient);

    // The recipient is gone: the message is deposited with the nodes closest to it.
    let mut sender_events = sender.events();
    let pending = sender
        .send_private(r, "text/plain", Bytes::from_static(b"while you were out"))
        .await
        .unwrap();
    let id = pending.id();
    let holders = tokio::time::timeout(WAIT, async {
        loop {
            match sender_events.next().await {
                Some(Event::MessageStored {
                    id: stored,
                    peer,
                    holders,
                    ..
                }) if stored == id && peer == r => return holders,
                Some(Event::DeliveryFailed { .. }) => panic!("failed instead of being stored"),
                Some(_) => {}
                None => panic!("events ended"),
            }
        }
    })
    .await
    .expect("the message is deposited");
    assert!(holders >= 1);
    // Well past the normal delivery deadline (20 s) the message must still be pending; wait
    // a little beyond the point where an undeposited one would have failed its attempts.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // It comes back on a new port, with the same identity, knowing only the bootstrap node.
    let back = mesh_builder(recipient_identity)
        .bootstrap(boot)
        .start()
        .await
        .unwrap();
    let mut back_events = back.events();
    let delivered = tokio::time::timeout(WAIT, pending.confirmed())
        .await
        .expect("the acknowledgement arrives once the recipient is back")
        .expect("delivered");
    assert_eq!(delivered.peer, r);
    // Exactly once, although several holders had a copy.
    let mut copies = 0;
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        while let Some(e) = back_events.next().await {
            if let Event::Message(m) = e {
                assert_eq!(m.id, id);
                assert_eq!(&m.content[..], b"while you were out");
                assert_eq!(m.from, sender.node_id());
                copies += 1;
            }
        }
    })
    .await;
    assert_eq!(copies, 1, "delivered {copies} times");
    futures_util::future::join_all(
        [&seed, &sender, &back]
            .into_iter()
            .chain(others.iter())
            .map(|n| n.stop()),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_that_cannot_be_dialled_reach_each_other_through_a_relay() {
    let seed = mesh_builder(Identity::generate()).start().await.unwrap();
    let boot = seed.quic_addr().unwrap();
    // Neither has a listener (as behind NATs): their records carry no address, they only dial
    // out, so they can never connect to each other.
    let hidden = || {
        mesh_builder(Identity::generate())
            .no_quic_listener()
            .bootstrap(boot.clone())
            .start()
    };
    let sender = hidden().await.unwrap();
    let recipient = hidden().await.unwrap();
    tokio::time::timeout(WAIT, async {
        while seed.peers().len() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    let mut recipient_events = recipient.events();
    let pending = sender
        .send_private(
            recipient.node_id(),
            "text/plain",
            Bytes::from_static(b"via a relay"),
        )
        .await
        .unwrap();
    let got = tokio::time::timeout(WAIT, async {
        loop {
            match recipient_events.next().await {
                Some(Event::Message(m)) => return m,
                Some(_) => {}
                None => panic!("events ended"),
            }
        }
    })
    .await
    .expect("the recipient receives the message through the relay");
    assert_eq!(&got.content[..], b"via a relay");
    assert_eq!(got.from, sender.node_id());
    // The acknowledgement comes back the same way.
    let delivered = tokio::time::timeout(WAIT, pending.confirmed())
        .await
        .expect("acknowledged in time")
        .expect("delivered");
    assert_eq!(delivered.peer, recipient.node_id());
    assert!(
        sender
            .peers()
            .iter()
            .all(|p| p.node_id != recipient.node_id()),
        "no direct connection was possible"
    );
    assert!(
        seed.metrics_text().contains("kind=\"relay\""),
        "the seed relayed"
    );
    futures_util::future::join_all([seed.stop(), sender.stop(), recipient.stop()]).await;
}

/// A node that opened connections for messages (as it does for lookups) closes those it no
/// longer uses once it has more than `target_peers`, and keeps the ones it needs: peers it is
/// told to keep (bootstrap, `connect`), peers it is still talking to, and connections others
/// opened to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_a_node_opened_and_no_longer_uses_are_closed() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let hub = builder().start().await.unwrap();
    let boot = hub.quic_addr().unwrap();
    let mut others = Vec::new();
    for _ in 0..5 {
        others.push(builder().bootstrap(boot.clone()).start().await.unwrap());
    }
    let pinned = others.pop().unwrap();
    let node = builder_with(NodeConfig {
        target_peers: 1,
        ..NodeConfig::default()
    })
    .timeouts(Timeouts {
        unused: Duration::from_secs(1),
        dht_refresh: Duration::ZERO,
        ..timeouts()
    })
    .bootstrap(boot.clone())
    .start()
    .await
    .unwrap();
    // A node that connects to this one: its connection is inbound here.
    let caller = builder()
        .bootstrap(node.quic_addr().unwrap())
        .start()
        .await
        .unwrap();
    tokio::time::timeout(WAIT, async {
        while others
            .iter()
            .any(|o| node.record_of(&o.node_id()).is_none())
            || !node.peers().iter().any(|p| p.node_id == caller.node_id())
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the node learns the others' records from the hub");
    let pinned_id = node.connect(&pinned.quic_addr().unwrap()).await.unwrap();
    let mut events: Vec<_> = others.iter().map(Node::events).collect();
    for o in &others {
        let pending = node
            .send_private(o.node_id(), "text/plain", Bytes::from_static(b"hello"))
            .await
            .unwrap();
        tokio::time::timeout(WAIT, pending.confirmed())
            .await
            .expect("confirmed in time")
            .expect("delivered");
    }
    let connected = |id| node.peers().iter().any(|p| p.node_id == id);
    assert!(others.iter().all(|o| connected(o.node_id())));

    // The node keeps talking to the first one, bounded in count.
    let talking = Arc::new(AtomicBool::new(true));
    let chatter = {
        let (node, talking, to) = (node.clone(), talking.clone(), others[0].node_id());
        tokio::spawn(async move {
            for _ in 0..300 {
                if !talking.load(Ordering::Relaxed) {
                    break;
                }
                let pending = node
                    .send_private(to, "text/plain", Bytes::from_static(b"still here"))
                    .await
                    .unwrap();
                pending.confirmed().await.expect("delivered");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    tokio::time::timeout(WAIT, async {
        while others[1..].iter().any(|o| connected(o.node_id())) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the connections nobody uses are closed");
    // Still connected: the bootstrap node, the peer it connected to, the peer it talks to,
    // and the node that connected to it. Unused connections went down to `target_peers` only.
    for (id, what) in [
        (hub.node_id(), "the bootstrap node"),
        (pinned_id, "the peer connected with connect()"),
        (others[0].node_id(), "the peer still in use"),
        (caller.node_id(), "the inbound connection"),
    ] {
        assert!(connected(id), "{what} was disconnected");
    }
    talking.store(false, Ordering::Relaxed);
    chatter.await.unwrap();
    // The peers saw why.
    for (o, ev) in others[1..].iter().zip(&mut events[1..]) {
        let reason = tokio::time::timeout(WAIT, async {
            loop {
                match ev.next().await {
                    Some(Event::PeerDisconnected { peer, reason }) if peer == node.node_id() => {
                        return reason;
                    }
                    Some(_) => {}
                    None => panic!("events ended"),
                }
            }
        })
        .await
        .expect("the peer sees the connection close");
        assert!(
            reason.contains("code 8") && reason.contains("unused"),
            "{}: {reason}",
            o.node_id()
        );
    }
    // A closed peer is still reachable: the node dials it again from its record.
    let again = node
        .send_private(
            others[1].node_id(),
            "text/plain",
            Bytes::from_static(b"again"),
        )
        .await
        .unwrap();
    tokio::time::timeout(WAIT, again.confirmed())
        .await
        .expect("confirmed in time")
        .expect("delivered after the connection was closed");
    futures_util::future::join_all(
        [&hub, &pinned, &node, &caller]
            .into_iter()
            .chain(others.iter())
            .map(|n| n.stop()),
    )
    .await;
}
