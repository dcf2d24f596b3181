//! Threshold-signed update metadata: roots, releases, and the checks a node makes before it
//! trusts either (docs/protocol.md §11).
//!
//! Everything here is sans-IO: time is passed in as Unix seconds, and nothing touches the
//! network or the disk. A node holds a [`TrustState`] seeded from a root it ships with, rotates
//! it with [`TrustState::rotate_root`], checks releases with [`TrustState::verify_release`] and
//! content with [`ContentVerifier`], and records a release as installed with
//! [`TrustState::record_release`] only once it has been applied, so a refused release changes
//! nothing.
//!
//! The attacks of The Update Framework map to errors: forged or under-signed metadata
//! ([`UpdateError::BelowThreshold`], [`UpdateError::DuplicateSigner`]), compromised keys
//! ([`UpdateError::RevokedKey`], [`UpdateError::UnknownKey`]), rollback
//! ([`UpdateError::Rollback`]), freeze ([`UpdateError::Expired`]), mix-and-match (a release is
//! checked against the current root, and content against the hashes in its release) and
//! endless data ([`UpdateError::ContentTooLarge`]).

use std::collections::{BTreeSet, HashMap};

use bytes::Bytes;
use prost::Message;

use crate::crypto::kdf::labels;
use crate::identity::{Identity, NodeId};
use crate::proto;

/// Metadata format version this code reads and writes.
pub const METADATA_VERSION: u32 = 1;
/// Most authority keys in a root.
pub const MAX_KEYS: usize = 32;
/// Most revoked keys a root may list.
pub const MAX_REVOKED: usize = 256;
/// Longest key name, package, channel and semantic version, in bytes.
pub const MAX_NAME: usize = 64;
/// Largest chunk.
pub const MAX_CHUNK_SIZE: u32 = 512 * 1024;
/// Most chunks in a release.
pub const MAX_CHUNKS: usize = 16_384;
/// Most signatures on one piece of metadata.
pub const MAX_SIGNATURES: usize = 32;
/// Largest encoded metadata body.
pub const MAX_BODY: usize = 600 * 1024;

/// What an authority key may sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Role {
    /// New roots (key rotation).
    Root,
    /// Releases.
    Release,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Root => "root",
            Role::Release => "release",
        })
    }
}

/// Why metadata or content was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpdateError {
    /// The bytes are not valid metadata, or a field breaks its rule.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// Which metadata.
        what: &'static str,
        /// The rule broken.
        reason: String,
    },
    /// Fewer distinct valid signatures from keys with the role than its threshold.
    #[error("{role} metadata has {valid} valid signature(s) from {role} keys; {needed} needed")]
    BelowThreshold {
        /// The role whose threshold applies.
        role: Role,
        /// Distinct keys whose signatures verified and count.
        valid: usize,
        /// The threshold.
        needed: usize,
    },
    /// One key signed twice: it counts once, and metadata carrying duplicates is refused.
    #[error("key {0} signed more than once")]
    DuplicateSigner(NodeId),
    /// A signature by a key the root does not list (threshold not met without it).
    #[error("signature by unknown key {0}; {1} valid of {2} needed")]
    UnknownKey(NodeId, usize, usize),
    /// A signature by a revoked key (threshold not met without it).
    #[error("signature by revoked key {0}; {1} valid of {2} needed")]
    RevokedKey(NodeId, usize, usize),
    /// A signature that does not verify (threshold not met without it).
    #[error("signature by {0} does not verify; {1} valid of {2} needed")]
    BadSignature(NodeId, usize, usize),
    /// The sequence is not above the one already trusted.
    #[error("rollback refused: {what} sequence {offered} is not above the trusted {current}")]
    Rollback {
        /// Root or release.
        what: &'static str,
        /// The sequence already trusted.
        current: u64,
        /// The sequence offered.
        offered: u64,
    },
    /// The metadata (or the root it depends on) has expired.
    #[error("{what} metadata expired at {expires_at} (now {now})")]
    Expired {
        /// Which metadata.
        what: &'static str,
        /// Its expiry, Unix seconds.
        expires_at: u64,
        /// The time of the check.
        now: u64,
    },
    /// Content does not match its release: a chunk or the whole hash.
    #[error("content does not match its release: {0}")]
    ContentMismatch(String),
    /// More content than the release declares.
    #[error("content exceeds the declared {declared} bytes")]
    ContentTooLarge {
        /// The size in the release.
        declared: u64,
    },
}

fn invalid(what: &'static str, reason: impl Into<String>) -> UpdateError {
    UpdateError::Invalid {
        what,
        reason: reason.into(),
    }
}

/// An authority key and what it may sign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorityKey {
    /// The key (an Ed25519 public key, written as a NodeId).
    pub key: NodeId,
    /// A name for people, at most 64 bytes.
    pub name: String,
    /// Its roles.
    pub roles: BTreeSet<Role>,
}

/// The authority set: keys, roles, thresholds, and keys revoked for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    /// Strictly increasing with every rotation.
    pub sequence: u64,
    /// Unix seconds after which nothing signed under this root is trusted until a newer root
    /// arrives.
    pub expires_at: u64,
    /// Authority keys, at most [`MAX_KEYS`].
    pub keys: Vec<AuthorityKey>,
    /// Signatures from `Root` keys needed for the next root.
    pub root_threshold: u32,
    /// Signatures from `Release` keys needed for a release.
    pub release_threshold: u32,
    /// Keys that never count again, at most [`MAX_REVOKED`].
    pub revoked: Vec<NodeId>,
}

impl Root {
    /// Checks the fields: known version, key and name limits, no duplicate keys, thresholds
    /// reachable by the keys holding each role, no revoked key listed.
    pub fn validate(&self) -> Result<(), UpdateError> {
        const W: &str = "root";
        if self.keys.is_empty() || self.keys.len() > MAX_KEYS {
            return Err(invalid(
                W,
                format!("1..={MAX_KEYS} keys, got {}", self.keys.len()),
            ));
        }
        if self.revoked.len() > MAX_REVOKED {
            return Err(invalid(W, format!("at most {MAX_REVOKED} revoked keys")));
        }
        let mut seen = BTreeSet::new();
        for k in &self.keys {
            if !seen.insert(*k.key.as_bytes()) {
                return Err(invalid(W, format!("key {} listed twice", k.key)));
            }
            if k.name.len() > MAX_NAME {
                return Err(invalid(W, format!("key name longer than {MAX_NAME} bytes")));
            }
            if k.roles.is_empty() {
                return Err(invalid(W, format!("key {} has no role", k.key)));
            }
            if self.revoked.contains(&k.key) {
                return Err(invalid(
                    W,
                    format!("key {} is both listed and revoked", k.key),
                ));
            }
        }
        for (role, threshold) in [
            (Role::Root, self.root_threshold),
            (Role::Release, self.release_threshold),
        ] {
            let holders = self.keys.iter().filter(|k| k.roles.contains(&role)).count();
            if threshold == 0 || threshold as usize > holders {
                return Err(invalid(
                    W,
                    format!("{role} threshold {threshold} must be 1..={holders} ({role} keys)"),
                ));
            }
        }
        Ok(())
    }

    fn threshold(&self, role: Role) -> usize {
        match role {
            Role::Root => self.root_threshold as usize,
            Role::Release => self.release_threshold as usize,
        }
    }

    /// The listed key `key`, if any.
    pub fn key(&self, key: &NodeId) -> Option<&AuthorityKey> {
        self.keys.iter().find(|k| k.key == *key)
    }

    /// The encoded body (what signatures cover). Validates first.
    pub fn encode(&self) -> Result<Vec<u8>, UpdateError> {
        self.validate()?;
        Ok(proto::RootMetadata {
            version: METADATA_VERSION,
            sequence: self.sequence,
            expires_at: self.expires_at,
            keys: self
                .keys
                .iter()
                .map(|k| proto::AuthorityKey {
                    public_key: Bytes::copy_from_slice(k.key.as_bytes()),
                    name: k.name.clone(),
                    roles: k
                        .roles
                        .iter()
                        .map(|r| match r {
                            Role::Root => proto::KeyRole::Root as i32,
                            Role::Release => proto::KeyRole::Release as i32,
                        })
                        .collect(),
                })
                .collect(),
            root_threshold: self.root_threshold,
            release_threshold: self.release_threshold,
            revoked_keys: self
                .revoked
                .iter()
                .map(|k| Bytes::copy_from_slice(k.as_bytes()))
                .collect(),
        }
        .encode_to_vec())
    }

    /// Decodes and validates a body.
    pub fn decode(body: &[u8]) -> Result<Root, UpdateError> {
        const W: &str = "root";
        if body.len() > MAX_BODY {
            return Err(invalid(W, format!("body larger than {MAX_BODY} bytes")));
        }
        let m = proto::RootMetadata::decode(body).map_err(|e| invalid(W, e.to_string()))?;
        if m.version != METADATA_VERSION {
            return Err(invalid(W, format!("unknown version {}", m.version)));
        }
        if m.keys.len() > MAX_KEYS || m.revoked_keys.len() > MAX_REVOKED {
            return Err(invalid(W, "too many keys"));
        }
        let keys = m
            .keys
            .iter()
            .map(|k| {
                let key = NodeId::from_slice(&k.public_key)
                    .map_err(|_| invalid(W, "an authority key is not an Ed25519 public key"))?;
                let roles = k
                    .roles
                    .iter()
                    .map(|r| match proto::KeyRole::try_from(*r) {
                        Ok(proto::KeyRole::Root) => Ok(Role::Root),
                        Ok(proto::KeyRole::Release) => Ok(Role::Release),
                        _ => Err(invalid(W, format!("unknown role {r} for key {key}"))),
                    })
                    .collect::<Result<BTreeSet<_>, _>>()?;
                Ok(AuthorityKey {
                    key,
                    name: k.name.clone(),
                    roles,
                })
            })
            .collect::<Result<Vec<_>, UpdateError>>()?;
        let revoked = m
            .revoked_keys
            .iter()
            .map(|k| {
                NodeId::from_slice(k).map_err(|_| invalid(W, "a revoked key is not a public key"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let root = Root {
            sequence: m.sequence,
            expires_at: m.expires_at,
            keys,
            root_threshold: m.root_threshold,
            release_threshold: m.release_threshold,
            revoked,
        };
        root.validate()?;
        Ok(root)
    }

    /// Encodes and signs with each of `signers`.
    pub fn sign(&self, signers: &[&Identity]) -> Result<proto::SignedMetadata, UpdateError> {
        Ok(sign_body(self.encode()?, signers))
    }
}

/// One release of one package on one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// Package name, 1..=64 bytes.
    pub package: String,
    /// Channel, e.g. `stable`, 1..=64 bytes.
    pub channel: String,
    /// Semantic version (`MAJOR.MINOR.PATCH[-pre][+build]`), at most 64 bytes.
    pub semver: String,
    /// Strictly increasing per (package, channel); a newer release restoring older content
    /// still takes a higher sequence.
    pub sequence: u64,
    /// Unix seconds after which it is not installed.
    pub expires_at: u64,
    /// Content size in bytes, at least 1.
    pub size: u64,
    /// BLAKE3 hash of the whole content.
    pub content_hash: [u8; 32],
    /// Size of every chunk but the last, 1..=[`MAX_CHUNK_SIZE`].
    pub chunk_size: u32,
    /// BLAKE3 hash of each chunk; exactly `ceil(size / chunk_size)` of them.
    pub chunk_hashes: Vec<[u8; 32]>,
    /// Staged rollout: percentage of nodes that should install it (1..=100); `None` is all.
    pub rollout_percent: Option<u8>,
}

impl Release {
    /// Describes `content` as a release: hashes of the whole and of each `chunk_size` chunk.
    pub fn for_content(
        package: &str,
        channel: &str,
        semver: &str,
        sequence: u64,
        expires_at: u64,
        content: &[u8],
        chunk_size: u32,
    ) -> Result<Release, UpdateError> {
        if chunk_size == 0 {
            return Err(invalid("release", "chunk size must be at least 1"));
        }
        let release = Release {
            package: package.into(),
            channel: channel.into(),
            semver: semver.into(),
            sequence,
            expires_at,
            size: content.len() as u64,
            content_hash: *blake3::hash(content).as_bytes(),
            chunk_size,
            chunk_hashes: content
                .chunks(chunk_size as usize)
                .map(|c| *blake3::hash(c).as_bytes())
                .collect(),
            rollout_percent: None,
        };
        release.validate()?;
        Ok(release)
    }

    /// Checks the fields: names, semantic version, chunk layout consistent with the size.
    pub fn validate(&self) -> Result<(), UpdateError> {
        const W: &str = "release";
        for (field, value) in [("package", &self.package), ("channel", &self.channel)] {
            if value.is_empty() || value.len() > MAX_NAME {
                return Err(invalid(W, format!("{field} must be 1..={MAX_NAME} bytes")));
            }
        }
        if self.semver.len() > MAX_NAME || !is_semver(&self.semver) {
            return Err(invalid(
                W,
                format!("{:?} is not a semantic version", self.semver),
            ));
        }
        if self.chunk_size == 0 || self.chunk_size > MAX_CHUNK_SIZE {
            return Err(invalid(
                W,
                format!("chunk size must be 1..={MAX_CHUNK_SIZE}"),
            ));
        }
        if self.size == 0 {
            return Err(invalid(W, "empty content"));
        }
        let chunks = self.size.div_ceil(u64::from(self.chunk_size));
        if chunks > MAX_CHUNKS as u64 {
            return Err(invalid(W, format!("more than {MAX_CHUNKS} chunks")));
        }
        if self.chunk_hashes.len() as u64 != chunks {
            return Err(invalid(
                W,
                format!(
                    "{} chunk hashes for {} bytes in chunks of {} (expected {chunks})",
                    self.chunk_hashes.len(),
                    self.size,
                    self.chunk_size
                ),
            ));
        }
        if let Some(p) = self.rollout_percent {
            if !(1..=100).contains(&p) {
                return Err(invalid(W, "rollout percentage must be 1..=100"));
            }
        }
        Ok(())
    }

    /// Length of chunk `index`, or `None` past the end.
    pub fn chunk_len(&self, index: usize) -> Option<usize> {
        let start = (index as u64).checked_mul(u64::from(self.chunk_size))?;
        if start >= self.size {
            return None;
        }
        Some((self.size - start).min(u64::from(self.chunk_size)) as usize)
    }

    /// Whether the node with `node` falls inside the staged rollout. Deterministic per
    /// (node, package, channel, sequence), so a node's answer does not change between checks,
    /// and spread evenly across nodes.
    pub fn in_rollout(&self, node: &NodeId) -> bool {
        let Some(percent) = self.rollout_percent else {
            return true;
        };
        let h = crate::crypto::kdf::derive(
            labels::UPDATE_ROLLOUT,
            &[
                node.as_bytes(),
                self.package.as_bytes(),
                self.channel.as_bytes(),
                &self.sequence.to_le_bytes(),
            ],
        );
        let bucket = u16::from_le_bytes([h[0], h[1]]) % 100;
        bucket < u16::from(percent)
    }

    /// The encoded body (what signatures cover). Validates first.
    pub fn encode(&self) -> Result<Vec<u8>, UpdateError> {
        self.validate()?;
        Ok(proto::ReleaseMetadata {
            version: METADATA_VERSION,
            package: self.package.clone(),
            channel: self.channel.clone(),
            semver: self.semver.clone(),
            sequence: self.sequence,
            expires_at: self.expires_at,
            size: self.size,
            content_hash: Bytes::copy_from_slice(&self.content_hash),
            chunk_size: self.chunk_size,
            chunk_hashes: self
                .chunk_hashes
                .iter()
                .map(|h| Bytes::copy_from_slice(h))
                .collect(),
            rollout_percent: self.rollout_percent.map(u32::from),
        }
        .encode_to_vec())
    }

    /// Decodes and validates a body.
    pub fn decode(body: &[u8]) -> Result<Release, UpdateError> {
        const W: &str = "release";
        if body.len() > MAX_BODY {
            return Err(invalid(W, format!("body larger than {MAX_BODY} bytes")));
        }
        let m = proto::ReleaseMetadata::decode(body).map_err(|e| invalid(W, e.to_string()))?;
        if m.version != METADATA_VERSION {
            return Err(invalid(W, format!("unknown version {}", m.version)));
        }
        if m.chunk_hashes.len() > MAX_CHUNKS {
            return Err(invalid(W, format!("more than {MAX_CHUNKS} chunks")));
        }
        let hash = |b: &Bytes| -> Result<[u8; 32], UpdateError> {
            b.as_ref()
                .try_into()
                .map_err(|_| invalid(W, "hashes are 32 bytes"))
        };
        let rollout_percent = match m.rollout_percent {
            None => None,
            Some(p @ 1..=100) => Some(p as u8),
            Some(p) => return Err(invalid(W, format!("rollout percentage {p} not in 1..=100"))),
        };
        let release = Release {
            package: m.package,
            channel: m.channel,
            semver: m.semver,
            sequence: m.sequence,
            expires_at: m.expires_at,
            size: m.size,
            content_hash: hash(&m.content_hash)?,
            chunk_size: m.chunk_size,
            chunk_hashes: m.chunk_hashes.iter().map(hash).collect::<Result<_, _>>()?,
            rollout_percent,
        };
        release.validate()?;
        Ok(release)
    }

    /// Encodes and signs with each of `signers`.
    pub fn sign(&self, signers: &[&Identity]) -> Result<proto::SignedMetadata, UpdateError> {
        Ok(sign_body(self.encode()?, signers))
    }
}

/// `MAJOR.MINOR.PATCH` with numeric parts without leading zeros, then optional `-pre` and
/// `+build` of dot-separated non-empty `[0-9A-Za-z-]` identifiers.
fn is_semver(v: &str) -> bool {
    let (rest, build) = match v.split_once('+') {
        Some((r, b)) => (r, Some(b)),
        None => (v, None),
    };
    let (core, pre) = match rest.split_once('-') {
        Some((c, p)) => (c, Some(p)),
        None => (rest, None),
    };
    let numeric = |s: &str| {
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'))
    };
    let idents = |s: &str| {
        s.split('.')
            .all(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
    };
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| numeric(p))
        && pre.is_none_or(idents)
        && build.is_none_or(idents)
}

/// Signs `body` by each signer under the update-metadata context.
pub fn sign_body(body: Vec<u8>, signers: &[&Identity]) -> proto::SignedMetadata {
    let signatures = signers.iter().map(|id| signature(&body, id)).collect();
    proto::SignedMetadata {
        body: Bytes::from(body),
        signatures,
    }
}

/// One authority signature over `body`: made offline by a signer and attached later.
pub fn signature(body: &[u8], signer: &Identity) -> proto::MetadataSignature {
    proto::MetadataSignature {
        public_key: Bytes::copy_from_slice(signer.node_id().as_bytes()),
        signature: Bytes::copy_from_slice(&signer.sign(labels::SIG_UPDATE_METADATA, body)),
    }
}

/// Checks one signature over a metadata body (strict Ed25519, the metadata signing
/// context), as an authority does before attaching a signature made offline.
pub fn verify_signature(body: &[u8], key: &NodeId, signature: &[u8]) -> Result<(), UpdateError> {
    key.verify(labels::SIG_UPDATE_METADATA, body, signature)
        .map_err(|_| UpdateError::BadSignature(*key, 0, 0))
}

/// Decodes signed metadata (a root or a release, as exported by an authority) and checks its
/// limits: body 1..=[`MAX_BODY`] bytes, 1..=[`MAX_SIGNATURES`] signatures of the right sizes.
/// The signatures themselves are checked by [`TrustState`].
pub fn decode_signed(bytes: &[u8]) -> Result<proto::SignedMetadata, UpdateError> {
    const W: &str = "signed metadata";
    if bytes.len() > MAX_BODY + MAX_SIGNATURES * 128 + 16 {
        return Err(invalid(W, format!("{} bytes is too large", bytes.len())));
    }
    let signed = proto::SignedMetadata::decode(bytes).map_err(|e| invalid(W, e.to_string()))?;
    if signed.body.is_empty() || signed.body.len() > MAX_BODY {
        return Err(invalid(W, format!("body must be 1..={MAX_BODY} bytes")));
    }
    if signed.signatures.is_empty() || signed.signatures.len() > MAX_SIGNATURES {
        return Err(invalid(W, format!("1..={MAX_SIGNATURES} signatures")));
    }
    if signed
        .signatures
        .iter()
        .any(|s| s.public_key.len() != 32 || s.signature.len() != 64)
    {
        return Err(invalid(W, "keys are 32 bytes and signatures 64"));
    }
    Ok(signed)
}

/// Checks a root on its own: well formed, not expired at `now` (Unix seconds) and signed by
/// its own root threshold. This is how a node that is given no root file adopts one from an
/// authority node it was told to trust (the authority's identity is the anchor then, not the
/// root's keys); every later root still has to rotate from this one.
pub fn verify_self_signed_root(
    signed: &proto::SignedMetadata,
    now: u64,
) -> Result<Root, UpdateError> {
    let root = Root::decode(&signed.body)?;
    root.validate()?;
    if root.expires_at <= now {
        return Err(UpdateError::Expired {
            what: "root",
            expires_at: root.expires_at,
            now,
        });
    }
    check_signatures(signed, &root, Role::Root, &BTreeSet::new())?;
    Ok(root)
}

/// Counts the signatures on `signed` that `root` accepts for `role`, with every revoked key
/// in `revoked` ignored. Duplicates are refused outright; otherwise unknown, revoked and
/// invalid signatures are skipped, and only if the threshold is then missed does the error
/// name the first of them (or say how many were valid).
fn check_signatures(
    signed: &proto::SignedMetadata,
    root: &Root,
    role: Role,
    revoked: &BTreeSet<[u8; 32]>,
) -> Result<(), UpdateError> {
    if signed.signatures.is_empty() || signed.signatures.len() > MAX_SIGNATURES {
        return Err(invalid(
            "signatures",
            format!(
                "1..={MAX_SIGNATURES} signatures, got {}",
                signed.signatures.len()
            ),
        ));
    }
    let mut signers = BTreeSet::new();
    let mut valid = 0usize;
    let mut first_problem: Option<fn(NodeId, usize, usize) -> UpdateError> = None;
    let mut problem_key = None;
    for sig in &signed.signatures {
        let key = NodeId::from_slice(&sig.public_key)
            .map_err(|_| invalid("signatures", "a public key is not an Ed25519 key"))?;
        if !signers.insert(*key.as_bytes()) {
            return Err(UpdateError::DuplicateSigner(key));
        }
        let problem: Option<fn(NodeId, usize, usize) -> UpdateError> =
            if revoked.contains(key.as_bytes()) || root.revoked.contains(&key) {
                Some(UpdateError::RevokedKey)
            } else if root.key(&key).is_none_or(|k| !k.roles.contains(&role)) {
                Some(UpdateError::UnknownKey)
            } else if key
                .verify(labels::SIG_UPDATE_METADATA, &signed.body, &sig.signature)
                .is_err()
            {
                Some(UpdateError::BadSignature)
            } else {
                valid += 1;
                None
            };
        if first_problem.is_none() {
            if let Some(p) = problem {
                first_problem = Some(p);
                problem_key = Some(key);
            }
        }
    }
    let needed = root.threshold(role);
    if valid >= needed {
        return Ok(());
    }
    match (first_problem, problem_key) {
        (Some(make), Some(key)) => Err(make(key, valid, needed)),
        _ => Err(UpdateError::BelowThreshold {
            role,
            valid,
            needed,
        }),
    }
}

/// What a node trusts: the current root, every key ever revoked, and the newest installed
/// release sequence per (package, channel).
#[derive(Debug, Clone)]
pub struct TrustState {
    root: Root,
    revoked: BTreeSet<[u8; 32]>,
    installed: HashMap<(String, String), u64>,
}

impl TrustState {
    /// Starts from `root`, typically shipped with the application (trust on first use is
    /// the application's choice, not the network's).
    pub fn new(root: Root) -> Result<TrustState, UpdateError> {
        root.validate()?;
        let revoked = root.revoked.iter().map(|k| *k.as_bytes()).collect();
        Ok(TrustState {
            root,
            revoked,
            installed: HashMap::new(),
        })
    }

    /// The current root.
    pub fn root(&self) -> &Root {
        &self.root
    }

    /// The newest installed release sequence for (package, channel).
    pub fn installed(&self, package: &str, channel: &str) -> Option<u64> {
        self.installed
            .get(&(package.to_owned(), channel.to_owned()))
            .copied()
    }

    /// Replaces the root with `signed`, which must carry a higher sequence, not be expired at
    /// `now`, and be signed by the root threshold of the current root *and* of itself (so
    /// neither the old keys alone nor the new keys alone can rotate). On error nothing changes.
    pub fn rotate_root(
        &mut self,
        signed: &proto::SignedMetadata,
        now: u64,
    ) -> Result<&Root, UpdateError> {
        let new = Root::decode(&signed.body)?;
        if new.sequence <= self.root.sequence {
            return Err(UpdateError::Rollback {
                what: "root",
                current: self.root.sequence,
                offered: new.sequence,
            });
        }
        if new.expires_at <= now {
            return Err(UpdateError::Expired {
                what: "root",
                expires_at: new.expires_at,
                now,
            });
        }
        let mut revoked = self.revoked.clone();
        revoked.extend(new.revoked.iter().map(|k| *k.as_bytes()));
        if let Some(k) = new.keys.iter().find(|k| revoked.contains(k.key.as_bytes())) {
            return Err(invalid(
                "root",
                format!("lists key {}, which was revoked", k.key),
            ));
        }
        // The old quorum is counted as it stood before this root: a rotation that revokes a
        // key (say, a compromised one) may itself be signed by the keys it retires, so even
        // a complete key replacement can be authorised by the outgoing quorum.
        check_signatures(signed, &self.root, Role::Root, &self.revoked)?;
        check_signatures(signed, &new, Role::Root, &revoked)?;
        self.root = new;
        self.revoked = revoked;
        Ok(&self.root)
    }

    /// Checks a release against the current root: not expired (nor the root), signed by the
    /// release threshold, with a sequence above the installed one. Changes nothing; call
    /// [`record_release`](Self::record_release) once it is installed.
    pub fn verify_release(
        &self,
        signed: &proto::SignedMetadata,
        now: u64,
    ) -> Result<Release, UpdateError> {
        if self.root.expires_at <= now {
            return Err(UpdateError::Expired {
                what: "root",
                expires_at: self.root.expires_at,
                now,
            });
        }
        let release = Release::decode(&signed.body)?;
        check_signatures(signed, &self.root, Role::Release, &self.revoked)?;
        if release.expires_at <= now {
            return Err(UpdateError::Expired {
                what: "release",
                expires_at: release.expires_at,
                now,
            });
        }
        if let Some(current) = self.installed(&release.package, &release.channel) {
            if release.sequence <= current {
                return Err(UpdateError::Rollback {
                    what: "release",
                    current,
                    offered: release.sequence,
                });
            }
        }
        Ok(release)
    }

    /// Records `release` as installed: later releases of its package and channel must carry a
    /// higher sequence.
    pub fn record_release(&mut self, release: &Release) {
        self.set_installed(&release.package, &release.channel, release.sequence);
    }

    /// Raises the installed sequence of (`package`, `channel`) to `sequence` (never lowers
    /// it), as when restoring state saved by an earlier run.
    pub fn set_installed(&mut self, package: &str, channel: &str, sequence: u64) {
        let entry = self
            .installed
            .entry((package.to_owned(), channel.to_owned()))
            .or_insert(0);
        *entry = (*entry).max(sequence);
    }

    /// Every installed (package, channel, sequence).
    pub fn installed_all(&self) -> impl Iterator<Item = (&str, &str, u64)> {
        self.installed
            .iter()
            .map(|((p, c), s)| (p.as_str(), c.as_str(), *s))
    }
}

/// Checks content against its release, chunk by chunk or as one stream.
#[derive(Debug, Clone)]
pub struct ContentVerifier {
    release: Release,
    hasher: blake3::Hasher,
    received: u64,
}

impl ContentVerifier {
    /// A verifier for `release`'s content.
    pub fn new(release: &Release) -> Self {
        Self {
            release: release.clone(),
            hasher: blake3::Hasher::new(),
            received: 0,
        }
    }

    /// Checks chunk `index` on its own (length and hash), as a downloader does before keeping
    /// a chunk from an untrusted peer.
    pub fn check_chunk(release: &Release, index: usize, data: &[u8]) -> Result<(), UpdateError> {
        let Some(expected_len) = release.chunk_len(index) else {
            return Err(UpdateError::ContentMismatch(format!(
                "chunk {index} is past the last chunk ({})",
                release.chunk_hashes.len()
            )));
        };
        if data.len() > expected_len && index + 1 == release.chunk_hashes.len() {
            return Err(UpdateError::ContentTooLarge {
                declared: release.size,
            });
        }
        if data.len() != expected_len {
            return Err(UpdateError::ContentMismatch(format!(
                "chunk {index} has {} bytes, expected {expected_len}",
                data.len()
            )));
        }
        if blake3::hash(data).as_bytes() != &release.chunk_hashes[index] {
            return Err(UpdateError::ContentMismatch(format!(
                "chunk {index} hash differs"
            )));
        }
        Ok(())
    }

    /// Feeds the next bytes of the content. Fails as soon as more than the declared size
    /// arrives, so endless data is cut off.
    pub fn update(&mut self, data: &[u8]) -> Result<(), UpdateError> {
        let total = self.received.saturating_add(data.len() as u64);
        if total > self.release.size {
            return Err(UpdateError::ContentTooLarge {
                declared: self.release.size,
            });
        }
        self.received = total;
        self.hasher.update(data);
        Ok(())
    }

    /// Ends the content: it must have the declared size and hash.
    pub fn finish(self) -> Result<(), UpdateError> {
        if self.received != self.release.size {
            return Err(UpdateError::ContentMismatch(format!(
                "{} bytes, expected {}",
                self.received, self.release.size
            )));
        }
        if self.hasher.finalize().as_bytes() != &self.release.content_hash {
            return Err(UpdateError::ContentMismatch("content hash differs".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
