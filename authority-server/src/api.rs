//! The admin API, the public update-check endpoint, health, metrics and the dashboard.
//!
//! Every admin route is listed once in [`ROUTES`] with the roles allowed to call it; one
//! middleware enforces that table (401 without a valid token, 403 for a role not listed),
//! and the OpenAPI document is generated from it, so the two cannot drift apart.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{MatchedPath, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use data_encoding::{BASE64, HEXLOWER};
use meshara_core::update::{Release, TrustState};
use meshara_core::{NodeId, proto};
use prost::Message;
use serde::Deserialize;
use serde_json::{Value, json};

mod doc;
mod extract;
mod roots;

pub use doc::openapi_document;
use extract::{ApiJson, PathParam};

use crate::auth::{Principal, Role};
use crate::db::{NewRelease, ReleaseRow, SignatureRow};
use crate::keys::{DetachedSignature, Draft};
use crate::names::NameKind;
use crate::{AppState, now};

/// Roles that may call a route (admin may call every route).
const ANY: &[Role] = &[Role::Viewer, Role::Signer, Role::Publisher];
const SIGN: &[Role] = &[Role::Signer];
const PUBLISH: &[Role] = &[Role::Publisher];
const ADMIN: &[Role] = &[];

/// One admin route: method, path template, roles allowed besides admin, summary, and what
/// the OpenAPI document says of its request and answers ([`openapi_document`]).
#[derive(Debug, Clone, Copy)]
pub struct RouteDoc {
    /// HTTP method.
    pub method: &'static str,
    /// Path template as routed.
    pub path: &'static str,
    /// Roles allowed besides admin.
    pub allowed: &'static [Role],
    /// What it does.
    pub summary: &'static str,
    /// Its request body.
    pub body: BodyDoc,
    /// Its success status and the component schema of its answer (empty: no body).
    pub ok: (u16, &'static str),
    /// The error statuses it answers besides those every admin route may (401, 403, 408,
    /// 413, and 400 for a path parameter it cannot parse).
    pub errors: &'static [u16],
}

/// The request body of an admin route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BodyDoc {
    /// None.
    None,
    /// JSON of this component schema.
    Json(&'static str),
    /// JSON of this component schema, or no body at all.
    OptionalJson(&'static str),
    /// Raw bytes, streamed (an upload).
    Bytes,
}

macro_rules! route {
    ($m:literal, $p:literal, $a:expr, $s:literal, $body:expr, $ok:literal $schema:literal,
     [$($e:literal),*]) => {
        RouteDoc {
            method: $m,
            path: $p,
            allowed: $a,
            summary: $s,
            body: $body,
            ok: ($ok, $schema),
            errors: &[$($e),*],
        }
    };
}

use BodyDoc::{Bytes, Json as JsonBody, None as NoBody, OptionalJson};

/// Every admin route and who may call it.
pub const ROUTES: &[RouteDoc] = &[
    route!("GET", "/api/v1/me", ANY, "The caller's name and role", NoBody, 200 "Me", []),
    route!("GET", "/api/v1/health", ANY, "Node, database and root status", NoBody, 200 "Health", []),
    route!("GET", "/api/v1/packages", ANY, "Uploaded packages", NoBody, 200 "Packages", []),
    route!(
        "PUT",
        "/api/v1/packages",
        PUBLISH,
        "Upload a package (raw body, streamed; ?name=)",
        Bytes,
        201 "Package",
        [400, 429, 507]
    ),
    route!(
        "DELETE",
        "/api/v1/packages/{hash}",
        PUBLISH,
        "Delete a package no release uses",
        NoBody,
        204 "",
        [404, 409]
    ),
    route!(
        "GET",
        "/api/v1/releases",
        ANY,
        "Releases with their signature progress",
        NoBody,
        200 "Releases",
        []
    ),
    route!(
        "POST",
        "/api/v1/releases",
        PUBLISH,
        "Draft a release of an uploaded package",
        JsonBody("NewRelease"),
        201 "Release",
        [404]
    ),
    route!("GET", "/api/v1/releases/{id}", ANY, "One release", NoBody, 200 "Release", [404]),
    route!(
        "GET",
        "/api/v1/releases/{id}/draft",
        SIGN,
        "Export a draft for offline signing",
        NoBody,
        200 "ReleaseDraft",
        [404]
    ),
    route!(
        "POST",
        "/api/v1/releases/{id}/sign",
        SIGN,
        "Sign a draft with a server-held key",
        JsonBody("SignWith"),
        200 "Release",
        [404, 409]
    ),
    route!(
        "POST",
        "/api/v1/releases/{id}/signatures",
        SIGN,
        "Attach a signature made offline",
        JsonBody("DetachedSignature"),
        200 "Release",
        [404, 409]
    ),
    route!(
        "POST",
        "/api/v1/releases/{id}/publish",
        PUBLISH,
        "Publish now, or at a time, once the threshold is met",
        OptionalJson("PublishAt"),
        200 "Release",
        [404, 409]
    ),
    route!(
        "POST",
        "/api/v1/releases/{id}/rollout",
        PUBLISH,
        "Set a draft's staged-rollout percentage (drops its signatures)",
        JsonBody("Rollout"),
        200 "Release",
        [404, 409]
    ),
    route!(
        "POST",
        "/api/v1/releases/{id}/rollback",
        PUBLISH,
        "Draft a newer release restoring this release's content",
        OptionalJson("RollbackTo"),
        201 "Release",
        [404, 409]
    ),
    route!(
        "POST",
        "/api/v1/releases/{id}/revoke",
        PUBLISH,
        "Revoke a published release and draft its rollback",
        NoBody,
        200 "Revoked",
        [404, 409]
    ),
    route!(
        "GET",
        "/api/v1/roots",
        ANY,
        "The current root and drafted rotations with their signature progress",
        NoBody,
        200 "Roots",
        []
    ),
    route!(
        "POST",
        "/api/v1/roots",
        ADMIN,
        "Draft the next root (a key rotation)",
        JsonBody("RootSpec"),
        201 "RootView",
        [409]
    ),
    route!(
        "GET",
        "/api/v1/roots/{sequence}/draft",
        SIGN,
        "Export a root draft for offline signing",
        NoBody,
        200 "RootDraft",
        [404, 409]
    ),
    route!(
        "POST",
        "/api/v1/roots/{sequence}/sign",
        SIGN,
        "Sign a root draft with a server-held key",
        JsonBody("SignWith"),
        200 "RootView",
        [404, 409]
    ),
    route!(
        "POST",
        "/api/v1/roots/{sequence}/signatures",
        SIGN,
        "Attach a root signature made offline",
        JsonBody("DetachedSignature"),
        200 "RootView",
        [404, 409]
    ),
    route!(
        "POST",
        "/api/v1/roots/{sequence}/publish",
        ADMIN,
        "Rotate once the current and the new root thresholds have signed",
        NoBody,
        200 "RootView",
        [404, 409]
    ),
    route!("GET", "/api/v1/queries", ANY, "Update checks nodes made", NoBody, 200 "Queries", []),
    route!("GET", "/api/v1/audit", ANY, "The audit log, newest first", NoBody, 200 "Audit", []),
    route!(
        "GET",
        "/api/v1/audit/verify",
        ANY,
        "Check the audit log's hash chain",
        NoBody,
        200 "AuditCheck",
        []
    ),
    route!(
        "GET",
        "/api/v1/tokens",
        ADMIN,
        "API tokens (never their secrets)",
        NoBody,
        200 "Tokens",
        []
    ),
    route!(
        "POST",
        "/api/v1/tokens",
        ADMIN,
        "Create an API token (shown once)",
        JsonBody("NewToken"),
        201 "CreatedToken",
        []
    ),
    route!(
        "DELETE",
        "/api/v1/tokens/{id}",
        ADMIN,
        "Revoke an API token",
        NoBody,
        204 "",
        [404]
    ),
];

/// An API error: status and a JSON body `{"error": {"code", "message"}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid", message)
    }
    fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such {what}"),
        )
    }
    fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
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

/// 400 `invalid_name` for a name outside its character set ([`crate::names`]).
fn check_name(kind: NameKind, name: &str) -> ApiResult<()> {
    crate::names::check(kind, name)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_name", e.to_string()))
}

/// The router: admin API (behind the role table), public endpoints and the dashboard.
pub fn router(state: Arc<AppState>) -> Router {
    let admin = Router::new()
        .route("/api/v1/me", get(me))
        .route("/api/v1/health", get(health))
        .route("/api/v1/packages", get(packages).put(upload))
        .route("/api/v1/packages/{hash}", delete(delete_package))
        .route("/api/v1/releases", get(releases).post(create_release))
        .route("/api/v1/releases/{id}", get(one_release))
        .route("/api/v1/releases/{id}/draft", get(export_draft))
        .route("/api/v1/releases/{id}/sign", post(sign))
        .route("/api/v1/releases/{id}/signatures", post(attach))
        .route("/api/v1/releases/{id}/publish", post(publish))
        .route("/api/v1/releases/{id}/rollout", post(rollout))
        .route("/api/v1/releases/{id}/rollback", post(rollback))
        .route("/api/v1/releases/{id}/revoke", post(revoke))
        .route("/api/v1/roots", get(roots::list).post(roots::create))
        .route("/api/v1/roots/{sequence}/draft", get(roots::export))
        .route("/api/v1/roots/{sequence}/sign", post(roots::sign))
        .route("/api/v1/roots/{sequence}/signatures", post(roots::attach))
        .route("/api/v1/roots/{sequence}/publish", post(roots::publish))
        .route("/api/v1/queries", get(queries))
        .route("/api/v1/audit", get(audit))
        .route("/api/v1/audit/verify", get(verify_audit))
        .route("/api/v1/tokens", get(tokens).post(create_token))
        .route("/api/v1/tokens/{id}", delete(revoke_token))
        // Inner to `authorize`: bodies are read only for callers the role table admits.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            read_body,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authorize,
        ));
    Router::new()
        .merge(admin)
        .route("/v1/updates/{package}/{channel}", get(update_check))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(
            "/",
            get(|| async { static_file("text/html; charset=utf-8", crate::web::INDEX) }),
        )
        .route(
            "/app.js",
            get(|| async { static_file("text/javascript; charset=utf-8", crate::web::APP_JS) }),
        )
        .route(
            "/style.css",
            get(|| async { static_file("text/css; charset=utf-8", crate::web::STYLE) }),
        )
        .layer(axum::extract::DefaultBodyLimit::max(
            state.config.http.body_limit_bytes,
        ))
        .layer(axum::middleware::map_response(security_headers))
        .layer(state.http_metrics.layer())
        .with_state(state)
}

/// The dashboard's Content-Security-Policy: its own files only, no framing, no `<base>`,
/// forms only to itself.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data:; \
     frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// Headers on every response: no MIME sniffing (a JSON error echoing input is never run as
/// a script or page), no referrer leaving the dashboard.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("no-referrer"),
    );
    response
}

/// The upload route, whose body streams to disk under its own limits.
const UPLOAD: (&str, &str) = ("PUT", "/api/v1/packages");

/// Reads the body of every admin request but an upload, at most `http.body_limit_bytes`
/// within `http.body_timeout_secs`, before the handler runs: 413 `too_large` or 408
/// `body_timeout` otherwise.
async fn read_body(
    State(s): State<Arc<AppState>>,
    matched: MatchedPath,
    request: Request,
    next: Next,
) -> Response {
    if (request.method().as_str(), matched.as_str()) == UPLOAD {
        return next.run(request).await;
    }
    let limit = s.config.http.body_limit_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("request bodies are limited to {limit} bytes"),
        )
        .into_response()
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return too_large();
    }
    let (parts, body) = request.into_parts();
    let mut stream = body.into_data_stream();
    let read = async {
        let mut bytes = Vec::new();
        while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
            let chunk = chunk.map_err(|e| Some(e.to_string()))?;
            if bytes.len() + chunk.len() > limit {
                return Err(None::<String>);
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    };
    let timeout = std::time::Duration::from_secs(s.config.http.body_timeout_secs);
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(None)) => too_large(),
        Ok(Err(Some(e))) => ApiError::invalid(format!("reading the body: {e}")).into_response(),
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!("the body did not arrive within {}s", timeout.as_secs()),
        )
        .into_response(),
    }
}

fn static_file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        ],
        body,
    )
        .into_response()
}

/// Enforces [`ROUTES`]: a valid bearer token, and a role the route allows.
async fn authorize(
    State(state): State<Arc<AppState>>,
    matched: MatchedPath,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(doc) = ROUTES
        .iter()
        .find(|r| r.path == matched.as_str() && r.method == request.method().as_str())
    else {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "route not in the role table",
        )
        .into_response();
    };
    let principal = match crate::auth::authenticate(&state.db, request.headers()).await {
        Ok(Some(p)) => p,
        Ok(None) => {
            return (
                [(header::WWW_AUTHENTICATE, "Bearer")],
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    "a valid bearer token is required",
                ),
            )
                .into_response();
        }
        Err(e) => return ApiError::from(e).into_response(),
    };
    if principal.role != Role::Admin && !doc.allowed.contains(&principal.role) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "role {} may not {}",
                principal.role,
                doc.summary.to_lowercase()
            ),
        )
        .into_response();
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}

async fn me(Extension(p): Extension<Principal>) -> Json<Value> {
    Json(json!({"id": p.token_id, "name": p.name, "role": p.role.as_str()}))
}

async fn health(State(s): State<Arc<AppState>>) -> ApiResult<Json<Value>> {
    let root = s.updater.root();
    let published =
        s.db.releases()
            .await?
            .iter()
            .filter(|r| r.status == "published")
            .count();
    let keys: Vec<Value> = root
        .keys
        .iter()
        .map(|k| {
            json!({
                "name": k.name, "key": k.key.to_string(),
                "roles": k.roles.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "server_held": s.keys.holds(&k.key),
            })
        })
        .collect();
    let database_ok = s.db.ping().await;
    Ok(Json(json!({
        "status": if database_ok && s.node.is_running() { "ok" } else { "degraded" },
        "node_id": s.node.node_id().to_string(),
        "peers": s.node.peers().len(),
        "database": s.db.backend(),
        "published": published,
        "uptime_secs": s.started.elapsed().as_secs(),
        "root": {
            "sequence": root.sequence, "expires_at": root.expires_at,
            "root_threshold": root.root_threshold, "release_threshold": root.release_threshold,
            "keys": keys,
        },
    })))
}

async fn packages(State(s): State<Arc<AppState>>) -> ApiResult<Json<Value>> {
    Ok(Json(json!(s.db.packages().await?)))
}

#[derive(Deserialize)]
struct UploadQuery {
    name: Option<String>,
}

async fn upload(
    State(s): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Query(q): Query<UploadQuery>,
    body: Body,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let name = q.name.unwrap_or_else(|| "package".into());
    check_name(NameKind::Upload, &name)?;
    let Ok(_slot) = s.uploads.clone().try_acquire_owned() else {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_uploads",
            format!(
                "{} uploads are running; try again later",
                s.config.http.max_concurrent_uploads
            ),
        ));
    };
    let quota = s.config.storage_quota_bytes;
    let reservation = Reservation::take(&s, s.db.stored_bytes().await?)?;
    let limit = reservation.bytes;
    let http = &s.config.http;
    let deadline =
        tokio::time::Instant::now() + std::time::Duration::from_secs(http.upload_timeout_secs);
    let stall = std::time::Duration::from_secs(http.upload_stall_secs);
    let stored = s
        .store
        .put(body.into_data_stream(), limit, deadline, stall)
        .await
        .map_err(|e| match e {
            crate::storage::StorageError::TooLarge { .. } if limit < s.config.max_package_bytes => {
                quota_exceeded(quota)
            }
            crate::storage::StorageError::TooLarge { .. } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string())
            }
            crate::storage::StorageError::TimedOut(_) => {
                ApiError::new(StatusCode::REQUEST_TIMEOUT, "upload_timeout", e.to_string())
            }
            crate::storage::StorageError::Empty | crate::storage::StorageError::Interrupted(_) => {
                ApiError::invalid(e.to_string())
            }
            e => ApiError::internal(e),
        })?;
    let row = crate::db::PackageRow {
        hash: stored.hash.clone(),
        name,
        size: stored.size as i64,
        uploaded_at: now(),
        uploaded_by: p.name.clone(),
    };
    s.db.insert_package(&row).await?;
    s.db.audit(
        p.actor(),
        "package.upload",
        &row.hash,
        &format!("{} ({} bytes)", row.name, row.size),
    )
    .await?;
    let row = s.db.package(&stored.hash).await?.unwrap_or(row);
    Ok((StatusCode::CREATED, Json(json!(row))))
}

fn quota_exceeded(quota: u64) -> ApiError {
    ApiError::new(
        StatusCode::INSUFFICIENT_STORAGE,
        "quota_exceeded",
        format!(
            "the upload does not fit in the storage quota of {quota} bytes; delete unused packages"
        ),
    )
}

/// Bytes an upload in progress may still write, counted against the storage quota until it
/// ends (so that uploads running together cannot pass the quota between them).
struct Reservation {
    state: Arc<AppState>,
    bytes: u64,
}

impl Reservation {
    /// Reserves what is left of the quota (at most `max_package_bytes`) given `stored`
    /// bytes; 507 when nothing is left.
    fn take(s: &Arc<AppState>, stored: u64) -> ApiResult<Reservation> {
        let quota = s.config.storage_quota_bytes;
        let mut reserved = s.reserved.lock().unwrap_or_else(|p| p.into_inner());
        let left = quota.saturating_sub(stored).saturating_sub(*reserved);
        let bytes = left.min(s.config.max_package_bytes);
        if bytes == 0 {
            return Err(quota_exceeded(quota));
        }
        *reserved += bytes;
        Ok(Reservation {
            state: s.clone(),
            bytes,
        })
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut reserved = self
            .state
            .reserved
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *reserved = reserved.saturating_sub(self.bytes);
    }
}

/// `DELETE /api/v1/packages/{hash}`: removes a package no release uses (409 otherwise).
async fn delete_package(
    State(s): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    PathParam(hash): PathParam<String>,
) -> ApiResult<StatusCode> {
    if hash.len() != 64 || !hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(ApiError::invalid(
            "a package hash is 64 lowercase hex digits",
        ));
    }
    let pkg =
        s.db.package(&hash)
            .await?
            .ok_or_else(|| ApiError::not_found("package"))?;
    if !s.db.delete_package(&hash).await? {
        let used: Vec<String> =
            s.db.releases()
                .await?
                .iter()
                .filter(|r| r.content_hash == hash)
                .map(|r| r.id.to_string())
                .collect();
        return Err(ApiError::conflict(format!(
            "releases {} use this package",
            used.join(", ")
        )));
    }
    s.store.remove(&hash).await.map_err(ApiError::internal)?;
    s.db.audit(
        p.actor(),
        "package.delete",
        &hash,
        &format!("{} ({} bytes)", pkg.name, pkg.size),
    )
    .await?;
    tracing::info!(hash, by = %crate::names::escape(&p.name), "package deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// A release as the API shows it.
async fn view(s: &AppState, r: &ReleaseRow) -> ApiResult<Value> {
    let sigs = s.db.signatures(r.id).await?;
    let root = s.updater.root();
    let signatures: Vec<Value> = sigs
        .iter()
        .map(|g| {
            let name = g
                .public_key
                .parse::<NodeId>()
                .ok()
                .and_then(|k| root.key(&k).map(|k| k.name.clone()));
            json!({"key": g.public_key, "name": name, "added_by": g.signer})
        })
        .collect();
    Ok(json!({
        "id": r.id, "package": r.package, "channel": r.channel, "semver": r.semver,
        "sequence": r.sequence, "content_hash": r.content_hash, "size": r.size,
        "status": r.status, "signatures": signatures, "threshold": root.release_threshold,
        "rollout_percent": r.rollout_percent, "publish_at": r.publish_at,
        "created_at": r.created_at, "created_by": r.created_by, "published_at": r.published_at,
        "expires_at": r.expires_at,
    }))
}

async fn releases(State(s): State<Arc<AppState>>) -> ApiResult<Json<Value>> {
    let mut out = Vec::new();
    for r in s.db.releases().await? {
        out.push(view(&s, &r).await?);
    }
    Ok(Json(Value::Array(out)))
}

async fn load(s: &AppState, id: i64) -> ApiResult<ReleaseRow> {
    s.db.release(id)
        .await?
        .ok_or_else(|| ApiError::not_found("release"))
}

async fn one_release(
    State(s): State<Arc<AppState>>,
    PathParam(id): PathParam<i64>,
) -> ApiResult<Json<Value>> {
    let r = load(&s, id).await?;
    Ok(Json(view(&s, &r).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRelease {
    package: String,
    channel: String,
    semver: String,
    content_hash: String,
    rollout_percent: Option<u8>,
    expires_in_days: Option<u64>,
}

/// What a new draft says.
struct DraftSpec<'a> {
    package: &'a str,
    channel: &'a str,
    semver: &'a str,
    content_hash: &'a str,
    rollout: Option<u8>,
    expires_in_days: u64,
}

/// Describes the stored content of `spec.content_hash` as a release (streamed from disk).
async fn describe(s: &AppState, spec: &DraftSpec<'_>, expires_at: u64) -> ApiResult<Release> {
    let (package, channel, semver, rollout) = (
        spec.package.to_owned(),
        spec.channel.to_owned(),
        spec.semver.to_owned(),
        spec.rollout,
    );
    let path = s.store.path(spec.content_hash);
    let chunk_size = s.config.chunk_size;
    let release = tokio::task::spawn_blocking(move || -> Result<Release, String> {
        use std::io::Read;
        let mut file = std::fs::File::open(&path).map_err(|e| e.to_string())?;
        let mut whole = blake3::Hasher::new();
        let mut chunk_hashes = Vec::new();
        let mut buf = vec![0; chunk_size as usize];
        let mut size = 0u64;
        loop {
            let mut filled = 0;
            while filled < buf.len() {
                let n = file.read(&mut buf[filled..]).map_err(|e| e.to_string())?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            if filled == 0 {
                break;
            }
            whole.update(&buf[..filled]);
            chunk_hashes.push(*blake3::hash(&buf[..filled]).as_bytes());
            size += filled as u64;
        }
        let release = Release {
            package,
            channel,
            semver,
            // The real sequence is assigned inside the insert's transaction.
            sequence: 1,
            expires_at,
            size,
            content_hash: *whole.finalize().as_bytes(),
            chunk_size,
            chunk_hashes,
            rollout_percent: rollout,
        };
        release.validate().map_err(|e| e.to_string())?;
        Ok(release)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::invalid)?;
    if HEXLOWER.encode(&release.content_hash) != spec.content_hash {
        return Err(ApiError::internal("stored package does not match its hash"));
    }
    Ok(release)
}

async fn draft_release(s: &AppState, actor: &str, spec: DraftSpec<'_>) -> ApiResult<ReleaseRow> {
    check_name(NameKind::Package, spec.package)?;
    check_name(NameKind::Channel, spec.channel)?;
    let pkg =
        s.db.package(spec.content_hash)
            .await?
            .ok_or_else(|| ApiError::not_found("uploaded package with this content_hash"))?;
    if let Some(p) = spec.rollout {
        if !(1..=100).contains(&p) {
            return Err(ApiError::invalid("rollout_percent must be 1..=100"));
        }
    }
    let expires_at = now() as u64 + spec.expires_in_days * 86_400;
    // 100% is every node: the same signed form as no rollout at all.
    let spec = DraftSpec {
        rollout: spec.rollout.filter(|p| *p < 100),
        ..spec
    };
    let described = describe(s, &spec, expires_at).await?;
    let new = NewRelease {
        package: spec.package,
        channel: spec.channel,
        semver: spec.semver,
        content_hash: spec.content_hash,
        size: pkg.size,
        rollout_percent: spec.rollout.map(i64::from),
        expires_at: expires_at as i64,
        created_by: actor,
    };
    let row =
        s.db.insert_release(&new, |sequence| {
            let mut r = described.clone();
            r.sequence = sequence as u64;
            r.encode()
                .map(|b| BASE64.encode(&b))
                .map_err(|e| e.to_string())
        })
        .await?
        .map_err(ApiError::invalid)?;
    Ok(row)
}

async fn create_release(
    State(s): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    ApiJson(c): ApiJson<CreateRelease>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let days = c.expires_in_days.unwrap_or(s.config.release_expiry_days);
    if days == 0 || days > 3650 {
        return Err(ApiError::invalid("expires_in_days must be 1..=3650"));
    }
    let row = draft_release(
        &s,
        &p.name,
        DraftSpec {
            package: &c.package,
            channel: &c.channel,
            semver: &c.semver,
            content_hash: &c.content_hash,
            rollout: c.rollout_percent,
            expires_in_days: days,
        },
    )
    .await?;
    s.db.audit(
        p.actor(),
        "release.draft",
        &row.id.to_string(),
        &format!(
            "{}/{} {} #{}",
            row.package, row.channel, row.semver, row.sequence
        ),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(view(&s, &row).await?)))
}

fn body_bytes(r: &ReleaseRow) -> ApiResult<Vec<u8>> {
    BASE64
        .decode(r.body.as_bytes())
        .map_err(|_| ApiError::internal("stored body is not base64"))
}

async fn export_draft(
    State(s): State<Arc<AppState>>,
    PathParam(id): PathParam<i64>,
) -> ApiResult<Json<Draft>> {
    let r = load(&s, id).await?;
    Ok(Json(
        Draft::new(r.id, &body_bytes(&r)?).map_err(ApiError::internal)?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignWith {
    key: String,
}

async fn sign(
    State(s): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    PathParam(id): PathParam<i64>,
    ApiJson(w): ApiJson<SignWith>,
) -> ApiResult<Json<Value>> {
    let r = load(&s, id).await?;
    if r.status != "draft" {
        return Err(ApiError::conflict(format!(
            "release is {}, not a draft",
            r.status
        )));
    }
    let key = s.keys.get(&w.key).ok_or_else(|| no_such_key(&w.key))?;
    let root = s.updater.root();
    if !root
        .key(&key.node_id())
        .is_some_and(|k| k.roles.contains(&meshara_core::update::Role::Release))
    {
        return Err(ApiError::conflict(format!(
            "key {:?} is not a release key of the current root",
            w.key
        )));
    }
    let sig = meshara_core::update::signature(&body_bytes(&r)?, key);
    s.db.add_signature(
        id,
        &key.node_id().to_string(),
        &BASE64.encode(&sig.signature),
        &p.name,
    )
    .await?;
    s.db.audit(
        p.actor(),
        "release.sign",
        &id.to_string(),
        &format!("with server-held key {}", w.key),
    )
    .await?;
    Ok(Json(view(&s, &r).await?))
}

async fn attach(
    State(s): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    PathParam(id): PathParam<i64>,
    ApiJson(d): ApiJson<DetachedSignature>,
) -> ApiResult<Json<Value>> {
    let r = load(&s, id).await?;
    if r.status != "draft" {
        return Err(ApiError::conflict(format!(
            "release is {}, not a draft",
            r.status
        )));
    }
    let (key, sig) = parse_detached(&d)?;
    let root = s.updater.root();
    if !root
        .key(&key)
        .is_some_and(|k| k.roles.contains(&meshara_core::update::Role::Release))
    {
        return Err(ApiError::conflict(
            "the key is not a release key of the current root",
        ));
    }
    // A signature made over another version of the draft (before a rollout change, say)
    // conflicts with what the draft is now.
    meshara_core::update::verify_signature(&body_bytes(&r)?, &key, &sig)
        .map_err(|_| ApiError::conflict("the signature does not verify over this release"))?;
    s.db.add_signature(id, &key.to_string(), &BASE64.encode(&sig), &p.name)
        .await?;
    s.db.audit(
        p.actor(),
        "release.attach_signature",
        &id.to_string(),
        &format!("offline signature by {key}"),
    )
    .await?;
    Ok(Json(view(&s, &r).await?))
}

/// 404 for a server-held key name the server does not hold.
fn no_such_key(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "no server-held key named {}",
            crate::names::quoted(&name.chars().take(80).collect::<String>())
        ),
    )
}

/// A signature made offline: its key and its 64 bytes. Text of a key's form that is no
/// Ed25519 public key is a key of no root: 409, as for any key the root does not list.
fn parse_detached(d: &DetachedSignature) -> ApiResult<(NodeId, Vec<u8>)> {
    let key: NodeId = d.public_key.parse().map_err(|e| match e {
        meshara_core::IdentityError::InvalidKey => {
            ApiError::conflict("public_key is no Ed25519 key, so no root lists it")
        }
        _ => ApiError::invalid("public_key is not a key"),
    })?;
    let sig = BASE64
        .decode(d.signature.as_bytes())
        .ok()
        .filter(|s| s.len() == 64)
        .ok_or_else(|| ApiError::invalid("signature must be 64 bytes, base64"))?;
    Ok((key, sig))
}

/// Signed metadata from a body and stored signatures.
fn to_signed(body: Vec<u8>, sigs: &[SignatureRow]) -> proto::SignedMetadata {
    let signatures = sigs
        .iter()
        .filter_map(|g| {
            Some(proto::MetadataSignature {
                public_key: g
                    .public_key
                    .parse::<NodeId>()
                    .ok()?
                    .as_bytes()
                    .to_vec()
                    .into(),
                signature: BASE64.decode(g.signature.as_bytes()).ok()?.into(),
            })
        })
        .collect();
    proto::SignedMetadata {
        body: body.into(),
        signatures,
    }
}

/// The signed metadata of a release as stored.
async fn signed(s: &AppState, r: &ReleaseRow) -> ApiResult<proto::SignedMetadata> {
    Ok(to_signed(body_bytes(r)?, &s.db.signatures(r.id).await?))
}

/// Checks a release's signatures against the current root as a node would (threshold,
/// expiry), without the node's rollback state.
async fn check_quorum(s: &AppState, r: &ReleaseRow) -> ApiResult<proto::SignedMetadata> {
    let signed = signed(s, r).await?;
    let trust = TrustState::new(s.updater.root()).map_err(ApiError::internal)?;
    trust
        .verify_release(&signed, now() as u64)
        .map_err(|e| ApiError::conflict(format!("cannot publish: {e}")))?;
    Ok(signed)
}

/// Publishes a release whose quorum is met: hands it to the authority node, which verifies
/// it once more, announces it and serves it.
pub(crate) async fn publish_now(
    s: &AppState,
    r: &ReleaseRow,
    actor: crate::db::Actor<'_>,
) -> ApiResult<()> {
    let signed = check_quorum(s, r).await?;
    // Idempotent: after a crash between the node accepting a release and the database
    // recording it, publishing again records it instead of failing as a rollback.
    let already = s
        .updater
        .latest_signed(&r.package, &r.channel)
        .is_some_and(|l| l.body == signed.body);
    if !already {
        s.updater
            .publish(signed, &s.store.path(&r.content_hash))
            .await
            .map_err(|e| ApiError::conflict(format!("cannot publish: {e}")))?;
    }
    s.db.set_status(r.id, "published", r.publish_at, Some(now()))
        .await?;
    s.db.audit(
        actor,
        "release.publish",
        &r.id.to_string(),
        &format!("{}/{} {} #{}", r.package, r.channel, r.semver, r.sequence),
    )
    .await?;
    tracing::info!(
        id = r.id,
        package = %crate::names::escape(&r.package),
        channel = %crate::names::escape(&r.channel),
        semver = %crate::names::escape(&r.semver),
        "release published"
    );
    Ok(())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PublishAt {
    at: Option<i64>,
}

async fn publish(
    State(s): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    PathParam(id): PathParam<i64>,
    body: Option<ApiJson<PublishAt>>,
) -> ApiResult<Json<Value>> {
    let at = body.and_then(|b| b.0.at);
    let r = load(&s, id).await?;
    if r.status != "draft" && r.status != "scheduled" {
        return Err(ApiError::conflict(format!("release is {}", r.status)));
    }
    match at {
        Some(at) if at > now() => {
            check_quorum(&s, &r).await?;
            s.db.set_status(id, "scheduled", Some(at), None).await?;
            s.db.audit(
                p.actor(),
                "release.schedule",
                &id.to_string(),
                &format!("at {at}"),
            )
            .await?;
        }
        _ => publish_now(&s, &r, p.actor()).await?,
    }
    let r = load(&s, id).await?;
    Ok(Json(view(&s, &r).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rollout {
    percent: u8,
}

async fn rollout(
    State(s): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    PathParam(id): PathParam<i64>,
    ApiJson(w): ApiJson<Rollout>,
) -> ApiResult<Json<Value>> {
    let r = load(&s, id).await?;
    if r.status != "draft" {
        return Err(ApiError::conflict(
            "only a draft's rollout can change; widen a published rollout with a newer release",
        ));
    }
    if !(1..=100).contains(&w.percent) {
        return Err(ApiError::invalid("percent must be 1..=100"));
    }
    let mut release = Release::decode(&body_bytes(&r)?).map_err(ApiError::internal)?;
    release.rollout_percent = (w.percent < 100).then_some(w.percent);
    let body = release.encode().map_err(ApiError::internal)?;
    s.db.set_rollout(id, i64::from(w.percent), &BASE64.encode(&body))
        .await?;
    s.db.audit(
        p.actor(),
        "release.rollout",
        &id.to_string(),
        &format!("{}% (signatures cleared)", w.percent),
    )
    .await?;
    let r = load(&s, id).await?;
    Ok(Json(view(&s, &r).await?))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RollbackTo {
    semver: Option<String>,
}

async fn rollback(
    State(s): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    PathParam(id): PathParam<i64>,
    body: Option<ApiJson<RollbackTo>>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let r = load(&s, id).await?;
    let semver = body
        .and_then(|b| b.0.semver)
        .unwrap_or_else(|| r.semver.clone());
    let row = draft_release(
        &s,
        &p.name,
        DraftSpec {
            package: &r.package,
            channel: &r.channel,
            semver: &semver,
            content_hash: &r.content_hash,
            rollout: None,
            expires_in_days: s.config.release_expiry_days,
        },
    )
    .await?;
    s.db.audit(
        p.actor(),
        "release.rollback",
        &row.id.to_string(),
        &format!(
            "restores the content of release {} as #{}",
            r.id, row.sequence
        ),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(view(&s, &row).await?)))
}

async fn revoke(
    State(s): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    PathParam(id): PathParam<i64>,
) -> ApiResult<Json<Value>> {
    let r = load(&s, id).await?;
    if r.status != "published" {
        return Err(ApiError::conflict(format!(
            "release is {}, not published",
            r.status
        )));
    }
    s.db.set_status(id, "revoked", r.publish_at, r.published_at)
        .await?;
    s.db.audit(p.actor(), "release.revoke", &id.to_string(), "")
        .await?;
    // Nodes only move forward: the revocation takes effect when a newer release restoring
    // the previous content is published. Draft it now.
    let previous = s.db.releases().await?.into_iter().find(|o| {
        o.package == r.package
            && o.channel == r.channel
            && o.status == "published"
            && o.sequence < r.sequence
    });
    let rollback = match previous {
        Some(prev) => {
            let row = draft_release(
                &s,
                &p.name,
                DraftSpec {
                    package: &prev.package,
                    channel: &prev.channel,
                    semver: &prev.semver,
                    content_hash: &prev.content_hash,
                    rollout: None,
                    expires_in_days: s.config.release_expiry_days,
                },
            )
            .await?;
            s.db.audit(
                p.actor(),
                "release.rollback",
                &row.id.to_string(),
                &format!(
                    "restores the content of release {} after revoking {}",
                    prev.id, id
                ),
            )
            .await?;
            Some(view(&s, &row).await?)
        }
        None => None,
    };
    let r = load(&s, id).await?;
    Ok(Json(
        json!({"revoked": view(&s, &r).await?, "rollback": rollback}),
    ))
}

async fn queries(State(s): State<Arc<AppState>>) -> ApiResult<Json<Value>> {
    let (by_channel, recent) = s.db.queries(50).await?;
    let total: i64 = by_channel.iter().map(|c| c.count).sum();
    Ok(Json(
        json!({"total": total, "by_channel": by_channel, "recent": recent}),
    ))
}

async fn audit(State(s): State<Arc<AppState>>) -> ApiResult<Json<Value>> {
    Ok(Json(json!(s.db.audit_log(200).await?)))
}

/// `GET /api/v1/audit/verify`: the chain check ([`crate::db::Db::verify_audit`]); `ok` is
/// false when an entry was edited, inserted or deleted.
async fn verify_audit(State(s): State<Arc<AppState>>) -> ApiResult<Json<Value>> {
    let check = s.db.verify_audit().await?;
    if let Some(b) = &check.broken {
        tracing::error!(id = b.id, reason = %b.reason, "the audit log's hash chain is broken");
    }
    Ok(Json(json!({
        "ok": check.broken.is_none(), "entries": check.entries, "head": check.head,
        "broken": check.broken,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    name: String,
    role: String,
}

async fn create_token(
    State(s): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    ApiJson(t): ApiJson<NewToken>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let role: Role = t.role.parse().map_err(ApiError::invalid)?;
    check_name(NameKind::Token, &t.name)?;
    let (id, token) = crate::auth::create_token(&s.db, &t.name, role).await?;
    s.db.audit(
        p.actor(),
        "token.create",
        &id,
        &format!("{} as {}", t.name, role),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": id, "name": t.name, "role": role.as_str(), "token": token})),
    ))
}

async fn tokens(State(s): State<Arc<AppState>>) -> ApiResult<Json<Value>> {
    Ok(Json(json!(s.db.tokens().await?)))
}

async fn revoke_token(
    State(s): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    PathParam(id): PathParam<String>,
) -> ApiResult<StatusCode> {
    if !s.db.revoke_token(&id).await? {
        return Err(ApiError::not_found("token"));
    }
    s.db.audit(p.actor(), "token.revoke", &id, "").await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Who made an update check, for the query log's budget: the TCP peer, or the last address
/// of `X-Forwarded-For` when the peer is a trusted proxy; an IPv6 client by its /64 (one
/// client usually holds a whole /64).
fn client_key(s: &AppState, peer: Option<std::net::IpAddr>, headers: &HeaderMap) -> String {
    let Some(mut ip) = peer.map(|ip| ip.to_canonical()) else {
        return "unknown".to_owned();
    };
    if s.config.http.trusted_proxies.contains(&ip) {
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .next_back()
            .and_then(|last| last.trim().parse::<std::net::IpAddr>().ok());
        if let Some(forwarded) = forwarded {
            ip = forwarded;
        }
    }
    crate::http::client_bucket(ip).to_string()
}

/// The public update check: the newest published release's signed metadata.
async fn update_check(
    State(s): State<Arc<AppState>>,
    client: Option<Extension<crate::http::ClientAddr>>,
    headers: HeaderMap,
    PathParam((package, channel)): PathParam<(String, String)>,
) -> Response {
    // No release can have another name: answer without recording it.
    if let Err(e) = check_name(NameKind::Package, &package)
        .and_then(|()| check_name(NameKind::Channel, &channel))
    {
        return e.into_response();
    }
    let client = client_key(&s, client.map(|c| c.0.0.ip()), &headers);
    s.record_query(&client, &package, &channel, "http", None);
    let (Some(release), Some(signed)) = (
        s.updater.latest(&package, &channel),
        s.updater.latest_signed(&package, &channel),
    ) else {
        return ApiError::not_found("release for this package and channel").into_response();
    };
    Json(json!({
        "package": release.package, "channel": release.channel, "semver": release.semver,
        "sequence": release.sequence, "size": release.size,
        "content_hash": HEXLOWER.encode(&release.content_hash),
        "rollout_percent": release.rollout_percent,
        "signed_metadata": BASE64.encode(&signed.encode_to_vec()),
    }))
    .into_response()
}

async fn readyz(State(s): State<Arc<AppState>>) -> Response {
    if s.db.ping().await && s.node.is_running() && !s.shutting_down() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

/// OpenMetrics when the `Accept` header prefers it (as Prometheus's does), else the classic
/// text format (`meshara_core::exposition`).
async fn metrics(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    match s.metrics_text().await {
        Ok(text) => {
            let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
            let (content_type, body) = meshara_core::exposition::negotiate(accept, text);
            ([(header::CONTENT_TYPE, content_type)], body).into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn openapi() -> Json<Value> {
    Json(openapi_document())
}

/// Methods as axum knows them, for tests that walk [`ROUTES`].
pub fn method(doc: &RouteDoc) -> Method {
    Method::from_bytes(doc.method.as_bytes()).unwrap_or(Method::GET)
}

/// Reads the bearer token from headers.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Records an update check from a node over Meshara.
pub(crate) fn meshara_query(s: &AppState, peer: NodeId, package: &str, channel: &str) {
    let peer = peer.to_string();
    s.record_query(&peer, package, channel, "meshara", Some(peer.clone()));
}
