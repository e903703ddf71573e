//! PostgreSQL store (production): a pool with bounded waits, batch inserts
//! with `UNNEST` (one statement per group commit).

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use ulid::Ulid;

use sqlx::Row as _;

use super::{
    assign_ids, joined_ids, settle, ulid_column, BoundKey, Commit, Publication, StoreError,
};
use crate::event::SharedEvent;

/// Connections: enough for group commits, backfills and admin reads at once.
const MAX_CONNECTIONS: u32 = 16;
/// A publisher waiting for a connection gets its 503 well before a client
/// timeout.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// Connections reserved for group commits: reads (backfills, history)
/// can never make a publisher wait for a connection.
const WRITER_CONNECTIONS: u32 = 2;

/// The PostgreSQL-backed [`super::Store`].
pub struct PgStore {
    pool: PgPool,
    writer: PgPool,
}

impl PgStore {
    const PACKED_AFTER: (&'static str, &'static str) = super::sql::POSTGRES_AFTER;

    /// Prepares a lazy pool: nothing is dialled until the first query, so a
    /// database that comes back later is picked up by itself.
    ///
    /// # Errors
    /// A malformed URL.
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        let options =
            PgConnectOptions::from_str(url).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let lazy_pool = |connections, options| {
            PgPoolOptions::new()
                .max_connections(connections)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_lazy_with(options)
        };
        // Every read is an index lookup or an `ORDER BY id LIMIT n` range
        // that the primary key (or `events_id`) returns in order. Without
        // statistics (a fresh table, or rows inserted since autovacuum's
        // last ANALYZE) the planner guesses a few dozen rows and picks a
        // bitmap scan that then sorts every row after the cursor: 8 ms
        // instead of 2 ms to plan a 10,000-event backfill, 17 ms instead of
        // 2 ms per page. Sent in the startup packet: no extra round trip.
        let reads = options.clone().options([("enable_bitmapscan", "off")]);
        Ok(Self {
            pool: lazy_pool(MAX_CONNECTIONS, reads),
            // A commit abandoned by its timeout between statements would
            // keep the id clock locked, for every node, until its
            // connection is used again: PostgreSQL ends such a session.
            // Commits run the same few statements thousands of times a
            // second: planned once (generic plans), not at every run.
            writer: lazy_pool(
                WRITER_CONNECTIONS,
                options.options([
                    ("idle_in_transaction_session_timeout", "5s"),
                    ("plan_cache_mode", "force_generic_plan"),
                ]),
            ),
        })
    }

    async fn run_migrations(&self) -> Result<(), StoreError> {
        sqlx::migrate!("./migrations/postgres")
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Unavailable(format!("migration failed: {e}")))
    }

    /// Commits a group under the id clock's row lock (see the `id_clock`
    /// migration), held from the clock's update to the commit, so commits
    /// of every node are serialized and id order is commit order. The
    /// group's idempotency keys are checked and bound under the same lock.
    ///
    /// First try: one statement with ids after `after`, which writes only
    /// if the clock still says `after` (no other node committed since this
    /// one last heard). Else, a transaction that locks the clock, reads it
    /// and the database's time, and assigns ids from there.
    async fn commit_group(
        &self,
        after: Ulid,
        now_ms: u64,
        idempotency_ttl_ms: i64,
        publications: &[Publication],
    ) -> Result<Result<Commit, StoreError>, sqlx::Error> {
        let assigned = assign_ids(after, now_ms, publications);
        let written = write_group(
            &self.writer,
            after,
            publications,
            &assigned,
            idempotency_ttl_ms,
        )
        .await?;
        if let Some(bound) = written {
            return Ok(settle(after, publications, assigned, &bound));
        }
        let mut tx = self.writer.begin().await?;
        let (last, db_now_ms): (String, i64) =
            sqlx::query_as(LOCK_CLOCK).fetch_one(&mut *tx).await?;
        let previous = match ulid_column(&last) {
            Ok(previous) => previous,
            Err(err) => return Ok(Err(err)),
        };
        let now_ms = u64::try_from(db_now_ms).unwrap_or(now_ms);
        let assigned = assign_ids(previous, now_ms, publications);
        let written = write_group(
            &mut *tx,
            previous,
            publications,
            &assigned,
            idempotency_ttl_ms,
        )
        .await?;
        let Some(bound) = written else {
            return Ok(Err(StoreError::Unavailable(
                "the id clock moved while locked".into(),
            )));
        };
        tx.commit().await?;
        Ok(settle(previous, publications, assigned, &bound))
    }
}

/// Locks the id clock until commit; reads it and the database's time.
const LOCK_CLOCK: &str = "SELECT last_id, (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT \
     FROM id_clock FOR UPDATE";

/// Inserts the events and moves the clock to `$6`, if the clock is at
/// `$7`; answers whether it was. The clock's row lock, taken by the
/// UPDATE, is held until the commit.
const INSERT_AND_ADVANCE: &str = "WITH clock AS (\
        UPDATE id_clock SET last_id = $6 WHERE last_id = $7 RETURNING 1\
     ), inserted AS (\
        INSERT INTO events (map_id, id, type, source, payload) \
        SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) \
        WHERE EXISTS (SELECT 1 FROM clock)\
     ) SELECT EXISTS (SELECT 1 FROM clock)";

/// [`INSERT_AND_ADVANCE`] for a group with idempotency keys (`$8`/`$9`):
/// the bindings of those keys are looked up (`seen`; `live` when less than
/// `$11` ms old), the events of publications whose key is live (`$12` is
/// each event's key) are not inserted, and the other keys are bound (`$10`
/// body hashes, `$13` ids): an expired binding is renewed in place, a new
/// one inserted. No other binding of these keys can appear meanwhile: every
/// binding is written under the clock's lock, and a binding made after this
/// statement's snapshot moved the clock, so then nothing is written and the
/// caller retries under the lock. Returns the live bindings.
const INSERT_BIND_AND_ADVANCE: &str = concat!(
    "WITH clock AS (",
    "UPDATE id_clock SET last_id = $6 WHERE last_id = $7 RETURNING 1",
    "), seen AS (",
    // One primary-key lookup per key: `LIMIT 1` keeps the planner from
    // flattening the subquery into a join sized from a guess, which
    // scanned the whole table at every commit.
    "SELECT k.map_id, k.key, k.body_hash, k.ids, ",
    "k.created_ms > (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT - $11 AS live ",
    "FROM UNNEST($8::text[], $9::text[]) AS u (map_id, key) ",
    "CROSS JOIN LATERAL (SELECT * FROM idempotency_keys i ",
    "WHERE i.map_id = u.map_id AND i.key = u.key LIMIT 1) AS k",
    "), inserted AS (",
    "INSERT INTO events (map_id, id, type, source, payload) ",
    "SELECT e.map_id, e.id, e.type, e.source, e.payload ",
    "FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $12::text[]) ",
    "AS e (map_id, id, type, source, payload, key) ",
    "WHERE EXISTS (SELECT 1 FROM clock) AND NOT EXISTS ",
    "(SELECT 1 FROM seen s WHERE s.live AND s.map_id = e.map_id AND s.key = e.key)",
    "), keys AS (",
    "SELECT * FROM UNNEST($8::text[], $9::text[], $10::text[], $13::text[]) ",
    "AS u (map_id, key, body_hash, ids)",
    "), renewed AS (",
    "UPDATE idempotency_keys i SET body_hash = u.body_hash, ids = u.ids, ",
    "created_ms = (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT ",
    "FROM keys u WHERE i.map_id = u.map_id AND i.key = u.key AND EXISTS (SELECT 1 FROM clock) ",
    "AND EXISTS (SELECT 1 FROM seen s WHERE NOT s.live AND s.map_id = u.map_id AND s.key = u.key)",
    "), bound AS (",
    "INSERT INTO idempotency_keys (map_id, key, body_hash, ids, created_ms) ",
    "SELECT u.map_id, u.key, u.body_hash, u.ids, ",
    "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT FROM keys u ",
    "WHERE EXISTS (SELECT 1 FROM clock) ",
    "AND NOT EXISTS (SELECT 1 FROM seen s WHERE s.map_id = u.map_id AND s.key = u.key)",
    ") SELECT EXISTS (SELECT 1 FROM clock) AS advanced, s.map_id, s.key, s.body_hash, s.ids ",
    "FROM (SELECT 1) AS one LEFT JOIN seen s ON s.live"
);

/// Writes a group after `previous` if the clock is there: `None` if it
/// moved, else the keys that were bound already.
async fn write_group<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    previous: Ulid,
    publications: &[Publication],
    assigned: &[SharedEvent],
    idempotency_ttl_ms: i64,
) -> Result<Option<Vec<BoundKey>>, sqlx::Error> {
    let mut map_ids = Vec::with_capacity(assigned.len());
    let mut ids = Vec::with_capacity(assigned.len());
    let mut types = Vec::with_capacity(assigned.len());
    let mut sources = Vec::with_capacity(assigned.len());
    let mut payloads = Vec::with_capacity(assigned.len());
    for event in assigned {
        map_ids.push(event.map_id.to_string());
        ids.push(event.id.to_string());
        types.push(event.event_type.as_str());
        sources.push(event.source.as_str());
        payloads.push(event.payload());
    }
    let through = assigned.last().map_or(previous, |e| e.id).to_string();
    if publications.iter().all(|p| p.idempotency.is_none()) {
        let advanced: bool = sqlx::query_scalar(INSERT_AND_ADVANCE)
            .bind(&map_ids)
            .bind(&ids)
            .bind(&types)
            .bind(&sources)
            .bind(&payloads)
            .bind(through)
            .bind(previous.to_string())
            .fetch_one(executor)
            .await?;
        return Ok(advanced.then(Vec::new));
    }
    let mut event_keys: Vec<Option<&str>> = Vec::with_capacity(assigned.len());
    let (mut key_maps, mut keys, mut hashes, mut key_ids) = (vec![], vec![], vec![], vec![]);
    let mut start = 0;
    for publication in publications {
        let mine = &assigned[start..start + publication.events.len()];
        start += mine.len();
        let key = publication.idempotency.as_ref();
        event_keys.extend(mine.iter().map(|_| key.map(|k| k.key.as_str())));
        if let Some(idem) = key {
            key_maps.push(publication.map_id.to_string());
            keys.push(idem.key.as_str());
            hashes.push(idem.body_hash.as_str());
            key_ids.push(joined_ids(mine));
        }
    }
    let rows = sqlx::query(INSERT_BIND_AND_ADVANCE)
        .bind(&map_ids)
        .bind(&ids)
        .bind(&types)
        .bind(&sources)
        .bind(&payloads)
        .bind(through)
        .bind(previous.to_string())
        .bind(&key_maps)
        .bind(&keys)
        .bind(&hashes)
        .bind(idempotency_ttl_ms)
        .bind(&event_keys)
        .bind(&key_ids)
        .fetch_all(executor)
        .await?;
    if !rows
        .first()
        .map_or(Ok(false), |row| row.try_get("advanced"))?
    {
        return Ok(None);
    }
    let mut bound = Vec::new();
    for row in &rows {
        let Some(map_id) = row.try_get::<Option<String>, _>("map_id")? else {
            continue;
        };
        bound.push(BoundKey {
            map_id: Ulid::from_string(&map_id).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
            key: row.try_get("key")?,
            body_hash: row.try_get("body_hash")?,
            ids: row.try_get("ids")?,
        });
    }
    Ok(Some(bound))
}

super::impl_store!(PgStore);
