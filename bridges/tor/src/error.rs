//! Errors of the Tor transport.

use std::time::Duration;

/// What went wrong starting or using the Tor transport.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TorError {
    /// The arti configuration is invalid (a bad directory, an unknown option).
    #[error("Tor configuration: {0}")]
    Config(String),
    /// The state or cache directory could not be created.
    #[error("Tor data directory {path}: {reason}")]
    DataDir {
        /// The directory.
        path: String,
        /// What failed.
        reason: String,
    },
    /// The client could not join the Tor network (no directory, no guards).
    #[error("joining the Tor network failed: {0}")]
    Bootstrap(String),
    /// A step did not finish in the time allowed.
    #[error("Tor: no progress within {after:?} ({step})")]
    Timeout {
        /// What we were waiting for.
        step: &'static str,
        /// How long we waited.
        after: Duration,
    },
    /// The onion service could not be launched (keystore, configuration).
    #[error("onion service: {0}")]
    OnionService(String),
    /// The transport was started without an onion service, or its requests are already
    /// being served.
    #[error("this Tor transport has no onion service to serve ({0})")]
    NoOnionService(&'static str),
    /// A stream could not be opened.
    #[error("over Tor to {target}: {reason}")]
    Connect {
        /// Where to.
        target: String,
        /// Why (arti's error, with its causes).
        reason: String,
    },
    /// An address Tor cannot reach as asked (not an onion address where one is needed).
    #[error("{0}")]
    Address(String),
}

/// An arti error with its chain of causes, on one line.
pub(crate) fn report(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}
