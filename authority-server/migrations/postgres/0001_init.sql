-- meshara-authority schema, version 1 (PostgreSQL).
CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    revoked BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE packages (
    hash TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    size BIGINT NOT NULL,
    uploaded_at BIGINT NOT NULL,
    uploaded_by TEXT NOT NULL
);
CREATE TABLE releases (
    id BIGSERIAL PRIMARY KEY,
    package TEXT NOT NULL,
    channel TEXT NOT NULL,
    semver TEXT NOT NULL,
    sequence BIGINT NOT NULL,
    content_hash TEXT NOT NULL REFERENCES packages (hash),
    size BIGINT NOT NULL,
    body TEXT NOT NULL,
    rollout_percent BIGINT,
    expires_at BIGINT NOT NULL,
    status TEXT NOT NULL,
    publish_at BIGINT,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    published_at BIGINT,
    UNIQUE (package, channel, sequence)
);
CREATE TABLE signatures (
    release_id BIGINT NOT NULL REFERENCES releases (id),
    public_key TEXT NOT NULL,
    signature TEXT NOT NULL,
    signer TEXT NOT NULL,
    added_at BIGINT NOT NULL,
    PRIMARY KEY (release_id, public_key)
);
CREATE TABLE audit (
    id BIGSERIAL PRIMARY KEY,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE TABLE queries (
    id BIGSERIAL PRIMARY KEY,
    at BIGINT NOT NULL,
    package TEXT NOT NULL,
    channel TEXT NOT NULL,
    via TEXT NOT NULL,
    peer TEXT
);
CREATE INDEX releases_status ON releases (status);
CREATE INDEX queries_channel ON queries (package, channel);
