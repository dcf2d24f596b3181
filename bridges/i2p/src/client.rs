//! One SAM v3 connection to the router: `HELLO`, then one command.
//!
//! SAM uses a TCP connection per purpose: the one that created a session keeps it alive (the
//! router ends the session when it closes), and every `STREAM CONNECT` or `STREAM ACCEPT`
//! takes a fresh connection that becomes the I2P stream once the router answers `OK`.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::dest;
use crate::error::SamError;
use crate::sam::{self, Reply};

/// How long each step may take. I2P is slow: a session builds tunnels before it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SamTimeouts {
    /// TCP connect and `HELLO`.
    pub hello: Duration,
    /// `SESSION CREATE` (tunnels are built first: ~20 s on i2pd, minutes on a busy router).
    pub session: Duration,
    /// `STREAM CONNECT` to a destination (lease set lookup and the streaming handshake).
    pub connect: Duration,
    /// Other commands (`NAMING LOOKUP`, `DEST GENERATE`).
    pub command: Duration,
}

impl Default for SamTimeouts {
    fn default() -> Self {
        Self {
            hello: Duration::from_secs(10),
            session: Duration::from_secs(180),
            connect: Duration::from_secs(90),
            command: Duration::from_secs(30),
        }
    }
}

/// The stream an I2P connection runs over once the router answered `OK`. Bytes the router
/// sent right after its reply are kept in the buffer, never lost.
pub type SamStream = BufReader<TcpStream>;

/// A SAM connection that has said `HELLO`.
#[derive(Debug)]
pub struct SamConnection {
    io: SamStream,
    version: String,
    timeouts: SamTimeouts,
}

impl SamConnection {
    /// Connects to the router's SAM port and negotiates version 3.1 to 3.3.
    pub async fn connect(addr: SocketAddr, timeouts: SamTimeouts) -> Result<Self, SamError> {
        let tcp = tokio::time::timeout(timeouts.hello, TcpStream::connect(addr))
            .await
            .map_err(|_| SamError::Timeout {
                step: "connecting to the SAM port",
                after: timeouts.hello,
            })?
            .map_err(|e| SamError::Io(format!("cannot connect to SAM at {addr}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let mut conn = Self {
            io: BufReader::new(tcp),
            version: String::new(),
            timeouts,
        };
        let reply = conn
            .command("HELLO VERSION MIN=3.1 MAX=3.3", "HELLO", timeouts.hello)
            .await?;
        match reply.expect_ok("HELLO", "REPLY") {
            Ok(_) => {}
            Err(SamError::Refused { result, message }) => {
                return Err(SamError::Version(format!("{result} {message}")));
            }
            Err(e) => return Err(e),
        }
        let version = reply.require("VERSION")?;
        if !matches!(version, "3.1" | "3.2" | "3.3") {
            return Err(SamError::Version(format!("the router chose {version}")));
        }
        conn.version = version.to_owned();
        Ok(conn)
    }

    /// The SAM version the router chose.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Sends one command line and reads one reply within `timeout`.
    async fn command(
        &mut self,
        line: &str,
        step: &'static str,
        timeout: Duration,
    ) -> Result<Reply, SamError> {
        tokio::time::timeout(timeout, async {
            // One write: i2pd parses what one read returns, and a command split across
            // reads is dropped with the connection.
            let mut bytes = Vec::with_capacity(line.len() + 1);
            bytes.extend_from_slice(line.as_bytes());
            bytes.push(b'\n');
            let io = self.io.get_mut();
            io.write_all(&bytes).await.map_err(SamError::io)?;
            io.flush().await.map_err(SamError::io)?;
            let reply = sam::read_line(&mut self.io).await?;
            sam::parse_reply(&reply)
        })
        .await
        .map_err(|_| SamError::Timeout {
            step,
            after: timeout,
        })?
    }

    /// Creates a STREAM session named `id` for a private destination (base64) or, with
    /// `None`, a fresh one. Returns the session's private destination. The session lives as
    /// long as this connection stays open.
    pub async fn session_create(
        &mut self,
        id: &str,
        private: Option<&str>,
        options: &[String],
    ) -> Result<String, SamError> {
        let destination = match private {
            Some(p) => {
                dest::public_of(p)?;
                p.to_owned()
            }
            None => "TRANSIENT".to_owned(),
        };
        let mut line = format!(
            "SESSION CREATE STYLE=STREAM ID={} DESTINATION={destination} SIGNATURE_TYPE=7",
            sam::command_value(id)?
        );
        for option in options {
            let (key, value) = option.split_once('=').ok_or_else(|| {
                SamError::InvalidArgument(format!("session option {option:?} is not key=value"))
            })?;
            if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.') {
                return Err(SamError::InvalidArgument(format!(
                    "session option key {key:?}"
                )));
            }
            line.push_str(&format!(" {key}={}", sam::command_value(value)?));
        }
        let reply = self
            .command(&line, "SESSION CREATE", self.timeouts.session)
            .await?;
        reply.expect_ok("SESSION", "STATUS")?;
        let private = reply.require("DESTINATION")?.to_owned();
        dest::public_of(&private)?;
        Ok(private)
    }

    /// Holds the connection (and so a session created on it) open until the router closes
    /// it; returns why it ended. Answers the router's keep-alive `PING`s (SAM 3.2) and
    /// ignores anything else it sends, line by line within the usual limits.
    pub async fn wait_closed(mut self) -> SamError {
        loop {
            let line = match sam::read_line(&mut self.io).await {
                Ok(line) => line,
                Err(e) => return e,
            };
            if let Some(rest) = line.strip_prefix(b"PING") {
                let mut pong = b"PONG".to_vec();
                pong.extend_from_slice(rest);
                if let Err(e) = self.io.get_mut().write_all(&pong).await {
                    return SamError::io(e);
                }
            }
        }
    }

    /// Resolves a name (`….b32.i2p`, `ME`) to a base64 destination.
    pub async fn naming_lookup(&mut self, name: &str) -> Result<String, SamError> {
        let line = format!("NAMING LOOKUP NAME={}", sam::command_value(name)?);
        let reply = self
            .command(&line, "NAMING LOOKUP", self.timeouts.command)
            .await?;
        reply.expect_ok("NAMING", "REPLY")?;
        let value = reply.require("VALUE")?.to_owned();
        dest::public_len(&dest::decode_base64(&value)?)?;
        Ok(value)
    }

    /// Connects session `id` to `destination` (base64 or `.b32.i2p`); the connection becomes
    /// the stream.
    pub async fn stream_connect(
        mut self,
        id: &str,
        destination: &str,
    ) -> Result<SamStream, SamError> {
        let line = format!(
            "STREAM CONNECT ID={} DESTINATION={} SILENT=false",
            sam::command_value(id)?,
            sam::command_value(destination)?
        );
        let reply = self
            .command(&line, "STREAM CONNECT", self.timeouts.connect)
            .await?;
        reply.expect_ok("STREAM", "STATUS")?;
        Ok(self.io)
    }

    /// Asks session `id` for the next incoming stream. Returns once the router registered
    /// the accept; [`PendingAccept::peer`] waits for a peer.
    pub async fn stream_accept(mut self, id: &str) -> Result<PendingAccept, SamError> {
        let line = format!("STREAM ACCEPT ID={} SILENT=false", sam::command_value(id)?);
        let reply = self
            .command(&line, "STREAM ACCEPT", self.timeouts.command)
            .await?;
        reply.expect_ok("STREAM", "STATUS")?;
        Ok(PendingAccept { io: self.io })
    }
}

/// A `STREAM ACCEPT` the router acknowledged, waiting for a peer.
#[derive(Debug)]
pub struct PendingAccept {
    io: SamStream,
}

impl PendingAccept {
    /// Waits for a peer to connect; returns its base64 destination and the stream.
    pub async fn peer(mut self) -> Result<(String, SamStream), SamError> {
        let line = sam::read_line(&mut self.io).await?;
        let text = std::str::from_utf8(&line)
            .map_err(|_| SamError::Malformed("peer line is not ASCII".into()))?
            .trim_end_matches(['\n', '\r']);
        // `<destination>` (3.1) or `<destination> FROM_PORT=… TO_PORT=…` (3.2+).
        let destination = text.split(' ').next().unwrap_or_default();
        if destination.is_empty() {
            return Err(SamError::Malformed("empty peer line".into()));
        }
        dest::public_len(&dest::decode_base64(destination)?)?;
        Ok((destination.to_owned(), self.io))
    }
}
