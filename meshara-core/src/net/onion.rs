//! Onion routing in the node: circuits, sending, relaying and delivering onion packets.
//!
//! A message sent with [`Privacy::Onion`](crate::delivery::Privacy::Onion) is sealed to its
//! recipient (the sender's record travels inside the seal, as for store-and-forward) and wrapped
//! in a fixed-size [`onion`] packet whose route is a circuit: `onion.hops` relays picked at
//! random among nodes whose records advertise [`Capability::Relay`], then the recipient. The
//! circuit to a destination is reused for `onion.circuit_lifetime` or `onion.circuit_packets`
//! packets and rebuilt sooner when a message needs resending (a relay may be gone). The
//! recipient acknowledges over a circuit of its own, so acknowledgements reveal no more than
//! messages do. Relays forward packets to the next hop, connecting to it (after a DHT lookup if
//! they lack its record) when needed; each emits [`Event::OnionRelayed`] with the two
//! neighbours it saw, which is all it learns.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message as _;
use rand_core::{OsRng, RngCore};

use super::core::{Inner, State, ack_payload, envelope, unix_secs};
use super::events::Event;
use super::metrics::DropReason;
use crate::crypto::onion::{self, Action, Exit, Hop};
use crate::crypto::padding::Padding;
use crate::identity::NodeId;
use crate::message::{self, MessageId};
use crate::proto;
use crate::record::{Capability, NodeRecord, Transport};

/// How long an onion packet stays valid after it is built.
const PACKET_LIFETIME_SECS: u64 = 300;

/// A route to one destination, reused until it is rotated.
#[derive(Debug)]
pub(crate) struct Circuit {
    relays: Vec<NodeRecord>,
    built: Instant,
    packets: u32,
}

impl Circuit {
    /// The relay that packets on this circuit are sent to first.
    pub(crate) fn first_relay(&self) -> Option<NodeId> {
        self.relays.first().map(NodeRecord::node_id)
    }
}

/// Why no circuit could be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooFewRelays {
    pub(crate) have: usize,
    pub(crate) need: usize,
}

fn dialable(record: &NodeRecord) -> bool {
    record
        .addresses()
        .iter()
        .any(|a| matches!(a.transport, Transport::Quic | Transport::Tcp))
}

/// Up to `n` distinct indices below `len`, in random order.
fn sample(len: usize, n: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..len).collect();
    for i in (1..len).rev() {
        let j = (OsRng.next_u64() % (i as u64 + 1)) as usize;
        idx.swap(i, j);
    }
    idx.truncate(n);
    idx
}

impl Circuit {
    /// When it was built.
    pub(crate) fn built(&self) -> Instant {
        self.built
    }
}

impl State {
    /// Relays we could build a circuit from: verified, unexpired records of other nodes that
    /// relay and can be dialled, excluding `exclude`.
    pub(crate) fn relay_candidates(
        &self,
        me: &NodeId,
        exclude: &NodeId,
        now_secs: u64,
    ) -> Vec<NodeRecord> {
        self.records
            .iter()
            .filter(|r| {
                let id = r.node_id();
                id != *me
                    && id != *exclude
                    && !self.banned.contains(&id)
                    && !r.is_expired(now_secs)
                    && r.has_capability(Capability::Relay)
                    && dialable(r)
            })
            .cloned()
            .collect()
    }
}

impl Inner {
    /// The circuit's relays to `destination`, building a new circuit if there is none, it is
    /// worn out, or `rotate` asks for a fresh one.
    pub(crate) fn circuit(
        &self,
        st: &mut State,
        destination: &NodeId,
        rotate: bool,
        now: Instant,
    ) -> Result<Vec<NodeRecord>, TooFewRelays> {
        let cfg = &self.config.onion;
        if let Some(c) = st.circuits.get_mut(destination) {
            let worn = now.saturating_duration_since(c.built) >= cfg.circuit_lifetime
                || c.packets >= cfg.circuit_packets;
            if !rotate && !worn {
                c.packets += 1;
                return Ok(c.relays.clone());
            }
        }
        let me = self.identity.node_id();
        let candidates = st.relay_candidates(&me, destination, unix_secs());
        if candidates.len() < cfg.hops {
            return Err(TooFewRelays {
                have: candidates.len(),
                need: cfg.hops,
            });
        }
        // The first relay sees us; prefer one we are already connected to (which reveals
        // nothing new), and keep the relays on different networks where the records allow.
        let mut order = sample(candidates.len(), candidates.len());
        if let Some(pos) = order
            .iter()
            .position(|i| st.is_ready(&candidates[*i].node_id()))
        {
            order.swap(0, pos);
        }
        let mut relays: Vec<NodeRecord> = Vec::with_capacity(cfg.hops);
        let mut groups = HashSet::new();
        for i in &order {
            if relays.len() == cfg.hops {
                break;
            }
            if groups.insert(super::core::record_group(&candidates[*i])) {
                relays.push(candidates[*i].clone());
            }
        }
        for i in &order {
            if relays.len() == cfg.hops {
                break;
            }
            let id = candidates[*i].node_id();
            if !relays.iter().any(|r| r.node_id() == id) {
                relays.push(candidates[*i].clone());
            }
        }
        tracing::debug!(
            %destination,
            relays = ?relays.iter().map(NodeRecord::node_id).collect::<Vec<_>>(),
            "new onion circuit"
        );
        st.circuits.insert(
            *destination,
            Circuit {
                relays: relays.clone(),
                built: now,
                packets: 1,
            },
        );
        self.metrics.message("out", "circuit");
        Ok(relays)
    }

    /// Whether a circuit to `destination` could be built now.
    pub(crate) fn check_relays(
        &self,
        st: &State,
        destination: &NodeId,
    ) -> Result<(), TooFewRelays> {
        let have = st
            .relay_candidates(&self.identity.node_id(), destination, unix_secs())
            .len();
        let need = self.config.onion.hops;
        if have < need {
            return Err(TooFewRelays { have, need });
        }
        Ok(())
    }

    /// Seals `payload` to `peer` and sends it as an onion packet over the circuit to `peer`
    /// (a fresh one when `rotate`). Returns whether the packet left for the first relay.
    pub(crate) async fn send_onion(
        self: Arc<Self>,
        peer: NodeId,
        payload: Bytes,
        rotate: bool,
    ) -> bool {
        let mut record = self.lock().peer_record(&peer);
        // One lookup per recipient at a time, however many messages wait for it.
        if record.is_none() && self.lock().looking_up.insert(peer) {
            let lookup = self.clone().lookup(*peer.as_bytes(), true).await;
            let failed = {
                let mut st = self.lock();
                st.looking_up.remove(&peer);
                record = st.peer_record(&peer);
                if record.is_none() && !lookup.closest.is_empty() {
                    self.fail_unfindable(&mut st, peer)
                } else {
                    Vec::new()
                }
            };
            self.report_unfindable(peer, failed);
        }
        let Some(record) = record else {
            tracing::debug!(%peer, "no record for the onion recipient yet");
            return false;
        };
        let own = self.own_record();
        let sealed =
            match crate::crypto::seal::seal(&self.identity, &own, &record, &payload, Padding::None)
            {
                Ok(s) => s.encode_to_vec(),
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "cannot seal an onion message");
                    return false;
                }
            };
        let relays = {
            let mut st = self.lock();
            match self.circuit(&mut st, &peer, rotate, Instant::now()) {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(%peer, have = e.have, need = e.need, "too few relays for an onion circuit");
                    return false;
                }
            }
        };
        self.send_over(&relays, &record, &sealed, Exit::Deliver)
            .await
    }

    /// Builds a packet through `relays` to `last` and hands it to the first relay.
    async fn send_over(
        self: &Arc<Self>,
        relays: &[NodeRecord],
        last: &NodeRecord,
        content: &[u8],
        exit: Exit,
    ) -> bool {
        let route: Vec<Hop> = relays
            .iter()
            .chain(std::iter::once(last))
            .map(|r| Hop {
                node: r.node_id(),
                key: *r.x25519_key(),
            })
            .collect();
        let packet = match onion::build(
            &route,
            content,
            exit,
            unix_secs() + PACKET_LIFETIME_SECS,
            &mut OsRng,
        ) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cannot build an onion packet");
                return false;
            }
        };
        let first = route[0].node;
        if !self.clone().ready_connection(first).await {
            tracing::debug!(relay = %first, "first onion relay unreachable; rotating");
            self.lock().circuits.remove(&last.node_id());
            return false;
        }
        let sent = self.send_packet(&first, packet);
        if sent {
            self.metrics.message(
                "out",
                if exit == Exit::Discard {
                    "cover"
                } else {
                    "onion"
                },
            );
        }
        sent
    }

    fn send_packet(&self, to: &NodeId, packet: Vec<u8>) -> bool {
        let env = envelope(proto::envelope::Body::Onion(proto::OnionPacket {
            packet: Bytes::from(packet),
        }));
        let Some(frame) = self.frame(&env) else {
            return false;
        };
        let writer = {
            let st = self.lock();
            self.mark_used(&st, to);
            st.ready_writer(to)
        };
        let Some(writer) = writer else {
            return false;
        };
        match writer.try_send(frame) {
            Ok(()) => true,
            Err(reason) => {
                self.count_drop(reason, Some(to), "onion packet");
                false
            }
        }
    }

    /// An onion packet from `from`: forward it, deliver it, or drop it.
    pub(crate) fn handle_onion(self: &Arc<Self>, from: NodeId, packet: &[u8]) {
        let now = unix_secs();
        let processed = match onion::process(&self.identity, packet, now) {
            Ok(p) => p,
            Err(e) => {
                self.count_drop(DropReason::Onion, Some(&from), &e.to_string());
                return;
            }
        };
        if let Err(e) = self
            .lock()
            .onion_replay
            .insert(processed.tag, processed.expires_at, now)
        {
            self.count_drop(DropReason::Onion, Some(&from), &e.to_string());
            return;
        }
        match processed.action {
            Action::Forward { next, packet } => self.forward_onion(from, next, packet),
            Action::Deliver(content) => {
                self.metrics.message("in", "onion");
                self.deliver_onion(&from, &content);
            }
            Action::Discard => self.metrics.message("in", "cover"),
        }
    }

    fn forward_onion(self: &Arc<Self>, from: NodeId, next: NodeId, packet: Vec<u8>) {
        if !self.config.onion.relay {
            self.count_drop(DropReason::Onion, Some(&from), "onion relaying is disabled");
            return;
        }
        if next == self.identity.node_id() || next == from {
            self.count_drop(DropReason::Onion, Some(&from), "onion hop back to itself");
            return;
        }
        if self.lock().is_ready(&next) {
            self.relayed(from, next, packet);
            return;
        }
        // Connecting to the next hop takes time; a bounded number of packets may wait for it.
        let Ok(permit) = self.onion_forwards.clone().try_acquire_owned() else {
            self.count_drop(
                DropReason::Onion,
                Some(&from),
                "too many onion packets waiting for a next hop",
            );
            return;
        };
        let inner = self.clone();
        self.tasks.spawn(async move {
            let _permit = permit;
            if inner.lock().peer_record(&next).is_none() {
                inner.clone().lookup_record(next).await;
            }
            if inner.clone().ready_connection(next).await {
                inner.relayed(from, next, packet);
            } else {
                inner.count_drop(DropReason::Onion, Some(&next), "onion next hop unreachable");
            }
        });
    }

    /// Hands a processed packet to the next hop and reports what this relay saw.
    fn relayed(&self, from: NodeId, next: NodeId, packet: Vec<u8>) {
        if self.send_packet(&next, packet) {
            tracing::trace!(%from, %next, "relayed an onion packet");
            self.emit(Event::OnionRelayed { from, to: next });
            self.metrics.message("out", "onion-relay");
        }
    }

    /// The last hop: `content` is a sealed message for us.
    fn deliver_onion(self: &Arc<Self>, from: &NodeId, content: &[u8]) {
        let sealed = match proto::SealedMessage::decode(content) {
            Ok(s) => s,
            Err(e) => {
                self.count_drop(DropReason::Malformed, Some(from), &e.to_string());
                return;
            }
        };
        if let Err(e) = crate::wire::sealed(&sealed) {
            self.count_drop(DropReason::Malformed, Some(from), &e.to_string());
            return;
        }
        let opened = match crate::crypto::seal::open(&self.identity, &sealed, unix_secs()) {
            Ok(o) => o,
            Err(e) => {
                self.count_drop(DropReason::Crypto, Some(from), &e.to_string());
                return;
            }
        };
        let sender = opened.sender.node_id();
        let _ = self.lock().records.insert(opened.sender.clone());
        let payload = match message::decode_payload(&opened.payload) {
            Ok(p) => p,
            Err(e) => {
                self.count_drop(DropReason::Malformed, Some(&sender), &e.to_string());
                return;
            }
        };
        // Messages and acknowledgements only: answering anything else (a query) would go
        // over a direct session and link the two ends.
        use proto::private_payload::Body as B;
        if !matches!(payload.body, Some(B::Message(_) | B::Ack(_))) {
            self.count_drop(
                DropReason::Onion,
                Some(&sender),
                "only messages and acknowledgements travel by onion",
            );
            return;
        }
        let mut acks = std::collections::HashMap::new();
        self.dispatch_payload(sender, None, payload, &mut acks, std::time::Instant::now());
        // Acknowledge the way the message came: over a circuit of our own.
        for (peer, ids) in acks {
            for chunk in ids.chunks(crate::wire::MAX_IDS) {
                let Some(bytes) = ack_payload(chunk) else {
                    continue;
                };
                let inner = self.clone();
                self.tasks.spawn(async move {
                    if inner
                        .clone()
                        .send_onion(peer, Bytes::from(bytes), false)
                        .await
                    {
                        inner.metrics.message("out", "ack");
                    }
                });
            }
        }
    }

    /// Sends one cover packet: through a random circuit and back to us, where it is dropped.
    pub(crate) async fn send_cover(self: Arc<Self>) {
        let me = self.identity.node_id();
        // A circuit like any other (same selection, same rotation), whose destination is us.
        let relays = {
            let mut st = self.lock();
            match self.circuit(&mut st, &me, false, Instant::now()) {
                Ok(r) => r,
                Err(_) => return,
            }
        };
        let own = self.own_record();
        self.send_over(&relays, &own, &[], Exit::Discard).await;
    }

    /// When the next cover packet is due: exponentially distributed around the configured
    /// mean, so its timing carries no pattern.
    pub(crate) fn next_cover(&self, now: Instant) -> Option<Instant> {
        let mean = self.config.onion.cover_interval;
        if mean.is_zero() {
            return None;
        }
        // u in (0, 1]; -ln(u) is exponential with mean 1. Capped at 10 means.
        let u = ((OsRng.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let factor = (-u.ln()).min(10.0);
        Some(now + Duration::from_secs_f64(mean.as_secs_f64() * factor))
    }

    /// How many bytes of private payload fit into an onion packet once sealed (our own record
    /// travels inside the seal).
    pub(crate) fn onion_payload_max(&self) -> usize {
        let own = self.own_record();
        // Seal an empty payload to ourselves: same sizes as to anyone.
        match crate::crypto::seal::seal(&self.identity, &own, &own, &[], Padding::None) {
            Ok(s) => onion::PAYLOAD_CAPACITY.saturating_sub(s.encoded_len() + 8),
            Err(_) => 0,
        }
    }
}

/// Sends the tick's due onion messages (called with the state unlocked).
pub(crate) fn spawn_sends(inner: &Arc<Inner>, sends: Vec<(MessageId, NodeId, Bytes, bool)>) {
    for (id, peer, payload, rotate) in sends {
        let task = inner.clone();
        inner.tasks.spawn(async move {
            if !task.send_onion(peer, payload, rotate).await {
                tracing::debug!(%id, %peer, "onion send did not leave; the outbox will retry");
            }
        });
    }
}
