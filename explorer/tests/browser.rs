//! The web UI in a real headless Chromium (Debian's chromium + playwright-core), against a
//! real explorer that crawled a real network: tests/browser/explorer.mjs reads the overview,
//! the graph, search, a node page and a lookup trace, then watches a node that joins appear
//! without a reload. It fails on any console error and on any request outside the explorer.
//! Screenshots are kept in target/tmp/explorer-browser/.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    missing_docs
)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Backend, Network, artifacts_dir, explorer, start_node};
use meshara_core::Identity;
use serde_json::json;

fn browser_ready() -> bool {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let ready = Path::new(&chromium).exists()
        && Path::new("tests/browser/node_modules/playwright-core").exists();
    if !ready {
        assert!(
            std::env::var("MESHARA_REQUIRE_BROWSER").is_err(),
            "MESHARA_REQUIRE_BROWSER is set but chromium or explorer/tests/browser/node_modules is missing"
        );
        eprintln!(
            "note: chromium or playwright-core missing (run `npm ci` in explorer/tests/browser); skipping"
        );
    }
    ready
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_explorer_works_in_headless_chromium() {
    if !browser_ready() {
        return;
    }
    let net = Network::start(12, &[]).await;
    let Some(h) = explorer(Backend::Sqlite, &[net.bootstrap().to_string()], |c| {
        // Crawls come often so the joining node shows up while the page is open.
        c.crawl.interval_secs = 3;
    })
    .await
    else {
        return;
    };
    h.explorer.crawl_now().await.unwrap();
    let some = net.nodes[4].as_ref().unwrap().node_id();
    let target = net.nodes[9].as_ref().unwrap().node_id();
    let artifacts = artifacts_dir("explorer-browser");
    let ready_file = artifacts.join("join-ready");
    let joined_file = artifacts.join("joined");
    let _ = std::fs::remove_file(&ready_file);
    let _ = std::fs::remove_file(&joined_file);
    let expect = json!({
        "listed_min": 12,
        "search_id": some.to_string(),
        "search_fingerprint": some.fingerprint().to_string(),
        "lookup_target": target.to_string(),
    });
    let url = format!("http://{}", h.addr);
    let (rf, jf, art) = (ready_file.clone(), joined_file.clone(), artifacts.clone());
    let script = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .arg("tests/browser/explorer.mjs")
            .env("EXPLORER_URL", url)
            .env("ARTIFACTS", art)
            .env("EXPECT", expect.to_string())
            .env("JOIN_READY_FILE", rf)
            .env("JOINED_FILE", jf)
            .output()
            .unwrap()
    });
    // When the page has checked its views, a node joins.
    let joined = tokio::time::timeout(Duration::from_secs(240), async {
        while !ready_file.exists() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let node = start_node(60, Identity::generate(), Some(net.bootstrap()), false, 0).await;
        std::fs::write(&joined_file, node.node_id().to_string()).unwrap();
        node
    })
    .await;
    let out = script.await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "explorer browser test failed:\n{stdout}\n{stderr}"
    );
    let joiner = joined.expect("the page never got ready for the join step");
    eprintln!("{stdout}");
    for shot in [
        "overview.png",
        "graph.png",
        "nodes.png",
        "node.png",
        "lookup.png",
        "live.png",
    ] {
        assert!(artifacts.join(shot).exists(), "{shot} was not kept");
    }
    joiner.stop().await;
    h.explorer.stop().await;
}
