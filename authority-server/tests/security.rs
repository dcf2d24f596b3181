//! Attacks on the running authority (the real server from `tests/common`, the real
//! `meshara-authority` binary): each is refused, and honest clients are still served.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

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
    // The signer compares with the root the harness shipped (root.pb before any rotation).
    let shipped = h.dir.path().join("shipped-root.pb");
    meshara_authority::keys::write_root(&shipped, &h.first_root).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_meshara-authority"))
        .args(["sign", "--draft"])
        .arg(&path)
        .arg("--key")
        .arg(h.dir.path().join("k3.key"))
        .arg("--root")
        .arg(&shipped)
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
    let release_id = v["id"].as_i64().unwrap();

    // A release draft: the honest one is signed and shows its names; one whose package name
    // carries an escape sequence (re-encoded, as an altered draft would be) is refused.
    let (_, exported) = h
        .call(
            "GET",
            &format!("/api/v1/releases/{release_id}/draft"),
            Some(&h.admin),
            None,
        )
        .await;
    let (ok, stdout, stderr) = sign_with_binary(&h, &exported);
    assert!(
        ok && stderr.contains("signing release app/stable 1.0.0"),
        "{stderr}"
    );
    assert!(stdout.contains("signature"), "{stdout}");
    let draft: meshara_authority::keys::Draft = serde_json::from_value(exported).unwrap();
    let mut release =
        meshara_core::update::Release::decode(&BASE64.decode(draft.body.as_bytes()).unwrap())
            .unwrap();
    release.package = "app\u{1b}[2K\u{1b}[1Aother".to_owned();
    let evil = meshara_authority::keys::Draft::new(release_id, &release.encode().unwrap()).unwrap();
    let (ok, stdout, stderr) = sign_with_binary(&h, &serde_json::to_value(&evil).unwrap());
    assert!(!ok && stdout.is_empty(), "{stderr}");
    assert!(
        !has_control(&stderr) && stderr.contains("\\u{1b}[2K"),
        "{stderr:?}"
    );

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
        stderr.contains(&format!(
            "key 4/4: {} roles root,release name \"k4\" NEW",
            fresh.node_id()
        )) && stderr.contains("1 new key(s)")
            && stderr.matches("(listed now)").count() == 3,
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

    // With a plausible name the attacker's key cannot hide: it is shown by its public key and
    // marked NEW against the root the signer trusts.
    root.keys.last_mut().unwrap().name = "k5".to_owned();
    let plausible = RootDraft::new(&root.encode().unwrap()).unwrap();
    let (_, _, stderr) = sign_with_binary(&h, &serde_json::to_value(&plausible).unwrap());
    assert!(
        stderr.contains(&format!(
            "key 5/5: {} roles root,release name \"k5\" NEW",
            attacker.node_id()
        )) && stderr.contains("2 new key(s)"),
        "{stderr}"
    );

    // The server still serves honest callers.
    assert_eq!(
        h.call("GET", "/api/v1/me", Some(&publisher), None).await.0,
        StatusCode::OK
    );
    h.stop().await;
}

/// A connection from `from` (any address in 127/8 is loopback) that sends half a request head
/// and then nothing.
async fn half_head(to: SocketAddr, from: Ipv4Addr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::V4(from), 0)).unwrap();
    let mut tcp = socket.connect(to).await.unwrap();
    tcp.write_all(b"GET /api/v1/me HTTP/1.1\r\nHost: authority.test\r\nX-Slow: ")
        .await
        .unwrap();
    tcp
}

/// Reads until the server closes; returns when (after `since`) and what it sent, or `None`
/// if it is still open after `wait`.
async fn closed_within(
    tcp: &mut TcpStream,
    since: Instant,
    wait: Duration,
) -> Option<(Duration, String)> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(wait, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .ok()?;
    Some((since.elapsed(), String::from_utf8_lossy(&got).into_owned()))
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Item 3: slow-loris connections (half a request head, then silence) from loopback
/// addresses. Beyond the per-address cap and the global cap they are answered 503 and closed
/// at once; the ones accepted are closed by the header-read timeout; a silent connection and
/// an idle keep-alive connection are closed by the idle timeout; an honest client from
/// another address is served during the attack and everyone is served after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_connections_time_out_and_are_capped_while_honest_clients_are_served() {
    let mut h = Harness::start(Backend::Sqlite).await.unwrap();
    h.restart_with(|c| {
        c.http.header_read_timeout_secs = 1;
        c.http.idle_timeout_secs = 30;
        c.http.max_connections = 40;
        c.http.max_connections_per_ip = 10;
    })
    .await;
    let viewer = h.token("viewer").await;

    // One attacker address: 10 held, 5 refused at once.
    let attacker = Ipv4Addr::new(127, 0, 0, 2);
    let started = Instant::now();
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(half_head(h.addr, attacker).await);
    }
    for _ in 0..5 {
        let mut extra = half_head(h.addr, attacker).await;
        let (when, said) = closed_within(&mut extra, Instant::now(), Duration::from_secs(1))
            .await
            .expect("refused at once");
        assert!(said.starts_with("HTTP/1.1 503"), "{said:?} after {when:?}");
    }
    // An honest client on another address is served meanwhile.
    let (status, me) = h.call("GET", "/api/v1/me", Some(&viewer), None).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "still during the attack"
    );
    // The held ones are closed by the header-read timeout (1 s), not before.
    for tcp in &mut held {
        let (when, said) = closed_within(tcp, started, Duration::from_secs(5))
            .await
            .expect("closed by the header-read timeout");
        assert!(
            when >= Duration::from_millis(900),
            "held until the timeout: {when:?}"
        );
        assert!(!said.contains("200 OK"), "{said:?}");
    }

    // Many addresses: the global cap (40) holds; the 41st is refused, and the slots come back
    // once the timeout has closed the attack.
    let started = Instant::now();
    let mut held = Vec::new();
    for i in 0..4u8 {
        for _ in 0..10 {
            held.push(half_head(h.addr, Ipv4Addr::new(127, 0, 1, 10 + i)).await);
        }
    }
    let mut over = half_head(h.addr, Ipv4Addr::new(127, 0, 1, 99)).await;
    let (_, said) = closed_within(&mut over, Instant::now(), Duration::from_secs(1))
        .await
        .expect("refused at the global cap");
    assert!(said.starts_with("HTTP/1.1 503"), "{said:?}");
    for tcp in &mut held {
        closed_within(tcp, started, Duration::from_secs(5))
            .await
            .expect("closed by the header-read timeout");
    }
    let (status, _) = h.call("GET", "/api/v1/me", Some(&viewer), None).await;
    assert_eq!(status, StatusCode::OK);
    let (_, m) = h.call("GET", "/metrics", None, None).await;
    let m = m.as_str().unwrap();
    assert!(
        metric(m, "meshara_authority_http_connections_refused_total") >= 6,
        "{m}"
    );
    assert!(
        metric(m, "meshara_authority_http_connections_timed_out_total") >= 50,
        "{m}"
    );

    // The idle timeout on its own (a long header timeout): a silent connection and a
    // keep-alive connection that went quiet after a request are closed.
    h.restart_with(|c| {
        c.http.header_read_timeout_secs = 60;
        c.http.idle_timeout_secs = 1;
    })
    .await;
    let started = Instant::now();
    let mut silent = TcpStream::connect(h.addr).await.unwrap();
    let mut kept = TcpStream::connect(h.addr).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: authority.test\r\n\r\n")
        .await
        .unwrap();
    let (when, said) = closed_within(&mut kept, started, Duration::from_secs(5))
        .await
        .expect("an idle keep-alive connection is closed");
    assert!(
        said.starts_with("HTTP/1.1 200") && said.ends_with("ok"),
        "{said:?}"
    );
    assert!(when >= Duration::from_millis(900), "{when:?}");
    let (when, _) = closed_within(&mut silent, started, Duration::from_secs(5))
        .await
        .expect("a silent connection is closed");
    assert!(when >= Duration::from_millis(900), "{when:?}");
    assert_eq!(h.call("GET", "/readyz", None, None).await.0, StatusCode::OK);
    h.stop().await;
}

/// Sends a raw request head (and `body`) from a fresh connection; returns the stream.
async fn raw(to: SocketAddr, head: &str, body: &[u8]) -> TcpStream {
    let mut tcp = TcpStream::connect(to).await.unwrap();
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(body).await.unwrap();
    tcp
}

/// Writes up to `total` bytes of `chunk`-sized pieces (chunked encoding when `chunked`),
/// stopping when the server stops reading; returns what was written and the response.
async fn flood(mut tcp: TcpStream, total: usize, chunked: bool) -> (usize, String) {
    let piece = vec![b'['; 64 * 1024];
    let mut sent = 0;
    while sent < total {
        let framed = if chunked {
            [format!("{:x}\r\n", piece.len()).as_bytes(), &piece, b"\r\n"].concat()
        } else {
            piece.clone()
        };
        match tokio::time::timeout(Duration::from_secs(2), tcp.write_all(&framed)).await {
            Ok(Ok(())) => sent += piece.len(),
            _ => break,
        }
    }
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut got)).await;
    (sent, String::from_utf8_lossy(&got).into_owned())
}

/// Item 2: JSON routes read at most `http.body_limit_bytes` (a huge or endless body is
/// answered 413 long before it is all sent) within `http.body_timeout_secs`; uploads are
/// capped in number, time out when they stall, and stop at the storage quota (507); a
/// publisher deletes unused packages (audited) to make room; honest calls go through.
async fn bounded(backend: Backend) {
    let Some(mut h) = Harness::start(backend).await else {
        return;
    };
    h.restart_with(|c| {
        c.http.body_limit_bytes = 64 * 1024;
        c.http.body_timeout_secs = 1;
        c.http.upload_stall_secs = 1;
        c.http.max_concurrent_uploads = 2;
        c.max_package_bytes = 200_000;
        c.storage_quota_bytes = 300_000;
    })
    .await;
    let publisher = h.token("publisher").await;
    let viewer = h.token("viewer").await;
    let auth = format!("Authorization: Bearer {publisher}\r\n");

    // A 300 MB JSON body, declared or chunked: refused after at most the limit is read.
    let head = format!(
        "POST /api/v1/releases HTTP/1.1\r\nHost: a\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: 300000000\r\n\r\n"
    );
    let (sent, said) = flood(raw(h.addr, &head, b"").await, 300_000_000, false).await;
    assert!(said.starts_with("HTTP/1.1 413"), "{said:?}");
    assert!(sent < 64 << 20, "refused before the body was sent: {sent}");
    let head = format!(
        "POST /api/v1/releases HTTP/1.1\r\nHost: a\r\n{auth}Content-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\r\n"
    );
    let (sent, said) = flood(raw(h.addr, &head, b"").await, 300_000_000, true).await;
    assert!(
        said.starts_with("HTTP/1.1 413") && said.contains("too_large"),
        "{said:?}"
    );
    assert!(sent < 64 << 20, "refused before the body was sent: {sent}");
    // Without a token the body is not read at all.
    let head = "POST /api/v1/roots HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n\
         Content-Length: 300000000\r\n\r\n";
    let (_, said) = flood(raw(h.addr, head, b"").await, 1 << 20, false).await;
    assert!(said.starts_with("HTTP/1.1 401"), "{said:?}");

    // A JSON body that stops arriving: 408 after the body timeout.
    let started = Instant::now();
    let head = format!(
        "POST /api/v1/releases HTTP/1.1\r\nHost: a\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: 100\r\n\r\n"
    );
    let mut slow = raw(h.addr, &head, b"{\"package\":").await;
    let (when, said) = closed_within(&mut slow, started, Duration::from_secs(5))
        .await
        .expect("answered");
    assert!(
        said.starts_with("HTTP/1.1 408") && said.contains("body_timeout"),
        "{said:?}"
    );
    assert!(when >= Duration::from_millis(900), "{when:?}");

    // Two stalled uploads hold both upload slots: a third is refused with 429 while they
    // run; they time out (408) and leave nothing behind; then uploads work again.
    let started = Instant::now();
    let head = format!(
        "PUT /api/v1/packages?name=slow HTTP/1.1\r\nHost: a\r\n{auth}Content-Length: 100000\r\n\r\n"
    );
    let mut stalled = Vec::new();
    for _ in 0..2 {
        stalled.push(raw(h.addr, &head, &[1; 1000]).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, v) = h
        .upload(&publisher, "third", common::content(1000, 3))
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert_eq!(v["error"]["code"], "too_many_uploads");
    for tcp in &mut stalled {
        let (when, said) = closed_within(tcp, started, Duration::from_secs(5))
            .await
            .expect("answered");
        assert!(
            said.starts_with("HTTP/1.1 408") && said.contains("upload_timeout"),
            "{said:?}"
        );
        assert!(when >= Duration::from_millis(900), "{when:?}");
    }
    assert_eq!(
        std::fs::read_dir(h.data().join("incoming"))
            .unwrap()
            .count(),
        0
    );

    // Above max_package_bytes: 413. The quota: 300 000 bytes. Two packages fill it; a third
    // is refused with 507.
    let (status, v) = h
        .upload(&publisher, "big.bin", common::content(200_001, 3))
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    let (status, a) = h
        .upload(&publisher, "a.bin", common::content(150_000, 1))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{a}");
    let (status, b) = h
        .upload(&publisher, "b.bin", common::content(150_000, 2))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{b}");
    let (status, v) = h.upload(&publisher, "c.bin", common::content(10, 3)).await;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{v}");
    assert_eq!(v["error"]["code"], "quota_exceeded");

    // A release uses `a`: it cannot be deleted. `b` can, by a publisher, not a viewer.
    let (status, v) = h
        .call(
            "POST",
            "/api/v1/releases",
            Some(&publisher),
            Some(json!({
                "package": "app", "channel": "stable", "semver": "1.0.0", "content_hash": a["hash"],
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let del = |hash: &Value| format!("/api/v1/packages/{}", hash.as_str().unwrap());
    let (status, v) = h
        .call("DELETE", &del(&a["hash"]), Some(&publisher), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    let (status, _) = h
        .call("DELETE", &del(&b["hash"]), Some(&viewer), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = h
        .call(
            "DELETE",
            "/api/v1/packages/..%2F..%2Froot.pb",
            Some(&publisher),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, v) = h
        .call("DELETE", &del(&b["hash"]), Some(&publisher), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{v}");
    assert!(
        !h.data()
            .join("packages")
            .join(b["hash"].as_str().unwrap())
            .exists()
    );
    assert!(
        h.data()
            .join("packages")
            .join(a["hash"].as_str().unwrap())
            .exists()
    );
    assert!(h.data().join("root.pb").exists());
    let (status, _) = h
        .call("DELETE", &del(&b["hash"]), Some(&publisher), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, log) = h.call("GET", "/api/v1/audit", Some(&viewer), None).await;
    let entry = log
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "package.delete")
        .expect("the deletion is audited");
    assert_eq!(
        (&entry["target"], &entry["actor"]),
        (&b["hash"], &json!("a publisher"))
    );
    // Room again.
    let (status, v) = h.upload(&publisher, "c.bin", common::content(10, 3)).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let (_, doc) = h.call("GET", "/api/v1/openapi.json", None, None).await;
    assert!(doc["paths"]["/api/v1/packages/{hash}"]["delete"].is_object());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_uploads_and_storage_are_bounded_on_sqlite() {
    bounded(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_uploads_and_storage_are_bounded_on_postgres() {
    bounded(Backend::Postgres).await;
}

/// One update check from `from`; returns the status line.
async fn check_from(to: SocketAddr, from: Ipv4Addr, path: &str) -> String {
    check_via(to, from, path, "").await
}

/// One update check from `from` with extra header lines.
async fn check_via(to: SocketAddr, from: Ipv4Addr, path: &str, extra: &str) -> String {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::V4(from), 0)).unwrap();
    let mut tcp = socket.connect(to).await.unwrap();
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n{extra}\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    tcp.read_to_end(&mut got).await.unwrap();
    String::from_utf8_lossy(&got)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Item 5: a client flooding the public update check gets every answer but only
/// `query_log.per_client` of its checks recorded per window, so the other clients' checks,
/// before and after the flood, stay in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_check_flood_cannot_flush_the_query_log() {
    let mut h = Harness::start(Backend::Sqlite).await.unwrap();
    h.restart_with(|c| {
        c.query_log.per_client = 5;
        c.query_log.window_secs = 600;
        c.http.trusted_proxies = vec![IpAddr::V4(Ipv4Addr::new(127, 0, 2, 9))];
    })
    .await;
    let viewer = h.token("viewer").await;
    let early = Ipv4Addr::new(127, 0, 2, 1);
    let flooder = Ipv4Addr::new(127, 0, 2, 2);
    let late = Ipv4Addr::new(127, 0, 2, 3);
    for _ in 0..3 {
        assert!(
            check_from(h.addr, early, "/v1/updates/app/stable")
                .await
                .contains("404")
        );
    }
    for i in 0..400 {
        // A spoofed X-Forwarded-For from an address that is not a trusted proxy is ignored.
        let spoof = format!("X-Forwarded-For: 198.18.{}.{}\r\n", i / 250, i % 250);
        let path = format!("/v1/updates/flood/c{}", i % 3);
        let status = check_via(h.addr, flooder, &path, &spoof).await;
        assert!(status.contains("404"), "every check is answered: {status}");
    }
    for _ in 0..2 {
        assert!(
            check_from(h.addr, late, "/v1/updates/app/beta")
                .await
                .contains("404")
        );
    }
    let counts = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let (_, q) = h.call("GET", "/api/v1/queries", Some(&viewer), None).await;
            let count = |channel: &str| {
                q["by_channel"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|c| c["package"] == "app" && c["channel"] == channel)
                    .map(|c| c["count"].as_i64().unwrap())
                    .sum::<i64>()
            };
            if count("beta") == 2 {
                let flood: i64 = q["by_channel"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|c| c["package"] == "flood")
                    .map(|c| c["count"].as_i64().unwrap())
                    .sum();
                return (
                    count("stable"),
                    count("beta"),
                    flood,
                    q["total"].as_i64().unwrap(),
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the late client's checks are recorded");
    assert_eq!(counts, (3, 2, 5, 10), "(early, late, flood, total)");
    let (_, m) = h.call("GET", "/metrics", None, None).await;
    let m = m.as_str().unwrap();
    assert_eq!(
        metric(m, "meshara_authority_update_checks_over_budget_total"),
        395,
        "{m}"
    );
    assert!(
        metric(m, "meshara_authority_update_checks_total{via=\"http\"}") >= 405,
        "{m}"
    );

    // Behind a trusted proxy, the client is the last X-Forwarded-For address: a flooding
    // client is bounded and another client of the same proxy is still recorded.
    let proxy = Ipv4Addr::new(127, 0, 2, 9);
    for _ in 0..50 {
        check_via(
            h.addr,
            proxy,
            "/v1/updates/proxied/flood",
            "X-Forwarded-For: 203.0.113.7\r\n",
        )
        .await;
    }
    for _ in 0..3 {
        let xff = "X-Forwarded-For: 203.0.113.7, 203.0.113.8\r\n";
        check_via(h.addr, proxy, "/v1/updates/proxied/honest", xff).await;
    }
    let proxied = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let (_, q) = h.call("GET", "/api/v1/queries", Some(&viewer), None).await;
            let count = |channel: &str| {
                q["by_channel"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|c| c["package"] == "proxied" && c["channel"] == channel)
                    .map(|c| c["count"].as_i64().unwrap())
                    .sum::<i64>()
            };
            if count("honest") == 3 {
                return count("flood");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the proxied honest client's checks are recorded");
    assert_eq!(proxied, 5);
    h.stop().await;
}

/// Item 7: every response (dashboard, API, errors, public endpoints) says `nosniff` and
/// `no-referrer`; the dashboard's CSP forbids `<base>` and foreign form targets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_carry_the_security_headers() {
    let mut h = Harness::start(Backend::Sqlite).await.unwrap();
    for (path, token, status) in [
        ("/", None, StatusCode::OK),
        ("/app.js", None, StatusCode::OK),
        ("/style.css", None, StatusCode::OK),
        ("/api/v1/me", Some(h.admin.clone()), StatusCode::OK),
        ("/api/v1/me", None, StatusCode::UNAUTHORIZED),
        ("/v1/updates/app/stable", None, StatusCode::NOT_FOUND),
        ("/api/v1/openapi.json", None, StatusCode::OK),
        ("/healthz", None, StatusCode::OK),
        ("/metrics", None, StatusCode::OK),
        ("/no/such/route", None, StatusCode::NOT_FOUND),
    ] {
        let mut req = hyper::Request::get(path);
        if let Some(t) = &token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let tcp = TcpStream::connect(h.addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(conn);
        let res = sender
            .send_request(
                req.header(hyper::header::HOST, "authority.test")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(res.status(), status, "{path}");
        let headers = res.headers();
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(headers["referrer-policy"], "no-referrer", "{path}");
        if ["/", "/app.js", "/style.css"].contains(&path) {
            let csp = headers["content-security-policy"].to_str().unwrap();
            for directive in [
                "default-src 'self'",
                "frame-ancestors 'none'",
                "base-uri 'none'",
                "form-action 'self'",
            ] {
                assert!(csp.contains(directive), "{path}: {csp}");
            }
        }
    }
    h.stop().await;
}

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Item 6: the real binary takes its passphrase from a file (refusing one every user may
/// read, without echoing it), creates `authority.db` 0600 in a 0700 directory and tightens an
/// existing 0644 one (with its `-wal` and `-shm`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_is_private_and_the_passphrase_comes_from_a_private_file() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    meshara_authority::keys::init(&data, 3, 2, PASSPHRASE, 365).unwrap();
    let secret = dir.path().join("passphrase");
    std::fs::write(&secret, [PASSPHRASE, b"\n"].concat()).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    // An authority.db left world-readable by an older version.
    std::fs::write(data.join("authority.db"), b"").unwrap();
    std::fs::set_permissions(
        data.join("authority.db"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let serve = |data: &std::path::Path| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_meshara-authority"));
        c.arg("--passphrase-file")
            .arg(&secret)
            .arg("serve")
            .env_remove("MESHARA_AUTHORITY_KEY_PASSPHRASE")
            .env_remove("MESHARA_AUTHORITY_KEY_PASSPHRASE_FILE")
            .env("MESHARA_AUTHORITY_DATA_DIR", data)
            .env("MESHARA_AUTHORITY_HTTP_LISTEN", "127.0.0.1:0")
            .env("MESHARA_AUTHORITY_QUIC_LISTEN", "127.0.0.1:0")
            .env("MESHARA_AUTHORITY_LOG", "warn");
        c
    };

    // World-readable: refused, naming the fix, not showing the secret.
    let out = serve(&data).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("chmod 600"), "{stderr}");
    assert!(
        !stderr.contains(std::str::from_utf8(PASSPHRASE).unwrap()),
        "{stderr}"
    );

    // 0600: the server starts with it, and the database is its owner's alone.
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut child = serve(&data)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr: SocketAddr = loop {
        let line = lines
            .next()
            .expect("the server printed its address")
            .unwrap();
        if let Some(rest) = line.split("http://").nth(1) {
            break rest.trim_end_matches('/').parse().unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    assert_eq!(
        common::call(addr, "GET", "/readyz", None, None).await.0,
        StatusCode::OK
    );
    let admin = std::fs::read_to_string(data.join("admin.token")).unwrap();
    assert_eq!(
        common::call(addr, "GET", "/api/v1/me", Some(&admin), None)
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("authority.db")), 0o600);
    for extra in ["authority.db-wal", "authority.db-shm"] {
        if data.join(extra).exists() {
            assert_eq!(mode(&data.join(extra)), 0o600, "{extra}");
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();

    // `token` on a data directory that does not exist yet creates it 0700, the database 0600.
    let fresh = dir.path().join("fresh/data");
    let out = Command::new(env!("CARGO_BIN_EXE_meshara-authority"))
        .args(["token", "--name", "ops", "--role", "viewer"])
        .env("MESHARA_AUTHORITY_DATA_DIR", &fresh)
        .env("MESHARA_AUTHORITY_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode(&fresh), 0o700);
    assert_eq!(mode(&fresh.join("authority.db")), 0o600);
}

/// A second connection to the server's database, as someone with access to it would open.
async fn open_db(h: &Harness) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::AnyPool::connect(&h.config.database_url())
        .await
        .unwrap()
}

async fn verified(h: &Harness) -> Value {
    let (status, v) = h
        .call("GET", "/api/v1/audit/verify", Some(&h.admin), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    v
}

/// Item 4: audit entries carry the acting token's id and are hash-chained; editing a row,
/// deleting one or inserting one directly in the database is detected by the API and by the
/// real `audit-verify` command, while the server keeps serving.
async fn audit_chain(backend: Backend) {
    let Some(mut h) = Harness::start(backend).await else {
        return;
    };
    // Two tokens with the same name: the audit log tells them apart by id.
    let mut ids = Vec::new();
    let mut tokens = Vec::new();
    for _ in 0..2 {
        let (status, v) = h
            .call(
                "POST",
                "/api/v1/tokens",
                Some(&h.admin),
                Some(json!({"name": "ci", "role": "publisher"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        ids.push(v["id"].as_str().unwrap().to_owned());
        tokens.push(v["token"].as_str().unwrap().to_owned());
    }
    for (i, t) in tokens.iter().enumerate() {
        let (status, _) = h
            .upload(t, &format!("p{i}.bin"), common::content(1000, i as u8))
            .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let (_, log) = h.call("GET", "/api/v1/audit", Some(&h.admin), None).await;
    let uploads: Vec<(String, String)> = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "package.upload")
        .map(|e| {
            (
                e["actor"].as_str().unwrap().to_owned(),
                e["actor_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        uploads,
        [
            ("ci".to_owned(), ids[1].clone()),
            ("ci".to_owned(), ids[0].clone())
        ]
    );
    let (_, me) = h.call("GET", "/api/v1/me", Some(&h.admin), None).await;
    let admin_id = me["id"].as_str().unwrap().to_owned();
    assert!(
        log.as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "token.create" && e["actor_id"] == admin_id.as_str())
    );

    let v = verified(&h).await;
    assert_eq!(
        (v["ok"].as_bool(), v["broken"].is_null()),
        (Some(true), true),
        "{v}"
    );
    let entries = v["entries"].as_u64().unwrap();
    assert!(entries >= 5, "{v}");

    // Tampering 1: the first upload is re-attributed to the other token.
    let db = open_db(&h).await;
    let target: i64 = sqlx::Row::try_get(
        &sqlx::query("SELECT MIN(id) AS id FROM audit WHERE action = 'package.upload'")
            .fetch_one(&db)
            .await
            .unwrap(),
        "id",
    )
    .unwrap();
    sqlx::query("UPDATE audit SET actor_id = $1 WHERE id = $2")
        .bind(&ids[1])
        .bind(target)
        .execute(&db)
        .await
        .unwrap();
    let v = verified(&h).await;
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["broken"]["id"].as_i64(), Some(target), "{v}");
    if matches!(backend, Backend::Sqlite) {
        let out = Command::new(env!("CARGO_BIN_EXE_meshara-authority"))
            .arg("audit-verify")
            .env("MESHARA_AUTHORITY_DATA_DIR", h.data())
            .env("MESHARA_AUTHORITY_LOG", "warn")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains(&format!("entry {target}")), "{stderr}");
    }
    // Put it back: the chain holds again (the hash covers exactly the fields).
    sqlx::query("UPDATE audit SET actor_id = $1 WHERE id = $2")
        .bind(&ids[0])
        .bind(target)
        .execute(&db)
        .await
        .unwrap();
    assert_eq!(verified(&h).await["ok"], true);

    // Tampering 2: an entry deleted from the middle.
    sqlx::query("DELETE FROM audit WHERE id = $1")
        .bind(target)
        .execute(&db)
        .await
        .unwrap();
    let v = verified(&h).await;
    assert_eq!(v["ok"], false, "{v}");
    assert!(v["broken"]["id"].as_i64().unwrap() > target, "{v}");

    // Tampering 3: an entry forged at the end, with a made-up hash.
    let db2 = open_db(&h).await;
    sqlx::query("DELETE FROM audit")
        .execute(&db2)
        .await
        .unwrap();
    h.call(
        "POST",
        "/api/v1/tokens",
        Some(&h.admin),
        Some(json!({"name": "x", "role": "viewer"})),
    )
    .await;
    assert_eq!(
        verified(&h).await["ok"],
        true,
        "a fresh chain after the deletion of everything"
    );
    sqlx::query("INSERT INTO audit (at, actor_id, actor, action, target, detail, hash) VALUES (1, '', 'system', 'release.publish', '1', '', $1)")
        .bind("0".repeat(64))
        .execute(&db2)
        .await
        .unwrap();
    let v = verified(&h).await;
    assert_eq!(v["ok"], false, "{v}");
    db.close().await;
    db2.close().await;
    // The server still serves honest clients.
    assert_eq!(
        h.call("GET", "/api/v1/me", Some(&tokens[0]), None).await.0,
        StatusCode::OK
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_tampering_is_detected_on_sqlite() {
    audit_chain(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_tampering_is_detected_on_postgres() {
    audit_chain(Backend::Postgres).await;
}

/// Item 4, upgrades: a database at schema 2 with audit entries (as the previous version left
/// it) is migrated, its entries sealed into the chain, and new entries chain onto them.
async fn audit_upgrade(url: String) {
    sqlx::any::install_default_drivers();
    let postgres = url.starts_with("postgres");
    let dialect = if postgres { "postgres" } else { "sqlite" };
    let old = sqlx::AnyPool::connect(&url).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE meshara_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )
    .execute(&old)
    .await
    .unwrap();
    for (version, file) in [(1, "0001_init.sql"), (2, "0002_roots.sql")] {
        let path = format!("{}/migrations/{dialect}/{file}", env!("CARGO_MANIFEST_DIR"));
        let sql = std::fs::read_to_string(path).unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&old)
            .await
            .unwrap();
        sqlx::query("INSERT INTO meshara_migrations (version, applied_at) VALUES ($1, 0)")
            .bind(version)
            .execute(&old)
            .await
            .unwrap();
    }
    for i in 0..3 {
        sqlx::query("INSERT INTO audit (at, actor, action, target, detail) VALUES ($1, 'alice', 'package.upload', $2, '')")
            .bind(i64::from(i))
            .bind(format!("h{i}"))
            .execute(&old)
            .await
            .unwrap();
    }
    old.close().await;

    let db = meshara_authority::db::Db::connect(&url).await.unwrap();
    let check = db.verify_audit().await.unwrap();
    assert_eq!(
        (check.entries, check.broken.clone()),
        (3, None),
        "{check:?}"
    );
    db.audit(
        meshara_authority::db::Actor::internal("system"),
        "token.create",
        "t",
        "",
    )
    .await
    .unwrap();
    let after = db.verify_audit().await.unwrap();
    assert_eq!((after.entries, after.broken), (4, None));
    let log = db.audit_log(10).await.unwrap();
    assert_eq!(
        log[1].hash, check.head,
        "the new entry follows the sealed ones"
    );
    assert_eq!(log[3].actor, "alice");
    db.close().await;
    // Connecting again does not re-seal: an entry edited now stays detected.
    let raw = sqlx::AnyPool::connect(&url).await.unwrap();
    sqlx::query("UPDATE audit SET actor = 'mallory' WHERE target = 'h1'")
        .execute(&raw)
        .await
        .unwrap();
    raw.close().await;
    let db = meshara_authority::db::Db::connect(&url).await.unwrap();
    assert!(db.verify_audit().await.unwrap().broken.is_some());
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_audit_logs_are_sealed_on_upgrade_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    audit_upgrade(format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("old.db").display()
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_audit_logs_are_sealed_on_upgrade_on_postgres() {
    if let Some(url) = common::postgres_url().await {
        audit_upgrade(url).await;
    }
}
