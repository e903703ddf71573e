//! A crowd of subscribers spread over the client threads: opens them with
//! bounded concurrency, parses every frame, records latency and per-publisher
//! sequence progress (to count lost and repeated events), reconnects with
//! `Last-Event-ID` when a stream ends, and reports when told to stop.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::{oneshot, Semaphore};

use crate::report::{merge, new_histogram};
use crate::sse::{bench_fields, Frame};
use crate::subscriber::{self, Stream};
use crate::target::Channel;
use crate::{now_us, shards::Shards};

/// What subscribers do when their stream ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Reconnect with the last seen id (a real client's behaviour).
    Reconnect,
    /// Count it as closed by the server and stop.
    Idle,
}

/// Live counters shared by every client thread and the control thread.
#[derive(Debug, Default)]
pub struct Progress {
    /// Streams that got their 200.
    pub ready: AtomicUsize,
    /// Streams that could not be opened.
    pub failed: AtomicUsize,
    /// Bench events received for the first time (one per subscriber).
    pub unique: AtomicU64,
    /// Streams that ended and did not come back.
    pub closed: AtomicUsize,
}

impl Progress {
    pub fn ready(&self) -> usize {
        self.ready.load(Ordering::Relaxed)
    }
    pub fn failed(&self) -> usize {
        self.failed.load(Ordering::Relaxed)
    }
    pub fn unique(&self) -> u64 {
        self.unique.load(Ordering::Relaxed)
    }
    pub fn closed(&self) -> usize {
        self.closed.load(Ordering::Relaxed)
    }
}

/// One subscriber's final state.
#[derive(Debug, Clone, Default)]
pub struct SubResult {
    /// Next expected sequence number per publisher.
    pub next: Vec<u64>,
    /// Sequence numbers skipped (not seen in order).
    pub gaps: u64,
    /// Bench events at or below one already seen (repeated or reordered).
    pub repeats: u64,
    pub delivered: u64,
    pub reconnects: u32,
    pub opened: bool,
    pub closed: bool,
}

/// What the subscribers saw: one client thread's, or every thread's merged.
pub struct CrowdReport {
    pub latency: Histogram<u64>,
    pub connect: Histogram<u64>,
    pub subs: Vec<SubResult>,
    pub other_events: u64,
    pub comments: u64,
    pub last_delivery: Option<Instant>,
    pub errors: Vec<String>,
    pub error_count: u64,
}

impl CrowdReport {
    fn empty(subscribers: usize) -> Self {
        Self {
            latency: new_histogram(),
            connect: new_histogram(),
            subs: Vec::with_capacity(subscribers),
            other_events: 0,
            comments: 0,
            last_delivery: None,
            errors: Vec::new(),
            error_count: 0,
        }
    }

    /// Adds one client thread's report (keeping the first 10 error texts).
    fn absorb(&mut self, other: Self) {
        merge(&mut self.latency, &other.latency);
        merge(&mut self.connect, &other.connect);
        self.subs.extend(other.subs);
        self.other_events += other.other_events;
        self.comments += other.comments;
        self.last_delivery = self.last_delivery.max(other.last_delivery);
        self.error_count += other.error_count;
        let room = 10usize.saturating_sub(self.errors.len());
        self.errors.extend(other.errors.into_iter().take(room));
    }

    /// Events missing at the subscribers that opened: skipped in the
    /// sequence, or never received up to `published[p]`.
    pub fn lost(&self, published: &[u64]) -> u64 {
        self.subs
            .iter()
            .filter(|s| s.opened)
            .map(|s| {
                let tail: u64 = published
                    .iter()
                    .enumerate()
                    .map(|(p, &n)| n.saturating_sub(s.next.get(p).copied().unwrap_or(0)))
                    .sum();
                s.gaps + tail
            })
            .sum()
    }

    pub fn repeats(&self) -> u64 {
        self.subs.iter().map(|s| s.repeats).sum()
    }

    pub fn reconnects(&self) -> u64 {
        self.subs.iter().map(|s| u64::from(s.reconnects)).sum()
    }

    pub fn delivered(&self) -> u64 {
        self.subs.iter().map(|s| s.delivered).sum()
    }
}

/// Settings of a crowd.
#[derive(Debug, Clone)]
pub struct CrowdConfig {
    /// Copies of one channel on one or more servers (cluster nodes):
    /// subscriber `i` of the crowd opens `channels[i % channels.len()]`.
    pub channels: Vec<Arc<Channel>>,
    pub subscribers: usize,
    /// Publishers whose sequences are tracked.
    pub publishers: usize,
    pub mode: Mode,
    pub timeout: Duration,
    /// Streams being opened at once, over all threads.
    pub connect_concurrency: usize,
}

/// A running crowd.
pub struct Crowd {
    pub progress: Arc<Progress>,
    pub size: usize,
    stops: Vec<oneshot::Sender<()>>,
    reports: Vec<oneshot::Receiver<CrowdReport>>,
}

impl Crowd {
    /// Starts the subscribers (they connect in the background).
    pub fn start(shards: &Shards, config: &CrowdConfig) -> Self {
        let progress = Arc::new(Progress::default());
        let n = shards.len();
        // No channel, no subscriber (and nothing to index).
        let subscribers = if config.channels.is_empty() {
            0
        } else {
            config.subscribers
        };
        let mut stops = Vec::new();
        let mut reports = Vec::new();
        for shard in 0..n {
            let count = subscribers / n + usize::from(shard < subscribers % n);
            if count == 0 {
                continue;
            }
            let (stop_tx, stop_rx) = oneshot::channel();
            let config = config.clone();
            let progress = Arc::clone(&progress);
            let per_thread = config.connect_concurrency.div_ceil(n).max(1);
            reports.push(shards.run(shard, move || {
                run_shard(config, progress, (shard, n), count, per_thread, stop_rx)
            }));
            stops.push(stop_tx);
        }
        Self {
            progress,
            size: subscribers,
            stops,
            reports,
        }
    }

    /// Waits until every stream is open or failed, or `limit` passed;
    /// returns whether all were accounted for.
    pub async fn wait_open(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.progress.ready() + self.progress.failed() >= self.size {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops every subscriber and merges what they saw.
    pub async fn stop(self) -> CrowdReport {
        for stop in self.stops {
            let _ = stop.send(());
        }
        let mut merged = CrowdReport::empty(self.size);
        for report in self.reports {
            match report.await {
                Ok(report) => merged.absorb(report),
                Err(_) => {
                    merged.errors.push("a client thread died".to_owned());
                    merged.error_count += 1;
                }
            }
        }
        merged
    }
}

/// Per-thread state shared by that thread's subscribers.
struct Shared {
    config: CrowdConfig,
    progress: Arc<Progress>,
    scratch: RefCell<Vec<u8>>,
    latency: RefCell<Histogram<u64>>,
    connect: RefCell<Histogram<u64>>,
    open_slots: Semaphore,
    other_events: Cell<u64>,
    comments: Cell<u64>,
    last_delivery: Cell<Option<Instant>>,
    errors: RefCell<Vec<String>>,
    error_count: Cell<u64>,
}

impl Shared {
    fn error(&self, text: String) {
        self.error_count.set(self.error_count.get() + 1);
        let mut errors = self.errors.borrow_mut();
        if errors.len() < 5 {
            errors.push(text);
        }
    }
}

struct SubState {
    result: SubResult,
    last_id: Vec<u8>,
}

async fn run_shard(
    config: CrowdConfig,
    progress: Arc<Progress>,
    (shard, shards): (usize, usize),
    count: usize,
    concurrency: usize,
    stop: oneshot::Receiver<()>,
) -> CrowdReport {
    let publishers = config.publishers;
    let shared = Rc::new(Shared {
        config,
        progress,
        scratch: RefCell::new(Vec::new()),
        latency: RefCell::new(new_histogram()),
        connect: RefCell::new(new_histogram()),
        open_slots: Semaphore::new(concurrency),
        other_events: Cell::new(0),
        comments: Cell::new(0),
        last_delivery: Cell::new(None),
        errors: RefCell::new(Vec::new()),
        error_count: Cell::new(0),
    });
    let states: Vec<Rc<RefCell<SubState>>> = (0..count)
        .map(|_| {
            Rc::new(RefCell::new(SubState {
                result: SubResult {
                    next: vec![0; publishers],
                    ..SubResult::default()
                },
                last_id: Vec::new(),
            }))
        })
        .collect();
    // This thread's subscribers are numbers shard, shard + shards, ... of
    // the crowd: the channels' round robin holds over the whole crowd.
    let tasks: Vec<_> = states
        .iter()
        .enumerate()
        .map(|(i, state)| {
            let channels = &shared.config.channels;
            let channel = Arc::clone(&channels[(i * shards + shard) % channels.len()]);
            tokio::task::spawn_local(run_subscriber(
                Rc::clone(&shared),
                channel,
                Rc::clone(state),
            ))
        })
        .collect();
    let _ = stop.await;
    for task in &tasks {
        task.abort();
    }
    for task in tasks {
        let _ = task.await;
    }
    let subs = states.iter().map(|s| s.borrow().result.clone()).collect();
    let latency = shared.latency.borrow().clone();
    let connect = shared.connect.borrow().clone();
    let errors = shared.errors.borrow().clone();
    CrowdReport {
        latency,
        connect,
        subs,
        other_events: shared.other_events.get(),
        comments: shared.comments.get(),
        last_delivery: shared.last_delivery.get(),
        errors,
        error_count: shared.error_count.get(),
    }
}

/// How long a subscriber keeps trying to come back after its stream ended.
const RECONNECT_FOR: Duration = Duration::from_secs(30);

async fn run_subscriber(shared: Rc<Shared>, channel: Arc<Channel>, state: Rc<RefCell<SubState>>) {
    let timeout = shared.config.timeout;
    let first = {
        let Ok(_slot) = shared.open_slots.acquire().await else {
            return;
        };
        let started = Instant::now();
        let opened = subscriber::open(&channel, None, timeout).await;
        if opened.is_ok() {
            let us = started.elapsed().as_micros() as u64;
            shared.connect.borrow_mut().saturating_record(us.max(1));
        }
        opened
    };
    let mut stream = match first {
        Ok(stream) => stream,
        Err(e) => {
            shared.progress.failed.fetch_add(1, Ordering::Relaxed);
            shared.error(format!("open: {e}"));
            return;
        }
    };
    state.borrow_mut().result.opened = true;
    shared.progress.ready.fetch_add(1, Ordering::Relaxed);
    loop {
        let ended = read_until_end(&shared, &state, &mut stream).await;
        if let Err(e) = ended {
            shared.error(format!("read: {e}"));
        }
        if shared.config.mode == Mode::Idle {
            state.borrow_mut().result.closed = true;
            shared.progress.closed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // Come back where we left off, as an SSE client does.
        let give_up = Instant::now() + RECONNECT_FOR;
        let mut pause = Duration::from_millis(20);
        loop {
            let last_id = state.borrow().last_id.clone();
            let last = (!last_id.is_empty()).then_some(last_id.as_slice());
            match subscriber::open(&channel, last, timeout).await {
                Ok(s) => {
                    state.borrow_mut().result.reconnects += 1;
                    stream = s;
                    break;
                }
                Err(e) if Instant::now() < give_up => {
                    shared.error(format!("reconnect: {e}"));
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Err(e) => {
                    shared.error(format!("gave up reconnecting: {e}"));
                    state.borrow_mut().result.closed = true;
                    shared.progress.closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
    }
}

/// Reads and records frames until the stream ends.
async fn read_until_end(
    shared: &Shared,
    state: &RefCell<SubState>,
    stream: &mut Stream,
) -> std::io::Result<()> {
    let mut seen_comments = stream.comments();
    loop {
        let mut fresh = 0u64;
        let open = stream
            .read_frames(&shared.scratch, |frame| {
                fresh += on_frame(shared, &mut state.borrow_mut(), frame);
            })
            .await?;
        if fresh > 0 {
            shared.progress.unique.fetch_add(fresh, Ordering::Relaxed);
            shared.last_delivery.set(Some(Instant::now()));
        }
        let comments = stream.comments();
        if comments > seen_comments {
            shared
                .comments
                .set(shared.comments.get() + comments - seen_comments);
            seen_comments = comments;
        }
        if !open {
            return Ok(());
        }
    }
}

/// Records one frame; returns 1 when it is a bench event seen for the first time.
fn on_frame(shared: &Shared, state: &mut SubState, frame: Frame<'_>) -> u64 {
    if let Some(id) = frame.id {
        state.last_id.clear();
        state.last_id.extend_from_slice(id);
    }
    let Some(fields) = bench_fields(frame.data) else {
        shared.other_events.set(shared.other_events.get() + 1);
        return 0;
    };
    let latency = now_us().saturating_sub(fields.sent_us);
    shared
        .latency
        .borrow_mut()
        .saturating_record(latency.max(1));
    let result = &mut state.result;
    result.delivered += 1;
    let Some(next) = result.next.get_mut(fields.publisher as usize) else {
        shared.other_events.set(shared.other_events.get() + 1);
        return 0;
    };
    if fields.seq == *next {
        *next += 1;
        1
    } else if fields.seq > *next {
        result.gaps += fields.seq - *next;
        *next = fields.seq + 1;
        1
    } else {
        result.repeats += 1;
        0
    }
}
