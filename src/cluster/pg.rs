//! The cluster's PostgreSQL side: the nodes table and its heartbeat, the
//! cluster-wide connection slots (`herald_admit`), SSE tokens, and the `herald`
//! notification channel — sent after commits (coalesced), listened to on a
//! connection of its own that is re-established whenever it drops.
//!
//! Messages on the channel (all under 8,000 bytes): `e:<id>:<schema>`
//! events were committed through `<id>` in the tables of `<schema>` (the
//! channel is the database's: a node ignores other schemas' commits); `d`
//! the directory changed (sent by a trigger, so `herald map create` sends
//! it too); `c:<id>` a stream is to be closed; `n` a node joined (the
//! others start notifying at once, not at their next heartbeat).

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::Row as _;
use tokio::sync::{mpsc, watch};
use ulid::Ulid;

use super::{ConnectionView, Counters, NodeView, Signal};
use crate::auth::{hash_hex, SecretHash};
use crate::connections::ConnectionInfo;
use crate::sse_tokens::TokenGrant;
use crate::store::offload::StoreRuntime;
use crate::store::{timed, ulid_column, StoreError};

/// The notification channel.
const CHANNEL: &str = "herald";
/// Connections for admissions, releases, heartbeats and admin views.
const MAX_CONNECTIONS: u32 = 4;
/// A connect waits this long for a pooled connection at most.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause between attempts to re-establish the listening connection.
const RELISTEN_PAUSE: Duration = Duration::from_millis(250);
/// How long an admin's close request waits for the node of its stream to
/// come back (a node away longer has surely been restarted since).
const CLOSE_REQUEST_LIFETIME_MS: i64 = 24 * 3600 * 1000;

/// The database's clock in milliseconds, in SQL.
macro_rules! db_now {
    () => {
        "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT"
    };
}

/// The cluster tables of one database, used by one node.
pub struct PgCluster {
    pool: PgPool,
    listen_options: PgConnectOptions,
    runtime: Arc<StoreRuntime>,
    /// The newest id this node committed, for the notifier task.
    committed: watch::Sender<Option<Ulid>>,
    /// The notifier's own connection, so that a notification never waits
    /// behind a burst of admissions for one of the pool's. Like the pool's,
    /// its commits do not wait for the disk: a notification is only a
    /// wake-up, and one per group commit must not double the fsyncs of the
    /// commits themselves.
    notifier: PgPool,
    /// The schema of the cluster's tables, learnt when the node registers.
    schema: OnceLock<String>,
    /// Other live nodes exist (as of the last heartbeat): alone, a node
    /// notifies nobody.
    others: AtomicBool,
    node_timeout_ms: i64,
}

fn ulids(ids: &[Ulid]) -> Vec<String> {
    ids.iter().map(Ulid::to_string).collect()
}

fn opt_ulid(text: Option<String>) -> Result<Option<Ulid>, StoreError> {
    text.as_deref().map(ulid_column).transpose()
}

/// The grant of an `sse_tokens` row with its `valid` flag, if it is valid.
fn grant_of(row: Option<PgRow>) -> Result<Option<TokenGrant>, StoreError> {
    let Some(row) = row else { return Ok(None) };
    if !row.try_get::<bool, _>("valid")? {
        return Ok(None);
    }
    Ok(Some(TokenGrant {
        map_id: ulid_column(row.try_get("map_id")?)?,
        key_id: opt_ulid(row.try_get("key_id")?)?,
    }))
}

impl PgCluster {
    /// Prepares the pools of node `name` (nothing is dialled yet).
    ///
    /// # Errors
    /// A malformed URL.
    pub fn new(
        url: &str,
        name: &str,
        node_timeout: Duration,
        runtime: Arc<StoreRuntime>,
    ) -> Result<Self, StoreError> {
        let options =
            PgConnectOptions::from_str(url).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        // Bookkeeping of live state (nodes, streams and their slots, close
        // requests, SSE tokens), not data: after a crash of the database,
        // nodes register again with their streams. Its commits do not wait
        // for the disk, so an admission holds its map's lock for the
        // statement only, not for an fsync: with an fsync, 64 connects to
        // one map queued 40-80 ms each.
        let bookkeeping = options
            .clone()
            .application_name(&format!("herald:{name}"))
            .options([("synchronous_commit", "off")]);
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(bookkeeping.clone());
        let notifier = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(bookkeeping);
        let listen_options = options.application_name(&format!("herald-listen:{name}"));
        Ok(Self {
            pool,
            listen_options,
            runtime,
            committed: watch::channel(None).0,
            notifier,
            schema: OnceLock::new(),
            others: AtomicBool::new(true),
            node_timeout_ms: i64::try_from(node_timeout.as_millis()).unwrap_or(i64::MAX),
        })
    }

    /// Runs `call` with the pool on the store runtime, with the store timeout.
    async fn run<T, F>(&self, call: impl FnOnce(PgPool) -> F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T, sqlx::Error>> + Send + 'static,
    {
        let call = call(self.pool.clone());
        self.runtime.run(async move { timed(call).await }).await
    }

    /// Adds this node to the nodes table; returns the database's time.
    ///
    /// # Errors
    /// The database is unreachable.
    pub async fn register(&self, id: Ulid, name: &str) -> Result<i64, StoreError> {
        let (id, owned_name) = (id.to_string(), name.to_owned());
        let timeout = self.node_timeout_ms;
        let (started, others, namesakes, schema): (i64, i64, i64, String) = self
            .run(|pool| async move {
                sqlx::query_as(concat!(
                    "INSERT INTO nodes (id, name, started_ms, last_seen_ms) \
                     VALUES ($1, $2, ",
                    db_now!(),
                    ", ",
                    db_now!(),
                    ") RETURNING started_ms, (SELECT count(*) FROM nodes \
                     WHERE last_seen_ms > ",
                    db_now!(),
                    " - $3), (SELECT count(*) FROM nodes WHERE name = $2 AND last_seen_ms > ",
                    db_now!(),
                    " - $3), current_schema()"
                ))
                .bind(id)
                .bind(owned_name)
                .bind(timeout)
                .fetch_one(&pool)
                .await
            })
            .await?;
        if namesakes > 0 {
            // Not refused: a node restarted at once finds its own last run
            // there until the node timeout.
            log::warn!(
                "a node named `{name}` was seen within the node timeout: unless it was this \
                 node's last run, admin views cannot tell the two apart (set cluster.node_name)"
            );
        }
        let _ = self.schema.set(schema);
        self.others.store(others > 0, Ordering::Relaxed);
        if others > 0 {
            let pool = self.notifier.clone();
            let hello = self.runtime.run(async move {
                timed(
                    sqlx::query("SELECT pg_notify($1, 'n')")
                        .bind(CHANNEL)
                        .execute(&pool),
                )
                .await
                .map(|_| ())
            });
            if let Err(err) = hello.await {
                // Their next heartbeat tells them.
                log::debug!("cannot announce this node: {err}");
            }
        }
        Ok(started)
    }

    /// Another node joined: notify commits from now on.
    pub fn not_alone(&self) {
        self.others.store(true, Ordering::Relaxed);
    }

    /// Says this node is alive, with its counters. Returns the database's
    /// time, or `None` when the node was taken for dead: its row is gone,
    /// or silent for longer than the node timeout (others already admit
    /// streams as if its slots were free, before any reaping).
    ///
    /// # Errors
    /// The database is unreachable.
    pub async fn heartbeat(&self, id: Ulid, counters: Counters) -> Result<Option<i64>, StoreError> {
        let id = id.to_string();
        let timeout = self.node_timeout_ms;
        let beat: Option<(i64, i64)> = self
            .run(|pool| async move {
                sqlx::query_as(concat!(
                    "UPDATE nodes SET last_seen_ms = ",
                    db_now!(),
                    ", published = $2, delivered = $3, published_rate = $4, \
                     delivered_rate = $5 WHERE id = $1 AND last_seen_ms > ",
                    db_now!(),
                    " - $6 RETURNING last_seen_ms, \
                     (SELECT count(*) FROM nodes o WHERE o.id <> $1 AND o.last_seen_ms > ",
                    db_now!(),
                    " - $6)"
                ))
                .bind(id)
                .bind(i64::try_from(counters.published).unwrap_or(i64::MAX))
                .bind(i64::try_from(counters.delivered).unwrap_or(i64::MAX))
                .bind(counters.published_rate)
                .bind(counters.delivered_rate)
                .bind(timeout)
                .fetch_optional(&pool)
                .await
            })
            .await?;
        Ok(beat.map(|(db_ms, others)| {
            self.others.store(others > 0, Ordering::Relaxed);
            db_ms
        }))
    }

    /// Puts a node taken for dead back, with its open streams: its old row
    /// and slots go, and each stream is admitted again under the limits,
    /// oldest first (its slot may have gone to a stream on another node
    /// meanwhile). Returns the streams to end: refused (with the refusal:
    /// `map`, `key` or `gone`), or asked to close while the node was away
    /// (`closed`).
    ///
    /// # Errors
    /// The database is unreachable.
    pub async fn reregister(
        &self,
        id: Ulid,
        name: &str,
        started_ms: i64,
        defaults: (u64, u64),
        streams: &[Arc<ConnectionInfo>],
    ) -> Result<Vec<(Ulid, String)>, StoreError> {
        let (node, name) = (id.to_string(), name.to_owned());
        let mut streams = streams.to_vec();
        // Admitted in array order (one call per row, as the scan reads it).
        streams.sort_by_key(|c| (c.connected_ms, c.id));
        let ids: Vec<String> = streams.iter().map(|c| c.id.to_string()).collect();
        let maps: Vec<Option<String>> = streams
            .iter()
            .map(|c| c.map_id.map(|m| m.to_string()))
            .collect();
        let keys: Vec<Option<String>> = streams
            .iter()
            .map(|c| c.key_id.map(|k| k.to_string()))
            .collect();
        let remotes: Vec<String> = streams.iter().map(|c| c.remote_addr.clone()).collect();
        let since: Vec<i64> = streams.iter().map(|c| c.connected_ms).collect();
        let filters: Vec<String> = streams.iter().map(|c| c.filter.clone()).collect();
        let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let timeout = self.node_timeout_ms;
        let ended: Vec<(String, String)> = self
            .run(|pool| async move {
                let mut tx = pool.begin().await?;
                // Whatever is left of the old row (not reaped yet) goes,
                // and with it every slot this node held.
                sqlx::query("DELETE FROM nodes WHERE id = $1")
                    .bind(&node)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(concat!(
                    "INSERT INTO nodes (id, name, started_ms, last_seen_ms) \
                     VALUES ($1, $2, $3, ",
                    db_now!(),
                    ")"
                ))
                .bind(&node)
                .bind(name)
                .bind(started_ms)
                .execute(&mut *tx)
                .await?;
                // A stream admitted while this ran is there already.
                let mut ended: Vec<(String, String)> = sqlx::query_as(
                    "SELECT id, verdict FROM ( \
                     SELECT u.id, herald_admit(u.id, $1, u.map_id, u.key_id, u.remote, \
                     u.since, u.filter, $8, $9, $10, '{}') AS verdict \
                     FROM UNNEST($2::text[], $3::text[], $4::text[], $5::text[], \
                     $6::bigint[], $7::text[]) AS u (id, map_id, key_id, remote, since, filter) \
                     WHERE NOT EXISTS (SELECT 1 FROM connections c WHERE c.id = u.id) \
                     ) AS admitted WHERE verdict <> 'ok'",
                )
                .bind(&node)
                .bind(&ids)
                .bind(maps)
                .bind(keys)
                .bind(remotes)
                .bind(since)
                .bind(filters)
                .bind(clamp(defaults.0))
                .bind(clamp(defaults.1))
                .bind(timeout)
                .fetch_all(&mut *tx)
                .await?;
                let closed: Vec<String> = sqlx::query_scalar(
                    "SELECT connection_id FROM close_requests WHERE connection_id = ANY($1)",
                )
                .bind(&ids)
                .fetch_all(&mut *tx)
                .await?;
                tx.commit().await?;
                ended.extend(closed.into_iter().map(|id| (id, "closed".to_owned())));
                Ok(ended)
            })
            .await?;
        ended
            .into_iter()
            .map(|(id, why)| Ok((ulid_column(&id)?, why)))
            .collect()
    }

    /// Removes nodes silent for longer than the node timeout, and with them
    /// their streams' slots. Returns how many nodes were removed.
    ///
    /// # Errors
    /// The database is unreachable.
    pub async fn reap(&self) -> Result<u64, StoreError> {
        let timeout = self.node_timeout_ms;
        self.run(|pool| async move {
            sqlx::query(concat!(
                "DELETE FROM nodes WHERE last_seen_ms < ",
                db_now!(),
                " - $1"
            ))
            .bind(timeout)
            .execute(&pool)
            .await
            .map(|done| done.rows_affected())
        })
        .await
    }

    /// Records how many events this node's streams were sent.
    ///
    /// # Errors
    /// The database is unreachable.
    pub async fn record_sent(&self, sent: &[(Ulid, u64)]) -> Result<(), StoreError> {
        if sent.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = sent.iter().map(|(id, _)| id.to_string()).collect();
        let counts: Vec<i64> = sent
            .iter()
            .map(|(_, n)| i64::try_from(*n).unwrap_or(i64::MAX))
            .collect();
        self.run(|pool| async move {
            sqlx::query(
                "UPDATE connections c SET events_sent = u.sent \
                 FROM UNNEST($1::text[], $2::bigint[]) AS u (id, sent) WHERE c.id = u.id",
            )
            .bind(ids)
            .bind(counts)
            .execute(&pool)
            .await
            .map(|_| ())
        })
        .await
    }

    /// The directory's version (see the `directory_version` table).
    ///
    /// # Errors
    /// The database is unreachable.
    pub async fn directory_version(&self) -> Result<i64, StoreError> {
        self.run(|pool| async move {
            sqlx::query_scalar("SELECT version FROM directory_version")
                .fetch_one(&pool)
                .await
        })
        .await
    }

    /// Streams of this node that an admin asked (on any node) to close.
    ///
    /// # Errors
    /// The database is unreachable.
    pub async fn close_requests(&self, node: Ulid) -> Result<Vec<Ulid>, StoreError> {
        let node = node.to_string();
        let ids: Vec<String> = self
            .run(|pool| async move {
                sqlx::query_scalar(
                    "SELECT c.id FROM connections c \
                     JOIN close_requests r ON r.connection_id = c.id WHERE c.node_id = $1",
                )
                .bind(node)
                .fetch_all(&pool)
                .await
            })
            .await?;
        ids.iter().map(|id| ulid_column(id)).collect()
    }

    /// Takes a cluster-wide slot for a stream: `ok`, or which check refused
    /// it (`map`, `key`, `gone`). `ignored`: this node's ended streams
    /// whose rows are still to be deleted.
    ///
    /// # Errors
    /// The database is unreachable.
    pub async fn admit(
        &self,
        node: Ulid,
        info: &ConnectionInfo,
        defaults: (u64, u64),
        ignored: &[Ulid],
    ) -> Result<String, StoreError> {
        let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let query = sqlx::query_scalar::<_, String>(
            "SELECT herald_admit($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(info.id.to_string())
        .bind(node.to_string())
        .bind(info.map_id.map(|m| m.to_string()))
        .bind(info.key_id.map(|k| k.to_string()))
        .bind(info.remote_addr.clone())
        .bind(info.connected_ms)
        .bind(info.filter.clone())
        .bind(clamp(defaults.0))
        .bind(clamp(defaults.1))
        .bind(self.node_timeout_ms)
        .bind(ulids(ignored));
        self.run(|pool| async move { query.fetch_one(&pool).await })
            .await
    }

    /// Frees the slots of ended streams.
    ///
    /// # Errors
    /// The database is unreachable.
    pub async fn release(&self, ids: &[Ulid]) -> Result<(), StoreError> {
        let ids = ulids(ids);
        self.run(|pool| async move {
            sqlx::query(
                "WITH gone AS (DELETE FROM connections WHERE id = ANY($1)) \
                 DELETE FROM close_requests WHERE connection_id = ANY($1)",
            )
            .bind(ids)
            .execute(&pool)
            .await
            .map(|_| ())
        })
        .await
    }

    /// Live nodes, oldest first.
    ///
    /// # Errors
    /// The database is unreachable.
    pub async fn nodes(&self) -> Result<Vec<NodeView>, StoreError> {
        let timeout = self.node_timeout_ms;
        let rows = self
            .run(|pool| async move {
                sqlx::query(concat!(
                    "SELECT n.id, n.name, n.started_ms, n.last_seen_ms, n.published, \
                     n.delivered, n.published_rate, n.delivered_rate, \
                     (SELECT count(*) FROM connections c WHERE c.node_id = n.id) \
                     AS streams FROM nodes n WHERE n.last_seen_ms > ",
                    db_now!(),
                    " - $1 \
                     ORDER BY n.started_ms, n.id"
                ))
                .bind(timeout)
                .fetch_all(&pool)
                .await
            })
            .await?;
        rows.iter()
            .map(|row| {
                Ok(NodeView {
                    id: ulid_column(row.try_get("id")?)?,
                    name: row.try_get("name")?,
                    started_ms: row.try_get("started_ms")?,
                    last_seen_ms: row.try_get("last_seen_ms")?,
                    connections: u64::try_from(row.try_get::<i64, _>("streams")?).unwrap_or(0),
                    counters: Counters {
                        published: u64::try_from(row.try_get::<i64, _>("published")?).unwrap_or(0),
                        delivered: u64::try_from(row.try_get::<i64, _>("delivered")?).unwrap_or(0),
                        published_rate: row.try_get("published_rate")?,
                        delivered_rate: row.try_get("delivered_rate")?,
                    },
                })
            })
            .collect()
    }

    /// Streams of live nodes (optionally of one map), by id: the total and
    /// one page.
    ///
    /// # Errors
    /// The database is unreachable.
    pub async fn connections(
        &self,
        map: Option<Ulid>,
        limit: usize,
        offset: usize,
    ) -> Result<(u64, Vec<ConnectionView>), StoreError> {
        let timeout = self.node_timeout_ms;
        let map = map.map(|m| m.to_string());
        let clamp = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let (limit, offset) = (clamp(limit), clamp(offset));
        macro_rules! live {
            () => {
                concat!(
                    "FROM connections c JOIN nodes n ON n.id = c.node_id WHERE n.last_seen_ms > ",
                    db_now!(),
                    " - $1 AND ($2::text IS NULL OR c.map_id = $2)"
                )
            };
        }
        let (total, rows) = self
            .run(|pool| async move {
                let total: i64 = sqlx::query_scalar(concat!("SELECT count(*) ", live!()))
                    .bind(timeout)
                    .bind(&map)
                    .fetch_one(&pool)
                    .await?;
                let rows = sqlx::query(concat!(
                    "SELECT c.id, c.node_id, n.name, c.map_id, c.key_id, c.remote_addr, \
                     c.connected_ms, c.filter, c.events_sent ",
                    live!(),
                    " ORDER BY c.id LIMIT $3 OFFSET $4"
                ))
                .bind(timeout)
                .bind(&map)
                .bind(limit)
                .bind(offset)
                .fetch_all(&pool)
                .await?;
                Ok((total, rows))
            })
            .await?;
        let items = rows
            .iter()
            .map(|row| {
                Ok(ConnectionView {
                    id: ulid_column(row.try_get("id")?)?,
                    node_id: ulid_column(row.try_get("node_id")?)?,
                    node: row.try_get("name")?,
                    map_id: opt_ulid(row.try_get("map_id")?)?,
                    key_id: opt_ulid(row.try_get("key_id")?)?,
                    remote_addr: row.try_get("remote_addr")?,
                    connected_ms: row.try_get("connected_ms")?,
                    filter: row.try_get("filter")?,
                    events_sent: u64::try_from(row.try_get::<i64, _>("events_sent")?).unwrap_or(0),
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok((u64::try_from(total).unwrap_or(0), items))
    }

    /// Open streams of live nodes per (map, key).
    ///
    /// # Errors
    /// The database is unreachable.
    pub async fn usage(&self) -> Result<Vec<(Option<Ulid>, Option<Ulid>, u64)>, StoreError> {
        let timeout = self.node_timeout_ms;
        let rows = self
            .run(|pool| async move {
                sqlx::query(concat!(
                    "SELECT c.map_id, c.key_id, count(*) AS streams \
                     FROM connections c JOIN nodes n ON n.id = c.node_id \
                     WHERE n.last_seen_ms > ",
                    db_now!(),
                    " - $1 GROUP BY c.map_id, c.key_id"
                ))
                .bind(timeout)
                .fetch_all(&pool)
                .await
            })
            .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    opt_ulid(row.try_get("map_id")?)?,
                    opt_ulid(row.try_get("key_id")?)?,
                    u64::try_from(row.try_get::<i64, _>("streams")?).unwrap_or(0),
                ))
            })
            .collect()
    }

    /// Asks the node holding a stream to close it. Returns whether a live
    /// node holds it.
    ///
    /// # Errors
    /// The database is unreachable.
    pub async fn request_close(&self, id: Ulid) -> Result<bool, StoreError> {
        let timeout = self.node_timeout_ms;
        let id = id.to_string();
        self.run(|pool| async move {
            let found = sqlx::query(concat!(
                "INSERT INTO close_requests (connection_id, requested_ms) \
                 SELECT id, ",
                db_now!(),
                " FROM connections WHERE id = $1 AND node_id IN \
                 (SELECT id FROM nodes WHERE last_seen_ms > ",
                db_now!(),
                " - $2) ON CONFLICT (connection_id) DO UPDATE SET requested_ms = excluded.requested_ms"
            ))
            .bind(&id)
            .bind(timeout)
            .execute(&pool)
            .await?
            .rows_affected()
                > 0;
            if found {
                sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(CHANNEL)
                    .bind(format!("c:{id}"))
                    .execute(&pool)
                    .await?;
            }
            Ok(found)
        })
        .await
    }

    /// Stores an SSE token (by its hash) for `ttl_ms` on the database's clock.
    ///
    /// # Errors
    /// The database is unreachable.
    pub async fn issue_token(
        &self,
        hash: &SecretHash,
        grant: TokenGrant,
        ttl_ms: i64,
    ) -> Result<(), StoreError> {
        let query = sqlx::query(concat!(
            "INSERT INTO sse_tokens (token_hash, map_id, key_id, expires_ms) \
             VALUES ($1, $2, $3, ",
            db_now!(),
            " + $4)"
        ))
        .bind(hash_hex(hash))
        .bind(grant.map_id.to_string())
        .bind(grant.key_id.map(|k| k.to_string()))
        .bind(ttl_ms);
        self.run(|pool| async move { query.execute(&pool).await.map(|_| ()) })
            .await
    }

    /// What an SSE token grants, if it exists and has not expired, without
    /// using it up (see [`PgCluster::redeem_token`]).
    ///
    /// # Errors
    /// The database is unreachable.
    pub async fn peek_token(&self, hash: &SecretHash) -> Result<Option<TokenGrant>, StoreError> {
        let query = sqlx::query(concat!(
            "SELECT map_id, key_id, expires_ms > ",
            db_now!(),
            " AS valid FROM sse_tokens WHERE token_hash = $1"
        ))
        .bind(hash_hex(hash));
        let row = self
            .run(|pool| async move { query.fetch_optional(&pool).await })
            .await?;
        grant_of(row)
    }

    /// Consumes an SSE token: what it grants, if it exists and has not
    /// expired. Deleting it is what makes it single-use, on every node.
    ///
    /// # Errors
    /// The database is unreachable.
    pub async fn redeem_token(&self, hash: &SecretHash) -> Result<Option<TokenGrant>, StoreError> {
        let query = sqlx::query(concat!(
            "DELETE FROM sse_tokens WHERE token_hash = $1 \
             RETURNING map_id, key_id, expires_ms > ",
            db_now!(),
            " AS valid"
        ))
        .bind(hash_hex(hash));
        let row = self
            .run(|pool| async move { query.fetch_optional(&pool).await })
            .await?;
        grant_of(row)
    }

    /// Forgets expired SSE tokens, and close requests old enough that
    /// their stream's node, if it ever comes back, has long been replaced.
    ///
    /// # Errors
    /// The database is unreachable.
    pub async fn prune_expired(&self) -> Result<(), StoreError> {
        self.run(|pool| async move {
            sqlx::query(concat!(
                "WITH expired AS (DELETE FROM sse_tokens WHERE expires_ms < ",
                db_now!(),
                ") DELETE FROM close_requests WHERE requested_ms < ",
                db_now!(),
                " - $1"
            ))
            .bind(CLOSE_REQUEST_LIFETIME_MS)
            .execute(&pool)
            .await
            .map(|_| ())
        })
        .await
    }

    /// Removes this node (and its streams' slots): it is shutting down.
    ///
    /// # Errors
    /// The database is unreachable.
    pub async fn leave(&self, id: Ulid) -> Result<(), StoreError> {
        let id = id.to_string();
        self.run(|pool| async move {
            sqlx::query("DELETE FROM nodes WHERE id = $1")
                .bind(id)
                .execute(&pool)
                .await
                .map(|_| ())
        })
        .await
    }

    /// Tells the other nodes that events through `last` are committed. The
    /// notification is sent after the commit, by a task that coalesces: at
    /// most one is in flight, and it names the newest id.
    pub fn committed(&self, last: Ulid) {
        if self.others.load(Ordering::Relaxed) {
            self.committed.send_replace(Some(last));
        }
    }

    /// Starts the notifier and the listener; `signals` receives what the
    /// listener hears, and [`Signal::Resync`] after every (re)connect.
    pub fn start(&self, signals: mpsc::UnboundedSender<Signal>) {
        let mut committed = self.committed.subscribe();
        let pool = self.notifier.clone();
        let schema = self.schema.get().cloned().unwrap_or_default();
        let tag = schema.clone();
        self.runtime.spawn(async move {
            while committed.changed().await.is_ok() {
                let Some(last) = *committed.borrow_and_update() else {
                    continue;
                };
                let sent = timed(
                    sqlx::query("SELECT pg_notify($1, $2)")
                        .bind(CHANNEL)
                        .bind(format!("e:{last}:{tag}"))
                        .execute(&pool),
                )
                .await;
                if let Err(err) = sent {
                    // The others' ticks find the events anyway.
                    log::debug!("cannot notify a commit: {err}");
                }
            }
        });
        let options = self.listen_options.clone();
        self.runtime.spawn(listen_forever(options, signals, schema));
    }
}

/// Listens on the channel; whenever the connection is (re)established,
/// sends [`Signal::Resync`] after `LISTEN` took effect, so no commit falls
/// between what a catch-up read sees and what is notified.
async fn listen_forever(
    options: PgConnectOptions,
    signals: mpsc::UnboundedSender<Signal>,
    schema: String,
) {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .max_lifetime(None)
        .idle_timeout(None)
        .connect_lazy_with(options);
    let mut lost = false;
    loop {
        let listening = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = match listening.await {
            Ok(listener) => listener,
            Err(err) => {
                if !lost {
                    log::warn!("cluster: cannot listen for notifications: {err}");
                    lost = true;
                }
                tokio::time::sleep(RELISTEN_PAUSE).await;
                continue;
            }
        };
        if std::mem::replace(&mut lost, false) {
            log::info!("cluster: listening for notifications again");
        }
        if signals.send(Signal::Resync).is_err() {
            return;
        }
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => {
                    let Some(signal) = Signal::parse(notification.payload(), &schema) else {
                        continue;
                    };
                    if signals.send(signal).is_err() {
                        return;
                    }
                }
                // Reconnected by sqlx, `LISTEN` included: notifications
                // sent meanwhile are lost, so read what they announced.
                Ok(None) => {
                    if signals.send(Signal::Resync).is_err() {
                        return;
                    }
                }
                Err(err) => {
                    log::warn!("cluster: notification connection lost: {err}");
                    lost = true;
                    break;
                }
            }
        }
    }
}
