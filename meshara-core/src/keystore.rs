//! The encrypted identity store (docs/protocol.md §12): Argon2id stretches the passphrase,
//! ChaCha20-Poly1305 seals the two secret keys, the header records every parameter so they can
//! be raised later, and files are replaced atomically (temp file, fsync, rename, fsync dir).
//!
//! Each failure has its own error: a wrong passphrase, a truncated file, a damaged or tampered
//! file, unsafe permissions. None of them ever creates a new identity or overwrites a file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use argon2::{Algorithm, Argon2, Params, Version};
use data_encoding::{BASE64, HEXLOWER};
use rand_core::{OsRng, RngCore};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::crypto::TAG_LEN;
use crate::crypto::kdf::{derive, labels};
use crate::identity::Identity;

/// File magic: `MESHARA` then 0x1a.
pub const MAGIC: [u8; 8] = *b"MESHARA\x1a";
/// Current file format version.
pub const FORMAT_VERSION: u8 = 1;
/// KDF id for Argon2id version 0x13.
const KDF_ARGON2ID: u8 = 1;
const KIND_KEYSTORE: u8 = 1;
const KIND_BUNDLE: u8 = 2;
const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 12;
const VERIFIER_LEN: usize = 32;
const CHECKSUM_LEN: usize = 32;
/// Bytes before the ciphertext (the AEAD associated data).
pub const HEADER_LEN: usize = 8 + 4 + 12 + SALT_LEN + NONCE_LEN + VERIFIER_LEN + 4;
/// Plaintext: Ed25519 seed (32) || X25519 scalar (32) || created_at (8, LE).
const SECRETS_LEN: usize = 72;
/// Total size of a version-1 file.
pub const FILE_LEN: usize = HEADER_LEN + SECRETS_LEN + TAG_LEN + CHECKSUM_LEN;

const ARMOR_BEGIN: &str = "-----BEGIN MESHARA IDENTITY-----";
const ARMOR_END: &str = "-----END MESHARA IDENTITY-----";

/// Why a keystore or bundle could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeystoreError {
    /// No file at the path.
    #[error("no keystore at {0}")]
    NotFound(PathBuf),
    /// `create` refuses to replace an existing identity.
    #[error("a keystore already exists at {0}; refusing to overwrite it")]
    AlreadyExists(PathBuf),
    /// The file is readable by group or others.
    #[error(
        "keystore {path} has mode {mode:o}; it must not be accessible to group or others (chmod 600)"
    )]
    InsecurePermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The passphrase does not open this file.
    #[error("wrong passphrase")]
    WrongPassphrase,
    /// The passphrase is empty.
    #[error("the passphrase must not be empty")]
    EmptyPassphrase,
    /// The file ends early.
    #[error("keystore is truncated: {actual} bytes, expected {expected}")]
    Truncated {
        /// Size a complete file has.
        expected: usize,
        /// Size found.
        actual: usize,
    },
    /// The checksum does not match: bytes changed on disk or in transit.
    #[error("keystore is corrupted or was modified (checksum mismatch)")]
    Corrupted,
    /// The checksum matches and the passphrase is right, yet the ciphertext does not
    /// authenticate: someone rewrote the file deliberately.
    #[error("keystore was tampered with: the ciphertext does not authenticate")]
    Tampered,
    /// Not a Meshara keystore or bundle at all.
    #[error("not a Meshara keystore (bad magic bytes)")]
    NotAKeystore,
    /// A bundle where a keystore was expected, or the reverse.
    #[error("this is a Meshara {found}, not a {expected}")]
    WrongKind {
        /// What was expected.
        expected: &'static str,
        /// What was found.
        found: &'static str,
    },
    /// A newer format this build cannot read.
    #[error("keystore format version {0} is not supported (this build reads version 1)")]
    UnsupportedVersion(u8),
    /// A KDF this build does not know.
    #[error("keystore key-derivation function {0} is not supported")]
    UnsupportedKdf(u8),
    /// Argon2id parameters outside the accepted range.
    #[error("Argon2id parameters out of range: {0}")]
    InvalidKdfParams(String),
    /// The bundle text is not valid armor or base64.
    #[error("identity bundle is malformed: {0}")]
    MalformedBundle(String),
    /// A passphrase file that is not a regular file, or that other users may read or write.
    #[error("passphrase file {path}: {reason}")]
    InsecurePassphraseFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading or writing failed.
    #[error("keystore I/O error on {path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// Reads a keystore passphrase from `path`: the file's content without trailing newlines.
/// Refused when it is not a regular file, when other users may read or write it (any `o+rwx`
/// bit: make it 0600, or 0640 for a group such as a Kubernetes secret's `defaultMode: 0440`),
/// or when it is empty. Errors never include the content.
pub fn read_passphrase_file(path: &Path) -> Result<Vec<u8>, KeystoreError> {
    use std::os::unix::fs::PermissionsExt;
    let insecure = |reason: String| KeystoreError::InsecurePassphraseFile {
        path: path.to_owned(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(io_err(path))?;
    if !meta.is_file() {
        return Err(insecure("not a regular file".to_owned()));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o007 != 0 {
        return Err(insecure(format!(
            "mode {mode:o} lets every user of this machine read it; chmod 600 (or 640)"
        )));
    }
    let mut text = std::fs::read(path).map_err(io_err(path))?;
    while matches!(text.last(), Some(b'\n' | b'\r')) {
        text.pop();
    }
    if text.is_empty() {
        return Err(KeystoreError::EmptyPassphrase);
    }
    Ok(text)
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> KeystoreError + '_ {
    move |source| KeystoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Argon2id cost parameters, stored in every file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Default for KdfParams {
    /// 64 MiB, 3 passes, 1 lane: about a quarter second on the reference 2-core machine.
    fn default() -> Self {
        Self {
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 1,
        }
    }
}

impl KdfParams {
    /// Smallest memory cost accepted (8 MiB).
    pub const MIN_MEMORY_KIB: u32 = 8 * 1024;
    /// Largest memory cost accepted when reading a file (2 GiB), so a hostile file cannot
    /// exhaust memory.
    pub const MAX_MEMORY_KIB: u32 = 2 * 1024 * 1024;
    /// Largest pass count accepted.
    pub const MAX_ITERATIONS: u32 = 64;
    /// Largest lane count accepted.
    pub const MAX_PARALLELISM: u32 = 16;

    /// The cheapest parameters accepted: 8 MiB, 1 pass. For tests and devnets only.
    pub fn minimum() -> Self {
        Self {
            memory_kib: Self::MIN_MEMORY_KIB,
            iterations: 1,
            parallelism: 1,
        }
    }

    fn check(&self) -> Result<(), KeystoreError> {
        let bad = |what: String| Err(KeystoreError::InvalidKdfParams(what));
        if !(Self::MIN_MEMORY_KIB..=Self::MAX_MEMORY_KIB).contains(&self.memory_kib) {
            return bad(format!(
                "memory {} KiB outside {}..={}",
                self.memory_kib,
                Self::MIN_MEMORY_KIB,
                Self::MAX_MEMORY_KIB
            ));
        }
        if !(1..=Self::MAX_ITERATIONS).contains(&self.iterations) {
            return bad(format!(
                "iterations {} outside 1..={}",
                self.iterations,
                Self::MAX_ITERATIONS
            ));
        }
        if !(1..=Self::MAX_PARALLELISM).contains(&self.parallelism) {
            return bad(format!(
                "parallelism {} outside 1..={}",
                self.parallelism,
                Self::MAX_PARALLELISM
            ));
        }
        if self.memory_kib < 8 * self.parallelism {
            return bad("memory must be at least 8 KiB per lane".into());
        }
        Ok(())
    }

    fn stretch(
        &self,
        passphrase: &[u8],
        salt: &[u8],
    ) -> Result<Zeroizing<[u8; 32]>, KeystoreError> {
        let params = Params::new(self.memory_kib, self.iterations, self.parallelism, Some(32))
            .map_err(|e| KeystoreError::InvalidKdfParams(e.to_string()))?;
        let mut out = Zeroizing::new([0u8; 32]);
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into(passphrase, salt, &mut out[..])
            .map_err(|e| KeystoreError::InvalidKdfParams(e.to_string()))?;
        Ok(out)
    }
}

fn kind_name(kind: u8) -> &'static str {
    match kind {
        KIND_KEYSTORE => "keystore",
        KIND_BUNDLE => "identity bundle",
        _ => "unknown file kind",
    }
}

/// Serializes an identity into the encrypted binary format.
fn seal_identity(
    identity: &Identity,
    created_at: u64,
    passphrase: &[u8],
    params: KdfParams,
    kind: u8,
) -> Result<Vec<u8>, KeystoreError> {
    if passphrase.is_empty() {
        return Err(KeystoreError::EmptyPassphrase);
    }
    params.check()?;
    let mut salt = [0u8; SALT_LEN];
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut salt);
    OsRng.fill_bytes(&mut nonce);
    let master = params.stretch(passphrase, &salt)?;
    let key = Zeroizing::new(derive(labels::KEYSTORE_KEY, &[&master[..]]));
    let verifier = derive(labels::KEYSTORE_VERIFIER, &[&master[..]]);

    let mut out = Vec::with_capacity(FILE_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&[kind, FORMAT_VERSION, KDF_ARGON2ID, 0]);
    out.extend_from_slice(&params.memory_kib.to_le_bytes());
    out.extend_from_slice(&params.iterations.to_le_bytes());
    out.extend_from_slice(&params.parallelism.to_le_bytes());
    out.extend_from_slice(&salt);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&verifier);
    out.extend_from_slice(&((SECRETS_LEN + TAG_LEN) as u32).to_le_bytes());
    debug_assert_eq!(out.len(), HEADER_LEN);

    let (seed, scalar) = identity.secret_bytes();
    let mut secrets = Zeroizing::new(Vec::with_capacity(SECRETS_LEN + TAG_LEN));
    secrets.extend_from_slice(&seed[..]);
    secrets.extend_from_slice(&scalar[..]);
    secrets.extend_from_slice(&created_at.to_le_bytes());
    seal_with_nonce(&key, &nonce, &out, &mut secrets);
    out.extend_from_slice(&secrets);
    let checksum = blake3::hash(&out);
    out.extend_from_slice(checksum.as_bytes());
    Ok(out)
}

fn seal_with_nonce(key: &[u8; 32], nonce: &[u8; NONCE_LEN], ad: &[u8], buf: &mut Vec<u8>) {
    use chacha20poly1305::aead::{AeadInPlace, KeyInit};
    use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
    let cipher = ChaCha20Poly1305::new(Key::from_slice(key));
    #[allow(clippy::expect_used)]
    let tag = cipher
        .encrypt_in_place_detached(Nonce::from_slice(nonce), ad, buf)
        .expect("72-byte plaintext is within limits");
    buf.extend_from_slice(&tag);
}

fn open_with_nonce(
    key: &[u8; 32],
    nonce: &[u8],
    ad: &[u8],
    ciphertext: &[u8],
) -> Option<Zeroizing<Vec<u8>>> {
    use chacha20poly1305::aead::{AeadInPlace, KeyInit};
    use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};
    let (body, tag) = ciphertext.split_at(ciphertext.len().checked_sub(TAG_LEN)?);
    let mut buf = Zeroizing::new(body.to_vec());
    ChaCha20Poly1305::new(Key::from_slice(key))
        .decrypt_in_place_detached(Nonce::from_slice(nonce), ad, &mut buf, Tag::from_slice(tag))
        .ok()?;
    Some(buf)
}

/// An identity read back from a keystore, with when it was created.
#[derive(Debug)]
pub struct Unlocked {
    /// The identity.
    pub identity: Identity,
    /// Unix seconds when the identity was first saved.
    pub created_at: u64,
    /// The parameters the file was sealed with (see [`KdfParams`]).
    pub params: KdfParams,
}

/// Parses and decrypts the binary format. Every check that does not need the passphrase runs
/// first, so damage is reported as damage, not as a wrong passphrase.
pub fn parse(
    bytes: &[u8],
    passphrase: &[u8],
    expected_kind: u8,
) -> Result<Unlocked, KeystoreError> {
    if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
        if bytes.len() < MAGIC.len() && MAGIC.starts_with(bytes) {
            return Err(KeystoreError::Truncated {
                expected: FILE_LEN,
                actual: bytes.len(),
            });
        }
        return Err(KeystoreError::NotAKeystore);
    }
    if bytes.len() < HEADER_LEN {
        return Err(KeystoreError::Truncated {
            expected: FILE_LEN,
            actual: bytes.len(),
        });
    }
    let kind = bytes[8];
    if kind != expected_kind {
        return Err(KeystoreError::WrongKind {
            expected: kind_name(expected_kind),
            found: kind_name(kind),
        });
    }
    if bytes[9] != FORMAT_VERSION {
        return Err(KeystoreError::UnsupportedVersion(bytes[9]));
    }
    if bytes[10] != KDF_ARGON2ID {
        return Err(KeystoreError::UnsupportedKdf(bytes[10]));
    }
    let u32_at =
        |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let params = KdfParams {
        memory_kib: u32_at(12),
        iterations: u32_at(16),
        parallelism: u32_at(20),
    };
    let ct_len = u32_at(HEADER_LEN - 4) as usize;
    let expected = HEADER_LEN
        .saturating_add(ct_len)
        .saturating_add(CHECKSUM_LEN);
    if bytes.len() < expected {
        return Err(KeystoreError::Truncated {
            expected,
            actual: bytes.len(),
        });
    }
    let (body, checksum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
    if bytes.len() != expected || !bool::from(blake3::hash(body).as_bytes().ct_eq(checksum)) {
        return Err(KeystoreError::Corrupted);
    }
    if ct_len != SECRETS_LEN + TAG_LEN || bytes[11] != 0 {
        // Checksum is fine but the layout is not version 1's: deliberately crafted.
        return Err(KeystoreError::Tampered);
    }
    params.check()?;
    if passphrase.is_empty() {
        return Err(KeystoreError::EmptyPassphrase);
    }
    let salt = &bytes[24..24 + SALT_LEN];
    let nonce = &bytes[40..40 + NONCE_LEN];
    let verifier = &bytes[52..52 + VERIFIER_LEN];
    let master = params.stretch(passphrase, salt)?;
    let expected_verifier = derive(labels::KEYSTORE_VERIFIER, &[&master[..]]);
    if !bool::from(expected_verifier.ct_eq(verifier)) {
        return Err(KeystoreError::WrongPassphrase);
    }
    let key = Zeroizing::new(derive(labels::KEYSTORE_KEY, &[&master[..]]));
    let secrets = open_with_nonce(&key, nonce, &bytes[..HEADER_LEN], &body[HEADER_LEN..])
        .ok_or(KeystoreError::Tampered)?;
    let mut seed = Zeroizing::new([0u8; 32]);
    let mut scalar = Zeroizing::new([0u8; 32]);
    seed.copy_from_slice(&secrets[..32]);
    scalar.copy_from_slice(&secrets[32..64]);
    let mut created = [0u8; 8];
    created.copy_from_slice(&secrets[64..72]);
    Ok(Unlocked {
        identity: Identity::from_secret_bytes(&seed, &scalar),
        created_at: u64::from_le_bytes(created),
        params,
    })
}

/// Parses a keystore file's bytes (for tools and fuzzing; [`Keystore::load`] reads the file).
pub fn parse_keystore(bytes: &[u8], passphrase: &[u8]) -> Result<Unlocked, KeystoreError> {
    parse(bytes, passphrase, KIND_KEYSTORE)
}

/// A keystore file on disk.
///
/// ```no_run
/// use meshara_core::{Identity, KdfParams, Keystore};
/// let store = Keystore::new("/var/lib/meshara/identity.key");
/// let (identity, created) = store.load_or_create(b"correct horse", KdfParams::default(), 0)?;
/// # Ok::<(), meshara_core::KeystoreError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Keystore {
    path: PathBuf,
}

impl Keystore {
    /// A keystore at `path` (nothing is read until [`Keystore::load`]).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The file path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a file exists at the path.
    pub fn exists(&self) -> bool {
        self.path.exists()
    }

    /// Reads and decrypts the identity. Refuses files readable by group or others.
    pub fn load(&self, passphrase: &[u8]) -> Result<Unlocked, KeystoreError> {
        let meta = match fs::metadata(&self.path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(KeystoreError::NotFound(self.path.clone()));
            }
            Err(e) => return Err(io_err(&self.path)(e)),
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeystoreError::InsecurePermissions {
                path: self.path.clone(),
                mode,
            });
        }
        // Read at most one byte more than a valid file, so a huge file cannot exhaust memory.
        let bytes = read_limited(&self.path, FILE_LEN + 1)?;
        parse_keystore(&bytes, passphrase)
    }

    /// Saves a new identity; fails with [`KeystoreError::AlreadyExists`] if a file is there.
    pub fn create(
        &self,
        identity: &Identity,
        passphrase: &[u8],
        params: KdfParams,
        created_at: u64,
    ) -> Result<(), KeystoreError> {
        if self.path.exists() {
            return Err(KeystoreError::AlreadyExists(self.path.clone()));
        }
        let bytes = seal_identity(identity, created_at, passphrase, params, KIND_KEYSTORE)?;
        StagedWrite::stage(&self.path, &bytes)?.commit_new()
    }

    /// Writes the identity atomically, replacing any previous file (to change the passphrase
    /// or raise the parameters). A crash at any point leaves the old or the new file, whole.
    pub fn save(
        &self,
        identity: &Identity,
        passphrase: &[u8],
        params: KdfParams,
        created_at: u64,
    ) -> Result<(), KeystoreError> {
        let bytes = seal_identity(identity, created_at, passphrase, params, KIND_KEYSTORE)?;
        StagedWrite::stage(&self.path, &bytes)?.commit()
    }

    /// Loads the identity, or creates and saves a new one if, and only if, no file exists.
    /// Any other failure (wrong passphrase, damage) is returned, never papered over.
    /// Returns the identity and whether it was just created.
    pub fn load_or_create(
        &self,
        passphrase: &[u8],
        params: KdfParams,
        now: u64,
    ) -> Result<(Identity, bool), KeystoreError> {
        match self.load(passphrase) {
            Ok(unlocked) => Ok((unlocked.identity, false)),
            Err(KeystoreError::NotFound(_)) => {
                let identity = Identity::generate();
                self.create(&identity, passphrase, params, now)?;
                Ok((identity, true))
            }
            Err(e) => Err(e),
        }
    }
}

fn read_limited(path: &Path, limit: usize) -> Result<Vec<u8>, KeystoreError> {
    use std::io::Read;
    let file = File::open(path).map_err(io_err(path))?;
    let mut bytes = Vec::with_capacity(FILE_LEN);
    file.take(limit as u64)
        .read_to_end(&mut bytes)
        .map_err(io_err(path))?;
    Ok(bytes)
}

/// A fully written and fsynced temporary file next to its destination, not yet renamed.
/// Dropping it without [`StagedWrite::commit`] removes the temporary file.
pub(crate) struct StagedWrite {
    temp: PathBuf,
    dest: PathBuf,
    committed: bool,
}

impl StagedWrite {
    pub(crate) fn stage(dest: &Path, bytes: &[u8]) -> Result<Self, KeystoreError> {
        let dir = match dest.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
            _ => PathBuf::from("."),
        };
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(io_err(&dir))?;
        } else if let Ok(meta) = fs::metadata(&dir) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(dir = %dir.display(), mode = format_args!("{mode:o}"), "keystore directory is accessible to group or others; 0700 is recommended");
            }
        }
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "keystore".into());
        let mut suffix = [0u8; 6];
        OsRng.fill_bytes(&mut suffix);
        let temp = dir.join(format!(".{name}.tmp-{}", HEXLOWER.encode(&suffix)));
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .map_err(io_err(&temp))?;
        let staged = Self {
            temp,
            dest: dest.to_owned(),
            committed: false,
        };
        file.write_all(bytes).map_err(io_err(&staged.temp))?;
        file.sync_all().map_err(io_err(&staged.temp))?;
        Ok(staged)
    }

    /// Atomically replaces the destination.
    pub(crate) fn commit(mut self) -> Result<(), KeystoreError> {
        fs::rename(&self.temp, &self.dest).map_err(io_err(&self.dest))?;
        self.committed = true;
        self.sync_dir()
    }

    /// Atomically creates the destination, failing if it exists (even if another process
    /// created it after our check): a hard link never replaces an existing name.
    pub(crate) fn commit_new(self) -> Result<(), KeystoreError> {
        match fs::hard_link(&self.temp, &self.dest) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(KeystoreError::AlreadyExists(self.dest.clone()));
            }
            Err(e) => return Err(io_err(&self.dest)(e)),
        }
        // Dropping removes the temporary name; the destination keeps the data.
        let result = self.sync_dir();
        drop(self);
        result
    }

    fn sync_dir(&self) -> Result<(), KeystoreError> {
        if let Some(dir) = self.dest.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(dir))?;
        }
        Ok(())
    }
}

impl Drop for StagedWrite {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

impl Identity {
    /// Exports this identity as a passphrase-protected, ASCII-armored bundle for moving it to
    /// another machine. Same encryption as the keystore; a different file kind, so a bundle is
    /// never mistaken for a keystore.
    pub fn export_bundle(
        &self,
        passphrase: &[u8],
        params: KdfParams,
        created_at: u64,
    ) -> Result<String, KeystoreError> {
        let bytes = seal_identity(self, created_at, passphrase, params, KIND_BUNDLE)?;
        let encoded = BASE64.encode(&bytes);
        let mut out = String::with_capacity(encoded.len() + 100);
        out.push_str(ARMOR_BEGIN);
        out.push('\n');
        for line in encoded.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
        out.push_str(ARMOR_END);
        out.push('\n');
        Ok(out)
    }

    /// Imports a bundle made by [`Identity::export_bundle`].
    pub fn import_bundle(armored: &str, passphrase: &[u8]) -> Result<Unlocked, KeystoreError> {
        if armored.len() > 4096 {
            return Err(KeystoreError::MalformedBundle(
                "longer than any valid bundle".into(),
            ));
        }
        let body = armored
            .trim()
            .strip_prefix(ARMOR_BEGIN)
            .and_then(|rest| rest.strip_suffix(ARMOR_END))
            .ok_or_else(|| {
                KeystoreError::MalformedBundle(format!("expected {ARMOR_BEGIN} … {ARMOR_END}"))
            })?;
        let compact: String = body.chars().filter(|c| !c.is_whitespace()).collect();
        let bytes = BASE64
            .decode(compact.as_bytes())
            .map_err(|e| KeystoreError::MalformedBundle(e.to_string()))?;
        parse(&bytes, passphrase, KIND_BUNDLE)
    }
}

/// Bundle kind byte, exposed for the fuzz targets and tests.
#[doc(hidden)]
pub const BUNDLE_KIND: u8 = KIND_BUNDLE;

#[cfg(test)]
mod tests {

    #[test]
    fn passphrase_files_must_be_private_regular_and_non_empty() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passphrase");
        std::fs::write(&path, "correct horse\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(read_passphrase_file(&path).unwrap(), b"correct horse");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_passphrase_file(&path).unwrap_err().to_string();
        assert!(e.contains("644") && !e.contains("horse"), "{e}");
        std::fs::write(&path, "\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            read_passphrase_file(&path),
            Err(KeystoreError::EmptyPassphrase)
        ));
        assert!(read_passphrase_file(dir.path()).is_err());
    }

    use super::*;

    const PASS: &[u8] = b"correct horse battery staple";

    fn fast() -> KdfParams {
        KdfParams::minimum()
    }

    fn saved() -> (tempfile::TempDir, Keystore, Identity) {
        let dir = tempfile::tempdir().unwrap();
        let store = Keystore::new(dir.path().join("keys/identity.key"));
        let id = Identity::generate();
        store.create(&id, PASS, fast(), 1234).unwrap();
        (dir, store, id)
    }

    #[test]
    fn round_trip_and_permissions() {
        let (_dir, store, id) = saved();
        let unlocked = store.load(PASS).unwrap();
        assert_eq!(unlocked.identity.node_id(), id.node_id());
        assert_eq!(unlocked.identity.x25519_public(), id.x25519_public());
        assert_eq!(unlocked.created_at, 1234);
        assert_eq!(unlocked.params, fast());
        let file_mode = fs::metadata(store.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(file_mode, 0o600);
        let dir_mode = fs::metadata(store.path().parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        assert_eq!(fs::read(store.path()).unwrap().len(), FILE_LEN);
    }

    #[test]
    fn wrong_passphrase_is_its_own_error() {
        let (_dir, store, _) = saved();
        assert!(matches!(
            store.load(b"wrong"),
            Err(KeystoreError::WrongPassphrase)
        ));
        assert!(matches!(
            store.load(b""),
            Err(KeystoreError::EmptyPassphrase)
        ));
        // And nothing was touched.
        assert!(store.load(PASS).is_ok());
    }

    #[test]
    fn truncation_at_every_length_is_reported() {
        let (_dir, store, _) = saved();
        let bytes = fs::read(store.path()).unwrap();
        for len in 0..bytes.len() {
            match parse_keystore(&bytes[..len], PASS) {
                Err(KeystoreError::Truncated { actual, .. }) => assert_eq!(actual, len),
                other => panic!("length {len}: {other:?}"),
            }
        }
    }

    #[test]
    fn every_bit_flip_is_detected_as_damage() {
        let (_dir, store, _) = saved();
        let bytes = fs::read(store.path()).unwrap();
        for i in 0..bytes.len() {
            let mut copy = bytes.clone();
            copy[i] ^= 0x04;
            let err = parse_keystore(&copy, PASS).unwrap_err();
            let expected = match i {
                0..=7 => matches!(err, KeystoreError::NotAKeystore),
                8 => matches!(err, KeystoreError::WrongKind { .. }),
                9 => matches!(err, KeystoreError::UnsupportedVersion(_)),
                10 => matches!(err, KeystoreError::UnsupportedKdf(_)),
                // The ciphertext length field: the file no longer has the announced size.
                i if (HEADER_LEN - 4..HEADER_LEN).contains(&i) => {
                    matches!(
                        err,
                        KeystoreError::Truncated { .. } | KeystoreError::Corrupted
                    )
                }
                _ => matches!(err, KeystoreError::Corrupted),
            };
            assert!(expected, "flip at byte {i}: {err:?}");
        }
    }

    #[test]
    fn deliberate_tampering_with_a_fixed_checksum_is_caught() {
        let (_dir, store, _) = saved();
        let mut bytes = fs::read(store.path()).unwrap();
        let n = bytes.len();
        bytes[HEADER_LEN + 5] ^= 1;
        let checksum = blake3::hash(&bytes[..n - CHECKSUM_LEN]);
        bytes[n - CHECKSUM_LEN..].copy_from_slice(checksum.as_bytes());
        assert!(matches!(
            parse_keystore(&bytes, PASS),
            Err(KeystoreError::Tampered)
        ));
        // Raising the parameters in the header changes the derived key: also caught.
        let mut bytes = fs::read(store.path()).unwrap();
        bytes[16] = 2;
        let checksum = blake3::hash(&bytes[..n - CHECKSUM_LEN]);
        bytes[n - CHECKSUM_LEN..].copy_from_slice(checksum.as_bytes());
        assert!(matches!(
            parse_keystore(&bytes, PASS),
            Err(KeystoreError::WrongPassphrase)
        ));
    }

    #[test]
    fn hostile_parameters_are_refused_before_hashing() {
        let (_dir, store, _) = saved();
        let mut bytes = fs::read(store.path()).unwrap();
        let n = bytes.len();
        bytes[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        let checksum = blake3::hash(&bytes[..n - CHECKSUM_LEN]);
        bytes[n - CHECKSUM_LEN..].copy_from_slice(checksum.as_bytes());
        assert!(matches!(
            parse_keystore(&bytes, PASS),
            Err(KeystoreError::InvalidKdfParams(_))
        ));
        assert!(matches!(
            Keystore::new("/nonexistent/x").save(
                &Identity::generate(),
                PASS,
                KdfParams {
                    memory_kib: 1,
                    ..fast()
                },
                0
            ),
            Err(KeystoreError::InvalidKdfParams(_))
        ));
    }

    #[test]
    fn group_readable_files_are_refused() {
        let (_dir, store, _) = saved();
        fs::set_permissions(store.path(), fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            store.load(PASS),
            Err(KeystoreError::InsecurePermissions { mode: 0o640, .. })
        ));
        fs::set_permissions(store.path(), fs::Permissions::from_mode(0o604)).unwrap();
        assert!(matches!(
            store.load(PASS),
            Err(KeystoreError::InsecurePermissions { .. })
        ));
        fs::set_permissions(store.path(), fs::Permissions::from_mode(0o600)).unwrap();
        assert!(store.load(PASS).is_ok());
    }

    #[test]
    fn create_never_overwrites_and_load_or_create_never_replaces() {
        let (_dir, store, id) = saved();
        let before = fs::read(store.path()).unwrap();
        assert!(matches!(
            store.create(&Identity::generate(), PASS, fast(), 0),
            Err(KeystoreError::AlreadyExists(_))
        ));
        assert!(matches!(
            store.load_or_create(b"wrong", fast(), 0),
            Err(KeystoreError::WrongPassphrase)
        ));
        let mut damaged = before.clone();
        damaged[100] ^= 1;
        fs::write(store.path(), &damaged).unwrap();
        assert!(matches!(
            store.load_or_create(PASS, fast(), 0),
            Err(KeystoreError::Corrupted)
        ));
        assert_eq!(
            fs::read(store.path()).unwrap(),
            damaged,
            "damaged file left for the operator"
        );
        fs::write(store.path(), &before).unwrap();
        let (loaded, created) = store.load_or_create(PASS, fast(), 0).unwrap();
        assert!(!created);
        assert_eq!(loaded.node_id(), id.node_id());
    }

    #[test]
    fn load_or_create_creates_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Keystore::new(dir.path().join("id.key"));
        let (a, created) = store.load_or_create(PASS, fast(), 0).unwrap();
        assert!(created);
        let (b, created) = store.load_or_create(PASS, fast(), 0).unwrap();
        assert!(!created);
        assert_eq!(a.node_id(), b.node_id());
    }

    #[test]
    fn crash_between_write_and_rename_keeps_the_old_identity() {
        let (dir, store, old) = saved();
        let replacement = Identity::generate();
        let bytes = seal_identity(&replacement, 0, b"new pass", fast(), KIND_KEYSTORE).unwrap();
        // Crash after the temp file is complete and fsynced, before rename: the process dies,
        // so nothing runs the cleanup.
        let staged = StagedWrite::stage(store.path(), &bytes).unwrap();
        std::mem::forget(staged);
        // Crash in the middle of writing a temp file.
        let partial = store
            .path()
            .parent()
            .unwrap()
            .join(".identity.key.tmp-partial");
        fs::write(&partial, &bytes[..bytes.len() / 2]).unwrap();
        let leftovers = fs::read_dir(store.path().parent().unwrap())
            .unwrap()
            .count();
        assert_eq!(leftovers, 3);
        assert_eq!(store.load(PASS).unwrap().identity.node_id(), old.node_id());
        // A later save still succeeds and replaces the identity whole.
        store.save(&replacement, b"new pass", fast(), 0).unwrap();
        assert_eq!(
            store.load(b"new pass").unwrap().identity.node_id(),
            replacement.node_id()
        );
        drop(dir);
    }

    #[test]
    fn create_loses_a_race_cleanly() {
        let (_dir, store, id) = saved();
        // Another process created the file after our existence check.
        let bytes = seal_identity(&Identity::generate(), 0, PASS, fast(), KIND_KEYSTORE).unwrap();
        let staged = StagedWrite::stage(store.path(), &bytes).unwrap();
        assert!(matches!(
            staged.commit_new(),
            Err(KeystoreError::AlreadyExists(_))
        ));
        assert_eq!(store.load(PASS).unwrap().identity.node_id(), id.node_id());
        assert_eq!(
            fs::read_dir(store.path().parent().unwrap())
                .unwrap()
                .count(),
            1
        );
    }

    #[test]
    fn aborted_stage_cleans_up() {
        let (_dir, store, _) = saved();
        drop(StagedWrite::stage(store.path(), b"junk").unwrap());
        assert_eq!(
            fs::read_dir(store.path().parent().unwrap())
                .unwrap()
                .count(),
            1
        );
    }

    #[test]
    fn bundle_round_trip_and_kind_separation() {
        let id = Identity::generate();
        let bundle = id.export_bundle(PASS, fast(), 99).unwrap();
        assert!(bundle.starts_with(ARMOR_BEGIN));
        let back = Identity::import_bundle(&bundle, PASS).unwrap();
        assert_eq!(back.identity.node_id(), id.node_id());
        assert_eq!(back.created_at, 99);
        assert!(matches!(
            Identity::import_bundle(&bundle, b"nope"),
            Err(KeystoreError::WrongPassphrase)
        ));
        assert!(matches!(
            Identity::import_bundle("garbage", PASS),
            Err(KeystoreError::MalformedBundle(_))
        ));
        let truncated = format!("{ARMOR_BEGIN}\nTUVTSEFSQRo=\n{ARMOR_END}");
        assert!(matches!(
            Identity::import_bundle(&truncated, PASS),
            Err(KeystoreError::Truncated { .. })
        ));
        // A bundle's bytes are not accepted as a keystore.
        let body: String = bundle.lines().filter(|l| !l.starts_with("-----")).collect();
        let raw = BASE64.decode(body.as_bytes()).unwrap();
        assert!(matches!(
            parse_keystore(&raw, PASS),
            Err(KeystoreError::WrongKind { .. })
        ));
    }
}
