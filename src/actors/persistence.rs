//! `Persistence`: the group-commit actor. Publishes queue up while a commit
//! runs and go together into the next one; ids come from one monotonic ULID
//! generator as each batch is formed, so id order is commit order. A
//! publisher is answered only after its batch committed, and the events
//! reach the hubs before the answer leaves.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::oneshot;
use ulid::Ulid;

use super::hub::Hubs;
use crate::event::{Event, NewEvent, SharedEvent};
use crate::metrics::Metrics;
use crate::store::{SharedStore, StoreError};

/// Events per commit at most: bounds one transaction's size and latency.
const MAX_EVENTS_PER_COMMIT: usize = 10_000;
/// A publisher waits this long for its answer at most (the store calls
/// time out sooner; this only guards against a lost actor).
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(15);

struct PendingPublish {
    map_id: Ulid,
    events: Vec<NewEvent>,
    reply: oneshot::Sender<Result<Vec<Ulid>, StoreError>>,
}

/// Queues one publish request (all of its events commit together).
#[derive(Message)]
#[rtype(result = "()")]
struct Publish(PendingPublish);

/// Answers once everything queued before it has been committed or failed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Flush;

/// The group-commit actor.
pub struct Persistence {
    store: SharedStore,
    hubs: Hubs,
    metrics: Arc<Metrics>,
    queue: VecDeque<PendingPublish>,
    committing: bool,
    ids: ulid::Generator,
    flush_waiters: Vec<oneshot::Sender<()>>,
}

impl Persistence {
    fn next_id(&mut self) -> Ulid {
        self.ids
            .generate()
            .unwrap_or_else(|overflow| overflow.commit_overflow_increment())
    }

    /// Starts the next commit unless one runs or nothing waits.
    fn commit_next(&mut self, ctx: &mut Context<Self>) {
        if self.committing {
            return;
        }
        if self.queue.is_empty() {
            for waiter in self.flush_waiters.drain(..) {
                let _ = waiter.send(());
            }
            return;
        }
        let mut publishes = Vec::new();
        let mut events: Vec<SharedEvent> = Vec::new();
        while let Some(next) = self.queue.front() {
            if !publishes.is_empty() && events.len() + next.events.len() > MAX_EVENTS_PER_COMMIT {
                break;
            }
            let Some(publish) = self.queue.pop_front() else {
                break;
            };
            let mut ids = Vec::with_capacity(publish.events.len());
            for new in publish.events {
                let id = self.next_id();
                ids.push(id);
                events.push(Arc::new(Event::new(
                    id,
                    publish.map_id,
                    new.event_type,
                    new.source,
                    &new.payload,
                )));
            }
            publishes.push((ids, publish.reply));
        }
        self.committing = true;
        let store = Arc::clone(&self.store);
        let batch = Arc::new(events);
        let committed = Arc::clone(&batch);
        let started = std::time::Instant::now();
        ctx.spawn(
            async move { store.insert_events(&batch).await }
                .into_actor(self)
                .map(move |result, this, ctx| {
                    this.committing = false;
                    match result {
                        Ok(()) => {
                            this.metrics
                                .commit_seconds
                                .observe(started.elapsed().as_secs_f64());
                            this.metrics.store_batches.inc();
                            this.metrics.published.inc_by(committed.len() as u64);
                            this.hubs.deliver(&committed);
                            for (ids, reply) in publishes {
                                let _ = reply.send(Ok(ids));
                            }
                        }
                        Err(err) => {
                            this.metrics.store_failures.inc();
                            log::warn!("commit of {} events failed: {err}", committed.len());
                            let message = err.to_string();
                            for (_, reply) in publishes {
                                let _ = reply.send(Err(StoreError::Unavailable(message.clone())));
                            }
                        }
                    }
                    this.commit_next(ctx);
                }),
        );
    }
}

impl Actor for Persistence {
    type Context = Context<Self>;
}

impl Handler<Publish> for Persistence {
    type Result = ();

    fn handle(&mut self, msg: Publish, ctx: &mut Self::Context) {
        self.queue.push_back(msg.0);
        self.commit_next(ctx);
    }
}

impl Handler<Flush> for Persistence {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Flush, ctx: &mut Self::Context) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.flush_waiters.push(tx);
        self.commit_next(ctx);
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

/// Typed handle to the persistence actor.
#[derive(Clone)]
pub struct PersistenceHandle(Addr<Persistence>);

impl PersistenceHandle {
    /// Starts the actor on the current arbiter.
    pub fn start(store: SharedStore, hubs: Hubs, metrics: Arc<Metrics>) -> Self {
        Self(
            Persistence {
                store,
                hubs,
                metrics,
                queue: VecDeque::new(),
                committing: false,
                ids: ulid::Generator::new(),
                flush_waiters: Vec::new(),
            }
            .start(),
        )
    }

    /// Commits the events of one request; returns their ids once committed.
    ///
    /// # Errors
    /// The store failed or did not answer in time: nothing was acknowledged.
    pub async fn publish(
        &self,
        map_id: Ulid,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Ulid>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.0.do_send(Publish(PendingPublish {
            map_id,
            events,
            reply,
        }));
        match tokio::time::timeout(PUBLISH_TIMEOUT, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(StoreError::Unavailable("persistence stopped".into())),
            Err(_) => Err(StoreError::Unavailable("commit timed out".into())),
        }
    }

    /// Waits until every publish queued so far has been committed or failed.
    pub async fn flush(&self) {
        let _ = self.0.send(Flush).await;
    }
}
