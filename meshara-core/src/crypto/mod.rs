//! End-to-end cryptography: sealed first-contact messages, the session handshake and session
//! transport, padding and the replay window. Everything here is sans-IO: callers pass in time
//! and randomness, nothing touches a socket or a clock.

pub mod kdf;
pub mod onion;
pub mod padding;
pub(crate) mod replay;
pub mod seal;
pub mod session;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};
use x25519_dalek::{PublicKey as X25519Public, StaticSecret};
use zeroize::Zeroizing;

use crate::record::RecordError;

/// Length of the Poly1305 tag appended to every ciphertext.
pub const TAG_LEN: usize = 16;

/// Why an encryption, decryption or handshake step failed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CryptoError {
    /// A Diffie-Hellman result was all zeros: the peer sent a low-order public key.
    #[error("peer public key is of low order (Diffie-Hellman result is zero)")]
    LowOrderKey,
    /// The ciphertext did not authenticate: not addressed to us, corrupted, or forged.
    #[error("authentication failed: the ciphertext is corrupted, forged, or not for this key")]
    DecryptFailed,
    /// The decrypted plaintext does not end in valid padding.
    #[error("decrypted payload has invalid padding")]
    BadPadding,
    /// A field has the wrong length or is out of range.
    #[error("field `{field}` is invalid: {reason}")]
    InvalidField {
        /// Field name as in the .proto file.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The payload exceeds [`MAX_PRIVATE_PAYLOAD`].
    #[error("payload is {len} bytes, more than the {max} allowed")]
    PayloadTooLarge {
        /// Payload size.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// A node record involved (the sender's inside a message, or our own) is not acceptable.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// A session message counter was already received.
    #[error("replayed message (counter {0} already received)")]
    Replay(u64),
    /// A session message counter is older than the replay window.
    #[error("message counter {0} is older than the replay window")]
    TooOld(u64),
    /// A session message names a session index this session does not own.
    #[error("message is for session {received:#018x}, not {expected:#018x}")]
    UnknownSession {
        /// Index this session receives on.
        expected: u64,
        /// Index in the message.
        received: u64,
    },
    /// A session message jumps too many key epochs ahead to be genuine.
    #[error("message counter {0} is too far ahead of the session")]
    TooFarAhead(u64),
    /// The session is past its lifetime and must be replaced by a new handshake.
    #[error("session expired; a new handshake is needed")]
    SessionExpired,
    /// The session sent its maximum number of messages.
    #[error("session exhausted its message counter; a new handshake is needed")]
    SessionExhausted,
    /// A handshake timestamp is not newer than the last one accepted from that initiator.
    #[error("stale or replayed handshake from {node} (timestamp {timestamp} <= {last})")]
    StaleHandshake {
        /// The initiator.
        node: crate::NodeId,
        /// Timestamp received, Unix ms.
        timestamp: u64,
        /// Newest timestamp accepted before, Unix ms.
        last: u64,
    },
    /// A handshake response does not answer our initiation.
    #[error("handshake response answers session {received:#018x}, not ours {expected:#018x}")]
    UnexpectedResponse {
        /// Our initiator index.
        expected: u64,
        /// Index echoed by the response.
        received: u64,
    },
    /// The decrypted payload is not the protobuf message it should be.
    #[error("decrypted payload is malformed: {0}")]
    MalformedPayload(String),
}

/// Largest private payload (before padding) that may be sealed or sent in a session.
pub const MAX_PRIVATE_PAYLOAD: usize = 512 * 1024;
/// Largest ciphertext accepted for a private payload (the biggest padded payload plus tag).
pub const MAX_PRIVATE_CIPHERTEXT: usize = MAX_PRIVATE_PAYLOAD + 65536 + TAG_LEN;

/// X25519 with the all-zero (non-contributory) result refused.
pub(crate) fn dh(
    secret: &StaticSecret,
    public: &X25519Public,
) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
    let shared = secret.diffie_hellman(public);
    if !shared.was_contributory() {
        return Err(CryptoError::LowOrderKey);
    }
    Ok(Zeroizing::new(shared.to_bytes()))
}

/// The 96-bit ChaCha20-Poly1305 nonce for a counter: four zero bytes, then the counter as
/// 64-bit little-endian.
pub(crate) fn counter_nonce(counter: u64) -> Nonce {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::from(nonce)
}

/// Encrypts `buf` in place and appends the tag.
pub(crate) fn aead_seal(key: &[u8; 32], counter: u64, ad: &[u8], buf: &mut Vec<u8>) {
    let cipher = ChaCha20Poly1305::new(Key::from_slice(key));
    // Encryption only fails for plaintexts over 256 GiB.
    #[allow(clippy::expect_used)]
    let tag = cipher
        .encrypt_in_place_detached(&counter_nonce(counter), ad, buf)
        .expect("plaintext within ChaCha20-Poly1305 limits");
    buf.extend_from_slice(&tag);
}

/// Decrypts `ciphertext || tag` into a fresh buffer.
pub(crate) fn aead_open(
    key: &[u8; 32],
    counter: u64,
    ad: &[u8],
    ciphertext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    if ciphertext.len() < TAG_LEN {
        return Err(CryptoError::DecryptFailed);
    }
    let (body, tag) = ciphertext.split_at(ciphertext.len() - TAG_LEN);
    let mut buf = body.to_vec();
    let cipher = ChaCha20Poly1305::new(Key::from_slice(key));
    cipher
        .decrypt_in_place_detached(&counter_nonce(counter), ad, &mut buf, Tag::from_slice(tag))
        .map_err(|_| CryptoError::DecryptFailed)?;
    Ok(buf)
}

pub(crate) fn public_key(field: &'static str, bytes: &[u8]) -> Result<X25519Public, CryptoError> {
    let array: [u8; 32] = bytes.try_into().map_err(|_| CryptoError::InvalidField {
        field,
        reason: format!("must be 32 bytes, is {}", bytes.len()),
    })?;
    Ok(X25519Public::from(array))
}

pub(crate) fn check_ciphertext_len(
    field: &'static str,
    len: usize,
    max: usize,
) -> Result<(), CryptoError> {
    if len < TAG_LEN || len > max {
        return Err(CryptoError::InvalidField {
            field,
            reason: format!("length {len} is outside {TAG_LEN}..={max}"),
        });
    }
    Ok(())
}
