-- meshara-authority schema, version 3 (PostgreSQL): audit entries name the actor's token id
-- and are hash-chained (each entry's BLAKE3 hash covers the previous entry's hash). Entries
-- written before this migration are sealed into the chain when it is applied.
ALTER TABLE audit ADD COLUMN actor_id TEXT NOT NULL DEFAULT '';
ALTER TABLE audit ADD COLUMN hash TEXT NOT NULL DEFAULT '';
