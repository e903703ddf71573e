-- Ids are ULID text; COLLATE "C" makes text order equal id order.
CREATE TABLE maps (
    id TEXT COLLATE "C" PRIMARY KEY,
    slug TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    max_connections BIGINT,
    max_connections_per_key BIGINT,
    -- Newest event id removed by retention: a client asking for an older id has a gap.
    pruned_through TEXT COLLATE "C" NOT NULL DEFAULT '00000000000000000000000000'
);

CREATE TABLE api_keys (
    id TEXT COLLATE "C" PRIMARY KEY,
    map_id TEXT COLLATE "C" NOT NULL REFERENCES maps (id) ON DELETE CASCADE,
    key_hash TEXT NOT NULL UNIQUE,
    created_ms BIGINT NOT NULL
);

CREATE INDEX api_keys_map_id ON api_keys (map_id);

-- Backfill reads (map_id, id > x) in id order: the primary key serves it.
CREATE TABLE events (
    map_id TEXT COLLATE "C" NOT NULL,
    id TEXT COLLATE "C" NOT NULL,
    type TEXT NOT NULL,
    source TEXT NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (map_id, id)
);

-- The admin firehose reads every map in id order.
CREATE INDEX events_id ON events (id);
