//! Test vectors for independent implementations (`meshara-core/tests/vectors/v1.json`).
//!
//! [`generate`] derives every vector from fixed seeds, so the file is reproducible byte for
//! byte; [`check`] verifies a vector file against this implementation the way another
//! implementation would: from the listed secrets and inputs, recompute the listed outputs.
//! Regenerate with `cargo run -p meshara-core --bin meshara -- vectors > meshara-core/tests/vectors/v1.json`.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use data_encoding::HEXLOWER;
use prost::Message;
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use serde_json::{Value, json};
use x25519_dalek::StaticSecret;

use crate::crypto::kdf::{derive, labels};
use crate::crypto::padding::Padding;
use crate::crypto::seal::{open, seal_with_ephemeral};
use crate::crypto::session::{
    EPOCH_LEN, HandshakeGuard, initiate_with_ephemeral, respond_with_ephemeral,
};
use crate::identity::{Identity, NodeId};
use crate::message::{broadcast_id, private_message_id, sign_broadcast, verify_broadcast};
use crate::proto::{self, envelope::Body};
use crate::record::{
    Capability, NodeRecord, NodeRecordBuilder, RecordBook, RecordError, Transport,
};
use crate::wire::{self, FrameDecoder, WireError};

/// Unix time (seconds) at which every vector is generated and checked.
pub const VECTOR_TIME: u64 = 1_800_000_000;

fn hex(bytes: &[u8]) -> String {
    HEXLOWER.encode(bytes)
}

fn seeded(tag: u8) -> ChaCha20Rng {
    ChaCha20Rng::from_seed([tag; 32])
}

fn secret(rng: &mut ChaCha20Rng) -> [u8; 32] {
    let mut out = [0u8; 32];
    rng.fill_bytes(&mut out);
    out
}

fn fixture_identity(tag: u8) -> (Identity, [u8; 32], [u8; 32]) {
    let mut rng = seeded(tag);
    let ed = secret(&mut rng);
    let x = secret(&mut rng);
    (Identity::from_secret_bytes(&ed, &x), ed, x)
}

fn fixture_record(identity: &Identity, sequence: u64) -> NodeRecord {
    #[allow(clippy::expect_used)]
    NodeRecordBuilder::new(identity, sequence)
        .address(Transport::Quic, "192.0.2.1", 7777)
        .address(Transport::Tcp, "2001:db8::1", 7778)
        .capability(Capability::Relay)
        .agent("meshara-vectors/1")
        .lifetime_secs(86_400)
        .sign(VECTOR_TIME)
        .expect("fixture record is valid")
}

fn padding_name(p: Padding) -> &'static str {
    match p {
        Padding::None => "none",
        Padding::Buckets => "buckets",
    }
}

/// Generates the complete vector file.
pub fn generate() -> Value {
    let (alice, alice_ed, alice_x) = fixture_identity(1);
    let (bob, bob_ed, bob_x) = fixture_identity(2);
    let alice_rec = fixture_record(&alice, 1);
    let bob_rec = fixture_record(&bob, 1);

    let identities: Vec<Value> = [
        (&alice, alice_ed, alice_x, "alice"),
        (&bob, bob_ed, bob_x, "bob"),
    ]
    .iter()
    .map(|(id, ed, x, name)| {
        json!({
            "name": name,
            "ed25519_seed": hex(ed),
            "x25519_secret": hex(x),
            "node_id": hex(id.node_id().as_bytes()),
            "node_id_text": id.node_id().to_string(),
            "fingerprint": id.fingerprint().to_string(),
            "x25519_public": hex(id.x25519_public().as_bytes()),
        })
    })
    .collect();

    let kdf: Vec<Value> = [
        (labels::SESSION_REKEY, vec![vec![0u8; 32]]),
        (labels::SEAL_TRANSCRIPT, vec![b"abc".to_vec(), vec![], vec![0xff; 40]]),
        (labels::FINGERPRINT, vec![alice.node_id().as_bytes().to_vec()]),
    ]
    .iter()
    .map(|(label, parts)| {
        let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        json!({"label": label, "inputs": parts.iter().map(|p| hex(p)).collect::<Vec<_>>(), "output": hex(&derive(label, &refs))})
    })
    .collect();

    let signatures: Vec<Value> = [
        (labels::SIG_NODE_RECORD, b"example record".as_slice()),
        (labels::SIG_BROADCAST, b"".as_slice()),
    ]
    .iter()
    .map(|(ctx, msg)| {
        json!({
            "signer": "alice",
            "context": String::from_utf8_lossy(ctx),
            "message": hex(msg),
            "signature": hex(&alice.sign(ctx, msg)),
        })
    })
    .collect();

    // Node records: valid ones, then each way a record must be refused.
    let mut bad_sig = alice_rec.signed().clone();
    let mut sig = bad_sig.signature.to_vec();
    sig[0] ^= 0x01;
    bad_sig.signature = sig.into();
    let newer = fixture_record(&alice, 2);
    let records = json!([
        {"name": "alice", "signed_record": hex(&alice_rec.encode()), "record": hex(&alice_rec.signed().record), "check_at": VECTOR_TIME, "expect": "valid", "sequence": 1},
        {"name": "bob", "signed_record": hex(&bob_rec.encode()), "record": hex(&bob_rec.signed().record), "check_at": VECTOR_TIME, "expect": "valid", "sequence": 1},
        {"name": "alice, signature bit flipped", "signed_record": hex(&bad_sig.encode_to_vec()), "check_at": VECTOR_TIME, "expect": "bad_signature"},
        {"name": "alice, checked at expiry", "signed_record": hex(&alice_rec.encode()), "check_at": alice_rec.expires_at(), "expect": "expired"},
        {"name": "alice, sequence 2 then sequence 1", "signed_record": hex(&alice_rec.encode()), "stored_first": hex(&newer.encode()), "check_at": VECTOR_TIME, "expect": "stale_sequence"},
    ]);

    // Sealed messages.
    let mut sealed = Vec::new();
    for (i, (payload, padding)) in [
        (b"hello bob".to_vec(), Padding::None),
        (vec![0x42; 300], Padding::Buckets),
    ]
    .into_iter()
    .enumerate()
    {
        let eph = secret(&mut seeded(10 + i as u8));
        #[allow(clippy::expect_used)]
        let m = seal_with_ephemeral(
            &StaticSecret::from(eph),
            &alice,
            &alice_rec,
            &bob_rec,
            &payload,
            padding,
        )
        .expect("fixture seal");
        sealed.push(json!({
            "sender": "alice", "recipient": "bob",
            "sender_signed_record": hex(&alice_rec.encode()),
            "recipient_signed_record": hex(&bob_rec.encode()),
            "ephemeral_secret": hex(&eph),
            "padding": padding_name(padding),
            "payload": hex(&payload),
            "open_at": VECTOR_TIME,
            "ephemeral": hex(&m.ephemeral),
            "sender_ciphertext": hex(&m.sender_ciphertext),
            "payload_ciphertext": hex(&m.payload_ciphertext),
            "encoded": hex(&m.encode_to_vec()),
        }));
    }

    let session = session_vector(&alice, &alice_rec, &bob, &bob_rec);

    // Private message ids and a broadcast.
    let salt = [7u8; 16];
    let pm_id = private_message_id(
        &alice.node_id(),
        &bob.node_id(),
        1_800_000_000_123,
        &salt,
        "text/plain",
        b"hi",
    );
    #[allow(clippy::expect_used)]
    let (b_id, broadcast) = sign_broadcast(
        &alice,
        "news",
        "text/plain",
        Bytes::from_static(b"hello mesh"),
        1,
        1_800_000_000_000,
    )
    .expect("fixture broadcast");
    let message_ids = json!({
        "private": {"sender": hex(alice.node_id().as_bytes()), "recipient": hex(bob.node_id().as_bytes()), "sent_at_ms": 1_800_000_000_123u64, "salt": hex(&salt), "content_type": "text/plain", "content": hex(b"hi"), "id": hex(pm_id.as_bytes())},
        "broadcast": {"signed": hex(&broadcast.encode_to_vec()), "body": hex(&broadcast.body), "signature": hex(&broadcast.signature), "id": hex(b_id.as_bytes())},
    });

    // Framing.
    let envelope = proto::Envelope {
        version: wire::PROTOCOL_VERSION,
        body: Some(Body::Broadcast(broadcast)),
    };
    #[allow(clippy::expect_used)]
    let encoded = wire::encode_envelope(&envelope).expect("fixture envelope");
    let mut frame = BytesMut::new();
    #[allow(clippy::expect_used)]
    wire::encode_frame(&encoded, wire::DEFAULT_MAX_FRAME_LEN, &mut frame).expect("fixture frame");
    let v2 = proto::Envelope {
        version: 2,
        body: envelope.body.clone(),
    }
    .encode_to_vec();
    let framing = json!([
        {"name": "broadcast envelope", "envelope": hex(&encoded), "frame": hex(&frame), "max_len": wire::DEFAULT_MAX_FRAME_LEN, "expect": "valid", "envelope_id": hex(&wire::envelope_id(&encoded))},
        {"name": "announced length over the limit", "frame": "00100001", "max_len": wire::DEFAULT_MAX_FRAME_LEN, "expect": "frame_too_large"},
        {"name": "empty frame", "frame": "00000000", "max_len": wire::DEFAULT_MAX_FRAME_LEN, "expect": "empty_frame"},
        {"name": "truncated body", "frame": "0000000a0801", "max_len": wire::DEFAULT_MAX_FRAME_LEN, "expect": "truncated"},
        {"name": "unknown major version", "frame": hex(&{ let mut f = BytesMut::new(); let _ = wire::encode_frame(&v2, wire::DEFAULT_MAX_FRAME_LEN, &mut f); f }), "max_len": wire::DEFAULT_MAX_FRAME_LEN, "expect": "unsupported_version"},
        {"name": "not protobuf", "frame": "00000002ffff", "max_len": wire::DEFAULT_MAX_FRAME_LEN, "expect": "malformed"},
    ]);

    json!({
        "format": "meshara test vectors",
        "protocol_version": wire::PROTOCOL_VERSION,
        "generated_by": "meshara-core",
        "time": VECTOR_TIME,
        "identities": identities,
        "kdf": kdf,
        "signatures": signatures,
        "node_records": records,
        "sealed": sealed,
        "session": session,
        "message_ids": message_ids,
        "framing": framing,
    })
}

#[allow(clippy::expect_used)]
fn session_vector(
    alice: &Identity,
    alice_rec: &NodeRecord,
    bob: &Identity,
    bob_rec: &NodeRecord,
) -> Value {
    let now = Instant::now();
    let i_eph = secret(&mut seeded(20));
    let r_eph = secret(&mut seeded(21));
    let (i_index, r_index, timestamp) = (
        0x0102_0304_0506_0708u64,
        0x1112_1314_1516_1718u64,
        1_800_000_000_000u64,
    );
    let (pending, init) = initiate_with_ephemeral(
        StaticSecret::from(i_eph),
        i_index,
        alice,
        alice_rec,
        bob_rec,
        timestamp,
    )
    .expect("fixture init");
    let mut guard = HandshakeGuard::new(4);
    let (mut r_session, resp) = respond_with_ephemeral(
        StaticSecret::from(r_eph),
        r_index,
        bob,
        &init,
        &mut guard,
        VECTOR_TIME,
        now,
    )
    .expect("fixture response");
    let mut i_session = pending
        .complete(alice, &resp, now)
        .expect("fixture complete");
    let (i2r, r2i) = i_session.current_keys();

    let mut messages = Vec::new();
    let plan: [(&str, &[u8], Padding, Option<u64>); 4] = [
        ("initiator", b"first", Padding::None, None),
        ("responder", b"reply", Padding::Buckets, None),
        ("initiator", b"second", Padding::None, None),
        (
            "initiator",
            b"after one ratchet",
            Padding::None,
            Some(EPOCH_LEN),
        ),
    ];
    for (from, plaintext, padding, skip) in plan {
        let (sender, receiver) = if from == "initiator" {
            (&mut i_session, &mut r_session)
        } else {
            (&mut r_session, &mut i_session)
        };
        if let Some(to) = skip {
            sender.skip_to(to);
        }
        let m = sender
            .encrypt(plaintext, padding, now)
            .expect("fixture encrypt");
        assert_eq!(
            receiver.decrypt(&m, now).expect("fixture decrypt"),
            plaintext
        );
        messages.push(json!({
            "from": from, "padding": padding_name(padding), "plaintext": hex(plaintext),
            "session_index": format!("{:016x}", m.session_index), "counter": m.counter,
            "ciphertext": hex(&m.ciphertext), "encoded": hex(&m.encode_to_vec()),
        }));
    }
    json!({
        "initiator": "alice", "responder": "bob",
        "initiator_signed_record": hex(&alice_rec.encode()),
        "responder_signed_record": hex(&bob_rec.encode()),
        "initiator_ephemeral_secret": hex(&i_eph),
        "responder_ephemeral_secret": hex(&r_eph),
        "initiator_index": format!("{i_index:016x}"),
        "responder_index": format!("{r_index:016x}"),
        "timestamp_ms": timestamp,
        "handshake_init": hex(&init.encode_to_vec()),
        "handshake_response": hex(&resp.encode_to_vec()),
        "key_initiator_to_responder": hex(&i2r),
        "key_responder_to_initiator": hex(&r2i),
        "messages": messages,
    })
}

/// A mismatch between a vector file and this implementation.
#[derive(Debug, thiserror::Error)]
#[error("vector {section}: {detail}")]
pub struct VectorMismatch {
    /// Section of the file.
    pub section: String,
    /// What differed.
    pub detail: String,
}

fn fail(section: &str, detail: impl Into<String>) -> VectorMismatch {
    VectorMismatch {
        section: section.to_owned(),
        detail: detail.into(),
    }
}

fn field<'a>(v: &'a Value, key: &str, section: &str) -> Result<&'a Value, VectorMismatch> {
    v.get(key)
        .ok_or_else(|| fail(section, format!("missing `{key}`")))
}

fn text<'a>(v: &'a Value, key: &str, section: &str) -> Result<&'a str, VectorMismatch> {
    field(v, key, section)?
        .as_str()
        .ok_or_else(|| fail(section, format!("`{key}` is not a string")))
}

fn bytes_of(v: &Value, key: &str, section: &str) -> Result<Vec<u8>, VectorMismatch> {
    HEXLOWER
        .decode(text(v, key, section)?.as_bytes())
        .map_err(|e| fail(section, format!("`{key}` is not hex: {e}")))
}

fn array32(v: &Value, key: &str, section: &str) -> Result<[u8; 32], VectorMismatch> {
    bytes_of(v, key, section)?
        .try_into()
        .map_err(|_| fail(section, format!("`{key}` is not 32 bytes")))
}

fn number(v: &Value, key: &str, section: &str) -> Result<u64, VectorMismatch> {
    field(v, key, section)?
        .as_u64()
        .ok_or_else(|| fail(section, format!("`{key}` is not a number")))
}

fn list<'a>(v: &'a Value, key: &str) -> Result<&'a Vec<Value>, VectorMismatch> {
    v.get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| fail(key, "missing or not a list"))
}

fn expect_eq(section: &str, what: &str, got: &[u8], want: &[u8]) -> Result<(), VectorMismatch> {
    if got != want {
        return Err(fail(
            section,
            format!(
                "{what}: computed {} but the file says {}",
                hex(got),
                hex(want)
            ),
        ));
    }
    Ok(())
}

/// Checks every vector in `file` against this implementation.
pub fn check(file: &Value) -> Result<(), VectorMismatch> {
    let mut ids = std::collections::HashMap::new();
    for v in list(file, "identities")? {
        let s = "identities";
        let id = Identity::from_secret_bytes(
            &array32(v, "ed25519_seed", s)?,
            &array32(v, "x25519_secret", s)?,
        );
        expect_eq(
            s,
            "node_id",
            id.node_id().as_bytes(),
            &bytes_of(v, "node_id", s)?,
        )?;
        expect_eq(
            s,
            "x25519_public",
            id.x25519_public().as_bytes(),
            &bytes_of(v, "x25519_public", s)?,
        )?;
        if id.node_id().to_string() != text(v, "node_id_text", s)?
            || id.fingerprint().to_string() != text(v, "fingerprint", s)?
        {
            return Err(fail(s, "text form or fingerprint differs"));
        }
        ids.insert(text(v, "name", s)?.to_owned(), id);
    }
    let who = |name: &str| {
        ids.get(name)
            .ok_or_else(|| fail("identities", format!("no identity {name}")))
    };

    for v in list(file, "kdf")? {
        let parts: Vec<Vec<u8>> = field(v, "inputs", "kdf")?
            .as_array()
            .ok_or_else(|| fail("kdf", "inputs"))?
            .iter()
            .map(|p| {
                HEXLOWER
                    .decode(p.as_str().unwrap_or("-").as_bytes())
                    .map_err(|e| fail("kdf", e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        expect_eq(
            "kdf",
            "output",
            &derive(text(v, "label", "kdf")?, &refs),
            &bytes_of(v, "output", "kdf")?,
        )?;
    }

    for v in list(file, "signatures")? {
        let s = "signatures";
        let signer = who(text(v, "signer", s)?)?;
        let msg = bytes_of(v, "message", s)?;
        let sig = bytes_of(v, "signature", s)?;
        let ctx = text(v, "context", s)?.as_bytes();
        expect_eq(s, "signature", &signer.sign(ctx, &msg), &sig)?;
        signer
            .node_id()
            .verify(ctx, &msg, &sig)
            .map_err(|_| fail(s, "does not verify"))?;
    }

    for v in list(file, "node_records")? {
        let s = "node_records";
        let at = number(v, "check_at", s)?;
        let bytes = bytes_of(v, "signed_record", s)?;
        let result = match v.get("stored_first") {
            Some(_) => {
                let mut book = RecordBook::new(4);
                let first = NodeRecord::decode(&bytes_of(v, "stored_first", s)?, at)
                    .map_err(|e| fail(s, e.to_string()))?;
                book.insert(first).map_err(|e| fail(s, e.to_string()))?;
                NodeRecord::decode(&bytes, at).and_then(|r| book.insert(r).map(drop))
            }
            None => NodeRecord::decode(&bytes, at).map(drop),
        };
        let outcome = match result {
            Ok(()) => "valid",
            Err(RecordError::BadSignature(_)) => "bad_signature",
            Err(RecordError::Expired { .. }) => "expired",
            Err(RecordError::StaleSequence { .. }) => "stale_sequence",
            Err(other) => return Err(fail(s, format!("unexpected error {other}"))),
        };
        if outcome != text(v, "expect", s)? {
            return Err(fail(s, format!("{}: got {outcome}", text(v, "name", s)?)));
        }
    }

    for v in list(file, "sealed")? {
        let s = "sealed";
        let sender = who(text(v, "sender", s)?)?;
        let recipient = who(text(v, "recipient", s)?)?;
        let at = number(v, "open_at", s)?;
        let sender_rec = NodeRecord::decode(&bytes_of(v, "sender_signed_record", s)?, at)
            .map_err(|e| fail(s, e.to_string()))?;
        let recipient_rec = NodeRecord::decode(&bytes_of(v, "recipient_signed_record", s)?, at)
            .map_err(|e| fail(s, e.to_string()))?;
        let padding = if text(v, "padding", s)? == "buckets" {
            Padding::Buckets
        } else {
            Padding::None
        };
        let payload = bytes_of(v, "payload", s)?;
        let eph = StaticSecret::from(array32(v, "ephemeral_secret", s)?);
        let m = seal_with_ephemeral(&eph, sender, &sender_rec, &recipient_rec, &payload, padding)
            .map_err(|e| fail(s, e.to_string()))?;
        expect_eq(
            s,
            "encoded",
            &m.encode_to_vec(),
            &bytes_of(v, "encoded", s)?,
        )?;
        let opened = open(recipient, &m, at).map_err(|e| fail(s, e.to_string()))?;
        expect_eq(s, "opened payload", &opened.payload, &payload)?;
    }

    check_session(field(file, "session", "session")?, &who)?;

    let mids = field(file, "message_ids", "message_ids")?;
    let p = field(mids, "private", "message_ids")?;
    let s = "message_ids";
    let id = private_message_id(
        &NodeId::from_slice(&bytes_of(p, "sender", s)?).map_err(|e| fail(s, e.to_string()))?,
        &NodeId::from_slice(&bytes_of(p, "recipient", s)?).map_err(|e| fail(s, e.to_string()))?,
        number(p, "sent_at_ms", s)?,
        &bytes_of(p, "salt", s)?,
        text(p, "content_type", s)?,
        &bytes_of(p, "content", s)?,
    );
    expect_eq(s, "private id", id.as_bytes(), &bytes_of(p, "id", s)?)?;
    let b = field(mids, "broadcast", s)?;
    let signed = proto::SignedBroadcast::decode(bytes_of(b, "signed", s)?.as_slice())
        .map_err(|e| fail(s, e.to_string()))?;
    let verified = verify_broadcast(&signed).map_err(|e| fail(s, e.to_string()))?;
    expect_eq(
        s,
        "broadcast id",
        verified.id.as_bytes(),
        &bytes_of(b, "id", s)?,
    )?;
    expect_eq(
        s,
        "broadcast id",
        broadcast_id(&signed.body).as_bytes(),
        &bytes_of(b, "id", s)?,
    )?;

    for v in list(file, "framing")? {
        let s = "framing";
        let max = number(v, "max_len", s)? as usize;
        let frame = bytes_of(v, "frame", s)?;
        let result =
            wire::decode_frame(&frame, max).and_then(|body| wire::decode_envelope(body, max));
        let outcome = match &result {
            Ok(_) => "valid",
            Err(WireError::FrameTooLarge { .. }) => "frame_too_large",
            Err(WireError::EmptyFrame) => "empty_frame",
            Err(WireError::Truncated { .. }) => "truncated",
            Err(WireError::UnsupportedVersion(_)) => "unsupported_version",
            Err(WireError::Malformed(_)) => "malformed",
            Err(other) => return Err(fail(s, format!("unexpected error {other}"))),
        };
        if outcome != text(v, "expect", s)? {
            return Err(fail(s, format!("{}: got {outcome}", text(v, "name", s)?)));
        }
        if let Ok(envelope) = result {
            // Ids are over the bytes as received, never over a re-encoding.
            let received = &frame[wire::FRAME_HEADER_LEN..];
            let encoded = envelope.encode_to_vec();
            expect_eq(s, "envelope", received, &bytes_of(v, "envelope", s)?)?;
            expect_eq(s, "re-encoded envelope", &encoded, received)?;
            expect_eq(
                s,
                "envelope id",
                &wire::envelope_id(received),
                &bytes_of(v, "envelope_id", s)?,
            )?;
            let mut decoder = FrameDecoder::new(max);
            let mut buf = BytesMut::from(frame.as_slice());
            let body = decoder
                .decode(&mut buf)
                .map_err(|e| fail(s, e.to_string()))?;
            if body.as_deref() != Some(received) {
                return Err(fail(s, "streaming decoder disagrees"));
            }
        }
    }
    Ok(())
}

fn check_session<'a>(
    v: &Value,
    who: &dyn Fn(&str) -> Result<&'a Identity, VectorMismatch>,
) -> Result<(), VectorMismatch> {
    let s = "session";
    let alice = who(text(v, "initiator", s)?)?;
    let bob = who(text(v, "responder", s)?)?;
    let record = |key: &str| -> Result<NodeRecord, VectorMismatch> {
        NodeRecord::decode(&bytes_of(v, key, s)?, VECTOR_TIME).map_err(|e| fail(s, e.to_string()))
    };
    let alice_rec = record("initiator_signed_record")?;
    let bob_rec = record("responder_signed_record")?;
    let index = |key: &str| -> Result<u64, VectorMismatch> {
        u64::from_str_radix(text(v, key, s)?, 16).map_err(|e| fail(s, e.to_string()))
    };
    let now = Instant::now();
    let (pending, init) = initiate_with_ephemeral(
        StaticSecret::from(array32(v, "initiator_ephemeral_secret", s)?),
        index("initiator_index")?,
        alice,
        &alice_rec,
        &bob_rec,
        number(v, "timestamp_ms", s)?,
    )
    .map_err(|e| fail(s, e.to_string()))?;
    expect_eq(
        s,
        "handshake_init",
        &init.encode_to_vec(),
        &bytes_of(v, "handshake_init", s)?,
    )?;
    let mut guard = HandshakeGuard::new(4);
    let (mut r_session, resp) = respond_with_ephemeral(
        StaticSecret::from(array32(v, "responder_ephemeral_secret", s)?),
        index("responder_index")?,
        bob,
        &init,
        &mut guard,
        VECTOR_TIME,
        now,
    )
    .map_err(|e| fail(s, e.to_string()))?;
    expect_eq(
        s,
        "handshake_response",
        &resp.encode_to_vec(),
        &bytes_of(v, "handshake_response", s)?,
    )?;
    let mut i_session = pending
        .complete(alice, &resp, now)
        .map_err(|e| fail(s, e.to_string()))?;
    let (i2r, r2i) = i_session.current_keys();
    expect_eq(
        s,
        "key i2r",
        &i2r,
        &bytes_of(v, "key_initiator_to_responder", s)?,
    )?;
    expect_eq(
        s,
        "key r2i",
        &r2i,
        &bytes_of(v, "key_responder_to_initiator", s)?,
    )?;
    for m in list(v, "messages")? {
        let encoded = bytes_of(m, "encoded", s)?;
        let msg = proto::SessionMessage::decode(encoded.as_slice())
            .map_err(|e| fail(s, e.to_string()))?;
        let receiver = if text(m, "from", s)? == "initiator" {
            &mut r_session
        } else {
            &mut i_session
        };
        let plaintext = receiver
            .decrypt(&msg, now)
            .map_err(|e| fail(s, e.to_string()))?;
        expect_eq(s, "plaintext", &plaintext, &bytes_of(m, "plaintext", s)?)?;
        expect_eq(
            s,
            "ciphertext",
            &msg.ciphertext,
            &bytes_of(m, "ciphertext", s)?,
        )?;
    }
    Ok(())
}
