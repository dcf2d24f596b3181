//! SAM v3 reply lines and I2P destinations from a hostile router: arbitrary bytes never panic,
//! whatever parses respects the limits, and parsed pairs survive a round trip through the
//! command encoder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshara_i2p::{dest, sam};

fuzz_target!(|data: &[u8]| {
    if let Ok(reply) = sam::parse_reply(data) {
        assert!(data.len() <= sam::MAX_LINE);
        assert!(reply.pairs.len() <= sam::MAX_PAIRS);
        let mut line = format!("{} {}", reply.topic, reply.kind);
        for (k, v) in &reply.pairs {
            line.push(' ');
            line.push_str(k);
            line.push('=');
            line.push_str(&sam::command_value(v).expect("parsed values are printable ASCII"));
        }
        assert_eq!(sam::parse_reply(line.as_bytes()).expect("re-encoded reply parses"), reply);
        let _ = reply.expect_ok("STREAM", "STATUS");
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(bytes) = dest::decode_base64(text) {
            assert!(bytes.len() <= dest::MAX_DESTINATION_B64);
            if let Ok(len) = dest::public_len(&bytes) {
                assert!(len <= bytes.len());
                let b32 = dest::b32_of(text).expect("a destination has a b32 name");
                assert!(dest::is_b32(&b32));
            }
            let _ = dest::public_of(text);
        }
    }
});
