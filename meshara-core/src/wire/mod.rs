//! The wire format: versioned protobuf [`Envelope`](crate::proto::Envelope)s inside
//! length-prefixed frames (docs/protocol.md §4-§5).
//!
//! [`decode_envelope`] is the one entry point for untrusted bytes: it bounds the size, decodes,
//! checks the version and then validates every field of the body against the limits below, so
//! the rest of the node only ever sees well-formed messages.

mod frame;

pub use frame::{
    DEFAULT_MAX_FRAME_LEN, FRAME_HEADER_LEN, FrameDecoder, MAX_FRAME_LEN_LIMIT, decode_frame,
    encode_frame,
};

use bytes::{Bytes, BytesMut};
use prost::Message;

use crate::crypto::kdf::{derive, labels};
use crate::crypto::{MAX_PRIVATE_CIPHERTEXT, TAG_LEN};
use crate::proto::{self, envelope::Body};
use crate::record::MAX_RECORD_LEN;

/// Protocol major version carried in every envelope.
pub const PROTOCOL_VERSION: u32 = 1;
/// ALPN protocol id for this major version.
pub const ALPN: &[u8] = b"meshara/1";

/// Longest topic, content type or query method, in Unicode scalar values (characters), so
/// that a limit stated in an interface schema (JSON Schema's `maxLength` counts characters)
/// is the limit the protocol keeps; at most 512 bytes of UTF-8.
pub const MAX_NAME_LEN: usize = 128;

/// The length of a name as [`MAX_NAME_LEN`] counts it: its characters.
pub fn name_len(name: &str) -> usize {
    name.chars().count()
}
/// Largest broadcast content, in bytes.
pub const MAX_BROADCAST_CONTENT: usize = 64 * 1024;
/// Largest encoded BroadcastBody, in bytes.
pub const MAX_BROADCAST_BODY: usize = MAX_BROADCAST_CONTENT + 1024;
/// Largest query or response body at hop level, in bytes.
pub const MAX_QUERY_BODY: usize = 512 * 1024;
/// Most ids in one Ack or IHave.
pub const MAX_IDS: usize = 256;
/// Most records in FoundNodes.
pub const MAX_FOUND_RECORDS: usize = 20;
/// Most records in a Shuffle, ShuffleReply.
pub const MAX_SHUFFLE_RECORDS: usize = 16;
/// Most records in a PeerExchange.
pub const MAX_EXCHANGE_RECORDS: usize = 64;
/// Most peers listed in a NodeStatus.
pub const MAX_STATUS_PEERS: usize = 256;
/// Most topics listed in a NodeStatus.
pub const MAX_STATUS_TOPICS: usize = 64;
/// Largest encoded update metadata body, in bytes.
pub const MAX_METADATA_BODY: usize = 600 * 1024;
/// Most signatures on update metadata.
pub const MAX_METADATA_SIGNATURES: usize = 32;
/// Largest update chunk, in bytes.
pub const MAX_CHUNK_LEN: usize = 512 * 1024;
/// Largest `Have.bitmap`: one bit per chunk of the largest release.
pub const MAX_HAVE_BITMAP: usize = crate::update::MAX_CHUNKS / 8;
/// Most roots in one `Metadata` answer.
pub const MAX_METADATA_ROOTS: usize = 16;
/// Largest hop limit a private envelope may carry.
pub const MAX_HOP_LIMIT: u32 = 32;

/// Why bytes from the wire were refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WireError {
    /// A frame announced more bytes than the limit.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    FrameTooLarge {
        /// Announced length.
        len: usize,
        /// Limit in force.
        max: usize,
    },
    /// A frame of length zero (never valid: every envelope has a version).
    #[error("empty frame")]
    EmptyFrame,
    /// The input ended inside a frame.
    #[error("truncated: needed {needed} bytes, only {available} available")]
    Truncated {
        /// Bytes a complete frame needs.
        needed: usize,
        /// Bytes present.
        available: usize,
    },
    /// Bytes after the one frame a buffer should hold.
    #[error("{0} unexpected bytes after the frame")]
    TrailingBytes(usize),
    /// The envelope is not valid protobuf.
    #[error("malformed envelope: {0}")]
    Malformed(String),
    /// The envelope's major version is not [`PROTOCOL_VERSION`].
    #[error("unsupported protocol version {0} (this node speaks version {PROTOCOL_VERSION})")]
    UnsupportedVersion(u32),
    /// The envelope (or a nested oneof such as a private, routing, gossip or update message)
    /// has no body this implementation knows: empty, or a kind added by a later minor version.
    /// Skip the envelope; the link stays up.
    #[error("envelope carries no message kind this node knows")]
    UnknownKind,
    /// A field breaks a size, count or format rule.
    #[error("field `{field}` is invalid: {reason}")]
    InvalidField {
        /// Path of the field, as in the .proto files.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> WireError {
    WireError::InvalidField {
        field,
        reason: reason.into(),
    }
}

fn exact(field: &'static str, bytes: &[u8], len: usize) -> Result<(), WireError> {
    if bytes.len() != len {
        return Err(invalid(
            field,
            format!("must be {len} bytes, is {}", bytes.len()),
        ));
    }
    Ok(())
}

fn at_most(field: &'static str, len: usize, max: usize) -> Result<(), WireError> {
    if len > max {
        return Err(invalid(field, format!("at most {max} allowed, got {len}")));
    }
    Ok(())
}

fn between(field: &'static str, len: usize, min: usize, max: usize) -> Result<(), WireError> {
    if len < min || len > max {
        return Err(invalid(
            field,
            format!("length {len} is outside {min}..={max}"),
        ));
    }
    Ok(())
}

fn ids(field: &'static str, list: &[Bytes]) -> Result<(), WireError> {
    at_most(field, list.len(), MAX_IDS)?;
    list.iter().try_for_each(|id| exact(field, id, 32))
}

fn required<'a, T>(field: &'static str, value: &'a Option<T>) -> Result<&'a T, WireError> {
    value.as_ref().ok_or_else(|| invalid(field, "missing"))
}

/// Encodes an envelope after validating it, so we never send what a peer must refuse.
pub fn encode_envelope(envelope: &proto::Envelope) -> Result<Vec<u8>, WireError> {
    validate(envelope)?;
    Ok(envelope.encode_to_vec())
}

/// Encodes an envelope into one frame.
pub fn encode_envelope_frame(
    envelope: &proto::Envelope,
    max_len: usize,
    dst: &mut BytesMut,
) -> Result<(), WireError> {
    let body = encode_envelope(envelope)?;
    encode_frame(&body, max_len, dst)
}

/// Decodes and validates one envelope from a frame body of at most `max_len` bytes.
pub fn decode_envelope(bytes: Bytes, max_len: usize) -> Result<proto::Envelope, WireError> {
    let max = max_len.min(MAX_FRAME_LEN_LIMIT);
    if bytes.len() > max {
        return Err(WireError::FrameTooLarge {
            len: bytes.len(),
            max,
        });
    }
    let envelope =
        proto::Envelope::decode(bytes).map_err(|e| WireError::Malformed(e.to_string()))?;
    validate(&envelope)?;
    Ok(envelope)
}

/// BLAKE3 id of an encoded envelope, for hop-level deduplication and custody acks.
pub fn envelope_id(encoded: &[u8]) -> [u8; 32] {
    derive(labels::ENVELOPE_ID, &[encoded])
}

/// Checks version, presence of a known body and every field limit.
pub fn validate(envelope: &proto::Envelope) -> Result<(), WireError> {
    if envelope.version != PROTOCOL_VERSION {
        return Err(WireError::UnsupportedVersion(envelope.version));
    }
    match envelope.body.as_ref().ok_or(WireError::UnknownKind)? {
        Body::NodeRecord(r) => signed_record("node_record", r),
        Body::Private(p) => private(p),
        Body::Broadcast(b) => {
            between("broadcast.body", b.body.len(), 1, MAX_BROADCAST_BODY)?;
            exact("broadcast.signature", &b.signature, 64)
        }
        Body::Query(q) => query(q),
        Body::QueryResponse(r) => query_response(r),
        Body::Ack(a) => ids("ack.message_ids", &a.message_ids),
        Body::Routing(r) => routing(r),
        Body::Gossip(g) => gossip(g),
        Body::Update(u) => update(u),
        Body::StatusRequest(_) => Ok(()),
        Body::Status(s) => validate_status(s),
        Body::PeerExchange(x) => records("peer_exchange.records", &x.records, MAX_EXCHANGE_RECORDS),
        Body::Onion(o) => exact("onion.packet", &o.packet, crate::crypto::onion::PACKET_LEN),
    }
}

/// Checks a `NodeStatus` against the limits of docs/protocol.md (as [`decode_envelope`] does
/// for one inside an envelope); for the body of a `meshara.status` query answer.
pub fn validate_status(s: &proto::NodeStatus) -> Result<(), WireError> {
    if let Some(r) = &s.record {
        signed_record("status.record", r)?;
    }
    at_most("status.peers", s.peers.len(), MAX_STATUS_PEERS)?;
    s.peers
        .iter()
        .try_for_each(|id| exact("status.peers", id, 32))?;
    at_most("status.topics", s.topics.len(), MAX_STATUS_TOPICS)?;
    s.topics
        .iter()
        .try_for_each(|t| between("status.topics", name_len(t), 1, MAX_NAME_LEN))
}

fn signed_record(field: &'static str, r: &proto::SignedNodeRecord) -> Result<(), WireError> {
    between(field, r.record.len(), 1, MAX_RECORD_LEN)?;
    exact(field, &r.signature, 64)
}

fn records(
    field: &'static str,
    list: &[proto::SignedNodeRecord],
    max: usize,
) -> Result<(), WireError> {
    at_most(field, list.len(), max)?;
    list.iter().try_for_each(|r| signed_record(field, r))
}

/// Checks the field limits of a sealed message (inside a private envelope, or delivered by an
/// onion packet).
pub fn sealed(s: &proto::SealedMessage) -> Result<(), WireError> {
    exact("private.sealed.ephemeral", &s.ephemeral, 32)?;
    between(
        "private.sealed.sender_ciphertext",
        s.sender_ciphertext.len(),
        TAG_LEN,
        MAX_RECORD_LEN + 128 + TAG_LEN,
    )?;
    between(
        "private.sealed.payload_ciphertext",
        s.payload_ciphertext.len(),
        TAG_LEN,
        MAX_PRIVATE_CIPHERTEXT,
    )
}

fn private(p: &proto::PrivateEnvelope) -> Result<(), WireError> {
    use proto::private_envelope::Body as P;
    exact("private.recipient", &p.recipient, 32)?;
    if p.hop_limit > MAX_HOP_LIMIT {
        return Err(invalid(
            "private.hop_limit",
            format!("at most {MAX_HOP_LIMIT}, got {}", p.hop_limit),
        ));
    }
    let sender_max = MAX_RECORD_LEN + 128 + TAG_LEN;
    match p.body.as_ref().ok_or(WireError::UnknownKind)? {
        P::Sealed(s) => sealed(s),
        P::HandshakeInit(h) => {
            exact("private.handshake_init.ephemeral", &h.ephemeral, 32)?;
            between(
                "private.handshake_init.sender_ciphertext",
                h.sender_ciphertext.len(),
                TAG_LEN,
                sender_max,
            )?;
            between(
                "private.handshake_init.payload_ciphertext",
                h.payload_ciphertext.len(),
                TAG_LEN,
                64,
            )
        }
        P::HandshakeResponse(h) => {
            exact("private.handshake_response.ephemeral", &h.ephemeral, 32)?;
            exact(
                "private.handshake_response.payload_ciphertext",
                &h.payload_ciphertext,
                TAG_LEN,
            )
        }
        P::Session(s) => between(
            "private.session.ciphertext",
            s.ciphertext.len(),
            TAG_LEN,
            MAX_PRIVATE_CIPHERTEXT,
        ),
    }
}

pub(crate) fn query(q: &proto::Query) -> Result<(), WireError> {
    exact("query.query_id", &q.query_id, 16)?;
    between("query.method", name_len(&q.method), 1, MAX_NAME_LEN)?;
    at_most("query.body", q.body.len(), MAX_QUERY_BODY)
}

pub(crate) fn query_response(r: &proto::QueryResponse) -> Result<(), WireError> {
    exact("query_response.query_id", &r.query_id, 16)?;
    at_most("query_response.body", r.body.len(), MAX_QUERY_BODY)?;
    at_most("query_response.error", r.error.len(), 1024)
}

fn routing(r: &proto::RoutingMessage) -> Result<(), WireError> {
    use proto::routing_message::Body as R;
    match r.body.as_ref().ok_or(WireError::UnknownKind)? {
        R::Ping(_) | R::Pong(_) => Ok(()),
        R::FindNode(f) => exact("routing.find_node.target", &f.target, 32),
        R::FoundNodes(f) => records("routing.found_nodes.records", &f.records, MAX_FOUND_RECORDS),
        R::StoreRecord(s) => signed_record(
            "routing.store_record.record",
            required("routing.store_record.record", &s.record)?,
        ),
    }
}

fn gossip(g: &proto::GossipMessage) -> Result<(), WireError> {
    use proto::gossip_message::Body as G;
    between("gossip.topic", name_len(&g.topic), 1, MAX_NAME_LEN)?;
    match g.body.as_ref().ok_or(WireError::UnknownKind)? {
        G::Join(j) => signed_record(
            "gossip.join.record",
            required("gossip.join.record", &j.record)?,
        ),
        G::ForwardJoin(j) => signed_record(
            "gossip.forward_join.record",
            required("gossip.forward_join.record", &j.record)?,
        ),
        G::Neighbor(_) | G::Disconnect(_) | G::Prune(_) | G::Announce(_) => Ok(()),
        G::Shuffle(s) => {
            exact("gossip.shuffle.origin", &s.origin, 32)?;
            records("gossip.shuffle.records", &s.records, MAX_SHUFFLE_RECORDS)
        }
        G::ShuffleReply(s) => records(
            "gossip.shuffle_reply.records",
            &s.records,
            MAX_SHUFFLE_RECORDS,
        ),
        G::Ihave(i) => {
            ids("gossip.ihave.message_ids", &i.message_ids)?;
            if i.rounds.len() != i.message_ids.len() {
                return Err(invalid(
                    "gossip.ihave.rounds",
                    format!("{} rounds for {} ids", i.rounds.len(), i.message_ids.len()),
                ));
            }
            Ok(())
        }
        G::Graft(gr) if gr.message_id.is_empty() => Ok(()),
        G::Graft(gr) => exact("gossip.graft.message_id", &gr.message_id, 32),
        G::Data(d) => between(
            "gossip.data.broadcast",
            d.broadcast.len(),
            1,
            MAX_BROADCAST_BODY + 128,
        ),
    }
}

fn metadata(field: &'static str, m: &proto::SignedMetadata) -> Result<(), WireError> {
    between(field, m.body.len(), 1, MAX_METADATA_BODY)?;
    between(field, m.signatures.len(), 1, MAX_METADATA_SIGNATURES)?;
    m.signatures.iter().try_for_each(|s| {
        exact(field, &s.public_key, 32)?;
        exact(field, &s.signature, 64)
    })
}

fn update(u: &proto::UpdateMessage) -> Result<(), WireError> {
    use proto::update_message::Body as U;
    match u.body.as_ref().ok_or(WireError::UnknownKind)? {
        U::Root(m) => metadata("update.root", m),
        U::Release(m) => metadata("update.release", m),
        U::ChunkRequest(c) => {
            exact("update.chunk_request.content_hash", &c.content_hash, 32)?;
            chunk_size("update.chunk_request.chunk_size", c.chunk_size)
        }
        U::Chunk(c) => {
            exact("update.chunk.content_hash", &c.content_hash, 32)?;
            between("update.chunk.data", c.data.len(), 1, MAX_CHUNK_LEN)
        }
        U::MetadataRequest(m) => {
            at_most("update.metadata_request.package", m.package.len(), 64)?;
            at_most("update.metadata_request.channel", m.channel.len(), 64)
        }
        U::HaveRequest(h) => {
            exact("update.have_request.content_hash", &h.content_hash, 32)?;
            chunk_size("update.have_request.chunk_size", h.chunk_size)
        }
        U::Have(h) => {
            exact("update.have.content_hash", &h.content_hash, 32)?;
            at_most("update.have.bitmap", h.bitmap.len(), MAX_HAVE_BITMAP)
        }
        U::Metadata(m) => {
            at_most("update.metadata.roots", m.roots.len(), MAX_METADATA_ROOTS)?;
            m.roots
                .iter()
                .try_for_each(|r| metadata("update.metadata.roots", r))?;
            m.release
                .as_ref()
                .map_or(Ok(()), |r| metadata("update.metadata.release", r))
        }
        U::Status(s) => at_most("update.status.message", s.message.len(), 1024),
    }
}

fn chunk_size(field: &'static str, size: u32) -> Result<(), WireError> {
    between(field, size as usize, 1, MAX_CHUNK_LEN)
}

/// Decodes one `UpdateMessage` from an update stream or an update announcement, at most
/// `max_len` bytes, and checks every field limit (docs/protocol.md §11).
pub fn decode_update(bytes: &[u8], max_len: usize) -> Result<proto::UpdateMessage, WireError> {
    if bytes.len() > max_len {
        return Err(WireError::FrameTooLarge {
            len: bytes.len(),
            max: max_len,
        });
    }
    let message =
        proto::UpdateMessage::decode(bytes).map_err(|e| WireError::Malformed(e.to_string()))?;
    update(&message)?;
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(body: Body) -> proto::Envelope {
        proto::Envelope {
            version: PROTOCOL_VERSION,
            body: Some(body),
        }
    }

    #[test]
    fn version_and_kind_are_checked() {
        let mut e = env(Body::StatusRequest(proto::StatusRequest {}));
        assert!(decode_envelope(e.encode_to_vec().into(), 1000).is_ok());
        e.version = 2;
        assert_eq!(
            decode_envelope(e.encode_to_vec().into(), 1000),
            Err(WireError::UnsupportedVersion(2))
        );
        let empty = proto::Envelope {
            version: 1,
            body: None,
        };
        assert_eq!(
            decode_envelope(empty.encode_to_vec().into(), 1000),
            Err(WireError::UnknownKind)
        );
        // A kind from the future: field 99, length-delimited, after the version.
        static FUTURE: [u8; 5] = [0x08, 0x01, 0x9a, 0x06, 0x00];
        assert_eq!(
            decode_envelope(Bytes::from_static(&FUTURE), 1000),
            Err(WireError::UnknownKind)
        );
    }

    #[test]
    fn malformed_and_oversize_are_typed() {
        assert!(matches!(
            decode_envelope(Bytes::from_static(&[0x0a, 0x05, 1]), 1000),
            Err(WireError::Malformed(_))
        ));
        assert!(matches!(
            decode_envelope(Bytes::from(vec![0; 2000]), 1000),
            Err(WireError::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn field_limits_are_enforced() {
        let e = env(Body::Ack(proto::Ack {
            message_ids: vec![Bytes::from_static(&[0; 31])],
        }));
        assert!(matches!(
            decode_envelope(e.encode_to_vec().into(), 1 << 20),
            Err(WireError::InvalidField {
                field: "ack.message_ids",
                ..
            })
        ));
        let e = env(Body::Ack(proto::Ack {
            message_ids: vec![Bytes::from_static(&[0; 32]); MAX_IDS + 1],
        }));
        assert!(matches!(
            decode_envelope(e.encode_to_vec().into(), 1 << 20),
            Err(WireError::InvalidField { .. })
        ));
        let e = env(Body::Private(proto::PrivateEnvelope {
            recipient: Bytes::from_static(&[0; 32]),
            hop_limit: 3,
            body: None,
        }));
        assert_eq!(encode_envelope(&e), Err(WireError::UnknownKind));
        let e = env(Body::Gossip(proto::GossipMessage {
            topic: String::new(),
            body: Some(proto::gossip_message::Body::Prune(proto::Prune {})),
        }));
        assert!(matches!(
            encode_envelope(&e),
            Err(WireError::InvalidField {
                field: "gossip.topic",
                ..
            })
        ));
    }

    #[test]
    fn envelope_frame_round_trip() {
        let e = env(Body::Routing(proto::RoutingMessage {
            body: Some(proto::routing_message::Body::FindNode(proto::FindNode {
                request_id: 7,
                target: Bytes::from_static(&[9; 32]),
            })),
        }));
        let mut buf = BytesMut::new();
        encode_envelope_frame(&e, DEFAULT_MAX_FRAME_LEN, &mut buf).unwrap();
        let body = FrameDecoder::default().decode(&mut buf).unwrap().unwrap();
        assert_eq!(decode_envelope(body, DEFAULT_MAX_FRAME_LEN).unwrap(), e);
    }
}
