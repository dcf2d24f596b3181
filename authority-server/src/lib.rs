//! The Meshara update authority (`meshara-authority`): stores packages, drafts releases,
//! collects threshold signatures (server-held keys or made offline), publishes them through
//! an authority node that announces and serves them over the mesh, and answers nodes'
//! update checks, with an admin API, a dashboard and an audit log.
//!
//! See docs/operations/authority.md for running it and docs/architecture/updates.md for how
//! releases travel.

pub mod api;
pub mod auth;
pub mod config;
pub mod db;
mod http;
pub mod keys;
pub mod names;
pub mod storage;
mod web;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use meshara_core::updater::Updater;
use meshara_core::{KdfParams, Keystore, Node, NodeId, PeerAddr};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use config::Config;
use db::{Db, QueryRow};
use keys::ServerKeys;
use storage::PackageStore;

/// Unix seconds now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Update checks kept in the database.
const QUERIES_KEPT: i64 = 10_000;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The database.
    #[error(transparent)]
    Db(#[from] db::DbError),
    /// The package store.
    #[error(transparent)]
    Storage(#[from] storage::StorageError),
    /// Keys or the root.
    #[error(transparent)]
    Keys(#[from] keys::KeyError),
    /// The node.
    #[error("starting the authority node: {0}")]
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

#[derive(Default)]
struct Metrics {
    checks: Family<Vec<(String, String)>, Counter>,
    packages: Gauge,
    published: Gauge,
    served_bytes: Gauge,
    peers: Gauge,
    dropped_checks: Counter,
    over_budget_checks: Counter,
    connections: http::ConnMetrics,
}

/// Everything the handlers share.
pub struct AppState {
    config: Config,
    db: Db,
    store: PackageStore,
    keys: ServerKeys,
    node: Node,
    updater: Updater,
    started: Instant,
    queries: mpsc::Sender<QueryRow>,
    http_metrics: meshara_axum::HttpMetrics,
    metrics: Metrics,
    registry: Registry,
    stopping: AtomicBool,
    checks: AtomicU64,
    query_budget: QueryBudget,
    /// Upload slots (`http.max_concurrent_uploads`).
    uploads: Arc<tokio::sync::Semaphore>,
    /// Bytes reserved by uploads in progress (counted against the storage quota).
    reserved: std::sync::Mutex<u64>,
}

/// Update checks recorded per client and window ([`config::QueryLogSection`]), so that one
/// client cannot flush the other clients' checks out of the query log.
struct QueryBudget {
    per_client: u32,
    window: Duration,
    max_clients: usize,
    clients: std::sync::Mutex<std::collections::HashMap<String, (Instant, u32)>>,
}

impl QueryBudget {
    fn new(c: &config::QueryLogSection) -> Self {
        Self {
            per_client: c.per_client,
            window: Duration::from_secs(c.window_secs),
            max_clients: c.max_clients,
            clients: std::sync::Mutex::default(),
        }
    }

    /// Whether `client` may have one more check recorded now.
    fn allow(&self, client: &str) -> bool {
        let now = Instant::now();
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if !clients.contains_key(client) && clients.len() >= self.max_clients {
            clients.retain(|_, (start, _)| now.duration_since(*start) < self.window);
            if clients.len() >= self.max_clients {
                // Still full: the oldest window goes.
                if let Some(oldest) = clients
                    .iter()
                    .min_by_key(|(_, (start, _))| *start)
                    .map(|(k, _)| k.clone())
                {
                    clients.remove(&oldest);
                }
            }
        }
        let entry = clients.entry(client.to_owned()).or_insert((now, 0));
        if now.duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        if entry.1 >= self.per_client {
            return false;
        }
        entry.1 += 1;
        true
    }
}

impl AppState {
    /// Counts an update check, and records it in the query log unless `client` (an IP
    /// address or a node id) used up its budget for the window.
    fn record_query(
        &self,
        client: &str,
        package: &str,
        channel: &str,
        via: &str,
        peer: Option<String>,
    ) {
        self.metrics
            .checks
            .get_or_create(&vec![("via".to_owned(), via.to_owned())])
            .inc();
        self.checks.fetch_add(1, Ordering::Relaxed);
        if !self.query_budget.allow(client) {
            self.metrics.over_budget_checks.inc();
            return;
        }
        let row = QueryRow {
            at: now(),
            // Names from the mesh are not checked: keep them escaped.
            package: names::escape(package).chars().take(64).collect(),
            channel: names::escape(channel).chars().take(64).collect(),
            via: via.to_owned(),
            peer,
        };
        // Recording never slows an answer: when the writer is behind, the check is counted
        // in the metrics but not kept.
        if self.queries.try_send(row).is_err() {
            self.metrics.dropped_checks.inc();
        }
    }

    fn shutting_down(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    async fn metrics_text(&self) -> Result<String, api::ApiError> {
        let releases = self.db.releases().await?;
        self.metrics
            .packages
            .set(self.db.packages().await?.len() as i64);
        self.metrics
            .published
            .set(releases.iter().filter(|r| r.status == "published").count() as i64);
        self.metrics
            .served_bytes
            .set(self.updater.served_bytes() as i64);
        self.metrics.peers.set(self.node.peers().len() as i64);
        let mut text = String::new();
        prometheus_client::encoding::text::encode_registry(&mut text, &self.registry).map_err(
            |e| {
                api::ApiError::new(
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    e.to_string(),
                )
            },
        )?;
        text.push_str(&self.node.metrics_text());
        Ok(text)
    }
}

/// A running authority.
pub struct Authority {
    state: Arc<AppState>,
    http_addr: SocketAddr,
    shutdown: CancellationToken,
    tasks: tokio::task::JoinSet<()>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("http_addr", &self.http_addr)
            .finish_non_exhaustive()
    }
}

/// Where the admin token made on first start is written.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

impl Authority {
    /// Starts everything: database (migrated), package store (cleaned of unfinished
    /// uploads), keys and root, the authority node and its updater, the scheduler and the
    /// HTTP server. `passphrase` unlocks the node keystore and the server-held keys.
    pub async fn start(config: Config, passphrase: &[u8]) -> Result<Authority, StartError> {
        config
            .validate()
            .map_err(|e| StartError::Other(e.to_string()))?;
        let data = config.data_dir.clone();
        {
            use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&data)
                .map_err(|e| StartError::Other(format!("creating {}: {e}", data.display())))?;
            if let Ok(meta) = std::fs::metadata(&data) {
                if meta.permissions().mode() & 0o077 != 0 {
                    tracing::warn!(
                        dir = %data.display(),
                        mode = format!("{:o}", meta.permissions().mode() & 0o777),
                        "the data directory is open to other users; chmod 700 it"
                    );
                }
            }
        }
        let store = PackageStore::open(&data)?;
        let db = Db::connect(&config.database_url()).await?;
        let listed: HashSet<String> = db.packages().await?.into_iter().map(|p| p.hash).collect();
        store.remove_unlisted(&listed)?;
        let root = keys::read_root(&data.join("root.pb"))?;
        let server_keys = ServerKeys::load(&data.join("keys"), passphrase)?;

        let identity = match &config.node.identity_file {
            Some(path) => meshara_core::keyfile::read_identity_file(path)
                .map_err(|e| StartError::Node(format!("node.identity_file: {e}")))?,
            None => {
                let (identity, created) = Keystore::new(data.join("node.key"))
                    .load_or_create(passphrase, KdfParams::default(), now() as u64)
                    .map_err(|e| StartError::Node(format!("node keystore: {e}")))?;
                if created {
                    tracing::info!(node = %identity.node_id(), "created the authority node identity");
                }
                identity
            }
        };
        let mut builder = Node::builder()
            .identity(identity)
            .listen_quic(config.node.quic_listen)
            .mdns(false);
        for b in &config.node.bootstrap {
            let addr =
                PeerAddr::from_config(b).map_err(|e| StartError::Node(format!("{b}: {e}")))?;
            builder = builder.bootstrap(addr);
        }
        let node = builder
            .start()
            .await
            .map_err(|e| StartError::Node(e.to_string()))?;

        let (queries_tx, queries_rx) = mpsc::channel(4096);
        let state_slot: Arc<std::sync::OnceLock<std::sync::Weak<AppState>>> = Arc::default();
        let observer_slot = state_slot.clone();
        let updater = Updater::builder(node.clone(), data.join("node-updates"), root)
            .cache_bytes(config.max_package_bytes.saturating_mul(64))
            .on_metadata_request(move |peer: NodeId, package: &str, channel: &str| {
                if let Some(state) = observer_slot.get().and_then(std::sync::Weak::upgrade) {
                    api::meshara_query(&state, peer, package, channel);
                }
            })
            .start()
            .map_err(|e| StartError::Node(format!("updater: {e}")))?;

        let mut registry = Registry::with_prefix("meshara_authority");
        let http_metrics = meshara_axum::HttpMetrics::new();
        http_metrics.register(&mut registry);
        let metrics = Metrics::default();
        registry.register(
            "update_checks",
            "Update checks answered, by transport",
            metrics.checks.clone(),
        );
        registry.register(
            "update_checks_unrecorded",
            "Update checks not written to the database (writer behind)",
            metrics.dropped_checks.clone(),
        );
        registry.register(
            "update_checks_over_budget",
            "Update checks not written to the database (the client's query_log budget was used up)",
            metrics.over_budget_checks.clone(),
        );
        registry.register("packages", "Stored packages", metrics.packages.clone());
        registry.register(
            "releases_published",
            "Published releases",
            metrics.published.clone(),
        );
        registry.register(
            "served_bytes",
            "Release content bytes served to nodes",
            metrics.served_bytes.clone(),
        );
        registry.register("peers", "Connected Meshara peers", metrics.peers.clone());
        registry.register(
            "http_connections_open",
            "Open HTTP connections",
            metrics.connections.open.clone(),
        );
        registry.register(
            "http_connections_refused",
            "HTTP connections refused at the connection caps",
            metrics.connections.refused.clone(),
        );
        registry.register(
            "http_connections_timed_out",
            "HTTP connections closed by the header-read or idle timeout",
            metrics.connections.timed_out.clone(),
        );

        let state = Arc::new(AppState {
            config: config.clone(),
            db: db.clone(),
            store,
            keys: server_keys,
            node: node.clone(),
            updater,
            started: Instant::now(),
            queries: queries_tx,
            http_metrics,
            metrics,
            registry,
            stopping: AtomicBool::new(false),
            checks: AtomicU64::new(0),
            query_budget: QueryBudget::new(&config.query_log),
            uploads: Arc::new(tokio::sync::Semaphore::new(
                config.http.max_concurrent_uploads,
            )),
            reserved: std::sync::Mutex::new(0),
        });
        let _ = state_slot.set(Arc::downgrade(&state));

        republish(&state).await;
        bootstrap_admin(&state).await?;

        let shutdown = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(write_queries(db.clone(), queries_rx, shutdown.clone()));
        tasks.spawn(scheduler(state.clone(), shutdown.clone()));

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
        tasks.spawn(http::serve(
            listener,
            app,
            config.http.clone(),
            state.metrics.connections.clone(),
            shutdown.clone(),
        ));
        tracing::info!(http = %http_addr, node = %node.node_id(), quic = ?node.quic_addr(), database = ?db.backend(), "authority running");
        Ok(Authority {
            state,
            http_addr,
            shutdown,
            tasks,
        })
    }

    /// The admin API's address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The authority node.
    pub fn node(&self) -> &Node {
        &self.state.node
    }

    /// The signed root the authority serves (what nodes should ship with).
    pub fn root(&self) -> meshara_core::update::Root {
        self.state.updater.root()
    }

    /// Stops gracefully: readiness fails at once, in-flight requests finish, pending update
    /// checks are written, then the node stops and the database closes.
    pub async fn stop(mut self) {
        self.state.stopping.store(true, Ordering::Relaxed);
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
        self.state.updater.stop();
        self.state.node.stop().await;
        self.state.db.close().await;
        tracing::info!("authority stopped");
    }
}

/// Hands the newest published release of each package and channel to the updater after a
/// restart (the updater keeps its own state, so this normally finds nothing to do).
async fn republish(state: &AppState) {
    let Ok(releases) = state.db.releases().await else {
        return;
    };
    let mut seen = HashSet::new();
    for r in releases.iter().filter(|r| r.status == "published") {
        if !seen.insert((r.package.clone(), r.channel.clone())) {
            continue;
        }
        let current = state
            .updater
            .latest(&r.package, &r.channel)
            .map(|l| l.sequence);
        if current.is_some_and(|c| c >= r.sequence as u64) {
            continue;
        }
        if let Err(e) = api::publish_now(state, r, db::Actor::internal("system")).await {
            tracing::warn!(id = r.id, error = ?e, "could not republish a release");
        }
    }
}

/// On first start (no tokens at all), creates an admin token and writes it to
/// `<data_dir>/admin.token` (mode 0600).
async fn bootstrap_admin(state: &AppState) -> Result<(), StartError> {
    if state.db.token_count().await? > 0 {
        return Ok(());
    }
    if let Some(path) = &state.config.admin_token_file {
        let token = meshara_core::keystore::read_passphrase_file(path)
            .map_err(|e| StartError::Other(format!("admin_token_file: {e}")))?;
        let token = String::from_utf8(token)
            .ok()
            .filter(|t| auth::is_token_shaped(t) && t.len() >= 36)
            .ok_or_else(|| {
                StartError::Other(format!(
                    "admin_token_file {}: a token is `mat_` and 32..=124 more letters or digits",
                    path.display()
                ))
            })?;
        let id = auth::insert_token(&state.db, "admin", auth::Role::Admin, &token).await?;
        state
            .db
            .audit(
                db::Actor::internal("system"),
                "token.create",
                &id,
                "admin as admin (first start, from admin_token_file)",
            )
            .await?;
        tracing::info!(path = %path.display(), "the first admin token is the one in admin_token_file");
        return Ok(());
    }
    let (id, token) = auth::create_token(&state.db, "admin", auth::Role::Admin).await?;
    let path = state.config.data_dir.join(ADMIN_TOKEN_FILE);
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| StartError::Other(format!("writing {}: {e}", path.display())))?;
        f.write_all(token.as_bytes())
            .map_err(|e| StartError::Other(format!("writing {}: {e}", path.display())))?;
    }
    state
        .db
        .audit(
            db::Actor::internal("system"),
            "token.create",
            &id,
            "admin as admin (first start)",
        )
        .await?;
    tracing::info!(path = %path.display(), "created the first admin token");
    Ok(())
}

/// Writes update checks in batches.
async fn write_queries(db: Db, mut rx: mpsc::Receiver<QueryRow>, shutdown: CancellationToken) {
    let mut batch = Vec::new();
    loop {
        let first = tokio::select! {
            q = rx.recv() => q,
            () = shutdown.cancelled() => { rx.close(); rx.recv().await }
        };
        let Some(first) = first else { return };
        batch.push(first);
        while batch.len() < 512 {
            match rx.try_recv() {
                Ok(q) => batch.push(q),
                Err(_) => break,
            }
        }
        if let Err(e) = db.record_queries(&batch, QUERIES_KEPT).await {
            tracing::warn!(error = %e, "recording update checks");
        }
        batch.clear();
        if shutdown.is_cancelled() && rx.is_empty() {
            // Drain what is left, then end.
            while let Ok(q) = rx.try_recv() {
                batch.push(q);
            }
            if !batch.is_empty() {
                let _ = db.record_queries(&batch, QUERIES_KEPT).await;
            }
            return;
        }
    }
}

/// Publishes scheduled releases when they are due.
async fn scheduler(state: Arc<AppState>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let Ok(due) = state.db.due(now()).await else {
            continue;
        };
        for r in due {
            if let Err(e) = api::publish_now(&state, &r, db::Actor::internal("scheduler")).await {
                tracing::warn!(id = r.id, error = ?e, "scheduled publish failed; back to draft");
                let _ = state.db.set_status(r.id, "draft", None, None).await;
                let _ = state
                    .db
                    .audit(
                        db::Actor::internal("scheduler"),
                        "release.schedule_failed",
                        &r.id.to_string(),
                        &format!("{e:?}"),
                    )
                    .await;
            }
        }
    }
}
