#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

const NOW: u64 = 1_800_000_000;
const DAY: u64 = 86_400;

struct Authority {
    ids: Vec<Identity>,
}

impl Authority {
    fn new(n: usize) -> Self {
        Self {
            ids: (0..n).map(|_| Identity::generate()).collect(),
        }
    }

    fn refs(&self, which: &[usize]) -> Vec<&Identity> {
        which.iter().map(|&i| &self.ids[i]).collect()
    }

    /// Every key holds both roles; 2-of-n for each.
    fn root(&self, sequence: u64) -> Root {
        Root {
            sequence,
            expires_at: NOW + 365 * DAY,
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
            revoked: Vec::new(),
        }
    }
}

fn content() -> Vec<u8> {
    (0..10_000u32).map(|i| (i % 251) as u8).collect()
}

fn release(sequence: u64) -> Release {
    Release::for_content(
        "app",
        "stable",
        "1.2.3",
        sequence,
        NOW + 30 * DAY,
        &content(),
        4096,
    )
    .unwrap()
}

fn setup() -> (Authority, TrustState) {
    let auth = Authority::new(3);
    let state = TrustState::new(auth.root(1)).unwrap();
    (auth, state)
}

#[test]
fn a_two_of_three_quorum_publishes_a_release() {
    let (auth, mut state) = setup();
    let signed = release(1).sign(&auth.refs(&[0, 2])).unwrap();
    let verified = state.verify_release(&signed, NOW).unwrap();
    assert_eq!(verified, release(1));
    let mut content_check = ContentVerifier::new(&verified);
    for chunk in content().chunks(1000) {
        content_check.update(chunk).unwrap();
    }
    content_check.finish().unwrap();
    for (i, chunk) in content().chunks(4096).enumerate() {
        ContentVerifier::check_chunk(&verified, i, chunk).unwrap();
    }
    state.record_release(&verified);
    assert_eq!(state.installed("app", "stable"), Some(1));
    // Signatures made offline and attached later count the same.
    let body = release(2).encode().unwrap();
    let signed = proto::SignedMetadata {
        signatures: vec![
            signature(&body, &auth.ids[1]),
            signature(&body, &auth.ids[0]),
        ],
        body: body.into(),
    };
    assert_eq!(state.verify_release(&signed, NOW).unwrap().sequence, 2);
}

#[test]
fn below_threshold_is_refused() {
    let (auth, state) = setup();
    let signed = release(1).sign(&auth.refs(&[1])).unwrap();
    assert_eq!(
        state.verify_release(&signed, NOW),
        Err(UpdateError::BelowThreshold {
            role: Role::Release,
            valid: 1,
            needed: 2
        })
    );
}

#[test]
fn one_key_signing_twice_counts_once_and_is_refused() {
    let (auth, state) = setup();
    let signed = release(1).sign(&auth.refs(&[1, 1])).unwrap();
    assert_eq!(
        state.verify_release(&signed, NOW),
        Err(UpdateError::DuplicateSigner(auth.ids[1].node_id()))
    );
    // Even when a third, distinct signature would reach the threshold.
    let signed = release(1).sign(&auth.refs(&[0, 1, 1])).unwrap();
    assert_eq!(
        state.verify_release(&signed, NOW),
        Err(UpdateError::DuplicateSigner(auth.ids[1].node_id()))
    );
}

#[test]
fn unknown_keys_do_not_count() {
    let (auth, state) = setup();
    let stranger = Identity::generate();
    let signed = release(1).sign(&[&auth.ids[0], &stranger]).unwrap();
    assert_eq!(
        state.verify_release(&signed, NOW),
        Err(UpdateError::UnknownKey(stranger.node_id(), 1, 2))
    );
    // An extra unknown signature beside a full quorum is ignored (it cannot help or hurt).
    let signed = release(1)
        .sign(&[&auth.ids[0], &stranger, &auth.ids[1]])
        .unwrap();
    assert!(state.verify_release(&signed, NOW).is_ok());
}

#[test]
fn a_key_without_the_role_does_not_count() {
    let auth = Authority::new(3);
    let mut root = auth.root(1);
    root.keys[2].roles = [Role::Root].into();
    let state = TrustState::new(root).unwrap();
    let signed = release(1).sign(&auth.refs(&[0, 2])).unwrap();
    assert_eq!(
        state.verify_release(&signed, NOW),
        Err(UpdateError::UnknownKey(auth.ids[2].node_id(), 1, 2))
    );
}

#[test]
fn a_forged_signature_does_not_count() {
    let (auth, state) = setup();
    let mut signed = release(1).sign(&auth.refs(&[0, 1])).unwrap();
    let mut sig = signed.signatures[1].signature.to_vec();
    sig[10] ^= 1;
    signed.signatures[1].signature = sig.into();
    assert_eq!(
        state.verify_release(&signed, NOW),
        Err(UpdateError::BadSignature(auth.ids[1].node_id(), 1, 2))
    );
    // Signatures over other content (mix and match) do not verify either.
    let other = release(1).sign(&auth.refs(&[0, 1])).unwrap();
    let mut mixed = release(5).sign(&auth.refs(&[0, 1])).unwrap();
    mixed.signatures = other.signatures;
    assert!(matches!(
        state.verify_release(&mixed, NOW),
        Err(UpdateError::BadSignature(..))
    ));
}

#[test]
fn revoked_keys_never_count_again() {
    let (auth, mut state) = setup();
    // Rotate to a root that revokes key 2 and adds a replacement.
    let replacement = Identity::generate();
    let mut next = auth.root(2);
    next.keys.remove(2);
    next.keys.push(AuthorityKey {
        key: replacement.node_id(),
        name: "replacement".into(),
        roles: [Role::Root, Role::Release].into(),
    });
    next.revoked = vec![auth.ids[2].node_id()];
    state
        .rotate_root(&next.sign(&auth.refs(&[0, 1])).unwrap(), NOW)
        .unwrap();
    let signed = release(1).sign(&auth.refs(&[0, 2])).unwrap();
    assert_eq!(
        state.verify_release(&signed, NOW),
        Err(UpdateError::RevokedKey(auth.ids[2].node_id(), 1, 2))
    );
    let signed = release(1).sign(&[&auth.ids[0], &replacement]).unwrap();
    assert!(state.verify_release(&signed, NOW).is_ok());
    // A later root may not bring the revoked key back.
    let mut sneaky = next.clone();
    sneaky.sequence = 3;
    sneaky.revoked.clear();
    sneaky.keys.push(AuthorityKey {
        key: auth.ids[2].node_id(),
        name: "back again".into(),
        roles: [Role::Release].into(),
    });
    let err = state
        .rotate_root(&sneaky.sign(&[&auth.ids[0], &auth.ids[1]]).unwrap(), NOW)
        .unwrap_err();
    assert!(matches!(err, UpdateError::Invalid { .. }), "{err}");
    assert_eq!(state.root().sequence, 2);
    // The revoked key no longer counts towards the current root's threshold either.
    let mut later = next.clone();
    later.sequence = 3;
    let err = state
        .rotate_root(&later.sign(&[&auth.ids[0], &auth.ids[2]]).unwrap(), NOW)
        .unwrap_err();
    assert!(matches!(err, UpdateError::RevokedKey(..)), "{err}");
}

#[test]
fn the_outgoing_quorum_may_sign_the_root_that_revokes_it() {
    let (old, mut state) = setup();
    let new = Authority::new(3);
    let mut next = new.root(2);
    next.revoked = old.ids.iter().map(Identity::node_id).collect();
    let both = next
        .sign(&[&old.ids[0], &old.ids[1], &new.ids[1], &new.ids[2]])
        .unwrap();
    state.rotate_root(&both, NOW).unwrap();
    assert!(matches!(
        state.verify_release(&release(1).sign(&old.refs(&[0, 1])).unwrap(), NOW),
        Err(UpdateError::RevokedKey(..))
    ));
}

#[test]
fn rollback_to_a_lower_or_equal_sequence_is_refused() {
    let (auth, mut state) = setup();
    let r5 = state
        .verify_release(&release(5).sign(&auth.refs(&[0, 1])).unwrap(), NOW)
        .unwrap();
    state.record_release(&r5);
    for seq in [5, 4, 1] {
        assert_eq!(
            state.verify_release(&release(seq).sign(&auth.refs(&[0, 1])).unwrap(), NOW),
            Err(UpdateError::Rollback {
                what: "release",
                current: 5,
                offered: seq
            })
        );
    }
    // Restoring older content is a newer release with the old content: allowed.
    assert!(
        state
            .verify_release(&release(6).sign(&auth.refs(&[0, 1])).unwrap(), NOW)
            .is_ok()
    );
    // Another channel has its own sequence.
    let mut beta = release(1);
    beta.channel = "beta".into();
    assert!(
        state
            .verify_release(&beta.sign(&auth.refs(&[0, 1])).unwrap(), NOW)
            .is_ok()
    );
}

#[test]
fn expired_metadata_is_refused_freeze_attack() {
    let (auth, state) = setup();
    let signed = release(1).sign(&auth.refs(&[0, 1])).unwrap();
    let later = NOW + 31 * DAY;
    assert_eq!(
        state.verify_release(&signed, later),
        Err(UpdateError::Expired {
            what: "release",
            expires_at: NOW + 30 * DAY,
            now: later
        })
    );
    // An expired root freezes everything until a fresh root arrives.
    let mut short = release(1);
    short.expires_at = NOW + 400 * DAY;
    let signed = short.sign(&auth.refs(&[0, 1])).unwrap();
    let after_root = NOW + 366 * DAY;
    assert!(matches!(
        state.verify_release(&signed, after_root),
        Err(UpdateError::Expired { what: "root", .. })
    ));
}

#[test]
fn content_must_match_its_release() {
    let r = release(1);
    let mut data = content();
    // A chunk from elsewhere, a wrong length, a chunk past the end.
    data[5000] ^= 0xff;
    assert!(matches!(
        ContentVerifier::check_chunk(&r, 1, &data[4096..8192]),
        Err(UpdateError::ContentMismatch(_))
    ));
    assert!(matches!(
        ContentVerifier::check_chunk(&r, 0, &data[..100]),
        Err(UpdateError::ContentMismatch(_))
    ));
    assert!(matches!(
        ContentVerifier::check_chunk(&r, 3, &data[..10]),
        Err(UpdateError::ContentMismatch(_))
    ));
    let mut whole = ContentVerifier::new(&r);
    whole.update(&data).unwrap();
    assert_eq!(
        whole.finish(),
        Err(UpdateError::ContentMismatch("content hash differs".into()))
    );
    // Short content.
    let mut short = ContentVerifier::new(&r);
    short.update(&content()[..9999]).unwrap();
    assert!(matches!(
        short.finish(),
        Err(UpdateError::ContentMismatch(_))
    ));
}

#[test]
fn content_larger_than_declared_is_cut_off() {
    let r = release(1);
    let mut v = ContentVerifier::new(&r);
    v.update(&content()).unwrap();
    assert_eq!(
        v.update(&[0]),
        Err(UpdateError::ContentTooLarge { declared: 10_000 })
    );
    // An oversized last chunk is refused as too large.
    let mut last = content()[8192..].to_vec();
    last.push(0);
    assert_eq!(
        ContentVerifier::check_chunk(&r, 2, &last),
        Err(UpdateError::ContentTooLarge { declared: 10_000 })
    );
}

#[test]
fn root_rotation_needs_old_and_new_thresholds() {
    let (old, mut state) = setup();
    let new = Authority::new(3);
    let next = new.root(2);
    // Old keys alone: the new root's own threshold is missed.
    let err = state
        .rotate_root(&next.sign(&old.refs(&[0, 1])).unwrap(), NOW)
        .unwrap_err();
    assert!(
        matches!(
            err,
            UpdateError::UnknownKey(..) | UpdateError::BelowThreshold { .. }
        ),
        "{err}"
    );
    // New keys alone: the old root's threshold is missed.
    let err = state
        .rotate_root(&next.sign(&new.refs(&[0, 1])).unwrap(), NOW)
        .unwrap_err();
    assert!(matches!(err, UpdateError::UnknownKey(..)), "{err}");
    assert_eq!(state.root().sequence, 1);
    // Both: rotated.
    let both = next
        .sign(&[&old.ids[0], &old.ids[1], &new.ids[0], &new.ids[2]])
        .unwrap();
    state.rotate_root(&both, NOW).unwrap();
    assert_eq!(state.root().sequence, 2);
    // Releases now need the new keys; the old ones no longer count.
    let r = release(1);
    assert!(matches!(
        state.verify_release(&r.sign(&old.refs(&[0, 1])).unwrap(), NOW),
        Err(UpdateError::UnknownKey(..))
    ));
    assert!(
        state
            .verify_release(&r.sign(&new.refs(&[1, 2])).unwrap(), NOW)
            .is_ok()
    );
    // A replayed old root is a rollback.
    let replay = old.root(1).sign(&old.refs(&[0, 1])).unwrap();
    assert!(matches!(
        state.rotate_root(&replay, NOW),
        Err(UpdateError::Rollback { what: "root", .. })
    ));
    // An expired new root is refused.
    let mut stale = new.root(3);
    stale.expires_at = NOW - 1;
    assert!(matches!(
        state.rotate_root(&stale.sign(&new.refs(&[0, 1])).unwrap(), NOW),
        Err(UpdateError::Expired { what: "root", .. })
    ));
}

#[test]
fn a_refused_release_changes_nothing() {
    let (auth, mut state) = setup();
    let ok = state
        .verify_release(&release(3).sign(&auth.refs(&[0, 1])).unwrap(), NOW)
        .unwrap();
    state.record_release(&ok);
    let before = (state.root().clone(), state.installed("app", "stable"));
    let attempts = [
        release(9).sign(&auth.refs(&[0])).unwrap(),
        release(9).sign(&auth.refs(&[0, 0])).unwrap(),
        release(2).sign(&auth.refs(&[0, 1])).unwrap(),
    ];
    for a in &attempts {
        assert!(state.verify_release(a, NOW).is_err());
        assert!(state.verify_release(a, NOW + 1000 * DAY).is_err());
    }
    assert_eq!(
        (state.root().clone(), state.installed("app", "stable")),
        before
    );
}

#[test]
fn metadata_fields_are_validated() {
    let auth = Authority::new(2);
    let mut root = auth.root(1);
    root.release_threshold = 3;
    assert!(matches!(root.encode(), Err(UpdateError::Invalid { .. })));
    let mut root = auth.root(1);
    root.keys.push(root.keys[0].clone());
    assert!(matches!(root.encode(), Err(UpdateError::Invalid { .. })));
    for bad in [
        "1.2",
        "01.2.3",
        "1.2.3-",
        "1.2.3+",
        "v1.2.3",
        "1.2.3-a..b",
        "",
    ] {
        let mut r = release(1);
        r.semver = bad.into();
        assert!(r.encode().is_err(), "{bad:?} accepted");
    }
    for good in ["0.0.0", "1.2.3-rc.1", "10.20.30+build.5", "1.0.0-alpha-1+x"] {
        let mut r = release(1);
        r.semver = good.into();
        assert!(r.encode().is_ok(), "{good:?} refused");
    }
    let mut r = release(1);
    r.chunk_hashes.pop();
    assert!(r.encode().is_err());
    let mut r = release(1);
    r.rollout_percent = Some(0);
    assert!(r.encode().is_err());
    // Round trips.
    let r = release(1);
    assert_eq!(Release::decode(&r.encode().unwrap()).unwrap(), r);
    let root = auth.root(4);
    assert_eq!(Root::decode(&root.encode().unwrap()).unwrap(), root);
}

#[test]
fn hostile_bodies_are_refused_without_panic() {
    let (auth, state) = setup();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for len in [0usize, 1, 7, 64, 300, 5000] {
        let body: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let _ = Root::decode(&body);
        let signed = sign_body(body, &auth.refs(&[0, 1]));
        assert!(state.verify_release(&signed, NOW).is_err());
    }
    // Oversized bodies are refused before decoding.
    assert!(matches!(
        Release::decode(&vec![0u8; MAX_BODY + 1]),
        Err(UpdateError::Invalid { .. })
    ));
    // No signatures at all, or too many.
    let mut signed = release(1).sign(&auth.refs(&[0, 1])).unwrap();
    signed.signatures.clear();
    assert!(matches!(
        state.verify_release(&signed, NOW),
        Err(UpdateError::Invalid { .. })
    ));
}

#[test]
fn staged_rollout_is_stable_and_proportional() {
    let mut r = release(1);
    r.rollout_percent = Some(30);
    let nodes: Vec<NodeId> = (0..2000).map(|_| Identity::generate().node_id()).collect();
    let inside = nodes.iter().filter(|n| r.in_rollout(n)).count();
    assert!((450..=750).contains(&inside), "{inside} of 2000 at 30%");
    for n in &nodes[..50] {
        assert_eq!(r.in_rollout(n), r.in_rollout(n));
    }
    r.rollout_percent = Some(100);
    assert!(nodes.iter().all(|n| r.in_rollout(n)));
    r.rollout_percent = None;
    assert!(nodes.iter().all(|n| r.in_rollout(n)));
}
