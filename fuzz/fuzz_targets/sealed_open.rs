//! Opening attacker-controlled sealed messages: never panics, never accepts.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use meshara_core::{Identity, open, proto};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    static BOB: OnceLock<Identity> = OnceLock::new();
    let bob = BOB.get_or_init(|| Identity::from_secret_bytes(&[3; 32], &[4; 32]));
    if let Ok(msg) = proto::SealedMessage::decode(data) {
        assert!(open(bob, &msg, 1_800_000_000).is_err(), "fuzzer forged a sealed message");
    }
});
