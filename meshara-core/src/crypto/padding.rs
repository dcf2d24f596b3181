//! Length hiding: plaintexts are padded ISO/IEC 7816-4 style (`0x80` then zeros) before
//! encryption, either minimally (one byte) or up to a size bucket.

use super::CryptoError;

/// How much a private payload is padded before encryption.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Padding {
    /// Only the one-byte `0x80` terminator: the ciphertext reveals the exact length.
    #[default]
    None,
    /// Pad up to the next bucket (see [`Padding::BUCKETS`]); past the last bucket, to the next
    /// multiple of it. Observers learn only the bucket.
    Buckets,
}

impl Padding {
    /// Bucket sizes in bytes for [`Padding::Buckets`], counting the terminator byte.
    pub const BUCKETS: [usize; 6] = [64, 256, 1024, 4096, 16384, 65536];

    /// Size of the padded plaintext for a payload of `len` bytes.
    pub fn padded_len(self, len: usize) -> usize {
        let min = len + 1;
        match self {
            Padding::None => min,
            Padding::Buckets => {
                if let Some(bucket) = Self::BUCKETS.iter().find(|b| **b >= min) {
                    *bucket
                } else {
                    let step = Self::BUCKETS[Self::BUCKETS.len() - 1];
                    min.div_ceil(step) * step
                }
            }
        }
    }
}

/// Appends `payload`, the terminator and the padding to `out`.
pub(crate) fn pad_into(payload: &[u8], padding: Padding, out: &mut Vec<u8>) {
    let target = padding.padded_len(payload.len());
    out.extend_from_slice(payload);
    out.push(0x80);
    out.resize(out.len() + (target - payload.len() - 1), 0);
}

/// Strips padding in place: trailing zeros, then the `0x80` terminator.
pub(crate) fn unpad(buf: &mut Vec<u8>) -> Result<(), CryptoError> {
    let end = buf
        .iter()
        .rposition(|b| *b != 0)
        .ok_or(CryptoError::BadPadding)?;
    if buf[end] != 0x80 {
        return Err(CryptoError::BadPadding);
    }
    buf.truncate(end);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bucket_sizes() {
        assert_eq!(Padding::Buckets.padded_len(0), 64);
        assert_eq!(Padding::Buckets.padded_len(63), 64);
        assert_eq!(Padding::Buckets.padded_len(64), 256);
        assert_eq!(Padding::Buckets.padded_len(1023), 1024);
        assert_eq!(Padding::Buckets.padded_len(65535), 65536);
        assert_eq!(Padding::Buckets.padded_len(65536), 131072);
        assert_eq!(Padding::None.padded_len(10), 11);
    }

    #[test]
    fn rejects_missing_terminator() {
        assert_eq!(unpad(&mut vec![]), Err(CryptoError::BadPadding));
        assert_eq!(unpad(&mut vec![0, 0, 0]), Err(CryptoError::BadPadding));
        assert_eq!(unpad(&mut vec![1, 2, 0]), Err(CryptoError::BadPadding));
    }

    proptest! {
        #[test]
        fn pad_unpad_round_trip(payload in proptest::collection::vec(any::<u8>(), 0..5000), buckets in any::<bool>()) {
            let padding = if buckets { Padding::Buckets } else { Padding::None };
            let mut buf = Vec::new();
            pad_into(&payload, padding, &mut buf);
            prop_assert_eq!(buf.len(), padding.padded_len(payload.len()));
            unpad(&mut buf).unwrap();
            prop_assert_eq!(buf, payload);
        }
    }
}
