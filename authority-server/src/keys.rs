//! Authority keys: server-held signing keys (keystore files under `<data_dir>/keys/`), the
//! trusted root (`<data_dir>/root.pb`), and the draft format exchanged with offline signers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use data_encoding::BASE64;
use meshara_core::update::{self, AuthorityKey, Release, Role, Root};
use meshara_core::{Identity, KdfParams, Keystore, NodeId, proto};
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::names::{self, NameKind};

/// Why a key operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// A keystore could not be read or written.
    #[error("keystore {path}: {source}")]
    Keystore {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: meshara_core::KeystoreError,
    },
    /// A file operation failed.
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    /// Metadata was refused.
    #[error(transparent)]
    Update(#[from] update::UpdateError),
    /// Input is malformed.
    #[error("{0}")]
    Invalid(String),
    /// A name is outside its character set.
    #[error(transparent)]
    Name(#[from] names::NameError),
}

/// The server-held keys, by name.
#[derive(Default)]
pub struct ServerKeys {
    keys: BTreeMap<String, Identity>,
}

impl std::fmt::Debug for ServerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.keys.keys()).finish()
    }
}

impl ServerKeys {
    /// Unlocks every `<dir>/<name>.key` with `passphrase`.
    pub fn load(dir: &Path, passphrase: &[u8]) -> Result<Self, KeyError> {
        let mut keys = BTreeMap::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self { keys }),
            Err(e) => return Err(KeyError::Io(format!("reading {}", dir.display()), e)),
        };
        for entry in entries {
            let path = entry
                .map_err(|e| KeyError::Io(format!("reading {}", dir.display()), e))?
                .path();
            let (Some(name), Some("key")) = (
                path.file_stem().and_then(|s| s.to_str()),
                path.extension().and_then(|s| s.to_str()),
            ) else {
                continue;
            };
            names::check(NameKind::Key, name)?;
            let unlocked =
                Keystore::new(&path)
                    .load(passphrase)
                    .map_err(|source| KeyError::Keystore {
                        path: path.clone(),
                        source,
                    })?;
            keys.insert(name.to_owned(), unlocked.identity);
        }
        Ok(Self { keys })
    }

    /// The key named `name`.
    pub fn get(&self, name: &str) -> Option<&Identity> {
        self.keys.get(name)
    }

    /// Whether `key` is held by the server.
    pub fn holds(&self, key: &NodeId) -> bool {
        self.keys.values().any(|i| i.node_id() == *key)
    }

    /// Names and public keys.
    pub fn list(&self) -> impl Iterator<Item = (&str, NodeId)> {
        self.keys.iter().map(|(n, i)| (n.as_str(), i.node_id()))
    }
}

/// Creates a new key in a keystore file; returns its public key.
pub fn generate(path: &Path, passphrase: &[u8]) -> Result<NodeId, KeyError> {
    let identity = Identity::generate();
    Keystore::new(path)
        .create(
            &identity,
            passphrase,
            KdfParams::default(),
            crate::now() as u64,
        )
        .map_err(|source| KeyError::Keystore {
            path: path.to_owned(),
            source,
        })?;
    Ok(identity.node_id())
}

/// Sets up a new authority in `data_dir`: `n` server-held keys holding both roles, and a
/// root with the given thresholds, signed by all of them. For development and for
/// authorities that keep their keys on the server; an authority with offline keys builds its
/// root with [`root_for`] and signs it where the keys are.
pub fn init(
    data_dir: &Path,
    n: usize,
    threshold: u32,
    passphrase: &[u8],
    valid_days: u64,
) -> Result<proto::SignedMetadata, KeyError> {
    let root_path = data_dir.join("root.pb");
    if root_path.exists() {
        return Err(KeyError::Invalid(format!(
            "{} exists: this authority is already set up",
            root_path.display()
        )));
    }
    let dir = data_dir.join("keys");
    std::fs::create_dir_all(&dir).map_err(|e| KeyError::Io("creating keys/".into(), e))?;
    {
        use std::os::unix::fs::PermissionsExt;
        for d in [data_dir, dir.as_path()] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| KeyError::Io(format!("restricting {}", d.display()), e))?;
        }
    }
    // Everything is checked before anything is written, so a refused setup leaves no keys.
    let ids: Vec<Identity> = (0..n).map(|_| Identity::generate()).collect();
    let keys: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (format!("k{}", i + 1), id.node_id()))
        .collect();
    let root = root_for(&keys, threshold, threshold, valid_days)?;
    for ((name, _), id) in keys.iter().zip(&ids) {
        let path = dir.join(format!("{name}.key"));
        Keystore::new(&path)
            .create(id, passphrase, KdfParams::default(), crate::now() as u64)
            .map_err(|source| KeyError::Keystore { path, source })?;
    }
    let signed = root.sign(&ids.iter().collect::<Vec<_>>())?;
    write_root(&root_path, &signed)?;
    Ok(signed)
}

/// A first root listing `keys` (name, key) with both roles.
pub fn root_for(
    keys: &[(String, NodeId)],
    root_threshold: u32,
    release_threshold: u32,
    valid_days: u64,
) -> Result<Root, KeyError> {
    let root = Root {
        sequence: 1,
        expires_at: crate::now() as u64 + valid_days * 86_400,
        keys: keys
            .iter()
            .map(|(name, key)| AuthorityKey {
                key: *key,
                name: name.clone(),
                roles: [Role::Root, Role::Release].into(),
            })
            .collect(),
        root_threshold,
        release_threshold,
        revoked: Vec::new(),
    };
    root.validate()?;
    Ok(root)
}

/// Writes signed root metadata (the file nodes ship with).
pub fn write_root(path: &Path, signed: &proto::SignedMetadata) -> Result<(), KeyError> {
    std::fs::write(path, signed.encode_to_vec())
        .map_err(|e| KeyError::Io(format!("writing {}", path.display()), e))
}

/// Reads signed root metadata.
pub fn read_root(path: &Path) -> Result<proto::SignedMetadata, KeyError> {
    let bytes =
        std::fs::read(path).map_err(|e| KeyError::Io(format!("reading {}", path.display()), e))?;
    let signed = update::decode_signed(&bytes)?;
    Root::decode(&signed.body)?;
    Ok(signed)
}

/// A release exported for signing elsewhere: what it says, and the exact bytes to sign.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Draft {
    /// The release id on the authority.
    pub release_id: i64,
    /// Package.
    pub package: String,
    /// Channel.
    pub channel: String,
    /// Semantic version.
    pub semver: String,
    /// Sequence.
    pub sequence: u64,
    /// Content hash, hex.
    pub content_hash: String,
    /// Content size.
    pub size: u64,
    /// Staged rollout.
    pub rollout_percent: Option<u8>,
    /// Expiry, Unix seconds.
    pub expires_at: u64,
    /// The encoded metadata, base64: this is what is signed.
    pub body: String,
}

/// A signature made offline, to attach to a release.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DetachedSignature {
    /// The signing key (NodeId text).
    pub public_key: String,
    /// The Ed25519 signature, base64.
    pub signature: String,
}

impl Draft {
    /// Describes release `id` with metadata `body`.
    pub fn new(release_id: i64, body: &[u8]) -> Result<Draft, KeyError> {
        let r = Release::decode(body)?;
        Ok(Draft {
            release_id,
            package: r.package,
            channel: r.channel,
            semver: r.semver,
            sequence: r.sequence,
            content_hash: data_encoding::HEXLOWER.encode(&r.content_hash),
            size: r.size,
            rollout_percent: r.rollout_percent,
            expires_at: r.expires_at,
            body: BASE64.encode(body),
        })
    }

    /// Checks that the package and channel are in the allowed character set
    /// ([`crate::names`]) and that the version is a plain semantic version, so that printing
    /// them cannot hide anything.
    pub fn check_names(&self) -> Result<(), KeyError> {
        names::check(NameKind::Package, &self.package)?;
        names::check(NameKind::Channel, &self.channel)?;
        if self.semver.is_empty()
            || self.semver.len() > update::MAX_NAME
            || !self
                .semver
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-+".contains(&b))
        {
            return Err(KeyError::Invalid(format!(
                "version {} is not a semantic version",
                names::quoted(&self.semver)
            )));
        }
        Ok(())
    }

    /// Checks the names ([`Draft::check_names`]) and that the readable fields match the body
    /// (so a signer sees what they sign), and signs the body.
    pub fn sign(&self, key: &Identity) -> Result<DetachedSignature, KeyError> {
        self.check_names()?;
        sign_checked(self, &self.body, key, |body| {
            Draft::new(self.release_id, body)
        })
    }
}

/// Signs a draft's base64 `body` after checking that the draft, rebuilt from the body,
/// equals `draft`: a signer reads the fields and signs exactly what they say.
fn sign_checked<T: PartialEq>(
    draft: &T,
    body: &str,
    key: &Identity,
    rebuild: impl FnOnce(&[u8]) -> Result<T, KeyError>,
) -> Result<DetachedSignature, KeyError> {
    let body = decode_body(body)?;
    if rebuild(&body)? != *draft {
        return Err(mismatch());
    }
    let sig = update::signature(&body, key);
    Ok(DetachedSignature {
        public_key: key.node_id().to_string(),
        signature: BASE64.encode(&sig.signature),
    })
}

/// One key of a root as drafts and the API show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    /// A name for people.
    pub name: String,
    /// The public key (NodeId text).
    pub key: String,
    /// `root` and/or `release`.
    pub roles: Vec<String>,
}

impl KeyEntry {
    fn of(k: &AuthorityKey) -> KeyEntry {
        KeyEntry {
            name: k.name.clone(),
            key: k.key.to_string(),
            roles: k.roles.iter().map(ToString::to_string).collect(),
        }
    }

    /// The key this entry describes.
    pub fn to_key(&self) -> Result<AuthorityKey, KeyError> {
        let key = self
            .key
            .parse()
            .map_err(|_| KeyError::Invalid(format!("{:?} is not a public key", self.key)))?;
        let roles = self
            .roles
            .iter()
            .map(|r| match r.as_str() {
                "root" => Ok(Role::Root),
                "release" => Ok(Role::Release),
                other => Err(KeyError::Invalid(format!(
                    "unknown role {other:?} (root or release)"
                ))),
            })
            .collect::<Result<_, _>>()?;
        Ok(AuthorityKey {
            key,
            name: self.name.clone(),
            roles,
        })
    }
}

/// A new root (a key rotation) exported for signing elsewhere. Both the current root's
/// threshold of root keys and the new root's must sign it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RootDraft {
    /// The new root's sequence (the current one's plus one).
    pub sequence: u64,
    /// Expiry, Unix seconds.
    pub expires_at: u64,
    /// The keys it lists.
    pub keys: Vec<KeyEntry>,
    /// Signatures a later rotation needs.
    pub root_threshold: u32,
    /// Signatures a release needs.
    pub release_threshold: u32,
    /// Keys revoked for good (NodeId text).
    pub revoked: Vec<String>,
    /// The encoded root, base64: this is what is signed.
    pub body: String,
}

impl RootDraft {
    /// Describes the root encoded in `body`.
    pub fn new(body: &[u8]) -> Result<RootDraft, KeyError> {
        let r = Root::decode(body)?;
        Ok(RootDraft {
            sequence: r.sequence,
            expires_at: r.expires_at,
            keys: r.keys.iter().map(KeyEntry::of).collect(),
            root_threshold: r.root_threshold,
            release_threshold: r.release_threshold,
            revoked: r.revoked.iter().map(ToString::to_string).collect(),
            body: BASE64.encode(body),
        })
    }

    /// Checks that every key name is in the allowed character set ([`crate::names`]), so
    /// that printing the draft cannot hide a key.
    pub fn check_names(&self) -> Result<(), KeyError> {
        for k in &self.keys {
            names::check(NameKind::Key, &k.name)?;
        }
        Ok(())
    }

    /// Checks the names ([`RootDraft::check_names`]) and that the readable fields match the
    /// body, and signs the body.
    pub fn sign(&self, key: &Identity) -> Result<DetachedSignature, KeyError> {
        self.check_names()?;
        sign_checked(self, &self.body, key, RootDraft::new)
    }
}

/// A draft of either kind, as `meshara-authority sign` reads it.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum AnyDraft {
    /// A root rotation.
    Root(RootDraft),
    /// A release.
    Release(Draft),
}

impl AnyDraft {
    /// What `meshara-authority sign` shows before signing with `signer`: every field a signer
    /// must check, each key of a root by its public key (its fingerprint: the NodeId text
    /// `keygen` printed) before its name, every name escaped ([`names::escape`]). Refuses a
    /// draft whose names are outside the allowed character sets, or whose fields do not match
    /// its body.
    ///
    /// With `known`, the root the signer already trusts (for example the `root.pb` shipped to
    /// nodes), every key of a root draft is marked as listed there or `NEW`, and the keys it
    /// drops are named, so that a key slipped into a rotation stands out.
    pub fn summary(&self, signer: &NodeId, known: Option<&Root>) -> Result<String, KeyError> {
        use std::fmt::Write as _;
        let mut out = String::new();
        match self {
            AnyDraft::Release(d) => {
                d.check_names()?;
                let body = decode_body(&d.body)?;
                if Draft::new(d.release_id, &body)? != *d {
                    return Err(mismatch());
                }
                let _ = writeln!(
                    out,
                    "signing release {}/{} {} (sequence {}, {} bytes, content {}{}, expires {})",
                    names::escape(&d.package),
                    names::escape(&d.channel),
                    names::escape(&d.semver),
                    d.sequence,
                    d.size,
                    d.content_hash,
                    d.rollout_percent
                        .map(|p| format!(", rollout {p}%"))
                        .unwrap_or_default(),
                    d.expires_at,
                );
            }
            AnyDraft::Root(d) => {
                d.check_names()?;
                let body = decode_body(&d.body)?;
                if RootDraft::new(&body)? != *d {
                    return Err(mismatch());
                }
                let _ = writeln!(
                    out,
                    "signing root {} (root threshold {}, release threshold {}, expires {}, {} keys)",
                    d.sequence,
                    d.root_threshold,
                    d.release_threshold,
                    d.expires_at,
                    d.keys.len()
                );
                if let Some(known) = known {
                    let _ = writeln!(
                        out,
                        "  compared with the root you trust (sequence {})",
                        known.sequence
                    );
                }
                let mut added = 0;
                for (i, k) in d.keys.iter().enumerate() {
                    let mark = match known {
                        None => "",
                        Some(known) if k.key.parse().is_ok_and(|key| known.key(&key).is_some()) => {
                            " (listed now)"
                        }
                        Some(_) => {
                            added += 1;
                            " NEW: not in the root you trust"
                        }
                    };
                    let _ = writeln!(
                        out,
                        "  key {}/{}: {} roles {} name {}{mark}",
                        i + 1,
                        d.keys.len(),
                        k.key,
                        k.roles.join(","),
                        names::quoted(&k.name)
                    );
                }
                if let Some(known) = known {
                    for k in &known.keys {
                        if !d.keys.iter().any(|e| e.key == k.key.to_string()) {
                            let _ =
                                writeln!(out, "  drops {} name {}", k.key, names::quoted(&k.name));
                        }
                    }
                    let _ = writeln!(out, "  {added} new key(s): check each with its holder");
                }
                for k in &d.revoked {
                    let _ = writeln!(out, "  revokes {k}");
                }
            }
        }
        let _ = writeln!(out, "signer: {signer}");
        Ok(out)
    }
}

fn decode_body(body: &str) -> Result<Vec<u8>, KeyError> {
    BASE64
        .decode(body.as_bytes())
        .map_err(|_| KeyError::Invalid("draft body is not base64".into()))
}

fn mismatch() -> KeyError {
    KeyError::Invalid("the draft's fields do not match its body; refusing to sign".into())
}

/// The root after `current`: `keys` with the thresholds, valid for `valid_days`, revoking
/// `revoke` on top of what `current` revokes (so a node shipped with the new root still
/// refuses every key revoked before).
pub fn next_root(
    current: &Root,
    keys: Vec<AuthorityKey>,
    root_threshold: u32,
    release_threshold: u32,
    valid_days: u64,
    revoke: Vec<NodeId>,
) -> Result<Root, KeyError> {
    let mut revoked = current.revoked.clone();
    for k in revoke {
        if !revoked.contains(&k) {
            revoked.push(k);
        }
    }
    let root = Root {
        sequence: current.sequence + 1,
        expires_at: crate::now() as u64 + valid_days * 86_400,
        keys,
        root_threshold,
        release_threshold,
        revoked,
    };
    root.validate()?;
    Ok(root)
}

/// Writes signed root metadata atomically (a crash leaves the old file or the new one).
pub fn replace_root(path: &Path, signed: &proto::SignedMetadata) -> Result<(), KeyError> {
    let tmp = path.with_extension("pb.tmp");
    write_root(&tmp, signed)?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| KeyError::Io(format!("replacing {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_refused_setup_writes_no_keys_and_a_good_one_signs_its_root() {
        let dir = tempfile::tempdir().unwrap();
        assert!(init(dir.path(), 3, 4, b"pass", 30).is_err());
        assert!(!dir.path().join("root.pb").exists());
        let written = std::fs::read_dir(dir.path().join("keys")).map_or(0, |d| d.count());
        assert_eq!(written, 0);
        let signed = init(dir.path(), 3, 2, b"pass", 30).unwrap();
        let root = Root::decode(&signed.body).unwrap();
        assert_eq!((root.keys.len(), root.release_threshold), (3, 2));
        assert_eq!(read_root(&dir.path().join("root.pb")).unwrap(), signed);
        let keys = ServerKeys::load(&dir.path().join("keys"), b"pass").unwrap();
        assert!(root.keys.iter().all(|k| keys.holds(&k.key)));
        assert!(init(dir.path(), 3, 2, b"pass", 30).is_err(), "never twice");
    }
}
