//! Storage of everything but package bytes, through one code path for SQLite (the embedded
//! default) and PostgreSQL: sqlx's `Any` driver, `$n` placeholders (both accept them), only
//! `BIGINT` and `TEXT` columns, and one migration directory per dialect that differ only in
//! how an auto-increment key is spelled.

use serde::Serialize;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

/// Why a database operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// The database refused or failed.
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
    /// The URL names a database this build does not support.
    #[error("unsupported database URL {0:?}: use sqlite:// or postgres://")]
    Unsupported(String),
    /// The SQLite file or its directory could not be created or restricted.
    #[error("database file: {0}")]
    File(String),
    /// A migration failed.
    #[error("migration {version} failed: {source}")]
    Migration {
        /// The migration.
        version: i64,
        /// Why.
        #[source]
        source: sqlx::Error,
    },
}

/// Which database is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// SQLite, a file in the data directory.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

const SQLITE: &[(i64, &str)] = &[
    (1, include_str!("../migrations/sqlite/0001_init.sql")),
    (2, include_str!("../migrations/sqlite/0002_roots.sql")),
    (3, include_str!("../migrations/sqlite/0003_audit_chain.sql")),
];
const POSTGRES: &[(i64, &str)] = &[
    (1, include_str!("../migrations/postgres/0001_init.sql")),
    (2, include_str!("../migrations/postgres/0002_roots.sql")),
    (
        3,
        include_str!("../migrations/postgres/0003_audit_chain.sql"),
    ),
];

/// The migration that starts the audit chain: applying it seals the entries already there.
const AUDIT_CHAIN_MIGRATION: i64 = 3;

/// The database.
#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
}

/// A token's owner and role, as stored.
#[derive(Debug, Clone)]
pub struct TokenRow {
    /// Token id (not secret).
    pub id: String,
    /// Who holds it.
    pub name: String,
    /// Its role.
    pub role: String,
}

/// A token as listed to admins: everything but its hash.
#[derive(Debug, Clone, Serialize)]
pub struct TokenInfo {
    /// Token id (not secret).
    pub id: String,
    /// Who holds it.
    pub name: String,
    /// Its role.
    pub role: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Whether it was revoked.
    pub revoked: bool,
}

/// A stored package.
#[derive(Debug, Clone, Serialize)]
pub struct PackageRow {
    /// BLAKE3 hash, hex.
    pub hash: String,
    /// File name given at upload.
    pub name: String,
    /// Bytes.
    pub size: i64,
    /// Unix seconds.
    pub uploaded_at: i64,
    /// Token name of the uploader.
    pub uploaded_by: String,
}

/// A release as stored.
#[derive(Debug, Clone)]
pub struct ReleaseRow {
    /// Id.
    pub id: i64,
    /// Package.
    pub package: String,
    /// Channel.
    pub channel: String,
    /// Semantic version.
    pub semver: String,
    /// Sequence.
    pub sequence: i64,
    /// Content hash, hex.
    pub content_hash: String,
    /// Content size.
    pub size: i64,
    /// Encoded `ReleaseMetadata`, base64: what signatures cover.
    pub body: String,
    /// Staged rollout.
    pub rollout_percent: Option<i64>,
    /// Unix seconds.
    pub expires_at: i64,
    /// `draft`, `scheduled`, `published` or `revoked`.
    pub status: String,
    /// When a scheduled release publishes.
    pub publish_at: Option<i64>,
    /// Unix seconds.
    pub created_at: i64,
    /// Token name.
    pub created_by: String,
    /// Unix seconds.
    pub published_at: Option<i64>,
}

/// A signature as stored.
#[derive(Debug, Clone)]
pub struct SignatureRow {
    /// Public key, NodeId text.
    pub public_key: String,
    /// Signature, base64.
    pub signature: String,
    /// Who added it.
    pub signer: String,
}

/// A root drafted on the server: a rotation collecting signatures, or one published.
#[derive(Debug, Clone, Serialize)]
pub struct RootRow {
    /// Its sequence.
    pub sequence: i64,
    /// Encoded root, base64: what is signed.
    pub body: String,
    /// `draft` or `published`.
    pub status: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Who drafted it.
    pub created_by: String,
    /// When it was published.
    pub published_at: Option<i64>,
}

fn signature_row(r: &AnyRow) -> Result<SignatureRow, sqlx::Error> {
    Ok(SignatureRow {
        public_key: r.try_get("public_key")?,
        signature: r.try_get("signature")?,
        signer: r.try_get("signer")?,
    })
}

fn root_row(r: &AnyRow) -> Result<RootRow, sqlx::Error> {
    Ok(RootRow {
        sequence: r.try_get("sequence")?,
        body: r.try_get("body")?,
        status: r.try_get("status")?,
        created_at: r.try_get("created_at")?,
        created_by: r.try_get("created_by")?,
        published_at: r.try_get("published_at")?,
    })
}

/// Who did something, for the audit log: a token (its id and name) or the server itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Actor<'a> {
    /// The token id; empty for the server itself.
    pub id: &'a str,
    /// The token's name, or `system`, `scheduler`, `cli`.
    pub name: &'a str,
}

impl<'a> Actor<'a> {
    /// The server itself (no token): `system`, `scheduler`, `cli`.
    pub fn internal(name: &'a str) -> Self {
        Actor { id: "", name }
    }
}

/// An audit entry.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRow {
    /// Id.
    pub id: i64,
    /// Unix seconds.
    pub at: i64,
    /// The acting token's id (unique); empty for the server itself and for entries written
    /// before token ids were recorded.
    pub actor_id: String,
    /// Token name (not unique), or `scheduler` / `system` / `cli`.
    pub actor: String,
    /// Action, e.g. `release.publish`.
    pub action: String,
    /// What it acted on.
    pub target: String,
    /// Details.
    pub detail: String,
    /// BLAKE3 (hex) over the previous entry's hash and this entry's fields ([`audit_hash`]).
    pub hash: String,
}

/// The hash of an audit entry: BLAKE3 over a domain tag, the previous entry's hash (hex,
/// empty for the first entry) and every field, each length-prefixed so that no two entries
/// encode alike.
pub fn audit_hash(prev: &str, row: &AuditRow) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"meshara-authority audit v1\0");
    let id = row.id.to_string();
    let at = row.at.to_string();
    for field in [
        prev,
        &id,
        &at,
        &row.actor_id,
        &row.actor,
        &row.action,
        &row.target,
        &row.detail,
    ] {
        h.update(&(field.len() as u64).to_le_bytes());
        h.update(field.as_bytes());
    }
    data_encoding::HEXLOWER.encode(h.finalize().as_bytes())
}

/// The outcome of checking the audit chain.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AuditCheck {
    /// Entries checked.
    pub entries: u64,
    /// The newest entry's hash: record it elsewhere to detect later removal of the newest
    /// entries, which a chain alone cannot show.
    pub head: String,
    /// The first entry that does not match the chain (edited, inserted, reordered, or
    /// following a deleted one), with why; `None` when the chain holds.
    pub broken: Option<AuditBreak>,
}

/// Where and why the audit chain breaks.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AuditBreak {
    /// The entry's id.
    pub id: i64,
    /// Why.
    pub reason: String,
}

const AUDIT_COLUMNS: &str = "id, at, actor_id, actor, action, target, detail, hash";

fn audit_row(r: &AnyRow) -> Result<AuditRow, sqlx::Error> {
    Ok(AuditRow {
        id: r.try_get("id")?,
        at: r.try_get("at")?,
        actor_id: r.try_get("actor_id")?,
        actor: r.try_get("actor")?,
        action: r.try_get("action")?,
        target: r.try_get("target")?,
        detail: r.try_get("detail")?,
        hash: r.try_get("hash")?,
    })
}

/// Seals the entries written before the chain existed, oldest first (run once, inside the
/// migration that adds the chain).
async fn seal_legacy_audit(tx: &mut sqlx::Transaction<'_, sqlx::Any>) -> Result<(), sqlx::Error> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {AUDIT_COLUMNS} FROM audit ORDER BY id"
    )))
    .fetch_all(&mut **tx)
    .await?;
    let mut prev = String::new();
    for r in &rows {
        let row = audit_row(r)?;
        let hash = audit_hash(&prev, &row);
        sqlx::query("UPDATE audit SET hash = $1 WHERE id = $2")
            .bind(&hash)
            .bind(row.id)
            .execute(&mut **tx)
            .await?;
        prev = hash;
    }
    if !rows.is_empty() {
        tracing::info!(
            entries = rows.len(),
            "sealed the existing audit entries into the chain"
        );
    }
    Ok(())
}

/// One update check a node made.
#[derive(Debug, Clone, Serialize)]
pub struct QueryRow {
    /// Unix seconds.
    pub at: i64,
    /// Package.
    pub package: String,
    /// Channel.
    pub channel: String,
    /// `http` or `meshara`.
    pub via: String,
    /// The asking node, over Meshara.
    pub peer: Option<String>,
}

/// Update checks per package and channel.
#[derive(Debug, Clone, Serialize)]
pub struct QueryCount {
    /// Package.
    pub package: String,
    /// Channel.
    pub channel: String,
    /// Checks kept.
    pub count: i64,
    /// The newest.
    pub last_at: i64,
}

// Dynamic SQL below is built only from this module's constants (column lists, table names),
// never from input: that is what each `AssertSqlSafe` asserts.
const RELEASE_COLUMNS: &str = "id, package, channel, semver, sequence, content_hash, size, body, \
     rollout_percent, expires_at, status, publish_at, created_at, created_by, published_at";

fn release(row: &AnyRow) -> Result<ReleaseRow, sqlx::Error> {
    Ok(ReleaseRow {
        id: row.try_get("id")?,
        package: row.try_get("package")?,
        channel: row.try_get("channel")?,
        semver: row.try_get("semver")?,
        sequence: row.try_get("sequence")?,
        content_hash: row.try_get("content_hash")?,
        size: row.try_get("size")?,
        body: row.try_get("body")?,
        rollout_percent: row.try_get("rollout_percent")?,
        expires_at: row.try_get("expires_at")?,
        status: row.try_get("status")?,
        publish_at: row.try_get("publish_at")?,
        created_at: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
        published_at: row.try_get("published_at")?,
    })
}

/// Fields of a new release.
#[derive(Debug, Clone)]
pub struct NewRelease<'a> {
    /// Package.
    pub package: &'a str,
    /// Channel.
    pub channel: &'a str,
    /// Semantic version.
    pub semver: &'a str,
    /// Content hash, hex.
    pub content_hash: &'a str,
    /// Content size.
    pub size: i64,
    /// Staged rollout.
    pub rollout_percent: Option<i64>,
    /// Unix seconds.
    pub expires_at: i64,
    /// Token name.
    pub created_by: &'a str,
}

/// Creates the SQLite file of `url` (and its directory) readable by this user only, before
/// SQLite would create it with the umask's mode, and takes group and other access away from
/// an existing one and its `-wal` and `-shm` files (SQLite gives those the database's mode).
fn restrict_sqlite_file(url: &str) -> Result<(), DbError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or_default();
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" || url.contains("mode=memory") {
        return Ok(());
    }
    let path = std::path::Path::new(path);
    let io =
        |what: &str, e: std::io::Error| DbError::File(format!("{what} {}: {e}", path.display()));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| io("creating the directory of", e))?;
        }
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| io("creating", e))?;
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let file = std::path::PathBuf::from(file);
        let Ok(meta) = std::fs::metadata(&file) else {
            continue;
        };
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode & 0o700))
                .map_err(|e| io("restricting", e))?;
            tracing::info!(file = %file.display(), "database file restricted to its owner");
        }
    }
    Ok(())
}

impl Db {
    /// Connects to `url` (`sqlite://path?mode=rwc` or `postgres://…`) and runs the
    /// migrations not yet applied.
    pub async fn connect(url: &str) -> Result<Db, DbError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(DbError::Unsupported(url.to_owned()));
        };
        if backend == Backend::Sqlite {
            restrict_sqlite_file(url)?;
        }
        let pool = AnyPoolOptions::new()
            // One writer at a time is what SQLite allows anyway; more only queue on its lock.
            .max_connections(if backend == Backend::Sqlite { 1 } else { 8 })
            .connect(url)
            .await?;
        let db = Db { pool, backend };
        if backend == Backend::Sqlite {
            sqlx::raw_sql("PRAGMA foreign_keys = ON; PRAGMA journal_mode = WAL;")
                .execute(&db.pool)
                .await?;
        }
        db.migrate().await?;
        Ok(db)
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    async fn migrate(&self) -> Result<(), DbError> {
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS meshara_migrations \
             (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .execute(&self.pool)
        .await?;
        let migrations = match self.backend {
            Backend::Sqlite => SQLITE,
            Backend::Postgres => POSTGRES,
        };
        for (version, sql) in migrations {
            let applied: i64 =
                sqlx::query("SELECT COUNT(*) AS n FROM meshara_migrations WHERE version = $1")
                    .bind(*version)
                    .fetch_one(&self.pool)
                    .await?
                    .try_get("n")?;
            if applied > 0 {
                continue;
            }
            let mut tx = self.pool.begin().await?;
            let run = async {
                sqlx::raw_sql(*sql).execute(&mut *tx).await?;
                sqlx::query("INSERT INTO meshara_migrations (version, applied_at) VALUES ($1, $2)")
                    .bind(*version)
                    .bind(crate::now())
                    .execute(&mut *tx)
                    .await?;
                if *version == AUDIT_CHAIN_MIGRATION {
                    seal_legacy_audit(&mut tx).await?;
                }
                Ok::<_, sqlx::Error>(())
            };
            run.await.map_err(|source| DbError::Migration {
                version: *version,
                source,
            })?;
            tx.commit().await?;
            tracing::info!(version, "database migration applied");
        }
        Ok(())
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1 AS one")
            .fetch_one(&self.pool)
            .await
            .is_ok()
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    // --- tokens ---

    /// Stores a token by the hash of its secret.
    pub async fn insert_token(
        &self,
        id: &str,
        name: &str,
        role: &str,
        hash: &str,
    ) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO tokens (id, name, role, hash, created_at, revoked) VALUES ($1, $2, $3, $4, $5, 0)",
        )
        .bind(id)
        .bind(name)
        .bind(role)
        .bind(hash)
        .bind(crate::now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The live token whose secret hashes to `hash`.
    pub async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRow>, DbError> {
        let row = sqlx::query("SELECT id, name, role FROM tokens WHERE hash = $1 AND revoked = 0")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(TokenRow {
                id: r.try_get("id")?,
                name: r.try_get("name")?,
                role: r.try_get("role")?,
            })
        })
        .transpose()
    }

    /// Every token, live ones first, newest first.
    pub async fn tokens(&self) -> Result<Vec<TokenInfo>, DbError> {
        let rows = sqlx::query(
            "SELECT id, name, role, created_at, revoked FROM tokens ORDER BY revoked, created_at DESC, id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(TokenInfo {
                    id: r.try_get("id")?,
                    name: r.try_get("name")?,
                    role: r.try_get("role")?,
                    created_at: r.try_get("created_at")?,
                    revoked: r.try_get::<i64, _>("revoked")? != 0,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(DbError::from)
    }

    /// How many live tokens exist.
    pub async fn token_count(&self) -> Result<i64, DbError> {
        Ok(
            sqlx::query("SELECT COUNT(*) AS n FROM tokens WHERE revoked = 0")
                .fetch_one(&self.pool)
                .await?
                .try_get("n")?,
        )
    }

    /// Revokes a token by id. Returns whether it existed.
    pub async fn revoke_token(&self, id: &str) -> Result<bool, DbError> {
        let done = sqlx::query("UPDATE tokens SET revoked = 1 WHERE id = $1 AND revoked = 0")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    // --- packages ---

    /// Records a package whose file is complete and verified; a second upload of the same
    /// content keeps the first record.
    pub async fn insert_package(&self, p: &PackageRow) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO packages (hash, name, size, uploaded_at, uploaded_by) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (hash) DO NOTHING",
        )
        .bind(&p.hash)
        .bind(&p.name)
        .bind(p.size)
        .bind(p.uploaded_at)
        .bind(&p.uploaded_by)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every package, newest first.
    pub async fn packages(&self) -> Result<Vec<PackageRow>, DbError> {
        let rows = sqlx::query(
            "SELECT hash, name, size, uploaded_at, uploaded_by FROM packages ORDER BY uploaded_at DESC, hash",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(PackageRow {
                    hash: r.try_get("hash")?,
                    name: r.try_get("name")?,
                    size: r.try_get("size")?,
                    uploaded_at: r.try_get("uploaded_at")?,
                    uploaded_by: r.try_get("uploaded_by")?,
                })
            })
            .collect()
    }

    /// One package.
    pub async fn package(&self, hash: &str) -> Result<Option<PackageRow>, DbError> {
        Ok(self.packages().await?.into_iter().find(|p| p.hash == hash))
    }

    /// Bytes all stored packages take.
    pub async fn stored_bytes(&self) -> Result<u64, DbError> {
        let n: i64 =
            sqlx::query("SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) AS n FROM packages")
                .fetch_one(&self.pool)
                .await?
                .try_get("n")?;
        Ok(n.max(0) as u64)
    }

    /// Deletes a package's record unless a release uses it. Returns whether it was deleted.
    pub async fn delete_package(&self, hash: &str) -> Result<bool, DbError> {
        let done = sqlx::query(
            "DELETE FROM packages WHERE hash = $1 \
             AND NOT EXISTS (SELECT 1 FROM releases WHERE content_hash = $1)",
        )
        .bind(hash)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    // --- releases ---

    /// Creates a draft with the next sequence of its package and channel; `body` makes the
    /// encoded metadata from the sequence.
    pub async fn insert_release(
        &self,
        new: &NewRelease<'_>,
        body: impl Fn(i64) -> Result<String, String>,
    ) -> Result<Result<ReleaseRow, String>, DbError> {
        let mut tx = self.pool.begin().await?;
        let next: i64 = sqlx::query(
            "SELECT COALESCE(MAX(sequence), 0) + 1 AS next FROM releases WHERE package = $1 AND channel = $2",
        )
        .bind(new.package)
        .bind(new.channel)
        .fetch_one(&mut *tx)
        .await?
        .try_get("next")?;
        let body = match body(next) {
            Ok(b) => b,
            Err(e) => return Ok(Err(e)),
        };
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO releases (package, channel, semver, sequence, content_hash, size, body, \
             rollout_percent, expires_at, status, publish_at, created_at, created_by, published_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'draft', NULL, $10, $11, NULL) RETURNING {RELEASE_COLUMNS}"
        )))
        .bind(new.package)
        .bind(new.channel)
        .bind(new.semver)
        .bind(next)
        .bind(new.content_hash)
        .bind(new.size)
        .bind(&body)
        .bind(new.rollout_percent)
        .bind(new.expires_at)
        .bind(crate::now())
        .bind(new.created_by)
        .fetch_one(&mut *tx)
        .await?;
        let r = release(&row)?;
        tx.commit().await?;
        Ok(Ok(r))
    }

    /// Every release, newest first.
    pub async fn releases(&self) -> Result<Vec<ReleaseRow>, DbError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RELEASE_COLUMNS} FROM releases ORDER BY id DESC"
        )))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(release).collect::<Result<_, _>>()?)
    }

    /// One release.
    pub async fn release(&self, id: i64) -> Result<Option<ReleaseRow>, DbError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RELEASE_COLUMNS} FROM releases WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(release).transpose()?)
    }

    /// Scheduled releases due at `now`.
    pub async fn due(&self, now: i64) -> Result<Vec<ReleaseRow>, DbError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RELEASE_COLUMNS} FROM releases WHERE status = 'scheduled' AND publish_at <= $1 ORDER BY publish_at, id"
        )))
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(release).collect::<Result<_, _>>()?)
    }

    /// Sets a release's status (and publish time fields).
    pub async fn set_status(
        &self,
        id: i64,
        status: &str,
        publish_at: Option<i64>,
        published_at: Option<i64>,
    ) -> Result<(), DbError> {
        sqlx::query(
            "UPDATE releases SET status = $1, publish_at = $2, published_at = $3 WHERE id = $4",
        )
        .bind(status)
        .bind(publish_at)
        .bind(published_at)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Replaces a draft's body and rollout, dropping its signatures (they covered the old
    /// body), in one transaction.
    pub async fn set_rollout(&self, id: i64, percent: i64, body: &str) -> Result<(), DbError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE releases SET rollout_percent = $1, body = $2 WHERE id = $3")
            .bind(percent)
            .bind(body)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM signatures WHERE release_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Adds or replaces `public_key`'s signature on a release.
    pub async fn add_signature(
        &self,
        release_id: i64,
        public_key: &str,
        signature: &str,
        signer: &str,
    ) -> Result<(), DbError> {
        self.upsert_signature(
            "signatures",
            "release_id",
            release_id,
            public_key,
            signature,
            signer,
        )
        .await
    }

    /// Adds or replaces `public_key`'s signature in `table`, on the row whose `owner` column
    /// is `id` (both names are constants of this module, never input).
    async fn upsert_signature(
        &self,
        table: &'static str,
        owner: &'static str,
        id: i64,
        public_key: &str,
        signature: &str,
        signer: &str,
    ) -> Result<(), DbError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {table} WHERE {owner} = $1 AND public_key = $2"
        )))
        .bind(id)
        .bind(public_key)
        .execute(&mut *tx)
        .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {table} ({owner}, public_key, signature, signer, added_at) VALUES ($1, $2, $3, $4, $5)"
        )))
        .bind(id)
        .bind(public_key)
        .bind(signature)
        .bind(signer)
        .bind(crate::now())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A release's signatures.
    pub async fn signatures(&self, release_id: i64) -> Result<Vec<SignatureRow>, DbError> {
        let rows = sqlx::query(
            "SELECT public_key, signature, signer FROM signatures WHERE release_id = $1 ORDER BY added_at, public_key",
        )
        .bind(release_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(signature_row).collect::<Result<_, _>>()?)
    }

    // --- roots ---

    /// Drafts root `sequence`, replacing an unpublished draft of the same sequence and its
    /// signatures.
    pub async fn draft_root(&self, sequence: i64, body: &str, actor: &str) -> Result<(), DbError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "DELETE FROM root_signatures WHERE sequence IN \
             (SELECT sequence FROM roots WHERE sequence = $1 AND status = 'draft')",
        )
        .bind(sequence)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM roots WHERE sequence = $1 AND status = 'draft'")
            .bind(sequence)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO roots (sequence, body, status, created_at, created_by) VALUES ($1, $2, 'draft', $3, $4)",
        )
        .bind(sequence)
        .bind(body)
        .bind(crate::now())
        .bind(actor)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Root `sequence`, if drafted here.
    pub async fn root(&self, sequence: i64) -> Result<Option<RootRow>, DbError> {
        let row = sqlx::query(
            "SELECT sequence, body, status, created_at, created_by, published_at FROM roots WHERE sequence = $1",
        )
        .bind(sequence)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(root_row).transpose()?)
    }

    /// Roots drafted here, newest first.
    pub async fn roots(&self) -> Result<Vec<RootRow>, DbError> {
        let rows = sqlx::query(
            "SELECT sequence, body, status, created_at, created_by, published_at FROM roots ORDER BY sequence DESC",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(root_row).collect::<Result<_, _>>()?)
    }

    /// Adds or replaces `public_key`'s signature on root `sequence`.
    pub async fn add_root_signature(
        &self,
        sequence: i64,
        public_key: &str,
        signature: &str,
        signer: &str,
    ) -> Result<(), DbError> {
        self.upsert_signature(
            "root_signatures",
            "sequence",
            sequence,
            public_key,
            signature,
            signer,
        )
        .await
    }

    /// Root `sequence`'s signatures.
    pub async fn root_signatures(&self, sequence: i64) -> Result<Vec<SignatureRow>, DbError> {
        let rows = sqlx::query(
            "SELECT public_key, signature, signer FROM root_signatures WHERE sequence = $1 ORDER BY added_at, public_key",
        )
        .bind(sequence)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(signature_row).collect::<Result<_, _>>()?)
    }

    /// Marks root `sequence` published.
    pub async fn set_root_published(&self, sequence: i64) -> Result<(), DbError> {
        sqlx::query("UPDATE roots SET status = 'published', published_at = $1 WHERE sequence = $2")
            .bind(crate::now())
            .bind(sequence)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    // --- audit ---

    /// Appends to the audit log, chained to the newest entry. Appends are serialized (a table
    /// lock on PostgreSQL, the write lock on SQLite, taken by the insert) so that every entry
    /// chains to the one before it.
    pub async fn audit(
        &self,
        actor: Actor<'_>,
        action: &str,
        target: &str,
        detail: &str,
    ) -> Result<(), DbError> {
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("LOCK TABLE audit IN SHARE ROW EXCLUSIVE MODE")
                .execute(&mut *tx)
                .await?;
        }
        let mut row = AuditRow {
            id: 0,
            at: crate::now(),
            actor_id: actor.id.to_owned(),
            actor: actor.name.to_owned(),
            action: action.to_owned(),
            target: target.to_owned(),
            detail: detail.to_owned(),
            hash: String::new(),
        };
        row.id = sqlx::query(
            "INSERT INTO audit (at, actor_id, actor, action, target, detail, hash) \
             VALUES ($1, $2, $3, $4, $5, $6, '') RETURNING id",
        )
        .bind(row.at)
        .bind(&row.actor_id)
        .bind(&row.actor)
        .bind(&row.action)
        .bind(&row.target)
        .bind(&row.detail)
        .fetch_one(&mut *tx)
        .await?
        .try_get("id")?;
        let prev: String =
            sqlx::query("SELECT hash FROM audit WHERE id < $1 ORDER BY id DESC LIMIT 1")
                .bind(row.id)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.try_get("hash"))
                .transpose()?
                .unwrap_or_default();
        sqlx::query("UPDATE audit SET hash = $1 WHERE id = $2")
            .bind(audit_hash(&prev, &row))
            .bind(row.id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The newest `limit` audit entries.
    pub async fn audit_log(&self, limit: i64) -> Result<Vec<AuditRow>, DbError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {AUDIT_COLUMNS} FROM audit ORDER BY id DESC LIMIT $1"
        )))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(audit_row).collect::<Result<_, _>>()?)
    }

    /// Checks the whole audit chain, oldest first: every entry's hash must be the hash of its
    /// fields and of the entry before it.
    pub async fn verify_audit(&self) -> Result<AuditCheck, DbError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {AUDIT_COLUMNS} FROM audit ORDER BY id"
        )))
        .fetch_all(&self.pool)
        .await?;
        let mut prev = String::new();
        let mut entries = 0;
        for r in &rows {
            let row = audit_row(r)?;
            entries += 1;
            let expected = audit_hash(&prev, &row);
            if row.hash != expected {
                let reason = if row.hash.is_empty() {
                    "the entry has no hash".to_owned()
                } else {
                    "the entry's hash does not match its fields and the entry before it \
                     (edited, inserted, or an entry before it was deleted)"
                        .to_owned()
                };
                return Ok(AuditCheck {
                    entries,
                    head: prev,
                    broken: Some(AuditBreak { id: row.id, reason }),
                });
            }
            prev = row.hash;
        }
        Ok(AuditCheck {
            entries,
            head: prev,
            broken: None,
        })
    }

    // --- queries ---

    /// Records update checks in one transaction, keeping the newest `keep`.
    pub async fn record_queries(&self, batch: &[QueryRow], keep: i64) -> Result<(), DbError> {
        let mut tx = self.pool.begin().await?;
        for q in batch {
            sqlx::query(
                "INSERT INTO queries (at, package, channel, via, peer) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(q.at)
            .bind(&q.package)
            .bind(&q.channel)
            .bind(&q.via)
            .bind(q.peer.as_deref())
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "DELETE FROM queries WHERE id <= (SELECT COALESCE(MAX(id), 0) FROM queries) - $1",
        )
        .bind(keep)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Checks per package and channel, and the newest `limit`.
    ///
    /// The newest rows are read first: checks are only ever appended, so the
    /// counts, read second, include every row the list shows even while the
    /// writer commits between the two statements (under READ COMMITTED each
    /// statement sees its own snapshot).
    pub async fn queries(&self, limit: i64) -> Result<(Vec<QueryCount>, Vec<QueryRow>), DbError> {
        let recent = sqlx::query(
            "SELECT at, package, channel, via, peer FROM queries ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(QueryRow {
                at: r.try_get("at")?,
                package: r.try_get("package")?,
                channel: r.try_get("channel")?,
                via: r.try_get("via")?,
                peer: r.try_get("peer")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let counts = sqlx::query(
            "SELECT package, channel, COUNT(*) AS n, MAX(at) AS last_at FROM queries GROUP BY package, channel ORDER BY package, channel",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(QueryCount {
                package: r.try_get("package")?,
                channel: r.try_get("channel")?,
                count: r.try_get("n")?,
                last_at: r.try_get("last_at")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok((counts, recent))
    }
}
