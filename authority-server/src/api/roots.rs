//! Root rotation: an admin drafts the next root, signers sign it with server-held keys or
//! attach signatures made offline (`meshara-authority sign`), and an admin publishes it once
//! the current root's threshold of root keys *and* the new root's have signed.

use std::sync::Arc;

use axum::extract::State;
use axum::{Extension, Json};
use data_encoding::BASE64;
use meshara_core::NodeId;
use meshara_core::update::{Role, Root, TrustState};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiJson, ApiResult, PathParam, SignWith, to_signed};
use crate::auth::Principal;
use crate::db::RootRow;
use crate::keys::{self, DetachedSignature, KeyEntry, RootDraft};
use crate::{AppState, now};

/// Longest validity a drafted root may ask for.
const MAX_VALID_DAYS: u64 = 3650;

fn body(r: &RootRow) -> ApiResult<Vec<u8>> {
    BASE64
        .decode(r.body.as_bytes())
        .map_err(|_| ApiError::internal("stored root body is not base64"))
}

async fn load(s: &AppState, sequence: i64) -> ApiResult<(RootRow, Root)> {
    let row =
        s.db.root(sequence)
            .await?
            .ok_or_else(|| ApiError::not_found("root draft"))?;
    let root = Root::decode(&body(&row)?).map_err(ApiError::internal)?;
    Ok((row, root))
}

async fn load_draft(s: &AppState, sequence: i64) -> ApiResult<(RootRow, Root)> {
    let (row, root) = load(s, sequence).await?;
    if row.status != "draft" {
        return Err(ApiError::conflict(format!(
            "root {sequence} is {}",
            row.status
        )));
    }
    Ok((row, root))
}

/// Root keys of `root` among `signers`.
fn count(root: &Root, signers: &[NodeId]) -> usize {
    signers
        .iter()
        .filter(|k| root.key(k).is_some_and(|e| e.roles.contains(&Role::Root)))
        .count()
}

fn describe(root: &Root) -> Value {
    let draft = RootDraft::new(&root.encode().unwrap_or_default()).ok();
    json!({
        "sequence": root.sequence,
        "expires_at": root.expires_at,
        "keys": draft.as_ref().map(|d| d.keys.clone()).unwrap_or_default(),
        "root_threshold": root.root_threshold,
        "release_threshold": root.release_threshold,
        "revoked": root.revoked.iter().map(ToString::to_string).collect::<Vec<_>>(),
    })
}

async fn view(s: &AppState, row: &RootRow, root: &Root) -> ApiResult<Value> {
    let current = s.updater.root();
    let sigs = s.db.root_signatures(row.sequence).await?;
    let signers: Vec<NodeId> = sigs
        .iter()
        .filter_map(|g| g.public_key.parse().ok())
        .collect();
    let mut v = describe(root);
    v["status"] = json!(row.status);
    v["created_by"] = json!(row.created_by);
    v["created_at"] = json!(row.created_at);
    v["published_at"] = json!(row.published_at);
    v["signatures"] = json!(
        sigs.iter()
            .map(|g| json!({"public_key": g.public_key, "signer": g.signer}))
            .collect::<Vec<_>>()
    );
    v["quorum"] = json!({
        "current": {"sequence": current.sequence, "have": count(&current, &signers), "need": current.root_threshold},
        "new": {"have": count(root, &signers), "need": root.root_threshold},
    });
    Ok(v)
}

/// `GET /api/v1/roots`: the current root and the rotations drafted here.
pub(super) async fn list(State(s): State<Arc<AppState>>) -> ApiResult<Json<Value>> {
    let mut drafts = Vec::new();
    for row in s.db.roots().await? {
        let root = Root::decode(&body(&row)?).map_err(ApiError::internal)?;
        drafts.push(view(&s, &row, &root).await?);
    }
    Ok(Json(
        json!({"current": describe(&s.updater.root()), "roots": drafts}),
    ))
}

/// What the next root lists.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RootSpec {
    keys: Vec<KeyEntry>,
    root_threshold: u32,
    release_threshold: u32,
    valid_days: u64,
    #[serde(default)]
    revoke: Vec<String>,
}

/// 422 `invalid_root`: a root the body describes in the right shape but that breaks a rule
/// its schema cannot state (thresholds reachable by the keys holding each role, no key
/// listed twice or both listed and revoked, each key an Ed25519 public key).
fn invalid_root(message: String) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_root",
        message,
    )
}

/// `POST /api/v1/roots`: drafts the root after the current one (replacing an unpublished
/// draft of that sequence and its signatures).
pub(super) async fn create(
    State(s): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    ApiJson(spec): ApiJson<RootSpec>,
) -> ApiResult<(axum::http::StatusCode, Json<Value>)> {
    if !(1..=MAX_VALID_DAYS).contains(&spec.valid_days) {
        return Err(ApiError::invalid(format!(
            "valid_days must be 1..={MAX_VALID_DAYS}"
        )));
    }
    for k in &spec.keys {
        super::check_name(crate::names::NameKind::Key, &k.name)?;
    }
    let keys = spec
        .keys
        .iter()
        .map(KeyEntry::to_key)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid_root(e.to_string()))?;
    let revoke = spec
        .revoke
        .iter()
        .map(|k| {
            k.parse::<NodeId>()
                .map_err(|_| invalid_root(format!("{k:?} is not a public key")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let current = s.updater.root();
    let root = keys::next_root(
        &current,
        keys,
        spec.root_threshold,
        spec.release_threshold,
        spec.valid_days,
        revoke,
    )
    .map_err(|e| invalid_root(e.to_string()))?;
    let encoded = root.encode().map_err(|e| invalid_root(e.to_string()))?;
    let sequence = root.sequence as i64;
    if s.db
        .root(sequence)
        .await?
        .is_some_and(|r| r.status != "draft")
    {
        return Err(ApiError::conflict(format!(
            "root {sequence} is already published"
        )));
    }
    s.db.draft_root(sequence, &BASE64.encode(&encoded), &p.name)
        .await?;
    s.db.audit(
        p.actor(),
        "root.draft",
        &sequence.to_string(),
        &format!(
            "{} keys, root {}-of, release {}-of",
            root.keys.len(),
            root.root_threshold,
            root.release_threshold
        ),
    )
    .await?;
    let (row, root) = load(&s, sequence).await?;
    Ok((
        axum::http::StatusCode::CREATED,
        Json(view(&s, &row, &root).await?),
    ))
}

/// `GET /api/v1/roots/{sequence}/draft`: the draft to sign offline.
pub(super) async fn export(
    State(s): State<Arc<AppState>>,
    PathParam(sequence): PathParam<i64>,
) -> ApiResult<Json<RootDraft>> {
    let (row, _) = load_draft(&s, sequence).await?;
    Ok(Json(
        RootDraft::new(&body(&row)?).map_err(ApiError::internal)?,
    ))
}

/// Whether `key` may sign rotation `root`: a root key of the current root or of the new one.
fn may_sign(current: &Root, root: &Root, key: &NodeId) -> bool {
    count(current, &[*key]) + count(root, &[*key]) > 0
}

/// `POST /api/v1/roots/{sequence}/sign`: signs with a server-held key.
pub(super) async fn sign(
    State(s): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    PathParam(sequence): PathParam<i64>,
    ApiJson(w): ApiJson<SignWith>,
) -> ApiResult<Json<Value>> {
    let (row, root) = load_draft(&s, sequence).await?;
    let key = s
        .keys
        .get(&w.key)
        .ok_or_else(|| super::no_such_key(&w.key))?;
    if !may_sign(&s.updater.root(), &root, &key.node_id()) {
        return Err(ApiError::conflict(format!(
            "key {:?} is a root key of neither the current root nor this one",
            w.key
        )));
    }
    let sig = meshara_core::update::signature(&body(&row)?, key);
    s.db.add_root_signature(
        sequence,
        &key.node_id().to_string(),
        &BASE64.encode(&sig.signature),
        &p.name,
    )
    .await?;
    s.db.audit(
        p.actor(),
        "root.sign",
        &sequence.to_string(),
        &format!("with server-held key {}", w.key),
    )
    .await?;
    Ok(Json(view(&s, &row, &root).await?))
}

/// `POST /api/v1/roots/{sequence}/signatures`: attaches a signature made offline.
pub(super) async fn attach(
    State(s): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    PathParam(sequence): PathParam<i64>,
    ApiJson(d): ApiJson<DetachedSignature>,
) -> ApiResult<Json<Value>> {
    let (row, root) = load_draft(&s, sequence).await?;
    let (key, sig) = super::parse_detached(&d)?;
    if !may_sign(&s.updater.root(), &root, &key) {
        return Err(ApiError::conflict(
            "the key is a root key of neither the current root nor this one",
        ));
    }
    meshara_core::update::verify_signature(&body(&row)?, &key, &sig)
        .map_err(|_| ApiError::conflict("the signature does not verify over this root"))?;
    s.db.add_root_signature(sequence, &key.to_string(), &BASE64.encode(&sig), &p.name)
        .await?;
    s.db.audit(
        p.actor(),
        "root.attach_signature",
        &sequence.to_string(),
        &format!("offline signature by {key}"),
    )
    .await?;
    Ok(Json(view(&s, &row, &root).await?))
}

/// `POST /api/v1/roots/{sequence}/publish`: rotates once both thresholds are met. The
/// authority node accepts the root as any node would, announces it, and serves it to nodes
/// that are behind; `root.pb` becomes the new root (the file new installs should ship).
pub(super) async fn publish(
    State(s): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    PathParam(sequence): PathParam<i64>,
) -> ApiResult<Json<Value>> {
    let (row, root) = load_draft(&s, sequence).await?;
    let signed = to_signed(body(&row)?, &s.db.root_signatures(sequence).await?);
    let current = s.updater.root();
    // Idempotent: after a crash between the node rotating and the database recording it,
    // publishing again records it.
    if current != root {
        let mut trust = TrustState::new(current).map_err(ApiError::internal)?;
        trust
            .rotate_root(&signed, now() as u64)
            .map_err(|e| ApiError::conflict(format!("cannot publish: {e}")))?;
        s.updater
            .publish_root(signed.clone())
            .map_err(|e| ApiError::conflict(format!("cannot publish: {e}")))?;
    }
    keys::replace_root(&s.config.data_dir.join("root.pb"), &signed).map_err(ApiError::internal)?;
    s.db.set_root_published(sequence).await?;
    s.db.audit(
        p.actor(),
        "root.publish",
        &sequence.to_string(),
        &format!("{} keys", root.keys.len()),
    )
    .await?;
    tracing::info!(sequence, "root rotated");
    let (row, root) = load(&s, sequence).await?;
    Ok(Json(view(&s, &row, &root).await?))
}
