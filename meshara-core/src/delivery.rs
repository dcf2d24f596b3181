//! Reliable delivery of private messages, as a sans-IO state machine.
//!
//! The [`Outbox`] remembers every private message until the recipient's end-to-end
//! acknowledgement arrives. It never touches a socket or a clock: the node feeds it the time and
//! asks it what to (re)send and what to give up on. The same machine will run unchanged in the
//! routing simulator.
//!
//! Policy: a message is first sent as soon as the recipient is reachable; it is resent after
//! `ack_timeout`, doubling each time; after `max_attempts` sends, or `deadline` after it was
//! queued (whichever comes first), it is reported as failed. Receivers deduplicate by message
//! id and acknowledge duplicates again, so resending is always safe.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::identity::NodeId;
use crate::message::MessageId;

/// Resend policy of an [`Outbox`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Wait this long for an acknowledgement before the first resend; doubles after each send.
    pub ack_timeout: Duration,
    /// Sends before giving up.
    pub max_attempts: u32,
    /// Give up this long after the message was queued.
    pub deadline: Duration,
}

/// How a private message travels to its recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Privacy {
    /// Over a direct, end-to-end encrypted session with the recipient (through the nodes
    /// closest to it when it cannot be reached). Fastest; the network sees who talks to whom.
    #[default]
    Direct,
    /// Sealed to the recipient and onion-routed through at least three relays in fixed-size
    /// packets, so that no relay learns both the sender and the recipient (docs/protocol.md
    /// §15.14). Never sent directly or deposited with mailbox holders, and limited to what
    /// fits in one packet.
    Onion,
    /// Only over Tor: a connection to the recipient's onion service, to its TCP address through
    /// a Tor exit, or a bridge circuit whose first leg is a Tor connection. Neither the
    /// recipient, the bridge nor the local network learns this node's IP address from it. Never
    /// sent over a clearnet connection, forwarded by other nodes or deposited with mailbox
    /// holders: with no Tor route the message waits for one and fails at its deadline. Needs a
    /// Tor dialer on the node (`NodeBuilder::dialer`).
    Tor,
    /// Only over I2P: a connection to the recipient's I2P destination, or a bridge circuit whose
    /// first leg is an I2P connection. Otherwise as [`Privacy::Tor`]; needs an I2P dialer.
    I2p,
}

impl Privacy {
    /// The transport every byte of such a message leaves this node on, for the routes that
    /// name one ([`Privacy::Tor`], [`Privacy::I2p`]).
    pub fn transport(self) -> Option<crate::record::Transport> {
        match self {
            Privacy::Tor => Some(crate::record::Transport::Tor),
            Privacy::I2p => Some(crate::record::Transport::I2p),
            Privacy::Direct | Privacy::Onion => None,
        }
    }

    /// Lowercase name, as the HTTP API and the CLI spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Privacy::Direct => "direct",
            Privacy::Onion => "onion",
            Privacy::Tor => "tor",
            Privacy::I2p => "i2p",
        }
    }
}

impl std::str::FromStr for Privacy {
    type Err = UnknownPrivacy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "direct" => Ok(Privacy::Direct),
            "onion" => Ok(Privacy::Onion),
            "tor" => Ok(Privacy::Tor),
            "i2p" => Ok(Privacy::I2p),
            other => Err(UnknownPrivacy(other.chars().take(32).collect())),
        }
    }
}

/// A privacy level name that is none of `direct`, `onion`, `tor`, `i2p`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown privacy {0:?}: expected direct, onion, tor or i2p")]
pub struct UnknownPrivacy(pub String);

/// What the outbox asks the node to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboxAction {
    /// Send (or resend) this payload to `peer`, then call [`Outbox::mark_sent`].
    Send {
        /// The message.
        id: MessageId,
        /// Its recipient.
        peer: NodeId,
        /// The encoded private payload.
        payload: Bytes,
        /// How it travels.
        privacy: Privacy,
        /// Sends so far (0 for the first).
        attempt: u32,
    },
    /// Stop trying: report the message as failed. It has been removed.
    Fail {
        /// The message.
        id: MessageId,
        /// Its recipient.
        peer: NodeId,
        /// How many times it was sent.
        attempts: u32,
    },
}

#[derive(Debug)]
struct Entry {
    peer: NodeId,
    payload: Bytes,
    privacy: Privacy,
    attempts: u32,
    queued_at: Instant,
    first_sent: Option<Instant>,
    /// When the next (re)send is due.
    next_send: Instant,
    /// Deposited with store-and-forward holders: the message now waits for its recipient until
    /// this time, however many direct sends it took.
    deposited_until: Option<Instant>,
}

/// Acknowledgement of a message the outbox was tracking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acknowledged {
    /// The recipient.
    pub peer: NodeId,
    /// Sends it took.
    pub attempts: u32,
    /// Time from the first send to the acknowledgement.
    pub latency: Option<Duration>,
}

/// Messages awaiting acknowledgement. Bounded: [`Outbox::insert`] refuses beyond `capacity`.
#[derive(Debug)]
pub struct Outbox {
    entries: HashMap<MessageId, Entry>,
    policy: RetryPolicy,
    capacity: usize,
}

/// The outbox is at capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("outbox full ({0} messages awaiting acknowledgement)")]
pub struct OutboxFull(pub usize);

impl Outbox {
    /// An empty outbox holding at most `capacity` messages.
    pub fn new(policy: RetryPolicy, capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            policy,
            capacity,
        }
    }

    /// Messages being tracked.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is awaiting acknowledgement.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Messages awaiting acknowledgement from `peer`.
    pub fn pending_for(&self, peer: &NodeId) -> usize {
        self.entries.values().filter(|e| &e.peer == peer).count()
    }

    /// Starts tracking a message, due for sending immediately.
    pub fn insert(
        &mut self,
        id: MessageId,
        peer: NodeId,
        payload: Bytes,
        now: Instant,
    ) -> Result<(), OutboxFull> {
        self.insert_with(id, peer, payload, Privacy::Direct, now)
    }

    /// Starts tracking a message that travels as `privacy` says, due for sending immediately.
    pub fn insert_with(
        &mut self,
        id: MessageId,
        peer: NodeId,
        payload: Bytes,
        privacy: Privacy,
        now: Instant,
    ) -> Result<(), OutboxFull> {
        if self.entries.len() >= self.capacity {
            return Err(OutboxFull(self.entries.len()));
        }
        self.entries.insert(
            id,
            Entry {
                peer,
                payload,
                privacy,
                attempts: 0,
                queued_at: now,
                first_sent: None,
                next_send: now,
                deposited_until: None,
            },
        );
        Ok(())
    }

    /// Records that `id` was handed to the transport at `now`; the next resend is scheduled
    /// after the (doubling) acknowledgement timeout.
    pub fn mark_sent(&mut self, id: &MessageId, now: Instant) {
        if let Some(entry) = self.entries.get_mut(id) {
            entry.attempts += 1;
            entry.first_sent.get_or_insert(now);
            let backoff = self
                .policy
                .ack_timeout
                .saturating_mul(1 << (entry.attempts - 1).min(16));
            entry.next_send = now + backoff;
        }
    }

    /// Handles an end-to-end acknowledgement from `from`. Acknowledgements from anyone but the
    /// recipient are ignored.
    pub fn handle_ack(
        &mut self,
        id: &MessageId,
        from: &NodeId,
        now: Instant,
    ) -> Option<Acknowledged> {
        match self.entries.get(id) {
            Some(entry) if &entry.peer == from => {}
            _ => return None,
        }
        let entry = self.entries.remove(id)?;
        Some(Acknowledged {
            peer: entry.peer,
            attempts: entry.attempts,
            latency: entry.first_sent.map(|t| now.saturating_duration_since(t)),
        })
    }

    /// Everything due at `now`: sends for messages whose recipient `reachable` says can be
    /// sent to the way the message travels (onion-routed messages need no connection to their
    /// recipient and are always due), failures for messages out of attempts or past their
    /// deadline.
    pub fn poll(
        &mut self,
        now: Instant,
        mut reachable: impl FnMut(&NodeId, Privacy) -> bool,
    ) -> Vec<OutboxAction> {
        let mut actions = Vec::new();
        let mut failed = Vec::new();
        for (id, entry) in &mut self.entries {
            // The deadline holds even between resends.
            let expired = match entry.deposited_until {
                Some(until) => now >= until,
                None => now.saturating_duration_since(entry.queued_at) >= self.policy.deadline,
            };
            if expired {
                failed.push(*id);
                continue;
            }
            if entry.next_send > now {
                continue;
            }
            if entry.attempts >= self.policy.max_attempts && entry.deposited_until.is_none() {
                failed.push(*id);
            } else if entry.privacy == Privacy::Onion || reachable(&entry.peer, entry.privacy) {
                actions.push(OutboxAction::Send {
                    id: *id,
                    peer: entry.peer,
                    payload: entry.payload.clone(),
                    privacy: entry.privacy,
                    attempt: entry.attempts,
                });
            }
        }
        for id in failed {
            if let Some(entry) = self.entries.remove(&id) {
                actions.push(OutboxAction::Fail {
                    id,
                    peer: entry.peer,
                    attempts: entry.attempts,
                });
            }
        }
        actions
    }

    /// Stops tracking the messages to `peer` that have no way to it, and returns their ids:
    /// direct ones never sent nor deposited, and onion-routed ones not deposited (a packet to
    /// `peer` is sealed to its record, so none left without one). For failing them at once
    /// when a lookup shows that nobody knows `peer`.
    pub fn remove_unroutable(&mut self, peer: &NodeId) -> Vec<MessageId> {
        let ids: Vec<MessageId> = self
            .entries
            .iter()
            .filter(|(_, e)| {
                &e.peer == peer
                    && e.deposited_until.is_none()
                    && match e.privacy {
                        Privacy::Direct => e.attempts == 0,
                        Privacy::Onion => true,
                        _ => false,
                    }
            })
            .map(|(id, _)| *id)
            .collect();
        for id in &ids {
            self.entries.remove(id);
        }
        ids
    }

    /// Messages to `peer` never sent yet that travel over a connection to it (direct, Tor,
    /// I2P; not onion-routed), for flushing when a session becomes ready.
    pub fn unsent_for(&self, peer: &NodeId) -> Vec<(MessageId, Bytes, Privacy)> {
        self.entries
            .iter()
            .filter(|(_, e)| &e.peer == peer && e.attempts == 0 && e.privacy != Privacy::Onion)
            .map(|(id, e)| (*id, e.payload.clone(), e.privacy))
            .collect()
    }

    /// Recipients of direct messages that are not yet deposited (see
    /// [`Outbox::mark_deposited`]). Onion-routed messages are never deposited: the holders
    /// would learn who sent them.
    pub fn undeposited_peers(&self) -> Vec<NodeId> {
        let mut peers: Vec<NodeId> = self
            .entries
            .values()
            .filter(|e| e.deposited_until.is_none() && e.privacy == Privacy::Direct)
            .map(|e| e.peer)
            .collect();
        peers.sort_unstable_by_key(|p| *p.as_bytes());
        peers.dedup();
        peers
    }

    /// Direct messages to `peer` not yet deposited with store-and-forward holders.
    pub fn undeposited_for(&self, peer: &NodeId) -> Vec<(MessageId, Bytes)> {
        self.entries
            .iter()
            .filter(|(_, e)| {
                &e.peer == peer && e.deposited_until.is_none() && e.privacy == Privacy::Direct
            })
            .map(|(id, e)| (*id, e.payload.clone()))
            .collect()
    }

    /// Records that `id` was deposited with nodes that hold it for its recipient: it no longer
    /// fails for lack of attempts, and waits for its acknowledgement until `until`. Direct resends
    /// continue whenever the recipient is reachable (receivers deduplicate).
    pub fn mark_deposited(&mut self, id: &MessageId, until: Instant) {
        if let Some(entry) = self.entries.get_mut(id) {
            entry.deposited_until = Some(until);
        }
    }

    /// Stops tracking everything, returning what was pending (node shutdown).
    pub fn drain(&mut self) -> Vec<(MessageId, NodeId)> {
        self.entries.drain().map(|(id, e)| (id, e.peer)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Identity;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            ack_timeout: Duration::from_secs(1),
            max_attempts: 3,
            deadline: Duration::from_secs(60),
        }
    }

    #[test]
    fn resends_with_backoff_then_fails() {
        let peer = Identity::generate().node_id();
        let id = MessageId([1; 32]);
        let t0 = Instant::now();
        let mut outbox = Outbox::new(policy(), 10);
        outbox
            .insert(id, peer, Bytes::from_static(b"x"), t0)
            .unwrap();
        // Not reachable: nothing to send, nothing failed.
        assert!(outbox.poll(t0, |_, _| false).is_empty());
        let actions = outbox.poll(t0, |_, _| true);
        assert!(matches!(actions.as_slice(), [OutboxAction::Send { .. }]));
        outbox.mark_sent(&id, t0);
        assert!(
            outbox
                .poll(t0 + Duration::from_millis(999), |_, _| true)
                .is_empty()
        );
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(outbox.poll(t1, |_, _| true).len(), 1);
        outbox.mark_sent(&id, t1);
        // Second timeout is doubled.
        assert!(
            outbox
                .poll(t1 + Duration::from_millis(1999), |_, _| true)
                .is_empty()
        );
        let t2 = t1 + Duration::from_secs(2);
        assert_eq!(outbox.poll(t2, |_, _| true).len(), 1);
        outbox.mark_sent(&id, t2);
        let t3 = t2 + Duration::from_secs(4);
        let actions = outbox.poll(t3, |_, _| true);
        assert_eq!(
            actions,
            vec![OutboxAction::Fail {
                id,
                peer,
                attempts: 3
            }]
        );
        assert!(outbox.is_empty());
    }

    #[test]
    fn ack_only_from_the_recipient() {
        let peer = Identity::generate().node_id();
        let other = Identity::generate().node_id();
        let id = MessageId([2; 32]);
        let t0 = Instant::now();
        let mut outbox = Outbox::new(policy(), 10);
        outbox.insert(id, peer, Bytes::new(), t0).unwrap();
        outbox.mark_sent(&id, t0);
        assert!(outbox.handle_ack(&id, &other, t0).is_none());
        let ack = outbox
            .handle_ack(&id, &peer, t0 + Duration::from_millis(5))
            .unwrap();
        assert_eq!(ack.attempts, 1);
        assert_eq!(ack.latency, Some(Duration::from_millis(5)));
        assert!(outbox.handle_ack(&id, &peer, t0).is_none());
    }

    #[test]
    fn deadline_and_capacity() {
        let peer = Identity::generate().node_id();
        let t0 = Instant::now();
        let mut outbox = Outbox::new(policy(), 1);
        outbox
            .insert(MessageId([3; 32]), peer, Bytes::new(), t0)
            .unwrap();
        assert_eq!(
            outbox.insert(MessageId([4; 32]), peer, Bytes::new(), t0),
            Err(OutboxFull(1))
        );
        // Never reachable: fails at the deadline with zero attempts.
        let actions = outbox.poll(t0 + Duration::from_secs(60), |_, _| false);
        assert!(matches!(
            actions.as_slice(),
            [OutboxAction::Fail { attempts: 0, .. }]
        ));
    }

    #[test]
    fn deposited_messages_wait_past_the_deadline_and_attempts() {
        let peer = Identity::generate().node_id();
        let id = MessageId([5; 32]);
        let t0 = Instant::now();
        let mut outbox = Outbox::new(policy(), 10);
        outbox.insert(id, peer, Bytes::new(), t0).unwrap();
        assert_eq!(outbox.undeposited_peers(), vec![peer]);
        assert_eq!(outbox.undeposited_for(&peer).len(), 1);
        for _ in 0..3 {
            outbox.mark_sent(&id, t0);
        }
        outbox.mark_deposited(&id, t0 + Duration::from_secs(3600));
        assert!(outbox.undeposited_peers().is_empty());
        // Out of attempts and past the normal deadline, it still waits for its recipient, and
        // is resent directly when the recipient is reachable.
        let later = t0 + Duration::from_secs(600);
        assert!(outbox.poll(later, |_, _| false).is_empty());
        assert!(matches!(
            outbox.poll(later, |_, _| true).as_slice(),
            [OutboxAction::Send { .. }]
        ));
        // The acknowledgement then confirms it.
        assert!(outbox.handle_ack(&id, &peer, later).is_some());
        // Past the holding time, it fails.
        let id2 = MessageId([6; 32]);
        outbox.insert(id2, peer, Bytes::new(), t0).unwrap();
        outbox.mark_deposited(&id2, t0 + Duration::from_secs(3600));
        assert!(matches!(
            outbox
                .poll(t0 + Duration::from_secs(3600), |_, _| false)
                .as_slice(),
            [OutboxAction::Fail { .. }]
        ));
    }

    #[test]
    fn onion_messages_need_no_connection_and_never_go_direct() {
        let peer = Identity::generate().node_id();
        let id = MessageId([7; 32]);
        let t0 = Instant::now();
        let mut outbox = Outbox::new(policy(), 10);
        outbox
            .insert_with(id, peer, Bytes::new(), Privacy::Onion, t0)
            .unwrap();
        // Never flushed on a direct session, never deposited with holders.
        assert!(outbox.unsent_for(&peer).is_empty());
        assert!(outbox.undeposited_peers().is_empty());
        assert!(outbox.undeposited_for(&peer).is_empty());
        // Due although the recipient is not reachable directly; resends count attempts.
        let actions = outbox.poll(t0, |_, _| false);
        assert!(matches!(
            actions.as_slice(),
            [OutboxAction::Send {
                privacy: Privacy::Onion,
                attempt: 0,
                ..
            }]
        ));
        outbox.mark_sent(&id, t0);
        let actions = outbox.poll(t0 + Duration::from_secs(1), |_, _| false);
        assert!(matches!(
            actions.as_slice(),
            [OutboxAction::Send { attempt: 1, .. }]
        ));
    }

    #[test]
    fn tor_and_i2p_messages_wait_for_their_own_transport_and_are_never_deposited() {
        let peer = Identity::generate().node_id();
        let t0 = Instant::now();
        let mut outbox = Outbox::new(policy(), 10);
        outbox
            .insert_with(MessageId([1; 32]), peer, Bytes::new(), Privacy::Tor, t0)
            .unwrap();
        outbox
            .insert_with(MessageId([2; 32]), peer, Bytes::new(), Privacy::I2p, t0)
            .unwrap();
        // Flushed when a session is ready (on a connection of their transport), never
        // deposited with mailbox holders.
        let mut unsent: Vec<Privacy> = outbox.unsent_for(&peer).iter().map(|u| u.2).collect();
        unsent.sort_by_key(|p| p.as_str());
        assert_eq!(unsent, [Privacy::I2p, Privacy::Tor]);
        assert!(outbox.undeposited_peers().is_empty());
        assert!(outbox.undeposited_for(&peer).is_empty());
        // Due only when the recipient is reachable the way each travels.
        let actions = outbox.poll(t0, |_, privacy| privacy == Privacy::Tor);
        assert!(matches!(
            actions.as_slice(),
            [OutboxAction::Send {
                privacy: Privacy::Tor,
                ..
            }]
        ));
    }

    #[test]
    fn privacy_names_round_trip() {
        for p in [Privacy::Direct, Privacy::Onion, Privacy::Tor, Privacy::I2p] {
            assert_eq!(p.as_str().parse::<Privacy>(), Ok(p));
        }
        assert_eq!(
            Privacy::Tor.transport(),
            Some(crate::record::Transport::Tor)
        );
        assert_eq!(Privacy::Direct.transport(), None);
        let err = "garlic".parse::<Privacy>().unwrap_err();
        assert!(err.to_string().contains("garlic"), "{err}");
        // Hostile input is not echoed whole.
        let long = "x".repeat(10_000).parse::<Privacy>().unwrap_err();
        assert!(long.0.len() <= 32);
    }
}
