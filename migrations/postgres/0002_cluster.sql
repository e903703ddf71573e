-- Cluster mode: several herald processes (nodes) on this database are one relay.

-- The newest event id handed out, one row. A commit updates it in the same
-- statement that inserts its events; the row lock is held until commit, so
-- commits of every node are serialized and commit order is id order.
CREATE TABLE id_clock (
    singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    last_id TEXT COLLATE "C" NOT NULL
);
INSERT INTO id_clock (last_id)
SELECT COALESCE(MAX(id), '00000000000000000000000000') FROM events;

-- Live nodes. `last_seen_ms` is written on the database's clock, so a node
-- whose own clock is off is still judged alive or dead correctly.
CREATE TABLE nodes (
    id TEXT COLLATE "C" PRIMARY KEY,
    name TEXT NOT NULL,
    started_ms BIGINT NOT NULL,
    last_seen_ms BIGINT NOT NULL,
    published BIGINT NOT NULL DEFAULT 0,
    delivered BIGINT NOT NULL DEFAULT 0,
    -- Events per second over the last few seconds, as of the heartbeat.
    published_rate DOUBLE PRECISION NOT NULL DEFAULT 0,
    delivered_rate DOUBLE PRECISION NOT NULL DEFAULT 0
);

-- Open streams of every node: the cluster-wide connection slots.
CREATE TABLE connections (
    id TEXT COLLATE "C" PRIMARY KEY,
    node_id TEXT COLLATE "C" NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
    map_id TEXT COLLATE "C",
    key_id TEXT COLLATE "C",
    remote_addr TEXT NOT NULL,
    connected_ms BIGINT NOT NULL,
    filter TEXT NOT NULL,
    events_sent BIGINT NOT NULL DEFAULT 0,
    close_requested BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX connections_map_id ON connections (map_id);
CREATE INDEX connections_key_id ON connections (key_id);
CREATE INDEX connections_node_id ON connections (node_id);

-- Bumped by every change of maps, keys or limits, whoever made it (a node,
-- or `herald map create`): nodes compare it to reload their directory copy.
CREATE TABLE directory_version (
    singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    version BIGINT NOT NULL
);
INSERT INTO directory_version (version) VALUES (0);

CREATE FUNCTION herald_directory_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE directory_version SET version = version + 1;
    -- Directory changes are rare: a NOTIFY in their transaction costs nothing.
    PERFORM pg_notify('herald', 'd');
    RETURN NULL;
END
$$;

CREATE TRIGGER maps_changed
    AFTER INSERT OR DELETE OR UPDATE OF slug, name, max_connections, max_connections_per_key
    ON maps FOR EACH STATEMENT EXECUTE FUNCTION herald_directory_changed();
CREATE TRIGGER api_keys_changed
    AFTER INSERT OR DELETE OR UPDATE ON api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION herald_directory_changed();

-- Admits a stream against its map's and key's limits counted on every live
-- node, or says which refused it: 'ok', 'map', 'key' or 'gone' (the map or
-- key no longer exists). The map row's lock serializes admissions to one
-- map, and each statement below reads after the lock was granted (a fresh
-- snapshot per statement), so concurrent connects to several nodes never
-- over-admit. `ignored` are this node's streams already closed whose rows
-- are still being deleted.
CREATE FUNCTION herald_admit(
    conn_id TEXT, node TEXT, map TEXT, key TEXT, remote TEXT, connected BIGINT,
    filter_text TEXT, default_per_map BIGINT, default_per_key BIGINT,
    node_timeout_ms BIGINT, ignored TEXT[]
) RETURNS TEXT LANGUAGE plpgsql AS $$
DECLARE
    per_map BIGINT;
    per_key BIGINT;
    live_since BIGINT;
    open_streams BIGINT;
BEGIN
    IF map IS NOT NULL THEN
        SELECT COALESCE(max_connections, default_per_map),
               COALESCE(max_connections_per_key, default_per_key)
          INTO per_map, per_key
          FROM maps WHERE id = map FOR NO KEY UPDATE;
        IF NOT FOUND THEN
            RETURN 'gone';
        END IF;
        IF key IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM api_keys WHERE id = key AND map_id = map
        ) THEN
            RETURN 'gone';
        END IF;
        live_since := (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT - node_timeout_ms;
        SELECT count(*) INTO open_streams
          FROM connections c JOIN nodes n ON n.id = c.node_id
         WHERE c.map_id = map AND n.last_seen_ms > live_since
           AND c.id <> ALL (ignored);
        IF open_streams >= per_map THEN
            RETURN 'map';
        END IF;
        IF key IS NOT NULL THEN
            SELECT count(*) INTO open_streams
              FROM connections c JOIN nodes n ON n.id = c.node_id
             WHERE c.key_id = key AND n.last_seen_ms > live_since
               AND c.id <> ALL (ignored);
            IF open_streams >= per_key THEN
                RETURN 'key';
            END IF;
        END IF;
    END IF;
    INSERT INTO connections (id, node_id, map_id, key_id, remote_addr, connected_ms, filter)
    VALUES (conn_id, node, map, key, remote, connected, filter_text);
    RETURN 'ok';
END
$$;

-- Single-use SSE tokens, so a browser may mint a token on one node and open
-- its stream on another. Only hashes are stored; a revoked key's tokens go
-- with it.
CREATE TABLE sse_tokens (
    token_hash TEXT PRIMARY KEY,
    map_id TEXT COLLATE "C" NOT NULL REFERENCES maps (id) ON DELETE CASCADE,
    key_id TEXT COLLATE "C" REFERENCES api_keys (id) ON DELETE CASCADE,
    expires_ms BIGINT NOT NULL
);
CREATE INDEX sse_tokens_key_id ON sse_tokens (key_id);
