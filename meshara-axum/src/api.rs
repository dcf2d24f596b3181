//! The HTTP routes: `routes()` and the handlers behind them, with their OpenAPI description.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRef, FromRequest, Request};
use axum::http::{StatusCode, header};
use axum::middleware::{Next, from_fn};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use data_encoding::BASE64;
use futures_util::{Stream, StreamExt};
use meshara_core::{Event, Node, NodeId, Privacy, QueryError, SendError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use crate::access::Access;
use crate::error::{ApiError, error_response};
use crate::extract::{JsonBody, MesharaNode};
use crate::proto;
use crate::protobuf::{Format, Protobuf, is_json, is_protobuf, negotiate_errors};
use crate::signature::VerifySignaturesLayer;

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

/// The Meshara routes, to mount with
/// `Router::nest("/meshara", meshara_axum::routes(access))`.
///
/// `access` says who may call them ([`Access`]): the routes read the node's decrypted
/// messages and send as it, so there is no default. Whatever the choice, requests naming a
/// `Host` that is not loopback, an IP literal or allowed (DNS rebinding), and requests from
/// web pages of another origin (cross-site WebSocket hijacking), are refused with 403. Every
/// answer carries `X-Content-Type-Options: nosniff` and `Referrer-Policy: no-referrer`.
///
/// The app's state `S` provides the node through `FromRef`:
///
/// ```
/// use axum::{Router, extract::FromRef};
/// use meshara_axum::Access;
/// use meshara_core::Node;
///
/// #[derive(Clone)]
/// struct AppState { node: Node }
///
/// impl FromRef<AppState> for Node {
///     fn from_ref(state: &AppState) -> Node { state.node.clone() }
/// }
///
/// fn app(state: AppState, token: &str) -> Router {
///     Router::new()
///         .nest("/meshara", meshara_axum::routes(Access::bearer(token)))
///         .with_state(state)
/// }
/// ```
///
/// Serve the app with timeouts and a connection cap (see the crate documentation, "Serving
/// safely").
pub fn routes<S>(access: Access) -> Router<S>
where
    Node: FromRef<S>,
    S: Clone + Send + Sync + 'static,
{
    access.announce();
    let verify = access.verifies_signatures().map(VerifySignaturesLayer::new);
    let access = Arc::new(access);
    let auth = access.clone();
    let router = Router::new()
        .route("/messages", post(send_message::<S>))
        .route("/broadcasts", post(broadcast::<S>))
        .route("/queries", post(query::<S>))
        .route("/peers", get(peers::<S>))
        .route("/status", get(status::<S>))
        .route("/events", get(events_sse::<S>))
        .route("/events/ws", get(events_ws::<S>))
        .route("/metrics", get(metrics::<S>))
        .route("/openapi.json", get(openapi_json))
        .method_not_allowed_fallback(method_not_allowed)
        .layer(from_fn(move |request: Request, next: Next| {
            crate::access::authenticate(auth.clone(), request, next)
        }));
    // Signatures are verified (Access::peers) after the Host/Origin checks, before the
    // authentication that needs their result.
    let router = match verify {
        Some(verify) => router.layer(verify),
        None => router,
    };
    router
        .layer(from_fn(move |request: Request, next: Next| {
            crate::access::host_and_origin(access.clone(), request, next)
        }))
        .layer(from_fn(negotiate_errors))
        .layer(from_fn(crate::access::security_headers))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// The OpenAPI document of [`routes`] (paths relative to where the router is mounted).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    for item in doc.paths.paths.values_mut() {
        for op in [&mut item.get, &mut item.post].into_iter().flatten() {
            complete_errors(op);
        }
    }
    if let Some(components) = doc.components.as_mut() {
        for (schema, a, b) in [
            ("SendRequest", "content", "content_base64"),
            ("BroadcastRequest", "content", "content_base64"),
            ("QueryRequest", "body", "body_base64"),
        ] {
            at_most_one_of(&mut components.schemas, schema, a, b);
        }
    }
    doc
}

/// What the derive cannot say per operation: every route may answer 401 (no valid
/// credentials) and 403 (a foreign `Host` or `Origin`, or a caller `Access` refuses), and an
/// error answer is a protobuf `meshara.api.v1.Error` when the caller prefers protobuf.
fn complete_errors(op: &mut utoipa::openapi::path::Operation) {
    use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
    let error = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build()
    };
    let responses = &mut op.responses.responses;
    responses
        .entry("401".into())
        .or_insert_with(|| RefOr::T(error("No valid credentials (`unauthorized`)")));
    responses.entry("403".into()).or_insert_with(|| {
        RefOr::T(error(
            "A foreign Host or Origin, or a caller the access policy refuses",
        ))
    });
    for response in responses.values_mut() {
        if let RefOr::T(response) = response {
            if is_error(response) && !response.content.contains_key("application/x-protobuf") {
                response.content.insert(
                    "application/x-protobuf".into(),
                    ContentBuilder::new().build(),
                );
            }
        }
    }
}

/// Whether a response is an error answer: its JSON schema is [`ErrorBody`].
fn is_error(response: &utoipa::openapi::Response) -> bool {
    use utoipa::openapi::RefOr;
    response
        .content
        .get("application/json")
        .and_then(|c| c.schema.as_ref())
        .is_some_and(|s| matches!(s, RefOr::Ref(r) if r.ref_location.ends_with("/ErrorBody")))
}

/// Says in `schema` that a body carries `a` or `b`, not both (JSON Schema `not` with
/// `required`), which the handlers enforce with 400. utoipa models no `not`, so it is added
/// as a raw member of the schema object.
fn at_most_one_of(
    schemas: &mut std::collections::BTreeMap<
        String,
        utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
    >,
    schema: &str,
    a: &str,
    b: &str,
) {
    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::Schema;
    if let Some(RefOr::T(Schema::Object(object))) = schemas.get_mut(schema) {
        object
            .extensions
            .get_or_insert_with(Default::default)
            .insert("not".into(), serde_json::json!({"required": [a, b]}));
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Meshara node API",
        description = "Routes mounted by meshara_axum::routes(). Bodies are JSON, or protobuf \
            (package meshara.api.v1, Content-Type application/x-protobuf) when the request \
            body is protobuf; answers are protobuf when the Accept header prefers it (or a \
            protobuf body came without Accept). Error answers follow the same choice: JSON \
            ErrorBody or protobuf meshara.api.v1.Error."
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
    /// Recipient NodeId: 52 lowercase base32 characters, or 64 hex digits. One that is no
    /// Ed25519 public key is nobody's: 404 `recipient_not_found`.
    #[schema(pattern = r"^(?:[a-z2-7]{51}[aq]|[0-9a-fA-F]{64})$")]
    pub to: String,
    /// Content type of the message, e.g. `text/plain` (empty or absent: `text/plain`), at
    /// most 128 characters.
    #[serde(default = "text_plain")]
    #[schema(max_length = 128)]
    pub content_type: String,
    /// UTF-8 content (at most one of `content` and `content_base64`; neither is an empty
    /// message).
    #[serde(default)]
    pub content: Option<String>,
    /// Binary content, standard base64 with padding.
    #[serde(default)]
    #[schema(
        pattern = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)?$"
    )]
    pub content_base64: Option<String>,
    /// Wait for the end-to-end acknowledgement before answering (default true).
    #[serde(default = "yes")]
    pub wait: bool,
    /// How the message travels: `direct` (default), `onion` (through at least three relays,
    /// so that no relay learns both ends; content limited to one onion packet, about 7 KiB),
    /// or only over `tor` or `i2p` (409 `no_transport` on a node without that transport).
    #[serde(default)]
    #[schema(value_type = Option<PrivacyName>)]
    pub privacy: Option<String>,
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

/// The privacy names `SendRequest::privacy` takes (only for the OpenAPI document: the
/// handler parses them into [`Privacy`]).
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
enum PrivacyName {
    /// Over a direct connection (the default).
    Direct,
    /// Through a circuit of at least three relays.
    Onion,
    /// Only over Tor.
    Tor,
    /// Only over I2P.
    I2p,
}

/// Body of `POST /broadcasts`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BroadcastRequest {
    /// Topic, 1..=128 characters.
    #[schema(min_length = 1, max_length = 128)]
    pub topic: String,
    /// Content type (empty or absent: `text/plain`), at most 128 characters.
    #[serde(default = "text_plain")]
    #[schema(max_length = 128)]
    pub content_type: String,
    /// UTF-8 content (or `content_base64`, not both), at most 65536 bytes.
    #[serde(default)]
    pub content: Option<String>,
    /// Binary content, standard base64 with padding.
    #[serde(default)]
    #[schema(
        pattern = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)?$"
    )]
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
    /// NodeId to ask (as `SendRequest::to`).
    #[schema(pattern = r"^(?:[a-z2-7]{51}[aq]|[0-9a-fA-F]{64})$")]
    pub to: String,
    /// Method name, 1..=128 characters.
    #[schema(min_length = 1, max_length = 128)]
    pub method: String,
    /// UTF-8 body (or `body_base64`, not both).
    #[serde(default)]
    pub body: Option<String>,
    /// Binary body, standard base64 with padding.
    #[serde(default)]
    #[schema(
        pattern = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)?$"
    )]
    pub body_base64: Option<String>,
    /// How long to wait, in milliseconds: 1..=120000 (default 10000).
    #[serde(default = "ten_seconds", deserialize_with = "whole_number")]
    #[schema(minimum = 1, maximum = 120_000)]
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

/// A non-negative integer as JSON Schema means it: `1014` or `1014.0` (a number whose
/// fractional part is zero), not `1014.5`.
fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    struct Whole;
    impl serde::de::Visitor<'_> for Whole {
        type Value = u64;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a non-negative integer")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom("a negative number"))
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<u64, E> {
            // Integral and below 2^64 (u64::MAX as f64 rounds up to 2^64): exact.
            if v.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&v) {
                Ok(v as u64)
            } else {
                Err(E::custom(format!("{v} is not a non-negative integer")))
            }
        }
    }
    d.deserialize_any(Whole)
}

/// A NodeId in its text form, exactly (no surrounding spaces). Text of the right form that
/// is no Ed25519 public key names nobody: 404, as for a NodeId no node knows.
fn parse_node(text: &str) -> Result<NodeId, ApiError> {
    let shown: String = text.chars().take(80).collect();
    if text.trim() != text {
        return Err(ApiError::BadRequest(
            "invalid_node_id",
            format!("{shown:?} is not a NodeId (surrounding spaces)"),
        ));
    }
    text.parse().map_err(|e| match e {
        meshara_core::IdentityError::InvalidKey => ApiError::NotAKey(shown),
        _ => ApiError::BadRequest("invalid_node_id", format!("{shown:?} is not a NodeId")),
    })
}

fn content(text: Option<String>, base64: Option<String>, field: &str) -> Result<Bytes, ApiError> {
    match (text, base64) {
        (Some(t), None) => Ok(Bytes::from(t)),
        (None, Some(b)) => BASE64
            .decode(b.as_bytes())
            .map(Bytes::from)
            .map_err(|e| ApiError::BadRequest("invalid_base64", format!("{field}_base64: {e}"))),
        (None, None) => Ok(Bytes::new()),
        (Some(_), Some(_)) => Err(ApiError::BadRequest(
            "ambiguous_content",
            format!("give {field} or {field}_base64, not both"),
        )),
    }
}

fn content_type_or_default(content_type: String) -> String {
    if content_type.is_empty() {
        text_plain()
    } else {
        content_type
    }
}

fn timeout(ms: u64) -> Result<Duration, ApiError> {
    if ms == 0 || ms > 120_000 {
        return Err(ApiError::BadRequest(
            "invalid_timeout",
            "timeout_ms must be 1..=120000".into(),
        ));
    }
    Ok(Duration::from_millis(ms))
}

/// A request body the routes accept as JSON or as protobuf, by its `Content-Type`.
pub(crate) trait FromApiBody: Sized {
    /// The JSON form.
    type Json: DeserializeOwned;
    /// The protobuf form.
    type Proto: prost::Message + Default;
    fn from_json(json: Self::Json) -> Result<Self, ApiError>;
    fn from_proto(proto: Self::Proto) -> Result<Self, ApiError>;
}

/// Extracts a [`FromApiBody`] from a JSON or protobuf body. Rejections use the routes' error
/// format: 415 for another content type, 413 beyond the body limit, 400/422 for bad bodies.
pub(crate) struct ApiBody<T>(T);

impl<S, T> FromRequest<S> for ApiBody<T>
where
    T: FromApiBody,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let content_type = req.headers().get(header::CONTENT_TYPE);
        let parsed = if is_protobuf(content_type) {
            let Protobuf(proto) = Protobuf::<T::Proto>::from_request(req, state)
                .await
                .map_err(IntoResponse::into_response)?;
            T::from_proto(proto)
        } else if is_json(content_type) {
            let JsonBody(json) = JsonBody::<T::Json>::from_request(req, state)
                .await
                .map_err(IntoResponse::into_response)?;
            T::from_json(json)
        } else {
            let got = content_type
                .and_then(|v| v.to_str().ok())
                .map_or_else(|| "no Content-Type".to_owned(), |v| format!("{v:?}"));
            return Err(error_response(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "wrong_content_type",
                format!(
                    "expected `Content-Type: application/json` or `application/x-protobuf`, got {got}"
                ),
            ));
        };
        parsed.map(ApiBody).map_err(IntoResponse::into_response)
    }
}

struct SendArgs {
    to: NodeId,
    content_type: String,
    content: Bytes,
    wait: bool,
    privacy: Privacy,
}

/// A privacy name; protobuf's default (empty) is `direct`, JSON says so by leaving it out.
fn privacy(name: &str) -> Result<Privacy, ApiError> {
    name.parse().map_err(|e: meshara_core::UnknownPrivacy| {
        ApiError::BadRequest("invalid_privacy", e.to_string())
    })
}

impl FromApiBody for SendArgs {
    type Json = SendRequest;
    type Proto = proto::SendRequest;

    fn from_json(req: SendRequest) -> Result<Self, ApiError> {
        Ok(SendArgs {
            to: parse_node(&req.to)?,
            content: content(req.content, req.content_base64, "content")?,
            content_type: content_type_or_default(req.content_type),
            wait: req.wait,
            privacy: req
                .privacy
                .as_deref()
                .map_or(Ok(Privacy::Direct), privacy)?,
        })
    }

    fn from_proto(req: proto::SendRequest) -> Result<Self, ApiError> {
        Ok(SendArgs {
            to: parse_node(&req.to)?,
            content_type: content_type_or_default(req.content_type),
            content: req.content,
            wait: req.wait.unwrap_or(true),
            privacy: match req.privacy.as_str() {
                "" => Privacy::Direct,
                name => privacy(name)?,
            },
        })
    }
}

struct BroadcastArgs {
    topic: String,
    content_type: String,
    content: Bytes,
}

impl FromApiBody for BroadcastArgs {
    type Json = BroadcastRequest;
    type Proto = proto::BroadcastRequest;

    fn from_json(req: BroadcastRequest) -> Result<Self, ApiError> {
        Ok(BroadcastArgs {
            content: content(req.content, req.content_base64, "content")?,
            topic: req.topic,
            content_type: content_type_or_default(req.content_type),
        })
    }

    fn from_proto(req: proto::BroadcastRequest) -> Result<Self, ApiError> {
        Ok(BroadcastArgs {
            topic: req.topic,
            content_type: content_type_or_default(req.content_type),
            content: req.content,
        })
    }
}

struct QueryArgs {
    to: NodeId,
    method: String,
    body: Bytes,
    timeout: Duration,
}

impl FromApiBody for QueryArgs {
    type Json = QueryRequest;
    type Proto = proto::QueryRequest;

    fn from_json(req: QueryRequest) -> Result<Self, ApiError> {
        Ok(QueryArgs {
            to: parse_node(&req.to)?,
            body: content(req.body, req.body_base64, "body")?,
            method: req.method,
            timeout: timeout(req.timeout_ms)?,
        })
    }

    fn from_proto(req: proto::QueryRequest) -> Result<Self, ApiError> {
        Ok(QueryArgs {
            to: parse_node(&req.to)?,
            method: req.method,
            body: req.body,
            timeout: timeout(req.timeout_ms.unwrap_or_else(ten_seconds))?,
        })
    }
}

/// Send an end-to-end encrypted private message.
#[utoipa::path(post, path = "/messages",
    request_body(description = "JSON SendRequest, or protobuf meshara.api.v1.SendRequest", content(
        (SendRequest = "application/json"),
        ("application/x-protobuf"))),
    responses(
        (status = 200, description = "Acknowledged by the recipient (or queued, with wait=false) (JSON SendResponse, or protobuf meshara.api.v1.SendResponse)", content(
            (SendResponse = "application/json"),
            ("application/x-protobuf"))),
        (status = 400, description = "Bad NodeId, content, privacy or body, or a message to this node itself", body = ErrorBody),
        (status = 403, description = "The recipient is banned (`banned`)", body = ErrorBody),
        (status = 404, description = "No node has this NodeId (`recipient_not_found`): with wait, as soon as a DHT lookup that reached other nodes shows it, without sending; at once for text that is no public key", body = ErrorBody),
        (status = 409, description = "Tor or I2P privacy on a node without that transport (`no_transport`)", body = ErrorBody),
        (status = 413, description = "Body or message too large (for onion routing: more than one onion packet holds)", body = ErrorBody),
        (status = 415, description = "Neither JSON nor protobuf", body = ErrorBody),
        (status = 422, description = "A field of the wrong type, a missing one, or one the body may not have", body = ErrorBody),
        (status = 502, description = "The connection to the recipient failed (`transport`)", body = ErrorBody),
        (status = 503, description = "Outbox full, node stopped, or too few relays known for onion routing", body = ErrorBody),
        (status = 504, description = "Not acknowledged after every retry", body = ErrorBody)))]
async fn send_message<S>(
    MesharaNode(node): MesharaNode,
    format: Format,
    ApiBody(req): ApiBody<SendArgs>,
) -> Result<Response, ApiError>
where
    Node: FromRef<S>,
    S: Send + Sync,
{
    let pending = node
        .send_private_with(req.to, &req.content_type, req.content, req.privacy)
        .await?;
    let id = pending.id().to_string();
    let (delivered, latency_ms) = if req.wait {
        let confirmed = pending.confirmed().await?;
        (true, Some(confirmed.latency.as_secs_f64() * 1e3))
    } else {
        (false, None)
    };
    Ok(format.reply(
        || SendResponse {
            id: id.clone(),
            delivered,
            latency_ms,
        },
        || proto::SendResponse {
            id: id.clone(),
            delivered,
            latency_ms,
        },
    ))
}

/// Sign and send a broadcast on a topic.
#[utoipa::path(post, path = "/broadcasts",
    request_body(description = "JSON BroadcastRequest, or protobuf meshara.api.v1.BroadcastRequest", content(
        (BroadcastRequest = "application/json"),
        ("application/x-protobuf"))),
    responses(
        (status = 200, description = "Sent to the network (JSON BroadcastResponse, or protobuf meshara.api.v1.BroadcastResponse)", content(
            (BroadcastResponse = "application/json"),
            ("application/x-protobuf"))),
        (status = 400, description = "Bad topic, content or body", body = ErrorBody),
        (status = 413, description = "Content too large", body = ErrorBody),
        (status = 415, description = "Neither JSON nor protobuf", body = ErrorBody),
        (status = 422, description = "A field of the wrong type, a missing one, or one the body may not have", body = ErrorBody),
        (status = 429, description = "The node already takes part in as many topics as it may (`topic_limit`)", body = ErrorBody),
        (status = 503, description = "The node stopped", body = ErrorBody)))]
async fn broadcast<S>(
    MesharaNode(node): MesharaNode,
    format: Format,
    ApiBody(req): ApiBody<BroadcastArgs>,
) -> Result<Response, ApiError>
where
    Node: FromRef<S>,
    S: Send + Sync,
{
    let id = node
        .broadcast(&req.topic, &req.content_type, req.content)?
        .to_string();
    Ok(format.reply(
        || BroadcastResponse { id: id.clone() },
        || proto::BroadcastResponse { id: id.clone() },
    ))
}

/// Ask a peer a query and wait for its answer.
#[utoipa::path(post, path = "/queries",
    request_body(description = "JSON QueryRequest, or protobuf meshara.api.v1.QueryRequest", content(
        (QueryRequest = "application/json"),
        ("application/x-protobuf"))),
    responses(
        (status = 200, description = "The peer's answer (JSON QueryResponse, or protobuf meshara.api.v1.QueryResponse)", content(
            (QueryResponse = "application/json"),
            ("application/x-protobuf"))),
        (status = 400, description = "Bad NodeId, method, body or timeout, or a query to this node itself", body = ErrorBody),
        (status = 403, description = "The peer is banned (`banned`)", body = ErrorBody),
        (status = 404, description = "No node has this NodeId (`recipient_not_found`), as soon as a DHT lookup that reached other nodes shows it", body = ErrorBody),
        (status = 413, description = "The query does not fit in a frame", body = ErrorBody),
        (status = 415, description = "Neither JSON nor protobuf", body = ErrorBody),
        (status = 422, description = "A field of the wrong type, a missing one, or one the body may not have", body = ErrorBody),
        (status = 502, description = "The peer answered with an error status (`query_rejected`), or the connection failed", body = ErrorBody),
        (status = 503, description = "Too many queries pending, or the node stopped", body = ErrorBody),
        (status = 504, description = "No answer within the timeout", body = ErrorBody)))]
async fn query<S>(
    MesharaNode(node): MesharaNode,
    format: Format,
    ApiBody(req): ApiBody<QueryArgs>,
) -> Result<Response, ApiError>
where
    Node: FromRef<S>,
    S: Send + Sync,
{
    let answer = node
        .query(req.to, &req.method, req.body, req.timeout)
        .await?;
    Ok(format.reply(
        || QueryResponse {
            body: std::str::from_utf8(&answer).ok().map(str::to_owned),
            body_base64: BASE64.encode(&answer),
        },
        || proto::QueryResponse {
            body: answer.clone(),
        },
    ))
}

/// List connected peers.
#[utoipa::path(get, path = "/peers", responses((status = 200,
    description = "Connected peers (JSON array of PeerJson, or protobuf meshara.api.v1.PeerList)",
    content((Vec<PeerJson> = "application/json"), ("application/x-protobuf")))))]
async fn peers<S>(MesharaNode(node): MesharaNode, format: Format) -> Response
where
    Node: FromRef<S>,
    S: Send + Sync,
{
    let peers = node.peers();
    format.reply(
        || {
            peers
                .iter()
                .map(|p| PeerJson {
                    node_id: p.node_id.to_string(),
                    transport: p.transport.as_str().into(),
                    addr: p.addr.map(|a| a.to_string()),
                    inbound: p.inbound,
                    rtt_ms: p.rtt.map(|r| r.as_secs_f64() * 1e3),
                    messages_in: p.messages_in,
                    messages_out: p.messages_out,
                })
                .collect::<Vec<_>>()
        },
        || proto::PeerList {
            peers: peers
                .iter()
                .map(|p| proto::Peer {
                    node_id: p.node_id.to_string(),
                    transport: p.transport.as_str().into(),
                    addr: p.addr.map(|a| a.to_string()),
                    inbound: p.inbound,
                    rtt_ms: p.rtt.map(|r| r.as_secs_f64() * 1e3),
                    messages_in: p.messages_in,
                    messages_out: p.messages_out,
                })
                .collect(),
        },
    )
}

/// The node's status.
#[utoipa::path(get, path = "/status", responses((status = 200,
    description = "Node status (JSON StatusJson, or protobuf meshara.api.v1.Status)",
    content((StatusJson = "application/json"), ("application/x-protobuf")))))]
async fn status<S>(MesharaNode(node): MesharaNode, format: Format) -> Response
where
    Node: FromRef<S>,
    S: Send + Sync,
{
    let s = node.stats();
    let node_id = node.node_id().to_string();
    let fingerprint = node.fingerprint().to_string();
    format.reply(
        || StatusJson {
            node_id: node_id.clone(),
            fingerprint: fingerprint.clone(),
            peers: s.peers,
            connections: s.connections,
            outbox: s.outbox,
            messages_in: s.messages_in,
            messages_out: s.messages_out,
            uptime_s: s.uptime.as_secs(),
        },
        || proto::Status {
            node_id: node_id.clone(),
            fingerprint: fingerprint.clone(),
            peers: s.peers as u64,
            connections: s.connections as u64,
            outbox: s.outbox as u64,
            messages_in: s.messages_in,
            messages_out: s.messages_out,
            uptime_s: s.uptime.as_secs(),
        },
    )
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
#[utoipa::path(get, path = "/events/ws",
    params(
        ("Connection" = String, Header, description = "`Upgrade`"),
        ("Upgrade" = String, Header, description = "`websocket`"),
        ("Sec-WebSocket-Version" = String, Header, description = "`13`"),
        ("Sec-WebSocket-Key" = String, Header, description = "16 random bytes, base64 (RFC 6455)"),
    ),
    responses(
        (status = 101, description = "WebSocket of EventJson text frames"),
        (status = 400, description = "Not a WebSocket upgrade request", content_type = "text/plain"),
        (status = 426, description = "The connection cannot be upgraded (not HTTP/1.1)", content_type = "text/plain")))]
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

/// Prometheus metrics of the node: OpenMetrics when the `Accept` header prefers it (as
/// Prometheus's does), else the classic text format.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "OpenMetrics or classic Prometheus text format, as Accept asks", content(
    (String = "application/openmetrics-text"),
    (String = "text/plain"),
))))]
async fn metrics<S>(MesharaNode(node): MesharaNode, headers: axum::http::HeaderMap) -> Response
where
    Node: FromRef<S>,
    S: Send + Sync,
{
    crate::layers::metrics_response(&headers, node.metrics_text())
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
