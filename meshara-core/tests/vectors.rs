//! The published test vectors: regenerating them reproduces the committed file byte for byte,
//! and the committed file checks against this implementation.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use meshara_core::vectors;

const FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/v1.json");

fn committed() -> serde_json::Value {
    let text = std::fs::read_to_string(FILE).expect("vector file is committed");
    serde_json::from_str(&text).expect("vector file is JSON")
}

#[test]
fn committed_vectors_verify() {
    vectors::check(&committed()).unwrap();
}

#[test]
fn generator_reproduces_the_committed_file() {
    // `assert!` rather than `assert_eq!`: the file is too large to print usefully.
    assert!(
        vectors::generate() == committed(),
        "regenerate with: cargo run -p meshara-core --bin meshara -- vectors > meshara-core/tests/vectors/v1.json"
    );
}

#[test]
fn a_changed_vector_is_caught() {
    let mut file = committed();
    let ct = file["sealed"][0]["payload_ciphertext"]
        .as_str()
        .unwrap()
        .to_owned();
    let flipped = format!(
        "{}{}",
        if ct.starts_with('0') { "1" } else { "0" },
        &ct[1..]
    );
    file["sealed"][0]["encoded"] = serde_json::Value::String(
        file["sealed"][0]["encoded"]
            .as_str()
            .unwrap()
            .replace(&ct, &flipped),
    );
    assert!(vectors::check(&file).is_err());
    let mut file = committed();
    file["session"]["key_initiator_to_responder"] = serde_json::Value::String("00".repeat(32));
    assert!(vectors::check(&file).is_err());
    let mut file = committed();
    file["node_records"][2]["expect"] = serde_json::Value::String("valid".into());
    assert!(vectors::check(&file).is_err());
}
