//! Onion packets from hostile peers: never panics, never authenticates a forgery, and any
//! change a relay makes to a genuine packet is caught (header at the next hop, payload at the
//! recipient). Also drives the replay cache with arbitrary operations against a model.
#![no_main]

use std::collections::HashMap;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use meshara_core::Identity;
use meshara_core::crypto::onion::{self, Action, Exit, Hop, OnionError, PACKET_LEN, ReplayCache};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

const NOW: u64 = 1_800_000_000;

struct Fixture {
    hops: Vec<Identity>,
    packet: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let hops: Vec<Identity> = (0u8..3)
            .map(|i| Identity::from_secret_bytes(&[i + 1; 32], &[i + 11; 32]))
            .collect();
        let route: Vec<Hop> = hops
            .iter()
            .map(|h| Hop {
                node: h.node_id(),
                key: *h.x25519_public(),
            })
            .collect();
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let packet = onion::build(&route, b"fuzz", Exit::Deliver, NOW + 60, &mut rng)
            .expect("fixture packet builds");
        Fixture { hops, packet }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    // 1. Raw bytes (any length; padded to a packet by repetition so the deep paths run).
    assert!(onion::process(&f.hops[0], data, NOW).is_err() || data == f.packet.as_slice());
    if !data.is_empty() {
        let cycled: Vec<u8> = data.iter().copied().cycle().take(PACKET_LEN).collect();
        if cycled != f.packet {
            assert!(
                onion::process(&f.hops[0], &cycled, NOW).is_err(),
                "fuzzer forged an onion header"
            );
        }
    }

    // 2. A genuine packet with the input XORed in: a changed header fails at the first hop, a
    //    changed payload travels on and fails at the recipient.
    let mut packet = f.packet.clone();
    let mut changed = false;
    for (b, d) in packet.iter_mut().zip(data) {
        *b ^= d;
        changed |= *d != 0;
    }
    let mut current = packet;
    for (i, hop) in f.hops.iter().enumerate() {
        match onion::process(hop, &current, NOW) {
            Ok(p) => match p.action {
                Action::Forward { packet, .. } => current = packet,
                Action::Deliver(content) => {
                    assert_eq!(i, 2);
                    assert!(!changed, "a modified packet was delivered");
                    assert_eq!(content, b"fuzz");
                }
                Action::Discard => panic!("genuine packet turned into cover"),
            },
            Err(e) => {
                assert!(changed, "the genuine packet failed at hop {i}: {e}");
                break;
            }
        }
    }

    // 3. The replay cache against a model: (tag byte, expiry offset, clock step) triples.
    let mut cache = ReplayCache::new(8);
    let mut model: HashMap<u8, u64> = HashMap::new();
    let mut now = NOW;
    for op in data.chunks_exact(3) {
        now += u64::from(op[2] % 4) * 30;
        let expires_at = now + u64::from(op[1]) * 4;
        model.retain(|_, keep_until| *keep_until >= now);
        let result = cache.insert([op[0]; 16], expires_at, now);
        if model.contains_key(&op[0]) {
            assert_eq!(result, Err(OnionError::Replay));
        } else if model.len() >= 8 {
            assert!(matches!(result, Err(OnionError::ReplayCacheFull(_))));
        } else {
            assert_eq!(result, Ok(()));
            model.insert(op[0], expires_at + onion::CLOCK_SKEW_SECS);
        }
        assert_eq!(cache.len(), model.len());
    }
});
