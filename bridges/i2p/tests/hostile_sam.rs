//! A hostile or broken "router" on loopback: malformed and oversized replies, a router that
//! closes mid-handshake or stalls, refusals, a bad peer line on accept. Each gives a clear
//! error within its timeout, never a panic, and the accept loop keeps going.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use meshara_core::{Identity, NodeBuilder, NodeConfig, Transport};
use meshara_i2p::{I2pConfig, I2pTransport, SamConnection, SamError, SamTimeouts, dest};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// A private destination a fake router can hand out (structurally valid).
fn private_destination() -> String {
    let mut d = vec![1u8; 384];
    d.extend_from_slice(&[5, 0, 4, 0, 7, 0, 4]);
    d.extend_from_slice(&[2u8; 288]);
    dest::encode_base64(&d)
}

fn short() -> SamTimeouts {
    SamTimeouts {
        hello: Duration::from_secs(2),
        session: Duration::from_secs(2),
        connect: Duration::from_secs(2),
        command: Duration::from_secs(2),
    }
}

/// Serves each connection with `script`: for each command line received, the bytes to answer
/// (`None`: close the connection; an empty answer: say nothing and keep it open).
async fn fake_router(
    script: impl Fn(usize, &str) -> Option<Vec<u8>> + Send + Sync + 'static,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let script = Arc::new(script);
    let conns = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            let script = script.clone();
            let n = conns.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let mut io = BufReader::new(socket);
                loop {
                    let mut line = String::new();
                    if io.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    match script(n, line.trim_end()) {
                        None => return,
                        Some(answer) => {
                            if io.get_mut().write_all(&answer).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

fn hello_then(
    rest: impl Fn(&str) -> Option<Vec<u8>> + Send + Sync + 'static,
) -> impl Fn(usize, &str) -> Option<Vec<u8>> + Send + Sync + 'static {
    move |_, line| {
        if line.starts_with("HELLO") {
            Some(b"HELLO REPLY RESULT=OK VERSION=3.1\n".to_vec())
        } else {
            rest(line)
        }
    }
}

async fn start(addr: SocketAddr) -> Result<I2pTransport, SamError> {
    let dir = tempfile::tempdir().unwrap();
    let mut config = I2pConfig::new(addr, dir.path());
    config.timeouts = short();
    I2pTransport::start(config).await
}

#[tokio::test]
async fn hostile_replies_are_clear_errors() {
    // Nobody listening.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    assert!(matches!(
        SamConnection::connect(closed, short()).await,
        Err(SamError::Io(_))
    ));
    // A router that closes before answering HELLO.
    let addr = fake_router(|_, _| None).await;
    assert!(matches!(start(addr).await, Err(SamError::RouterClosed)));
    // Garbage instead of a HELLO reply.
    let addr = fake_router(|_, _| Some(b"\x00\x01 garbage\n".to_vec())).await;
    assert!(matches!(start(addr).await, Err(SamError::Malformed(_))));
    // An endless line.
    let addr = fake_router(|_, _| Some(vec![b'A'; 64 * 1024])).await;
    assert!(matches!(
        start(addr).await,
        Err(SamError::LineTooLong { .. })
    ));
    // A version we do not speak.
    let addr = fake_router(|_, _| Some(b"HELLO REPLY RESULT=NOVERSION\n".to_vec())).await;
    assert!(matches!(start(addr).await, Err(SamError::Version(_))));
    let addr = fake_router(|_, _| Some(b"HELLO REPLY RESULT=OK VERSION=2.0\n".to_vec())).await;
    assert!(matches!(start(addr).await, Err(SamError::Version(_))));
    // A router that stalls after HELLO.
    let addr = fake_router(hello_then(|_| Some(Vec::new()))).await;
    assert!(matches!(
        start(addr).await,
        Err(SamError::Timeout {
            step: "SESSION CREATE",
            ..
        })
    ));
    // Closes mid-handshake: after HELLO, at SESSION CREATE.
    let addr = fake_router(hello_then(|_| None)).await;
    assert!(matches!(start(addr).await, Err(SamError::RouterClosed)));
    // Refuses the session, with a reason.
    let addr = fake_router(hello_then(|_| {
        Some(b"SESSION STATUS RESULT=DUPLICATED_ID MESSAGE=\"id in use\"\n".to_vec())
    }))
    .await;
    match start(addr).await {
        Err(SamError::Refused { result, message }) => {
            assert_eq!(result, "DUPLICATED_ID");
            assert_eq!(message, "id in use");
        }
        other => panic!("{other:?}"),
    }
    // Says OK but hands back no destination, or a broken one.
    let addr = fake_router(hello_then(|_| Some(b"SESSION STATUS RESULT=OK\n".to_vec()))).await;
    assert!(matches!(start(addr).await, Err(SamError::Malformed(_))));
    let addr = fake_router(hello_then(|_| {
        Some(b"SESSION STATUS RESULT=OK DESTINATION=AAAA\n".to_vec())
    }))
    .await;
    assert!(matches!(start(addr).await, Err(SamError::Malformed(_))));
    // The wrong reply to the command.
    let addr = fake_router(hello_then(|_| Some(b"STREAM STATUS RESULT=OK\n".to_vec()))).await;
    assert!(matches!(start(addr).await, Err(SamError::Malformed(_))));
}

/// A router whose sessions work but whose accepts hand over garbage: the accept loop logs,
/// backs off and keeps trying; dials get clear errors; the node is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_loop_and_dialer_survive_a_broken_router() {
    let private = private_destination();
    let accepts = Arc::new(AtomicUsize::new(0));
    let seen = accepts.clone();
    let addr = fake_router(hello_then(move |line| {
        if line.starts_with("SESSION CREATE") {
            Some(format!("SESSION STATUS RESULT=OK DESTINATION={private}\n").into_bytes())
        } else if line.starts_with("STREAM ACCEPT") {
            seen.fetch_add(1, Ordering::Relaxed);
            // OK, then a peer line that is not a destination.
            Some(b"STREAM STATUS RESULT=OK\nnot-a-destination!!\n".to_vec())
        } else if line.starts_with("STREAM CONNECT") {
            Some(b"STREAM STATUS RESULT=CANT_REACH_PEER MESSAGE=\"no lease set\"\n".to_vec())
        } else {
            None
        }
    }))
    .await;
    let transport = start(addr).await.unwrap();
    assert_eq!(
        transport.b32(),
        dest::b32_of(&private_destination()).unwrap()
    );
    let node = NodeBuilder::new()
        .config(NodeConfig {
            listen_quic: Some("127.0.0.1:0".parse().unwrap()),
            ..NodeConfig::default()
        })
        .identity(Identity::generate())
        .dialer(Transport::I2p, transport.dialer())
        .start()
        .await
        .unwrap();
    let _serving = transport.serve(node.clone());
    tokio::time::timeout(Duration::from_secs(20), async {
        while accepts.load(Ordering::Relaxed) < 2 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the accept loop retries after a bad peer line");
    match transport.connect(transport.b32()).await {
        Err(SamError::Refused { result, .. }) => assert_eq!(result, "CANT_REACH_PEER"),
        other => panic!("{other:?}"),
    }
    // A dial through the node gives a transport error naming the cause.
    let peer = meshara_core::PeerAddr {
        node: None,
        address: transport.address(),
    };
    let err = node.connect(&peer).await.unwrap_err();
    assert!(err.to_string().contains("CANT_REACH_PEER"), "{err}");
    assert!(node.is_running());
    node.stop().await;
}

/// The router closes the connection that holds the session (it restarted): the transport
/// reports the session down instead of pretending.
#[tokio::test]
async fn a_lost_session_is_reported() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        let mut io = BufReader::new(socket);
        let mut line = String::new();
        io.read_line(&mut line).await.unwrap();
        io.get_mut()
            .write_all(b"HELLO REPLY RESULT=OK VERSION=3.2\n")
            .await
            .unwrap();
        line.clear();
        io.read_line(&mut line).await.unwrap();
        let reply = format!(
            "SESSION STATUS RESULT=OK DESTINATION={}\n",
            private_destination()
        );
        io.get_mut().write_all(reply.as_bytes()).await.unwrap();
        // A keep-alive is answered.
        io.get_mut().write_all(b"PING 1234\n").await.unwrap();
        line.clear();
        io.read_line(&mut line).await.unwrap();
        assert_eq!(line, "PONG 1234\n");
        // Then the router goes away.
    });
    let transport = start(addr).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        while transport.is_up() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the lost session is noticed");
}
