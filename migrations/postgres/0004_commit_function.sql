-- One round trip per commit, whatever the other nodes did meanwhile.
--
-- A node proposes ids after the newest id it knows (consecutive within a
-- commit: one 70-bit prefix, an increasing 60-bit tail). The statement that
-- moves the clock takes its row lock (held until commit) and, when the
-- proposal is not after the clock (another node committed since), gives the
-- ids the prefix that follows the clock's, keeping their tails: they still
-- follow the clock, in order, with no second round trip. It keeps the
-- clock's previous value beside it, for the committing node to learn.
ALTER TABLE id_clock ADD COLUMN previous_id TEXT COLLATE "C" NOT NULL DEFAULT '';

-- The 14-character prefix (timestamp and the next 20 bits of a ULID) right
-- after `last`'s: any id with it sorts after `last`.
CREATE FUNCTION herald_prefix_after(last TEXT) RETURNS TEXT
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE
    digits CONSTANT TEXT := '0123456789ABCDEFGHJKMNPQRSTVWXYZ';
    value BIGINT := 0;
    encoded TEXT := '';
    width INT := 4;
    i INT;
BEGIN
    FOR i IN 11..14 LOOP
        value := value * 32 + strpos(digits, substr(last, i, 1)) - 1;
    END LOOP;
    IF value < 1048575 THEN
        encoded := substr(last, 1, 10);
    ELSE
        -- The 20 bits are full: the next millisecond, from zero.
        value := 0;
        FOR i IN 1..10 LOOP
            value := value * 32 + strpos(digits, substr(last, i, 1)) - 1;
        END LOOP;
        width := 10;
    END IF;
    value := value + 1;
    FOR i IN 1..width LOOP
        encoded := encoded || substr(digits, ((value >> (5 * (width - i))) & 31)::INT + 1, 1);
    END LOOP;
    RETURN CASE WHEN width = 4 THEN encoded ELSE encoded || '0000' END;
END
$$;

-- Commits a group with idempotency keys (a group without is one statement,
-- see `store/postgres.rs`): moves the clock (and the proposed ids after it
-- when needed), checks and binds the group's keys, and inserts the events
-- of the publications whose key is not bound. Each statement after the
-- first runs on a snapshot taken after the clock's lock was granted, so it
-- sees every binding committed before. Returns the clock's previous id, the
-- prefix given to the ids (NULL: as proposed) and the bindings found live,
-- one per row (a single row of NULLs when there are none).
CREATE FUNCTION herald_commit_keyed(
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
    IF cardinality(found_keys) > COALESCE(cardinality(live_keys), 0) THEN
        UPDATE idempotency_keys i
           SET body_hash = u.body_hash, ids = u.ids, created_ms = now_ms
          FROM unnest(key_maps, key_names, key_hashes, key_ids) AS u (map_id, key, body_hash, ids)
         WHERE i.map_id = u.map_id AND i.key = u.key AND i.created_ms <= now_ms - ttl_ms;
    END IF;
    RETURN QUERY
    SELECT last, moved, l.map_id, l.key, l.body_hash, l.ids
      FROM (SELECT 1) AS one
      LEFT JOIN unnest(live_maps, live_keys, live_hashes, live_ids) AS l (map_id, key, body_hash, ids)
        ON TRUE;
END
$$;
