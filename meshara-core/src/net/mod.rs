//! The networking runtime (feature `net`): transports, the [`Node`] API, discovery, limits and
//! metrics.
//!
//! | module | what it holds |
//! |---|---|
//! | `tls` | TLS 1.3 with raw Ed25519 keys (RFC 7250): the identity check both transports share |
//! | [`transport`] | the [`Connection`] seam, QUIC (quinn) and TLS-over-byte-stream (TCP, Tor, I2P) |
//! | `core` | connection manager, per-connection tasks, envelope dispatch, sessions, timers |
//! | `node` | [`NodeBuilder`] and [`Node`], the developer API |
//! | [`config`] | [`NodeConfig`], [`Limits`], [`Timeouts`], [`PeerAddr`] |
//! | `events` | [`Event`], [`EventStream`], [`IncomingQuery`], [`PeerStream`] |
//! | `gossip` | one broadcast overlay per topic: drives [`crate::routing::gossip::Topic`] over the node's connections |
//! | `onion` | onion circuits, cover traffic, relaying and delivering onion packets |
//! | `relay` | store-and-forward deposits, mailbox hand-over and one-hop relaying of sealed messages |
//! | `discovery` | mDNS announcement and discovery |
//! | `metrics` | Prometheus metrics, [`DropReason`] |
//!
//! The protocol decisions (what to resend, when a delivery has failed, how fast a peer may
//! send) are pure state machines outside this module ([`crate::delivery`], [`crate::rate`]);
//! this module only moves bytes and time into them.

mod circuit;
pub mod config;
mod core;
mod discovery;
mod error;
mod events;
mod gossip;
mod metrics;
mod node;
mod onion;
mod relay;
#[cfg(feature = "test-utils")]
pub mod testing;
mod tls;
pub mod transport;

#[cfg(test)]
mod tests;

pub use config::{Bridge, Limits, NodeConfig, Onion, PeerAddr, Timeouts};
pub use core::Delivered;
pub(crate) use core::unix_secs;
pub use discovery::MDNS_SERVICE;
pub use error::{DeliveryError, QueryError, SendError, StartError, StreamError, TransportError};
pub use events::{
    Event, EventStream, IncomingQuery, PeerStream, ReceivedBroadcast, ReceivedMessage,
    StreamListener,
};
pub use metrics::DropReason;
pub use node::{
    BootstrapStatus, Diagnostics, NetworkStats, Node, NodeBuilder, PeerInfo, PendingDelivery,
    TopicInfo,
};
pub use transport::{BoxedStream, ByteStream, Connection, Dialer, TransportKind};
