//! PostgreSQL store (production): a pool with bounded waits, batch inserts
//! with `UNNEST` (one statement per group commit).

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};

use ulid::Ulid;

use sqlx::Row as _;

use super::{
    binding_ids, build_events, propose_ids, settle, ulid_column, with_prefix, BoundKey, Commit,
    Publication, StoreError,
};

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
    const FEED_PAGE: &'static str = super::sql::POSTGRES_FEED_PAGE;
    const BEGIN_WRITE: &'static str = "BEGIN";

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
            // Commits run the same statements thousands of times a second:
            // planned once (generic plans), not at every run.
            writer: lazy_pool(
                WRITER_CONNECTIONS,
                options.options([("plan_cache_mode", "force_generic_plan")]),
            ),
        })
    }

    async fn run_migrations(&self) -> Result<(), StoreError> {
        sqlx::migrate!("./migrations/postgres")
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Unavailable(format!("migration failed: {e}")))
    }

    /// Commits a group in one round trip ([`COMMIT`], or
    /// `herald_commit_keyed` when it has idempotency keys): the id clock's
    /// row lock is held until commit, so commits of every node are
    /// serialized and id order is commit order; the ids proposed here are
    /// moved after the clock when another node committed since this one
    /// last heard, and the group's keys are checked and bound under the
    /// same lock.
    async fn commit_group(
        &self,
        after: Ulid,
        now_ms: u64,
        idempotency_ttl_ms: i64,
        publications: &[Publication],
    ) -> Result<Result<Commit, StoreError>, sqlx::Error> {
        let count = publications.iter().map(|p| p.events.len()).sum();
        let proposed = propose_ids(after, now_ms, count);
        let mut map_ids = Vec::with_capacity(count);
        let mut types = Vec::with_capacity(count);
        let mut sources = Vec::with_capacity(count);
        let mut payloads = Vec::with_capacity(count);
        let mut event_keys: Vec<Option<&str>> = Vec::with_capacity(count);
        let (mut key_maps, mut keys, mut hashes, mut key_ids) = (vec![], vec![], vec![], vec![]);
        let mut start = 0;
        for publication in publications {
            let map_id = publication.map_id.to_string();
            let key = publication.idempotency.as_ref();
            for new in &publication.events {
                map_ids.push(map_id.clone());
                types.push(new.event_type.as_str());
                sources.push(new.source.as_str());
                payloads.push(new.payload.as_str());
                event_keys.push(key.map(|k| k.key.as_str()));
            }
            let mine = &proposed[start..start + publication.events.len()];
            start += mine.len();
            if let Some(idem) = key {
                key_maps.push(map_id);
                keys.push(idem.key.as_str());
                hashes.push(idem.body_hash.as_str());
                key_ids.push(binding_ids(mine));
            }
        }
        let ids: Vec<String> = proposed.iter().map(Ulid::to_string).collect();
        let plain = |sql| {
            sqlx::query(sql)
                .bind(&map_ids)
                .bind(&ids)
                .bind(&types)
                .bind(&sources)
                .bind(&payloads)
                .bind(ids.first())
                .bind(ids.last())
        };
        if keys.is_empty() {
            let rows = plain(COMMIT).fetch_all(&self.writer).await?;
            return Ok(answer(publications, proposed, &rows, false));
        }
        // A key is almost always new: it is bound in the plain commit's
        // statement, without looking anything up, and the bindings' primary
        // key finds the rare one that is not (a retry, a binding expired but
        // not yet pruned, another node binding it meanwhile). That refusal
        // undoes the whole statement; the group is then committed by the
        // function, which looks every key up under the clock's lock first.
        let new_keys = plain(COMMIT_NEW_KEYS)
            .bind(&key_maps)
            .bind(&keys)
            .bind(&hashes)
            .bind(&key_ids)
            .fetch_all(&self.writer)
            .await;
        match new_keys {
            Ok(rows) => return Ok(answer(publications, proposed, &rows, false)),
            Err(err) if binds_a_bound_key(&err) => {}
            Err(err) => return Err(err),
        }
        let rows = sqlx::query(COMMIT_KEYED)
            .bind(&map_ids)
            .bind(&ids)
            .bind(&types)
            .bind(&sources)
            .bind(&payloads)
            .bind(&event_keys)
            .bind(&key_maps)
            .bind(&keys)
            .bind(&hashes)
            .bind(&key_ids)
            .bind(idempotency_ttl_ms)
            .fetch_all(&self.writer)
            .await?;
        Ok(answer(publications, proposed, &rows, true))
    }
}

/// Whether a commit was refused because one of its keys has a binding.
fn binds_a_bound_key(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db)
        if db.is_unique_violation() && db.table() == Some("idempotency_keys"))
}

/// The commit statement ([`COMMIT`]), with more common table expressions
/// (data-modifying ones all run) before its final `SELECT`.
macro_rules! commit_statement {
    ($($more:literal),*) => {
        concat!(
            "WITH clock AS (",
            "UPDATE id_clock SET previous_id = last_id, last_id = CASE WHEN $6 COLLATE \"C\" > last_id ",
            "THEN $7 ELSE herald_prefix_after(last_id) || substr($7, 15) END ",
            "RETURNING previous_id, NULLIF(substr(last_id, 1, 14), substr($7, 1, 14)) AS prefix",
            "), as_proposed AS (",
            "INSERT INTO events (map_id, id, type, source, payload) ",
            "SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) ",
            "WHERE (SELECT prefix FROM clock) IS NULL",
            "), moved AS (",
            "INSERT INTO events (map_id, id, type, source, payload) ",
            "SELECT e.map_id, (SELECT prefix FROM clock) || substr(e.id, 15), e.type, e.source, e.payload ",
            "FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) ",
            "AS e (map_id, id, type, source, payload) WHERE (SELECT prefix FROM clock) IS NOT NULL",
            $($more,)*
            ") SELECT previous_id, prefix AS moved_prefix FROM clock"
        )
    };
}

/// Inserts a group's events and moves the id clock, in one statement. The
/// clock's UPDATE takes its row lock, held until commit, and sees the
/// clock as the last commit left it (even one that committed while this
/// statement waited for the lock); when the ids proposed (`$2`, from `$6`
/// to `$7`) are not after it, they are inserted with the prefix after the
/// clock's (see the `0004_commit_function` migration). Answers the clock's
/// previous id and the prefix given, if any.
const COMMIT: &str = commit_statement!();

/// [`COMMIT`] that also binds the group's keys (`$8` maps, `$9` keys, `$10`
/// body hashes, `$11` ids, moved with the events when they are), none of
/// which may have a binding: a key that has one fails the statement.
const COMMIT_NEW_KEYS: &str = commit_statement!(
    "), bound AS (",
    "INSERT INTO idempotency_keys (map_id, key, body_hash, ids, created_ms) ",
    "SELECT u.map_id, u.key, u.body_hash, CASE WHEN (SELECT prefix FROM clock) IS NULL ",
    "THEN u.ids ELSE regexp_replace(u.ids, '[0-9A-Z]{14}([0-9A-Z]{12})', ",
    "(SELECT prefix FROM clock) || '\\1', 'g') END, ",
    "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT ",
    "FROM UNNEST($8::text[], $9::text[], $10::text[], $11::text[]) ",
    "AS u (map_id, key, body_hash, ids)"
);

/// Commits a group with idempotency keys: see `herald_commit_keyed`.
const COMMIT_KEYED: &str = "SELECT * FROM herald_commit_keyed($1::text[], $2::text[], \
     $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], \
     $10::text[], $11)";

/// Reads a commit's answer: the clock's previous id, the prefix the
/// proposed ids were moved to, if any, and (`keyed`: the group had keys)
/// the live bindings found.
fn answer(
    publications: &[Publication],
    mut ids: Vec<Ulid>,
    rows: &[PgRow],
    keyed: bool,
) -> Result<Commit, StoreError> {
    let column = |row: &PgRow, name: &str| -> Result<Option<String>, StoreError> {
        row.try_get(name).map_err(StoreError::from)
    };
    let first = rows
        .first()
        .ok_or_else(|| StoreError::Unavailable("the commit answered no row".into()))?;
    let previous = ulid_column(&column(first, "previous_id")?.unwrap_or_default())?;
    if let Some(prefix) = column(first, "moved_prefix")? {
        let prefix = ulid_column(&format!("{prefix:0<26}"))?;
        for id in &mut ids {
            *id = with_prefix(*id, prefix);
        }
    }
    let mut bound = Vec::new();
    for row in rows.iter().filter(|_| keyed) {
        let (Some(map_id), Some(key), Some(body_hash), Some(ids)) = (
            column(row, "bound_map")?,
            column(row, "bound_key")?,
            column(row, "bound_hash")?,
            column(row, "bound_ids")?,
        ) else {
            continue;
        };
        bound.push(BoundKey {
            map_id: ulid_column(&map_id)?,
            key,
            body_hash,
            ids,
        });
    }
    settle(
        previous,
        publications,
        build_events(publications, &ids),
        &bound,
    )
}

super::impl_store!(PgStore);

#[cfg(test)]
mod tests {
    //! The commit function on a real PostgreSQL (`HERALD_TEST_DATABASE_URL`),
    //! in a schema of its own.

    use super::*;
    use crate::event::NewEvent;
    use crate::store::{Idempotency, Outcome, Store, ID_TAIL};

    fn publication(map_id: Ulid, types: &[&str], key: Option<&str>) -> Publication {
        Publication {
            map_id,
            events: types
                .iter()
                .map(|t| NewEvent {
                    event_type: (*t).into(),
                    source: String::new(),
                    payload: "1".into(),
                })
                .collect(),
            idempotency: key.map(|key| Idempotency {
                key: key.into(),
                body_hash: "h".into(),
            }),
        }
    }

    fn created(outcome: &Outcome) -> Vec<Ulid> {
        match outcome {
            Outcome::Created(ids) => ids.clone(),
            other => panic!("created nothing: {other:?}"),
        }
    }

    /// A migrated store in a schema of its own, and the future that drops it.
    async fn fresh_store() -> (PgStore, impl std::future::Future<Output = ()>) {
        let base = std::env::var("HERALD_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let schema = format!("u_{}", Ulid::generate().to_string().to_lowercase());
        let admin = PgPool::connect(&base).await.expect("PostgreSQL for tests");
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&admin)
            .await
            .expect("schema");
        let sep = if base.contains('?') { '&' } else { '?' };
        let store =
            PgStore::connect(&format!("{base}{sep}options[search_path]={schema}")).expect("url");
        store.migrate().await.expect("migrations");
        let cleanup = async move {
            sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
                .execute(&admin)
                .await
                .expect("drop schema");
        };
        (store, cleanup)
    }

    /// A keyed commit that waited for the clock while another node bound the
    /// same key answers from that binding, creates nothing and does not fail:
    /// its lookups see what was committed before the lock was granted.
    #[tokio::test]
    async fn a_keyed_commit_that_waited_for_a_binding_of_its_key_replays_it() {
        let (store, cleanup) = fresh_store().await;
        let map = Ulid::generate();
        let now_ms = Ulid::generate().timestamp_ms();
        store
            .commit(
                Ulid::nil(),
                now_ms,
                60_000,
                &[publication(map, &["a"], None)],
            )
            .await
            .expect("first commit");

        // The other node's commit: it holds the clock while this one starts.
        let theirs = Ulid::from_parts(now_ms + 1_000, 1).to_string();
        let mut other = store.writer.begin().await.expect("begin");
        for sql in [
            "UPDATE id_clock SET previous_id = last_id, last_id = $1",
            "INSERT INTO events (map_id, id, type, source, payload) VALUES ($2, $1, 'b', '', '1')",
            "INSERT INTO idempotency_keys (map_id, key, body_hash, ids, created_ms) \
             VALUES ($2, 'k', 'h', $1, $3)",
        ] {
            sqlx::query(sql)
                .bind(&theirs)
                .bind(map.to_string())
                .bind(i64::try_from(now_ms).expect("ms"))
                .execute(&mut *other)
                .await
                .expect("the other node's commit");
        }
        let mine = [publication(map, &["c"], Some("k"))];
        let (retry, ()) = tokio::join!(store.commit(Ulid::nil(), now_ms, 60_000, &mine), async {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            other.commit().await.expect("the other node commits");
        });
        let retry = retry.expect("commit after the other node's");
        assert!(retry.events.is_empty(), "created {:?}", retry.events);
        match &retry.outcomes[0] {
            Outcome::Replayed(ids) => assert_eq!(ids[..], [theirs.parse::<Ulid>().expect("id")]),
            other => panic!("not replayed: {other:?}"),
        }
        let types: Vec<String> = store
            .events_after(Some(map), Ulid::nil(), 10)
            .await
            .expect("read")
            .iter()
            .map(|e| e.event_type.clone())
            .collect();
        assert_eq!(types, ["a", "b"], "nothing of the retry was stored");
        cleanup.await;
    }

    /// A node that did not hear of another's commit proposes ids before the
    /// clock: they are moved after it, in order, and the answer, the stored
    /// events and a retry's replay all carry the ids as committed.
    #[tokio::test]
    async fn a_commit_behind_the_clock_is_moved_after_it() {
        let (store, cleanup) = fresh_store().await;
        let map = Ulid::generate();
        let now_ms = Ulid::generate().timestamp_ms();

        let first = store
            .commit(
                Ulid::nil(),
                now_ms,
                60_000,
                &[publication(map, &["a"], None)],
            )
            .await
            .expect("first commit");
        // Proposed a minute behind the first commit, from an old cursor.
        let stale = [
            publication(map, &["b", "c"], Some("k")),
            publication(map, &["d"], None),
        ];
        let moved = store
            .commit(Ulid::nil(), now_ms - 60_000, 60_000, &stale)
            .await
            .expect("commit behind the clock");
        assert_eq!(moved.previous, first.through, "previous is the clock's");
        let ids: Vec<Ulid> = moved.events.iter().map(|e| e.id).collect();
        assert!(ids[0] > first.through, "{ids:?} after {}", first.through);
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order: {ids:?}");
        assert_eq!(moved.through, ids[2]);
        assert_eq!(created(&moved.outcomes[0]), ids[..2]);
        assert_eq!(created(&moved.outcomes[1]), ids[2..]);

        let stored: Vec<Ulid> = store
            .events_after(Some(map), Ulid::nil(), 10)
            .await
            .expect("read")
            .iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(stored[0], first.events[0].id);
        assert_eq!(stored[1..], ids[..]);

        let retry = store
            .commit(Ulid::nil(), now_ms - 60_000, 60_000, &stale[..1])
            .await
            .expect("retry");
        assert!(retry.events.is_empty(), "a retry creates nothing");
        match &retry.outcomes[0] {
            Outcome::Replayed(replayed) => assert_eq!(replayed[..], ids[..2]),
            other => panic!("not replayed: {other:?}"),
        }
        // The same without keys (the one-statement commit).
        let plain = store
            .commit(Ulid::nil(), now_ms - 60_000, 60_000, &stale[1..])
            .await
            .expect("plain commit behind the clock");
        assert_eq!(plain.previous, retry.through);
        assert!(plain.events[0].id > retry.through);
        let newest = store.newest_event_id(Some(map)).await.expect("newest");
        assert_eq!(newest, Some(plain.events[0].id), "stored as answered");
        cleanup.await;
    }

    /// New keys are bound by the plain commit's statement; a group holding
    /// a retry among new keys and events without a key is refused there by
    /// the retry's binding and committed by the function: the retry replays,
    /// the others are created once, nothing of the refused statement stays.
    #[tokio::test]
    async fn a_retry_among_new_keys_replays_and_the_rest_is_created_once() {
        let (store, cleanup) = fresh_store().await;
        let map = Ulid::generate();
        let now_ms = Ulid::generate().timestamp_ms();
        let first = [publication(map, &["a1", "a2"], Some("a"))];
        let a = store
            .commit(Ulid::nil(), now_ms, 60_000, &first)
            .await
            .expect("first keyed commit");
        let a_ids = created(&a.outcomes[0]);

        let group = [
            publication(map, &["b"], Some("b")),
            first[0].clone(),
            publication(map, &["c"], None),
        ];
        let mixed = store
            .commit(a.through, now_ms, 60_000, &group)
            .await
            .expect("a group with a retry");
        let b_ids = created(&mixed.outcomes[0]);
        match &mixed.outcomes[1] {
            Outcome::Replayed(ids) => assert_eq!(ids, &a_ids),
            other => panic!("not replayed: {other:?}"),
        }
        let c_ids = created(&mixed.outcomes[2]);
        assert_eq!(mixed.previous, a.through);

        let stored: Vec<(Ulid, String)> = store
            .events_after(Some(map), Ulid::nil(), 10)
            .await
            .expect("read")
            .iter()
            .map(|e| (e.id, e.event_type.clone()))
            .collect();
        let expected: Vec<(Ulid, String)> = [a_ids, b_ids, c_ids]
            .concat()
            .into_iter()
            .zip(["a1", "a2", "b", "c"].map(String::from))
            .collect();
        assert_eq!(stored, expected, "each event once, in id order");
        let bindings: i64 = sqlx::query_scalar("SELECT count(*) FROM idempotency_keys")
            .fetch_one(&store.pool)
            .await
            .expect("count");
        assert_eq!(bindings, 2);
        cleanup.await;
    }

    /// The commit function renews an expired binding it found even when
    /// retention deletes that binding before the renewal: the key stays
    /// bound to the new events (a retry must not create them again).
    #[tokio::test]
    async fn an_expired_binding_pruned_during_its_renewal_is_bound_again() {
        let (store, cleanup) = fresh_store().await;
        let map = Ulid::generate();
        let now_ms = Ulid::generate().timestamp_ms();
        let first = store
            .commit(
                Ulid::nil(),
                now_ms,
                1,
                &[publication(map, &["a"], Some("k"))],
            )
            .await
            .expect("first keyed commit");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;

        // Retention's delete, not yet committed when the function looks up.
        let mut pruning = store.writer.begin().await.expect("begin");
        sqlx::query("DELETE FROM idempotency_keys WHERE key = 'k'")
            .execute(&mut *pruning)
            .await
            .expect("delete");
        let id = propose_ids(first.through, now_ms, 1)[0].to_string();
        let (map, key) = (map.to_string(), "k".to_string());
        let strings = |value: &str| vec![value.to_string()];
        let renewal = sqlx::query(COMMIT_KEYED)
            .bind(strings(&map))
            .bind(strings(&id))
            .bind(strings("b"))
            .bind(strings(""))
            .bind(strings("1"))
            .bind(strings(&key))
            .bind(strings(&map))
            .bind(strings(&key))
            .bind(strings("h"))
            .bind(strings(&id))
            .bind(1_i64)
            .fetch_all(&store.writer);
        let (renewed, ()) = tokio::join!(renewal, async {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            pruning.commit().await.expect("retention commits");
        });
        renewed.expect("commit with an expired binding");
        let bound: Vec<String> = sqlx::query_scalar("SELECT ids FROM idempotency_keys")
            .fetch_all(&store.pool)
            .await
            .expect("bindings");
        assert_eq!(bound, [id], "the key is bound to the new event");
        cleanup.await;
    }

    /// A binding is stored as the first id and the count, and the commit
    /// function answers it as the list that nodes of an older build read.
    #[tokio::test]
    async fn bindings_are_stored_compact_and_answered_as_lists() {
        let (store, cleanup) = fresh_store().await;
        let map = Ulid::generate();
        let now_ms = Ulid::generate().timestamp_ms();
        let batch = [publication(map, &["a", "b", "c"], Some("k"))];
        let first = store
            .commit(Ulid::nil(), now_ms, 60_000, &batch)
            .await
            .expect("keyed commit");
        let ids = created(&first.outcomes[0]);
        let stored: String = sqlx::query_scalar("SELECT ids FROM idempotency_keys")
            .fetch_one(&store.pool)
            .await
            .expect("binding");
        assert_eq!(stored, format!("{}*3", ids[0]));

        let listed = |ids: &[Ulid]| {
            ids.iter()
                .map(Ulid::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        let expand = |text: String| {
            sqlx::query_scalar::<_, String>("SELECT herald_expand_ids($1)")
                .bind(text)
                .fetch_one(&store.pool)
        };
        // Tails from random bits, and one ending at the top of the tail.
        let top = Ulid((Ulid::from_parts(now_ms, 0).0 | ID_TAIL) - 100);
        for ids in [
            propose_ids(Ulid::nil(), now_ms, 100),
            propose_ids(top, 0, 100),
        ] {
            assert_eq!(ids[99].0 & ID_TAIL, (ids[0].0 & ID_TAIL) + 99, "one prefix");
            let answered = expand(binding_ids(&ids)).await.expect("expand");
            assert_eq!(answered, listed(&ids));
        }
        let lone = ids[0].to_string();
        assert_eq!(expand(lone.clone()).await.expect("expand"), lone);
        assert_eq!(expand(listed(&ids)).await.expect("expand"), listed(&ids));
        cleanup.await;
    }

    #[tokio::test]
    async fn the_feed_reads_its_maps_and_the_newest_id_of_all() {
        let (store, cleanup) = fresh_store().await;
        crate::store::tests::the_feed_reads_its_maps_and_the_newest_id_of_all(&store).await;
        cleanup.await;
    }
}
