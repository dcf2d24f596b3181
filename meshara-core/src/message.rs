//! Message-level rules above the crypto: BLAKE3 message ids, the private payload codec and
//! signed broadcasts (docs/protocol.md §9).

use std::fmt;

use bytes::Bytes;
use data_encoding::HEXLOWER;
use prost::Message;
use rand_core::{OsRng, RngCore};

use crate::crypto::MAX_PRIVATE_PAYLOAD;
use crate::crypto::kdf::{derive, labels};
use crate::identity::{Identity, NodeId};
use crate::proto::{self, private_payload::Body as PayloadBody};
use crate::wire::{MAX_BROADCAST_BODY, MAX_BROADCAST_CONTENT, MAX_IDS, MAX_NAME_LEN, name_len};

/// Why a private payload or broadcast was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MessageError {
    /// Not valid protobuf.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A field breaks a size or format rule.
    #[error("field `{field}` is invalid: {reason}")]
    InvalidField {
        /// Field path.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The payload has no body this implementation knows.
    #[error("private payload carries no kind this node knows")]
    UnknownKind,
    /// The message id does not match the message contents.
    #[error("message id does not match its contents")]
    IdMismatch,
    /// A broadcast signature does not verify under its author.
    #[error("broadcast signature does not verify for author {0}")]
    BadSignature(NodeId),
}

fn invalid(field: &'static str, reason: impl Into<String>) -> MessageError {
    MessageError::InvalidField {
        field,
        reason: reason.into(),
    }
}

/// A 32-byte BLAKE3 message id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub [u8; 32]);

impl MessageId {
    /// The id bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&HEXLOWER.encode(&self.0))
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({})", &HEXLOWER.encode(&self.0[..8]))
    }
}

/// Id of a private message: binds sender, recipient, time, salt, type and content.
pub fn private_message_id(
    sender: &NodeId,
    recipient: &NodeId,
    sent_at_ms: u64,
    salt: &[u8],
    content_type: &str,
    content: &[u8],
) -> MessageId {
    MessageId(derive(
        labels::PRIVATE_MESSAGE_ID,
        &[
            sender.as_bytes(),
            recipient.as_bytes(),
            &sent_at_ms.to_le_bytes(),
            salt,
            content_type.as_bytes(),
            content,
        ],
    ))
}

/// Builds an application message from `sender` to `recipient` with a fresh random salt.
pub fn new_private_message(
    sender: &NodeId,
    recipient: &NodeId,
    content_type: &str,
    content: Bytes,
    sent_at_ms: u64,
    ack_requested: bool,
) -> (MessageId, proto::PrivateMessage) {
    let mut salt = [0u8; 16];
    OsRng.fill_bytes(&mut salt);
    let id = private_message_id(sender, recipient, sent_at_ms, &salt, content_type, &content);
    let message = proto::PrivateMessage {
        message_id: Bytes::copy_from_slice(&id.0),
        sent_at_ms,
        salt: Bytes::copy_from_slice(&salt),
        content_type: content_type.to_owned(),
        content,
        ack_requested,
    };
    (id, message)
}

/// Checks a received private message's id against its proven sender and us.
pub fn verify_private_message(
    message: &proto::PrivateMessage,
    sender: &NodeId,
    recipient: &NodeId,
) -> Result<MessageId, MessageError> {
    let id = private_message_id(
        sender,
        recipient,
        message.sent_at_ms,
        &message.salt,
        &message.content_type,
        &message.content,
    );
    if message.message_id.as_ref() != id.0 {
        return Err(MessageError::IdMismatch);
    }
    Ok(id)
}

/// Encodes a private payload (the plaintext of sealed and session messages).
pub fn encode_payload(payload: &proto::PrivatePayload) -> Result<Vec<u8>, MessageError> {
    validate_payload(payload)?;
    Ok(payload.encode_to_vec())
}

/// Decodes and validates a decrypted private payload.
pub fn decode_payload(bytes: &[u8]) -> Result<proto::PrivatePayload, MessageError> {
    if bytes.len() > MAX_PRIVATE_PAYLOAD {
        return Err(invalid(
            "payload",
            format!("{} bytes exceeds {MAX_PRIVATE_PAYLOAD}", bytes.len()),
        ));
    }
    let payload =
        proto::PrivatePayload::decode(bytes).map_err(|e| MessageError::Malformed(e.to_string()))?;
    validate_payload(&payload)?;
    Ok(payload)
}

fn validate_payload(payload: &proto::PrivatePayload) -> Result<(), MessageError> {
    let wire = |e: crate::wire::WireError| match e {
        crate::wire::WireError::InvalidField { field, reason } => {
            MessageError::InvalidField { field, reason }
        }
        other => MessageError::Malformed(other.to_string()),
    };
    match payload.body.as_ref().ok_or(MessageError::UnknownKind)? {
        PayloadBody::Message(m) => {
            if m.message_id.len() != 32 {
                return Err(invalid("message.message_id", "must be 32 bytes"));
            }
            if m.salt.len() != 16 {
                return Err(invalid("message.salt", "must be 16 bytes"));
            }
            if name_len(&m.content_type) > MAX_NAME_LEN {
                return Err(invalid(
                    "message.content_type",
                    format!("at most {MAX_NAME_LEN} characters"),
                ));
            }
            Ok(())
        }
        PayloadBody::Ack(a) => {
            if a.message_ids.len() > MAX_IDS || a.message_ids.iter().any(|id| id.len() != 32) {
                return Err(invalid(
                    "ack.message_ids",
                    format!("at most {MAX_IDS} ids of 32 bytes"),
                ));
            }
            Ok(())
        }
        PayloadBody::Query(q) => crate::wire::query(q).map_err(wire),
        PayloadBody::Response(r) => crate::wire::query_response(r).map_err(wire),
    }
}

/// A broadcast whose signature and fields were checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedBroadcast {
    /// BLAKE3 id of the signed body.
    pub id: MessageId,
    /// The author.
    pub author: NodeId,
    /// Topic.
    pub topic: String,
    /// Content type.
    pub content_type: String,
    /// Content.
    pub content: Bytes,
    /// Author's per-topic sequence.
    pub sequence: u64,
    /// Author's clock, Unix ms.
    pub created_at_ms: u64,
}

/// Id of a broadcast: BLAKE3 over the exact signed body bytes.
pub fn broadcast_id(body: &[u8]) -> MessageId {
    MessageId(derive(labels::BROADCAST_ID, &[body]))
}

/// Signs a broadcast as `author`.
pub fn sign_broadcast(
    author: &Identity,
    topic: &str,
    content_type: &str,
    content: Bytes,
    sequence: u64,
    created_at_ms: u64,
) -> Result<(MessageId, proto::SignedBroadcast), MessageError> {
    check_broadcast_fields(topic, content_type, content.len())?;
    let body = proto::BroadcastBody {
        author: Bytes::copy_from_slice(author.node_id().as_bytes()),
        topic: topic.to_owned(),
        content_type: content_type.to_owned(),
        content,
        sequence,
        created_at_ms,
    }
    .encode_to_vec();
    let signature = author.sign(labels::SIG_BROADCAST, &body);
    let id = broadcast_id(&body);
    Ok((
        id,
        proto::SignedBroadcast {
            body: body.into(),
            signature: Bytes::copy_from_slice(&signature),
        },
    ))
}

fn check_broadcast_fields(
    topic: &str,
    content_type: &str,
    content_len: usize,
) -> Result<(), MessageError> {
    if topic.is_empty() || name_len(topic) > MAX_NAME_LEN {
        return Err(invalid(
            "topic",
            format!("must be 1..={MAX_NAME_LEN} characters"),
        ));
    }
    if name_len(content_type) > MAX_NAME_LEN {
        return Err(invalid(
            "content_type",
            format!("at most {MAX_NAME_LEN} characters"),
        ));
    }
    if content_len > MAX_BROADCAST_CONTENT {
        return Err(invalid(
            "content",
            format!("{content_len} bytes exceeds {MAX_BROADCAST_CONTENT}"),
        ));
    }
    Ok(())
}

/// Verifies a broadcast's signature and fields.
pub fn verify_broadcast(
    signed: &proto::SignedBroadcast,
) -> Result<VerifiedBroadcast, MessageError> {
    if signed.body.len() > MAX_BROADCAST_BODY {
        return Err(invalid(
            "body",
            format!("{} bytes exceeds {MAX_BROADCAST_BODY}", signed.body.len()),
        ));
    }
    let body = proto::BroadcastBody::decode(signed.body.clone())
        .map_err(|e| MessageError::Malformed(e.to_string()))?;
    let author = NodeId::from_slice(&body.author).map_err(|e| invalid("author", e.to_string()))?;
    check_broadcast_fields(&body.topic, &body.content_type, body.content.len())?;
    author
        .verify(labels::SIG_BROADCAST, &signed.body, &signed.signature)
        .map_err(|_| MessageError::BadSignature(author))?;
    Ok(VerifiedBroadcast {
        id: broadcast_id(&signed.body),
        author,
        topic: body.topic,
        content_type: body.content_type,
        content: body.content,
        sequence: body.sequence,
        created_at_ms: body.created_at_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_are_limited_in_characters_not_bytes() {
        let author = Identity::generate();
        let sign = |topic: &str, content_type: &str| {
            sign_broadcast(&author, topic, content_type, Bytes::new(), 1, 0)
        };
        // 128 four-byte characters: 512 bytes, within the limit; one more is refused.
        let wide = "\u{1F4E1}".repeat(128);
        let (_, signed) = sign(&wide, &"\u{e9}".repeat(128)).unwrap();
        let verified = verify_broadcast(&signed).unwrap();
        assert_eq!(verified.topic, wide);
        assert!(sign(&format!("{wide}x"), "text/plain").is_err());
        assert!(sign("news", &"\u{e9}".repeat(129)).is_err());
        assert!(sign("", "text/plain").is_err());
    }

    #[test]
    fn private_message_ids_verify_and_bind_the_parties() {
        let (a, b, c) = (
            Identity::generate(),
            Identity::generate(),
            Identity::generate(),
        );
        let (id, msg) = new_private_message(
            &a.node_id(),
            &b.node_id(),
            "text/plain",
            Bytes::from_static(b"hi"),
            5,
            true,
        );
        assert_eq!(
            verify_private_message(&msg, &a.node_id(), &b.node_id()),
            Ok(id)
        );
        assert_eq!(
            verify_private_message(&msg, &c.node_id(), &b.node_id()),
            Err(MessageError::IdMismatch)
        );
        let mut changed = msg.clone();
        changed.content = Bytes::from_static(b"ho");
        assert_eq!(
            verify_private_message(&changed, &a.node_id(), &b.node_id()),
            Err(MessageError::IdMismatch)
        );
        let (id2, _) = new_private_message(
            &a.node_id(),
            &b.node_id(),
            "text/plain",
            Bytes::from_static(b"hi"),
            5,
            true,
        );
        assert_ne!(id, id2, "salt makes ids unique");
    }

    #[test]
    fn broadcasts_verify_and_reject_forgery() {
        let a = Identity::generate();
        let (id, signed) =
            sign_broadcast(&a, "news", "text/plain", Bytes::from_static(b"x"), 1, 2).unwrap();
        let v = verify_broadcast(&signed).unwrap();
        assert_eq!(v.id, id);
        assert_eq!(v.author, a.node_id());
        assert_eq!(v.topic, "news");
        let mut forged = signed.clone();
        let mut body = forged.body.to_vec();
        *body.last_mut().unwrap() ^= 1;
        forged.body = body.into();
        assert!(verify_broadcast(&forged).is_err());
        assert!(sign_broadcast(&a, "", "t", Bytes::new(), 1, 2).is_err());
        assert!(
            sign_broadcast(
                &a,
                "t",
                "t",
                Bytes::from(vec![0; MAX_BROADCAST_CONTENT + 1]),
                1,
                2
            )
            .is_err()
        );
    }

    #[test]
    fn payload_codec_rejects_bad_fields() {
        let payload = proto::PrivatePayload {
            body: Some(PayloadBody::Ack(proto::Ack {
                message_ids: vec![Bytes::from_static(&[1; 3])],
            })),
        };
        assert!(encode_payload(&payload).is_err());
        assert!(matches!(
            decode_payload(&payload.encode_to_vec()),
            Err(MessageError::InvalidField { .. })
        ));
        assert_eq!(decode_payload(&[]), Err(MessageError::UnknownKind));
        assert!(matches!(
            decode_payload(&[0xff]),
            Err(MessageError::Malformed(_))
        ));
    }

    proptest! {
        #[test]
        fn payload_round_trip(content in proptest::collection::vec(any::<u8>(), 0..4096), ct in "[a-z/]{0,40}", ack in any::<bool>()) {
            let a = NodeId::from_bytes(Identity::generate().node_id().as_bytes()).unwrap();
            let (_, m) = new_private_message(&a, &a, &ct, content.into(), 9, ack);
            let p = proto::PrivatePayload { body: Some(PayloadBody::Message(m)) };
            let bytes = encode_payload(&p).unwrap();
            prop_assert_eq!(decode_payload(&bytes).unwrap(), p);
        }

        #[test]
        fn payload_decoder_never_panics(data in proptest::collection::vec(any::<u8>(), 0..1024)) {
            let _ = decode_payload(&data);
        }
    }
}
