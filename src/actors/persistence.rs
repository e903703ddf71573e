//! `Persistence`: the group-commit actor. Publishes queue up while a commit
//! runs and go together into the next one. The store gives the ids inside
//! the committing transaction (on PostgreSQL under one lock for every
//! node), so id order is commit order. A committed group goes to the
//! [`Feed`](super::feed), which delivers it in order; a publisher is
//! answered once its group is on its way to the hubs — while hubs lag
//! behind (see `hub::MAX_UNTAKEN_BYTES`), only once they have taken it, so
//! a fan-out that lags slows its publishers down instead of queueing events
//! in memory.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::oneshot;
use ulid::Ulid;

use super::feed::{FeedHandle, LocalCommit};
use crate::cluster::Cluster;
use crate::event::NewEvent;
use crate::metrics::Metrics;
use crate::store::{Publication, SharedStore, StoreError};

/// Events per commit at most: bounds one transaction's size and latency.
const MAX_EVENTS_PER_COMMIT: usize = 10_000;
/// A publisher waits this long for its answer at most (the store calls
/// time out sooner; this only guards against a lost actor).
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(15);

type Reply = oneshot::Sender<Result<Vec<Ulid>, StoreError>>;

struct PendingPublish {
    publication: Publication,
    reply: Reply,
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
    feed: FeedHandle,
    cluster: Arc<Cluster>,
    metrics: Arc<Metrics>,
    queue: VecDeque<PendingPublish>,
    committing: bool,
    /// The newest id this node committed.
    last_id: Ulid,
    flush_waiters: Vec<oneshot::Sender<()>>,
}

impl Persistence {
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
        let mut publications = Vec::new();
        let mut replies = Vec::new();
        let mut events = 0;
        while let Some(next) = self.queue.front() {
            let size = next.publication.events.len();
            if !publications.is_empty() && events + size > MAX_EVENTS_PER_COMMIT {
                break;
            }
            let Some(publish) = self.queue.pop_front() else {
                break;
            };
            events += size;
            replies.push((size, publish.reply));
            publications.push(publish.publication);
        }
        self.committing = true;
        let store = Arc::clone(&self.store);
        // The newest id known here: right unless another node committed
        // since (the store then reads the truth under its lock).
        let after = self.last_id.max(self.feed.cursor());
        let now_ms = self.cluster.now_ms();
        let started = std::time::Instant::now();
        ctx.spawn(
            async move { store.commit(after, now_ms, &publications).await }
                .into_actor(self)
                .map(move |result, this, ctx| {
                    this.committing = false;
                    match result {
                        Ok(commit) => {
                            this.metrics
                                .commit_seconds
                                .observe(started.elapsed().as_secs_f64());
                            this.metrics.store_batches.inc();
                            this.metrics.published.inc_by(commit.events.len() as u64);
                            if let Some(last) = commit.events.last() {
                                this.last_id = this.last_id.max(last.id);
                                this.cluster.committed(last.id);
                            }
                            let mut ids = commit.events.iter().map(|e| e.id);
                            let answers: Vec<(Vec<Ulid>, Reply)> = replies
                                .into_iter()
                                .map(|(n, reply)| (ids.by_ref().take(n).collect(), reply))
                                .collect();
                            this.feed.committed(LocalCommit {
                                previous: commit.previous,
                                events: commit.events,
                                answer: Box::new(move || {
                                    for (ids, reply) in answers {
                                        let _ = reply.send(Ok(ids));
                                    }
                                }),
                            });
                        }
                        Err(err) => {
                            this.metrics.store_failures.inc();
                            log::warn!("commit of {events} events failed: {err}");
                            let message = err.to_string();
                            for (_, reply) in replies {
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
    pub fn start(
        store: SharedStore,
        feed: FeedHandle,
        cluster: Arc<Cluster>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self(
            Persistence {
                store,
                last_id: feed.cursor(),
                feed,
                cluster,
                metrics,
                queue: VecDeque::new(),
                committing: false,
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
            publication: Publication { map_id, events },
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
