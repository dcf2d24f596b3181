//! The explorer's speed, each figure beside the primitive it rests on, in the same run:
//!
//! 1. **Crawl**: 1,000 real nodes in this process (QUIC on 127.0.x.y); the time for a crawl to
//!    list all of them, with the CPU time and memory growth of the process, beside the time for
//!    1,000 bare authenticated handshakes (`Node::connect`) at the same concurrency.
//! 2. **Graph**: a 10,000-node simulated topology (`steady-10k`) loaded into the explorer, the
//!    graph page opened in headless Chromium: first render and interaction
//!    (`tests/browser/graph-bench.mjs`; skipped when Chromium or playwright-core is missing).
//! 3. **API under load**: p50/p99 latency of the node list, overview and graph routes with 32
//!    concurrent clients, beside `/healthz` on the same server.
//!
//! `cargo bench -p meshara-explorer --bench explorer` (release). Prints a Markdown table for
//! docs/benchmarks.md. `EXPLORER_BENCH_NODES` overrides 1,000; `EXPLORER_BENCH_TOPOLOGY=FILE`
//! loads a topology written by `meshara sim … --topology FILE` instead of simulating one.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    missing_docs
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshara_core::{Identity, Node, NodeConfig, PeerAddr};
use meshara_explorer::Explorer;
use meshara_explorer::config::Config;

/// Four nodes per address and four addresses per /24: the DHT's per-/24 diversity caps (16 per
/// table) would otherwise keep most of 1,000 loopback nodes out of every routing table.
fn host(i: usize) -> String {
    let ip = i / 4;
    format!(
        "127.{}.{}.{}",
        20 + ip / 4 / 200,
        10 + (ip / 4) % 200,
        1 + ip % 4
    )
}

/// User + system CPU seconds of this process.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

async fn start_node(i: usize, bootstrap: Option<PeerAddr>) -> Node {
    let config = NodeConfig {
        listen_quic: Some(format!("{}:0", host(i)).parse().unwrap()),
        target_peers: 4,
        ..NodeConfig::default()
    };
    let mut b = Node::builder()
        .identity(Identity::generate())
        .config(config);
    if let Some(a) = bootstrap {
        b = b.bootstrap(a);
    }
    b.start().await.unwrap()
}

fn explorer_config(dir: &std::path::Path, seeds: Vec<String>) -> Config {
    let mut c = Config::with_data_dir(dir.join("data"));
    c.http_listen = "127.0.0.1:0".parse().unwrap();
    c.node.quic_listen = "127.9.9.1:0".parse().unwrap();
    c.node.bootstrap = seeds;
    c.crawl.interval_secs = 3600;
    c
}

async fn bench_crawl(n: usize) -> Vec<String> {
    eprintln!("starting {n} nodes…");
    let mut nodes: Vec<Node> = Vec::with_capacity(n);
    nodes.push(start_node(0, None).await);
    // Each node joins through one of the first ten, as nodes of a real network join through
    // a handful of well-known ones, so no single node holds a connection from everyone.
    for i in 1..n {
        let boot = nodes[(i - 1) % i.min(10)].quic_addr().unwrap();
        nodes.push(start_node(i, Some(boot)).await);
    }
    // Let the tables fill: until their total has not moved for five seconds (at most 3 min).
    let mut last = 0;
    let mut stable = 0;
    for _ in 0..180 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let total: usize = nodes.iter().map(|n| n.routing_table().len()).sum();
        if total == last {
            stable += 1;
            if stable >= 5 {
                break;
            }
        } else {
            stable = 0;
            last = total;
        }
    }
    let peers: usize = nodes.iter().map(|n| n.peers().len()).sum();
    eprintln!(
        "routing tables: {last} entries; {peers} peer connections in all ({:.1} per node); {:.0} MiB RSS",
        peers as f64 / n as f64,
        rss_mib()
    );
    // What any crawler can find: the nodes in at least one routing table (a node in none is
    // known to nobody and answers nobody's FindNode).
    let in_some_table: std::collections::HashSet<meshara_core::NodeId> =
        nodes.iter().flat_map(|n| n.routing_table()).collect();
    let discoverable = in_some_table.len();
    eprintln!("nodes in at least one routing table: {discoverable} of {n}");

    // The primitive: bare authenticated handshakes to every node, 32 at a time.
    let dialer = start_node(999_999 % 1000, None).await;
    let addrs: Vec<PeerAddr> = nodes.iter().map(|n| n.quic_addr().unwrap()).collect();
    let started = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(32));
    let mut set = tokio::task::JoinSet::new();
    for a in addrs {
        let d = dialer.clone();
        let sem = sem.clone();
        set.spawn(async move {
            let _p = sem.acquire().await.unwrap();
            if let Ok(id) = d.connect(&a).await {
                d.remove_peer(id);
            }
        });
    }
    while set.join_next().await.is_some() {}
    let handshakes = started.elapsed();
    dialer.stop().await;

    let dir = tempfile::tempdir().unwrap();
    // Seeds are a few ordinary nodes (not the first ten everyone joined through), as an
    // operator would configure several.
    let seeds = nodes[10..15]
        .iter()
        .map(|n| n.quic_addr().unwrap().to_string())
        .collect();
    let config = explorer_config(dir.path(), seeds);
    let explorer = Explorer::start(config, b"bench").await.unwrap();
    // The scheduler's first crawl starts at once; wait for it, then measure one of ours.
    explorer.crawl_now().await.unwrap();
    let (cpu0, rss0) = (cpu_seconds(), rss_mib());
    let started = Instant::now();
    let crawl = explorer.crawl_now().await.unwrap();
    let took = started.elapsed();
    let (cpu1, rss1) = (cpu_seconds(), rss_mib());
    let listed_ids: std::collections::HashSet<String> = explorer
        .db()
        .all_nodes()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    let listed = listed_ids.len();
    // Coverage against the ground truth at the end of the crawl (tables keep changing while
    // it runs): of the nodes in some routing table, how many did the crawl list?
    let in_table_after: std::collections::HashSet<String> = nodes
        .iter()
        .flat_map(|n| n.routing_table())
        .map(|id| id.to_string())
        .collect();
    let covered = in_table_after
        .iter()
        .filter(|id| listed_ids.contains(*id))
        .count();
    let discoverable = discoverable.max(in_table_after.len());
    // The goal: every node started is listed.
    let listed_of_started = nodes
        .iter()
        .filter(|n| listed_ids.contains(&n.node_id().to_string()))
        .count();
    eprintln!(
        "coverage: {covered} of the {} nodes in some routing table after the crawl",
        in_table_after.len()
    );
    eprintln!("crawl: {crawl:?}");
    explorer.stop().await;
    let mut stopping = tokio::task::JoinSet::new();
    for n in nodes {
        stopping.spawn(async move { n.stop().await });
    }
    while stopping.join_next().await.is_some() {}
    vec![
        format!(
            "| crawl of {n} in-process nodes | {:.1} s: {listed_of_started} of the {n} nodes started listed ({:.1} %); {covered} of the {} nodes in some routing table (at most {discoverable} ever in one); {listed} listed in all; {} routing-table entries | {:.1} s for {n} bare handshakes, 32 at a time |",
            took.as_secs_f64(),
            100.0 * listed_of_started as f64 / n as f64,
            in_table_after.len(),
            crawl.edges,
            handshakes.as_secs_f64()
        ),
        format!(
            "| CPU during that crawl (crawler and the {n} nodes answering, one process, 2 cores) | {:.1} CPU-s | |",
            cpu1 - cpu0
        ),
        format!(
            "| process memory during that crawl | {rss1:.0} MiB RSS (grew {:.0} MiB) | |",
            rss1 - rss0
        ),
    ]
}

async fn latency(addr: SocketAddr, path: &str, clients: usize, per_client: usize) -> (f64, f64) {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let path = path.to_owned();
        set.spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let mut times = Vec::with_capacity(per_client);
            for _ in 0..per_client {
                let t = Instant::now();
                let res = sender
                    .send_request(
                        hyper::Request::get(&path)
                            .header("host", "bench")
                            .body(http_body_util::Empty::<bytes::Bytes>::new())
                            .unwrap(),
                    )
                    .await
                    .unwrap();
                let _ = http_body_util::BodyExt::collect(res.into_body())
                    .await
                    .unwrap();
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
            times
        });
    }
    let mut all = Vec::new();
    while let Some(t) = set.join_next().await {
        all.extend(t.unwrap());
    }
    all.sort_by(f64::total_cmp);
    let p = |q: f64| all[((all.len() - 1) as f64 * q).round() as usize];
    (p(0.5), p(0.99))
}

async fn bench_graph_and_api() -> Vec<String> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../meshara-core/simulations/steady-10k.toml"
    ))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // `EXPLORER_BENCH_TOPOLOGY=FILE` reuses a topology written by
    // `meshara sim meshara-core/simulations/steady-10k.toml --topology FILE` (the simulation
    // takes minutes).
    let file = match std::env::var("EXPLORER_BENCH_TOPOLOGY") {
        Ok(path) => std::path::PathBuf::from(path),
        Err(_) => {
            let scenario = meshara_core::routing::sim::Scenario::from_toml(&text).unwrap();
            eprintln!("simulating steady-10k…");
            let (_, topology) = meshara_core::routing::sim::run_with_topology(&scenario);
            let file = dir.path().join("topology.json");
            std::fs::write(&file, serde_json::to_vec(&topology).unwrap()).unwrap();
            file
        }
    };
    let config = explorer_config(dir.path(), Vec::new());
    let explorer = Explorer::start(config, b"bench").await.unwrap();
    let imported = meshara_explorer::sim::import(explorer.db(), &file)
        .await
        .unwrap();
    explorer.crawl_now().await.unwrap(); // refreshes caches; finds nothing (no seeds)
    let addr = explorer.http_addr();
    let mut rows = Vec::new();

    let browser = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/browser/node_modules/playwright-core"
    ))
    .exists()
        && std::path::Path::new("/usr/bin/chromium").exists();
    if browser {
        let out = std::process::Command::new("node")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/browser/graph-bench.mjs"
            ))
            .env("EXPLORER_URL", format!("http://{addr}"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .rev()
            .find(|l| l.trim_start().starts_with('{'));
        match line.and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok()) {
            Some(v) => rows.push(format!(
                "| graph of {} nodes / {} edges in headless Chromium: first render, interactive | {} ms, {} ms (pan frame p50 {} ms, p95 {} ms) | |",
                v["nodes"], v["edges"], v["first_render_ms"], v["interactive_ms"], v["frame_ms_pan_p50"], v["frame_ms_pan_p95"]
            )),
            None => eprintln!(
                "graph-bench failed: {}\n{}",
                stdout,
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    } else {
        eprintln!("chromium or playwright-core missing: no graph row");
    }

    let (h50, h99) = latency(addr, "/healthz", 32, 200).await;
    for (name, path, per) in [
        (
            "node list, search and sort",
            "/api/v1/nodes?q=a&sort=uptime&per_page=50",
            100,
        ),
        ("overview", "/api/v1/overview", 20),
        ("graph (cached)", "/api/v1/graph", 20),
    ] {
        let (p50, p99) = latency(addr, path, 32, per).await;
        rows.push(format!(
            "| `{path}` ({name}), {imported} nodes, 32 clients | p50 {p50:.1} ms, p99 {p99:.1} ms | `/healthz` p50 {h50:.2} ms, p99 {h99:.2} ms |"
        ));
    }
    explorer.stop().await;
    rows
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing and wants a quick run.
    let full = std::env::args().any(|a| a == "--bench");
    if !full {
        println!("explorer bench: run with `cargo bench -p meshara-explorer --bench explorer`");
        return;
    }
    let n: usize = std::env::var("EXPLORER_BENCH_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
        .max(20);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    if std::env::var("EXPLORER_BENCH_SKIP_CRAWL").is_err() {
        rows.extend(rt.block_on(bench_crawl(n)));
    }
    if std::env::var("EXPLORER_BENCH_SKIP_GRAPH").is_err() {
        rows.extend(rt.block_on(bench_graph_and_api()));
    }
    println!("| measure | explorer | primitive, same run |");
    println!("|---|---|---|");
    for r in rows {
        println!("{r}");
    }
}
