//! `Session`: one actor per SSE stream, plus the response body it drives.
//!
//! The actor is the stream's control side: it holds the connection slot,
//! takes `Close` from the admin API, key revocation and shutdown, and
//! unregisters from its hub when it stops. The body (returned by [`open`]) is the
//! data side: preamble, then backfill read from memory or the store at the
//! client's pace, then live events from the bounded outbox, several frames
//! per write, with keep-alive comments in silences.
//!
//! Slow consumers: the hub `try_send`s into the outbox (`sse.client_buffer`
//! events). When it is full the hub drops the session's registration. During
//! backfill the body then re-subscribes and continues from the store; once
//! live, the stream ends ("cut") and the client's reconnect with its
//! Last-Event-ID backfills what it missed. Either way nothing is lost and no
//! memory grows without bound. The hub tells the session about the overflow
//! too: a client that stopped reading altogether no longer has its body
//! polled (its write never completes), so the session shuts the socket down
//! itself.

use std::cell::Cell;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};
use ulid::Ulid;

use super::hub::{Hubs, Subscribe};
use crate::backfill::{plan_from_store, Truncation};
use crate::connections::ConnectionGuard;
use crate::error::ApiError;
use crate::event::{now_rfc3339, SharedEvent};
use crate::filter::Filter;
use crate::metrics::Metrics;
use crate::socket::StreamSocket;
use crate::store::{Scope, SharedStore};

/// Bytes of frames aimed at per backfill store query and per written chunk:
/// few round trips for small events, bounded memory for large ones. A
/// client that stops reading holds one chunk and one page read ahead:
/// about 1 MiB.
const CHUNK_BYTES: usize = 512 << 10;
/// Events of the first backfill query; later ones adapt to the event size.
/// As few as the smallest page: an event may be `publish.max_event_bytes`
/// large, and a page stays in memory until the client has taken it, so a
/// first page of 1,000 such events pinned 64 MiB for one slow client.
const FIRST_PAGE: u32 = PAGE_RANGE.0;
/// Bounds of a backfill query, in events: 8 of the largest events allowed
/// (64 KiB) make about one chunk.
const PAGE_RANGE: (u32, u32) = (8, 10_000);
/// Live events taken from the outbox per write.
const LIVE_BATCH: usize = 64;
/// The comment sent in silences.
const KEEPALIVE_FRAME: &[u8] = b": keepalive\n\n";
/// After a close, how long a body that actix does not poll (its client is
/// not reading) may keep the connection before the socket is shut down.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Why a stream ended (logged on disconnect).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    ClientGone,
    SlowConsumer,
    AdminClosed,
    KeyRevoked,
    Shutdown,
    StoreUnavailable,
    /// This node was taken for dead, and the stream's slot went to another
    /// stream meanwhile (see `Cluster::rejoin`).
    SlotLost,
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ClientGone => "client_gone",
            Self::SlowConsumer => "slow_consumer",
            Self::AdminClosed => "admin_closed",
            Self::KeyRevoked => "key_revoked",
            Self::Shutdown => "shutdown",
            Self::StoreUnavailable => "store_unavailable",
            Self::SlotLost => "slot_lost",
        })
    }
}

/// Ends the stream at once.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Close {
    pub reason: CloseReason,
}

/// The body finished or was dropped (client gone).
#[derive(Message)]
#[rtype(result = "()")]
struct BodyEnded {
    reason: CloseReason,
}

/// What the session knows of its body. Session and body run on the same
/// worker thread (hence `Rc`), which is also what makes touching the socket
/// safe: while `alive` is true, the connection owns its fd.
#[derive(Debug)]
struct BodyProgress {
    alive: Cell<bool>,
    /// The body writes live events (its backfill is done).
    live: Cell<bool>,
    /// Bumped at each re-subscription: overflow notices of an older
    /// registration are stale.
    generation: Cell<u64>,
}

/// The control side of one stream.
pub struct Session {
    scope: Scope,
    hubs: Hubs,
    guard: ConnectionGuard,
    /// Fires (or drops) to end the body.
    stop_body: Option<oneshot::Sender<()>>,
    reason: CloseReason,
    progress: Rc<BodyProgress>,
    socket: Option<StreamSocket>,
    metrics: Arc<Metrics>,
}

impl Session {
    /// Ends the body and stops. A polled body ends cleanly on the signal;
    /// one that actix does not poll (its client is not reading) would hold
    /// the connection forever, so its socket is shut down after a grace.
    fn close(&mut self, reason: CloseReason, ctx: &mut Context<Self>) {
        self.reason = reason;
        if let Some(stop) = self.stop_body.take() {
            let _ = stop.send(());
        }
        if let Some(socket) = self.socket {
            let progress = Rc::clone(&self.progress);
            actix_web::rt::spawn(async move {
                tokio::time::sleep(CLOSE_GRACE).await;
                if progress.alive.get() {
                    socket.shutdown();
                }
            });
        }
        ctx.stop();
    }
}

impl Actor for Session {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.guard.attach(ctx.address().recipient());
        let info = &self.guard.info;
        log::info!(
            "connect conn={} map={} key={} remote={} filter={}",
            info.id,
            info.map_id
                .map_or_else(|| "*".to_owned(), |m| m.to_string()),
            info.key_id
                .map_or_else(|| "admin".to_owned(), |k| k.to_string()),
            info.remote_addr,
            info.filter
        );
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.hubs.unsubscribe(self.scope, self.guard.info.id);
        log::info!(
            "disconnect conn={} reason={} events_sent={}",
            self.guard.info.id,
            self.reason,
            self.guard.info.sent()
        );
    }
}

impl Handler<Close> for Session {
    type Result = ();

    fn handle(&mut self, msg: Close, ctx: &mut Self::Context) {
        self.close(msg.reason, ctx);
    }
}

/// The hub dropped this session's registration: its outbox was full.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Overflowed {
    /// The registration that overflowed.
    pub generation: u64,
}

impl Handler<Overflowed> for Session {
    type Result = ();

    fn handle(&mut self, msg: Overflowed, ctx: &mut Self::Context) {
        // During backfill the body re-subscribes and reads on from the store.
        if !self.progress.live.get() || msg.generation != self.progress.generation.get() {
            return;
        }
        log::warn!(
            "conn={} slow consumer: outbox overflowed, stream cut",
            self.guard.info.id
        );
        self.metrics.slow_consumer_cuts.inc();
        self.close(CloseReason::SlowConsumer, ctx);
    }
}

impl Handler<BodyEnded> for Session {
    type Result = ();

    fn handle(&mut self, msg: BodyEnded, ctx: &mut Self::Context) {
        if self.reason == CloseReason::ClientGone {
            self.reason = msg.reason;
        }
        ctx.stop();
    }
}

/// Everything needed to open a stream.
pub struct StreamRequest {
    pub scope: Scope,
    pub after: Option<Ulid>,
    pub filter: Filter,
    pub guard: ConnectionGuard,
    pub retry_ms: u64,
    pub keepalive: Duration,
    pub client_buffer: usize,
    pub max_backfill: usize,
    pub socket: Option<StreamSocket>,
}

/// Shared services a stream uses.
pub struct StreamServices {
    pub hubs: Hubs,
    pub store: SharedStore,
    pub metrics: Arc<Metrics>,
}

/// Subscribes, plans the backfill and starts the session; returns the body.
///
/// # Errors
/// `STORE_UNAVAILABLE` when the start position or backfill cannot be read.
pub async fn open(
    services: StreamServices,
    req: StreamRequest,
) -> Result<impl Stream<Item = Result<Bytes, Infallible>> + 'static, ApiError> {
    let conn_id = req.guard.info.id;
    let filter = Arc::new(req.filter);
    // The session's address exists before it runs, so the hub can tell it
    // about an overflow from the first event on.
    let session_ctx = Context::<Session>::new();
    let session = session_ctx.address();
    let (outbox_tx, outbox) = crate::outbox::channel(req.client_buffer);
    let subscription = services
        .hubs
        .subscribe(
            req.scope,
            Subscribe {
                conn_id,
                outbox: outbox_tx,
                filter: Arc::clone(&filter),
                after: req.after,
                session: session.clone().recipient(),
                generation: 0,
            },
        )
        .await
        .map_err(|_| ApiError::StoreUnavailable)?;

    let after = match req.after {
        // Later than anything this node has seen in this map: committed
        // elsewhere, an id of another map (a position in the one order all
        // the same), or later than anything committed at all. Only in the
        // last case does the stream start at the map's newest event; every
        // later one is delivered.
        Some(after) if after > subscription.head => {
            let store = &services.store;
            let newest = async {
                let anywhere = store.newest_event_id(None).await?;
                if after <= anywhere.unwrap_or_default() {
                    return Ok(after);
                }
                let here = store.newest_event_id(req.scope).await?;
                Ok::<_, crate::store::StoreError>(here.unwrap_or_default().max(subscription.head))
            };
            match newest.await {
                Ok(start) => Some(start),
                Err(err) => {
                    services.hubs.unsubscribe(req.scope, conn_id);
                    return Err(err.into());
                }
            }
        }
        after => after,
    };
    let start = after.unwrap_or(subscription.head);
    let (phase, cursor, truncation) = match (after, subscription.hot) {
        (_, Some(hot)) => (Phase::Memory(hot.events.into()), start, hot.truncation),
        (Some(after), None) => {
            match plan_from_store(&services.store, req.scope, after, &filter, req.max_backfill)
                .await
            {
                Ok(plan) => (Phase::Store, plan.replay_after, plan.truncation),
                Err(err) => {
                    services.hubs.unsubscribe(req.scope, conn_id);
                    return Err(err.into());
                }
            }
        }
        (None, None) => (Phase::Live, start, None),
    };

    let preamble = preamble(req.retry_ms, start, req.scope, conn_id, truncation.as_ref());
    let (stop_tx, stop_rx) = oneshot::channel();
    let info = Arc::clone(&req.guard.info);
    let slot = req.guard.clone();
    let progress = Rc::new(BodyProgress {
        alive: Cell::new(true),
        live: Cell::new(matches!(phase, Phase::Live)),
        generation: Cell::new(0),
    });
    session_ctx.run(Session {
        scope: req.scope,
        hubs: services.hubs.clone(),
        guard: req.guard,
        stop_body: Some(stop_tx),
        reason: CloseReason::ClientGone,
        progress: Rc::clone(&progress),
        socket: req.socket,
        metrics: Arc::clone(&services.metrics),
    });

    let state = BodyState {
        preamble: Some(preamble),
        phase,
        cursor,
        scope: req.scope,
        conn_id,
        filter,
        outbox,
        client_buffer: req.client_buffer,
        services,
        stop: stop_rx,
        keepalive: req.keepalive,
        last_write: Instant::now(),
        ticker: Box::pin(tokio::time::sleep(req.keepalive)),
        info,
        link: BodyLink {
            session,
            reason: CloseReason::ClientGone,
            progress,
            _slot: slot,
        },
        batch: Vec::new(),
        page: FIRST_PAGE,
        prefetch: None,
    };
    // `unfold` keeps the pending chunk future inline: no allocation per write.
    Ok(futures_util::stream::unfold(
        state,
        |mut state| async move {
            let chunk = state.next_chunk().await?;
            Some((Ok(chunk), state))
        },
    ))
}

/// `retry:`, `connected` and, when due, `backfill_truncated`.
fn preamble(
    retry_ms: u64,
    start: Ulid,
    scope: Scope,
    conn_id: Ulid,
    truncation: Option<&Truncation>,
) -> Bytes {
    let connected = serde_json::json!({
        "map_id": scope.map(|m| m.to_string()),
        "connection_id": conn_id.to_string(),
        "server_time": now_rfc3339(),
    });
    let mut out =
        format!("retry: {retry_ms}\n\nid: {start}\nevent: connected\ndata: {connected}\n\n");
    if let Some(truncation) = truncation {
        // Serializing a struct of strings cannot fail.
        let data = serde_json::to_string(truncation).unwrap_or_default();
        out.push_str(&format!("event: backfill_truncated\ndata: {data}\n\n"));
    }
    Bytes::from(out)
}

enum Phase {
    /// Backfill served from the hub's hot history.
    Memory(VecDeque<SharedEvent>),
    /// Backfill read from the store, page by page, after `cursor`.
    Store,
    /// Live events from the outbox.
    Live,
}

/// Tells the session when the body goes away, whatever the reason.
struct BodyLink {
    session: Addr<Session>,
    reason: CloseReason,
    progress: Rc<BodyProgress>,
    /// The connection slot, freed the moment the body goes.
    _slot: ConnectionGuard,
}

impl Drop for BodyLink {
    fn drop(&mut self) {
        self.progress.alive.set(false);
        self.session.do_send(BodyEnded {
            reason: self.reason,
        });
    }
}

struct BodyState {
    preamble: Option<Bytes>,
    phase: Phase,
    /// Newest event id written (or skipped as already known to the client).
    cursor: Ulid,
    scope: Scope,
    conn_id: Ulid,
    filter: Arc<Filter>,
    outbox: crate::outbox::Outbox,
    client_buffer: usize,
    services: StreamServices,
    stop: oneshot::Receiver<()>,
    keepalive: Duration,
    last_write: Instant,
    ticker: Pin<Box<Sleep>>,
    info: Arc<crate::connections::ConnectionInfo>,
    link: BodyLink,
    batch: Vec<SharedEvent>,
    /// Events per backfill store query.
    page: u32,
    /// The next backfill page, already being read.
    prefetch: Option<Prefetch>,
}

/// A backfill page read ahead in its own task; aborted if the stream ends.
struct Prefetch {
    limit: u32,
    task: tokio::task::JoinHandle<Result<Vec<crate::event::Event>, crate::store::StoreError>>,
}

impl Prefetch {
    fn start(store: &SharedStore, scope: Scope, after: Ulid, limit: u32) -> Self {
        let store = Arc::clone(store);
        let task = tokio::spawn(async move { store.events_after(scope, after, limit).await });
        Self { limit, task }
    }

    async fn page(mut self) -> Result<Vec<crate::event::Event>, crate::store::StoreError> {
        (&mut self.task).await.unwrap_or_else(|e| {
            Err(crate::store::StoreError::Unavailable(format!(
                "backfill read: {e}"
            )))
        })
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl BodyState {
    /// Appends the frames of `events` newer than the cursor; returns how many.
    fn write_events<'a>(
        &mut self,
        out: &mut BytesMut,
        events: impl IntoIterator<Item = &'a SharedEvent>,
    ) -> u64 {
        let mut written = 0;
        for event in events {
            if event.id > self.cursor {
                out.extend_from_slice(event.frame());
                self.cursor = event.id;
                written += 1;
            }
        }
        written
    }

    fn finish_chunk(&mut self, chunk: impl Into<Bytes>, events: u64) -> Option<Bytes> {
        let chunk: Bytes = chunk.into();
        if chunk.is_empty() {
            return None;
        }
        if events > 0 {
            self.info.add_sent(events);
            self.services.metrics.delivered.inc_by(events);
        }
        self.last_write = Instant::now();
        Some(chunk)
    }

    /// After a backfill: if the outbox overflowed meanwhile, register a new
    /// one and read the rest from the store; else go live. The stream counts
    /// as live (its outbox's bound applies) only from its first poll in
    /// [`Phase::Live`], once the last backfill chunk has been written: that
    /// chunk goes at the client's pace too.
    async fn leave_backfill(&mut self) -> Result<(), CloseReason> {
        if !self.outbox.is_closed() {
            self.phase = Phase::Live;
            return Ok(());
        }
        let progress = &self.link.progress;
        let generation = progress.generation.get() + 1;
        progress.generation.set(generation);
        let (outbox_tx, outbox) = crate::outbox::channel(self.client_buffer);
        self.outbox = outbox;
        let request = Subscribe {
            conn_id: self.conn_id,
            outbox: outbox_tx,
            filter: Arc::clone(&self.filter),
            after: None,
            session: self.link.session.clone().recipient(),
            generation,
        };
        self.services
            .hubs
            .subscribe(self.scope, request)
            .await
            .map_err(|_| CloseReason::StoreUnavailable)?;
        self.phase = Phase::Store;
        Ok(())
    }

    /// The next chunk to write, or `None` to end the stream.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some(preamble) = self.preamble.take() {
            self.last_write = Instant::now();
            return Some(preamble);
        }
        loop {
            if !matches!(
                self.stop.try_recv(),
                Err(oneshot::error::TryRecvError::Empty)
            ) {
                return None;
            }
            match &mut self.phase {
                Phase::Memory(queue) => {
                    let mut bytes = 0;
                    let take = queue
                        .iter()
                        .take_while(|e| {
                            bytes += e.frame().len();
                            bytes - e.frame().len() < CHUNK_BYTES
                        })
                        .count();
                    let events: Vec<SharedEvent> = queue.drain(..take).collect();
                    if events.is_empty() {
                        // Boxed (here and below): inline, this rare path's
                        // state would double every idle stream's body.
                        if let Err(reason) = Box::pin(self.leave_backfill()).await {
                            self.link.reason = reason;
                            return None;
                        }
                        continue;
                    }
                    let mut chunk = BytesMut::new();
                    let n = self.write_events(&mut chunk, &events);
                    if let Some(chunk) = self.finish_chunk(chunk, n) {
                        return Some(chunk);
                    }
                }
                Phase::Store => {
                    let (limit, page) = match self.prefetch.take() {
                        Some(prefetch) => (prefetch.limit, prefetch.page().await),
                        None => (
                            self.page,
                            self.services
                                .store
                                .events_after(self.scope, self.cursor, self.page)
                                .await,
                        ),
                    };
                    let page = match page {
                        Ok(page) => page,
                        Err(err) => {
                            log::warn!("conn={} backfill read failed: {err}", self.conn_id);
                            self.link.reason = CloseReason::StoreUnavailable;
                            return None;
                        }
                    };
                    let exhausted = page.len() < limit as usize;
                    let page_bytes: usize = page.iter().map(|e| e.frame().len()).sum();
                    let per_event = (page_bytes / page.len().max(1)).max(1);
                    self.page = u32::try_from(CHUNK_BYTES / per_event)
                        .unwrap_or(u32::MAX)
                        .clamp(PAGE_RANGE.0, PAGE_RANGE.1);
                    let mut chunk = BytesMut::with_capacity(page_bytes);
                    let mut n = 0;
                    for event in &page {
                        if event.id > self.cursor
                            && self.filter.matches(&event.event_type, &event.source)
                        {
                            chunk.extend_from_slice(event.frame());
                            n += 1;
                        }
                        self.cursor = self.cursor.max(event.id);
                    }
                    if exhausted {
                        if let Err(reason) = Box::pin(self.leave_backfill()).await {
                            self.link.reason = reason;
                            return None;
                        }
                    } else {
                        // Read the next page while this one is being written.
                        self.prefetch = Some(Prefetch::start(
                            &self.services.store,
                            self.scope,
                            self.cursor,
                            self.page,
                        ));
                    }
                    if let Some(chunk) = self.finish_chunk(chunk, n) {
                        return Some(chunk);
                    }
                }
                Phase::Live => {
                    if !self.link.progress.live.get() {
                        // The backfill is written. An overflow while it was
                        // is the backfill's: read on from the store.
                        if self.outbox.is_closed() {
                            if let Err(reason) = Box::pin(self.leave_backfill()).await {
                                self.link.reason = reason;
                                return None;
                            }
                            continue;
                        }
                        self.link.progress.live.set(true);
                    }
                    let mut batch = std::mem::take(&mut self.batch);
                    let received = tokio::select! {
                        biased;
                        _ = &mut self.stop => return None,
                        n = self.outbox.recv_many(&mut batch, LIVE_BATCH) => n,
                        () = &mut self.ticker => {
                            self.batch = batch;
                            let due = self.last_write + self.keepalive;
                            if Instant::now() >= due {
                                self.last_write = Instant::now();
                                self.ticker.as_mut().reset(self.last_write + self.keepalive);
                                return Some(Bytes::from_static(KEEPALIVE_FRAME));
                            }
                            self.ticker.as_mut().reset(due);
                            continue;
                        }
                    };
                    if received == 0 {
                        // The hub dropped this outbox: it overflowed (the
                        // session logs and counts the cut).
                        self.link.reason = CloseReason::SlowConsumer;
                        return None;
                    }
                    // One event in 8 (ids are consecutive), at every stream:
                    // a histogram per delivery costs 3 % of a fan-out's CPU.
                    let sampled = batch.iter().filter(|e| e.id.0 % 8 == 0);
                    for committed in sampled.filter_map(|e| e.committed_at()) {
                        let handoff = committed.elapsed().as_secs_f64();
                        self.services.metrics.handoff_seconds.observe(handoff);
                    }
                    let chunk = match batch.as_slice() {
                        // One new event: its shared frame goes out as is.
                        [event] if event.id > self.cursor => {
                            self.cursor = event.id;
                            self.finish_chunk(event.frame().clone(), 1)
                        }
                        events => {
                            let mut chunk = BytesMut::with_capacity(
                                events.iter().map(|e| e.frame().len()).sum(),
                            );
                            let n = self.write_events(&mut chunk, events);
                            self.finish_chunk(chunk, n)
                        }
                    };
                    batch.clear();
                    self.batch = batch;
                    if chunk.is_some() {
                        return chunk;
                    }
                }
            }
        }
    }
}
