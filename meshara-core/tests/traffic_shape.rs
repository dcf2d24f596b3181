//! What an on-path observer sees of a Meshara connection over TCP: the TLS records between two
//! real nodes, read by a relay in the middle that parses their headers (RFC 8446 §5.1).
//! (Issue 23 adds to this file: the handshake, QUIC, timers.)
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    clippy::print_stderr
)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshara_core::net::PeerAddr;
use meshara_core::record::{Address, Transport};
use meshara_core::{Identity, Node, NodeBuilder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Application-data records (content type 23) by length, both directions together.
type Records = Arc<Mutex<BTreeMap<usize, usize>>>;

/// Copies `from` to `to` and counts the TLS records that pass.
async fn relay(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    records: Records,
) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if to.write_all(&chunk[..n]).await.is_err() {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        // Whole records: type (1), legacy version (2), length (2), then the body.
        while buf.len() >= 5 {
            let len = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
            if buf.len() < 5 + len {
                break;
            }
            if buf[0] == 23 {
                *records.lock().unwrap().entry(len).or_default() += 1;
            }
            buf.drain(..5 + len);
        }
    }
}

async fn node(tcp: bool) -> Node {
    let mut b = NodeBuilder::new().identity(Identity::generate());
    b = if tcp {
        b.listen_tcp("127.0.0.1:0".parse().unwrap())
    } else {
        b.listen_quic("127.0.0.1:0".parse().unwrap())
    };
    b.start().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_and_its_header_travel_in_one_tls_record() {
    let server = node(true).await;
    let client = node(false).await;
    let records: Records = Arc::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front = listener.local_addr().unwrap();
    let back = server.tcp_addr().unwrap().address;
    let counting = records.clone();
    tokio::spawn(async move {
        let (inbound, _) = listener.accept().await.unwrap();
        let outbound = TcpStream::connect((back.host.as_str(), back.port))
            .await
            .unwrap();
        let (ir, iw) = inbound.into_split();
        let (or, ow) = outbound.into_split();
        tokio::spawn(relay(ir, ow, counting.clone()));
        tokio::spawn(relay(or, iw, counting));
    });
    let via = PeerAddr {
        node: Some(server.node_id()),
        address: Address {
            transport: Transport::Tcp,
            host: front.ip().to_string(),
            port: front.port(),
        },
    };
    assert_eq!(client.connect(&via).await.unwrap(), server.node_id());
    // Private messages of several sizes, each acknowledged, and a stream larger than a record.
    for (i, size) in [10usize, 1_000, 3_000, 20_000]
        .iter()
        .cycle()
        .take(100)
        .enumerate()
    {
        let body = vec![u8::try_from(i % 251).unwrap(); *size];
        tokio::time::timeout(
            Duration::from_secs(20),
            client
                .send_private(server.node_id(), "application/octet-stream", body)
                .await
                .unwrap()
                .confirmed(),
        )
        .await
        .expect("delivery timed out")
        .unwrap();
    }
    meshara_core::net::testing::stream_both_ways(&client, &server, 200_000).await;
    let records = records.lock().unwrap().clone();
    let total: usize = records.values().sum();
    // A 12-byte yamux header, the inner content type and the 16-byte AEAD tag.
    let bare = records.get(&(12 + 1 + 16)).copied().unwrap_or(0);
    eprintln!("{total} application-data records; by length: {records:?}");
    assert!(total >= 200, "the relay saw only {total} records");
    // Header-only frames exist (window updates, stream opens and closes: about 4 % of the
    // records here); before writes were coalesced, every frame's header went in a record of
    // its own (483 of 946 records in the same test).
    assert!(
        bare * 10 <= total,
        "{bare} of {total} records are a bare yamux header"
    );
    // No frame outgrows a record (16 KiB of plaintext, the inner content type and the tag).
    assert!(
        *records.keys().max().unwrap() <= 16 * 1024 + 1 + 16,
        "{records:?}"
    );
    client.stop().await;
    server.stop().await;
}
