//! Errors of the SAM client and the I2P transport.

use std::time::Duration;

/// What went wrong talking to the I2P router or over I2P.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SamError {
    /// The router's SAM port could not be reached or the socket failed.
    #[error("SAM I/O error: {0}")]
    Io(String),
    /// The router closed the SAM connection before answering.
    #[error("the I2P router closed the SAM connection before answering")]
    RouterClosed,
    /// No answer within the time allowed for this step.
    #[error("no answer from the I2P router within {after:?} ({step})")]
    Timeout {
        /// What we were waiting for.
        step: &'static str,
        /// How long we waited.
        after: Duration,
    },
    /// A reply line longer than the limit.
    #[error("a SAM reply longer than {limit} bytes")]
    LineTooLong {
        /// The limit, in bytes.
        limit: usize,
    },
    /// A reply that does not follow the SAM grammar, or lacks what it must carry.
    #[error("malformed SAM reply: {0}")]
    Malformed(String),
    /// The router answered with a result other than `OK` (`CANT_REACH_PEER`, `INVALID_KEY`,
    /// `DUPLICATED_ID`, `I2P_ERROR`, …).
    #[error("the I2P router refused: {result}{}", if message.is_empty() { String::new() } else { format!(" ({message})") })]
    Refused {
        /// The router's `RESULT`.
        result: String,
        /// The router's `MESSAGE`, if any.
        message: String,
    },
    /// The router speaks no SAM version we support (we need 3.1 or later).
    #[error("the I2P router does not speak SAM 3.1 or later: {0}")]
    Version(String),
    /// A value the protocol cannot carry (a newline in a name, non-ASCII).
    #[error("invalid SAM argument: {0}")]
    InvalidArgument(String),
    /// The persisted destination keys could not be read or written.
    #[error("I2P destination keys at {path}: {reason}")]
    Keys {
        /// The key file.
        path: String,
        /// What failed.
        reason: String,
    },
}

impl SamError {
    pub(crate) fn io(e: std::io::Error) -> Self {
        SamError::Io(e.to_string())
    }
}
