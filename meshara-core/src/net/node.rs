//! The developer API: [`NodeBuilder`] → [`Node`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::config::{NodeConfig, PeerAddr};
use super::core::{
    self, Delivered, Inner, STREAM_USER, State, Wanted, close_code, unix_ms, unix_secs,
};
use super::discovery;
use super::error::{DeliveryError, QueryError, SendError, StartError, StreamError, TransportError};
use super::events::{EventStream, PeerStream, StreamListener};
use super::transport::{self, ByteStream, Dialer, StreamConnection, TransportKind};
use crate::crypto::padding::Padding;
use crate::delivery::Privacy;
use crate::identity::{Fingerprint, Identity, NodeId};
use crate::keystore::{KdfParams, Keystore};
use crate::message::MessageId;
use crate::record::{Address, Capability, NodeRecord, NodeRecordBuilder, Transport};

/// Configures and starts a [`Node`].
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use meshara_core::{Identity, NodeBuilder};
///
/// let node = NodeBuilder::new()
///     .identity(Identity::generate())
///     .listen_quic("127.0.0.1:0".parse()?)
///     .bootstrap("quic://127.0.0.1:7340".parse()?)
///     .start()
///     .await?;
/// println!("I am {}", node.node_id());
/// # Ok(()) }
/// ```
#[derive(Debug, Default)]
pub struct NodeBuilder {
    config: NodeConfig,
    identity: Option<Identity>,
    keystore: Option<(PathBuf, Vec<u8>, KdfParams)>,
    padding: Option<Padding>,
    dialers: HashMap<Transport, Arc<dyn Dialer>>,
    capabilities: Vec<Capability>,
    also_advertise: Vec<Address>,
}

impl NodeBuilder {
    /// Defaults: QUIC on `0.0.0.0:<random>`, no TCP, no mDNS, default limits.
    pub fn new() -> Self {
        Self::default()
    }

    /// Dials addresses of `transport` (Tor, I2P) through `dialer`: record addresses of that
    /// transport become reachable, and with [`NodeConfig::route_all_via`] TCP addresses are
    /// dialled through it too. Replaces an earlier dialer for the same transport.
    pub fn dialer(mut self, transport: Transport, dialer: Arc<dyn Dialer>) -> Self {
        self.dialers.insert(transport, dialer);
        self
    }

    /// Publishes `capability` in the node record (bridge capabilities are added by
    /// [`NodeConfig::bridge`] for the transports the node can dial).
    pub fn capability(mut self, capability: Capability) -> Self {
        if !self.capabilities.contains(&capability) {
            self.capabilities.push(capability);
        }
        self
    }

    /// Publishes `address` (an onion service, an I2P destination) in the node record besides
    /// [`NodeConfig::advertise`] or, when that is empty, the bound sockets.
    pub fn also_advertise(mut self, address: Address) -> Self {
        self.also_advertise.push(address);
        self
    }

    /// Starts from a full configuration (as read from TOML by `meshara run`).
    pub fn config(mut self, config: NodeConfig) -> Self {
        self.config = config;
        self
    }

    /// Uses this identity.
    pub fn identity(mut self, identity: Identity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Loads the identity from an encrypted keystore file, creating it (with a fresh identity)
    /// if it does not exist. A wrong passphrase or a damaged file is an error, never a new
    /// identity.
    pub fn keystore(mut self, path: impl Into<PathBuf>, passphrase: impl Into<Vec<u8>>) -> Self {
        self.keystore = Some((path.into(), passphrase.into(), KdfParams::default()));
        self
    }

    /// Like [`NodeBuilder::keystore`] with explicit Argon2id parameters for a new file.
    pub fn keystore_with_params(
        mut self,
        path: impl Into<PathBuf>,
        passphrase: impl Into<Vec<u8>>,
        params: KdfParams,
    ) -> Self {
        self.keystore = Some((path.into(), passphrase.into(), params));
        self
    }

    /// QUIC listening socket (default `0.0.0.0:0`, a random port on every interface).
    pub fn listen_quic(mut self, addr: SocketAddr) -> Self {
        self.config.listen_quic = Some(addr);
        self
    }

    /// No QUIC listener: the node dials out over QUIC but accepts only over TCP (if enabled).
    pub fn no_quic_listener(mut self) -> Self {
        self.config.listen_quic = None;
        self
    }

    /// TCP listening socket for TLS over TCP (off by default).
    pub fn listen_tcp(mut self, addr: SocketAddr) -> Self {
        self.config.listen_tcp = Some(addr);
        self
    }

    /// Adds a bootstrap peer, kept connected with reconnect backoff.
    pub fn bootstrap(mut self, peer: PeerAddr) -> Self {
        self.config.bootstrap.push(peer);
        self
    }

    /// Enables mDNS announcement and discovery on the local network.
    pub fn mdns(mut self, enabled: bool) -> Self {
        self.config.mdns = enabled;
        self
    }

    /// Replaces the limits.
    pub fn limits(mut self, limits: super::config::Limits) -> Self {
        self.config.limits = limits;
        self
    }

    /// Replaces the timeouts.
    pub fn timeouts(mut self, timeouts: super::config::Timeouts) -> Self {
        self.config.timeouts = timeouts;
        self
    }

    /// Padding of private messages: [`Padding::Buckets`] (default) hides message sizes from
    /// anyone who sees ciphertext; [`Padding::None`] saves bandwidth.
    pub fn padding(mut self, padding: Padding) -> Self {
        self.padding = Some(padding);
        self
    }

    /// Binds the sockets, starts discovery and returns the running node.
    pub async fn start(self) -> Result<Node, StartError> {
        let config = self.config;
        config.validate().map_err(StartError::Config)?;
        for a in &self.also_advertise {
            let mut probe = NodeConfig::default();
            probe.advertise.push(a.clone());
            probe.validate().map_err(StartError::Config)?;
        }
        if let Some(via) = config.route_all_via {
            if !self.dialers.contains_key(&via) {
                return Err(StartError::Config(format!(
                    "route_all_via = {via:?} needs a {via:?} dialer (NodeBuilder::dialer)"
                )));
            }
        }
        let (identity, keystore) = match (self.identity, self.keystore) {
            (Some(identity), _) => (identity, None),
            (None, Some(_)) if config.identity_file.is_some() => {
                return Err(StartError::Config(
                    "identity_file and a keystore are both set: choose one".into(),
                ));
            }
            (None, Some((path, passphrase, params))) => {
                let store = Keystore::new(&path);
                let (identity, created) = store.load_or_create(&passphrase, params, unix_secs())?;
                if created {
                    tracing::info!(path = %path.display(), node = %identity.node_id(), "created a new identity");
                }
                (identity, Some(path))
            }
            (None, None) => match config.identity_file.as_deref() {
                Some(path) => {
                    let identity = crate::keyfile::read_identity_file(path)?;
                    tracing::info!(path = %path.display(), node = %identity.node_id(), "identity from key file");
                    (identity, None)
                }
                None => return Err(StartError::NoIdentity),
            },
        };
        let identity = Arc::new(identity);

        let mut transport_config = quinn::TransportConfig::default();
        transport_config
            .max_concurrent_bidi_streams(config.limits.max_streams_per_connection.into())
            .max_concurrent_uni_streams(0u32.into())
            // A backstop only: the node's own pings (jittered, `timeouts.keepalive`) keep
            // ready connections busy, and QUIC PINGs on a fixed beat would be a pattern.
            .keep_alive_interval(Some(
                config.timeouts.keepalive
                    + config
                        .timeouts
                        .idle
                        .saturating_sub(config.timeouts.keepalive)
                        / 2,
            ))
            .max_idle_timeout(Some(
                quinn::IdleTimeout::try_from(config.timeouts.idle)
                    .map_err(|e| StartError::Config(format!("timeouts.idle: {e}")))?,
            ));
        let quic_transport = Arc::new(transport_config);
        let server_config = transport::quic_server_config(&identity, quic_transport.clone())?;
        let bind = |addr: SocketAddr| -> Result<quinn::Endpoint, StartError> {
            quinn::Endpoint::server(server_config.clone(), addr)
                .map_err(|error| StartError::Bind { addr, error })
        };
        // Without a QUIC listener we still need an endpoint to dial from.
        let endpoint = match config.listen_quic {
            Some(addr) => bind(addr)?,
            None => {
                let addr = SocketAddr::from(([0, 0, 0, 0], 0));
                quinn::Endpoint::client(addr).map_err(|error| StartError::Bind { addr, error })?
            }
        };
        let local_quic = match config.listen_quic {
            Some(_) => Some(endpoint.local_addr().map_err(|error| {
                StartError::Bind {
                    addr: config
                        .listen_quic
                        .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
                    error,
                }
            })?),
            None => None,
        };
        let tcp_listener = match config.listen_tcp {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|error| StartError::Bind { addr, error })?,
            ),
            None => None,
        };
        let local_tcp = match &tcp_listener {
            Some(l) => Some(l.local_addr().map_err(|error| {
                StartError::Bind {
                    addr: config
                        .listen_tcp
                        .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
                    error,
                }
            })?),
            None => None,
        };

        let mut capabilities = self.capabilities;
        if config.bridge.enabled {
            for (transport, capability) in [
                (Transport::Tor, Capability::BridgeTor),
                (Transport::I2p, Capability::BridgeI2p),
            ] {
                if self.dialers.contains_key(&transport) && !capabilities.contains(&capability) {
                    capabilities.push(capability);
                }
            }
        }
        let record = sign_record(
            &identity,
            &config,
            &capabilities,
            &self.also_advertise,
            local_quic,
            local_tcp,
        )?;
        let (events, _) = broadcast::channel(config.limits.event_buffer);
        let (topology, _) = watch::channel(0);
        let stream_tls = transport::stream_server_config(&identity)?;
        let mut state = State::new(&config, &identity.node_id());
        let now = Instant::now();
        // A shared bootstrap list (every seed of a deployment) may name this node itself.
        for addr in config
            .bootstrap
            .iter()
            .filter(|a| a.node != Some(identity.node_id()))
        {
            state.wanted.push(Wanted {
                addr: addr.clone(),
                node: addr.node,
                backoff: config.timeouts.reconnect_min,
                next_attempt: now,
                dialing: false,
                last_error: None,
                reached: false,
            });
        }
        let inner = Arc::new_cyclic(|weak| Inner {
            identity: identity.clone(),
            padding: self.padding.unwrap_or(Padding::Buckets),
            metrics: super::metrics::Metrics::new(config.bridge.enabled),
            totals: Default::default(),
            events,
            state: Mutex::new(state),
            record: RwLock::new(record),
            endpoint,
            quic_transport,
            stream_tls,
            local_quic,
            local_tcp,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            started_at: now,
            broadcast_seq: AtomicU64::new(unix_ms()),
            handshake_ts: AtomicU64::new(0),
            dial_scopes: std::sync::atomic::AtomicU8::new(0),
            stream_handshakes: Mutex::new(std::collections::VecDeque::new()),
            handshake_guard: Mutex::new(crate::crypto::session::HandshakeGuard::new(
                config.limits.max_records,
            )),
            next_conn_id: AtomicU64::new(1),
            streams: Mutex::new(Default::default()),
            topology,
            inbound_seen: AtomicBool::new(false),
            keystore,
            mdns: Mutex::new(None),
            onion_forwards: Arc::new(tokio::sync::Semaphore::new(config.onion.max_forwards)),
            dialers: self.dialers,
            circuits: Default::default(),
            weak: weak.clone(),
            config,
        });
        if inner.local_quic.is_some() {
            inner.tasks.spawn(core::quic_accept_loop(inner.clone()));
        }
        if let Some(listener) = tcp_listener {
            inner
                .tasks
                .spawn(core::tcp_accept_loop(inner.clone(), listener));
        }
        inner.tasks.spawn(inner.clone().maintenance());
        // The ranges this node is evidently on: where it listens, what it advertises, where
        // its bootstrap peers are (`NodeConfig::dial_private`).
        let configured = inner
            .config
            .advertise
            .iter()
            .chain(inner.config.bootstrap.iter().map(|b| &b.address))
            .filter_map(|a| {
                a.host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .ok()
            });
        for ip in [inner.local_quic, inner.local_tcp]
            .into_iter()
            .flatten()
            .map(|a| a.ip())
            .chain(configured)
        {
            inner.note_scope(ip);
        }
        if inner.config.mdns {
            if let Err(e) = discovery::start_mdns(&inner) {
                // Do not leave the sockets and tasks of a node that failed to start running.
                inner.stop().await;
                return Err(StartError::Config(e));
            }
        }
        tracing::info!(
            node = %identity.node_id(),
            quic = ?inner.local_quic,
            tcp = ?inner.local_tcp,
            "node started"
        );
        Ok(Node { inner })
    }
}

fn sign_record(
    identity: &Identity,
    config: &NodeConfig,
    capabilities: &[Capability],
    also: &[Address],
    quic: Option<SocketAddr>,
    tcp: Option<SocketAddr>,
) -> Result<NodeRecord, StartError> {
    let mut builder = NodeRecordBuilder::new(identity, unix_ms())
        .agent(config.agent.clone())
        .unlisted(config.unlisted);
    if config.onion.relay {
        builder = builder.capability(Capability::Relay);
    }
    for c in capabilities {
        builder = builder.capability(*c);
    }
    let mut addresses: Vec<Address> = config.advertise.clone();
    if addresses.is_empty() {
        for (transport, addr) in [(Transport::Quic, quic), (Transport::Tcp, tcp)] {
            if let Some(addr) = addr.filter(|a| !a.ip().is_unspecified()) {
                addresses.push(Address {
                    transport,
                    host: addr.ip().to_string(),
                    port: addr.port(),
                });
            }
        }
    }
    addresses.extend(also.iter().cloned());
    for a in addresses {
        builder = builder.address(a.transport, a.host, a.port);
    }
    Ok(builder.sign(unix_secs())?)
}

/// A running Meshara node. Cheap to clone (an `Arc`), usable from any thread or task.
///
/// Dropping every clone does not stop the node's background tasks; call [`Node::stop`].
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("node_id", &self.inner.identity.node_id())
            .finish_non_exhaustive()
    }
}

/// A private message on its way; await [`PendingDelivery::confirmed`] for the end-to-end
/// acknowledgement (or watch for [`crate::Event::DeliveryConfirmed`]).
#[derive(Debug)]
pub struct PendingDelivery {
    id: MessageId,
    rx: oneshot::Receiver<Result<Delivered, DeliveryError>>,
}

impl PendingDelivery {
    /// The message id.
    pub fn id(&self) -> MessageId {
        self.id
    }

    /// Waits for the recipient's acknowledgement, or for delivery to fail after every retry.
    pub async fn confirmed(self) -> Result<Delivered, DeliveryError> {
        self.rx
            .await
            .unwrap_or(Err(DeliveryError::Stopped(self.id)))
    }
}

/// One broadcast topic this node carries, as reported by [`Node::topics`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct TopicInfo {
    /// The topic.
    pub topic: String,
    /// Its active view: the neighbours broadcasts travel to.
    pub active: Vec<NodeId>,
    /// Neighbours that receive broadcasts in full (the rest get announcements).
    pub eager: usize,
    /// Standby peers the active view is repaired from.
    pub passive: usize,
    /// Deliveries, duplicates, grafts, prunes and penalties so far.
    pub stats: crate::routing::gossip::TopicStats,
}

/// One connected peer, as reported by [`Node::peers`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct PeerInfo {
    /// The peer.
    pub node_id: NodeId,
    /// Its transport (of the newest connection).
    pub transport: TransportKind,
    /// Its address.
    pub addr: Option<SocketAddr>,
    /// Whether it dialed us.
    pub inbound: bool,
    /// Open connections to it.
    pub connections: usize,
    /// Connected for this long.
    pub connected_for: Duration,
    /// Transport round-trip time, if measured.
    pub rtt: Option<Duration>,
    /// Software it announced.
    pub agent: Option<String>,
    /// Envelopes received from it.
    pub messages_in: u64,
    /// Envelopes sent to it.
    pub messages_out: u64,
    /// Bytes received from it.
    pub bytes_in: u64,
    /// Bytes sent to it.
    pub bytes_out: u64,
    /// Its messages dropped by rate limits.
    pub dropped: u64,
}

/// Node-wide counters, as reported by [`Node::stats`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NetworkStats {
    /// Connected peers.
    pub peers: usize,
    /// Open connections.
    pub connections: usize,
    /// Inbound TLS handshakes in progress.
    pub pending_handshakes: usize,
    /// Node records known.
    pub known_nodes: usize,
    /// Private messages awaiting acknowledgement.
    pub outbox: usize,
    /// Envelopes received.
    pub messages_in: u64,
    /// Envelopes sent.
    pub messages_out: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Time since start.
    pub uptime: Duration,
}

/// Health of a node, as reported by [`Node::diagnostics`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Diagnostics {
    /// Sockets the node listens on.
    pub listening: Vec<(TransportKind, SocketAddr)>,
    /// Whether another node has connected to us (evidence we are reachable from outside).
    pub inbound_reachable: bool,
    /// Bootstrap peers and whether each is reachable now.
    pub bootstrap: Vec<BootstrapStatus>,
    /// Whether the data directory (and keystore, when used) can be written.
    pub storage_ok: bool,
    /// What is wrong with storage, if anything.
    pub storage_error: Option<String>,
    /// Connected peers.
    pub peers: usize,
}

/// Reachability of one bootstrap peer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BootstrapStatus {
    /// The configured address.
    pub addr: PeerAddr,
    /// Connected, or a fresh dial succeeded.
    pub reachable: bool,
    /// The last error, when not reachable.
    pub error: Option<String>,
}

impl Node {
    /// Shorthand for [`NodeBuilder::new`].
    pub fn builder() -> NodeBuilder {
        NodeBuilder::new()
    }

    #[cfg(test)]
    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    /// Whether the node is running (false once [`Node::stop`] began).
    pub fn is_running(&self) -> bool {
        !self.inner.lock().stopped
    }

    /// This node's NodeId.
    pub fn node_id(&self) -> NodeId {
        self.inner.identity.node_id()
    }

    /// This node's human fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        self.inner.identity.fingerprint()
    }

    /// Publishes `agent` (software name and version, at most 64 bytes, such as
    /// `myapp/1.4.0` after installing that release) in a newly signed record. Peers and
    /// explorers see it as they next fetch the node's record.
    pub fn set_agent(&self, agent: &str) -> Result<(), crate::record::RecordError> {
        self.inner.resign_record(Some(agent)).map(|_| ())
    }

    /// This node's signed record (addresses, keys, capabilities).
    pub fn record(&self) -> NodeRecord {
        self.inner
            .record
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The address others can dial this node at over QUIC, with its NodeId.
    pub fn quic_addr(&self) -> Option<PeerAddr> {
        self.inner
            .local_quic
            .map(|a| peer_addr(self.node_id(), Transport::Quic, a))
    }

    /// The address others can dial this node at over TCP, with its NodeId.
    pub fn tcp_addr(&self) -> Option<PeerAddr> {
        self.inner
            .local_tcp
            .map(|a| peer_addr(self.node_id(), Transport::Tcp, a))
    }

    /// Exports the identity as a passphrase-protected armored bundle (to move it to another
    /// machine; import with [`Identity::import_bundle`] and [`NodeBuilder::identity`]).
    pub fn export_identity(&self, passphrase: &[u8]) -> Result<String, crate::KeystoreError> {
        self.inner
            .identity
            .export_bundle(passphrase, KdfParams::default(), unix_secs())
    }

    /// Subscribes to the node's events.
    pub fn events(&self) -> EventStream {
        EventStream::new(self.inner.events.subscribe())
    }

    /// Sends an end-to-end encrypted message to `peer`, dialing it if needed. Returns once the
    /// message is queued; [`PendingDelivery::confirmed`] waits for the acknowledgement.
    /// Waits (does not fail) while the peer's connection queue is full.
    pub async fn send_private(
        &self,
        peer: NodeId,
        content_type: &str,
        content: impl Into<Bytes>,
    ) -> Result<PendingDelivery, SendError> {
        self.send_private_with(peer, content_type, content, Privacy::Direct)
            .await
    }

    /// Sends an end-to-end encrypted message to `peer` the way `privacy` says:
    /// [`Privacy::Direct`] is [`Node::send_private`]; [`Privacy::Onion`] routes it through
    /// `onion.hops` relays (at least 3) in fixed-size packets, so no relay learns both ends.
    /// Onion-routed content is limited to what fits in one packet (about 7 KiB; a larger one
    /// gives [`SendError::TooLarge`] with the exact limit), and needs `onion.hops` known relays
    /// ([`SendError::TooFewRelays`]). Its acknowledgement comes back over a circuit of the
    /// recipient's.
    ///
    /// [`Privacy::Tor`] and [`Privacy::I2p`] send it only over a connection whose first hop
    /// is that transport: to the recipient's `.onion` / `.b32.i2p` address (for Tor also its
    /// TCP address through an exit), or through a bridge reached that way. The node dials such a
    /// route when it has none, never falls back to another transport, and without a dialer for
    /// it fails at once with [`SendError::NoTransport`]. The recipient sees the transport it
    /// arrived on in [`ReceivedMessage::via`](crate::net::ReceivedMessage::via).
    pub async fn send_private_with(
        &self,
        peer: NodeId,
        content_type: &str,
        content: impl Into<Bytes>,
        privacy: Privacy,
    ) -> Result<PendingDelivery, SendError> {
        let (id, rx) = self
            .inner
            .send_private(peer, content_type, content.into(), privacy)
            .await?;
        Ok(PendingDelivery { id, rx })
    }

    /// Signs and sends a broadcast on `topic` to the network. Returns its id.
    pub fn broadcast(
        &self,
        topic: &str,
        content_type: &str,
        content: impl Into<Bytes>,
    ) -> Result<MessageId, SendError> {
        self.inner.broadcast(topic, content_type, content.into())
    }

    /// Asks `peer` a query and waits up to `timeout` for its answer.
    pub async fn query(
        &self,
        peer: NodeId,
        method: &str,
        body: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<Bytes, QueryError> {
        self.inner.query(peer, method, body.into(), timeout).await
    }

    /// Opens a bidirectional byte stream to `peer` for `protocol` (1..=255 bytes), connecting
    /// first if needed. The peer must be listening with [`Node::listen_streams`].
    pub async fn open_stream(
        &self,
        peer: NodeId,
        protocol: &str,
    ) -> Result<PeerStream, StreamError> {
        let name = protocol.as_bytes();
        if name.is_empty() || name.len() > 255 {
            return Err(StreamError::InvalidProtocol);
        }
        let conn = self.inner.ready_conn(peer).await?;
        self.inner.mark_streams(&peer);
        let (mut send, recv) = conn.open_bi().await?;
        let mut header = Vec::with_capacity(2 + name.len());
        header.push(STREAM_USER);
        header.push(name.len() as u8);
        header.extend_from_slice(name);
        send.write_all(&header)
            .await
            .map_err(TransportError::from)?;
        Ok(PeerStream::new(peer, protocol.to_owned(), send, recv))
    }

    /// Accepts byte streams peers open for `protocol`. Replaces an earlier listener for the
    /// same protocol. At most 64 unaccepted streams wait; more are reset.
    pub fn listen_streams(&self, protocol: &str) -> StreamListener {
        let (tx, rx) = mpsc::channel(64);
        self.inner
            .streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(protocol.to_owned(), tx);
        StreamListener {
            protocol: protocol.to_owned(),
            rx,
        }
    }

    /// Connects to `addr` now and keeps the connection (in addition to discovery). Returns the
    /// peer's NodeId. With a NodeId in the address, a different key fails the handshake.
    pub async fn connect(&self, addr: &PeerAddr) -> Result<NodeId, TransportError> {
        let node = self.inner.connect(addr).await?;
        self.inner.lock().pinned.insert(node);
        // Wait until the peer's record arrived so messages can flow at once.
        self.wait_ready(node).await?;
        Ok(node)
    }

    /// Adds a peer to keep connected (reconnecting with backoff) and dials it.
    pub fn add_peer(&self, addr: PeerAddr) {
        let mut st = self.inner.lock();
        if st.wanted.iter().any(|w| w.addr == addr) {
            return;
        }
        st.wanted.push(Wanted {
            node: addr.node,
            addr,
            backoff: self.inner.config.timeouts.reconnect_min,
            next_attempt: Instant::now(),
            dialing: false,
            last_error: None,
            reached: false,
        });
    }

    /// Stops keeping `peer` connected and closes its connections.
    pub fn remove_peer(&self, peer: NodeId) {
        let conns = {
            let mut st = self.inner.lock();
            st.wanted.retain(|w| w.node != Some(peer));
            st.pinned.remove(&peer);
            st.peers
                .get(&peer)
                .map(|p| p.conns.iter().map(|c| c.conn.clone()).collect::<Vec<_>>())
                .unwrap_or_default()
        };
        for c in conns {
            c.close(close_code::REMOVED, "removed by operator");
        }
    }

    /// Bans `peer`: closes its connections, refuses new ones and drops its messages.
    pub fn ban_peer(&self, peer: NodeId) {
        self.inner.lock().banned.insert(peer);
        self.remove_peer(peer);
        tracing::info!(%peer, "peer banned");
    }

    /// Lifts a ban.
    pub fn unban_peer(&self, peer: NodeId) {
        self.inner.lock().banned.remove(&peer);
    }

    /// The signed record this node holds for `peer`, if any (learned from a connection, peer
    /// exchange or a DHT lookup).
    pub fn record_of(&self, peer: &NodeId) -> Option<NodeRecord> {
        self.inner.lock().records.get(peer).cloned()
    }

    /// Asks `peer` once for the signed records it holds closest to `target` (one DHT
    /// `FindNode` request, connecting to the peer first if needed). Every returned record has
    /// been verified (signature, validity period) and at most 20 come back; the records also
    /// enter this node's record book and routing table, as any answer does. `None` when the
    /// peer cannot be reached or does not answer in time.
    ///
    /// This is the building block of a crawler or of a lookup that shows its rounds; for
    /// sending, [`Node::send_private`] finds peers by itself.
    /// `target` is any point of the 256-bit id space (it need not be a valid public key).
    pub async fn find_node(&self, peer: NodeId, target: [u8; 32]) -> Option<Vec<NodeRecord>> {
        if peer == self.node_id() {
            return None;
        }
        self.inner.clone().find_node(peer, target).await
    }

    /// Up to `count` NodeIds from this node's DHT routing table, closest to `target` first (XOR
    /// distance): where a Kademlia lookup for `target` starts.
    pub fn closest_peers(&self, target: &[u8; 32], count: usize) -> Vec<NodeId> {
        self.inner
            .lock()
            .kad
            .closest(target, count)
            .into_iter()
            .map(|(_, id)| id)
            .collect()
    }

    /// The NodeIds in this node's DHT routing table (what it answers `FindNode` requests
    /// from).
    pub fn routing_table(&self) -> Vec<NodeId> {
        self.inner.lock().kad.iter().map(|(_, id)| id).collect()
    }

    /// The broadcast topics this node carries, with their overlay neighbours and counters.
    pub fn topics(&self) -> Vec<TopicInfo> {
        let st = self.inner.lock();
        let mut out: Vec<TopicInfo> = st
            .gossip
            .topics
            .iter()
            .map(|(name, t)| TopicInfo {
                topic: name.clone(),
                active: t.active().to_vec(),
                eager: t.eager().count(),
                passive: t.passive().len(),
                stats: t.stats(),
            })
            .collect();
        out.sort_by(|a, b| a.topic.cmp(&b.topic));
        out
    }

    /// Connected peers with their statistics.
    pub fn peers(&self) -> Vec<PeerInfo> {
        let st = self.inner.lock();
        let mut out: Vec<PeerInfo> = st
            .peers
            .iter()
            .filter(|(_, p)| p.announced)
            .filter_map(|(id, p)| {
                let newest = p.conns.iter().rev().find(|c| c.ready)?;
                let c = &p.counters;
                Some(PeerInfo {
                    node_id: *id,
                    transport: newest.conn.kind(),
                    addr: newest.conn.remote_addr(),
                    inbound: newest.inbound,
                    connections: p.conns.len(),
                    connected_for: p.connected_at.elapsed(),
                    rtt: newest.conn.rtt(),
                    agent: p.record.as_ref().map(|r| r.agent().to_owned()),
                    messages_in: c.messages_in.load(Ordering::Relaxed),
                    messages_out: c.messages_out.load(Ordering::Relaxed),
                    bytes_in: c.bytes_in.load(Ordering::Relaxed),
                    bytes_out: c.bytes_out.load(Ordering::Relaxed),
                    dropped: c.drops.load(Ordering::Relaxed),
                })
            })
            .collect();
        out.sort_by_key(|p| *p.node_id.as_bytes());
        out
    }

    /// Node-wide statistics.
    pub fn stats(&self) -> NetworkStats {
        let st = self.inner.lock();
        let t = &self.inner.totals;
        NetworkStats {
            peers: st.peers.values().filter(|p| p.announced).count(),
            connections: st.peers.values().map(|p| p.conns.len()).sum(),
            pending_handshakes: st.pending_handshakes,
            known_nodes: st.records.len(),
            outbox: st.outbox.len(),
            messages_in: t.messages_in.load(Ordering::Relaxed),
            messages_out: t.messages_out.load(Ordering::Relaxed),
            bytes_in: t.bytes_in.load(Ordering::Relaxed),
            bytes_out: t.bytes_out.load(Ordering::Relaxed),
            uptime: self.inner.started_at.elapsed(),
        }
    }

    /// Prometheus text exposition of the node's metrics.
    pub fn metrics_text(&self) -> String {
        self.inner.metrics.encode()
    }

    /// How many times something was dropped for `reason` (the `meshara_drops_total` counter).
    pub fn drops(&self, reason: super::metrics::DropReason) -> u64 {
        self.inner.metrics.drop_count(reason)
    }

    /// Checks reachability, bootstrap peers (dialing those not connected) and storage.
    pub async fn diagnostics(&self) -> Diagnostics {
        let mut listening = Vec::new();
        if let Some(a) = self.inner.local_quic {
            listening.push((TransportKind::Quic, a));
        }
        if let Some(a) = self.inner.local_tcp {
            listening.push((TransportKind::Tcp, a));
        }
        let own = self.node_id();
        let bootstrap_addrs: Vec<PeerAddr> = (self.inner.config.bootstrap.iter())
            .filter(|a| a.node != Some(own))
            .cloned()
            .collect();
        let mut bootstrap = Vec::new();
        for addr in bootstrap_addrs {
            let connected = addr.node.is_some_and(|n| self.inner.lock().is_ready(&n));
            let (reachable, error) = if connected {
                (true, None)
            } else {
                match self.inner.connect(&addr).await {
                    Ok(_) => (true, None),
                    Err(e) => (false, Some(e.to_string())),
                }
            };
            bootstrap.push(BootstrapStatus {
                addr,
                reachable,
                error,
            });
        }
        let storage = check_storage(
            self.inner.config.data_dir.as_deref(),
            self.inner.keystore.as_deref(),
        );
        Diagnostics {
            listening,
            inbound_reachable: self.inner.inbound_seen.load(Ordering::Relaxed),
            bootstrap,
            storage_ok: storage.is_ok(),
            storage_error: storage.err(),
            peers: self.peers().len(),
        }
    }

    /// Runs TLS (client side) over an already-connected byte stream — a Tor or I2P stream, a
    /// pipe — and registers the connection like any other. `expected` is checked in the
    /// handshake when given.
    pub async fn connect_stream<S: ByteStream>(
        &self,
        io: S,
        expected: Option<NodeId>,
    ) -> Result<NodeId, TransportError> {
        self.connect_stream_as(io, expected, TransportKind::Stream)
            .await
    }

    /// [`Node::connect_stream`], labelling the connection with the transport underneath
    /// ([`TransportKind::Tor`], [`TransportKind::I2p`], …) in peers, events and metrics.
    pub async fn connect_stream_as<S: ByteStream>(
        &self,
        io: S,
        expected: Option<NodeId>,
        kind: TransportKind,
    ) -> Result<NodeId, TransportError> {
        let handshake = StreamConnection::connect(io, &self.inner.identity, expected, kind, None);
        self.inner
            .register_stream(handshake, false, None, None)
            .await
    }

    /// Runs TLS (server side) over a byte stream a peer opened to us (for example an incoming
    /// onion-service stream) and registers the connection. Returns the caller's NodeId.
    pub async fn accept_stream<S: ByteStream>(&self, io: S) -> Result<NodeId, TransportError> {
        self.accept_stream_as(io, TransportKind::Stream).await
    }

    /// Whether this node dials `address` when it learns it from another node's record
    /// ([`NodeConfig::dial_private`](super::config::NodeConfig::dial_private)): public
    /// addresses and host names yes; loopback, private and link-local ones only on a network
    /// of that kind or when allowed; unspecified, multicast and broadcast ones never. Tools
    /// that dial record addresses themselves (a crawler) use it to apply the same policy.
    pub fn may_dial_learned(&self, address: &Address) -> bool {
        self.inner.may_dial_learned(address)
    }

    /// Accepts an inbound byte stream in the background: the accept loop of an overlay
    /// transport (Tor, I2P, …) hands each stream over and goes straight back to accepting, so
    /// a stream that never speaks cannot block it.
    ///
    /// At most [`Limits::max_pending_stream_handshakes`](super::config::Limits) of these
    /// handshakes run at once; a new stream beyond that evicts the one that has waited longest
    /// (counted as `max_pending_handshakes`). Overlay streams carry no address to hold an
    /// attacker to, so the defence is to make stalling cost: to keep honest clients out, an
    /// attacker has to open streams faster than an honest handshake finishes. Each handshake
    /// is abandoned after `timeouts.connect`.
    pub fn spawn_accept_stream<S: ByteStream>(&self, io: S, kind: TransportKind) {
        let inner = self.inner.clone();
        let id = inner.next_conn_id.fetch_add(1, Ordering::Relaxed);
        let cancel = CancellationToken::new();
        let evicted = {
            let mut pending = inner
                .stream_handshakes
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            pending.push_back((id, cancel.clone()));
            let max = inner.config.limits.max_pending_stream_handshakes;
            let mut evicted = Vec::new();
            while pending.len() > max {
                evicted.extend(pending.pop_front());
            }
            evicted
        };
        for (_, oldest) in evicted {
            oldest.cancel();
            inner.count_drop(
                super::metrics::DropReason::MaxPendingHandshakes,
                None,
                &format!("oldest pending {} handshake evicted", kind.as_str()),
            );
        }
        let tasks = inner.tasks.clone();
        tasks.spawn(async move {
            let handshake = StreamConnection::accept(io, inner.stream_tls.clone(), kind, None);
            let result = tokio::select! {
                r = inner.register_stream(handshake, true, None, None) => Some(r),
                () = cancel.cancelled() => None,
                () = inner.shutdown.cancelled() => None,
            };
            inner
                .stream_handshakes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|(i, _)| *i != id);
            match result {
                Some(Ok(peer)) => tracing::debug!(%peer, transport = kind.as_str(), "stream connection accepted"),
                Some(Err(e)) => tracing::debug!(error = %e, transport = kind.as_str(), "stream handshake failed"),
                None => {}
            }
        });
    }

    /// [`Node::accept_stream`], labelling the connection with the transport underneath.
    pub async fn accept_stream_as<S: ByteStream>(
        &self,
        io: S,
        kind: TransportKind,
    ) -> Result<NodeId, TransportError> {
        let handshake = StreamConnection::accept(io, self.inner.stream_tls.clone(), kind, None);
        self.inner
            .register_stream(handshake, true, None, None)
            .await
    }

    /// Connects to `target` through a circuit relayed by `bridge` (a node that sets
    /// [`Bridge::enabled`](crate::net::Bridge)), and keeps the end-to-end connection. The node
    /// does this by itself when a peer's record lists only addresses it cannot dial; this is for
    /// choosing the bridge. Fails with [`TransportError::CircuitRefused`] when the bridge says
    /// no, with its reason.
    pub async fn connect_via(
        &self,
        bridge: NodeId,
        target: NodeId,
    ) -> Result<NodeId, TransportError> {
        let peer = self.inner.connect_via(bridge, target).await?;
        self.wait_ready(peer).await?;
        Ok(peer)
    }

    /// Waits until the connection to `peer` is usable (its record has arrived on it).
    async fn wait_ready(&self, peer: NodeId) -> Result<(), TransportError> {
        let mut topology = self.inner.topology.subscribe();
        let deadline = tokio::time::Instant::now() + self.inner.config.timeouts.connect;
        while !self.inner.lock().is_ready(&peer) {
            tokio::select! {
                r = topology.changed() => if r.is_err() { break },
                () = tokio::time::sleep_until(deadline) => return Err(TransportError::Timeout(self.inner.config.timeouts.connect)),
            }
        }
        Ok(())
    }

    /// Stops the node gracefully: closes connections with a reason, fails pending deliveries
    /// and queries with `Stopped`, and waits (bounded) for background tasks.
    pub async fn stop(&self) {
        discovery::stop_mdns(&self.inner);
        self.inner.stop().await;
    }
}

fn peer_addr(node: NodeId, transport: Transport, addr: SocketAddr) -> PeerAddr {
    PeerAddr {
        node: Some(node),
        address: Address {
            transport,
            host: addr.ip().to_string(),
            port: addr.port(),
        },
    }
}

fn check_storage(
    data_dir: Option<&std::path::Path>,
    keystore: Option<&std::path::Path>,
) -> Result<(), String> {
    let dir = match (data_dir, keystore.and_then(|k| k.parent())) {
        (Some(d), _) => d.to_path_buf(),
        (None, Some(d)) => d.to_path_buf(),
        (None, None) => return Ok(()),
    };
    let probe = dir.join(format!(".meshara-probe-{}", std::process::id()));
    std::fs::write(&probe, b"probe")
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| format!("{} is not writable: {e}", dir.display()))?;
    if let Some(k) = keystore {
        std::fs::metadata(k).map_err(|e| format!("keystore {}: {e}", k.display()))?;
    }
    Ok(())
}
