//! Client threads: each runs a single-threaded tokio runtime with a
//! `LocalSet`, so the connections it owns share plain `Rc`/`RefCell` state
//! (one histogram per thread, one read buffer per thread) with no locking or
//! cross-thread wake-ups on the delivery path.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of client threads.
pub struct Shards {
    senders: Vec<mpsc::UnboundedSender<Job>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Shards {
    /// Starts `n` (at least 1) client threads.
    pub fn new(n: usize) -> std::io::Result<Self> {
        let n = n.max(1);
        let mut senders = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let thread = std::thread::Builder::new()
                .name(format!("bench-client-{i}"))
                .spawn(move || {
                    let local = tokio::task::LocalSet::new();
                    local.block_on(&runtime, async move {
                        while let Some(job) = rx.recv().await {
                            job();
                        }
                    });
                })?;
            senders.push(tx);
            threads.push(thread);
        }
        Ok(Self { senders, threads })
    }

    pub fn len(&self) -> usize {
        self.senders.len()
    }

    /// Runs `make()`'s future on client thread `shard` (modulo the count);
    /// the receiver yields its output (or an error if the thread is gone).
    pub fn run<F, Fut>(&self, shard: usize, make: F) -> oneshot::Receiver<Fut::Output>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future + 'static,
        Fut::Output: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            tokio::task::spawn_local(async move {
                let _ = tx.send(make().await);
            });
        });
        // A send fails only when the thread is gone; the receiver says so.
        let _ = self.senders[shard % self.senders.len()].send(job);
        rx
    }
}

impl Drop for Shards {
    fn drop(&mut self) {
        self.senders.clear();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
