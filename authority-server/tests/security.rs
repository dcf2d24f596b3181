//! Attacks on the running authority (the real server from `tests/common`, the real
//! `meshara-authority` binary): each is refused, and honest clients are still served.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::process::{Command, Stdio};

use common::{Backend, Harness, PASSPHRASE};
use data_encoding::BASE64;
use hyper::StatusCode;
use meshara_authority::keys::RootDraft;
use meshara_core::Identity;
use meshara_core::update::{AuthorityKey, Role, Root};
use serde_json::{Value, json};

/// Runs `meshara-authority sign` on `draft` with the offline key; returns (success, stdout,
/// stderr).
fn sign_with_binary(h: &Harness, draft: &Value) -> (bool, String, String) {
    let path = h.dir.path().join("draft.json");
    std::fs::write(&path, serde_json::to_vec_pretty(draft).unwrap()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_meshara-authority"))
        .args(["sign", "--draft"])
        .arg(&path)
        .arg("--key")
        .arg(h.dir.path().join("k3.key"))
        .env(
            "MESHARA_AUTHORITY_KEY_PASSPHRASE",
            std::str::from_utf8(PASSPHRASE).unwrap(),
        )
        .env("MESHARA_AUTHORITY_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// Whether `s` holds anything that moves or hides text on a terminal (newlines aside).
fn has_control(s: &str) -> bool {
    s.chars()
        .any(|c| c != '\n' && meshara_authority::names::is_hiding(c))
}

/// Item 1: a root draft naming a key with terminal escape sequences (which would erase the
/// key's line on the offline signer's screen) is refused by the real `sign` binary, which
/// prints nothing raw and no signature; the API refuses such names where they enter; an
/// honest draft exported by the server is signed, shows every key by its public key, and
/// its signature is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_with_control_characters_are_refused_by_the_api_and_by_sign() {
    let mut h = Harness::start(Backend::Sqlite).await.unwrap();
    let publisher = h.token("publisher").await;
    let (_, current) = h.call("GET", "/api/v1/roots", Some(&h.admin), None).await;
    let keys: Vec<Value> = current["current"]["keys"].as_array().unwrap().clone();
    let fresh = Identity::generate();
    let hidden = "k4\u{1b}[2K\u{1b}[1A\r";

    // The API refuses bad names with a clear 400 and stores nothing.
    let mut with_hidden = keys.clone();
    with_hidden.push(
        json!({"name": hidden, "key": fresh.node_id().to_string(), "roles": ["root", "release"]}),
    );
    let spec = |keys: Vec<Value>| json!({"keys": keys, "root_threshold": 2, "release_threshold": 2, "valid_days": 30});
    let (status, v) = h
        .call(
            "POST",
            "/api/v1/roots",
            Some(&h.admin),
            Some(spec(with_hidden)),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["code"], "invalid_name");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("\\u{1b}") && !has_control(message),
        "{message:?}"
    );
    let (_, roots) = h.call("GET", "/api/v1/roots", Some(&h.admin), None).await;
    assert_eq!(roots["roots"], json!([]), "nothing drafted");

    let (status, pkg) = h
        .upload(&publisher, "app-1.0.0.bin", common::content(10_000, 1))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{pkg}");
    for (package, channel) in [
        ("app/../../x", "stable"),
        ("app\u{0}", "stable"),
        ("app", "st\u{1b}]0;owned\u{7}able"),
        ("app", "\u{202e}elbats"),
        ("", "stable"),
    ] {
        let (status, v) = h
            .call("POST", "/api/v1/releases", Some(&publisher), Some(json!({
                "package": package, "channel": channel, "semver": "1.0.0", "content_hash": pkg["hash"],
            })))
            .await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{package:?}/{channel:?}: {v}"
        );
        assert_eq!(v["error"]["code"], "invalid_name");
    }
    for name in ["a%2Fb", "a%00b", "%1B%5B2K", "..", "a%20b"] {
        let (status, v) = h.upload(&publisher, name, vec![1; 100]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name}: {v}");
    }
    let (status, v) = h
        .call(
            "POST",
            "/api/v1/tokens",
            Some(&h.admin),
            Some(json!({"name": "ci\r\u{1b}[1A", "role": "viewer"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let (status, _) = h.call("GET", "/v1/updates/a%1Bb/stable", None, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Honest names still work.
    let (status, v) = h
        .call("POST", "/api/v1/releases", Some(&publisher), Some(json!({
            "package": "app", "channel": "stable", "semver": "1.0.0", "content_hash": pkg["hash"],
        })))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");

    // An honest rotation drafted on the server: `sign` shows each key by its public key and
    // signs; the server accepts the signature.
    let mut honest = keys.clone();
    honest.push(
        json!({"name": "k4", "key": fresh.node_id().to_string(), "roles": ["root", "release"]}),
    );
    let (status, v) = h
        .call("POST", "/api/v1/roots", Some(&h.admin), Some(spec(honest)))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let (_, exported) = h
        .call("GET", "/api/v1/roots/2/draft", Some(&h.admin), None)
        .await;
    let (ok, stdout, stderr) = sign_with_binary(&h, &exported);
    assert!(ok, "{stderr}");
    for k in keys
        .iter()
        .map(|k| k["key"].as_str().unwrap().to_owned())
        .chain([fresh.node_id().to_string()])
    {
        assert!(stderr.contains(&k), "{k} shown: {stderr}");
    }
    assert!(
        stderr.contains("key 4/4:") && stderr.contains("name \"k4\""),
        "{stderr}"
    );
    let (status, v) = h
        .call(
            "POST",
            "/api/v1/roots/2/signatures",
            Some(&h.admin),
            Some(serde_json::from_str(&stdout).unwrap()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");

    // The attack: the same draft re-encoded with a fifth key whose name erases its own line
    // (a draft made by a stolen admin token on an unpatched server, or altered in transit).
    let draft: RootDraft = serde_json::from_value(exported).unwrap();
    let mut root = Root::decode(&BASE64.decode(draft.body.as_bytes()).unwrap()).unwrap();
    let attacker = Identity::generate();
    root.keys.push(AuthorityKey {
        key: attacker.node_id(),
        name: hidden.to_owned(),
        roles: [Role::Root, Role::Release].into(),
    });
    let evil = RootDraft::new(&root.encode().unwrap()).unwrap();
    assert_eq!(
        evil.keys.last().unwrap().name,
        hidden,
        "the draft really carries the name"
    );
    let (ok, stdout, stderr) = sign_with_binary(&h, &serde_json::to_value(&evil).unwrap());
    assert!(!ok, "refused: {stderr}");
    assert!(stdout.is_empty(), "no signature printed: {stdout}");
    assert!(
        !has_control(&stderr),
        "nothing raw reaches the terminal: {stderr:?}"
    );
    assert!(
        stderr.contains("refusing") && stderr.contains("\\u{1b}[2K"),
        "{stderr}"
    );
    // The library refuses as well.
    assert!(evil.sign(&h.offline).is_err());

    // The server still serves honest callers.
    assert_eq!(
        h.call("GET", "/api/v1/me", Some(&publisher), None).await.0,
        StatusCode::OK
    );
    h.stop().await;
}
