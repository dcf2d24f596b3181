//! A hostile peer hands a node records whose addresses point at hosts on the node's own
//! network (an "internal service"): the node does not dial them unless it is configured to, or
//! is evidently on that network itself (`NodeConfig::dial_private`).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshara_core::net::transport::{Connection, StreamConnection};
use meshara_core::net::{NodeConfig, TransportKind};
use meshara_core::{Identity, Node, NodeBuilder, NodeRecordBuilder, Transport, proto, wire};
use tokio::io::AsyncWriteExt;

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn node(dial_private: Option<bool>) -> Node {
    NodeBuilder::new()
        .identity(Identity::generate())
        .config(NodeConfig {
            listen_quic: Some("127.0.0.1:0".parse().unwrap()),
            listen_tcp: Some("127.0.0.1:0".parse().unwrap()),
            mdns: false,
            dial_private,
            ..NodeConfig::default()
        })
        .start()
        .await
        .unwrap()
}

/// Connects to `victim` as a peer with a valid identity and sends it a peer exchange with the
/// record of a made-up node whose only address is `internal` (where a canary socket listens).
/// Returns whether the victim sent anything to `internal` within three seconds.
async fn point_at_internal_host(victim: &Node) -> bool {
    let canary = UdpSocket::bind("127.0.0.23:0").unwrap();
    canary
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let internal: SocketAddr = canary.local_addr().unwrap();

    let tcp: SocketAddr = format!("127.0.0.1:{}", victim.tcp_addr().unwrap().address.port)
        .parse()
        .unwrap();
    let hostile = Arc::new(Identity::generate());
    let io = tokio::net::TcpStream::connect(tcp).await.unwrap();
    let conn = StreamConnection::connect(
        io,
        &hostile,
        Some(victim.node_id()),
        TransportKind::Tcp,
        Some(tcp),
    )
    .await
    .unwrap();
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(&[1]).await.unwrap();
    let now = unix_secs();
    let own = NodeRecordBuilder::new(&hostile, 1).sign(now).unwrap();
    let decoy = NodeRecordBuilder::new(&Identity::generate(), 1)
        .address(Transport::Quic, internal.ip().to_string(), internal.port())
        .sign(now)
        .unwrap();
    let mut frames = bytes::BytesMut::new();
    for body in [
        proto::envelope::Body::NodeRecord(own.signed().clone()),
        proto::envelope::Body::PeerExchange(proto::PeerExchange {
            records: vec![decoy.signed().clone()],
        }),
    ] {
        let env = proto::Envelope {
            version: wire::PROTOCOL_VERSION,
            body: Some(body),
        };
        wire::encode_envelope_frame(&env, 1 << 20, &mut frames).unwrap();
    }
    send.write_all(&frames).await.unwrap();
    send.flush().await.unwrap();

    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut buf = [0u8; 2048];
        while Instant::now() < deadline {
            if canary.recv_from(&mut buf).is_ok() {
                return true;
            }
        }
        false
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_pointing_at_internal_hosts_are_not_dialled_unless_allowed() {
    // A node told not to dial non-public addresses from records ignores the decoy...
    let strict = node(Some(false)).await;
    assert!(
        !point_at_internal_host(&strict).await,
        "the node dialled a loopback address it learned from a hostile record"
    );
    // ...and keeps working: the application's own dials are never filtered.
    let other = node(None).await;
    strict.connect(&other.quic_addr().unwrap()).await.unwrap();

    // A node on a loopback network (it listens there) dials loopback addresses from records:
    // that is how a devnet finds itself. The same decoy reaches the canary.
    let devnet = node(None).await;
    assert!(
        point_at_internal_host(&devnet).await,
        "a node listening on loopback did not dial a loopback peer from a record"
    );
}
