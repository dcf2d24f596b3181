//! Every decoder of untrusted bytes, fed arbitrary and mutated input: each returns a typed
//! error, never panics, and never changes state it should not.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use meshara_core::proto::{self, envelope::Body};
use meshara_core::wire::{self, FrameDecoder};
use meshara_core::{
    HandshakeGuard, Identity, KdfParams, NodeRecord, NodeRecordBuilder, Padding, keystore, message,
    open, seal, session,
};
use proptest::prelude::*;
use prost::Message;

const NOW: u64 = 1_800_000_000;

fn node() -> (Identity, NodeRecord) {
    let id = Identity::generate();
    let rec = NodeRecordBuilder::new(&id, 1).sign(NOW).unwrap();
    (id, rec)
}

fn mutate(bytes: &[u8], flips: &[(usize, u8)]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    if out.is_empty() {
        return out;
    }
    for (pos, mask) in flips {
        let i = pos % out.len();
        out[i] ^= mask.max(&1);
    }
    out
}

/// Envelopes of several kinds with arbitrary contents, for codec round trips.
fn envelope_strategy() -> impl Strategy<Value = proto::Envelope> {
    let bytes32 = proptest::collection::vec(any::<u8>(), 32).prop_map(Bytes::from);
    let body = prop_oneof![
        proptest::collection::vec(bytes32.clone(), 0..20)
            .prop_map(|ids| Body::Ack(proto::Ack { message_ids: ids })),
        (any::<u64>(), bytes32.clone()).prop_map(|(r, t)| Body::Routing(proto::RoutingMessage {
            body: Some(proto::routing_message::Body::FindNode(proto::FindNode {
                request_id: r,
                target: t
            })),
        })),
        (
            proptest::collection::vec(any::<u8>(), 16),
            "[a-z.]{1,20}",
            proptest::collection::vec(any::<u8>(), 0..2000),
            any::<u32>()
        )
            .prop_map(|(id, method, body, timeout_ms)| Body::Query(proto::Query {
                query_id: id.into(),
                method,
                body: body.into(),
                timeout_ms,
            })),
        (
            bytes32.clone(),
            0u32..=32,
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 16..3000)
        )
            .prop_map(
                |(r, hop, idx, ctr, ct)| Body::Private(proto::PrivateEnvelope {
                    recipient: r,
                    hop_limit: hop,
                    body: Some(proto::private_envelope::Body::Session(
                        proto::SessionMessage {
                            session_index: idx,
                            counter: ctr,
                            ciphertext: ct.into()
                        }
                    )),
                })
            ),
        (
            "[a-z]{1,30}",
            proptest::collection::vec(bytes32, 0..10),
            any::<u32>()
        )
            .prop_map(|(topic, ids, round)| Body::Gossip(proto::GossipMessage {
                topic,
                body: Some(proto::gossip_message::Body::Ihave(proto::IHave {
                    rounds: ids.iter().map(|_| round).collect(),
                    message_ids: ids,
                })),
            })),
        Just(Body::StatusRequest(proto::StatusRequest {})),
    ];
    body.prop_map(|b| proto::Envelope {
        version: wire::PROTOCOL_VERSION,
        body: Some(b),
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn envelopes_round_trip_through_frames(envelopes in proptest::collection::vec(envelope_strategy(), 1..6)) {
        let mut wire_bytes = BytesMut::new();
        for e in &envelopes {
            wire::encode_envelope_frame(e, wire::DEFAULT_MAX_FRAME_LEN, &mut wire_bytes).unwrap();
        }
        let mut decoder = FrameDecoder::default();
        let mut decoded = Vec::new();
        while let Some(frame) = decoder.decode(&mut wire_bytes).unwrap() {
            decoded.push(wire::decode_envelope(frame, wire::DEFAULT_MAX_FRAME_LEN).unwrap());
        }
        prop_assert_eq!(decoded, envelopes);
    }

    #[test]
    fn envelope_decoder_survives_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _ = wire::decode_envelope(Bytes::from(data), wire::DEFAULT_MAX_FRAME_LEN);
    }

    #[test]
    fn envelope_decoder_survives_mutations(e in envelope_strategy(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let bytes = mutate(&e.encode_to_vec(), &flips);
        if let Ok(decoded) = wire::decode_envelope(Bytes::from(bytes), wire::DEFAULT_MAX_FRAME_LEN) {
            // Whatever decodes is valid by construction and re-encodes.
            prop_assert!(wire::encode_envelope(&decoded).is_ok());
        }
    }

    #[test]
    fn record_decoder_survives_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..6000)) {
        prop_assert!(NodeRecord::decode(&data, NOW).is_err());
    }

    #[test]
    fn keystore_parser_survives_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        prop_assert!(keystore::parse_keystore(&data, b"pass").is_err());
    }

    #[test]
    fn bundle_import_survives_arbitrary_text(text in ".{0,600}") {
        prop_assert!(Identity::import_bundle(&text, b"pass").is_err());
    }
}

#[test]
fn mutated_records_never_verify() {
    let (_, rec) = node();
    let bytes = rec.encode();
    for i in 0..bytes.len() {
        for mask in [0x01u8, 0x80] {
            let mut m = bytes.clone();
            m[i] ^= mask;
            if let Ok(r) = NodeRecord::decode(&m, NOW) {
                // Only a change protobuf decoding erases (none expected) may pass, and then
                // the signed bytes must be what was signed.
                assert_eq!(
                    r.signed().record,
                    rec.signed().record,
                    "byte {i} mask {mask:#x}"
                );
            }
        }
    }
}

#[test]
fn mutated_sealed_messages_never_open() {
    let (alice, alice_rec) = node();
    let (bob, bob_rec) = node();
    let sealed = seal(
        &alice,
        &alice_rec,
        &bob_rec,
        b"attack at dawn",
        Padding::None,
    )
    .unwrap();
    let bytes = sealed.encode_to_vec();
    for i in 0..bytes.len() {
        let m = mutate(&bytes, &[(i, 0x10)]);
        if let Ok(msg) = proto::SealedMessage::decode(m.as_slice()) {
            if msg != sealed {
                assert!(open(&bob, &msg, NOW).is_err(), "byte {i}");
            }
        }
    }
}

#[test]
fn mutated_session_messages_never_decrypt_and_leave_the_session_usable() {
    let (alice, alice_rec) = node();
    let (bob, bob_rec) = node();
    let t = Instant::now();
    let (pending, init) = session::initiate(&alice, &alice_rec, &bob_rec, 1).unwrap();
    let mut guard = HandshakeGuard::new(8);
    let (mut b, resp) = session::respond(&bob, &init, &mut guard, NOW, t).unwrap();
    let mut a = pending.complete(&alice, &resp, t).unwrap();
    let genuine = a.encrypt(b"payload", Padding::None, t).unwrap();
    let bytes = genuine.encode_to_vec();
    for i in 0..bytes.len() {
        let m = mutate(&bytes, &[(i, 0x08)]);
        if let Ok(msg) = proto::SessionMessage::decode(m.as_slice()) {
            if msg != genuine {
                assert!(b.decrypt(&msg, t).is_err(), "byte {i}");
            }
        }
    }
    assert_eq!(b.decrypt(&genuine, t).unwrap(), b"payload");
    // Mutated handshake messages are refused too.
    let init_bytes = init.encode_to_vec();
    for i in (0..init_bytes.len()).step_by(7) {
        let m = mutate(&init_bytes, &[(i, 0x02)]);
        if let Ok(msg) = proto::HandshakeInit::decode(m.as_slice()) {
            if msg != init {
                assert!(
                    session::respond(&bob, &msg, &mut HandshakeGuard::new(8), NOW, t).is_err(),
                    "init byte {i}"
                );
            }
        }
    }
}

#[test]
fn hostile_private_payloads_are_typed_errors() {
    for data in [
        &[][..],
        &[0x0a, 0xff, 0xff, 0xff, 0x0f][..],
        &[0x12, 0x02, 0x0a, 0x01][..],
    ] {
        assert!(message::decode_payload(data).is_err());
    }
}

#[test]
fn keystore_rejects_files_over_the_size_limit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("id.key");
    let store = meshara_core::Keystore::new(&path);
    store
        .create(&Identity::generate(), b"pass", KdfParams::minimum(), 0)
        .unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(&[0u8; 10_000]);
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(
        store.load(b"pass"),
        Err(meshara_core::KeystoreError::Corrupted)
    ));
}
