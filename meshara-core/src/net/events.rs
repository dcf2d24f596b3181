//! What a node tells the application: events, incoming queries and byte streams.

use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::ReusableBoxFuture;

use super::core::Inner;
use super::error::SendError;
use super::transport::{RecvHalf, SendHalf, TransportKind};
use crate::identity::NodeId;
use crate::message::{MessageId, VerifiedBroadcast};

/// Something that happened on the node. Subscribe with [`crate::Node::events`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// A private message arrived (already decrypted, authenticated and deduplicated).
    Message(ReceivedMessage),
    /// A signed broadcast arrived (signature verified, deduplicated).
    Broadcast(ReceivedBroadcast),
    /// A peer asked a query; answer it with [`IncomingQuery::respond`].
    Query(IncomingQuery),
    /// The first connection to a peer is ready.
    PeerConnected {
        /// The peer.
        peer: NodeId,
        /// Its transport.
        transport: TransportKind,
        /// Its address, where the transport has one.
        addr: Option<SocketAddr>,
        /// Whether the peer dialed us.
        inbound: bool,
    },
    /// The last connection to a peer closed.
    PeerDisconnected {
        /// The peer.
        peer: NodeId,
        /// Why the last connection ended.
        reason: String,
    },
    /// A node was discovered by peer exchange or a DHT lookup and will be dialed, or found on
    /// the local network by mDNS and connected to (mDNS announcements name no node, so the
    /// NodeId is the one the connection proved).
    PeerDiscovered {
        /// The node.
        peer: NodeId,
        /// How: `"mdns"`, `"peer-exchange"` or `"dht"` (found by a DHT lookup).
        via: &'static str,
    },
    /// The recipient acknowledged a private message end to end.
    DeliveryConfirmed {
        /// The message.
        id: MessageId,
        /// Its recipient.
        peer: NodeId,
        /// From first send to acknowledgement.
        latency: Duration,
        /// Sends it took.
        attempts: u32,
    },
    /// A private message whose recipient could not be reached was deposited with the nodes
    /// closest to it, which hold it until it comes back (store-and-forward); its
    /// [`DeliveryConfirmed`](Event::DeliveryConfirmed) follows when the recipient reads it.
    MessageStored {
        /// The message.
        id: MessageId,
        /// Its recipient.
        peer: NodeId,
        /// How many nodes hold it.
        holders: usize,
    },
    /// This node relayed an onion packet: all a relay learns is the neighbour it came from and
    /// the one it goes to (docs/protocol.md §15.14).
    OnionRelayed {
        /// The previous hop.
        from: NodeId,
        /// The next hop.
        to: NodeId,
    },
    /// A private message was not acknowledged after every retry.
    DeliveryFailed {
        /// The message.
        id: MessageId,
        /// Its intended recipient.
        peer: NodeId,
        /// Sends attempted.
        attempts: u32,
    },
    /// A background operation failed (a dial, a refused connection, a bad message).
    Error {
        /// What the node was doing.
        context: &'static str,
        /// What went wrong.
        message: String,
    },
    /// This subscriber fell behind and missed `missed` events.
    Lagged {
        /// Events skipped.
        missed: u64,
    },
}

impl Event {
    /// Short snake_case name of the event kind: `message`, `broadcast`, `query`,
    /// `peer_connected`, `peer_disconnected`, `peer_discovered`, `delivered`,
    /// `message_stored`, `onion_relayed`, `delivery_failed`, `error`, `lagged`.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Message(_) => "message",
            Event::Broadcast(_) => "broadcast",
            Event::Query(_) => "query",
            Event::PeerConnected { .. } => "peer_connected",
            Event::PeerDisconnected { .. } => "peer_disconnected",
            Event::PeerDiscovered { .. } => "peer_discovered",
            Event::DeliveryConfirmed { .. } => "delivered",
            Event::MessageStored { .. } => "message_stored",
            Event::OnionRelayed { .. } => "onion_relayed",
            Event::DeliveryFailed { .. } => "delivery_failed",
            Event::Error { .. } => "error",
            Event::Lagged { .. } => "lagged",
        }
    }

    /// The event's fields as a JSON object, the one representation the CLI, the HTTP API and
    /// other tools share. Ids are hex, NodeIds base32, contents both as UTF-8 (when valid)
    /// and base64.
    pub fn to_json(&self) -> serde_json::Value {
        use data_encoding::BASE64;
        use serde_json::json;
        let text = |b: &[u8]| std::str::from_utf8(b).ok().map(str::to_owned);
        match self {
            Event::Message(m) => json!({
                "id": m.id.to_string(), "from": m.from.to_string(),
                "content_type": m.content_type, "content": text(&m.content),
                "content_base64": BASE64.encode(&m.content), "sent_at_ms": m.sent_at_ms,
                "via": m.via.map(TransportKind::as_str),
            }),
            Event::Broadcast(b) => json!({
                "id": b.broadcast.id.to_string(), "author": b.broadcast.author.to_string(),
                "via": b.via.to_string(), "topic": b.broadcast.topic,
                "content_type": b.broadcast.content_type, "content": text(&b.broadcast.content),
                "content_base64": BASE64.encode(&b.broadcast.content),
            }),
            Event::Query(q) => json!({
                "from": q.from.to_string(), "method": q.method,
                "body_base64": BASE64.encode(&q.body),
            }),
            Event::PeerConnected {
                peer,
                transport,
                addr,
                inbound,
            } => json!({
                "peer": peer.to_string(), "transport": transport.as_str(),
                "addr": addr.map(|a| a.to_string()), "inbound": inbound,
            }),
            Event::PeerDisconnected { peer, reason } => {
                json!({"peer": peer.to_string(), "reason": reason})
            }
            Event::PeerDiscovered { peer, via } => json!({"peer": peer.to_string(), "via": via}),
            Event::DeliveryConfirmed {
                id,
                peer,
                latency,
                attempts,
            } => json!({
                "id": id.to_string(), "peer": peer.to_string(),
                "latency_ms": latency.as_secs_f64() * 1e3, "attempts": attempts,
            }),
            Event::OnionRelayed { from, to } => {
                json!({"from": from.to_string(), "to": to.to_string()})
            }
            Event::MessageStored { id, peer, holders } => {
                json!({"id": id.to_string(), "peer": peer.to_string(), "holders": holders})
            }
            Event::DeliveryFailed { id, peer, attempts } => {
                json!({"id": id.to_string(), "peer": peer.to_string(), "attempts": attempts})
            }
            Event::Error { context, message } => json!({"context": context, "message": message}),
            Event::Lagged { missed } => json!({"missed": missed}),
        }
    }
}

/// A decrypted private message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// Its id (bound to sender, recipient, time and content).
    pub id: MessageId,
    /// The authenticated sender.
    pub from: NodeId,
    /// The sender's content type, e.g. `text/plain`.
    pub content_type: String,
    /// The content.
    pub content: Bytes,
    /// The sender's clock when it was sent, Unix milliseconds.
    pub sent_at_ms: u64,
    /// The transport of the connection the sender's session delivered it on (`Relayed` for a
    /// bridge circuit); `None` when it came through a mailbox holder or an onion circuit.
    pub via: Option<TransportKind>,
}

/// A verified broadcast and the neighbour that passed it on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedBroadcast {
    /// The broadcast, signature checked.
    pub broadcast: VerifiedBroadcast,
    /// The peer we received it from (not necessarily its author).
    pub via: NodeId,
}

/// A query from a peer. Clones share one answer: the first [`IncomingQuery::respond`] or
/// [`IncomingQuery::reject`] wins. If every clone is dropped unanswered, the peer receives
/// status 501 ("no handler") at once rather than waiting for its timeout.
#[derive(Clone)]
pub struct IncomingQuery {
    /// The asking peer (authenticated).
    pub from: NodeId,
    /// Method name chosen by the application.
    pub method: String,
    /// Request body.
    pub body: Bytes,
    /// How long the peer will wait for an answer.
    pub timeout: Duration,
    responder: Arc<Responder>,
}

impl fmt::Debug for IncomingQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IncomingQuery")
            .field("from", &self.from)
            .field("method", &self.method)
            .field("body_len", &self.body.len())
            .finish_non_exhaustive()
    }
}

pub(crate) struct Responder {
    pub(crate) node: Weak<Inner>,
    pub(crate) peer: NodeId,
    pub(crate) query_id: [u8; 16],
    pub(crate) answered: Mutex<bool>,
}

impl Responder {
    fn answer(&self, status: u32, body: Bytes, error: String) -> Result<(), SendError> {
        {
            let mut answered = self.answered.lock().unwrap_or_else(|p| p.into_inner());
            if *answered {
                return Ok(());
            }
            *answered = true;
        }
        let node = self.node.upgrade().ok_or(SendError::Stopped)?;
        node.send_query_response(self.peer, self.query_id, status, body, error)
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        let answered = *self.answered.lock().unwrap_or_else(|p| p.into_inner());
        if answered {
            return;
        }
        let Some(node) = self.node.upgrade() else {
            return;
        };
        let (peer, query_id) = (self.peer, self.query_id);
        let answer = move || {
            let _ = node.send_query_response(
                peer,
                query_id,
                501,
                Bytes::new(),
                "no handler answered this query".into(),
            );
        };
        // The last clone can be dropped anywhere, even inside the node while it holds its
        // state lock (an event evicted from a full buffer); answer from a fresh task then.
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move { answer() });
            }
            Err(_) => answer(),
        }
    }
}

impl IncomingQuery {
    pub(crate) fn new(
        from: NodeId,
        method: String,
        body: Bytes,
        timeout: Duration,
        responder: Responder,
    ) -> Self {
        Self {
            from,
            method,
            body,
            timeout,
            responder: Arc::new(responder),
        }
    }

    /// Answers with `body` (status 0, at most 512 KiB). Later answers are ignored.
    pub fn respond(&self, body: impl Into<Bytes>) -> Result<(), SendError> {
        let body = body.into();
        // Checked before the answer is taken, so an oversized body can be replaced.
        if body.len() > crate::wire::MAX_QUERY_BODY {
            return Err(SendError::TooLarge {
                len: body.len(),
                max: crate::wire::MAX_QUERY_BODY,
            });
        }
        self.responder.answer(0, body, String::new())
    }

    /// Answers with an error `status` (non-zero) and a message for the asking peer.
    pub fn reject(&self, status: u32, message: impl Into<String>) -> Result<(), SendError> {
        let mut message: String = message.into();
        if message.len() > 1024 {
            let mut cut = 1024;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        self.responder.answer(status.max(1), Bytes::new(), message)
    }
}

/// The node's events as a [`Stream`]. Each subscriber has its own bounded buffer
/// (`limits.event_buffer`); one that falls behind gets [`Event::Lagged`] instead of blocking
/// the node or growing without bound.
pub struct EventStream {
    future: ReusableBoxFuture<
        'static,
        (
            Result<Event, broadcast::error::RecvError>,
            broadcast::Receiver<Event>,
        ),
    >,
}

async fn next_event(
    mut rx: broadcast::Receiver<Event>,
) -> (
    Result<Event, broadcast::error::RecvError>,
    broadcast::Receiver<Event>,
) {
    let result = rx.recv().await;
    (result, rx)
}

impl EventStream {
    pub(crate) fn new(rx: broadcast::Receiver<Event>) -> Self {
        Self {
            future: ReusableBoxFuture::new(next_event(rx)),
        }
    }

    /// Waits for the next event; `None` once the node has stopped.
    pub async fn recv(&mut self) -> Option<Event> {
        futures_util::StreamExt::next(self).await
    }
}

impl fmt::Debug for EventStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStream").finish_non_exhaustive()
    }
}

impl Stream for EventStream {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let (result, rx) = futures_util::ready!(self.future.poll(cx));
        self.future.set(next_event(rx));
        Poll::Ready(match result {
            Ok(event) => Some(event),
            Err(broadcast::error::RecvError::Lagged(missed)) => Some(Event::Lagged { missed }),
            Err(broadcast::error::RecvError::Closed) => None,
        })
    }
}

/// A bidirectional byte stream with a peer, for RPC or file transfer. Reads and writes like a
/// socket; flow control comes from the transport (QUIC or yamux), so a slow reader slows the
/// writer instead of filling memory. Call `shutdown()` to signal the end of what you send.
pub struct PeerStream {
    peer: NodeId,
    protocol: String,
    send: SendHalf,
    recv: RecvHalf,
}

impl fmt::Debug for PeerStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerStream")
            .field("peer", &self.peer)
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

impl PeerStream {
    pub(crate) fn new(peer: NodeId, protocol: String, send: SendHalf, recv: RecvHalf) -> Self {
        Self {
            peer,
            protocol,
            send,
            recv,
        }
    }

    /// The peer on the other end (authenticated).
    pub fn peer(&self) -> NodeId {
        self.peer
    }

    /// The application protocol name the stream was opened with.
    pub fn protocol(&self) -> &str {
        &self.protocol
    }

    /// Splits into independently usable halves.
    pub fn into_split(self) -> (SendHalf, RecvHalf) {
        (self.send, self.recv)
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.recv).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.send).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.send).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.send).poll_shutdown(cx)
    }
}

/// Streams peers open with one protocol name. Dropping it stops accepting: later streams
/// for the protocol are reset.
#[derive(Debug)]
pub struct StreamListener {
    pub(crate) protocol: String,
    pub(crate) rx: mpsc::Receiver<PeerStream>,
}

impl StreamListener {
    /// The next stream a peer opened; `None` once the node has stopped.
    pub async fn accept(&mut self) -> Option<PeerStream> {
        self.rx.recv().await
    }

    /// The protocol this listener accepts.
    pub fn protocol(&self) -> &str {
        &self.protocol
    }
}
