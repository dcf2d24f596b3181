//! Who a node is: its Ed25519 identity key, the [`NodeId`] derived from it, a human
//! [`Fingerprint`], and the X25519 static key used for end-to-end encryption.

use std::fmt;
use std::str::FromStr;

use data_encoding::{BASE32_NOPAD, Encoding, HEXLOWER};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand_core::{CryptoRng, OsRng, RngCore};
use x25519_dalek::{PublicKey as X25519Public, StaticSecret};
use zeroize::Zeroizing;

use crate::crypto::kdf::{self, labels};

/// Errors about identities and their text forms.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum IdentityError {
    /// The text is not a NodeId: 52 characters of lowercase RFC 4648 base32 (or 64 hex digits).
    #[error("not a NodeId: expected 52 base32 characters (or 64 hex digits), got {0:?}")]
    InvalidText(String),
    /// The 32 bytes are not a valid Ed25519 public key.
    #[error("the 32 bytes are not a valid Ed25519 public key")]
    InvalidKey,
    /// A byte field had the wrong length.
    #[error("expected {expected} bytes, got {actual}")]
    WrongLength {
        /// Required length.
        expected: usize,
        /// Length found.
        actual: usize,
    },
    /// [`Identity::sign_http_signature_base`] was given something that is not an RFC 9421
    /// signature base.
    #[error("not an HTTP message signature base (RFC 9421 §2.5)")]
    NotASignatureBase,
}

/// Lowercase RFC 4648 base32 without padding: the text form of ids and fingerprints.
fn base32_lower() -> Encoding {
    let mut spec = BASE32_NOPAD.specification();
    spec.symbols = "abcdefghijklmnopqrstuvwxyz234567".to_owned();
    // Accept upper case on input so ids survive being typed or shouted.
    spec.translate.from = "ABCDEFGHIJKLMNOPQRSTUVWXYZ".to_owned();
    spec.translate.to = "abcdefghijklmnopqrstuvwxyz".to_owned();
    #[allow(clippy::expect_used)]
    spec.encoding()
        .expect("static base32 specification is valid")
}

/// The identity of a node: its 32-byte Ed25519 public key.
///
/// Text form: 52 characters of lowercase base32 (RFC 4648 alphabet, no padding), for example
/// `mshr…`; [`FromStr`] also accepts upper case and 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId([u8; 32]);

impl NodeId {
    /// Length in bytes.
    pub const LEN: usize = 32;

    /// Wraps 32 bytes after checking they are a valid Ed25519 public key.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, IdentityError> {
        VerifyingKey::from_bytes(bytes).map_err(|_| IdentityError::InvalidKey)?;
        Ok(Self(*bytes))
    }

    /// Like [`NodeId::from_bytes`] for a slice of any length.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, IdentityError> {
        let array: &[u8; 32] = bytes.try_into().map_err(|_| IdentityError::WrongLength {
            expected: Self::LEN,
            actual: bytes.len(),
        })?;
        Self::from_bytes(array)
    }

    /// The raw public key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The Ed25519 verifying key.
    pub fn verifying_key(&self) -> VerifyingKey {
        // Checked in every constructor.
        #[allow(clippy::expect_used)]
        VerifyingKey::from_bytes(&self.0).expect("NodeId holds a valid key")
    }

    /// The short human fingerprint of this id, for comparing out of band.
    pub fn fingerprint(&self) -> Fingerprint {
        let hash = kdf::derive(labels::FINGERPRINT, &[&self.0]);
        let mut out = [0u8; Fingerprint::LEN];
        out.copy_from_slice(&hash[..Fingerprint::LEN]);
        Fingerprint(out)
    }

    /// Verifies an Ed25519 signature made by this node over `context || 0x00 || message`
    /// (strict verification: no small-order keys, no malleable signatures).
    pub(crate) fn verify(
        &self,
        context: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), SignatureError> {
        let signature: [u8; 64] = signature.try_into().map_err(|_| SignatureError)?;
        let signature = Signature::from_bytes(&signature);
        let input = signing_input(context, message);
        self.verifying_key()
            .verify_strict(&input, &signature)
            .map_err(|_| SignatureError)
    }
}

/// A signature did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SignatureError;

/// The bytes an Ed25519 signature covers: a context label, a zero byte, the message.
pub(crate) fn signing_input(context: &[u8], message: &[u8]) -> Vec<u8> {
    let mut input = Vec::with_capacity(context.len() + 1 + message.len());
    input.extend_from_slice(context);
    input.push(0);
    input.extend_from_slice(message);
    input
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&base32_lower().encode(&self.0))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

impl FromStr for NodeId {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let decoded = match s.len() {
            52 => base32_lower().decode(s.as_bytes()).ok(),
            64 => HEXLOWER.decode(s.to_ascii_lowercase().as_bytes()).ok(),
            _ => None,
        };
        let bytes =
            decoded.ok_or_else(|| IdentityError::InvalidText(s.chars().take(80).collect()))?;
        Self::from_slice(&bytes)
    }
}

/// A short, human-comparable digest of a [`NodeId`]: 80 bits of BLAKE3, shown as four groups of
/// four base32 characters (`abcd-efgh-ijkl-mnop`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 10]);

impl Fingerprint {
    /// Length in bytes.
    pub const LEN: usize = 10;

    /// The raw fingerprint bytes.
    pub fn as_bytes(&self) -> &[u8; 10] {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = base32_lower().encode(&self.0);
        for (i, chunk) in text.as_bytes().chunks(4).enumerate() {
            if i > 0 {
                f.write_str("-")?;
            }
            // base32 output is ASCII.
            f.write_str(std::str::from_utf8(chunk).map_err(|_| fmt::Error)?)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// A node's secret keys: the Ed25519 identity key and the X25519 static encryption key.
///
/// Secrets are zeroized on drop and never printed: `Debug` shows only the [`NodeId`].
/// Persist it with [`crate::Keystore`]; move it between machines with
/// [`Identity::export_bundle`](crate::Identity::export_bundle).
#[derive(Clone)]
pub struct Identity {
    signing: SigningKey,
    x25519: StaticSecret,
    x25519_public: X25519Public,
    node_id: NodeId,
}

impl Identity {
    /// Generates a fresh identity from the operating system's CSPRNG.
    pub fn generate() -> Self {
        Self::generate_with_rng(&mut OsRng)
    }

    /// Generates a fresh identity from the given CSPRNG (deterministic tests and vectors).
    pub fn generate_with_rng<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let mut ed = Zeroizing::new([0u8; 32]);
        let mut x = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut ed[..]);
        rng.fill_bytes(&mut x[..]);
        Self::from_secret_bytes(&ed, &x)
    }

    /// Rebuilds an identity from its two 32-byte secrets (the Ed25519 seed and the X25519
    /// scalar), as stored by the keystore and listed in the test vectors.
    pub fn from_secret_bytes(ed25519_seed: &[u8; 32], x25519_secret: &[u8; 32]) -> Self {
        let signing = SigningKey::from_bytes(ed25519_seed);
        let x25519 = StaticSecret::from(*x25519_secret);
        let x25519_public = X25519Public::from(&x25519);
        let node_id = NodeId(signing.verifying_key().to_bytes());
        Self {
            signing,
            x25519,
            x25519_public,
            node_id,
        }
    }

    /// Rebuilds an identity from its Ed25519 seed alone (an Ed25519 key made elsewhere, such as
    /// a PEM file from `openssl genpkey -algorithm ed25519` or a Helm chart): the X25519
    /// secret is derived from the seed with BLAKE3 under the label
    /// `"meshara v1 x25519 secret from ed25519 seed"`, so the same key file always gives the
    /// same identity.
    pub fn from_ed25519_seed(ed25519_seed: &[u8; 32]) -> Self {
        let x = Zeroizing::new(kdf::derive(
            labels::X25519_FROM_ED25519_SEED,
            &[&ed25519_seed[..]],
        ));
        Self::from_secret_bytes(ed25519_seed, &x)
    }

    /// The node's public identity.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The human fingerprint of [`Identity::node_id`].
    pub fn fingerprint(&self) -> Fingerprint {
        self.node_id.fingerprint()
    }

    /// The X25519 static public key that node records bind to this identity.
    pub fn x25519_public(&self) -> &X25519Public {
        &self.x25519_public
    }

    pub(crate) fn x25519_secret(&self) -> &StaticSecret {
        &self.x25519
    }

    /// The secret bytes, for the keystore: (Ed25519 seed, X25519 scalar).
    pub(crate) fn secret_bytes(&self) -> (Zeroizing<[u8; 32]>, Zeroizing<[u8; 32]>) {
        (
            Zeroizing::new(self.signing.to_bytes()),
            Zeroizing::new(self.x25519.to_bytes()),
        )
    }

    /// Signs `context || 0x00 || message` with the identity key.
    pub(crate) fn sign(&self, context: &[u8], message: &[u8]) -> [u8; 64] {
        self.signing
            .sign(&signing_input(context, message))
            .to_bytes()
    }
}

impl Identity {
    /// Signs a TLS 1.3 CertificateVerify input with the identity key, unprefixed.
    ///
    /// Safe to share the key with [`Identity::sign`]: TLS 1.3 inputs start with 64 bytes of
    /// 0x20 (RFC 8446 §4.4.3), while every Meshara signing context starts with `meshara/`, so no
    /// message is valid in both protocols.
    #[cfg(feature = "net")]
    pub(crate) fn sign_tls(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }
}

impl Identity {
    /// Signs an HTTP Message Signatures (RFC 9421) signature base with the identity key
    /// (algorithm `ed25519`), for authenticating HTTP requests as this node.
    ///
    /// Refuses anything that is not shaped like a signature base: it must start with a quoted
    /// component identifier (`"`) and its last line must be the `"@signature-params": ` line.
    /// That keeps this raw signature apart from every other use of the key: Meshara's own
    /// signatures are over `meshara/…` contexts and TLS's over 64 spaces.
    pub fn sign_http_signature_base(&self, base: &[u8]) -> Result<[u8; 64], IdentityError> {
        let last_line = base.rsplit(|b| *b == b'\n').next().unwrap_or_default();
        if !base.starts_with(b"\"") || !last_line.starts_with(b"\"@signature-params\": ") {
            return Err(IdentityError::NotASignatureBase);
        }
        Ok(self.signing.sign(base).to_bytes())
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("node_id", &self.node_id)
            .field("secrets", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_text_round_trips_in_base32_and_hex() {
        let id = Identity::generate().node_id();
        let text = id.to_string();
        assert_eq!(text.len(), 52);
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))
        );
        assert_eq!(text.parse::<NodeId>().unwrap(), id);
        assert_eq!(text.to_uppercase().parse::<NodeId>().unwrap(), id);
        assert_eq!(
            HEXLOWER.encode(id.as_bytes()).parse::<NodeId>().unwrap(),
            id
        );
    }

    #[test]
    fn node_id_text_rejects_garbage() {
        for bad in ["", "abc", &"a".repeat(51), &"1".repeat(52), &"z".repeat(64)] {
            assert!(
                matches!(bad.parse::<NodeId>(), Err(IdentityError::InvalidText(_))),
                "{bad}"
            );
        }
        assert_eq!(
            NodeId::from_slice(&[1u8; 31]),
            Err(IdentityError::WrongLength {
                expected: 32,
                actual: 31
            })
        );
    }

    #[test]
    fn fingerprint_is_four_groups_and_distinguishes_ids() {
        let a = Identity::generate();
        let b = Identity::generate();
        let fa = a.fingerprint().to_string();
        assert_eq!(fa.len(), 19);
        assert_eq!(fa.split('-').count(), 4);
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint(), a.node_id().fingerprint());
    }

    #[test]
    fn debug_redacts_secrets() {
        let identity = Identity::generate();
        let (seed, _) = identity.secret_bytes();
        let shown = format!("{identity:?}");
        assert!(shown.contains("<redacted>"));
        assert!(!shown.contains(&HEXLOWER.encode(&seed[..])));
    }

    #[test]
    fn signatures_are_bound_to_their_context() {
        let identity = Identity::generate();
        let sig = identity.sign(b"ctx-a", b"hello");
        let id = identity.node_id();
        assert!(id.verify(b"ctx-a", b"hello", &sig).is_ok());
        assert!(id.verify(b"ctx-b", b"hello", &sig).is_err());
        assert!(id.verify(b"ctx-a", b"hellO", &sig).is_err());
        assert!(id.verify(b"ctx-a", b"hello", &sig[..63]).is_err());
    }

    #[test]
    fn http_signature_bases_only() {
        let id = Identity::generate();
        let base = b"\"@method\": GET\n\"@signature-params\": (\"@method\");created=1";
        let sig = id.sign_http_signature_base(base).unwrap();
        let sig = ed25519_dalek::Signature::from_bytes(&sig);
        assert!(
            id.node_id()
                .verifying_key()
                .verify_strict(base, &sig)
                .is_ok()
        );
        for not_a_base in [&b"meshara/v1/broadcast\0x"[..], b"", b"\"@method\": GET"] {
            assert_eq!(
                id.sign_http_signature_base(not_a_base),
                Err(IdentityError::NotASignatureBase)
            );
        }
    }
}
