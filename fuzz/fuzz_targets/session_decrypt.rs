//! Session decryption of attacker-controlled messages, and handshake initiations: never panic,
//! never accept, and the session keeps working for the genuine peer.
//!
//! One session pair lives for the whole run (a handshake per input would spend the fuzzer's time
//! in X25519); after each input the genuine peer proves the session still works.
#![no_main]

use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use meshara_core::{HandshakeGuard, Identity, NodeRecordBuilder, Padding, Session, proto, session};
use prost::Message;

const NOW: u64 = 1_800_000_000;

struct Fixture {
    bob: Identity,
    alice_tx: Session,
    bob_rx: Session,
    t: Instant,
}

fn fixture() -> &'static Mutex<Fixture> {
    static F: OnceLock<Mutex<Fixture>> = OnceLock::new();
    F.get_or_init(|| {
        let alice = Identity::from_secret_bytes(&[1; 32], &[2; 32]);
        let bob = Identity::from_secret_bytes(&[3; 32], &[4; 32]);
        let alice_rec = NodeRecordBuilder::new(&alice, 1).sign(NOW).expect("record");
        let bob_rec = NodeRecordBuilder::new(&bob, 1).sign(NOW).expect("record");
        let t = Instant::now();
        let (pending, init) = session::initiate(&alice, &alice_rec, &bob_rec, 1).expect("init");
        let (bob_rx, resp) =
            session::respond(&bob, &init, &mut HandshakeGuard::new(4), NOW, t).expect("respond");
        let alice_tx = pending.complete(&alice, &resp, t).expect("complete");
        Mutex::new(Fixture { bob, alice_tx, bob_rx, t })
    })
}

fuzz_target!(|data: &[u8]| {
    let mut guard = fixture().lock().expect("fixture lock");
    let f = &mut *guard;
    if let Ok(mut msg) = proto::SessionMessage::decode(data) {
        // Aim most inputs at the live session so the AEAD path runs, not just the index check.
        if msg.session_index % 4 != 0 {
            msg.session_index = f.bob_rx.local_index();
        }
        assert!(f.bob_rx.decrypt(&msg, f.t).is_err(), "fuzzer forged a session message");
    }
    if let Ok(forged) = proto::HandshakeInit::decode(data) {
        assert!(session::respond(&f.bob, &forged, &mut HandshakeGuard::new(4), NOW, f.t).is_err());
    }
    let genuine = f.alice_tx.encrypt(b"still works", Padding::None, f.t).expect("encrypt");
    assert_eq!(f.bob_rx.decrypt(&genuine, f.t).expect("genuine decrypts"), b"still works");
});
