//! The node's broadcast layer: one HyParView + Plumtree state machine
//! ([`crate::routing::gossip::Topic`]) per topic, driven over the node's connections.
//!
//! A node carries every topic it hears of, up to [`Limits::max_topics`](super::Limits): a topic's
//! overlay grows from the connections each node already has (they are offered to the topic's
//! passive view and promoted by its repair timer), so the first broadcast on a new topic reaches
//! the whole connected mesh, and later ones follow the Plumtree tree. Broadcast signatures are
//! checked here, before the state machine sees a message it has not seen yet; node records in
//! membership messages are verified and enter the record book and the DHT.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use prost::Message as _;
use rand_core::RngCore;

use super::core::{Inner, State, record_group, unix_secs};
use super::error::SendError;
use super::events::{Event, ReceivedBroadcast};
use super::metrics::DropReason;
use crate::identity::NodeId;
use crate::message::{self, VerifiedBroadcast};
use crate::proto;
use crate::record::NodeRecord;
use crate::routing::gossip::{GossipConfig, Message, MsgId, Output, Penalty, Topic};

/// Gossip messages queued for one peer while it is being dialled.
const PENDING_PER_PEER: usize = 64;
/// Peers with queued gossip at once.
const PENDING_PEERS: usize = 256;
/// Longest random walk accepted from a peer (ForwardJoin and Shuffle TTLs are capped to it).
const MAX_WALK: u32 = 8;

/// Gossip waiting for a peer to connect: when to give up, and `(topic, message)` pairs.
type PendingQueue = (Instant, Vec<(String, Message<NodeId>)>);

/// Per-node gossip state, inside the node's [`State`].
pub(crate) struct Gossip {
    pub(crate) topics: HashMap<String, Topic<NodeId>>,
    /// Messages for peers not connected yet: peer → (when to give up, queue).
    pending: HashMap<NodeId, PendingQueue>,
    config: GossipConfig,
}

impl Gossip {
    pub(crate) fn new() -> Self {
        Self {
            topics: HashMap::new(),
            pending: HashMap::new(),
            config: GossipConfig::default(),
        }
    }

    /// Whether `peer` is in the active view of a topic, or has gossip waiting for it.
    pub(crate) fn is_neighbor(&self, peer: &NodeId) -> bool {
        self.pending.contains_key(peer) || self.topics.values().any(|t| t.active().contains(peer))
    }

    /// When the earliest topic timer is due.
    pub(crate) fn next_timeout(&self) -> Option<Instant> {
        let topics = self.topics.values().filter_map(Topic::poll_timeout);
        let pending = self.pending.values().map(|(at, _)| *at);
        topics.chain(pending).min()
    }
}

/// What gossip asks of the node once the state lock is released.
#[derive(Default)]
pub(crate) struct Effects {
    dial: Vec<NodeId>,
    delivered: Vec<(VerifiedBroadcast, NodeId)>,
}

/// A gossip message from the wire, with its node records verified.
enum Incoming {
    Control(Message<NodeId>),
    /// A broadcast: its id, its encoded signed form (not verified yet) and its round.
    Data {
        id: MsgId,
        payload: Bytes,
        round: u32,
    },
}

impl Inner {
    /// Creates the state for `name` if the topic cap allows; its passive view starts with the
    /// node's ready connections.
    fn ensure_topic(&self, st: &mut State, name: &str, now: Instant) -> bool {
        if st.gossip.topics.contains_key(name) {
            return true;
        }
        let max = self.config.limits.max_topics;
        if st.gossip.topics.len() >= max {
            return false;
        }
        let me = self.identity.node_id();
        let mut topic = Topic::new(
            me,
            st.gossip.config.clone(),
            rand_core::OsRng.next_u64(),
            now,
        );
        let ready = ready_peers(st);
        topic.learn(ready.iter().copied(), now);
        st.gossip.topics.insert(name.to_owned(), topic);
        tracing::debug!(topic = name, "carrying topic");
        for peer in ready {
            self.announce_topic(st, name, peer);
        }
        true
    }

    /// Tells `peer` that this node carries `topic`.
    fn announce_topic(&self, st: &State, topic: &str, peer: NodeId) {
        let body = proto::gossip_message::Body::Announce(proto::Announce {});
        self.send_gossip_body(st, topic, peer, body);
    }

    /// Signs and broadcasts `content` on `topic`.
    pub(crate) fn broadcast(
        self: &Arc<Self>,
        topic: &str,
        content_type: &str,
        content: Bytes,
    ) -> Result<crate::message::MessageId, SendError> {
        let seq = self
            .broadcast_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (id, signed) = message::sign_broadcast(
            &self.identity,
            topic,
            content_type,
            content,
            seq,
            super::core::unix_ms(),
        )
        .map_err(|e| SendError::Invalid(e.to_string()))?;
        let now = Instant::now();
        let mut fx = Effects::default();
        {
            let mut st = self.lock();
            if st.stopped {
                return Err(SendError::Stopped);
            }
            if !self.ensure_topic(&mut st, topic, now) {
                drop(st);
                self.count_drop(DropReason::MaxTopics, None, topic);
                return Err(SendError::TopicLimit(self.config.limits.max_topics));
            }
            let contact = random_ready_peer(&st);
            let mut out = Vec::new();
            if let Some(t) = st.gossip.topics.get_mut(topic) {
                // A topic we just created has an empty active view: join through a connected
                // peer so this first broadcast goes out now rather than after a repair round.
                if t.active().is_empty() {
                    if let Some(contact) = contact {
                        t.join(contact, now, &mut out);
                    }
                }
                t.broadcast(id.0, signed.encode_to_vec().into(), now, &mut out);
            }
            self.apply_gossip(&mut st, topic, out, now, &mut fx);
        }
        self.metrics.message("out", "broadcast");
        self.finish_gossip(fx);
        Ok(id)
    }

    /// A `GossipMessage` from `from`.
    pub(crate) fn handle_gossip(self: &Arc<Self>, from: NodeId, msg: proto::GossipMessage) {
        let now = Instant::now();
        let topic = msg.topic;
        let Some(body) = msg.body else { return };
        if let proto::gossip_message::Body::Announce(_) = body {
            self.metrics.message("in", "control");
            let mut st = self.lock();
            if st.gossip.topics.contains_key(&topic) {
                if let Some(t) = st.gossip.topics.get_mut(&topic) {
                    if !t.active().contains(&from) {
                        t.learn([from], now);
                    }
                }
            } else if !self.ensure_topic(&mut st, &topic, now) {
                drop(st);
                self.count_drop(DropReason::MaxTopics, Some(&from), &topic);
            }
            return;
        }
        let incoming = match self.decode_gossip(&from, body) {
            Ok(m) => m,
            Err(detail) => {
                self.count_drop(DropReason::Malformed, Some(&from), detail);
                return;
            }
        };
        match incoming {
            Incoming::Control(message) => {
                self.metrics.message("in", "control");
                self.gossip_input(&topic, from, message, None, now);
            }
            Incoming::Data { id, payload, round } => {
                self.metrics.message("in", "broadcast");
                self.gossip_data(&topic, from, id, payload, round, now);
            }
        }
    }

    /// A broadcast that arrived as a plain `Broadcast` envelope (round unknown): treated as
    /// gossip data on its topic.
    pub(crate) fn handle_plain_broadcast(
        self: &Arc<Self>,
        from: NodeId,
        signed: proto::SignedBroadcast,
    ) {
        self.metrics.message("in", "broadcast");
        let Ok(body) = proto::BroadcastBody::decode(signed.body.clone()) else {
            self.count_drop(DropReason::Malformed, Some(&from), "broadcast body");
            return;
        };
        let id = message::broadcast_id(&signed.body).0;
        let payload: Bytes = signed.encode_to_vec().into();
        self.gossip_data(&body.topic, from, id, payload, 0, Instant::now());
    }

    fn gossip_data(
        self: &Arc<Self>,
        topic: &str,
        from: NodeId,
        id: MsgId,
        payload: Bytes,
        round: u32,
        now: Instant,
    ) {
        let seen = self
            .lock()
            .gossip
            .topics
            .get(topic)
            .is_some_and(|t| t.has_seen(&id));
        // Only a message the topic has not seen needs its signature checked; a duplicate only
        // teaches the tree (Prune) and its payload is ignored.
        let verified = if seen {
            None
        } else {
            let checked = proto::SignedBroadcast::decode(payload.clone())
                .map_err(|e| e.to_string())
                .and_then(|s| message::verify_broadcast(&s).map_err(|e| e.to_string()))
                .and_then(|v| {
                    if v.topic != topic {
                        Err(format!("a broadcast on {:?} sent as {topic:?}", v.topic))
                    } else if v.id.0 != id {
                        Err("broadcast id mismatch".into())
                    } else {
                        Ok(v)
                    }
                });
            match checked {
                Ok(v) => Some(v),
                Err(e) => {
                    self.count_drop(DropReason::Crypto, Some(&from), &e);
                    self.gossip_penalty(topic, from, Penalty::Invalid, now);
                    return;
                }
            }
        };
        let message = Message::Gossip { id, payload, round };
        self.gossip_input(topic, from, message, verified, now);
    }

    fn gossip_penalty(self: &Arc<Self>, topic: &str, from: NodeId, penalty: Penalty, now: Instant) {
        let mut fx = Effects::default();
        {
            let mut st = self.lock();
            let mut out = Vec::new();
            if let Some(t) = st.gossip.topics.get_mut(topic) {
                t.penalize(from, penalty, now, &mut out);
            }
            self.apply_gossip(&mut st, topic, out, now, &mut fx);
        }
        self.finish_gossip(fx);
    }

    fn gossip_input(
        self: &Arc<Self>,
        topic: &str,
        from: NodeId,
        message: Message<NodeId>,
        verified: Option<VerifiedBroadcast>,
        now: Instant,
    ) {
        let mut fx = Effects::default();
        {
            let mut st = self.lock();
            if st.stopped {
                return;
            }
            if !self.ensure_topic(&mut st, topic, now) {
                drop(st);
                self.count_drop(DropReason::MaxTopics, Some(&from), topic);
                return;
            }
            let mut out = Vec::new();
            if let Some(t) = st.gossip.topics.get_mut(topic) {
                t.handle_message(from, message, now, &mut out);
            }
            // The state machine delivers only the message it was just handed.
            if let Some(v) = verified {
                if out.iter().any(|o| matches!(o, Output::Deliver { .. }))
                    && v.author != self.identity.node_id()
                {
                    fx.delivered.push((v, from));
                }
            }
            self.apply_gossip(&mut st, topic, out, now, &mut fx);
        }
        self.finish_gossip(fx);
    }

    /// Runs due topic timers and gives up on gossip queued for peers that never connected.
    pub(crate) fn gossip_timers(self: &Arc<Self>, now: Instant) {
        let mut fx = Effects::default();
        {
            let mut st = self.lock();
            if st.stopped {
                return;
            }
            let expired: Vec<NodeId> = st
                .gossip
                .pending
                .iter()
                .filter(|(_, (at, _))| *at <= now)
                .map(|(id, _)| *id)
                .collect();
            for peer in expired {
                st.gossip.pending.remove(&peer);
                self.gossip_peer_lost(&mut st, peer, now, &mut fx);
            }
            let due: Vec<String> = st
                .gossip
                .topics
                .iter()
                .filter(|(_, t)| t.poll_timeout().is_some_and(|at| at <= now))
                .map(|(name, _)| name.clone())
                .collect();
            for name in due {
                let mut out = Vec::new();
                if let Some(t) = st.gossip.topics.get_mut(&name) {
                    t.handle_timeout(now, &mut out);
                }
                self.apply_gossip(&mut st, &name, out, now, &mut fx);
            }
        }
        self.finish_gossip(fx);
    }

    /// `peer` has no connection left (or could not be reached): every topic repairs around it.
    pub(crate) fn gossip_peer_gone(self: &Arc<Self>, peer: NodeId) {
        let mut fx = Effects::default();
        {
            let mut st = self.lock();
            st.gossip.pending.remove(&peer);
            self.gossip_peer_lost(&mut st, peer, Instant::now(), &mut fx);
        }
        self.finish_gossip(fx);
    }

    fn gossip_peer_lost(&self, st: &mut State, peer: NodeId, now: Instant, fx: &mut Effects) {
        let names: Vec<String> = st.gossip.topics.keys().cloned().collect();
        for name in names {
            let mut out = Vec::new();
            if let Some(t) = st.gossip.topics.get_mut(&name) {
                t.handle_connection_failed(peer, now, &mut out);
            }
            self.apply_gossip(st, &name, out, now, fx);
        }
    }

    /// A connection to `peer` became ready: it becomes a candidate neighbour in every topic and
    /// receives what was queued for it. Called with the state locked.
    pub(crate) fn gossip_peer_ready(&self, st: &mut State, peer: NodeId, now: Instant) {
        for t in st.gossip.topics.values_mut() {
            if !t.active().contains(&peer) {
                t.learn([peer], now);
            }
        }
        let names: Vec<String> = st.gossip.topics.keys().cloned().collect();
        for name in names {
            self.announce_topic(st, &name, peer);
        }
        if let Some((_, queue)) = st.gossip.pending.remove(&peer) {
            for (topic, message) in queue {
                self.send_gossip_now(st, &topic, peer, message);
            }
        }
    }

    /// Carries out a topic's outputs. Called with the state locked.
    fn apply_gossip(
        &self,
        st: &mut State,
        topic: &str,
        out: Vec<Output<NodeId>>,
        now: Instant,
        fx: &mut Effects,
    ) {
        for o in out {
            match o {
                Output::Send { to, message } => {
                    if st.ready_writer(&to).is_some() {
                        self.send_gossip_now(st, topic, to, message);
                    } else {
                        let deadline = now + self.config.timeouts.connect * 2;
                        let room = st.gossip.pending.len() < PENDING_PEERS;
                        match st.gossip.pending.get_mut(&to) {
                            Some((_, queue)) if queue.len() < PENDING_PER_PEER => {
                                queue.push((topic.to_owned(), message));
                            }
                            Some(_) => self.count_drop(DropReason::QueueFull, Some(&to), "gossip"),
                            None if room => {
                                st.gossip
                                    .pending
                                    .insert(to, (deadline, vec![(topic.to_owned(), message)]));
                                fx.dial.push(to);
                            }
                            None => self.count_drop(DropReason::QueueFull, Some(&to), "gossip"),
                        }
                    }
                }
                Output::Deliver { .. } => {}
                Output::NeighborUp(peer) => tracing::debug!(topic, %peer, "gossip neighbour up"),
                Output::NeighborDown(peer) => {
                    tracing::debug!(topic, %peer, "gossip neighbour down");
                }
                Output::Isolated => {
                    if let Some(contact) = random_ready_peer(st) {
                        let mut more = Vec::new();
                        if let Some(t) = st.gossip.topics.get_mut(topic) {
                            t.join(contact, now, &mut more);
                        }
                        // Join emits only Send/NeighborUp/NeighborDown, never Isolated again.
                        self.apply_gossip(st, topic, more, now, fx);
                    }
                }
                Output::Banned { peer, .. } => {
                    tracing::warn!(topic, %peer, "peer banned from topic for bad traffic");
                    self.count_drop(DropReason::Banned, Some(&peer), "gossip score");
                }
            }
        }
    }

    /// Encodes and queues one gossip message on `to`'s ready connection.
    fn send_gossip_now(&self, st: &State, topic: &str, to: NodeId, message: Message<NodeId>) {
        if let Some(body) = self.encode_gossip(st, message) {
            self.send_gossip_body(st, topic, to, body);
        }
    }

    fn send_gossip_body(
        &self,
        st: &State,
        topic: &str,
        to: NodeId,
        body: proto::gossip_message::Body,
    ) {
        let env = proto::Envelope {
            version: crate::wire::PROTOCOL_VERSION,
            body: Some(proto::envelope::Body::Gossip(proto::GossipMessage {
                topic: topic.to_owned(),
                body: Some(body),
            })),
        };
        let Some(frame) = self.frame(&env) else {
            return;
        };
        if let Some(w) = st.ready_writer(&to) {
            if let Err(reason) = w.try_send(frame) {
                self.count_drop(reason, Some(&to), "gossip");
            }
        }
    }

    fn finish_gossip(self: &Arc<Self>, fx: Effects) {
        for peer in fx.dial {
            self.ensure_connected(peer);
        }
        for (broadcast, via) in fx.delivered {
            self.emit(Event::Broadcast(ReceivedBroadcast { broadcast, via }));
        }
    }

    /// The signed record of `peer` (our own for this node), if known.
    fn record_for(&self, st: &State, peer: &NodeId) -> Option<proto::SignedNodeRecord> {
        if *peer == self.identity.node_id() {
            return Some(self.own_record().signed().clone());
        }
        st.peer_record(peer).map(|r| r.signed().clone())
    }

    fn encode_gossip(
        &self,
        st: &State,
        message: Message<NodeId>,
    ) -> Option<proto::gossip_message::Body> {
        use proto::gossip_message::Body as G;
        let records = |peers: &[NodeId]| -> Vec<proto::SignedNodeRecord> {
            peers
                .iter()
                .filter_map(|p| self.record_for(st, p))
                .take(crate::wire::MAX_SHUFFLE_RECORDS)
                .collect()
        };
        Some(match message {
            Message::Join => G::Join(proto::Join {
                record: Some(self.own_record().signed().clone()),
            }),
            Message::ForwardJoin { peer, ttl } => G::ForwardJoin(proto::ForwardJoin {
                // Without the joiner's record the walk's end could not dial it.
                record: Some(self.record_for(st, &peer)?),
                ttl,
            }),
            Message::Neighbor { high_priority } => G::Neighbor(proto::Neighbor { high_priority }),
            Message::Disconnect { alive } => G::Disconnect(proto::Disconnect { alive }),
            Message::Shuffle { origin, ttl, peers } => G::Shuffle(proto::Shuffle {
                origin: Bytes::copy_from_slice(origin.as_bytes()),
                ttl,
                records: records(&peers),
            }),
            Message::ShuffleReply { peers } => G::ShuffleReply(proto::ShuffleReply {
                records: records(&peers),
            }),
            Message::Gossip { payload, round, .. } => G::Data(proto::GossipData {
                broadcast: payload,
                round,
            }),
            Message::IHave { ids } => G::Ihave(proto::IHave {
                message_ids: ids
                    .iter()
                    .map(|(id, _)| Bytes::copy_from_slice(id))
                    .collect(),
                rounds: ids.iter().map(|(_, r)| *r).collect(),
            }),
            Message::Graft { id, round } => G::Graft(proto::Graft {
                message_id: id.map_or_else(Bytes::new, |id| Bytes::copy_from_slice(&id)),
                round,
            }),
            Message::Prune => G::Prune(proto::Prune {}),
        })
    }

    /// Verifies records carried by a membership message and remembers them; returns their ids.
    fn accept_records(&self, from: &NodeId, list: &[proto::SignedNodeRecord]) -> Vec<NodeId> {
        let now = unix_secs();
        let me = self.identity.node_id();
        let mut verified: Vec<NodeRecord> = Vec::new();
        for signed in list {
            match NodeRecord::verify(signed, now) {
                Ok(record) if record.node_id() != me => verified.push(record),
                Ok(_) => {}
                Err(e) => self.count_drop(DropReason::Crypto, Some(from), &e.to_string()),
            }
        }
        let mut st = self.lock();
        let t = Instant::now();
        let mut ids = Vec::new();
        for record in verified {
            let id = record.node_id();
            if st.banned.contains(&id) {
                continue;
            }
            st.kad.insert(*id.as_bytes(), id, record_group(&record), t);
            let _ = st.records.insert(record);
            ids.push(id);
        }
        ids
    }

    fn decode_gossip(
        &self,
        from: &NodeId,
        body: proto::gossip_message::Body,
    ) -> Result<Incoming, &'static str> {
        use proto::gossip_message::Body as G;
        let message = match body {
            G::Join(j) => {
                let record = j.record.ok_or("join without a record")?;
                let ids = self.accept_records(from, std::slice::from_ref(&record));
                if ids.first() != Some(from) {
                    return Err("join carrying another node's record");
                }
                Message::Join
            }
            G::ForwardJoin(j) => {
                let record = j.record.ok_or("forward join without a record")?;
                let peer = *self
                    .accept_records(from, std::slice::from_ref(&record))
                    .first()
                    .ok_or("forward join with an invalid record")?;
                Message::ForwardJoin {
                    peer,
                    ttl: j.ttl.min(MAX_WALK),
                }
            }
            G::Neighbor(n) => Message::Neighbor {
                high_priority: n.high_priority,
            },
            G::Disconnect(d) => Message::Disconnect { alive: d.alive },
            G::Shuffle(s) => {
                let origin = NodeId::from_slice(&s.origin).map_err(|_| "shuffle origin")?;
                let mut peers = self.accept_records(from, &s.records);
                if !peers.contains(&origin) {
                    // The reply goes to the origin, which we must be able to dial.
                    let known = self.lock().peer_record(&origin).is_some();
                    if !known && origin != *from {
                        return Err("shuffle from an origin without a record");
                    }
                }
                peers.retain(|p| *p != origin);
                peers.insert(0, origin);
                Message::Shuffle {
                    origin,
                    ttl: s.ttl.min(MAX_WALK),
                    peers,
                }
            }
            G::ShuffleReply(s) => Message::ShuffleReply {
                peers: self.accept_records(from, &s.records),
            },
            G::Ihave(i) => Message::IHave {
                ids: i
                    .message_ids
                    .iter()
                    .zip(i.rounds.iter())
                    .filter_map(|(id, round)| Some((msg_id(id)?, *round)))
                    .collect(),
            },
            G::Graft(g) => Message::Graft {
                id: if g.message_id.is_empty() {
                    None
                } else {
                    Some(msg_id(&g.message_id).ok_or("graft id")?)
                },
                round: g.round,
            },
            G::Prune(_) => Message::Prune,
            // Handled by the driver before decoding.
            G::Announce(_) => return Err("unexpected announce"),
            G::Data(d) => {
                let signed = proto::SignedBroadcast::decode(d.broadcast.clone())
                    .map_err(|_| "gossip data is not a signed broadcast")?;
                let id = message::broadcast_id(&signed.body).0;
                return Ok(Incoming::Data {
                    id,
                    payload: d.broadcast,
                    round: d.round,
                });
            }
        };
        Ok(Incoming::Control(message))
    }
}

fn msg_id(bytes: &[u8]) -> Option<MsgId> {
    bytes.try_into().ok()
}

/// Peers with a ready connection.
fn ready_peers(st: &State) -> Vec<NodeId> {
    st.peers
        .iter()
        .filter(|(_, p)| p.conns.iter().any(|c| c.ready))
        .map(|(id, _)| *id)
        .collect()
}

/// A uniformly chosen peer with a ready connection.
fn random_ready_peer(st: &State) -> Option<NodeId> {
    let ready = ready_peers(st);
    if ready.is_empty() {
        return None;
    }
    let i = (rand_core::OsRng.next_u64() % ready.len() as u64) as usize;
    ready.get(i).copied()
}
