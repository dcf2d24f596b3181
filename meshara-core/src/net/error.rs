//! Errors of the networking runtime, one enum per area.

use std::time::Duration;

use crate::delivery::Privacy;
use crate::identity::NodeId;
use crate::message::MessageId;

/// TLS alert `no_application_protocol` (RFC 7301): the peer does not speak our ALPN.
const ALERT_NO_APPLICATION_PROTOCOL: u8 = 120;

/// Why a connection could not be made or was lost.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The peer proved a different identity than the NodeId we dialed.
    #[error("wrong peer: dialed {expected} but the peer proved a different key")]
    WrongPeer {
        /// The NodeId we meant to reach.
        expected: NodeId,
    },
    /// The peer does not speak our protocol version (ALPN).
    #[error(
        "protocol version mismatch: we speak {ours}, the peer {}",
        theirs.as_deref().map_or("offered none we support".to_owned(), |t| format!("speaks {t}"))
    )]
    ProtocolMismatch {
        /// Our ALPN, e.g. `meshara/1`.
        ours: String,
        /// What the peer selected, when it told us.
        theirs: Option<String>,
    },
    /// The TLS handshake failed.
    #[error("TLS handshake failed: {0}")]
    Tls(rustls::Error),
    /// The TLS session finished without a usable peer key.
    #[error("the peer presented no Ed25519 identity key")]
    NoPeerIdentity,
    /// The connection attempt failed before TLS (address, socket, unreachable host).
    #[error("cannot connect: {0}")]
    Connect(String),
    /// No answer within the handshake timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The connection was closed.
    #[error("connection closed: {0}")]
    Closed(String),
    /// An I/O error on the underlying stream.
    #[error("I/O error: {0}")]
    Io(String),
    /// A bridge would not relay a circuit to the peer (not a bridge, not allowed, over its
    /// limits, or the peer was unreachable from it).
    #[error("bridge {bridge} refused the circuit: {reason}")]
    CircuitRefused {
        /// The bridge asked.
        bridge: NodeId,
        /// What it answered.
        reason: String,
    },
}

impl TransportError {
    pub(crate) fn from_quic_handshake(
        error: quinn::ConnectionError,
        expected: Option<NodeId>,
    ) -> Self {
        let alpn_refused = quinn::TransportErrorCode::crypto(ALERT_NO_APPLICATION_PROTOCOL);
        match error {
            quinn::ConnectionError::TransportError(e) => {
                if let (Some(expected), true) =
                    (expected, e.reason.contains(super::tls::WRONG_PEER))
                {
                    TransportError::WrongPeer { expected }
                } else if e.code == alpn_refused {
                    Self::protocol_mismatch()
                } else {
                    TransportError::Closed(format!("handshake failed: {e}"))
                }
            }
            quinn::ConnectionError::ConnectionClosed(close) if close.error_code == alpn_refused => {
                Self::protocol_mismatch()
            }
            other => TransportError::from(other),
        }
    }

    pub(crate) fn from_tls_io(error: std::io::Error, expected: Option<NodeId>) -> Self {
        let text = error.to_string();
        if let (Some(expected), true) = (expected, text.contains(super::tls::WRONG_PEER)) {
            return TransportError::WrongPeer { expected };
        }
        match error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            Some(rustls::Error::NoApplicationProtocol)
            | Some(rustls::Error::AlertReceived(rustls::AlertDescription::NoApplicationProtocol)) => {
                Self::protocol_mismatch()
            }
            Some(tls) => TransportError::Tls(tls.clone()),
            None => TransportError::Io(text),
        }
    }

    fn protocol_mismatch() -> Self {
        TransportError::ProtocolMismatch {
            ours: String::from_utf8_lossy(crate::wire::ALPN).into_owned(),
            theirs: None,
        }
    }
}

impl From<quinn::ConnectionError> for TransportError {
    fn from(error: quinn::ConnectionError) -> Self {
        match error {
            quinn::ConnectionError::ApplicationClosed(close) => TransportError::Closed(format!(
                "peer closed the connection (code {}): {}",
                close.error_code,
                String::from_utf8_lossy(&close.reason)
            )),
            quinn::ConnectionError::TimedOut => TransportError::Closed("idle timeout".into()),
            quinn::ConnectionError::LocallyClosed => {
                TransportError::Closed("closed locally".into())
            }
            other => TransportError::Closed(other.to_string()),
        }
    }
}

impl From<std::io::Error> for TransportError {
    fn from(error: std::io::Error) -> Self {
        TransportError::Io(error.to_string())
    }
}

/// Why a node could not be built or started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The node needs an identity: [`crate::NodeBuilder::identity`] or a keystore.
    #[error("no identity configured: set an identity or a keystore path")]
    NoIdentity,
    /// The keystore could not be opened or created.
    #[error(transparent)]
    Keystore(#[from] crate::keystore::KeystoreError),
    /// The identity file ([`crate::NodeConfig::identity_file`]) was refused.
    #[error(transparent)]
    KeyFile(#[from] crate::keyfile::KeyFileError),
    /// A listening socket could not be bound.
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        error: std::io::Error,
    },
    /// The node's own record could not be signed (too many addresses, bad host name, …).
    #[error("cannot sign the node record: {0}")]
    Record(#[from] crate::record::RecordError),
    /// TLS or QUIC configuration failed.
    #[error("transport setup failed: {0}")]
    Transport(#[from] TransportError),
    /// A configuration value is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// Why a message, query or stream could not be sent.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The content exceeds the node's maximum message size.
    #[error("message of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Bytes offered.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The message is malformed (empty topic, over-long content type, …).
    #[error("invalid message: {0}")]
    Invalid(String),
    /// Too many messages are already waiting for acknowledgement.
    #[error("outbox full: {0} messages are awaiting acknowledgement")]
    OutboxFull(usize),
    /// The peer is banned.
    #[error("peer {0} is banned")]
    Banned(NodeId),
    /// The message is addressed to this node itself.
    #[error("cannot send to ourselves")]
    ToSelf,
    /// No connection to the peer could be established and nothing is known about its address.
    #[error("no route to {0}: not connected and no known address")]
    NoRoute(NodeId),
    /// The connection failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The node is stopping or stopped.
    #[error("the node is stopped")]
    Stopped,
    /// A broadcast on a new topic while the node already carries `max_topics` topics.
    #[error("topic limit reached: this node already carries {0} topics")]
    TopicLimit(usize),
    /// A message that may travel only over Tor or I2P ([`Privacy::Tor`], [`Privacy::I2p`]),
    /// but this node has no such transport (no dialer for it) and no connection over it.
    #[error("{} privacy needs a {} transport on this node, and it has none", .0.as_str(), .0.as_str())]
    NoTransport(Privacy),
    /// An onion-routed message, but the node knows too few relays to build a circuit.
    #[error("onion routing needs {need} relays; this node knows {have}")]
    TooFewRelays {
        /// Relays known (verified records advertising the relay capability).
        have: usize,
        /// `onion.hops`.
        need: usize,
    },
}

/// Why a private message was not confirmed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum DeliveryError {
    /// No end-to-end acknowledgement after every retry.
    #[error("message {id} to {peer} unacknowledged after {attempts} attempts")]
    Unacknowledged {
        /// The message.
        id: MessageId,
        /// Its recipient.
        peer: NodeId,
        /// How many times it was sent.
        attempts: u32,
    },
    /// The node stopped before the acknowledgement arrived.
    #[error("the node stopped before message {0} was acknowledged")]
    Stopped(MessageId),
    /// Nobody knows the recipient: it is not a configured peer, the node holds no record of it,
    /// and a DHT lookup that reached other nodes did not find one. Reported as soon as that
    /// lookup ends, not at the delivery deadline; the message was never sent.
    #[error("message {id}: no node knows {peer} (not found in the DHT)")]
    NotFound {
        /// The message.
        id: MessageId,
        /// Its recipient.
        peer: NodeId,
    },
}

/// Why a query got no answer.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// The query could not be sent.
    #[error(transparent)]
    Send(#[from] SendError),
    /// No response within the timeout.
    #[error("no response from {peer} within {timeout:?}")]
    Timeout {
        /// The peer asked.
        peer: NodeId,
        /// The timeout.
        timeout: Duration,
    },
    /// The peer answered with an error status.
    #[error("{peer} answered status {status}: {message}")]
    Rejected {
        /// The peer asked.
        peer: NodeId,
        /// Non-zero status.
        status: u32,
        /// The peer's explanation.
        message: String,
    },
    /// The node stopped while waiting.
    #[error("the node stopped")]
    Stopped,
    /// Nobody knows the peer: it is not a configured peer, the node holds no record of it,
    /// and a DHT lookup that reached other nodes did not find one. Reported as soon as that
    /// lookup ends, not at the timeout; the query was never sent.
    #[error("no node knows {peer} (not found in the DHT)")]
    NotFound {
        /// The peer asked.
        peer: NodeId,
    },
}

/// Why a byte stream to a peer could not be opened.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// The protocol name is empty or longer than 255 bytes.
    #[error("invalid stream protocol name: must be 1..=255 bytes")]
    InvalidProtocol,
    /// The connection failed.
    #[error(transparent)]
    Send(#[from] SendError),
    /// Opening or writing the stream failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
}
