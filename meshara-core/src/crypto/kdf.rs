//! Key derivation: BLAKE3 in `derive_key` mode, with one context string per purpose.
//!
//! `derive(label, [p1, p2, …]) = BLAKE3-derive_key(label, le64(len p1) || p1 || le64(len p2) || p2 …)`.
//! Length prefixes make the encoding of the input list injective.

/// Every KDF context string and signature context in the protocol, in one place.
pub mod labels {
    /// Fingerprint of a NodeId.
    pub const FINGERPRINT: &str = "meshara v1 fingerprint";
    /// Transcript hash chaining for sealed messages.
    pub const SEAL_TRANSCRIPT: &str = "meshara v1 seal transcript";
    /// Key encrypting the sender's record in a sealed message.
    pub const SEAL_SENDER_KEY: &str = "meshara v1 seal sender key";
    /// Key encrypting the payload of a sealed message.
    pub const SEAL_PAYLOAD_KEY: &str = "meshara v1 seal payload key";
    /// Transcript hash chaining for the session handshake.
    pub const HANDSHAKE_TRANSCRIPT: &str = "meshara v1 handshake transcript";
    /// Key encrypting the initiator's record in HandshakeInit.
    pub const HANDSHAKE_SENDER_KEY: &str = "meshara v1 handshake sender key";
    /// Key encrypting the HandshakeInit payload.
    pub const HANDSHAKE_INIT_KEY: &str = "meshara v1 handshake init payload key";
    /// The handshake chaining key after all four DH results.
    pub const HANDSHAKE_CHAINING_KEY: &str = "meshara v1 handshake chaining key";
    /// Key encrypting the HandshakeResponse confirmation.
    pub const HANDSHAKE_RESPONSE_KEY: &str = "meshara v1 handshake response key";
    /// Session key, initiator to responder.
    pub const SESSION_I2R: &str = "meshara v1 session initiator to responder";
    /// Session key, responder to initiator.
    pub const SESSION_R2I: &str = "meshara v1 session responder to initiator";
    /// Ratchet from one session epoch key to the next.
    pub const SESSION_REKEY: &str = "meshara v1 session rekey";
    /// Id of a private message.
    pub const PRIVATE_MESSAGE_ID: &str = "meshara v1 private message id";
    /// Id of a broadcast.
    pub const BROADCAST_ID: &str = "meshara v1 broadcast id";
    /// Id of an encoded envelope, for hop-level deduplication and custody acks.
    pub const ENVELOPE_ID: &str = "meshara v1 envelope id";
    /// Keystore encryption key from the Argon2id output.
    pub const KEYSTORE_KEY: &str = "meshara v1 keystore encryption key";
    /// Staged-rollout bucket of a node for a release.
    pub const UPDATE_ROLLOUT: &str = "meshara v1 update rollout";
    /// Keystore passphrase verifier from the Argon2id output.
    pub const KEYSTORE_VERIFIER: &str = "meshara v1 keystore passphrase verifier";
    /// Onion routing: keystream decrypting a hop's header.
    pub const ONION_HEADER_KEY: &str = "meshara v1 onion header key";
    /// Onion routing: key of a hop's header MAC.
    pub const ONION_MAC_KEY: &str = "meshara v1 onion mac key";
    /// Onion routing: key of a hop's payload layer.
    pub const ONION_PAYLOAD_KEY: &str = "meshara v1 onion payload key";
    /// Onion routing: blinding factor re-randomising the ephemeral key after a hop.
    pub const ONION_BLIND: &str = "meshara v1 onion blinding factor";
    /// Onion routing: a hop's replay tag for a packet.
    pub const ONION_REPLAY_TAG: &str = "meshara v1 onion replay tag";
    /// The X25519 secret of an identity given only as an Ed25519 key (a PEM key file).
    pub const X25519_FROM_ED25519_SEED: &str = "meshara v1 x25519 secret from ed25519 seed";

    /// Signature context for node records.
    pub const SIG_NODE_RECORD: &[u8] = b"meshara/v1/node-record";
    /// Signature context for broadcasts.
    pub const SIG_BROADCAST: &[u8] = b"meshara/v1/broadcast";
    /// Signature context for update metadata.
    pub const SIG_UPDATE_METADATA: &[u8] = b"meshara/v1/update-metadata";
}

/// Derives 32 bytes from a list of inputs under a context label.
pub fn derive(label: &str, parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_derive_key(label);
    for part in parts {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    *hasher.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_boundaries_matter() {
        assert_ne!(derive("l", &[b"ab", b"c"]), derive("l", &[b"a", b"bc"]));
        assert_ne!(derive("l", &[b"abc"]), derive("l", &[b"abc", b""]));
        assert_ne!(derive("l1", &[b"x"]), derive("l2", &[b"x"]));
    }
}
