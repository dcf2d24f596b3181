//! Update metadata and update-stream messages from untrusted peers: never panics, and
//! whatever decodes as a root or a release re-encodes to the same value. Checking signatures
//! of arbitrary metadata against a fixed root never succeeds by accident.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshara_core::proto::update_message::Body;
use meshara_core::update::{self, Release, Root, TrustState};
use meshara_core::wire;

fn check_body(body: &[u8]) {
    if let Ok(root) = Root::decode(body) {
        let again = Root::decode(&root.encode().expect("accepted roots re-encode")).expect("re-encoded roots decode");
        assert_eq!(again, root);
    }
    if let Ok(release) = Release::decode(body) {
        let again =
            Release::decode(&release.encode().expect("accepted releases re-encode")).expect("re-encoded releases decode");
        assert_eq!(again, release);
        let _ = release.chunk_len(release.chunk_hashes.len());
    }
}

fuzz_target!(|data: &[u8]| {
    check_body(data);
    if let Ok(signed) = update::decode_signed(data) {
        check_body(&signed.body);
        let root = Root {
            sequence: 1,
            expires_at: u64::MAX,
            keys: vec![update::AuthorityKey {
                key: meshara_core::NodeId::from_bytes(&[
                    0xd7, 0x5a, 0x98, 0x01, 0x82, 0xb1, 0x0a, 0xb7, 0xd5, 0x4b, 0xfe, 0xd3, 0xc9, 0x64, 0x07, 0x3a,
                    0x0e, 0xe1, 0x72, 0xf3, 0xda, 0xa6, 0x23, 0x25, 0xaf, 0x02, 0x1a, 0x68, 0xf7, 0x07, 0x51, 0x1a,
                ])
                .expect("a valid key"),
                name: "k".into(),
                roles: [update::Role::Root, update::Role::Release].into(),
            }],
            root_threshold: 1,
            release_threshold: 1,
            revoked: vec![],
        };
        let mut trust = TrustState::new(root).expect("a valid root");
        assert!(trust.verify_release(&signed, 0).is_err(), "no valid signature can be found by fuzzing");
        assert!(trust.rotate_root(&signed, 0).is_err());
    }
    if let Ok(message) = wire::decode_update(data, 4 << 20) {
        match message.body {
            Some(Body::Root(m)) | Some(Body::Release(m)) => check_body(&m.body),
            Some(Body::Metadata(m)) => {
                m.roots.iter().for_each(|r| check_body(&r.body));
                if let Some(r) = m.release {
                    check_body(&r.body);
                }
            }
            _ => {}
        }
    }
});
