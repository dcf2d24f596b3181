//! Tests that need crate internals: clients speaking another protocol version.

use std::sync::Arc;

use super::metrics::DropReason;
use super::{NodeBuilder, TransportError};
use crate::Identity;

fn wrong_version_client(identity: &Arc<Identity>) -> rustls::ClientConfig {
    let mut config = super::tls::client_config(identity, None).unwrap();
    config.alpn_protocols = vec![b"meshara/2".to_vec()];
    config
}

async fn node() -> super::Node {
    NodeBuilder::new()
        .identity(Identity::generate())
        .listen_quic("127.0.0.1:0".parse().unwrap())
        .listen_tcp("127.0.0.1:0".parse().unwrap())
        .start()
        .await
        .unwrap()
}

#[tokio::test]
async fn quic_client_with_another_version_gets_a_clear_error() {
    let node = node().await;
    let addr = node.inner().local_quic.unwrap();
    let client = Arc::new(Identity::generate());
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(wrong_version_client(&client)).unwrap();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let err = endpoint
        .connect_with(
            quinn::ClientConfig::new(Arc::new(crypto)),
            addr,
            super::tls::SERVER_NAME,
        )
        .unwrap()
        .await
        .unwrap_err();
    let err = TransportError::from_quic_handshake(err, None);
    assert!(
        matches!(err, TransportError::ProtocolMismatch { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("we speak meshara/1"), "{err}");
    // The node counted the refusal and still serves a current peer.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(node.drops(DropReason::ProtocolVersion), 1);
    let other = node_dialing(&node).await;
    other.stop().await;
    node.stop().await;
}

#[tokio::test]
async fn tcp_client_with_another_version_gets_a_clear_error() {
    let node = node().await;
    let addr = node.inner().local_tcp.unwrap();
    let client = Arc::new(Identity::generate());
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(wrong_version_client(&client)));
    let name = rustls::pki_types::ServerName::try_from(super::tls::SERVER_NAME).unwrap();
    let err = connector.connect(name, tcp).await.unwrap_err();
    let err = TransportError::from_tls_io(err, None);
    assert!(
        matches!(err, TransportError::ProtocolMismatch { .. }),
        "{err:?}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(node.drops(DropReason::ProtocolVersion), 1);
    let other = node_dialing(&node).await;
    other.stop().await;
    node.stop().await;
}

/// A current node connects to `node` and exchanges a message with it.
async fn node_dialing(node: &super::Node) -> super::Node {
    let other = NodeBuilder::new()
        .identity(Identity::generate())
        .listen_quic("127.0.0.1:0".parse().unwrap())
        .start()
        .await
        .unwrap();
    other.connect(&node.quic_addr().unwrap()).await.unwrap();
    let delivered = other
        .send_private(node.node_id(), "", "still here")
        .await
        .unwrap()
        .confirmed()
        .await
        .unwrap();
    assert_eq!(delivered.peer, node.node_id());
    other
}
