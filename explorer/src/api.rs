//! The JSON API (`/api/v1/…`, described by [`openapi_document`]), live events over
//! Server-Sent Events, health and metrics, the web UI's files, and the explorer node's own
//! Meshara API at `/meshara` (behind a bearer token).
//!
//! Errors use the authority server's body: `{"error": {"code": "...", "message": "..."}}`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRef, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::Stream;
use meshara_core::Node;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, broadcast};

use crate::db::{CrawlRow, NodeQuery, NodeRow, Sort};
use crate::{AppState, lookup};

/// Live-event subscribers served at once.
pub const MAX_EVENT_STREAMS: usize = 256;
/// Largest request body read (a lookup request is ~70 bytes).
pub const MAX_BODY: usize = 4096;
/// Most nodes per page.
pub const MAX_PER_PAGE: i64 = 200;
/// Sessions shown on a node page.
pub const SESSIONS_SHOWN: i64 = 500;

/// The Content-Security-Policy of every response: nothing but this origin, no inline code.
pub const CSP: &str = "default-src 'self'; script-src 'self'; worker-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; \
     object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// A refusal with a status, a stable code and a message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid", message)
    }
    fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": {"code": self.code, "message": self.message}})),
        )
            .into_response()
    }
}

impl From<crate::db::DbError> for ApiError {
    fn from(e: crate::db::DbError) -> Self {
        ApiError::internal(e)
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// State of the mounted node API.
#[derive(Clone)]
struct NodeApi {
    node: Node,
}

impl FromRef<NodeApi> for Node {
    fn from_ref(state: &NodeApi) -> Node {
        state.node.clone()
    }
}

/// The router.
pub fn router(state: Arc<AppState>) -> Router {
    let streams = Arc::new(Semaphore::new(MAX_EVENT_STREAMS));
    let mut app = Router::new()
        .route("/api/v1/overview", get(overview))
        .route("/api/v1/history", get(history))
        .route("/api/v1/graph", get(graph))
        .route("/api/v1/nodes", get(nodes))
        .route("/api/v1/nodes/{id}", get(node))
        .route("/api/v1/lookups", post(run_lookup))
        .route(
            "/api/v1/events",
            get(move |s: State<Arc<AppState>>| events(s, streams.clone())),
        )
        .route("/api/v1/snapshot", get(snapshot))
        .route(
            "/api/v1/openapi.json",
            get(|| async { Json(openapi_document()) }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/", get(|| async { asset("index.html") }))
        .route(
            "/{*path}",
            get(|Path(path): Path<String>| async move { asset(&path) }),
        );
    if let Some(token) = state.node_token.clone() {
        // Bearer token, and the browser defences of `meshara_axum`: a foreign Origin or a Host
        // that is not ours is refused before the token is even looked at.
        let access = state
            .config
            .node
            .api_hosts
            .iter()
            .fold(meshara_axum::Access::bearer(&token), |a, h| a.allow_host(h));
        let node_api = meshara_axum::routes::<NodeApi>(access).with_state(NodeApi {
            node: state.node.clone(),
        });
        app = app.nest("/meshara", node_api);
    }
    app.fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(axum::middleware::from_fn(security_headers))
        .layer(state.http_metrics.layer())
        .with_state(state)
}

async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    res
}

fn asset(path: &str) -> Response {
    match crate::web::get(path) {
        Some((content_type, body)) => (
            [
                (header::CONTENT_TYPE, content_type),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            body,
        )
            .into_response(),
        None => ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such file").into_response(),
    }
}

fn parse_json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

/// A listed node as the API shows it in lists.
pub fn summary(n: &NodeRow) -> Value {
    json!({
        "id": n.id,
        "fingerprint": fingerprint_dashed(&n.fingerprint),
        "agent": n.agent,
        "version": n.version,
        "capabilities": parse_json(&n.capabilities),
        "transports": parse_json(&n.transports),
        "addresses": parse_json(&n.addresses),
        "up": n.up,
        "first_seen": n.first_seen,
        "last_seen": n.last_seen,
        "rtt_ms": n.rtt_us.map(|us| us as f64 / 1000.0),
        "uptime_24h": n.uptime_ppm.map(|p| p as f64 / 1e6),
        "neighbour_count": n.neighbour_count,
        "topics": parse_json(&n.topics),
    })
}

fn fingerprint_dashed(f: &str) -> String {
    f.as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("-")
}

/// A crawl as the API shows it.
pub fn crawl_json(c: &CrawlRow) -> Value {
    json!({
        "id": c.id,
        "source": c.source,
        "started_at": c.started_at,
        "finished_at": c.finished_at,
        "duration_ms": c.duration_ms,
        "discovered": c.discovered,
        "reached": c.reached,
        "failed": c.failed,
        "edges": c.edges,
    })
}

/// Edges between listed nodes, each once (`i < j`), as indexes into `nodes`.
fn edges(nodes: &[NodeRow]) -> Vec<[usize; 2]> {
    let index: HashMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.as_str(), i))
        .collect();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let neighbours: Vec<String> = serde_json::from_str(&n.neighbours).unwrap_or_default();
        for m in neighbours {
            if let Some(&j) = index.get(m.as_str()) {
                let e = if i < j { [i, j] } else { [j, i] };
                if i != j && seen.insert(e) {
                    out.push(e);
                }
            }
        }
    }
    out
}

async fn overview(State(s): State<Arc<AppState>>) -> ApiResult<Json<Value>> {
    let generation = s.generation.load(Ordering::Relaxed);
    let cached = |s: &AppState| {
        s.overview_cache.lock().ok().and_then(|c| {
            c.as_ref()
                .filter(|(g, _)| *g == generation)
                .map(|(_, v)| v.clone())
        })
    };
    let value = match cached(&s) {
        Some(v) => v,
        None => {
            let _building = s.cache_build.lock().await;
            match cached(&s) {
                Some(v) => v,
                None => {
                    let v = Arc::new(compute_overview(&s).await?);
                    if let Ok(mut c) = s.overview_cache.lock() {
                        *c = Some((generation, v.clone()));
                    }
                    v
                }
            }
        }
    };
    let mut out = value.as_ref().clone();
    out["crawling"] = json!(s.crawling.load(Ordering::Relaxed));
    Ok(Json(out))
}

/// The overview of the stored network (everything but `crawling`, which is live).
async fn compute_overview(s: &AppState) -> ApiResult<Value> {
    let nodes = s.db.all_nodes().await?;
    let up = nodes.iter().filter(|n| n.up).count();
    let mut versions: BTreeMap<String, i64> = BTreeMap::new();
    let mut transports: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    let mut capabilities: BTreeMap<String, i64> = BTreeMap::new();
    for n in &nodes {
        *versions.entry(n.version.clone()).or_default() += 1;
        let listed: Vec<String> = serde_json::from_str(&n.transports).unwrap_or_default();
        let probes: Vec<crate::crawl::Probe> = serde_json::from_str(&n.probes).unwrap_or_default();
        for t in listed {
            let answered = probes.iter().any(|p| p.transport == t && p.ok);
            let e = transports.entry(t).or_default();
            e.0 += 1;
            e.1 += i64::from(answered);
        }
        let caps: Vec<String> = serde_json::from_str(&n.capabilities).unwrap_or_default();
        for c in caps {
            *capabilities.entry(c).or_default() += 1;
        }
    }
    let last = s.db.last_crawl().await?;
    let simulated = nodes.iter().any(|n| n.source == "sim");
    Ok(json!({
        "network": {
            "listed": nodes.len(),
            "up": up,
            "down": nodes.len() - up,
            "known_unreached": last.as_ref().map_or(0, |c| c.failed),
            "edges": edges(&nodes).len(),
        },
        "by_version": versions.iter().map(|(v, c)| json!({"version": v, "count": c})).collect::<Vec<_>>(),
        "by_transport": transports.iter().map(|(t, (c, a))| json!({"transport": t, "count": c, "answered": a})).collect::<Vec<_>>(),
        "by_capability": capabilities.iter().map(|(k, c)| json!({"capability": k, "count": c})).collect::<Vec<_>>(),
        "last_crawl": last.as_ref().map(crawl_json),
        "crawling": false,
        "simulated": simulated,
        "explorer": {"node_id": s.node.node_id().to_string(), "version": env!("CARGO_PKG_VERSION")},
    }))
}

fn param<'a>(q: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    q.get(name).map(String::as_str).filter(|v| !v.is_empty())
}

fn number(
    q: &HashMap<String, String>,
    name: &str,
    default: i64,
    min: i64,
    max: i64,
) -> ApiResult<i64> {
    match param(q, name) {
        None => Ok(default),
        Some(v) => match v.parse::<i64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::invalid(format!(
                "{name} must be a number in {min}..={max}"
            ))),
        },
    }
}

async fn history(
    State(s): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let now = crate::crawl::unix_now() as i64;
    let since = number(&q, "since", now - 7 * 86_400, 0, i64::MAX)?;
    let crawls = s.db.crawls(since, 2000).await?;
    let points: Vec<Value> = crawls
        .iter()
        .map(|c| {
            json!({
                "at": c.finished_at.unwrap_or(c.started_at),
                "listed": c.listed,
                "up": c.up_count,
                "joined": c.joined,
                "left": c.left_count,
                "versions": parse_json(&c.versions),
            })
        })
        .collect();
    let listed_up = s.db.counts().await?.1;
    let releases: Vec<Value> = s
        .db
        .releases()
        .await?
        .into_iter()
        .map(|(package, channel, version, sequence, seen_at)| {
            let agent = format!("{package}/{version}");
            let adoption: Vec<Value> = crawls
                .iter()
                .filter(|c| c.source == "crawl")
                .map(|c| {
                    let versions: HashMap<String, i64> =
                        serde_json::from_str(&c.versions).unwrap_or_default();
                    json!({"at": c.finished_at.unwrap_or(c.started_at), "nodes": versions.get(&agent).copied().unwrap_or(0)})
                })
                .collect();
            let now_running = adoption.last().and_then(|p| p["nodes"].as_i64()).unwrap_or(0);
            json!({
                "package": package,
                "channel": channel,
                "version": version,
                "sequence": sequence,
                "seen_at": seen_at,
                "nodes": now_running,
                "share": if listed_up > 0 { now_running as f64 / listed_up as f64 } else { 0.0 },
                "adoption": adoption,
            })
        })
        .collect();
    Ok(Json(json!({"points": points, "releases": releases})))
}

async fn graph(State(s): State<Arc<AppState>>, headers: HeaderMap) -> ApiResult<Response> {
    let generation = s.generation.load(Ordering::Relaxed);
    // The graph changes only when the stored network does: its generation is the ETag.
    let etag = format!("\"g{generation}\"");
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    if fresh {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    let cached = |s: &AppState| {
        s.graph_cache.lock().ok().and_then(|c| {
            c.as_ref()
                .filter(|(g, _)| *g == generation)
                .map(|(_, v)| v.clone())
        })
    };
    let body = match cached(&s) {
        Some(b) => b,
        None => {
            // Concurrent misses wait for one build instead of each loading the network.
            let _building = s.cache_build.lock().await;
            match cached(&s) {
                Some(b) => b,
                None => {
                    let nodes = s.db.all_nodes().await?;
                    let edges = edges(&nodes);
                    let last = s.db.last_crawl().await?;
                    let value = json!({
                        "crawl_id": last.map(|c| c.id),
                        "simulated": nodes.iter().any(|n| n.source == "sim"),
                        "nodes": nodes.iter().map(|n| json!({
                            "id": n.id,
                            "up": n.up,
                            "version": n.version,
                            "capabilities": parse_json(&n.capabilities),
                        })).collect::<Vec<_>>(),
                        "edges": edges,
                    });
                    let body = bytes::Bytes::from(serde_json::to_vec(&value).map_err(|e| {
                        ApiError::new(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "internal",
                            format!("graph: {e}"),
                        )
                    })?);
                    if let Ok(mut c) = s.graph_cache.lock() {
                        *c = Some((generation, body.clone()));
                    }
                    body
                }
            }
        }
    };
    Ok((
        [
            (
                header::ETAG,
                HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"g\"")),
            ),
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
        ],
        body,
    )
        .into_response())
}

async fn nodes(
    State(s): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let page = number(&q, "page", 1, 1, 1_000_000)?;
    let per_page = number(&q, "per_page", 50, 1, MAX_PER_PAGE)?;
    let up = match param(&q, "state") {
        None | Some("all") => None,
        Some("up") => Some(true),
        Some("down") => Some(false),
        Some(_) => return Err(ApiError::invalid("state must be up, down or all")),
    };
    let sort = match param(&q, "sort") {
        None | Some("last_seen") => Sort::LastSeen,
        Some("first_seen") => Sort::FirstSeen,
        Some("id") => Sort::Id,
        Some("rtt") => Sort::Rtt,
        Some("version") => Sort::Version,
        Some("uptime") => Sort::Uptime,
        Some(_) => {
            return Err(ApiError::invalid(
                "sort must be last_seen, first_seen, id, rtt, version or uptime",
            ));
        }
    };
    let descending = match param(&q, "order") {
        None => matches!(sort, Sort::LastSeen | Sort::FirstSeen | Sort::Uptime),
        Some("desc") => true,
        Some("asc") => false,
        Some(_) => return Err(ApiError::invalid("order must be asc or desc")),
    };
    let text = param(&q, "q").map(str::to_owned);
    // Counted in characters, as the OpenAPI document's maxLength is.
    if text.as_ref().is_some_and(|t| t.chars().count() > 128) {
        return Err(ApiError::invalid("q is at most 128 characters"));
    }
    let capability = param(&q, "capability").map(str::to_owned);
    if let Some(c) = &capability {
        if !CAPABILITIES.contains(&c.as_str()) {
            return Err(ApiError::invalid(format!(
                "capability must be one of {}",
                CAPABILITIES.join(", ")
            )));
        }
    }
    let transport = param(&q, "transport").map(str::to_owned);
    if let Some(t) = &transport {
        if !TRANSPORTS.contains(&t.as_str()) {
            return Err(ApiError::invalid(format!(
                "transport must be one of {}",
                TRANSPORTS.join(", ")
            )));
        }
    }
    let version = param(&q, "version").map(str::to_owned);
    if version.as_ref().is_some_and(|v| v.chars().count() > 64) {
        return Err(ApiError::invalid("version is at most 64 characters"));
    }
    let query = NodeQuery {
        q: text,
        up,
        capability,
        transport,
        version,
        sort,
        descending,
        offset: (page - 1).saturating_mul(per_page),
        limit: per_page,
    };
    let (total, rows) = s.db.nodes(&query).await?;
    Ok(Json(json!({
        "total": total,
        "page": page,
        "per_page": per_page,
        "nodes": rows.iter().map(summary).collect::<Vec<_>>(),
    })))
}

const CAPABILITIES: &[&str] = &[
    "relay",
    "bridge_tor",
    "bridge_i2p",
    "authority",
    "store_forward",
    "update_mirror",
];
const TRANSPORTS: &[&str] = &["quic", "tcp", "tor", "i2p"];

async fn node(State(s): State<Arc<AppState>>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    // Any 32-byte key in base32: simulated topologies use keys that are not public keys.
    let key = data_encoding::BASE32_NOPAD
        .decode(id.to_ascii_uppercase().as_bytes())
        .ok()
        .filter(|k| k.len() == 32 && id.len() == 52 && id.bytes().all(|b| !b.is_ascii_uppercase()));
    if key.is_none() {
        return Err(ApiError::invalid(
            "not a NodeId (52 lowercase base32 characters)",
        ));
    }
    let Some(row) = s.db.node(&id).await? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no listed node with that NodeId",
        ));
    };
    let mut out = summary(&row);
    let record_size = data_encoding::BASE64
        .decode(row.record.as_bytes())
        .map(|b| b.len())
        .unwrap_or(0);
    let signature = data_encoding::BASE64
        .decode(row.record.as_bytes())
        .ok()
        .and_then(|b| {
            <meshara_core::proto::SignedNodeRecord as prost::Message>::decode(b.as_slice()).ok()
        })
        .map(|r| data_encoding::HEXLOWER.encode(&r.signature))
        .unwrap_or_default();
    let neighbour_ids: Vec<String> = serde_json::from_str(&row.neighbours).unwrap_or_default();
    let neighbours = s.db.brief(&neighbour_ids).await?;
    let sessions = s.db.sessions(&row.id, SESSIONS_SHOWN).await?;
    if let Value::Object(m) = &mut out {
        m.insert(
            "record".into(),
            json!({
                "sequence": row.sequence,
                "issued_at": row.issued_at,
                "expires_at": row.expires_at,
                "signature": signature,
                "size": record_size,
                "simulated": row.source == "sim",
            }),
        );
        m.insert(
            "status".into(),
            row.status.as_deref().map(parse_json).unwrap_or(Value::Null),
        );
        m.insert("probes".into(), parse_json(&row.probes));
        m.insert(
            "neighbours".into(),
            neighbours
                .iter()
                .map(
                    |(id, f, up)| json!({"id": id, "fingerprint": fingerprint_dashed(f), "up": up}),
                )
                .collect(),
        );
        m.insert("sessions".into(), json!(sessions));
    }
    Ok(Json(out))
}

async fn run_lookup(State(s): State<Arc<AppState>>, req: Request) -> ApiResult<Json<Value>> {
    let json_body = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json_body {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the lookup as application/json",
        ));
    }
    let body = axum::body::to_bytes(req.into_body(), MAX_BODY)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the body is limited to {MAX_BODY} bytes"),
            )
        })?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid(format!("body is not JSON: {e}")))?;
    let target = value
        .get("target")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::invalid("body must be {\"target\": \"<nodeid>\"}"))?;
    // Any 32-byte key, as a DHT lookup takes (a NodeId is one, and a key that is not a node's
    // shows the rounds towards where it would be).
    let target: [u8; 32] = data_encoding::BASE32_NOPAD
        .decode(target.to_ascii_uppercase().as_bytes())
        .ok()
        .filter(|_| target.len() == 52 && !target.bytes().any(|b| b.is_ascii_uppercase()))
        .and_then(|k| k.try_into().ok())
        .ok_or_else(|| ApiError::invalid("target is not a key (52 lowercase base32 characters)"))?;
    let Ok(_permit) = s.lookups.try_acquire() else {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "busy",
            "too many lookups running; try again shortly",
        ));
    };
    s.metrics.lookups.inc();
    let trace = lookup::trace(&s.node, target).await;
    Ok(Json(json!(trace)))
}

async fn events(
    State(s): State<Arc<AppState>>,
    streams: Arc<Semaphore>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let Ok(permit) = streams.try_acquire_owned() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "too many live-event subscribers",
        ));
    };
    let rx = s.live.subscribe();
    let stop = s.shutdown.clone();
    let stream =
        futures_util::stream::unfold((rx, permit, stop), |(mut rx, permit, stop)| async move {
            loop {
                let next = tokio::select! {
                    next = rx.recv() => next,
                    // The stream ends when the explorer stops.
                    () = stop.cancelled() => return None,
                };
                match next {
                    Ok(e) => {
                        let event = Event::default().event(e.kind).data(e.data.to_string());
                        return Some((Ok(event), (rx, permit, stop)));
                    }
                    // A slow reader skips what it missed; the next crawl event resynchronises it.
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

async fn snapshot(State(s): State<Arc<AppState>>) -> ApiResult<Response> {
    let nodes = s.db.all_nodes().await?;
    let edges = edges(&nodes);
    let body = json!({
        "generated_at": crate::crawl::unix_now(),
        "crawl": s.db.last_crawl().await?.as_ref().map(crawl_json),
        "nodes": nodes.iter().map(|n| {
            let mut v = summary(n);
            if let Value::Object(m) = &mut v {
                m.insert("record".into(), json!({"signed": n.record, "sequence": n.sequence, "expires_at": n.expires_at}));
                m.insert("probes".into(), parse_json(&n.probes));
                m.insert("status".into(), n.status.as_deref().map(parse_json).unwrap_or(Value::Null));
            }
            v
        }).collect::<Vec<_>>(),
        "edges": edges.iter().map(|[i, j]| [nodes[*i].id.as_str(), nodes[*j].id.as_str()]).collect::<Vec<_>>(),
    });
    Ok((
        [(
            header::CONTENT_DISPOSITION,
            "attachment; filename=\"meshara-snapshot.json\"",
        )],
        Json(body),
    )
        .into_response())
}

async fn readyz(State(s): State<Arc<AppState>>) -> Response {
    if s.shutting_down() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    if !s.node.is_running() {
        return (StatusCode::SERVICE_UNAVAILABLE, "node stopped").into_response();
    }
    if !s.db.ping().await {
        return (StatusCode::SERVICE_UNAVAILABLE, "database unavailable").into_response();
    }
    (StatusCode::OK, "ready").into_response()
}

/// OpenMetrics when the `Accept` header prefers it (as Prometheus's does), else the classic
/// text format (`meshara_core::exposition`).
async fn metrics(State(s): State<Arc<AppState>>, request_headers: HeaderMap) -> Response {
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode_registry(&mut text, &s.registry) {
        return ApiError::internal(e).into_response();
    }
    let node = s.node.metrics_text();
    let mut out: String = text
        .lines()
        .chain(node.lines())
        .filter(|l| *l != "# EOF")
        .flat_map(|l| [l, "\n"])
        .collect();
    out.push_str("# EOF\n");
    let accept = request_headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let (content_type, body) = meshara_core::exposition::negotiate(accept, out);
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    (headers, Body::from(body)).into_response()
}

/// The OpenAPI 3.1 document of the JSON API.
pub fn openapi_document() -> Value {
    let error = json!({"$ref": "#/components/responses/Error"});
    let ok = |schema: Value, description: &str| json!({"description": description, "content": {"application/json": {"schema": schema}}});
    let query = |name: &str, schema: Value, description: &str| json!({"name": name, "in": "query", "required": false, "schema": schema, "description": description});
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "meshara-explorer",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "A live view of a Meshara network, crawled over its own protocol. Shows only what nodes publish in their signed records and status; nodes that ask not to be listed are never stored.",
        },
        "paths": {
            "/api/v1/overview": {"get": {
                "operationId": "overview", "summary": "Network totals, breakdowns and the last crawl",
                "responses": {"200": ok(json!({"$ref": "#/components/schemas/Overview"}), "Overview"), "default": error},
            }},
            "/api/v1/history": {"get": {
                "operationId": "history", "summary": "Totals per crawl over time",
                "parameters": [query("since", json!({"type": "integer", "minimum": 0}), "Unix seconds (default: a week ago)")],
                "responses": {"200": ok(json!({"$ref": "#/components/schemas/History"}), "History"), "400": error.clone(), "default": error},
            }},
            "/api/v1/graph": {"get": {
                "operationId": "graph", "summary": "The overlay: listed nodes and routing-table edges between them",
                "responses": {"200": ok(json!({"$ref": "#/components/schemas/Graph"}), "Graph (with an ETag; send If-None-Match for a 304)"), "304": {"description": "Unchanged since the ETag sent"}, "default": error},
            }},
            "/api/v1/nodes": {"get": {
                "operationId": "listNodes", "summary": "Listed nodes: search, filters, sort, pages",
                "parameters": [
                    query("q", json!({"type": "string", "maxLength": 128}), "NodeId or fingerprint prefix, or part of an address or agent"),
                    query("state", json!({"type": "string", "enum": ["up", "down", "all"]}), "Liveness"),
                    query("capability", json!({"type": "string", "enum": CAPABILITIES}), "Capability"),
                    query("transport", json!({"type": "string", "enum": TRANSPORTS}), "Advertised transport"),
                    query("version", json!({"type": "string", "maxLength": 64}), "Exact version"),
                    query("sort", json!({"type": "string", "enum": ["last_seen", "first_seen", "id", "rtt", "version", "uptime"]}), "Sort key"),
                    query("order", json!({"type": "string", "enum": ["asc", "desc"]}), "Order"),
                    query("page", json!({"type": "integer", "minimum": 1, "maximum": 1_000_000}), "1-based page"),
                    query("per_page", json!({"type": "integer", "minimum": 1, "maximum": MAX_PER_PAGE}), "Page size"),
                ],
                "responses": {"200": ok(json!({"$ref": "#/components/schemas/NodePage"}), "A page"), "400": error.clone(), "default": error},
            }},
            "/api/v1/nodes/{id}": {"get": {
                "operationId": "getNode", "summary": "One listed node: record, probes, status, neighbours, sessions",
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string", "pattern": "^[a-z2-7]{51}[aq]$"}, "description": "NodeId (52 lowercase base32 characters: 32 bytes, so the last one is a or q)"}],
                "responses": {"200": ok(json!({"$ref": "#/components/schemas/NodeDetail"}), "The node"), "400": error.clone(), "404": error.clone(), "default": error},
            }},
            "/api/v1/lookups": {"post": {
                "operationId": "lookup", "summary": "Run a DHT lookup from the explorer's node and return its rounds",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["target"], "properties": {"target": {"type": "string", "pattern": "^[a-z2-7]{51}[aq]$", "description": "A NodeId, or any 32-byte DHT key, in lowercase base32"}},
                }}}},
                "responses": {"200": ok(json!({"$ref": "#/components/schemas/Lookup"}), "The trace"), "400": error.clone(), "413": error.clone(), "415": error.clone(), "429": error.clone(), "default": error},
            }},
            "/api/v1/events": {"get": {
                "operationId": "events", "summary": "Live updates (Server-Sent Events: node, crawl, crawl_started)",
                "responses": {"200": {"description": "An event stream", "content": {"text/event-stream": {"schema": {"type": "string"}}}}, "503": error.clone(), "default": error},
            }},
            "/api/v1/snapshot": {"get": {
                "operationId": "snapshot", "summary": "Every listed node and edge, as one JSON document",
                "responses": {"200": ok(json!({"type": "object", "required": ["generated_at", "nodes", "edges"]}), "Snapshot"), "default": error},
            }},
            "/api/v1/openapi.json": {"get": {
                "operationId": "openapi", "summary": "This document",
                "responses": {"200": ok(json!({"type": "object"}), "OpenAPI 3.1"), "default": error},
            }},
        },
        "components": {
            "responses": {"Error": {"description": "A refusal", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
                "Address": {"type": "object", "required": ["transport", "host", "port"], "properties": {"transport": {"type": "string"}, "host": {"type": "string"}, "port": {"type": "integer"}}},
                "NodeSummary": {"type": "object", "required": ["id", "fingerprint", "agent", "version", "capabilities", "transports", "addresses", "up", "first_seen", "last_seen", "rtt_ms", "uptime_24h", "neighbour_count", "topics"], "properties": {
                    "id": {"type": "string"}, "fingerprint": {"type": "string"}, "agent": {"type": "string"},
                    "version": {"type": "string", "description": "From the agent (`name/version`); `unknown` when it names none"},
                    "capabilities": {"type": "array", "items": {"type": "string"}},
                    "transports": {"type": "array", "items": {"type": "string"}},
                    "addresses": {"type": "array", "items": {"$ref": "#/components/schemas/Address"}},
                    "up": {"type": "boolean"}, "first_seen": {"type": "integer"}, "last_seen": {"type": "integer"},
                    "rtt_ms": {"type": ["number", "null"]}, "uptime_24h": {"type": ["number", "null"]},
                    "neighbour_count": {"type": "integer"}, "topics": {"type": "array", "items": {"type": "string"}},
                }},
                "NodeDetail": {"allOf": [{"$ref": "#/components/schemas/NodeSummary"}, {"type": "object", "required": ["record", "status", "probes", "neighbours", "sessions"], "properties": {
                    "record": {"type": "object", "required": ["sequence", "issued_at", "expires_at", "signature", "size"], "properties": {"sequence": {"type": "integer"}, "issued_at": {"type": "integer"}, "expires_at": {"type": "integer"}, "signature": {"type": "string"}, "size": {"type": "integer"}, "simulated": {"type": "boolean"}}},
                    "status": {"type": ["object", "null"]},
                    "probes": {"type": "array", "items": {"type": "object", "required": ["transport", "address", "ok", "rtt_ms", "error", "at"], "properties": {"transport": {"type": "string"}, "address": {"type": "string"}, "ok": {"type": "boolean"}, "rtt_ms": {"type": ["number", "null"]}, "error": {"type": ["string", "null"]}, "at": {"type": "integer"}}}},
                    "neighbours": {"type": "array", "items": {"type": "object", "required": ["id", "fingerprint", "up"], "properties": {"id": {"type": "string"}, "fingerprint": {"type": "string"}, "up": {"type": "boolean"}}}},
                    "sessions": {"type": "array", "items": {"type": "object", "required": ["up", "start", "end"], "properties": {"up": {"type": "boolean"}, "start": {"type": "integer"}, "end": {"type": ["integer", "null"]}}}},
                }}]},
                "NodePage": {"type": "object", "required": ["total", "page", "per_page", "nodes"], "properties": {"total": {"type": "integer"}, "page": {"type": "integer"}, "per_page": {"type": "integer"}, "nodes": {"type": "array", "items": {"$ref": "#/components/schemas/NodeSummary"}}}},
                "Crawl": {"type": "object", "required": ["id", "source", "started_at", "finished_at", "duration_ms", "discovered", "reached", "failed", "edges"], "properties": {
                    "id": {"type": "integer"}, "source": {"type": "string"}, "started_at": {"type": "integer"}, "finished_at": {"type": ["integer", "null"]}, "duration_ms": {"type": ["integer", "null"]},
                    "discovered": {"type": "integer"}, "reached": {"type": "integer"}, "failed": {"type": "integer"}, "edges": {"type": "integer"},
                }},
                "Overview": {"type": "object", "required": ["network", "by_version", "by_transport", "by_capability", "last_crawl", "crawling", "simulated", "explorer"], "properties": {
                    "network": {"type": "object", "required": ["listed", "up", "down", "known_unreached", "edges"]},
                    "by_version": {"type": "array", "items": {"type": "object", "required": ["version", "count"]}},
                    "by_transport": {"type": "array", "items": {"type": "object", "required": ["transport", "count", "answered"]}},
                    "by_capability": {"type": "array", "items": {"type": "object", "required": ["capability", "count"]}},
                    "last_crawl": {"oneOf": [{"$ref": "#/components/schemas/Crawl"}, {"type": "null"}]},
                    "crawling": {"type": "boolean"}, "simulated": {"type": "boolean"},
                    "explorer": {"type": "object", "required": ["node_id", "version"]},
                }},
                "History": {"type": "object", "required": ["points", "releases"], "properties": {
                    "points": {"type": "array", "items": {"type": "object", "required": ["at", "listed", "up", "joined", "left", "versions"], "properties": {"versions": {"type": "object", "description": "Nodes up by agent (`package/version`)", "additionalProperties": {"type": "integer"}}}}},
                    "releases": {"type": "array", "items": {"type": "object", "required": ["package", "channel", "version", "sequence", "seen_at", "nodes", "share", "adoption"], "properties": {"nodes": {"type": "integer", "description": "Listed nodes up whose agent is `package/version` after the last crawl"}, "share": {"type": "number", "description": "nodes / listed nodes up"}}}},
                }},
                "Graph": {"type": "object", "required": ["crawl_id", "simulated", "nodes", "edges"], "properties": {
                    "crawl_id": {"type": ["integer", "null"]}, "simulated": {"type": "boolean"},
                    "nodes": {"type": "array", "items": {"type": "object", "required": ["id", "up", "version", "capabilities"]}},
                    "edges": {"type": "array", "items": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2}},
                }},
                "Lookup": {"type": "object", "required": ["target", "found", "duration_ms", "rounds", "closest"], "properties": {
                    "target": {"type": "string"}, "found": {"type": "boolean"}, "duration_ms": {"type": "integer"},
                    "rounds": {"type": "array", "items": {"type": "object", "required": ["round", "queried", "answered", "failed", "learned", "learned_from"], "properties": {"learned_from": {"type": "object", "description": "answering node → nodes first learned from its answer", "additionalProperties": {"type": "array", "items": {"type": "string"}}}}}},
                    "closest": {"type": "array", "items": {"type": "string"}},
                }},
            },
        },
    })
}
