//! TLS 1.3 with raw Ed25519 public keys (RFC 7250) carrying Meshara identities.
//!
//! Both sides present their identity key as a raw `SubjectPublicKeyInfo` instead of an X.509
//! certificate, so there is nothing to issue, expire or parse beyond 44 fixed-layout bytes. The
//! TLS handshake signature proves possession of the key; the key *is* the [`NodeId`]. The dialer
//! checks that it reached the NodeId it meant to reach (inside the handshake, so a wrong key
//! fails the connection before any application byte is exchanged); the listener learns the
//! caller's NodeId from the client's key.
//!
//! The same configurations serve QUIC (quinn) and the TLS-over-byte-stream transport.

use std::sync::Arc;

use ed25519_dalek::Signature;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, SubjectPublicKeyInfoDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::{CertifiedKey, Signer, SigningKey};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error as TlsError,
    PeerIncompatible, SignatureAlgorithm, SignatureScheme,
};

use crate::identity::{Identity, NodeId};
use crate::wire::ALPN;

/// DER prefix of an Ed25519 `SubjectPublicKeyInfo` (RFC 8410): SEQUENCE { SEQUENCE { OID
/// 1.3.101.112 }, BIT STRING (0 unused bits) } followed by the 32 key bytes.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The server name the dialer sends. Constant on purpose: SNI travels in clear text, so it must
/// not reveal which node is being dialed. The identity check uses the key, not the name.
pub(crate) const SERVER_NAME: &str = "meshara";

/// The `SubjectPublicKeyInfo` DER encoding of a NodeId's Ed25519 key.
pub(crate) fn spki(node: &NodeId) -> Vec<u8> {
    let mut out = Vec::with_capacity(44);
    out.extend_from_slice(&ED25519_SPKI_PREFIX);
    out.extend_from_slice(node.as_bytes());
    out
}

/// Parses a peer's raw public key, accepting only the exact Ed25519 layout.
pub(crate) fn node_id_from_spki(der: &[u8]) -> Result<NodeId, TlsError> {
    let key = der
        .strip_prefix(&ED25519_SPKI_PREFIX[..])
        .filter(|key| key.len() == 32)
        .ok_or(TlsError::InvalidCertificate(CertificateError::BadEncoding))?;
    NodeId::from_slice(key).map_err(|_| TlsError::InvalidCertificate(CertificateError::BadEncoding))
}

/// The NodeId a completed TLS session authenticated, from rustls' peer certificates.
pub(crate) fn peer_node_id(certs: &[CertificateDer<'_>]) -> Option<NodeId> {
    match certs {
        [only] => node_id_from_spki(only.as_ref()).ok(),
        _ => None,
    }
}

/// rustls' crypto provider restricted to what Meshara speaks: TLS 1.3 suites from *ring*.
fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .retain(|suite| suite.version() == &rustls::version::TLS13);
    Arc::new(provider)
}

/// Error code carried by [`TlsError::General`] when the dialed NodeId did not answer.
pub(crate) const WRONG_PEER: &str =
    "meshara: peer presented a different NodeId than the one dialed";

/// Builds the client (dialer) configuration. With `expected`, the handshake fails unless the
/// server proves that NodeId.
pub(crate) fn client_config(
    identity: &Arc<Identity>,
    expected: Option<NodeId>,
) -> Result<rustls::ClientConfig, TlsError> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PeerVerifier { expected }))
        .with_client_cert_resolver(Arc::new(
            rustls::client::AlwaysResolvesClientRawPublicKeys::new(certified_key(identity)),
        ));
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.enable_early_data = false;
    Ok(config)
}

/// Builds the server (listener) configuration: clients must authenticate with their key.
pub(crate) fn server_config(identity: &Arc<Identity>) -> Result<rustls::ServerConfig, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(PeerVerifier { expected: None }))
        .with_cert_resolver(Arc::new(
            rustls::server::AlwaysResolvesServerRawPublicKeys::new(certified_key(identity)),
        ));
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.max_early_data_size = 0;
    // No resumption: every connection proves the identity key afresh.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

fn certified_key(identity: &Arc<Identity>) -> Arc<CertifiedKey> {
    let spki = spki(&identity.node_id());
    Arc::new(CertifiedKey::new(
        vec![CertificateDer::from(spki)],
        Arc::new(IdentityKey(identity.clone())),
    ))
}

/// The node's identity key as a rustls signing key (Ed25519 only).
#[derive(Debug)]
struct IdentityKey(Arc<Identity>);

impl SigningKey for IdentityKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        offered
            .contains(&SignatureScheme::ED25519)
            .then(|| Box::new(IdentitySigner(self.0.clone())) as Box<dyn Signer>)
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(SubjectPublicKeyInfoDer::from(spki(&self.0.node_id())))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ED25519
    }
}

#[derive(Debug)]
struct IdentitySigner(Arc<Identity>);

impl Signer for IdentitySigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, TlsError> {
        Ok(self.0.sign_tls(message).to_vec())
    }

    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ED25519
    }
}

/// Verifies the peer's raw key (and, for the dialer, that it is the expected NodeId) and its
/// TLS 1.3 handshake signature with strict Ed25519 verification.
#[derive(Debug)]
struct PeerVerifier {
    expected: Option<NodeId>,
}

impl PeerVerifier {
    fn check_key(&self, end_entity: &CertificateDer<'_>) -> Result<NodeId, TlsError> {
        let node = node_id_from_spki(end_entity.as_ref())?;
        match self.expected {
            Some(expected) if expected != node => Err(TlsError::General(WRONG_PEER.into())),
            _ => Ok(node),
        }
    }

    fn verify_signature(
        message: &[u8],
        key: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        if dss.scheme != SignatureScheme::ED25519 {
            return Err(TlsError::PeerIncompatible(
                PeerIncompatible::NoSignatureSchemesInCommon,
            ));
        }
        let node = node_id_from_spki(key.as_ref())?;
        let signature = Signature::from_slice(dss.signature())
            .map_err(|_| TlsError::InvalidCertificate(CertificateError::BadSignature))?;
        node.verifying_key()
            .verify_strict(message, &signature)
            .map_err(|_| TlsError::InvalidCertificate(CertificateError::BadSignature))?;
        Ok(HandshakeSignatureValid::assertion())
    }
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        if !intermediates.is_empty() {
            return Err(TlsError::InvalidCertificate(CertificateError::BadEncoding));
        }
        self.check_key(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        Err(TlsError::PeerIncompatible(
            PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        Self::verify_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

impl ClientCertVerifier for PeerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        if !intermediates.is_empty() {
            return Err(TlsError::InvalidCertificate(CertificateError::BadEncoding));
        }
        self.check_key(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        Err(TlsError::PeerIncompatible(
            PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        Self::verify_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spki_round_trips_and_rejects_other_layouts() {
        let id = Identity::generate().node_id();
        let der = spki(&id);
        assert_eq!(der.len(), 44);
        assert_eq!(node_id_from_spki(&der).unwrap(), id);
        assert!(node_id_from_spki(&der[..43]).is_err());
        let mut longer = der.clone();
        longer.push(0);
        assert!(node_id_from_spki(&longer).is_err());
        let mut other_oid = der.clone();
        other_oid[8] = 0x6e; // X25519's OID 1.3.101.110
        assert!(node_id_from_spki(&other_oid).is_err());
    }

    #[test]
    fn configs_build() {
        let id = Arc::new(Identity::generate());
        let client = client_config(&id, Some(id.node_id())).unwrap();
        assert_eq!(client.alpn_protocols, vec![ALPN.to_vec()]);
        let server = server_config(&id).unwrap();
        assert_eq!(server.alpn_protocols, vec![ALPN.to_vec()]);
    }
}
