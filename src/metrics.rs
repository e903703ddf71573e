//! Process metrics: counters shown by `/api/admin/stats`, and the same plus
//! per-map connection gauges and the commit and hand-off latency histograms
//! as Prometheus text on `/metrics`.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::connections::ConnectionTable;

/// Every metric, registered once.
pub struct Metrics {
    registry: Registry,
    pub published: IntCounter,
    pub delivered: IntCounter,
    pub slow_consumer_cuts: IntCounter,
    pub store_batches: IntCounter,
    pub store_failures: IntCounter,
    pub commit_seconds: Histogram,
    /// From a commit's return to its frame being queued for a stream's
    /// socket: the hand-off through feed, hub and session (one event in 8,
    /// at every stream).
    pub handoff_seconds: Histogram,
    connections: IntGauge,
    connections_by_map: IntGaugeVec,
    /// Recent `(when, published, delivered)` samples, for rates.
    // A std Mutex: a push and a read, never across an `.await`.
    samples: Mutex<VecDeque<(Instant, u64, u64)>>,
}

/// Samples kept for rates: one a second, so rates cover about 5 s.
const RATE_SAMPLES: usize = 6;

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    // Names and help are static and unique, so creation and registration
    // cannot fail.
    let c = IntCounter::new(name, help).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

impl Default for Metrics {
    fn default() -> Self {
        let registry = Registry::new();
        let published = counter(
            &registry,
            "herald_events_published_total",
            "Events committed and acknowledged.",
        );
        let delivered = counter(
            &registry,
            "herald_events_delivered_total",
            "Event frames written to streams.",
        );
        let slow_consumer_cuts = counter(
            &registry,
            "herald_slow_consumer_cuts_total",
            "Streams ended because their outbox overflowed.",
        );
        let store_batches = counter(
            &registry,
            "herald_store_batches_total",
            "Group commits that succeeded.",
        );
        let store_failures = counter(
            &registry,
            "herald_store_failures_total",
            "Group commits that failed.",
        );
        // Valid static options; see `counter`.
        let commit_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "herald_store_commit_seconds",
                "Latency of one group commit.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )
        .expect("valid metric");
        registry
            .register(Box::new(commit_seconds.clone()))
            .expect("unique metric");
        let handoff_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "herald_delivery_handoff_seconds",
                "From a commit's return to the event's frame queued for a stream's socket (one event in 8, every stream).",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05,
                0.1, 0.5,
            ]),
        )
        .expect("valid metric");
        registry
            .register(Box::new(handoff_seconds.clone()))
            .expect("unique metric");
        let connections =
            IntGauge::new("herald_connections", "Open SSE streams.").expect("valid metric");
        registry
            .register(Box::new(connections.clone()))
            .expect("unique metric");
        let connections_by_map = IntGaugeVec::new(
            Opts::new(
                "herald_map_connections",
                "Open SSE streams per map (by map id).",
            ),
            &["map"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(connections_by_map.clone()))
            .expect("unique metric");
        Self {
            registry,
            published,
            delivered,
            slow_consumer_cuts,
            store_batches,
            store_failures,
            commit_seconds,
            handoff_seconds,
            connections,
            connections_by_map,
            samples: Mutex::default(),
        }
    }
}

impl Metrics {
    /// Records the counters now; call about once a second.
    pub fn sample_rates(&self) {
        let mut samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        if samples.len() == RATE_SAMPLES {
            samples.pop_front();
        }
        samples.push_back((Instant::now(), self.published.get(), self.delivered.get()));
    }

    /// Events published and delivered per second over the last samples.
    pub fn rates(&self) -> (f64, f64) {
        let samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        match (samples.front(), samples.back()) {
            (Some(first), Some(last)) if last.0 > first.0 => {
                let secs = (last.0 - first.0).as_secs_f64();
                let per_sec = |a: u64, b: u64| b.saturating_sub(a) as f64 / secs;
                (per_sec(first.1, last.1), per_sec(first.2, last.2))
            }
            _ => (0.0, 0.0),
        }
    }

    /// The Prometheus text exposition, with connection gauges read now.
    pub fn render(&self, connections: &ConnectionTable) -> String {
        self.connections
            .set(i64::try_from(connections.total()).unwrap_or(i64::MAX));
        self.connections_by_map.reset();
        let (per_map, _) = connections.counts();
        // Labelled by map id, not slug: `/metrics` needs no credential, and
        // nobody without one may learn which slugs exist.
        for (map_id, n) in per_map {
            self.connections_by_map
                .with_label_values(&[map_id.to_string().as_str()])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        let mut out = Vec::new();
        // Encoding gathered families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}
