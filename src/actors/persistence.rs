//! `Persistence`: the group-commit actor. Publishes queue up while a commit
//! runs and go together into the next one; ids come from one monotonic ULID
//! generator as each batch is formed, so id order is commit order. A
//! publisher is answered only after its batch committed and reached the
//! hubs; while hubs lag behind (see `hub::MAX_UNTAKEN_BYTES`), only after
//! the hubs have taken it, so a fan-out that lags slows its publishers down
//! instead of queueing events in memory.

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
    /// The last id handed out (at start: the newest stored one), so ids
    /// keep increasing across restarts even if the clock steps back.
    last_id: Ulid,
    flush_waiters: Vec<oneshot::Sender<()>>,
}

impl Persistence {
    fn next_id(&mut self) -> Ulid {
        self.last_id = next_ulid(self.last_id, Ulid::generate());
        self.last_id
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
                            this.hubs.deliver(&committed, move || {
                                for (ids, reply) in publishes {
                                    let _ = reply.send(Ok(ids));
                                }
                            });
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

/// The id after `last`: a fresh time-based one when the clock has moved
/// past it, else `last + 1` (same millisecond, or a clock that stepped back).
fn next_ulid(last: Ulid, fresh: Ulid) -> Ulid {
    if fresh > last {
        fresh
    } else {
        // 2^80 ids in one millisecond would be needed to overflow.
        last.increment().unwrap_or(fresh)
    }
}

/// Typed handle to the persistence actor.
#[derive(Clone)]
pub struct PersistenceHandle(Addr<Persistence>);

impl PersistenceHandle {
    /// Starts the actor on the current arbiter; ids will be greater than
    /// `last_id` (the newest stored id).
    pub fn start(store: SharedStore, hubs: Hubs, metrics: Arc<Metrics>, last_id: Ulid) -> Self {
        Self(
            Persistence {
                store,
                hubs,
                metrics,
                queue: VecDeque::new(),
                committing: false,
                last_id,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_increase_even_when_the_clock_steps_back() {
        let last = Ulid::from_parts(2_000, 5);
        assert_eq!(
            next_ulid(last, Ulid::from_parts(1_000, 9)),
            Ulid::from_parts(2_000, 6)
        );
        assert_eq!(
            next_ulid(last, Ulid::from_parts(2_000, 1)),
            Ulid::from_parts(2_000, 6)
        );
        let later = Ulid::from_parts(3_000, 1);
        assert_eq!(next_ulid(last, later), later);
    }
}
