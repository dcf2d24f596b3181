//! Helpers shared by the bridge's integration tests.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    unreachable_pub
)]

use std::net::SocketAddr;
use std::time::Duration;

use meshara_core::Node;
use meshara_core::net::Timeouts;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub fn timeouts() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(30),
        ack: Duration::from_secs(5),
        reconnect_min: Duration::from_millis(200),
        reconnect_max: Duration::from_secs(2),
        peer_exchange: Duration::from_millis(500),
        ..Timeouts::default()
    }
}

pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: bridge\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

pub async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(120), async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting until {what}"));
}

/// How `n` reaches `peer` now, if connected.
pub fn via(n: &Node, peer: meshara_core::NodeId) -> Option<meshara_core::TransportKind> {
    n.peers()
        .into_iter()
        .find(|p| p.node_id == peer)
        .map(|p| p.transport)
}
