//! RFC 9421 interoperability with an implementation Meshara did not write: the
//! `http-message-signatures` library from PyPI signs requests that meshara-axum verifies, with
//! its defaults (`@method @authority @target-uri`), without and with a nonce, with `sha-256`
//! and `sha-512` digests and beside another signature; and it verifies what `sign_request`
//! signs. The cases and what each must give are in `tests/interop/rfc9421.py`.
//!
//! Needs a Python with that library: `MESHARA_INTEROP_PYTHON` names it (the test command sets
//! it up). Without it the tests say so and pass, unless `MESHARA_REQUIRE_INTEROP` is set, as in
//! the test command, where they fail.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    missing_docs
)]

use std::path::PathBuf;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::routing::{get, post};
use meshara_axum::{SignaturePolicy, VerifiedPeer, VerifySignaturesLayer, sign_request};
use meshara_core::Identity;
use serde_json::json;

fn python() -> Option<String> {
    match std::env::var("MESHARA_INTEROP_PYTHON") {
        Ok(p) => Some(p),
        Err(_) => {
            assert!(
                std::env::var("MESHARA_REQUIRE_INTEROP").is_err(),
                "MESHARA_REQUIRE_INTEROP is set but MESHARA_INTEROP_PYTHON is not"
            );
            eprintln!(
                "skipped: set MESHARA_INTEROP_PYTHON to a Python with http-message-signatures"
            );
            None
        }
    }
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/rfc9421.py")
}

async fn whoami(VerifiedPeer(peer): VerifiedPeer) -> String {
    peer.to_string()
}

async fn echo(VerifiedPeer(peer): VerifiedPeer, body: String) -> String {
    format!("{peer}:{body}")
}

fn report(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_independent_library_signs_and_meshara_verifies() {
    let Some(python) = python() else { return };
    let mut seed = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut seed);
    let identity = Identity::from_ed25519_seed(&seed);
    let app = Router::new()
        .route("/whoami", get(whoami))
        .route("/echo", post(echo))
        .layer(VerifySignaturesLayer::new(SignaturePolicy::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let out = tokio::process::Command::new(python)
        .arg(script())
        .args(["sign", &url, &data_encoding::HEXLOWER.encode(&seed)])
        .arg(identity.node_id().to_string())
        .output()
        .await
        .unwrap();
    let report = report(&out);
    eprintln!("{report}");
    assert!(out.status.success(), "{report}");
    assert!(report.contains("ok sign/defaults:"), "{report}");
    server.abort();
}

#[tokio::test]
async fn meshara_signs_and_an_independent_library_verifies() {
    let Some(python) = python() else { return };
    let me = Identity::generate();
    let someone_else = Identity::generate();
    let mut cases = Vec::new();
    for (name, method, uri, body, claimed, valid, tamper) in [
        (
            "get",
            "GET",
            "http://127.0.0.1:8600/whoami",
            "",
            &me,
            true,
            false,
        ),
        (
            "get with a query",
            "GET",
            "http://meshara.test/v1/items?page=2&q=a%20b",
            "",
            &me,
            true,
            false,
        ),
        (
            "post with a body",
            "POST",
            "http://meshara.test/echo",
            "hello",
            &me,
            true,
            false,
        ),
        (
            "body changed after signing",
            "POST",
            "http://meshara.test/echo",
            "hello",
            &me,
            false,
            true,
        ),
        (
            "checked against another key",
            "GET",
            "http://meshara.test/whoami",
            "",
            &someone_else,
            false,
            false,
        ),
    ] {
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .unwrap();
        sign_request(&me, &mut request, body.as_bytes()).unwrap();
        let headers: serde_json::Map<String, serde_json::Value> = request
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap())))
            .collect();
        let sent = if tamper {
            body.to_uppercase()
        } else {
            body.to_owned()
        };
        cases.push(json!({
            "name": name,
            "method": method,
            "url": uri,
            "headers": headers,
            "body": data_encoding::BASE64.encode(sent.as_bytes()),
            "node_id": claimed.node_id().to_string(),
            "valid": valid,
        }));
    }
    let mut child = tokio::process::Command::new(python)
        .arg(script())
        .arg("verify")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let input = serde_json::to_vec(&cases).unwrap();
    let mut stdin = child.stdin.take().unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stdin, &input)
        .await
        .unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    let report = report(&out);
    eprintln!("{report}");
    assert!(out.status.success(), "{report}");
    assert_eq!(
        report.matches("ok verify/").count(),
        cases.len(),
        "{report}"
    );
}
