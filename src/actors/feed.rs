//! `Feed`: the one path by which committed events reach this node's hubs,
//! in id order, exactly once — whichever node committed them.
//!
//! The store is the truth: the feed keeps a cursor (the newest id handed to
//! the hubs) and reads every committed event after it, by id, when woken —
//! by a notification from another node, after the listening connection
//! came back, or by its own tick. A missed notification delays an event by
//! one tick at most; it never loses one. A commit whose answer was lost
//! (the publisher got 503, the row exists) is found the same way.
//!
//! A read asks only for the maps this node has hubs for (see
//! `Hubs::feed_scope`), and moves the cursor to the newest id in any map:
//! a node serves its own streams, it does not copy the cluster's traffic.
//! While no hub runs, a wake-up or a commit of this node that names the
//! newest id moves the cursor without reading at all (wake-ups name ids of
//! this node's schema only, see `cluster::Signal::parse`).
//!
//! This node's own commits skip the read when they can: a commit says which
//! id was the newest before it (`Commit::previous`), and if that is the
//! cursor, nothing can lie between, so its events go to the hubs at once.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use actix::prelude::*;
use ulid::Ulid;

use super::hub::Hubs;
use crate::event::SharedEvent;
use crate::store::{FeedPage, SharedStore};

/// How often the feed reads the store even if nobody woke it: the bound on
/// the delay of an event whose notification was lost.
const TICK: Duration = Duration::from_millis(500);
/// Events per store read: the first read asks for the upper bound, later
/// ones aim at `PAGE_BYTES` (a node far behind reads large events a few
/// at a time).
const PAGE: (u32, u32) = (16, 2000);
/// Bytes of frames aimed at per store read.
const PAGE_BYTES: usize = 1 << 20;

/// The newest id this node has seen committed, shared with the
/// persistence actor (its guess of where the next ids start).
#[derive(Debug, Default)]
pub struct Cursor(Mutex<Ulid>);

impl Cursor {
    /// The newest committed id known here.
    pub fn get(&self) -> Ulid {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set(&self, id: Ulid) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = id;
    }
}

/// What a publisher is told once its events are on their way.
pub type Answer = Box<dyn FnOnce() + Send + Sync>;

/// This node committed `events`; `previous` was the newest id before them,
/// and ids through `through` are taken (see `store::Commit`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct LocalCommit {
    pub previous: Ulid,
    pub through: Ulid,
    pub events: Vec<SharedEvent>,
    pub answer: Answer,
}

/// Something was committed: read the store. `upto`, when known, is the
/// newest id of that commit (nothing to do if the cursor is past it).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Wake {
    pub upto: Option<Ulid>,
}

/// The feed actor.
pub struct Feed {
    store: SharedStore,
    hubs: Hubs,
    cursor: Ulid,
    shared_cursor: Arc<Cursor>,
    /// A store read is running.
    reading: bool,
    /// Woken while reading: read again when done.
    again: bool,
    /// This node's commits that arrived during a read, in commit order.
    held: Vec<LocalCommit>,
    /// The cursor at the last tick: a tick reads only if it has not moved
    /// (this node's own commits find gaps by themselves, see `deliver_local`).
    cursor_at_tick: Ulid,
    /// Events per store read.
    page: u32,
    /// The next read takes every map's events (see `Hubs::feed_scope`).
    read_every_map: bool,
    /// Everything through this id is committed and not yet caught up with.
    committed_through: Option<Ulid>,
    /// Something may be committed that no id names (a tick, a listener
    /// that reconnected, a full page): only a read can tell.
    must_read: bool,
}

impl Feed {
    fn advance(&mut self, id: Ulid) {
        self.cursor = id;
        self.shared_cursor.set(id);
    }

    /// Delivers this node's commit directly when it follows the cursor;
    /// else reads the store, which holds it and whatever came before.
    fn deliver_local(&mut self, commit: LocalCommit, ctx: &mut Context<Self>) {
        if commit.through <= self.cursor {
            // A store read delivered them already.
            (commit.answer)();
        } else if commit.previous == self.cursor {
            self.advance(commit.through);
            self.hubs.deliver(&commit.events, commit.answer);
        } else {
            // Something committed before these is not here yet (another
            // node's events, or a commit whose answer was lost): the store
            // gives all of them in order. The publisher need not wait.
            (commit.answer)();
            self.catch_up(Some(commit.through), ctx);
        }
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.cursor == self.cursor_at_tick {
            self.catch_up(None, ctx);
        }
        self.cursor_at_tick = self.cursor;
    }

    /// Catches up with what was committed: through `through` when the
    /// caller knows, else whatever the store holds.
    fn catch_up(&mut self, through: Option<Ulid>, ctx: &mut Context<Self>) {
        match through {
            Some(id) => self.committed_through = self.committed_through.max(Some(id)),
            None => self.must_read = true,
        }
        if self.reading {
            self.again = true;
            return;
        }
        self.again = false;
        if !self.must_read && self.committed_through.is_none_or(|id| id <= self.cursor) {
            self.committed_through = None;
            return;
        }
        let mut scope = self.hubs.feed_scope();
        if !self.must_read && scope.maps.as_ref().is_some_and(Vec::is_empty) {
            // No hub to hand anything to, and a hub started later reads its
            // head from the store, after these commits.
            if let Some(id) = self.committed_through.take() {
                self.advance(id);
            }
            return;
        }
        // The read's snapshot holds whatever was known committed by now.
        self.committed_through = None;
        self.must_read = false;
        self.reading = true;
        let store = Arc::clone(&self.store);
        let after = self.cursor;
        let limit = self.page;
        if std::mem::take(&mut self.read_every_map) {
            scope.maps = None;
        }
        let maps = scope.maps.clone();
        ctx.spawn(
            async move { store.feed_page(maps.as_deref(), after, limit).await }
                .into_actor(self)
                .map(move |result, feed, ctx| {
                    feed.reading = false;
                    match result {
                        Ok(_) if scope.maps.is_some() && feed.hubs.started() != scope.started => {
                            // A hub started meanwhile may need events this
                            // read left out: read again, every map's.
                            feed.read_every_map = true;
                            feed.must_read = true;
                            feed.again = true;
                        }
                        Ok(page) => feed.take(page, limit),
                        // The tick, or the next commit, tries again.
                        Err(err) => log::warn!("feed: cannot read committed events: {err}"),
                    }
                    if std::mem::take(&mut feed.again) {
                        feed.catch_up(feed.committed_through, ctx);
                    }
                    for commit in std::mem::take(&mut feed.held) {
                        if feed.reading {
                            feed.held.push(commit);
                        } else {
                            feed.deliver_local(commit, ctx);
                        }
                    }
                }),
        );
    }

    /// Hands a page read by `catch_up` to the hubs and moves the cursor past
    /// it: to the newest id in any map unless the page was full.
    fn take(&mut self, page: FeedPage, limit: u32) {
        let full = page.events.len() == limit as usize;
        let bytes: usize = page.events.iter().map(|e| e.frame().len()).sum();
        let per_event = (bytes / page.events.len().max(1)).max(1);
        self.page = u32::try_from(PAGE_BYTES / per_event)
            .unwrap_or(u32::MAX)
            .clamp(PAGE.0, PAGE.1);
        let last = page.events.last().map(|e| e.id);
        let fresh: Vec<SharedEvent> = page
            .events
            .into_iter()
            .filter(|e| e.id > self.cursor)
            .map(Arc::new)
            .collect();
        if !fresh.is_empty() {
            self.hubs.deliver(&fresh, || {});
        }
        let through = if full { last } else { last.max(page.newest) };
        if let Some(through) = through.filter(|&id| id > self.cursor) {
            self.advance(through);
        }
        if full {
            // Far behind: the next pages come by the id index in order;
            // a list of maps would sort every event of theirs left to read.
            self.read_every_map = true;
            self.must_read = true;
            self.again = true;
        }
    }
}

impl Actor for Feed {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(TICK, Self::tick);
    }
}

impl Handler<LocalCommit> for Feed {
    type Result = ();

    fn handle(&mut self, msg: LocalCommit, ctx: &mut Self::Context) {
        if self.reading {
            // Decided once the read is in: it may deliver these, or what
            // came before them.
            self.held.push(msg);
        } else {
            self.deliver_local(msg, ctx);
        }
    }
}

impl Handler<Wake> for Feed {
    type Result = ();

    fn handle(&mut self, msg: Wake, ctx: &mut Self::Context) {
        if msg.upto.is_some_and(|upto| upto <= self.cursor) {
            return;
        }
        self.catch_up(msg.upto, ctx);
    }
}

/// Typed handle to the feed.
#[derive(Clone)]
pub struct FeedHandle {
    addr: Addr<Feed>,
    cursor: Arc<Cursor>,
}

impl FeedHandle {
    /// Starts the feed on the current arbiter; `newest` is the newest
    /// committed id (the hubs load their own start from the store).
    pub fn start(store: SharedStore, hubs: Hubs, newest: Ulid) -> Self {
        let cursor = Arc::new(Cursor(Mutex::new(newest)));
        let addr = Feed {
            store,
            hubs,
            cursor: newest,
            shared_cursor: Arc::clone(&cursor),
            reading: false,
            again: false,
            held: Vec::new(),
            cursor_at_tick: newest,
            page: PAGE.1,
            read_every_map: false,
            committed_through: None,
            must_read: false,
        }
        .start();
        Self { addr, cursor }
    }

    /// Hands over this node's commit (see [`LocalCommit`]).
    pub fn committed(&self, commit: LocalCommit) {
        self.addr.do_send(commit);
    }

    /// Asks for a store read (see [`Wake`]).
    pub fn wake(&self, upto: Option<Ulid>) {
        self.addr.do_send(Wake { upto });
    }

    /// The newest committed id this node has delivered.
    pub fn cursor(&self) -> Ulid {
        self.cursor.get()
    }
}
