//! The crawler against a real network: 100 nodes on loopback (four per 127.0.0.x), one of
//! which asked not to be listed. Every listed node is found from one bootstrap, its edges are
//! its routing table, a stopped node is shown down by the next crawl and up again after a
//! restart, and the API shows the same. On SQLite and on a real PostgreSQL.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    missing_docs
)]

mod common;

use std::collections::HashSet;

use common::{Backend, Network, explorer, get};
use meshara_core::NodeId;

const NODES: usize = 100;
const UNLISTED: usize = 7;
const STOPPED: usize = 42;

async fn crawl_a_network(backend: Backend, base: usize) {
    let t = std::time::Instant::now();
    let mut net = Network::start_in(base, NODES, &[UNLISTED]).await;
    eprintln!(
        "{backend:?}: network of {NODES} up and settled in {:?}",
        t.elapsed()
    );
    let Some(h) = explorer(backend, &[net.bootstrap().to_string()], |_| {}).await else {
        return;
    };
    let me = h.explorer.node().node_id();
    let crawl = h.explorer.crawl_now().await.unwrap();
    eprintln!("{backend:?}: crawled in {:?} ({crawl:?})", t.elapsed());
    let unlisted = net.identities[UNLISTED].node_id().to_string();

    // Every node but the unlisted one is listed, and only those.
    let rows = h.explorer.db().all_nodes().await.unwrap();
    let listed: HashSet<String> = rows.iter().map(|r| r.id.clone()).collect();
    let expected: HashSet<String> = (0..NODES)
        .filter(|i| *i != UNLISTED)
        .map(|i| net.identities[i].node_id().to_string())
        .collect();
    assert_eq!(listed, expected, "crawl {crawl:?}");
    let down: Vec<_> = rows
        .iter()
        .filter(|r| !r.up)
        .map(|r| r.probes.clone())
        .collect();
    assert!(down.is_empty(), "{down:#?}");
    assert!(crawl.reached >= (NODES - 1) as i64, "{crawl:?}");

    // Edges are routing tables, without the explorer itself and without the unlisted node.
    let mut mismatches = Vec::new();
    for (i, node) in net.nodes.iter().enumerate() {
        let Some(node) = node else { continue };
        if i == UNLISTED {
            continue;
        }
        let table: HashSet<String> = node
            .routing_table()
            .into_iter()
            .filter(|id| *id != me)
            .map(|id| id.to_string())
            .filter(|id| *id != unlisted)
            .collect();
        let row = rows
            .iter()
            .find(|r| r.id == node.node_id().to_string())
            .unwrap();
        let edges: HashSet<String> = serde_json::from_str::<Vec<String>>(&row.neighbours)
            .unwrap()
            .into_iter()
            .collect();
        assert!(
            !edges.contains(&unlisted),
            "an edge to the unlisted node was kept"
        );
        if edges != table {
            mismatches.push(format!(
                "node {i}: {} in table, {} found, {} missing, {} extra",
                table.len(),
                edges.len(),
                table.difference(&edges).count(),
                edges.difference(&table).count()
            ));
        }
    }
    assert!(mismatches.is_empty(), "{mismatches:#?}");

    // The API agrees.
    let overview = get(h.addr, "/api/v1/overview").await;
    assert_eq!(overview["network"]["listed"], (NODES - 1) as u64);
    assert_eq!(overview["network"]["up"], (NODES - 1) as u64);
    let (status, _) = common::call(h.addr, "GET", &format!("/api/v1/nodes/{unlisted}"), None).await;
    assert_eq!(status, 404, "the unlisted node is not shown");
    let graph = get(h.addr, "/api/v1/graph").await;
    assert_eq!(graph["nodes"].as_array().unwrap().len(), NODES - 1);
    assert!(graph["edges"].as_array().unwrap().len() >= NODES);

    // A stopped node is down after the next crawl, up after a restart.
    let stopped = net.identities[STOPPED].node_id();
    net.stop(STOPPED).await;
    h.explorer.crawl_now().await.unwrap();
    let page = get(h.addr, &format!("/api/v1/nodes/{stopped}")).await;
    assert_eq!(page["up"], false, "{page}");
    assert!(page["probes"][0]["ok"] == false, "{page}");
    net.restart(STOPPED).await;
    h.explorer.crawl_now().await.unwrap();
    let page = get(h.addr, &format!("/api/v1/nodes/{stopped}")).await;
    assert_eq!(page["up"], true, "{page}");
    let sessions = page["sessions"].as_array().unwrap();
    let states: Vec<bool> = sessions
        .iter()
        .map(|s| s["up"].as_bool().unwrap())
        .collect();
    assert_eq!(states, vec![true, false, true], "newest first: {page}");
    assert!(sessions[0]["end"].is_null() && !sessions[1]["end"].is_null());
    assert!(page["uptime_24h"].as_f64().unwrap() <= 1.0);
    // Search by id prefix and by fingerprint prefix.
    let prefix = &stopped.to_string()[..10];
    let found = get(h.addr, &format!("/api/v1/nodes?q={prefix}")).await;
    assert_eq!(found["nodes"][0]["id"], stopped.to_string(), "{found}");
    let fp = NodeId::fingerprint(&stopped).to_string();
    let found = get(h.addr, &format!("/api/v1/nodes?q={}", &fp[..9])).await;
    assert_eq!(found["nodes"][0]["id"], stopped.to_string(), "{found}");
    let history = get(h.addr, "/api/v1/history").await;
    assert!(
        history["points"].as_array().unwrap().len() >= 3,
        "{history}"
    );

    eprintln!("{backend:?}: checks done at {:?}", t.elapsed());
    h.explorer.stop().await;
    let mut stopping = tokio::task::JoinSet::new();
    for node in net.nodes.into_iter().flatten() {
        stopping.spawn(async move { node.stop().await });
    }
    while stopping.join_next().await.is_some() {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crawls_a_real_network_on_sqlite() {
    crawl_a_network(Backend::Sqlite, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crawls_a_real_network_on_postgres() {
    crawl_a_network(Backend::Postgres, 110).await;
}
