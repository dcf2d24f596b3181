-- meshara-explorer schema, version 1 (PostgreSQL). Only BIGINT and TEXT columns, so one code path
-- serves SQLite and PostgreSQL through sqlx's Any driver (see src/db.rs).
CREATE TABLE nodes (
    id TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    record TEXT NOT NULL,
    sequence BIGINT NOT NULL,
    issued_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    agent TEXT NOT NULL,
    version TEXT NOT NULL,
    capabilities TEXT NOT NULL,
    transports TEXT NOT NULL,
    addresses TEXT NOT NULL,
    topics TEXT NOT NULL,
    up BIGINT NOT NULL,
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    last_checked BIGINT NOT NULL,
    rtt_us BIGINT,
    uptime_ppm BIGINT,
    status TEXT,
    probes TEXT NOT NULL,
    neighbours TEXT NOT NULL,
    neighbour_count BIGINT NOT NULL,
    source TEXT NOT NULL
);
CREATE INDEX nodes_fingerprint ON nodes (fingerprint);
CREATE INDEX nodes_last_seen ON nodes (last_seen);
CREATE TABLE sessions (
    id BIGSERIAL PRIMARY KEY,
    node_id TEXT NOT NULL,
    up BIGINT NOT NULL,
    started_at BIGINT NOT NULL,
    ended_at BIGINT
);
CREATE INDEX sessions_node ON sessions (node_id, started_at);
CREATE TABLE crawls (
    id BIGSERIAL PRIMARY KEY,
    source TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    finished_at BIGINT,
    duration_ms BIGINT,
    discovered BIGINT NOT NULL DEFAULT 0,
    reached BIGINT NOT NULL DEFAULT 0,
    failed BIGINT NOT NULL DEFAULT 0,
    edges BIGINT NOT NULL DEFAULT 0,
    listed BIGINT NOT NULL DEFAULT 0,
    up_count BIGINT NOT NULL DEFAULT 0,
    joined BIGINT NOT NULL DEFAULT 0,
    left_count BIGINT NOT NULL DEFAULT 0,
    versions TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX crawls_started ON crawls (started_at);
CREATE TABLE releases (
    package TEXT NOT NULL,
    channel TEXT NOT NULL,
    version TEXT NOT NULL,
    sequence BIGINT NOT NULL,
    seen_at BIGINT NOT NULL,
    PRIMARY KEY (package, channel, sequence)
);
