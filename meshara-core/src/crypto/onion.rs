//! Onion packets: Sphinx-style layered encryption of fixed-size packets (docs/protocol.md §15.14).
//!
//! A sender picks a route of up to [`MAX_HOPS`] nodes (relays, then the recipient) and builds one
//! [`PACKET_LEN`]-byte packet with [`build`]. Each hop runs [`process`] with its X25519 secret:
//! that authenticates the header, reveals only the hop's own instruction (forward to the next
//! NodeId, or deliver here), re-randomises the ephemeral key and strips one layer of the payload.
//! Every packet has the same size at every hop, and the bytes a hop receives and the bytes it
//! sends share nothing, so a relay learns its predecessor (from the connection) and its successor
//! (from the header), and nothing else: not the sender, not the recipient, not its position.
//!
//! Construction, per hop `i` with shared secret `s_i` (as in Danezis and Goldberg's Sphinx, with
//! X25519 for the group and BLAKE3 for every other primitive):
//! - `alpha_0 = X25519(x, G)`; `alpha_{i+1} = X25519(b_i, alpha_i)` with the blinding factor
//!   `b_i = KDF("onion blind", alpha_i, s_i)`, so `s_i = X25519(sk_i, alpha_i)` on the hop and
//!   `X25519(b_{i-1}, … X25519(b_0, X25519(x, pk_i)))` at the sender;
//! - the header `beta` ([`HEADER_LEN`] bytes) is decrypted with a keystream of `s_i` after
//!   appending [`HOP_LEN`] zero bytes; the first [`HOP_LEN`] bytes are the hop's routing
//!   instruction, the rest is the next hop's header. The sender precomputes the filler so that
//!   every hop's MAC (`gamma`, keyed BLAKE3 over `beta`) verifies;
//! - the payload is encrypted under each hop's key with a LIONESS wide-block cipher (BLAKE3 as
//!   both the keyed hash and the stream), so a relay that flips a bit destroys the whole
//!   payload: the recipient's 16-byte zero marker then fails and the packet is dropped, rather
//!   than a tag surviving to a colluding exit.
//!
//! Replays are refused per hop by a [`ReplayCache`] of tags derived from `s_i`; every routing
//! instruction carries the packet's expiry, which bounds how long tags must be kept.

use std::collections::{BTreeMap, HashSet};

use rand_core::{CryptoRng, RngCore};
use subtle::ConstantTimeEq;
use x25519_dalek::{PublicKey as X25519Public, StaticSecret, X25519_BASEPOINT_BYTES, x25519};
use zeroize::Zeroizing;

use super::kdf::{derive, labels};
use crate::identity::{Identity, NodeId};

/// Bytes of one routing instruction in the header.
pub const HOP_LEN: usize = 64;
/// Most hops a packet can take, the recipient included.
pub const MAX_HOPS: usize = 5;
/// Bytes of the encrypted routing header.
pub const HEADER_LEN: usize = HOP_LEN * MAX_HOPS;
/// Bytes of the header MAC.
pub const MAC_LEN: usize = 16;
/// Size of every onion packet on the wire.
pub const PACKET_LEN: usize = 8192;
/// Bytes of the layered payload.
pub const PAYLOAD_LEN: usize = PACKET_LEN - 32 - MAC_LEN - HEADER_LEN;
/// Zero bytes the recipient finds at the start of an intact payload.
const MARKER_LEN: usize = 16;
/// Most content bytes a packet carries to its recipient.
pub const PAYLOAD_CAPACITY: usize = PAYLOAD_LEN - MARKER_LEN - 4;
/// Latest expiry a hop accepts, counted from its own clock (longer would force long replay
/// memories on relays).
pub const MAX_LIFETIME_SECS: u64 = 600;
/// Clock difference tolerated between a sender and a hop.
pub const CLOCK_SKEW_SECS: u64 = 60;

const ALPHA: std::ops::Range<usize> = 0..32;
const GAMMA: std::ops::Range<usize> = 32..32 + MAC_LEN;
const BETA: std::ops::Range<usize> = 32 + MAC_LEN..32 + MAC_LEN + HEADER_LEN;
const PAYLOAD: std::ops::Range<usize> = 32 + MAC_LEN + HEADER_LEN..PACKET_LEN;

const KIND_FORWARD: u8 = 1;
const KIND_DELIVER: u8 = 2;
const KIND_DISCARD: u8 = 3;

/// Why an onion packet could not be built or was refused by a hop.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OnionError {
    /// The packet is not exactly [`PACKET_LEN`] bytes.
    #[error("onion packet is {0} bytes, not {PACKET_LEN}")]
    Length(usize),
    /// The route is empty or longer than [`MAX_HOPS`].
    #[error("onion route of {0} hops; 1..={MAX_HOPS} allowed")]
    RouteLength(usize),
    /// The content does not fit in one packet.
    #[error("onion content of {len} bytes exceeds the {max} a packet carries")]
    TooLarge {
        /// Bytes offered.
        len: usize,
        /// [`PAYLOAD_CAPACITY`].
        max: usize,
    },
    /// A key in the route or the packet's ephemeral key is of low order.
    #[error("low-order key in the onion route or packet")]
    LowOrderKey,
    /// The header MAC does not verify: not for us, corrupted, or forged.
    #[error("onion header does not authenticate")]
    BadMac,
    /// The decrypted routing instruction is not one this version knows.
    #[error("onion routing instruction is malformed: {0}")]
    BadInstruction(&'static str),
    /// The packet's expiry has passed (or lies implausibly far ahead).
    #[error("onion packet expires at {expires_at}, outside the window around {now}")]
    Expired {
        /// Expiry in the packet, Unix seconds.
        expires_at: u64,
        /// This hop's clock.
        now: u64,
    },
    /// The payload reached its recipient damaged (tampered with on the way).
    #[error("onion payload failed its integrity check")]
    BadPayload,
    /// This hop has processed this packet before.
    #[error("replayed onion packet")]
    Replay,
    /// The replay cache is full of unexpired tags; the packet is refused rather than letting an
    /// old tag go early.
    #[error("onion replay cache full ({0} packets in flight)")]
    ReplayCacheFull(usize),
}

/// One hop of a route: the node and its X25519 key (from its node record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hop {
    /// The hop's NodeId.
    pub node: NodeId,
    /// The hop's X25519 public key.
    pub key: X25519Public,
}

/// What the last hop does with the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Hand the content to the node (a real message).
    Deliver,
    /// Drop it silently (cover traffic looping back to its sender).
    Discard,
}

/// What a hop must do with a packet it processed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send `packet` to `next`.
    Forward {
        /// The next hop.
        next: NodeId,
        /// The re-layered packet, [`PACKET_LEN`] bytes.
        packet: Vec<u8>,
    },
    /// The packet was for this node: its content.
    Deliver(Vec<u8>),
    /// Cover traffic that ends here.
    Discard,
}

/// A processed packet: the action, plus what the replay cache needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Processed {
    /// What to do.
    pub action: Action,
    /// Replay tag of this packet at this hop.
    pub tag: [u8; 16],
    /// The packet's expiry, Unix seconds.
    pub expires_at: u64,
}

struct HopKeys {
    stream: Zeroizing<[u8; 32]>,
    mac: Zeroizing<[u8; 32]>,
    payload: Zeroizing<[u8; 32]>,
    tag: [u8; 16],
}

impl HopKeys {
    fn new(shared: &[u8; 32]) -> Self {
        let tag = derive(labels::ONION_REPLAY_TAG, &[shared]);
        let mut short = [0u8; 16];
        short.copy_from_slice(&tag[..16]);
        Self {
            stream: Zeroizing::new(derive(labels::ONION_HEADER_KEY, &[shared])),
            mac: Zeroizing::new(derive(labels::ONION_MAC_KEY, &[shared])),
            payload: Zeroizing::new(derive(labels::ONION_PAYLOAD_KEY, &[shared])),
            tag: short,
        }
    }

    fn header_stream(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(vec![0u8; HEADER_LEN + HOP_LEN]);
        blake3::Hasher::new_keyed(&self.stream)
            .finalize_xof()
            .fill(&mut out);
        out
    }

    fn mac(&self, beta: &[u8]) -> [u8; MAC_LEN] {
        let full = blake3::keyed_hash(&self.mac, beta);
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&full.as_bytes()[..MAC_LEN]);
        out
    }
}

fn blind(alpha: &[u8; 32], shared: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    Zeroizing::new(derive(labels::ONION_BLIND, &[alpha, shared]))
}

/// X25519 with the all-zero result refused.
fn mul(scalar: &[u8; 32], point: &[u8; 32]) -> Result<[u8; 32], OnionError> {
    let out = x25519(*scalar, *point);
    if bool::from(out.ct_eq(&[0u8; 32])) {
        return Err(OnionError::LowOrderKey);
    }
    Ok(out)
}

/// LIONESS over `block` (32-byte left half, the rest right), keys expanded from `key`.
fn lioness(key: &[u8; 32], block: &mut [u8], decrypt: bool) {
    let mut keys = Zeroizing::new([0u8; 128]);
    blake3::Hasher::new_keyed(key)
        .finalize_xof()
        .fill(keys.as_mut_slice());
    let k = |i: usize| -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(&keys[i * 32..(i + 1) * 32]);
        out
    };
    let (left, right) = block.split_at_mut(32);
    let stream = |left: &[u8], k: [u8; 32], right: &mut [u8]| {
        let mut key = Zeroizing::new([0u8; 32]);
        for (o, (a, b)) in key.iter_mut().zip(left.iter().zip(k.iter())) {
            *o = a ^ b;
        }
        let mut reader = blake3::Hasher::new_keyed(&key).finalize_xof();
        let mut buf = [0u8; 1024];
        for chunk in right.chunks_mut(buf.len()) {
            reader.fill(&mut buf[..chunk.len()]);
            xor(chunk, &buf[..chunk.len()]);
        }
    };
    let hash = |k: [u8; 32], right: &[u8], left: &mut [u8]| {
        xor(left, blake3::keyed_hash(&k, right).as_bytes());
    };
    if decrypt {
        hash(k(3), right, left);
        stream(left, k(2), right);
        hash(k(1), right, left);
        stream(left, k(0), right);
    } else {
        stream(left, k(0), right);
        hash(k(1), right, left);
        stream(left, k(2), right);
        hash(k(3), right, left);
    }
}

fn xor(into: &mut [u8], with: &[u8]) {
    for (a, b) in into.iter_mut().zip(with) {
        *a ^= b;
    }
}

fn instruction(
    kind: u8,
    expires_at: u64,
    next: Option<(&NodeId, &[u8; MAC_LEN])>,
) -> [u8; HOP_LEN] {
    let mut out = [0u8; HOP_LEN];
    out[0] = kind;
    out[1..9].copy_from_slice(&expires_at.to_le_bytes());
    if let Some((node, gamma)) = next {
        out[9..41].copy_from_slice(node.as_bytes());
        out[41..41 + MAC_LEN].copy_from_slice(gamma);
    }
    out
}

/// Builds a packet that travels `route` (relays, then the last hop) and hands `content` to the
/// last hop, or is discarded there (`exit`). `expires_at` is Unix seconds.
pub fn build<R: RngCore + CryptoRng>(
    route: &[Hop],
    content: &[u8],
    exit: Exit,
    expires_at: u64,
    rng: &mut R,
) -> Result<Vec<u8>, OnionError> {
    let n = route.len();
    if n == 0 || n > MAX_HOPS {
        return Err(OnionError::RouteLength(n));
    }
    if content.len() > PAYLOAD_CAPACITY {
        return Err(OnionError::TooLarge {
            len: content.len(),
            max: PAYLOAD_CAPACITY,
        });
    }
    let mut x = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(x.as_mut_slice());
    let alpha0 = mul(&x, &X25519_BASEPOINT_BYTES)?;

    // Shared secrets, and the ephemeral key each hop will see.
    let mut keys = Vec::with_capacity(n);
    let mut blinds: Vec<Zeroizing<[u8; 32]>> = Vec::with_capacity(n);
    let mut alpha = alpha0;
    for hop in route {
        let mut shared = mul(&x, hop.key.as_bytes())?;
        for b in &blinds {
            shared = mul(b, &shared)?;
        }
        let shared = Zeroizing::new(shared);
        let b = blind(&alpha, &shared);
        keys.push(HopKeys::new(&shared));
        alpha = mul(&b, &alpha)?;
        blinds.push(b);
    }

    // Filler: what the hops' header shifts append, so the last hops' MACs cover it.
    let streams: Vec<Zeroizing<Vec<u8>>> = keys.iter().map(HopKeys::header_stream).collect();
    let mut filler: Vec<u8> = Vec::with_capacity(HEADER_LEN);
    for stream in streams.iter().take(n - 1) {
        filler.extend_from_slice(&[0u8; HOP_LEN]);
        let start = stream.len() - filler.len();
        xor(&mut filler, &stream[start..]);
    }

    // The last hop's header: its instruction and random padding, encrypted, then the filler.
    let last = n - 1;
    let kind = match exit {
        Exit::Deliver => KIND_DELIVER,
        Exit::Discard => KIND_DISCARD,
    };
    let mut beta = vec![0u8; HEADER_LEN];
    let head = HEADER_LEN - filler.len();
    beta[..HOP_LEN].copy_from_slice(&instruction(kind, expires_at, None));
    rng.fill_bytes(&mut beta[HOP_LEN..head]);
    xor(&mut beta[..head], &streams[last][..head]);
    beta[head..].copy_from_slice(&filler);
    let mut gamma = keys[last].mac(&beta);

    // Wrap the earlier hops, innermost first.
    for i in (0..last).rev() {
        let mut next = vec![0u8; HEADER_LEN];
        next[..HOP_LEN].copy_from_slice(&instruction(
            KIND_FORWARD,
            expires_at,
            Some((&route[i + 1].node, &gamma)),
        ));
        next[HOP_LEN..].copy_from_slice(&beta[..HEADER_LEN - HOP_LEN]);
        xor(&mut next, &streams[i][..HEADER_LEN]);
        beta = next;
        gamma = keys[i].mac(&beta);
    }

    // The payload: marker, length, content, zero fill; one LIONESS layer per hop.
    let mut payload = vec![0u8; PAYLOAD_LEN];
    payload[MARKER_LEN..MARKER_LEN + 4].copy_from_slice(&(content.len() as u32).to_le_bytes());
    payload[MARKER_LEN + 4..MARKER_LEN + 4 + content.len()].copy_from_slice(content);
    for k in keys.iter().rev() {
        lioness(&k.payload, &mut payload, false);
    }

    let mut packet = Vec::with_capacity(PACKET_LEN);
    packet.extend_from_slice(&alpha0);
    packet.extend_from_slice(&gamma);
    packet.extend_from_slice(&beta);
    packet.extend_from_slice(&payload);
    debug_assert_eq!(packet.len(), PACKET_LEN);
    Ok(packet)
}

/// Processes a packet at the hop `identity`, at `now` (Unix seconds). Does not consult a
/// replay cache: pass [`Processed::tag`] and [`Processed::expires_at`] to
/// [`ReplayCache::insert`] before acting on the result.
pub fn process(identity: &Identity, packet: &[u8], now: u64) -> Result<Processed, OnionError> {
    process_with(identity.x25519_secret(), packet, now)
}

fn process_with(secret: &StaticSecret, packet: &[u8], now: u64) -> Result<Processed, OnionError> {
    if packet.len() != PACKET_LEN {
        return Err(OnionError::Length(packet.len()));
    }
    let mut alpha = [0u8; 32];
    alpha.copy_from_slice(&packet[ALPHA]);
    let shared = secret.diffie_hellman(&X25519Public::from(alpha));
    if !shared.was_contributory() {
        return Err(OnionError::LowOrderKey);
    }
    let shared = Zeroizing::new(shared.to_bytes());
    let keys = HopKeys::new(&shared);
    let beta = &packet[BETA];
    if !bool::from(keys.mac(beta).ct_eq(&packet[GAMMA])) {
        return Err(OnionError::BadMac);
    }
    let mut opened = Zeroizing::new(vec![0u8; HEADER_LEN + HOP_LEN]);
    opened[..HEADER_LEN].copy_from_slice(beta);
    xor(&mut opened, &keys.header_stream());
    let kind = opened[0];
    let mut expiry = [0u8; 8];
    expiry.copy_from_slice(&opened[1..9]);
    let expires_at = u64::from_le_bytes(expiry);
    if expires_at.saturating_add(CLOCK_SKEW_SECS) < now
        || expires_at > now + MAX_LIFETIME_SECS + CLOCK_SKEW_SECS
    {
        return Err(OnionError::Expired { expires_at, now });
    }
    if opened[41 + MAC_LEN..HOP_LEN].iter().any(|b| *b != 0) {
        return Err(OnionError::BadInstruction("reserved bytes are not zero"));
    }
    let mut payload = packet[PAYLOAD].to_vec();
    lioness(&keys.payload, &mut payload, true);
    let action = match kind {
        KIND_FORWARD => {
            let next = NodeId::from_slice(&opened[9..41])
                .map_err(|_| OnionError::BadInstruction("next hop is not a valid NodeId"))?;
            let b = blind(&alpha, &shared);
            let next_alpha = mul(&b, &alpha)?;
            let mut out = Vec::with_capacity(PACKET_LEN);
            out.extend_from_slice(&next_alpha);
            out.extend_from_slice(&opened[41..41 + MAC_LEN]);
            out.extend_from_slice(&opened[HOP_LEN..]);
            out.extend_from_slice(&payload);
            Action::Forward { next, packet: out }
        }
        KIND_DELIVER | KIND_DISCARD => {
            if opened[9..41 + MAC_LEN].iter().any(|b| *b != 0) {
                return Err(OnionError::BadInstruction(
                    "exit instruction names a next hop",
                ));
            }
            if !bool::from(payload[..MARKER_LEN].ct_eq(&[0u8; MARKER_LEN])) {
                return Err(OnionError::BadPayload);
            }
            let mut len = [0u8; 4];
            len.copy_from_slice(&payload[MARKER_LEN..MARKER_LEN + 4]);
            let len = u32::from_le_bytes(len) as usize;
            if len > PAYLOAD_CAPACITY {
                return Err(OnionError::BadPayload);
            }
            if kind == KIND_DISCARD {
                Action::Discard
            } else {
                let start = MARKER_LEN + 4;
                Action::Deliver(payload[start..start + len].to_vec())
            }
        }
        _ => return Err(OnionError::BadInstruction("unknown instruction kind")),
    };
    Ok(Processed {
        action,
        tag: keys.tag,
        expires_at,
    })
}

/// Replay tags of the packets a hop processed, kept until the packets expire. Bounded: when
/// full of unexpired tags it refuses new packets instead of forgetting old tags early (which
/// would let those packets be replayed).
#[derive(Debug)]
pub struct ReplayCache {
    tags: HashSet<[u8; 16]>,
    by_expiry: BTreeMap<u64, Vec<[u8; 16]>>,
    capacity: usize,
}

impl ReplayCache {
    /// A cache of at most `capacity` tags.
    pub fn new(capacity: usize) -> Self {
        Self {
            tags: HashSet::new(),
            by_expiry: BTreeMap::new(),
            capacity,
        }
    }

    /// Tags held.
    pub fn len(&self) -> usize {
        self.tags.len()
    }

    /// Whether no tag is held.
    pub fn is_empty(&self) -> bool {
        self.tags.is_empty()
    }

    /// Records a processed packet's tag at `now` (Unix seconds); refuses a replay.
    pub fn insert(&mut self, tag: [u8; 16], expires_at: u64, now: u64) -> Result<(), OnionError> {
        self.expire(now);
        if self.tags.contains(&tag) {
            return Err(OnionError::Replay);
        }
        if self.tags.len() >= self.capacity {
            return Err(OnionError::ReplayCacheFull(self.tags.len()));
        }
        self.tags.insert(tag);
        self.by_expiry
            .entry(expires_at.saturating_add(CLOCK_SKEW_SECS))
            .or_default()
            .push(tag);
        Ok(())
    }

    /// Forgets tags of packets that can no longer be accepted anyway.
    pub fn expire(&mut self, now: u64) {
        while let Some(entry) = self.by_expiry.first_entry() {
            if *entry.key() >= now {
                break;
            }
            for tag in entry.remove() {
                self.tags.remove(&tag);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    const NOW: u64 = 1_800_000_000;

    fn nodes(n: usize) -> Vec<Identity> {
        let mut rng = ChaCha20Rng::seed_from_u64(n as u64);
        (0..n)
            .map(|_| Identity::generate_with_rng(&mut rng))
            .collect()
    }

    fn route(ids: &[Identity]) -> Vec<Hop> {
        ids.iter()
            .map(|i| Hop {
                node: i.node_id(),
                key: *i.x25519_public(),
            })
            .collect()
    }

    /// What one hop received, and what it sent on (none for the last hop).
    type View = (Vec<u8>, Option<Vec<u8>>);

    /// Runs a packet along the route; returns each hop's view and the final action.
    fn travel(ids: &[Identity], packet: Vec<u8>) -> (Vec<View>, Action) {
        let mut seen = Vec::new();
        let mut packet = packet;
        for (i, id) in ids.iter().enumerate() {
            let p = process(id, &packet, NOW).expect("hop processes");
            match p.action {
                Action::Forward { next, packet: out } => {
                    assert_eq!(next, ids[i + 1].node_id(), "hop {i} forwards to the next");
                    assert_eq!(out.len(), PACKET_LEN);
                    seen.push((packet, Some(out.clone())));
                    packet = out;
                }
                other => {
                    assert_eq!(i, ids.len() - 1, "only the last hop exits");
                    seen.push((packet, None));
                    return (seen, other);
                }
            }
        }
        unreachable!("the last hop exits")
    }

    #[test]
    fn every_route_length_delivers() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        for n in 1..=MAX_HOPS {
            let ids = nodes(n);
            for content in [&b""[..], b"hello", &[7u8; PAYLOAD_CAPACITY]] {
                let packet = build(&route(&ids), content, Exit::Deliver, NOW + 60, &mut rng)
                    .expect("builds");
                assert_eq!(packet.len(), PACKET_LEN);
                let (_, action) = travel(&ids, packet);
                assert_eq!(action, Action::Deliver(content.to_vec()), "{n} hops");
            }
            let packet =
                build(&route(&ids), b"cover", Exit::Discard, NOW + 60, &mut rng).expect("builds");
            assert_eq!(travel(&ids, packet).1, Action::Discard);
        }
    }

    #[test]
    fn relays_see_only_their_neighbours() {
        // Sender S, relays R1..R3, recipient D. Whatever any relay receives or sends, and the
        // header it decrypts, holds no NodeId but its successor's; the packets it receives and
        // sends share no 16-byte window.
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let ids = nodes(5);
        let (sender, path) = (&ids[0], &ids[1..]);
        let packet = build(&route(path), b"secret", Exit::Deliver, NOW + 60, &mut rng).unwrap();
        let (seen, _) = travel(path, packet);
        let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
        for (i, (input, output)) in seen.iter().enumerate().take(3) {
            let output = output.as_ref().expect("relays forward");
            for (j, other) in ids.iter().enumerate() {
                let id = other.node_id();
                let neighbour = j == i + 2; // the successor in `ids` numbering
                assert!(
                    !contains(input, id.as_bytes()),
                    "relay {i} input names node {j}"
                );
                if !neighbour {
                    assert!(
                        !contains(output, id.as_bytes()),
                        "relay {i} output names node {j}"
                    );
                }
            }
            assert!(!contains(input, sender.node_id().as_bytes()));
            for w in input.windows(16).step_by(16) {
                assert!(
                    !contains(output, w),
                    "relay {i}: input and output share bytes"
                );
            }
        }
    }

    #[test]
    fn tampering_anywhere_is_caught() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let ids = nodes(3);
        let packet = build(&route(&ids), b"payload", Exit::Deliver, NOW + 60, &mut rng).unwrap();
        // Header bits: the first hop's MAC fails.
        for pos in [0, 33, BETA.start, BETA.end - 1] {
            let mut bad = packet.clone();
            bad[pos] ^= 1;
            let err = process(&ids[0], &bad, NOW).unwrap_err();
            assert!(
                matches!(err, OnionError::BadMac | OnionError::LowOrderKey),
                "{pos}: {err}"
            );
        }
        // Payload bits: relays cannot tell, the recipient drops the whole payload.
        for pos in [PAYLOAD.start, PAYLOAD.start + 40, PACKET_LEN - 1] {
            let mut bad = packet.clone();
            bad[pos] ^= 0x80;
            let mut p = bad;
            for id in &ids[..2] {
                match process(id, &p, NOW).unwrap().action {
                    Action::Forward { packet, .. } => p = packet,
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert_eq!(
                process(&ids[2], &p, NOW).unwrap_err(),
                OnionError::BadPayload
            );
        }
        // The wrong hop cannot open it.
        assert_eq!(
            process(&ids[1], &packet, NOW).unwrap_err(),
            OnionError::BadMac
        );
    }

    #[test]
    fn hostile_packets_are_refused() {
        let ids = nodes(1);
        let secret = &ids[0];
        assert_eq!(
            process(secret, &[], NOW).unwrap_err(),
            OnionError::Length(0)
        );
        assert_eq!(
            process(secret, &vec![0u8; PACKET_LEN + 1], NOW).unwrap_err(),
            OnionError::Length(PACKET_LEN + 1)
        );
        // All-zero ephemeral key (low order).
        assert_eq!(
            process(secret, &vec![0u8; PACKET_LEN], NOW).unwrap_err(),
            OnionError::LowOrderKey
        );
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let mut random = vec![0u8; PACKET_LEN];
        rng.fill_bytes(&mut random);
        assert!(process(secret, &random, NOW).is_err());
        // Route and size limits at the sender.
        let six = nodes(MAX_HOPS + 1);
        assert_eq!(
            build(&route(&six), b"", Exit::Deliver, NOW, &mut rng).unwrap_err(),
            OnionError::RouteLength(MAX_HOPS + 1)
        );
        assert_eq!(
            build(&[], b"", Exit::Deliver, NOW, &mut rng).unwrap_err(),
            OnionError::RouteLength(0)
        );
        assert_eq!(
            build(
                &route(&ids),
                &[0; PAYLOAD_CAPACITY + 1],
                Exit::Deliver,
                NOW,
                &mut rng
            )
            .unwrap_err(),
            OnionError::TooLarge {
                len: PAYLOAD_CAPACITY + 1,
                max: PAYLOAD_CAPACITY
            }
        );
    }

    #[test]
    fn expiry_window() {
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let ids = nodes(1);
        let secret = &ids[0];
        let old = build(&route(&ids), b"", Exit::Deliver, NOW - 61, &mut rng).unwrap();
        assert!(matches!(
            process(secret, &old, NOW),
            Err(OnionError::Expired { .. })
        ));
        let skewed = build(&route(&ids), b"", Exit::Deliver, NOW - 59, &mut rng).unwrap();
        assert!(process(secret, &skewed, NOW).is_ok());
        let far = build(&route(&ids), b"", Exit::Deliver, NOW + 700, &mut rng).unwrap();
        assert!(matches!(
            process(secret, &far, NOW),
            Err(OnionError::Expired { .. })
        ));
    }

    #[test]
    fn replay_cache_refuses_replays_and_stays_bounded() {
        let mut rng = ChaCha20Rng::seed_from_u64(6);
        let ids = nodes(2);
        let packet = build(&route(&ids), b"x", Exit::Deliver, NOW + 60, &mut rng).unwrap();
        let first = process(&ids[0], &packet, NOW).unwrap();
        let again = process(&ids[0], &packet, NOW).unwrap();
        assert_eq!(first.tag, again.tag, "the same packet has the same tag");
        let mut cache = ReplayCache::new(2);
        cache.insert(first.tag, first.expires_at, NOW).unwrap();
        assert_eq!(
            cache.insert(again.tag, again.expires_at, NOW),
            Err(OnionError::Replay)
        );
        // Another packet along the same route has another tag.
        let other = build(&route(&ids), b"x", Exit::Deliver, NOW + 60, &mut rng).unwrap();
        let other = process(&ids[0], &other, NOW).unwrap();
        assert_ne!(other.tag, first.tag);
        cache.insert(other.tag, other.expires_at, NOW).unwrap();
        assert_eq!(
            cache.insert([9; 16], NOW + 60, NOW),
            Err(OnionError::ReplayCacheFull(2))
        );
        // Once the packets can no longer be accepted, their tags go.
        cache
            .insert([9; 16], NOW + 60, NOW + 60 + CLOCK_SKEW_SECS + 1)
            .unwrap();
        assert_eq!(cache.len(), 1);
    }
}
