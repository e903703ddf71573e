//! Process-wide counters shown by `/api/admin/stats` and `/metrics`.
//! Relaxed atomics: each counter is read on its own, never as a snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

/// Monotonic counters since start.
#[derive(Debug, Default)]
pub struct Stats {
    pub published: AtomicU64,
    pub delivered: AtomicU64,
    pub slow_consumer_cuts: AtomicU64,
    pub store_batches: AtomicU64,
    pub store_failures: AtomicU64,
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
