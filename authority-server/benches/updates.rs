//! Update checks per second: over HTTP beside a bare axum handler answering the same JSON,
//! and over Meshara (metadata requests on the update stream).
//!
//! `cargo bench -p meshara-authority --bench updates`; `UPDATES_BENCH_QUICK=1` for a short run
//! (2 s per phase instead of 8).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    missing_docs
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::routing::get;
use http_body_util::BodyExt;
use hyper::{Request, header};
use meshara_authority::Authority;
use meshara_authority::config::Config;
use meshara_core::updater::Updater;
use meshara_core::{Identity, Node, NodeId};
use serde_json::json;

const PASS: &[u8] = b"bench";

async fn http_rate(addr: SocketAddr, path: &'static str, conns: usize, secs: f64) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            while Instant::now() < deadline {
                let req = Request::get(path)
                    .header(header::HOST, "bench")
                    .body(Body::empty())
                    .unwrap();
                let res = sender.send_request(req).await.unwrap();
                assert!(res.status().is_success());
                res.into_body().collect().await.unwrap();
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let start = Instant::now();
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Vec<u8>>,
    json_body: Option<serde_json::Value>,
) -> serde_json::Value {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "bench")
        .header(header::AUTHORIZATION, format!("Bearer {token}"));
    let req = match (body, json_body) {
        (Some(b), _) => req.body(Body::from(b)).unwrap(),
        (_, Some(j)) => req
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(j.to_string()))
            .unwrap(),
        _ => req.body(Body::empty()).unwrap(),
    };
    let res = sender.send_request(req).await.unwrap();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null)
}

/// Uploads, drafts, signs with k1 and k2, publishes. Returns when published.
async fn publish(addr: SocketAddr, token: &str, semver: &str, content: Vec<u8>) {
    let pkg = call(
        addr,
        "PUT",
        "/api/v1/packages?name=bench",
        token,
        Some(content),
        None,
    )
    .await;
    let r = call(
        addr,
        "POST",
        "/api/v1/releases",
        token,
        None,
        Some(json!({
            "package": "app", "channel": "stable", "semver": semver, "content_hash": pkg["hash"],
        })),
    )
    .await;
    let id = r["id"].as_i64().unwrap();
    for k in ["k1", "k2"] {
        call(
            addr,
            "POST",
            &format!("/api/v1/releases/{id}/sign"),
            token,
            None,
            Some(json!({"key": k})),
        )
        .await;
    }
    let p = call(
        addr,
        "POST",
        &format!("/api/v1/releases/{id}/publish"),
        token,
        None,
        Some(json!({})),
    )
    .await;
    assert_eq!(p["status"], "published", "{p}");
}

async fn nodes_near(authority: &Node, n: usize) -> Vec<Node> {
    let mut nodes = Vec::new();
    for _ in 0..n {
        nodes.push(
            Node::builder()
                .identity(Identity::generate())
                .listen_quic("127.0.0.1:0".parse().unwrap())
                .bootstrap(authority.quic_addr().unwrap())
                .start()
                .await
                .unwrap(),
        );
    }
    let t = Instant::now();
    let me = authority.node_id();
    while nodes
        .iter()
        .any(|x| !x.peers().iter().any(|p| p.node_id == me))
        && t.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    nodes
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = std::env::var("UPDATES_BENCH_QUICK").is_ok();
    let secs = if quick { 2.0 } else { 8.0 };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    meshara_authority::keys::init(&data, 3, 2, PASS, 30).unwrap();
    let mut config = Config::with_data_dir(&data);
    config.http_listen = "127.0.0.1:0".parse().unwrap();
    config.node.quic_listen = "127.0.0.1:0".parse().unwrap();
    let a = Authority::start(config, PASS).await.unwrap();
    let addr = a.http_addr();
    let token = std::fs::read_to_string(data.join("admin.token")).unwrap();
    publish(addr, &token, "1.0.0", vec![7; 100_000]).await;

    // A bare axum handler answering the same JSON from memory, same process, same client.
    let answer = call(addr, "GET", "/v1/updates/app/stable", &token, None, None).await;
    let bare = axum::Router::new().route(
        "/v1/updates/app/stable",
        get(move || {
            let a = answer.clone();
            async move { axum::Json(a) }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bare_addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, bare).await.unwrap() });

    println!(
        "# meshara-authority update benchmarks ({} mode)",
        if quick { "quick" } else { "full" }
    );
    let conns = 32;
    let bare_rate = http_rate(bare_addr, "/v1/updates/app/stable", conns, secs).await;
    let http = http_rate(addr, "/v1/updates/app/stable", conns, secs).await;
    println!(
        "update check over HTTP, {conns} keep-alive connections: {http:.0} req/s (bare axum handler, same JSON: {bare_rate:.0} req/s)"
    );

    // Over Meshara: nodes asking the authority node for the newest release metadata.
    let askers = nodes_near(a.node(), 4).await;
    let root = meshara_authority::keys::read_root(&data.join("root.pb")).unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    let authority: NodeId = a.node().node_id();
    let mut keep = Vec::new();
    for node in &askers {
        let d = tempfile::tempdir().unwrap();
        let u = Updater::builder(node.clone(), d.path(), root.clone())
            .start()
            .unwrap();
        keep.push(d);
        for _ in 0..8 {
            let (u, count) = (u.clone(), count.clone());
            tasks.push(tokio::spawn(async move {
                while Instant::now() < deadline {
                    u.check_with(authority, "app", "stable").await.unwrap();
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
    }
    let start = Instant::now();
    for t in tasks {
        t.await.unwrap();
    }
    let meshara_rate = count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    println!(
        "update check over Meshara (4 nodes x 8 concurrent, one stream per check): {meshara_rate:.0} checks/s"
    );
    for n in askers {
        n.stop().await;
    }

    a.stop().await;
}
