//! Node records: the signed, versioned statement that binds a node's X25519 encryption key,
//! addresses and capabilities to its Ed25519 identity (docs/protocol.md §3).
//!
//! A [`NodeRecord`] value only exists after its signature, version, sizes and validity period were
//! checked, so code holding one never re-checks. [`RecordBook`] keeps the newest record per node
//! and refuses older sequence numbers.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use bytes::Bytes;
use prost::Message;
use x25519_dalek::PublicKey as X25519Public;

use crate::crypto::kdf::labels;
use crate::identity::{Identity, NodeId};
use crate::proto;

/// Node record format version defined by this crate.
pub const RECORD_VERSION: u32 = 1;
/// Largest encoded `NodeRecord` accepted, in bytes.
pub const MAX_RECORD_LEN: usize = 4096;
/// Most addresses a record may list.
pub const MAX_ADDRESSES: usize = 16;
/// Most capabilities a record may list.
pub const MAX_CAPABILITIES: usize = 16;
/// Longest `host` in an address, in bytes.
pub const MAX_HOST_LEN: usize = 255;
/// Longest `agent` string, in bytes.
pub const MAX_AGENT_LEN: usize = 64;
/// Longest validity period a record may claim, in seconds (30 days).
pub const MAX_RECORD_LIFETIME_SECS: u64 = 30 * 24 * 3600;
/// Default validity period of records this crate signs, in seconds (24 hours).
pub const DEFAULT_RECORD_LIFETIME_SECS: u64 = 24 * 3600;
/// How far in the future `issued_at` may lie before a record is refused (clock skew), seconds.
pub const MAX_CLOCK_SKEW_SECS: u64 = 600;

/// Why a node record was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordError {
    /// The bytes are not a protobuf `SignedNodeRecord`/`NodeRecord`.
    #[error("node record is not valid protobuf: {0}")]
    Malformed(String),
    /// The encoded record exceeds [`MAX_RECORD_LEN`].
    #[error("node record is {actual} bytes, more than the {max} allowed")]
    TooLarge {
        /// Encoded size.
        actual: usize,
        /// Limit.
        max: usize,
    },
    /// The record's format version is not one this implementation understands.
    #[error("node record version {0} is not supported (this implementation speaks version 1)")]
    UnsupportedVersion(u32),
    /// A field is missing, has the wrong length, or is out of range.
    #[error("node record field `{field}` is invalid: {reason}")]
    InvalidField {
        /// Field name as in the .proto file.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The Ed25519 signature does not verify under the record's NodeId.
    #[error("node record signature does not verify for node {0}")]
    BadSignature(NodeId),
    /// `expires_at` is not after the current time.
    #[error("node record of {node} expired at {expires_at} (now {now})")]
    Expired {
        /// The node.
        node: NodeId,
        /// Unix seconds.
        expires_at: u64,
        /// Unix seconds.
        now: u64,
    },
    /// `issued_at` lies further in the future than the allowed clock skew.
    #[error("node record of {node} is issued at {issued_at}, in the future (now {now})")]
    NotYetValid {
        /// The node.
        node: NodeId,
        /// Unix seconds.
        issued_at: u64,
        /// Unix seconds.
        now: u64,
    },
    /// The validity period is empty or longer than [`MAX_RECORD_LIFETIME_SECS`].
    #[error(
        "node record validity period {issued_at}..{expires_at} is empty or longer than 30 days"
    )]
    BadLifetime {
        /// Unix seconds.
        issued_at: u64,
        /// Unix seconds.
        expires_at: u64,
    },
    /// A record with a sequence number not newer than the stored one.
    #[error("node record of {node} has sequence {received}, not newer than the stored {stored}")]
    StaleSequence {
        /// The node.
        node: NodeId,
        /// Sequence already stored.
        stored: u64,
        /// Sequence received.
        received: u64,
    },
    /// The same sequence number signed over different contents (the node's key is misused).
    #[error("node {node} signed two different records with sequence {sequence}")]
    ConflictingSequence {
        /// The node.
        node: NodeId,
        /// The sequence number.
        sequence: u64,
    },
    /// The record does not belong to the identity it is used with.
    #[error("node record belongs to {record}, not to {identity}")]
    IdentityMismatch {
        /// NodeId in the record.
        record: NodeId,
        /// NodeId of the identity.
        identity: NodeId,
    },
}

/// A transport a node can be reached over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Transport {
    /// QUIC over UDP.
    Quic,
    /// TLS 1.3 over TCP.
    Tcp,
    /// TLS 1.3 over a Tor onion service.
    Tor,
    /// TLS 1.3 over an I2P stream.
    I2p,
}

impl Transport {
    fn to_proto(self) -> proto::Transport {
        match self {
            Transport::Quic => proto::Transport::Quic,
            Transport::Tcp => proto::Transport::Tcp,
            Transport::Tor => proto::Transport::Tor,
            Transport::I2p => proto::Transport::I2p,
        }
    }

    fn from_proto(value: i32) -> Option<Self> {
        match proto::Transport::try_from(value).ok()? {
            proto::Transport::Quic => Some(Transport::Quic),
            proto::Transport::Tcp => Some(Transport::Tcp),
            proto::Transport::Tor => Some(Transport::Tor),
            proto::Transport::I2p => Some(Transport::I2p),
            proto::Transport::Unspecified => None,
        }
    }
}

/// One address in a node record.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Address {
    /// How to connect.
    pub transport: Transport,
    /// IP literal for QUIC/TCP; onion or I2P name otherwise.
    pub host: String,
    /// Port, never 0.
    pub port: u16,
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.transport {
            Transport::Quic => "quic",
            Transport::Tcp => "tcp",
            Transport::Tor => "tor",
            Transport::I2p => "i2p",
        };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// A role a node offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Capability {
    /// Forwards messages for others.
    Relay,
    /// Tor bridge.
    BridgeTor,
    /// I2P bridge.
    BridgeI2p,
    /// Update authority.
    Authority,
    /// Stores messages for offline recipients.
    StoreForward,
    /// Serves update chunks.
    UpdateMirror,
}

impl Capability {
    fn to_proto(self) -> proto::Capability {
        match self {
            Capability::Relay => proto::Capability::Relay,
            Capability::BridgeTor => proto::Capability::BridgeTor,
            Capability::BridgeI2p => proto::Capability::BridgeI2p,
            Capability::Authority => proto::Capability::Authority,
            Capability::StoreForward => proto::Capability::StoreForward,
            Capability::UpdateMirror => proto::Capability::UpdateMirror,
        }
    }

    fn from_proto(value: i32) -> Option<Self> {
        match proto::Capability::try_from(value).ok()? {
            proto::Capability::Relay => Some(Capability::Relay),
            proto::Capability::BridgeTor => Some(Capability::BridgeTor),
            proto::Capability::BridgeI2p => Some(Capability::BridgeI2p),
            proto::Capability::Authority => Some(Capability::Authority),
            proto::Capability::StoreForward => Some(Capability::StoreForward),
            proto::Capability::UpdateMirror => Some(Capability::UpdateMirror),
            proto::Capability::Unspecified => None,
        }
    }
}

/// A verified node record.
///
/// Obtained from [`NodeRecord::verify`] (bytes from the network) or [`NodeRecordBuilder::sign`]
/// (our own). Keeps the exact signed bytes so it can be forwarded unchanged.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeRecord {
    signed: proto::SignedNodeRecord,
    node_id: NodeId,
    x25519: X25519Public,
    sequence: u64,
    issued_at: u64,
    expires_at: u64,
    addresses: Vec<Address>,
    capabilities: Vec<Capability>,
    agent: String,
    unlisted: bool,
}

impl fmt::Debug for NodeRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeRecord")
            .field("node_id", &self.node_id)
            .field("sequence", &self.sequence)
            .field("issued_at", &self.issued_at)
            .field("expires_at", &self.expires_at)
            .field("addresses", &self.addresses)
            .field("capabilities", &self.capabilities)
            .field("agent", &self.agent)
            .field("unlisted", &self.unlisted)
            .finish_non_exhaustive()
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> RecordError {
    RecordError::InvalidField {
        field,
        reason: reason.into(),
    }
}

impl NodeRecord {
    /// Decodes an encoded `SignedNodeRecord` and verifies it at time `now` (Unix seconds).
    pub fn decode(bytes: &[u8], now: u64) -> Result<Self, RecordError> {
        if bytes.len() > MAX_RECORD_LEN + 128 {
            return Err(RecordError::TooLarge {
                actual: bytes.len(),
                max: MAX_RECORD_LEN + 128,
            });
        }
        let signed = proto::SignedNodeRecord::decode(bytes)
            .map_err(|e| RecordError::Malformed(e.to_string()))?;
        Self::verify(&signed, now)
    }

    /// Verifies a `SignedNodeRecord` at time `now` (Unix seconds): size, version, fields,
    /// validity period, then the signature.
    pub fn verify(signed: &proto::SignedNodeRecord, now: u64) -> Result<Self, RecordError> {
        let record = Self::check_structure(signed)?;
        record.check_time(now)?;
        record
            .node_id
            .verify(labels::SIG_NODE_RECORD, &signed.record, &signed.signature)
            .map_err(|_| RecordError::BadSignature(record.node_id))?;
        Ok(record)
    }

    /// Everything but time and signature.
    fn check_structure(signed: &proto::SignedNodeRecord) -> Result<Self, RecordError> {
        if signed.record.len() > MAX_RECORD_LEN {
            return Err(RecordError::TooLarge {
                actual: signed.record.len(),
                max: MAX_RECORD_LEN,
            });
        }
        if signed.signature.len() != 64 {
            return Err(invalid(
                "signature",
                format!("must be 64 bytes, is {}", signed.signature.len()),
            ));
        }
        let raw = proto::NodeRecord::decode(signed.record.clone())
            .map_err(|e| RecordError::Malformed(e.to_string()))?;
        if raw.version != RECORD_VERSION {
            return Err(RecordError::UnsupportedVersion(raw.version));
        }
        let node_id =
            NodeId::from_slice(&raw.node_id).map_err(|e| invalid("node_id", e.to_string()))?;
        let x25519: [u8; 32] = raw.x25519_key.as_ref().try_into().map_err(|_| {
            invalid(
                "x25519_key",
                format!("must be 32 bytes, is {}", raw.x25519_key.len()),
            )
        })?;
        if raw.expires_at <= raw.issued_at
            || raw.expires_at - raw.issued_at > MAX_RECORD_LIFETIME_SECS
        {
            return Err(RecordError::BadLifetime {
                issued_at: raw.issued_at,
                expires_at: raw.expires_at,
            });
        }
        if raw.addresses.len() > MAX_ADDRESSES {
            return Err(invalid(
                "addresses",
                format!(
                    "at most {MAX_ADDRESSES} allowed, found {}",
                    raw.addresses.len()
                ),
            ));
        }
        let mut addresses = Vec::with_capacity(raw.addresses.len());
        for address in &raw.addresses {
            // Addresses of transports added by later minor versions stay in the signed bytes
            // and are skipped here, like unknown capabilities.
            if let Some(address) = check_address(address)? {
                addresses.push(address);
            }
        }
        if raw.capabilities.len() > MAX_CAPABILITIES {
            return Err(invalid(
                "capabilities",
                format!(
                    "at most {MAX_CAPABILITIES} allowed, found {}",
                    raw.capabilities.len()
                ),
            ));
        }
        // Unknown capabilities (added by later minor versions) are kept in the signed bytes and
        // ignored here.
        let capabilities = raw
            .capabilities
            .iter()
            .filter_map(|c| Capability::from_proto(*c))
            .collect();
        if raw.agent.len() > MAX_AGENT_LEN {
            return Err(invalid(
                "agent",
                format!("at most {MAX_AGENT_LEN} bytes, is {}", raw.agent.len()),
            ));
        }
        Ok(Self {
            signed: signed.clone(),
            node_id,
            x25519: X25519Public::from(x25519),
            sequence: raw.sequence,
            issued_at: raw.issued_at,
            expires_at: raw.expires_at,
            addresses,
            capabilities,
            agent: raw.agent,
            unlisted: raw.unlisted,
        })
    }

    fn check_time(&self, now: u64) -> Result<(), RecordError> {
        if self.expires_at <= now {
            return Err(RecordError::Expired {
                node: self.node_id,
                expires_at: self.expires_at,
                now,
            });
        }
        if self.issued_at > now.saturating_add(MAX_CLOCK_SKEW_SECS) {
            return Err(RecordError::NotYetValid {
                node: self.node_id,
                issued_at: self.issued_at,
                now,
            });
        }
        Ok(())
    }

    /// The node this record describes.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The node's X25519 static public key.
    pub fn x25519_key(&self) -> &X25519Public {
        &self.x25519
    }

    /// Sequence number; higher replaces lower.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// Unix seconds when signed.
    pub fn issued_at(&self) -> u64 {
        self.issued_at
    }

    /// Unix seconds when it stops being valid.
    pub fn expires_at(&self) -> u64 {
        self.expires_at
    }

    /// Whether the record has expired at `now` (Unix seconds).
    pub fn is_expired(&self, now: u64) -> bool {
        self.expires_at <= now
    }

    /// Reachable addresses.
    pub fn addresses(&self) -> &[Address] {
        &self.addresses
    }

    /// Roles the node offers (unknown ones omitted).
    pub fn capabilities(&self) -> &[Capability] {
        &self.capabilities
    }

    /// Whether the node offers `capability`.
    pub fn has_capability(&self, capability: Capability) -> bool {
        self.capabilities.contains(&capability)
    }

    /// Software name/version the node reports.
    pub fn agent(&self) -> &str {
        &self.agent
    }

    /// Whether the node asks explorers and crawlers not to list it.
    pub fn is_unlisted(&self) -> bool {
        self.unlisted
    }

    /// The signed wire form, exactly as received or signed.
    pub fn signed(&self) -> &proto::SignedNodeRecord {
        &self.signed
    }

    /// The encoded `SignedNodeRecord`.
    pub fn encode(&self) -> Vec<u8> {
        self.signed.encode_to_vec()
    }

    /// Fails unless this record belongs to `identity` and carries its current X25519 key.
    pub(crate) fn check_belongs_to(&self, identity: &Identity) -> Result<(), RecordError> {
        if self.node_id != identity.node_id() || self.x25519 != *identity.x25519_public() {
            return Err(RecordError::IdentityMismatch {
                record: self.node_id,
                identity: identity.node_id(),
            });
        }
        Ok(())
    }
}

fn check_address(address: &proto::Address) -> Result<Option<Address>, RecordError> {
    if address.transport == proto::Transport::Unspecified as i32 {
        return Err(invalid("addresses.transport", "unspecified"));
    }
    let Some(transport) = Transport::from_proto(address.transport) else {
        return Ok(None);
    };
    if address.host.is_empty() || address.host.len() > MAX_HOST_LEN {
        return Err(invalid(
            "addresses.host",
            format!(
                "must be 1..={MAX_HOST_LEN} bytes, is {}",
                address.host.len()
            ),
        ));
    }
    let port = u16::try_from(address.port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| {
            invalid(
                "addresses.port",
                format!("{} is not in 1..=65535", address.port),
            )
        })?;
    match transport {
        Transport::Quic | Transport::Tcp => {
            address.host.parse::<IpAddr>().map_err(|_| {
                invalid(
                    "addresses.host",
                    format!("{:?} is not an IP address", address.host),
                )
            })?;
        }
        Transport::Tor | Transport::I2p => {
            if !address
                .host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            {
                return Err(invalid(
                    "addresses.host",
                    format!("{:?} is not a host name", address.host),
                ));
            }
        }
    }
    Ok(Some(Address {
        transport,
        host: address.host.clone(),
        port,
    }))
}

/// Builds and signs our own node record.
///
/// ```
/// use meshara_core::{Capability, Identity, NodeRecordBuilder, Transport};
/// let identity = Identity::generate();
/// let now = 1_800_000_000;
/// let record = NodeRecordBuilder::new(&identity, 1)
///     .address(Transport::Quic, "192.0.2.7", 7777)
///     .capability(Capability::Relay)
///     .sign(now)?;
/// assert_eq!(record.node_id(), identity.node_id());
/// # Ok::<(), meshara_core::RecordError>(())
/// ```
#[derive(Debug)]
pub struct NodeRecordBuilder<'a> {
    identity: &'a Identity,
    sequence: u64,
    lifetime: u64,
    addresses: Vec<proto::Address>,
    capabilities: Vec<i32>,
    agent: String,
    unlisted: bool,
}

impl<'a> NodeRecordBuilder<'a> {
    /// Starts a record for `identity` with the given sequence number. Use a number higher than
    /// any record this identity signed before; Unix milliseconds at signing time is a good choice.
    pub fn new(identity: &'a Identity, sequence: u64) -> Self {
        Self {
            identity,
            sequence,
            lifetime: DEFAULT_RECORD_LIFETIME_SECS,
            addresses: Vec::new(),
            capabilities: Vec::new(),
            agent: concat!("meshara/", env!("CARGO_PKG_VERSION")).to_owned(),
            unlisted: false,
        }
    }

    /// Validity period in seconds (default 24 h, at most 30 days).
    pub fn lifetime_secs(mut self, secs: u64) -> Self {
        self.lifetime = secs;
        self
    }

    /// Adds an address.
    pub fn address(mut self, transport: Transport, host: impl Into<String>, port: u16) -> Self {
        self.addresses.push(proto::Address {
            transport: transport.to_proto() as i32,
            host: host.into(),
            port: u32::from(port),
        });
        self
    }

    /// Adds a capability.
    pub fn capability(mut self, capability: Capability) -> Self {
        let value = capability.to_proto() as i32;
        if !self.capabilities.contains(&value) {
            self.capabilities.push(value);
        }
        self
    }

    /// Sets the agent string (at most 64 bytes).
    pub fn agent(mut self, agent: impl Into<String>) -> Self {
        self.agent = agent.into();
        self
    }

    /// Asks explorers and crawlers not to list this node (default: listed).
    pub fn unlisted(mut self, unlisted: bool) -> Self {
        self.unlisted = unlisted;
        self
    }

    /// Signs the record, valid from `now` (Unix seconds). The result passes the same checks a
    /// receiver applies, so we never publish a record others would refuse.
    pub fn sign(self, now: u64) -> Result<NodeRecord, RecordError> {
        let raw = proto::NodeRecord {
            version: RECORD_VERSION,
            node_id: Bytes::copy_from_slice(self.identity.node_id().as_bytes()),
            x25519_key: Bytes::copy_from_slice(self.identity.x25519_public().as_bytes()),
            sequence: self.sequence,
            issued_at: now,
            expires_at: now.saturating_add(self.lifetime),
            addresses: self.addresses,
            capabilities: self.capabilities,
            agent: self.agent,
            unlisted: self.unlisted,
        };
        let record = Bytes::from(raw.encode_to_vec());
        let signature = self.identity.sign(labels::SIG_NODE_RECORD, &record);
        let signed = proto::SignedNodeRecord {
            record,
            signature: Bytes::copy_from_slice(&signature),
        };
        NodeRecord::verify(&signed, now)
    }
}

/// What [`RecordBook::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Inserted {
    /// First record for this node.
    New,
    /// Replaced an older record.
    Updated,
    /// The very same record was already stored.
    Unchanged,
}

/// The newest verified record of each known node, bounded in size.
#[derive(Debug, Clone)]
pub struct RecordBook {
    records: HashMap<NodeId, NodeRecord>,
    capacity: usize,
}

impl RecordBook {
    /// A book holding at most `capacity` records (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            records: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// Stores `record` unless one with a higher sequence is already known. An equal sequence is
    /// accepted only for the identical record. When full, the record expiring first is dropped.
    pub fn insert(&mut self, record: NodeRecord) -> Result<Inserted, RecordError> {
        let node = record.node_id();
        if let Some(stored) = self.records.get(&node) {
            if record.sequence() < stored.sequence() {
                return Err(RecordError::StaleSequence {
                    node,
                    stored: stored.sequence(),
                    received: record.sequence(),
                });
            }
            if record.sequence() == stored.sequence() {
                return if record.signed.record == stored.signed.record {
                    Ok(Inserted::Unchanged)
                } else {
                    Err(RecordError::ConflictingSequence {
                        node,
                        sequence: record.sequence(),
                    })
                };
            }
            self.records.insert(node, record);
            return Ok(Inserted::Updated);
        }
        if self.records.len() >= self.capacity {
            let victim = self
                .records
                .values()
                .min_by_key(|r| r.expires_at())
                .map(NodeRecord::node_id);
            if let Some(victim) = victim {
                self.records.remove(&victim);
            }
        }
        self.records.insert(node, record);
        Ok(Inserted::New)
    }

    /// Decodes, verifies at `now` and inserts.
    pub fn insert_signed(
        &mut self,
        signed: &proto::SignedNodeRecord,
        now: u64,
    ) -> Result<Inserted, RecordError> {
        self.insert(NodeRecord::verify(signed, now)?)
    }

    /// The stored record of `node`, if any (it may have expired since; see [`RecordBook::prune`]).
    pub fn get(&self, node: &NodeId) -> Option<&NodeRecord> {
        self.records.get(node)
    }

    /// The stored record whose signed bytes (record and signature) are exactly `signed`, if
    /// any: a record that needs no new signature check (its validity period still does).
    pub fn get_identical(&self, signed: &proto::SignedNodeRecord) -> Option<&NodeRecord> {
        if signed.record.len() > MAX_RECORD_LEN {
            return None;
        }
        let raw = proto::NodeRecord::decode(signed.record.as_ref()).ok()?;
        let id: &[u8; 32] = raw.node_id.as_ref().try_into().ok()?;
        let stored = self.records.get(&NodeId::from_bytes(id).ok()?)?;
        (stored.signed.record == signed.record && stored.signed.signature == signed.signature)
            .then_some(stored)
    }

    /// Drops expired records; returns how many.
    pub fn prune(&mut self, now: u64) -> usize {
        let before = self.records.len();
        self.records.retain(|_, r| !r.is_expired(now));
        before - self.records.len()
    }

    /// Number of records held.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the book is empty.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// All records held.
    pub fn iter(&self) -> impl Iterator<Item = &NodeRecord> {
        self.records.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn record(identity: &Identity, seq: u64) -> NodeRecord {
        NodeRecordBuilder::new(identity, seq)
            .address(Transport::Quic, "127.0.0.1", 4000)
            .address(Transport::Tor, "abcdef.onion", 443)
            .capability(Capability::Relay)
            .sign(NOW)
            .unwrap()
    }

    fn resign(identity: &Identity, raw: &proto::NodeRecord) -> proto::SignedNodeRecord {
        let bytes = Bytes::from(raw.encode_to_vec());
        let sig = identity.sign(labels::SIG_NODE_RECORD, &bytes);
        proto::SignedNodeRecord {
            record: bytes,
            signature: Bytes::copy_from_slice(&sig),
        }
    }

    fn raw(r: &NodeRecord) -> proto::NodeRecord {
        proto::NodeRecord::decode(r.signed().record.clone()).unwrap()
    }

    #[test]
    fn signed_record_round_trips() {
        let id = Identity::generate();
        let r = record(&id, 7);
        let back = NodeRecord::decode(&r.encode(), NOW + 10).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.sequence(), 7);
        assert_eq!(back.x25519_key(), id.x25519_public());
        assert_eq!(back.addresses()[0].to_string(), "quic://127.0.0.1:4000");
        assert!(back.has_capability(Capability::Relay));
        assert!(!back.has_capability(Capability::Authority));
    }

    #[test]
    fn identical_records_are_found_without_a_new_check() {
        let id = Identity::generate();
        let r = record(&id, 7);
        let mut book = RecordBook::new(8);
        assert!(book.get_identical(r.signed()).is_none());
        book.insert(r.clone()).unwrap();
        assert_eq!(book.get_identical(r.signed()), Some(&r));
        // Same record bytes, another signature: not identical.
        let mut forged = r.signed().clone();
        let mut sig = forged.signature.to_vec();
        sig[0] ^= 1;
        forged.signature = sig.into();
        assert!(book.get_identical(&forged).is_none());
        // Garbage is simply unknown.
        let junk = proto::SignedNodeRecord {
            record: Bytes::from_static(b"\xff\xff"),
            signature: Bytes::new(),
        };
        assert!(book.get_identical(&junk).is_none());
    }

    #[test]
    fn the_unlisted_flag_is_signed_and_read_back() {
        let id = Identity::generate();
        let r = NodeRecordBuilder::new(&id, 1)
            .unlisted(true)
            .sign(NOW)
            .unwrap();
        let back = NodeRecord::decode(&r.encode(), NOW + 1).unwrap();
        assert!(back.is_unlisted());
        assert!(!record(&id, 2).is_unlisted());
    }

    #[test]
    fn bad_signature_is_rejected() {
        let id = Identity::generate();
        let r = record(&id, 1);
        let mut signed = r.signed().clone();
        let mut sig = signed.signature.to_vec();
        sig[10] ^= 1;
        signed.signature = sig.into();
        assert_eq!(
            NodeRecord::verify(&signed, NOW),
            Err(RecordError::BadSignature(id.node_id()))
        );

        // A record claiming another node's id, signed by us.
        let other = Identity::generate();
        let mut forged = raw(&r);
        forged.node_id = Bytes::copy_from_slice(other.node_id().as_bytes());
        let signed = resign(&id, &forged);
        assert_eq!(
            NodeRecord::verify(&signed, NOW),
            Err(RecordError::BadSignature(other.node_id()))
        );

        // Any flipped bit in the record body.
        let mut signed = r.signed().clone();
        let mut body = signed.record.to_vec();
        let last = body.len() - 1;
        body[last] ^= 0x01;
        signed.record = body.into();
        assert!(NodeRecord::verify(&signed, NOW).is_err());
    }

    #[test]
    fn expired_and_future_records_are_rejected() {
        let id = Identity::generate();
        let r = record(&id, 1);
        assert!(matches!(
            NodeRecord::verify(r.signed(), r.expires_at()),
            Err(RecordError::Expired { .. })
        ));
        assert!(matches!(
            NodeRecord::verify(r.signed(), NOW - MAX_CLOCK_SKEW_SECS - 1),
            Err(RecordError::NotYetValid { .. })
        ));
        assert!(NodeRecord::verify(r.signed(), NOW - MAX_CLOCK_SKEW_SECS).is_ok());
        let err = NodeRecordBuilder::new(&id, 1)
            .lifetime_secs(MAX_RECORD_LIFETIME_SECS + 1)
            .sign(NOW)
            .unwrap_err();
        assert!(matches!(err, RecordError::BadLifetime { .. }));
    }

    #[test]
    fn old_sequence_is_rejected_by_the_book() {
        let id = Identity::generate();
        let mut book = RecordBook::new(10);
        assert_eq!(book.insert(record(&id, 5)), Ok(Inserted::New));
        let same = book.get(&id.node_id()).unwrap().clone();
        assert_eq!(book.insert(same), Ok(Inserted::Unchanged));
        assert_eq!(
            book.insert(record(&id, 4)),
            Err(RecordError::StaleSequence {
                node: id.node_id(),
                stored: 5,
                received: 4
            })
        );
        let conflicting = NodeRecordBuilder::new(&id, 5)
            .agent("other")
            .sign(NOW)
            .unwrap();
        assert_eq!(
            book.insert(conflicting),
            Err(RecordError::ConflictingSequence {
                node: id.node_id(),
                sequence: 5
            })
        );
        assert_eq!(book.insert(record(&id, 6)), Ok(Inserted::Updated));
        assert_eq!(book.get(&id.node_id()).unwrap().sequence(), 6);
    }

    #[test]
    fn book_is_bounded_and_prunes() {
        let mut book = RecordBook::new(3);
        let ids: Vec<_> = (0..5).map(|_| Identity::generate()).collect();
        for (i, id) in ids.iter().enumerate() {
            let r = NodeRecordBuilder::new(id, 1)
                .lifetime_secs(1000 + i as u64)
                .sign(NOW)
                .unwrap();
            book.insert(r).unwrap();
        }
        assert_eq!(book.len(), 3);
        // The shortest-lived were evicted.
        assert!(book.get(&ids[0].node_id()).is_none());
        assert!(book.get(&ids[4].node_id()).is_some());
        assert_eq!(book.prune(NOW + 1002), 1);
        assert_eq!(book.len(), 2);
    }

    #[test]
    fn malformed_fields_are_named() {
        let id = Identity::generate();
        let r = record(&id, 1);
        type Mutation = Box<dyn Fn(&mut proto::NodeRecord)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (
                Box::new(|r| r.x25519_key = Bytes::from_static(&[1; 31])),
                "x25519_key",
            ),
            (
                Box::new(|r| r.node_id = Bytes::from_static(&[1; 33])),
                "node_id",
            ),
            (Box::new(|r| r.addresses[0].port = 0), "addresses.port"),
            (Box::new(|r| r.addresses[0].port = 70000), "addresses.port"),
            (
                Box::new(|r| r.addresses[0].host = "not-an-ip".into()),
                "addresses.host",
            ),
            (
                Box::new(|r| r.addresses[1].host = "a b.onion".into()),
                "addresses.host",
            ),
            (
                Box::new(|r| r.addresses[0].transport = 0),
                "addresses.transport",
            ),
            (Box::new(|r| r.agent = "x".repeat(65)), "agent"),
            (
                Box::new(|r| r.addresses = vec![r.addresses[0].clone(); MAX_ADDRESSES + 1]),
                "addresses",
            ),
        ];
        for (mutate, field) in cases {
            let mut body = raw(&r);
            mutate(&mut body);
            let err = NodeRecord::verify(&resign(&id, &body), NOW).unwrap_err();
            match err {
                RecordError::InvalidField { field: f, .. } => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
        let mut body = raw(&r);
        body.version = 2;
        assert_eq!(
            NodeRecord::verify(&resign(&id, &body), NOW),
            Err(RecordError::UnsupportedVersion(2))
        );
        assert!(matches!(
            NodeRecord::decode(&[0xff, 0xff], NOW),
            Err(RecordError::Malformed(_))
        ));
        assert!(matches!(
            NodeRecord::decode(&vec![0u8; MAX_RECORD_LEN + 500], NOW),
            Err(RecordError::TooLarge { .. })
        ));
    }

    #[test]
    fn unknown_capabilities_and_transports_are_ignored_but_kept_signed() {
        let id = Identity::generate();
        let mut body = raw(&record(&id, 1));
        body.capabilities.push(42);
        body.addresses.push(proto::Address {
            transport: 99,
            host: "future".into(),
            port: 1,
        });
        let signed = resign(&id, &body);
        let r = NodeRecord::verify(&signed, NOW).unwrap();
        assert_eq!(r.capabilities(), &[Capability::Relay]);
        assert_eq!(r.addresses().len(), 2);
        assert_eq!(r.signed(), &signed);
    }
}
