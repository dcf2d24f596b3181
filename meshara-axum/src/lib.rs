//! # meshara-axum
//!
//! Meshara for Axum apps, in both directions:
//!
//! - **Mount a node's API in your app**: [`routes()`] is a `Router<S>` you nest anywhere; it
//!   takes the [`Node`](meshara_core::Node) from your state through `FromRef`, and who may
//!   call it from an [`Access`] you choose (a bearer token, Meshara identities, your own
//!   check, or deliberately nobody). Send private
//!   messages, broadcast, query, list peers, read status and metrics, follow live events over
//!   Server-Sent Events or a WebSocket. [`openapi()`] describes it all (also served at
//!   `/openapi.json`).
//! - **Serve your app to Meshara peers**: [`serve()`] answers HTTP requests that peers send
//!   over Meshara; handlers learn the caller's NodeId with the [`VerifiedPeer`] extractor, proven
//!   by the connection's TLS handshake. [`MesharaClient`] calls a peer's routes by NodeId;
//!   [`AllowListLayer`] restricts a router to chosen NodeIds.
//!
//! ```no_run
//! use axum::{Router, routing::get, extract::FromRef};
//! use meshara_axum::{Access, VerifiedPeer};
//! use meshara_core::Node;
//!
//! #[derive(Clone)]
//! struct AppState { node: Node }
//! impl FromRef<AppState> for Node {
//!     fn from_ref(s: &AppState) -> Node { s.node.clone() }
//! }
//!
//! async fn whoami(VerifiedPeer(peer): VerifiedPeer) -> String {
//!     format!("hello {peer}")
//! }
//!
//! # async fn demo(node: Node) {
//! // Your HTTP API, with Meshara mounted under /meshara; callers need the bearer token.
//! let token = Access::random_token();
//! let web: Router = Router::new()
//!     .nest("/meshara", meshara_axum::routes(Access::bearer(&token)))
//!     .with_state(AppState { node: node.clone() });
//! # let _ = web;
//! // Part of your app, served to Meshara peers.
//! let peers_only = Router::new().route("/whoami", get(whoami));
//! tokio::spawn(meshara_axum::serve(node, peers_only));
//! # }
//! ```
//!
//! # Serving the routes safely
//!
//! [`routes()`] can read every decrypted message of the node and send as it. An app that
//! mounts them should:
//!
//! 1. **Choose an [`Access`]**: [`Access::bearer`] with a long random token
//!    ([`Access::random_token`]) for local tools and dashboards; [`Access::peers`] to let only
//!    chosen Meshara identities in (over Meshara, or RFC 9421 signed HTTP);
//!    [`Access::custom`] to reuse the app's own sessions. [`Access::open_i_understand_the_risk`]
//!    is for ports nothing untrusted can reach, and logs a warning. Whatever the choice, the
//!    routes refuse foreign `Origin`s (cross-site WebSocket hijacking, cross-site
//!    `EventSource`) and `Host` names that are not loopback, IP literals or
//!    [allowed](Access::allow_host) (DNS rebinding), with 403.
//! 2. **Bind to loopback** (`127.0.0.1`) unless other machines must reach it; then put TLS in
//!    front and [allow](Access::allow_host) the public name.
//! 3. **Serve with timeouts and a connection cap.** `axum::serve` has no header-read timeout
//!    and no connection limit: a client that sends half a request head keeps its connection
//!    forever (slowloris), and enough of them exhaust the process's file descriptors. Use
//!    [`serve_tcp`], which sets a header-read timeout (10 s; also the idle timeout between
//!    kept-alive requests), caps connections (512, and 64 per address) and hands handlers
//!    the caller's `ConnectInfo<SocketAddr>`; tune it with [`ServeOptions`]. Over Meshara,
//!    [`serve`] applies the same defaults per stream ([`serve_with`] to tune). An app with
//!    its own hyper loop should configure `hyper::server::conn::http1::Builder` with a
//!    `timer(hyper_util::rt::TokioTimer::new())` and a `header_read_timeout`, and hold a
//!    `tokio::sync::Semaphore` permit per connection. Bodies and long-lived streams (SSE,
//!    WebSocket) are not bounded by these timeouts; a reverse proxy's body timeout or
//!    [`RateLimitLayer`] bounds the rest.
//! 4. **Rate limit** with [`RateLimitLayer`] outside [`VerifySignaturesLayer`]: callers are
//!    charged by address and by signing key, before any body is read.
//!
//! ```no_run
//! use axum::{Router, extract::FromRef};
//! use meshara_axum::{Access, RateLimitLayer, ServeOptions};
//! use meshara_core::Node;
//!
//! #[derive(Clone)]
//! struct AppState { node: Node }
//! impl FromRef<AppState> for Node {
//!     fn from_ref(s: &AppState) -> Node { s.node.clone() }
//! }
//!
//! # async fn demo(node: Node, token: String) -> std::io::Result<()> {
//! let app: Router = Router::new()
//!     .nest("/meshara", meshara_axum::routes(Access::bearer(token)))
//!     .with_state(AppState { node })
//!     .layer(RateLimitLayer::new(20.0, 40));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! meshara_axum::serve_tcp(listener, app, ServeOptions::default()).await
//! # }
//! ```

#![deny(missing_docs)]

mod access;
mod api;
mod error;
mod extract;
mod layers;
mod protobuf;
mod serve;
mod signature;

/// The protobuf messages of the HTTP API (`proto/meshara/api/v1/api.proto`, package
/// `meshara.api.v1`), for clients that speak protobuf to [`routes()`].
pub mod proto {
    #![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
    include!(concat!(env!("OUT_DIR"), "/meshara.api.v1.rs"));
}

pub use access::{Access, AccessRejection, security_headers};
pub use api::{
    BroadcastRequest, BroadcastResponse, ErrorBody, EventJson, PeerJson, QueryRequest,
    QueryResponse, ROUTES, SendRequest, SendResponse, StatusJson, event_json, openapi, routes,
};
pub use error::ApiError;
pub use extract::{
    JsonBody, JsonBodyRejection, MesharaNode, MesharaNodeRejection, VerifiedPeer,
    VerifiedPeerRejection,
};
pub use layers::{HttpMetrics, HttpMetricsLayer, RateLimit, RateLimitLayer, RecordMetrics};
pub use protobuf::{Format, PROTOBUF, Protobuf, ProtobufRejection};
pub use serve::{
    AllowList, AllowListLayer, ClientError, HTTP_PROTOCOL, MesharaClient, ServeOptions, serve,
    serve_tcp, serve_tcp_with_graceful_shutdown, serve_with,
};
pub use signature::{
    SIGNATURE_LABEL, SignatureError, SignaturePolicy, VerifySignatures, VerifySignaturesLayer,
    sign_request, sign_request_with,
};
