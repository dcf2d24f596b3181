//! Serving safely: `serve_tcp` and `serve_with` drop clients that never finish a request head
//! (slowloris) and cap connections, while honest clients are served — over TCP with the real
//! routes, and over Meshara.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, FromRef};
use axum::http::{Request, StatusCode};
use axum::routing::get;
use futures_util::StreamExt;
use http_body_util::BodyExt;
use meshara_axum::{Access, HTTP_PROTOCOL, MesharaClient, ServeOptions, VerifiedPeer};
use meshara_core::{Identity, Node, NodeBuilder};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[derive(Clone)]
struct AppState {
    node: Node,
}

impl FromRef<AppState> for Node {
    fn from_ref(s: &AppState) -> Node {
        s.node.clone()
    }
}

async fn node() -> Node {
    NodeBuilder::new()
        .identity(Identity::generate())
        .listen_quic("127.0.0.1:0".parse().unwrap())
        .start()
        .await
        .unwrap()
}

const TOKEN: &str = "serving-test-token-6f1ed002ab5595859014ebf0951522d9";
const HALF_HEAD: &[u8] = b"GET /meshara/status HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthoriz";

async fn connect_from(from: &str, to: SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

/// Reads until the peer closes; how long that took (`None`: still open after `within`).
async fn closed_within(io: &mut (impl AsyncRead + Unpin), within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(within, async {
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
    .map(|()| started.elapsed())
}

/// A full request from `from` over the real routes; the status and body.
async fn status_from(from: &str, addr: SocketAddr) -> (StatusCode, String) {
    let tcp = connect_from(from, addr).await;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/meshara/status")
        .header("host", addr.to_string())
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Slowloris over TCP against the real routes: an attacker at one address opens many
/// connections and sends half a request head on each. Beyond the per-address cap its
/// connections are closed at once, the rest when the header timeout runs out; meanwhile an
/// honest client at another address is served, WebSockets included, and handlers see the
/// caller's address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_slowloris_is_dropped_and_honest_clients_are_served() {
    let a = node().await;
    let app = Router::new()
        .nest("/meshara", meshara_axum::routes(Access::bearer(TOKEN)))
        .route(
            "/whereami",
            get(|ConnectInfo(addr): ConnectInfo<SocketAddr>| async move { addr.ip().to_string() }),
        )
        .with_state(AppState { node: a.clone() });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let options = ServeOptions::default()
        .header_read_timeout(Duration::from_secs(1))
        .max_connections(8)
        .max_connections_per_caller(2);
    let server = tokio::spawn(meshara_axum::serve_tcp(listener, app, options));

    let mut attacks = Vec::new();
    for _ in 0..5 {
        let mut tcp = connect_from("127.0.0.3", addr).await;
        tcp.write_all(HALF_HEAD).await.unwrap();
        attacks.push(tcp);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The honest client, while the attack holds its connections.
    let started = Instant::now();
    let (status, body) = status_from("127.0.0.4", addr).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains(&a.node_id().to_string()), "{body}");
    assert!(started.elapsed() < Duration::from_millis(900));
    // Its WebSocket upgrades through serve_tcp.
    let mut ws_request = format!("ws://{addr}/meshara/events/ws")
        .into_client_request()
        .unwrap();
    ws_request
        .headers_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_request).await.unwrap();
    // Handlers see the caller's address.
    let tcp = connect_from("127.0.0.4", addr).await;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let res = sender
        .send_request(
            Request::get("/whereami")
                .header("host", "127.0.0.1")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"127.0.0.4");

    // Every attacking connection is closed: three at once (over the cap), two by the header
    // timeout.
    let mut closed = Vec::new();
    for tcp in &mut attacks {
        closed.push(
            closed_within(tcp, Duration::from_secs(5))
                .await
                .expect("a half-sent request head kept its connection"),
        );
    }
    let at_once = closed
        .iter()
        .filter(|d| **d < Duration::from_millis(500))
        .count();
    assert!(at_once >= 3, "{closed:?}");
    // The honest WebSocket stays open past the header timeout.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), ws.next())
            .await
            .is_err(),
        "the WebSocket was closed"
    );
    server.abort();
    a.stop().await;
}

/// Slowloris over Meshara: a peer opens HTTP streams and sends half a request head on each,
/// filling the served connections. They are dropped by the header timeout, and an honest
/// peer's request is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meshara_slowloris_is_dropped_and_honest_peers_are_served() {
    async fn whoami(VerifiedPeer(peer): VerifiedPeer) -> String {
        peer.to_string()
    }
    let server = node().await;
    let attacker = node().await;
    let honest = node().await;
    for n in [&attacker, &honest] {
        n.connect(&server.quic_addr().unwrap()).await.unwrap();
    }
    let app = Router::new().route("/whoami", get(whoami));
    let options = ServeOptions::default()
        .header_read_timeout(Duration::from_secs(1))
        .max_connections(2);
    tokio::spawn(meshara_axum::serve_with(server.clone(), app, options));

    let mut attacks = Vec::new();
    for _ in 0..2 {
        let mut stream = attacker
            .open_stream(server.node_id(), HTTP_PROTOCOL)
            .await
            .unwrap();
        stream.write_all(HALF_HEAD).await.unwrap();
        stream.flush().await.unwrap();
        attacks.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Both slots are taken; the honest request is served once the timeout frees one.
    let client = MesharaClient::new(honest.clone());
    let res = tokio::time::timeout(
        Duration::from_secs(5),
        client.request(
            server.node_id(),
            Request::get("/whoami").body(Body::empty()).unwrap(),
        ),
    )
    .await
    .expect("the honest peer was never served")
    .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, honest.node_id().to_string());
    for stream in &mut attacks {
        assert!(
            closed_within(stream, Duration::from_secs(5))
                .await
                .is_some(),
            "a half-sent request head kept its stream"
        );
    }
    for n in [server, attacker, honest] {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_the_request_in_flight_and_drops_idle_clients() {
    // A handler that takes a moment, to be caught in flight by the shutdown.
    let app: Router = Router::new().route(
        "/slow",
        get(|| async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            "done"
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(meshara_axum::serve_tcp_with_graceful_shutdown(
        listener,
        app,
        ServeOptions::default(),
        async move {
            let _ = stopped.await;
        },
    ));
    // An idle client that sent half a request head, and one whose request is running.
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /slow HTTP/1.1\r\nho").await.unwrap();
    let mut busy = tokio::net::TcpStream::connect(addr).await.unwrap();
    busy.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.send(()).unwrap();
    // The request in flight is answered in full...
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), busy.read_to_string(&mut answer))
        .await
        .expect("the request in flight was not finished")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("done"), "{answer}");
    // ...the half-sent one is closed, and the server returns once both are gone.
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), idle.read_to_end(&mut rest)).await;
    tokio::time::timeout(Duration::from_secs(15), server)
        .await
        .expect("the server did not return after its connections closed")
        .unwrap()
        .unwrap();
    // Nothing accepts any more.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
