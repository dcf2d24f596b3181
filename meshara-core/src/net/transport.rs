//! The transport seam: one trait for an authenticated, multiplexed connection to a peer, and
//! its two implementations.
//!
//! - [`QuicConnection`]: quinn over UDP, TLS 1.3 built into QUIC. The default.
//! - [`StreamConnection`]: TLS 1.3 (the same raw-key identity check) over *any* reliable byte
//!   stream, multiplexed with yamux. Plain TCP is the first adapter; Tor and I2P streams plug in
//!   the same way: hand a connected `AsyncRead + AsyncWrite` to [`StreamConnection::connect`] or
//!   [`StreamConnection::accept`] (or to [`crate::Node::connect_stream`] /
//!   [`crate::Node::accept_stream`], which also register the connection with the node).
//!
//! Everything above this module sees only [`Connection`]: open or accept a bidirectional byte
//! stream, learn the peer's verified [`NodeId`], close.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::future::poll_fn;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Mutex, mpsc, oneshot, watch};
use tokio_util::compat::{FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

use super::error::TransportError;
use super::tls;
use crate::identity::{Identity, NodeId};
use crate::wire::ALPN;

/// The sending half of a stream.
pub type SendHalf = Box<dyn AsyncWrite + Send + Unpin>;
/// The receiving half of a stream.
pub type RecvHalf = Box<dyn AsyncRead + Send + Unpin>;
/// A boxed future, as returned by [`Connection`]'s methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Which transport carries a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TransportKind {
    /// QUIC over UDP.
    Quic,
    /// TLS 1.3 over TCP.
    Tcp,
    /// TLS 1.3 over another byte stream handed in by the application (a test pipe, …).
    Stream,
    /// TLS 1.3 over a Tor stream (an onion service, or a clearnet address through an exit).
    Tor,
    /// TLS 1.3 over an I2P streaming connection.
    I2p,
    /// TLS 1.3 end to end through a bridge's circuit (docs/protocol.md §15.15): the bridge
    /// splices bytes it cannot read between two of its connections.
    Relayed,
}

impl TransportKind {
    /// Short lowercase name, as used in metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::Quic => "quic",
            TransportKind::Tcp => "tcp",
            TransportKind::Stream => "stream",
            TransportKind::Tor => "tor",
            TransportKind::I2p => "i2p",
            TransportKind::Relayed => "relayed",
        }
    }
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An authenticated connection to one peer, over any transport.
pub trait Connection: Send + Sync + fmt::Debug + 'static {
    /// The peer's NodeId, proven during the TLS handshake.
    fn peer(&self) -> NodeId;
    /// The transport underneath.
    fn kind(&self) -> TransportKind;
    /// The peer's socket address, where the transport has one.
    fn remote_addr(&self) -> Option<SocketAddr>;
    /// Round-trip time as measured by the transport, where it measures one.
    fn rtt(&self) -> Option<Duration>;
    /// Opens a new bidirectional stream.
    fn open_bi(&self) -> BoxFuture<'_, Result<(SendHalf, RecvHalf), TransportError>>;
    /// Waits for the peer to open a bidirectional stream.
    fn accept_bi(&self) -> BoxFuture<'_, Result<(SendHalf, RecvHalf), TransportError>>;
    /// Closes the connection, telling the peer why.
    fn close(&self, code: u32, reason: &str);
    /// Resolves when the connection is closed, with the reason.
    fn closed(&self) -> BoxFuture<'_, TransportError>;
}

// ---------------------------------------------------------------------------------------------
// QUIC

/// A QUIC connection (quinn) whose peer proved its identity key.
#[derive(Debug, Clone)]
pub struct QuicConnection {
    inner: quinn::Connection,
    peer: NodeId,
}

impl QuicConnection {
    /// Wraps an established quinn connection, reading the peer's NodeId from the TLS session.
    pub fn new(inner: quinn::Connection) -> Result<Self, TransportError> {
        let peer = inner
            .peer_identity()
            .and_then(|any| {
                any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                    .ok()
            })
            .and_then(|certs| tls::peer_node_id(&certs))
            .ok_or(TransportError::NoPeerIdentity)?;
        Ok(Self { inner, peer })
    }

    /// The underlying quinn connection.
    pub fn quinn(&self) -> &quinn::Connection {
        &self.inner
    }
}

impl Connection for QuicConnection {
    fn peer(&self) -> NodeId {
        self.peer
    }

    fn kind(&self) -> TransportKind {
        TransportKind::Quic
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        Some(self.inner.remote_address())
    }

    fn rtt(&self) -> Option<Duration> {
        Some(self.inner.rtt())
    }

    fn open_bi(&self) -> BoxFuture<'_, Result<(SendHalf, RecvHalf), TransportError>> {
        Box::pin(async move {
            let (send, recv) = self.inner.open_bi().await.map_err(TransportError::from)?;
            Ok((Box::new(send) as SendHalf, Box::new(recv) as RecvHalf))
        })
    }

    fn accept_bi(&self) -> BoxFuture<'_, Result<(SendHalf, RecvHalf), TransportError>> {
        Box::pin(async move {
            let (send, recv) = self.inner.accept_bi().await.map_err(TransportError::from)?;
            Ok((Box::new(send) as SendHalf, Box::new(recv) as RecvHalf))
        })
    }

    fn close(&self, code: u32, reason: &str) {
        self.inner
            .close(quinn::VarInt::from_u32(code), reason.as_bytes());
    }

    fn closed(&self) -> BoxFuture<'_, TransportError> {
        Box::pin(async move { TransportError::from(self.inner.closed().await) })
    }
}

// ---------------------------------------------------------------------------------------------
// TLS over a byte stream, multiplexed with yamux

/// Any reliable, ordered byte stream a [`StreamConnection`] can run over.
pub trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> ByteStream for T {}

/// A byte stream behind a box, as a [`Dialer`] returns it.
pub type BoxedStream = Box<dyn ByteStream>;

/// Opens byte streams over a transport the node does not carry itself: Tor, I2P.
///
/// Register one per [`Transport`](crate::Transport) with
/// [`NodeBuilder::dialer`](crate::NodeBuilder::dialer); the node then dials record
/// addresses of that transport through it and runs TLS 1.3 over the stream, exactly as over
/// TCP. With [`NodeConfig::route_all_via`](crate::NodeConfig::route_all_via) the dialer is
/// also handed TCP addresses, so that every outbound connection leaves through it.
pub trait Dialer: Send + Sync + fmt::Debug + 'static {
    /// Opens a reliable byte stream to `address`.
    fn dial<'a>(
        &'a self,
        address: &'a crate::Address,
    ) -> BoxFuture<'a, Result<BoxedStream, TransportError>>;
}

/// Most inbound streams a stream connection buffers before the node accepts them; more are
/// reset rather than queued.
const STREAM_ACCEPT_BACKLOG: usize = 64;

/// Streams per stream-transport connection.
const YAMUX_MAX_STREAMS: usize = 64;
/// Receive window across a connection's streams (yamux requires 256 KiB per stream).
const YAMUX_CONNECTION_WINDOW: usize = YAMUX_MAX_STREAMS * 256 * 1024;
/// Bytes read ahead of yamux: the whole window plus room for control frames.
const READ_AHEAD_BUDGET: usize = YAMUX_CONNECTION_WINDOW + (1 << 20);
/// The most plaintext one TLS record carries (RFC 8446 §5.1).
const TLS_RECORD_PLAINTEXT: usize = 16 * 1024;
/// A yamux frame header.
const YAMUX_HEADER: usize = 12;

/// Keeps reading the socket while yamux is busy writing.
///
/// yamux 0.13 stops reading its socket while it holds a control frame (a pong, a window
/// update) it cannot write yet. When both ends send at full speed, both socket send buffers
/// fill, both ends hold a pong, neither reads: a deadlock. A task
/// that always drains the socket into a buffer breaks the cycle. The buffer stays bounded
/// because a peer cannot send stream data beyond the receive window it was granted; a peer
/// that does only waits on its own socket once [`READ_AHEAD_BUDGET`] is queued.
///
/// It also coalesces writes. yamux writes a frame's header and its body separately, and TLS
/// makes a record of each write, so every frame went out as a 29-byte record (a bare header)
/// followed by its body: a pattern a censor can match. Writes are gathered until yamux
/// flushes (it does after every frame) or until the next one would not fit one TLS record, so
/// a frame and its header travel in one record; yamux's frames are sized to fit one
/// ([`YAMUX_HEADER`] + body ≤ [`TLS_RECORD_PLAINTEXT`]).
struct ReadAhead<S> {
    chunks: mpsc::Receiver<std::io::Result<(bytes::Bytes, tokio::sync::OwnedSemaphorePermit)>>,
    current: Option<(bytes::Bytes, tokio::sync::OwnedSemaphorePermit)>,
    write: tokio::io::WriteHalf<S>,
    /// Written by yamux, not yet passed to TLS; `pending[written..]` is left to pass.
    pending: Vec<u8>,
    written: usize,
    reader: tokio::task::JoinHandle<()>,
}

impl<S: ByteStream> ReadAhead<S> {
    fn new(io: S) -> Self {
        use tokio::io::AsyncReadExt;
        let (mut read, write) = tokio::io::split(io);
        let (tx, chunks) = mpsc::channel(1024);
        let budget = Arc::new(tokio::sync::Semaphore::new(READ_AHEAD_BUDGET));
        let reader = tokio::spawn(async move {
            loop {
                let mut buf = bytes::BytesMut::with_capacity(64 * 1024);
                match read.read_buf(&mut buf).await {
                    Ok(0) => return,
                    Ok(n) => {
                        let permits = u32::try_from(n).unwrap_or(u32::MAX);
                        let Ok(permit) = budget.clone().acquire_many_owned(permits).await else {
                            return;
                        };
                        if tx.send(Ok((buf.freeze(), permit))).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            }
        });
        Self {
            chunks,
            current: None,
            write,
            pending: Vec::with_capacity(TLS_RECORD_PLAINTEXT),
            written: 0,
            reader,
        }
    }

    /// Passes the gathered writes to TLS.
    fn poll_drain(&mut self, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        while self.written < self.pending.len() {
            let n = std::task::ready!(
                Pin::new(&mut self.write).poll_write(cx, &self.pending[self.written..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.pending.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S> Drop for ReadAhead<S> {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl<S: ByteStream> AsyncRead for ReadAhead<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            if let Some((chunk, _)) = &mut self.current {
                if !chunk.is_empty() {
                    let n = chunk.len().min(buf.remaining());
                    buf.put_slice(&chunk.split_to(n));
                    return Poll::Ready(Ok(()));
                }
                self.current = None;
            }
            match self.chunks.poll_recv(cx) {
                Poll::Ready(Some(Ok(chunk))) => self.current = Some(chunk),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<S: ByteStream> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if !this.pending.is_empty() && this.pending.len() + buf.len() > TLS_RECORD_PLAINTEXT {
            std::task::ready!(this.poll_drain(cx))?;
        }
        if buf.len() >= TLS_RECORD_PLAINTEXT {
            // Too large to gather: straight to TLS (nothing is pending any more).
            return Pin::new(&mut this.write).poll_write(cx, buf);
        }
        this.pending.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.write).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.write).poll_shutdown(cx)
    }
}

enum Command {
    Open(oneshot::Sender<Result<yamux::Stream, TransportError>>),
    Close,
}

/// A TLS 1.3 connection over a byte stream (TCP, Tor, I2P, …), multiplexed with yamux.
pub struct StreamConnection {
    peer: NodeId,
    kind: TransportKind,
    remote: Option<SocketAddr>,
    commands: mpsc::Sender<Command>,
    inbound: Mutex<mpsc::Receiver<yamux::Stream>>,
    closed: watch::Receiver<Option<TransportError>>,
}

impl fmt::Debug for StreamConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamConnection")
            .field("peer", &self.peer)
            .field("kind", &self.kind)
            .field("remote", &self.remote)
            .finish_non_exhaustive()
    }
}

impl StreamConnection {
    /// Runs the client side of TLS over `io`, checking the server is `expected` when given,
    /// then starts the multiplexer. `kind` and `remote` only label the connection.
    pub async fn connect<S: ByteStream>(
        io: S,
        identity: &Arc<Identity>,
        expected: Option<NodeId>,
        kind: TransportKind,
        remote: Option<SocketAddr>,
    ) -> Result<Self, TransportError> {
        let config = tls::client_config(identity, expected).map_err(TransportError::Tls)?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = rustls::pki_types::ServerName::try_from(tls::SERVER_NAME)
            .map_err(|e| TransportError::Tls(rustls::Error::General(e.to_string())))?;
        let tls = connector
            .connect(name, io)
            .await
            .map_err(|e| TransportError::from_tls_io(e, expected))?;
        let peer = authenticated_peer(tls.get_ref().1)?;
        Ok(Self::start(tls, yamux::Mode::Client, peer, kind, remote))
    }

    /// Runs the server side of TLS over `io` and starts the multiplexer; the caller's NodeId
    /// is learned from its key.
    pub async fn accept<S: ByteStream>(
        io: S,
        config: Arc<rustls::ServerConfig>,
        kind: TransportKind,
        remote: Option<SocketAddr>,
    ) -> Result<Self, TransportError> {
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let tls = acceptor
            .accept(io)
            .await
            .map_err(|e| TransportError::from_tls_io(e, None))?;
        let peer = authenticated_peer(tls.get_ref().1)?;
        Ok(Self::start(tls, yamux::Mode::Server, peer, kind, remote))
    }

    fn start<S: ByteStream>(
        io: S,
        mode: yamux::Mode,
        peer: NodeId,
        kind: TransportKind,
        remote: Option<SocketAddr>,
    ) -> Self {
        let mut config = yamux::Config::default();
        config.set_max_num_streams(YAMUX_MAX_STREAMS);
        config.set_max_connection_receive_window(Some(YAMUX_CONNECTION_WINDOW));
        // A frame with its header fits one TLS record (see `ReadAhead`).
        config.set_split_send_size(TLS_RECORD_PLAINTEXT - YAMUX_HEADER);
        let connection = yamux::Connection::new(ReadAhead::new(io).compat(), config, mode);
        let (commands, command_rx) = mpsc::channel(64);
        let (inbound_tx, inbound) = mpsc::channel(STREAM_ACCEPT_BACKLOG);
        let (closed_tx, closed) = watch::channel(None);
        tokio::spawn(drive_yamux(connection, command_rx, inbound_tx, closed_tx));
        Self {
            peer,
            kind,
            remote,
            commands,
            inbound: Mutex::new(inbound),
            closed,
        }
    }

    fn closed_error(&self) -> TransportError {
        self.closed
            .borrow()
            .clone()
            .unwrap_or(TransportError::Closed("connection closed".into()))
    }
}

/// The peer a finished TLS session authenticated, after checking it speaks our version.
fn authenticated_peer<D>(session: &rustls::ConnectionCommon<D>) -> Result<NodeId, TransportError> {
    check_alpn(session.alpn_protocol())?;
    session
        .peer_certificates()
        .and_then(tls::peer_node_id)
        .ok_or(TransportError::NoPeerIdentity)
}

fn check_alpn(alpn: Option<&[u8]>) -> Result<(), TransportError> {
    match alpn {
        Some(p) if p == ALPN => Ok(()),
        other => Err(TransportError::ProtocolMismatch {
            ours: String::from_utf8_lossy(ALPN).into_owned(),
            theirs: other.map(|p| String::from_utf8_lossy(p).into_owned()),
        }),
    }
}

/// Owns the yamux connection: opens streams on request, hands inbound streams to the node,
/// and records why the connection ended.
async fn drive_yamux<S: ByteStream>(
    mut connection: yamux::Connection<tokio_util::compat::Compat<ReadAhead<S>>>,
    mut commands: mpsc::Receiver<Command>,
    inbound: mpsc::Sender<yamux::Stream>,
    closed: watch::Sender<Option<TransportError>>,
) {
    let mut waiting: std::collections::VecDeque<
        oneshot::Sender<Result<yamux::Stream, TransportError>>,
    > = Default::default();
    let mut closing = false;
    let result: Result<(), yamux::ConnectionError> = poll_fn(|cx| {
        loop {
            while !closing {
                match commands.poll_recv(cx) {
                    Poll::Ready(Some(Command::Open(reply))) => waiting.push_back(reply),
                    Poll::Ready(Some(Command::Close)) | Poll::Ready(None) => closing = true,
                    Poll::Pending => break,
                }
            }
            if closing {
                return connection.poll_close(cx);
            }
            while !waiting.is_empty() {
                match connection.poll_new_outbound(cx) {
                    Poll::Ready(Ok(stream)) => {
                        if let Some(reply) = waiting.pop_front() {
                            let _ = reply.send(Ok(stream));
                        }
                    }
                    // Our own stream limit: fail this open, keep the connection.
                    Poll::Ready(Err(yamux::ConnectionError::TooManyStreams)) => {
                        if let Some(reply) = waiting.pop_front() {
                            let _ = reply.send(Err(TransportError::Connect(
                                "too many open streams on this connection".into(),
                            )));
                        }
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => break,
                }
            }
            match connection.poll_next_inbound(cx) {
                Poll::Ready(Some(Ok(stream))) => {
                    // A full backlog means the node is not keeping up: drop (reset) the stream
                    // instead of queueing without bound.
                    if inbound.try_send(stream).is_err() {
                        tracing::debug!("inbound stream backlog full; stream reset");
                    }
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await;
    let reason = match result {
        Ok(()) => TransportError::Closed("connection closed".into()),
        Err(e) => TransportError::Closed(e.to_string()),
    };
    for reply in waiting {
        let _ = reply.send(Err(reason.clone()));
    }
    let _ = closed.send(Some(reason));
}

/// Hands a yamux stream to the application as independent halves.
///
/// A yamux stream must not be polled from two tasks: its reads send window updates through
/// the same channel handle its writes use, and that handle remembers only the last task to
/// wait on it, so a reader blocked behind a busy writer is never woken and the peer's window
/// never reopens (seen as a stall after ~2 MiB each way). One pump task owns the stream and
/// copies both directions to an in-memory pipe whose halves the application may use from
/// separate tasks.
fn split_yamux(stream: yamux::Stream) -> (SendHalf, RecvHalf) {
    let (near, mut far) = tokio::io::duplex(256 * 1024);
    tokio::spawn(async move {
        let mut stream = stream.compat();
        let _ = tokio::io::copy_bidirectional(&mut stream, &mut far).await;
    });
    let (recv, send) = tokio::io::split(near);
    (Box::new(send), Box::new(recv))
}

impl Connection for StreamConnection {
    fn peer(&self) -> NodeId {
        self.peer
    }

    fn kind(&self) -> TransportKind {
        self.kind
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        self.remote
    }

    fn rtt(&self) -> Option<Duration> {
        None
    }

    fn open_bi(&self) -> BoxFuture<'_, Result<(SendHalf, RecvHalf), TransportError>> {
        Box::pin(async move {
            let (reply, answer) = oneshot::channel();
            self.commands
                .send(Command::Open(reply))
                .await
                .map_err(|_| self.closed_error())?;
            let stream = answer.await.map_err(|_| self.closed_error())??;
            Ok(split_yamux(stream))
        })
    }

    fn accept_bi(&self) -> BoxFuture<'_, Result<(SendHalf, RecvHalf), TransportError>> {
        Box::pin(async move {
            let stream = self
                .inbound
                .lock()
                .await
                .recv()
                .await
                .ok_or_else(|| self.closed_error())?;
            Ok(split_yamux(stream))
        })
    }

    fn close(&self, _code: u32, _reason: &str) {
        let _ = self.commands.try_send(Command::Close);
    }

    fn closed(&self) -> BoxFuture<'_, TransportError> {
        Box::pin(async move {
            let mut closed = self.closed.clone();
            match closed.wait_for(Option::is_some).await {
                Ok(reason) => reason
                    .clone()
                    .unwrap_or(TransportError::Closed(String::new())),
                Err(_) => TransportError::Closed("connection closed".into()),
            }
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Client-side QUIC dialing

/// Dials a QUIC peer from `endpoint`, checking its NodeId when `expected` is given.
pub async fn connect_quic(
    endpoint: &quinn::Endpoint,
    identity: &Arc<Identity>,
    addr: SocketAddr,
    expected: Option<NodeId>,
    transport: Arc<quinn::TransportConfig>,
) -> Result<QuicConnection, TransportError> {
    let config = quic_client_config(identity, expected, transport)?;
    let connecting = endpoint
        .connect_with(config, addr, tls::SERVER_NAME)
        .map_err(|e| TransportError::Connect(e.to_string()))?;
    let connection = connecting
        .await
        .map_err(|e| TransportError::from_quic_handshake(e, expected))?;
    QuicConnection::new(connection)
}

/// quinn's client configuration for dialing as `identity`: Meshara's ALPN, TLS 1.3 with raw
/// public keys, and the server's NodeId checked against `expected` when given.
pub fn quic_client_config(
    identity: &Arc<Identity>,
    expected: Option<NodeId>,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ClientConfig, TransportError> {
    let tls = tls::client_config(identity, expected).map_err(TransportError::Tls)?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| TransportError::Tls(rustls::Error::General(e.to_string())))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport);
    Ok(config)
}

/// quinn's server configuration for `identity` with the given transport parameters.
pub fn quic_server_config(
    identity: &Arc<Identity>,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ServerConfig, TransportError> {
    let tls = tls::server_config(identity).map_err(TransportError::Tls)?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| TransportError::Tls(rustls::Error::General(e.to_string())))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport);
    // Address validation (Retry) costs a round trip, so the accept loop asks for it only when
    // handshakes pile up (`limits.handshakes_before_retry`).
    Ok(config)
}

/// The rustls server configuration the stream transport uses for `identity`.
pub fn stream_server_config(
    identity: &Arc<Identity>,
) -> Result<Arc<rustls::ServerConfig>, TransportError> {
    Ok(Arc::new(
        tls::server_config(identity).map_err(TransportError::Tls)?,
    ))
}
