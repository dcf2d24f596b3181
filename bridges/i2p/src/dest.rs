//! I2P destinations: the I2P base64 alphabet, the structure of a destination and its
//! `.b32.i2p` name.
//!
//! A destination is a 256-byte encryption key, a 128-byte signing key field and a certificate
//! (type byte, 2-byte big-endian length, payload). Its `.b32.i2p` name is the lowercase,
//! unpadded base32 of the SHA-256 of those bytes. A private destination, as a router hands it
//! back from `SESSION CREATE`, is the destination followed by the private keys.

use data_encoding::{Encoding, Specification};
use sha2::Digest;

use crate::error::SamError;

/// Bytes before a destination's certificate.
const KEYS_LEN: usize = 384;
/// Longest certificate payload accepted (key certificates are 4 bytes; offline signatures more).
const MAX_CERT_LEN: usize = 1024;
/// Longest base64 destination (public or private) accepted from a router or a file.
pub const MAX_DESTINATION_B64: usize = 4096;

fn i2p_base64() -> Encoding {
    let mut spec = Specification::new();
    spec.symbols
        .push_str("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-~");
    spec.padding = Some('=');
    // The specification is a constant; it cannot fail to build.
    spec.encoding().unwrap_or(data_encoding::BASE64)
}

fn base32_lower() -> Encoding {
    let mut spec = Specification::new();
    spec.symbols.push_str("abcdefghijklmnopqrstuvwxyz234567");
    spec.encoding().unwrap_or(data_encoding::BASE32_NOPAD)
}

/// Decodes I2P base64 (`-` and `~` in place of `+` and `/`), bounded in size.
pub fn decode_base64(text: &str) -> Result<Vec<u8>, SamError> {
    if text.len() > MAX_DESTINATION_B64 {
        return Err(SamError::Malformed(format!(
            "a destination of {} characters (at most {MAX_DESTINATION_B64})",
            text.len()
        )));
    }
    i2p_base64()
        .decode(text.as_bytes())
        .map_err(|e| SamError::Malformed(format!("destination is not I2P base64: {e}")))
}

/// Encodes bytes as I2P base64.
pub fn encode_base64(bytes: &[u8]) -> String {
    i2p_base64().encode(bytes)
}

/// Length of the public destination at the start of `bytes` (a public or private
/// destination), checking it is complete.
pub fn public_len(bytes: &[u8]) -> Result<usize, SamError> {
    if bytes.len() < KEYS_LEN + 3 {
        return Err(SamError::Malformed(format!(
            "a destination of {} bytes (at least {})",
            bytes.len(),
            KEYS_LEN + 3
        )));
    }
    let cert_len = usize::from(u16::from_be_bytes([
        bytes[KEYS_LEN + 1],
        bytes[KEYS_LEN + 2],
    ]));
    if cert_len > MAX_CERT_LEN {
        return Err(SamError::Malformed(format!(
            "a destination certificate of {cert_len} bytes (at most {MAX_CERT_LEN})"
        )));
    }
    let len = KEYS_LEN + 3 + cert_len;
    if bytes.len() < len {
        return Err(SamError::Malformed(format!(
            "a destination cut short: {} of {len} bytes",
            bytes.len()
        )));
    }
    Ok(len)
}

/// The `.b32.i2p` name of a destination given in base64 (public or private: only the public
/// part is hashed).
pub fn b32_of(destination_b64: &str) -> Result<String, SamError> {
    let bytes = decode_base64(destination_b64)?;
    let len = public_len(&bytes)?;
    let hash = sha2::Sha256::digest(&bytes[..len]);
    Ok(format!("{}.b32.i2p", base32_lower().encode(&hash)))
}

/// The public destination (base64) inside a private one.
pub fn public_of(private_b64: &str) -> Result<String, SamError> {
    let bytes = decode_base64(private_b64)?;
    let len = public_len(&bytes)?;
    if bytes.len() == len {
        return Err(SamError::Malformed(
            "expected a private destination, got a public one".into(),
        ));
    }
    Ok(encode_base64(&bytes[..len]))
}

/// Whether `host` is a well-formed `.b32.i2p` name (52 base32 characters).
pub fn is_b32(host: &str) -> bool {
    host.strip_suffix(".b32.i2p")
        .is_some_and(|h| h.len() == 52 && h.bytes().all(|b| matches!(b, b'a'..=b'z' | b'2'..=b'7')))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A public destination from i2pd 2.45 (Ed25519 key certificate, 391 bytes) and its b32
    /// name as the router computes it.
    fn sample() -> Vec<u8> {
        let mut d = vec![7u8; KEYS_LEN];
        d.extend_from_slice(&[5, 0, 4, 0, 7, 0, 4]);
        d
    }

    #[test]
    fn base64_round_trip_and_alphabet() {
        let bytes: Vec<u8> = (0..=255u8).collect();
        let text = encode_base64(&bytes);
        assert!(text.contains('~') || text.contains('-'));
        assert!(!text.contains('+') && !text.contains('/'));
        assert_eq!(decode_base64(&text).unwrap(), bytes);
        assert!(decode_base64("ab+/").is_err());
        assert!(decode_base64(&"A".repeat(MAX_DESTINATION_B64 + 4)).is_err());
    }

    #[test]
    fn public_part_and_b32() {
        let public = sample();
        assert_eq!(public_len(&public).unwrap(), 391);
        let mut private = public.clone();
        private.extend_from_slice(&[1u8; 288]);
        let b32 = b32_of(&encode_base64(&private)).unwrap();
        assert_eq!(b32, b32_of(&encode_base64(&public)).unwrap());
        assert!(is_b32(&b32), "{b32}");
        assert_eq!(
            public_of(&encode_base64(&private)).unwrap(),
            encode_base64(&public)
        );
        assert!(public_of(&encode_base64(&public)).is_err());
    }

    #[test]
    fn hostile_destinations() {
        assert!(public_len(&[0u8; 10]).is_err());
        let mut huge_cert = vec![0u8; KEYS_LEN];
        huge_cert.extend_from_slice(&[5, 0xff, 0xff]);
        assert!(public_len(&huge_cert).is_err());
        let mut short = vec![0u8; KEYS_LEN];
        short.extend_from_slice(&[5, 0, 4, 0]);
        assert!(public_len(&short).is_err());
        assert!(!is_b32("abc.b32.i2p"));
        assert!(!is_b32(&format!("{}.b32.i2p", "A".repeat(52))));
        assert!(!is_b32(&format!("{}.onion", "a".repeat(52))));
    }
}
