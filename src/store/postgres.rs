//! PostgreSQL store (production): a pool with bounded waits, batch inserts
//! with `UNNEST` (one statement per group commit).

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use ulid::Ulid;

use super::{assign_ids, ulid_column, Commit, Publication, StoreError};
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
            writer: lazy_pool(
                WRITER_CONNECTIONS,
                options.options([("idle_in_transaction_session_timeout", "5s")]),
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
    /// of every node are serialized and id order is commit order.
    ///
    /// First try: one statement with ids after `after`, which inserts only
    /// if the clock still says `after` (no other node committed since this
    /// one last heard). Else, a transaction that locks the clock, reads it
    /// and the database's time, and assigns ids from there.
    async fn commit_group(
        &self,
        after: Ulid,
        now_ms: u64,
        publications: &[Publication],
    ) -> Result<Result<Commit, StoreError>, sqlx::Error> {
        let events = assign_ids(after, now_ms, publications);
        if insert_and_advance(&self.writer, after, &events).await? {
            return Ok(Ok(Commit {
                previous: after,
                events,
            }));
        }
        let mut tx = self.writer.begin().await?;
        let (last, db_now_ms): (String, i64) =
            sqlx::query_as(LOCK_CLOCK).fetch_one(&mut *tx).await?;
        let previous = match ulid_column(&last) {
            Ok(previous) => previous,
            Err(err) => return Ok(Err(err)),
        };
        let events = assign_ids(
            previous,
            u64::try_from(db_now_ms).unwrap_or(now_ms),
            publications,
        );
        if !insert_and_advance(&mut *tx, previous, &events).await? {
            return Ok(Err(StoreError::Unavailable(
                "the id clock moved while locked".into(),
            )));
        }
        tx.commit().await?;
        Ok(Ok(Commit { previous, events }))
    }
}

/// Locks the id clock until commit; reads it and the database's time.
const LOCK_CLOCK: &str = "SELECT last_id, (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT \
     FROM id_clock FOR UPDATE";

/// Inserts the events and moves the clock to the last one, if the clock
/// is at `$7`; answers whether it was. The clock's row lock, taken by the
/// UPDATE, is held until the commit.
const INSERT_AND_ADVANCE: &str = "WITH clock AS (\
        UPDATE id_clock SET last_id = $6 WHERE last_id = $7 RETURNING 1\
     ), inserted AS (\
        INSERT INTO events (map_id, id, type, source, payload) \
        SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) \
        WHERE EXISTS (SELECT 1 FROM clock)\
     ) SELECT EXISTS (SELECT 1 FROM clock)";

async fn insert_and_advance<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    previous: Ulid,
    events: &[SharedEvent],
) -> Result<bool, sqlx::Error> {
    let mut map_ids = Vec::with_capacity(events.len());
    let mut ids = Vec::with_capacity(events.len());
    let mut types = Vec::with_capacity(events.len());
    let mut sources = Vec::with_capacity(events.len());
    let mut payloads = Vec::with_capacity(events.len());
    for event in events {
        map_ids.push(event.map_id.to_string());
        ids.push(event.id.to_string());
        types.push(event.event_type.as_str());
        sources.push(event.source.as_str());
        payloads.push(event.payload());
    }
    let last = ids.last().cloned().unwrap_or_else(|| previous.to_string());
    sqlx::query_scalar(INSERT_AND_ADVANCE)
        .bind(&map_ids)
        .bind(&ids)
        .bind(&types)
        .bind(&sources)
        .bind(&payloads)
        .bind(last)
        .bind(previous.to_string())
        .fetch_one(executor)
        .await
}

super::impl_store!(PgStore);
