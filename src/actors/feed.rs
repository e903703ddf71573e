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
//! This node's own commits skip the read when they can: a commit says which
//! id was the newest before it (`Commit::previous`), and if that is the
//! cursor, nothing can lie between, so its events go to the hubs at once.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use actix::prelude::*;
use ulid::Ulid;

use super::hub::Hubs;
use crate::event::SharedEvent;
use crate::store::SharedStore;

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
            self.catch_up(ctx);
        }
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.cursor == self.cursor_at_tick {
            self.catch_up(ctx);
        }
        self.cursor_at_tick = self.cursor;
    }

    /// Reads and delivers everything committed after the cursor.
    fn catch_up(&mut self, ctx: &mut Context<Self>) {
        if self.reading {
            self.again = true;
            return;
        }
        self.reading = true;
        self.again = false;
        let store = Arc::clone(&self.store);
        let after = self.cursor;
        let limit = self.page;
        ctx.spawn(
            async move { store.events_after(None, after, limit).await }
                .into_actor(self)
                .map(move |result, feed, ctx| {
                    feed.reading = false;
                    let mut full = false;
                    match result {
                        Ok(page) => {
                            full = page.len() == limit as usize;
                            let bytes: usize = page.iter().map(|e| e.frame().len()).sum();
                            let per_event = (bytes / page.len().max(1)).max(1);
                            feed.page = u32::try_from(PAGE_BYTES / per_event)
                                .unwrap_or(u32::MAX)
                                .clamp(PAGE.0, PAGE.1);
                            let fresh: Vec<SharedEvent> = page
                                .into_iter()
                                .filter(|e| e.id > feed.cursor)
                                .map(Arc::new)
                                .collect();
                            if let Some(last) = fresh.last() {
                                feed.advance(last.id);
                                feed.hubs.deliver(&fresh, || {});
                            }
                        }
                        // The tick, or the next commit, tries again.
                        Err(err) => log::warn!("feed: cannot read committed events: {err}"),
                    }
                    if full || std::mem::take(&mut feed.again) {
                        feed.catch_up(ctx);
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
        self.catch_up(ctx);
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
