//! The node runtime: connection manager, per-connection reader and writer tasks, envelope
//! dispatch, sessions, delivery and the maintenance timer.
//!
//! All mutable node state sits in one [`State`] behind a `std::sync::Mutex`. Nothing awaits
//! while holding it: handlers decide under the lock and hand frames to connection writers
//! through byte-budgeted queues, so the lock is held for microseconds (one AEAD operation at
//! most) and the I/O happens in per-connection tasks.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use prost::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::config::{NodeConfig, PeerAddr};
use super::error::{DeliveryError, QueryError, SendError, TransportError};
use super::events::{Event, IncomingQuery, PeerStream, ReceivedMessage, Responder};
use super::gossip::Gossip;
use super::metrics::{BytesLabels, DropReason, Metrics, TransportLabels};
use super::transport::{self, Connection, RecvHalf, SendHalf, StreamConnection, TransportKind};
use crate::crypto::padding::Padding;
use crate::crypto::session::{self, HandshakeGuard, Initiator, Role, Session};
use crate::delivery::{Outbox, OutboxAction, Privacy, RetryPolicy};
use crate::identity::{Identity, NodeId};
use crate::mailbox::{Mailbox, MailboxLimits};
use crate::message::{self, MessageId};
use crate::proto;
use crate::rate::TokenBucket;
use crate::record::{NodeRecord, NodeRecordBuilder, RecordBook, RecordError, Transport};
use crate::wire::{self, FrameDecoder, PROTOCOL_VERSION};

/// First byte of a stream: envelopes follow.
pub(crate) const STREAM_ENVELOPES: u8 = 1;
/// First byte of a stream: an application byte stream (`u8` name length, name, then data).
pub(crate) const STREAM_USER: u8 = 2;

/// Connection close codes (QUIC application codes; the stream transport sends no code).
pub(crate) mod close_code {
    pub(crate) const SHUTDOWN: u32 = 0;
    pub(crate) const BANNED: u32 = 1;
    pub(crate) const TOO_MANY: u32 = 2;
    pub(crate) const PROTOCOL: u32 = 3;
    pub(crate) const ABUSE: u32 = 4;
    pub(crate) const IDLE: u32 = 5;
    pub(crate) const REMOVED: u32 = 6;
    pub(crate) const REPLACED: u32 = 7;
    pub(crate) const UNUSED: u32 = 8;
}

/// Sessions kept per peer (the newest usable one sends; any of them receives).
const SESSIONS_PER_PEER: usize = 3;
/// Deduplication memory for private messages and broadcasts.
const SEEN_CAPACITY: usize = 65_536;
/// Maintenance timer period.
const TICK: Duration = Duration::from_millis(100);
/// Largest batch of frames one writer call sends.
const WRITE_BATCH: usize = 256 * 1024;

use crate::routing::kad::{self, KadConfig, Lookup, LookupStep, RoutingTable};

/// How long a whole DHT lookup may take before the node gives up on it.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(15);
/// Store-and-forward: how many of the nodes closest to an unreachable recipient hold its
/// messages.
pub(crate) const MAILBOX_REPLICAS: usize = 3;
/// After a deposit found no holder, wait this long before trying again.
pub(crate) const DEPOSIT_RETRY: Duration = Duration::from_secs(5);
/// A routing-table bucket none of whose entries has been heard from for this long is refreshed
/// with a lookup of a random key in its range (Kademlia's bucket refresh).
const BUCKET_STALE: Duration = Duration::from_secs(15 * 60);
/// Bucket refreshes started per self-lookup round, so a node that was asleep does not start
/// one lookup per bucket at once.
const REFRESH_LOOKUPS: usize = 2;
/// How often a mailbox holder tries to reach the recipients it holds messages for.
const MAILBOX_POLL: Duration = Duration::from_secs(5);
/// Acknowledgements waiting for a connection to their message's sender, per sender.
const PENDING_ACKS_PER_PEER: usize = 1024;

/// The DHT diversity group of a record: its first IP address's /24 or /48 (see
/// [`peer_group`]).
pub(crate) fn record_group(record: &NodeRecord) -> u64 {
    peer_group(
        &record.node_id(),
        record
            .addresses()
            .iter()
            .find_map(|a| a.host.parse::<IpAddr>().ok()),
    )
}

/// The DHT diversity group of `node` seen at `ip`: the /24 or /48 of a routable address. Nodes
/// without an IP address (onion, I2P) and nodes on loopback (a devnet or tests on one machine,
/// where every node shares 127.0.0.1) each form their own group.
fn peer_group(node: &NodeId, ip: Option<IpAddr>) -> u64 {
    match ip {
        Some(ip) if !ip.is_loopback() => kad::ip_group(ip),
        _ => {
            let mut g = [0u8; 8];
            g.copy_from_slice(&node.as_bytes()[..8]);
            u64::from_le_bytes(g)
        }
    }
}

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(crate) fn unix_secs() -> u64 {
    unix_ms() / 1000
}

/// A bounded set remembering the most recent `capacity` keys.
#[derive(Debug)]
pub(crate) struct SeenSet<K> {
    set: HashSet<K>,
    order: VecDeque<K>,
    capacity: usize,
}

impl<K: std::hash::Hash + Eq + Copy> SeenSet<K> {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            set: HashSet::new(),
            order: VecDeque::new(),
            capacity,
        }
    }

    /// Inserts `key`; returns false if it was already present.
    pub(crate) fn insert(&mut self, key: K) -> bool {
        if !self.set.insert(key) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
}

/// A frame queued for a connection, holding its share of the connection's byte budget.
pub(crate) struct Frame {
    bytes: Bytes,
    _permit: OwnedSemaphorePermit,
}

/// The sending side of a connection's envelope stream.
#[derive(Clone)]
pub(crate) struct Writer {
    tx: mpsc::UnboundedSender<Frame>,
    budget: Arc<Semaphore>,
}

impl Writer {
    /// Queues `bytes` if the connection's byte budget allows; never waits.
    pub(crate) fn try_send(&self, bytes: Bytes) -> Result<(), DropReason> {
        let permit = self
            .budget
            .clone()
            .try_acquire_many_owned(permit_count(bytes.len()))
            .map_err(|_| DropReason::QueueFull)?;
        self.tx
            .send(Frame {
                bytes,
                _permit: permit,
            })
            .map_err(|_| DropReason::QueueFull)
    }
}

fn permit_count(len: usize) -> u32 {
    u32::try_from(len.max(1)).unwrap_or(u32::MAX)
}

/// Counters per peer, shared with its connection tasks.
#[derive(Debug, Default)]
pub(crate) struct PeerCounters {
    pub(crate) messages_in: AtomicU64,
    pub(crate) messages_out: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) drops: AtomicU64,
    /// When the peer last sent or was sent something other than upkeep ([`is_upkeep`]), in
    /// milliseconds since the node started.
    pub(crate) last_used_ms: AtomicU64,
    /// A byte stream or a bridge circuit was opened with the peer: its connections are never
    /// closed as unused (their streams carry no envelopes to show that they are in use).
    pub(crate) streams: AtomicBool,
}

/// Envelopes that keep a connection and the network's knowledge up, as opposed to the traffic
/// a connection exists for: they do not make a connection count as used
/// ([`Timeouts::unused`](super::Timeouts::unused)).
pub(crate) fn is_upkeep(env: &proto::Envelope) -> bool {
    use proto::envelope::Body;
    matches!(
        env.body,
        None | Some(
            Body::NodeRecord(_)
                | Body::Routing(_)
                | Body::PeerExchange(_)
                | Body::StatusRequest(_)
                | Body::Status(_)
                | Body::Gossip(_)
        )
    )
}

/// Per-peer rate limiter state (shared by all the peer's connections).
#[derive(Debug)]
pub(crate) struct PeerLimiter {
    messages: TokenBucket,
    bytes: TokenBucket,
    /// Signature checks and key agreements the peer's messages may cost us.
    verifications: TokenBucket,
    violations: u32,
    window_start: Instant,
}

pub(crate) struct ConnEntry {
    pub(crate) id: u64,
    pub(crate) conn: Arc<dyn Connection>,
    pub(crate) writer: Writer,
    pub(crate) ready: bool,
    pub(crate) inbound: bool,
    /// The transport of the first hop from this node: the connection's own kind, or for a
    /// bridge circuit the kind of the connection to the bridge.
    pub(crate) first_hop: TransportKind,
    pub(crate) ip: Option<IpAddr>,
    pub(crate) last_rx: Arc<AtomicU64>,
    /// When the next keepalive ping is due ([`keepalive_after`]).
    pub(crate) next_ping: Instant,
}

/// How long until a connection's next keepalive ping: `keepalive` times a factor drawn
/// uniformly from [1/2, 1) each time, so pings keep no fixed beat an observer could match.
pub(crate) fn keepalive_after(keepalive: Duration) -> Duration {
    let r = rand_core::RngCore::next_u32(&mut rand_core::OsRng);
    keepalive.mul_f64(0.5 + f64::from(r) / (f64::from(u32::MAX) + 1.0) / 2.0)
}

pub(crate) struct Peer {
    pub(crate) conns: Vec<ConnEntry>,
    pub(crate) counters: Arc<PeerCounters>,
    pub(crate) limiter: Arc<Mutex<PeerLimiter>>,
    pub(crate) record: Option<NodeRecord>,
    pub(crate) connected_at: Instant,
    pub(crate) announced: bool,
}

#[derive(Default)]
pub(crate) struct PeerSessions {
    sessions: Vec<Session>,
    initiating: Option<(u64, Instant)>,
}

pub(crate) struct PendingQuery {
    peer: NodeId,
    payload: Bytes,
    sent: bool,
    started: Instant,
    reply: oneshot::Sender<Result<Bytes, QueryError>>,
}

/// A peer the node keeps connected to (bootstrap or added), with reconnect backoff.
pub(crate) struct Wanted {
    pub(crate) addr: PeerAddr,
    pub(crate) node: Option<NodeId>,
    pub(crate) backoff: Duration,
    pub(crate) next_attempt: Instant,
    pub(crate) dialing: bool,
    pub(crate) last_error: Option<String>,
    pub(crate) reached: bool,
}

pub(crate) struct State {
    pub(crate) peers: HashMap<NodeId, Peer>,
    /// Connections per address block ([`address_block`]).
    pub(crate) per_ip: HashMap<IpAddr, usize>,
    pub(crate) total_conns: usize,
    pub(crate) pending_handshakes: usize,
    /// Inbound handshakes in progress per address block.
    pending_per_ip: HashMap<IpAddr, usize>,
    pub(crate) records: RecordBook,
    sessions: HashMap<NodeId, PeerSessions>,
    session_index: HashMap<u64, NodeId>,
    initiators: HashMap<u64, Initiator>,
    pub(crate) outbox: Outbox,
    waiters: HashMap<MessageId, oneshot::Sender<Result<Delivered, DeliveryError>>>,
    queries: HashMap<[u8; 16], PendingQuery>,
    pub(crate) inbound_queries: usize,
    seen_messages: SeenSet<MessageId>,
    /// Broadcast topics (HyParView + Plumtree per topic).
    pub(crate) gossip: Gossip,
    pub(crate) wanted: Vec<Wanted>,
    pub(crate) banned: HashSet<NodeId>,
    pub(crate) dialing: HashSet<NodeId>,
    /// On-demand dials that failed: when the next attempt may start, and the current delay.
    pub(crate) dial_backoff: HashMap<NodeId, (Instant, Duration)>,
    /// Dials for Tor or I2P routes under way ([`Privacy::Tor`], [`Privacy::I2p`]).
    pub(crate) route_dialing: HashSet<(NodeId, Transport)>,
    /// Nodes a lookup that others answered did not find, until when new messages and queries
    /// to them fail at once ([`Inner::fail_unfindable`]) instead of waiting out their deadline
    /// (the end of the `dial_backoff` that keeps the node from looking them up again).
    pub(crate) unfindable: HashMap<NodeId, Instant>,
    /// Route dials that failed, backing off like `dial_backoff`.
    pub(crate) route_backoff: HashMap<(NodeId, Transport), (Instant, Duration)>,
    /// The DHT's routing table (keys: NodeIds whose signed records we verified).
    pub(crate) kad: RoutingTable<NodeId>,
    /// Our FindNode requests awaiting an answer: request id → (asked peer, answer slot).
    finds: HashMap<u64, (NodeId, oneshot::Sender<Vec<NodeRecord>>)>,
    /// Peers being looked up in the DHT.
    pub(crate) looking_up: HashSet<NodeId>,
    /// Sealed messages held for offline recipients (store-and-forward).
    pub(crate) mailbox: Mailbox,
    /// Recipients whose undeliverable messages are being deposited, and when a failed deposit
    /// may be tried again.
    pub(crate) depositing: HashSet<NodeId>,
    pub(crate) deposit_backoff: HashMap<NodeId, Instant>,
    /// Acknowledgements that found no connection (or session) to their sender yet.
    pub(crate) pending_acks: HashMap<NodeId, Vec<MessageId>>,
    next_self_lookup: Instant,
    next_mailbox_poll: Instant,
    /// Tags of the onion packets processed, against replays.
    pub(crate) onion_replay: crate::crypto::onion::ReplayCache,
    /// Onion circuits by destination.
    pub(crate) circuits: HashMap<NodeId, super::onion::Circuit>,
    /// Peers the application connected to with [`Node::connect`](super::Node::connect): kept
    /// even when unused, until `remove_peer`.
    pub(crate) pinned: HashSet<NodeId>,
    /// When the next cover packet is due (none when cover traffic is off).
    next_cover: Option<Instant>,
    pub(crate) stopped: bool,
    last_exchange: Instant,
}

/// Confirmation of a private message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// The message.
    pub id: MessageId,
    /// Its recipient.
    pub peer: NodeId,
    /// From first send to end-to-end acknowledgement.
    pub latency: Duration,
    /// Sends it took.
    pub attempts: u32,
}

/// Node-wide counters.
#[derive(Debug, Default)]
pub(crate) struct Totals {
    pub(crate) messages_in: AtomicU64,
    pub(crate) messages_out: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
}

pub(crate) struct Inner {
    pub(crate) identity: Arc<Identity>,
    pub(crate) config: NodeConfig,
    pub(crate) padding: Padding,
    pub(crate) metrics: Metrics,
    pub(crate) totals: Totals,
    pub(crate) events: broadcast::Sender<Event>,
    pub(crate) state: Mutex<State>,
    pub(crate) record: RwLock<NodeRecord>,
    pub(crate) endpoint: quinn::Endpoint,
    pub(crate) quic_transport: Arc<quinn::TransportConfig>,
    pub(crate) stream_tls: Arc<rustls::ServerConfig>,
    pub(crate) local_quic: Option<SocketAddr>,
    pub(crate) local_tcp: Option<SocketAddr>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tasks: TaskTracker,
    pub(crate) started_at: Instant,
    pub(crate) broadcast_seq: AtomicU64,
    pub(crate) handshake_ts: AtomicU64,
    /// Replay protection for session handshakes we answer. Its own lock, so that the key
    /// agreements of an answer never run under the node's state lock.
    pub(crate) handshake_guard: Mutex<HandshakeGuard>,
    /// Non-public address ranges ([`scope_bit`]) this node is evidently on, so that addresses
    /// in them learned from records may be dialled (`NodeConfig::dial_private`).
    pub(crate) dial_scopes: std::sync::atomic::AtomicU8,
    /// Inbound byte-stream handshakes started by `Node::spawn_accept_stream`, oldest first.
    pub(crate) stream_handshakes: Mutex<std::collections::VecDeque<(u64, CancellationToken)>>,
    pub(crate) next_conn_id: AtomicU64,
    pub(crate) streams: Mutex<HashMap<String, mpsc::Sender<PeerStream>>>,
    pub(crate) topology: watch::Sender<u64>,
    pub(crate) inbound_seen: AtomicBool,
    pub(crate) keystore: Option<std::path::PathBuf>,
    pub(crate) mdns: Mutex<Option<super::discovery::Mdns>>,
    /// Onion packets allowed to wait for a connection to their next hop.
    pub(crate) onion_forwards: Arc<tokio::sync::Semaphore>,
    /// Dialers for transports the node does not carry itself (Tor, I2P).
    pub(crate) dialers: HashMap<Transport, Arc<dyn super::transport::Dialer>>,
    /// Circuits this node relays as a bridge.
    pub(crate) circuits: Mutex<super::circuit::Circuits>,
    pub(crate) weak: Weak<Inner>,
}

impl State {
    pub(crate) fn new(config: &NodeConfig, local: &NodeId) -> Self {
        let t = &config.timeouts;
        Self {
            peers: HashMap::new(),
            per_ip: HashMap::new(),
            total_conns: 0,
            pending_handshakes: 0,
            pending_per_ip: HashMap::new(),
            records: RecordBook::new(config.limits.max_records),
            sessions: HashMap::new(),
            session_index: HashMap::new(),
            initiators: HashMap::new(),
            outbox: Outbox::new(
                RetryPolicy {
                    ack_timeout: t.ack,
                    max_attempts: t.max_attempts,
                    deadline: t.delivery,
                },
                config.limits.max_outbox,
            ),
            waiters: HashMap::new(),
            queries: HashMap::new(),
            inbound_queries: 0,
            seen_messages: SeenSet::new(SEEN_CAPACITY),
            gossip: Gossip::new(),
            wanted: Vec::new(),
            banned: HashSet::new(),
            dialing: HashSet::new(),
            dial_backoff: HashMap::new(),
            unfindable: HashMap::new(),
            route_dialing: HashSet::new(),
            route_backoff: HashMap::new(),
            kad: RoutingTable::new(*local.as_bytes(), KadConfig::default()),
            finds: HashMap::new(),
            looking_up: HashSet::new(),
            mailbox: Mailbox::new(MailboxLimits {
                max_messages: config.limits.mailbox_messages,
                max_per_recipient: config.limits.mailbox_per_recipient,
                max_bytes: config.limits.mailbox_bytes,
                ttl: config.timeouts.mailbox,
            }),
            depositing: HashSet::new(),
            deposit_backoff: HashMap::new(),
            pending_acks: HashMap::new(),
            next_self_lookup: Instant::now(),
            next_mailbox_poll: Instant::now(),
            onion_replay: crate::crypto::onion::ReplayCache::new(config.onion.replay_cache),
            circuits: HashMap::new(),
            pinned: HashSet::new(),
            next_cover: None,
            stopped: false,
            last_exchange: Instant::now(),
        }
    }

    pub(crate) fn ready_writer(&self, peer: &NodeId) -> Option<Writer> {
        self.writer_over(peer, None)
    }

    /// The writer of the newest ready connection whose first hop is `carrier`, when one is
    /// named. Otherwise the newest ready connection, a direct one (QUIC, TCP, a stream) before
    /// one over Tor, I2P or a circuit: a Tor route dialled for one message does not slow down
    /// the direct ones.
    pub(crate) fn writer_over(
        &self,
        peer: &NodeId,
        carrier: Option<TransportKind>,
    ) -> Option<Writer> {
        let conns = &self.peers.get(peer)?.conns;
        let ready = || conns.iter().rev().filter(|c| c.ready);
        let entry = match carrier {
            Some(k) => ready().find(|c| c.first_hop == k),
            None => ready()
                .find(|c| {
                    matches!(
                        c.conn.kind(),
                        TransportKind::Quic | TransportKind::Tcp | TransportKind::Stream
                    )
                })
                .or_else(|| ready().next()),
        };
        entry.map(|c| c.writer.clone())
    }

    pub(crate) fn is_ready(&self, peer: &NodeId) -> bool {
        self.is_ready_over(peer, None)
    }

    /// Whether a ready connection to `peer` leaves this node on `carrier` (any, if `None`).
    pub(crate) fn is_ready_over(&self, peer: &NodeId, carrier: Option<TransportKind>) -> bool {
        self.peers.get(peer).is_some_and(|p| {
            p.conns
                .iter()
                .any(|c| c.ready && carrier.is_none_or(|k| c.first_hop == k))
        })
    }

    pub(crate) fn peer_record(&self, peer: &NodeId) -> Option<NodeRecord> {
        self.peers
            .get(peer)
            .and_then(|p| p.record.clone())
            .or_else(|| self.records.get(peer).cloned())
    }
}

/// What happened to a payload handed to [`Inner::send_payload`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    /// Encrypted and queued on a connection.
    Queued,
    /// No ready connection to the peer.
    NoConnection,
    /// A session handshake is in progress; the payload goes out when it completes.
    AwaitingSession,
    /// The connection's queue is full.
    QueueFull,
}

/// At the per-peer limit: the oldest connection whose transport another one shares, if none is
/// of `kind` yet (the newcomer then replaces it).
fn duplicate_to_replace(conns: &[ConnEntry], kind: TransportKind) -> Option<Arc<dyn Connection>> {
    if conns.iter().any(|c| c.conn.kind() == kind) {
        return None;
    }
    conns
        .iter()
        .find(|c| {
            conns
                .iter()
                .filter(|o| o.conn.kind() == c.conn.kind())
                .count()
                > 1
        })
        .map(|c| c.conn.clone())
}

/// The first-hop transport a message of this privacy must leave on, if it names one.
pub(crate) fn carrier(privacy: Privacy) -> Option<TransportKind> {
    privacy.transport().and_then(super::circuit::route_kind)
}

/// An encoded end-to-end acknowledgement of `ids` (at most `wire::MAX_IDS`).
pub(crate) fn ack_payload(ids: &[MessageId]) -> Option<Vec<u8>> {
    let payload = proto::PrivatePayload {
        body: Some(proto::private_payload::Body::Ack(proto::Ack {
            message_ids: ids
                .iter()
                .map(|id| Bytes::copy_from_slice(id.as_bytes()))
                .collect(),
        })),
    };
    message::encode_payload(&payload).ok()
}

pub(crate) fn envelope(body: proto::envelope::Body) -> proto::Envelope {
    proto::Envelope {
        version: PROTOCOL_VERSION,
        body: Some(body),
    }
}

fn private_envelope(recipient: &NodeId, body: proto::private_envelope::Body) -> proto::Envelope {
    envelope(proto::envelope::Body::Private(proto::PrivateEnvelope {
        recipient: Bytes::copy_from_slice(recipient.as_bytes()),
        hop_limit: 0,
        body: Some(body),
    }))
}

impl Inner {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug; keep serving with the state as is
        // rather than poisoning every later call.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn emit(&self, event: Event) {
        let _ = self.events.send(event);
    }

    pub(crate) fn count_drop(&self, reason: DropReason, peer: Option<&NodeId>, detail: &str) {
        self.metrics.drop(reason);
        match peer {
            Some(peer) => tracing::debug!(%peer, reason = reason.as_str(), detail, "dropped"),
            None => tracing::debug!(reason = reason.as_str(), detail, "dropped"),
        }
    }

    pub(crate) fn frame(&self, envelope: &proto::Envelope) -> Option<Bytes> {
        let mut buf = BytesMut::new();
        match wire::encode_envelope_frame(envelope, self.config.limits.max_frame_len, &mut buf) {
            Ok(()) => Some(buf.freeze()),
            Err(e) => {
                tracing::warn!(error = %e, "refusing to send an invalid envelope");
                None
            }
        }
    }

    pub(crate) fn own_record(&self) -> NodeRecord {
        self.record
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Signs the node's record again, with the same addresses, capabilities and listing
    /// choice, `agent` when given, a higher sequence and a fresh validity period; the new
    /// record is what the node hands out from now on.
    pub(crate) fn resign_record(&self, agent: Option<&str>) -> Result<NodeRecord, RecordError> {
        let current = self.own_record();
        let sequence = unix_ms().max(current.sequence().saturating_add(1));
        let mut builder = NodeRecordBuilder::new(&self.identity, sequence)
            .agent(agent.unwrap_or(current.agent()))
            .unlisted(current.is_unlisted());
        for c in current.capabilities() {
            builder = builder.capability(*c);
        }
        for a in current.addresses() {
            builder = builder.address(a.transport, a.host.clone(), a.port);
        }
        let record = builder.sign(unix_secs())?;
        *self.record.write().unwrap_or_else(|p| p.into_inner()) = record.clone();
        Ok(record)
    }

    fn next_handshake_ts(&self) -> u64 {
        let now = unix_ms();
        let mut prev = self.handshake_ts.load(Ordering::Relaxed);
        loop {
            let next = now.max(prev + 1);
            match self.handshake_ts.compare_exchange(
                prev,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return next,
                Err(actual) => prev = actual,
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Sessions and encryption

    /// Encrypts `payload` for `peer` and queues it, starting a handshake if there is no usable
    /// session. Must be called with the state locked.
    fn send_payload(&self, st: &mut State, peer: &NodeId, payload: &[u8], now: Instant) -> Sent {
        self.send_payload_over(st, peer, payload, now, None)
    }

    /// [`Inner::send_payload`] on a connection whose first hop is `carrier`, when one is named
    /// (the handshake, if one is needed, goes there too).
    fn send_payload_over(
        &self,
        st: &mut State,
        peer: &NodeId,
        payload: &[u8],
        now: Instant,
        carrier: Option<TransportKind>,
    ) -> Sent {
        let Some(writer) = st.writer_over(peer, carrier) else {
            return Sent::NoConnection;
        };
        let sessions = st.sessions.entry(*peer).or_default();
        let usable = sessions
            .sessions
            .iter_mut()
            .rev()
            .find(|s| !s.is_expired(now) && (s.role() == Role::Initiator || s.is_confirmed()));
        let Some(session) = usable else {
            self.start_handshake(st, peer, &writer, now);
            return Sent::AwaitingSession;
        };
        let message = match session.encrypt(payload, self.padding, now) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "session cannot encrypt; rehandshaking");
                self.start_handshake(st, peer, &writer, now);
                return Sent::AwaitingSession;
            }
        };
        let env = private_envelope(peer, proto::private_envelope::Body::Session(message));
        let Some(frame) = self.frame(&env) else {
            return Sent::QueueFull;
        };
        let len = frame.len() as u64;
        match writer.try_send(frame) {
            Ok(()) => {
                if let Some(p) = st.peers.get(peer) {
                    p.counters.messages_out.fetch_add(1, Ordering::Relaxed);
                    p.counters.bytes_out.fetch_add(len, Ordering::Relaxed);
                }
                self.totals.messages_out.fetch_add(1, Ordering::Relaxed);
                Sent::Queued
            }
            Err(reason) => {
                self.count_drop(reason, Some(peer), "connection send queue full");
                Sent::QueueFull
            }
        }
    }

    fn start_handshake(&self, st: &mut State, peer: &NodeId, writer: &Writer, now: Instant) {
        let sessions = st.sessions.entry(*peer).or_default();
        if let Some((_, started)) = sessions.initiating {
            if now.saturating_duration_since(started) < self.config.timeouts.ack {
                return;
            }
        }
        let Some(record) = st.peer_record(peer) else {
            tracing::debug!(%peer, "no record for peer yet; handshake deferred");
            return;
        };
        let own = self.own_record();
        match session::initiate(&self.identity, &own, &record, self.next_handshake_ts()) {
            Ok((initiator, init)) => {
                let index = initiator.local_index();
                if let Some(sessions) = st.sessions.get_mut(peer) {
                    if let Some((old, _)) = sessions.initiating.replace((index, now)) {
                        st.initiators.remove(&old);
                    }
                }
                st.initiators.insert(index, initiator);
                let env =
                    private_envelope(peer, proto::private_envelope::Body::HandshakeInit(init));
                if let Some(frame) = self.frame(&env) {
                    if let Err(reason) = writer.try_send(frame) {
                        self.count_drop(reason, Some(peer), "handshake init");
                    }
                }
            }
            Err(e) => tracing::warn!(%peer, error = %e, "cannot start session handshake"),
        }
    }

    fn add_session(&self, st: &mut State, session: Session) {
        let peer = session.peer_id();
        st.session_index.insert(session.local_index(), peer);
        let sessions = st.sessions.entry(peer).or_default();
        sessions.sessions.push(session);
        while sessions.sessions.len() > SESSIONS_PER_PEER {
            let old = sessions.sessions.remove(0);
            st.session_index.remove(&old.local_index());
        }
    }

    /// Sends everything waiting for `peer` (unsent messages and queries).
    fn flush_peer(&self, st: &mut State, peer: &NodeId, now: Instant) {
        if let Some(ids) = st.pending_acks.remove(peer) {
            for chunk in ids.chunks(wire::MAX_IDS) {
                let Some(bytes) = ack_payload(chunk) else {
                    continue;
                };
                if self.send_payload(st, peer, &bytes, now) == Sent::Queued {
                    self.metrics.message("out", "ack");
                } else {
                    // Still no session: keep the rest for the next flush.
                    st.pending_acks
                        .entry(*peer)
                        .or_default()
                        .extend(chunk.iter().copied());
                }
            }
        }
        for (id, payload, privacy) in st.outbox.unsent_for(peer) {
            match self.send_payload_over(st, peer, &payload, now, carrier(privacy)) {
                Sent::Queued => st.outbox.mark_sent(&id, now),
                // Waits for a connection over its own transport.
                Sent::NoConnection if privacy != Privacy::Direct => {}
                _ => return,
            }
        }
        let unsent: Vec<([u8; 16], Bytes)> = st
            .queries
            .iter()
            .filter(|(_, q)| &q.peer == peer && !q.sent)
            .map(|(id, q)| (*id, q.payload.clone()))
            .collect();
        for (id, payload) in unsent {
            if self.send_payload(st, peer, &payload, now) != Sent::Queued {
                return;
            }
            if let Some(q) = st.queries.get_mut(&id) {
                q.sent = true;
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Application operations

    pub(crate) fn check_peer(&self, st: &State, peer: &NodeId) -> Result<(), SendError> {
        if st.stopped {
            return Err(SendError::Stopped);
        }
        if *peer == self.identity.node_id() {
            return Err(SendError::ToSelf);
        }
        if st.banned.contains(peer) {
            return Err(SendError::Banned(*peer));
        }
        Ok(())
    }

    /// Queues a private message; resolves the returned receiver on acknowledgement or failure.
    pub(crate) async fn send_private(
        self: &Arc<Self>,
        peer: NodeId,
        content_type: &str,
        content: Bytes,
        privacy: Privacy,
    ) -> Result<
        (
            MessageId,
            oneshot::Receiver<Result<Delivered, DeliveryError>>,
        ),
        SendError,
    > {
        let max = self.config.limits.max_message_len;
        if content.len() > max {
            return Err(SendError::TooLarge {
                len: content.len(),
                max,
            });
        }
        let content_len = content.len();
        let (id, msg) = message::new_private_message(
            &self.identity.node_id(),
            &peer,
            content_type,
            content,
            unix_ms(),
            true,
        );
        let payload = message::encode_payload(&proto::PrivatePayload {
            body: Some(proto::private_payload::Body::Message(msg)),
        })
        .map_err(|e| SendError::Invalid(e.to_string()))?;
        if privacy == Privacy::Onion {
            return self.send_private_onion(id, peer, content_len, payload);
        }
        let over = carrier(privacy);
        // Backpressure: wait for room on the peer's connection before queueing more.
        let writer = {
            let st = self.lock();
            self.check_peer(&st, &peer)?;
            self.check_carrier(&st, &peer, privacy)?;
            st.writer_over(&peer, over)
        };
        // Padding can grow a message past the frame limit; refuse it now rather than letting
        // it wait in the outbox for a frame that can never be sent.
        let frame_estimate = self.padding.padded_len(payload.len()) + 160;
        if frame_estimate > self.config.limits.max_frame_len {
            return Err(SendError::TooLarge {
                len: frame_estimate,
                max: self.config.limits.max_frame_len,
            });
        }
        let permit = match writer {
            Some(w) => {
                let need =
                    permit_count(frame_estimate.min(self.config.limits.connection_queue_bytes));
                tokio::select! {
                    p = w.budget.clone().acquire_many_owned(need) => p.ok(),
                    () = self.shutdown.cancelled() => return Err(SendError::Stopped),
                }
            }
            None => None,
        };
        let (tx, rx) = oneshot::channel();
        let now = Instant::now();
        let need_dial = {
            let mut st = self.lock();
            self.check_peer(&st, &peer)?;
            st.outbox
                .insert_with(id, peer, Bytes::from(payload.clone()), privacy, now)
                .map_err(|full| SendError::OutboxFull(full.0))?;
            st.waiters.insert(id, tx);
            self.metrics.outbox.set(st.outbox.len() as i64);
            // Release the reserved budget just before queueing so the frame can take it.
            drop(permit);
            match self.send_payload_over(&mut st, &peer, &payload, now, over) {
                Sent::Queued => {
                    st.outbox.mark_sent(&id, now);
                    false
                }
                Sent::NoConnection => true,
                Sent::AwaitingSession | Sent::QueueFull => false,
            }
        };
        self.metrics.message("out", "private");
        if need_dial {
            match privacy.transport() {
                Some(transport) => self.ensure_route(peer, transport),
                None => self.ensure_connected(peer),
            }
        }
        Ok((id, rx))
    }

    /// A Tor or I2P message needs a connection over that transport, or a dialer to make one.
    fn check_carrier(&self, st: &State, peer: &NodeId, privacy: Privacy) -> Result<(), SendError> {
        let (Some(transport), Some(kind)) = (privacy.transport(), carrier(privacy)) else {
            return Ok(());
        };
        if self.dialers.contains_key(&transport) || st.is_ready_over(peer, Some(kind)) {
            Ok(())
        } else {
            Err(SendError::NoTransport(privacy))
        }
    }

    /// Queues an onion-routed message and sends its first copy.
    fn send_private_onion(
        self: &Arc<Self>,
        id: MessageId,
        peer: NodeId,
        content_len: usize,
        payload: Vec<u8>,
    ) -> Result<
        (
            MessageId,
            oneshot::Receiver<Result<Delivered, DeliveryError>>,
        ),
        SendError,
    > {
        let room = self.onion_payload_max();
        if payload.len() > room {
            return Err(SendError::TooLarge {
                len: content_len,
                max: room.saturating_sub(payload.len() - content_len),
            });
        }
        let (tx, rx) = oneshot::channel();
        let payload = Bytes::from(payload);
        {
            let mut st = self.lock();
            self.check_peer(&st, &peer)?;
            self.check_relays(&st, &peer)
                .map_err(|e| SendError::TooFewRelays {
                    have: e.have,
                    need: e.need,
                })?;
            st.outbox
                .insert_with(id, peer, payload.clone(), Privacy::Onion, Instant::now())
                .map_err(|full| SendError::OutboxFull(full.0))?;
            st.outbox.mark_sent(&id, Instant::now());
            st.waiters.insert(id, tx);
            self.metrics.outbox.set(st.outbox.len() as i64);
        }
        self.metrics.message("out", "private");
        super::onion::spawn_sends(self, vec![(id, peer, payload, false)]);
        Ok((id, rx))
    }

    pub(crate) async fn query(
        self: &Arc<Self>,
        peer: NodeId,
        method: &str,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, QueryError> {
        let mut query_id = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut query_id);
        let payload = message::encode_payload(&proto::PrivatePayload {
            body: Some(proto::private_payload::Body::Query(proto::Query {
                query_id: Bytes::copy_from_slice(&query_id),
                method: method.to_owned(),
                body,
                timeout_ms: u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX),
            })),
        })
        .map_err(|e| QueryError::Send(SendError::Invalid(e.to_string())))?;
        let (tx, rx) = oneshot::channel();
        let now = Instant::now();
        let need_dial = {
            let mut st = self.lock();
            self.check_peer(&st, &peer)?;
            if st.queries.len() >= self.config.limits.max_pending_queries {
                return Err(QueryError::Send(SendError::OutboxFull(st.queries.len())));
            }
            let frame_estimate = self.padding.padded_len(payload.len()) + 160;
            if frame_estimate > self.config.limits.max_frame_len {
                return Err(QueryError::Send(SendError::TooLarge {
                    len: frame_estimate,
                    max: self.config.limits.max_frame_len,
                }));
            }
            let sent = self.send_payload(&mut st, &peer, &payload, now);
            st.queries.insert(
                query_id,
                PendingQuery {
                    peer,
                    payload: Bytes::from(payload),
                    sent: sent == Sent::Queued,
                    started: now,
                    reply: tx,
                },
            );
            sent == Sent::NoConnection
        };
        self.metrics.message("out", "query");
        if need_dial {
            self.ensure_connected(peer);
        }
        let result = tokio::select! {
            r = tokio::time::timeout(timeout, rx) => r,
            () = self.shutdown.cancelled() => return Err(QueryError::Stopped),
        };
        match result {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(QueryError::Stopped),
            Err(_) => {
                self.lock().queries.remove(&query_id);
                Err(QueryError::Timeout { peer, timeout })
            }
        }
    }

    pub(crate) fn send_query_response(
        &self,
        peer: NodeId,
        query_id: [u8; 16],
        status: u32,
        body: Bytes,
        error: String,
    ) -> Result<(), SendError> {
        {
            let mut st = self.lock();
            st.inbound_queries = st.inbound_queries.saturating_sub(1);
        }
        let max = wire::MAX_QUERY_BODY;
        if body.len() > max {
            return Err(SendError::TooLarge {
                len: body.len(),
                max,
            });
        }
        let payload = message::encode_payload(&proto::PrivatePayload {
            body: Some(proto::private_payload::Body::Response(
                proto::QueryResponse {
                    query_id: Bytes::copy_from_slice(&query_id),
                    status,
                    body,
                    error,
                },
            )),
        })
        .map_err(|e| SendError::Invalid(e.to_string()))?;
        let mut st = self.lock();
        self.metrics.message("out", "response");
        match self.send_payload(&mut st, &peer, &payload, Instant::now()) {
            Sent::Queued => Ok(()),
            Sent::NoConnection => Err(SendError::NoRoute(peer)),
            Sent::AwaitingSession | Sent::QueueFull => Err(SendError::Transport(
                TransportError::Closed("peer's send queue is full".into()),
            )),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Connections

    /// Nodes answered a lookup for `peer` and none knows it (a lookup nobody answered, as
    /// before the first connection, proves nothing and must not come here): what waits for
    /// `peer` and has no way to it fails now, not at its deadline. Messages fail with
    /// [`DeliveryError::NotFound`], queries never sent with [`QueryError::NotFound`]; a peer
    /// the node was told to keep connected to is never given up. Returns the failed
    /// messages, for [`Inner::report_unfindable`] once the lock is released.
    pub(crate) fn fail_unfindable(&self, st: &mut State, peer: NodeId) -> Vec<MessageId> {
        if st.wanted.iter().any(|w| w.node == Some(peer)) {
            return Vec::new();
        }
        let ids = st.outbox.remove_unroutable(&peer);
        for id in &ids {
            if let Some(waiter) = st.waiters.remove(id) {
                let _ = waiter.send(Err(DeliveryError::NotFound { id: *id, peer }));
            }
        }
        self.metrics.outbox.set(st.outbox.len() as i64);
        let unsent: Vec<[u8; 16]> = st
            .queries
            .iter()
            .filter(|(_, q)| q.peer == peer && !q.sent)
            .map(|(id, _)| *id)
            .collect();
        for id in unsent {
            if let Some(q) = st.queries.remove(&id) {
                let _ = q.reply.send(Err(QueryError::NotFound { peer }));
            }
        }
        ids
    }

    /// Counts and announces the messages [`Inner::fail_unfindable`] failed.
    pub(crate) fn report_unfindable(&self, peer: NodeId, failed: Vec<MessageId>) {
        for id in failed {
            self.metrics
                .deliveries
                .get_or_create(&super::metrics::ResultLabels { result: "failed" })
                .inc();
            tracing::info!(%peer, %id, "private message failed: recipient not found in the DHT");
            self.emit(Event::DeliveryFailed {
                id,
                peer,
                attempts: 0,
            });
        }
    }

    /// Starts dialing `peer` from what we know of its addresses, unless already connected or
    /// dialing.
    pub(crate) fn ensure_connected(self: &Arc<Self>, peer: NodeId) {
        let addrs: Vec<PeerAddr> = {
            let mut st = self.lock();
            if st.is_ready(&peer) || st.dialing.contains(&peer) || st.banned.contains(&peer) {
                return;
            }
            // Failed dials back off (doubling up to reconnect_max) instead of retrying on
            // every timer tick.
            let now = Instant::now();
            if st
                .dial_backoff
                .get(&peer)
                .is_some_and(|(next, _)| now < *next)
            {
                // Not found a moment ago: what was just queued for it fails now.
                if st.unfindable.get(&peer).is_some_and(|until| now < *until)
                    && st.peer_record(&peer).is_none()
                {
                    let failed = self.fail_unfindable(&mut st, peer);
                    drop(st);
                    self.report_unfindable(peer, failed);
                }
                return;
            }
            let Some(record) = st.peer_record(&peer) else {
                // A bootstrap or added peer whose record we do not hold yet: dial its
                // configured address (unless a dial is under way or backing off).
                if let Some(w) = st
                    .wanted
                    .iter_mut()
                    .find(|w| w.node == Some(peer) && !w.dialing && now >= w.next_attempt)
                {
                    w.dialing = true;
                    let addr = w.addr.clone();
                    drop(st);
                    let inner = self.clone();
                    self.tasks
                        .spawn(async move { inner.dial_wanted(addr).await });
                } else if !st.wanted.iter().any(|w| w.node == Some(peer))
                    && st.looking_up.insert(peer)
                {
                    // Nobody we know has told us where it is: ask the DHT.
                    drop(st);
                    let inner = self.clone();
                    self.tasks.spawn(async move {
                        let lookup = inner.clone().lookup(*peer.as_bytes(), true).await;
                        let mut not_found = Vec::new();
                        let found = {
                            let mut st = inner.lock();
                            st.looking_up.remove(&peer);
                            let found = st.peer_record(&peer).is_some();
                            if !found {
                                let t = &inner.config.timeouts;
                                let delay = st
                                    .dial_backoff
                                    .get(&peer)
                                    .map_or(t.reconnect_min, |(_, d)| {
                                        (*d * 2).min(t.reconnect_max)
                                    });
                                let until = Instant::now() + delay;
                                st.dial_backoff.insert(peer, (until, delay));
                                if !lookup.closest.is_empty() {
                                    not_found = inner.fail_unfindable(&mut st, peer);
                                    st.unfindable.insert(peer, until);
                                }
                            } else {
                                st.unfindable.remove(&peer);
                            }
                            found
                        };
                        inner.report_unfindable(peer, not_found);
                        if found {
                            inner.emit(Event::PeerDiscovered { peer, via: "dht" });
                            inner.ensure_connected(peer);
                        }
                    });
                }
                return;
            };
            st.dialing.insert(peer);
            record
                .addresses()
                .iter()
                .filter(|a| {
                    let ok = self.may_dial_learned(a);
                    if !ok {
                        tracing::debug!(%peer, address = %a, "not dialling a non-public address from a record");
                    }
                    ok
                })
                .map(|a| PeerAddr {
                    node: Some(peer),
                    address: a.clone(),
                })
                .collect::<Vec<_>>()
        };
        let (direct, other): (Vec<PeerAddr>, Vec<PeerAddr>) = addrs
            .into_iter()
            .partition(|a| self.can_dial(a.address.transport));
        let inner = self.clone();
        self.tasks.spawn(async move {
            let mut last = direct
                .is_empty()
                .then(|| TransportError::Connect("its record has no address we can dial".into()));
            for addr in direct {
                match inner.connect(&addr).await {
                    Ok(_) => {
                        last = None;
                        break;
                    }
                    Err(e) => last = Some(e),
                }
            }
            // Addresses this node cannot dial itself (an onion service, an I2P destination,
            // QUIC for a Tor-only node) are reached through a bridge's circuit.
            if last.is_some() && !other.is_empty() {
                let mut transports: Vec<Transport> = Vec::new();
                for a in &other {
                    if !transports.contains(&a.address.transport) {
                        transports.push(a.address.transport);
                    }
                }
                match inner.dial_through_bridges(peer, transports).await {
                    Ok(_) => last = None,
                    Err(e) => last = Some(e),
                }
            }
            {
                let mut st = inner.lock();
                st.dialing.remove(&peer);
                if last.is_some() {
                    let t = &inner.config.timeouts;
                    let delay = st
                        .dial_backoff
                        .get(&peer)
                        .map_or(t.reconnect_min, |(_, d)| (*d * 2).min(t.reconnect_max));
                    st.dial_backoff
                        .insert(peer, (Instant::now() + delay, delay));
                } else {
                    st.dial_backoff.remove(&peer);
                }
            }
            if let Some(e) = last {
                tracing::debug!(%peer, error = %e, "could not reach peer");
            }
        });
    }

    /// Dials `addr` and registers the connection. Returns the peer's NodeId.
    pub(crate) async fn connect(
        self: &Arc<Self>,
        addr: &PeerAddr,
    ) -> Result<NodeId, TransportError> {
        self.connect_over(addr, None).await
    }

    /// [`Inner::connect`], through the `over` dialer when one is named (a TCP address over
    /// Tor leaves through an exit).
    pub(crate) async fn connect_over(
        self: &Arc<Self>,
        addr: &PeerAddr,
        over: Option<Transport>,
    ) -> Result<NodeId, TransportError> {
        if let Some(node) = addr.node {
            if node == self.identity.node_id() {
                return Err(TransportError::Connect("that address is this node".into()));
            }
            if self.lock().banned.contains(&node) {
                return Err(TransportError::Connect(format!("{node} is banned")));
            }
        }
        let started = Instant::now();
        let timeout = self.config.timeouts.connect;
        let result = tokio::time::timeout(timeout, self.dial(addr, over)).await;
        let conn = match result {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                self.metrics.attempt("out", "error");
                if matches!(e, TransportError::ProtocolMismatch { .. }) {
                    self.count_drop(
                        DropReason::ProtocolVersion,
                        addr.node.as_ref(),
                        &e.to_string(),
                    );
                }
                return Err(e);
            }
            Err(_) => {
                self.metrics.attempt("out", "error");
                return Err(TransportError::Timeout(timeout));
            }
        };
        self.metrics
            .connect_latency
            .observe(started.elapsed().as_secs_f64());
        self.metrics.attempt("out", "ok");
        let peer = conn.peer();
        {
            let mut st = self.lock();
            if st.total_conns >= self.config.limits.max_connections {
                drop(st);
                conn.close(close_code::TOO_MANY, "connection limit reached");
                self.count_drop(DropReason::MaxConnections, Some(&peer), "outbound");
                return Err(TransportError::Connect(
                    "local connection limit reached".into(),
                ));
            }
            st.total_conns += 1;
        }
        if let Some(remote) = conn.remote_addr() {
            self.note_scope(remote.ip());
        }
        self.establish(conn, false, None, None)?;
        Ok(peer)
    }

    async fn dial(
        self: &Arc<Self>,
        addr: &PeerAddr,
        over: Option<Transport>,
    ) -> Result<Arc<dyn Connection>, TransportError> {
        let a = &addr.address;
        // Through a dialer: Tor and I2P addresses, and TCP ones when everything leaves
        // through Tor (no local name resolution then: the exit resolves).
        let via = match (over, a.transport, self.config.route_all_via) {
            (Some(Transport::Tor), Transport::Tcp, _) => Some(Transport::Tor),
            (Some(over), t, _) if t == over => Some(t),
            (Some(over), _, _) => {
                return Err(TransportError::Connect(format!(
                    "{a} cannot be reached over {over:?}"
                )));
            }
            (None, t, via) => match (t, via) {
                (Transport::Tcp, Some(Transport::Tor)) => Some(Transport::Tor),
                (Transport::Quic | Transport::Tcp, Some(via)) => {
                    return Err(TransportError::Connect(format!(
                        "{a} cannot be dialled while every connection goes through {via:?}"
                    )));
                }
                (Transport::Quic | Transport::Tcp, None) => None,
                (other, _) => Some(other),
            },
        };
        if let Some(via) = via {
            let dialer = self.dialers.get(&via).ok_or_else(|| {
                TransportError::Connect(format!(
                    "{a} needs a {via:?} transport this node does not have"
                ))
            })?;
            let kind = match via {
                Transport::I2p => TransportKind::I2p,
                _ => TransportKind::Tor,
            };
            let io = dialer.dial(a).await?;
            let conn = StreamConnection::connect(io, &self.identity, addr.node, kind, None).await?;
            return Ok(Arc::new(conn));
        }
        let target = tokio::net::lookup_host((a.host.as_str(), a.port))
            .await
            .map_err(|e| TransportError::Connect(format!("cannot resolve {}: {e}", a.host)))?
            .next()
            .ok_or_else(|| TransportError::Connect(format!("{} has no address", a.host)))?;
        match a.transport {
            Transport::Quic => {
                let conn = transport::connect_quic(
                    &self.endpoint,
                    &self.identity,
                    target,
                    addr.node,
                    self.quic_transport.clone(),
                )
                .await?;
                Ok(Arc::new(conn))
            }
            Transport::Tcp => {
                let tcp = tokio::net::TcpStream::connect(target).await?;
                let _ = tcp.set_nodelay(true);
                let conn = StreamConnection::connect(
                    tcp,
                    &self.identity,
                    addr.node,
                    TransportKind::Tcp,
                    Some(target),
                )
                .await?;
                Ok(Arc::new(conn))
            }
            _ => Err(TransportError::Connect(format!(
                "{} needs a bridge transport this node does not have",
                a
            ))),
        }
    }

    /// Admission control for an inbound connection attempt from `ip`. On success the caller
    /// holds a pending-handshake slot, an IP slot and a connection slot.
    /// `block` is the sender's [`address_block`].
    pub(crate) fn admit(&self, block: IpAddr) -> Result<(), DropReason> {
        let limits = &self.config.limits;
        let mut st = self.lock();
        if st.stopped {
            return Err(DropReason::MaxConnections);
        }
        if st.total_conns >= limits.max_connections {
            return Err(DropReason::MaxConnections);
        }
        if st.per_ip.get(&block).copied().unwrap_or(0) >= limits.max_connections_per_ip {
            return Err(DropReason::MaxConnectionsPerIp);
        }
        if st.pending_handshakes >= limits.max_pending_handshakes {
            return Err(DropReason::MaxPendingHandshakes);
        }
        if st.pending_per_ip.get(&block).copied().unwrap_or(0)
            >= limits.max_pending_handshakes_per_ip
        {
            return Err(DropReason::MaxPendingHandshakesPerIp);
        }
        st.pending_handshakes += 1;
        *st.pending_per_ip.entry(block).or_default() += 1;
        st.total_conns += 1;
        *st.per_ip.entry(block).or_default() += 1;
        Ok(())
    }

    /// Whether an inbound QUIC handshake from an address that has not proven it can receive
    /// should be answered with a Retry: handshakes are piling up.
    fn under_handshake_pressure(&self) -> bool {
        self.lock().pending_handshakes >= self.config.limits.handshakes_before_retry
    }

    /// Releases what [`Inner::admit`] took, after a failed handshake.
    pub(crate) fn release_admission(&self, block: IpAddr) {
        let mut st = self.lock();
        handshake_done(&mut st, block);
        st.total_conns = st.total_conns.saturating_sub(1);
        release_ip(&mut st, block);
    }

    /// Takes a connection slot for a connection over an external byte stream (Tor, I2P, …),
    /// refusing at `max_connections`.
    pub(crate) fn reserve_stream_slot(self: &Arc<Self>) -> Result<StreamSlot, TransportError> {
        let mut st = self.lock();
        if st.stopped {
            return Err(TransportError::Closed("node stopped".into()));
        }
        if st.total_conns >= self.config.limits.max_connections {
            drop(st);
            self.count_drop(DropReason::MaxConnections, None, "stream connection");
            return Err(TransportError::Connect(
                "local connection limit reached".into(),
            ));
        }
        st.total_conns += 1;
        Ok(StreamSlot {
            inner: self.clone(),
            armed: true,
        })
    }

    /// Whether `address`, learned from a record (not given by the application), may be
    /// dialled: public addresses and names always; loopback, private and link-local ones per
    /// `NodeConfig::dial_private`.
    pub(crate) fn may_dial_learned(&self, address: &crate::record::Address) -> bool {
        if !matches!(address.transport, Transport::Quic | Transport::Tcp) {
            return true;
        }
        let Ok(ip) = address
            .host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        else {
            return true;
        };
        let bit = scope_bit(ip);
        if bit == 0 {
            return true;
        }
        if bit == 8 {
            return false;
        }
        match self.config.dial_private {
            Some(allowed) => allowed,
            None => self.dial_scopes.load(Ordering::Relaxed) & bit != 0,
        }
    }

    /// This node reached (or listens on) `ip`: its range is one the node is on.
    pub(crate) fn note_scope(&self, ip: IpAddr) {
        let bit = scope_bit(ip);
        if bit != 0 && bit != 8 {
            self.dial_scopes.fetch_or(bit, Ordering::Relaxed);
        }
    }

    /// How long an inbound handshake may hold its slot.
    fn inbound_handshake_timeout(&self) -> Duration {
        let t = &self.config.timeouts;
        t.inbound_handshake.min(t.connect)
    }

    /// Charges `cost` signature checks or key agreements to `peer`'s budget. `false` (the
    /// message is dropped, counted as a violation) when the peer has spent it.
    fn charge_verifications(
        &self,
        limiter: &Mutex<PeerLimiter>,
        peer: &NodeId,
        cost: usize,
        what: &str,
    ) -> bool {
        if cost == 0 {
            return true;
        }
        let ok = {
            let mut l = limiter.lock().unwrap_or_else(|p| p.into_inner());
            let ok = l.verifications.try_take(cost as f64, Instant::now());
            if !ok {
                l.violations += 1;
            }
            ok
        };
        if !ok {
            self.count_drop(DropReason::PeerVerificationRate, Some(peer), what);
        }
        ok
    }

    /// Releases the admission of an inbound handshake that failed and counts why.
    fn inbound_handshake_failed(&self, ip: IpAddr, transport: &str, error: &TransportError) {
        self.release_admission(ip);
        self.metrics.attempt("in", "error");
        self.count_drop(
            handshake_drop_reason(error),
            None,
            &format!("inbound {transport} handshake from {ip}: {error}"),
        );
    }

    /// Counts a failed handshake over an application-supplied byte stream.
    pub(crate) fn stream_handshake_failed(&self, error: &TransportError) {
        self.metrics.attempt("stream", "error");
        self.count_drop(
            handshake_drop_reason(error),
            None,
            &format!("byte-stream handshake: {error}"),
        );
    }

    /// Handles an inbound connection whose TLS handshake finished (admission already taken).
    pub(crate) fn inbound_established(self: &Arc<Self>, conn: Arc<dyn Connection>, ip: IpAddr) {
        handshake_done(&mut self.lock(), ip);
        self.inbound_seen.store(true, Ordering::Relaxed);
        self.metrics.attempt("in", "ok");
        if let Err(e) = self.establish(conn, true, Some(ip), None) {
            tracing::debug!(error = %e, "inbound connection not registered");
        }
    }

    /// Registers an authenticated connection (its connection slot already counted) and
    /// starts its tasks.
    pub(crate) fn establish(
        self: &Arc<Self>,
        conn: Arc<dyn Connection>,
        inbound: bool,
        ip: Option<IpAddr>,
        first_hop: Option<TransportKind>,
    ) -> Result<(), TransportError> {
        let peer = conn.peer();
        let first_hop = first_hop.unwrap_or_else(|| conn.kind());
        let id = self.next_conn_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = Writer {
            tx,
            budget: Arc::new(Semaphore::new(self.config.limits.connection_queue_bytes)),
        };
        // Silence is measured from establishment, not from node start.
        let last_rx = Arc::new(AtomicU64::new(self.started_at.elapsed().as_millis() as u64));
        let mut replaced = None;
        let refusal = {
            let mut st = self.lock();
            let refusal = if st.stopped {
                Some((
                    close_code::SHUTDOWN,
                    "node stopping",
                    DropReason::MaxConnections,
                ))
            } else if st.banned.contains(&peer) {
                Some((close_code::BANNED, "banned", DropReason::Banned))
            } else if peer == self.identity.node_id() {
                Some((
                    close_code::PROTOCOL,
                    "connected to ourselves",
                    DropReason::Handshake,
                ))
            } else if let Some(p) = st
                .peers
                .get(&peer)
                .filter(|p| p.conns.len() >= self.config.limits.max_connections_per_peer)
            {
                // At the limit, a connection over a transport the peer has none of (a Tor route
                // or a circuit beside two QUIC connections) replaces the oldest duplicate: one
                // per kind is worth more than two of one.
                replaced = duplicate_to_replace(&p.conns, conn.kind());
                replaced.is_none().then_some((
                    close_code::TOO_MANY,
                    "too many connections from this NodeId",
                    DropReason::MaxConnectionsPerPeer,
                ))
            } else {
                None
            };
            if refusal.is_some() {
                st.total_conns = st.total_conns.saturating_sub(1);
                if let Some(ip) = ip {
                    release_ip(&mut st, ip);
                }
            } else {
                let limits = &self.config.limits;
                let now = Instant::now();
                let started = self.started_at.elapsed().as_millis() as u64;
                let peer_entry = st.peers.entry(peer).or_insert_with(|| Peer {
                    conns: Vec::new(),
                    // A new connection counts as used: whatever it was opened for comes next.
                    counters: Arc::new(PeerCounters {
                        last_used_ms: AtomicU64::new(started),
                        ..PeerCounters::default()
                    }),
                    limiter: Arc::new(Mutex::new(PeerLimiter {
                        messages: TokenBucket::new(
                            f64::from(limits.peer_messages_per_sec),
                            f64::from(limits.peer_messages_per_sec),
                            now,
                        ),
                        bytes: TokenBucket::new(
                            limits.peer_bytes_per_sec as f64,
                            limits.peer_bytes_per_sec as f64,
                            now,
                        ),
                        verifications: TokenBucket::new(
                            f64::from(limits.peer_verifications_per_sec),
                            f64::from(limits.peer_verification_burst),
                            now,
                        ),
                        violations: 0,
                        window_start: now,
                    })),
                    record: None,
                    connected_at: now,
                    announced: false,
                });
                peer_entry.conns.push(ConnEntry {
                    id,
                    conn: conn.clone(),
                    writer: writer.clone(),
                    ready: false,
                    inbound,
                    first_hop,
                    ip,
                    last_rx: last_rx.clone(),
                    next_ping: now + keepalive_after(self.config.timeouts.keepalive),
                });
            }
            refusal
        };
        if let Some((code, reason, drop)) = refusal {
            conn.close(code, reason);
            self.count_drop(drop, Some(&peer), reason);
            return Err(TransportError::Closed(reason.into()));
        }
        if let Some(old) = replaced {
            tracing::debug!(%peer, kind = %old.kind(), new = %conn.kind(), "replacing a duplicate connection");
            old.close(
                close_code::REPLACED,
                "replaced by a connection over another transport",
            );
        }
        self.metrics
            .connections
            .get_or_create(&TransportLabels {
                transport: conn.kind().as_str(),
            })
            .inc();
        tracing::debug!(%peer, inbound, transport = %conn.kind(), "connection established");
        // Our record goes first on the envelope stream.
        let record = self.own_record();
        let env = envelope(proto::envelope::Body::NodeRecord(record.signed().clone()));
        if let Some(frame) = self.frame(&env) {
            let _ = writer.try_send(frame);
        }
        // Every task of the connection logs inside one span naming the peer.
        let span = tracing::info_span!("conn", peer = %peer, id, transport = %conn.kind(), inbound);
        let inner = self.clone();
        let c = conn.clone();
        self.tasks
            .spawn(async move { inner.write_loop(c, rx).await }.instrument(span.clone()));
        let inner = self.clone();
        let c = conn.clone();
        self.tasks
            .spawn(async move { inner.accept_loop(c, id, last_rx).await }.instrument(span.clone()));
        let inner = self.clone();
        self.tasks.spawn(
            async move {
                let reason = tokio::select! {
                    r = conn.closed() => r.to_string(),
                    () = inner.shutdown.cancelled() => {
                        conn.close(close_code::SHUTDOWN, "node shutting down");
                        "node shutting down".to_owned()
                    }
                };
                inner.deregister(peer, id, &reason);
            }
            .instrument(span),
        );
        Ok(())
    }

    /// Milliseconds since the node started: the clock of connection silence and use.
    pub(crate) fn elapsed_ms(&self) -> u64 {
        self.started_at.elapsed().as_millis() as u64
    }

    /// Records that something other than upkeep was sent to `peer` (an onion packet or a
    /// relayed message forwarded to it), so the connection does not count as unused.
    pub(crate) fn mark_used(&self, st: &State, peer: &NodeId) {
        if let Some(p) = st.peers.get(peer) {
            p.counters
                .last_used_ms
                .store(self.elapsed_ms(), Ordering::Relaxed);
        }
    }

    /// Records that a byte stream or a bridge circuit was opened with `peer`.
    pub(crate) fn mark_streams(&self, peer: &NodeId) {
        if let Some(p) = self.lock().peers.get(peer) {
            p.counters.streams.store(true, Ordering::Relaxed);
        }
    }

    /// Whether the node has a reason to stay connected to `peer` beyond the traffic it saw:
    /// the peer is kept (bootstrap, `add_peer`, `connect`), a gossip neighbour, or something
    /// for it is in flight (messages, acknowledgements, queries, DHT requests, held mail, an
    /// onion circuit through it).
    fn needed(st: &State, peer: &NodeId) -> bool {
        st.wanted.iter().any(|w| w.node == Some(*peer))
            || st.pinned.contains(peer)
            || st.gossip.is_neighbor(peer)
            || st.outbox.pending_for(peer) > 0
            || st.pending_acks.contains_key(peer)
            || st.queries.values().any(|q| q.peer == *peer)
            || st.finds.values().any(|(asked, _)| asked == peer)
            || st.looking_up.contains(peer)
            || st.depositing.contains(peer)
            || st.mailbox.waiting_for(peer) > 0
            || st.circuits.values().any(|c| c.first_relay() == Some(*peer))
    }

    /// The connections to close as unused ([`Timeouts::unused`](super::Timeouts::unused)):
    /// beyond `target_peers` ready peers, outbound direct connections to dialable peers that
    /// carried only upkeep for that long and are not otherwise needed, least recently used
    /// first, down to `target_peers`.
    fn unused_connections(&self, st: &State, ready: usize) -> Vec<Arc<dyn Connection>> {
        let unused = self.config.timeouts.unused.as_millis() as u64;
        let excess = ready.saturating_sub(self.config.target_peers);
        if unused == 0 || excess == 0 {
            return Vec::new();
        }
        let now_ms = self.elapsed_ms();
        let mut candidates: Vec<(u64, &Peer, &NodeId)> = st
            .peers
            .iter()
            .filter_map(|(id, p)| {
                let last_used = p.counters.last_used_ms.load(Ordering::Relaxed);
                let closable = !p.conns.is_empty()
                    && p.conns.iter().all(|c| {
                        c.ready
                            && !c.inbound
                            && matches!(c.conn.kind(), TransportKind::Quic | TransportKind::Tcp)
                            && c.first_hop == c.conn.kind()
                    })
                    && now_ms.saturating_sub(last_used) >= unused
                    && !p.counters.streams.load(Ordering::Relaxed)
                    && p.record.as_ref().is_some_and(|r| {
                        r.addresses()
                            .iter()
                            .any(|a| matches!(a.transport, Transport::Quic | Transport::Tcp))
                    })
                    && !Self::needed(st, id);
                closable.then_some((last_used, p, id))
            })
            .collect();
        candidates.sort_unstable_by_key(|(last_used, _, id)| (*last_used, *id.as_bytes()));
        candidates
            .into_iter()
            .take(excess)
            .flat_map(|(_, p, _)| p.conns.iter().map(|c| c.conn.clone()))
            .collect()
    }

    fn deregister(self: &Arc<Self>, peer: NodeId, id: u64, reason: &str) {
        let mut disconnected = false;
        let mut gone = false;
        let mut kind = None;
        {
            let mut st = self.lock();
            if let Some(p) = st.peers.get_mut(&peer) {
                if let Some(pos) = p.conns.iter().position(|c| c.id == id) {
                    let entry = p.conns.remove(pos);
                    kind = Some(entry.conn.kind());
                    let ip = entry.ip;
                    let empty = p.conns.is_empty();
                    let announced = p.announced;
                    st.total_conns = st.total_conns.saturating_sub(1);
                    if let Some(ip) = ip {
                        release_ip(&mut st, ip);
                    }
                    if empty {
                        st.peers.remove(&peer);
                        // The peer may come back restarted, without our session keys; a new
                        // connection starts with a fresh handshake (one key exchange) instead
                        // of messages it could not decrypt.
                        if let Some(old) = st.sessions.remove(&peer) {
                            for session in &old.sessions {
                                st.session_index.remove(&session.local_index());
                            }
                            if let Some((index, _)) = old.initiating {
                                st.initiators.remove(&index);
                            }
                        }
                        gone = true;
                        disconnected = announced;
                    }
                }
            }
            if disconnected {
                let now = Instant::now();
                for w in st.wanted.iter_mut().filter(|w| w.node == Some(peer)) {
                    w.next_attempt = now + w.backoff;
                }
            }
        }
        if let Some(kind) = kind {
            self.metrics
                .connections
                .get_or_create(&TransportLabels {
                    transport: kind.as_str(),
                })
                .dec();
            self.topology.send_modify(|v| *v += 1);
        }
        if gone {
            self.gossip_peer_gone(peer);
        }
        if disconnected {
            tracing::info!(%peer, reason, "peer disconnected");
            self.emit(Event::PeerDisconnected {
                peer,
                reason: reason.to_owned(),
            });
        }
    }

    async fn write_loop(
        self: Arc<Self>,
        conn: Arc<dyn Connection>,
        mut rx: mpsc::UnboundedReceiver<Frame>,
    ) {
        let (mut send, _recv): (SendHalf, RecvHalf) = match conn.open_bi().await {
            Ok(halves) => halves,
            Err(e) => {
                tracing::debug!(peer = %conn.peer(), error = %e, "cannot open envelope stream");
                conn.close(close_code::PROTOCOL, "cannot open envelope stream");
                return;
            }
        };
        let labels = BytesLabels {
            direction: "out",
            transport: conn.kind().as_str(),
        };
        let bytes_out = self.metrics.bytes.get_or_create(&labels).clone();
        if send.write_all(&[STREAM_ENVELOPES]).await.is_err() {
            return;
        }
        let mut batch = BytesMut::with_capacity(WRITE_BATCH);
        let mut held = Vec::new();
        while let Some(frame) = rx.recv().await {
            batch.extend_from_slice(&frame.bytes);
            held.push(frame);
            while batch.len() < WRITE_BATCH {
                match rx.try_recv() {
                    Ok(frame) => {
                        batch.extend_from_slice(&frame.bytes);
                        held.push(frame);
                    }
                    Err(_) => break,
                }
            }
            if let Err(e) = send.write_all(&batch).await {
                tracing::debug!(peer = %conn.peer(), error = %e, "envelope stream write failed");
                conn.close(close_code::PROTOCOL, "envelope stream failed");
                return;
            }
            bytes_out.inc_by(batch.len() as u64);
            self.totals
                .bytes_out
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            batch.clear();
            held.clear();
        }
        let _ = send.shutdown().await;
    }

    async fn accept_loop(
        self: Arc<Self>,
        conn: Arc<dyn Connection>,
        id: u64,
        last_rx: Arc<AtomicU64>,
    ) {
        let envelope_stream = Arc::new(AtomicBool::new(false));
        loop {
            let (send, recv) = match conn.accept_bi().await {
                Ok(halves) => halves,
                Err(_) => return,
            };
            // Each stream's header is read in its own task, so a peer that opens a stream and
            // stays silent delays nothing else.
            let inner = self.clone();
            let conn = conn.clone();
            let last_rx = last_rx.clone();
            let envelope_stream = envelope_stream.clone();
            self.tasks.spawn(
                async move {
                    inner
                        .accept_stream_kind(conn, id, send, recv, last_rx, envelope_stream)
                        .await;
                }
                .in_current_span(),
            );
        }
    }

    async fn accept_stream_kind(
        self: Arc<Self>,
        conn: Arc<dyn Connection>,
        id: u64,
        send: SendHalf,
        mut recv: RecvHalf,
        last_rx: Arc<AtomicU64>,
        envelope_stream: Arc<AtomicBool>,
    ) {
        let mut kind = [0u8; 1];
        let header =
            tokio::time::timeout(self.config.timeouts.connect, recv.read_exact(&mut kind)).await;
        if !matches!(header, Ok(Ok(_))) {
            self.count_drop(
                DropReason::Stream,
                Some(&conn.peer()),
                "stream without a header",
            );
            return;
        }
        match kind[0] {
            STREAM_ENVELOPES if !envelope_stream.swap(true, Ordering::Relaxed) => {
                self.read_loop(conn, id, recv, last_rx).await;
            }
            STREAM_USER => {
                self.mark_streams(&conn.peer());
                self.accept_user_stream(conn.peer(), send, recv).await;
            }
            super::circuit::STREAM_CIRCUIT => {
                self.mark_streams(&conn.peer());
                self.accept_circuit(conn, send, recv).await;
            }
            _ => {
                self.count_drop(
                    DropReason::Malformed,
                    Some(&conn.peer()),
                    "unknown or repeated stream kind",
                );
                conn.close(close_code::PROTOCOL, "unknown or repeated stream kind");
                self.emit(Event::Error {
                    context: "connection",
                    message: format!(
                        "closed connection to {}: unknown or repeated stream kind",
                        conn.peer()
                    ),
                });
            }
        }
    }

    async fn accept_user_stream(self: Arc<Self>, peer: NodeId, send: SendHalf, mut recv: RecvHalf) {
        let name = async {
            let len = recv.read_u8().await.ok()? as usize;
            if len == 0 {
                return None;
            }
            let mut name = vec![0u8; len];
            recv.read_exact(&mut name).await.ok()?;
            String::from_utf8(name).ok()
        };
        let Ok(Some(protocol)) = tokio::time::timeout(self.config.timeouts.connect, name).await
        else {
            self.count_drop(DropReason::Stream, Some(&peer), "bad stream header");
            return;
        };
        let listener = self
            .streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&protocol)
            .cloned();
        let Some(listener) = listener else {
            self.count_drop(
                DropReason::Stream,
                Some(&peer),
                "no listener for stream protocol",
            );
            return;
        };
        let stream = PeerStream::new(peer, protocol.clone(), send, recv);
        if listener.try_send(stream).is_err() {
            self.count_drop(DropReason::Stream, Some(&peer), "stream backlog full");
            if listener.is_closed() {
                self.streams
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&protocol);
            }
        }
    }

    async fn read_loop(
        self: Arc<Self>,
        conn: Arc<dyn Connection>,
        id: u64,
        mut recv: RecvHalf,
        last_rx: Arc<AtomicU64>,
    ) {
        let peer = conn.peer();
        let (counters, limiter) = {
            let st = self.lock();
            match st.peers.get(&peer) {
                Some(p) => (p.counters.clone(), p.limiter.clone()),
                None => return,
            }
        };
        let bytes_in = self
            .metrics
            .bytes
            .get_or_create(&BytesLabels {
                direction: "in",
                transport: conn.kind().as_str(),
            })
            .clone();
        let max_frame = self.config.limits.max_frame_len;
        let mut decoder = FrameDecoder::new(max_frame);
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let mut acks: HashMap<NodeId, Vec<MessageId>> = HashMap::new();
        loop {
            if buf.capacity() - buf.len() < 16 * 1024 {
                buf.reserve(64 * 1024);
            }
            let n = match recv.read_buf(&mut buf).await {
                Ok(0) | Err(_) => {
                    // The peer closed its envelope stream: it is leaving or broken either way.
                    conn.close(close_code::SHUTDOWN, "envelope stream ended");
                    return;
                }
                Ok(n) => n,
            };
            bytes_in.inc_by(n as u64);
            self.totals.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
            counters.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
            last_rx.store(
                self.started_at.elapsed().as_millis() as u64,
                Ordering::Relaxed,
            );
            loop {
                let frame = match decoder.decode(&mut buf) {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(e) => {
                        let reason = if matches!(e, wire::WireError::FrameTooLarge { .. }) {
                            DropReason::FrameTooLarge
                        } else {
                            DropReason::Malformed
                        };
                        self.count_drop(reason, Some(&peer), &e.to_string());
                        tracing::warn!(%peer, error = %e, "closing connection: bad frame");
                        self.emit(Event::Error {
                            context: "connection",
                            message: format!("closed connection to {peer}: {e}"),
                        });
                        conn.close(close_code::PROTOCOL, &e.to_string());
                        return;
                    }
                };
                // Per-peer rate limits, shared across the peer's connections.
                let verdict = {
                    let now = Instant::now();
                    let mut l = limiter.lock().unwrap_or_else(|p| p.into_inner());
                    if now.saturating_duration_since(l.window_start) > Duration::from_secs(60) {
                        l.window_start = now;
                        l.violations = 0;
                    }
                    let ok_msgs = l.messages.try_take(1.0, now);
                    let ok_bytes = ok_msgs && l.bytes.try_take(frame.len() as f64, now);
                    if ok_msgs && ok_bytes {
                        None
                    } else {
                        l.violations += 1;
                        let reason = if ok_msgs {
                            DropReason::PeerByteRate
                        } else {
                            DropReason::PeerMessageRate
                        };
                        Some((
                            reason,
                            l.violations > self.config.limits.peer_violations_before_disconnect,
                        ))
                    }
                };
                if let Some((reason, disconnect)) = verdict {
                    counters.drops.fetch_add(1, Ordering::Relaxed);
                    self.count_drop(reason, Some(&peer), "rate limit");
                    if disconnect {
                        tracing::warn!(%peer, "closing connection: persistent rate-limit violations");
                        conn.close(close_code::ABUSE, "rate limit exceeded repeatedly");
                        self.emit(Event::Error {
                            context: "connection",
                            message: format!(
                                "closed connection to {peer}: rate limit exceeded repeatedly"
                            ),
                        });
                        return;
                    }
                    continue;
                }
                counters.messages_in.fetch_add(1, Ordering::Relaxed);
                self.totals.messages_in.fetch_add(1, Ordering::Relaxed);
                let env = match wire::decode_envelope(frame, max_frame) {
                    Ok(env) => env,
                    Err(e) => {
                        self.count_drop(DropReason::Malformed, Some(&peer), &e.to_string());
                        continue;
                    }
                };
                if !is_upkeep(&env) {
                    counters
                        .last_used_ms
                        .store(self.elapsed_ms(), Ordering::Relaxed);
                }
                if let Err(close) = self.handle_envelope(&conn, id, env, &limiter, &mut acks) {
                    tracing::warn!(%peer, reason = close, "closing connection");
                    self.emit(Event::Error {
                        context: "connection",
                        message: format!("closed connection to {peer}: {close}"),
                    });
                    conn.close(close_code::PROTOCOL, close);
                    return;
                }
                // Messages refused for the verification budget count as violations too.
                let violations = limiter.lock().unwrap_or_else(|p| p.into_inner()).violations;
                if violations > self.config.limits.peer_violations_before_disconnect {
                    tracing::warn!(%peer, "closing connection: persistent budget violations");
                    conn.close(close_code::ABUSE, "verification budget exceeded repeatedly");
                    self.emit(Event::Error {
                        context: "connection",
                        message: format!(
                            "closed connection to {peer}: verification budget exceeded repeatedly"
                        ),
                    });
                    return;
                }
            }
            if !acks.is_empty() {
                self.send_acks(&mut acks);
            }
        }
    }

    fn send_acks(self: &Arc<Self>, acks: &mut HashMap<NodeId, Vec<MessageId>>) {
        let mut st = self.lock();
        let now = Instant::now();
        let mut unreachable = Vec::new();
        let mut drop_acks = 0;
        for (peer, ids) in acks.drain() {
            for chunk in ids.chunks(wire::MAX_IDS) {
                if let Some(bytes) = ack_payload(chunk) {
                    if self.send_payload(&mut st, &peer, &bytes, now) == Sent::Queued {
                        self.metrics.message("out", "ack");
                        continue;
                    }
                }
                // No connection or session to the sender yet (a message that came through a
                // mailbox, or a session being rekeyed): keep the acks until there is one.
                if !st.pending_acks.contains_key(&peer)
                    && st.pending_acks.len() >= self.config.limits.max_pending_ack_senders
                {
                    // The sender will resend and get its acknowledgement then.
                    drop_acks += chunk.len();
                    continue;
                }
                let pending = st.pending_acks.entry(peer).or_default();
                let room = PENDING_ACKS_PER_PEER.saturating_sub(pending.len());
                pending.extend(chunk.iter().take(room).copied());
                unreachable.push(peer);
            }
        }
        drop(st);
        if drop_acks > 0 {
            self.count_drop(
                DropReason::QueueFull,
                None,
                &format!("{drop_acks} acknowledgements: too many senders waiting for a way back"),
            );
        }
        for peer in unreachable {
            self.ensure_connected(peer);
        }
    }

    /// Handles one envelope from `conn`. An `Err` closes the connection.
    fn handle_envelope(
        self: &Arc<Self>,
        conn: &Arc<dyn Connection>,
        conn_id: u64,
        env: proto::Envelope,
        limiter: &Mutex<PeerLimiter>,
        acks: &mut HashMap<NodeId, Vec<MessageId>>,
    ) -> Result<(), &'static str> {
        use proto::envelope::Body;
        let peer = conn.peer();
        let Some(body) = env.body else {
            self.count_drop(
                DropReason::Unsupported,
                Some(&peer),
                "unknown envelope kind",
            );
            return Ok(());
        };
        let now = Instant::now();
        let ready = {
            let st = self.lock();
            st.peers
                .get(&peer)
                .and_then(|p| p.conns.iter().find(|c| c.id == conn_id))
                .is_some_and(|c| c.ready)
        };
        match body {
            Body::NodeRecord(signed) => {
                if !self.charge_verifications(limiter, &peer, 1, "node record") {
                    return Ok(());
                }
                let record = NodeRecord::verify(&signed, unix_secs()).map_err(|e| {
                    self.count_drop(DropReason::Malformed, Some(&peer), &e.to_string());
                    "invalid node record"
                })?;
                if record.node_id() != peer {
                    self.count_drop(DropReason::Malformed, Some(&peer), "record of another node");
                    return Err("node record does not match the connection's identity");
                }
                self.peer_ready(conn, conn_id, record, now);
                Ok(())
            }
            _ if !ready => Err("first envelope must be the peer's node record"),
            Body::Private(private) => {
                self.metrics.message("in", "private");
                self.handle_private(conn, private, limiter, acks, now);
                Ok(())
            }
            Body::Broadcast(signed) => {
                self.handle_plain_broadcast(peer, signed);
                Ok(())
            }
            Body::Gossip(gossip) => {
                self.handle_gossip(peer, gossip);
                Ok(())
            }
            Body::Routing(routing) => {
                use proto::routing_message::Body as R;
                self.metrics.message("in", "control");
                match routing.body {
                    Some(R::Ping(ping)) => {
                        let pong = envelope(Body::Routing(proto::RoutingMessage {
                            body: Some(R::Pong(proto::Pong { nonce: ping.nonce })),
                        }));
                        self.send_on(&peer, conn_id, &pong);
                    }
                    Some(R::Pong(_)) => {}
                    Some(R::FindNode(find)) => {
                        let records = {
                            let st = self.lock();
                            let mut target = [0u8; 32];
                            target.copy_from_slice(&find.target);
                            st.kad
                                .closest(&target, wire::MAX_FOUND_RECORDS + 1)
                                .into_iter()
                                .filter(|(_, id)| *id != peer)
                                .filter_map(|(_, id)| st.records.get(&id))
                                .take(wire::MAX_FOUND_RECORDS)
                                .map(|r| r.signed().clone())
                                .collect()
                        };
                        let found = envelope(Body::Routing(proto::RoutingMessage {
                            body: Some(R::FoundNodes(proto::FoundNodes {
                                request_id: find.request_id,
                                records,
                            })),
                        }));
                        self.send_on(&peer, conn_id, &found);
                    }
                    Some(R::FoundNodes(found)) => self.handle_found_nodes(&peer, found, limiter),
                    _ => self.count_drop(DropReason::Unsupported, Some(&peer), "routing message"),
                }
                Ok(())
            }
            Body::PeerExchange(px) => {
                self.metrics.message("in", "control");
                self.handle_peer_exchange(&peer, px, limiter);
                Ok(())
            }
            Body::Onion(o) => {
                self.handle_onion(peer, &o.packet);
                Ok(())
            }
            Body::StatusRequest(_) => {
                self.metrics.message("in", "control");
                let status = self.status_message();
                self.send_on(&peer, conn_id, &envelope(Body::Status(status)));
                Ok(())
            }
            _ => {
                self.count_drop(
                    DropReason::Unsupported,
                    Some(&peer),
                    "envelope kind not handled",
                );
                Ok(())
            }
        }
    }

    fn send_on(&self, peer: &NodeId, conn_id: u64, env: &proto::Envelope) {
        let Some(frame) = self.frame(env) else { return };
        let st = self.lock();
        if let Some(c) = st
            .peers
            .get(peer)
            .and_then(|p| p.conns.iter().find(|c| c.id == conn_id))
        {
            if let Err(reason) = c.writer.try_send(frame) {
                self.count_drop(reason, Some(peer), "control reply");
            }
        }
    }

    fn peer_ready(
        self: &Arc<Self>,
        conn: &Arc<dyn Connection>,
        conn_id: u64,
        record: NodeRecord,
        now: Instant,
    ) {
        let peer = conn.peer();
        let first = {
            let mut st = self.lock();
            let _ = st.records.insert(record.clone());
            // A peer proven by TLS: grouped by the address it connected from.
            let group = match conn.remote_addr() {
                Some(a) => peer_group(&peer, Some(a.ip())),
                None => record_group(&record),
            };
            st.kad.insert(*peer.as_bytes(), peer, group, now);
            let Some(p) = st.peers.get_mut(&peer) else {
                return;
            };
            p.record = Some(record);
            let mut first = false;
            if let Some(c) = p.conns.iter_mut().find(|c| c.id == conn_id) {
                c.ready = true;
            }
            if !p.announced {
                p.announced = true;
                first = true;
            }
            for w in st.wanted.iter_mut() {
                if w.node == Some(peer) {
                    w.reached = true;
                    w.backoff = self.config.timeouts.reconnect_min;
                    w.last_error = None;
                }
            }
            // Px on connect, so a node learns the network from its first peer.
            let px = self.exchange_message(&st, &peer);
            if let Some(c) = st
                .peers
                .get(&peer)
                .and_then(|p| p.conns.iter().find(|c| c.id == conn_id))
            {
                if let Some(frame) = self.frame(&px) {
                    let _ = c.writer.try_send(frame);
                }
            }
            self.flush_peer(&mut st, &peer, now);
            self.gossip_peer_ready(&mut st, peer, now);
            self.hand_over_mail(&mut st, &peer, now);
            first
        };
        self.topology.send_modify(|v| *v += 1);
        if first {
            tracing::info!(%peer, transport = %conn.kind(), "peer connected");
            // Never emit while holding the state lock: a dropped event may run code (an
            // unanswered query's responder) that takes the lock again.
            let inbound = self
                .lock()
                .peers
                .get(&peer)
                .and_then(|p| p.conns.iter().find(|c| c.id == conn_id))
                .is_some_and(|c| c.inbound);
            self.emit(Event::PeerConnected {
                peer,
                transport: conn.kind(),
                addr: conn.remote_addr(),
                inbound,
            });
        }
    }

    fn exchange_message(&self, st: &State, to: &NodeId) -> proto::Envelope {
        let now = unix_secs();
        let mut records: Vec<proto::SignedNodeRecord> = Vec::new();
        records.push(self.own_record().signed().clone());
        // Connected peers first (they are known to be alive), then other known records.
        for (id, p) in &st.peers {
            if records.len() >= wire::MAX_EXCHANGE_RECORDS {
                break;
            }
            if id != to {
                if let Some(r) = &p.record {
                    if !r.addresses().is_empty() && !r.is_expired(now) {
                        records.push(r.signed().clone());
                    }
                }
            }
        }
        envelope(proto::envelope::Body::PeerExchange(proto::PeerExchange {
            records,
        }))
    }

    /// An answer to one of our FindNode requests: verified records go into the record book and
    /// the routing table, and to the lookup that asked.
    fn handle_found_nodes(
        &self,
        from: &NodeId,
        found: proto::FoundNodes,
        limiter: &Mutex<PeerLimiter>,
    ) {
        let now = unix_secs();
        let me = self.identity.node_id();
        // A record byte-for-byte identical to one in the record book was verified when it was
        // stored: only its validity period needs checking again. Answers mostly repeat
        // records we hold, and a signature check costs ~55 µs.
        let (mut verified, unknown): (Vec<NodeRecord>, Vec<&proto::SignedNodeRecord>) = {
            let st = self.lock();
            // Only the peer we asked may answer a request; checked before any signature work.
            if !matches!(st.finds.get(&found.request_id), Some((asked, _)) if asked == from) {
                drop(st);
                self.count_drop(
                    DropReason::Unsupported,
                    Some(from),
                    "unsolicited FoundNodes",
                );
                return;
            }
            let mut known = Vec::new();
            let mut unknown = Vec::new();
            for signed in &found.records {
                match st.records.get_identical(signed) {
                    Some(r) if !r.is_expired(now) => known.push(r.clone()),
                    _ => unknown.push(signed),
                }
            }
            (known, unknown)
        };
        verified.retain(|r| r.node_id() != me);
        if !self.charge_verifications(limiter, from, unknown.len(), "FoundNodes") {
            return;
        }
        for signed in unknown {
            match NodeRecord::verify(signed, now) {
                Ok(record) if record.node_id() != me => verified.push(record),
                Ok(_) => {}
                Err(e) => self.count_drop(DropReason::Crypto, Some(from), &e.to_string()),
            }
        }
        let mut st = self.lock();
        let t = Instant::now();
        for record in &verified {
            let id = record.node_id();
            if st.banned.contains(&id) {
                continue;
            }
            st.kad.insert(*id.as_bytes(), id, record_group(record), t);
            let _ = st.records.insert(record.clone());
        }
        if let Some((_, reply)) = st.finds.remove(&found.request_id) {
            let _ = reply.send(verified);
        }
    }

    /// Connects to `peer` from its record unless a ready connection exists, and waits until the
    /// connection is usable (the peer's record has arrived on it). Bounded by the connect timeout.
    pub(crate) async fn ready_connection(self: Arc<Self>, peer: NodeId) -> bool {
        let timeout = self.config.timeouts.connect;
        if self.lock().is_ready(&peer) {
            return true;
        }
        let addr = {
            let st = self.lock();
            st.peer_record(&peer).and_then(|r| {
                r.addresses()
                    .iter()
                    .find(|a| self.can_dial(a.transport) && self.may_dial_learned(a))
                    .cloned()
            })
        };
        // A connection to the peer that is not ready yet (ours or its own dial, say both
        // looked each other up at once) is waited for rather than duplicated: a further dial
        // could be refused at the per-peer connection cap while that one completes.
        let connecting = |inner: &Self| {
            inner
                .lock()
                .peers
                .get(&peer)
                .is_some_and(|p| !p.conns.is_empty())
        };
        if !connecting(&self) {
            let Some(addr) = addr else { return false };
            let addr = PeerAddr {
                node: Some(peer),
                address: addr,
            };
            let dialled = matches!(
                tokio::time::timeout(timeout, self.connect(&addr)).await,
                Ok(Ok(_))
            );
            if !dialled && !connecting(&self) {
                return false;
            }
        }
        tokio::time::timeout(timeout, async {
            while !self.lock().is_ready(&peer) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .is_ok()
    }

    /// Asks `peer` for the records closest to `target`, connecting to it first if needed.
    pub(crate) async fn find_node(
        self: Arc<Self>,
        peer: NodeId,
        target: [u8; 32],
    ) -> Option<Vec<NodeRecord>> {
        if !self.clone().ready_connection(peer).await {
            return None;
        }
        let request_id = rand_core::RngCore::next_u64(&mut rand_core::OsRng);
        let (tx, rx) = oneshot::channel();
        let writer = {
            let mut st = self.lock();
            let writer = st.ready_writer(&peer)?;
            st.finds.insert(request_id, (peer, tx));
            writer
        };
        let env = envelope(proto::envelope::Body::Routing(proto::RoutingMessage {
            body: Some(proto::routing_message::Body::FindNode(proto::FindNode {
                request_id,
                target: Bytes::copy_from_slice(&target),
            })),
        }));
        let sent = self
            .frame(&env)
            .is_some_and(|frame| writer.try_send(frame).is_ok());
        let answer = if sent {
            tokio::time::timeout(KadConfig::default().request_timeout, rx)
                .await
                .ok()
                .and_then(Result::ok)
        } else {
            None
        };
        self.lock().finds.remove(&request_id);
        answer
    }

    /// Finds `target`'s signed record through the DHT: an iterative Kademlia lookup over
    /// FindNode requests. Returns whether the record is now in the record book.
    pub(crate) async fn lookup_record(self: Arc<Self>, target: NodeId) -> bool {
        self.clone().lookup(*target.as_bytes(), true).await;
        self.lock().records.get(&target).is_some()
    }

    /// An iterative Kademlia lookup of `target` over FindNode requests. With `stop_when_found`
    /// it ends as soon as a record with that key is learned (a search for one node); without,
    /// it converges on the `k` closest nodes that answer, asking each of them, which is what
    /// the self-lookup and bucket refreshes need: asking a node connects to it, and a node
    /// that sees us connect inserts us into its routing table.
    pub(crate) async fn lookup(
        self: Arc<Self>,
        target: [u8; 32],
        stop_when_found: bool,
    ) -> kad::LookupResult<NodeId> {
        let mut lookup = {
            let st = self.lock();
            let lookup = Lookup::new(&st.kad, target);
            if stop_when_found {
                lookup.stop_when_found()
            } else {
                lookup
            }
        };
        let (tx, mut rx) = mpsc::unbounded_channel::<(NodeId, Option<Vec<NodeRecord>>)>();
        let give_up = tokio::time::Instant::now() + LOOKUP_TIMEOUT;
        loop {
            match lookup.poll(Instant::now()) {
                LookupStep::Query(peer) => {
                    let inner = self.clone();
                    let tx = tx.clone();
                    self.tasks.spawn(async move {
                        let answer = inner.find_node(peer, target).await;
                        let _ = tx.send((peer, answer));
                    });
                }
                LookupStep::Wait(deadline) => {
                    let until = tokio::time::Instant::from_std(deadline).min(give_up);
                    tokio::select! {
                        answer = rx.recv() => match answer {
                            Some((peer, Some(records))) => lookup.on_response(
                                peer.as_bytes(),
                                records.iter().map(|r| (*r.node_id().as_bytes(), r.node_id())),
                            ),
                            Some((peer, None)) => {
                                lookup.on_failure(peer.as_bytes());
                                self.lock().kad.failed(peer.as_bytes());
                            }
                            None => break,
                        },
                        _ = tokio::time::sleep_until(until) => {
                            let expired = lookup.expire(Instant::now());
                            let mut st = self.lock();
                            for key in expired {
                                st.kad.failed(&key);
                            }
                        }
                        _ = self.shutdown.cancelled() => break,
                    }
                    if tokio::time::Instant::now() >= give_up {
                        break;
                    }
                }
                _ => break,
            }
        }
        let result = lookup.result();
        tracing::debug!(
            target = %data_encoding::HEXLOWER.encode(&target[..8]),
            found = result.found,
            hops = ?result.hops,
            queries = result.queries,
            failures = result.failures,
            closest = result.closest.len(),
            "DHT lookup"
        );
        result
    }

    fn handle_peer_exchange(
        self: &Arc<Self>,
        from: &NodeId,
        px: proto::PeerExchange,
        limiter: &Mutex<PeerLimiter>,
    ) {
        let now = unix_secs();
        let me = self.identity.node_id();
        // Records we already hold byte for byte need no signature check; the others are
        // checked against the peer's verification budget and outside the state lock.
        let (mut records, unknown): (Vec<NodeRecord>, Vec<&proto::SignedNodeRecord>) = {
            let st = self.lock();
            let mut known = Vec::new();
            let mut unknown = Vec::new();
            for signed in &px.records {
                match st.records.get_identical(signed) {
                    Some(r) if !r.is_expired(now) => known.push(r.clone()),
                    _ => unknown.push(signed),
                }
            }
            (known, unknown)
        };
        if !self.charge_verifications(limiter, from, unknown.len(), "peer exchange") {
            return;
        }
        for signed in unknown {
            match NodeRecord::verify(signed, now) {
                Ok(record) => records.push(record),
                Err(e) => self.count_drop(DropReason::Crypto, Some(from), &e.to_string()),
            }
        }
        let mut discovered = Vec::new();
        {
            let mut st = self.lock();
            let t = Instant::now();
            for record in records {
                let id = record.node_id();
                if id == me || st.banned.contains(&id) {
                    continue;
                }
                let new = st.records.get(&id).is_none();
                st.kad.insert(*id.as_bytes(), id, record_group(&record), t);
                let _ = st.records.insert(record);
                if new && !st.peers.contains_key(&id) {
                    discovered.push(id);
                }
            }
            let room = self.config.target_peers.saturating_sub(st.peers.len());
            discovered.truncate(room);
        }
        for id in discovered {
            self.emit(Event::PeerDiscovered {
                peer: id,
                via: "peer-exchange",
            });
            self.ensure_connected(id);
        }
    }

    fn handle_private(
        self: &Arc<Self>,
        conn: &Arc<dyn Connection>,
        private: proto::PrivateEnvelope,
        limiter: &Mutex<PeerLimiter>,
        acks: &mut HashMap<NodeId, Vec<MessageId>>,
        now: Instant,
    ) {
        use proto::private_envelope::Body as P;
        let from_conn = conn.peer();
        if private.recipient.as_ref() != self.identity.node_id().as_bytes() {
            self.handle_transit(&from_conn, private, now);
            return;
        }
        let Some(body) = private.body else { return };
        match body {
            P::HandshakeInit(init) => {
                // Two key agreements for the answer, one for the initiator's static key and
                // the record's signature.
                if !self.charge_verifications(limiter, &from_conn, 4, "handshake init") {
                    return;
                }
                let answered = {
                    let mut guard = self
                        .handshake_guard
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    session::respond(&self.identity, &init, &mut guard, unix_secs(), now)
                };
                let mut st = self.lock();
                let st = &mut *st;
                match answered {
                    Ok((session, _)) if session.peer_id() != from_conn => {
                        // Until relaying exists, a handshake must come from the peer itself;
                        // otherwise one connection could mint sessions for any identity.
                        self.count_drop(
                            DropReason::Crypto,
                            Some(&from_conn),
                            "handshake for another identity",
                        );
                    }
                    Ok((session, response)) => {
                        let initiator = session.peer_id();
                        let _ = st.records.insert(session.peer().clone());
                        self.add_session(st, session);
                        let env = private_envelope(&initiator, P::HandshakeResponse(response));
                        if let (Some(frame), Some(writer)) =
                            (self.frame(&env), st.ready_writer(&from_conn))
                        {
                            if let Err(reason) = writer.try_send(frame) {
                                self.count_drop(reason, Some(&from_conn), "handshake response");
                            }
                        }
                    }
                    Err(e) => self.count_drop(DropReason::Crypto, Some(&from_conn), &e.to_string()),
                }
            }
            P::HandshakeResponse(response) => {
                let mut st = self.lock();
                let Some(initiator) = st.initiators.remove(&response.initiator_index) else {
                    self.count_drop(
                        DropReason::Crypto,
                        Some(&from_conn),
                        "unexpected handshake response",
                    );
                    return;
                };
                let peer = initiator.responder().node_id();
                match initiator.complete(&self.identity, &response, now) {
                    Ok(session) => {
                        if let Some(s) = st.sessions.get_mut(&peer) {
                            s.initiating = None;
                        }
                        self.add_session(&mut st, session);
                        self.flush_peer(&mut st, &peer, now);
                    }
                    Err(e) => self.count_drop(DropReason::Crypto, Some(&from_conn), &e.to_string()),
                }
            }
            P::Session(msg) => {
                let decrypted = {
                    let mut st = self.lock();
                    let Some(peer) = st.session_index.get(&msg.session_index).copied() else {
                        self.count_drop(DropReason::Crypto, Some(&from_conn), "unknown session");
                        return;
                    };
                    let Some(sessions) = st.sessions.get_mut(&peer) else {
                        return;
                    };
                    let Some(session) = sessions
                        .sessions
                        .iter_mut()
                        .find(|s| s.local_index() == msg.session_index)
                    else {
                        return;
                    };
                    let was_confirmed = session.is_confirmed();
                    match session.decrypt(&msg, now) {
                        Ok(plain) => {
                            if !was_confirmed {
                                // The initiator proved the session: messages waiting for this
                                // peer can go out on it.
                                self.flush_peer(&mut st, &peer, now);
                            }
                            Some((peer, plain))
                        }
                        Err(e) => {
                            self.count_drop(DropReason::Crypto, Some(&from_conn), &e.to_string());
                            None
                        }
                    }
                };
                if let Some((sender, plain)) = decrypted {
                    match message::decode_payload(&plain) {
                        Ok(payload) => {
                            self.dispatch_payload(sender, Some(conn.kind()), payload, acks, now)
                        }
                        Err(e) => {
                            self.count_drop(DropReason::Malformed, Some(&sender), &e.to_string())
                        }
                    }
                }
            }
            P::Sealed(sealed) => {
                if !self.charge_verifications(limiter, &from_conn, 2, "sealed message") {
                    return;
                }
                match crate::crypto::seal::open(&self.identity, &sealed, unix_secs()) {
                    Ok(opened) => {
                        let sender = opened.sender.node_id();
                        // A message that came through a mailbox: its acknowledgement needs a
                        // way back to the sender.
                        let _ = self.lock().records.insert(opened.sender.clone());
                        match message::decode_payload(&opened.payload) {
                            Ok(payload) => self.dispatch_payload(sender, None, payload, acks, now),
                            Err(e) => self.count_drop(
                                DropReason::Malformed,
                                Some(&sender),
                                &e.to_string(),
                            ),
                        }
                    }
                    Err(e) => self.count_drop(DropReason::Crypto, Some(&from_conn), &e.to_string()),
                }
            }
        }
    }

    pub(crate) fn dispatch_payload(
        self: &Arc<Self>,
        sender: NodeId,
        via: Option<TransportKind>,
        payload: proto::PrivatePayload,
        acks: &mut HashMap<NodeId, Vec<MessageId>>,
        now: Instant,
    ) {
        use proto::private_payload::Body as B;
        let Some(body) = payload.body else { return };
        match body {
            B::Message(m) => {
                let id =
                    match message::verify_private_message(&m, &sender, &self.identity.node_id()) {
                        Ok(id) => id,
                        Err(e) => {
                            self.count_drop(DropReason::Crypto, Some(&sender), &e.to_string());
                            return;
                        }
                    };
                if m.ack_requested {
                    acks.entry(sender).or_default().push(id);
                }
                if !self.lock().seen_messages.insert(id) {
                    self.metrics.drop(DropReason::Duplicate);
                    return;
                }
                self.emit(Event::Message(ReceivedMessage {
                    id,
                    from: sender,
                    content_type: m.content_type,
                    content: m.content,
                    sent_at_ms: m.sent_at_ms,
                    via,
                }));
            }
            B::Ack(ack) => {
                self.metrics.message("in", "ack");
                let mut confirmed = Vec::new();
                {
                    let mut st = self.lock();
                    for raw in &ack.message_ids {
                        let Ok(bytes) = <[u8; 32]>::try_from(raw.as_ref()) else {
                            continue;
                        };
                        let id = MessageId(bytes);
                        if let Some(done) = st.outbox.handle_ack(&id, &sender, now) {
                            let delivered = Delivered {
                                id,
                                peer: sender,
                                latency: done.latency.unwrap_or_default(),
                                attempts: done.attempts,
                            };
                            if let Some(waiter) = st.waiters.remove(&id) {
                                let _ = waiter.send(Ok(delivered));
                            }
                            confirmed.push(delivered);
                        }
                    }
                    self.metrics.outbox.set(st.outbox.len() as i64);
                }
                for d in confirmed {
                    self.metrics
                        .delivery_latency
                        .observe(d.latency.as_secs_f64());
                    self.metrics
                        .deliveries
                        .get_or_create(&super::metrics::ResultLabels {
                            result: "confirmed",
                        })
                        .inc();
                    self.emit(Event::DeliveryConfirmed {
                        id: d.id,
                        peer: d.peer,
                        latency: d.latency,
                        attempts: d.attempts,
                    });
                }
            }
            B::Query(q) => {
                self.metrics.message("in", "query");
                let Ok(query_id) = <[u8; 16]>::try_from(q.query_id.as_ref()) else {
                    return;
                };
                let over = {
                    let mut st = self.lock();
                    if st.inbound_queries >= self.config.limits.max_inbound_queries {
                        true
                    } else {
                        st.inbound_queries += 1;
                        false
                    }
                };
                if over {
                    self.count_drop(
                        DropReason::InboundQueries,
                        Some(&sender),
                        "too many unanswered queries",
                    );
                    let mut st = self.lock();
                    st.inbound_queries += 1;
                    drop(st);
                    let _ = self.send_query_response(
                        sender,
                        query_id,
                        503,
                        Bytes::new(),
                        "busy: too many unanswered queries".into(),
                    );
                    return;
                }
                if q.method == "meshara.status" {
                    let status = self.status_message();
                    let _ = self.send_query_response(
                        sender,
                        query_id,
                        0,
                        Bytes::from(status.encode_to_vec()),
                        String::new(),
                    );
                    return;
                }
                let timeout = Duration::from_millis(u64::from(q.timeout_ms));
                let query = IncomingQuery::new(
                    sender,
                    q.method,
                    q.body,
                    timeout,
                    Responder {
                        node: self.weak.clone(),
                        peer: sender,
                        query_id,
                        answered: Mutex::new(false),
                    },
                );
                self.emit(Event::Query(query));
            }
            B::Response(r) => {
                self.metrics.message("in", "response");
                let Ok(query_id) = <[u8; 16]>::try_from(r.query_id.as_ref()) else {
                    return;
                };
                let pending = {
                    let mut st = self.lock();
                    match st.queries.get(&query_id) {
                        Some(q) if q.peer == sender => st.queries.remove(&query_id),
                        _ => None,
                    }
                };
                if let Some(q) = pending {
                    self.metrics
                        .query_latency
                        .observe(q.started.elapsed().as_secs_f64());
                    let answer = if r.status == 0 {
                        Ok(r.body)
                    } else {
                        Err(QueryError::Rejected {
                            peer: sender,
                            status: r.status,
                            message: r.error,
                        })
                    };
                    let _ = q.reply.send(answer);
                }
            }
        }
    }

    pub(crate) fn status_message(&self) -> proto::NodeStatus {
        let st = self.lock();
        proto::NodeStatus {
            record: Some(self.own_record().signed().clone()),
            uptime_s: self.started_at.elapsed().as_secs(),
            peer_count: u32::try_from(st.peers.len()).unwrap_or(u32::MAX),
            // Who we are connected to is not published (see NodeStatus.peers in the proto).
            peers: Vec::new(),
            topics: st
                .gossip
                .topics
                .keys()
                .take(wire::MAX_STATUS_TOPICS)
                .cloned()
                .collect(),
            messages_in: self.totals.messages_in.load(Ordering::Relaxed),
            messages_out: self.totals.messages_out.load(Ordering::Relaxed),
            bytes_in: self.totals.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.totals.bytes_out.load(Ordering::Relaxed),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Maintenance

    pub(crate) async fn maintenance(self: Arc<Self>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let gossip_due = self.lock().gossip.next_timeout();
            let far = Instant::now() + TICK * 10;
            let gossip = tokio::time::sleep_until(gossip_due.unwrap_or(far).into());
            tokio::select! {
                _ = tick.tick() => self.tick(Instant::now()),
                () = gossip, if gossip_due.is_some() => self.gossip_timers(Instant::now()),
                () = self.shutdown.cancelled() => return,
            }
        }
    }

    fn tick(self: &Arc<Self>, now: Instant) {
        // The node's own record is signed again at half its validity period, so a node that
        // runs for weeks never hands out an expired record.
        let own = self.own_record();
        let half_life = own.expires_at().saturating_sub(own.issued_at()) / 2;
        if unix_secs() >= own.issued_at().saturating_add(half_life) {
            if let Err(e) = self.resign_record(None) {
                tracing::warn!(error = %e, "cannot sign the node record again");
            }
        }
        let t = &self.config.timeouts;
        let mut dial_peers = Vec::new();
        let mut route_dials = Vec::new();
        let mut dial_wanted = Vec::new();
        let mut failed = Vec::new();
        let mut close = Vec::new();
        let deposits;
        let mut self_lookup = false;
        let mut refresh: Vec<[u8; 32]> = Vec::new();
        let mut onion_sends = Vec::new();
        let mut cover = false;
        let unused;
        {
            let mut st = self.lock();
            let st = &mut *st;
            // Delivery: (re)send what is due, fail what is out of attempts or time.
            let ready: HashSet<NodeId> = st
                .peers
                .iter()
                .filter(|(_, p)| p.conns.iter().any(|c| c.ready))
                .map(|(id, _)| *id)
                .collect();
            // Tor and I2P messages wait for a connection over their own transport.
            let ready_over: HashSet<(NodeId, TransportKind)> = st
                .peers
                .iter()
                .flat_map(|(id, p)| {
                    p.conns
                        .iter()
                        .filter(|c| c.ready)
                        .map(move |c| (*id, c.first_hop))
                })
                .collect();
            let actions = st.outbox.poll(now, |peer, privacy| {
                match (carrier(privacy), privacy.transport()) {
                    (Some(kind), Some(transport)) => {
                        let ready = ready_over.contains(&(*peer, kind));
                        if !ready {
                            route_dials.push((*peer, transport));
                        }
                        ready
                    }
                    _ => {
                        if !ready.contains(peer) {
                            dial_peers.push(*peer);
                        }
                        ready.contains(peer)
                    }
                }
            });
            for action in actions {
                match action {
                    OutboxAction::Send {
                        id,
                        peer,
                        payload,
                        privacy: Privacy::Onion,
                        attempt,
                    } => {
                        // A resend means the last circuit may have lost it: build a new one.
                        onion_sends.push((id, peer, payload, attempt > 0));
                        st.outbox.mark_sent(&id, now);
                    }
                    OutboxAction::Send {
                        id,
                        peer,
                        payload,
                        privacy,
                        ..
                    } => {
                        let over = carrier(privacy);
                        if self.send_payload_over(st, &peer, &payload, now, over) == Sent::Queued {
                            st.outbox.mark_sent(&id, now);
                        }
                    }
                    OutboxAction::Fail { id, peer, attempts } => {
                        if let Some(waiter) = st.waiters.remove(&id) {
                            let _ = waiter.send(Err(DeliveryError::Unacknowledged {
                                id,
                                peer,
                                attempts,
                            }));
                        }
                        failed.push((id, peer, attempts));
                    }
                }
            }
            self.metrics.outbox.set(st.outbox.len() as i64);
            // Store-and-forward: deposit what waits for recipients we failed to reach, and try
            // to reach the recipients of what we hold.
            deposits = self.due_deposits(st, now);
            if now >= st.next_mailbox_poll {
                st.next_mailbox_poll = now + MAILBOX_POLL;
                st.mailbox.expire(now);
                let held: Vec<NodeId> = st
                    .mailbox
                    .recipients()
                    .filter(|r| !ready.contains(r))
                    .copied()
                    .collect();
                dial_peers.extend(held);
            }
            // Cover traffic: onion packets looping back to us at random intervals.
            match st.next_cover {
                None => st.next_cover = self.next_cover(now),
                Some(at) if now >= at => {
                    st.next_cover = self.next_cover(now);
                    cover = true;
                }
                Some(_) => {}
            }
            // Looking ourselves up connects us to our closest nodes, which hold what was sent to
            // us while we were away.
            // Every `timeouts.dht_refresh`, the first time as soon as we have a connection.
            if !t.dht_refresh.is_zero() && !ready.is_empty() && now >= st.next_self_lookup {
                st.next_self_lookup = now + t.dht_refresh;
                self_lookup = true;
                // Bucket refresh: a lookup of a random key in each bucket nobody in it has
                // been heard from for a while, a few per round, so a quiet table keeps live
                // entries and learns the nodes that joined since.
                for bucket in st
                    .kad
                    .stale_buckets(now, BUCKET_STALE)
                    .into_iter()
                    .take(REFRESH_LOOKUPS)
                {
                    let mut random = [0u8; 32];
                    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut random);
                    refresh.push(st.kad.key_in_bucket(bucket, random));
                }
            }
            // Unsent queries wait for a connection too.
            for q in st.queries.values() {
                if !q.sent && !ready.contains(&q.peer) {
                    dial_peers.push(q.peer);
                }
            }
            // Keepalive pings and idle connections.
            let elapsed_ms = self.started_at.elapsed().as_millis() as u64;
            let ping = envelope(proto::envelope::Body::Routing(proto::RoutingMessage {
                body: Some(proto::routing_message::Body::Ping(proto::Ping {
                    nonce: elapsed_ms,
                })),
            }));
            let ping = self.frame(&ping);
            for p in st.peers.values_mut() {
                for c in &mut p.conns {
                    let last_rx = c.last_rx.load(Ordering::Relaxed);
                    let silent = Duration::from_millis(elapsed_ms.saturating_sub(last_rx));
                    if silent >= t.idle {
                        close.push(c.conn.clone());
                    } else if c.ready && now >= c.next_ping {
                        c.next_ping = now + keepalive_after(t.keepalive);
                        if let Some(frame) = &ping {
                            let _ = c.writer.try_send(frame.clone());
                        }
                    }
                }
            }
            // Connections this node opened (for a lookup, a top-up) and no longer uses.
            unused = self.unused_connections(st, ready.len());
            // Periodic peer exchange.
            if now.saturating_duration_since(st.last_exchange) >= t.peer_exchange {
                st.last_exchange = now;
                let targets: Vec<NodeId> = ready.iter().copied().collect();
                for peer in targets {
                    let px = self.exchange_message(st, &peer);
                    if let (Some(frame), Some(w)) = (self.frame(&px), st.ready_writer(&peer)) {
                        let _ = w.try_send(frame);
                    }
                }
                // Top up toward target_peers from known records.
                let room = self.config.target_peers.saturating_sub(st.peers.len());
                let candidates: Vec<NodeId> = st
                    .records
                    .iter()
                    .map(|r| r.node_id())
                    .filter(|id| {
                        !st.peers.contains_key(id)
                            && !st.banned.contains(id)
                            && *id != self.identity.node_id()
                    })
                    .take(room)
                    .collect();
                dial_peers.extend(candidates);
                let _ = st.records.prune(unix_secs());
            }
            // Session upkeep: rekey old initiator sessions, forget expired ones.
            let mut rekey = Vec::new();
            for (peer, s) in st.sessions.iter_mut() {
                s.sessions.retain(|session| !session.is_expired(now));
                let newest_initiator_old = s
                    .sessions
                    .iter()
                    .rev()
                    .find(|x| x.role() == Role::Initiator)
                    .is_some_and(|x| x.should_rehandshake(now));
                // A handshake that never got an answer must not block rekeying forever.
                let stuck = s
                    .initiating
                    .is_some_and(|(_, started)| now.saturating_duration_since(started) >= t.ack);
                if newest_initiator_old && (s.initiating.is_none() || stuck) {
                    rekey.push(*peer);
                }
            }
            // Forget handshakes that were never answered (the peer went away), then entries
            // left with nothing in them.
            let abandon_after = t.ack * 4;
            let mut abandoned = Vec::new();
            for s in st.sessions.values_mut() {
                if let Some((index, started)) = s.initiating {
                    if now.saturating_duration_since(started) >= abandon_after {
                        s.initiating = None;
                        abandoned.push(index);
                    }
                }
            }
            for index in abandoned {
                st.initiators.remove(&index);
            }
            st.sessions
                .retain(|_, s| !s.sessions.is_empty() || s.initiating.is_some());
            let live: HashSet<u64> = st
                .sessions
                .values()
                .flat_map(|s| s.sessions.iter().map(Session::local_index))
                .collect();
            st.session_index.retain(|index, _| live.contains(index));
            for peer in rekey {
                if let Some(w) = st.ready_writer(&peer) {
                    self.start_handshake(st, &peer, &w, now);
                }
            }
            let lifetime = self.config.onion.circuit_lifetime;
            st.circuits
                .retain(|_, c| now.saturating_duration_since(c.built()) < lifetime);
            let stale = t.reconnect_max;
            st.dial_backoff
                .retain(|_, (next, _)| now.saturating_duration_since(*next) < stale);
            st.unfindable.retain(|_, until| now < *until);
            // Wanted peers: reconnect with backoff.
            for w in st.wanted.iter_mut() {
                let connected = w.node.is_some_and(|n| ready.contains(&n));
                if connected || w.dialing || now < w.next_attempt {
                    continue;
                }
                w.dialing = true;
                dial_wanted.push(w.addr.clone());
            }
        }
        for conn in close {
            conn.close(close_code::IDLE, "idle timeout");
        }
        for conn in unused {
            tracing::debug!(peer = %conn.peer(), "closing a connection no longer used");
            conn.close(close_code::UNUSED, "unused");
        }
        for (id, peer, attempts) in failed {
            self.metrics
                .deliveries
                .get_or_create(&super::metrics::ResultLabels { result: "failed" })
                .inc();
            tracing::info!(%peer, %id, attempts, "private message not acknowledged");
            self.emit(Event::DeliveryFailed { id, peer, attempts });
        }
        dial_peers.sort_unstable_by_key(|p| *p.as_bytes());
        dial_peers.dedup();
        for peer in dial_peers {
            self.ensure_connected(peer);
        }
        let route_dials: HashSet<(NodeId, Transport)> = route_dials.into_iter().collect();
        for (peer, transport) in route_dials {
            self.ensure_route(peer, transport);
        }
        for addr in dial_wanted {
            let inner = self.clone();
            self.tasks
                .spawn(async move { inner.dial_wanted(addr).await });
        }
        for peer in deposits {
            self.tasks.spawn(self.clone().run_deposit(peer));
        }
        super::onion::spawn_sends(self, onion_sends);
        if cover {
            self.tasks.spawn(self.clone().send_cover());
        }
        if self_lookup {
            // Converges on our closest nodes rather than stopping at the first one that knows
            // us (which, for our own key, is any node we are connected to): that is what puts
            // us in their routing tables and them in ours.
            let me = *self.identity.node_id().as_bytes();
            let inner = self.clone();
            self.tasks.spawn(async move {
                inner.lookup(me, false).await;
            });
        }
        for key in refresh {
            let inner = self.clone();
            self.tasks.spawn(async move {
                inner.lookup(key, false).await;
            });
        }
    }

    async fn dial_wanted(self: Arc<Self>, addr: PeerAddr) {
        let result = self.connect(&addr).await;
        let mut report = None;
        let mut st = self.lock();
        let t = &self.config.timeouts;
        if let Some(w) = st.wanted.iter_mut().find(|w| w.addr == addr) {
            w.dialing = false;
            match result {
                Ok(node) => {
                    w.node = Some(node);
                    w.reached = true;
                    w.last_error = None;
                    w.backoff = t.reconnect_min;
                    w.next_attempt = Instant::now() + w.backoff;
                }
                Err(e) => {
                    tracing::debug!(%addr, error = %e, backoff = ?w.backoff, "dial failed; will retry");
                    report = Some(Event::Error {
                        context: "dial",
                        message: format!("{addr}: {e} (retrying in {:?})", w.backoff),
                    });
                    w.last_error = Some(e.to_string());
                    // Exponential backoff with up to 25% jitter so restarts do not synchronise.
                    let jitter = 1.0
                        + f64::from(rand_core::RngCore::next_u32(&mut rand_core::OsRng) % 250)
                            / 1000.0;
                    w.next_attempt = Instant::now() + w.backoff.mul_f64(jitter);
                    w.backoff = (w.backoff * 2).min(t.reconnect_max);
                }
            }
        }
        drop(st);
        if let Some(event) = report {
            self.emit(event);
        }
    }

    /// Stops everything: closes connections, fails what is pending, waits for tasks.
    pub(crate) async fn stop(self: &Arc<Self>) {
        let pending = {
            let mut st = self.lock();
            if st.stopped {
                return;
            }
            st.stopped = true;
            let pending = st.outbox.drain();
            for (id, _) in &pending {
                if let Some(w) = st.waiters.remove(id) {
                    let _ = w.send(Err(DeliveryError::Stopped(*id)));
                }
            }
            for (_, q) in st.queries.drain() {
                let _ = q.reply.send(Err(QueryError::Stopped));
            }
            pending
        };
        if !pending.is_empty() {
            tracing::info!(
                count = pending.len(),
                "stopping with unacknowledged messages"
            );
        }
        self.shutdown.cancel();
        self.endpoint.close(
            quinn::VarInt::from_u32(close_code::SHUTDOWN),
            b"node shutting down",
        );
        self.tasks.close();
        // Give connections a moment to say goodbye, bounded.
        let _ = tokio::time::timeout(Duration::from_secs(3), self.tasks.wait()).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        self.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

/// A connection slot taken for a byte-stream connection; given back on drop unless the
/// connection was registered (so a failed, timed-out or cancelled handshake never leaks it).
pub(crate) struct StreamSlot {
    inner: Arc<Inner>,
    armed: bool,
}

impl StreamSlot {
    /// The connection is registered: the slot now belongs to it.
    pub(crate) fn keep(mut self) {
        self.armed = false;
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if self.armed {
            let mut st = self.inner.lock();
            st.total_conns = st.total_conns.saturating_sub(1);
        }
    }
}

fn handshake_drop_reason(error: &TransportError) -> DropReason {
    if matches!(error, TransportError::ProtocolMismatch { .. }) {
        DropReason::ProtocolVersion
    } else {
        DropReason::Handshake
    }
}

/// The non-public range `ip` is in, as a bit for `Inner::dial_scopes`: 1 loopback, 2 private
/// (RFC 1918, RFC 6598 shared space, IPv6 unique local), 4 link-local, 8 unspecified,
/// multicast or broadcast (never dialled from a record). 0 for a public address.
pub(crate) fn scope_bit(ip: IpAddr) -> u8 {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_loopback() {
                1
            } else if v4.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64) {
                2
            } else if v4.is_link_local() {
                4
            } else if v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast() {
                8
            } else {
                0
            }
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            if v6.is_loopback() {
                1
            } else if first & 0xfe00 == 0xfc00 {
                2
            } else if first & 0xffc0 == 0xfe80 {
                4
            } else if v6.is_unspecified() || v6.is_multicast() {
                8
            } else {
                0
            }
        }
    }
}

/// The unit of per-address accounting: an IPv4 address, or the /64 of an IPv6 address (one
/// subscriber's allocation, which an attacker holds whole). IPv4-mapped IPv6 addresses count as
/// the IPv4 address.
pub(crate) fn address_block(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut octets = v6.octets();
                octets[8..].fill(0);
                IpAddr::V6(std::net::Ipv6Addr::from(octets))
            }
        },
    }
}

/// An inbound handshake from `block` finished, either way.
fn handshake_done(st: &mut State, block: IpAddr) {
    st.pending_handshakes = st.pending_handshakes.saturating_sub(1);
    if let Some(n) = st.pending_per_ip.get_mut(&block) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            st.pending_per_ip.remove(&block);
        }
    }
}

fn release_ip(st: &mut State, ip: IpAddr) {
    if let Some(n) = st.per_ip.get_mut(&ip) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            st.per_ip.remove(&ip);
        }
    }
}

/// Accept loop of the QUIC endpoint, with admission control before any TLS work.
pub(crate) async fn quic_accept_loop(inner: Arc<Inner>) {
    loop {
        let incoming = tokio::select! {
            i = inner.endpoint.accept() => match i { Some(i) => i, None => return },
            () = inner.shutdown.cancelled() => return,
        };
        let from = incoming.remote_address();
        // Under pressure, an address must prove it receives before it costs us a slot: a
        // Retry is stateless, so spoofed or silent senders hold nothing.
        if !incoming.remote_address_validated()
            && incoming.may_retry()
            && inner.under_handshake_pressure()
        {
            inner.metrics.attempt("in", "retry");
            if let Err(e) = incoming.retry() {
                e.into_incoming().ignore();
            }
            continue;
        }
        let ip = address_block(from.ip());
        if let Err(reason) = inner.admit(ip) {
            inner.metrics.attempt("in", "refused");
            inner.count_drop(
                reason,
                None,
                &format!("refused QUIC connection from {from}"),
            );
            incoming.refuse();
            continue;
        }
        let node = inner.clone();
        inner.tasks.spawn(async move {
            let timeout = node.inbound_handshake_timeout();
            let result = async {
                let connecting = incoming
                    .accept()
                    .map_err(|e| TransportError::from_quic_handshake(e, None))?;
                let conn = tokio::time::timeout(timeout, connecting)
                    .await
                    .map_err(|_| TransportError::Timeout(timeout))?
                    .map_err(|e| TransportError::from_quic_handshake(e, None))?;
                transport::QuicConnection::new(conn)
            }
            .await;
            match result {
                Ok(conn) => node.inbound_established(Arc::new(conn), ip),
                Err(e) => node.inbound_handshake_failed(ip, "QUIC", &e),
            }
        });
    }
}

/// Accept loop of the TCP listener (TLS over TCP, the UDP-blocked fallback).
pub(crate) async fn tcp_accept_loop(inner: Arc<Inner>, listener: tokio::net::TcpListener) {
    loop {
        let (tcp, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = inner.shutdown.cancelled() => return,
        };
        let ip = address_block(addr.ip());
        if let Err(reason) = inner.admit(ip) {
            inner.metrics.attempt("in", "refused");
            inner.count_drop(reason, None, &format!("refused TCP connection from {addr}"));
            drop(tcp);
            continue;
        }
        let _ = tcp.set_nodelay(true);
        let node = inner.clone();
        inner.tasks.spawn(async move {
            let timeout = node.inbound_handshake_timeout();
            let accepted = tokio::time::timeout(
                timeout,
                StreamConnection::accept(
                    tcp,
                    node.stream_tls.clone(),
                    TransportKind::Tcp,
                    Some(addr),
                ),
            )
            .await
            .map_err(|_| TransportError::Timeout(timeout))
            .and_then(|r| r);
            match accepted {
                Ok(conn) => node.inbound_established(Arc::new(conn), ip),
                Err(e) => node.inbound_handshake_failed(ip, "TCP", &e),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalives_keep_no_fixed_beat() {
        let k = Duration::from_secs(10);
        let draws: Vec<Duration> = (0..1_000).map(|_| keepalive_after(k)).collect();
        assert!(draws.iter().all(|d| *d >= k / 2 && *d < k));
        // Spread over the whole range, not clustered on a beat.
        let distinct: HashSet<u128> = draws.iter().map(Duration::as_millis).collect();
        assert!(
            distinct.len() > 800,
            "{} distinct intervals",
            distinct.len()
        );
        let ms = |d: &Duration| d.as_millis();
        assert!(draws.iter().map(ms).min().unwrap() < 5_500);
        assert!(draws.iter().map(ms).max().unwrap() > 9_500);
    }

    #[test]
    fn address_blocks_are_ipv4_addresses_and_ipv6_slash_64s() {
        let block = |s: &str| address_block(s.parse().unwrap()).to_string();
        assert_eq!(block("192.0.2.7"), "192.0.2.7");
        assert_eq!(block("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), "2001:db8:1:2::");
        assert_eq!(block("2001:db8:1:2::1"), block("2001:db8:1:2:ffff::9"));
        assert_ne!(block("2001:db8:1:2::1"), block("2001:db8:1:3::1"));
        // An IPv4 client on a dual-stack socket is its IPv4 address.
        assert_eq!(block("::ffff:192.0.2.7"), "192.0.2.7");
    }

    #[test]
    fn non_public_ranges_are_classified() {
        let scope = |s: &str| scope_bit(s.parse().unwrap());
        for public in [
            "192.0.2.1",
            "8.8.8.8",
            "2001:db8::1",
            "100.128.0.1",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(scope(public), 0, "{public}");
        }
        assert_eq!(scope("127.0.0.1"), 1);
        assert_eq!(scope("::1"), 1);
        assert_eq!(scope("::ffff:127.0.0.1"), 1);
        for private in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "fd00::1",
        ] {
            assert_eq!(scope(private), 2, "{private}");
        }
        assert_eq!(scope("169.254.1.1"), 4);
        assert_eq!(scope("fe80::1"), 4);
        for never in ["0.0.0.0", "::", "224.0.0.1", "255.255.255.255", "ff02::1"] {
            assert_eq!(scope(never), 8, "{never}");
        }
    }
}
