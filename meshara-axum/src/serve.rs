//! Axum over Meshara: serve a `Router` to peers over the node's connections, and call a peer's
//! routes by NodeId.
//!
//! Each request travels on its own Meshara byte stream (protocol [`HTTP_PROTOCOL`]) carrying
//! HTTP/1.1: QUIC streams are cheap, bodies stream in both directions with the transport's
//! flow control, and the server knows the caller from the connection's TLS handshake, so
//! handlers get a [`VerifiedPeer`] without passwords or tokens.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::future::Future;
use std::hash::Hash;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::BoxError;
use axum::body::{Body, HttpBody};
use axum::extract::{ConnectInfo, Request};
use axum::http;
use axum::http::StatusCode;
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use meshara_core::net::StreamError;
use meshara_core::{Node, NodeId};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::{Layer, Service, ServiceExt};

use crate::error::error_response;
use crate::extract::VerifiedPeer;
use crate::layers::OverMeshara;

/// Stream protocol name of HTTP over Meshara.
pub const HTTP_PROTOCOL: &str = "meshara-http/1";

/// Limits applied to every connection by [`serve_with`] and [`serve_tcp`]: what keeps a
/// client that sends nothing, or half a request head, from holding a connection (slowloris),
/// and many of them from exhausting the server.
///
/// ```
/// use std::time::Duration;
/// use meshara_axum::ServeOptions;
///
/// let options = ServeOptions::default()
///     .header_read_timeout(Duration::from_secs(5))
///     .max_connections(1024)
///     .max_connections_per_caller(32);
/// # let _ = options;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServeOptions {
    /// Time a client has to send a complete request head, counted from the connection's
    /// start and, on a kept-alive connection, from the end of the previous response (so it
    /// is also the idle timeout between requests). The connection is closed when it runs out.
    /// Default 10 s.
    pub header_read_timeout: Duration,
    /// Connections served at once; further ones wait to be accepted. Default 512.
    pub max_connections: usize,
    /// Connections served at once for one caller (a TCP client's address, an IPv6 /64, or a
    /// Meshara NodeId); further ones are closed at once. Default 64.
    pub max_connections_per_caller: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 512,
            max_connections_per_caller: 64,
        }
    }
}

impl ServeOptions {
    /// Sets [`header_read_timeout`](Self::header_read_timeout) (at least 1 ms).
    #[must_use]
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Sets [`max_connections`](Self::max_connections) (at least 1).
    #[must_use]
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// Sets [`max_connections_per_caller`](Self::max_connections_per_caller) (at least 1).
    #[must_use]
    pub fn max_connections_per_caller(mut self, max: usize) -> Self {
        self.max_connections_per_caller = max.max(1);
        self
    }
}

/// Connections open per caller, for [`ServeOptions::max_connections_per_caller`].
#[derive(Debug)]
struct PerCaller<K> {
    open: Mutex<HashMap<K, usize>>,
    max: usize,
}

/// One connection counted for its caller until dropped.
struct CallerSlot<K: Eq + Hash + Copy> {
    table: Arc<PerCaller<K>>,
    key: K,
}

impl<K: Eq + Hash + Copy> PerCaller<K> {
    fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            open: Mutex::new(HashMap::new()),
            max,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, usize>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn enter(self: &Arc<Self>, key: K) -> Option<CallerSlot<K>> {
        let mut open = self.lock();
        let count = open.entry(key).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(CallerSlot {
            table: self.clone(),
            key,
        })
    }
}

impl<K: Eq + Hash + Copy> Drop for CallerSlot<K> {
    fn drop(&mut self) {
        let mut open = self.table.lock();
        if let Some(count) = open.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// Serves one HTTP/1.1 connection with the header timeout of `options` (and WebSocket
/// upgrades).
async fn serve_connection<I, S, B>(
    io: I,
    service: S,
    options: ServeOptions,
    mut stopping: Option<tokio::sync::watch::Receiver<bool>>,
) -> hyper::Result<()>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: Service<http::Request<Incoming>, Response = http::Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: HttpBody + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(service))
        .with_upgrades();
    let Some(stopping) = stopping.as_mut() else {
        return conn.await;
    };
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => return r,
        _ = stopping.wait_for(|s| *s) => {}
    }
    // Finish the request in flight, then close (an idle connection closes at once).
    conn.as_mut().graceful_shutdown();
    conn.await
}

/// Serves `service` — an axum `Router`, or any tower `Service` of axum requests — to Meshara
/// peers until the node stops, with the default [`ServeOptions`]. Every request carries the
/// caller's [`VerifiedPeer`] in its extensions; request and response bodies stream. Spawn it:
/// `tokio::spawn(meshara_axum::serve(node, app))`.
///
/// The node starts accepting HTTP streams when `serve` is called, before the returned future
/// is first polled, so a request sent right after the spawn is never turned away.
pub fn serve<S, B>(node: Node, service: S) -> impl Future<Output = ()> + Send + 'static
where
    S: Service<Request, Response = http::Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: HttpBody + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    serve_with(node, service, ServeOptions::default())
}

/// [`serve`] with chosen [`ServeOptions`]: each Meshara stream is a connection; a peer that
/// does not complete a request head within the header timeout is dropped, at most
/// `max_connections` streams are served at once (further ones wait) and at most
/// `max_connections_per_caller` per peer NodeId (further ones are closed).
pub fn serve_with<S, B>(
    node: Node,
    service: S,
    options: ServeOptions,
) -> impl Future<Output = ()> + Send + 'static
where
    S: Service<Request, Response = http::Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: HttpBody + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let mut listener = node.listen_streams(HTTP_PROTOCOL);
    let slots = Arc::new(Semaphore::new(options.max_connections.max(1)));
    let per_peer = PerCaller::<NodeId>::new(options.max_connections_per_caller.max(1));
    async move {
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                break;
            };
            let Some(stream) = listener.accept().await else {
                break;
            };
            let peer = stream.peer();
            let Some(slot) = per_peer.enter(peer) else {
                tracing::warn!(%peer, max = per_peer.max, "too many HTTP streams from one peer; closing one");
                continue;
            };
            let service = service
                .clone()
                .map_request(move |request: http::Request<Incoming>| {
                    let (mut parts, body) = request.into_parts();
                    parts.extensions.insert(VerifiedPeer(peer));
                    parts.extensions.insert(OverMeshara);
                    Request::from_parts(parts, Body::new(body))
                });
            tokio::spawn(async move {
                if let Err(e) = serve_connection(stream, service, options, None).await {
                    tracing::debug!(%peer, error = %e, "HTTP over Meshara connection ended with an error");
                }
                drop((permit, slot));
            });
        }
        // Keeps the node's handle alive for as long as requests are served.
        drop(node);
    }
}

/// Serves `service` over TCP — the safe replacement for `axum::serve` for apps that mount
/// [`routes()`](crate::routes): every request carries `ConnectInfo<SocketAddr>` (so
/// [`RateLimitLayer`](crate::RateLimitLayer) limits by address), a client that does not
/// complete a request head within the header timeout (slowloris, idle keep-alive) is
/// dropped, at most `max_connections` connections are served at once (further ones wait in
/// the listen backlog) and at most `max_connections_per_caller` per address (IPv4) or /64
/// (IPv6; further ones are closed at once). WebSocket upgrades work. Runs until the listener
/// fails; stop it by dropping (aborting) the future, or gracefully with
/// [`serve_tcp_with_graceful_shutdown`].
///
/// ```no_run
/// use axum::{Router, routing::get};
/// use meshara_axum::ServeOptions;
///
/// # async fn demo() -> std::io::Result<()> {
/// let app: Router = Router::new().route("/", get(|| async { "hi" }));
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// meshara_axum::serve_tcp(listener, app, ServeOptions::default()).await
/// # }
/// ```
pub async fn serve_tcp<S, B>(
    listener: TcpListener,
    service: S,
    options: ServeOptions,
) -> std::io::Result<()>
where
    S: Service<Request, Response = http::Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: HttpBody + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    serve_tcp_with_graceful_shutdown(listener, service, options, std::future::pending()).await
}

/// [`serve_tcp`] until `signal` completes: then it stops accepting, lets every connection
/// finish the request it is serving (idle ones close at once; long-lived responses such as
/// event streams must end by themselves) and returns once all have closed.
pub async fn serve_tcp_with_graceful_shutdown<S, B, F>(
    listener: TcpListener,
    service: S,
    options: ServeOptions,
    signal: F,
) -> std::io::Result<()>
where
    S: Service<Request, Response = http::Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: HttpBody + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    F: Future<Output = ()> + Send,
{
    let max = options.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let slots = Arc::new(Semaphore::new(max));
    let per_address = PerCaller::<IpAddr>::new(options.max_connections_per_caller.max(1));
    let (stop, stopping) = tokio::sync::watch::channel(false);
    tokio::pin!(signal);
    loop {
        let accepted = tokio::select! {
            () = &mut signal => None,
            a = async {
                let permit = slots.clone().acquire_owned().await;
                (permit, listener.accept().await)
            } => Some(a),
        };
        let Some((permit, accepted)) = accepted else {
            // Every connection holds a slot: having them all back means all have closed.
            let _ = stop.send(true);
            let _ = slots
                .acquire_many(u32::try_from(max).unwrap_or(u32::MAX))
                .await;
            return Ok(());
        };
        let Ok(permit) = permit else {
            return Ok(());
        };
        let (tcp, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(e) if is_transient(&e) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                tracing::warn!(error = %e, "accepting a TCP connection failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let Some(slot) = per_address.enter(crate::layers::network_of(remote.ip())) else {
            tracing::warn!(%remote, max = per_address.max, "too many connections from one address; closing one");
            continue;
        };
        let stopping = stopping.clone();
        let service = service
            .clone()
            .map_request(move |request: http::Request<Incoming>| {
                let (mut parts, body) = request.into_parts();
                parts.extensions.insert(ConnectInfo(remote));
                Request::from_parts(parts, Body::new(body))
            });
        tokio::spawn(async move {
            if let Err(e) = serve_connection(tcp, service, options, Some(stopping)).await {
                tracing::debug!(%remote, error = %e, "HTTP connection ended with an error");
            }
            drop((permit, slot));
        });
    }
}

fn is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    !matches!(
        e.kind(),
        ErrorKind::InvalidInput | ErrorKind::NotConnected | ErrorKind::Unsupported
    )
}

/// Why a call to a peer's routes failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No stream to the peer could be opened.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// The HTTP exchange failed.
    #[error("HTTP over Meshara: {0}")]
    Http(#[from] hyper::Error),
}

/// Calls the routes a peer serves with [`serve`].
#[derive(Debug, Clone)]
pub struct MesharaClient {
    node: Node,
}

impl MesharaClient {
    /// A client sending from `node`.
    pub fn new(node: Node) -> Self {
        Self { node }
    }

    /// Sends `request` to `peer` and returns its response; the body streams as it arrives.
    /// The request URI's path and query are used; scheme and authority are ignored.
    pub async fn request(
        &self,
        peer: NodeId,
        request: Request<Body>,
    ) -> Result<Response<Incoming>, ClientError> {
        let stream = self.node.open_stream(peer, HTTP_PROTOCOL).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "HTTP over Meshara client connection ended with an error");
            }
        });
        Ok(sender.send_request(request).await?)
    }
}

/// A layer refusing (403, JSON body) every request whose [`VerifiedPeer`] is not on the list,
/// including requests that did not come over Meshara at all.
#[derive(Debug, Clone)]
pub struct AllowListLayer {
    allowed: Arc<HashSet<NodeId>>,
}

impl AllowListLayer {
    /// Allows exactly these NodeIds.
    pub fn new(allowed: impl IntoIterator<Item = NodeId>) -> Self {
        Self {
            allowed: Arc::new(allowed.into_iter().collect()),
        }
    }
}

impl<S> Layer<S> for AllowListLayer {
    type Service = AllowList<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AllowList {
            inner,
            allowed: self.allowed.clone(),
        }
    }
}

/// The service made by [`AllowListLayer`].
#[derive(Debug, Clone)]
pub struct AllowList<S> {
    inner: S,
    allowed: Arc<HashSet<NodeId>>,
}

impl<S, B> Service<Request<B>> for AllowList<S>
where
    S: Service<Request<B>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let caller = request.extensions().get::<VerifiedPeer>().map(|p| p.0);
        match caller {
            Some(peer) if self.allowed.contains(&peer) => Box::pin(self.inner.call(request)),
            Some(peer) => Box::pin(async move {
                Ok(error_response(
                    StatusCode::FORBIDDEN,
                    "not_allowed",
                    format!("{peer} is not on this service's allow-list"),
                ))
            }),
            None => Box::pin(async {
                Ok(error_response(
                    StatusCode::FORBIDDEN,
                    "not_allowed",
                    "this service only answers allow-listed Meshara peers".into(),
                ))
            }),
        }
    }
}
