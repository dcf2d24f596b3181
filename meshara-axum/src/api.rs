//! The HTTP routes: `routes()` and the handlers behind them, with their OpenAPI description.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::FromRef;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use data_encoding::BASE64;
use futures_util::{Stream, StreamExt};
use meshara_core::{Event, Node, NodeId, QueryError, SendError};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use crate::error::ApiError;
use crate::extract::MesharaNode;

/// Every route `routes()` serves, as `(method, path)`; the OpenAPI document must list exactly
/// these (a test checks both ways).
pub const ROUTES: &[(&str, &str)] = &[
    ("post", "/messages"),
    ("post", "/broadcasts"),
    ("post", "/queries"),
    ("get", "/peers"),
    ("get", "/status"),
    ("get", "/events"),
    ("get", "/events/ws"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
];

/// The Meshara routes, to mount with `Router::nest("/meshara", meshara_axum::routes())`.
///
/// The app's state `S` provides the node through `FromRef`:
///
/// ```
/// use axum::{Router, extract::FromRef};
/// use meshara_core::Node;
///
/// #[derive(Clone)]
/// struct AppState { node: Node }
///
/// impl FromRef<AppState> for Node {
///     fn from_ref(state: &AppState) -> Node { state.node.clone() }
/// }
///
/// fn app(state: AppState) -> Router {
///     Router::new()
///         .nest("/meshara", meshara_axum::routes())
///         .with_state(state)
/// }
/// ```
pub fn routes<S>() -> Router<S>
where
    Node: FromRef<S>,
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/messages", post(send_message::<S>))
        .route("/broadcasts", post(broadcast::<S>))
        .route("/queries", post(query::<S>))
        .route("/peers", get(peers::<S>))
        .route("/status", get(status::<S>))
        .route("/events", get(events_sse::<S>))
        .route("/events/ws", get(events_ws::<S>))
        .route("/metrics", get(metrics::<S>))
        .route("/openapi.json", get(openapi_json))
}

/// The OpenAPI document of [`routes`] (paths relative to where the router is mounted).
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Meshara node API",
        description = "Routes mounted by meshara_axum::routes()"
    ),
    paths(
        send_message,
        broadcast,
        query,
        peers,
        status,
        events_sse,
        events_ws,
        metrics,
        openapi_json
    ),
    components(schemas(
        SendRequest,
        SendResponse,
        BroadcastRequest,
        BroadcastResponse,
        QueryRequest,
        QueryResponse,
        PeerJson,
        StatusJson,
        ErrorBody,
        EventJson
    ))
)]
struct ApiDoc;

/// Body of `POST /messages`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    /// Recipient NodeId (52 base32 characters).
    pub to: String,
    /// Content type of the message, e.g. `text/plain`.
    #[serde(default = "text_plain")]
    pub content_type: String,
    /// UTF-8 content (exactly one of `content` and `content_base64`).
    #[serde(default)]
    pub content: Option<String>,
    /// Binary content, standard base64.
    #[serde(default)]
    pub content_base64: Option<String>,
    /// Wait for the end-to-end acknowledgement before answering (default true).
    #[serde(default = "yes")]
    pub wait: bool,
}

/// Answer of `POST /messages`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct SendResponse {
    /// Message id (hex).
    pub id: String,
    /// Whether the recipient acknowledged it (false when `wait` was false).
    pub delivered: bool,
    /// Send-to-acknowledgement time in milliseconds, when delivered.
    pub latency_ms: Option<f64>,
}

/// Body of `POST /broadcasts`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BroadcastRequest {
    /// Topic, 1..=128 bytes.
    pub topic: String,
    /// Content type.
    #[serde(default = "text_plain")]
    pub content_type: String,
    /// UTF-8 content (or `content_base64`).
    #[serde(default)]
    pub content: Option<String>,
    /// Binary content, standard base64.
    #[serde(default)]
    pub content_base64: Option<String>,
}

/// Answer of `POST /broadcasts`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct BroadcastResponse {
    /// Broadcast id (hex).
    pub id: String,
}

/// Body of `POST /queries`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    /// NodeId to ask.
    pub to: String,
    /// Method name.
    pub method: String,
    /// UTF-8 body (or `body_base64`).
    #[serde(default)]
    pub body: Option<String>,
    /// Binary body, standard base64.
    #[serde(default)]
    pub body_base64: Option<String>,
    /// How long to wait, in milliseconds (default 10000, at most 120000).
    #[serde(default = "ten_seconds")]
    pub timeout_ms: u64,
}

/// Answer of `POST /queries`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct QueryResponse {
    /// The answer as UTF-8 when it is valid UTF-8.
    pub body: Option<String>,
    /// The answer, standard base64.
    pub body_base64: String,
}

/// One connected peer.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct PeerJson {
    /// Its NodeId.
    pub node_id: String,
    /// quic, tcp or stream.
    pub transport: String,
    /// Socket address, when known.
    pub addr: Option<String>,
    /// Whether it dialed us.
    pub inbound: bool,
    /// Round-trip time in milliseconds, when measured.
    pub rtt_ms: Option<f64>,
    /// Envelopes received from it.
    pub messages_in: u64,
    /// Envelopes sent to it.
    pub messages_out: u64,
}

/// Node status.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct StatusJson {
    /// This node's NodeId.
    pub node_id: String,
    /// Its fingerprint.
    pub fingerprint: String,
    /// Connected peers.
    pub peers: usize,
    /// Open connections.
    pub connections: usize,
    /// Messages awaiting acknowledgement.
    pub outbox: usize,
    /// Envelopes received.
    pub messages_in: u64,
    /// Envelopes sent.
    pub messages_out: u64,
    /// Seconds since start.
    pub uptime_s: u64,
}

/// An error answer.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Machine-readable code, e.g. `invalid_node_id`.
    pub error: String,
    /// What is wrong, for people.
    pub message: String,
}

/// A node event, as sent on `/events` (SSE `data:`) and `/events/ws` (text frames).
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct EventJson {
    /// message, broadcast, query, peer_connected, peer_disconnected, peer_discovered,
    /// delivered, delivery_failed, error, lagged.
    pub kind: String,
    /// The event's fields.
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

fn text_plain() -> String {
    "text/plain".into()
}

fn yes() -> bool {
    true
}

fn ten_seconds() -> u64 {
    10_000
}

fn parse_node(text: &str) -> Result<NodeId, ApiError> {
    text.parse()
        .map_err(|_| ApiError::BadRequest("invalid_node_id", format!("{text:?} is not a NodeId")))
}

fn content(
    text: Option<String>,
    base64: Option<String>,
    field: &str,
) -> Result<bytes::Bytes, ApiError> {
    match (text, base64) {
        (Some(t), None) => Ok(bytes::Bytes::from(t)),
        (None, Some(b)) => BASE64
            .decode(b.as_bytes())
            .map(bytes::Bytes::from)
            .map_err(|e| ApiError::BadRequest("invalid_base64", format!("{field}_base64: {e}"))),
        (None, None) => Ok(bytes::Bytes::new()),
        (Some(_), Some(_)) => Err(ApiError::BadRequest(
            "ambiguous_content",
            format!("give {field} or {field}_base64, not both"),
        )),
    }
}

/// Send an end-to-end encrypted private message.
#[utoipa::path(post, path = "/messages", request_body = SendRequest,
    responses(
        (status = 200, description = "Acknowledged by the recipient (or queued, with wait=false)", body = SendResponse),
        (status = 400, description = "Bad NodeId, content or JSON", body = ErrorBody),
        (status = 413, description = "Message too large", body = ErrorBody),
        (status = 503, description = "Outbox full or node stopped", body = ErrorBody),
        (status = 504, description = "Not acknowledged after every retry", body = ErrorBody)))]
async fn send_message<S>(
    MesharaNode(node): MesharaNode,
    body: crate::extract::JsonBody<SendRequest>,
) -> Result<Json<SendResponse>, ApiError>
where
    Node: FromRef<S>,
    S: Send + Sync,
{
    let req = body.0;
    let to = parse_node(&req.to)?;
    let content = content(req.content, req.content_base64, "content")?;
    let pending = node.send_private(to, &req.content_type, content).await?;
    let id = pending.id().to_string();
    if !req.wait {
        return Ok(Json(SendResponse {
            id,
            delivered: false,
            latency_ms: None,
        }));
    }
    let delivered = pending.confirmed().await?;
    Ok(Json(SendResponse {
        id,
        delivered: true,
        latency_ms: Some(delivered.latency.as_secs_f64() * 1e3),
    }))
}

/// Sign and send a broadcast on a topic.
#[utoipa::path(post, path = "/broadcasts", request_body = BroadcastRequest,
    responses(
        (status = 200, description = "Sent to the network", body = BroadcastResponse),
        (status = 400, description = "Bad topic, content or JSON", body = ErrorBody)))]
async fn broadcast<S>(
    MesharaNode(node): MesharaNode,
    body: crate::extract::JsonBody<BroadcastRequest>,
) -> Result<Json<BroadcastResponse>, ApiError>
where
    Node: FromRef<S>,
    S: Send + Sync,
{
    let req = body.0;
    let content = content(req.content, req.content_base64, "content")?;
    let id = node.broadcast(&req.topic, &req.content_type, content)?;
    Ok(Json(BroadcastResponse { id: id.to_string() }))
}

/// Ask a peer a query and wait for its answer.
#[utoipa::path(post, path = "/queries", request_body = QueryRequest,
    responses(
        (status = 200, description = "The peer's answer", body = QueryResponse),
        (status = 400, description = "Bad request", body = ErrorBody),
        (status = 502, description = "The peer answered with an error status", body = ErrorBody),
        (status = 504, description = "No answer within the timeout", body = ErrorBody)))]
async fn query<S>(
    MesharaNode(node): MesharaNode,
    body: crate::extract::JsonBody<QueryRequest>,
) -> Result<Json<QueryResponse>, ApiError>
where
    Node: FromRef<S>,
    S: Send + Sync,
{
    let req = body.0;
    let to = parse_node(&req.to)?;
    if req.timeout_ms == 0 || req.timeout_ms > 120_000 {
        return Err(ApiError::BadRequest(
            "invalid_timeout",
            "timeout_ms must be 1..=120000".into(),
        ));
    }
    let body = content(req.body, req.body_base64, "body")?;
    let answer = node
        .query(to, &req.method, body, Duration::from_millis(req.timeout_ms))
        .await?;
    Ok(Json(QueryResponse {
        body: std::str::from_utf8(&answer).ok().map(str::to_owned),
        body_base64: BASE64.encode(&answer),
    }))
}

/// List connected peers.
#[utoipa::path(get, path = "/peers", responses((status = 200, body = Vec<PeerJson>)))]
async fn peers<S>(MesharaNode(node): MesharaNode) -> Json<Vec<PeerJson>>
where
    Node: FromRef<S>,
    S: Send + Sync,
{
    Json(
        node.peers()
            .into_iter()
            .map(|p| PeerJson {
                node_id: p.node_id.to_string(),
                transport: p.transport.as_str().into(),
                addr: p.addr.map(|a| a.to_string()),
                inbound: p.inbound,
                rtt_ms: p.rtt.map(|r| r.as_secs_f64() * 1e3),
                messages_in: p.messages_in,
                messages_out: p.messages_out,
            })
            .collect(),
    )
}

/// The node's status.
#[utoipa::path(get, path = "/status", responses((status = 200, body = StatusJson)))]
async fn status<S>(MesharaNode(node): MesharaNode) -> Json<StatusJson>
where
    Node: FromRef<S>,
    S: Send + Sync,
{
    let s = node.stats();
    Json(StatusJson {
        node_id: node.node_id().to_string(),
        fingerprint: node.fingerprint().to_string(),
        peers: s.peers,
        connections: s.connections,
        outbox: s.outbox,
        messages_in: s.messages_in,
        messages_out: s.messages_out,
        uptime_s: s.uptime.as_secs(),
    })
}

/// Live node events as Server-Sent Events (`event:` is the kind, `data:` an [`EventJson`]).
#[utoipa::path(get, path = "/events", responses((status = 200, description = "text/event-stream of EventJson", content_type = "text/event-stream")))]
async fn events_sse<S>(
    MesharaNode(node): MesharaNode,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>>
where
    Node: FromRef<S>,
    S: Send + Sync,
{
    let stream = node.events().filter_map(|event| async move {
        let json = event_json(&event);
        let data = serde_json::to_string(&json).ok()?;
        Some(Ok(SseEvent::default().event(json.kind).data(data)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// Live node events over a WebSocket, one JSON [`EventJson`] per text frame.
#[utoipa::path(get, path = "/events/ws", responses((status = 101, description = "WebSocket of EventJson text frames")))]
async fn events_ws<S>(MesharaNode(node): MesharaNode, upgrade: WebSocketUpgrade) -> Response
where
    Node: FromRef<S>,
    S: Send + Sync,
{
    upgrade.on_upgrade(move |socket| forward_events(node, socket))
}

async fn forward_events(node: Node, mut socket: WebSocket) {
    let mut events = node.events();
    loop {
        tokio::select! {
            event = events.next() => {
                let Some(event) = event else { break };
                let Ok(text) = serde_json::to_string(&event_json(&event)) else { continue };
                if socket.send(Message::Text(text.into())).await.is_err() {
                    break;
                }
            }
            incoming = socket.recv() => match incoming {
                // The client only listens; a close or error ends the stream.
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
        }
    }
}

/// Prometheus metrics of the node (text exposition format).
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
async fn metrics<S>(MesharaNode(node): MesharaNode) -> Response
where
    Node: FromRef<S>,
    S: Send + Sync,
{
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        node.metrics_text(),
    )
        .into_response()
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", responses((status = 200, description = "OpenAPI 3.1 document")))]
async fn openapi_json() -> Response {
    match openapi().to_json() {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// The JSON form of a node event (its [`Event::kind`] and [`Event::to_json`]).
pub fn event_json(event: &Event) -> EventJson {
    EventJson {
        kind: event.kind().into(),
        data: event.to_json(),
    }
}

impl From<SendError> for ApiError {
    fn from(e: SendError) -> Self {
        ApiError::Send(e)
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        ApiError::Query(e)
    }
}
