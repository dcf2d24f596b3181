//! Streaming frame decoder: arbitrary bytes in arbitrary chunkings never panic, and every frame
//! that comes out respects the limit.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use meshara_core::wire::{FrameDecoder, decode_frame};

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else { return };
    let step = usize::from(split).max(1);
    let mut decoder = FrameDecoder::new(4096);
    let mut buf = BytesMut::new();
    'outer: for chunk in rest.chunks(step) {
        buf.extend_from_slice(chunk);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => assert!(!frame.is_empty() && frame.len() <= 4096),
                Ok(None) => break,
                Err(_) => break 'outer,
            }
        }
    }
    let _ = decode_frame(rest, 4096);
});
