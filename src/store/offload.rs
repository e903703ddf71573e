//! Store calls on threads of their own. sqlx drives a query, and hands its
//! connection back to the pool, on whatever runtime polls it. On the HTTP
//! workers that runtime is often busy writing to thousands of streams, and a
//! connection whose answer has arrived stayed checked out until the worker
//! came round to it: under a 1,000-client churn the pool ran dry and stream
//! connects got 503 after the 3 s acquire timeout, with every PostgreSQL
//! connection idle. [`Offloaded`] runs each call on a small runtime that does
//! nothing else; the caller only waits for the result.
//!
//! Commits are not moved: the persistence actor has a thread of its own and
//! a pool of its own already, and a hop would only add to ack latency.

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use ulid::Ulid;

use super::{
    Commit, EventHead, FeedPage, KeyRecord, MapRecord, Publication, Scope, SharedStore, Store,
    StoreError,
};
use crate::auth::SecretHash;
use crate::event::Event;

/// The runtime store calls run on: threads that do nothing else.
pub struct StoreRuntime {
    handle: Handle,
    /// Dropped with the last user: the runtime's thread then ends.
    _stop: oneshot::Sender<()>,
}

impl StoreRuntime {
    /// Starts the runtime (`threads` workers, named `herald-store`).
    ///
    /// # Errors
    /// The threads cannot be started.
    pub fn start(threads: usize) -> std::io::Result<Arc<Self>> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("herald-store")
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        // The runtime is dropped on its own thread: dropping it inside an
        // async context would panic.
        std::thread::Builder::new()
            .name("herald-store-main".into())
            .spawn(move || runtime.block_on(async move { _ = stopped.await }))?;
        Ok(Arc::new(Self {
            handle,
            _stop: stop,
        }))
    }

    /// Runs `call` on the store runtime; a call that panicked or was cut
    /// short by shutdown counts as unavailable.
    ///
    /// # Errors
    /// The call's own, or [`StoreError::Unavailable`] if it did not finish.
    pub async fn run<T, F>(&self, call: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        self.handle
            .spawn(call)
            .await
            .map_err(|e| StoreError::Unavailable(format!("store task: {e}")))?
    }

    /// Starts a background task on the store runtime.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.handle.spawn(task);
    }
}

/// A [`Store`] whose calls run on a [`StoreRuntime`].
pub struct Offloaded {
    inner: SharedStore,
    runtime: Arc<StoreRuntime>,
}

impl Offloaded {
    /// Wraps `inner`: its calls will run on `runtime`.
    pub fn new(inner: SharedStore, runtime: Arc<StoreRuntime>) -> Self {
        Self { inner, runtime }
    }

    async fn run<T, F>(&self, call: impl FnOnce(SharedStore) -> F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        self.runtime.run(call(Arc::clone(&self.inner))).await
    }
}

#[async_trait]
impl Store for Offloaded {
    async fn migrate(&self) -> Result<(), StoreError> {
        self.run(|s| async move { s.migrate().await }).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.run(|s| async move { s.ping().await }).await
    }

    async fn load_directory(&self) -> Result<(Vec<MapRecord>, Vec<KeyRecord>), StoreError> {
        self.run(|s| async move { s.load_directory().await }).await
    }

    async fn insert_map(&self, map: &MapRecord, key: &KeyRecord) -> Result<(), StoreError> {
        let (map, key) = (map.clone(), key.clone());
        self.run(|s| async move { s.insert_map(&map, &key).await })
            .await
    }

    async fn insert_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        let key = key.clone();
        self.run(|s| async move { s.insert_key(&key).await }).await
    }

    async fn delete_key(&self, map_id: Ulid, key_id: Ulid) -> Result<bool, StoreError> {
        self.run(move |s| async move { s.delete_key(map_id, key_id).await })
            .await
    }

    async fn update_map_limits(
        &self,
        map_id: Ulid,
        max_connections: Option<u64>,
        max_connections_per_key: Option<u64>,
    ) -> Result<(), StoreError> {
        self.run(move |s| async move {
            s.update_map_limits(map_id, max_connections, max_connections_per_key)
                .await
        })
        .await
    }

    /// Not moved (see the module docs).
    async fn commit(
        &self,
        after: Ulid,
        now_ms: u64,
        idempotency_ttl_ms: u64,
        publications: &[Publication],
    ) -> Result<Commit, StoreError> {
        self.inner
            .commit(after, now_ms, idempotency_ttl_ms, publications)
            .await
    }

    async fn prune_idempotency(&self, older_than_ms: u64) -> Result<u64, StoreError> {
        self.run(move |s| async move { s.prune_idempotency(older_than_ms).await })
            .await
    }

    async fn find_map(&self, id_or_slug: &str) -> Result<Option<MapRecord>, StoreError> {
        let id_or_slug = id_or_slug.to_owned();
        self.run(|s| async move { s.find_map(&id_or_slug).await })
            .await
    }

    async fn find_key(&self, hash: &SecretHash) -> Result<Option<KeyRecord>, StoreError> {
        let hash = *hash;
        self.run(move |s| async move { s.find_key(&hash).await })
            .await
    }

    async fn newest_event_id(&self, scope: Scope) -> Result<Option<Ulid>, StoreError> {
        self.run(move |s| async move { s.newest_event_id(scope).await })
            .await
    }

    async fn events_after(
        &self,
        scope: Scope,
        after: Ulid,
        limit: u32,
    ) -> Result<Vec<Event>, StoreError> {
        self.run(move |s| async move { s.events_after(scope, after, limit).await })
            .await
    }

    async fn feed_page(
        &self,
        maps: Option<&[Ulid]>,
        after: Ulid,
        limit: u32,
    ) -> Result<FeedPage, StoreError> {
        let maps = maps.map(<[Ulid]>::to_vec);
        self.run(move |s| async move { s.feed_page(maps.as_deref(), after, limit).await })
            .await
    }

    async fn heads_between_desc(
        &self,
        scope: Scope,
        after: Ulid,
        before: Ulid,
        limit: u32,
    ) -> Result<Vec<EventHead>, StoreError> {
        self.run(move |s| async move { s.heads_between_desc(scope, after, before, limit).await })
            .await
    }

    async fn id_at_offset_desc(
        &self,
        scope: Scope,
        after: Ulid,
        offset: u64,
    ) -> Result<Option<Ulid>, StoreError> {
        self.run(move |s| async move { s.id_at_offset_desc(scope, after, offset).await })
            .await
    }

    async fn pruned_through(&self, scope: Scope) -> Result<Ulid, StoreError> {
        self.run(move |s| async move { s.pruned_through(scope).await })
            .await
    }

    async fn prune(&self, older_than: Ulid, keep: u64) -> Result<u64, StoreError> {
        self.run(move |s| async move { s.prune(older_than, keep).await })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn calls_run_on_the_store_threads_and_answer_the_caller() {
        let inner = crate::store::open("sqlite::memory:").await.expect("store");
        inner.migrate().await.expect("migrate");
        let store = Offloaded::new(inner, StoreRuntime::start(1).expect("runtime"));
        store.ping().await.expect("ping");
        let on_store_thread = store
            .run(|_| async { Ok(std::thread::current().name() == Some("herald-store")) })
            .await
            .expect("runs");
        assert!(on_store_thread);
        assert_eq!(store.newest_event_id(None).await.expect("read"), None);
    }
}
