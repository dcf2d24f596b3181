//! The Meshara bridge: one node on clearnet QUIC and on I2P at once, relaying circuits
//! between peers that cannot reach each other (docs/operations/bridges.md).
//!
//! A clearnet peer that wants an I2P-only peer finds the bridge through peer exchange or the
//! DHT (its record lists the `bridge_i2p` capability), asks it for a circuit, and runs TLS end
//! to end with the I2P peer through it; the bridge reaches the I2P peer over its own I2P
//! session. It works the other way round too: an I2P-only peer reaches clearnet peers through
//! the bridge's `.b32.i2p` address. The relay policy (`[node.bridge]`: allow list, circuit
//! rate, circuit caps, bandwidth) is enforced by the node itself.
//!
//! # Layout
//! - [`Config`]: TOML + `MESHARA_BRIDGE_*` environment, validated before anything starts.
//! - [`Bridge::start`]: the HTTP endpoints first (so `/healthz` answers while the I2P session
//!   builds its tunnels), then the I2P session, then the node and the I2P accept loop.
//! - `/healthz` (the process serves and has not lost its I2P session), `/readyz` (the node
//!   runs and the I2P session is up),
//!   `/metrics` (the node's Prometheus metrics and `meshara_bridge_i2p_up`).
//! - [`Bridge::shutdown`]: stops accepting, closes every connection with a reason, ends the
//!   I2P session, stops the HTTP server.

#![deny(missing_docs)]

mod config;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use meshara_core::{Identity, KdfParams, Keystore, Node, NodeBuilder, Transport};
use meshara_i2p::{I2pConfig, I2pTransport, SamError, ServeHandle};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::{Config, ConfigError, I2pSection};

/// Why the bridge did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The HTTP address could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The I2P session could not be created.
    #[error("I2P: {0}")]
    I2p(#[from] SamError),
    /// The node did not start (listeners, configuration).
    #[error("node: {0}")]
    Node(#[from] meshara_core::StartError),
    /// The keystore could not be opened (wrong passphrase, damaged file).
    #[error("keystore: {0}")]
    Keystore(#[from] meshara_core::KeystoreError),
    /// The data directory could not be created.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Creates `dir` (mode 0700 on Unix) if it does not exist.
fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Where the bridge's identity comes from.
#[derive(Debug)]
pub enum IdentitySource {
    /// The keystore at [`Config::keystore_path`], created on first start, unlocked with this
    /// passphrase.
    Keystore(Vec<u8>),
    /// A given identity (tests, or keys managed elsewhere).
    Identity(Box<Identity>),
}

#[derive(Debug, Default)]
struct Shared {
    node: OnceLock<Node>,
    i2p: OnceLock<I2pTransport>,
}

/// A running bridge.
#[derive(Debug)]
pub struct Bridge {
    shared: Arc<Shared>,
    http_addr: SocketAddr,
    http: JoinHandle<()>,
    stop_http: CancellationToken,
    accepting: Option<ServeHandle>,
}

impl Bridge {
    /// Starts the bridge: HTTP endpoints, the I2P session (this waits for the router to build
    /// tunnels), then the node, which advertises its QUIC and `.b32.i2p` addresses and the
    /// `bridge_i2p` capability.
    pub async fn start(config: Config, identity: IdentitySource) -> Result<Self, StartError> {
        let shared = Arc::new(Shared::default());
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
        let stop_http = CancellationToken::new();
        let app = Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .with_state(shared.clone());
        let stopping = stop_http.clone();
        let http = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stopping.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "HTTP server failed");
            }
        });
        let started = Self::start_node(&config, identity, &shared).await;
        let accepting = match started {
            Ok(accepting) => accepting,
            Err(e) => {
                stop_http.cancel();
                let _ = http.await;
                return Err(e);
            }
        };
        Ok(Self {
            shared,
            http_addr,
            http,
            stop_http,
            accepting: Some(accepting),
        })
    }

    async fn start_node(
        config: &Config,
        identity: IdentitySource,
        shared: &Arc<Shared>,
    ) -> Result<ServeHandle, StartError> {
        // The identity first: a wrong passphrase should fail at once, not after the I2P
        // session spent minutes building tunnels.
        let identity = match identity {
            IdentitySource::Keystore(passphrase) => {
                create_private_dir(&config.data_dir).map_err(|source| StartError::DataDir {
                    path: config.data_dir.clone(),
                    source,
                })?;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let (identity, created) = Keystore::new(config.keystore_path()).load_or_create(
                    &passphrase,
                    KdfParams::default(),
                    now,
                )?;
                if created {
                    tracing::info!(path = %config.keystore_path().display(), "created a new bridge identity");
                }
                identity
            }
            IdentitySource::Identity(identity) => *identity,
        };
        let mut i2p_config = I2pConfig::new(config.i2p.sam, &config.data_dir);
        i2p_config.session_options = config.i2p.session_options.clone();
        i2p_config.port = config.i2p.port;
        let i2p = I2pTransport::start(i2p_config).await?;
        let mut node_config = config.node.clone();
        node_config
            .data_dir
            .get_or_insert_with(|| config.data_dir.clone());
        // The clearnet addresses (the bound sockets unless the operator listed its public
        // ones) and the I2P destination.
        let builder = NodeBuilder::new()
            .config(node_config)
            .dialer(Transport::I2p, i2p.dialer())
            .also_advertise(i2p.address());
        let node = match builder.identity(identity).start().await {
            Ok(node) => node,
            Err(e) => {
                i2p.close().await;
                return Err(e.into());
            }
        };
        let accepting = i2p.serve(node.clone());
        tracing::info!(
            node = %node.node_id(),
            quic = ?node.quic_addr().map(|a| a.to_string()),
            i2p = %i2p.b32(),
            "bridge running"
        );
        let _ = shared.i2p.set(i2p);
        let _ = shared.node.set(node);
        Ok(accepting)
    }

    /// The node.
    pub fn node(&self) -> &Node {
        // Set before `start` returns.
        self.shared
            .node
            .get()
            .unwrap_or_else(|| unreachable!("the node is set before Bridge::start returns"))
    }

    /// The I2P session.
    pub fn i2p(&self) -> Option<&I2pTransport> {
        self.shared.i2p.get()
    }

    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Stops gracefully: no new I2P streams, every connection closed with a reason, the I2P
    /// session ended, the HTTP server stopped.
    pub async fn shutdown(mut self) {
        drop(self.accepting.take());
        if let Some(node) = self.shared.node.get() {
            node.stop().await;
        }
        if let Some(i2p) = self.shared.i2p.get() {
            i2p.close().await;
        }
        self.stop_http.cancel();
        let _ = (&mut self.http).await;
    }
}

/// Liveness: the process serves, and the I2P session it started has not been lost (a lost
/// session is not re-created in place; restarting the bridge restores it at the same address).
async fn healthz(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    match shared.i2p.get() {
        Some(i2p) if !i2p.is_up() => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the I2P router ended the session; restart the bridge\n",
        ),
        _ => (StatusCode::OK, "ok\n"),
    }
}

/// Readiness: the node runs and the I2P session is established.
async fn readyz(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    match (shared.node.get(), shared.i2p.get()) {
        (Some(node), Some(i2p)) if node.is_running() && i2p.is_up() => (StatusCode::OK, "ready\n"),
        (Some(node), _) if !node.is_running() => {
            (StatusCode::SERVICE_UNAVAILABLE, "node stopped\n")
        }
        (Some(_), _) => (StatusCode::SERVICE_UNAVAILABLE, "the I2P session is down\n"),
        (None, _) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "starting: waiting for the I2P session\n",
        ),
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let mut text = shared
        .node
        .get()
        .map(Node::metrics_text)
        .unwrap_or_default();
    // The node's text ends with `# EOF`; our gauge goes before it.
    if let Some(stripped) = text.strip_suffix("# EOF\n") {
        text = stripped.to_owned();
    }
    let up = u8::from(shared.i2p.get().is_some_and(I2pTransport::is_up));
    text.push_str(&format!(
        "# HELP meshara_bridge_i2p_up Whether the I2P session is established.\n\
         # TYPE meshara_bridge_i2p_up gauge\nmeshara_bridge_i2p_up {up}\n# EOF\n"
    ));
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
}
