//! A connected peer with a valid identity floods the messages that cost the node signature
//! checks and key agreements: peer exchanges full of fresh records (64 signature checks each)
//! and session handshake inits (key agreements). Its verification budget
//! (`limits.peer_verifications_per_sec`) caps what the node spends on it, the work runs outside
//! the node's state lock, the peer is disconnected for persistent violations, and an honest
//! peer's round trips stay within a stated bound throughout.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshara_core::crypto::session;
use meshara_core::net::transport::{Connection, StreamConnection};
use meshara_core::net::{DropReason, Limits, TransportKind};
use meshara_core::{Identity, Node, NodeBuilder, NodeRecord, NodeRecordBuilder, proto, wire};
use tokio::io::AsyncWriteExt;

/// What one honest round trip (a private message and its acknowledgement over an established
/// session) may take while the attack runs.
const HONEST_BOUND: Duration = Duration::from_secs(2);

async fn node() -> Node {
    NodeBuilder::new()
        .identity(Identity::generate())
        .listen_quic("127.0.0.1:0".parse().unwrap())
        .listen_tcp("127.0.0.1:0".parse().unwrap())
        .start()
        .await
        .unwrap()
}

async fn honest_round_trip(honest: &Node, server: &Node) -> Duration {
    let started = Instant::now();
    tokio::time::timeout(HONEST_BOUND, async {
        honest
            .send_private(server.node_id(), "text/plain", "still served?")
            .await
            .unwrap()
            .confirmed()
            .await
            .unwrap()
    })
    .await
    .expect("an honest round trip exceeded the bound during the attack");
    started.elapsed()
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn frame(body: proto::envelope::Body) -> bytes::BytesMut {
    let mut out = bytes::BytesMut::new();
    let env = proto::Envelope {
        version: wire::PROTOCOL_VERSION,
        body: Some(body),
    };
    wire::encode_envelope_frame(&env, 1 << 20, &mut out).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_flooding_costly_messages_is_capped_and_cut_off() {
    let server = node().await;
    let honest = node().await;
    honest.connect(&server.quic_addr().unwrap()).await.unwrap();
    honest_round_trip(&honest, &server).await;

    // The attacker: a valid identity over TLS-over-TCP, announced with its own record.
    let tcp: SocketAddr = format!("127.0.0.1:{}", server.tcp_addr().unwrap().address.port)
        .parse()
        .unwrap();
    let hostile = Arc::new(Identity::generate());
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
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(&[1]).await.unwrap();
    let hostile_record = NodeRecordBuilder::new(&hostile, 1)
        .sign(unix_secs())
        .unwrap();
    send.write_all(&frame(proto::envelope::Body::NodeRecord(
        hostile_record.signed().clone(),
    )))
    .await
    .unwrap();

    // 40 peer exchanges of 64 fresh, validly signed records each (records the node does not
    // hold cost it a signature check apiece), sent over and over; and fresh handshake inits.
    let now = unix_secs();
    let exchanges: Vec<bytes::BytesMut> = (0..40)
        .map(|_| {
            let records = (0..64)
                .map(|_| {
                    NodeRecordBuilder::new(&Identity::generate(), 1)
                        .sign(now)
                        .unwrap()
                        .signed()
                        .clone()
                })
                .collect();
            frame(proto::envelope::Body::PeerExchange(proto::PeerExchange {
                records,
            }))
        })
        .collect();
    let server_record: NodeRecord = server.record();
    let inits: Vec<bytes::BytesMut> = (0..400)
        .map(|i| {
            let (_, init) =
                session::initiate(&hostile, &hostile_record, &server_record, now * 1000 + i)
                    .unwrap();
            frame(proto::envelope::Body::Private(proto::PrivateEnvelope {
                recipient: bytes::Bytes::copy_from_slice(server.node_id().as_bytes()),
                hop_limit: 1,
                body: Some(proto::private_envelope::Body::HandshakeInit(init)),
            }))
        })
        .collect();

    let known_before = server.stats().known_nodes;
    let started = Instant::now();
    let flood = tokio::spawn(async move {
        let mut sent = 0usize;
        'flood: for round in 0..50 {
            for (i, px) in exchanges.iter().enumerate() {
                if send.write_all(px).await.is_err() {
                    break 'flood;
                }
                sent += 64;
                let init = &inits[(round * exchanges.len() + i) % inits.len()];
                if send.write_all(init).await.is_err() {
                    break 'flood;
                }
                sent += 4;
            }
        }
        sent
    });

    // Honest round trips while the flood runs.
    let mut worst = Duration::ZERO;
    for _ in 0..10 {
        worst = worst.max(honest_round_trip(&honest, &server).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let closed = tokio::time::timeout(Duration::from_secs(30), conn.closed())
        .await
        .expect("the flooding peer was not disconnected");
    let asked = flood.await.unwrap();
    let elapsed = started.elapsed();
    let learned = server.stats().known_nodes.saturating_sub(known_before);
    let refused = server.drops(DropReason::PeerVerificationRate);
    eprintln!(
        "flood asked for ≥{asked} verifications in {elapsed:?}; node learned {learned} records, \
         refused {refused} messages; worst honest round trip {worst:?}; closed: {closed}"
    );

    let limits = Limits::default();
    // The node learned no more records than the budget pays for: the burst plus the rate over
    // the attack (plus one exchange in flight).
    let budget = f64::from(limits.peer_verification_burst)
        + f64::from(limits.peer_verifications_per_sec) * elapsed.as_secs_f64()
        + 64.0;
    assert!(
        (learned as f64) <= budget,
        "learned {learned} records, budget {budget}"
    );
    assert!(
        asked as f64 > 4.0 * budget,
        "the flood was too small to test anything"
    );
    assert!(refused > 100, "only {refused} messages refused");
    // Still serving after the attacker is gone.
    honest_round_trip(&honest, &server).await;
}

/// A hostile peer hands the node sealed messages from many made-up senders, none of whom the
/// node can reach to acknowledge: the acknowledgements it keeps waiting are bounded by
/// `limits.max_pending_ack_senders`, the messages themselves are still delivered, and an honest
/// peer keeps being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgements_for_unreachable_senders_are_bounded() {
    use futures_util::StreamExt;
    use meshara_core::crypto::padding::Padding;
    use meshara_core::{Event, message};

    let max_senders = 8;
    let server = NodeBuilder::new()
        .identity(Identity::generate())
        .listen_quic("127.0.0.1:0".parse().unwrap())
        .listen_tcp("127.0.0.1:0".parse().unwrap())
        .limits(Limits {
            max_pending_ack_senders: max_senders,
            ..Limits::default()
        })
        .start()
        .await
        .unwrap();
    let mut events = server.events();
    let honest = node().await;
    honest.connect(&server.quic_addr().unwrap()).await.unwrap();

    let tcp: SocketAddr = format!("127.0.0.1:{}", server.tcp_addr().unwrap().address.port)
        .parse()
        .unwrap();
    let hostile = Arc::new(Identity::generate());
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
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(&[1]).await.unwrap();
    let now = unix_secs();
    let own = NodeRecordBuilder::new(&hostile, 1).sign(now).unwrap();
    send.write_all(&frame(proto::envelope::Body::NodeRecord(
        own.signed().clone(),
    )))
    .await
    .unwrap();
    // 40 senders with no address anywhere: their acknowledgements have no way back.
    let senders = 40;
    let server_record = server.record();
    let mut frames = bytes::BytesMut::new();
    for i in 0..senders {
        let sender = Identity::generate();
        let record = NodeRecordBuilder::new(&sender, 1).sign(now).unwrap();
        let (_, msg) = message::new_private_message(
            &sender.node_id(),
            &server.node_id(),
            "text/plain",
            bytes::Bytes::from(format!("from sender {i}")),
            now * 1000,
            true,
        );
        let payload = message::encode_payload(&proto::PrivatePayload {
            body: Some(proto::private_payload::Body::Message(msg)),
        })
        .unwrap();
        let sealed = meshara_core::crypto::seal::seal(
            &sender,
            &record,
            &server_record,
            &payload,
            Padding::None,
        )
        .unwrap();
        frames.extend_from_slice(&frame(proto::envelope::Body::Private(
            proto::PrivateEnvelope {
                recipient: bytes::Bytes::copy_from_slice(server.node_id().as_bytes()),
                hop_limit: 1,
                body: Some(proto::private_envelope::Body::Sealed(sealed)),
            },
        )));
    }
    send.write_all(&frames).await.unwrap();

    // Every message reaches the application...
    let mut received = 0;
    tokio::time::timeout(Duration::from_secs(20), async {
        while received < senders {
            if let Some(Event::Message(_)) = events.next().await {
                received += 1;
            }
        }
    })
    .await
    .expect("the sealed messages were not all delivered");
    // ...while acknowledgements are kept for at most `max_senders` senders; the rest are
    // dropped (their senders would resend) and counted.
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.drops(DropReason::QueueFull) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(server.drops(DropReason::QueueFull) >= 1);
    honest_round_trip(&honest, &server).await;
}
