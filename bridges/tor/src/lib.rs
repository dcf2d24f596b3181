//! Meshara over Tor.
//!
//! An embedded Tor client ([arti](https://arti.torproject.org)) lets a node dial peers at
//! their `.onion` addresses and be reached as an onion service itself, without a Tor daemon
//! on the machine and without revealing its IP address to anyone. The onion service keys
//! live in the node's data directory (arti's keystore), so the `.onion` address survives
//! restarts. With [`NodeConfig::route_all_via`](meshara_core::NodeConfig::route_all_via) set
//! to Tor, every outbound connection goes through Tor: onion addresses end to end, TCP
//! addresses through exit relays. The Meshara protocol runs unchanged on top: TLS 1.3 with
//! the node's identity key, then yamux.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use meshara_core::{Identity, NodeBuilder, NodeConfig, Transport};
//! use meshara_tor::{TorConfig, TorTransport};
//!
//! let tor = TorTransport::start(TorConfig::new(std::path::Path::new("/var/lib/myapp"))).await?;
//! let onion = tor.address().expect("an onion service is hosted by default");
//! let config = NodeConfig {
//!     listen_quic: None,          // reachable only as an onion service
//!     advertise: vec![onion],     // tor://<56 chars>.onion:7340
//!     route_all_via: Some(Transport::Tor),
//!     ..NodeConfig::default()
//! };
//! let node = NodeBuilder::new()
//!     .config(config)
//!     .identity(Identity::generate())
//!     .dialer(Transport::Tor, tor.dialer())
//!     .start()
//!     .await?;
//! let _accepting = tor.serve(node.clone())?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`TorConfig`]: where the keys and caches live, which Tor network, the onion service.
//! - [`TorTransport`]: the client, the onion service, the dialer and the accept loop.
//! - `testing` (feature `test-utils`): a private Tor network of C `tor` processes on
//!   loopback, and arti configured for it.

#![deny(missing_docs)]

mod error;
#[cfg(feature = "test-utils")]
pub mod testing;
mod transport;

/// arti's configuration types, for [`TorConfig::client`] (bridges, pluggable transports,
/// a private test network).
pub use arti_client::config as arti_config;
pub use error::TorError;
pub use transport::{
    DEFAULT_PORT, OnionState, ServeHandle, TorConfig, TorStatus, TorTransport, is_onion_host,
};
