//! Cluster mode: on PostgreSQL, every herald process (*node*) on one
//! database is part of one relay; on SQLite, the one process is a cluster
//! of one and everything here is answered from memory.
//!
//! [`Cluster`] is this node's view of the others: its identity and
//! heartbeat, cluster-wide connection slots (counted in the database, so
//! concurrent connects to several nodes never over-admit), the admin views
//! of every node's streams, and the background loop that keeps this node
//! in step: directory reloads, admin closes from other nodes, and
//! notifications that wake the [`Feed`](crate::actors::feed).

pub mod pg;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use ulid::Ulid;

use crate::actors::session::CloseReason;
use crate::auth::SecretHash;
use crate::config::{ClusterSettings, LimitSettings};
use crate::connections::{ConnectionInfo, ConnectionTable, LimitExceeded, ReleaseQueue};
use crate::event::parse_ulid;
use crate::sse_tokens::TokenGrant;
use crate::state::AppState;
use crate::store::offload::StoreRuntime;
use crate::store::StoreError;
use pg::PgCluster;

/// Slots freed in one statement at most.
const RELEASE_BATCH: usize = 1000;
/// Pause after a failed release before trying again.
const RELEASE_RETRY: Duration = Duration::from_millis(500);

/// What a node learns on the notification channel (see [`pg`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Events were committed (through this id, when known).
    Events(Option<Ulid>),
    /// Maps, keys or limits changed.
    Directory,
    /// An admin asked to close this stream.
    Close(Ulid),
    /// A node joined: this one is not alone (any more).
    Joined,
    /// The listening connection was (re)established: anything may have
    /// been missed.
    Resync,
}

impl Signal {
    /// Reads a notification's payload, heard by a node whose tables are in
    /// `schema`.
    pub fn parse(payload: &str, schema: &str) -> Option<Self> {
        match payload.split_once(':') {
            Some(("e", told)) => match told.split_once(':') {
                Some((id, from)) if from == schema => Some(Self::Events(parse_ulid(id))),
                // Another schema's commit: another cluster on this database.
                Some(_) => None,
                None => Some(Self::Events(None)),
            },
            Some(("c", id)) => parse_ulid(id).map(Self::Close),
            None if payload == "d" => Some(Self::Directory),
            None if payload == "n" => Some(Self::Joined),
            _ => None,
        }
    }
}

/// Why a stream was not given a cluster-wide slot.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    Limit(LimitExceeded),
    /// The map or the key no longer exists.
    #[error("the map or key is gone")]
    Gone,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One live node, as the admin API shows it.
#[derive(Debug, Clone)]
pub struct NodeView {
    pub id: Ulid,
    pub name: String,
    pub started_ms: i64,
    pub last_seen_ms: i64,
    pub connections: u64,
    /// As of its last heartbeat.
    pub counters: Counters,
}

/// A node's event counters and rates (events per second, recent).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counters {
    pub published: u64,
    pub delivered: u64,
    pub published_rate: f64,
    pub delivered_rate: f64,
}

impl Counters {
    /// This node's, now.
    pub fn of(metrics: &crate::metrics::Metrics) -> Self {
        let (published_rate, delivered_rate) = metrics.rates();
        Self {
            published: metrics.published.get(),
            delivered: metrics.delivered.get(),
            published_rate,
            delivered_rate,
        }
    }
}

/// One stream on any node, as the admin API shows it.
#[derive(Debug, Clone)]
pub struct ConnectionView {
    pub id: Ulid,
    pub node_id: Ulid,
    /// The name of the node holding it.
    pub node: String,
    pub map_id: Option<Ulid>,
    pub key_id: Option<Ulid>,
    pub remote_addr: String,
    pub connected_ms: i64,
    pub filter: String,
    pub events_sent: u64,
}

/// Open streams of every node.
#[derive(Debug, Default)]
pub struct Usage {
    pub total: u64,
    pub per_map: HashMap<Ulid, u64>,
    pub per_key: HashMap<Ulid, u64>,
}

/// This node in its cluster.
pub struct Cluster {
    pub id: Ulid,
    pub name: String,
    pub started_ms: i64,
    /// The database's clock minus this node's, in milliseconds (PostgreSQL:
    /// measured at each heartbeat), so ids follow one clock.
    clock_offset_ms: AtomicI64,
    shared: Option<PgCluster>,
    heartbeat: Duration,
    released: Arc<ReleaseQueue>,
    /// Held by a heartbeat while it talks to the database, and by `leave`:
    /// `true` once the node left, so no heartbeat in flight puts it back.
    left: tokio::sync::Mutex<bool>,
}

fn local_now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Cluster {
    /// A node that is the whole relay (SQLite).
    pub fn single(name: String, settings: &ClusterSettings) -> Self {
        Self {
            id: Ulid::generate(),
            name,
            started_ms: local_now_ms(),
            clock_offset_ms: AtomicI64::new(0),
            shared: None,
            heartbeat: Duration::from_secs(settings.heartbeat_secs),
            released: Arc::default(),
            left: tokio::sync::Mutex::new(false),
        }
    }

    /// Joins the cluster on the PostgreSQL database of `url` as a new node.
    ///
    /// # Errors
    /// The database is unreachable.
    pub async fn join(
        url: &str,
        name: String,
        settings: &ClusterSettings,
        runtime: Arc<StoreRuntime>,
    ) -> Result<Self, StoreError> {
        let shared = PgCluster::new(
            url,
            &name,
            Duration::from_secs(settings.node_timeout_secs),
            runtime,
        )?;
        let id = Ulid::generate();
        let before = local_now_ms();
        let started_ms = shared.register(id, &name).await?;
        let cluster = Self {
            id,
            name,
            started_ms,
            clock_offset_ms: AtomicI64::new(0),
            shared: Some(shared),
            heartbeat: Duration::from_secs(settings.heartbeat_secs),
            released: Arc::default(),
            left: tokio::sync::Mutex::new(false),
        };
        cluster.observe_db_time(before, started_ms);
        log::info!("node {} ({}) joined the cluster", cluster.name, cluster.id);
        Ok(cluster)
    }

    /// Whether other processes may share the database.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// Where this node's ended streams wait for their slots to be freed.
    pub fn release_queue(&self) -> Arc<ReleaseQueue> {
        Arc::clone(&self.released)
    }

    /// Now on the database's clock, as well as this node knows it.
    pub fn now_ms(&self) -> u64 {
        let now = local_now_ms().saturating_add(self.clock_offset_ms.load(Ordering::Relaxed));
        u64::try_from(now).unwrap_or(0)
    }

    /// Learns the clock offset from a database time read between `before`
    /// and now (the middle of the round trip is the best guess).
    fn observe_db_time(&self, before: i64, db_ms: i64) {
        let middle = before + (local_now_ms() - before) / 2;
        self.clock_offset_ms
            .store(db_ms - middle, Ordering::Relaxed);
    }

    /// This node committed events through `last`: tell the others.
    pub fn committed(&self, last: Ulid) {
        if let Some(shared) = &self.shared {
            shared.committed(last);
        }
    }

    /// Takes the stream's slot among every node's streams of its map and
    /// key, against the map's limits as stored now. Nothing to do on a
    /// single node: the connection table counted it already.
    ///
    /// # Errors
    /// A full limit, a revoked key, or an unreachable database.
    pub async fn admit(
        &self,
        info: &ConnectionInfo,
        limits: &LimitSettings,
    ) -> Result<(), Refusal> {
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        let defaults = (
            limits.max_connections_per_map,
            limits.max_connections_per_key,
        );
        let ignored = self.released.pending();
        match shared
            .admit(self.id, info, defaults, &ignored)
            .await?
            .as_str()
        {
            "ok" => Ok(()),
            "map" => Err(Refusal::Limit(LimitExceeded::Map)),
            "key" => Err(Refusal::Limit(LimitExceeded::Key)),
            _ => Err(Refusal::Gone),
        }
    }

    /// Live nodes, oldest first.
    ///
    /// # Errors
    /// The database is unreachable.
    pub async fn nodes(&self, local: &ConnectionTable) -> Result<Vec<NodeView>, StoreError> {
        match &self.shared {
            Some(shared) => shared.nodes().await,
            None => Ok(vec![NodeView {
                id: self.id,
                name: self.name.clone(),
                started_ms: self.started_ms,
                last_seen_ms: local_now_ms(),
                connections: local.total(),
                counters: Counters::default(),
            }]),
        }
    }

    /// Streams of every node (optionally of one map), by id: the total and
    /// one page. This node's own show their live counters.
    ///
    /// # Errors
    /// The database is unreachable.
    pub async fn connections(
        &self,
        local: &ConnectionTable,
        map: Option<Ulid>,
        limit: usize,
        offset: usize,
    ) -> Result<(u64, Vec<ConnectionView>), StoreError> {
        let Some(shared) = &self.shared else {
            let (total, infos) = local.list(map, limit, offset);
            let items = infos.iter().map(|info| self.view_of(info)).collect();
            return Ok((total as u64, items));
        };
        let (total, mut items) = shared.connections(map, limit, offset).await?;
        for item in items.iter_mut().filter(|item| item.node_id == self.id) {
            if let Some(info) = local.get(item.id) {
                item.events_sent = info.sent();
            }
        }
        Ok((total, items))
    }

    fn view_of(&self, info: &ConnectionInfo) -> ConnectionView {
        ConnectionView {
            id: info.id,
            node_id: self.id,
            node: self.name.clone(),
            map_id: info.map_id,
            key_id: info.key_id,
            remote_addr: info.remote_addr.clone(),
            connected_ms: info.connected_ms,
            filter: info.filter.clone(),
            events_sent: info.sent(),
        }
    }

    /// Open streams of every node, in total, per map and per key.
    ///
    /// # Errors
    /// The database is unreachable.
    pub async fn usage(&self, local: &ConnectionTable) -> Result<Usage, StoreError> {
        let Some(shared) = &self.shared else {
            let (per_map, per_key) = local.counts();
            return Ok(Usage {
                total: local.total(),
                per_map,
                per_key,
            });
        };
        let mut usage = Usage::default();
        for (map, key, n) in shared.usage().await? {
            usage.total += n;
            if let Some(map) = map {
                *usage.per_map.entry(map).or_default() += n;
            }
            if let Some(key) = key {
                *usage.per_key.entry(key).or_default() += n;
            }
        }
        Ok(usage)
    }

    /// Closes a stream wherever it is. Returns whether it was open.
    ///
    /// # Errors
    /// The database is unreachable.
    pub async fn close(&self, local: &ConnectionTable, id: Ulid) -> Result<bool, StoreError> {
        if local.close(id, CloseReason::AdminClosed) {
            return Ok(true);
        }
        match &self.shared {
            Some(shared) => shared.request_close(id).await,
            None => Ok(false),
        }
    }

    /// Stores an SSE token where every node can redeem it. `false` on a
    /// single node: tokens stay in its memory.
    ///
    /// # Errors
    /// The database is unreachable.
    pub async fn issue_token(
        &self,
        hash: &SecretHash,
        grant: TokenGrant,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let Some(shared) = &self.shared else {
            return Ok(false);
        };
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        shared.issue_token(hash, grant, ttl_ms).await?;
        Ok(true)
    }

    /// What an SSE token stored by [`Cluster::issue_token`] on any node
    /// grants, without using it up.
    ///
    /// # Errors
    /// The database is unreachable.
    pub async fn peek_token(&self, hash: &SecretHash) -> Result<Option<TokenGrant>, StoreError> {
        match &self.shared {
            Some(shared) => shared.peek_token(hash).await,
            None => Ok(None),
        }
    }

    /// Consumes an SSE token stored by [`Cluster::issue_token`] on any node.
    ///
    /// # Errors
    /// The database is unreachable.
    pub async fn redeem_token(&self, hash: &SecretHash) -> Result<Option<TokenGrant>, StoreError> {
        match &self.shared {
            Some(shared) => shared.redeem_token(hash).await,
            None => Ok(None),
        }
    }

    /// Leaves the cluster (shutdown): this node's slots are freed at once.
    pub async fn leave(&self) {
        if let Some(shared) = &self.shared {
            let mut left = self.left.lock().await;
            *left = true;
            if let Err(err) = shared.leave(self.id).await {
                log::warn!("cannot leave the cluster cleanly: {err}");
            }
        }
    }

    /// Starts what keeps this node in step with the others: the heartbeat,
    /// the release of ended streams' slots, and the notification listener.
    pub fn start(self: &Arc<Self>, state: &AppState) {
        let Some(shared) = &self.shared else {
            return;
        };
        let (signals, received) = mpsc::unbounded_channel();
        shared.start(signals);
        actix_web::rt::spawn(Arc::clone(self).follow(received, state.clone()));
        actix_web::rt::spawn(Arc::clone(self).heartbeat_forever(state.clone()));
        actix_web::rt::spawn(Arc::clone(self).release_forever());
    }

    /// Acts on what the listener hears; what arrived together is acted on
    /// once (a burst of directory changes is one reload).
    async fn follow(
        self: Arc<Self>,
        mut signals: mpsc::UnboundedReceiver<Signal>,
        state: AppState,
    ) {
        let mut batch = Vec::new();
        while signals.recv_many(&mut batch, 1024).await > 0 {
            let resync = batch.contains(&Signal::Resync);
            if batch.contains(&Signal::Joined) {
                if let Some(shared) = &self.shared {
                    shared.not_alone();
                }
            }
            let events = batch
                .iter()
                .filter_map(|s| match s {
                    Signal::Events(upto) => Some(*upto),
                    _ => None,
                })
                .reduce(|a, b| a.zip(b).map(|(a, b)| a.max(b)));
            if resync {
                state.feed.wake(None);
            } else if let Some(upto) = events {
                state.feed.wake(upto);
            }
            if resync || batch.contains(&Signal::Directory) {
                reload_directory(&state).await;
            }
            for signal in batch.drain(..) {
                if let Signal::Close(id) = signal {
                    state.connections.close(id, CloseReason::AdminClosed);
                }
            }
            if resync {
                self.close_requested(&state).await;
            }
        }
    }

    async fn close_requested(&self, state: &AppState) {
        let Some(shared) = &self.shared else { return };
        match shared.close_requests(self.id).await {
            Ok(ids) => {
                for id in ids {
                    state.connections.close(id, CloseReason::AdminClosed);
                }
            }
            Err(err) => log::debug!("cannot read close requests: {err}"),
        }
    }

    /// Every `cluster.heartbeat_secs`: says this node is alive (coming back
    /// with its streams if it was taken for dead), removes dead nodes,
    /// records streams' counters, and catches up with directory changes and
    /// close requests whose notification was lost.
    async fn heartbeat_forever(self: Arc<Self>, state: AppState) {
        let Some(shared) = &self.shared else { return };
        let mut interval = tokio::time::interval(self.heartbeat);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut directory_version = None;
        let mut sent_recorded: HashMap<Ulid, u64> = HashMap::new();
        loop {
            interval.tick().await;
            let left = self.left.lock().await;
            if *left {
                return;
            }
            let before = local_now_ms();
            let beat = shared
                .heartbeat(self.id, Counters::of(&state.metrics))
                .await;
            match beat {
                Ok(Some(db_ms)) => self.observe_db_time(before, db_ms),
                Ok(None) => {
                    log::warn!("node {} was taken for dead: joining again", self.name);
                    self.rejoin(shared, &state).await;
                    continue;
                }
                Err(err) => {
                    log::debug!("heartbeat failed: {err}");
                    continue;
                }
            }
            drop(left);
            if let Ok(n @ 1..) = shared.reap().await {
                log::info!("removed {n} dead node(s) and their streams' slots");
            }
            if let Err(err) = shared.prune_expired().await {
                log::debug!("cannot forget expired SSE tokens and close requests: {err}");
            }
            // Only counters that moved since the last record (a new stream
            // counts as recorded at 0): no row is rewritten for nothing.
            let sent: Vec<(Ulid, u64)> = state
                .connections
                .all()
                .iter()
                .map(|c| (c.id, c.sent()))
                .collect();
            let changed: Vec<(Ulid, u64)> = sent
                .iter()
                .filter(|(id, n)| sent_recorded.get(id).copied().unwrap_or(0) != *n)
                .copied()
                .collect();
            if shared.record_sent(&changed).await.is_ok() {
                sent_recorded = sent.into_iter().collect();
            }
            match shared.directory_version().await {
                Ok(version) if directory_version != Some(version) => {
                    if directory_version.is_some() {
                        reload_directory(&state).await;
                    }
                    directory_version = Some(version);
                }
                _ => {}
            }
            self.close_requested(&state).await;
        }
    }

    /// Comes back after being taken for dead: this node's streams are
    /// admitted again, and those whose slots went to others meanwhile, or
    /// that an admin asked to close, end (their clients resume elsewhere).
    async fn rejoin(&self, shared: &PgCluster, state: &AppState) {
        let limits = &state.settings.limits;
        let defaults = (
            limits.max_connections_per_map,
            limits.max_connections_per_key,
        );
        let streams = state.connections.all();
        match shared
            .reregister(self.id, &self.name, self.started_ms, defaults, &streams)
            .await
        {
            Ok(ended) => {
                for (id, why) in ended {
                    let reason = match why.as_str() {
                        "closed" => CloseReason::AdminClosed,
                        "gone" => CloseReason::KeyRevoked,
                        _ => CloseReason::SlotLost,
                    };
                    state.connections.close(id, reason);
                }
            }
            Err(err) => log::warn!("cannot join again: {err}"),
        }
    }

    /// Frees the slots of ended streams in the database, in batches.
    async fn release_forever(self: Arc<Self>) {
        let Some(shared) = &self.shared else { return };
        loop {
            let pending = self.released.pending();
            if pending.is_empty() {
                self.released.wait().await;
                continue;
            }
            for batch in pending.chunks(RELEASE_BATCH) {
                match shared.release(batch).await {
                    Ok(()) => self.released.done(batch),
                    Err(err) => {
                        log::debug!("cannot free slots yet: {err}");
                        tokio::time::sleep(RELEASE_RETRY).await;
                    }
                }
            }
        }
    }
}

/// Reloads the directory; streams of keys that are gone end.
pub async fn reload_directory(state: &AppState) {
    match state.directory.reload().await {
        Ok(revoked) => {
            for key_id in revoked {
                state.sse_tokens.revoke_key(key_id);
                let closed = state.connections.close_key(key_id);
                if closed > 0 {
                    log::info!("key revoked key={key_id} streams_closed={closed}");
                }
            }
        }
        Err(err) => log::debug!("cannot reload the directory: {err}"),
    }
}

/// This node's default name: the host's name and the port it listens on.
pub fn default_node_name(port: u16) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{host}:{port}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_parse() {
        let id = Ulid::from_parts(5, 7);
        let parse = |payload: &str| Signal::parse(payload, "a:b");
        assert_eq!(
            parse(&format!("e:{id}:a:b")),
            Some(Signal::Events(Some(id)))
        );
        assert_eq!(parse(&format!("e:{id}:public")), None, "another schema's");
        assert_eq!(parse(&format!("e:{id}")), Some(Signal::Events(None)));
        assert_eq!(parse("e:junk:a:b"), Some(Signal::Events(None)));
        assert_eq!(parse("d"), Some(Signal::Directory));
        assert_eq!(parse("n"), Some(Signal::Joined));
        assert_eq!(parse(&format!("c:{id}")), Some(Signal::Close(id)));
        assert_eq!(parse("c:junk"), None);
        assert_eq!(parse("x"), None);
    }
}
