//! Meshara over I2P.
//!
//! A node that cannot (or should not) be reached at an IP address can be reached at an I2P
//! destination instead: this crate talks to an I2P router (i2pd or Java I2P) over its SAM v3
//! bridge, keeps a persistent destination so the node's `.b32.i2p` address survives restarts,
//! dials `i2p://….b32.i2p` record addresses and feeds incoming I2P streams to the node. The
//! Meshara protocol runs unchanged on top: TLS 1.3 with the node's identity key, then yamux.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use meshara_core::{Identity, NodeBuilder, NodeConfig, Transport};
//! use meshara_i2p::{I2pConfig, I2pTransport};
//!
//! let i2p = I2pTransport::start(I2pConfig::new(
//!     "127.0.0.1:7656".parse()?,
//!     std::path::Path::new("/var/lib/myapp"),
//! ))
//! .await?;
//! let mut config = NodeConfig::default();
//! config.advertise.push(i2p.address()); // i2p://<52 chars>.b32.i2p:7340
//! let node = NodeBuilder::new()
//!     .config(config)
//!     .identity(Identity::generate())
//!     .dialer(Transport::I2p, i2p.dialer())
//!     .start()
//!     .await?;
//! let _accepting = i2p.serve(node.clone());
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`sam`]: the SAM line grammar, parsed strictly with size limits (fuzzed).
//! - [`dest`]: I2P base64, destination structure, `.b32.i2p` names.
//! - [`SamConnection`]: one SAM connection (`HELLO`, then a command).
//! - [`I2pTransport`]: the session, the dialer and the accept loop.

#![deny(missing_docs)]

mod client;
pub mod dest;
mod error;
pub mod sam;
#[cfg(feature = "test-utils")]
pub mod testing;
mod transport;

pub use client::{PendingAccept, SamConnection, SamStream, SamTimeouts};
pub use error::SamError;
pub use transport::{DEFAULT_PORT, I2pConfig, I2pTransport, ServeHandle};
