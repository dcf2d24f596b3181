//! Envelope decoding and validation: never panics; whatever is accepted re-encodes and decodes
//! to the same envelope.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use meshara_core::wire;

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = wire::decode_envelope(Bytes::copy_from_slice(data), wire::DEFAULT_MAX_FRAME_LEN) {
        let encoded = wire::encode_envelope(&envelope).expect("accepted envelopes re-encode");
        let again = wire::decode_envelope(Bytes::from(encoded), wire::DEFAULT_MAX_FRAME_LEN)
            .expect("re-encoded envelopes decode");
        assert_eq!(again, envelope);
    }
    let _ = meshara_core::message::decode_payload(data);
});
