//! A small notes app: an ordinary axum web app that mounts the Meshara routes next to its own,
//! and serves part of itself to Meshara peers, who are identified by their NodeId.
//!
//! ```text
//! # terminal 1: a node with a web UI on :8080
//! cargo run -p meshara-axum --example notes -- --http 127.0.0.1:8080 --quic 127.0.0.1:7001
//! # terminal 2: another node that dials the first, then reads and writes its notes over Meshara
//! cargo run -p meshara-axum --example notes -- --http 127.0.0.1:8081 \
//!     --peer <nodeid>@quic://127.0.0.1:7001 --call <nodeid>
//! curl localhost:8080/notes                  # the app's own route
//! # the mounted Meshara routes need the token printed at startup (or MESHARA_API_TOKEN)
//! curl -H "Authorization: Bearer $TOKEN" localhost:8080/meshara/status
//! curl -H "Authorization: Bearer $TOKEN" localhost:8080/meshara/openapi.json
//! ```
//!
//! Secure by default: the Meshara routes require a bearer token and refuse foreign `Host`
//! and `Origin` headers (DNS rebinding, cross-site WebSockets); every HTTP caller is rate
//! limited by address; answers carry `nosniff`; `serve_tcp` drops clients that do not send
//! a request head within 10 s and caps connections.

// A command-line program: printing what to open is its user interface.
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use axum::body::Body;
use axum::extract::{FromRef, State};
use axum::http::Request;
use axum::routing::get;
use axum::{Json, Router};
use http_body_util::BodyExt;
use meshara_axum::{
    Access, AllowListLayer, HttpMetrics, MesharaClient, RateLimitLayer, ServeOptions, VerifiedPeer,
};
use meshara_core::{Identity, Node, NodeBuilder, NodeId, PeerAddr};
use serde::{Deserialize, Serialize};

/// The app's state; the Meshara routes find the node in it through `FromRef`.
#[derive(Clone)]
struct AppState {
    node: Node,
    notes: Arc<Mutex<Vec<Note>>>,
}

impl FromRef<AppState> for Node {
    fn from_ref(state: &AppState) -> Node {
        state.node.clone()
    }
}

#[derive(Clone, Serialize, Deserialize)]
struct Note {
    /// Who wrote it: "local", or the NodeId of the peer that did.
    author: String,
    text: String,
}

#[derive(Deserialize)]
struct NewNote {
    text: String,
}

async fn list_notes(State(state): State<AppState>) -> Json<Vec<Note>> {
    Json(lock(&state.notes).clone())
}

async fn add_local_note(State(state): State<AppState>, Json(new): Json<NewNote>) -> Json<Note> {
    add(&state, "local".into(), new.text)
}

/// Served only over Meshara: the author is the NodeId the caller proved in its handshake.
async fn add_peer_note(
    State(state): State<AppState>,
    VerifiedPeer(peer): VerifiedPeer,
    Json(new): Json<NewNote>,
) -> Json<Note> {
    add(&state, peer.to_string(), new.text)
}

fn add(state: &AppState, author: String, text: String) -> Json<Note> {
    let note = Note { author, text };
    lock(&state.notes).push(note.clone());
    Json(note)
}

fn lock(notes: &Mutex<Vec<Note>>) -> std::sync::MutexGuard<'_, Vec<Note>> {
    notes
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct Args {
    http: SocketAddr,
    quic: SocketAddr,
    peers: Vec<PeerAddr>,
    allow: Vec<NodeId>,
    call: Option<NodeId>,
}

fn args() -> anyhow::Result<Args> {
    let mut args = Args {
        http: "127.0.0.1:8080".parse()?,
        quic: "127.0.0.1:0".parse()?,
        peers: Vec::new(),
        allow: Vec::new(),
        call: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--http" => args.http = value.parse().context("--http")?,
            "--quic" => args.quic = value.parse().context("--quic")?,
            "--peer" => args.peers.push(value.parse().context("--peer")?),
            "--allow" => args.allow.push(value.parse().context("--allow")?),
            "--call" => args.call = Some(value.parse().context("--call")?),
            other => bail!(
                "unknown flag {other}; flags: --http ADDR --quic ADDR --peer PEERADDR \
                 --allow NODEID --call NODEID"
            ),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = args()?;
    let mut builder = NodeBuilder::new()
        .identity(Identity::generate())
        .listen_quic(args.quic);
    for peer in &args.peers {
        builder = builder.bootstrap(peer.clone());
    }
    let node = builder.start().await?;
    let quic = node.quic_addr().context("no QUIC address")?;
    println!("node {}; peers dial it as {quic}", node.node_id());
    let state = AppState {
        node: node.clone(),
        notes: Arc::default(),
    };

    // 1. The web app: its own routes, the Meshara routes under /meshara (bearer token), request
    //    metrics, 20 requests per second per address (bursts of 40).
    let token = match std::env::var("MESHARA_API_TOKEN") {
        Ok(token) if !token.is_empty() => token,
        _ => {
            let token = Access::random_token();
            println!("Meshara API token (send `Authorization: Bearer <token>`): {token}");
            token
        }
    };
    let metrics = HttpMetrics::new();
    let web = Router::new()
        .route("/notes", get(list_notes).post(add_local_note))
        .nest("/meshara", meshara_axum::routes(Access::bearer(token)))
        .route_layer(metrics.layer())
        .route(
            "/metrics/http",
            get(move |headers: axum::http::HeaderMap| async move { metrics.response(&headers) }),
        )
        .with_state(state.clone())
        .layer(axum::middleware::from_fn(meshara_axum::security_headers))
        .layer(RateLimitLayer::new(20.0, 40));

    // 2. The part served to Meshara peers: who wrote a note is their NodeId. Each peer may
    //    make 5 requests per second (bursts of 10); with --allow, only the listed peers may.
    let mut for_peers = Router::new()
        .route("/notes", get(list_notes).post(add_peer_note))
        .with_state(state)
        .layer(RateLimitLayer::new(5.0, 10));
    if !args.allow.is_empty() {
        for_peers = for_peers.layer(AllowListLayer::new(args.allow.iter().copied()));
    }
    tokio::spawn(meshara_axum::serve(node.clone(), for_peers));

    let listener = tokio::net::TcpListener::bind(args.http).await?;
    println!("web app on http://{}/notes", listener.local_addr()?);
    println!(
        "Meshara API on http://{}/meshara/status",
        listener.local_addr()?
    );

    if let Some(peer) = args.call {
        call_peer(&node, peer).await?;
    }

    // serve_tcp rather than axum::serve: clients must send a request head within 10 s,
    // at most 512 connections (64 per address) are served, and handlers and the rate limit
    // see each caller's address.
    tokio::select! {
        served = meshara_axum::serve_tcp(listener, web, ServeOptions::default()) => served?,
        _ = tokio::signal::ctrl_c() => {}
    }
    node.stop().await;
    Ok(())
}

/// Writes a note on `peer` and reads its notes back, over Meshara.
async fn call_peer(node: &Node, peer: NodeId) -> anyhow::Result<()> {
    let client = MesharaClient::new(node.clone());
    let post = Request::post("/notes")
        .header("content-type", "application/json")
        .body(Body::from(r#"{"text":"hello over Meshara"}"#))?;
    let res = client.request(peer, post).await?;
    println!("POST /notes on {peer}: {}", res.status());
    let res = client
        .request(peer, Request::get("/notes").body(Body::empty())?)
        .await?;
    let status = res.status();
    let body = res.into_body().collect().await?.to_bytes();
    println!(
        "GET /notes on {peer}: {status} {}",
        String::from_utf8_lossy(&body)
    );
    Ok(())
}
