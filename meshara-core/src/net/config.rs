//! Node configuration: listening sockets, peers to start from, limits and timeouts.
//!
//! Every field has a default suitable for a desktop or server node; the `meshara run` command
//! reads the same structure from TOML (unknown keys are errors, so a typo never silently falls
//! back to a default).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::identity::NodeId;
use crate::record::{Address, Transport};

/// Caps that keep a node alive under abuse. Exceeding one is counted in the
/// `meshara_drops_total{reason}` metric and logged, and only the offending connection or
/// message is affected.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Established connections, in and out.
    pub max_connections: usize,
    /// Inbound connections from one IP address.
    pub max_connections_per_ip: usize,
    /// Connections to or from one NodeId.
    pub max_connections_per_peer: usize,
    /// Inbound TLS handshakes in progress at once.
    pub max_pending_handshakes: usize,
    /// Inbound handshakes over byte streams handed over with `Node::spawn_accept_stream` (Tor,
    /// I2P) in progress at once; a new one evicts the oldest.
    pub max_pending_stream_handshakes: usize,
    /// Inbound handshakes in progress at once from one address block (an IPv4 address or an
    /// IPv6 /64), so that one attacker cannot hold every handshake slot.
    pub max_pending_handshakes_per_ip: usize,
    /// Inbound QUIC handshakes in progress above which a new one from an address that has not
    /// proven it can receive is answered with a stateless Retry (RFC 9000 §8.1.2) instead of a
    /// slot: spoofed or silent senders then hold nothing. 0 retries every unvalidated address.
    pub handshakes_before_retry: usize,
    /// Signature checks and key agreements one peer's messages may cost this node per second
    /// (peer exchange: one per record; node records: one; session handshakes: four; sealed
    /// messages: two). The burst is [`peer_verification_burst`](Self::peer_verification_burst).
    pub peer_verifications_per_sec: u32,
    /// Verifications one peer may spend at once (a peer's first exchange of records).
    pub peer_verification_burst: u32,
    /// Senders for whom acknowledgements wait until there is a way back to them.
    pub max_pending_ack_senders: usize,
    /// Sustained messages per second accepted from one peer (burst: one second's worth).
    pub peer_messages_per_sec: u32,
    /// Sustained bytes per second of messages accepted from one peer (burst: one second's worth).
    pub peer_bytes_per_sec: u64,
    /// Times a peer may exceed its rate within a minute before it is disconnected.
    pub peer_violations_before_disconnect: u32,
    /// Largest envelope frame accepted or sent, in bytes.
    pub max_frame_len: usize,
    /// Largest private-message content, in bytes.
    pub max_message_len: usize,
    /// Bytes of frames queued for one connection before senders wait.
    pub connection_queue_bytes: usize,
    /// Private messages awaiting acknowledgement, across all peers.
    pub max_outbox: usize,
    /// Queries awaiting a response.
    pub max_pending_queries: usize,
    /// Incoming queries not yet answered by the application.
    pub max_inbound_queries: usize,
    /// Events buffered for each subscriber before the slowest one misses some.
    pub event_buffer: usize,
    /// Node records remembered.
    pub max_records: usize,
    /// Concurrent byte streams per connection.
    pub max_streams_per_connection: u32,
    /// Broadcast topics this node carries (each has its own overlay and caches); broadcasts and
    /// gossip for further topics are refused.
    pub max_topics: usize,
    /// Messages this node holds for offline recipients (store-and-forward), in total.
    pub mailbox_messages: usize,
    /// Messages held for one offline recipient.
    pub mailbox_per_recipient: usize,
    /// Bytes of messages held for offline recipients.
    pub mailbox_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_connections_per_ip: 16,
            max_connections_per_peer: 2,
            max_pending_handshakes: 128,
            max_pending_handshakes_per_ip: 8,
            max_pending_stream_handshakes: 64,
            handshakes_before_retry: 16,
            peer_verifications_per_sec: 64,
            peer_verification_burst: 512,
            max_pending_ack_senders: 4096,
            peer_messages_per_sec: 100_000,
            peer_bytes_per_sec: 256 << 20,
            peer_violations_before_disconnect: 1000,
            max_frame_len: crate::wire::DEFAULT_MAX_FRAME_LEN,
            max_message_len: crate::crypto::MAX_PRIVATE_PAYLOAD - 1024,
            connection_queue_bytes: 8 << 20,
            max_outbox: 65_536,
            max_pending_queries: 4096,
            max_inbound_queries: 1024,
            event_buffer: 4096,
            max_records: 4096,
            max_streams_per_connection: 128,
            max_topics: 64,
            mailbox_messages: 4096,
            mailbox_per_recipient: 64,
            mailbox_bytes: 32 << 20,
        }
    }
}

/// Timers of the connection manager and the delivery machinery.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// Give up on a connection attempt (including TLS) after this long.
    #[serde(with = "humantime_secs")]
    pub connect: Duration,
    /// Give up on an inbound handshake after this long (at most `connect`): a silent client
    /// holds its handshake slot no longer than this.
    #[serde(with = "humantime_secs")]
    pub inbound_handshake: Duration,
    /// Ping every ready connection at most this long apart (each interval drawn from [½, 1) ×
    /// this, so pings keep no fixed beat).
    #[serde(with = "humantime_secs")]
    pub keepalive: Duration,
    /// Close a connection silent for this long.
    #[serde(with = "humantime_secs")]
    pub idle: Duration,
    /// Resend an unacknowledged private message after this long (doubling each time).
    #[serde(with = "humantime_secs")]
    pub ack: Duration,
    /// Attempts before a private message is reported as failed.
    pub max_attempts: u32,
    /// Report a private message as failed after this long regardless of attempts.
    #[serde(with = "humantime_secs")]
    pub delivery: Duration,
    /// Default query timeout.
    #[serde(with = "humantime_secs")]
    pub query: Duration,
    /// First reconnect delay for wanted peers (doubling up to `reconnect_max`).
    #[serde(with = "humantime_secs")]
    pub reconnect_min: Duration,
    /// Longest reconnect delay.
    #[serde(with = "humantime_secs")]
    pub reconnect_max: Duration,
    /// How often connected peers exchange node records.
    #[serde(with = "humantime_secs")]
    pub peer_exchange: Duration,
    /// Store-and-forward: how long a node holds a message for an offline recipient, and how
    /// long a sender waits for the acknowledgement of a message it deposited.
    #[serde(with = "humantime_secs")]
    pub mailbox: Duration,
    /// DHT maintenance: how often the node looks itself up (converging on the nodes closest to
    /// its NodeId, which puts it in their routing tables) and refreshes routing-table buckets
    /// it has heard nothing from in 15 minutes. The first self-lookup runs as soon as the node
    /// has a connection. 0 turns maintenance off: the node then knows only what peer exchange
    /// and its own lookups tell it (tests that need a fixed view of the network use this).
    #[serde(with = "humantime_secs")]
    pub dht_refresh: Duration,
    /// Close a connection this node opened, once it has carried nothing but upkeep (pings,
    /// records, peer exchange, DHT requests and answers, status) for this long and the node has
    /// more than `target_peers` peers, oldest use first, down to `target_peers`. Only direct
    /// QUIC and TCP connections to peers whose record says how to dial them again are closed;
    /// never inbound ones, nor peers the node keeps (bootstrap, `add_peer`, `connect`), gossip
    /// neighbours, peers with messages, queries, lookups or onion circuits in flight, or peers
    /// that byte streams or bridge circuits were opened with (docs/protocol.md §15.7). Without
    /// it, every node a lookup reached stays connected for as long as keepalives run. 0 turns
    /// it off.
    #[serde(with = "humantime_secs")]
    pub unused: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(10),
            inbound_handshake: Duration::from_secs(4),
            keepalive: Duration::from_secs(10),
            idle: Duration::from_secs(30),
            ack: Duration::from_secs(2),
            max_attempts: 5,
            delivery: Duration::from_secs(60),
            query: Duration::from_secs(10),
            reconnect_min: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(60),
            peer_exchange: Duration::from_secs(30),
            mailbox: Duration::from_secs(24 * 3600),
            dht_refresh: Duration::from_secs(60),
            unused: Duration::from_secs(60),
        }
    }
}

/// Durations in TOML are seconds, integer or fractional (`ack = 0.5`).
mod humantime_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(|_| {
            serde::de::Error::custom(format!(
                "{secs} is not a valid duration in seconds (must be >= 0 and finite)"
            ))
        })
    }
}

/// Onion routing: relaying for others, circuits and cover traffic (docs/protocol.md §15.14).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Onion {
    /// Relay onion packets for others (advertised as the `relay` capability in the node record;
    /// senders only pick relays that advertise it).
    pub relay: bool,
    /// Relays on each circuit, between the sender and the recipient: 3 or 4.
    pub hops: usize,
    /// Build a new circuit to a destination after this long.
    #[serde(with = "humantime_secs")]
    pub circuit_lifetime: Duration,
    /// Build a new circuit to a destination after this many packets.
    pub circuit_packets: u32,
    /// Mean interval between cover packets: onion packets that loop through a random circuit
    /// back to this node, indistinguishable from messages to the relays. 0 disables them.
    #[serde(with = "humantime_secs")]
    pub cover_interval: Duration,
    /// Onion packets remembered against replays (until they expire, at most 12 minutes). When
    /// full, further packets are refused rather than forgetting a tag early.
    pub replay_cache: usize,
    /// Packets being forwarded at once while a connection to their next hop is set up.
    pub max_forwards: usize,
}

impl Default for Onion {
    fn default() -> Self {
        Self {
            relay: true,
            hops: 3,
            circuit_lifetime: Duration::from_secs(600),
            circuit_packets: 256,
            cover_interval: Duration::ZERO,
            replay_cache: 131_072,
            max_forwards: 256,
        }
    }
}

/// Serving as a bridge: relaying circuits between peers that cannot reach each other
/// directly (a clearnet node and an onion-only or I2P-only one), docs/protocol.md §15.15.
///
/// The bridge splices the two halves of a circuit and sees only TLS ciphertext; it learns both
/// ends' NodeIds, when and how much. Every limit is per bridge and refusals are counted in
/// `meshara_drops_total{reason="bridge"}`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Bridge {
    /// Relay circuits for others. Advertised in the node record as `bridge_tor` / `bridge_i2p`
    /// for each of those transports the node can dial.
    pub enabled: bool,
    /// NodeIds allowed to open circuits through this bridge; empty allows everyone.
    #[serde(deserialize_with = "node_ids")]
    pub allow: Vec<NodeId>,
    /// Circuits relayed at once, across all peers.
    pub max_circuits: usize,
    /// Circuits one peer may have open through the bridge at once (counting circuits it opened
    /// and circuits opened to it).
    pub max_circuits_per_peer: usize,
    /// New circuits one peer may open per minute (a token bucket with that burst).
    pub circuits_per_minute: u32,
    /// Circuits open at once whose openers reached the bridge from one address block (an IPv4
    /// address or an IPv6 /64), whatever identities they use. Openers that arrive over Tor or
    /// I2P have no address; only the per-peer limits apply to them.
    pub max_circuits_per_ip: usize,
    /// New circuits per minute from one address block.
    pub circuits_per_minute_per_ip: u32,
    /// Bytes per second relayed for one peer, both directions and all its circuits together
    /// (a token bucket with a one-second burst).
    pub bytes_per_sec: u64,
}

impl Default for Bridge {
    fn default() -> Self {
        Self {
            enabled: false,
            allow: Vec::new(),
            max_circuits: 256,
            max_circuits_per_peer: 8,
            circuits_per_minute: 30,
            max_circuits_per_ip: 32,
            circuits_per_minute_per_ip: 120,
            bytes_per_sec: 8 << 20,
        }
    }
}

fn transport_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Transport>, D::Error> {
    match String::deserialize(d)?.as_str() {
        "tor" => Ok(Some(Transport::Tor)),
        "i2p" => Ok(Some(Transport::I2p)),
        other => Err(serde::de::Error::custom(format!(
            "{other:?} is not a transport to route through (expected \"tor\" or \"i2p\")"
        ))),
    }
}

fn node_ids<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<NodeId>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| {
            s.parse::<NodeId>()
                .map_err(|_| serde::de::Error::custom(format!("{s:?} is not a NodeId")))
        })
        .collect()
}

/// Everything a node needs besides its identity.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// QUIC (UDP) socket to listen on; `None` disables QUIC listening (dialing still works).
    pub listen_quic: Option<SocketAddr>,
    /// TCP socket for the TLS-over-TCP fallback; `None` disables it.
    pub listen_tcp: Option<SocketAddr>,
    /// Addresses to publish in the node record, e.g. `quic://203.0.113.7:7340`. Empty: the
    /// bound sockets, when they are not wildcard addresses.
    pub advertise: Vec<Address>,
    /// Peers to connect to at start and keep connected: `[<nodeid>@]quic://host:port`.
    pub bootstrap: Vec<PeerAddr>,
    /// Announce and discover nodes on the local network with mDNS.
    pub mdns: bool,
    /// Connections the node tries to keep through peer exchange and discovery.
    pub target_peers: usize,
    /// Directory for node state (checked by diagnostics).
    pub data_dir: Option<PathBuf>,
    /// Software name and version published in the node record.
    pub agent: String,
    /// Ask network explorers not to list this node (a signed flag in its record; the node
    /// still takes part in the DHT, so crawlers walk through it without showing it).
    pub unlisted: bool,
    /// Abuse limits.
    pub limits: Limits,
    /// Timers.
    pub timeouts: Timeouts,
    /// Onion routing.
    pub onion: Onion,
    /// Relaying circuits for others.
    pub bridge: Bridge,
    /// Send every outbound connection through this transport's dialer (`"tor"` or `"i2p"`):
    /// nothing is dialled directly. Over Tor, TCP addresses are dialled through an exit; QUIC
    /// (UDP does not cross Tor or I2P) and, over I2P, TCP are reached through a bridge.
    /// Needs a dialer for the transport ([`NodeBuilder::dialer`](crate::NodeBuilder::dialer)).
    #[serde(deserialize_with = "transport_name")]
    pub route_all_via: Option<Transport>,
    /// Whether to dial loopback, private (RFC 1918, RFC 6598, IPv6 ULA) and link-local
    /// addresses learned from other nodes' records. `None` (the default) decides per range: a
    /// range is dialled once this node is evidently on such a network (it listens on, advertises
    /// or bootstraps from an address in it, or one of its own outbound connections reached one),
    /// so devnets and cluster deployments work while a public node cannot be pointed at its
    /// operator's internal hosts by a hostile record. Addresses the application gives
    /// (bootstrap, `connect`) are always dialled.
    pub dial_private: Option<bool>,
    /// The node's identity as an Ed25519 private key in PEM (PKCS#8), for identities made by
    /// other tools (a Kubernetes Secret, `openssl genpkey -algorithm ed25519`); read by
    /// [`NodeBuilder::start`](crate::NodeBuilder::start) when no identity or keystore is given
    /// ([`crate::keyfile::read_identity_file`]: files other users may read are refused).
    pub identity_file: Option<PathBuf>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            listen_quic: Some(SocketAddr::from(([0, 0, 0, 0], 0))),
            listen_tcp: None,
            advertise: Vec::new(),
            bootstrap: Vec::new(),
            mdns: false,
            target_peers: 8,
            data_dir: None,
            agent: concat!("meshara/", env!("CARGO_PKG_VERSION")).to_owned(),
            unlisted: false,
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            onion: Onion::default(),
            bridge: Bridge::default(),
            route_all_via: None,
            dial_private: None,
            identity_file: None,
        }
    }
}

impl NodeConfig {
    /// Checks values that are well-typed but unusable, naming the offending key.
    pub fn validate(&self) -> Result<(), String> {
        let l = &self.limits;
        let t = &self.timeouts;
        let positive = [
            ("limits.max_connections", l.max_connections as u64),
            (
                "limits.max_connections_per_ip",
                l.max_connections_per_ip as u64,
            ),
            (
                "limits.max_connections_per_peer",
                l.max_connections_per_peer as u64,
            ),
            (
                "limits.max_pending_handshakes",
                l.max_pending_handshakes as u64,
            ),
            (
                "limits.max_pending_stream_handshakes",
                l.max_pending_stream_handshakes as u64,
            ),
            (
                "limits.max_pending_handshakes_per_ip",
                l.max_pending_handshakes_per_ip as u64,
            ),
            (
                "limits.peer_verifications_per_sec",
                u64::from(l.peer_verifications_per_sec),
            ),
            (
                "limits.peer_verification_burst",
                u64::from(l.peer_verification_burst),
            ),
            (
                "limits.max_pending_ack_senders",
                l.max_pending_ack_senders as u64,
            ),
            (
                "limits.peer_messages_per_sec",
                u64::from(l.peer_messages_per_sec),
            ),
            ("limits.peer_bytes_per_sec", l.peer_bytes_per_sec),
            ("limits.max_outbox", l.max_outbox as u64),
            ("limits.event_buffer", l.event_buffer as u64),
            ("limits.max_records", l.max_records as u64),
            (
                "limits.max_streams_per_connection",
                u64::from(l.max_streams_per_connection),
            ),
            ("limits.max_topics", l.max_topics as u64),
            ("limits.mailbox_messages", l.mailbox_messages as u64),
            (
                "limits.mailbox_per_recipient",
                l.mailbox_per_recipient as u64,
            ),
            ("limits.mailbox_bytes", l.mailbox_bytes as u64),
            ("timeouts.max_attempts", u64::from(t.max_attempts)),
            (
                "onion.circuit_packets",
                u64::from(self.onion.circuit_packets),
            ),
            ("onion.replay_cache", self.onion.replay_cache as u64),
            ("onion.max_forwards", self.onion.max_forwards as u64),
            ("bridge.max_circuits", self.bridge.max_circuits as u64),
            (
                "bridge.max_circuits_per_peer",
                self.bridge.max_circuits_per_peer as u64,
            ),
            (
                "bridge.circuits_per_minute",
                u64::from(self.bridge.circuits_per_minute),
            ),
            (
                "bridge.max_circuits_per_ip",
                self.bridge.max_circuits_per_ip as u64,
            ),
            (
                "bridge.circuits_per_minute_per_ip",
                u64::from(self.bridge.circuits_per_minute_per_ip),
            ),
            ("bridge.bytes_per_sec", self.bridge.bytes_per_sec),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(format!("{key} must be at least 1"));
            }
        }
        if !(3..=crate::crypto::onion::MAX_HOPS - 1).contains(&self.onion.hops) {
            return Err(format!(
                "onion.hops must be between 3 and {} (got {})",
                crate::crypto::onion::MAX_HOPS - 1,
                self.onion.hops
            ));
        }
        // An onion packet (8 KiB) and its envelope must fit in a frame.
        if l.max_frame_len < 16384 || l.max_frame_len > crate::wire::MAX_FRAME_LEN_LIMIT {
            return Err(format!(
                "limits.max_frame_len must be between 16384 and {} (got {})",
                crate::wire::MAX_FRAME_LEN_LIMIT,
                l.max_frame_len
            ));
        }
        if l.max_message_len + 1024 > l.max_frame_len.min(crate::crypto::MAX_PRIVATE_PAYLOAD) {
            return Err(format!(
                "limits.max_message_len ({}) must leave 1024 bytes of headroom below both \
                 limits.max_frame_len ({}) and the protocol's private payload limit ({})",
                l.max_message_len,
                l.max_frame_len,
                crate::crypto::MAX_PRIVATE_PAYLOAD
            ));
        }
        if l.connection_queue_bytes < l.max_frame_len {
            return Err(format!(
                "limits.connection_queue_bytes ({}) must be at least limits.max_frame_len ({})",
                l.connection_queue_bytes, l.max_frame_len
            ));
        }
        for (key, value) in [
            ("timeouts.connect", t.connect),
            ("timeouts.inbound_handshake", t.inbound_handshake),
            ("timeouts.keepalive", t.keepalive),
            ("timeouts.idle", t.idle),
            ("timeouts.ack", t.ack),
            ("timeouts.delivery", t.delivery),
            ("timeouts.query", t.query),
            ("timeouts.reconnect_min", t.reconnect_min),
            ("timeouts.peer_exchange", t.peer_exchange),
            ("timeouts.mailbox", t.mailbox),
        ] {
            if value.is_zero() {
                return Err(format!("{key} must be greater than 0"));
            }
        }
        if l.peer_verification_burst < l.peer_verifications_per_sec {
            return Err(format!(
                "limits.peer_verification_burst ({}) must be at least limits.peer_verifications_per_sec ({})",
                l.peer_verification_burst, l.peer_verifications_per_sec
            ));
        }
        if t.keepalive >= t.idle {
            return Err(format!(
                "timeouts.keepalive ({:?}) must be shorter than timeouts.idle ({:?})",
                t.keepalive, t.idle
            ));
        }
        if t.reconnect_max < t.reconnect_min {
            return Err("timeouts.reconnect_max must be >= timeouts.reconnect_min".into());
        }
        if self.listen_quic.is_none() && self.listen_tcp.is_none() && self.mdns {
            return Err("mdns needs a listening socket (listen_quic or listen_tcp)".into());
        }
        if let Some(via) = self.route_all_via {
            if !matches!(via, Transport::Tor | Transport::I2p) {
                return Err(format!(
                    "route_all_via must be tor or i2p (got {via:?}); QUIC and TCP are direct"
                ));
            }
            if self.mdns {
                return Err(format!(
                    "route_all_via = {via:?} cannot be combined with mdns, which announces this \
                     node on the local network"
                ));
            }
        }
        for a in &self.advertise {
            check_advertised(a)?;
        }
        Ok(())
    }
}

/// Checks the host of an address this node publishes: an onion service's v3 name, an I2P
/// `.b32.i2p` name, an IP literal for QUIC and TCP (the record decoder checks the latter).
fn check_advertised(a: &Address) -> Result<(), String> {
    let base32 = |s: &str, len: usize| {
        s.len() == len && s.bytes().all(|b| matches!(b, b'a'..=b'z' | b'2'..=b'7'))
    };
    let ok = match a.transport {
        Transport::Quic | Transport::Tcp => a.host.parse::<std::net::IpAddr>().is_ok(),
        Transport::Tor => a.host.strip_suffix(".onion").is_some_and(|h| base32(h, 56)),
        Transport::I2p => a
            .host
            .strip_suffix(".b32.i2p")
            .is_some_and(|h| base32(h, 52)),
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "advertise: {a} is not a valid {:?} address (IP literal, <56 base32>.onion or \
             <52 base32>.b32.i2p)",
            a.transport
        ))
    }
}

/// A peer to dial: an address and, optionally, the NodeId it must prove.
///
/// Text form: `[<nodeid>@]<scheme>://<host>:<port>`, for example
/// `quic://127.0.0.1:7340` or `hf3…q@tcp://[::1]:7341`. Without a NodeId the node accepts
/// whoever answers and learns its identity from the handshake.
///
/// In configuration ([`PeerAddr::from_config`], and TOML through `Deserialize`) the NodeId may
/// be given as `file:PATH` naming the peer's certificate, public key or NodeId in a file
/// ([`crate::keyfile::read_node_id_file`]):
/// `file:/etc/meshara/peers/seed-0.crt@quic://seed-0.seeds.svc:7340`. [`FromStr`] refuses
/// that form, so parsing text from elsewhere never reads a file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerAddr {
    /// The identity the peer must prove, if known.
    pub node: Option<NodeId>,
    /// Where to reach it.
    pub address: Address,
}

/// Error parsing a [`PeerAddr`] or [`Address`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid peer address {text:?}: {reason}")]
pub struct AddrParseError {
    text: String,
    reason: String,
}

impl PeerAddr {
    /// Parses a peer from configuration: like [`FromStr`], and the NodeId may be
    /// `file:PATH` (a PEM certificate or public key, or a NodeId in text), read now.
    pub fn from_config(text: &str) -> Result<Self, AddrParseError> {
        match text.split_once('@') {
            Some((id, rest)) if id.starts_with(crate::keyfile::FILE_PREFIX) => {
                let node = crate::keyfile::resolve_node_id(id).map_err(|e| AddrParseError {
                    text: text.to_owned(),
                    reason: e.to_string(),
                })?;
                let mut addr: PeerAddr =
                    rest.parse().map_err(|e: AddrParseError| AddrParseError {
                        text: text.to_owned(),
                        reason: e.reason,
                    })?;
                addr.node = Some(node);
                Ok(addr)
            }
            _ => text.parse(),
        }
    }
}

impl FromStr for PeerAddr {
    type Err = AddrParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = |reason: &str| AddrParseError {
            text: text.to_owned(),
            reason: reason.to_owned(),
        };
        let (node, rest) = match text.split_once('@') {
            Some((id, _)) if id.starts_with(crate::keyfile::FILE_PREFIX) => {
                return Err(error(
                    "file: NodeIds are read only from configuration (PeerAddr::from_config)",
                ));
            }
            Some((id, rest)) => (
                Some(
                    id.parse::<NodeId>()
                        .map_err(|_| error("the part before '@' is not a NodeId"))?,
                ),
                rest,
            ),
            None => (None, text),
        };
        let address = parse_address(rest).map_err(error)?;
        Ok(PeerAddr { node, address })
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.node {
            Some(node) => write!(f, "{node}@{}", self.address),
            None => write!(f, "{}", self.address),
        }
    }
}

/// Configuration: accepts `file:PATH` NodeIds ([`PeerAddr::from_config`]).
impl<'de> Deserialize<'de> for PeerAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        PeerAddr::from_config(&text).map_err(serde::de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_address(&text).map_err(|reason| {
            serde::de::Error::custom(AddrParseError {
                text: text.clone(),
                reason: reason.to_owned(),
            })
        })
    }
}

/// Parses `scheme://host:port` (IPv6 hosts in brackets).
pub(crate) fn parse_address(text: &str) -> Result<Address, &'static str> {
    let (scheme, rest) = text
        .split_once("://")
        .ok_or("expected <scheme>://<host>:<port>")?;
    let transport = match scheme {
        "quic" => Transport::Quic,
        "tcp" => Transport::Tcp,
        "tor" => Transport::Tor,
        "i2p" => Transport::I2p,
        _ => return Err("unknown scheme (expected quic, tcp, tor or i2p)"),
    };
    let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or("unclosed '[' in IPv6 host")?;
        let port = after.strip_prefix(':').ok_or("missing :<port>")?;
        (host, port)
    } else {
        rest.rsplit_once(':').ok_or("missing :<port>")?
    };
    if host.is_empty() || host.len() > crate::record::MAX_HOST_LEN {
        return Err("host must be 1..=255 characters");
    }
    let port: u16 = port
        .parse()
        .map_err(|_| "port must be a number 1..=65535")?;
    if port == 0 {
        return Err("port must be a number 1..=65535");
    }
    Ok(Address {
        transport,
        host: host.to_owned(),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Identity;

    #[test]
    fn peer_addresses_parse_and_print() {
        let id = Identity::generate().node_id();
        let text = format!("{id}@quic://127.0.0.1:7340");
        let parsed: PeerAddr = text.parse().unwrap();
        assert_eq!(parsed.node, Some(id));
        assert_eq!(parsed.address.port, 7340);
        assert_eq!(parsed.to_string(), text);
        let v6: PeerAddr = "tcp://[::1]:9".parse().unwrap();
        assert_eq!(v6.address.host, "::1");
        assert_eq!(v6.to_string(), "tcp://[::1]:9");
        for bad in [
            "127.0.0.1:1",
            "udp://1.2.3.4:5",
            "quic://1.2.3.4",
            "quic://1.2.3.4:0",
            "quic://1.2.3.4:70000",
            "nope@quic://1.2.3.4:5",
            "quic://[::1:5",
        ] {
            assert!(bad.parse::<PeerAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn config_errors_name_the_key() {
        let err = toml::from_str::<NodeConfig>("[limits]\nmax_conections = 3\n").unwrap_err();
        assert!(err.to_string().contains("max_conections"), "{err}");
        let err = toml::from_str::<NodeConfig>("bootstrap = [\"quic://x\"]\n").unwrap_err();
        assert!(err.to_string().contains("missing :<port>"), "{err}");
        let mut config = NodeConfig::default();
        config.timeouts.keepalive = Duration::from_secs(60);
        assert!(
            config
                .validate()
                .unwrap_err()
                .contains("timeouts.keepalive")
        );
        let config: NodeConfig = toml::from_str("[timeouts]\nack = 0.25\n").unwrap();
        assert_eq!(config.timeouts.ack, Duration::from_millis(250));
        NodeConfig::default().validate().unwrap();
    }
}
