//! Per-pair sessions: an authenticated key exchange once, then symmetric AEAD with counter
//! nonces (docs/protocol.md §7-§8).
//!
//! The handshake follows Noise's `IK` pattern (`-> e, es, s, ss` / `<- e, ee, se`) with BLAKE3
//! as the KDF; the initiator's identity travels encrypted, as in sealed messages. Session keys
//! depend on `ee`, so they stay secret even if both static keys later leak (forward secrecy).
//! Within a session the send key is ratcheted every [`EPOCH_LEN`] messages and old keys are
//! erased, and the receiver accepts each counter once within a [`REPLAY_WINDOW`] of the highest.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;
use rand_core::{CryptoRng, OsRng, RngCore};
use x25519_dalek::{PublicKey as X25519Public, StaticSecret};
use zeroize::Zeroizing;

use super::kdf::{derive, labels};
use super::padding::{Padding, pad_into, unpad};
use super::replay::{ReplayVerdict, ReplayWindow};
use super::seal::MAX_SENDER_CIPHERTEXT;
use super::{
    CryptoError, MAX_PRIVATE_CIPHERTEXT, MAX_PRIVATE_PAYLOAD, TAG_LEN, aead_open, aead_seal,
    check_ciphertext_len, dh, public_key,
};
use crate::identity::{Identity, NodeId};
use crate::proto;
use crate::record::NodeRecord;

pub use super::replay::REPLAY_WINDOW;

/// Messages per key epoch: every `EPOCH_LEN` messages the direction key is ratcheted forward.
pub const EPOCH_LEN: u64 = 1 << 16;
/// Age after which the initiator should run a new handshake.
pub const REKEY_AFTER: Duration = Duration::from_secs(600);
/// Age after which a session neither sends nor receives.
pub const REJECT_AFTER: Duration = Duration::from_secs(900);
/// Messages after which a session refuses to send.
pub const REJECT_AFTER_MESSAGES: u64 = 1 << 60;
/// How many epochs a received counter may jump ahead of the current one.
pub const MAX_EPOCH_SKIP: u64 = 4;

/// Which side of the handshake a session was made on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Sent HandshakeInit.
    Initiator,
    /// Answered it.
    Responder,
}

/// The initiator's state between sending [`proto::HandshakeInit`] and receiving the response.
pub struct Initiator {
    ephemeral: StaticSecret,
    local_index: u64,
    responder: NodeRecord,
    h2: [u8; 32],
    es: Zeroizing<[u8; 32]>,
    ss: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for Initiator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Initiator")
            .field("local_index", &self.local_index)
            .field("responder", &self.responder.node_id())
            .finish_non_exhaustive()
    }
}

/// Starts a handshake with `responder`. `timestamp_ms` is our wall clock in Unix milliseconds and
/// must grow between handshakes to the same responder (it is how the responder refuses replays).
pub fn initiate(
    identity: &Identity,
    own_record: &NodeRecord,
    responder: &NodeRecord,
    timestamp_ms: u64,
) -> Result<(Initiator, proto::HandshakeInit), CryptoError> {
    initiate_with_rng(&mut OsRng, identity, own_record, responder, timestamp_ms)
}

/// [`initiate`] with a caller-supplied CSPRNG (ephemeral key and session index).
pub fn initiate_with_rng<R: RngCore + CryptoRng>(
    rng: &mut R,
    identity: &Identity,
    own_record: &NodeRecord,
    responder: &NodeRecord,
    timestamp_ms: u64,
) -> Result<(Initiator, proto::HandshakeInit), CryptoError> {
    let (ephemeral, index) = fresh_ephemeral(rng);
    initiate_with_ephemeral(
        ephemeral,
        index,
        identity,
        own_record,
        responder,
        timestamp_ms,
    )
}

pub(crate) fn initiate_with_ephemeral(
    ephemeral: StaticSecret,
    local_index: u64,
    identity: &Identity,
    own_record: &NodeRecord,
    responder: &NodeRecord,
    timestamp_ms: u64,
) -> Result<(Initiator, proto::HandshakeInit), CryptoError> {
    own_record.check_belongs_to(identity)?;
    let ephemeral_public = X25519Public::from(&ephemeral);
    let es = dh(&ephemeral, responder.x25519_key())?;
    let ss = dh(identity.x25519_secret(), responder.x25519_key())?;
    let h0 = init_h0(
        responder.node_id().as_bytes(),
        responder.x25519_key().as_bytes(),
        &ephemeral_public,
        local_index,
    );
    let sender_key = Zeroizing::new(derive(labels::HANDSHAKE_SENDER_KEY, &[&h0, &es[..]]));
    let mut sender_ct = own_record.encode();
    aead_seal(&sender_key, 0, &h0, &mut sender_ct);

    let h1 = derive(labels::HANDSHAKE_TRANSCRIPT, &[&h0, &sender_ct]);
    let payload_key = Zeroizing::new(derive(labels::HANDSHAKE_INIT_KEY, &[&h1, &es[..], &ss[..]]));
    let mut payload_ct = proto::HandshakeInitPayload { timestamp_ms }.encode_to_vec();
    aead_seal(&payload_key, 0, &h1, &mut payload_ct);
    let h2 = derive(labels::HANDSHAKE_TRANSCRIPT, &[&h1, &payload_ct]);

    let message = proto::HandshakeInit {
        initiator_index: local_index,
        ephemeral: Bytes::copy_from_slice(ephemeral_public.as_bytes()),
        sender_ciphertext: sender_ct.into(),
        payload_ciphertext: payload_ct.into(),
    };
    let state = Initiator {
        ephemeral,
        local_index,
        responder: responder.clone(),
        h2,
        es,
        ss,
    };
    Ok((state, message))
}

/// A fresh ephemeral key and a random session index for one handshake side.
fn fresh_ephemeral<R: RngCore + CryptoRng>(rng: &mut R) -> (StaticSecret, u64) {
    let mut secret = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(&mut secret[..]);
    (StaticSecret::from(*secret), rng.next_u64())
}

fn init_h0(node_id: &[u8], x25519: &[u8], ephemeral: &X25519Public, index: u64) -> [u8; 32] {
    derive(
        labels::HANDSHAKE_TRANSCRIPT,
        &[node_id, x25519, ephemeral.as_bytes(), &index.to_le_bytes()],
    )
}

impl Initiator {
    /// The session index we chose (peers put it on messages to us).
    pub fn local_index(&self) -> u64 {
        self.local_index
    }

    /// The node we are shaking hands with.
    pub fn responder(&self) -> &NodeRecord {
        &self.responder
    }

    /// Finishes the handshake with the responder's answer, established at `now`.
    pub fn complete(
        self,
        identity: &Identity,
        response: &proto::HandshakeResponse,
        now: Instant,
    ) -> Result<Session, CryptoError> {
        if response.initiator_index != self.local_index {
            return Err(CryptoError::UnexpectedResponse {
                expected: self.local_index,
                received: response.initiator_index,
            });
        }
        let responder_ephemeral = public_key("ephemeral", &response.ephemeral)?;
        check_ciphertext_len(
            "payload_ciphertext",
            response.payload_ciphertext.len(),
            TAG_LEN,
        )?;
        let ee = dh(&self.ephemeral, &responder_ephemeral)?;
        let se = dh(identity.x25519_secret(), &responder_ephemeral)?;
        let keys = ResponseKeys::derive(
            &self.h2,
            &responder_ephemeral,
            response.responder_index,
            self.local_index,
            [&self.es, &self.ss, &ee, &se],
        );
        aead_open(&keys.confirm_key, 0, &keys.h3, &response.payload_ciphertext)?;
        let (i2r, r2i) = keys.session_keys(&response.payload_ciphertext);
        Ok(Session::new(
            Role::Initiator,
            self.responder,
            self.local_index,
            response.responder_index,
            i2r,
            r2i,
            now,
        ))
    }
}

struct ResponseKeys {
    h3: [u8; 32],
    ck: Zeroizing<[u8; 32]>,
    confirm_key: Zeroizing<[u8; 32]>,
}

impl ResponseKeys {
    fn derive(
        h2: &[u8; 32],
        responder_ephemeral: &X25519Public,
        responder_index: u64,
        initiator_index: u64,
        dhs: [&[u8; 32]; 4],
    ) -> Self {
        let h3 = derive(
            labels::HANDSHAKE_TRANSCRIPT,
            &[
                h2,
                responder_ephemeral.as_bytes(),
                &responder_index.to_le_bytes(),
                &initiator_index.to_le_bytes(),
            ],
        );
        let [es, ss, ee, se] = dhs;
        let ck = Zeroizing::new(derive(
            labels::HANDSHAKE_CHAINING_KEY,
            &[&h3, es, ss, ee, se],
        ));
        let confirm_key = Zeroizing::new(derive(labels::HANDSHAKE_RESPONSE_KEY, &[&ck[..]]));
        Self {
            h3,
            ck,
            confirm_key,
        }
    }

    fn session_keys(&self, confirm_ct: &[u8]) -> (Zeroizing<[u8; 32]>, Zeroizing<[u8; 32]>) {
        let h4 = derive(labels::HANDSHAKE_TRANSCRIPT, &[&self.h3, confirm_ct]);
        (
            Zeroizing::new(derive(labels::SESSION_I2R, &[&self.ck[..], &h4])),
            Zeroizing::new(derive(labels::SESSION_R2I, &[&self.ck[..], &h4])),
        )
    }
}

/// Remembers the newest handshake timestamp accepted from each initiator, so a recorded
/// HandshakeInit cannot be replayed. Bounded: when full, the oldest entry is forgotten.
#[derive(Debug, Clone)]
pub struct HandshakeGuard {
    last: HashMap<NodeId, u64>,
    capacity: usize,
}

impl HandshakeGuard {
    /// A guard remembering at most `capacity` initiators.
    pub fn new(capacity: usize) -> Self {
        Self {
            last: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    fn check(&self, node: NodeId, timestamp: u64) -> Result<(), CryptoError> {
        match self.last.get(&node) {
            Some(&last) if timestamp <= last => Err(CryptoError::StaleHandshake {
                node,
                timestamp,
                last,
            }),
            _ => Ok(()),
        }
    }

    fn record(&mut self, node: NodeId, timestamp: u64) {
        if !self.last.contains_key(&node) && self.last.len() >= self.capacity {
            if let Some(oldest) = self.last.iter().min_by_key(|(_, t)| **t).map(|(n, _)| *n) {
                self.last.remove(&oldest);
            }
        }
        self.last.insert(node, timestamp);
    }
}

/// Answers a [`proto::HandshakeInit`] addressed to `identity`: verifies the initiator's record at
/// `now_secs` (Unix seconds), refuses replays through `guard`, and returns the new session
/// (established at `now`) with the response to send back.
pub fn respond(
    identity: &Identity,
    init: &proto::HandshakeInit,
    guard: &mut HandshakeGuard,
    now_secs: u64,
    now: Instant,
) -> Result<(Session, proto::HandshakeResponse), CryptoError> {
    respond_with_rng(&mut OsRng, identity, init, guard, now_secs, now)
}

/// [`respond`] with a caller-supplied CSPRNG.
pub fn respond_with_rng<R: RngCore + CryptoRng>(
    rng: &mut R,
    identity: &Identity,
    init: &proto::HandshakeInit,
    guard: &mut HandshakeGuard,
    now_secs: u64,
    now: Instant,
) -> Result<(Session, proto::HandshakeResponse), CryptoError> {
    let (ephemeral, index) = fresh_ephemeral(rng);
    respond_with_ephemeral(ephemeral, index, identity, init, guard, now_secs, now)
}

pub(crate) fn respond_with_ephemeral(
    ephemeral: StaticSecret,
    local_index: u64,
    identity: &Identity,
    init: &proto::HandshakeInit,
    guard: &mut HandshakeGuard,
    now_secs: u64,
    now: Instant,
) -> Result<(Session, proto::HandshakeResponse), CryptoError> {
    let initiator_ephemeral = public_key("ephemeral", &init.ephemeral)?;
    check_ciphertext_len(
        "sender_ciphertext",
        init.sender_ciphertext.len(),
        MAX_SENDER_CIPHERTEXT,
    )?;
    check_ciphertext_len("payload_ciphertext", init.payload_ciphertext.len(), 64)?;
    let es = dh(identity.x25519_secret(), &initiator_ephemeral)?;
    let h0 = init_h0(
        identity.node_id().as_bytes(),
        identity.x25519_public().as_bytes(),
        &initiator_ephemeral,
        init.initiator_index,
    );
    let sender_key = Zeroizing::new(derive(labels::HANDSHAKE_SENDER_KEY, &[&h0, &es[..]]));
    let record_bytes = aead_open(&sender_key, 0, &h0, &init.sender_ciphertext)?;
    let initiator = NodeRecord::decode(&record_bytes, now_secs)?;
    let ss = dh(identity.x25519_secret(), initiator.x25519_key())?;
    let h1 = derive(
        labels::HANDSHAKE_TRANSCRIPT,
        &[&h0, &init.sender_ciphertext],
    );
    let payload_key = Zeroizing::new(derive(labels::HANDSHAKE_INIT_KEY, &[&h1, &es[..], &ss[..]]));
    let payload_bytes = aead_open(&payload_key, 0, &h1, &init.payload_ciphertext)?;
    let payload = proto::HandshakeInitPayload::decode(payload_bytes.as_slice())
        .map_err(|e| CryptoError::MalformedPayload(e.to_string()))?;
    guard.check(initiator.node_id(), payload.timestamp_ms)?;
    let h2 = derive(
        labels::HANDSHAKE_TRANSCRIPT,
        &[&h1, &init.payload_ciphertext],
    );

    let ephemeral_public = X25519Public::from(&ephemeral);
    let ee = dh(&ephemeral, &initiator_ephemeral)?;
    let se = dh(&ephemeral, initiator.x25519_key())?;
    let keys = ResponseKeys::derive(
        &h2,
        &ephemeral_public,
        local_index,
        init.initiator_index,
        [&es, &ss, &ee, &se],
    );
    let mut confirm = Vec::with_capacity(TAG_LEN);
    aead_seal(&keys.confirm_key, 0, &keys.h3, &mut confirm);
    let (i2r, r2i) = keys.session_keys(&confirm);
    guard.record(initiator.node_id(), payload.timestamp_ms);

    let response = proto::HandshakeResponse {
        responder_index: local_index,
        initiator_index: init.initiator_index,
        ephemeral: Bytes::copy_from_slice(ephemeral_public.as_bytes()),
        payload_ciphertext: confirm.into(),
    };
    let session = Session::new(
        Role::Responder,
        initiator,
        local_index,
        init.initiator_index,
        r2i,
        i2r,
        now,
    );
    Ok((session, response))
}

/// An established session with one peer.
///
/// Not `Clone`: a session's counters must never be used from two places.
pub struct Session {
    role: Role,
    peer: NodeRecord,
    local_index: u64,
    remote_index: u64,
    established: Instant,
    confirmed: bool,
    send_key: Zeroizing<[u8; 32]>,
    send_counter: u64,
    recv_epoch: u64,
    recv_key: Zeroizing<[u8; 32]>,
    recv_previous: Option<Zeroizing<[u8; 32]>>,
    window: ReplayWindow,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("role", &self.role)
            .field("peer", &self.peer.node_id())
            .field("local_index", &format_args!("{:#018x}", self.local_index))
            .field("remote_index", &format_args!("{:#018x}", self.remote_index))
            .field("sent", &self.send_counter)
            .field("confirmed", &self.confirmed)
            .finish_non_exhaustive()
    }
}

fn ratchet(key: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    Zeroizing::new(derive(labels::SESSION_REKEY, &[key]))
}

/// Associated data of a session message: le64(receiver index) || le64(counter).
fn session_ad(index: u64, counter: u64) -> [u8; 16] {
    let mut ad = [0u8; 16];
    ad[..8].copy_from_slice(&index.to_le_bytes());
    ad[8..].copy_from_slice(&counter.to_le_bytes());
    ad
}

impl Session {
    fn new(
        role: Role,
        peer: NodeRecord,
        local_index: u64,
        remote_index: u64,
        send_key: Zeroizing<[u8; 32]>,
        recv_key: Zeroizing<[u8; 32]>,
        now: Instant,
    ) -> Self {
        Self {
            role,
            peer,
            local_index,
            remote_index,
            established: now,
            // The initiator saw the responder's key confirmation; the responder waits for the
            // first authenticated message.
            confirmed: role == Role::Initiator,
            send_key,
            send_counter: 0,
            recv_epoch: 0,
            recv_key,
            recv_previous: None,
            window: ReplayWindow::new(),
        }
    }

    /// The peer's record as verified during the handshake.
    pub fn peer(&self) -> &NodeRecord {
        &self.peer
    }

    /// The peer's NodeId.
    pub fn peer_id(&self) -> NodeId {
        self.peer.node_id()
    }

    /// Which side of the handshake we were.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Index the peer puts on messages to us.
    pub fn local_index(&self) -> u64 {
        self.local_index
    }

    /// Index we put on messages to the peer.
    pub fn remote_index(&self) -> u64 {
        self.remote_index
    }

    /// Whether the peer has proven it holds the session keys (always true for the initiator;
    /// for the responder, after the first message from the initiator decrypted).
    pub fn is_confirmed(&self) -> bool {
        self.confirmed
    }

    /// Messages sent so far.
    pub fn messages_sent(&self) -> u64 {
        self.send_counter
    }

    /// Whether the initiator should start a new handshake ([`REKEY_AFTER`] has passed).
    pub fn should_rehandshake(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.established) >= REKEY_AFTER
            || self.send_counter >= REJECT_AFTER_MESSAGES / 2
    }

    /// Whether the session is past [`REJECT_AFTER`] and unusable.
    pub fn is_expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.established) >= REJECT_AFTER
    }

    /// Current (send, receive) keys, for the published test vectors.
    pub(crate) fn current_keys(&self) -> ([u8; 32], [u8; 32]) {
        (*self.send_key, *self.recv_key)
    }

    /// Moves the send counter forward, ratcheting through every epoch boundary crossed.
    pub(crate) fn skip_to(&mut self, counter: u64) {
        while self.send_counter < counter {
            self.send_counter += 1;
            if self.send_counter % EPOCH_LEN == 0 && self.send_counter < counter {
                self.send_key = ratchet(&self.send_key);
            }
        }
    }

    /// Pads and encrypts one payload for the peer.
    pub fn encrypt(
        &mut self,
        payload: &[u8],
        padding: Padding,
        now: Instant,
    ) -> Result<proto::SessionMessage, CryptoError> {
        if self.is_expired(now) {
            return Err(CryptoError::SessionExpired);
        }
        if self.send_counter >= REJECT_AFTER_MESSAGES {
            return Err(CryptoError::SessionExhausted);
        }
        if payload.len() > MAX_PRIVATE_PAYLOAD {
            return Err(CryptoError::PayloadTooLarge {
                len: payload.len(),
                max: MAX_PRIVATE_PAYLOAD,
            });
        }
        let counter = self.send_counter;
        if counter > 0 && counter % EPOCH_LEN == 0 {
            self.send_key = ratchet(&self.send_key);
        }
        self.send_counter += 1;
        let mut buf = Vec::with_capacity(padding.padded_len(payload.len()) + TAG_LEN);
        pad_into(payload, padding, &mut buf);
        aead_seal(
            &self.send_key,
            counter,
            &session_ad(self.remote_index, counter),
            &mut buf,
        );
        Ok(proto::SessionMessage {
            session_index: self.remote_index,
            counter,
            ciphertext: buf.into(),
        })
    }

    /// Authenticates, decrypts and unpads one message from the peer. Replayed counters,
    /// counters older than the replay window, and tampered messages are refused and leave the
    /// session unchanged.
    pub fn decrypt(
        &mut self,
        message: &proto::SessionMessage,
        now: Instant,
    ) -> Result<Vec<u8>, CryptoError> {
        if message.session_index != self.local_index {
            return Err(CryptoError::UnknownSession {
                expected: self.local_index,
                received: message.session_index,
            });
        }
        if self.is_expired(now) {
            return Err(CryptoError::SessionExpired);
        }
        check_ciphertext_len(
            "ciphertext",
            message.ciphertext.len(),
            MAX_PRIVATE_CIPHERTEXT,
        )?;
        let counter = message.counter;
        self.window
            .check(counter)
            .map_err(|verdict| match verdict {
                ReplayVerdict::Duplicate => CryptoError::Replay(counter),
                ReplayVerdict::TooOld => CryptoError::TooOld(counter),
            })?;
        let epoch = counter / EPOCH_LEN;
        let ad = session_ad(self.local_index, counter);
        let mut plaintext = if epoch == self.recv_epoch {
            aead_open(&self.recv_key, counter, &ad, &message.ciphertext)?
        } else if epoch + 1 == self.recv_epoch {
            let key = self
                .recv_previous
                .as_ref()
                .ok_or(CryptoError::TooOld(counter))?;
            aead_open(key, counter, &ad, &message.ciphertext)?
        } else if epoch > self.recv_epoch {
            if epoch - self.recv_epoch > MAX_EPOCH_SKIP {
                return Err(CryptoError::TooFarAhead(counter));
            }
            // Derive forward without committing until the message authenticates.
            let mut previous = Zeroizing::new(*self.recv_key);
            let mut key = ratchet(&self.recv_key);
            for _ in self.recv_epoch + 1..epoch {
                previous = key;
                key = ratchet(&previous);
            }
            let plaintext = aead_open(&key, counter, &ad, &message.ciphertext)?;
            self.recv_previous = Some(previous);
            self.recv_key = key;
            self.recv_epoch = epoch;
            plaintext
        } else {
            return Err(CryptoError::TooOld(counter));
        };
        self.window.accept(counter);
        self.confirmed = true;
        unpad(&mut plaintext)?;
        Ok(plaintext)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{NodeRecordBuilder, RecordError};

    const NOW: u64 = 1_800_000_000;

    struct Node {
        id: Identity,
        record: NodeRecord,
    }

    fn node() -> Node {
        let id = Identity::generate();
        let record = NodeRecordBuilder::new(&id, 1).sign(NOW).unwrap();
        Node { id, record }
    }

    fn pair() -> (Session, Session, Node, Node) {
        let (a, b) = (node(), node());
        let t = Instant::now();
        let (init_state, init) = initiate(&a.id, &a.record, &b.record, 1).unwrap();
        let mut guard = HandshakeGuard::new(16);
        let (resp_session, resp) = respond(&b.id, &init, &mut guard, NOW, t).unwrap();
        let init_session = init_state.complete(&a.id, &resp, t).unwrap();
        (init_session, resp_session, a, b)
    }

    #[test]
    fn handshake_establishes_matching_keys_both_ways() {
        let (mut i, mut r, a, b) = pair();
        let t = Instant::now();
        assert_eq!(i.peer_id(), b.id.node_id());
        assert_eq!(r.peer_id(), a.id.node_id());
        assert!(i.is_confirmed());
        assert!(!r.is_confirmed());
        let m = i.encrypt(b"ping", Padding::None, t).unwrap();
        assert_eq!(r.decrypt(&m, t).unwrap(), b"ping");
        assert!(r.is_confirmed());
        let m = r.encrypt(b"pong", Padding::Buckets, t).unwrap();
        assert_eq!(m.ciphertext.len(), 64 + TAG_LEN);
        assert_eq!(i.decrypt(&m, t).unwrap(), b"pong");
    }

    #[test]
    fn replayed_messages_are_rejected() {
        let (mut i, mut r, ..) = pair();
        let t = Instant::now();
        let m = i.encrypt(b"once", Padding::None, t).unwrap();
        r.decrypt(&m, t).unwrap();
        assert_eq!(r.decrypt(&m, t), Err(CryptoError::Replay(0)));
    }

    #[test]
    fn reordered_messages_within_the_window_are_accepted_once() {
        let (mut i, mut r, ..) = pair();
        let t = Instant::now();
        let msgs: Vec<_> = (0..10)
            .map(|n| i.encrypt(&[n], Padding::None, t).unwrap())
            .collect();
        for n in [9usize, 2, 5, 0, 1, 8, 3, 4, 7, 6] {
            assert_eq!(r.decrypt(&msgs[n], t).unwrap(), vec![n as u8]);
        }
        for m in &msgs {
            assert!(matches!(r.decrypt(m, t), Err(CryptoError::Replay(_))));
        }
    }

    #[test]
    fn messages_older_than_the_window_are_rejected() {
        let (mut i, mut r, ..) = pair();
        let t = Instant::now();
        let first = i.encrypt(b"old", Padding::None, t).unwrap();
        let mut last = None;
        for _ in 0..REPLAY_WINDOW + 1 {
            last = Some(i.encrypt(b"x", Padding::None, t).unwrap());
        }
        r.decrypt(&last.unwrap(), t).unwrap();
        assert_eq!(r.decrypt(&first, t), Err(CryptoError::TooOld(0)));
    }

    #[test]
    fn tampered_messages_are_rejected_and_change_nothing() {
        let (mut i, mut r, ..) = pair();
        let t = Instant::now();
        let m = i.encrypt(b"payload", Padding::None, t).unwrap();
        let mut bad = m.clone();
        let mut ct = bad.ciphertext.to_vec();
        ct[0] ^= 1;
        bad.ciphertext = ct.into();
        assert_eq!(r.decrypt(&bad, t), Err(CryptoError::DecryptFailed));
        // A forged counter is bound by the AD.
        let mut bad = m.clone();
        bad.counter = 5;
        assert_eq!(r.decrypt(&bad, t), Err(CryptoError::DecryptFailed));
        // Forgeries did not consume the genuine counter.
        assert_eq!(r.decrypt(&m, t).unwrap(), b"payload");
        let mut bad = m.clone();
        bad.session_index ^= 1;
        assert!(matches!(
            r.decrypt(&bad, t),
            Err(CryptoError::UnknownSession { .. })
        ));
        let mut bad = m;
        bad.counter = EPOCH_LEN * (MAX_EPOCH_SKIP + 1);
        assert!(matches!(
            r.decrypt(&bad, t),
            Err(CryptoError::TooFarAhead(_))
        ));
    }

    #[test]
    fn keys_ratchet_across_epochs_and_old_epoch_stragglers_still_decrypt() {
        let (mut i, mut r, ..) = pair();
        let t = Instant::now();
        // Jump the sender close to an epoch boundary without encrypting 65k messages.
        i.skip_to(EPOCH_LEN - 2);
        let a = i.encrypt(b"a", Padding::None, t).unwrap(); // epoch 0
        let b = i.encrypt(b"b", Padding::None, t).unwrap(); // epoch 0
        let c = i.encrypt(b"c", Padding::None, t).unwrap(); // epoch 1: ratcheted
        assert_eq!(c.counter, EPOCH_LEN);
        assert_eq!(r.decrypt(&c, t).unwrap(), b"c");
        assert_eq!(r.decrypt(&a, t).unwrap(), b"a", "previous-epoch straggler");
        assert_eq!(r.decrypt(&b, t).unwrap(), b"b");
        // Two epochs ahead at once, then a straggler from the epoch in between.
        i.skip_to(EPOCH_LEN * 3 - 1);
        let straggler = i.encrypt(b"e2", Padding::None, t).unwrap();
        let d = i.encrypt(b"e3", Padding::None, t).unwrap();
        assert_eq!(d.counter / EPOCH_LEN, 3);
        assert_eq!(r.decrypt(&d, t).unwrap(), b"e3");
        assert_eq!(r.decrypt(&straggler, t).unwrap(), b"e2");
        // Epoch 1 keys are gone: forward secrecy inside the session.
        assert!(r.decrypt(&c, t).is_err());
    }

    #[test]
    fn expired_sessions_refuse_traffic() {
        let (mut i, mut r, ..) = pair();
        let t = Instant::now();
        let m = i.encrypt(b"x", Padding::None, t).unwrap();
        let later = t + REJECT_AFTER;
        assert!(i.should_rehandshake(t + REKEY_AFTER));
        assert!(!i.should_rehandshake(t));
        assert_eq!(
            i.encrypt(b"x", Padding::None, later).unwrap_err(),
            CryptoError::SessionExpired
        );
        assert_eq!(
            r.decrypt(&m, later).unwrap_err(),
            CryptoError::SessionExpired
        );
    }

    #[test]
    fn replayed_handshake_init_is_refused() {
        let (a, b) = (node(), node());
        let t = Instant::now();
        let mut guard = HandshakeGuard::new(16);
        let (_, init) = initiate(&a.id, &a.record, &b.record, 1000).unwrap();
        respond(&b.id, &init, &mut guard, NOW, t).unwrap();
        assert!(matches!(
            respond(&b.id, &init, &mut guard, NOW, t),
            Err(CryptoError::StaleHandshake {
                timestamp: 1000,
                last: 1000,
                ..
            })
        ));
        let (_, older) = initiate(&a.id, &a.record, &b.record, 999).unwrap();
        assert!(matches!(
            respond(&b.id, &older, &mut guard, NOW, t),
            Err(CryptoError::StaleHandshake { .. })
        ));
        let (_, newer) = initiate(&a.id, &a.record, &b.record, 1001).unwrap();
        assert!(respond(&b.id, &newer, &mut guard, NOW, t).is_ok());
    }

    #[test]
    fn handshake_with_the_wrong_party_fails() {
        let (a, b, eve) = (node(), node(), node());
        let t = Instant::now();
        let mut guard = HandshakeGuard::new(16);
        let (state, init) = initiate(&a.id, &a.record, &b.record, 1).unwrap();
        assert_eq!(
            respond(&eve.id, &init, &mut guard, NOW, t).unwrap_err(),
            CryptoError::DecryptFailed
        );
        // Eve answers with her own response to a different init: wrong confirmation.
        let (_, init_to_eve) = initiate(&a.id, &a.record, &eve.record, 2).unwrap();
        let (_, eve_resp) = respond(&eve.id, &init_to_eve, &mut guard, NOW, t).unwrap();
        let forged = proto::HandshakeResponse {
            initiator_index: state.local_index(),
            ..eve_resp
        };
        assert_eq!(
            state.complete(&a.id, &forged, t).unwrap_err(),
            CryptoError::DecryptFailed
        );
        // An expired initiator record is refused.
        let (_, init) = initiate(&a.id, &a.record, &b.record, 3).unwrap();
        assert!(matches!(
            respond(&b.id, &init, &mut guard, a.record.expires_at(), t),
            Err(CryptoError::Record(RecordError::Expired { .. }))
        ));
    }
}
