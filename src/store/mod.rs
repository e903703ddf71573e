//! The event store: one trait, two implementations — PostgreSQL for
//! production ([`postgres`]) and SQLite as the embedded default ([`sqlite`]).
//! Both speak the same SQL ([`sql`]); only connecting, migrating and the
//! batch insert differ. The server runs store calls on threads of their own
//! ([`offload`]).

pub mod offload;
pub mod postgres;
pub mod sql;
pub mod sqlite;

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ulid::Ulid;

use crate::auth::SecretHash;
use crate::event::{Event, NewEvent, SharedEvent};

/// Longest any store call may take before it counts as unavailable: a
/// publisher gets its 503 in bounded time even when the database hangs.
pub const STORE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Connection refused, timed out, or the query failed: retry later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A unique constraint (map slug) was violated.
    #[error("conflict")]
    Conflict,
    /// A stored value could not be read back.
    #[error("corrupt stored value: {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::Database(db) if db.is_unique_violation() => Self::Conflict,
            sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
                Self::Corrupt(err.to_string())
            }
            _ => Self::Unavailable(err.to_string()),
        }
    }
}

/// A map as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapRecord {
    pub id: Ulid,
    pub slug: String,
    pub name: String,
    pub created_ms: i64,
    /// `None`: the configured default.
    pub max_connections: Option<u64>,
    pub max_connections_per_key: Option<u64>,
}

impl MapRecord {
    /// The map's limits in force: its own, else the configured defaults.
    /// Returns `(max_connections, max_connections_per_key)`.
    pub fn effective_limits(&self, defaults: &crate::config::LimitSettings) -> (u64, u64) {
        (
            self.max_connections
                .unwrap_or(defaults.max_connections_per_map),
            self.max_connections_per_key
                .unwrap_or(defaults.max_connections_per_key),
        )
    }
}

/// An API key as stored: only its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: Ulid,
    pub map_id: Ulid,
    pub hash: SecretHash,
    pub created_ms: i64,
}

/// What backfill planning needs of an event, without its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventHead {
    pub id: Ulid,
    pub event_type: String,
    pub source: String,
}

/// Which events a read covers: one map, or every map (the admin firehose).
pub type Scope = Option<Ulid>;

/// What the feed reads after its cursor (see [`Store::feed_page`]).
#[derive(Debug, Default)]
pub struct FeedPage {
    /// The events read, oldest first.
    pub events: Vec<Event>,
    /// The newest id committed after the cursor in any map, seen in the
    /// same snapshot as `events`.
    pub newest: Option<Ulid>,
}

/// The events of one publish request; they commit together with the other
/// requests of a group commit, all or nothing.
#[derive(Debug, Clone)]
pub struct Publication {
    pub map_id: Ulid,
    pub events: Vec<NewEvent>,
    /// Its `Idempotency-Key`, if it has one.
    pub idempotency: Option<Idempotency>,
}

/// An `Idempotency-Key` and the request it was first used with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    pub key: String,
    /// SHA-256 of the request body, hex: a retry must send the same bytes.
    pub body_hash: String,
}

/// What became of one publication of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Its events were committed with these ids.
    Created(Vec<Ulid>),
    /// A retry: its key was bound to the same body, which created these.
    Replayed(Vec<Ulid>),
    /// Its key was bound to another body: nothing was created.
    KeyReused,
}

/// A committed group: the events it created, in id order, and the newest
/// id committed before them, on any node. Ids up to `through` are taken
/// (a retry's ids are assigned and left unused). When a node has delivered
/// exactly through `previous`, it may deliver `events` next without reading
/// the store, and count itself delivered through `through`: nothing can
/// lie between.
#[derive(Debug)]
pub struct Commit {
    pub previous: Ulid,
    pub through: Ulid,
    pub events: Vec<SharedEvent>,
    /// One per publication, in order.
    pub outcomes: Vec<Outcome>,
}

/// A key bound by an earlier commit, as found by a later one.
#[derive(Debug, Clone)]
pub(crate) struct BoundKey {
    pub map_id: Ulid,
    pub key: String,
    pub body_hash: String,
    pub ids: String,
}

/// Builds a [`Commit`] from the ids assigned to every publication and the
/// keys found already bound: a publication whose key was bound creates
/// nothing and is answered from the binding.
pub(crate) fn settle(
    previous: Ulid,
    publications: &[Publication],
    assigned: Vec<SharedEvent>,
    bound: &[BoundKey],
) -> Result<Commit, StoreError> {
    let through = assigned.last().map_or(previous, |e| e.id);
    let mut assigned = assigned.into_iter();
    let mut events = Vec::new();
    let mut outcomes = Vec::with_capacity(publications.len());
    for publication in publications {
        let mine: Vec<SharedEvent> = assigned.by_ref().take(publication.events.len()).collect();
        let binding = publication.idempotency.as_ref().and_then(|idem| {
            bound
                .iter()
                .find(|b| b.map_id == publication.map_id && b.key == idem.key)
                .map(|b| (idem, b))
        });
        outcomes.push(match binding {
            Some((idem, b)) if b.body_hash == idem.body_hash => {
                Outcome::Replayed(bound_ids(&b.ids)?)
            }
            Some(_) => Outcome::KeyReused,
            None => {
                let ids = mine.iter().map(|e| e.id).collect();
                events.extend(mine);
                Outcome::Created(ids)
            }
        });
    }
    Ok(Commit {
        previous,
        through,
        events,
        outcomes,
    })
}

/// The ids of one publication's events, as an idempotency binding keeps
/// them: a publication's ids are consecutive, so the first and the count
/// (`ID*COUNT`; a lone id for one event). A batch of 100 binds ~30 bytes,
/// not 2.7 KB that PostgreSQL would compress at every keyed commit. Ids
/// that are not consecutive are listed, comma-separated, as bindings made
/// before this form still are.
pub(crate) fn binding_ids(ids: &[Ulid]) -> String {
    let consecutive = ids.windows(2).all(|pair| pair[1].0 == pair[0].0 + 1);
    match ids {
        [first, _, ..] if consecutive => format!("{first}*{}", ids.len()),
        _ => {
            let mut text = String::with_capacity(ids.len() * 27);
            for (i, id) in ids.iter().enumerate() {
                if i > 0 {
                    text.push(',');
                }
                text.push_str(&id.to_string());
            }
            text
        }
    }
}

/// Reads what [`binding_ids`] wrote (either form).
pub(crate) fn bound_ids(text: &str) -> Result<Vec<Ulid>, StoreError> {
    let mut ids = Vec::new();
    for item in text.split(',').filter(|item| !item.is_empty()) {
        let Some((first, count)) = item.split_once('*') else {
            ids.push(ulid_column(item)?);
            continue;
        };
        let first = ulid_column(first)?;
        let count: u128 = count
            .parse()
            .ok()
            .filter(|&n| n <= MAX_BOUND_IDS as u128)
            .ok_or_else(|| StoreError::Corrupt(format!("binding ids `{item}`")))?;
        ids.extend((0..count).map(|n| Ulid(first.0.wrapping_add(n))));
    }
    Ok(ids)
}

/// More events than any publication may have (`publish.max_batch` is at
/// most this): a binding claiming more ids is corrupt, not a reason to
/// allocate.
pub const MAX_BOUND_IDS: usize = 1 << 20;

/// The low bits of an id that stay when a store moves a group's ids after
/// another node's (see the PostgreSQL `0004_commit_function` migration): the
/// bits above them, its prefix, are one value for the whole group.
const ID_TAIL_BITS: u32 = 60;
const ID_TAIL: u128 = (1 << ID_TAIL_BITS) - 1;

/// `id` with the prefix of `prefix` (its tail kept).
pub(crate) fn with_prefix(id: Ulid, prefix: Ulid) -> Ulid {
    Ulid((prefix.0 & !ID_TAIL) | (id.0 & ID_TAIL))
}

/// `count` consecutive ids after `previous`: the first time-based at
/// `now_ms` when that is later, else `previous + 1` (same millisecond, or
/// a clock behind the newest id). They share one prefix: a group that
/// would cross into the next prefix starts there instead.
pub fn propose_ids(previous: Ulid, now_ms: u64, count: usize) -> Vec<Ulid> {
    let fresh = Ulid::from_parts(now_ms, rand::random());
    // 2^80 ids in one millisecond would be needed to overflow.
    let mut first = if fresh > previous {
        fresh
    } else {
        previous.increment().unwrap_or(fresh)
    };
    let span = count.saturating_sub(1) as u128;
    if (first.0 & ID_TAIL) + span > ID_TAIL {
        first = Ulid((first.0 | ID_TAIL) + 1);
    }
    (0..count as u128).map(|n| Ulid(first.0 + n)).collect()
}

/// Gives ids the events of `publications`, in order.
pub fn build_events(publications: &[Publication], ids: &[Ulid]) -> Vec<SharedEvent> {
    let news = publications
        .iter()
        .flat_map(|p| p.events.iter().map(move |new| (p.map_id, new)));
    news.zip(ids)
        .map(|((map_id, new), &id)| {
            Arc::new(Event::new(
                id,
                map_id,
                new.event_type.clone(),
                new.source.clone(),
                &new.payload,
            ))
        })
        .collect()
}

/// Gives the events of `publications` ids after `previous` ([`propose_ids`]).
pub fn assign_ids(previous: Ulid, now_ms: u64, publications: &[Publication]) -> Vec<SharedEvent> {
    let count = publications.iter().map(|p| p.events.len()).sum();
    build_events(publications, &propose_ids(previous, now_ms, count))
}

/// Persistent storage of maps, keys and events.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Applies pending migrations.
    async fn migrate(&self) -> Result<(), StoreError>;
    /// Cheap round trip proving the store answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Every map and key, to fill the in-memory directory at start.
    async fn load_directory(&self) -> Result<(Vec<MapRecord>, Vec<KeyRecord>), StoreError>;
    /// Creates a map and its first key in one transaction.
    /// [`StoreError::Conflict`] when the slug exists.
    async fn insert_map(&self, map: &MapRecord, key: &KeyRecord) -> Result<(), StoreError>;
    async fn insert_key(&self, key: &KeyRecord) -> Result<(), StoreError>;
    /// Returns whether a key was removed.
    async fn delete_key(&self, map_id: Ulid, key_id: Ulid) -> Result<bool, StoreError>;
    async fn update_map_limits(
        &self,
        map_id: Ulid,
        max_connections: Option<u64>,
        max_connections_per_key: Option<u64>,
    ) -> Result<(), StoreError>;

    /// Commits a group of publications atomically, all or nothing, giving
    /// their events ids later than every committed one (see [`Commit`]).
    /// A publication whose `Idempotency-Key` is bound (by a commit less than
    /// `idempotency_ttl_ms` old) creates nothing; the others bind theirs.
    /// `after` is the newest id the caller knows of and `now_ms` its best
    /// idea of the time: hints that save a round trip when they are right.
    /// No two publications of a group may share a map and key.
    async fn commit(
        &self,
        after: Ulid,
        now_ms: u64,
        idempotency_ttl_ms: u64,
        publications: &[Publication],
    ) -> Result<Commit, StoreError>;
    /// Forgets idempotency keys bound before `older_than_ms`.
    async fn prune_idempotency(&self, older_than_ms: u64) -> Result<u64, StoreError>;
    /// The map with this id or slug, read from the store (a map another
    /// process created since the directory was loaded).
    async fn find_map(&self, id_or_slug: &str) -> Result<Option<MapRecord>, StoreError>;
    /// The key with this hash, read from the store.
    async fn find_key(&self, hash: &SecretHash) -> Result<Option<KeyRecord>, StoreError>;
    /// The newest event id in scope.
    async fn newest_event_id(&self, scope: Scope) -> Result<Option<Ulid>, StoreError>;
    /// Up to `limit` events with `id > after`, oldest first.
    async fn events_after(
        &self,
        scope: Scope,
        after: Ulid,
        limit: u32,
    ) -> Result<Vec<Event>, StoreError>;
    /// Up to `limit` events with `id > after` in `maps` (in every map when
    /// `None`), oldest first, and the newest id after `after` in any map,
    /// read in one snapshot: unless the page is full, nothing of `maps`
    /// lies between its last event and `newest`.
    async fn feed_page(
        &self,
        maps: Option<&[Ulid]>,
        after: Ulid,
        limit: u32,
    ) -> Result<FeedPage, StoreError>;
    /// Up to `limit` heads with `after < id < before`, newest first.
    async fn heads_between_desc(
        &self,
        scope: Scope,
        after: Ulid,
        before: Ulid,
        limit: u32,
    ) -> Result<Vec<EventHead>, StoreError>;
    /// The id `offset` places below the newest among ids above `after`
    /// (offset 0 = the newest), if there are that many.
    async fn id_at_offset_desc(
        &self,
        scope: Scope,
        after: Ulid,
        offset: u64,
    ) -> Result<Option<Ulid>, StoreError>;
    /// Newest id removed by retention in scope (the nil id when none).
    async fn pruned_through(&self, scope: Scope) -> Result<Ulid, StoreError>;
    /// Removes, per map, events older than `older_than` and all but the
    /// newest `keep` ones. Returns how many were removed.
    async fn prune(&self, older_than: Ulid, keep: u64) -> Result<u64, StoreError>;
}

/// The store handle shared by actors and handlers.
pub type SharedStore = Arc<dyn Store>;

/// Whether a database URL names PostgreSQL.
pub fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// The database a URL names, for messages: host, port and database for
/// PostgreSQL, the file for SQLite — never the credentials.
pub fn describe(url: &str) -> String {
    if is_postgres(url) {
        match sqlx::postgres::PgConnectOptions::from_str(url) {
            Ok(options) => format!(
                "PostgreSQL database `{}` at {}:{}",
                options.get_database().unwrap_or("postgres"),
                options.get_host(),
                options.get_port()
            ),
            Err(_) => "PostgreSQL (malformed database.url)".to_owned(),
        }
    } else {
        match sqlite::SqliteStore::file(url) {
            Some(file) => format!("SQLite database file {}", file.display()),
            None => "in-memory SQLite database".to_owned(),
        }
    }
}

/// Opens the store a URL names (`postgres://` or `sqlite:`).
///
/// # Errors
/// An unknown scheme, or a database that cannot be opened.
pub async fn open(url: &str) -> Result<SharedStore, StoreError> {
    if is_postgres(url) {
        Ok(Arc::new(postgres::PgStore::connect(url)?))
    } else if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::connect(url).await?))
    } else {
        Err(StoreError::Unavailable(format!(
            "database.url must start with postgres:// or sqlite:, got `{}`",
            url.split(':').next().unwrap_or_default()
        )))
    }
}

/// Runs a store call with [`STORE_TIMEOUT`].
pub(crate) async fn timed<T>(
    fut: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(STORE_TIMEOUT, fut).await {
        Ok(result) => result.map_err(StoreError::from),
        Err(_) => Err(StoreError::Unavailable("timed out".into())),
    }
}

/// Reads a stored ULID column.
pub(crate) fn ulid_column(text: &str) -> Result<Ulid, StoreError> {
    Ulid::from_string(text).map_err(|e| StoreError::Corrupt(format!("id `{text}`: {e}")))
}

/// The events of a page packed by `sql::SQLITE_AFTER` / `sql::POSTGRES_AFTER`.
pub(crate) fn unpack_page(packed: &str) -> Result<Vec<Event>, StoreError> {
    if packed.is_empty() {
        return Ok(Vec::new());
    }
    let mut events = packed
        .split('\u{1e}')
        .map(|record| {
            // The payload comes last: `splitn` keeps it whole whatever it holds.
            let mut parts = record.splitn(5, '\u{1f}');
            let mut next = || {
                parts
                    .next()
                    .ok_or_else(|| StoreError::Corrupt(format!("short event record `{record}`")))
            };
            let map_id = ulid_column(next()?)?;
            let id = ulid_column(next()?)?;
            let event_type = next()?.to_owned();
            let source = next()?.to_owned();
            Ok(Event::new(id, map_id, event_type, source, next()?))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    if !events.is_sorted_by_key(|e| e.id) {
        events.sort_unstable_by_key(|e| e.id);
    }
    Ok(events)
}

/// A `maps` row as read by `sql::SELECT_MAPS` or `sql::FIND_MAP`.
pub(crate) fn map_row<R: sqlx::Row>(row: &R) -> Result<MapRecord, StoreError>
where
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> &'r str: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(MapRecord {
        id: ulid_column(row.try_get("id")?)?,
        slug: row.try_get("slug")?,
        name: row.try_get("name")?,
        created_ms: row.try_get("created_ms")?,
        max_connections: limit_column(row.try_get("max_connections")?),
        max_connections_per_key: limit_column(row.try_get("max_connections_per_key")?),
    })
}

/// An `api_keys` row as read by `sql::SELECT_KEYS` or `sql::FIND_KEY`.
pub(crate) fn key_row<R: sqlx::Row>(row: &R) -> Result<KeyRecord, StoreError>
where
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> &'r str: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let hash: &str = row.try_get("key_hash")?;
    Ok(KeyRecord {
        id: ulid_column(row.try_get("id")?)?,
        map_id: ulid_column(row.try_get("map_id")?)?,
        hash: crate::auth::parse_hash_hex(hash)
            .ok_or_else(|| StoreError::Corrupt("api key hash".into()))?,
        created_ms: row.try_get("created_ms")?,
    })
}

/// Converts an optional stored limit.
pub(crate) fn limit_column(value: Option<i64>) -> Option<u64> {
    value.and_then(|v| u64::try_from(v).ok())
}

/// Converts a limit for storage (values beyond i64 are clamped).
pub(crate) fn limit_param(value: Option<u64>) -> Option<i64> {
    value.map(|v| i64::try_from(v).unwrap_or(i64::MAX))
}

/// The retention cut for one map: the newer of the age cut and the count cut.
pub(crate) fn retention_cut(by_age: Option<String>, by_count: Option<String>) -> Option<String> {
    by_age.into_iter().chain(by_count).max()
}

/// Implements [`Store`] for a backend struct with a `pool` field and two
/// inherent methods, `run_migrations` and `commit_group`. Everything else is
/// the shared SQL of [`sql`], written once for both backends.
macro_rules! impl_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::Store for $store {
            async fn migrate(&self) -> Result<(), $crate::store::StoreError> {
                self.run_migrations().await
            }

            async fn ping(&self) -> Result<(), $crate::store::StoreError> {
                $crate::store::timed(sqlx::query($crate::store::sql::PING).execute(&self.pool))
                    .await
                    .map(|_| ())
            }

            async fn load_directory(
                &self,
            ) -> Result<
                (Vec<$crate::store::MapRecord>, Vec<$crate::store::KeyRecord>),
                $crate::store::StoreError,
            > {
                let map_rows = $crate::store::timed(
                    sqlx::query($crate::store::sql::SELECT_MAPS).fetch_all(&self.pool),
                )
                .await?;
                let key_rows = $crate::store::timed(
                    sqlx::query($crate::store::sql::SELECT_KEYS).fetch_all(&self.pool),
                )
                .await?;
                let maps = map_rows
                    .iter()
                    .map($crate::store::map_row)
                    .collect::<Result<Vec<_>, _>>()?;
                let keys = key_rows
                    .iter()
                    .map($crate::store::key_row)
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((maps, keys))
            }

            async fn insert_map(
                &self,
                map: &$crate::store::MapRecord,
                key: &$crate::store::KeyRecord,
            ) -> Result<(), $crate::store::StoreError> {
                $crate::store::timed(async {
                    let mut tx = self.pool.begin().await?;
                    sqlx::query($crate::store::sql::INSERT_MAP)
                        .bind(map.id.to_string())
                        .bind(&map.slug)
                        .bind(&map.name)
                        .bind(map.created_ms)
                        .bind($crate::store::limit_param(map.max_connections))
                        .bind($crate::store::limit_param(map.max_connections_per_key))
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query($crate::store::sql::INSERT_KEY)
                        .bind(key.id.to_string())
                        .bind(key.map_id.to_string())
                        .bind($crate::auth::hash_hex(&key.hash))
                        .bind(key.created_ms)
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await
                })
                .await
            }

            async fn insert_key(
                &self,
                key: &$crate::store::KeyRecord,
            ) -> Result<(), $crate::store::StoreError> {
                $crate::store::timed(
                    sqlx::query($crate::store::sql::INSERT_KEY)
                        .bind(key.id.to_string())
                        .bind(key.map_id.to_string())
                        .bind($crate::auth::hash_hex(&key.hash))
                        .bind(key.created_ms)
                        .execute(&self.pool),
                )
                .await
                .map(|_| ())
            }

            async fn delete_key(
                &self,
                map_id: ulid::Ulid,
                key_id: ulid::Ulid,
            ) -> Result<bool, $crate::store::StoreError> {
                let done = $crate::store::timed(
                    sqlx::query($crate::store::sql::DELETE_KEY)
                        .bind(key_id.to_string())
                        .bind(map_id.to_string())
                        .execute(&self.pool),
                )
                .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn update_map_limits(
                &self,
                map_id: ulid::Ulid,
                max_connections: Option<u64>,
                max_connections_per_key: Option<u64>,
            ) -> Result<(), $crate::store::StoreError> {
                $crate::store::timed(
                    sqlx::query($crate::store::sql::UPDATE_LIMITS)
                        .bind($crate::store::limit_param(max_connections))
                        .bind($crate::store::limit_param(max_connections_per_key))
                        .bind(map_id.to_string())
                        .execute(&self.pool),
                )
                .await
                .map(|_| ())
            }

            async fn commit(
                &self,
                after: ulid::Ulid,
                now_ms: u64,
                idempotency_ttl_ms: u64,
                publications: &[$crate::store::Publication],
            ) -> Result<$crate::store::Commit, $crate::store::StoreError> {
                $crate::store::timed(self.commit_group(
                    after,
                    now_ms,
                    i64::try_from(idempotency_ttl_ms).unwrap_or(i64::MAX),
                    publications,
                ))
                .await?
            }

            async fn prune_idempotency(
                &self,
                older_than_ms: u64,
            ) -> Result<u64, $crate::store::StoreError> {
                $crate::store::timed(
                    sqlx::query($crate::store::sql::PRUNE_IDEMPOTENCY)
                        .bind(i64::try_from(older_than_ms).unwrap_or(i64::MAX))
                        .execute(&self.pool),
                )
                .await
                .map(|done| done.rows_affected())
            }

            async fn find_map(
                &self,
                id_or_slug: &str,
            ) -> Result<Option<$crate::store::MapRecord>, $crate::store::StoreError> {
                let row = $crate::store::timed(
                    sqlx::query($crate::store::sql::FIND_MAP)
                        .bind(id_or_slug)
                        .fetch_optional(&self.pool),
                )
                .await?;
                row.map(|row| $crate::store::map_row(&row)).transpose()
            }

            async fn find_key(
                &self,
                hash: &$crate::auth::SecretHash,
            ) -> Result<Option<$crate::store::KeyRecord>, $crate::store::StoreError> {
                let row = $crate::store::timed(
                    sqlx::query($crate::store::sql::FIND_KEY)
                        .bind($crate::auth::hash_hex(hash))
                        .fetch_optional(&self.pool),
                )
                .await?;
                row.map(|row| $crate::store::key_row(&row)).transpose()
            }

            async fn newest_event_id(
                &self,
                scope: $crate::store::Scope,
            ) -> Result<Option<ulid::Ulid>, $crate::store::StoreError> {
                let query = match scope {
                    Some(map) => sqlx::query_scalar::<_, String>($crate::store::sql::NEWEST_IN_MAP)
                        .bind(map.to_string()),
                    None => sqlx::query_scalar::<_, String>($crate::store::sql::NEWEST_ANY),
                };
                let id = $crate::store::timed(query.fetch_optional(&self.pool)).await?;
                // The zero id: nothing was ever committed.
                Ok(id
                    .as_deref()
                    .map($crate::store::ulid_column)
                    .transpose()?
                    .filter(|id| !id.is_nil()))
            }

            async fn events_after(
                &self,
                scope: $crate::store::Scope,
                after: ulid::Ulid,
                limit: u32,
            ) -> Result<Vec<$crate::event::Event>, $crate::store::StoreError> {
                let (in_map, any) = <$store>::PACKED_AFTER;
                let query = match scope {
                    Some(map) => sqlx::query_scalar(in_map).bind(map.to_string()),
                    None => sqlx::query_scalar(any),
                };
                let packed: Option<String> = $crate::store::timed(
                    query
                        .bind(after.to_string())
                        .bind(i64::from(limit))
                        .fetch_one(&self.pool),
                )
                .await?;
                $crate::store::unpack_page(packed.as_deref().unwrap_or_default())
            }

            async fn feed_page(
                &self,
                maps: Option<&[ulid::Ulid]>,
                after: ulid::Ulid,
                limit: u32,
            ) -> Result<$crate::store::FeedPage, $crate::store::StoreError> {
                let Some(maps) = maps else {
                    let events = self.events_after(None, after, limit).await?;
                    let newest = events.last().map(|e| e.id);
                    return Ok($crate::store::FeedPage { events, newest });
                };
                let maps = maps
                    .iter()
                    .map(ulid::Ulid::to_string)
                    .collect::<Vec<_>>()
                    .join(",");
                let (newest, packed): (Option<String>, Option<String>) = $crate::store::timed(
                    sqlx::query_as(<$store>::FEED_PAGE)
                        .bind(after.to_string())
                        .bind(maps)
                        .bind(i64::from(limit))
                        .fetch_one(&self.pool),
                )
                .await?;
                Ok($crate::store::FeedPage {
                    events: $crate::store::unpack_page(packed.as_deref().unwrap_or_default())?,
                    newest: newest
                        .as_deref()
                        .map($crate::store::ulid_column)
                        .transpose()?,
                })
            }

            async fn heads_between_desc(
                &self,
                scope: $crate::store::Scope,
                after: ulid::Ulid,
                before: ulid::Ulid,
                limit: u32,
            ) -> Result<Vec<$crate::store::EventHead>, $crate::store::StoreError> {
                use sqlx::Row as _;
                let query = match scope {
                    Some(map) => {
                        sqlx::query($crate::store::sql::HEADS_IN_MAP).bind(map.to_string())
                    }
                    None => sqlx::query($crate::store::sql::HEADS_ANY),
                };
                let rows = $crate::store::timed(
                    query
                        .bind(after.to_string())
                        .bind(before.to_string())
                        .bind(i64::from(limit))
                        .fetch_all(&self.pool),
                )
                .await?;
                rows.iter()
                    .map(|row| {
                        Ok($crate::store::EventHead {
                            id: $crate::store::ulid_column(row.try_get("id")?)?,
                            event_type: row.try_get("type")?,
                            source: row.try_get("source")?,
                        })
                    })
                    .collect()
            }

            async fn id_at_offset_desc(
                &self,
                scope: $crate::store::Scope,
                after: ulid::Ulid,
                offset: u64,
            ) -> Result<Option<ulid::Ulid>, $crate::store::StoreError> {
                let query = match scope {
                    Some(map) => {
                        sqlx::query_scalar::<_, String>($crate::store::sql::OFFSET_DESC_IN_MAP)
                            .bind(map.to_string())
                    }
                    None => sqlx::query_scalar::<_, String>($crate::store::sql::OFFSET_DESC_ANY),
                };
                let offset = i64::try_from(offset).unwrap_or(i64::MAX);
                let id = $crate::store::timed(
                    query
                        .bind(after.to_string())
                        .bind(offset)
                        .fetch_optional(&self.pool),
                )
                .await?;
                id.as_deref().map($crate::store::ulid_column).transpose()
            }

            async fn pruned_through(
                &self,
                scope: $crate::store::Scope,
            ) -> Result<ulid::Ulid, $crate::store::StoreError> {
                let query = match scope {
                    Some(map) => {
                        sqlx::query_scalar::<_, Option<String>>($crate::store::sql::PRUNED_IN_MAP)
                            .bind(map.to_string())
                    }
                    None => sqlx::query_scalar::<_, Option<String>>($crate::store::sql::PRUNED_ANY),
                };
                let id = $crate::store::timed(query.fetch_optional(&self.pool))
                    .await?
                    .flatten();
                Ok(id
                    .as_deref()
                    .map($crate::store::ulid_column)
                    .transpose()?
                    .unwrap_or_default())
            }

            async fn prune(
                &self,
                older_than: ulid::Ulid,
                keep: u64,
            ) -> Result<u64, $crate::store::StoreError> {
                let map_ids: Vec<String> = $crate::store::timed(
                    sqlx::query_scalar($crate::store::sql::MAP_IDS).fetch_all(&self.pool),
                )
                .await?;
                let mut removed = 0;
                for map_id in map_ids {
                    removed += $crate::store::timed(async {
                        let mut tx = self.pool.begin_with(Self::BEGIN_WRITE).await?;
                        let by_age: Option<String> =
                            sqlx::query_scalar($crate::store::sql::CUT_BY_AGE)
                                .bind(&map_id)
                                .bind(older_than.to_string())
                                .fetch_one(&mut *tx)
                                .await?;
                        let by_count: Option<String> =
                            sqlx::query_scalar($crate::store::sql::CUT_BY_COUNT)
                                .bind(&map_id)
                                .bind(i64::try_from(keep).unwrap_or(i64::MAX))
                                .fetch_optional(&mut *tx)
                                .await?;
                        let Some(cut) = $crate::store::retention_cut(by_age, by_count) else {
                            return Ok(0);
                        };
                        let done = sqlx::query($crate::store::sql::DELETE_THROUGH)
                            .bind(&map_id)
                            .bind(&cut)
                            .execute(&mut *tx)
                            .await?;
                        sqlx::query($crate::store::sql::MARK_PRUNED)
                            .bind(&cut)
                            .bind(&map_id)
                            .execute(&mut *tx)
                            .await?;
                        tx.commit().await?;
                        Ok(done.rows_affected())
                    })
                    .await?;
                }
                Ok(removed)
            }
        }
    };
}
pub(crate) use impl_store;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The feed reads the events of the maps it serves, and learns the
    /// newest id of all maps from the same snapshot (run on each store).
    pub(crate) async fn the_feed_reads_its_maps_and_the_newest_id_of_all(store: &dyn Store) {
        let (served, other) = (Ulid::generate(), Ulid::generate());
        let publication = |map_id, event_type: &str| Publication {
            map_id,
            events: vec![NewEvent {
                event_type: event_type.into(),
                source: String::new(),
                payload: "1".into(),
            }],
            idempotency: None,
        };
        let now_ms = Ulid::generate().timestamp_ms();
        let commit = store
            .commit(
                Ulid::nil(),
                now_ms,
                0,
                &[
                    publication(served, "a"),
                    publication(served, "b"),
                    publication(other, "c"),
                    publication(served, "d"),
                    publication(other, "e"),
                ],
            )
            .await
            .expect("commit");
        let ids: Vec<Ulid> = commit.events.iter().map(|e| e.id).collect();
        let read = |page: &FeedPage| page.events.iter().map(|e| e.id).collect::<Vec<_>>();

        let page = store
            .feed_page(Some(&[served]), Ulid::nil(), 10)
            .await
            .expect("read");
        assert_eq!(
            read(&page),
            [ids[0], ids[1], ids[3]],
            "only the served map's"
        );
        assert_eq!(page.newest, Some(ids[4]), "the newest of all maps");
        let full = store
            .feed_page(Some(&[served]), Ulid::nil(), 2)
            .await
            .expect("read");
        assert_eq!(read(&full), ids[..2]);
        let none = store.feed_page(Some(&[]), ids[1], 10).await.expect("read");
        assert!(none.events.is_empty());
        assert_eq!(none.newest, Some(ids[4]));
        let every = store.feed_page(None, ids[2], 10).await.expect("read");
        assert_eq!(read(&every), ids[3..]);
        assert_eq!(every.newest, Some(ids[4]));
        let past = store
            .feed_page(Some(&[served]), ids[4], 10)
            .await
            .expect("read");
        assert!(past.events.is_empty() && past.newest.is_none());
    }

    #[tokio::test]
    async fn the_feed_reads_its_maps_and_the_newest_id_of_all_on_sqlite() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("feed.db").display());
        let store = sqlite::SqliteStore::connect(&url).await.expect("open");
        store.migrate().await.expect("migrations");
        the_feed_reads_its_maps_and_the_newest_id_of_all(&store).await;
    }

    /// A retention pass writes beside the writer: a keyed commit reads its
    /// keys before it writes, and must still never fail ("database is
    /// locked" was a 503 to the publisher).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keyed_commits_beside_retention_passes_never_fail_on_sqlite() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("busy.db").display());
        let store = std::sync::Arc::new(sqlite::SqliteStore::connect(&url).await.expect("open"));
        store.migrate().await.expect("migrations");
        let map_id = Ulid::generate();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let pruner = tokio::spawn({
            let (store, done) = (std::sync::Arc::clone(&store), std::sync::Arc::clone(&done));
            async move {
                let mut passes = 0;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    store.prune(Ulid::nil(), 1).await.expect("retention pass");
                    store.prune_idempotency(0).await.expect("key expiry");
                    passes += 1;
                }
                passes
            }
        });
        let mut last = Ulid::nil();
        for i in 0..300 {
            let publication = Publication {
                map_id,
                events: vec![NewEvent {
                    event_type: "t".into(),
                    source: String::new(),
                    payload: "1".into(),
                }],
                idempotency: Some(Idempotency {
                    key: format!("k{i}"),
                    body_hash: "h".into(),
                }),
            };
            let now_ms = Ulid::generate().timestamp_ms();
            let commit = store
                .commit(last, now_ms, 60_000, &[publication])
                .await
                .unwrap_or_else(|err| panic!("commit {i} failed: {err}"));
            last = commit.events.last().map_or(last, |e| e.id);
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(pruner.await.expect("pruner") > 1, "passes ran alongside");
    }

    #[test]
    fn databases_are_described_without_credentials() {
        let pg = describe("postgres://herald:s3cret@db.example:6543/relay?sslmode=disable");
        assert_eq!(pg, "PostgreSQL database `relay` at db.example:6543");
        assert!(!pg.contains("s3cret"));
        assert_eq!(
            describe("sqlite://data/herald.db"),
            "SQLite database file data/herald.db"
        );
    }

    #[test]
    fn ids_increase_even_when_the_clock_is_behind() {
        let last = Ulid::from_parts(2_000, 5);
        assert_eq!(propose_ids(last, 1_000, 1), [Ulid::from_parts(2_000, 6)]);
        let same_ms = propose_ids(last, 2_000, 1)[0];
        assert!(same_ms > last && same_ms.timestamp_ms() == 2_000);
        let later = propose_ids(last, 3_000, 2);
        assert_eq!(later[0].timestamp_ms(), 3_000);
        assert_eq!(later[1].0, later[0].0 + 1, "consecutive");
    }

    #[test]
    fn a_binding_keeps_a_publications_ids_as_the_first_and_the_count() {
        let ids = propose_ids(Ulid::from_parts(2_000, 5), 3_000, 100);
        let text = binding_ids(&ids);
        assert_eq!(text, format!("{}*100", ids[0]));
        assert_eq!(bound_ids(&text).expect("read"), ids);
        assert_eq!(binding_ids(&ids[..1]), ids[0].to_string());
        assert_eq!(bound_ids(&ids[0].to_string()).expect("read"), ids[..1]);
        let scattered = [ids[0], ids[2], ids[7]];
        let listed = binding_ids(&scattered);
        assert_eq!(listed.matches(',').count(), 2, "listed: {listed}");
        assert_eq!(bound_ids(&listed).expect("read"), scattered);
        for corrupt in [
            format!("{}*", ids[0]),
            format!("{}*-1", ids[0]),
            format!("{}*99999999999", ids[0]),
            "nonsense*3".to_string(),
        ] {
            assert!(bound_ids(&corrupt).is_err(), "{corrupt}");
        }
    }

    #[test]
    fn a_group_shares_one_prefix() {
        let near_the_end = Ulid(Ulid::from_parts(2_000, 0).0 | (ID_TAIL - 1));
        let ids = propose_ids(near_the_end, 1_000, 3);
        assert!(ids[0] > near_the_end);
        assert!(ids
            .iter()
            .all(|id| id.0 >> ID_TAIL_BITS == ids[0].0 >> ID_TAIL_BITS));
        assert_eq!(ids[0].0 & ID_TAIL, 0, "starts the next prefix");
        assert_eq!(ids[2].0, ids[0].0 + 2);
    }

    #[test]
    fn a_group_gets_increasing_ids_after_the_previous_one() {
        let new = |t: &str| NewEvent {
            event_type: t.into(),
            source: String::new(),
            payload: "1".into(),
        };
        let (a, b) = (Ulid::from_parts(1, 1), Ulid::from_parts(1, 2));
        let publications = [
            Publication {
                map_id: a,
                events: vec![new("x"), new("y")],
                idempotency: None,
            },
            Publication {
                map_id: b,
                events: vec![new("z")],
                idempotency: None,
            },
        ];
        // A clock ten minutes behind the newest id.
        let previous = Ulid::from_parts(600_000, 7);
        let events = assign_ids(previous, 0, &publications);
        let ids: Vec<Ulid> = events.iter().map(|e| e.id).collect();
        assert_eq!(
            ids,
            [8, 9, 10].map(|n| Ulid::from_parts(600_000, n)),
            "previous + 1, + 2, + 3"
        );
        let maps: Vec<Ulid> = events.iter().map(|e| e.map_id).collect();
        assert_eq!(maps, [a, a, b]);
        let on_time = assign_ids(previous, 700_000, &publications);
        assert_eq!(on_time[0].id.timestamp_ms(), 700_000);
        assert!(on_time.windows(2).all(|w| w[0].id < w[1].id));
    }

    #[test]
    fn unpacks_a_page_in_order_with_payloads_intact() {
        let map = Ulid::from_parts(1, 1);
        let (a, b) = (Ulid::from_parts(2, 2), Ulid::from_parts(3, 3));
        let tricky = r#"{"s":"\u0000 \"é\" \\","n":[1.50,-0e3]}"#;
        let packed = format!(
            "{map}\u{1f}{a}\u{1f}t.a\u{1f}\u{1f}{tricky}\u{1e}{map}\u{1f}{b}\u{1f}t.b\u{1f}src\u{1f}7"
        );
        let events = unpack_page(&packed).expect("unpacks");
        assert_eq!(events.len(), 2);
        assert_eq!((events[0].id, events[0].map_id), (a, map));
        assert_eq!(events[0].event_type, "t.a");
        assert_eq!(events[0].source, "");
        assert_eq!(events[0].payload(), tricky);
        assert_eq!((events[1].id, events[1].source.as_str()), (b, "src"));
        assert_eq!(events[1].payload(), "7");
        assert!(unpack_page("").expect("empty").is_empty());
    }

    #[test]
    fn records_aggregated_out_of_order_come_back_in_id_order() {
        let map = Ulid::from_parts(1, 1);
        let ids = [
            Ulid::from_parts(5, 0),
            Ulid::from_parts(3, 0),
            Ulid::from_parts(4, 0),
        ];
        let packed = ids
            .iter()
            .map(|id| format!("{map}\u{1f}{id}\u{1f}t\u{1f}s\u{1f}{{}}"))
            .collect::<Vec<_>>()
            .join("\u{1e}");
        let events = unpack_page(&packed).expect("unpacks");
        let got: Vec<Ulid> = events.iter().map(|e| e.id).collect();
        assert_eq!(got, [ids[1], ids[2], ids[0]]);
    }

    #[test]
    fn a_damaged_record_is_corrupt_not_a_panic() {
        let map = Ulid::from_parts(1, 1);
        assert!(matches!(
            unpack_page(&format!("{map}\u{1f}not-a-ulid\u{1f}t\u{1f}s\u{1f}1")),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            unpack_page(&format!("{map}\u{1f}{}", Ulid::from_parts(2, 2))),
            Err(StoreError::Corrupt(_))
        ));
    }
}
