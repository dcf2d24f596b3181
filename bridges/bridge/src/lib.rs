//! The Meshara bridge: one node on clearnet QUIC, on Tor and on I2P at once, relaying circuits
//! between peers that cannot reach each other (docs/operations/bridges.md).
//!
//! A clearnet peer that wants an onion-only or I2P-only peer finds the bridge through peer
//! exchange or the DHT (its record lists the `bridge_tor` or `bridge_i2p` capability), asks it
//! for a circuit, and runs TLS end to end with that peer through it; the bridge reaches the
//! peer over its own Tor client or I2P session. It works the other way round too: an
//! onion-only or I2P-only peer reaches clearnet peers through the bridge's `.onion` or
//! `.b32.i2p` address. The relay policy (`[node.bridge]`: allow list, circuit
//! rate, circuit caps, bandwidth) is enforced by the node itself.
//!
//! # Layout
//! - [`Config`]: TOML + `MESHARA_BRIDGE_*` environment, validated before anything starts.
//! - [`Bridge::start`]: the HTTP endpoints first (so `/healthz` answers while the I2P session
//!   builds its tunnels and Tor bootstraps), then the Tor client and onion service and the I2P
//!   session (at the same time), then the node and the accept loops.
//! - `/healthz` (the process serves, has not lost its I2P session, and its onion service has
//!   not stopped), `/readyz` (the node runs, the I2P session is up, Tor is bootstrapped),
//!   `/metrics` (the node's Prometheus metrics, `meshara_bridge_i2p_up`,
//!   `meshara_bridge_tor_up`).
//! - [`Bridge::shutdown`]: stops accepting, closes every connection with a reason, ends the
//!   I2P session and the onion service, stops the HTTP server.

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
use meshara_i2p::{I2pConfig, I2pTransport, SamError};
use meshara_tor::{TorConfig, TorError, TorTransport};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::{Config, ConfigError, I2pSection, TorSection};

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
    /// The Tor client could not join the network, or the onion service did not launch.
    #[error("Tor: {0}")]
    Tor(#[from] TorError),
    /// The node did not start (listeners, configuration).
    #[error("node: {0}")]
    Node(#[from] meshara_core::StartError),
    /// The keystore could not be opened (wrong passphrase, damaged file).
    #[error("keystore: {0}")]
    Keystore(#[from] meshara_core::KeystoreError),
    /// The identity file (`node.identity_file`) was refused.
    #[error("identity file: {0}")]
    KeyFile(#[from] meshara_core::keyfile::KeyFileError),
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
    tor: OnceLock<TorTransport>,
}

/// The accept loops; dropping them stops accepting.
#[derive(Debug)]
struct Accepting {
    _i2p: Option<meshara_i2p::ServeHandle>,
    _tor: Option<meshara_tor::ServeHandle>,
}

/// A running bridge.
#[derive(Debug)]
pub struct Bridge {
    shared: Arc<Shared>,
    http_addr: SocketAddr,
    http: JoinHandle<()>,
    stop_http: CancellationToken,
    accepting: Option<Accepting>,
}

impl Bridge {
    /// Starts the bridge: HTTP endpoints, the Tor client with its onion service and the I2P
    /// session, whichever are enabled (this waits for Tor to bootstrap and the router to build
    /// tunnels), then the node, which advertises its QUIC, `.onion` and `.b32.i2p` addresses
    /// and the `bridge_tor` and `bridge_i2p` capabilities.
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
            // Header-read timeout and connection caps, which axum::serve lacks (slowloris).
            let served = meshara_axum::serve_tcp_with_graceful_shutdown(
                listener,
                app,
                meshara_axum::ServeOptions::default(),
                async move { stopping.cancelled().await },
            )
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
    ) -> Result<Accepting, StartError> {
        // The identity first: a wrong passphrase should fail at once, not after the I2P
        // session spent minutes building tunnels.
        let identity = match (identity, config.node.identity_file.as_deref()) {
            // A key file named in the configuration wins over the keystore: nothing to unlock.
            (IdentitySource::Keystore(_), Some(path)) => {
                create_private_dir(&config.data_dir).map_err(|source| StartError::DataDir {
                    path: config.data_dir.clone(),
                    source,
                })?;
                meshara_core::keyfile::read_identity_file(path)?
            }
            (IdentitySource::Keystore(passphrase), None) => {
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
            (IdentitySource::Identity(identity), _) => *identity,
        };
        let start_i2p = async {
            if !config.i2p.enabled {
                return Ok(None);
            }
            let mut i2p_config = I2pConfig::new(config.i2p.sam, &config.data_dir);
            i2p_config.session_options = config.i2p.session_options.clone();
            i2p_config.port = config.i2p.port;
            I2pTransport::start(i2p_config).await.map(Some)
        };
        let start_tor = async {
            if !config.tor.enabled {
                return Ok(None);
            }
            let mut tor_config = TorConfig::new(&config.data_dir);
            tor_config.client = config.tor.arti.clone();
            tor_config.port = config.tor.port;
            TorTransport::start(tor_config).await.map(Some)
        };
        let (i2p, tor) = tokio::join!(start_i2p, start_tor);
        // One side failed: end the other before reporting.
        let i2p = match i2p {
            Ok(i2p) => i2p,
            Err(e) => {
                if let Ok(Some(tor)) = &tor {
                    tor.close();
                }
                return Err(e.into());
            }
        };
        let tor = match tor {
            Ok(tor) => tor,
            Err(e) => {
                if let Some(i2p) = &i2p {
                    i2p.close().await;
                }
                return Err(e.into());
            }
        };
        let mut node_config = config.node.clone();
        node_config
            .data_dir
            .get_or_insert_with(|| config.data_dir.clone());
        // The clearnet addresses (the bound sockets unless the operator listed its public
        // ones), the onion address and the I2P destination.
        let mut builder = NodeBuilder::new().config(node_config);
        if let Some(i2p) = &i2p {
            builder = builder
                .dialer(Transport::I2p, i2p.dialer())
                .also_advertise(i2p.address());
        }
        if let Some(tor) = &tor {
            builder = builder.dialer(Transport::Tor, tor.dialer());
            if let Some(onion) = tor.address() {
                builder = builder.also_advertise(onion);
            }
        }
        let node = match builder.identity(identity).start().await {
            Ok(node) => node,
            Err(e) => {
                if let Some(i2p) = &i2p {
                    i2p.close().await;
                }
                if let Some(tor) = &tor {
                    tor.close();
                }
                return Err(e.into());
            }
        };
        if config.node.bridge.allow.is_empty() {
            tracing::warn!(
                max_circuits_per_ip = config.node.bridge.max_circuits_per_ip,
                max_circuits = config.node.bridge.max_circuits,
                "OPEN RELAY: node.bridge.allow is empty, so any node may relay circuits through \
                 this bridge; per-peer limits yield to throwaway identities, per-address limits \
                 apply only to initiators on IP. Set node.bridge.allow to run a private bridge \
                 (docs/operations/bridges.md#relay-policy)"
            );
        }
        let tor_accepting = match &tor {
            Some(tor) => Some(tor.serve(node.clone())?),
            None => None,
        };
        let accepting = Accepting {
            _i2p: i2p.as_ref().map(|i2p| i2p.serve(node.clone())),
            _tor: tor_accepting,
        };
        tracing::info!(
            node = %node.node_id(),
            quic = ?node.quic_addr().map(|a| a.to_string()),
            i2p = ?i2p.as_ref().map(|i| i.b32().to_owned()),
            onion = ?tor.as_ref().and_then(|t| t.onion().map(str::to_owned)),
            "bridge running"
        );
        if let Some(i2p) = i2p {
            let _ = shared.i2p.set(i2p);
        }
        if let Some(tor) = tor {
            let _ = shared.tor.set(tor);
        }
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

    /// The I2P session, if enabled.
    pub fn i2p(&self) -> Option<&I2pTransport> {
        self.shared.i2p.get()
    }

    /// The Tor client and onion service, if enabled.
    pub fn tor(&self) -> Option<&TorTransport> {
        self.shared.tor.get()
    }

    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Stops gracefully: no new Tor or I2P streams, every connection closed with a reason,
    /// the I2P session and the onion service ended, the HTTP server stopped.
    pub async fn shutdown(mut self) {
        drop(self.accepting.take());
        if let Some(node) = self.shared.node.get() {
            node.stop().await;
        }
        if let Some(i2p) = self.shared.i2p.get() {
            i2p.close().await;
        }
        if let Some(tor) = self.shared.tor.get() {
            tor.close();
        }
        self.stop_http.cancel();
        let _ = (&mut self.http).await;
    }
}

/// Liveness: the process serves, the I2P session it started has not been lost and its onion
/// service has not stopped (neither is re-created in place; restarting the bridge restores
/// both at the same addresses).
async fn healthz(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    if shared.i2p.get().is_some_and(|i2p| !i2p.is_up()) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the I2P router ended the session; restart the bridge\n",
        );
    }
    if shared.tor.get().is_some_and(|tor| {
        matches!(
            tor.status().onion,
            meshara_tor::OnionState::Stopped | meshara_tor::OnionState::Broken
        )
    }) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the onion service stopped or broke; restart the bridge\n",
        );
    }
    (StatusCode::OK, "ok\n")
}

/// Readiness: the node runs, the I2P session is established and Tor can build circuits (for
/// the sides that are enabled).
async fn readyz(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let Some(node) = shared.node.get() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "starting: waiting for Tor and I2P\n",
        );
    };
    if !node.is_running() {
        return (StatusCode::SERVICE_UNAVAILABLE, "node stopped\n");
    }
    if shared.i2p.get().is_some_and(|i2p| !i2p.is_up()) {
        return (StatusCode::SERVICE_UNAVAILABLE, "the I2P session is down\n");
    }
    if shared.tor.get().is_some_and(|tor| !tor.is_up()) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "Tor is not bootstrapped or the onion service is down\n",
        );
    }
    (StatusCode::OK, "ready\n")
}

/// OpenMetrics when the `Accept` header prefers it (as Prometheus's does), else the classic
/// text format (`meshara_core::exposition`).
async fn metrics(
    State(shared): State<Arc<Shared>>,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    let mut text = shared
        .node
        .get()
        .map(Node::metrics_text)
        .unwrap_or_default();
    // The node's text ends with `# EOF`; our gauge goes before it.
    if let Some(stripped) = text.strip_suffix("# EOF\n") {
        text = stripped.to_owned();
    }
    let i2p = u8::from(shared.i2p.get().is_some_and(I2pTransport::is_up));
    let tor_status = shared.tor.get().map(TorTransport::status);
    let tor = u8::from(tor_status.is_some_and(|s| s.is_up()));
    let published = u8::from(tor_status.is_some_and(|s| s.published()));
    text.push_str(&format!(
        "# HELP meshara_bridge_i2p_up Whether the I2P session is established.\n\
         # TYPE meshara_bridge_i2p_up gauge\nmeshara_bridge_i2p_up {i2p}\n\
         # HELP meshara_bridge_tor_up Whether Tor is bootstrapped and the onion service runs.\n\
         # TYPE meshara_bridge_tor_up gauge\nmeshara_bridge_tor_up {tor}\n\
         # HELP meshara_bridge_tor_onion_published Whether arti believes the onion service \
         published and reachable.\n\
         # TYPE meshara_bridge_tor_onion_published gauge\n\
         meshara_bridge_tor_onion_published {published}\n# EOF\n"
    ));
    let accept = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let (content_type, body) = meshara_core::exposition::negotiate(accept, text);
    ([(axum::http::header::CONTENT_TYPE, content_type)], body)
}
