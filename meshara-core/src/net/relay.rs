//! Store-and-forward and one-hop relaying of sealed private messages.
//!
//! A sender that cannot reach a recipient (its DHT lookup or its dials failed) seals each waiting
//! message to the recipient's key and deposits it, as a `PrivateEnvelope` with `hop_limit` 1,
//! at the [`MAILBOX_REPLICAS`](super::core) nodes closest to the recipient's NodeId. A node
//! receiving such transit traffic relays it at once if the recipient is connected to it (this is
//! how a node that cannot be dialled, but keeps connections to its closest nodes, is reached),
//! otherwise holds it in its [`Mailbox`](crate::mailbox::Mailbox) and hands it over when the
//! recipient connects. Relays never forward to a third node, so hop limits cannot loop: the
//! envelope leaves a holder with `hop_limit` 0 and nobody relays that.
//!
//! The recipient acknowledges end to end as usual; the sender's outbox keeps a deposited message
//! until then (up to `timeouts.mailbox`), so [`Event::DeliveryConfirmed`] arrives when the message
//! is finally delivered. Holders see the recipient, the size bucket and the depositing peer; the
//! content and the sender's record are sealed, but the depositing peer is the sender itself, so a
//! holder does learn who writes to whom (hiding that is onion routing's job).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::core::{Inner, State, ack_payload, envelope};
use super::events::Event;
use super::metrics::DropReason;
use crate::identity::NodeId;
use crate::message::MessageId;
use crate::proto;

impl Inner {
    /// A private envelope addressed to another node.
    pub(crate) fn handle_transit(
        self: &Arc<Self>,
        from: &NodeId,
        private: proto::PrivateEnvelope,
        now: Instant,
    ) {
        use proto::private_envelope::Body as P;
        let Ok(recipient) = NodeId::from_slice(&private.recipient) else {
            self.count_drop(DropReason::Malformed, Some(from), "transit recipient");
            return;
        };
        if private.hop_limit == 0 {
            self.count_drop(DropReason::Mailbox, Some(from), "transit with no hops left");
            return;
        }
        // Sessions are end to end between connected peers; only sealed messages, which carry
        // their sender inside the encryption, travel through other nodes.
        let Some(P::Sealed(sealed)) = private.body else {
            self.count_drop(
                DropReason::Mailbox,
                Some(from),
                "only sealed messages relay",
            );
            return;
        };
        if recipient == *from {
            self.count_drop(
                DropReason::Mailbox,
                Some(from),
                "transit back to its sender",
            );
            return;
        }
        let held = {
            let mut st = self.lock();
            if st.is_ready(&recipient) {
                self.relay_sealed(&st, &recipient, sealed);
                return;
            }
            st.mailbox.store(recipient, sealed, now)
        };
        match held {
            Ok(()) => {
                self.metrics.message("in", "deposit");
                tracing::debug!(%recipient, depositor = %from, "holding a message for an offline node");
                // It may be reachable after all (a fresh record, a lookup).
                self.ensure_connected(recipient);
            }
            Err(e) => self.count_drop(DropReason::Mailbox, Some(from), &e.to_string()),
        }
    }

    /// Sends a sealed message on to its connected recipient, with no hops left.
    fn relay_sealed(&self, st: &State, recipient: &NodeId, sealed: proto::SealedMessage) {
        let env = envelope(proto::envelope::Body::Private(proto::PrivateEnvelope {
            recipient: Bytes::copy_from_slice(recipient.as_bytes()),
            hop_limit: 0,
            body: Some(proto::private_envelope::Body::Sealed(sealed)),
        }));
        let (Some(frame), Some(writer)) = (self.frame(&env), st.ready_writer(recipient)) else {
            return;
        };
        match writer.try_send(frame) {
            Ok(()) => {
                self.mark_used(st, recipient);
                self.metrics.message("out", "relay");
            }
            Err(reason) => self.count_drop(reason, Some(recipient), "relay"),
        }
    }

    /// `peer` just connected: hand it everything held for it. Called with the state locked.
    pub(crate) fn hand_over_mail(&self, st: &mut State, peer: &NodeId, now: Instant) {
        let held = st.mailbox.take(peer, now);
        if held.is_empty() {
            return;
        }
        tracing::info!(%peer, count = held.len(), "handing over messages held while it was away");
        for sealed in held {
            self.relay_sealed(st, peer, sealed);
        }
    }

    /// Seals the messages waiting for the unreachable `peer` and deposits them with the nodes
    /// closest to it. Returns whether at least one holder took them.
    pub(crate) async fn deposit(self: Arc<Self>, peer: NodeId) -> bool {
        let (record, holders) = {
            let st = self.lock();
            let Some(record) = st.peer_record(&peer) else {
                // Without its record there is no key to seal to.
                return false;
            };
            let me = self.identity.node_id();
            let holders: Vec<NodeId> = st
                .kad
                .closest(peer.as_bytes(), super::core::MAILBOX_REPLICAS + 1)
                .into_iter()
                .map(|(_, id)| id)
                .filter(|id| *id != peer && *id != me)
                .take(super::core::MAILBOX_REPLICAS)
                .collect();
            (record, holders)
        };
        let reached = futures_util::future::join_all(
            holders
                .iter()
                .map(|h| self.clone().ready_connection(*h))
                .collect::<Vec<_>>(),
        )
        .await;
        let ready: Vec<NodeId> = holders
            .into_iter()
            .zip(reached)
            .filter_map(|(h, ok)| ok.then_some(h))
            .collect();
        if ready.is_empty() {
            return false;
        }
        let own = self.own_record();
        let until = Instant::now() + self.config.timeouts.mailbox;
        let mut stored: Vec<(MessageId, usize)> = Vec::new();
        let mut acks_deposited = 0;
        {
            let mut st = self.lock();
            // Acknowledgements for messages from `peer` travel the same way when it cannot be
            // reached either (both ends without a dialable address).
            let acks = st.pending_acks.remove(&peer).unwrap_or_default();
            let mut items: Vec<(Option<MessageId>, Bytes)> = st
                .outbox
                .undeposited_for(&peer)
                .into_iter()
                .map(|(id, payload)| (Some(id), payload))
                .collect();
            for chunk in acks.chunks(crate::wire::MAX_IDS) {
                if let Some(bytes) = ack_payload(chunk) {
                    items.push((None, bytes.into()));
                }
            }
            for (id, payload) in items {
                let sealed = match crate::crypto::seal::seal(
                    &self.identity,
                    &own,
                    &record,
                    &payload,
                    self.padding,
                ) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "cannot seal a message for deposit");
                        continue;
                    }
                };
                let env = envelope(proto::envelope::Body::Private(proto::PrivateEnvelope {
                    recipient: Bytes::copy_from_slice(peer.as_bytes()),
                    hop_limit: 1,
                    body: Some(proto::private_envelope::Body::Sealed(sealed)),
                }));
                let Some(frame) = self.frame(&env) else {
                    continue;
                };
                let holders = ready
                    .iter()
                    .filter(|h| {
                        let sent = st
                            .ready_writer(h)
                            .is_some_and(|w| w.try_send(frame.clone()).is_ok());
                        if sent {
                            self.mark_used(&st, h);
                        }
                        sent
                    })
                    .count();
                match id {
                    Some(id) if holders > 0 => {
                        st.outbox.mark_deposited(&id, until);
                        stored.push((id, holders));
                    }
                    None if holders > 0 => acks_deposited += 1,
                    _ => {}
                }
            }
        }
        for (id, holders) in &stored {
            tracing::info!(%peer, %id, holders, "recipient unreachable; message deposited");
            self.metrics.message("out", "deposit");
            self.emit(Event::MessageStored {
                id: *id,
                peer,
                holders: *holders,
            });
        }
        if acks_deposited > 0 {
            tracing::debug!(%peer, batches = acks_deposited, "acknowledgements deposited");
        }
        !stored.is_empty() || acks_deposited > 0
    }

    /// Starts depositing for every recipient whose messages wait while it cannot be reached
    /// (its last lookup or dial failed). Called from the maintenance tick with the state locked;
    /// returns the recipients to start deposits for.
    pub(crate) fn due_deposits(&self, st: &mut State, now: Instant) -> Vec<NodeId> {
        let mut due = Vec::new();
        let mut candidates = st.outbox.undeposited_peers();
        candidates.extend(st.pending_acks.keys().copied());
        candidates.sort_unstable_by_key(|p| *p.as_bytes());
        candidates.dedup();
        for peer in candidates {
            let failed = st.dial_backoff.contains_key(&peer);
            let busy = st.is_ready(&peer)
                || st.depositing.contains(&peer)
                || st.dialing.contains(&peer)
                || st.looking_up.contains(&peer)
                || st.deposit_backoff.get(&peer).is_some_and(|at| now < *at);
            if failed && !busy {
                st.depositing.insert(peer);
                due.push(peer);
            }
        }
        st.deposit_backoff.retain(|_, at| now < *at);
        due
    }

    /// Runs a deposit for `peer` and records its outcome.
    pub(crate) async fn run_deposit(self: Arc<Self>, peer: NodeId) {
        let ok = self.clone().deposit(peer).await;
        let mut st = self.lock();
        st.depositing.remove(&peer);
        if !ok {
            st.deposit_backoff
                .insert(peer, Instant::now() + super::core::DEPOSIT_RETRY);
        }
    }
}
