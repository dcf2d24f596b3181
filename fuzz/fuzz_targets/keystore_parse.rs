//! Keystore and bundle parsing: never panic, never accept a file the fuzzer made. The Argon2id
//! step is reached only with a valid checksum, which the fuzzer rarely forges; inputs that carry
//! one exercise the parameter bounds before any hashing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshara_core::{Identity, keystore};

fuzz_target!(|data: &[u8]| {
    let _ = keystore::parse_keystore(data, b"fuzz");
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Identity::import_bundle(text, b"fuzz");
    }
});
