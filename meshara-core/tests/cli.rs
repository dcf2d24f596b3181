//! The `meshara` binary, driven as a user would: keygen, identity, refusal to overwrite, wrong
//! passphrase, export/import to another keystore, record signing and verification.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;
use std::process::{Command, Output};

fn meshara(keystore: &Path, passphrase: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshara"))
        .arg("--keystore")
        .arg(keystore)
        .args(args)
        .env("MESHARA_PASSPHRASE", passphrase)
        .env_remove("MESHARA_KEYSTORE")
        .output()
        .expect("run meshara")
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "meshara failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

#[test]
fn identity_lifecycle_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a/identity.key");
    let b = dir.path().join("b/identity.key");
    let fast = ["--kdf-memory-kib", "8192", "--kdf-iterations", "1"];

    let created: serde_json::Value = serde_json::from_str(&stdout(&meshara(
        &a,
        "pw-a",
        &[&["--json", "keygen"][..], &fast].concat(),
    )))
    .unwrap();
    let node_id = created["node_id"].as_str().unwrap().to_owned();
    assert_eq!(node_id.len(), 52);

    // Same identity on every load; a second keygen refuses to overwrite.
    let shown: serde_json::Value =
        serde_json::from_str(&stdout(&meshara(&a, "pw-a", &["--json", "identity"]))).unwrap();
    assert_eq!(shown["node_id"], created["node_id"]);
    let again = meshara(&a, "pw-a", &[&["keygen"][..], &fast].concat());
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing to overwrite"));

    let wrong = meshara(&a, "nope", &["identity"]);
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("wrong passphrase"));

    // Export to a bundle, import into another keystore: same NodeId.
    let bundle = dir.path().join("bundle.txt");
    stdout(&meshara(
        &a,
        "pw-a",
        &["export", "--out", bundle.to_str().unwrap()],
    ));
    let imported: serde_json::Value = serde_json::from_str(&stdout(&meshara(
        &b,
        "pw-a",
        &["--json", "import", bundle.to_str().unwrap()],
    )))
    .unwrap();
    assert_eq!(imported["node_id"], created["node_id"]);

    // Sign a record and verify it back.
    let record_hex = stdout(&meshara(
        &a,
        "pw-a",
        &[
            "record",
            "--address",
            "quic://127.0.0.1:7777",
            "--address",
            "tcp://[::1]:7778",
            "--capability",
            "relay",
        ],
    ));
    let verified: serde_json::Value = serde_json::from_str(&stdout(&meshara(
        &a,
        "pw-a",
        &["verify-record", record_hex.trim()],
    )))
    .unwrap();
    assert_eq!(verified["node_id"].as_str().unwrap(), node_id);
    assert_eq!(verified["addresses"][1], "tcp://[::1]:7778");
    let bad = meshara(&a, "pw-a", &["record", "--address", "smtp://1.2.3.4:25"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown transport"));
}
