//! The Meshara network explorer (`meshara-explorer`): a crawler that walks a Meshara network
//! over its own protocol, a store of what it found (SQLite by default, PostgreSQL for a
//! shared deployment), and a web UI and JSON API that show the network live.
//!
//! ## Layout
//!
//! | module | what it holds |
//! |---|---|
//! | [`config`] | TOML + `MESHARA_EXPLORER_*` configuration |
//! | [`crawl`] | the crawler: probes, status, routing-table enumeration, bounds |
//! | [`db`] | nodes, liveness sessions, crawls; retention |
//! | [`lookup`] | DHT lookup traces, round by round |
//! | [`api`] | the JSON API, its OpenAPI document, live events, health and metrics |
//! | [`sim`] | loading a simulator topology (`meshara sim --topology`) |
//!
//! What the explorer may learn and show is written down in docs/architecture/explorer.md
//! ("Privacy"): only what a node publishes in its signed record and its status, never who
//! talks to whom, never a node that asked not to be listed.

pub mod api;
pub mod config;
pub mod crawl;
pub mod db;
pub mod lookup;
pub mod sim;
mod web;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use data_encoding::BASE64;
use meshara_core::{KdfParams, Keystore, Node, NodeRecord, PeerAddr};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tokio::sync::{Mutex, Notify, Semaphore, broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use config::Config;
use crawl::{Crawler, Visit, capability_name, transport_name, unix_now};
use db::{Change, CrawlRow, Db, NodeRow};

/// Why the explorer could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The database.
    #[error(transparent)]
    Db(#[from] db::DbError),
    /// The node.
    #[error("starting the explorer node: {0}")]
    Node(String),
    /// The HTTP listener.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Something else.
    #[error("{0}")]
    Other(String),
}

/// Where the token guarding the mounted node API is written.
pub const NODE_API_TOKEN_FILE: &str = "node-api.token";

struct Metrics {
    crawls: Counter,
    crawl_seconds: Histogram,
    nodes_found: Gauge,
    nodes_up: Gauge,
    edges: Gauge,
    unreachable: Gauge,
    visits_failed: Counter,
    refused: Counter,
    requests: Counter,
    lookups: Counter,
}

impl Metrics {
    fn new() -> Self {
        Self {
            crawls: Counter::default(),
            crawl_seconds: Histogram::new([1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0]),
            nodes_found: Gauge::default(),
            nodes_up: Gauge::default(),
            edges: Gauge::default(),
            unreachable: Gauge::default(),
            visits_failed: Counter::default(),
            refused: Counter::default(),
            requests: Counter::default(),
            lookups: Counter::default(),
        }
    }

    fn register(&self, r: &mut Registry) {
        r.register("crawls", "Crawls finished", self.crawls.clone());
        r.register(
            "crawl_duration_seconds",
            "Duration of finished crawls",
            self.crawl_seconds.clone(),
        );
        r.register(
            "nodes_listed",
            "Listed nodes after the last crawl",
            self.nodes_found.clone(),
        );
        r.register("nodes_up", "Listed nodes up", self.nodes_up.clone());
        r.register(
            "edges",
            "Routing-table entries found by the last crawl",
            self.edges.clone(),
        );
        r.register(
            "nodes_unreached",
            "Verified records whose node the last crawl could not reach",
            self.unreachable.clone(),
        );
        r.register(
            "visits_failed",
            "Node visits that reached no address",
            self.visits_failed.clone(),
        );
        r.register(
            "ids_refused",
            "Ids not visited because a crawl bound was hit (max_nodes, max_new_per_source)",
            self.refused.clone(),
        );
        r.register(
            "find_node_requests",
            "FindNode requests sent by the crawler",
            self.requests.clone(),
        );
        r.register("lookups", "Lookup traces run", self.lookups.clone());
    }
}

/// A live update for `/api/v1/events`.
#[derive(Debug, Clone)]
pub struct LiveEvent {
    /// `node`, `crawl` or `crawl_started`.
    pub kind: &'static str,
    /// Its JSON.
    pub data: Value,
}

/// Everything the handlers share.
pub struct AppState {
    config: Config,
    db: Db,
    node: Node,
    crawler: Crawler,
    live: broadcast::Sender<LiveEvent>,
    metrics: Metrics,
    registry: Registry,
    http_metrics: meshara_axum::HttpMetrics,
    crawling: AtomicBool,
    stopping: AtomicBool,
    crawl_lock: Mutex<()>,
    crawl_now: Notify,
    lookups: Semaphore,
    /// Cancelled when the explorer stops (ends live-event streams, so graceful shutdown does
    /// not wait for browsers that keep them open).
    shutdown: CancellationToken,
    node_token: Option<String>,
    /// Follows the configured releases (with `[releases] root`).
    updater: std::sync::OnceLock<meshara_core::updater::Updater>,
    /// Bumped on every change to the stored network; keys the graph and overview caches.
    generation: AtomicU64,
    /// The graph's JSON, serialized once per generation (a 10,000-node network's is ~10 MB).
    graph_cache: std::sync::Mutex<Option<(u64, bytes::Bytes)>>,
    /// The overview, computed once per generation.
    overview_cache: std::sync::Mutex<Option<(u64, Arc<Value>)>>,
    /// Held while a cache is rebuilt, so that concurrent misses compute it once.
    cache_build: tokio::sync::Mutex<()>,
}

impl AppState {
    fn shutting_down(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::Relaxed);
    }

    fn emit(&self, kind: &'static str, data: Value) {
        // No subscriber is fine.
        let _ = self.live.send(LiveEvent { kind, data });
    }
}

/// A running explorer.
pub struct Explorer {
    state: Arc<AppState>,
    http_addr: SocketAddr,
    shutdown: CancellationToken,
    tasks: tokio::task::JoinSet<()>,
}

impl std::fmt::Debug for Explorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Explorer")
            .field("http_addr", &self.http_addr)
            .finish_non_exhaustive()
    }
}

impl Explorer {
    /// Starts everything: database (migrated), the explorer's node (identity kept in
    /// `<data_dir>/node.key`, unlocked with `passphrase`), the crawl scheduler and the HTTP
    /// server. The first crawl starts at once.
    pub async fn start(config: Config, passphrase: &[u8]) -> Result<Explorer, StartError> {
        config.validate()?;
        let data = config.data_dir.clone();
        // Holds the node key and the node API token: only we may read it.
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(&data)
            .map_err(|e| StartError::Other(format!("creating {}: {e}", data.display())))?;
        let db = Db::connect(&config.database_url()).await?;

        let identity = match &config.node.identity_file {
            Some(path) => meshara_core::keyfile::read_identity_file(path)
                .map_err(|e| StartError::Node(format!("node.identity_file: {e}")))?,
            None => {
                let (identity, created) = Keystore::new(data.join("node.key"))
                    .load_or_create(passphrase, KdfParams::default(), unix_now())
                    .map_err(|e| StartError::Node(format!("node keystore: {e}")))?;
                if created {
                    tracing::info!(node = %identity.node_id(), "created the explorer node identity");
                }
                identity
            }
        };
        let defaults = meshara_core::NodeConfig::default();
        // A crawler opens a connection to every node it visits; its own limits must not be
        // what bounds a crawl (the crawl's own bounds are).
        let limits = meshara_core::net::Limits {
            max_connections: 4096,
            max_connections_per_ip: 1024,
            max_pending_handshakes: 1024,
            max_records: 65_536,
            max_pending_queries: 16_384,
            ..defaults.limits.clone()
        };
        let timeouts = meshara_core::net::Timeouts {
            connect: Duration::from_secs(config.crawl.connect_timeout_secs),
            ..defaults.timeouts.clone()
        };
        let node_config = meshara_core::NodeConfig {
            listen_quic: Some(config.node.quic_listen),
            agent: concat!("meshara-explorer/", env!("CARGO_PKG_VERSION")).to_owned(),
            limits,
            timeouts,
            mdns: false,
            // The crawler connects to every node it visits and closes the connection after;
            // the node keeps no standing connections of its own (bootstrap addresses are
            // where crawls start), so a visit rarely finds the per-NodeId cap used up.
            target_peers: 0,
            dial_private: config.node.dial_private,
            ..defaults
        };
        let node = Node::builder()
            .identity(identity)
            .config(node_config)
            .start()
            .await
            .map_err(|e| StartError::Node(e.to_string()))?;

        // The release follower: from the configured root, else one kept from an earlier
        // start, else (when authorities are pinned) fetched from one in the background.
        let updater = std::sync::OnceLock::new();
        let kept_root = data.join("releases").join("root.pb");
        let root = match &config.releases.root {
            Some(path) => Some(read_root(path, "releases.root")?),
            None if kept_root.exists() => Some(read_root(&kept_root, "the kept root")?),
            None => None,
        };
        let fetch_root = match root {
            Some(root) => {
                let _ = updater.set(release_follower(&node, &data, root, &config)?);
                false
            }
            None => !config.releases.track.is_empty() && !config.releases.authorities.is_empty(),
        };

        let node_token = if config.node.api {
            Some(node_api_token(&data)?)
        } else {
            None
        };

        let mut registry = Registry::with_prefix("meshara_explorer");
        let http_metrics = meshara_axum::HttpMetrics::new();
        http_metrics.register(&mut registry);
        let metrics = Metrics::new();
        metrics.register(&mut registry);
        let (live, _) = broadcast::channel(1024);
        let shutdown = CancellationToken::new();
        let state = Arc::new(AppState {
            shutdown: shutdown.clone(),
            crawler: Crawler::new(node.clone(), config.crawl.clone()),
            lookups: Semaphore::new(config.crawl.max_lookups),
            config: config.clone(),
            db: db.clone(),
            node: node.clone(),
            live,
            metrics,
            registry,
            http_metrics,
            crawling: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            crawl_lock: Mutex::new(()),
            crawl_now: Notify::new(),
            node_token,
            updater,
            generation: AtomicU64::new(0),
            graph_cache: std::sync::Mutex::new(None),
            overview_cache: std::sync::Mutex::new(None),
            cache_build: tokio::sync::Mutex::new(()),
        });

        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(scheduler(state.clone(), shutdown.clone()));
        if fetch_root {
            tasks.spawn(fetch_release_root(state.clone()));
        }

        let listener = tokio::net::TcpListener::bind(config.http_listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.http_listen,
                source,
            })?;
        let http_addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.http_listen,
            source,
        })?;
        let app = api::router(state.clone());
        let stop = shutdown.clone();
        tasks.spawn(async move {
            // Header-read timeout and connection caps, which axum::serve lacks (slowloris).
            let served = meshara_axum::serve_tcp_with_graceful_shutdown(
                listener,
                app,
                meshara_axum::ServeOptions::default(),
                async move { stop.cancelled().await },
            )
            .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "HTTP server failed");
            }
        });
        tracing::info!(http = %http_addr, node = %node.node_id(), database = ?db.backend(), "explorer running");
        Ok(Explorer {
            state,
            http_addr,
            shutdown,
            tasks,
        })
    }

    /// The web UI's and API's address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The explorer's node.
    pub fn node(&self) -> &Node {
        &self.state.node
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.state.db
    }

    /// The bearer token of the mounted node API, when it is mounted.
    pub fn node_api_token(&self) -> Option<&str> {
        self.state.node_token.as_deref()
    }

    /// Runs a crawl now (waiting for one under way to finish first) and returns its row.
    pub async fn crawl_now(&self) -> Result<CrawlRow, db::DbError> {
        run_crawl(&self.state).await
    }

    /// Asks the scheduler to start a crawl now without waiting for it.
    pub fn request_crawl(&self) {
        self.state.crawl_now.notify_one();
    }

    /// Stops gracefully: readiness fails at once, in-flight requests finish, the crawl under
    /// way is abandoned, then the node stops and the database closes.
    pub async fn stop(mut self) {
        self.state.stopping.store(true, Ordering::Relaxed);
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
        if let Some(u) = self.state.updater.get() {
            u.stop();
        }
        self.state.node.stop().await;
        self.state.db.close().await;
        tracing::info!("explorer stopped");
    }
}

fn read_root(
    path: &std::path::Path,
    what: &str,
) -> Result<meshara_core::proto::SignedMetadata, StartError> {
    let bytes = std::fs::read(path)
        .map_err(|e| StartError::Other(format!("reading {what} {}: {e}", path.display())))?;
    meshara_core::update::decode_signed(&bytes)
        .map_err(|e| StartError::Other(format!("{what} {}: {e}", path.display())))
}

fn release_follower(
    node: &Node,
    data: &std::path::Path,
    root: meshara_core::proto::SignedMetadata,
    config: &Config,
) -> Result<meshara_core::updater::Updater, StartError> {
    let mut b = meshara_core::updater::Updater::builder(node.clone(), data.join("releases"), root)
        // Only metadata is wanted: nothing is downloaded under the Notify policy, and the
        // cache stays small.
        .cache_bytes(1 << 20);
    for (package, channel) in config.releases.pairs() {
        b = b.subscribe(&package, &channel);
    }
    for a in config.releases.authority_ids() {
        b = b.authority(a);
    }
    b.start()
        .map_err(|e| StartError::Other(format!("release follower: {e}")))
}

/// Takes the signed root from the first pinned authority that gives one (retried with a
/// backoff up to a minute), keeps it next to the follower's state and starts the follower.
async fn fetch_release_root(state: Arc<AppState>) {
    let authorities = state.config.releases.authority_ids();
    let data = state.config.data_dir.clone();
    let mut wait = Duration::from_secs(1);
    loop {
        for a in &authorities {
            match meshara_core::updater::fetch_root(&state.node, *a).await {
                Ok(root) => {
                    use prost::Message as _;
                    let dir = data.join("releases");
                    let kept = std::fs::create_dir_all(&dir)
                        .and_then(|()| std::fs::write(dir.join("root.pb"), root.encode_to_vec()));
                    if let Err(e) = kept {
                        tracing::warn!(error = %e, "cannot keep the release root");
                    }
                    match release_follower(&state.node, &data, root, &state.config) {
                        Ok(u) => {
                            tracing::info!(authority = %a, "took the release root from a pinned authority");
                            let _ = state.updater.set(u);
                            check_releases(&state).await;
                        }
                        Err(e) => tracing::warn!(error = %e, "release follower"),
                    }
                    return;
                }
                Err(e) => {
                    tracing::info!(authority = %a, error = %e, "no release root from this authority yet")
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = state.shutdown.cancelled() => return,
        }
        wait = (wait * 2).min(Duration::from_secs(60));
    }
}

/// Reads the node API token, creating it (mode 0600) on first start.
fn node_api_token(data: &std::path::Path) -> Result<String, StartError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = data.join(NODE_API_TOKEN_FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        let token = text.trim().to_owned();
        if token.len() >= 32 {
            return Ok(token);
        }
    }
    let mut bytes = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
    let token = data_encoding::BASE64URL_NOPAD.encode(&bytes);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| StartError::Other(format!("writing {}: {e}", path.display())))?;
    f.write_all(token.as_bytes())
        .map_err(|e| StartError::Other(format!("writing {}: {e}", path.display())))?;
    tracing::info!(path = %path.display(), "created the node API token");
    Ok(token)
}

/// Crawls on start, then every interval (or when asked).
async fn scheduler(state: Arc<AppState>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            result = run_crawl(&state) => {
                if let Err(e) = result {
                    tracing::warn!(error = %e, "crawl failed");
                }
            }
            () = shutdown.cancelled() => return,
        }
        tokio::select! {
            () = tokio::time::sleep(state.config.crawl.interval()) => {}
            () = state.crawl_now.notified() => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// One crawl, recorded as it goes.
async fn run_crawl(state: &Arc<AppState>) -> Result<CrawlRow, db::DbError> {
    let _one_at_a_time = state.crawl_lock.lock().await;
    state.crawling.store(true, Ordering::Relaxed);
    let result = crawl_recorded(state).await;
    state.crawling.store(false, Ordering::Relaxed);
    result
}

async fn crawl_recorded(state: &Arc<AppState>) -> Result<CrawlRow, db::DbError> {
    let started = Instant::now();
    let started_at = unix_now() as i64;
    let id = state.db.begin_crawl("crawl", started_at).await?;
    state.emit("crawl_started", json!({"id": id, "started_at": started_at}));
    let retention = state.config.retention_days as i64 * 86_400;
    let now = unix_now();
    let known: Vec<NodeRecord> = state
        .db
        .known_records(started_at - retention)
        .await?
        .iter()
        .filter_map(|b64| BASE64.decode(b64.as_bytes()).ok())
        .filter_map(|bytes| NodeRecord::decode(&bytes, now).ok())
        .collect();
    let seeds: Vec<PeerAddr> = state
        .config
        .node
        .bootstrap
        .iter()
        .filter_map(|b| PeerAddr::from_config(b).ok())
        .collect();
    let (tx, mut rx) = mpsc::channel::<Visit>(256);
    let crawler = state.crawler.clone();
    let walk = tokio::spawn(async move { crawler.crawl(&seeds, known, tx).await });
    let (mut joined, mut left) = (0i64, 0i64);
    while let Some(visit) = rx.recv().await {
        let id = visit.record.node_id().to_string();
        if visit.record.is_unlisted() {
            if state.db.delete_node(&id).await? {
                state.changed();
                tracing::info!(node = %id, "node asked not to be listed: forgotten");
            }
            continue;
        }
        let row = visit_row(&visit);
        let change = state.db.apply_visit(&row).await?;
        match change {
            Change::New | Change::Up => joined += 1,
            Change::Down => left += 1,
            _ => {}
        }
        if change != Change::Ignored {
            state.changed();
        }
        if matches!(change, Change::New | Change::Up | Change::Down) {
            if let Ok(Some(stored)) = state.db.node(&id).await {
                state.emit("node", api::summary(&stored));
            }
        }
    }
    let summary = walk.await.unwrap_or_default();
    let now = unix_now() as i64;
    state.db.update_uptimes(now).await?;
    let nodes = state.db.all_nodes().await?;
    // Keyed by the whole agent (`package/version`), so release adoption can be read back.
    let mut versions: BTreeMap<String, i64> = BTreeMap::new();
    for n in nodes.iter().filter(|n| n.up) {
        *versions.entry(n.agent.clone()).or_default() += 1;
    }
    let up = nodes.iter().filter(|n| n.up).count() as i64;
    let row = CrawlRow {
        id,
        source: "crawl".into(),
        started_at,
        finished_at: Some(now),
        duration_ms: Some(started.elapsed().as_millis() as i64),
        discovered: summary.discovered as i64,
        reached: summary.reached as i64,
        failed: summary.failed as i64,
        edges: summary.edges as i64,
        listed: nodes.len() as i64,
        up_count: up,
        joined,
        left_count: left,
        versions: serde_json::to_string(&versions).unwrap_or_else(|_| "{}".into()),
    };
    state.db.finish_crawl(&row).await?;
    // Uptimes and the last crawl changed: the overview and the graph are rebuilt.
    state.changed();
    check_releases(state).await;
    let forgotten = state.db.prune(now - retention).await?;
    if forgotten > 0 {
        state.changed();
    }
    let m = &state.metrics;
    m.crawls.inc();
    m.crawl_seconds.observe(started.elapsed().as_secs_f64());
    m.nodes_found.set(row.listed);
    m.nodes_up.set(up);
    m.edges.set(row.edges);
    m.unreachable.set(row.failed);
    m.visits_failed.inc_by(summary.failed as u64);
    m.refused.inc_by(summary.refused as u64);
    m.requests.inc_by(summary.requests as u64);
    tracing::info!(
        crawl = id,
        listed = row.listed,
        up,
        reached = summary.reached,
        failed = summary.failed,
        edges = summary.edges,
        refused = summary.refused,
        ms = row.duration_ms,
        "crawl finished"
    );
    state.emit("crawl", api::crawl_json(&row));
    Ok(row)
}

/// Asks the authorities for each followed release and records new ones.
async fn check_releases(state: &AppState) {
    let Some(updater) = state.updater.get() else {
        return;
    };
    for (package, channel) in state.config.releases.pairs() {
        if let Err(e) = updater.check(&package, &channel).await {
            tracing::debug!(%package, %channel, error = %e, "release check");
        }
        if let Some(r) = updater.latest(&package, &channel) {
            let recorded = state
                .db
                .record_release(
                    &r.package,
                    &r.channel,
                    &r.semver,
                    r.sequence as i64,
                    unix_now() as i64,
                )
                .await;
            if let Err(e) = recorded {
                tracing::warn!(error = %e, "recording a release");
            }
        }
    }
}

/// The version in an agent string (`name/1.2.3` → `1.2.3`).
pub fn version_of(agent: &str) -> String {
    let v = agent.rsplit('/').next().unwrap_or(agent).trim();
    if v.is_empty() {
        "unknown".into()
    } else {
        v.chars().take(64).collect()
    }
}

/// The stored form of a visit.
fn visit_row(v: &Visit) -> NodeRow {
    let r = &v.record;
    let mut transports: Vec<&str> = r
        .addresses()
        .iter()
        .map(|a| transport_name(a.transport))
        .collect();
    transports.dedup();
    transports.sort_unstable();
    transports.dedup();
    let addresses: Vec<Value> = r
        .addresses()
        .iter()
        .map(|a| json!({"transport": transport_name(a.transport), "host": a.host, "port": a.port}))
        .collect();
    let capabilities: Vec<&str> = r
        .capabilities()
        .iter()
        .map(|c| capability_name(*c))
        .collect();
    let neighbours: Vec<String> = v.neighbours.iter().map(ToString::to_string).collect();
    NodeRow {
        id: r.node_id().to_string(),
        fingerprint: r.node_id().fingerprint().to_string().replace('-', ""),
        record: BASE64.encode(&r.encode()),
        sequence: r.sequence() as i64,
        issued_at: r.issued_at() as i64,
        expires_at: r.expires_at() as i64,
        agent: r.agent().to_owned(),
        version: version_of(r.agent()),
        capabilities: to_json(&capabilities),
        transports: to_json(&transports),
        addresses: to_json(&addresses),
        topics: to_json(&v.topics),
        up: v.reached,
        first_seen: v.at as i64,
        last_seen: v.at as i64,
        last_checked: v.at as i64,
        rtt_us: v.rtt_ms.map(|ms| (ms * 1000.0) as i64),
        uptime_ppm: None,
        status: v.status.as_ref().map(to_json),
        probes: to_json(&v.probes),
        neighbour_count: neighbours.len() as i64,
        neighbours: to_json(&neighbours),
        source: "crawl".into(),
    }
}

/// JSON text of a value of ours (they always serialize).
fn to_json<T: serde::Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}
