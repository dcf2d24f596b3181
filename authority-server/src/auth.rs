//! API tokens and roles. A token is `mat_` + 32 random bytes (base32); only its BLAKE3 hash
//! is stored, so a copy of the database does not give anyone access.

use axum::http::HeaderMap;
use data_encoding::{BASE32_NOPAD, HEXLOWER};

use crate::db::{Db, DbError};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Role {
    /// Everything, including tokens.
    Admin,
    /// Upload, draft, publish, schedule, roll out, roll back, revoke.
    Publisher,
    /// Sign drafts (server-held keys or offline signatures).
    Signer,
    /// Read.
    Viewer,
}

impl Role {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Publisher => "publisher",
            Role::Signer => "signer",
            Role::Viewer => "viewer",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "admin" => Ok(Role::Admin),
            "publisher" => Ok(Role::Publisher),
            "signer" => Ok(Role::Signer),
            "viewer" => Ok(Role::Viewer),
            _ => Err(format!(
                "unknown role {s:?}: admin, publisher, signer or viewer"
            )),
        }
    }
}

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Token id.
    pub token_id: String,
    /// Token name (who).
    pub name: String,
    /// Role.
    pub role: Role,
}

impl Principal {
    /// The caller as the audit log records it: token id and name.
    pub fn actor(&self) -> crate::db::Actor<'_> {
        crate::db::Actor {
            id: &self.token_id,
            name: &self.name,
        }
    }
}

/// The stored form of a token.
pub fn hash_token(token: &str) -> String {
    HEXLOWER.encode(blake3::hash(token.as_bytes()).as_bytes())
}

/// Creates a token; returns its id and the secret (shown once).
pub async fn create_token(db: &Db, name: &str, role: Role) -> Result<(String, String), DbError> {
    let mut secret = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut secret);
    let token = format!("mat_{}", BASE32_NOPAD.encode(&secret).to_lowercase());
    let id = insert_token(db, name, role, &token).await?;
    Ok((id, token))
}

/// Stores a token made elsewhere (the first admin token from `admin_token_file`); returns its
/// id. Only its hash is kept.
pub async fn insert_token(db: &Db, name: &str, role: Role, token: &str) -> Result<String, DbError> {
    let mut id = [0u8; 8];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut id);
    let id = HEXLOWER.encode(&id);
    db.insert_token(&id, name, role.as_str(), &hash_token(token))
        .await?;
    Ok(id)
}

/// Whether `token` has the shape the server accepts: `mat_` and up to 124 ASCII letters and
/// digits.
pub fn is_token_shaped(token: &str) -> bool {
    token.len() <= 128
        && token
            .strip_prefix("mat_")
            .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// The caller the request's bearer token belongs to, if any.
pub async fn authenticate(db: &Db, headers: &HeaderMap) -> Result<Option<Principal>, DbError> {
    let Some(token) = crate::api::bearer(headers) else {
        return Ok(None);
    };
    if !token.starts_with("mat_") || token.len() > 128 {
        return Ok(None);
    }
    Ok(db.token_by_hash(&hash_token(token)).await?.and_then(|row| {
        Some(Principal {
            role: row.role.parse().ok()?,
            token_id: row.id,
            name: row.name,
        })
    }))
}
