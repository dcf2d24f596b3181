//! The authority server end to end, against SQLite and against a real PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::Duration;

use common::{Backend, Harness, content};
use data_encoding::BASE64;
use hyper::StatusCode;
use meshara_authority::api::ROUTES;
use meshara_authority::keys::Draft;
use meshara_core::update::TrustState;
use meshara_core::updater::Updater;
use meshara_core::{Identity, Node};
use serde_json::{Value, json};

async fn release_flow(backend: Backend) {
    let Some(mut h) = Harness::start(backend).await else {
        return;
    };
    let publisher = h.token("publisher").await;
    let signer = h.token("signer").await;
    let viewer = h.token("viewer").await;

    let (status, me) = h.call("GET", "/api/v1/me", Some(&signer), None).await;
    assert_eq!(
        (status, me["role"].as_str()),
        (StatusCode::OK, Some("signer"))
    );

    // Upload, draft, one server-held signature, one made offline, publish.
    let body = content(300_000, 1);
    let (status, pkg) = h.upload(&publisher, "app-1.0.0.bin", body.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{pkg}");
    let hash = pkg["hash"].as_str().unwrap().to_owned();
    assert_eq!(
        hash,
        data_encoding::HEXLOWER.encode(blake3::hash(&body).as_bytes())
    );
    let (status, draft) = h
        .call(
            "POST",
            "/api/v1/releases",
            Some(&publisher),
            Some(json!({
                "package": "app", "channel": "stable", "semver": "1.0.0", "content_hash": hash,
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{draft}");
    let id = draft["id"].as_i64().unwrap();
    assert_eq!(draft["sequence"], 1);
    assert_eq!(draft["status"], "draft");

    // Below the threshold: publishing is refused and changes nothing.
    let (status, err) = h
        .call(
            "POST",
            &format!("/api/v1/releases/{id}/publish"),
            Some(&publisher),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("valid signature"),
        "{err}"
    );

    let (status, v) = h
        .call(
            "POST",
            &format!("/api/v1/releases/{id}/sign"),
            Some(&signer),
            Some(json!({"key": "k1"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["signatures"].as_array().unwrap().len(), 1);

    // Offline: export, sign elsewhere, attach. A tampered signature is refused.
    let (status, exported) = h
        .call(
            "GET",
            &format!("/api/v1/releases/{id}/draft"),
            Some(&signer),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let exported: Draft = serde_json::from_value(exported).unwrap();
    assert_eq!(
        (exported.semver.as_str(), exported.content_hash.as_str()),
        ("1.0.0", hash.as_str())
    );
    let mut lying = exported.clone();
    lying.semver = "9.9.9".into();
    assert!(
        lying.sign(&h.offline).is_err(),
        "fields must match the body"
    );
    let sig = exported.sign(&h.offline).unwrap();
    let mut bad = sig.clone();
    bad.signature = BASE64.encode(&[7u8; 64]);
    let (status, _) = h
        .call(
            "POST",
            &format!("/api/v1/releases/{id}/signatures"),
            Some(&signer),
            Some(serde_json::to_value(&bad).unwrap()),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let stranger = Identity::generate();
    let foreign = exported.sign(&stranger).unwrap();
    let (status, _) = h
        .call(
            "POST",
            &format!("/api/v1/releases/{id}/signatures"),
            Some(&signer),
            Some(serde_json::to_value(&foreign).unwrap()),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "a key outside the root");
    let (status, v) = h
        .call(
            "POST",
            &format!("/api/v1/releases/{id}/signatures"),
            Some(&signer),
            Some(serde_json::to_value(&sig).unwrap()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["signatures"].as_array().unwrap().len(), 2);

    // A signer may not publish; a publisher may.
    let (status, _) = h
        .call(
            "POST",
            &format!("/api/v1/releases/{id}/publish"),
            Some(&signer),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, v) = h
        .call(
            "POST",
            &format!("/api/v1/releases/{id}/publish"),
            Some(&publisher),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "published");

    // The public update check over HTTP returns metadata a node verifies.
    let (status, check) = h.call("GET", "/v1/updates/app/stable", None, None).await;
    assert_eq!(status, StatusCode::OK, "{check}");
    let signed = meshara_core::update::decode_signed(
        &BASE64
            .decode(check["signed_metadata"].as_str().unwrap().as_bytes())
            .unwrap(),
    )
    .unwrap();
    let trust = TrustState::new(h.authority().root()).unwrap();
    let release = trust
        .verify_release(&signed, meshara_authority::now() as u64)
        .unwrap();
    assert_eq!(release.semver, "1.0.0");
    let (status, _) = h.call("GET", "/v1/updates/app/beta", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // And over Meshara: a node asks the authority node, downloads and verifies.
    let node = Node::builder()
        .identity(Identity::generate())
        .listen_quic("127.0.0.1:0".parse().unwrap())
        .bootstrap(h.authority().node().quic_addr().unwrap())
        .start()
        .await
        .unwrap();
    let root = meshara_authority::keys::read_root(&h.data().join("root.pb")).unwrap();
    let nd = tempfile::tempdir().unwrap();
    let updater = Updater::builder(node.clone(), nd.path(), root)
        .authority(h.authority().node().node_id())
        .start()
        .unwrap();
    let found = updater.check("app", "stable").await.unwrap().unwrap();
    assert_eq!(found, release);
    let path = updater.download(&found).await.unwrap();
    assert_eq!(std::fs::read(path).unwrap(), body);

    // Both checks were counted.
    let counted = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let (_, q) = h.call("GET", "/api/v1/queries", Some(&viewer), None).await;
            let vias: Vec<String> = q["recent"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["via"].as_str().unwrap().to_owned())
                .collect();
            if vias.iter().any(|v| v == "http") && vias.iter().any(|v| v == "meshara") {
                return q;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("update checks recorded");
    assert!(counted["total"].as_i64().unwrap() >= 3);

    // Roll back by a newer release restoring older content; revoke drafts it automatically.
    let body2 = content(100_000, 2);
    let (_, pkg2) = h.upload(&publisher, "app-1.1.0.bin", body2).await;
    let (_, d2) = h
        .call("POST", "/api/v1/releases", Some(&publisher), Some(json!({
            "package": "app", "channel": "stable", "semver": "1.1.0", "content_hash": pkg2["hash"], "rollout_percent": 50,
        })))
        .await;
    let id2 = d2["id"].as_i64().unwrap();
    assert_eq!(
        (d2["sequence"].as_i64(), d2["rollout_percent"].as_i64()),
        (Some(2), Some(50))
    );
    for key in ["k1", "k2"] {
        h.call(
            "POST",
            &format!("/api/v1/releases/{id2}/sign"),
            Some(&signer),
            Some(json!({"key": key})),
        )
        .await;
    }
    // Changing the rollout changes what is signed: the signatures go.
    let (status, v) = h
        .call(
            "POST",
            &format!("/api/v1/releases/{id2}/rollout"),
            Some(&publisher),
            Some(json!({"percent": 25})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(
        (
            v["rollout_percent"].as_i64(),
            v["signatures"].as_array().unwrap().len()
        ),
        (Some(25), 0)
    );
    for key in ["k1", "k2"] {
        h.call(
            "POST",
            &format!("/api/v1/releases/{id2}/sign"),
            Some(&signer),
            Some(json!({"key": key})),
        )
        .await;
    }
    // Scheduled two seconds ahead: published by the scheduler.
    let at = meshara_authority::now() + 2;
    let (status, v) = h
        .call(
            "POST",
            &format!("/api/v1/releases/{id2}/publish"),
            Some(&publisher),
            Some(json!({"at": at})),
        )
        .await;
    assert_eq!(
        (status, v["status"].as_str()),
        (StatusCode::OK, Some("scheduled")),
        "{v}"
    );
    tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let (_, v) = h
                .call(
                    "GET",
                    &format!("/api/v1/releases/{id2}"),
                    Some(&viewer),
                    None,
                )
                .await;
            if v["status"] == "published" {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the scheduler published the release");
    let (_, v) = h
        .call(
            "POST",
            &format!("/api/v1/releases/{id2}/revoke"),
            Some(&publisher),
            None,
        )
        .await;
    assert_eq!(v["revoked"]["status"], "revoked", "{v}");
    let rb = &v["rollback"];
    assert_eq!(
        (rb["sequence"].as_i64(), rb["content_hash"].as_str()),
        (Some(3), Some(hash.as_str()))
    );
    assert_eq!(rb["status"], "draft");

    // The audit log saw every step, with who did it.
    let (_, log) = h.call("GET", "/api/v1/audit", Some(&viewer), None).await;
    let actions: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for a in [
        "token.create",
        "package.upload",
        "release.draft",
        "release.sign",
        "release.attach_signature",
        "release.publish",
        "release.rollout",
        "release.schedule",
        "release.revoke",
        "release.rollback",
    ] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
    // Health, metrics, readiness.
    let (_, health) = h.call("GET", "/api/v1/health", Some(&viewer), None).await;
    assert_eq!(health["status"], "ok");
    assert_eq!(health["root"]["release_threshold"], 2);
    let keys: Vec<(&str, bool)> = health["root"]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["name"].as_str().unwrap(),
                k["server_held"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(keys, [("k1", true), ("k2", true), ("k3", false)]);
    let (status, m) = h.call("GET", "/metrics", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let m = m.as_str().unwrap().to_owned();
    assert!(
        m.contains("meshara_authority_update_checks_total{via=\"http\"}"),
        "{m}"
    );
    assert!(m.contains("meshara_authority_releases_published"), "{m}");
    assert_eq!(h.call("GET", "/readyz", None, None).await.0, StatusCode::OK);
    updater.stop();
    node.stop().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releases_are_drafted_signed_published_and_served_on_sqlite() {
    release_flow(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releases_are_drafted_signed_published_and_served_on_postgres() {
    release_flow(Backend::Postgres).await;
}

/// Every admin route: 401 without or with a bad token, 403 for every role it does not
/// allow, and never 401/403 for the roles it does.
async fn roles(backend: Backend) {
    let Some(mut h) = Harness::start(backend).await else {
        return;
    };
    let mut tokens = vec![("admin", h.admin.clone())];
    for role in ["publisher", "signer", "viewer"] {
        tokens.push((role, h.token(role).await));
    }
    for r in ROUTES {
        let path = r
            .path
            .replace("{id}", "999999")
            .replace("{sequence}", "999999")
            .replace("{hash}", &"0".repeat(64));
        for token in [None, Some("mat_notatoken"), Some("Bearer"), Some("")] {
            let (status, v) = h.call(r.method, &path, token, Some(json!({}))).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{} {path} with {token:?}: {v}",
                r.method
            );
            assert_eq!(v["error"]["code"], "unauthenticated");
        }
        for (role, token) in &tokens {
            let allowed = *role == "admin" || r.allowed.iter().any(|a| a.as_str() == *role);
            // Bodies are deliberately empty: allowed callers get past the role check and then
            // a 4xx about the request, never 401/403.
            let (status, v) = h.call(r.method, &path, Some(token), Some(json!({}))).await;
            if allowed {
                assert!(
                    status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                    "{role} on {} {path}: {status} {v}",
                    r.method
                );
            } else {
                assert_eq!(
                    status,
                    StatusCode::FORBIDDEN,
                    "{role} on {} {path}: {v}",
                    r.method
                );
                assert_eq!(v["error"]["code"], "forbidden");
            }
        }
    }
    // Uploads by the wrong role store nothing.
    let viewer = &tokens[3].1;
    let (status, _) = h.upload(viewer, "x", vec![1; 1000]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // A revoked token stops working at once.
    let (status, created) = h
        .call(
            "POST",
            "/api/v1/tokens",
            Some(&h.admin),
            Some(json!({"name": "temp", "role": "viewer"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let temp = created["token"].as_str().unwrap().to_owned();
    assert_eq!(
        h.call("GET", "/api/v1/me", Some(&temp), None).await.0,
        StatusCode::OK
    );
    let (status, _) = h
        .call(
            "DELETE",
            &format!("/api/v1/tokens/{}", created["id"].as_str().unwrap()),
            Some(&h.admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        h.call("GET", "/api/v1/me", Some(&temp), None).await.0,
        StatusCode::UNAUTHORIZED
    );
    // Admins list tokens, revoked ones marked, never with a secret or its hash.
    let (status, list) = h.call("GET", "/api/v1/tokens", Some(&h.admin), None).await;
    assert_eq!(status, StatusCode::OK);
    let list = list.as_array().unwrap();
    let listed = list
        .iter()
        .find(|t| t["id"] == created["id"])
        .expect("the token is listed");
    assert_eq!(
        (listed["name"].as_str(), listed["revoked"].as_bool()),
        (Some("temp"), Some(true))
    );
    assert!(
        list.iter()
            .all(|t| t.get("hash").is_none() && t.get("token").is_none())
    );
    assert!(
        list.iter()
            .any(|t| t["role"] == "admin" && t["revoked"] == false)
    );
    // The OpenAPI document lists every route with its roles.
    let (_, doc) = h.call("GET", "/api/v1/openapi.json", None, None).await;
    for r in ROUTES {
        let op = &doc["paths"][r.path][r.method.to_lowercase()];
        assert!(
            op["x-roles"]
                .as_array()
                .is_some_and(|a| a.contains(&Value::from("admin"))),
            "{} {}",
            r.method,
            r.path
        );
    }
    // Oversized and empty uploads are refused and leave nothing behind.
    let mut small = h.config.clone();
    small.max_package_bytes = 10_000;
    h.stop().await;
    let a = meshara_authority::Authority::start(small, common::PASSPHRASE)
        .await
        .unwrap();
    let publisher = tokens[1].1.clone();
    h.addr = a.http_addr();
    h.authority = Some(a);
    let before = std::fs::read_dir(h.data().join("packages"))
        .unwrap()
        .count();
    let (status, v) = h.upload(&publisher, "big", vec![0; 10_001]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    let (status, _) = h.upload(&publisher, "empty", vec![]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        std::fs::read_dir(h.data().join("packages"))
            .unwrap()
            .count(),
        before
    );
    assert_eq!(
        std::fs::read_dir(h.data().join("incoming"))
            .unwrap()
            .count(),
        0
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_enforces_tokens_and_roles_on_sqlite() {
    roles(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_enforces_tokens_and_roles_on_postgres() {
    roles(Backend::Postgres).await;
}

/// Root rotation through the API: drafted by an admin, signed by a server-held key and a key
/// kept offline, refused until the current *and* the new threshold have signed, published to
/// the node and to `root.pb`, followed by a node shipped with the old root, and kept across a
/// restart. The key it revokes can no longer sign releases.
async fn root_rotation(backend: Backend) {
    let Some(mut h) = Harness::start(backend).await else {
        return;
    };
    let signer = h.token("signer").await;
    let (_, current) = h.call("GET", "/api/v1/roots", Some(&signer), None).await;
    assert_eq!(current["current"]["sequence"], 1);
    let key_of = |name: &str| {
        current["current"]["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["name"] == name)
            .unwrap()["key"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (k1, k2, k3) = (key_of("k1"), key_of("k2"), key_of("k3"));
    // k3 (offline) is replaced by a new offline key and revoked.
    let fresh = Identity::generate();
    let both = json!(["root", "release"]);
    let spec = json!({
        "keys": [
            {"name": "k1", "key": k1, "roles": both},
            {"name": "k2", "key": k2, "roles": both},
            {"name": "k4", "key": fresh.node_id().to_string(), "roles": both},
        ],
        "root_threshold": 2, "release_threshold": 2, "valid_days": 365, "revoke": [k3],
    });
    let (status, _) = h
        .call("POST", "/api/v1/roots", Some(&signer), Some(spec.clone()))
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "drafting a root is for admins"
    );
    let mut bad = spec.clone();
    bad["root_threshold"] = json!(4);
    let (status, v) = h
        .call("POST", "/api/v1/roots", Some(&h.admin), Some(bad))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let (status, v) = h
        .call("POST", "/api/v1/roots", Some(&h.admin), Some(spec))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(
        (v["sequence"].as_i64(), v["status"].as_str()),
        (Some(2), Some("draft"))
    );
    assert_eq!(v["revoked"], json!([k3]));

    let publish = || h.call("POST", "/api/v1/roots/2/publish", Some(&h.admin), None);
    let (status, v) = publish().await;
    assert_eq!(status, StatusCode::CONFLICT, "nobody signed yet: {v}");

    // k1 on the server: one of two for the current root, one of two for the new one.
    let (status, v) = h
        .call(
            "POST",
            "/api/v1/roots/2/sign",
            Some(&signer),
            Some(json!({"key": "k1"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["quorum"]["current"]["have"], 1);
    assert_eq!(v["quorum"]["new"]["have"], 1);

    // k4 offline: export, check, sign, attach. A lying draft is not signed; a key of
    // neither root cannot attach.
    let (status, exported) = h
        .call("GET", "/api/v1/roots/2/draft", Some(&signer), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let draft: meshara_authority::keys::RootDraft =
        serde_json::from_value(exported.clone()).unwrap();
    assert!(matches!(
        serde_json::from_value::<meshara_authority::keys::AnyDraft>(exported).unwrap(),
        meshara_authority::keys::AnyDraft::Root(_)
    ));
    let mut lying = draft.clone();
    lying.root_threshold = 1;
    assert!(lying.sign(&fresh).is_err());
    let stranger = draft.sign(&Identity::generate()).unwrap();
    let (status, _) = h
        .call(
            "POST",
            "/api/v1/roots/2/signatures",
            Some(&signer),
            Some(json!(stranger)),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let sig = draft.sign(&fresh).unwrap();
    let (status, v) = h
        .call(
            "POST",
            "/api/v1/roots/2/signatures",
            Some(&signer),
            Some(json!(sig)),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["quorum"]["current"]["have"], 1);
    assert_eq!(v["quorum"]["new"]["have"], 2);
    // The new keys alone do not rotate: the current root's threshold is not met.
    let (status, v) = publish().await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");

    let (status, _) = h
        .call(
            "POST",
            "/api/v1/roots/2/sign",
            Some(&signer),
            Some(json!({"key": "k2"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, v) = publish().await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "published");
    assert_eq!(h.authority().root().sequence, 2);
    let on_disk = meshara_authority::keys::read_root(&h.data().join("root.pb")).unwrap();
    assert_eq!(
        meshara_core::update::Root::decode(&on_disk.body)
            .unwrap()
            .sequence,
        2
    );
    let (status, _) = publish().await;
    assert_eq!(status, StatusCode::CONFLICT, "published once");

    // A node shipped with root 1 follows the rotation on its next check.
    let rotated = meshara_core::update::Root::decode(&on_disk.body).unwrap();
    assert_eq!(rotated.revoked.len(), 1);
    let node = Node::builder()
        .identity(Identity::generate())
        .listen_quic("127.0.0.1:0".parse().unwrap())
        .bootstrap(h.authority().node().quic_addr().unwrap())
        .start()
        .await
        .unwrap();
    let shipped = {
        // The root the harness set up (root.pb before the rotation) is in the node's chain.
        let (_, roots) = h.call("GET", "/api/v1/roots", Some(&signer), None).await;
        assert_eq!(roots["current"]["sequence"], 2);
        assert_eq!(roots["roots"][0]["status"], "published");
        h.first_root.clone()
    };
    let nd = tempfile::tempdir().unwrap();
    let updater = Updater::builder(node.clone(), nd.path(), shipped)
        .authority(h.authority().node().node_id())
        .start()
        .unwrap();
    assert_eq!(updater.check("app", "stable").await.unwrap(), None);
    assert_eq!(updater.root().sequence, 2);

    // The revoked offline key cannot sign releases any more.
    let publisher = h.token("publisher").await;
    let body = content(50_000, 3);
    let (_, pkg) = h.upload(&publisher, "app.bin", body).await;
    let (status, d) = h
        .call("POST", "/api/v1/releases", Some(&publisher), Some(json!({
            "package": "app", "channel": "stable", "semver": "1.0.0", "content_hash": pkg["hash"],
        })))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{d}");
    let id = d["id"].as_i64().unwrap();
    let (_, exported) = h
        .call(
            "GET",
            &format!("/api/v1/releases/{id}/draft"),
            Some(&signer),
            None,
        )
        .await;
    let release_draft: Draft = serde_json::from_value(exported).unwrap();
    let revoked_sig = release_draft.sign(&h.offline).unwrap();
    let (status, v) = h
        .call(
            "POST",
            &format!("/api/v1/releases/{id}/signatures"),
            Some(&signer),
            Some(json!(revoked_sig)),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    let (status, v) = h
        .call(
            "POST",
            &format!("/api/v1/releases/{id}/signatures"),
            Some(&signer),
            Some(json!(release_draft.sign(&fresh).unwrap())),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");

    // Across a restart the server runs on the rotated root.
    h.stop().await;
    let a = meshara_authority::Authority::start(h.config.clone(), common::PASSPHRASE)
        .await
        .unwrap();
    assert_eq!(a.root().sequence, 2);
    h.addr = a.http_addr();
    h.authority = Some(a);
    let (_, audit) = h.call("GET", "/api/v1/audit", Some(&h.admin), None).await;
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for action in [
        "root.draft",
        "root.sign",
        "root.attach_signature",
        "root.publish",
    ] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roots_rotate_through_the_api_on_sqlite() {
    root_rotation(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roots_rotate_through_the_api_on_postgres() {
    root_rotation(Backend::Postgres).await;
}
