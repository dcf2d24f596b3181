//! The OpenAPI 3.1 document, generated from [`ROUTES`]: each route's roles, request body,
//! answers and error statuses come from its entry there, and the constraints on names from
//! [`crate::names`], so that the document and the server cannot drift apart unnoticed
//! (`tests/contracts/authority.sh` runs schemathesis, an independent API tester, against the
//! served document).

use serde_json::{Value, json};

use meshara_core::update;

use super::{BodyDoc, ROUTES, RouteDoc};
use crate::names::NameKind;

/// What every admin route may answer besides its own statuses: no valid token, a role the
/// route does not allow, a body too slow or too large.
const COMMON_ERRORS: &[u16] = &[401, 403, 408, 413];

/// NodeId text: 52 lowercase base32 characters (32 bytes) or 64 hex digits.
const NODE_ID: &str = "^(?:[a-z2-7]{51}[aq]|[0-9a-fA-F]{64})$";
/// `MAJOR.MINOR.PATCH[-pre][+build]`, numeric parts without leading zeros
/// (`meshara_core::update::Release::validate`).
const SEMVER: &str = r"^(?:0|[1-9][0-9]*)\.(?:0|[1-9][0-9]*)\.(?:0|[1-9][0-9]*)(?:-[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$";
/// A BLAKE3 hash in lowercase hex.
const HASH: &str = "^[0-9a-f]{64}$";
/// A 64-byte Ed25519 signature in standard base64 (88 characters, canonical padding).
const SIGNATURE: &str = "^[A-Za-z0-9+/]{85}[AQgw]==$";

fn name(kind: NameKind) -> Value {
    json!({"type": "string", "pattern": kind.pattern(), "description": kind.rule()})
}

fn error_response(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn status_description(status: u16) -> &'static str {
    match status {
        400 => {
            "A path parameter, query or body the route cannot use (`invalid`, `invalid_json`, `invalid_name`)"
        }
        401 => "No valid bearer token (`unauthenticated`)",
        403 => "The token's role may not call this route (`forbidden`)",
        404 => "What the request names does not exist (`not_found`)",
        408 => "The body did not arrive in time (`body_timeout`, `upload_timeout`)",
        409 => "The request conflicts with the current state (`conflict`)",
        413 => "The body is larger than the server takes (`too_large`)",
        415 => "The body is not `application/json` (`wrong_content_type`)",
        422 => {
            "JSON of the wrong shape: a missing field, a field of the wrong type, or one the body may not have (`invalid_fields`)"
        }
        429 => "As many uploads as the server takes at once are running (`too_many_uploads`)",
        507 => "The upload does not fit in the storage quota (`quota_exceeded`)",
        _ => "Refused",
    }
}

fn path_parameter(route: &RouteDoc, name: &str) -> Value {
    let schema = match name {
        "hash" => {
            json!({"type": "string", "pattern": HASH, "description": "A package's BLAKE3 hash, hex"})
        }
        "id" if route.path.starts_with("/api/v1/tokens") => {
            json!({"type": "string", "pattern": "^[0-9a-f]{16}$", "description": "A token id"})
        }
        _ => json!({"type": "integer", "minimum": 0, "maximum": i64::MAX}),
    };
    json!({"name": name, "in": "path", "required": true, "schema": schema})
}

fn operation(route: &RouteDoc) -> Value {
    let roles: Vec<&str> = std::iter::once("admin")
        .chain(route.allowed.iter().map(|r| r.as_str()))
        .collect();
    let mut parameters: Vec<Value> = route
        .path
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| path_parameter(route, name))
        .collect();
    let mut errors: Vec<u16> = COMMON_ERRORS.iter().chain(route.errors).copied().collect();
    if !parameters.is_empty() {
        errors.push(400);
    }
    let mut op = json!({
        "operationId": operation_id(route),
        "summary": route.summary,
        "description": format!("Roles: {}.", roles.join(", ")),
        "security": [{"bearer": []}],
        "x-roles": roles,
    });
    match route.body {
        BodyDoc::None => {}
        BodyDoc::Json(schema) | BodyDoc::OptionalJson(schema) => {
            op["requestBody"] = json!({
                "required": route.body == BodyDoc::Json(schema),
                "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}},
            });
            errors.extend([400, 415, 422]);
        }
        BodyDoc::Bytes => {
            op["requestBody"] = json!({
                "required": true,
                "description": "The package, streamed; refused when empty",
                "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary", "minLength": 1}}},
            });
            parameters.push(json!({"name": "name", "in": "query", "required": false,
                "schema": name(NameKind::Upload), "description": "A label for the file (default `package`)"}));
        }
    }
    op["parameters"] = Value::Array(parameters);
    errors.sort_unstable();
    errors.dedup();
    let (status, schema) = route.ok;
    let mut responses = serde_json::Map::new();
    let ok = if schema.is_empty() {
        json!({"description": "Done"})
    } else {
        json!({"description": "OK", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
    };
    responses.insert(status.to_string(), ok);
    for e in errors {
        responses.insert(e.to_string(), error_response(status_description(e)));
    }
    op["responses"] = Value::Object(responses);
    op
}

/// `GET /api/v1/releases/{id}/draft` → `getReleasesIdDraft`.
fn operation_id(route: &RouteDoc) -> String {
    let mut id = route.method.to_lowercase();
    for part in route.path.trim_start_matches("/api/v1/").split('/') {
        let part = part.trim_start_matches('{').trim_end_matches('}');
        let mut chars = part.chars();
        if let Some(first) = chars.next() {
            id.push(first.to_ascii_uppercase());
            id.extend(chars);
        }
    }
    id
}

/// The OpenAPI 3.1 document of the admin API, the public update check, health and metrics.
pub fn openapi_document() -> Value {
    let mut paths = serde_json::Map::new();
    for route in ROUTES {
        let entry = paths
            .entry(route.path.to_owned())
            .or_insert_with(|| json!({}));
        entry[route.method.to_lowercase()] = operation(route);
    }
    paths.insert(
        "/v1/updates/{package}/{channel}".into(),
        json!({"get": {
            "operationId": "updateCheck",
            "summary": "Newest published release (public): its signed metadata, base64 protobuf",
            "parameters": [
                {"name": "package", "in": "path", "required": true, "schema": name(NameKind::Package)},
                {"name": "channel", "in": "path", "required": true, "schema": name(NameKind::Channel)}],
            "responses": {
                "200": {"description": "The release", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/UpdateCheck"}}}},
                "400": error_response("A package or channel name no release can have (`invalid_name`)"),
                "404": error_response("No release is published for this package and channel"),
            }}}),
    );
    let text = |description: &str| json!({"description": description, "content": {"text/plain": {"schema": {"type": "string"}}}});
    paths.insert(
        "/healthz".into(),
        json!({"get": {"operationId": "healthz", "summary": "Liveness", "responses": {"200": text("ok")}}}),
    );
    paths.insert(
        "/readyz".into(),
        json!({"get": {"operationId": "readyz", "summary": "Readiness: database and node",
            "responses": {"200": text("ready"), "503": text("not ready")}}}),
    );
    paths.insert(
        "/metrics".into(),
        json!({"get": {"operationId": "metrics", "summary": "Metrics: OpenMetrics when Accept prefers it, else the classic Prometheus text format",
            "responses": {"200": {"description": "Metrics", "content": {
                "application/openmetrics-text": {"schema": {"type": "string"}},
                "text/plain": {"schema": {"type": "string"}}}}}}}),
    );
    paths.insert(
        "/api/v1/openapi.json".into(),
        json!({"get": {"operationId": "openapi", "summary": "This document",
            "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {"type": "object"}}}}}}}),
    );
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "meshara-authority",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The authority server's admin API (bearer tokens with roles), its public update check, health and metrics. Every refusal has the body {\"error\": {\"code\", \"message\"}}.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas(),
        },
    })
}

fn schemas() -> Value {
    let int = || json!({"type": "integer"});
    let int_or_null = || json!({"type": ["integer", "null"]});
    let string = || json!({"type": "string"});
    let object = |required: &[&str], properties: Value| json!({"type": "object", "required": required, "properties": properties});
    let closed = |required: &[&str], properties: Value| json!({"type": "object", "required": required, "properties": properties, "additionalProperties": false});
    let node_id = || json!({"type": "string", "pattern": NODE_ID});
    let semver = || json!({"type": "string", "pattern": SEMVER, "maxLength": 64});
    let release_signature = object(
        &["key", "name", "added_by"],
        json!({"key": string(), "name": {"type": ["string", "null"]}, "added_by": string()}),
    );
    let release = object(
        &[
            "id",
            "package",
            "channel",
            "semver",
            "sequence",
            "content_hash",
            "size",
            "status",
            "signatures",
            "threshold",
            "rollout_percent",
            "publish_at",
            "created_at",
            "created_by",
            "published_at",
            "expires_at",
        ],
        json!({
            "id": int(), "package": string(), "channel": string(), "semver": string(),
            "sequence": int(), "content_hash": string(), "size": int(),
            "status": {"type": "string", "enum": ["draft", "scheduled", "published", "revoked"]},
            "signatures": {"type": "array", "items": release_signature},
            "threshold": int(), "rollout_percent": int_or_null(), "publish_at": int_or_null(),
            "created_at": int(), "created_by": string(), "published_at": int_or_null(),
            "expires_at": int(),
        }),
    );
    let key_entry = closed(
        &["name", "key", "roles"],
        json!({
            "name": name(NameKind::Key),
            "key": node_id(),
            "roles": {"type": "array", "items": {"type": "string", "enum": ["root", "release"]},
                "minItems": 1},
        }),
    );
    let root_description = object(
        &[
            "sequence",
            "expires_at",
            "keys",
            "root_threshold",
            "release_threshold",
            "revoked",
        ],
        json!({
            "sequence": int(), "expires_at": int(),
            "keys": {"type": "array", "items": {"$ref": "#/components/schemas/KeyEntry"}},
            "root_threshold": int(), "release_threshold": int(),
            "revoked": {"type": "array", "items": string()},
        }),
    );
    let quorum = object(&["have", "need"], json!({"have": int(), "need": int()}));
    let root_view = json!({"allOf": [{"$ref": "#/components/schemas/RootDescription"}, object(
        &["status", "created_by", "created_at", "published_at", "signatures", "quorum"],
        json!({
            "status": {"type": "string", "enum": ["draft", "published"]},
            "created_by": string(), "created_at": int(), "published_at": int_or_null(),
            "signatures": {"type": "array", "items": object(&["public_key", "signer"], json!({"public_key": string(), "signer": string()}))},
            "quorum": object(&["current", "new"], json!({"current": quorum, "new": quorum})),
        }),
    )]});
    json!({
        "Error": object(&["error"], json!({"error": object(&["code", "message"], json!({"code": string(), "message": string()}))})),
        "Me": object(&["id", "name", "role"], json!({"id": string(), "name": string(), "role": string()})),
        "Health": object(
            &["status", "node_id", "peers", "database", "published", "uptime_secs", "root"],
            json!({
                "status": {"type": "string", "enum": ["ok", "degraded"]}, "node_id": string(),
                "peers": int(), "database": {"type": "string", "enum": ["sqlite", "postgres"]},
                "published": int(), "uptime_secs": int(),
                "root": object(&["sequence", "expires_at", "root_threshold", "release_threshold", "keys"], json!({})),
            }),
        ),
        "Package": object(
            &["hash", "name", "size", "uploaded_at", "uploaded_by"],
            json!({"hash": string(), "name": string(), "size": int(), "uploaded_at": int(), "uploaded_by": string()}),
        ),
        "Packages": {"type": "array", "items": {"$ref": "#/components/schemas/Package"}},
        "Release": release,
        "Releases": {"type": "array", "items": {"$ref": "#/components/schemas/Release"}},
        "NewRelease": closed(
            &["package", "channel", "semver", "content_hash"],
            json!({
                "package": name(NameKind::Package), "channel": name(NameKind::Channel),
                "semver": semver(),
                "content_hash": {"type": "string", "pattern": HASH, "description": "An uploaded package's hash"},
                "rollout_percent": {"type": ["integer", "null"], "minimum": 1, "maximum": 100, "description": "Staged rollout: the share of nodes that install it (100 or none: every node)"},
                "expires_in_days": {"type": ["integer", "null"], "minimum": 1, "maximum": 3650, "description": "Default: the server's release_expiry_days"},
            }),
        ),
        "ReleaseDraft": object(
            &["release_id", "package", "channel", "semver", "sequence", "content_hash", "size", "rollout_percent", "expires_at", "body"],
            json!({"release_id": int(), "sequence": int(), "size": int(), "expires_at": int(),
                "rollout_percent": int_or_null(), "body": {"type": "string", "description": "The encoded metadata, base64: what is signed"}}),
        ),
        "SignWith": closed(&["key"], json!({"key": {"type": "string", "description": "The name of a server-held key"}})),
        "DetachedSignature": object(
            &["public_key", "signature"],
            json!({"public_key": node_id(), "signature": {"type": "string", "pattern": SIGNATURE, "description": "64 bytes, base64"}}),
        ),
        "PublishAt": closed(&[], json!({"at": {"type": ["integer", "null"], "minimum": i64::MIN, "maximum": i64::MAX, "description": "Unix seconds; absent, null or past: now"}})),
        "Rollout": closed(&["percent"], json!({"percent": {"type": "integer", "minimum": 1, "maximum": 100}})),
        "RollbackTo": closed(&[], json!({"semver": {"type": ["string", "null"], "pattern": SEMVER, "maxLength": 64, "description": "Default: the restored release's"}})),
        "Revoked": object(&["revoked", "rollback"], json!({
            "revoked": {"$ref": "#/components/schemas/Release"},
            "rollback": {"oneOf": [{"$ref": "#/components/schemas/Release"}, {"type": "null"}]},
        })),
        "KeyEntry": key_entry,
        "RootDescription": root_description,
        "RootView": root_view,
        "Roots": object(&["current", "roots"], json!({
            "current": {"$ref": "#/components/schemas/RootDescription"},
            "roots": {"type": "array", "items": {"$ref": "#/components/schemas/RootView"}},
        })),
        "RootSpec": closed(
            &["keys", "root_threshold", "release_threshold", "valid_days"],
            json!({
                "keys": {"type": "array", "items": {"$ref": "#/components/schemas/KeyEntry"},
                    "minItems": 1, "maxItems": update::MAX_KEYS},
                "root_threshold": {"type": "integer", "minimum": 1, "maximum": update::MAX_KEYS,
                    "description": "At most the number of keys with the root role (else 422 `invalid_root`)"},
                "release_threshold": {"type": "integer", "minimum": 1, "maximum": update::MAX_KEYS,
                    "description": "At most the number of keys with the release role (else 422 `invalid_root`)"},
                "valid_days": {"type": "integer", "minimum": 1, "maximum": 3650},
                "revoke": {"type": "array", "items": node_id(), "maxItems": update::MAX_REVOKED,
                    "description": "Keys revoked for good (with those revoked before, at most 256; none of them listed in keys)"},
            }),
        ),
        "RootDraft": object(
            &["sequence", "expires_at", "keys", "root_threshold", "release_threshold", "revoked", "body"],
            json!({"body": {"type": "string", "description": "The encoded root, base64: what is signed"}}),
        ),
        "Queries": object(&["total", "by_channel", "recent"], json!({"total": int(), "by_channel": {"type": "array"}, "recent": {"type": "array"}})),
        "Audit": {"type": "array", "items": object(
            &["id", "at", "actor_id", "actor", "action", "target", "detail", "hash"],
            json!({"id": int(), "at": int(), "actor_id": string(), "actor": string(), "action": string(), "target": string(), "detail": string(), "hash": string()}),
        )},
        "AuditCheck": object(&["ok", "entries", "head", "broken"], json!({
            "ok": {"type": "boolean"}, "entries": int(), "head": string(),
            "broken": {"oneOf": [object(&["id", "reason"], json!({"id": int(), "reason": string()})), {"type": "null"}]},
        })),
        "Tokens": {"type": "array", "items": object(
            &["id", "name", "role", "created_at", "revoked"],
            json!({"id": string(), "name": string(), "role": string(), "created_at": int(), "revoked": {"type": "boolean"}}),
        )},
        "NewToken": closed(&["name", "role"], json!({
            "name": name(NameKind::Token),
            "role": {"type": "string", "enum": ["admin", "publisher", "signer", "viewer"]},
        })),
        "CreatedToken": object(&["id", "name", "role", "token"], json!({
            "id": string(), "name": string(), "role": string(),
            "token": {"type": "string", "description": "The secret, shown this once"},
        })),
        "UpdateCheck": object(
            &["package", "channel", "semver", "sequence", "size", "content_hash", "rollout_percent", "signed_metadata"],
            json!({"sequence": int(), "size": int(), "rollout_percent": int_or_null(),
                "signed_metadata": {"type": "string", "description": "SignedMetadata, protobuf, base64"}}),
        ),
    })
}
