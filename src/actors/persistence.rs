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
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::oneshot;
use ulid::Ulid;

use super::feed::{FeedHandle, LocalCommit};
use crate::cluster::Cluster;
use crate::event::NewEvent;
use crate::metrics::Metrics;
use crate::store::{Idempotency, Outcome, Publication, SharedStore, StoreError};

/// Events per commit at most: bounds one transaction's size and latency.
const MAX_EVENTS_PER_COMMIT: usize = 10_000;
/// How long a node waits at most, after a commit that another node's
/// commit preceded, for the publishers it has just answered to come back
/// (see `Persistence::gather`).
const GATHER_AT_MOST: Duration = Duration::from_millis(2);
/// A publisher waits this long for its answer at most (the store calls
/// time out sooner; this only guards against a lost actor).
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(15);

type Reply = oneshot::Sender<Result<Outcome, StoreError>>;

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
    idempotency_ttl_ms: u64,
    flush_waiters: Vec<oneshot::Sender<()>>,
    /// The next commit waits for this many queued publishes, or for its
    /// deadline (see `Persistence::gather`).
    gathering: Option<(usize, SpawnHandle)>,
}

impl Persistence {
    /// Holds the next commit back until the `answered` publishers of the
    /// commit that just ended have come back, for half its time at most.
    ///
    /// Every node's commits take the clock's lock in turn, each with its
    /// own WAL flush, so the cluster commits a bounded number of times a
    /// second. Without waiting, a node's publishers split into two halves
    /// that take turns (one is being answered while the other commits):
    /// twice the commits for the same events. Waiting costs nothing while
    /// another node holds the lock anyway, and a node alone never waits.
    fn gather(&mut self, answered: usize, took: Duration, ctx: &mut Context<Self>) {
        let deadline = (took / 2).min(GATHER_AT_MOST);
        let timer = ctx.run_later(deadline, |this, ctx| {
            this.gathering = None;
            this.commit_next(ctx);
        });
        self.gathering = Some((self.queue.len() + answered, timer));
    }

    /// Starts the next commit unless one runs, one is being gathered, or
    /// nothing waits.
    fn commit_next(&mut self, ctx: &mut Context<Self>) {
        if self.committing {
            return;
        }
        if let Some((until_queued, timer)) = self.gathering {
            if self.queue.len() < until_queued {
                return;
            }
            ctx.cancel_future(timer);
            self.gathering = None;
        }
        if self.queue.is_empty() {
            for waiter in self.flush_waiters.drain(..) {
                let _ = waiter.send(());
            }
            return;
        }
        let mut publications: Vec<Publication> = Vec::new();
        let mut replies = Vec::new();
        let mut events = 0;
        let mut waiting = VecDeque::new();
        while let Some(next) = self.queue.pop_front() {
            let size = next.publication.events.len();
            if !publications.is_empty() && events + size > MAX_EVENTS_PER_COMMIT {
                self.queue.push_front(next);
                break;
            }
            // A retry racing its first request, or a reuse of its key with
            // another body, goes into the next group, which then finds the
            // key bound (and answers the same ids, or 409).
            let same_key = |p: &Publication| {
                p.map_id == next.publication.map_id
                    && matches!(
                        (&p.idempotency, &next.publication.idempotency),
                        (Some(mine), Some(theirs)) if mine.key == theirs.key
                    )
            };
            if publications.iter().any(same_key) {
                waiting.push_back(next);
                continue;
            }
            events += size;
            replies.push(next.reply);
            publications.push(next.publication);
        }
        waiting.append(&mut self.queue);
        self.queue = waiting;
        self.committing = true;
        let store = Arc::clone(&self.store);
        // The newest id known here: right unless another node committed
        // since (the store then reads the truth under its lock).
        let after = self.last_id.max(self.feed.cursor());
        let now_ms = self.cluster.now_ms();
        let ttl_ms = self.idempotency_ttl_ms;
        let started = Instant::now();
        ctx.spawn(
            async move { store.commit(after, now_ms, ttl_ms, &publications).await }
                .into_actor(self)
                .map(move |result, this, ctx| {
                    this.committing = false;
                    let took = started.elapsed();
                    match result {
                        Ok(commit) => {
                            this.metrics.commit_seconds.observe(took.as_secs_f64());
                            if commit.previous > this.last_id {
                                // Another node committed since this one did.
                                this.gather(replies.len(), took, ctx);
                            }
                            let committed_at = Instant::now();
                            for event in &commit.events {
                                event.mark_committed(committed_at);
                            }
                            this.metrics.store_batches.inc();
                            this.metrics.published.inc_by(commit.events.len() as u64);
                            if let Some(last) = commit.events.last() {
                                this.last_id = this.last_id.max(last.id);
                                this.cluster.committed(last.id);
                            }
                            this.last_id = this.last_id.max(commit.through);
                            let answers: Vec<(Outcome, Reply)> =
                                commit.outcomes.into_iter().zip(replies).collect();
                            this.feed.committed(LocalCommit {
                                previous: commit.previous,
                                through: commit.through,
                                events: commit.events,
                                answer: Box::new(move || {
                                    for (outcome, reply) in answers {
                                        let _ = reply.send(Ok(outcome));
                                    }
                                }),
                            });
                        }
                        Err(err) => {
                            this.metrics.store_failures.inc();
                            log::warn!("commit of {events} events failed: {err}");
                            let message = err.to_string();
                            for reply in replies {
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
    /// Starts the actor on the current arbiter; idempotency keys are
    /// remembered for `idempotency_ttl`.
    pub fn start(
        store: SharedStore,
        feed: FeedHandle,
        cluster: Arc<Cluster>,
        metrics: Arc<Metrics>,
        idempotency_ttl: Duration,
    ) -> Self {
        Self(
            Persistence {
                store,
                last_id: feed.cursor(),
                idempotency_ttl_ms: u64::try_from(idempotency_ttl.as_millis()).unwrap_or(u64::MAX),
                feed,
                cluster,
                metrics,
                queue: VecDeque::new(),
                committing: false,
                flush_waiters: Vec::new(),
                gathering: None,
            }
            .start(),
        )
    }

    /// Commits the events of one request; answers once committed (or
    /// found to be a retry of a committed one).
    ///
    /// # Errors
    /// The store failed or did not answer in time: nothing was acknowledged.
    pub async fn publish(
        &self,
        map_id: Ulid,
        events: Vec<NewEvent>,
        idempotency: Option<Idempotency>,
    ) -> Result<Outcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.0.do_send(Publish(PendingPublish {
            publication: Publication {
                map_id,
                events,
                idempotency,
            },
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
