-- Admission in constant time: open streams counted per map and per key on
-- each node, kept by the connection rows' own inserts and deletes, instead
-- of counting a map's rows at every connect (O(streams) per connect, so
-- O(n^2) for a crowd).

-- `owner_id` is a map's id or a key's (ULIDs: never both). Rows are locked
-- in (owner_id, node_id) order everywhere, so counting never deadlocks.
CREATE TABLE slot_counts (
    owner_id TEXT COLLATE "C" NOT NULL,
    node_id TEXT COLLATE "C" NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
    open BIGINT NOT NULL,
    PRIMARY KEY (owner_id, node_id)
);
CREATE INDEX slot_counts_node_id ON slot_counts (node_id);

INSERT INTO slot_counts (owner_id, node_id, open)
SELECT owner_id, node_id, count(*) FROM (
    SELECT map_id AS owner_id, node_id FROM connections WHERE map_id IS NOT NULL
    UNION ALL
    SELECT key_id, node_id FROM connections WHERE key_id IS NOT NULL
) AS owners GROUP BY owner_id, node_id;

-- Counts the connection rows a statement inserted or deleted (`changed`).
CREATE FUNCTION herald_count_slots() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO slot_counts (owner_id, node_id, open)
        SELECT owner_id, node_id, count(*) FROM (
            SELECT map_id AS owner_id, node_id FROM changed WHERE map_id IS NOT NULL
            UNION ALL
            SELECT key_id, node_id FROM changed WHERE key_id IS NOT NULL
        ) AS owners GROUP BY owner_id, node_id ORDER BY owner_id, node_id
        ON CONFLICT (owner_id, node_id) DO UPDATE SET open = slot_counts.open + excluded.open;
    ELSE
        PERFORM 1 FROM slot_counts s
         WHERE (s.owner_id, s.node_id) IN (
            SELECT map_id, node_id FROM changed WHERE map_id IS NOT NULL
            UNION ALL
            SELECT key_id, node_id FROM changed WHERE key_id IS NOT NULL)
         ORDER BY s.owner_id, s.node_id FOR UPDATE;
        UPDATE slot_counts s SET open = s.open - gone.n
          FROM (
            SELECT owner_id, node_id, count(*) AS n FROM (
                SELECT map_id AS owner_id, node_id FROM changed WHERE map_id IS NOT NULL
                UNION ALL
                SELECT key_id, node_id FROM changed WHERE key_id IS NOT NULL
            ) AS owners GROUP BY owner_id, node_id
          ) AS gone
         WHERE s.owner_id = gone.owner_id AND s.node_id = gone.node_id;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER connections_opened AFTER INSERT ON connections
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION herald_count_slots();
CREATE TRIGGER connections_closed AFTER DELETE ON connections
    REFERENCING OLD TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION herald_count_slots();

-- Streams open for a map or key on nodes seen since `live_since`.
CREATE FUNCTION herald_open_slots(owner TEXT, live_since BIGINT) RETURNS BIGINT
LANGUAGE sql STABLE AS $$
    SELECT COALESCE(sum(s.open), 0)::BIGINT
      FROM slot_counts s JOIN nodes n ON n.id = s.node_id
     WHERE s.owner_id = owner AND n.last_seen_ms > live_since
$$;

-- As in 0002, with the counts read from `slot_counts` (a row per node).
CREATE OR REPLACE FUNCTION herald_admit(
    conn_id TEXT, node TEXT, map TEXT, key TEXT, remote TEXT, connected BIGINT,
    filter_text TEXT, default_per_map BIGINT, default_per_key BIGINT,
    node_timeout_ms BIGINT, ignored TEXT[]
) RETURNS TEXT LANGUAGE plpgsql AS $$
DECLARE
    per_map BIGINT;
    per_key BIGINT;
    live_since BIGINT;
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
        IF herald_open_slots(map, live_since)
           - (SELECT count(*) FROM connections WHERE id = ANY (ignored) AND map_id = map)
           >= per_map THEN
            RETURN 'map';
        END IF;
        IF key IS NOT NULL AND herald_open_slots(key, live_since)
           - (SELECT count(*) FROM connections WHERE id = ANY (ignored) AND key_id = key)
           >= per_key THEN
            RETURN 'key';
        END IF;
    END IF;
    INSERT INTO connections (id, node_id, map_id, key_id, remote_addr, connected_ms, filter)
    VALUES (conn_id, node, map, key, remote, connected, filter_text);
    RETURN 'ok';
END
$$;
