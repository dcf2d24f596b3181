//! Axum over Meshara: serve a `Router` to peers over the node's connections, and call a peer's
//! routes by NodeId.
//!
//! Each request travels on its own Meshara byte stream (protocol [`HTTP_PROTOCOL`]) carrying
//! HTTP/1.1: QUIC streams are cheap, bodies stream in both directions with the transport's
//! flow control, and the server knows the caller from the connection's TLS handshake, so
//! handlers get a [`VerifiedPeer`] without passwords or tokens.

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::BoxError;
use axum::body::{Body, HttpBody};
use axum::extract::Request;
use axum::http;
use axum::http::StatusCode;
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use meshara_core::net::StreamError;
use meshara_core::{Node, NodeId};
use tower::{Layer, Service, ServiceExt};

use crate::error::error_response;
use crate::extract::VerifiedPeer;
use crate::layers::OverMeshara;

/// Stream protocol name of HTTP over Meshara.
pub const HTTP_PROTOCOL: &str = "meshara-http/1";

/// Serves `service` — an axum `Router`, or any tower `Service` of axum requests — to Meshara
/// peers until the node stops. Every request carries the caller's [`VerifiedPeer`] in its
/// extensions; request and response bodies stream. Spawn it:
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
    let mut listener = node.listen_streams(HTTP_PROTOCOL);
    async move {
        while let Some(stream) = listener.accept().await {
            let peer = stream.peer();
            let service = service
                .clone()
                .map_request(move |request: http::Request<Incoming>| {
                    let (mut parts, body) = request.into_parts();
                    parts.extensions.insert(VerifiedPeer(peer));
                    parts.extensions.insert(OverMeshara);
                    Request::from_parts(parts, Body::new(body))
                });
            tokio::spawn(async move {
                let result = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
                    .await;
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "HTTP over Meshara connection ended with an error");
                }
            });
        }
        // Keeps the node's handle alive for as long as requests are served.
        drop(node);
    }
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
