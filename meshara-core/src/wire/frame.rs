//! Length-prefixed framing: `u32 big-endian length || envelope bytes` (docs/protocol.md §4).

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::WireError;

/// Bytes in the frame header.
pub const FRAME_HEADER_LEN: usize = 4;
/// Default largest frame body a peer accepts: 1 MiB.
pub const DEFAULT_MAX_FRAME_LEN: usize = 1 << 20;
/// No configuration may raise the frame limit above 16 MiB.
pub const MAX_FRAME_LEN_LIMIT: usize = 16 << 20;

/// Writes one frame around `body`.
pub fn encode_frame(body: &[u8], max_len: usize, dst: &mut BytesMut) -> Result<(), WireError> {
    check_len(body.len(), max_len)?;
    dst.reserve(FRAME_HEADER_LEN + body.len());
    // check_len bounds the length to 16 MiB, so it fits in u32.
    dst.put_u32(body.len() as u32);
    dst.put_slice(body);
    Ok(())
}

fn check_len(len: usize, max_len: usize) -> Result<(), WireError> {
    if len == 0 {
        return Err(WireError::EmptyFrame);
    }
    let max = max_len.min(MAX_FRAME_LEN_LIMIT);
    if len > max {
        return Err(WireError::FrameTooLarge { len, max });
    }
    Ok(())
}

/// Incremental frame decoder for byte streams: feed it a buffer, take whole frames out.
///
/// The length is checked against the limit as soon as the 4-byte header arrives, before any
/// body is buffered, so a peer cannot make us hold more than one maximal frame.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_len: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self {
            max_len: DEFAULT_MAX_FRAME_LEN,
        }
    }
}

impl FrameDecoder {
    /// A decoder accepting frames of at most `max_len` bytes (capped at [`MAX_FRAME_LEN_LIMIT`]).
    pub fn new(max_len: usize) -> Self {
        Self {
            max_len: max_len.clamp(1, MAX_FRAME_LEN_LIMIT),
        }
    }

    /// The frame limit in force.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Takes the next complete frame body out of `src`; `Ok(None)` means more bytes are needed.
    /// After an error the stream is out of sync and must be closed.
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, WireError> {
        if src.len() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        check_len(len, self.max_len)?;
        if src.len() < FRAME_HEADER_LEN + len {
            src.reserve(FRAME_HEADER_LEN + len - src.len());
            return Ok(None);
        }
        src.advance(FRAME_HEADER_LEN);
        Ok(Some(src.split_to(len).freeze()))
    }

    /// Call at end of stream: leftover bytes mean the peer stopped mid-frame.
    pub fn finish(&self, src: &BytesMut) -> Result<(), WireError> {
        if src.is_empty() {
            return Ok(());
        }
        let needed = if src.len() < FRAME_HEADER_LEN {
            FRAME_HEADER_LEN
        } else {
            FRAME_HEADER_LEN + u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize
        };
        Err(WireError::Truncated {
            needed,
            available: src.len(),
        })
    }
}

/// Decodes exactly one frame from a complete buffer (a datagram, a whole QUIC stream).
pub fn decode_frame(buf: &[u8], max_len: usize) -> Result<Bytes, WireError> {
    let mut decoder = FrameDecoder::new(max_len);
    let mut src = BytesMut::from(buf);
    match decoder.decode(&mut src)? {
        Some(frame) if src.is_empty() => Ok(frame),
        Some(_) => Err(WireError::TrailingBytes(src.len())),
        None => {
            decoder.finish(&src)?;
            Err(WireError::Truncated {
                needed: FRAME_HEADER_LEN,
                available: 0,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn header_is_big_endian_length() {
        let mut out = BytesMut::new();
        encode_frame(b"abc", DEFAULT_MAX_FRAME_LEN, &mut out).unwrap();
        assert_eq!(&out[..], &[0, 0, 0, 3, b'a', b'b', b'c']);
    }

    #[test]
    fn oversize_is_refused_before_buffering() {
        let mut d = FrameDecoder::new(100);
        let mut src = BytesMut::from(&[0u8, 0, 0, 101][..]);
        assert_eq!(
            d.decode(&mut src),
            Err(WireError::FrameTooLarge { len: 101, max: 100 })
        );
        let mut src = BytesMut::from(&[0xffu8, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            FrameDecoder::default().decode(&mut src),
            Err(WireError::FrameTooLarge { .. })
        ));
        assert!(matches!(
            encode_frame(&[0; 101], 100, &mut BytesMut::new()),
            Err(WireError::FrameTooLarge { len: 101, max: 100 })
        ));
        assert_eq!(FrameDecoder::new(usize::MAX).max_len(), MAX_FRAME_LEN_LIMIT);
    }

    #[test]
    fn empty_truncated_and_trailing() {
        assert_eq!(decode_frame(&[0, 0, 0, 0], 10), Err(WireError::EmptyFrame));
        assert_eq!(
            decode_frame(&[0, 0], 10),
            Err(WireError::Truncated {
                needed: 4,
                available: 2
            })
        );
        assert_eq!(
            decode_frame(&[0, 0, 0, 5, 1, 2], 10),
            Err(WireError::Truncated {
                needed: 9,
                available: 6
            })
        );
        assert_eq!(
            decode_frame(&[0, 0, 0, 1, 1, 2], 10),
            Err(WireError::TrailingBytes(1))
        );
        assert_eq!(
            decode_frame(&[], 10),
            Err(WireError::Truncated {
                needed: 4,
                available: 0
            })
        );
    }

    proptest! {
        #[test]
        fn frames_survive_any_split(bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..300), 1..8), split in 1usize..50) {
            let mut wire = BytesMut::new();
            for b in &bodies {
                encode_frame(b, 1000, &mut wire).unwrap();
            }
            let mut decoder = FrameDecoder::new(1000);
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            for chunk in wire.chunks(split) {
                buf.extend_from_slice(chunk);
                while let Some(frame) = decoder.decode(&mut buf).unwrap() {
                    out.push(frame.to_vec());
                }
            }
            decoder.finish(&buf).unwrap();
            prop_assert_eq!(out, bodies);
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let mut decoder = FrameDecoder::new(512);
            let mut buf = BytesMut::from(&data[..]);
            while let Ok(Some(frame)) = decoder.decode(&mut buf) {
                prop_assert!(!frame.is_empty() && frame.len() <= 512);
            }
        }
    }
}
