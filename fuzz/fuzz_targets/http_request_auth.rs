//! meshara-axum's parsers of untrusted HTTP input: RFC 9421 `Signature-Input` / `Signature` /
//! `Content-Digest` headers through `VerifySignaturesLayer` and the `VerifiedPeer` extractor,
//! `Accept` negotiation, and protobuf bodies through the `Protobuf` extractor. Must hold: no
//! panic, nothing the fuzzer made authenticates (it cannot forge Ed25519), and every refusal
//! is a 4xx answer.
#![no_main]

use std::sync::OnceLock;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Request, StatusCode};
use axum::routing::post;
use libfuzzer_sys::fuzz_target;
use meshara_axum::proto::SendRequest;
use meshara_axum::{Format, Protobuf, VerifiedPeer, VerifySignaturesLayer};
use tower::ServiceExt;

async fn whoami(VerifiedPeer(peer): VerifiedPeer) -> String {
    peer.to_string()
}

async fn decode(format: Format, Protobuf(req): Protobuf<SendRequest>) -> String {
    format!("{format:?} {}", req.to.len())
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    })
}

fn app() -> Router {
    Router::new()
        .route("/whoami", post(whoami))
        .route("/decode", post(decode))
        .layer(VerifySignaturesLayer::default())
}

fuzz_target!(|data: &[u8]| {
    // Input layout: four header values and a body, separated by 0xff bytes.
    let mut parts = data.split(|b| *b == 0xff);
    let input = parts.next().unwrap_or_default();
    let signature = parts.next().unwrap_or_default();
    let digest = parts.next().unwrap_or_default();
    let accept = parts.next().unwrap_or_default();
    let body: Vec<u8> = parts.flatten().copied().collect();
    for path in ["/whoami", "/decode"] {
        let mut req = Request::post(path)
            .header("content-type", "application/x-protobuf")
            .body(Body::from(body.clone()))
            .expect("request");
        let headers = req.headers_mut();
        for (name, value) in [
            ("signature-input", input),
            ("signature", signature),
            ("content-digest", digest),
            ("accept", accept),
        ] {
            if let Ok(value) = HeaderValue::from_bytes(value) {
                headers.insert(name, value);
            }
        }
        let status = runtime().block_on(async {
            app().oneshot(req).await.expect("infallible").status()
        });
        if path == "/whoami" {
            assert_ne!(status, StatusCode::OK, "a fuzzed signature authenticated");
        }
        assert!(
            status == StatusCode::OK || status.is_client_error(),
            "{path}: {status}"
        );
    }
});
