//! Release adoption: an authority node publishes a threshold-signed release, the explorer
//! follows it (verified against the authority's root), and shows how many listed nodes run it
//! (nodes say what they run in their record's agent).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::{Backend, explorer, get, host};
use meshara_core::update::{AuthorityKey, Release, Role, Root};
use meshara_core::updater::Updater;
use meshara_core::{Identity, Node, NodeConfig, PeerAddr};
use prost::Message;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn node(i: usize, agent: &str, bootstrap: Option<PeerAddr>) -> Node {
    let config = NodeConfig {
        listen_quic: Some(format!("{}:0", host(i)).parse().unwrap()),
        agent: agent.to_owned(),
        ..NodeConfig::default()
    };
    let mut b = Node::builder()
        .identity(Identity::generate())
        .config(config);
    if let Some(a) = bootstrap {
        b = b.bootstrap(a);
    }
    b.start().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adoption_of_a_published_release_is_shown() {
    let keys = [Identity::generate(), Identity::generate()];
    let root = Root {
        sequence: 1,
        expires_at: now() + 86_400 * 365,
        keys: keys
            .iter()
            .enumerate()
            .map(|(i, k)| AuthorityKey {
                key: k.node_id(),
                name: format!("k{i}"),
                roles: [Role::Root, Role::Release].into(),
            })
            .collect(),
        root_threshold: 2,
        release_threshold: 2,
        revoked: Vec::new(),
    };
    let signed_root = root.sign(&[&keys[0], &keys[1]]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root_path = dir.path().join("root.pb");
    std::fs::write(&root_path, signed_root.encode_to_vec()).unwrap();

    // The authority node publishes app 2.0.0 on stable.
    let authority = node(0, "meshara-authority/0.1.0", None).await;
    let publisher = Updater::builder(authority.clone(), dir.path().join("auth"), signed_root)
        .start()
        .unwrap();
    let content = vec![7u8; 10_000];
    let file = dir.path().join("app-2.0.0");
    std::fs::write(&file, &content).unwrap();
    let release = Release::for_content(
        "app",
        "stable",
        "2.0.0",
        1,
        now() + 86_400 * 30,
        &content,
        4096,
    )
    .unwrap();
    publisher
        .publish(release.sign(&[&keys[0], &keys[1]]).unwrap(), &file)
        .await
        .unwrap();

    // Three nodes run it, two run something older.
    let boot = authority.quic_addr();
    let mut nodes = Vec::new();
    for i in 1..=5 {
        let agent = if i <= 3 { "app/2.0.0" } else { "app/1.9.0" };
        nodes.push(node(i, agent, boot.clone()).await);
    }
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;

    let authority_id = authority.node_id().to_string();
    let Some(h) = explorer(Backend::Sqlite, &[boot.unwrap().to_string()], |c| {
        c.releases.root = Some(root_path.clone());
        c.releases.authorities = vec![authority_id.clone()];
        c.releases.track = vec!["app/stable".into()];
    })
    .await
    else {
        return;
    };
    h.explorer.crawl_now().await.unwrap();
    let history = get(h.addr, "/api/v1/history").await;
    let releases = history["releases"].as_array().unwrap();
    assert_eq!(releases.len(), 1, "{history}");
    let r = &releases[0];
    assert_eq!(r["package"], "app");
    assert_eq!(r["version"], "2.0.0");
    assert_eq!(r["nodes"], 3, "{history}");
    let share = r["share"].as_f64().unwrap();
    assert!((share - 0.5).abs() < 1e-9, "3 of 6 listed nodes: {history}");
    assert_eq!(
        r["adoption"].as_array().unwrap().last().unwrap()["nodes"],
        3
    );
    let overview = get(h.addr, "/api/v1/overview").await;
    let versions = overview["by_version"].as_array().unwrap();
    assert!(
        versions
            .iter()
            .any(|v| v["version"] == "2.0.0" && v["count"] == 3),
        "{overview}"
    );

    h.explorer.stop().await;
    publisher.stop();
    for n in nodes {
        n.stop().await;
    }
    authority.stop().await;
}
