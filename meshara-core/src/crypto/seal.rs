//! Sealed messages: first contact with nothing but the recipient's node record
//! (docs/protocol.md §6). One-way, like Noise's `X` pattern: `e, es, s, ss`.
//!
//! The sender's signed record travels encrypted under the `es` key, so relays never learn who
//! wrote; the payload key also mixes in `ss`, which proves the sender to the recipient. Because
//! the recipient could have computed `ss` itself, that proof convinces nobody else.

use bytes::Bytes;
use rand_core::{CryptoRng, OsRng, RngCore};
use x25519_dalek::{PublicKey as X25519Public, StaticSecret};
use zeroize::Zeroizing;

use super::kdf::{derive, labels};
use super::padding::{Padding, pad_into, unpad};
use super::{
    CryptoError, MAX_PRIVATE_CIPHERTEXT, MAX_PRIVATE_PAYLOAD, TAG_LEN, aead_open, aead_seal,
    check_ciphertext_len, dh, public_key,
};
use crate::identity::Identity;
use crate::proto;
use crate::record::{MAX_RECORD_LEN, NodeRecord};

/// Largest `sender_ciphertext` accepted: an encoded SignedNodeRecord plus the tag.
pub(crate) const MAX_SENDER_CIPHERTEXT: usize = MAX_RECORD_LEN + 128 + TAG_LEN;

/// Encrypts `payload` for `recipient`, proving the sender (`sender` with its own current
/// `sender_record`) to the recipient only.
pub fn seal(
    sender: &Identity,
    sender_record: &NodeRecord,
    recipient: &NodeRecord,
    payload: &[u8],
    padding: Padding,
) -> Result<proto::SealedMessage, CryptoError> {
    seal_with_rng(
        &mut OsRng,
        sender,
        sender_record,
        recipient,
        payload,
        padding,
    )
}

/// [`seal`] with a caller-supplied CSPRNG for the ephemeral key.
pub fn seal_with_rng<R: RngCore + CryptoRng>(
    rng: &mut R,
    sender: &Identity,
    sender_record: &NodeRecord,
    recipient: &NodeRecord,
    payload: &[u8],
    padding: Padding,
) -> Result<proto::SealedMessage, CryptoError> {
    let mut secret = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(&mut secret[..]);
    seal_with_ephemeral(
        &StaticSecret::from(*secret),
        sender,
        sender_record,
        recipient,
        payload,
        padding,
    )
}

pub(crate) fn seal_with_ephemeral(
    ephemeral: &StaticSecret,
    sender: &Identity,
    sender_record: &NodeRecord,
    recipient: &NodeRecord,
    payload: &[u8],
    padding: Padding,
) -> Result<proto::SealedMessage, CryptoError> {
    sender_record.check_belongs_to(sender)?;
    if payload.len() > MAX_PRIVATE_PAYLOAD {
        return Err(CryptoError::PayloadTooLarge {
            len: payload.len(),
            max: MAX_PRIVATE_PAYLOAD,
        });
    }
    let ephemeral_public = X25519Public::from(ephemeral);
    let es = dh(ephemeral, recipient.x25519_key())?;
    let ss = dh(sender.x25519_secret(), recipient.x25519_key())?;
    let keys = SealKeys::derive(recipient, &ephemeral_public, &es);

    let mut sender_ct = sender_record.encode();
    aead_seal(&keys.sender_key, 0, &keys.h0, &mut sender_ct);

    let (h1, payload_key) = keys.payload_key(&sender_ct, &es, &ss);
    let mut payload_ct = Vec::with_capacity(padding.padded_len(payload.len()) + TAG_LEN);
    pad_into(payload, padding, &mut payload_ct);
    aead_seal(&payload_key, 0, &h1, &mut payload_ct);

    Ok(proto::SealedMessage {
        ephemeral: Bytes::copy_from_slice(ephemeral_public.as_bytes()),
        sender_ciphertext: sender_ct.into(),
        payload_ciphertext: payload_ct.into(),
    })
}

/// A sealed message after [`open`]: who sent it, proven, and the unpadded payload.
#[derive(Debug, Clone)]
pub struct Opened {
    /// The sender's verified node record (use it to reply).
    pub sender: NodeRecord,
    /// The decrypted payload.
    pub payload: Vec<u8>,
}

/// Decrypts a sealed message addressed to `recipient` and verifies its sender's record at
/// `now` (Unix seconds).
pub fn open(
    recipient: &Identity,
    message: &proto::SealedMessage,
    now: u64,
) -> Result<Opened, CryptoError> {
    let ephemeral = public_key("ephemeral", &message.ephemeral)?;
    check_ciphertext_len(
        "sender_ciphertext",
        message.sender_ciphertext.len(),
        MAX_SENDER_CIPHERTEXT,
    )?;
    check_ciphertext_len(
        "payload_ciphertext",
        message.payload_ciphertext.len(),
        MAX_PRIVATE_CIPHERTEXT,
    )?;
    let es = dh(recipient.x25519_secret(), &ephemeral)?;
    let keys = SealKeys::derive_for_recipient(recipient, &ephemeral, &es);
    let sender_bytes = aead_open(&keys.sender_key, 0, &keys.h0, &message.sender_ciphertext)?;
    let sender = NodeRecord::decode(&sender_bytes, now)?;
    let ss = dh(recipient.x25519_secret(), sender.x25519_key())?;
    let (h1, payload_key) = keys.payload_key(&message.sender_ciphertext, &es, &ss);
    let mut payload = aead_open(&payload_key, 0, &h1, &message.payload_ciphertext)?;
    unpad(&mut payload)?;
    Ok(Opened { sender, payload })
}

struct SealKeys {
    h0: [u8; 32],
    sender_key: Zeroizing<[u8; 32]>,
}

impl SealKeys {
    fn derive(recipient: &NodeRecord, ephemeral: &X25519Public, es: &[u8; 32]) -> Self {
        Self::from_parts(
            recipient.node_id().as_bytes(),
            recipient.x25519_key().as_bytes(),
            ephemeral,
            es,
        )
    }

    fn derive_for_recipient(recipient: &Identity, ephemeral: &X25519Public, es: &[u8; 32]) -> Self {
        Self::from_parts(
            recipient.node_id().as_bytes(),
            recipient.x25519_public().as_bytes(),
            ephemeral,
            es,
        )
    }

    fn from_parts(node_id: &[u8], x25519: &[u8], ephemeral: &X25519Public, es: &[u8; 32]) -> Self {
        let h0 = derive(
            labels::SEAL_TRANSCRIPT,
            &[node_id, x25519, ephemeral.as_bytes()],
        );
        let sender_key = Zeroizing::new(derive(labels::SEAL_SENDER_KEY, &[&h0, es]));
        Self { h0, sender_key }
    }

    fn payload_key(
        &self,
        sender_ct: &[u8],
        es: &[u8; 32],
        ss: &[u8; 32],
    ) -> ([u8; 32], Zeroizing<[u8; 32]>) {
        let h1 = derive(labels::SEAL_TRANSCRIPT, &[&self.h0, sender_ct]);
        let key = Zeroizing::new(derive(labels::SEAL_PAYLOAD_KEY, &[&h1, es, ss]));
        (h1, key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{NodeRecordBuilder, RecordError};

    const NOW: u64 = 1_800_000_000;

    fn node() -> (Identity, NodeRecord) {
        let id = Identity::generate();
        let record = NodeRecordBuilder::new(&id, 1).sign(NOW).unwrap();
        (id, record)
    }

    #[test]
    fn round_trip_proves_sender() {
        let (alice, alice_rec) = node();
        let (bob, bob_rec) = node();
        for padding in [Padding::None, Padding::Buckets] {
            let sealed = seal(&alice, &alice_rec, &bob_rec, b"hello bob", padding).unwrap();
            let opened = open(&bob, &sealed, NOW).unwrap();
            assert_eq!(opened.payload, b"hello bob");
            assert_eq!(opened.sender.node_id(), alice.node_id());
        }
        let sealed = seal(&alice, &alice_rec, &bob_rec, b"x", Padding::Buckets).unwrap();
        assert_eq!(sealed.payload_ciphertext.len(), 64 + TAG_LEN);
    }

    #[test]
    fn only_the_recipient_can_open() {
        let (alice, alice_rec) = node();
        let (_bob, bob_rec) = node();
        let (eve, _) = node();
        let sealed = seal(&alice, &alice_rec, &bob_rec, b"secret", Padding::None).unwrap();
        assert_eq!(
            open(&eve, &sealed, NOW).unwrap_err(),
            CryptoError::DecryptFailed
        );
    }

    #[test]
    fn tampering_anywhere_is_detected() {
        let (alice, alice_rec) = node();
        let (bob, bob_rec) = node();
        let sealed = seal(&alice, &alice_rec, &bob_rec, b"payload", Padding::None).unwrap();
        for field in 0..3 {
            let mut m = sealed.clone();
            let target = match field {
                0 => &mut m.ephemeral,
                1 => &mut m.sender_ciphertext,
                _ => &mut m.payload_ciphertext,
            };
            let mut bytes = target.to_vec();
            bytes[3] ^= 0x40;
            *target = bytes.into();
            assert!(open(&bob, &m, NOW).is_err(), "field {field}");
        }
    }

    #[test]
    fn sender_cannot_be_swapped() {
        // Mallory re-encrypts Alice's record but cannot produce the ss-derived payload key.
        let (alice, alice_rec) = node();
        let (mallory, mallory_rec) = node();
        let (bob, bob_rec) = node();
        let genuine = seal(&alice, &alice_rec, &bob_rec, b"a", Padding::None).unwrap();
        let forged = seal(&mallory, &mallory_rec, &bob_rec, b"m", Padding::None).unwrap();
        let mixed = proto::SealedMessage {
            payload_ciphertext: forged.payload_ciphertext.clone(),
            ..genuine.clone()
        };
        assert_eq!(
            open(&bob, &mixed, NOW).unwrap_err(),
            CryptoError::DecryptFailed
        );
        // Using someone else's record as our own is refused before anything is sent.
        assert!(matches!(
            seal(&mallory, &alice_rec, &bob_rec, b"m", Padding::None),
            Err(CryptoError::Record(RecordError::IdentityMismatch { .. }))
        ));
    }

    #[test]
    fn hostile_fields_get_clear_errors() {
        let (alice, alice_rec) = node();
        let (bob, bob_rec) = node();
        let sealed = seal(&alice, &alice_rec, &bob_rec, b"p", Padding::None).unwrap();
        let mut m = sealed.clone();
        m.ephemeral = Bytes::from_static(&[0; 31]);
        assert!(matches!(
            open(&bob, &m, NOW),
            Err(CryptoError::InvalidField {
                field: "ephemeral",
                ..
            })
        ));
        let mut m = sealed.clone();
        m.ephemeral = Bytes::from_static(&[0; 32]);
        assert_eq!(open(&bob, &m, NOW).unwrap_err(), CryptoError::LowOrderKey);
        let mut m = sealed.clone();
        m.payload_ciphertext = Bytes::from(vec![0; MAX_PRIVATE_CIPHERTEXT + 1]);
        assert!(matches!(
            open(&bob, &m, NOW),
            Err(CryptoError::InvalidField { .. })
        ));
        let mut m = sealed;
        m.sender_ciphertext = Bytes::new();
        assert!(matches!(
            open(&bob, &m, NOW),
            Err(CryptoError::InvalidField { .. })
        ));
        let big = vec![0u8; MAX_PRIVATE_PAYLOAD + 1];
        assert!(matches!(
            seal(&alice, &alice_rec, &bob_rec, &big, Padding::None),
            Err(CryptoError::PayloadTooLarge { .. })
        ));
    }

    #[test]
    fn expired_sender_record_is_refused() {
        let (alice, alice_rec) = node();
        let (bob, bob_rec) = node();
        let sealed = seal(&alice, &alice_rec, &bob_rec, b"p", Padding::None).unwrap();
        assert!(matches!(
            open(&bob, &sealed, alice_rec.expires_at()),
            Err(CryptoError::Record(RecordError::Expired { .. }))
        ));
    }
}
