//! Tower layers: per-identity rate limiting (over Meshara and over signed HTTP) and request
//! metrics, through real servers.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;

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

async fn http(addr: SocketAddr, mut req: Request<Body>) -> (StatusCode, Value) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_signed_http_callers_by_identity_and_others_by_address() {
    let app = Router::new()
        .route("/whoami", get(whoami))
        .route("/ping", get(ping))
        .layer(RateLimitLayer::new(TRICKLE, 2))
        .layer(VerifySignaturesLayer::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .into_future(),
    );
    let alice = Identity::generate();
    let bob = Identity::generate();
    for _ in 0..2 {
        let (status, body) = http(addr, signed(&alice, "/whoami")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body, Value::String(alice.node_id().to_string()));
    }
    let (status, body) = http(addr, signed(&alice, "/whoami")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains(&alice.node_id().to_string())
    );
    // Bob, from the same address, is counted on his own.
    let (status, _) = http(addr, signed(&bob, "/whoami")).await;
    assert_eq!(status, StatusCode::OK);
    // Unsigned callers are counted by IP address, apart from the identities.
    for _ in 0..2 {
        let (status, _) = http(addr, Request::get("/ping").body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, body) = http(addr, Request::get("/ping").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("address 127.0.0.1"),
        "{body}"
    );
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
        http(addr, Request::get(uri).body(Body::empty()).unwrap()).await;
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
    server.abort();
}
