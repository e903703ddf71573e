//! SQL both backends run as written (placeholders `$1..` appear in order, so
//! SQLite binds them by position exactly as PostgreSQL does).

pub const PING: &str = "SELECT 1";

pub const SELECT_MAPS: &str = "SELECT id, slug, name, created_ms, max_connections, \
     max_connections_per_key FROM maps ORDER BY id";
pub const SELECT_KEYS: &str = "SELECT id, map_id, key_hash, created_ms FROM api_keys ORDER BY id";
pub const FIND_MAP: &str = "SELECT id, slug, name, created_ms, max_connections, \
     max_connections_per_key FROM maps WHERE id = $1 OR slug = $1";
pub const FIND_KEY: &str =
    "SELECT id, map_id, key_hash, created_ms FROM api_keys WHERE key_hash = $1";
pub const INSERT_MAP: &str = "INSERT INTO maps (id, slug, name, created_ms, max_connections, \
     max_connections_per_key) VALUES ($1, $2, $3, $4, $5, $6)";
pub const INSERT_KEY: &str =
    "INSERT INTO api_keys (id, map_id, key_hash, created_ms) VALUES ($1, $2, $3, $4)";
pub const DELETE_KEY: &str = "DELETE FROM api_keys WHERE id = $1 AND map_id = $2";
pub const UPDATE_LIMITS: &str =
    "UPDATE maps SET max_connections = $1, max_connections_per_key = $2 WHERE id = $3";

/// The newest committed id (of a map, or of all): the newest stored event,
/// or, when retention removed it, the newest id retention removed, so a
/// map emptied by retention keeps its position (the zero id when nothing
/// was ever committed).
pub const NEWEST_IN_MAP: &str = "SELECT COALESCE(MAX(id), '00000000000000000000000000') FROM (\
     SELECT id FROM (SELECT id FROM events WHERE map_id = $1 ORDER BY id DESC LIMIT 1) AS stored \
     UNION ALL SELECT pruned_through FROM maps WHERE id = $1) AS known";
pub const NEWEST_ANY: &str = "SELECT COALESCE(MAX(id), '00000000000000000000000000') FROM (\
     SELECT id FROM (SELECT id FROM events ORDER BY id DESC LIMIT 1) AS stored \
     UNION ALL SELECT MAX(pruned_through) FROM maps) AS known";

/// A page of events read for a backfill, packed into one text value (one
/// row, not one per event: sqlx's SQLite driver moves every row between
/// threads with each value copied, which was most of a backfill's time).
/// Each record is `map_id, id, type, source, payload`, separated by U+001F;
/// records are separated by U+001E. Neither can occur in an id, a type or
/// source (`[A-Za-z0-9_.:-]`) or in JSON text, which has no raw control
/// characters. `$agg` is the backend's string aggregate, `$chr` its
/// code-to-character function; see `super::unpack_page` for the reading side.
/// The aggregate takes the rows in the subquery's order (both backends do,
/// though SQL does not promise it; `unpack_page` restores id order if not):
/// an `ORDER BY` inside the aggregate made PostgreSQL 15 sort every page
/// again, doubling its time.
macro_rules! packed_page {
    ($agg:literal, $chr:literal, $filter:literal, $limit:literal) => {
        concat!(
            "SELECT ",
            $agg,
            "(map_id || ",
            $chr,
            "(31) || id || ",
            $chr,
            "(31) || type || ",
            $chr,
            "(31) || source || ",
            $chr,
            "(31) || payload, ",
            $chr,
            "(30)) ",
            "FROM (SELECT map_id, id, type, source, payload FROM events WHERE ",
            $filter,
            " ORDER BY id LIMIT ",
            $limit,
            ") AS page"
        )
    };
}

/// Packed pages (in one map, across maps) on SQLite.
pub const SQLITE_AFTER: (&str, &str) = (
    packed_page!("group_concat", "char", "map_id = $1 AND id > $2", "$3"),
    packed_page!("group_concat", "char", "id > $1", "$2"),
);
/// Packed pages on PostgreSQL.
pub const POSTGRES_AFTER: (&str, &str) = (
    packed_page!("string_agg", "chr", "map_id = $1 AND id > $2", "$3"),
    packed_page!("string_agg", "chr", "id > $1", "$2"),
);

/// The feed's read (see `Store::feed_page`): the newest id after `$1` in
/// any map, and a packed page of the events after `$1` in the maps listed,
/// comma-separated, in `$2`; in one statement, so from one snapshot.
macro_rules! feed_page {
    ($agg:literal, $chr:literal, $in_maps:literal) => {
        concat!(
            "SELECT (SELECT MAX(id) FROM events WHERE id > $1), (",
            packed_page!($agg, $chr, $in_maps, "$3"),
            ")"
        )
    };
}

pub const SQLITE_FEED_PAGE: &str = feed_page!(
    "group_concat",
    "char",
    "id > $1 AND instr(',' || $2 || ',', ',' || map_id || ',') > 0"
);
pub const POSTGRES_FEED_PAGE: &str = feed_page!(
    "string_agg",
    "chr",
    // An array, not a join: the primary key then serves it even before
    // the table has statistics (a join was planned as a sequential scan).
    "id > $1 AND map_id = ANY(string_to_array($2, ','))"
);

pub const HEADS_IN_MAP: &str = "SELECT id, type, source FROM events \
     WHERE map_id = $1 AND id > $2 AND id < $3 ORDER BY id DESC LIMIT $4";
pub const HEADS_ANY: &str = "SELECT id, type, source FROM events \
     WHERE id > $1 AND id < $2 ORDER BY id DESC LIMIT $3";

pub const OFFSET_DESC_IN_MAP: &str =
    "SELECT id FROM events WHERE map_id = $1 AND id > $2 ORDER BY id DESC LIMIT 1 OFFSET $3";
pub const OFFSET_DESC_ANY: &str =
    "SELECT id FROM events WHERE id > $1 ORDER BY id DESC LIMIT 1 OFFSET $2";

pub const PRUNED_IN_MAP: &str = "SELECT pruned_through FROM maps WHERE id = $1";
pub const PRUNED_ANY: &str = "SELECT MAX(pruned_through) FROM maps";

pub const MAP_IDS: &str = "SELECT id FROM maps";
pub const CUT_BY_AGE: &str = "SELECT MAX(id) FROM events WHERE map_id = $1 AND id < $2";
pub const CUT_BY_COUNT: &str =
    "SELECT id FROM events WHERE map_id = $1 ORDER BY id DESC LIMIT 1 OFFSET $2";
pub const DELETE_THROUGH: &str = "DELETE FROM events WHERE map_id = $1 AND id <= $2";
pub const MARK_PRUNED: &str =
    "UPDATE maps SET pruned_through = $1 WHERE id = $2 AND pruned_through < $1";

pub const PRUNE_IDEMPOTENCY: &str = "DELETE FROM idempotency_keys WHERE created_ms < $1";
