//! Tower layers: per-identity rate limiting (over Meshara and over signed HTTP) and request
//! metrics, through real servers.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Path;
use axum::http::{Request, StatusCode, header};
use axum::routing::get;
use http_body_util::BodyExt;
use meshara_axum::{
    HttpMetrics, MesharaClient, RateLimitLayer, VerifiedPeer, VerifySignaturesLayer, sign_request,
};
use meshara_core::{Identity, Node, NodeBuilder};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn node() -> Node {
    NodeBuilder::new()
        .identity(Identity::generate())
        .listen_quic("127.0.0.1:0".parse().unwrap())
        .start()
        .await
        .unwrap()
}

async fn whoami(VerifiedPeer(peer): VerifiedPeer) -> String {
    peer.to_string()
}

async fn ping() -> &'static str {
    "pong"
}

async fn body_of(res: axum::response::Response<impl axum::body::HttpBody>) -> Value {
    let bytes = match res.into_body().collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => panic!("body"),
    };
    serde_json::from_slice(&bytes).unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()))
}

/// A tiny rate (one request per 1000 s) so that no token refills while the test runs.
const TRICKLE: f64 = 0.001;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_each_meshara_identity_separately() {
    let server = node().await;
    let greedy = node().await;
    let modest = node().await;
    for n in [&greedy, &modest] {
        n.connect(&server.quic_addr().unwrap()).await.unwrap();
    }
    let app = Router::new()
        .route("/whoami", get(whoami))
        .layer(RateLimitLayer::new(TRICKLE, 3));
    tokio::spawn(meshara_axum::serve(server.clone(), app));

    let call = |from: &Node| {
        let client = MesharaClient::new(from.clone());
        let to = server.node_id();
        async move {
            client
                .request(to, Request::get("/whoami").body(Body::empty()).unwrap())
                .await
                .unwrap()
        }
    };
    for _ in 0..3 {
        let res = call(&greedy).await;
        assert_eq!(res.status(), StatusCode::OK);
    }
    let refused = call(&greedy).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = refused.headers()[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // One token per 1000 s, just spent: the next one is 1000 s away.
    assert_eq!(retry_after, 1000);
    let body = body_of(refused).await;
    assert_eq!(body["error"], "rate_limited");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains(&greedy.node_id().to_string()), "{message}");
    // The other identity still has its whole burst.
    for _ in 0..3 {
        let res = call(&modest).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(
            body_of(res).await,
            Value::String(modest.node_id().to_string())
        );
    }
    for n in [server, greedy, modest] {
        n.stop().await;
    }
}

/// A TCP connection to `to` from the loopback address `from` (127.0.0.0/8 is all ours, so
/// tests can play callers at different addresses).
async fn connect_from(from: &str, to: SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

/// One request from the loopback address `from`.
async fn http_from(from: &str, addr: SocketAddr, mut req: Request<Body>) -> (StatusCode, Value) {
    let tcp = connect_from(from, addr).await;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    req.headers_mut()
        .insert(header::HOST, "meshara.test".parse().unwrap());
    let res = sender.send_request(req).await.unwrap();
    let status = res.status();
    (status, body_of(res).await)
}

fn signed(id: &Identity, uri: &str) -> Request<Body> {
    let mut req = Request::get(uri).body(Body::empty()).unwrap();
    sign_request(id, &mut req, b"").unwrap();
    req
}

fn unsigned(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

async fn serve_with_addresses(app: Router) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    (addr, server)
}

/// Each identity may make 2 requests, each address 5 (no refill while the test runs).
fn limits() -> RateLimitLayer {
    RateLimitLayer::new(TRICKLE, 2).per_address(TRICKLE, 5)
}

/// Signed callers are limited by identity *and* by address: an attacker signing every request
/// with a fresh throwaway key from one address runs out of its address's budget, while
/// honest callers at other addresses are served. Checked with the rate limiter outside the
/// signature verifier (recommended) and inside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_does_not_escape_the_address_limit() {
    let outside = Router::new()
        .route("/whoami", get(whoami))
        .route("/ping", get(ping))
        .layer(VerifySignaturesLayer::default())
        .layer(limits());
    let inside = Router::new()
        .route("/whoami", get(whoami))
        .route("/ping", get(ping))
        .layer(limits())
        .layer(VerifySignaturesLayer::default());
    for app in [outside, inside] {
        let (addr, server) = serve_with_addresses(app).await;
        // An honest signer at 127.0.0.2 has its identity's budget.
        let alice = Identity::generate();
        for _ in 0..2 {
            let (status, body) = http_from("127.0.0.2", addr, signed(&alice, "/whoami")).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(body, Value::String(alice.node_id().to_string()));
        }
        let (status, body) = http_from("127.0.0.2", addr, signed(&alice, "/whoami")).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
        assert_eq!(body["error"], "rate_limited");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(&alice.node_id().to_string()), "{message}");

        // The attacker at 127.0.0.3 signs each request with a new key: the address's budget
        // (5) runs out all the same.
        for i in 0..5 {
            let throwaway = Identity::generate();
            let (status, body) = http_from("127.0.0.3", addr, signed(&throwaway, "/whoami")).await;
            assert_eq!(status, StatusCode::OK, "request {i}: {body}");
        }
        for _ in 0..3 {
            let throwaway = Identity::generate();
            let (status, body) = http_from("127.0.0.3", addr, signed(&throwaway, "/whoami")).await;
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
            let message = body["message"].as_str().unwrap();
            assert!(message.contains("address 127.0.0.3"), "{message}");
        }
        // Unsigned requests from there are refused too.
        let (status, _) = http_from("127.0.0.3", addr, unsigned("/ping")).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);

        // Honest callers elsewhere are served: a signer and an unsigned caller at 127.0.0.4.
        let bob = Identity::generate();
        let (status, body) = http_from("127.0.0.4", addr, signed(&bob, "/whoami")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body, Value::String(bob.node_id().to_string()));
        let (status, body) = http_from("127.0.0.4", addr, unsigned("/ping")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        server.abort();
    }
}

/// Sends a signed POST's head claiming a body, then never sends the body: the answer must
/// come without the server waiting for (buffering) the body.
async fn head_only(from: &str, addr: SocketAddr, id: &Identity, len: usize) -> (u16, String) {
    head_only_with(from, addr, signed_post(id, len)).await
}

/// A signed `POST /echo` of `len` bytes, without its body.
fn signed_post(id: &Identity, len: usize) -> Request<Body> {
    let body = vec![b'x'; len];
    let mut req = Request::post("/echo").body(Body::empty()).unwrap();
    sign_request(id, &mut req, &body).unwrap();
    req.headers_mut()
        .insert(header::CONTENT_LENGTH, len.to_string().parse().unwrap());
    req
}

async fn head_only_with(from: &str, addr: SocketAddr, req: Request<Body>) -> (u16, String) {
    let mut head = String::from("POST /echo HTTP/1.1\r\nhost: meshara.test\r\n");
    for (name, value) in req.headers() {
        head.push_str(&format!("{name}: {}\r\n", value.to_str().unwrap()));
    }
    head.push_str("\r\n");
    let mut tcp = connect_from(from, addr).await;
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            let n = tcp.read(&mut buf).await.unwrap();
            answer.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&answer);
            if n == 0 || text.contains("\r\n\r\n") && text.contains('}') {
                break;
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the server waited for the body: {:?}",
        String::from_utf8_lossy(&answer)
    );
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// The signature layer looks at headers first: a body is only read once the signature
/// verified and the signer passed the rate limit, and never beyond the (small, configurable)
/// limit, which a `Content-Length` beyond it hits at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_not_buffered_before_the_signature_and_rate_limit() {
    async fn echo(VerifiedPeer(peer): VerifiedPeer, body: String) -> String {
        format!("{peer}:{}", body.len())
    }
    let app = Router::new()
        .route("/echo", axum::routing::post(echo))
        .layer(VerifySignaturesLayer::default())
        .layer(RateLimitLayer::new(TRICKLE, 2).per_address(TRICKLE, 50));
    let (addr, server) = serve_with_addresses(app).await;
    let mallory = Identity::generate();

    // A forged signature is refused from the head, its body never read.
    let mut forged = signed_post(&mallory, 50_000);
    forged.headers_mut().insert(
        "signature",
        format!("meshara=:{}:", "A".repeat(86) + "==")
            .parse()
            .unwrap(),
    );
    let (status, text) = head_only_with("127.0.0.5", addr, forged).await;
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("invalid_signature"), "{text}");

    // A declared body over the 64 KiB default: 413 without reading it.
    let (status, text) = head_only("127.0.0.5", addr, &Identity::generate(), 1 << 20).await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("body_too_large"), "{text}");

    // Mallory spends her identity's budget honestly…
    for _ in 0..2 {
        let mut req = Request::post("/echo").body(Body::from("hello")).unwrap();
        sign_request(&mallory, &mut req, b"hello").unwrap();
        let (status, body) = http_from("127.0.0.5", addr, req).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // …then a head claiming a body: refused by the rate limit before any body is read.
    let (status, text) = head_only("127.0.0.5", addr, &mallory, 50_000).await;
    assert_eq!(status, 429, "{text}");
    assert!(text.contains("rate_limited"), "{text}");

    // An honest signer is served, body and all.
    let alice = Identity::generate();
    let mut req = Request::post("/echo").body(Body::from("hi alice")).unwrap();
    sign_request(&alice, &mut req, b"hi alice").unwrap();
    let (status, body) = http_from("127.0.0.6", addr, req).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, Value::String(format!("{}:8", alice.node_id())));
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_by_route_template_and_status() {
    async fn item(Path(id): Path<u32>) -> Result<String, StatusCode> {
        if id == 0 {
            Err(StatusCode::NOT_FOUND)
        } else {
            Ok(format!("item {id}"))
        }
    }
    let metrics = HttpMetrics::new();
    let app = Router::new()
        .route("/items/{id}", get(item))
        .route("/ping", get(ping))
        .route_layer(metrics.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(axum::serve(listener, app).into_future());
    for uri in ["/items/1", "/items/2", "/items/0", "/ping", "/nowhere"] {
        http_from(
            "127.0.0.1",
            addr,
            Request::get(uri).body(Body::empty()).unwrap(),
        )
        .await;
    }
    let text = metrics.render();
    for line in [
        r#"http_requests_total{method="GET",route="/items/{id}",status="200"} 2"#,
        r#"http_requests_total{method="GET",route="/items/{id}",status="404"} 1"#,
        r#"http_requests_total{method="GET",route="/ping",status="200"} 1"#,
        r#"http_request_duration_seconds_count{method="GET",route="/items/{id}"} 3"#,
        r#"http_request_duration_seconds_count{method="GET",route="/ping"} 1"#,
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    // Raw paths never become labels: an unrouted path is not recorded by a route layer.
    assert!(!text.contains("/items/1\""), "{text}");
    assert!(!text.contains("/nowhere"), "{text}");
    let mut headers = axum::http::HeaderMap::new();
    let response = metrics.response(&headers);
    assert_eq!(
        response.headers()[axum::http::header::CONTENT_TYPE],
        meshara_core::exposition::CLASSIC_CONTENT_TYPE
    );
    headers.insert(
        axum::http::header::ACCEPT,
        "application/openmetrics-text".parse().unwrap(),
    );
    let response = metrics.response(&headers);
    assert_eq!(
        response.headers()[axum::http::header::CONTENT_TYPE],
        meshara_core::exposition::OPENMETRICS_CONTENT_TYPE
    );
    server.abort();
}
