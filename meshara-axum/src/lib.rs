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
    serve_tcp, serve_with,
};
pub use signature::{
    SIGNATURE_LABEL, SignatureError, SignaturePolicy, VerifySignatures, VerifySignaturesLayer,
    sign_request, sign_request_with,
};
