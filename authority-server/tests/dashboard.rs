//! The dashboard in a real headless Chromium (Debian's chromium + playwright-core): the
//! script in tests/browser/dashboard.mjs signs in, reads every page, signs and publishes a
//! release, and checks what a viewer may do, against a real server seeded here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    missing_docs
)]

mod common;

use std::path::Path;

use common::{Backend, Harness, content};
use hyper::StatusCode;
use meshara_authority::keys::Draft;
use serde_json::json;

fn browser_ready() -> bool {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let ready = Path::new(&chromium).exists()
        && Path::new("tests/browser/node_modules/playwright-core").exists();
    if !ready {
        assert!(
            std::env::var("MESHARA_REQUIRE_BROWSER").is_err(),
            "MESHARA_REQUIRE_BROWSER is set but chromium or tests/browser/node_modules is missing"
        );
        eprintln!(
            "note: chromium or playwright-core missing (run `npm ci` in authority-server/tests/browser); skipping"
        );
    }
    ready
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_works_in_headless_chromium() {
    if !browser_ready() {
        return;
    }
    let mut h = Harness::start(Backend::Sqlite).await.unwrap();
    let publisher = h.token("publisher").await;
    let viewer = h.token("viewer").await;
    let (status, pkg) = h
        .upload(&publisher, "app-2.0.0.tar", content(150_000, 3))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let hash = pkg["hash"].as_str().unwrap().to_owned();
    let mut ids = Vec::new();
    for semver in ["2.0.0", "2.0.1"] {
        let (status, r) = h
            .call(
                "POST",
                "/api/v1/releases",
                Some(&publisher),
                Some(json!({
                    "package": "app", "channel": "stable", "semver": semver, "content_hash": hash,
                })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{r}");
        let id = r["id"].as_i64().unwrap();
        // One signature made offline on each.
        let (_, draft) = h
            .call(
                "GET",
                &format!("/api/v1/releases/{id}/draft"),
                Some(&h.admin),
                None,
            )
            .await;
        let draft: Draft = serde_json::from_value(draft).unwrap();
        let sig = draft.sign(&h.offline).unwrap();
        let (status, _) = h
            .call(
                "POST",
                &format!("/api/v1/releases/{id}/signatures"),
                Some(&h.admin),
                Some(serde_json::to_value(sig).unwrap()),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        ids.push(id);
    }
    // The first is published (second signature by a server-held key); the second stays a
    // draft for the browser to sign and publish.
    h.call(
        "POST",
        &format!("/api/v1/releases/{}/sign", ids[0]),
        Some(&h.admin),
        Some(json!({"key": "k2"})),
    )
    .await;
    let (status, v) = h
        .call(
            "POST",
            &format!("/api/v1/releases/{}/publish", ids[0]),
            Some(&publisher),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    h.call("GET", "/v1/updates/app/stable", None, None).await;

    let expect = json!({"package_hash": hash, "draft_id": ids[1], "published_id": ids[0], "server_key": "k1", "threshold": 2});
    let artifacts = h.dir.path().join("artifacts");
    let addr = h.addr;
    let admin = h.admin.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .arg("tests/browser/dashboard.mjs")
            .env("AUTHORITY_URL", format!("http://{addr}"))
            .env("ADMIN_TOKEN", admin)
            .env("VIEWER_TOKEN", viewer)
            .env("EXPECT", expect.to_string())
            .env("DASHBOARD_ARTIFACTS", artifacts)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "dashboard test failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("0 failed"), "{stdout}");

    // What the browser did really happened on the server.
    let (_, r) = h
        .call(
            "GET",
            &format!("/api/v1/releases/{}", ids[1]),
            Some(&h.admin),
            None,
        )
        .await;
    assert_eq!(r["status"], "published", "{r}");
    h.stop().await;
}
