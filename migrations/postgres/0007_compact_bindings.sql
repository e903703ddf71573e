-- Bindings keep a publication's ids as the first id and the count
-- (`ID*COUNT`, a lone id for one event): they are consecutive, and a batch
-- of 100 listed in full was 2.7 KB, compressed at every keyed commit.
-- Nodes of an older build read only the list, so the commit function
-- answers the bindings it finds as lists: on a node not yet upgraded a
-- retry reads the ids an upgraded node bound (rolling upgrades). The
-- function also renews an expired binding even when retention deletes it
-- meanwhile.

-- `ids` with every `ID*COUNT` item written out as COUNT consecutive ids
-- (same 14-character prefix, increasing 60-bit tail).
CREATE FUNCTION herald_expand_ids(ids TEXT) RETURNS TEXT
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE
    digits CONSTANT TEXT := '0123456789ABCDEFGHJKMNPQRSTVWXYZ';
    item TEXT;
    first TEXT;
    tail BIGINT;
    value BIGINT;
    encoded TEXT;
    listed TEXT[] := '{}';
    i INT;
    n INT;
BEGIN
    IF strpos(ids, '*') = 0 THEN
        RETURN ids;
    END IF;
    FOREACH item IN ARRAY string_to_array(ids, ',') LOOP
        IF strpos(item, '*') = 0 THEN
            listed := listed || item;
            CONTINUE;
        END IF;
        first := split_part(item, '*', 1);
        tail := 0;
        FOR i IN 15..26 LOOP
            tail := tail * 32 + strpos(digits, substr(first, i, 1)) - 1;
        END LOOP;
        FOR n IN 0..split_part(item, '*', 2)::INT - 1 LOOP
            value := tail + n;
            encoded := substr(first, 1, 14);
            FOR i IN 1..12 LOOP
                encoded := encoded || substr(digits, ((value >> (5 * (12 - i))) & 31)::INT + 1, 1);
            END LOOP;
            listed := listed || encoded;
        END LOOP;
    END LOOP;
    RETURN array_to_string(listed, ',');
END
$$;

CREATE OR REPLACE FUNCTION herald_commit_keyed(
    event_maps TEXT[], event_ids TEXT[], event_types TEXT[], event_sources TEXT[],
    event_payloads TEXT[], event_keys TEXT[], key_maps TEXT[], key_names TEXT[],
    key_hashes TEXT[], key_ids TEXT[], ttl_ms BIGINT
) RETURNS TABLE (
    previous_id TEXT, moved_prefix TEXT,
    bound_map TEXT, bound_key TEXT, bound_hash TEXT, bound_ids TEXT
) LANGUAGE plpgsql AS $$
-- The output columns are named like the clock's: names here are columns.
#variable_conflict use_column
DECLARE
    last TEXT;
    through TEXT;
    moved TEXT;
    now_ms BIGINT;
    found_maps TEXT[];
    found_keys TEXT[];
    live_maps TEXT[];
    live_keys TEXT[];
    live_hashes TEXT[];
    live_ids TEXT[];
BEGIN
    UPDATE id_clock
       SET previous_id = last_id,
           last_id = CASE WHEN event_ids[1] COLLATE "C" > last_id THEN event_ids[cardinality(event_ids)]
                     ELSE herald_prefix_after(last_id) || substr(event_ids[cardinality(event_ids)], 15) END
    RETURNING previous_id, last_id INTO last, through;
    IF through <> event_ids[cardinality(event_ids)] THEN
        moved := substr(through, 1, 14);
        event_ids := ARRAY(
            SELECT moved || substr(u.id, 15)
              FROM unnest(event_ids) WITH ORDINALITY AS u (id, n) ORDER BY u.n);
        key_ids := ARRAY(
            SELECT regexp_replace(u.ids, '[0-9A-Z]{14}([0-9A-Z]{12})', moved || '\1', 'g')
              FROM unnest(key_ids) WITH ORDINALITY AS u (ids, n) ORDER BY u.n);
    END IF;
    now_ms := (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT;
    -- One primary-key lookup per key: `LIMIT 1` keeps the planner from
    -- turning the lookups into a join sized from a guess (a full scan).
    SELECT array_agg(k.map_id), array_agg(k.key),
           array_agg(k.map_id) FILTER (WHERE k.live), array_agg(k.key) FILTER (WHERE k.live),
           array_agg(k.body_hash) FILTER (WHERE k.live), array_agg(k.ids) FILTER (WHERE k.live)
      INTO found_maps, found_keys, live_maps, live_keys, live_hashes, live_ids
      FROM unnest(key_maps, key_names) AS u (map_id, key)
     CROSS JOIN LATERAL (
        SELECT i.map_id, i.key, i.body_hash, i.ids, i.created_ms > now_ms - ttl_ms AS live
          FROM idempotency_keys i
         WHERE i.map_id = u.map_id AND i.key = u.key LIMIT 1) AS k;
    INSERT INTO events (map_id, id, type, source, payload)
    SELECT e.map_id, e.id, e.type, e.source, e.payload
      FROM unnest(event_maps, event_ids, event_types, event_sources, event_payloads, event_keys)
           AS e (map_id, id, type, source, payload, key)
     WHERE NOT EXISTS (
        SELECT 1 FROM unnest(live_maps, live_keys) AS l (map_id, key)
         WHERE l.map_id = e.map_id AND l.key = e.key);
    -- Plain inserts for new keys (no binding can appear meanwhile: every
    -- one is written under the clock's lock), and expired ones renewed in
    -- place: cheaper than a speculative insertion per key.
    INSERT INTO idempotency_keys (map_id, key, body_hash, ids, created_ms)
    SELECT u.map_id, u.key, u.body_hash, u.ids, now_ms
      FROM unnest(key_maps, key_names, key_hashes, key_ids) AS u (map_id, key, body_hash, ids)
     WHERE NOT EXISTS (
        SELECT 1 FROM unnest(found_maps, found_keys) AS f (map_id, key)
         WHERE f.map_id = u.map_id AND f.key = u.key);
    -- Expired bindings found are renewed; one that retention deleted since
    -- the lookup is bound again (an UPDATE would find nothing, and a
    -- retry would create the events a second time).
    IF cardinality(found_keys) > COALESCE(cardinality(live_keys), 0) THEN
        INSERT INTO idempotency_keys (map_id, key, body_hash, ids, created_ms)
        SELECT u.map_id, u.key, u.body_hash, u.ids, now_ms
          FROM unnest(key_maps, key_names, key_hashes, key_ids) AS u (map_id, key, body_hash, ids)
         WHERE EXISTS (
            SELECT 1 FROM unnest(found_maps, found_keys) AS f (map_id, key)
             WHERE f.map_id = u.map_id AND f.key = u.key)
           AND NOT EXISTS (
            SELECT 1 FROM unnest(live_maps, live_keys) AS l (map_id, key)
             WHERE l.map_id = u.map_id AND l.key = u.key)
        ON CONFLICT (map_id, key) DO UPDATE
           SET body_hash = EXCLUDED.body_hash, ids = EXCLUDED.ids,
               created_ms = EXCLUDED.created_ms;
    END IF;
    RETURN QUERY
    SELECT last, moved, l.map_id, l.key, l.body_hash, herald_expand_ids(l.ids)
      FROM (SELECT 1) AS one
      LEFT JOIN unnest(live_maps, live_keys, live_hashes, live_ids) AS l (map_id, key, body_hash, ids)
        ON TRUE;
END
$$;
