//! Shared by the explorer's tests: a network of real nodes on loopback, an explorer over
//! SQLite or a real PostgreSQL, and HTTP helpers.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    dead_code,
    unreachable_pub,
    missing_docs
)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http_body_util::BodyExt;
use meshara_core::{Identity, Node, NodeConfig, PeerAddr, StartError};
use meshara_explorer::Explorer;
use meshara_explorer::config::Config;
use serde_json::Value;

pub const WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh PostgreSQL database URL, or `None` (with a note) when no server is configured.
pub async fn postgres_url() -> Option<String> {
    let Ok(base) = std::env::var("MESHARA_TEST_POSTGRES_URL") else {
        assert!(
            std::env::var("MESHARA_REQUIRE_POSTGRES").is_err(),
            "MESHARA_REQUIRE_POSTGRES is set but MESHARA_TEST_POSTGRES_URL is not"
        );
        eprintln!("note: MESHARA_TEST_POSTGRES_URL unset; skipping the PostgreSQL run");
        return None;
    };
    sqlx::any::install_default_drivers();
    let mut nonce = [0u8; 6];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
    let name = format!(
        "meshara_explorer_test_{}",
        data_encoding::HEXLOWER.encode(&nonce)
    );
    let admin = sqlx::AnyPool::connect(&format!("{base}/postgres"))
        .await
        .expect("connecting to the test PostgreSQL");
    // `name` is hex digits we generated.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    Some(format!("{base}/{name}"))
}

/// The loopback address of node `i`: four nodes per 127.0.0.x, so no node sees more than a
/// few connections from one address (the per-IP cap stays out of the way).
pub fn host(i: usize) -> String {
    host_in(10, i)
}

/// [`host`] in the range starting at 127.0.`base`.0, so tests running at once do not share
/// addresses (a restarted node gets its port back).
pub fn host_in(base: usize, i: usize) -> String {
    format!("127.0.{}.{}", base + i / 4 / 250, 1 + (i / 4) % 250)
}

/// Starts a node on `host(i)` with `identity`, bootstrapping from `bootstrap`.
pub async fn start_node(
    i: usize,
    identity: Identity,
    bootstrap: Option<PeerAddr>,
    unlisted: bool,
    port: u16,
) -> Node {
    start_node_in(10, i, identity, bootstrap, unlisted, port).await
}

/// [`start_node`] in the address range of `base` ([`host_in`]).
pub async fn start_node_in(
    base: usize,
    i: usize,
    identity: Identity,
    bootstrap: Option<PeerAddr>,
    unlisted: bool,
    port: u16,
) -> Node {
    let config = NodeConfig {
        listen_quic: Some(format!("{}:{port}", host_in(base, i)).parse().unwrap()),
        unlisted,
        mdns: false,
        ..NodeConfig::default()
    };
    // A restarted node asks for its old port. The stopped node's socket is released when
    // quinn's endpoint driver ends, which happens after `stop()` returns, so the port can
    // still be busy for a moment: retry, bounded.
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut b = Node::builder()
            .identity(identity.clone())
            .config(config.clone());
        if let Some(addr) = bootstrap.clone() {
            b = b.bootstrap(addr);
        }
        match b.start().await {
            Ok(node) => return node,
            Err(StartError::Bind { error, .. })
                if port != 0 && error.kind() == std::io::ErrorKind::AddrInUse && attempt < 100 =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("node {i} in range {base} did not start: {e}"),
        }
    }
}

/// A network of `n` real nodes; node 0 is everyone's bootstrap. Waits until the routing
/// tables stop changing.
pub struct Network {
    pub base: usize,
    pub nodes: Vec<Option<Node>>,
    pub identities: Vec<Identity>,
    pub ports: Vec<u16>,
}

impl Network {
    pub async fn start(n: usize, unlisted: &[usize]) -> Network {
        Self::start_in(10, n, unlisted).await
    }

    /// A network in the address range of `base` ([`host_in`]).
    pub async fn start_in(base: usize, n: usize, unlisted: &[usize]) -> Network {
        let mut nodes = Vec::new();
        let mut identities = Vec::new();
        let mut ports = Vec::new();
        let mut bootstrap = None;
        for i in 0..n {
            let id = Identity::generate();
            identities.push(id.clone());
            let node =
                start_node_in(base, i, id, bootstrap.clone(), unlisted.contains(&i), 0).await;
            ports.push(node.quic_addr().unwrap().address.port);
            if i == 0 {
                bootstrap = node.quic_addr();
            }
            nodes.push(Some(node));
        }
        let net = Network {
            base,
            nodes,
            identities,
            ports,
        };
        net.settle().await;
        net
    }

    /// Waits until the total routing-table size has not changed for two seconds.
    pub async fn settle(&self) {
        let mut last = 0;
        let mut stable = 0;
        for _ in 0..120 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let total: usize = self.live().map(|n| n.routing_table().len()).sum();
            if total == last && total > 0 {
                stable += 1;
                if stable >= 4 {
                    return;
                }
            } else {
                stable = 0;
                last = total;
            }
        }
    }

    pub fn live(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().flatten()
    }

    pub fn bootstrap(&self) -> PeerAddr {
        self.nodes[0].as_ref().unwrap().quic_addr().unwrap()
    }

    pub async fn stop(&mut self, i: usize) {
        if let Some(node) = self.nodes[i].take() {
            node.stop().await;
        }
    }

    /// Starts node `i` again with its identity and its old address.
    pub async fn restart(&mut self, i: usize) {
        let node = start_node_in(
            self.base,
            i,
            self.identities[i].clone(),
            Some(self.bootstrap()),
            false,
            self.ports[i],
        )
        .await;
        self.nodes[i] = Some(node);
    }
}

/// A running explorer and its data directory.
pub struct Harness {
    pub explorer: Explorer,
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
}

pub async fn explorer(
    backend: Backend,
    seeds: &[String],
    tune: impl FnOnce(&mut Config),
) -> Option<Harness> {
    let database_url = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(postgres_url().await?),
    };
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::with_data_dir(dir.path().join("data"));
    config.database_url = database_url;
    config.http_listen = "127.0.0.1:0".parse().unwrap();
    config.node.quic_listen = "127.0.9.1:0".parse().unwrap();
    config.node.bootstrap = seeds.to_vec();
    // Tests drive crawls themselves.
    config.crawl.interval_secs = 3600;
    config.crawl.connect_timeout_secs = 3;
    tune(&mut config);
    let explorer = Explorer::start(config, b"test passphrase").await.unwrap();
    let addr = explorer.http_addr();
    Some(Harness {
        explorer,
        dir,
        addr,
    })
}

/// A plain HTTP/1.1 call; returns status and parsed JSON (or the text as a JSON string).
pub async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<(&str, Vec<u8>)>,
) -> (u16, Value) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    let body = match body {
        Some((content_type, bytes)) => {
            req = req.header("content-type", content_type);
            http_body_util::Full::new(bytes::Bytes::from(bytes))
        }
        None => http_body_util::Full::new(bytes::Bytes::new()),
    };
    let res = sender.send_request(req.body(body).unwrap()).await.unwrap();
    let status = res.status().as_u16();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, value)
}

pub async fn get(addr: SocketAddr, path: &str) -> Value {
    let (status, v) = call(addr, "GET", path, None).await;
    assert_eq!(status, 200, "GET {path}: {v}");
    v
}

pub fn artifacts_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
