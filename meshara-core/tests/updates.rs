//! Software updates over real nodes on loopback: a 2-of-3 authority publishes, nodes fetch
//! from each other, verify and install; every attack is refused and changes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use meshara_core::net::Timeouts;
use meshara_core::proto::{self, update_message::Body as U};
use meshara_core::update::{AuthorityKey, Release, Role, Root, UpdateError};
use meshara_core::updater::{
    AutoUpdate, FileInstaller, PROTOCOL, TOPIC, UpdateEvent, Updater, UpdaterError,
};
use meshara_core::{Identity, Node, NodeBuilder, NodeId};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::broadcast;

const WAIT: Duration = Duration::from_secs(60);
const DAY: u64 = 86_400;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

struct Keys {
    ids: Vec<Identity>,
}

impl Keys {
    fn new(n: usize) -> Self {
        Self {
            ids: (0..n).map(|_| Identity::generate()).collect(),
        }
    }

    fn pick(&self, which: &[usize]) -> Vec<&Identity> {
        which.iter().map(|&i| &self.ids[i]).collect()
    }

    /// Every key holds both roles; 2-of-n.
    fn root(&self, sequence: u64, revoked: Vec<NodeId>) -> Root {
        Root {
            sequence,
            expires_at: now() + 365 * DAY,
            keys: self
                .ids
                .iter()
                .enumerate()
                .map(|(i, id)| AuthorityKey {
                    key: id.node_id(),
                    name: format!("key {i}"),
                    roles: [Role::Root, Role::Release].into(),
                })
                .collect(),
            root_threshold: 2,
            release_threshold: 2,
            revoked,
        }
    }
}

fn content(len: usize, seed: u8) -> Vec<u8> {
    let mut x = 0x9e37_79b9_u32 ^ u32::from(seed);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn release(seq: u64, semver: &str, body: &[u8], chunk: u32) -> Release {
    Release::for_content("app", "stable", semver, seq, now() + 30 * DAY, body, chunk).unwrap()
}

fn builder() -> NodeBuilder {
    NodeBuilder::new()
        .identity(Identity::generate())
        .listen_quic("127.0.0.1:0".parse().unwrap())
        .timeouts(Timeouts {
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(1),
            ..Timeouts::default()
        })
}

async fn node_near(peer: &Node) -> Node {
    builder()
        .bootstrap(peer.quic_addr().unwrap())
        .start()
        .await
        .unwrap()
}

async fn wait_peers(node: &Node, n: usize) {
    tokio::time::timeout(WAIT, async {
        while node.peers().len() < n {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("peers did not connect");
}

async fn wait_for<T>(
    events: &mut broadcast::Receiver<UpdateEvent>,
    mut f: impl FnMut(UpdateEvent) -> Option<T>,
) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await {
                Ok(e) => {
                    if let Some(t) = f(e) {
                        return t;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("events ended: {e}"),
            }
        }
    })
    .await
    .expect("timed out waiting for an update event")
}

/// A node whose updater installs `app/stable` to `<dir>/app`.
struct Client {
    _node: Node,
    updater: Updater,
    target: PathBuf,
    _dir: tempfile::TempDir,
}

async fn client(node: Node, root: &proto::SignedMetadata, policy: AutoUpdate) -> Client {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("app");
    std::fs::write(&target, b"version 0").unwrap();
    let updater = Updater::builder(node.clone(), dir.path().join("updates"), root.clone())
        .subscribe("app", "stable")
        .policy(policy)
        .installer(FileInstaller::new(&target))
        .stall_timeout(Duration::from_secs(3))
        .start()
        .unwrap();
    Client {
        _node: node,
        updater,
        target,
        _dir: dir,
    }
}

async fn authority(keys: &Keys) -> (Node, Updater, proto::SignedMetadata, tempfile::TempDir) {
    let node = builder().start().await.unwrap();
    let root = keys.root(1, vec![]).sign(&keys.pick(&[0, 1])).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let updater = Updater::builder(node.clone(), dir.path(), root.clone())
        .start()
        .unwrap();
    (node, updater, root, dir)
}

fn write_content(dir: &Path, name: &str, body: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_of_three_release_reaches_ten_nodes_that_verify_and_apply_it() {
    let keys = Keys::new(3);
    let (auth, publisher, root, dir) = authority(&keys).await;
    let mut clients = Vec::new();
    for _ in 0..10 {
        let n = node_near(&auth).await;
        clients.push(client(n, &root, AutoUpdate::Install).await);
    }
    wait_peers(&auth, 10).await;
    let mut events: Vec<_> = clients.iter().map(|c| c.updater.events()).collect();

    let body = content(3 << 20, 1);
    let rel = release(1, "1.0.0", &body, 64 * 1024);
    // Signed by keys 0 and 2 of the three.
    let signed = rel.sign(&keys.pick(&[0, 2])).unwrap();
    let path = write_content(dir.path(), "app-1.0.0", &body);
    publisher.publish(signed, &path).await.unwrap();

    for (c, ev) in clients.iter().zip(&mut events) {
        let installed = wait_for(ev, |e| match e {
            UpdateEvent::Installed { release } => Some(release),
            UpdateEvent::InstallFailed { error, .. } => panic!("install failed: {error}"),
            _ => None,
        })
        .await;
        assert_eq!(installed, rel);
        assert_eq!(std::fs::read(&c.target).unwrap(), body);
        assert_eq!(c.updater.installed("app", "stable"), Some(1));
        assert_eq!(
            std::fs::read(c.target.with_file_name("app.bak")).unwrap(),
            b"version 0"
        );
    }
    // The authority served at most the whole content to each client; with swarming it
    // served less than ten copies.
    let served = publisher.served_bytes();
    let others: u64 = clients.iter().map(|c| c.updater.served_bytes()).sum();
    assert_eq!(served + others, 10 * body.len() as u64);
}

/// Which refusal an attack must get.
type Expect = fn(&UpdateError) -> bool;

/// Broadcasts an update message from `node` as if it were an announcement.
fn announce(node: &Node, body: U) {
    node.broadcast(
        TOPIC,
        "application/vnd.meshara.update+protobuf",
        proto::UpdateMessage { body: Some(body) }.encode_to_vec(),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metadata_attack_is_refused_and_changes_nothing() {
    // Keys 0..3 are the authority; key 3 is revoked by the root; key 4 is unknown.
    let keys = Keys::new(5);
    let mut root = keys.root(1, vec![keys.ids[3].node_id()]);
    root.keys.truncate(3);
    let root = root.sign(&keys.pick(&[0, 1])).unwrap();
    let attacker = builder().start().await.unwrap();
    let c = client(node_near(&attacker).await, &root, AutoUpdate::Install).await;
    wait_peers(&attacker, 1).await;
    let mut events = c.updater.events();

    // A good release first, so rollback has something to roll back from. It is served by
    // an honest source on the attacker's node.
    let dir = tempfile::tempdir().unwrap();
    let source = Updater::builder(attacker.clone(), dir.path(), root.clone())
        .start()
        .unwrap();
    let v2 = content(100_000, 2);
    let good = release(2, "2.0.0", &v2, 16 * 1024);
    let path = write_content(dir.path(), "v2", &v2);
    source
        .publish(good.sign(&keys.pick(&[0, 1])).unwrap(), &path)
        .await
        .unwrap();
    wait_for(&mut events, |e| {
        matches!(e, UpdateEvent::Installed { .. }).then_some(())
    })
    .await;
    assert_eq!(std::fs::read(&c.target).unwrap(), v2);

    let body3 = content(50_000, 3);
    let r3 = release(3, "3.0.0", &body3, 16 * 1024);
    let forged_body = {
        let mut other = r3.clone();
        other.semver = "3.0.1".into();
        other.encode().unwrap()
    };
    let mut mix = r3.sign(&keys.pick(&[0, 1])).unwrap();
    // Mix and match: a valid signature from key 1, but over different metadata.
    mix.signatures[1] = meshara_core::update::signature(&forged_body, &keys.ids[1]);
    let mut dup = r3.sign(&keys.pick(&[0])).unwrap();
    dup.signatures.push(dup.signatures[0].clone());
    let mut expired = r3.clone();
    expired.expires_at = now() - 10;
    let cases: Vec<(&str, proto::SignedMetadata, Expect)> = vec![
        ("below threshold", r3.sign(&keys.pick(&[0])).unwrap(), |e| {
            matches!(e, UpdateError::BelowThreshold { .. })
        }),
        ("duplicate signer", dup, |e| {
            matches!(e, UpdateError::DuplicateSigner(_))
        }),
        ("unknown key", r3.sign(&keys.pick(&[0, 4])).unwrap(), |e| {
            matches!(e, UpdateError::UnknownKey(..))
        }),
        ("revoked key", r3.sign(&keys.pick(&[0, 3])).unwrap(), |e| {
            matches!(e, UpdateError::RevokedKey(..))
        }),
        ("mix and match", mix, |e| {
            matches!(e, UpdateError::BadSignature(..))
        }),
        (
            "rollback",
            release(1, "1.0.0", &body3, 16 * 1024)
                .sign(&keys.pick(&[0, 1]))
                .unwrap(),
            |e| matches!(e, UpdateError::Rollback { .. }),
        ),
        ("expired", expired.sign(&keys.pick(&[1, 2])).unwrap(), |e| {
            matches!(e, UpdateError::Expired { .. })
        }),
    ];
    for (name, signed, expected) in cases {
        announce(&attacker, U::Release(signed));
        let error = wait_for(&mut events, |e| match e {
            UpdateEvent::Refused { error, .. } => Some(error),
            UpdateEvent::Available { release, .. } => panic!("{name}: accepted {release:?}"),
            _ => None,
        })
        .await;
        assert!(expected(&error), "{name}: refused with {error:?}");
        assert_eq!(c.updater.installed("app", "stable"), Some(2), "{name}");
        assert_eq!(
            c.updater.latest("app", "stable"),
            Some(good.clone()),
            "{name}"
        );
        assert_eq!(std::fs::read(&c.target).unwrap(), v2, "{name}");
    }
    // A root signed by the revoked and an unknown key does not rotate either.
    let bad_root = keys.root(2, vec![]).sign(&keys.pick(&[3, 4])).unwrap();
    announce(&attacker, U::Root(bad_root));
    wait_for(&mut events, |e| match e {
        UpdateEvent::Refused { .. } => Some(()),
        UpdateEvent::RootRotated { .. } => panic!("rotated"),
        _ => None,
    })
    .await;
    assert_eq!(c.updater.root().sequence, 1);
}

/// Serves the update protocol with a twist: `chunk` decides what each chunk request gets.
fn hostile_source(
    node: &Node,
    have: Vec<u8>,
    chunk: impl Fn(u32) -> Option<Vec<u8>> + Send + Sync + 'static,
) {
    let mut listener = node.listen_streams(PROTOCOL);
    let chunk = std::sync::Arc::new(chunk);
    tokio::spawn(async move {
        while let Some(mut s) = listener.accept().await {
            let (have, chunk) = (have.clone(), chunk.clone());
            tokio::spawn(async move {
                loop {
                    let mut len = [0u8; 4];
                    if s.read_exact(&mut len).await.is_err() {
                        return;
                    }
                    let mut buf = vec![0; u32::from_be_bytes(len) as usize];
                    if s.read_exact(&mut buf).await.is_err() {
                        return;
                    }
                    let req = proto::UpdateMessage::decode(&buf[..]).unwrap();
                    let answer = match req.body.unwrap() {
                        U::HaveRequest(h) => U::Have(proto::Have {
                            content_hash: h.content_hash,
                            bitmap: have.clone().into(),
                        }),
                        U::ChunkRequest(c) => match chunk(c.index) {
                            Some(data) => U::Chunk(proto::Chunk {
                                content_hash: c.content_hash,
                                index: c.index,
                                data: data.into(),
                            }),
                            None => U::Status(proto::UpdateStatus {
                                code: 404,
                                message: "no".into(),
                            }),
                        },
                        _ => return,
                    };
                    let bytes = proto::UpdateMessage { body: Some(answer) }.encode_to_vec();
                    let mut frame = (bytes.len() as u32).to_be_bytes().to_vec();
                    frame.extend_from_slice(&bytes);
                    if s.write_all(&frame).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_chunks_and_endless_data_are_refused_and_never_installed() {
    let keys = Keys::new(3);
    let root = keys.root(1, vec![]).sign(&keys.pick(&[0, 1])).unwrap();
    for (name, lie) in [("wrong bytes", 0u8), ("more than declared", 1u8)] {
        let hostile = builder().start().await.unwrap();
        let c = client(node_near(&hostile).await, &root, AutoUpdate::Install).await;
        wait_peers(&hostile, 1).await;
        let mut events = c.updater.events();
        let body = content(40_000, 9);
        let rel = release(1, "1.0.0", &body, 8192);
        let chunks = rel.chunk_hashes.len() as u32;
        let served = body.clone();
        hostile_source(&hostile, vec![0xff; 1], move |i| {
            let start = i as usize * 8192;
            let end = (start + 8192).min(served.len());
            let mut data = served[start..end].to_vec();
            match lie {
                0 => data[0] ^= 1,
                // The last chunk with extra bytes after it.
                _ if i + 1 == chunks => data.extend_from_slice(&[0; 100]),
                _ => {}
            }
            Some(data)
        });
        // The metadata itself is genuine: the attack is in the content.
        announce(&hostile, U::Release(rel.sign(&keys.pick(&[0, 1])).unwrap()));
        let reason = wait_for(&mut events, |e| match e {
            UpdateEvent::PeerMisbehaved { peer, reason } => {
                assert_eq!(peer, hostile.node_id());
                Some(reason)
            }
            UpdateEvent::Installed { .. } => panic!("{name}: installed"),
            _ => None,
        })
        .await;
        if lie == 0 {
            assert!(reason.contains("hash differs"), "{name}: {reason}");
        } else {
            assert!(reason.contains("exceeds the declared"), "{name}: {reason}");
        }
        // Without another source the download stalls; nothing is installed.
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(std::fs::read(&c.target).unwrap(), b"version 0", "{name}");
        assert_eq!(c.updater.installed("app", "stable"), None, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_download_resumes_on_its_own_after_a_restart() {
    let keys = Keys::new(3);
    let (auth, publisher, root, dir) = authority(&keys).await;
    let body = content(1 << 20, 4);
    let rel = release(1, "1.0.0", &body, 32 * 1024);
    let chunks = rel.chunk_hashes.len();
    let signed = rel.sign(&keys.pick(&[1, 2])).unwrap();

    // First attempt: the only source holds the first half and then has nothing more.
    let half_source = builder().start().await.unwrap();
    let half = body.clone();
    let mut bitmap = vec![0u8; chunks / 8];
    bitmap[..chunks / 16].fill(0xff);
    hostile_source(&half_source, bitmap, move |i| {
        let i = i as usize;
        (i < chunks / 2).then(|| half[i * 32 * 1024..(i + 1) * 32 * 1024].to_vec())
    });
    let identity = Identity::generate();
    let state = tempfile::tempdir().unwrap();
    let first = NodeBuilder::new()
        .identity(identity.clone())
        .listen_quic("127.0.0.1:0".parse().unwrap())
        .bootstrap(half_source.quic_addr().unwrap())
        .start()
        .await
        .unwrap();
    wait_peers(&half_source, 1).await;
    let updater = Updater::builder(first.clone(), state.path(), root.clone())
        .subscribe("app", "stable")
        .stall_timeout(Duration::from_secs(2))
        .start()
        .unwrap();
    let mut events = updater.events();
    announce(&half_source, U::Release(signed.clone()));
    let available = wait_for(&mut events, |e| match e {
        UpdateEvent::Available { release, .. } => Some(release),
        _ => None,
    })
    .await;
    let err = updater.download(&available).await.unwrap_err();
    match err {
        UpdaterError::Stalled { received, total } => {
            assert_eq!(received, body.len() as u64 / 2);
            assert_eq!(total, body.len() as u64);
        }
        e => panic!("expected a stall, got {e}"),
    }
    updater.stop();
    first.stop().await;

    // Restart with the same data directory, now next to the authority.
    let path = write_content(dir.path(), "app-1.0.0.bin", &body);
    publisher.publish(signed, &path).await.unwrap();
    let second = NodeBuilder::new()
        .identity(identity)
        .listen_quic("127.0.0.1:0".parse().unwrap())
        .bootstrap(auth.quic_addr().unwrap())
        .start()
        .await
        .unwrap();
    // It installs automatically: the restarted updater picks the unfinished download up on
    // its own, without an announcement or a call.
    let target = state.path().join("app");
    let updater = Updater::builder(second.clone(), state.path(), root.clone())
        .subscribe("app", "stable")
        .authority(auth.node_id())
        .policy(AutoUpdate::Install)
        .installer(FileInstaller::new(&target))
        .start()
        .unwrap();
    // The release it verified before the restart is still known.
    assert_eq!(updater.latest("app", "stable"), Some(rel.clone()));
    tokio::time::timeout(WAIT, async {
        while updater.installed("app", "stable") != Some(1) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the resumed download was installed");
    assert_eq!(std::fs::read(&target).unwrap(), body);
    // Resumed from half: the authority sent only the other half.
    assert_eq!(publisher.served_bytes(), body.len() as u64 / 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roots_rotate_over_the_mesh_and_an_old_root_only_set_is_refused() {
    let old = Keys::new(3);
    let (auth, publisher, root, dir) = authority(&old).await;
    let c = client(node_near(&auth).await, &root, AutoUpdate::Install).await;
    wait_peers(&auth, 1).await;
    let mut events = c.updater.events();

    // A complete key replacement that also revokes old key 0 (say it leaked).
    let new = Keys::new(3);
    let new_root = new.root(2, vec![old.ids[0].node_id()]);
    // Signed by the old threshold only: refused.
    let old_only = new_root.sign(&old.pick(&[1, 2])).unwrap();
    assert!(publisher.publish_root(old_only.clone()).is_err());
    announce(&auth, U::Root(old_only));
    let error = wait_for(&mut events, |e| match e {
        UpdateEvent::Refused { error, .. } => Some(error),
        UpdateEvent::RootRotated { .. } => panic!("rotated with old keys only"),
        _ => None,
    })
    .await;
    assert!(matches!(error, UpdateError::UnknownKey(..)), "{error:?}");

    // Old and new thresholds: rotated, on the authority and on the node.
    let body = new_root.encode().unwrap();
    let mut both = meshara_core::update::sign_body(body, &new.pick(&[0, 1]));
    both.signatures.extend(
        old.pick(&[1, 2])
            .iter()
            .map(|id| meshara_core::update::signature(&both.body, id)),
    );
    publisher.publish_root(both).unwrap();
    let seq = wait_for(&mut events, |e| match e {
        UpdateEvent::RootRotated { sequence } => Some(sequence),
        _ => None,
    })
    .await;
    assert_eq!(seq, 2);

    // Releases now need the new keys: the old ones are unknown, key 0 revoked for good.
    let v = content(20_000, 5);
    let rel = release(1, "1.0.0", &v, 4096);
    let path = write_content(dir.path(), "v", &v);
    assert!(matches!(
        publisher
            .publish(rel.sign(&old.pick(&[0, 1])).unwrap(), &path)
            .await,
        Err(UpdaterError::Verify(UpdateError::RevokedKey(..)))
    ));
    assert!(matches!(
        publisher
            .publish(rel.sign(&old.pick(&[1, 2])).unwrap(), &path)
            .await,
        Err(UpdaterError::Verify(UpdateError::UnknownKey(..)))
    ));
    publisher
        .publish(rel.sign(&new.pick(&[1, 2])).unwrap(), &path)
        .await
        .unwrap();
    wait_for(&mut events, |e| {
        matches!(e, UpdateEvent::Installed { .. }).then_some(())
    })
    .await;
    assert_eq!(std::fs::read(&c.target).unwrap(), v);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_node_checks_an_authority_and_its_state_survives_a_restart() {
    let keys = Keys::new(3);
    let (auth, publisher, root, dir) = authority(&keys).await;
    let v1 = content(70_000, 6);
    let rel = release(5, "1.4.0", &v1, 8192);
    let path = write_content(dir.path(), "v1", &v1);
    publisher
        .publish(rel.sign(&keys.pick(&[0, 1])).unwrap(), &path)
        .await
        .unwrap();

    let n = node_near(&auth).await;
    wait_peers(&auth, 1).await;
    let state = tempfile::tempdir().unwrap();
    let target = state.path().join("app");
    let start = |node: Node| {
        Updater::builder(node, state.path().join("u"), root.clone())
            .subscribe("app", "stable")
            .authority(auth.node_id())
            .installer(FileInstaller::new(&target).check_fn(|p| {
                // The post-install check: the new file must be there.
                std::fs::metadata(p).map(|_| ()).map_err(|e| e.to_string())
            }))
            .start()
            .unwrap()
    };
    let updater = start(n.clone());
    let found = updater.check("app", "stable").await.unwrap().unwrap();
    assert_eq!(found, rel);
    updater.apply(&found).await.unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), v1);
    assert_eq!(updater.check("app", "stable").await.unwrap(), None);
    updater.stop();

    // After a restart the installed sequence is remembered: the same release is a rollback.
    let updater = start(n.clone());
    assert_eq!(updater.installed("app", "stable"), Some(5));
    assert_eq!(updater.check("app", "stable").await.unwrap(), None);
    let mut events = updater.events();
    let older = release(4, "1.3.0", &v1, 8192);
    announce(&auth, U::Release(older.sign(&keys.pick(&[0, 2])).unwrap()));
    let error = wait_for(&mut events, |e| match e {
        UpdateEvent::Refused { error, .. } => Some(error),
        _ => None,
    })
    .await;
    assert!(matches!(
        error,
        UpdateError::Rollback {
            current: 5,
            offered: 4,
            ..
        }
    ));
    // And an unverified release cannot be applied at all.
    let mut forged = rel.clone();
    forged.sequence = 6;
    assert!(matches!(
        updater.apply(&forged).await,
        Err(UpdaterError::NotVerified { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_automatic_download_is_tried_again_and_a_corrupt_cache_is_replaced() {
    let keys = Keys::new(3);
    let (auth, publisher, root, dir) = authority(&keys).await;
    // A relay learns the release but holds no content (it is not subscribed).
    let relay = node_near(&auth).await;
    let relay_updater = Updater::builder(relay.clone(), dir.path().join("relay"), root.clone())
        .start()
        .unwrap();
    wait_peers(&auth, 1).await;
    let mut relay_events = relay_updater.events();
    let body = content(300_000, 7);
    let rel = release(1, "1.0.0", &body, 16 * 1024);
    let signed = rel.sign(&keys.pick(&[0, 1])).unwrap();
    let path = write_content(dir.path(), "v1", &body);
    publisher.publish(signed.clone(), &path).await.unwrap();
    wait_for(&mut relay_events, |e| {
        matches!(e, UpdateEvent::Available { .. }).then_some(())
    })
    .await;
    // The only copy goes away.
    publisher.stop();
    auth.stop().await;

    // A node that installs automatically hears of the release from the relay, finds no
    // source, and says when it tries again.
    let node = node_near(&relay).await;
    let cdir = tempfile::tempdir().unwrap();
    let target = cdir.path().join("app");
    let updater = Updater::builder(node.clone(), cdir.path().join("u"), root.clone())
        .subscribe("app", "stable")
        .policy(AutoUpdate::Install)
        .installer(FileInstaller::new(&target))
        .stall_timeout(Duration::from_millis(500))
        .start()
        .unwrap();
    let mut events = updater.events();
    wait_peers(&node, 1).await;
    assert_eq!(
        updater.check("app", "stable").await.unwrap(),
        Some(rel.clone())
    );
    let (error, retry_in) = wait_for(&mut events, |e| match e {
        UpdateEvent::DownloadFailed {
            release,
            error,
            retry_in,
        } => {
            assert_eq!(release, rel);
            Some((error, retry_in))
        }
        UpdateEvent::Installed { .. } => panic!("installed without a source"),
        _ => None,
    })
    .await;
    assert!(error.contains("stalled"), "{error}");
    assert!(retry_in > Duration::ZERO);

    // A holder appears: the retry finds it and installs.
    let holder = builder().start().await.unwrap();
    let hdir = tempfile::tempdir().unwrap();
    let holder_updater = Updater::builder(holder.clone(), hdir.path(), root.clone())
        .start()
        .unwrap();
    holder_updater.publish(signed, &path).await.unwrap();
    node.connect(&holder.quic_addr().unwrap()).await.unwrap();
    wait_for(&mut events, |e| match e {
        UpdateEvent::Installed { release } => Some(release),
        UpdateEvent::InstallFailed { error, .. } => panic!("{error}"),
        _ => None,
    })
    .await;
    assert_eq!(std::fs::read(&target).unwrap(), body);

    // A manual client whose cached copy rots on disk: applying refuses it, evicts it, and
    // the next attempt downloads it again.
    let other = node_near(&holder).await;
    let odir = tempfile::tempdir().unwrap();
    let otarget = odir.path().join("app");
    let manual = Updater::builder(other, odir.path().join("u"), root.clone())
        .authority(holder.node_id())
        .installer(FileInstaller::new(&otarget))
        .start()
        .unwrap();
    let found = manual.check("app", "stable").await.unwrap().unwrap();
    let cached = manual.download(&found).await.unwrap();
    let mut bytes = std::fs::read(&cached).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&cached, &bytes).unwrap();
    assert!(matches!(
        manual.apply(&found).await,
        Err(UpdaterError::Verify(UpdateError::ContentMismatch(_)))
    ));
    assert!(!cached.exists(), "the corrupt copy was evicted");
    assert!(!otarget.exists(), "nothing was installed");
    manual.apply(&found).await.unwrap();
    assert_eq!(std::fs::read(&otarget).unwrap(), body);
    assert_eq!(manual.installed("app", "stable"), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_root_chain_is_caught_up_in_batches_and_survives_a_restart() {
    let keys = Keys::new(3);
    let (auth, publisher, root, dir) = authority(&keys).await;
    // Twenty rotations: more than one metadata answer carries.
    for sequence in 2..=21 {
        publisher
            .publish_root(
                keys.root(sequence, vec![])
                    .sign(&keys.pick(&[0, 1]))
                    .unwrap(),
            )
            .unwrap();
    }
    assert_eq!(publisher.root().sequence, 21);
    let body = content(10_000, 8);
    let rel = release(1, "1.0.0", &body, 4096);
    let path = write_content(dir.path(), "v", &body);
    publisher
        .publish(rel.sign(&keys.pick(&[1, 2])).unwrap(), &path)
        .await
        .unwrap();

    // A node shipped with root 1 catches up through every rotation in one check.
    let node = node_near(&auth).await;
    let state = tempfile::tempdir().unwrap();
    let start = || {
        Updater::builder(node.clone(), state.path(), root.clone())
            .authority(auth.node_id())
            .start()
            .unwrap()
    };
    let updater = start();
    assert_eq!(
        updater.check("app", "stable").await.unwrap(),
        Some(rel.clone())
    );
    assert_eq!(updater.root().sequence, 21);
    updater.stop();

    // A request for chunks of size 0 is refused by the decoder with a clear status.
    let mut raw = node.open_stream(auth.node_id(), PROTOCOL).await.unwrap();
    let ask = proto::UpdateMessage {
        body: Some(U::ChunkRequest(proto::ChunkRequest {
            content_hash: rel.content_hash.to_vec().into(),
            index: 0,
            chunk_size: 0,
        })),
    }
    .encode_to_vec();
    raw.write_all(&(ask.len() as u32).to_be_bytes())
        .await
        .unwrap();
    raw.write_all(&ask).await.unwrap();
    let mut len = [0u8; 4];
    raw.read_exact(&mut len).await.unwrap();
    let mut buf = vec![0; u32::from_be_bytes(len) as usize];
    raw.read_exact(&mut buf).await.unwrap();
    match proto::UpdateMessage::decode(&buf[..]).unwrap().body {
        Some(U::Status(s)) => {
            assert_eq!(s.code, 400);
            assert!(s.message.contains("chunk_size"), "{}", s.message);
        }
        other => panic!("{other:?}"),
    }

    // The whole chain was kept: a restart replays it from the shipped root.
    let updater = start();
    assert_eq!(updater.root().sequence, 21);
    assert_eq!(updater.latest("app", "stable"), Some(rel));
}
