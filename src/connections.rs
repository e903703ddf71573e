//! The connection table: every open stream of this node, its slot in the
//! global, per-map and per-key limits, and the handle that closes it.
//! Admission is one check under one lock, so N simultaneous connects
//! against a limit of K admit exactly K; a slot is freed the moment its
//! guard drops. In a cluster the per-map and per-key limits are counted in
//! the database instead (`cluster`), and freed slots are queued for it in a
//! [`ReleaseQueue`].

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use actix::Recipient;
use ulid::Ulid;

use crate::actors::session::{Close, CloseReason};

/// What the admin API shows of one stream.
#[derive(Debug)]
pub struct ConnectionInfo {
    pub id: Ulid,
    /// `None` for the admin firehose.
    pub map_id: Option<Ulid>,
    /// `None` when opened with the admin token.
    pub key_id: Option<Ulid>,
    pub remote_addr: String,
    pub connected_ms: i64,
    pub filter: String,
    pub events_sent: AtomicU64,
}

/// The limits a new stream is admitted against.
#[derive(Debug, Clone, Copy)]
pub struct Admission {
    pub max_global: u64,
    /// The map's limit, when the stream belongs to a map.
    pub max_per_map: Option<u64>,
    /// The key's limit, when the stream was opened with a map key.
    pub max_per_key: Option<u64>,
}

/// Which limit refused a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitExceeded {
    #[error("global connection limit")]
    Global,
    #[error("map connection limit")]
    Map,
    #[error("API key connection limit")]
    Key,
}

struct Entry {
    info: Arc<ConnectionInfo>,
    closer: Option<Recipient<Close>>,
    /// A close asked for before the session was attached; applied on attach.
    pending_close: Option<CloseReason>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<Ulid, Entry>,
    per_map: HashMap<Ulid, u64>,
    per_key: HashMap<Ulid, u64>,
}

/// Open streams and their counts.
#[derive(Default)]
pub struct ConnectionTable {
    // A std Mutex: every critical section is a few map operations, never an
    // `.await`, and admission must be atomic across the three counters.
    inner: Mutex<Inner>,
    /// Where freed slots go when the database counts them too.
    released: Option<Arc<ReleaseQueue>>,
}

/// Streams of this node that ended and whose cluster-wide slots are still
/// to be freed in the database.
#[derive(Debug, Default)]
pub struct ReleaseQueue {
    // A std Mutex: held for a set operation, never across an `.await`.
    pending: Mutex<HashSet<Ulid>>,
    wakeup: tokio::sync::Notify,
}

impl ReleaseQueue {
    fn push(&self, id: Ulid) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id);
        self.wakeup.notify_one();
    }

    /// The streams waiting to be freed.
    pub fn pending(&self) -> Vec<Ulid> {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .copied()
            .collect()
    }

    /// Waits until something is queued.
    pub async fn wait(&self) {
        self.wakeup.notified().await;
    }

    /// Forgets streams whose slots were freed.
    pub fn done(&self, ids: &[Ulid]) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        for id in ids {
            pending.remove(id);
        }
    }
}

/// Holds a stream's slot; dropping it frees the slot. Clones hold the same
/// slot and the first one dropped frees it (the session and the response
/// body each hold one, so whichever ends first frees the slot at once).
#[derive(Clone)]
pub struct ConnectionGuard {
    table: Arc<ConnectionTable>,
    pub info: Arc<ConnectionInfo>,
}

impl ConnectionGuard {
    /// Records how to close this stream (its session's address).
    pub fn attach(&self, closer: Recipient<Close>) {
        self.table.attach(self.info.id, closer);
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.table.release(&self.info);
    }
}

fn decrement(counts: &mut HashMap<Ulid, u64>, id: Option<Ulid>) {
    if let Some(id) = id {
        if let Some(n) = counts.get_mut(&id) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&id);
            }
        }
    }
}

impl ConnectionTable {
    /// A table whose freed slots are also queued in `released`.
    pub fn with_release_queue(released: Arc<ReleaseQueue>) -> Self {
        Self {
            inner: Mutex::default(),
            released: Some(released),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Critical sections cannot panic half-way (plain map updates).
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a slot for a new stream, or says which limit is full.
    ///
    /// # Errors
    /// The first full limit: global, then map, then key.
    pub fn admit(
        self: &Arc<Self>,
        info: ConnectionInfo,
        limits: Admission,
    ) -> Result<ConnectionGuard, LimitExceeded> {
        let mut inner = self.lock();
        if inner.entries.len() as u64 >= limits.max_global {
            return Err(LimitExceeded::Global);
        }
        if let (Some(map), Some(max)) = (info.map_id, limits.max_per_map) {
            if inner.per_map.get(&map).copied().unwrap_or(0) >= max {
                return Err(LimitExceeded::Map);
            }
        }
        if let (Some(key), Some(max)) = (info.key_id, limits.max_per_key) {
            if inner.per_key.get(&key).copied().unwrap_or(0) >= max {
                return Err(LimitExceeded::Key);
            }
        }
        if let Some(map) = info.map_id {
            *inner.per_map.entry(map).or_default() += 1;
        }
        if let Some(key) = info.key_id {
            *inner.per_key.entry(key).or_default() += 1;
        }
        let info = Arc::new(info);
        inner.entries.insert(
            info.id,
            Entry {
                info: Arc::clone(&info),
                closer: None,
                pending_close: None,
            },
        );
        Ok(ConnectionGuard {
            table: Arc::clone(self),
            info,
        })
    }

    fn release(&self, info: &ConnectionInfo) {
        let mut inner = self.lock();
        if inner.entries.remove(&info.id).is_some() {
            decrement(&mut inner.per_map, info.map_id);
            decrement(&mut inner.per_key, info.key_id);
            if let Some(released) = &self.released {
                released.push(info.id);
            }
        }
    }

    /// Records how to close a stream once its session runs.
    pub fn attach(&self, id: Ulid, closer: Recipient<Close>) {
        let pending = match self.lock().entries.get_mut(&id) {
            Some(entry) => {
                entry.closer = Some(closer.clone());
                entry.pending_close.take()
            }
            None => None,
        };
        if let Some(reason) = pending {
            closer.do_send(Close { reason });
        }
    }

    /// Closes the matching streams; one whose session is still starting
    /// is closed as soon as it attaches (no revocation slips through).
    fn close_where(&self, reason: CloseReason, pred: impl Fn(&ConnectionInfo) -> bool) -> usize {
        let mut matched = 0;
        let mut closers = Vec::new();
        for entry in self.lock().entries.values_mut().filter(|e| pred(&e.info)) {
            matched += 1;
            match &entry.closer {
                Some(closer) => closers.push(closer.clone()),
                None => entry.pending_close = Some(reason),
            }
        }
        for closer in &closers {
            closer.do_send(Close { reason });
        }
        matched
    }

    /// Closes one stream. Returns whether it was open.
    pub fn close(&self, id: Ulid, reason: CloseReason) -> bool {
        self.close_where(reason, |info| info.id == id) > 0
    }

    /// Closes every stream opened with this key.
    pub fn close_key(&self, key_id: Ulid) -> usize {
        self.close_where(CloseReason::KeyRevoked, |info| info.key_id == Some(key_id))
    }

    /// Closes every stream (shutdown).
    pub fn close_all(&self) -> usize {
        self.close_where(CloseReason::Shutdown, |_| true)
    }

    /// Open streams in total.
    pub fn total(&self) -> u64 {
        self.lock().entries.len() as u64
    }

    /// Open streams per map and per key.
    pub fn counts(&self) -> (HashMap<Ulid, u64>, HashMap<Ulid, u64>) {
        let inner = self.lock();
        (inner.per_map.clone(), inner.per_key.clone())
    }

    /// One open stream.
    pub fn get(&self, id: Ulid) -> Option<Arc<ConnectionInfo>> {
        self.lock().entries.get(&id).map(|e| Arc::clone(&e.info))
    }

    /// Every open stream, in no order.
    pub fn all(&self) -> Vec<Arc<ConnectionInfo>> {
        self.lock()
            .entries
            .values()
            .map(|e| Arc::clone(&e.info))
            .collect()
    }

    /// Streams (optionally of one map) by id, a page of them, and the total.
    pub fn list(
        &self,
        map_id: Option<Ulid>,
        limit: usize,
        offset: usize,
    ) -> (usize, Vec<Arc<ConnectionInfo>>) {
        let mut infos: Vec<Arc<ConnectionInfo>> = self
            .lock()
            .entries
            .values()
            .filter(|e| map_id.is_none() || e.info.map_id == map_id)
            .map(|e| Arc::clone(&e.info))
            .collect();
        infos.sort_by_key(|i| i.id);
        (
            infos.len(),
            infos.into_iter().skip(offset).take(limit).collect(),
        )
    }
}

impl ConnectionInfo {
    /// Counts events written to this stream.
    pub fn add_sent(&self, n: u64) {
        self.events_sent.fetch_add(n, Ordering::Relaxed);
    }

    /// Events written so far.
    pub fn sent(&self) -> u64 {
        self.events_sent.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(map: Option<Ulid>, key: Option<Ulid>) -> ConnectionInfo {
        ConnectionInfo {
            id: Ulid::generate(),
            map_id: map,
            key_id: key,
            remote_addr: "127.0.0.1".into(),
            connected_ms: 0,
            filter: String::new(),
            events_sent: AtomicU64::new(0),
        }
    }

    #[test]
    fn limits_are_exact_and_slots_free_on_drop() {
        let table = Arc::new(ConnectionTable::default());
        let (map, key) = (Ulid::generate(), Ulid::generate());
        let limits = Admission {
            max_global: 10,
            max_per_map: Some(3),
            max_per_key: Some(2),
        };
        let a = table.admit(info(Some(map), Some(key)), limits).unwrap();
        let _b = table.admit(info(Some(map), Some(key)), limits).unwrap();
        assert_eq!(
            table.admit(info(Some(map), Some(key)), limits).err(),
            Some(LimitExceeded::Key)
        );
        let _c = table.admit(info(Some(map), None), limits).unwrap();
        assert_eq!(
            table.admit(info(Some(map), None), limits).err(),
            Some(LimitExceeded::Map)
        );
        drop(a);
        let (per_map, per_key) = table.counts();
        assert_eq!(per_map.get(&map), Some(&2));
        assert_eq!(per_key.get(&key), Some(&1));
        let _d = table.admit(info(Some(map), Some(key)), limits).unwrap();
        let global = Admission {
            max_global: 3,
            max_per_map: None,
            max_per_key: None,
        };
        assert_eq!(
            table.admit(info(None, None), global).err(),
            Some(LimitExceeded::Global)
        );
    }

    #[actix::test]
    async fn a_close_before_the_session_attaches_is_applied_on_attach() {
        use actix::prelude::*;

        struct Probe(std::sync::mpsc::Sender<CloseReason>);
        impl Actor for Probe {
            type Context = Context<Self>;
        }
        impl Handler<Close> for Probe {
            type Result = ();
            fn handle(&mut self, msg: Close, _: &mut Self::Context) {
                let _ = self.0.send(msg.reason);
            }
        }

        let table = Arc::new(ConnectionTable::default());
        let key = Ulid::generate();
        let limits = Admission {
            max_global: 10,
            max_per_map: None,
            max_per_key: None,
        };
        let guard = table.admit(info(None, Some(key)), limits).unwrap();
        assert_eq!(table.close_key(key), 1, "counted although not attached yet");
        let (tx, rx) = std::sync::mpsc::channel();
        guard.attach(Probe(tx).start().recipient());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(rx.try_recv(), Ok(CloseReason::KeyRevoked));
    }

    #[test]
    fn concurrent_admission_admits_exactly_the_limit() {
        let table = Arc::new(ConnectionTable::default());
        let map = Ulid::generate();
        let limits = Admission {
            max_global: 1000,
            max_per_map: Some(7),
            max_per_key: None,
        };
        let guards: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..32)
                .map(|_| s.spawn(|| table.admit(info(Some(map), None), limits).ok()))
                .collect();
            handles
                .into_iter()
                .filter_map(|h| h.join().unwrap())
                .collect()
        });
        assert_eq!(guards.len(), 7);
        drop(guards);
        assert_eq!(table.total(), 0);
    }
}
