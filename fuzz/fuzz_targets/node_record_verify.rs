//! Node record decoding and verification, and broadcast verification: never panic; nothing
//! forged by the fuzzer verifies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshara_core::{NodeRecord, RecordBook};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let now = 1_800_000_000;
    if let Ok(record) = NodeRecord::decode(data, now) {
        // The fuzzer cannot produce a valid Ed25519 signature; reaching here means a bug.
        let mut book = RecordBook::new(2);
        let _ = book.insert(record);
        panic!("fuzzer forged a node record");
    }
    if let Ok(signed) = meshara_core::proto::SignedBroadcast::decode(data) {
        assert!(meshara_core::verify_broadcast(&signed).is_err(), "fuzzer forged a broadcast");
    }
});
