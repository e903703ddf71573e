//! PostgreSQL store (production): a pool with bounded waits, batch inserts
//! with `UNNEST` (one statement per group commit).

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::StoreError;
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
            writer: lazy_pool(WRITER_CONNECTIONS, options),
        })
    }

    async fn run_migrations(&self) -> Result<(), StoreError> {
        sqlx::migrate!("./migrations/postgres")
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Unavailable(format!("migration failed: {e}")))
    }

    async fn insert_batch(&self, events: &[SharedEvent]) -> Result<(), sqlx::Error> {
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
        sqlx::query(
            "INSERT INTO events (map_id, id, type, source, payload) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])",
        )
        .bind(&map_ids)
        .bind(&ids)
        .bind(&types)
        .bind(&sources)
        .bind(&payloads)
        .execute(&self.writer)
        .await?;
        Ok(())
    }
}

super::impl_store!(PgStore);
