//! The OpenAPI document of `routes()` against the routes themselves, checked by schemathesis
//! (a property-based API tester from PyPI that Meshara did not write): every operation, every
//! check (documented statuses, content types and bodies, schema-valid requests accepted,
//! schema-violating ones refused, authentication not ignored), with a fixed seed so that runs
//! repeat. The routes are mounted in an app served on loopback by `serve_tcp`, on a node in a
//! small network of real nodes (four relays, so that onion-routed requests are servable), as
//! an application would run them.
//!
//! Needs schemathesis: `MESHARA_SCHEMATHESIS` names its `st` program (the test command sets it
//! up). Without it the test says so and passes, unless `MESHARA_REQUIRE_CONTRACTS` is set, as
//! in the test command, where it fails.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    missing_docs
)]

use std::time::Duration;

use axum::Router;
use axum::extract::FromRef;
use meshara_axum::{Access, ServeOptions};
use meshara_core::{Capability, Identity, Node, NodeBuilder};

#[derive(Clone)]
struct AppState {
    node: Node,
}

impl FromRef<AppState> for Node {
    fn from_ref(s: &AppState) -> Node {
        s.node.clone()
    }
}

fn schemathesis() -> Option<String> {
    match std::env::var("MESHARA_SCHEMATHESIS") {
        Ok(st) => Some(st),
        Err(_) => {
            assert!(
                std::env::var("MESHARA_REQUIRE_CONTRACTS").is_err(),
                "MESHARA_REQUIRE_CONTRACTS is set but MESHARA_SCHEMATHESIS is not"
            );
            eprintln!("skipped: set MESHARA_SCHEMATHESIS to schemathesis's `st` program");
            None
        }
    }
}

async fn node(relay: bool) -> Node {
    let mut builder = NodeBuilder::new()
        .identity(Identity::generate())
        .listen_quic("127.0.0.1:0".parse().unwrap());
    if relay {
        builder = builder.capability(Capability::Relay);
    }
    builder.start().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_the_routes_keep_their_openapi_document() {
    let Some(st) = schemathesis() else { return };
    let served = node(false).await;
    let mut relays = Vec::new();
    for _ in 0..4 {
        let relay = node(true).await;
        relay.connect(&served.quic_addr().unwrap()).await.unwrap();
        relays.push(relay);
    }
    // Onion routing needs three relays' records; they arrive by peer exchange.
    tokio::time::timeout(Duration::from_secs(30), async {
        while relays
            .iter()
            .filter(|r| served.record_of(&r.node_id()).is_some())
            .count()
            < 3
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the served node learns the relays' records");

    let token = Access::random_token();
    let app = Router::new()
        .nest("/meshara", meshara_axum::routes(Access::bearer(&token)))
        .with_state(AppState {
            node: served.clone(),
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/meshara", listener.local_addr().unwrap());
    let server = tokio::spawn(meshara_axum::serve_tcp(
        listener,
        app,
        ServeOptions::default(),
    ));
    let reports = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(st)
        .current_dir(reports.path())
        .arg("run")
        .arg(format!("{base}/openapi.json"))
        .args(["--url", &base])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--checks", "all", "--max-examples", "25", "--seed", "7"])
        .args(["--request-timeout", "30", "--no-color"])
        // A WebSocket conversation is beyond what OpenAPI describes (and an upgraded
        // connection never ends for an HTTP client); tests/routes.rs drives /events/ws.
        .args(["--exclude-path", "/events/ws"])
        .output()
        .await
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{report}");
    assert!(out.status.success(), "schemathesis found mismatches");
    // Every operation was tested, not skipped for a schema it could not read.
    // Every operation but the document's own (which schemathesis leaves out) and the
    // WebSocket.
    let selected = format!(
        "{} selected / {} total",
        meshara_axum::ROUTES.len() - 2,
        meshara_axum::ROUTES.len() - 1
    );
    assert!(report.contains(&selected), "{selected}: {report}");
    server.abort();
    for n in relays.iter().chain([&served]) {
        n.stop().await;
    }
}
