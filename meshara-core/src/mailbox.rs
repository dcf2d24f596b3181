//! Store-and-forward: sealed messages held for recipients that are offline, as a sans-IO state
//! machine.
//!
//! A sender that cannot reach a recipient seals the message to the recipient's key (so a holder
//! learns neither the content nor the sender) and deposits it at the nodes closest to the
//! recipient's NodeId. Each of those keeps it in its [`Mailbox`] for a bounded time and hands it
//! over when the recipient connects. The recipient acknowledges end to end, as for any private
//! message, so the sender's delivery confirmation arrives when the message is finally read.
//!
//! Everything is bounded: messages in total, per recipient and in bytes, and by age. A full
//! mailbox refuses new deposits with a typed error instead of evicting what it already promised
//! to hold.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use prost::Message as _;

use crate::identity::NodeId;
use crate::proto;

/// Bounds of a [`Mailbox`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MailboxLimits {
    /// Messages held in total.
    pub max_messages: usize,
    /// Messages held for one recipient.
    pub max_per_recipient: usize,
    /// Encoded bytes held in total.
    pub max_bytes: usize,
    /// How long a message is held before it is dropped.
    pub ttl: Duration,
}

impl Default for MailboxLimits {
    fn default() -> Self {
        Self {
            max_messages: 4096,
            max_per_recipient: 64,
            max_bytes: 32 << 20,
            ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// Why a deposit was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MailboxError {
    /// The mailbox holds `max_messages` messages or `max_bytes` bytes.
    #[error("mailbox full")]
    Full,
    /// The recipient already has `max_per_recipient` messages waiting.
    #[error("too many messages waiting for this recipient")]
    RecipientFull,
    /// This exact sealed message is already held.
    #[error("already held")]
    Duplicate,
    /// The sealed message's ephemeral key is not 32 bytes.
    #[error("malformed sealed message")]
    Malformed,
}

#[derive(Debug)]
struct Held {
    /// The sealed message's ephemeral key: unique per sealing, so it names the message.
    key: [u8; 32],
    sealed: proto::SealedMessage,
    size: usize,
    expires: Instant,
}

/// Sealed messages waiting for their recipients.
#[derive(Debug)]
pub struct Mailbox {
    limits: MailboxLimits,
    held: HashMap<NodeId, VecDeque<Held>>,
    keys: HashSet<[u8; 32]>,
    count: usize,
    bytes: usize,
}

impl Mailbox {
    /// An empty mailbox.
    pub fn new(limits: MailboxLimits) -> Self {
        Self {
            limits,
            held: HashMap::new(),
            keys: HashSet::new(),
            count: 0,
            bytes: 0,
        }
    }

    /// Messages held.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Encoded bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Messages held for `recipient`.
    pub fn waiting_for(&self, recipient: &NodeId) -> usize {
        self.held.get(recipient).map_or(0, VecDeque::len)
    }

    /// Recipients with messages waiting.
    pub fn recipients(&self) -> impl Iterator<Item = &NodeId> {
        self.held.keys()
    }

    /// Holds `sealed` for `recipient` until `now + ttl`.
    pub fn store(
        &mut self,
        recipient: NodeId,
        sealed: proto::SealedMessage,
        now: Instant,
    ) -> Result<(), MailboxError> {
        self.expire(now);
        let key: [u8; 32] = sealed
            .ephemeral
            .as_ref()
            .try_into()
            .map_err(|_| MailboxError::Malformed)?;
        if self.keys.contains(&key) {
            return Err(MailboxError::Duplicate);
        }
        let size = sealed.encoded_len();
        if self.count >= self.limits.max_messages || self.bytes + size > self.limits.max_bytes {
            return Err(MailboxError::Full);
        }
        let queue = self.held.entry(recipient).or_default();
        if queue.len() >= self.limits.max_per_recipient {
            return Err(MailboxError::RecipientFull);
        }
        queue.push_back(Held {
            key,
            sealed,
            size,
            expires: now + self.limits.ttl,
        });
        self.keys.insert(key);
        self.count += 1;
        self.bytes += size;
        Ok(())
    }

    /// Removes and returns everything held for `recipient` that has not expired, oldest first.
    pub fn take(&mut self, recipient: &NodeId, now: Instant) -> Vec<proto::SealedMessage> {
        let Some(queue) = self.held.remove(recipient) else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(queue.len());
        for h in queue {
            self.forget(&h);
            if h.expires > now {
                out.push(h.sealed);
            }
        }
        out
    }

    /// Drops messages older than the TTL; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let mut dropped = Vec::new();
        for queue in self.held.values_mut() {
            while queue.front().is_some_and(|h| h.expires <= now) {
                if let Some(h) = queue.pop_front() {
                    dropped.push(h);
                }
            }
        }
        self.held.retain(|_, q| !q.is_empty());
        for h in &dropped {
            self.forget(h);
        }
        dropped.len()
    }

    fn forget(&mut self, h: &Held) {
        self.keys.remove(&h.key);
        self.count -= 1;
        self.bytes -= h.size;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Identity;
    use bytes::Bytes;

    fn sealed(n: u8, len: usize) -> proto::SealedMessage {
        proto::SealedMessage {
            ephemeral: Bytes::from(vec![n; 32]),
            sender_ciphertext: Bytes::from(vec![1; 16]),
            payload_ciphertext: Bytes::from(vec![2; len]),
        }
    }

    fn limits() -> MailboxLimits {
        MailboxLimits {
            max_messages: 4,
            max_per_recipient: 3,
            max_bytes: 10_000,
            ttl: Duration::from_secs(60),
        }
    }

    #[test]
    fn holds_until_taken_in_order() {
        let now = Instant::now();
        let (a, b) = (
            Identity::generate().node_id(),
            Identity::generate().node_id(),
        );
        let mut m = Mailbox::new(limits());
        m.store(a, sealed(1, 10), now).unwrap();
        m.store(b, sealed(2, 10), now).unwrap();
        m.store(a, sealed(3, 10), now).unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m.waiting_for(&a), 2);
        let got = m.take(&a, now);
        assert_eq!(
            got.iter().map(|s| s.ephemeral[0]).collect::<Vec<_>>(),
            [1, 3]
        );
        assert_eq!(m.len(), 1);
        assert!(m.take(&a, now).is_empty());
        assert_eq!(m.recipients().collect::<Vec<_>>(), [&b]);
    }

    #[test]
    fn bounds_refuse_without_evicting() {
        let now = Instant::now();
        let (a, b) = (
            Identity::generate().node_id(),
            Identity::generate().node_id(),
        );
        let mut m = Mailbox::new(limits());
        for n in 0..3 {
            m.store(a, sealed(n, 10), now).unwrap();
        }
        assert_eq!(
            m.store(a, sealed(9, 10), now),
            Err(MailboxError::RecipientFull)
        );
        assert_eq!(m.store(b, sealed(0, 10), now), Err(MailboxError::Duplicate));
        m.store(b, sealed(10, 10), now).unwrap();
        assert_eq!(m.store(b, sealed(11, 10), now), Err(MailboxError::Full));
        // Byte bound.
        let mut m = Mailbox::new(limits());
        assert_eq!(m.store(a, sealed(1, 20_000), now), Err(MailboxError::Full));
        assert!(m.is_empty());
        assert_eq!(m.bytes(), 0);
    }

    #[test]
    fn messages_expire() {
        let now = Instant::now();
        let a = Identity::generate().node_id();
        let mut m = Mailbox::new(limits());
        m.store(a, sealed(1, 10), now).unwrap();
        m.store(a, sealed(2, 10), now + Duration::from_secs(30))
            .unwrap();
        assert_eq!(m.expire(now + Duration::from_secs(61)), 1);
        assert_eq!(m.len(), 1);
        assert!(m.take(&a, now + Duration::from_secs(100)).is_empty());
        assert_eq!((m.len(), m.bytes()), (0, 0));
        // A bad ephemeral key is refused, not held.
        let mut bad = sealed(1, 10);
        bad.ephemeral = Bytes::from_static(b"short");
        assert_eq!(m.store(a, bad, now), Err(MailboxError::Malformed));
    }
}
