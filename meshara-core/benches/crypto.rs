//! Crypto costs, each beside the raw primitive it wraps (results: docs/benchmarks.md).
//!
//! Run: `cargo bench -p meshara-core --bench crypto`

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ed25519_dalek::{Signer, SigningKey, Verifier};
use meshara_core::{
    HandshakeGuard, Identity, NodeRecord, NodeRecordBuilder, Padding, open, seal, session,
    sign_broadcast, verify_broadcast,
};
use rand_core::SeedableRng;
use x25519_dalek::{PublicKey, StaticSecret};

const NOW: u64 = 1_800_000_000;
const SIZES: [usize; 2] = [1024, 10 * 1024];

fn node(seed: u8) -> (Identity, NodeRecord) {
    let id = Identity::from_secret_bytes(&[seed; 32], &[seed + 1; 32]);
    let rec = NodeRecordBuilder::new(&id, 1).sign(NOW).unwrap();
    (id, rec)
}

fn signatures(c: &mut Criterion) {
    let mut g = c.benchmark_group("signatures");
    let msg = vec![7u8; 1024];
    let raw = SigningKey::from_bytes(&[9; 32]);
    let raw_sig = raw.sign(&msg);
    let vk = raw.verifying_key();
    g.bench_function("raw ed25519 sign 1KiB", |b| {
        b.iter(|| raw.sign(black_box(&msg)))
    });
    g.bench_function("raw ed25519 verify 1KiB", |b| {
        b.iter(|| vk.verify(black_box(&msg), &raw_sig).unwrap())
    });
    g.bench_function("raw ed25519 verify_strict 1KiB", |b| {
        b.iter(|| vk.verify_strict(black_box(&msg), &raw_sig).unwrap())
    });
    let (alice, rec) = node(1);
    let content = Bytes::from(msg.clone());
    g.bench_function("meshara sign_broadcast 1KiB", |b| {
        b.iter(|| {
            sign_broadcast(
                &alice,
                "topic",
                "application/octet-stream",
                content.clone(),
                1,
                2,
            )
            .unwrap()
        })
    });
    let (_, signed) = sign_broadcast(
        &alice,
        "topic",
        "application/octet-stream",
        content.clone(),
        1,
        2,
    )
    .unwrap();
    g.bench_function("meshara verify_broadcast 1KiB", |b| {
        b.iter(|| verify_broadcast(black_box(&signed)).unwrap())
    });
    g.bench_function("meshara NodeRecord::verify", |b| {
        b.iter(|| NodeRecord::verify(black_box(rec.signed()), NOW).unwrap())
    });
    g.finish();
}

fn raw_aead_round_trip(cipher: &ChaCha20Poly1305, nonce: &Nonce, data: &[u8]) -> Vec<u8> {
    let ct = cipher.encrypt(nonce, data).unwrap();
    cipher.decrypt(nonce, ct.as_slice()).unwrap()
}

fn sealed(c: &mut Criterion) {
    let mut g = c.benchmark_group("sealed");
    let (alice, alice_rec) = node(1);
    let (bob, bob_rec) = node(3);
    let secret = StaticSecret::from([5u8; 32]);
    let public = PublicKey::from(&StaticSecret::from([6u8; 32]));
    g.bench_function("raw x25519 DH", |b| {
        b.iter(|| secret.diffie_hellman(black_box(&public)))
    });
    for size in SIZES {
        let data = vec![1u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&[2; 32]));
        let nonce = Nonce::from([0; 12]);
        g.bench_with_input(
            BenchmarkId::new("raw chacha20poly1305 seal+open", size),
            &data,
            |b, d| b.iter(|| raw_aead_round_trip(&cipher, &nonce, black_box(d))),
        );
        g.bench_with_input(BenchmarkId::new("meshara seal", size), &data, |b, d| {
            b.iter(|| seal(&alice, &alice_rec, &bob_rec, black_box(d), Padding::None).unwrap())
        });
        let m = seal(&alice, &alice_rec, &bob_rec, &data, Padding::None).unwrap();
        g.bench_with_input(BenchmarkId::new("meshara open", size), &m, |b, m| {
            b.iter(|| open(&bob, black_box(m), NOW).unwrap())
        });
    }
    g.finish();
}

fn sessions(c: &mut Criterion) {
    let mut g = c.benchmark_group("session");
    g.measurement_time(Duration::from_secs(4));
    let (alice, alice_rec) = node(1);
    let (bob, bob_rec) = node(3);
    let t = Instant::now();
    g.bench_function("meshara handshake (initiate+respond+complete)", |b| {
        let mut ts = 0;
        let mut guard = HandshakeGuard::new(16);
        b.iter(|| {
            ts += 1;
            let (p, init) = session::initiate(&alice, &alice_rec, &bob_rec, ts).unwrap();
            let (_, resp) = session::respond(&bob, &init, &mut guard, NOW, t).unwrap();
            p.complete(&alice, &resp, t).unwrap()
        })
    });
    let (p, init) = session::initiate(&alice, &alice_rec, &bob_rec, 1).unwrap();
    let (mut rx, resp) =
        session::respond(&bob, &init, &mut HandshakeGuard::new(4), NOW, t).unwrap();
    let mut tx = p.complete(&alice, &resp, t).unwrap();
    for size in SIZES {
        let data = vec![1u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&[2; 32]));
        let mut counter = 0u64;
        g.bench_with_input(
            BenchmarkId::new("raw chacha20poly1305 seal+open", size),
            &data,
            |b, d| {
                b.iter(|| {
                    counter += 1;
                    let mut n = [0u8; 12];
                    n[4..].copy_from_slice(&counter.to_le_bytes());
                    raw_aead_round_trip(&cipher, &Nonce::from(n), black_box(d))
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("meshara session encrypt+decrypt", size),
            &data,
            |b, d| {
                b.iter(|| {
                    let m = tx.encrypt(black_box(d), Padding::None, t).unwrap();
                    rx.decrypt(&m, t).unwrap()
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("meshara session encrypt+decrypt, padded", size),
            &data,
            |b, d| {
                b.iter(|| {
                    let m = tx.encrypt(black_box(d), Padding::Buckets, t).unwrap();
                    rx.decrypt(&m, t).unwrap()
                })
            },
        );
    }
    g.finish();
}

fn onion_packets(c: &mut Criterion) {
    use meshara_core::crypto::onion::{self, Action, Exit, Hop, PACKET_LEN};
    let mut g = c.benchmark_group("onion");
    g.throughput(Throughput::Bytes(PACKET_LEN as u64));
    // Raw primitives at the packet size: one X25519 and one AEAD pass over 8 KiB.
    let secret = StaticSecret::from([5u8; 32]);
    let public = PublicKey::from(&StaticSecret::from([6u8; 32]));
    g.bench_function("raw x25519 DH", |b| {
        b.iter(|| secret.diffie_hellman(black_box(&public)))
    });
    let cipher = ChaCha20Poly1305::new(Key::from_slice(&[1; 32]));
    let nonce = Nonce::from_slice(&[0; 12]);
    let packet_sized = vec![0u8; PACKET_LEN];
    g.bench_function("raw chacha20poly1305 seal+open 8KiB", |b| {
        b.iter(|| raw_aead_round_trip(&cipher, nonce, black_box(&packet_sized)))
    });
    // A route of three relays and the recipient.
    let hops: Vec<Identity> = (10u8..14).map(|i| node(i).0).collect();
    let route: Vec<Hop> = hops
        .iter()
        .map(|h| Hop {
            node: h.node_id(),
            key: *h.x25519_public(),
        })
        .collect();
    let content = vec![7u8; 1024];
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
    g.bench_function("meshara onion build, 4 hops", |b| {
        b.iter(|| {
            onion::build(
                &route,
                black_box(&content),
                Exit::Deliver,
                NOW + 60,
                &mut rng,
            )
            .unwrap()
        })
    });
    let packet = onion::build(&route, &content, Exit::Deliver, NOW + 60, &mut rng).unwrap();
    g.bench_function("meshara onion process, relay hop", |b| {
        b.iter(|| onion::process(&hops[0], black_box(&packet), NOW).unwrap())
    });
    g.bench_function("meshara onion, all 4 hops", |b| {
        b.iter(|| {
            let mut p = packet.clone();
            for h in &hops {
                match onion::process(h, &p, NOW).unwrap().action {
                    Action::Forward { packet, .. } => p = packet,
                    Action::Deliver(c) => return c,
                    Action::Discard => unreachable!(),
                }
            }
            unreachable!()
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = signatures, sealed, sessions, onion_packets
}
criterion_main!(benches);
