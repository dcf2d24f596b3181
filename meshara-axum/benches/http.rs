//! meshara-axum benchmarks, each beside its baseline in the same run:
//!
//! 1. `POST /meshara/messages` (wait for the end-to-end ack) under load from concurrent
//!    keep-alive HTTP/1.1 connections, beside a bare axum handler that parses and answers the
//!    same JSON.
//! 2. A small request's round trip over Meshara ([`MesharaClient`] → [`meshara_axum::serve`]),
//!    beside raw quinn request/response on a stream of a connection with the same TLS.
//!
//! `cargo bench -p meshara-axum --bench http` (`HTTP_BENCH_QUICK=1` for a short run).
//! Prints markdown; docs/benchmarks.md records the results.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    clippy::print_stdout
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::FromRef;
use axum::http::{Request, header};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::BodyExt;
use meshara_axum::{MesharaClient, SendRequest, SendResponse};
use meshara_core::net::transport;
use meshara_core::net::{Limits, Timeouts};
use meshara_core::{Identity, Node, NodeBuilder};

fn quick() -> bool {
    std::env::var_os("HTTP_BENCH_QUICK").is_some()
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort_unstable();
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[i]
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

async fn node() -> Node {
    NodeBuilder::new()
        .identity(Identity::generate())
        .listen_quic("127.0.0.1:0".parse().unwrap())
        .limits(Limits {
            max_outbox: 1 << 16,
            ..Limits::default()
        })
        .timeouts(Timeouts {
            ack: Duration::from_secs(30),
            ..Timeouts::default()
        })
        .start()
        .await
        .unwrap()
}

#[derive(Clone)]
struct AppState {
    node: Node,
}

impl FromRef<AppState> for Node {
    fn from_ref(s: &AppState) -> Node {
        s.node.clone()
    }
}

/// The baseline: the same JSON in and out, no node behind it.
async fn bare(Json(req): Json<SendRequest>) -> Json<SendResponse> {
    Json(SendResponse {
        id: format!("{:064x}", req.to.len()),
        delivered: true,
        latency_ms: Some(0.0),
    })
}

struct Load {
    ok: usize,
    errors: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

/// `conns` keep-alive connections, each sending `body` to `path` back to back for `duration`.
async fn load(
    addr: SocketAddr,
    path: &str,
    body: String,
    conns: usize,
    duration: Duration,
) -> Load {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + duration;
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let path = path.to_owned();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            tcp.set_nodelay(true).unwrap();
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let mut latencies = Vec::new();
            let mut errors = 0;
            while tokio::time::Instant::now() < deadline {
                let req = Request::post(path.as_str())
                    .header(header::HOST, "127.0.0.1")
                    .header(header::AUTHORIZATION, format!("Bearer {BENCH_TOKEN}"))
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from(body.clone()))
                    .unwrap();
                let t = Instant::now();
                let res = sender.send_request(req).await.unwrap();
                let ok = res.status().is_success();
                res.into_body().collect().await.unwrap();
                if ok {
                    latencies.push(t.elapsed());
                } else {
                    errors += 1;
                }
            }
            (latencies, errors)
        }));
    }
    let mut all = Load {
        ok: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
    };
    for t in tasks {
        let (latencies, errors) = t.await.unwrap();
        all.ok += latencies.len();
        all.errors += errors;
        all.latencies.extend(latencies);
    }
    all.elapsed = started.elapsed();
    all
}

/// The bearer token the benchmarked routes require.
const BENCH_TOKEN: &str = "bench-token-7d865e959b2466918c9863afca942d0f";

async fn http_load() {
    let a = node().await;
    let b = node().await;
    a.connect(&b.quic_addr().unwrap()).await.unwrap();
    a.send_private(b.node_id(), "", "warm")
        .await
        .unwrap()
        .confirmed()
        .await
        .unwrap();
    let app = Router::new()
        .route("/bare", post(bare))
        .nest(
            "/meshara",
            meshara_axum::routes(meshara_axum::Access::bearer(BENCH_TOKEN)),
        )
        .with_state(AppState { node: a.clone() });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(axum::serve(listener, app).into_future());
    let body =
        serde_json::json!({"to": b.node_id().to_string(), "content": "x".repeat(100)}).to_string();
    let duration = if quick() {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(5)
    };
    let conns = 32;
    println!(
        "\n### HTTP load: {conns} keep-alive connections, {} s each, 100-byte message\n",
        duration.as_secs()
    );
    println!("| route | requests/s | p50 | p99 | non-2xx |");
    println!("|---|---|---|---|---|");
    for (name, path) in [
        ("bare axum handler (same JSON in/out)", "/bare"),
        ("POST /meshara/messages (wait for ack)", "/meshara/messages"),
    ] {
        let mut r = load(addr, path, body.clone(), conns, duration).await;
        let rps = r.ok as f64 / r.elapsed.as_secs_f64();
        println!(
            "| {name} | {rps:.0} | {} | {} | {} |",
            us(percentile(&mut r.latencies, 0.5)),
            us(percentile(&mut r.latencies, 0.99)),
            r.errors
        );
    }
    server.abort();
    a.stop().await;
    b.stop().await;
}

async fn pong() -> &'static str {
    "pong"
}

async fn round_trips() {
    let samples = if quick() { 300 } else { 3000 };
    println!("\n### Small request round trip ({samples} sequential requests)\n");
    println!("| path | p50 | p99 | mean |");
    println!("|---|---|---|---|");

    // Over Meshara: one stream and one HTTP/1.1 exchange per request.
    let server = node().await;
    let client_node = node().await;
    client_node
        .connect(&server.quic_addr().unwrap())
        .await
        .unwrap();
    tokio::spawn(meshara_axum::serve(
        server.clone(),
        Router::new().route("/ping", get(pong)),
    ));
    let client = MesharaClient::new(client_node.clone());
    let mut times = Vec::with_capacity(samples);
    for i in 0..samples + 50 {
        let t = Instant::now();
        let res = client
            .request(
                server.node_id(),
                Request::get("/ping").body(Body::empty()).unwrap(),
            )
            .await
            .unwrap();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"pong");
        if i >= 50 {
            times.push(t.elapsed());
        }
    }
    report("GET /ping over Meshara (MesharaClient → serve)", &mut times);
    client_node.stop().await;
    server.stop().await;

    // Raw quinn with the same TLS: a stream per request, request and answer bytes only.
    let server_id = Arc::new(Identity::generate());
    let config = Arc::new(quinn::TransportConfig::default());
    let server_config = transport::quic_server_config(&server_id, config.clone()).unwrap();
    let endpoint = quinn::Endpoint::server(server_config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let accept = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accept.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        if recv.read_to_end(1024).await.is_ok() {
                            let _ = send.write_all(b"pong").await;
                            let _ = send.finish();
                        }
                    });
                }
            });
        }
    });
    let client_endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let conn = transport::connect_quic(
        &client_endpoint,
        &Arc::new(Identity::generate()),
        addr,
        Some(server_id.node_id()),
        config,
    )
    .await
    .unwrap();
    let conn = conn.quinn().clone();
    let mut times = Vec::with_capacity(samples);
    for i in 0..samples + 50 {
        let t = Instant::now();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(b"GET /ping").await.unwrap();
        send.finish().unwrap();
        let answer = recv.read_to_end(1024).await.unwrap();
        assert_eq!(answer, b"pong");
        if i >= 50 {
            times.push(t.elapsed());
        }
    }
    report("raw quinn request/response (same TLS)", &mut times);
    conn.close(0u32.into(), b"done");
    endpoint.close(0u32.into(), b"done");
}

fn report(name: &str, times: &mut [Duration]) {
    let mean = times.iter().sum::<Duration>() / times.len() as u32;
    println!(
        "| {name} | {} | {} | {} |",
        us(percentile(times, 0.5)),
        us(percentile(times, 0.99)),
        us(mean)
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        http_load().await;
        round_trips().await;
    });
}
