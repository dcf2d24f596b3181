//! The Tor transport: an arti client, optionally an onion service with persistent keys, a
//! dialer for `tor://….onion` record addresses (and TCP addresses through exits) and an
//! accept loop feeding incoming onion streams to a node.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arti_client::config::onion_service::OnionServiceConfigBuilder;
use arti_client::config::{BoolOrAuto, CfgPath, TorClientConfigBuilder};
use arti_client::{DataStream, StreamPrefs, TorClient};
use futures_util::{Stream, StreamExt};
use meshara_core::{Address, BoxedStream, Dialer, Node, Transport, TransportError, TransportKind};
use safelog::DisplayRedacted as _;
use tokio::sync::{Mutex, Semaphore};
use tokio::task::JoinHandle;
use tor_cell::relaycell::msg::{Connected, End, EndReason};
use tor_hsservice::{RunningOnionService, StreamRequest};
use tor_proto::stream::IncomingStreamRequest;
use tor_rtcompat::PreferredRuntime;

use crate::error::{TorError, report};

/// Virtual port of the onion service, published in `tor://` addresses.
pub const DEFAULT_PORT: u16 = 7340;
/// Inbound handshakes run at once; more wait (their Tor streams stay open meanwhile).
/// How long answering one onion stream request (sending CONNECTED) may take.
const ACCEPT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Stream requests being answered at once; more are dropped (the client sees the stream
/// end) instead of waiting. The TLS handshakes after that are bounded by the node.
const MAX_ACCEPTING: usize = 256;

type Requests = Pin<Box<dyn Stream<Item = StreamRequest> + Send>>;

/// Whether a host is a v3 onion name: 56 base32 characters and `.onion`. (arti checks the
/// checksum and version when it connects.)
pub fn is_onion_host(host: &str) -> bool {
    host.strip_suffix(".onion")
        .is_some_and(|h| h.len() == 56 && h.bytes().all(|b| matches!(b, b'a'..=b'z' | b'2'..=b'7')))
}

/// Where the Tor state lives, which network to join, whether to host an onion service.
#[derive(Debug, Clone)]
pub struct TorConfig {
    /// Directory for arti's state (`tor/state`: guards, the onion service keys) and cache
    /// (`tor/cache`: directory documents). Keep `tor/state` (and back it up) to keep the
    /// `.onion` address.
    pub data_dir: PathBuf,
    /// arti's own configuration: the public Tor network by default; bridges, pluggable
    /// transports or a private network here. Its storage directories are set from
    /// `data_dir`.
    pub client: TorClientConfigBuilder,
    /// Host the node as an onion service (needed to be reached over Tor; dialing works
    /// without).
    pub onion_service: bool,
    /// The onion service's nickname: it names its keys in the keystore.
    pub nickname: String,
    /// Virtual port of the onion service, published with the address.
    pub port: u16,
    /// How long joining the network may take.
    pub bootstrap_timeout: Duration,
    /// How long opening one stream may take (an onion connect is a descriptor lookup, an
    /// introduction and a rendezvous: seconds on the public network, up to a minute).
    pub connect_timeout: Duration,
}

impl TorConfig {
    /// The public Tor network, state in `data_dir/tor`, an onion service named `meshara` on
    /// port 7340.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            data_dir: data_dir.to_owned(),
            client: TorClientConfigBuilder::default(),
            onion_service: true,
            nickname: "meshara".to_owned(),
            port: DEFAULT_PORT,
            bootstrap_timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(90),
        }
    }
}

/// The onion service's state, as arti reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnionState {
    /// No onion service is hosted.
    NotHosted,
    /// Building introduction points and publishing the descriptor.
    Starting,
    /// Published and reachable.
    Reachable,
    /// Reachable, with fewer introduction points than wanted, or replacing one.
    Degraded,
    /// Running, but some descriptor uploads failed: arti believes it unlikely to be
    /// reachable (on small networks it often is; the uploads are retried).
    Unreachable,
    /// Failed in a way arti does not recover from (or has tried to for long).
    Broken,
    /// Stopped ([`TorTransport::close`]).
    Stopped,
}

/// A snapshot of the transport's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TorStatus {
    /// The client has what it needs to build circuits.
    pub bootstrapped: bool,
    /// The onion service.
    pub onion: OnionState,
}

impl TorStatus {
    /// Bootstrapped, and the onion service (if hosted) running: neither stopped nor broken.
    /// arti's finer judgement ([`OnionState::Reachable`] and the rest) lags on small networks,
    /// where it can report "starting" or "unreachable" for minutes while clients reach the
    /// service, so it does not count here; [`TorStatus::published`] tells it.
    pub fn is_up(&self) -> bool {
        self.bootstrapped && !matches!(self.onion, OnionState::Stopped | OnionState::Broken)
    }

    /// Whether arti believes the onion service reachable (published, with introduction
    /// points): [`OnionState::Reachable`] or [`OnionState::Degraded`].
    pub fn published(&self) -> bool {
        matches!(self.onion, OnionState::Reachable | OnionState::Degraded)
    }
}

struct Shared {
    client: Arc<TorClient<PreferredRuntime>>,
    port: u16,
    connect_timeout: Duration,
    /// The onion service and its `.onion` name; dropping the service stops it.
    service: std::sync::Mutex<Option<Arc<RunningOnionService>>>,
    onion: Option<String>,
    /// Incoming streams, until [`TorTransport::serve`] takes them.
    requests: Mutex<Option<Requests>>,
    closed: AtomicBool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TorTransport")
            .field("onion", &self.onion)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// A Tor client joined to the network, and optionally an onion service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TorTransport {
    shared: Arc<Shared>,
}

fn private_dir(path: &Path) -> Result<(), TorError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(path).map_err(|e| TorError::DataDir {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

impl TorTransport {
    /// Joins the Tor network (bounded by [`TorConfig::bootstrap_timeout`]) and, if asked,
    /// launches the onion service, creating its keys on first start and reusing them after.
    /// Returns once the client can build circuits; the service becomes reachable a little
    /// later ([`TorTransport::wait_reachable`]).
    pub async fn start(config: TorConfig) -> Result<Self, TorError> {
        let state = config.data_dir.join("tor").join("state");
        let cache = config.data_dir.join("tor").join("cache");
        private_dir(&state)?;
        private_dir(&cache)?;
        let mut builder = config.client.clone();
        builder
            .storage()
            .state_dir(CfgPath::new_literal(state))
            .cache_dir(CfgPath::new_literal(cache));
        let client_config = builder.build().map_err(|e| TorError::Config(report(&e)))?;
        let client = TorClient::builder()
            .config(client_config)
            .create_unbootstrapped()
            .map_err(|e| TorError::Config(report(&e)))?;
        // The onion service's configuration is checked before the (slow) bootstrap.
        let service_config = if config.onion_service {
            let nickname = config
                .nickname
                .parse()
                .map_err(|e| TorError::Config(format!("onion service nickname: {e}")))?;
            let service_config = OnionServiceConfigBuilder::default()
                .nickname(nickname)
                .build()
                .map_err(|e| TorError::Config(report(&e)))?;
            Some(service_config)
        } else {
            None
        };
        let step = "bootstrap";
        tokio::time::timeout(config.bootstrap_timeout, client.bootstrap())
            .await
            .map_err(|_| TorError::Timeout {
                step,
                after: config.bootstrap_timeout,
            })?
            .map_err(|e| TorError::Bootstrap(report(&e)))?;
        tracing::info!("joined the Tor network");

        let (service, onion, requests) = if let Some(service_config) = service_config {
            let (service, rend) = client
                .launch_onion_service(service_config)
                .map_err(|e| TorError::OnionService(report(&e)))?
                .ok_or(TorError::OnionService(
                    "disabled in the configuration".into(),
                ))?;
            let onion = service
                .onion_address()
                .ok_or(TorError::OnionService("the keystore holds no key".into()))?
                .display_unredacted()
                .to_string();
            tracing::info!(%onion, port = config.port, "onion service launched");
            let requests: Requests = Box::pin(tor_hsservice::handle_rend_requests(rend));
            (Some(service), Some(onion), Some(requests))
        } else {
            (None, None, None)
        };
        Ok(Self {
            shared: Arc::new(Shared {
                client,
                port: config.port,
                connect_timeout: config.connect_timeout,
                service: std::sync::Mutex::new(service),
                onion,
                requests: Mutex::new(requests),
                closed: AtomicBool::new(false),
            }),
        })
    }

    /// This node's `.onion` name, if it hosts an onion service.
    pub fn onion(&self) -> Option<&str> {
        self.shared.onion.as_deref()
    }

    /// The address to publish in the node record: `tor://<onion>:<port>`.
    pub fn address(&self) -> Option<Address> {
        self.shared.onion.as_ref().map(|host| Address {
            transport: Transport::Tor,
            host: host.clone(),
            port: self.shared.port,
        })
    }

    fn service(&self) -> Option<Arc<RunningOnionService>> {
        self.shared
            .service
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The client's and the onion service's state.
    pub fn status(&self) -> TorStatus {
        let bootstrapped = !self.shared.closed.load(Ordering::Relaxed)
            && self.shared.client.bootstrap_status().ready_for_traffic();
        let onion = match (self.shared.onion.is_some(), self.service()) {
            (false, _) => OnionState::NotHosted,
            (true, None) => OnionState::Stopped,
            (true, Some(service)) => {
                use tor_hsservice::status::State;
                match service.status().state() {
                    State::Running => OnionState::Reachable,
                    // Recovering: an introduction point died and is being replaced; the
                    // others still work.
                    State::DegradedReachable | State::Recovering => OnionState::Degraded,
                    // `Shutdown` until its components first report: still starting.
                    State::Bootstrapping | State::Shutdown => OnionState::Starting,
                    State::Broken => OnionState::Broken,
                    _ => OnionState::Unreachable,
                }
            }
        };
        TorStatus {
            bootstrapped,
            onion,
        }
    }

    /// Whether the client can build circuits and the onion service (if any) runs, neither
    /// stopped nor broken ([`TorStatus::is_up`]).
    pub fn is_up(&self) -> bool {
        self.status().is_up()
    }

    /// Waits until arti reports the onion service fully reachable (or degraded but
    /// reachable). On timeout the error tells arti's last state and problem. On the public
    /// network this follows the descriptor upload; on a small test network arti may keep
    /// reporting "bootstrapping" while clients already reach the service, so tests there
    /// should rather retry connecting.
    pub async fn wait_reachable(&self, timeout: Duration) -> Result<(), TorError> {
        let waited = tokio::time::timeout(timeout, async {
            loop {
                match self.status().onion {
                    OnionState::Reachable | OnionState::Degraded => return Ok(()),
                    OnionState::NotHosted => {
                        return Err(TorError::NoOnionService("none was launched"));
                    }
                    OnionState::Stopped => return Err(TorError::NoOnionService("it stopped")),
                    OnionState::Broken => {
                        return Err(TorError::OnionService(format!(
                            "broken: {:?}",
                            self.service()
                                .map(|s| s.status().current_problem().cloned())
                        )));
                    }
                    _ => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        })
        .await;
        match waited {
            Ok(done) => done,
            Err(_) => {
                let detail = match self.service() {
                    Some(service) => {
                        let status = service.status();
                        format!(
                            "state {:?}, problem: {:?}",
                            status.state(),
                            status.current_problem()
                        )
                    }
                    None => "stopped".to_owned(),
                };
                Err(TorError::OnionService(format!(
                    "not reachable after {timeout:?} ({detail})"
                )))
            }
        }
    }

    /// A dialer for [`NodeBuilder::dialer`](meshara_core::NodeBuilder::dialer): onion
    /// addresses end to end; TCP addresses through an exit relay (used when the node
    /// routes everything via Tor).
    pub fn dialer(&self) -> Arc<dyn Dialer> {
        Arc::new(TorDialer {
            transport: self.clone(),
        })
    }

    /// Opens a Tor stream to `host:port`: an onion service, or a host on the Internet
    /// through an exit relay (which resolves the name: nothing is looked up locally).
    pub async fn connect(&self, host: &str, port: u16) -> Result<DataStream, TorError> {
        let target = format!("{host}:{port}");
        if self.shared.closed.load(Ordering::Relaxed) {
            return Err(TorError::Connect {
                target,
                reason: "the transport is closed".into(),
            });
        }
        let mut prefs = StreamPrefs::new();
        // Every Meshara connection on circuits of its own: connections to different peers are
        // not linkable by a shared circuit, and a retry never joins an earlier attempt that
        // is stuck (arti shares a pending onion connect among streams of one isolation
        // group; one that raced the service's restart waits minutes for its rendezvous).
        prefs.new_isolation_group();
        if is_onion_host(host) {
            prefs.connect_to_onion_services(BoolOrAuto::Explicit(true));
        }
        let timeout = self.shared.connect_timeout;
        match tokio::time::timeout(
            timeout,
            self.shared.client.connect_with_prefs((host, port), &prefs),
        )
        .await
        {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(TorError::Connect {
                target,
                reason: report(&e),
            }),
            Err(_) => Err(TorError::Connect {
                target,
                reason: format!("no stream within {timeout:?}"),
            }),
        }
    }

    /// Takes the next incoming stream to the onion service's port, for callers that run
    /// their own protocol over it (the node's accept loop is [`TorTransport::serve`]).
    /// Streams to other ports are refused.
    pub async fn accept(&self) -> Result<DataStream, TorError> {
        let mut guard = self.shared.requests.lock().await;
        let requests = guard
            .as_mut()
            .ok_or(TorError::NoOnionService("its streams are served already"))?;
        loop {
            let request = requests
                .next()
                .await
                .ok_or(TorError::NoOnionService("it stopped"))?;
            if let Some(stream) = accept_request(request, self.shared.port).await {
                return Ok(stream);
            }
        }
    }

    /// Accepts incoming onion streams and hands each to `node` as a Tor connection, until
    /// the node stops, the transport closes or the handle is dropped. Handshakes run in the
    /// background ([`Node::spawn_accept_stream`]): a stalled stream never blocks the loop, and
    /// the node bounds the handshakes in progress. Failed ones are counted by the node.
    pub fn serve(&self, node: Node) -> Result<ServeHandle, TorError> {
        let mut requests = self
            .shared
            .requests
            .try_lock()
            .ok()
            .and_then(|mut guard| guard.take())
            .ok_or(TorError::NoOnionService(
                "none was launched, or its streams are served already",
            ))?;
        let port = self.shared.port;
        let task = tokio::spawn(async move {
            let accepting = Arc::new(Semaphore::new(MAX_ACCEPTING));
            while let Some(request) = requests.next().await {
                if !node.is_running() {
                    break;
                }
                // Accepting a request and the TLS handshake run in their own task, so that a
                // circuit that stalls cannot hold up the loop; the node bounds the handshakes
                // in progress and evicts the oldest (`limits.max_pending_stream_handshakes`).
                let Ok(permit) = accepting.clone().try_acquire_owned() else {
                    tracing::debug!("too many onion stream requests being answered; dropped one");
                    continue;
                };
                let node = node.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let accepted =
                        tokio::time::timeout(ACCEPT_REQUEST_TIMEOUT, accept_request(request, port))
                            .await;
                    if let Ok(Some(stream)) = accepted {
                        node.spawn_accept_stream(stream, TransportKind::Tor);
                    }
                });
            }
            tracing::debug!("onion service accept loop ended");
        });
        Ok(ServeHandle { task })
    }

    /// Stops the onion service (its keys stay on disk) and refuses further streams. The
    /// client itself shuts down once every clone of the transport is dropped.
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::Relaxed);
        drop(
            self.shared
                .service
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take(),
        );
        if let Ok(mut guard) = self.shared.requests.try_lock() {
            guard.take();
        }
    }
}

/// Accepts a stream request for `port`; refuses other ports and other kinds of request.
async fn accept_request(request: StreamRequest, port: u16) -> Option<DataStream> {
    let wanted = matches!(request.request(), IncomingStreamRequest::Begin(b) if b.port() == port);
    if !wanted {
        let _ = request
            .reject(End::new_with_reason(EndReason::CONNECTREFUSED))
            .await;
        return None;
    }
    match request.accept(Connected::new_empty()).await {
        Ok(stream) => Some(stream),
        Err(e) => {
            tracing::debug!(error = %report(&e), "accepting an onion stream failed");
            None
        }
    }
}

/// The accept loop started by [`TorTransport::serve`]; dropping it stops the loop.
#[derive(Debug)]
pub struct ServeHandle {
    task: JoinHandle<()>,
}

impl Drop for ServeHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Debug)]
struct TorDialer {
    transport: TorTransport,
}

impl Dialer for TorDialer {
    fn dial<'a>(
        &'a self,
        address: &'a Address,
    ) -> meshara_core::net::transport::BoxFuture<'a, Result<BoxedStream, TransportError>> {
        Box::pin(async move {
            match address.transport {
                Transport::Tor if is_onion_host(&address.host) => {}
                // Everything-via-Tor: TCP addresses leave through an exit.
                Transport::Tcp => {}
                _ => {
                    return Err(TransportError::Connect(format!(
                        "{address}: Tor reaches onion services and TCP addresses only"
                    )));
                }
            }
            let stream = self
                .transport
                .connect(&address.host, address.port)
                .await
                .map_err(|e| TransportError::Connect(e.to_string()))?;
            Ok(Box::new(stream) as BoxedStream)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_bad_nickname_fails_before_joining_tor() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = TorConfig::new(dir.path());
        config.nickname = "not a nickname!".into();
        let err = TorTransport::start(config).await.unwrap_err();
        assert!(matches!(err, TorError::Config(_)), "{err}");
        assert!(err.to_string().contains("nickname"), "{err}");
    }

    #[test]
    fn onion_hosts() {
        let name = "a".repeat(56);
        assert!(is_onion_host(&format!("{name}.onion")));
        assert!(!is_onion_host(&format!("{}.onion", "a".repeat(16))));
        assert!(!is_onion_host(&format!("{}.onion", "A".repeat(56))));
        assert!(!is_onion_host(&format!("{}1.onion", "a".repeat(55))));
        assert!(!is_onion_host(&name));
        assert!(!is_onion_host("127.0.0.1"));
    }
}
