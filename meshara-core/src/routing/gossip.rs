//! Epidemic broadcast for one topic, sans-IO: HyParView membership and Plumtree dissemination,
//! with peer scoring.
//!
//! * **HyParView** keeps a small *active view* (the peers we exchange broadcasts with, default
//!   5) and a larger *passive view* (30) of known-alive peers to repair it from. Joins travel as
//!   random walks (`ForwardJoin`), and periodic `Shuffle` walks refresh the passive views, so
//!   the overlay stays connected when a large fraction of nodes fail at once.
//! * **Plumtree** sends each broadcast in full only along a spanning tree (the *eager* peers)
//!   and announces it to the others with batched `IHave`s. The first copy of a message makes
//!   its sender an eager peer; a duplicate demotes its sender with a `Prune`. A message that is
//!   announced but does not arrive in time is pulled with a `Graft`, which also repairs the tree.
//!   In steady state each node receives each message about once: relative message redundancy
//!   near 0, where flooding over 5 neighbours costs 4.
//! * **Scoring**: a peer loses points for invalid messages (reported by the driver, which
//!   verifies signatures), for grafts of messages that never existed, and for traffic beyond its
//!   rate budget; points decay back over time. Below the threshold the peer is dropped from both
//!   views and ignored until its ban ends.
//!
//! The driver verifies each *new* broadcast before handing it in: it asks
//! [`Topic::has_seen`] first (duplicates are never verified again), then either calls
//! [`Topic::handle_message`] with the valid message or [`Topic::penalize`] with
//! [`Penalty::Invalid`].

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};
use std::fmt::Debug;
use std::hash::Hash;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::rate::TokenBucket;

/// A broadcast's id (BLAKE3 of its signed body).
pub type MsgId = [u8; 32];

/// Gossip parameters.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GossipConfig {
    /// Active view size (5).
    pub active_view: usize,
    /// Passive view size (30).
    pub passive_view: usize,
    /// Length of a join's random walk (6).
    pub active_walk: u32,
    /// Remaining walk length at which a joining peer is put in the passive view (3).
    pub passive_walk: u32,
    /// Period of the passive-view shuffle (30 s).
    pub shuffle_interval: Duration,
    /// Length of a shuffle's random walk (3).
    pub shuffle_walk: u32,
    /// Active peers sampled into a shuffle (3).
    pub shuffle_active: usize,
    /// Passive peers sampled into a shuffle (4).
    pub shuffle_passive: usize,
    /// How often an incomplete active view tries one passive peer (500 ms).
    pub repair_interval: Duration,
    /// How long announced ids are collected before an `IHave` is sent (50 ms).
    pub ihave_interval: Duration,
    /// How long to wait for an announced message before grafting (400 ms).
    pub graft_timeout: Duration,
    /// How long to wait after a graft before grafting the next announcer (300 ms).
    pub graft_retry: Duration,
    /// Ids per `IHave` (256).
    pub max_ihave_ids: usize,
    /// When a lazy peer announces a message this many rounds earlier than the eager copy came,
    /// the tree is rewired through it (3).
    pub optimize_threshold: u32,
    /// How long messages are kept to answer grafts (60 s).
    pub cache_ttl: Duration,
    /// Messages kept to answer grafts (4096).
    pub cache_capacity: usize,
    /// Remembered message ids, for duplicate suppression (65536).
    pub seen_capacity: usize,
    /// Messages (of any kind) per second a peer may send us before it is penalised (2000).
    pub peer_rate: f64,
    /// Scoring.
    pub score: ScoreConfig,
}

impl Default for GossipConfig {
    fn default() -> Self {
        Self {
            active_view: 5,
            passive_view: 30,
            active_walk: 6,
            passive_walk: 3,
            shuffle_interval: Duration::from_secs(30),
            shuffle_walk: 3,
            shuffle_active: 3,
            shuffle_passive: 4,
            repair_interval: Duration::from_millis(500),
            ihave_interval: Duration::from_millis(50),
            graft_timeout: Duration::from_millis(400),
            graft_retry: Duration::from_millis(300),
            max_ihave_ids: 256,
            optimize_threshold: 3,
            cache_ttl: Duration::from_secs(60),
            cache_capacity: 4096,
            seen_capacity: 65536,
            peer_rate: 2000.0,
            score: ScoreConfig::default(),
        }
    }
}

/// Peer scoring parameters.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ScoreConfig {
    /// Points for a message that failed verification (-20).
    pub invalid: f64,
    /// Points for a graft of an id that was never seen (-2).
    pub unknown_graft: f64,
    /// Points per message beyond the peer's rate budget (-1).
    pub excessive: f64,
    /// Below this the peer is banned (-100).
    pub ban_below: f64,
    /// Points recovered per second (1).
    pub decay_per_sec: f64,
    /// Ban length (10 min).
    pub ban_for: Duration,
}

impl Default for ScoreConfig {
    fn default() -> Self {
        Self {
            invalid: -20.0,
            unknown_graft: -2.0,
            excessive: -1.0,
            ban_below: -100.0,
            decay_per_sec: 1.0,
            ban_for: Duration::from_secs(600),
        }
    }
}

/// Why a peer is penalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Penalty {
    /// It sent a message that failed verification.
    Invalid,
    /// It grafted an id nobody ever broadcast.
    UnknownGraft,
    /// It exceeded its rate budget.
    Excessive,
}

/// A gossip control or data message for one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Message<P> {
    /// "Add me to your active view" (to the contact node).
    Join,
    /// A join's random walk.
    ForwardJoin {
        /// The joining peer.
        peer: P,
        /// Remaining walk length.
        ttl: u32,
    },
    /// "Take me into your active view"; a high-priority request cannot be refused.
    Neighbor {
        /// Set when the sender's active view is empty.
        high_priority: bool,
    },
    /// "I removed you from my active view."
    Disconnect {
        /// Whether the sender stays up (then it may go to the passive view).
        alive: bool,
    },
    /// A shuffle's random walk.
    Shuffle {
        /// The node that started it, which receives the reply.
        origin: P,
        /// Remaining walk length.
        ttl: u32,
        /// A sample of the origin's views.
        peers: Vec<P>,
    },
    /// The answer to a shuffle.
    ShuffleReply {
        /// A sample of the answering node's passive view.
        peers: Vec<P>,
    },
    /// A broadcast, in full.
    Gossip {
        /// Its id.
        id: MsgId,
        /// The signed broadcast.
        payload: Bytes,
        /// Hops from its author.
        round: u32,
    },
    /// Announcements of broadcasts, with the round at which each would arrive.
    IHave {
        /// `(id, round)` pairs.
        ids: Vec<(MsgId, u32)>,
    },
    /// "Keep me eager", and send me this broadcast if an id is given.
    Graft {
        /// The wanted id, or none when the graft only rewires the tree.
        id: Option<MsgId>,
        /// The round it was announced with.
        round: u32,
    },
    /// "Keep me lazy."
    Prune,
}

impl<P> Message<P> {
    /// A short name, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Join => "join",
            Message::ForwardJoin { .. } => "forward_join",
            Message::Neighbor { .. } => "neighbor",
            Message::Disconnect { .. } => "disconnect",
            Message::Shuffle { .. } => "shuffle",
            Message::ShuffleReply { .. } => "shuffle_reply",
            Message::Gossip { .. } => "gossip",
            Message::IHave { .. } => "ihave",
            Message::Graft { .. } => "graft",
            Message::Prune => "prune",
        }
    }
}

/// What the state machine asks the driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Output<P> {
    /// Send `message` to `to` (dialling it if needed; report a failure with
    /// [`Topic::handle_connection_failed`]).
    Send {
        /// Recipient.
        to: P,
        /// Message.
        message: Message<P>,
    },
    /// A broadcast arrived for the first time: hand it to the application.
    Deliver {
        /// Its id.
        id: MsgId,
        /// The signed broadcast.
        payload: Bytes,
        /// The neighbour it came from.
        from: P,
        /// Hops from its author.
        round: u32,
    },
    /// `peer` joined the active view (keep a connection to it).
    NeighborUp(P),
    /// `peer` left the active view.
    NeighborDown(P),
    /// Both views are empty: the driver should [`join`](Topic::join) again through another
    /// contact (a DHT entry or a bootstrap node). Repeated every repair interval until it does.
    Isolated,
    /// `peer` scored below the threshold and is ignored until `until`.
    Banned {
        /// The peer.
        peer: P,
        /// End of the ban.
        until: Instant,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Shuffle,
    Repair,
    IHaveFlush,
    Missing(MsgId),
}

#[derive(Debug, Clone)]
struct PeerScore {
    value: f64,
    updated: Instant,
    rate: TokenBucket,
}

/// Counters for one topic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TopicStats {
    /// Broadcasts delivered for the first time.
    pub delivered: u64,
    /// Full copies received again.
    pub duplicates: u64,
    /// Grafts sent.
    pub grafts: u64,
    /// Prunes sent.
    pub prunes: u64,
    /// Penalties applied.
    pub penalties: u64,
}

/// HyParView + Plumtree state for one topic, for the node `me`.
#[derive(Debug)]
pub struct Topic<P> {
    me: P,
    config: GossipConfig,
    rng: ChaCha8Rng,
    active: Vec<P>,
    passive: Vec<P>,
    eager: BTreeSet<P>,
    lazy: BTreeSet<P>,
    seen: HashSet<MsgId>,
    seen_order: VecDeque<MsgId>,
    /// Payload, round and the peer it came from (none for our own).
    cache: HashMap<MsgId, (Bytes, u32, Option<P>)>,
    cache_order: VecDeque<(Instant, MsgId)>,
    missing: HashMap<MsgId, VecDeque<(P, u32)>>,
    pending_ihave: BTreeMap<P, Vec<(MsgId, u32)>>,
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    repair_armed: bool,
    flush_armed: bool,
    scores: HashMap<P, PeerScore>,
    banned: HashMap<P, Instant>,
    stats: TopicStats,
}

impl<P: Copy + Eq + Hash + Ord + Debug> Topic<P> {
    /// A topic state for the node `me`; `seed` drives its random choices.
    pub fn new(me: P, config: GossipConfig, seed: u64, now: Instant) -> Self {
        let mut t = Self {
            me,
            config,
            rng: ChaCha8Rng::seed_from_u64(seed),
            active: Vec::new(),
            passive: Vec::new(),
            eager: BTreeSet::new(),
            lazy: BTreeSet::new(),
            seen: HashSet::new(),
            seen_order: VecDeque::new(),
            cache: HashMap::new(),
            cache_order: VecDeque::new(),
            missing: HashMap::new(),
            pending_ihave: BTreeMap::new(),
            timers: BinaryHeap::new(),
            repair_armed: false,
            flush_armed: false,
            scores: HashMap::new(),
            banned: HashMap::new(),
            stats: TopicStats::default(),
        };
        // Desynchronise shuffles across nodes.
        let jitter = t.jitter(t.config.shuffle_interval);
        t.timers.push(Reverse((
            now + t.config.shuffle_interval + jitter,
            Timer::Shuffle,
        )));
        t
    }

    /// The active view.
    pub fn active(&self) -> &[P] {
        &self.active
    }

    /// The passive view.
    pub fn passive(&self) -> &[P] {
        &self.passive
    }

    /// Peers receiving broadcasts in full.
    pub fn eager(&self) -> impl Iterator<Item = &P> {
        self.eager.iter()
    }

    /// Peers receiving announcements only.
    pub fn lazy(&self) -> impl Iterator<Item = &P> {
        self.lazy.iter()
    }

    /// Counters.
    pub fn stats(&self) -> TopicStats {
        self.stats
    }

    /// Whether `peer` is banned at `now`.
    pub fn is_banned(&self, peer: &P, now: Instant) -> bool {
        self.banned.get(peer).is_some_and(|until| *until > now)
    }

    /// Whether the broadcast `id` was already received (the driver skips verifying it again).
    pub fn has_seen(&self, id: &MsgId) -> bool {
        self.seen.contains(id)
    }

    /// The score of `peer` (0 for strangers).
    pub fn score(&self, peer: &P) -> f64 {
        self.scores.get(peer).map_or(0.0, |s| s.value)
    }

    fn random(&mut self, n: usize) -> usize {
        (self.rng.next_u64() % n.max(1) as u64) as usize
    }

    fn jitter(&mut self, max: Duration) -> Duration {
        let ms = max.as_millis().max(1) as u64;
        Duration::from_millis(self.rng.next_u64() % ms)
    }

    fn sample(&mut self, from: &[P], n: usize, except: &[P]) -> Vec<P> {
        let mut pool: Vec<P> = from
            .iter()
            .copied()
            .filter(|p| !except.contains(p))
            .collect();
        let mut out = Vec::new();
        while !pool.is_empty() && out.len() < n {
            let i = self.random(pool.len());
            out.push(pool.swap_remove(i));
        }
        out
    }

    /// Joins the overlay through `contact` (a bootstrap node).
    pub fn join(&mut self, contact: P, now: Instant, out: &mut Vec<Output<P>>) {
        if contact == self.me || self.is_banned(&contact, now) {
            return;
        }
        self.add_active(contact, now, out);
        out.push(Output::Send {
            to: contact,
            message: Message::Join,
        });
    }

    /// Offers peers the driver knows to be reachable (for example its open connections) as
    /// passive-view candidates; the repair timer promotes them while the active view has room.
    pub fn learn(&mut self, peers: impl IntoIterator<Item = P>, now: Instant) {
        for peer in peers {
            if !self.is_banned(&peer, now) {
                self.add_passive(peer);
            }
        }
        self.arm_repair(now);
    }

    /// Broadcasts a new message that this node authored (already signed by the driver).
    pub fn broadcast(&mut self, id: MsgId, payload: Bytes, now: Instant, out: &mut Vec<Output<P>>) {
        if !self.mark_seen(id) {
            return;
        }
        self.remember(id, payload.clone(), 0, None, now);
        self.push(id, payload, 0, None, now, out);
    }

    fn mark_seen(&mut self, id: MsgId) -> bool {
        if !self.seen.insert(id) {
            return false;
        }
        self.seen_order.push_back(id);
        while self.seen_order.len() > self.config.seen_capacity {
            if let Some(old) = self.seen_order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }

    fn remember(&mut self, id: MsgId, payload: Bytes, round: u32, from: Option<P>, now: Instant) {
        self.cache.insert(id, (payload, round, from));
        self.cache_order.push_back((now, id));
        while self.cache_order.len() > self.config.cache_capacity {
            if let Some((_, old)) = self.cache_order.pop_front() {
                self.cache.remove(&old);
            }
        }
    }

    fn push(
        &mut self,
        id: MsgId,
        payload: Bytes,
        round: u32,
        from: Option<P>,
        now: Instant,
        out: &mut Vec<Output<P>>,
    ) {
        for &peer in &self.eager {
            if Some(peer) != from {
                out.push(Output::Send {
                    to: peer,
                    message: Message::Gossip {
                        id,
                        payload: payload.clone(),
                        round: round + 1,
                    },
                });
            }
        }
        let lazy: Vec<P> = self
            .lazy
            .iter()
            .copied()
            .filter(|p| Some(*p) != from)
            .collect();
        for peer in lazy {
            self.pending_ihave
                .entry(peer)
                .or_default()
                .push((id, round + 1));
        }
        if !self.pending_ihave.is_empty() && !self.flush_armed {
            self.flush_armed = true;
            self.timers.push(Reverse((
                now + self.config.ihave_interval,
                Timer::IHaveFlush,
            )));
        }
    }

    fn add_active(&mut self, peer: P, now: Instant, out: &mut Vec<Output<P>>) {
        if peer == self.me || self.active.contains(&peer) || self.is_banned(&peer, now) {
            return;
        }
        self.passive.retain(|p| *p != peer);
        if self.active.len() >= self.config.active_view {
            let i = self.random(self.active.len());
            let evicted = self.active.swap_remove(i);
            self.eager.remove(&evicted);
            self.lazy.remove(&evicted);
            out.push(Output::Send {
                to: evicted,
                message: Message::Disconnect { alive: true },
            });
            out.push(Output::NeighborDown(evicted));
            self.add_passive(evicted);
        }
        self.active.push(peer);
        self.eager.insert(peer);
        out.push(Output::NeighborUp(peer));
        // Announce what we still hold, so a neighbour that replaces a failed one can pull
        // what it missed while the overlay was repairing.
        let recent: Vec<(MsgId, u32)> = self
            .cache_order
            .iter()
            .rev()
            .filter_map(|(_, id)| self.cache.get(id).map(|(_, round, _)| (*id, round + 1)))
            .take(self.config.max_ihave_ids)
            .collect();
        if !recent.is_empty() {
            self.pending_ihave.entry(peer).or_default().extend(recent);
            if !self.flush_armed {
                self.flush_armed = true;
                self.timers.push(Reverse((
                    now + self.config.ihave_interval,
                    Timer::IHaveFlush,
                )));
            }
        }
    }

    fn remove_active(&mut self, peer: &P, now: Instant, out: &mut Vec<Output<P>>) -> bool {
        let Some(i) = self.active.iter().position(|p| p == peer) else {
            return false;
        };
        self.active.swap_remove(i);
        self.eager.remove(peer);
        self.lazy.remove(peer);
        self.pending_ihave.remove(peer);
        out.push(Output::NeighborDown(*peer));
        self.arm_repair(now);
        true
    }

    fn add_passive(&mut self, peer: P) {
        if peer == self.me || self.active.contains(&peer) || self.passive.contains(&peer) {
            return;
        }
        if self.banned.contains_key(&peer) {
            return;
        }
        if self.passive.len() >= self.config.passive_view {
            let i = self.random(self.passive.len());
            self.passive.swap_remove(i);
        }
        self.passive.push(peer);
    }

    fn arm_repair(&mut self, now: Instant) {
        if !self.repair_armed && self.active.len() < self.config.active_view {
            self.repair_armed = true;
            let at =
                now + self.config.repair_interval / 2 + self.jitter(self.config.repair_interval);
            self.timers.push(Reverse((at, Timer::Repair)));
        }
    }

    /// The connection to `peer` failed or closed: it leaves both views and the active view is
    /// repaired from the passive one.
    pub fn handle_connection_failed(&mut self, peer: P, now: Instant, out: &mut Vec<Output<P>>) {
        self.remove_active(&peer, now, out);
        self.passive.retain(|p| *p != peer);
        for announcers in self.missing.values_mut() {
            announcers.retain(|(p, _)| *p != peer);
        }
    }

    /// Lowers `peer`'s score; below the threshold it is banned and dropped from both views.
    pub fn penalize(&mut self, peer: P, penalty: Penalty, now: Instant, out: &mut Vec<Output<P>>) {
        let points = match penalty {
            Penalty::Invalid => self.config.score.invalid,
            Penalty::UnknownGraft => self.config.score.unknown_graft,
            Penalty::Excessive => self.config.score.excessive,
        };
        self.stats.penalties += 1;
        let decay = self.config.score.decay_per_sec;
        let rate = self.config.peer_rate;
        let s = self.scores.entry(peer).or_insert_with(|| PeerScore {
            value: 0.0,
            updated: now,
            rate: TokenBucket::new(rate, rate, now),
        });
        let elapsed = now.saturating_duration_since(s.updated).as_secs_f64();
        s.value = (s.value + elapsed * decay).min(0.0) + points;
        s.updated = now;
        if s.value < self.config.score.ban_below && !self.is_banned(&peer, now) {
            let until = now + self.config.score.ban_for;
            self.banned.insert(peer, until);
            self.remove_active(&peer, now, out);
            self.passive.retain(|p| *p != peer);
            out.push(Output::Banned { peer, until });
        }
    }

    /// Charges one message to `peer`'s rate budget; false if it is over budget.
    fn admit(&mut self, peer: P, now: Instant) -> bool {
        let rate = self.config.peer_rate;
        let s = self.scores.entry(peer).or_insert_with(|| PeerScore {
            value: 0.0,
            updated: now,
            rate: TokenBucket::new(rate, rate, now),
        });
        s.rate.try_take(1.0, now)
    }

    /// Handles a message from `from`. A `Gossip` message that this node has not seen must have
    /// been verified by the driver (see the module docs).
    pub fn handle_message(
        &mut self,
        from: P,
        message: Message<P>,
        now: Instant,
        out: &mut Vec<Output<P>>,
    ) {
        if from == self.me || self.is_banned(&from, now) {
            return;
        }
        if !self.admit(from, now) {
            self.penalize(from, Penalty::Excessive, now, out);
            return;
        }
        match message {
            Message::Join => {
                self.add_active(from, now, out);
                let others: Vec<P> = self.active.iter().copied().filter(|p| *p != from).collect();
                for peer in others {
                    out.push(Output::Send {
                        to: peer,
                        message: Message::ForwardJoin {
                            peer: from,
                            ttl: self.config.active_walk,
                        },
                    });
                }
            }
            Message::ForwardJoin { peer, ttl } => {
                if peer == self.me || self.is_banned(&peer, now) {
                    return;
                }
                if ttl == 0 || self.active.len() <= 1 {
                    if !self.active.contains(&peer) {
                        self.add_active(peer, now, out);
                        out.push(Output::Send {
                            to: peer,
                            message: Message::Neighbor {
                                high_priority: true,
                            },
                        });
                    }
                    return;
                }
                if ttl == self.config.passive_walk {
                    self.add_passive(peer);
                }
                let next = self.sample(&self.active.clone(), 1, &[from, peer]);
                match next.first() {
                    Some(&to) => out.push(Output::Send {
                        to,
                        message: Message::ForwardJoin { peer, ttl: ttl - 1 },
                    }),
                    None => {
                        if !self.active.contains(&peer) {
                            self.add_active(peer, now, out);
                            out.push(Output::Send {
                                to: peer,
                                message: Message::Neighbor {
                                    high_priority: true,
                                },
                            });
                        }
                    }
                }
            }
            Message::Neighbor { high_priority } => {
                if self.active.contains(&from) {
                    return;
                }
                if high_priority || self.active.len() < self.config.active_view {
                    self.add_active(from, now, out);
                } else {
                    out.push(Output::Send {
                        to: from,
                        message: Message::Disconnect { alive: true },
                    });
                }
            }
            Message::Disconnect { alive } => {
                self.remove_active(&from, now, out);
                if alive {
                    self.add_passive(from);
                } else {
                    self.passive.retain(|p| *p != from);
                }
            }
            Message::Shuffle { origin, ttl, peers } => {
                if origin == self.me {
                    return;
                }
                let peers: Vec<P> = peers
                    .into_iter()
                    .take(self.config.shuffle_active + self.config.shuffle_passive + 1)
                    .collect();
                if ttl > 0 && self.active.len() > 1 {
                    let next = self.sample(&self.active.clone(), 1, &[from, origin]);
                    if let Some(&to) = next.first() {
                        out.push(Output::Send {
                            to,
                            message: Message::Shuffle {
                                origin,
                                ttl: ttl - 1,
                                peers,
                            },
                        });
                        return;
                    }
                }
                let reply = self.sample(&self.passive.clone(), peers.len(), &[origin]);
                out.push(Output::Send {
                    to: origin,
                    message: Message::ShuffleReply { peers: reply },
                });
                for p in peers {
                    self.add_passive(p);
                }
            }
            Message::ShuffleReply { peers } => {
                for p in peers
                    .into_iter()
                    .take(self.config.shuffle_active + self.config.shuffle_passive + 1)
                {
                    self.add_passive(p);
                }
            }
            Message::Gossip { id, payload, round } => {
                if !self.mark_seen(id) {
                    self.stats.duplicates += 1;
                    if self.eager.remove(&from) {
                        self.lazy.insert(from);
                        self.stats.prunes += 1;
                        out.push(Output::Send {
                            to: from,
                            message: Message::Prune,
                        });
                    }
                    return;
                }
                self.stats.delivered += 1;
                self.missing.remove(&id);
                if self.active.contains(&from) && self.lazy.remove(&from) {
                    self.eager.insert(from);
                }
                self.remember(id, payload.clone(), round, Some(from), now);
                out.push(Output::Deliver {
                    id,
                    payload: payload.clone(),
                    from,
                    round,
                });
                self.push(id, payload, round, Some(from), now, out);
            }
            Message::IHave { ids } => {
                if ids.len() > self.config.max_ihave_ids {
                    self.penalize(from, Penalty::Excessive, now, out);
                }
                for (id, round) in ids.into_iter().take(self.config.max_ihave_ids) {
                    self.optimize(from, &id, round, out);
                    // Already have it, or the table of missing ids is full (bounded like
                    // the seen set).
                    if self.seen.contains(&id)
                        || (self.missing.len() >= self.config.seen_capacity
                            && !self.missing.contains_key(&id))
                    {
                        continue;
                    }
                    let announcers = self.missing.entry(id).or_default();
                    let first = announcers.is_empty();
                    if announcers.len() < self.config.active_view * 2
                        && !announcers.iter().any(|(p, _)| *p == from)
                    {
                        announcers.push_back((from, round));
                    }
                    if first {
                        self.timers.push(Reverse((
                            now + self.config.graft_timeout,
                            Timer::Missing(id),
                        )));
                    }
                }
            }
            Message::Graft { id, round: _ } => {
                if self.active.contains(&from) {
                    self.lazy.remove(&from);
                    self.eager.insert(from);
                }
                let Some(id) = id else { return };
                match self.cache.get(&id) {
                    Some((payload, round, _)) => out.push(Output::Send {
                        to: from,
                        message: Message::Gossip {
                            id,
                            payload: payload.clone(),
                            round: round + 1,
                        },
                    }),
                    None if !self.seen.contains(&id) => {
                        self.penalize(from, Penalty::UnknownGraft, now, out)
                    }
                    None => {}
                }
            }
            Message::Prune => {
                if self.eager.remove(&from) {
                    self.lazy.insert(from);
                }
            }
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) next wants to run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    /// Runs the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Vec<Output<P>>) {
        while let Some(Reverse((at, timer))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            match timer {
                Timer::Shuffle => {
                    self.shuffle(out);
                    let next = now + self.config.shuffle_interval;
                    self.timers.push(Reverse((next, Timer::Shuffle)));
                    self.expire(now);
                }
                Timer::Repair => {
                    self.repair_armed = false;
                    if self.active.len() < self.config.active_view && !self.passive.is_empty() {
                        let i = self.random(self.passive.len());
                        let peer = self.passive.swap_remove(i);
                        let high_priority = self.active.is_empty();
                        self.add_active(peer, now, out);
                        out.push(Output::Send {
                            to: peer,
                            message: Message::Neighbor { high_priority },
                        });
                    } else if self.active.is_empty() {
                        out.push(Output::Isolated);
                    }
                    self.arm_repair(now);
                }
                Timer::IHaveFlush => {
                    self.flush_armed = false;
                    let max = self.config.max_ihave_ids;
                    for (to, ids) in std::mem::take(&mut self.pending_ihave) {
                        for chunk in ids.chunks(max) {
                            out.push(Output::Send {
                                to,
                                message: Message::IHave {
                                    ids: chunk.to_vec(),
                                },
                            });
                        }
                    }
                }
                Timer::Missing(id) => {
                    if self.seen.contains(&id) {
                        self.missing.remove(&id);
                        continue;
                    }
                    let Some(announcers) = self.missing.get_mut(&id) else {
                        continue;
                    };
                    let Some((peer, round)) = announcers.pop_front() else {
                        self.missing.remove(&id);
                        continue;
                    };
                    if announcers.is_empty() {
                        self.missing.remove(&id);
                    }
                    // Keep waiting for the remaining announcers (or a late copy).
                    self.timers
                        .push(Reverse((now + self.config.graft_retry, Timer::Missing(id))));
                    if self.active.contains(&peer) {
                        self.lazy.remove(&peer);
                        self.eager.insert(peer);
                    }
                    self.stats.grafts += 1;
                    out.push(Output::Send {
                        to: peer,
                        message: Message::Graft {
                            id: Some(id),
                            round,
                        },
                    });
                }
            }
        }
    }

    /// Plumtree's tree optimisation: the lazy peer `from` announces `id` at `round`; if the
    /// eager copy took at least `optimize_threshold` more hops, take `from` as the eager link and
    /// prune the slow one.
    fn optimize(&mut self, from: P, id: &MsgId, round: u32, out: &mut Vec<Output<P>>) {
        let Some((_, received_round, Some(via))) = self.cache.get(id).cloned() else {
            return;
        };
        if via == from
            || round + self.config.optimize_threshold > received_round
            || !self.active.contains(&from)
            || !self.lazy.contains(&from)
        {
            return;
        }
        if let Some(entry) = self.cache.get_mut(id) {
            entry.1 = round;
            entry.2 = Some(from);
        }
        self.lazy.remove(&from);
        self.eager.insert(from);
        out.push(Output::Send {
            to: from,
            message: Message::Graft { id: None, round },
        });
        if self.eager.remove(&via) {
            self.lazy.insert(via);
            self.stats.prunes += 1;
            out.push(Output::Send {
                to: via,
                message: Message::Prune,
            });
        }
    }

    fn shuffle(&mut self, out: &mut Vec<Output<P>>) {
        if self.active.is_empty() {
            return;
        }
        let active = self.active.clone();
        let passive = self.passive.clone();
        let to = active[self.random(active.len())];
        let mut peers = vec![self.me];
        peers.extend(self.sample(&active, self.config.shuffle_active, &[to]));
        peers.extend(self.sample(&passive, self.config.shuffle_passive, &[to]));
        out.push(Output::Send {
            to,
            message: Message::Shuffle {
                origin: self.me,
                ttl: self.config.shuffle_walk,
                peers,
            },
        });
    }

    fn expire(&mut self, now: Instant) {
        while let Some((at, id)) = self.cache_order.front().copied() {
            if now.saturating_duration_since(at) < self.config.cache_ttl {
                break;
            }
            self.cache_order.pop_front();
            self.cache.remove(&id);
        }
        self.banned.retain(|_, until| *until > now);
        let decay = self.config.score.decay_per_sec;
        self.scores.retain(|_, s| {
            let recovered =
                s.value + now.saturating_duration_since(s.updated).as_secs_f64() * decay;
            recovered < 0.0 || now.saturating_duration_since(s.updated) < Duration::from_secs(60)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a small network synchronously (zero latency, FIFO) until quiet.
    struct Net {
        nodes: Vec<Topic<u32>>,
        now: Instant,
        delivered: Vec<Vec<MsgId>>,
        gossip_received: u64,
    }

    impl Net {
        fn new(n: u32) -> Self {
            let now = Instant::now();
            Self {
                nodes: (0..n)
                    .map(|i| Topic::new(i, GossipConfig::default(), u64::from(i), now))
                    .collect(),
                now,
                delivered: vec![Vec::new(); n as usize],
                gossip_received: 0,
            }
        }

        fn run(&mut self, from: u32, out: Vec<Output<u32>>) {
            let mut queue: VecDeque<(u32, Output<u32>)> =
                out.into_iter().map(|o| (from, o)).collect();
            while let Some((at, o)) = queue.pop_front() {
                match o {
                    Output::Send { to, message } => {
                        if matches!(message, Message::Gossip { .. }) {
                            self.gossip_received += 1;
                        }
                        let mut next = Vec::new();
                        self.nodes[to as usize].handle_message(at, message, self.now, &mut next);
                        queue.extend(next.into_iter().map(|o| (to, o)));
                    }
                    Output::Deliver { id, .. } => self.delivered[at as usize].push(id),
                    _ => {}
                }
            }
        }

        fn advance(&mut self, by: Duration) {
            let end = self.now + by;
            let step = Duration::from_millis(10);
            while self.now < end {
                self.now += step;
                for i in 0..self.nodes.len() {
                    let mut out = Vec::new();
                    self.nodes[i].handle_timeout(self.now, &mut out);
                    self.run(i as u32, out);
                }
            }
        }
    }

    fn id(i: u8) -> MsgId {
        [i; 32]
    }

    #[test]
    fn broadcast_reaches_everyone_and_the_tree_stops_duplicates() {
        let n = 60;
        let mut net = Net::new(n);
        for i in 1..n {
            let mut out = Vec::new();
            net.nodes[i as usize].join(0, net.now, &mut out);
            net.run(i, out);
            net.advance(Duration::from_millis(20));
        }
        net.advance(Duration::from_secs(2));
        for i in 0..n as usize {
            assert!(!net.nodes[i].active().is_empty(), "node {i} isolated");
            assert!(net.nodes[i].active().len() <= 5);
        }
        // First broadcast builds the tree (duplicates are pruned).
        let mut out = Vec::new();
        net.nodes[3].broadcast(id(1), Bytes::from_static(b"one"), net.now, &mut out);
        net.run(3, out);
        net.advance(Duration::from_secs(2));
        let reached = net.delivered.iter().filter(|d| d.contains(&id(1))).count();
        assert_eq!(reached, n as usize - 1);
        // Each duplicate prunes one link; after a few broadcasts from the same author the
        // messages go down the tree alone: RMR 0.
        let mut received = Vec::new();
        for m in 2..7u8 {
            net.gossip_received = 0;
            let mut out = Vec::new();
            net.nodes[3].broadcast(id(m), Bytes::from_static(b"more"), net.now, &mut out);
            net.run(3, out);
            net.advance(Duration::from_secs(2));
            let reached = net.delivered.iter().filter(|d| d.contains(&id(m))).count();
            assert_eq!(reached, n as usize - 1);
            received.push(net.gossip_received);
        }
        assert!(received.windows(2).all(|w| w[1] <= w[0]), "{received:?}");
        assert_eq!(received.last(), Some(&(u64::from(n) - 1)), "{received:?}");
    }

    #[test]
    fn a_lost_eager_copy_is_grafted_from_an_announcer() {
        let now = Instant::now();
        let mut a = Topic::new(1u32, GossipConfig::default(), 1, now);
        let mut out = Vec::new();
        a.handle_message(
            2,
            Message::Neighbor {
                high_priority: true,
            },
            now,
            &mut out,
        );
        a.handle_message(
            3,
            Message::Neighbor {
                high_priority: true,
            },
            now,
            &mut out,
        );
        out.clear();
        a.handle_message(
            2,
            Message::IHave {
                ids: vec![(id(9), 2)],
            },
            now,
            &mut out,
        );
        assert!(out.is_empty());
        a.handle_timeout(now + Duration::from_millis(399), &mut out);
        assert!(out.is_empty());
        a.handle_timeout(now + Duration::from_millis(400), &mut out);
        assert_eq!(
            out,
            vec![Output::Send {
                to: 2,
                message: Message::Graft {
                    id: Some(id(9)),
                    round: 2
                }
            }]
        );
        // The graft is answered with the message, delivered once.
        out.clear();
        let msg = Message::Gossip {
            id: id(9),
            payload: Bytes::from_static(b"x"),
            round: 3,
        };
        a.handle_message(2, msg.clone(), now, &mut out);
        assert!(out.iter().any(|o| matches!(o, Output::Deliver { .. })));
        out.clear();
        a.handle_message(3, msg, now, &mut out);
        assert!(!out.iter().any(|o| matches!(o, Output::Deliver { .. })));
        assert!(out.contains(&Output::Send {
            to: 3,
            message: Message::Prune
        }));
    }

    #[test]
    fn invalid_traffic_gets_a_peer_banned_and_ignored() {
        let now = Instant::now();
        let mut a = Topic::new(1u32, GossipConfig::default(), 1, now);
        let mut out = Vec::new();
        a.handle_message(
            6,
            Message::Neighbor {
                high_priority: true,
            },
            now,
            &mut out,
        );
        assert_eq!(a.active(), &[6]);
        for _ in 0..5 {
            a.penalize(6, Penalty::Invalid, now, &mut out);
        }
        assert!(!a.is_banned(&6, now));
        a.penalize(6, Penalty::Invalid, now, &mut out);
        assert!(a.is_banned(&6, now));
        assert!(a.active().is_empty());
        assert!(
            out.iter()
                .any(|o| matches!(o, Output::Banned { peer: 6, .. }))
        );
        out.clear();
        a.handle_message(
            6,
            Message::Neighbor {
                high_priority: true,
            },
            now,
            &mut out,
        );
        assert!(out.is_empty());
        // Grafting ids nobody sent costs points too.
        let mut b = Topic::new(1u32, GossipConfig::default(), 1, now);
        for i in 0..60u8 {
            b.handle_message(
                7,
                Message::Graft {
                    id: Some(id(i)),
                    round: 0,
                },
                now,
                &mut out,
            );
        }
        assert!(b.is_banned(&7, now));
    }

    #[test]
    fn a_flooding_peer_is_rate_limited_and_banned() {
        let now = Instant::now();
        let mut a = Topic::new(1u32, GossipConfig::default(), 1, now);
        let mut out = Vec::new();
        for _ in 0..2200 {
            a.handle_message(8, Message::Prune, now, &mut out);
        }
        assert!(a.is_banned(&8, now));
    }

    #[test]
    fn a_full_active_view_refuses_low_priority_neighbors() {
        let now = Instant::now();
        let mut a = Topic::new(0u32, GossipConfig::default(), 1, now);
        let mut out = Vec::new();
        for p in 1..=5 {
            a.handle_message(
                p,
                Message::Neighbor {
                    high_priority: false,
                },
                now,
                &mut out,
            );
        }
        out.clear();
        a.handle_message(
            9,
            Message::Neighbor {
                high_priority: false,
            },
            now,
            &mut out,
        );
        assert_eq!(
            out,
            vec![Output::Send {
                to: 9,
                message: Message::Disconnect { alive: true }
            }]
        );
        // A failure is repaired from the passive view.
        a.handle_message(
            10,
            Message::ShuffleReply {
                peers: vec![11, 12],
            },
            now,
            &mut out,
        );
        out.clear();
        a.handle_connection_failed(1, now, &mut out);
        assert_eq!(a.active().len(), 4);
        a.handle_timeout(now + Duration::from_secs(1), &mut out);
        assert_eq!(a.active().len(), 5);
        assert!(out.iter().any(|o| matches!(
            o,
            Output::Send {
                message: Message::Neighbor {
                    high_priority: false
                },
                ..
            }
        )));
    }
}
