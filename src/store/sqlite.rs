//! SQLite store (embedded default): one file, WAL journal, full sync so an
//! acknowledged event survives a crash; a batch is one transaction.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::{sql, StoreError};
use crate::event::SharedEvent;

/// WAL allows concurrent readers; writes serialize on the file anyway.
const MAX_CONNECTIONS: u32 = 4;
/// How long a writer waits for the file lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The SQLite-backed [`super::Store`].
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
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
            .connect_with(options)
            .await?;
        Ok(Self { pool })
    }

    async fn run_migrations(&self) -> Result<(), StoreError> {
        sqlx::migrate!("./migrations/sqlite")
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Unavailable(format!("migration failed: {e}")))
    }

    async fn insert_batch(&self, events: &[SharedEvent]) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        for event in events {
            sqlx::query(sql::INSERT_EVENT)
                .bind(event.map_id.to_string())
                .bind(event.id.to_string())
                .bind(&event.event_type)
                .bind(&event.source)
                .bind(event.payload())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await
    }
}

super::impl_store!(SqliteStore);
