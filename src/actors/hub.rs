//! `MapHub`: one actor per map (started on first subscription, stopped when
//! idle) plus one for the admin firehose. It receives committed events in
//! commit order, keeps the newest `history.hot_events` of them, and pushes
//! each to every matching session's bounded outbox with `try_send`: a full
//! outbox unregisters that session (its stream then ends or resyncs from the
//! store), so one slow client never blocks the hub or the others.
//!
//! [`Hubs`] is the registry and the typed handle the rest of the code uses.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use actix::prelude::*;
use ulid::Ulid;

use super::session::Overflowed;
use crate::backfill::{Planner, Truncation};
use crate::event::SharedEvent;
use crate::filter::Filter;
use crate::outbox::{OutboxSender, Refused};
use crate::store::{Scope, SharedStore};

/// How long a hub without sessions lives on (keeping its hot history for
/// clients that reconnect) before it stops.
const IDLE_STOP_AFTER: Duration = Duration::from_secs(30);
/// Subscribe attempts when the hub found is stopping at that moment.
const SUBSCRIBE_ATTEMPTS: usize = 3;
/// Beyond this many running hubs the feed reads every map's events rather
/// than send the list with each read.
const MAX_LISTED_MAPS: usize = 256;

/// Tunables of every hub.
#[derive(Debug, Clone, Copy)]
pub struct HubConfig {
    pub hot_events: usize,
    pub max_backfill: usize,
}

/// The hub cannot tell where streams start: the store did not answer.
#[derive(Debug, thiserror::Error)]
#[error("hub unavailable: the store did not answer")]
pub struct HubUnavailable;

/// Registers a session's outbox. A session that subscribes again (after its
/// outbox overflowed during backfill) replaces its old registration.
#[derive(Message, Clone)]
#[rtype(result = "Result<Subscription, HubUnavailable>")]
pub struct Subscribe {
    pub conn_id: Ulid,
    pub outbox: OutboxSender,
    pub filter: Arc<Filter>,
    /// The client's last event id; `None` starts at the newest event.
    pub after: Option<Ulid>,
    /// Told when the outbox overflows.
    pub session: Recipient<Overflowed>,
    /// Which registration of this session this is.
    pub generation: u64,
}

/// What a subscriber needs to start its stream.
#[derive(Debug)]
pub struct Subscription {
    /// Newest event this hub has seen: every later one arrives live.
    pub head: Ulid,
    /// The backfill, when the hot history holds all of it.
    pub hot: Option<HotBackfill>,
}

/// A backfill served from memory.
#[derive(Debug, Default)]
pub struct HotBackfill {
    pub events: Vec<SharedEvent>,
    pub truncation: Option<Truncation>,
}

/// Removes a session.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unsubscribe {
    pub conn_id: Ulid,
}

/// Events just committed, in commit order. The token is shared by every
/// hub's part of one commit.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Committed {
    events: Vec<SharedEvent>,
    _taken: Arc<WhenTaken>,
}

/// Frame bytes of committed events handed to hubs and not yet handled,
/// beyond which a publisher is answered only once its own events are taken:
/// below it, commits and fan-out overlap (several events per write); above
/// it, a hub whose fan-out lags holds its publishers back instead of letting
/// its mailbox grow without bound.
const MAX_UNTAKEN_BYTES: usize = 16 << 20;

/// Shared by every hub's part of one commit; dropped when the last hub has
/// handled (or dropped) its part.
struct WhenTaken {
    untaken: Arc<AtomicUsize>,
    bytes: usize,
    /// The publishers' answer, when it had to wait for this.
    answer: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl Drop for WhenTaken {
    fn drop(&mut self) {
        self.untaken.fetch_sub(self.bytes, Ordering::Relaxed);
        if let Some(answer) = self.answer.take() {
            answer();
        }
    }
}

struct Subscriber {
    outbox: OutboxSender,
    filter: Arc<Filter>,
    session: Recipient<Overflowed>,
    generation: u64,
}

/// The fan-out actor of one map (or of every map, for the firehose).
pub struct MapHub {
    scope: Scope,
    store: SharedStore,
    registry: Weak<Registry>,
    config: HubConfig,
    subscribers: HashMap<Ulid, Subscriber>,
    hot: VecDeque<SharedEvent>,
    /// `hot` holds every event with a greater id than this one.
    complete_after: Option<Ulid>,
    /// Newest id seen; `None` until the store has answered.
    head: Option<Ulid>,
}

impl MapHub {
    fn load_head(&mut self, ctx: &mut Context<Self>) {
        let store = Arc::clone(&self.store);
        let scope = self.scope;
        // `wait`: no message is handled before the head is known, so no
        // subscriber can start from a stale position.
        ctx.wait(
            async move { store.newest_event_id(scope).await }
                .into_actor(self)
                .map(|result, hub, _| match result {
                    Ok(newest) => {
                        let newest = newest.unwrap_or_default();
                        hub.head = Some(hub.head.map_or(newest, |h| h.max(newest)));
                        if hub.hot.is_empty() {
                            hub.complete_after = hub.head;
                        }
                    }
                    Err(err) => {
                        log::warn!("hub {:?}: cannot load newest event id: {err}", hub.scope)
                    }
                }),
        );
    }

    fn remember(&mut self, event: &SharedEvent) {
        if self.complete_after.is_none() {
            // First event after a failed head load: history is complete only from here.
            self.complete_after = Some(event.id);
        }
        if self.config.hot_events == 0 {
            self.complete_after = Some(event.id);
            return;
        }
        if self.hot.len() == self.config.hot_events {
            if let Some(evicted) = self.hot.pop_front() {
                self.complete_after = Some(evicted.id);
            }
        }
        self.hot.push_back(Arc::clone(event));
    }

    fn hot_backfill(&self, after: Ulid, filter: &Filter) -> Option<HotBackfill> {
        if self.complete_after.is_none_or(|complete| after < complete) {
            return None;
        }
        let start = self.hot.partition_point(|e| e.id <= after);
        let matching: Vec<&SharedEvent> = self
            .hot
            .range(start..)
            .filter(|e| filter.matches(&e.event_type, &e.source))
            .collect();
        let mut planner = Planner::new(after, self.config.max_backfill);
        for event in matching.iter().rev() {
            if !planner.push(event.id) {
                break;
            }
        }
        let plan = planner.finish(false);
        let events = matching
            .into_iter()
            .filter(|e| e.id > plan.replay_after)
            .cloned()
            .collect();
        Some(HotBackfill {
            events,
            truncation: plan.truncation,
        })
    }

    fn schedule_idle_check(&self, ctx: &mut Context<Self>) {
        if self.subscribers.is_empty() && self.scope.is_some() {
            ctx.run_later(IDLE_STOP_AFTER, |hub, ctx| {
                if !hub.subscribers.is_empty() {
                    return;
                }
                if let (Some(registry), Some(map_id)) = (hub.registry.upgrade(), hub.scope) {
                    registry.remove_if_same(map_id, &ctx.address());
                }
                ctx.stop();
            });
        }
    }
}

impl Actor for MapHub {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.load_head(ctx);
        self.schedule_idle_check(ctx);
    }
}

impl Handler<Subscribe> for MapHub {
    type Result = Result<Subscription, HubUnavailable>;

    fn handle(&mut self, msg: Subscribe, ctx: &mut Self::Context) -> Self::Result {
        let Some(head) = self.head else {
            self.load_head(ctx);
            return Err(HubUnavailable);
        };
        let hot = match msg.after {
            None => Some(HotBackfill::default()),
            Some(after) => self.hot_backfill(after, &msg.filter),
        };
        self.subscribers.insert(
            msg.conn_id,
            Subscriber {
                outbox: msg.outbox,
                filter: msg.filter,
                session: msg.session,
                generation: msg.generation,
            },
        );
        Ok(Subscription { head, hot })
    }
}

impl Handler<Unsubscribe> for MapHub {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, ctx: &mut Self::Context) {
        if self.subscribers.remove(&msg.conn_id).is_some() {
            self.schedule_idle_check(ctx);
        }
    }
}

impl Handler<Committed> for MapHub {
    type Result = ();

    fn handle(&mut self, msg: Committed, ctx: &mut Self::Context) {
        // Events at or below the head were committed before the head was
        // read: subscribers got them from the store already.
        let fresh: Vec<SharedEvent> = match self.head {
            Some(head) => msg.events.into_iter().filter(|e| e.id > head).collect(),
            None => msg.events,
        };
        let Some(last) = fresh.last() else { return };
        self.head = Some(last.id);
        for event in &fresh {
            self.remember(event);
        }
        let before = self.subscribers.len();
        self.subscribers.retain(|conn_id, sub| {
            for event in &fresh {
                if !sub.filter.matches(&event.event_type, &event.source) {
                    continue;
                }
                match sub.outbox.try_send(Arc::clone(event)) {
                    Ok(()) => {}
                    Err(Refused::Full) => {
                        log::debug!("conn={conn_id} outbox full: unregistered");
                        sub.session.do_send(Overflowed {
                            generation: sub.generation,
                        });
                        return false;
                    }
                    Err(Refused::Closed) => return false,
                }
            }
            true
        });
        if self.subscribers.len() < before {
            self.schedule_idle_check(ctx);
        }
    }
}

/// See [`Hubs::feed_scope`].
#[derive(Debug)]
pub struct FeedScope {
    /// [`Hubs::started`] when the scope was taken.
    pub started: u64,
    pub maps: Option<Vec<Ulid>>,
}

/// The registry of running hubs, shared by handlers and the persistence actor.
pub struct Registry {
    // A std Mutex: lookups are short and never span an `.await`.
    map_hubs: Mutex<HashMap<Ulid, Addr<MapHub>>>,
    firehose: Mutex<Option<Addr<MapHub>>>,
    arbiters: Vec<ArbiterHandle>,
    next_arbiter: AtomicUsize,
    store: SharedStore,
    config: HubConfig,
    /// See [`MAX_UNTAKEN_BYTES`].
    untaken: Arc<AtomicUsize>,
    /// Hubs started so far (see [`Hubs::feed_scope`]).
    started: AtomicU64,
}

impl Registry {
    fn remove_if_same(&self, map_id: Ulid, addr: &Addr<MapHub>) {
        let mut hubs = self.map_hubs.lock().unwrap_or_else(PoisonError::into_inner);
        if hubs.get(&map_id) == Some(addr) {
            hubs.remove(&map_id);
        }
    }
}

/// Typed handle over the hubs: subscribe, unsubscribe, deliver.
#[derive(Clone)]
pub struct Hubs(Arc<Registry>);

impl Hubs {
    /// Creates the registry; hubs run on `arbiters` (round robin).
    pub fn new(store: SharedStore, config: HubConfig, arbiters: Vec<ArbiterHandle>) -> Self {
        Self(Arc::new(Registry {
            map_hubs: Mutex::default(),
            firehose: Mutex::default(),
            arbiters,
            next_arbiter: AtomicUsize::new(0),
            store,
            config,
            untaken: Arc::default(),
            started: AtomicU64::new(0),
        }))
    }

    fn start_hub(&self, scope: Scope) -> Addr<MapHub> {
        self.0.started.fetch_add(1, Ordering::SeqCst);
        let hub = MapHub {
            scope,
            store: Arc::clone(&self.0.store),
            registry: Arc::downgrade(&self.0),
            config: self.0.config,
            subscribers: HashMap::new(),
            hot: VecDeque::new(),
            complete_after: None,
            head: None,
        };
        if self.0.arbiters.is_empty() {
            return hub.start();
        }
        let i = self.0.next_arbiter.fetch_add(1, Ordering::Relaxed) % self.0.arbiters.len();
        MapHub::start_in_arbiter(&self.0.arbiters[i], move |_| hub)
    }

    fn hub(&self, scope: Scope) -> Addr<MapHub> {
        match scope {
            Some(map_id) => {
                let mut hubs = self
                    .0
                    .map_hubs
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                hubs.entry(map_id)
                    .or_insert_with(|| self.start_hub(scope))
                    .clone()
            }
            None => {
                let mut firehose = self
                    .0
                    .firehose
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                firehose.get_or_insert_with(|| self.start_hub(None)).clone()
            }
        }
    }

    /// Registers a session with the hub of `scope`, starting it if needed.
    ///
    /// # Errors
    /// The hub does not know where streams start (store unreachable).
    pub async fn subscribe(
        &self,
        scope: Scope,
        request: Subscribe,
    ) -> Result<Subscription, HubUnavailable> {
        for _ in 0..SUBSCRIBE_ATTEMPTS {
            match self.hub(scope).send(request.clone()).await {
                Ok(result) => return result,
                // The hub stopped between lookup and delivery: it is gone
                // from the registry now, so the next lookup starts a new one.
                Err(_) => continue,
            }
        }
        Err(HubUnavailable)
    }

    /// Removes a session from the hub of `scope`, if that hub runs.
    pub fn unsubscribe(&self, scope: Scope, conn_id: Ulid) {
        let hub = match scope {
            Some(map_id) => self
                .0
                .map_hubs
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&map_id)
                .cloned(),
            None => self
                .0
                .firehose
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        };
        if let Some(hub) = hub {
            hub.do_send(Unsubscribe { conn_id });
        }
    }

    /// Hands a committed batch to the running hubs of its maps and to the
    /// firehose (maps without a hub have no subscriber to serve), then calls
    /// `answer`: at once, or once the hubs have handled the batch if more
    /// than [`MAX_UNTAKEN_BYTES`] wait for them.
    pub fn deliver(&self, batch: &[SharedEvent], answer: impl FnOnce() + Send + Sync + 'static) {
        let bytes = batch.iter().map(|e| e.frame().len()).sum();
        let lagging =
            self.0.untaken.fetch_add(bytes, Ordering::Relaxed) + bytes > MAX_UNTAKEN_BYTES;
        let (answer_now, answer_later) = if lagging {
            (None, Some(answer))
        } else {
            (Some(answer), None)
        };
        let token = Arc::new(WhenTaken {
            untaken: Arc::clone(&self.0.untaken),
            bytes,
            answer: answer_later.map(|a| Box::new(a) as _),
        });
        let mut by_map: HashMap<Ulid, Vec<SharedEvent>> = HashMap::new();
        for event in batch {
            by_map
                .entry(event.map_id)
                .or_default()
                .push(Arc::clone(event));
        }
        let targets: Vec<(Addr<MapHub>, Vec<SharedEvent>)> = {
            let hubs = self
                .0
                .map_hubs
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            by_map
                .into_iter()
                .filter_map(|(map, events)| Some((hubs.get(&map)?.clone(), events)))
                .collect()
        };
        for (hub, events) in targets {
            hub.do_send(Committed {
                events,
                _taken: Arc::clone(&token),
            });
        }
        let firehose = self
            .0
            .firehose
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(firehose) = firehose {
            firehose.do_send(Committed {
                events: batch.to_vec(),
                _taken: token,
            });
        }
        if let Some(answer) = answer_now {
            answer();
        }
    }

    /// The maps whose events this node's hubs need now (`maps: None`: every
    /// map, for the firehose or when there are too many to list).
    ///
    /// A hub reads its head from the store once started and takes later
    /// events from the feed. A feed read chosen before a hub started may
    /// leave out that hub's events of the snapshot it reads, so a read is
    /// good for the hubs only if `started` has not moved since (see
    /// [`Hubs::started`]).
    pub fn feed_scope(&self) -> FeedScope {
        let started = self.started();
        let firehose = self
            .0
            .firehose
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some();
        let hubs = self
            .0
            .map_hubs
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let maps =
            (!firehose && hubs.len() <= MAX_LISTED_MAPS).then(|| hubs.keys().copied().collect());
        FeedScope { started, maps }
    }

    /// How many hubs have been started.
    pub fn started(&self) -> u64 {
        self.0.started.load(Ordering::SeqCst)
    }

    /// Number of running map hubs.
    pub fn running(&self) -> usize {
        self.0
            .map_hubs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;

    #[actix::test]
    async fn publishers_wait_for_the_hub_only_when_it_lags() {
        let store = crate::store::open("sqlite::memory:").await.expect("store");
        let config = HubConfig {
            hot_events: 10,
            max_backfill: 10,
        };
        let hubs = Hubs::new(store, config, Vec::new());
        let map = Ulid::generate();
        let event = |payload: &str| {
            Arc::new(Event::new(
                Ulid::generate(),
                map,
                "t".into(),
                String::new(),
                payload,
            ))
        };
        let answered_at_once = |batch: &[SharedEvent]| {
            let (answered, answer) = std::sync::mpsc::channel();
            hubs.deliver(batch, move || answered.send(()).unwrap());
            answer.try_recv().is_ok()
        };
        let huge = format!("\"{}\"", "x".repeat(MAX_UNTAKEN_BYTES));

        assert!(
            answered_at_once(&[event(&huge)]),
            "no hub runs: nothing waits"
        );

        // The hub runs on this thread: it handles nothing before we yield.
        let _ = hubs.hub(Some(map));
        assert!(answered_at_once(&[event("1")]), "within the budget");
        let (answered, answer) = tokio::sync::oneshot::channel();
        hubs.deliver(&[event(&huge)], move || answered.send(()).unwrap());
        let mut answer = std::pin::pin!(answer);
        assert!(
            futures_util::poll!(answer.as_mut()).is_pending(),
            "over the budget: answered before the hub took the events"
        );
        tokio::time::timeout(Duration::from_secs(5), answer)
            .await
            .expect("answered once the hub took them")
            .expect("answer sent");
        assert_eq!(hubs.0.untaken.load(Ordering::Relaxed), 0, "all taken");
    }
}
