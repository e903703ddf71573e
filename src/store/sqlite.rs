//! SQLite store (embedded default): one file, WAL journal, full sync so an
//! acknowledged event survives a crash; a batch is one transaction.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use std::sync::{Mutex, PoisonError};

use ulid::Ulid;

use super::{
    assign_ids, binding_ids, settle, ulid_column, BoundKey, Commit, Outcome, Publication,
    StoreError,
};

/// WAL allows concurrent readers; writes serialize on the file anyway.
const MAX_CONNECTIONS: u32 = 4;
/// Rows per multi-row INSERT: 5 parameters each, far below SQLite's 32,766,
/// and one statement per chunk instead of one per event.
const INSERT_CHUNK: usize = 500;
/// How long a writer waits for the file lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The SQLite-backed [`super::Store`]: readers, and one writer connection
/// of its own for group commits, so reads never delay a publisher.
pub struct SqliteStore {
    pool: SqlitePool,
    writer: SqlitePool,
    /// The newest id handed out; `None` until the first commit reads it.
    // A std Mutex: held for a copy, never across an `.await`.
    last_id: Mutex<Option<Ulid>>,
}

impl SqliteStore {
    const PACKED_AFTER: (&'static str, &'static str) = super::sql::SQLITE_AFTER;
    const FEED_PAGE: &'static str = super::sql::SQLITE_FEED_PAGE;
    /// A transaction that reads, then writes, takes the write lock first:
    /// begun deferred, its first write fails at once ("database is locked",
    /// no busy wait) when another connection wrote since its read (a
    /// retention pass beside a commit).
    const BEGIN_WRITE: &'static str = "BEGIN IMMEDIATE";

    /// The database file (`None` for an in-memory database).
    pub fn file(url: &str) -> Option<std::path::PathBuf> {
        let options = SqliteConnectOptions::from_str(url).ok()?;
        let file = options.get_filename();
        (!file.as_os_str().is_empty() && file != std::path::Path::new(":memory:"))
            .then(|| file.to_path_buf())
    }

    /// Opens (and creates when missing) the database file of `url`.
    ///
    /// # Errors
    /// A malformed URL or a file that cannot be opened.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Unavailable(e.to_string()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(BUSY_TIMEOUT)
            .connect_with(options.clone())
            .await?;
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(BUSY_TIMEOUT)
            .connect_with(options)
            .await?;
        Ok(Self {
            pool,
            writer,
            last_id: Mutex::new(None),
        })
    }

    async fn run_migrations(&self) -> Result<(), StoreError> {
        sqlx::migrate!("./migrations/sqlite")
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Unavailable(format!("migration failed: {e}")))
    }

    /// Commits a group in one transaction. herald on SQLite is one process
    /// (see `server::lock_sqlite`), so the newest id handed out is known
    /// here: read once, then kept, also past a commit whose answer was lost.
    async fn commit_group(
        &self,
        after: Ulid,
        now_ms: u64,
        idempotency_ttl_ms: i64,
        publications: &[Publication],
    ) -> Result<Result<Commit, StoreError>, sqlx::Error> {
        let mut tx = self.writer.begin_with(Self::BEGIN_WRITE).await?;
        let known = *self.last_id.lock().unwrap_or_else(PoisonError::into_inner);
        let stored = match known {
            Some(id) => id,
            None => {
                let newest: Option<String> = sqlx::query_scalar(super::sql::NEWEST_ANY)
                    .fetch_optional(&mut *tx)
                    .await?;
                match newest.as_deref().map(ulid_column).transpose() {
                    Ok(newest) => newest.unwrap_or_default(),
                    Err(err) => return Ok(Err(err)),
                }
            }
        };
        let previous = stored.max(after);
        let assigned = assign_ids(previous, now_ms, publications);
        if let Some(last) = assigned.last() {
            // Kept even if the commit fails: its ids are never given again.
            *self.last_id.lock().unwrap_or_else(PoisonError::into_inner) = Some(last.id);
        }
        let now = i64::try_from(now_ms).unwrap_or(i64::MAX);
        let mut bound = Vec::new();
        for publication in publications {
            let Some(idem) = &publication.idempotency else {
                continue;
            };
            let row: Option<(String, String)> = sqlx::query_as(SELECT_BOUND)
                .bind(publication.map_id.to_string())
                .bind(&idem.key)
                .bind(now.saturating_sub(idempotency_ttl_ms))
                .fetch_optional(&mut *tx)
                .await?;
            if let Some((body_hash, ids)) = row {
                bound.push(BoundKey {
                    map_id: publication.map_id,
                    key: idem.key.clone(),
                    body_hash,
                    ids,
                });
            }
        }
        let commit = match settle(previous, publications, assigned, &bound) {
            Ok(commit) => commit,
            Err(err) => return Ok(Err(err)),
        };
        for chunk in commit.events.chunks(INSERT_CHUNK) {
            let sql = multi_row_insert(chunk.len());
            let mut query = sqlx::query(&sql);
            for event in chunk {
                query = query
                    .bind(event.map_id.to_string())
                    .bind(event.id.to_string())
                    .bind(&event.event_type)
                    .bind(&event.source)
                    .bind(event.payload());
            }
            query.execute(&mut *tx).await?;
        }
        for (publication, outcome) in publications.iter().zip(&commit.outcomes) {
            let Outcome::Created(ids) = outcome else {
                continue;
            };
            if let Some(idem) = &publication.idempotency {
                sqlx::query(BIND_KEY)
                    .bind(publication.map_id.to_string())
                    .bind(&idem.key)
                    .bind(&idem.body_hash)
                    .bind(binding_ids(ids))
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(Ok(commit))
    }
}

/// A key bound less than the TTL ago (`$3`: the oldest time still valid).
const SELECT_BOUND: &str = "SELECT body_hash, ids FROM idempotency_keys \
     WHERE map_id = $1 AND key = $2 AND created_ms > $3";
/// Binds a key (replacing an expired binding).
const BIND_KEY: &str = "INSERT OR REPLACE INTO idempotency_keys \
     (map_id, key, body_hash, ids, created_ms) VALUES ($1, $2, $3, $4, $5)";

/// `INSERT INTO events ... VALUES (?, ?, ?, ?, ?), ...` for `rows` rows.
fn multi_row_insert(rows: usize) -> String {
    const HEAD: &str = "INSERT INTO events (map_id, id, type, source, payload) VALUES ";
    const ROW: &str = "(?, ?, ?, ?, ?)";
    let mut sql = String::with_capacity(HEAD.len() + rows * (ROW.len() + 1));
    sql.push_str(HEAD);
    for i in 0..rows {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str(ROW);
    }
    sql
}

super::impl_store!(SqliteStore);
