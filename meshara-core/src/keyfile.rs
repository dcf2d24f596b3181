//! Key files made by other tools.
//!
//! - A node's identity as an Ed25519 private key in PEM (PKCS#8, `-----BEGIN PRIVATE KEY-----`),
//!   as `openssl genpkey -algorithm ed25519` and Helm's `genPrivateKey "ed25519"` write it:
//!   [`read_identity_file`]. The file is not encrypted, so it must be protected by its
//!   permissions (or by being a Kubernetes Secret); files that every user may read are refused.
//!   The X25519 key is derived from the Ed25519 seed ([`Identity::from_ed25519_seed`]).
//! - A peer's NodeId given as a PEM certificate (an Ed25519 key in an X.509 certificate, such
//!   as Helm's `genSelfSignedCertWithKey` makes), a PEM public key (SubjectPublicKeyInfo) or a
//!   NodeId in text: [`read_node_id_file`]. Configuration takes `file:PATH` wherever it takes
//!   a NodeId ([`resolve_node_id`]), so a deployment can pin a peer without anyone copying its
//!   NodeId by hand.
//!
//! ```
//! use meshara_core::keyfile::node_id_from_pem;
//!
//! let pem = "-----BEGIN PUBLIC KEY-----\n\
//!            MCowBQYDK2VwAyEA6Qq1MTZZiK7/NouTi3KCmStuQL3emB6P6ZYIfFWw5ZE=\n\
//!            -----END PUBLIC KEY-----\n";
//! let id = node_id_from_pem(pem.as_bytes()).unwrap();
//! assert_eq!(id.as_bytes()[..2], [0xe9, 0x0a]);
//! ```

use std::io::Read;
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use rustls_pki_types::pem::SectionKind;
use zeroize::Zeroizing;

use crate::{Identity, IdentityError, NodeId};

/// Largest key or certificate file read (a PEM Ed25519 certificate is under 1 KiB).
pub const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

/// The prefix that makes a NodeId reference a file: `file:/etc/meshara/peers/seed-0.crt`.
pub const FILE_PREFIX: &str = "file:";

/// Why a key file was refused. Messages name the file and never include key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A private key file that other users of the machine may read (or that is not a regular
    /// file).
    #[error("refusing the key file {path}: {reason}")]
    Insecure {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Larger than [`MAX_KEY_FILE_BYTES`].
    #[error("{path} is larger than {MAX_KEY_FILE_BYTES} bytes: not a key file")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The content is not what was expected (no PEM section of the right kind, a key of
    /// another algorithm, a damaged certificate).
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What was expected and found.
        reason: String,
    },
    /// Text that is neither a NodeId nor `file:PATH`.
    #[error(transparent)]
    NodeId(#[from] IdentityError),
}

/// Reads a node identity from an Ed25519 private key in PEM (PKCS#8 v1 or v2).
///
/// Refused when the file is not a regular file, when other users may read or write it (any
/// `o+rwx` bit; `0600`, or `0640`/`0440` for a group such as a Kubernetes Secret mounted with
/// `defaultMode: 0440`), when it is larger than [`MAX_KEY_FILE_BYTES`], or when it holds no
/// Ed25519 private key.
pub fn read_identity_file(path: &Path) -> Result<Identity, KeyFileError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(io_err(path))?;
    let insecure = |reason: String| KeyFileError::Insecure {
        path: path.to_owned(),
        reason,
    };
    if !meta.is_file() {
        return Err(insecure("not a regular file".to_owned()));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o007 != 0 {
        return Err(insecure(format!(
            "mode {mode:o} lets every user of this machine read it; chmod 600 (or 640)"
        )));
    }
    let bytes = Zeroizing::new(read_limited(path)?);
    identity_from_pem(&bytes).map_err(|reason| KeyFileError::Invalid {
        path: path.to_owned(),
        reason,
    })
}

/// Parses a node identity from PEM text holding an Ed25519 private key (PKCS#8).
pub fn identity_from_pem(pem: &[u8]) -> Result<Identity, String> {
    let mut reader = pem;
    let mut other = None;
    loop {
        match rustls_pki_types::pem::from_buf(&mut reader) {
            Ok(Some((SectionKind::PrivateKey, der))) => {
                let der = Zeroizing::new(der);
                let key = SigningKey::from_pkcs8_der(&der).map_err(|e| {
                    format!("the PRIVATE KEY is not an Ed25519 key in PKCS#8 ({e})")
                })?;
                let seed = Zeroizing::new(key.to_bytes());
                return Ok(Identity::from_ed25519_seed(&seed));
            }
            Ok(Some((kind, _))) => other = Some(kind),
            Ok(None) => break,
            Err(e) => return Err(format!("not valid PEM ({e})")),
        }
    }
    Err(match other {
        Some(kind) => format!(
            "holds a {kind:?} section but no Ed25519 PRIVATE KEY (PKCS#8): make one with \
             `openssl genpkey -algorithm ed25519`"
        ),
        None => "no PEM section: expected -----BEGIN PRIVATE KEY-----".to_owned(),
    })
}

/// Reads a peer's NodeId from a file: a PEM certificate with an Ed25519 key, a PEM public key,
/// or a NodeId as text (base32 or hex). A private key is refused: pin peers with public data.
pub fn read_node_id_file(path: &Path) -> Result<NodeId, KeyFileError> {
    let bytes = read_limited(path)?;
    node_id_from_pem(&bytes).map_err(|reason| KeyFileError::Invalid {
        path: path.to_owned(),
        reason,
    })
}

/// Parses a NodeId from a PEM certificate or public key, or from a NodeId as text.
pub fn node_id_from_pem(bytes: &[u8]) -> Result<NodeId, String> {
    let mut reader = bytes;
    let mut sections = 0;
    loop {
        match rustls_pki_types::pem::from_buf(&mut reader) {
            Ok(Some((SectionKind::Certificate, der))) => {
                let der = rustls_pki_types::CertificateDer::from(der);
                let cert = webpki::EndEntityCert::try_from(&der)
                    .map_err(|e| format!("not a valid X.509 certificate ({e})"))?;
                let spki = cert.subject_public_key_info();
                return public_key(&spki, "certificate");
            }
            Ok(Some((SectionKind::PublicKey, der))) => return public_key(&der, "PUBLIC KEY"),
            Ok(Some((
                SectionKind::PrivateKey | SectionKind::EcPrivateKey | SectionKind::RsaPrivateKey,
                _,
            ))) => {
                return Err(
                    "holds a private key: pin a peer with its certificate or public key".into(),
                );
            }
            Ok(Some(_)) => sections += 1,
            Ok(None) => break,
            Err(e) => return Err(format!("not valid PEM ({e})")),
        }
    }
    if sections > 0 {
        return Err("holds no CERTIFICATE or PUBLIC KEY section".into());
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|_| "neither PEM nor a NodeId in text".to_owned())?
        .trim();
    text.parse::<NodeId>()
        .map_err(|_| "neither PEM (CERTIFICATE or PUBLIC KEY) nor a NodeId in text".to_owned())
}

fn public_key(spki_der: &[u8], what: &str) -> Result<NodeId, String> {
    let key = VerifyingKey::from_public_key_der(spki_der)
        .map_err(|e| format!("the {what} does not hold an Ed25519 public key ({e})"))?;
    NodeId::from_bytes(key.as_bytes()).map_err(|e| format!("the {what}'s key: {e}"))
}

/// A NodeId from configuration text: a NodeId, or `file:PATH` naming a file that
/// [`read_node_id_file`] accepts.
pub fn resolve_node_id(text: &str) -> Result<NodeId, KeyFileError> {
    match text.strip_prefix(FILE_PREFIX) {
        Some(path) => read_node_id_file(Path::new(path)),
        None => Ok(text.parse::<NodeId>()?),
    }
}

fn read_limited(path: &Path) -> Result<Vec<u8>, KeyFileError> {
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    let mut bytes = Vec::new();
    file.take(MAX_KEY_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err(path))?;
    if bytes.len() as u64 > MAX_KEY_FILE_BYTES {
        return Err(KeyFileError::TooLarge {
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> KeyFileError + '_ {
    move |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey, spki::der::pem::LineEnding};
    use std::os::unix::fs::PermissionsExt;

    /// Made by Helm 4 (`genPrivateKey "ed25519"` and `genSelfSignedCertWithKey "seed-0" nil nil
    /// 36500 $key`): the key and its certificate must name the same NodeId.
    const HELM_KEY: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINLQzicpLn1sTkFxO05a8WJBGMvOKkB4Lm84fgZZ2vSR\n-----END PRIVATE KEY-----\n";
    const HELM_CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIBITCB1KADAgECAhEAtTqStGwWQIRzvEjug9b+TzAFBgMrZXAwETEPMA0GA1UE\nAxMGc2VlZC0wMCAXDTI2MTIwMzE1MjIzM1oYDzIxMjYxMTA5MTUyMjMzWjARMQ8w\nDQYDVQQDEwZzZWVkLTAwKjAFBgMrZXADIQDpCrUxNlmIrv82i5OLcoKZK25Avd6Y\nHo/plgh8VbDlkaM/MD0wDgYDVR0PAQH/BAQDAgWgMB0GA1UdJQQWMBQGCCsGAQUF\nBwMBBggrBgEFBQcDAjAMBgNVHRMBAf8EAjAAMAUGAytlcANBAF6VOQNnrMywfijX\n/fA/RUl8XnR7m8nhUhGim+izLp2/p6KQiDew1Ba1R94RC8MbPs/D8LnQhTcvqorW\neh95OA8=\n-----END CERTIFICATE-----\n";

    fn write(dir: &Path, name: &str, text: &[u8], mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn a_helm_key_and_its_certificate_name_the_same_node() {
        let dir = tempfile::tempdir().unwrap();
        let key = write(dir.path(), "k.pem", HELM_KEY.as_bytes(), 0o440);
        let cert = write(dir.path(), "k.crt", HELM_CERT.as_bytes(), 0o644);
        let identity = read_identity_file(&key).unwrap();
        let pinned = read_node_id_file(&cert).unwrap();
        assert_eq!(identity.node_id(), pinned);
        assert_eq!(
            resolve_node_id(&format!("file:{}", cert.display())).unwrap(),
            pinned
        );
        // The same file always gives the same identity, X25519 key included.
        let again = read_identity_file(&key).unwrap();
        assert_eq!(identity.x25519_public(), again.x25519_public());
    }

    #[test]
    fn openssl_style_keys_public_keys_and_text_ids_agree() {
        let dir = tempfile::tempdir().unwrap();
        let signing = SigningKey::from_bytes(&[7u8; 32]);
        let pem = signing.to_pkcs8_pem(LineEnding::LF).unwrap();
        let key = write(dir.path(), "id.pem", pem.as_bytes(), 0o600);
        let identity = read_identity_file(&key).unwrap();
        assert_eq!(
            identity.node_id().as_bytes(),
            signing.verifying_key().as_bytes()
        );
        let public = signing
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        let pub_file = write(dir.path(), "id.pub", public.as_bytes(), 0o644);
        assert_eq!(read_node_id_file(&pub_file).unwrap(), identity.node_id());
        let text = write(
            dir.path(),
            "id.txt",
            format!("{}\n", identity.node_id()).as_bytes(),
            0o644,
        );
        assert_eq!(read_node_id_file(&text).unwrap(), identity.node_id());
        assert_eq!(
            resolve_node_id(&identity.node_id().to_string()).unwrap(),
            identity.node_id()
        );
    }

    #[test]
    fn bad_key_files_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let open = write(dir.path(), "open.pem", HELM_KEY.as_bytes(), 0o644);
        let err = read_identity_file(&open).unwrap_err().to_string();
        assert!(err.contains("every user"), "{err}");
        let cert_as_key = write(dir.path(), "c.pem", HELM_CERT.as_bytes(), 0o600);
        let err = read_identity_file(&cert_as_key).unwrap_err().to_string();
        assert!(err.contains("no Ed25519 PRIVATE KEY"), "{err}");
        // An RSA/EC key in PKCS#8 is not an identity.
        let ec = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg3AVWiCQvgI4g7ylZ\n4tD9Gb3eP/S3272gi/wDKKRCJEKhRANCAASN+kFoNHda72PSkiZ47vA+R0GJiD1P\nzenvWtXZGMR4dqWOMD8gniG3Lkgn6+TMUoTHhuFYMZISykbikj666m3U\n-----END PRIVATE KEY-----\n";
        let ec = write(dir.path(), "ec.pem", ec.as_bytes(), 0o600);
        let err = read_identity_file(&ec).unwrap_err().to_string();
        assert!(err.contains("not an Ed25519 key"), "{err}");
        let garbage = write(dir.path(), "g.pem", b"\x00\xffnot pem", 0o600);
        assert!(read_identity_file(&garbage).is_err());
        let big = write(
            dir.path(),
            "big.pem",
            &vec![b'a'; MAX_KEY_FILE_BYTES as usize + 1],
            0o600,
        );
        assert!(matches!(
            read_identity_file(&big),
            Err(KeyFileError::TooLarge { .. })
        ));
        // A private key is never accepted as a peer pin, and garbage is not a NodeId.
        let key = write(dir.path(), "k.pem", HELM_KEY.as_bytes(), 0o600);
        let err = read_node_id_file(&key).unwrap_err().to_string();
        assert!(err.contains("private key"), "{err}");
        assert!(read_node_id_file(&garbage).is_err());
        let broken_cert = HELM_CERT.replace("MIIBITCB", "MIIBITCC");
        let broken = write(dir.path(), "b.crt", broken_cert.as_bytes(), 0o644);
        assert!(read_node_id_file(&broken).is_err());
        assert!(resolve_node_id("file:/nonexistent/peer.crt").is_err());
        assert!(resolve_node_id("not-a-node-id").is_err());
    }
}
