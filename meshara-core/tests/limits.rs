//! Every limit is hit by a hostile or greedy peer while an honest peer keeps being served.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use meshara_core::net::transport::{Connection, StreamConnection};
use meshara_core::net::{DropReason, Limits, Timeouts, TransportKind};
use meshara_core::{Event, EventStream, Identity, Node, NodeBuilder, SendError};
use tokio::io::AsyncWriteExt;

const WAIT: Duration = Duration::from_secs(20);

async fn start(limits: Limits, quic: &str) -> Node {
    NodeBuilder::new()
        .identity(Identity::generate())
        .listen_quic(quic.parse().unwrap())
        .listen_tcp("127.0.0.1:0".parse().unwrap())
        .limits(limits)
        .timeouts(Timeouts {
            ack: Duration::from_millis(300),
            ..Timeouts::default()
        })
        .start()
        .await
        .unwrap()
}

async fn plain(quic: &str) -> Node {
    start(Limits::default(), quic).await
}

/// The honest peer sends a private message to `server` and gets it acknowledged.
async fn honest_round_trip(honest: &Node, server: &Node) {
    let delivered = tokio::time::timeout(
        WAIT,
        honest
            .send_private(server.node_id(), "text/plain", "still served?")
            .await
            .unwrap()
            .confirmed(),
    )
    .await
    .expect("honest delivery timed out")
    .unwrap();
    assert_eq!(delivered.peer, server.node_id());
}

/// A hostile client that speaks TLS over TCP to `server` correctly, under a fresh identity.
async fn hostile_connection(server: &Node) -> (std::sync::Arc<Identity>, StreamConnection) {
    let tcp: SocketAddr = format!("127.0.0.1:{}", server.tcp_addr().unwrap().address.port)
        .parse()
        .unwrap();
    let hostile = std::sync::Arc::new(Identity::generate());
    let io = tokio::net::TcpStream::connect(tcp).await.unwrap();
    let conn = StreamConnection::connect(
        io,
        &hostile,
        Some(server.node_id()),
        TransportKind::Tcp,
        Some(tcp),
    )
    .await
    .unwrap();
    (hostile, conn)
}

async fn wait_until(mut f: impl FnMut() -> bool) {
    tokio::time::timeout(WAIT, async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("condition not reached");
}

async fn next_matching<T>(events: &mut EventStream, mut f: impl FnMut(Event) -> Option<T>) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(t) = f(events.next().await.unwrap()) {
                return t;
            }
        }
    })
    .await
    .expect("event not seen")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn total_connection_cap() {
    let server = start(
        Limits {
            max_connections: 3,
            ..Limits::default()
        },
        "127.0.0.1:0",
    )
    .await;
    let honest = plain("127.0.0.1:0").await;
    honest.connect(&server.quic_addr().unwrap()).await.unwrap();
    let mut attackers = Vec::new();
    let mut refused = 0;
    for _ in 0..4 {
        let a = plain("127.0.0.1:0").await;
        if a.connect(&server.quic_addr().unwrap()).await.is_err() {
            refused += 1;
        }
        attackers.push(a);
    }
    assert_eq!(refused, 2, "3 slots: the honest peer and two attackers");
    assert_eq!(server.drops(DropReason::MaxConnections), 2);
    assert_eq!(server.peers().len(), 3);
    honest_round_trip(&honest, &server).await;
    for a in attackers {
        a.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_connection_cap() {
    let server = start(
        Limits {
            max_connections_per_ip: 2,
            ..Limits::default()
        },
        "127.0.0.1:0",
    )
    .await;
    let honest = plain("127.0.0.1:0").await;
    honest.connect(&server.quic_addr().unwrap()).await.unwrap();
    // Attackers share another loopback address.
    let mut attackers = Vec::new();
    let mut refused = 0;
    for _ in 0..4 {
        let a = plain("127.0.0.2:0").await;
        if a.connect(&server.quic_addr().unwrap()).await.is_err() {
            refused += 1;
        }
        attackers.push(a);
    }
    assert_eq!(refused, 2);
    assert_eq!(server.drops(DropReason::MaxConnectionsPerIp), 2);
    honest_round_trip(&honest, &server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_peer_connection_cap() {
    let server = start(
        Limits {
            max_connections_per_peer: 1,
            ..Limits::default()
        },
        "127.0.0.1:0",
    )
    .await;
    let honest = plain("127.0.0.1:0").await;
    honest.connect(&server.quic_addr().unwrap()).await.unwrap();
    // Two processes with one identity: the second connection is closed.
    let twin = Identity::generate();
    let one = NodeBuilder::new()
        .identity(twin.clone())
        .listen_quic("127.0.0.1:0".parse().unwrap())
        .start()
        .await
        .unwrap();
    let two = NodeBuilder::new()
        .identity(twin)
        .listen_quic("127.0.0.1:0".parse().unwrap())
        .start()
        .await
        .unwrap();
    one.connect(&server.quic_addr().unwrap()).await.unwrap();
    let _ = two.connect(&server.quic_addr().unwrap()).await;
    wait_until(|| server.drops(DropReason::MaxConnectionsPerPeer) == 1).await;
    let twin_info = server
        .peers()
        .into_iter()
        .find(|p| p.node_id == one.node_id())
        .unwrap();
    assert_eq!(twin_info.connections, 1);
    honest_round_trip(&honest, &server).await;
}

/// At the per-peer cap, a connection over a transport the peer has none of replaces a
/// duplicate (so a Tor or I2P route fits beside two QUIC connections); another duplicate is
/// still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_transport_replaces_a_duplicate_at_the_per_peer_cap() {
    let server = start(
        Limits {
            max_connections_per_peer: 2,
            ..Limits::default()
        },
        "127.0.0.1:0",
    )
    .await;
    let client = plain("127.0.0.1:0").await;
    let connections = |n: &Node, peer| {
        n.peers()
            .into_iter()
            .find(|p| p.node_id == peer)
            .map_or(0, |p| p.connections)
    };
    client.connect(&server.quic_addr().unwrap()).await.unwrap();
    client.connect(&server.quic_addr().unwrap()).await.unwrap();
    wait_until(|| connections(&server, client.node_id()) == 2).await;
    // Over TCP: admitted, and one of the two QUIC connections makes room.
    client.connect(&server.tcp_addr().unwrap()).await.unwrap();
    wait_until(|| {
        connections(&server, client.node_id()) == 2 && connections(&client, server.node_id()) == 2
    })
    .await;
    assert_eq!(server.drops(DropReason::MaxConnectionsPerPeer), 0);
    // A third QUIC connection duplicates one that is already there: refused.
    let _ = client.connect(&server.quic_addr().unwrap()).await;
    wait_until(|| server.drops(DropReason::MaxConnectionsPerPeer) == 1).await;
    assert_eq!(connections(&server, client.node_id()), 2);
    honest_round_trip(&client, &server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_handshake_cap() {
    let server = start(
        Limits {
            max_pending_handshakes: 2,
            ..Limits::default()
        },
        "127.0.0.1:0",
    )
    .await;
    let honest = plain("127.0.0.1:0").await;
    honest.connect(&server.quic_addr().unwrap()).await.unwrap();
    let tcp: SocketAddr = format!("127.0.0.1:{}", server.tcp_addr().unwrap().address.port)
        .parse()
        .unwrap();
    // Slowloris: TCP connections that never start TLS hold handshake slots.
    let mut idle = Vec::new();
    for _ in 0..2 {
        idle.push(tokio::net::TcpStream::connect(tcp).await.unwrap());
    }
    wait_until(|| server.stats().pending_handshakes == 2).await;
    // A third handshake is refused while the slots are held...
    let late = plain("127.0.0.1:0").await;
    let err = late
        .connect(&server.quic_addr().unwrap())
        .await
        .unwrap_err();
    assert!(!err.to_string().is_empty());
    assert!(server.drops(DropReason::MaxPendingHandshakes) >= 1);
    // ...while the established honest peer is served.
    honest_round_trip(&honest, &server).await;
    // Freeing the slots lets new peers in again.
    drop(idle);
    tokio::time::sleep(Duration::from_millis(200)).await;
    late.connect(&server.quic_addr().unwrap()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_peer_message_rate_and_disconnect() {
    let server = start(
        Limits {
            peer_messages_per_sec: 50,
            peer_violations_before_disconnect: 200,
            ..Limits::default()
        },
        "127.0.0.1:0",
    )
    .await;
    let honest = plain("127.0.0.1:0").await;
    let flooder = plain("127.0.0.1:0").await;
    honest.connect(&server.quic_addr().unwrap()).await.unwrap();
    flooder.connect(&server.quic_addr().unwrap()).await.unwrap();
    let mut events = server.events();
    for i in 0..1000 {
        flooder
            .send_private(server.node_id(), "", format!("flood {i}"))
            .await
            .unwrap();
    }
    wait_until(|| server.drops(DropReason::PeerMessageRate) > 0).await;
    let gone = next_matching(&mut events, |e| match e {
        Event::PeerDisconnected { peer, .. } if peer == flooder.node_id() => Some(peer),
        _ => None,
    })
    .await;
    assert_eq!(gone, flooder.node_id());
    honest_round_trip(&honest, &server).await;
    assert!(server.peers().iter().any(|p| p.node_id == honest.node_id()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_peer_byte_rate() {
    let server = start(
        Limits {
            peer_bytes_per_sec: 256 * 1024,
            ..Limits::default()
        },
        "127.0.0.1:0",
    )
    .await;
    let honest = plain("127.0.0.1:0").await;
    let greedy = plain("127.0.0.1:0").await;
    honest.connect(&server.quic_addr().unwrap()).await.unwrap();
    greedy.connect(&server.quic_addr().unwrap()).await.unwrap();
    let big = vec![7u8; 60 * 1024];
    for _ in 0..40 {
        greedy
            .send_private(server.node_id(), "", big.clone())
            .await
            .unwrap();
    }
    wait_until(|| server.drops(DropReason::PeerByteRate) > 0).await;
    honest_round_trip(&honest, &server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frames_close_only_the_offender() {
    let server = plain("127.0.0.1:0").await;
    let honest = plain("127.0.0.1:0").await;
    honest.connect(&server.quic_addr().unwrap()).await.unwrap();
    // A hostile client speaks TLS correctly, then announces a 64 MiB frame.
    let mut events = server.events();
    let (_hostile, conn) = hostile_connection(&server).await;
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(&[1]).await.unwrap();
    send.write_all(&(64u32 << 20).to_be_bytes()).await.unwrap();
    send.flush().await.unwrap();
    wait_until(|| server.drops(DropReason::FrameTooLarge) == 1).await;
    let reported = next_matching(&mut events, |e| match e {
        Event::Error {
            context: "connection",
            message,
        } => Some(message),
        _ => None,
    })
    .await;
    assert!(reported.contains("frame"), "{reported}");
    let closed = tokio::time::timeout(WAIT, conn.closed())
        .await
        .expect("hostile connection not closed");
    assert!(!closed.to_string().is_empty());
    honest_round_trip(&honest, &server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_size_outbox_and_event_buffer_are_bounded() {
    let limits = Limits {
        max_outbox: 3,
        event_buffer: 4,
        ..Limits::default()
    };
    let node = start(limits.clone(), "127.0.0.1:0").await;
    let too_big = vec![0u8; limits.max_message_len + 1];
    let peer = plain("127.0.0.1:0").await;
    assert!(matches!(
        node.send_private(peer.node_id(), "", too_big)
            .await
            .unwrap_err(),
        SendError::TooLarge { .. }
    ));
    // Nobody knows this peer's address: messages wait in the outbox, which is bounded.
    let nowhere = Identity::generate().node_id();
    for _ in 0..3 {
        node.send_private(nowhere, "", "wait").await.unwrap();
    }
    assert!(matches!(
        node.send_private(nowhere, "", "one too many")
            .await
            .unwrap_err(),
        SendError::OutboxFull(3)
    ));
    // A subscriber that does not read misses events instead of growing memory.
    let mut slow = node.events();
    peer.connect(&node.quic_addr().unwrap()).await.unwrap();
    for i in 0..20 {
        peer.send_private(node.node_id(), "", format!("{i}"))
            .await
            .unwrap()
            .confirmed()
            .await
            .unwrap();
    }
    let first = slow.next().await.unwrap();
    assert!(
        matches!(first, Event::Lagged { missed } if missed > 0),
        "{first:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_incoming_queries_are_bounded() {
    let server = start(
        Limits {
            max_inbound_queries: 1,
            ..Limits::default()
        },
        "127.0.0.1:0",
    )
    .await;
    let asker = plain("127.0.0.1:0").await;
    asker.connect(&server.quic_addr().unwrap()).await.unwrap();
    let mut events = server.events();
    let (got_it, received) = tokio::sync::oneshot::channel();
    let held = tokio::spawn(async move {
        let q = next_matching(&mut events, |e| match e {
            Event::Query(q) => Some(q),
            _ => None,
        })
        .await;
        got_it.send(()).unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        q.respond(&b"late"[..]).unwrap();
    });
    let a2 = asker.clone();
    let server_id = server.node_id();
    let first = tokio::spawn(async move {
        a2.query(server_id, "slow", &b""[..], Duration::from_secs(10))
            .await
    });
    // The first query is now held unanswered by the application.
    tokio::time::timeout(WAIT, received).await.unwrap().unwrap();
    let err = asker
        .query(server.node_id(), "slow", &b""[..], Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(
        matches!(err, meshara_core::QueryError::Rejected { status: 503, .. }),
        "{err}"
    );
    assert_eq!(server.drops(DropReason::InboundQueries), 1);
    assert_eq!(&first.await.unwrap().unwrap()[..], b"late");
    held.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_onion_packets_are_dropped_and_replays_refused() {
    use meshara_core::crypto::onion::{self, Exit, Hop, PACKET_LEN};
    use meshara_core::{NodeRecordBuilder, proto, wire};

    let server = plain("127.0.0.1:0").await;
    let honest = plain("127.0.0.1:0").await;
    honest.connect(&server.quic_addr().unwrap()).await.unwrap();
    let (hostile, conn) = hostile_connection(&server).await;
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(&[1]).await.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let envelope = |body| proto::Envelope {
        version: wire::PROTOCOL_VERSION,
        body: Some(body),
    };
    let record = NodeRecordBuilder::new(&hostile, 1).sign(now).unwrap();
    let mut frames = bytes::BytesMut::new();
    let mut push = |body| {
        wire::encode_envelope_frame(&envelope(body), 1 << 20, &mut frames).unwrap();
    };
    push(proto::envelope::Body::NodeRecord(record.signed().clone()));
    // Random bytes of the right size: they do not authenticate.
    let noise: Vec<u8> = (0..PACKET_LEN).map(|i| (i * 31 % 251) as u8).collect();
    push(proto::envelope::Body::Onion(proto::OnionPacket {
        packet: noise.into(),
    }));
    // A genuine packet for the server whose content is not a sealed message, sent twice: the
    // first copy is dropped as malformed, the second as a replay.
    let route = [Hop {
        node: server.node_id(),
        key: *server.record().x25519_key(),
    }];
    let packet = onion::build(
        &route,
        b"not a sealed message",
        Exit::Deliver,
        now + 60,
        &mut rand_core::OsRng,
    )
    .unwrap();
    for _ in 0..2 {
        push(proto::envelope::Body::Onion(proto::OnionPacket {
            packet: packet.clone().into(),
        }));
    }
    send.write_all(&frames).await.unwrap();
    send.flush().await.unwrap();
    wait_until(|| server.drops(DropReason::Onion) == 2).await;
    wait_until(|| server.drops(DropReason::Malformed) == 1).await;
    // The server keeps serving everyone.
    honest_round_trip(&honest, &server).await;
}
