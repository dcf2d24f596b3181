-- meshara-authority schema, version 2 (PostgreSQL): root rotations drafted and signed on the server.
CREATE TABLE roots (
    sequence BIGINT PRIMARY KEY,
    body TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    published_at BIGINT
);
CREATE TABLE root_signatures (
    sequence BIGINT NOT NULL REFERENCES roots (sequence) ON DELETE CASCADE,
    public_key TEXT NOT NULL,
    signature TEXT NOT NULL,
    signer TEXT NOT NULL,
    added_at BIGINT NOT NULL,
    PRIMARY KEY (sequence, public_key)
);
