//! Prometheus metrics of a node (prometheus-client), one registry per node.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `meshara_messages_total` | counter | `direction` (in/out), `kind` (private, ack, broadcast, query, response, control) |
//! | `meshara_bytes_total` | counter | `direction`, `transport` (quic, tcp, stream, tor, i2p, relayed) |
//! | `meshara_connections` | gauge | `transport` |
//! | `meshara_connection_attempts_total` | counter | `direction` (in, out, or stream for application byte streams), `result` (ok, error, refused, retry: a stateless QUIC Retry sent under handshake pressure) |
//! | `meshara_drops_total` | counter | `reason` (see [`DropReason`]) |
//! | `meshara_delivery_latency_seconds` | histogram | send to end-to-end acknowledgement |
//! | `meshara_query_latency_seconds` | histogram | query to response |
//! | `meshara_connect_latency_seconds` | histogram | dial to authenticated connection |
//! | `meshara_deliveries_total` | counter | `result` (confirmed, failed) |
//! | `meshara_bridge_circuits` | gauge | circuits this node relays as a bridge now (this and the next two on a bridge only: `bridge.enabled`) |
//! | `meshara_bridge_circuit_requests_total` | counter | `result` (ok, not_allowed, rate_limited, capacity, unreachable, bad_request) |
//! | `meshara_bridge_bytes_total` | counter | bytes spliced through this node's circuits, both directions |

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Why something was dropped or refused; the `reason` label of `meshara_drops_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// Refused: the node is at `max_connections`.
    MaxConnections,
    /// Refused: too many connections from one IP.
    MaxConnectionsPerIp,
    /// Refused: too many connections from one NodeId.
    MaxConnectionsPerPeer,
    /// Refused: too many handshakes in progress.
    MaxPendingHandshakes,
    /// Refused: too many handshakes in progress from one address block (IPv4 address or
    /// IPv6 /64).
    MaxPendingHandshakesPerIp,
    /// A peer's messages would cost more signature checks or key agreements than its budget
    /// (`limits.peer_verifications_per_sec`).
    PeerVerificationRate,
    /// A peer's message rate limit was exceeded.
    PeerMessageRate,
    /// A peer's byte rate limit was exceeded.
    PeerByteRate,
    /// A frame longer than `max_frame_len`.
    FrameTooLarge,
    /// Bytes that do not decode as a valid envelope.
    Malformed,
    /// A connection's send queue was full.
    QueueFull,
    /// A private message or session message that failed to decrypt or verify.
    Crypto,
    /// A peer that is banned.
    Banned,
    /// A peer speaking another protocol version.
    ProtocolVersion,
    /// A handshake that failed or timed out.
    Handshake,
    /// A duplicate message (already delivered).
    Duplicate,
    /// Too many unanswered incoming queries.
    InboundQueries,
    /// A stream for a protocol nobody listens to, or a full stream backlog.
    Stream,
    /// A message kind this node does not handle.
    Unsupported,
    /// Gossip for a new topic while the node carries `max_topics` topics.
    MaxTopics,
    /// A message for an offline recipient that this node's mailbox cannot hold, or transit
    /// traffic it does not relay.
    Mailbox,
    /// An onion packet that failed to authenticate, expired, was replayed, whose next hop
    /// could not be reached, or that delivered something other than a message or an
    /// acknowledgement. (A full queue to the next hop counts as `queue_full`.)
    Onion,
    /// A bridge circuit refused (policy, limits, unreachable target) or cut (idle, hostile).
    Bridge,
}

impl DropReason {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::MaxConnections => "max_connections",
            DropReason::MaxConnectionsPerIp => "max_connections_per_ip",
            DropReason::MaxConnectionsPerPeer => "max_connections_per_peer",
            DropReason::MaxPendingHandshakes => "max_pending_handshakes",
            DropReason::MaxPendingHandshakesPerIp => "max_pending_handshakes_per_ip",
            DropReason::PeerVerificationRate => "peer_verification_rate",
            DropReason::PeerMessageRate => "peer_message_rate",
            DropReason::PeerByteRate => "peer_byte_rate",
            DropReason::FrameTooLarge => "frame_too_large",
            DropReason::Malformed => "malformed",
            DropReason::QueueFull => "queue_full",
            DropReason::Crypto => "crypto",
            DropReason::Banned => "banned",
            DropReason::ProtocolVersion => "protocol_version",
            DropReason::Handshake => "handshake",
            DropReason::Duplicate => "duplicate",
            DropReason::InboundQueries => "inbound_queries",
            DropReason::Stream => "stream",
            DropReason::Unsupported => "unsupported",
            DropReason::MaxTopics => "max_topics",
            DropReason::Mailbox => "mailbox",
            DropReason::Onion => "onion",
            DropReason::Bridge => "bridge",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct MessageLabels {
    pub(crate) direction: &'static str,
    pub(crate) kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct BytesLabels {
    pub(crate) direction: &'static str,
    pub(crate) transport: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TransportLabels {
    pub(crate) transport: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct AttemptLabels {
    pub(crate) direction: &'static str,
    pub(crate) result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabels {
    pub(crate) reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResultLabels {
    pub(crate) result: &'static str,
}

/// The node's metric handles and their registry.
#[derive(Debug)]
pub(crate) struct Metrics {
    pub(crate) registry: Registry,
    pub(crate) messages: Family<MessageLabels, Counter>,
    pub(crate) bytes: Family<BytesLabels, Counter>,
    pub(crate) connections: Family<TransportLabels, Gauge>,
    pub(crate) attempts: Family<AttemptLabels, Counter>,
    pub(crate) drops: Family<ReasonLabels, Counter>,
    pub(crate) deliveries: Family<ResultLabels, Counter>,
    pub(crate) delivery_latency: Histogram,
    pub(crate) query_latency: Histogram,
    pub(crate) connect_latency: Histogram,
    pub(crate) outbox: Gauge,
    pub(crate) bridge_circuits: Gauge,
    pub(crate) bridge_results: Family<ResultLabels, Counter>,
    pub(crate) bridge_bytes: Counter,
}

impl Metrics {
    /// The node's metrics; the `meshara_bridge_*` series only on a bridge (`bridge`), so a
    /// scrape shows only what the node can have.
    pub(crate) fn new(bridge: bool) -> Self {
        let mut registry = Registry::with_prefix("meshara");
        let messages = Family::<MessageLabels, Counter>::default();
        let bytes = Family::<BytesLabels, Counter>::default();
        let connections = Family::<TransportLabels, Gauge>::default();
        let attempts = Family::<AttemptLabels, Counter>::default();
        let drops = Family::<ReasonLabels, Counter>::default();
        let deliveries = Family::<ResultLabels, Counter>::default();
        // 50 µs .. ~26 s
        let latency = || Histogram::new(exponential_buckets(0.000_05, 2.0, 20));
        let delivery_latency = latency();
        let query_latency = latency();
        let connect_latency = latency();
        let outbox = Gauge::default();
        let bridge_circuits = Gauge::default();
        let bridge_results = Family::<ResultLabels, Counter>::default();
        let bridge_bytes = Counter::default();
        if bridge {
            registry.register(
                "bridge_circuits",
                "Circuits relayed by this bridge now",
                bridge_circuits.clone(),
            );
            registry.register(
                "bridge_circuit_requests",
                "Circuit requests to this bridge by result",
                bridge_results.clone(),
            );
            registry.register(
                "bridge_bytes",
                "Bytes spliced through this bridge's circuits",
                bridge_bytes.clone(),
            );
        }
        registry.register(
            "messages",
            "Envelopes by direction and kind",
            messages.clone(),
        );
        registry.register(
            "bytes",
            "Bytes on the wire by direction and transport",
            bytes.clone(),
        );
        registry.register(
            "connections",
            "Open connections by transport",
            connections.clone(),
        );
        registry.register(
            "connection_attempts",
            "Connection attempts by direction and result",
            attempts.clone(),
        );
        registry.register(
            "drops",
            "Messages, frames and connections dropped, by reason",
            drops.clone(),
        );
        registry.register(
            "deliveries",
            "Private messages confirmed or failed",
            deliveries.clone(),
        );
        registry.register(
            "delivery_latency_seconds",
            "Private message send to end-to-end acknowledgement",
            delivery_latency.clone(),
        );
        registry.register(
            "query_latency_seconds",
            "Query sent to response received",
            query_latency.clone(),
        );
        registry.register(
            "connect_latency_seconds",
            "Dial to authenticated connection",
            connect_latency.clone(),
        );
        registry.register(
            "outbox",
            "Private messages awaiting acknowledgement",
            outbox.clone(),
        );
        Self {
            registry,
            messages,
            bytes,
            connections,
            attempts,
            drops,
            deliveries,
            delivery_latency,
            query_latency,
            connect_latency,
            outbox,
            bridge_circuits,
            bridge_results,
            bridge_bytes,
        }
    }

    pub(crate) fn message(&self, direction: &'static str, kind: &'static str) {
        self.messages
            .get_or_create(&MessageLabels { direction, kind })
            .inc();
    }

    pub(crate) fn drop(&self, reason: DropReason) {
        self.drops
            .get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            })
            .inc();
    }

    pub(crate) fn drop_count(&self, reason: DropReason) -> u64 {
        self.drops
            .get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            })
            .get()
    }

    pub(crate) fn attempt(&self, direction: &'static str, result: &'static str) {
        self.attempts
            .get_or_create(&AttemptLabels { direction, result })
            .inc();
    }

    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
