//! RFC 9421 HTTP message signatures: a valid signature authenticates the caller's NodeId; every
//! kind of bad signature is refused with its own status and reason.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Request, StatusCode};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use meshara_axum::{
    SignaturePolicy, VerifiedPeer, VerifySignaturesLayer, sign_request, sign_request_with,
};
use meshara_core::Identity;
use serde_json::Value;
use tower::ServiceExt;

async fn whoami(VerifiedPeer(peer): VerifiedPeer) -> String {
    peer.to_string()
}

async fn echo(VerifiedPeer(peer): VerifiedPeer, body: String) -> String {
    format!("{peer}:{body}")
}

fn app(policy: SignaturePolicy) -> Router {
    Router::new()
        .route("/whoami", get(whoami))
        .route("/echo", post(echo))
        .layer(VerifySignaturesLayer::new(policy))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn signed(id: &Identity, method: &str, uri: &str, body: &[u8]) -> Request<Body> {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::from(body.to_vec()))
        .unwrap();
    sign_request(id, &mut req, body).unwrap();
    req
}

/// Where requests go: the router as a tower service, or a real HTTP server on loopback.
#[derive(Clone)]
enum Target {
    Oneshot(Router),
    Server(std::net::SocketAddr),
}

impl Target {
    async fn server(app: Router) -> (Target, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        (Target::Server(addr), task)
    }
}

async fn send(target: &Target, req: Request<Body>) -> (StatusCode, String) {
    let res = match target {
        Target::Oneshot(app) => app.clone().oneshot(req).await.unwrap(),
        Target::Server(addr) => {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let mut req = req;
            req.headers_mut()
                .entry(axum::http::header::HOST)
                .or_insert(HeaderValue::from_static("meshara.test"));
            sender.send_request(req).await.unwrap().map(Body::new)
        }
    };
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn code(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .map(|v| v["error"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn valid_signatures_authenticate_the_caller() {
    let app = Target::Oneshot(app(SignaturePolicy::default()));
    let me = Identity::generate();
    let (status, body) = send(&app, signed(&me, "GET", "/whoami", b"")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, me.node_id().to_string());
    let (status, body) = send(&app, signed(&me, "POST", "/echo", b"payload")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, format!("{}:payload", me.node_id()));
    // Absolute URIs cover @authority too.
    let (status, body) = send(
        &app,
        signed(&me, "GET", "http://example.org/whoami?x=1", b""),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

fn small_body_policy() -> SignaturePolicy {
    SignaturePolicy {
        max_body: 1024,
        ..SignaturePolicy::default()
    }
}

#[tokio::test]
async fn bad_signatures_are_refused_with_reasons() {
    refusals(&Target::Oneshot(app(small_body_policy()))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signatures_are_refused_through_a_real_server() {
    let (target, server) = Target::server(app(small_body_policy())).await;
    // A valid one first: the real server path authenticates too.
    let me = Identity::generate();
    let (status, body) = send(&target, signed(&me, "POST", "/echo", b"over tcp")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, format!("{}:over tcp", me.node_id()));
    refusals(&target).await;
    server.abort();
}

/// Every kind of bad signature, each refused with its status and code.
async fn refusals(app: &Target) {
    let me = Identity::generate();

    let unsigned = Request::get("/whoami").body(Body::empty()).unwrap();
    let (s, b) = send(app, unsigned).await;
    assert_eq!(
        (s, code(&b).as_str()),
        (StatusCode::UNAUTHORIZED, "missing_signature"),
        "{b}"
    );

    // Signature bytes tampered.
    let mut req = signed(&me, "GET", "/whoami", b"");
    let sig = req.headers()["signature"].to_str().unwrap().to_owned();
    let b64 = sig.trim_start_matches("meshara=:").trim_end_matches(':');
    let mut raw = data_encoding::BASE64.decode(b64.as_bytes()).unwrap();
    raw[0] ^= 1;
    let flipped = format!("meshara=:{}:", data_encoding::BASE64.encode(&raw));
    req.headers_mut()
        .insert("signature", HeaderValue::from_str(&flipped).unwrap());
    let (s, b) = send(app, req).await;
    assert_eq!(
        (s, code(&b).as_str()),
        (StatusCode::UNAUTHORIZED, "invalid_signature"),
        "{b}"
    );

    // Signed by one key, claiming another keyid.
    let other = Identity::generate();
    let mut req = signed(&me, "GET", "/whoami", b"");
    let input = req.headers()["signature-input"]
        .to_str()
        .unwrap()
        .replace(&me.node_id().to_string(), &other.node_id().to_string());
    req.headers_mut()
        .insert("signature-input", HeaderValue::from_str(&input).unwrap());
    let (s, b) = send(app, req).await;
    assert_eq!(
        (s, code(&b).as_str()),
        (StatusCode::UNAUTHORIZED, "invalid_signature"),
        "{b}"
    );

    // Query added after signing: not covered.
    let req = signed(&me, "GET", "/whoami", b"");
    let (mut parts, body) = req.into_parts();
    parts.uri = "/whoami?admin=1".parse().unwrap();
    let (s, b) = send(app, Request::from_parts(parts, body)).await;
    assert_eq!(
        (s, code(&b).as_str()),
        (StatusCode::UNAUTHORIZED, "signature_incomplete"),
        "{b}"
    );

    // Expired and from the future.
    let mut req = Request::get("/whoami").body(Body::empty()).unwrap();
    sign_request_with(&me, &mut req, b"", now() - 3600, "n1").unwrap();
    let (s, b) = send(app, req).await;
    assert_eq!(
        (s, code(&b).as_str()),
        (StatusCode::UNAUTHORIZED, "expired_signature"),
        "{b}"
    );
    let mut req = Request::get("/whoami").body(Body::empty()).unwrap();
    sign_request_with(&me, &mut req, b"", now() + 3600, "n2").unwrap();
    let (s, b) = send(app, req).await;
    assert_eq!(
        (s, code(&b).as_str()),
        (StatusCode::UNAUTHORIZED, "future_signature"),
        "{b}"
    );

    // Replayed: the same signed request twice.
    let mut first = Request::get("/whoami").body(Body::empty()).unwrap();
    sign_request_with(&me, &mut first, b"", now(), "once").unwrap();
    let mut again = Request::get("/whoami").body(Body::empty()).unwrap();
    *again.headers_mut() = first.headers().clone();
    let (s, b) = send(app, first).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = send(app, again).await;
    assert_eq!(
        (s, code(&b).as_str()),
        (StatusCode::UNAUTHORIZED, "replayed_signature"),
        "{b}"
    );

    // Body changed after signing.
    let req = signed(&me, "POST", "/echo", b"original");
    let (parts, _) = req.into_parts();
    let (s, b) = send(app, Request::from_parts(parts, Body::from("tampered"))).await;
    assert_eq!(
        (s, code(&b).as_str()),
        (StatusCode::BAD_REQUEST, "digest_mismatch"),
        "{b}"
    );

    // Body beyond the verifier's limit.
    let big = vec![b'x'; 4096];
    let (s, b) = send(app, signed(&me, "POST", "/echo", &big)).await;
    assert_eq!(
        (s, code(&b).as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
        "{b}"
    );

    // Another algorithm.
    let mut req = signed(&me, "GET", "/whoami", b"");
    let input = req.headers()["signature-input"]
        .to_str()
        .unwrap()
        .replace("\"ed25519\"", "\"rsa-pss-sha512\"");
    req.headers_mut()
        .insert("signature-input", HeaderValue::from_str(&input).unwrap());
    let (s, b) = send(app, req).await;
    assert_eq!(
        (s, code(&b).as_str()),
        (StatusCode::BAD_REQUEST, "unsupported_algorithm"),
        "{b}"
    );

    // Garbage headers.
    let mut req = Request::get("/whoami").body(Body::empty()).unwrap();
    req.headers_mut()
        .insert("signature-input", HeaderValue::from_static("sig=(((("));
    req.headers_mut()
        .insert("signature", HeaderValue::from_static("sig=:AAAA:"));
    let (s, b) = send(app, req).await;
    assert_eq!(
        (s, code(&b).as_str()),
        (StatusCode::BAD_REQUEST, "malformed_signature"),
        "{b}"
    );

    // Each message says what is wrong.
    let (_, b) = send(app, Request::get("/whoami").body(Body::empty()).unwrap()).await;
    let v: Value = serde_json::from_str(&b).unwrap();
    assert!(v["message"].as_str().unwrap().contains("RFC 9421"), "{b}");
}

/// The attack on a replay cache that evicts by capacity: capture an honest signed request,
/// flood the verifier with fresh valid signatures (throwaway keys cost nothing) until the
/// captured nonce would be evicted, then replay it. A live nonce is never forgotten: the flood
/// is refused with 503 `replay_cache_full` instead, the replay with 401, and honest callers
/// are served again once the flood's nonces expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flooding_the_replay_cache_does_not_enable_replays() {
    let policy = SignaturePolicy {
        max_clock_skew: std::time::Duration::ZERO,
        max_age: std::time::Duration::from_secs(3),
        replay_capacity: 20,
        ..SignaturePolicy::default()
    };
    let (target, server) = Target::server(app(policy)).await;
    let alice = Identity::generate();
    // Alice's request, as the attacker captured it on the wire.
    let captured = signed(&alice, "GET", "/whoami", b"");
    let capture = |req: &Request<Body>| {
        let mut copy = Request::get("/whoami").body(Body::empty()).unwrap();
        *copy.headers_mut() = req.headers().clone();
        copy
    };
    let replay = capture(&captured);
    let (status, body) = send(&target, captured).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The flood: many more fresh signatures than the cache holds.
    let mut refused = 0;
    for _ in 0..60 {
        let (status, body) = send(
            &target,
            signed(&Identity::generate(), "GET", "/whoami", b""),
        )
        .await;
        match status {
            StatusCode::OK => {}
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(code(&body), "replay_cache_full", "{body}");
                refused += 1;
            }
            other => panic!("{other}: {body}"),
        }
    }
    assert!(refused >= 40, "only {refused} flood requests refused");
    // The replay is still recognized.
    let (status, body) = send(&target, capture(&replay)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(code(&body), "replayed_signature");

    // Once the window has passed, the captured request is too old, and honest callers are
    // served again.
    tokio::time::sleep(std::time::Duration::from_millis(4100)).await;
    let (status, body) = send(&target, capture(&replay)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(code(&body), "expired_signature");
    let (status, body) = send(&target, signed(&alice, "GET", "/whoami", b"")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, alice.node_id().to_string());
    server.abort();
}

/// A signer whose headers verify trickles its body to hold the verifier: refused with 408
/// `body_timeout` once the policy's body timeout runs out; an honest signer is served
/// meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_signed_body_times_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let policy = SignaturePolicy {
        body_timeout: std::time::Duration::from_secs(1),
        ..SignaturePolicy::default()
    };
    let (target, server) = Target::server(app(policy)).await;
    let Target::Server(addr) = target.clone() else {
        unreachable!()
    };
    let slow = Identity::generate();
    let body = vec![b'x'; 100];
    let req = signed(&slow, "POST", "/echo", &body);
    let mut head =
        String::from("POST /echo HTTP/1.1\r\nhost: meshara.test\r\ncontent-length: 100\r\n");
    for (name, value) in req.headers() {
        head.push_str(&format!("{name}: {}\r\n", value.to_str().unwrap()));
    }
    head.push_str("\r\n");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&body[..10]).await.unwrap();

    let me = Identity::generate();
    let (status, answer) = send(&target, signed(&me, "POST", "/echo", b"quick")).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer, format!("{}:quick", me.node_id()));

    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            let n = tcp.read(&mut buf).await.unwrap_or(0);
            answer.extend_from_slice(&buf[..n]);
            if n == 0 || String::from_utf8_lossy(&answer).contains("body_timeout") {
                break;
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&answer);
    assert!(read.is_ok(), "still waiting for the body: {text:?}");
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("body_timeout"), "{text}");
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    server.abort();
}
