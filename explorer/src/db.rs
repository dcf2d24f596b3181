//! Storage through one code path for SQLite (the embedded default) and PostgreSQL: sqlx's
//! `Any` driver, `$n` placeholders, only `BIGINT` and `TEXT` columns, one migration directory
//! per dialect that differ only in how an auto-increment key is spelled (the authority
//! server's pattern).
//!
//! What is kept: one row per *listed* node (its newest verified record, what the last visit
//! found, its routing-table neighbours), its liveness sessions (up and down intervals), and one
//! row per crawl with network totals. Everything older than the retention period is pruned.

use std::collections::HashMap;

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

const SQLITE: &[(i64, &str)] = &[(1, include_str!("../migrations/sqlite/0001_init.sql"))];
const POSTGRES: &[(i64, &str)] = &[(1, include_str!("../migrations/postgres/0001_init.sql"))];

/// The database.
#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
    /// Readers. SQLite: up to four read-only connections beside the one writer (WAL lets
    /// them read while it writes), so API requests do not queue behind a crawl or each other.
    /// PostgreSQL: the same pool.
    read: AnyPool,
    backend: Backend,
}

/// A listed node as stored. List-valued columns hold JSON.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeRow {
    /// NodeId (base32).
    pub id: String,
    /// Fingerprint without dashes.
    pub fingerprint: String,
    /// The signed record, base64.
    pub record: String,
    /// Record sequence.
    pub sequence: i64,
    /// Record issued at (unix s).
    pub issued_at: i64,
    /// Record expiry (unix s).
    pub expires_at: i64,
    /// Agent string.
    pub agent: String,
    /// Version parsed from the agent.
    pub version: String,
    /// JSON array of capability names.
    pub capabilities: String,
    /// JSON array of transport names.
    pub transports: String,
    /// JSON array of `{transport, host, port}`.
    pub addresses: String,
    /// JSON array of topic names.
    pub topics: String,
    /// Whether the last visit reached it.
    pub up: bool,
    /// First time reached (unix s).
    pub first_seen: i64,
    /// Last time reached (unix s).
    pub last_seen: i64,
    /// Last visit (unix s).
    pub last_checked: i64,
    /// Status round trip, microseconds.
    pub rtt_us: Option<i64>,
    /// Share of the last 24 h it was up, parts per million.
    pub uptime_ppm: Option<i64>,
    /// JSON status object.
    pub status: Option<String>,
    /// JSON array of probes.
    pub probes: String,
    /// JSON array of neighbour NodeIds.
    pub neighbours: String,
    /// Their number.
    pub neighbour_count: i64,
    /// `crawl` or `sim`.
    pub source: String,
}

/// What applying a visit changed, for live updates and churn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// First listed.
    New,
    /// Was down, is up.
    Up,
    /// Was up, is down.
    Down,
    /// Same state as before.
    Same,
    /// Not listed, not reached: nothing stored.
    Ignored,
}

/// One liveness interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Session {
    /// Up or down.
    pub up: bool,
    /// Unix s.
    pub start: i64,
    /// Unix s; `None` while it lasts.
    pub end: Option<i64>,
}

/// One crawl.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CrawlRow {
    /// Id.
    pub id: i64,
    /// `crawl` or `sim`.
    pub source: String,
    /// Unix s.
    pub started_at: i64,
    /// Unix s, once finished.
    pub finished_at: Option<i64>,
    /// Milliseconds, once finished.
    pub duration_ms: Option<i64>,
    /// Verified records considered.
    pub discovered: i64,
    /// Nodes reached.
    pub reached: i64,
    /// Nodes not reached.
    pub failed: i64,
    /// Routing-table entries found.
    pub edges: i64,
    /// Listed nodes at the end.
    pub listed: i64,
    /// Of which up.
    pub up_count: i64,
    /// Nodes new or back up during the crawl.
    pub joined: i64,
    /// Nodes gone down during the crawl.
    pub left_count: i64,
    /// JSON object version → listed nodes up.
    pub versions: String,
}

/// A page of the node list.
#[derive(Debug, Clone, Default)]
pub struct NodeQuery {
    /// Search text: NodeId or fingerprint prefix, or part of an address or agent.
    pub q: Option<String>,
    /// `Some(true)`: up only; `Some(false)`: down only.
    pub up: Option<bool>,
    /// Has this capability.
    pub capability: Option<String>,
    /// Advertises this transport.
    pub transport: Option<String>,
    /// Runs this version.
    pub version: Option<String>,
    /// Sort column (checked against a fixed list).
    pub sort: Sort,
    /// Descending.
    pub descending: bool,
    /// Rows to skip.
    pub offset: i64,
    /// Rows to return.
    pub limit: i64,
}

/// Sortable columns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Sort {
    /// Last reached.
    #[default]
    LastSeen,
    /// First reached.
    FirstSeen,
    /// NodeId.
    Id,
    /// Round trip.
    Rtt,
    /// Version.
    Version,
    /// Uptime over 24 h.
    Uptime,
}

impl Sort {
    fn column(self) -> &'static str {
        match self {
            Sort::LastSeen => "last_seen",
            Sort::FirstSeen => "first_seen",
            Sort::Id => "id",
            Sort::Rtt => "rtt_us",
            Sort::Version => "version",
            Sort::Uptime => "uptime_ppm",
        }
    }
}

const NODE_COLUMNS: &str = "id, fingerprint, record, sequence, issued_at, expires_at, agent, \
     version, capabilities, transports, addresses, topics, up, first_seen, last_seen, \
     last_checked, rtt_us, uptime_ppm, status, probes, neighbours, neighbour_count, source";

fn node_row(r: &AnyRow) -> Result<NodeRow, sqlx::Error> {
    Ok(NodeRow {
        id: r.try_get("id")?,
        fingerprint: r.try_get("fingerprint")?,
        record: r.try_get("record")?,
        sequence: r.try_get("sequence")?,
        issued_at: r.try_get("issued_at")?,
        expires_at: r.try_get("expires_at")?,
        agent: r.try_get("agent")?,
        version: r.try_get("version")?,
        capabilities: r.try_get("capabilities")?,
        transports: r.try_get("transports")?,
        addresses: r.try_get("addresses")?,
        topics: r.try_get("topics")?,
        up: r.try_get::<i64, _>("up")? != 0,
        first_seen: r.try_get("first_seen")?,
        last_seen: r.try_get("last_seen")?,
        last_checked: r.try_get("last_checked")?,
        rtt_us: r.try_get("rtt_us")?,
        uptime_ppm: r.try_get("uptime_ppm")?,
        status: r.try_get("status")?,
        probes: r.try_get("probes")?,
        neighbours: r.try_get("neighbours")?,
        neighbour_count: r.try_get("neighbour_count")?,
        source: r.try_get("source")?,
    })
}

fn crawl_row(r: &AnyRow) -> Result<CrawlRow, sqlx::Error> {
    Ok(CrawlRow {
        id: r.try_get("id")?,
        source: r.try_get("source")?,
        started_at: r.try_get("started_at")?,
        finished_at: r.try_get("finished_at")?,
        duration_ms: r.try_get("duration_ms")?,
        discovered: r.try_get("discovered")?,
        reached: r.try_get("reached")?,
        failed: r.try_get("failed")?,
        edges: r.try_get("edges")?,
        listed: r.try_get("listed")?,
        up_count: r.try_get("up_count")?,
        joined: r.try_get("joined")?,
        left_count: r.try_get("left_count")?,
        versions: r.try_get("versions")?,
    })
}

const CRAWL_COLUMNS: &str = "id, source, started_at, finished_at, duration_ms, discovered, \
     reached, failed, edges, listed, up_count, joined, left_count, versions";

/// SQL assembled here from constants, whitelisted column names and `$n` placeholders: user
/// input only ever travels as bound parameters.
fn safe(sql: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(sql)
}

/// `LIKE` pattern for text that must match literally (`\` escapes).
fn like_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl Db {
    /// Connects to `url` (`sqlite://…` or `postgres://…`) and applies pending migrations.
    pub async fn connect(url: &str) -> Result<Db, DbError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(DbError::Unsupported(url.to_owned()));
        };
        let pool = AnyPoolOptions::new()
            // One writer at a time is what SQLite allows anyway; more only queue on its lock.
            .max_connections(if backend == Backend::Sqlite { 1 } else { 8 })
            .connect(url)
            .await?;
        let mut db = Db {
            read: pool.clone(),
            pool,
            backend,
        };
        if backend == Backend::Sqlite {
            sqlx::raw_sql("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")
                .execute(&db.pool)
                .await?;
        }
        db.migrate().await?;
        if backend == Backend::Sqlite && !url.contains(":memory:") {
            let read_url = if url.contains("mode=") {
                url.replace("mode=rwc", "mode=ro")
                    .replace("mode=rw", "mode=ro")
            } else if url.contains('?') {
                format!("{url}&mode=ro")
            } else {
                format!("{url}?mode=ro")
            };
            db.read = AnyPoolOptions::new()
                .max_connections(4)
                .connect(&read_url)
                .await?;
        }
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
                sqlx::raw_sql(sqlx::AssertSqlSafe(*sql))
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("INSERT INTO meshara_migrations (version, applied_at) VALUES ($1, $2)")
                    .bind(*version)
                    .bind(crate::crawl::unix_now() as i64)
                    .execute(&mut *tx)
                    .await?;
                Ok::<_, sqlx::Error>(())
            };
            run.await.map_err(|source| DbError::Migration {
                version: *version,
                source,
            })?;
            tx.commit().await?;
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
        self.read.close().await;
        self.pool.close().await;
    }

    /// Starts a crawl row; returns its id.
    pub async fn begin_crawl(&self, source: &str, started_at: i64) -> Result<i64, DbError> {
        let row =
            sqlx::query("INSERT INTO crawls (source, started_at) VALUES ($1, $2) RETURNING id")
                .bind(source)
                .bind(started_at)
                .fetch_one(&self.pool)
                .await?;
        Ok(row.try_get("id")?)
    }

    /// Completes a crawl row (`c.id` names it).
    pub async fn finish_crawl(&self, c: &CrawlRow) -> Result<(), DbError> {
        sqlx::query(
            "UPDATE crawls SET finished_at = $2, duration_ms = $3, discovered = $4, reached = $5, \
             failed = $6, edges = $7, listed = $8, up_count = $9, joined = $10, left_count = $11, \
             versions = $12 WHERE id = $1",
        )
        .bind(c.id)
        .bind(c.finished_at)
        .bind(c.duration_ms)
        .bind(c.discovered)
        .bind(c.reached)
        .bind(c.failed)
        .bind(c.edges)
        .bind(c.listed)
        .bind(c.up_count)
        .bind(c.joined)
        .bind(c.left_count)
        .bind(&c.versions)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Signed records (base64) of crawled nodes reached since `since`: re-visited by every
    /// crawl, so a node that left everyone's table is still seen going down.
    pub async fn known_records(&self, since: i64) -> Result<Vec<String>, DbError> {
        let rows =
            sqlx::query("SELECT record FROM nodes WHERE source = 'crawl' AND last_seen >= $1")
                .bind(since)
                .fetch_all(&self.read)
                .await?;
        rows.iter()
            .map(|r| r.try_get("record").map_err(DbError::from))
            .collect()
    }

    /// Applies one visit: `row` carries what was found (for an unreached node only `id`,
    /// `probes` and `last_checked` are used). Opens and closes liveness sessions.
    pub async fn apply_visit(&self, row: &NodeRow) -> Result<Change, DbError> {
        let mut tx = self.pool.begin().await?;
        let current = sqlx::query("SELECT up FROM nodes WHERE id = $1")
            .bind(&row.id)
            .fetch_optional(&mut *tx)
            .await?;
        let was_up = match &current {
            Some(r) => Some(r.try_get::<i64, _>("up")? != 0),
            None => None,
        };
        let at = row.last_checked;
        let change = match (was_up, row.up) {
            (None, false) => return Ok(Change::Ignored),
            (None, true) => Change::New,
            (Some(false), true) => Change::Up,
            (Some(true), false) => Change::Down,
            (Some(_), _) => Change::Same,
        };
        if row.up {
            sqlx::query(safe(format!(
                "INSERT INTO nodes ({NODE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, \
                 $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23) \
                 ON CONFLICT (id) DO UPDATE SET fingerprint = $2, record = $3, sequence = $4, \
                 issued_at = $5, expires_at = $6, agent = $7, version = $8, capabilities = $9, \
                 transports = $10, addresses = $11, topics = $12, up = $13, last_seen = $15, \
                 last_checked = $16, rtt_us = $17, status = $19, probes = $20, neighbours = $21, \
                 neighbour_count = $22, source = $23"
            )))
            .bind(&row.id)
            .bind(&row.fingerprint)
            .bind(&row.record)
            .bind(row.sequence)
            .bind(row.issued_at)
            .bind(row.expires_at)
            .bind(&row.agent)
            .bind(&row.version)
            .bind(&row.capabilities)
            .bind(&row.transports)
            .bind(&row.addresses)
            .bind(&row.topics)
            .bind(1_i64)
            .bind(at)
            .bind(at)
            .bind(at)
            .bind(row.rtt_us)
            .bind(row.uptime_ppm)
            .bind(&row.status)
            .bind(&row.probes)
            .bind(&row.neighbours)
            .bind(row.neighbour_count)
            .bind(&row.source)
            .execute(&mut *tx)
            .await?;
        } else {
            sqlx::query("UPDATE nodes SET up = 0, last_checked = $2, probes = $3 WHERE id = $1")
                .bind(&row.id)
                .bind(at)
                .bind(&row.probes)
                .execute(&mut *tx)
                .await?;
        }
        if change != Change::Same {
            sqlx::query(
                "UPDATE sessions SET ended_at = $2 WHERE node_id = $1 AND ended_at IS NULL",
            )
            .bind(&row.id)
            .bind(at)
            .execute(&mut *tx)
            .await?;
            sqlx::query("INSERT INTO sessions (node_id, up, started_at) VALUES ($1, $2, $3)")
                .bind(&row.id)
                .bind(i64::from(row.up))
                .bind(at)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(change)
    }

    /// Forgets a node and its history (it asked not to be listed).
    pub async fn delete_node(&self, id: &str) -> Result<bool, DbError> {
        let mut tx = self.pool.begin().await?;
        let gone = sqlx::query("DELETE FROM nodes WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM sessions WHERE node_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(gone > 0)
    }

    /// Recomputes every node's share of the last 24 hours spent up.
    pub async fn update_uptimes(&self, now: i64) -> Result<(), DbError> {
        let from = now - 86_400;
        let rows = sqlx::query(
            "SELECT node_id, up, started_at, ended_at FROM sessions \
             WHERE ended_at IS NULL OR ended_at > $1",
        )
        .bind(from)
        .fetch_all(&self.pool)
        .await?;
        let mut per: HashMap<String, (i64, i64)> = HashMap::new();
        for r in &rows {
            let id: String = r.try_get("node_id")?;
            let up: i64 = r.try_get("up")?;
            let start: i64 = r.try_get::<i64, _>("started_at")?.max(from);
            let end: i64 = r.try_get::<Option<i64>, _>("ended_at")?.unwrap_or(now);
            let span = (end - start).max(0);
            let e = per.entry(id).or_default();
            e.1 += span;
            if up != 0 {
                e.0 += span;
            }
        }
        let mut tx = self.pool.begin().await?;
        for (id, (up, total)) in per {
            let ppm = if total == 0 {
                1_000_000
            } else {
                up * 1_000_000 / total
            };
            sqlx::query("UPDATE nodes SET uptime_ppm = $2 WHERE id = $1")
                .bind(id)
                .bind(ppm)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A page of listed nodes and the number matching.
    pub async fn nodes(&self, q: &NodeQuery) -> Result<(i64, Vec<NodeRow>), DbError> {
        let mut clauses: Vec<String> = Vec::new();
        let mut binds: Vec<String> = Vec::new();
        let mut bind = |value: String| {
            binds.push(value);
            format!("${}", binds.len())
        };
        if let Some(text) = q.q.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
            let lower = text.to_lowercase();
            let prefix = bind(format!("{}%", like_escape(&lower)));
            let fingerprint = bind(format!("{}%", like_escape(&lower.replace('-', ""))));
            let inside = bind(format!("%{}%", like_escape(&lower)));
            clauses.push(format!(
                "(id LIKE {prefix} ESCAPE '\\' OR fingerprint LIKE {fingerprint} ESCAPE '\\' \
                 OR LOWER(addresses) LIKE {inside} ESCAPE '\\' OR LOWER(agent) LIKE {inside} ESCAPE '\\')"
            ));
        }
        if let Some(up) = q.up {
            clauses.push(format!("up = {}", i64::from(up)));
        }
        if let Some(c) = &q.capability {
            let p = bind(format!("%\"{}\"%", like_escape(c)));
            clauses.push(format!("capabilities LIKE {p} ESCAPE '\\'"));
        }
        if let Some(t) = &q.transport {
            let p = bind(format!("%\"{}\"%", like_escape(t)));
            clauses.push(format!("transports LIKE {p} ESCAPE '\\'"));
        }
        if let Some(v) = &q.version {
            let p = bind(v.clone());
            clauses.push(format!("version = {p}"));
        }
        let filter = if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        };
        let count_sql = format!("SELECT COUNT(*) AS n FROM nodes {filter}");
        let mut count = sqlx::query(safe(count_sql));
        for b in &binds {
            count = count.bind(b);
        }
        let total: i64 = count.fetch_one(&self.read).await?.try_get("n")?;
        let direction = if q.descending { "DESC" } else { "ASC" };
        // NULLs (no RTT or uptime yet) sort last either way, spelled the same in both dialects.
        let column = q.sort.column();
        let page_sql = format!(
            "SELECT {NODE_COLUMNS} FROM nodes {filter} ORDER BY CASE WHEN {column} IS NULL THEN 1 ELSE 0 END, \
             {column} {direction}, id ASC LIMIT {} OFFSET {}",
            q.limit.max(0),
            q.offset.max(0)
        );
        let mut page = sqlx::query(safe(page_sql));
        for b in &binds {
            page = page.bind(b);
        }
        let rows = page.fetch_all(&self.read).await?;
        let nodes = rows.iter().map(node_row).collect::<Result<_, _>>()?;
        Ok((total, nodes))
    }

    /// One listed node.
    pub async fn node(&self, id: &str) -> Result<Option<NodeRow>, DbError> {
        let row = sqlx::query(safe(format!(
            "SELECT {NODE_COLUMNS} FROM nodes WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.read)
        .await?;
        Ok(row.as_ref().map(node_row).transpose()?)
    }

    /// Every listed node (for the graph, the overview and snapshots).
    pub async fn all_nodes(&self) -> Result<Vec<NodeRow>, DbError> {
        let rows = sqlx::query(safe(format!(
            "SELECT {NODE_COLUMNS} FROM nodes ORDER BY id"
        )))
        .fetch_all(&self.read)
        .await?;
        Ok(rows.iter().map(node_row).collect::<Result<_, _>>()?)
    }

    /// `(id, fingerprint, up)` of the listed nodes among `ids`.
    pub async fn brief(&self, ids: &[String]) -> Result<Vec<(String, String, bool)>, DbError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(200) {
            let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT id, fingerprint, up FROM nodes WHERE id IN ({}) ORDER BY id",
                marks.join(", ")
            );
            let mut q = sqlx::query(safe(sql));
            for id in chunk {
                q = q.bind(id);
            }
            for r in q.fetch_all(&self.read).await? {
                out.push((
                    r.try_get("id")?,
                    r.try_get("fingerprint")?,
                    r.try_get::<i64, _>("up")? != 0,
                ));
            }
        }
        Ok(out)
    }

    /// A node's sessions, newest first.
    pub async fn sessions(&self, id: &str, limit: i64) -> Result<Vec<Session>, DbError> {
        let rows = sqlx::query(
            "SELECT up, started_at, ended_at FROM sessions WHERE node_id = $1 \
             ORDER BY started_at DESC, id DESC LIMIT $2",
        )
        .bind(id)
        .bind(limit)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Session {
                    up: r.try_get::<i64, _>("up")? != 0,
                    start: r.try_get("started_at")?,
                    end: r.try_get("ended_at")?,
                })
            })
            .collect()
    }

    /// Counts of listed nodes: (all, up).
    pub async fn counts(&self) -> Result<(i64, i64), DbError> {
        let r = sqlx::query(
            // PostgreSQL sums BIGINTs as NUMERIC: cast back for one decoder.
            "SELECT COUNT(*) AS n, CAST(COALESCE(SUM(up), 0) AS BIGINT) AS up FROM nodes",
        )
        .fetch_one(&self.read)
        .await?;
        Ok((r.try_get("n")?, r.try_get("up")?))
    }

    /// Finished crawls started since `since`, oldest first (at most `limit`).
    pub async fn crawls(&self, since: i64, limit: i64) -> Result<Vec<CrawlRow>, DbError> {
        let rows = sqlx::query(safe(format!(
            "SELECT {CRAWL_COLUMNS} FROM crawls WHERE started_at >= $1 AND finished_at IS NOT NULL \
             ORDER BY started_at DESC, id DESC LIMIT $2"
        )))
        .bind(since)
        .bind(limit)
        .fetch_all(&self.read)
        .await?;
        let mut out: Vec<CrawlRow> = rows.iter().map(crawl_row).collect::<Result<_, _>>()?;
        out.reverse();
        Ok(out)
    }

    /// The newest finished crawl.
    pub async fn last_crawl(&self) -> Result<Option<CrawlRow>, DbError> {
        let row = sqlx::query(safe(format!(
            "SELECT {CRAWL_COLUMNS} FROM crawls WHERE finished_at IS NOT NULL \
             ORDER BY started_at DESC, id DESC LIMIT 1"
        )))
        .fetch_optional(&self.read)
        .await?;
        Ok(row.as_ref().map(crawl_row).transpose()?)
    }

    /// Deletes crawls, ended sessions and nodes not reached since `cutoff`; returns the nodes
    /// forgotten.
    pub async fn prune(&self, cutoff: i64) -> Result<u64, DbError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM crawls WHERE started_at < $1")
            .bind(cutoff)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM sessions WHERE ended_at IS NOT NULL AND ended_at < $1")
            .bind(cutoff)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "DELETE FROM sessions WHERE node_id IN (SELECT id FROM nodes WHERE last_seen < $1)",
        )
        .bind(cutoff)
        .execute(&mut *tx)
        .await?;
        let gone = sqlx::query("DELETE FROM nodes WHERE last_seen < $1")
            .bind(cutoff)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(gone)
    }

    /// Records a verified release the first time it is seen.
    pub async fn record_release(
        &self,
        package: &str,
        channel: &str,
        version: &str,
        sequence: i64,
        seen_at: i64,
    ) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO releases (package, channel, version, sequence, seen_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (package, channel, sequence) DO NOTHING",
        )
        .bind(package)
        .bind(channel)
        .bind(version)
        .bind(sequence)
        .bind(seen_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Releases seen, oldest first: `(package, channel, version, sequence, seen_at)`.
    pub async fn releases(&self) -> Result<Vec<(String, String, String, i64, i64)>, DbError> {
        let rows = sqlx::query(
            "SELECT package, channel, version, sequence, seen_at FROM releases \
             ORDER BY seen_at, package, channel, sequence",
        )
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("package")?,
                    r.try_get("channel")?,
                    r.try_get("version")?,
                    r.try_get("sequence")?,
                    r.try_get("seen_at")?,
                ))
            })
            .collect()
    }

    /// Replaces every simulated node with `rows` (an imported simulator topology).
    pub async fn replace_simulated(&self, rows: &[NodeRow]) -> Result<(), DbError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "DELETE FROM sessions WHERE node_id IN (SELECT id FROM nodes WHERE source = 'sim')",
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM nodes WHERE source = 'sim'")
            .execute(&mut *tx)
            .await?;
        for row in rows {
            sqlx::query(safe(format!(
                "INSERT INTO nodes ({NODE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, \
                 $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23)"
            )))
            .bind(&row.id)
            .bind(&row.fingerprint)
            .bind(&row.record)
            .bind(row.sequence)
            .bind(row.issued_at)
            .bind(row.expires_at)
            .bind(&row.agent)
            .bind(&row.version)
            .bind(&row.capabilities)
            .bind(&row.transports)
            .bind(&row.addresses)
            .bind(&row.topics)
            .bind(i64::from(row.up))
            .bind(row.first_seen)
            .bind(row.last_seen)
            .bind(row.last_checked)
            .bind(row.rtt_us)
            .bind(row.uptime_ppm)
            .bind(&row.status)
            .bind(&row.probes)
            .bind(&row.neighbours)
            .bind(row.neighbour_count)
            .bind(&row.source)
            .execute(&mut *tx)
            .await?;
            sqlx::query("INSERT INTO sessions (node_id, up, started_at) VALUES ($1, $2, $3)")
                .bind(&row.id)
                .bind(i64::from(row.up))
                .bind(row.first_seen)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
