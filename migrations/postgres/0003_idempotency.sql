-- Idempotency-Key: what a first successful publish created, so a retry with
-- the same key (same map, same body) answers the same ids and creates
-- nothing. Written in the committing statement, under the id clock's lock.
CREATE TABLE idempotency_keys (
    map_id TEXT COLLATE "C" NOT NULL,
    key TEXT COLLATE "C" NOT NULL,
    -- SHA-256 of the request body, hex.
    body_hash TEXT NOT NULL,
    -- The ids answered, comma-separated.
    ids TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (map_id, key)
);
-- Expiry deletes by age. Keys are bound in time order, so a BRIN index
-- serves that at a fraction of a B-tree's cost on every publish.
CREATE INDEX idempotency_keys_created_ms ON idempotency_keys USING brin (created_ms);
