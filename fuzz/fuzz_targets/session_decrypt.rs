//! Session decryption of attacker-controlled messages, and handshake responses: never panic,
//! never accept, and the session keeps working for the genuine peer.
#![no_main]

use std::sync::OnceLock;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use meshara_core::{HandshakeGuard, Identity, NodeRecord, NodeRecordBuilder, Padding, proto, session};
use prost::Message;

const NOW: u64 = 1_800_000_000;

struct Fixture {
    alice: Identity,
    alice_rec: NodeRecord,
    bob: Identity,
    bob_rec: NodeRecord,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let alice = Identity::from_secret_bytes(&[1; 32], &[2; 32]);
        let bob = Identity::from_secret_bytes(&[3; 32], &[4; 32]);
        let alice_rec = NodeRecordBuilder::new(&alice, 1).sign(NOW).expect("record");
        let bob_rec = NodeRecordBuilder::new(&bob, 1).sign(NOW).expect("record");
        Fixture { alice, alice_rec, bob, bob_rec }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let t = Instant::now();
    let (pending, init) = session::initiate(&f.alice, &f.alice_rec, &f.bob_rec, 1).expect("init");
    let mut guard = HandshakeGuard::new(4);
    let (mut bob, resp) = session::respond(&f.bob, &init, &mut guard, NOW, t).expect("respond");
    let mut alice = pending.complete(&f.alice, &resp, t).expect("complete");

    if let Ok(mut msg) = proto::SessionMessage::decode(data) {
        // Aim at the live session so the AEAD path is exercised, not just the index check.
        if msg.session_index % 2 == 0 {
            msg.session_index = bob.local_index();
        }
        assert!(bob.decrypt(&msg, t).is_err(), "fuzzer forged a session message");
    }
    if let Ok(forged) = proto::HandshakeInit::decode(data) {
        assert!(session::respond(&f.bob, &forged, &mut HandshakeGuard::new(4), NOW, t).is_err());
    }
    let genuine = alice.encrypt(b"still works", Padding::None, t).expect("encrypt");
    assert_eq!(bob.decrypt(&genuine, t).expect("genuine decrypts"), b"still works");
});
